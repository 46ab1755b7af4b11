//! `idforge generate`: one image from a diffusers Stable Diffusion / SDXL folder, with the
//! burn port of the UNet, VAE, text encoders and samplers that training builds on.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::tensor::Tensor;
use clap::{Args, ValueEnum};
use idforge_core::limits::{Count, Factor};
use idforge_core::progress::Progress;
use idforge_diffusion::adapters::ip_adapter::{
    IpAdapter, IpScale, ProjectionInput, ProjectionSpec, ReferencePooling,
};
use idforge_diffusion::pipeline::to_rgb8;
use idforge_diffusion::reference::{
    check_ip_adapter_encoder, ip_adapter_clip_width, ip_adapter_inputs, ip_adapter_needs,
};
use idforge_diffusion::{
    Family, NoHook, Pipeline, SampleSettings, SamplerKind, StepInputs, SwitchAt,
};
use idforge_models::WeightStore;
use idforge_models::face_api::Detector;
use idforge_models::face_embedder::{FaceEmbedder, embedder_name};
use idforge_models::readback::ReadBack;
use idforge_models::reference::{
    ClipInput, CropChannels, ImageEncoder, Reference, ReferenceEncoder, ReferenceNeeds,
};

use super::device::Backend;

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
    /// An identity adapter to condition on: an IP-Adapter-family file (`.bin` or
    /// `.safetensors` with `image_proj.*` / `ip_adapter.*`: plain, Plus, full-face, FaceID,
    /// FaceID-Plus); its kind is read from its keys (as diffusers does) and printed. Give its
    /// input as reference photos (--ref, with --arcface and/or --image-encoder as the kind
    /// needs) or precomputed (--id-embeds and/or --image-embeds).
    #[arg(long)]
    adapter: Option<PathBuf>,
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
        conflicts_with_all = ["image_embeds", "id_embeds"]
    )]
    references: Vec<PathBuf>,
    /// An ArcFace-class ONNX model for the FaceID kinds' identity embedding of the --ref faces:
    /// insightface's buffalo_l `w600k_r50.onnx` (the one IP-Adapter-FaceID's demo uses).
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
    /// tensor): the ArcFace embedding `[refs, 512]` (L2-normalised for FaceID / FaceID-Plus).
    /// The unconditional branch uses zeros, as the references do.
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
    /// The first denoising step that sees the adapter, 0 to 1000 (0: all; a PhotoMaker-style
    /// late start), at most --steps.
    #[arg(long, default_value = "0", requires = "adapter")]
    id_start_step: Count<0, 1000>,
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
    // The adapter's kind from its keys alone, and its inputs from the reference photos, before
    // the diffusion model loads: a missing piece or a photo without a face fails fast.
    let spec = match &a.adapter {
        Some(path) => Some(adapter_spec(path)?),
        None => None,
    };
    let from_references = match (&a.adapter, &spec) {
        (Some(path), Some(spec)) if !a.references.is_empty() => {
            eprintln!("adapter {}: {}", path.display(), spec.kind());
            Some(reference_inputs(&a, spec, &device)?)
        }
        _ => None,
    };
    let started = Instant::now();
    let pipe = Pipeline::<Backend>::load(&a.model, &device)
        .with_context(|| format!("loading the diffusers pipeline in {}", a.model.display()))?;
    eprintln!(
        "loaded {} ({:?}) in {:.1} s",
        a.model.display(),
        pipe.family,
        started.elapsed().as_secs_f64()
    );
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
    // Given noise decides the size; SDXL's size conditions follow it.
    let [_, _, lh, lw] = noise.dims();
    let (h, w) = (lh * pipe.vae_scale(), lw * pipe.vae_scale());
    let settings = SampleSettings {
        steps: a.steps.usize(),
        guidance,
        sampler: match a.sampler {
            SamplerArg::Euler => SamplerKind::Euler,
            SamplerArg::Ddim => SamplerKind::Ddim,
        },
        time_ids: [h as f32, w as f32, 0.0, 0.0, h as f32, w as f32],
    };
    if a.id_start_step.get() > a.steps.get() {
        bail!(
            "--id-start-step {}: at most --steps ({})",
            a.id_start_step,
            a.steps
        );
    }
    let cond = pipe
        .encode_prompt(&a.prompt)
        .context("encoding the prompt")?;
    let uncond = if guidance > 1.0 {
        Some(
            pipe.encode_negative(a.negative_prompt.as_deref())
                .context("encoding the negative prompt")?,
        )
    } else {
        None
    };
    let adapter = match &a.adapter {
        Some(path) => {
            let mut adapter = IpAdapter::load(path, &pipe.unet, &device).with_context(|| {
                format!(
                    "loading --adapter {} for the {:?} model {}: pass the adapter made for this \
                     base model, or the --model it was made for",
                    path.display(),
                    pipe.family,
                    a.model.display()
                )
            })?;
            adapter.set_shortcut(a.plus_v2, 1.0);
            if from_references.is_none() {
                eprintln!("adapter {}: {}", path.display(), adapter.kind());
            }
            Some(adapter)
        }
        None => None,
    };
    let hook = match &adapter {
        Some(adapter) => {
            let (pos, neg) = match from_references.clone() {
                Some(inputs) => inputs,
                None => adapter_inputs(&a, &device)?,
            };
            let pooling = match a.ref_pooling {
                PoolingArg::Concat => ReferencePooling::Concat,
                PoolingArg::Mean => ReferencePooling::Mean,
                PoolingArg::Max => ReferencePooling::Max,
            };
            let tokens = adapter
                .pooled_tokens(&pos, 1, pooling)
                .context("projecting the adapter's input")?;
            let tokens = if uncond.is_some() {
                let negative = adapter
                    .pooled_tokens(&neg, 1, pooling)
                    .context("projecting the unconditional input")?;
                Tensor::cat(vec![negative, tokens], 0)
            } else {
                tokens
            };
            Some(adapter.hook(tokens, IpScale::uniform(a.adapter_scale.f32())))
        }
        None => None,
    };
    let base = StepInputs {
        cond: &cond,
        uncond: uncond.as_ref(),
        hook: &NoHook,
    };
    let plan = SwitchAt {
        after: StepInputs {
            hook: match &hook {
                Some(h) => h,
                None => &NoHook,
            },
            ..base.clone()
        },
        before: base,
        start: a.id_start_step.usize(),
    };
    let progress = Progress::new("denoising", a.steps.get());
    let sampling = Instant::now();
    let latents = pipe
        .sample_with(&plan, &settings, noise, &mut |_, _| progress.inc(1))
        .context("sampling")?;
    progress.finish();
    let image = pipe.decode(latents);
    let [_, c, ih, iw] = image.dims();
    let (width, height, rgb) = to_rgb8(image.reshape([c, ih, iw]));
    let img = image::RgbImage::from_raw(width as u32, height as u32, rgb)
        .context("the decoded image has an unexpected size")?;
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

