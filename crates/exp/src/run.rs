//! The run directory, the per-arm cache and resume.
//!
//! `runs/<experiment>-<profile>/` holds `manifest.json` (git commit, config hash, seed,
//! versions, machine), `arms/<key>/` per training run, i.e. arm and seed
//! (`result.json`, `model.bin`, and for federated arms the checkpoint, ledger and site
//! transcripts), `results.json`, `results.csv` and the report. A run's key hashes
//! everything that determines it (arm, profile, seed, registry, Tessera's version and
//! git commit, so results always come from the code they name); a run whose
//! `result.json` exists is reused, so an interrupted run resumes without recomputing
//! finished ones. Every
//! file is written atomically. Shards of one run (see [`crate::shard`]) share the
//! directory: each computes its arms, and `assemble_report` writes the report from
//! whatever has finished.

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
use crate::shard::{self, Job, Shard};
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
    /// Run only this shard's arms into the shared run directory (no report).
    pub shard: Option<Shard>,
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
    seeds: usize,
    /// (arm, seed, cache key) of every training run.
    arms: Vec<(String, u64, String)>,
    synthetic_data: bool,
}

#[derive(Serialize)]
struct Machine {
    os: &'static str,
    arch: &'static str,
    cpus: usize,
    /// Threads each trainer uses (central arms 2, each federated site 1), whatever the
    /// machine: libtorch's reductions depend on them.
    training_threads: &'static str,
    /// Kernel pins in effect, CPU model and ISA, libtorch build, CUDA
    /// (`tessera_train::numeric_environment`).
    numerics: BTreeMap<String, String>,
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

/// A finished arm: its result and, for arms that train one, its model.
type Finished = (ArmResult, Option<Vec<f32>>);

/// What every mode of a run agrees on: the run directory and each training run's cache
/// key (`keys[replicate][arm]`).
struct RunPlan {
    profile: Profile,
    dir: PathBuf,
    keys: Vec<Vec<String>>,
    config_hash: String,
    commit: Option<String>,
}

impl RunPlan {
    fn new(experiment: &Experiment, registry_text: &str, opts: &RunOptions) -> Self {
        let profile = Profile::new(opts.profile, &experiment.settings);
        let dir = opts
            .runs_root
            .join(format!("{}-{}", experiment.name, opts.profile.name()));
        let registry_hash = sha256_hex(registry_text.as_bytes());
        let commit = git_commit();
        let keys: Vec<Vec<String>> = (0..experiment.seeds)
            .map(|r| {
                let seed = experiment.replicate_seed(r);
                experiment
                    .arms
                    .iter()
                    .map(|a| arm_key(a, &profile, seed, &registry_hash, &commit))
                    .collect()
            })
            .collect();
        let config_hash = sha256_hex(keys.concat().join(",").as_bytes())[..20].to_string();
        RunPlan {
            profile,
            dir,
            keys,
            config_hash,
            commit,
        }
    }

    fn arm_dir(&self, job: Job) -> PathBuf {
        self.dir
            .join("arms")
            .join(&self.keys[job.replicate][job.arm])
    }

    fn write_manifest(&self, experiment: &Experiment, registry: &Registry) -> Result<(), ExpError> {
        write_json(
            &self.dir.join("manifest.json"),
            &Manifest {
                experiment: &experiment.name,
                description: &experiment.description,
                profile: &self.profile,
                config_hash: self.config_hash.clone(),
                seed: experiment.seed,
                git_commit: self.commit.clone(),
                tessera_version: env!("CARGO_PKG_VERSION"),
                dependencies: dependencies(),
                machine: Machine {
                    os: std::env::consts::OS,
                    arch: std::env::consts::ARCH,
                    cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
                    training_threads: "central 2, federated site 1",
                    numerics: tessera_train::numeric_environment(),
                },
                seeds: experiment.seeds,
                arms: shard::all_jobs(experiment)
                    .into_iter()
                    .map(|j| {
                        (
                            experiment.arms[j.arm].name.clone(),
                            experiment.replicate_seed(j.replicate),
                            self.keys[j.replicate][j.arm].clone(),
                        )
                    })
                    .collect(),
                synthetic_data: registry.cohorts.iter().any(|c| c.is_synthetic()),
            },
        )
    }

