//! A site's own policy: what it agrees to take part in, whatever the coordinator asks.
//!
//! Every `RoundStart` is checked before the site trains or sends anything. A round that
//! breaks the policy is refused: the refusal is recorded in the site's transcript with
//! the policy key it broke, nothing is sent for that round, and the site stays ready for
//! the next. The checks close the coordinator's easiest attacks on one site's update:
//! a downgrade to plaintext, a cohort or threshold too small to hide one site among the
//! others, a SecAgg+ graph of the coordinator's choosing, a repeated round (whose
//! second sum, minus the first, isolates a site), and split views of the round (the
//! context digest, see [`crate::wire::context_digest`]).

use serde::{Deserialize, Serialize};
use tessera_core::seed::Purpose;
use tessera_dp::accounting::{ddg_rho, skellam_rho};
use tessera_dp::{CodecSpec, Ledger, Mechanism, PrivacyUnit, SiteNoise};
use tessera_secagg::GraphSpec;
use thiserror::Error;

use crate::config::Protocol;
use crate::error::FlError;
use crate::planning::public_seed;
use crate::wire::RoundStart;

/// What a site takes part in (`[policy]` in its config; every key optional).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SitePolicy {
    /// Refuse rounds without secure aggregation (the plaintext baseline).
    pub require_secure: bool,
    /// Protocols the site takes part in.
    pub protocols: Vec<Protocol>,
    /// Fewest participants in a round.
    pub min_sites: usize,
    /// Sites that may collude with the coordinator: the threshold must be at least
    /// `max_corrupt + 2`, so that the colluders' shares and one more never suffice.
    pub max_corrupt: usize,
    /// Smallest SecAgg+ graph degree.
    pub min_degree: u32,
    /// Strategies the site accepts, by name (`fedavg`, `fedprox`, `fedbn`, `fedavgm`).
    pub strategies: Vec<String>,
    /// Most rounds the site answers in one session.
    pub max_rounds: u64,
    /// Largest model, in parameters.
    pub max_parameters: usize,
    /// Differential privacy the site insists on adding itself: "ddg" or "skellam"
    /// (default: none required).
    pub require_mechanism: Option<Mechanism>,
    /// Smallest standard deviation of the site's own noise share per unit of L2 clip
    /// (needs `require_mechanism`).
    pub min_noise_per_clip: f64,
    /// The site's own privacy budget: it accounts every round it answers in its own
    /// ledger (counting t − max_corrupt noise sources) and refuses a round that would
    /// take ε past this (needs `require_mechanism`).
    pub max_epsilon: Option<f64>,
    /// δ of the site's budget.
    pub delta: f64,
    /// Whom the site's required noise protects: "site" (default: its whole update) or
    /// "patient" (each of its patients, sampled secretly). With `require_mechanism`, a
    /// patient-unit round is refused by a site whose unit is "site": clipping each
    /// patient instead of the site's update would leave the site's whole contribution
    /// as many clips large as it has sampled patients, while its ledger counted one. A
    /// site-unit round also protects each patient, so a "patient" site accepts it.
    pub unit: PrivacyUnit,
}

impl Default for SitePolicy {
    /// Secure aggregation only, at least 3 sites, SecAgg+ degree at least 2, any
    /// strategy, no colluders assumed.
    fn default() -> Self {
        Self {
            require_secure: true,
            protocols: vec![Protocol::Secagg, Protocol::SecaggPlus],
            min_sites: 3,
            max_corrupt: 0,
            min_degree: 2,
            strategies: ["fedavg", "fedprox", "fedbn", "fedavgm"]
                .map(String::from)
                .to_vec(),
            max_rounds: u64::MAX,
            max_parameters: 1 << 28,
            require_mechanism: None,
            min_noise_per_clip: 0.0,
            max_epsilon: None,
            delta: 1e-5,
            unit: PrivacyUnit::Site,
        }
    }
}

/// A round the site would not take part in.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("refused (policy.{key}): {reason}")]
pub struct Refusal {
    /// The policy key the round broke (`context` and `round` are not settings: a
    /// mismatched context digest, or a round already answered).
    pub key: &'static str,
    pub reason: String,
}

fn refuse(key: &'static str, reason: String) -> Result<(), Refusal> {
    Err(Refusal { key, reason })
}

impl SitePolicy {
    /// Anything to simulate: every protocol, two sites, no limits. For simulations and
    /// experiments, never for a deployment.
    pub fn permissive() -> Self {
        Self {
            require_secure: false,
            protocols: vec![Protocol::Secagg, Protocol::SecaggPlus, Protocol::Plaintext],
            min_sites: 2,
            min_degree: 1,
            ..Self::default()
        }
    }

