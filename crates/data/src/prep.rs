//! From scans to model inputs: HU windowing, in-plane resampling to the model's
//! resolution, three adjacent slices as channels, lung masks when the data have none,
//! and per-slice lesion boxes.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use tessera_eval::BBox;

use crate::volume::{Scan, Volume};

/// Voxels below this are air or lung when estimating a lung mask.
pub const LUNG_THRESHOLD_HU: f32 = -320.0;

/// Estimates a lung mask: threshold at −320 HU; 3D 6-connected components; drop those
/// touching the in-plane border (air around the body); keep the largest component and
/// the second largest if it has at least a tenth of the largest's voxels (the two
/// lungs); then fill holes slice by slice (vessels, airway walls, enclosed lesions).
/// Lesions touching the pleura are not enclosed and may be missed: prefer lung masks
/// that come with the data.
pub fn estimate_lung_mask(ct: &Volume<f32>) -> Volume<bool> {
    let [nz, ny, nx] = ct.shape;
    let candidate: Vec<bool> = ct.data.iter().map(|h| *h < LUNG_THRESHOLD_HU).collect();
    let mut label = vec![0u32; candidate.len()];
    let mut sizes: Vec<(usize, u32)> = Vec::new();
    let mut queue = VecDeque::new();
    let mut next = 0u32;
    for start in 0..candidate.len() {
        if !candidate[start] || label[start] != 0 {
            continue;
        }
        next += 1;
        label[start] = next;
        queue.push_back(start);
        let (mut size, mut border) = (0usize, false);
        while let Some(i) = queue.pop_front() {
            size += 1;
            let (z, y, x) = (i / (ny * nx), (i / nx) % ny, i % nx);
            border |= x == 0 || y == 0 || x == nx - 1 || y == ny - 1;
            let mut visit = |j: usize| {
                if candidate[j] && label[j] == 0 {
                    label[j] = next;
                    queue.push_back(j);
                }
            };
            if x > 0 {
                visit(i - 1)
            }
            if x + 1 < nx {
                visit(i + 1)
            }
            if y > 0 {
                visit(i - nx)
            }
            if y + 1 < ny {
                visit(i + nx)
            }
            if z > 0 {
                visit(i - nx * ny)
            }
            if z + 1 < nz {
                visit(i + nx * ny)
            }
        }
        if !border {
            sizes.push((size, next));
        }
    }
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let keep: Vec<u32> = match sizes.as_slice() {
        [] => vec![],
        [(_, a)] => vec![*a],
        [(s1, a), (s2, b), ..] => {
            if *s2 * 10 >= *s1 {
                vec![*a, *b]
            } else {
                vec![*a]
            }
        }
    };
    let mut mask = Volume {
        shape: ct.shape,
        spacing: ct.spacing,
        data: label.iter().map(|l| keep.contains(l)).collect(),
    };
    for z in 0..nz {
        fill_holes(&mut mask.data[z * ny * nx..(z + 1) * ny * nx], ny, nx);
    }
    mask
}

/// Sets every pixel not reachable from the border through unset pixels.
fn fill_holes(img: &mut [bool], h: usize, w: usize) {
    let mut outside = vec![false; img.len()];
    let mut queue = VecDeque::new();
    for y in 0..h {
        for x in 0..w {
            if (y == 0 || x == 0 || y == h - 1 || x == w - 1) && !img[y * w + x] {
                outside[y * w + x] = true;
                queue.push_back(y * w + x);
            }
        }
    }
    while let Some(i) = queue.pop_front() {
        let (y, x) = (i / w, i % w);
        let neighbours = [
            (y > 0).then(|| i - w),
            (y + 1 < h).then(|| i + w),
            (x > 0).then(|| i - 1),
            (x + 1 < w).then(|| i + 1),
        ];
        for j in neighbours.into_iter().flatten() {
            if !img[j] && !outside[j] {
                outside[j] = true;
                queue.push_back(j);
            }
        }
    }
    for (p, o) in img.iter_mut().zip(outside) {
        *p |= !o;
    }
}

/// A display window mapping [level − width/2, level + width/2] HU to [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub level: f32,
    pub width: f32,
}

impl Window {
    /// A wide lung window: −1350 … +150 HU.
    pub const LUNG: Window = Window {
        level: -600.0,
        width: 1500.0,
    };

    pub fn apply(&self, hu: f32) -> f32 {
        ((hu - (self.level - self.width / 2.0)) / self.width).clamp(0.0, 1.0)
    }
}

