//! CLIP's image preprocessing as the reference libraries do it: the shorter side resized to the
//! input size with Pillow's bicubic filter (the long side `int(size · long / short)`), the
//! centre square cropped, `x / 255` normalised with OpenAI's mean and standard deviation, CHW.
//!
//! transformers' `CLIPImageProcessor` (4.46) and open_clip's eval transform (3.3:
//! torchvision `Resize` + `CenterCrop` on the PIL image, `ToTensor`, `Normalize`) both resize
//! with Pillow, reproduced bit for bit by [`idforge_core::resample`]. They differ in two
//! details, which [`Convention`] selects:
//! - the crop offset: transformers floors `(side − size) / 2`, torchvision rounds it half to
//!   even, so when the overhang is 3 (mod 4) the crops are one pixel apart;
//! - `x / 255`: transformers multiplies by `1/255` in double precision and rounds to f32,
//!   torchvision divides in f32 (the same f32 for every byte; kept apart to be exact by
//!   construction).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use idforge_core::resample::{Filter, Plane8, resize};

use super::config::Convention;
use crate::face_api::preprocess::RgbView;

/// OpenAI's dataset mean (RGB), used by every CLIP preset.
pub const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI's dataset standard deviation (RGB). Written as upstream writes it; its nearest f32 is
/// what both libraries use.
#[allow(clippy::excessive_precision)]
pub const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// How images become the vision tower's input.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipPreprocess {
    /// Side of the square input (the vision config's `image_size`).
    pub size: usize,
    /// Whose crop rounding and rescaling to follow.
    pub convention: Convention,
    /// Per-channel mean subtracted from `x / 255`.
    pub mean: [f32; 3],
    /// Per-channel divisor.
    pub std: [f32; 3],
}

impl ClipPreprocess {
    /// OpenAI's normalisation at `size`, following `convention`.
    pub fn new(size: usize, convention: Convention) -> Self {
        Self {
            size,
            convention,
            mean: OPENAI_MEAN,
            std: OPENAI_STD,
        }
    }

    /// The size after the resize: the shorter side `size`, the longer `int(size · long /
    /// short)` (double precision, truncated, as both libraries compute it).
    pub fn resized_size(&self, width: usize, height: usize) -> (usize, usize) {
        let (short, long) = (width.min(height), width.max(height));
        let new_long = (self.size as f64 * long as f64 / short as f64) as usize;
        if width <= height {
            (self.size, new_long)
        } else {
            (new_long, self.size)
        }
    }

    fn crop_offset(&self, side: usize) -> usize {
        let overhang = side - self.size;
        match self.convention {
            Convention::HuggingFace => overhang / 2,
            Convention::OpenClip => (overhang as f64 / 2.0).round_ties_even() as usize,
        }
    }

    /// The resized and centre-cropped image: `size · size · 3` RGB bytes.
    ///
    /// # Panics
    /// If the image is empty or `data` does not hold `width · height · 3` bytes.
    pub fn resize_and_crop(&self, image: RgbView<'_>) -> Vec<u8> {
        assert!(
            image.width > 0 && image.height > 0,
            "an empty image cannot be preprocessed"
        );
        let (w, h) = self.resized_size(image.width, image.height);
        let plane = Plane8 {
            width: image.width,
            height: image.height,
            channels: 3,
            data: image.data.to_vec(),
        };
        let resized = resize(&plane, w, h, Filter::Bicubic);
        let (left, top) = (self.crop_offset(w), self.crop_offset(h));
        let mut out = Vec::with_capacity(self.size * self.size * 3);
        for y in top..top + self.size {
            let row = (y * w + left) * 3;
            out.extend_from_slice(&resized.data[row..row + self.size * 3]);
        }
        out
    }

    /// `(x / 255 − mean) / std` of `size · size` RGB bytes, channels first.
    pub fn normalize(&self, rgb: &[u8]) -> Vec<f32> {
        let n = self.size * self.size;
        assert_eq!(rgb.len(), n * 3, "expected {} RGB bytes", n * 3);
        let unit = |v: u8| match self.convention {
            Convention::HuggingFace => (f64::from(v) * (1.0 / 255.0)) as f32,
            Convention::OpenClip => f32::from(v) / 255.0,
        };
        let mut out = vec![0f32; n * 3];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * n + i] = (unit(px[c]) - self.mean[c]) / self.std[c];
            }
        }
        out
    }

    /// The network input of one image: `3 · size · size` floats, channels first.
    pub fn pixels(&self, image: RgbView<'_>) -> Vec<f32> {
        self.normalize(&self.resize_and_crop(image))
    }

    /// A batch of images as the vision tower's input.
    ///
    /// # Shapes
    /// - output: `[images.len(), 3, size, size]`
    pub fn tensor<B: Backend>(&self, images: &[RgbView<'_>], device: &B::Device) -> Tensor<B, 4> {
        let data: Vec<f32> = images.iter().flat_map(|&im| self.pixels(im)).collect();
        Tensor::from_data(
            TensorData::new(data, [images.len(), 3, self.size, self.size]),
            device,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_keeps_the_ratio_and_crops_round_per_convention() {
        let hf = ClipPreprocess::new(224, Convention::HuggingFace);
        assert_eq!(hf.resized_size(640, 427), (335, 224));
        assert_eq!(hf.resized_size(96, 130), (224, 303));
        // Overhang 111 (≡ 3 mod 4): 55 floored, 55.5 rounded half to even is 56.
        assert_eq!(hf.crop_offset(335), 55);
        let oc = ClipPreprocess::new(224, Convention::OpenClip);
        assert_eq!(oc.crop_offset(335), 56);
        // Overhang 79 (≡ 3 mod 4): 39 and 40; overhang 5: 2 and 2.
        assert_eq!((hf.crop_offset(303), oc.crop_offset(303)), (39, 40));
        assert_eq!((hf.crop_offset(229), oc.crop_offset(229)), (2, 2));
    }

    #[test]
    fn both_rescalings_agree_on_every_byte() {
        for v in 0..=255u8 {
            let a = (f64::from(v) * (1.0 / 255.0)) as f32;
            assert_eq!(a, f32::from(v) / 255.0, "{v}");
        }
    }

    #[test]
    fn output_is_channels_first() {
        let p = ClipPreprocess::new(2, Convention::HuggingFace);
        let out = p.normalize(&[255, 0, 0, 255, 0, 0, 255, 0, 0, 255, 0, 0]);
        let r = (1.0 - OPENAI_MEAN[0]) / OPENAI_STD[0];
        assert_eq!(&out[..4], &[r; 4]);
        assert_eq!(out[4], (0.0 - OPENAI_MEAN[1]) / OPENAI_STD[1]);
    }
}
