//! Throughput of the whole curate stage on the face-api package's six demo photographs
//! (`demo/sample1..6.jpg` in the asset cache, 1920 px group photos with 3 to 5 faces): decode,
//! SSD detection, 68 landmarks, 128-d descriptors, reference and training crops written as
//! JPEG, the journal and shard table, then the merge (identity discovery, verification,
//! duplicates, `faces.parquet`, `report.html`), through [`run_stage`] as `idforge curate` runs it.
//!
//! `cargo bench -p idforge-curate --bench curate_throughput -- [--copies N] [--rounds N]
//! [--threads LIST]`: N copies of the six photos (default 4, so 24 images), each copy the JPEG
//! file with a one-comment-segment difference (`FF FE` after `SOI`: same pixels, other bytes,
//! so other `image_id`s, as ingest would store six photographs downloaded N times), listed in
//! `<run>/ingest/images.parquet` as ingest writes it. Settings are the defaults except
//! `faces.min_face_px = 100`, so that the group photos' faces (about 180 px) reach the embedder
//! and the crops. For each thread count (default `1` and every core; `--threads 1,2`), one
//! warm-up run on the first copy, then `--rounds` timed runs (default 3), each in a fresh
//! temporary run directory. Prints one JSON line per thread count, then a table: images/s,
//! images/s per core, faces/s, and the scaling efficiency (images/s on N threads over N ×
//! images/s on one). The copies have the same pixels, so the merge finds every person's faces
//! to be duplicates of the first copy and keeps none (`kept` is 0): the group-level work is
//! all done, but it is small next to the per-image work.
//!
//! Breakdown of a run: `setup` (reading the images table, loading the three networks),
//! `shard` (the per-image work, from the shard's `stats/*.json`), `merge` (the rest of
//! [`run_stage`]: merge, verification, report), and a merge-only re-run (the final marker
//! removed, the complete shard skipped). Then, on one thread, the per-image work split into
//! JPEG decode and face-api's detect, landmarks and descriptors on the same photographs (the
//! candidates curate embeds); the rest of the shard time is crops, JPEG writes, journal and
//! table.
//!
//! The stage's progress lines are off unless `IDFORGE_PROGRESS` is set.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it is a smoke test: one copy, one
//! thread, one run, which must give every image its rows.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::backend::Flex;
use idforge_core::bench::{cpu_model, cpu_seconds, loadavg};
use idforge_core::image_io::{DEFAULT_MAX_PIXELS, decode};
use idforge_core::run::{RunDir, ShardSelection, run_stage};
use idforge_core::schema::faces::FacesTable;
use idforge_core::schema::{ImageRow, ImageStatus, ImagesTable};
use idforge_core::{Shard, StageStats};
use idforge_curate::CurateSettings;
use idforge_curate::CurateStage;
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::face_api::{Detector, FaceApi, Stages};

const PHOTOS: usize = 6;

struct Args {
    bench: bool,
    copies: usize,
    rounds: usize,
    threads: Vec<usize>,
}

