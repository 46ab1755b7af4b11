//! Filters 1–3 on one image, and everything per face that needs its pixels: detection,
//! landmarks, embedding, the reference crop and its pHash, the training crop. What needs the
//! whole group (filters 4 and 5) happens when the shards are merged.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use idforge_core::RunDir;
use idforge_core::image_io::{DEFAULT_MAX_PIXELS, decode};
use idforge_core::phash::phash_rgb;
use idforge_core::schema::ImageRow;
use idforge_core::schema::faces::{BoxXyxy, FaceRow, Reason, Verdict};
use idforge_models::face_api::Detector;
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::face_embedder::FaceEmbedder;

use crate::crop;
use crate::error::CurateError;
use crate::settings::{CurateSettings, DetectorKind, EmbedderKind};
use crate::verify::l2_normalized;

/// Folder names under the stage directory, also the prefixes of the path columns.
pub const CROPS_DIR: &str = "crops";
/// Reference face crops.
pub const REFS_DIR: &str = "refs";

/// The loaded networks and the settings of filters 1–3; shared by the worker threads.
pub struct Analyzer<B: Backend> {
    faces: FaceEmbedder<B>,
    settings: CurateSettings,
}

impl<B: Backend> Analyzer<B> {
    /// Loads the detector, landmark and embedding networks the settings ask for.
    pub fn load(
        settings: &CurateSettings,
        face_api_models: &Path,
        device: &B::Device,
    ) -> Result<Self, CurateError> {
        let faces = FaceEmbedder::load(
            face_api_models,
            detector(settings),
            arcface_onnx(settings),
            device,
        )?;
        Ok(Analyzer {
            faces,
            settings: settings.clone(),
        })
    }

    /// Length of the embeddings: 128 for face-api, the ONNX model's for ArcFace.
    pub fn embedding_dim(&self) -> usize {
        self.faces.embedding_dim()
    }

    /// The name recorded in the `embedder` column.
    pub fn embedder_name(&self) -> String {
        embedder_name(&self.settings)
    }

