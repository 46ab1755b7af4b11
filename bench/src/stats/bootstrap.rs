//! Percentile bootstrap intervals: of a mean of per-image scores (optionally resampling whole
//! clusters), and of any set-level statistic (FID, KID, IS, CMMD) recomputed on resampled
//! image sets.
//!
//! Every resample draws from its own generator, `StdRng::seed_from_u64` of a hash of `(seed,
//! resample index)`, so resamples run in parallel (rayon) and the result depends on the seed
//! only, not on the number of threads or their scheduling.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// The percentile bootstrap of the mean of `values`: `(mean, lo, hi)`, where `mean` is the plain
/// mean of all values and `[lo, hi]` the central `level` (e.g. 0.95) interval of the means of
/// `resamples` resamples.
///
/// Without `groups` every value is drawn independently. With `groups` (one cluster id per
/// value, any labels) whole clusters are drawn with replacement, as many as there are clusters,
/// and a resample's mean is the mean of all values of the drawn clusters: scores of the same
/// (identity, prompt) item across seeds are not independent, and treating them as such would
/// make the interval too narrow.
///
/// Quantiles interpolate linearly between order statistics (numpy's default). An empty
/// `values` gives NaN for all three; `resamples == 0` or a `level` outside (0, 1) gives NaN
/// bounds.
///
/// # Panics
/// If `groups` is given with a length other than `values.len()`.
pub fn mean_ci(
    values: &[f64],
    groups: Option<&[usize]>,
    resamples: usize,
    seed: u64,
    level: f64,
) -> (f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    // (sum, count) per cluster, in order of first appearance.
    let clusters: Vec<(f64, usize)> = match groups {
        None => values.iter().map(|&v| (v, 1)).collect(),
        Some(groups) => {
            assert_eq!(
                groups.len(),
                values.len(),
                "one cluster id per value ({} ids for {} values)",
                groups.len(),
                values.len()
            );
            let mut index = HashMap::new();
            let mut clusters: Vec<(f64, usize)> = Vec::new();
            for (&v, &g) in values.iter().zip(groups) {
                let k = *index.entry(g).or_insert_with(|| {
                    clusters.push((0.0, 0));
                    clusters.len() - 1
                });
                clusters[k].0 += v;
                clusters[k].1 += 1;
            }
            clusters
        }
    };
    let k = clusters.len();
    let means = resample_all(resamples, seed, |rng| {
        let (mut sum, mut count) = (0.0, 0);
        for _ in 0..k {
            let (s, c) = clusters[rng.random_range(0..k)];
            sum += s;
            count += c;
        }
        Some(sum / count as f64)
    });
    let (lo, hi) = percentile_interval(means, level).unwrap_or((f64::NAN, f64::NAN));
    (mean, lo, hi)
}

/// The percentile bootstrap interval `(lo, hi)` at `level` of a statistic of a set of `n`
/// items: each of `resamples` resamples draws `n` indices with replacement and calls `stat`
/// on them (e.g. `|idx| fid(&generated.select(idx), &reference).ok()`).
///
/// Resamples where `stat` returns `None` or a non-finite value (a resample with too few distinct
/// images, say) are skipped. `None` when `n == 0`, `level` is outside (0, 1) or no resample
/// gave a value.
pub fn statistic_ci(
    n: usize,
    resamples: usize,
    seed: u64,
    level: f64,
    stat: impl Fn(&[usize]) -> Option<f64> + Sync,
) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let values = resample_all(resamples, seed, |rng| {
        let idx: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
        stat(&idx)
    });
    percentile_interval(values, level)
}

/// Runs `draw` once per resample, each on its own generator, in parallel; keeps the finite
/// results in resample order.
fn resample_all(
    resamples: usize,
    seed: u64,
    draw: impl Fn(&mut StdRng) -> Option<f64> + Sync,
) -> Vec<f64> {
    (0..resamples)
        .into_par_iter()
        .map(|i| draw(&mut substream(seed, i as u64)))
        .collect::<Vec<_>>()
        .into_iter()
        .flatten()
        .filter(|v| v.is_finite())
        .collect()
}

