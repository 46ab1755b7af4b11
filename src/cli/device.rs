//! `idforge device`: which burn backend this build uses, and a matmul to prove it works.

use idforge_core::limits::Count;
use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::{Distribution, Tensor};
use clap::Args;

/// The tensor backend of this build: `flex` on the CPU, CUDA with the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub type Backend = burn::backend::Flex;
/// The tensor backend of this build: `flex` on the CPU, CUDA with the `cuda` feature.
#[cfg(feature = "cuda")]
pub type Backend = burn::backend::Cuda;

/// `n` data-parallel devices: GPUs 0..n on CUDA; on the CPU the one device n times (a thread
/// each, the CPU backend being single-threaded by itself).
pub fn devices(n: usize) -> Vec<burn::tensor::Device<Backend>> {
    #[cfg(feature = "cuda")]
    {
        (0..n.max(1))
            .map(burn::backend::cuda::CudaDevice::new)
            .collect()
    }
    #[cfg(not(feature = "cuda"))]
    {
        vec![Default::default(); n.max(1)]
    }
}

/// The machine a measured cost was measured on: the CPU model, its threads and the backend,
/// e.g. `AMD EPYC 7763, 2 threads (burn flex, CPU)`.
pub fn machine() -> String {
    let cpu = idforge_core::bench::cpu_model().unwrap_or_else(|| std::env::consts::ARCH.into());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let backend = if cfg!(feature = "cuda") {
        "burn cuda"
    } else {
        "burn flex, CPU"
    };
    format!("{cpu}, {threads} threads ({backend})")
}

#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Side of the square matrices multiplied (1 to 8192).
    #[arg(long, default_value = "512")]
    size: Count<1, 8192>,
    /// Timed repetitions after one warm-up (1 to 10000).
    #[arg(long, default_value = "10")]
    reps: Count<1, 10_000>,
}

pub fn run(args: DeviceArgs) -> anyhow::Result<ExitCode> {
    use burn::tensor::backend::Backend as _;
    let device = Default::default();
    let n = args.size.usize();
    let a = Tensor::<Backend, 2>::random([n, n], Distribution::Normal(0.0, 1.0), &device);
    let b = Tensor::<Backend, 2>::random([n, n], Distribution::Normal(0.0, 1.0), &device);
    // Warm-up (kernel compilation on CUDA), then check the result against a scalar reference.
    let c = a.clone().matmul(b.clone());
    let row: Vec<f32> = a.clone().slice([0..1, 0..n]).into_data().to_vec()?;
    let col: Vec<f32> = b.clone().slice([0..n, 0..1]).into_data().to_vec()?;
    let want: f32 = row.iter().zip(&col).map(|(x, y)| x * y).sum();
    let got: f32 = c.slice([0..1, 0..1]).into_scalar();
    let rel = ((got - want) / want.abs().max(1.0)).abs();
    anyhow::ensure!(
        rel < 1e-3,
        "matmul result is wrong: c[0,0] = {got}, expected {want}"
    );
    Backend::sync(&device)?;
    let start = Instant::now();
    for _ in 0..args.reps.get() {
        let _ = a.clone().matmul(b.clone());
    }
    Backend::sync(&device)?;
    let secs = start.elapsed().as_secs_f64() / args.reps.get() as f64;
    let gflops = 2.0 * (n as f64).powi(3) / secs / 1e9;
    println!("backend: {}", Backend::name(&device));
    println!(
        "matmul {n}×{n}×{n}: {:.2} ms, {gflops:.1} GFLOP/s (f32), c[0,0] within {rel:.1e} of the reference",
        secs * 1e3
    );
    Ok(ExitCode::SUCCESS)
}
