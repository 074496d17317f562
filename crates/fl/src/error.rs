use std::path::PathBuf;
use thiserror::Error;

use crate::wire::WireError;

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
    Params(#[from] tessera_secagg::ConfigError),
    #[error("encoding: {0}")]
    Encoding(#[from] tessera_secagg::EncodingError),
    #[error("planning: {0}")]
    Plan(#[from] tessera_secagg::plan::PlanError),
    #[error("differential privacy: {0}")]
    Privacy(#[from] tessera_dp::DpError),
    #[error("model: {0}")]
    Layout(#[from] tessera_core::LayoutError),
    #[error("wire: {0}")]
    Wire(#[from] WireError),
    #[error("{key}: {message}")]
    Config { key: &'static str, message: String },
    #[error("checkpoint {path}: {problem}")]
    Checkpoint {
        path: PathBuf,
        problem: crate::checkpoint::CheckpointProblem,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("PKI: {0}")]
    Pki(#[from] tessera_net::pki::PkiError),
    #[error("QUIC: {0}")]
    Quic(#[from] tessera_net::quic::QuicError),
    #[error("only {connected} site(s) connected; a round needs at least {needed}")]
    TooFewSites { connected: usize, needed: usize },
    #[error("a round is already running")]
    RoundInProgress,
    #[error("the operating system gave no randomness")]
    Randomness,
}

impl FlError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> FlError + '_ {
        move |source| FlError::Io {
            path: path.to_owned(),
            source,
        }
    }
}
