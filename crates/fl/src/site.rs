//! A site as a sans-IO state machine: messages from the coordinator and finished
//! training go in ([`SiteEvent`]); messages to send, training to run and the order to
//! stop come out ([`SiteAction`]). The driver ([`crate::driver::run_site`]) runs the
//! trainer and hands every outgoing message to the site's [`crate::Egress`].
//!
//! Randomness is derived per round and purpose from the site's root seed (one stream
//! for secure aggregation, one for rounding and noise), so the encoded update does not
//! depend on what earlier rounds consumed: plain and secure runs encode identically.

use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use tessera_core::seed::{Purpose, RootSeed, SeedContext};
use tessera_core::{LayoutError, LocalUpdate, ParamLayout};
use tessera_dp::{DpError, Ledger};
use tessera_secagg::{
    ConfigError, IdentityKeyPair, MessageError, Phase, Roster, RoundConfig, Site, SiteError, SiteId,
};
use thiserror::Error;

use crate::facts::round_facts;
use crate::local::{PatientSampling, TrainRequest, encode_update};
use crate::policy::{Refusal, SitePolicy};
use crate::wire::{self, RoundStart, ToCoordinator, ToSite, WireError, WithdrawReason};
use tessera_net::receipt::Receipt;
use tessera_net::transcript::RoundFacts;

/// Where a site draws fresh randomness (32 bytes a call; `None` when none is to be had).
pub type EntropySource = Box<dyn FnMut() -> Option<[u8; 32]> + Send>;

/// Fresh randomness from the operating system.
pub fn os_entropy() -> EntropySource {
    Box::new(|| {
        RootSeed::from_os()
            .ok()
            .map(|r| r.derive(Purpose::SiteRoot, SeedContext::session([0; 16])))
    })
}

/// Who a site is: its id, identity key and the roster it checks peers against.
#[derive(Clone)]
pub struct SiteIdentity {
    pub id: SiteId,
    pub identity: Arc<IdentityKeyPair>,
    pub roster: Arc<Roster>,
}

/// What the site has to tell the machine.
pub enum SiteEvent<'a> {
    Message(&'a [u8]),
    /// Training for the round of the last [`TrainRequest`] ended.
    Trained(Result<LocalUpdate, String>),
}

/// What the driver must do.
#[derive(Debug)]
pub enum SiteAction {
    /// Persist that this site answers `round` of `session`, and its ledger with the
    /// round charged (before anything is sent), so that a restarted site refuses the
    /// round too and forgets no charge.
    Answer {
        session: [u8; 16],
        round: u64,
        ledger: Option<Ledger>,
        /// What the transcript records about the round before anything is sent.
        facts: Box<RoundFacts>,
    },
    /// Record the refusal in the transcript; nothing is sent for the round.
    Refuse {
        session: [u8; 16],
        round: u64,
        refusal: Refusal,
    },
    /// The round is over: send the transcript's head for the coordinator's receipt.
    Anchor,
    /// Store the coordinator's receipt in the transcript.
    Receipt(Receipt),
    Train(TrainRequest),
    /// Send through the egress (which records it in the transcript first).
    Send(ToCoordinator),
    /// The coordinator said the federation is over.
    Stop,
}

/// Why a site could not do what a round asked.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SiteFailure {
    #[error("{0}")]
    Wire(WireError),
    #[error("the global model does not fit this site's model: {0}")]
    Model(LayoutError),
    #[error("local training failed: {0}")]
    Training(String),
    #[error("encoding the update: {0}")]
    Encoding(DpError),
    #[error("round parameters: {0}")]
    Params(ConfigError),
    #[error("secure aggregation: {0}")]
    Protocol(SiteError),
    #[error("{0}")]
    Refused(Refusal),
    #[error("transcript: {0}")]
    Transcript(String),
}

/// A failure, with the round it happened in.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteProblem {
    pub round: Option<u64>,
    pub failure: SiteFailure,
}

