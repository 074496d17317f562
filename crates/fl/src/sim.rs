//! Simulation helpers shared by `tessera simulate`, the experiment runner and the
//! benchmarks: random dropout schedules, and the known-update workload with its
//! correctness oracle (the global model a round must produce, within the codec's
//! quantisation bound).

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use std::path::Path;
use std::time::Duration;
use tessera_core::LayoutError;
use tessera_core::seed::{Purpose, RootSeed, SeedContext};
use tessera_secagg::plan::{Plan, PlanRequest, plan_secagg, plan_secagg_plus};
use tessera_secagg::{FixedPoint, Modulus, Phase, SiteId};

use crate::config::{FederationConfig, Protocol};
use crate::error::FlError;
use crate::known::KnownUpdateTrainer;
use crate::loopback;
use crate::memory::{self, Dropouts};
use crate::report::RoundReport;

/// Every phase a simulated site can drop out at.
pub const ALL_PHASES: [Phase; 5] = [
    Phase::AdvertiseKeys,
    Phase::ShareKeys,
    Phase::MaskedInput,
    Phase::ConsistencyCheck,
    Phase::Unmasking,
];

/// The phases after local training (a site that trained, then failed).
pub const AFTER_TRAINING: [Phase; 4] = [
    Phase::ShareKeys,
    Phase::MaskedInput,
    Phase::ConsistencyCheck,
    Phase::Unmasking,
];

fn unit(rng: &mut ChaCha20Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Each site drops out of each round with probability `rate`, at a phase drawn
/// uniformly from `phases`; deterministic in (root, session).
pub fn dropout_schedule(
    root: &RootSeed,
    session: [u8; 16],
    sites: usize,
    rounds: u64,
    rate: f64,
    phases: &[Phase],
) -> Dropouts {
    let mut rng =
        ChaCha20Rng::from_seed(root.derive(Purpose::Dropout, SeedContext::session(session)));
    let mut out = Dropouts::new();
    for round in 1..=rounds {
        for site in 0..sites as u32 {
            let drop = unit(&mut rng) < rate;
            let phase = phases[(rng.next_u64() % phases.len().max(1) as u64) as usize];
            if drop {
                out.entry(SiteId(site)).or_default().insert(round, phase);
            }
        }
    }
    out
}

/// Sites whose update moves every parameter by a fixed step, with a fixed weight: the
/// weighted mean a round must produce is then known exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct KnownWorkload {
    pub steps: Vec<f32>,
    pub weights: Vec<u64>,
}

impl KnownWorkload {
    /// Steps uniform in ±clip/2 and weights in 1..=max_weight, from (root, session).
    pub fn random(
        root: &RootSeed,
        session: [u8; 16],
        sites: usize,
        clip: f32,
        max_weight: u64,
    ) -> Self {
        let seed = root.derive(Purpose::Workload, SeedContext::session(session));
        let mut rng = ChaCha20Rng::from_seed(seed);
        let steps = (0..sites)
            .map(|_| ((unit(&mut rng) * 2.0 - 1.0) * 0.5) as f32 * clip)
            .collect();
        let weights = (0..sites)
            .map(|_| 1 + rng.next_u64() % max_weight)
            .collect();
        Self { steps, weights }
    }

    pub fn trainers(&self, dim: usize) -> Result<Vec<KnownUpdateTrainer>, LayoutError> {
        self.steps
            .iter()
            .zip(&self.weights)
            .map(|(s, w)| KnownUpdateTrainer::stateless(dim, *s, *w))
            .collect()
    }

    /// The weighted mean step of `contributors`, and their total weight.
    pub fn mean_step(&self, contributors: &[SiteId]) -> (f64, u64) {
        let total: u64 = contributors
            .iter()
            .map(|c| self.weights[c.0 as usize])
            .sum();
        let sum: f64 = contributors
            .iter()
            .map(|c| f64::from(self.steps[c.0 as usize]) * self.weights[c.0 as usize] as f64)
            .sum();
        (sum / total.max(1) as f64, total)
    }
}