/// The adapter's conditional and unconditional inputs from --image-embeds / --id-embeds.
fn adapter_inputs(
    a: &GenerateArgs,
    device: &burn::tensor::Device<Backend>,
) -> anyhow::Result<(ProjectionInput<Backend>, ProjectionInput<Backend>)> {
    let mut pos = ProjectionInput {
        image_embeds: None,
        hidden_states: None,
        id_embeds: None,
    };
    let mut neg = pos.clone();
    if a.image_embeds.is_none() && a.id_embeds.is_none() {
        bail!(
            "--adapter needs its input: reference photos (--ref face.jpg, with --arcface for the \
             FaceID kinds and --image-encoder for the CLIP ones), or precomputed --id-embeds (an \
             ArcFace embedding) and/or --image-embeds (CLIP image_embeds or hidden_states)"
        );
    }
    if let Some(path) = &a.image_embeds {
        let store = WeightStore::open(path)
            .with_context(|| format!("reading --image-embeds {}", path.display()))?;
        if store.contains("image_embeds") {
            let e = rows::<2>(&store, "image_embeds", path, device)?;
            neg.image_embeds = Some(e.zeros_like());
            pos.image_embeds = Some(e);
        }
        if store.contains("hidden_states") {
            let h = rows::<3>(&store, "hidden_states", path, device)?;
            neg.hidden_states = Some(if store.contains("negative_hidden_states") {
                rows::<3>(&store, "negative_hidden_states", path, device)?
            } else {
                h.zeros_like()
            });
            pos.hidden_states = Some(h);
        }
        if pos.image_embeds.is_none() && pos.hidden_states.is_none() {
            bail!(
                "--image-embeds {}: no `image_embeds` or `hidden_states` tensor",
                path.display()
            );
        }
    }
    if let Some(path) = &a.id_embeds {
        let store = WeightStore::open(path)
            .with_context(|| format!("reading --id-embeds {}", path.display()))?;
        let name = if store.contains("id_embeds") {
            "id_embeds".to_string()
        } else {
            let names: Vec<String> = store.names().map(str::to_string).collect();
            match names.as_slice() {
                [only] => only.clone(),
                _ => bail!(
                    "--id-embeds {}: no `id_embeds` tensor and {} others; name it id_embeds",
                    path.display(),
                    names.len()
                ),
            }
        };
        let e = rows::<2>(&store, &name, path, device)?;
        neg.id_embeds = Some(e.zeros_like());
        pos.id_embeds = Some(e);
    }
    Ok((pos, neg))
}

