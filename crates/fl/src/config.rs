//! The federation's settings: one validated builder, so that every caller (CLI,
//! experiments, simulations, tests) states only what differs from the defaults and an
//! impossible setting is refused before a port is bound or a round starts.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tessera_core::{LocalTrainingConfig, Strategy};
use tessera_dp::{DpConfig, Mechanism};
use tessera_secagg::Modulus;

use crate::error::FlError;

/// Which secure-aggregation protocol a federation uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    Secagg,
    SecaggPlus,
    /// The baseline without secure aggregation: the coordinator sees every update.
    Plaintext,
}

impl Protocol {
    /// The name used in config files.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Secagg => "secagg",
            Protocol::SecaggPlus => "secagg-plus",
            Protocol::Plaintext => "plaintext",
        }
    }

    pub fn is_secure(self) -> bool {
        self != Protocol::Plaintext
    }
}

/// Whom the threshold (and SecAgg+ degree) is planned against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Threat {
    /// The coordinator follows the protocol but may collude with corrupt sites.
    #[default]
    SemiHonest,
    /// The coordinator may deviate (equivocate, forge survivor sets): thresholds with
    /// 2t > holders + c and t ≥ c + 2.
    ActiveServer,
}

/// How site updates are weighted in the mean.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Weighting {
    /// By sample count (FedAvg): the counts travel exactly, and DP noise is calibrated
    /// to the largest weight while the mean divides by their sum.
    #[default]
    Samples,
    /// Every contributing site counts once: under site-level DP the noise on the mean
    /// is then that of the sum divided by the number of contributors. The codec's
    /// largest weight is 1, which tells sites to send weight 1.
    Uniform,
}

impl From<Threat> for tessera_secagg::plan::ThreatModel {
    fn from(t: Threat) -> Self {
        match t {
            Threat::SemiHonest => tessera_secagg::plan::ThreatModel::SemiHonest,
            Threat::ActiveServer => tessera_secagg::plan::ThreatModel::ActiveServer,
        }
    }
}

/// How the coordinator runs rounds. Build it with [`FederationConfig::builder`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    pub session: [u8; 16],
    pub strategy: Strategy,
    pub training: LocalTrainingConfig,
    pub protocol: Protocol,
    /// Expected dropout and corruption rates, for choosing the threshold (and degree).
    pub dropout_rate: f64,
    pub corruption_rate: f64,
    /// The threat model the threshold is planned for.
    #[serde(default)]
    pub threat: Threat,
    pub bits: u8,
    /// Clipping range of each coordinate of a site's parameter change.
    pub clip: f32,
    /// Largest site weight (sample count).
    pub max_weight: u64,
    #[serde(default)]
    pub weighting: Weighting,
    /// The generator that expands SecAgg masks (a signed round parameter).
    #[serde(default)]
    pub mask_prg: tessera_secagg::MaskPrg,
    /// Fraction of the connected sites selected for each round (1 = all), drawn
    /// afresh every round from the session and round number.
    pub sample_fraction: f64,
    /// Time for local training and the first phase.
    pub training_timeout: Duration,
    /// Time for each later phase; a site that misses it is a dropout.
    pub phase_timeout: Duration,
    pub checkpoint: PathBuf,
    /// Differential privacy; its ledger is written beside the checkpoint.
    #[serde(default)]
    pub dp: DpConfig,
}

/// Builds a [`FederationConfig`] from defaults; [`FederationBuilder::build`] validates.
#[derive(Clone, Debug)]
pub struct FederationBuilder(FederationConfig);

