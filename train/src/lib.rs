//! Latent diffusion in burn: the frozen Stable Diffusion model that idforge's adapters train on
//! top of, loaded from the diffusers folders people already have.
#![warn(missing_docs)]
