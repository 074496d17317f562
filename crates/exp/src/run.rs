//! The run directory, the per-arm cache and resume.
//!
//! `runs/<experiment>-<profile>/` holds `manifest.json` (git commit, config hash, seed,
//! versions, machine), `arms/<key>/` per arm (`result.json`, `model.bin`, and for
//! federated arms the checkpoint, ledger and site transcripts), `results.json`,
//! `results.csv` and the report. An arm's key hashes everything that determines it
//! (arm, profile, seed, registry, Tessera's version and git commit, so results always
//! come from the code they name); an arm whose `result.json` exists
//! is reused, so an interrupted run resumes without recomputing finished arms. Every
//! file is written atomically.

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tessera_data::Registry;

use crate::arms::{ArmInputs, ArmResult, run_arm};
use crate::cohorts::Cohorts;
use crate::error::{ExpError, write_atomic};
use crate::profile::{Profile, ProfileName};
use crate::report;
use crate::spec::{Arm, Experiment};
use crate::transport::{ProcessContext, SiteProcesses};

/// Where a run reads and writes.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub profile: ProfileName,
    /// Root for synthetic cohorts (written there if missing).
    pub data_root: PathBuf,
    /// Root of the run directories.
    pub runs_root: PathBuf,
    /// Where the report (tables, figures, README) also goes, e.g. `paper/`.
    pub report_dir: Option<PathBuf>,
    /// Stop after computing this many arms (cached arms do not count); the run is then
    /// incomplete and a rerun resumes.
    pub stop_after: Option<usize>,
    pub progress: bool,
    /// For arms with `transport = "processes"`.
    pub site_processes: SiteProcesses,
}

/// Reads a registry and refuses one with problems (each named); returns it with its
/// text (which goes into the run's manifest).
pub fn load_registry(path: &Path) -> Result<(Registry, String), ExpError> {
    let text = std::fs::read_to_string(path).map_err(|e| ExpError::io(path, e))?;
    let registry = Registry::load(path).map_err(|e| ExpError::Data(e.to_string()))?;
    let problems = registry.problems();
    if !problems.is_empty() {
        return Err(ExpError::Data(format!(
            "{}: {}",
            path.display(),
            problems.join("; ")
        )));
    }
    Ok((registry, text))
}

/// What a run did.
#[derive(Debug)]
pub struct RunSummary {
    pub dir: PathBuf,
    pub results: Vec<ArmResult>,
    pub computed: usize,
    pub reused: usize,
    pub complete: bool,
}

#[derive(Serialize)]
struct Manifest<'a> {
    experiment: &'a str,
    description: &'a str,
    profile: &'a Profile,
    config_hash: String,
    seed: u64,
    git_commit: Option<String>,
    tessera_version: &'static str,
    dependencies: BTreeMap<String, String>,
    machine: Machine,
    arms: Vec<(String, String)>,
    synthetic_data: bool,
}

#[derive(Serialize)]
struct Machine {
    os: &'static str,
    arch: &'static str,
    cpus: usize,
    cuda: bool,
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Versions of the dependencies that shape results, from `Cargo.lock` when the run
/// starts in the workspace.
fn dependencies() -> BTreeMap<String, String> {
    let wanted = [
        "tch",
        "torch-sys",
        "opendp",
        "quinn",
        "rustls",
        "curve25519-dalek",
        "plotters",
    ];
    let Ok(lock) = std::fs::read_to_string("Cargo.lock") else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_string());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take())
            && wanted.contains(&n.as_str())
        {
            out.insert(n, v.trim_matches('"').to_string());
        }
    }
    out
}

/// The cache key of an arm.
fn arm_key(
    arm: &Arm,
    profile: &Profile,
    seed: u64,
    registry_hash: &str,
    commit: &Option<String>,
) -> String {
    let text = serde_json::json!({
        "arm": arm,
        "profile": profile,
        "seed": seed,
        "registry": registry_hash,
        "tessera": env!("CARGO_PKG_VERSION"),
        "commit": commit,
    })
    .to_string();
    sha256_hex(text.as_bytes())[..20].to_string()
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ExpError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| ExpError::io(path, e))?;
    write_atomic(path, &text)
}

