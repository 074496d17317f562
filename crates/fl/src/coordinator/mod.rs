//! The coordinator as a sans-IO state machine, in the style of `quinn-proto`.
//!
//! [`CoordinatorMachine`] takes [`Event`]s (a message from a site, a link opened or
//! closed, a deadline passed) and queues [`Action`]s (bytes to send, a timer to arm, a
//! file to write, a round report), drained with [`CoordinatorMachine::poll_action`]. It
//! owns the federation's policy: site selection, threshold planning, the codec, DP
//! charging, the strategy and what a checkpoint holds. It owns no clock, socket, file
//! or runtime: the driver in [`crate::driver`] does, and tests drive it by hand, with
//! no timers at all.

use bytes::Bytes;
use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tessera_core::seed::Purpose;
use tessera_core::{AggregationStrategy, ParamLayout};
use tessera_dp::{Codec, DpPlan, Ledger, LedgerEntry, Mechanism};
use tessera_secagg::{
    Aggregator, Modulus, Phase, PlainVector, Roster, Round, RoundConfig, RoundParams, SessionId,
    SiteId, Status,
};

use crate::checkpoint::{Checkpoint, CheckpointRef, ResumeSettings, RoundMarker};
use crate::config::FederationConfig;
use crate::error::FlError;
use crate::planning::{codec_spec, corrupt_sites, plan, public_seed};
use crate::report::{AbortCause, Rejection, RoundReport};
use crate::wire::{self, RoundStart, ToSite, WithdrawReason};
use tessera_net::receipt::{Receipt, ReceiptSigner};

mod collect;

/// Identifies an armed deadline; a stale one is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerId(u64);

/// Something that happened, told to the machine by its driver.
#[derive(Clone, Debug)]
pub enum Event {
    /// A roster site's authenticated link opened (it may take part from the next round).
    LinkOpened(SiteId),
    /// A site's link closed: it is dropped from the running round at once.
    LinkClosed(SiteId),
    /// Bytes that arrived on `from`'s authenticated link.
    Message { from: SiteId, bytes: Vec<u8> },
    /// The deadline armed with this id has passed.
    Timeout(TimerId),
}

/// Something the driver must do, in order.
#[derive(Clone, Debug)]
pub enum Action {
    /// Send these bytes to a site (shared: a model goes to every site unchanged).
    Send { to: SiteId, bytes: Bytes },
    /// Arm a deadline `after` from now, replacing any earlier one.
    SetTimer { timer: TimerId, after: Duration },
    /// The round entered this phase (for the driver's timing; the first covers local
    /// training too).
    PhaseStarted(Phase),
    /// Write these bytes atomically before carrying out any later action.
    Write { path: PathBuf, bytes: Vec<u8> },
    /// A round has ended (after its messages and checkpoint above).
    Report(Box<RoundReport>),
}

enum Collect {
    Secure(Box<Aggregator>),
    Plain {
        sum: PlainVector,
        received: BTreeSet<SiteId>,
    },
}

struct Running {
    round: u64,
    participants: Vec<SiteId>,
    codec: Codec,
    plan: Option<DpPlan>,
    privacy: Option<LedgerEntry>,
    timer: TimerId,
    phase: Option<Phase>,
    left: BTreeSet<SiteId>,
    withdrawals: Vec<(SiteId, WithdrawReason)>,
    rejected: Vec<Rejection>,
    collect: Collect,
}

/// A planned round, before it is sent.
struct Prepared {
    start: RoundStart,
    codec: Codec,
    plan: Option<DpPlan>,
    privacy: Option<LedgerEntry>,
    round_config: Arc<RoundConfig>,
}

