//! `tessera coordinator` and `tessera site`: a federation over QUIC with mutual TLS.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tessera_core::{LocalTrainingConfig, Strategy};
use tessera_fl::{
    Coordinator, DpConfig, Egress, FederationConfig, KnownUpdateTrainer, Protocol, SiteOptions,
    accept_sites, reconnecting_link, run_site,
};
use tessera_net::pki::{SignedRoster, load_identity};
use tessera_net::quic::{Credentials, client, server};
use tessera_net::transcript::TranscriptWriter;

/// The model being federated. Only the deterministic known-update model exists so far:
/// the tch detector joins when the experiment runner wires cohorts to sites.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
enum ModelConfig {
    KnownUpdate { dim: usize },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CoordinatorFile {
    listen: SocketAddr,
    pki: PathBuf,
    /// Sites to wait for before the first round.
    sites: usize,
    join_timeout_s: f64,
    rounds: u64,
    checkpoint: PathBuf,
    #[serde(default)]
    keylog: bool,
    model: ModelConfig,
    strategy: Strategy,
    protocol: Protocol,
    dropout_rate: f64,
    corruption_rate: f64,
    bits: u8,
    clip: f32,
    max_weight: u64,
    /// Fraction of the sites selected each round (default: all).
    #[serde(default = "all_sites")]
    sample_fraction: f64,
    training_timeout_s: f64,
    phase_timeout_s: f64,
    /// Differential privacy (`[dp]`, default none).
    #[serde(default)]
    dp: DpConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteFile {
    coordinator: SocketAddr,
    pki: PathBuf,
    /// This site's name in the PKI (its certificate, key and identity files).
    name: String,
    transcript: PathBuf,
    #[serde(default)]
    keylog: bool,
    /// How long to keep trying to reach the coordinator.
    connect_timeout_s: f64,
    /// The known-update model: each round every parameter moves by `step`, weighted by
    /// `samples`.
    step: f32,
    samples: u64,
    model: ModelConfig,
}

fn all_sites() -> f64 {
    1.0
}

fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn seconds(key: &str, s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|_| format!("{key} = {s} is not a duration in seconds"))
}

pub fn coordinator(config: &Path) -> Result<(), String> {
    let cfg: CoordinatorFile = load(config)?;
    cfg.dp
        .validate()
        .map_err(|e| format!("{}: {e}", config.display()))?;
    let ModelConfig::KnownUpdate { dim } = cfg.model;
    let roster = SignedRoster::load(&cfg.pki.join("roster.json"), &cfg.pki.join("ca.pem"))
        .map_err(|e| e.to_string())?;
    let identities = Arc::new(roster.identities().map_err(|e| e.to_string())?);
    let creds = Credentials::load(&cfg.pki, "coordinator").map_err(|e| e.to_string())?;
    // The session id is stable for a federation (so a restarted coordinator resumes its
    // checkpoint) and distinct between federations: a hash of the CA-signed roster.
    let mut session = [0u8; 16];
    session.copy_from_slice(
        &ring::digest::digest(&ring::digest::SHA256, roster.signature.as_bytes()).as_ref()[..16],
    );
    let federation = FederationConfig {
        session,
        strategy: cfg.strategy,
        training: LocalTrainingConfig {
            steps: 1,
            batch_size: 1,
            learning_rate: 0.0,
            proximal_mu: 0.0,
            seed: 0,
        },
        protocol: cfg.protocol,
        dropout_rate: cfg.dropout_rate,
        corruption_rate: cfg.corruption_rate,
        bits: cfg.bits,
        clip: cfg.clip,
        max_weight: cfg.max_weight,
        sample_fraction: cfg.sample_fraction,
        training_timeout: seconds("training_timeout_s", cfg.training_timeout_s)?,
        phase_timeout: seconds("phase_timeout_s", cfg.phase_timeout_s)?,
        checkpoint: cfg.checkpoint.clone(),
        dp: cfg.dp.clone(),
    };
    let layout = KnownUpdateTrainer::layout_for(dim).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let endpoint = server(cfg.listen, &creds, cfg.keylog).map_err(|e| e.to_string())?;
        println!(
            "coordinator listening on {}; waiting for {} sites",
            cfg.listen, cfg.sites
        );
        let links = accept_sites(
            &endpoint,
            &roster,
            cfg.sites,
            seconds("join_timeout_s", cfg.join_timeout_s)?,
        )
        .await
        .map_err(|e| e.to_string())?;
        println!("{} sites joined", links.senders.len());
        let mut coordinator = Coordinator::new(
            federation,
            identities,
            layout,
            vec![0.0; dim],
            links.senders,
            links.inbox,
        )
        .map_err(|e| e.to_string())?
        .with_joins(links.joins);
        if coordinator.next_round() > 1 {
            println!(
                "resuming from the checkpoint at round {}",
                coordinator.next_round()
            );
        }
        while coordinator.next_round() <= cfg.rounds {
            let report = coordinator.run_round().await.map_err(|e| e.to_string())?;
            let privacy = report.privacy.as_ref().map_or(String::new(), |p| {
                format!(
                    "; privacy: ρ {:.3e} this round, ε {:.3} spent at δ {:e}",
                    p.rho, p.cumulative_epsilon, cfg.dp.delta
                )
            });
            match &report.aborted {
                None => println!(
                    "round {}: {} of {} sites contributed (weight {}){privacy}",
                    report.round,
                    report.contributors.len(),
                    report.participants.len(),
                    report.total_weight
                ),
                Some(reason) => println!("round {}: aborted: {reason}{privacy}", report.round),
            }
        }
        if coordinator.ledger().is_some() {
            println!(
                "privacy ledger: {}",
                cfg.checkpoint.with_extension("ledger.json").display()
            );
        }
        let g = coordinator.global();
        let mean = g.iter().map(|v| f64::from(*v)).sum::<f64>() / g.len().max(1) as f64;
        println!(
            "global model after round {}: mean parameter {mean:.6}",
            coordinator.next_round() - 1
        );
        coordinator.shutdown().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        endpoint.close(0u32.into(), b"done");
        Ok(())
    })
}