/// What a site did over its lifetime.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SiteSummary {
    /// Rounds the coordinator started with this site.
    pub rounds_started: u64,
    /// Rounds whose new model includes this site's update.
    pub rounds_contributed: u64,
    /// Rounds that completed (with or without this site).
    pub rounds_completed: u64,
    /// Rounds this site's policy refused.
    pub rounds_refused: u64,
    pub problems: Vec<SiteProblem>,
    /// Whether the coordinator ended the federation (rather than going away).
    pub shut_down: bool,
    /// Time spent on the site's own work (training, encoding, the protocol, sending):
    /// what the site would need on a machine of its own. Set by the driver.
    pub busy: std::time::Duration,
}

enum State {
    Idle,
    Training(Box<RoundStart>),
    Secure {
        round: u64,
        site: Box<Site>,
        rng: Box<ChaCha20Rng>,
    },
    /// Sent its plaintext update, withdrew or failed: waits for the round's end.
    Waiting,
    Stopped,
}

/// One site, without I/O.
pub struct SiteMachine {
    who: SiteIdentity,
    layout: ParamLayout,
    root: RootSeed,
    /// Fault injection for tests and simulations: in each listed round, the site
    /// withdraws from the given phase on, as if its connection had dropped.
    silent: BTreeMap<u64, Phase>,
    policy: SitePolicy,
    /// The site's own privacy ledger (with `policy.max_epsilon`).
    ledger: Option<Ledger>,
    /// Fresh randomness for each round's secrets (deployments).
    fresh: Option<EntropySource>,
    /// The last round answered, per session.
    answered: BTreeMap<[u8; 16], u64>,
    state: State,
    summary: SiteSummary,
    actions: VecDeque<SiteAction>,
}

impl SiteMachine {
    /// A site under the default (strict) [`SitePolicy`].
    pub fn new(who: SiteIdentity, layout: ParamLayout, root: RootSeed) -> Self {
        Self {
            who,
            layout,
            root,
            silent: BTreeMap::new(),
            policy: SitePolicy::default(),
            ledger: None,
            fresh: None,
            answered: BTreeMap::new(),
            state: State::Idle,
            summary: SiteSummary::default(),
            actions: VecDeque::new(),
        }
    }

    /// A simulated site: its root derived from an experiment's root, its dropouts taken
    /// from the schedule.
    pub fn simulated(
        who: SiteIdentity,
        layout: ParamLayout,
        experiment: &RootSeed,
        dropouts: &crate::memory::Dropouts,
    ) -> Self {
        let id = who.id;
        Self::new(who, layout, experiment.site_root(id.0))
            .with_policy(SitePolicy::permissive())
            .with_dropouts(dropouts.get(&id).cloned().unwrap_or_default())
    }

    pub fn with_policy(mut self, policy: SitePolicy) -> Self {
        self.ledger = policy.ledger();
        self.policy = policy;
        self
    }

    /// Rounds already answered (per session), e.g. as persisted before a restart.
    pub fn with_answered(mut self, answered: BTreeMap<[u8; 16], u64>) -> Self {
        self.answered = answered;
        self
    }

    /// Draws every round's secrets (keys, rounding, noise) from `source` instead of the
    /// site's root seed, so that no long-lived secret regenerates a past round's: a
    /// deployment's choice. `source` returning `None` makes the site leave the round.
    pub fn with_fresh_randomness(mut self, source: EntropySource) -> Self {
        self.fresh = Some(source);
        self
    }

    /// The root of this round's randomness: fresh, or the site's own.
    fn round_root(&mut self) -> Option<zeroize::Zeroizing<RootSeed>> {
        match self.fresh.as_mut() {
            Some(source) => source().map(|b| zeroize::Zeroizing::new(RootSeed::from_bytes(b))),
            None => Some(zeroize::Zeroizing::new(self.root)),
        }
    }

