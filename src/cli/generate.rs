//! `idforge generate`: one image from a diffusers Stable Diffusion / SDXL folder, with the
//! burn port of the UNet, VAE, text encoders and samplers that training builds on.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use idforge_core::limits::{Count, Factor};
use idforge_core::progress::Progress;
use idforge_diffusion::adapters::ip_adapter::ReferencePooling;
use idforge_diffusion::adapters::photomaker::{IdEncoderOptions, Version};
use idforge_diffusion::adapters::split_prompt::{SplitPrompts, SplitScale};
use idforge_diffusion::{Family, SamplerKind};
use idforge_models::reference::CropChannels;

use super::device::Backend;
use idforge_diffusion::methods::{
    AdapterKind, Identity, MAX_REFERENCES, Method, MethodOptions, RenderSettings, adapter_kinds,
};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SamplerArg {
    /// Euler discrete (diffusers' `EulerDiscreteScheduler`, SDXL's default).
    Euler,
    /// DDIM with η = 0 (deterministic).
    Ddim,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PoolingArg {
    /// Every reference's tokens in one sequence (diffusers' multi-image rule).
    Concat,
    /// The references' embeddings averaged, then projected once.
    Mean,
    /// The element-wise maximum of the references' embeddings, projected once.
    Max,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CropChannelsArg {
    /// Red and blue swapped, as IP-Adapter-FaceID-Plus's demo feeds CLIP.
    Bgr,
    /// The crop's true colours.
    Rgb,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A diffusers pipeline folder (`save_pretrained` output: model_index.json, unet/, vae/,
    /// text_encoder/, tokenizer/, scheduler/; SDXL also text_encoder_2/, tokenizer_2/), weights
    /// as safetensors in fp16, bf16 or fp32.
    #[arg(long)]
    model: PathBuf,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// What to steer away from (default: "" for SD; zeros for SDXL, as diffusers does).
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Denoising steps (1 to 1000).
    #[arg(long, default_value = "30")]
    steps: Count<1, 1000>,
    /// Classifier-free guidance scale, 0 to 1000; 1 turns guidance off (default: 7.5 for SD,
    /// 5 for SDXL, diffusers' defaults).
    #[arg(long)]
    cfg: Option<Factor>,
    /// The noise seed: the same seed, settings and model give the same image.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The sampler; the noise schedule (betas, prediction type, spacing) is the folder's.
    #[arg(long, value_enum, default_value_t = SamplerArg::Euler)]
    sampler: SamplerArg,
    /// Image width in pixels, 8 to 16384 (default: the model's native size).
    #[arg(long)]
    width: Option<Count<8, 16384>>,
    /// Image height in pixels, 8 to 16384 (default: the model's native size).
    #[arg(long)]
    height: Option<Count<8, 16384>>,
    /// Start from this initial noise instead of the seed's: a `.safetensors` file with an f32
    /// tensor `[1, 4, height/8, width/8]` (e.g. the `latents` a diffusers run was given), to
    /// reproduce another tool's image.
    #[arg(long, conflicts_with_all = ["width", "height"])]
    noise: Option<PathBuf>,
    /// The tensor in `--noise` to use (default: the file's only tensor).
    #[arg(long, requires = "noise")]
    noise_tensor: Option<String>,
    /// An adapter file; its kind is read from its keys (as diffusers does) and printed:
    /// IP-Adapter family (`image_proj.*`: plain, Plus, full-face, FaceID, FaceID-Plus; input
    /// from --ref photos with --arcface and/or --image-encoder as the kind needs, or
    /// precomputed --id-embeds / --image-embeds), PhotoMaker v1 / v2 (`id_encoder.*`; SDXL;
    /// --ref photos, v2 also --arcface or --id-embeds; the prompt holds the --trigger word
    /// after the class word) or the split-prompt adapter (`split_prompt.*` /
    /// `adapter_modules.*`; SDXL; --bg-prompt, --body-prompt). Give it twice for a PhotoMaker
    /// file together with a split-prompt file (persongen's ipmakerbgbody).
    #[arg(long, value_name = "FILE")]
    adapter: Vec<PathBuf>,
    /// A reference photo of the identity (JPEG, PNG, WebP, ...; repeat for up to 4). The
    /// adapter's inputs are computed from it as its kind needs: FaceID takes the ArcFace
    /// embedding (L2-normalised) of the photo's largest face (face-api detector + 68 landmarks →
    /// insightface's 5-point `norm_crop`; needs --arcface); plain, Plus and full-face take CLIP
    /// of the whole photo (needs --image-encoder; the plus-face and full-face adapters expect a
    /// photo cropped to the face); FaceID-Plus takes both, CLIP seeing the 224 px aligned face
    /// crop.
    #[arg(
        long = "ref",
        value_name = "PHOTO",
        requires = "adapter",
        conflicts_with = "image_embeds"
    )]
    references: Vec<PathBuf>,
    /// An ArcFace-class ONNX model for the identity embedding of the --ref faces (the FaceID
    /// kinds: L2-normalised; PhotoMaker v2: raw, as its `faces[0]['embedding']`):
    /// insightface's buffalo_l `w600k_r50.onnx` (the one both demos use).
    #[arg(long, value_name = "ONNX", requires = "references")]
    arcface: Option<PathBuf>,
    /// The CLIP image encoder for the --ref photos: diffusers' `image_encoder/` folder
    /// (`CLIPVisionModelWithProjection`: config.json + model.safetensors). OpenCLIP ViT-H/14
    /// (h94/IP-Adapter `models/image_encoder`) for the SD 1.5 adapters and the `_vit-h` SDXL ones;
    /// ViT-bigG/14 (`sdxl_models/image_encoder`) for ip-adapter_sdxl.
    #[arg(long, value_name = "DIR", requires = "references")]
    image_encoder: Option<PathBuf>,
    /// face-api's model folder for finding the --ref faces (default: the asset cache's, from
    /// `make assets`).
    #[arg(long, value_name = "DIR", requires = "references")]
    face_api_weights: Option<PathBuf>,
    /// Channel order of FaceID-Plus's 224 px face crop given to CLIP: `bgr` as
    /// IP-Adapter-FaceID-Plus's published demo does (it passes OpenCV's BGR crop to
    /// CLIPImageProcessor), `rgb` for the true colours.
    #[arg(long, value_enum, default_value_t = CropChannelsArg::Bgr, requires = "references")]
    face_crop_channels: CropChannelsArg,
    /// Also write the adapter inputs computed from --ref to this `.safetensors` file
    /// (`id_embeds`, `image_embeds`, `hidden_states`, `negative_hidden_states`, as the kind
    /// needs), to reuse with --id-embeds / --image-embeds without the networks.
    #[arg(long, value_name = "FILE", requires = "references")]
    save_inputs: Option<PathBuf>,
    /// The adapter's image input, a `.safetensors` file: `image_embeds` (`[refs, dim]`: CLIP's
    /// projected image embedding, plain IP-Adapter) and/or `hidden_states` (`[refs, tokens,
    /// hidden]`: CLIP's penultimate hidden states, Plus / full-face / FaceID-Plus), optionally
    /// `negative_hidden_states` (the same of an all-zero pixel tensor, for guidance; default
    /// zeros is only right for `image_embeds`). Leading axes beyond the last one or two are
    /// references.
    #[arg(long, requires = "adapter")]
    image_embeds: Option<PathBuf>,
    /// The adapter's identity input: a `.safetensors` file with `id_embeds` (or its only
    /// tensor): the ArcFace embedding `[refs, 512]` (L2-normalised for FaceID / FaceID-Plus;
    /// raw for PhotoMaker v2, one row per --ref photo, instead of --arcface). The
    /// unconditional branch uses zeros, as the references do.
    #[arg(long, requires = "adapter")]
    id_embeds: Option<PathBuf>,
    /// The adapter's scale on every cross-attention layer, 0 to 1000 (diffusers'
    /// `set_ip_adapter_scale`; 1 is the adapter as trained).
    #[arg(long, default_value = "1", requires = "adapter")]
    adapter_scale: Factor,
    /// How several references (rows of --id-embeds / --image-embeds) are combined.
    #[arg(long, value_enum, default_value_t = PoolingArg::Concat, requires = "adapter")]
    ref_pooling: PoolingArg,
    /// FaceID-Plus V2: add the resampled tokens to FaceID's (`shortcut`), as the V2 files need.
    #[arg(long, requires = "adapter")]
    plus_v2: bool,
    /// The identity's start, 0 to 1000, at most --steps. IP-Adapter: the first denoising step
    /// that sees the adapter (default 0: all). PhotoMaker: its `start_merge_step`, the last
    /// text-only step (the steps up to and including it use the prompt without the trigger;
    /// default a fifth of --steps, PhotoMaker's 10 of 50).
    #[arg(long, requires = "adapter")]
    id_start_step: Option<Count<0, 1000>>,
    /// PhotoMaker's trigger word, which follows the class word in --prompt ("a photo of a man
    /// img").
    #[arg(long, default_value = "img", requires = "adapter")]
    trigger: String,
    /// The background part of the prompt, for the split-prompt adapter (empty: the empty
    /// prompt's encoding).
    #[arg(long, value_name = "TEXT", requires = "adapter")]
    bg_prompt: Option<String>,
    /// The body part of the prompt, for the split-prompt adapter.
    #[arg(long, value_name = "TEXT", requires = "adapter")]
    body_prompt: Option<String>,
    /// The split-prompt adapter's weight on the background part, 0 to 1000 (persongen: 1).
    #[arg(long, default_value = "1", requires = "adapter")]
    bg_scale: Factor,
    /// The split-prompt adapter's weight on the body part, 0 to 1000 (persongen: 1).
    #[arg(long, default_value = "1", requires = "adapter")]
    body_scale: Factor,
    /// PhotoMaker ID-encoder head widths `VISION,PERCEIVER` for checkpoints other than the
    /// published ones (which use 64,128), e.g. tiny test files.
    #[arg(long, value_name = "V,P", hide = true, requires = "adapter")]
    id_encoder_heads: Option<String>,
    /// The PNG to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Replace the output file if it exists.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    if a.output.exists() && !a.overwrite {
        bail!(
            "{} exists; choose another --output or pass --overwrite",
            a.output.display()
        );
    }
    let ext = a.output.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !ext.eq_ignore_ascii_case("png") {
        bail!("--output {}: write a .png file", a.output.display());
    }
    let device = Default::default();
    let options = method_options(&a)?;
    // The adapters' kinds from their keys alone, before anything loads: a missing piece fails
    // fast.
    let kinds = adapter_kinds(&options.adapters)?;
    precheck(&a, &kinds)?;
    let with_photos = !a.references.is_empty();
    let method = Method::<Backend>::load(&a.model, options, &device, with_photos)?;
    let identity = if with_photos {
        method.identity_from_photos(
            &a.references,
            a.id_embeds.as_deref(),
            a.save_inputs.as_deref(),
            true,
        )?
    } else if method.takes_identity() {
        method.identity_from_embeds(a.image_embeds.as_deref(), a.id_embeds.as_deref())?
    } else {
        Identity::None
    };
    let pipe = &method.pipe;
    let side = pipe.default_size();
    let (w, h) = (
        a.width.map_or(side, |v| v.usize()),
        a.height.map_or(side, |v| v.usize()),
    );
    let guidance = a.cfg.map(Factor::f32).unwrap_or(match pipe.family {
        Family::StableDiffusion => 7.5,
        Family::StableDiffusionXl => 5.0,
    });
    if !(guidance.is_finite() && guidance >= 0.0) {
        bail!("--cfg {guidance}: give a guidance scale ≥ 0 (1 turns guidance off)");
    }
    let noise = match &a.noise {
        Some(path) => read_noise::<Backend>(path, a.noise_tensor.as_deref(), &device)?,
        None => pipe.seeded_noise(a.seed, (h, w))?,
    };
    let settings = RenderSettings {
        steps: a.steps.usize(),
        guidance,
        sampler: match a.sampler {
            SamplerArg::Euler => SamplerKind::Euler,
            SamplerArg::Ddim => SamplerKind::Ddim,
        },
        id_start_step: a.id_start_step.map(|s| s.usize()),
        adapter_scale: a.adapter_scale.f32(),
        split_scale: SplitScale {
            background: a.bg_scale.f32(),
            body: a.body_scale.f32(),
        },
    };
    let prompts = SplitPrompts {
        main: &a.prompt,
        background: a.bg_prompt.as_deref().unwrap_or(""),
        body: a.body_prompt.as_deref().unwrap_or(""),
        negative: a.negative_prompt.as_deref(),
    };
    let progress = Progress::new("denoising", a.steps.get());
    let sampling = Instant::now();
    let img = method.render(&identity, &prompts, &settings, noise, &mut |_, _| {
        progress.inc(1)
    })?;
    progress.finish();
    let (width, height) = img.dimensions();
    if let Some(parent) = a.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    img.save(&a.output)
        .with_context(|| format!("writing {}", a.output.display()))?;
    println!(
        "{}\t{width}x{height}\t{}\t{} steps {:?}\tcfg {guidance}\t{:.1} s",
        a.output.display(),
        match &a.noise {
            Some(p) => format!("noise {}", p.display()),
            None => format!("seed {}", a.seed),
        },
        a.steps,
        settings.sampler,
        sampling.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// The method's files and reference settings from the flags.
fn method_options(a: &GenerateArgs) -> anyhow::Result<MethodOptions> {
    let id_encoder_heads = match &a.id_encoder_heads {
        None => None,
        Some(s) => {
            let parsed: Option<Vec<usize>> = s.split(',').map(|v| v.trim().parse().ok()).collect();
            match parsed.as_deref() {
                Some(&[vision, perceiver]) if vision > 0 && perceiver > 0 => {
                    Some(IdEncoderOptions {
                        vision_head_dim: vision,
                        perceiver_head_dim: perceiver,
                    })
                }
                _ => bail!(
                    "--id-encoder-heads {s:?}: give two head widths, VISION,PERCEIVER \
                     (published PhotoMaker: 64,128)"
                ),
            }
        }
    };
    Ok(MethodOptions {
        adapters: a.adapter.clone(),
        arcface: a.arcface.clone(),
        image_encoder: a.image_encoder.clone(),
        face_api_weights: a.face_api_weights.clone(),
        crop: Some(match a.face_crop_channels {
            CropChannelsArg::Bgr => CropChannels::Bgr,
            CropChannelsArg::Rgb => CropChannels::Rgb,
        }),
        plus_v2: a.plus_v2,
        pooling: Some(match a.ref_pooling {
            PoolingArg::Concat => ReferencePooling::Concat,
            PoolingArg::Mean => ReferencePooling::Mean,
            PoolingArg::Max => ReferencePooling::Max,
        }),
        trigger: Some(a.trigger.clone()),
        id_encoder_heads,
        log: Some(super::log_stderr),
    })
}

/// The flag combinations each adapter kind needs, checked from the files' keys before any
/// network loads.
fn precheck(a: &GenerateArgs, kinds: &[(PathBuf, AdapterKind)]) -> anyhow::Result<()> {
    if let Some(start) = a.id_start_step
        && start.get() > a.steps.get()
    {
        bail!("--id-start-step {start}: at most --steps ({})", a.steps);
    }
    let split = kinds
        .iter()
        .any(|(_, k)| matches!(k, AdapterKind::SplitPrompt));
    if !split && (a.bg_prompt.is_some() || a.body_prompt.is_some()) {
        bail!(
            "--bg-prompt / --body-prompt are read by the split-prompt adapter: add --adapter with \
             the split-prompt file (`split_prompt.*` tensors)"
        );
    }
    for (path, kind) in kinds {
        match kind {
            AdapterKind::PhotoMaker(version) => {
                if a.references.is_empty() {
                    bail!(
                        "--adapter {} is photomaker-{}, which takes reference photos: pass --ref \
                         face.jpg (1 to {MAX_REFERENCES})",
                        path.display(),
                        version.name()
                    );
                }
                if a.image_embeds.is_some() {
                    bail!(
                        "--image-embeds feeds IP-Adapter files; PhotoMaker reads the --ref photos"
                    );
                }
                let trigger = a.trigger.as_str();
                let found = a
                    .prompt
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
                    .filter(|w| *w == trigger)
                    .count();
                if found != 1 {
                    bail!(
                        "--prompt {:?} has the trigger word `{trigger}` {found} times: PhotoMaker \
                         needs it once, right after the class word (\"a photo of a man \
                         {trigger}\"), or choose another word with --trigger",
                        a.prompt
                    );
                }
                if *version == Version::V2 && a.arcface.is_none() && a.id_embeds.is_none() {
                    bail!(
                        "--adapter {} is photomaker-v2, which takes the ArcFace embedding of \
                         each reference face: pass --arcface with an ArcFace ONNX model \
                         (insightface's buffalo_l w600k_r50.onnx), or the embeddings with \
                         --id-embeds",
                        path.display()
                    );
                }
            }
            AdapterKind::IpAdapter(_) => {
                if !a.references.is_empty() && (a.id_embeds.is_some() || a.image_embeds.is_some()) {
                    bail!(
                        "--adapter {} is an IP-Adapter: give its input as --ref photos or as \
                         --id-embeds / --image-embeds, not both",
                        path.display()
                    );
                }
            }
            AdapterKind::SplitPrompt => {}
        }
    }
    let identity = kinds
        .iter()
        .any(|(_, k)| !matches!(k, AdapterKind::SplitPrompt));
    if !identity && (!a.references.is_empty() || a.id_embeds.is_some() || a.image_embeds.is_some())
    {
        bail!(
            "--ref / --id-embeds / --image-embeds give an identity, which the split-prompt \
             adapter alone does not take: add a PhotoMaker file (--adapter photomaker-v1.bin)"
        );
    }
    Ok(())
}

/// The initial noise tensor of a `.safetensors` file.
fn read_noise<B: burn::tensor::backend::Backend>(
    path: &std::path::Path,
    tensor: Option<&str>,
    device: &B::Device,
) -> anyhow::Result<burn::tensor::Tensor<B, 4>> {
    let weights = idforge_models::WeightStore::open(path)
        .with_context(|| format!("reading the noise file {}", path.display()))?;
    let names: Vec<String> = weights.names().map(str::to_string).collect();
    let name = match tensor {
        Some(t) => t.to_string(),
        None if names.len() == 1 => names[0].clone(),
        None => bail!(
            "{} has {} tensors; choose one with --noise-tensor ({})",
            path.display(),
            names.len(),
            names.iter().take(8).cloned().collect::<Vec<_>>().join(", ")
        ),
    };
    let shape = weights
        .shape(&name)
        .map(<[usize]>::to_vec)
        .with_context(|| format!("{}: no tensor `{name}`", path.display()))?;
    let [n, c, h, w]: [usize; 4] = shape.clone().try_into().map_err(|_| {
        anyhow::anyhow!(
            "{}: `{name}` has shape {shape:?}, expected [1, channels, h, w]",
            path.display()
        )
    })?;
    if n != 1 {
        bail!(
            "{}: `{name}` holds {n} latents; give one ([1, channels, h, w])",
            path.display()
        );
    }
    Ok(weights.tensor(&name, [n, c, h, w], device)?)
}
