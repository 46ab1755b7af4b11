//! The `captions` table: the three texts every kept face crop is trained on — `general` (the
//! person, face, expression, framing), `background` (what is behind them) and `body` (body,
//! clothing, pose) — with who wrote them (captioner, model, prompt version, splitter) and what
//! it cost, so that a caption can be traced, re-used from the cache or redone.
//!
//! One row per kept face of the `faces` table, captioned or not: a caption that failed stays as
//! a `failed` row with the error and the raw reply.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, RecordBatch, StringArray, StringBuilder,
    UInt32Array, UInt32Builder, UInt64Array, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

/// Table name recorded in the Parquet metadata.
pub const CAPTIONS_TABLE: &str = "captions";
/// Version of the schema below. Version 1: first release.
pub const CAPTIONS_SCHEMA_VERSION: u32 = 1;

/// Whether the crop got its texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptionStatus {
    /// The texts are there (some parts may be null: see [`CaptionRow::background`]).
    Ok,
    /// Every attempt failed; `error` says why and `raw` holds the last reply.
    Failed,
}

impl CaptionStatus {
    /// The value stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptionStatus::Ok => "ok",
            CaptionStatus::Failed => "failed",
        }
    }

    /// Parses a `status` column value.
    pub fn parse(s: &str) -> Option<Self> {
        [CaptionStatus::Ok, CaptionStatus::Failed]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// One row of the `captions` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionRow {
    /// `row_id` of the `images` row.
    pub row_id: u64,
    /// sha256 of the source image bytes.
    pub image_id: String,
    /// The face in that image (`faces.face_index`).
    pub face_index: u32,
    /// Identity label, as in `faces`.
    pub identity: Option<String>,
    /// The group the face was verified in, as in `faces`; class words are chosen per group.
    pub group: Option<String>,
    /// The training crop that was captioned, relative to the run directory.
    pub crop_path: String,
    /// sha256 of the bytes that were captioned: the image part of the cache key.
    pub input_sha256: String,
    /// `openai`, `attributes` or `import`.
    pub captioner: String,
    /// The model behind the captioner (the server's model name, `face-api-1.7.15`, the import
    /// source).
    pub model: String,
    /// Version of the prompt file the captioner used (`one-call-v1`, ...); part of the cache key.
    pub prompt_version: String,
    /// How the caption was split: `json` (the captioner answered in parts), `rules-v1`,
    /// `llm:<model>:<prompt version>`, or `none`.
    pub splitter: String,
    /// Ok or failed.
    pub status: CaptionStatus,
    /// What went wrong, for failed rows.
    pub error: Option<String>,
    /// The whole caption before splitting (null when the captioner answered in parts).
    pub caption: Option<String>,
    /// `P_general` with the trigger placed after the class word: the training text.
    pub general: Option<String>,
    /// `P_general` as the captioner / splitter wrote it, before the trigger.
    pub general_raw: Option<String>,
    /// `P_bg`; null when the captioner does not describe backgrounds (not the same as empty).
    pub background: Option<String>,
    /// `P_body`; null when the captioner does not describe bodies.
    pub body: Option<String>,
    /// The group's class word (`man`, `woman`, ...), the most frequent among its captions.
    pub class_word: Option<String>,
    /// The trigger token placed after the class word.
    pub trigger: Option<String>,
    /// The server's raw replies (JSON array of message contents), kept for audit and failures.
    pub raw: Option<String>,
    /// HTTP requests made, retries included (0 for offline captioners).
    pub attempts: u32,
    /// True when this run took the texts from the cache instead of asking again.
    pub cached: bool,
    /// Wall time of the successful request(s), milliseconds.
    pub latency_ms: Option<u64>,
    /// Prompt tokens reported by the server (all requests of this caption).
    pub prompt_tokens: Option<u32>,
    /// Completion tokens reported by the server.
    pub completion_tokens: Option<u32>,
}

impl CaptionRow {
    /// `image_id#face_index`, the key shared with the `faces` table.
    pub fn key(&self) -> String {
        format!("{}#{}", self.image_id, self.face_index)
    }
}

/// The whole table in memory, rows sorted by `row_id` then `face_index`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CaptionsTable {
    /// The rows.
    pub rows: Vec<CaptionRow>,
}

const STRING_COLUMNS: [(&str, bool); 18] = [
    ("image_id", false),
    ("identity", true),
    ("group", true),
    ("crop_path", false),
    ("input_sha256", false),
    ("captioner", false),
    ("model", false),
    ("prompt_version", false),
    ("splitter", false),
    ("status", false),
    ("error", true),
    ("caption", true),
    ("general", true),
    ("general_raw", true),
    ("background", true),
    ("body", true),
    ("class_word", true),
    ("trigger", true),
];

