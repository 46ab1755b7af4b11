//! The export: kept faces joined with their captions, split by identity, written as Parquet
//! shards that `datasets` loads with its `Image` feature, with the dataset card beside them.
//!
//! ```text
//! runs/<name>/curate/faces.parquet (kept) ─┐
//! runs/<name>/caption/captions.parquet (ok)┴─► join on (image_id, face_index)
//!    → identity (label, else group) → validation identities by sha256(seed ‖ identity)
//!    → rows sorted by identity, row_id, face_index → crops and reference crops read
//!    → <out>/data/{train,validation}-NNNNN-of-MMMMM.parquet, <out>/README.md,
//!      <out>/idforge-export.json
//! ```
//!
//! Every kept face is accounted for: exported, or counted in [`Skipped`] by cause. The output
//! folder is written as a whole or not at all: shards and card go to a staging folder inside it,
//! then replace the previous export's `data/`, `README.md` and `idforge-export.json` by renames,
//! so no stale shard survives a re-export. Other entries whose names start with `.` (the `.git`
//! and `.gitattributes` of a cloned dataset repository) are left alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayData, ArrayRef, BinaryBuilder, FixedSizeListBuilder, Float32Builder, RecordBatch,
    StringArray, StringBuilder, StructArray, UInt32Array,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::DataType;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use idforge_core::RunDir;
use idforge_core::schema::dataset::{
    COLUMNS, DATA_DIR, FACE_BOX, HF_METADATA_KEY, IMAGE, REF_IMAGE, Split, dataset_schema,
    huggingface_metadata, image_struct_type,
};
use idforge_core::schema::{
    CaptionRow, CaptionStatus, CaptionsTable, DatasetExport, FaceRow, FacesTable, TableSpec,
    Verdict,
};

use crate::card;
use crate::error::{At, DatasetError};

/// The file that marks a folder as an idforge export and records how it was made; a re-export
/// replaces only folders that have it.
pub const EXPORT_MARKER: &str = "idforge-export.json";
/// Rows per Parquet row group: what `datasets` uses for image datasets, so that a reader (the
/// Hub's viewer among them) never has to load more than 100 images at once.
pub const ROW_GROUP_ROWS: usize = 100;
/// `format` value of [`EXPORT_MARKER`].
const MARKER_FORMAT: &str = "idforge-dataset-export";
const STAGING_PREFIX: &str = ".idforge-staging-";
const OLD_PREFIX: &str = ".idforge-old-";

/// How to export a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportOptions {
    /// Output folder: it gets `data/`, `README.md` and `idforge-export.json`. It must be absent,
    /// empty (entries starting with `.` aside) or a previous export, which is replaced.
    pub out: PathBuf,
    /// Share of the identities held out as the validation split, in `[0, 1)`; rounded up, at
    /// least one identity when there are two or more and the share is above 0, never all.
    pub val_fraction: f64,
    /// The validation identities by name, instead of drawing them; each must have exported rows.
    pub val_identities: Option<Vec<String>>,
    /// Seed of the draw: the same seed and identities give the same split on any machine.
    pub seed: u64,
    /// Most rows in one shard (about 60 KB each at 512 px; 2000 rows ≈ 120 MB).
    pub rows_per_shard: usize,
    /// The card's `license` field: an SPDX-like Hub identifier (`cc-by-4.0`, `mit`, ...).
    /// `other` by default, because the licence is that of the source images, which idforge
    /// cannot know; set it to what the sources allow before publishing.
    pub license: String,
    /// The card's `pretty_name`; the run folder's name when absent.
    pub pretty_name: Option<String>,
    /// Also export kept faces whose caption failed or is missing, with null prompts (for
    /// training that needs only the images and identities).
    pub include_uncaptioned: bool,
    /// Skip (and count) kept faces whose crop or reference crop file is gone, instead of
    /// stopping with an error.
    pub skip_missing_files: bool,
}

