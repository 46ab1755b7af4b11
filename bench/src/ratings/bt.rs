//! The Bradley–Terry fit on pair counts: Newton's method on the log-likelihood with a weak
//! Gaussian prior, the anchoring of each connected group of methods, and the multinomial
//! bootstrap.
//!
//! Ratings here are in natural units (`θ`, log-odds): method `i` beats `j` with probability
//! `σ(θ_i − θ_j)`. [`super`] turns them into the LMArena scale.
//!
//! Every comparison enters once, whatever its order on screen: `n` games between two methods
//! are a binomial observation of their difference, and a tie adds half a win to each side (the
//! outcome 0.5 of arena-rank's `loss_function`). The fit needs only the three counts per pair,
//! so 100 000 votes cost what 45 pairs cost.

use rand::Rng;
use rand_distr::{Binomial, Distribution};
use rayon::prelude::*;

use crate::stats::bootstrap::substream;

/// The prior's standard deviation on every `θ`, in natural units (10 nats = 1737 rating
/// points). It changes nothing where the maximum-likelihood estimate exists (about 0.03 rating
/// points for a method with 300 games) and makes the fit finite where it does not: a method
/// that never won, or one that never lost, has no finite maximum-likelihood rating.
pub const PRIOR_SD: f64 = 10.0;

/// The games between two methods `i < j` (indices into the caller's method list).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairCell {
    /// The first method (the smaller index).
    pub i: usize,
    /// The second method.
    pub j: usize,
    /// Games `i` won.
    pub wins_i: f64,
    /// Games `j` won.
    pub wins_j: f64,
    /// Games tied (each counts half a win for both sides).
    pub ties: f64,
}

impl PairCell {
    /// Games played.
    pub fn games(&self) -> f64 {
        self.wins_i + self.wins_j + self.ties
    }
}

/// The data of one fit: how many methods, and the counts of every pair that met.
#[derive(Debug, Clone, PartialEq)]
pub struct PairCounts {
    /// Number of methods; every index in `pairs` is below it.
    pub methods: usize,
    /// One cell per pair that played at least once, `i < j`, no pair twice.
    pub pairs: Vec<PairCell>,
}

/// A fitted rating vector and how it was anchored.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    /// Ratings in natural units; within each connected component the methods of its reference
    /// group average 0.
    pub theta: Vec<f64>,
    /// The connected component of each method (methods that never met, directly or through
    /// others, are not comparable: each component has its own anchor). Numbered from 0 in
    /// order of their first method.
    pub component: Vec<usize>,
    /// Whether the method lies outside its component's reference group: it never won (or
    /// never lost) against the rest, directly or through others, so its distance from the
    /// others is set by the prior, not by the votes.
    pub separated: Vec<bool>,
    /// Newton iterations used.
    pub iterations: usize,
}

/// `ln(1 + e^x)` without overflow.
fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// `1 / (1 + e^−x)` without overflow.
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// The log-posterior (up to a constant): the log-likelihood of the counts and the prior.
fn objective(counts: &PairCounts, theta: &[f64], lambda: f64) -> f64 {
    let mut f = -0.5 * lambda * theta.iter().map(|t| t * t).sum::<f64>();
    for c in &counts.pairs {
        let d = theta[c.i] - theta[c.j];
        f += (c.wins_i + 0.5 * c.ties) * d - c.games() * softplus(d);
    }
    f
}

