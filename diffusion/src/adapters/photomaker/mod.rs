//! PhotoMaker v1 and v2 (TencentARC/PhotoMaker, `photomaker/{model,model_v2,pipeline}.py` at
//! 060b4fc; v1's one class token per reference as released, commit 1e78aa6): an ID encoder
//! turns reference images (v2: and their ArcFace embeddings) into identity tokens, which replace
//! the class word's prompt embeddings through the fuse module, from `start_merge_step` on; a UNet
//! LoRA is on throughout.
//!
//! - [`id_encoder`]: the CLIP ViT-L/14 encoder, its projections and v2's `QFormerPerceiver`;
//! - [`fuse`]: the `FuseModule`;
//! - [`prompt`]: the trigger word, the class-token expansion, the SDXL prompt embeddings.
//!
//! Checkpoints: `photomaker-v1.bin` / `photomaker-v2.bin` (a torch pickle `{"id_encoder",
//! "lora_weights"}`) or the safetensors variant (`id_encoder.*`, `lora_weights.*`); the version
//! comes from the keys (`qformer_perceiver.*` is v2).
//!
//! ```no_run
//! # use burn::backend::Flex;
//! # use burn::tensor::Tensor;
//! # use idforge_diffusion::{Pipeline, SampleSettings, SamplerKind};
//! # use idforge_diffusion::adapters::photomaker::PhotoMaker;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let device = Default::default();
//! # let pixels = Tensor::<Flex, 4>::zeros([1, 3, 224, 224], &device);
//! let pipe = Pipeline::<Flex>::load("sdxl".as_ref(), &device)?;
//! let pm = PhotoMaker::load("photomaker-v1.bin".as_ref(), &pipe, &device)?;
//! let cond = pm.conditioning(&pipe, "a photo of a man img", pixels, None)?;
//! let uncond = pipe.encode_negative(None)?;
//! let plan = cond.plan(Some(&uncond), pm.hook(), 10);
//! # let settings = SampleSettings { steps: 50, guidance: 5.0, sampler: SamplerKind::Euler,
//! #     time_ids: [1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0] };
//! let latents = pipe.sample_with(&plan, &settings, pipe.seeded_noise(0, (1024, 1024))?, &mut |_, _| {})?;
//! # Ok(()) }
//! ```

pub mod fuse;
pub mod id_encoder;
pub mod prompt;

use std::ops::Range;
use std::path::Path;

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use idforge_models::WeightStore;
use idforge_models::clip::{ClipPreprocess, Convention};
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::nn::Init;

pub use fuse::FuseModule;
pub use id_encoder::{IdEncoder, IdEncoderOptions, IdEncoderSpec, Version};
pub use prompt::{DEFAULT_TRIGGER, TriggerIds, TriggerPrompt, encode_trigger_prompt, trigger_ids};

use super::lora::Lora;
use crate::attention::AttentionHook;
use crate::error::DiffusionError;
use crate::pipeline::{Conditioning, Pipeline, StepInputs, SwitchAt};

/// A loaded PhotoMaker: the ID encoder and the UNet LoRA.
#[derive(Module, Debug)]
pub struct PhotoMaker<B: Backend> {
    /// The ID encoder (with the fuse module).
    pub encoder: IdEncoder<B>,
    /// The UNet LoRA of `lora_weights`.
    pub lora: Lora<B>,
    #[module(skip)]
    spec: IdEncoderSpec,
    #[module(skip)]
    trigger: String,
}

/// The UNet's conditioning for the two phases of a PhotoMaker run.
#[derive(Debug, Clone)]
pub struct PhotoMakerConditioning<B: Backend> {
    /// Steps `0..=start_merge_step`: the prompt without the trigger word.
    pub text_only: Conditioning<B>,
    /// Later steps: the class tokens fused with the identity; the pooled embedding is the
    /// class-expanded prompt's.
    pub fused: Conditioning<B>,
    /// Where the fused tokens are in `fused.context`.
    pub class_tokens: Range<usize>,
}

impl<B: Backend> PhotoMakerConditioning<B> {
    /// The per-step inputs of the reference's loop: `text_only` while `step <=
    /// start_merge_step`, `fused` after, with `uncond` (the negative prompt's, or SDXL's zeros)
    /// and `hook` (the LoRA, or it composed with other hooks) throughout.
    pub fn plan<'a>(
        &'a self,
        uncond: Option<&'a Conditioning<B>>,
        hook: &'a dyn AttentionHook<B>,
        start_merge_step: usize,
    ) -> SwitchAt<'a, B> {
        SwitchAt {
            before: StepInputs {
                cond: &self.text_only,
                uncond,
                hook,
            },
            after: StepInputs {
                cond: &self.fused,
                uncond,
                hook,
            },
            start: start_merge_step.saturating_add(1),
        }
    }
}

impl<B: Backend> PhotoMaker<B> {
    /// Reads a PhotoMaker file for an SDXL `pipeline` with the published head widths (see
    /// [`IdEncoderOptions`]).
    pub fn load(
        path: &Path,
        pipeline: &Pipeline<B>,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        Self::load_with(path, pipeline, &IdEncoderOptions::default(), device)
    }

