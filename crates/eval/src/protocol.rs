//! The two evaluation protocols: what counts as a hit, a false positive or neither.
//!
//! - [`EvalProtocol::Strict`]: PASCAL VOC. On each slice, detections in decreasing score
//!   order each take the ground-truth box with which they have the highest IoU; at IoU
//!   ≥ 0.5 the first detection on a box is a hit and any later one a false positive (a
//!   duplicate is never credited to a neighbouring lesion). AP groups tied scores into
//!   one precision–recall point.
//! - [`EvalProtocol::Authors`]: the study's released code (`med-air/FL-COVID`,
//!   `evaluate_overall_patient_wise.py`, `utils/eval.py`, `compute_overlap.pyx`; see
//!   `shared/paper-facts.md`): a hit when IoU, or the intersection over either box's
//!   area, is ≥ 0.5; a second hit on a found lesion counts as neither; detections on
//!   lesion-free slices are ignored; false positives lying mostly inside another false
//!   positive (containment > 0.7) are subtracted after matching; precision is 0 for a
//!   patient with no detection; false positives per slice are over every slice of the
//!   volume; AP is over the detections at or above the score threshold; intervals are
//!   mean ± 1.96·SD/√n with the population SD; the FROC sweep steps by 0.01.

use serde::{Deserialize, Serialize};

use crate::boxes::{BBox, Detection};
use crate::metrics::{HIT_IOU, SliceResult};

/// Which evaluation protocol a number was computed with (every table names it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalProtocol {
    /// PASCAL VOC matching (see the module docs).
    #[default]
    Strict,
    /// The study's released evaluation code (see the module docs).
    Authors,
}

impl EvalProtocol {
    pub fn name(self) -> &'static str {
        match self {
            EvalProtocol::Strict => "strict",
            EvalProtocol::Authors => "authors",
        }
    }
}

/// What one detection counted as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Hit,
    FalsePositive,
    /// Neither (authors: a second hit, a lesion-free slice, a nested false positive).
    Ignored,
}

/// Containment above which the authors' code subtracts a nested false positive.
const NESTED_CONTAINMENT: f32 = 0.7;

/// The authors' overlap: the largest of IoU and the intersection over either box.
fn lenient_overlap(det: &BBox, truth: &BBox) -> f32 {
    let inter = det.intersection(truth);
    let over = |area: f32| if area > 0.0 { inter / area } else { 0.0 };
    det.iou(truth).max(over(det.area())).max(over(truth.area()))
}

/// The box of `truth` that `det` overlaps most (the first on ties) and that overlap.
fn best_truth(
    det: &BBox,
    truth: &[BBox],
    overlap: fn(&BBox, &BBox) -> f32,
) -> Option<(usize, f32)> {
    truth
        .iter()
        .enumerate()
        .map(|(i, t)| (i, overlap(det, t)))
        .fold(None, |best, (i, o)| match best {
            Some((_, b)) if b >= o => best,
            _ => Some((i, o)),
        })
}

/// The detections of `slice` scoring at least `threshold`, in decreasing score order,
/// with what each counted as.
pub(crate) fn match_slice(
    slice: &SliceResult,
    threshold: f32,
    protocol: EvalProtocol,
) -> Vec<(f32, Outcome)> {
    let mut dets: Vec<&Detection> = slice
        .detections
        .iter()
        .filter(|d| d.score >= threshold)
        .collect();
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    if protocol == EvalProtocol::Authors && slice.truth.is_empty() {
        return dets.iter().map(|d| (d.score, Outcome::Ignored)).collect();
    }
    let overlap: fn(&BBox, &BBox) -> f32 = match protocol {
        EvalProtocol::Strict => |d, t| d.iou(t),
        EvalProtocol::Authors => lenient_overlap,
    };
    let repeat = match protocol {
        EvalProtocol::Strict => Outcome::FalsePositive,
        EvalProtocol::Authors => Outcome::Ignored,
    };
    let mut taken = vec![false; slice.truth.len()];
    let mut outcomes: Vec<(f32, Outcome)> = dets
        .iter()
        .map(|d| match best_truth(&d.bbox, &slice.truth, overlap) {
            Some((i, o)) if o >= HIT_IOU && !taken[i] => {
                taken[i] = true;
                (d.score, Outcome::Hit)
            }
            Some((_, o)) if o >= HIT_IOU => (d.score, repeat),
            _ => (d.score, Outcome::FalsePositive),
        })
        .collect();
    if protocol == EvalProtocol::Authors {
        subtract_nested(&dets, &mut outcomes);
    }
    outcomes
}

/// A false positive mostly inside another (larger, or as large and higher-scoring)
/// false positive is not counted.
fn subtract_nested(dets: &[&Detection], outcomes: &mut [(f32, Outcome)]) {
    let fp: Vec<usize> = (0..dets.len())
        .filter(|&i| outcomes[i].1 == Outcome::FalsePositive)
        .collect();
    let nested: Vec<usize> = fp
        .iter()
        .copied()
        .filter(|&i| {
            let (a, area) = (&dets[i].bbox, dets[i].bbox.area());
            fp.iter().any(|&j| {
                let b = &dets[j].bbox;
                j != i
                    && area > 0.0
                    && a.intersection(b) / area > NESTED_CONTAINMENT
                    && (b.area() > area || (b.area() == area && j < i))
            })
        })
        .collect();
    for i in nested {
        outcomes[i].1 = Outcome::Ignored;
    }
}

