//! One PhotoMaker v1 training step, as persongen's PhotoMaker baseline trains it
//! (`train_photomaker.py`, `src/model/photomaker/`): a UNet LoRA (rank 64 on `to_q` / `to_k` /
//! `to_v` / `to_out.0` of every attention), `visual_projection`, `visual_projection_2` and the
//! fuse module trained, CLIP's vision backbone and the UNet frozen. The prompt holds the trigger
//! word (its class token repeated per reference), the references go through the ID encoder, the
//! fused prompt embeddings into the SDXL UNet; the loss is the ε (or v) MSE of [`crate::loss`].
//!
//! Checkpoint keys are the PhotoMaker file's: `id_encoder.visual_projection.weight`,
//! `id_encoder.fuse_module.…`, `lora_weights.unet.{layer}.processor.to_{q,k,v,out}_lora.{down,up}.weight`,
//! so that [`export_photomaker`] writes what `PhotoMaker::load` reads.

use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use idforge_diffusion::Projection;
use idforge_diffusion::UNet;
use idforge_diffusion::adapters::lora::{Lora, LoraLayer};
use idforge_diffusion::adapters::photomaker::IdEncoder;
use idforge_diffusion::unet::AddedConditions;
use idforge_models::WeightStore;
use idforge_models::nn::Init;

use crate::error::TrainError;
use crate::export::{F32Tensor, param_values, write_safetensors};
use crate::loss::NoiseDraw;
use crate::names::ParamNames;
use crate::optim::ParamGroup;
use crate::step::{Objective, ToDevice, Trained, Trainer};

/// The key prefix of the frozen CLIP backbone's tensors in [`ParamNames::photomaker`] (not a
/// checkpoint key: the export copies the backbone from the base file).
pub const FROZEN_PREFIX: &str = "frozen.";

/// What a PhotoMaker run trains: the ID encoder (backbone frozen by [`PhotoMakerParts::freeze`])
/// and the UNet LoRA.
#[derive(Module, Debug)]
pub struct PhotoMakerParts<B: Backend> {
    /// The ID encoder with `visual_projection`, `visual_projection_2` and the fuse module.
    pub encoder: IdEncoder<B>,
    /// The UNet LoRA (`lora_weights`).
    pub lora: Lora<B>,
}

impl<B: Backend> PhotoMakerParts<B> {
    /// Stops gradients for every tensor whose key is under [`FROZEN_PREFIX`] (CLIP's vision
    /// backbone), so that only the trained groups get gradients.
    pub fn freeze(self, unet: &UNet<B>) -> Result<Self, TrainError> {
        let names = ParamNames::photomaker(&self, unet)?;
        let frozen: HashSet<ParamId> = names
            .iter()
            .filter(|t| t.key.starts_with(FROZEN_PREFIX))
            .map(|t| t.id)
            .collect();
        struct Freeze(HashSet<ParamId>);
        impl<B: Backend> ModuleMapper<B> for Freeze {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                if self.0.contains(&param.id) {
                    param.set_require_grad(false)
                } else {
                    param
                }
            }
        }
        Ok(self.map(&mut Freeze(frozen)))
    }
}

/// A fresh UNet LoRA as persongen starts one (PEFT `LoraConfig(r = rank, lora_alpha = rank,
/// init_lora_weights = "gaussian", target_modules = [to_q, to_k, to_v, to_out.0])`): every
/// attention's four projections, `down` N(0, 1/rank²), `up` zero, scale 1.
pub fn fresh_lora<B: Backend>(
    unet: &UNet<B>,
    rank: usize,
    device: &B::Device,
) -> Result<Lora<B>, TrainError> {
    let mut layers = Vec::new();
    for l in unet.attention_layers() {
        let hidden = l.heads * l.head_dim;
        let kv_in = l.cross_attention_dim.unwrap_or(l.query_dim);
        for (p, inp, out) in [
            (Projection::Query, l.query_dim, hidden),
            (Projection::Key, kv_in, hidden),
            (Projection::Value, kv_in, hidden),
            (Projection::Out, hidden, l.query_dim),
        ] {
            let name = format!("{}.{}", l.name, p.module());
            let layer = LoraLayer::new(&Init::Random, &name, inp, out, rank, device)?;
            layers.push((name, layer));
        }
    }
    // In the order `Lora::load_unet` reads a file's layers (by name), so that a run resumed
    // from a checkpoint visits the tensors in the order the uninterrupted run did.
    layers.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Lora::new(layers, 1.0))
}

