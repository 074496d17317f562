//! Thin async drivers: they own the clock, the links and the files, and do what the
//! sans-IO machines ask. Simulation and deployment differ only in where the
//! [`LinkEvent`]s come from.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tessera_core::{LocalTrainer, ParamLayout};
use tessera_dp::Ledger;
use tessera_secagg::{Phase, Roster, SiteId};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;

use crate::config::FederationConfig;
use crate::coordinator::{Action, CoordinatorMachine, Event, TimerId};
use crate::egress::{Egress, SiteInbox};
use crate::error::FlError;
use crate::links::{LinkEvent, Traffic};
use crate::report::RoundReport;
use crate::site::{SiteAction, SiteEvent, SiteMachine, SiteSummary};

/// A connection the coordinator refused, kept for its log.
#[derive(Clone, Debug)]
pub struct RefusedPeer {
    pub peer: String,
    pub reason: String,
}

/// A site's current link: its id (a stale close is ignored) and its send queue.
type Link = (u64, mpsc::Sender<Bytes>);

/// The coordinator's driver: a [`CoordinatorMachine`] over a stream of link events.
pub struct Coordinator {
    machine: CoordinatorMachine,
    events: mpsc::Receiver<LinkEvent>,
    links: BTreeMap<SiteId, Link>,
    deadline: Option<(Instant, TimerId)>,
    traffic: Arc<Traffic>,
    refused: Vec<RefusedPeer>,
    /// Sites that opened a second link while the first was still open.
    pub duplicates: Vec<SiteId>,
    /// When each phase of the running round started.
    phase_starts: Vec<(Phase, Instant)>,
    /// How long each phase of the last round took.
    phases: Vec<(Phase, Duration)>,
    /// The coordinator's own work in the last round (its time not spent waiting).
    busy: Duration,
}

impl Coordinator {
    /// Resumes from the checkpoint file when it exists, else starts from `initial`.
    pub fn new(
        config: FederationConfig,
        roster: Arc<Roster>,
        layout: ParamLayout,
        initial: Vec<f32>,
        events: mpsc::Receiver<LinkEvent>,
        noise_seed: [u8; 32],
    ) -> Result<Self, FlError> {
        let checkpoint = read_if_present(&config.checkpoint)?;
        let marker = read_if_present(&config.round_marker_path())?;
        let machine = CoordinatorMachine::new(
            config,
            roster,
            layout,
            initial,
            checkpoint.as_deref(),
            noise_seed,
        )?
        .with_round_marker(marker.as_deref())?;
        Ok(Self {
            machine,
            events,
            links: BTreeMap::new(),
            deadline: None,
            traffic: Arc::new(Traffic::default()),
            refused: Vec::new(),
            duplicates: Vec::new(),
            phase_starts: Vec::new(),
            phases: Vec::new(),
            busy: Duration::ZERO,
        })
    }

    /// Signs receipts of the sites' transcript heads with the coordinator's TLS key
    /// (`key_pem`), kept in [`FederationConfig::receipts_path`].
    pub fn with_receipts(mut self, key_pem: &Path) -> Result<Self, FlError> {
        let signer = Arc::new(tessera_net::receipt::ReceiptSigner::load(key_pem)?);
        let path = self.machine.config().receipts_path();
        let existing = read_if_present(&path)?;
        self.machine = self
            .machine
            .with_receipts(signer, path, existing.as_deref())?;
        Ok(self)
    }

    pub fn machine(&self) -> &CoordinatorMachine {
        &self.machine
    }

    pub fn global(&self) -> &[f32] {
        self.machine.global()
    }

    pub fn next_round(&self) -> u64 {
        self.machine.next_round()
    }

    /// Rounds that ended, completed or aborted.
    pub fn rounds_ended(&self) -> u64 {
        self.machine.rounds_ended()
    }

    pub fn ledger(&self) -> Option<&Ledger> {
        self.machine.ledger()
    }

    /// How long each phase of the last round took (the first includes local training).
    pub fn phase_durations(&self) -> &[(Phase, Duration)] {
        &self.phases
    }

    /// The coordinator's own work in the last round: the round's wall time less the
    /// time it spent waiting for messages.
    pub fn last_round_busy(&self) -> Duration {
        self.busy
    }

    pub fn traffic(&self) -> &Arc<Traffic> {
        &self.traffic
    }

    /// Connections refused since the last call (not on the roster, failed handshake).
    pub fn take_refused(&mut self) -> Vec<RefusedPeer> {
        std::mem::take(&mut self.refused)
    }

