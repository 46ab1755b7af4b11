//! `idforge train` with `method = "photomaker"`: the export's train split through the frozen
//! SDXL UNet into PhotoMaker v1's trained parts (UNet LoRA, `visual_projection{,_2}`, fuse
//! module; [`crate::photomaker`]), fine-tuning a PhotoMaker v1 file, with data as persongen's
//! trainer builds it (`src/datasets/id_dataset.py`, `src/model/photomaker/model.py`):
//!
//! - the caption is the export's `prompt_general` (the trigger after the class word), its trigger
//!   replaced by PhotoMaker's (`img`); a caption without exactly one trigger (no class word, so no
//!   trigger was placed) raises in the reference, and is left out here, counted in the summary;
//! - 1–`max_references` other photos of the identity (never the target), their reference crops
//!   (the face box plus a margin, persongen's `get_bigger_crop`) through `CLIPImageProcessor`;
//! - SDXL micro-conditioning `[original h, w, crop top, left, side, side]`: the export has no
//!   source size, so the original is the training crop as decoded and the crop the centre
//!   crop's offset (as diffusers' `train_text_to_image_sdxl.py`);
//! - persongen's drop (`do_cfg_p`, drawn once per micro-batch): the empty prompt, no identity,
//!   the ID encoder's zero gradient.
//!
//! `method = "split-prompt"` (persongen's `ipmakerbgbody`, [`crate::split_prompt`]) runs the
//! same data with the background / body prompts from the export's `prompt_background` /
//! `prompt_body` (the empty prompt when null) and exports the PhotoMaker file beside
//! [`SPLIT_FILE`]; its step runs the CLIP tower, so its cache holds the references'
//! CLIP-preprocessed pixels instead of the pooled outputs.
//!
//! Cached: VAE latents (as the IP-Adapter path), the class-expanded prompt embeddings (the text
//! encoders are frozen and the expansion depends only on the prompt and the reference count)
//! and the frozen CLIP tower's pooled output of each reference (the trained
//! `visual_projection{,_2}` come after it). Checkpoints hold the whole PhotoMaker file, so a
//! resume reads them as it reads the starting file.

use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use idforge_diffusion::adapters::lora::Lora;
use idforge_diffusion::adapters::photomaker::{
    DEFAULT_TRIGGER, IdEncoder, IdEncoderOptions, IdEncoderSpec, Version, trigger_ids,
};
use idforge_diffusion::adapters::split_prompt::SplitPrompt;
use idforge_diffusion::pipeline::TextEncoder;
use idforge_diffusion::unet::AddedConditions;
use idforge_diffusion::{DdpmSchedule, ScheduleConfig, UNet, Vae};
use idforge_models::WeightStore;
use idforge_models::clip::{ClipPreprocess, Convention};
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::nn::Init;

use crate::checkpoint::{self, CheckpointState};
use crate::data::{self, Plan, Prefetch, TrainRow, TrainSet, mix, salt};
use crate::error::TrainError;
use crate::export::{F32Tensor, write_safetensors};
use crate::optim::Optimizer;
use crate::photomaker::{
    PhotoMakerParts, PhotoMakerTrainer, PmBatch, PmReferences, PmSample, export_photomaker,
    fresh_lora, photomaker_groups, photomaker_tensors,
};
use crate::run::{
    ADAPTER_FILE, BatchDraws, CHECKPOINTS_DIR, Cache, CachedLatents, HOLD_ENV, METRICS_FILE,
    MetricsLine, RunSummary, Watch, adam_config, check_devices, folder_fingerprint, open_metrics,
    sha_hex, step_config, write_report,
};
use crate::settings::{Drop, Method, TrainSettings};
use crate::split_prompt::{
    SplitBatch, SplitExport, SplitIdentity, SplitParts, SplitPromptTrainer, SplitRates,
    SplitSample, export_split_prompt, split_prompt_groups,
};
use crate::step::StepReport;

/// The split-prompt adapter's background / body projections, beside the PhotoMaker part
/// (`adapter.safetensors`) in the run folder.
pub const SPLIT_FILE: &str = "split_prompt.safetensors";

/// Why rows are left out as targets.
const SKIP_REASON: &str = "captions without exactly one trigger word after a class word";

/// A target's latents: cached (posterior, face box, time ids) or its decoded pixels.
struct PmItem {
    row: usize,
    latent_key: String,
    cached: Option<(CachedLatents, Option<[f32; 6]>)>,
    pixels: Option<data::Pixels>,
    /// Each reference: its cache key, and its cached pooled output or its decoded crop.
    refs: Vec<crate::run::RefInput>,
}

