//! The Fréchet distance between Gaussians fitted to two feature sets: FID on Inception pool3
//! features, FD-DINOv2 and the like on other extractors.
//!
//! Conventions are clean-fid's (`cleanfid/fid.py`, 0.1.35): `mu` the mean, `sigma`
//! `np.cov(rowvar=False)` (divisor N − 1), and
//! `‖μ1 − μ2‖² + Tr Σ1 + Tr Σ2 − 2 Tr sqrtm(Σ1 Σ2)`, all in f64.
//!
//! clean-fid takes `scipy.linalg.sqrtm` of the d × d product. Here the trace is computed
//! without it: with `A = (X1 − μ1) / sqrt(n1 − 1)` and `B` likewise, `Σ1 = AᵀA`, `Σ2 = BᵀB`, and
//! `Tr sqrtm(Σ1 Σ2)` is the sum of the singular values of the n1 × n2 matrix `A Bᵀ` (the
//! non-zero eigenvalues of `Σ1 Σ2 = Aᵀ (A Bᵀ) B` are those of `(A Bᵀ)(A Bᵀ)ᵀ`). When a set has
//! fewer rows than the dimension (d = 2048 against tens or hundreds of images) that is an
//! eigen-decomposition of an n × n matrix instead of two d × d ones, and it is exact to rounding,
//! where scipy's Schur-based square root of the singular d × d product is not (1e-6 relative
//! on 40 × 2048 sets: see `bench/tests/metric_parity.rs`). Otherwise the trace is
//! `Tr sqrt(Σ1^½ Σ2 Σ1^½)` from two symmetric eigen-decompositions of d × d matrices.

use nalgebra::{DMatrix, DVector};

use super::features::{Features, same_dim};
use crate::error::BenchError;

/// FID (or any Fréchet distance) between the Gaussians fitted to `a` and `b`.
///
/// Takes the n1 × n2 route when `min(n1, n2) < dim`, the d × d one otherwise (module docs).
///
/// # Errors
/// [`BenchError::Metric`] if the dimensions differ or a set has fewer than 2 rows (no
/// covariance).
pub fn fid(a: &Features, b: &Features) -> Result<f64, BenchError> {
    same_dim("FID", a, b)?;
    for (name, f) in [("first", a), ("second", b)] {
        if f.n < 2 {
            return Err(BenchError::Metric(format!(
                "FID: the {name} set has {} feature vector(s); a covariance needs at least 2",
                f.n
            )));
        }
    }
    let (mu1, ca) = centred(a);
    let (mu2, cb) = centred(b);
    let tr_covmean = if a.n.min(b.n) < a.dim {
        trace_sqrt_small(&ca, &cb)
    } else {
        trace_sqrt_large(&(ca.transpose() * &ca), &(cb.transpose() * &cb))
    };
    let diff = (&mu1 - &mu2).norm_squared();
    Ok(diff + ca.norm_squared() + cb.norm_squared() - 2.0 * tr_covmean)
}

/// clean-fid's `frechet_distance(mu1, sigma1, mu2, sigma2)` on precomputed statistics (for
/// reference statistics stored as mean and covariance). `sigma1`, `sigma2` are d × d,
/// row-major; the trace term takes the d × d route.
///
/// # Errors
/// [`BenchError::Metric`] if the lengths do not make a d-vector and a d × d matrix on each side.
pub fn frechet_distance_from_stats(
    mu1: &[f64],
    sigma1: &[f64],
    mu2: &[f64],
    sigma2: &[f64],
) -> Result<f64, BenchError> {
    let d = mu1.len();
    if mu2.len() != d || sigma1.len() != d * d || sigma2.len() != d * d {
        return Err(BenchError::Metric(format!(
            "Fréchet distance: means of {} and {}, covariances of {} and {} values",
            d,
            mu2.len(),
            sigma1.len(),
            sigma2.len()
        )));
    }
    let s1 = DMatrix::from_row_slice(d, d, sigma1);
    let s2 = DMatrix::from_row_slice(d, d, sigma2);
    let diff: f64 = mu1.iter().zip(mu2).map(|(x, y)| (x - y) * (x - y)).sum();
    Ok(diff + s1.trace() + s2.trace() - 2.0 * trace_sqrt_large(&s1, &s2))
}

/// The mean and `(X − μ) / sqrt(n − 1)`, so that `Σ = AᵀA`.
fn centred(f: &Features) -> (DVector<f64>, DMatrix<f64>) {
    let mu = DVector::from_vec(f.mean());
    let scale = 1.0 / ((f.n - 1) as f64).sqrt();
    let mut x = f.to_matrix();
    for (j, mut col) in x.column_iter_mut().enumerate() {
        col.apply(|v| *v = (*v - mu[j]) * scale);
    }
    (mu, x)
}

