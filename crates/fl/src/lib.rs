//! # tessera-fl: federated rounds
//!
//! The coordinator and the site loops that turn the secure-aggregation state machines
//! into federated training: the coordinator sends each round's parameters, codec,
//! training settings, strategy and global model; each site trains through its
//! [`tessera_core::LocalTrainer`], encodes its parameter change with its sample count,
//! and runs the secure-aggregation phases; the coordinator closes each phase at its
//! deadline (a silent site is a dropout), decodes the weighted mean change, applies the
//! strategy, and checkpoints the global model atomically, so a restarted coordinator
//! resumes after the last completed round. Every message a site sends goes through one
//! [`Egress`], which first appends it to the site's signed transcript.
//!
//! Sites and coordinator exchange byte messages over channels: in one process they are
//! connected directly (simulation); over the network [`accept_sites`] and [`open_link`]
//! carry the same messages in frames on one QUIC stream per site, the coordinator naming
//! each site by its CA-verified certificate and the CA-signed roster.

mod coordinator;
mod error;
mod known;
mod links;
pub mod loopback;
pub mod memory;
mod site;
pub mod wire;

pub use coordinator::{Coordinator, FederationConfig, Protocol, RoundReport};
pub use error::FlError;
pub use known::KnownUpdateTrainer;
pub use links::{SiteLinks, Traffic, accept_sites, open_link, reconnecting_link};
pub use site::{Egress, SiteOptions, SiteSummary, run_site};
pub use tessera_dp::{DpConfig, Ledger, LedgerEntry, Mechanism};
