//! Training and evaluating one arm.
//!
//! Single-site and pooled models train centrally for rounds × local steps. Federated
//! arms run the real coordinator and site loops (`tessera_fl::memory`): secure
//! aggregation, dropouts, DP noise and the ledger are exactly those of a deployment,
//! only the transport is in memory. Every model is evaluated with the study's protocol
//! on each training site's internal test split and on every external cohort.

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tessera_core::{LocalTrainer, LocalTrainingConfig};
use tessera_dp::Ledger;
use tessera_eval::{
    CohortSummary, DEFAULT_SCORE_THRESHOLD, Detection, EvalProtocol, FrocPoint, PatientResult,
    PatientScore, SliceResult, froc_with, lesion_burden, nms, patient_scores, predicted_burden,
    summarise_with,
};
use tessera_train::{DecodeConfig, DetectorTrainer, Example, Predictions, TrainerConfig};

use crate::cohorts::{Cohorts, TestCohort, TestScan};
use crate::error::ExpError;
use crate::federated::train_federated;
use crate::profile::Profile;
use crate::spec::{Arm, ArmPlan, Fusion};
use crate::transport::ProcessContext;

/// Score threshold of the lesion-burden maps (the study's 0.1).
const BURDEN_THRESHOLD: f32 = 0.1;
/// Slices per inference batch.
const EVAL_BATCH: usize = 16;

/// One cohort evaluated under one protocol.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CohortEval {
    pub cohort: String,
    pub external: bool,
    pub protocol: EvalProtocol,
    pub summary: CohortSummary,
    pub froc: Vec<FrocPoint>,
    /// Every patient's metrics, for paired comparisons between arms.
    pub patients: Vec<PatientScore>,
}

/// Both protocols are computed for every cohort; `strict` is the headline.
pub const PROTOCOLS: [EvalProtocol; 2] = [EvalProtocol::Strict, EvalProtocol::Authors];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BurdenPoint {
    pub day: u32,
    pub truth: Option<f64>,
    pub predicted: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesEval {
    pub cohort: String,
    pub patient: String,
    pub points: Vec<BurdenPoint>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundLog {
    pub round: u64,
    pub participants: usize,
    pub contributors: usize,
    pub aborted: Option<String>,
}

/// Everything an arm produced for one training seed (what the cache stores).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArmResult {
    pub arm: Arm,
    /// Which of the experiment's seeds (0-based) and the seed itself.
    pub replicate: usize,
    pub seed: u64,
    pub evals: Vec<CohortEval>,
    pub series: Vec<SeriesEval>,
    pub rounds: Vec<RoundLog>,
    pub ledger: Option<Ledger>,
    /// Number of training examples per (federated) site.
    pub site_examples: Vec<usize>,
    /// SHA-256 of the trained model's parameters (little-endian f32), if it has one.
    pub model_sha256: Option<String>,
    /// The privacy audit of an arm with canaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::audit::PrivacyAudit>,
}

pub(crate) fn trainer(
    profile: &Profile,
    examples: Vec<Example>,
    seed: u64,
    threads: i32,
) -> Result<DetectorTrainer, ExpError> {
    Ok(DetectorTrainer::native(
        &profile.model,
        examples,
        TrainerConfig {
            threads,
            cuda: profile.cuda,
            keep_optimizer_state: profile.keep_optimizer_state,
            ..TrainerConfig::default()
        },
        seed,
    )?)
}

pub(crate) fn round_config(profile: &Profile, seed: u64) -> LocalTrainingConfig {
    LocalTrainingConfig {
        steps: profile.local_steps,
        batch_size: profile.batch_size,
        learning_rate: profile.learning_rate,
        proximal_mu: 0.0,
        seed,
    }
}

/// Central training: rounds × local steps on `examples`, from the arm's initial model.
pub fn train_central(
    profile: &Profile,
    examples: Vec<Example>,
    seed: u64,
) -> Result<Vec<f32>, ExpError> {
    let mut t = trainer(profile, examples, seed, 2)?;
    let mut params = t.parameters();
    for round in 1..=profile.rounds {
        params = t
            .train(&params, &round_config(profile, seed + round))?
            .parameters;
    }
    Ok(params)
}

/// Assigns training patients to `sites` sites: the hospitals themselves when `sites`
/// equals their number, otherwise equal contiguous chunks in hospital order; then a
/// share 1 − heterogeneity of the patients swap sites at random (site sizes kept).
pub fn partition(
    cohorts: &Cohorts,
    sites: usize,
    heterogeneity: f64,
    seed: u64,
) -> Result<Vec<Vec<Example>>, ExpError> {
    let patients: Vec<(usize, &crate::cohorts::TrainingPatient)> = cohorts
        .hospitals
        .iter()
        .enumerate()
        .flat_map(|(h, hosp)| hosp.patients.iter().map(move |p| (h, p)))
        .collect();
    if sites > patients.len() {
        return Err(ExpError::Invalid(format!(
            "sites = {sites} but the registry has only {} training patients",
            patients.len()
        )));
    }
    let total = patients.len();
    let mut site_of: Vec<usize> = patients
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            if sites == cohorts.hospitals.len() {
                *h
            } else {
                i * sites / total
            }
        })
        .collect();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let unit = |rng: &mut ChaCha20Rng| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let movers: Vec<usize> = (0..total)
        .filter(|_| unit(&mut rng) >= heterogeneity)
        .collect();
    let mut labels: Vec<usize> = movers.iter().map(|&i| site_of[i]).collect();
    for i in (1..labels.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        labels.swap(i, j);
    }
    for (&i, l) in movers.iter().zip(labels) {
        site_of[i] = l;
    }
    let mut out = vec![Vec::new(); sites];
    for ((_, p), s) in patients.iter().zip(site_of) {
        out[s].extend(p.examples.iter().cloned());
    }
    if let Some(empty) = out.iter().position(|e| e.is_empty()) {
        return Err(ExpError::Invalid(format!(
            "site {empty} of {sites} has no training slices; lower sites"
        )));
    }
    Ok(out)
}