/// The coordinator of one federation, without I/O.
pub struct CoordinatorMachine {
    config: FederationConfig,
    roster: Arc<Roster>,
    layout: ParamLayout,
    /// Shared with the round start being sent (never copied for it).
    global: Arc<Vec<f32>>,
    strategy: Box<dyn AggregationStrategy>,
    next_round: u64,
    /// Rounds that ended (completed or aborted); one interrupted by a restart did not.
    rounds_ended: u64,
    connected: BTreeSet<SiteId>,
    ledger: Option<Ledger>,
    /// The coordinator's own noise (central DP only).
    rng: ChaCha20Rng,
    running: Option<Running>,
    timers: u64,
    between_rounds: Vec<Rejection>,
    receipts: Option<Receipts>,
    actions: VecDeque<Action>,
}

/// The coordinator's receipt key and the latest receipt it gave each site.
struct Receipts {
    signer: Arc<ReceiptSigner>,
    path: PathBuf,
    latest: std::collections::BTreeMap<u32, Receipt>,
    /// Sites told a round ended whose transcript head has not arrived yet.
    due: BTreeSet<SiteId>,
}

impl CoordinatorMachine {
    /// A coordinator that resumes from `checkpoint` (its bytes, when the file exists) or
    /// starts from `initial`. `noise_seed` seeds the coordinator's own noise.
    pub fn new(
        config: FederationConfig,
        roster: Arc<Roster>,
        layout: ParamLayout,
        initial: Vec<f32>,
        checkpoint: Option<&[u8]>,
        noise_seed: [u8; 32],
    ) -> Result<Self, FlError> {
        config.validate()?;
        layout.check(&initial)?;
        let settings = ResumeSettings::of(&config, layout.len());
        let mut strategy = config.strategy.server(config.is_private());
        let problem = |problem| FlError::Checkpoint {
            path: config.checkpoint.clone(),
            problem,
        };
        let (next_round, rounds_ended, global, ledger) = match checkpoint {
            Some(bytes) => {
                let ck = Checkpoint::decode(bytes).map_err(problem)?;
                ck.check_resume(&settings).map_err(problem)?;
                strategy.restore(ck.strategy_state);
                (ck.next_round, ck.rounds_ended, ck.global, ck.ledger)
            }
            None => (1, 0, initial, None),
        };
        let ledger = ledger.or_else(|| fresh_ledger(&config));
        Ok(Self {
            config,
            roster,
            layout,
            global: Arc::new(global),
            strategy,
            next_round,
            rounds_ended,
            connected: BTreeSet::new(),
            ledger,
            rng: ChaCha20Rng::from_seed(noise_seed),
            running: None,
            timers: 0,
            between_rounds: Vec::new(),
            receipts: None,
            actions: VecDeque::new(),
        })
    }

    /// Takes in the round marker written beside the checkpoint (its bytes, when the file
    /// exists): a round that was running when the coordinator stopped spent its number.
    pub fn with_round_marker(mut self, marker: Option<&[u8]>) -> Result<Self, FlError> {
        if let Some(bytes) = marker {
            let problem = |problem| FlError::Checkpoint {
                path: self.config.round_marker_path(),
                problem,
            };
            let marker = RoundMarker::decode(bytes).map_err(problem)?;
            self.next_round = marker
                .resume_at(&self.config.session, self.next_round)
                .map_err(problem)?;
        }
        Ok(self)
    }

    /// Signs receipts of sites' transcript heads with `signer` and keeps the latest per
    /// site in `path` (JSON, site id → receipt), continuing the receipts already there.
    pub fn with_receipts(
        mut self,
        signer: Arc<ReceiptSigner>,
        path: PathBuf,
        existing: Option<&[u8]>,
    ) -> Result<Self, FlError> {
        self.enable_receipts(signer, path, existing)?;
        Ok(self)
    }