/// All-point interpolated AP of `scored` (decreasing score order) against `lesions`
/// boxes; with `group_ties`, detections of equal score form one precision–recall point.
pub(crate) fn average_precision(
    scored: &[(f32, Outcome)],
    lesions: usize,
    group_ties: bool,
) -> f64 {
    let counted: Vec<(f32, bool)> = scored
        .iter()
        .filter(|(_, o)| *o != Outcome::Ignored)
        .map(|(s, o)| (*s, *o == Outcome::Hit))
        .collect();
    let mut points = Vec::with_capacity(counted.len());
    let mut tp = 0usize;
    for (i, (score, hit)) in counted.iter().enumerate() {
        tp += usize::from(*hit);
        let last_of_tie = counted.get(i + 1).is_none_or(|next| next.0 != *score);
        if !group_ties || last_of_tie {
            points.push((tp as f64 / lesions as f64, tp as f64 / (i + 1) as f64));
        }
    }
    // Precision envelope from the right, then the area under the recall steps.
    for i in (0..points.len().saturating_sub(1)).rev() {
        points[i].1 = points[i].1.max(points[i + 1].1);
    }
    let mut ap = 0.0;
    let mut prev_recall = 0.0;
    for (recall, precision) in points {
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
    }
    ap
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boxes::det;

    fn outcomes(slice: &SliceResult, p: EvalProtocol) -> Vec<Outcome> {
        match_slice(slice, 0.0, p)
            .into_iter()
            .map(|(_, o)| o)
            .collect()
    }

    #[test]
    fn a_duplicate_is_never_credited_to_a_neighbouring_lesion() {
        // Two adjacent lesions; the second detection overlaps a (IoU 0.67) more than b
        // (IoU 0.54): greedy matching over untaken boxes would credit it to b.
        let a = BBox::new(0.0, 0.0, 10.0, 10.0);
        let b = BBox::new(5.0, 0.0, 15.0, 10.0);
        let slice = SliceResult {
            truth: vec![a, b],
            detections: vec![
                det(0.0, 0.0, 10.0, 10.0, 0.9),
                det(2.0, 0.0, 12.0, 10.0, 0.8),
            ],
        };
        use Outcome::*;
        assert_eq!(outcomes(&slice, EvalProtocol::Strict), [Hit, FalsePositive]);
        assert_eq!(outcomes(&slice, EvalProtocol::Authors), [Hit, Ignored]);
    }

    #[test]
    fn the_authors_hit_rule_is_lenient_and_ignores_lesion_free_slices() {
        use Outcome::*;
        // A small box inside a large lesion: IoU 0.16, intersection over the detection 1.
        let slice = SliceResult {
            truth: vec![BBox::new(0.0, 0.0, 10.0, 10.0)],
            detections: vec![det(2.0, 2.0, 6.0, 6.0, 0.9)],
        };
        assert_eq!(outcomes(&slice, EvalProtocol::Strict), [FalsePositive]);
        assert_eq!(outcomes(&slice, EvalProtocol::Authors), [Hit]);
        let empty = SliceResult {
            truth: vec![],
            detections: vec![det(2.0, 2.0, 6.0, 6.0, 0.9)],
        };
        assert_eq!(outcomes(&empty, EvalProtocol::Strict), [FalsePositive]);
        assert_eq!(outcomes(&empty, EvalProtocol::Authors), [Ignored]);
    }

    #[test]
    fn a_false_positive_nested_in_another_is_subtracted_by_the_authors_rule() {
        use Outcome::*;
        let slice = SliceResult {
            truth: vec![BBox::new(100.0, 100.0, 110.0, 110.0)],
            detections: vec![
                det(0.0, 0.0, 20.0, 20.0, 0.5),
                det(2.0, 2.0, 10.0, 10.0, 0.9),
                det(50.0, 50.0, 60.0, 60.0, 0.4),
            ],
        };
        // In score order: the nested 0.9 box, the 0.5 box around it, the separate 0.4.
        assert_eq!(
            outcomes(&slice, EvalProtocol::Authors),
            [Ignored, FalsePositive, FalsePositive]
        );
        assert_eq!(
            outcomes(&slice, EvalProtocol::Strict),
            [FalsePositive, FalsePositive, FalsePositive]
        );
    }

    #[test]
    fn tied_scores_form_one_point_in_strict_ap() {
        use Outcome::*;
        // A hit and a false positive at the same score, one lesion: grouped, the only
        // point is (R 1, P 1/2); ungrouped, the hit ranked first gives AP 1.
        let scored = [(0.5, Hit), (0.5, FalsePositive)];
        assert!((average_precision(&scored, 1, true) - 0.5).abs() < 1e-12);
        assert!((average_precision(&scored, 1, false) - 1.0).abs() < 1e-12);
        // Ignored detections do not count.
        let scored = [(0.9, Ignored), (0.5, Hit)];
        assert!((average_precision(&scored, 1, false) - 1.0).abs() < 1e-12);
    }
}