/// The generator of item `index` of a computation seeded with `seed`: independent of how many
/// others run and in which order.
pub(crate) fn substream(seed: u64, index: u64) -> StdRng {
    StdRng::seed_from_u64(splitmix64(seed ^ splitmix64(index)))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `(1 − level) / 2` and `(1 + level) / 2` quantiles, or `None` without values or with a
/// level outside (0, 1).
fn percentile_interval(mut values: Vec<f64>, level: f64) -> Option<(f64, f64)> {
    if values.is_empty() || !(level > 0.0 && level < 1.0) {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let alpha = (1.0 - level) / 2.0;
    Some((quantile(&values, alpha), quantile(&values, 1.0 - alpha)))
}

/// numpy's default (linear) quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    let t = pos - lo as f64;
    sorted[lo] + t * (sorted[hi] - sorted[lo])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize) -> Vec<f64> {
        (0..n).map(|i| ((i * 7919) % 101) as f64 / 10.0).collect()
    }

    #[test]
    fn quantiles_follow_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        // np.quantile([1, 2, 3, 4], [0.025, 0.975]) = [1.075, 3.925]
        let (lo, hi) = percentile_interval(v.to_vec(), 0.95).unwrap();
        assert!(
            (lo - 1.075).abs() < 1e-12 && (hi - 3.925).abs() < 1e-12,
            "{lo} {hi}"
        );
        assert_eq!(quantile(&[5.0], 0.3), 5.0);
    }

    #[test]
    fn mean_ci_is_deterministic_and_contains_the_mean() {
        let v = values(200);
        let a = mean_ci(&v, None, 500, 42, 0.95);
        let b = mean_ci(&v, None, 500, 42, 0.95);
        assert_eq!(a, b);
        let c = mean_ci(&v, None, 500, 43, 0.95);
        assert_ne!(a.1, c.1);
        let (mean, lo, hi) = a;
        assert!(lo < mean && mean < hi, "{lo} {mean} {hi}");
        let direct = v.iter().sum::<f64>() / v.len() as f64;
        assert_eq!(mean, direct);
        // A wider level gives a wider interval.
        let (_, lo99, hi99) = mean_ci(&v, None, 500, 42, 0.99);
        assert!(lo99 <= lo && hi99 >= hi);
    }

    #[test]
    fn clusters_widen_the_interval_of_correlated_values() {
        // 20 clusters of 10 identical values: really 20 observations, not 200.
        let base = values(20);
        let v: Vec<f64> = base.iter().flat_map(|&x| [x; 10]).collect();
        let groups: Vec<usize> = (0..200).map(|i| i / 10).collect();
        let (m1, lo1, hi1) = mean_ci(&v, None, 1000, 1, 0.95);
        let (m2, lo2, hi2) = mean_ci(&v, Some(&groups), 1000, 1, 0.95);
        assert_eq!(m1, m2);
        assert!(lo2 < m2 && m2 < hi2);
        assert!(
            hi2 - lo2 > 2.0 * (hi1 - lo1),
            "{} vs {}",
            hi2 - lo2,
            hi1 - lo1
        );
        // One cluster per value is the plain bootstrap, whatever the labels.
        let own: Vec<usize> = (0..200).map(|i| 1000 - i).collect();
        assert_eq!(
            mean_ci(&v, Some(&own), 300, 5, 0.9),
            mean_ci(&v, None, 300, 5, 0.9)
        );
    }

    #[test]
    fn degenerate_inputs() {
        let (m, lo, hi) = mean_ci(&[], None, 100, 0, 0.95);
        assert!(m.is_nan() && lo.is_nan() && hi.is_nan());
        let (m, lo, hi) = mean_ci(&[2.0, 4.0], None, 0, 0, 0.95);
        assert!(m == 3.0 && lo.is_nan() && hi.is_nan());
        let (_, lo, hi) = mean_ci(&[2.0, 2.0, 2.0], None, 50, 0, 0.95);
        assert_eq!((lo, hi), (2.0, 2.0));
        assert_eq!(statistic_ci(0, 10, 0, 0.95, |_| Some(1.0)), None);
        assert_eq!(statistic_ci(5, 10, 0, 0.95, |_| None), None);
        assert_eq!(statistic_ci(5, 10, 0, 1.5, |_| Some(1.0)), None);
    }

    #[test]
    fn statistic_ci_resamples_indices_and_skips_failures() {
        let v = values(50);
        let mean_of = |idx: &[usize]| idx.iter().map(|&i| v[i]).sum::<f64>() / idx.len() as f64;
        let a = statistic_ci(50, 400, 9, 0.95, |idx| Some(mean_of(idx))).unwrap();
        assert_eq!(
            a,
            statistic_ci(50, 400, 9, 0.95, |idx| Some(mean_of(idx))).unwrap()
        );
        let (_, lo, hi) = mean_ci(&v, None, 400, 9, 0.95);
        // Same draws as mean_ci without groups: the same interval.
        assert!((a.0 - lo).abs() < 1e-12 && (a.1 - hi).abs() < 1e-12);
        // Skipping: only resamples whose first index is even count.
        let b = statistic_ci(50, 400, 9, 0.95, |idx| {
            (idx[0] % 2 == 0).then(|| mean_of(idx))
        });
        assert!(b.is_some() && b != Some(a));
    }
}
