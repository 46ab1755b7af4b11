//! Errors of the caption stage: each says what, where, and what to do. A caption that fails is
//! not an error: it becomes a `failed` row with the reason and the raw reply.

use idforge_core::CoreError;

/// What can stop the caption stage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptionError {
    /// Tables, run directory or files.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The settings or inputs are unusable.
    #[error("{0}")]
    Settings(String),
    /// A prompt file is missing or malformed.
    #[error("prompt file {path}: {message}")]
    Prompt {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The offline captioner's networks could not be loaded or run.
    #[error("attributes captioner: {0}")]
    Model(String),
}
