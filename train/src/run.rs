//! A whole training run (`idforge train`): the export's train split through the frozen SD 1.x
//! UNet into an IP-Adapter-FaceID, with cached VAE latents, text and reference embeddings,
//! checkpoints every N steps, `metrics.jsonl`, `report.html` and the exported adapter.
//!
//! The run folder (`runs/<name>/train/`):
//!
//! ```text
//! settings.json            the settings the run started with
//! metrics.jsonl            one line per optimizer step: step, loss, grad_norm, lr, seconds
//! checkpoints/step-N/      adapter.safetensors, optimizer.safetensors, state.json
//! adapter.safetensors      the final adapter (image_proj.* / ip_adapter.*, diffusers' numbering)
//! report.html              loss and learning-rate curves
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use idforge_diffusion::adapters::ip_adapter::{IpAdapter, ProjectionInput, ProjectionSpec};
use idforge_diffusion::nn::Init;
use idforge_diffusion::pipeline::TextEncoder;
use idforge_diffusion::{DdpmSchedule, ScheduleConfig, UNet, Vae};
use idforge_models::WeightStore;
use idforge_models::face_api::Detector;
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::face_embedder::FaceEmbedder;
use idforge_models::iresnet::{IResNet, l2_normalize};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkpoint::{self, CheckpointState};
use crate::data::{self, ImageSource, Plan, Prefetch, TrainSet, mix, salt};
use crate::error::TrainError;
use crate::export::{adapter_tensors, export_ip_adapter, write_atomic};
use crate::loss::{LossConfig, NoiseDraw};
use crate::optim::{AdamConfig, AdamKind, Optimizer, ParamGroup};
use crate::schedule::{Decay, LrSchedule, Warmup};
use crate::settings::{Drop, LrDecay, OptimizerKind, RefFaces, TrainSettings};
use crate::step::{IpAdapterTrainer, IpBatch, StepConfig, StepReport};

/// The final adapter's file in the run folder.
pub const ADAPTER_FILE: &str = "adapter.safetensors";
/// One JSON line per step.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The loss and learning-rate curves.
pub const REPORT_FILE: &str = "report.html";
/// The checkpoints' folder.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// For tests of `--resume`: after writing the checkpoint of this step the process waits
/// (to be killed) instead of going on.
pub const HOLD_ENV: &str = "IDFORGE_TRAIN_HOLD_AT_STEP";

/// Hooks for the caller's progress display.
pub trait Watch {
    /// The run starts at `first` of `total` steps.
    fn start(&mut self, first: u64, total: u64);
    /// A step is done.
    fn step(&mut self, report: &StepReport);
    /// A line for the user (cache misses, checkpoints).
    fn note(&mut self, line: &str);
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The step the run started at (0, or a checkpoint's).
    pub first_step: u64,
    /// The last step's index + 1.
    pub steps: u64,
    /// The last step's loss.
    pub last_loss: Option<f32>,
    /// The exported adapter.
    pub adapter: PathBuf,
    /// Training samples (targets) and identities in the train split.
    pub samples: usize,
    /// Identities with two or more photos.
    pub identities: usize,
    /// Seconds of the run.
    pub seconds: f64,
}

/// One metrics line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsLine {
    /// Steps done after this one (1-based).
    pub step: u64,
    /// The step's loss.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Each group's learning rate.
    pub lr: Vec<f64>,
    /// Seconds since the process started training.
    pub seconds: f64,
}

/// The embedder of references: ArcFace on aligned faces, or on the tight crop.
enum RefEncoder<B: Backend> {
    /// The face embedder, and the bare network for photos without a detected face.
    Detect(Box<FaceEmbedder<B>>, IResNet<B>),
    Crop(IResNet<B>),
}

impl<B: Backend> RefEncoder<B> {
    fn dim(&self) -> usize {
        match self {
            RefEncoder::Detect(e, _) => e.embedding_dim(),
            RefEncoder::Crop(n) => n.config().embedding_size,
        }
    }