    /// Runs filters 1–3 on `row` (its `store_path` resolved in `run`) and writes the crops of
    /// its faces under `stage_dir`.
    ///
    /// Returns the image's rows of the `faces` table: its faces (candidates still `kept`), or
    /// one image-level row. Errors are reserved for the run (a crop that cannot be written);
    /// a bad image is a row.
    pub fn analyze(
        &self,
        row: &ImageRow,
        run: &RunDir,
        stage_dir: &Path,
    ) -> Result<Vec<FaceRow>, CurateError> {
        let image_id = row.image_id.clone().unwrap_or_default();
        let reject = |reason, detail: String| {
            let mut r = FaceRow::image_rejected(
                row.row_id,
                image_id.clone(),
                row.identity.clone(),
                reason,
                detail,
            );
            r.group = row.identity.clone();
            Ok(vec![r])
        };
        let Some(store_path) = &row.store_path else {
            return reject(
                Reason::Unreadable,
                "the images row has no store_path".into(),
            );
        };
        let path = run.resolve(store_path);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => return reject(Reason::Unreadable, format!("{}: {e}", path.display())),
        };
        let decoded = match decode(&bytes, DEFAULT_MAX_PIXELS) {
            Ok(d) => d,
            Err(e) => return reject(Reason::Unreadable, format!("{}: {e}", path.display())),
        };
        let min_side = self.settings.resolution.min_short_side.u32();
        let short = decoded.width.min(decoded.height);
        if short < min_side {
            return reject(
                Reason::LowResolution,
                format!(
                    "{}×{} px: short side {short} < {min_side}",
                    decoded.width, decoded.height
                ),
            );
        }
        let rgb = decoded.image.into_rgb8();
        let img = RgbView {
            width: rgb.width() as usize,
            height: rgb.height() as usize,
            data: rgb.as_raw(),
        };
        let detections = self.faces.detect(img);
        if detections.is_empty() {
            return reject(
                Reason::NoFace,
                format!(
                    "no face scored {} or more",
                    self.settings.faces.detector_floor
                ),
            );
        }
        let f = &self.settings.faces;
        let mut rows = Vec::with_capacity(detections.len());
        let mut candidates = Vec::new();
        for (i, face) in detections.iter().enumerate() {
            let d = &face.detection;
            let bbox: BoxXyxy = [
                d.x as f32,
                d.y as f32,
                (d.x + d.width) as f32,
                (d.y + d.height) as f32,
            ];
            let mut r = FaceRow::image_rejected(
                row.row_id,
                image_id.clone(),
                row.identity.clone(),
                Reason::NoFace,
                String::new(),
            );
            r.verdict = Verdict::Kept;
            r.reason = None;
            r.detail = None;
            r.group = row.identity.clone();
            r.face_index = Some(i as u32);
            r.bbox = Some(bbox);
            r.score = Some(d.score);
            // The reference crop of every detection: the report shows even the rejected ones.
            let rect = crop::reference_rect(
                bbox,
                img.width,
                img.height,
                self.settings.crop.ref_margin.f32(),
            );
            let pixels = crop::reference_crop(img, rect);
            r.face_phash = Some(phash_rgb(pixels.width, pixels.height, &pixels.data));
            let rel = face_file(REFS_DIR, &image_id, i);
            save(stage_dir, &rel, &pixels, self.settings.crop.jpeg_quality)?;
            r.ref_path = Some(stage_relative(stage_dir, &rel));
            r.ref_box = Some(rect.map(|v| v as f32));
            let (min_score, min_px) = (f.min_score.f32(), f.min_face_px.f32());
            if d.score < min_score {
                r.reject(
                    Reason::LowScore,
                    format!("detector score {:.3} < {}", d.score, f.min_score),
                );
            } else if (d.width as f32) < min_px || (d.height as f32) < min_px {
                r.reject(
                    Reason::FaceTooSmall,
                    format!(
                        "face box {:.0}×{:.0} px, both sides must reach {}",
                        d.width, d.height, f.min_face_px
                    ),
                );
            } else {
                candidates.push(i);
            }
            rows.push(r);
        }
        if candidates.is_empty() {
            return Ok(rows);
        }
        let mut faces: Vec<_> = candidates.iter().map(|&i| detections[i].clone()).collect();
        self.faces.embed_faces(img, &mut faces);
        let c = &self.settings.crop;
        for (&i, face) in candidates.iter().zip(&faces) {
            let r = &mut rows[i];
            r.landmarks = face
                .landmarks
                .as_ref()
                .map(|p| p.iter().flat_map(|&(x, y)| [x as f32, y as f32]).collect());
            r.embedding = face.descriptor.as_deref().map(l2_normalized);
            let bbox = r.bbox.expect("set above");
            let sq = crop::training_square(bbox, img.width, img.height, c.face_share.f32());
            let pixels = crop::training_crop(img, sq, c.resolution as usize);
            let rel = face_file(CROPS_DIR, &image_id, i);
            save(stage_dir, &rel, &pixels, c.jpeg_quality)?;
            r.crop_path = Some(stage_relative(stage_dir, &rel));
            r.crop_box = Some(sq.xyxy());
            r.face_box_in_crop = Some(crop::box_in_crop(bbox, sq, c.resolution as usize));
        }
        Ok(rows)
    }
}

/// The face-api detector the settings name, with the recording floor as its threshold.
fn detector(s: &CurateSettings) -> Detector {
    match s.faces.detector {
        DetectorKind::Ssd => Detector::SsdMobilenetV1 {
            min_confidence: s.faces.detector_floor.f32(),
            max_results: s.faces.max_faces.usize(),
        },
        DetectorKind::Tiny => Detector::Tiny {
            input_size: 416,
            score_threshold: s.faces.detector_floor.f32(),
        },
    }
}

/// `face-api` or `arcface:<file name>`.
pub fn embedder_name(s: &CurateSettings) -> String {
    idforge_models::face_embedder::embedder_name(arcface_onnx(s))
}

/// The ArcFace model the settings choose, if they choose one.
fn arcface_onnx(s: &CurateSettings) -> Option<&Path> {
    match (&s.embedder.kind, &s.embedder.arcface_onnx) {
        (EmbedderKind::Arcface, Some(p)) => Some(p.as_path()),
        _ => None,
    }
}

/// `<dir>/<ab>/<image_id>-<face>.jpg`, fanned out by the hash's first byte.
fn face_file(dir: &str, image_id: &str, face: usize) -> PathBuf {
    let fan = image_id.get(..2).unwrap_or("xx");
    Path::new(dir)
        .join(fan)
        .join(format!("{image_id}-{face}.jpg"))
}

/// A stage-relative file as the run-relative path stored in the table (`curate/crops/...`).
fn stage_relative(stage_dir: &Path, rel: &Path) -> String {
    let stage = stage_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{stage}/{}", rel.display())
}

fn save(
    stage_dir: &Path,
    rel: &Path,
    pixels: &idforge_core::resample::Plane8,
    quality: u8,
) -> Result<(), CurateError> {
    let path = stage_dir.join(rel);
    crop::save_jpeg(&path, pixels, quality).map_err(|e| idforge_core::CoreError::io(path, e).into())
}
