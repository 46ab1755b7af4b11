//! One training step of the split-prompt adapter (matosjan/persongen's `ipmakerbgbody`, the
//! seed thesis' method): PhotoMaker v1's identity path (ID encoder + fuse module + UNet LoRA,
//! [`crate::photomaker`]) plus the background / body decoupled attention of
//! [`idforge_diffusion::adapters::split_prompt`], trained together; the export is the two files
//! `idforge generate --adapter` loads side by side.
//!
//! # What persongen trains (matosjan/persongen at the mirror's HEAD)
//!
//! - Model (`src/configs/model/ipmakerbgbody.yaml`: SDXL `hotshotco/SDXL-512`, `rank: 64`, text
//!   encoders in fp16; `src/model/ipmakerbgbody/model.py`):
//!   - l.131-147: the VAE, both text encoders, the UNet and the ID encoder frozen, then
//!     `id_encoder.visual_projection`, `visual_projection_2` and the whole `fuse_module`
//!     trainable; CLIP's vision backbone stays frozen. l.151-155: UNet, VAE, ID encoder in fp32.
//!   - l.157-171: PEFT `LoraConfig(r = rank, lora_alpha = rank, init_lora_weights = "gaussian",
//!     target_modules = [to_k, to_q, to_v, to_out.0])`, i.e. every self- and cross-attention
//!     (`lora_modules`); [`crate::photomaker::fresh_lora`] draws the same.
//!   - l.174-199: `myIPAttnProcessorTwoConds2_0(num_tokens = 77)` on every cross attention, its
//!     `to_{k,v}_ip_{bg,body}` (bias-free) loaded from the layer's `to_k` / `to_v` base weights
//!     ([`SplitPrompt::new_from_unet`]); `adapter_modules` = the processors, trained.
//!   - l.201-210: the checkpoint is `{lora_weights (diffusers names), adapter_modules,
//!     id_encoder}`.
//! - Step (`model.py` `forward`, l.264-373):
//!   - l.294-301: the caption `"main\n\nbackground\n\nbody"` split on `"\n\n"`; not exactly three
//!     parts: all main, background and body `''`.
//!   - l.303-307, l.376-476: the main prompt with the trigger `img`, its class token repeated
//!     once per reference (v1); the pooled embedding (`text_embeds`) comes from it alone.
//!   - l.313-318: background and body each through the same two frozen text encoders
//!     (penultimate states, concatenated, 77 tokens; their pooled output discarded).
//!   - l.326-330: the references (1-4, `src/datasets/id_dataset.py` l.142) through the ID
//!     encoder and fuse module per sample.
//!   - l.351: the UNet context `cat([main, background, body])` (231 tokens); the processor
//!     attends to `main` with `to_k` / `to_v` (LoRA'd) and adds `SDPA(q, k_bg, v_bg) +
//!     SDPA(q, k_body, v_body)` at scale 1 before `to_out` (LoRA'd), `q` the LoRA'd query.
//!   - l.256-262, l.282-284: SDXL time ids `original_size + crop_top_left + (512, 512)`.
//!   - `do_cfg` (the condition drop): l.309-311 and l.395 make main, background and body the
//!     empty prompt's encoding (not zeros), the ID encoder is skipped, and l.340-342 add
//!     `0 · Σ id_encoder params` so that its trained tensors get zero gradients — which
//!     `torch.optim.Adam` still steps with their moments ([`SplitSample::identity`] `None`
//!     does the same here).
//!   - l.361-368 and `src/loss/diffusion_loss.py` l.10-18: the masked loss crops prediction
//!     and target to the face box `// 8` per sample and averages the per-sample MSEs; else
//!     the plain ε MSE (`noise_scheduler` from the model's folder, uniform timesteps l.273).
//! - Trainer (`src/trainer/trainer.py` l.41-65): `do_cfg` and `masked_loss` drawn once per
//!   batch (`do_cfg_p 0.1`, `masked_loss_p 0.5`, `src/configs/train_ipmakerbgbody.yaml`
//!   l.36-37), backward, clipping only when `trainer.max_grad_norm` is set
//!   (`src/trainer/base_trainer.py` l.483-493; it is not), `optimizer.step`, `lr_scheduler.step`.
//! - Optimizer (`train_ipmakerbg_body.py` l.75-89, `train_ipmakerbgbody.yaml` l.13-22):
//!   `torch.optim.Adam` (weight decay commented out) over five groups — `lora_params`,
//!   `adapter_modules_params`, `vis_proj_params`, `vis_proj_2_params`, `fuse_module_params` —
//!   **all at 1e-5**, warm-up `LambdaLR(min((s + 1) / 1000, 1))` (l.103), batch 2 per GPU
//!   (`src/configs/dataloader/example.yaml`).
//!
//! # Checkpoint keys and export
//!
//! The PhotoMaker parts keep [`ParamNames::photomaker`]'s keys (`id_encoder.…`,
//! `lora_weights.unet.{layer}.processor.to_{q,k,v,out}_lora.{down,up}.weight`); the
//! background / body projections are `split_prompt.{i}.to_{k,v}_ip_{bg,body}.weight`, `i` the
//! `attn_processors` index (persongen's `adapter_modules.{i}.…`). [`export_split_prompt`]
//! writes the two files `idforge generate --adapter PM --adapter SPLIT` reads: a PhotoMaker
//! file (`PhotoMaker::load`) and a split-prompt file (`SplitPrompt::load`).
//!
//! Parity: `train/tests/split_prompt_step.rs` against persongen's own `IPMakerBGBody`, trainer
//! step and loss (`tools/train-reference/make_split_prompt_step_fixture.py`).

