//! The `[train]` table of a recipe: every setting of a run, with the defaults of IP-Adapter's
//! `tutorial_train_faceid.py` where it has one. Unknown keys are errors (`deny_unknown_fields`),
//! as in every stage's table; `idforge train` mirrors each key as a flag.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::MAX_REFERENCES;

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// IP-Adapter (CLIP image embedding → 4 tokens).
    IpAdapter,
    /// IP-Adapter Plus (CLIP hidden states → resampler).
    IpAdapterPlus,
    /// IP-Adapter full-face (CLIP hidden states → MLP, one token per hidden state).
    IpAdapterFullFace,
    /// IP-Adapter-FaceID (ArcFace embedding → MLP tokens) with its LoRA.
    #[default]
    IpAdapterFaceid,
    /// IP-Adapter-FaceID-Plus (ArcFace + CLIP face features).
    IpAdapterFaceidPlus,
    /// PhotoMaker's ID encoder and LoRA.
    Photomaker,
    /// The split-prompt adapter (PhotoMaker's ID path + background / body attention).
    SplitPrompt,
}

impl Method {
    /// The recipe's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::IpAdapter => "ip-adapter",
            Method::IpAdapterPlus => "ip-adapter-plus",
            Method::IpAdapterFullFace => "ip-adapter-full-face",
            Method::IpAdapterFaceid => "ip-adapter-faceid",
            Method::IpAdapterFaceidPlus => "ip-adapter-faceid-plus",
            Method::Photomaker => "photomaker",
            Method::SplitPrompt => "split-prompt",
        }
    }

    /// `Err` with what to do for a method this build cannot train yet (every method trains
    /// now; kept as the one place a new method is gated).
    pub fn check_implemented(self) -> Result<(), String> {
        Ok(())
    }

    /// Whether the method conditions SDXL (PhotoMaker's family) rather than SD 1.x.
    pub fn is_sdxl(self) -> bool {
        matches!(self, Method::Photomaker | Method::SplitPrompt)
    }

    /// Whether the method's references go through ArcFace.
    pub fn needs_arcface(self) -> bool {
        matches!(self, Method::IpAdapterFaceid | Method::IpAdapterFaceidPlus)
    }

    /// Whether the method's references go through a CLIP image encoder.
    pub fn needs_image_encoder(self) -> bool {
        matches!(
            self,
            Method::IpAdapter
                | Method::IpAdapterPlus
                | Method::IpAdapterFullFace
                | Method::IpAdapterFaceidPlus
        )
    }
}

/// The channel order of FaceID-Plus's 224 px face crop given to CLIP (as `generate
/// --face-crop-channels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CropOrder {
    /// Red and blue swapped, as IP-Adapter-FaceID-Plus's published demo feeds CLIP.
    #[default]
    Bgr,
    /// True colours.
    Rgb,
}

/// Adam or AdamW (torch's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// `torch.optim.AdamW` (IP-Adapter's scripts).
    #[default]
    Adamw,
    /// `torch.optim.Adam` (persongen).
    Adam,
}

/// After the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LrDecay {
    /// The base rate to the end.
    #[default]
    Constant,
    /// Half a cosine down to 0 at the last step.
    Cosine,
}

/// Condition dropout (classifier-free guidance training).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Drop {
    /// IP-Adapter's: 5 % image only, 5 % text only, 5 % both.
    #[default]
    IpAdapter,
    /// persongen's: 10 % of the samples lose every condition.
    Persongen,
    /// No drop.
    None,
}

/// How a reference photo becomes the ArcFace input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RefFaces {
    /// As `generate --ref`: face-api finds the largest face of the photo, its landmarks give
    /// insightface's 112-px `norm_crop`; a photo without a face is not used as a reference.
    #[default]
    Detect,
    /// The export's tight reference crop (`ref_image`, else the photo) resized to 112 px: no
    /// detector, fast, not aligned (for tests and tiny runs).
    Crop,
}