    /// The normalised ArcFace embedding of a reference photo.
    fn embed(&self, rgb: &Rgb) -> Vec<f32> {
        let (w, h, data) = rgb;
        let view = RgbView {
            width: *w,
            height: *h,
            data,
        };
        match self {
            RefEncoder::Detect(e, net) => match e.largest_face(view) {
                Some((_, v)) => v,
                // No face found: the whole photo, resized, as in crop mode.
                None => l2_normalize(&resized_embed(net, view)),
            },
            RefEncoder::Crop(net) => l2_normalize(&resized_embed(net, view)),
        }
    }
}

fn resized_embed<B: Backend>(net: &IResNet<B>, view: RgbView<'_>) -> Vec<f32> {
    let side = net.config().input_size;
    let img = image::RgbImage::from_raw(view.width as u32, view.height as u32, view.data.to_vec())
        .unwrap_or_else(|| image::RgbImage::new(side as u32, side as u32));
    let small = image::imageops::resize(
        &img,
        side as u32,
        side as u32,
        image::imageops::FilterType::Triangle,
    );
    net.embed(RgbView {
        width: side,
        height: side,
        data: small.as_raw(),
    })
}

/// A folder of cached tensors, one safetensors file per key (tensor `v`).
#[derive(Debug, Clone)]
struct Cache {
    dir: PathBuf,
}

impl Cache {
    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.safetensors"))
    }

    fn get(&self, key: &str) -> Option<(Vec<usize>, Vec<f32>)> {
        let p = self.path(key);
        if !p.is_file() {
            return None;
        }
        WeightStore::open(&p).ok()?.read_f32("v").ok()
    }

    fn put(&self, key: &str, shape: Vec<usize>, v: Vec<f32>) -> Result<(), TrainError> {
        crate::export::write_safetensors(&self.path(key), &[("v".into(), shape, v)], None)
    }
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A fingerprint of a model component folder: its configuration and weight files' bytes.
fn folder_fingerprint(dirs: &[PathBuf]) -> Result<String, TrainError> {
    let mut h = Sha256::new();
    for dir in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| TrainError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            h.update(f.file_name().unwrap_or_default().as_encoded_bytes());
            let bytes = std::fs::read(&f).map_err(|e| TrainError::io(&f, e))?;
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
    }
    Ok(hex::encode(&h.finalize()[..12]))
}

/// Cached latents: shape `[2c, h, w]`, mean ‖ logvar, the face box at the training size.
type CachedLatents = (Vec<usize>, Vec<f32>, Option<[f32; 4]>);
/// A decoded photo: width, height, RGB8.
type Rgb = (usize, usize, Vec<u8>);
/// A reference: its cache key, and its cached embedding or its decoded photo.
type RefInput = (String, Option<Vec<f32>>, Option<Rgb>);

/// What a data worker hands the step: the target (cached latents or pixels) and the
/// references (cached embeddings or decoded photos).
struct Item {
    row: usize,
    /// Cache key of the latents.
    latent_key: String,
    /// `[2c, h, w]` mean ‖ logvar and the face box, when cached.
    cached: Option<CachedLatents>,
    pixels: Option<data::Pixels>,
    refs: Vec<RefInput>,
}

