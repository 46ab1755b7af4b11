//! Per-image scoring: every expected generation of a method against its reference(s), on all
//! cores, into the method's `scores` table. Features the set-level metrics need (Inception
//! pool3 and logits, CLIP image embeddings, face embeddings) are kept in the table too, so the
//! leaderboard is recomputed without any network.
//!
//! Scores are cached per image: a re-run reuses every row whose image bytes (sha256) and
//! networks are unchanged, so importing one new method scores only that method.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use idforge_core::hash::sha256_hex;
use idforge_core::image_io::{DEFAULT_MAX_PIXELS, decode};
use idforge_core::progress::Progress;
use idforge_core::schema::{ScoreRow, ScoreStatus, ScoresTable};
use idforge_models::clip::ClipCheckpoint;
use idforge_models::dino::DinoEmbedder;
use idforge_models::face_api::Detector;
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::face_embedder::FaceEmbedder;
use idforge_models::inception::{FidInception, FidPreprocess};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::baselines::COPY_REFERENCE;
use crate::error::BenchError;
use crate::generations::find_generation;
use crate::layout::BenchDir;
use crate::leaderboard::ModelsUsed;
use crate::plan::Job;

/// The networks behind the metrics; the optional ones switch their metrics on.
pub struct ScoringModels<B: Backend> {
    /// Detector, landmarks and the face embedder (Face-Sim, face failures, Face-Div).
    pub faces: FaceEmbedder<B>,
    /// CLIP (CLIP-T, CLIP-I, CMMD).
    pub clip: Option<ClipCheckpoint<B>>,
    /// DINO (DINO similarity).
    pub dino: Option<(DinoEmbedder<B>, String)>,
    /// pytorch-fid's Inception (FID, KID, IS), with its fc bias and the weights' name.
    pub inception: Option<(FidInception<B>, Vec<f32>, String)>,
}

impl<B: Backend> ScoringModels<B> {
    /// The networks' names, as the leaderboard records them.
    pub fn used(&self) -> ModelsUsed {
        ModelsUsed {
            face_embedder: self.faces.name(),
            clip: self.clip.as_ref().map(|c| c.name.clone()),
            dino: self.dino.as_ref().map(|(_, n)| n.clone()),
            inception: self.inception.as_ref().map(|(_, _, n)| n.clone()),
            face_detector: Some(detector_label(self.faces.detector())),
        }
    }

    /// Wraps a loaded Inception with what scoring needs from it.
    pub fn with_inception(mut self, net: FidInception<B>, name: String) -> Self {
        let bias = net.fc_bias();
        self.inception = Some((net, bias, name));
        self
    }
}

/// What the networks see in one image.
#[derive(Debug, Clone, Default)]
pub struct ImageFeatures {
    /// The largest face's box and L2-normalised embedding.
    pub face: Option<([f32; 4], Vec<f32>)>,
    /// L2-normalised CLIP image embedding.
    pub clip: Option<Vec<f32>>,
    /// DINO CLS embedding.
    pub dino: Option<Vec<f32>>,
    /// Inception pool3.
    pub pool3: Option<Vec<f32>>,
    /// Inception logits without the fc bias.
    pub logits: Option<Vec<f32>>,
}