/// Tracks the model a known-update federation must reach, round after round.
#[derive(Clone, Debug, Default)]
pub struct Oracle {
    expected: f64,
    bound: f64,
}

/// How one round's global model compares with the oracle.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Check {
    pub max_error: f64,
    pub bound: f64,
    pub ok: bool,
}

impl Oracle {
    /// Adds a completed round (its contributors and reported weight) and checks the
    /// new global model: the error may grow by the quantisation bound n·W/(s·Σw) per
    /// round, plus f32 rounding.
    pub fn check_round(
        &mut self,
        workload: &KnownWorkload,
        contributors: &[SiteId],
        reported_weight: u64,
        scale: f64,
        max_weight: u64,
        global: &[f32],
    ) -> Check {
        let (mean, total) = workload.mean_step(contributors);
        self.expected += mean;
        let n = workload.steps.len() as f64;
        self.bound += n * max_weight as f64 / (scale * total.max(1) as f64) + 1e-6;
        let max_error = global
            .iter()
            .map(|g| (f64::from(*g) - self.expected).abs())
            .fold(0.0, f64::max);
        Check {
            max_error,
            bound: self.bound,
            ok: max_error <= self.bound && total == reported_weight,
        }
    }
}

/// A known-update federation with random dropouts, as `tessera simulate` runs it.
#[derive(Clone, Debug)]
pub struct SimulationSpec {
    pub sites: usize,
    pub dim: usize,
    pub rounds: u64,
    pub dropout: f64,
    pub corruption: f64,
    pub protocol: Protocol,
    pub bits: u8,
    pub clip: f32,
    pub seed: u64,
    /// Over QUIC with mutual TLS on 127.0.0.1 instead of in-memory links.
    pub quic: bool,
    /// Backstop deadline of each phase (dropouts are explicit withdrawals, so a
    /// simulation never waits for it unless something is wrong).
    pub phase_timeout: Duration,
    pub max_weight: u64,
    /// The SecAgg mask generator.
    pub mask_prg: tessera_secagg::MaskPrg,
}

/// What the simulation will run with.
#[derive(Clone, Debug)]
pub struct SimulationPlan {
    pub plan: Plan,
    pub scale: f64,
}

impl SimulationSpec {
    fn session(&self) -> [u8; 16] {
        [0x5e; 16]
    }

    /// The threshold (and degree) the coordinator will plan, and the codec's scale.
    pub fn plan(&self) -> Result<SimulationPlan, FlError> {
        let modulus = Modulus::new(self.bits).map_err(|e| FlError::Config {
            key: "bits",
            message: e.to_string(),
        })?;
        let request = PlanRequest::new(self.sites, self.dropout, self.corruption);
        let plan = match self.protocol {
            Protocol::SecaggPlus => plan_secagg_plus(&request)?,
            _ => plan_secagg(&request)?,
        };
        let scale = FixedPoint::max_scale(modulus, self.clip, self.sites);
        FixedPoint::new(
            modulus,
            self.clip,
            scale,
            self.sites,
            self.max_weight,
            self.dim,
        )?;
        Ok(SimulationPlan { plan, scale })
    }
}

/// One simulated round, checked against the oracle.
#[derive(Clone, Debug)]
pub struct RoundRow {
    pub report: RoundReport,
    pub elapsed: Duration,
    /// Bytes to the coordinator and to the sites during the round.
    pub up: u64,
    pub down: u64,
    /// `None` when the round aborted.
    pub check: Option<Check>,
}

/// How a simulation ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimulationOutcome {
    pub aborted: u64,
    pub wrong: u64,
}

