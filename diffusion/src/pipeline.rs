//! A Stable Diffusion (1.x/2.x) or SDXL pipeline read from a diffusers folder: prompt encoding
//! with the folder's tokenizers and CLIP text encoders, the denoising loop with
//! classifier-free guidance, and decoding, as diffusers' `StableDiffusionPipeline` and
//! `StableDiffusionXLPipeline` do them.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use idforge_models::clip::{ClipConfig, ClipTextTransformer, ClipTokenizer, WeightLayout};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::attention::{AttentionHook, NoHook};
use crate::config::read_json;
use crate::error::DiffusionError;
use crate::schedulers::{Ddim, EulerDiscrete, Sampler, ScheduleConfig};
use crate::unet::{AddedConditions, UNet, UNetInput};
use crate::vae::Vae;
use idforge_models::WeightStore;
use idforge_models::readback::ReadBack;

/// Which pipeline a folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// One text encoder, last hidden state as context.
    StableDiffusion,
    /// Two text encoders (penultimate states concatenated), pooled embedding and size
    /// conditions added to the time embedding.
    StableDiffusionXl,
}

/// The samplers `generate` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    /// DDIM, η = 0.
    Ddim,
    /// Euler discrete.
    Euler,
}

impl SamplerKind {
    /// The sampler with `steps` steps on this schedule.
    pub fn build<B: Backend>(
        self,
        schedule: &ScheduleConfig,
        steps: usize,
    ) -> Result<Box<dyn Sampler<B>>, DiffusionError> {
        Ok(match self {
            SamplerKind::Ddim => Box::new(Ddim::new(schedule, steps)?),
            SamplerKind::Euler => Box::new(EulerDiscrete::new(schedule, steps)?),
        })
    }
}

/// A text encoder with its tokenizer.
#[derive(Debug)]
pub struct TextEncoder<B: Backend> {
    /// The CLIP text tower.
    pub tower: ClipTextTransformer<B>,
    /// Its tokenizer (padding and context length from the folder).
    pub tokenizer: ClipTokenizer,
}

impl<B: Backend> TextEncoder<B> {
    /// Loads `text_encoder*/` (transformers' `CLIPTextModel` or
    /// `CLIPTextModelWithProjection`) and the matching `tokenizer*/`.
    pub fn load(
        encoder: &Path,
        tokenizer: &Path,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        let config_path = encoder.join("config.json");
        let mut config = ClipConfig::from_hf_config_json(&config_path)?.text;
        let weights = WeightStore::open(encoder)?;
        if !weights.contains("text_projection.weight") {
            config.projection_dim = None;
        }
        let tower =
            ClipTextTransformer::load(&weights, &config, WeightLayout::HuggingFace, device)?;
        let tokenizer = ClipTokenizer::from_folder(tokenizer)?;
        Ok(Self { tower, tokenizer })
    }

    /// The tower's outputs for one prompt.
    pub fn encode(
        &self,
        prompt: &str,
        device: &B::Device,
    ) -> Result<idforge_models::clip::TextOutput<B>, DiffusionError> {
        let ids = self.tokenizer.encode(prompt)?;
        let n = ids.len();
        let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), device);
        Ok(self.tower.forward(ids))
    }
}

/// What the UNet is conditioned on for one prompt.
#[derive(Debug, Clone)]
pub struct Conditioning<B: Backend> {
    /// `[batch, tokens, cross_attention_dim]`
    pub context: Tensor<B, 3>,
    /// SDXL: the second encoder's projected pooled embedding, `[batch, width]`.
    pub pooled: Option<Tensor<B, 2>>,
}

/// The settings of one sampling run.
#[derive(Debug, Clone)]
pub struct SampleSettings {
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale (≤ 1: no guidance, no unconditional pass).
    pub guidance: f32,
    /// The sampler.
    pub sampler: SamplerKind,
    /// SDXL's `time_ids` (original h, w, crop top, left, target h, w); ignored by SD.
    pub time_ids: [f32; 6],
}

/// What the UNet sees at one denoising step: the prompt's conditioning, the unconditional one
/// for classifier-free guidance, and the adapter's hook.
pub struct StepInputs<'a, B: Backend> {
    /// The prompt's conditioning.
    pub cond: &'a Conditioning<B>,
    /// The unconditional (negative) conditioning; guidance needs it.
    pub uncond: Option<&'a Conditioning<B>>,
    /// The adapter's hook ([`NoHook`] for the base model).
    pub hook: &'a dyn AttentionHook<B>,
}

impl<B: Backend> Clone for StepInputs<'_, B> {
    fn clone(&self) -> Self {
        Self {
            cond: self.cond,
            uncond: self.uncond,
            hook: self.hook,
        }
    }
}