    /// The secret seed of this round's patient sample (fresh at a deployed site).
    fn sampling_seed(&mut self, start: &RoundStart) -> Option<zeroize::Zeroizing<[u8; 32]>> {
        let ctx = SeedContext::session(start.params.session.0)
            .site(self.who.id.0)
            .round(start.params.round.0);
        let root = self.round_root()?;
        Some(zeroize::Zeroizing::new(root.derive(Purpose::Sampling, ctx)))
    }

    /// Simulated dropouts: per round, the phase from which the site withdraws.
    pub fn with_dropouts(mut self, silent: BTreeMap<u64, Phase>) -> Self {
        self.silent = silent;
        self
    }

    pub fn id(&self) -> SiteId {
        self.who.id
    }

    pub fn summary(&self) -> &SiteSummary {
        &self.summary
    }

    pub fn is_stopped(&self) -> bool {
        matches!(self.state, State::Stopped)
    }

    pub fn poll_action(&mut self) -> Option<SiteAction> {
        self.actions.pop_front()
    }

    pub fn handle(&mut self, event: SiteEvent<'_>) {
        match event {
            SiteEvent::Message(bytes) => match wire::decode::<ToSite>(bytes) {
                Ok(msg) => self.message(msg),
                Err(e) => self.problem(None, SiteFailure::Wire(e)),
            },
            SiteEvent::Trained(result) => self.trained(result),
        }
    }

    fn problem(&mut self, round: Option<u64>, failure: SiteFailure) {
        self.summary.problems.push(SiteProblem { round, failure });
    }

    /// Leaves `round` after a failure: recorded, and the coordinator is told at once.
    fn abandon(&mut self, round: u64, failure: SiteFailure) {
        let reason = match &failure {
            SiteFailure::Model(LayoutError::Length { got, expected }) => {
                WithdrawReason::ModelShape {
                    got: *got,
                    expected: *expected,
                }
            }
            SiteFailure::Encoding(e) => WithdrawReason::Encoding(e.to_string()),
            SiteFailure::Training(_) | SiteFailure::Model(_) => WithdrawReason::Training,
            SiteFailure::Params(_) => WithdrawReason::Params,
            SiteFailure::Protocol(_)
            | SiteFailure::Wire(_)
            | SiteFailure::Refused(_)
            | SiteFailure::Transcript(_) => WithdrawReason::Protocol,
        };
        self.problem(Some(round), failure);
        self.state = State::Waiting;
        self.actions
            .push_back(SiteAction::Send(ToCoordinator::Withdraw { round, reason }));
    }

    /// Sends `msg` unless a simulated dropout starts at `phase`.
    fn send(&mut self, round: u64, phase: Phase, msg: ToCoordinator) -> bool {
        if self.silent.get(&round).is_some_and(|p| phase >= *p) {
            self.state = State::Waiting;
            let reason = WithdrawReason::Dropout;
            self.actions
                .push_back(SiteAction::Send(ToCoordinator::Withdraw { round, reason }));
            return false;
        }
        self.actions.push_back(SiteAction::Send(msg));
        true
    }

