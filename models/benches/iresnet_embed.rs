//! Time of one 112×112 ArcFace-class embedding at full IResNet-50 width (random weights; the
//! speed does not depend on the values) on the default CPU backend.
//!
//! `cargo bench -p idforge-models --bench iresnet_embed` prints one JSON line. Without the
//! `--bench` argument (as `cargo test --all-targets` runs it) it does a single embedding.

use std::time::Instant;

use burn::backend::Flex;
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::iresnet::IResNetConfig;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let device = Default::default();
    let net = IResNetConfig::r50().init::<Flex>(&device);
    let pixels = vec![100u8; 112 * 112 * 3];
    let crop = RgbView {
        width: 112,
        height: 112,
        data: &pixels,
    };
    assert_eq!(net.embed(crop).len(), 512);
    if !full {
        return;
    }
    let rounds = 5;
    let t = Instant::now();
    for _ in 0..rounds {
        assert_eq!(net.embed(crop).len(), 512);
    }
    println!(
        "{{\"model\":\"iresnet50\",\"backend\":\"flex\",\"ms_per_embedding\":{:.1}}}",
        t.elapsed().as_secs_f64() * 1e3 / f64::from(rounds)
    );
}