    /// Refuses contradictory or empty settings, naming the key.
    pub fn validate(&self) -> Result<(), FlError> {
        let bad = |key: &'static str, message: String| Err(FlError::Config { key, message });
        if self.protocols.is_empty() {
            return bad("policy.protocols", "lists no protocol".into());
        }
        if self.require_secure && self.protocols.contains(&Protocol::Plaintext) {
            return bad(
                "policy.protocols",
                "lists \"plaintext\" but policy.require_secure is true".into(),
            );
        }
        if self.min_sites < 2 {
            return bad("policy.min_sites", format!("{} is below 2", self.min_sites));
        }
        if self.max_corrupt + 2 > self.min_sites {
            return bad(
                "policy.max_corrupt",
                format!(
                    "{} colluders need a threshold of {} and so at least that many sites, \
                     but policy.min_sites is {}",
                    self.max_corrupt,
                    self.max_corrupt + 2,
                    self.min_sites
                ),
            );
        }
        let known = ["fedavg", "fedprox", "fedbn", "fedavgm"];
        if let Some(s) = self
            .strategies
            .iter()
            .find(|s| !known.contains(&s.as_str()))
        {
            return bad("policy.strategies", format!("unknown strategy \"{s}\""));
        }
        if self.strategies.is_empty() {
            return bad("policy.strategies", "lists no strategy".into());
        }
        match self.require_mechanism {
            Some(Mechanism::None | Mechanism::Central) => {
                return bad(
                    "policy.require_mechanism",
                    "a site can only require noise it adds itself: \"ddg\" or \"skellam\"".into(),
                );
            }
            None if self.min_noise_per_clip > 0.0 => {
                return bad(
                    "policy.min_noise_per_clip",
                    "a noise floor needs policy.require_mechanism".into(),
                );
            }
            _ => {}
        }
        if let Some(eps) = self.max_epsilon {
            if self.require_mechanism.is_none() {
                return bad(
                    "policy.max_epsilon",
                    "a privacy budget needs policy.require_mechanism".into(),
                );
            }
            if !(eps.is_finite() && eps > 0.0) {
                return bad("policy.max_epsilon", format!("{eps} must be positive"));
            }
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return bad("policy.delta", format!("{} must be in (0, 1)", self.delta));
        }
        if !(self.min_noise_per_clip.is_finite() && self.min_noise_per_clip >= 0.0) {
            return bad(
                "policy.min_noise_per_clip",
                format!("{} must be ≥ 0", self.min_noise_per_clip),
            );
        }
        Ok(())
    }

    /// A fresh ledger for the site's budget, if it has one.
    pub fn ledger(&self) -> Option<Ledger> {
        let (eps, m) = (self.max_epsilon?, self.require_mechanism?);
        Some(Ledger::new(
            m.name(),
            eps,
            self.delta,
            m != Mechanism::Skellam,
        ))
    }

    /// ρ of a round as this site accounts it: its codec's sensitivity, its noise share,
    /// and t − max_corrupt noise sources.
    /// The round's noise, the contributors it is accounted for, its ρ and the patient
    /// sampling rate (1 for the site unit), from the codec the round carries.
    pub fn round_rho(&self, start: &RoundStart) -> Result<(f64, usize, f64, f64), Refusal> {
        let refuse_with = |key: &'static str, reason: String| Refusal { key, reason };
        let CodecSpec::Private(spec) = &start.codec else {
            return Err(refuse_with(
                "require_mechanism",
                "the round adds no noise".into(),
            ));
        };
        let codec = tessera_dp::PrivateCodec::new(spec.clone())
            .map_err(|e| refuse_with("codec", e.to_string()))?;
        let n = (start.params.threshold as usize)
            .saturating_sub(self.max_corrupt)
            .max(1);
        let sens = codec.sensitivity();
        let (noise, rho) = match spec.site_noise {
            SiteNoise::DiscreteGaussian { sigma } => {
                let sigma = sigma.to_f64();
                let rho = ddg_rho(sens, sigma, n, codec.padded_dim())
                    .map_err(|e| refuse_with("codec", e.to_string()))?;
                (sigma, rho)
            }
            SiteNoise::Skellam { mu } => (mu, skellam_rho(sens, mu * n as f64)),
            SiteNoise::None => {
                return Err(refuse_with(
                    "require_mechanism",
                    "the round adds no noise".into(),
                ));
            }
        };
        Ok((noise, n, rho, start.codec.patient_sampling().unwrap_or(1.0)))
    }

