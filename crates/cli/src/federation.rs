//! `tessera coordinator` and `tessera site`: print what `tessera_fl::deploy` reports.
//!
//! Exit codes: 0 when every round completed (coordinator) or the site contributed and
//! was shut down by the coordinator (site); 2 when the federation ran but some rounds
//! aborted; 3 when a site could not do its part (unreachable or refused, coordinator
//! lost, never contributed); 1 for errors.

use std::path::Path;
use std::process::ExitCode;
use tessera_core::LocalTrainingConfig;
use tessera_exp::deploy::{DetectorCoordinator, default_training, site_trainer};
use tessera_fl::deploy::{
    CoordinatorPlan, KnownModel, ModelConfig, Note, SiteFile, known_trainer, run_coordinator,
    run_site_process,
};

fn print(note: Note) {
    match note {
        Note::Listening { addr, sites } => {
            println!("coordinator listening on {addr}; waiting for {sites} sites")
        }
        Note::Plan(p) => match p.degree {
            Some(k) => println!(
                "plan for {} sites: SecAgg+ with degree {k}, threshold {}",
                p.sites, p.threshold
            ),
            None => println!("plan for {} sites: threshold {}", p.sites, p.threshold),
        },
        Note::Joined { names, expected } => println!(
            "{} of {expected} sites joined: {}",
            names.len(),
            names.join(", ")
        ),
        Note::Refused(r) => eprintln!("refused a connection from {}: {}", r.peer, r.reason),
        Note::DuplicateIdentity(site) => {
            eprintln!(
                "{site} connected again while its first link was open; the newer link replaces it"
            )
        }
        Note::Resuming { round } => println!("resuming from the checkpoint at round {round}"),
        Note::AlreadyFinished { rounds, checkpoint } => println!(
            "this federation already finished its {rounds} rounds ({}); nothing to do",
            checkpoint.display()
        ),
        Note::Round(report) => {
            let privacy = report.privacy.as_ref().map_or(String::new(), |p| {
                format!(
                    "; privacy: ρ {:.3e} this round, ε {:.3} spent",
                    p.rho, p.cumulative_epsilon
                )
            });
            let left = if report.left.is_empty() {
                String::new()
            } else {
                format!("; {} left", report.left.len())
            };
            match &report.aborted {
                None => println!(
                    "round {}: {} of {} sites contributed (weight {}){left}{privacy}",
                    report.round,
                    report.contributors.len(),
                    report.participants.len(),
                    report.total_weight
                ),
                Some(cause) => println!("round {}: aborted: {cause}{left}{privacy}", report.round),
            }
            for (site, reason) in &report.withdrawals {
                eprintln!("round {}: {site} withdrew: {reason}", report.round);
            }
            for r in &report.rejected {
                eprintln!(
                    "round {}: refused a message from {}: {}",
                    report.round, r.from, r.reason
                );
            }
        }
        Note::Metrics { round, metrics } => println!("round {round}: evaluation {metrics}"),
        Note::Ledger(path) => println!("privacy ledger: {}", path.display()),
        Note::RoundLog(path) => println!("round log: {}", path.display()),
        Note::Exported(paths) => {
            for p in paths {
                println!("global model: {}", p.display());
            }
        }
        Note::GlobalMean { rounds_ended, mean } => {
            println!("global model after {rounds_ended} rounds: mean parameter {mean:.6}")
        }
        Note::Connecting { addr } => println!("connecting to the coordinator at {addr}"),
    }
}

/// The process's runtime, after the allocator is set to keep the buffers every round
/// allocates again (before any thread starts).
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tessera_fl::allocator::retain_freed_buffers();
    tokio::runtime::Runtime::new().map_err(|e| e.to_string())
}

/// The model's default training settings (the known-update model ignores them).
fn default_training_for(model: &ModelConfig) -> Result<LocalTrainingConfig, String> {
    match model {
        ModelConfig::KnownUpdate { .. } => Ok(LocalTrainingConfig {
            steps: 1,
            batch_size: 1,
            learning_rate: 0.0,
            proximal_mu: 0.0,
            seed: 0,
        }),
        ModelConfig::Detector { .. } => default_training(model).map_err(|e| e.to_string()),
    }
}

pub fn coordinator(config: &Path) -> Result<ExitCode, String> {
    let plan = CoordinatorPlan::load(config, default_training_for).map_err(|e| e.to_string())?;
    let rt = runtime()?;
    let verdict = match &plan.file.model {
        ModelConfig::KnownUpdate { dim } => {
            let mut model = KnownModel::new(*dim).map_err(|e| e.to_string())?;
            rt.block_on(run_coordinator(plan, &mut model, &mut print))
        }
        ModelConfig::Detector { .. } => {
            let mut model = DetectorCoordinator::new(&plan.file.model, plan.file.evaluate.as_ref())
                .map_err(|e| format!("{}: {e}", config.display()))?;
            rt.block_on(run_coordinator(plan, &mut model, &mut print))
        }
    }
    .map_err(|e| e.to_string())?;
    if verdict.aborted > 0 {
        println!(
            "verdict: {} of {} rounds aborted",
            verdict.aborted,
            verdict.aborted + verdict.completed
        );
        return Ok(ExitCode::from(2));
    }
    println!("verdict: {} rounds completed", verdict.completed);
    Ok(ExitCode::SUCCESS)
}

pub fn site(config: &Path) -> Result<ExitCode, String> {
    let cfg = SiteFile::load(config).map_err(|e| e.to_string())?;
    let rt = runtime()?;
    let (summary, end) = match &cfg.model {
        ModelConfig::KnownUpdate { .. } => {
            let trainer = known_trainer(&cfg).map_err(|e| e.to_string())?;
            rt.block_on(run_site_process(&cfg, trainer, &mut print))
        }
        ModelConfig::Detector { .. } => {
            let trainer = site_trainer(&cfg).map_err(|e| format!("{}: {e}", config.display()))?;
            rt.block_on(run_site_process(&cfg, trainer, &mut print))
        }
    }
    .map_err(|e| e.to_string())?;
    for p in &summary.problems {
        let round = p.round.map_or(String::new(), |r| format!("round {r}: "));
        eprintln!("{round}{}", p.failure);
    }
    println!(
        "{} rounds started, {} contributed to",
        summary.rounds_started, summary.rounds_contributed
    );
    match end {
        None => Ok(ExitCode::SUCCESS),
        Some(end) => {
            eprintln!("error: {end}");
            Ok(ExitCode::from(3))
        }
    }
}
