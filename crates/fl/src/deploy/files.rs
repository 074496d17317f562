//! The coordinator's and a site's config files (every key is explained in
//! `examples/coordinator.toml` and `examples/site.toml`), read and checked up front.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tessera_core::{LocalTrainingConfig, Strategy};
use tessera_dp::DpConfig;
use tessera_net::pki::SignedRoster;

use crate::config::{FederationConfig, Protocol};
use crate::error::FlError;

/// The model being federated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
pub enum ModelConfig {
    /// A deterministic test model of `dim` parameters.
    KnownUpdate { dim: usize },
    /// The lesion detector of a run profile (`quick` or `full`).
    Detector {
        profile: String,
        /// Initial weights from this seed (default 0), or from `weights`.
        #[serde(default)]
        init_seed: u64,
        /// A `.safetensors` file of the profile's detector.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weights: Option<PathBuf>,
        /// Overrides of the profile (an experiment file's `[settings]` keys).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        settings: Option<toml::Table>,
    },
}

/// A cohort of a `datasets.toml` registry (synthetic, or NIfTI files in a folder).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CohortRef {
    pub registry: PathBuf,
    pub cohort: String,
    /// Where synthetic cohorts are written (default `data`, beside the registry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_root: Option<PathBuf>,
}

/// Local training settings the coordinator sends every round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingFile {
    pub local_steps: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    #[serde(default)]
    pub seed: u64,
}

/// The coordinator's config file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorFile {
    pub listen: String,
    pub pki: PathBuf,
    pub sites: usize,
    pub join_timeout_s: f64,
    pub rounds: u64,
    pub checkpoint: PathBuf,
    /// Folder for the round log and the final model (default: beside the checkpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
    #[serde(default)]
    pub keylog: bool,
    pub model: ModelConfig,
    /// Training settings (default: the detector profile's, or none for known-update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingFile>,
    /// A cohort the coordinator holds itself, to evaluate the global model on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluate: Option<CohortRef>,
    /// The session id in hex (32 digits), for reproducible experiments; default: a hash
    /// of the CA-signed roster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub strategy: Strategy,
    pub protocol: Protocol,
    pub dropout_rate: f64,
    pub corruption_rate: f64,
    /// "semi-honest" (default) or "active-server".
    #[serde(default)]
    pub threat: crate::Threat,
    pub bits: u8,
    pub clip: f32,
    pub max_weight: u64,
    /// "samples" (default) or "uniform".
    #[serde(default)]
    pub weighting: crate::Weighting,
    /// "aes-256-ctr" (default) or "chacha20": the SecAgg mask generator.
    #[serde(default)]
    pub mask_prg: tessera_secagg::MaskPrg,
    #[serde(default = "all_sites")]
    pub sample_fraction: f64,
    pub training_timeout_s: f64,
    pub phase_timeout_s: f64,
    #[serde(default)]
    pub dp: DpConfig,
}

/// A site's config file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteFile {
    pub coordinator: String,
    pub pki: PathBuf,
    pub name: String,
    pub transcript: PathBuf,
    #[serde(default)]
    pub keylog: bool,
    /// Keep every masked upload in `<transcript>.payloads/` for an auditor's
    /// uniformity test (plaintext is never kept).
    #[serde(default)]
    pub keep_payloads: bool,
    pub connect_timeout_s: f64,
    pub model: ModelConfig,
    /// The site's own data (detector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<CohortRef>,
    /// Known-update model: each round every parameter moves by `step`, weighted by
    /// `samples`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
    /// Derive this site's randomness from an experiment seed instead of the operating
    /// system: for reproducible experiments only, never in a deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Where the rounds this site answered are kept (default: beside the transcript,
    /// `<transcript>.rounds.json`); a restarted site refuses them again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds_file: Option<PathBuf>,
    /// What the site takes part in (see [`crate::SitePolicy`]; every key optional).
    #[serde(default)]
    pub policy: crate::SitePolicy,
}

impl SiteFile {
    /// Where the site's own privacy ledger is kept (with `policy.max_epsilon`).
    pub fn ledger_path(&self) -> PathBuf {
        let mut name = self.transcript.as_os_str().to_owned();
        name.push(".ledger.json");
        PathBuf::from(name)
    }

    /// Where masked uploads are kept with `keep_payloads`.
    pub fn payloads_dir(&self) -> PathBuf {
        let mut name = self.transcript.as_os_str().to_owned();
        name.push(".payloads");
        PathBuf::from(name)
    }

    /// Where the newest roster version this site has seen is kept.
    pub fn roster_version_path(&self) -> PathBuf {
        let mut name = self.transcript.as_os_str().to_owned();
        name.push(".roster-version");
        PathBuf::from(name)
    }

    /// The file of rounds answered.
    pub fn rounds_path(&self) -> PathBuf {
        self.rounds_file.clone().unwrap_or_else(|| {
            let mut name = self.transcript.as_os_str().to_owned();
            name.push(".rounds.json");
            PathBuf::from(name)
        })
    }
}