/// Chooses the UNet's inputs step by step, so that an adapter can start later than the first
/// step (PhotoMaker's `start_merge_step`: the text-only prompt first, the identity from step k).
pub trait StepConditioning<B: Backend> {
    /// The inputs of step `step` (0-based) at `timestep`.
    fn at(&self, step: usize, timestep: f32) -> StepInputs<'_, B>;
}

impl<B: Backend> StepConditioning<B> for StepInputs<'_, B> {
    fn at(&self, _step: usize, _timestep: f32) -> StepInputs<'_, B> {
        self.clone()
    }
}

/// One set of inputs before step `start`, another from it on.
pub struct SwitchAt<'a, B: Backend> {
    /// Steps `0..start`.
    pub before: StepInputs<'a, B>,
    /// Steps `start..`.
    pub after: StepInputs<'a, B>,
    /// The first step of `after`.
    pub start: usize,
}

impl<B: Backend> StepConditioning<B> for SwitchAt<'_, B> {
    fn at(&self, step: usize, _timestep: f32) -> StepInputs<'_, B> {
        if step < self.start {
            self.before.clone()
        } else {
            self.after.clone()
        }
    }
}

/// The denoising loop: from initial N(0, 1) `noise` (`[batch, 4, h, w]`) to the final latent,
/// with classifier-free guidance when an unconditional conditioning is given and
/// `guidance > 1`. `progress` is called after each step with (done, total).
#[allow(clippy::too_many_arguments)]
pub fn denoise<B: Backend>(
    unet: &UNet<B>,
    sampler: &dyn Sampler<B>,
    noise: Tensor<B, 4>,
    cond: &Conditioning<B>,
    uncond: Option<&Conditioning<B>>,
    guidance: f32,
    time_ids: Option<[f32; 6]>,
    hook: &dyn AttentionHook<B>,
    progress: &mut dyn FnMut(usize, usize),
) -> Tensor<B, 4> {
    let inputs = StepInputs { cond, uncond, hook };
    denoise_with(unet, sampler, noise, guidance, time_ids, &inputs, progress)
}

/// [`denoise`] with the UNet's inputs chosen per step.
///
/// # Panics
/// If a step's conditioning has another batch than the noise.
pub fn denoise_with<B: Backend>(
    unet: &UNet<B>,
    sampler: &dyn Sampler<B>,
    noise: Tensor<B, 4>,
    guidance: f32,
    time_ids: Option<[f32; 6]>,
    plan: &dyn StepConditioning<B>,
    progress: &mut dyn FnMut(usize, usize),
) -> Tensor<B, 4> {
    let device = noise.device();
    let batch = noise.dims()[0];
    let timesteps = sampler.timesteps().to_vec();
    let mut latents = noise * sampler.init_noise_sigma();
    for (i, &t) in timesteps.iter().enumerate() {
        let step = plan.at(i, t);
        let guided = step.uncond.filter(|_| guidance > 1.0);
        let cond = step.cond;
        let (context, pooled) = match guided {
            Some(u) => (
                Tensor::cat(vec![u.context.clone(), cond.context.clone()], 0),
                match (&u.pooled, &cond.pooled) {
                    (Some(a), Some(b)) => Some(Tensor::cat(vec![a.clone(), b.clone()], 0)),
                    _ => None,
                },
            ),
            None => (cond.context.clone(), cond.pooled.clone()),
        };
        let rows = context.dims()[0];
        assert_eq!(
            rows,
            if guided.is_some() { 2 * batch } else { batch },
            "one conditioning row per latent"
        );
        let added = match (pooled, time_ids) {
            (Some(text_embeds), Some(ids)) => Some(AddedConditions {
                text_embeds,
                time_ids: Tensor::<B, 1>::from_floats(ids.as_slice(), &device)
                    .reshape([1, 6])
                    .repeat_dim(0, rows),
            }),
            _ => None,
        };
        let scaled = sampler.scale_model_input(latents.clone(), i);
        let input = match guided {
            Some(_) => Tensor::cat(vec![scaled.clone(), scaled], 0),
            None => scaled,
        };
        let out = unet.forward_with(
            &UNetInput {
                sample: input,
                timesteps: Tensor::from_floats([t], &device),
                context,
                added,
            },
            step.hook,
        );
        let prediction = match guided {
            Some(_) => {
                let u = out.clone().narrow(0, 0, batch);
                let c = out.narrow(0, batch, batch);
                u.clone() + (c - u) * guidance
            }
            None => out,
        };
        latents = sampler.step(prediction, i, latents);
        progress(i + 1, timesteps.len());
    }
    latents
}

