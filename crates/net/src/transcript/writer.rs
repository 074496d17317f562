//! Appending to a transcript, and repairing a torn tail on reopening.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tessera_secagg::IdentityKeyPair;

use super::{
    Entry, LABEL, OpenFacts, Record, RoundFacts, TranscriptError, hex, sha256_hex, signed_bytes,
    verify_bytes, zero_hash,
};
use crate::receipt::Receipt;

/// When a record reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Each record is synced (and a new file's directory with it) before `append`
    /// returns: a site's machine may crash and the record must survive it. Deployment.
    Synced,
    /// Records are written to the operating system, never synced: for the transcripts
    /// of a federation run whole in one process (simulation, loopback tests), which
    /// ends with the process and is never resumed after a crash, so a sync protects
    /// nothing. At 1,000 simulated sites the syncs took about a fifth of a round.
    InProcess,
}

/// Appends records for one site, each synced before it returns unless the writer was
/// opened [`Durability::InProcess`].
pub struct TranscriptWriter {
    path: PathBuf,
    file: std::fs::File,
    durability: Durability,
    identity: Arc<IdentityKeyPair>,
    next_seq: u64,
    head: String,
    torn: Option<PathBuf>,
}

impl TranscriptWriter {
    /// Opens (or creates) a transcript and records `open`. An existing one is verified
    /// and continued; a torn last line is first moved aside (see [`Self::torn`]).
    pub fn open(
        path: &Path,
        identity: Arc<IdentityKeyPair>,
        open: OpenFacts,
        durability: Durability,
    ) -> Result<Self, TranscriptError> {
        let io = |source| TranscriptError::Io {
            path: path.to_owned(),
            source,
        };
        let (verified, torn) = match std::fs::read(path) {
            Ok(bytes) => {
                let (whole, torn) = repair_torn_tail(path, bytes)?;
                (verify_bytes(path, &whole, &identity.public())?, torn)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Default::default(), None),
            Err(e) => return Err(io(e)),
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && durability == Durability::Synced
        {
            tessera_core::atomic::sync_dir(dir).map_err(io)?;
        }
        let head = if verified.records.is_empty() {
            zero_hash()
        } else {
            verified.head
        };
        let mut writer = Self {
            path: path.to_owned(),
            file,
            durability,
            identity,
            next_seq: verified.records.len() as u64,
            head,
            torn,
        };
        writer.append(Entry::Open(open))?;
        Ok(writer)
    }

    /// Where a torn last line found on opening was kept, if there was one.
    pub fn torn(&self) -> Option<&Path> {
        self.torn.as_deref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of records and the hash of the last one: what a receipt covers.
    pub fn head(&self) -> (u64, String) {
        (self.next_seq, self.head.clone())
    }

    /// Records the parameters the site obeys in a round, before it sends anything.
    pub fn round(&mut self, facts: RoundFacts) -> Result<Record, TranscriptError> {
        self.append(Entry::Round(facts))
    }

    /// Records `payload` as about to be sent, durably, and returns the record.
    pub fn message(
        &mut self,
        session: &str,
        round: u64,
        kind: &str,
        phase: &str,
        payload: &[u8],
    ) -> Result<Record, TranscriptError> {
        self.append(Entry::Message {
            session: session.into(),
            round,
            kind: kind.into(),
            phase: phase.into(),
            size: payload.len() as u64,
            sha256: sha256_hex(payload),
        })
    }

    /// Records a round refused under the site's policy (nothing is sent).
    pub fn refusal(
        &mut self,
        session: &str,
        round: u64,
        key: &str,
        reason: &str,
    ) -> Result<Record, TranscriptError> {
        self.append(Entry::Refusal {
            session: session.into(),
            round,
            key: key.into(),
            reason: reason.into(),
        })
    }

    /// Stores the coordinator's receipt of this transcript's head.
    pub fn receipt(&mut self, receipt: Receipt) -> Result<Record, TranscriptError> {
        self.append(Entry::Receipt(receipt))
    }

    fn append(&mut self, entry: Entry) -> Result<Record, TranscriptError> {
        let failed = |message: String| TranscriptError::Signing {
            path: self.path.clone(),
            message,
        };
        let signed =
            signed_bytes(self.next_seq, &self.head, &entry).map_err(|e| failed(e.to_string()))?;
        let sig = self
            .identity
            .sign_labelled(LABEL, &signed)
            .map_err(|e| failed(e.to_string()))?;
        let record = Record {
            seq: self.next_seq,
            prev: self.head.clone(),
            entry,
            sig: hex(&sig.0),
        };
        let mut line = serde_json::to_vec(&record).map_err(|e| failed(e.to_string()))?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| match self.durability {
                Durability::Synced => self.file.sync_data(),
                Durability::InProcess => Ok(()),
            })
            .map_err(|source| TranscriptError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.head = sha256_hex(&signed);
        self.next_seq += 1;
        Ok(record)
    }
}

/// Splits off a last line without its newline (a write torn by a crash), keeps it in
/// `<path>.torn-<n>` and truncates the file to its whole records, syncing both.
fn repair_torn_tail(
    path: &Path,
    bytes: Vec<u8>,
) -> Result<(Vec<u8>, Option<PathBuf>), TranscriptError> {
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok((bytes, None));
    }
    let io = |source| TranscriptError::Io {
        path: path.to_owned(),
        source,
    };
    let cut = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let whole_lines = bytes[..cut].iter().filter(|b| **b == b'\n').count();
    let mut aside = PathBuf::from(format!("{}.torn-{whole_lines}", path.display()));
    let mut n = 1;
    while aside.exists() {
        aside = PathBuf::from(format!("{}.torn-{whole_lines}.{n}", path.display()));
        n += 1;
    }
    tessera_core::atomic::write_atomic(&aside, &bytes[cut..]).map_err(io)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io)?;
    file.set_len(cut as u64)
        .and_then(|_| file.sync_all())
        .map_err(io)?;
    let mut whole = bytes;
    whole.truncate(cut);
    Ok((whole, Some(aside)))
}
