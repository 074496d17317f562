//! The coordinator's state that survives a crash, sealed with a digest.
//!
//! Format: `TSCK` ‖ version byte ‖ postcard body ‖ SHA-256 of everything before it. A
//! flipped byte is refused (never decoded into a NaN model), and so is a resume whose
//! settings differ from the ones the checkpoint was written under: a changed strategy,
//! protocol, codec or DP setting would silently mix two experiments, or spend a privacy
//! budget under different rules.
//!
//! A round number is spent before the round's first message. Rather than rewrite the
//! whole model for that, the coordinator writes a [`RoundMarker`] beside the checkpoint
//! (`checkpoint.round` beside `checkpoint.bin`, 61 bytes, sealed the same way); a
//! resume starts after the larger of the two numbers.

use serde::{Deserialize, Serialize};
use tessera_core::Strategy;
use tessera_dp::{DpConfig, Ledger};
use thiserror::Error;

use crate::config::{FederationConfig, Protocol, session_hex};

const MAGIC: &[u8; 4] = b"TSCK";
const MARKER_MAGIC: &[u8; 4] = b"TSRM";
const VERSION: u8 = 5;
const DIGEST: usize = 32;

/// The settings a resumed federation must keep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResumeSettings {
    pub session: [u8; 16],
    pub strategy: Strategy,
    pub protocol: Protocol,
    pub bits: u8,
    pub clip: f32,
    pub dp: DpConfig,
    pub dim: usize,
}

impl ResumeSettings {
    pub fn of(config: &FederationConfig, dim: usize) -> Self {
        Self {
            session: config.session,
            strategy: config.strategy.clone(),
            protocol: config.protocol,
            bits: config.bits,
            clip: config.clip,
            dp: config.dp.clone(),
            dim,
        }
    }

    /// The first setting that differs, as (key, checkpoint's value, configured value).
    fn first_difference(&self, now: &Self) -> Option<(&'static str, String, String)> {
        let pairs: [(&'static str, String, String); 7] = [
            (
                "session",
                session_hex(&self.session),
                session_hex(&now.session),
            ),
            (
                "strategy",
                format!("{:?}", self.strategy),
                format!("{:?}", now.strategy),
            ),
            (
                "protocol",
                self.protocol.name().into(),
                now.protocol.name().into(),
            ),
            ("bits", self.bits.to_string(), now.bits.to_string()),
            ("clip", self.clip.to_string(), now.clip.to_string()),
            ("dp", format!("{:?}", self.dp), format!("{:?}", now.dp)),
            ("model dimension", self.dim.to_string(), now.dim.to_string()),
        ];
        pairs.into_iter().find(|(_, a, b)| a != b)
    }
}

/// Everything the coordinator needs to carry on after the last completed round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub settings: ResumeSettings,
    /// The number the next round will carry (every number is used once).
    pub next_round: u64,
    /// Rounds that ended, completed or aborted.
    pub rounds_ended: u64,
    #[serde(with = "crate::wire::f32_bytes")]
    pub global: Vec<f32>,
    /// The strategy's state (FedAvgM's velocity), so that resume is exact.
    #[serde(with = "crate::wire::f32_bytes")]
    pub strategy_state: Vec<f32>,
    pub ledger: Option<Ledger>,
}

/// A [`Checkpoint`] made of borrowed parts, encoded to the same bytes without copying
/// the model first.
#[derive(Serialize)]
pub(crate) struct CheckpointRef<'a> {
    pub settings: &'a ResumeSettings,
    pub next_round: u64,
    pub rounds_ended: u64,
    #[serde(with = "crate::wire::f32_bytes")]
    pub global: &'a [f32],
    #[serde(with = "crate::wire::f32_bytes")]
    pub strategy_state: &'a [f32],
    pub ledger: Option<&'a Ledger>,
}

