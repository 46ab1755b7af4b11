//! The errors of the benchmark crate.

use std::path::PathBuf;

/// What went wrong, with the file it concerns where there is one.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause (in the message, not chained again).
        cause: std::io::Error,
    },
    /// A protocol, method or reference file is not what the benchmark expects.
    #[error("{path}: {message}")]
    Invalid {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A metric cannot be computed from what was given (too few images, mismatched dimensions).
    #[error("{0}")]
    Metric(String),
    /// A table could not be read or written, or another core operation failed.
    #[error(transparent)]
    Core(#[from] idforge_core::error::CoreError),
    /// A network could not be loaded.
    #[error(transparent)]
    Model(#[from] idforge_models::ModelError),
}

impl BenchError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        BenchError::Io {
            path: path.into(),
            cause,
        }
    }

    /// An invalid-input error on `path`.
    pub fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        BenchError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}
