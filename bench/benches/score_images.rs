//! Images/s of the benchmark's per-image scoring (`ScoringModels::features`: face detection,
//! landmarks and embedding, and optionally CLIP ViT-B/32, DINO ViT-S/16 and the FID
//! Inception-v3), on one thread and on every core, on 512 × 512 crops of face-api's sample
//! photographs; and the set-level metrics from features (FID, KID, IS, CMMD) at benchmark sizes.
//!
//! `cargo bench -p idforge-bench --bench score_images` prints one JSON line per measurement.
//! CLIP, DINO and Inception have random weights at full size (their speed does not depend on
//! the values). Without `--bench` (as `cargo test --all-targets` runs it) it scores one image.

use std::time::Instant;

use burn::backend::Flex;
use idforge_bench::score::ScoringModels;
use idforge_bench::stats::Features;
use idforge_core::bench::{BenchArgs, cpu_model, loadavg};
use idforge_models::clip::{ClipCheckpoint, ClipConfig};
use idforge_models::dino::{DinoConfig, DinoEmbedder, ImageProcessor};
use idforge_models::face_api::Detector;
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::face_embedder::FaceEmbedder;
use idforge_models::inception::InceptionConfig;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

fn main() {
    let args = BenchArgs::from_env();
    let face_api = idforge_core::cache::face_api_dir_if_fetched()
        .expect("the face-api package is not in the asset cache: run `make assets`");
    let device = Default::default();
    let faces =
        FaceEmbedder::<Flex>::load(&face_api.join("model"), Detector::default(), None, &device)
            .unwrap();
    let images: Vec<image::RgbImage> = ["sample1.jpg", "sample2.jpg", "sample3.jpg", "sample4.jpg"]
        .iter()
        .map(|f| {
            let img = image::open(face_api.join("demo").join(f))
                .unwrap()
                .into_rgb8();
            let side = img.width().min(img.height());
            let crop = image::imageops::crop_imm(&img, 0, 0, side, side).to_image();
            image::imageops::resize(&crop, 512, 512, image::imageops::FilterType::Triangle)
        })
        .collect();
    fn view(img: &image::RgbImage) -> RgbView<'_> {
        RgbView {
            width: img.width() as usize,
            height: img.height() as usize,
            data: img.as_raw(),
        }
    }
    let face_only = ScoringModels {
        faces,
        clip: None,
        dino: None,
        inception: None,
    };
    let f = face_only.features(view(&images[0]));
    assert!(f.face.is_some(), "sample1 has faces");
    if !args.bench {
        return;
    }
    let machine = format!(
        "\"cores\":{},\"cpu\":{:?},\"load\":{:.2}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model().unwrap_or_default(),
        loadavg().unwrap_or(-1.0)
    );
    let rounds: usize = args
        .value("--rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let time = |name: &str, models: &ScoringModels<Flex>, rounds: usize| {
        for threads in [1, 0] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let n = pool.current_num_threads();
            let t = Instant::now();
            pool.install(|| {
                (0..rounds).into_par_iter().for_each(|i| {
                    std::hint::black_box(models.features(view(&images[i % images.len()])));
                })
            });
            let s = t.elapsed().as_secs_f64();
            println!(
                "{{\"measure\":\"score_features\",\"metrics\":{name:?},\"threads\":{n},\"images_per_s\":{:.2},{machine}}}",
                rounds as f64 / s
            );
        }
    };
    time("face", &face_only, rounds);

    let clip_config = ClipConfig::preset("ViT-B-32").unwrap();
    let all = ScoringModels {
        faces: face_only.faces,
        clip: Some(ClipCheckpoint::random(&clip_config, &device)),
        dino: Some((
            DinoEmbedder {
                model: DinoConfig::vit_s16().init(&device),
                processor: ImageProcessor::dino_vits16(),
            },
            "random".into(),
        )),
        inception: None,
    }
    .with_inception(InceptionConfig::fid().init(&device), "random".into());
    time("face+clip+dino+inception", &all, rounds / 2);

    // Set-level metrics from features, at the size of one idforge-v1 set and method
    // (20 identities × 42 prompts × 5 seeds = 4200 images) against 20 references.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut matrix = |n: usize, d: usize| {
        let data: Vec<f32> = (0..n * d).map(|_| rng.random::<f32>()).collect();
        Features { n, dim: d, data }
    };
    let generated = matrix(4200, 2048);
    let references = matrix(20, 2048);
    let logits = matrix(4200, 1008);
    let clip_gen = matrix(4200, 512);
    let clip_ref = matrix(20, 512);
    let set = |name: &str, f: &dyn Fn() -> f64| {
        let t = Instant::now();
        let v = f();
        println!(
            "{{\"measure\":\"set_metric\",\"metric\":{name:?},\"generated\":4200,\"references\":20,\"ms\":{:.1},\"value\":{v:.4},{machine}}}",
            t.elapsed().as_secs_f64() * 1e3
        );
    };
    set("fid", &|| {
        idforge_bench::stats::frechet::fid(&generated, &references).unwrap()
    });
    set("kid", &|| {
        idforge_bench::stats::kid::kid(&generated, &references, &Default::default()).unwrap()
    });
    set("is", &|| {
        idforge_bench::stats::inception_score::inception_score(&logits, 10)
            .unwrap()
            .0
    });
    set("cmmd", &|| {
        idforge_bench::stats::cmmd::cmmd(&clip_gen, &clip_ref).unwrap()
    });
}
