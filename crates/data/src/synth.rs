//! Synthetic chest CT: an analytic phantom per patient, sampled by a per-cohort scanner.
//!
//! **Anatomy** ([`crate::anatomy`]): body, chest wall with ribs, spine, heart and great
//! vessels, diaphragm domes over the liver, two lungs with fissures and dependent
//! density, a trachea and main bronchi (air), and a tree of pulmonary vessels.
//! **Lesions** are COVID-like: ground-glass opacities (−650…−350 HU, soft edges, vessels
//! stay visible) or consolidations (−80…+40 HU, opaque); irregular ellipsoids
//! (log-uniform diameters within the cohort's range), multifocal, placed in the lung
//! periphery (70–95% of the way to the pleura) with posterior and lateral predominance.
//! A cohort may give a burden range: each diseased patient then also gets diffuse
//! disease up to a log-uniform share of the lungs (hospitalised patients: about 1–40%).
//!
//! **Acquisition** (per cohort): in-plane spacing and field of view fix the matrix; slice
//! thickness sets partial-volume averaging along z (three sub-samples per slice);
//! contrast enhances blood (heart, aorta, pulmonary vessels) and the liver; the
//! reconstruction kernel blurs and shapes the noise ([`crate::recon`]: band-pass, not
//! white); dose sets the noise level; a linear HU calibration comes last.
//!
//! Masks are exact: a voxel is lesion (lung) when its centre lies inside a lesion (lung)
//! on the central sub-slice. `Resolution::Small` keeps the field of view with a 4× coarser
//! in-plane grid and 2× thicker slices, for CPU-sized experiments.

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::anatomy::{Ellipsoid, Lung, Thorax, Tissue};
use crate::recon::{NoiseFilter, gaussian_blur};
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

pub(crate) type P3 = [f32; 3];

#[derive(Clone, Debug)]
struct Segment {
    a: P3,
    b: P3,
    radius: f32,
}