impl ExportOptions {
    /// Options with the defaults the CLI shows, writing to `out`.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        ExportOptions {
            out: out.into(),
            val_fraction: 0.1,
            val_identities: None,
            seed: 0,
            rows_per_shard: 2000,
            license: "other".to_string(),
            pretty_name: None,
            include_uncaptioned: false,
            skip_missing_files: false,
        }
    }

    fn validate(&self) -> Result<(), DatasetError> {
        if !(self.val_fraction.is_finite() && (0.0..1.0).contains(&self.val_fraction)) {
            return Err(DatasetError::Options(format!(
                "the validation fraction must be at least 0 and below 1, got {}",
                self.val_fraction
            )));
        }
        if self.rows_per_shard == 0 {
            return Err(DatasetError::Options(
                "rows per shard must be at least 1".into(),
            ));
        }
        if self.license.trim().is_empty() {
            return Err(DatasetError::Options(
                "the license must not be empty (use `other` when unsure)".into(),
            ));
        }
        Ok(())
    }
}

/// Where an export goes when no folder is given: `<run>/dataset`, beside the stage folders.
pub fn default_out(run_dir: &Path) -> PathBuf {
    RunDir::at(run_dir)
        .stage(DatasetExport::STAGE)
        .path()
        .to_path_buf()
}

/// One split as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitSummary {
    /// `train` or `validation`.
    pub name: String,
    /// Rows (faces) in the split.
    pub rows: usize,
    /// Its identities, sorted, with their row counts.
    pub identities: BTreeMap<String, usize>,
    /// Size of the split in memory as Arrow, counted as `datasets` counts it (the card's
    /// `num_bytes`; see [`arrow_nbytes`]).
    pub num_bytes: u64,
    /// Size of the shard files on disk (their sum over splits is the card's `download_size`).
    pub file_bytes: u64,
    /// The shard files, relative to the output folder, in order.
    pub shards: Vec<String>,
}

/// Kept faces that were not exported, by cause.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The caption stage gave up on the face (`status = failed`).
    pub caption_failed: usize,
    /// The captions table has no row for the face (caption stage not finished, or run before
    /// curate was re-run).
    pub missing_caption: usize,
    /// The crop or reference crop file is gone (only with `skip_missing_files`).
    pub missing_file: usize,
}

impl Skipped {
    /// All skipped faces.
    pub fn total(&self) -> usize {
        self.caption_failed + self.missing_caption + self.missing_file
    }
}

/// What an export wrote and what it left out; `kept_faces = train.rows + validation.rows +
/// skipped.total()` always holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportSummary {
    /// The run folder read.
    pub run: PathBuf,
    /// The output folder written.
    pub out: PathBuf,
    /// Kept faces in the faces table.
    pub kept_faces: usize,
    /// The training split.
    pub train: SplitSummary,
    /// The held-out identities (may be empty: then the card declares no validation split).
    pub validation: SplitSummary,
    /// Kept faces not exported, by cause.
    pub skipped: Skipped,
    /// Exported faces without texts (with `include_uncaptioned`).
    pub uncaptioned: usize,
    /// Caption rows for faces that are not kept (curate re-run after captioning); ignored.
    pub orphan_captions: usize,
    /// Things the user should know (a single identity, a clamped validation share, ...).
    pub notes: Vec<String>,
}

impl ExportSummary {
    /// Rows written, both splits.
    pub fn rows(&self) -> usize {
        self.train.rows + self.validation.rows
    }

    /// The splits in card order, empty ones included.
    pub fn splits(&self) -> [&SplitSummary; 2] {
        [&self.train, &self.validation]
    }
}

/// Contents of [`EXPORT_MARKER`].
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    format: String,
    format_version: u32,
    /// `writing` while the folder is being replaced, `complete` after.
    state: String,
    options: ExportOptions,
    summary: ExportSummary,
}

