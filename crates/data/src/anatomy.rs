//! The thorax of a synthetic patient: what a voxel holds before any lesion is drawn.
//!
//! Millimetres, LPS (x towards the patient's left, y posterior, z superior), z = 0 at the
//! lung bases. The structures are those that make real CT hard for a lesion detector:
//! the heart and great vessels beside the lungs, ribs and the chest wall around them,
//! the diaphragm domes with the liver below (lung bases are crescents around a dense
//! dome, a classic source of false positives), the interlobar fissures (thin dense
//! lines), and dependent density — lungs grow denser posteriorly, and many patients lying
//! supine show a subpleural band of posterior density that looks like ground glass but is
//! not disease. Shapes are schematic; the densities are textbook values (non-enhanced
//! blood +40 HU, liver +55 HU, cortical-and-marrow bone +400…+500 HU, lung −870…−820 HU).

use chacha20::ChaCha20Rng;

use crate::synth::{P3, range};

/// Soft tissue, muscle and non-enhanced blood.
const SOFT_HU: f32 = 40.0;
const FAT_HU: f32 = -100.0;
const LIVER_HU: f32 = 55.0;
const RIB_HU: f32 = 450.0;
const SPINE_HU: f32 = 500.0;
/// The visceral pleura of a fissure, about 0.6 mm thick.
const FISSURE_HU: f32 = -150.0;
const FISSURE_MM: f32 = 0.6;
/// Parenchyma: anterior (non-dependent) lung, before dependent density.
const LUNG_HU: f32 = -870.0;
/// Inner boundary of the rib cage, as a fraction of the body ellipse.
const CAGE: f32 = 0.8;
const RIB_DEPTH: f32 = 0.05;

/// An axis-aligned ellipsoid.
#[derive(Clone, Debug)]
pub(crate) struct Ellipsoid {
    pub center: P3,
    pub semi: P3,
}

impl Ellipsoid {
    /// Squared normalised radius (≤ 1 inside).
    fn radius2(&self, p: P3) -> f32 {
        (0..3)
            .map(|d| ((p[d] - self.center[d]) / self.semi[d]).powi(2))
            .sum()
    }
}

/// A lung: an ellipsoid whose lower half is flattened (|z|⁴), so the bases stay wide and
/// reach down around the diaphragm dome into the costophrenic recesses.
#[derive(Clone, Debug)]
pub(crate) struct Lung {
    pub shape: Ellipsoid,
}

impl Lung {
    /// Normalised radius: below 1 inside.
    fn radius2(&self, p: P3) -> f32 {
        let (c, s) = (self.shape.center, self.shape.semi);
        let zn = (p[2] - c[2]) / s[2];
        let z_term = if zn < 0.0 { zn.powi(4) } else { zn * zn };
        ((p[0] - c[0]) / s[0]).powi(2) + ((p[1] - c[1]) / s[1]).powi(2) + z_term
    }
}

/// A thin plane through the lung (an interlobar fissure), optionally limited to one
/// side of another plane (the horizontal fissure lies in front of the oblique one).
#[derive(Clone, Debug)]
struct Fissure {
    point: P3,
    normal: P3,
    only_positive_side_of: Option<(P3, P3)>,
}

fn signed_distance(p: P3, point: P3, normal: P3) -> f32 {
    (0..3).map(|d| (p[d] - point[d]) * normal[d]).sum()
}

fn unit(v: P3) -> P3 {
    let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt().max(1e-6);
    v.map(|c| c / n)
}

/// One hemidiaphragm: a paraboloid dome under a lung.
#[derive(Clone, Debug)]
struct Dome {
    apex: P3,
    /// Horizontal distances at which the dome has fallen to the lowest recess.
    reach: [f32; 2],
    floor: f32,
}

impl Dome {
    fn height(&self, x: f32, y: f32) -> f32 {
        let d2 = ((x - self.apex[0]) / self.reach[0]).powi(2)
            + ((y - self.apex[1]) / self.reach[1]).powi(2);
        self.floor + (self.apex[2] - self.floor) * (1.0 - d2).max(0.0)
    }
}