    /// [`PhotoMaker::load`] with other head widths (tiny test checkpoints).
    pub fn load_with(
        path: &Path,
        pipeline: &Pipeline<B>,
        options: &IdEncoderOptions,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        let store = WeightStore::open(path)?;
        if !store.names().any(|n| n.starts_with("id_encoder.")) {
            let hint = if store.names().any(|n| n.starts_with("image_proj.")) {
                " (it holds `image_proj.*`: an IP-Adapter file)"
            } else {
                ""
            };
            return Err(DiffusionError::Config {
                path: path.to_path_buf(),
                message: format!(
                    "no `id_encoder.*` tensors: not a PhotoMaker file{hint}; give \
                     photomaker-v1.bin / photomaker-v2.bin or their safetensors variant"
                ),
            });
        }
        if let Some(other) = store
            .names()
            .find(|n| !n.starts_with("id_encoder.") && !n.starts_with("lora_weights."))
        {
            return Err(DiffusionError::Config {
                path: path.to_path_buf(),
                message: format!(
                    "tensor `{other}` is neither under `id_encoder.` nor `lora_weights.`: a \
                     PhotoMaker file holds those two parts only"
                ),
            });
        }
        let lora = Lora::load_unet(&store, "lora_weights.", &pipeline.unet, device)?;
        let store = store.with_prefix("id_encoder.");
        let spec = IdEncoderSpec::detect(&store, options)?;
        let text: usize = pipeline
            .encoders
            .iter()
            .map(|e| e.tower.config().width)
            .sum();
        if spec.dim != text {
            return Err(DiffusionError::Config {
                path: path.to_path_buf(),
                message: format!(
                    "the ID encoder fuses {}-wide prompt embeddings, this pipeline's are {text} \
                     wide: PhotoMaker was made for SDXL (2048)",
                    spec.dim
                ),
            });
        }
        let encoder = IdEncoder::new(&Init::Load(&store), &spec, device)?;
        Ok(Self {
            encoder,
            lora,
            spec,
            trigger: DEFAULT_TRIGGER.to_string(),
        })
    }

    /// Uses another trigger word than `img` (the reference's `trigger_word`).
    pub fn with_trigger(mut self, trigger: &str) -> Self {
        self.trigger = trigger.to_string();
        self
    }

    /// v1 or v2.
    pub fn version(&self) -> Version {
        self.spec.version
    }

    /// The encoder's shape, as read from the file.
    pub fn spec(&self) -> &IdEncoderSpec {
        &self.spec
    }

    /// Identity tokens per reference image (v1: 1, v2: 2): the class word is repeated this
    /// many times per reference.
    pub fn tokens_per_reference(&self) -> usize {
        self.spec.tokens_per_reference()
    }

    /// Reference images (RGB, any size) as the ID encoder takes them: the reference's
    /// `CLIPImageProcessor()` (shorter side resized bicubic to the encoder's 224, centre crop,
    /// OpenAI mean / std), through `idforge_models::clip::ClipPreprocess`.
    ///
    /// # Shapes
    /// - → `[images.len(), 3, size, size]`
    pub fn preprocess(&self, images: &[RgbView<'_>], device: &B::Device) -> Tensor<B, 4> {
        ClipPreprocess::new(self.spec.vision.image_size, Convention::HuggingFace)
            .tensor(images, device)
    }

    /// The identity tokens of the references (see [`IdEncoder::forward`]): `[n, tokens, 2048]`.
    pub fn id_tokens(
        &self,
        pixels: Tensor<B, 4>,
        id_embeds: Option<Tensor<B, 2>>,
    ) -> Result<Tensor<B, 3>, DiffusionError> {
        self.encoder.forward(pixels, id_embeds)
    }

    /// The prompt for `references` images, encoded with the class token repeated, before the
    /// fuse (`encode_prompt_with_trigger_word`), and its text-only variant.
    pub fn encode_prompt(
        &self,
        pipeline: &Pipeline<B>,
        prompt: &str,
        references: usize,
    ) -> Result<TriggerPrompt<B>, DiffusionError> {
        encode_trigger_prompt(
            pipeline,
            prompt,
            &self.trigger,
            references * self.tokens_per_reference(),
        )
    }

    /// The class tokens of `prompt` fused with `id_tokens` (`[n, tokens, dim]`, from
    /// [`PhotoMaker::id_tokens`]).
    pub fn fuse(
        &self,
        prompt: &TriggerPrompt<B>,
        id_tokens: Tensor<B, 3>,
    ) -> Result<Tensor<B, 3>, DiffusionError> {
        let [n, t, d] = id_tokens.dims();
        self.encoder.fuse_module.forward(
            prompt.expanded.context.clone(),
            prompt.class_tokens.clone(),
            id_tokens.reshape([n * t, d]),
        )
    }

    /// Both phases' conditioning for a prompt with the trigger word and the references: their
    /// CLIP-preprocessed pixels (`[n, 3, 224, 224]`, see [`PhotoMaker::preprocess`]) and, for v2, their un-normalised ArcFace embeddings
    /// (`[n, 512]`).
    pub fn conditioning(
        &self,
        pipeline: &Pipeline<B>,
        prompt: &str,
        pixels: Tensor<B, 4>,
        id_embeds: Option<Tensor<B, 2>>,
    ) -> Result<PhotoMakerConditioning<B>, DiffusionError> {
        let references = pixels.dims()[0];
        let encoded = self.encode_prompt(pipeline, prompt, references)?;
        let tokens = self.id_tokens(pixels, id_embeds)?;
        let context = self.fuse(&encoded, tokens)?;
        Ok(PhotoMakerConditioning {
            fused: Conditioning {
                context,
                pooled: encoded.expanded.pooled.clone(),
            },
            class_tokens: encoded.class_tokens.clone(),
            text_only: encoded.text_only,
        })
    }

    /// The UNet hook: the LoRA of `lora_weights` (on in both phases, as the reference loads it
    /// into the UNet).
    pub fn hook(&self) -> &Lora<B> {
        &self.lora
    }
}