/// A kept face to export.
struct Row<'a> {
    face: &'a FaceRow,
    face_index: u32,
    caption: Option<&'a CaptionRow>,
    identity: String,
    crop: PathBuf,
    reference: Option<PathBuf>,
}

impl Row<'_> {
    fn key(&self) -> (&str, u64, u32) {
        (&self.identity, self.face.row_id, self.face_index)
    }
}

/// Identities in the order the validation split draws them: ascending sha256 of the seed (8
/// bytes, little-endian) followed by the identity's UTF-8 bytes. Deterministic, independent of
/// the rows' order, and adding an identity never moves the others relative to each other.
pub fn draw_order(identities: &BTreeSet<String>, seed: u64) -> Vec<String> {
    let mut keyed: Vec<([u8; 32], &String)> = identities
        .iter()
        .map(|id| {
            let mut h = Sha256::new();
            h.update(seed.to_le_bytes());
            h.update(id.as_bytes());
            (h.finalize().into(), id)
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, id)| id.clone()).collect()
}

/// Chooses the validation identities among `identities`; returns them and notes for the user.
pub fn validation_identities(
    identities: &BTreeSet<String>,
    opts: &ExportOptions,
) -> Result<(BTreeSet<String>, Vec<String>), DatasetError> {
    let n = identities.len();
    let mut notes = Vec::new();
    if let Some(chosen) = &opts.val_identities {
        let chosen: BTreeSet<String> = chosen.iter().cloned().collect();
        let unknown: Vec<&String> = chosen.difference(identities).collect();
        if !unknown.is_empty() {
            let known: Vec<&String> = identities.iter().take(20).collect();
            return Err(DatasetError::Options(format!(
                "validation identities without exported rows: {}; the run's identities are {}{}",
                join_quoted(unknown.iter().copied()),
                join_quoted(known.iter().copied()),
                if n > 20 {
                    format!(" and {} more", n - 20)
                } else {
                    String::new()
                }
            )));
        }
        if chosen.len() == n && n > 0 {
            return Err(DatasetError::Options(format!(
                "the validation identities are all {n} identities: the training split would be \
                 empty"
            )));
        }
        return Ok((chosen, notes));
    }
    let f = opts.val_fraction;
    if f == 0.0 || n == 0 {
        return Ok((BTreeSet::new(), notes));
    }
    if n == 1 {
        notes.push(
            "only one identity: every row is in train and there is no validation split".into(),
        );
        return Ok((BTreeSet::new(), notes));
    }
    // Rounded up; the tolerance keeps 0.1 × 30 = 3.0000000000000004 at 3.
    let wanted = ((f * n as f64) - 1e-9).ceil().max(1.0) as usize;
    let k = wanted.min(n - 1);
    if k < wanted {
        notes.push(format!(
            "validation fraction {f} of {n} identities would leave none for training; \
             {k} held out"
        ));
    }
    Ok((
        draw_order(identities, opts.seed)
            .into_iter()
            .take(k)
            .collect(),
        notes,
    ))
}

