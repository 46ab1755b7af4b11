//! The `scores` table: one row per expected generation of one method (identity, prompt, seed),
//! with its per-image metrics and the features the set-level metrics need, so a leaderboard can
//! be recomputed (other bootstrap, other sets) without re-running any network.
//!
//! A generation that is missing or unreadable is a row too (`status`), never dropped: the
//! leaderboard counts it.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Float32Array, Float32Builder, ListArray,
    ListBuilder, RecordBatch, StringArray, StringBuilder, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

/// Table name in the Parquet metadata.
pub const SCORES_TABLE: &str = "scores";
/// Version of the `scores` schema; see the migration notes in `docs/ARCHITECTURE.md`.
pub const SCORES_SCHEMA_VERSION: u32 = 1;

/// Whether a generation could be scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreStatus {
    /// Found, decoded and scored.
    Ok,
    /// The protocol expects it; the method's folder does not have it.
    Missing,
    /// The file exists but does not decode.
    Unreadable,
}

impl ScoreStatus {
    /// The value stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ScoreStatus::Ok => "ok",
            ScoreStatus::Missing => "missing",
            ScoreStatus::Unreadable => "unreadable",
        }
    }

    /// The inverse of [`ScoreStatus::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [
            ScoreStatus::Ok,
            ScoreStatus::Missing,
            ScoreStatus::Unreadable,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// One expected generation and what was measured on it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ScoreRow {
    /// The method's name.
    pub method: String,
    /// The reference set (`in-train`, `out-of-train`, `out-of-domain`).
    pub set: String,
    /// The identity.
    pub identity: String,
    /// The protocol's prompt id.
    pub prompt_id: String,
    /// The prompt's category.
    pub category: String,
    /// The seed.
    pub seed: u64,
    /// The generation, relative to the bench folder.
    pub path: String,
    /// The reference image it is compared with, relative to the bench folder.
    pub reference: String,
    /// `ok`, `missing` or `unreadable`.
    pub status: Option<ScoreStatus>,
    /// Why it is not `ok`.
    pub error: Option<String>,
    /// sha256 of the generation's bytes (the score cache key).
    pub image_sha256: Option<String>,
    /// The face embedder behind `face_sim` (`face-api`, `arcface:<file>`).
    pub face_embedder: String,
    /// Whether a face was detected in the generation.
    pub face_detected: bool,
    /// Cosine of the generated and reference face embeddings; 0 when no face was detected.
    pub face_sim: Option<f32>,
    /// The generated face's box (x0, y0, x1, y1 pixels).
    pub face_box: Option<Vec<f32>>,
    /// The generated face's L2-normalised embedding (for Face-Div).
    pub face_embedding: Option<Vec<f32>>,
    /// 100 · cos(CLIP image, CLIP text of the prompt without trigger), not clamped: the
    /// leaderboard clamps the mean at 0 as torchmetrics' CLIPScore does.
    pub clip_t: Option<f32>,
    /// Cosine of the CLIP image embeddings of generation and reference.
    pub clip_i: Option<f32>,
    /// Cosine of the DINO embeddings of generation and reference.
    pub dino: Option<f32>,
    /// The generation's L2-normalised CLIP image embedding (for CMMD).
    pub clip_embedding: Option<Vec<f32>>,
    /// Inception pool3 features (for FID and KID).
    pub inception_pool3: Option<Vec<f32>>,
    /// Inception logits without the fc bias (for the Inception Score).
    pub inception_logits: Option<Vec<f32>>,
}

/// The rows of one method's `scores.parquet`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoresTable {
    /// In protocol order.
    pub rows: Vec<ScoreRow>,
}

const STRING_COLUMNS: [(&str, bool); 11] = [
    ("method", false),
    ("set", false),
    ("identity", false),
    ("prompt_id", false),
    ("category", false),
    ("path", false),
    ("reference", false),
    ("status", false),
    ("error", true),
    ("image_sha256", true),
    ("face_embedder", false),
];

const FLOAT_COLUMNS: [&str; 4] = ["face_sim", "clip_t", "clip_i", "dino"];
const LIST_COLUMNS: [&str; 5] = [
    "face_box",
    "face_embedding",
    "clip_embedding",
    "inception_pool3",
    "inception_logits",
];

