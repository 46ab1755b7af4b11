//! Time of one UNet forward (the cost of a sampling step and of a training step's forward) at
//! Stable Diffusion 1.5 or SDXL size with random weights (the speed does not depend on the
//! values).
//!
//! `cargo bench -p idforge-diffusion --bench unet_forward -- [--sdxl] [--latent 32] [--batch 2]
//! [--rounds 3] [--adapter faceid|photomaker|split]` prints one JSON line: ms per forward (best of N timed rounds after a warm-up)
//! at `batch` × 4 × `latent`² latents, 77 text tokens (SDXL: 2048 wide, with the pooled
//! embedding and time ids). Batch 2 is one classifier-free-guided step; SD1.5 at 512 px is
//! `--latent 64`, SDXL at 1024 px `--sdxl --latent 128`. `--features flex-rayon` lets the CPU
//! backend use every core; `--features cuda` runs on CUDA, `--precision f16|bf16` in half
//! precision there (weights and activations in that type, as diffusers' `torch_dtype`).
//! `tools/diffusers-reference/time_unet.py` times diffusers' UNet on the same shapes;
//! `tools/gpu-check/` runs both on a GPU.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it is a smoke test: one forward of
//! the tiny fixture UNet.

use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use idforge_core::bench::{BenchArgs, cpu_model, loadavg};
use idforge_diffusion::adapters::ip_adapter::{IpAdapter, IpScale, ProjectionSpec};
use idforge_diffusion::adapters::lora::{Lora, LoraLayer};
use idforge_diffusion::adapters::split_prompt::{
    PartTokens, SplitConditioning, SplitPrompt, SplitScale,
};
use idforge_diffusion::nn::Init;
use idforge_diffusion::pipeline::Conditioning;
use idforge_diffusion::{AddedConditions, AttentionHook, NoHook, UNet, UNetConfig, UNetInput};