impl Segment {
    /// Bounding box.
    fn bounds(&self) -> (P3, P3) {
        let lo = [0, 1, 2].map(|d| self.a[d].min(self.b[d]) - self.radius);
        let hi = [0, 1, 2].map(|d| self.a[d].max(self.b[d]) + self.radius);
        (lo, hi)
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
        let lung = &lungs[(rng.next_u32() % 2) as usize].shape;
        let lateral = lung.center[0].signum() * if uniform(rng) < 0.7 { 1.0 } else { -0.3 };
        let posterior = if uniform(rng) < 0.7 { 1.0 } else { -1.0 };
        let d = [
            lateral * range(rng, 0.3, 1.0),
            posterior * range(rng, 0.2, 1.0),
            range(rng, -0.8, 0.8),
        ];
        let center = point_in(lung, d, range(rng, 0.7, 0.95));
        let diameter = log_uniform(rng, diameter_mm[0], diameter_mm[1]);
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
    thorax: Thorax,
    z_range: [f32; 2],
    airways: Vec<Segment>,
    vessels: Vec<Segment>,
    lesions: Vec<Lesion>,
}

pub(crate) fn uniform(rng: &mut ChaCha20Rng) -> f32 {
    (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
}

pub(crate) fn range(rng: &mut ChaCha20Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * uniform(rng)
}

fn log_uniform(rng: &mut ChaCha20Rng, lo: f32, hi: f32) -> f32 {
    (lo.ln() + (hi.ln() - lo.ln()) * uniform(rng)).exp()
}

pub(crate) fn normal(rng: &mut ChaCha20Rng) -> f32 {
    // Box–Muller
    let u1 = uniform(rng).max(1e-7);
    let u2 = uniform(rng);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// A point of the lung ellipsoid at radial fraction `r` along direction `d`.
fn point_in(lung: &Ellipsoid, d: P3, r: f32) -> P3 {
    let n = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt().max(1e-6);
    [0, 1, 2].map(|i| lung.center[i] + lung.semi[i] * r * d[i] / n)
}

/// Trachea, main bronchi and, from each hilum, a two-level tree of pulmonary vessels.
fn bronchovascular_tree(thorax: &Thorax, rng: &mut ChaCha20Rng) -> (Vec<Segment>, Vec<Segment>) {
    let [_, ay] = thorax.body;
    let height = thorax.height;
    let carina = [0.0, -0.18 * ay, 0.72 * height];
    let mut airways = vec![Segment {
        a: carina,
        b: [0.0, -0.2 * ay, height + 40.0],
        radius: 8.0,
    }];
    let mut vessels = Vec::new();
    for lung in &thorax.lungs {
        let lung = &lung.shape;
        let hilum = [lung.center[0] * 0.62, 0.0, 0.62 * height];
        airways.push(Segment {
            a: carina,
            b: hilum,
            radius: 5.0,
        });
        for _ in 0..24 {
            let d = [0, 1, 2].map(|_| range(rng, -1.0, 1.0));
            let mid = point_in(lung, d, range(rng, 0.35, 0.6));
            let radius = range(rng, 2.0, 3.5);
            vessels.push(Segment {
                a: hilum,
                b: mid,
                radius,
            });
            for _ in 0..2 {
                let d2 = [0, 1, 2].map(|i| d[i] + range(rng, -0.5, 0.5));
                let end = point_in(lung, d2, range(rng, 0.7, 0.92));
                vessels.push(Segment {
                    a: mid,
                    b: end,
                    radius: radius * 0.55,
                });
            }
        }
    }
    (airways, vessels)
}

/// 1 + Poisson(mean − 1) focal lesions, by inversion.
fn focal_lesions(population: &Population, lungs: &[Lung; 2], rng: &mut ChaCha20Rng) -> Vec<Lesion> {
    let lambda = (population.lesions_mean - 1.0).max(0.0);
    let (mut k, mut p, u) = (0usize, (-lambda).exp(), uniform(rng));
    let mut cdf = p;
    while u > cdf && k < 30 {
        k += 1;
        p *= lambda / k as f32;
        cdf += p;
    }
    (0..=k)
        .map(|_| {
            Lesion::draw(
                rng,
                lungs,
                population.lesion_diameter_mm,
                population.consolidation_share,
            )
        })
        .collect()
}

impl Patient {
    /// Draws a patient; `seed` fixes everything. The population's lesion-free share
    /// applies.
    pub fn sample(population: &Population, seed: [u8; 32]) -> Self {
        Self::draw(population, seed, false)
    }

    /// Draws a patient with disease, whatever the population's lesion-free share: held-out
    /// test patients, like the study's, all have annotated lesions.
    pub fn sample_diseased(population: &Population, seed: [u8; 32]) -> Self {
        Self::draw(population, seed, true)
    }

    fn draw(population: &Population, seed: [u8; 32], diseased: bool) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let thorax = Thorax::sample(&mut rng);
        let (airways, vessels) = bronchovascular_tree(&thorax, &mut rng);
        let free = uniform(&mut rng) < population.lesion_free_share;
        let sick = diseased || !free;
        let lesions = if sick {
            focal_lesions(population, &thorax.lungs, &mut rng)
        } else {
            Vec::new()
        };
        let burden = population
            .burden
            .map(|[lo, hi]| log_uniform(&mut rng, lo, hi));
        let mut burden_seed = [0u8; 32];
        rng.fill_bytes(&mut burden_seed);
        let patient = Self {
            z_range: [-25.0, thorax.height + 25.0],
            thorax,
            airways,
            vessels,
            lesions,
        };
        match burden {
            Some(b) if sick => patient.with_burden(b, burden_seed),
            _ => patient,
        }
    }

    pub fn has_lesions(&self) -> bool {
        !self.lesions.is_empty()
    }

    /// The same patient with diffuse disease added: large ground-glass and
    /// consolidative opacities until they cover about `burden` of the lungs (hospitalised
    /// COVID-19 patients range from about 1% to 40%). Coverage is measured on random
    /// points of the lungs, so overlapping lesions and lesion parts outside the lung
    /// count once or not at all.
    pub fn with_burden(mut self, burden: f32, seed: [u8; 32]) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let points = self.lung_points(&mut rng, 3000);
        let mut covered: Vec<bool> = points
            .iter()
            .map(|p| self.lesions.iter().any(|l| l.sample(*p, 1.0).0))
            .collect();
        let share = |c: &[bool]| c.iter().filter(|x| **x).count() as f32 / c.len().max(1) as f32;
        while share(&covered) < burden && self.lesions.len() < 200 {
            let lesion = Lesion::draw(&mut rng, &self.thorax.lungs, [20.0, 70.0], 0.3);
            for (c, p) in covered.iter_mut().zip(&points) {
                *c |= lesion.sample(*p, 1.0).0;
            }
            self.lesions.push(lesion);
        }
        self
    }

    /// `n` points drawn uniformly in the lungs (rejection sampling in their boxes).
    fn lung_points(&self, rng: &mut ChaCha20Rng, n: usize) -> Vec<P3> {
        let mut points = Vec::with_capacity(n);
        let mut tries = 0;
        while points.len() < n && tries < 50 * n {
            tries += 1;
            let lung = &self.thorax.lungs[(rng.next_u32() % 2) as usize].shape;
            let p = [0, 1, 2].map(|d| lung.center[d] + lung.semi[d] * range(rng, -1.0, 1.0));
            if matches!(self.thorax.tissue(p, 1.0), Tissue::Lung(_)) {
                points.push(p);
            }
        }
        points
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
        let grid = Grid::new(acq, resolution, self.z_range);
        let mut fine = self.anatomy(&grid, acq.contrast_hu);
        self.paint_tubes(&grid, &mut fine, acq.contrast_hu);
        self.paint_lesions(&grid, &mut fine, lesion_scale);
        let (mut ct, lung, lesion) = grid.thick_slices(fine);
        reconstruct(&mut ct, &grid, acq, seed);
        Scan {
            id: id.to_string(),
            ct,
            lesion,
            lung,
            lung_mask_estimated: false,
        }
    }

    /// The thorax on the fine grid (sub-slices).
    fn anatomy(&self, grid: &Grid, contrast_hu: f32) -> Fine {
        let (plane, n_fine) = (grid.plane(), grid.n_fine());
        let mut fine = Fine {
            hu: vec![-1000f32; n_fine * plane],
            lung: vec![false; n_fine * plane],
            lesion: vec![false; n_fine * plane],
        };
        for k in 0..n_fine {
            let z = grid.fine_z(k);
            for yi in 0..grid.n_xy {
                let y = grid.coord(yi);
                for xi in 0..grid.n_xy {
                    let i = k * plane + yi * grid.n_xy + xi;
                    let t = self.thorax.tissue([grid.coord(xi), y, z], grid.spacing_xy);
                    fine.hu[i] = t.hu(contrast_hu);
                    fine.lung[i] = matches!(t, Tissue::Lung(_));
                }
            }
        }
        fine
    }

    /// Great vessels (blood, outside the lungs), airways (air), pulmonary vessels.
    fn paint_tubes(&self, grid: &Grid, fine: &mut Fine, contrast_hu: f32) {
        let blood = Tissue::vessel_hu(contrast_hu);
        for (a, b, radius) in self.thorax.great_vessels() {
            let s = Segment { a, b, radius };
            let (lo, hi) = s.bounds();
            grid.paint(lo, hi, &mut |p, i| {
                if distance_to_segment(p, &s) < s.radius {
                    fine.hu[i] = blood;
                    fine.lung[i] = false;
                }
            });
        }
        for s in &self.airways {
            let (lo, hi) = s.bounds();
            grid.paint(lo, hi, &mut |p, i| {
                if distance_to_segment(p, s) < s.radius {
                    fine.hu[i] = -1000.0;
                }
            });
        }
        for s in &self.vessels {
            let (lo, hi) = s.bounds();
            grid.paint(lo, hi, &mut |p, i| {
                if fine.lung[i] && distance_to_segment(p, s) < s.radius {
                    fine.hu[i] = blood;
                }
            });
        }
    }

    fn paint_lesions(&self, grid: &Grid, fine: &mut Fine, lesion_scale: f32) {
        for l in &self.lesions {
            let r = l.reach(lesion_scale);
            let lo = [0, 1, 2].map(|d| l.center[d] - r[d]);
            let hi = [0, 1, 2].map(|d| l.center[d] + r[d]);
            grid.paint(lo, hi, &mut |p, i| {
                if !fine.lung[i] {
                    return;
                }
                let (inside, w) = l.sample(p, lesion_scale);
                if w > 0.0 {
                    let hu = fine.hu[i];
                    let target = hu + (l.hu - hu) * w;
                    // Ground glass leaves denser structures (vessels) visible.
                    fine.hu[i] = if l.consolidation {
                        target
                    } else {
                        hu.max(target)
                    };
                }
                fine.lesion[i] |= inside;
            });
        }
    }
}

/// HU and masks on the fine grid (`SUB` sub-slices per slice).
struct Fine {
    hu: Vec<f32>,
    lung: Vec<bool>,
    lesion: Vec<bool>,
}

/// Sub-slices per slice: partial-volume averaging along z.
const SUB: usize = 3;

/// The sampling grid of one scan.
struct Grid {
    n_xy: usize,
    spacing_xy: f32,
    thickness: f32,
    nz: usize,
    half_fov: f32,
    z0: f32,
    /// The scanner's own pixel (the ramp filter's scale).
    native_spacing: f32,
}

impl Grid {
    fn new(acq: &Acquisition, resolution: Resolution, z_range: [f32; 2]) -> Self {
        let spacing_xy = acq.in_plane_spacing_mm * resolution.in_plane_factor();
        let n_xy = (acq.field_of_view_mm / spacing_xy).round().max(8.0) as usize;
        let thickness = acq.slice_thickness_mm * resolution.thickness_factor();
        Self {
            n_xy,
            spacing_xy: acq.field_of_view_mm / n_xy as f32,
            thickness,
            nz: ((z_range[1] - z_range[0]) / thickness).ceil() as usize,
            half_fov: acq.field_of_view_mm / 2.0,
            z0: z_range[0],
            native_spacing: acq.in_plane_spacing_mm,
        }
    }