    /// Waits until `n` sites are connected or `within` has passed; returns how many are.
    pub async fn wait_for_sites(&mut self, n: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        while self.machine.connected().len() < n {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    if self.on_link_event(event).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        self.machine.connected().len()
    }

    /// Runs the next round with a selection of the connected sites. With fewer than two
    /// connected it first waits, up to the training deadline, for more to join.
    pub async fn run_round(&mut self) -> Result<RoundReport, FlError> {
        while let Ok(event) = self.events.try_recv() {
            self.on_link_event(event)?;
        }
        if self.machine.connected().len() < 2 {
            let wait = self.machine.config().training_timeout;
            self.wait_for_sites(2, wait).await;
        }
        let start = Instant::now();
        let mut waiting = Duration::ZERO;
        self.machine.start_round()?;
        loop {
            if let Some(report) = self.carry_out().await? {
                self.deadline = None;
                self.busy = start.elapsed().saturating_sub(waiting);
                return Ok(report);
            }
            let waited = Instant::now();
            let event = match self.deadline {
                Some((at, timer)) => match tokio::time::timeout_at(at, self.events.recv()).await {
                    Ok(event) => event,
                    Err(_) => {
                        waiting += waited.elapsed();
                        self.deadline = None;
                        self.machine.handle(Event::Timeout(timer))?;
                        continue;
                    }
                },
                None => self.events.recv().await,
            };
            waiting += waited.elapsed();
            match event {
                Some(event) => {
                    self.on_link_event(event)?;
                    // Whatever else has arrived is taken in before acting, so that the
                    // machine can answer it together (one receipts write for many heads).
                    while let Ok(event) = self.events.try_recv() {
                        self.on_link_event(event)?;
                    }
                }
                // Every link source is gone: nothing more can arrive.
                None => match self.deadline.take() {
                    Some((at, timer)) => {
                        tokio::time::sleep_until(at).await;
                        self.machine.handle(Event::Timeout(timer))?;
                    }
                    None => return Err(FlError::Disconnected),
                },
            }
        }
    }

    /// Tells every connected site to stop, and waits briefly for the messages to leave.
    /// With receipts, it first waits (up to the phase deadline) for the transcript heads
    /// of the last round, so that it too is anchored.
    pub async fn shutdown(&mut self) -> Result<(), FlError> {
        let deadline = Instant::now() + self.machine.config().phase_timeout;
        while self.machine.heads_due() > 0 {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    self.on_link_event(event)?;
                    self.carry_out().await?;
                }
                _ => break,
            }
        }
        self.machine.shutdown()?;
        self.carry_out().await?;
        self.links.clear();
        Ok(())
    }

    fn on_link_event(&mut self, event: LinkEvent) -> Result<(), FlError> {
        match event {
            LinkEvent::Opened {
                site,
                link,
                to_site,
            } => {
                if let Some((_, old)) = self.links.get(&site)
                    && !old.is_closed()
                {
                    self.duplicates.push(site);
                }
                self.links.insert(site, (link, to_site));
                self.machine.handle(Event::LinkOpened(site))
            }
            LinkEvent::Closed { site, link } => {
                if self.links.get(&site).is_some_and(|(l, _)| *l == link) {
                    self.links.remove(&site);
                    self.machine.handle(Event::LinkClosed(site))?;
                }
                Ok(())
            }
            LinkEvent::Message { site, bytes } => {
                self.traffic
                    .to_coordinator
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                self.machine.handle(Event::Message { from: site, bytes })
            }
            LinkEvent::Refused { peer, reason } => {
                self.refused.push(RefusedPeer { peer, reason });
                Ok(())
            }
        }
    }

    /// Does what the machine asks; returns a round's report once it is out.
    async fn carry_out(&mut self) -> Result<Option<RoundReport>, FlError> {
        let mut report = None;
        while let Some(action) = self.machine.poll_action() {
            match action {
                Action::Send { to, bytes } => self.send(to, bytes)?,
                Action::SetTimer { timer, after } => {
                    self.deadline = Some((Instant::now() + after, timer));
                }
                Action::Write { path, bytes } => write(&path, &bytes)?,
                Action::PhaseStarted(phase) => self.phase_starts.push((phase, Instant::now())),
                Action::Report(r) => {
                    self.phases = phase_durations(std::mem::take(&mut self.phase_starts));
                    report = Some(*r);
                }
            }
        }
        Ok(report)
    }

    /// Queues bytes for a site without waiting: a site whose queue is full has stopped
    /// reading and is dropped, so one stalled site cannot hold up the others.
    fn send(&mut self, to: SiteId, bytes: Bytes) -> Result<(), FlError> {
        let Some((_, tx)) = self.links.get(&to) else {
            return Ok(()); // gone: the machine already knows
        };
        let len = bytes.len() as u64;
        match tx.try_send(bytes) {
            Ok(()) => {
                self.traffic.to_sites.fetch_add(len, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {
                self.links.remove(&to);
                self.machine.handle(Event::LinkClosed(to))
            }
        }
    }
}

/// Durations between consecutive phase starts, the last one until now.
fn phase_durations(starts: Vec<(Phase, Instant)>) -> Vec<(Phase, Duration)> {
    let end = Instant::now();
    let ends = starts
        .iter()
        .skip(1)
        .map(|(_, t)| *t)
        .chain(std::iter::once(end));
    starts
        .iter()
        .zip(ends)
        .map(|((phase, start), stop)| (*phase, stop.saturating_duration_since(*start)))
        .collect()
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), FlError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(FlError::io(dir))?;
    }
    tessera_core::atomic::write_atomic(path, bytes).map_err(FlError::io(path))
}