fn join_quoted<'a>(items: impl Iterator<Item = &'a String>) -> String {
    items
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Exports the run at `run_dir` (`runs/<name>`) to `opts.out`; see the module docs.
pub fn export(run_dir: &Path, opts: &ExportOptions) -> Result<ExportSummary, DatasetError> {
    opts.validate()?;
    let run = RunDir::at(run_dir);
    let faces_path = run.require::<FacesTable>()?;
    let faces = FacesTable::read(&faces_path)?;
    let captions_path = run.table::<CaptionsTable>();
    let captions = if captions_path.is_file() {
        Some(CaptionsTable::read(&captions_path)?)
    } else if opts.include_uncaptioned {
        None
    } else {
        return Err(DatasetError::MissingTable {
            path: captions_path,
            hint: format!(
                "run `{}` for this run first, or pass --include-uncaptioned to export the faces \
                 without prompts",
                CaptionsTable::COMMAND
            ),
        });
    };

    let mut by_key: HashMap<(&str, u32), &CaptionRow> = HashMap::new();
    for c in captions.iter().flat_map(|t| &t.rows) {
        if by_key.insert((&c.image_id, c.face_index), c).is_some() {
            return Err(DatasetError::Malformed {
                path: captions_path.clone(),
                message: format!("two rows for the face {}", c.key()),
            });
        }
    }

    let Gathered {
        rows,
        kept_faces,
        skipped,
        uncaptioned,
        used_captions,
    } = gather(&run, &faces_path, &faces, &by_key, opts)?;
    let orphan_captions = by_key.len() - used_captions;

    if rows.is_empty() {
        let reason = if kept_faces == 0 {
            "the faces table has no kept face".to_string()
        } else {
            format!(
                "none of the {kept_faces} kept faces can be exported ({} caption failed, {} \
                 without a caption, {} missing files); finish `idforge caption`, or pass \
                 --include-uncaptioned",
                skipped.caption_failed, skipped.missing_caption, skipped.missing_file
            )
        };
        return Err(DatasetError::Empty {
            run: run_dir.to_path_buf(),
            reason,
        });
    }

    let identities: BTreeSet<String> = rows.iter().map(|r| r.identity.clone()).collect();
    let (val_ids, notes) = validation_identities(&identities, opts)?;
    let (mut val_rows, mut train_rows): (Vec<Row>, Vec<Row>) = rows
        .into_iter()
        .partition(|r| val_ids.contains(&r.identity));
    train_rows.sort_by(|a, b| a.key().cmp(&b.key()));
    val_rows.sort_by(|a, b| a.key().cmp(&b.key()));

    let out = &opts.out;
    prepare_out(out)?;
    let staging = out.join(format!(
        "{STAGING_PREFIX}{}",
        idforge_core::unique::unique_tag()
    ));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).at(&staging)?;
    }
    let result = (|| {
        let data = staging.join(DATA_DIR);
        std::fs::create_dir_all(&data).at(&data)?;
        let train = write_split(&staging, Split::Train, &train_rows, opts.rows_per_shard)?;
        let validation = write_split(&staging, Split::Validation, &val_rows, opts.rows_per_shard)?;
        let summary = ExportSummary {
            run: run_dir.to_path_buf(),
            out: out.clone(),
            kept_faces,
            train,
            validation,
            skipped,
            uncaptioned,
            orphan_captions,
            notes,
        };
        let made_with = card::MadeWith::from_rows(
            run_dir,
            train_rows.iter().chain(&val_rows).map(|r| r.caption),
        );
        let readme = card::render(&summary, opts, &made_with);
        write_file(&staging.join("README.md"), readme.as_bytes())?;
        let marker = |state: &str| Marker {
            format: MARKER_FORMAT.into(),
            format_version: 1,
            state: state.into(),
            options: opts.clone(),
            summary: summary.clone(),
        };
        write_file(
            &staging.join(EXPORT_MARKER),
            &marker_json(&marker("complete")),
        )?;
        commit(out, &staging, &marker_json(&marker("writing")))?;
        Ok(summary)
    })();
    if result.is_err() && staging.exists() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// The kept faces sorted into exported rows and skip counts.
struct Gathered<'a> {
    rows: Vec<Row<'a>>,
    kept_faces: usize,
    skipped: Skipped,
    uncaptioned: usize,
    used_captions: usize,
}

