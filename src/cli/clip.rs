//! `idforge clip score`: CLIP-T (torchmetrics' CLIPScore) of image–text pairs, from the user's
//! CLIP checkpoint.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};

use idforge_models::clip::{
    Clip, ClipConfig, ClipPreprocess, ClipTokenizer, ClipWeights, WeightLayout, cached_bpe_vocab,
    clip_score,
};
use idforge_models::face_api::preprocess::RgbView;

use super::device::Backend;

#[derive(Debug, Args)]
pub struct ClipArgs {
    #[command(subcommand)]
    command: ClipCommand,
}

#[derive(Debug, Subcommand)]
enum ClipCommand {
    /// Print CLIP-T = 100 · max(cos(image, text), 0) for image–text pairs, as torchmetrics'
    /// CLIPScore computes it: one line per pair, `score<TAB>image<TAB>text`.
    ///
    /// Pairs are the i-th image with the i-th text; a single image is scored against every
    /// text and a single text against every image. The checkpoint is a `.safetensors` file in
    /// Hugging Face's layout (`CLIPModel`) or OpenCLIP's, or a Hugging Face model folder
    /// (`model.safetensors`, `config.json`, `tokenizer.json`). Without a `tokenizer.json` the
    /// BPE vocabulary from tools/clip-reference/fetch-vocab is used, with the tokenizer and
    /// preprocessing conventions of the checkpoint's library.
    Score(ScoreArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LayoutArg {
    /// From the tensor names.
    Auto,
    /// transformers (`text_model.*`, `vision_model.*`).
    Hf,
    /// open_clip / OpenAI (`transformer.resblocks.*`, `visual.*`).
    Openclip,
}

#[derive(Debug, Args)]
struct ScoreArgs {
    /// Image files (JPEG, PNG, WebP, ...); EXIF orientation is applied.
    #[arg(long = "image", required = true)]
    images: Vec<PathBuf>,
    /// Texts (prompts); longer than 75 tokens are cut, as in the references.
    #[arg(long = "text", required = true)]
    texts: Vec<String>,
    /// The checkpoint: a `.safetensors` file (repeat for shards) or a Hugging Face model folder.
    #[arg(long, required = true)]
    weights: Vec<PathBuf>,
    /// Shape preset (ViT-B-32, ViT-B-16, ViT-L-14, ViT-L-14-336, ViT-H-14, ViT-bigG-14);
    /// default: the `config.json` beside the weights.
    #[arg(long)]
    model: Option<String>,
    /// Layout of the tensor names.
    #[arg(long, value_enum, default_value_t = LayoutArg::Auto)]
    layout: LayoutArg,
    /// A Hugging Face `tokenizer.json` (default: the one beside the weights, else the cached
    /// BPE vocabulary).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Prefix of the CLIP tensors inside a larger checkpoint.
    #[arg(long, default_value = "")]
    prefix: String,
}

pub fn run(args: ClipArgs) -> anyhow::Result<ExitCode> {
    let ClipCommand::Score(args) = args.command;
    let (ni, nt) = (args.images.len(), args.texts.len());
    if ni != nt && ni != 1 && nt != 1 {
        bail!("{ni} images and {nt} texts: give one text per image, or one image or one text");
    }
    let (files, folder) = checkpoint_files(&args.weights)?;
    let weights = ClipWeights::open_many(&files)?.with_prefix(&args.prefix);
    let layout = match args.layout {
        LayoutArg::Hf => WeightLayout::HuggingFace,
        LayoutArg::Openclip => WeightLayout::OpenClip,
        LayoutArg::Auto => WeightLayout::detect(&weights).with_context(|| {
            format!(
                "{}: neither Hugging Face nor OpenCLIP CLIP tensor names (wrong --prefix?)",
                files[0].display()
            )
        })?,
    };
    let config = match (
        &args.model,
        folder.as_deref().map(|f| f.join("config.json")),
    ) {
        (Some(name), _) => ClipConfig::preset(name).with_context(|| {
            let names: Vec<&str> = ClipConfig::PRESETS.iter().map(|(n, _)| *n).collect();
            format!("unknown --model {name:?}; presets: {}", names.join(", "))
        })?,
        (None, Some(json)) if json.is_file() => ClipConfig::from_hf_config_json(&json)?,
        (None, _) => bail!("no config.json beside the weights: pass --model (a preset name)"),
    };
    let tokenizer_json = args.tokenizer.clone().or_else(|| {
        folder
            .as_ref()
            .map(|f| f.join("tokenizer.json"))
            .filter(|p| p.is_file())
    });
    let tokenizer = match tokenizer_json {
        Some(path) => ClipTokenizer::from_tokenizer_json(&path)?,
        None => {
            let vocab = cached_bpe_vocab();
            if !vocab.is_file() {
                bail!(
                    "{} is missing: run tools/clip-reference/fetch-vocab, or pass --tokenizer",
                    vocab.display()
                );
            }
            ClipTokenizer::from_bpe_vocab(&vocab, layout.convention())?
        }
    }
    .with_context_length(config.text.context_length);

    let device = Default::default();
    let model = Clip::<Backend>::load(&weights, &config, layout, &device)
        .context("loading the CLIP checkpoint")?;
    let preprocess = ClipPreprocess::new(config.vision.image_size, layout.convention());
    let mut pixels = Vec::new();
    for path in &args.images {
        let (width, height, data) = read_rgb(path)?;
        pixels.push(preprocess.pixels(RgbView {
            width,
            height,
            data: &data,
        }));
    }
    let size = config.vision.image_size;
    let image_tensor = burn::tensor::Tensor::<Backend, 4>::from_data(
        burn::tensor::TensorData::new(pixels.concat(), [ni, 3, size, size]),
        &device,
    );
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    let ids = tokenizer.encode_batch(&texts)?;
    let image_embeds = model.encode_image(image_tensor);
    let text_embeds = model.encode_text(&ids, &device);
    let n = ni.max(nt);
    let image_embeds = if ni == n {
        image_embeds
    } else {
        image_embeds.repeat_dim(0, n)
    };
    let text_embeds = if nt == n {
        text_embeds
    } else {
        text_embeds.repeat_dim(0, n)
    };
    let scores = clip_score(image_embeds, text_embeds);
    for (i, score) in scores.iter().enumerate() {
        let image = &args.images[if ni == 1 { 0 } else { i }];
        let text = &args.texts[if nt == 1 { 0 } else { i }];
        println!("{score:.4}\t{}\t{text}", image.display());
    }
    if n > 1 {
        let mean = scores.iter().map(|&s| f64::from(s)).sum::<f64>() / n as f64;
        eprintln!("mean CLIP-T over {n} pairs: {mean:.4}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The `.safetensors` files of the checkpoint and, for a folder (or a file inside one), the
/// folder where `config.json` and `tokenizer.json` may be.
fn checkpoint_files(paths: &[PathBuf]) -> anyhow::Result<(Vec<PathBuf>, Option<PathBuf>)> {
    if let [dir] = paths
        && dir.is_dir()
    {
        let preferred = ["model.safetensors", "open_clip_model.safetensors"];
        if let Some(file) = preferred.iter().map(|f| dir.join(f)).find(|p| p.is_file()) {
            return Ok((vec![file], Some(dir.clone())));
        }
        let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        shards.sort();
        if shards.is_empty() {
            bail!("{}: no .safetensors file", dir.display());
        }
        return Ok((shards, Some(dir.clone())));
    }
    let folder = paths[0].parent().map(Path::to_path_buf);
    Ok((paths.to_vec(), folder))
}

/// Width, height and RGB bytes of an image file.
fn read_rgb(path: &Path) -> anyhow::Result<(usize, usize, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let decoded =
        idforge_core::image_io::decode(&bytes, idforge_core::image_io::DEFAULT_MAX_PIXELS)
            .with_context(|| format!("decoding {}", path.display()))?;
    let rgb = decoded.image.to_rgb8();
    Ok((rgb.width() as usize, rgb.height() as usize, rgb.into_raw()))
}
