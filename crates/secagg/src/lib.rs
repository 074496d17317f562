//! # tessera-secagg: secure aggregation as sans-IO state machines
//!
//! Sites hold model updates; the coordinator must learn only their sum, even when some
//! sites drop out mid-round and even when the coordinator deviates from the protocol.
//! This crate implements SecAgg (Bonawitz et al., CCS 2017) and SecAgg+ (Bell et al.,
//! CCS 2020) as two pure state machines, [`Site`] and [`Aggregator`], in the style of
//! `quinn-proto`: they consume and produce [`Envelope`]s and never touch sockets, clocks
//! or threads of their own (rayon is used only to expand masks). Deadlines belong to the
//! caller, which tells the aggregator when a phase is over or a site is gone. The same
//! code therefore runs in simulations, in tests that drop sites at every phase, and in
//! deployment over QUIC.
//!
//! ## A round
//! 1. **Advertise keys.** Each site sends two fresh X25519 public keys (one to encrypt
//!    shares, one for pairwise masks) and a commitment to its self-mask secret, signed
//!    with its long-term Ed25519 identity key.
//! 2. **Share keys.** Each site Shamir-shares its mask secret s_u and self-mask secret b_u
//!    (t-of-holders, over the Curve25519 scalar field) among its neighbours, encrypting
//!    each pair of shares with ChaCha20-Poly1305 under an X25519 + HKDF key.
//! 3. **Masked input.** y_u = x_u + PRG(b_u) + Σ_{v ∈ N(u)} ±PRG(s_uv) mod 2^b, where the
//!    PRG is the round's signed [`MaskPrg`] (AES-256-CTR by default, or ChaCha20) keyed
//!    with the full 256-bit HKDF-derived seed. A
//!    neighbour whose share ciphertext does not open is left out of the sum and named
//!    (accused); the aggregator excludes accused sites, so one site sending garbage
//!    cannot make honest sites abandon the round.
//! 4. **Consistency check.** Each site signs the set of sites whose masked input the
//!    aggregator holds; a site only continues when t of its holders signed the same set.
//! 5. **Unmasking.** For each surviving peer a site reveals its share of b; for each
//!    dropped peer its share of s — never both for one peer, whatever it is asked.
//!
//! The graph is complete for SecAgg and a random k-regular graph for SecAgg+
//! ([`GraphSpec`]); [`plan`] chooses k and t and reports the failure probabilities.
//! [`FixedPoint`] encodes `f32` updates and each site's weight so that the sum decodes
//! to the weighted mean, and refuses any configuration whose sum could wrap.
//!
//! ## Threat models
//! - **Semi-honest server** colluding with corrupt sites: the server learns only the sum
//!   of at least t inputs, provided t exceeds the corrupt holders of any site.
//! - **Active server** (may drop, reorder, forge or equivocate): advertisements and the
//!   survivor set are signed and checked against the roster; every key and signature is
//!   bound to a digest of the round parameters; honest sites refuse to reveal both shares
//!   of a peer. With t > (holders + corrupt)/2, the two kinds of shares of an honest site
//!   can never both reach t.
//!
//! Out of scope: sites that submit poisoned or out-of-range inputs (secure aggregation
//! hides inputs, it does not validate them), and the choice of public randomness for the
//! SecAgg+ graph (supplied by the caller).

mod aggregator;
pub mod crypto;
mod ed25519;
mod encoding;
mod error;
mod ids;
mod mask;
mod messages;
mod params;
pub mod plan;
mod protocol;
mod ring;
pub mod shamir;
pub mod simulation;
mod site;
mod x25519;

pub use aggregator::{AggregateSum, Aggregator, Outgoing, Status};
pub use crypto::{AgreementPublicKey, IdentityKeyPair, IdentityPublicKey, MaskPrg, Signature};
pub use encoding::{EncodingError, FixedPoint, WeightDigits, WeightedMean};
pub use error::{AbortReason, AggregatorError, MessageError, SiteError};
pub use ids::{Party, Phase, Round, SessionId, SiteId, SiteSet};
pub use messages::{
    Body, EncryptedShares, Envelope, Header, KeyAdvertisement, MaskedUpload, PROTOCOL_VERSION,
    RevealedShare, ShareValue, UnmaskRequest, UnmaskShares,
};
pub use params::{
    CommunicationGraph, ConfigError, GraphSpec, MAX_VECTOR_LEN, RoundConfig, RoundParams,
};
pub use protocol::Roster;
pub use ring::{MaskedVector, Modulus, PlainVector, UnsupportedModulus};
pub use site::Site;