    /// The site's own noise: the mechanism the codec asks for, and its standard
    /// deviation per unit of L2 clip.
    fn check_noise(&self, start: &RoundStart) -> Result<(), Refusal> {
        let Some(required) = self.require_mechanism else {
            return Ok(());
        };
        let (mechanism, std) = site_noise(start);
        if mechanism != required {
            return refuse(
                "require_mechanism",
                format!(
                    "the round asks for \"{}\" noise at this site, not \"{}\"",
                    mechanism.name(),
                    required.name()
                ),
            );
        }
        if self.unit == PrivacyUnit::Site && start.codec.patient_sampling().is_some() {
            return refuse(
                "unit",
                "the round clips each patient, not this site's update, so its noise would \
                 not protect the site as a whole"
                    .into(),
            );
        }
        if std.is_nan() || std < self.min_noise_per_clip {
            return refuse(
                "min_noise_per_clip",
                format!(
                    "noise of {std:.4} per unit of clip, below {}",
                    self.min_noise_per_clip
                ),
            );
        }
        Ok(())
    }

    /// Checks a round against the policy; `answered` is the last round this site
    /// answered in the round's session.
    pub fn check(&self, start: &RoundStart, answered: Option<u64>) -> Result<(), Refusal> {
        let p = &start.params;
        let round = p.round.0;
        if let Some(last) = answered
            && round <= last
        {
            return refuse(
                "round",
                format!(
                    "round {round} is not after round {last}, which this site already answered"
                ),
            );
        }
        if round > self.max_rounds {
            return refuse(
                "max_rounds",
                format!("round {round} is past {}", self.max_rounds),
            );
        }
        let protocol = match (start.secure, &p.graph) {
            (false, _) => Protocol::Plaintext,
            (true, GraphSpec::Complete) => Protocol::Secagg,
            (true, GraphSpec::RandomRegular { .. }) => Protocol::SecaggPlus,
        };
        if self.require_secure && !start.secure {
            return refuse(
                "require_secure",
                "the round asks for the update in the clear".into(),
            );
        }
        if !self.protocols.contains(&protocol) {
            return refuse(
                "protocols",
                format!("\"{}\" is not allowed", protocol.name()),
            );
        }
        self.check_cohort(start)?;
        self.check_noise(start)?;
        if !self.strategies.iter().any(|s| s == start.strategy.name()) {
            return refuse(
                "strategies",
                format!("\"{}\" is not allowed", start.strategy.name()),
            );
        }
        if start.global.len() > self.max_parameters {
            return refuse(
                "max_parameters",
                format!(
                    "{} parameters, above {}",
                    start.global.len(),
                    self.max_parameters
                ),
            );
        }
        Ok(())
    }

    /// Cohort size, threshold and (SecAgg+) the graph's degree and seed.
    fn check_cohort(&self, start: &RoundStart) -> Result<(), Refusal> {
        let p = &start.params;
        let n = p.participants.len();
        if n < self.min_sites {
            return refuse(
                "min_sites",
                format!("{n} sites, fewer than {}", self.min_sites),
            );
        }
        if start.secure && (p.threshold as usize) < self.max_corrupt + 2 {
            return refuse(
                "max_corrupt",
                format!(
                    "threshold {} is below {} (c + 2 with c = {})",
                    p.threshold,
                    self.max_corrupt + 2,
                    self.max_corrupt
                ),
            );
        }
        if let GraphSpec::RandomRegular { degree, seed } = &p.graph {
            if *degree < self.min_degree {
                return refuse(
                    "min_degree",
                    format!("degree {degree} is below {}", self.min_degree),
                );
            }
            let expected = public_seed(&p.session.0, Purpose::Graph, p.round.0);
            if *seed != expected {
                return refuse(
                    "graph_seed",
                    "the graph seed is not the one derived from the session and round".into(),
                );
            }
        }
        Ok(())
    }
}

/// The mechanism of the noise a round asks a site to add, and its standard deviation
/// per unit of L2 clip (0 without noise).
pub(crate) fn site_noise(start: &RoundStart) -> (Mechanism, f64) {
    match &start.codec {
        CodecSpec::Private(spec) => match spec.site_noise {
            SiteNoise::DiscreteGaussian { sigma } => {
                (Mechanism::Ddg, sigma.to_f64() * spec.gamma / spec.l2_clip)
            }
            SiteNoise::Skellam { mu } => (
                Mechanism::Skellam,
                (2.0 * mu).sqrt() * spec.gamma / spec.l2_clip,
            ),
            SiteNoise::None => (Mechanism::None, 0.0),
        },
        CodecSpec::FixedPoint(_) => (Mechanism::None, 0.0),
    }
}
