//! `face_landmark_68`: 68 facial landmarks from a face crop. Follows
//! `faceFeatureExtractor/FaceFeatureExtractor.ts` (the backbone shared with the expression net,
//! [`super::face_feature_extractor`]: 256 features), `faceProcessor/FaceProcessor.ts`
//! (fully connected layer to 136 values), and `faceLandmarkNet/FaceLandmark68NetBase.ts`
//! (`postProcess`), with the crop of `dom/extractFaceTensors.ts`.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::face_feature_extractor::{FaceFeatureExtractor, INPUT};
use super::layers::FullyConnected;
use super::preprocess::{PixelRect, RgbView};
use crate::error::ModelError;
use crate::readback::ReadBack;
use crate::tfjs::TfjsWeights;

/// The 68-point landmark network with its weights.
#[derive(Module, Debug)]
pub struct FaceLandmark68<B: Backend> {
    extractor: FaceFeatureExtractor<B>,
    fc: FullyConnected<B>,
}

impl<B: Backend> FaceLandmark68<B> {
    /// Builds the network from `face_landmark_68_model-weights_manifest.json`.
    pub fn load(weights: &TfjsWeights, device: &B::Device) -> Result<Self, ModelError> {
        Ok(FaceLandmark68 {
            extractor: FaceFeatureExtractor::load(weights, device)?,
            fc: FullyConnected::load(weights, "fc", device)?,
        })
    }

    /// The normalised input `[1, 3, 112, 112]` for a face crop (centred padding to square).
    pub fn input(crop: RgbView<'_>, device: &B::Device) -> Tensor<B, 4> {
        FaceFeatureExtractor::input(crop, device)
    }

    /// [`Self::input`] of the crop `rect` of `img`.
    pub fn input_at(img: RgbView<'_>, rect: PixelRect, device: &B::Device) -> Tensor<B, 4> {
        FaceFeatureExtractor::input_at(img, rect, device)
    }

    /// The 136 raw outputs (x, y interleaved, relative to the padded 112 square).
    ///
    /// # Shapes
    /// - `x`: `[batch, 3, 112, 112]`
    /// - output: `[batch, 136]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.fc.forward(self.extractor.forward(x))
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
        let device = self.fc.device();
        let out: Vec<f32> = self
            .forward(Self::input_at(img, crop_rect, &device))
            .to_f32_vec();
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
