//! `idforge faces detect`: faces in images, as JSON lines, from the cached face-api weights.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use idforge_core::limits::{Amount, Count};

use idforge_models::face_api::preprocess::RgbView;
use idforge_models::face_api::{Detector, Face, FaceApi, Stages};

use super::device::Backend;

#[derive(Debug, Args)]
pub struct FacesArgs {
    #[command(subcommand)]
    command: FacesCommand,
}

#[derive(Debug, Subcommand)]
enum FacesCommand {
    /// Detect faces and print one JSON line per image: for each face its box (image pixels),
    /// score, 68 landmarks, the aligned crop and the 128-d face-api descriptor.
    ///
    /// The networks are face-api's (`@vladmandic/face-api` 1.7.15), ported to burn and checked
    /// against the package. An image that cannot be read gets a line with an `error` field; the
    /// others still run, and the exit status is 1.
    Detect(DetectArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DetectorName {
    /// SSD MobileNetV1 at 512×512: face-api's default and the accurate one.
    Ssd,
    /// Tiny face detector: faster, misses more small or turned faces.
    Tiny,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Until {
    /// Boxes and scores only.
    Boxes,
    /// Boxes and 68 landmarks.
    Landmarks,
    /// Boxes, landmarks and descriptors.
    Descriptors,
}

#[derive(Debug, Args)]
struct DetectArgs {
    /// Image files (JPEG, PNG, WebP, ...).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Which detector finds the faces.
    #[arg(long, value_enum, default_value_t = DetectorName::Ssd)]
    detector: DetectorName,
    /// How far to go for each face.
    #[arg(long, value_enum, default_value_t = Until::Descriptors)]
    until: Until,
    /// Minimum detector score, in (0, 1).
    #[arg(long, default_value_t = 0.5)]
    min_score: f32,
    /// At most this many faces per image (SSD only).
    #[arg(long, default_value = "100")]
    max_faces: Amount,
    /// Network input size of the tiny detector (multiples of 32, face-api uses 128 to 608;
    /// larger finds smaller faces). SSD always runs at 512.
    #[arg(long, default_value = "416")]
    input_size: Count<32, 2048>,
    /// Folder with the face-api `*-weights_manifest.json` files (default: the asset cache that
    /// tools/fetch-assets fills).
    #[arg(long)]
    weights: Option<PathBuf>,
}

pub fn run(args: FacesArgs) -> anyhow::Result<ExitCode> {
    let FacesCommand::Detect(args) = args.command;
    if args.input_size.get() % 32 != 0 {
        bail!(
            "--input-size {} must be a positive multiple of 32 (face-api uses 128 to 608)",
            args.input_size
        );
    }
    if !(args.min_score > 0.0 && args.min_score < 1.0) {
        bail!("--min-score {} must be between 0 and 1", args.min_score);
    }
    let detector = match args.detector {
        DetectorName::Ssd => Detector::SsdMobilenetV1 {
            min_confidence: args.min_score,
            max_results: args.max_faces.usize(),
        },
        DetectorName::Tiny => Detector::Tiny {
            input_size: args.input_size.usize(),
            score_threshold: args.min_score,
        },
    };
    let stages = match args.until {
        Until::Boxes => Stages::Detect,
        Until::Landmarks => Stages::Landmarks,
        Until::Descriptors => Stages::Descriptors,
    };
    let dir = super::face_api_models(args.weights)?;
    let device = Default::default();
    let api = FaceApi::<Backend>::load(&dir, detector, stages, &device)
        .with_context(|| format!("loading the face-api networks from {}", dir.display()))?;
    let mut failed = 0usize;
    for path in &args.images {
        let line = match analyze(&api, path, detector) {
            Ok(line) => line,
            Err(e) => {
                failed += 1;
                eprintln!("error: {e:#}");
                serde_json::json!({ "image": path.display().to_string(), "error": format!("{e:#}") })
            }
        };
        println!("{line}");
    }
    if failed > 0 {
        eprintln!("{failed} of {} images could not be read", args.images.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn analyze(
    api: &FaceApi<Backend>,
    path: &Path,
    detector: Detector,
) -> anyhow::Result<serde_json::Value> {
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
    let faces: Vec<_> = api.analyze(view, detector).iter().map(face_json).collect();
    let (name, extra) = match detector {
        Detector::SsdMobilenetV1 { .. } => ("ssd_mobilenetv1", serde_json::Value::Null),
        Detector::Tiny { input_size, .. } => ("tiny_face_detector", input_size.into()),
    };
    let mut line = serde_json::json!({
        "image": path.display().to_string(),
        "width": view.width,
        "height": view.height,
        "detector": name,
        "faces": faces,
    });
    if !extra.is_null() {
        line["input_size"] = extra;
    }
    Ok(line)
}

fn face_json(f: &Face) -> serde_json::Value {
    let d = f.detection;
    let mut v = serde_json::json!({
        "score": d.score,
        "box": { "x": d.x, "y": d.y, "width": d.width, "height": d.height },
    });
    if let Some(points) = &f.landmarks {
        v["landmarks_68"] = points.iter().map(|&(x, y)| vec![x, y]).collect();
    }
    if let Some(r) = f.aligned_crop {
        v["aligned_crop"] =
            serde_json::json!({ "x": r.x, "y": r.y, "width": r.width, "height": r.height });
    }
    if let Some(desc) = &f.descriptor {
        v["descriptor"] = desc.clone().into();
    }
    v
}