/// Joins the kept faces with their captions and checks their files.
fn gather<'a>(
    run: &RunDir,
    faces_path: &Path,
    faces: &'a FacesTable,
    by_key: &HashMap<(&str, u32), &'a CaptionRow>,
    opts: &ExportOptions,
) -> Result<Gathered<'a>, DatasetError> {
    let mut rows = Vec::new();
    let mut skipped = Skipped::default();
    let mut uncaptioned = 0;
    let mut kept_faces = 0;
    let mut used_captions = 0;
    for face in faces.rows.iter().filter(|r| r.verdict == Verdict::Kept) {
        kept_faces += 1;
        let malformed = |message: String| DatasetError::Malformed {
            path: faces_path.to_path_buf(),
            message,
        };
        let Some(face_index) = face.face_index else {
            return Err(malformed(format!(
                "row {} is kept but has no face_index",
                face.row_id
            )));
        };
        let identity = face
            .identity
            .clone()
            .or_else(|| face.group.clone())
            .ok_or_else(|| {
                malformed(format!("kept face {} has no identity or group", face.key()))
            })?;
        let crop_rel = face
            .crop_path
            .as_deref()
            .ok_or_else(|| malformed(format!("kept face {} has no crop_path", face.key())))?;
        let caption = by_key.get(&(face.image_id.as_str(), face_index)).copied();
        if caption.is_some() {
            used_captions += 1;
        }
        let caption = match caption {
            Some(c) if c.status == CaptionStatus::Ok => Some(c),
            Some(_) if !opts.include_uncaptioned => {
                skipped.caption_failed += 1;
                continue;
            }
            None if !opts.include_uncaptioned => {
                skipped.missing_caption += 1;
                continue;
            }
            _ => None,
        };
        let crop = run.resolve(crop_rel);
        let reference = face.ref_path.as_deref().map(|p| run.resolve(p));
        let missing = if !crop.is_file() {
            Some((crop.clone(), "crop"))
        } else {
            reference
                .as_ref()
                .filter(|p| !p.is_file())
                .map(|p| (p.clone(), "reference crop"))
        };
        if let Some((path, what)) = missing {
            if opts.skip_missing_files {
                skipped.missing_file += 1;
                continue;
            }
            return Err(DatasetError::MissingFile {
                path,
                what,
                key: face.key(),
            });
        }
        if caption.is_none() {
            uncaptioned += 1;
        }
        rows.push(Row {
            face,
            face_index,
            caption,
            identity,
            crop,
            reference,
        });
    }
    Ok(Gathered {
        rows,
        kept_faces,
        skipped,
        uncaptioned,
        used_captions,
    })
}

fn marker_json(marker: &Marker) -> Vec<u8> {
    let mut text = serde_json::to_vec_pretty(marker).expect("the marker serialises");
    text.push(b'\n');
    text
}

/// Whether `out/idforge-export.json` says `out` is an idforge export.
fn is_previous_export(out: &Path) -> bool {
    let Ok(text) = std::fs::read(out.join(EXPORT_MARKER)) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&text).is_ok_and(|v| v["format"] == MARKER_FORMAT)
}

/// Creates `out`, or checks that it may be replaced, and removes what crashed exports left.
fn prepare_out(out: &Path) -> Result<(), DatasetError> {
    if !out.exists() {
        return std::fs::create_dir_all(out).at(out);
    }
    if !out.is_dir() {
        return Err(DatasetError::Options(format!(
            "{} is a file, not a folder",
            out.display()
        )));
    }
    let mut visible = Vec::new();
    let mut leftovers = Vec::new();
    for entry in std::fs::read_dir(out).at(out)? {
        let entry = entry.at(out)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(STAGING_PREFIX) || name.starts_with(OLD_PREFIX) {
            leftovers.push(entry.path());
        } else if !name.starts_with('.') {
            visible.push(name);
        }
    }
    if !visible.is_empty() && !is_previous_export(out) {
        visible.sort();
        let more = visible.len().saturating_sub(5);
        visible.truncate(5);
        return Err(DatasetError::NotAnExport {
            path: out.to_path_buf(),
            entries: format!(
                "{}{}",
                visible.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ),
        });
    }
    for path in leftovers {
        if path.is_dir() {
            std::fs::remove_dir_all(&path).at(&path)?;
        } else {
            std::fs::remove_file(&path).at(&path)?;
        }
    }
    Ok(())
}

