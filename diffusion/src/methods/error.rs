//! The errors of running a method: each names the flag or file at fault, as the CLI prints them.

use idforge_models::ModelError;

use crate::DiffusionError;

/// What can go wrong loading a method or rendering with it. Messages name the flag (`--adapter`,
/// `--ref`, …) the CLI and the trainer's recipe keys map to, and say what would work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MethodError {
    /// An input does not fit the method (a missing network, a wrong width, a bad count).
    #[error("{0}")]
    Invalid(String),
    /// The diffusion model or an adapter failed.
    #[error(transparent)]
    Diffusion(#[from] DiffusionError),
    /// A weight file or reference network failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A file could not be written (always wrapped in [`MethodError::Context`] naming it).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A safetensors file could not be built.
    #[error(transparent)]
    Safetensors(#[from] safetensors::SafeTensorError),
    /// An error and what was being done: the file or flag it concerns.
    #[error("{context}")]
    Context {
        /// What was being done (`reading --adapter a.safetensors`).
        context: String,
        /// Why it failed.
        #[source]
        source: Box<MethodError>,
    },
}

impl MethodError {
    /// Wraps `self` in `context`, the way the CLI's `anyhow` chains print it
    /// (`context: cause`).
    pub fn context(self, context: impl Into<String>) -> Self {
        Self::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }
}

/// `anyhow`'s `with_context` for the method code, without `anyhow`.
pub(crate) trait ResultExt<T> {
    /// Wraps the error, if any, in the context `f` gives.
    fn ctx<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T, MethodError>;
}

impl<T, E: Into<MethodError>> ResultExt<T> for Result<T, E> {
    fn ctx<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T, MethodError> {
        self.map_err(|e| e.into().context(f()))
    }
}

/// Returns early with [`MethodError::Invalid`] and a formatted message.
macro_rules! invalid {
    ($($arg:tt)*) => {
        return Err($crate::methods::MethodError::Invalid(format!($($arg)*)))
    };
}
pub(crate) use invalid;
