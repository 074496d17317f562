//! Deployment: a coordinator and sites as separate processes, from their config files
//! ([`files`]). Everything here is library code; `tessera coordinator` and
//! `tessera site` choose the model, then print the [`Note`]s these functions emit.
//!
//! The model is the caller's: a site brings its [`LocalTrainer`], the coordinator a
//! [`CoordinatorModel`] (its layout, its initial parameters, and how to evaluate and
//! export a global model). The known-update test model is here; the tch detector is in
//! `tessera-exp`.

pub mod files;

use crate::facts::{RosterFacts, open_transcript};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_core::seed::{Purpose, RootSeed, SeedContext};
use tessera_core::{LocalTrainer, ParamLayout};
use tessera_net::pki::load_identity;
use tessera_net::quic::{Credentials, client, server};
use tessera_net::transcript::Durability;
use tessera_secagg::SiteId;

pub use crate::config::session_hex;
use crate::driver::{Coordinator, RefusedPeer, run_site};
use crate::egress::Egress;
use crate::error::FlError;
use crate::known::KnownUpdateTrainer;
use crate::links::{accept_sites, reconnecting_link};
use crate::report::RoundReport;
use crate::site::{SiteIdentity, SiteMachine, SiteSummary};
pub use files::{
    CohortRef, CoordinatorFile, CoordinatorPlan, ModelConfig, SiteFile, TrainingFile, roster_in,
    session_of,
};

/// The coordinator's side of a model.
pub trait CoordinatorModel {
    fn layout(&self) -> &ParamLayout;
    /// The global model before round 1.
    fn initial(&self) -> Vec<f32>;
    /// Metrics of a global model (logged after every completed round), if it evaluates.
    fn evaluate(&mut self, global: &[f32]) -> Result<Option<serde_json::Value>, String>;
    /// Writes the final global model into `dir`; returns the files written.
    fn export(&mut self, global: &[f32], dir: &Path) -> Result<Vec<PathBuf>, String>;
}

/// The known-update test model at the coordinator.
pub struct KnownModel {
    layout: ParamLayout,
}

impl KnownModel {
    pub fn new(dim: usize) -> Result<Self, FlError> {
        Ok(Self {
            layout: KnownUpdateTrainer::layout_for(dim)?,
        })
    }
}

impl CoordinatorModel for KnownModel {
    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    fn initial(&self) -> Vec<f32> {
        vec![0.0; self.layout.len()]
    }

    fn evaluate(&mut self, global: &[f32]) -> Result<Option<serde_json::Value>, String> {
        let mean = global.iter().map(|v| f64::from(*v)).sum::<f64>() / global.len().max(1) as f64;
        Ok(Some(serde_json::json!({ "mean_parameter": mean })))
    }

    fn export(&mut self, global: &[f32], dir: &Path) -> Result<Vec<PathBuf>, String> {
        let path = dir.join("global.f32");
        let bytes: Vec<u8> = global.iter().flat_map(|v| v.to_le_bytes()).collect();
        tessera_core::atomic::write_atomic(&path, &bytes).map_err(|e| e.to_string())?;
        Ok(vec![path])
    }
}

/// Something worth telling the person running a coordinator or site.
#[derive(Debug)]
pub enum Note {
    Listening {
        addr: std::net::SocketAddr,
        sites: usize,
    },
    Plan(crate::Preflight),
    Joined {
        names: Vec<String>,
        expected: usize,
    },
    Refused(RefusedPeer),
    DuplicateIdentity(SiteId),
    Resuming {
        round: u64,
    },
    AlreadyFinished {
        rounds: u64,
        checkpoint: PathBuf,
    },
    Round(Box<RoundReport>),
    Metrics {
        round: u64,
        metrics: serde_json::Value,
    },
    Ledger(PathBuf),
    GlobalMean {
        rounds_ended: u64,
        mean: f64,
    },
    Exported(Vec<PathBuf>),
    RoundLog(PathBuf),
    Connecting {
        addr: std::net::SocketAddr,
    },
}

/// How a federation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub completed: u64,
    pub aborted: u64,
}

