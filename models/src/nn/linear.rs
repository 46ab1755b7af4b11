//! `torch.nn.Linear`.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::linear;

use super::{Init, child, param};
use crate::error::ModelError;

/// `torch.nn.Linear`: `x · W + b`, `W` stored `[in, out]` (burn's order; torch's `[out, in]` is
/// transposed at load).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[in, out]`
    pub weight: Param<Tensor<B, 2>>,
    /// `[out]`
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// `{prefix}.weight` (`[out, in]` on disk) and, with `bias`, `{prefix}.bias`.
    pub fn new(
        init: &Init<'_>,
        prefix: &str,
        inp: usize,
        out: usize,
        bias: bool,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let name = child(prefix, "weight");
        let weight = match init {
            Init::Load(w) => Param::from_tensor(w.linear_weight(&name, inp, out, device)?),
            Init::Random => param(init, &name, [inp, out], Some(inp), device)?,
        };
        let bias = bias
            .then(|| param(init, &child(prefix, "bias"), [out], None, device))
            .transpose()?;
        Ok(Self { weight, bias })
    }

    /// A layer from tensors a loader assembled (packed q/k/v, plain `x @ proj` matrices):
    /// `weight` is `[in, out]`.
    pub fn from_tensors(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
        }
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Applies the layer on the last axis (on flex f32 through the host GEMM of `nn::fast`, the
    /// bias folded into it).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let (weight, bias) = (self.weight.val(), self.bias.as_ref().map(|b| b.val()));
        match super::fast::linear(x, &weight, bias.as_ref()) {
            Ok(y) => y,
            Err(x) => linear(x, weight, bias),
        }
    }
}
