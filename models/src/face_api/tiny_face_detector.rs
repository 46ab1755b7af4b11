//! `tiny_face_detector`: a Tiny-YOLOv2-style detector with depthwise-separable convolutions,
//! the fast face-api detector. Follows `tinyFaceDetector/TinyFaceDetector.ts`, `const.ts` and
//! `tinyYolov2/TinyYolov2Base.ts` (`runMobilenet`, `forwardInput`, `extractBoxes`, `detect`)
//! with `isFirstLayerConv2d = true` and filter sizes `[3, 16, 32, 64, 128, 256, 512]`.
//!
//! Layers: conv0 (3×3, valid) → leaky → maxpool 2/2 'same' → 5 × [pad 1, separable 3×3 + bias,
//! leaky, maxpool 'same' (stride 2, the last stride 1)] → conv8 (1×1) → 5 anchors × [tx, ty,
//! tw, th, objectness] per cell.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Tensor, TensorData};

use super::layers::SeparableConv;
use super::preprocess::{RgbView, normalize_in_place, reshaped_dims, to_square_input};
use super::{Detection, non_max_suppression};
use crate::error::ModelError;
use crate::readback::ReadBack;
use crate::tfjs::TfjsWeights;

/// `BOX_ANCHORS` of `tinyFaceDetector/const.ts`, in cells.
const ANCHORS: [(f64, f64); 5] = [
    (1.603231, 2.094468),
    (6.041143, 7.080126),
    (2.882459, 3.518061),
    (4.266906, 5.178857),
    (9.041765, 10.66308),
];
/// `MEAN_RGB` of `tinyFaceDetector/const.ts`.
const MEAN_RGB: [f32; 3] = [117.001, 114.697, 97.404];
/// `IOU_THRESHOLD` of `tinyFaceDetector/const.ts`.
const IOU_THRESHOLD: f64 = 0.4;
const CHANNELS: [usize; 6] = [16, 32, 64, 128, 256, 512];

/// `tinyYolov2/leaky.ts`: `relu(x − 0.1x) + 0.1x`, computed the same way.
fn leaky<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let min = x.clone().mul_scalar(0.1f32);
    burn::tensor::activation::relu(x - min.clone()) + min
}

/// tfjs `maxPool([2, 2], stride, 'same')`: pads bottom/right with −∞ where TF's 'same' needs it.
fn max_pool_same<B: Backend>(x: Tensor<B, 4>, stride: usize) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    let pad = |n: usize| {
        let out = n.div_ceil(stride);
        ((out - 1) * stride + 2).saturating_sub(n)
    };
    let (ph, pw) = (pad(h), pad(w));
    // TF puts the smaller half of odd padding first; with a total of at most 1 it all goes after.
    let x = if ph + pw > 0 {
        x.pad(
            (pw / 2, pw - pw / 2, ph / 2, ph - ph / 2),
            PadMode::Constant(f32::NEG_INFINITY),
        )
    } else {
        x
    };
    max_pool2d(x, [2, 2], [stride, stride], [0, 0], [1, 1], false)
}