/// One line of the coordinator's round log (`rounds.jsonl`).
#[derive(Serialize)]
struct RoundLine<'a> {
    round: u64,
    completed: bool,
    aborted: Option<String>,
    participants: usize,
    contributors: Vec<u32>,
    left: Vec<u32>,
    rejected: usize,
    total_weight: u64,
    bytes_to_coordinator: u64,
    bytes_to_sites: u64,
    seconds: f64,
    /// Seconds per phase (the first includes local training).
    phases: std::collections::BTreeMap<String, f64>,
    epsilon: Option<f64>,
    metrics: &'a Option<serde_json::Value>,
}

fn append_line(path: &Path, line: &impl Serialize) -> Result<(), FlError> {
    let mut text = serde_json::to_string(line).map_err(|e| FlError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    text.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(FlError::io(path))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_data())
        .map_err(FlError::io(path))
}

/// Runs the coordinator until the plan's rounds are done, logging each round to
/// `<output>/rounds.jsonl` and exporting the final model into `<output>`.
pub async fn run_coordinator(
    plan: CoordinatorPlan,
    model: &mut impl CoordinatorModel,
    note: &mut impl FnMut(Note),
) -> Result<Verdict, FlError> {
    let file = &plan.file;
    let identities = Arc::new(plan.roster.identities()?);
    let creds = Credentials::load(&file.pki, "coordinator")?;
    let noise = RootSeed::from_os()
        .map_err(|_| FlError::Randomness)?
        .derive(
            Purpose::CentralNoise,
            SeedContext::session(plan.federation.session),
        );
    let layout = model.layout().clone();
    // Settings no round could satisfy are refused before the port is bound.
    let preflight = crate::planning::preflight(&plan.federation, file.sites, layout.len())?;
    let endpoint = server(plan.listen, &creds, file.keylog)?;
    let events = accept_sites(&endpoint, &plan.roster);
    let mut coordinator = Coordinator::new(
        plan.federation.clone(),
        identities,
        layout,
        model.initial(),
        events,
        noise,
    )?
    .with_receipts(&file.pki.join("coordinator.key"))?;
    if coordinator.rounds_ended() >= file.rounds {
        note(Note::AlreadyFinished {
            rounds: file.rounds,
            checkpoint: file.checkpoint.clone(),
        });
        endpoint.close(0u32.into(), b"finished");
        return Ok(Verdict {
            completed: 0,
            aborted: 0,
        });
    }
    if coordinator.next_round() > 1 {
        note(Note::Resuming {
            round: coordinator.next_round(),
        });
    }
    note(Note::Listening {
        addr: plan.listen,
        sites: file.sites,
    });
    note(Note::Plan(preflight));
    let wait = files::seconds("join_timeout_s", file.join_timeout_s)?;
    wait_for_sites(&mut coordinator, file.sites, wait, note).await;
    let names = coordinator
        .machine()
        .connected()
        .iter()
        .map(|s| {
            plan.roster
                .entries
                .iter()
                .find(|e| e.site == s.0)
                .map_or_else(|| s.to_string(), |e| e.name.clone())
        })
        .collect();
    note(Note::Joined {
        names,
        expected: file.sites,
    });
    std::fs::create_dir_all(&plan.output).map_err(FlError::io(&plan.output))?;
    let log = plan.output.join("rounds.jsonl");
    let verdict = run_rounds(&mut coordinator, file.rounds, model, &log, note).await?;
    note(Note::RoundLog(log));
    if coordinator.ledger().is_some() {
        note(Note::Ledger(plan.federation.ledger_path()));
    }
    let g = coordinator.global().to_vec();
    note(Note::GlobalMean {
        rounds_ended: coordinator.rounds_ended(),
        mean: g.iter().map(|v| f64::from(*v)).sum::<f64>() / g.len().max(1) as f64,
    });
    let written = model
        .export(&g, &plan.output)
        .map_err(|message| FlError::File {
            path: plan.output.clone(),
            message,
        })?;
    note(Note::Exported(written));
    coordinator.shutdown().await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    endpoint.close(0u32.into(), b"done");
    Ok(verdict)
}

