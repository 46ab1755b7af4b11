//! Input rows: URL lists (CSV, TSV, JSONL, Parquet) and folders of images.
//!
//! The sources of a recipe, in order, make one list of [`InputRow`]s; a row's position in it is
//! its `row_id`. Planning ([`InputsPlan::scan`]) streams every source once and keeps no rows;
//! a shard then streams the sources again and builds only the rows of its range
//! ([`InputsPlan::read`]), so a list of millions is ingested in memory set by the shard.
//! Columns other than url / identity / caption are carried through to the images table as text
//! (JSON text for non-string JSON values).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use arrow::array::{Array, StringArray};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use idforge_core::Name;
use idforge_core::schema::ImageStatus;
use idforge_core::schema::images::FIXED_COLUMNS;

use crate::error::IngestError;

/// File extensions a folder walk takes as images. Anything else is skipped (and counted),
/// except `.txt` files next to an image, which are read as its caption.
pub const IMAGE_EXTENSIONS: [&str; 11] = [
    "jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "avif", "heic", "jfif",
];

/// Layout of a URL list file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListFormat {
    /// Comma-separated with a header row.
    Csv,
    /// Tab-separated with a header row.
    Tsv,
    /// One JSON object per line.
    Jsonl,
    /// A Parquet file.
    Parquet,
}

impl ListFormat {
    /// Guesses the format from the file extension.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Self::Csv),
            "tsv" | "tab" => Some(Self::Tsv),
            "jsonl" | "ndjson" => Some(Self::Jsonl),
            "parquet" | "pq" => Some(Self::Parquet),
            _ => None,
        }
    }
}

/// How a folder source assigns identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FolderIdentity {
    /// Each first-level sub-folder is one identity; files directly in the folder are unlabeled.
    #[default]
    Subfolder,
    /// No labels (event or group photos, for identity discovery downstream).
    None,
}

fn default_url_column() -> String {
    "url".into()
}
fn default_identity_column() -> String {
    "identity".into()
}
fn default_caption_column() -> String {
    "caption".into()
}

/// One source in the recipe's `[[ingest.sources]]` list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceSpec {
    /// A list of URLs with an identity per row.
    Urls {
        /// The list file.
        path: PathBuf,
        /// Its format; guessed from the extension when absent.
        #[serde(default)]
        format: Option<ListFormat>,
        /// Column holding the URL.
        #[serde(default = "default_url_column")]
        url_column: String,
        /// Column holding the identity; `""` for unlabeled rows.
        #[serde(default = "default_identity_column")]
        identity_column: String,
        /// Column holding a caption, used when present in the file.
        #[serde(default = "default_caption_column")]
        caption_column: String,
    },
    /// A folder of image files.
    Folder {
        /// The folder.
        path: PathBuf,
        /// How identities are assigned.
        #[serde(default)]
        identity: FolderIdentity,
    },
}

impl SourceSpec {
    /// A source given on the command line: a folder, or a list file whose format is guessed.
    pub fn from_cli(path: PathBuf) -> Self {
        if path.is_dir() {
            SourceSpec::Folder {
                path,
                identity: FolderIdentity::Subfolder,
            }
        } else {
            SourceSpec::Urls {
                path,
                format: None,
                url_column: default_url_column(),
                identity_column: default_identity_column(),
                caption_column: default_caption_column(),
            }
        }
    }

    /// The file or folder this source reads.
    pub fn path(&self) -> &Path {
        match self {
            SourceSpec::Urls { path, .. } | SourceSpec::Folder { path, .. } => path,
        }
    }

    /// The same source with its path resolved by `f` (e.g. against the recipe's folder).
    pub fn with_path(mut self, f: impl FnOnce(&Path) -> PathBuf) -> Self {
        match &mut self {
            SourceSpec::Urls { path, .. } | SourceSpec::Folder { path, .. } => *path = f(path),
        }
        self
    }
}

/// Where an input row's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Fetched over HTTP(S).
    Url,
    /// Read from a local file.
    File,
    /// Nowhere: the row itself is unusable (an empty or non-URL `url` cell, a local path that
    /// is not allowed, an identity that cannot be a name). It ends in the table with this
    /// status and reason; one bad row never stops the run.
    Invalid {
        /// The row's status (`invalid_url`, `invalid_identity`).
        status: ImageStatus,
        /// Why, naming the row.
        error: String,
    },
}

/// Whether rows of a URL list that are local paths are read.
///
/// A URL list may come from a third party; reading whatever path it names could pull any
/// readable image on this machine into a dataset that may be published. So local paths are
/// refused unless the user says so, and then only under the list's own folder unless
/// absolute paths are allowed too. Folder sources are not affected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LocalPaths {
    /// Every row must be an http(s) URL; a path is an `invalid_url` row.
    #[default]
    Refuse,
    /// Relative paths under the list's folder (no `..`, no absolute paths, no symbolic link
    /// leading out).
    UnderList,
    /// Any path: relative to the list's folder, or absolute.
    Anywhere,
}

impl LocalPaths {
    /// From the `allow_local_paths` and `allow_absolute_paths` settings (the second implies
    /// the first).
    pub fn from_flags(allow_local: bool, allow_absolute: bool) -> Self {
        match (allow_local, allow_absolute) {
            (_, true) => LocalPaths::Anywhere,
            (true, false) => LocalPaths::UnderList,
            (false, false) => LocalPaths::Refuse,
        }
    }
}

/// One row to ingest.
#[derive(Debug, Clone, PartialEq)]
pub struct InputRow {
    /// Position across all sources.
    pub row_id: u64,
    /// URL or file path.
    pub source: String,
    /// How to get the bytes.
    pub origin: Origin,
    /// Identity label, if any.
    pub identity: Option<String>,
    /// Caption from the source.
    pub caption: Option<String>,
    /// Extra column values aligned with [`Inputs::extra_columns`].
    pub extra: Vec<Option<String>>,
}

