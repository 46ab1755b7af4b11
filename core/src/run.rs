//! The run directory and the stage contract.
//!
//! ```text
//! runs/<name>/<stage>/
//!   plan.json                   shard count fixed by the first run
//!   shards/<shard>.*            what the stage writes per shard (tables, journals)
//!   stats/<shard>.json          written by the runner after a shard succeeds ...
//!   completions/<shard>         ... then this empty marker; a re-run skips the shard
//!   <table>.parquet, stats.json the merged output, written once every shard is complete
//!   completions/final
//!   merge.lock                  held (created exclusively) by the one task that merges
//! ```
//!
//! A shard is `i/N` of the stage's input rows. On one machine the runner goes through all N
//! shards; on a cluster every task runs one (`--shard i/N`, or the Slurm array / Kubernetes
//! indexed-job variables) and a task that finds every shard complete merges — exactly one,
//! however the tasks race: the others find the lock taken (or the merge done) and say so.
//! Temporary files are named by host, process and a random tag, never by process id alone.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, IoContext, Result};
use crate::schema::{RunTable, TableInfo};

/// The merged stats of a finished stage, beside its tables.
pub const STATS_FILE: &str = "stats.json";

/// `runs/<name>`: everything one recipe produces.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run `name` under `runs_root` (usually `runs/`).
    pub fn new(runs_root: impl AsRef<Path>, name: &str) -> Self {
        RunDir {
            root: runs_root.as_ref().join(name),
        }
    }

    /// The run `name` under `runs_root`, with `name` checked to be one plain path component
    /// ([`crate::Name`]): what to call with a name a user typed, so that `../escape` is an
    /// error naming the problem instead of a folder outside `runs_root`.
    pub fn named(runs_root: impl AsRef<Path>, name: &str) -> Result<Self> {
        let name = crate::Name::new(name).map_err(|e| CoreError::Name(e.to_string()))?;
        Ok(Self::new(runs_root, name.as_str()))
    }

    /// A run directory given by its own path.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }

    /// The run directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory a stage owns.
    pub fn stage(&self, stage: &str) -> StageDir {
        StageDir {
            path: self.root.join(stage),
        }
    }

    /// Where table `T` of this run is (`runs/<name>/<stage>/<file>`), whether or not it exists.
    pub fn table<T: RunTable>(&self) -> PathBuf {
        self.table_at(&T::INFO)
    }

    /// [`RunDir::table`] for a table known by its declaration (a stage's inputs and outputs).
    pub fn table_at(&self, table: &TableInfo) -> PathBuf {
        self.root.join(table.stage).join(table.file)
    }

    /// Table `T`'s path when it exists; otherwise an error naming the table, the path looked at
    /// and the command that writes it.
    pub fn require<T: RunTable>(&self) -> Result<PathBuf> {
        self.require_at(&T::INFO)
    }

    /// [`RunDir::require`] for a table known by its declaration.
    pub fn require_at(&self, table: &TableInfo) -> Result<PathBuf> {
        let path = self.table_at(table);
        if path.exists() {
            Ok(path)
        } else {
            Err(CoreError::MissingTable {
                table: table.name,
                path,
                command: table.command,
            })
        }
    }

    /// A path stored in a table (`store_path`, `crop_path`, `ref_path`) as a real path: tables
    /// store paths relative to the run folder, so that a run can be moved or copied whole, and
    /// absolute ones only for files outside it (a store the recipe put elsewhere).
    pub fn resolve(&self, stored: &str) -> PathBuf {
        let p = Path::new(stored);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        }
    }

    /// The inverse of [`RunDir::resolve`]: how a table stores `path`: relative to the run folder
    /// with `/` separators when it is inside it, else absolute.
    pub fn stored(&self, path: &Path) -> String {
        match path.strip_prefix(&self.root) {
            Ok(rel) => rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/"),
            Err(_) => std::path::absolute(path)
                .unwrap_or_else(|_| path.to_path_buf())
                .display()
                .to_string(),
        }
    }
}

/// `runs/<name>/<stage>`: the files one stage owns.
#[derive(Debug, Clone)]
pub struct StageDir {
    path: PathBuf,
}