/// Waits in short slices, so that refused connections are told as they happen.
async fn wait_for_sites(
    coordinator: &mut Coordinator,
    n: usize,
    wait: Duration,
    note: &mut impl FnMut(Note),
) -> usize {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let connected = coordinator
            .wait_for_sites(n, left.min(Duration::from_millis(500)))
            .await;
        tell_refused(coordinator, note);
        if connected >= n || left.is_zero() {
            return connected;
        }
    }
}

async fn run_rounds(
    coordinator: &mut Coordinator,
    rounds: u64,
    model: &mut impl CoordinatorModel,
    log: &Path,
    note: &mut impl FnMut(Note),
) -> Result<Verdict, FlError> {
    let mut verdict = Verdict {
        completed: 0,
        aborted: 0,
    };
    while coordinator.rounds_ended() < rounds {
        let (up0, down0) = coordinator.traffic().snapshot();
        let start = Instant::now();
        let report = coordinator.run_round().await?;
        let seconds = start.elapsed().as_secs_f64();
        let (up1, down1) = coordinator.traffic().snapshot();
        tell_refused(coordinator, note);
        let metrics = if report.completed() {
            verdict.completed += 1;
            model
                .evaluate(coordinator.global())
                .map_err(|message| FlError::Config {
                    key: "evaluate",
                    message,
                })?
        } else {
            verdict.aborted += 1;
            None
        };
        let ids = |s: &[SiteId]| s.iter().map(|s| s.0).collect::<Vec<_>>();
        let line = RoundLine {
            round: report.round,
            completed: report.completed(),
            aborted: report.aborted.as_ref().map(ToString::to_string),
            participants: report.participants.len(),
            contributors: ids(&report.contributors),
            left: ids(&report.left),
            rejected: report.rejected.len(),
            total_weight: report.total_weight,
            bytes_to_coordinator: up1 - up0,
            bytes_to_sites: down1 - down0,
            seconds,
            phases: coordinator
                .phase_durations()
                .iter()
                .map(|(p, d)| (p.to_string(), d.as_secs_f64()))
                .collect(),
            epsilon: report.privacy.as_ref().map(|p| p.cumulative_epsilon),
            metrics: &metrics,
        };
        append_line(log, &line)?;
        let round = report.round;
        note(Note::Round(Box::new(report)));
        if let Some(metrics) = metrics {
            note(Note::Metrics { round, metrics });
        }
    }
    Ok(verdict)
}

fn tell_refused(coordinator: &mut Coordinator, note: &mut impl FnMut(Note)) {
    for refused in coordinator.take_refused() {
        note(Note::Refused(refused));
    }
    for site in std::mem::take(&mut coordinator.duplicates) {
        note(Note::DuplicateIdentity(site));
    }
}

/// Why a site process ended without doing its part.
#[derive(Debug, thiserror::Error)]
pub enum SiteEnd {
    #[error("could not reach the coordinator at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error(
        "lost the coordinator for good after {started} round(s) ({contributed} contributed): {reason}"
    )]
    CoordinatorLost {
        started: u64,
        contributed: u64,
        reason: String,
    },
    #[error("took part in {started} round(s) but contributed to none; see the problems above")]
    NeverContributed { started: u64 },
}

/// Refuses a roster older than one this site has already seen (a rolled-back roster
/// could carry a replaced key or omit a site), and remembers the newest.
fn check_roster_version(
    cfg: &SiteFile,
    roster: &tessera_net::pki::SignedRoster,
) -> Result<(), FlError> {
    let path = cfg.roster_version_path();
    let seen = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|e| FlError::File {
            path: path.clone(),
            message: format!("not a roster version: {e}"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(FlError::io(&path)(e)),
    };
    if roster.version < seen {
        return Err(FlError::Config {
            key: "pki",
            message: format!(
                "{} is roster version {}, older than version {seen} this site has seen; \
                 refusing a rolled-back roster",
                cfg.pki.join("roster.json").display(),
                roster.version
            ),
        });
    }
    if roster.version > seen {
        tessera_core::atomic::write_atomic(&path, roster.version.to_string().as_bytes())
            .map_err(FlError::io(&path))?;
    }
    Ok(())
}

/// The known-update trainer a site file describes.
pub fn known_trainer(cfg: &SiteFile) -> Result<KnownUpdateTrainer, FlError> {
    let ModelConfig::KnownUpdate { dim } = cfg.model else {
        return Err(FlError::Config {
            key: "model.kind",
            message: "is not \"known-update\"".into(),
        });
    };
    let missing = |key: &'static str| FlError::Config {
        key,
        message: "is required with model kind \"known-update\"".into(),
    };
    let step = cfg.step.ok_or_else(|| missing("step"))?;
    let samples = cfg.samples.ok_or_else(|| missing("samples"))?;
    Ok(KnownUpdateTrainer::new(dim, step, samples)?)
}

