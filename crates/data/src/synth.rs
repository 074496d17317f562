//! Synthetic chest CT: an analytic phantom per patient, sampled by a per-cohort scanner.
//!
//! **Anatomy** (in millimetres, LPS, z = 0 at the lung bases): an elliptical body with a
//! fat rim, a spine, two ellipsoidal lungs at −860 HU, a trachea and main bronchi (air),
//! and a tree of vessels (+40 HU) inside the lungs. **Lesions** are COVID-like:
//! ground-glass opacities (−650…−350 HU, soft edges, vessels stay visible) or
//! consolidations (−80…+40 HU, opaque); irregular ellipsoids 2–100 mm across
//! (log-uniform within the cohort's range), multifocal, placed in the lung periphery
//! (70–95% of the way to the pleura) with posterior and lateral predominance.
//!
//! **Acquisition** (per cohort): in-plane spacing and field of view fix the matrix; slice
//! thickness sets partial-volume averaging along z (three sub-samples per slice); the
//! reconstruction kernel is a Gaussian blur; white noise; a linear HU calibration.
//!
//! Masks are exact: a voxel is lesion (lung) when its centre lies inside a lesion (lung)
//! on the central sub-slice. `Resolution::Small` keeps the field of view with a 4× coarser
//! in-plane grid and 2× thicker slices, for CPU-sized experiments.

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::registry::{Acquisition, Population};
use crate::volume::{Scan, Volume};

/// Sampling grid of the generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resolution {
    /// 4× coarser in-plane (≈128² matrix), 2× thicker slices.
    Small,
    /// The acquisition's own grid (≈512² matrix).
    Full,
}

impl Resolution {
    fn in_plane_factor(self) -> f32 {
        match self {
            Resolution::Small => 4.0,
            Resolution::Full => 1.0,
        }
    }

    fn thickness_factor(self) -> f32 {
        match self {
            Resolution::Small => 2.0,
            Resolution::Full => 1.0,
        }
    }
}

type P3 = [f32; 3];

#[derive(Clone, Debug)]
struct Segment {
    a: P3,
    b: P3,
    radius: f32,
}

#[derive(Clone, Debug)]
struct Lung {
    center: P3,
    semi: P3,
}

impl Lung {
    fn contains(&self, p: P3) -> bool {
        let q = [
            (p[0] - self.center[0]) / self.semi[0],
            (p[1] - self.center[1]) / self.semi[1],
            (p[2] - self.center[2]) / self.semi[2],
        ];
        q[0] * q[0] + q[1] * q[1] + q[2] * q[2] <= 1.0
    }
}

/// A lesion; its size is multiplied by the scan's lesion scale (longitudinal series).
#[derive(Clone, Debug)]
struct Lesion {
    center: P3,
    semi: P3,
    hu: f32,
    consolidation: bool,
    phase: [f32; 2],
}

impl Lesion {
    /// A lesion in a random lung, mostly peripheral and posterior (as COVID-19
    /// opacities are), its diameter log-uniform in `diameter_mm`.
    fn draw(
        rng: &mut ChaCha20Rng,
        lungs: &[Lung; 2],
        diameter_mm: [f32; 2],
        consolidation_share: f32,
    ) -> Self {
        let lung = &lungs[(rng.next_u32() % 2) as usize];
        let lateral = lung.center[0].signum() * if uniform(rng) < 0.7 { 1.0 } else { -0.3 };
        let posterior = if uniform(rng) < 0.7 { 1.0 } else { -1.0 };
        let d = [
            lateral * range(rng, 0.3, 1.0),
            posterior * range(rng, 0.2, 1.0),
            range(rng, -0.8, 0.8),
        ];
        let center = point_in(lung, d, range(rng, 0.7, 0.95));
        let [dmin, dmax] = diameter_mm;
        let diameter = (dmin.ln() + (dmax.ln() - dmin.ln()) * uniform(rng)).exp();
        let semi = [0, 1, 2].map(|_| diameter / 2.0 * range(rng, 0.75, 1.25));
        let consolidation = uniform(rng) < consolidation_share;
        let hu = if consolidation {
            range(rng, -80.0, 40.0)
        } else {
            range(rng, -650.0, -350.0)
        };
        Lesion {
            center,
            semi,
            hu,
            consolidation,
            phase: [range(rng, 0.0, 6.3), range(rng, 0.0, 6.3)],
        }
    }

