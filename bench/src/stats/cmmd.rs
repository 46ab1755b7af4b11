//! CMMD (Jayasumana et al., "Rethinking FID", CVPR 2024): the maximum mean discrepancy between
//! CLIP embeddings of two image sets with a Gaussian RBF kernel, as google-research/cmmd's
//! `distance.py` computes it: σ = 10, scale 1000, the biased (minimum-variance) estimator
//! `1000 · (mean k(x, x') + mean k(y, y') − 2 mean k(x, y))`, diagonals included.
//!
//! The reference is JAX in float32 and expands `‖x − y‖² = ‖x‖² + ‖y‖² − 2 x·y`; here the
//! squared distance is summed directly, in f64. The three means are close to 1 and the
//! result is their small difference, so the precision matters: float32 loses about 1e-5 of it
//! (see the fixture's `cmmd_f32`).

use rayon::prelude::*;

use super::features::{Features, same_dim};
use crate::error::BenchError;

/// The RBF bandwidth of `distance.py`.
pub const SIGMA: f64 = 10.0;
/// The factor that makes the values readable (`distance.py`'s `_SCALE`).
pub const SCALE: f64 = 1000.0;

/// CMMD between two sets of (already L2-normalised, as the reference's CLIP embedder returns
/// them) embeddings.
///
/// # Errors
/// [`BenchError::Metric`] if a set is empty or the dimensions differ.
pub fn cmmd(a: &Features, b: &Features) -> Result<f64, BenchError> {
    same_dim("CMMD", a, b)?;
    if a.n == 0 || b.n == 0 {
        return Err(BenchError::Metric(format!(
            "CMMD: sets of {} and {} embeddings; both need at least one",
            a.n, b.n
        )));
    }
    let k_xx = mean_kernel(a, a);
    let k_yy = mean_kernel(b, b);
    let k_xy = mean_kernel(a, b);
    Ok(SCALE * (k_xx + k_yy - 2.0 * k_xy))
}

/// CMMD of resamples of the first set against a fixed second set, without recomputing kernels:
/// the mean of `k(x, x')` over a resample with counts `c` is `cᵀ K c / n²`, and the mean of
/// `k(x, y)` is `c · r / n` with `r` the row means of `K_xy`. Bootstrapping CMMD over thousands
/// of generations then costs one `n × n` kernel instead of one per resample.
pub struct CmmdResampler {
    n: usize,
    /// `K_xx`, row-major, f32 to halve the memory (the kernel is in (0, 1]).
    k_xx: Vec<f32>,
    /// Row means of `K_xy`.
    k_xy_rows: Vec<f64>,
    k_yy: f64,
}

impl CmmdResampler {
    /// Most rows of the first set this keeps a kernel for (256 MiB).
    pub const MAX_ROWS: usize = 8192;

    /// Precomputes the kernels; `None` when `a` has more than [`Self::MAX_ROWS`] rows.
    ///
    /// # Errors
    /// As [`cmmd`].
    pub fn new(a: &Features, b: &Features) -> Result<Option<Self>, BenchError> {
        same_dim("CMMD", a, b)?;
        if a.n == 0 || b.n == 0 {
            return Err(BenchError::Metric("CMMD: an empty set".into()));
        }
        if a.n > Self::MAX_ROWS {
            return Ok(None);
        }
        let k_xx: Vec<f32> = kernel_blocks(a, a, |_, k| {
            k.into_iter().map(|v| v as f32).collect::<Vec<_>>()
        })
        .concat();
        let k_xy_rows: Vec<f64> = kernel_blocks(a, b, |rows, k| {
            (0..rows.len())
                .map(|r| k[r * b.n..(r + 1) * b.n].iter().sum::<f64>() / b.n as f64)
                .collect::<Vec<_>>()
        })
        .concat();
        Ok(Some(CmmdResampler {
            n: a.n,
            k_xx,
            k_xy_rows,
            k_yy: mean_kernel(b, b),
        }))
    }

    /// CMMD of the first set's rows `indices` (with repeats) against the second set.
    pub fn cmmd(&self, indices: &[usize]) -> f64 {
        let mut counts = vec![0f64; self.n];
        for &i in indices {
            counts[i] += 1.0;
        }
        let m = indices.len() as f64;
        let mut xx = 0f64;
        for (i, &ci) in counts.iter().enumerate() {
            if ci == 0.0 {
                continue;
            }
            let row = &self.k_xx[i * self.n..(i + 1) * self.n];
            let dot: f64 = row
                .iter()
                .zip(&counts)
                .filter(|(_, c)| **c != 0.0)
                .map(|(&k, &c)| f64::from(k) * c)
                .sum();
            xx += ci * dot;
        }
        let xy: f64 = counts.iter().zip(&self.k_xy_rows).map(|(c, r)| c * r).sum();
        SCALE * (xx / (m * m) + self.k_yy - 2.0 * xy / m)
    }
}

