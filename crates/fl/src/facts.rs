//! What a site writes into its transcript about itself and each round it answers: the
//! facts an auditor needs to judge what left it (see `crates/net/TRANSCRIPT.md`).

use std::path::Path;
use std::sync::Arc;
use tessera_dp::LedgerEntry;
use tessera_net::transcript::{
    DpCharge, Durability, FORMAT, OpenFacts, RoundFacts, TranscriptWriter, hex,
};
use tessera_secagg::{GraphSpec, IdentityKeyPair, RoundConfig, SiteId};

use crate::config::session_hex;
use crate::error::FlError;
use crate::policy::{SitePolicy, site_noise};
use crate::wire::RoundStart;

/// The roster a site trusts: its signed version and the SHA-256 of its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterFacts {
    pub version: u64,
    pub sha256: String,
}

impl RosterFacts {
    /// The roster file at `path`, with the version it carries.
    pub fn of_file(path: &Path, version: u64) -> Result<Self, FlError> {
        let bytes = std::fs::read(path).map_err(FlError::io(path))?;
        Ok(Self {
            version,
            sha256: tessera_net::transcript::sha256_hex(&bytes),
        })
    }

    /// Simulations without a PKI folder: version 0, hash of nothing.
    pub fn unsigned() -> Self {
        Self {
            version: 0,
            sha256: "0".repeat(64),
        }
    }
}

/// SHA-256 (hex) of the policy as JSON (its fields in declaration order).
pub fn policy_digest(policy: &SitePolicy) -> Result<String, FlError> {
    let json = serde_json::to_vec(policy).map_err(|e| FlError::Config {
        key: "policy",
        message: format!("does not serialise: {e}"),
    })?;
    Ok(tessera_net::transcript::sha256_hex(&json))
}

/// Opens a site's transcript, recording what it trusts and allows.
pub fn open_transcript(
    path: &Path,
    identity: Arc<IdentityKeyPair>,
    site: SiteId,
    roster: &RosterFacts,
    policy: &SitePolicy,
    keep_payloads: bool,
    durability: Durability,
) -> Result<TranscriptWriter, FlError> {
    let open = OpenFacts {
        format: FORMAT,
        site: site.0,
        roster_version: roster.version,
        roster_sha256: roster.sha256.clone(),
        policy_sha256: policy_digest(policy)?,
        keep_payloads,
    };
    Ok(TranscriptWriter::open(path, identity, open, durability)?)
}

/// The parameters a site obeys in `start`, with what its own ledger charged.
pub(crate) fn round_facts(
    start: &RoundStart,
    charge: Option<(&str, &LedgerEntry, f64)>,
) -> Result<RoundFacts, FlError> {
    let p = &start.params;
    let config = RoundConfig::new(p.clone())?;
    let protocol = match (&p.graph, start.secure) {
        (_, false) => "plaintext",
        (GraphSpec::Complete, true) => "secagg",
        (GraphSpec::RandomRegular { .. }, true) => "secagg-plus",
    };
    let degree = match p.graph {
        GraphSpec::Complete => None,
        GraphSpec::RandomRegular { degree, .. } => Some(degree),
    };
    let (_, noise_per_clip) = site_noise(start);
    let dp = charge.map(|(mechanism, e, delta)| DpCharge {
        mechanism: mechanism.into(),
        noise: e.noise,
        noise_per_clip,
        guaranteed_contributors: e.guaranteed_contributors,
        rho: e.rho,
        epsilon_after: e.cumulative_epsilon,
        delta,
        sampling_rate: e.sampling_rate,
    });
    Ok(RoundFacts {
        session: session_hex(&p.session.0),
        round: p.round.0,
        params_sha256: hex(config.digest()),
        context: hex(&p.context),
        protocol: protocol.into(),
        secure: start.secure,
        participants: p.participants.iter().map(|s| s.0).collect(),
        threshold: p.threshold,
        degree,
        vector_len: p.vector_len,
        modulus_bits: p.modulus.bits(),
        dp,
    })
}
