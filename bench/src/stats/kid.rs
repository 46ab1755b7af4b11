//! KID, the kernel inception distance (Bińkowski et al. 2018), as clean-fid computes it
//! (`kernel_distance` in `cleanfid/fid.py`, 0.1.35): the unbiased MMD² with the polynomial
//! kernel `k(x, y) = (x·y / dim + 1)³`, averaged over `num_subsets` pairs of subsets of
//! `m = min(n1, n2, max_subset_size)` rows drawn without replacement.
//!
//! Our generator is not numpy's, so the subsets differ from clean-fid's and so does the value,
//! except when both sets have exactly `m` rows: then every subset is a permutation of a whole
//! set, the estimate does not depend on the draw, and the result equals clean-fid's to rounding
//! (computed once, in f64). Elsewhere both are unbiased estimates of the same quantity with the
//! same subset size.

use nalgebra::DMatrix;
use rayon::prelude::*;

use super::bootstrap::substream;
use super::features::{Features, same_dim};
use crate::error::BenchError;

/// How KID subsamples; [`Default`] is clean-fid's `num_subsets=100, max_subset_size=1000`.
#[derive(Debug, Clone, PartialEq)]
pub struct KidOptions {
    /// Number of subset pairs averaged.
    pub num_subsets: usize,
    /// Largest subset size (clean-fid's cap on the quadratic cost).
    pub max_subset_size: usize,
    /// Seed of the subset draws (unused when both sets have `m` rows).
    pub seed: u64,
}

impl Default for KidOptions {
    /// clean-fid's defaults, seed 0.
    fn default() -> Self {
        Self {
            num_subsets: 100,
            max_subset_size: 1000,
            seed: 0,
        }
    }
}

/// Kernel matrices above this many entries (all three together) are not precomputed; each
/// subset then multiplies its own rows (the same values, more work, bounded memory).
const MAX_PRECOMPUTED: usize = 1 << 24;

/// KID between `a` (clean-fid's `feats1`) and `b` (`feats2`).
///
/// # Errors
/// [`BenchError::Metric`] if the dimensions differ, `m < 2`, or `num_subsets` is 0.
pub fn kid(a: &Features, b: &Features, options: &KidOptions) -> Result<f64, BenchError> {
    same_dim("KID", a, b)?;
    let m = a.n.min(b.n).min(options.max_subset_size);
    if m < 2 {
        return Err(BenchError::Metric(format!(
            "KID: subsets of {m} rows (sets of {} and {}, max_subset_size {}); it needs at least 2",
            a.n, b.n, options.max_subset_size
        )));
    }
    if options.num_subsets == 0 {
        return Err(BenchError::Metric("KID: num_subsets is 0".into()));
    }
    let dim = a.dim as f64;
    if a.n == m && b.n == m {
        return Ok(mmd2(&b.to_matrix(), &a.to_matrix(), dim));
    }
    let total = a.n * a.n + b.n * b.n + a.n * b.n;
    let t: Vec<f64> = if total <= MAX_PRECOMPUTED {
        let x_all = b.to_matrix();
        let y_all = a.to_matrix();
        let kxx = kernel(&x_all, &x_all, dim);
        let kyy = kernel(&y_all, &y_all, dim);
        let kxy = kernel(&x_all, &y_all, dim);
        subsets(a.n, b.n, m, options)
            .map(|(ix, iy)| {
                let sub = |k: &DMatrix<f64>, r: &[usize], c: &[usize]| {
                    DMatrix::from_fn(r.len(), c.len(), |i, j| k[(r[i], c[j])])
                };
                unbiased(
                    &sub(&kxx, &ix, &ix),
                    &sub(&kyy, &iy, &iy),
                    &sub(&kxy, &ix, &iy),
                )
            })
            .collect()
    } else {
        // Only the drawn rows are converted to f64 (not the whole sets, per subset).
        subsets(a.n, b.n, m, options)
            .map(|(ix, iy)| mmd2(&b.select(&ix).to_matrix(), &a.select(&iy).to_matrix(), dim))
            .collect()
    };
    Ok(t.iter().sum::<f64>() / t.len() as f64)
}

