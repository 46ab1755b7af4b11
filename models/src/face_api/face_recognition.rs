//! `face_recognition`: the 128-d face descriptor (a ResNet-34-like network, dlib's
//! `dlib_face_recognition_resnet_model_v1` as ported by face-api). Follows
//! `faceRecognitionNet/FaceRecognitionNet.ts`, `residualLayer.ts`, `convLayer.ts` and
//! `scaleLayer.ts`; the 150×150 input is the aligned square crop of
//! `classes/FaceLandmarks.ts` `align(useDlibAlignment)`, padded to a square centred.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, PadMode};

use super::preprocess::{PixelRect, RgbView, face_input, face_input_at};
use crate::error::ModelError;
use crate::readback::ReadBack;
use crate::tfjs::TfjsWeights;

const MEAN_RGB: [f32; 3] = [122.782, 117.001, 104.298];
const INPUT: usize = 150;

/// `convLayer`: conv + bias, then the per-channel scale layer `x·w + b`, folded into the
/// convolution at load time (`filters·w`, `bias·w + b`).
#[derive(Module, Debug)]
struct ConvScale<B: Backend> {
    filters: Param<Tensor<B, 4>>,
    bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> ConvScale<B> {
    fn load(w: &TfjsWeights, prefix: &str, device: &B::Device) -> Result<Self, ModelError> {
        let filters: Tensor<B, 4> = w.conv2d(&format!("{prefix}/conv/filters"), device)?;
        let bias: Tensor<B, 1> = w.tensor(&format!("{prefix}/conv/bias"), device)?;
        let sw: Tensor<B, 1> = w.tensor(&format!("{prefix}/scale/weights"), device)?;
        let sb: Tensor<B, 1> = w.tensor(&format!("{prefix}/scale/biases"), device)?;
        let c = sw.dims()[0];
        let filters = filters * sw.clone().reshape([c, 1, 1, 1]);
        let filters = Tensor::from_data(filters.into_data(), device);
        Ok(ConvScale {
            filters: Param::from_tensor(filters),
            bias: Param::from_tensor(bias * sw + sb),
        })
    }

    /// `same` padding (stride 1, odd kernel) or `valid` (the stride-2 "down" convolutions).
    fn forward(&self, x: Tensor<B, 4>, stride: usize, same: bool, with_relu: bool) -> Tensor<B, 4> {
        let k = self.filters.val().dims()[2];
        let p = if same { k / 2 } else { 0 };
        let out = conv2d(
            x,
            self.filters.val(),
            Some(self.bias.val()),
            ConvOptions::new([stride, stride], [p, p], [1, 1], 1),
        );
        if with_relu { relu(out) } else { out }
    }
}

/// `residual` / `residualDown`.
#[derive(Module, Debug)]
struct Residual<B: Backend> {
    conv1: ConvScale<B>,
    conv2: ConvScale<B>,
    down: bool,
}

impl<B: Backend> Residual<B> {
    fn load(w: &TfjsWeights, name: &str, device: &B::Device) -> Result<Self, ModelError> {
        Ok(Residual {
            conv1: ConvScale::load(w, &format!("{name}/conv1"), device)?,
            conv2: ConvScale::load(w, &format!("{name}/conv2"), device)?,
            down: name.contains("down"),
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if !self.down {
            let out = self.conv1.forward(x.clone(), 1, true, true);
            let out = self.conv2.forward(out, 1, true, false);
            return relu(out + x);
        }
        let mut out = self.conv1.forward(x.clone(), 2, false, true);
        out = self.conv2.forward(out, 1, true, false);
        let mut pooled = avg_pool2d(x, [2, 2], [2, 2], [0, 0], true, false);
        let [b, c, h, w] = out.dims();
        let [_, pc, ph, pw] = pooled.dims();
        if ph != h || pw != w {
            // face-api appends one zero row, then one zero column, to the convolution output.
            out = out.pad((0, 1, 0, 1), PadMode::Constant(0.0));
        }
        if pc != c {
            pooled = Tensor::cat(vec![pooled.clone(), pooled.zeros_like()], 1);
        }
        debug_assert_eq!(pooled.dims(), [b, c, out.dims()[2], out.dims()[3]]);
        relu(pooled + out)
    }
}

/// The face descriptor network with its weights.
#[derive(Module, Debug)]
pub struct FaceRecognition<B: Backend> {
    stem: ConvScale<B>,
    layers: Vec<Residual<B>>,
    fc: Param<Tensor<B, 2>>,
}

/// The residual layers in order, named as in the weight manifest.
const LAYERS: [&str; 14] = [
    "conv32_1",
    "conv32_2",
    "conv32_3",
    "conv64_down",
    "conv64_1",
    "conv64_2",
    "conv64_3",
    "conv128_down",
    "conv128_1",
    "conv128_2",
    "conv256_down",
    "conv256_1",
    "conv256_2",
    "conv256_down_out",
];

impl<B: Backend> FaceRecognition<B> {
    /// Builds the network from `face_recognition_model-weights_manifest.json`.
    pub fn load(weights: &TfjsWeights, device: &B::Device) -> Result<Self, ModelError> {
        let layers = LAYERS
            .iter()
            .map(|n| Residual::load(weights, n, device))
            .collect::<Result<_, _>>()?;
        Ok(FaceRecognition {
            stem: ConvScale::load(weights, "conv32_down", device)?,
            layers,
            fc: Param::from_tensor(weights.dense("fc", device)?),
        })
    }

    /// The normalised input `[1, 3, 150, 150]` for an aligned face crop.
    pub fn input(crop: RgbView<'_>, device: &B::Device) -> Tensor<B, 4> {
        face_input(crop, INPUT, MEAN_RGB, device)
    }

    /// [`Self::input`] of the crop `rect` of `img`.
    pub fn input_at(img: RgbView<'_>, rect: PixelRect, device: &B::Device) -> Tensor<B, 4> {
        face_input_at(img, rect, INPUT, MEAN_RGB, device)
    }

    /// Descriptors (not unit length, as face-api returns them).
    ///
    /// # Shapes
    /// - `x`: `[batch, 3, 150, 150]`
    /// - output: `[batch, 128]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = self.stem.forward(x, 2, false, true);
        x = max_pool2d(x, [3, 3], [2, 2], [0, 0], [1, 1], false);
        for layer in &self.layers {
            x = layer.forward(x);
        }
        let [b, c, _, _] = x.dims();
        let avg: Tensor<B, 2> = x.mean_dim(3).mean_dim(2).reshape([b, c]);
        avg.matmul(self.fc.val())
    }

    /// The descriptor of the face in `crop_rect` (the aligned square of the face's landmarks,
    /// clipped to the image and floored).
    pub fn descriptor(&self, img: RgbView<'_>, crop_rect: PixelRect) -> Vec<f32> {
        let device = self.fc.val().device();
        self.forward(Self::input_at(img, crop_rect, &device))
            .to_f32_vec()
    }
}
