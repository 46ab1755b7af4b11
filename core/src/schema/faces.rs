//! The `faces` table: what the curate stage decided about every image it was given and every
//! face it found, kept or rejected, with the reason and the scores behind the decision.
//!
//! One row per detected face. An image that yields no face row (below the resolution limit, no
//! face found, unreadable) gets one row with the face columns null, so that every `ok` row of
//! the `images` table is accounted for. Boxes are `[x0, y0, x1, y1]` in pixels.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, FixedSizeListArray, FixedSizeListBuilder, Float32Array, Float32Builder,
    RecordBatch, StringArray, StringBuilder, UInt32Array, UInt32Builder, UInt64Array,
    UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

/// Table name recorded in the Parquet metadata.
pub const FACES_TABLE: &str = "faces";
/// Version of the schema below. Version 1: first release.
pub const FACES_SCHEMA_VERSION: u32 = 1;
/// The curate stage's HTML report, beside the `faces` table in the stage folder.
pub const REPORT_FILE: &str = "report.html";
/// Points per face in the `landmarks` column (the 68-point iBUG layout, x then y).
pub const LANDMARK_POINTS: usize = 68;

/// Whether a face (or an image) goes on to training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Passed every filter; its crop is training data.
    Kept,
    /// Stopped by the filter named in `reason`.
    Rejected,
}

impl Verdict {
    /// The value stored in the `verdict` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Kept => "kept",
            Verdict::Rejected => "rejected",
        }
    }

    /// Parses a `verdict` column value.
    pub fn parse(s: &str) -> Option<Self> {
        [Verdict::Kept, Verdict::Rejected]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// Why a face or an image was rejected, one per filter, in the order the filters run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// Image-level: the stored bytes could not be read or decoded.
    Unreadable,
    /// Image-level: the short side is below the resolution limit.
    LowResolution,
    /// Image-level: the detector found no face at all.
    NoFace,
    /// The detector's score is below the threshold.
    LowScore,
    /// The face box is smaller than the size limit on one of its sides.
    FaceTooSmall,
    /// Another face of the same image is more consistent with the identity group.
    OtherFaceInImage,
    /// The face's similarity to its group is an outlier by the relative (k·σ) rule.
    IdOutlier,
    /// The face's mean similarity to its group is below the absolute floor.
    BelowIdFloor,
    /// Near-identical to a kept face of the same identity (another crop of the same photo).
    Duplicate,
    /// The identity kept fewer images than the minimum; all its faces are flagged.
    IdentityTooSmall,
}

impl Reason {
    /// Every reason, in filter order.
    pub const ALL: [Reason; 10] = [
        Reason::Unreadable,
        Reason::LowResolution,
        Reason::NoFace,
        Reason::LowScore,
        Reason::FaceTooSmall,
        Reason::OtherFaceInImage,
        Reason::IdOutlier,
        Reason::BelowIdFloor,
        Reason::Duplicate,
        Reason::IdentityTooSmall,
    ];

    /// The value stored in the `reason` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unreadable => "unreadable",
            Reason::LowResolution => "low_resolution",
            Reason::NoFace => "no_face",
            Reason::LowScore => "low_score",
            Reason::FaceTooSmall => "face_too_small",
            Reason::OtherFaceInImage => "other_face_in_image",
            Reason::IdOutlier => "id_outlier",
            Reason::BelowIdFloor => "below_id_floor",
            Reason::Duplicate => "duplicate",
            Reason::IdentityTooSmall => "identity_too_small",
        }
    }

    /// Parses a `reason` column value.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A box `[x0, y0, x1, y1]` in pixels.
pub type BoxXyxy = [f32; 4];