/// Everything of a patient that is not disease.
#[derive(Clone, Debug)]
pub(crate) struct Thorax {
    /// Semi-axes of the body ellipse.
    pub body: [f32; 2],
    pub lungs: [Lung; 2],
    pub height: f32,
    heart: Ellipsoid,
    /// Right (x < 0) and left hemidiaphragm.
    domes: [Dome; 2],
    fissures: [Vec<Fissure>; 2],
    spine: ([f32; 2], f32),
    /// Rib pitch along z, and the rib's share of it; ribs slope down anteriorly.
    ribs: (f32, f32),
    /// Posterior density gradient (HU from front to back) and the subpleural band's
    /// peak (HU added at the posterior pleura).
    dependent: (f32, f32),
}

impl Thorax {
    pub fn sample(rng: &mut ChaCha20Rng) -> Self {
        let ax = range(rng, 145.0, 175.0);
        let ay = range(rng, 100.0, 125.0);
        let height = range(rng, 210.0, 260.0);
        let lungs = [-1.0f32, 1.0].map(|side| Lung {
            shape: Ellipsoid {
                center: [side * 0.45 * ax, 0.04 * ay, height / 2.0],
                semi: [0.33 * ax, 0.6 * ay, height / 2.0],
            },
        });
        let heart = Ellipsoid {
            center: [0.12 * ax, -0.2 * ay, range(rng, 0.27, 0.33) * height],
            semi: [0.3 * ax, 0.32 * ay, 0.16 * height],
        };
        let right_apex = range(rng, 0.17, 0.25) * height;
        let domes = [
            (-1.0f32, right_apex),
            (1.0, right_apex - range(rng, 0.0, 0.05) * height),
        ]
        .map(|(side, top)| Dome {
            apex: [side * 0.45 * ax, -0.05 * ay, top],
            reach: [0.4 * ax, 0.75 * ay],
            floor: -0.05 * height,
        });
        let fissures = [0, 1].map(|l| {
            let c = lungs[l].shape.center;
            let point = [c[0], c[1], c[2] - range(rng, 0.0, 0.1) * height];
            // Oblique fissure: high at the back, low at the front (dz/dy > 0).
            let normal = unit([0.0, -range(rng, 0.7, 1.1), 1.0]);
            let mut list = vec![Fissure {
                point,
                normal,
                only_positive_side_of: None,
            }];
            if l == 0 {
                // The right lung's horizontal fissure bounds the middle lobe.
                list.push(Fissure {
                    point: [c[0], c[1], c[2] + range(rng, 0.05, 0.15) * height],
                    normal: [0.0, 0.0, 1.0],
                    only_positive_side_of: Some((point, normal)),
                });
            }
            list
        });
        Self {
            body: [ax, ay],
            lungs,
            height,
            heart,
            domes,
            fissures,
            spine: ([0.0, 0.78 * ay], 16.0),
            ribs: (range(rng, 22.0, 28.0), 0.4),
            dependent: (range(rng, 20.0, 70.0), range(rng, 0.0, 300.0)),
        }
    }

    /// Height of the diaphragm under (x, y).
    fn diaphragm(&self, x: f32, y: f32) -> f32 {
        self.domes[usize::from(x >= 0.0)].height(x, y)
    }

    /// True HU (before any contrast agent or lesion) at `p`, whether it is lung, and
    /// whether it is blood that contrast enhances. `pixel_mm` sets the partial-volume
    /// width of structures thinner than a voxel (fissures).
    pub fn tissue(&self, p: P3, pixel_mm: f32) -> Tissue {
        let [x, y, z] = p;
        let [ax, ay] = self.body;
        let e = ((x / ax).powi(2) + (y / ay).powi(2)).sqrt();
        if e > 1.0 {
            return Tissue::Air;
        }
        let (sc, sr) = self.spine;
        if (x - sc[0]).powi(2) + (y - sc[1]).powi(2) < sr * sr {
            return Tissue::Solid(SPINE_HU);
        }
        if e >= CAGE {
            return Tissue::Solid(self.chest_wall(p, e));
        }
        if z < self.diaphragm(x, y) {
            // Liver under the right dome and across the midline; stomach and spleen left.
            return if x < 0.15 * ax {
                Tissue::Liver
            } else {
                Tissue::Solid(SOFT_HU)
            };
        }
        if self.heart.radius2(p) <= 1.0 {
            return Tissue::Blood;
        }
        for (l, lung) in self.lungs.iter().enumerate() {
            let r2 = lung.radius2(p);
            if r2 <= 1.0 {
                return Tissue::Lung(self.parenchyma(l, p, r2, pixel_mm));
            }
        }
        Tissue::Solid(SOFT_HU)
    }

