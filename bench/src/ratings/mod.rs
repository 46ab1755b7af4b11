//! Ratings from the preference arena's votes: a Bradley–Terry leaderboard per question, with
//! bootstrap intervals, ranks, the win-rate matrix and the agreement between raters.
//!
//! Automatic metrics miss artefacts people see at once, so the arena asks raters which of two
//! images from hidden methods is better, and this module turns those answers into ratings on
//! LMArena's scale, computed as the `arena-rank` package (0.1.1, LMArena's own library) does:
//!
//! - **Model.** Bradley–Terry by maximum likelihood: method `i` beats `j` with probability
//!   `1 / (1 + 10^((R_j − R_i) / 400))`; ratings are `1000 + 400 / ln 10 · θ` with the `θ` of a
//!   connected group of methods averaging 0, so the ratings average 1000 ([`SCALE`], [`BASE`],
//!   [`ANCHOR`]). A tie counts half a win for each side; `neither` ("both bad") is a tie too by
//!   default, as arena-rank's outcome map does with LMArena's `both_bad`, or is dropped
//!   ([`NeitherPolicy`]). No reweighting of pairs (arena-rank's default).
//! - **Fit.** arena-rank minimises the mean negative log-likelihood with L-BFGS (tolerances
//!   1e-9) from zero; here Newton's method runs on the three counts per pair to a step below
//!   1e-10 (a fit of 100 000 votes costs what their 45 pairs cost). Same optimum: the parity
//!   test finds the ratings within 0.01 point of arena-rank's on 3000 votes, 0.035 on 80.
//! - **Intervals.** arena-rank's bootstrap: the comparisons resampled multinomially (as many as
//!   there are, with replacement), every resample fitted from scratch, the 2.5 % and 97.5 %
//!   quantiles (numpy's linear rule) of each method's ratings. Resamples default to 1000
//!   (arena-rank: 100) and run on every core, each from its own seeded generator, so the
//!   result depends on the seed only. arena-rank's JAX generator cannot be reproduced, so the
//!   intervals agree with its own within Monte Carlo error, not bit for bit.
//! - **Rank.** 1 + the number of methods whose lower bound is above this method's upper bound
//!   (LMArena's rank), among the methods of the same connected group.
//!
//! Where the two differ, by design:
//!
//! - **A weak prior.** A Gaussian prior of standard deviation [`bt::PRIOR_SD`] = 10 nats (1737
//!   points) on every `θ`. It moves ratings by hundredths of a point where the
//!   maximum-likelihood estimate exists, and keeps the fit finite where it does not: a method
//!   that never won (the "other identity" baseline on the fidelity question, say) has no finite
//!   maximum-likelihood rating, and arena-rank returns wherever its optimiser stopped (−1765
//!   in the parity fixture) and shifts every other method up to keep the mean. Such a method is
//!   flagged [`MethodRating::separated`], its rating is the prior's (far below the rest, and
//!   ranked last), and the anchor is the mean of the other methods (the largest group that
//!   beat or tied each other, directly or through others), so one such method does not move
//!   everyone else's rating. Without separation, this is arena-rank's anchor exactly.
//! - **Groups that never met.** Methods with no chain of games between them are not
//!   comparable; each connected group averages 1000 (as arena-rank's zero-started optimiser
//!   leaves them), is numbered in [`MethodRating::component`], and is ranked on its own.
//!
//! Edge cases are defined, never NaN: no votes give no methods; a tie-only question rates
//! everyone 1000; zero resamples give no intervals (`lo`, `hi` absent) and ranks from the
//! ratings alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use idforge_core::schema::{Answer, Question, VoteRow};
use serde::{Deserialize, Serialize};

pub mod agreement;
pub mod bt;

pub use agreement::Agreement;

/// Rating points per factor `BASE` in the odds (LMArena's 400).
pub const SCALE: f64 = 400.0;
/// Base of the odds (10).
pub const BASE: f64 = 10.0;
/// The mean rating of each connected group of methods (1000).
pub const ANCHOR: f64 = 1000.0;

/// What a rating difference of one natural unit (`θ`) is in points: 400 / ln 10 ≈ 173.7.
pub fn points_per_nat() -> f64 {
    SCALE / BASE.ln()
}

/// The item both images were generated for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Item {
    /// Reference set.
    pub set: String,
    /// Identity.
    pub identity: String,
    /// Prompt id.
    pub prompt_id: String,
    /// Seed.
    pub seed: u64,
}

