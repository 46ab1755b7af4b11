//! CLIP (OpenAI's contrastive image–text model and LAION's OpenCLIP retrainings) in burn: the
//! text and vision towers, the BPE tokenizer, the image preprocessing, and the loader for
//! `.safetensors` checkpoints in Hugging Face's and OpenCLIP's layouts.
//!
//! ```text
//! text  → ClipTokenizer (77 ids) → ClipTextTransformer   → TextOutput   { hidden states, pooled, embeds }
//! image → ClipPreprocess (CHW)   → ClipVisionTransformer → VisionOutput { hidden states, pooled, embeds }
//! ```
//!
//! Weights are the user's files (nothing is downloaded); named presets ([`ClipConfig::PRESETS`])
//! or a transformers `config.json` give the shapes. The layout of a file is detected from its
//! names ([`WeightLayout::detect`]); the tokenizer and preprocessing follow the layout's home
//! library ([`Convention`]). `models/tests/clip_parity.rs` checks all of it against
//! transformers 4.46 and open_clip 3.3.

pub mod checkpoint;
pub mod config;
pub mod load;
pub mod preprocess;
pub mod text;
pub mod tokenizer;
mod transformer;
pub mod vision;

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

pub use checkpoint::{ClipCheckpoint, ClipSource, clip_t};
pub use config::{
    Activation, ClipConfig, ClipTextConfig, ClipVisionConfig, Convention, TextPooling,
};
pub use load::{WeightLayout, clip_tensors, text_tensors, vision_tensors};
pub use preprocess::{ClipPreprocess, OPENAI_MEAN, OPENAI_STD};
pub use text::{ClipTextTransformer, TextOutput};
pub use tokenizer::{ClipTokenizer, cached_bpe_vocab};
pub use vision::{ClipVisionTransformer, VisionOutput};

use crate::error::ModelError;
use crate::readback::ReadBack;
use crate::weights::WeightStore;

impl WeightLayout {
    /// The library whose tokenizer and preprocessing conventions go with checkpoints of this
    /// layout.
    pub fn convention(self) -> Convention {
        match self {
            WeightLayout::HuggingFace => Convention::HuggingFace,
            WeightLayout::OpenClip => Convention::OpenClip,
        }
    }
}

/// Both towers of a CLIP checkpoint.
#[derive(Module, Debug)]
pub struct Clip<B: Backend> {
    /// The text tower.
    pub text: ClipTextTransformer<B>,
    /// The vision tower.
    pub vision: ClipVisionTransformer<B>,
    /// `logit_scale` (the log of the softmax temperature's inverse), `[1]`.
    logit_scale: Param<Tensor<B, 1>>,
}

impl ClipConfig {
    /// A model of this shape with random weights, for tests and timing.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Clip<B> {
        Clip {
            text: self.text.init(device),
            vision: self.vision.init(device),
            logit_scale: Param::from_tensor(Tensor::from_floats([(1.0f32 / 0.07).ln()], device)),
        }
    }
}

impl<B: Backend> Clip<B> {
    /// Reads both towers (and `logit_scale`, CLIP's initial value 1/0.07 if the file has none)
    /// from a checkpoint.
    ///
    /// # Errors
    /// A bad config, or a missing or misshaped tensor, named.
    pub fn load(
        weights: &WeightStore,
        config: &ClipConfig,
        layout: WeightLayout,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        config.validate().map_err(|message| ModelError::Format {
            path: "<config>".into(),
            message,
        })?;
        let scale = load::logit_scale(weights)?.unwrap_or((1.0f32 / 0.07).ln());
        Ok(Self {
            text: ClipTextTransformer::load(weights, &config.text, layout, device)?,
            vision: ClipVisionTransformer::load(weights, &config.vision, layout, device)?,
            logit_scale: Param::from_tensor(Tensor::from_floats([scale], device)),
        })
    }

    /// `logit_scale` as stored (its exponential multiplies cosines into logits).
    pub fn logit_scale(&self) -> f32 {
        let v: Vec<f32> = self.logit_scale.val().to_f32_vec();
        v[0]
    }

    /// Projected text embeddings, L2-normalised: `[texts, embed]`.
    pub fn encode_text(&self, ids: &[Vec<u32>], device: &B::Device) -> Tensor<B, 2> {
        l2_normalize(self.text.embed(ids, device))
    }

    /// Projected image embeddings, L2-normalised: `[images, embed]`.
    ///
    /// # Panics
    /// Without a vision projection, or as [`ClipVisionTransformer::forward`].
    pub fn encode_image(&self, pixels: Tensor<B, 4>) -> Tensor<B, 2> {
        l2_normalize(
            self.vision
                .forward(pixels)
                .embeds
                .expect("the vision tower has no projection"),
        )
    }
}

/// Rows divided by their L2 norm (a zero row stays zero, as `F.normalize` with its epsilon).
///
/// # Shapes
/// - `x`: `[rows, dim]`
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// CLIP-T / CLIPScore as torchmetrics computes it (`multimodal/clip_score.py`): `100 ·
/// max(cos(image, text), 0)` for each pair of rows. Embeddings need not be normalised.
///
/// # Panics
/// If the two batches differ in shape.
pub fn clip_score<B: Backend>(image_embeds: Tensor<B, 2>, text_embeds: Tensor<B, 2>) -> Vec<f32> {
    assert_eq!(
        image_embeds.dims(),
        text_embeds.dims(),
        "one text per image"
    );
    let cos = (l2_normalize(image_embeds) * l2_normalize(text_embeds)).sum_dim(1);
    let cos: Vec<f32> = cos.to_f32_vec();
    cos.into_iter().map(|c| 100.0 * c.max(0.0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn clip_score_is_clamped_cosine_times_100() {
        let device = Default::default();
        let a = Tensor::<Flex, 2>::from_floats([[3.0, 4.0], [1.0, 0.0]], &device);
        let b = Tensor::<Flex, 2>::from_floats([[6.0, 8.0], [-1.0, 0.0]], &device);
        let s = clip_score(a, b);
        assert!((s[0] - 100.0).abs() < 1e-4, "{s:?}");
        assert_eq!(s[1], 0.0);
    }
}