/// The index draws of every subset pair, `(rows of b, rows of a)`, each pair from its own
/// generator (clean-fid draws `feats2`'s subset first).
fn subsets(
    na: usize,
    nb: usize,
    m: usize,
    options: &KidOptions,
) -> impl IndexedParallelIterator<Item = (Vec<usize>, Vec<usize>)> + '_ {
    (0..options.num_subsets).into_par_iter().map(move |s| {
        let mut rng = substream(options.seed, s as u64);
        let ix = rand::seq::index::sample(&mut rng, nb, m).into_vec();
        let iy = rand::seq::index::sample(&mut rng, na, m).into_vec();
        (ix, iy)
    })
}

/// `(x yᵀ / dim + 1)³`.
fn kernel(x: &DMatrix<f64>, y: &DMatrix<f64>, dim: f64) -> DMatrix<f64> {
    (x * y.transpose()).map(|v| (v / dim + 1.0).powi(3))
}

fn mmd2(x: &DMatrix<f64>, y: &DMatrix<f64>, dim: f64) -> f64 {
    unbiased(&kernel(x, x, dim), &kernel(y, y, dim), &kernel(x, y, dim))
}

/// clean-fid's per-subset term divided by m: the off-diagonal means of `k(x, x')` and
/// `k(y, y')` minus twice the mean of `k(x, y)`.
fn unbiased(kxx: &DMatrix<f64>, kyy: &DMatrix<f64>, kxy: &DMatrix<f64>) -> f64 {
    let m = kxx.nrows() as f64;
    let off = |k: &DMatrix<f64>| k.sum() - k.trace();
    (off(kxx) + off(kyy)) / (m * (m - 1.0)) - 2.0 * kxy.sum() / (m * m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize, dim: usize, phase: f64) -> Features {
        let data = (0..n * dim)
            .map(|k| {
                let (i, j) = ((k / dim) as f64, (k % dim) as f64);
                ((i * 0.61 + j * 0.9 + phase).sin() + phase) as f32
            })
            .collect();
        Features::new(n, dim, data).unwrap()
    }

    #[test]
    fn equal_sizes_ignore_the_seed_and_a_set_against_itself_is_near_zero() {
        let a = set(30, 6, 0.0);
        let b = set(30, 6, 0.5);
        let o = KidOptions::default();
        let k1 = kid(&a, &b, &o).unwrap();
        let k2 = kid(
            &a,
            &b,
            &KidOptions {
                seed: 7,
                ..o.clone()
            },
        )
        .unwrap();
        assert_eq!(k1, k2);
        assert!(k1 > 0.0);
        // The unbiased estimate of a set against itself is 2/m² (off/(m − 1) − trace) of its
        // kernel matrix: slightly negative.
        let self_kid = kid(&a, &a, &o).unwrap();
        assert!(self_kid <= 0.0 && self_kid < k1, "{self_kid} vs {k1}");
    }

    #[test]
    fn subsampling_is_deterministic_and_both_paths_agree() {
        let a = set(40, 5, 0.0);
        let b = set(25, 5, 0.3);
        let o = KidOptions {
            num_subsets: 20,
            max_subset_size: 10,
            seed: 3,
        };
        let k = kid(&a, &b, &o).unwrap();
        assert_eq!(k, kid(&a, &b, &o).unwrap());
        let dim = 5.0;
        let (xa, ya) = (b.to_matrix(), a.to_matrix());
        let direct: Vec<f64> = subsets(a.n, b.n, 10, &o)
            .map(|(ix, iy)| mmd2(&xa.select_rows(&ix), &ya.select_rows(&iy), dim))
            .collect();
        let direct = direct.iter().sum::<f64>() / direct.len() as f64;
        assert!(
            (k - direct).abs() <= 1e-12 * k.abs().max(1.0),
            "{k} {direct}"
        );
    }

    #[test]
    fn too_small_sets_are_errors() {
        let one = set(1, 3, 0.0);
        let two = set(2, 3, 0.0);
        assert!(kid(&one, &two, &KidOptions::default()).is_err());
        assert!(kid(&two, &set(2, 4, 0.0), &KidOptions::default()).is_err());
        let none = KidOptions {
            num_subsets: 0,
            ..KidOptions::default()
        };
        assert!(kid(&two, &two, &none).is_err());
    }
}
