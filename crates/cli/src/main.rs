//! `tessera`: the command-line front end. Argument parsing and reporting only; the work
//! happens in the library crates.

mod audit;
mod data;
mod federation;
mod pki;
mod privacy;
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
    /// ε for a privacy configuration, or the noise a target ε needs, without running
    /// anything (accountants: pld, rdp, zcdp, best).
    #[command(subcommand)]
    Privacy(privacy::PrivacyCommand),
    /// The federation's CA, certificates and signed roster.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// Run a federation's coordinator over QUIC with mutual TLS. Every key of the
    /// config file is explained in examples/coordinator.toml. Exit 0: every round
    /// completed; 2: some rounds aborted; 1: error.
    Coordinator {
        #[arg(long)]
        config: std::path::PathBuf,
    },
    /// Audit sites' signed transcripts: chain, receipts, policy, sizes, context
    /// digests across sites, privacy ledgers and retained masked uploads.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Run one site of a federation. Every key of the config file is explained in
    /// examples/site.toml. Exit 0: contributed and shut down by the coordinator; 3: could
    /// not do its part (unreachable or refused, coordinator lost, never contributed).
    Site {
        #[arg(long)]
        config: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    // SAFETY: first statement of main; no other thread exists yet.
    unsafe { tessera_train::pin_cpu_kernels() };
    let cli = Cli::parse();
    let ok = |r: Result<(), String>| r.map(|()| ExitCode::SUCCESS);
    let result = match cli.command {
        Command::Reproduce(args) => ok(reproduce::run_command(&args)),
        Command::Simulate(args) => simulate::run_command(&args),
        Command::Data(cmd) => ok(data::run(&cmd)),
        Command::Pki(cmd) => ok(pki::run(&cmd)),
        Command::Privacy(cmd) => ok(privacy::run(&cmd)),
        Command::Coordinator { config } => federation::coordinator(&config),
        Command::Site { config } => federation::site(&config),
        Command::Audit(cmd) => audit::run(&cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
