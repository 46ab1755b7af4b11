//! What a training run cost, for the benchmark's cost columns (`idforge bench generate
//! --train-run`): each `idforge train` process appends one line to `costs.jsonl` when it
//! finishes (its steps, seconds, peak memory, machine), and [`run_cost`] sums a run folder —
//! processes of a resumed run included, killed ones through `metrics.jsonl`.
//!
//! Training minutes: per process, the larger of its `costs.jsonl` seconds (setup, steps and
//! export) and the `seconds` of its last kept `metrics.jsonl` line (a killed process has no
//! `costs.jsonl` line; its steps after the last checkpoint were thrown away on resume and
//! are not counted). Peak memory: the largest of the finished processes' peaks.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::run::{ADAPTER_FILE, METRICS_FILE, MetricsLine, read_metrics};

/// One line per finished `idforge train` process, in the run folder.
pub const COSTS_FILE: &str = "costs.jsonl";
/// The settings the run started with, in the run folder.
pub const SETTINGS_FILE: &str = "settings.json";

/// What one process measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessCost {
    /// The step it started at (0, or a checkpoint's).
    pub first_step: u64,
    /// The step it ended at.
    pub last_step: u64,
    /// Wall seconds, setup and export included.
    pub seconds: f64,
    /// Peak resident memory (CPU) or device memory, GiB; 0 where unknown.
    pub peak_memory_gib: f64,
    /// The machine, e.g. `AMD EPYC 7763, 2 threads (burn flex, CPU)`.
    pub hardware: String,
}

/// Appends `cost` to `<out>/costs.jsonl`.
pub fn record(out: &Path, cost: &ProcessCost) -> Result<(), TrainError> {
    let path = out.join(COSTS_FILE);
    let line = serde_json::to_string(cost).map_err(|e| TrainError::data(&path, e.to_string()))?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}").and_then(|_| f.sync_all()))
        .map_err(|e| TrainError::io(&path, e))
}

/// A finished run's costs.
#[derive(Debug, Clone, PartialEq)]
pub struct RunCost {
    /// The run folder.
    pub folder: PathBuf,
    /// `settings.json`'s `method`, e.g. `ip-adapter-faceid`.
    pub method: Option<String>,
    /// Training minutes, summed over the run's processes.
    pub minutes: f64,
    /// How many processes trained it (1 + resumes).
    pub processes: usize,
    /// Steps trained.
    pub steps: u64,
    /// The largest peak memory a finished process recorded, GiB; `None` for runs made before
    /// `costs.jsonl` was written.
    pub peak_memory_gib: Option<f64>,
    /// The machine of the last process that recorded one.
    pub hardware: Option<String>,
    /// The exported adapter.
    pub adapter: PathBuf,
    /// Its size in bytes.
    pub adapter_bytes: u64,
}

/// Reads the costs of the finished run in `folder` (`runs/<name>/train`); a folder that is not
/// a train run, or a run that has not finished, is refused with what to do.
pub fn run_cost(folder: &Path) -> Result<RunCost, TrainError> {
    if !folder.is_dir() {
        return Err(TrainError::data(
            folder,
            "no such folder: give the folder `idforge train` wrote (runs/<name>/train)",
        ));
    }
    for file in [SETTINGS_FILE, METRICS_FILE] {
        if !folder.join(file).is_file() {
            return Err(TrainError::data(
                folder,
                format!(
                    "not an idforge train run (no {file}): give the folder `idforge train` \
                     wrote (runs/<name>/train)"
                ),
            ));
        }
    }
    let adapter = folder.join(ADAPTER_FILE);
    let adapter_bytes = std::fs::metadata(&adapter)
        .map_err(|_| {
            TrainError::data(
                folder,
                format!(
                    "the run has not finished (no {ADAPTER_FILE}): finish it with `idforge \
                     train --recipe … --resume`"
                ),
            )
        })?
        .len();
    let settings_path = folder.join(SETTINGS_FILE);
    let settings: serde_json::Value = std::fs::read(&settings_path)
        .map_err(|e| TrainError::io(&settings_path, e))
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| {
                TrainError::data(&settings_path, format!("not the settings of a run: {e}"))
            })
        })?;
    let method = settings
        .get("method")
        .and_then(|m| m.as_str())
        .map(str::to_string);
    let metrics = read_metrics(&folder.join(METRICS_FILE))?;
    let records = read_records(folder)?;
    let segments = segments(&metrics);
    let mut minutes = 0.0;
    let mut used = vec![false; records.len()];
    for seg in &segments {
        let mut seconds = seg.seconds;
        if let Some(i) = (0..records.len()).find(|&i| {
            !used[i]
                && records[i].last_step == seg.last_step
                && records[i].first_step == seg.first_step
        }) {
            used[i] = true;
            seconds = seconds.max(records[i].seconds);
        }
        minutes += seconds / 60.0;
    }
    let peak = records
        .iter()
        .map(|r| r.peak_memory_gib)
        .filter(|p| *p > 0.0)
        .reduce(f64::max);
    Ok(RunCost {
        folder: folder.to_path_buf(),
        method,
        minutes,
        processes: segments.len().max(records.len()),
        steps: metrics.last().map_or(0, |m| m.step),
        peak_memory_gib: peak,
        hardware: records.last().map(|r| r.hardware.clone()),
        adapter,
        adapter_bytes,
    })
}