    fn plane(&self) -> usize {
        self.n_xy * self.n_xy
    }

    fn n_fine(&self) -> usize {
        self.nz * SUB
    }

    fn fine_dz(&self) -> f32 {
        self.thickness / SUB as f32
    }

    fn coord(&self, i: usize) -> f32 {
        (i as f32 + 0.5) * self.spacing_xy - self.half_fov
    }

    fn fine_z(&self, k: usize) -> f32 {
        self.z0 + (k as f32 + 0.5) * self.fine_dz()
    }

    /// Calls `f(point, index)` over the fine voxels of a bounding box.
    fn paint(&self, lo: P3, hi: P3, f: &mut dyn FnMut(P3, usize)) {
        let n = self.n_xy as isize;
        let to_xy = |v: f32| ((v + self.half_fov) / self.spacing_xy).floor();
        let x0 = to_xy(lo[0]).max(0.0) as usize;
        let x1 = (to_xy(hi[0]) as isize + 1).clamp(0, n) as usize;
        let y0 = to_xy(lo[1]).max(0.0) as usize;
        let y1 = (to_xy(hi[1]) as isize + 1).clamp(0, n) as usize;
        let k0 = ((lo[2] - self.z0) / self.fine_dz()).floor().max(0.0) as usize;
        let k1 = (((hi[2] - self.z0) / self.fine_dz()).floor() as isize + 1)
            .clamp(0, self.n_fine() as isize) as usize;
        for k in k0..k1 {
            for yi in y0..y1 {
                for xi in x0..x1 {
                    let p = [self.coord(xi), self.coord(yi), self.fine_z(k)];
                    f(p, k * self.plane() + yi * self.n_xy + xi);
                }
            }
        }
    }

