//! The study's detection metrics, per patient, and their summaries.
//!
//! Matching follows an [`EvalProtocol`] (`crate::protocol`): `strict` (PASCAL VOC, the
//! default) or `authors` (the study's released code). A hit is a true positive; a hit
//! box is a detected lesion.

use serde::{Deserialize, Serialize};

use crate::boxes::{BBox, Detection};
use crate::protocol::{EvalProtocol, Outcome, match_slice};

/// IoU at which a detection hits a lesion.
pub const HIT_IOU: f32 = 0.5;
/// The study's default score threshold.
pub const DEFAULT_SCORE_THRESHOLD: f32 = 0.4;

/// Ground truth and detections of one slice.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SliceResult {
    pub truth: Vec<BBox>,
    pub detections: Vec<Detection>,
}

/// All evaluated slices of one patient (scan).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PatientResult {
    pub patient: String,
    pub slices: Vec<SliceResult>,
    /// Slices of the whole volume, when fewer were evaluated (the authors' protocol
    /// divides false positives by every slice); `None`: the evaluated ones.
    #[serde(default)]
    pub volume_slices: Option<usize>,
}

/// Per-patient metrics at one score threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PatientMetrics {
    pub patient: String,
    pub lesions: usize,
    pub detected_lesions: usize,
    pub detections: usize,
    pub true_positives: usize,
    pub slices: usize,
    /// Detected / all lesion boxes; `None` for a patient without lesions.
    pub sensitivity: Option<f64>,
    /// True positives / detections; `None` when nothing was detected.
    pub precision: Option<f64>,
    pub false_positives_per_slice: f64,
}

impl PatientResult {
    /// Metrics with detections scoring at least `threshold`, under the strict protocol.
    pub fn metrics(&self, threshold: f32) -> PatientMetrics {
        self.metrics_with(threshold, EvalProtocol::Strict)
    }

    /// Metrics with detections scoring at least `threshold`, under `protocol`.
    pub fn metrics_with(&self, threshold: f32, protocol: EvalProtocol) -> PatientMetrics {
        let (mut lesions, mut hits, mut false_positives) = (0, 0, 0);
        for slice in &self.slices {
            lesions += slice.truth.len();
            for (_, outcome) in match_slice(slice, threshold, protocol) {
                match outcome {
                    Outcome::Hit => hits += 1,
                    Outcome::FalsePositive => false_positives += 1,
                    Outcome::Ignored => {}
                }
            }
        }
        let detections = hits + false_positives;
        let slices = match protocol {
            EvalProtocol::Strict => self.slices.len(),
            EvalProtocol::Authors => self.volume_slices.unwrap_or(self.slices.len()),
        };
        let precision = match (detections, protocol) {
            (0, EvalProtocol::Strict) => None,
            (0, EvalProtocol::Authors) => Some(0.0),
            _ => Some(hits as f64 / detections as f64),
        };
        PatientMetrics {
            patient: self.patient.clone(),
            lesions,
            detected_lesions: hits,
            detections,
            true_positives: hits,
            slices,
            sensitivity: (lesions > 0).then(|| hits as f64 / lesions as f64),
            precision,
            false_positives_per_slice: if slices > 0 {
                false_positives as f64 / slices as f64
            } else {
                0.0
            },
        }
    }

    /// Average precision under the strict protocol (every detection, tied scores one
    /// point); `None` for a patient without lesions.
    pub fn average_precision(&self) -> Option<f64> {
        self.average_precision_with(EvalProtocol::Strict, DEFAULT_SCORE_THRESHOLD)
    }

    /// Average precision (all-point interpolation) under `protocol`: strict over every
    /// detection with tied scores grouped, authors over the detections at or above
    /// `threshold`; `None` for a patient without lesions.
    pub fn average_precision_with(&self, protocol: EvalProtocol, threshold: f32) -> Option<f64> {
        let lesions: usize = self.slices.iter().map(|s| s.truth.len()).sum();
        if lesions == 0 {
            return None;
        }
        let from = match protocol {
            EvalProtocol::Strict => f32::NEG_INFINITY,
            EvalProtocol::Authors => threshold,
        };
        let mut scored: Vec<(f32, Outcome)> = self
            .slices
            .iter()
            .flat_map(|s| match_slice(s, from, protocol))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let group_ties = protocol == EvalProtocol::Strict;
        Some(crate::protocol::average_precision(
            &scored, lesions, group_ties,
        ))
    }
}