/// Solves `a x = b` for a symmetric positive definite `a` (row-major `n × n`) by Cholesky;
/// `None` if `a` is not positive definite to working precision.
fn cholesky_solve(a: &[f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                // Not positive (or NaN): not positive definite.
                if s.is_nan() || s <= 0.0 {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    let mut y = b.to_vec();
    for i in 0..n {
        for k in 0..i {
            y[i] -= l[i * n + k] * y[k];
        }
        y[i] /= l[i * n + i];
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            y[i] -= l[k * n + i] * y[k];
        }
        y[i] /= l[i * n + i];
    }
    Some(y)
}

/// Newton steps stop once no rating moves more than this (natural units; 2e-8 rating points).
const STEP_TOL: f64 = 1e-10;
/// More than enough: Newton on this concave objective converges in about 10 steps, 30 when
/// the prior has to hold a separated method.
const MAX_ITER: usize = 200;

/// Fits the ratings to `counts` by Newton's method on the log-posterior (the Bradley–Terry
/// log-likelihood, ties as half a win each, plus the [`PRIOR_SD`] prior), then anchors each
/// component so that its reference group averages 0.
///
/// The reference group of a component is its largest set of methods that all beat or tied
/// each other through chains of games (a strongly connected component of the "beat or tied"
/// graph; ties broken by games played, then by index). In the usual case it is the whole
/// component, the maximum-likelihood estimate exists, and this is arena-rank's result: its
/// optimiser starts at 0 and never moves the mean.
pub fn fit(counts: &PairCounts) -> Fit {
    let n = counts.methods;
    let lambda = 1.0 / (PRIOR_SD * PRIOR_SD);
    let mut theta = vec![0.0; n];
    let mut iterations = 0;
    if n > 0 {
        let mut f = objective(counts, &theta, lambda);
        let mut grad = vec![0.0; n];
        let mut hess = vec![0.0; n * n];
        while iterations < MAX_ITER {
            iterations += 1;
            for (i, g) in grad.iter_mut().enumerate() {
                *g = -lambda * theta[i];
            }
            hess.fill(0.0);
            for i in 0..n {
                hess[i * n + i] = lambda;
            }
            for c in &counts.pairs {
                let p = sigmoid(theta[c.i] - theta[c.j]);
                let games = c.games();
                let g = c.wins_i + 0.5 * c.ties - games * p;
                grad[c.i] += g;
                grad[c.j] -= g;
                let h = games * p * (1.0 - p);
                hess[c.i * n + c.i] += h;
                hess[c.j * n + c.j] += h;
                hess[c.i * n + c.j] -= h;
                hess[c.j * n + c.i] -= h;
            }
            let Some(step) = cholesky_solve(&hess, &grad, n) else {
                break;
            };
            // Backtracking keeps every step an ascent; full steps near the optimum.
            let mut t = 1.0;
            let mut next: Vec<f64>;
            loop {
                next = theta.iter().zip(&step).map(|(a, s)| a + t * s).collect();
                let fn_ = objective(counts, &next, lambda);
                if fn_ >= f - 1e-12 * f.abs().max(1.0) || t < 1e-8 {
                    f = fn_;
                    break;
                }
                t *= 0.5;
            }
            let moved = step.iter().map(|s| (t * s).abs()).fold(0.0, f64::max);
            theta = next;
            if moved < STEP_TOL {
                break;
            }
        }
    }
    let (component, separated, reference) = structure(counts);
    anchor(&mut theta, &component, &reference);
    Fit {
        theta,
        component,
        separated,
        iterations,
    }
}

/// Shifts each component so the mean of its reference group is 0.
fn anchor(theta: &mut [f64], component: &[usize], reference: &[bool]) {
    let k = component.iter().copied().max().map_or(0, |m| m + 1);
    let mut sum = vec![0.0; k];
    let mut count = vec![0usize; k];
    for i in 0..theta.len() {
        if reference[i] {
            sum[component[i]] += theta[i];
            count[component[i]] += 1;
        }
    }
    for i in 0..theta.len() {
        let c = component[i];
        if count[c] > 0 {
            theta[i] -= sum[c] / count[c] as f64;
        }
    }
}

/// Components of the "played" graph, and per method whether it is outside its component's
/// reference group (`separated`) and inside it (`reference`).
fn structure(counts: &PairCounts) -> (Vec<usize>, Vec<bool>, Vec<bool>) {
    let n = counts.methods;
    // Components: union-find over the pairs that played.
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    for c in &counts.pairs {
        if c.games() > 0.0 {
            let (a, b) = (root(&mut parent, c.i), root(&mut parent, c.j));
            if a != b {
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut label = vec![usize::MAX; n];
    let mut next = 0;
    let component: Vec<usize> = (0..n)
        .map(|i| {
            let r = root(&mut parent, i);
            if label[r] == usize::MAX {
                label[r] = next;
                next += 1;
            }
            label[r]
        })
        .collect();

    // "i beat or tied j": an edge i → j.
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut into: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut games = vec![0.0; n];
    for c in &counts.pairs {
        if c.wins_i + c.ties > 0.0 {
            out[c.i].push(c.j);
            into[c.j].push(c.i);
        }
        if c.wins_j + c.ties > 0.0 {
            out[c.j].push(c.i);
            into[c.i].push(c.j);
        }
        games[c.i] += c.games();
        games[c.j] += c.games();
    }
    let scc = strongly_connected(&out, &into);

    // Per component, the largest strongly connected group; ties: most games, then lowest index.
    let groups = scc.iter().copied().max().map_or(0, |m| m + 1);
    let mut size = vec![0usize; groups];
    let mut played = vec![0.0; groups];
    let mut first = vec![usize::MAX; groups];
    for i in 0..n {
        size[scc[i]] += 1;
        played[scc[i]] += games[i];
        first[scc[i]] = first[scc[i]].min(i);
    }
    let mut best: Vec<Option<usize>> = vec![None; next];
    for i in 0..n {
        let (c, g) = (component[i], scc[i]);
        let better = match best[c] {
            None => true,
            Some(b) => {
                (size[g], played[g], std::cmp::Reverse(first[g])).partial_cmp(&(
                    size[b],
                    played[b],
                    std::cmp::Reverse(first[b]),
                )) == Some(std::cmp::Ordering::Greater)
            }
        };
        if better {
            best[c] = Some(g);
        }
    }
    let reference: Vec<bool> = (0..n).map(|i| best[component[i]] == Some(scc[i])).collect();
    let separated = reference.iter().map(|r| !r).collect();
    (component, separated, reference)
}

/// Kosaraju's strongly connected components, iteratively (no recursion depth limit): a group
/// label per node.
fn strongly_connected(out: &[Vec<usize>], into: &[Vec<usize>]) -> Vec<usize> {
    let n = out.len();
    let mut order = Vec::with_capacity(n);
    let mut seen = vec![false; n];
    for s in 0..n {
        if seen[s] {
            continue;
        }
        seen[s] = true;
        let mut stack = vec![(s, 0usize)];
        while let Some(&mut (v, ref mut k)) = stack.last_mut() {
            if *k < out[v].len() {
                let w = out[v][*k];
                *k += 1;
                if !seen[w] {
                    seen[w] = true;
                    stack.push((w, 0));
                }
            } else {
                order.push(v);
                stack.pop();
            }
        }
    }
    let mut group = vec![usize::MAX; n];
    let mut next = 0;
    for &s in order.iter().rev() {
        if group[s] != usize::MAX {
            continue;
        }
        group[s] = next;
        let mut stack = vec![s];
        while let Some(v) = stack.pop() {
            for &w in &into[v] {
                if group[w] == usize::MAX {
                    group[w] = next;
                    stack.push(w);
                }
            }
        }
        next += 1;
    }
    group
}

/// One multinomial resample of the games: as many games as there are, each drawn with
/// replacement from all of them (arena-rank's `jax.random.multinomial` over its unique
/// (a, b, outcome) rows, which is the same distribution), by sequential binomial draws over the
/// outcome cells.
pub fn resample(counts: &PairCounts, rng: &mut impl Rng) -> PairCounts {
    // Counts are whole games; integer bookkeeping gives the last cell exactly what is left.
    let whole = |c: f64| c.max(0.0).round() as u64;
    let mut mass: u64 = counts
        .pairs
        .iter()
        .map(|c| whole(c.wins_i) + whole(c.wins_j) + whole(c.ties))
        .sum();
    let mut left = mass;
    let mut draw = |c: f64| -> f64 {
        let c = whole(c);
        if c == 0 || left == 0 {
            return 0.0;
        }
        let p = c as f64 / mass as f64;
        let last = c == mass;
        mass -= c;
        let x = if last {
            left
        } else {
            Binomial::new(left, p).map_or(0, |b| b.sample(rng))
        };
        left -= x;
        x as f64
    };
    let pairs = counts
        .pairs
        .iter()
        .map(|c| PairCell {
            i: c.i,
            j: c.j,
            wins_i: draw(c.wins_i),
            wins_j: draw(c.wins_j),
            ties: draw(c.ties),
        })
        .collect();
    PairCounts {
        methods: counts.methods,
        pairs,
    }
}

/// The fitted ratings (natural units, anchored as [`fit`] does) of `resamples` multinomial
/// resamples of `counts`, in resample order. Resample `r` draws from its own generator
/// (`seed`, `r`), so the result depends on the seed only, not on the threads.
pub fn bootstrap(counts: &PairCounts, resamples: usize, seed: u64) -> Vec<Vec<f64>> {
    (0..resamples)
        .into_par_iter()
        .map(|r| {
            let mut rng = substream(seed, r as u64);
            fit(&resample(counts, &mut rng)).theta
        })
        .collect()
}

/// numpy's default (linear) quantile `q` of `values` (sorted here); `None` without values.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    Some(v[lo] + (pos - lo as f64) * (v[hi] - v[lo]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(i: usize, j: usize, wi: f64, wj: f64, t: f64) -> PairCell {
        PairCell {
            i,
            j,
            wins_i: wi,
            wins_j: wj,
            ties: t,
        }
    }

    #[test]
    fn two_methods_have_the_closed_form() {
        // 30 wins, 10 losses, 10 ties: p = 35/50, θ_0 − θ_1 = logit(0.7), minus the prior's
        // pull (below 1e-4 here).
        let counts = PairCounts {
            methods: 2,
            pairs: vec![cell(0, 1, 30.0, 10.0, 10.0)],
        };
        let f = fit(&counts);
        let d = f.theta[0] - f.theta[1];
        let exact = (0.7f64 / 0.3).ln();
        assert!((d - exact).abs() < 1e-3, "{d} vs {exact}");
        assert!(d < exact, "the prior pulls towards 0");
        assert!((f.theta[0] + f.theta[1]).abs() < 1e-12);
        assert_eq!(f.separated, [false, false]);
    }

    #[test]
    fn a_method_that_never_wins_is_held_by_the_prior_and_flagged() {
        let counts = PairCounts {
            methods: 3,
            pairs: vec![
                cell(0, 1, 20.0, 20.0, 0.0),
                cell(0, 2, 10.0, 0.0, 0.0),
                cell(1, 2, 10.0, 0.0, 0.0),
            ],
        };
        let f = fit(&counts);
        assert!(f.theta.iter().all(|t| t.is_finite()));
        assert_eq!(f.separated, [false, false, true]);
        // The reference group (0, 1) averages 0; the loser is far below.
        assert!((f.theta[0] + f.theta[1]).abs() < 1e-12);
        assert!(f.theta[0].abs() < 1e-9, "{:?}", f.theta);
        assert!(f.theta[2] < -4.0, "{:?}", f.theta);
    }

    #[test]
    fn components_are_anchored_separately() {
        let counts = PairCounts {
            methods: 4,
            pairs: vec![cell(0, 1, 30.0, 10.0, 0.0), cell(2, 3, 5.0, 15.0, 0.0)],
        };
        let f = fit(&counts);
        assert_eq!(f.component, [0, 0, 1, 1]);
        assert!((f.theta[0] + f.theta[1]).abs() < 1e-12);
        assert!((f.theta[2] + f.theta[3]).abs() < 1e-12);
        assert!(f.theta[0] > 0.0 && f.theta[2] < 0.0);
    }

    #[test]
    fn resampling_keeps_the_number_of_games() {
        let counts = PairCounts {
            methods: 3,
            pairs: vec![cell(0, 1, 7.0, 3.0, 2.0), cell(1, 2, 0.0, 5.0, 1.0)],
        };
        let mut rng = substream(3, 4);
        for _ in 0..50 {
            let r = resample(&counts, &mut rng);
            let total: f64 = r.pairs.iter().map(PairCell::games).sum();
            assert_eq!(total, 18.0);
            // A cell with no games never gains any.
            assert_eq!(r.pairs[1].wins_i, 0.0);
        }
        assert_eq!(bootstrap(&counts, 20, 9), bootstrap(&counts, 20, 9));
        assert_ne!(bootstrap(&counts, 20, 9), bootstrap(&counts, 20, 10));
    }

    #[test]
    fn quantiles_follow_numpy() {
        // np.quantile([4, 1, 3, 2], [0.025, 0.975]) = [1.075, 3.925]
        let v = [4.0, 1.0, 3.0, 2.0];
        assert!((quantile(&v, 0.025).unwrap() - 1.075).abs() < 1e-12);
        assert!((quantile(&v, 0.975).unwrap() - 3.925).abs() < 1e-12);
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn strongly_connected_groups() {
        // 0 ⇄ 1 → 2, 3 alone.
        let out = vec![vec![1, 2], vec![0], vec![], vec![]];
        let into = vec![vec![1], vec![0], vec![0], vec![]];
        let g = strongly_connected(&out, &into);
        assert_eq!(g[0], g[1]);
        assert_ne!(g[0], g[2]);
        assert_ne!(g[2], g[3]);
    }
}
