//! idforge's side of `tools/cpu-speed/run`: the time of one forward of a big network at full
//! size with random weights (the speed does not depend on the values), on the tensor the
//! network takes (preprocessing excluded), so that the PyTorch side times the same work.
//!
//! `cargo bench -p idforge-diffusion --features flex-rayon --bench cpu_speed -- --net NET
//! [--latent 32] [--batch B] [--rounds 3]` prints one JSON line with the best of N timed rounds
//! after a warm-up (`ms`; `cpu_ms`: the least CPU time of a round, all threads). NET is `unet`
//! (SD1.5, `batch` × 4 × `latent`² latents, 77 context tokens,
//! default batch 2), `clip-image` / `clip-text` (ViT-L/14's towers: 224² pixels / 77 tokens),
//! `dino` (ViT-S/16, 224²) or `inception` (FID InceptionV3, 299²), default batch 1. With
//! `flex-rayon` the thread count is rayon's (`RAYON_NUM_THREADS`).
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it only checks its arguments.

use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use idforge_core::bench::{BenchArgs, cpu_model, cpu_seconds, loadavg};
use idforge_diffusion::{UNet, UNetConfig, UNetInput};
use idforge_models::clip::ClipConfig;
use idforge_models::dino::DinoConfig;
use idforge_models::inception::InceptionConfig;

type B = Flex;

/// Best of `rounds` timed calls after one warm-up, in ms: wall time, and CPU time (user +
/// system, all threads; what a loaded machine distorts least).
fn best_ms(rounds: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    (0..rounds)
        .map(|_| {
            let (t, c) = (Instant::now(), cpu_seconds().unwrap_or(0.0));
            f();
            let cpu = (cpu_seconds().unwrap_or(0.0) - c) * 1e3;
            (t.elapsed().as_secs_f64() * 1e3, cpu)
        })
        .fold((f64::INFINITY, f64::INFINITY), |(w, c), (w2, c2)| {
            (w.min(w2), c.min(c2))
        })
}

fn main() {
    let args = BenchArgs::from_env();
    let get = |flag: &str, default: usize| {
        args.value(flag).map_or(default, |v| {
            v.parse().unwrap_or_else(|_| panic!("{flag} N"))
        })
    };
    let net = args.value("--net").unwrap_or_else(|| "unet".into());
    let batch = get("--batch", if net == "unet" { 2 } else { 1 });
    let (latent, rounds) = (get("--latent", 32), get("--rounds", 3));
    if !args.bench {
        return;
    }
    let device = Default::default();
    let normal = Distribution::Normal(0.0, 1.0);
    let (ms, cpu_ms) = match net.as_str() {
        "unet" => {
            let config = UNetConfig::sd15();
            let cross = config.levels()[0].cross_attention_dim;
            let unet = UNet::<B>::random(&config, &device);
            let input = UNetInput {
                sample: Tensor::random([batch, 4, latent, latent], normal, &device),
                timesteps: Tensor::from_floats([500.0], &device),
                context: Tensor::random([batch, 77, cross], normal, &device),
                added: None,
            };
            best_ms(rounds, || {
                let _ = unet.forward(&input).into_data();
            })
        }
        "clip-image" => {
            let clip = ClipConfig::vit_l_14().vision.init::<B>(&device);
            let x = Tensor::<B, 4>::random([batch, 3, 224, 224], normal, &device);
            best_ms(rounds, || {
                let _ = clip.forward(x.clone()).embeds.map(|e| e.into_data());
            })
        }
        "clip-text" => {
            let config = ClipConfig::vit_l_14().text;
            let clip = config.init::<B>(&device);
            // A 77-token sequence: start, words, end (the largest id, as OpenAI's end token).
            let vocab = config.vocab_size as i64;
            let ids: Vec<i64> = (0..batch * 77)
                .map(|i| match i % 77 {
                    0 => vocab - 2,
                    76 => vocab - 1,
                    j => (j as i64 * 131) % (vocab - 2),
                })
                .collect();
            let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch, 77]), &device);
            best_ms(rounds, || {
                let _ = clip.forward(ids.clone()).pooled.into_data();
            })
        }
        "dino" => {
            let dino = DinoConfig::vit_s16().init::<B>(&device);
            let x = Tensor::<B, 4>::random([batch, 3, 224, 224], normal, &device);
            best_ms(rounds, || {
                let _ = dino.forward(x.clone()).into_data();
            })
        }
        "inception" => {
            let inception = InceptionConfig::fid().init::<B>(&device);
            let x = Tensor::<B, 4>::random([batch, 3, 299, 299], normal, &device);
            best_ms(rounds, || {
                let _ = inception.forward(x.clone()).logits.into_data();
            })
        }
        other => panic!("--net unet|clip-image|clip-text|dino|inception, not {other}"),
    };
    println!(
        "{{\"net\":\"{net}\",\"backend\":\"flex\",\"latent\":{latent},\"batch\":{batch},\
         \"rounds\":{rounds},\"ms\":{ms:.1},\"cpu_ms\":{cpu_ms:.0},\"rayon_threads\":{},\"cpu\":{:?},\"loadavg\":{}}}",
        std::env::var("RAYON_NUM_THREADS").map_or("null".into(), |t| format!("{t:?}")),
        cpu_model().unwrap_or_default(),
        loadavg().map_or("null".into(), |l| format!("{l:.2}")),
    );
}