/// A prompt's class-expanded embeddings: `[1, 77, 2048]`, the pooled `[1, 1280]`, the class
/// tokens.
#[derive(Clone)]
struct Expanded<B: Backend> {
    context: Tensor<B, 3>,
    pooled: Tensor<B, 2>,
    class_tokens: Range<usize>,
}

/// The caption of `row` with the export's trigger replaced by PhotoMaker's `trigger`.
pub fn photomaker_prompt(row: &TrainRow, trigger: &str) -> String {
    match row.trigger.as_deref() {
        Some(t) if !t.is_empty() && t != trigger => replace_word(&row.prompt, t, trigger),
        _ => row.prompt.clone(),
    }
}

/// `text` with every whole-word `word` (not inside a longer word) replaced by `with`.
fn replace_word(text: &str, word: &str, with: &str) -> String {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(word) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + word.len()..].chars().next();
        let prev_ok = match before {
            Some(c) => !is_word(c),
            None => out.chars().next_back().is_none_or(|c| !is_word(c)),
        };
        out.push_str(&rest[..at]);
        if prev_ok && after.is_none_or(|c| !is_word(c)) {
            out.push_str(with);
        } else {
            out.push_str(word);
        }
        rest = &rest[at + word.len()..];
    }
    out.push_str(rest);
    out
}

/// The prompt's embeddings with the class token repeated `class_tokens` times (PhotoMaker's
/// `encode_prompt_with_trigger_word`, see `idforge_diffusion::adapters::photomaker::prompt`).
fn encode_expanded<B: Backend>(
    encoders: &[TextEncoder<B>],
    prompt: &str,
    trigger: &str,
    class_tokens: usize,
    device: &B::Device,
) -> Result<Expanded<B>, TrainError> {
    let mut contexts = Vec::new();
    let mut pooled = None;
    let mut class = 0..0;
    for e in encoders {
        let t = trigger_ids(&e.tokenizer, prompt, trigger, class_tokens)?;
        let vocab = e.tower.config().vocab_size;
        if let Some(bad) = t.ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(TrainError::Setting(format!(
                "the caption {prompt:?} gives token id {bad}, outside the text encoder's \
                 vocabulary of {vocab}"
            )));
        }
        let n = t.ids.len();
        let ids: Vec<i64> = t.ids.iter().map(|&i| i64::from(i)).collect();
        let out = e.tower.forward(Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids, [1, n]),
            device,
        ));
        contexts.push(out.penultimate_hidden_state);
        pooled = out.embeds;
        class = t.class_tokens;
    }
    Ok(Expanded {
        context: Tensor::cat(contexts, 2),
        pooled: pooled.ok_or_else(no_projection)?,
        class_tokens: class,
    })
}

fn no_projection() -> TrainError {
    TrainError::Setting(
        "text_encoder_2 has no text_projection: SDXL needs CLIPTextModelWithProjection".into(),
    )
}

/// The empty prompt's SDXL embeddings (persongen's dropped caption `''`).
fn encode_empty<B: Backend>(
    encoders: &[TextEncoder<B>],
    device: &B::Device,
) -> Result<Expanded<B>, TrainError> {
    let mut contexts = Vec::new();
    let mut pooled = None;
    for e in encoders {
        let out = e.encode("", device)?;
        contexts.push(out.penultimate_hidden_state);
        pooled = out.embeds;
    }
    Ok(Expanded {
        context: Tensor::cat(contexts, 2),
        pooled: pooled.ok_or_else(no_projection)?,
        class_tokens: 0..0,
    })
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>, TrainError> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| TrainError::Setting(format!("reading a tensor back: {e:?}")))
}