/// Mean with a 95% interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    pub n: usize,
}

/// Mean ± 1.96·SD/√n over patients with the sample SD; `None` when empty.
pub fn normal_ci(values: &[f64]) -> Option<Estimate> {
    normal_interval(values, 1)
}

/// The study's interval, as its released code computes it: mean ± 1.96·SD/√n with the
/// population SD (NumPy's default, ddof 0); `None` when empty.
pub fn normal_ci_population(values: &[f64]) -> Option<Estimate> {
    normal_interval(values, 0)
}

fn normal_interval(values: &[f64], ddof: usize) -> Option<Estimate> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let half = if n > ddof {
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - ddof) as f64;
        1.96 * var.sqrt() / (n as f64).sqrt()
    } else {
        0.0
    };
    Some(Estimate {
        mean,
        low: mean - half,
        high: mean + half,
        n,
    })
}

/// Percentile bootstrap interval of the mean (resampling patients), `resamples` draws
/// from a ChaCha20 stream seeded with `seed`; `None` when empty.
pub fn bootstrap_ci(values: &[f64], resamples: usize, seed: u64) -> Option<Estimate> {
    use chacha20::ChaCha20Rng;
    use rand_core::{Rng, SeedableRng};
    let n = values.len();
    if n == 0 || resamples == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            (0..n)
                .map(|_| values[(rng.next_u64() % n as u64) as usize])
                .sum::<f64>()
                / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let pick = |q: f64| means[((q * resamples as f64).floor() as usize).min(resamples - 1)];
    Some(Estimate {
        mean,
        low: pick(0.025),
        high: pick(0.975),
        n,
    })
}

/// Cohort summary at one threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CohortSummary {
    pub patients: usize,
    pub sensitivity: Option<Estimate>,
    pub precision: Option<Estimate>,
    pub false_positives_per_slice: Option<Estimate>,
    pub mean_average_precision: Option<Estimate>,
}

/// Resamples of the summary intervals (a fixed seed: the same patients give the same
/// interval).
pub const SUMMARY_RESAMPLES: usize = 2000;
const SUMMARY_SEED: u64 = 0x5eed;

/// [`summarise_with`] under the strict protocol.
pub fn summarise(patients: &[PatientResult], threshold: f32) -> CohortSummary {
    summarise_with(patients, threshold, EvalProtocol::Strict)
}

/// Per-patient metrics averaged over patients with 95% intervals: under the strict
/// protocol a percentile bootstrap over patients, which never leaves the metric's range
/// (with one patient it is the single value, and the report says so); under the
/// authors' protocol their mean ± 1.96·SD/√n with the population SD.
pub fn summarise_with(
    patients: &[PatientResult],
    threshold: f32,
    protocol: EvalProtocol,
) -> CohortSummary {
    let metrics: Vec<PatientMetrics> = patients
        .iter()
        .map(|p| p.metrics_with(threshold, protocol))
        .collect();
    let collect = |f: &dyn Fn(&PatientMetrics) -> Option<f64>| {
        metrics.iter().filter_map(f).collect::<Vec<f64>>()
    };
    let aps: Vec<f64> = patients
        .iter()
        .filter_map(|p| p.average_precision_with(protocol, threshold))
        .collect();
    let interval = |values: &[f64]| match protocol {
        EvalProtocol::Strict => bootstrap_ci(values, SUMMARY_RESAMPLES, SUMMARY_SEED),
        EvalProtocol::Authors => normal_ci_population(values),
    };
    CohortSummary {
        patients: patients.len(),
        sensitivity: interval(&collect(&|m| m.sensitivity)),
        precision: interval(&collect(&|m| m.precision)),
        false_positives_per_slice: interval(&collect(&|m| Some(m.false_positives_per_slice))),
        mean_average_precision: interval(&aps),
    }
}

/// One patient's headline metrics under one protocol (what `result.json` keeps per
/// patient, so that arms can be compared patient by patient).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PatientScore {
    pub patient: String,
    pub sensitivity: Option<f64>,
    pub precision: Option<f64>,
    pub false_positives_per_slice: f64,
    pub average_precision: Option<f64>,
}