/// One row of the `faces` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceRow {
    /// `row_id` of the `images` row the face was found in.
    pub row_id: u64,
    /// sha256 of the image bytes.
    pub image_id: String,
    /// Identity label from the `images` table; absent for unlabeled sources.
    pub identity: Option<String>,
    /// The group identity verification ran in: the label, or a discovered pseudo-identity
    /// (`auto-0001`, ...) for unlabeled sources. Absent for rows rejected before grouping.
    pub group: Option<String>,
    /// Position of the face in the detector's output (score order); absent on image rows.
    pub face_index: Option<u32>,
    /// Face box in source pixels (after EXIF orientation).
    pub bbox: Option<BoxXyxy>,
    /// Detector score.
    pub score: Option<f32>,
    /// 68 landmarks, `[x0, y0, x1, y1, ...]` in source pixels.
    pub landmarks: Option<Vec<f32>>,
    /// Identity embedding, L2-normalised.
    pub embedding: Option<Vec<f32>>,
    /// 64-bit DCT pHash of the reference face crop (duplicate detection).
    pub face_phash: Option<u64>,
    /// Mean cosine similarity to the other chosen faces of the group: the quantity both
    /// verification rules look at.
    pub id_score: Option<f32>,
    /// `id_score` as a robust z-score within the group: `(id_score - median) / σ̂`.
    pub id_z: Option<f32>,
    /// Kept or rejected.
    pub verdict: Verdict,
    /// Why, for rejected rows.
    pub reason: Option<Reason>,
    /// The numbers behind the reason, for people ("short side 511 < 512", ...).
    pub detail: Option<String>,
    /// For duplicates: `image_id#face_index` of the kept face it repeats.
    pub duplicate_of: Option<String>,
    /// Training crop (square, at the training resolution), relative to the run directory.
    pub crop_path: Option<String>,
    /// The crop's square in source pixels; may extend past the image where it was padded.
    pub crop_box: Option<BoxXyxy>,
    /// The face box in the crop's pixels (for a masked diffusion loss).
    pub face_box_in_crop: Option<BoxXyxy>,
    /// Reference face crop (the face box enlarged by the configured margin), relative to the
    /// run directory; for ID encoders.
    pub ref_path: Option<String>,
    /// The reference crop's box in source pixels (clipped to the image).
    pub ref_box: Option<BoxXyxy>,
}

impl FaceRow {
    /// An image-level row: the image was rejected before any face could be kept.
    pub fn image_rejected(
        row_id: u64,
        image_id: String,
        identity: Option<String>,
        reason: Reason,
        detail: String,
    ) -> Self {
        FaceRow {
            row_id,
            image_id,
            identity,
            group: None,
            face_index: None,
            bbox: None,
            score: None,
            landmarks: None,
            embedding: None,
            face_phash: None,
            id_score: None,
            id_z: None,
            verdict: Verdict::Rejected,
            reason: Some(reason),
            detail: Some(detail),
            duplicate_of: None,
            crop_path: None,
            crop_box: None,
            face_box_in_crop: None,
            ref_path: None,
            ref_box: None,
        }
    }

    /// `image_id#face_index`, the key duplicates point at.
    pub fn key(&self) -> String {
        match self.face_index {
            Some(i) => format!("{}#{i}", self.image_id),
            None => self.image_id.clone(),
        }
    }

    /// Marks the row rejected for `reason`, with the numbers behind it.
    pub fn reject(&mut self, reason: Reason, detail: impl Into<String>) {
        self.verdict = Verdict::Rejected;
        self.reason = Some(reason);
        self.detail = Some(detail.into());
    }
}

/// The whole table in memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FacesTable {
    /// Name of the embedder that produced the `embedding` column (`face-api`, `arcface:<file>`).
    pub embedder: String,
    /// Length of every embedding (128 for face-api's descriptor, 512 for ArcFace).
    pub embedding_dim: usize,
    /// The rows, sorted by `row_id` then `face_index`.
    pub rows: Vec<FaceRow>,
}

fn list_field(name: &str, len: usize) -> Field {
    Field::new(
        name,
        DataType::FixedSizeList(
            Arc::new(Field::new("item", DataType::Float32, false)),
            len as i32,
        ),
        true,
    )
}

/// The Arrow schema of a `faces` table whose embeddings have `embedding_dim` values.
pub fn faces_schema(embedding_dim: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("row_id", DataType::UInt64, false),
        Field::new("image_id", DataType::Utf8, false),
        Field::new("identity", DataType::Utf8, true),
        Field::new("group", DataType::Utf8, true),
        Field::new("face_index", DataType::UInt32, true),
        list_field("bbox", 4),
        Field::new("score", DataType::Float32, true),
        list_field("landmarks", 2 * LANDMARK_POINTS),
        list_field("embedding", embedding_dim),
        Field::new("embedder", DataType::Utf8, false),
        Field::new("face_phash", DataType::UInt64, true),
        Field::new("id_score", DataType::Float32, true),
        Field::new("id_z", DataType::Float32, true),
        Field::new("verdict", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, true),
        Field::new("detail", DataType::Utf8, true),
        Field::new("duplicate_of", DataType::Utf8, true),
        Field::new("crop_path", DataType::Utf8, true),
        list_field("crop_box", 4),
        list_field("face_box_in_crop", 4),
        Field::new("ref_path", DataType::Utf8, true),
        list_field("ref_box", 4),
    ]))
}

