//! A site's egress transcript: one signed, hash-chained record per outbound message.
//!
//! Each record holds the message kind, round, phase, size and SHA-256 of the exact
//! bytes sent, the hash of the previous record, and an Ed25519 signature by the site's
//! identity key (domain-separated as `tessera/transcript/v1`). Records are JSON lines,
//! appended and synced before the message is sent. An auditor holding the site's
//! public key (from the CA-signed roster) can check that the file is complete and
//! unaltered — no record removed, inserted, reordered or edited — and, by comparing
//! payload hashes with a capture of the site's traffic, that nothing else left it.

use ring::digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tessera_secagg::{IdentityKeyPair, IdentityPublicKey, Signature};
use thiserror::Error;

const LABEL: &str = "tessera/transcript/v1";

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
}

/// One outbound message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub seq: u64,
    pub kind: String,
    pub round: u64,
    pub phase: String,
    pub size: u64,
    /// SHA-256 (hex) of the bytes sent.
    pub payload_hash: String,
    /// SHA-256 (hex) of the previous record's canonical bytes; zeros for the first.
    pub prev_hash: String,
    /// Ed25519 (hex) over the canonical bytes.
    pub signature: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

impl Record {
    /// Everything but the signature, unambiguously (tab-separated; kind and phase are
    /// short identifiers without tabs).
    fn canonical(&self) -> Vec<u8> {
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.seq,
            self.kind,
            self.round,
            self.phase,
            self.size,
            self.payload_hash,
            self.prev_hash
        )
        .into_bytes()
    }

    fn hash(&self) -> String {
        sha256(&self.canonical())
    }
}

/// Appends records for one site.
pub struct TranscriptWriter {
    path: PathBuf,
    file: std::fs::File,
    identity: Arc<IdentityKeyPair>,
    next_seq: u64,
    last_hash: String,
}

impl TranscriptWriter {
    /// Opens (or creates) a transcript; an existing one is verified and continued.
    pub fn open(path: &Path, identity: Arc<IdentityKeyPair>) -> Result<Self, TranscriptError> {
        let (next_seq, last_hash) = if path.exists() {
            let summary = verify(path, &identity.public())?;
            (summary.records, summary.last_hash)
        } else {
            (0, "0".repeat(64))
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| TranscriptError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            path: path.to_owned(),
            file,
            identity,
            next_seq,
            last_hash,
        })
    }

    /// Records `payload` as about to be sent, durably, and returns the record.
    pub fn append(
        &mut self,
        kind: &str,
        round: u64,
        phase: &str,
        payload: &[u8],
    ) -> Result<Record, TranscriptError> {
        let mut record = Record {
            seq: self.next_seq,
            kind: kind.replace('\t', " "),
            round,
            phase: phase.replace('\t', " "),
            size: payload.len() as u64,
            payload_hash: sha256(payload),
            prev_hash: self.last_hash.clone(),
            signature: String::new(),
        };
        let sig = self
            .identity
            .sign_labelled(LABEL, &record.canonical())
            .map_err(|e| TranscriptError::Malformed {
                path: self.path.clone(),
                line: 0,
                message: e.to_string(),
            })?;
        record.signature = hex(&sig.0);
        let mut line = serde_json::to_vec(&record).unwrap_or_default();
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| self.file.sync_data())
            .map_err(|source| TranscriptError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.last_hash = record.hash();
        self.next_seq += 1;
        Ok(record)
    }
}

/// What a verified transcript says left the site.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub records: u64,
    /// (message count, bytes) per kind.
    pub by_kind: BTreeMap<String, (u64, u64)>,
    pub last_hash: String,
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

