//! Axis-aligned boxes in pixel coordinates and the box post-processing of the study:
//! non-maximum suppression and removal of nested boxes.

use serde::{Deserialize, Serialize};

/// A box [x0, x1) × [y0, y1) in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BBox {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
}

impl BBox {
    pub fn new(x0: f32, y0: f32, x1: f32, y1: f32) -> Self {
        Self { x0, y0, x1, y1 }
    }

    pub fn area(&self) -> f32 {
        (self.x1 - self.x0).max(0.0) * (self.y1 - self.y0).max(0.0)
    }

    pub fn intersection(&self, other: &BBox) -> f32 {
        let w = (self.x1.min(other.x1) - self.x0.max(other.x0)).max(0.0);
        let h = (self.y1.min(other.y1) - self.y0.max(other.y0)).max(0.0);
        w * h
    }

    /// Intersection over union; 0 for two empty boxes.
    pub fn iou(&self, other: &BBox) -> f32 {
        let inter = self.intersection(other);
        let union = self.area() + other.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }

    /// Intersection over the smaller box's area: how far one box lies inside the other.
    pub fn containment(&self, other: &BBox) -> f32 {
        let smaller = self.area().min(other.area());
        if smaller > 0.0 {
            self.intersection(other) / smaller
        } else {
            0.0
        }
    }
}

/// A scored detection on one slice.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub bbox: BBox,
    pub score: f32,
}

fn by_score_desc(dets: &mut [Detection]) {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
}

/// Greedy non-maximum suppression: keeps the highest-scoring box of every group whose
/// IoU exceeds `iou_threshold`.
pub fn nms(mut dets: Vec<Detection>, iou_threshold: f32) -> Vec<Detection> {
    by_score_desc(&mut dets);
    let mut kept: Vec<Detection> = Vec::with_capacity(dets.len());
    for d in dets {
        if kept.iter().all(|k| k.bbox.iou(&d.bbox) <= iou_threshold) {
            kept.push(d);
        }
    }
    kept
}

/// Removes boxes lying mostly inside a higher-scoring box (containment above
/// `threshold`; the study used 0.7).
pub fn remove_nested(mut dets: Vec<Detection>, threshold: f32) -> Vec<Detection> {
    by_score_desc(&mut dets);
    let mut kept: Vec<Detection> = Vec::with_capacity(dets.len());
    for d in dets {
        if kept
            .iter()
            .all(|k| k.bbox.containment(&d.bbox) <= threshold)
        {
            kept.push(d);
        }
    }
    kept
}

/// A detection from its corners and score (tests).
#[cfg(test)]
pub(crate) fn det(x0: f32, y0: f32, x1: f32, y1: f32, score: f32) -> Detection {
    Detection {
        bbox: BBox::new(x0, y0, x1, y1),
        score,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_by_hand() {
        let a = BBox::new(0.0, 0.0, 2.0, 2.0);
        let b = BBox::new(1.0, 1.0, 3.0, 3.0);
        // intersection 1, union 4 + 4 − 1 = 7
        assert!((a.iou(&b) - 1.0 / 7.0).abs() < 1e-6);
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&BBox::new(5.0, 5.0, 6.0, 6.0)), 0.0);
        // containment: 1 / min(4, 4)
        assert!((a.containment(&b) - 0.25).abs() < 1e-6);
        assert_eq!(a.containment(&BBox::new(0.5, 0.5, 1.5, 1.5)), 1.0);
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let kept = nms(
            vec![
                det(0.0, 0.0, 10.0, 10.0, 0.6),
                det(1.0, 1.0, 11.0, 11.0, 0.9),
                det(20.0, 20.0, 30.0, 30.0, 0.5),
            ],
            0.5,
        );
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].score, 0.9);
        assert_eq!(kept[1].score, 0.5);
    }

    #[test]
    fn nested_boxes_are_removed_but_neighbours_are_not() {
        let kept = remove_nested(
            vec![
                det(0.0, 0.0, 10.0, 10.0, 0.9),
                det(2.0, 2.0, 6.0, 6.0, 0.8), // fully inside: containment 1
                det(8.0, 0.0, 14.0, 10.0, 0.7), // overlaps 2×10 of its 6×10: containment 1/3
            ],
            0.7,
        );
        let scores: Vec<f32> = kept.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.9, 0.7]);
    }
}
