//! `tessera audit verify|report`: checks sites' signed transcripts against the PKI, the
//! coordinator's receipts and the sites' policy (see `crates/audit`).

use std::path::PathBuf;
use std::process::ExitCode;
use tessera_audit::{Inputs, SiteAudit, audit, write_report};

#[derive(clap::Args)]
pub struct AuditArgs {
    /// The federation's PKI folder (ca.pem, roster.json and coordinator.pem are read).
    #[arg(long, default_value = "pki")]
    pki: PathBuf,
    /// The sites' policy: a site config file with [policy], or a policy table
    /// (default: the deployment default policy).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The coordinator's receipts file (<checkpoint>.receipts.json), to catch a
    /// transcript cut below the coordinator's latest receipt.
    #[arg(long)]
    receipts: Option<PathBuf>,
    /// The sites' transcripts (give several to compare their views of each round).
    #[arg(required = true)]
    transcripts: Vec<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Check every transcript; exit 0 when clean, 2 with one line per finding.
    Verify(AuditArgs),
    /// Write a per-site summary (audit.md and audit.json) into --out, then verify.
    Report {
        #[command(flatten)]
        args: AuditArgs,
        #[arg(long)]
        out: PathBuf,
    },
}

fn run_audit(args: &AuditArgs) -> Result<Vec<SiteAudit>, String> {
    let inputs = Inputs {
        pki: args.pki.clone(),
        policy: args.policy.clone(),
        receipts: args.receipts.clone(),
        transcripts: args.transcripts.clone(),
    };
    audit(&inputs).map_err(|e| e.to_string())
}

fn verdict(sites: &[SiteAudit]) -> ExitCode {
    let mut findings = 0;
    for s in sites {
        for f in &s.findings {
            println!("{f}");
            findings += 1;
        }
        if s.findings.is_empty() {
            let kinds: Vec<String> = s
                .bytes_by_kind
                .iter()
                .map(|(k, (n, b))| format!("{k} {n}×/{b} B"))
                .collect();
            println!(
                "{}: clean — {} records, {} receipts, {} rounds; sent {}",
                s.file.display(),
                s.records,
                s.receipts,
                s.rounds.len(),
                kinds.join(", ")
            );
        }
    }
    if findings == 0 {
        ExitCode::SUCCESS
    } else {
        println!("{findings} finding(s)");
        ExitCode::from(2)
    }
}

pub fn run(cmd: &AuditCommand) -> Result<ExitCode, String> {
    match cmd {
        AuditCommand::Verify(args) => Ok(verdict(&run_audit(args)?)),
        AuditCommand::Report { args, out } => {
            let sites = run_audit(args)?;
            write_report(out, &sites).map_err(|e| e.to_string())?;
            println!(
                "wrote {} and {}",
                out.join("audit.md").display(),
                out.join("audit.json").display()
            );
            Ok(verdict(&sites))
        }
    }
}
