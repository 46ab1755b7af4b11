//! Images from a loaded method: one ([`Method::render`]) or several jobs per UNet call
//! ([`Method::render_batch`]), the same image either way.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::error::{MethodError, ResultExt, invalid};
use super::{Identity, Method, default_start_merge_step};
use crate::adapters::ip_adapter::{IpScale, ReferencePooling};
use crate::adapters::split_prompt::{
    PartTokens, SplitConditioning, SplitPrompts, SplitScale, encode_split_prompt,
};
use crate::pipeline::to_rgb8;
use crate::{
    AttentionHook, Conditioning, Hooks, SampleSettings, SamplerKind, StepInputs, SwitchAt,
};

/// The per-image settings of a method run.
#[derive(Debug, Clone)]
pub struct RenderSettings {
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale (≤ 1: off).
    pub guidance: f32,
    /// The sampler.
    pub sampler: SamplerKind,
    /// The first step that sees the identity (IP-Adapter) / PhotoMaker's `start_merge_step`
    /// (steps up to and including it are text-only); `None`: 0 for IP-Adapter,
    /// [`default_start_merge_step`] for PhotoMaker.
    pub id_start_step: Option<usize>,
    /// The IP-Adapter scale on every layer.
    pub adapter_scale: f32,
    /// The split-prompt adapter's part scales.
    pub split_scale: SplitScale,
}

/// One job of a batch: its identity, prompts and initial noise (`[1, 4, h/8, w/8]`; every job
/// of a batch the same size).
pub struct BatchItem<'a, B: Backend> {
    /// The identity's inputs.
    pub identity: &'a Identity<B>,
    /// The prompts (the background and body parts only reach the split-prompt adapter).
    pub prompts: SplitPrompts<'a>,
    /// The initial noise.
    pub noise: Tensor<B, 4>,
}

/// What one job contributes to the UNet's batch.
struct Prepared<B: Backend> {
    /// The conditioning before the identity starts, and from then on.
    before: Conditioning<B>,
    after: Conditioning<B>,
    uncond: Option<Conditioning<B>>,
    split: Option<SplitConditioning<B>>,
    /// IP-Adapter tokens: the identity's, and the unconditional ones with guidance.
    ip: Option<(Tensor<B, 3>, Option<Tensor<B, 3>>)>,
    noise: Tensor<B, 4>,
}

