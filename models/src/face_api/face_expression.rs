//! `face_expression_model`: seven facial-expression probabilities from a face crop. Follows
//! `faceExpressionNet/FaceExpressionNet.ts` (`forwardInput`: softmax of `runNet`),
//! `faceProcessor/FaceProcessor.ts` (`runNet`: the shared backbone of
//! [`super::face_feature_extractor`], then a fully connected layer 256 → 7) and
//! `faceExpressionNet/FaceExpressions.ts` (the label order).

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;

use super::face_feature_extractor::FaceFeatureExtractor;
use super::layers::FullyConnected;
use super::preprocess::{PixelRect, RgbView};
use crate::error::ModelError;
use crate::readback::ReadBack;
use crate::tfjs::TfjsWeights;

/// `FACE_EXPRESSION_LABELS`: the meaning of each output, in the network's output order.
pub const EXPRESSION_LABELS: [&str; 7] = [
    "neutral",
    "happy",
    "sad",
    "angry",
    "fearful",
    "disgusted",
    "surprised",
];

/// The face expression network with its weights (its own backbone values, not the landmark
/// net's).
#[derive(Module, Debug)]
pub struct FaceExpressionNet<B: Backend> {
    extractor: FaceFeatureExtractor<B>,
    fc: FullyConnected<B>,
}

impl<B: Backend> FaceExpressionNet<B> {
    /// Builds the network from `face_expression_model-weights_manifest.json`.
    pub fn load(weights: &TfjsWeights, device: &B::Device) -> Result<Self, ModelError> {
        Ok(FaceExpressionNet {
            extractor: FaceFeatureExtractor::load(weights, device)?,
            fc: FullyConnected::load(weights, "fc", device)?,
        })
    }

    /// The normalised input `[1, 3, 112, 112]` for a face crop (centred padding to square),
    /// the same as the landmark net's.
    pub fn input(crop: RgbView<'_>, device: &B::Device) -> Tensor<B, 4> {
        FaceFeatureExtractor::input(crop, device)
    }

    /// [`Self::input`] of the crop `rect` of `img`.
    pub fn input_at(img: RgbView<'_>, rect: PixelRect, device: &B::Device) -> Tensor<B, 4> {
        FaceFeatureExtractor::input_at(img, rect, device)
    }

    /// The backbone's 256 features (`faceFeatureExtractor.forwardInput`), for checking the
    /// backbone alone.
    ///
    /// # Shapes
    /// - `x`: `[batch, 3, 112, 112]`
    /// - output: `[batch, 256]`
    pub fn features(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.extractor.forward(x)
    }

    /// The seven logits before the softmax (`runNet`).
    ///
    /// # Shapes
    /// - `x`: `[batch, 3, 112, 112]`
    /// - output: `[batch, 7]`
    pub fn logits(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.fc.forward(self.extractor.forward(x))
    }

    /// The seven probabilities in [`EXPRESSION_LABELS`] order (`forwardInput`: softmax of
    /// the logits), summing to 1 per face.
    ///
    /// # Shapes
    /// - `x`: `[batch, 3, 112, 112]`
    /// - output: `[batch, 7]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        softmax(self.logits(x), 1)
    }

    /// The probabilities of the face in `crop_rect` of `img` (`predictExpressions` on
    /// `extractFaceTensors`' slice); see [`super::pipeline::attribute_crop`] for the rectangle
    /// face-api's chain cuts.
    pub fn expressions(&self, img: RgbView<'_>, crop_rect: PixelRect) -> [f32; 7] {
        let device = self.fc.device();
        let out: Vec<f32> = self
            .forward(Self::input_at(img, crop_rect, &device))
            .to_f32_vec();
        out.try_into().expect("7 probabilities")
    }
}