/// The `[train]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSettings {
    /// What is trained.
    pub method: Method,
    /// The diffusers Stable Diffusion folder: SD 1.x for the IP-Adapter kinds, SDXL for
    /// `photomaker`.
    pub model: Option<PathBuf>,
    /// The dataset export folder (`idforge dataset export`).
    pub dataset: Option<PathBuf>,
    /// Start from this adapter file (fine-tuning) instead of from scratch; `photomaker` needs
    /// one (a PhotoMaker v1 file: its CLIP tower is the frozen backbone).
    pub adapter: Option<PathBuf>,
    /// PhotoMaker's trigger word (default `img`, the reference's): the export's trigger in
    /// each caption is replaced by it.
    pub trigger: Option<String>,
    /// The PhotoMaker ID encoder's head widths `[vision, perceiver]`, not stored in its file
    /// (default: the published 64, 128; `generate --id-encoder-heads`).
    pub id_encoder_heads: Option<[usize; 2]>,
    /// The insightface ArcFace ONNX for FaceID inputs.
    pub arcface: Option<PathBuf>,
    /// diffusers' `image_encoder/` folder (CLIP vision + projection) for the CLIP-based kinds.
    pub image_encoder: Option<PathBuf>,
    /// FaceID-Plus's face crop channel order for CLIP.
    pub face_crop_channels: CropOrder,
    /// FaceID-Plus V2 (the shortcut `tokens + resampled`; false: FaceID-Plus v1).
    pub plus_v2: bool,
    /// face-api's model folder (default: the asset cache).
    pub face_api_weights: Option<PathBuf>,
    /// How reference photos become ArcFace inputs.
    pub ref_faces: RefFaces,
    /// Training image side in pixels (a multiple of the model's downsampling).
    pub resolution: u32,
    /// Samples per micro-batch.
    pub batch_size: u32,
    /// Micro-batches per optimizer step and device.
    pub grad_accum: u32,
    /// Data-parallel devices (GPUs on CUDA, threads on the CPU backend, which is single-threaded
    /// by itself): each step takes `batch_size × grad_accum × devices` samples, as accelerate's
    /// processes do, and equals the one-device step with `grad_accum × devices` micro-batches.
    pub devices: u32,
    /// Optimizer steps of the run.
    pub steps: u64,
    /// The base learning rate of everything but the LoRA.
    pub lr: f64,
    /// The LoRA's base learning rate (default: `lr`).
    pub lora_lr: Option<f64>,
    /// Adam or AdamW.
    pub optimizer: OptimizerKind,
    /// β₁, β₂.
    pub betas: [f64; 2],
    /// ε.
    pub eps: f64,
    /// Weight decay (default 0.01 for AdamW, 0 for Adam).
    pub weight_decay: Option<f64>,
    /// Linear warm-up steps (persongen's `(s + 1) / warmup`).
    pub warmup_steps: u64,
    /// After the warm-up.
    pub lr_decay: LrDecay,
    /// Global gradient-norm clipping (0: none).
    pub max_grad_norm: f64,
    /// Noise offset (0: none).
    pub noise_offset: f32,
    /// Min-SNR-γ (0: unweighted).
    pub snr_gamma: f32,
    /// Probability that a micro-batch uses the face-masked loss.
    pub masked_loss_p: f64,
    /// Condition dropout.
    pub drop: Drop,
    /// The most references one sample gets (1 to 4).
    pub max_references: u32,
    /// FaceID LoRA rank when training from scratch.
    pub lora_rank: u32,
    /// The seed of every random stream.
    pub seed: u64,
    /// Checkpoint every N steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept (0: all).
    pub keep_checkpoints: u32,
    /// Sample images every N steps (0: never), into `<run>/samples/step-NNNNNN/` (see
    /// [`crate::validate`]).
    pub sample_every: u64,
    /// The samples' prompts (each rendered for every sample identity).
    pub sample_prompts: Vec<String>,
    /// How many identities the samples show (the validation split's first, else the train
    /// split's).
    pub sample_identities: u32,
    /// The samples' denoising steps (Euler).
    pub sample_steps: u32,
    /// The samples' guidance scale.
    pub sample_cfg: f64,
    /// The samples' noise seed (the same noise at every checkpoint).
    pub sample_seed: u64,
    /// Data decoding threads.
    pub workers: u32,
    /// Where VAE latents, text embeddings and reference embeddings are cached (default: the
    /// asset cache's `train/`).
    pub cache_dir: Option<PathBuf>,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            method: Method::default(),
            model: None,
            dataset: None,
            adapter: None,
            trigger: None,
            id_encoder_heads: None,
            arcface: None,
            image_encoder: None,
            face_crop_channels: CropOrder::default(),
            plus_v2: true,
            face_api_weights: None,
            ref_faces: RefFaces::default(),
            resolution: 512,
            batch_size: 1,
            grad_accum: 1,
            devices: 1,
            steps: 1000,
            lr: 1e-4,
            lora_lr: None,
            optimizer: OptimizerKind::default(),
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: None,
            warmup_steps: 0,
            lr_decay: LrDecay::default(),
            max_grad_norm: 1.0,
            noise_offset: 0.0,
            snr_gamma: 0.0,
            masked_loss_p: 0.0,
            drop: Drop::default(),
            max_references: 1,
            lora_rank: 128,
            seed: 42,
            checkpoint_every: 500,
            keep_checkpoints: 3,
            sample_every: 0,
            sample_prompts: vec![
                "a photo of a person".into(),
                "a portrait of a person in a garden, oil painting".into(),
            ],
            sample_identities: 2,
            sample_steps: 30,
            sample_cfg: 5.0,
            sample_seed: 0,
            workers: 2,
            cache_dir: None,
        }
    }
}

