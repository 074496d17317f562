//! `tessera reproduce`: run an experiment file (the study by default) and write its
//! tables, figures and write-up.

use clap::ValueEnum;
use std::path::PathBuf;
use tessera_exp::{
    Experiment, ProfileName, RunOptions, SiteProcesses, external_map, load_registry, run,
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
    /// Where the report goes [default: paper/ for the study, paper/<name>/ otherwise].
    #[arg(long)]
    report: Option<PathBuf>,
}

pub fn run_command(args: &ReproduceArgs) -> Result<(), String> {
    let (registry, registry_text) = load_registry(&args.registry).map_err(|e| e.to_string())?;
    let path = Experiment::file_for(&args.experiment);
    let experiment = Experiment::load(&path, &registry).map_err(|e| e.to_string())?;
    let report = args
        .report
        .clone()
        .unwrap_or_else(|| experiment.default_report_dir());
    let profile = match args.profile {
        ProfileArg::Quick => ProfileName::Quick,
        ProfileArg::Full => ProfileName::Full,
    };
    println!(
        "experiment {} ({} arms), profile {}",
        experiment.name,
        experiment.arms.len(),
        profile.name()
    );
    let start = std::time::Instant::now();
    let summary = run(
        &experiment,
        &registry,
        &registry_text,
        &RunOptions {
            profile,
            data_root: args.data.clone(),
            runs_root: args.runs.clone(),
            report_dir: Some(report.clone()),
            stop_after: None,
            progress: true,
            site_processes: SiteProcesses {
                binary: std::env::current_exe().ok(),
                registry: Some(args.registry.clone()),
            },
        },
    )
    .map_err(|e| e.to_string())?;
    println!("arm | external mean mAP");
    for r in &summary.results {
        println!(
            "{} | {}",
            r.arm.name,
            external_map(r).map_or("–".into(), |v| format!("{v:.3}"))
        );
    }
    println!(
        "{} arms computed, {} reused from the cache, in {:.0} s; run directory {}, report in {}",
        summary.computed,
        summary.reused,
        start.elapsed().as_secs_f64(),
        summary.dir.display(),
        report.display()
    );
    Ok(())
}
