//! The networks idforge runs (face detection, landmarks, embedders, and later CLIP, DINO,
//! Inception) as burn modules, and the loaders for the weight files users already have.
//!
//! Face models (issue 3): the face-api networks from the npm package's TF.js weights
//! ([`face_api`], [`tfjs`]), and the ArcFace-class IResNet from the user's insightface ONNX file
//! ([`iresnet`], [`onnx`]) with its 5-point alignment ([`face_align`]). Each is checked against
//! its reference implementation by the tests in `models/tests/`.
//!
//! Identity adapters' inputs (issue 19): [`reference`] turns reference photos into the largest
//! face's ArcFace embedding (raw and normalised), its 224 px `norm_crop`, and CLIP image features
//! from diffusers' `image_encoder/` folder.
#![warn(missing_docs)]

pub mod clip;
pub mod dino;
pub mod error;
pub mod face_align;
pub mod face_api;
pub mod face_embedder;
pub mod inception;
pub mod iresnet;
pub mod nn;
pub mod onnx;
pub mod readback;
pub mod reference;
pub mod tfjs;
pub mod weights;

pub use error::ModelError;
pub use weights::WeightStore;
