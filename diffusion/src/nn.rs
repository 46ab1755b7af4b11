//! The layers of the UNet and the VAE: the shared ones of `idforge_models::nn` (Linear,
//! Conv2d, LayerNorm, GroupNorm, attention), re-exported, and the few only diffusion uses
//! (GEGLU, SiLU, nearest 2× upsampling).

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
pub use idforge_models::nn::{
    Conv2d, GroupNorm, Init, LayerNorm, Linear, child, merge_heads, multi_head_attention,
    split_heads,
};

use crate::error::DiffusionError;

/// diffusers' `GEGLU` feed-forward input: `h · gelu(gate)` with `[h, gate] = proj(x)`.
#[derive(Module, Debug)]
pub struct Geglu<B: Backend> {
    /// `dim → 2·inner`
    pub proj: Linear<B>,
}

impl<B: Backend> Geglu<B> {
    /// `{prefix}.proj`.
    pub fn new(
        init: &Init<'_>,
        prefix: &str,
        dim: usize,
        inner: usize,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        Ok(Self {
            proj: Linear::new(init, &child(prefix, "proj"), dim, 2 * inner, true, device)?,
        })
    }

    /// # Shapes
    /// `[batch, tokens, dim]` → `[batch, tokens, inner]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        Self::gate(self.proj.forward(x))
    }

    /// The gating on the projection's output `[h, gate]` (for callers that project through a
    /// hook themselves).
    pub fn gate(h: Tensor<B, 3>) -> Tensor<B, 3> {
        idforge_models::nn::geglu(h)
    }
}

/// `x · sigmoid(x)`.
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    idforge_models::nn::silu(x)
}

/// Nearest-neighbour 2× upsampling (torch's `interpolate(scale_factor=2, mode="nearest")`),
/// written with reshapes so that it is differentiable on every backend.
pub fn upsample_nearest_2x<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}
