//! `tessera reproduce`: run an experiment file (the study by default) and write its
//! tables, figures and write-up.

use clap::ValueEnum;
use std::path::PathBuf;
use tessera_exp::slurm::{SlurmJob, submit, write_scripts};
use tessera_exp::{
    Experiment, ProfileName, RunOptions, Shard, SiteProcesses, assemble_report, external_map,
    in_checkout, load_registry, run, shard,
};

#[derive(Clone, Copy, ValueEnum)]
pub enum ProfileArg {
    /// Tiny detector at 128², minutes on 2 CPU cores.
    Quick,
    /// The study's scale (512², VGG19-like, 30 × 100 steps); a GPU is recommended.
    Full,
}

#[derive(clap::Args)]
pub struct ReproduceArgs {
    #[arg(long, value_enum, default_value_t = ProfileArg::Quick)]
    profile: ProfileArg,
    /// An experiment name (experiments/<name>.toml) or the path of a TOML file.
    #[arg(default_value = "paper")]
    experiment: String,
    /// The registry of sites and cohorts.
    #[arg(long, default_value = "datasets.toml")]
    registry: PathBuf,
    /// Where synthetic cohorts are kept (written when missing).
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Where run directories go.
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// Train every arm with N seeds (the experiment's seed, seed + 1, …) [default: the
    /// experiment file's `seeds`, else 1]; tables then give mean ± SD over seeds.
    #[arg(long, value_name = "N")]
    seeds: Option<usize>,
    /// Where the report goes [default: paper/ for the study, paper/<name>/ otherwise].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run only shard K of N (K/N) into the shared run directory; no report.
    #[arg(long, value_name = "K/N", conflicts_with_all = ["report", "slurm"])]
    shard: Option<String>,
    /// Write the report from whatever arms have finished, and list the missing ones.
    #[arg(long, conflicts_with = "slurm")]
    report: bool,
    /// Write a Slurm job array (one task per shard) and a report job, under
    /// <runs>/<experiment>-<profile>/slurm/.
    #[arg(long)]
    slurm: bool,
    /// With --slurm: the number of shards [default: one per group of arms].
    #[arg(long, requires = "slurm")]
    shards: Option<usize>,
    /// With --slurm: submit both scripts with sbatch.
    #[arg(long, requires = "slurm")]
    submit: bool,
    /// With --slurm: an extra #SBATCH argument (repeatable), e.g. --sbatch=--partition=gpu.
    #[arg(long = "sbatch", requires = "slurm", allow_hyphen_values = true)]
    sbatch_args: Vec<String>,
}

fn profile_of(arg: ProfileArg) -> ProfileName {
    match arg {
        ProfileArg::Quick => ProfileName::Quick,
        ProfileArg::Full => ProfileName::Full,
    }
}