/// The tiny face detector with its weights.
#[derive(Module, Debug)]
pub struct TinyFaceDetector<B: Backend> {
    conv0_filters: Param<Tensor<B, 4>>,
    conv0_bias: Param<Tensor<B, 1>>,
    separable: Vec<SeparableConv<B>>,
    conv8_filters: Param<Tensor<B, 4>>,
    conv8_bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> TinyFaceDetector<B> {
    /// Builds the network from `tiny_face_detector_model-weights_manifest.json`.
    pub fn load(weights: &TfjsWeights, device: &B::Device) -> Result<Self, ModelError> {
        let bias = |name: &str| weights.tensor::<B, 1>(name, device).map(Param::from_tensor);
        let mut separable = Vec::new();
        for i in 1..CHANNELS.len() {
            separable.push(SeparableConv::load(weights, &format!("conv{i}"), device)?);
        }
        Ok(TinyFaceDetector {
            conv0_filters: Param::from_tensor(weights.conv2d("conv0/filters", device)?),
            conv0_bias: bias("conv0/bias")?,
            separable,
            conv8_filters: Param::from_tensor(weights.conv2d("conv8/filters", device)?),
            conv8_bias: bias("conv8/bias")?,
        })
    }

    /// The raw head output.
    ///
    /// # Shapes
    /// - `x`: `[batch, 3, size, size]`, normalised as [`Self::input`] makes it
    /// - output: `[batch, 25, cells, cells]`, channel `5·anchor + k` for k in tx, ty, tw, th, logit
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let conv = |x, w: &Param<Tensor<B, 4>>, b: &Param<Tensor<B, 1>>| {
            conv2d(
                x,
                w.val(),
                Some(b.val()),
                ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
            )
        };
        let mut x = max_pool_same(leaky(conv(x, &self.conv0_filters, &self.conv0_bias)), 2);
        let last = self.separable.len() - 1;
        for (i, layer) in self.separable.iter().enumerate() {
            // tinyYolov2/depthwiseSeparableConv.ts: the separable conv, then leaky.
            x = max_pool_same(leaky(layer.forward(x, 1)), if i == last { 1 } else { 2 });
        }
        conv(x, &self.conv8_filters, &self.conv8_bias)
    }

    /// The normalised input tensor `[1, 3, size, size]` for an RGB image (`forwardInput`).
    pub fn input(img: RgbView<'_>, input_size: usize, device: &B::Device) -> Tensor<B, 4> {
        let mut hwc = to_square_input(img, input_size, false);
        normalize_in_place(&mut hwc, MEAN_RGB);
        Tensor::<B, 3>::from_data(TensorData::new(hwc, [input_size, input_size, 3]), device)
            .permute([2, 0, 1])
            .unsqueeze()
    }

    /// Faces in `img` with score above `score_threshold`, in image pixels (`detect`,
    /// `locateFaces`); face-api's defaults are `input_size` 416 and threshold 0.5.
    pub fn detect(
        &self,
        img: RgbView<'_>,
        input_size: usize,
        score_threshold: f32,
    ) -> Vec<Detection> {
        let device = self.conv0_bias.val().device();
        let out = self.forward(Self::input(img, input_size, &device));
        let [_, _, cells, _] = out.dims();
        let values: Vec<f32> = out.permute([0, 2, 3, 1]).to_f32_vec();
        let (rw, rh) = reshaped_dims(img.width, img.height, input_size);
        let size = rw.max(rh) as f64;
        let (fx, fy) = (size / rw as f64, size / rh as f64);
        let sigmoid = |v: f32| 1.0 / (1.0 + (-f64::from(v)).exp());
        let n = cells as f64;
        let (mut boxes, mut scores) = (Vec::new(), Vec::new());
        for row in 0..cells {
            for col in 0..cells {
                for (a, &(aw, ah)) in ANCHORS.iter().enumerate() {
                    let t = &values[((row * cells + col) * 5 + a) * 5..][..5];
                    let score = sigmoid(t[4]);
                    if score <= f64::from(score_threshold) {
                        continue;
                    }
                    let cx = (col as f64 + sigmoid(t[0])) / n * fx;
                    let cy = (row as f64 + sigmoid(t[1])) / n * fy;
                    let w = f64::from(t[2]).exp() * aw / n * fx;
                    let h = f64::from(t[3]).exp() * ah / n * fy;
                    let (x, y) = (cx - w / 2.0, cy - h / 2.0);
                    boxes.push([x, y, x + w, y + h]);
                    scores.push(score as f32);
                }
            }
        }
        // NMS runs on boxes rescaled to the input size, which does not change IoUs.
        let keep = non_max_suppression(&boxes, &scores, IOU_THRESHOLD);
        let (iw, ih) = (img.width as f64, img.height as f64);
        keep.into_iter()
            .map(|i| {
                let [x0, y0, x1, y1] = boxes[i];
                Detection {
                    score: scores[i],
                    x: x0 * iw,
                    y: y0 * ih,
                    width: (x1 - x0) * iw,
                    height: (y1 - y0) * ih,
                }
            })
            .collect()
    }
}