/// The kind and shapes of an IP-Adapter file, from its `image_proj.*` keys (headers only).
fn adapter_spec(path: &Path) -> anyhow::Result<ProjectionSpec> {
    let store =
        WeightStore::open(path).with_context(|| format!("reading --adapter {}", path.display()))?;
    if !store.names().any(|n| n.starts_with("image_proj.")) {
        bail!(
            "--adapter {}: no `image_proj.*` tensors: not an IP-Adapter file (PhotoMaker files \
             hold `id_encoder.*`)",
            path.display()
        );
    }
    ProjectionSpec::detect(&store, "image_proj.")
        .with_context(|| format!("--adapter {}", path.display()))
}

/// The adapter's conditional and unconditional inputs computed from the --ref photos with the
/// networks its kind needs (`idforge_models::reference`), each source printed.
fn reference_inputs(
    a: &GenerateArgs,
    spec: &ProjectionSpec,
    device: &burn::tensor::Device<Backend>,
) -> anyhow::Result<(ProjectionInput<Backend>, ProjectionInput<Backend>)> {
    let n = a.references.len();
    if !(1..=MAX_REFERENCES).contains(&n) {
        bail!("--ref: give 1 to {MAX_REFERENCES} reference photos ({n} given)");
    }
    let crop = match a.face_crop_channels {
        CropChannelsArg::Bgr => CropChannels::Bgr,
        CropChannelsArg::Rgb => CropChannels::Rgb,
    };
    let needs = ip_adapter_needs(spec, crop);
    let kind = spec.kind();
    let face_needed = needs.face || matches!(needs.clip, Some(ClipInput::FaceCrop(_)));
    if face_needed && a.arcface.is_none() {
        bail!(
            "--adapter is {kind}, which takes the ArcFace embedding of the reference face: pass \
             --arcface with an ArcFace ONNX model (insightface's buffalo_l w600k_r50.onnx), or \
             give the embedding with --id-embeds instead of --ref"
        );
    }
    if let (Some(_), None) = (needs.clip, &a.image_encoder) {
        let (what, width) = ip_adapter_clip_width(spec).unwrap_or(("features", 0));
        bail!(
            "--adapter is {kind}, which takes CLIP {what} ({width} wide) of the reference{}: \
             pass --image-encoder with diffusers' image_encoder/ folder \
             (CLIPVisionModelWithProjection: config.json + model.safetensors; ViT-H/14 for the \
             SD 1.5 adapters), or give the features with --image-embeds instead of --ref",
            if face_needed {
                "'s face crop"
            } else {
                " photo"
            }
        );
    }
    if !face_needed && a.arcface.is_some() {
        eprintln!("note: {kind} takes no ArcFace embedding; --arcface is not used");
    }
    if needs.clip.is_none() && a.image_encoder.is_some() {
        eprintln!("note: {kind} takes no CLIP features; --image-encoder is not used");
    }
    for p in &a.references {
        if !p.is_file() {
            bail!("--ref {}: no such file", p.display());
        }
    }
    let faces = if face_needed {
        let dir = super::face_api_models(a.face_api_weights.clone())?;
        Some(
            FaceEmbedder::<Backend>::load(&dir, Detector::default(), a.arcface.as_deref(), device)
                .with_context(|| {
                    format!(
                        "loading face-api from {} and --arcface {}",
                        dir.display(),
                        a.arcface.as_deref().unwrap_or(Path::new("")).display()
                    )
                })?,
        )
    } else {
        None
    };
    let clip = match (&needs.clip, &a.image_encoder) {
        (Some(_), Some(dir)) => Some(
            ImageEncoder::load(dir, device)
                .with_context(|| format!("loading --image-encoder {}", dir.display()))?,
        ),
        _ => None,
    };
    let encoder = ReferenceEncoder::new(faces, clip);
    check_ip_adapter_encoder(spec, &encoder, crop)
        .context("--arcface / --image-encoder do not fit --adapter")?;
    let mut references = Vec::with_capacity(n);
    for path in &a.references {
        let r = encoder
            .encode_file(path, &needs)
            .with_context(|| format!("--ref {}", path.display()))?;
        eprintln!("{}", describe_reference(&r, a, &needs));
        references.push(r);
    }
    let uncond = encoder.image_encoder().map(ImageEncoder::unconditional);
    let (pos, neg) = ip_adapter_inputs(spec, &references, uncond.as_ref(), device)?;
    if let Some(out) = &a.save_inputs {
        save_inputs(out, &pos, &neg)?;
        eprintln!("adapter inputs written to {}", out.display());
    }
    Ok((pos, neg))
}

