//! Parquet files of the stage tables: zstd-compressed, written atomically (temporary file, then
//! rename) so that a killed process never leaves half a table, and stamped with the table name
//! and schema version so that readers can refuse what they do not understand.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::error::{CoreError, IoContext, Result};

/// Metadata key naming the table (`images`, `faces`, ...).
pub const TABLE_KEY: &str = "idforge.table";
/// Metadata key holding the table's schema version.
pub const VERSION_KEY: &str = "idforge.schema_version";

fn table_err(path: &Path, e: impl std::fmt::Display) -> CoreError {
    CoreError::Table {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// A sibling path for writing before the atomic rename, unique across hosts and processes
/// (array tasks on a shared filesystem repeat process ids).
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", crate::unique::unique_tag()))
}

/// Writes `batch` to `path` as zstd Parquet with the table name and version in its metadata.
pub fn write_parquet(path: &Path, batch: &RecordBatch, table: &str, version: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid zstd level"),
        ))
        .set_key_value_metadata(Some(vec![
            KeyValue::new(TABLE_KEY.to_string(), table.to_string()),
            KeyValue::new(VERSION_KEY.to_string(), version.to_string()),
        ]))
        .build();
    let tmp = temp_sibling(path);
    let file = File::create(&tmp).at(&tmp)?;
    let mut writer =
        ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(|e| table_err(path, e))?;
    writer.write(batch).map_err(|e| table_err(path, e))?;
    let file = writer.into_inner().map_err(|e| table_err(path, e))?;
    file.sync_all().at(&tmp)?;
    std::fs::rename(&tmp, path).at(path)?;
    Ok(())
}

/// Reads every batch of `path`, checking that it holds `table` at schema `version`.
pub fn read_parquet(path: &Path, table: &str, version: u32) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).at(path)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| table_err(path, e))?;
    let kv = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    let get = |k: &str| kv.iter().find(|e| e.key == k).and_then(|e| e.value.clone());
    match get(TABLE_KEY) {
        Some(t) if t == table => {}
        Some(t) => {
            return Err(table_err(
                path,
                format!("holds table `{t}`, expected `{table}`"),
            ));
        }
        None => {
            return Err(table_err(
                path,
                format!(
                    "has no `{TABLE_KEY}` metadata; it was not written by idforge as `{table}`"
                ),
            ));
        }
    }
    let found = get(VERSION_KEY).unwrap_or_default();
    if found != version.to_string() {
        return Err(CoreError::SchemaVersion {
            path: path.to_path_buf(),
            table: table.to_string(),
            found,
            expected: version,
        });
    }
    let reader = builder.build().map_err(|e| table_err(path, e))?;
    reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| table_err(path, e))
}

/// The table name stamped in an idforge Parquet file (`images`, `faces`, ...), or `None` for a
/// Parquet file idforge did not write; lets a reader given any table file pick its type.
pub fn table_name(path: &Path) -> Result<Option<String>> {
    let file = File::open(path).at(path)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| table_err(path, e))?;
    Ok(builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|e| e.key == TABLE_KEY))
        .and_then(|e| e.value.clone()))
}

/// Checks that `found` has exactly the columns (names and types, in order) of `expected`, the
/// schema of table `table`; the error names the first column that differs.
pub fn check_columns(
    path: &Path,
    table: &str,
    expected: &arrow::datatypes::Schema,
    found: &arrow::datatypes::Schema,
) -> Result<()> {
    let err = |message: String| CoreError::Schema {
        path: path.to_path_buf(),
        message,
    };
    if expected.fields().len() != found.fields().len() {
        return Err(err(format!(
            "{} columns where the {table} schema has {}",
            found.fields().len(),
            expected.fields().len()
        )));
    }
    for (want, got) in expected.fields().iter().zip(found.fields()) {
        if want.name() != got.name() || want.data_type() != got.data_type() {
            return Err(err(format!(
                "expected column `{}` of type {}, found `{}` of type {}",
                want.name(),
                want.data_type(),
                got.name(),
                got.data_type()
            )));
        }
    }
    Ok(())
}