/// Detections and score maps for a batch of slices.
pub trait Predictor {
    fn predict(&mut self, images: &[&[f32]]) -> Result<Predictions, ExpError>;
}

/// One model.
pub struct ModelPredictor(pub DetectorTrainer);

impl ModelPredictor {
    pub fn new(profile: &Profile, parameters: &[f32]) -> Result<Self, ExpError> {
        let mut t = trainer(profile, Vec::new(), 0, 2)?;
        t.set_parameters(parameters)?;
        Ok(Self(t))
    }
}

impl Predictor for ModelPredictor {
    fn predict(&mut self, images: &[&[f32]]) -> Result<Predictions, ExpError> {
        Ok(self.0.predict(images, &DecodeConfig::default())?)
    }
}

/// IoU above which the study's ensemble suppresses a lower-scoring box: the released
/// code's inference NMS threshold (paper-facts: "inference NMS IoU 0.1").
pub const ENSEMBLE_NMS_IOU: f32 = 0.1;

/// The members' predictions fused by `fusion` ([`Fusion`]); score maps are averaged
/// either way.
pub struct EnsemblePredictor {
    pub members: Vec<ModelPredictor>,
    pub fusion: Fusion,
}

/// Soft voting over one slice's detections, `(member, detection)`, of `m` members.
fn score_average(mut all: Vec<(usize, Detection)>, m: f32) -> Vec<Detection> {
    all.sort_by(|a, b| b.1.score.total_cmp(&a.1.score));
    let mut used = vec![false; all.len()];
    let mut fused = Vec::new();
    for a in 0..all.len() {
        if used[a] {
            continue;
        }
        used[a] = true;
        let (lead_member, lead) = all[a];
        let mut members = vec![lead_member];
        let mut total = lead.score;
        for b in a + 1..all.len() {
            let (k, d) = all[b];
            if !used[b] && !members.contains(&k) && lead.bbox.iou(&d.bbox) >= 0.5 {
                used[b] = true;
                members.push(k);
                total += d.score;
            }
        }
        fused.push(Detection {
            bbox: lead.bbox,
            score: total / m,
        });
    }
    fused
}

/// One slice's detections `(member, detection)` of `m` members, fused.
fn fuse(all: Vec<(usize, Detection)>, fusion: Fusion, m: f32) -> Vec<Detection> {
    match fusion {
        Fusion::Nms => nms(all.into_iter().map(|(_, d)| d).collect(), ENSEMBLE_NMS_IOU),
        Fusion::ScoreAverage => score_average(all, m),
    }
}

