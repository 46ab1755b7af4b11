//! Parity of the arena ratings (`idforge_bench::ratings`) with arena-rank 0.1.1, LMArena's
//! Bradley–Terry library (jax 0.8.1, optax 0.2.8), and of the rater agreement with the
//! `krippendorff` package 0.9.0. Fixtures come from `tools/arena-reference/run`: seeded
//! synthetic vote sets (the votes themselves are stored, as the arena's `votes` table holds
//! them) and what the references computed from them.
//!
//! Tolerances, in rating points:
//! - **Ratings: 1 point** (the bar) in every case, both `neither` policies. Where the
//!   maximum-likelihood estimate is well determined (`main`, `disconnected`: hundreds of votes
//!   per method) also **0.1 point**: both sides then reach the same optimum (arena-rank's
//!   L-BFGS stops at a relative loss change of 1e-9, about 0.02 points; idforge's Newton steps
//!   at 1e-10 nats; the weak prior moves ratings by about 0.01 point there). `small` (80
//!   votes) shows the prior's largest effect, printed.
//! - **A method that never won** (`separated`): arena-rank has no finite answer (its optimiser
//!   stops somewhere near −2000 and moves every other rating up to keep the mean); what is
//!   compared is what the votes determine: the rating differences among the other methods
//!   (1 point), and that the loser is flagged, rated below everyone's interval and ranked last.
//! - **Bootstrap, mechanics: 0.1 point.** arena-rank's own 100 resamples (the counts of its
//!   `jax.random.multinomial` draw, replayed) refitted one by one match its per-resample ratings,
//!   and their 2.5 % / 97.5 % quantiles (numpy's linear rule) match its interval bounds.
//! - **Bootstrap, idforge's own draws** (1000 resamples from its own generator; JAX's
//!   generator cannot be reproduced): the bounds agree with arena-rank's 100-resample bounds
//!   within 4 Monte Carlo standard errors of the difference, `4 √(s²/100 + s²/1000) ·
//!   √(0.025 · 0.975) / φ(1.96)` with `s` arena-rank's bootstrap standard deviation (about
//!   1.1 s, 8 to 10 points here); the bootstrap standard deviations within 30 % (4 standard
//!   errors of the ratio, `√(1/200 + 1/2000)`). A resampling over the wrong unit (pairs,
//!   items) or a missing refit would miss both by far.
//! - **Agreement: 1e-9** (percent and Krippendorff's α; counts exact), both policies.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use idforge_bench::ratings::bt::{PairCell, PairCounts, bootstrap, fit, quantile};
use idforge_bench::ratings::{
    Comparison, NeitherPolicy, Outcome, QuestionRatings, RatingOptions, comparisons_from_votes,
    points_per_nat, rate,
};
use idforge_core::schema::{Answer, Question, VoteRow};
use serde_json::Value;

const RATING_TOL: f64 = 1.0;
const OPTIMUM_TOL: f64 = 0.1;
const REPLAY_TOL: f64 = 0.1;
const SD_RATIO_TOL: f64 = 0.3;
const AGREEMENT_TOL: f64 = 1e-9;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arena")
}

fn load(name: &str) -> Value {
    let path = fixtures().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run tools/arena-reference/run)", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn ints(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// The case's votes as rows of the arena's `votes` table.