    /// [`Self::with_receipts`] on a running machine.
    pub fn enable_receipts(
        &mut self,
        signer: Arc<ReceiptSigner>,
        path: PathBuf,
        existing: Option<&[u8]>,
    ) -> Result<(), FlError> {
        let latest = match existing {
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| FlError::File {
                path: path.clone(),
                message: format!("not a receipts file: {e}"),
            })?,
            None => Default::default(),
        };
        self.receipts = Some(Receipts {
            signer,
            path,
            latest,
            due: BTreeSet::new(),
        });
        Ok(())
    }

    pub fn config(&self) -> &FederationConfig {
        &self.config
    }

    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    pub fn global(&self) -> &[f32] {
        &self.global
    }

    /// The number the next round will carry.
    pub fn next_round(&self) -> u64 {
        self.next_round
    }

    /// Rounds that ended, completed or aborted (a round interrupted by a restart did not).
    pub fn rounds_ended(&self) -> u64 {
        self.rounds_ended
    }

    /// The privacy ledger so far (None without DP).
    pub fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_ref()
    }

    /// How many connected sites have not yet sent the transcript head of a round that
    /// ended (always 0 without receipts). A driver may wait for them before shutting
    /// down, so that the last round is anchored too.
    pub fn heads_due(&self) -> usize {
        self.receipts.as_ref().map_or(0, |r| r.due.len())
    }

    /// Sites whose links are open.
    pub fn connected(&self) -> &BTreeSet<SiteId> {
        &self.connected
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The next thing for the driver to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Starts the next round with a selection of the connected sites.
    pub fn start_round(&mut self) -> Result<(), FlError> {
        if self.running.is_some() {
            return Err(FlError::RoundInProgress);
        }
        if self.connected.len() < 2 {
            return Err(FlError::TooFewSites {
                connected: self.connected.len(),
                needed: 2,
            });
        }
        let round = self.next_round;
        let participants = self.select(round);
        let Prepared {
            start,
            codec,
            plan,
            privacy,
            round_config,
        } = self.prepare(round, &participants)?;
        let modulus = round_config.modulus();
        // The round number is spent before anything is sent: a coordinator restarted
        // mid-round starts the next number (sites answer each number once).
        self.next_round = round + 1;
        self.actions.push_back(Action::Write {
            path: self.config.round_marker_path(),
            bytes: RoundMarker {
                session: self.config.session,
                next_round: self.next_round,
            }
            .encode(),
        });
        let start = ToSite::RoundStart(Box::new(start));
        // The model is encoded once and shared by every site's send.
        let start: Bytes = wire::encode(&start)?.into();
        for &to in &participants {
            self.actions.push_back(Action::Send {
                to,
                bytes: start.clone(),
            });
        }
        let collect = if self.config.protocol.is_secure() {
            // Honest sites accuse only misbehaving neighbours: at most c of them.
            let tolerated = corrupt_sites(&self.config, participants.len());
            Collect::Secure(Box::new(
                Aggregator::new(round_config, self.roster.clone())?.tolerate_accusations(tolerated),
            ))
        } else {
            Collect::Plain {
                sum: PlainVector::zeros(modulus, codec.encoded_len()),
                received: BTreeSet::new(),
            }
        };
        let timer = self.arm(self.config.training_timeout);
        self.actions
            .push_back(Action::PhaseStarted(Phase::AdvertiseKeys));
        self.running = Some(Running {
            round,
            participants,
            codec,
            plan,
            privacy,
            timer,
            phase: None,
            left: BTreeSet::new(),
            withdrawals: Vec::new(),
            rejected: std::mem::take(&mut self.between_rounds),
            collect,
        });
        self.progress()
    }

    /// Plans the round, charges its privacy cost, and builds what the sites receive,
    /// with the context digest bound into the round parameters.
    fn prepare(&mut self, round: u64, participants: &[SiteId]) -> Result<Prepared, FlError> {
        let n = participants.len();
        let (threshold, graph) = plan(&self.config, round, n)?;
        let modulus = Modulus::new(self.config.bits).map_err(|e| FlError::Config {
            key: "bits",
            message: e.to_string(),
        })?;
        let dim = self.layout.len();
        let (spec, plan) = codec_spec(&self.config, dim, round, n, threshold, modulus)?;
        let codec = spec.codec()?;
        let privacy = match &plan {
            Some(plan) => Some(self.charge(round, plan)?),
            None => None,
        };
        let mut training = self.config.training.clone();
        training.proximal_mu = self.config.strategy.proximal_mu();
        training.seed = training.seed.wrapping_add(round);
        let secure = self.config.protocol.is_secure();
        let strategy = self.config.strategy.clone();
        let context = wire::context_digest(&spec, &training, &strategy, secure, &self.global)?;
        let params = RoundParams {
            session: SessionId(self.config.session),
            round: Round(round),
            participants: participants.to_vec(),
            vector_len: codec.encoded_len() as u32,
            modulus,
            threshold,
            graph,
            context,
            mask_prg: self.config.mask_prg,
        };
        let round_config = RoundConfig::new(params.clone())?;
        let start = RoundStart {
            params,
            codec: spec,
            training,
            strategy,
            global: Arc::clone(&self.global),
            secure,
        };
        Ok(Prepared {
            start,
            codec,
            plan,
            privacy,
            round_config,
        })
    }

    /// Tells every connected site to stop.
    pub fn shutdown(&mut self) -> Result<(), FlError> {
        let bytes: Bytes = wire::encode(&ToSite::Shutdown)?.into();
        for &to in &self.connected {
            self.actions.push_back(Action::Send {
                to,
                bytes: bytes.clone(),
            });
        }
        Ok(())
    }

    /// Takes in one event.
    pub fn handle(&mut self, event: Event) -> Result<(), FlError> {
        match event {
            Event::LinkOpened(site) => {
                if self.roster.get(site).is_some() {
                    self.connected.insert(site);
                }
                Ok(())
            }
            Event::LinkClosed(site) => {
                self.connected.remove(&site);
                if let Some(r) = self.receipts.as_mut() {
                    r.due.remove(&site);
                }
                self.leave(site)
            }
            Event::Message { from, bytes } => self.message(from, &bytes),
            Event::Timeout(timer) => match &mut self.running {
                Some(run) if run.timer == timer => {
                    if let Collect::Secure(agg) = &mut run.collect {
                        agg.close_phase()?;
                        self.progress()
                    } else {
                        self.finish()
                    }
                }
                _ => Ok(()),
            },
        }
    }

    /// Ends the running round: decode, apply the strategy, tell the participants,
    /// checkpoint, report.
    fn finish(&mut self) -> Result<(), FlError> {
        let Some(run) = self.running.take() else {
            return Ok(());
        };
        let (sum, contributors) = match run.collect {
            Collect::Secure(agg) => match (agg.status(), agg.result()) {
                (Status::Aborted(reason), _) => {
                    (Err(AbortCause::SecAgg(reason.clone())), Vec::new())
                }
                (_, Some(result)) => (Ok(result.sum.clone()), result.contributors.clone()),
                (status, None) => {
                    return Err(FlError::Config {
                        key: "protocol",
                        message: format!("round {} ended in state {status:?}", run.round),
                    });
                }
            },
            Collect::Plain { sum, received } if !received.is_empty() => {
                (Ok(sum), received.into_iter().collect())
            }
            Collect::Plain { .. } => (Err(AbortCause::NoUpdates), Vec::new()),
        };
        let applied = sum.and_then(|sum| self.apply(&run.codec, run.plan.as_ref(), &sum));
        let (aborted, total_weight, contributors) = match applied {
            Ok(weight) => (None, weight, contributors),
            Err(cause) => (Some(cause), 0, Vec::new()),
        };
        for &site in &run.participants {
            let end = ToSite::RoundEnd {
                round: run.round,
                completed: aborted.is_none(),
                included: contributors.contains(&site),
            };
            let bytes: Bytes = wire::encode(&end)?.into();
            self.actions.push_back(Action::Send { to: site, bytes });
            if let Some(r) = self.receipts.as_mut()
                && self.connected.contains(&site)
            {
                r.due.insert(site);
            }
        }
        self.rounds_ended += 1;
        self.persist()?;
        self.actions.push_back(Action::Report(Box::new(RoundReport {
            round: run.round,
            participants: run.participants,
            contributors,
            aborted,
            total_weight,
            privacy: run.privacy,
            left: run.left.into_iter().collect(),
            withdrawals: run.withdrawals,
            rejected: run.rejected,
        })));
        Ok(())
    }

    /// Decodes the sum (adding central noise when planned) and applies the strategy;
    /// returns the contributors' total weight.
    fn apply(
        &mut self,
        codec: &Codec,
        plan: Option<&DpPlan>,
        sum: &PlainVector,
    ) -> Result<u64, AbortCause> {
        let central = plan.and_then(|p| p.central_sigma);
        let mean = codec
            .decode(sum, central.map(|sigma| (sigma, &mut self.rng)))
            .map_err(AbortCause::Decode)?;
        let mut next = self.global.to_vec();
        self.strategy.apply(&self.layout, &mut next, &mean.mean);
        if next.iter().any(|v| !v.is_finite()) {
            return Err(AbortCause::NonFinite);
        }
        self.global = Arc::new(next);
        Ok(mean.total_weight)
    }

    fn arm(&mut self, after: Duration) -> TimerId {
        self.timers += 1;
        let timer = TimerId(self.timers);
        self.actions.push_back(Action::SetTimer { timer, after });
        timer
    }

    /// Queues the checkpoint (and the ledger beside it) for writing.
    fn persist(&mut self) -> Result<(), FlError> {
        let bytes = CheckpointRef {
            settings: &ResumeSettings::of(&self.config, self.layout.len()),
            next_round: self.next_round,
            rounds_ended: self.rounds_ended,
            global: &self.global,
            strategy_state: &self.strategy.state(),
            ledger: self.ledger.as_ref(),
        }
        .encode()
        .map_err(|problem| FlError::Checkpoint {
            path: self.config.checkpoint.clone(),
            problem,
        })?;
        self.actions.push_back(Action::Write {
            path: self.config.checkpoint.clone(),
            bytes,
        });
        if let Some(ledger) = &self.ledger {
            let json = serde_json::to_vec_pretty(ledger).map_err(|e| FlError::Config {
                key: "dp",
                message: format!("the ledger does not serialise: {e}"),
            })?;
            self.actions.push_back(Action::Write {
                path: self.config.ledger_path(),
                bytes: json,
            });
        }
        Ok(())
    }

    /// Charges the round before anything is released; the write is queued ahead of the
    /// round's first message, so a crash cannot forget a charge.
    fn charge(&mut self, round: u64, plan: &DpPlan) -> Result<LedgerEntry, FlError> {
        let Some(ledger) = self.ledger.as_mut() else {
            return Err(FlError::Config {
                key: "dp",
                message: "a DP round without a ledger".into(),
            });
        };
        let entry = ledger
            .charge_sampled(
                round,
                plan.guaranteed,
                plan.noise,
                plan.rho,
                plan.sampling_rate,
            )?
            .clone();
        self.persist()?;
        Ok(entry)
    }

    /// The round's participants: ⌈fraction · connected⌉ sites (at least 2), chosen by a
    /// shuffle seeded with the session and round, so a restart picks the same ones.
    fn select(&self, round: u64) -> Vec<SiteId> {
        let mut all: Vec<SiteId> = self.connected.iter().copied().collect();
        let fraction = self.config.sample_fraction;
        let k = ((fraction * all.len() as f64).ceil() as usize).clamp(all.len().min(2), all.len());
        if k == all.len() {
            return all;
        }
        let mut rng =
            ChaCha20Rng::from_seed(public_seed(&self.config.session, Purpose::Selection, round));
        for i in (1..all.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            all.swap(i, j);
        }
        let mut chosen = all[..k].to_vec();
        chosen.sort_unstable();
        chosen
    }
}

fn fresh_ledger(config: &FederationConfig) -> Option<Ledger> {
    let m = config.dp.mechanism;
    (m != Mechanism::None).then(|| {
        Ledger::new(
            m.name(),
            config.dp.epsilon,
            config.dp.delta,
            m != Mechanism::Skellam,
        )
    })
}