    fn message(&mut self, msg: ToSite) {
        match msg {
            ToSite::RoundStart(start) => {
                self.summary.rounds_started += 1;
                let round = start.params.round.0;
                let session = start.params.session.0;
                if let Err(refusal) = self.admit(&start).and_then(|()| self.charge(&start)) {
                    self.summary.rounds_refused += 1;
                    self.problem(Some(round), SiteFailure::Refused(refusal.clone()));
                    self.actions.push_back(SiteAction::Refuse {
                        session,
                        round,
                        refusal,
                    });
                    self.state = State::Idle;
                    return;
                }
                let charge = self.ledger.as_ref().and_then(|l| {
                    let entry = l.entries.last()?;
                    Some((l.mechanism.as_str(), entry, l.delta))
                });
                let facts = match round_facts(&start, charge) {
                    Ok(facts) => Box::new(facts),
                    Err(e) => return self.abandon(round, SiteFailure::Transcript(e.to_string())),
                };
                self.answered.insert(session, round);
                let ledger = self.ledger.clone();
                self.actions.push_back(SiteAction::Answer {
                    session,
                    round,
                    ledger,
                    facts,
                });
                if let Err(e) = self.layout.check(&start.global) {
                    return self.abandon(round, SiteFailure::Model(e));
                }
                let patient_sampling = match start.codec.patient_sampling() {
                    None => None,
                    Some(rate) => match self.sampling_seed(&start) {
                        Some(seed) => Some(PatientSampling { rate, seed }),
                        None => {
                            let e = "the operating system gave no randomness".to_string();
                            return self.abandon(round, SiteFailure::Training(e));
                        }
                    },
                };
                self.actions.push_back(SiteAction::Train(TrainRequest {
                    round,
                    global: Arc::clone(&start.global),
                    strategy: start.strategy.clone(),
                    config: start.training.clone(),
                    private: start.is_private(),
                    patient_sampling,
                }));
                self.state = State::Training(start);
            }
            ToSite::SecAgg(env) => {
                let State::Secure { round, site, rng } = &mut self.state else {
                    return;
                };
                let round = *round;
                match site.handle(*env, rng.as_mut()) {
                    Ok(reply) => {
                        let phase = reply.phase();
                        self.send(round, phase, ToCoordinator::SecAgg(reply));
                    }
                    // A dropped message leaves the site's state unchanged.
                    Err(SiteError::Message(e)) => self.message_refused(round, e),
                    Err(e) => self.abandon(round, SiteFailure::Protocol(e)),
                }
            }
            ToSite::RoundEnd {
                completed,
                included,
                ..
            } => {
                self.summary.rounds_completed += u64::from(completed);
                self.summary.rounds_contributed += u64::from(included && completed);
                self.state = State::Idle;
                self.actions.push_back(SiteAction::Anchor);
            }
            ToSite::Receipt(receipt) => self.actions.push_back(SiteAction::Receipt(receipt)),
            ToSite::Shutdown => {
                self.summary.shut_down = true;
                self.state = State::Stopped;
                self.actions.push_back(SiteAction::Stop);
            }
        }
    }

    /// Charges the round to the site's own privacy ledger, when it keeps one; a round
    /// past its budget is refused before anything is sent.
    fn charge(&mut self, start: &RoundStart) -> Result<(), Refusal> {
        let Some(ledger) = self.ledger.as_mut() else {
            return Ok(());
        };
        let (noise, n, rho, rate) = self.policy.round_rho(start)?;
        ledger
            .charge_sampled(start.params.round.0, n, noise, rho, rate)
            .map(|_| ())
            .map_err(|e| Refusal {
                key: "max_epsilon",
                reason: e.to_string(),
            })
    }

    /// The site's privacy ledger (with `policy.max_epsilon`).
    pub fn ledger(&self) -> Option<&Ledger> {
        self.ledger.as_ref()
    }

    /// Restores the ledger persisted before a restart. What was spent stays spent: a
    /// saved ledger is refused when the policy now keeps none, or keeps one with another
    /// mechanism or δ (the key named). A changed `max_epsilon` is the site's own choice
    /// and applies from now on, against everything already spent.
    pub fn with_saved_ledger(mut self, saved: Ledger) -> Result<Self, Refusal> {
        let Some(current) = self.ledger.as_ref() else {
            return Err(Refusal {
                key: "max_epsilon",
                reason: format!(
                    "a privacy ledger from an earlier run has spent ε = {:.4}, but the policy keeps no ledger now",
                    saved.spent()
                ),
            });
        };
        if saved.mechanism != current.mechanism {
            return Err(Refusal {
                key: "require_mechanism",
                reason: format!(
                    "the saved ledger accounts {}, the policy now requires {}",
                    saved.mechanism, current.mechanism
                ),
            });
        }
        if saved.delta != current.delta {
            return Err(Refusal {
                key: "delta",
                reason: format!(
                    "the saved ledger is at δ = {}, the policy now says {}",
                    saved.delta, current.delta
                ),
            });
        }
        let target_epsilon = current.target_epsilon;
        self.ledger = Some(Ledger {
            target_epsilon,
            ..saved
        });
        Ok(self)
    }