/// Moves the staged export into `out`. The marker goes first (as `writing`), so that a crash
/// part-way leaves a folder the next export recognises and replaces.
fn commit(out: &Path, staging: &Path, writing_marker: &[u8]) -> Result<(), DatasetError> {
    let marker = out.join(EXPORT_MARKER);
    let tmp = idforge_core::table::temp_sibling(&marker);
    write_file(&tmp, writing_marker)?;
    std::fs::rename(&tmp, &marker).at(&marker)?;
    let data = out.join(DATA_DIR);
    let old = out.join(format!(
        "{OLD_PREFIX}{}",
        idforge_core::unique::unique_tag()
    ));
    let had_data = data.exists();
    if had_data {
        std::fs::rename(&data, &old).at(&data)?;
    }
    std::fs::rename(staging.join(DATA_DIR), &data).at(&data)?;
    let readme = out.join("README.md");
    std::fs::rename(staging.join("README.md"), &readme).at(&readme)?;
    std::fs::rename(staging.join(EXPORT_MARKER), &marker).at(&marker)?;
    if had_data {
        std::fs::remove_dir_all(&old).at(&old)?;
    }
    std::fs::remove_dir_all(staging).at(staging)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), DatasetError> {
    let mut f = File::create(path).at(path)?;
    std::io::Write::write_all(&mut f, bytes).at(path)?;
    f.sync_all().at(path)
}

fn writer_properties() -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid zstd level"),
        ))
        .set_max_row_group_size(ROW_GROUP_ROWS)
        // In the file's key-value metadata too, as pyarrow writes it, for readers that look
        // there rather than in the embedded Arrow schema.
        .set_key_value_metadata(Some(vec![KeyValue::new(
            HF_METADATA_KEY.to_string(),
            huggingface_metadata(),
        )]));
    // JPEG bytes neither compress nor repeat, and min/max statistics of them are noise.
    for image in [IMAGE, REF_IMAGE] {
        let col = ColumnPath::new(vec![image.to_string(), "bytes".to_string()]);
        b = b
            .set_column_compression(col.clone(), Compression::UNCOMPRESSED)
            .set_column_dictionary_enabled(col.clone(), false)
            .set_column_statistics_enabled(col, EnabledStatistics::None);
    }
    b.build()
}

/// Writes one split's shards under `staging/data/`.
fn write_split(
    staging: &Path,
    split: Split,
    rows: &[Row],
    rows_per_shard: usize,
) -> Result<SplitSummary, DatasetError> {
    let mut summary = SplitSummary {
        name: split.to_string(),
        rows: rows.len(),
        ..SplitSummary::default()
    };
    for r in rows {
        *summary.identities.entry(r.identity.clone()).or_default() += 1;
    }
    let count = rows.len().div_ceil(rows_per_shard);
    let schema = dataset_schema();
    for (i, shard_rows) in rows.chunks(rows_per_shard).enumerate() {
        let rel = split.shard_path(i, count);
        let path = staging.join(&rel);
        let parquet_err = |e: parquet::errors::ParquetError| DatasetError::Parquet {
            path: path.clone(),
            message: e.to_string(),
        };
        let file = File::create(&path).at(&path)?;
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(writer_properties()))
            .map_err(parquet_err)?;
        for group in shard_rows.chunks(ROW_GROUP_ROWS) {
            let batch = build_batch(group)?;
            summary.num_bytes += arrow_nbytes(&batch);
            writer.write(&batch).map_err(parquet_err)?;
            writer.flush().map_err(parquet_err)?;
        }
        writer.finish().map_err(parquet_err)?;
        writer.inner().sync_all().at(&path)?;
        summary.file_bytes += std::fs::metadata(&path).at(&path)?.len();
        summary.shards.push(rel);
    }
    Ok(summary)
}

