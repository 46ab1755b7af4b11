//! Per-image time of the face-api chain on the CPU: SSD MobileNetV1 detection, 68 landmarks,
//! 128-d descriptors ([`FaceApi::analyze`], face-api's
//! `detectAllFaces().withFaceLandmarks().withFaceDescriptors()`), on the three fixture PNGs
//! `models/tests/fixtures/face-api/sample{1,4,6}_640.png` (3 + 4 + 4 faces).
//!
//! `cargo bench -p idforge-models --bench face_api_chain -- [--rounds N] [--backend NAME]`:
//! one warm-up pass over the images, then N timed passes (default 5), for each CPU backend
//! compiled in: `flex` always, `ndarray` with `--features ndarray`. `--features flex-rayon`
//! lets flex use rayon's pool (it is single-threaded without). Prints one JSON line per backend
//! on stdout: ms per image (mean and best pass), images/s, the threads the backend may use and
//! the CPU time it actually used per wall second; then, from the best pass of each, the chain
//! cut into its stages ([`FaceApi::detect`], [`FaceApi::add_landmarks`],
//! [`FaceApi::add_descriptors`]).
//! `tools/face-bench/run` runs it next to the JavaScript reference on the same cores.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it is a smoke test: one pass, which
//! must find the 11 faces.

use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::Backend;
use idforge_core::bench::{cpu_seconds, loadavg};
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::face_api::{Detector, Face, FaceApi, Stages};

const PNGS: [&str; 3] = ["sample1_640.png", "sample4_640.png", "sample6_640.png"];
const FACES: usize = 11;

struct Image {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Image {
    fn view(&self) -> RgbView<'_> {
        RgbView {
            width: self.width,
            height: self.height,
            data: &self.rgb,
        }
    }
}

struct Args {
    rounds: usize,
    backends: Vec<String>,
}

fn args() -> Args {
    let argv = idforge_core::bench::BenchArgs::from_env();
    let bench = argv.bench;
    let value = |flag: &str| argv.value(flag);
    let rounds = value("--rounds").map_or(if bench { 5 } else { 0 }, |v| {
        v.parse().expect("--rounds N")
    });
    let backends = value("--backend").map_or_else(
        || compiled_backends().iter().map(|s| s.to_string()).collect(),
        |b| vec![b],
    );
    Args { rounds, backends }
}

fn compiled_backends() -> Vec<&'static str> {
    let mut v = vec!["flex"];
    if cfg!(feature = "ndarray") {
        v.push("ndarray");
    }
    v
}

fn main() {
    let args = args();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/face-api");
    let images: Vec<Image> = PNGS
        .iter()
        .map(|name| {
            let img = image::open(fixtures.join(name))
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .to_rgb8();
            Image {
                width: img.width() as usize,
                height: img.height() as usize,
                rgb: img.into_raw(),
            }
        })
        .collect();
    let model_dir = idforge_core::cache::face_api_dir_if_fetched()
        .expect("run tools/fetch-assets (make test does)")
        .join("model");
    for backend in &args.backends {
        match backend.as_str() {
            "flex" => {
                run::<burn::backend::Flex>("flex", &Default::default(), &model_dir, &images, &args)
            }
            #[cfg(feature = "ndarray")]
            "ndarray" => run::<burn::backend::NdArray>(
                "ndarray",
                &Default::default(),
                &model_dir,
                &images,
                &args,
            ),
            other => panic!(
                "backend {other} is not compiled in (have: {}; ndarray needs --features ndarray)",
                compiled_backends().join(", ")
            ),
        }
    }
}

/// The threads the backend's kernels may run on.
fn backend_threads(backend: &str) -> usize {
    let rayon_backend = match backend {
        "flex" => cfg!(feature = "flex-rayon"),
        _ => true, // burn-ndarray with "multi-threads"
    };
    if rayon_backend {
        rayon::current_num_threads()
    } else {
        1
    }
}

fn ms(secs: f64) -> f64 {
    (secs * 1e5).round() / 100.0
}

