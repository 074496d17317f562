//! # tessera-audit: what left each site, proven from its signed transcript
//!
//! An auditor collects from each site its transcript (and, with `keep_payloads`, the
//! masked uploads kept beside it), from the coordinator its receipts file, and from the
//! CA the PKI folder (`ca.pem`, `coordinator.pem`, `roster.json`). [`audit`] then checks,
//! for every transcript, and reports one [`Finding`] per problem:
//!
//! - **chain**: every record's sequence number, link to its predecessor and Ed25519
//!   signature by the site's key in the CA-signed roster;
//! - **anchor**: every receipt (in the transcript, and the coordinator's latest) is
//!   signed by the coordinator whose certificate the CA signed, and covers records that
//!   are present and unaltered — a transcript cut below a receipt is caught;
//! - **policy**: the site ran under the policy given (digest), and every message kind is
//!   one that policy allows (no `plain-update` where secure aggregation is required);
//!   every message belongs to a round the site recorded admitting;
//! - **size**: every message is exactly the size (or within the tight range) that its
//!   round's parameters imply, so no side channel of extra bytes;
//! - **context**: across several sites, one context digest and one parameter digest per
//!   round (a split view shows here);
//! - **privacy**: the site's ε recomputed from its per-round ρ, its mechanism and noise
//!   per unit of clip against the policy's floor and budget;
//! - **uniformity**: retained masked uploads are tested for uniformity (χ² over 256
//!   bins of the top bits, p-value reported; finding below 10^-6).
//!
//! [`wire::audit_wire`] checks a transcript against a packet capture of the site's QUIC
//! traffic, decrypted with tshark and the site's TLS key log: every message on the wire
//! must be a transcript record.
//!
//! What it cannot prove: that the site's *inputs* were honest (a transcript proves what
//! was sent, not what was computed), nor what left by a path the capture did not see.

mod checks;
mod report;
pub mod sizes;
mod uniformity;
pub mod wire;

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tessera_fl::SitePolicy;
use tessera_net::pki::SignedRoster;
use tessera_net::receipt::{Receipt, ReceiptVerifier};
use thiserror::Error;

pub use report::{markdown, write_report};
pub use uniformity::{chi_square_p, uniformity};

/// Input the audit cannot start without; each names the file.
#[derive(Debug, Error)]
pub enum AuditError {
    #[error("{0}")]
    Pki(#[from] tessera_net::pki::PkiError),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

/// One problem found, naming the transcript, the record and the check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub file: PathBuf,
    pub seq: Option<u64>,
    pub check: &'static str,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(seq) => write!(
                f,
                "{}, record {seq}: [{}] {}",
                self.file.display(),
                self.check,
                self.message
            ),
            None => write!(
                f,
                "{}: [{}] {}",
                self.file.display(),
                self.check,
                self.message
            ),
        }
    }
}

/// A retained masked upload's uniformity test.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Uniformity {
    pub seq: u64,
    pub values: usize,
    pub chi_square: f64,
    pub p_value: f64,
}

/// What one site's transcript shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SiteAudit {
    pub file: PathBuf,
    pub site: Option<u32>,
    pub records: usize,
    /// Rounds admitted, as (session, round).
    pub rounds: Vec<(String, u64)>,
    /// Each admitted round's context and parameter digests (beside `rounds`).
    #[serde(skip)]
    pub views: Vec<String>,
    /// Messages and bytes sent, by kind.
    pub bytes_by_kind: BTreeMap<String, (u64, u64)>,
    pub epsilon: Option<f64>,
    /// (round, policy key, reason).
    pub refusals: Vec<(u64, String, String)>,
    pub receipts: usize,
    /// Records after the last receipt, other than the head it answered and receipts:
    /// not anchored (a site that stopped mid-round, or a head never answered).
    pub unanchored: usize,
    pub uniformity: Vec<Uniformity>,
    pub findings: Vec<Finding>,
}

/// What the auditor supplies.
pub struct Inputs {
    /// The PKI folder: `ca.pem`, `roster.json`, `coordinator.pem`.
    pub pki: PathBuf,
    /// The site's policy (a site config file with `[policy]`, or a policy table);
    /// the deployment default when absent.
    pub policy: Option<PathBuf>,
    /// The coordinator's receipts file (`<checkpoint>.receipts.json`).
    pub receipts: Option<PathBuf>,
    pub transcripts: Vec<PathBuf>,
}

/// Everything the auditor was given, loaded and checked.
pub(crate) struct Trust {
    pub roster: SignedRoster,
    pub coordinator: ReceiptVerifier,
    pub policy: SitePolicy,
    pub policy_given: bool,
    pub latest: BTreeMap<u32, Receipt>,
}

pub(crate) fn file_error(path: &Path, message: impl ToString) -> AuditError {
    AuditError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// Reads a policy from a site config (`[policy]`) or a bare policy table.
pub fn load_policy(path: &Path) -> Result<SitePolicy, AuditError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| file_error(path, e))?;
    // A site config without `[policy]` runs the default policy.
    let is_site_config = ["coordinator", "pki", "transcript"]
        .iter()
        .any(|k| table.contains_key(*k));
    let policy = match table.get("policy") {
        Some(p) => p.clone(),
        None if is_site_config => toml::Value::Table(toml::Table::new()),
        None => toml::Value::Table(table),
    };
    let policy: SitePolicy = policy.try_into().map_err(|e| file_error(path, e))?;
    policy.validate().map_err(|e| file_error(path, e))?;
    Ok(policy)
}

fn load_trust(inputs: &Inputs) -> Result<Trust, AuditError> {
    let pki = &inputs.pki;
    let roster = SignedRoster::load(&pki.join("roster.json"), &pki.join("ca.pem"))?;
    let coordinator = ReceiptVerifier::load(&pki.join("coordinator.pem"), &pki.join("ca.pem"))?;
    let (policy, policy_given) = match &inputs.policy {
        Some(p) => (load_policy(p)?, true),
        None => (SitePolicy::default(), false),
    };
    let latest = match &inputs.receipts {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| file_error(path, e))?;
            serde_json::from_slice(&bytes).map_err(|e| file_error(path, e))?
        }
        None => BTreeMap::new(),
    };
    Ok(Trust {
        roster,
        coordinator,
        policy,
        policy_given,
        latest,
    })
}

/// Audits every transcript; an error only when the trust anchors cannot be read.
pub fn audit(inputs: &Inputs) -> Result<Vec<SiteAudit>, AuditError> {
    let trust = load_trust(inputs)?;
    let mut sites: Vec<SiteAudit> = inputs
        .transcripts
        .iter()
        .map(|t| checks::site(&trust, t))
        .collect();
    checks::across_sites(&mut sites);
    Ok(sites)
}