/// How slices are prepared for a model.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SliceSpec {
    /// Output is `size × size` pixels, centred on the field of view.
    pub size: usize,
    /// Output pixel spacing in mm (the model's in-plane resolution).
    pub spacing_mm: f32,
    pub window: Window,
    /// Lesion components smaller than this many output pixels get no box.
    pub min_box_pixels: usize,
}

impl SliceSpec {
    /// 128 × 128 at 2.8 mm (a 358 mm field of view): the CPU-sized profile.
    pub const SMALL: SliceSpec = SliceSpec {
        size: 128,
        spacing_mm: 2.8,
        window: Window::LUNG,
        min_box_pixels: 4,
    };
}

/// One model input: three adjacent slices as channels and the centre slice's targets.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceSample {
    pub scan: String,
    /// Index of the centre slice in the scan.
    pub z: usize,
    pub size: usize,
    /// Channels (z − 1, z, z + 1), each `size × size`, windowed to [0, 1]; edge slices
    /// repeat the nearest slice.
    pub image: Vec<f32>,
    pub lesion: Vec<bool>,
    pub lung: Vec<bool>,
    /// Boxes of the 8-connected lesion components, in output pixels.
    pub boxes: Vec<BBox>,
}

/// Source coordinate (in source pixels) of output pixel centre `u`, the crop centred at
/// source pixel coordinate `centre`.
fn source_coord(u: usize, size: usize, out_spacing: f32, centre: f32, src_spacing: f32) -> f32 {
    let mm = (u as f32 + 0.5 - size as f32 / 2.0) * out_spacing;
    mm / src_spacing + centre
}

/// Where the crop is centred, in source pixel coordinates (row, column): the middle of
/// the lungs' in-plane bounding box over the whole scan, so that a patient lying off
/// the scanner's centre (or a field of view larger on one side) still has both lungs in
/// the crop; the field of view's centre when the scan has no lung.
fn crop_centre(lung: &crate::volume::Volume<bool>) -> [f32; 2] {
    let [nz, ny, nx] = lung.shape;
    let (mut y0, mut y1, mut x0, mut x1) = (ny, 0, nx, 0);
    for z in 0..nz {
        for (i, _) in lung.slice(z).iter().enumerate().filter(|(_, l)| **l) {
            let (y, x) = (i / nx, i % nx);
            (y0, y1, x0, x1) = (y0.min(y), y1.max(y), x0.min(x), x1.max(x));
        }
    }
    if y0 > y1 {
        return [ny as f32 / 2.0 - 0.5, nx as f32 / 2.0 - 0.5];
    }
    [(y0 + y1) as f32 / 2.0, (x0 + x1) as f32 / 2.0]
}

/// A source slice: its pixels, shape (rows, columns), spacing and the crop's centre.
struct Source<'a, T> {
    pixels: &'a [T],
    shape: [usize; 2],
    spacing: [f32; 2],
    centre: [f32; 2],
}

fn resample_bilinear(src: Source<'_, f32>, spec: &SliceSpec) -> Vec<f32> {
    let ([ny, nx], slice) = (src.shape, src.pixels);
    let n = spec.size;
    let mut out = vec![0f32; n * n];
    for v in 0..n {
        let sy = source_coord(v, n, spec.spacing_mm, src.centre[0], src.spacing[0]);
        for u in 0..n {
            let sx = source_coord(u, n, spec.spacing_mm, src.centre[1], src.spacing[1]);
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let at = |y: f32, x: f32| {
                if x < 0.0 || y < 0.0 || x >= nx as f32 || y >= ny as f32 {
                    -1000.0
                } else {
                    slice[y as usize * nx + x as usize]
                }
            };
            out[v * n + u] = at(y0, x0) * (1.0 - fx) * (1.0 - fy)
                + at(y0, x0 + 1.0) * fx * (1.0 - fy)
                + at(y0 + 1.0, x0) * (1.0 - fx) * fy
                + at(y0 + 1.0, x0 + 1.0) * fx * fy;
        }
    }
    out
}

fn resample_nearest(src: Source<'_, bool>, spec: &SliceSpec) -> Vec<bool> {
    let ([ny, nx], slice) = (src.shape, src.pixels);
    let n = spec.size;
    let mut out = vec![false; n * n];
    for v in 0..n {
        let sy = source_coord(v, n, spec.spacing_mm, src.centre[0], src.spacing[0]).round();
        for u in 0..n {
            let sx = source_coord(u, n, spec.spacing_mm, src.centre[1], src.spacing[1]).round();
            if sx >= 0.0 && sy >= 0.0 && (sx as usize) < nx && (sy as usize) < ny {
                out[v * n + u] = slice[sy as usize * nx + sx as usize];
            }
        }
    }
    out
}