pub fn site(config: &Path) -> Result<(), String> {
    let cfg: SiteFile = load(config)?;
    let ModelConfig::KnownUpdate { dim } = cfg.model;
    let roster = SignedRoster::load(&cfg.pki.join("roster.json"), &cfg.pki.join("ca.pem"))
        .map_err(|e| e.to_string())?;
    let id = roster.site_of(&cfg.name).ok_or_else(|| {
        format!(
            "{} is not in {}",
            cfg.name,
            cfg.pki.join("roster.json").display()
        )
    })?;
    let identity = Arc::new(
        load_identity(&cfg.pki.join(format!("{}.identity", cfg.name)))
            .map_err(|e| e.to_string())?,
    );
    let creds = Credentials::load(&cfg.pki, &cfg.name).map_err(|e| e.to_string())?;
    let transcript =
        TranscriptWriter::open(&cfg.transcript, identity.clone()).map_err(|e| e.to_string())?;
    let mut trainer =
        KnownUpdateTrainer::new(dim, cfg.step, cfg.samples).map_err(|e| e.to_string())?;
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| "system randomness failed")?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let endpoint = client(&creds, cfg.keylog).map_err(|e| e.to_string())?;
        // Re-dials whenever the connection is lost, e.g. while the coordinator restarts.
        let retry_for = seconds("connect_timeout_s", cfg.connect_timeout_s)?;
        let (to_coordinator, from_coordinator) = reconnecting_link(
            endpoint,
            cfg.coordinator,
            "coordinator".to_string(),
            retry_for,
        );
        let opts = SiteOptions {
            id,
            identity,
            roster: Arc::new(roster.identities().map_err(|e| e.to_string())?),
            seed,
            silent: Default::default(),
        };
        let summary = run_site(
            opts,
            &mut trainer,
            from_coordinator,
            Egress::new(to_coordinator, transcript),
        )
        .await
        .map_err(|e| e.to_string())?;
        if summary.rounds_started == 0 {
            return Err(format!(
                "no round started: the coordinator at {} was unreachable for {} s or sent nothing; is it running?",
                cfg.coordinator, cfg.connect_timeout_s
            ));
        }
        println!(
            "{}: {} rounds, {} completed",
            cfg.name, summary.rounds_started, summary.rounds_completed
        );
        for e in &summary.errors {
            eprintln!("{}: {e}", cfg.name);
        }
        Ok(())
    })
}
