//! `tessera`: the command-line front end. Argument parsing and reporting only; the work
//! happens in the library crates.

mod data;
mod federation;
mod pki;
mod reproduce;
mod simulate;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Privacy-preserving federated learning research framework"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reproduce the study (or run another experiment file): train and evaluate every
    /// arm, then write tables, figures and a write-up.
    Reproduce(reproduce::ReproduceArgs),
    /// Run secure-aggregation rounds between simulated sites in this process, with
    /// random dropouts, and check the unmasked weighted mean against the plaintext one.
    Simulate(simulate::SimulateArgs),
    /// Synthetic cohorts and dataset checks.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// The federation's CA, certificates and signed roster.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// Run a federation's coordinator over QUIC with mutual TLS.
    Coordinator {
        #[arg(long)]
        config: std::path::PathBuf,
    },
    /// Run one site of a federation.
    Site {
        #[arg(long)]
        config: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Reproduce(args) => reproduce::run_command(&args),
        Command::Simulate(args) => simulate::run(&args),
        Command::Data(cmd) => data::run(&cmd),
        Command::Pki(cmd) => pki::run(&cmd),
        Command::Coordinator { config } => federation::coordinator(&config),
        Command::Site { config } => federation::site(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