impl<B: Backend> Method<B> {
    /// One image: `prompts` (the background and body parts only reach the split-prompt
    /// adapter), the identity, `settings`, from `noise` (`[1, 4, h/8, w/8]`).
    pub fn render(
        &self,
        identity: &Identity<B>,
        prompts: &SplitPrompts<'_>,
        settings: &RenderSettings,
        noise: Tensor<B, 4>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<image::RgbImage, MethodError> {
        let item = BatchItem {
            identity,
            prompts: *prompts,
            noise,
        };
        let mut images = self.render_batch(std::slice::from_ref(&item), settings, progress)?;
        Ok(images.remove(0))
    }

    /// One image per job, the jobs denoised together in one UNet batch (classifier-free
    /// guidance doubles it). Each image equals [`Method::render`]'s for its job up to the
    /// rounding of the larger matrix products. Jobs whose inputs differ in shape (IP-Adapter
    /// identities with different reference counts under concatenation) are rendered one by one.
    pub fn render_batch(
        &self,
        items: &[BatchItem<'_, B>],
        settings: &RenderSettings,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<image::RgbImage>, MethodError> {
        let Some(first) = items.first() else {
            return Ok(Vec::new());
        };
        let pipe = &self.pipe;
        let [_, _, lh, lw] = first.noise.dims();
        let (h, w) = (lh * pipe.vae_scale(), lw * pipe.vae_scale());
        let sample = SampleSettings {
            steps: settings.steps,
            guidance: settings.guidance,
            sampler: settings.sampler,
            time_ids: [h as f32, w as f32, 0.0, 0.0, h as f32, w as f32],
        };
        if let Some(start) = settings.id_start_step
            && start > settings.steps
        {
            invalid!(
                "--id-start-step {start}: at most --steps ({})",
                settings.steps
            );
        }
        let prepared = items
            .iter()
            .map(|item| self.prepare(item, settings))
            .collect::<Result<Vec<_>, _>>()?;
        let start = match &self.photomaker {
            Some(_) => settings
                .id_start_step
                .unwrap_or_else(|| default_start_merge_step(settings.steps))
                .saturating_add(1),
            None => settings.id_start_step.unwrap_or(0),
        };
        let Some(batch) = Batch::join(prepared) else {
            // Shapes differ: one job at a time.
            let mut images = Vec::with_capacity(items.len());
            for item in items {
                images.extend(self.render_batch(std::slice::from_ref(item), settings, progress)?);
            }
            return Ok(images);
        };
        let split_hook = match (&self.split, &batch.split) {
            (Some(s), Some(c)) => Some(s.hook(c, settings.split_scale)),
            _ => None,
        };
        let ip_hook = match (&self.ip, batch.ip) {
            (Some((adapter, _)), Some(tokens)) => {
                Some(adapter.hook(tokens, IpScale::uniform(settings.adapter_scale)))
            }
            _ => None,
        };
        let mut always: Vec<&dyn AttentionHook<B>> = Vec::new();
        if let Some(pm) = &self.photomaker {
            always.push(pm.hook());
        }
        if let Some(h) = &split_hook {
            always.push(h);
        }
        let mut later = always.clone();
        if let Some(h) = &ip_hook {
            later.push(h);
        }
        let (before_hooks, after_hooks) = (Hooks(always), Hooks(later));
        let plan = SwitchAt {
            before: StepInputs {
                cond: &batch.before,
                uncond: batch.uncond.as_ref(),
                hook: &before_hooks,
            },
            after: StepInputs {
                cond: &batch.after,
                uncond: batch.uncond.as_ref(),
                hook: &after_hooks,
            },
            start,
        };
        let latents = pipe
            .sample_with(&plan, &sample, batch.noise, progress)
            .ctx(|| "sampling")?;
        let decoded = pipe.decode(latents);
        let [n, c, ih, iw] = decoded.dims();
        let mut images = Vec::with_capacity(n);
        for i in 0..n {
            let (width, height, rgb) =
                to_rgb8(decoded.clone().narrow(0, i, 1).reshape([c, ih, iw]));
            match image::RgbImage::from_raw(width as u32, height as u32, rgb) {
                Some(img) => images.push(img),
                None => invalid!("the decoded image has an unexpected size"),
            }
        }
        Ok(images)
    }

    /// One job's conditioning, hook inputs and noise.
    fn prepare(
        &self,
        item: &BatchItem<'_, B>,
        settings: &RenderSettings,
    ) -> Result<Prepared<B>, MethodError> {
        let pipe = &self.pipe;
        let prompts = &item.prompts;
        let guided = settings.guidance > 1.0;
        if self.split.is_none() && !(prompts.background.is_empty() && prompts.body.is_empty()) {
            invalid!(
                "--bg-prompt / --body-prompt need the split-prompt adapter (--adapter with \
                 `split_prompt.*` tensors)"
            );
        }
        // The main prompt's conditioning (split: with the parts), and the negative.
        let split = match &self.split {
            Some(_) => Some(
                encode_split_prompt(pipe, prompts, guided).ctx(|| "encoding the split prompt")?,
            ),
            None => None,
        };
        let (cond, uncond) = match &split {
            Some(c) => (c.cond.clone(), c.uncond.clone()),
            None => (
                pipe.encode_prompt(prompts.main)
                    .ctx(|| "encoding the prompt")?,
                if guided {
                    Some(
                        pipe.encode_negative(prompts.negative)
                            .ctx(|| "encoding the negative prompt")?,
                    )
                } else {
                    None
                },
            ),
        };
        let ip = match (&self.ip, item.identity) {
            (Some((adapter, _)), Identity::IpAdapter { pos, neg }) => {
                let pooling = self.options.pooling.unwrap_or(ReferencePooling::Concat);
                let tokens = adapter
                    .pooled_tokens(pos, 1, pooling)
                    .ctx(|| "projecting the adapter's input")?;
                let negative = if guided {
                    Some(
                        adapter
                            .pooled_tokens(neg, 1, pooling)
                            .ctx(|| "projecting the unconditional input")?,
                    )
                } else {
                    None
                };
                Some((tokens, negative))
            }
            (Some(_), _) => invalid!("the IP-Adapter has no identity input: give --ref photos"),
            _ => None,
        };
        let (before, after) = match (&self.photomaker, item.identity) {
            (Some(pm), Identity::PhotoMaker { pixels, id_embeds }) => {
                let c = pm
                    .conditioning(pipe, prompts.main, pixels.clone(), id_embeds.clone())
                    .ctx(|| "PhotoMaker's prompt and identity")?;
                (c.text_only, c.fused)
            }
            (Some(_), _) => invalid!("PhotoMaker has no identity input: give --ref photos"),
            _ => (cond.clone(), cond),
        };
        Ok(Prepared {
            before,
            after,
            uncond,
            split,
            ip,
            noise: item.noise.clone(),
        })
    }
}

/// The jobs' inputs stacked along the batch axis.
struct Batch<B: Backend> {
    before: Conditioning<B>,
    after: Conditioning<B>,
    uncond: Option<Conditioning<B>>,
    split: Option<SplitConditioning<B>>,
    /// With guidance: every job's unconditional tokens, then every job's identity tokens (the
    /// UNet's row order).
    ip: Option<Tensor<B, 3>>,
    noise: Tensor<B, 4>,
}

impl<B: Backend> Batch<B> {
    /// Stacks the jobs; `None` where their shapes differ. One job passes through unchanged.
    fn join(mut jobs: Vec<Prepared<B>>) -> Option<Self> {
        if jobs.len() == 1 {
            let j = jobs.remove(0);
            let ip = j.ip.map(|(tokens, negative)| match negative {
                Some(n) => Tensor::cat(vec![n, tokens], 0),
                None => tokens,
            });
            return Some(Self {
                before: j.before,
                after: j.after,
                uncond: j.uncond,
                split: j.split,
                ip,
                noise: j.noise,
            });
        }
        let before = cat_cond(jobs.iter().map(|j| &j.before).collect())?;
        let after = cat_cond(jobs.iter().map(|j| &j.after).collect())?;
        let uncond = match jobs[0].uncond {
            Some(_) => Some(cat_cond(
                jobs.iter()
                    .map(|j| j.uncond.as_ref())
                    .collect::<Option<_>>()?,
            )?),
            None => None,
        };
        let split = match jobs[0].split {
            Some(_) => {
                let s: Vec<&SplitConditioning<B>> = jobs
                    .iter()
                    .map(|j| j.split.as_ref())
                    .collect::<Option<_>>()?;
                Some(SplitConditioning {
                    cond: cat_cond(s.iter().map(|c| &c.cond).collect())?,
                    uncond: match s[0].uncond {
                        Some(_) => Some(cat_cond(
                            s.iter().map(|c| c.uncond.as_ref()).collect::<Option<_>>()?,
                        )?),
                        None => None,
                    },
                    parts: cat_parts(s.iter().map(|c| &c.parts).collect())?,
                    uncond_parts: match s[0].uncond_parts {
                        Some(_) => Some(cat_parts(
                            s.iter()
                                .map(|c| c.uncond_parts.as_ref())
                                .collect::<Option<_>>()?,
                        )?),
                        None => None,
                    },
                })
            }
            None => None,
        };
        let ip = match jobs[0].ip {
            Some((_, ref negative)) => {
                let ips: Vec<&(Tensor<B, 3>, Option<Tensor<B, 3>>)> =
                    jobs.iter().map(|j| j.ip.as_ref()).collect::<Option<_>>()?;
                let mut rows: Vec<&Tensor<B, 3>> = Vec::new();
                if negative.is_some() {
                    rows.extend(
                        ips.iter()
                            .map(|(_, n)| n.as_ref())
                            .collect::<Option<Vec<_>>>()?,
                    );
                }
                rows.extend(ips.iter().map(|(t, _)| t));
                Some(cat(rows)?)
            }
            None => None,
        };
        let noise = cat(jobs.iter().map(|j| &j.noise).collect())?;
        Some(Self {
            before,
            after,
            uncond,
            split,
            ip,
            noise,
        })
    }
}

/// `tensors` stacked along the first axis; `None` where their other axes differ.
fn cat<B: Backend, const D: usize>(tensors: Vec<&Tensor<B, D>>) -> Option<Tensor<B, D>> {
    let dims = tensors.first()?.dims();
    if tensors.iter().any(|t| t.dims()[1..] != dims[1..]) {
        return None;
    }
    Some(Tensor::cat(tensors.into_iter().cloned().collect(), 0))
}

/// Conditionings stacked along the batch; `None` where shapes differ or only some are pooled.
fn cat_cond<B: Backend>(conds: Vec<&Conditioning<B>>) -> Option<Conditioning<B>> {
    let context = cat(conds.iter().map(|c| &c.context).collect())?;
    let pooled = match conds[0].pooled {
        Some(_) => Some(cat(conds
            .iter()
            .map(|c| c.pooled.as_ref())
            .collect::<Option<_>>()?)?),
        None => None,
    };
    Some(Conditioning { context, pooled })
}

/// Part tokens stacked along the batch.
fn cat_parts<B: Backend>(parts: Vec<&PartTokens<B>>) -> Option<PartTokens<B>> {
    Some(PartTokens {
        background: cat(parts.iter().map(|p| &p.background).collect())?,
        body: cat(parts.iter().map(|p| &p.body).collect())?,
    })
}