    /// The site's policy, and the context digest the parameters carry.
    fn admit(&self, start: &RoundStart) -> Result<(), Refusal> {
        let answered = self.answered.get(&start.params.session.0).copied();
        self.policy.check(start, answered)?;
        if start.params.participants.len() > 1 << 20 {
            return Err(Refusal {
                key: "params",
                reason: format!("{} participants", start.params.participants.len()),
            });
        }
        if start.codec.dim() != start.global.len() {
            return Err(Refusal {
                key: "codec",
                reason: format!(
                    "the codec is for {} values but the model has {}",
                    start.codec.dim(),
                    start.global.len()
                ),
            });
        }
        match start.context_matches() {
            Ok(true) => Ok(()),
            Ok(false) => Err(Refusal {
                key: "context",
                reason: "the round's parameters carry another context than the codec, model, \
                         training and strategy this site received (split views?)"
                    .into(),
            }),
            Err(e) => Err(Refusal {
                key: "context",
                reason: e.to_string(),
            }),
        }
    }

    fn message_refused(&mut self, round: u64, e: MessageError) {
        self.problem(Some(round), SiteFailure::Protocol(SiteError::Message(e)));
    }

    fn trained(&mut self, result: Result<LocalUpdate, String>) {
        let State::Training(start) = std::mem::replace(&mut self.state, State::Waiting) else {
            return; // the round ended while training ran
        };
        let round = start.params.round.0;
        let update = match result {
            Ok(u) => u,
            Err(e) => return self.abandon(round, SiteFailure::Training(e)),
        };
        if let Err(e) = self.layout.check(&update.parameters) {
            return self.abandon(round, SiteFailure::Model(e));
        }
        if update.parameters.iter().any(|v| !v.is_finite()) {
            let e = "the trained model holds non-finite values".to_string();
            return self.abandon(round, SiteFailure::Training(e));
        }
        let ctx = SeedContext::session(start.params.session.0)
            .site(self.who.id.0)
            .round(round);
        let Some(root) = self.round_root() else {
            let e = "the operating system gave no randomness".to_string();
            return self.abandon(round, SiteFailure::Training(e));
        };
        let mut encoding = ChaCha20Rng::from_seed(root.derive(Purpose::Encoding, ctx));
        let input = match encode_update(&start, &self.layout, update, &mut encoding) {
            Ok(v) => v,
            Err(e) => return self.abandon(round, e),
        };
        if !start.secure {
            self.send(
                round,
                Phase::AdvertiseKeys,
                ToCoordinator::Plain {
                    round,
                    update: input,
                },
            );
            return;
        }
        let config = match RoundConfig::new(start.params.clone()) {
            Ok(c) => c,
            Err(e) => return self.abandon(round, SiteFailure::Params(e)),
        };
        let mut rng = ChaCha20Rng::from_seed(root.derive(Purpose::SecAgg, ctx));
        drop(root);
        let who = &self.who;
        match Site::new(
            config,
            who.id,
            who.identity.clone(),
            who.roster.clone(),
            input,
            &mut rng,
        ) {
            Ok((site, advert)) => {
                if self.send(round, Phase::AdvertiseKeys, ToCoordinator::SecAgg(advert)) {
                    self.state = State::Secure {
                        round,
                        site: Box::new(site),
                        rng: Box::new(rng),
                    };
                }
            }
            Err(e) => self.abandon(round, SiteFailure::Protocol(e)),
        }
    }
}