fn string_of(r: &CaptionRow, column: &str) -> Option<String> {
    match column {
        "image_id" => Some(r.image_id.clone()),
        "identity" => r.identity.clone(),
        "group" => r.group.clone(),
        "crop_path" => Some(r.crop_path.clone()),
        "input_sha256" => Some(r.input_sha256.clone()),
        "captioner" => Some(r.captioner.clone()),
        "model" => Some(r.model.clone()),
        "prompt_version" => Some(r.prompt_version.clone()),
        "splitter" => Some(r.splitter.clone()),
        "status" => Some(r.status.as_str().to_string()),
        "error" => r.error.clone(),
        "caption" => r.caption.clone(),
        "general" => r.general.clone(),
        "general_raw" => r.general_raw.clone(),
        "background" => r.background.clone(),
        "body" => r.body.clone(),
        "class_word" => r.class_word.clone(),
        "trigger" => r.trigger.clone(),
        "raw" => r.raw.clone(),
        other => unreachable!("not a string column: {other}"),
    }
}

/// The Arrow schema of the `captions` table.
pub fn captions_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("row_id", DataType::UInt64, false),
        Field::new("face_index", DataType::UInt32, false),
    ];
    fields.extend(
        STRING_COLUMNS
            .iter()
            .map(|&(name, nullable)| Field::new(name, DataType::Utf8, nullable)),
    );
    fields.extend([
        Field::new("raw", DataType::Utf8, true),
        Field::new("attempts", DataType::UInt32, false),
        Field::new("cached", DataType::Boolean, false),
        Field::new("latency_ms", DataType::UInt64, true),
        Field::new("prompt_tokens", DataType::UInt32, true),
        Field::new("completion_tokens", DataType::UInt32, true),
    ]);
    Arc::new(Schema::new(fields))
}

