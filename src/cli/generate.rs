//! `idforge generate`: one image from a diffusers Stable Diffusion / SDXL folder, with the
//! burn port of the UNet, VAE, text encoders and samplers that training builds on.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use idforge_core::limits::{Count, Factor};
use idforge_core::progress::Progress;
use idforge_diffusion::pipeline::to_rgb8;
use idforge_diffusion::{Family, Pipeline, SampleSettings, SamplerKind};

use super::device::Backend;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SamplerArg {
    /// Euler discrete (diffusers' `EulerDiscreteScheduler`, SDXL's default).
    Euler,
    /// DDIM with η = 0 (deterministic).
    Ddim,
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
    let progress = Progress::new("denoising", a.steps.get());
    let sampling = Instant::now();
    let latents = pipe
        .sample(
            &a.prompt,
            a.negative_prompt.as_deref(),
            &settings,
            noise,
            &mut |_, _| progress.inc(1),
        )
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

/// The initial noise tensor of a `.safetensors` file.
fn read_noise<B: burn::tensor::backend::Backend>(
    path: &std::path::Path,
    tensor: Option<&str>,
    device: &B::Device,
) -> anyhow::Result<burn::tensor::Tensor<B, 4>> {
    let weights = idforge_diffusion::Weights::open(path)
        .with_context(|| format!("reading the noise file {}", path.display()))?;
    let names = weights.names();
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
        .with_context(|| format!("{}: no tensor `{name}`", path.display()))?;
    let [n, c, h, w]: [usize; 4] = shape.clone().try_into().map_err(|_| {
        anyhow::anyhow!("{}: `{name}` has shape {shape:?}, expected [1, channels, h, w]", path.display())
    })?;
    if n != 1 {
        bail!("{}: `{name}` holds {n} latents; give one ([1, channels, h, w])", path.display());
    }
    Ok(weights.tensor(&name, [n, c, h, w], device)?)
}