/// All input rows of a recipe in memory, with the union of their extra columns: for small
/// lists and tests. The stage never holds this; it reads one shard's rows through
/// [`InputsPlan`].
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Extra column names, in first-seen order.
    pub extra_columns: Vec<String>,
    /// The rows, `row_id` = index.
    pub rows: Vec<InputRow>,
    /// Files a folder walk skipped because they are not images by extension.
    pub skipped_files: u64,
}

/// A row as read from one source, before row ids and column alignment.
struct RawRow {
    source: String,
    origin: Origin,
    identity: Option<String>,
    caption: Option<String>,
    extra: Vec<(String, String)>,
}

impl Inputs {
    /// Reads every source in order; local paths in URL lists are refused (each such row is
    /// `invalid_url`). See [`Inputs::read_with`].
    pub fn read(sources: &[SourceSpec]) -> Result<Self, IngestError> {
        Self::read_with(sources, LocalPaths::Refuse)
    }

    /// Reads every source in order, taking local paths in URL lists as `local` says. Only
    /// problems with a list itself (unreadable, unknown format, missing column) are errors;
    /// a bad row becomes a row with an [`Origin::Invalid`] status.
    pub fn read_with(sources: &[SourceSpec], local: LocalPaths) -> Result<Self, IngestError> {
        let plan = InputsPlan::scan(sources, local)?;
        let rows = plan.read(0..plan.total())?;
        Ok(Inputs {
            extra_columns: plan.extra_columns,
            rows,
            skipped_files: plan.skipped_files,
        })
    }
}

/// Rows between two places of a list file where a later read can start without reading what
/// comes before (a few hundred per 10 million rows; every few rows in unit tests, so that
/// their small lists cross many).
const CHECKPOINT_ROWS: u64 = if cfg!(test) { 4 } else { 1 << 15 };

/// A place in a list file where reading can resume.
#[derive(Debug, Clone)]
enum Resume {
    /// A CSV or TSV record.
    Csv(csv::Position),
    /// A JSON-lines line: its byte offset, and the number of lines before it.
    Line { offset: u64, line: usize },
}

/// What planning learned about one source.
#[derive(Debug, Clone)]
struct SourcePlan {
    /// Row id of its first row.
    first: u64,
    /// Its number of rows.
    rows: u64,
    /// `(row within the source, where it starts)`, every [`CHECKPOINT_ROWS`] rows.
    checkpoints: Vec<(u64, Resume)>,
}

/// The sources of a recipe, read once without keeping their rows: the row count (which fixes
/// the shard boundaries), the extra columns and a fingerprint. A shard then reads only its own
/// rows ([`InputsPlan::read`]), so memory is set by the shard, not by the list.
#[derive(Debug, Clone)]
pub struct InputsPlan {
    /// Extra column names, in first-seen order; rows read later are aligned with them.
    pub extra_columns: Vec<String>,
    /// The row ids of all sources, `0..total`.
    pub rows: Range<usize>,
    /// Files a folder walk skipped because they are not images by extension.
    pub skipped_files: u64,
    /// sha256 of every row's source and identity (`source\tidentity\n` in row order), so a
    /// re-run can check that its sources are the ones its run started with.
    pub sha256: String,
    sources: Vec<SourceSpec>,
    local: LocalPaths,
    parts: Vec<SourcePlan>,
    column_index: HashMap<String, usize>,
}

impl InputsPlan {
    /// Reads every source once, in order, keeping no rows. Fails as [`Inputs::read_with`]
    /// does: only on a problem with a list itself.
    pub fn scan(sources: &[SourceSpec], local: LocalPaths) -> Result<Self, IngestError> {
        let mut hasher = Sha256::new();
        let mut extra_columns: Vec<String> = Vec::new();
        let mut column_index: HashMap<String, usize> = HashMap::new();
        let mut parts = Vec::with_capacity(sources.len());
        let mut skipped_files = 0;
        let mut total = 0u64;
        for spec in sources {
            let mut checkpoints = Vec::new();
            let mut rows = 0u64;
            let pass = Pass {
                from: 0,
                upto: u64::MAX,
                resume: None,
                checkpoints: Some(&mut checkpoints),
            };
            skipped_files += scan_source(spec, local, pass, &mut |_, r| {
                hasher.update(r.source.as_bytes());
                hasher.update(b"\t");
                hasher.update(r.identity.as_deref().unwrap_or("").as_bytes());
                hasher.update(b"\n");
                for (name, _) in r.extra {
                    if !column_index.contains_key(&name) {
                        column_index.insert(name.clone(), extra_columns.len());
                        extra_columns.push(name);
                    }
                }
                rows += 1;
                Ok(())
            })?;
            parts.push(SourcePlan {
                first: total,
                rows,
                checkpoints,
            });
            total += rows;
        }
        Ok(InputsPlan {
            extra_columns,
            rows: 0..total as usize,
            skipped_files,
            sha256: hex::encode(hasher.finalize()),
            sources: sources.to_vec(),
            local,
            parts,
            column_index,
        })
    }

    /// Number of rows of all sources.
    pub fn total(&self) -> u64 {
        self.rows.end as u64
    }

    /// The rows whose ids are in `range` (clamped to the list), read from the sources.
    pub fn read(&self, range: Range<u64>) -> Result<Vec<InputRow>, IngestError> {
        let mut rows =
            Vec::with_capacity(range.end.min(self.total()).saturating_sub(range.start) as usize);
        self.for_each(range, |r| {
            rows.push(r);
            Ok(())
        })?;
        Ok(rows)
    }

