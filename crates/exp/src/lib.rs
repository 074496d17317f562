//! # tessera-exp: the experiment runner
//!
//! Reproduces the multinational external-validation study (Dou et al., npj Digit. Med.
//! 2021) and runs ablations. An experiment is a TOML file of arms — single-site models,
//! their ensemble, pooled training, federated training in plain text, with secure
//! aggregation, and with distributed DP — where federated settings may be lists that
//! expand to a grid. Each arm trains through the real pieces (the tch detector, the
//! coordinator and site loops with secure aggregation, the DP codec and ledger) and is
//! evaluated with the study's protocol on the internal test splits and the external
//! cohorts. Runs are cached per arm and resume; the report (tables, figures, ledgers
//! and a write-up that checks the study's claims) is generated from the results.

mod arms;
mod cohorts;
pub mod deploy;
mod error;
mod federated;
mod profile;
mod report;
mod run;
pub mod shard;
pub mod slurm;
mod spec;
mod transport;

pub use arms::{ArmResult, BurdenPoint, CohortEval, RoundLog, SeriesEval};
pub use error::ExpError;
pub use profile::{Profile, ProfileName};
pub use report::external_map;
pub use run::{ReportSummary, RunOptions, RunSummary, assemble_report, load_registry, run};
pub use shard::Shard;
pub use spec::{Arm, ArmKind, ArmPlan, Experiment, FederatedArm, Settings, Transport};
pub use transport::SiteProcesses;