fn string_of(r: &ScoreRow, column: &str) -> Option<String> {
    match column {
        "method" => Some(r.method.clone()),
        "set" => Some(r.set.clone()),
        "identity" => Some(r.identity.clone()),
        "prompt_id" => Some(r.prompt_id.clone()),
        "category" => Some(r.category.clone()),
        "path" => Some(r.path.clone()),
        "reference" => Some(r.reference.clone()),
        "status" => Some(
            r.status
                .unwrap_or(ScoreStatus::Missing)
                .as_str()
                .to_string(),
        ),
        "error" => r.error.clone(),
        "image_sha256" => r.image_sha256.clone(),
        "face_embedder" => Some(r.face_embedder.clone()),
        other => unreachable!("not a string column: {other}"),
    }
}

fn float_of(r: &ScoreRow, column: &str) -> Option<f32> {
    match column {
        "face_sim" => r.face_sim,
        "clip_t" => r.clip_t,
        "clip_i" => r.clip_i,
        "dino" => r.dino,
        other => unreachable!("not a float column: {other}"),
    }
}

fn list_of<'a>(r: &'a ScoreRow, column: &str) -> Option<&'a Vec<f32>> {
    match column {
        "face_box" => r.face_box.as_ref(),
        "face_embedding" => r.face_embedding.as_ref(),
        "clip_embedding" => r.clip_embedding.as_ref(),
        "inception_pool3" => r.inception_pool3.as_ref(),
        "inception_logits" => r.inception_logits.as_ref(),
        other => unreachable!("not a list column: {other}"),
    }
}

fn strings() -> impl Iterator<Item = (&'static str, bool)> {
    STRING_COLUMNS.into_iter()
}

fn list_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Float32, true)))
}

/// The Arrow schema of the `scores` table.
pub fn scores_schema() -> SchemaRef {
    let mut fields: Vec<Field> = strings()
        .map(|(name, nullable)| Field::new(name, DataType::Utf8, nullable))
        .collect();
    fields.push(Field::new("seed", DataType::UInt64, false));
    fields.push(Field::new("face_detected", DataType::Boolean, false));
    fields.extend(
        FLOAT_COLUMNS
            .iter()
            .map(|&n| Field::new(n, DataType::Float32, true)),
    );
    fields.extend(
        LIST_COLUMNS
            .iter()
            .map(|&n| Field::new(n, list_type(), true)),
    );
    Arc::new(Schema::new(fields))
}

