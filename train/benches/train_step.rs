//! Time and memory of one IP-Adapter-FaceID training step (forward, backward, AdamW over the
//! adapter and its LoRA) on a frozen UNet with random weights (the speed does not depend on
//! the values): the cost that decides how long `idforge train` runs.
//!
//! `cargo bench -p idforge-train --bench train_step -- [--sd15] [--latent 16] [--batch 2]
//! [--rounds 3] [--lora-rank 128] [--checkpointing] [--replicas 1]` prints one JSON line: ms per
//! step (best of N timed rounds after a warm-up), samples per second, the process's peak
//! resident memory and the machine. `--replicas R` runs R micro-batches per step spread over R
//! data-parallel replicas (threads of the CPU backend, which is single-threaded by itself).
//! Without `--sd15` the tiny fixture UNet trains. `tools/train-reference/time_step.py` times the
//! same step in PyTorch + diffusers (IP-Adapter's `tutorial_train_faceid.py`) on the same shapes;
//! `tools/cpu-speed/` style: run both back to back on an idle machine.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it is a smoke test: one step of the
//! tiny UNet.

use std::path::Path;
use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Tensor};
use idforge_core::bench::{BenchArgs, cpu_model, loadavg};
use idforge_diffusion::adapters::ip_adapter::{IpAdapter, ProjectionInput, ProjectionSpec};
use idforge_diffusion::nn::Init;
use idforge_diffusion::{DdpmSchedule, ScheduleConfig, UNet, UNetConfig};
use idforge_train::{
    AdamConfig, CheckpointedAutodiff, Decay, IpAdapterTrainer, IpBatch, LossConfig, LrSchedule,
    NoiseDraw, Optimizer, ParamGroup, StepConfig, Warmup, ip_layers_from_unet,
};

/// Peak resident memory of this process in MiB (`VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

struct Shape {
    sd15: bool,
    latent: usize,
    batch: usize,
    rounds: usize,
    rank: usize,
    replicas: usize,
}