pub fn run_command(args: &ReproduceArgs) -> Result<(), String> {
    let registry_path = in_checkout(&args.registry);
    let (registry, registry_text) = load_registry(&registry_path).map_err(|e| e.to_string())?;
    let path = Experiment::locate(&args.experiment).map_err(|e| e.to_string())?;
    let mut experiment = Experiment::load(&path, &registry).map_err(|e| e.to_string())?;
    if let Some(n) = args.seeds {
        experiment = experiment.with_seeds(n).map_err(|e| e.to_string())?;
    }
    let report = args
        .out
        .clone()
        .unwrap_or_else(|| experiment.default_report_dir());
    let profile = profile_of(args.profile);
    let shard = args
        .shard
        .as_deref()
        .map(str::parse::<Shard>)
        .transpose()
        .map_err(|e| e.to_string())?;
    let opts = RunOptions {
        profile,
        data_root: args.data.clone(),
        runs_root: args.runs.clone(),
        report_dir: Some(report.clone()),
        stop_after: None,
        progress: shard.is_none(),
        site_processes: SiteProcesses {
            binary: std::env::current_exe().ok(),
            registry: Some(registry_path.clone()),
        },
        shard,
    };
    if args.slurm {
        return slurm_command(args, &experiment, &opts, &report);
    }
    if args.report {
        let done = assemble_report(&experiment, &registry, &registry_text, &opts)
            .map_err(|e| e.to_string())?;
        println!(
            "report in {} from {} of {} training runs; missing: {}",
            report.display(),
            done.finished.len(),
            experiment.arms.len() * experiment.seeds,
            if done.missing.is_empty() {
                "none".into()
            } else {
                done.missing.join(", ")
            }
        );
        return Ok(());
    }
    println!(
        "experiment {} ({} arms × {} seeds), profile {}",
        experiment.name,
        experiment.arms.len(),
        experiment.seeds,
        profile.name()
    );
    let start = std::time::Instant::now();
    let summary = run(&experiment, &registry, &registry_text, &opts).map_err(|e| e.to_string())?;
    if let Some(shard) = shard {
        println!(
            "shard {shard}: {} training runs computed, {} reused, in {:.0} s; run directory {}",
            summary.computed,
            summary.reused,
            start.elapsed().as_secs_f64(),
            summary.dir.display()
        );
        return Ok(());
    }
    println!("arm | seed | external mean mAP (strict)");
    for r in &summary.results {
        println!(
            "{} | {} | {}",
            r.arm.name,
            r.seed,
            external_map(r).map_or("–".into(), |v| format!("{v:.3}"))
        );
    }
    println!(
        "{} training runs computed, {} reused from the cache, in {:.0} s; run directory {}, report in {}",
        summary.computed,
        summary.reused,
        start.elapsed().as_secs_f64(),
        summary.dir.display(),
        report.display()
    );
    Ok(())
}

fn absolute(p: &std::path::Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// `--slurm`: the job scripts (and, with `--submit`, their submission).
fn slurm_command(
    args: &ReproduceArgs,
    experiment: &Experiment,
    opts: &RunOptions,
    report: &std::path::Path,
) -> Result<(), String> {
    let experiment_path = Experiment::locate(&args.experiment).map_err(|e| e.to_string())?;
    let shards = args.shards.unwrap_or_else(|| shard::units(experiment));
    let profile = match args.profile {
        ProfileArg::Quick => "quick",
        ProfileArg::Full => "full",
    };
    let job = SlurmJob {
        binary: std::env::current_exe().map_err(|e| format!("this executable: {e}"))?,
        workdir: std::env::current_dir().map_err(|e| format!("working directory: {e}"))?,
        args: vec![
            "--profile".into(),
            profile.into(),
            "--registry".into(),
            absolute(&in_checkout(&args.registry))?
                .display()
                .to_string(),
            "--data".into(),
            absolute(&args.data)?.display().to_string(),
            "--runs".into(),
            absolute(&args.runs)?.display().to_string(),
            "--out".into(),
            absolute(report)?.display().to_string(),
            "--seeds".into(),
            experiment.seeds.to_string(),
            absolute(&experiment_path)?.display().to_string(),
        ],
        shards,
        name: experiment.name.clone(),
        sbatch_args: args.sbatch_args.clone(),
    };
    let dir = opts
        .runs_root
        .join(format!("{}-{profile}", experiment.name))
        .join("slurm");
    let scripts = write_scripts(&job, &dir).map_err(|e| e.to_string())?;
    println!(
        "{} shards of {} arms × {} seeds: {} and {}",
        shards,
        experiment.arms.len(),
        experiment.seeds,
        scripts.array.display(),
        scripts.report.display()
    );
    if args.submit {
        let (array, report_job) = submit(&scripts).map_err(|e| e.to_string())?;
        println!("submitted job array {array} and report job {report_job}");
    } else {
        println!(
            "submit with: sbatch {} && sbatch --dependency=afterany:<array job id> {}",
            scripts.array.display(),
            scripts.report.display()
        );
    }
    Ok(())
}