/// Runs one site with `trainer` until the coordinator ends the federation. A site that
/// could not do its part returns its reason beside the summary.
pub async fn run_site_process<T: LocalTrainer>(
    cfg: &SiteFile,
    mut trainer: T,
    note: &mut impl FnMut(Note),
) -> Result<(SiteSummary, Option<SiteEnd>), FlError> {
    let addr = files::resolve("coordinator", &cfg.coordinator)?;
    let retry_for = files::seconds("connect_timeout_s", cfg.connect_timeout_s)?;
    let roster = roster_in(&cfg.pki)?;
    check_roster_version(cfg, &roster)?;
    let id = roster.site_of(&cfg.name).ok_or_else(|| FlError::Config {
        key: "name",
        message: format!(
            "{} is not in {}",
            cfg.name,
            cfg.pki.join("roster.json").display()
        ),
    })?;
    let identity = Arc::new(load_identity(
        &cfg.pki.join(format!("{}.identity", cfg.name)),
    )?);
    let creds = Credentials::load(&cfg.pki, &cfg.name)?;
    let transcript = open_transcript(
        &cfg.transcript,
        identity.clone(),
        id,
        &RosterFacts::of_file(&cfg.pki.join("roster.json"), roster.version)?,
        &cfg.policy,
        cfg.keep_payloads,
        Durability::Synced,
    )?;
    let (root, fresh) = match cfg.seed {
        Some(seed) => (RootSeed::from_experiment(seed).site_root(id.0), false),
        None => (RootSeed::from_os().map_err(|_| FlError::Randomness)?, true),
    };
    let who = SiteIdentity {
        id,
        identity,
        roster: Arc::new(roster.identities()?),
    };
    let mut machine =
        SiteMachine::new(who, trainer.layout().clone(), root).with_policy(cfg.policy.clone());
    if fresh {
        // A deployment: every round's secrets from fresh OS randomness.
        machine = machine.with_fresh_randomness(crate::site::os_entropy());
    }
    let endpoint = client(&creds, cfg.keylog)?;
    note(Note::Connecting { addr });
    let (link, failure) = reconnecting_link(endpoint, addr, "coordinator".into(), retry_for);
    let (egress, inbox) = Egress::open(link, transcript);
    let egress = if cfg.keep_payloads {
        egress.keep_payloads(cfg.payloads_dir())
    } else {
        egress
    };
    let files = crate::driver::SiteFiles {
        rounds: cfg.rounds_path(),
        ledger: cfg.ledger_path(),
    };
    let summary = run_site(machine, &mut trainer, egress, inbox, Some(&files)).await?;
    let reason = failure
        .lock()
        .ok()
        .and_then(|f| f.clone())
        .unwrap_or_else(|| "the connection closed".into());
    let end = if summary.rounds_started == 0 && !summary.shut_down {
        Some(SiteEnd::Unreachable {
            addr: cfg.coordinator.clone(),
            reason,
        })
    } else if !summary.shut_down {
        Some(SiteEnd::CoordinatorLost {
            started: summary.rounds_started,
            contributed: summary.rounds_contributed,
            reason,
        })
    } else if summary.rounds_contributed == 0 && summary.rounds_started > 0 {
        Some(SiteEnd::NeverContributed {
            started: summary.rounds_started,
        })
    } else {
        None
    };
    Ok((summary, end))
}