/// Who won a comparison, after the `neither` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// `method_a` is better.
    A,
    /// `method_b` is better.
    B,
    /// Equally good (or, with [`NeitherPolicy::Tie`], equally bad): half a win each.
    Tie,
}

/// One rated answer: a rater compared two methods' images of one item for one question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    /// What was asked; each question has its own ratings.
    pub question: Question,
    /// The rater's opaque id (for agreement).
    pub rater: String,
    /// The item both images show.
    pub item: Item,
    /// One method (the one shown left, from the votes table).
    pub method_a: String,
    /// The other method.
    pub method_b: String,
    /// The answer.
    pub outcome: Outcome,
}

/// What a `neither` answer ("both are bad") counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NeitherPolicy {
    /// A tie (the default): neither image is better, which is what a tie says about the
    /// ranking, and arena-rank counts LMArena's `both_bad` so. Dropping them would also drop
    /// the evidence that two weak methods are close.
    #[default]
    Tie,
    /// Left out of the ratings and the agreement (counted in [`VoteCounts::neither_dropped`]).
    Drop,
}

impl NeitherPolicy {
    /// `tie` or `drop`.
    pub fn as_str(self) -> &'static str {
        match self {
            NeitherPolicy::Tie => "tie",
            NeitherPolicy::Drop => "drop",
        }
    }
}

/// How the ratings are computed.
#[derive(Debug, Clone, PartialEq)]
pub struct RatingOptions {
    /// What `neither` counts as.
    pub neither: NeitherPolicy,
    /// Bootstrap resamples for the intervals; 0 for none.
    pub resamples: usize,
    /// Seed of the resampling.
    pub seed: u64,
    /// Confidence level of the intervals, in (0, 1).
    pub level: f64,
}

impl Default for RatingOptions {
    fn default() -> Self {
        RatingOptions {
            neither: NeitherPolicy::Tie,
            resamples: 1000,
            seed: 0,
            level: 0.95,
        }
    }
}

/// Why ratings could not be computed.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum RatingsError {
    /// A comparison of a method with itself: the arena never serves one, so the input is not
    /// what it claims to be.
    #[error(
        "a comparison of `{method}` with itself ({question} question, rater `{rater}`): \
         comparisons need two different methods"
    )]
    SameMethod {
        /// The method.
        method: String,
        /// The question.
        question: &'static str,
        /// The rater.
        rater: String,
    },
    /// A confidence level outside (0, 1).
    #[error("confidence level {0} is not between 0 and 1 (exclusive); use e.g. 0.95")]
    Level(f64),
}

/// What happened to the rows of a votes table on their way to the ratings.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
pub struct VoteCounts {
    /// Rows read.
    pub rows: usize,
    /// Practice answers, never rated.
    pub practice: usize,
    /// `neither` answers left out ([`NeitherPolicy::Drop`]).
    pub neither_dropped: usize,
    /// Rows naming the same method on both sides, left out.
    pub same_method: usize,
    /// Rows rated.
    pub rated: usize,
}

/// The comparisons a votes table holds: practice rows skipped, `neither` a tie or dropped, and
/// rows with the same method on both sides skipped (each counted).
pub fn comparisons_from_votes(
    rows: &[VoteRow],
    neither: NeitherPolicy,
) -> (Vec<Comparison>, VoteCounts) {
    let mut counts = VoteCounts {
        rows: rows.len(),
        ..VoteCounts::default()
    };
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        if r.practice {
            counts.practice += 1;
            continue;
        }
        if r.method_left == r.method_right {
            counts.same_method += 1;
            continue;
        }
        let outcome = match r.answer {
            Answer::Left => Outcome::A,
            Answer::Right => Outcome::B,
            Answer::Tie => Outcome::Tie,
            Answer::Neither => match neither {
                NeitherPolicy::Tie => Outcome::Tie,
                NeitherPolicy::Drop => {
                    counts.neither_dropped += 1;
                    continue;
                }
            },
        };
        out.push(Comparison {
            question: r.question,
            rater: r.rater.clone(),
            item: Item {
                set: r.set.clone(),
                identity: r.identity.clone(),
                prompt_id: r.prompt_id.clone(),
                seed: r.seed,
            },
            method_a: r.method_left.clone(),
            method_b: r.method_right.clone(),
            outcome,
        });
    }
    counts.rated = out.len();
    (out, counts)
}