fn all_sites() -> f64 {
    1.0
}

pub(crate) fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, FlError> {
    let text = std::fs::read_to_string(path).map_err(FlError::io(path))?;
    toml::from_str(&text).map_err(|e| FlError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Writes a config file (used by tools that set up federations).
pub fn write<T: Serialize>(path: &Path, file: &T) -> Result<(), FlError> {
    let text = toml::to_string(file).map_err(|e| FlError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    tessera_core::atomic::write_atomic(path, text.as_bytes()).map_err(FlError::io(path))
}

pub(crate) fn seconds(key: &'static str, s: f64) -> Result<Duration, FlError> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| FlError::Config {
            key,
            message: format!("{s} is not a positive duration in seconds"),
        })
}

pub(crate) fn resolve(key: &'static str, addr: &str) -> Result<std::net::SocketAddr, FlError> {
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

fn session_from(hex: &str) -> Result<[u8; 16], FlError> {
    crate::config::parse_session(hex).ok_or_else(|| FlError::Config {
        key: "session",
        message: format!("\"{hex}\" is not 32 hexadecimal digits"),
    })
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
    /// Where the round log and the final model go.
    pub output: PathBuf,
}

impl CoordinatorPlan {
    /// Reads and checks the whole config (and the PKI) before anything listens.
    /// `default_training` gives a model's default training settings (used when the
    /// file has no `[training]`).
    pub fn load(
        path: &Path,
        default_training: impl FnOnce(&ModelConfig) -> Result<LocalTrainingConfig, String>,
    ) -> Result<Self, FlError> {
        let file: CoordinatorFile = load(path)?;
        let in_file = |message: String| FlError::File {
            path: path.to_owned(),
            message,
        };
        let training = default_training(&file.model).map_err(in_file)?;
        Self::check(file, training).map_err(|e| in_file(e.to_string()))
    }

    fn check(file: CoordinatorFile, default: LocalTrainingConfig) -> Result<Self, FlError> {
        let roster = roster_in(&file.pki)?;
        let in_roster = roster.entries.len();
        if file.sites == 0 || file.sites > in_roster {
            return Err(FlError::Config {
                key: "sites",
                message: format!(
                    "{} must be in 1..={in_roster} (the roster's sites)",
                    file.sites
                ),
            });
        }
        let training = match &file.training {
            Some(t) => LocalTrainingConfig {
                steps: t.local_steps,
                batch_size: t.batch_size,
                learning_rate: t.learning_rate,
                proximal_mu: 0.0,
                seed: t.seed,
            },
            None => default,
        };
        let session = match &file.session {
            Some(hex) => session_from(hex)?,
            None => session_of(&roster),
        };
        let federation = FederationConfig::builder(session, file.checkpoint.clone())
            .strategy(file.strategy.clone())
            .training(training)
            .protocol(file.protocol)
            .rates(file.dropout_rate, file.corruption_rate)
            .threat(file.threat)
            .codec(file.bits, file.clip, file.max_weight)
            .weighting(file.weighting)
            .mask_prg(file.mask_prg)
            .sample_fraction(file.sample_fraction)
            .timeouts(
                seconds("training_timeout_s", file.training_timeout_s)?,
                seconds("phase_timeout_s", file.phase_timeout_s)?,
            )
            .dp(file.dp.clone())
            .build()?;
        seconds("join_timeout_s", file.join_timeout_s)?;
        let listen = resolve("listen", &file.listen)?;
        let output = match &file.output {
            Some(dir) => dir.clone(),
            // Beside the checkpoint ("." for a bare file name).
            None => match file.checkpoint.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => PathBuf::from("."),
            },
        };
        Ok(Self {
            file,
            roster,
            federation,
            listen,
            output,
        })
    }
}

impl SiteFile {
    /// Reads a site's config and checks what can be checked without its data.
    pub fn load(path: &Path) -> Result<Self, FlError> {
        let file: SiteFile = load(path)?;
        let in_file = |e: FlError| FlError::File {
            path: path.to_owned(),
            message: e.to_string(),
        };
        resolve("coordinator", &file.coordinator).map_err(in_file)?;
        file.policy.validate().map_err(in_file)?;
        seconds("connect_timeout_s", file.connect_timeout_s).map_err(in_file)?;
        let missing = |key: &'static str, model: &str| {
            in_file(FlError::Config {
                key,
                message: format!("is required with model kind \"{model}\""),
            })
        };
        match &file.model {
            ModelConfig::KnownUpdate { .. } => {
                file.step.ok_or_else(|| missing("step", "known-update"))?;
                file.samples
                    .ok_or_else(|| missing("samples", "known-update"))?;
            }
            ModelConfig::Detector { .. } => {
                if file.data.is_none() {
                    return Err(missing("data", "detector"));
                }
            }
        }
        Ok(file)
    }
}
