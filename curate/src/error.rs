//! Errors of the curate stage: each says what, where, and what to do.

use idforge_core::CoreError;
use idforge_models::error::ModelError;

/// What can stop the curate stage (a bad image never does: it becomes a row with a reason).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CurateError {
    /// Tables, run directory or files.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// Weights could not be loaded.
    #[error("loading the face models: {0}")]
    Model(#[from] ModelError),
    /// The settings or inputs are unusable.
    #[error("{0}")]
    Settings(String),
}