impl<B: Backend> ScoringModels<B>
where
    ScoringModels<B>: Sync,
{
    /// Runs every loaded network on one image.
    pub fn features(&self, img: RgbView<'_>) -> ImageFeatures {
        let face = self.faces.largest_face(img).map(|(f, e)| {
            let d = &f.detection;
            let bbox = [d.x, d.y, d.x + d.width, d.y + d.height].map(|v| v as f32);
            (bbox, e)
        });
        let clip = self.clip.as_ref().map(|c| c.embed_images(&[img]).remove(0));
        let dino = self.dino.as_ref().map(|(d, _)| d.embed(img));
        let (pool3, logits) = match &self.inception {
            Some((net, bias, _)) => {
                let (pool3, logits) = net.features(img, FidPreprocess::Clean);
                let unbiased = logits.iter().zip(bias).map(|(l, b)| l - b).collect();
                (Some(pool3), Some(unbiased))
            }
            None => (None, None),
        };
        ImageFeatures {
            face,
            clip,
            dino,
            pool3,
            logits,
        }
    }

    /// Scores one method's generations (or, for `copy-reference`, the references themselves)
    /// and writes `scores/<method>.parquet`. Rows of a previous run with the same image bytes
    /// and networks are reused.
    pub fn score_method(
        &self,
        bench: &BenchDir,
        method: &str,
        jobs: &[Job],
        references: &ReferenceFeatures,
    ) -> Result<ScoresTable, BenchError> {
        let key = Sidecar {
            models: self.used(),
            references_sha256: references.sha256.clone(),
        };
        let path = bench.scores_path(method);
        let cached = read_cache(&path, &key);
        let method_dir = bench.method_dir(method);
        let progress = Progress::new(format!("scoring {method}"), jobs.len() as u64);
        let texts = self.prompt_embeddings(jobs)?;
        let rows: Vec<ScoreRow> = jobs
            .par_iter()
            .map(|job| {
                let row =
                    self.score_job(bench, method, &method_dir, job, references, &texts, &cached);
                progress.inc(1);
                row
            })
            .collect::<Result<_, _>>()?;
        progress.finish();
        let table = ScoresTable { rows };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| BenchError::io(dir, e))?;
        }
        table.write(&path)?;
        write_models_sidecar(&path, &key)?;
        Ok(table)
    }

    /// CLIP text embeddings of every distinct prompt (trigger removed).
    fn prompt_embeddings(&self, jobs: &[Job]) -> Result<HashMap<String, Vec<f32>>, BenchError> {
        let Some(clip) = &self.clip else {
            return Ok(HashMap::new());
        };
        let mut texts: Vec<&str> = jobs.iter().map(|j| j.prompt_clip.as_str()).collect();
        texts.sort_unstable();
        texts.dedup();
        let embeds = texts
            .par_chunks(16)
            .map(|chunk| clip.embed_texts(chunk))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(texts
            .into_iter()
            .map(String::from)
            .zip(embeds.into_iter().flatten())
            .collect())
    }

    #[allow(clippy::too_many_arguments)]
    fn score_job(
        &self,
        bench: &BenchDir,
        method: &str,
        method_dir: &Path,
        job: &Job,
        references: &ReferenceFeatures,
        texts: &HashMap<String, Vec<f32>>,
        cached: &HashMap<(String, String), ScoreRow>,
    ) -> Result<ScoreRow, BenchError> {
        let mut row = ScoreRow {
            method: method.to_string(),
            set: job.set.clone(),
            identity: job.identity.clone(),
            prompt_id: job.prompt_id.clone(),
            category: job.category.clone(),
            seed: job.seed,
            reference: job.references.join(","),
            face_embedder: self.faces.name(),
            ..ScoreRow::default()
        };
        let file: Option<PathBuf> = if method == COPY_REFERENCE {
            Some(bench.root.join(&job.references[0]))
        } else {
            find_generation(method_dir, &job.identity, &job.prompt_id, job.seed)
        };
        let Some(file) = file else {
            row.path = format!("{}/{}", bench.relative(method_dir), job.output);
            row.status = Some(ScoreStatus::Missing);
            row.error = Some("no such file".into());
            return Ok(row);
        };
        row.path = bench.relative(&file);
        let bytes = std::fs::read(&file).map_err(|e| BenchError::io(&file, e))?;
        let sha = sha256_hex(&bytes);
        if let Some(hit) = cached.get(&(row.path.clone(), sha.clone())) {
            let mut hit = hit.clone();
            // The job's own fields may have changed (class word, set); the measurements not.
            hit.set = row.set;
            hit.identity = row.identity;
            hit.prompt_id = row.prompt_id;
            hit.category = row.category;
            hit.seed = row.seed;
            hit.reference = row.reference;
            return Ok(hit);
        }
        row.image_sha256 = Some(sha);
        // copy-reference's images are the references, whose features are already computed.
        let known = (method == COPY_REFERENCE)
            .then(|| references.get(&job.references[0]).cloned())
            .flatten();
        let f = match known {
            Some(f) => f,
            None => match decode(&bytes, DEFAULT_MAX_PIXELS) {
                Ok(d) => {
                    let decoded = d.image.into_rgb8();
                    self.features(RgbView {
                        width: decoded.width() as usize,
                        height: decoded.height() as usize,
                        data: decoded.as_raw(),
                    })
                }
                Err(e) => {
                    row.status = Some(ScoreStatus::Unreadable);
                    row.error = Some(e.to_string());
                    return Ok(row);
                }
            },
        };
        let refs: Vec<&ImageFeatures> = job
            .references
            .iter()
            .filter_map(|r| references.get(r))
            .collect();
        row.status = Some(ScoreStatus::Ok);
        row.face_detected = f.face.is_some();
        let ref_faces: Vec<&Vec<f32>> = refs
            .iter()
            .filter_map(|r| r.face.as_ref().map(|(_, e)| e))
            .collect();
        if !ref_faces.is_empty() {
            row.face_sim = Some(match &f.face {
                Some((_, e)) => mean(ref_faces.iter().map(|r| cosine(e, r))),
                None => 0.0,
            });
        }
        if let Some((bbox, e)) = &f.face {
            row.face_box = Some(bbox.to_vec());
            row.face_embedding = Some(e.clone());
        }
        if let Some(c) = &f.clip {
            row.clip_t = texts.get(&job.prompt_clip).map(|t| 100.0 * cosine(c, t));
            row.clip_i = mean_opt(
                refs.iter()
                    .filter_map(|r| r.clip.as_ref())
                    .map(|r| cosine(c, r)),
            );
            row.clip_embedding = Some(c.clone());
        }
        if let Some(d) = &f.dino {
            row.dino = mean_opt(
                refs.iter()
                    .filter_map(|r| r.dino.as_ref())
                    .map(|r| cosine(d, r)),
            );
        }
        row.inception_pool3 = f.pool3;
        row.inception_logits = f.logits;
        Ok(row)
    }
}

