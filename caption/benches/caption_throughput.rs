//! Throughput of the caption stage's own parts, on the face-api package's six demo photographs
//! (`demo/sample1..6.jpg` in the asset cache, 1920 px group photos with 3 to 5 faces):
//!
//! - **attributes**: face-api's expression and age / gender networks as the `attributes`
//!   captioner runs them, [`FaceAttributeNets::attributes_batch`] on each photo's faces (one
//!   call per photo, the faces batched), from the 68 landmarks of one untimed
//!   `detectAllFaces().withFaceLandmarks()` (SSD MobileNetV1, min confidence 0.5). Faces/s on
//!   one thread, the same one face per call (batch 1, as face-api runs them), and on every core
//!   (rayon over `--copies` copies of the photos). Decoding is not timed (nor is it on the
//!   face-api side, `tools/caption-bench/faceapi_attributes.mjs`).
//! - **rules**: the offline splitter ([`rules::split`]) on the 40 longest `text`s of
//!   `datasets/prompts/validation.toml`: captions/s on one thread and on every core.
//! - **openai**: idforge's own cost per request against the loopback OpenAI-compatible double
//!   (`testkit`), which answers at once (no model): the one-call [`OpenAiCaptioner`] (base64 data
//!   URL, JSON schema, the reply parsed and validated) at concurrency 1 and 16, with 512 px
//!   training crops (JPEG q95, as curate writes them) and with a 48 px crop (the protocol alone);
//!   then the whole stage ([`CaptionStage::run`]: crops read and hashed, cache lines, requests,
//!   shard table, merge with class words and triggers) over a faces table of `--faces` kept
//!   faces. The double runs in a child process (this binary again, with `--caption-double`),
//!   so the process's CPU time is idforge's alone; the double's is reported beside it. Both
//!   share the machine: on few cores the double's work (it decodes every image and hashes it)
//!   caps the requests/s, so "idforge-bound requests/s per core" (requests over idforge's CPU
//!   seconds) is the figure for idforge's own overhead. The 48 px runs make 5 × `--requests`.
//!
//! CPU over wall time is recorded for the timed passes of (a) and (b): about 1.0 on one
//! thread shows that the networks ran on one core.
//!
//! `cargo bench -p idforge-caption --features testkit --bench caption_throughput -- [--rounds N]
//! [--copies N] [--requests N] [--faces N]`: `--rounds` timed passes after a warm-up (default
//! 5), `--copies` copies of the photos on every core (default 4), `--requests` per openai client
//! run (default 1000), `--faces` per stage run (default 300). Prints one JSON line per
//! measurement, then tables with the machine's figures.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it is a smoke test: one photo, one
//! pass of the splitter, 16 requests and a stage of 8 faces, all checked.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::backend::Flex;
use image::{DynamicImage, ImageEncoder, RgbImage};
use rayon::prelude::*;
use serde_json::{Value, json};

use idforge_caption::captioner::{OpenAiCaptioner, SchemaMode};
use idforge_caption::engine::{Engine, EngineInputs};
use idforge_caption::openai::{ChatClient, RetryPolicy};
use idforge_caption::prompts::{Prompt, PromptKind};
use idforge_caption::rules;
use idforge_caption::settings::{CaptionSettings, CaptionerKind};
use idforge_caption::stage::CaptionStage;
use idforge_caption::testkit::{ChatServer, ServerOptions};
use idforge_core::RunDir;
use idforge_core::bench::{BenchArgs, cpu_model, cpu_seconds, loadavg};
use idforge_core::image_io::{DEFAULT_MAX_PIXELS, decode};
use idforge_core::run::ShardSelection;
use idforge_core::schema::faces::{FaceRow, FacesTable, Reason, Verdict};
use idforge_core::schema::{CaptionStatus, CaptionsTable};
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::face_api::{
    Detector, EXPRESSION_LABELS, FaceApi, FaceAttributeNets, FaceAttributes, Stages,
};

