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
    /// Decrypt a packet capture of a site's QUIC traffic with tshark and the site's TLS
    /// key log, and check that every message the site sent is in its transcript.
    /// Exit 0 when clean, 2 with one line per finding.
    Wire(WireArgs),
}

#[derive(clap::Args)]
pub struct WireArgs {
    /// The capture (pcap or pcapng), e.g. from `dumpcap -i IFACE -f "udp port PORT"`.
    #[arg(long)]
    capture: PathBuf,
    /// The TLS key log the site wrote (`keylog = true`, SSLKEYLOGFILE).
    #[arg(long)]
    keylog: PathBuf,
    /// The site's transcript.
    #[arg(long)]
    transcript: PathBuf,
    /// The federation's PKI folder (roster.json and ca.pem).
    #[arg(long, default_value = "pki")]
    pki: PathBuf,
    /// The site's address (IP or IP:port): its connections missing from the key log
    /// are findings.
    #[arg(long)]
    site: Option<String>,
    /// The tshark to run.
    #[arg(long, default_value = "tshark")]
    tshark: PathBuf,
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

fn wire(args: &WireArgs) -> Result<ExitCode, String> {
    let inputs = tessera_audit::wire::WireInputs {
        capture: args.capture.clone(),
        keylog: args.keylog.clone(),
        transcript: args.transcript.clone(),
        pki: args.pki.clone(),
        site: args.site.clone(),
        tshark: args.tshark.clone(),
    };
    let w = tessera_audit::wire::audit_wire(&inputs).map_err(|e| e.to_string())?;
    for f in &w.findings {
        println!("{f}");
    }
    let covered = w.connections.iter().filter(|c| c.covered).count();
    println!(
        "{}: {covered} of {} connections are the site's; {} packets from it ({} not decrypted), \
         {} stream bytes, {} messages, {} matched to the transcript ({} recorded messages not in the capture)",
        args.capture.display(),
        w.connections.len(),
        w.packets,
        w.undecrypted,
        w.stream_bytes,
        w.messages,
        w.matched,
        w.recorded_not_seen
    );
    Ok(if w.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("{} finding(s)", w.findings.len());
        ExitCode::from(2)
    })
}

pub fn run(cmd: &AuditCommand) -> Result<ExitCode, String> {
    match cmd {
        AuditCommand::Wire(args) => wire(args),
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
