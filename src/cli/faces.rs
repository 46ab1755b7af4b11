//! `idforge faces detect`: faces in an image, as JSON, from the cached face-api weights.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use idforge_models::face_api::TinyFaceDetector;
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::tfjs::TfjsWeights;

use super::device::Backend;

#[derive(Debug, Args)]
pub struct FacesArgs {
    #[command(subcommand)]
    command: FacesCommand,
}

#[derive(Debug, Subcommand)]
enum FacesCommand {
    /// Detect faces and print one JSON object per image: boxes in image pixels and scores.
    ///
    /// Uses face-api's tiny face detector (the other face-api networks are not ported yet).
    Detect(DetectArgs),
}

#[derive(Debug, Args)]
struct DetectArgs {
    /// Image files (JPEG, PNG, WebP, ...).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Network input size (face-api: 128 to 608, multiples of 32; larger finds smaller faces).
    #[arg(long, default_value_t = 416)]
    input_size: usize,
    /// Minimum detector score.
    #[arg(long, default_value_t = 0.5)]
    min_score: f32,
    /// Folder with the face-api `*-weights_manifest.json` files (default: the asset cache that
    /// tools/fetch-assets fills).
    #[arg(long)]
    weights: Option<PathBuf>,
}

pub fn run(args: FacesArgs) -> anyhow::Result<ExitCode> {
    let FacesCommand::Detect(args) = args.command;
    if args.input_size == 0 || args.input_size % 32 != 0 {
        bail!(
            "--input-size {} must be a positive multiple of 32 (face-api uses 128 to 608)",
            args.input_size
        );
    }
    let dir = match args.weights {
        Some(d) => d,
        None => idforge_core::cache::face_api_dir_if_fetched()
            .map(|d| d.join("model"))
            .context("the face-api weights are not in the asset cache: run tools/fetch-assets, or pass --weights")?,
    };
    let manifest = dir.join("tiny_face_detector_model-weights_manifest.json");
    let weights = TfjsWeights::load(&manifest)?;
    let device = Default::default();
    let net = TinyFaceDetector::<Backend>::load(&weights, &device)?;
    for path in &args.images {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let decoded =
            idforge_core::image_io::decode(&bytes, idforge_core::image_io::DEFAULT_MAX_PIXELS)
                .with_context(|| format!("decoding {}", path.display()))?;
        let rgb = decoded.image.to_rgb8();
        let view = RgbView {
            width: rgb.width() as usize,
            height: rgb.height() as usize,
            data: rgb.as_raw(),
        };
        let faces: Vec<_> = net
            .detect(view, args.input_size, args.min_score)
            .into_iter()
            .map(|d| {
                serde_json::json!({
                    "score": d.score,
                    "box": { "x": d.x, "y": d.y, "width": d.width, "height": d.height },
                })
            })
            .collect();
        let line = serde_json::json!({
            "image": path.display().to_string(),
            "width": view.width,
            "height": view.height,
            "detector": "tiny_face_detector",
            "input_size": args.input_size,
            "faces": faces,
        });
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}