use std::ops::Range;
use std::path::Path;

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use idforge_diffusion::adapters::photomaker::PhotoMaker;
use idforge_diffusion::adapters::split_prompt::{
    PartTokens, SplitConditioning, SplitPrompt, SplitPrompts, SplitScale,
};
use idforge_diffusion::pipeline::{Conditioning, Pipeline};
use idforge_diffusion::unet::AddedConditions;
use idforge_diffusion::{Hooks, UNet};
use idforge_models::WeightStore;

use crate::error::TrainError;
use crate::export::write_safetensors;
use crate::loss::NoiseDraw;
use crate::names::ParamNames;
use crate::optim::ParamGroup;
use crate::photomaker::{PhotoMakerParts, added_to_device, export_photomaker, trainable_sum};
use crate::step::{Objective, ToDevice, Trained, Trainer};

/// What a split-prompt run trains: PhotoMaker's parts (backbone frozen) and the background /
/// body projections.
#[derive(Module, Debug)]
pub struct SplitParts<B: Backend> {
    /// The ID encoder and the UNet LoRA.
    pub photomaker: PhotoMakerParts<B>,
    /// `to_{k,v}_ip_{bg,body}` of every cross-attention layer.
    pub split: SplitPrompt<B>,
}

impl<B: Backend> SplitParts<B> {
    /// persongen's start from a PhotoMaker model (fine-tuning, as the thesis did): its parts,
    /// and the background / body projections copied from each layer's `to_k` / `to_v`. The
    /// CLIP backbone is frozen here.
    pub fn from_photomaker(
        photomaker: PhotoMakerParts<B>,
        unet: &UNet<B>,
    ) -> Result<Self, TrainError> {
        let split = SplitPrompt::new_from_unet(unet)?;
        Ok(Self {
            photomaker: photomaker.freeze(unet)?,
            split,
        })
    }

    /// Stops gradients for CLIP's vision backbone ([`PhotoMakerParts::freeze`]).
    pub fn freeze(self, unet: &UNet<B>) -> Result<Self, TrainError> {
        Ok(Self {
            photomaker: self.photomaker.freeze(unet)?,
            split: self.split,
        })
    }
}

