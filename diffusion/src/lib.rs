//! Latent diffusion in burn: the frozen Stable Diffusion model that idforge's adapters train on
//! top of, loaded from the diffusers folders people already have.
#![warn(missing_docs)]
//!
//! - [`unet`], [`attention`], [`vae`]: diffusers' `UNet2DConditionModel` and `AutoencoderKL`,
//!   config-driven (tiny test models, SD1.5, SDXL), every attention layer reachable by name
//!   through an [`attention::AttentionHook`] so that adapters add to it without copying it.
//! - [`schedulers`]: the DDPM training schedule, DDIM and Euler discrete samplers.
//! - [`pipeline`]: prompt encoding with the folder's CLIP text encoders, the guided denoising
//!   loop, decoding.
//! - [`reference`]: what each adapter takes from reference photos, and its inputs from them.
//! - [`methods`]: an adapter file (or none) and reference photos to images, the one path that
//!   `idforge generate`, `idforge bench generate` and the trainer's samples share.
//!
//! Every parameter is a burn `Param`: the UNet runs under `burn::backend::Autodiff` with its
//! base weights frozen (`Module::no_grad`); the trainer (`idforge-train`) adds gradient
//! checkpointing.

pub mod adapters;
pub mod attention;
pub mod config;
pub mod error;
pub mod methods;
pub mod nn;
pub mod pipeline;
pub mod reference;
pub mod schedulers;
pub mod unet;
pub mod vae;

pub use attention::{AttentionHook, AttentionLayer, Hooks, LinearSite, NoHook, Projection};
pub use config::{UNetConfig, VaeConfig};
pub use error::DiffusionError;
pub use pipeline::{
    Conditioning, Family, Pipeline, SampleSettings, SamplerKind, StepConditioning, StepInputs,
    SwitchAt, denoise, denoise_with, seeded_noise,
};
pub use schedulers::{
    Ddim, DdpmSchedule, EulerDiscrete, Prediction, Sampler, ScheduleConfig, Spacing,
};
pub use unet::{AddedConditions, LayerKey, UNet, UNetInput};
pub use vae::{Posterior, Vae};

#[cfg(test)]
mod seam_tests;
