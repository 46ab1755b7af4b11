//! The `images` table: one row per input row of the ingest stage, fetched or not.
//!
//! Nothing is dropped: a row that failed or was flagged keeps its place with a `status` other
//! than `ok` and a readable `error`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, RecordBatch, StringArray, StringBuilder, TimestampMillisecondArray,
    TimestampMillisecondBuilder, UInt16Array, UInt16Builder, UInt32Array, UInt32Builder,
    UInt64Array, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

/// Table name recorded in the Parquet metadata.
pub const IMAGES_TABLE: &str = "images";
/// Version of the schema below. Version 1: first release.
pub const IMAGES_SCHEMA_VERSION: u32 = 1;

/// The fixed columns, in order. Extra columns carried from the sources follow them.
pub const FIXED_COLUMNS: [&str; 16] = [
    "row_id",
    "image_id",
    "identity",
    "source",
    "caption",
    "status",
    "error",
    "http_status",
    "width",
    "height",
    "format",
    "bytes",
    "phash",
    "store_path",
    "fetched_at",
    "duplicate_of",
];

/// What happened to an input row. Only `Ok` rows go on to curation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ImageStatus {
    /// Fetched, decoded and stored.
    Ok,
    /// The server answered with a non-success HTTP status (after retries where retryable).
    HttpError,
    /// Connect or total timeout.
    Timeout,
    /// The connection failed (refused, reset, DNS, TLS).
    ConnectError,
    /// The body ended before its announced length.
    Truncated,
    /// Body over the byte limit, or image over the pixel limit.
    TooLarge,
    /// More redirects than allowed.
    TooManyRedirects,
    /// The URL (or path) could not be used at all.
    InvalidUrl,
    /// The row's identity cannot be used as a name (a path separator, `..`, a control
    /// character, …): the row is kept with this status rather than stopping the run.
    InvalidIdentity,
    /// A local file could not be read.
    ReadError,
    /// The bytes are not an image in a supported format.
    NotImage,
    /// The image format was recognised but the data is broken.
    DecodeError,
    /// The site opted out (robots.txt or `X-Robots-Tag`).
    OptedOut,
    /// Same or near-same image as an earlier row of the same identity.
    Duplicate,
    /// Same or near-same image under two different identities.
    Conflict,
}

impl ImageStatus {
    /// Every status, in declaration order.
    pub const ALL: [ImageStatus; 15] = [
        Self::Ok,
        Self::HttpError,
        Self::Timeout,
        Self::ConnectError,
        Self::Truncated,
        Self::TooLarge,
        Self::TooManyRedirects,
        Self::InvalidUrl,
        Self::InvalidIdentity,
        Self::ReadError,
        Self::NotImage,
        Self::DecodeError,
        Self::OptedOut,
        Self::Duplicate,
        Self::Conflict,
    ];

    /// The value stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::HttpError => "http_error",
            Self::Timeout => "timeout",
            Self::ConnectError => "connect_error",
            Self::Truncated => "truncated",
            Self::TooLarge => "too_large",
            Self::TooManyRedirects => "too_many_redirects",
            Self::InvalidUrl => "invalid_url",
            Self::InvalidIdentity => "invalid_identity",
            Self::ReadError => "read_error",
            Self::NotImage => "not_image",
            Self::DecodeError => "decode_error",
            Self::OptedOut => "opted_out",
            Self::Duplicate => "duplicate",
            Self::Conflict => "conflict",
        }
    }

    /// Parses a `status` column value.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for ImageStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the `images` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRow {
    /// Position of the input row across all sources of the recipe, in source order.
    pub row_id: u64,
    /// sha256 of the bytes (hex); absent when nothing was fetched.
    pub image_id: Option<String>,
    /// Identity label; absent for unlabeled sources.
    pub identity: Option<String>,
    /// The URL or file path the row names.
    pub source: String,
    /// Caption carried from the source row.
    pub caption: Option<String>,
    /// What happened.
    pub status: ImageStatus,
    /// Why, for every status but `ok`.
    pub error: Option<String>,
    /// Final HTTP status for fetched URLs.
    pub http_status: Option<u16>,
    /// Width after EXIF orientation.
    pub width: Option<u32>,
    /// Height after EXIF orientation.
    pub height: Option<u32>,
    /// Format sniffed from the bytes (`jpg`, `png`, `webp`, ...).
    pub format: Option<String>,
    /// Size of the fetched body in bytes.
    pub bytes: Option<u64>,
    /// 64-bit DCT perceptual hash, first bit most significant (imagehash's hex order).
    pub phash: Option<u64>,
    /// Where the bytes are stored, relative to the run directory when the store is inside it.
    pub store_path: Option<String>,
    /// When the row was fetched or read.
    pub fetched_at: Option<DateTime<Utc>>,
    /// For `duplicate` and `conflict`: the `row_id` of the row it repeats.
    pub duplicate_of: Option<u64>,
    /// Values of the extra columns carried from the source, aligned with
    /// [`ImagesTable::extra_columns`].
    pub extra: Vec<Option<String>>,
}