const PHOTOS: usize = 6;
/// Argument that turns this binary into the loopback double (a child process of the bench).
const DOUBLE_FLAG: &str = "--caption-double";
/// Prompts of the splitter measurement: the longest of the validation set.
const PROMPTS: usize = 40;
/// Minimum seconds of one timed splitter round.
const SPLIT_ROUND_S: f64 = 0.5;
/// Concurrencies of the openai measurements.
const CONCURRENCY: [usize; 2] = [1, 16];

struct Args {
    bench: bool,
    rounds: usize,
    copies: usize,
    requests: usize,
    faces: usize,
}

fn args() -> Args {
    let argv = BenchArgs::from_env();
    let bench = argv.bench;
    let num = |flag: &str, bench_default: usize, smoke_default: usize| {
        argv.value(flag)
            .map_or(if bench { bench_default } else { smoke_default }, |v| {
                let n: usize = v.parse().unwrap_or_else(|_| panic!("{flag} N"));
                assert!(n >= 1, "{flag} must be at least 1");
                n
            })
    };
    Args {
        bench,
        rounds: num("--rounds", 5, 1),
        copies: num("--copies", 4, 1),
        requests: num("--requests", 1000, 16),
        faces: num("--faces", 300, 8),
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Seconds of CPU time (user + system) of process `pid` so far (Linux; clock ticks at 100/s).
fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
}

/// A decoded photo and the 68 landmarks of each face face-api finds in it.
struct Photo {
    rgb: RgbImage,
    boxes: Vec<[f64; 4]>,
    landmarks: Vec<Vec<(f64, f64)>>,
}

impl Photo {
    fn view(&self) -> RgbView<'_> {
        RgbView {
            width: self.rgb.width() as usize,
            height: self.rgb.height() as usize,
            data: self.rgb.as_raw(),
        }
    }

    fn attributes(&self, nets: &FaceAttributeNets<Flex>) -> Vec<Option<FaceAttributes>> {
        let lm: Vec<&[(f64, f64)]> = self.landmarks.iter().map(Vec::as_slice).collect();
        nets.attributes_batch(self.view(), &lm)
    }
}

/// Decodes the photos and finds their faces and landmarks (untimed set-up).
fn photos(face_api: &Path, count: usize) -> Vec<Photo> {
    let detector = Detector::default();
    let api = FaceApi::<Flex>::load(
        &face_api.join("model"),
        detector,
        Stages::Landmarks,
        &Default::default(),
    )
    .expect("face-api weights");
    (1..=count)
        .map(|n| {
            let path = face_api.join("demo").join(format!("sample{n}.jpg"));
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e}: run `make assets` first", path.display()));
            let rgb = decode(&bytes, DEFAULT_MAX_PIXELS)
                .expect("the demo photo decodes")
                .image
                .into_rgb8();
            let mut photo = Photo {
                rgb,
                boxes: vec![],
                landmarks: vec![],
            };
            for f in api.analyze(photo.view(), detector) {
                let d = f.detection;
                photo.boxes.push([d.x, d.y, d.width, d.height]);
                photo.landmarks.push(f.landmarks.expect("landmarks"));
            }
            assert!(!photo.landmarks.is_empty(), "sample{n}.jpg: no face found");
            photo
        })
        .collect()
}

/// Best and mean of timed passes.
struct Passes {
    mean_s: f64,
    best_s: f64,
    /// CPU seconds of the process over wall seconds, timed passes only.
    cpu_per_wall: Option<f64>,
}

fn time_passes(rounds: usize, mut pass: impl FnMut()) -> Passes {
    pass(); // warm-up
    let mut times = Vec::with_capacity(rounds);
    let cpu0 = cpu_seconds();
    for _ in 0..rounds {
        let t = Instant::now();
        pass();
        times.push(t.elapsed().as_secs_f64());
    }
    let total: f64 = times.iter().sum();
    Passes {
        mean_s: total / times.len() as f64,
        best_s: times.iter().copied().fold(f64::INFINITY, f64::min),
        cpu_per_wall: cpu_seconds()
            .zip(cpu0)
            .map(|(b, a)| ((b - a) / total * 100.0).round() / 100.0),
    }
}