fn run<A: AutodiffBackend>(
    args: &BenchArgs,
    shape: &Shape,
    backend: &str,
    devices: Vec<A::Device>,
) {
    let device = devices[0].clone();
    let t0 = Instant::now();
    let (model, unet) = if shape.sd15 {
        ("unet-sd15", UNet::<A>::random(&UNetConfig::sd15(), &device))
    } else {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffusion/tests/fixtures/tiny-sd/unet");
        (
            "tiny-sd",
            UNet::<A>::load(&dir, &device).expect("the tiny fixture UNet"),
        )
    };
    let cross = unet
        .attention_layers()
        .iter()
        .find_map(|l| l.cross_attention_dim)
        .expect("a cross-attention layer");
    let spec = ProjectionSpec::FaceId {
        id_dim: 512,
        mlp: 1024,
        tokens: 4,
        cross,
    };
    let adapter = IpAdapter::new(&Init::Random, spec, &unet, &device)
        .and_then(|a| a.with_random_lora(&unet, shape.rank, &device))
        .expect("a FaceID adapter");
    let adapter = ip_layers_from_unet(adapter, &unet).expect("to_k_ip from to_k");
    let init_s = t0.elapsed().as_secs_f64();
    let config = StepConfig {
        loss: LossConfig {
            noise_offset: 0.0,
            snr_gamma: None,
        },
        max_grad_norm: Some(1.0),
        lr: LrSchedule {
            warmup_steps: 0,
            warmup: Warmup::Persongen,
            decay: Decay::Constant,
        },
    };
    // IP-Adapter's FaceID script: one AdamW group at 1e-4 over the projection, the IP layers
    // and the LoRA.
    let optimizer =
        Optimizer::new(AdamConfig::adamw(), vec![ParamGroup::new("", 1e-4)]).expect("one group");
    let schedule = DdpmSchedule::new(&ScheduleConfig::default());
    let mut trainer =
        IpAdapterTrainer::new(unet, &adapter, schedule, optimizer, config).expect("a trainer");
    if shape.replicas > 1 {
        trainer = trainer.with_devices(devices.clone());
    }
    let b = shape.batch;
    let batch = || IpBatch::<A> {
        latents: Tensor::random(
            [b, 4, shape.latent, shape.latent],
            Distribution::Normal(0.0, 1.0),
            &device,
        ),
        draw: NoiseDraw {
            noise: Tensor::random(
                [b, 4, shape.latent, shape.latent],
                Distribution::Normal(0.0, 1.0),
                &device,
            ),
            offset_noise: None,
            timesteps: (0..b).map(|i| 100 + 300 * i % 1000).collect(),
        },
        context: Tensor::random([b, 77, cross], Distribution::Normal(0.0, 1.0), &device),
        references: ProjectionInput {
            image_embeds: None,
            hidden_states: None,
            id_embeds: Some(Tensor::random(
                [b, 512],
                Distribution::Normal(0.0, 1.0),
                &device,
            )),
        },
        face_boxes: None,
    };
    let mut adapter = adapter;
    let mut step = |adapter: IpAdapter<A>| {
        let t = Instant::now();
        let (adapter, report) = trainer
            .step(
                adapter,
                &(0..shape.replicas).map(|_| batch()).collect::<Vec<_>>(),
            )
            .expect("a step");
        assert!(report.loss.is_finite(), "the loss is {}", report.loss);
        (adapter, t.elapsed().as_secs_f64() * 1e3)
    };
    if !args.bench {
        let (_, ms) = step(adapter);
        assert!(ms > 0.0);
        return;
    }
    // Warm-up, then the best of the timed rounds.
    adapter = step(adapter).0;
    let mut best = f64::INFINITY;
    for _ in 0..shape.rounds {
        let (a, ms) = step(adapter);
        adapter = a;
        best = best.min(ms);
    }
    println!(
        "{}",
        serde_json::json!({
            "bench": "train_step",
            "method": "ip-adapter-faceid",
            "model": model,
            "backend": backend,
            "latent": shape.latent,
            "batch": b,
            "lora_rank": shape.rank,
            "replicas": shape.replicas,
            "samples_per_s": ((b * shape.replicas) as f64 / (best / 1e3) * 100.0).round() / 100.0,
            "ms_per_step": (best * 10.0).round() / 10.0,
            "peak_rss_mib": peak_rss_mib().map(|m| m.round()),
            "init_s": (init_s * 100.0).round() / 100.0,
            "rounds": shape.rounds,
            "threads": std::thread::available_parallelism().map(|n| n.get()).ok(),
            "cpu": cpu_model(),
            "load": loadavg(),
        })
    );
}

fn main() {
    let args = BenchArgs::from_env();
    let get = |flag: &str, default: usize| {
        args.value(flag).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{flag} takes a number, got `{v}`"))
        })
    };
    let has = |flag: &str| std::env::args().any(|a| a == flag);
    let shape = Shape {
        sd15: has("--sd15"),
        latent: get("--latent", 16),
        batch: get("--batch", 2),
        rounds: get("--rounds", 3),
        rank: get("--lora-rank", 128),
        replicas: get("--replicas", 1).max(1),
    };
    #[cfg(feature = "cuda")]
    {
        // One replica per GPU, as `idforge train --devices`.
        type Gpu = burn::backend::Cuda;
        let devices: Vec<_> = (0..shape.replicas)
            .map(burn::backend::cuda::CudaDevice::new)
            .collect();
        if has("--checkpointing") {
            run::<CheckpointedAutodiff<Gpu>>(&args, &shape, "cuda-f32+checkpointing", devices);
        } else {
            run::<Autodiff<Gpu>>(&args, &shape, "cuda-f32", devices);
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        // The CPU backend is one device: its replicas are threads.
        type Cpu = burn::backend::Flex;
        let devices = vec![Default::default(); shape.replicas];
        if has("--checkpointing") {
            run::<CheckpointedAutodiff<Cpu>>(&args, &shape, "flex+checkpointing", devices);
        } else {
            run::<Autodiff<Cpu>>(&args, &shape, "flex", devices);
        }
    }
}