/// Every patient's [`PatientScore`] at `threshold` under `protocol`.
pub fn patient_scores(
    patients: &[PatientResult],
    threshold: f32,
    protocol: EvalProtocol,
) -> Vec<PatientScore> {
    patients
        .iter()
        .map(|p| {
            let m = p.metrics_with(threshold, protocol);
            PatientScore {
                patient: m.patient,
                sensitivity: m.sensitivity,
                precision: m.precision,
                false_positives_per_slice: m.false_positives_per_slice,
                average_precision: p.average_precision_with(protocol, threshold),
            }
        })
        .collect()
}

/// One point of the FROC-style sweep.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrocPoint {
    pub threshold: f32,
    pub sensitivity: f64,
    pub false_positives_per_slice: f64,
}

/// [`froc_with`] under the strict protocol: thresholds 0, 0.02, …, 0.98.
pub fn froc(patients: &[PatientResult]) -> Vec<FrocPoint> {
    froc_with(patients, EvalProtocol::Strict)
}

/// The score sweep: patient-averaged sensitivity (over patients with lesions) and false
/// positives per slice at thresholds 0, 0.02, …, 0.98 (strict) or 0, 0.01, …, 0.99
/// (authors, as their `--score-loop`).
pub fn froc_with(patients: &[PatientResult], protocol: EvalProtocol) -> Vec<FrocPoint> {
    let (steps, step) = match protocol {
        EvalProtocol::Strict => (50, 0.02),
        EvalProtocol::Authors => (100, 0.01),
    };
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    (0..steps)
        .map(|i| {
            let threshold = i as f32 * step;
            let metrics: Vec<PatientMetrics> = patients
                .iter()
                .map(|p| p.metrics_with(threshold, protocol))
                .collect();
            let sens: Vec<f64> = metrics.iter().filter_map(|m| m.sensitivity).collect();
            let fps: Vec<f64> = metrics
                .iter()
                .map(|m| m.false_positives_per_slice)
                .collect();
            FrocPoint {
                threshold,
                sensitivity: mean(&sens),
                false_positives_per_slice: mean(&fps),
            }
        })
        .collect()
}

