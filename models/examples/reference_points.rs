//! Writes the faces idforge finds in the reference-inputs fixture photos (the largest face's
//! box and insightface's five points, from face-api's SSD and 68 landmarks), so that
//! `tools/reference-inputs/make_fixtures.py` aligns and embeds exactly those faces in Python.
//!
//! ```sh
//! cargo run -p idforge-models --example reference_points   # → models/tests/fixtures/reference/points.json
//! ```
//!
//! Needs face-api's weights in the asset cache (`make assets`).

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use idforge_models::face_api::Detector;
use idforge_models::face_embedder::FaceEmbedder;
use idforge_models::reference::{ReferenceEncoder, ReferenceNeeds};

/// The photos: face-api's sample photographs at 640 px, lossless (so Python reads the same
/// pixels), committed with the face-api fixtures.
const PHOTOS: [&str; 3] = ["sample1_640.png", "sample4_640.png", "sample6_640.png"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures.join("reference/points.json"));
    let face_api = idforge_core::cache::face_api_dir_if_fetched()
        .ok_or("face-api's weights are not in the asset cache: run `make assets`")?
        .join("model");
    let device = Default::default();
    // The ArcFace model does not move the points; the tiny fixture keeps this quick.
    let arcface = fixtures.join("iresnet/iresnet18_w4_mxnet.onnx");
    let faces =
        FaceEmbedder::<Flex>::load(&face_api, Detector::default(), Some(&arcface), &device)?;
    let encoder = ReferenceEncoder::new(Some(faces), None);
    let needs = ReferenceNeeds {
        face: true,
        clip: None,
    };
    let mut photos = Vec::new();
    for name in PHOTOS {
        let r = encoder.encode_file(&fixtures.join("face-api").join(name), &needs)?;
        let f = r.face.expect("asked for");
        let d = f.face.detection;
        photos.push(serde_json::json!({
            "image": name,
            "box": [d.x, d.y, d.x + d.width, d.y + d.height],
            "score": d.score,
            "points": f.points.iter().map(|&(x, y)| [x, y]).collect::<Vec<_>>(),
        }));
    }
    let doc = serde_json::json!({
        "generator": "models/examples/reference_points.rs",
        "detector": "face-api ssd_mobilenetv1 (score >= 0.5), largest box; 68 landmarks -> \
                     five points (mean 36-41, mean 42-47, 30, 48, 54)",
        "photos": photos,
    });
    std::fs::create_dir_all(out.parent().unwrap_or(Path::new(".")))?;
    std::fs::write(&out, serde_json::to_string_pretty(&doc)? + "\n")?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
