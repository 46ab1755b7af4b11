//! The ingest stage: input rows of a shard → fetched, validated, stored rows, journaled one by
//! one; once every shard is done, the merged `images.parquet` with duplicates flagged.
//!
//! Files under `runs/<name>/ingest/`:
//! - `inputs.json`: row count and fingerprint of the sources, checked on every re-run;
//! - `shards/<shard>.journal.jsonl`: one finished row per line, appended as rows finish, so a
//!   killed run resumes where it stopped (a torn last line is discarded);
//! - `shards/<shard>.images.parquet`: the shard's rows, before duplicate flags;
//! - `images.parquet`, `stats.json`: the merged table;
//! - `store/ab/cdef….<ext>`: the bytes (unless the recipe names another store).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use idforge_core::error::IoContext;
use idforge_core::journal::Journal;
use idforge_core::progress::Progress;
use idforge_core::run::{StageDir, read_json, write_json};
use idforge_core::schema::{ImageRow, ImageStatus, ImagesTable, RunTable, TableInfo, TableSpec};
use idforge_core::{RunDir, Shard, Stage, StageStats};

use crate::error::IngestError;
use crate::fetch::{Fetched, Fetcher};
use crate::settings::IngestSettings;
use crate::source::{InputRow, InputsPlan, LocalPaths, Origin};
use crate::store::Store;
use crate::validate::{Inspected, inspect};

/// The ingest stage, ready to run: sources planned, client built, store chosen.
pub struct IngestStage {
    settings: IngestSettings,
    /// Row count, extra columns and fingerprint of the sources; no rows (a shard reads its own).
    inputs: InputsPlan,
    store: Store,
    /// Prefix that turns a store-relative path into the `store_path` column value.
    store_prefix: String,
    fetcher: Fetcher,
    pool: rayon::ThreadPool,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct InputsFingerprint {
    rows: usize,
    sha256: String,
}

impl InputsFingerprint {
    fn of(inputs: &InputsPlan) -> Self {
        InputsFingerprint {
            rows: inputs.rows.len(),
            sha256: inputs.sha256.clone(),
        }
    }
}

impl IngestStage {
    /// Plans the sources (one streaming pass, no rows kept) and prepares the stage for the run
    /// directory `run_root`.
    pub fn new(settings: IngestSettings, run_root: &Path) -> Result<Self, IngestError> {
        if settings.sources.is_empty() {
            return Err(IngestError::Settings(
                "no sources: add [[ingest.sources]] to the recipe or pass --source".into(),
            ));
        }
        let inputs = InputsPlan::scan(
            &settings.sources,
            LocalPaths::from_flags(settings.allow_local_paths, settings.allow_absolute_paths),
        )?;
        let run = RunDir::at(run_root);
        let store_root = settings
            .store
            .clone()
            .unwrap_or_else(|| run.stage(ImagesTable::STAGE).path().join("store"));
        let store_prefix = format!("{}/", run.stored(&store_root));
        let threads = idforge_core::limits::threads_or_cores(settings.decode_threads);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("ingest-decode-{i}"))
            .build()
            .map_err(|e| IngestError::Settings(e.to_string()))?;
        let fetcher = Fetcher::new(settings.fetch.clone())?;
        Ok(IngestStage {
            settings,
            inputs,
            store: Store::new(store_root),
            store_prefix,
            fetcher,
            pool,
        })
    }

    /// What planning read from the sources: row count, extra columns, fingerprint.
    pub fn inputs(&self) -> &InputsPlan {
        &self.inputs
    }

    /// The settings in force.
    pub fn settings(&self) -> &IngestSettings {
        &self.settings
    }

    /// Checks that the sources are the ones this run started with.
    fn check_inputs(&self, dir: &StageDir) -> Result<(), IngestError> {
        let path = dir.path().join("inputs.json");
        let now = InputsFingerprint::of(&self.inputs);
        if path.is_file() {
            let then: InputsFingerprint = read_json(&path)?;
            if then != now {
                return Err(IngestError::Settings(format!(
                    "the sources changed since {} was started ({} rows then, {} now); \
                     use a new run name, or remove that folder to start over",
                    dir.path().display(),
                    then.rows,
                    now.rows
                )));
            }
            return Ok(());
        }
        Ok(write_json(&path, &now)?)
    }