fn describe(a: &FaceAttributes) -> Value {
    let (expression, p) = a.dominant_expression();
    json!({
        "age": r3(a.age as f64),
        "gender": a.gender.as_str(),
        "gender_probability": r3(a.gender_probability as f64),
        "expression": expression,
        "expression_probability": r3(p as f64),
    })
}

/// (a) The attribute networks: one thread batched per photo, one thread batch 1, every core.
fn bench_attributes(args: &Args, photos: &[Photo], models: &Path) -> Vec<Value> {
    let t = Instant::now();
    let nets = FaceAttributeNets::<Flex>::load(models, &Default::default()).expect("weights");
    let load_s = t.elapsed().as_secs_f64();
    let faces: usize = photos.iter().map(|p| p.landmarks.len()).sum();

    // Every face gets its attributes, batched or not, the same.
    let batched: Vec<FaceAttributes> = photos
        .iter()
        .flat_map(|p| p.attributes(&nets))
        .map(|a| a.expect("every face has an aligned box inside its photo"))
        .collect();
    assert_eq!(batched.len(), faces);
    let single = nets
        .attributes(photos[0].view(), &photos[0].landmarks[0])
        .unwrap();
    assert!(
        (single.age - batched[0].age).abs() < 0.05,
        "batch 1 and batched disagree"
    );
    assert_eq!(
        EXPRESSION_LABELS.len(),
        single.expressions.len(),
        "7 expressions"
    );
    if !args.bench {
        return vec![json!({ "part": "attributes", "smoke": true, "faces": faces })];
    }

    let mut out = Vec::new();
    let line = |what: &str, threads: usize, copies: usize, p: &Passes| {
        let faces = faces * copies;
        json!({
            "part": "attributes",
            "impl": "idforge",
            "what": what,
            "backend": "flex",
            "threads": threads,
            "images": photos.len() * copies,
            "faces": faces,
            "rounds": args.rounds,
            "warmup_passes": 1,
            "ms_per_face": r3(p.mean_s * 1000.0 / faces as f64),
            "best_ms_per_face": r3(p.best_s * 1000.0 / faces as f64),
            "faces_per_s": r3(faces as f64 / p.mean_s),
            "best_faces_per_s": r3(faces as f64 / p.best_s),
            "faces_per_s_per_core": r3(faces as f64 / p.mean_s / threads as f64),
            "cpu_per_wall": p.cpu_per_wall,
        })
    };

    let load0 = loadavg();
    let p = time_passes(args.rounds, || {
        for photo in photos {
            std::hint::black_box(photo.attributes(&nets));
        }
    });
    let mut l = line(
        "attributes_batch per photo (the faces of a photo in one batch)",
        1,
        1,
        &p,
    );
    l["load_s"] = json!(r3(load_s));
    l["first_face"] = describe(&batched[0]);
    l["loadavg_1min_before"] = json!(load0);
    out.push(l);

    let p = time_passes(args.rounds, || {
        for photo in photos {
            for lm in &photo.landmarks {
                std::hint::black_box(nets.attributes(photo.view(), lm));
            }
        }
    });
    out.push(line(
        "attributes per face (batch 1, as face-api runs its nets)",
        1,
        1,
        &p,
    ));

    let cores = cores();
    if cores > 1 {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cores)
            .build()
            .unwrap();
        let work: Vec<&Photo> = (0..args.copies).flat_map(|_| photos.iter()).collect();
        let p = time_passes(args.rounds, || {
            pool.install(|| {
                work.par_iter().for_each(|photo| {
                    std::hint::black_box(photo.attributes(&nets));
                })
            })
        });
        out.push(line(
            "attributes_batch per photo, rayon over copies of the photos",
            cores,
            args.copies,
            &p,
        ));
    }
    out
}