/// One method's rating on one question.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MethodRating {
    /// Method name, as in the votes.
    pub method: String,
    /// Bradley–Terry rating on the LMArena scale.
    pub rating: f64,
    /// Lower bound of the bootstrap interval; absent without resamples.
    pub lo: Option<f64>,
    /// Upper bound of the bootstrap interval.
    pub hi: Option<f64>,
    /// 1 + the methods of its group whose lower bound is above its upper bound.
    pub rank: usize,
    /// Comparisons it was in.
    pub games: usize,
    /// Comparisons it won.
    pub wins: usize,
    /// Comparisons it lost.
    pub losses: usize,
    /// Ties (including `neither` under [`NeitherPolicy::Tie`]).
    pub ties: usize,
    /// (wins + ½ ties) / games, in [0, 1].
    pub win_rate: f64,
    /// Never won (or never lost) against the rest, directly or through others: no finite
    /// maximum-likelihood rating, so the rating is the prior's and only says "far below" (or
    /// "far above").
    pub separated: bool,
    /// The connected group of methods it was compared with (0 for the first); ratings and
    /// ranks compare only within a group.
    pub component: usize,
}

/// The games between two methods.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PairRecord {
    /// One method (the better-rated of the two).
    pub a: String,
    /// The other.
    pub b: String,
    /// Games `a` won.
    pub wins_a: usize,
    /// Games `b` won.
    pub wins_b: usize,
    /// Ties.
    pub ties: usize,
    /// (wins_a + ½ ties) / games: `a`'s win rate against `b` (b's is 1 minus it).
    pub rate_a: f64,
}

impl PairRecord {
    /// Games played.
    pub fn games(&self) -> usize {
        self.wins_a + self.wins_b + self.ties
    }
}

/// The leaderboard of one question.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QuestionRatings {
    /// The question.
    pub question: Question,
    /// Comparisons rated.
    pub comparisons: usize,
    /// Distinct raters.
    pub raters: usize,
    /// Connected groups of methods (1 when every method can be compared with every other).
    pub components: usize,
    /// Every method with at least one comparison, best first (rating, then name).
    pub methods: Vec<MethodRating>,
    /// Every pair that met, in the order of `methods` (`a` before `b`).
    pub pairs: Vec<PairRecord>,
    /// Agreement on the items several raters judged.
    pub agreement: Agreement,
}

impl QuestionRatings {
    /// The games between `a` and `b` as `(a's win rate, games)`, in either order; `None` when
    /// they never met.
    pub fn win_rate(&self, a: &str, b: &str) -> Option<(f64, usize)> {
        self.pairs.iter().find_map(|p| {
            if p.a == a && p.b == b {
                Some((p.rate_a, p.games()))
            } else if p.a == b && p.b == a {
                Some((1.0 - p.rate_a, p.games()))
            } else {
                None
            }
        })
    }
}

/// Rates every question present in `comparisons`, in [`Question::ALL`] order.
pub fn rate(
    comparisons: &[Comparison],
    opts: &RatingOptions,
) -> Result<Vec<QuestionRatings>, RatingsError> {
    if !(opts.level > 0.0 && opts.level < 1.0) {
        return Err(RatingsError::Level(opts.level));
    }
    if let Some(c) = comparisons.iter().find(|c| c.method_a == c.method_b) {
        return Err(RatingsError::SameMethod {
            method: c.method_a.clone(),
            question: c.question.as_str(),
            rater: c.rater.clone(),
        });
    }
    Ok(Question::ALL
        .iter()
        .filter_map(|&q| {
            let of_q: Vec<&Comparison> = comparisons.iter().filter(|c| c.question == q).collect();
            (!of_q.is_empty()).then(|| rate_question(q, &of_q, opts))
        })
        .collect())
}

/// Per method of a question: wins, losses, ties.
#[derive(Default, Clone, Copy)]
struct Tally {
    wins: usize,
    losses: usize,
    ties: usize,
}

