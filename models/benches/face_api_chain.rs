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
//! cut into stages (SSD input, detection, landmark inputs and net, descriptor inputs and net)
//! and the convolutions of the MobileNetV1 backbone at 512 px on random data by op kind.
//! `tools/face-bench/run` runs it next to the JavaScript reference on the same cores.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it is a smoke test: one pass, which
//! must find the 11 faces and agree with the stage-by-stage path.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Distribution, Tensor};
use idforge_models::face_api::pipeline::{align_dlib, clip_at_image_borders};
use idforge_models::face_api::preprocess::{PixelRect, RgbView, crop};
use idforge_models::face_api::{
    Detector, Face, FaceApi, FaceLandmark68, FaceRecognition, SsdMobilenetV1, Stages,
};
use idforge_models::tfjs::TfjsWeights;

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
    bench: bool,
    rounds: usize,
    backends: Vec<String>,
}

fn args() -> Args {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let bench = argv.iter().any(|a| a == "--bench");
    let value = |flag: &str| {
        argv.iter()
            .position(|a| a == flag)
            .and_then(|i| argv.get(i + 1).cloned())
    };
    let rounds = value("--rounds").map_or(if bench { 5 } else { 0 }, |v| {
        v.parse().expect("--rounds N")
    });
    let backends = value("--backend").map_or_else(
        || compiled_backends().iter().map(|s| s.to_string()).collect(),
        |b| vec![b],
    );
    Args {
        bench,
        rounds,
        backends,
    }
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

/// Seconds of CPU time (user + system) this process has used so far, from `/proc/self/stat`
/// (clock ticks, assumed 100 per second); `None` where that file does not exist.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
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
    let nets = Nets::<B>::load(model_dir, device);

    // Warm-up pass (also the smoke test's only pass).
    let warm: Vec<Vec<Face>> = images
        .iter()
        .map(|img| api.analyze(img.view(), Detector::default()))
        .collect();
    let faces: usize = warm.iter().map(Vec::len).sum();
    assert_eq!(faces, FACES, "{name}: faces over the 3 images");
    for (img, want) in images.iter().zip(&warm) {
        let (got, _) = nets.stages(img.view());
        assert_eq!(
            got.len(),
            want.len(),
            "{name}: stage path found other faces"
        );
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.detection, w.detection);
            assert_eq!(g.descriptor, w.descriptor, "{name}: stage path differs");
        }
    }
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
            let (_, t) = nets.stages(img.view());
            pass.add(&t);
        }
        st.keep_min(&pass);
    }
    // Convolutions of the SSD backbone by kind, once per pass; the best pass of each kind.
    let ops = if args.bench {
        let mut best = [f64::INFINITY; 3];
        for _ in 0..args.rounds {
            let t = backbone_ops::<B>(device);
            best.iter_mut().zip(t).for_each(|(a, b)| *a = a.min(b));
        }
        Some(serde_json::json!({
            "what": "MobileNetV1 backbone of SSD at 512 px on random data, ms per pass (best pass): 'same' zero padding copies, 3x3 depthwise convolutions (groups = channels) with bias and ReLU6, 1x1 pointwise convolutions with bias and ReLU6",
            "pad": ms(best[0]),
            "depthwise_3x3": ms(best[1]),
            "pointwise_1x1": ms(best[2]),
        }))
    } else {
        None
    };

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
        "ops": ops,
        "load_s": ms(load_s) / 1000.0,
        "available_parallelism": std::thread::available_parallelism().map_or(1, |c| c.get()),
        "loadavg_1min_before": load0,
        "loadavg_1min_after": loadavg(),
    });
    println!("{line}");
}

/// The networks one by one, to time the chain's stages as [`FaceApi::analyze`] runs them.
struct Nets<B: Backend> {
    ssd: SsdMobilenetV1<B>,
    landmarks: FaceLandmark68<B>,
    recognition: FaceRecognition<B>,
    device: B::Device,
}

#[derive(Default, Clone, Copy)]
struct StageTimes {
    ssd_input: f64,
    detect: f64,
    landmarks_input: f64,
    landmarks_net: f64,
    descriptors_input: f64,
    descriptors_net: f64,
}