impl StageDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where this stage's own table `T` goes once merged. `T` must be a table of this stage.
    pub fn table<T: RunTable>(&self) -> PathBuf {
        debug_assert!(
            self.path.file_name().is_some_and(|n| n == T::STAGE),
            "{} is not the folder of stage `{}`",
            self.path.display(),
            T::STAGE
        );
        self.path.join(T::FILE)
    }

    /// A shard's part of this stage's own table `T`: `shards/<shard>.<file>`.
    pub fn shard_table<T: RunTable>(&self, shard: Shard) -> PathBuf {
        self.shard_file(shard, T::FILE)
    }

    /// A per-shard file: `shards/<shard>.<suffix>`.
    pub fn shard_file(&self, shard: Shard, suffix: &str) -> PathBuf {
        self.path
            .join("shards")
            .join(format!("{}.{suffix}", shard.label()))
    }

    fn completion(&self, label: &str) -> PathBuf {
        self.path.join("completions").join(label)
    }

    fn stats_file(&self, label: &str) -> PathBuf {
        self.path.join("stats").join(format!("{label}.json"))
    }

    /// Whether the shard's completion marker exists.
    pub fn is_complete(&self, shard: Shard) -> bool {
        self.completion(&shard.label()).is_file()
    }

    /// Whether the merged output has been written.
    pub fn is_final(&self) -> bool {
        self.completion("final").is_file()
    }

    /// The merged `stats.json`, once final.
    pub fn final_stats(&self) -> Result<StageStats> {
        read_json(&self.path.join(STATS_FILE))
    }

    /// Stats of a completed shard.
    pub fn shard_stats(&self, shard: Shard) -> Result<StageStats> {
        read_json(&self.stats_file(&shard.label()))
    }

    /// Records stats, then the completion marker (never the marker without its stats).
    fn complete(&self, label: &str, stats: &StageStats, stats_path: &Path) -> Result<()> {
        write_json(stats_path, stats)?;
        let marker = self.completion(label);
        std::fs::create_dir_all(marker.parent().unwrap()).at(&marker)?;
        std::fs::write(&marker, b"").at(&marker)
    }

    /// Removes the final marker (the merged table no longer matches its shards).
    fn invalidate_final(&self) -> Result<()> {
        let marker = self.completion("final");
        match std::fs::remove_file(&marker) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at(&marker),
            _ => Ok(()),
        }
    }

    /// Takes the stage's merge lock (`merge.lock`, created exclusively), or says who holds it.
    /// A lock left by a dead process of this host is taken over; one from another host is not
    /// (its owner cannot be asked), and the message says to remove it if no task is merging.
    fn lock_merge(&self) -> Result<MergeLock> {
        let path = self.path.join(MERGE_LOCK);
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    use std::io::Write as _;
                    let holder = format!(
                        "{} {} {}",
                        crate::unique::host_name(),
                        std::process::id(),
                        Utc::now().to_rfc3339()
                    );
                    f.write_all(holder.as_bytes()).at(&path)?;
                    return Ok(MergeLock::Held(LockFile { path }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    let mut parts = holder.split_whitespace();
                    let (host, pid) = (
                        parts.next(),
                        parts.next().and_then(|p| p.parse::<u32>().ok()),
                    );
                    let dead_here = host == Some(crate::unique::host_name())
                        && pid.is_some_and(|pid| {
                            Path::new("/proc/self").exists()
                                && !Path::new(&format!("/proc/{pid}")).exists()
                        });
                    if dead_here {
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    let holder = if holder.trim().is_empty() {
                        "a task that has not written its name yet".to_string()
                    } else {
                        holder.trim().to_string()
                    };
                    return Ok(MergeLock::Busy(format!(
                        "{holder} (remove {} if no task is merging)",
                        path.display()
                    )));
                }
                Err(e) => return Err(e).at(&path),
            }
        }
        Ok(MergeLock::Busy(format!(
            "another task keeps taking {}",
            path.display()
        )))
    }

    /// Removes everything the stage wrote except the entries named in `keep` (a cache), so
    /// that the next run starts over — with another shard count if it likes — without paying
    /// again for what the kept entries hold.
    pub fn reset_keeping(&self, keep: &[&str]) -> Result<()> {
        let entries = match std::fs::read_dir(&self.path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).at(&self.path),
        };
        for entry in entries {
            let entry = entry.at(&self.path)?;
            if keep.iter().any(|k| entry.file_name() == **k) {
                continue;
            }
            let path = entry.path();
            if entry.file_type().at(&path)?.is_dir() {
                std::fs::remove_dir_all(&path).at(&path)?;
            } else {
                std::fs::remove_file(&path).at(&path)?;
            }
        }
        Ok(())
    }

    /// The shard count fixed by the first run (`plan.json`).
    fn planned_shards(&self) -> Result<usize> {
        #[derive(Deserialize)]
        struct Plan {
            shards: usize,
        }
        let path = self.path.join("plan.json");
        if !path.is_file() {
            return Err(CoreError::Shard {
                spec: "merge".into(),
                message: format!(
                    "nothing to merge: no shard of {} has run ({} is missing)",
                    self.path.display(),
                    path.display()
                ),
            });
        }
        Ok(read_json::<Plan>(&path)?.shards)
    }

    /// Fixes the shard count on first use; a later run with another count is an error.
    fn check_plan(&self, count: usize) -> Result<()> {
        #[derive(Serialize, Deserialize)]
        struct Plan {
            shards: usize,
        }
        let path = self.path.join("plan.json");
        if path.is_file() {
            let plan: Plan = read_json(&path)?;
            if plan.shards != count {
                return Err(CoreError::Shard {
                    spec: format!("{count}"),
                    message: format!(
                        "{} was started with {} shards; use the same count, or remove {} to start over",
                        self.path.display(),
                        plan.shards,
                        self.path.display()
                    ),
                });
            }
            return Ok(());
        }
        write_json(&path, &Plan { shards: count })
    }
}