fn votes(case: &Value) -> Vec<VoteRow> {
    let names: Vec<&str> = case["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    let v = &case["votes"];
    let (left, right, answer) = (ints(&v["left"]), ints(&v["right"]), ints(&v["answer"]));
    let rater = v.get("rater").map(ints);
    let item = v.get("item").map(ints);
    (0..left.len())
        .map(|k| VoteRow {
            vote_id: k as i64,
            rater: format!("r{}", rater.as_ref().map_or(0, |r| r[k])),
            question: Question::Fidelity,
            set: "in-train".into(),
            identity: format!("id{}", item.as_ref().map_or(0, |i| i[k])),
            prompt_id: "p".into(),
            seed: 0,
            method_left: names[left[k]].into(),
            method_right: names[right[k]].into(),
            answer: [Answer::Left, Answer::Right, Answer::Tie, Answer::Neither][answer[k]],
            practice: false,
            shown_at: 0,
            answered_at: 0,
            answer_ms: 0,
        })
        .collect()
}

fn policy(name: &str) -> NeitherPolicy {
    match name {
        "tie" => NeitherPolicy::Tie,
        "drop" => NeitherPolicy::Drop,
        other => panic!("policy {other}"),
    }
}

fn rated(case: &Value, neither: NeitherPolicy, resamples: usize) -> QuestionRatings {
    let (comparisons, _) = comparisons_from_votes(&votes(case), neither);
    let opts = RatingOptions {
        neither,
        resamples,
        seed: 0,
        ..RatingOptions::default()
    };
    let mut all = rate(&comparisons, &opts).unwrap();
    assert_eq!(all.len(), 1);
    all.remove(0)
}

fn rating_of(q: &QuestionRatings, method: &str) -> f64 {
    q.methods
        .iter()
        .find(|m| m.method == method)
        .unwrap_or_else(|| panic!("no {method}"))
        .rating
}

/// Max |idforge − arena-rank| over the methods, for the case and policy.
fn max_rating_difference(case: &Value, neither: &str) -> f64 {
    let q = rated(case, policy(neither), 0);
    let reference = case["arena_rank"][neither]["ratings"].as_object().unwrap();
    assert_eq!(q.methods.len(), reference.len());
    reference
        .iter()
        .map(|(m, r)| (rating_of(&q, m) - r.as_f64().unwrap()).abs())
        .fold(0.0, f64::max)
}

#[test]
fn ratings_match_arena_rank() {
    for (name, optimum) in [("main", true), ("disconnected", true), ("small", false)] {
        let case = load(name);
        for neither in ["tie", "drop"] {
            if case["arena_rank"].get(neither).is_none() {
                continue;
            }
            let d = max_rating_difference(&case, neither);
            eprintln!("{name}/{neither}: max |Δ rating| = {d:.4}");
            assert!(d <= RATING_TOL, "{name}/{neither}: {d}");
            if optimum {
                assert!(d <= OPTIMUM_TOL, "{name}/{neither}: {d}");
            }
        }
    }
    // The policy matters: dropping `neither` changes the ratings (a check that both fixtures
    // are not the same data).
    let main = load("main");
    let tie = rated(&main, NeitherPolicy::Tie, 0);
    let drop = rated(&main, NeitherPolicy::Drop, 0);
    assert!(
        tie.methods
            .iter()
            .any(|m| (m.rating - rating_of(&drop, &m.method)).abs() > 1.0)
    );
    assert!(tie.comparisons > drop.comparisons);
}

#[test]
fn groups_that_never_met_average_the_anchor_each() {
    let case = load("disconnected");
    let q = rated(&case, NeitherPolicy::Tie, 200);
    assert_eq!(q.components, 2);
    for group in [["a", "b", "c"].as_slice(), ["d", "e"].as_slice()] {
        let mean = group.iter().map(|m| rating_of(&q, m)).sum::<f64>() / group.len() as f64;
        assert!((mean - 1000.0).abs() < 1e-6, "{group:?}: {mean}");
        let c: Vec<usize> = group
            .iter()
            .map(|m| q.methods.iter().find(|r| r.method == *m).unwrap().component)
            .collect();
        assert!(c.iter().all(|&x| x == c[0]));
    }
    // Each group has a first.
    assert!(q.methods.iter().filter(|m| m.rank == 1).count() >= 2);
}

#[test]
fn a_method_that_never_won_matches_on_what_the_votes_determine() {
    let case = load("separated");
    let reference = &case["arena_rank"]["tie"]["ratings"];
    let q = rated(&case, NeitherPolicy::Tie, 300);
    let loser = "other-identity";
    let others: Vec<&str> = q
        .methods
        .iter()
        .map(|m| m.method.as_str())
        .filter(|m| *m != loser)
        .collect();
    let mut worst = 0f64;
    for a in &others {
        for b in &others {
            let ours = rating_of(&q, a) - rating_of(&q, b);
            let theirs = reference[a].as_f64().unwrap() - reference[b].as_f64().unwrap();
            worst = worst.max((ours - theirs).abs());
        }
    }
    eprintln!(
        "separated: max |Δ difference| among the others = {worst:.4}; arena-rank put the loser \
         at {:.0}, idforge at {:.0}",
        reference[loser].as_f64().unwrap(),
        rating_of(&q, loser)
    );
    assert!(worst <= RATING_TOL, "{worst}");
    let l = q.methods.iter().find(|m| m.method == loser).unwrap();
    assert!(l.separated && l.rating.is_finite() && l.wins == 0 && l.ties == 0);
    assert_eq!(l.rank, q.methods.len());
    assert_eq!(q.methods.last().unwrap().method, loser);
    for m in q.methods.iter().filter(|m| m.method != loser) {
        assert!(!m.separated);
        assert!(l.hi.unwrap() < m.lo.unwrap(), "{l:?} vs {m:?}");
    }
    // arena-rank agrees that it is far below (its number itself is the optimiser's).
    let lowest_other = others
        .iter()
        .map(|m| reference[m].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    assert!(reference[loser].as_f64().unwrap() < lowest_other - 500.0);
    // The others average 1000: the loser does not move them.
    let mean = others.iter().map(|m| rating_of(&q, m)).sum::<f64>() / others.len() as f64;
    assert!((mean - 1000.0).abs() < 1e-6, "{mean}");
}

/// arena-rank's resample `b` as pair counts, with arena-rank's method indices.
fn replay_counts(replay: &Value, b: usize) -> PairCounts {
    let n = replay["competitors"].as_array().unwrap().len();
    let rows = replay["rows"].as_array().unwrap();
    let counts = replay["counts"][b].as_array().unwrap();
    let mut cells: BTreeMap<(usize, usize), [f64; 3]> = BTreeMap::new();
    for (row, c) in rows.iter().zip(counts) {
        let (a, bb, o) = (
            row[0].as_u64().unwrap() as usize,
            row[1].as_u64().unwrap() as usize,
            row[2].as_f64().unwrap(),
        );
        let c = c.as_f64().unwrap();
        let (i, j, win_i) = if a < bb { (a, bb, o) } else { (bb, a, 1.0 - o) };
        let cell = cells.entry((i, j)).or_default();
        if o == 0.5 {
            cell[2] += c;
        } else if win_i == 1.0 {
            cell[0] += c;
        } else {
            cell[1] += c;
        }
    }
    PairCounts {
        methods: n,
        pairs: cells
            .into_iter()
            .map(|((i, j), c)| PairCell {
                i,
                j,
                wins_i: c[0],
                wins_j: c[1],
                ties: c[2],
            })
            .collect(),
    }
}

fn to_points(theta: f64) -> f64 {
    1000.0 + points_per_nat() * theta
}

#[test]
fn arena_ranks_own_resamples_refit_to_its_intervals() {
    let case = load("main");
    let boot = &case["bootstrap"];
    let replay = &boot["replay"];
    let names: Vec<&str> = replay["competitors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    let resamples = boot["resamples"].as_u64().unwrap() as usize;
    let mut samples = vec![Vec::new(); names.len()];
    let mut worst = 0f64;
    for b in 0..resamples {
        let f = fit(&replay_counts(replay, b));
        for (m, t) in f.theta.iter().enumerate() {
            let ours = to_points(*t);
            let theirs = replay["ratings"][b][m].as_f64().unwrap();
            worst = worst.max((ours - theirs).abs());
            samples[m].push(ours);
        }
    }
    eprintln!("bootstrap replay: max |Δ rating| over {resamples} resamples = {worst:.4}");
    assert!(worst <= REPLAY_TOL, "{worst}");
    let mut worst_bound = 0f64;
    for (m, name) in names.iter().enumerate() {
        let lo = quantile(&samples[m], 0.025).unwrap();
        let hi = quantile(&samples[m], 0.975).unwrap();
        worst_bound = worst_bound
            .max((lo - boot["lo"][name].as_f64().unwrap()).abs())
            .max((hi - boot["hi"][name].as_f64().unwrap()).abs());
    }
    eprintln!("bootstrap replay: max |Δ bound| = {worst_bound:.4}");
    assert!(worst_bound <= REPLAY_TOL, "{worst_bound}");
}

/// The standard normal density at `x`.
fn phi(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

#[test]
fn own_bootstrap_agrees_within_monte_carlo_error() {
    let case = load("main");
    let boot = &case["bootstrap"];
    let q = rated(&case, NeitherPolicy::Tie, 1000);
    let b_ref = boot["resamples"].as_f64().unwrap();
    // Standard error of a 2.5 % quantile per unit of standard deviation, per resample count.
    let per_sd = (0.025f64 * 0.975).sqrt() / phi(1.959_964);
    let mut report = Vec::new();
    for m in &q.methods {
        let s = boot["sd"][&m.method].as_f64().unwrap();
        let tol = 4.0 * per_sd * s * (1.0 / b_ref + 1.0 / 1000.0).sqrt();
        let dlo = m.lo.unwrap() - boot["lo"][&m.method].as_f64().unwrap();
        let dhi = m.hi.unwrap() - boot["hi"][&m.method].as_f64().unwrap();
        report.push(format!(
            "{}: Δlo {dlo:+.2}, Δhi {dhi:+.2} (tolerance {tol:.2}; width {:.1} vs {:.1})",
            m.method,
            m.hi.unwrap() - m.lo.unwrap(),
            boot["hi"][&m.method].as_f64().unwrap() - boot["lo"][&m.method].as_f64().unwrap()
        ));
        assert!(
            dlo.abs() <= tol && dhi.abs() <= tol,
            "{}",
            report.join("\n")
        );
        assert!(m.lo.unwrap() < m.rating && m.rating < m.hi.unwrap());
    }
    eprintln!("{}", report.join("\n"));

    // The spread itself, from the same kind of draws.
    let (comparisons, _) = comparisons_from_votes(&votes(&case), NeitherPolicy::Tie);
    let (names, counts) = pair_counts(&comparisons);
    let draws = bootstrap(&counts, 1000, 0);
    for (m, name) in names.iter().enumerate() {
        let v: Vec<f64> = draws.iter().map(|d| to_points(d[m])).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        let theirs = boot["sd"][name].as_f64().unwrap();
        eprintln!("{name}: bootstrap sd {sd:.2} vs arena-rank {theirs:.2}");
        assert!(
            (sd / theirs - 1.0).abs() <= SD_RATIO_TOL,
            "{name}: {sd} vs {theirs}"
        );
    }
}

/// Method names (sorted) and the pair counts of `comparisons`, as `ratings::rate` builds them.
fn pair_counts(comparisons: &[Comparison]) -> (Vec<String>, PairCounts) {
    let mut names: Vec<String> = comparisons
        .iter()
        .flat_map(|c| [c.method_a.clone(), c.method_b.clone()])
        .collect();
    names.sort();
    names.dedup();
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut cells: BTreeMap<(usize, usize), [f64; 3]> = BTreeMap::new();
    for c in comparisons {
        let (a, b) = (index[c.method_a.as_str()], index[c.method_b.as_str()]);
        let (i, j, flip) = if a < b { (a, b, false) } else { (b, a, true) };
        let k = match (c.outcome, flip) {
            (Outcome::Tie, _) => 2,
            (Outcome::A, false) | (Outcome::B, true) => 0,
            _ => 1,
        };
        cells.entry((i, j)).or_default()[k] += 1.0;
    }
    let counts = PairCounts {
        methods: names.len(),
        pairs: cells
            .into_iter()
            .map(|((i, j), c)| PairCell {
                i,
                j,
                wins_i: c[0],
                wins_j: c[1],
                ties: c[2],
            })
            .collect(),
    };
    (names, counts)
}

#[test]
fn agreement_matches_krippendorff() {
    for name in ["main", "small", "separated", "disconnected"] {
        let case = load(name);
        for neither in ["tie", "drop"] {
            let Some(want) = case["agreement"].get(neither) else {
                continue;
            };
            let a = rated(&case, policy(neither), 0).agreement;
            let ctx = format!("{name}/{neither}: {a:?} vs {want}");
            assert_eq!(a.units as u64, want["units"].as_u64().unwrap(), "{ctx}");
            assert_eq!(a.answers as u64, want["answers"].as_u64().unwrap(), "{ctx}");
            assert_eq!(
                a.rater_pairs as u64,
                want["rater_pairs"].as_u64().unwrap(),
                "{ctx}"
            );
            assert!(
                (a.percent.unwrap() - want["percent"].as_f64().unwrap()).abs() <= AGREEMENT_TOL,
                "{ctx}"
            );
            assert!(
                (a.krippendorff_alpha.unwrap() - want["alpha"].as_f64().unwrap()).abs()
                    <= AGREEMENT_TOL,
                "{ctx}"
            );
        }
    }
}

/// The timing half of `tools/arena-reference/time-ratings`: idforge on the votes its Python half
/// wrote (10 methods, 100 000 votes), one JSON line per measurement (the median of 5 runs).
#[test]
#[ignore = "timing; run by tools/arena-reference/time-ratings"]
fn timing_on_100k_votes() {
    let path = std::env::var("IDFORGE_ARENA_TIMING_VOTES")
        .expect("IDFORGE_ARENA_TIMING_VOTES: the votes file time_ratings.py wrote");
    let case: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let rows = votes(&case);
    let cores = rayon::current_num_threads();
    let median = |f: &mut dyn FnMut()| {
        let mut t: Vec<f64> = (0..5)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64()
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[2]
    };
    let line = |what: &str, seconds: f64, resamples: usize| {
        println!(
            "{{\"side\": \"idforge\", \"what\": \"{what}\", \"seconds\": {seconds:.6}, \"votes\": {}, \
             \"methods\": {}, \"resamples\": {resamples}, \"cores\": {cores}}}",
            rows.len(),
            case["methods"].as_array().unwrap().len()
        );
    };
    let (comparisons, _) = comparisons_from_votes(&rows, NeitherPolicy::Tie);
    line(
        "votes to comparisons",
        median(&mut || {
            comparisons_from_votes(&rows, NeitherPolicy::Tie);
        }),
        0,
    );
    let (_, counts) = pair_counts(&comparisons);
    line(
        "aggregate to pair counts and fit",
        median(&mut || {
            fit(&pair_counts(&comparisons).1);
        }),
        0,
    );
    line(
        "fit on pair counts",
        median(&mut || {
            fit(&counts);
        }),
        0,
    );
    for resamples in [100, 1000] {
        line(
            "bootstrap on pair counts",
            median(&mut || {
                bootstrap(&counts, resamples, 0);
            }),
            resamples,
        );
    }
    for resamples in [0, 1000] {
        let opts = RatingOptions {
            resamples,
            ..RatingOptions::default()
        };
        line(
            "rate: comparisons to ratings, intervals, win rates, agreement",
            median(&mut || {
                let q = rate(&comparisons, &opts).unwrap();
                assert_eq!(q[0].comparisons, rows.len());
            }),
            resamples,
        );
    }
}