/// The `text`s of the validation prompts, the `count` longest (by characters), in file order.
fn detailed_prompts(count: usize) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/prompts/validation.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: toml::Table = toml::from_str(&text).expect("validation.toml parses");
    let all: Vec<String> = doc["prompt"]
        .as_array()
        .expect("[[prompt]] tables")
        .iter()
        .map(|p| p["text"].as_str().expect("text").to_string())
        .collect();
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(all[i].chars().count()));
    order.truncate(count);
    order.sort_unstable();
    order.into_iter().map(|i| all[i].clone()).collect()
}

/// (b) The rules splitter on the detailed prompts.
fn bench_rules(args: &Args) -> Vec<Value> {
    let prompts = detailed_prompts(PROMPTS);
    let words: usize = prompts.iter().map(|p| p.split_whitespace().count()).sum();
    let chars: usize = prompts.iter().map(|p| p.chars().count()).sum();
    let split_all = |prompts: &[String]| {
        for p in prompts {
            let s = rules::split(p);
            assert!(!s.general.is_empty() || !s.background.is_empty() || !s.body.is_empty());
            std::hint::black_box(s);
        }
    };
    if !args.bench {
        split_all(&prompts);
        return vec![json!({ "part": "rules", "smoke": true, "prompts": prompts.len() })];
    }
    // Passes over the prompts per timed round, so that a round lasts at least SPLIT_ROUND_S.
    let t = Instant::now();
    split_all(&prompts);
    let one = t.elapsed().as_secs_f64().max(1e-6);
    let reps = ((SPLIT_ROUND_S / one).ceil() as usize).max(1);
    let n = prompts.len() * reps;
    let line = |what: &str, threads: usize, captions: usize, p: &Passes| {
        json!({
            "part": "rules",
            "impl": "idforge",
            "what": what,
            "version": rules::RULES_VERSION,
            "threads": threads,
            "prompts": prompts.len(),
            "mean_words": r1(words as f64 / prompts.len() as f64),
            "mean_chars": r1(chars as f64 / prompts.len() as f64),
            "captions_per_round": captions,
            "rounds": args.rounds,
            "us_per_caption": r3(p.mean_s * 1e6 / captions as f64),
            "best_us_per_caption": r3(p.best_s * 1e6 / captions as f64),
            "captions_per_s": r1(captions as f64 / p.mean_s),
            "best_captions_per_s": r1(captions as f64 / p.best_s),
            "words_per_s": r1((words * captions / prompts.len()) as f64 / p.mean_s),
            "captions_per_s_per_core": r1(captions as f64 / p.mean_s / threads as f64),
            "cpu_per_wall": p.cpu_per_wall,
        })
    };
    let mut out = vec![line(
        "rules::split, the 40 longest validation prompts",
        1,
        n,
        &time_passes(args.rounds, || {
            for _ in 0..reps {
                split_all(&prompts);
            }
        }),
    )];
    let cores = cores();
    if cores > 1 {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cores)
            .build()
            .unwrap();
        let all: Vec<&String> = (0..reps * cores).flat_map(|_| prompts.iter()).collect();
        let p = time_passes(args.rounds, || {
            pool.install(|| {
                all.par_iter().for_each(|p| {
                    std::hint::black_box(rules::split(p));
                })
            })
        });
        out.push(line(
            "rules::split, rayon over the prompts",
            cores,
            all.len(),
            &p,
        ));
    }
    out
}

/// The double in a child process: this binary with [`DOUBLE_FLAG`].
struct Double {
    child: Child,
    base_url: String,
}