fn rate_question(
    question: Question,
    comps: &[&Comparison],
    opts: &RatingOptions,
) -> QuestionRatings {
    let names: Vec<&str> = comps
        .iter()
        .flat_map(|c| [c.method_a.as_str(), c.method_b.as_str()])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let n = names.len();

    // Counts per unordered pair (i < j) and per method.
    let mut cells: BTreeMap<(usize, usize), [usize; 3]> = BTreeMap::new();
    let mut tally = vec![Tally::default(); n];
    for c in comps {
        let (a, b) = (index[c.method_a.as_str()], index[c.method_b.as_str()]);
        let (i, j, flipped) = if a < b { (a, b, false) } else { (b, a, true) };
        let cell = cells.entry((i, j)).or_default();
        match (c.outcome, flipped) {
            (Outcome::A, false) | (Outcome::B, true) => {
                cell[0] += 1;
                tally[i].wins += 1;
                tally[j].losses += 1;
            }
            (Outcome::B, false) | (Outcome::A, true) => {
                cell[1] += 1;
                tally[j].wins += 1;
                tally[i].losses += 1;
            }
            (Outcome::Tie, _) => {
                cell[2] += 1;
                tally[i].ties += 1;
                tally[j].ties += 1;
            }
        }
    }
    let counts = bt::PairCounts {
        methods: n,
        pairs: cells
            .iter()
            .map(|(&(i, j), c)| bt::PairCell {
                i,
                j,
                wins_i: c[0] as f64,
                wins_j: c[1] as f64,
                ties: c[2] as f64,
            })
            .collect(),
    };

    let fit = bt::fit(&counts);
    let to_points = |theta: f64| ANCHOR + points_per_nat() * theta;
    let ratings: Vec<f64> = fit.theta.iter().map(|&t| to_points(t)).collect();
    let intervals: Vec<Option<(f64, f64)>> = if opts.resamples > 0 {
        let samples = bt::bootstrap(&counts, opts.resamples, opts.seed);
        let alpha = (1.0 - opts.level) / 2.0;
        (0..n)
            .map(|m| {
                let column: Vec<f64> = samples.iter().map(|s| to_points(s[m])).collect();
                Some((
                    bt::quantile(&column, alpha)?,
                    bt::quantile(&column, 1.0 - alpha)?,
                ))
            })
            .collect()
    } else {
        vec![None; n]
    };
    let bounds = |m: usize| intervals[m].unwrap_or((ratings[m], ratings[m]));
    let ranks: Vec<usize> = (0..n)
        .map(|m| {
            let hi = bounds(m).1;
            1 + (0..n)
                .filter(|&o| fit.component[o] == fit.component[m] && bounds(o).0 > hi)
                .count()
        })
        .collect();

    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| ratings[b].total_cmp(&ratings[a]).then(a.cmp(&b)));
    let position: Vec<usize> = {
        let mut p = vec![0; n];
        for (k, &m) in order.iter().enumerate() {
            p[m] = k;
        }
        p
    };
    let components = fit.component.iter().copied().max().map_or(0, |c| c + 1);
    // Component numbers follow the display order: 0 holds the best-rated method.
    let mut renumber = vec![usize::MAX; components];
    let mut next = 0;
    for &m in &order {
        let c = fit.component[m];
        if renumber[c] == usize::MAX {
            renumber[c] = next;
            next += 1;
        }
    }
    let methods: Vec<MethodRating> = order
        .iter()
        .map(|&m| {
            let t = tally[m];
            let games = t.wins + t.losses + t.ties;
            MethodRating {
                method: names[m].to_string(),
                rating: ratings[m],
                lo: intervals[m].map(|b| b.0),
                hi: intervals[m].map(|b| b.1),
                rank: ranks[m],
                games,
                wins: t.wins,
                losses: t.losses,
                ties: t.ties,
                win_rate: (t.wins as f64 + 0.5 * t.ties as f64) / games as f64,
                separated: fit.separated[m],
                component: renumber[fit.component[m]],
            }
        })
        .collect();
    let mut pairs: Vec<PairRecord> = cells
        .iter()
        .map(|(&(i, j), c)| {
            // The better-placed method first.
            let (a, b, wa, wb) = if position[i] <= position[j] {
                (i, j, c[0], c[1])
            } else {
                (j, i, c[1], c[0])
            };
            let games = (c[0] + c[1] + c[2]) as f64;
            PairRecord {
                a: names[a].to_string(),
                b: names[b].to_string(),
                wins_a: wa,
                wins_b: wb,
                ties: c[2],
                rate_a: (wa as f64 + 0.5 * c[2] as f64) / games,
            }
        })
        .collect();
    pairs.sort_by_key(|p| (position[index[p.a.as_str()]], position[index[p.b.as_str()]]));
    QuestionRatings {
        question,
        comparisons: comps.len(),
        raters: comps
            .iter()
            .map(|c| c.rater.as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        components,
        methods,
        pairs,
        agreement: rater_agreement(comps),
    }
}