/// The expanded prompt, from the cache folder or encoded and cached.
fn cached_expanded<B: Backend>(
    encoders: &[TextEncoder<B>],
    cache: &Cache,
    prompt: &str,
    trigger: &str,
    class_tokens: usize,
    device: &B::Device,
) -> Result<Expanded<B>, TrainError> {
    let key = sha_hex(format!("{trigger}\u{0}{class_tokens}\u{0}{prompt}").as_bytes());
    let path = cache.path(&key);
    if let Ok(store) = WeightStore::open(&path)
        && let (Ok((cs, c)), Ok((ps, p)), Ok((_, r))) = (
            store.read_f32("context"),
            store.read_f32("pooled"),
            store.read_f32("class_tokens"),
        )
        && cs.len() == 3
        && ps.len() == 2
        && r.len() == 2
    {
        return Ok(Expanded {
            context: Tensor::from_data(TensorData::new(c, [cs[0], cs[1], cs[2]]), device),
            pooled: Tensor::from_data(TensorData::new(p, [ps[0], ps[1]]), device),
            class_tokens: r[0] as usize..r[1] as usize,
        });
    }
    let e = encode_expanded(encoders, prompt, trigger, class_tokens, device)?;
    let cs = e.context.dims().to_vec();
    let ps = e.pooled.dims().to_vec();
    write_safetensors(
        &path,
        &[
            ("context".into(), cs, to_vec(e.context.clone())?),
            ("pooled".into(), ps, to_vec(e.pooled.clone())?),
            (
                "class_tokens".into(),
                vec![2],
                vec![e.class_tokens.start as f32, e.class_tokens.end as f32],
            ),
        ],
        None,
    )?;
    Ok(e)
}

/// Reads a PhotoMaker v1 file's ID encoder and UNet LoRA (a fresh rank-`rank` LoRA when the
/// file has none), for `unet`.
fn load_parts<B: Backend>(
    path: &Path,
    unet: &UNet<B>,
    options: &IdEncoderOptions,
    text_width: usize,
    rank: usize,
    device: &B::Device,
) -> Result<PhotoMakerParts<B>, TrainError> {
    let store = WeightStore::open(path)?;
    if !store.names().any(|n| n.starts_with("id_encoder.")) {
        return Err(TrainError::data(
            path,
            "no `id_encoder.*` tensors: not a PhotoMaker file; `photomaker` fine-tunes \
             photomaker-v1.bin or its safetensors variant (--adapter)",
        ));
    }
    let has_lora = store.names().any(|n| n.starts_with("lora_weights."));
    let lora = if has_lora {
        Lora::load_unet(&store, "lora_weights.", unet, device)?
    } else {
        fresh_lora(unet, rank, device)?
    };
    let encoder_store = store.with_prefix("id_encoder.");
    let spec = IdEncoderSpec::detect(&encoder_store, options)?;
    if spec.version != Version::V1 {
        return Err(TrainError::data(
            path,
            "is PhotoMaker v2: training is implemented for v1 (one class token per reference, \
             CLIP only); give photomaker-v1.bin",
        ));
    }
    if spec.dim != text_width {
        return Err(TrainError::data(
            path,
            format!(
                "fuses {}-wide prompt embeddings, this model's are {text_width} wide: give \
                 the SDXL model (--model) the PhotoMaker file was made for",
                spec.dim
            ),
        ));
    }
    let encoder = IdEncoder::new(&Init::Load(&encoder_store), &spec, device)?;
    Ok(PhotoMakerParts { encoder, lora })
}

/// A target: its posterior (shape, mean ‖ logvar), face box and SDXL time ids.
type Target = ((Vec<usize>, Vec<f32>), Option<[f32; 4]>, [f32; 6]);