/// `ssd_mobilenetv1@0.5` or `tiny_face_detector@0.5`: the detector and threshold the
/// leaderboard records.
pub fn detector_label(d: Detector) -> String {
    match d {
        Detector::SsdMobilenetV1 { min_confidence, .. } => {
            format!("ssd_mobilenetv1@{min_confidence}")
        }
        Detector::Tiny {
            score_threshold, ..
        } => format!("tiny_face_detector@{score_threshold}"),
    }
}

/// Whether the scoring detector finds a face in the image at `path` (`bench init`'s check of
/// every reference).
pub fn has_face<B: Backend>(faces: &FaceEmbedder<B>, path: &Path) -> Result<bool, BenchError> {
    let bytes = std::fs::read(path).map_err(|e| BenchError::io(path, e))?;
    let img = decode(&bytes, DEFAULT_MAX_PIXELS)
        .map_err(|e| BenchError::invalid(path, format!("reference does not decode: {e}")))?
        .image
        .into_rgb8();
    let view = RgbView {
        width: img.width() as usize,
        height: img.height() as usize,
        data: img.as_raw(),
    };
    Ok(!faces.detect(view).is_empty())
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    (ab / (aa.sqrt() * bb.sqrt())) as f32
}

fn mean(values: impl Iterator<Item = f32>) -> f32 {
    mean_opt(values).unwrap_or(0.0)
}

fn mean_opt(values: impl Iterator<Item = f32>) -> Option<f32> {
    let (mut sum, mut n) = (0f64, 0usize);
    for v in values {
        sum += f64::from(v);
        n += 1;
    }
    (n > 0).then(|| (sum / n as f64) as f32)
}

