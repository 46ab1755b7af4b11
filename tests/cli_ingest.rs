//! The `idforge` binary end to end: the demo recipe on the face-api sample photographs, and a
//! run killed midway that resumes without losing rows or fetching stored ones again.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use idforge_core::schema::{ImageRow, ImageStatus, ImagesTable};
use idforge_ingest::testkit::{FixtureServer, demo_photos, synthetic_jpeg};

use common::idforge;

#[test]
fn demo_recipe_ingests_the_sample_photographs() {
    let photos = demo_photos().expect("face-api assets");
    let tmp = tempfile::tempdir().unwrap();
    let out = idforge()
        .args([
            "ingest",
            "--recipe",
            concat!(env!("CARGO_MANIFEST_DIR"), "/datasets/recipes/demo.toml"),
        ])
        .arg("--runs-dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("6 rows, 6 ok"), "{stdout}");
    let t = ImagesTable::read(&tmp.path().join("demo/ingest/images.parquet")).unwrap();
    // Sizes as `file` reports them for the package's JPEGs (none carries a rotating orientation).
    let sizes = [
        (1920, 1280),
        (1920, 1367),
        (1920, 1350),
        (1920, 1448),
        (1920, 1398),
        (1920, 1537),
    ];
    for ((row, (name, bytes)), (w, h)) in t.rows.iter().zip(&photos).zip(sizes) {
        assert!(
            row.source.ends_with(name.as_str()),
            "{} vs {name}",
            row.source
        );
        assert_eq!(
            (row.status, row.width, row.height),
            (ImageStatus::Ok, Some(w), Some(h)),
            "{name}"
        );
        assert_eq!(row.identity, None);
        assert_eq!(
            row.image_id.as_deref(),
            Some(idforge_core::hash::sha256_hex(bytes).as_str())
        );
        assert_eq!(row.bytes, Some(bytes.len() as u64));
    }
    let show = idforge()
        .arg("show")
        .arg(tmp.path().join("demo"))
        .args(["--rows", "2"])
        .output()
        .unwrap();
    assert!(show.status.success());
    assert!(String::from_utf8_lossy(&show.stdout).contains("sample1.jpg"));
}

fn journal_rows(path: &Path) -> Vec<ImageRow> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn a_killed_run_resumes_without_losing_or_refetching_rows() {
    const N: usize = 120;
    let images: Vec<(String, Vec<u8>)> = (0..N)
        .map(|i| (format!("{i}.jpg"), synthetic_jpeg(96, 64, i as u32)))
        .collect();
    let shas: Vec<String> = images
        .iter()
        .map(|(_, b)| idforge_core::hash::sha256_hex(b))
        .collect();
    let srv = FixtureServer::start(images).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("urls.tsv");
    let mut tsv = String::from("url\tidentity\n");
    for i in 0..N {
        tsv.push_str(&format!(
            "{}\tperson{}\n",
            srv.url(&format!("/slow/30/{i}.jpg")),
            i % 7
        ));
    }
    std::fs::write(&list, tsv).unwrap();
    let run_args = |c: &mut Command| {
        c.args([
            "ingest",
            "--name",
            "resume",
            "--concurrency",
            "4",
            "--per-host-concurrency",
            "4",
            "--source",
        ])
        .arg(&list)
        .arg("--runs-dir")
        .arg(tmp.path());
    };
    let journal = tmp
        .path()
        .join("resume/ingest/shards/00000-of-00001.journal.jsonl");

    let mut first = idforge();
    run_args(&mut first);
    let mut child = first
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while journal_rows(&journal).len() < N / 3 {
        assert!(Instant::now() < deadline, "the first run made no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the first run ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let finished_before: HashSet<String> = journal_rows(&journal)
        .into_iter()
        .map(|r| r.source)
        .collect();
    assert!(
        finished_before.len() >= N / 3 && finished_before.len() < N,
        "{}",
        finished_before.len()
    );
    let store = tmp.path().join("resume/ingest/store");
    let stored_before: Vec<usize> = (0..N)
        .filter(|&i| {
            store
                .join(&shas[i][..2])
                .join(format!("{}.jpg", &shas[i][2..]))
                .is_file()
        })
        .collect();
    assert!(
        stored_before.len() >= finished_before.len() - 4,
        "{} stored",
        stored_before.len()
    );

    let mut second = idforge();
    run_args(&mut second);
    let out = second.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = ImagesTable::read(&tmp.path().join("resume/ingest/images.parquet")).unwrap();
    assert_eq!(t.rows.len(), N, "no row lost");
    assert!(
        t.rows.iter().all(|r| r.status == ImageStatus::Ok),
        "{:?}",
        t.rows.iter().find(|r| r.status != ImageStatus::Ok)
    );
    let ids: Vec<u64> = t.rows.iter().map(|r| r.row_id).collect();
    assert_eq!(ids, (0..N as u64).collect::<Vec<_>>());
    for i in 0..N {
        let path = format!("/slow/30/{i}.jpg");
        let hits = srv.hits(&path);
        if finished_before.contains(&srv.url(&path)) {
            assert_eq!(
                hits, 1,
                "{path} was journaled before the kill and must not be fetched again"
            );
        } else {
            // In flight when killed (at most the concurrency), or not started yet.
            assert!(hits <= 2, "{path}: {hits} hits");
        }
    }
    for i in stored_before {
        assert_eq!(
            srv.hits(&format!("/slow/30/{i}.jpg")),
            1,
            "{i}.jpg was in the store before the kill"
        );
    }
    let refetched = (0..N)
        .filter(|i| srv.hits(&format!("/slow/30/{i}.jpg")) == 2)
        .count();
    assert!(
        refetched <= 4,
        "only rows in flight at the kill are fetched twice ({refetched})"
    );
}
