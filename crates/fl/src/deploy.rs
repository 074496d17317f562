//! Deployment: a coordinator and a site as separate processes, from their config files
//! (documented, key by key, in `examples/coordinator.toml` and `examples/site.toml`).
//! Everything here is library code; `tessera coordinator` and `tessera site` only parse
//! arguments and print the [`Note`]s these functions emit.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tessera_core::seed::RootSeed;
use tessera_core::{LocalTrainingConfig, Strategy};
use tessera_dp::DpConfig;
use tessera_net::pki::{SignedRoster, load_identity};
use tessera_net::quic::{Credentials, client, server};
use tessera_net::transcript::TranscriptWriter;
use tessera_secagg::SiteId;

use crate::config::{FederationConfig, Protocol};
use crate::driver::{Coordinator, RefusedPeer, run_site};
use crate::egress::Egress;
use crate::error::FlError;
use crate::known::KnownUpdateTrainer;
use crate::links::{accept_sites, reconnecting_link};
use crate::report::RoundReport;
use crate::site::{SiteIdentity, SiteMachine, SiteSummary};

/// The model being federated. Deployment federates the deterministic known-update
/// model; the tch detector is federated by the experiment runner.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
pub enum ModelConfig {
    KnownUpdate { dim: usize },
}

/// The coordinator's config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorFile {
    /// Address to listen on (`host:port`; a hostname is resolved).
    pub listen: String,
    pub pki: PathBuf,
    /// Sites to wait for before the first round.
    pub sites: usize,
    pub join_timeout_s: f64,
    pub rounds: u64,
    pub checkpoint: PathBuf,
    #[serde(default)]
    pub keylog: bool,
    pub model: ModelConfig,
    pub strategy: Strategy,
    pub protocol: Protocol,
    pub dropout_rate: f64,
    pub corruption_rate: f64,
    pub bits: u8,
    pub clip: f32,
    pub max_weight: u64,
    /// Fraction of the sites selected each round (default: all).
    #[serde(default = "all_sites")]
    pub sample_fraction: f64,
    pub training_timeout_s: f64,
    pub phase_timeout_s: f64,
    /// Differential privacy (`[dp]`, default none).
    #[serde(default)]
    pub dp: DpConfig,
}

/// A site's config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteFile {
    /// The coordinator's address (`host:port`; a hostname is resolved).
    pub coordinator: String,
    pub pki: PathBuf,
    /// This site's name in the PKI (its certificate, key and identity files).
    pub name: String,
    pub transcript: PathBuf,
    #[serde(default)]
    pub keylog: bool,
    /// How long to keep trying to reach the coordinator.
    pub connect_timeout_s: f64,
    /// The known-update model: each round every parameter moves by `step`, weighted by
    /// `samples`.
    pub step: f32,
    pub samples: u64,
    pub model: ModelConfig,
}

fn all_sites() -> f64 {
    1.0
}

/// Something worth telling the person running a coordinator or site.
#[derive(Debug)]
pub enum Note {
    Listening {
        addr: std::net::SocketAddr,
        sites: usize,
    },
    Joined {
        connected: usize,
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
    Ledger(PathBuf),
    GlobalMean {
        after_round: u64,
        mean: f64,
    },
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

fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, FlError> {
    let text = std::fs::read_to_string(path).map_err(FlError::io(path))?;
    toml::from_str(&text).map_err(|e| FlError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn seconds(key: &'static str, s: f64) -> Result<Duration, FlError> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| FlError::Config {
            key,
            message: format!("{s} is not a positive duration in seconds"),
        })
}

fn resolve(key: &'static str, addr: &str) -> Result<std::net::SocketAddr, FlError> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| FlError::Config {
            key,
            message: format!("\"{addr}\" is not a host:port that resolves"),
        })
}

/// The session id: stable for a federation (so a restarted coordinator resumes its
/// checkpoint) and distinct between federations: a hash of the CA-signed roster.
pub fn session_of(roster: &SignedRoster) -> [u8; 16] {
    let digest = ring::digest::digest(&ring::digest::SHA256, roster.signature.as_bytes());
    let mut session = [0u8; 16];
    session.copy_from_slice(&digest.as_ref()[..16]);
    session
}

/// The PKI folder layout.
pub fn roster_in(pki: &Path) -> Result<SignedRoster, FlError> {
    Ok(SignedRoster::load(
        &pki.join("roster.json"),
        &pki.join("ca.pem"),
    )?)
}

/// A loaded, fully validated coordinator configuration (nothing bound yet).
pub struct CoordinatorPlan {
    pub file: CoordinatorFile,
    pub roster: SignedRoster,
    pub federation: FederationConfig,
    pub listen: std::net::SocketAddr,
    pub dim: usize,
}