impl CheckpointRef<'_> {
    pub(crate) fn encode(&self) -> Result<Vec<u8>, CheckpointProblem> {
        let body =
            postcard::to_allocvec(self).map_err(|e| CheckpointProblem::Encode(e.to_string()))?;
        Ok(seal(MAGIC, &body))
    }
}

/// `magic` ‖ version ‖ `body` ‖ SHA-256 of everything before it.
fn seal(magic: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(magic.len() + 1 + body.len() + DIGEST);
    out.extend_from_slice(magic);
    out.push(VERSION);
    out.extend_from_slice(body);
    let digest = ring::digest::digest(&ring::digest::SHA256, &out);
    out.extend_from_slice(digest.as_ref());
    out
}

/// The body of a file sealed by [`seal`] with `magic`, once its digest checks.
fn unseal<'a>(magic: &[u8; 4], bytes: &'a [u8]) -> Result<&'a [u8], CheckpointProblem> {
    if bytes.len() < magic.len() + 1 + DIGEST || &bytes[..4] != magic {
        return Err(CheckpointProblem::NotACheckpoint);
    }
    if bytes[4] != VERSION {
        return Err(CheckpointProblem::Version(bytes[4]));
    }
    let (sealed, digest) = bytes.split_at(bytes.len() - DIGEST);
    if ring::digest::digest(&ring::digest::SHA256, sealed).as_ref() != digest {
        return Err(CheckpointProblem::Corrupt);
    }
    Ok(&sealed[5..])
}

/// The first round number a resumed coordinator may use, spent before the round that
/// was running when it was written; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundMarker {
    pub session: [u8; 16],
    pub next_round: u64,
}

impl RoundMarker {
    pub fn encode(&self) -> Vec<u8> {
        let mut body = self.session.to_vec();
        body.extend_from_slice(&self.next_round.to_le_bytes());
        seal(MARKER_MAGIC, &body)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CheckpointProblem> {
        let body = unseal(MARKER_MAGIC, bytes)?;
        let (session, round) = body
            .split_first_chunk::<16>()
            .ok_or(CheckpointProblem::NotACheckpoint)?;
        let round: [u8; 8] = round
            .try_into()
            .map_err(|_| CheckpointProblem::NotACheckpoint)?;
        Ok(Self {
            session: *session,
            next_round: u64::from_le_bytes(round),
        })
    }

    /// The round to resume at: after the checkpoint's, or after this marker's when it
    /// belongs to the same session and is later.
    pub fn resume_at(&self, session: &[u8; 16], checkpoint: u64) -> Result<u64, CheckpointProblem> {
        if &self.session != session {
            return Err(CheckpointProblem::SettingsChanged {
                key: "session",
                was: session_hex(&self.session),
                now: session_hex(session),
            });
        }
        Ok(checkpoint.max(self.next_round))
    }
}

/// Why a checkpoint cannot be used.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CheckpointProblem {
    #[error("not a Tessera checkpoint (or truncated); move it away to start afresh")]
    NotACheckpoint,
    #[error("format version {0}, this build reads {VERSION}")]
    Version(u8),
    #[error(
        "integrity check failed: the file was altered or damaged; restore it or move it away to start afresh"
    )]
    Corrupt,
    #[error("unreadable body: {0}")]
    Body(String),
    #[error(
        "written with {key} = {was}, now configured as {now}; resuming would mix two \
         federations: restore the setting, or move the checkpoint away to start afresh"
    )]
    SettingsChanged {
        key: &'static str,
        was: String,
        now: String,
    },
    #[error("the global model has {got} values, the model {expected}")]
    Shape { got: usize, expected: usize },
    #[error("the stored model holds a non-finite value")]
    NonFinite,
    #[error("does not serialise: {0}")]
    Encode(String),
}