    /// Thick slices: the mean of the sub-slices; masks from the central one.
    fn thick_slices(&self, fine: Fine) -> (Volume<f32>, Volume<bool>, Volume<bool>) {
        let (plane, nz) = (self.plane(), self.nz);
        let shape = [nz, self.n_xy, self.n_xy];
        let spacing = [self.thickness, self.spacing_xy, self.spacing_xy];
        let mut ct = Volume::filled(shape, spacing, 0f32);
        let mut lung = Volume::filled(shape, spacing, false);
        let mut lesion = Volume::filled(shape, spacing, false);
        for z in 0..nz {
            for j in 0..plane {
                let sum: f32 = (0..SUB).map(|s| fine.hu[(z * SUB + s) * plane + j]).sum();
                ct.data[z * plane + j] = sum / SUB as f32;
                let mid = (z * SUB + SUB / 2) * plane + j;
                lung.data[z * plane + j] = fine.lung[mid];
                lesion.data[z * plane + j] = fine.lesion[mid] && fine.lung[mid];
            }
        }
        (ct, lung, lesion)
    }
}

/// The reconstruction kernel's blur, noise shaped by that kernel (see `recon`), and the
/// scanner's HU calibration.
fn reconstruct(ct: &mut Volume<f32>, grid: &Grid, acq: &Acquisition, seed: [u8; 32]) {
    let (n, plane) = (grid.n_xy, grid.plane());
    let kernel_px = acq.kernel_blur_mm / grid.spacing_xy;
    let filter = NoiseFilter::new(kernel_px, 2.0 * grid.native_spacing / grid.spacing_xy);
    let mut rng = ChaCha20Rng::from_seed(seed);
    for slice in ct.data.chunks_mut(plane) {
        if kernel_px > 0.05 {
            gaussian_blur(slice, n, n, kernel_px);
        }
        filter.add(slice, n, acq.noise_hu, &mut rng);
        for v in slice.iter_mut() {
            *v = *v * acq.hu_scale + acq.hu_offset;
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
            contrast_hu: 0.0,
        }
    }

    fn pop(free: f32) -> Population {
        Population {
            lesion_free_share: free,
            lesions_mean: 3.0,
            lesion_diameter_mm: [8.0, 40.0],
            consolidation_share: 0.5,
            burden: None,
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

    /// Lesion voxels over lung voxels.
    fn burden(scan: &Scan) -> f32 {
        let lung = scan.lung.data.iter().filter(|l| **l).count();
        let lesion = scan.lesion.data.iter().filter(|l| **l).count();
        lesion as f32 / lung as f32
    }

    #[test]
    fn held_out_patients_are_diseased_and_burdens_spread_like_hospitalised_patients() {
        assert!(!Patient::sample(&pop(1.0), [9; 32]).has_lesions());
        assert!(Patient::sample_diseased(&pop(1.0), [9; 32]).has_lesions());
        let population = Population {
            burden: Some([0.01, 0.4]),
            ..pop(0.0)
        };
        let mut burdens: Vec<f32> = (0..12u8)
            .map(|i| {
                let p = Patient::sample(&population, [i; 32]);
                burden(&p.scan("x", &acq(), Resolution::Small, 1.0, [0; 32]))
            })
            .collect();
        burdens.sort_by(f32::total_cmp);
        let (lo, median, hi) = (burdens[0], burdens[6], burdens[11]);
        // Hospitalised COVID-19 pneumonia: about 1–40% of the lungs, median near 10%.
        assert!(lo >= 0.004 && hi <= 0.5, "burdens {burdens:?}");
        assert!((0.03..=0.2).contains(&median), "burdens {burdens:?}");
        assert!(hi / lo > 5.0, "burdens should spread: {burdens:?}");
    }

    #[test]
    fn contrast_enhances_blood_and_not_lung() {
        let p = Patient::sample(&pop(0.0), [4; 32]);
        let plain = p.scan("x", &acq(), Resolution::Small, 1.0, [0; 32]);
        let enhanced = p.scan(
            "x",
            &Acquisition {
                contrast_hu: 200.0,
                ..acq()
            },
            Resolution::Small,
            1.0,
            [0; 32],
        );
        let raised = plain
            .ct
            .data
            .iter()
            .zip(&enhanced.ct.data)
            .filter(|(a, b)| **b - **a > 150.0)
            .count();
        // The heart and aorta: tens of cm³ at 2.8 × 2.8 × 4 mm voxels.
        assert!(raised > 2000, "{raised} voxels enhanced");
        let lung_changed = plain
            .ct
            .data
            .iter()
            .zip(&enhanced.ct.data)
            .zip(&plain.lung.data)
            .filter(|((a, b), l)| **l && (**b - **a).abs() > 1e-3)
            .count();
        let lung = plain.lung.data.iter().filter(|l| **l).count();
        // Only the pulmonary vessels inside the lungs change.
        assert!(
            lung_changed * 10 < lung,
            "{lung_changed} of {lung} lung voxels"
        );
    }
}
