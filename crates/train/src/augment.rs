//! The study's augmentation: rotation ±0.1 rad, translation ±0.2 of the image size,
//! shear ±0.1, scale 0.8–1.2, horizontal and vertical flips with probability 0.5.
//! One random affine map per example, deterministic under the caller's RNG; the image is
//! resampled bilinearly, the lesion mask by nearest neighbour, and the boxes recomputed
//! from the warped mask.

use chacha20::ChaCha20Rng;
use rand_core::Rng;
use serde::{Deserialize, Serialize};
use tessera_data::component_boxes;

use crate::loss::Example;

/// Ranges of the random affine map.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Augmentation {
    pub rotation: f32,
    pub translation: f32,
    pub shear: f32,
    pub scale: [f32; 2],
    pub flip_probability: f32,
    /// Lesion components smaller than this get no box after warping.
    pub min_box_pixels: usize,
}

impl Augmentation {
    /// The study's settings.
    pub const STUDY: Augmentation = Augmentation {
        rotation: 0.1,
        translation: 0.2,
        shear: 0.1,
        scale: [0.8, 1.2],
        flip_probability: 0.5,
        min_box_pixels: 4,
    };
}

fn uniform(rng: &mut ChaCha20Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32)
}

/// A randomly warped copy of `ex` (size × size).
pub fn augment(ex: &Example, size: usize, aug: &Augmentation, rng: &mut ChaCha20Rng) -> Example {
    let theta = uniform(rng, -aug.rotation, aug.rotation);
    let shear = uniform(rng, -aug.shear, aug.shear);
    let scale = uniform(rng, aug.scale[0], aug.scale[1]);
    let tx = uniform(rng, -aug.translation, aug.translation) * size as f32;
    let ty = uniform(rng, -aug.translation, aug.translation) * size as f32;
    let fx = if uniform(rng, 0.0, 1.0) < aug.flip_probability {
        -1.0
    } else {
        1.0
    };
    let fy = if uniform(rng, 0.0, 1.0) < aug.flip_probability {
        -1.0
    } else {
        1.0
    };
    // Forward map A = R(θ) · Shear(k) · Scale(s) · Flip, then translation.
    let (c, s) = (theta.cos(), theta.sin());
    let a = [
        [c * scale * fx, (c * shear - s) * scale * fy],
        [s * scale * fx, (s * shear + c) * scale * fy],
    ];
    let det = a[0][0] * a[1][1] - a[0][1] * a[1][0];
    let inv = [
        [a[1][1] / det, -a[0][1] / det],
        [-a[1][0] / det, a[0][0] / det],
    ];
    let half = size as f32 / 2.0;
    let source = |x: usize, y: usize| {
        let (u, v) = (x as f32 + 0.5 - half - tx, y as f32 + 0.5 - half - ty);
        (
            inv[0][0] * u + inv[0][1] * v + half - 0.5,
            inv[1][0] * u + inv[1][1] * v + half - 0.5,
        )
    };
    let plane = size * size;
    let mut image = vec![0f32; 3 * plane];
    let mut lesion = vec![false; plane];
    for ch in 0..3 {
        let src = &ex.image[ch * plane..(ch + 1) * plane];
        let fill = src[0];
        let at = |x: f32, y: f32| {
            if x < 0.0 || y < 0.0 || x > (size - 1) as f32 || y > (size - 1) as f32 {
                fill
            } else {
                src[y as usize * size + x as usize]
            }
        };
        for y in 0..size {
            for x in 0..size {
                let (sx, sy) = source(x, y);
                let (x0, y0) = (sx.floor(), sy.floor());
                let (wx, wy) = (sx - x0, sy - y0);
                image[ch * plane + y * size + x] = at(x0, y0) * (1.0 - wx) * (1.0 - wy)
                    + at(x0 + 1.0, y0) * wx * (1.0 - wy)
                    + at(x0, y0 + 1.0) * (1.0 - wx) * wy
                    + at(x0 + 1.0, y0 + 1.0) * wx * wy;
            }
        }
    }
    for y in 0..size {
        for x in 0..size {
            let (sx, sy) = source(x, y);
            let (rx, ry) = (sx.round(), sy.round());
            if rx >= 0.0 && ry >= 0.0 && (rx as usize) < size && (ry as usize) < size {
                lesion[y * size + x] = ex.lesion[ry as usize * size + rx as usize];
            }
        }
    }
    let boxes = component_boxes(&lesion, size, size, aug.min_box_pixels);
    Example {
        image,
        boxes,
        lesion,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;
    use tessera_eval::BBox;

    fn example(size: usize) -> Example {
        let mut lesion = vec![false; size * size];
        for y in 10..20 {
            for x in 30..38 {
                lesion[y * size + x] = true;
            }
        }
        let image = (0..3 * size * size)
            .map(|i| (i % 97) as f32 / 97.0)
            .collect();
        Example {
            image,
            boxes: vec![BBox::new(30.0, 10.0, 38.0, 20.0)],
            lesion,
        }
    }

    #[test]
    fn deterministic_under_a_seed_and_boxes_follow_the_mask() {
        let ex = example(64);
        let a = augment(
            &ex,
            64,
            &Augmentation::STUDY,
            &mut ChaCha20Rng::seed_from_u64(5),
        );
        let b = augment(
            &ex,
            64,
            &Augmentation::STUDY,
            &mut ChaCha20Rng::seed_from_u64(5),
        );
        assert_eq!(a, b);
        let c = augment(
            &ex,
            64,
            &Augmentation::STUDY,
            &mut ChaCha20Rng::seed_from_u64(6),
        );
        assert_ne!(a.image, c.image);
        for out in [&a, &c] {
            let area: usize = out.lesion.iter().filter(|l| **l).count();
            // 80 pixels scaled by 0.64–1.44 (nearest-neighbour rounding aside)
            assert!((40..=130).contains(&area), "area {area}");
            if area >= 4 {
                assert_eq!(out.boxes.len(), 1);
            }
        }
    }

    #[test]
    fn the_identity_map_changes_nothing() {
        let ex = example(64);
        let none = Augmentation {
            rotation: 0.0,
            translation: 0.0,
            shear: 0.0,
            scale: [1.0, 1.0],
            flip_probability: 0.0,
            min_box_pixels: 4,
        };
        let out = augment(&ex, 64, &none, &mut ChaCha20Rng::seed_from_u64(1));
        assert_eq!(out.lesion, ex.lesion);
        assert_eq!(out.boxes, ex.boxes);
        for (a, b) in out.image.iter().zip(&ex.image) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