/// N(0, 1) noise from a seed (Box–Muller on a ChaCha stream): the same seed gives the same
/// latent on every machine and backend.
pub fn seeded_noise<B: Backend>(seed: u64, shape: [usize; 4], device: &B::Device) -> Tensor<B, 4> {
    let n: usize = shape.iter().product();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v = Vec::with_capacity(n + 1);
    while v.len() < n {
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let a = std::f64::consts::TAU * u2;
        v.push((r * a.cos()) as f32);
        v.push((r * a.sin()) as f32);
    }
    v.truncate(n);
    Tensor::from_data(TensorData::new(v, shape), device)
}

#[derive(Debug, Deserialize)]
struct ModelIndex {
    #[serde(rename = "_class_name")]
    class_name: String,
    #[serde(default)]
    force_zeros_for_empty_prompt: Option<bool>,
}

/// A loaded pipeline.
#[derive(Debug)]
pub struct Pipeline<B: Backend> {
    /// SD or SDXL.
    pub family: Family,
    /// The denoiser.
    pub unet: UNet<B>,
    /// The autoencoder.
    pub vae: Vae<B>,
    /// One (SD) or two (SDXL) text encoders.
    pub encoders: Vec<TextEncoder<B>>,
    /// The noise schedule of `scheduler/scheduler_config.json`.
    pub schedule: ScheduleConfig,
    /// SDXL: an absent negative prompt is all zeros, not the encoding of "".
    pub force_zeros_for_empty_prompt: bool,
    device: B::Device,
}

impl<B: Backend> Pipeline<B> {
    /// Loads a diffusers folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`,
    /// `tokenizer/`, `scheduler/`; SDXL also `text_encoder_2/`, `tokenizer_2/`).
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, DiffusionError> {
        let index_path = dir.join("model_index.json");
        if !index_path.is_file() {
            return Err(DiffusionError::Missing {
                path: dir.to_path_buf(),
                what: "no model_index.json: give the folder diffusers' `save_pretrained` wrote \
                       (with unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
                    .into(),
            });
        }
        let index: ModelIndex = read_json(&index_path)?;
        let family = match index.class_name.as_str() {
            "StableDiffusionXLPipeline" => Family::StableDiffusionXl,
            "StableDiffusionPipeline" => Family::StableDiffusion,
            other => {
                return Err(DiffusionError::Config {
                    path: index_path,
                    message: format!(
                        "pipeline `{other}` is not supported (StableDiffusionPipeline, \
                         StableDiffusionXLPipeline)"
                    ),
                });
            }
        };
        let need = |name: &str| -> Result<PathBuf, DiffusionError> {
            let p = dir.join(name);
            if p.is_dir() {
                Ok(p)
            } else {
                Err(DiffusionError::Missing {
                    path: p,
                    what: format!("the pipeline has no `{name}/` folder"),
                })
            }
        };
        let mut encoders = vec![TextEncoder::load(
            &need("text_encoder")?,
            &need("tokenizer")?,
            device,
        )?];
        if family == Family::StableDiffusionXl {
            encoders.push(TextEncoder::load(
                &need("text_encoder_2")?,
                &need("tokenizer_2")?,
                device,
            )?);
        }
        let schedule =
            ScheduleConfig::from_file(&need("scheduler")?.join("scheduler_config.json"))?;
        Ok(Self {
            family,
            unet: UNet::load(&need("unet")?, device)?,
            vae: Vae::load(&need("vae")?, device)?,
            encoders,
            schedule,
            force_zeros_for_empty_prompt: index
                .force_zeros_for_empty_prompt
                .unwrap_or(family == Family::StableDiffusionXl),
            device: device.clone(),
        })
    }

    /// The device the pipeline's weights are on (where its adapters build their tensors).
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// How many times smaller latents are than images.
    pub fn vae_scale(&self) -> usize {
        self.vae.config().downscale()
    }

    /// The default image side (the UNet's `sample_size` × the VAE's scale).
    pub fn default_size(&self) -> usize {
        self.unet.config().sample_size.unwrap_or(64) * self.vae_scale()
    }