impl StageTimes {
    fn add(&mut self, o: &StageTimes) {
        self.ssd_input += o.ssd_input;
        self.detect += o.detect;
        self.landmarks_input += o.landmarks_input;
        self.landmarks_net += o.landmarks_net;
        self.descriptors_input += o.descriptors_input;
        self.descriptors_net += o.descriptors_net;
    }

    fn worst() -> Self {
        let w = f64::INFINITY;
        StageTimes {
            ssd_input: w,
            detect: w,
            landmarks_input: w,
            landmarks_net: w,
            descriptors_input: w,
            descriptors_net: w,
        }
    }

    /// The chain: everything but `ssd_input`, which `detect` includes.
    fn sum(&self) -> f64 {
        self.detect
            + self.landmarks_input
            + self.landmarks_net
            + self.descriptors_input
            + self.descriptors_net
    }

    fn keep_min(&mut self, o: &StageTimes) {
        self.ssd_input = self.ssd_input.min(o.ssd_input);
        self.detect = self.detect.min(o.detect);
        self.landmarks_input = self.landmarks_input.min(o.landmarks_input);
        self.landmarks_net = self.landmarks_net.min(o.landmarks_net);
        self.descriptors_input = self.descriptors_input.min(o.descriptors_input);
        self.descriptors_net = self.descriptors_net.min(o.descriptors_net);
    }

    fn json(&self, n: f64) -> serde_json::Value {
        serde_json::json!({
            "what": "ms per image, each stage's best pass; detect = SsdMobilenetV1::detect (its input, net, decode, NMS); ssd_input = SsdMobilenetV1::input alone (included in detect); *_input = crops and input tensors of all faces; *_net = one batched forward + read-back",
            "ssd_input": ms(self.ssd_input / n),
            "detect": ms(self.detect / n),
            "landmarks_input": ms(self.landmarks_input / n),
            "landmarks_net": ms(self.landmarks_net / n),
            "descriptors_input": ms(self.descriptors_input / n),
            "descriptors_net": ms(self.descriptors_net / n),
            "sum": ms(self.sum() / n),
        })
    }
}

fn weights(model_dir: &Path, name: &str) -> TfjsWeights {
    let p: PathBuf = model_dir.join(format!("{name}-weights_manifest.json"));
    TfjsWeights::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

impl<B: Backend> Nets<B> {
    fn load(model_dir: &Path, device: &B::Device) -> Self {
        Nets {
            ssd: SsdMobilenetV1::load(&weights(model_dir, "ssd_mobilenetv1_model"), device)
                .expect("ssd"),
            landmarks: FaceLandmark68::load(&weights(model_dir, "face_landmark_68_model"), device)
                .expect("landmarks"),
            recognition: FaceRecognition::load(
                &weights(model_dir, "face_recognition_model"),
                device,
            )
            .expect("recognition"),
            device: device.clone(),
        }
    }

    /// The steps of [`FaceApi::analyze`] (SSD, defaults), timed one by one.
    fn stages(&self, img: RgbView<'_>) -> (Vec<Face>, StageTimes) {
        let mut t = StageTimes::default();
        let s = Instant::now();
        std::hint::black_box(SsdMobilenetV1::<B>::input(img, &self.device));
        t.ssd_input = s.elapsed().as_secs_f64();

        let s = Instant::now();
        let detections = self.ssd.detect(img, 0.5, 100);
        t.detect = s.elapsed().as_secs_f64();

        let s = Instant::now();
        let crops: Vec<(usize, PixelRect)> = detections
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                clip_at_image_borders([d.x, d.y, d.width, d.height], img).map(|r| (i, r))
            })
            .collect();
        let mut faces: Vec<Face> = detections
            .into_iter()
            .map(|detection| Face {
                detection,
                landmarks: None,
                aligned_crop: None,
                descriptor: None,
            })
            .collect();
        if crops.is_empty() {
            return (faces, t);
        }
        let input = Tensor::cat(
            crops
                .iter()
                .map(|&(_, r)| FaceLandmark68::<B>::input(view(&crop(img, r), r), &self.device))
                .collect(),
            0,
        );
        t.landmarks_input = s.elapsed().as_secs_f64();
        let s = Instant::now();
        let raw: Vec<f32> = self
            .landmarks
            .forward(input)
            .into_data()
            .to_vec()
            .expect("f32");
        t.landmarks_net = s.elapsed().as_secs_f64();

        let s = Instant::now();
        for (&(i, rect), out) in crops.iter().zip(raw.chunks_exact(136)) {
            let d = faces[i].detection;
            faces[i].landmarks = Some(FaceLandmark68::<B>::points(out, rect, (d.x, d.y)));
        }
        let aligned: Vec<(usize, PixelRect)> = crops
            .iter()
            .filter_map(|&(i, rect)| {
                let r = align_dlib(faces[i].landmarks.as_ref()?, (rect.width, rect.height));
                clip_at_image_borders(r, img).map(|c| (i, c))
            })
            .collect();
        if aligned.is_empty() {
            return (faces, t);
        }
        let input = Tensor::cat(
            aligned
                .iter()
                .map(|&(_, r)| FaceRecognition::<B>::input(view(&crop(img, r), r), &self.device))
                .collect(),
            0,
        );
        t.descriptors_input = s.elapsed().as_secs_f64();
        let s = Instant::now();
        let raw: Vec<f32> = self
            .recognition
            .forward(input)
            .into_data()
            .to_vec()
            .expect("f32");
        t.descriptors_net = s.elapsed().as_secs_f64();
        for (&(i, rect), out) in aligned.iter().zip(raw.chunks_exact(128)) {
            faces[i].aligned_crop = Some(rect);
            faces[i].descriptor = Some(out.to_vec());
        }
        (faces, t)
    }
}

