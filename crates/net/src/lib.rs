//! # tessera-net: how federation participants find and trust each other
//!
//! - [`pki`]: a private federation CA, one certificate per participant, and a roster
//!   signed by the CA that binds each site's name and id to its Ed25519 identity key
//!   (the key secure aggregation signs with).
//! - [`frame`]: length-delimited frames with a hard maximum, decodable sans-IO.
//! - [`quic`]: QUIC endpoints with mutual TLS 1.3 only, ALPN `tessera/1`, and opt-in
//!   `SSLKEYLOGFILE` key logging.
//! - [`transcript`]: a site's signed, hash-chained record of every outbound message.
//!
//! The orchestration that runs federated rounds over these connections is not built
//! yet; this crate knows nothing of models or protocols beyond bytes and identities.

pub mod enrol;
pub mod frame;
pub mod pki;
pub mod quic;
pub mod receipt;
pub mod transcript;