    fn volume(&self) -> f32 {
        4.0 / 3.0 * std::f32::consts::PI * self.semi.iter().product::<f32>()
    }

    /// (inside the lesion, opacity weight in [0, 1]) at p for a size scale.
    fn sample(&self, p: P3, scale: f32) -> (bool, f32) {
        let q = [
            (p[0] - self.center[0]) / (self.semi[0] * scale),
            (p[1] - self.center[1]) / (self.semi[1] * scale),
            (p[2] - self.center[2]) / (self.semi[2] * scale),
        ];
        let rho = (q[0] * q[0] + q[1] * q[1] + q[2] * q[2]).sqrt();
        let theta = q[1].atan2(q[0]);
        let psi = if rho > 0.0 { q[2] / rho } else { 0.0 };
        let boundary = 1.0
            + 0.16 * (3.0 * theta + self.phase[0]).sin()
            + 0.1 * (std::f32::consts::PI * 2.0 * psi + self.phase[1]).sin();
        let edge = if self.consolidation { 0.05 } else { 0.3 };
        (rho < boundary, ((boundary - rho) / edge).clamp(0.0, 1.0))
    }

    fn reach(&self, scale: f32) -> P3 {
        self.semi.map(|s| s * scale * 1.3)
    }
}

/// One patient's anatomy and disease, independent of any scanner.
#[derive(Clone, Debug)]
pub struct Patient {
    body: [f32; 2],
    spine: (P3, f32),
    lungs: [Lung; 2],
    z_range: [f32; 2],
    airways: Vec<Segment>,
    vessels: Vec<Segment>,
    lesions: Vec<Lesion>,
}

