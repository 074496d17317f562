use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ExpError {
    #[error("invalid experiment: {0}")]
    Invalid(String),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("data: {0}")]
    Data(String),
    #[error("training: {0}")]
    Train(#[from] tessera_train::TrainError),
    #[error("federation: {0}")]
    Federation(#[from] tessera_fl::FlError),
    #[error("{0}")]
    Config(String),
    #[error("figure {path}: {message}")]
    Figure { path: PathBuf, message: String },
    #[error("arm {arm}: {source}")]
    Arm { arm: String, source: Box<ExpError> },
}

impl ExpError {
    pub(crate) fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        ExpError::Io {
            path: path.to_owned(),
            message: e.to_string(),
        }
    }
}

/// Writes a file atomically: a sibling temporary file, synced, then renamed over.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<(), ExpError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ExpError::io(dir, e))?;
    }
    tessera_core::atomic::write_atomic(path, bytes).map_err(|e| ExpError::io(path, e))
}
