//! The networks idforge runs (face detection, landmarks, embedders, and later CLIP, DINO,
//! Inception) as burn modules, and the loaders for the weight files users already have.
//!
//! Work in progress (issue 3): the TF.js weight-manifest loader and the face-api tiny face
//! detector are here; the other networks follow.
#![warn(missing_docs)]

pub mod error;
pub mod face_align;
pub mod face_api;
pub mod iresnet;
pub mod onnx;
pub mod tfjs;

pub use error::ModelError;