/// The learning rates of persongen's five groups.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitRates {
    /// The UNet LoRA (`lr_for_lora`).
    pub lora: f64,
    /// The background / body projections (`lr_for_adapter_modules`).
    pub adapter: f64,
    /// `id_encoder.visual_projection` (`lr_for_vis_proj`).
    pub visual_projection: f64,
    /// `id_encoder.visual_projection_2` (`lr_for_vis_proj_2`).
    pub visual_projection_2: f64,
    /// `id_encoder.fuse_module` (`lr_for_fuse_module`).
    pub fuse_module: f64,
}

impl SplitRates {
    /// Every group at `lr`.
    pub fn uniform(lr: f64) -> Self {
        Self {
            lora: lr,
            adapter: lr,
            visual_projection: lr,
            visual_projection_2: lr,
            fuse_module: lr,
        }
    }

    /// `train_ipmakerbgbody.yaml`: all 1e-5.
    pub fn persongen() -> Self {
        Self::uniform(1e-5)
    }
}

impl Default for SplitRates {
    fn default() -> Self {
        Self::persongen()
    }
}

/// persongen's optimizer groups (`train_ipmakerbg_body.py` l.81-87), in its order, picked by
/// checkpoint key.
pub fn split_prompt_groups(rates: SplitRates) -> Vec<ParamGroup> {
    vec![
        ParamGroup::new("lora_weights.", rates.lora),
        ParamGroup::new(
            idforge_diffusion::adapters::split_prompt::PREFIX,
            rates.adapter,
        ),
        ParamGroup::new("id_encoder.visual_projection.", rates.visual_projection),
        ParamGroup::new("id_encoder.visual_projection_2.", rates.visual_projection_2),
        ParamGroup::new("id_encoder.fuse_module.", rates.fuse_module),
    ]
}

impl ParamNames {
    /// The split-prompt parts under their checkpoint keys: [`ParamNames::photomaker`]'s, then
    /// `split_prompt.{i}.to_{k,v}_ip_{bg,body}.weight`.
    pub fn split_prompt<B: Backend>(
        parts: &SplitParts<B>,
        unet: &UNet<B>,
    ) -> Result<Self, TrainError> {
        let indices = parts.split.layer_indices().to_vec();
        let split = Self::of_module(&parts.split, |path| {
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            let unknown = || {
                TrainError::Setting(format!(
                    "no split-prompt checkpoint key for the tensor `{}`",
                    p.join(".")
                ))
            };
            match p.as_slice() {
                ["layers", j, m, "weight"]
                    if idforge_diffusion::adapters::split_prompt::MODULES.contains(m) =>
                {
                    let j: usize = j.parse().map_err(|_| unknown())?;
                    let i = indices.get(j).ok_or_else(unknown)?;
                    Ok(format!(
                        "{}{i}.{m}.weight",
                        idforge_diffusion::adapters::split_prompt::PREFIX
                    ))
                }
                _ => Err(unknown()),
            }
        })?;
        Ok(Self::photomaker(&parts.photomaker, unet)?.chain(split))
    }
}

/// The references of a sample whose condition is kept.
#[derive(Debug, Clone)]
pub struct SplitIdentity<B: Backend> {
    /// Where the class tokens are in the main prompt (`TriggerPrompt::class_tokens`).
    pub class_tokens: Range<usize>,
    /// The references, CLIP-preprocessed, `[n, 3, size, size]`.
    pub pixels: Tensor<B, 4>,
}

/// One training sample's prompts and references.
#[derive(Debug, Clone)]
pub struct SplitSample<B: Backend> {
    /// The main prompt's embeddings, `[1, 77, cross]`: the class-expanded prompt
    /// (`TriggerPrompt::expanded.context`), or the empty prompt's for a dropped condition.
    pub main: Tensor<B, 3>,
    /// The references fused into the class tokens; `None` for a dropped condition (persongen's
    /// `do_cfg`: no ID encoder, its trained tensors get zero gradients).
    pub identity: Option<SplitIdentity<B>>,
    /// The background prompt's embeddings, `[1, 77, cross]` (the empty prompt's when dropped or
    /// missing).
    pub background: Tensor<B, 3>,
    /// The body prompt's embeddings, `[1, 77, cross]`.
    pub body: Tensor<B, 3>,
}

