//! A site's egress transcript (format v2, specified in `crates/net/TRANSCRIPT.md`): one
//! signed, hash-chained record per event that matters to an auditor.
//!
//! Records say what the site trusted and allowed when it started (`open`), the round
//! parameters and context digest it obeyed (`round`), every message it handed to the
//! transport (`message`: kind, round, phase, size and SHA-256 of the exact bytes), every
//! round it refused and why (`refusal`), and the coordinator's signed receipts of the
//! transcript's head (`receipt`), which anchor it: a record removed below a receipt, or
//! a tail cut below the coordinator's latest receipt, is detected. Each record is
//! appended and synced before the message leaves. A crash mid-write leaves a torn last
//! line; reopening keeps it aside in `<file>.torn-<seq>` and continues from the last
//! whole record.

mod writer;

use ring::digest;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tessera_secagg::{IdentityPublicKey, Signature};
use thiserror::Error;

pub use crate::receipt::Receipt;
pub use writer::{Durability, TranscriptWriter};

/// The format version written in every `open` record.
pub const FORMAT: u32 = 2;
const LABEL: &str = "tessera/transcript/v2";

#[derive(Debug, Error)]
pub enum TranscriptError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {message}")]
    Malformed {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}, record {seq}: {problem}")]
    Broken {
        path: PathBuf,
        seq: u64,
        problem: &'static str,
    },
    #[error("{path}: signing failed: {message}")]
    Signing { path: PathBuf, message: String },
}

/// What a site trusted and allowed when it (re)started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenFacts {
    pub format: u32,
    pub site: u32,
    pub roster_version: u64,
    /// SHA-256 (hex) of the roster file's bytes.
    pub roster_sha256: String,
    /// SHA-256 (hex) of the site's policy as canonical JSON.
    pub policy_sha256: String,
    /// Whether masked uploads are kept beside the transcript (never plaintext).
    pub keep_payloads: bool,
}

/// The noise a site added in a round and what its own ledger charged for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpCharge {
    pub mechanism: String,
    /// Per-site noise in grid units (σ or μ), and per unit of L2 clip.
    pub noise: f64,
    pub noise_per_clip: f64,
    pub guaranteed_contributors: usize,
    /// zCDP ρ of the round and ε at `delta` after it, as the site's ledger accounts.
    pub rho: f64,
    pub epsilon_after: f64,
    pub delta: f64,
    /// Poisson sampling rate of the privacy unit (1: the site unit, no amplification).
    #[serde(default = "full_rate", skip_serializing_if = "is_full_rate")]
    pub sampling_rate: f64,
}

fn full_rate() -> f64 {
    1.0
}

fn is_full_rate(q: &f64) -> bool {
    *q == 1.0
}

/// The parameters a site obeyed in one round: what fixes the size of everything it
/// sends, and the context digest that its signatures bind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundFacts {
    /// Hex of the 16-byte session id.
    pub session: String,
    pub round: u64,
    /// Hex of the round parameters' digest (what secure-aggregation signatures cover).
    pub params_sha256: String,
    /// Hex of the context digest (codec, noise, model, training, strategy, protocol).
    pub context: String,
    pub protocol: String,
    pub secure: bool,
    pub participants: Vec<u32>,
    pub threshold: u32,
    /// SecAgg+ degree; `None` for the complete graph.
    pub degree: Option<u32>,
    pub vector_len: u32,
    pub modulus_bits: u8,
    pub dp: Option<DpCharge>,
}

/// One transcript event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Entry {
    Open(OpenFacts),
    Round(RoundFacts),
    Message {
        session: String,
        round: u64,
        kind: String,
        phase: String,
        size: u64,
        /// SHA-256 (hex) of the exact bytes handed to the transport.
        sha256: String,
    },
    Refusal {
        session: String,
        round: u64,
        /// The policy key the round broke.
        key: String,
        reason: String,
    },
    Receipt(Receipt),
}