impl ImageRow {
    /// A row that has not been processed yet, with only its input fields.
    pub fn pending(row_id: u64, source: String, identity: Option<String>) -> Self {
        ImageRow {
            row_id,
            image_id: None,
            identity,
            source,
            caption: None,
            status: ImageStatus::Ok,
            error: None,
            http_status: None,
            width: None,
            height: None,
            format: None,
            bytes: None,
            phash: None,
            store_path: None,
            fetched_at: None,
            duplicate_of: None,
            extra: Vec::new(),
        }
    }
}

/// The whole table in memory: fixed columns plus named extra columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImagesTable {
    /// Names of the extra (carried-through) columns, after the fixed ones.
    pub extra_columns: Vec<String>,
    /// The rows.
    pub rows: Vec<ImageRow>,
}

/// The Arrow schema for a table with the given extra columns.
pub fn images_schema(extra_columns: &[String]) -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let mut fields = vec![
        Field::new("row_id", DataType::UInt64, false),
        Field::new("image_id", DataType::Utf8, true),
        Field::new("identity", DataType::Utf8, true),
        Field::new("source", DataType::Utf8, false),
        Field::new("caption", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("http_status", DataType::UInt16, true),
        Field::new("width", DataType::UInt32, true),
        Field::new("height", DataType::UInt32, true),
        Field::new("format", DataType::Utf8, true),
        Field::new("bytes", DataType::UInt64, true),
        Field::new("phash", DataType::UInt64, true),
        Field::new("store_path", DataType::Utf8, true),
        Field::new("fetched_at", ts, true),
        Field::new("duplicate_of", DataType::UInt64, true),
    ];
    fields.extend(
        extra_columns
            .iter()
            .map(|c| Field::new(c, DataType::Utf8, true)),
    );
    Arc::new(Schema::new(fields))
}

impl ImagesTable {
    /// The Arrow schema of this table.
    pub fn schema(&self) -> SchemaRef {
        images_schema(&self.extra_columns)
    }