/// The stage's merge lock file: created exclusively, holds `host pid time`, removed after the merge.
const MERGE_LOCK: &str = "merge.lock";

/// The merge lock, while held; removed when dropped, the merge done or failed.
struct LockFile {
    path: PathBuf,
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The outcome of asking for the merge lock.
enum MergeLock {
    Held(LockFile),
    Busy(String),
}

/// Reads a JSON file into `T`.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).at(path)?;
    serde_json::from_str(&text).map_err(|e| CoreError::Table {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    let tmp = crate::table::temp_sibling(path);
    let text = serde_json::to_string_pretty(value).expect("stats serialise");
    std::fs::write(&tmp, text + "\n").at(&tmp)?;
    std::fs::rename(&tmp, path).at(path)
}

/// Shard `index` of `count` (zero-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shard {
    /// Zero-based index.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl Shard {
    /// The only shard of an unsharded run.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Builds a shard, checking `index < count`.
    pub fn new(index: usize, count: usize) -> Result<Self> {
        if count == 0 || index >= count {
            return Err(CoreError::Shard {
                spec: format!("{index}/{count}"),
                message: "the index must be below the count, counting from 0 (e.g. 0/4 … 3/4)"
                    .into(),
            });
        }
        Ok(Shard { index, count })
    }

    /// Parses `i/N`.
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |m: &str| CoreError::Shard {
            spec: spec.to_string(),
            message: m.to_string(),
        };
        let (i, n) = spec
            .split_once('/')
            .ok_or_else(|| bad("expected INDEX/COUNT, e.g. 3/8"))?;
        let i = i
            .trim()
            .parse()
            .map_err(|_| bad("the index is not a number"))?;
        let n = n
            .trim()
            .parse()
            .map_err(|_| bad("the count is not a number"))?;
        Shard::new(i, n).map_err(|_| bad("the index must be below the count, counting from 0"))
    }