    async fn process(
        &self,
        row: InputRow,
        journal: &Arc<Journal<ImageRow>>,
    ) -> Result<ImageRow, IngestError> {
        let mut out = ImageRow::pending(row.row_id, row.source.clone(), row.identity.clone());
        out.caption = row.caption;
        out.extra = row.extra;
        let body = match row.origin {
            Origin::Url => match self.fetcher.fetch(&row.source).await {
                Fetched::Body { bytes, http_status } => {
                    out.http_status = Some(http_status);
                    Some(bytes)
                }
                Fetched::Failed {
                    status,
                    error,
                    http_status,
                } => {
                    out.status = status;
                    out.error = Some(error);
                    out.http_status = http_status;
                    out.fetched_at = Some(Utc::now());
                    journal.append(&out)?;
                    return Ok(out);
                }
            },
            Origin::File => None,
            Origin::Invalid { status, error } => {
                // A row the list itself got wrong (empty or unusable URL, a local path without
                // --allow-local-paths, a bad identity): its status, not a stopped run.
                out.status = status;
                out.error = Some(error);
                out.fetched_at = Some(Utc::now());
                journal.append(&out)?;
                return Ok(out);
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (journal, store, prefix) = (
            journal.clone(),
            self.store.clone(),
            self.store_prefix.clone(),
        );
        let (max_pixels, max_bytes) = (
            self.settings.max_pixels.get(),
            self.settings.fetch.max_bytes.get(),
        );
        self.pool.spawn(move || {
            let result = (|| {
                let bytes = match body {
                    Some(b) => Ok(b),
                    None => read_local(Path::new(&out.source), max_bytes),
                };
                let mut stored = None;
                match bytes {
                    Err((status, error)) => {
                        out.status = status;
                        out.error = Some(error);
                    }
                    Ok(bytes) => {
                        out.bytes = Some(bytes.len() as u64);
                        match inspect(&bytes, max_pixels) {
                            Inspected::Image {
                                image_id,
                                width,
                                height,
                                format,
                                phash,
                            } => {
                                let rel = Store::relative_path(&image_id, format);
                                out.store_path = Some(format!("{prefix}{}", rel.display()));
                                stored = Some((image_id.clone(), format, bytes));
                                out.image_id = Some(image_id);
                                out.width = Some(width);
                                out.height = Some(height);
                                out.format = Some(format.to_string());
                                out.phash = Some(phash);
                            }
                            Inspected::Rejected {
                                image_id,
                                status,
                                error,
                            } => {
                                out.image_id = Some(image_id);
                                out.status = status;
                                out.error = Some(error);
                            }
                        }
                    }
                }
                out.fetched_at = Some(Utc::now());
                // Journal first, then store: a stored file always has its journal line, and a
                // journaled row whose file is missing (killed in between) is redone on resume.
                journal.append(&out)?;
                if let Some((sha, ext, bytes)) = stored {
                    store.put(&sha, ext, &bytes).map_err(|e| {
                        idforge_core::CoreError::io(
                            store.root().join(Store::relative_path(&sha, ext)),
                            e,
                        )
                    })?;
                }
                Ok(out)
            })();
            let _ = tx.send(result);
        });
        rx.await.expect("decode pool never drops a task")
    }
}

/// Reads a local file; a missing or oversized file is a row status, not a run error.
fn read_local(path: &Path, max_bytes: u64) -> Result<Vec<u8>, (ImageStatus, String)> {
    let unreadable = |e: std::io::Error| {
        (
            ImageStatus::ReadError,
            format!("cannot read {}: {e}", path.display()),
        )
    };
    let len = std::fs::metadata(path).map_err(unreadable)?.len();
    if len > max_bytes {
        return Err((
            ImageStatus::TooLarge,
            format!("file is {len} bytes, over max_bytes = {max_bytes}"),
        ));
    }
    std::fs::read(path).map_err(unreadable)
}

fn stats_of(rows: &[ImageRow]) -> StageStats {
    let mut stats = StageStats {
        rows: rows.len() as u64,
        ..Default::default()
    };
    for r in rows {
        *stats
            .counts
            .entry(r.status.as_str().to_string())
            .or_default() += 1;
    }
    stats
}

impl Stage for IngestStage {
    type Error = IngestError;

    fn name(&self) -> &'static str {
        ImagesTable::STAGE
    }

    fn inputs(&self) -> &'static [TableInfo] {
        &[]
    }