impl ScoresTable {
    /// The rows as one record batch.
    pub fn to_batch(&self) -> Result<RecordBatch> {
        let rows = &self.rows;
        let mut columns: Vec<ArrayRef> = Vec::new();
        for (name, _) in strings() {
            let mut b = StringBuilder::new();
            for r in rows {
                b.append_option(string_of(r, name));
            }
            columns.push(Arc::new(b.finish()));
        }
        columns.push(Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.seed),
        )));
        let mut detected = BooleanBuilder::new();
        for r in rows {
            detected.append_value(r.face_detected);
        }
        columns.push(Arc::new(detected.finish()));
        for name in FLOAT_COLUMNS {
            let mut b = Float32Builder::new();
            for r in rows {
                b.append_option(float_of(r, name));
            }
            columns.push(Arc::new(b.finish()));
        }
        for name in LIST_COLUMNS {
            let mut b = ListBuilder::new(Float32Builder::new());
            for r in rows {
                match list_of(r, name) {
                    Some(v) => {
                        b.values().append_slice(v);
                        b.append(true);
                    }
                    None => b.append(false),
                }
            }
            columns.push(Arc::new(b.finish()));
        }
        RecordBatch::try_new(scores_schema(), columns).map_err(|e| CoreError::Schema {
            path: "scores table".into(),
            message: e.to_string(),
        })
    }

    /// Rows from record batches read from `path` (named in errors).
    pub fn from_batches(path: &Path, batches: &[RecordBatch]) -> Result<Self> {
        let expected = scores_schema();
        let mut rows = Vec::new();
        for batch in batches {
            crate::table::check_columns(path, SCORES_TABLE, &expected, &batch.schema())?;
            let col = |name: &str| batch.column_by_name(name).expect("schema checked above");
            let string = |name: &str| col(name).as_any().downcast_ref::<StringArray>().unwrap();
            let float = |name: &str| col(name).as_any().downcast_ref::<Float32Array>().unwrap();
            let list = |name: &str| col(name).as_any().downcast_ref::<ListArray>().unwrap();
            let seed = col("seed").as_any().downcast_ref::<UInt64Array>().unwrap();
            let detected = col("face_detected")
                .as_any()
                .downcast_ref::<BooleanArray>()
                .unwrap();
            for i in 0..batch.num_rows() {
                let s = |name: &str| {
                    let a = string(name);
                    a.is_valid(i).then(|| a.value(i).to_string())
                };
                let req = |name: &str| s(name).unwrap_or_default();
                let f = |name: &str| {
                    let a = float(name);
                    a.is_valid(i).then(|| a.value(i))
                };
                let l = |name: &str| {
                    let a = list(name);
                    a.is_valid(i).then(|| {
                        let v = a.value(i);
                        let v = v.as_any().downcast_ref::<Float32Array>().unwrap();
                        v.values().to_vec()
                    })
                };
                let status = req("status");
                let status = ScoreStatus::parse(&status).ok_or_else(|| CoreError::Schema {
                    path: path.to_path_buf(),
                    message: format!("row {i}: unknown status `{status}`"),
                })?;
                rows.push(ScoreRow {
                    method: req("method"),
                    set: req("set"),
                    identity: req("identity"),
                    prompt_id: req("prompt_id"),
                    category: req("category"),
                    seed: seed.value(i),
                    path: req("path"),
                    reference: req("reference"),
                    status: Some(status),
                    error: s("error"),
                    image_sha256: s("image_sha256"),
                    face_embedder: req("face_embedder"),
                    face_detected: detected.value(i),
                    face_sim: f("face_sim"),
                    face_box: l("face_box"),
                    face_embedding: l("face_embedding"),
                    clip_t: f("clip_t"),
                    clip_i: f("clip_i"),
                    dino: f("dino"),
                    clip_embedding: l("clip_embedding"),
                    inception_pool3: l("inception_pool3"),
                    inception_logits: l("inception_logits"),
                });
            }
        }
        Ok(ScoresTable { rows })
    }

    /// Writes `path` (staged, then renamed into place).
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::table::write_parquet(path, &self.to_batch()?, SCORES_TABLE, SCORES_SCHEMA_VERSION)
    }

    /// Reads `path`, refusing another table or schema version.
    pub fn read(path: &Path) -> Result<Self> {
        let batches = crate::table::read_parquet(path, SCORES_TABLE, SCORES_SCHEMA_VERSION)?;
        Self::from_batches(path, &batches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_survive_a_parquet_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.parquet");
        let ok = ScoreRow {
            method: "m".into(),
            set: "in-train".into(),
            identity: "alice".into(),
            prompt_id: "style-01".into(),
            category: "style".into(),
            seed: 3,
            path: "generations/m/alice/style-01/3.png".into(),
            reference: "references/in-train/alice/a.jpg".into(),
            status: Some(ScoreStatus::Ok),
            image_sha256: Some("ab".into()),
            face_embedder: "face-api".into(),
            face_detected: true,
            face_sim: Some(0.5),
            face_box: Some(vec![1.0, 2.0, 3.0, 4.0]),
            face_embedding: Some(vec![0.6, 0.8]),
            clip_t: Some(31.5),
            inception_pool3: Some(vec![0.0; 7]),
            ..ScoreRow::default()
        };
        let missing = ScoreRow {
            status: Some(ScoreStatus::Missing),
            error: Some("not found".into()),
            face_sim: None,
            face_detected: false,
            face_box: None,
            face_embedding: None,
            clip_t: None,
            inception_pool3: None,
            image_sha256: None,
            seed: 4,
            ..ok.clone()
        };
        let table = ScoresTable {
            rows: vec![ok, missing],
        };
        table.write(&path).unwrap();
        assert_eq!(ScoresTable::read(&path).unwrap(), table);
    }
}
