//! Agreement between raters on the items that several of them judged: the share of rater
//! pairs that gave the same answer, and Krippendorff's alpha for nominal data, which corrects
//! that share for the agreement the answers' overall frequencies would give by chance and
//! accepts any number of raters per item (Cohen's kappa needs exactly two, Fleiss' a fixed
//! number).
//!
//! Alpha follows Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", with the
//! coincidence matrix; `bench/tests/arena_parity.rs` checks it against the `krippendorff`
//! Python package.

use serde::{Deserialize, Serialize};

/// Agreement on one question's items.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub struct Agreement {
    /// Units (item and pair of methods) answered by at least two raters.
    pub units: usize,
    /// Answers on those units (one per rater and unit).
    pub answers: usize,
    /// Pairs of raters on the same unit: the denominator of `percent`.
    pub rater_pairs: usize,
    /// Share of those rater pairs that gave the same answer, in percent; `None` without units.
    pub percent: Option<f64>,
    /// Krippendorff's alpha (nominal): 1 is perfect agreement, 0 what chance gives, below 0
    /// systematic disagreement. `None` without units or when every answer is the same (chance
    /// agreement is then total and alpha undefined).
    pub krippendorff_alpha: Option<f64>,
}

/// Agreement from per-unit answer counts: `units[u][c]` raters gave answer `c` on unit `u`
/// (each row has the same number of categories). Units with fewer than two answers are left
/// out, as Krippendorff's pairable values require.
pub fn agreement(units: &[Vec<usize>]) -> Agreement {
    let pairable: Vec<&Vec<usize>> = units
        .iter()
        .filter(|u| u.iter().sum::<usize>() >= 2)
        .collect();
    if pairable.is_empty() {
        return Agreement::default();
    }
    let k = pairable[0].len();
    let mut same_pairs = 0usize;
    let mut all_pairs = 0usize;
    // Coincidences: o[c][d] = Σ_u n_uc (n_ud − [c = d]) / (m_u − 1).
    let mut o = vec![vec![0.0f64; k]; k];
    let mut answers = 0usize;
    for u in &pairable {
        let m: usize = u.iter().sum();
        answers += m;
        all_pairs += m * (m - 1) / 2;
        for c in 0..k {
            same_pairs += u[c] * u[c].saturating_sub(1) / 2;
            for d in 0..k {
                let pairs = if c == d {
                    u[c] * u[c].saturating_sub(1)
                } else {
                    u[c] * u[d]
                };
                o[c][d] += pairs as f64 / (m - 1) as f64;
            }
        }
    }
    let n_c: Vec<f64> = (0..k).map(|c| o[c].iter().sum()).collect();
    let n: f64 = n_c.iter().sum();
    let mut observed = 0.0;
    let mut expected = 0.0;
    for c in 0..k {
        for d in 0..k {
            if c != d {
                observed += o[c][d];
                expected += n_c[c] * n_c[d];
            }
        }
    }
    let alpha = (expected > 0.0).then(|| 1.0 - (n - 1.0) * observed / expected);
    Agreement {
        units: pairable.len(),
        answers,
        rater_pairs: all_pairs,
        percent: Some(100.0 * same_pairs as f64 / all_pairs as f64),
        krippendorff_alpha: alpha,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn krippendorffs_own_example() {
        // Krippendorff (2011), section C (nominal data, 4 coders, 12 units, missing values):
        // alpha = 0.743. Values 1..5 as categories 0..4; unit counts per category.
        let data: [[Option<usize>; 12]; 4] = [
            [
                Some(1),
                Some(2),
                Some(3),
                Some(3),
                Some(2),
                Some(1),
                Some(4),
                Some(1),
                Some(2),
                None,
                None,
                None,
            ],
            [
                Some(1),
                Some(2),
                Some(3),
                Some(3),
                Some(2),
                Some(2),
                Some(4),
                Some(1),
                Some(2),
                Some(5),
                None,
                Some(3),
            ],
            [
                None,
                Some(3),
                Some(3),
                Some(3),
                Some(2),
                Some(3),
                Some(4),
                Some(2),
                Some(2),
                Some(5),
                Some(1),
                None,
            ],
            [
                Some(1),
                Some(2),
                Some(3),
                Some(3),
                Some(2),
                Some(4),
                Some(4),
                Some(1),
                Some(2),
                Some(5),
                Some(1),
                None,
            ],
        ];
        let units: Vec<Vec<usize>> = (0..12)
            .map(|u| {
                let mut counts = vec![0; 5];
                for coder in &data {
                    if let Some(v) = coder[u] {
                        counts[v - 1] += 1;
                    }
                }
                counts
            })
            .collect();
        let a = agreement(&units);
        assert_eq!(a.units, 11, "unit 12 has one value");
        assert!(
            (a.krippendorff_alpha.unwrap() - 0.743).abs() < 5e-4,
            "{a:?}"
        );
    }

    #[test]
    fn perfect_and_degenerate_agreement() {
        let a = agreement(&[vec![2, 0, 0], vec![0, 3, 0], vec![1, 0, 0]]);
        assert_eq!((a.units, a.answers, a.rater_pairs), (2, 5, 4));
        assert_eq!(a.percent, Some(100.0));
        assert_eq!(a.krippendorff_alpha, Some(1.0));
        // Everyone always says the same thing: agreement is total, alpha undefined.
        let same = agreement(&[vec![2, 0, 0], vec![3, 0, 0]]);
        assert_eq!(same.percent, Some(100.0));
        assert_eq!(same.krippendorff_alpha, None);
        assert_eq!(agreement(&[vec![1, 0, 0]]), Agreement::default());
        assert_eq!(agreement(&[]), Agreement::default());
        // Two raters who always disagree.
        let never = agreement(&[vec![1, 1, 0], vec![0, 1, 1], vec![1, 0, 1]]);
        assert_eq!(never.percent, Some(0.0));
        assert!(never.krippendorff_alpha.unwrap() < 0.0);
    }
}
