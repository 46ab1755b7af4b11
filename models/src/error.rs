//! Errors of weight loading, each naming the file and the tensor.

use std::path::PathBuf;

/// What can go wrong loading a network's weights.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A weight file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A manifest or weight file is malformed.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The network expects a tensor the file does not have.
    #[error(
        "{path}: no tensor `{name}` (the file has {available} tensors; is it the right model?)"
    )]
    MissingTensor {
        /// The weight file or manifest.
        path: PathBuf,
        /// The tensor asked for.
        name: String,
        /// How many tensors the file has.
        available: usize,
    },
    /// A tensor has another shape than the network expects.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected}")]
    Shape {
        /// The weight file or manifest.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its shape in the file.
        found: Vec<usize>,
        /// What was expected, in words.
        expected: String,
    },
    /// A file or folder a network needs is absent.
    #[error("{path}: {what}")]
    Missing {
        /// Where it was looked for.
        path: PathBuf,
        /// What is missing, and how to get it.
        what: String,
    },
    /// A network setting is out of range or inconsistent with the weights.
    #[error("{0}")]
    Setting(String),
    /// A network graph (ONNX) has a node the loader does not expect there.
    #[error("{path}: node `{node}` ({op_type}): {message}")]
    Graph {
        /// The model file.
        path: PathBuf,
        /// The node's name (or its first output when it has no name).
        node: String,
        /// The node's operator.
        op_type: String,
        /// What is wrong, and what was expected.
        message: String,
    },
    /// A photo could not be decoded.
    #[error("{path}: not a readable image: {message}")]
    Image {
        /// The file.
        path: PathBuf,
        /// The decoder's reason.
        message: String,
    },
    /// A reference photo in which the detector finds no face.
    #[error(
        "{path}: no face found (face-api's SSD detector, score ≥ 0.5); give a photo where the \
         face is large, frontal and unoccluded"
    )]
    NoFace {
        /// The photo.
        path: PathBuf,
    },
}