    /// Shards and report assembly share a run directory, so one written for another
    /// configuration (commit, experiment, profile, registry) is refused, never mixed.
    fn check_shared_dir(&self) -> Result<(), ExpError> {
        let path = self.dir.join("manifest.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ExpError::io(&path, e)),
        };
        let theirs = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("config_hash")?.as_str().map(str::to_owned))
            .ok_or_else(|| ExpError::io(&path, "not a run manifest (no config_hash)"))?;
        if theirs == self.config_hash {
            return Ok(());
        }
        Err(ExpError::Config(format!(
            "{} was written by another commit or configuration (config {theirs}, this one \
             {}): give shards of one run the same checkout and arguments, or another --runs",
            self.dir.display(),
            self.config_hash
        )))
    }

    /// A training run's result, when it finished.
    fn finished(&self, job: Job) -> Option<ArmResult> {
        let text = std::fs::read_to_string(self.arm_dir(job).join("result.json")).ok()?;
        serde_json::from_str::<ArmResult>(&text).ok()
    }

    /// A training run's result and model (for arms that train one), when it finished.
    fn cached(&self, job: Job) -> Result<Option<Finished>, ExpError> {
        let Some(result) = self.finished(job) else {
            return Ok(None);
        };
        let model_path = self.arm_dir(job).join("model.bin");
        let model = if model_path.exists() {
            Some(load_model(&model_path)?)
        } else {
            None
        };
        Ok(Some((result, model)))
    }
}

fn progress_bar(opts: &RunOptions, len: usize) -> ProgressBar {
    if !opts.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} runs  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // Redrawn every second, so that the clock runs while cohorts are written and the
    // first arm trains (minutes with nothing else on screen).
    bar.enable_steady_tick(std::time::Duration::from_secs(1));
    bar
}

/// Runs (or resumes) an experiment: every arm, or with `opts.shard` only that shard's
/// share (then no report is written: `assemble_report` does that).
pub fn run(
    experiment: &Experiment,
    registry: &Registry,
    registry_text: &str,
    opts: &RunOptions,
) -> Result<RunSummary, ExpError> {
    let plan = RunPlan::new(experiment, registry_text, opts);
    let selected: Vec<Job> = match opts.shard {
        Some(shard) => {
            plan.check_shared_dir()?;
            shard.jobs(experiment)
        }
        None => shard::all_jobs(experiment),
    };
    plan.write_manifest(experiment, registry)?;
    let bar = progress_bar(opts, selected.len());
    let mut cohorts: Option<Cohorts> = None;
    // Models of finished arms by seed, then by name (an ensemble's members).
    let mut models: BTreeMap<usize, BTreeMap<String, Vec<f32>>> = BTreeMap::new();
    let mut results = Vec::new();
    let (mut computed, mut reused) = (0, 0);
    for &job in &selected {
        let arm = &experiment.arms[job.arm];
        let seed_models = models.entry(job.replicate).or_default();
        if let Some((result, model)) = plan.cached(job)? {
            if let Some(model) = model {
                seed_models.insert(arm.name.clone(), model);
            }
            results.push(result);
            reused += 1;
            bar.inc(1);
            continue;
        }
        if opts.stop_after.is_some_and(|n| computed >= n) {
            bar.finish_and_clear();
            return Ok(RunSummary {
                dir: plan.dir,
                results,
                computed,
                reused,
                complete: false,
            });
        }
        let label = run_label(experiment, job);
        if let Some(shard) = opts.shard {
            shard::claim(&plan.arm_dir(job), &label, shard)?;
        }
        if cohorts.is_none() {
            bar.set_message(format!(
                "preparing cohorts (synthetic ones are written to {} on first use)",
                opts.data_root.display()
            ));
            cohorts = Some(Cohorts::prepare(registry, &opts.data_root, &plan.profile)?);
        }
        let Some(data) = cohorts.as_ref() else {
            return Err(ExpError::Data("cohorts were not prepared".into()));
        };
        bar.set_message(label);
        let (result, model) = compute_arm(experiment, &plan, job, data, seed_models, opts)?;
        if let Some(model) = model {
            seed_models.insert(arm.name.clone(), model);
        }
        results.push(result);
        computed += 1;
        bar.inc(1);
    }
    bar.finish_and_clear();
    if opts.shard.is_none() {
        write_outputs(experiment, registry, &plan, opts, &results, &[])?;
    }
    Ok(RunSummary {
        dir: plan.dir,
        results,
        computed,
        reused,
        complete: true,
    })
}

/// An arm's name, with its seed when the experiment has several.
fn run_label(experiment: &Experiment, job: Job) -> String {
    let name = &experiment.arms[job.arm].name;
    if experiment.seeds > 1 {
        format!("{name} (seed {})", experiment.replicate_seed(job.replicate))
    } else {
        name.clone()
    }
}

