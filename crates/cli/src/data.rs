//! `tessera data synth` and `tessera data check`.

use clap::{Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Instant;
use tessera_data::{Registry, Resolution, check, synthesize};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Write the registry's synthetic cohorts as NIfTI volumes and masks.
    Synth {
        /// The registry of sites and cohorts.
        #[arg(long, default_value = "datasets.toml")]
        registry: PathBuf,
        /// Folder receiving one sub-folder per synthetic cohort [default: where
        /// `tessera reproduce` looks: data/synthetic-small, or data/synthetic-full with
        /// --resolution full].
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = ResolutionArg::Small)]
        resolution: ResolutionArg,
    },
    /// Validate the registry and every file it names.
    Check {
        #[arg(long, default_value = "datasets.toml")]
        registry: PathBuf,
        /// Folder holding the synthetic cohorts (as `data synth` and `reproduce` write
        /// them; data/synthetic-full for the full profile).
        #[arg(long, default_value = "data/synthetic-small")]
        data: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ResolutionArg {
    /// ≈128² matrix, 2× slice thickness: CPU-sized.
    Small,
    /// The acquisition's own ≈512² grid.
    Full,
}

pub fn run(cmd: &DataCommand) -> Result<(), String> {
    match cmd {
        DataCommand::Synth {
            registry,
            out,
            resolution,
        } => {
            let reg = Registry::load(registry).map_err(|e| e.to_string())?;
            let (resolution, default_out) = match resolution {
                ResolutionArg::Small => (Resolution::Small, "data/synthetic-small"),
                ResolutionArg::Full => (Resolution::Full, "data/synthetic-full"),
            };
            let out = &out.clone().unwrap_or_else(|| default_out.into());
            let start = Instant::now();
            let report = synthesize(&reg, out, resolution).map_err(|e| e.to_string())?;
            for id in &report.written {
                println!("wrote   {}", out.join(id).display());
            }
            for id in &report.reused {
                println!(
                    "reused  {} (already complete with the same parameters)",
                    out.join(id).display()
                );
            }
            println!(
                "{} cohorts in {:.1} s (synthetic data)",
                report.written.len() + report.reused.len(),
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
        DataCommand::Check { registry, data } => {
            let reg = Registry::load(registry).map_err(|e| e.to_string())?;
            let (problems, checked) = check(&reg, data);
            for p in &problems {
                println!("problem: {p}");
            }
            if problems.is_empty() {
                println!(
                    "{}: {} cohorts, {checked} scans, all volumes and masks readable and consistent",
                    registry.display(),
                    reg.cohorts.len()
                );
                Ok(())
            } else {
                Err(format!(
                    "{} problem(s) in {} ({checked} scans checked)",
                    problems.len(),
                    registry.display()
                ))
            }
        }
    }
}