impl TrainSettings {
    /// Refuses settings that cannot work, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        self.method.check_implemented()?;
        let pos = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("`{name}` = {v}: give a number above 0"))
            }
        };
        let unit = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("`{name}` = {v}: give a probability from 0 to 1"))
            }
        };
        if self.model.is_none() {
            return Err(format!(
                "`model` is missing: give the diffusers {} folder (--model)",
                if self.method.is_sdxl() {
                    "SDXL"
                } else {
                    "SD 1.x"
                }
            ));
        }
        if self.method.is_sdxl() {
            if self.adapter.is_none() {
                return Err(format!(
                    "`{}` fine-tunes a PhotoMaker v1 file (its CLIP tower is the frozen \
                     backbone): give --adapter (recipe key `adapter`), e.g. photomaker-v1.bin; \
                     training the ID encoder from scratch is not implemented",
                    self.method.as_str()
                ));
            }
            if self.drop == Drop::IpAdapter {
                return Err(
                    "`drop` = \"ip-adapter\" splits image and text drops, which \
                            PhotoMaker's fused prompt does not have: set `drop = \"persongen\"` \
                            (10 % of the micro-batches on the empty prompt without identity, \
                            persongen's do_cfg_p) or \"none\""
                        .into(),
                );
            }
            if let Some(t) = &self.trigger
                && (t.is_empty() || t.chars().any(char::is_whitespace))
            {
                return Err(format!(
                    "`trigger` = {t:?}: give one word without spaces (PhotoMaker's is `img`)"
                ));
            }
        }
        if let Some([v, p]) = self.id_encoder_heads
            && (v == 0 || p == 0)
        {
            return Err(format!(
                "`id_encoder_heads` = [{v}, {p}]: give two head widths above 0 (published \
                 PhotoMaker: [64, 128])"
            ));
        }
        if self.dataset.is_none() {
            return Err(
                "`dataset` is missing: give the folder `idforge dataset export` wrote (--dataset)"
                    .into(),
            );
        }
        if !(8..=4096).contains(&self.resolution) || !self.resolution.is_multiple_of(8) {
            return Err(format!(
                "`resolution` = {}: give a multiple of 8 from 8 to 4096 (512 for SD 1.5)",
                self.resolution
            ));
        }
        for (name, v, max) in [
            ("batch_size", self.batch_size as u64, 4096),
            ("grad_accum", self.grad_accum as u64, 4096),
            ("devices", self.devices as u64, 64),
            ("steps", self.steps, 100_000_000),
            ("workers", self.workers as u64, 256),
        ] {
            if v == 0 || v > max {
                return Err(format!("`{name}` = {v}: give 1 to {max}"));
            }
        }
        if self.max_references == 0 || self.max_references as usize > MAX_REFERENCES {
            return Err(format!(
                "`max_references` = {}: give 1 to {MAX_REFERENCES}",
                self.max_references
            ));
        }
        if self.lora_rank == 0 || self.lora_rank > 4096 {
            return Err(format!("`lora_rank` = {}: give 1 to 4096", self.lora_rank));
        }
        pos("lr", self.lr)?;
        if let Some(l) = self.lora_lr {
            pos("lora_lr", l)?;
        }
        pos("eps", self.eps)?;
        for (i, b) in self.betas.iter().enumerate() {
            if !(0.0..1.0).contains(b) {
                return Err(format!("`betas[{i}]` = {b}: give 0 ≤ β < 1"));
            }
        }
        if let Some(w) = self.weight_decay
            && !(w.is_finite() && w >= 0.0)
        {
            return Err(format!("`weight_decay` = {w}: give a number ≥ 0"));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return Err(format!(
                "`max_grad_norm` = {}: give a number ≥ 0 (0: no clipping)",
                self.max_grad_norm
            ));
        }
        if !(self.noise_offset.is_finite() && self.noise_offset >= 0.0) {
            return Err(format!(
                "`noise_offset` = {}: give a number ≥ 0",
                self.noise_offset
            ));
        }
        if !(self.snr_gamma.is_finite() && self.snr_gamma >= 0.0) {
            return Err(format!(
                "`snr_gamma` = {}: give a number ≥ 0 (0: unweighted)",
                self.snr_gamma
            ));
        }
        unit("masked_loss_p", self.masked_loss_p)?;
        if self.warmup_steps > self.steps {
            return Err(format!(
                "`warmup_steps` = {} is more than `steps` = {}",
                self.warmup_steps, self.steps
            ));
        }
        if self.sample_every > 0 && matches!(self.method, Method::Photomaker | Method::SplitPrompt)
        {
            return Err(format!(
                "`sample_every`: periodic samples of `{}` runs are not implemented yet (they \
                 work for the IP-Adapter kinds); set 0 and sample the export with `idforge \
                 generate --adapter`",
                self.method.as_str()
            ));
        }
        if self.sample_every > 0 && (self.sample_prompts.is_empty() || self.sample_identities == 0)
        {
            return Err(
                "`sample_every` > 0 needs at least one `sample_prompts` entry and \
                 `sample_identities` ≥ 1 (or set `sample_every` = 0)"
                    .into(),
            );
        }
        if self.sample_every > 0 && !(1..=1000).contains(&self.sample_steps) {
            return Err(format!(
                "`sample_steps` = {}: give 1 to 1000",
                self.sample_steps
            ));
        }
        if !(self.sample_cfg.is_finite() && self.sample_cfg >= 0.0) {
            return Err(format!(
                "`sample_cfg` = {}: give a guidance scale ≥ 0 (1 turns guidance off)",
                self.sample_cfg
            ));
        }
        if self.method.needs_arcface() && self.arcface.is_none() {
            return Err(format!(
                "`{}` needs the ArcFace ONNX that makes its ID embeddings: give --arcface \
                 (recipe key `arcface`), e.g. insightface's w600k_r50.onnx",
                self.method.as_str()
            ));
        }
        if self.method.needs_image_encoder() && self.image_encoder.is_none() {
            return Err(format!(
                "`{}` needs the CLIP image encoder its references go through: give \
                 --image-encoder (recipe key `image_encoder`), diffusers' image_encoder/ folder \
                 (OpenCLIP ViT-H/14 for the SD 1.5 adapters)",
                self.method.as_str()
            ));
        }
        Ok(())
    }

    /// A fingerprint of the settings that decide the result (not `steps`, checkpointing,
    /// workers or paths of caches): a resume with other values is refused.
    pub fn fingerprint(&self) -> String {
        let mut s = self.clone();
        // What decides the result is the micro-batches per step, not how they are spread.
        s.grad_accum *= s.devices;
        s.devices = 1;
        if s.lr_decay == LrDecay::Constant {
            // The cosine's length depends on the steps; the constant schedule does not.
            s.steps = 0;
        }
        s.checkpoint_every = 0;
        s.keep_checkpoints = 0;
        s.sample_every = 0;
        s.sample_prompts = Vec::new();
        s.sample_identities = 0;
        s.sample_steps = 0;
        s.sample_cfg = 0.0;
        s.sample_seed = 0;
        s.workers = 0;
        s.cache_dir = None;
        s.face_api_weights = None;
        let json = serde_json::to_string(&s).unwrap_or_default();
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(json.as_bytes())[..8])
    }
}
