//! A whole training run (`idforge train`): the export's train split through the frozen SD 1.x
//! UNet into an IP-Adapter of any kind (plain, Plus, full-face: CLIP image features of the
//! references; FaceID: ArcFace; FaceID-Plus: both, CLIP seeing the 224 px face crop — computed
//! by [`idforge_models::reference`] as `generate --ref` does), with cached VAE latents, text
//! and reference features,
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
use idforge_diffusion::adapters::ip_adapter::projection::ResamplerShape;
use idforge_diffusion::adapters::ip_adapter::{IpAdapter, ProjectionInput, ProjectionSpec};
use idforge_diffusion::nn::Init;
use idforge_diffusion::pipeline::TextEncoder;
use idforge_diffusion::reference::{ip_adapter_clip_width, ip_adapter_id_width};
use idforge_diffusion::{DdpmSchedule, ScheduleConfig, UNet, Vae};
use idforge_models::WeightStore;
use idforge_models::face_api::Detector;
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::face_embedder::FaceEmbedder;
use idforge_models::iresnet::{IResNet, l2_normalize};
use idforge_models::reference::{
    ClipInput, CropChannels, FACE_CROP_SIZE, ImageEncoder, ReferenceEncoder, ReferenceNeeds,
};
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
use crate::settings::{CropOrder, Drop, LrDecay, Method, OptimizerKind, RefFaces, TrainSettings};
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
    /// A second file `generate --adapter` loads beside `adapter` (the split-prompt adapter's
    /// `split_prompt.safetensors`; `adapter` is then its PhotoMaker part).
    pub also: Option<PathBuf>,
    /// Rows of the train split left out as targets, with why (PhotoMaker: captions without
    /// exactly one trigger word after a class word).
    pub skipped: Option<(usize, &'static str)>,
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

/// What one reference becomes, flat (as cached): the L2-normalised ArcFace embedding
/// (`id_dim` values, FaceID kinds) then CLIP's part (plain: `image_embeds`; Plus, full-face,
/// FaceID-Plus: `hidden_states[-2]`, tokens × width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RefLayout {
    id_dim: usize,
    clip: Option<ClipPart>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClipPart {
    Embeds(usize),
    Hidden { tokens: usize, width: usize },
}

impl RefLayout {
    fn clip_len(&self) -> usize {
        match self.clip {
            None => 0,
            Some(ClipPart::Embeds(d)) => d,
            Some(ClipPart::Hidden { tokens, width }) => tokens * width,
        }
    }

    fn len(&self) -> usize {
        self.id_dim + self.clip_len()
    }
}

/// The networks references go through ([`idforge_models::reference`], as `generate --ref`),
/// and what to do without a detector or without a face.
struct RefEncoder<B: Backend> {
    mode: RefFaces,
    /// face-api + ArcFace (detect mode, FaceID kinds) and the CLIP image encoder.
    reference: ReferenceEncoder<B>,
    /// The bare ArcFace network: crop mode, and photos without a detected face.
    arcface: Option<IResNet<B>>,
    needs: ReferenceNeeds,
    layout: RefLayout,
}

impl<B: Backend> RefEncoder<B> {
    /// The flat features of a reference photo ([`RefLayout`]).
    fn embed(&self, rgb: &Rgb) -> Result<Vec<f32>, TrainError> {
        let (w, h, data) = rgb;
        let view = RgbView {
            width: *w,
            height: *h,
            data,
        };
        let detected = match self.mode {
            RefFaces::Detect => match self.reference.encode(view, Path::new(""), &self.needs) {
                Ok(r) => Some(r),
                // No face found: the whole photo, resized, as in crop mode.
                Err(idforge_models::ModelError::NoFace { .. }) => None,
                Err(e) => return Err(e.into()),
            },
            RefFaces::Crop => None,
        };
        let mut out = Vec::with_capacity(self.layout.len());
        if self.layout.id_dim > 0 {
            match detected.as_ref().and_then(|r| r.face.as_ref()) {
                Some(f) => out.extend_from_slice(&f.normed_embedding),
                None => {
                    let net = self.arcface.as_ref().ok_or_else(|| {
                        TrainError::Setting("the FaceID kinds need --arcface".into())
                    })?;
                    let side = net.config().input_size;
                    let small = resized(view, side);
                    out.extend(l2_normalize(&net.embed(RgbView {
                        width: side,
                        height: side,
                        data: &small,
                    })));
                }
            }
        }
        if let Some(part) = self.layout.clip {
            let features = match detected.and_then(|r| r.clip) {
                Some(f) => f,
                None => {
                    let enc = self.reference.image_encoder().ok_or_else(|| {
                        TrainError::Setting("the CLIP kinds need --image-encoder".into())
                    })?;
                    let image = match self.needs.clip {
                        Some(ClipInput::FaceCrop(channels)) => {
                            // No detector (or no face): the photo resized to the crop's side.
                            let small = resized(view, FACE_CROP_SIZE);
                            match channels {
                                CropChannels::Rgb => small,
                                CropChannels::Bgr => small
                                    .chunks_exact(3)
                                    .flat_map(|p| [p[2], p[1], p[0]])
                                    .collect(),
                            }
                        }
                        _ => data.clone(),
                    };
                    let (iw, ih) = match self.needs.clip {
                        Some(ClipInput::FaceCrop(_)) => (FACE_CROP_SIZE, FACE_CROP_SIZE),
                        _ => (*w, *h),
                    };
                    enc.encode(&[RgbView {
                        width: iw,
                        height: ih,
                        data: &image,
                    }])
                    .pop()
                    .ok_or_else(|| TrainError::Setting("CLIP encoded no image".into()))?
                }
            };
            match part {
                ClipPart::Embeds(_) => out.extend(features.image_embeds.ok_or_else(|| {
                    TrainError::Setting(
                        "the image encoder has no visual_projection: plain IP-Adapter needs \
                         CLIPVisionModelWithProjection's image_embeds"
                            .into(),
                    )
                })?),
                ClipPart::Hidden { .. } => out.extend(features.hidden_states),
            }
        }
        Ok(out)
    }
}

/// A photo resized to `side` × `side` (RGB8).
fn resized(view: RgbView<'_>, side: usize) -> Vec<u8> {
    let img = image::RgbImage::from_raw(view.width as u32, view.height as u32, view.data.to_vec())
        .unwrap_or_else(|| image::RgbImage::new(side as u32, side as u32));
    image::imageops::resize(
        &img,
        side as u32,
        side as u32,
        image::imageops::FilterType::Triangle,
    )
    .into_raw()
}

/// A folder of cached tensors, one safetensors file per key (tensor `v`).
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    pub(crate) dir: PathBuf,
}

