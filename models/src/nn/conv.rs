//! `torch.nn.Conv2d`.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

use super::{Init, child, param};
use crate::error::ModelError;

/// `torch.nn.Conv2d` with a square kernel, stride and padding, and a bias.
#[derive(Module, Debug)]
pub struct Conv2d<B: Backend> {
    /// `[out, in, k, k]`
    pub weight: Param<Tensor<B, 4>>,
    /// `[out]`
    pub bias: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    stride: usize,
    #[module(skip)]
    padding: usize,
}

impl<B: Backend> Conv2d<B> {
    /// `{prefix}.weight` and `{prefix}.bias`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        init: &Init<'_>,
        prefix: &str,
        inp: usize,
        out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            weight: param(
                init,
                &child(prefix, "weight"),
                [out, inp, kernel, kernel],
                Some(inp * kernel * kernel),
                device,
            )?,
            bias: Some(param(init, &child(prefix, "bias"), [out], None, device)?),
            stride,
            padding,
        })
    }

    /// A layer from tensors a loader read (`weight` `[out, in, k, k]`).
    pub fn from_tensors(
        weight: Tensor<B, 4>,
        bias: Option<Tensor<B, 1>>,
        stride: usize,
        padding: usize,
    ) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
            stride,
            padding,
        }
    }

    /// # Shapes
    /// `[batch, in, h, w]` → `[batch, out, h', w']`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let weight = self.weight.val();
        let bias = self.bias.as_ref().map(|b| b.val());
        let x = match super::fast::conv2d(
            x,
            &weight,
            bias.as_ref(),
            [self.stride; 2],
            [self.padding; 2],
        ) {
            Ok(y) => return y,
            Err(x) => x,
        };
        conv2d(
            x,
            weight,
            bias,
            ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1),
        )
    }
}
