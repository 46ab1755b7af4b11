//! Time of one image embedding by DINO ViT-S/16 (224 × 224 input, after its processor) and by
//! the full-width FID Inception-v3 (299 × 299, clean-fid preprocessing included), random
//! weights (the speed does not depend on the values), on the default CPU backend.
//!
//! `cargo bench -p idforge-models --bench dino_inception_embed` prints one JSON line per
//! network. Without the `--bench` argument (as `cargo test --all-targets` runs it) it does a
//! single embedding of each.

use std::time::Instant;

use burn::backend::Flex;
use idforge_models::dino::{DinoConfig, ImageProcessor};
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::inception::{FidPreprocess, InceptionConfig};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let device = Default::default();
    // A 512 × 384 photo-sized input: both preprocessings resize it.
    let (w, h) = (512, 384);
    let pixels: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
    let image = RgbView {
        width: w,
        height: h,
        data: &pixels,
    };

    let dino = DinoConfig::vit_s16().init::<Flex>(&device);
    let processor = ImageProcessor::dino_vits16();
    assert_eq!(dino.embed(image, &processor).len(), 384);
    let inception = InceptionConfig::fid().init::<Flex>(&device);
    let (pool3, logits) = inception.features(image, FidPreprocess::Clean);
    assert_eq!((pool3.len(), logits.len()), (2048, 1008));
    if !full {
        return;
    }
    let rounds = 5;
    let t = Instant::now();
    for _ in 0..rounds {
        assert_eq!(dino.embed(image, &processor).len(), 384);
    }
    println!(
        "{{\"model\":\"dino_vits16\",\"backend\":\"flex\",\"ms_per_image\":{:.1}}}",
        t.elapsed().as_secs_f64() * 1e3 / f64::from(rounds)
    );
    let t = Instant::now();
    for _ in 0..rounds {
        assert_eq!(
            inception.features(image, FidPreprocess::Clean).0.len(),
            2048
        );
    }
    println!(
        "{{\"model\":\"fid_inception_v3\",\"backend\":\"flex\",\"ms_per_image\":{:.1}}}",
        t.elapsed().as_secs_f64() * 1e3 / f64::from(rounds)
    );
}