impl Predictor for EnsemblePredictor {
    fn predict(&mut self, images: &[&[f32]]) -> Result<Predictions, ExpError> {
        let outputs: Vec<Predictions> = self
            .members
            .iter_mut()
            .map(|m| m.predict(images))
            .collect::<Result<_, _>>()?;
        let m = outputs.len() as f32;
        let mut detections = Vec::with_capacity(images.len());
        let mut scores = Vec::with_capacity(images.len());
        for i in 0..images.len() {
            let all: Vec<(usize, Detection)> = outputs
                .iter()
                .enumerate()
                .flat_map(|(k, o)| o.detections[i].iter().map(move |d| (k, *d)))
                .collect();
            detections.push(fuse(all, self.fusion, m));
            let len = outputs[0].scores[i].len();
            scores.push(
                (0..len)
                    .map(|p| outputs.iter().map(|o| o.scores[i][p]).sum::<f32>() / m)
                    .collect(),
            );
        }
        Ok(Predictions { detections, scores })
    }
}

/// Detections (inside the lung, as in the study) and the scan's lesion burden.
fn scan_results(
    predictor: &mut dyn Predictor,
    scan: &TestScan,
) -> Result<(PatientResult, Option<f64>, Option<f64>), ExpError> {
    let mut results = Vec::with_capacity(scan.slices.len());
    let (mut scores, mut lungs, mut lesions) = (Vec::new(), Vec::new(), Vec::new());
    for chunk in scan.slices.chunks(EVAL_BATCH) {
        let images: Vec<&[f32]> = chunk.iter().map(|s| s.image.as_slice()).collect();
        let out = predictor.predict(&images)?;
        for ((s, dets), map) in chunk.iter().zip(out.detections).zip(out.scores) {
            let n = s.size;
            let inside = |d: &Detection| {
                let (cx, cy) = (
                    ((d.bbox.x0 + d.bbox.x1) / 2.0) as usize,
                    ((d.bbox.y0 + d.bbox.y1) / 2.0) as usize,
                );
                cx < n && cy < n && s.lung[cy * n + cx]
            };
            results.push(SliceResult {
                truth: s.boxes.clone(),
                detections: dets.into_iter().filter(inside).collect(),
            });
            scores.extend(map);
            lungs.extend_from_slice(&s.lung);
            lesions.extend_from_slice(&s.lesion);
        }
    }
    Ok((
        PatientResult {
            patient: scan.patient.clone(),
            volume_slices: Some(scan.volume_slices),
            slices: results,
        },
        lesion_burden(&lesions, &lungs),
        predicted_burden(&scores, &lungs, BURDEN_THRESHOLD),
    ))
}

/// The study's evaluation on one test cohort, under each of [`PROTOCOLS`].
pub(crate) fn evaluate_cohort(
    predictor: &mut dyn Predictor,
    cohort: &TestCohort,
) -> Result<Vec<CohortEval>, ExpError> {
    let patients = cohort
        .scans
        .iter()
        .map(|s| scan_results(predictor, s).map(|r| r.0))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PROTOCOLS
        .iter()
        .map(|&protocol| CohortEval {
            cohort: cohort.id.clone(),
            external: cohort.external,
            protocol,
            summary: summarise_with(&patients, DEFAULT_SCORE_THRESHOLD, protocol),
            froc: froc_with(&patients, protocol),
            patients: patient_scores(&patients, DEFAULT_SCORE_THRESHOLD, protocol),
        })
        .collect())
}

/// The study's evaluation on every test cohort, and the longitudinal burden series.
pub fn evaluate(
    predictor: &mut dyn Predictor,
    cohorts: &Cohorts,
) -> Result<(Vec<CohortEval>, Vec<SeriesEval>), ExpError> {
    let mut evals = Vec::new();
    for cohort in &cohorts.tests {
        evals.extend(evaluate_cohort(predictor, cohort)?);
    }
    let mut series = Vec::new();
    for s in &cohorts.series {
        let mut points = Vec::new();
        for (day, scan) in &s.scans {
            let (_, truth, predicted) = scan_results(predictor, scan)?;
            points.push(BurdenPoint {
                day: *day,
                truth,
                predicted,
            });
        }
        series.push(SeriesEval {
            cohort: s.cohort.clone(),
            patient: s.patient.clone(),
            points,
        });
    }
    Ok((evals, series))
}