fn uniform(rng: &mut ChaCha20Rng) -> f32 {
    (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
}

fn range(rng: &mut ChaCha20Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * uniform(rng)
}

fn normal(rng: &mut ChaCha20Rng) -> f32 {
    // Box–Muller
    let u1 = uniform(rng).max(1e-7);
    let u2 = uniform(rng);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// A point of the lung ellipsoid at radial fraction `r` along direction `d`.
fn point_in(lung: &Lung, d: P3, r: f32) -> P3 {
    let n = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt().max(1e-6);
    [
        lung.center[0] + lung.semi[0] * r * d[0] / n,
        lung.center[1] + lung.semi[1] * r * d[1] / n,
        lung.center[2] + lung.semi[2] * r * d[2] / n,
    ]
}

impl Patient {
    /// Draws a patient; `seed` fixes everything.
    pub fn sample(population: &Population, seed: [u8; 32]) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let ax = range(&mut rng, 145.0, 175.0);
        let ay = range(&mut rng, 100.0, 125.0);
        let height = range(&mut rng, 210.0, 260.0);
        let lungs = [-1.0f32, 1.0].map(|side| Lung {
            center: [side * 0.45 * ax, 0.04 * ay, height / 2.0],
            semi: [0.33 * ax, 0.6 * ay, height / 2.0],
        });
        let carina = [0.0, -0.18 * ay, 0.72 * height];
        let mut airways = vec![Segment {
            a: carina,
            b: [0.0, -0.2 * ay, height + 40.0],
            radius: 8.0,
        }];
        let mut vessels = Vec::new();
        for lung in &lungs {
            let hilum = [lung.center[0] * 0.62, 0.0, 0.62 * height];
            airways.push(Segment {
                a: carina,
                b: hilum,
                radius: 5.0,
            });
            for _ in 0..24 {
                let d = [
                    range(&mut rng, -1.0, 1.0),
                    range(&mut rng, -1.0, 1.0),
                    range(&mut rng, -1.0, 1.0),
                ];
                let mid = point_in(lung, d, range(&mut rng, 0.35, 0.6));
                let radius = range(&mut rng, 2.0, 3.5);
                vessels.push(Segment {
                    a: hilum,
                    b: mid,
                    radius,
                });
                for _ in 0..2 {
                    let d2 = [
                        d[0] + range(&mut rng, -0.5, 0.5),
                        d[1] + range(&mut rng, -0.5, 0.5),
                        d[2] + range(&mut rng, -0.5, 0.5),
                    ];
                    let end = point_in(lung, d2, range(&mut rng, 0.7, 0.92));
                    vessels.push(Segment {
                        a: mid,
                        b: end,
                        radius: radius * 0.55,
                    });
                }
            }
        }
        let mut lesions = Vec::new();
        if uniform(&mut rng) >= population.lesion_free_share {
            // 1 + Poisson(mean − 1) by inversion
            let lambda = (population.lesions_mean - 1.0).max(0.0);
            let (mut k, mut p, u) = (0usize, (-lambda).exp(), uniform(&mut rng));
            let mut cdf = p;
            while u > cdf && k < 30 {
                k += 1;
                p *= lambda / k as f32;
                cdf += p;
            }
            let [dmin, dmax] = population.lesion_diameter_mm;
            for _ in 0..=k {
                lesions.push(Lesion::draw(
                    &mut rng,
                    &lungs,
                    [dmin, dmax],
                    population.consolidation_share,
                ));
            }
        }
        Self {
            body: [ax, ay],
            spine: ([0.0, 0.78 * ay, 0.0], 16.0),
            lungs,
            z_range: [-25.0, height + 25.0],
            airways,
            vessels,
            lesions,
        }
    }

    pub fn has_lesions(&self) -> bool {
        !self.lesions.is_empty()
    }

    /// The same patient with diffuse disease added: large ground-glass and
    /// consolidative opacities until their volume reaches about `burden` of the lungs'
    /// (hospitalised COVID-19 patients range from about 1% to 40%; overlaps and the
    /// lung boundary make the measured burden somewhat lower than the target).
    pub fn with_burden(mut self, burden: f32, seed: [u8; 32]) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let lungs: f32 = self
            .lungs
            .iter()
            .map(|l| 4.0 / 3.0 * std::f32::consts::PI * l.semi.iter().product::<f32>())
            .sum();
        let mut total: f32 = self.lesions.iter().map(Lesion::volume).sum();
        while total < burden * lungs && self.lesions.len() < 200 {
            let lesion = Lesion::draw(&mut rng, &self.lungs, [20.0, 70.0], 0.3);
            total += lesion.volume();
            self.lesions.push(lesion);
        }
        self
    }

    /// Scans the patient with `acq` at `resolution`; lesions are scaled by
    /// `lesion_scale` (1 for the regular scan); `seed` drives the image noise.
    pub fn scan(
        &self,
        id: &str,
        acq: &Acquisition,
        resolution: Resolution,
        lesion_scale: f32,
        seed: [u8; 32],
    ) -> Scan {
        let spacing_xy = acq.in_plane_spacing_mm * resolution.in_plane_factor();
        let n_xy = (acq.field_of_view_mm / spacing_xy).round().max(8.0) as usize;
        let spacing_xy = acq.field_of_view_mm / n_xy as f32;
        let thickness = acq.slice_thickness_mm * resolution.thickness_factor();
        let nz = ((self.z_range[1] - self.z_range[0]) / thickness).ceil() as usize;
        const SUB: usize = 3;
        let fine_dz = thickness / SUB as f32;
        let half_fov = acq.field_of_view_mm / 2.0;
        let coord = |i: usize| (i as f32 + 0.5) * spacing_xy - half_fov;
        let fine_z = |k: usize| self.z_range[0] + (k as f32 + 0.5) * fine_dz;
        let n_fine = nz * SUB;
        let plane = n_xy * n_xy;
        let mut hu = vec![-1000f32; n_fine * plane];
        let mut lung = vec![false; n_fine * plane];
        let mut lesion = vec![false; n_fine * plane];
        let [ax, ay] = self.body;

        // Base anatomy.
        for k in 0..n_fine {
            let z = fine_z(k);
            for yi in 0..n_xy {
                let y = coord(yi);
                for xi in 0..n_xy {
                    let x = coord(xi);
                    let e = (x / ax).powi(2) + (y / ay).powi(2);
                    if e > 1.0 {
                        continue;
                    }
                    let i = k * plane + yi * n_xy + xi;
                    let fat = ((x / (ax - 12.0)).powi(2) + (y / (ay - 12.0)).powi(2)) > 1.0;
                    hu[i] = if fat { -100.0 } else { 40.0 };
                    let (sc, sr) = self.spine;
                    if (x - sc[0]).powi(2) + (y - sc[1]).powi(2) < sr * sr {
                        hu[i] = 500.0;
                    }
                    if self.lungs.iter().any(|l| l.contains([x, y, z])) {
                        hu[i] = -860.0;
                        lung[i] = true;
                    }
                }
            }
        }

        // Paints a shape over its bounding box: `f(point, index)`.
        let paint = |lo: P3, hi: P3, f: &mut dyn FnMut(P3, usize)| {
            let to_xy = |v: f32| ((v + half_fov) / spacing_xy).floor();
            let x0 = to_xy(lo[0]).max(0.0) as usize;
            let x1 = (to_xy(hi[0]) as isize + 1).clamp(0, n_xy as isize) as usize;
            let y0 = to_xy(lo[1]).max(0.0) as usize;
            let y1 = (to_xy(hi[1]) as isize + 1).clamp(0, n_xy as isize) as usize;
            let k0 = ((lo[2] - self.z_range[0]) / fine_dz).floor().max(0.0) as usize;
            let k1 = (((hi[2] - self.z_range[0]) / fine_dz).floor() as isize + 1)
                .clamp(0, n_fine as isize) as usize;
            for k in k0..k1 {
                for yi in y0..y1 {
                    for xi in x0..x1 {
                        f(
                            [coord(xi), coord(yi), fine_z(k)],
                            k * plane + yi * n_xy + xi,
                        );
                    }
                }
            }
        };
        let seg_bounds = |s: &Segment| {
            let lo = [0, 1, 2].map(|d| s.a[d].min(s.b[d]) - s.radius);
            let hi = [0, 1, 2].map(|d| s.a[d].max(s.b[d]) + s.radius);
            (lo, hi)
        };
        for s in &self.airways {
            let (lo, hi) = seg_bounds(s);
            paint(lo, hi, &mut |p, i| {
                if distance_to_segment(p, s) < s.radius {
                    hu[i] = -1000.0;
                }
            });
        }
        for s in &self.vessels {
            let (lo, hi) = seg_bounds(s);
            paint(lo, hi, &mut |p, i| {
                if lung[i] && distance_to_segment(p, s) < s.radius {
                    hu[i] = 40.0;
                }
            });
        }
        for l in &self.lesions {
            let r = l.reach(lesion_scale);
            let lo = [0, 1, 2].map(|d| l.center[d] - r[d]);
            let hi = [0, 1, 2].map(|d| l.center[d] + r[d]);
            paint(lo, hi, &mut |p, i| {
                if !lung[i] {
                    return;
                }
                let (inside, w) = l.sample(p, lesion_scale);
                if w > 0.0 {
                    let target = hu[i] + (l.hu - hu[i]) * w;
                    // Ground glass leaves denser structures (vessels) visible.
                    hu[i] = if l.consolidation {
                        target
                    } else {
                        hu[i].max(target)
                    };
                }
                lesion[i] |= inside;
            });
        }

        // Thick slices: average the sub-slices; masks from the central one.
        let shape = [nz, n_xy, n_xy];
        let spacing = [thickness, spacing_xy, spacing_xy];
        let mut ct = Volume::filled(shape, spacing, 0f32);
        let mut lung_mask = Volume::filled(shape, spacing, false);
        let mut lesion_mask = Volume::filled(shape, spacing, false);
        for z in 0..nz {
            for j in 0..plane {
                let sum: f32 = (0..SUB).map(|s| hu[(z * SUB + s) * plane + j]).sum();
                ct.data[z * plane + j] = sum / SUB as f32;
                let mid = (z * SUB + SUB / 2) * plane + j;
                lung_mask.data[z * plane + j] = lung[mid];
                lesion_mask.data[z * plane + j] = lesion[mid] && lung[mid];
            }
        }
        drop((hu, lung, lesion));

        // Reconstruction kernel, noise, calibration.
        let sigma_px = acq.kernel_blur_mm / spacing_xy;
        if sigma_px > 0.05 {
            for z in 0..nz {
                gaussian_blur(
                    &mut ct.data[z * plane..(z + 1) * plane],
                    n_xy,
                    n_xy,
                    sigma_px,
                );
            }
        }
        let mut rng = ChaCha20Rng::from_seed(seed);
        for v in &mut ct.data {
            *v = (*v + acq.noise_hu * normal(&mut rng)) * acq.hu_scale + acq.hu_offset;
        }
        Scan {
            id: id.to_string(),
            ct,
            lesion: lesion_mask,
            lung: lung_mask,
            lung_mask_estimated: false,
        }
    }
}