fn args() -> Args {
    let argv = idforge_core::bench::BenchArgs::from_env();
    let bench = argv.bench;
    let value = |flag: &str| argv.value(flag);
    let cores = cores();
    let copies = value("--copies").map_or(if bench { 4 } else { 1 }, |v| {
        v.parse().expect("--copies N")
    });
    let rounds = value("--rounds").map_or(if bench { 3 } else { 1 }, |v| {
        v.parse().expect("--rounds N")
    });
    let threads = value("--threads").map_or_else(
        || {
            if bench && cores > 1 {
                vec![1, cores]
            } else {
                vec![1]
            }
        },
        |v| {
            v.split(',')
                .map(|t| t.trim().parse().expect("--threads 1,2,..."))
                .collect()
        },
    );
    assert!(
        copies >= 1 && rounds >= 1,
        "--copies and --rounds must be at least 1"
    );
    assert!(
        threads.iter().all(|&t| t >= 1),
        "--threads must be at least 1"
    );
    Args {
        bench,
        copies,
        rounds,
        threads,
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn face_api_dir() -> PathBuf {
    idforge_core::cache::face_api_dir_if_fetched()
        .expect("the face-api package is not in the asset cache: run `make assets` first")
}

/// The JPEG with a comment segment (`FF FE`, length, text) right after its `SOI` marker: the
/// same pixels, other bytes.
fn with_comment(jpeg: &[u8], text: &str) -> Vec<u8> {
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "not a JPEG");
    let len = u16::try_from(text.len() + 2).expect("short comment");
    let mut out = Vec::with_capacity(jpeg.len() + text.len() + 4);
    out.extend_from_slice(&jpeg[..2]);
    out.extend_from_slice(&[0xFF, 0xFE]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// Writes `copies` copies of the photos under `dir` and returns their `images` rows.
fn write_inputs(dir: &Path, photos: &[Vec<u8>], copies: usize) -> Vec<ImageRow> {
    std::fs::create_dir_all(dir).unwrap();
    let mut rows = Vec::new();
    for c in 0..copies {
        for (p, jpeg) in photos.iter().enumerate() {
            let bytes = with_comment(jpeg, &format!("idforge curate bench, copy {c}"));
            let decoded = decode(&bytes, DEFAULT_MAX_PIXELS).expect("the demo photo decodes");
            let path = dir.join(format!("sample{}-copy{c}.jpg", p + 1));
            std::fs::write(&path, &bytes).unwrap();
            let mut row = ImageRow::pending(rows.len() as u64, path.display().to_string(), None);
            row.status = ImageStatus::Ok;
            row.image_id = Some(idforge_core::hash::sha256_hex(&bytes));
            row.width = Some(decoded.width);
            row.height = Some(decoded.height);
            row.format = Some("jpeg".into());
            row.bytes = Some(bytes.len() as u64);
            row.store_path = Some(path.display().to_string());
            rows.push(row);
        }
    }
    rows
}

fn settings(threads: usize) -> CurateSettings {
    let mut s = CurateSettings {
        threads: idforge_core::limits::Threads::new(threads as u64).expect("a sane thread count"),
        ..Default::default()
    };
    s.faces.min_face_px = idforge_core::limits::Pixels::lit(100.0); // the group photos' faces are about 180 px wide
    s
}

/// One run of the stage, and what it took.
struct Run {
    setup_s: f64,
    stage_s: f64,
    shard_s: f64,
    merge_only_s: f64,
    cpu_s: Option<f64>,
    images: usize,
    faces: usize,
    embedded: usize,
    kept: usize,
}

impl Run {
    fn total_s(&self) -> f64 {
        self.setup_s + self.stage_s
    }
}

/// Curates `rows` in a fresh temporary run directory with `threads` workers.
fn curate_once(rows: &[ImageRow], threads: usize, models: &Path) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path();
    ImagesTable {
        extra_columns: vec![],
        rows: rows.to_vec(),
    }
    .write(&run.join("ingest").join("images.parquet"))
    .unwrap();
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let stage =
        CurateStage::<Flex>::new(settings(threads), run, models, &Default::default()).unwrap();
    let setup_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let report = run_stage(&stage, &RunDir::at(run), ShardSelection::All(1)).unwrap();
    let stage_s = t.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds().zip(cpu0).map(|(b, a)| b - a);
    assert_eq!(report.ran, vec![Shard::WHOLE]);
    let dir = run.join("curate");
    let shard: StageStats = idforge_core::run::read_json(
        &dir.join("stats")
            .join(format!("{}.json", Shard::WHOLE.label())),
    )
    .unwrap();

    let table = FacesTable::read(&dir.join("faces.parquet")).unwrap();
    let seen: BTreeSet<u64> = table.rows.iter().map(|r| r.row_id).collect();
    let want: BTreeSet<u64> = rows.iter().map(|r| r.row_id).collect();
    assert_eq!(seen, want, "every image gets its rows");
    let faces = table.rows.iter().filter(|r| r.face_index.is_some()).count();
    let embedded = table.rows.iter().filter(|r| r.embedding.is_some()).count();
    let kept = table
        .rows
        .iter()
        .filter(|r| r.verdict == idforge_core::schema::faces::Verdict::Kept)
        .count();
    assert!(
        embedded >= 3 * rows.len(),
        "{embedded} faces embedded in {} images: the settings should let the group photos' \
         faces through to the embedder",
        rows.len()
    );

    // The merge again, alone: the shard is complete, only the final marker is removed.
    std::fs::remove_file(dir.join("completions").join("final")).unwrap();
    let t = Instant::now();
    let again = run_stage(&stage, &RunDir::at(run), ShardSelection::All(1)).unwrap();
    let merge_only_s = t.elapsed().as_secs_f64();
    assert_eq!(again.skipped, vec![Shard::WHOLE]);
    assert!(again.merged.is_some());

    Run {
        setup_s,
        stage_s,
        shard_s: shard.seconds,
        merge_only_s,
        cpu_s,
        images: rows.len(),
        faces,
        embedded,
        kept,
    }
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn ms(secs: f64) -> f64 {
    (secs * 1e5).round() / 100.0
}

/// The per-image work on one thread, split: JPEG decode, then face-api's stages as curate runs
/// them (the detector at the recording floor; landmarks and descriptors for the faces that
/// pass filters 2 and 3). Best of `rounds` passes after a warm-up, ms per image.
fn split_per_image(photos: &[Vec<u8>], models: &Path, rounds: usize) -> serde_json::Value {
    let s = settings(1);
    let detector = Detector::SsdMobilenetV1 {
        min_confidence: s.faces.detector_floor.f32(),
        max_results: s.faces.max_faces.usize(),
    };
    let api = FaceApi::<Flex>::load(models, detector, Stages::Descriptors, &Default::default())
        .expect("face-api weights");
    let mut best = [f64::INFINITY; 4];
    let mut embedded = 0;
    for pass in 0..=rounds {
        embedded = 0;
        let mut t = [0f64; 4];
        for jpeg in photos {
            let s0 = Instant::now();
            let rgb = decode(jpeg, DEFAULT_MAX_PIXELS).unwrap().image.into_rgb8();
            t[0] += s0.elapsed().as_secs_f64();
            let img = RgbView {
                width: rgb.width() as usize,
                height: rgb.height() as usize,
                data: rgb.as_raw(),
            };
            let s0 = Instant::now();
            let mut faces = api.detect(img, detector);
            t[1] += s0.elapsed().as_secs_f64();
            faces.retain(|f| {
                let d = &f.detection;
                d.score >= s.faces.min_score.f32()
                    && d.width as f32 >= s.faces.min_face_px.f32()
                    && d.height as f32 >= s.faces.min_face_px.f32()
            });
            let s0 = Instant::now();
            api.add_landmarks(img, &mut faces);
            t[2] += s0.elapsed().as_secs_f64();
            let s0 = Instant::now();
            api.add_descriptors(img, &mut faces);
            t[3] += s0.elapsed().as_secs_f64();
            embedded += faces.len();
            std::hint::black_box(faces);
        }
        if pass > 0 {
            for (b, v) in best.iter_mut().zip(t) {
                *b = b.min(v);
            }
        }
    }
    let n = photos.len() as f64;
    serde_json::json!({
        "what": "ms per image on one thread, best of the passes: JPEG decode (+ RGB), face-api detect at the recording floor, landmarks and descriptors of the faces that pass filters 2-3",
        "images": photos.len(),
        "embedded": embedded,
        "decode": ms(best[0] / n),
        "detect": ms(best[1] / n),
        "landmarks": ms(best[2] / n),
        "descriptors": ms(best[3] / n),
        "sum": ms(best.iter().sum::<f64>() / n),
    })
}

fn main() {
    if std::env::var_os("IDFORGE_PROGRESS").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("IDFORGE_PROGRESS", "off") };
    }
    let args = args();
    let face_api = face_api_dir();
    let models = face_api.join("model");
    let photos: Vec<Vec<u8>> = (1..=PHOTOS)
        .map(|n| {
            let path = face_api.join("demo").join(format!("sample{n}.jpg"));
            std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e}: run `make assets` first", path.display()))
        })
        .collect();
    let inputs = tempfile::tempdir().unwrap();
    let rows = write_inputs(inputs.path(), &photos, args.copies);

    if !args.bench {
        let t = Instant::now();
        let run = curate_once(&rows, 1, &models);
        eprintln!(
            "curate_throughput: smoke pass ok, {} images, {} faces ({} embedded, {} kept) in \
             {:.1} s (run with --bench to time)",
            run.images,
            run.faces,
            run.embedded,
            run.kept,
            t.elapsed().as_secs_f64()
        );
        return;
    }

    let cores = cores();
    let mut lines = Vec::new();
    for &threads in &args.threads {
        let load0 = loadavg();
        // Warm-up on the first copy (the networks' first forwards, the allocator, the files).
        curate_once(&rows[..PHOTOS], threads, &models);
        let mut runs = Vec::new();
        for _ in 0..args.rounds {
            runs.push(curate_once(&rows, threads, &models));
        }
        let mean = |f: &dyn Fn(&Run) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
        let best = runs.iter().map(Run::total_s).fold(f64::INFINITY, f64::min);
        let first = &runs[0];
        let images = first.images as f64;
        let total = mean(&|r| r.total_s());
        let stage_s = mean(&|r| r.stage_s);
        let shard_s = mean(&|r| r.shard_s);
        let cpu = runs
            .iter()
            .map(|r| r.cpu_s)
            .sum::<Option<f64>>()
            .map(|c| c / runs.len() as f64);
        let line = serde_json::json!({
            "impl": "idforge curate",
            "backend": "flex",
            "threads": threads,
            "images": first.images,
            "copies": args.copies,
            "faces": first.faces,
            "embedded": first.embedded,
            "kept": first.kept,
            "warmup": "one run on the first copy (6 images)",
            "rounds": args.rounds,
            "seconds": r3(total),
            "best_seconds": r3(best),
            "images_per_s": r3(images / total),
            "images_per_s_per_core": r3(images / total / threads as f64),
            "best_images_per_s": r3(images / best),
            "faces_per_s": r3(first.faces as f64 / total),
            "embedded_per_s": r3(first.embedded as f64 / total),
            "cpu_per_wall": cpu.map(|c| (c / total * 100.0).round() / 100.0),
            "breakdown_s": {
                "setup": r3(mean(&|r| r.setup_s)),
                "shard": r3(shard_s),
                "merge": r3(stage_s - shard_s),
                "merge_only_rerun": r3(mean(&|r| r.merge_only_s)),
            },
            "ms_per_image_in_shard": ms(shard_s / images),
            "available_parallelism": cores,
            "cpu_model": cpu_model(),
            "loadavg_1min_before": load0,
            "loadavg_1min_after": loadavg(),
        });
        println!("{line}");
        lines.push(line);
    }
    let split = split_per_image(&photos, &models, 3);
    println!(
        "{}",
        serde_json::json!({ "per_image_on_one_thread": split })
    );

    // The table.
    let one = lines
        .iter()
        .find(|l| l["threads"] == 1)
        .map(|l| l["images_per_s"].as_f64().unwrap());
    println!(
        "\ncurate stage, {} images ({} copies of the 6 demo photos, 1920 px), min_face_px 100; \
         {} cores ({}); warm-up on 6 images + {} timed run(s) each, fresh run directory per run; \
         1-min load average {} before, {} after",
        rows.len(),
        args.copies,
        cores,
        cpu_model().unwrap_or_default(),
        args.rounds,
        lines[0]["loadavg_1min_before"],
        lines[lines.len() - 1]["loadavg_1min_after"],
    );
    println!(
        "(s and images/s: mean of the timed runs, setup + stage; setup: images table read and \
         networks loaded; shard: the per-image work; merge: the rest of run_stage; scaling: \
         images/s over threads × images/s on one thread)"
    );
    println!(
        "| threads | images | faces | s | images/s | best images/s | images/s per core | \
         faces/s | scaling | cpu/wall | setup s | shard s | merge s | merge-only re-run s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for l in &lines {
        let t = l["threads"].as_f64().unwrap();
        let ips = l["images_per_s"].as_f64().unwrap();
        let scaling = one.map_or("-".into(), |o| format!("{:.0} %", ips / (t * o) * 100.0));
        let b = &l["breakdown_s"];
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            l["threads"],
            l["images"],
            l["faces"],
            l["seconds"].as_f64().unwrap(),
            ips,
            l["best_images_per_s"].as_f64().unwrap(),
            l["images_per_s_per_core"].as_f64().unwrap(),
            l["faces_per_s"].as_f64().unwrap(),
            scaling,
            l["cpu_per_wall"]
                .as_f64()
                .map_or("-".into(), |c| format!("{c:.2}")),
            b["setup"].as_f64().unwrap(),
            b["shard"].as_f64().unwrap(),
            b["merge"].as_f64().unwrap(),
            b["merge_only_rerun"].as_f64().unwrap(),
        );
    }
    let per = |k: &str| split[k].as_f64().unwrap();
    let shard_ms_1 = lines
        .iter()
        .find(|l| l["threads"] == 1)
        .and_then(|l| l["ms_per_image_in_shard"].as_f64());
    println!(
        "\nper image on one thread, ms: decode {:.1}, detect {:.1}, landmarks {:.1}, \
         descriptors {:.1} (sum {:.1}){}",
        per("decode"),
        per("detect"),
        per("landmarks"),
        per("descriptors"),
        per("sum"),
        shard_ms_1.map_or(String::new(), |s| format!(
            "; the shard's {s:.1} ms per image leaves {:.1} for crops, JPEG writes, journal and table",
            s - per("sum")
        ))
    );
}