impl FederationConfig {
    /// Defaults: FedAvg, SecAgg planned for 5% dropouts and no corruption, a 24-bit ring,
    /// clip ±1, weights up to 1000, every site each round, 60 s for training and 10 s per
    /// later phase, no DP.
    pub fn builder(session: [u8; 16], checkpoint: impl Into<PathBuf>) -> FederationBuilder {
        FederationBuilder(FederationConfig {
            session,
            strategy: Strategy::FedAvg,
            training: LocalTrainingConfig {
                steps: 1,
                batch_size: 1,
                learning_rate: 0.0,
                proximal_mu: 0.0,
                seed: 0,
            },
            protocol: Protocol::Secagg,
            dropout_rate: 0.05,
            corruption_rate: 0.0,
            threat: Threat::SemiHonest,
            bits: 24,
            clip: 1.0,
            max_weight: 1000,
            weighting: Weighting::Samples,
            mask_prg: tessera_secagg::MaskPrg::default(),
            sample_fraction: 1.0,
            training_timeout: Duration::from_secs(60),
            phase_timeout: Duration::from_secs(10),
            checkpoint: checkpoint.into(),
            dp: DpConfig::default(),
        })
    }

    /// Where the privacy ledger (JSON) is kept: beside the checkpoint.
    pub fn ledger_path(&self) -> PathBuf {
        ledger_path(&self.checkpoint)
    }

    /// The largest weight the codec allows: 1 under uniform weighting.
    pub fn codec_max_weight(&self) -> u64 {
        match self.weighting {
            Weighting::Samples => self.max_weight,
            Weighting::Uniform => 1,
        }
    }

    /// Whether rounds are differentially private (then normalisation statistics stay at
    /// the sites: see `Strategy::is_federated`).
    pub fn is_private(&self) -> bool {
        self.dp.mechanism != tessera_dp::Mechanism::None
    }

    /// Where the round number spent before each round is kept (see `checkpoint`).
    pub fn round_marker_path(&self) -> PathBuf {
        self.checkpoint.with_extension("round")
    }

    /// Where the latest receipt given to each site is kept: beside the checkpoint.
    pub fn receipts_path(&self) -> PathBuf {
        self.checkpoint.with_extension("receipts.json")
    }

    /// Checks every setting, naming the key to change.
    pub fn validate(&self) -> Result<(), FlError> {
        let bad = |key: &'static str, message: String| Err(FlError::Config { key, message });
        if Modulus::new(self.bits).is_err() {
            return bad("bits", format!("{} is outside 8..=32", self.bits));
        }
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return bad("clip", format!("{} must be a positive number", self.clip));
        }
        if !(0.0..1.0).contains(&self.dropout_rate) {
            return bad(
                "dropout_rate",
                format!("{} must be in [0, 1)", self.dropout_rate),
            );
        }
        if !(0.0..1.0).contains(&self.corruption_rate) {
            return bad(
                "corruption_rate",
                format!("{} must be in [0, 1)", self.corruption_rate),
            );
        }
        if !(self.sample_fraction > 0.0 && self.sample_fraction <= 1.0) {
            return bad(
                "sample_fraction",
                format!("{} must be in (0, 1]", self.sample_fraction),
            );
        }
        if self.max_weight == 0 {
            return bad("max_weight", "must be at least 1".into());
        }
        if self.training_timeout.is_zero() {
            return bad("training_timeout_s", "must be positive".into());
        }
        if self.phase_timeout.is_zero() {
            return bad("phase_timeout_s", "must be positive".into());
        }
        if let Strategy::FedProx { mu } = self.strategy
            && !(mu.is_finite() && mu >= 0.0)
        {
            return bad("strategy.fedprox.mu", format!("{mu} must be ≥ 0"));
        }
        self.dp.validate()?;
        if !self.protocol.is_secure()
            && matches!(self.dp.mechanism, Mechanism::Ddg | Mechanism::Skellam)
        {
            return bad(
                "dp.mechanism",
                format!(
                    "\"{}\" needs secure aggregation: with protocol = \"plaintext\" the \
                     coordinator would see each update with only its site's share of the \
                     noise; use \"central\" or a secure protocol",
                    self.dp.mechanism.name()
                ),
            );
        }
        Ok(())
    }
}

/// Hex of a session id (as config files and state files write it).
pub fn session_hex(session: &[u8; 16]) -> String {
    session.iter().map(|b| format!("{b:02x}")).collect()
}

/// A session id from 32 hexadecimal digits.
pub fn parse_session(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The ledger file that belongs to a checkpoint.
pub fn ledger_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_extension("ledger.json")
}

