//! The backbone face-api shares between its 68-point landmark net and its expression net:
//! `faceFeatureExtractor/FaceFeatureExtractor.ts` and `denseBlock.ts` (four dense blocks of
//! depthwise-separable convolutions, then a 7×7 average pool to 256 features), with its input
//! (`toBatchTensor(112, true)`, `(x − mean) / 255`). Both nets store it under the same tensor
//! names (`dense0/…` to `dense3/…`), each with its own trained values, so one piece of code
//! loads and runs either.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::{avg_pool2d, conv2d};
use burn::tensor::ops::ConvOptions;

use super::layers::{SeparableConv, pad_same};
use super::preprocess::{PixelRect, RgbView, face_input, face_input_at};
use crate::error::ModelError;
use crate::tfjs::TfjsWeights;

/// `meanRgb` of `FaceFeatureExtractor.forwardInput`, subtracted before the division by 255.
pub const MEAN_RGB: [f32; 3] = [122.782, 117.001, 104.298];
/// The side of the square input, `toBatchTensor(112, true)`.
pub const INPUT: usize = 112;
/// The number of features per face (the channels of `dense3`).
pub const FEATURES: usize = 256;

/// `denseBlock4`: four convolutions, each fed the ReLU of the sum of the previous outputs.
#[derive(Module, Debug)]
struct DenseBlock<B: Backend> {
    /// A plain 3×3 conv in the first block, separable in the others.
    first_filters: Option<Param<Tensor<B, 4>>>,
    first_bias: Option<Param<Tensor<B, 1>>>,
    first_separable: Option<SeparableConv<B>>,
    rest: Vec<SeparableConv<B>>,
}

impl<B: Backend> DenseBlock<B> {
    fn load(w: &TfjsWeights, block: usize, device: &B::Device) -> Result<Self, ModelError> {
        let p = format!("dense{block}");
        let (first_filters, first_bias, first_separable) = if block == 0 {
            (
                Some(Param::from_tensor(
                    w.conv2d(&format!("{p}/conv0/filters"), device)?,
                )),
                Some(Param::from_tensor(
                    w.tensor(&format!("{p}/conv0/bias"), device)?,
                )),
                None,
            )
        } else {
            (
                None,
                None,
                Some(SeparableConv::load(w, &format!("{p}/conv0"), device)?),
            )
        };
        let rest = (1..4)
            .map(|i| SeparableConv::load(w, &format!("{p}/conv{i}"), device))
            .collect::<Result<_, _>>()?;
        Ok(DenseBlock {
            first_filters,
            first_bias,
            first_separable,
            rest,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let out1 = match (&self.first_filters, &self.first_bias, &self.first_separable) {
            (Some(f), Some(b), _) => conv2d(
                pad_same(x, 2),
                f.val(),
                Some(b.val()),
                ConvOptions::new([2, 2], [0, 0], [1, 1], 1),
            ),
            (_, _, Some(s)) => s.forward(x, 2),
            _ => unreachable!("a dense block has a first convolution"),
        };
        let out1 = relu(out1);
        let out2 = self.rest[0].forward(out1.clone(), 1);
        let in3 = relu(out1.clone() + out2.clone());
        let out3 = self.rest[1].forward(in3, 1);
        let in4 = relu(out1.clone() + (out2.clone() + out3.clone()));
        let out4 = self.rest[2].forward(in4, 1);
        relu(out1 + (out2 + (out3 + out4)))
    }
}

/// The shared face backbone with one net's weights (`dense0` to `dense3` of its manifest).
#[derive(Module, Debug)]
pub struct FaceFeatureExtractor<B: Backend> {
    blocks: Vec<DenseBlock<B>>,
}

impl<B: Backend> FaceFeatureExtractor<B> {
    /// Builds the backbone from the `dense*` tensors of a manifest that holds it
    /// (`face_landmark_68_model`, `face_expression_model`); other tensors are left to the head.
    pub fn load(weights: &TfjsWeights, device: &B::Device) -> Result<Self, ModelError> {
        Ok(FaceFeatureExtractor {
            blocks: (0..4)
                .map(|i| DenseBlock::load(weights, i, device))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The normalised input `[1, 3, 112, 112]` for a face crop (padded to a square centred,
    /// resized), as every net on this backbone sees it.
    pub fn input(crop: RgbView<'_>, device: &B::Device) -> Tensor<B, 4> {
        face_input(crop, INPUT, MEAN_RGB, device)
    }

    /// [`Self::input`] of the crop `rect` of `img` (`extractFaceTensors`' slice, then the
    /// input).
    pub fn input_at(img: RgbView<'_>, rect: PixelRect, device: &B::Device) -> Tensor<B, 4> {
        face_input_at(img, rect, INPUT, MEAN_RGB, device)
    }

    /// The 256 bottleneck features per face: the dense blocks, then `avgPool([7, 7], [2, 2],
    /// 'valid')`, flattened as `as2D(batch, -1)` does for the fully connected head.
    ///
    /// # Shapes
    /// - `x`: `[batch, 3, 112, 112]`
    /// - output: `[batch, 256]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = x;
        for block in &self.blocks {
            x = block.forward(x);
        }
        let x = avg_pool2d(x, [7, 7], [2, 2], [0, 0], true, false);
        let [batch, c, _, _] = x.dims();
        x.reshape([batch, c])
    }
}
