//! The coordinator: runs rounds, drives the secure-aggregation phases with deadlines,
//! updates the global model through the strategy, and checkpoints after every round.

use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tessera_core::{AggregationStrategy, LocalTrainingConfig, ParamLayout, Strategy};
use tessera_dp::{
    DiscreteGaussian, DpConfig, DpError, DpPlan, Ledger, LedgerEntry, Mechanism, PrivateCodecSpec,
    RoundShape,
};
use tessera_secagg::plan::{PlanRequest, plan_secagg, plan_secagg_plus};
use tessera_secagg::{
    Aggregator, FixedPoint, GraphSpec, Modulus, PlainVector, Roster, Round, RoundConfig,
    RoundParams, SessionId, SiteId, Status,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::FlError;
use crate::wire::{self, Codec, CodecSpec, FixedPointSpec, RoundStart, ToCoordinator, ToSite};

/// Which secure-aggregation protocol a federation uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    Secagg,
    SecaggPlus,
    /// The baseline without secure aggregation: the coordinator sees every update.
    Plaintext,
}

/// How the coordinator runs rounds.
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
    pub bits: u8,
    /// Clipping range of each coordinate of a site's parameter change.
    pub clip: f32,
    /// Largest site weight (sample count).
    pub max_weight: u64,
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

impl FederationConfig {
    /// Where the privacy ledger (JSON) is kept: beside the checkpoint.
    pub fn ledger_path(&self) -> PathBuf {
        self.checkpoint.with_extension("ledger.json")
    }
}

/// The state that survives a crash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Checkpoint {
    session: [u8; 16],
    next_round: u64,
    global: Vec<f32>,
    ledger: Option<Ledger>,
}

/// What happened in one round.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundReport {
    pub round: u64,
    pub participants: Vec<SiteId>,
    /// Sites whose update is in the new model; empty when the round aborted.
    pub contributors: Vec<SiteId>,
    /// Why the round aborted, if it did (the global model is then unchanged).
    pub aborted: Option<String>,
    /// Total weight (samples) of the contributors.
    pub total_weight: u64,
    /// The round's privacy charge, when the federation applies DP.
    pub privacy: Option<LedgerEntry>,
}