/// Runs the simulation, reporting each round as it ends.
pub async fn run(
    spec: &SimulationSpec,
    work: &Path,
    on_round: &mut impl FnMut(&RoundRow),
) -> Result<SimulationOutcome, FlError> {
    let SimulationPlan { scale, .. } = spec.plan()?;
    let session = spec.session();
    let root = RootSeed::from_experiment(spec.seed);
    let workload = KnownWorkload::random(&root, session, spec.sites, spec.clip, spec.max_weight);
    let dropouts = dropout_schedule(
        &root,
        session,
        spec.sites,
        spec.rounds,
        spec.dropout,
        &ALL_PHASES,
    );
    let config = FederationConfig::builder(session, work.join("checkpoint.bin"))
        .protocol(spec.protocol)
        .rates(spec.dropout, spec.corruption)
        .codec(spec.bits, spec.clip, spec.max_weight)
        .mask_prg(spec.mask_prg)
        .timeouts(spec.phase_timeout * 2, spec.phase_timeout)
        .build()?;
    let layout = KnownUpdateTrainer::layout_for(spec.dim)?;
    let trainers = workload.trainers(spec.dim)?;
    let initial = vec![0.0; spec.dim];
    let (mut coordinator, sites, endpoint) = if spec.quic {
        let fed = loopback::start(config, layout, initial, trainers, &dropouts, work, root).await?;
        (fed.coordinator, fed.sites, Some(fed.endpoint))
    } else {
        let transcripts = work.join("transcripts");
        let fed = memory::start(
            config,
            layout,
            initial,
            trainers,
            &dropouts,
            &transcripts,
            root,
        )
        .await?;
        (fed.coordinator, fed.sites, None)
    };
    let mut oracle = Oracle::default();
    let mut outcome = SimulationOutcome::default();
    for _ in 0..spec.rounds {
        let traffic = coordinator.traffic().clone();
        let (up0, down0) = traffic.snapshot();
        let start = std::time::Instant::now();
        let report = coordinator.run_round().await?;
        let elapsed = start.elapsed();
        let (up1, down1) = traffic.snapshot();
        let check = report.completed().then(|| {
            oracle.check_round(
                &workload,
                &report.contributors,
                report.total_weight,
                scale,
                spec.max_weight,
                coordinator.global(),
            )
        });
        outcome.aborted += u64::from(check.is_none());
        outcome.wrong += u64::from(check.is_some_and(|c| !c.ok));
        on_round(&RoundRow {
            report,
            elapsed,
            up: up1 - up0,
            down: down1 - down0,
            check,
        });
    }
    coordinator.shutdown().await?;
    for s in sites {
        let _ = s.await;
    }
    if let Some(endpoint) = endpoint {
        endpoint.close(0u32.into(), b"done");
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_depend_on_the_seed_and_hit_the_rate() {
        let a = dropout_schedule(
            &RootSeed::from_experiment(1),
            [0; 16],
            200,
            5,
            0.1,
            &ALL_PHASES,
        );
        let b = dropout_schedule(
            &RootSeed::from_experiment(2),
            [0; 16],
            200,
            5,
            0.1,
            &ALL_PHASES,
        );
        assert_ne!(a, b);
        let drops: usize = a.values().map(|r| r.len()).sum();
        // 1000 trials at 10%: mean 100, sd ≈ 9.5
        assert!((60..140).contains(&drops), "{drops}");
    }

    #[test]
    fn the_oracle_flags_a_wrong_model() {
        let w = KnownWorkload {
            steps: vec![0.5, -0.25],
            weights: vec![1, 3],
        };
        let sites = [SiteId(0), SiteId(1)];
        let mut oracle = Oracle::default();
        // (0.5·1 − 0.25·3)/4 = −0.0625
        let good = oracle.check_round(&w, &sites, 4, 1e6, 3, &[-0.0625; 3]);
        assert!(good.ok, "{good:?}");
        let mut oracle = Oracle::default();
        let bad = oracle.check_round(&w, &sites, 4, 1e6, 3, &[0.0625; 3]);
        assert!(!bad.ok);
    }
}
