//! The privacy audit of an arm with `canaries = m` (`tessera_fl::canary`,
//! `tessera_dp::audit`): canary sites join the federation, and after it the auditor —
//! who sees what the coordinator publishes, the global model after every round — guesses
//! which canaries were in. The empirical ε lower bound goes beside the ledger's claim.

use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use tessera_core::seed::{Purpose, RootSeed, SeedContext};
use tessera_core::{LocalTrainer, LocalTrainingConfig, LocalUpdate, ParamLayout, Strategy};
use tessera_dp::audit::{epsilon_lower_bound, guess};
use tessera_fl::canary::{Canaries, CanaryTrainer};
use tessera_train::TrainError;

/// Confidence of the reported lower bound.
pub const CONFIDENCE: f64 = 0.95;

/// What an audit found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrivacyAudit {
    pub canaries: usize,
    /// Guesses made ("in" for the top quarter of scores, "out" for the bottom quarter,
    /// fixed before the run) and how many were right.
    pub guesses: usize,
    pub correct: usize,
    pub delta: f64,
    pub confidence: f64,
    /// The mechanism is not (ε, δ)-DP for any ε below this, at `confidence`.
    pub epsilon_lower_bound: f64,
    /// The ledger's ε for the run (None without DP).
    pub claimed_epsilon: Option<f64>,
}

/// A site of a federated arm: a hospital's detector or a canary.
pub(crate) enum ArmSite<T> {
    Hospital(T),
    Canary(CanaryTrainer),
}

impl<T: LocalTrainer<Error = TrainError>> LocalTrainer for ArmSite<T> {
    type Error = TrainError;

    fn layout(&self) -> &ParamLayout {
        match self {
            ArmSite::Hospital(t) => t.layout(),
            ArmSite::Canary(t) => t.layout(),
        }
    }

    fn parameters(&self) -> Vec<f32> {
        match self {
            ArmSite::Hospital(t) => t.parameters(),
            ArmSite::Canary(t) => t.parameters(),
        }
    }

    fn train(
        &mut self,
        start: &[f32],
        cfg: &LocalTrainingConfig,
    ) -> Result<LocalUpdate, TrainError> {
        match self {
            ArmSite::Hospital(t) => t.train(start, cfg),
            ArmSite::Canary(t) => t
                .train(start, cfg)
                .map_err(|never: Infallible| match never {}),
        }
    }
}

/// An arm's canaries: `m` of them, updates of norm `l2_clip` (1 without DP), from the
/// experiment's root seed and the run's session.
pub(crate) fn canaries(
    layout: &ParamLayout,
    m: usize,
    l2_clip: f64,
    strategy: &Strategy,
    private: bool,
    (root, session): (&RootSeed, [u8; 16]),
) -> Canaries {
    let seed = root.derive(Purpose::Canary, SeedContext::session(session));
    let norm = if private { l2_clip as f32 } else { 1.0 };
    Canaries::new(layout, m, norm, strategy, private, seed)
}

/// Scores the canaries by the global model's movements and bounds ε.
pub(crate) fn audit(
    canaries: &Canaries,
    movements: &[Vec<f32>],
    delta: f64,
    claimed_epsilon: Option<f64>,
) -> PrivacyAudit {
    let m = canaries.len();
    let scores = canaries.scores(movements);
    let (guesses, correct) = guess(&scores, canaries.included(), m / 4, m / 4);
    PrivacyAudit {
        canaries: m,
        guesses,
        correct,
        delta,
        confidence: CONFIDENCE,
        epsilon_lower_bound: epsilon_lower_bound(m, guesses, correct, delta, CONFIDENCE),
        claimed_epsilon,
    }
}

/// Per arm with canaries: the audit's ε lower bound beside the ledger's claim (mean
/// ± SD over seeds); empty without audits.
pub(crate) fn audit_table(arms: &[crate::seeds::ArmRuns<'_>]) -> String {
    use crate::seeds::mean_sd;
    use std::fmt::Write as _;
    let audited: Vec<_> = arms.iter().filter(|a| a.first().audit.is_some()).collect();
    if audited.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "| arm | canaries | right guesses | ε lower bound (95%) | claimed ε (ledger) |\n|---|---|---|---|---|\n",
    );
    for a in audited {
        let audits: Vec<&PrivacyAudit> = a.runs.iter().filter_map(|r| r.audit.as_ref()).collect();
        let right: Vec<String> = audits
            .iter()
            .map(|x| format!("{}/{}", x.correct, x.guesses))
            .collect();
        let bounds: Vec<f64> = audits.iter().map(|x| x.epsilon_lower_bound).collect();
        let claimed: Vec<f64> = audits.iter().filter_map(|x| x.claimed_epsilon).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            a.name,
            audits[0].canaries,
            right.join(", "),
            mean_sd(&bounds),
            if claimed.is_empty() {
                "none (no DP)".into()
            } else {
                mean_sd(&claimed)
            }
        );
    }
    md
}