/// Builds a nullable FixedSizeList<f32> column; `None` rows are null.
fn f32_lists<'a>(
    len: usize,
    values: impl Iterator<Item = Option<&'a [f32]>>,
) -> Result<FixedSizeListArray> {
    let mut b = FixedSizeListBuilder::new(Float32Builder::new(), len as i32)
        .with_field(Arc::new(Field::new("item", DataType::Float32, false)));
    for v in values {
        match v {
            Some(v) if v.len() == len => {
                b.values().append_slice(v);
                b.append(true);
            }
            Some(v) => {
                return Err(CoreError::Schema {
                    path: "faces table".into(),
                    message: format!("a list of {} values where {len} are expected", v.len()),
                });
            }
            None => {
                b.values().append_slice(&vec![0.0; len]);
                b.append(false);
            }
        }
    }
    Ok(b.finish())
}

fn read_f32_list(a: &FixedSizeListArray, i: usize) -> Option<Vec<f32>> {
    a.is_valid(i).then(|| {
        a.value(i)
            .as_any()
            .downcast_ref::<Float32Array>()
            .expect("f32 list")
            .values()
            .to_vec()
    })
}

fn read_box(a: &FixedSizeListArray, i: usize) -> Option<BoxXyxy> {
    read_f32_list(a, i).map(|v| [v[0], v[1], v[2], v[3]])
}

impl FacesTable {
    /// The Arrow schema of this table.
    pub fn schema(&self) -> SchemaRef {
        faces_schema(self.embedding_dim)
    }

    /// Converts the rows into one record batch; a list of the wrong length is an error.
    pub fn to_batch(&self) -> Result<RecordBatch> {
        let rows = &self.rows;
        let n = rows.len();
        let mut row_id = UInt64Builder::with_capacity(n);
        let mut image_id = StringBuilder::new();
        let mut identity = StringBuilder::new();
        let mut group = StringBuilder::new();
        let mut face_index = UInt32Builder::with_capacity(n);
        let mut score = Float32Builder::with_capacity(n);
        let mut embedder = StringBuilder::new();
        let mut face_phash = UInt64Builder::with_capacity(n);
        let mut id_score = Float32Builder::with_capacity(n);
        let mut id_z = Float32Builder::with_capacity(n);
        let mut verdict = StringBuilder::new();
        let mut reason = StringBuilder::new();
        let mut detail = StringBuilder::new();
        let mut duplicate_of = StringBuilder::new();
        let mut crop_path = StringBuilder::new();
        let mut ref_path = StringBuilder::new();
        for r in rows {
            row_id.append_value(r.row_id);
            image_id.append_value(&r.image_id);
            identity.append_option(r.identity.as_deref());
            group.append_option(r.group.as_deref());
            face_index.append_option(r.face_index);
            score.append_option(r.score);
            embedder.append_value(&self.embedder);
            face_phash.append_option(r.face_phash);
            id_score.append_option(r.id_score);
            id_z.append_option(r.id_z);
            verdict.append_value(r.verdict.as_str());
            reason.append_option(r.reason.map(Reason::as_str));
            detail.append_option(r.detail.as_deref());
            duplicate_of.append_option(r.duplicate_of.as_deref());
            crop_path.append_option(r.crop_path.as_deref());
            ref_path.append_option(r.ref_path.as_deref());
        }
        let boxes = |f: fn(&FaceRow) -> &Option<BoxXyxy>| {
            f32_lists(4, rows.iter().map(|r| f(r).as_ref().map(|b| &b[..])))
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(row_id.finish()),
            Arc::new(image_id.finish()),
            Arc::new(identity.finish()),
            Arc::new(group.finish()),
            Arc::new(face_index.finish()),
            Arc::new(boxes(|r| &r.bbox)?),
            Arc::new(score.finish()),
            Arc::new(f32_lists(
                2 * LANDMARK_POINTS,
                rows.iter().map(|r| r.landmarks.as_deref()),
            )?),
            Arc::new(f32_lists(
                self.embedding_dim,
                rows.iter().map(|r| r.embedding.as_deref()),
            )?),
            Arc::new(embedder.finish()),
            Arc::new(face_phash.finish()),
            Arc::new(id_score.finish()),
            Arc::new(id_z.finish()),
            Arc::new(verdict.finish()),
            Arc::new(reason.finish()),
            Arc::new(detail.finish()),
            Arc::new(duplicate_of.finish()),
            Arc::new(crop_path.finish()),
            Arc::new(boxes(|r| &r.crop_box)?),
            Arc::new(boxes(|r| &r.face_box_in_crop)?),
            Arc::new(ref_path.finish()),
            Arc::new(boxes(|r| &r.ref_box)?),
        ];
        RecordBatch::try_new(self.schema(), columns).map_err(|e| CoreError::Schema {
            path: "faces table".into(),
            message: e.to_string(),
        })
    }

