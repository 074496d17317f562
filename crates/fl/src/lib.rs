//! # tessera-fl: federated rounds
//!
//! The federation's logic is two sans-IO state machines, in the style of
//! `quinn-proto`: [`CoordinatorMachine`] (selection, planning, the codec, DP charging,
//! the secure-aggregation phases, the strategy, checkpoints) and [`SiteMachine`]
//! (training requests, encoding, the site's protocol side). Events go in, actions come
//! out; neither owns a clock, socket, file or runtime, so their logic is unit-tested
//! with no timers at all.
//!
//! Thin drivers ([`driver`]) run them: the coordinator's over a stream of
//! [`LinkEvent`]s, the site's over a [`SiteLink`]. Links are channels in one process
//! ([`memory`]) or QUIC streams between processes ([`links`], [`loopback`]); nothing
//! else differs between simulation and deployment. A site's only way out is its
//! [`Egress`], which records every message in the signed transcript first; a
//! [`SiteLink`]'s sending half cannot be reached any other way.
//!
//! Every round start passes the site's own [`SitePolicy`] and a context-digest check
//! before the site trains or sends anything, so a misbehaving coordinator cannot
//! downgrade, shrink, re-run or split a round to expose one site's update.
//!
//! The coordinator closes each phase when every remaining participant has answered,
//! when a site's link closes or it withdraws (at once), or at the phase's deadline; it
//! decodes the weighted mean change, applies the strategy, and checkpoints the global
//! model and the strategy's state with an integrity digest, so a restarted coordinator
//! resumes exactly after the last completed round.

pub mod allocator;
pub mod canary;
pub mod checkpoint;
mod config;
pub mod coordinator;
pub mod deploy;
pub mod driver;
mod egress;
mod error;
pub mod facts;
mod known;
pub mod links;
mod local;
pub mod loopback;
pub mod memory;
mod planning;
pub mod policy;
mod report;
pub mod sim;
pub mod site;
pub mod wire;

pub use config::{
    FederationBuilder, FederationConfig, Protocol, Threat, Weighting, ledger_path, parse_session,
    session_hex,
};
pub use coordinator::{Action, CoordinatorMachine, Event, TimerId};
pub use driver::{Coordinator, SiteFiles, run_site};
pub use egress::{Egress, SiteInbox, SiteLink};
pub use error::FlError;
pub use known::{KnownPatientTrainer, KnownUpdateTrainer};
pub use links::{LinkEvent, Traffic, accept_sites, open_link, reconnecting_link};
pub use local::{PatientSampling, PatientTrainingError, TrainRequest};
pub use planning::{Preflight, preflight};
pub use policy::{Refusal, SitePolicy};
pub use report::{AbortCause, RejectReason, Rejection, RoundReport};
pub use site::{
    EntropySource, SiteAction, SiteEvent, SiteFailure, SiteIdentity, SiteMachine, SiteProblem,
    SiteSummary,
};
