//! Array tasks that finish together must merge once. Each round starts one process per
//! remaining shard at the same instant (this test binary, re-run as a child); each runs its
//! shard, then asks for the merge once more, as a scheduler's dependent merge job would, so
//! that several processes reach the merge within the 20 ms one merge takes. The stage's
//! merge moves the shard files away, as curate's moves crops, so a second merge would fail.
//! Every round must end with exactly one merge, the same table as one process makes, no lock
//! and no temporary file left behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use idforge_core::error::Result;
use idforge_core::run::{
    RunDir, Shard, ShardSelection, Stage, StageDir, StageReport, StageStats, merge_stage,
    read_json, run_stage, write_json,
};
use idforge_core::schema::TableInfo;

/// Set in a child: `<run folder>|<shard index>|<shard count>`.
const CHILD: &str = "IDFORGE_MERGE_RACE_CHILD";
const TEST_NAME: &str = "one_merge_however_the_tasks_race";
const ROWS_PER_SHARD: usize = 5;
const SHARDS: usize = 6;
/// Shards finished before the race; the others start together.
const DONE_BEFORE: usize = 2;
const ROUNDS: usize = 100;

const MERGED: TableInfo = TableInfo {
    name: "rows",
    version: 1,
    stage: "toy",
    file: "rows.json",
    command: "the merge-race test",
};

/// Writes its shard's rows; the merge moves every shard file into `merged/`, logs itself and
/// writes the rows in shard order. With a barrier, a shard finishes only once every racing
/// task has written its rows, so that they all reach the completion markers together.
struct Toy {
    barrier: Option<(PathBuf, usize)>,
}

impl Stage for Toy {
    type Error = idforge_core::CoreError;
    fn name(&self) -> &'static str {
        "toy"
    }
    fn inputs(&self) -> &'static [TableInfo] {
        &[]
    }
    fn outputs(&self) -> &'static [TableInfo] {
        &[MERGED]
    }
    fn run_shard(&self, dir: &StageDir, shard: Shard) -> Result<StageStats> {
        let rows: Vec<usize> = (0..ROWS_PER_SHARD)
            .map(|r| shard.index * ROWS_PER_SHARD + r)
            .collect();
        write_json(&dir.shard_file(shard, "json"), &rows)?;
        if let Some((root, racers)) = &self.barrier {
            std::fs::write(root.join(format!("ready-{}", shard.index)), b"").unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while (0..SHARDS)
                .filter(|i| root.join(format!("ready-{i}")).exists())
                .count()
                < *racers
            {
                assert!(Instant::now() < deadline, "the other tasks never got ready");
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        Ok(StageStats {
            rows: rows.len() as u64,
            ..Default::default()
        })
    }
    fn finalize(&self, dir: &StageDir, shards: &[Shard]) -> Result<StageStats> {
        use std::io::Write as _;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("merges.log"))
            .unwrap();
        writeln!(log, "{}", std::process::id()).unwrap();
        // Widen the window in which a second merger could start.
        std::thread::sleep(Duration::from_millis(20));
        let moved = dir.path().join("merged");
        std::fs::create_dir_all(&moved).unwrap();
        let mut all: Vec<usize> = Vec::new();
        for &s in shards {
            let from = dir.shard_file(s, "json");
            let to = moved.join(from.file_name().unwrap());
            std::fs::rename(&from, &to).map_err(|e| idforge_core::CoreError::Io {
                path: from.clone(),
                source: e,
            })?;
            let rows: Vec<usize> = read_json(&to)?;
            all.extend(rows);
        }
        write_json(&dir.path().join(MERGED.file), &all)?;
        Ok(StageStats {
            rows: all.len() as u64,
            ..Default::default()
        })
    }
}

/// In a child: waits for the start signal, runs its shard, prints what became of the merge.
fn child(spec: &str) {
    let mut parts = spec.split('|');
    let root = PathBuf::from(parts.next().unwrap());
    let index: usize = parts.next().unwrap().parse().unwrap();
    let count: usize = parts.next().unwrap().parse().unwrap();
    let go = root.join("go");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !go.exists() {
        assert!(Instant::now() < deadline, "no start signal");
        std::thread::sleep(Duration::from_micros(200));
    }
    let toy = Toy {
        barrier: Some((root.clone(), count - DONE_BEFORE)),
    };
    let run = RunDir::at(&root);
    let outcome = |r: &StageReport| {
        if r.merging_elsewhere.is_some() {
            "busy"
        } else if r.merged.is_some() {
            "merged"
        } else {
            "waiting"
        }
    };
    let first = run_stage(&toy, &run, ShardSelection::One(Shard { index, count })).unwrap();
    // Ask again as soon as every shard is complete, while the last task may be merging.
    let stage = run.stage("toy");
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..count).any(|index| !stage.is_complete(Shard { index, count })) {
        assert!(Instant::now() < deadline, "shards never completed");
        std::thread::sleep(Duration::from_micros(100));
    }
    let again = merge_stage(&toy, &run).unwrap();
    println!("OUTCOME {} {}", outcome(&first), outcome(&again));
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(temp_files(&path));
        } else if path.to_string_lossy().contains(".tmp-") {
            found.push(path);
        }
    }
    found
}

#[test]
fn one_merge_however_the_tasks_race() {
    if let Ok(spec) = std::env::var(CHILD) {
        child(&spec);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let expected: Vec<usize> = (0..SHARDS * ROWS_PER_SHARD).collect();
    let mut contended = 0;
    for round in 0..ROUNDS {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::at(tmp.path());
        for index in 0..DONE_BEFORE {
            let r = run_stage(
                &Toy { barrier: None },
                &run,
                ShardSelection::One(Shard {
                    index,
                    count: SHARDS,
                }),
            )
            .unwrap();
            assert!(r.merged.is_none());
        }
        let children: Vec<_> = (DONE_BEFORE..SHARDS)
            .map(|index| {
                Command::new(&exe)
                    .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
                    .env(CHILD, format!("{}|{index}|{SHARDS}", tmp.path().display()))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        std::fs::write(tmp.path().join("go"), b"").unwrap();
        let mut outcomes = Vec::new();
        for c in children {
            let out = c.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "round {round}: a task failed:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let outcome = stdout
                .lines()
                .find_map(|l| l.split("OUTCOME ").nth(1))
                .map(|o| o.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|| panic!("round {round}: no outcome in {stdout}"))
                .to_string();
            outcomes.push(outcome);
        }
        let stage = run.stage("toy");
        let merges = std::fs::read_to_string(stage.path().join("merges.log")).unwrap();
        assert_eq!(
            merges.lines().count(),
            1,
            "round {round}: merges by {merges:?}, outcomes {outcomes:?}"
        );
        assert!(stage.is_final(), "round {round}");
        let rows: Vec<usize> = read_json(&stage.path().join(MERGED.file)).unwrap();
        assert_eq!(rows, expected, "round {round}");
        assert_eq!(stage.final_stats().unwrap().rows, expected.len() as u64);
        assert!(
            !stage.path().join("merge.lock").exists(),
            "round {round}: the lock is released"
        );
        assert_eq!(
            temp_files(tmp.path()),
            Vec::<PathBuf>::new(),
            "round {round}"
        );
        if outcomes.iter().any(|o| o.contains("busy")) {
            contended += 1;
        }
    }
    // Rounds where a task found the lock taken: the race the lock settles.
    assert!(
        contended >= ROUNDS / 2,
        "no round had two tasks reach the merge together; the test did not test the race"
    );
    eprintln!("{contended} of {ROUNDS} rounds had several tasks at the merge");
}