fn model_bytes(params: &[f32]) -> Vec<u8> {
    params.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn save_model(path: &Path, params: &[f32]) -> Result<(), ExpError> {
    write_atomic(path, &model_bytes(params))
}

fn load_model(path: &Path) -> Result<Vec<f32>, ExpError> {
    let bytes = std::fs::read(path).map_err(|e| ExpError::io(path, e))?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Runs (or resumes) an experiment.
pub fn run(
    experiment: &Experiment,
    registry: &Registry,
    registry_text: &str,
    opts: &RunOptions,
) -> Result<RunSummary, ExpError> {
    let profile = Profile::new(opts.profile, &experiment.settings);
    let profile_name = match opts.profile {
        ProfileName::Quick => "quick",
        ProfileName::Full => "full",
    };
    let dir = opts
        .runs_root
        .join(format!("{}-{profile_name}", experiment.name));
    let registry_hash = sha256_hex(registry_text.as_bytes());
    let commit = git_commit();
    let keys: Vec<String> = experiment
        .arms
        .iter()
        .map(|a| arm_key(a, &profile, experiment.seed, &registry_hash, &commit))
        .collect();
    let config_hash = sha256_hex(keys.join(",").as_bytes())[..20].to_string();
    write_json(
        &dir.join("manifest.json"),
        &Manifest {
            experiment: &experiment.name,
            description: &experiment.description,
            profile: &profile,
            config_hash,
            seed: experiment.seed,
            git_commit: commit.clone(),
            tessera_version: env!("CARGO_PKG_VERSION"),
            dependencies: dependencies(),
            machine: Machine {
                os: std::env::consts::OS,
                arch: std::env::consts::ARCH,
                cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
                cuda: tessera_train::cuda_available(),
            },
            arms: experiment
                .arms
                .iter()
                .zip(&keys)
                .map(|(a, k)| (a.name.clone(), k.clone()))
                .collect(),
            synthetic_data: registry.cohorts.iter().any(|c| c.is_synthetic()),
        },
    )?;
    let bar = if opts.progress {
        let bar = ProgressBar::new(experiment.arms.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} arms  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut cohorts: Option<Cohorts> = None;
    let mut models: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut results = Vec::new();
    let (mut computed, mut reused) = (0, 0);
    for (arm, key) in experiment.arms.iter().zip(&keys) {
        let arm_dir = dir.join("arms").join(key);
        let result_path = arm_dir.join("result.json");
        let model_path = arm_dir.join("model.bin");
        if let Ok(text) = std::fs::read_to_string(&result_path)
            && let Ok(result) = serde_json::from_str::<ArmResult>(&text)
        {
            if model_path.exists() {
                models.insert(arm.name.clone(), load_model(&model_path)?);
            }
            results.push(result);
            reused += 1;
            bar.inc(1);
            continue;
        }
        if opts.stop_after.is_some_and(|n| computed >= n) {
            bar.finish_and_clear();
            return Ok(RunSummary {
                dir,
                results,
                computed,
                reused,
                complete: false,
            });
        }
        if cohorts.is_none() {
            bar.set_message("preparing cohorts");
            cohorts = Some(Cohorts::prepare(registry, &opts.data_root, &profile)?);
        }
        let Some(data) = cohorts.as_ref() else {
            return Err(ExpError::Data("cohorts were not prepared".into()));
        };
        bar.set_message(arm.name.clone());
        // One session for every arm of the run: arms that differ only in protocol or
        // transport then draw the same rounding, so their models are comparable (and,
        // without DP, identical).
        let session = tessera_core::seed::RootSeed::from_experiment(experiment.seed).session();
        let inputs = ArmInputs {
            profile: &profile,
            cohorts: data,
            seed: experiment.seed,
            session,
            dir: &arm_dir,
        };
        let (mut result, model) = run_arm(
            arm,
            &inputs,
            &models,
            &ProcessContext {
                processes: &opts.site_processes,
                data_root: &opts.data_root,
                profile: opts.profile,
                settings: &experiment.settings,
            },
        )
        .map_err(|e| ExpError::Arm {
            arm: arm.name.clone(),
            source: Box::new(e),
        })?;
        if let Some(model) = model {
            result.model_sha256 = Some(sha256_hex(&model_bytes(&model)));
            save_model(&model_path, &model)?;
            models.insert(arm.name.clone(), model);
        }
        write_json(&result_path, &result)?;
        results.push(result);
        computed += 1;
        bar.inc(1);
    }
    bar.finish_and_clear();
    write_json(&dir.join("results.json"), &results)?;
    write_atomic(&dir.join("results.csv"), report::csv(&results).as_bytes())?;
    let synthetic = registry.cohorts.iter().any(|c| c.is_synthetic());
    report::write(
        &dir.join("report"),
        experiment,
        &profile,
        &results,
        synthetic,
    )?;
    if let Some(out) = &opts.report_dir {
        report::write(out, experiment, &profile, &results, synthetic)?;
    }
    Ok(RunSummary {
        dir,
        results,
        computed,
        reused,
        complete: true,
    })
}
