//! The Inception Score (Salimans et al. 2016) as torchmetrics computes it
//! (`InceptionScore.compute`, torchmetrics 1.9), from the classifier's logits (torchmetrics'
//! default features, `logits_unbiased`: the 1008 logits of the FID Inception without its
//! bias).
//!
//! torchmetrics first shuffles the rows with `torch.randperm`; here they are used in the
//! given order, so that the score is reproducible (shuffle them beforehand to mimic it). Then:
//! softmax per row; `torch.chunk(splits)`, which makes chunks of `ceil(n / splits)` rows, so
//! fewer than `splits` chunks when `n` is not a multiple (53 rows in 10 splits: 8 chunks of 6
//! and one of 5); per chunk `exp(mean_i KL(p_i ‖ mean p))`; the mean and the unbiased standard
//! deviation over chunks. In f64 (torchmetrics works in the features' dtype, float32).

use rayon::prelude::*;

use super::features::Features;
use crate::error::BenchError;

/// `(mean, std)` of the per-chunk Inception Scores of `logits` (one row per image). The std
/// is NaN when there is a single chunk, as torch's unbiased std of one value.
///
/// # Errors
/// [`BenchError::Metric`] without rows, without classes, or with `splits == 0`.
pub fn inception_score(logits: &Features, splits: usize) -> Result<(f64, f64), BenchError> {
    if logits.n == 0 || logits.dim == 0 || splits == 0 {
        return Err(BenchError::Metric(format!(
            "Inception Score: {} rows of {} logits in {splits} splits",
            logits.n, logits.dim
        )));
    }
    let (p, log_p): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (0..logits.n)
        .into_par_iter()
        .map(|i| softmax(logits.row(i)))
        .unzip();
    let size = logits.n.div_ceil(splits);
    let starts: Vec<usize> = (0..logits.n).step_by(size).collect();
    let scores: Vec<f64> = starts
        .into_par_iter()
        .map(|start| {
            let end = (start + size).min(logits.n);
            chunk_score(&p[start..end], &log_p[start..end])
        })
        .collect();
    let k = scores.len() as f64;
    let mean = scores.iter().sum::<f64>() / k;
    let var = scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (k - 1.0);
    Ok((
        mean,
        if scores.len() > 1 {
            var.sqrt()
        } else {
            f64::NAN
        },
    ))
}

/// Probabilities and log-probabilities of one row of logits.
fn softmax(row: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let max = row
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
    let lse = max
        + row
            .iter()
            .map(|&v| (f64::from(v) - max).exp())
            .sum::<f64>()
            .ln();
    let log_p: Vec<f64> = row.iter().map(|&v| f64::from(v) - lse).collect();
    (log_p.iter().map(|l| l.exp()).collect(), log_p)
}

/// `exp(mean_i Σ_j p_ij (log p_ij − log mean_i p_ij))` over one chunk. A zero probability
/// contributes 0 (the limit of p log p).
fn chunk_score(p: &[Vec<f64>], log_p: &[Vec<f64>]) -> f64 {
    let classes = p[0].len();
    let rows = p.len() as f64;
    let log_mean: Vec<f64> = (0..classes)
        .map(|j| (p.iter().map(|r| r[j]).sum::<f64>() / rows).ln())
        .collect();
    let kl: f64 = p
        .iter()
        .zip(log_p)
        .map(|(pr, lr)| {
            pr.iter()
                .zip(lr)
                .zip(&log_mean)
                .filter(|((p, _), _)| **p > 0.0)
                .map(|((p, l), m)| p * (l - m))
                .sum::<f64>()
        })
        .sum();
    (kl / rows).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confident_distinct_predictions_score_the_number_of_classes() {
        // One-hot-like logits over 4 classes, each class once per chunk: IS → 4.
        let rows: Vec<Vec<f32>> = (0..8)
            .map(|i| {
                (0..4)
                    .map(|j| if j == i % 4 { 60.0 } else { 0.0 })
                    .collect()
            })
            .collect();
        let f = Features::from_rows(&rows).unwrap();
        let (mean, std) = inception_score(&f, 2).unwrap();
        assert!(
            (mean - 4.0).abs() < 1e-9 && std.abs() < 1e-9,
            "{mean} {std}"
        );
        // Identical predictions: IS 1.
        let same = Features::from_rows(&vec![vec![1.0, 2.0, 3.0]; 6]).unwrap();
        let (mean, _) = inception_score(&same, 3).unwrap();
        assert!((mean - 1.0).abs() < 1e-12);
    }

    #[test]
    fn chunks_follow_torch_chunk() {
        // 7 rows in 3 splits: chunks of 3, 3, 1; in 10 splits: 7 chunks of 1 (IS 1 each).
        let rows: Vec<Vec<f32>> = (0..7).map(|i| vec![i as f32, 0.0, -(i as f32)]).collect();
        let f = Features::from_rows(&rows).unwrap();
        let (mean, std) = inception_score(&f, 10).unwrap();
        assert!((mean - 1.0).abs() < 1e-12 && std.abs() < 1e-12);
        let (_, std) = inception_score(&f, 1).unwrap();
        assert!(std.is_nan());
    }

    #[test]
    fn empty_input_or_zero_splits_are_errors() {
        let f = Features::from_rows(&[vec![1.0, 2.0]]).unwrap();
        assert!(inception_score(&f, 0).is_err());
        assert!(inception_score(&Features::from_rows(&[]).unwrap(), 10).is_err());
    }
}