    /// Rebuilds the table from record batches read from a Parquet file (`path` names it in errors).
    pub fn from_batches(path: &Path, batches: &[RecordBatch]) -> Result<Self> {
        let Some(first) = batches.first() else {
            return Ok(FacesTable::default());
        };
        let schema_err = |message: String| CoreError::Schema {
            path: path.to_path_buf(),
            message,
        };
        let embedding_dim = match first
            .schema()
            .field_with_name("embedding")
            .map(|f| f.data_type().clone())
        {
            Ok(DataType::FixedSizeList(_, n)) => n as usize,
            _ => {
                return Err(schema_err(
                    "no FixedSizeList<f32> column `embedding`".into(),
                ));
            }
        };
        let expected = faces_schema(embedding_dim);
        crate::table::check_columns(path, FACES_TABLE, &expected, &first.schema())?;
        let mut table = FacesTable {
            embedder: String::new(),
            embedding_dim,
            rows: Vec::new(),
        };
        for batch in batches {
            let col = |name: &str| batch.column_by_name(name).expect("schema checked above");
            macro_rules! typed {
                ($name:expr, $ty:ty) => {
                    col($name).as_any().downcast_ref::<$ty>().unwrap()
                };
            }
            let row_id = typed!("row_id", UInt64Array);
            let image_id = typed!("image_id", StringArray);
            let identity = typed!("identity", StringArray);
            let group = typed!("group", StringArray);
            let face_index = typed!("face_index", UInt32Array);
            let bbox = typed!("bbox", FixedSizeListArray);
            let score = typed!("score", Float32Array);
            let landmarks = typed!("landmarks", FixedSizeListArray);
            let embedding = typed!("embedding", FixedSizeListArray);
            let embedder = typed!("embedder", StringArray);
            let face_phash = typed!("face_phash", UInt64Array);
            let id_score = typed!("id_score", Float32Array);
            let id_z = typed!("id_z", Float32Array);
            let verdict = typed!("verdict", StringArray);
            let reason = typed!("reason", StringArray);
            let detail = typed!("detail", StringArray);
            let duplicate_of = typed!("duplicate_of", StringArray);
            let crop_path = typed!("crop_path", StringArray);
            let crop_box = typed!("crop_box", FixedSizeListArray);
            let face_box_in_crop = typed!("face_box_in_crop", FixedSizeListArray);
            let ref_path = typed!("ref_path", StringArray);
            let ref_box = typed!("ref_box", FixedSizeListArray);
            for i in 0..batch.num_rows() {
                let s = |a: &StringArray| a.is_valid(i).then(|| a.value(i).to_string());
                if table.embedder.is_empty() {
                    table.embedder = embedder.value(i).to_string();
                }
                let v = verdict.value(i);
                let verdict = Verdict::parse(v)
                    .ok_or_else(|| schema_err(format!("row {i}: unknown verdict `{v}`")))?;
                let reason = match s(reason) {
                    None => None,
                    Some(r) => Some(
                        Reason::parse(&r)
                            .ok_or_else(|| schema_err(format!("row {i}: unknown reason `{r}`")))?,
                    ),
                };
                table.rows.push(FaceRow {
                    row_id: row_id.value(i),
                    image_id: image_id.value(i).to_string(),
                    identity: s(identity),
                    group: s(group),
                    face_index: face_index.is_valid(i).then(|| face_index.value(i)),
                    bbox: read_box(bbox, i),
                    score: score.is_valid(i).then(|| score.value(i)),
                    landmarks: read_f32_list(landmarks, i),
                    embedding: read_f32_list(embedding, i),
                    face_phash: face_phash.is_valid(i).then(|| face_phash.value(i)),
                    id_score: id_score.is_valid(i).then(|| id_score.value(i)),
                    id_z: id_z.is_valid(i).then(|| id_z.value(i)),
                    verdict,
                    reason,
                    detail: s(detail),
                    duplicate_of: s(duplicate_of),
                    crop_path: s(crop_path),
                    crop_box: read_box(crop_box, i),
                    face_box_in_crop: read_box(face_box_in_crop, i),
                    ref_path: s(ref_path),
                    ref_box: read_box(ref_box, i),
                });
            }
        }
        Ok(table)
    }