/// persongen's optimizer groups: the LoRA at `lora_lr` (1e-4), the ID encoder's trained
/// tensors at `encoder_lr` (1e-5).
pub fn photomaker_groups(lora_lr: f64, encoder_lr: f64) -> Vec<ParamGroup> {
    vec![
        ParamGroup::new("lora_weights.", lora_lr),
        ParamGroup::new("id_encoder.", encoder_lr),
    ]
}

impl ParamNames {
    /// PhotoMaker's parameters under the keys of its file (`id_encoder.*`,
    /// `lora_weights.unet.{layer}.processor.to_{q,k,v,out}_lora.{down,up}.weight`); the CLIP
    /// backbone under [`FROZEN_PREFIX`] and its burn path.
    pub fn photomaker<B: Backend>(
        parts: &PhotoMakerParts<B>,
        unet: &UNet<B>,
    ) -> Result<Self, TrainError> {
        let lora_names = parts.lora.names().to_vec();
        let layers: HashSet<String> = unet
            .attention_layers()
            .into_iter()
            .map(|l| l.name)
            .collect();
        Self::of_module(parts, |path| {
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            let unknown = || {
                TrainError::Setting(format!(
                    "no PhotoMaker checkpoint key for the tensor `{}`",
                    p.join(".")
                ))
            };
            match p.as_slice() {
                ["encoder", "vision", "projection", "weight"] => {
                    Ok("id_encoder.visual_projection.weight".into())
                }
                ["encoder", "vision", rest @ ..] => {
                    Ok(format!("{FROZEN_PREFIX}vision.{}", rest.join(".")))
                }
                ["encoder", "visual_projection_2", "weight"] => {
                    Ok("id_encoder.visual_projection_2.weight".into())
                }
                ["encoder", "fuse_module", rest @ ..] => {
                    Ok(format!("id_encoder.fuse_module.{}", rest.join(".")))
                }
                ["lora", "layers", j, which @ ("down" | "up"), "weight"] => {
                    let j: usize = j.parse().map_err(|_| unknown())?;
                    let name = lora_names.get(j).ok_or_else(unknown)?;
                    let (short, layer) = [
                        ("q", ".to_q"),
                        ("k", ".to_k"),
                        ("v", ".to_v"),
                        ("out", ".to_out.0"),
                    ]
                    .into_iter()
                    .find_map(|(s, suffix)| name.strip_suffix(suffix).map(|l| (s, l)))
                    .filter(|(_, l)| layers.contains(*l))
                    .ok_or_else(unknown)?;
                    Ok(format!(
                        "lora_weights.unet.{layer}.processor.to_{short}_lora.{which}.weight"
                    ))
                }
                _ => Err(unknown()),
            }
        })
    }
}

