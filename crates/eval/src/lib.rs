//! # tessera-eval: the evaluation protocol of the study
//!
//! Dou et al. (npj Digit. Med. 2021) evaluated a slice-wise lesion detector per patient:
//! a detection hits a lesion at IoU ≥ 0.5; sensitivity, precision and false positives
//! per slice are computed per patient and averaged, with 95% intervals mean ± 1.96·SD/√n;
//! a score-threshold sweep 0 → 0.98 gives FROC-style curves; nested boxes (overlap
//! above 0.7) are removed; lesion burden comes from the dense score map thresholded at
//! 0.1. This crate implements that protocol, plus mAP, percentile-bootstrap intervals
//! (which [`summarise`] reports: they stay inside each metric's range, where the
//! study's normal interval does not) and a patient-level ROC AUC, on plain boxes and
//! masks (no model, no I/O). Matching follows an [`EvalProtocol`]: `strict` (PASCAL VOC)
//! or `authors` (the study's released code, with its lenient hits and exclusions).
//! Arms are compared patient by patient over training seeds with paired tests
//! (two-level bootstrap, Wilcoxon signed-rank, Holm, TOST equivalence).

mod agreement;
mod boxes;
mod metrics;
mod protocol;
mod stats;

pub use agreement::{BlandAltman, bland_altman, icc_agreement, spearman};
pub use boxes::{BBox, Detection, nms, remove_nested};
pub use metrics::{
    CohortSummary, DEFAULT_SCORE_THRESHOLD, Estimate, FrocPoint, HIT_IOU, PatientMetrics,
    PatientResult, PatientScore, SliceResult, bootstrap_ci, froc, froc_with, lesion_burden,
    normal_ci, normal_ci_population, patient_scores, predicted_burden, roc_auc, summarise,
    summarise_with,
};
pub use protocol::EvalProtocol;
pub use stats::{PairedDifference, SignedRank, holm, paired_difference, wilcoxon_signed_rank};