    /// The shard a cluster scheduler assigned to this process, if any: Slurm job arrays or
    /// Kubernetes indexed jobs (`JOB_COMPLETION_INDEX`, with the count in `IDFORGE_SHARDS`).
    ///
    /// For Slurm, with `IDFORGE_SHARDS` set the shard is `SLURM_ARRAY_TASK_ID` of that many, so
    /// a resubmitted part of the array (`sbatch --array=2`) runs shard 2 of the same count;
    /// without it, the array is taken whole: `SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN` of
    /// `SLURM_ARRAY_TASK_COUNT`.
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let num = |k: &str| -> Result<Option<usize>> {
            match var(k) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| CoreError::Shard {
                    spec: format!("{k}={v}"),
                    message: "not a number".into(),
                }),
            }
        };
        let shards = num("IDFORGE_SHARDS")?;
        if let (Some(id), Some(count)) = (num("SLURM_ARRAY_TASK_ID")?, shards) {
            return Shard::new(id, count).map(Some);
        }
        if let (Some(id), Some(count)) =
            (num("SLURM_ARRAY_TASK_ID")?, num("SLURM_ARRAY_TASK_COUNT")?)
        {
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            return Shard::new(id.saturating_sub(min), count).map(Some);
        }
        if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let count = shards.ok_or_else(|| CoreError::Shard {
                spec: format!("JOB_COMPLETION_INDEX={index}"),
                message: "set IDFORGE_SHARDS to the job's completions count".into(),
            })?;
            return Shard::new(index, count).map(Some);
        }
        Ok(None)
    }

    /// The contiguous range of `total` rows this shard takes (sizes differ by at most one).
    pub fn rows(&self, total: usize) -> Range<usize> {
        let start = total * self.index / self.count;
        let end = total * (self.index + 1) / self.count;
        start..end
    }

    /// File-name label, `00003-of-00008`.
    pub fn label(&self) -> String {
        format!("{:05}-of-{:05}", self.index, self.count)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What a stage reports for a shard or for the whole run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageStats {
    /// Stage name.
    pub stage: String,
    /// `i/N`, or `all` for merged stats.
    pub shard: String,
    /// Input rows seen.
    pub rows: u64,
    /// Rows per outcome (status, verdict or reason).
    pub counts: BTreeMap<String, u64>,
    /// Wall-clock seconds of this run of the shard (merged stats: the sum).
    pub seconds: f64,
    /// When the work finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Stage-specific figures (bytes fetched, retries, ...).
    #[serde(default)]
    pub extra: BTreeMap<String, f64>,
}

impl StageStats {
    /// Adds another shard's figures into this one.
    pub fn merge(&mut self, other: &StageStats) {
        self.rows += other.rows;
        self.seconds += other.seconds;
        for (k, v) in &other.counts {
            *self.counts.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.extra {
            *self.extra.entry(k.clone()).or_default() += v;
        }
        self.finished_at = self.finished_at.max(other.finished_at);
    }
}

/// The contract of a stage: run one shard, then merge when all are done.
///
/// The runner ([`run_stage`]) owns stats and completion markers; a stage only writes its own
/// files under the stage directory. It declares the tables it reads and writes, and the runner
/// holds it to them: an input that is missing stops the run before any shard starts (naming the
/// command that writes it), and an output the merge did not write is an error.
pub trait Stage {
    /// The stage's error type; core errors convert into it.
    type Error: From<CoreError>;

    /// Directory name under the run, e.g. `ingest`.
    fn name(&self) -> &'static str;

    /// The tables the stage reads (each must exist before it runs), e.g.
    /// `&[ImagesTable::INFO]`; find them with [`RunDir::table_at`] or [`RunDir::table`].
    fn inputs(&self) -> &'static [TableInfo];

    /// The tables the stage writes in its own folder (each must exist after the merge).
    fn outputs(&self) -> &'static [TableInfo];

    /// Processes one shard. Must be resumable: a shard killed midway is run again from the start
    /// of this call, and should not redo work it has journaled.
    fn run_shard(
        &self,
        dir: &StageDir,
        shard: Shard,
    ) -> std::result::Result<StageStats, Self::Error>;

    /// Merges the shards' outputs into the stage's tables once every shard is complete.
    fn finalize(
        &self,
        dir: &StageDir,
        shards: &[Shard],
    ) -> std::result::Result<StageStats, Self::Error>;
}

/// Which shards this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSelection {
    /// All `N` shards, one after another.
    All(usize),
    /// Just this one (a cluster task).
    One(Shard),
}

/// What [`run_stage`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct StageReport {
    /// Shards run by this call.
    pub ran: Vec<Shard>,
    /// Shards skipped because they were already complete.
    pub skipped: Vec<Shard>,
    /// Shards still missing before the stage can be merged.
    pub waiting_for: Vec<Shard>,
    /// Every shard is done and another task holds the merge lock: who (`host pid time`).
    pub merging_elsewhere: Option<String>,
    /// The merged stats, when every shard is complete.
    pub merged: Option<StageStats>,
}