/// The reference images' features, computed once per run and shared by every method.
#[derive(Debug, Clone, Default)]
pub struct ReferenceFeatures {
    by_path: BTreeMap<String, ImageFeatures>,
    /// [`crate::references::References::sha256`]: cached scores are valid for these photos only.
    pub sha256: String,
    /// References in which no face was detected (their identities get no Face-Sim).
    pub faceless: Vec<String>,
}

impl ReferenceFeatures {
    /// Runs the networks on every reference of the jobs (on all cores).
    pub fn compute<B: Backend>(
        models: &ScoringModels<B>,
        bench: &BenchDir,
        jobs: &[Job],
        references_sha256: &str,
    ) -> Result<Self, BenchError>
    where
        ScoringModels<B>: Sync,
    {
        let mut paths: Vec<&String> = jobs.iter().flat_map(|j| &j.references).collect();
        paths.sort();
        paths.dedup();
        let progress = Progress::new("reference features", paths.len() as u64);
        let by_path: BTreeMap<String, ImageFeatures> = paths
            .par_iter()
            .map(|rel| {
                let path = bench.root.join(rel);
                let bytes = std::fs::read(&path).map_err(|e| BenchError::io(&path, e))?;
                let img = decode(&bytes, DEFAULT_MAX_PIXELS)
                    .map_err(|e| {
                        BenchError::invalid(&path, format!("reference does not decode: {e}"))
                    })?
                    .image
                    .into_rgb8();
                let view = RgbView {
                    width: img.width() as usize,
                    height: img.height() as usize,
                    data: img.as_raw(),
                };
                let f = models.features(view);
                progress.inc(1);
                Ok(((*rel).clone(), f))
            })
            .collect::<Result<_, BenchError>>()?;
        progress.finish();
        let faceless = by_path
            .iter()
            .filter(|(_, f)| f.face.is_none())
            .map(|(p, _)| p.clone())
            .collect();
        Ok(ReferenceFeatures {
            by_path,
            sha256: references_sha256.to_string(),
            faceless,
        })
    }

    /// The features of one reference (path relative to the bench folder).
    pub fn get(&self, path: &str) -> Option<&ImageFeatures> {
        self.by_path.get(path)
    }

    /// All references' features, by path.
    pub fn all(&self) -> &BTreeMap<String, ImageFeatures> {
        &self.by_path
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Sidecar {
    models: ModelsUsed,
    references_sha256: String,
}

fn sidecar_path(scores: &Path) -> PathBuf {
    scores.with_extension("models.json")
}

fn write_models_sidecar(scores: &Path, key: &Sidecar) -> Result<(), BenchError> {
    let p = sidecar_path(scores);
    let text = serde_json::to_string_pretty(key).expect("serialisable");
    std::fs::write(&p, text).map_err(|e| BenchError::io(&p, e))
}

/// The networks a method's scores were computed with (for `bench leaderboard`).
pub fn models_of(bench: &BenchDir, method: &str) -> Result<ModelsUsed, BenchError> {
    let p = sidecar_path(&bench.scores_path(method));
    let text = std::fs::read_to_string(&p).map_err(|e| BenchError::io(&p, e))?;
    serde_json::from_str::<Sidecar>(&text)
        .map(|s| s.models)
        .map_err(|e| BenchError::invalid(&p, e.to_string()))
}

/// The previous run's `ok` rows by (path, sha256), when it used the same networks and
/// reference photos.
fn read_cache(scores: &Path, key: &Sidecar) -> HashMap<(String, String), ScoreRow> {
    let same_models = std::fs::read_to_string(sidecar_path(scores))
        .ok()
        .and_then(|t| serde_json::from_str::<Sidecar>(&t).ok())
        .is_some_and(|s| &s == key);
    if !same_models {
        return HashMap::new();
    }
    let Ok(table) = ScoresTable::read(scores) else {
        return HashMap::new();
    };
    table
        .rows
        .into_iter()
        .filter(|r| r.status == Some(ScoreStatus::Ok))
        .filter_map(|r| Some(((r.path.clone(), r.image_sha256.clone()?), r)))
        .collect()
}