/// The coordinator of one federation.
pub struct Coordinator {
    config: FederationConfig,
    roster: Arc<Roster>,
    layout: ParamLayout,
    global: Vec<f32>,
    server: Box<dyn AggregationStrategy>,
    next_round: u64,
    sites: BTreeMap<SiteId, mpsc::Sender<Vec<u8>>>,
    inbox: mpsc::Receiver<(SiteId, Vec<u8>)>,
    joins: Option<mpsc::Receiver<(SiteId, mpsc::Sender<Vec<u8>>)>>,
    ledger: Option<Ledger>,
    /// Randomness for the coordinator's own noise (central DP only).
    rng: ChaCha20Rng,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FlError> {
    use std::io::Write;
    let err = |e: std::io::Error| FlError::Checkpoint {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let tmp = path.with_extension("partial");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

impl Coordinator {
    /// A coordinator for connected `sites`; resumes from the checkpoint if one exists,
    /// otherwise starts from `initial`.
    pub fn new(
        config: FederationConfig,
        roster: Arc<Roster>,
        layout: ParamLayout,
        initial: Vec<f32>,
        sites: BTreeMap<SiteId, mpsc::Sender<Vec<u8>>>,
        inbox: mpsc::Receiver<(SiteId, Vec<u8>)>,
    ) -> Result<Self, FlError> {
        layout
            .check(&initial)
            .map_err(|e| FlError::Model(e.to_string()))?;
        config.dp.validate()?;
        if config.protocol == Protocol::Plaintext
            && matches!(config.dp.mechanism, Mechanism::Ddg | Mechanism::Skellam)
        {
            return Err(FlError::Privacy(DpError::Infeasible(format!(
                "dp.mechanism = \"{}\" needs secure aggregation: with protocol = \"plaintext\" the \
                 coordinator would see each update with only its site's share of the noise; use \
                 \"central\" or a secure protocol",
                config.dp.mechanism.name()
            ))));
        }
        let fresh_ledger = (config.dp.mechanism != Mechanism::None).then(|| {
            Ledger::new(
                config.dp.mechanism.name(),
                config.dp.epsilon,
                config.dp.delta,
                config.dp.mechanism != Mechanism::Skellam,
            )
        });
        let (next_round, global, ledger) = match std::fs::read(&config.checkpoint) {
            Ok(bytes) => {
                let ck: Checkpoint =
                    postcard::from_bytes(&bytes).map_err(|e| FlError::Checkpoint {
                        path: config.checkpoint.clone(),
                        message: format!("unreadable checkpoint: {e}"),
                    })?;
                if ck.session != config.session || ck.global.len() != layout.len() {
                    return Err(FlError::Checkpoint {
                        path: config.checkpoint.clone(),
                        message:
                            "belongs to another session or model; move it away to start afresh"
                                .into(),
                    });
                }
                (ck.next_round, ck.global, ck.ledger.or(fresh_ledger))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (1, initial, fresh_ledger),
            Err(e) => {
                return Err(FlError::Checkpoint {
                    path: config.checkpoint.clone(),
                    message: e.to_string(),
                });
            }
        };
        let server = config.strategy.server();
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| FlError::Model("the operating system gave no randomness".into()))?;
        Ok(Self {
            ledger,
            rng: ChaCha20Rng::from_seed(seed),
            config,
            roster,
            layout,
            global,
            server,
            next_round,
            sites,
            inbox,
            joins: None,
        })
    }

    /// Sites that connect (again) while the federation runs: each is swapped in, with
    /// its new link, at the start of the next round.
    pub fn with_joins(mut self, joins: mpsc::Receiver<(SiteId, mpsc::Sender<Vec<u8>>)>) -> Self {
        self.joins = Some(joins);
        self
    }

    pub fn global(&self) -> &[f32] {
        &self.global
    }

    pub fn next_round(&self) -> u64 {
        self.next_round
    }

    /// The privacy ledger so far (None without DP).
    pub fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_ref()
    }

    /// Public per-round randomness, distinct per purpose.
    fn round_seed(&self, round: u64, purpose: &[u8; 8]) -> [u8; 32] {
        let mut seed = [0u8; 32];
        seed[..16].copy_from_slice(&self.config.session);
        seed[16..24].copy_from_slice(&round.to_le_bytes());
        seed[24..].copy_from_slice(purpose);
        seed
    }

    /// The round's codec: fixed point without DP, the private codec with it.
    fn codec_spec(
        &self,
        round: u64,
        n: usize,
        threshold: u32,
        modulus: Modulus,
    ) -> Result<(CodecSpec, Option<DpPlan>), FlError> {
        let dim = self.layout.len();
        if self.config.dp.mechanism == Mechanism::None {
            let spec = FixedPointSpec {
                bits: self.config.bits,
                clip: self.config.clip,
                scale: FixedPoint::max_scale(modulus, self.config.clip, n),
                max_sites: n,
                max_weight: self.config.max_weight,
                dim,
            };
            return Ok((CodecSpec::FixedPoint(spec), None));
        }
        // Without secure aggregation nothing guarantees contributors; central noise does
        // not depend on them.
        let guaranteed = if self.config.protocol == Protocol::Plaintext {
            1
        } else {
            threshold as usize
        };
        let plan = tessera_dp::plan(
            &self.config.dp,
            RoundShape {
                sites: n,
                guaranteed,
                bits: self.config.bits,
                dim,
            },
        )?;
        let spec = PrivateCodecSpec {
            bits: self.config.bits,
            l2_clip: self.config.dp.l2_clip,
            gamma: plan.gamma,
            dim,
            max_sites: n,
            max_weight: self.config.max_weight,
            rotation_seed: self.round_seed(round, b"rotation"),
            site_noise: plan.site_noise,
        };
        Ok((CodecSpec::Private(spec), Some(plan)))
    }

    /// Charges the round to the ledger before anything is released, and persists it so
    /// that a crash cannot forget a charge.
    fn charge(&mut self, round: u64, plan: &DpPlan) -> Result<LedgerEntry, FlError> {
        let Some(ledger) = self.ledger.as_mut() else {
            return Err(FlError::Model("DP round without a ledger".into()));
        };
        let entry = ledger
            .charge(round, plan.guaranteed, plan.noise, plan.rho)?
            .clone();
        self.save(self.next_round)?;
        Ok(entry)
    }

    /// Writes the checkpoint (and the ledger beside it) atomically.
    fn save(&self, next_round: u64) -> Result<(), FlError> {
        let ck = Checkpoint {
            session: self.config.session,
            next_round,
            global: self.global.clone(),
            ledger: self.ledger.clone(),
        };
        write_atomic(
            &self.config.checkpoint,
            &postcard::to_allocvec(&ck).unwrap_or_default(),
        )?;
        if let Some(ledger) = &self.ledger {
            let json = serde_json::to_vec_pretty(ledger).unwrap_or_default();
            write_atomic(&self.config.ledger_path(), &json)?;
        }
        Ok(())
    }

    /// Decodes the unmasked sum, adding the coordinator's noise for central DP.
    fn decode(
        &mut self,
        codec: &Codec,
        plan: Option<&DpPlan>,
        sum: &PlainVector,
    ) -> Result<tessera_secagg::WeightedMean, FlError> {
        Ok(match (codec, plan.and_then(|p| p.central_sigma)) {
            (Codec::FixedPoint(c), _) => c.decode(sum)?,
            (Codec::Private(c), Some(sigma)) => {
                c.decode_with_central_noise(sum, &DiscreteGaussian::new(sigma), &mut self.rng)?
            }
            (Codec::Private(c), None) => c.decode(sum)?,
        })
    }

    fn plan(&self, n: usize) -> Result<(u32, GraphSpec), FlError> {
        let request = PlanRequest::new(n, self.config.dropout_rate, self.config.corruption_rate);
        let plan = match self.config.protocol {
            Protocol::Secagg | Protocol::Plaintext => plan_secagg(&request)?,
            Protocol::SecaggPlus => plan_secagg_plus(&request)?,
        };
        let graph = match plan.degree {
            // The graph seed is public round randomness derived from the session and
            // round (see the secagg crate's notes on who may choose it).
            Some(k) => {
                let mut seed = [0u8; 32];
                seed[..16].copy_from_slice(&self.config.session);
                seed[16..24].copy_from_slice(&self.next_round.to_le_bytes());
                GraphSpec::RandomRegular {
                    degree: k as u32,
                    seed,
                }
            }
            None => GraphSpec::Complete,
        };
        Ok((plan.threshold as u32, graph))
    }

    /// The round's participants: ⌈fraction · connected⌉ sites (at least 2), chosen by a
    /// shuffle seeded with the session and round, so a restart picks the same ones.
    fn select(&self, round: u64) -> Vec<SiteId> {
        use chacha20::ChaCha20Rng;
        use rand_core::{Rng, SeedableRng};
        let mut all: Vec<SiteId> = self.sites.keys().copied().collect();
        let fraction = self.config.sample_fraction.clamp(0.0, 1.0);
        let k = ((fraction * all.len() as f64).ceil() as usize).clamp(all.len().min(2), all.len());
        if k == all.len() {
            return all;
        }
        let mut seed = [0u8; 32];
        seed[..16].copy_from_slice(&self.config.session);
        seed[16..24].copy_from_slice(&round.to_le_bytes());
        let mut rng = ChaCha20Rng::from_seed(seed);
        for i in (1..all.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            all.swap(i, j);
        }
        let mut chosen = all[..k].to_vec();
        chosen.sort_unstable();
        chosen
    }

    async fn send(&self, to: SiteId, msg: &ToSite) {
        self.send_encoded(to, wire::encode(msg)).await;
    }

    async fn send_encoded(&self, to: SiteId, bytes: Vec<u8>) {
        if let Some(tx) = self.sites.get(&to) {
            // A closed link is a dropout; the phase deadline handles it.
            let _ = tx.send(bytes).await;
        }
    }

    /// Runs the next round with every connected site.
    pub async fn run_round(&mut self) -> Result<RoundReport, FlError> {
        let round = self.next_round;
        if let Some(joins) = self.joins.as_mut() {
            while let Ok((site, link)) = joins.try_recv() {
                self.sites.insert(site, link);
            }
        }
        let participants = self.select(round);
        let n = participants.len();
        let (threshold, graph) = self.plan(n)?;
        let modulus = Modulus::new(self.config.bits).map_err(|e| FlError::Model(e.to_string()))?;
        let (spec, dp_plan) = self.codec_spec(round, n, threshold, modulus)?;
        let codec = spec.codec()?;
        let privacy = match &dp_plan {
            Some(plan) => Some(self.charge(round, plan)?),
            None => None,
        };
        let params = RoundParams {
            session: SessionId(self.config.session),
            round: Round(round),
            participants: participants.clone(),
            vector_len: codec.encoded_len() as u32,
            modulus,
            threshold,
            graph,
        };
        let config = RoundConfig::new(params.clone())?;
        let mut training = self.config.training.clone();
        training.proximal_mu = self.config.strategy.proximal_mu();
        training.seed = training.seed.wrapping_add(round);
        let start = ToSite::RoundStart(Box::new(RoundStart {
            params,
            codec: spec,
            training,
            strategy: self.config.strategy.clone(),
            global: self.global.clone(),
            secure: self.config.protocol != Protocol::Plaintext,
        }));
        // The model is encoded once, not once per site.
        let start = wire::encode(&start);
        for &site in &participants {
            self.send_encoded(site, start.clone()).await;
        }
        if self.config.protocol == Protocol::Plaintext {
            return self
                .finish_plaintext(round, participants, &codec, dp_plan.as_ref(), privacy)
                .await;
        }
        let mut aggregator = Aggregator::new(config, self.roster.clone())?;
        let mut timeout = self.config.training_timeout;
        while let Status::Collecting(phase) = aggregator.status().clone() {
            let deadline = Instant::now() + timeout;
            timeout = self.config.phase_timeout;
            while aggregator.status() == &Status::Collecting(phase) {
                let Ok(Some((from, bytes))) =
                    tokio::time::timeout_at(deadline, self.inbox.recv()).await
                else {
                    break;
                };
                // Anything undecodable, stale or out of place is dropped; the sender's
                // silence is then handled like any dropout.
                if let Ok(ToCoordinator::SecAgg(env)) = wire::decode(&bytes) {
                    let _ = aggregator.handle(from, env);
                }
            }
            if aggregator.status() == &Status::Collecting(phase) {
                aggregator.close_phase()?;
            }
            for out in aggregator.take_outgoing() {
                self.send(out.to, &ToSite::SecAgg(Box::new(out.envelope)))
                    .await;
            }
        }
        let report = match (aggregator.status().clone(), aggregator.result()) {
            (Status::Finished, Some(sum)) => {
                let mean = self.decode(&codec, dp_plan.as_ref(), &sum.sum)?;
                self.server
                    .apply(&self.layout, &mut self.global, &mean.mean);
                RoundReport {
                    round,
                    participants: participants.clone(),
                    contributors: sum.contributors.clone(),
                    aborted: None,
                    total_weight: mean.total_weight,
                    privacy,
                }
            }
            (Status::Aborted(reason), _) => RoundReport {
                round,
                participants: participants.clone(),
                contributors: vec![],
                aborted: Some(reason.to_string()),
                total_weight: 0,
                privacy,
            },
            (status, _) => {
                return Err(FlError::Model(format!(
                    "round {round} ended in state {status:?}"
                )));
            }
        };
        self.end_round(report).await
    }

    /// Tells the participants the round is over and checkpoints.
    async fn end_round(&mut self, report: RoundReport) -> Result<RoundReport, FlError> {
        let completed = report.aborted.is_none();
        for &site in &report.participants {
            self.send(
                site,
                &ToSite::RoundEnd {
                    round: report.round,
                    completed,
                },
            )
            .await;
        }
        self.next_round += 1;
        self.save(self.next_round)?;
        Ok(report)
    }

    /// The plaintext baseline: sum the updates that arrive before the deadline.
    async fn finish_plaintext(
        &mut self,
        round: u64,
        participants: Vec<SiteId>,
        codec: &Codec,
        dp_plan: Option<&DpPlan>,
        privacy: Option<LedgerEntry>,
    ) -> Result<RoundReport, FlError> {
        let deadline = Instant::now() + self.config.training_timeout;
        let modulus = Modulus::new(self.config.bits).map_err(|e| FlError::Model(e.to_string()))?;
        let mut sum = PlainVector::zeros(modulus, codec.encoded_len());
        let mut contributors = std::collections::BTreeSet::new();
        while contributors.len() < participants.len() {
            let Ok(Some((from, bytes))) =
                tokio::time::timeout_at(deadline, self.inbox.recv()).await
            else {
                break;
            };
            if let Ok(ToCoordinator::Plain { round: r, update }) = wire::decode(&bytes)
                && r == round
                && participants.contains(&from)
                && update.len() == sum.len()
                && update.modulus() == modulus
                && contributors.insert(from)
            {
                sum.add_assign(&update);
            }
        }
        let report = if contributors.is_empty() {
            RoundReport {
                round,
                participants,
                contributors: vec![],
                aborted: Some("no site sent its update".into()),
                total_weight: 0,
                privacy,
            }
        } else {
            let mean = self.decode(codec, dp_plan, &sum)?;
            self.server
                .apply(&self.layout, &mut self.global, &mean.mean);
            RoundReport {
                round,
                participants,
                contributors: contributors.into_iter().collect(),
                aborted: None,
                total_weight: mean.total_weight,
                privacy,
            }
        };
        self.end_round(report).await
    }

    /// Tells every site to stop.
    pub async fn shutdown(&self) {
        for &site in self.sites.keys() {
            self.send(site, &ToSite::Shutdown).await;
        }
    }
}