/// Runs the selected shards of `stage` (skipping complete ones), then merges once all are done.
pub fn run_stage<S: Stage>(
    stage: &S,
    run: &RunDir,
    selection: ShardSelection,
) -> std::result::Result<StageReport, S::Error> {
    for input in stage.inputs() {
        run.require_at(input)?;
    }
    let dir = run.stage(stage.name());
    let count = match selection {
        ShardSelection::All(n) => n,
        ShardSelection::One(s) => s.count,
    };
    dir.check_plan(count)?;
    let all: Vec<Shard> = (0..count).map(|i| Shard { index: i, count }).collect();
    let mine: Vec<Shard> = match selection {
        ShardSelection::All(_) => all.clone(),
        ShardSelection::One(s) => vec![s],
    };
    let mut report = StageReport {
        ran: vec![],
        skipped: vec![],
        waiting_for: vec![],
        merging_elsewhere: None,
        merged: None,
    };
    for shard in mine {
        if dir.is_complete(shard) {
            report.skipped.push(shard);
            continue;
        }
        // A shard run again makes the merged table stale.
        dir.invalidate_final()?;
        let start = Instant::now();
        let mut stats = stage.run_shard(&dir, shard)?;
        stats.stage = stage.name().to_string();
        stats.shard = shard.to_string();
        stats.seconds = start.elapsed().as_secs_f64();
        stats.finished_at = Some(Utc::now());
        let label = shard.label();
        dir.complete(&label, &stats, &dir.stats_file(&label))?;
        report.ran.push(shard);
    }
    merge_if_complete(stage, &dir, count, report)
}

/// Merges a stage whose shards are all complete, as the task that finishes last does: for a
/// scheduler's merge job that depends on the array (`sbatch --dependency=afterok:<job>`), or
/// after tasks that stopped before merging. Reports the shards still missing otherwise.
pub fn merge_stage<S: Stage>(
    stage: &S,
    run: &RunDir,
) -> std::result::Result<StageReport, S::Error> {
    let dir = run.stage(stage.name());
    let count = dir.planned_shards()?;
    let report = StageReport {
        ran: vec![],
        skipped: vec![],
        waiting_for: vec![],
        merging_elsewhere: None,
        merged: None,
    };
    merge_if_complete(stage, &dir, count, report)
}

/// The merge, once: every shard complete, then the merge lock, then (unless another task has
/// merged meanwhile) `finalize` and the final marker.
fn merge_if_complete<S: Stage>(
    stage: &S,
    dir: &StageDir,
    count: usize,
    mut report: StageReport,
) -> std::result::Result<StageReport, S::Error> {
    let all: Vec<Shard> = (0..count).map(|i| Shard { index: i, count }).collect();
    report.waiting_for = all
        .iter()
        .copied()
        .filter(|s| !dir.is_complete(*s))
        .collect();
    if report.waiting_for.is_empty() {
        if dir.is_final() {
            report.merged = Some(dir.final_stats()?);
            return Ok(report);
        }
        // Tasks finishing together all see every marker: the lock lets one of them merge.
        let _lock = match dir.lock_merge()? {
            MergeLock::Held(lock) => lock,
            MergeLock::Busy(holder) => {
                report.merging_elsewhere = Some(holder);
                return Ok(report);
            }
        };
        if dir.is_final() {
            // Merged by another task between our look and our lock.
            report.merged = Some(dir.final_stats()?);
            return Ok(report);
        }
        let mut stats = stage.finalize(dir, &all)?;
        stats.stage = stage.name().to_string();
        stats.shard = "all".into();
        stats.finished_at = Some(Utc::now());
        check_outputs(stage, dir)?;
        dir.complete("final", &stats, &dir.path.join(STATS_FILE))?;
        report.merged = Some(stats);
    }
    Ok(report)
}