/// `Tr sqrtm(AᵀA BᵀB)` as the nuclear norm of `A Bᵀ`, its singular values taken directly
/// (an SVD of the n1 × n2 matrix): the square roots of the eigenvalues of `M Mᵀ` would lose
/// half the digits of the small ones, about 1e-8 of the largest.
fn trace_sqrt_small(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    (a * b.transpose()).singular_values().sum()
}

/// `Tr sqrt(Σ1^½ Σ2 Σ1^½)`, which equals `Tr sqrtm(Σ1 Σ2)` (similar matrices) for positive
/// semi-definite Σ1, Σ2 and needs only symmetric eigen-decompositions. Square roots of
/// eigenvalues near 0 carry errors of about sqrt(ε) of the largest, so with near-singular
/// covariances this route is good to about 1e-8 relative (scipy's `sqrtm` does no better).
fn trace_sqrt_large(s1: &DMatrix<f64>, s2: &DMatrix<f64>) -> f64 {
    let eig = symmetrize(s1.clone()).symmetric_eigen();
    let roots = eig.eigenvalues.map(|l| l.max(0.0).sqrt());
    let v = &eig.eigenvectors;
    let half = v * DMatrix::from_diagonal(&roots) * v.transpose();
    let inner = &half * s2 * &half;
    sum_sqrt(&symmetrize(inner).symmetric_eigenvalues())
}

fn symmetrize(m: DMatrix<f64>) -> DMatrix<f64> {
    (&m + m.transpose()) * 0.5
}

fn sum_sqrt(eigenvalues: &DVector<f64>) -> f64 {
    eigenvalues.iter().map(|&l| l.max(0.0).sqrt()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded uniform rows plus a per-column offset: full rank when n > dim.
    fn set(n: usize, dim: usize, phase: f64) -> Features {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(phase.to_bits());
        let data = (0..n * dim)
            .map(|k| (rng.random::<f64>() - 0.5 + 0.3 * ((k % dim) as f64 + phase).sin()) as f32)
            .collect();
        Features::new(n, dim, data).unwrap()
    }

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-12)
    }

    #[test]
    fn identical_sets_are_at_distance_zero() {
        for (n, dim) in [(30, 8), (12, 64)] {
            let a = set(n, dim, 0.0);
            let d = fid(&a, &a).unwrap();
            assert!(d.abs() < 1e-9, "{n}×{dim}: {d}");
        }
    }

    #[test]
    fn both_routes_agree() {
        let a = set(20, 12, 0.0);
        let b = set(25, 12, 0.7);
        let (_, ca) = centred(&a);
        let (_, cb) = centred(&b);
        let small = trace_sqrt_small(&ca, &cb);
        let large = trace_sqrt_large(&(ca.transpose() * &ca), &(cb.transpose() * &cb));
        assert!(close(small, large, 1e-11), "{small} vs {large}");
        // And the statistics route gives the same distance.
        let sigma = |c: &DMatrix<f64>| {
            let s = c.transpose() * c;
            (0..12 * 12)
                .map(|k| s[(k / 12, k % 12)])
                .collect::<Vec<_>>()
        };
        let from_stats =
            frechet_distance_from_stats(&a.mean(), &sigma(&ca), &b.mean(), &sigma(&cb)).unwrap();
        let direct = fid(&a, &b).unwrap();
        assert!(close(from_stats, direct, 1e-10), "{from_stats} vs {direct}");
        assert!(direct > 0.0);
        // Symmetric in its arguments.
        assert!(close(fid(&b, &a).unwrap(), direct, 1e-10));
    }

    #[test]
    fn too_few_rows_or_mismatched_dimensions_are_errors() {
        let one = set(1, 4, 0.0);
        let two = set(2, 4, 0.0);
        assert!(
            fid(&one, &two)
                .unwrap_err()
                .to_string()
                .contains("at least 2")
        );
        assert!(fid(&two, &one).is_err());
        assert!(fid(&two, &set(3, 5, 0.0)).is_err());
        assert!(frechet_distance_from_stats(&[0.0; 2], &[0.0; 4], &[0.0; 2], &[0.0; 3]).is_err());
        // Two rows are enough (rank-1 covariances).
        assert!(fid(&two, &set(2, 4, 1.0)).unwrap().is_finite());
    }
}
