//! `idforge clip score`: CLIP-T (torchmetrics' CLIPScore) of image–text pairs, from the user's
//! CLIP checkpoint.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};

use idforge_models::clip::{ClipCheckpoint, ClipSource, WeightLayout, clip_t};
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
    let source = ClipSource {
        weights: args.weights.clone(),
        preset: args.model.clone(),
        layout: match args.layout {
            LayoutArg::Hf => Some(WeightLayout::HuggingFace),
            LayoutArg::Openclip => Some(WeightLayout::OpenClip),
            LayoutArg::Auto => None,
        },
        tokenizer: args.tokenizer.clone(),
        prefix: args.prefix.clone(),
    };
    let device = Default::default();
    let clip =
        ClipCheckpoint::<Backend>::load(&source, &device).context("loading the CLIP checkpoint")?;
    let mut decoded = Vec::new();
    for path in &args.images {
        decoded.push(read_rgb(path)?);
    }
    let views: Vec<RgbView> = decoded
        .iter()
        .map(|(width, height, data)| RgbView {
            width: *width,
            height: *height,
            data,
        })
        .collect();
    let image_embeds = clip.embed_images(&views);
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    let text_embeds = clip.embed_texts(&texts)?;
    let n = ni.max(nt);
    let scores: Vec<f32> = (0..n)
        .map(|i| {
            clip_t(
                &image_embeds[if ni == 1 { 0 } else { i }],
                &text_embeds[if nt == 1 { 0 } else { i }],
            )
        })
        .collect();
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

/// Width, height and RGB bytes of an image file.
fn read_rgb(path: &Path) -> anyhow::Result<(usize, usize, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let decoded =
        idforge_core::image_io::decode(&bytes, idforge_core::image_io::DEFAULT_MAX_PIXELS)
            .with_context(|| format!("decoding {}", path.display()))?;
    let rgb = decoded.image.to_rgb8();
    Ok((rgb.width() as usize, rgb.height() as usize, rgb.into_raw()))
}
