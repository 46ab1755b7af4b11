//! Layers shared by the face-api networks.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::{ConvOptions, PadMode};

use crate::error::ModelError;
use crate::tfjs::TfjsWeights;

/// TF 'same' padding of a 3×3 window: `(before, after)` for a side of `n` at `stride`.
pub(crate) fn same_pad(n: usize, stride: usize) -> (usize, usize) {
    let out = n.div_ceil(stride);
    let total = ((out - 1) * stride + 3).saturating_sub(n);
    (total / 2, total - total / 2)
}

pub(crate) fn pad_same<B: Backend>(x: Tensor<B, 4>, stride: usize) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    let ((t, b), (l, r)) = (same_pad(h, stride), same_pad(w, stride));
    x.pad((l, r, t, b), PadMode::Constant(0.0))
}

/// A depthwise-separable 3×3 convolution with bias, 'same' padding, no activation
/// (`common/depthwiseSeparableConv.ts`; at stride 1 also the convolution of
/// `tinyYolov2/depthwiseSeparableConv.ts`, whose explicit 1-pixel pad is TF's 'same').
#[derive(Module, Debug)]
pub(crate) struct SeparableConv<B: Backend> {
    depthwise: Param<Tensor<B, 4>>,
    pointwise: Param<Tensor<B, 4>>,
    bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> SeparableConv<B> {
    pub(crate) fn load(
        w: &TfjsWeights,
        prefix: &str,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        Ok(SeparableConv {
            depthwise: Param::from_tensor(
                w.depthwise(&format!("{prefix}/depthwise_filter"), device)?,
            ),
            pointwise: Param::from_tensor(w.conv2d(&format!("{prefix}/pointwise_filter"), device)?),
            bias: Param::from_tensor(w.tensor(&format!("{prefix}/bias"), device)?),
        })
    }

    pub(crate) fn forward(&self, x: Tensor<B, 4>, stride: usize) -> Tensor<B, 4> {
        let channels = x.dims()[1];
        let (x, p) = if stride == 1 {
            (x, 1)
        } else {
            (pad_same(x, stride), 0)
        };
        let x = conv2d(
            x,
            self.depthwise.val(),
            None,
            ConvOptions::new([stride, stride], [p, p], [1, 1], channels),
        );
        conv2d(
            x,
            self.pointwise.val(),
            Some(self.bias.val()),
            ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        )
    }
}

/// `common/fullyConnectedLayer.ts`: `matMul(x, weights) + bias`, weights `[in, out]`.
#[derive(Module, Debug)]
pub(crate) struct FullyConnected<B: Backend> {
    weights: Param<Tensor<B, 2>>,
    bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> FullyConnected<B> {
    /// `{prefix}/weights` and `{prefix}/bias` of the manifest.
    pub(crate) fn load(
        w: &TfjsWeights,
        prefix: &str,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        Ok(FullyConnected {
            weights: Param::from_tensor(w.dense(&format!("{prefix}/weights"), device)?),
            bias: Param::from_tensor(w.tensor(&format!("{prefix}/bias"), device)?),
        })
    }

    /// `[batch, in]` → `[batch, out]`.
    pub(crate) fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(self.weights.val()) + self.bias.val().unsqueeze()
    }

    /// The device the weights live on.
    pub(crate) fn device(&self) -> B::Device {
        self.bias.val().device()
    }
}
