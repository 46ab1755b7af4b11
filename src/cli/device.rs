//! `idforge device`: which burn backend this build uses, and a matmul to prove it works.

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

#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Side of the square matrices multiplied.
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// Timed repetitions (after one warm-up).
    #[arg(long, default_value_t = 10)]
    reps: usize,
}

pub fn run(args: DeviceArgs) -> anyhow::Result<ExitCode> {
    use burn::tensor::backend::Backend as _;
    let device = Default::default();
    let n = args.size;
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
    for _ in 0..args.reps {
        let _ = a.clone().matmul(b.clone());
    }
    Backend::sync(&device)?;
    let secs = start.elapsed().as_secs_f64() / args.reps.max(1) as f64;
    let gflops = 2.0 * (n as f64).powi(3) / secs / 1e9;
    println!("backend: {}", Backend::name(&device));
    println!(
        "matmul {n}×{n}×{n}: {:.2} ms, {gflops:.1} GFLOP/s (f32), c[0,0] within {rel:.1e} of the reference",
        secs * 1e3
    );
    Ok(ExitCode::SUCCESS)
}
