//! The networks idforge runs (face detection, landmarks, embedders, and later CLIP, DINO,
//! Inception) as burn modules, and the loaders for the weight files users already have.
//!
//! Work in progress (issue 3): the TF.js weight-manifest loader for the face-api models is here;
//! the networks follow.
#![warn(missing_docs)]

pub mod error;
pub mod tfjs;

pub use error::ModelError;