fn distance_to_segment(p: P3, s: &Segment) -> f32 {
    let ab = [s.b[0] - s.a[0], s.b[1] - s.a[1], s.b[2] - s.a[2]];
    let ap = [p[0] - s.a[0], p[1] - s.a[1], p[2] - s.a[2]];
    let len2 = ab[0] * ab[0] + ab[1] * ab[1] + ab[2] * ab[2];
    let t = if len2 > 0.0 {
        ((ap[0] * ab[0] + ap[1] * ab[1] + ap[2] * ab[2]) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let d = [ap[0] - t * ab[0], ap[1] - t * ab[1], ap[2] - t * ab[2]];
    (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt()
}

/// Separable Gaussian blur of a row-major `h × w` image (edges clamped).
pub(crate) fn gaussian_blur(img: &mut [f32], h: usize, w: usize, sigma: f32) {
    let r = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let norm: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / norm).collect();
    let mut tmp = vec![0f32; img.len()];
    for y in 0..h {
        for x in 0..w {
            tmp[y * w + x] = (-r..=r)
                .map(|i| {
                    kernel[(i + r) as usize]
                        * img[y * w + (x as isize + i).clamp(0, w as isize - 1) as usize]
                })
                .sum();
        }
    }
    for y in 0..h {
        for x in 0..w {
            img[y * w + x] = (-r..=r)
                .map(|i| {
                    kernel[(i + r) as usize]
                        * tmp[(y as isize + i).clamp(0, h as isize - 1) as usize * w + x]
                })
                .sum();
        }
    }
}

/// The lesion-size factor of scan `index` of `scans` in a longitudinal series: growth to
/// a peak a quarter of the way through, then resolution.
pub fn longitudinal_scale(index: usize, scans: usize) -> f32 {
    let t = index as f32 / (scans.max(2) - 1) as f32;
    0.35 + 0.9 * (4.0 * t) * (1.0 - 4.0 * t).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acq() -> Acquisition {
        Acquisition {
            in_plane_spacing_mm: 0.7,
            slice_thickness_mm: 2.0,
            field_of_view_mm: 360.0,
            noise_hu: 0.0,
            kernel_blur_mm: 0.0,
            hu_scale: 1.0,
            hu_offset: 0.0,
        }
    }

    fn pop(free: f32) -> Population {
        Population {
            lesion_free_share: free,
            lesions_mean: 3.0,
            lesion_diameter_mm: [8.0, 40.0],
            consolidation_share: 0.5,
        }
    }

    #[test]
    fn scans_are_deterministic_and_anatomically_plausible() {
        let p = Patient::sample(&pop(0.0), [1; 32]);
        assert!(p.has_lesions());
        let a = p.scan("x", &acq(), Resolution::Small, 1.0, [2; 32]);
        let b =
            Patient::sample(&pop(0.0), [1; 32]).scan("x", &acq(), Resolution::Small, 1.0, [2; 32]);
        assert_eq!(a, b);
        let lung_hu: Vec<f32> =
            a.ct.data
                .iter()
                .zip(&a.lung.data)
                .filter(|(_, l)| **l)
                .map(|(h, _)| *h)
                .collect();
        let median = {
            let mut v = lung_hu.clone();
            v.sort_by(f32::total_cmp);
            v[v.len() / 2]
        };
        assert!((-900.0..-800.0).contains(&median), "lung median {median}");
        // lesions lie in the lungs and are denser than parenchyma
        let lesion_hu: Vec<f32> =
            a.ct.data
                .iter()
                .zip(&a.lesion.data)
                .filter(|(_, l)| **l)
                .map(|(h, _)| *h)
                .collect();
        assert!(!lesion_hu.is_empty());
        assert!(
            a.lesion
                .data
                .iter()
                .zip(&a.lung.data)
                .all(|(les, lu)| !les || *lu)
        );
        let mean = lesion_hu.iter().sum::<f32>() / lesion_hu.len() as f32;
        assert!(mean > -700.0, "lesion mean {mean}");
        // outside the body is air
        assert_eq!(a.ct.data[0], -1000.0);
    }

    #[test]
    fn acquisition_sets_grid_calibration_and_noise() {
        let p = Patient::sample(&pop(1.0), [3; 32]);
        assert!(!p.has_lesions());
        let mut a = acq();
        let base = p.scan("x", &a, Resolution::Small, 1.0, [0; 32]);
        assert_eq!(base.ct.shape[1], (360.0f32 / 2.8).round() as usize);
        assert!(base.lesion.data.iter().all(|l| !l));
        a.hu_offset = 50.0;
        a.hu_scale = 1.1;
        let shifted = p.scan("x", &a, Resolution::Small, 1.0, [0; 32]);
        for (s, b) in shifted.ct.data.iter().zip(&base.ct.data).step_by(997) {
            assert!((s - (b * 1.1 + 50.0)).abs() < 1e-2);
        }
        a = acq();
        a.noise_hu = 30.0;
        let noisy = p.scan("x", &a, Resolution::Small, 1.0, [0; 32]);
        let diffs: Vec<f32> = noisy
            .ct
            .data
            .iter()
            .zip(&base.ct.data)
            .map(|(n, b)| n - b)
            .collect();
        let sd = (diffs.iter().map(|d| d * d).sum::<f32>() / diffs.len() as f32).sqrt();
        assert!((sd - 30.0).abs() < 1.0, "noise sd {sd}");
        a = acq();
        a.slice_thickness_mm = 5.0;
        let thick = p.scan("x", &a, Resolution::Small, 1.0, [0; 32]);
        assert!(thick.ct.shape[0] < base.ct.shape[0] / 2);
    }

    #[test]
    fn longitudinal_lesions_grow_then_resolve() {
        let p = Patient::sample(&pop(0.0), [5; 32]);
        let scales: Vec<f32> = (0..5).map(|i| longitudinal_scale(i, 5)).collect();
        assert!(scales[1] > scales[0] && scales[1] > scales[4]);
        let burden = |s: f32| {
            p.scan("x", &acq(), Resolution::Small, s, [0; 32])
                .lesion
                .data
                .iter()
                .filter(|l| **l)
                .count()
        };
        assert!(burden(scales[1]) > burden(scales[0]));
        assert!(burden(scales[1]) > burden(scales[4]));
    }

    #[test]
    fn blur_preserves_the_mean_and_smooths() {
        let mut img = vec![0f32; 16 * 16];
        img[8 * 16 + 8] = 256.0;
        gaussian_blur(&mut img, 16, 16, 1.5);
        let total: f32 = img.iter().sum();
        assert!((total - 256.0).abs() < 1e-2);
        assert!(img[8 * 16 + 8] < 256.0 && img[8 * 16 + 9] > 0.0);
    }
}
