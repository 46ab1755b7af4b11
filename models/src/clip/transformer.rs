//! The pre-LayerNorm residual attention block both CLIP towers stack: `x + attn(ln_1(x))`, then
//! `x + mlp(ln_2(x))`, with the MLP `fc2(act(fc1(x)))`. open_clip's `ResidualAttentionBlock`
//! and transformers' `CLIPEncoderLayer` compute the same function.

use burn::module::{Module, Param};
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::module::{attention, linear};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Distribution, Tensor, TensorPrimitive};

use super::config::Activation;
use super::load::{BlockSpec, ClipWeights, LinearSpec, NormSpec};
use crate::error::ModelError;

/// LayerNorm over the last axis.
#[derive(Module, Debug)]
pub(super) struct LayerNorm<B: Backend> {
    /// `[width]`
    gamma: Param<Tensor<B, 1>>,
    /// `[width]`
    beta: Param<Tensor<B, 1>>,
    #[module(skip)]
    eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    pub(super) fn init(width: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            gamma: Param::from_tensor(Tensor::ones([width], device)),
            beta: Param::from_tensor(Tensor::zeros([width], device)),
            eps,
        }
    }

    pub(super) fn load(
        w: &ClipWeights,
        spec: &NormSpec,
        eps: f64,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            gamma: Param::from_tensor(w.tensor(&spec.weight, device)?),
            beta: Param::from_tensor(w.tensor(&spec.bias, device)?),
            eps,
        })
    }

    pub(super) fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
            x.into_primitive().tensor(),
            self.gamma.val().into_primitive().tensor(),
            Some(self.beta.val().into_primitive().tensor()),
            self.eps,
        )))
    }
}

/// `x · W + b` with `W` in burn's `[in, out]` order.
#[derive(Module, Debug)]
pub(super) struct Linear<B: Backend> {
    /// `[in, out]`
    weight: Param<Tensor<B, 2>>,
    /// `[out]`
    bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// N(0, 1/in) weights, zero bias.
    pub(super) fn init(inp: usize, out: usize, bias: bool, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::random(
                [inp, out],
                Distribution::Normal(0.0, (inp as f64).powf(-0.5)),
                device,
            )),
            bias: bias.then(|| Param::from_tensor(Tensor::zeros([out], device))),
        }
    }

    pub(super) fn load(
        w: &ClipWeights,
        spec: &LinearSpec,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            weight: Param::from_tensor(w.tensor(&spec.weight, device)?),
            bias: Some(Param::from_tensor(w.tensor(&spec.bias, device)?)),
        })
    }

    /// A bias-free projection from its `[in, out]` weight.
    pub(super) fn from_weight(weight: Tensor<B, 2>) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: None,
        }
    }

    pub(super) fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }
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
        Self {
            ln1: LayerNorm::init(s.width, s.eps, device),
            qkv: Linear::init(s.width, 3 * s.width, true, device),
            out: Linear::init(s.width, s.width, true, device),
            ln2: LayerNorm::init(s.width, s.eps, device),
            fc1: Linear::init(s.width, s.mlp_width, true, device),
            fc2: Linear::init(s.mlp_width, s.width, true, device),
            heads: s.heads,
            activation: s.activation,
        }
    }

    pub(super) fn load(
        w: &ClipWeights,
        spec: &BlockSpec,
        s: BlockShape,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            ln1: LayerNorm::load(w, &spec.ln1, s.eps, device)?,
            qkv: Linear::load(w, &spec.qkv, device)?,
            out: Linear::load(w, &spec.out, device)?,
            ln2: LayerNorm::load(w, &spec.ln2, s.eps, device)?,
            fc1: Linear::load(w, &spec.fc1, device)?,
            fc2: Linear::load(w, &spec.fc2, device)?,
            heads: s.heads,
            activation: s.activation,
        })
    }

    /// # Shapes
    /// - `x`: `[batch, tokens, width]`
    /// - output: `[batch, tokens, width]`
    pub(super) fn forward(&self, x: Tensor<B, 3>, causal: bool) -> Tensor<B, 3> {
        let [b, n, w] = x.dims();
        let (h, d) = (self.heads, w / self.heads);
        let qkv = self.qkv.forward(self.ln1.forward(x.clone()));
        let split = |i: usize| {
            qkv.clone()
                .narrow(2, i * w, w)
                .reshape([b, n, h, d])
                .swap_dims(1, 2)
        };
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: causal,
        };
        let a = attention(split(0), split(1), split(2), None, None, options)
            .swap_dims(1, 2)
            .reshape([b, n, w]);
        let x = x + self.out.forward(a);
        let m = self.fc1.forward(self.ln2.forward(x.clone()));
        let m = match self.activation {
            Activation::QuickGelu => m.clone() * sigmoid(m * 1.702),
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