fn read_records(folder: &Path) -> Result<Vec<ProcessCost>, TrainError> {
    let path = folder.join(COSTS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(&path, e)),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| TrainError::data(&path, format!("not a cost line ({e}): {l}")))
        })
        .collect()
}

/// One process's part of `metrics.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Segment {
    first_step: u64,
    last_step: u64,
    seconds: f64,
}

/// Splits the metrics into the processes that wrote them: `seconds` restarts with each process
/// (and a resumed process starts right after the step of its checkpoint).
fn segments(metrics: &[MetricsLine]) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    for m in metrics {
        match out.last_mut() {
            Some(s) if m.seconds >= s.seconds && m.step == s.last_step + 1 => {
                s.last_step = m.step;
                s.seconds = m.seconds;
            }
            _ => out.push(Segment {
                first_step: m.step.saturating_sub(1),
                last_step: m.step,
                seconds: m.seconds,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(step: u64, seconds: f64) -> String {
        serde_json::to_string(&MetricsLine {
            step,
            loss: 0.1,
            grad_norm: 1.0,
            lr: vec![1e-4],
            seconds,
        })
        .unwrap()
    }

    fn run_folder(lines: &[(u64, f64)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(SETTINGS_FILE),
            r#"{"method": "ip-adapter-faceid"}"#,
        )
        .unwrap();
        let metrics: Vec<String> = lines.iter().map(|&(s, t)| line(s, t)).collect();
        std::fs::write(dir.path().join(METRICS_FILE), metrics.join("\n") + "\n").unwrap();
        std::fs::write(dir.path().join(ADAPTER_FILE), vec![0u8; 3 * 1024 * 1024]).unwrap();
        dir
    }

    #[test]
    fn a_resumed_run_sums_its_processes() {
        // Process 1 trained steps 1–2 and was killed; process 2 resumed at 2 and ran to 4.
        let dir = run_folder(&[(1, 10.0), (2, 20.0), (3, 7.0), (4, 14.0)]);
        let cost = ProcessCost {
            first_step: 2,
            last_step: 4,
            seconds: 16.0,
            peak_memory_gib: 1.5,
            hardware: "cpu".into(),
        };
        record(dir.path(), &cost).unwrap();
        let c = run_cost(dir.path()).unwrap();
        assert_eq!(c.processes, 2);
        assert_eq!(c.steps, 4);
        // 20 s of the killed process (its metrics) + 16 s of the finished one (its record).
        assert!((c.minutes - 36.0 / 60.0).abs() < 1e-12, "{}", c.minutes);
        assert_eq!(c.peak_memory_gib, Some(1.5));
        assert_eq!(c.hardware.as_deref(), Some("cpu"));
        assert_eq!(c.adapter_bytes, 3 * 1024 * 1024);
        assert_eq!(c.method.as_deref(), Some("ip-adapter-faceid"));
    }

    #[test]
    fn a_run_without_cost_lines_has_minutes_but_no_peak() {
        let dir = run_folder(&[(1, 10.0), (2, 20.0)]);
        let c = run_cost(dir.path()).unwrap();
        assert_eq!(c.processes, 1);
        assert!((c.minutes - 20.0 / 60.0).abs() < 1e-12);
        assert_eq!(c.peak_memory_gib, None);
    }

    #[test]
    fn folders_that_are_not_finished_runs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = run_cost(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("not an idforge train run (no settings.json)"),
            "{err}"
        );
        let err = run_cost(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(err.contains("no such folder"), "{err}");
        let run = run_folder(&[(1, 1.0)]);
        std::fs::remove_file(run.path().join(ADAPTER_FILE)).unwrap();
        let err = run_cost(run.path()).unwrap_err().to_string();
        assert!(
            err.contains("has not finished") && err.contains("--resume"),
            "{err}"
        );
    }
}
