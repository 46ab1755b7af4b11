//! Peak memory of ingesting a list of millions: planning the list (the pass that fixes shard
//! boundaries) and running one shard of it against the loopback server, for a small and a large
//! list, so that memory set by the list (not by the shard) shows.
//!
//! Writes a 100 000-row and a 10 000 000-row CSV of loopback URLs (four distinct small JPEGs
//! under distinct query strings), then measures each step in a fresh child process (this same
//! binary, `--child …`), which reports its peak resident set (`VmHWM` in `/proc/self/status`):
//! - `start`: the child doing nothing (the process and its libraries);
//! - `plan`: `IngestStage::new`, which reads the sources;
//! - `shard`: `IngestStage::new` and one shard of 10 000 rows run to completion (fetched,
//!   decoded, hashed, stored, journaled, its table written), as one array task does.
//!
//! `cargo bench -p idforge-ingest --bench list_memory -- [SMALL LARGE SHARD_ROWS]` (defaults
//! 100000 10000000 10000). Linux only (`/proc`). Needs about 1 GB of temporary disk for the
//! large list. Not part of `make test`: without `--bench` (as under `cargo test --all-targets`)
//! it only says how to run it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use idforge_core::Shard;
use idforge_core::run::{RunDir, ShardSelection, run_stage};
use idforge_core::schema::{ImageStatus, ImagesTable};
use idforge_ingest::testkit::{FixtureServer, synthetic_jpeg};
use idforge_ingest::{IngestSettings, IngestStage, SourceSpec};

