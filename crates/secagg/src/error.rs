//! Typed errors. Message errors leave the receiver's state unchanged (the message is
//! dropped); protocol violations end the receiver's part in the round.

use thiserror::Error;

use crate::crypto::CryptoError;
use crate::ids::{Party, Phase, Round, SiteId};
use crate::shamir::ShamirError;

/// A message that cannot be accepted in the receiver's current state.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MessageError {
    #[error("undecodable message: {0}")]
    Decode(String),
    #[error("protocol version {got} is not supported (expected {expected})")]
    Version { got: u8, expected: u8 },
    #[error("message belongs to another session")]
    WrongSession,
    #[error("message is for {got} but this is {expected}: stale or replayed")]
    WrongRound { got: Round, expected: Round },
    #[error("message is addressed to {got}, not to {expected}")]
    Misaddressed { got: Party, expected: Party },
    #[error("message claims to come from {claimed} but arrived from {actual}")]
    SenderMismatch { claimed: Party, actual: Party },
    #[error("{kind} message is not sent in this direction")]
    WrongDirection { kind: &'static str },
    #[error("{kind} message belongs to the {got} phase but the round is in the {expected} phase")]
    OutOfPhase {
        kind: &'static str,
        got: Phase,
        expected: Phase,
    },
    #[error("{0} already sent its {1} message: duplicate or replay")]
    Duplicate(SiteId, Phase),
    #[error("{0} is not expected in this phase (not selected, or dropped)")]
    UnexpectedSender(SiteId),
    #[error("vector has {got} elements, expected {expected}")]
    WrongLength { got: usize, expected: usize },
    #[error("vector is modulo 2^{got}, expected 2^{expected}")]
    WrongModulus { got: u8, expected: u8 },
    #[error("signature by {0} does not verify")]
    BadSignature(SiteId),
    #[error("{sender} sent {kind} content that does not match the protocol: {detail}")]
    Malformed {
        sender: Party,
        kind: &'static str,
        detail: String,
    },
}

/// Why a site stopped taking part in a round.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SiteError {
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error("{0} is not a participant of this round")]
    NotParticipant(SiteId),
    #[error("the identity key does not match the roster entry for {0}")]
    IdentityMismatch(SiteId),
    #[error("{0} is missing from the roster")]
    UnknownSite(SiteId),
    #[error(
        "input has {got} elements modulo 2^{got_bits}; the round expects {expected} modulo 2^{expected_bits}"
    )]
    InputShape {
        got: usize,
        got_bits: u8,
        expected: usize,
        expected_bits: u8,
    },
    #[error(
        "in the {phase} phase only {have} holders remain for this site's shares, fewer than the threshold {need}"
    )]
    TooFewHolders {
        phase: Phase,
        have: usize,
        need: usize,
    },
    #[error("{peer} advertised a key already used by another site (reflection attack?)")]
    RepeatedKey { peer: SiteId },
    #[error("key agreement with {peer} failed: {source}")]
    Agreement { peer: SiteId, source: CryptoError },
    #[error("the survivor set omits this site")]
    NotASurvivor,
    #[error("survivor set names {0}, which never sent its shares to this site")]
    InconsistentSurvivors(SiteId),
    #[error("only {have} valid survivor-set signatures from this site's holders; {need} required")]
    TooFewSignatures { have: usize, need: usize },
    #[error("refused: asked for both the self-mask and the mask-key share of {peer}")]
    RefusedDoubleReveal { peer: SiteId },
    #[error("refused: asked for the mask-key share of {peer}, which is in the signed survivor set")]
    RefusedMaskKeyOfSurvivor { peer: SiteId },
    #[error(
        "refused: asked for the self-mask share of {peer}, which is not in the signed survivor set"
    )]
    RefusedSelfMaskOfDropped { peer: SiteId },
    #[error("asked for shares of {peer}, which this site does not hold")]
    NoSharesOf { peer: SiteId },
    #[error("secret sharing failed: {0}")]
    Sharing(#[from] ShamirError),
    #[error("this site has finished or abandoned the round")]
    Finished,
}

/// Why the aggregator abandoned a round. It never holds enough to unmask any individual
/// input: each honest site reveals at most one kind of share per peer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AbortReason {
    #[error(
        "after the {phase} phase {survivors} sites remain, fewer than the threshold {threshold}"
    )]
    TooFewSurvivors {
        phase: Phase,
        survivors: usize,
        threshold: usize,
    },
    #[error(
        "after the {phase} phase only {have} holders of {owner}'s shares remain; {need} are needed"
    )]
    TooFewHolders {
        phase: Phase,
        owner: SiteId,
        have: usize,
        need: usize,
    },
    #[error(
        "{owner}'s {what} reconstructed from the revealed shares does not match its signed commitment"
    )]
    InconsistentShares { owner: SiteId, what: &'static str },
    #[error("pairwise key agreement between {a} and {b} failed")]
    Agreement { a: SiteId, b: SiteId },
}

/// A call the aggregator cannot act on.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AggregatorError {
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error("the round is over ({0})")]
    RoundOver(&'static str),
    #[error("{0} is not in the roster")]
    UnknownSite(SiteId),
}
