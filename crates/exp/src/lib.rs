//! # tessera-exp: the experiment runner
//!
//! Reproduces the multinational external-validation study (Dou et al., npj Digit. Med.
//! 2021) and runs ablations. An experiment is a TOML file of arms — single-site models,
//! their ensemble, pooled training, federated training in plain text, with secure
//! aggregation, and with distributed DP — where federated settings may be lists that
//! expand to a grid. Each arm trains through the real pieces (the tch detector, the
//! coordinator and site loops with secure aggregation, the DP codec and ledger) and is
//! evaluated under both evaluation protocols (strict and the authors') on the internal
//! test splits and the external cohorts, once per training seed. Runs are cached per
//! (arm, seed) and resume; the report (tables with mean ± SD over seeds, figures,
//! ledgers and a write-up that judges the study's claims with paired tests over
//! patients and seeds) is generated from the results.

mod arms;
mod audit;
mod burden;
mod claims;
mod cohorts;
pub mod deploy;
mod error;
mod federated;
mod figures;
mod finetune;
mod grid;
mod profile;
mod report;
mod run;
mod seeds;
mod settings;
pub mod shard;
pub mod slurm;
mod spec;
mod transport;

pub use arms::{ArmResult, BurdenPoint, CohortEval, RoundLog, SeriesEval};
pub use audit::PrivacyAudit;
pub use error::ExpError;
pub use profile::{Profile, ProfileName};
pub use report::external_map;
pub use run::{ReportSummary, RunOptions, RunSummary, assemble_report, load_registry, run};
pub use shard::Shard;
pub use spec::{
    Arm, ArmKind, ArmPlan, ArmProtocol, Experiment, FederatedArm, Settings, Transport, checkout,
    in_checkout,
};
pub use transport::SiteProcesses;