/// One micro-batch: the random draws of `(seed, step, m)` in the IP-Adapter path's order (one
/// drop uniform per sample, the mask decision, timesteps, the VAE-sample noise, the noise, the
/// offset noise).
#[allow(clippy::too_many_arguments)]
fn pm_batch<A: Backend, B: Backend>(
    settings: &TrainSettings,
    step: u64,
    m: usize,
    schedule: &DdpmSchedule,
    targets: Vec<Target>,
    samples: Vec<(Expanded<B>, Vec<Vec<f32>>)>,
    pixels_side: Option<usize>,
    empty: &Expanded<B>,
    scaling: f32,
    latent_channels: usize,
    device: &A::Device,
) -> Result<PmBatch<A>, TrainError> {
    let b = targets.len();
    let posteriors: Vec<&(Vec<usize>, Vec<f32>)> = targets.iter().map(|t| &t.0).collect();
    let batch_draws = BatchDraws::new(
        settings,
        step,
        m,
        schedule,
        &posteriors,
        scaling,
        latent_channels,
    )?;
    let draws = &batch_draws.drops;
    let time_ids: Vec<f32> = targets.iter().flat_map(|t| t.2).collect();
    let boxes: Vec<Option<[f32; 4]>> = targets.iter().map(|t| t.1).collect();
    // persongen draws `do_cfg` once per batch (`trainer.py`): the first sample's uniform
    // decides for the micro-batch.
    let drop_all = settings.drop == Drop::Persongen && draws[0] < 0.10;
    let dropped = vec![drop_all; b];
    let mut pm_samples = Vec::with_capacity(b);
    let mut pooled = Vec::with_capacity(b);
    let to_a3 = |t: &Tensor<B, 3>| Tensor::<A, 3>::from_data(t.to_data(), device);
    for ((e, refs), &d) in samples.iter().zip(&dropped) {
        let (text, references) = if d {
            (empty, PmReferences::Dropped)
        } else {
            let width = refs.first().map_or(0, Vec::len);
            let flat: Vec<f32> = refs.iter().flatten().copied().collect();
            let n = refs.len();
            (
                e,
                match pixels_side {
                    Some(s) => PmReferences::Pixels(Tensor::from_data(
                        TensorData::new(flat, [n, 3, s, s]),
                        device,
                    )),
                    None => PmReferences::Pooled(Tensor::from_data(
                        TensorData::new(flat, [n, width]),
                        device,
                    )),
                },
            )
        };
        pooled.push(Tensor::<A, 2>::from_data(text.pooled.to_data(), device));
        pm_samples.push(PmSample {
            context: to_a3(&text.context),
            class_tokens: text.class_tokens.clone(),
            references,
        });
    }
    let masked = batch_draws.masked(settings.masked_loss_p, &boxes);
    let (latents, draw) = batch_draws.tensors::<A>(device);
    Ok(PmBatch {
        latents,
        draw,
        samples: pm_samples,
        added: AddedConditions {
            text_embeds: Tensor::cat(pooled, 0),
            time_ids: Tensor::from_data(TensorData::new(time_ids, [b, 6]), device),
        },
        face_boxes: masked.then(|| boxes.into_iter().map(|fb| fb.unwrap_or_default()).collect()),
    })
}

/// The trainer and its parts: PhotoMaker's, or the split-prompt adapter's (PhotoMaker's plus
/// the background / body projections).
enum Trained<A: AutodiffBackend> {
    PhotoMaker(PhotoMakerTrainer<A>, PhotoMakerParts<A>),
    Split(SplitPromptTrainer<A>, SplitParts<A>),
}

impl<A: AutodiffBackend> Trained<A> {
    fn optimizer(&self) -> &Optimizer<A::InnerBackend> {
        match self {
            Trained::PhotoMaker(t, _) => t.optimizer(),
            Trained::Split(t, _) => t.optimizer(),
        }
    }

    /// The checkpoint's tensors: the PhotoMaker file's (backbone from `base`), and for the
    /// split-prompt adapter its `split_prompt.*` too.
    fn tensors(&self, base: &WeightStore) -> Result<Vec<F32Tensor>, TrainError> {
        match self {
            Trained::PhotoMaker(t, p) => photomaker_tensors(p, t.unet(), base),
            Trained::Split(t, p) => {
                let mut all = photomaker_tensors(&p.photomaker, t.unet(), base)?;
                all.extend(p.split.tensors());
                all.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(all)
            }
        }
    }

    /// One optimizer step on `batches` (the split-prompt adapter's with each sample's
    /// background and body embeddings, `split`).
    fn step(
        self,
        batches: Vec<PmBatch<A>>,
        split: Vec<Vec<(Tensor<A, 3>, Tensor<A, 3>)>>,
    ) -> Result<(Self, StepReport), TrainError> {
        match self {
            Trained::PhotoMaker(mut t, p) => {
                let (p, r) = t.step(p, &batches)?;
                Ok((Trained::PhotoMaker(t, p), r))
            }
            Trained::Split(mut t, p) => {
                let mut out = Vec::with_capacity(batches.len());
                for (batch, texts) in batches.into_iter().zip(split) {
                    let mut samples = Vec::with_capacity(batch.samples.len());
                    for (s, (background, body)) in batch.samples.into_iter().zip(texts) {
                        samples.push(match s.references {
                            PmReferences::Pixels(pixels) => SplitSample {
                                main: s.context,
                                identity: Some(SplitIdentity {
                                    class_tokens: s.class_tokens,
                                    pixels,
                                }),
                                background,
                                body,
                            },
                            // Dropped: every part is the empty prompt's.
                            _ => SplitSample {
                                main: s.context.clone(),
                                identity: None,
                                background: s.context.clone(),
                                body: s.context,
                            },
                        });
                    }
                    out.push(SplitBatch {
                        latents: batch.latents,
                        draw: batch.draw,
                        samples,
                        added: batch.added,
                        face_boxes: batch.face_boxes,
                    });
                }
                let (p, r) = t.step(p, &out)?;
                Ok((Trained::Split(t, p), r))
            }
        }
    }
}

