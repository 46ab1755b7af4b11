//! Errors of loading and running the diffusion model, each naming the file or setting at fault.

use std::path::PathBuf;

use idforge_models::ModelError;

/// What can go wrong loading a diffusers folder or sampling from it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiffusionError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A weight file is unreadable, or lacks a tensor the network needs.
    #[error(transparent)]
    Weights(#[from] ModelError),
    /// A config file is malformed or asks for something this port does not implement.
    #[error("{path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, and what would work.
        message: String,
    },
    /// A file or folder the pipeline needs is absent.
    #[error("{path}: {what}")]
    Missing {
        /// Where it was looked for.
        path: PathBuf,
        /// What is missing, and how to get it.
        what: String,
    },
    /// A sampling or training setting is out of range.
    #[error("{0}")]
    Setting(String),
}