/// At most this many --ref photos (IP-Adapter's multi-image demos use up to 4).
const MAX_REFERENCES: usize = 4;

/// One line saying what was taken from a reference and by which network.
fn describe_reference(r: &Reference, a: &GenerateArgs, needs: &ReferenceNeeds) -> String {
    let mut parts = vec![format!("reference {}", r.path.display())];
    if let Some(f) = &r.face {
        let d = &f.face.detection;
        parts.push(format!(
            "face [{:.0}, {:.0}, {:.0}, {:.0}] score {:.2}",
            d.x,
            d.y,
            d.x + d.width,
            d.y + d.height,
            d.score
        ));
        if let Some(onnx) = &a.arcface {
            let norm = f.embedding.iter().map(|v| v * v).sum::<f32>().sqrt();
            parts.push(format!(
                "{} {}-d embedding (norm {norm:.2}, normalised)",
                embedder_name(Some(onnx)),
                f.embedding.len()
            ));
        }
    }
    if let (Some(c), Some(dir)) = (&r.clip, &a.image_encoder) {
        let seen = match needs.clip {
            Some(ClipInput::FaceCrop(CropChannels::Bgr)) => "the 224 px face crop (BGR)",
            Some(ClipInput::FaceCrop(CropChannels::Rgb)) => "the 224 px face crop (RGB)",
            _ => "the photo",
        };
        parts.push(format!(
            "CLIP {} of {seen}: hidden states {}x{}{}",
            dir.display(),
            c.tokens,
            c.width,
            c.image_embeds
                .as_ref()
                .map_or(String::new(), |e| format!(", image_embeds {}", e.len()))
        ));
    }
    parts.join("; ")
}

/// Writes the inputs as `.safetensors` in the names --id-embeds / --image-embeds read.
fn save_inputs(
    path: &Path,
    pos: &ProjectionInput<Backend>,
    neg: &ProjectionInput<Backend>,
) -> anyhow::Result<()> {
    fn entry<const D: usize>(
        name: &str,
        t: &Tensor<Backend, D>,
    ) -> anyhow::Result<(String, Vec<usize>, Vec<u8>)> {
        let values: Vec<f32> = t.clone().to_f32_vec();
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok((name.to_string(), t.dims().to_vec(), bytes))
    }
    let mut entries = Vec::new();
    if let Some(t) = &pos.id_embeds {
        entries.push(entry("id_embeds", t)?);
    }
    if let Some(t) = &pos.image_embeds {
        entries.push(entry("image_embeds", t)?);
    }
    if let Some(t) = &pos.hidden_states {
        entries.push(entry("hidden_states", t)?);
    }
    if let Some(t) = &neg.hidden_states {
        entries.push(entry("negative_hidden_states", t)?);
    }
    let views = entries
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .context("building the safetensors of --save-inputs")?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    safetensors::serialize_to_file(views, None, path)
        .with_context(|| format!("writing --save-inputs {}", path.display()))
}

/// A tensor whose last `D - 1` axes are kept and every leading axis becomes references.
fn rows<const D: usize>(
    store: &WeightStore,
    name: &str,
    path: &std::path::Path,
    device: &burn::tensor::Device<Backend>,
) -> anyhow::Result<Tensor<Backend, D>> {
    let (shape, values) = store
        .read_f32(name)
        .with_context(|| format!("{}: reading `{name}`", path.display()))?;
    if shape.len() < D - 1 || values.is_empty() {
        bail!(
            "{}: `{name}` has shape {shape:?}; expected [references, …] with {} trailing axes",
            path.display(),
            D - 1
        );
    }
    let tail = &shape[shape.len() + 1 - D..];
    let mut dims = [0usize; D];
    dims[1..].copy_from_slice(tail);
    dims[0] = values.len() / tail.iter().product::<usize>();
    Ok(Tensor::from_data(
        burn::tensor::TensorData::new(values, dims),
        device,
    ))
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
