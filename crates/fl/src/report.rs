//! What a round did, kept typed to the end: why it aborted, which messages were refused
//! and why, which sites left. Printing is the caller's business.

use tessera_dp::{DpError, LedgerEntry};
use tessera_secagg::{AbortReason, AggregatorError, SiteId};
use thiserror::Error;

use crate::wire::{WireError, WithdrawReason};

/// Why a round produced no new model.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum AbortCause {
    #[error("{0}")]
    SecAgg(AbortReason),
    #[error("no site sent its update before the deadline")]
    NoUpdates,
    #[error("the aggregate does not decode: {0}")]
    Decode(DpError),
    #[error("the decoded update holds non-finite values; the global model is left unchanged")]
    NonFinite,
}

/// Why a message from a site was refused (the round goes on without it).
#[derive(Clone, Debug, Error, PartialEq)]
pub enum RejectReason {
    #[error(transparent)]
    Wire(WireError),
    #[error("no round is running")]
    NoRound,
    #[error("the sender is not a participant of this round")]
    NotParticipant,
    #[error("a {0} message does not belong to this round's protocol")]
    WrongKind(&'static str),
    #[error("for round {got}, but round {expected} is running")]
    WrongRound { got: u64, expected: u64 },
    #[error(transparent)]
    Aggregator(AggregatorError),
    #[error("the plaintext update does not have the round's shape")]
    BadShape,
    #[error("a second update from the same site")]
    Duplicate,
    #[error("a transcript head refused: {0}")]
    Head(&'static str),
}

/// A refused message.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    pub from: SiteId,
    pub reason: RejectReason,
}

/// What happened in one round.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundReport {
    pub round: u64,
    pub participants: Vec<SiteId>,
    /// Sites whose update is in the new model; empty when the round aborted.
    pub contributors: Vec<SiteId>,
    /// Why the round aborted, if it did (the global model is then unchanged).
    pub aborted: Option<AbortCause>,
    /// Total weight (samples) of the contributors.
    pub total_weight: u64,
    /// The round's privacy charge, when the federation applies DP.
    pub privacy: Option<LedgerEntry>,
    /// Participants that left during the round (link closed, or withdrew).
    pub left: Vec<SiteId>,
    /// Those that withdrew, with the reason they gave.
    pub withdrawals: Vec<(SiteId, WithdrawReason)>,
    /// Messages refused during the round (and any that arrived between rounds).
    pub rejected: Vec<Rejection>,
}

impl RoundReport {
    pub fn completed(&self) -> bool {
        self.aborted.is_none()
    }
}