    /// Converts the rows into one record batch.
    pub fn to_batch(&self) -> RecordBatch {
        let n = self.rows.len();
        let mut row_id = UInt64Builder::with_capacity(n);
        let mut image_id = StringBuilder::new();
        let mut identity = StringBuilder::new();
        let mut source = StringBuilder::new();
        let mut caption = StringBuilder::new();
        let mut status = StringBuilder::new();
        let mut error = StringBuilder::new();
        let mut http_status = UInt16Builder::with_capacity(n);
        let mut width = UInt32Builder::with_capacity(n);
        let mut height = UInt32Builder::with_capacity(n);
        let mut format = StringBuilder::new();
        let mut bytes = UInt64Builder::with_capacity(n);
        let mut phash = UInt64Builder::with_capacity(n);
        let mut store_path = StringBuilder::new();
        let mut fetched_at = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut duplicate_of = UInt64Builder::with_capacity(n);
        let mut extra: Vec<StringBuilder> = self
            .extra_columns
            .iter()
            .map(|_| StringBuilder::new())
            .collect();
        for r in &self.rows {
            row_id.append_value(r.row_id);
            image_id.append_option(r.image_id.as_deref());
            identity.append_option(r.identity.as_deref());
            source.append_value(&r.source);
            caption.append_option(r.caption.as_deref());
            status.append_value(r.status.as_str());
            error.append_option(r.error.as_deref());
            http_status.append_option(r.http_status);
            width.append_option(r.width);
            height.append_option(r.height);
            format.append_option(r.format.as_deref());
            bytes.append_option(r.bytes);
            phash.append_option(r.phash);
            store_path.append_option(r.store_path.as_deref());
            fetched_at.append_option(r.fetched_at.map(|t| t.timestamp_millis()));
            duplicate_of.append_option(r.duplicate_of);
            for (i, b) in extra.iter_mut().enumerate() {
                b.append_option(r.extra.get(i).and_then(|v| v.as_deref()));
            }
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(row_id.finish()),
            Arc::new(image_id.finish()),
            Arc::new(identity.finish()),
            Arc::new(source.finish()),
            Arc::new(caption.finish()),
            Arc::new(status.finish()),
            Arc::new(error.finish()),
            Arc::new(http_status.finish()),
            Arc::new(width.finish()),
            Arc::new(height.finish()),
            Arc::new(format.finish()),
            Arc::new(bytes.finish()),
            Arc::new(phash.finish()),
            Arc::new(store_path.finish()),
            Arc::new(fetched_at.finish()),
            Arc::new(duplicate_of.finish()),
        ];
        columns.extend(
            extra
                .into_iter()
                .map(|mut b| Arc::new(b.finish()) as ArrayRef),
        );
        RecordBatch::try_new(self.schema(), columns).expect("images columns match their schema")
    }

