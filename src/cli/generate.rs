//! `idforge generate`: one image from a diffusers Stable Diffusion / SDXL folder, with the
//! burn port of the UNet, VAE, text encoders and samplers that training builds on.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::tensor::Tensor;
use clap::{Args, ValueEnum};
use idforge_core::limits::{Count, Factor};
use idforge_core::progress::Progress;
use idforge_diffusion::adapters::ip_adapter::{
    IpAdapter, IpScale, ProjectionInput, ReferencePooling,
};
use idforge_diffusion::pipeline::to_rgb8;
use idforge_diffusion::{
    Family, NoHook, Pipeline, SampleSettings, SamplerKind, StepInputs, SwitchAt,
};
use idforge_models::WeightStore;

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
    /// FaceID-Plus); its kind is read from its keys and printed. Give its input with
    /// --image-embeds and/or --id-embeds.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The adapter's image input, a `.safetensors` file: `image_embeds` (`[refs, dim]`: CLIP's
    /// projected image embedding, plain IP-Adapter) and/or `hidden_states` (`[refs, tokens,
    /// hidden]`: CLIP's penultimate hidden states, Plus / full-face / FaceID-Plus), optionally
    /// `negative_hidden_states` (the same of a black image, for guidance; default zeros is only
    /// right for `image_embeds`). Leading axes beyond the last one or two are references.
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
            let mut adapter = IpAdapter::load(path, &pipe.unet, &device)
                .with_context(|| format!("loading the adapter {}", path.display()))?;
            adapter.set_shortcut(a.plus_v2, 1.0);
            eprintln!("adapter {}: {}", path.display(), adapter.kind());
            Some(adapter)
        }
        None => None,
    };
    let hook = match &adapter {
        Some(adapter) => {
            let (pos, neg) = adapter_inputs(&a, &device)?;
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
            "--adapter needs its input: --id-embeds (FaceID kinds: an ArcFace embedding) and/or \
             --image-embeds (CLIP image_embeds or hidden_states); computing them from a reference \
             photo is not built yet"
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