/// Trains and evaluates one training run, and stores its result (and model) in its
/// directory.
fn compute_arm(
    experiment: &Experiment,
    plan: &RunPlan,
    job: Job,
    data: &Cohorts,
    models: &BTreeMap<String, Vec<f32>>,
    opts: &RunOptions,
) -> Result<(ArmResult, Option<Vec<f32>>), ExpError> {
    let arm = &experiment.arms[job.arm];
    let arm_dir = plan.arm_dir(job);
    let seed = experiment.replicate_seed(job.replicate);
    // One session for every arm of a seed: arms that differ only in protocol or
    // transport then draw the same rounding, so their models are comparable (and,
    // without DP, identical).
    let session = tessera_core::seed::RootSeed::from_experiment(seed).session();
    let inputs = ArmInputs {
        profile: &plan.profile,
        cohorts: data,
        seed,
        replicate: job.replicate,
        session,
        dir: &arm_dir,
    };
    let (mut result, model) = run_arm(
        arm,
        &inputs,
        models,
        &ProcessContext {
            processes: &opts.site_processes,
            data_root: &opts.data_root,
            profile: opts.profile,
            settings: &experiment.settings,
        },
    )
    .map_err(|e| ExpError::Arm {
        arm: run_label(experiment, job),
        source: Box::new(e),
    })?;
    if let Some(model) = &model {
        result.model_sha256 = Some(sha256_hex(&model_bytes(model)));
        save_model(&arm_dir.join("model.bin"), model)?;
    }
    write_json(&arm_dir.join("result.json"), &result)?;
    Ok((result, model))
}

/// `results.json`, `results.csv` and the report, in the run directory and in
/// `opts.report_dir`.
fn write_outputs(
    experiment: &Experiment,
    registry: &Registry,
    plan: &RunPlan,
    opts: &RunOptions,
    results: &[ArmResult],
    missing: &[String],
) -> Result<(), ExpError> {
    write_json(&plan.dir.join("results.json"), &results)?;
    write_atomic(
        &plan.dir.join("results.csv"),
        report::csv(results).as_bytes(),
    )?;
    let synthetic = registry.cohorts.iter().any(|c| c.is_synthetic());
    let mut dirs = vec![plan.dir.join("report")];
    dirs.extend(opts.report_dir.clone());
    for dir in &dirs {
        report::write(dir, experiment, &plan.profile, results, synthetic, missing)?;
    }
    // The report folder outside the run (paper/) carries the numbers and their
    // provenance with it.
    if let Some(dir) = &opts.report_dir {
        for file in ["results.csv", "manifest.json"] {
            let from = plan.dir.join(file);
            let bytes = std::fs::read(&from).map_err(|e| ExpError::io(&from, e))?;
            write_atomic(&dir.join(file), &bytes)?;
        }
    }
    Ok(())
}

/// What `assemble_report` found.
#[derive(Debug)]
pub struct ReportSummary {
    pub dir: PathBuf,
    /// Training runs with a result, seed by seed in file order (arm names, with the
    /// seed when there are several).
    pub finished: Vec<String>,
    /// Training runs without one yet (named in the report too).
    pub missing: Vec<String>,
}

/// Writes the report from whatever arms of the run have finished (their shards may
/// still be running) and lists the others. Computes nothing.
pub fn assemble_report(
    experiment: &Experiment,
    registry: &Registry,
    registry_text: &str,
    opts: &RunOptions,
) -> Result<ReportSummary, ExpError> {
    let plan = RunPlan::new(experiment, registry_text, opts);
    if !plan.dir.join("manifest.json").exists() {
        return Err(ExpError::Config(format!(
            "{}: no run there yet; start its shards first (tessera reproduce --shard K/N)",
            plan.dir.display()
        )));
    }
    plan.check_shared_dir()?;
    let mut results = Vec::new();
    let (mut finished, mut missing) = (Vec::new(), Vec::new());
    for job in shard::all_jobs(experiment) {
        match plan.finished(job) {
            Some(result) => {
                results.push(result);
                finished.push(run_label(experiment, job));
            }
            None => missing.push(run_label(experiment, job)),
        }
    }
    if results.is_empty() {
        return Err(ExpError::Config(format!(
            "{}: no arm has finished yet ({} missing); nothing to report",
            plan.dir.display(),
            missing.len()
        )));
    }
    write_outputs(experiment, registry, &plan, opts, &results, &missing)?;
    Ok(ReportSummary {
        dir: plan.dir,
        finished,
        missing,
    })
}