/// One line of the transcript.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub seq: u64,
    /// SHA-256 (hex) of the previous record's signed bytes; 64 zeros for the first.
    pub prev: String,
    pub entry: Entry,
    /// Ed25519 (hex) by the site's identity key over the signed bytes.
    pub sig: String,
}

#[derive(Serialize)]
struct Signed<'a> {
    label: &'static str,
    seq: u64,
    prev: &'a str,
    entry: &'a Entry,
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

pub(crate) fn zero_hash() -> String {
    "0".repeat(64)
}

impl Record {
    /// The bytes the signature and the next record's `prev` cover: compact JSON of
    /// the label, `seq`, `prev` and the entry, fields in declaration order.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        signed_bytes(self.seq, &self.prev, &self.entry)
    }

    /// SHA-256 (hex) of the signed bytes.
    pub fn hash(&self) -> Result<String, serde_json::Error> {
        Ok(sha256_hex(&self.signed_bytes()?))
    }
}

fn signed_bytes(seq: u64, prev: &str, entry: &Entry) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&Signed {
        label: LABEL,
        seq,
        prev,
        entry,
    })
}

fn unhex64(s: &str) -> Option<[u8; 64]> {
    if s.len() != 128 {
        return None;
    }
    let mut out = [0u8; 64];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A transcript whose every record verified.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verified {
    pub records: Vec<Record>,
    /// Each record's hash (what the next record's `prev` and a receipt's `head` hold).
    pub hashes: Vec<String>,
    /// Hash of the last record (zeros when empty).
    pub head: String,
}

impl Verified {
    /// (message count, bytes) per message kind.
    pub fn bytes_by_kind(&self) -> std::collections::BTreeMap<String, (u64, u64)> {
        let mut out = std::collections::BTreeMap::<String, (u64, u64)>::new();
        for r in &self.records {
            if let Entry::Message { kind, size, .. } = &r.entry {
                let e = out.entry(kind.clone()).or_default();
                e.0 += 1;
                e.1 += size;
            }
        }
        out
    }
}

/// Reads a transcript and checks every record's sequence number, link to its
/// predecessor and signature. A torn last line (no newline) is an error here: only the
/// writer repairs, keeping it aside.
pub fn verify(path: &Path, key: &IdentityPublicKey) -> Result<Verified, TranscriptError> {
    let bytes = std::fs::read(path).map_err(|source| TranscriptError::Io {
        path: path.to_owned(),
        source,
    })?;
    verify_bytes(path, &bytes, key)
}

pub(crate) fn verify_bytes(
    path: &Path,
    bytes: &[u8],
    key: &IdentityPublicKey,
) -> Result<Verified, TranscriptError> {
    let malformed = |line: usize, message: String| TranscriptError::Malformed {
        path: path.to_owned(),
        line,
        message,
    };
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        let line = bytes.iter().filter(|b| **b == b'\n').count() + 1;
        return Err(malformed(line, "torn last line (no newline)".into()));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| malformed(0, e.to_string()))?;
    let mut out = Verified {
        records: Vec::new(),
        hashes: Vec::new(),
        head: zero_hash(),
    };
    for (i, line) in text.lines().enumerate() {
        let record: Record =
            serde_json::from_str(line).map_err(|e| malformed(i + 1, e.to_string()))?;
        let broken = |problem| TranscriptError::Broken {
            path: path.to_owned(),
            seq: record.seq,
            problem,
        };
        if record.seq != out.records.len() as u64 {
            return Err(broken(
                "sequence number out of order (a record was removed, inserted or moved)",
            ));
        }
        if record.prev != out.head {
            return Err(broken("does not chain to the previous record"));
        }
        let signed = record
            .signed_bytes()
            .map_err(|e| malformed(i + 1, e.to_string()))?;
        let sig = unhex64(&record.sig).ok_or_else(|| broken("signature is not 64 hex bytes"))?;
        key.verify_labelled(LABEL, &signed, &Signature(sig))
            .map_err(|_| broken("signature does not verify"))?;
        out.head = sha256_hex(&signed);
        out.hashes.push(out.head.clone());
        out.records.push(record);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