/// The SDXL embeddings of a plain prompt (the split-prompt adapter's background or body),
/// cached: both encoders' penultimate states, `[1, 77, 2048]`.
fn cached_plain<B: Backend>(
    encoders: &[TextEncoder<B>],
    cache: &Cache,
    text: &str,
    device: &B::Device,
) -> Result<Tensor<B, 3>, TrainError> {
    let key = sha_hex(format!("plain\u{0}{text}").as_bytes());
    if let Some((shape, v)) = cache.get(&key)
        && shape.len() == 3
    {
        return Ok(Tensor::from_data(
            TensorData::new(v, [shape[0], shape[1], shape[2]]),
            device,
        ));
    }
    let mut contexts = Vec::new();
    for e in encoders {
        contexts.push(e.encode(text, device)?.penultimate_hidden_state);
    }
    let t = Tensor::cat(contexts, 2);
    cache.put(&key, t.dims().to_vec(), to_vec(t.clone())?)?;
    Ok(t)
}

/// Runs (or resumes) a PhotoMaker training run into `out` (see [`crate::run::train`], which
/// validated the settings and checked that `model` is SDXL).
pub(crate) fn train<B: Backend>(
    settings: &TrainSettings,
    out: &Path,
    resume: bool,
    devices: &[B::Device],
    watch: &mut dyn Watch,
) -> Result<RunSummary, TrainError>
where
    B::FloatElem: Send,
{
    let device = check_devices::<B>(settings, devices)?;
    type A<B> = Autodiff<B>;
    let started = Instant::now();
    let model = settings.model.clone().expect("validated");
    let export = settings.dataset.clone().expect("validated");
    let base_path = settings.adapter.clone().expect("validated");

    let ckpt_root = out.join(CHECKPOINTS_DIR);
    let existing = checkpoint::list(&ckpt_root)?;
    if !resume && !existing.is_empty() {
        return Err(TrainError::data(
            out,
            "holds checkpoints of an earlier run: pass --resume to continue it, or remove the \
             folder (or choose another run name) to start again",
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;

    let encoders = vec![
        TextEncoder::<B>::load(
            &model.join("text_encoder"),
            &model.join("tokenizer"),
            device,
        )?,
        TextEncoder::<B>::load(
            &model.join("text_encoder_2"),
            &model.join("tokenizer_2"),
            device,
        )?,
    ];
    let text_width: usize = encoders.iter().map(|e| e.tower.config().width).sum();
    let vae = Vae::<B>::load(&model.join("vae"), device)?;
    let unet = UNet::<A<B>>::load(&model.join("unet"), device)?;
    let sched_config =
        ScheduleConfig::from_file(&model.join("scheduler").join("scheduler_config.json"))?;
    let schedule = DdpmSchedule::new(&sched_config);
    let factor = 1usize << (unet.config().block_out_channels.len() - 1);
    let scale = vae.config().downscale();
    let side = settings.resolution as usize;
    if !side.is_multiple_of(scale * factor) {
        return Err(TrainError::Setting(format!(
            "`resolution` = {side}: this model needs a multiple of {}",
            scale * factor
        )));
    }

    // The targets: rows whose caption has the trigger once (after its class word).
    let trigger = settings
        .trigger
        .clone()
        .unwrap_or_else(|| DEFAULT_TRIGGER.to_string());
    let mut set = TrainSet::open(&export)?;
    let prompts: Vec<Option<String>> = set
        .rows
        .iter()
        .map(|r| {
            let p = photomaker_prompt(r, &trigger);
            encoders
                .iter()
                .all(|e| trigger_ids(&e.tokenizer, &p, &trigger, 1).is_ok())
                .then_some(p)
        })
        .collect();
    let before = set.samples.len();
    set.samples.retain(|&r| prompts[r].is_some());
    let skipped = before - set.samples.len();
    if set.samples.is_empty() {
        return Err(TrainError::data(
            &export,
            format!(
                "no caption of the train split has the trigger word once after a class word \
                 ({skipped} without): PhotoMaker trains on captions like \"a photo of a man \
                 {trigger}\"; caption with class words (idforge caption) and export again"
            ),
        ));
    }
    let set = Arc::new(set);
    let plan = Arc::new(Plan::new(&set, settings.seed));

    // The starting weights: the last checkpoint's, or the PhotoMaker file.
    let loaded = if resume {
        match existing.last() {
            Some((_, dir)) => Some(checkpoint::load::<B>(dir, device)?),
            None => None,
        }
    } else {
        None
    };
    let fingerprint = settings.fingerprint();
    if let Some(l) = &loaded
        && l.state.settings != fingerprint
    {
        return Err(TrainError::data(
            out,
            "--resume with other settings than the checkpoint's (only steps, checkpointing, \
             workers and cache paths may change): use the run's settings.json, or start a new run",
        ));
    }
    let options = match settings.id_encoder_heads {
        Some([vision, perceiver]) => IdEncoderOptions {
            vision_head_dim: vision,
            perceiver_head_dim: perceiver,
        },
        None => IdEncoderOptions::default(),
    };
    let start_file = loaded
        .as_ref()
        .map_or(base_path.clone(), |l| l.adapter.clone());
    B::seed(device, mix(&[settings.seed, salt::INIT]));
    let parts = load_parts::<A<B>>(
        &start_file,
        &unet,
        &options,
        text_width,
        settings.lora_rank as usize,
        device,
    )?
    .freeze(&unet)?;
    let base = WeightStore::open(&base_path)?;
    // The frozen tower, outside the autodiff graph, for the references' cached pooled outputs.
    let tower = parts.encoder.vision.valid();
    let image_size = tower.config().image_size;

    let lr = settings.lr;
    let optimizer = |groups| Optimizer::new(adam_config(settings), groups);
    let split = settings.method == Method::SplitPrompt;
    let mut trained = if split {
        // A checkpoint holds the projections; a fresh run copies them from to_k / to_v.
        let parts = if loaded.is_some() {
            SplitParts {
                split: SplitPrompt::load(&start_file, &unet, device)?,
                photomaker: parts,
            }
        } else {
            SplitParts::from_photomaker(parts, &unet)?
        };
        let rates = SplitRates {
            lora: settings.lora_lr.unwrap_or(lr),
            ..SplitRates::uniform(lr)
        };
        let t = SplitPromptTrainer::new(
            unet,
            &parts,
            schedule.clone(),
            optimizer(split_prompt_groups(rates))?,
            step_config(settings),
        )?
        .with_devices(devices.to_vec());
        Trained::Split(t, parts)
    } else {
        let t = PhotoMakerTrainer::new(
            unet,
            &parts,
            schedule.clone(),
            optimizer(photomaker_groups(settings.lora_lr.unwrap_or(lr), lr))?,
            step_config(settings),
        )?
        .with_devices(devices.to_vec());
        Trained::PhotoMaker(t, parts)
    };
    let first_step = match loaded {
        Some(l) => {
            match &mut trained {
                Trained::PhotoMaker(t, _) => {
                    t.optimizer_mut().set_state(l.optimizer);
                    t.set_steps_taken(l.state.step);
                }
                Trained::Split(t, _) => {
                    t.optimizer_mut().set_state(l.optimizer);
                    t.set_steps_taken(l.state.step);
                }
            }
            l.state.step
        }
        None => 0,
    };
    crate::export::write_atomic(
        &out.join("settings.json"),
        &serde_json::to_vec_pretty(settings).unwrap_or_default(),
    )?;
    let metrics_path = out.join(METRICS_FILE);
    let mut metrics = open_metrics(&metrics_path, first_step)?;

    // Caches keyed by the frozen parts and the content.
    let cache_root = settings
        .cache_dir
        .clone()
        .unwrap_or_else(|| idforge_core::cache::cache_dir().join("train"));
    let latents = Cache {
        dir: cache_root
            .join("latents")
            .join(folder_fingerprint(&[model.join("vae")])?),
    };
    let text_cache = Cache {
        dir: cache_root
            .join("photomaker-text")
            .join(folder_fingerprint(&[
                model.join("text_encoder"),
                model.join("tokenizer"),
                model.join("text_encoder_2"),
                model.join("tokenizer_2"),
            ])?),
    };
    let base_bytes = std::fs::read(&base_path).map_err(|e| TrainError::io(&base_path, e))?;
    // PhotoMaker trains from the tower's pooled outputs; the split-prompt step runs the tower,
    // so its cache holds the CLIP-preprocessed pixels.
    let refs_cache = Cache {
        dir: if split {
            cache_root
                .join("photomaker-pixels")
                .join(image_size.to_string())
        } else {
            cache_root
                .join("photomaker-references")
                .join(&sha_hex(&base_bytes)[..16])
        },
    };
    drop(base_bytes);

    let b = settings.batch_size as usize;
    let k = (settings.grad_accum * settings.devices) as usize;
    let per_step = (b * k) as u64;
    let max_refs = settings.max_references as usize;
    let end = settings.steps * per_step;
    let empty = encode_empty(&encoders, device)?;
    let scaling = vae.scaling_factor() as f32;
    let latent_channels = vae.config().latent_channels;

    let item_for = {
        let set = set.clone();
        let plan = plan.clone();
        let latents = latents.clone();
        let refs_cache = refs_cache.clone();
        move |p: u64| -> Result<PmItem, String> {
            let row = plan.row(p);
            let step = p / per_step;
            let step_rows: Vec<usize> = (step * per_step..(step + 1) * per_step)
                .map(|q| plan.row(q))
                .collect();
            let count = plan.reference_count(&set, step, &step_rows, max_refs);
            let r = &set.rows[row];
            let bytes = r.image.bytes().map_err(|e| e.to_string())?;
            let latent_key = format!("{}-{side}", sha_hex(&bytes));
            let time = latents
                .get(&format!("{latent_key}-time"))
                .and_then(|(_, t)| <[f32; 6]>::try_from(t).ok());
            let (cached, pixels) = match (latents.get(&latent_key), time) {
                (Some((shape, v)), Some(time)) => {
                    let face_box = latents
                        .get(&format!("{latent_key}-box"))
                        .and_then(|(_, b)| <[f32; 4]>::try_from(b).ok());
                    (Some(((shape, v, face_box), Some(time))), None)
                }
                _ => (None, Some(data::target_pixels(r, side)?)),
            };
            let mut refs = Vec::new();
            for other in plan.references(&set, p, row, count) {
                let o = &set.rows[other];
                let bytes = o
                    .ref_image
                    .as_ref()
                    .unwrap_or(&o.image)
                    .bytes()
                    .map_err(|e| e.to_string())?;
                let key = sha_hex(&bytes);
                match refs_cache.get(&key) {
                    Some((_, v)) => refs.push((key, Some(v), None)),
                    None => refs.push((key, None, Some(data::decode_rgb(&bytes)?))),
                }
            }
            Ok(PmItem {
                row,
                latent_key,
                cached,
                pixels,
                refs,
            })
        }
    };
    let mut prefetch = Prefetch::start(
        first_step * per_step,
        end,
        settings.workers as usize,
        2 * per_step as usize,
        item_for,
    );

    let total = settings.steps;
    watch.start(first_step, total);
    let mut last_loss = None;
    let every = settings.checkpoint_every;
    let hold: Option<u64> = std::env::var(HOLD_ENV).ok().and_then(|v| v.parse().ok());
    let mut text_memo: HashMap<(String, usize), Expanded<B>> = HashMap::new();
    let preprocess = ClipPreprocess::new(image_size, Convention::HuggingFace);
    for step in first_step..total {
        let mut batches = Vec::with_capacity(k);
        let mut split_texts = Vec::with_capacity(k);
        for m in 0..k {
            let mut targets = Vec::with_capacity(b);
            let mut samples = Vec::with_capacity(b);
            let mut texts = Vec::with_capacity(b);
            for _ in 0..b {
                let (_, item) = prefetch
                    .next_item()
                    .map_err(|e| TrainError::data(&export, e))?;
                let ((shape, v, face_box), time) = match (item.cached, item.pixels) {
                    (Some((c, Some(t))), _) => (c, t),
                    (_, Some(px)) => {
                        let img = Tensor::<B, 4>::from_data(
                            TensorData::new(px.chw, [1, 3, side, side]),
                            device,
                        );
                        let post = vae.encode(img);
                        let both = Tensor::cat(vec![post.mean, post.logvar], 1);
                        let [_, c2, h, w] = both.dims();
                        let v = to_vec(both)?;
                        let [oh, ow] = px.original_size;
                        let [top, left] = px.crop_top_left;
                        let s = side as f32;
                        let time = [oh, ow, top, left, s, s];
                        latents.put(&item.latent_key, vec![c2, h, w], v.clone())?;
                        latents.put(
                            &format!("{}-time", item.latent_key),
                            vec![6],
                            time.to_vec(),
                        )?;
                        if let Some(fb) = px.face_box {
                            latents.put(
                                &format!("{}-box", item.latent_key),
                                vec![4],
                                fb.to_vec(),
                            )?;
                        }
                        ((vec![c2, h, w], v, px.face_box), time)
                    }
                    _ => unreachable!("a worker sends latents with their time ids, or pixels"),
                };
                targets.push(((shape, v), face_box, time));
                let prompt = prompts[item.row].as_deref().unwrap_or_default();
                let n = item.refs.len();
                let memo_key = (prompt.to_string(), n);
                let expanded = match text_memo.get(&memo_key) {
                    Some(e) => e.clone(),
                    None => {
                        let e =
                            cached_expanded(&encoders, &text_cache, prompt, &trigger, n, device)?;
                        text_memo.insert(memo_key, e.clone());
                        e
                    }
                };
                let mut pooled = Vec::with_capacity(n);
                for (key, cached, rgb) in item.refs {
                    let v = match (cached, rgb) {
                        (Some(v), _) => v,
                        (None, Some((w, h, data))) => {
                            let pixels: Tensor<B, 4> = preprocess.tensor(
                                &[RgbView {
                                    width: w,
                                    height: h,
                                    data: &data,
                                }],
                                device,
                            );
                            let v = if split {
                                to_vec(pixels)?
                            } else {
                                to_vec(tower.forward(pixels).pooled)?
                            };
                            refs_cache.put(&key, vec![v.len()], v.clone())?;
                            v
                        }
                        (None, None) => unreachable!("a worker sends pooled outputs or photos"),
                    };
                    pooled.push(v);
                }
                samples.push((expanded, pooled));
                if split {
                    let r = &set.rows[item.row];
                    let part = |t: &Option<String>| -> Result<Tensor<A<B>, 3>, TrainError> {
                        let t = cached_plain(
                            &encoders,
                            &text_cache,
                            t.as_deref().unwrap_or(""),
                            device,
                        )?;
                        Ok(Tensor::from_data(t.into_data(), device))
                    };
                    texts.push((part(&r.background)?, part(&r.body)?));
                }
            }
            batches.push(pm_batch::<A<B>, B>(
                settings,
                step,
                m,
                &schedule,
                targets,
                samples,
                split.then_some(image_size),
                &empty,
                scaling,
                latent_channels,
                device,
            )?);
            split_texts.push(texts);
        }
        let (next, report) = trained.step(batches, split_texts)?;
        trained = next;
        last_loss = Some(report.loss);
        let line = MetricsLine {
            step: step + 1,
            loss: report.loss,
            grad_norm: report.grad_norm,
            lr: report.lrs.clone(),
            seconds: started.elapsed().as_secs_f64(),
        };
        writeln!(
            metrics,
            "{}",
            serde_json::to_string(&line).unwrap_or_default()
        )
        .and_then(|_| metrics.flush())
        .map_err(|e| TrainError::io(&metrics_path, e))?;
        watch.step(&report);
        let done = step + 1;
        if (every > 0 && done.is_multiple_of(every)) || done == total {
            let state = CheckpointState {
                step: done,
                samples_seen: done * per_step,
                seed: settings.seed,
                settings: fingerprint.clone(),
                optimizer_steps: trained
                    .optimizer()
                    .state()
                    .iter()
                    .map(|(k, s)| (k.clone(), s.step))
                    .collect(),
            };
            let tensors = trained.tensors(&base)?;
            let dir = checkpoint::save(
                &ckpt_root,
                &tensors,
                trained.optimizer().state(),
                &state,
                settings.keep_checkpoints as usize,
            )?;
            watch.note(&format!("checkpoint {}", dir.display()));
            if hold == Some(done) {
                watch.note("holding (IDFORGE_TRAIN_HOLD_AT_STEP): waiting to be killed");
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            }
        }
    }
    drop(prefetch);
    let adapter_path: PathBuf = out.join(ADAPTER_FILE);
    let also = match &trained {
        Trained::PhotoMaker(t, p) => {
            export_photomaker(p, t.unet(), &base, &adapter_path)?;
            None
        }
        Trained::Split(t, p) => {
            let split_path = out.join(SPLIT_FILE);
            export_split_prompt(
                p,
                t.unet(),
                &base,
                SplitExport {
                    photomaker: &adapter_path,
                    split_prompt: &split_path,
                },
            )?;
            Some(split_path)
        }
    };
    write_report(out)?;
    Ok(RunSummary {
        first_step,
        steps: total,
        last_loss,
        adapter: adapter_path,
        samples: set.samples.len(),
        identities: set.identities(),
        skipped: (skipped > 0).then_some((skipped, SKIP_REASON)),
        also,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exports_trigger_becomes_photomakers() {
        assert_eq!(
            replace_word("a photo of a man sks, smiling", "sks", "img"),
            "a photo of a man img, smiling"
        );
        assert_eq!(
            replace_word("asks sks sksx sks", "sks", "img"),
            "asks img sksx img"
        );
        assert_eq!(replace_word("no trigger", "sks", "img"), "no trigger");
    }
}