    fn outputs(&self) -> &'static [TableInfo] {
        &[ImagesTable::INFO]
    }

    fn run_shard(&self, dir: &StageDir, shard: Shard) -> Result<StageStats, IngestError> {
        self.check_inputs(dir)?;
        let range = shard.rows(self.inputs.rows.len());
        let (journal, rows) = Journal::<ImageRow>::open(&dir.shard_file(shard, "journal.jsonl"))?;
        let journal = Arc::new(journal);
        let mut done: HashMap<u64, ImageRow> = rows.into_iter().map(|r| (r.row_id, r)).collect();
        done.retain(|id, row| {
            let stored = match (&row.image_id, &row.format) {
                (Some(sha), Some(ext)) if row.status == ImageStatus::Ok => self
                    .store
                    .root()
                    .join(Store::relative_path(sha, ext))
                    .is_file(),
                _ => true,
            };
            range.contains(&(*id as usize)) && stored
        });
        // Only this shard's rows are read (and of them, only those not done yet are kept).
        let mut todo: Vec<InputRow> = Vec::new();
        self.inputs
            .for_each(range.start as u64..range.end as u64, |r| {
                if !done.contains_key(&r.row_id) {
                    todo.push(r);
                }
                Ok(())
            })?;
        let progress = Progress::new(format!("ingest shard {shard}"), range.len() as u64);
        progress.inc(done.len() as u64);
        let before = (
            self.fetcher
                .counters
                .bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            self.fetcher
                .counters
                .requests
                .load(std::sync::atomic::Ordering::Relaxed),
            self.fetcher
                .counters
                .retries
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .worker_threads(2)
            .thread_name("ingest-net")
            .build()
            .at(dir.path())?;
        let concurrency = self.settings.fetch.concurrency.usize();
        runtime.block_on(async {
            let mut results = futures_util::stream::iter(todo)
                .map(|row| self.process(row, &journal))
                .buffer_unordered(concurrency);
            while let Some(row) = results.next().await {
                let row = row?;
                done.insert(row.row_id, row);
                progress.inc(1);
            }
            Ok::<_, IngestError>(())
        })?;
        progress.finish();
        let mut rows: Vec<ImageRow> = done.into_values().collect();
        rows.sort_by_key(|r| r.row_id);
        let table = ImagesTable {
            extra_columns: self.inputs.extra_columns.clone(),
            rows,
        };
        table.write(&dir.shard_table::<ImagesTable>(shard))?;
        let mut stats = stats_of(&table.rows);
        let c = &self.fetcher.counters;
        let delta = |now: &std::sync::atomic::AtomicU64, then: u64| {
            (now.load(std::sync::atomic::Ordering::Relaxed) - then) as f64
        };
        stats
            .extra
            .insert("bytes_fetched".into(), delta(&c.bytes, before.0));
        stats
            .extra
            .insert("http_requests".into(), delta(&c.requests, before.1));
        stats
            .extra
            .insert("http_retries".into(), delta(&c.retries, before.2));
        Ok(stats)
    }

    /// Merges the shard tables. This holds every row of the list in memory (the tables are
    /// read, sorted and duplicate-flagged together), unlike planning and the shards.
    fn finalize(&self, dir: &StageDir, shards: &[Shard]) -> Result<StageStats, IngestError> {
        let mut table = ImagesTable {
            extra_columns: self.inputs.extra_columns.clone(),
            rows: Vec::new(),
        };
        let mut extra = StageStats::default();
        for &shard in shards {
            let part = ImagesTable::read(&dir.shard_table::<ImagesTable>(shard))?;
            table.rows.extend(part.rows);
            extra.merge(&dir.shard_stats(shard)?);
        }
        table.rows.sort_by_key(|r| r.row_id);
        let counts =
            crate::dedup::flag_duplicates(&mut table.rows, self.settings.phash_threshold.u32());
        table.write(&dir.table::<ImagesTable>())?;
        for &shard in shards {
            // The shard tables hold every row now; the journals are no longer needed.
            let _ = std::fs::remove_file(dir.shard_file(shard, "journal.jsonl"));
        }
        let mut stats = stats_of(&table.rows);
        stats.seconds = extra.seconds;
        stats.extra = extra.extra;
        stats
            .extra
            .insert("exact_duplicates".into(), counts.exact_duplicates as f64);
        stats
            .extra
            .insert("near_duplicates".into(), counts.near_duplicates as f64);
        stats.extra.insert(
            "skipped_non_image_files".into(),
            self.inputs.skipped_files as f64,
        );
        Ok(stats)
    }
}