impl<B: Backend> SplitSample<B> {
    /// persongen's encoding of one caption (`model.py` l.294-330): `"main\n\nbackground\n\n
    /// body"` split ([`SplitPrompts::from_caption`]), the main prompt through `photomaker`'s
    /// trigger word with its class token repeated per reference, the background and body as
    /// plain prompts. `references` (CLIP-preprocessed, `[n, 3, size, size]`) `None` is the
    /// dropped condition (`do_cfg`): every part the empty prompt. Returns the sample and the
    /// main prompt's pooled embedding (`[1, width]`, for [`AddedConditions::text_embeds`]).
    pub fn encode(
        pipe: &Pipeline<B>,
        photomaker: &PhotoMaker<B>,
        caption: &str,
        references: Option<Tensor<B, 4>>,
    ) -> Result<(Self, Tensor<B, 2>), TrainError> {
        let pooled = |c: &Conditioning<B>| {
            c.pooled.clone().ok_or_else(|| {
                TrainError::Setting(
                    "the split-prompt adapter needs SDXL's pooled text embedding".into(),
                )
            })
        };
        let Some(pixels) = references else {
            let empty = pipe.encode_prompt("")?;
            let sample = Self {
                main: empty.context.clone(),
                identity: None,
                background: empty.context.clone(),
                body: empty.context.clone(),
            };
            return Ok((sample, pooled(&empty)?));
        };
        let parts = SplitPrompts::from_caption(caption);
        let main = photomaker.encode_prompt(pipe, parts.main, pixels.dims()[0])?;
        let sample = Self {
            main: main.expanded.context.clone(),
            identity: Some(SplitIdentity {
                class_tokens: main.class_tokens.clone(),
                pixels,
            }),
            background: pipe.encode_prompt(parts.background)?.context,
            body: pipe.encode_prompt(parts.body)?.context,
        };
        Ok((sample, pooled(&main.expanded)?))
    }
}

/// One (micro-)batch.
#[derive(Debug, Clone)]
pub struct SplitBatch<B: Backend> {
    /// VAE latents × scaling factor, `[batch, 4, h, w]`.
    pub latents: Tensor<B, 4>,
    /// Noise, offset noise and timesteps.
    pub draw: NoiseDraw<B>,
    /// Each sample's prompts and references (`batch` of them).
    pub samples: Vec<SplitSample<B>>,
    /// SDXL's pooled embeddings (of the main prompts) and time ids, `batch` rows.
    pub added: AddedConditions<B>,
    /// Face boxes for the masked loss.
    pub face_boxes: Option<Vec<[f32; 4]>>,
}

/// Trains the split-prompt adapter's parts on a frozen SDXL UNet.
pub type SplitPromptTrainer<A> = Trainer<A, SplitParts<A>>;

impl<A: AutodiffBackend> Trained<A> for SplitParts<A> {
    type Batch = SplitBatch<A>;

    fn names(&self, unet: &UNet<A>) -> Result<ParamNames, TrainError> {
        ParamNames::split_prompt(self, unet)
    }