impl Double {
    fn start() -> Self {
        let mut child = Command::new(std::env::current_exe().expect("this binary"))
            .arg(DOUBLE_FLAG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the double starts");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .expect("the double prints its address");
        let base_url = line.trim().to_string();
        assert!(base_url.starts_with("http://127.0.0.1:"), "{base_url:?}");
        Double { child, base_url }
    }

    fn cpu_s(&self) -> Option<f64> {
        cpu_seconds_of(self.child.id())
    }
}

impl Drop for Double {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // EOF: the double stops
        let _ = self.child.wait();
    }
}

/// The child's side: serve until stdin closes.
fn serve_double() {
    let server = ChatServer::start(ServerOptions::default()).expect("loopback double");
    println!("{}", server.base_url());
    std::io::stdout().flush().unwrap();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(server);
}

fn jpeg(rgb: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .write_image(
            rgb.as_raw(),
            rgb.width(),
            rgb.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

/// 512 px training crops of the photos' faces (the face box about 10 % of the square, as
/// curate's defaults), JPEG q95.
fn training_crops(photos: &[Photo]) -> Vec<Vec<u8>> {
    let mut crops = Vec::new();
    for p in photos {
        let img = DynamicImage::ImageRgb8(p.rgb.clone());
        for &[x, y, w, h] in &p.boxes {
            let side = (w.max(h) / 0.10f64.sqrt())
                .min(p.rgb.width().min(p.rgb.height()) as f64)
                .floor();
            let cx = (x + w / 2.0 - side / 2.0).clamp(0.0, p.rgb.width() as f64 - side);
            let cy = (y + h / 2.0 - side / 2.0).clamp(0.0, p.rgb.height() as f64 - side);
            let crop = img
                .crop_imm(cx as u32, cy as u32, side as u32, side as u32)
                .resize_exact(512, 512, image::imageops::FilterType::Triangle)
                .into_rgb8();
            crops.push(jpeg(&crop, 95));
        }
    }
    crops
}

/// The JPEG with a comment segment after `SOI`: same pixels, other bytes (another cache key).
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

fn runtime() -> tokio::runtime::Runtime {
    // As the stage builds its own: two workers.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// What one measured openai run took.
struct Measured {
    wall_s: f64,
    cpu_s: Option<f64>,
    double_cpu_s: Option<f64>,
    latencies_ms: Vec<f64>,
}

fn measure(double: &Double, f: impl FnOnce() -> Vec<f64>) -> Measured {
    let (c0, d0) = (cpu_seconds(), double.cpu_s());
    let t = Instant::now();
    let mut latencies_ms = f();
    let wall_s = t.elapsed().as_secs_f64();
    latencies_ms.sort_by(f64::total_cmp);
    Measured {
        wall_s,
        cpu_s: cpu_seconds().zip(c0).map(|(b, a)| b - a),
        double_cpu_s: double.cpu_s().zip(d0).map(|(b, a)| b - a),
        latencies_ms,
    }
}

fn openai_line(what: &str, concurrency: usize, n: usize, runs: &[Measured], extra: Value) -> Value {
    let mean = |f: &dyn Fn(&Measured) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
    let wall = mean(&|m| m.wall_s);
    let best = runs.iter().map(|m| m.wall_s).fold(f64::INFINITY, f64::min);
    let cpu = runs
        .iter()
        .map(|m| m.cpu_s)
        .sum::<Option<f64>>()
        .map(|c| c / runs.len() as f64);
    let dcpu = runs
        .iter()
        .map(|m| m.double_cpu_s)
        .sum::<Option<f64>>()
        .map(|c| c / runs.len() as f64);
    let lat: Vec<f64> = {
        let mut all: Vec<f64> = runs.iter().flat_map(|m| m.latencies_ms.clone()).collect();
        all.sort_by(f64::total_cmp);
        all
    };
    let mut l = json!({
        "part": "openai",
        "impl": "idforge",
        "what": what,
        "concurrency": concurrency,
        "requests": n,
        "rounds": runs.len(),
        "seconds": r3(wall),
        "requests_per_s": r1(n as f64 / wall),
        "best_requests_per_s": r1(n as f64 / best),
        "idforge_cpu_us_per_request": cpu.map(|c| r1(c * 1e6 / n as f64)),
        "idforge_cpu_bound_requests_per_s_per_core": cpu.filter(|&c| c > 0.0).map(|c| r1(n as f64 / c)),
        "double_cpu_us_per_request": dcpu.map(|c| r1(c * 1e6 / n as f64)),
        "latency_p50_ms": lat.first().map(|_| r3(percentile(&lat, 0.5))),
        "latency_p95_ms": lat.first().map(|_| r3(percentile(&lat, 0.95))),
    });
    if let (Value::Object(l), Value::Object(e)) = (&mut l, extra) {
        l.extend(e);
    }
    l
}

/// The one-call captioner alone: `n` requests, `concurrency` in flight, payloads in turn.
fn client_run(
    rt: &tokio::runtime::Runtime,
    captioner: &Arc<OpenAiCaptioner>,
    payloads: &[Vec<u8>],
    n: usize,
    concurrency: usize,
) -> Vec<f64> {
    rt.block_on(async {
        let limit = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let tasks = (0..n).map(|i| {
            let limit = limit.clone();
            let captioner = captioner.clone();
            let payload = &payloads[i % payloads.len()];
            async move {
                let _permit = limit.acquire().await.expect("semaphore open");
                let t = Instant::now();
                let out = captioner
                    .caption("image/jpeg", payload)
                    .await
                    .unwrap_or_else(|f| panic!("the double answers: {}", f.error));
                assert!(out.parts.is_some_and(|p| !p.general.is_empty()));
                t.elapsed().as_secs_f64() * 1000.0
            }
        });
        futures_util::future::join_all(tasks).await
    })
}

/// A run folder with a faces table of `n` kept faces, each with its own crop file.
fn make_run(root: &Path, crops: &[Vec<u8>], n: usize) {
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        let crop = format!("curate/crops/{:02}/face-{i}.jpg", i % 100);
        let path = root.join(&crop);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let bytes = with_comment(&crops[i % crops.len()], &format!("caption bench face {i}"));
        std::fs::write(&path, bytes).unwrap();
        let identity = format!("person-{}", i % 10);
        let mut row = FaceRow::image_rejected(
            i as u64,
            format!("{i:064x}"),
            Some(identity.clone()),
            Reason::NoFace,
            String::new(),
        );
        row.verdict = Verdict::Kept;
        row.reason = None;
        row.detail = None;
        row.group = Some(identity);
        row.face_index = Some(0);
        row.crop_path = Some(crop);
        rows.push(row);
    }
    FacesTable {
        embedder: "face-api".into(),
        embedding_dim: 128,
        rows,
    }
    .write(&root.join("curate/faces.parquet"))
    .unwrap();
}

/// A fresh run folder with `n` kept faces (not timed).
fn prepared_run(crops: &[Vec<u8>], n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    make_run(&dir.path().join("run"), crops, n);
    dir
}

/// The whole stage as `idforge caption` runs it (engine, tables read, shard, merge) over the
/// `n` faces of a prepared run folder.
fn stage_run(dir: &tempfile::TempDir, base_url: &str, n: usize, concurrency: usize) {
    let root = dir.path().join("run");
    let mut s = CaptionSettings {
        captioner: CaptionerKind::Openai,
        ..Default::default()
    };
    s.openai.base_url = base_url.to_string();
    s.openai.model = "bench-vlm".into();
    s.openai.concurrency = idforge_core::limits::Concurrency::new(concurrency as u64).unwrap();
    let resolve = |p: &Path| p.to_path_buf();
    let engine = Engine::from_settings::<Flex>(
        &s,
        EngineInputs {
            resolve: &resolve,
            face_api_models: None,
            api_key: None,
            device: Default::default(),
        },
    )
    .unwrap();
    let stage = CaptionStage::new(s, &root, engine).unwrap();
    let (report, _) = stage
        .run(&RunDir::at(&root), ShardSelection::All(1), false)
        .unwrap();
    assert!(report.merged.is_some());
    let table = CaptionsTable::read(&root.join("caption/captions.parquet")).unwrap();
    assert_eq!(table.rows.len(), n);
    assert!(
        table
            .rows
            .iter()
            .all(|r| r.status == CaptionStatus::Ok && !r.cached && r.attempts == 1),
        "every face captioned once by the double"
    );
}

/// (c) The openai client and the stage against the double.
fn bench_openai(args: &Args, photos: &[Photo]) -> Vec<Value> {
    let double = Double::start();
    let crops = training_crops(photos);
    let mean_crop = crops.iter().map(Vec::len).sum::<usize>() / crops.len();
    let tiny = jpeg(
        &RgbImage::from_fn(48, 48, |x, y| {
            image::Rgb([(x * 5) as u8, (y * 5) as u8, 128])
        }),
        90,
    );
    let client = ChatClient::new(
        &double.base_url,
        "bench-vlm",
        None,
        RetryPolicy {
            timeout: Duration::from_secs(30),
            ..Default::default()
        },
    )
    .unwrap();
    let captioner = Arc::new(OpenAiCaptioner::new(
        client,
        Prompt::builtin(PromptKind::OneCall),
        SchemaMode::Auto,
        2,
        512,
        0.0,
    ));
    let rt = runtime();
    let rounds = if args.bench { args.rounds.min(3) } else { 1 };
    let mut out = Vec::new();
    // The small payload costs little on either side: 5 times the requests, so that the CPU
    // time (in 10 ms ticks) is measured to a few per cent.
    for (label, payloads, bytes, n) in [
        ("512 px crops", &crops, mean_crop, args.requests),
        (
            "48 px crop",
            &vec![tiny.clone()],
            tiny.len(),
            5 * args.requests,
        ),
    ] {
        for c in CONCURRENCY {
            client_run(&rt, &captioner, payloads, n.min(64), c); // warm-up: connections, allocator
            let runs: Vec<Measured> = (0..rounds)
                .map(|_| measure(&double, || client_run(&rt, &captioner, payloads, n, c)))
                .collect();
            out.push(openai_line(
                &format!("OpenAiCaptioner::caption one-call, {label}"),
                c,
                n,
                &runs,
                json!({ "image_bytes": bytes }),
            ));
        }
    }
    for c in CONCURRENCY {
        let n = args.faces;
        stage_run(&prepared_run(&crops, 16), &double.base_url, 16, c); // warm-up
        let runs: Vec<Measured> = (0..rounds)
            .map(|_| {
                let dir = prepared_run(&crops, n);
                measure(&double, || {
                    stage_run(&dir, &double.base_url, n, c);
                    vec![]
                })
            })
            .collect();
        out.push(openai_line(
            "CaptionStage::run, openai one-call, 512 px crops (crop read + sha256, cache, requests, table, merge)",
            c,
            n,
            &runs,
            json!({ "image_bytes": mean_crop, "faces": n }),
        ));
    }
    drop(rt);
    drop(double);
    out
}

fn main() {
    if std::env::args().any(|a| a == DOUBLE_FLAG) {
        serve_double();
        return;
    }
    if std::env::var_os("IDFORGE_PROGRESS").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("IDFORGE_PROGRESS", "off") };
    }
    let args = args();
    let face_api = idforge_core::cache::face_api_dir_if_fetched()
        .expect("the face-api package is not in the asset cache: run `make assets` first");
    let models = face_api.join("model");
    let started = Instant::now();
    let load0 = loadavg();
    let photos = photos(&face_api, if args.bench { PHOTOS } else { 1 });

    let mut lines = bench_attributes(&args, &photos, &models);
    lines.extend(bench_rules(&args));
    lines.extend(bench_openai(&args, &photos));
    if !args.bench {
        eprintln!(
            "caption_throughput: smoke pass ok ({} faces, {} prompts, {} requests at concurrency \
             {:?}, stages of {} faces) in {:.1} s (run with --bench to time)",
            photos[0].landmarks.len(),
            PROMPTS,
            args.requests,
            CONCURRENCY,
            args.faces,
            started.elapsed().as_secs_f64()
        );
        return;
    }
    let machine = json!({
        "machine": {
            "available_parallelism": cores(),
            "cpu_model": cpu_model(),
            "loadavg_1min_before": load0,
            "loadavg_1min_after": loadavg(),
        }
    });
    for l in &lines {
        println!("{l}");
    }
    println!("{machine}");
    print_tables(&lines, &machine["machine"]);
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    }
}