/// The trained tensors under their keys in torch's layout, then every other `id_encoder.*`
/// tensor of `base` (the frozen backbone, unchanged by training), sorted by key.
pub fn photomaker_tensors<B: Backend>(
    parts: &PhotoMakerParts<B>,
    unet: &UNet<B>,
    base: &WeightStore,
) -> Result<Vec<F32Tensor>, TrainError> {
    let names = ParamNames::photomaker(parts, unet)?;
    let mut values = param_values(parts);
    let mut out: Vec<F32Tensor> = Vec::new();
    for t in names.iter().filter(|t| !t.key.starts_with(FROZEN_PREFIX)) {
        let v = values.remove(&t.id).ok_or_else(|| {
            TrainError::Setting(format!("no value for the PhotoMaker tensor `{}`", t.key))
        })?;
        if t.transposed {
            let (inp, outd) = (t.shape[0], t.shape[1]);
            out.push((
                t.key.clone(),
                vec![outd, inp],
                idforge_models::weights::transpose(&v, inp, outd),
            ));
        } else {
            out.push((t.key.clone(), t.shape.clone(), v));
        }
    }
    let written: HashSet<String> = out.iter().map(|t| t.0.clone()).collect();
    let mut base_names: Vec<&str> = base
        .names()
        .filter(|n| n.starts_with("id_encoder.") && !written.contains(*n))
        .collect();
    base_names.sort_unstable();
    for name in base_names {
        let (shape, v) = base.read_f32(name).map_err(|e| {
            TrainError::Setting(format!(
                "reading `{name}` of the base PhotoMaker file {}: {e}",
                base.origin().display()
            ))
        })?;
        out.push((name.to_string(), shape, v));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Writes the trained PhotoMaker as one safetensors file `{id_encoder.*, lora_weights.*}`
/// (the CLIP backbone copied from `base`, the file training started from), atomically.
pub fn export_photomaker<B: Backend>(
    parts: &PhotoMakerParts<B>,
    unet: &UNet<B>,
    base: &WeightStore,
    path: &Path,
) -> Result<(), TrainError> {
    let tensors = photomaker_tensors(parts, unet, base)?;
    write_safetensors(path, &tensors, Some(("format", "pt")))
}

/// What a sample's identity tokens come from.
#[derive(Debug, Clone)]
pub enum PmReferences<B: Backend> {
    /// The references, CLIP-preprocessed, `[n, 3, 224, 224]`, through the whole ID encoder.
    Pixels(Tensor<B, 4>),
    /// The frozen CLIP tower's pooled outputs of the references, `[n, width]` (v1; what a run
    /// caches, since the trained `visual_projection{,_2}` come after the tower).
    Pooled(Tensor<B, 2>),
    /// A dropped condition (persongen's `do_cfg`): `context` is the empty prompt's and no
    /// identity is fused.
    Dropped,
}

/// One training sample's prompt and references.
#[derive(Debug, Clone)]
pub struct PmSample<B: Backend> {
    /// The class-expanded prompt's embeddings (`TriggerPrompt::expanded.context`), `[1,
    /// tokens, 2048]` (the empty prompt's when dropped).
    pub context: Tensor<B, 3>,
    /// Where the class tokens are in `context`.
    pub class_tokens: Range<usize>,
    /// The references.
    pub references: PmReferences<B>,
}

/// One (micro-)batch.
#[derive(Debug, Clone)]
pub struct PmBatch<B: Backend> {
    /// VAE latents × scaling factor, `[batch, 4, h, w]`.
    pub latents: Tensor<B, 4>,
    /// Noise, offset noise and timesteps.
    pub draw: NoiseDraw<B>,
    /// Each sample's prompt and references (`batch` of them).
    pub samples: Vec<PmSample<B>>,
    /// SDXL's pooled text embeddings and time ids, `batch` rows.
    pub added: AddedConditions<B>,
    /// Face boxes for the masked loss.
    pub face_boxes: Option<Vec<[f32; 4]>>,
}

/// The sum of every trainable tensor of `module` (one value, in the autodiff graph); `None`
/// without any. Times zero, it is persongen's `dummy` that gives a skipped ID encoder zero
/// gradients (and so an Adam step) rather than none.
pub(crate) fn trainable_sum<B: Backend, M: Module<B>>(module: &M) -> Option<Tensor<B, 1>> {
    struct Sum<B: Backend>(Option<Tensor<B, 1>>);
    impl<B: Backend> ModuleVisitor<B> for Sum<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let v = param.val();
            if v.is_require_grad() {
                let s = v.sum();
                self.0 = Some(match self.0.take() {
                    Some(acc) => acc + s,
                    None => s,
                });
            }
        }
    }
    let mut sum = Sum(None);
    module.visit(&mut sum);
    sum.0
}