    /// Ribs (sloping down anteriorly, absent at the front where cartilage joins the
    /// sternum), intercostal muscle, subcutaneous fat.
    fn chest_wall(&self, p: P3, e: f32) -> f32 {
        let [x, y, z] = p;
        let [ax, ay] = self.body;
        let fat = (x / (ax - 12.0)).powi(2) + (y / (ay - 12.0)).powi(2) > 1.0;
        if fat {
            return FAT_HU;
        }
        let (pitch, share) = self.ribs;
        let anterior_midline = y < 0.0 && x.abs() < 0.3 * ax;
        let phase = ((z - 0.25 * y) / pitch).rem_euclid(1.0);
        if e < CAGE + RIB_DEPTH && phase < share && !anterior_midline && z < self.height {
            RIB_HU
        } else {
            SOFT_HU
        }
    }

    /// Lung density: denser towards the back (gravity), a subpleural posterior band in
    /// the patients that have one, and the fissures as thin dense sheets whose contrast is
    /// spread over a voxel (partial volume).
    fn parenchyma(&self, l: usize, p: P3, r2: f32, pixel_mm: f32) -> f32 {
        let lung = &self.lungs[l].shape;
        let t = ((p[1] - lung.center[1]) / lung.semi[1]).clamp(-1.0, 1.0);
        let (gradient, band) = self.dependent;
        let mut hu = LUNG_HU + gradient * (t + 1.0) / 2.0;
        if t > 0.3 {
            let depth = ((r2.sqrt() - 0.85) / 0.15).clamp(0.0, 1.0);
            hu += band * depth * (t - 0.3) / 0.7;
        }
        for f in &self.fissures[l] {
            if let Some((point, normal)) = f.only_positive_side_of
                && signed_distance(p, point, normal) < 0.0
            {
                continue;
            }
            let d = signed_distance(p, f.point, f.normal).abs();
            let w = (1.0 - d / pixel_mm).max(0.0) * (FISSURE_MM / pixel_mm).min(1.0);
            hu += (FISSURE_HU - hu) * w;
        }
        hu
    }

    /// Great vessels (from, to, radius): the ascending aorta in front of the trachea,
    /// the arch over the left main bronchus, the descending aorta beside the spine.
    pub fn great_vessels(&self) -> [(P3, P3, f32); 3] {
        let [ax, ay] = self.body;
        let h = self.height;
        let root = [-0.08 * ax, -0.5 * ay, 0.42 * h];
        let top = [-0.08 * ax, -0.5 * ay, 0.8 * h];
        let back = [0.12 * ax, 0.55 * ay, 0.8 * h];
        [
            (root, top, 14.0),
            (top, back, 12.0),
            (back, [0.12 * ax, 0.55 * ay, -0.1 * h], 11.0),
        ]
    }
}

/// What a voxel of the thorax holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Tissue {
    Air,
    /// Fixed density (HU).
    Solid(f32),
    /// Blood pool (heart): enhanced by contrast.
    Blood,
    /// Liver: enhanced by about half the blood's enhancement (portal venous phase).
    Liver,
    /// Lung parenchyma at this density.
    Lung(f32),
}

impl Tissue {
    /// HU with `contrast_hu` of blood enhancement.
    pub fn hu(self, contrast_hu: f32) -> f32 {
        match self {
            Tissue::Air => -1000.0,
            Tissue::Solid(hu) | Tissue::Lung(hu) => hu,
            Tissue::Blood => SOFT_HU + contrast_hu,
            Tissue::Liver => LIVER_HU + 0.5 * contrast_hu,
        }
    }