    /// Reads a `faces` Parquet file, checking its schema version.
    pub fn read(path: &Path) -> Result<Self> {
        let batches = crate::table::read_parquet(path, FACES_TABLE, FACES_SCHEMA_VERSION)?;
        Self::from_batches(path, &batches)
    }

    /// Writes the table to `path` (zstd Parquet, atomically).
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::table::write_parquet(path, &self.to_batch()?, FACES_TABLE, FACES_SCHEMA_VERSION)
    }

    /// Rows per outcome: `kept`, or the rejection reason.
    pub fn outcome_counts(&self) -> std::collections::BTreeMap<String, u64> {
        let mut counts = std::collections::BTreeMap::new();
        for r in &self.rows {
            let key = match r.reason {
                Some(reason) => reason.as_str().to_string(),
                None => r.verdict.as_str().to_string(),
            };
            *counts.entry(key).or_default() += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FacesTable {
        let mut kept = FaceRow::image_rejected(
            3,
            "ab".repeat(32),
            Some("alice".into()),
            Reason::NoFace,
            String::new(),
        );
        kept.verdict = Verdict::Kept;
        kept.reason = None;
        kept.detail = None;
        kept.group = Some("alice".into());
        kept.face_index = Some(0);
        kept.bbox = Some([10.0, 20.0, 300.5, 330.25]);
        kept.score = Some(0.98);
        kept.landmarks = Some((0..136).map(|i| i as f32 * 0.5).collect());
        kept.embedding = Some(vec![0.25; 8]);
        kept.face_phash = Some(u64::MAX - 1);
        kept.id_score = Some(0.91);
        kept.id_z = Some(-0.3);
        kept.crop_path = Some("curate/crops/ab/x.jpg".into());
        kept.crop_box = Some([-50.0, 0.0, 900.0, 950.0]);
        kept.face_box_in_crop = Some([32.0, 11.0, 190.0, 200.0]);
        kept.ref_path = Some("curate/refs/ab/x.jpg".into());
        kept.ref_box = Some([0.0, 0.0, 350.0, 360.0]);
        let dropped = FaceRow::image_rejected(
            4,
            "cd".repeat(32),
            None,
            Reason::LowResolution,
            "short side 511 < 512".into(),
        );
        FacesTable {
            embedder: "face-api".into(),
            embedding_dim: 8,
            rows: vec![kept, dropped],
        }
    }

    #[test]
    fn parquet_round_trip_keeps_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faces.parquet");
        let table = sample();
        table.write(&path).unwrap();
        assert_eq!(FacesTable::read(&path).unwrap(), table);
    }

    #[test]
    fn a_misshaped_embedding_is_an_error() {
        let mut table = sample();
        table.rows[0].embedding = Some(vec![0.0; 7]);
        let err = table.to_batch().unwrap_err().to_string();
        assert!(err.contains("7 values where 8"), "{err}");
    }

    #[test]
    fn every_reason_round_trips_and_counts_are_per_outcome() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        let counts = sample().outcome_counts();
        assert_eq!(counts.get("kept"), Some(&1));
        assert_eq!(counts.get("low_resolution"), Some(&1));
    }
}
