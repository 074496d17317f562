//! The auditor's report: one section per site, in Markdown and JSON.

use std::fmt::Write as _;
use std::path::Path;

use crate::{AuditError, SiteAudit};

/// A Markdown summary of every site's audit.
pub fn markdown(sites: &[SiteAudit]) -> String {
    let mut md = String::from("# Audit report\n\n");
    let total: usize = sites.iter().map(|s| s.findings.len()).sum();
    let _ = writeln!(md, "{} transcript(s), {total} finding(s).\n", sites.len());
    for s in sites {
        let who = s
            .site
            .map_or("unknown site".into(), |id| format!("site {id}"));
        let _ = writeln!(md, "## {who}: `{}`\n", s.file.display());
        let _ = writeln!(
            md,
            "- records: {} ({} anchored by receipts; {} after the last receipt)",
            s.records,
            s.records - s.unanchored,
            s.unanchored
        );
        let _ = writeln!(md, "- rounds admitted: {}", s.rounds.len());
        match s.epsilon {
            Some(e) => {
                let _ = writeln!(md, "- ε spent (site's own ledger, recomputed): {e:.4}");
            }
            None => {
                let _ = writeln!(md, "- ε spent: no differential privacy recorded");
            }
        }
        let _ = writeln!(md, "\n| kind | messages | bytes |\n|---|---:|---:|");
        for (kind, (n, bytes)) in &s.bytes_by_kind {
            let _ = writeln!(md, "| {kind} | {n} | {bytes} |");
        }
        if !s.refusals.is_empty() {
            let _ = writeln!(md, "\nRefusals:\n");
            for (round, key, reason) in &s.refusals {
                let _ = writeln!(md, "- round {round}: `{key}`: {reason}");
            }
        }
        if !s.uniformity.is_empty() {
            let _ = writeln!(
                md,
                "\n| retained upload (record) | values | χ² | p |\n|---:|---:|---:|---:|"
            );
            for u in &s.uniformity {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.1} | {:.3e} |",
                    u.seq, u.values, u.chi_square, u.p_value
                );
            }
        }
        let _ = writeln!(md, "\nFindings: {}\n", s.findings.len());
        for f in &s.findings {
            let _ = writeln!(md, "- {f}");
        }
        md.push('\n');
    }
    md
}

/// Writes `audit.md` and `audit.json` into `dir`.
pub fn write_report(dir: &Path, sites: &[SiteAudit]) -> Result<(), AuditError> {
    let fail = |path: &Path, e: &dyn std::fmt::Display| AuditError::File {
        path: path.to_owned(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(dir, &e))?;
    let md = dir.join("audit.md");
    write(&md, markdown(sites).as_bytes()).map_err(|e| fail(&md, &e))?;
    let json_path = dir.join("audit.json");
    let json = serde_json::to_vec_pretty(sites).map_err(|e| fail(&json_path, &e))?;
    write(&json_path, &json).map_err(|e| fail(&json_path, &e))
}

fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    tessera_core::atomic::write_atomic(path, bytes)
}
