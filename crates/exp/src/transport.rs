//! Federated arms over QUIC to real `tessera site` child processes on 127.0.0.1: each
//! process prepares its own hospital's cohort from the registry and trains there; the
//! coordinator runs in this process. Site randomness derives from the experiment seed
//! (the site file's `seed`), so the model equals the in-memory run's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tessera_core::ParamLayout;
use tessera_core::seed::{Purpose, RootSeed, SeedContext};
use tessera_fl::deploy::files::write;
use tessera_fl::deploy::{CohortRef, ModelConfig, SiteFile};
use tessera_fl::loopback::{self, Listener};
use tessera_fl::{Coordinator, FederationConfig};

use crate::error::ExpError;
use crate::profile::ProfileName;
use crate::spec::Settings;

/// What starting site processes needs beyond the arm.
#[derive(Clone, Debug, Default)]
pub struct SiteProcesses {
    /// The `tessera` binary (default: this executable).
    pub binary: Option<PathBuf>,
    /// The registry file the sites read their cohorts from.
    pub registry: Option<PathBuf>,
}

/// Everything a process federation needs from the run.
pub(crate) struct ProcessContext<'a> {
    pub processes: &'a SiteProcesses,
    pub data_root: &'a Path,
    pub profile: ProfileName,
    pub settings: &'a Settings,
}

/// A running process federation; its children are killed if it is dropped early.
pub(crate) struct ProcessFederation {
    pub coordinator: Coordinator,
    listener: Listener,
    children: Vec<(Child, PathBuf)>,
}

impl Drop for ProcessFederation {
    fn drop(&mut self) {
        for (child, _) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl ProcessFederation {
    /// Waits for every site process to exit after the coordinator's shutdown.
    pub async fn finish(mut self) -> Result<(), ExpError> {
        self.coordinator.shutdown().await?;
        let children = std::mem::take(&mut self.children);
        for (mut child, log) in children {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let status = loop {
                if let Some(status) = child.try_wait().map_err(|e| ExpError::io(&log, e))? {
                    break Some(status);
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            if !status.is_some_and(|s| s.success()) {
                return Err(ExpError::Data(format!(
                    "a site process failed; see {}",
                    log.display()
                )));
            }
        }
        self.listener.close();
        Ok(())
    }
}

fn site_file(
    ctx: &ProcessContext<'_>,
    registry: &Path,
    dir: &Path,
    port: u16,
    (i, hospital): (usize, &str),
    seed: u64,
) -> Result<SiteFile, ExpError> {
    let settings = toml::Table::try_from(ctx.settings)
        .map_err(|e| ExpError::Config(format!("settings: {e}")))?;
    let profile = ctx.profile.name();
    Ok(SiteFile {
        coordinator: format!("127.0.0.1:{port}"),
        pki: dir.join("pki"),
        name: format!("site-{i}"),
        transcript: dir.join(format!("site-{i}.transcript")),
        keylog: false,
        keep_payloads: false,
        connect_timeout_s: 120.0,
        model: ModelConfig::Detector {
            profile: profile.into(),
            init_seed: seed,
            weights: None,
            settings: Some(settings),
        },
        data: Some(CohortRef {
            registry: registry.to_owned(),
            cohort: hospital.to_owned(),
            data_root: Some(ctx.data_root.to_owned()),
        }),
        step: None,
        samples: None,
        seed: Some(seed),
        rounds_file: None,
        // An experiment: two-hospital federations and the plaintext baseline included.
        policy: tessera_fl::SitePolicy::permissive(),
    })
}

/// Starts the coordinator here and one `tessera site` process per hospital.
pub(crate) async fn start(
    ctx: &ProcessContext<'_>,
    config: FederationConfig,
    layout: ParamLayout,
    initial: Vec<f32>,
    hospitals: &[String],
    seed: u64,
    dir: &Path,
) -> Result<ProcessFederation, ExpError> {
    let registry = ctx.processes.registry.clone().ok_or_else(|| {
        ExpError::Config("transport = \"processes\" needs the registry file's path".into())
    })?;
    let binary = match &ctx.processes.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(|e| ExpError::io(dir, e))?,
    };
    let (listener, events, identities) = loopback::listen(dir, hospitals.len())?;
    let port = listener.port();
    let noise = RootSeed::from_experiment(seed)
        .derive(Purpose::CentralNoise, SeedContext::session(config.session));
    let coordinator = Coordinator::new(config, identities, layout, initial, events, noise)?;
    let mut fed = ProcessFederation {
        coordinator,
        listener,
        children: Vec::new(),
    };
    for (i, hospital) in hospitals.iter().enumerate() {
        let file = site_file(ctx, &registry, dir, port, (i, hospital), seed)?;
        let path = dir.join(format!("site-{i}.toml"));
        write(&path, &file)?;
        let log = dir.join(format!("site-{i}.log"));
        let out = std::fs::File::create(&log).map_err(|e| ExpError::io(&log, e))?;
        let child = Command::new(&binary)
            .args(["site", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .map_err(|e| ExpError::io(&binary, e))?;
        fed.children.push((child, log));
    }
    let n = hospitals.len();
    let joined = fed
        .coordinator
        .wait_for_sites(n, Duration::from_secs(600))
        .await;
    if joined < n {
        return Err(ExpError::Data(format!(
            "only {joined} of {n} site processes connected; see {}",
            dir.join("site-*.log").display()
        )));
    }
    Ok(fed)
}