/// Agreement on units (item and unordered pair of methods) that at least two raters answered;
/// a rater's answer is their last one on the unit, in input order, oriented to the pair's
/// alphabetical order (so "left" on a swapped screen is the same answer).
fn rater_agreement(comps: &[&Comparison]) -> Agreement {
    type Unit<'a> = (&'a Item, &'a str, &'a str);
    let mut last: HashMap<(Unit<'_>, &str), usize> = HashMap::new();
    for c in comps {
        let (first, second, flipped) = if c.method_a <= c.method_b {
            (c.method_a.as_str(), c.method_b.as_str(), false)
        } else {
            (c.method_b.as_str(), c.method_a.as_str(), true)
        };
        let answer = match (c.outcome, flipped) {
            (Outcome::A, false) | (Outcome::B, true) => 0,
            (Outcome::B, false) | (Outcome::A, true) => 1,
            (Outcome::Tie, _) => 2,
        };
        last.insert(((&c.item, first, second), c.rater.as_str()), answer);
    }
    let mut units: HashMap<Unit<'_>, Vec<usize>> = HashMap::new();
    for ((unit, _), answer) in last {
        units.entry(unit).or_insert_with(|| vec![0; 3])[answer] += 1;
    }
    let mut units: Vec<(Unit<'_>, Vec<usize>)> = units.into_iter().collect();
    // A fixed order, so the float sums do not depend on the hash map.
    units.sort_by(|a, b| a.0.cmp(&b.0));
    let counts: Vec<Vec<usize>> = units.into_iter().map(|(_, c)| c).collect();
    agreement::agreement(&counts)
}

/// The arena part of the leaderboard: the ratings of every question, with what went into them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArenaResults {
    /// The votes file, relative to the bench folder when inside it.
    pub source: String,
    /// What `neither` counted as.
    pub neither: NeitherPolicy,
    /// Bootstrap resamples behind the intervals (0: none).
    pub resamples: usize,
    /// Their seed.
    pub seed: u64,
    /// Confidence level of the intervals.
    pub level: f64,
    /// The rating scale: points per factor `base` in the odds (400).
    pub scale: f64,
    /// Base of the odds (10).
    pub base: f64,
    /// Mean rating of each connected group of methods (1000).
    pub anchor: f64,
    /// Standard deviation of the prior on the natural-unit ratings ([`bt::PRIOR_SD`]).
    pub prior_sd: f64,
    /// What happened to the votes table's rows.
    pub votes: VoteCounts,
    /// One leaderboard per question that has votes, in [`Question::ALL`] order.
    pub questions: Vec<QuestionRatings>,
}