fn run<B: Backend>(args: &BenchArgs, backend: &str) {
    let device = B::Device::default();
    if !args.bench {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd/unet");
        let unet = UNet::<B>::load(&dir, &device).expect("tiny UNet");
        let out = unet.forward(&UNetInput {
            sample: Tensor::random([2, 4, 32, 32], Distribution::Normal(0.0, 1.0), &device),
            timesteps: Tensor::from_floats([500.0], &device),
            context: Tensor::random([2, 77, 8], Distribution::Normal(0.0, 1.0), &device),
            added: None,
        });
        assert_eq!(out.dims(), [2, 4, 32, 32]);
        return;
    }
    let get = |flag: &str, default: usize| {
        args.value(flag).map_or(default, |v| {
            v.parse().unwrap_or_else(|_| panic!("{flag} N"))
        })
    };
    let (latent, batch, rounds) = (get("--latent", 32), get("--batch", 2), get("--rounds", 3));
    let sdxl = std::env::args().any(|a| a == "--sdxl");
    let (model, config) = if sdxl {
        ("unet-sdxl", UNetConfig::sdxl())
    } else {
        ("unet-sd15", UNetConfig::sd15())
    };
    let cross = config.levels()[0].cross_attention_dim;
    let t0 = Instant::now();
    let unet = UNet::<B>::random(&config, &device);
    let init_s = t0.elapsed().as_secs_f64();
    let input = UNetInput {
        sample: Tensor::random(
            [batch, 4, latent, latent],
            Distribution::Normal(0.0, 1.0),
            &device,
        ),
        timesteps: Tensor::from_floats([500.0], &device),
        context: Tensor::random([batch, 77, cross], Distribution::Normal(0.0, 1.0), &device),
        // SDXL's `text_time` conditions: the pooled embedding (1280) and the six size ids.
        added: sdxl.then(|| AddedConditions {
            text_embeds: Tensor::random([batch, 1280], Distribution::Normal(0.0, 1.0), &device),
            time_ids: Tensor::from_floats([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]], &device)
                .repeat_dim(0, batch),
        }),
    };
    let time = |hook: &dyn AttentionHook<B>| {
        let once = || {
            // Reading one value back waits for the device (CUDA runs asynchronously).
            let _ = unet
                .forward_with(&input, hook)
                .slice([0..1, 0..1, 0..1, 0..1])
                .into_data();
        };
        once();
        (0..rounds)
            .map(|_| {
                let t = Instant::now();
                once();
                t.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::INFINITY, f64::min)
    };
    let best = time(&NoHook);
    // `--adapter KIND`: an adapter's cost per step beside the base UNet, random weights.
    // `faceid`: IP-Adapter-FaceID (4 tokens on every attn2, its rank-128 LoRA on every attention
    // projection). `photomaker`: PhotoMaker's UNet LoRA (rank 64 on to_q/k/v/out of every
    // attention; its ID encoder runs once per image, not per step). `split`: the split-prompt
    // adapter (77 background and 77 body tokens on every attn2).
    let kind = args.value("--adapter");
    let random = |shape: [usize; 3]| Tensor::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let adapter = match kind.as_deref() {
        None => None,
        Some("faceid") => {
            let spec = ProjectionSpec::FaceId {
                id_dim: 512,
                mlp: 1024,
                tokens: 4,
                cross,
            };
            let adapter = IpAdapter::new(&Init::Random, spec, &unet, &device)
                .and_then(|a| a.with_random_lora(&unet, 128, &device))
                .expect("a random FaceID adapter fits the UNet");
            let hook = adapter.hook(random([batch, 4, cross]), IpScale::uniform(1.0));
            Some(time(&hook))
        }
        Some("photomaker") => {
            let mut layers = Vec::new();
            for l in unet.attention_layers() {
                let hidden = l.heads * l.head_dim;
                let kv_in = l.cross_attention_dim.unwrap_or(l.query_dim);
                for (proj, inp) in [
                    ("to_q", l.query_dim),
                    ("to_k", kv_in),
                    ("to_v", kv_in),
                    ("to_out.0", hidden),
                ] {
                    let out = if proj == "to_out.0" {
                        l.query_dim
                    } else {
                        hidden
                    };
                    let layer = LoraLayer::new(&Init::Random, "", inp, out, 64, &device)
                        .expect("a random LoRA layer");
                    layers.push((format!("{}.{proj}", l.name), layer));
                }
            }
            Some(time(&Lora::new(layers, 1.0)))
        }
        Some("split") => {
            let adapter = SplitPrompt::new_from_unet(&unet).expect("split-prompt layers");
            let prompts = SplitConditioning {
                cond: Conditioning {
                    context: input.context.clone(),
                    pooled: None,
                },
                uncond: None,
                parts: PartTokens {
                    background: random([batch, 77, cross]),
                    body: random([batch, 77, cross]),
                },
                uncond_parts: None,
            };
            let hook = adapter.hook(
                &prompts,
                SplitScale {
                    background: 1.0,
                    body: 1.0,
                },
            );
            Some(time(&hook))
        }
        Some(other) => panic!("--adapter faceid|photomaker|split, not {other}"),
    };
    let adapter_json = adapter.map_or(String::new(), |ms| {
        format!(
            ",\"adapter\":{:?},\"ms_with_adapter\":{ms:.1},\"adapter_overhead\":{:.3}",
            kind.as_deref().unwrap_or_default(),
            ms / best - 1.0
        )
    });
    println!(
        "{{\"model\":\"{model}\",\"backend\":\"{backend}\",\"latent\":{latent},\"batch\":{batch},\
         \"rounds\":{rounds},\"ms_per_forward\":{best:.1},\"init_s\":{init_s:.1}{adapter_json},\"cpu\":{:?},\"loadavg\":{}}}",
        cpu_model().unwrap_or_default(),
        loadavg().map_or("null".into(), |l| format!("{l:.2}")),
    );
}

fn main() {
    let args = BenchArgs::from_env();
    #[cfg(feature = "cuda")]
    {
        match args.value("--precision").as_deref() {
            Some("f16") => run::<burn::backend::Cuda<half::f16>>(&args, "cuda-f16"),
            Some("bf16") => run::<burn::backend::Cuda<half::bf16>>(&args, "cuda-bf16"),
            None | Some("f32") => run::<burn::backend::Cuda>(&args, "cuda-f32"),
            Some(other) => panic!("--precision f32|f16|bf16, not {other}"),
        }
    }
    #[cfg(not(feature = "cuda"))]
    run::<burn::backend::Flex>(&args, "flex")
}