/// Bounding boxes of the 8-connected components with at least `min_pixels` pixels.
pub fn component_boxes(mask: &[bool], h: usize, w: usize, min_pixels: usize) -> Vec<BBox> {
    let mut seen = vec![false; mask.len()];
    let mut boxes = Vec::new();
    let mut queue = VecDeque::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        queue.push_back(start);
        let (mut x0, mut y0, mut x1, mut y1, mut count) = (w, h, 0, 0, 0usize);
        while let Some(i) = queue.pop_front() {
            let (y, x) = (i / w, i % w);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            count += 1;
            for dy in -1isize..=1 {
                for dx in -1isize..=1 {
                    let (ny, nx) = (y as isize + dy, x as isize + dx);
                    if ny < 0 || nx < 0 || ny >= h as isize || nx >= w as isize {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if mask[j] && !seen[j] {
                        seen[j] = true;
                        queue.push_back(j);
                    }
                }
            }
        }
        if count >= min_pixels {
            boxes.push(BBox::new(
                x0 as f32,
                y0 as f32,
                (x1 + 1) as f32,
                (y1 + 1) as f32,
            ));
        }
    }
    boxes
}

/// Model inputs for every slice of `scan` that contains lung.
pub fn slices(scan: &Scan, spec: &SliceSpec) -> Vec<SliceSample> {
    let [nz, ny, nx] = scan.ct.shape;
    let spacing = [scan.ct.spacing[1], scan.ct.spacing[2]];
    let centre = crop_centre(&scan.lung);
    let source = |pixels| Source {
        pixels,
        shape: [ny, nx],
        spacing,
        centre,
    };
    let mask_source = |pixels| Source {
        pixels,
        shape: [ny, nx],
        spacing,
        centre,
    };
    let windowed: Vec<Vec<f32>> = (0..nz)
        .map(|z| {
            resample_bilinear(source(scan.ct.slice(z)), spec)
                .into_iter()
                .map(|h| spec.window.apply(h))
                .collect()
        })
        .collect();
    let n = spec.size;
    (0..nz)
        .filter(|&z| scan.lung.slice(z).iter().any(|l| *l))
        .map(|z| {
            let mut image = Vec::with_capacity(3 * n * n);
            for zz in [z.saturating_sub(1), z, (z + 1).min(nz - 1)] {
                image.extend_from_slice(&windowed[zz]);
            }
            let lesion = resample_nearest(mask_source(scan.lesion.slice(z)), spec);
            let lung = resample_nearest(mask_source(scan.lung.slice(z)), spec);
            let boxes = component_boxes(&lesion, n, n, spec.min_box_pixels);
            SliceSample {
                scan: scan.id.clone(),
                z,
                size: n,
                image,
                lesion,
                lung,
                boxes,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_of_components_by_hand() {
        #[rustfmt::skip]
        let m = [
            1, 1, 0, 0, 0,
            0, 1, 0, 0, 1,
            0, 0, 0, 0, 1,
            0, 0, 1, 0, 0,
        ].map(|v| v == 1);
        let boxes = component_boxes(&m, 4, 5, 1);
        assert_eq!(
            boxes,
            vec![
                BBox::new(0.0, 0.0, 2.0, 2.0),
                BBox::new(4.0, 1.0, 5.0, 3.0),
                BBox::new(2.0, 3.0, 3.0, 4.0)
            ]
        );
        // diagonal pixels join (8-connectivity); size filter drops singletons
        let d = [true, false, false, true];
        assert_eq!(component_boxes(&d, 2, 2, 1).len(), 1);
        assert_eq!(component_boxes(&m, 4, 5, 2).len(), 2);
    }

    #[test]
    fn window_maps_the_range_to_unit() {
        assert_eq!(Window::LUNG.apply(-1350.0), 0.0);
        assert_eq!(Window::LUNG.apply(150.0), 1.0);
        assert!((Window::LUNG.apply(-600.0) - 0.5).abs() < 1e-6);
        assert_eq!(Window::LUNG.apply(3000.0), 1.0);
    }

    /// Two air-filled boxes inside a tissue block inside air: the lungs are found,
    /// holes (a vessel) are filled, the outside air is not lung.
    #[test]
    fn lung_mask_estimation_on_a_phantom() {
        let (nz, ny, nx) = (6, 20, 30);
        let mut ct = Volume::filled([nz, ny, nx], [2.0, 1.0, 1.0], -1000f32);
        for z in 0..nz {
            for y in 2..18 {
                for x in 2..28 {
                    let i = ct.index(z, y, x);
                    let in_lung =
                        (4..16).contains(&y) && ((4..13).contains(&x) || (17..26).contains(&x));
                    ct.data[i] = if in_lung { -850.0 } else { 40.0 };
                }
            }
            let v = ct.index(z, 9, 8);
            ct.data[v] = 40.0; // a vessel inside the left lung
        }
        let mask = estimate_lung_mask(&ct);
        let count = mask.data.iter().filter(|m| **m).count();
        assert_eq!(count, nz * 12 * 18);
        assert!(mask.get(3, 9, 8), "vessel hole filled");
        assert!(!mask.get(3, 0, 0), "outside air excluded");
        assert!(!mask.get(3, 10, 14), "mediastinum excluded");
    }

    #[test]
    fn resampling_keeps_physical_scale_and_stacks_neighbours() {
        // 0.7 mm source: a 14 mm wide square becomes 5 pixels at 2.8 mm.
        let (nz, n) = (3, 200);
        let mut ct = Volume::filled([nz, n, n], [5.0, 0.7, 0.7], -850f32);
        let mut lesion = Volume::filled([nz, n, n], [5.0, 0.7, 0.7], false);
        for z in 0..nz {
            for y in 90..110 {
                for x in 90..110 {
                    let i = ct.index(z, y, x);
                    ct.data[i] = -100.0 * z as f32;
                    lesion.data[i] = z == 1;
                }
            }
        }
        let lung = Volume::filled([nz, n, n], [5.0, 0.7, 0.7], true);
        let scan = Scan {
            id: "s".into(),
            ct,
            lesion,
            lung,
            lung_mask_estimated: false,
        };
        let spec = SliceSpec {
            size: 64,
            ..SliceSpec::SMALL
        };
        let s = slices(&scan, &spec);
        assert_eq!(s.len(), 3);
        let mid = &s[1];
        assert_eq!(mid.boxes.len(), 1);
        let b = mid.boxes[0];
        assert!(((b.x1 - b.x0) - 5.0).abs() <= 1.0, "{b:?}");
        // channel 0 of the middle slice is slice 0 (0 HU inside), channel 2 is slice 2
        let centre = 32 * 64 + 32;
        assert!((mid.image[centre] - Window::LUNG.apply(0.0)).abs() < 1e-5);
        assert!((mid.image[2 * 64 * 64 + centre] - Window::LUNG.apply(-200.0)).abs() < 1e-5);
        // the first slice repeats itself as its lower neighbour
        assert_eq!(s[0].image[centre], s[0].image[64 * 64 + centre]);
    }

    /// Lungs off the field of view's centre: the crop is centred on them, so a small
    /// crop still holds both; centred on the field of view it would miss them.
    #[test]
    fn the_crop_is_centred_on_the_lungs() {
        let n = 200;
        let mut lung = Volume::filled([1, n, n], [5.0, 1.0, 1.0], false);
        // Lungs in rows 20..60, columns 130..190 (centre 39.5, 159.5).
        for y in 20..60 {
            for x in 130..190 {
                let i = lung.index(0, y, x);
                lung.data[i] = true;
            }
        }
        assert_eq!(crop_centre(&lung), [39.5, 159.5]);
        let ct = Volume::filled([1, n, n], [5.0, 1.0, 1.0], -850f32);
        let scan = Scan {
            id: "s".into(),
            ct,
            lesion: Volume::filled([1, n, n], [5.0, 1.0, 1.0], false),
            lung,
            lung_mask_estimated: false,
        };
        // A 64 mm crop at 1 mm: every output pixel lies in the lungs.
        let spec = SliceSpec {
            size: 64,
            spacing_mm: 1.0,
            ..SliceSpec::SMALL
        };
        let s = slices(&scan, &spec);
        let inside = s[0].lung.iter().filter(|l| **l).count();
        assert_eq!(inside, 40 * 60, "the lung box lies whole inside the crop");
        let empty = Volume::filled([1, 8, 8], [1.0; 3], false);
        assert_eq!(crop_centre(&empty), [3.5, 3.5]);
    }
}