/// Checks that the merge wrote every output the stage declares, in the stage's own folder.
fn check_outputs<S: Stage>(stage: &S, dir: &StageDir) -> Result<()> {
    for out in stage.outputs() {
        let path = dir.path.join(out.file);
        if out.stage != stage.name() || !path.exists() {
            return Err(CoreError::MissingOutput {
                stage: stage.name(),
                table: out.name,
                path,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{FacesTable, ImagesTable, TableSpec};
    use std::cell::RefCell;

    #[test]
    fn shards_cover_all_rows_exactly_once() {
        for total in [0, 1, 7, 100, 101] {
            for count in 1..6 {
                let mut next = 0;
                for index in 0..count {
                    let r = Shard::new(index, count).unwrap().rows(total);
                    assert_eq!(r.start, next);
                    assert!(r.len() <= total / count + 1);
                    next = r.end;
                }
                assert_eq!(next, total);
            }
        }
    }

    #[test]
    fn parses_shard_specs_and_rejects_bad_ones() {
        assert_eq!(Shard::parse("3/8").unwrap(), Shard { index: 3, count: 8 });
        for bad in ["8/8", "1", "a/2", "0/0", "-1/3"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shard_from_slurm_and_kubernetes_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "2"),
        ]);
        assert_eq!(
            Shard::from_vars(slurm).unwrap(),
            Some(Shard { index: 3, count: 4 })
        );
        // A resubmitted task of a 4-shard array: `sbatch --array=2` with IDFORGE_SHARDS=4.
        let resubmitted = env(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "1"),
            ("SLURM_ARRAY_TASK_MIN", "2"),
            ("IDFORGE_SHARDS", "4"),
        ]);
        assert_eq!(
            Shard::from_vars(resubmitted).unwrap(),
            Some(Shard { index: 2, count: 4 })
        );
        let k8s = env(&[("JOB_COMPLETION_INDEX", "1"), ("IDFORGE_SHARDS", "2")]);
        assert_eq!(
            Shard::from_vars(k8s).unwrap(),
            Some(Shard { index: 1, count: 2 })
        );
        assert!(Shard::from_vars(env(&[("JOB_COMPLETION_INDEX", "1")])).is_err());
        assert_eq!(Shard::from_vars(env(&[])).unwrap(), None);
    }

    struct Counting {
        runs: RefCell<Vec<Shard>>,
        fail_on: Option<usize>,
    }

    impl Stage for Counting {
        type Error = CoreError;
        fn name(&self) -> &'static str {
            "count"
        }
        fn inputs(&self) -> &'static [TableInfo] {
            &[]
        }
        fn outputs(&self) -> &'static [TableInfo] {
            &[]
        }
        fn run_shard(&self, _: &StageDir, shard: Shard) -> Result<StageStats> {
            if self.fail_on == Some(shard.index) {
                return Err(CoreError::Shard {
                    spec: shard.to_string(),
                    message: "boom".into(),
                });
            }
            self.runs.borrow_mut().push(shard);
            Ok(StageStats {
                rows: 10,
                ..Default::default()
            })
        }
        fn finalize(&self, _: &StageDir, shards: &[Shard]) -> Result<StageStats> {
            Ok(StageStats {
                rows: 10 * shards.len() as u64,
                ..Default::default()
            })
        }
    }

    #[test]
    fn failed_shard_leaves_no_marker_and_rerun_skips_finished_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path(), "r");
        let stage = Counting {
            runs: RefCell::new(vec![]),
            fail_on: Some(2),
        };
        assert!(run_stage(&stage, &run, ShardSelection::All(3)).is_err());
        assert_eq!(stage.runs.borrow().len(), 2);
        assert!(!run.stage("count").is_complete(Shard { index: 2, count: 3 }));

        let stage = Counting {
            runs: RefCell::new(vec![]),
            fail_on: None,
        };
        let report = run_stage(&stage, &run, ShardSelection::All(3)).unwrap();
        assert_eq!(*stage.runs.borrow(), vec![Shard { index: 2, count: 3 }]);
        assert_eq!(report.skipped.len(), 2);
        assert_eq!(report.merged.unwrap().rows, 30);
        let shard_stats = run
            .stage("count")
            .shard_stats(Shard { index: 2, count: 3 })
            .unwrap();
        assert_eq!((shard_stats.rows, shard_stats.shard.as_str()), (10, "2/3"));
    }

    #[test]
    fn one_shard_of_many_waits_for_the_others_before_merging() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path(), "r");
        let stage = Counting {
            runs: RefCell::new(vec![]),
            fail_on: None,
        };
        let r = run_stage(
            &stage,
            &run,
            ShardSelection::One(Shard { index: 1, count: 2 }),
        )
        .unwrap();
        assert_eq!(r.waiting_for, vec![Shard { index: 0, count: 2 }]);
        assert!(r.merged.is_none());
        let r = run_stage(
            &stage,
            &run,
            ShardSelection::One(Shard { index: 0, count: 2 }),
        )
        .unwrap();
        assert_eq!(r.merged.unwrap().rows, 20);
        let err = run_stage(&stage, &run, ShardSelection::All(3)).unwrap_err();
        assert!(err.to_string().contains("started with 2 shards"), "{err}");
    }

    #[test]
    fn a_merge_lock_of_a_dead_local_task_is_taken_over_and_a_remote_one_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path(), "r");
        let stage = Counting {
            runs: RefCell::new(vec![]),
            fail_on: None,
        };
        let one = ShardSelection::One(Shard { index: 0, count: 2 });
        assert!(run_stage(&stage, &run, one).unwrap().merged.is_none());
        let lock = run.stage("count").path().join(MERGE_LOCK);
        std::fs::write(&lock, "other-node 12 2026-12-07T00:00:00Z").unwrap();
        let two = ShardSelection::One(Shard { index: 1, count: 2 });
        let r = run_stage(&stage, &run, two).unwrap();
        assert!(r.merged.is_none() && r.waiting_for.is_empty());
        let holder = r.merging_elsewhere.unwrap();
        assert!(
            holder.starts_with("other-node 12") && holder.contains("if no task is merging"),
            "{holder}"
        );
        // A lock left by a process of this host that no longer exists.
        std::fs::write(
            &lock,
            format!("{} 4194303 then", crate::unique::host_name()),
        )
        .unwrap();
        let r = merge_stage(&stage, &run).unwrap();
        assert_eq!(r.merged.unwrap().rows, 20);
        assert!(!lock.exists(), "released after the merge");
        assert_eq!(merge_stage(&stage, &run).unwrap().merged.unwrap().rows, 20);
    }

    /// A stage that reads `images` and writes `faces`, writing the table only when told to.
    struct Curating {
        write_output: bool,
    }

    impl Stage for Curating {
        type Error = CoreError;
        fn name(&self) -> &'static str {
            FacesTable::STAGE
        }
        fn inputs(&self) -> &'static [TableInfo] {
            &[ImagesTable::INFO]
        }
        fn outputs(&self) -> &'static [TableInfo] {
            &[FacesTable::INFO]
        }
        fn run_shard(&self, _: &StageDir, _: Shard) -> Result<StageStats> {
            Ok(StageStats::default())
        }
        fn finalize(&self, dir: &StageDir, _: &[Shard]) -> Result<StageStats> {
            if self.write_output {
                std::fs::write(dir.table::<FacesTable>(), b"").unwrap();
            }
            Ok(StageStats::default())
        }
    }

    #[test]
    fn the_runner_holds_a_stage_to_its_declared_tables() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path(), "r");
        let stage = Curating { write_output: true };
        let err = run_stage(&stage, &run, ShardSelection::All(1)).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                CoreError::MissingTable {
                    table: "images",
                    ..
                }
            ),
            "{msg}"
        );
        assert!(
            msg.contains("ingest/images.parquet") && msg.contains("run `idforge ingest`"),
            "{msg}"
        );
        assert!(!run.stage("curate").path().exists(), "nothing ran");

        std::fs::create_dir_all(run.stage("ingest").path()).unwrap();
        std::fs::write(run.table::<ImagesTable>(), b"").unwrap();
        let err = run_stage(
            &Curating {
                write_output: false,
            },
            &run,
            ShardSelection::All(1),
        )
        .unwrap_err();
        assert!(
            matches!(err, CoreError::MissingOutput { table: "faces", .. }),
            "{err}"
        );
        assert!(
            !run.stage("curate").is_final(),
            "no final marker without the output"
        );

        let report = run_stage(&stage, &run, ShardSelection::All(1)).unwrap();
        assert!(report.merged.is_some());
        assert_eq!(
            run.require::<FacesTable>().unwrap(),
            run.root().join("curate/faces.parquet")
        );
    }

    #[test]
    fn stored_paths_resolve_against_the_run_and_back() {
        let run = RunDir::at("/data/runs/r");
        assert_eq!(
            run.resolve("curate/crops/ab/x.jpg"),
            Path::new("/data/runs/r/curate/crops/ab/x.jpg")
        );
        assert_eq!(
            run.resolve("/elsewhere/store/x.jpg"),
            Path::new("/elsewhere/store/x.jpg")
        );
        assert_eq!(
            run.stored(Path::new("/data/runs/r/ingest/store")),
            "ingest/store"
        );
        assert_eq!(
            run.stored(Path::new("/elsewhere/store")),
            "/elsewhere/store"
        );
        let p = run.resolve(&run.stored(Path::new("/data/runs/r/a/b.jpg")));
        assert_eq!(p, Path::new("/data/runs/r/a/b.jpg"));
    }
}
