use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum FlError {
    #[error("the peer went away")]
    Disconnected,
    #[error("transcript: {0}")]
    Transcript(#[from] tessera_net::transcript::TranscriptError),
    #[error("secure aggregation: {0}")]
    Site(#[from] tessera_secagg::SiteError),
    #[error("secure aggregation: {0}")]
    Aggregator(#[from] tessera_secagg::AggregatorError),
    #[error("round parameters: {0}")]
    Config(#[from] tessera_secagg::ConfigError),
    #[error("encoding: {0}")]
    Encoding(#[from] tessera_secagg::EncodingError),
    #[error("planning: {0}")]
    Plan(#[from] tessera_secagg::plan::PlanError),
    #[error("differential privacy: {0}")]
    Privacy(#[from] tessera_dp::DpError),
    #[error("model: {0}")]
    Model(String),
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
}