impl FederationBuilder {
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.0.strategy = strategy;
        self
    }

    pub fn training(mut self, training: LocalTrainingConfig) -> Self {
        self.0.training = training;
        self
    }

    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.0.protocol = protocol;
        self
    }

    /// Expected dropout and corruption rates, for the threshold (and degree).
    pub fn rates(mut self, dropout: f64, corruption: f64) -> Self {
        self.0.dropout_rate = dropout;
        self.0.corruption_rate = corruption;
        self
    }

    pub fn weighting(mut self, weighting: Weighting) -> Self {
        self.0.weighting = weighting;
        self
    }

    /// The mask generator of every round (default AES-256-CTR).
    pub fn mask_prg(mut self, prg: tessera_secagg::MaskPrg) -> Self {
        self.0.mask_prg = prg;
        self
    }

    pub fn threat(mut self, threat: Threat) -> Self {
        self.0.threat = threat;
        self
    }

    /// Ring bits, per-coordinate clip and the largest site weight of the codec.
    pub fn codec(mut self, bits: u8, clip: f32, max_weight: u64) -> Self {
        self.0.bits = bits;
        self.0.clip = clip;
        self.0.max_weight = max_weight;
        self
    }

    pub fn sample_fraction(mut self, fraction: f64) -> Self {
        self.0.sample_fraction = fraction;
        self
    }

    /// Deadlines: for local training plus the first phase, and for each later phase.
    pub fn timeouts(mut self, training: Duration, phase: Duration) -> Self {
        self.0.training_timeout = training;
        self.0.phase_timeout = phase;
        self
    }

    pub fn dp(mut self, dp: DpConfig) -> Self {
        self.0.dp = dp;
        self
    }

    pub fn build(self) -> Result<FederationConfig, FlError> {
        self.0.validate()?;
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(r: Result<FederationConfig, FlError>) -> &'static str {
        match r {
            Err(FlError::Config { key, .. }) => key,
            Err(FlError::Privacy(_)) => "dp",
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn each_bad_setting_is_refused_by_name() {
        let b = || FederationConfig::builder([0; 16], "ck.bin");
        assert!(b().build().is_ok());
        assert_eq!(key_of(b().codec(7, 1.0, 10).build()), "bits");
        assert_eq!(key_of(b().codec(16, 0.0, 10).build()), "clip");
        assert_eq!(key_of(b().codec(16, f32::NAN, 10).build()), "clip");
        assert_eq!(key_of(b().codec(16, 1.0, 0).build()), "max_weight");
        assert_eq!(key_of(b().rates(1.0, 0.0).build()), "dropout_rate");
        assert_eq!(key_of(b().rates(0.1, -0.1).build()), "corruption_rate");
        assert_eq!(key_of(b().sample_fraction(0.0).build()), "sample_fraction");
        assert_eq!(key_of(b().sample_fraction(1.5).build()), "sample_fraction");
        assert_eq!(
            key_of(b().timeouts(Duration::ZERO, Duration::from_secs(1)).build()),
            "training_timeout_s"
        );
        let ddg = DpConfig {
            mechanism: Mechanism::Ddg,
            ..DpConfig::default()
        };
        assert_eq!(
            key_of(b().protocol(Protocol::Plaintext).dp(ddg.clone()).build()),
            "dp.mechanism"
        );
        assert!(b().dp(ddg).build().is_ok());
        let bad_dp = DpConfig {
            mechanism: Mechanism::Ddg,
            epsilon: -1.0,
            ..DpConfig::default()
        };
        assert_eq!(key_of(b().dp(bad_dp).build()), "dp");
    }

    #[test]
    fn session_ids_round_trip_and_bad_text_is_refused() {
        let s = [0xab; 16];
        assert_eq!(parse_session(&session_hex(&s)), Some(s));
        assert_eq!(parse_session("zz"), None);
        // 32 bytes, not ASCII: refused, never sliced inside a character
        assert_eq!(parse_session("éééééééééééééééé"), None);
    }
}