fn run<B: Backend>(
    name: &str,
    device: &B::Device,
    model_dir: &Path,
    images: &[Image],
    args: &Args,
) {
    let s = Instant::now();
    let api = FaceApi::<B>::load(model_dir, Detector::default(), Stages::Descriptors, device)
        .expect("face-api weights");
    let load_s = s.elapsed().as_secs_f64();

    // Warm-up pass (also the smoke test's only pass).
    let warm: Vec<Vec<Face>> = images
        .iter()
        .map(|img| api.analyze(img.view(), Detector::default()))
        .collect();
    let faces: usize = warm.iter().map(Vec::len).sum();
    assert_eq!(faces, FACES, "{name}: faces over the 3 images");
    if args.rounds == 0 {
        eprintln!("{name}: smoke pass ok, {faces} faces (run with --bench to time)");
        return;
    }

    // The chain.
    let mut per_image = vec![0f64; images.len()];
    let mut best_pass = f64::INFINITY;
    let (cpu0, load0) = (cpu_seconds(), loadavg());
    let t0 = Instant::now();
    for _ in 0..args.rounds {
        let pass = Instant::now();
        for (i, img) in images.iter().enumerate() {
            let s = Instant::now();
            std::hint::black_box(api.analyze(img.view(), Detector::default()));
            per_image[i] += s.elapsed().as_secs_f64();
        }
        best_pass = best_pass.min(pass.elapsed().as_secs_f64());
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds().zip(cpu0).map(|(b, a)| b - a);
    let n = (args.rounds * images.len()) as f64;

    // The stages, over the same number of passes; each stage's best pass (the least disturbed
    // by other load on a shared machine).
    let mut st = StageTimes::worst();
    for _ in 0..args.rounds {
        let mut pass = StageTimes::default();
        for img in images {
            let t = stages(&api, img.view());
            pass.add(&t);
        }
        st.keep_min(&pass);
    }
    let line = serde_json::json!({
        "impl": "idforge",
        "backend": name,
        "threads": backend_threads(name),
        "rayon_threads": rayon::current_num_threads(),
        "flex_rayon": cfg!(feature = "flex-rayon"),
        "cpu_per_wall": cpu.map(|c| (c / wall * 100.0).round() / 100.0),
        "images": images.len(),
        "faces": faces,
        "warmup_passes": 1,
        "rounds": args.rounds,
        "ms_per_image": ms(wall / n),
        "images_per_s": (n / wall * 1000.0).round() / 1000.0,
        "best_pass_ms_per_image": ms(best_pass / images.len() as f64),
        "per_image_ms": per_image.iter().map(|t| ms(t / args.rounds as f64)).collect::<Vec<_>>(),
        "stages": st.json(images.len() as f64),
        "load_s": ms(load_s) / 1000.0,
        "available_parallelism": std::thread::available_parallelism().map_or(1, |c| c.get()),
        "loadavg_1min_before": load0,
        "loadavg_1min_after": loadavg(),
    });
    println!("{line}");
}

#[derive(Default, Clone, Copy)]
struct StageTimes {
    detect: f64,
    landmarks: f64,
    descriptors: f64,
}

impl StageTimes {
    fn add(&mut self, o: &StageTimes) {
        self.detect += o.detect;
        self.landmarks += o.landmarks;
        self.descriptors += o.descriptors;
    }

    fn worst() -> Self {
        let w = f64::INFINITY;
        StageTimes {
            detect: w,
            landmarks: w,
            descriptors: w,
        }
    }

    fn keep_min(&mut self, o: &StageTimes) {
        self.detect = self.detect.min(o.detect);
        self.landmarks = self.landmarks.min(o.landmarks);
        self.descriptors = self.descriptors.min(o.descriptors);
    }

    fn json(&self, n: f64) -> serde_json::Value {
        serde_json::json!({
            "what": "ms per image, each stage's best pass: FaceApi::detect (SSD input, net, decode, NMS), add_landmarks and add_descriptors (crops, inputs, one batched forward per image, read-back)",
            "detect": ms(self.detect / n),
            "landmarks": ms(self.landmarks / n),
            "descriptors": ms(self.descriptors / n),
            "sum": ms((self.detect + self.landmarks + self.descriptors) / n),
        })
    }
}

/// The stages of [`FaceApi::analyze`], timed one by one.
fn stages<B: Backend>(api: &FaceApi<B>, img: RgbView<'_>) -> StageTimes {
    let s = Instant::now();
    let mut faces = api.detect(img, Detector::default());
    let detect = s.elapsed().as_secs_f64();
    let s = Instant::now();
    api.add_landmarks(img, &mut faces);
    let landmarks = s.elapsed().as_secs_f64();
    let s = Instant::now();
    api.add_descriptors(img, &mut faces);
    let descriptors = s.elapsed().as_secs_f64();
    std::hint::black_box(faces);
    StageTimes {
        detect,
        landmarks,
        descriptors,
    }
}