/// The bytes `datasets` records as a split's `num_bytes` for this batch when it is read back as
/// one row group: pyarrow's `Table.nbytes`, which counts the referenced part of every buffer —
/// `len × 4` bytes of string offsets (not `len + 1`), the string bytes, the fixed-width values,
/// and a validity bitmap where the array has nulls. Two quirks of pyarrow's Parquet reader are
/// followed: a fixed-size list's items always get a bitmap, and a null struct (a missing
/// `ref_image`) shares its bitmap with its children, so it is counted once, with them. Equal to
/// what `datasets` 3.6 and 5.2 (pyarrow 26) record for idforge's shards; the card's figure is
/// informational (`datasets` verifies only `num_examples`).
pub fn arrow_nbytes(batch: &RecordBatch) -> u64 {
    fn nbytes(d: &ArrayData, always_validity: bool) -> u64 {
        let len = d.len() as u64;
        let is_struct = matches!(d.data_type(), DataType::Struct(_));
        let mut n = if always_validity || (d.null_count() > 0 && !is_struct) {
            len.div_ceil(8)
        } else {
            0
        };
        match d.data_type() {
            DataType::Utf8 | DataType::Binary => {
                let offsets = d.buffer::<i32>(0);
                n += len * 4 + (offsets[d.len()] - offsets[0]) as u64;
            }
            DataType::Struct(_) => {
                n += d.child_data().iter().map(|c| nbytes(c, false)).sum::<u64>()
            }
            DataType::FixedSizeList(_, _) => n += nbytes(&d.child_data()[0], true),
            t => {
                n += len
                    * t.primitive_width()
                        .unwrap_or_else(|| unreachable!("no size rule for {t}"))
                        as u64
            }
        }
        n
    }
    batch
        .columns()
        .iter()
        .map(|c| nbytes(&c.to_data(), false))
        .sum()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// An `Image` column: `{bytes, path}` per row, null where `files` has none.
fn image_column(files: &[Option<&Path>]) -> Result<StructArray, DatasetError> {
    let mut bytes = BinaryBuilder::new();
    let mut paths = StringBuilder::new();
    for f in files {
        match f {
            Some(path) => {
                bytes.append_value(std::fs::read(path).at(*path)?);
                paths.append_value(file_name(path));
            }
            None => {
                bytes.append_null();
                paths.append_null();
            }
        }
    }
    let DataType::Struct(fields) = image_struct_type() else {
        unreachable!("an Image is a struct")
    };
    let nulls = files
        .iter()
        .any(Option::is_none)
        .then(|| NullBuffer::from_iter(files.iter().map(Option::is_some)));
    Ok(StructArray::new(
        fields,
        vec![
            Arc::new(bytes.finish()) as ArrayRef,
            Arc::new(paths.finish()),
        ],
        nulls,
    ))
}

fn strings<'a>(rows: &'a [Row], f: impl Fn(&'a Row) -> Option<&'a str>) -> ArrayRef {
    Arc::new(rows.iter().map(f).collect::<StringArray>())
}

fn text<'a>(rows: &'a [Row], f: impl Fn(&'a CaptionRow) -> &'a Option<String>) -> ArrayRef {
    strings(rows, |r| r.caption.and_then(|c| f(c).as_deref()))
}

/// One record batch (one row group) of rows, reading their image files.
fn build_batch(rows: &[Row]) -> Result<RecordBatch, DatasetError> {
    let schema = dataset_schema();
    let crops: Vec<Option<&Path>> = rows.iter().map(|r| Some(r.crop.as_path())).collect();
    let refs: Vec<Option<&Path>> = rows.iter().map(|r| r.reference.as_deref()).collect();
    let DataType::FixedSizeList(item, len) = schema
        .field_with_name(FACE_BOX)
        .expect("face_box column")
        .data_type()
        .clone()
    else {
        unreachable!("face_box is a fixed-size list")
    };
    let mut face_box = FixedSizeListBuilder::new(Float32Builder::new(), len).with_field(item);
    for r in rows {
        match r.face.face_box_in_crop {
            Some(b) => {
                face_box.values().append_slice(&b);
                face_box.append(true);
            }
            None => {
                face_box.values().append_nulls(len as usize);
                face_box.append(false);
            }
        }
    }
    let columns: Vec<ArrayRef> = COLUMNS
        .iter()
        .map(|&(name, _, _)| -> Result<ArrayRef, DatasetError> {
            Ok(match name {
                "image" => Arc::new(image_column(&crops)?),
                "identity" => strings(rows, |r| Some(r.identity.as_str())),
                "prompt_general" => text(rows, |c| &c.general),
                "prompt_background" => text(rows, |c| &c.background),
                "prompt_body" => text(rows, |c| &c.body),
                "class_word" => text(rows, |c| &c.class_word),
                "trigger" => text(rows, |c| &c.trigger),
                "face_box" => Arc::new(face_box.finish_cloned()),
                "ref_image" => Arc::new(image_column(&refs)?),
                "image_id" => strings(rows, |r| Some(r.face.image_id.as_str())),
                "face_index" => Arc::new(UInt32Array::from_iter_values(
                    rows.iter().map(|r| r.face_index),
                )),
                "caption" => text(rows, |c| &c.caption),
                other => unreachable!("no builder for the column `{other}`"),
            })
        })
        .collect::<Result<_, _>>()?;
    RecordBatch::try_new(schema, columns).map_err(|e| DatasetError::Parquet {
        path: PathBuf::from("(record batch)"),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn validation_share_rounds_up_keeps_one_for_training_and_is_seeded() {
        let opts = ExportOptions::new("x");
        let ten: BTreeSet<String> = (0..10).map(|i| format!("id{i}")).collect();
        assert_eq!(validation_identities(&ten, &opts).unwrap().0.len(), 1);
        let thirty: BTreeSet<String> = (0..30).map(|i| format!("id{i}")).collect();
        assert_eq!(validation_identities(&thirty, &opts).unwrap().0.len(), 3);
        let two = ids(&["a", "b"]);
        assert_eq!(validation_identities(&two, &opts).unwrap().0.len(), 1);
        let mut most = opts.clone();
        most.val_fraction = 0.99;
        let (val, notes) = validation_identities(&two, &most).unwrap();
        assert_eq!(val.len(), 1);
        assert_eq!(notes.len(), 1, "{notes:?}");
        let (val, notes) = validation_identities(&ids(&["solo"]), &opts).unwrap();
        assert!(val.is_empty());
        assert!(notes[0].contains("one identity"), "{notes:?}");
        let draws: BTreeSet<Vec<String>> = (0..8)
            .map(|seed| draw_order(&ten, seed).into_iter().take(3).collect())
            .collect();
        assert!(draws.len() > 1, "the seed changes the draw");
        assert_eq!(draw_order(&ten, 7), draw_order(&ten, 7));
    }

    #[test]
    fn named_validation_identities_must_exist_and_leave_training() {
        let mut opts = ExportOptions::new("x");
        let all = ids(&["a", "b", "c"]);
        opts.val_identities = Some(vec!["b".into()]);
        assert_eq!(validation_identities(&all, &opts).unwrap().0, ids(&["b"]));
        opts.val_identities = Some(vec!["z".into()]);
        let err = validation_identities(&all, &opts).unwrap_err().to_string();
        assert!(
            err.contains("`z`") && err.contains("`a`, `b`, `c`"),
            "{err}"
        );
        opts.val_identities = Some(vec!["a".into(), "b".into(), "c".into()]);
        assert!(validation_identities(&all, &opts).is_err());
    }

    #[test]
    fn options_out_of_range_are_refused() {
        let mut opts = ExportOptions::new("x");
        opts.val_fraction = 1.0;
        assert!(opts.validate().is_err());
        opts.val_fraction = f64::NAN;
        assert!(opts.validate().is_err());
        opts.val_fraction = 0.0;
        opts.rows_per_shard = 0;
        assert!(opts.validate().is_err());
    }
}
