//! Fetch-and-validate throughput of idforge's ingest and of img2dataset, side by side on the same
//! loopback server in the same run.
//!
//! Both fetch N URLs of the face-api sample photographs (1920 px JPEGs) from the fixture server,
//! decode every image and write the bytes to disk. idforge also hashes (sha256, pHash) and
//! writes the Parquet table. img2dataset runs from `.venv-bench` (`make bench-setup`); without
//! it, only idforge is measured and the bench says so.
//!
//! `cargo bench -p idforge-ingest --bench fetch_throughput -- [N]` (default 2000: img2dataset
//! needs a few thousand URLs to amortise starting its worker processes). Results go to stdout
//! and `target/bench/fetch_throughput.json`. Under `cargo test --all-targets` (no `--bench`
//! argument) it runs a 24-URL smoke version of the idforge side only.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use idforge_core::run::{RunDir, ShardSelection, run_stage};
use idforge_core::schema::{ImageStatus, ImagesTable};
use idforge_ingest::testkit::{FixtureServer, demo_photos};
use idforge_ingest::{IngestSettings, IngestStage, SourceSpec};

#[derive(Debug, serde::Serialize)]
struct Figure {
    tool: String,
    images: usize,
    ok: usize,
    seconds: f64,
    images_per_s: f64,
    images_per_s_per_core: f64,
}

fn main() {
    // `cargo bench` passes `--bench`; the first bare number is N.
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if benchmarking { 2000 } else { 24 });
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let photos = demo_photos().unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = photos.iter().map(|(n, _)| n.clone()).collect();
    let mean_kb =
        photos.iter().map(|(_, b)| b.len()).sum::<usize>() as f64 / photos.len() as f64 / 1024.0;
    let server = FixtureServer::start(photos).expect("fixture server");
    let urls: Vec<String> = (0..n)
        .map(|i| server.url(&format!("/img/{}?i={i}", names[i % names.len()])))
        .collect();
    let tmp = tempfile::tempdir().expect("temp dir");
    eprintln!(
        "{n} URLs of {} photographs (mean {mean_kb:.0} KiB, 1920 px wide), {cores} cores",
        names.len()
    );

    // idforge
    let list = tmp.path().join("urls.csv");
    let mut csv = String::from("url,identity\n");
    for (i, u) in urls.iter().enumerate() {
        csv.push_str(&format!("{u},id{}\n", i % 10));
    }
    std::fs::write(&list, csv).unwrap();
    let mut settings = IngestSettings {
        sources: vec![SourceSpec::from_cli(list)],
        ..Default::default()
    };
    settings.fetch.concurrency = idforge_core::limits::Concurrency::lit(64);
    settings.fetch.per_host_concurrency = idforge_core::limits::Concurrency::lit(64);
    let run = RunDir::new(tmp.path().join("runs"), "bench");
    let stage = IngestStage::new(settings, run.root()).expect("stage");
    let start = Instant::now();
    run_stage(&stage, &run, ShardSelection::All(1)).expect("ingest");
    let secs = start.elapsed().as_secs_f64();
    let table = ImagesTable::read(&run.stage("ingest").path().join("images.parquet")).unwrap();
    // Same bytes under many URLs: all but the first per photograph end as duplicate/conflict,
    // after being fetched, decoded and hashed like any other.
    let fetched = table.rows.iter().filter(|r| r.width.is_some()).count();
    let idforge = figure("idforge", n, fetched, secs, cores);
    assert!(
        table
            .rows
            .iter()
            .all(|r| r.status != ImageStatus::HttpError)
    );

    // img2dataset
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv-bench/bin/python");
    let script = root.join("tools/img2dataset-bench/run.py");
    let mut figures = vec![idforge];
    if !benchmarking {
        assert_eq!(fetched, n, "smoke run: every URL fetched and decoded");
        eprintln!(
            "smoke run ({n} URLs, idforge only): {:.1} images/s",
            figures[0].images_per_s
        );
        return;
    }
    if python.is_file() {
        let urls_txt = tmp.path().join("urls.txt");
        std::fs::write(&urls_txt, urls.join("\n") + "\n").unwrap();
        let out = Command::new(&python)
            .arg(&script)
            .arg("--urls")
            .arg(&urls_txt)
            .arg("--out")
            .arg(tmp.path().join("img2dataset"))
            .args(["--processes", &cores.to_string()])
            .output()
            .expect("running img2dataset");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().rev().find(|l| l.starts_with('{'));
        match line.and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
            Some(v) if out.status.success() => {
                let version = v["version"].as_str().unwrap_or("?");
                figures.push(figure(
                    &format!("img2dataset {version}"),
                    v["images"].as_u64().unwrap_or(0) as usize,
                    v["ok"].as_u64().unwrap_or(0) as usize,
                    v["seconds"].as_f64().unwrap_or(f64::NAN),
                    cores,
                ));
            }
            _ => eprintln!(
                "img2dataset failed:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    } else {
        eprintln!(
            "img2dataset not installed ({} missing): run `make bench-setup` to compare",
            python.display()
        );
    }

    println!("| tool | images | decoded ok | seconds | images/s | images/s/core |");
    println!("|---|---:|---:|---:|---:|---:|");
    for f in &figures {
        println!(
            "| {} | {} | {} | {:.2} | {:.1} | {:.1} |",
            f.tool, f.images, f.ok, f.seconds, f.images_per_s, f.images_per_s_per_core
        );
    }
    if figures.len() == 2 {
        println!(
            "idforge / img2dataset throughput ratio: {:.2}× on {cores} cores",
            figures[0].images_per_s / figures[1].images_per_s
        );
    }
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let json = serde_json::json!({ "cores": cores, "urls": n, "figures": figures });
    std::fs::write(
        out.join("fetch_throughput.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
}

fn figure(tool: &str, images: usize, ok: usize, seconds: f64, cores: usize) -> Figure {
    let rate = ok as f64 / seconds;
    Figure {
        tool: tool.into(),
        images,
        ok,
        seconds,
        images_per_s: rate,
        images_per_s_per_core: rate / cores as f64,
    }
}
