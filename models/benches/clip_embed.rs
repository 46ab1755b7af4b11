//! Time of CLIP image and text embeddings per item at ViT-B/32 size (random weights; the speed
//! does not depend on the values) on the default CPU backend (flex).
//!
//! `cargo bench -p idforge-models --bench clip_embed -- [--rounds N] [--model PRESET]` prints
//! one JSON line: ms per image (224 px preprocessing, from a 640×427 photo, included and
//! excluded), ms per text (77 tokens, tokenization excluded), each at batch 1 and per item at
//! batch 8, the best of N timed rounds (default 5) after a warm-up. `--features flex-rayon`
//! lets flex use rayon's pool (it is single-threaded without).
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it is a smoke test: one image and
//! one text through the full-size model.

use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::Tensor;
use idforge_core::bench::{BenchArgs, cpu_model, loadavg};
use idforge_models::clip::{Clip, ClipConfig, ClipPreprocess, Convention};
use idforge_models::face_api::preprocess::RgbView;

type B = Flex;

fn best_ms(rounds: usize, items: usize, mut f: impl FnMut()) -> f64 {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3 / items as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let args = BenchArgs::from_env();
    let rounds: usize = args
        .value("--rounds")
        .map_or(5, |v| v.parse().expect("--rounds N"));
    let name = args.value("--model").unwrap_or_else(|| "ViT-B-32".into());
    let config = ClipConfig::preset(&name).expect("a preset name");
    let device = Default::default();
    let model: Clip<B> = config.init(&device);
    let size = config.vision.image_size;
    let preprocess = ClipPreprocess::new(size, Convention::HuggingFace);
    // A deterministic 640×427 "photo" (a gradient with texture), the size of a typical input.
    let (w, h) = (640usize, 427usize);
    let photo: Vec<u8> = (0..w * h * 3)
        .map(|i| ((i % (w * 3)) / 3 * 255 / w + (i / (w * 3)) % 37) as u8)
        .collect();
    let view = RgbView {
        width: w,
        height: h,
        data: &photo,
    };
    let pixels = |n: usize| preprocess.tensor::<B>(&vec![view; n], &device);
    let ids = |n: usize| {
        let mut row = vec![49406u32];
        row.extend((0..75).map(|i| 320 + i as u32));
        row.push(49407);
        vec![row; n]
    };
    let image_once = |n: usize| {
        let e = model.encode_image(pixels(n));
        assert_eq!(e.dims(), [n, config.vision.projection_dim.unwrap()]);
    };
    let text_once = |n: usize| {
        let e = model.encode_text(&ids(n), &device);
        assert_eq!(e.dims(), [n, config.text.projection_dim.unwrap()]);
    };
    image_once(1);
    text_once(1);
    if !args.bench {
        return;
    }
    let x1 = pixels(1);
    let x8 = pixels(8);
    let vision_only = |x: &Tensor<B, 4>| {
        let _ = model.encode_image(x.clone()).into_data();
    };
    let report = [
        (
            "ms_per_image_with_preprocessing",
            best_ms(rounds, 1, || image_once(1)),
        ),
        ("ms_per_image", best_ms(rounds, 1, || vision_only(&x1))),
        (
            "ms_per_image_batch8",
            best_ms(rounds, 8, || vision_only(&x8)),
        ),
        (
            "ms_preprocessing",
            best_ms(rounds, 1, || {
                let _ = preprocess.pixels(view);
            }),
        ),
        ("ms_per_text", best_ms(rounds, 1, || text_once(1))),
        ("ms_per_text_batch8", best_ms(rounds, 8, || text_once(8))),
    ];
    let fields: Vec<String> = report
        .iter()
        .map(|(k, v)| format!("\"{k}\":{v:.2}"))
        .collect();
    println!(
        "{{\"model\":\"clip-{}\",\"backend\":\"flex\",\"rounds\":{rounds},{},\"cpu\":{:?},\"loadavg\":{}}}",
        name.to_ascii_lowercase(),
        fields.join(","),
        cpu_model().unwrap_or_default(),
        loadavg().map_or("null".into(), |l| format!("{l:.2}")),
    );
}
