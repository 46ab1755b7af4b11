//! `idforge train`: the `[train]` table of a recipe (every key also a flag, flags on top) into
//! [`TrainSettings`], then a run in `runs/<name>/train/` on the build's backend.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use idforge_core::Name;
use idforge_core::progress::Progress;
use idforge_core::recipe::Recipe;
use idforge_train::run::{RunSummary, Watch};
use idforge_train::settings::{
    CropOrder, Drop, LrDecay, Method, OptimizerKind, RefFaces, TrainSettings,
};
use idforge_train::step::StepReport;

use super::device::Backend;

#[derive(Debug, Args)]
#[command(after_long_help = "\
Examples:
  idforge train --recipe train.toml
  idforge train --recipe train.toml --resume           # continue from the last checkpoint
  idforge train --name faceid --model sd15/ --dataset runs/demo/dataset \\
      --arcface w600k_r50.onnx --steps 2000 --lr 1e-4 --lora-lr 1e-4
  idforge train --name pm --method photomaker --model sdxl/ --dataset runs/demo/dataset \\
      --adapter photomaker-v1.bin --drop persongen --optimizer adam --lr 1e-5 --lora-lr 1e-4

Writes runs/<name>/train/: metrics.jsonl (one line per step), checkpoints/step-N/ (weights,
optimizer state, counters; the last --keep-checkpoints are kept), adapter.safetensors (the
final adapter in the layout diffusers' load_ip_adapter, PhotoMaker's loader and `idforge
generate --adapter` read) and report.html (loss and learning-rate curves).")]
pub struct TrainArgs {
    /// Recipe file (TOML) naming the run and its [train] settings.
    #[arg(long, short)]
    recipe: Option<PathBuf>,
    /// Run name (folder under --runs-dir); required without a recipe.
    #[arg(long)]
    name: Option<Name>,
    /// Folder holding runs.
    #[arg(long, env = "IDFORGE_RUNS")]
    runs_dir: Option<PathBuf>,
    /// Continue from the run's last checkpoint (same settings; --steps may grow).
    #[arg(long)]
    resume: bool,
    /// What is trained: the IP-Adapter family (plain, plus, full-face, faceid, faceid-plus) on
    /// SD 1.x, or photomaker (v1) and split-prompt (PhotoMaker v1 + background / body
    /// attention, persongen's ipmakerbgbody) on SDXL.
    #[arg(long, value_enum)]
    method: Option<MethodArg>,
    /// The diffusers Stable Diffusion folder: SD 1.x for the IP-Adapter kinds, SDXL for
    /// photomaker.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The dataset export folder (`idforge dataset export`).
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// Start from this adapter file (fine-tuning) instead of from scratch; photomaker needs a
    /// PhotoMaker v1 file (photomaker-v1.bin).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// PhotoMaker's trigger word (default img); the export's trigger is replaced by it.
    #[arg(long)]
    trigger: Option<String>,
    /// The PhotoMaker ID encoder's head widths VISION,PERCEIVER (default 64,128, the
    /// published; as `generate --id-encoder-heads`).
    #[arg(long, value_delimiter = ',', num_args = 2)]
    id_encoder_heads: Option<Vec<usize>>,
    /// insightface ArcFace ONNX for the FaceID inputs (w600k_r50.onnx).
    #[arg(long)]
    arcface: Option<PathBuf>,
    /// diffusers' image_encoder/ folder (CLIP vision + projection) for ip-adapter, -plus,
    /// -full-face and -faceid-plus (OpenCLIP ViT-H/14 for the SD 1.5 adapters).
    #[arg(long)]
    image_encoder: Option<PathBuf>,
    /// Channel order of FaceID-Plus's 224 px face crop given to CLIP: bgr as the published
    /// demo (and `generate`'s default), or rgb.
    #[arg(long, value_enum)]
    face_crop_channels: Option<CropArg>,
    /// FaceID-Plus V2's shortcut on (true, the default) or v1 (false).
    #[arg(long)]
    plus_v2: Option<bool>,
    /// face-api's model folder (default: the asset cache).
    #[arg(long)]
    face_api_weights: Option<PathBuf>,
    /// How reference photos become ArcFace inputs.
    #[arg(long, value_enum)]
    ref_faces: Option<RefFacesArg>,
    /// Training image side in pixels (512 for SD 1.5).
    #[arg(long)]
    resolution: Option<u32>,
    /// Samples per micro-batch.
    #[arg(long)]
    batch_size: Option<u32>,
    /// Micro-batches per optimizer step and device.
    #[arg(long)]
    grad_accum: Option<u32>,
    /// Data-parallel devices: GPUs 0..N on CUDA, threads on the CPU (each step takes
    /// batch_size × grad_accum × devices samples; the result equals one device with
    /// grad_accum × devices).
    #[arg(long)]
    devices: Option<u32>,
    /// Optimizer steps.
    #[arg(long)]
    steps: Option<u64>,
    /// Base learning rate (everything but the LoRA).
    #[arg(long)]
    lr: Option<f64>,
    /// The LoRA's base learning rate (default: --lr).
    #[arg(long)]
    lora_lr: Option<f64>,
    /// Adam or AdamW.
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerArg>,
    /// β₁ and β₂, e.g. 0.9,0.999.
    #[arg(long, value_delimiter = ',', num_args = 2)]
    betas: Option<Vec<f64>>,
    /// Adam's ε.
    #[arg(long)]
    eps: Option<f64>,
    /// Weight decay (default 0.01 for AdamW, 0 for Adam).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Linear warm-up steps.
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// After the warm-up: constant or cosine.
    #[arg(long, value_enum)]
    lr_decay: Option<LrDecayArg>,
    /// Global gradient-norm clipping (0: none).
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// Noise offset (0: none).
    #[arg(long)]
    noise_offset: Option<f32>,
    /// Min-SNR-γ weighting (0: none).
    #[arg(long)]
    snr_gamma: Option<f32>,
    /// Probability of the face-masked loss per micro-batch.
    #[arg(long)]
    masked_loss_p: Option<f64>,
    /// Condition dropout: ip-adapter (5 % image / 5 % text / 5 % both), persongen (10 % all),
    /// none.
    #[arg(long, value_enum)]
    drop: Option<DropArg>,
    /// The most references per sample (1 to 4).
    #[arg(long)]
    max_references: Option<u32>,
    /// FaceID LoRA rank when training from scratch.
    #[arg(long)]
    lora_rank: Option<u32>,
    /// Seed of every random stream.
    #[arg(long)]
    seed: Option<u64>,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Checkpoints kept (0: all).
    #[arg(long)]
    keep_checkpoints: Option<u32>,
    /// Sample images every N steps into <run>/samples/step-NNNNNN/ (0: never).
    #[arg(long)]
    sample_every: Option<u64>,
    /// A sample prompt (repeat; replaces the recipe's `sample_prompts`).
    #[arg(long = "sample-prompt", value_name = "PROMPT")]
    sample_prompts: Vec<String>,
    /// Identities the samples show (the validation split's first, else the train split's).
    #[arg(long)]
    sample_identities: Option<u32>,
    /// The samples' denoising steps.
    #[arg(long)]
    sample_steps: Option<u32>,
    /// The samples' guidance scale.
    #[arg(long)]
    sample_cfg: Option<f64>,
    /// The samples' noise seed.
    #[arg(long)]
    sample_seed: Option<u64>,
    /// Data decoding threads.
    #[arg(long)]
    workers: Option<u32>,
    /// Cache of VAE latents and embeddings (default: the asset cache's train/).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum MethodArg {
    IpAdapter,
    IpAdapterPlus,
    IpAdapterFullFace,
    IpAdapterFaceid,
    IpAdapterFaceidPlus,
    Photomaker,
    SplitPrompt,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RefFacesArg {
    /// face-api finds the face, ArcFace embeds its aligned crop (as generate --ref).
    Detect,
    /// The export's reference crop resized to ArcFace's input (no detector).
    Crop,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OptimizerArg {
    Adamw,
    Adam,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LrDecayArg {
    Constant,
    Cosine,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CropArg {
    Bgr,
    Rgb,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DropArg {
    IpAdapter,
    Persongen,
    None,
}

/// The settings of the recipe's [train] table with the flags on top, paths resolved.
fn resolve(a: &TrainArgs) -> anyhow::Result<(String, PathBuf, TrainSettings)> {
    let recipe = a.recipe.as_deref().map(Recipe::load).transpose()?;
    let mut s: TrainSettings = match &recipe {
        Some(r) => r.stage("train")?,
        None => TrainSettings::default(),
    };
    if let Some(r) = &recipe {
        for p in [
            &mut s.model,
            &mut s.dataset,
            &mut s.adapter,
            &mut s.arcface,
            &mut s.image_encoder,
            &mut s.face_api_weights,
            &mut s.cache_dir,
        ] {
            *p = p.as_deref().map(|p| r.resolve(p));
        }
    }
    let name = match (&a.name, &recipe) {
        (Some(n), _) => n.to_string(),
        (None, Some(r)) => r.name.clone(),
        (None, None) => bail!("give --recipe, or --name of the run to train into"),
    };
    let runs_dir = a
        .runs_dir
        .clone()
        .or_else(|| recipe.as_ref().map(|r| r.runs_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("runs"));
    macro_rules! set {
        ($field:ident) => {
            if let Some(v) = a.$field.clone() {
                s.$field = v;
            }
        };
        (opt $field:ident) => {
            if a.$field.is_some() {
                s.$field = a.$field.clone();
            }
        };
    }
    set!(opt model);
    set!(opt dataset);
    set!(opt adapter);
    set!(opt trigger);
    if let Some(h) = &a.id_encoder_heads {
        s.id_encoder_heads = Some([h[0], h[1]]);
    }
    set!(opt arcface);
    set!(opt image_encoder);
    set!(plus_v2);
    set!(opt face_api_weights);
    set!(resolution);
    set!(batch_size);
    set!(grad_accum);
    set!(devices);
    set!(steps);
    set!(lr);
    set!(opt lora_lr);
    set!(eps);
    set!(opt weight_decay);
    set!(warmup_steps);
    set!(max_grad_norm);
    set!(noise_offset);
    set!(snr_gamma);
    set!(masked_loss_p);
    set!(max_references);
    set!(lora_rank);
    set!(seed);
    set!(checkpoint_every);
    set!(keep_checkpoints);
    set!(sample_every);
    if !a.sample_prompts.is_empty() {
        s.sample_prompts = a.sample_prompts.clone();
    }
    set!(sample_identities);
    set!(sample_steps);
    set!(sample_cfg);
    set!(sample_seed);
    set!(workers);
    set!(opt cache_dir);
    if let Some(b) = &a.betas {
        s.betas = [b[0], b[1]];
    }
    if let Some(m) = a.method {
        s.method = match m {
            MethodArg::IpAdapter => Method::IpAdapter,
            MethodArg::IpAdapterPlus => Method::IpAdapterPlus,
            MethodArg::IpAdapterFullFace => Method::IpAdapterFullFace,
            MethodArg::IpAdapterFaceid => Method::IpAdapterFaceid,
            MethodArg::IpAdapterFaceidPlus => Method::IpAdapterFaceidPlus,
            MethodArg::Photomaker => Method::Photomaker,
            MethodArg::SplitPrompt => Method::SplitPrompt,
        };
    }
    if let Some(c) = a.face_crop_channels {
        s.face_crop_channels = match c {
            CropArg::Bgr => CropOrder::Bgr,
            CropArg::Rgb => CropOrder::Rgb,
        };
    }
    if let Some(r) = a.ref_faces {
        s.ref_faces = match r {
            RefFacesArg::Detect => RefFaces::Detect,
            RefFacesArg::Crop => RefFaces::Crop,
        };
    }
    if let Some(o) = a.optimizer {
        s.optimizer = match o {
            OptimizerArg::Adamw => OptimizerKind::Adamw,
            OptimizerArg::Adam => OptimizerKind::Adam,
        };
    }
    if let Some(d) = a.lr_decay {
        s.lr_decay = match d {
            LrDecayArg::Constant => LrDecay::Constant,
            LrDecayArg::Cosine => LrDecay::Cosine,
        };
    }
    if let Some(d) = a.drop {
        s.drop = match d {
            DropArg::IpAdapter => Drop::IpAdapter,
            DropArg::Persongen => Drop::Persongen,
            DropArg::None => Drop::None,
        };
    }
    s.validate().map_err(anyhow::Error::msg)?;
    if s.method.needs_arcface() && s.ref_faces == RefFaces::Detect && s.face_api_weights.is_none() {
        s.face_api_weights = Some(super::face_api_models(None)?);
    }
    Ok((name, runs_dir, s))
}

/// The progress bar: loss and learning rate beside it; it/s and ETA from the bar.
struct Bar {
    progress: Option<Progress>,
}

impl Watch for Bar {
    fn start(&mut self, first: u64, total: u64) {
        let p = Progress::new("training", total);
        p.inc(first);
        self.progress = Some(p);
    }

    fn step(&mut self, r: &StepReport) {
        if let Some(p) = &self.progress {
            let lr = r.lrs.last().copied().unwrap_or(0.0);
            p.set_message(format!("loss {:.4} lr {lr:.2e}", r.loss));
            p.inc(1);
        }
    }

    fn note(&mut self, line: &str) {
        eprintln!("{line}");
    }
}

pub fn run(a: TrainArgs) -> anyhow::Result<ExitCode> {
    let (name, runs_dir, settings) = resolve(&a)?;
    let out = runs_dir.join(&name).join("train");
    let devices = super::device::devices(settings.devices as usize);
    let mut bar = Bar { progress: None };
    let summary: RunSummary =
        idforge_train::run::train::<Backend>(&settings, &out, a.resume, &devices, &mut bar)
            .with_context(|| format!("training into {}", out.display()))?;
    if let Some(p) = &bar.progress {
        p.finish();
    }
    idforge_train::costs::record(
        &out,
        &idforge_train::costs::ProcessCost {
            first_step: summary.first_step,
            last_step: summary.steps,
            seconds: summary.seconds,
            peak_memory_gib: idforge_core::bench::peak_rss_gib().unwrap_or(0.0),
            hardware: super::device::machine(),
        },
    )
    .with_context(|| format!("recording the run's costs in {}", out.display()))?;
    println!(
        "trained {} steps ({}–{}) on {} samples of {} identities in {:.1} s; last loss {}",
        summary.steps - summary.first_step,
        summary.first_step,
        summary.steps,
        summary.samples,
        summary.identities,
        summary.seconds,
        summary
            .last_loss
            .map_or("—".to_string(), |l| format!("{l:.5}"))
    );
    if let Some((n, why)) = summary.skipped {
        println!("skipped {n} rows as targets: {why}");
    }
    println!("adapter\t{}", summary.adapter.display());
    if let Some(also) = &summary.also {
        println!("adapter\t{}", also.display());
    }
    println!(
        "report\t{}",
        out.join(idforge_train::run::REPORT_FILE).display()
    );
    Ok(ExitCode::SUCCESS)
}