/// Rounds a site has answered, per session (hex), kept in a small JSON file so that a
/// restarted site refuses them too.
pub fn load_answered(path: &Path) -> Result<BTreeMap<[u8; 16], u64>, FlError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(FlError::io(path)(e)),
    };
    let bad = |message: String| FlError::File {
        path: path.to_owned(),
        message,
    };
    let raw: BTreeMap<String, u64> =
        serde_json::from_str(&text).map_err(|e| bad(format!("unreadable: {e}")))?;
    raw.into_iter()
        .map(|(hex, round)| match crate::config::parse_session(&hex) {
            Some(session) => Ok((session, round)),
            None => Err(bad(format!("\"{hex}\" is not a session id"))),
        })
        .collect()
}

/// A file's bytes, or None when it does not exist.
fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, FlError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FlError::io(path)(e)),
    }
}

/// A site's persisted privacy ledger, if there is one.
fn load_ledger(path: &Path) -> Result<Option<Ledger>, FlError> {
    read_if_present(path)?
        .map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|e| FlError::File {
                path: path.to_owned(),
                message: format!("unreadable ledger: {e}"),
            })
        })
        .transpose()
}

fn store_answered(path: &Path, answered: &BTreeMap<[u8; 16], u64>) -> Result<(), FlError> {
    let raw: BTreeMap<String, u64> = answered
        .iter()
        .map(|(s, r)| (crate::config::session_hex(s), *r))
        .collect();
    let text = serde_json::to_vec_pretty(&raw).map_err(|e| FlError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    write(path, &text)
}

/// Where a site keeps what must survive a restart: the rounds it answered and its
/// privacy ledger.
#[derive(Clone, Debug)]
pub struct SiteFiles {
    pub rounds: std::path::PathBuf,
    pub ledger: std::path::PathBuf,
}

/// Runs a site until the coordinator says `Shutdown` or its link is gone for good.
/// With `files`, every round the site takes part in (and its ledger, when it keeps one)
/// is persisted there, file and directory synced, before anything is sent for it.
pub async fn run_site<T: LocalTrainer>(
    machine: SiteMachine,
    trainer: &mut T,
    mut egress: Egress,
    mut inbox: SiteInbox,
    files: Option<&SiteFiles>,
) -> Result<SiteSummary, FlError> {
    let mut rounds = match files {
        Some(f) => load_answered(&f.rounds)?,
        None => BTreeMap::new(),
    };
    let mut machine = if rounds.is_empty() {
        machine
    } else {
        machine.with_answered(rounds.clone())
    };
    if let Some(f) = files
        && let Some(saved) = load_ledger(&f.ledger)?
    {
        machine = machine
            .with_saved_ledger(saved)
            .map_err(|r| FlError::Config {
                key: r.key,
                message: format!("{}: {}", f.ledger.display(), r.reason),
            })?;
    }
    let mut busy = Duration::ZERO;
    let summary = |machine: &SiteMachine, busy: Duration| SiteSummary {
        busy,
        ..machine.summary().clone()
    };
    loop {
        let working = Instant::now();
        while let Some(action) = machine.poll_action() {
            match action {
                SiteAction::Train(request) => {
                    // Training is CPU-bound and synchronous: let the runtime move other
                    // tasks away meanwhile.
                    let result = tokio::task::block_in_place(|| request.run_any(trainer));
                    machine.handle(SiteEvent::Trained(result));
                }
                SiteAction::Send(msg) => match egress.send(&msg).await {
                    Ok(()) => {}
                    // The link is gone; the inbox will say so next.
                    Err(FlError::Disconnected) => {}
                    Err(e) => return Err(e),
                },
                SiteAction::Answer {
                    session,
                    round,
                    ledger,
                    facts,
                } => {
                    rounds.insert(session, round);
                    if let Some(f) = files {
                        if let Some(ledger) = ledger {
                            let json =
                                serde_json::to_vec_pretty(&ledger).map_err(|e| FlError::File {
                                    path: f.ledger.clone(),
                                    message: e.to_string(),
                                })?;
                            write(&f.ledger, &json)?;
                        }
                        store_answered(&f.rounds, &rounds)?;
                    }
                    egress.record_round(*facts)?;
                }
                SiteAction::Refuse {
                    session,
                    round,
                    refusal,
                } => {
                    egress.record_refusal(&session, round, &refusal)?;
                }
                SiteAction::Anchor => match egress.send_head().await {
                    Ok(()) | Err(FlError::Disconnected) => {}
                    Err(e) => return Err(e),
                },
                SiteAction::Receipt(receipt) => egress.record_receipt(receipt)?,
                SiteAction::Stop => return Ok(summary(&machine, busy + working.elapsed())),
            }
        }
        busy += working.elapsed();
        match inbox.recv().await {
            Some(bytes) => {
                let working = Instant::now();
                machine.handle(SiteEvent::Message(&bytes));
                busy += working.elapsed();
            }
            None => return Ok(summary(&machine, busy)),
        }
    }
}