    /// Blood in vessels painted over the anatomy.
    pub fn vessel_hu(contrast_hu: f32) -> f32 {
        SOFT_HU + contrast_hu
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn thorax(seed: u64) -> Thorax {
        Thorax::sample(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    fn lung_hu(t: &Thorax, p: P3) -> f32 {
        match t.tissue(p, 0.7) {
            Tissue::Lung(hu) => hu,
            other => panic!("{p:?} is {other:?}, not lung"),
        }
    }

    #[test]
    fn heart_and_great_vessels_sit_between_the_lungs() {
        for seed in 0..8 {
            let t = thorax(seed);
            assert_eq!(t.tissue(t.heart.center, 0.7), Tissue::Blood);
            assert_eq!(Tissue::Blood.hu(0.0), 40.0);
            assert_eq!(Tissue::Blood.hu(250.0), 290.0);
            // The heart displaces the left lung's medial part (the cardiac notch).
            let c = t.lungs[1].shape.center;
            let notch = [
                c[0] - 0.6 * t.lungs[1].shape.semi[0],
                t.heart.center[1],
                t.heart.center[2],
            ];
            assert_eq!(t.tissue(notch, 0.7), Tissue::Blood, "seed {seed}");
            // The great vessels stay out of the lungs' centres.
            for (a, b, _) in t.great_vessels() {
                for p in [a, b] {
                    assert!(
                        !matches!(t.tissue(p, 0.7), Tissue::Lung(_)),
                        "seed {seed}: {p:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn ribs_ring_the_lungs_and_the_diaphragm_domes_over_the_liver() {
        let t = thorax(3);
        let ax = t.body[0];
        // Along a lateral line through the chest wall at mid-height, ribs come and go.
        let x = (CAGE + RIB_DEPTH / 2.0) * ax;
        let bone = (0..200)
            .map(|k| t.tissue([-x, 0.0, t.height * (0.3 + 0.4 * k as f32 / 200.0)], 0.7))
            .filter(|s| *s == Tissue::Solid(RIB_HU))
            .count();
        assert!((40..=140).contains(&bone), "{bone} of 200 samples are rib");
        // Lungs lie inside the cage.
        assert!(matches!(
            t.tissue([-0.7 * ax, 0.0, t.height / 2.0], 0.7),
            Tissue::Lung(_)
        ));
        // Under the right dome's apex: liver below it, lung above it.
        let apex = t.domes[0].apex;
        assert_eq!(
            t.tissue([apex[0], apex[1], apex[2] - 5.0], 0.7),
            Tissue::Liver
        );
        assert!(matches!(
            t.tissue([apex[0], apex[1], apex[2] + 5.0], 0.7),
            Tissue::Lung(_)
        ));
        // The dome falls away laterally: lung reaches below the apex there.
        let recess = [apex[0] * 1.5, t.lungs[0].shape.center[1], apex[2] - 10.0];
        assert!(matches!(t.tissue(recess, 0.7), Tissue::Lung(_)));
        assert_eq!(Tissue::Liver.hu(100.0), LIVER_HU + 50.0);
    }

    #[test]
    fn lungs_are_denser_behind_and_fissures_are_thin_dense_sheets() {
        for seed in 0..8 {
            let t = thorax(seed);
            let s = &t.lungs[0].shape;
            let c = s.center;
            // Dependent density: posterior parenchyma is denser than anterior (points
            // chosen clear of the fissures).
            let front = lung_hu(&t, [c[0], c[1] - 0.5 * s.semi[1], c[2] + 0.3 * s.semi[2]]);
            let back = lung_hu(&t, [c[0], c[1] + 0.5 * s.semi[1], c[2] - 0.05 * s.semi[2]]);
            assert!(
                back > front + 10.0,
                "seed {seed}: back {back}, front {front}"
            );
            // The oblique fissure: dense on the plane, parenchyma 5 mm away.
            let f = &t.fissures[0][0];
            let on = lung_hu(&t, f.point);
            let off = lung_hu(&t, [0, 1, 2].map(|d| f.point[d] + 5.0 * f.normal[d]));
            assert!(on > off + 200.0, "seed {seed}: fissure {on}, beside {off}");
            // At a coarse pixel the same sheet is fainter (partial volume), not wider.
            let coarse = match t.tissue(f.point, 2.8) {
                Tissue::Lung(hu) => hu,
                other => panic!("{other:?}"),
            };
            assert!(coarse > off + 50.0 && coarse < on, "seed {seed}: {coarse}");
        }
    }
}