impl Cache {
    pub(crate) fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.safetensors"))
    }

    pub(crate) fn get(&self, key: &str) -> Option<(Vec<usize>, Vec<f32>)> {
        let p = self.path(key);
        if !p.is_file() {
            return None;
        }
        WeightStore::open(&p).ok()?.read_f32("v").ok()
    }

    pub(crate) fn put(&self, key: &str, shape: Vec<usize>, v: Vec<f32>) -> Result<(), TrainError> {
        crate::export::write_safetensors(&self.path(key), &[("v".into(), shape, v)], None)
    }
}

pub(crate) fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The first of `devices` (where the run's tensors live), after checking that there are as
/// many as `settings.devices` asks for.
pub(crate) fn check_devices<'a, B: Backend>(
    settings: &TrainSettings,
    devices: &'a [B::Device],
) -> Result<&'a B::Device, TrainError> {
    match devices.first() {
        Some(d) if devices.len() == settings.devices as usize => Ok(d),
        _ => Err(TrainError::Setting(format!(
            "`devices` = {} but the run was given {} device(s)",
            settings.devices,
            devices.len()
        ))),
    }
}

/// A fingerprint of a model component folder: its configuration and weight files' bytes.
pub(crate) fn folder_fingerprint(dirs: &[PathBuf]) -> Result<String, TrainError> {
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
pub(crate) type CachedLatents = (Vec<usize>, Vec<f32>, Option<[f32; 4]>);
/// A decoded photo: width, height, RGB8.
pub(crate) type Rgb = (usize, usize, Vec<u8>);
/// A reference: its cache key, and its cached embedding or its decoded photo.
pub(crate) type RefInput = (String, Option<Vec<f32>>, Option<Rgb>);

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
    devices: &[B::Device],
    watch: &mut dyn Watch,
) -> Result<RunSummary, TrainError>
where
    B::FloatElem: Send,
{
    type A<B> = Autodiff<B>;
    settings.validate().map_err(TrainError::Setting)?;
    let device = check_devices::<B>(settings, devices)?;
    let started = Instant::now();
    let model = settings.model.clone().expect("validated");
    let export = settings.dataset.clone().expect("validated");
    check_family(settings.method, &model)?;
    if settings.method.is_sdxl() {
        return crate::photomaker_run::train::<B>(settings, out, resume, devices, watch);
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

    // The reference networks of the method: ArcFace (FaceID kinds), CLIP (the others and
    // FaceID-Plus), face-api in detect mode.
    let arcface = settings
        .arcface
        .clone()
        .filter(|_| settings.method.needs_arcface());
    let crop_net = arcface
        .as_deref()
        .map(|a| IResNet::<B>::load(a, device))
        .transpose()?;
    let clip = settings
        .image_encoder
        .clone()
        .filter(|_| settings.method.needs_image_encoder())
        .map(|p| ImageEncoder::<B>::load(&p, device).map(|e| (p, e)))
        .transpose()?;
    let crop_channels = match settings.face_crop_channels {
        CropOrder::Bgr => CropChannels::Bgr,
        CropOrder::Rgb => CropChannels::Rgb,
    };
    let needs = ReferenceNeeds {
        face: settings.method.needs_arcface(),
        clip: match settings.method {
            Method::IpAdapterFaceidPlus => Some(ClipInput::FaceCrop(crop_channels)),
            m if m.needs_image_encoder() => Some(ClipInput::WholeImage),
            _ => None,
        },
    };
    let faces = match (settings.ref_faces, &arcface) {
        (RefFaces::Detect, Some(arcface)) => {
            let weights = settings.face_api_weights.clone().ok_or_else(|| {
                TrainError::Setting(
                    "`ref_faces = \"detect\"` needs face-api's weights: run `make assets` or \
                     give --face-api-weights (or use `ref_faces = \"crop\"`)"
                        .into(),
                )
            })?;
            Some(FaceEmbedder::load(
                &weights,
                Detector::default(),
                Some(arcface),
                device,
            )?)
        }
        _ => None,
    };
    let id_dim = crop_net.as_ref().map_or(0, |n| n.config().embedding_size);
    let unconditional = clip.as_ref().map(|(_, e)| e.unconditional());
    let clip_part = match (&clip, settings.method) {
        (None, _) => None,
        (Some((path, e)), Method::IpAdapter) => {
            Some(ClipPart::Embeds(e.projection_dim().ok_or_else(|| {
                TrainError::data(
                    path,
                    "has no visual_projection: plain IP-Adapter takes the projected \
                     image_embeds of CLIPVisionModelWithProjection",
                )
            })?))
        }
        (Some(_), _) => {
            let u = unconditional.as_ref().expect("computed with the encoder");
            Some(ClipPart::Hidden {
                tokens: u.tokens,
                width: u.width,
            })
        }
    };
    let layout = RefLayout {
        id_dim,
        clip: clip_part,
    };
    let clip_path = clip.as_ref().map(|(p, _)| p.clone());
    let encoder = RefEncoder {
        mode: settings.ref_faces,
        reference: ReferenceEncoder::new(faces, clip.map(|(_, e)| e)),
        arcface: crop_net,
        needs,
        layout,
    };
    // Hidden-state kinds drop an image as CLIP's features of zero pixels (IP-Adapter's
    // `torch.zeros_like(clip_image)`), the others as zeros.
    let uncond_hidden: Option<Vec<f32>> = match layout.clip {
        Some(ClipPart::Hidden { .. }) => unconditional.map(|u| u.hidden_states),
        _ => None,
    };

    // Caches keyed by the model's components and the content.
    let cache_root = settings
        .cache_dir
        .clone()
        .unwrap_or_else(|| idforge_core::cache::cache_dir().join("train"));
    let vae_key = folder_fingerprint(&[model.join("vae")])?;
    let text_key = folder_fingerprint(&[model.join("text_encoder"), model.join("tokenizer")])?;
    let net_key = match &arcface {
        Some(a) => sha_hex(&std::fs::read(a).map_err(|e| TrainError::io(a, e))?)[..16].to_string(),
        None => "none".into(),
    };
    let clip_key = match &clip_path {
        Some(p) => folder_fingerprint(std::slice::from_ref(p))?[..16].to_string(),
        None => "none".into(),
    };
    let latents = Cache {
        dir: cache_root.join("latents").join(&vae_key),
    };
    let texts = Cache {
        dir: cache_root.join("text").join(&text_key),
    };
    let refs_cache = Cache {
        dir: cache_root.join("references").join(format!(
            "{net_key}-{clip_key}-{}-{}",
            match settings.ref_faces {
                RefFaces::Detect => "detect",
                RefFaces::Crop => "crop",
            },
            match needs.clip {
                None => "id",
                Some(ClipInput::WholeImage) if layout.clip_len() > 0 && id_dim == 0 =>
                    match layout.clip {
                        Some(ClipPart::Embeds(_)) => "embeds",
                        _ => "hidden",
                    },
                Some(ClipInput::FaceCrop(CropChannels::Bgr)) => "facecrop-bgr",
                Some(ClipInput::FaceCrop(CropChannels::Rgb)) => "facecrop-rgb",
                Some(ClipInput::WholeImage) => "whole",
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
            check_spec(&spec, settings.method, &layout, path)?;
            loaded
        }
        None => {
            B::seed(device, mix(&[settings.seed, salt::INIT]));
            let cross = unet
                .attention_layers()
                .iter()
                .find_map(|l| l.cross_attention_dim)
                .ok_or_else(|| TrainError::Setting("the UNet has no cross-attention".into()))?;
            let spec = new_spec(settings.method, &layout, cross)?;
            let a = IpAdapter::new(&Init::Random, spec, &unet, device)?;
            let a = crate::init::ip_layers_from_unet(a, &unet)?;
            if settings.method.needs_arcface() {
                a.with_random_lora(&unet, settings.lora_rank as usize, device)?
            } else {
                a
            }
        }
    };
    let mut adapter = adapter;
    adapter.set_shortcut(settings.plus_v2, 1.0);

    let lr = settings.lr;
    let groups = if adapter.lora.is_some() {
        vec![
            ParamGroup::new("_lora.", settings.lora_lr.unwrap_or(lr)),
            ParamGroup::new("", lr),
        ]
    } else {
        vec![ParamGroup::new("", lr)]
    };
    let config = adam_config(settings);
    let step_config = step_config(settings);
    let mut trainer = IpAdapterTrainer::new(
        unet,
        &adapter,
        schedule.clone(),
        Optimizer::new(config, groups)?,
        step_config,
    )?
    .with_devices(devices.to_vec());
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
    let k = (settings.grad_accum * settings.devices) as usize;
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
                            let v = encoder.embed(&rgb)?;
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
                &layout,
                uncond_hidden.as_deref(),
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
        // The periodic samples (their own noise: the training streams are untouched).
        if settings.sample_every > 0
            && (done.is_multiple_of(settings.sample_every) || done == total)
        {
            let export = |p: &Path| export_ip_adapter(&adapter, trainer.unet(), p);
            crate::validate::render_samples::<B>(settings, out, done, &export, device, watch)?;
        }
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
        skipped: None,
        also: None,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Refuses a model folder of the other family than `method` trains on: SD 1.x for the
/// IP-Adapter kinds, SDXL for PhotoMaker.
fn check_family(method: Method, model: &Path) -> Result<(), TrainError> {
    let index_path = model.join("model_index.json");
    let index = std::fs::read_to_string(&index_path).map_err(|e| {
        TrainError::data(
            model,
            format!(
                "no readable model_index.json ({e}): give a diffusers {} folder (--model)",
                if method.is_sdxl() { "SDXL" } else { "SD 1.x" }
            ),
        )
    })?;
    let sdxl = index.contains("\"StableDiffusionXLPipeline\"");
    let sd = index.contains("\"StableDiffusionPipeline\"");
    match (method.is_sdxl(), sd, sdxl) {
        (false, true, _) | (true, _, true) => Ok(()),
        (false, _, true) => Err(TrainError::data(
            &index_path,
            format!(
                "is an SDXL pipeline: `method = \"{}\"` trains IP-Adapters on SD 1.x only \
                 (IP-Adapter training on SDXL is not implemented); give an SD 1.x folder \
                 (--model), or train `method = \"photomaker\"` on SDXL",
                method.as_str()
            ),
        )),
        (true, true, _) => Err(TrainError::data(
            &index_path,
            format!(
                "is an SD 1.x pipeline: `method = \"{}\"` conditions SDXL (two text encoders, \
                 2048-wide prompts); give a diffusers SDXL folder (--model), or an IP-Adapter \
                 `method` for SD 1.x",
                method.as_str()
            ),
        )),
        _ => Err(TrainError::data(
            &index_path,
            "is neither a StableDiffusionPipeline nor a StableDiffusionXLPipeline: give a \
             diffusers Stable Diffusion folder (--model)",
        )),
    }
}

/// torch's Adam / AdamW with the settings' betas, ε and weight decay (AdamW's default 0.01).
pub(crate) fn adam_config(settings: &TrainSettings) -> AdamConfig {
    AdamConfig {
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
    }
}

/// The loss, clipping and learning-rate schedule of the settings.
pub(crate) fn step_config(settings: &TrainSettings) -> StepConfig {
    StepConfig {
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
    }
}

/// Refuses a starting adapter of another kind than `method`, or with other input widths than
/// the reference networks give.
fn check_spec(
    spec: &ProjectionSpec,
    method: Method,
    layout: &RefLayout,
    path: &Path,
) -> Result<(), TrainError> {
    if spec.kind() != method.as_str() {
        return Err(TrainError::data(
            path,
            format!(
                "is an {} adapter; `{}` fine-tunes {} files (set `method` to the file's kind)",
                spec.kind(),
                method.as_str(),
                method.as_str()
            ),
        ));
    }
    if let Some(want) = ip_adapter_id_width(spec)
        && want != layout.id_dim
    {
        return Err(TrainError::data(
            path,
            format!(
                "takes {want}-d ID embeddings, the ArcFace model gives {}: give the ArcFace \
                 model the adapter was trained with",
                layout.id_dim
            ),
        ));
    }
    if let Some((what, want)) = ip_adapter_clip_width(spec) {
        let have = match layout.clip {
            Some(ClipPart::Embeds(d)) => d,
            Some(ClipPart::Hidden { width, .. }) => width,
            None => 0,
        };
        if have != want {
            return Err(TrainError::data(
                path,
                format!(
                    "takes {want}-wide CLIP {what}, the image encoder gives {have}: give the \
                     image encoder the adapter was trained with"
                ),
            ));
        }
    }
    Ok(())
}

/// A new adapter's projection for `method`, shaped as the reference training scripts build it
/// (`tutorial_train.py`: 4 tokens; `tutorial_train_plus.py`: a depth-4 resampler, 16 queries,
/// 64-wide heads, width = the UNet's cross width; FaceID(-Plus): 4 tokens, MLP twice the ID
/// width, FaceID-Plus's resampler with cross / 64 heads).
fn new_spec(
    method: Method,
    layout: &RefLayout,
    cross: usize,
) -> Result<ProjectionSpec, TrainError> {
    let (embeds, hidden) = match layout.clip {
        Some(ClipPart::Embeds(d)) => (d, 0),
        Some(ClipPart::Hidden { width, .. }) => (0, width),
        None => (0, 0),
    };
    let resampler = |heads: usize| ResamplerShape {
        embedding_dim: hidden,
        dim: cross,
        output_dim: cross,
        heads,
        head_dim: 64,
        depth: 4,
    };
    Ok(match method {
        Method::IpAdapter => ProjectionSpec::Plain {
            embed_dim: embeds,
            tokens: 4,
            cross,
        },
        Method::IpAdapterPlus => ProjectionSpec::Plus {
            queries: 16,
            resampler: resampler(12),
        },
        Method::IpAdapterFullFace => ProjectionSpec::FullFace { hidden, cross },
        Method::IpAdapterFaceid => ProjectionSpec::FaceId {
            id_dim: layout.id_dim,
            mlp: layout.id_dim * 2,
            tokens: 4,
            cross,
        },
        Method::IpAdapterFaceidPlus => ProjectionSpec::FaceIdPlus {
            id_dim: layout.id_dim,
            mlp: layout.id_dim * 2,
            tokens: 4,
            resampler: resampler((cross / 64).max(1)),
        },
        Method::Photomaker | Method::SplitPrompt => {
            return Err(TrainError::Setting(format!(
                "method `{}` is not an IP-Adapter kind",
                method.as_str()
            )));
        }
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

/// A micro-batch's random draws and its sampled latents, shared by every method's batch: the
/// stream of `(seed, step, m)` in a fixed order — one uniform per sample (the drop), the mask
/// decision, the timesteps, the VAE-sample noise, the noise, the offset noise — so the stream
/// is the same whatever the settings.
pub(crate) struct BatchDraws {
    /// One uniform per sample, for the condition drop.
    pub drops: Vec<f64>,
    /// The uniform that decides the masked loss.
    pub mask_draw: f64,
    /// `latents`' shape `[batch, channels, h, w]`.
    pub dims: [usize; 4],
    /// The posteriors sampled (`mean + exp(logvar / 2)·ε`) and scaled.
    pub latents: Vec<f32>,
    /// ε and the noise offset's draw.
    pub noise: Vec<f32>,
    pub offset: Vec<f32>,
    pub timesteps: Vec<usize>,
}

impl BatchDraws {
    /// The draws of micro-batch `m` of `step` for `posteriors` (each cached as `[2·c, h, w]`:
    /// mean then log-variance).
    pub(crate) fn new(
        settings: &TrainSettings,
        step: u64,
        m: usize,
        schedule: &DdpmSchedule,
        posteriors: &[&(Vec<usize>, Vec<f32>)],
        scaling: f32,
        latent_channels: usize,
    ) -> Result<Self, TrainError> {
        let b = posteriors.len();
        let mut rng = StdRng::seed_from_u64(mix(&[settings.seed, salt::STEP, step, m as u64]));
        let drops: Vec<f64> = (0..b).map(|_| rng.random::<f64>()).collect();
        let mask_draw: f64 = rng.random();
        let timesteps: Vec<usize> = (0..b)
            .map(|_| rng.random_range(0..schedule.len()))
            .collect();
        let first = posteriors
            .first()
            .ok_or_else(|| TrainError::Setting("an empty micro-batch".into()))?;
        let [c2, h, w]: [usize; 3] = first
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
        let plane = c * h * w;
        let mut latents = Vec::with_capacity(n);
        for (i, (shape, v)) in posteriors.iter().map(|p| (&p.0, &p.1)).enumerate() {
            if shape != &first.0 {
                return Err(TrainError::Setting(
                    "cached latents of different sizes in one batch".into(),
                ));
            }
            for j in 0..plane {
                let eps = sample_noise[i * plane + j];
                latents.push((v[j] + (0.5 * v[plane + j]).exp() * eps) * scaling);
            }
        }
        Ok(Self {
            drops,
            mask_draw,
            dims: [b, c, h, w],
            latents,
            noise,
            offset,
            timesteps,
        })
    }

    /// Whether this micro-batch uses the masked loss: the draw says so and every face box
    /// covers at least one latent pixel.
    pub(crate) fn masked(&self, p: f64, boxes: &[Option<[f32; 4]>]) -> bool {
        self.mask_draw < p
            && boxes.iter().all(|fb| {
                fb.is_some_and(|[x0, y0, x1, y1]| {
                    let s = 8.0;
                    (x1 / s).ceil() - (x0 / s).floor() >= 1.0
                        && (y1 / s).ceil() - (y0 / s).floor() >= 1.0
                })
            })
    }

    /// The sampled latents and the noise as tensors on `device`.
    pub(crate) fn tensors<A: Backend>(self, device: &A::Device) -> (Tensor<A, 4>, NoiseDraw<A>) {
        let [b, c, h, w] = self.dims;
        (
            Tensor::from_data(TensorData::new(self.latents, [b, c, h, w]), device),
            NoiseDraw {
                noise: Tensor::from_data(TensorData::new(self.noise, [b, c, h, w]), device),
                offset_noise: Some(Tensor::from_data(
                    TensorData::new(self.offset, [b, c]),
                    device,
                )),
                timesteps: self.timesteps,
            },
        )
    }
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
    layout: &RefLayout,
    uncond_hidden: Option<&[f32]>,
    boxes: Vec<Option<[f32; 4]>>,
    scaling: f32,
    latent_channels: usize,
    device: &A::Device,
) -> Result<IpBatch<A>, TrainError> {
    let b = posteriors.len();
    let batch_draws = BatchDraws::new(
        settings,
        step,
        m,
        schedule,
        &posteriors.iter().collect::<Vec<_>>(),
        scaling,
        latent_channels,
    )?;
    let draws = &batch_draws.drops;
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
    let context = Tensor::<A, 3>::from_data(context.into_data(), device);
    // Each reference's features split into the adapter's inputs; a dropped image's are zeros
    // (ArcFace, image_embeds) or CLIP's features of zero pixels (hidden states).
    let id_dim = layout.id_dim;
    let clip_len = layout.clip_len();
    let mut id_values = Vec::with_capacity(b * refs_per * id_dim);
    let mut clip_values = Vec::with_capacity(b * refs_per * clip_len);
    for (these, &dropped) in ids.iter().zip(&drop_image) {
        if these.len() != refs_per {
            return Err(TrainError::Setting(
                "samples of one batch with different reference counts".into(),
            ));
        }
        for v in these {
            if v.len() != layout.len() {
                return Err(TrainError::Setting(format!(
                    "a cached reference has {} values, the reference networks give {}",
                    v.len(),
                    layout.len()
                )));
            }
            let (id, clip) = v.split_at(id_dim);
            if dropped {
                id_values.extend(std::iter::repeat_n(0f32, id_dim));
                match (layout.clip, uncond_hidden) {
                    (Some(ClipPart::Hidden { .. }), Some(u)) => clip_values.extend_from_slice(u),
                    _ => clip_values.extend(std::iter::repeat_n(0f32, clip_len)),
                }
            } else {
                id_values.extend_from_slice(id);
                clip_values.extend_from_slice(clip);
            }
        }
    }
    let n_refs = b * refs_per;
    let references = ProjectionInput {
        image_embeds: match layout.clip {
            Some(ClipPart::Embeds(d)) => Some(Tensor::from_data(
                TensorData::new(clip_values.clone(), [n_refs, d]),
                device,
            )),
            _ => None,
        },
        hidden_states: match layout.clip {
            Some(ClipPart::Hidden { tokens, width }) => Some(Tensor::from_data(
                TensorData::new(clip_values, [n_refs, tokens, width]),
                device,
            )),
            _ => None,
        },
        id_embeds: (id_dim > 0)
            .then(|| Tensor::from_data(TensorData::new(id_values, [n_refs, id_dim]), device)),
    };
    let masked = batch_draws.masked(settings.masked_loss_p, &boxes);
    let (latents, draw) = batch_draws.tensors::<A>(device);
    Ok(IpBatch {
        latents,
        draw,
        context,
        references,
        face_boxes: masked.then(|| boxes.into_iter().map(|fb| fb.unwrap_or_default()).collect()),
    })
}

/// Opens `metrics.jsonl` for appending, keeping only the lines of steps ≤ `first_step` (a
/// killed run may have logged steps after its last checkpoint).
pub(crate) fn open_metrics(path: &Path, first_step: u64) -> Result<std::fs::File, TrainError> {
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
         {samples}<h2>Settings</h2><pre>{settings}</pre></body></html>\n",
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
        samples = serde_json::from_str(&settings)
            .map_or(String::new(), |s| crate::validate::report_section(out, &s)),
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
