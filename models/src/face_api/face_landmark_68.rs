//! `face_landmark_68`: 68 facial landmarks from a face crop. Follows
//! `faceFeatureExtractor/FaceFeatureExtractor.ts` and `denseBlock.ts` (four dense blocks of
//! depthwise-separable convolutions, average pool, 256 features), `faceProcessor/FaceProcessor.ts`
//! (fully connected layer to 136 values), and `faceLandmarkNet/FaceLandmark68NetBase.ts`
//! (`postProcess`), with the crop of `dom/extractFaceTensors.ts`.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::{avg_pool2d, conv2d};
use burn::tensor::ops::ConvOptions;

use super::layers::{SeparableConv, pad_same};
use super::preprocess::{PixelRect, RgbView, face_input, face_input_at};
use crate::error::ModelError;
use crate::tfjs::TfjsWeights;

/// Mean of `FaceFeatureExtractor.forwardInput`.
const MEAN_RGB: [f32; 3] = [122.782, 117.001, 104.298];
const INPUT: usize = 112;

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
        use burn::tensor::activation::relu;
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

/// The 68-point landmark network with its weights.
#[derive(Module, Debug)]
pub struct FaceLandmark68<B: Backend> {
    blocks: Vec<DenseBlock<B>>,
    fc_weights: Param<Tensor<B, 2>>,
    fc_bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> FaceLandmark68<B> {
    /// Builds the network from `face_landmark_68_model-weights_manifest.json`.
    pub fn load(weights: &TfjsWeights, device: &B::Device) -> Result<Self, ModelError> {
        Ok(FaceLandmark68 {
            blocks: (0..4)
                .map(|i| DenseBlock::load(weights, i, device))
                .collect::<Result<_, _>>()?,
            fc_weights: Param::from_tensor(weights.dense("fc/weights", device)?),
            fc_bias: Param::from_tensor(weights.tensor("fc/bias", device)?),
        })
    }

    /// The normalised input `[1, 3, 112, 112]` for a face crop (centred padding to square).
    pub fn input(crop: RgbView<'_>, device: &B::Device) -> Tensor<B, 4> {
        face_input(crop, INPUT, MEAN_RGB, device)
    }

    /// [`Self::input`] of the crop `rect` of `img`.
    pub fn input_at(img: RgbView<'_>, rect: PixelRect, device: &B::Device) -> Tensor<B, 4> {
        face_input_at(img, rect, INPUT, MEAN_RGB, device)
    }

    /// The 136 raw outputs (x, y interleaved, relative to the padded 112 square).
    ///
    /// # Shapes
    /// - `x`: `[batch, 3, 112, 112]`
    /// - output: `[batch, 136]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = x;
        for block in &self.blocks {
            x = block.forward(x);
        }
        let x = avg_pool2d(x, [7, 7], [2, 2], [0, 0], true, false);
        let [batch, c, _, _] = x.dims();
        x.reshape([batch, c]).matmul(self.fc_weights.val()) + self.fc_bias.val().unsqueeze()
    }

    /// 68 `(x, y)` points in image pixels for the face whose detection box is `box_xy` (its
    /// unrounded top-left corner) and whose crop is `crop_rect` (the box clipped and floored,
    /// as `extractFaceTensors` cuts it).
    pub fn landmarks(
        &self,
        img: RgbView<'_>,
        crop_rect: PixelRect,
        box_xy: (f64, f64),
    ) -> Vec<(f64, f64)> {
        let device = self.fc_bias.val().device();
        let out: Vec<f32> = self
            .forward(Self::input_at(img, crop_rect, &device))
            .into_data()
            .to_vec()
            .expect("f32 output");
        Self::points(&out, crop_rect, box_xy)
    }

    /// The 68 image-pixel points of one face from its 136 raw outputs (`postProcess`, then
    /// the shift by the detection box).
    pub fn points(out: &[f32], crop_rect: PixelRect, box_xy: (f64, f64)) -> Vec<(f64, f64)> {
        let PixelRect { width, height, .. } = crop_rect;
        // postProcess: undo the (assumed symmetric) padding of the scaled crop, in float32.
        // The dimensions are doubles in JavaScript, stored into float32 tensors.
        let scale = INPUT as f64 / width.max(height) as f64;
        let (sw, sh) = (width as f64 * scale, height as f64 * scale);
        let pad_x = if sw < sh {
            ((sw - sh).abs() / 2.0) as f32
        } else {
            0.0
        };
        let pad_y = if sh < sw {
            ((sw - sh).abs() / 2.0) as f32
        } else {
            0.0
        };
        let (sw, sh) = (sw as f32, sh as f32);
        out.chunks_exact(2)
            .map(|p| {
                let rx = (p[0] * INPUT as f32 - pad_x) / sw;
                let ry = (p[1] * INPUT as f32 - pad_y) / sh;
                (
                    f64::from(rx) * width as f64 + box_xy.0,
                    f64::from(ry) * height as f64 + box_xy.1,
                )
            })
            .collect()
    }
}
