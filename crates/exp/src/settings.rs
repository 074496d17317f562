//! An experiment's `[settings]` (overrides of the profile) and the checks of its
//! top-level counts.

use serde::{Deserialize, Serialize};

use crate::error::ExpError;
use crate::spec::invalid;

/// Overrides of the profile's training and evaluation sizes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub rounds: Option<u64>,
    pub local_steps: Option<usize>,
    pub batch_size: Option<usize>,
    pub learning_rate: Option<f64>,
    /// Keep every k-th lung slice without lesion for training (lesion slices are kept).
    pub train_negative_stride: Option<usize>,
    /// Evaluate every k-th lung slice.
    pub eval_slice_stride: Option<usize>,
    /// At most this many test patients per cohort.
    pub eval_patients: Option<usize>,
    /// Keep Adam's state across rounds (the study's clients do); default false.
    pub keep_optimizer_state: Option<bool>,
    /// "tessera" (default: the profile's centre-head detector) or "study" (VGG19 without
    /// batch normalisation and RetinaNet's subnets on P2–P6 with the study's anchors).
    pub detector: Option<DetectorChoice>,
}

/// Which network the profile trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DetectorChoice {
    Tessera,
    Study,
}

pub(crate) fn check_seeds(seeds: usize, key: &str) -> Result<(), ExpError> {
    match seeds {
        0 => invalid(format!("{key} = 0: run each arm with at least 1 seed")),
        1..=1000 => Ok(()),
        _ => invalid(format!("{key} = {seeds}: at most 1000 seeds")),
    }
}

pub(crate) fn check_settings(s: &Settings) -> Result<(), ExpError> {
    let positive = [
        ("settings.rounds", s.rounds.map(|v| v as f64)),
        ("settings.local_steps", s.local_steps.map(|v| v as f64)),
        ("settings.batch_size", s.batch_size.map(|v| v as f64)),
        ("settings.learning_rate", s.learning_rate),
        (
            "settings.train_negative_stride",
            s.train_negative_stride.map(|v| v as f64),
        ),
        (
            "settings.eval_slice_stride",
            s.eval_slice_stride.map(|v| v as f64),
        ),
        ("settings.eval_patients", s.eval_patients.map(|v| v as f64)),
    ];
    for (key, value) in positive {
        if let Some(v) = value
            && !(v.is_finite() && v > 0.0)
        {
            return invalid(format!("{key} = {v}: must be positive"));
        }
    }
    Ok(())
}