/// Runs (or resumes) a training run into `out` (`runs/<name>/train/`).
pub fn train<B: Backend>(
    settings: &TrainSettings,
    out: &Path,
    resume: bool,
    device: &B::Device,
    watch: &mut dyn Watch,
) -> Result<RunSummary, TrainError>
where
    B::FloatElem: Send,
{
    type A<B> = Autodiff<B>;
    settings.validate().map_err(TrainError::Setting)?;
    let started = Instant::now();
    let model = settings.model.clone().expect("validated");
    let export = settings.dataset.clone().expect("validated");
    let arcface = settings.arcface.clone().expect("validated");
    let index_path = model.join("model_index.json");
    let index = std::fs::read_to_string(&index_path).map_err(|e| {
        TrainError::data(
            &model,
            format!("no readable model_index.json ({e}): give a diffusers SD 1.x folder"),
        )
    })?;
    if !index.contains("\"StableDiffusionPipeline\"") {
        return Err(TrainError::data(
            &index_path,
            "not a StableDiffusionPipeline: training is implemented for SD 1.x (SDXL not yet)",
        ));
    }

    // The run folder: a fresh run refuses an earlier run's checkpoints.
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

    let set = Arc::new(TrainSet::open(&export)?);
    let plan = Arc::new(Plan::new(&set, settings.seed));

    let text = TextEncoder::<B>::load(
        &model.join("text_encoder"),
        &model.join("tokenizer"),
        device,
    )?;
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

    let crop_net = IResNet::<B>::load(&arcface, device)?;
    let encoder = match settings.ref_faces {
        RefFaces::Crop => RefEncoder::Crop(crop_net),
        RefFaces::Detect => {
            let weights = settings.face_api_weights.clone().ok_or_else(|| {
                TrainError::Setting(
                    "`ref_faces = \"detect\"` needs face-api's weights: run `make assets` or \
                     give --face-api-weights (or use `ref_faces = \"crop\"`)"
                        .into(),
                )
            })?;
            RefEncoder::Detect(
                Box::new(FaceEmbedder::load(
                    &weights,
                    Detector::default(),
                    Some(&arcface),
                    device,
                )?),
                crop_net,
            )
        }
    };
    let id_dim = encoder.dim();

    // Caches keyed by the model's components and the content.
    let cache_root = settings
        .cache_dir
        .clone()
        .unwrap_or_else(|| idforge_core::cache::cache_dir().join("train"));
    let vae_key = folder_fingerprint(&[model.join("vae")])?;
    let text_key = folder_fingerprint(&[model.join("text_encoder"), model.join("tokenizer")])?;
    let net_key = sha_hex(&std::fs::read(&arcface).map_err(|e| TrainError::io(&arcface, e))?);
    let latents = Cache {
        dir: cache_root.join("latents").join(&vae_key),
    };
    let texts = Cache {
        dir: cache_root.join("text").join(&text_key),
    };
    let refs_cache = Cache {
        dir: cache_root.join("arcface").join(format!(
            "{}-{}",
            &net_key[..16],
            match settings.ref_faces {
                RefFaces::Detect => "detect",
                RefFaces::Crop => "crop",
            }
        )),
    };

    // The adapter: a checkpoint's, a given file, or from scratch.
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
    let start_file = match (&loaded, &settings.adapter) {
        (Some(l), _) => Some(l.adapter.clone()),
        (None, Some(path)) => Some(path.clone()),
        (None, None) => None,
    };
    let adapter = match &start_file {
        Some(path) => {
            // Another base model's adapter is refused by the load, before its inputs are.
            let loaded = IpAdapter::<A<B>>::load(path, &unet, device)?;
            let store = WeightStore::open(path)?;
            let spec = ProjectionSpec::detect(&store, "image_proj.")
                .map_err(|e| TrainError::data(path, format!("not an IP-Adapter file: {e}")))?;
            match spec {
                ProjectionSpec::FaceId { id_dim: want, .. } if want != id_dim => {
                    return Err(TrainError::data(
                        path,
                        format!(
                            "takes {want}-d ID embeddings, the ArcFace model {} gives {id_dim}: \
                             give the ArcFace model the adapter was trained with",
                            arcface.display()
                        ),
                    ));
                }
                ProjectionSpec::FaceId { .. } => {}
                other => {
                    return Err(TrainError::data(
                        path,
                        format!(
                            "is an {} adapter; `ip-adapter-faceid` fine-tunes FaceID files",
                            other.kind()
                        ),
                    ));
                }
            }
            loaded
        }
        None => {
            B::seed(device, mix(&[settings.seed, salt::INIT]));
            let cross = unet
                .attention_layers()
                .iter()
                .find_map(|l| l.cross_attention_dim)
                .ok_or_else(|| TrainError::Setting("the UNet has no cross-attention".into()))?;
            let spec = ProjectionSpec::FaceId {
                id_dim,
                mlp: id_dim * 2,
                tokens: 4,
                cross,
            };
            let a = IpAdapter::new(&Init::Random, spec, &unet, device)?;
            let a = crate::init::ip_layers_from_unet(a, &unet)?;
            a.with_random_lora(&unet, settings.lora_rank as usize, device)?
        }
    };

    let lr = settings.lr;
    let groups = if adapter.lora.is_some() {
        vec![
            ParamGroup::new("_lora.", settings.lora_lr.unwrap_or(lr)),
            ParamGroup::new("", lr),
        ]
    } else {
        vec![ParamGroup::new("", lr)]
    };
    let config = AdamConfig {
        kind: match settings.optimizer {
            OptimizerKind::Adamw => AdamKind::AdamW,
            OptimizerKind::Adam => AdamKind::Adam,
        },
        beta1: settings.betas[0],
        beta2: settings.betas[1],
        eps: settings.eps,
        weight_decay: settings.weight_decay.unwrap_or(match settings.optimizer {
            OptimizerKind::Adamw => 1e-2,
            OptimizerKind::Adam => 0.0,
        }),
    };
    let step_config = StepConfig {
        loss: LossConfig {
            noise_offset: settings.noise_offset,
            snr_gamma: (settings.snr_gamma > 0.0).then_some(settings.snr_gamma),
        },
        max_grad_norm: (settings.max_grad_norm > 0.0).then_some(settings.max_grad_norm),
        lr: LrSchedule {
            warmup_steps: settings.warmup_steps,
            warmup: Warmup::Persongen,
            decay: match settings.lr_decay {
                LrDecay::Constant => Decay::Constant,
                LrDecay::Cosine => Decay::Cosine {
                    total_steps: settings.steps,
                    cycles: 0.5,
                },
            },
        },
    };
    let mut trainer = IpAdapterTrainer::new(
        unet,
        &adapter,
        schedule.clone(),
        Optimizer::new(config, groups)?,
        step_config,
    )?;
    let first_step = match loaded {
        Some(l) => {
            trainer.optimizer_mut().set_state(l.optimizer);
            trainer.set_steps_taken(l.state.step);
            l.state.step
        }
        None => 0,
    };
    write_atomic(
        &out.join("settings.json"),
        &serde_json::to_vec_pretty(settings).unwrap_or_default(),
    )?;
    let metrics_path = out.join(METRICS_FILE);
    let mut metrics = open_metrics(&metrics_path, first_step)?;

    let b = settings.batch_size as usize;
    let k = settings.grad_accum as usize;
    let per_step = (b * k) as u64;
    let max_refs = settings.max_references as usize;
    let end = settings.steps * per_step;

    // The empty-string embedding, for dropped captions.
    let empty_context = text_embedding(&text, &texts, "", device)?;
    let scaling = vae.scaling_factor() as f32;
    let latent_channels = vae.config().latent_channels;

    let item_for = {
        let set = set.clone();
        let plan = plan.clone();
        let latents = latents.clone();
        let refs_cache = refs_cache.clone();
        let ref_faces = settings.ref_faces;
        move |p: u64| -> Result<Item, String> {
            let row = plan.row(p);
            let step = p / per_step;
            let step_rows: Vec<usize> = (step * per_step..(step + 1) * per_step)
                .map(|q| plan.row(q))
                .collect();
            let count = plan.reference_count(&set, step, &step_rows, max_refs);
            let r = &set.rows[row];
            let bytes = r.image.bytes().map_err(|e| e.to_string())?;
            let latent_key = format!("{}-{side}", sha_hex(&bytes));
            let (cached, pixels) = match latents.get(&latent_key) {
                Some((shape, v)) => {
                    let boxes = latents
                        .get(&format!("{latent_key}-box"))
                        .and_then(|(_, b)| (b.len() == 4).then(|| [b[0], b[1], b[2], b[3]]));
                    (Some((shape, v, boxes)), None)
                }
                None => (None, Some(data::target_pixels(r, side)?)),
            };
            let mut refs = Vec::new();
            for other in plan.references(&set, p, row, count) {
                let o = &set.rows[other];
                let source: &ImageSource = match ref_faces {
                    RefFaces::Crop => o.ref_image.as_ref().unwrap_or(&o.image),
                    RefFaces::Detect => &o.image,
                };
                let bytes = source.bytes().map_err(|e| e.to_string())?;
                let key = sha_hex(&bytes);
                match refs_cache.get(&key) {
                    Some((_, v)) => refs.push((key, Some(v), None)),
                    None => refs.push((key, None, Some(data::decode_rgb(&bytes)?))),
                }
            }
            Ok(Item {
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
    let mut adapter = adapter;
    let mut text_memo: HashMap<String, Tensor<B, 3>> = HashMap::new();
    for step in first_step..total {
        let mut batches = Vec::with_capacity(k);
        for m in 0..k {
            let mut posteriors = Vec::with_capacity(b);
            let mut contexts = Vec::with_capacity(b);
            let mut ids = Vec::new();
            let mut boxes = Vec::with_capacity(b);
            let mut refs_per = 0;
            for _ in 0..b {
                let (_, item) = prefetch
                    .next_item()
                    .map_err(|e| TrainError::data(&export, e))?;
                let (shape, v, face_box) = match (item.cached, item.pixels) {
                    (Some(c), _) => c,
                    (None, Some(px)) => {
                        let img = Tensor::<B, 4>::from_data(
                            TensorData::new(px.chw, [1, 3, side, side]),
                            device,
                        );
                        let post = vae.encode(img);
                        let both = Tensor::cat(vec![post.mean, post.logvar], 1);
                        let [_, c2, h, w] = both.dims();
                        let v = both
                            .into_data()
                            .convert::<f32>()
                            .to_vec::<f32>()
                            .map_err(|e| TrainError::Setting(format!("reading latents: {e:?}")))?;
                        latents.put(&item.latent_key, vec![c2, h, w], v.clone())?;
                        if let Some(fb) = px.face_box {
                            latents.put(
                                &format!("{}-box", item.latent_key),
                                vec![4],
                                fb.to_vec(),
                            )?;
                        }
                        (vec![c2, h, w], v, px.face_box)
                    }
                    (None, None) => unreachable!("a worker sends latents or pixels"),
                };
                posteriors.push((shape, v));
                boxes.push(face_box);
                let prompt = &set.rows[item.row].prompt;
                let ctx = match text_memo.get(prompt) {
                    Some(c) => c.clone(),
                    None => {
                        let c = text_embedding(&text, &texts, prompt, device)?;
                        text_memo.insert(prompt.clone(), c.clone());
                        c
                    }
                };
                contexts.push(ctx);
                refs_per = item.refs.len();
                let mut these = Vec::new();
                for (key, cached, rgb) in item.refs {
                    let v = match (cached, rgb) {
                        (Some(v), _) => v,
                        (None, Some(rgb)) => {
                            let v = encoder.embed(&rgb);
                            refs_cache.put(&key, vec![v.len()], v.clone())?;
                            v
                        }
                        (None, None) => unreachable!("a worker sends embeddings or photos"),
                    };
                    these.push(v);
                }
                ids.push(these);
            }
            batches.push(make_batch::<A<B>, B>(
                settings,
                step,
                m,
                &schedule,
                posteriors,
                contexts,
                &empty_context,
                ids,
                refs_per,
                id_dim,
                boxes,
                scaling,
                latent_channels,
                device,
            )?);
        }
        let (next, report) = trainer.step(adapter, &batches)?;
        adapter = next;
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
                optimizer_steps: trainer
                    .optimizer()
                    .state()
                    .iter()
                    .map(|(k, s)| (k.clone(), s.step))
                    .collect(),
            };
            let tensors = adapter_tensors(&adapter, trainer.unet())?;
            let dir = checkpoint::save(
                &ckpt_root,
                &tensors,
                trainer.optimizer().state(),
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
    let adapter_path = out.join(ADAPTER_FILE);
    export_ip_adapter(&adapter, trainer.unet(), &adapter_path)?;
    write_report(out)?;
    Ok(RunSummary {
        first_step,
        steps: total,
        last_loss,
        adapter: adapter_path,
        samples: set.samples.len(),
        identities: set.identities(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The text encoder's `last_hidden_state` of `prompt` (`[1, tokens, width]`), cached.
fn text_embedding<B: Backend>(
    text: &TextEncoder<B>,
    cache: &Cache,
    prompt: &str,
    device: &B::Device,
) -> Result<Tensor<B, 3>, TrainError> {
    let key = sha_hex(prompt.as_bytes());
    if let Some((shape, v)) = cache.get(&key)
        && shape.len() == 3
    {
        return Ok(Tensor::from_data(
            TensorData::new(v, [shape[0], shape[1], shape[2]]),
            device,
        ));
    }
    let t = text.encode(prompt, device)?.last_hidden_state;
    let dims = t.dims();
    let v = t
        .clone()
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| TrainError::Setting(format!("reading a text embedding: {e:?}")))?;
    cache.put(&key, dims.to_vec(), v.clone())?;
    Ok(Tensor::from_data(TensorData::new(v, dims), device))
}

/// One micro-batch from its samples and the random draws of `(seed, step, m)`: drops first
/// (one uniform per sample), the mask decision, timesteps, the VAE-sample noise, the noise, the
/// offset noise — always in this order, so the stream is fixed whatever the settings.
#[allow(clippy::too_many_arguments)]
fn make_batch<A: Backend, B: Backend>(
    settings: &TrainSettings,
    step: u64,
    m: usize,
    schedule: &DdpmSchedule,
    posteriors: Vec<(Vec<usize>, Vec<f32>)>,
    contexts: Vec<Tensor<B, 3>>,
    empty_context: &Tensor<B, 3>,
    ids: Vec<Vec<Vec<f32>>>,
    refs_per: usize,
    id_dim: usize,
    boxes: Vec<Option<[f32; 4]>>,
    scaling: f32,
    latent_channels: usize,
    device: &A::Device,
) -> Result<IpBatch<A>, TrainError> {
    let b = posteriors.len();
    let mut rng = StdRng::seed_from_u64(mix(&[settings.seed, salt::STEP, step, m as u64]));
    let draws: Vec<f64> = (0..b).map(|_| rng.random::<f64>()).collect();
    let mask_draw: f64 = rng.random();
    let timesteps: Vec<usize> = (0..b)
        .map(|_| rng.random_range(0..schedule.len()))
        .collect();
    let [c2, h, w]: [usize; 3] = posteriors[0]
        .0
        .clone()
        .try_into()
        .map_err(|_| TrainError::Setting("cached latents of another rank".into()))?;
    if c2 != 2 * latent_channels {
        return Err(TrainError::Setting(format!(
            "cached latents have {c2} channels, the VAE makes {}",
            2 * latent_channels
        )));
    }
    let c = latent_channels;
    let n = b * c * h * w;
    let mut normal = |count: usize| -> Vec<f32> {
        (0..count)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect()
    };
    let sample_noise = normal(n);
    let noise = normal(n);
    let offset = normal(b * c);
    let mut lat = Vec::with_capacity(n);
    for (i, (shape, v)) in posteriors.iter().enumerate() {
        if shape != &posteriors[0].0 {
            return Err(TrainError::Setting(
                "cached latents of different sizes in one batch".into(),
            ));
        }
        let plane = c * h * w;
        for j in 0..plane {
            let mean = v[j];
            let logvar = v[plane + j];
            let eps = sample_noise[i * plane + j];
            lat.push((mean + (0.5 * logvar).exp() * eps) * scaling);
        }
    }
    let (drop_image, drop_text): (Vec<bool>, Vec<bool>) = draws
        .iter()
        .map(|&r| match settings.drop {
            Drop::IpAdapter => (
                r < 0.05 || (0.10..0.15).contains(&r),
                (0.05..0.15).contains(&r),
            ),
            Drop::Persongen => (r < 0.10, r < 0.10),
            Drop::None => (false, false),
        })
        .unzip();
    let contexts: Vec<Tensor<B, 3>> = contexts
        .into_iter()
        .zip(&drop_text)
        .map(|(ctx, &d)| if d { empty_context.clone() } else { ctx })
        .collect();
    let context = Tensor::<B, 3>::cat(contexts, 0);
    let cdims = context.dims();
    let context = Tensor::<A, 3>::from_data(context.into_data(), device);
    let mut id_values = Vec::with_capacity(b * refs_per * id_dim);
    for (these, &dropped) in ids.iter().zip(&drop_image) {
        if these.len() != refs_per {
            return Err(TrainError::Setting(
                "samples of one batch with different reference counts".into(),
            ));
        }
        for v in these {
            if v.len() != id_dim {
                return Err(TrainError::Setting(format!(
                    "a cached reference embedding has {} values, the ArcFace model gives {id_dim}",
                    v.len()
                )));
            }
            if dropped {
                id_values.extend(std::iter::repeat_n(0f32, id_dim));
            } else {
                id_values.extend_from_slice(v);
            }
        }
    }
    let masked = mask_draw < settings.masked_loss_p
        && boxes.iter().all(|fb| {
            fb.is_some_and(|[x0, y0, x1, y1]| {
                let s = 8.0;
                (x1 / s).ceil() - (x0 / s).floor() >= 1.0
                    && (y1 / s).ceil() - (y0 / s).floor() >= 1.0
            })
        });
    let _ = cdims;
    Ok(IpBatch {
        latents: Tensor::from_data(TensorData::new(lat, [b, c, h, w]), device),
        draw: NoiseDraw {
            noise: Tensor::from_data(TensorData::new(noise, [b, c, h, w]), device),
            offset_noise: Some(Tensor::from_data(TensorData::new(offset, [b, c]), device)),
            timesteps,
        },
        context,
        references: ProjectionInput {
            image_embeds: None,
            hidden_states: None,
            id_embeds: Some(Tensor::from_data(
                TensorData::new(id_values, [b * refs_per, id_dim]),
                device,
            )),
        },
        face_boxes: masked.then(|| boxes.into_iter().map(|fb| fb.unwrap_or_default()).collect()),
    })
}

/// Opens `metrics.jsonl` for appending, keeping only the lines of steps ≤ `first_step` (a
/// killed run may have logged steps after its last checkpoint).
fn open_metrics(path: &Path, first_step: u64) -> Result<std::fs::File, TrainError> {
    let kept: Vec<String> = if first_step > 0 && path.is_file() {
        std::fs::read_to_string(path)
            .map_err(|e| TrainError::io(path, e))?
            .lines()
            .filter(|l| serde_json::from_str::<MetricsLine>(l).is_ok_and(|m| m.step <= first_step))
            .map(str::to_string)
            .collect()
    } else {
        Vec::new()
    };
    let mut text = kept.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| TrainError::io(path, e))
}

/// Reads `metrics.jsonl`.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsLine>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Writes `report.html` beside `metrics.jsonl`: the loss and learning-rate curves as SVG.
pub fn write_report(out: &Path) -> Result<(), TrainError> {
    let lines = read_metrics(&out.join(METRICS_FILE))?;
    let loss: Vec<(f64, f64)> = lines
        .iter()
        .map(|m| (m.step as f64, m.loss as f64))
        .collect();
    let groups = lines.first().map_or(0, |m| m.lr.len());
    let lrs: Vec<Vec<(f64, f64)>> = (0..groups)
        .map(|g| {
            lines
                .iter()
                .filter_map(|m| m.lr.get(g).map(|&v| (m.step as f64, v)))
                .collect()
        })
        .collect();
    let settings = std::fs::read_to_string(out.join("settings.json")).unwrap_or_default();
    let last = lines.last();
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>idforge train — {title}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:960px}}pre{{background:#f4f4f4;\
         padding:1em;overflow:auto}}</style></head><body><h1>Training: {title}</h1>\
         <p>{steps} steps; last loss {loss}; {secs:.1} s.</p>\
         <h2>Loss</h2>{loss_svg}<h2>Learning rate</h2>{lr_svg}\
         <h2>Settings</h2><pre>{settings}</pre></body></html>\n",
        title = idforge_core::html::escape(
            &out.parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        steps = lines.len(),
        loss = last.map_or("—".into(), |m| format!("{:.5}", m.loss)),
        secs = last.map_or(0.0, |m| m.seconds),
        loss_svg = line_chart(&[("loss", &loss)], "loss"),
        lr_svg = line_chart(
            &lrs.iter()
                .enumerate()
                .map(|(g, v)| (
                    if g == 0 && groups > 1 {
                        "LoRA"
                    } else {
                        "adapter"
                    },
                    v.as_slice()
                ))
                .collect::<Vec<_>>(),
            "lr"
        ),
        settings = idforge_core::html::escape(&settings),
    );
    write_atomic(&out.join(REPORT_FILE), html.as_bytes())
}

/// A small SVG line chart of one or more series over the step axis.
pub fn line_chart(series: &[(&str, &[(f64, f64)])], y_label: &str) -> String {
    let (w, h, pad) = (720.0, 260.0, 48.0);
    let points = series.iter().flat_map(|(_, s)| s.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        if x.is_finite() && y.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if x0 > x1 {
        return "<p>no steps yet</p>".into();
    }
    if x1 == x0 {
        x1 = x0 + 1.0;
    }
    if y1 == y0 {
        y1 = y0 + y0.abs().max(1e-12);
    }
    let px = |x: f64| pad + (x - x0) / (x1 - x0) * (w - 2.0 * pad);
    let py = |y: f64| h - pad - (y - y0) / (y1 - y0) * (h - 2.0 * pad);
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{y_label} by step\">\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\
         <line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#888\"/>\
         <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"#888\"/>\
         <text x=\"{pad}\" y=\"{t}\" font-size=\"11\">{y1:.3e}</text>\
         <text x=\"{pad}\" y=\"{bt}\" font-size=\"11\">{y0:.3e}</text>\
         <text x=\"{r}\" y=\"{bt}\" font-size=\"11\" text-anchor=\"end\">step {x1:.0}</text>",
        b = h - pad,
        r = w - pad,
        t = pad - 6.0,
        bt = h - pad + 16.0,
    );
    for (i, (name, s)) in series.iter().enumerate() {
        let colour = colours[i % colours.len()];
        let pts: Vec<String> = s
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"{colour}\">{}</text>",
            pts.join(" "),
            w - pad - 80.0,
            pad + 14.0 * (i as f64 + 1.0),
            idforge_core::html::escape(name)
        ));
    }
    svg.push_str("</svg>");
    svg
}

/// The checkpoint folders of a run (for the CLI's summary).
pub fn checkpoints(out: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    checkpoint::list(&out.join(CHECKPOINTS_DIR))
}