fn view(data: &[u8], r: PixelRect) -> RgbView<'_> {
    RgbView {
        width: r.width,
        height: r.height,
        data,
    }
}

/// The MobileNetV1 backbone of the SSD detector on random data, as `ssd_mobilenetv1.rs` runs it
/// (TF 'same' padding as an explicit zero pad, then an unpadded convolution): seconds spent in
/// `[pad, depthwise 3×3, pointwise 1×1 + ReLU6]`.
fn backbone_ops<B: Backend>(device: &B::Device) -> [f64; 3] {
    let rand =
        |shape: [usize; 4]| Tensor::<B, 4>::random(shape, Distribution::Uniform(-0.1, 0.1), device);
    let bias = |c: usize| Tensor::<B, 1>::random([c], Distribution::Uniform(-0.1, 0.1), device);
    let sync = |x: &Tensor<B, 4>| {
        let _ = B::sync(device);
        x.dims()
    };
    // (channels in, channels out, depthwise stride) of pairs 1..=13.
    let pairs = [
        (32, 64, 1),
        (64, 128, 2),
        (128, 128, 1),
        (128, 256, 2),
        (256, 256, 1),
        (256, 512, 2),
        (512, 512, 1),
        (512, 512, 1),
        (512, 512, 1),
        (512, 512, 1),
        (512, 512, 1),
        (512, 1024, 2),
        (1024, 1024, 1),
    ];
    let mut t = [0f64; 3];
    let mut x = rand([1, 32, 256, 256]); // conv0's output
    for (cin, cout, stride) in pairs {
        let dw = rand([cin, 1, 3, 3]);
        let pw = rand([cout, cin, 1, 1]);
        let (b_dw, b_pw) = (bias(cin), bias(cout));
        sync(&x);

        let s = Instant::now();
        let [_, _, h, w] = x.dims();
        let ((top, bottom), (left, right)) = (same_pad(h, stride), same_pad(w, stride));
        let padded = x.pad((left, right, top, bottom), PadMode::Constant(0.0));
        sync(&padded);
        t[0] += s.elapsed().as_secs_f64();

        let s = Instant::now();
        let y = conv2d(
            padded,
            dw,
            Some(b_dw),
            ConvOptions::new([stride, stride], [0, 0], [1, 1], cin),
        )
        .clamp(0.0, 6.0);
        sync(&y);
        t[1] += s.elapsed().as_secs_f64();

        let s = Instant::now();
        x = conv2d(
            y,
            pw,
            Some(b_pw),
            ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        )
        .clamp(0.0, 6.0);
        sync(&x);
        t[2] += s.elapsed().as_secs_f64();
    }
    t
}

/// TF 'same' padding of a 3×3 window (as `face_api/layers.rs`).
fn same_pad(n: usize, stride: usize) -> (usize, usize) {
    let out = n.div_ceil(stride);
    let total = ((out - 1) * stride + 3).saturating_sub(n);
    (total / 2, total - total / 2)
}