/// Rates a votes table read from `source` (named in the result).
pub fn rate_votes(
    rows: &[VoteRow],
    source: &str,
    opts: &RatingOptions,
) -> Result<ArenaResults, RatingsError> {
    let (comparisons, votes) = comparisons_from_votes(rows, opts.neither);
    let questions = rate(&comparisons, opts)?;
    Ok(ArenaResults {
        source: source.to_string(),
        neither: opts.neither,
        resamples: opts.resamples,
        seed: opts.seed,
        level: opts.level,
        scale: SCALE,
        base: BASE,
        anchor: ANCHOR,
        prior_sd: bt::PRIOR_SD,
        votes,
        questions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comparison(rater: &str, a: &str, b: &str, outcome: Outcome) -> Comparison {
        Comparison {
            question: Question::Fidelity,
            rater: rater.into(),
            item: Item {
                set: "in-train".into(),
                identity: "p1".into(),
                prompt_id: "style-01".into(),
                seed: 0,
            },
            method_a: a.into(),
            method_b: b.into(),
            outcome,
        }
    }

    fn opts(resamples: usize) -> RatingOptions {
        RatingOptions {
            resamples,
            ..RatingOptions::default()
        }
    }

    #[test]
    fn no_votes_give_no_methods() {
        assert_eq!(rate(&[], &opts(100)).unwrap(), Vec::new());
        let r = rate_votes(&[], "votes.parquet", &opts(100)).unwrap();
        assert!(r.questions.is_empty());
        assert_eq!(r.votes, VoteCounts::default());
    }

    #[test]
    fn a_method_against_itself_is_an_error() {
        let err = rate(
            &[comparison("r", "m", "m", Outcome::A)],
            &RatingOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("`m` with itself"), "{err}");
        assert_eq!(
            rate(
                &[],
                &RatingOptions {
                    level: 1.0,
                    ..RatingOptions::default()
                }
            ),
            Err(RatingsError::Level(1.0))
        );
    }

    #[test]
    fn all_ties_rate_everyone_at_the_anchor() {
        let comps: Vec<Comparison> = (0..30)
            .map(|k| {
                let m = ["a", "b", "c"];
                comparison("r", m[k % 3], m[(k + 1) % 3], Outcome::Tie)
            })
            .collect();
        let q = &rate(&comps, &opts(200)).unwrap()[0];
        for m in &q.methods {
            assert!((m.rating - ANCHOR).abs() < 1e-9, "{m:?}");
            assert_eq!(m.rank, 1);
            assert_eq!(m.win_rate, 0.5);
            assert!(!m.separated);
            // Every resample is all ties too.
            assert!((m.lo.unwrap() - ANCHOR).abs() < 1e-9);
            assert!((m.hi.unwrap() - ANCHOR).abs() < 1e-9);
        }
        assert_eq!(q.methods.iter().map(|m| m.games).sum::<usize>(), 60);
    }

    #[test]
    fn a_method_with_only_losses_is_last_flagged_and_finite() {
        let mut comps = Vec::new();
        for k in 0..40 {
            comps.push(comparison(
                "r",
                "a",
                "b",
                if k % 2 == 0 { Outcome::A } else { Outcome::B },
            ));
            comps.push(comparison("r", "loser", ["a", "b"][k % 2], Outcome::B));
        }
        let q = &rate(&comps, &opts(200)).unwrap()[0];
        let loser = q.methods.iter().find(|m| m.method == "loser").unwrap();
        assert!(loser.separated && loser.rating.is_finite());
        assert_eq!((loser.wins, loser.losses, loser.win_rate), (0, 40, 0.0));
        assert_eq!(loser.rank, 3);
        assert_eq!(q.methods.last().unwrap().method, "loser");
        // The others are anchored among themselves: 1000 each, as with the loser absent.
        for m in q.methods.iter().filter(|m| m.method != "loser") {
            assert!((m.rating - 1000.0).abs() < 1e-6, "{m:?}");
            assert!(!m.separated);
            assert_eq!(m.rank, 1);
        }
        assert!(loser.hi.unwrap() < 500.0, "{loser:?}");
    }

    #[test]
    fn zero_resamples_rank_by_the_ratings() {
        let comps = vec![
            comparison("r", "a", "b", Outcome::A),
            comparison("r", "a", "b", Outcome::A),
            comparison("r", "a", "b", Outcome::B),
        ];
        let q = &rate(&comps, &opts(0)).unwrap()[0];
        assert_eq!(q.methods[0].method, "a");
        assert_eq!((q.methods[0].rank, q.methods[1].rank), (1, 2));
        assert!(q.methods.iter().all(|m| m.lo.is_none() && m.hi.is_none()));
        // 2 of 3: logit(2/3) = ln 2 apart, less the prior's pull (0.9 points on 3 games).
        let d = q.methods[0].rating - q.methods[1].rating;
        let exact = points_per_nat() * 2f64.ln();
        assert!(d < exact && d > exact - 1.0, "{d} vs {exact}");
    }

    #[test]
    fn win_rates_and_pairs_read_both_ways() {
        let comps = vec![
            comparison("r", "a", "b", Outcome::A),
            comparison("r", "b", "a", Outcome::B),
            comparison("r", "a", "b", Outcome::Tie),
            comparison("r", "b", "a", Outcome::A),
        ];
        let q = &rate(&comps, &opts(50)).unwrap()[0];
        // a: 2 wins, 1 loss, 1 tie.
        let a = q.methods.iter().find(|m| m.method == "a").unwrap();
        assert_eq!((a.wins, a.losses, a.ties, a.games), (2, 1, 1, 4));
        assert_eq!(a.win_rate, 2.5 / 4.0);
        assert_eq!(q.win_rate("a", "b"), Some((0.625, 4)));
        assert_eq!(q.win_rate("b", "a"), Some((0.375, 4)));
        assert_eq!(q.win_rate("a", "c"), None);
        assert_eq!(q.pairs[0].a, "a");
    }

    #[test]
    fn groups_that_never_met_are_rated_and_ranked_apart() {
        let mut comps = Vec::new();
        for k in 0..20 {
            comps.push(comparison(
                "r",
                "a",
                "b",
                if k < 15 { Outcome::A } else { Outcome::B },
            ));
            comps.push(comparison(
                "r",
                "c",
                "d",
                if k < 12 { Outcome::A } else { Outcome::B },
            ));
        }
        let q = &rate(&comps, &opts(100)).unwrap()[0];
        assert_eq!(q.components, 2);
        let get = |n: &str| q.methods.iter().find(|m| m.method == n).unwrap();
        assert_eq!(get("a").component, 0);
        assert_eq!(get("b").component, 0);
        assert_eq!(get("c").component, get("d").component);
        assert_ne!(get("a").component, get("c").component);
        assert!((get("a").rating + get("b").rating - 2000.0).abs() < 1e-6);
        assert!((get("c").rating + get("d").rating - 2000.0).abs() < 1e-6);
        // Ranks within each group only: a and c can both be first.
        assert_eq!(get("c").rank, 1);
    }

    #[test]
    fn votes_convert_with_the_neither_policy() {
        let row = |id: i64, answer: Answer, practice: bool, right: &str| VoteRow {
            vote_id: id,
            rater: "r1".into(),
            question: Question::Adherence,
            set: "in-train".into(),
            identity: "p1".into(),
            prompt_id: "p".into(),
            seed: 1,
            method_left: "a".into(),
            method_right: right.into(),
            answer,
            practice,
            shown_at: 0,
            answered_at: 0,
            answer_ms: 0,
        };
        let rows = vec![
            row(1, Answer::Left, true, "b"),
            row(2, Answer::Right, false, "b"),
            row(3, Answer::Neither, false, "b"),
            row(4, Answer::Tie, false, "b"),
            row(5, Answer::Left, false, "a"),
        ];
        let (c, n) = comparisons_from_votes(&rows, NeitherPolicy::Tie);
        assert_eq!(
            n,
            VoteCounts {
                rows: 5,
                practice: 1,
                neither_dropped: 0,
                same_method: 1,
                rated: 3
            }
        );
        assert_eq!(
            c.iter().map(|c| c.outcome).collect::<Vec<_>>(),
            [Outcome::B, Outcome::Tie, Outcome::Tie]
        );
        let (c, n) = comparisons_from_votes(&rows, NeitherPolicy::Drop);
        assert_eq!((c.len(), n.neither_dropped, n.rated), (2, 1, 2));
        let r = rate_votes(&rows, "arena/votes.parquet", &opts(10)).unwrap();
        assert_eq!(r.questions.len(), 1);
        assert_eq!(r.questions[0].question, Question::Adherence);
        assert_eq!(r.questions[0].comparisons, 3);
    }

    #[test]
    fn agreement_uses_each_raters_last_answer_in_pair_order() {
        // Unit (item, a-b): r1 says a (shown left), r2 says a (shown right, answered "right"),
        // r3 first says b, then changes to a. All agree.
        let mut comps = vec![
            comparison("r1", "a", "b", Outcome::A),
            comparison("r2", "b", "a", Outcome::B),
            comparison("r3", "a", "b", Outcome::B),
            comparison("r3", "a", "b", Outcome::A),
        ];
        let q = &rate(&comps, &opts(0)).unwrap()[0];
        assert_eq!(q.agreement.units, 1);
        assert_eq!(q.agreement.answers, 3);
        assert_eq!(q.agreement.percent, Some(100.0));
        // One dissenting rater: 1 of 3 rater pairs agree.
        comps.push(comparison("r4", "a", "b", Outcome::Tie));
        comps.retain(|c| c.rater != "r3");
        let q = &rate(&comps, &opts(0)).unwrap()[0];
        assert_eq!(q.agreement.rater_pairs, 3);
        assert!((q.agreement.percent.unwrap() - 100.0 / 3.0).abs() < 1e-9);
        assert_eq!(q.raters, 3);
    }
}
