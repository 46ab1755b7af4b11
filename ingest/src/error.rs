//! Errors that stop the ingest stage (per-row failures are statuses in the table, not errors).

use std::path::PathBuf;

/// What stops an ingest run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// Tables, recipe or run directory.
    #[error(transparent)]
    Core(#[from] idforge_core::CoreError),
    /// A source list or folder could not be read or is malformed.
    #[error("source {path}: {message}")]
    Source {
        /// The list file or folder.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Settings that cannot work together.
    #[error("ingest settings: {0}")]
    Settings(String),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

impl IngestError {
    pub(crate) fn source(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        IngestError::Source {
            path: path.into(),
            message: message.into(),
        }
    }
}