/// Rows of `a` per parallel task (one matrix product each).
const ROW_BLOCK: usize = 256;

/// The kernel values of each row block of `a` against every row of `b` (row-major), in
/// parallel and in block order: `exp(−γ (‖x‖² + ‖y‖² − 2 x·y))`, the expansion the reference
/// uses, with the dot products as one f64 matrix product per block (nalgebra's GEMM picks
/// AVX/FMA at run time); in f64 the cancellation costs ~1e-16 of a squared distance.
fn kernel_blocks<T: Send>(
    a: &Features,
    b: &Features,
    per_block: impl Fn(std::ops::Range<usize>, Vec<f64>) -> T + Sync,
) -> Vec<T> {
    let gamma = 1.0 / (2.0 * SIGMA * SIGMA);
    let bt = b.to_matrix().transpose();
    let norms_b: Vec<f64> = (0..b.n).map(|j| bt.column(j).norm_squared()).collect();
    (0..a.n.div_ceil(ROW_BLOCK))
        .into_par_iter()
        .map(|blk| {
            let rows = blk * ROW_BLOCK..((blk + 1) * ROW_BLOCK).min(a.n);
            let idx: Vec<usize> = rows.clone().collect();
            let am = a.select(&idx).to_matrix();
            let gram = &am * &bt;
            let mut k = vec![0f64; rows.len() * b.n];
            for r in 0..rows.len() {
                let na = am.row(r).norm_squared();
                for j in 0..b.n {
                    let d2 = (na + norms_b[j] - 2.0 * gram[(r, j)]).max(0.0);
                    k[r * b.n + j] = (-gamma * d2).exp();
                }
            }
            per_block(rows, k)
        })
        .collect()
}

/// Mean of `exp(−‖x − y‖² / (2σ²))` over all pairs; block sums added in block order
/// (deterministic).
fn mean_kernel(a: &Features, b: &Features) -> f64 {
    let sums = kernel_blocks(a, b, |_, k| k.iter().sum::<f64>());
    sums.iter().sum::<f64>() / (a.n * b.n) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(n: usize, dim: usize, phase: f64) -> Features {
        let rows: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                let v: Vec<f64> = (0..dim)
                    .map(|j| (i as f64 * 0.7 + j as f64 * 1.1 + phase).sin())
                    .collect();
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.iter().map(|x| (x / norm) as f32).collect()
            })
            .collect();
        Features::from_rows(&rows).unwrap()
    }

    #[test]
    fn the_resampler_equals_recomputing() {
        let a = unit(30, 16, 0.0);
        let b = unit(20, 16, 0.4);
        let r = CmmdResampler::new(&a, &b).unwrap().unwrap();
        let all: Vec<usize> = (0..30).collect();
        assert!((r.cmmd(&all) - cmmd(&a, &b).unwrap()).abs() < 1e-4);
        let idx = [3, 3, 7, 0, 29, 12, 12, 12, 5, 1];
        let direct = cmmd(&a.select(&idx), &b).unwrap();
        // K_xx is kept in f32: relative error ~1e-7 of means near 1, times the scale 1000.
        assert!(
            (r.cmmd(&idx) - direct).abs() < 1e-3,
            "{} vs {direct}",
            r.cmmd(&idx)
        );
    }

    #[test]
    fn zero_for_identical_sets_positive_otherwise() {
        let a = unit(10, 8, 0.0);
        assert!(cmmd(&a, &a).unwrap().abs() < 1e-12);
        let b = unit(12, 8, 1.0);
        let d = cmmd(&a, &b).unwrap();
        assert!(d > 0.0 && (d - cmmd(&b, &a).unwrap()).abs() < 1e-12);
    }

    #[test]
    fn one_pair_is_the_kernel_distance() {
        let a = Features::from_rows(&[vec![1.0, 0.0]]).unwrap();
        let b = Features::from_rows(&[vec![0.0, 1.0]]).unwrap();
        let want = SCALE * (2.0 - 2.0 * (-2.0 / 200.0f64).exp());
        assert!((cmmd(&a, &b).unwrap() - want).abs() < 1e-12);
    }

    #[test]
    fn empty_or_mismatched_sets_are_errors() {
        let a = unit(3, 4, 0.0);
        assert!(cmmd(&a, &Features::from_rows(&[]).unwrap()).is_err());
        assert!(cmmd(&a, &unit(3, 5, 0.0)).is_err());
    }
}