/// Distinct images served; every row fetches one of them under its own URL.
const IMAGES: u32 = 4;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        child(&args[1..]);
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        eprintln!(
            "list_memory: a bench only; run `cargo bench -p idforge-ingest --bench list_memory`"
        );
        return;
    }
    let numbers: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let small = numbers.first().copied().unwrap_or(100_000);
    let large = numbers.get(1).copied().unwrap_or(10_000_000);
    let shard_rows = numbers.get(2).copied().unwrap_or(10_000).max(1);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());

    let images: Vec<(String, Vec<u8>)> = (0..IMAGES)
        .map(|i| (format!("{i}.jpg"), synthetic_jpeg(96, 96, i * 7 + 1)))
        .collect();
    let server = FixtureServer::start(images).expect("fixture server");
    let tmp = tempfile::tempdir().expect("temp dir");
    let me = std::env::current_exe().expect("own path");

    let start = measure(&me, &["start".into()]);
    let mut lines = vec![format!(
        "| (process start) | | | {:.1} | {:.1} |",
        mib(start.hwm_kib),
        start.seconds
    )];
    for rows in [small, large] {
        let list = tmp.path().join(format!("urls-{rows}.csv"));
        let t = Instant::now();
        let bytes = write_list(&list, rows, &server);
        eprintln!(
            "wrote {} ({rows} rows, {:.0} MiB) in {:.1} s",
            list.display(),
            bytes as f64 / 1048576.0,
            t.elapsed().as_secs_f64()
        );
        let plan = measure(&me, &["plan".into(), list.display().to_string()]);
        lines.push(format!(
            "| plan | {rows} | | {:.1} | {:.2} |",
            mib(plan.hwm_kib),
            plan.seconds
        ));
        // Shards of `shard_rows` rows; the middle one, so a shard cannot stop reading early.
        let count = rows.div_ceil(shard_rows).max(1) as usize;
        let index = count / 2;
        let runs = tmp.path().join(format!("runs-{rows}"));
        let shard = measure(
            &me,
            &[
                "shard".into(),
                list.display().to_string(),
                runs.display().to_string(),
                index.to_string(),
                count.to_string(),
                rows.to_string(),
            ],
        );
        let in_shard = Shard { index, count }.rows(rows as usize).len();
        lines.push(format!(
            "| shard {index}/{count} | {rows} | {in_shard} | {:.1} | {:.2} |",
            mib(shard.hwm_kib),
            shard.seconds
        ));
        let _ = std::fs::remove_file(&list);
        let _ = std::fs::remove_dir_all(&runs);
    }
    println!("peak resident memory (VmHWM) per step, each in a fresh process, {cores} cores");
    println!("| step | list rows | shard rows | peak MiB | seconds |");
    println!("|---|---:|---:|---:|---:|");
    for l in lines {
        println!("{l}");
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One child's report.
struct Measured {
    hwm_kib: u64,
    seconds: f64,
}

/// Runs `me --child <args>` and reads its report line.
fn measure(me: &Path, args: &[String]) -> Measured {
    let out = Command::new(me)
        .arg("--child")
        .args(args)
        .output()
        .expect("running the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("hwm_kib "))
        .unwrap_or_else(|| panic!("child {args:?} printed no report:\n{stdout}"));
    let mut f = line.split_whitespace().skip(1);
    let hwm_kib = f.next().and_then(|v| v.parse().ok()).expect("hwm");
    let seconds = f.next().and_then(|v| v.parse().ok()).expect("seconds");
    eprintln!("{}: {:.1} MiB peak, {seconds:.1} s", args[0], mib(hwm_kib));
    Measured { hwm_kib, seconds }
}

/// Writes `rows` rows of `url,identity`; returns the file's size.
fn write_list(path: &Path, rows: u64, server: &FixtureServer) -> u64 {
    use std::io::Write;
    let file = std::fs::File::create(path).expect("list file");
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    writeln!(w, "url,identity").unwrap();
    let base = server.url("/img/");
    for i in 0..rows {
        writeln!(w, "{base}{}.jpg?i={i},id{}", i % IMAGES as u64, i % 1000).unwrap();
    }
    w.flush().unwrap();
    std::fs::metadata(path).unwrap().len()
}

fn settings(list: PathBuf) -> IngestSettings {
    let mut s = IngestSettings {
        sources: vec![SourceSpec::from_cli(list)],
        ..Default::default()
    };
    s.fetch.per_host_concurrency = idforge_core::limits::Concurrency::lit(64);
    s
}

/// The measured work, in this fresh process; prints `hwm_kib <KiB> <seconds>`.
fn child(args: &[String]) {
    let start = Instant::now();
    match args.first().map(String::as_str) {
        Some("start") => {}
        Some("plan") => {
            let tmp = tempfile::tempdir().expect("temp dir");
            let stage =
                IngestStage::new(settings(PathBuf::from(&args[1])), tmp.path()).expect("planning");
            std::hint::black_box(&stage);
        }
        Some("shard") => {
            let run = RunDir::new(PathBuf::from(&args[2]), "bench");
            let stage =
                IngestStage::new(settings(PathBuf::from(&args[1])), run.root()).expect("planning");
            let shard = Shard {
                index: args[3].parse().expect("index"),
                count: args[4].parse().expect("count"),
            };
            let report = run_stage(&stage, &run, ShardSelection::One(shard)).expect("shard");
            assert_eq!(report.ran, vec![shard]);
            // Every row fetched and decoded (the same four images: all but the first of each
            // are flagged at the merge, not here), so the figure is of real work.
            let table = ImagesTable::read(&run.stage("ingest").shard_table::<ImagesTable>(shard))
                .expect("shard table");
            let rows = shard.rows(args[5].parse().expect("rows")).len();
            assert_eq!(table.rows.len(), rows);
            let bad: Vec<_> = table
                .rows
                .iter()
                .filter(|r| r.status != ImageStatus::Ok)
                .collect();
            assert!(
                bad.is_empty(),
                "rows not ok: {:?}",
                &bad[..bad.len().min(3)]
            );
        }
        other => panic!("unknown child step {other:?}"),
    }
    let seconds = start.elapsed().as_secs_f64();
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM in /proc/self/status");
    println!("hwm_kib {hwm} {seconds:.3}");
}