/// Trains PhotoMaker's parts on a frozen SDXL UNet.
pub type PhotoMakerTrainer<A> = Trainer<A, PhotoMakerParts<A>>;

impl<A: AutodiffBackend> Trained<A> for PhotoMakerParts<A> {
    type Batch = PmBatch<A>;

    fn names(&self, unet: &UNet<A>) -> Result<ParamNames, TrainError> {
        ParamNames::photomaker(self, unet)
    }

    /// Each sample's prompt fused with its ID tokens, the UNet with the LoRA.
    fn loss(
        &self,
        unet: &UNet<A>,
        objective: &Objective<'_>,
        batch: &PmBatch<A>,
    ) -> Result<Tensor<A, 1>, TrainError> {
        let b = batch.latents.dims()[0];
        if batch.samples.len() != b {
            return Err(TrainError::Setting(format!(
                "a PhotoMaker batch of {b} latents with {} prompts",
                batch.samples.len()
            )));
        }
        let mut contexts = Vec::with_capacity(b);
        for s in &batch.samples {
            let id = match &s.references {
                PmReferences::Pixels(p) => self.encoder.forward(p.clone(), None)?,
                PmReferences::Pooled(p) => self.encoder.forward_pooled(p.clone())?,
                PmReferences::Dropped => {
                    contexts.push(s.context.clone());
                    continue;
                }
            };
            let [n, t, d] = id.dims();
            contexts.push(self.encoder.fuse_module.forward(
                s.context.clone(),
                s.class_tokens.clone(),
                id.reshape([n * t, d]),
            )?);
        }
        if batch
            .samples
            .iter()
            .all(|s| matches!(s.references, PmReferences::Dropped))
        {
            // persongen's `dummy = sum(p.sum() for p in id_encoder.parameters()) * 0`: the ID
            // encoder gets zero gradients (and so an Adam step) rather than none.
            if let Some(dummy) = trainable_sum(&self.encoder) {
                let dummy = dummy.mul_scalar(0.0).reshape([1, 1, 1]);
                contexts = contexts.into_iter().map(|c| c + dummy.clone()).collect();
            }
        }
        objective.denoising_loss(
            unet,
            batch.latents.clone(),
            &batch.draw,
            Tensor::cat(contexts, 0),
            Some(batch.added.clone()),
            &self.lora,
            batch.face_boxes.as_deref(),
        )
    }
}

impl<B: Backend> ToDevice<B> for PmBatch<B> {
    fn to_device(&self, device: &B::Device) -> Self {
        PmBatch {
            latents: self.latents.clone().to_device(device),
            draw: self.draw.to_device(device),
            samples: self
                .samples
                .iter()
                .map(|s| PmSample {
                    context: s.context.clone().to_device(device),
                    class_tokens: s.class_tokens.clone(),
                    references: match &s.references {
                        PmReferences::Pixels(p) => {
                            PmReferences::Pixels(p.clone().to_device(device))
                        }
                        PmReferences::Pooled(p) => {
                            PmReferences::Pooled(p.clone().to_device(device))
                        }
                        PmReferences::Dropped => PmReferences::Dropped,
                    },
                })
                .collect(),
            added: added_to_device(&self.added, device),
            face_boxes: self.face_boxes.clone(),
        }
    }
}

/// SDXL's added conditions on `device`.
pub(crate) fn added_to_device<B: Backend>(
    added: &AddedConditions<B>,
    device: &B::Device,
) -> AddedConditions<B> {
    AddedConditions {
        text_embeds: added.text_embeds.clone().to_device(device),
        time_ids: added.time_ids.clone().to_device(device),
    }
}