    /// Gives `f` the rows whose ids are in `range` (clamped to the list), in order. Each source
    /// is read from the last checkpoint before the range; rows before the range are counted,
    /// not built (Parquet: only the row groups holding the range are read), and reading stops
    /// at its end.
    pub fn for_each(
        &self,
        range: Range<u64>,
        mut f: impl FnMut(InputRow) -> Result<(), IngestError>,
    ) -> Result<(), IngestError> {
        for (spec, part) in self.sources.iter().zip(&self.parts) {
            let from = range.start.max(part.first);
            let upto = range.end.min(part.first + part.rows);
            if from >= upto {
                continue;
            }
            let (from, upto) = (from - part.first, upto - part.first);
            let at = part.checkpoints.partition_point(|(row, _)| *row <= from);
            let pass = Pass {
                from,
                upto,
                resume: at.checked_sub(1).map(|i| &part.checkpoints[i]),
                checkpoints: None,
            };
            let mut seen = 0;
            scan_source(spec, self.local, pass, &mut |i, r| {
                seen += 1;
                f(self.align(part.first + i, r, spec.path())?)
            })?;
            if seen != upto - from {
                return Err(changed(spec.path()));
            }
        }
        Ok(())
    }

    /// A raw row with its id, its extra values in the plan's column order.
    fn align(&self, row_id: u64, r: RawRow, path: &Path) -> Result<InputRow, IngestError> {
        let mut extra = vec![None; self.extra_columns.len()];
        for (name, value) in r.extra {
            let idx = *self.column_index.get(&name).ok_or_else(|| changed(path))?;
            extra[idx] = Some(value);
        }
        Ok(InputRow {
            row_id,
            source: r.source,
            origin: r.origin,
            identity: r.identity,
            caption: r.caption,
            extra,
        })
    }
}

/// A source that no longer matches what planning read.
fn changed(path: &Path) -> IngestError {
    IngestError::source(
        path,
        "changed while this run was reading it (rows or columns planning did not see); \
         leave the sources alone while a run reads them, and run again",
    )
}

/// One read of a source. Rows before `from` are counted, not built; rows in `from..upto` are
/// built and visited; reading stops at `upto`. Planning (`checkpoints` given) also checks the
/// header and notes where later reads can start.
struct Pass<'a> {
    from: u64,
    upto: u64,
    resume: Option<&'a (u64, Resume)>,
    checkpoints: Option<&'a mut Vec<(u64, Resume)>>,
}

impl Pass<'_> {
    fn planning(&self) -> bool {
        self.checkpoints.is_some()
    }

    /// Notes where row `index` starts, when planning and at a checkpoint.
    fn note(&mut self, index: u64, at: impl FnOnce() -> Resume) {
        if let Some(c) = &mut self.checkpoints
            && index > 0
            && index.is_multiple_of(CHECKPOINT_ROWS)
            && c.last().is_none_or(|(row, _)| *row != index)
        {
            c.push((index, at()));
        }
    }
}

/// Receives each built row with its position in its source.
type Visit<'v> = dyn FnMut(u64, RawRow) -> Result<(), IngestError> + 'v;

/// Reads one source as `pass` says; returns the files a folder walk skipped.
fn scan_source(
    spec: &SourceSpec,
    local: LocalPaths,
    pass: Pass,
    visit: &mut Visit,
) -> Result<u64, IngestError> {
    match spec {
        SourceSpec::Urls {
            path,
            format,
            url_column,
            identity_column,
            caption_column,
        } => {
            let format = match format.or_else(|| ListFormat::from_path(path)) {
                Some(f) => f,
                None => {
                    return Err(IngestError::source(
                        path,
                        "cannot tell the list format from the extension; \
                         use .csv, .tsv, .jsonl or .parquet, or set `format`",
                    ));
                }
            };
            let cols = Columns {
                url: url_column,
                identity: identity_column,
                caption: caption_column,
            };
            scan_list(path, format, &cols, local, pass, visit)?;
            Ok(0)
        }
        SourceSpec::Folder { path, identity } => scan_folder(path, *identity, pass, visit),
    }
}

struct Columns<'a> {
    url: &'a str,
    identity: &'a str,
    caption: &'a str,
}

/// Splits a record (column name → value) into a raw row, checking the required columns.
struct RowBuilder<'a> {
    path: &'a Path,
    cols: &'a Columns<'a>,
    local: LocalPaths,
}

/// A row that cannot be used, with its status and reason.
fn invalid_row(status: ImageStatus, source: String, error: String) -> RawRow {
    RawRow {
        source,
        origin: Origin::Invalid { status, error },
        identity: None,
        caption: None,
        extra: Vec::new(),
    }
}

/// `identity`, or the reason it cannot be a name.
fn check_identity(identity: &str) -> Result<(), String> {
    Name::new(identity)
        .map(drop)
        .map_err(|e| format!("identity: {e}"))
}