impl CoordinatorPlan {
    /// Reads and checks the whole config (and the PKI) before anything listens.
    pub fn load(path: &Path) -> Result<Self, FlError> {
        let file: CoordinatorFile = load(path)?;
        let in_file = |e: FlError| FlError::File {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let roster = roster_in(&file.pki).map_err(in_file)?;
        let sites_in_roster = roster.entries.len();
        if file.sites == 0 || file.sites > sites_in_roster {
            return Err(in_file(FlError::Config {
                key: "sites",
                message: format!(
                    "{} must be in 1..={sites_in_roster} (the roster's sites)",
                    file.sites
                ),
            }));
        }
        let ModelConfig::KnownUpdate { dim } = file.model;
        let training = LocalTrainingConfig {
            steps: 1,
            batch_size: 1,
            learning_rate: 0.0,
            proximal_mu: 0.0,
            seed: 0,
        };
        let federation = FederationConfig::builder(session_of(&roster), file.checkpoint.clone())
            .strategy(file.strategy.clone())
            .training(training)
            .protocol(file.protocol)
            .rates(file.dropout_rate, file.corruption_rate)
            .codec(file.bits, file.clip, file.max_weight)
            .sample_fraction(file.sample_fraction)
            .timeouts(
                seconds("training_timeout_s", file.training_timeout_s).map_err(in_file)?,
                seconds("phase_timeout_s", file.phase_timeout_s).map_err(in_file)?,
            )
            .dp(file.dp.clone())
            .build()
            .map_err(in_file)?;
        seconds("join_timeout_s", file.join_timeout_s).map_err(in_file)?;
        let listen = resolve("listen", &file.listen).map_err(in_file)?;
        Ok(Self {
            file,
            roster,
            federation,
            listen,
            dim,
        })
    }
}

/// Runs the coordinator until `rounds` rounds are done.
pub async fn run_coordinator(
    plan: CoordinatorPlan,
    note: &mut impl FnMut(Note),
) -> Result<Verdict, FlError> {
    let file = &plan.file;
    let identities = Arc::new(plan.roster.identities()?);
    let creds = Credentials::load(&file.pki, "coordinator")?;
    let layout = KnownUpdateTrainer::layout_for(plan.dim)?;
    let noise = RootSeed::from_os().map_err(|_| FlError::Randomness)?;
    let endpoint = server(plan.listen, &creds, file.keylog)?;
    let events = accept_sites(&endpoint, &plan.roster);
    let noise = noise.derive(
        tessera_core::seed::Purpose::CentralNoise,
        tessera_core::seed::SeedContext::session(plan.federation.session),
    );
    let mut coordinator = Coordinator::new(
        plan.federation.clone(),
        identities,
        layout,
        vec![0.0; plan.dim],
        events,
        noise,
    )?;
    if coordinator.next_round() > file.rounds {
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
    let wait = seconds("join_timeout_s", file.join_timeout_s)?;
    let deadline = tokio::time::Instant::now() + wait;
    let connected = loop {
        // Wait in short slices, so that refused connections are told as they happen.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let n = coordinator
            .wait_for_sites(file.sites, left.min(Duration::from_millis(500)))
            .await;
        tell_refused(&mut coordinator, note);
        if n >= file.sites || left.is_zero() {
            break n;
        }
    };
    note(Note::Joined {
        connected,
        expected: file.sites,
    });
    let mut verdict = Verdict {
        completed: 0,
        aborted: 0,
    };
    while coordinator.next_round() <= file.rounds {
        let report = coordinator.run_round().await?;
        tell_refused(&mut coordinator, note);
        if report.completed() {
            verdict.completed += 1;
        } else {
            verdict.aborted += 1;
        }
        note(Note::Round(Box::new(report)));
    }
    if coordinator.ledger().is_some() {
        note(Note::Ledger(plan.federation.ledger_path()));
    }
    let g = coordinator.global();
    note(Note::GlobalMean {
        after_round: coordinator.next_round() - 1,
        mean: g.iter().map(|v| f64::from(*v)).sum::<f64>() / g.len().max(1) as f64,
    });
    coordinator.shutdown().await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    endpoint.close(0u32.into(), b"done");
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

/// Runs one site until the coordinator ends the federation. `Ok` carries the summary
/// of a site that did its part; a site that could not is an `Err(SiteEnd)` inside.
pub async fn run_site_process(
    path: &Path,
    note: &mut impl FnMut(Note),
) -> Result<(SiteSummary, Option<SiteEnd>), FlError> {
    let cfg: SiteFile = load(path)?;
    let in_file = |e: FlError| FlError::File {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let ModelConfig::KnownUpdate { dim } = cfg.model;
    let addr = resolve("coordinator", &cfg.coordinator).map_err(in_file)?;
    let retry_for = seconds("connect_timeout_s", cfg.connect_timeout_s).map_err(in_file)?;
    let roster = roster_in(&cfg.pki)?;
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
    let transcript = TranscriptWriter::open(&cfg.transcript, identity.clone())?;
    let mut trainer = KnownUpdateTrainer::new(dim, cfg.step, cfg.samples)?;
    let root = RootSeed::from_os().map_err(|_| FlError::Randomness)?;
    let who = SiteIdentity {
        id,
        identity,
        roster: Arc::new(roster.identities()?),
    };
    let machine = SiteMachine::new(who, trainer_layout(dim)?, root);
    let endpoint = client(&creds, cfg.keylog)?;
    note(Note::Connecting { addr });
    let (link, failure) = reconnecting_link(endpoint, addr, "coordinator".into(), retry_for);
    let (egress, inbox) = Egress::open(link, transcript);
    let summary = run_site(machine, &mut trainer, egress, inbox).await?;
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

fn trainer_layout(dim: usize) -> Result<tessera_core::ParamLayout, FlError> {
    Ok(KnownUpdateTrainer::layout_for(dim)?)
}
