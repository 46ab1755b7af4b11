//! What can go wrong in training, each message saying what to change.

use std::path::{Path, PathBuf};

use idforge_diffusion::DiffusionError;

/// The trainer's errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The base model or the adapter refused the inputs (shapes, kinds).
    #[error(transparent)]
    Diffusion(#[from] DiffusionError),
    /// A weight or model file could not be read.
    #[error(transparent)]
    Model(#[from] idforge_models::ModelError),
    /// The periodic sample images could not be rendered.
    #[error("rendering the samples of step {step}")]
    Samples {
        /// The step whose adapter was rendered.
        step: u64,
        /// Why.
        #[source]
        source: idforge_diffusion::methods::MethodError,
    },
    /// A setting that cannot work (zero warm-up with a schedule that needs one, an empty
    /// batch, …); the message names it.
    #[error("{0}")]
    Setting(String),
    /// A trainable tensor no parameter group claims.
    #[error(
        "trainable tensor `{0}` is in no parameter group: add a group whose pattern it contains \
         (an empty pattern takes every tensor), or freeze it"
    )]
    Ungrouped(String),
    /// A face box that leaves nothing of the latents for the masked loss.
    #[error(
        "face box {face_box:?} of sample {sample} covers no latent pixel of the {height}×{width} \
         latents (the box is in pixels of the {h8}×{w8} image, divided by 8): drop the masked \
         loss for this sample or fix the box",
        h8 = height * 8,
        w8 = width * 8
    )]
    EmptyFaceBox {
        /// Sample in the batch.
        sample: usize,
        /// `[x0, y0, x1, y1]` in pixels.
        face_box: [f32; 4],
        /// Latent height.
        height: usize,
        /// Latent width.
        width: usize,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The dataset export (or a checkpoint) is not what the trainer reads; the message says
    /// what is wrong.
    #[error("{}: {message}", path.display())]
    Data {
        /// The export, shard or checkpoint.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
}

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A malformed file at `path`.
    pub fn data(path: &Path, message: impl Into<String>) -> Self {
        TrainError::Data {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}