impl Checkpoint {
    pub fn encode(&self) -> Result<Vec<u8>, CheckpointProblem> {
        CheckpointRef {
            settings: &self.settings,
            next_round: self.next_round,
            rounds_ended: self.rounds_ended,
            global: &self.global,
            strategy_state: &self.strategy_state,
            ledger: self.ledger.as_ref(),
        }
        .encode()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, CheckpointProblem> {
        let body = unseal(MAGIC, bytes)?;
        postcard::from_bytes(body).map_err(|e| CheckpointProblem::Body(e.to_string()))
    }

    /// Checks that this checkpoint may be resumed under `now`.
    pub fn check_resume(&self, now: &ResumeSettings) -> Result<(), CheckpointProblem> {
        if let Some((key, was, now)) = self.settings.first_difference(now) {
            return Err(CheckpointProblem::SettingsChanged { key, was, now });
        }
        if self.global.len() != now.dim {
            return Err(CheckpointProblem::Shape {
                got: self.global.len(),
                expected: now.dim,
            });
        }
        if self.global.iter().any(|v| !v.is_finite()) {
            return Err(CheckpointProblem::NonFinite);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Checkpoint, ResumeSettings) {
        let config = FederationConfig::builder([3; 16], "ck").build().unwrap();
        let settings = ResumeSettings::of(&config, 4);
        let ck = Checkpoint {
            settings: settings.clone(),
            next_round: 5,
            rounds_ended: 4,
            global: vec![0.5, -1.0, 2.0, 0.0],
            strategy_state: vec![],
            ledger: None,
        };
        (ck, settings)
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let (ck, settings) = sample();
        let bytes = ck.encode().unwrap();
        let back = Checkpoint::decode(&bytes).unwrap();
        assert_eq!(back, ck);
        back.check_resume(&settings).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(
                Checkpoint::decode(&bad).is_err(),
                "flip at byte {i} accepted"
            );
        }
        assert_eq!(
            Checkpoint::decode(&bytes[..bytes.len() - 1]),
            Err(CheckpointProblem::Corrupt)
        );
        assert_eq!(
            Checkpoint::decode(b"xx"),
            Err(CheckpointProblem::NotACheckpoint)
        );
    }

    #[test]
    fn a_changed_setting_is_refused_by_name() {
        let (ck, settings) = sample();
        let mut changed = settings.clone();
        changed.strategy = Strategy::FedAvgM {
            server_lr: 1.0,
            momentum: 0.9,
        };
        assert!(matches!(
            ck.check_resume(&changed),
            Err(CheckpointProblem::SettingsChanged {
                key: "strategy",
                ..
            })
        ));
        let mut changed = settings.clone();
        changed.dp.epsilon = 1.0;
        assert!(matches!(
            ck.check_resume(&changed),
            Err(CheckpointProblem::SettingsChanged { key: "dp", .. })
        ));
        let mut nan = ck.clone();
        nan.global[1] = f32::NAN;
        assert_eq!(
            nan.check_resume(&settings),
            Err(CheckpointProblem::NonFinite)
        );
    }

    #[test]
    fn a_round_marker_is_sealed_and_resumes_after_the_later_number() {
        let marker = RoundMarker {
            session: [3; 16],
            next_round: 7,
        };
        let bytes = marker.encode();
        assert_eq!(RoundMarker::decode(&bytes), Ok(marker));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(
                RoundMarker::decode(&bad).is_err(),
                "flip at byte {i} accepted"
            );
        }
        // A checkpoint is not a marker, nor the other way round.
        let (ck, _) = sample();
        assert!(RoundMarker::decode(&ck.encode().unwrap()).is_err());
        assert!(Checkpoint::decode(&bytes).is_err());
        assert_eq!(marker.resume_at(&[3; 16], 5), Ok(7));
        assert_eq!(marker.resume_at(&[3; 16], 9), Ok(9));
        assert!(matches!(
            marker.resume_at(&[4; 16], 5),
            Err(CheckpointProblem::SettingsChanged { key: "session", .. })
        ));
    }
}