impl CaptionsTable {
    /// Converts the rows into one record batch.
    pub fn to_batch(&self) -> Result<RecordBatch> {
        let rows = &self.rows;
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.row_id))),
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|r| r.face_index),
            )),
        ];
        for (name, _) in STRING_COLUMNS.iter().chain([&("raw", true)]) {
            let mut b = StringBuilder::new();
            for r in rows {
                b.append_option(string_of(r, name));
            }
            columns.push(Arc::new(b.finish()));
        }
        let mut attempts = UInt32Builder::new();
        let mut cached = BooleanBuilder::new();
        let mut latency = UInt64Builder::new();
        let mut prompt_tokens = UInt32Builder::new();
        let mut completion_tokens = UInt32Builder::new();
        for r in rows {
            attempts.append_value(r.attempts);
            cached.append_value(r.cached);
            latency.append_option(r.latency_ms);
            prompt_tokens.append_option(r.prompt_tokens);
            completion_tokens.append_option(r.completion_tokens);
        }
        columns.extend([
            Arc::new(attempts.finish()) as ArrayRef,
            Arc::new(cached.finish()),
            Arc::new(latency.finish()),
            Arc::new(prompt_tokens.finish()),
            Arc::new(completion_tokens.finish()),
        ]);
        RecordBatch::try_new(captions_schema(), columns).map_err(|e| CoreError::Schema {
            path: "captions table".into(),
            message: e.to_string(),
        })
    }

    /// Rebuilds the table from record batches read from a Parquet file (`path` names it in errors).
    pub fn from_batches(path: &Path, batches: &[RecordBatch]) -> Result<Self> {
        let schema_err = |message: String| CoreError::Schema {
            path: path.to_path_buf(),
            message,
        };
        let expected = captions_schema();
        let mut rows = Vec::new();
        for batch in batches {
            crate::table::check_columns(path, CAPTIONS_TABLE, &expected, &batch.schema())?;
            let col = |name: &str| batch.column_by_name(name).expect("schema checked above");
            macro_rules! typed {
                ($name:expr, $ty:ty) => {
                    col($name).as_any().downcast_ref::<$ty>().unwrap()
                };
            }
            let strings: Vec<(&str, &StringArray)> = STRING_COLUMNS
                .iter()
                .chain([&("raw", true)])
                .map(|&(name, _)| (name, typed!(name, StringArray)))
                .collect();
            let row_id = typed!("row_id", UInt64Array);
            let face_index = typed!("face_index", UInt32Array);
            let attempts = typed!("attempts", UInt32Array);
            let cached = typed!("cached", BooleanArray);
            let latency = typed!("latency_ms", UInt64Array);
            let prompt_tokens = typed!("prompt_tokens", UInt32Array);
            let completion_tokens = typed!("completion_tokens", UInt32Array);
            for i in 0..batch.num_rows() {
                let s = |name: &str| {
                    let a = strings.iter().find(|(n, _)| *n == name).unwrap().1;
                    a.is_valid(i).then(|| a.value(i).to_string())
                };
                let req = |name: &str| s(name).unwrap_or_default();
                let status = req("status");
                let status = CaptionStatus::parse(&status)
                    .ok_or_else(|| schema_err(format!("row {i}: unknown status `{status}`")))?;
                let u32_opt = |a: &UInt32Array| a.is_valid(i).then(|| a.value(i));
                rows.push(CaptionRow {
                    row_id: row_id.value(i),
                    image_id: req("image_id"),
                    face_index: face_index.value(i),
                    identity: s("identity"),
                    group: s("group"),
                    crop_path: req("crop_path"),
                    input_sha256: req("input_sha256"),
                    captioner: req("captioner"),
                    model: req("model"),
                    prompt_version: req("prompt_version"),
                    splitter: req("splitter"),
                    status,
                    error: s("error"),
                    caption: s("caption"),
                    general: s("general"),
                    general_raw: s("general_raw"),
                    background: s("background"),
                    body: s("body"),
                    class_word: s("class_word"),
                    trigger: s("trigger"),
                    raw: s("raw"),
                    attempts: attempts.value(i),
                    cached: cached.value(i),
                    latency_ms: latency.is_valid(i).then(|| latency.value(i)),
                    prompt_tokens: u32_opt(prompt_tokens),
                    completion_tokens: u32_opt(completion_tokens),
                });
            }
        }
        Ok(CaptionsTable { rows })
    }

    /// Reads a `captions` Parquet file, checking its schema version.
    pub fn read(path: &Path) -> Result<Self> {
        let batches = crate::table::read_parquet(path, CAPTIONS_TABLE, CAPTIONS_SCHEMA_VERSION)?;
        Self::from_batches(path, &batches)
    }

    /// Writes the table to `path` (zstd Parquet, atomically).
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::table::write_parquet(
            path,
            &self.to_batch()?,
            CAPTIONS_TABLE,
            CAPTIONS_SCHEMA_VERSION,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_row() -> CaptionRow {
        CaptionRow {
            row_id: 7,
            image_id: "ab".repeat(32),
            face_index: 1,
            identity: Some("alice".into()),
            group: Some("alice".into()),
            crop_path: "curate/crops/ab/x.jpg".into(),
            input_sha256: "cd".repeat(32),
            captioner: "openai".into(),
            model: "qwen2.5-vl-7b".into(),
            prompt_version: "one-call-v1".into(),
            splitter: "json".into(),
            status: CaptionStatus::Ok,
            error: None,
            caption: None,
            general: Some("a woman img with curly hair, smiling".into()),
            general_raw: Some("a woman with curly hair, smiling".into()),
            background: Some("a sunlit kitchen".into()),
            body: Some(String::new()),
            class_word: Some("woman".into()),
            trigger: Some("img".into()),
            raw: Some("[\"{...}\"]".into()),
            attempts: 2,
            cached: false,
            latency_ms: Some(812),
            prompt_tokens: Some(1200),
            completion_tokens: Some(64),
        }
    }

    #[test]
    fn parquet_round_trip_keeps_every_field_and_null_versus_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("captions.parquet");
        let mut failed = sample_row();
        failed.face_index = 2;
        failed.status = CaptionStatus::Failed;
        failed.error = Some("invalid JSON after 3 attempts".into());
        failed.general = None;
        failed.general_raw = None;
        failed.background = None;
        failed.body = None;
        failed.identity = None;
        failed.latency_ms = None;
        failed.prompt_tokens = None;
        failed.completion_tokens = None;
        failed.cached = true;
        let table = CaptionsTable {
            rows: vec![sample_row(), failed],
        };
        table.write(&path).unwrap();
        let back = CaptionsTable::read(&path).unwrap();
        assert_eq!(back, table);
        assert_eq!(back.rows[0].body.as_deref(), Some(""));
        assert_eq!(back.rows[1].body, None);
    }

    #[test]
    fn another_table_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("captions.parquet");
        crate::table::write_parquet(
            &path,
            &CaptionsTable::default().to_batch().unwrap(),
            "faces",
            1,
        )
        .unwrap();
        let err = CaptionsTable::read(&path).unwrap_err().to_string();
        assert!(err.contains("expected `captions`"), "{err}");
    }
}