    /// Rebuilds the table from record batches read from a Parquet file (`path` names it in errors).
    pub fn from_batches(path: &Path, batches: &[RecordBatch]) -> Result<Self> {
        let Some(first) = batches.first() else {
            return Ok(ImagesTable::default());
        };
        let schema = first.schema();
        let extra_columns: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| !FIXED_COLUMNS.contains(&n.as_str()))
            .collect();
        let expected = images_schema(&extra_columns);
        for (want, got) in expected.fields().iter().zip(schema.fields()) {
            if want.name() != got.name() || want.data_type() != got.data_type() {
                return Err(CoreError::Schema {
                    path: path.to_path_buf(),
                    message: format!(
                        "expected column `{}` of type {}, found `{}` of type {}",
                        want.name(),
                        want.data_type(),
                        got.name(),
                        got.data_type()
                    ),
                });
            }
        }
        let mut rows = Vec::new();
        for batch in batches {
            let col = |name: &str| batch.column_by_name(name).expect("schema checked above");
            let u64s = |name: &str| {
                col(name)
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .unwrap()
                    .clone()
            };
            let u32s = |name: &str| {
                col(name)
                    .as_any()
                    .downcast_ref::<UInt32Array>()
                    .unwrap()
                    .clone()
            };
            let strs = |name: &str| {
                col(name)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .clone()
            };
            let row_id = u64s("row_id");
            let image_id = strs("image_id");
            let identity = strs("identity");
            let source = strs("source");
            let caption = strs("caption");
            let status = strs("status");
            let error = strs("error");
            let http_status = col("http_status")
                .as_any()
                .downcast_ref::<UInt16Array>()
                .unwrap()
                .clone();
            let width = u32s("width");
            let height = u32s("height");
            let format = strs("format");
            let bytes = u64s("bytes");
            let phash = u64s("phash");
            let store_path = strs("store_path");
            let fetched_at = col("fetched_at")
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .unwrap()
                .clone();
            let duplicate_of = u64s("duplicate_of");
            let extra: Vec<StringArray> = extra_columns.iter().map(|c| strs(c)).collect();
            for i in 0..batch.num_rows() {
                let s = |a: &StringArray| a.is_valid(i).then(|| a.value(i).to_string());
                let st = status.value(i);
                let status = ImageStatus::parse(st).ok_or_else(|| CoreError::Schema {
                    path: path.to_path_buf(),
                    message: format!("row {i}: unknown status `{st}`"),
                })?;
                rows.push(ImageRow {
                    row_id: row_id.value(i),
                    image_id: s(&image_id),
                    identity: s(&identity),
                    source: source.value(i).to_string(),
                    caption: s(&caption),
                    status,
                    error: s(&error),
                    http_status: http_status.is_valid(i).then(|| http_status.value(i)),
                    width: width.is_valid(i).then(|| width.value(i)),
                    height: height.is_valid(i).then(|| height.value(i)),
                    format: s(&format),
                    bytes: bytes.is_valid(i).then(|| bytes.value(i)),
                    phash: phash.is_valid(i).then(|| phash.value(i)),
                    store_path: s(&store_path),
                    fetched_at: fetched_at
                        .is_valid(i)
                        .then(|| Utc.timestamp_millis_opt(fetched_at.value(i)).single())
                        .flatten(),
                    duplicate_of: duplicate_of.is_valid(i).then(|| duplicate_of.value(i)),
                    extra: extra.iter().map(s).collect(),
                });
            }
        }
        Ok(ImagesTable {
            extra_columns,
            rows,
        })
    }

    /// Reads an `images` Parquet file, checking its schema version.
    pub fn read(path: &Path) -> Result<Self> {
        let batches = crate::table::read_parquet(path, IMAGES_TABLE, IMAGES_SCHEMA_VERSION)?;
        Self::from_batches(path, &batches)
    }

    /// Writes the table to `path` (zstd Parquet, atomically).
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::table::write_parquet(path, &self.to_batch(), IMAGES_TABLE, IMAGES_SCHEMA_VERSION)
    }

    /// Row counts per status, every status present even at zero.
    pub fn status_counts(&self) -> Vec<(ImageStatus, usize)> {
        let mut counts: HashMap<ImageStatus, usize> = HashMap::new();
        for r in &self.rows {
            *counts.entry(r.status).or_default() += 1;
        }
        ImageStatus::ALL
            .iter()
            .map(|s| (*s, counts.get(s).copied().unwrap_or(0)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ImagesTable {
        let mut ok = ImageRow::pending(0, "http://x/a.jpg".into(), Some("alice".into()));
        ok.image_id = Some("ab".repeat(32));
        ok.width = Some(640);
        ok.height = Some(480);
        ok.format = Some("jpg".into());
        ok.bytes = Some(1234);
        ok.phash = Some(u64::MAX - 5);
        ok.http_status = Some(200);
        ok.store_path = Some("ingest/store/ab/ab.jpg".into());
        ok.fetched_at = Some(Utc.timestamp_millis_opt(1_700_000_000_123).unwrap());
        ok.extra = vec![Some("CC-BY".into())];
        let mut bad = ImageRow::pending(1, "http://x/b.jpg".into(), None);
        bad.status = ImageStatus::HttpError;
        bad.error = Some("HTTP 404 Not Found".into());
        bad.http_status = Some(404);
        bad.extra = vec![None];
        ImagesTable {
            extra_columns: vec!["license".into()],
            rows: vec![ok, bad],
        }
    }

    #[test]
    fn parquet_round_trip_keeps_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.parquet");
        let table = sample();
        table.write(&path).unwrap();
        assert_eq!(ImagesTable::read(&path).unwrap(), table);
    }

    #[test]
    fn every_status_round_trips_through_its_column_value() {
        for s in ImageStatus::ALL {
            assert_eq!(ImageStatus::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
    }

    #[test]
    fn reading_another_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.parquet");
        crate::table::write_parquet(&path, &sample().to_batch(), IMAGES_TABLE, 99).unwrap();
        let err = ImagesTable::read(&path).unwrap_err();
        assert!(matches!(err, CoreError::SchemaVersion { .. }), "{err}");
        assert!(err.to_string().contains("version 99"), "{err}");
    }
}