    /// The fused main prompt as the context, the background / body prompts through their
    /// decoupled attention, the LoRA; a dropped condition keeps the ID encoder in the graph
    /// with zero gradients (persongen's dummy).
    fn loss(
        &self,
        unet: &UNet<A>,
        objective: &Objective<'_>,
        batch: &SplitBatch<A>,
    ) -> Result<Tensor<A, 1>, TrainError> {
        let b = batch.latents.dims()[0];
        if batch.samples.len() != b {
            return Err(TrainError::Setting(format!(
                "a split-prompt batch of {b} latents with {} samples",
                batch.samples.len()
            )));
        }
        let encoder = &self.photomaker.encoder;
        let mut contexts = Vec::with_capacity(b);
        for s in &batch.samples {
            contexts.push(match &s.identity {
                Some(id) => {
                    let tokens = encoder.forward(id.pixels.clone(), None)?;
                    let [n, t, d] = tokens.dims();
                    encoder.fuse_module.forward(
                        s.main.clone(),
                        id.class_tokens.clone(),
                        tokens.reshape([n * t, d]),
                    )?
                }
                None => s.main.clone(),
            });
        }
        let context = Tensor::cat(contexts, 0);
        let parts_tokens = PartTokens {
            background: Tensor::cat(
                batch.samples.iter().map(|s| s.background.clone()).collect(),
                0,
            ),
            body: Tensor::cat(batch.samples.iter().map(|s| s.body.clone()).collect(), 0),
        };
        let conditioning = SplitConditioning {
            cond: Conditioning {
                context: context.clone(),
                pooled: None,
            },
            uncond: None,
            parts: parts_tokens,
            uncond_parts: None,
        };
        let split = self.split.hook(&conditioning, SplitScale::default());
        let hooks = Hooks(vec![&self.photomaker.lora, &split]);
        let loss = objective.denoising_loss(
            unet,
            batch.latents.clone(),
            &batch.draw,
            context,
            Some(batch.added.clone()),
            &hooks,
            batch.face_boxes.as_deref(),
        )?;
        if batch.samples.iter().any(|s| s.identity.is_some()) {
            return Ok(loss);
        }
        // persongen's dummy (`model.py` l.340-342): zero gradients for the ID encoder's trained
        // tensors, so that Adam steps them with their moments as torch does.
        Ok(match trainable_sum(encoder) {
            Some(sum) => loss + sum * 0.0,
            None => loss,
        })
    }
}

impl<B: Backend> ToDevice<B> for SplitBatch<B> {
    fn to_device(&self, device: &B::Device) -> Self {
        let on = |t: &Tensor<B, 3>| t.clone().to_device(device);
        SplitBatch {
            latents: self.latents.clone().to_device(device),
            draw: self.draw.to_device(device),
            samples: self
                .samples
                .iter()
                .map(|s| SplitSample {
                    main: on(&s.main),
                    identity: s.identity.as_ref().map(|id| SplitIdentity {
                        pixels: id.pixels.clone().to_device(device),
                        class_tokens: id.class_tokens.clone(),
                    }),
                    background: on(&s.background),
                    body: on(&s.body),
                })
                .collect(),
            added: added_to_device(&self.added, device),
            face_boxes: self.face_boxes.clone(),
        }
    }
}

/// Where [`export_split_prompt`] writes.
#[derive(Debug, Clone, Copy)]
pub struct SplitExport<'a> {
    /// The PhotoMaker file (`{id_encoder.*, lora_weights.*}`).
    pub photomaker: &'a Path,
    /// The split-prompt file (`split_prompt.*`).
    pub split_prompt: &'a Path,
}

/// The trained split-prompt adapter as the two files `idforge generate --adapter` reads
/// together, each written atomically: PhotoMaker's (the CLIP backbone copied from `base`, the
/// PhotoMaker file training started from; see [`export_photomaker`]) and the background / body
/// projections in [`SplitPrompt::load`]'s layout.
pub fn export_split_prompt<B: Backend>(
    parts: &SplitParts<B>,
    unet: &UNet<B>,
    base: &WeightStore,
    to: SplitExport<'_>,
) -> Result<(), TrainError> {
    export_photomaker(&parts.photomaker, unet, base, to.photomaker)?;
    write_safetensors(
        to.split_prompt,
        &parts.split.tensors(),
        Some(("format", "pt")),
    )
}