    /// The conditioning of a prompt, as the diffusers pipeline's `encode_prompt` computes it.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Conditioning<B>, DiffusionError> {
        match self.family {
            Family::StableDiffusion => Ok(Conditioning {
                context: self.encoders[0]
                    .encode(prompt, &self.device)?
                    .last_hidden_state,
                pooled: None,
            }),
            Family::StableDiffusionXl => {
                let mut contexts = Vec::new();
                let mut pooled = None;
                for encoder in &self.encoders {
                    let out = encoder.encode(prompt, &self.device)?;
                    contexts.push(out.penultimate_hidden_state);
                    pooled = out.embeds;
                }
                Ok(Conditioning {
                    context: Tensor::cat(contexts, 2),
                    pooled: Some(pooled.ok_or_else(|| {
                        DiffusionError::Setting(
                            "text_encoder_2 has no text_projection: SDXL needs \
                             CLIPTextModelWithProjection"
                                .into(),
                        )
                    })?),
                })
            }
        }
    }

    /// The unconditional conditioning: the negative prompt's, or for SDXL without one, zeros.
    pub fn encode_negative(
        &self,
        negative: Option<&str>,
    ) -> Result<Conditioning<B>, DiffusionError> {
        match negative {
            None if self.force_zeros_for_empty_prompt => {
                let c = self.encode_prompt("")?;
                Ok(Conditioning {
                    context: c.context.zeros_like(),
                    pooled: c.pooled.map(|p| p.zeros_like()),
                })
            }
            _ => self.encode_prompt(negative.unwrap_or("")),
        }
    }

    /// The initial N(0, 1) latent of an image size (height, width) for a seed (`[1, 4, h/8,
    /// w/8]` for SD); the size must suit the model (see [`Pipeline::check_size`]).
    pub fn seeded_noise(
        &self,
        seed: u64,
        size: (usize, usize),
    ) -> Result<Tensor<B, 4>, DiffusionError> {
        self.check_size(size.0, size.1)?;
        let s = self.vae_scale();
        Ok(seeded_noise::<B>(
            seed,
            [1, self.unet.config().in_channels, size.0 / s, size.1 / s],
            &self.device,
        ))
    }

    /// Refuses an image size that is not a positive multiple of the VAE's and the UNet's
    /// downsampling together.
    pub fn check_size(&self, h: usize, w: usize) -> Result<(), DiffusionError> {
        let f = self.vae_scale() * (1 << (self.unet.config().block_out_channels.len() - 1));
        if h == 0 || w == 0 || !h.is_multiple_of(f) || !w.is_multiple_of(f) {
            return Err(DiffusionError::Setting(format!(
                "{w}×{h} pixels: width and height must be positive multiples of {f} for this model"
            )));
        }
        Ok(())
    }

    /// Samples latents for a prompt from the given initial N(0, 1) noise (see
    /// [`Pipeline::seeded_noise`]; another tool's noise reproduces its run), with the base
    /// model.
    pub fn sample(
        &self,
        prompt: &str,
        negative: Option<&str>,
        settings: &SampleSettings,
        noise: Tensor<B, 4>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor<B, 4>, DiffusionError> {
        let cond = self.encode_prompt(prompt)?;
        let uncond = if settings.guidance > 1.0 {
            Some(self.encode_negative(negative)?)
        } else {
            None
        };
        let inputs = StepInputs {
            cond: &cond,
            uncond: uncond.as_ref(),
            hook: &NoHook,
        };
        self.sample_with(&inputs, settings, noise, progress)
    }

    /// Samples latents with the UNet's inputs (conditioning and adapter hook) chosen per step.
    pub fn sample_with(
        &self,
        plan: &dyn StepConditioning<B>,
        settings: &SampleSettings,
        noise: Tensor<B, 4>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor<B, 4>, DiffusionError> {
        let s = self.vae_scale();
        let [_, ch, lh, lw] = noise.dims();
        let (h, w) = (lh * s, lw * s);
        if ch != self.unet.config().in_channels {
            return Err(DiffusionError::Setting(format!(
                "the initial noise has {ch} channels, the UNet takes {}",
                self.unet.config().in_channels
            )));
        }
        self.check_size(h, w)?;
        if settings.time_ids.iter().any(|v| !v.is_finite()) {
            return Err(DiffusionError::Setting(
                "SDXL time ids must be finite".into(),
            ));
        }
        let sampler = settings
            .sampler
            .build::<B>(&self.schedule, settings.steps)?;
        let time_ids = (self.family == Family::StableDiffusionXl).then_some(settings.time_ids);
        Ok(denoise_with(
            &self.unet,
            sampler.as_ref(),
            noise,
            settings.guidance,
            time_ids,
            plan,
            progress,
        ))
    }

    /// Latents (scaled, as the UNet sees them) → images in [0, 1], `[batch, 3, H, W]`.
    pub fn decode(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.vae.decode(latents / self.vae.scaling_factor());
        (x / 2.0 + 0.5).clamp(0.0, 1.0)
    }
}

/// One `[3, H, W]` image in [0, 1] as 8-bit RGB rows, rounded as diffusers' `numpy_to_pil`.
pub fn to_rgb8<B: Backend>(image: Tensor<B, 3>) -> (usize, usize, Vec<u8>) {
    let [_, h, w] = image.dims();
    let data = image.swap_dims(0, 1).swap_dims(1, 2).to_f32_vec();
    let bytes = data
        .iter()
        .map(|v| (v * 255.0).round_ties_even().clamp(0.0, 255.0) as u8)
        .collect();
    (w, h, bytes)
}