impl RowBuilder<'_> {
    fn check_header(&self, header: &[String]) -> Result<(), IngestError> {
        let has = |c: &str| header.iter().any(|h| h == c);
        let listing = header.join(", ");
        if !has(self.cols.url) {
            return Err(IngestError::source(
                self.path,
                format!(
                    "no `{}` column (columns: {listing}); set `url_column`",
                    self.cols.url
                ),
            ));
        }
        if !self.cols.identity.is_empty() && !has(self.cols.identity) {
            return Err(IngestError::source(
                self.path,
                format!(
                    "no `{}` column (columns: {listing}); set `identity_column`, or set it to \"\" \
                     for unlabeled rows",
                    self.cols.identity
                ),
            ));
        }
        for h in header {
            let taken = [self.cols.url, self.cols.identity, self.cols.caption];
            if !taken.contains(&h.as_str()) && FIXED_COLUMNS.contains(&h.as_str()) {
                return Err(IngestError::source(
                    self.path,
                    format!(
                        "column `{h}` would collide with the images table's own `{h}` column; \
                         rename it in the list"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `line` is 1-based, for messages. Never fails: a bad row is an [`Origin::Invalid`] row.
    fn build(&self, line: usize, fields: Vec<(String, Option<String>)>) -> RawRow {
        let mut url = None;
        let mut identity = None;
        let mut caption = None;
        let mut extra = Vec::new();
        for (name, value) in fields {
            let value = value.filter(|v| !v.is_empty());
            if name == self.cols.url {
                url = value.map(|v| v.trim().to_string());
            } else if !self.cols.identity.is_empty() && name == self.cols.identity {
                identity = value;
            } else if name == self.cols.caption {
                caption = value;
            } else if let Some(v) = value {
                extra.push((name, v));
            }
        }
        let (source, origin) = match url.filter(|u| !u.is_empty()) {
            None => (
                String::new(),
                Origin::Invalid {
                    status: ImageStatus::InvalidUrl,
                    error: format!("row {line}: empty `{}`", self.cols.url),
                },
            ),
            Some(u) if u.contains("://") => (u, Origin::Url),
            Some(text) => self.local_path(line, text),
        };
        let origin = match (&origin, identity.as_deref().map(check_identity)) {
            (Origin::Invalid { .. }, _) | (_, None | Some(Ok(()))) => origin,
            (_, Some(Err(e))) => Origin::Invalid {
                status: ImageStatus::InvalidIdentity,
                error: format!("row {line}: {e}"),
            },
        };
        RawRow {
            source,
            origin,
            identity,
            caption,
            extra,
        }
    }

    /// A `url` cell that is not a URL: a local path if the policy allows it, else a row
    /// status saying how to allow it.
    fn local_path(&self, line: usize, text: String) -> (String, Origin) {
        // A local path in a list is relative to the list's folder, not the working directory.
        let base = self.path.parent().unwrap_or(Path::new(""));
        let refuse = |error: String| {
            let origin = Origin::Invalid {
                status: ImageStatus::InvalidUrl,
                error,
            };
            (text.clone(), origin)
        };
        let rel = Path::new(&text);
        match self.local {
            LocalPaths::Refuse => refuse(format!(
                "row {line}: `{text}` is not an http(s) URL; local paths in a URL list are read \
                 only with --allow-local-paths (recipe: allow_local_paths = true)"
            )),
            LocalPaths::UnderList
                if !rel
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) =>
            {
                refuse(format!(
                    "row {line}: local path `{text}` leaves the list's folder {} (absolute or \
                     `..`); add --allow-absolute-paths to read it",
                    base.display()
                ))
            }
            LocalPaths::UnderList => {
                let joined = base.join(rel);
                // A symbolic link under the folder may still lead out of it.
                if let (Ok(real), Ok(root)) = (joined.canonicalize(), base.canonicalize())
                    && !real.starts_with(&root)
                {
                    return refuse(format!(
                        "row {line}: local path `{text}` leads out of the list's folder {} \
                         (to {}); add --allow-absolute-paths to read it",
                        base.display(),
                        real.display()
                    ));
                }
                (joined.display().to_string(), Origin::File)
            }
            LocalPaths::Anywhere => (base.join(rel).display().to_string(), Origin::File),
        }
    }
}

fn scan_list(
    path: &Path,
    format: ListFormat,
    cols: &Columns,
    local: LocalPaths,
    mut pass: Pass,
    visit: &mut Visit,
) -> Result<(), IngestError> {
    let b = RowBuilder { path, cols, local };
    let open = || File::open(path).map_err(|e| IngestError::source(path, e.to_string()));
    let failed = |e: &dyn std::fmt::Display| IngestError::source(path, e.to_string());
    match format {
        ListFormat::Csv | ListFormat::Tsv => {
            let delimiter = if format == ListFormat::Csv {
                b','
            } else {
                b'\t'
            };
            let mut reader = csv::ReaderBuilder::new()
                .delimiter(delimiter)
                // Rows with the wrong number of fields are that row's status, checked below.
                .flexible(true)
                .from_reader(open()?);
            let header: Vec<String> = reader
                .headers()
                .map_err(|e| failed(&e))?
                .iter()
                .map(str::to_string)
                .collect();
            if pass.planning() {
                b.check_header(&header)?;
            }
            let mut index = 0;
            if let Some((row, Resume::Csv(pos))) = pass.resume {
                reader.seek(pos.clone()).map_err(|e| failed(&e))?;
                index = *row;
            }
            let mut skipped = csv::ByteRecord::new();
            let mut rec = csv::StringRecord::new();
            while index < pass.upto {
                pass.note(index, || Resume::Csv(reader.position().clone()));
                if index < pass.from {
                    // Before the range: split into fields, no UTF-8 check, no row built.
                    if !reader
                        .read_byte_record(&mut skipped)
                        .map_err(|e| failed(&e))?
                    {
                        break;
                    }
                    index += 1;
                    continue;
                }
                let line = index as usize + 2;
                let row = match reader.read_record(&mut rec) {
                    Ok(false) => break,
                    Ok(true) if rec.len() != header.len() => {
                        let source = rec
                            .iter()
                            .zip(&header)
                            .find(|(_, h)| *h == cols.url)
                            .map(|(v, _)| v.trim().to_string())
                            .unwrap_or_default();
                        invalid_row(
                            ImageStatus::InvalidUrl,
                            source,
                            format!(
                                "row {line}: {} fields, the header has {}",
                                rec.len(),
                                header.len()
                            ),
                        )
                    }
                    Ok(true) => {
                        let fields = header
                            .iter()
                            .cloned()
                            .zip(rec.iter().map(|v| Some(v.to_string())))
                            .collect();
                        b.build(line, fields)
                    }
                    Err(e) if matches!(e.kind(), csv::ErrorKind::Utf8 { .. }) => invalid_row(
                        ImageStatus::InvalidUrl,
                        String::new(),
                        format!("row {line}: {e}"),
                    ),
                    Err(e) => return Err(failed(&e)),
                };
                visit(index, row)?;
                index += 1;
            }
        }
        ListFormat::Jsonl => {
            let mut reader = BufReader::with_capacity(1 << 16, open()?);
            // Rows are the non-blank lines; `line` counts every line, for messages.
            let (mut index, mut line, mut offset) = (0u64, 0usize, 0u64);
            if let Some((row, Resume::Line { offset: o, line: l })) = pass.resume {
                reader.seek(SeekFrom::Start(*o)).map_err(|e| failed(&e))?;
                (index, line, offset) = (*row, *l, *o);
            }
            let mut header_checked = !pass.planning();
            let mut any_row = false;
            let mut buf = Vec::new();
            while index < pass.upto {
                pass.note(index, || Resume::Line { offset, line });
                buf.clear();
                let n = reader.read_until(b'\n', &mut buf).map_err(|e| failed(&e))?;
                if n == 0 {
                    break;
                }
                offset += n as u64;
                line += 1;
                let text = std::str::from_utf8(&buf).map_err(|e| {
                    IngestError::source(path, format!("line {line} is not UTF-8 text: {e}"))
                })?;
                // As `str::lines` splits: without the `\n` or `\r\n`.
                let text = text.strip_suffix('\n').unwrap_or(text);
                let text = text.strip_suffix('\r').unwrap_or(text);
                if text.trim().is_empty() {
                    continue;
                }
                any_row = true;
                if index < pass.from {
                    index += 1;
                    continue;
                }
                let obj: serde_json::Map<String, serde_json::Value> =
                    match serde_json::from_str(text) {
                        Ok(o) => o,
                        Err(e) => {
                            visit(
                                index,
                                invalid_row(
                                    ImageStatus::InvalidUrl,
                                    String::new(),
                                    format!("row {line}: not a JSON object: {e}"),
                                ),
                            )?;
                            index += 1;
                            continue;
                        }
                    };
                if !header_checked {
                    // Later lines may add keys; the required ones must be on the first.
                    b.check_header(&obj.keys().cloned().collect::<Vec<_>>())?;
                    header_checked = true;
                }
                let fields = obj
                    .into_iter()
                    .map(|(k, v)| {
                        let v = match v {
                            serde_json::Value::Null => None,
                            serde_json::Value::String(s) => Some(s),
                            other => Some(other.to_string()),
                        };
                        (k, v)
                    })
                    .collect();
                visit(index, b.build(line, fields))?;
                index += 1;
            }
            if !header_checked && any_row {
                return Err(IngestError::source(
                    path,
                    "no line is a JSON object: is this a JSON-lines list?",
                ));
            }
        }
        ListFormat::Parquet => {
            let mut builder =
                ParquetRecordBatchReaderBuilder::try_new(open()?).map_err(|e| failed(&e))?;
            let header: Vec<String> = builder
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            if pass.planning() {
                b.check_header(&header)?;
            }
            let mut index = 0u64;
            if pass.from > 0 || pass.upto < u64::MAX {
                // Only the row groups holding rows of the range, and of them only those rows.
                let mut groups = Vec::new();
                let (mut start, mut first) = (0u64, None);
                for (g, group) in builder.metadata().row_groups().iter().enumerate() {
                    let end = start + group.num_rows().max(0) as u64;
                    if end > pass.from && start < pass.upto {
                        groups.push(g);
                        first.get_or_insert(start);
                    }
                    start = end;
                }
                let first = first.unwrap_or(pass.from);
                builder = builder
                    .with_row_groups(groups)
                    .with_offset(pass.from.saturating_sub(first) as usize);
                if pass.upto < u64::MAX {
                    builder = builder.with_limit((pass.upto - pass.from) as usize);
                }
                index = pass.from;
            }
            let reader = builder.build().map_err(|e| failed(&e))?;
            let opts = FormatOptions::default();
            for batch in reader {
                let batch = batch.map_err(|e| failed(&e))?;
                let columns: Vec<_> = batch.columns().to_vec();
                let formatters = columns
                    .iter()
                    .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| failed(&e))?;
                for i in 0..batch.num_rows() {
                    if index >= pass.upto {
                        return Ok(());
                    }
                    let fields = header
                        .iter()
                        .zip(columns.iter().zip(&formatters))
                        .map(|(name, (col, fmt))| {
                            let v = if col.is_null(i) {
                                None
                            } else if let Some(s) = col.as_any().downcast_ref::<StringArray>() {
                                Some(s.value(i).to_string())
                            } else {
                                Some(fmt.value(i).to_string())
                            };
                            (name.clone(), v)
                        })
                        .collect();
                    visit(index, b.build(index as usize + 1, fields))?;
                    index += 1;
                }
            }
        }
    }
    Ok(())
}

fn scan_folder(
    root: &Path,
    identity: FolderIdentity,
    pass: Pass,
    visit: &mut Visit,
) -> Result<u64, IngestError> {
    if !root.is_dir() {
        return Err(IngestError::source(
            root,
            "is not a folder (for the demo photographs, run tools/fetch-assets first)",
        ));
    }
    let mut skipped = 0;
    let mut index = 0u64;
    let walker = walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name();
    for entry in walker {
        if index >= pass.upto {
            break;
        }
        let entry = entry.map_err(|e| IngestError::source(root, e.to_string()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
        if rel
            .components()
            .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
        {
            continue;
        }
        let ext = entry
            .path()
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if !ext
            .as_deref()
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e))
        {
            if ext.as_deref() != Some("txt") {
                skipped += 1;
            }
            continue;
        }
        if index < pass.from {
            index += 1;
            continue;
        }
        let label = match identity {
            FolderIdentity::Subfolder if rel.components().count() > 1 => rel
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned()),
            _ => None,
        };
        // Planning needs no captions.
        let caption = if pass.planning() {
            None
        } else {
            std::fs::read_to_string(entry.path().with_extension("txt"))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let origin = match label.as_deref().map(check_identity) {
            Some(Err(e)) => Origin::Invalid {
                status: ImageStatus::InvalidIdentity,
                error: format!("{}: {e}", rel.display()),
            },
            _ => Origin::File,
        };
        visit(
            index,
            RawRow {
                source: entry.path().display().to_string(),
                origin,
                identity: label,
                caption,
                extra: Vec::new(),
            },
        )?;
        index += 1;
    }
    Ok(skipped)
}

/// Resolves every source path against `base` (the recipe's folder).
pub fn resolve_sources(sources: Vec<SourceSpec>, base: &Path) -> Vec<SourceSpec> {
    sources
        .into_iter()
        .map(|s| {
            s.with_path(|p| {
                if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    base.join(p)
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(path: PathBuf) -> SourceSpec {
        SourceSpec::from_cli(path)
    }

    #[test]
    fn csv_tsv_and_jsonl_give_the_same_rows_with_extras_carried() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("a.csv");
        std::fs::write(&csv, "url,identity,license,caption\nhttp://h/1.jpg,ann,cc-by,a smile\nhttp://h/2.jpg,bob,,\n").unwrap();
        let tsv = dir.path().join("b.tsv");
        std::fs::write(&tsv, "identity\turl\tlicense\nann\thttp://h/3.jpg\tcc0\n").unwrap();
        let jsonl = dir.path().join("c.jsonl");
        std::fs::write(&jsonl, "{\"url\":\"http://h/4.jpg\",\"identity\":\"cy\",\"score\":0.5}\n\n{\"url\":\"http://h/5.jpg\",\"identity\":null}\n").unwrap();
        let inputs = Inputs::read(&[urls(csv), urls(tsv), urls(jsonl)]).unwrap();
        assert_eq!(inputs.extra_columns, vec!["license", "score"]);
        let r: Vec<_> = inputs
            .rows
            .iter()
            .map(|r| {
                (
                    r.row_id,
                    r.source.as_str(),
                    r.identity.as_deref(),
                    r.caption.as_deref(),
                    r.extra.clone(),
                )
            })
            .collect();
        assert_eq!(
            r,
            vec![
                (
                    0,
                    "http://h/1.jpg",
                    Some("ann"),
                    Some("a smile"),
                    vec![Some("cc-by".into()), None]
                ),
                (1, "http://h/2.jpg", Some("bob"), None, vec![None, None]),
                (
                    2,
                    "http://h/3.jpg",
                    Some("ann"),
                    None,
                    vec![Some("cc0".into()), None]
                ),
                (
                    3,
                    "http://h/4.jpg",
                    Some("cy"),
                    None,
                    vec![None, Some("0.5".into())]
                ),
                (4, "http://h/5.jpg", None, None, vec![None, None]),
            ]
        );
    }

    #[test]
    fn missing_columns_and_collisions_name_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("a.csv");
        std::fs::write(&csv, "link,identity\nhttp://h/1.jpg,ann\n").unwrap();
        let e = Inputs::read(&[urls(csv.clone())]).unwrap_err().to_string();
        assert!(
            e.contains("no `url` column (columns: link, identity); set `url_column`"),
            "{e}"
        );
        std::fs::write(&csv, "url\nhttp://h/1.jpg\n").unwrap();
        let e = Inputs::read(&[urls(csv.clone())]).unwrap_err().to_string();
        assert!(e.contains("identity_column"), "{e}");
        std::fs::write(&csv, "url,identity,status\nhttp://h/1.jpg,a,x\n").unwrap();
        let e = Inputs::read(&[urls(csv)]).unwrap_err().to_string();
        assert!(e.contains("collide"), "{e}");
    }

    #[test]
    fn local_paths_in_a_list_are_relative_to_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("a.csv");
        std::fs::write(&csv, "url,identity\nphotos/1.jpg,ann\n/abs/2.jpg,bob\n").unwrap();
        let inputs = Inputs::read_with(&[urls(csv)], LocalPaths::Anywhere).unwrap();
        assert_eq!(
            inputs.rows[0].source,
            dir.path().join("photos/1.jpg").display().to_string()
        );
        assert_eq!(inputs.rows[1].source, "/abs/2.jpg");
        assert!(inputs.rows.iter().all(|r| r.origin == Origin::File));
    }

    fn invalid(r: &InputRow) -> Option<(ImageStatus, &str)> {
        match &r.origin {
            Origin::Invalid { status, error } => Some((*status, error.as_str())),
            _ => None,
        }
    }

    #[test]
    fn local_paths_are_refused_by_default_and_kept_under_the_list_when_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let lists = dir.path().join("lists");
        std::fs::create_dir_all(lists.join("photos")).unwrap();
        let csv = lists.join("a.csv");
        std::fs::write(
            &csv,
            "url,identity\nphotos/1.jpg,ann\n/etc/hostname,bob\n../secret.jpg,cy\nnot a url,dee\n",
        )
        .unwrap();
        let inputs = Inputs::read(&[urls(csv.clone())]).unwrap();
        assert_eq!(inputs.rows.len(), 4);
        for r in &inputs.rows {
            let (status, error) = invalid(r).expect("refused");
            assert_eq!(status, ImageStatus::InvalidUrl);
            assert!(error.contains("--allow-local-paths"), "{error}");
        }
        let inputs = Inputs::read_with(&[urls(csv)], LocalPaths::UnderList).unwrap();
        assert_eq!(inputs.rows[0].origin, Origin::File);
        assert_eq!(
            inputs.rows[0].source,
            lists.join("photos/1.jpg").display().to_string()
        );
        for r in &inputs.rows[1..3] {
            let (status, error) = invalid(r).expect("outside the list's folder");
            assert_eq!(status, ImageStatus::InvalidUrl);
            assert!(error.contains("--allow-absolute-paths"), "{error}");
        }
        // With local paths allowed, any other text is a path (and fails to read later).
        assert_eq!(inputs.rows[3].origin, Origin::File);
    }

    #[test]
    fn bad_rows_are_row_statuses_and_the_rest_of_the_list_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("a.csv");
        std::fs::write(
            &csv,
            "url,identity\nhttp://h/1.jpg,ann\n,bob\nhttp://h/3.jpg,../up\nhttp://h/4.jpg\nhttp://h/5.jpg,cy\n",
        )
        .unwrap();
        let inputs = Inputs::read(&[urls(csv)]).unwrap();
        assert_eq!(inputs.rows.len(), 5);
        assert_eq!(inputs.rows[0].origin, Origin::Url);
        let (s, e) = invalid(&inputs.rows[1]).unwrap();
        assert_eq!(s, ImageStatus::InvalidUrl);
        assert!(e.contains("row 3: empty `url`"), "{e}");
        let (s, e) = invalid(&inputs.rows[2]).unwrap();
        assert_eq!(s, ImageStatus::InvalidIdentity);
        assert!(e.contains("row 4") && e.contains("identity"), "{e}");
        let (s, e) = invalid(&inputs.rows[3]).unwrap();
        assert_eq!(s, ImageStatus::InvalidUrl);
        assert!(e.contains("row 5: 1 fields, the header has 2"), "{e}");
        assert_eq!(inputs.rows[4].origin, Origin::Url);

        let jsonl = dir.path().join("b.jsonl");
        std::fs::write(
            &jsonl,
            "{\"url\":\"http://h/1.jpg\",\"identity\":\"a\"}\n{not json\n{\"url\":\"\",\"identity\":\"b\"}\n",
        )
        .unwrap();
        let inputs = Inputs::read(&[urls(jsonl)]).unwrap();
        assert_eq!(inputs.rows.len(), 3);
        assert!(invalid(&inputs.rows[1]).unwrap().1.contains("row 2"));
        assert!(invalid(&inputs.rows[2]).unwrap().1.contains("empty `url`"));
    }

    #[test]
    fn unlabeled_lists_and_custom_columns() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("a.csv");
        std::fs::write(&csv, "image,who\nhttp://h/1.jpg,ann\n").unwrap();
        let spec = SourceSpec::Urls {
            path: csv,
            format: None,
            url_column: "image".into(),
            identity_column: "".into(),
            caption_column: "caption".into(),
        };
        let inputs = Inputs::read(&[spec]).unwrap();
        assert_eq!(inputs.rows[0].identity, None);
        assert_eq!(inputs.extra_columns, vec!["who"]);
    }

    #[test]
    fn folders_take_subfolders_as_identities_and_txt_as_captions() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("ann/nested")).unwrap();
        std::fs::create_dir_all(root.join("bob")).unwrap();
        std::fs::create_dir_all(root.join(".hidden")).unwrap();
        for f in [
            "ann/1.jpg",
            "ann/nested/2.PNG",
            "bob/3.webp",
            "loose.jpg",
            ".hidden/x.jpg",
            "bob/notes.md",
        ] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        std::fs::write(root.join("ann/1.txt"), "a woman smiling\n").unwrap();
        let spec = SourceSpec::Folder {
            path: root.to_path_buf(),
            identity: FolderIdentity::Subfolder,
        };
        let inputs = Inputs::read(&[spec]).unwrap();
        let got: Vec<_> = inputs
            .rows
            .iter()
            .map(|r| {
                let rel = Path::new(&r.source)
                    .strip_prefix(root)
                    .unwrap()
                    .display()
                    .to_string();
                (rel, r.identity.clone(), r.caption.clone())
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "ann/1.jpg".into(),
                    Some("ann".into()),
                    Some("a woman smiling".into())
                ),
                ("ann/nested/2.PNG".into(), Some("ann".into()), None),
                ("bob/3.webp".into(), Some("bob".into()), None),
                ("loose.jpg".into(), None, None),
            ]
        );
        assert_eq!(inputs.skipped_files, 1);
        assert!(inputs.rows.iter().all(|r| r.origin == Origin::File));
    }

    /// Every source kind, with the rows that are hard to count (quoted line breaks, wrong field
    /// counts, invalid UTF-8, blank and broken JSON lines, extras first seen late), each
    /// crossing several checkpoints and Parquet row groups.
    fn mixed_sources(dir: &Path) -> Vec<SourceSpec> {
        let mut csv = b"url,identity,note\n".to_vec();
        for i in 0..23 {
            match i {
                3 => csv.extend_from_slice(b"http://h/c3.jpg,ann,\"two\nlines\"\n"),
                5 => csv.extend_from_slice(b"http://h/c5.jpg,bob\n"),
                9 => csv.extend_from_slice(b"http://h/c9.jpg,\xff\xfe,x\n"),
                11 => csv.extend_from_slice(b"\n"),
                _ => csv
                    .extend_from_slice(format!("http://h/c{i}.jpg,id{},n{i}\n", i % 3).as_bytes()),
            }
        }
        let csv_path = dir.join("a.csv");
        std::fs::write(&csv_path, csv).unwrap();
        let mut jsonl = String::new();
        for i in 0..19 {
            match i {
                2 | 7 => jsonl.push_str("\n  \n"),
                4 => jsonl.push_str("{broken\r\n"),
                13 => jsonl.push_str(&format!(
                    "{{\"url\":\"http://h/j{i}.jpg\",\"identity\":\"cy\",\"score\":{i}}}\r\n"
                )),
                _ => jsonl.push_str(&format!(
                    "{{\"url\":\"http://h/j{i}.jpg\",\"identity\":\"id{}\"}}\n",
                    i % 2
                )),
            }
        }
        let jsonl_path = dir.join("b.jsonl");
        std::fs::write(&jsonl_path, jsonl).unwrap();
        let parquet_path = dir.join("c.parquet");
        {
            use arrow::array::{ArrayRef, Int64Array, RecordBatch};
            let urls: Vec<String> = (0..31).map(|i| format!("http://h/p{i}.jpg")).collect();
            let ids: Vec<Option<String>> = (0..31)
                .map(|i| (i % 4 != 1).then(|| format!("id{}", i % 3)))
                .collect();
            let votes: Vec<Option<i64>> = (0..31).map(|i| (i >= 20).then_some(i)).collect();
            let batch = RecordBatch::try_from_iter([
                (
                    "url",
                    std::sync::Arc::new(StringArray::from(urls)) as ArrayRef,
                ),
                (
                    "identity",
                    std::sync::Arc::new(StringArray::from(ids)) as ArrayRef,
                ),
                (
                    "votes",
                    std::sync::Arc::new(Int64Array::from(votes)) as ArrayRef,
                ),
            ])
            .unwrap();
            let props = parquet::file::properties::WriterProperties::builder()
                .set_max_row_group_size(6)
                .build();
            let file = File::create(&parquet_path).unwrap();
            let mut w =
                parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
        }
        let folder = dir.join("photos");
        for f in [
            "ann/1.jpg",
            "ann/2.jpg",
            "bob/3.png",
            "bob/x.md",
            "loose.jpg",
            "z/4.jpg",
            "z/5.jpg",
        ] {
            std::fs::create_dir_all(folder.join(f).parent().unwrap()).unwrap();
            std::fs::write(folder.join(f), b"x").unwrap();
        }
        std::fs::write(folder.join("bob/3.txt"), "a caption").unwrap();
        vec![
            urls(csv_path),
            urls(jsonl_path),
            urls(parquet_path),
            SourceSpec::Folder {
                path: folder,
                identity: FolderIdentity::Subfolder,
            },
        ]
    }

    #[test]
    fn any_range_reads_the_rows_of_one_whole_read() {
        let dir = tempfile::tempdir().unwrap();
        let sources = mixed_sources(dir.path());
        let all = Inputs::read(&sources).unwrap();
        let plan = InputsPlan::scan(&sources, LocalPaths::Refuse).unwrap();
        assert_eq!(plan.rows, 0..all.rows.len());
        assert_eq!(all.rows.len(), 22 + 17 + 31 + 6);
        assert_eq!(plan.extra_columns, vec!["note", "score", "votes"]);
        assert_eq!(plan.skipped_files, 1);
        assert!(plan.parts[..2].iter().all(|p| p.checkpoints.len() >= 3));
        // The fingerprint is the one of the rows read whole (so runs started before keep theirs).
        let mut text = String::new();
        for r in &all.rows {
            text.push_str(&format!(
                "{}\t{}\n",
                r.source,
                r.identity.as_deref().unwrap_or("")
            ));
        }
        assert_eq!(plan.sha256, idforge_core::hash::sha256_hex(text.as_bytes()));
        assert_eq!(all.rows[5].source, "http://h/c5.jpg");
        assert!(invalid(&all.rows[5]).unwrap().1.contains("row 7: 2 fields"));
        assert!(invalid(&all.rows[9]).unwrap().1.contains("row 11"));
        assert_eq!(all.rows[22 + 2].source, "http://h/j3.jpg");
        assert!(
            invalid(&all.rows[22 + 3])
                .unwrap()
                .1
                .contains("row 6: not a JSON object")
        );
        assert_eq!(all.rows[22 + 11].extra, vec![None, Some("13".into()), None]);
        assert_eq!(
            all.rows[22 + 17 + 25].extra,
            vec![None, None, Some("25".into())]
        );
        assert_eq!(
            all.rows[22 + 17 + 31 + 2].caption.as_deref(),
            Some("a caption")
        );
        let n = all.rows.len() as u64;
        for start in 0..=n {
            for len in [0, 1, 2, 3, 5, 8, 13, 40, 100] {
                let range = start..start + len;
                let got = plan.read(range.clone()).unwrap();
                let want = &all.rows[start as usize..(start + len).min(n) as usize];
                assert_eq!(got, want, "rows {range:?}");
            }
        }
    }

    #[test]
    fn a_list_changed_after_planning_is_an_error_not_shifted_rows() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("a.csv");
        std::fs::write(&csv, "url,identity\nhttp://h/1.jpg,a\nhttp://h/2.jpg,b\n").unwrap();
        let plan = InputsPlan::scan(&[urls(csv.clone())], LocalPaths::Refuse).unwrap();
        std::fs::write(&csv, "url,identity\nhttp://h/1.jpg,a\n").unwrap();
        let e = plan.read(0..2).unwrap_err().to_string();
        assert!(e.contains("changed while this run was reading it"), "{e}");
        std::fs::write(
            &csv,
            "url,identity,new\nhttp://h/1.jpg,a,x\nhttp://h/2.jpg,b,y\n",
        )
        .unwrap();
        let e = plan.read(1..2).unwrap_err().to_string();
        assert!(e.contains("changed while"), "{e}");
    }
}
