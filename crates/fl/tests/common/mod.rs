//! A coordinator machine and site machines connected by queues that a test drains by
//! hand: no runtime, no clock; a deadline passes only when a test says so, and a test
//! may tamper with what the coordinator sends (a malicious coordinator).
#![allow(dead_code)]

use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use tessera_core::seed::RootSeed;
use tessera_fl::wire;
use tessera_fl::{
    Action, CoordinatorMachine, Event, FederationConfig, KnownUpdateTrainer, Refusal, RoundReport,
    SiteAction, SiteEvent, SiteIdentity, SiteMachine, SitePolicy, TimerId, memory,
};
use tessera_secagg::SiteId;

pub const DIM: usize = 4;
pub const SESSION: [u8; 16] = [6; 16];

pub fn step(i: u32) -> f32 {
    0.01 * (i as f32 + 1.0)
}

pub fn weight(i: u32) -> u64 {
    10 + u64::from(i)
}

pub fn config() -> FederationConfig {
    FederationConfig::builder(SESSION, "machine-checkpoint.bin")
        .codec(32, 1.0, 100)
        .build()
        .unwrap()
}

/// A coordinator and `n` sites, connected by queues the test drains by hand.
/// Rewrites the bytes the coordinator sends to a site.
pub type Tamper = Box<dyn FnMut(SiteId, &[u8]) -> Vec<u8>>;

pub struct Harness {
    pub coordinator: CoordinatorMachine,
    pub sites: Vec<(SiteMachine, KnownUpdateTrainer)>,
    pub inboxes: Vec<VecDeque<Bytes>>,
    /// Sites whose messages vanish (a site that hangs without closing its link).
    pub black_holes: Vec<u32>,
    pub timer: Option<TimerId>,
    pub writes: BTreeMap<PathBuf, Vec<u8>>,
    /// Every action in order, for tests about ordering.
    pub log: Vec<&'static str>,
    pub reports: Vec<RoundReport>,
    /// A malicious coordinator: rewrites what goes to a site.
    pub tamper: Option<Tamper>,
    /// What each site sent, by message kind, in order.
    pub sent: Vec<(SiteId, &'static str)>,
    pub refusals: Vec<(SiteId, Refusal)>,
    /// Every message the sites sent, encoded.
    pub messages: Vec<(SiteId, Vec<u8>)>,
}

impl Harness {
    pub fn new(
        cfg: FederationConfig,
        n: u32,
        dropouts: &memory::Dropouts,
        checkpoint: Option<&[u8]>,
    ) -> Self {
        Self::with_policy(cfg, n, dropouts, checkpoint, SitePolicy::permissive())
    }

    /// Sites under `policy` (the default one is a deployment's).
    pub fn with_policy(
        cfg: FederationConfig,
        n: u32,
        dropouts: &memory::Dropouts,
        checkpoint: Option<&[u8]>,
        policy: SitePolicy,
    ) -> Self {
        let ids: Vec<SiteId> = (0..n).map(SiteId).collect();
        let root = RootSeed::from_experiment(4);
        let (keys, roster) = memory::identities(&root, SESSION, &ids).unwrap();
        let layout = KnownUpdateTrainer::layout_for(DIM).unwrap();
        let mut coordinator = CoordinatorMachine::new(
            cfg,
            roster.clone(),
            layout.clone(),
            vec![0.0; DIM],
            checkpoint,
            [1; 32],
        )
        .unwrap();
        let sites = ids
            .iter()
            .zip(keys)
            .map(|(&id, identity)| {
                let who = SiteIdentity {
                    id,
                    identity,
                    roster: roster.clone(),
                };
                let machine = SiteMachine::simulated(who, layout.clone(), &root, dropouts)
                    .with_policy(policy.clone());
                let trainer = KnownUpdateTrainer::new(DIM, step(id.0), weight(id.0)).unwrap();
                coordinator.handle(Event::LinkOpened(id)).unwrap();
                (machine, trainer)
            })
            .collect();
        Self {
            coordinator,
            sites,
            inboxes: vec![VecDeque::new(); n as usize],
            black_holes: Vec::new(),
            timer: None,
            writes: BTreeMap::new(),
            log: Vec::new(),
            reports: Vec::new(),
            tamper: None,
            sent: Vec::new(),
            refusals: Vec::new(),
            messages: Vec::new(),
        }
    }

    /// Every site draws each round's secrets from fresh OS randomness.
    pub fn fresh_randomness(mut self) -> Self {
        self.sites = std::mem::take(&mut self.sites)
            .into_iter()
            .map(|(m, t)| (m.with_fresh_randomness(tessera_fl::site::os_entropy()), t))
            .collect();
        self
    }

    /// Delivers messages until nothing moves.
    pub fn settle(&mut self) {
        loop {
            let mut moved = false;
            while let Some(action) = self.coordinator.poll_action() {
                moved = true;
                match action {
                    Action::Send { to, bytes } => {
                        self.log.push("send");
                        let bytes = match self.tamper.as_mut() {
                            Some(t) => t(to, &bytes).into(),
                            None => bytes,
                        };
                        self.inboxes[to.0 as usize].push_back(bytes);
                    }
                    Action::SetTimer { timer, .. } => self.timer = Some(timer),
                    Action::PhaseStarted(_) => self.log.push("phase"),
                    Action::Write { path, bytes } => {
                        self.log.push("write");
                        self.writes.insert(path, bytes);
                    }
                    Action::Report(r) => self.reports.push(*r),
                }
            }
            for i in 0..self.sites.len() {
                while let Some(bytes) = self.inboxes[i].pop_front() {
                    moved = true;
                    self.sites[i].0.handle(SiteEvent::Message(&bytes));
                    self.run_site(i);
                }
            }
            if !moved {
                return;
            }
        }
    }

    pub fn run_site(&mut self, i: usize) {
        let (machine, trainer) = &mut self.sites[i];
        while let Some(action) = machine.poll_action() {
            match action {
                SiteAction::Train(req) => {
                    let result = req.run_any(trainer);
                    machine.handle(SiteEvent::Trained(result));
                }
                SiteAction::Refuse { refusal, .. } => {
                    self.refusals.push((SiteId(i as u32), refusal))
                }
                SiteAction::Answer { .. } | SiteAction::Anchor | SiteAction::Receipt(_) => {}
                SiteAction::Send(msg) => {
                    self.sent.push((SiteId(i as u32), msg.kind()));
                    if self.black_holes.contains(&(i as u32)) {
                        continue;
                    }
                    let bytes = wire::encode(&msg).unwrap();
                    let from = SiteId(i as u32);
                    self.messages.push((from, bytes.clone()));
                    self.coordinator
                        .handle(Event::Message { from, bytes })
                        .unwrap();
                }
                SiteAction::Stop => {}
            }
        }
    }

    /// Runs one round to its report, firing no deadline.
    pub fn round(&mut self) -> RoundReport {
        let before = self.reports.len();
        self.coordinator.start_round().unwrap();
        self.settle();
        assert_eq!(
            self.reports.len(),
            before + 1,
            "the round did not end by itself"
        );
        self.reports.last().unwrap().clone()
    }

    pub fn mean(&self) -> f32 {
        self.coordinator.global()[0]
    }
}
