//! The pre-LayerNorm residual attention block both CLIP towers stack: `x + attn(ln_1(x))`, then
//! `x + mlp(ln_2(x))`, with the MLP `fc2(act(fc1(x)))`. open_clip's `ResidualAttentionBlock`
//! and transformers' `CLIPEncoderLayer` compute the same function.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::config::Activation;
use super::load::{BlockSpec, LinearSpec, NormSpec, tensor};
use crate::error::ModelError;
use crate::nn::{Init, LayerNorm, Linear, gelu, multi_head_attention, quick_gelu, split_heads};
use crate::weights::WeightStore;

/// A LayerNorm from its spec.
pub(super) fn load_norm<B: Backend>(
    w: &WeightStore,
    spec: &NormSpec,
    eps: f64,
    device: &B::Device,
) -> Result<LayerNorm<B>, ModelError> {
    Ok(LayerNorm::from_tensors(
        tensor(w, &spec.weight, device)?,
        tensor(w, &spec.bias, device)?,
        eps,
    ))
}

/// A linear layer (with bias) from its spec.
pub(super) fn load_linear<B: Backend>(
    w: &WeightStore,
    spec: &LinearSpec,
    device: &B::Device,
) -> Result<Linear<B>, ModelError> {
    Ok(Linear::from_tensors(
        tensor(w, &spec.weight, device)?,
        Some(tensor(w, &spec.bias, device)?),
    ))
}

/// One residual attention block.
#[derive(Module, Debug)]
pub(super) struct ResidualBlock<B: Backend> {
    ln1: LayerNorm<B>,
    /// q, k, v packed: `[width, 3·width]`.
    qkv: Linear<B>,
    out: Linear<B>,
    ln2: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
    #[module(skip)]
    heads: usize,
    #[module(skip)]
    activation: Activation,
}

/// What a block stack needs to know besides its weights.
#[derive(Debug, Clone, Copy)]
pub(super) struct BlockShape {
    pub(super) width: usize,
    pub(super) heads: usize,
    pub(super) mlp_width: usize,
    pub(super) activation: Activation,
    pub(super) eps: f64,
}

impl<B: Backend> ResidualBlock<B> {
    pub(super) fn init(s: BlockShape, device: &B::Device) -> Self {
        let r = Init::Random;
        let norm = || LayerNorm::new(&r, "", s.width, s.eps, device);
        let linear = |i, o| Linear::new(&r, "", i, o, true, device);
        let random = || -> Result<Self, ModelError> {
            Ok(Self {
                ln1: norm()?,
                qkv: linear(s.width, 3 * s.width)?,
                out: linear(s.width, s.width)?,
                ln2: norm()?,
                fc1: linear(s.width, s.mlp_width)?,
                fc2: linear(s.mlp_width, s.width)?,
                heads: s.heads,
                activation: s.activation,
            })
        };
        random().expect("random layers always build")
    }

    pub(super) fn load(
        w: &WeightStore,
        spec: &BlockSpec,
        s: BlockShape,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            ln1: load_norm(w, &spec.ln1, s.eps, device)?,
            qkv: load_linear(w, &spec.qkv, device)?,
            out: load_linear(w, &spec.out, device)?,
            ln2: load_norm(w, &spec.ln2, s.eps, device)?,
            fc1: load_linear(w, &spec.fc1, device)?,
            fc2: load_linear(w, &spec.fc2, device)?,
            heads: s.heads,
            activation: s.activation,
        })
    }

    /// # Shapes
    /// - `x`: `[batch, tokens, width]`
    /// - output: `[batch, tokens, width]`
    pub(super) fn forward(&self, x: Tensor<B, 3>, causal: bool) -> Tensor<B, 3> {
        let w = x.dims()[2];
        let qkv = self.qkv.forward(self.ln1.forward(x.clone()));
        let split = |i: usize| split_heads(qkv.clone().narrow(2, i * w, w), self.heads);
        let a = multi_head_attention(split(0), split(1), split(2), causal);
        let x = x + self.out.forward(a);
        let m = self.fc1.forward(self.ln2.forward(x.clone()));
        let m = match self.activation {
            Activation::QuickGelu => quick_gelu(m),
            Activation::Gelu => gelu(m),
        };
        x + self.fc2.forward(m)
    }
}

/// Runs blocks in turn; returns the last output and the input of the last block (the
/// "penultimate" hidden state: transformers' `hidden_states[-2]`).
pub(super) fn run_blocks<B: Backend>(
    blocks: &[ResidualBlock<B>],
    mut x: Tensor<B, 3>,
    causal: bool,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let mut penultimate = x.clone();
    for (i, block) in blocks.iter().enumerate() {
        if i + 1 == blocks.len() {
            penultimate = x.clone();
        }
        x = block.forward(x, causal);
    }
    (x, penultimate)
}