/// Checks every record's signature, sequence number and link to its predecessor.
pub fn verify(path: &Path, key: &IdentityPublicKey) -> Result<Summary, TranscriptError> {
    let file = std::fs::File::open(path).map_err(|source| TranscriptError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut summary = Summary {
        last_hash: "0".repeat(64),
        ..Summary::default()
    };
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| TranscriptError::Io {
            path: path.to_owned(),
            source,
        })?;
        let record: Record =
            serde_json::from_str(&line).map_err(|e| TranscriptError::Malformed {
                path: path.to_owned(),
                line: i + 1,
                message: e.to_string(),
            })?;
        let broken = |problem| TranscriptError::Broken {
            path: path.to_owned(),
            seq: record.seq,
            problem,
        };
        if record.seq != summary.records {
            return Err(broken(
                "sequence number out of order (a record was removed, inserted or moved)",
            ));
        }
        if record.prev_hash != summary.last_hash {
            return Err(broken("does not chain to the previous record"));
        }
        let sig =
            unhex64(&record.signature).ok_or_else(|| broken("signature is not 64 hex bytes"))?;
        key.verify_labelled(LABEL, &record.canonical(), &Signature(sig))
            .map_err(|_| broken("signature does not verify"))?;
        let entry = summary.by_kind.entry(record.kind.clone()).or_default();
        entry.0 += 1;
        entry.1 += record.size;
        summary.records += 1;
        summary.last_hash = record.hash();
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn setup(name: &str) -> (PathBuf, Arc<IdentityKeyPair>) {
        let path = std::env::temp_dir().join(format!(
            "tessera-transcript-{name}-{}.jsonl",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        (
            path,
            Arc::new(IdentityKeyPair::generate(&mut ChaCha20Rng::seed_from_u64(
                1,
            ))),
        )
    }

    fn write_three(path: &Path, id: &Arc<IdentityKeyPair>) {
        let mut w = TranscriptWriter::open(path, id.clone()).unwrap();
        w.append("advertise-keys", 1, "advertise-keys", b"keys")
            .unwrap();
        w.append("masked-input", 1, "masked-input", &[7u8; 1000])
            .unwrap();
        w.append("unmask-shares", 1, "unmasking", b"shares")
            .unwrap();
    }

    #[test]
    fn an_intact_transcript_verifies_and_resumes() {
        let (path, id) = setup("ok");
        write_three(&path, &id);
        let s = verify(&path, &id.public()).unwrap();
        assert_eq!(s.records, 3);
        assert_eq!(s.by_kind["masked-input"], (1, 1000));
        // reopening continues the chain
        let mut w = TranscriptWriter::open(&path, id.clone()).unwrap();
        assert_eq!(
            w.append("masked-input", 2, "masked-input", b"x")
                .unwrap()
                .seq,
            3
        );
        assert_eq!(verify(&path, &id.public()).unwrap().records, 4);
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn removal_reordering_editing_and_another_key_are_detected() {
        let (path, id) = setup("tamper");
        write_three(&path, &id);
        let original = lines(&path);
        let check = |ls: &[String]| {
            std::fs::write(&path, ls.join("\n") + "\n").unwrap();
            verify(&path, &id.public())
        };
        assert!(matches!(
            check(&[original[0].clone(), original[2].clone()]),
            Err(TranscriptError::Broken { seq: 2, .. })
        ));
        assert!(matches!(
            check(&[original[1].clone(), original[0].clone()]),
            Err(TranscriptError::Broken { seq: 1, .. })
        ));
        let edited = original[1].replace("\"size\":1000", "\"size\":10");
        assert!(matches!(
            check(&[original[0].clone(), edited, original[2].clone()]),
            Err(TranscriptError::Broken { seq: 1, .. })
        ));
        // a valid transcript, checked against another site's key
        std::fs::write(&path, original.join("\n") + "\n").unwrap();
        let other = IdentityKeyPair::generate(&mut ChaCha20Rng::seed_from_u64(2));
        assert!(verify(&path, &other.public()).is_err());
        // and a writer refuses to continue a broken file
        let mut broken = original.clone();
        broken.remove(1);
        std::fs::write(&path, broken.join("\n") + "\n").unwrap();
        assert!(TranscriptWriter::open(&path, id.clone()).is_err());
    }
}