/// What every arm of a run trains from.
pub struct ArmInputs<'a> {
    pub profile: &'a Profile,
    pub cohorts: &'a Cohorts,
    /// The training seed of this replicate.
    pub seed: u64,
    pub replicate: usize,
    /// The session of federated arms.
    pub session: [u8; 16],
    /// The arm's own folder.
    pub dir: &'a Path,
}

/// Trains (or, for an ensemble, assembles) and evaluates one arm. `models` holds the
/// parameters of earlier arms by name (ensemble members); the arm's own model is
/// returned for the same purpose.
pub fn run_arm(
    arm: &Arm,
    inputs: &ArmInputs<'_>,
    models: &BTreeMap<String, Vec<f32>>,
    ctx: &ProcessContext<'_>,
) -> Result<(ArmResult, Option<Vec<f32>>), ExpError> {
    let (profile, cohorts, seed) = (inputs.profile, inputs.cohorts, inputs.seed);
    let mut rounds = Vec::new();
    let mut ledger = None;
    let mut audit = None;
    let mut site_examples = Vec::new();
    let (model, mut predictor): (Option<Vec<f32>>, Box<dyn Predictor>) = match &arm.plan {
        ArmPlan::SingleSite { site } => {
            let examples = cohorts.hospital_examples(site);
            site_examples.push(examples.len());
            let params = train_central(profile, examples, seed)?;
            (
                Some(params.clone()),
                Box::new(ModelPredictor::new(profile, &params)?),
            )
        }
        ArmPlan::Pooled => {
            let examples = cohorts.all_examples();
            site_examples.push(examples.len());
            let params = train_central(profile, examples, seed)?;
            (
                Some(params.clone()),
                Box::new(ModelPredictor::new(profile, &params)?),
            )
        }
        ArmPlan::Federated(fed) => {
            let outcome = train_federated(inputs, fed, ctx)?;
            rounds = outcome.rounds;
            ledger = outcome.ledger;
            audit = outcome.audit;
            site_examples = outcome.site_examples;
            let predictor = ModelPredictor::new(profile, &outcome.model)?;
            (Some(outcome.model), Box::new(predictor))
        }
        ArmPlan::Public(ft) => {
            let params = crate::finetune::public_model(inputs, ft)?;
            (
                Some(params.clone()),
                Box::new(ModelPredictor::new(profile, &params)?),
            )
        }
        ArmPlan::Ensemble { members, fusion } => {
            let predictors = members
                .iter()
                .map(|m| {
                    let params = models.get(m).ok_or_else(|| {
                        ExpError::Invalid(format!("ensemble member {m} has no model"))
                    })?;
                    ModelPredictor::new(profile, params)
                })
                .collect::<Result<Vec<_>, _>>()?;
            (
                None,
                Box::new(EnsemblePredictor {
                    members: predictors,
                    fusion: *fusion,
                }),
            )
        }
    };
    let (evals, series) = evaluate(predictor.as_mut(), cohorts)?;
    Ok((
        ArmResult {
            arm: arm.clone(),
            replicate: inputs.replicate,
            seed,
            evals,
            series,
            rounds,
            ledger,
            site_examples,
            model_sha256: None,
            audit,
        },
        model,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_eval::BBox;

    fn det(x: f32, score: f32) -> Detection {
        Detection {
            bbox: BBox::new(x, 0.0, x + 10.0, 10.0),
            score,
        }
    }

    /// The study's ensemble keeps the union's highest-scoring box where boxes overlap
    /// (IoU > 0.1) and every separate box; score averaging merges only IoU ≥ 0.5 and
    /// averages over all members.
    #[test]
    fn nms_fusion_keeps_the_best_of_the_union_and_score_average_votes() {
        // Member 0 and 1 overlap at IoU 0.6 (shift 2.5); member 2 overlaps member 0 at
        // IoU 0.25 (shift 6); member 1 also has a separate box.
        let all = vec![
            (0, det(0.0, 0.9)),
            (1, det(2.5, 0.6)),
            (2, det(6.0, 0.5)),
            (1, det(100.0, 0.3)),
        ];
        let nms = fuse(all.clone(), Fusion::Nms, 3.0);
        let scores: Vec<f32> = nms.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.9, 0.3]);
        let voted = fuse(all, Fusion::ScoreAverage, 3.0);
        let mut scores: Vec<f32> = voted.iter().map(|d| d.score).collect();
        scores.sort_by(f32::total_cmp);
        assert_eq!(scores, vec![0.1, 0.5 / 3.0, 0.5]);
    }
}