fn print_tables(lines: &[Value], machine: &Value) {
    let part = |p: &'static str| lines.iter().filter(move |l| l["part"] == p);
    println!(
        "\ncaption stage parts; {} cores ({}); 1-min load average {} before, {} after",
        machine["available_parallelism"],
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["loadavg_1min_before"],
        machine["loadavg_1min_after"],
    );

    let first = part("attributes").next().unwrap();
    println!(
        "\n(a) face-api attribute nets (expression + age/gender), burn flex, on the {} faces of \
         the 6 demo photos (1920 px); warm-up + {} timed passes; first face: {}",
        first["faces"], first["rounds"], first["first_face"]
    );
    println!(
        "| what | threads | faces/pass | wall ms/face | faces/s | best faces/s | faces/s per core \
         | cpu/wall |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for l in part("attributes") {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            l["what"].as_str().unwrap(),
            l["threads"],
            l["faces"],
            num(&l["ms_per_face"]),
            num(&l["faces_per_s"]),
            num(&l["best_faces_per_s"]),
            num(&l["faces_per_s_per_core"]),
            num(&l["cpu_per_wall"]),
        );
    }

    let first = part("rules").next().unwrap();
    println!(
        "\n(b) rules splitter ({}) on the {} longest validation prompts (mean {} words, {} \
         characters); {} timed rounds of >= {SPLIT_ROUND_S} s",
        first["version"].as_str().unwrap(),
        first["prompts"],
        first["mean_words"],
        first["mean_chars"],
        first["rounds"],
    );
    println!(
        "| what | threads | wall µs/caption | captions/s | best captions/s | captions/s per core \
         | words/s | cpu/wall |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for l in part("rules") {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            l["what"].as_str().unwrap(),
            l["threads"],
            num(&l["us_per_caption"]),
            num(&l["captions_per_s"]),
            num(&l["best_captions_per_s"]),
            num(&l["captions_per_s_per_core"]),
            num(&l["words_per_s"]),
            num(&l["cpu_per_wall"]),
        );
    }

    println!(
        "\n(c) openai client and stage against the loopback double (answers at once; its own \
         process on the same machine), tokio with 2 workers as the stage; CPU µs per request: \
         this process (idforge) and the double's; idforge-bound: requests/s one core would \
         sustain on idforge's CPU time alone (1 / its CPU s per request)"
    );
    println!(
        "| what | concurrency | requests | requests/s | best requests/s | idforge CPU µs/req | \
         idforge-bound requests/s per core | double CPU µs/req | p50 ms | p95 ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for l in part("openai") {
        println!(
            "| {} ({} B) | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            l["what"].as_str().unwrap(),
            l["image_bytes"],
            l["concurrency"],
            l["requests"],
            num(&l["requests_per_s"]),
            num(&l["best_requests_per_s"]),
            num(&l["idforge_cpu_us_per_request"]),
            num(&l["idforge_cpu_bound_requests_per_s_per_core"]),
            num(&l["double_cpu_us_per_request"]),
            num(&l["latency_p50_ms"]),
            num(&l["latency_p95_ms"]),
        );
    }
}