/// Patient-level ROC AUC for "has lesions" (Mann–Whitney, ties count one half);
/// `None` unless both classes are present.
pub fn roc_auc(scored: &[(f64, bool)]) -> Option<f64> {
    let pos: Vec<f64> = scored.iter().filter(|(_, p)| *p).map(|(s, _)| *s).collect();
    let neg: Vec<f64> = scored
        .iter()
        .filter(|(_, p)| !*p)
        .map(|(s, _)| *s)
        .collect();
    if pos.is_empty() || neg.is_empty() {
        return None;
    }
    let mut wins = 0.0;
    for p in &pos {
        for n in &neg {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    Some(wins / (pos.len() * neg.len()) as f64)
}

/// Lesion burden: lesion voxels inside the lung as a percentage of lung voxels;
/// `None` for an empty lung mask.
pub fn lesion_burden(lesion: &[bool], lung: &[bool]) -> Option<f64> {
    let lung_voxels = lung.iter().filter(|l| **l).count();
    if lung_voxels == 0 {
        return None;
    }
    let inside = lesion
        .iter()
        .zip(lung)
        .filter(|(les, lu)| **les && **lu)
        .count();
    Some(100.0 * inside as f64 / lung_voxels as f64)
}

/// Burden predicted from a dense lesion-score map thresholded at `threshold` (the study
/// used 0.1).
pub fn predicted_burden(scores: &[f32], lung: &[bool], threshold: f32) -> Option<f64> {
    let lesion: Vec<bool> = scores.iter().map(|s| *s >= threshold).collect();
    lesion_burden(&lesion, lung)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boxes::det;

    fn patient() -> PatientResult {
        let lesion_a = BBox::new(0.0, 0.0, 10.0, 10.0);
        let lesion_b = BBox::new(20.0, 20.0, 30.0, 30.0);
        PatientResult {
            patient: "p".into(),
            volume_slices: None,
            slices: vec![
                // hit on a (IoU 81/100), a duplicate (FP), and a miss of b
                SliceResult {
                    truth: vec![lesion_a, lesion_b],
                    detections: vec![
                        det(1.0, 1.0, 10.0, 10.0, 0.9),
                        det(0.0, 0.0, 10.0, 10.0, 0.3),
                    ],
                },
                // a false positive on an empty slice
                SliceResult {
                    truth: vec![],
                    detections: vec![det(50.0, 50.0, 60.0, 60.0, 0.5)],
                },
                // hit on b only at IoU ≥ 0.5: 10×6 overlap of 10×10 and 10×6 → 0.6
                SliceResult {
                    truth: vec![lesion_b],
                    detections: vec![det(20.0, 20.0, 30.0, 26.0, 0.45)],
                },
            ],
        }
    }

    #[test]
    fn per_patient_metrics_by_hand() {
        let m = patient().metrics(0.4);
        // lesions 3; detections ≥ 0.4: 0.9 (hit), 0.5 (FP), 0.45 (hit)
        assert_eq!((m.lesions, m.detections, m.true_positives), (3, 3, 2));
        assert!((m.sensitivity.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.precision.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.false_positives_per_slice - 1.0 / 3.0).abs() < 1e-12);
        // At 0: the 0.3 duplicate of lesion a is a second FP (one-to-one matching).
        let m0 = patient().metrics(0.0);
        assert_eq!((m0.detections, m0.true_positives), (4, 2));
        assert!((m0.false_positives_per_slice - 2.0 / 3.0).abs() < 1e-12);
        // Above everything: nothing detected, precision undefined, sensitivity 0.
        let m1 = patient().metrics(0.95);
        assert_eq!(m1.precision, None);
        assert_eq!(m1.sensitivity, Some(0.0));
    }

    #[test]
    fn average_precision_by_hand() {
        // Ranked: 0.9 hit (R 1/3, P 1), 0.5 FP (1/3, 1/2), 0.45 hit (2/3, 2/3), 0.3 FP (2/3, 1/2)
        // Envelope: P = 1 up to R 1/3, then 2/3 up to R 2/3 → AP = 1/3 + (1/3)(2/3) = 5/9
        let ap = patient().average_precision().unwrap();
        assert!((ap - 5.0 / 9.0).abs() < 1e-12, "{ap}");
        let empty = PatientResult {
            patient: "n".into(),
            volume_slices: None,
            slices: vec![SliceResult::default()],
        };
        assert_eq!(empty.average_precision(), None);
    }

    #[test]
    fn the_authors_protocol_by_hand() {
        let p = patient();
        let a = EvalProtocol::Authors;
        // At 0.4: the lesion-free slice's 0.5 box is ignored; two hits, nothing else.
        let m = p.metrics_with(0.4, a);
        assert_eq!((m.detections, m.true_positives), (2, 2));
        assert_eq!(m.precision, Some(1.0));
        assert_eq!(m.false_positives_per_slice, 0.0);
        // At 0: the 0.3 second hit on lesion a counts as neither.
        assert_eq!(p.metrics_with(0.0, a).detections, 2);
        // Nothing detected: precision 0, not undefined.
        assert_eq!(p.metrics_with(0.95, a).precision, Some(0.0));
        // AP over the detections ≥ 0.4, the ignored one left out: 0.9 hit, 0.45 hit → 2/3.
        let ap = p.average_precision_with(a, 0.4).unwrap();
        assert!((ap - 2.0 / 3.0).abs() < 1e-12, "{ap}");
        // False positives per slice over the whole volume.
        let mut fp = p.clone();
        fp.slices[0].truth.pop();
        fp.slices[0]
            .detections
            .push(det(20.0, 20.0, 30.0, 30.0, 0.8));
        fp.volume_slices = Some(30);
        assert!((fp.metrics_with(0.4, a).false_positives_per_slice - 1.0 / 30.0).abs() < 1e-12);
        assert!(
            (fp.metrics_with(0.4, EvalProtocol::Strict)
                .false_positives_per_slice
                - 2.0 / 3.0)
                .abs()
                < 1e-12
        );
        // Their interval uses the population SD; the sweep steps by 0.01.
        let e = normal_ci_population(&[1.0, 2.0, 3.0]).unwrap();
        assert!((e.high - (2.0 + 1.96 * (2.0f64 / 3.0).sqrt() / 3f64.sqrt())).abs() < 1e-12);
        assert_eq!(froc_with(std::slice::from_ref(&p), a).len(), 100);
        assert_eq!(froc_with(&[p], EvalProtocol::Strict).len(), 50);
    }

    #[test]
    fn normal_interval_by_hand() {
        // mean 2, sample SD 1, n 3 → ± 1.96/√3
        let e = normal_ci(&[1.0, 2.0, 3.0]).unwrap();
        assert!((e.mean - 2.0).abs() < 1e-12);
        assert!((e.high - (2.0 + 1.96 / 3f64.sqrt())).abs() < 1e-12);
        assert_eq!(normal_ci(&[]), None);
        assert_eq!(normal_ci(&[5.0]).unwrap().low, 5.0);
    }

    #[test]
    fn bootstrap_interval_brackets_the_mean_and_is_reproducible() {
        let values: Vec<f64> = (0..40).map(|i| (i % 7) as f64).collect();
        let a = bootstrap_ci(&values, 2000, 1).unwrap();
        assert_eq!(a, bootstrap_ci(&values, 2000, 1).unwrap());
        assert!(a.low < a.mean && a.mean < a.high);
        // close to the normal interval for a symmetric-ish sample
        let n = normal_ci(&values).unwrap();
        assert!(
            (a.low - n.low).abs() < 0.3 && (a.high - n.high).abs() < 0.3,
            "{a:?} vs {n:?}"
        );
        let constant = bootstrap_ci(&[2.0; 10], 100, 3).unwrap();
        assert_eq!((constant.low, constant.high), (2.0, 2.0));
    }

    #[test]
    fn froc_sweep_is_monotone_and_matches_point_metrics() {
        let points = froc(&[patient()]);
        assert_eq!(points.len(), 50);
        assert!((points[49].threshold - 0.98).abs() < 1e-6);
        for w in points.windows(2) {
            assert!(w[1].sensitivity <= w[0].sensitivity);
            assert!(w[1].false_positives_per_slice <= w[0].false_positives_per_slice);
        }
        let at_04 = points[20];
        assert!((at_04.sensitivity - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn roc_auc_by_hand() {
        // positives 0.9, 0.4; negatives 0.4, 0.1 → pairs: (0.9>0.4) 1, (0.9>0.1) 1, (0.4=0.4) ½, (0.4>0.1) 1
        let auc = roc_auc(&[(0.9, true), (0.4, true), (0.4, false), (0.1, false)]).unwrap();
        assert!((auc - 3.5 / 4.0).abs() < 1e-12);
        assert_eq!(roc_auc(&[(0.9, true)]), None);
    }

    #[test]
    fn lesion_burden_by_hand() {
        let lung = [true, true, true, true, false];
        let lesion = [true, false, false, false, true]; // the lesion voxel outside the lung is ignored
        assert_eq!(lesion_burden(&lesion, &lung), Some(25.0));
        assert_eq!(
            predicted_burden(&[0.2, 0.05, 0.1, 0.0, 0.9], &lung, 0.1),
            Some(50.0)
        );
        assert_eq!(lesion_burden(&lesion, &[false; 5]), None);
    }

    #[test]
    fn summary_averages_over_patients() {
        let s = summarise(&[patient(), patient()], 0.4);
        assert_eq!(s.patients, 2);
        let sens = s.sensitivity.unwrap();
        assert!((sens.mean - 2.0 / 3.0).abs() < 1e-12 && sens.n == 2);
        assert!((s.mean_average_precision.unwrap().mean - 5.0 / 9.0).abs() < 1e-12);
    }

    /// A patient with no lesion found (sensitivity 0) beside three like `patient()`:
    /// the summary's interval stays inside [0, 1] where mean ± 1.96·SD/√n would not;
    /// one patient gives the value itself (no interval).
    #[test]
    fn summary_intervals_stay_inside_the_metric_range() {
        let missed = PatientResult {
            patient: "m".into(),
            volume_slices: None,
            slices: vec![SliceResult {
                truth: vec![BBox::new(0.0, 0.0, 10.0, 10.0)],
                detections: vec![],
            }],
        };
        let found = PatientResult {
            patient: "f".into(),
            volume_slices: None,
            slices: vec![SliceResult {
                truth: vec![BBox::new(0.0, 0.0, 10.0, 10.0)],
                detections: vec![det(0.0, 0.0, 10.0, 10.0, 0.9)],
            }],
        };
        let cohort = [missed.clone(), missed.clone(), missed.clone(), found];
        let sens = summarise(&cohort, 0.4).sensitivity.unwrap();
        assert!(sens.low >= 0.0 && sens.high <= 1.0, "{sens:?}");
        let normal = normal_ci(&[0.0, 0.0, 0.0, 1.0]).unwrap();
        assert!(
            normal.low < 0.0,
            "the study's interval leaves the range: {normal:?}"
        );
        let one = summarise(&[missed], 0.4).sensitivity.unwrap();
        assert_eq!((one.n, one.low, one.high), (1, 0.0, 0.0));
    }
}
