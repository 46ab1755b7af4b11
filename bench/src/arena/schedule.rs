//! Which pair a rater sees next: the method pair with the fewest shown pairs for the question,
//! then, within it, the item with the fewest, ties broken at random; never an item the rater
//! has already seen for that question. Left and right are drawn at random.
//!
//! Counts are of pairs *served* (answered or still on a rater's screen), not of answers, so
//! raters working at the same moment spread over the pairs instead of all getting the least
//! answered one. Practice tasks are not counted: they are not rated.

use std::collections::{HashMap, HashSet};

use idforge_core::schema::Question;
use rand::Rng;

use super::items::ArenaItems;
use super::store::TaskRow;

/// The next pair for a rater.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    /// Index of the item in [`ArenaItems::items`].
    pub item: usize,
    /// The method shown on the left.
    pub left: String,
    /// The method shown on the right.
    pub right: String,
}

fn qi(q: Question) -> usize {
    match q {
        Question::Fidelity => 0,
        Question::Adherence => 1,
    }
}

/// The scheduler's counts, rebuilt from the tasks table at start.
#[derive(Debug, Clone)]
pub struct Scheduler {
    methods: Vec<String>,
    method_index: HashMap<String, usize>,
    /// Method pairs (a < b) that share at least one item.
    pairs: Vec<(usize, usize)>,
    pair_index: HashMap<(usize, usize), usize>,
    /// Per pair, the items that have both methods.
    pair_items: Vec<Vec<usize>>,
    /// Per question, shown (non-practice) pairs per method pair.
    pair_counts: [Vec<u64>; 2],
    /// Per question, shown (non-practice) pairs per item.
    item_counts: [Vec<u64>; 2],
    /// Per rater, the (question, item) pairs already shown.
    seen: HashMap<String, HashSet<(usize, usize)>>,
    /// Per rater, tasks served per question (practice included).
    served: HashMap<String, [u32; 2]>,
}

impl Scheduler {
    /// Empty counts over `items`.
    pub fn new(items: &ArenaItems) -> Self {
        let methods = items.methods.clone();
        let method_index: HashMap<String, usize> = methods
            .iter()
            .enumerate()
            .map(|(i, m)| (m.clone(), i))
            .collect();
        let mut pairs = Vec::new();
        let mut pair_index = HashMap::new();
        let mut pair_items: Vec<Vec<usize>> = Vec::new();
        for (i, item) in items.items.iter().enumerate() {
            let ms: Vec<usize> = item.images.keys().map(|m| method_index[m]).collect();
            for (x, &a) in ms.iter().enumerate() {
                for &b in &ms[x + 1..] {
                    let key = (a.min(b), a.max(b));
                    let p = *pair_index.entry(key).or_insert_with(|| {
                        pairs.push(key);
                        pair_items.push(Vec::new());
                        pairs.len() - 1
                    });
                    pair_items[p].push(i);
                }
            }
        }
        let n_items = items.items.len();
        Scheduler {
            pair_counts: [vec![0; pairs.len()], vec![0; pairs.len()]],
            item_counts: [vec![0; n_items], vec![0; n_items]],
            methods,
            method_index,
            pairs,
            pair_index,
            pair_items,
            seen: HashMap::new(),
            served: HashMap::new(),
        }
    }

    /// Counts the tasks already in the database (after a restart). Tasks of items or methods
    /// the bench folder no longer has still count for the rater's blocks.
    pub fn restore(&mut self, items: &ArenaItems, tasks: &[TaskRow]) {
        for t in tasks {
            self.record(
                &t.rater,
                t.question,
                items.find(&t.item),
                &t.method_left,
                &t.method_right,
                t.practice,
            );
        }
    }

    /// Counts one served task.
    pub fn record(
        &mut self,
        rater: &str,
        question: Question,
        item: Option<usize>,
        left: &str,
        right: &str,
        practice: bool,
    ) {
        let q = qi(question);
        self.served.entry(rater.to_string()).or_default()[q] += 1;
        let Some(item) = item else { return };
        self.seen
            .entry(rater.to_string())
            .or_default()
            .insert((q, item));
        if practice {
            return;
        }
        self.item_counts[q][item] += 1;
        if let (Some(&a), Some(&b)) = (self.method_index.get(left), self.method_index.get(right))
            && let Some(&p) = self.pair_index.get(&(a.min(b), a.max(b)))
        {
            self.pair_counts[q][p] += 1;
        }
    }

    /// The next pair for `rater` on `question`, or `None` when the rater has seen every item.
    pub fn pick(&self, rater: &str, question: Question, rng: &mut impl Rng) -> Option<Pick> {
        let q = qi(question);
        let seen = self.seen.get(rater);
        let mut order: Vec<(u64, u32, usize)> = (0..self.pairs.len())
            .map(|p| (self.pair_counts[q][p], rng.random(), p))
            .collect();
        order.sort_unstable();
        let mut best: Option<((u64, u64, u32), usize, usize)> = None;
        for (pc, _, p) in order {
            if best.as_ref().is_some_and(|(k, _, _)| pc > k.0) {
                break;
            }
            for &item in &self.pair_items[p] {
                if seen.is_some_and(|s| s.contains(&(q, item))) {
                    continue;
                }
                let key = (pc, self.item_counts[q][item], rng.random::<u32>());
                if best.as_ref().is_none_or(|(k, _, _)| key < *k) {
                    best = Some((key, item, p));
                }
            }
        }
        let (_, item, p) = best?;
        let (a, b) = self.pairs[p];
        let (left, right) = if rng.random_bool(0.5) { (a, b) } else { (b, a) };
        Some(Pick {
            item,
            left: self.methods[left].clone(),
            right: self.methods[right].clone(),
        })
    }

    /// Tasks served to `rater` for `question`, practice included.
    pub fn served(&self, rater: &str, question: Question) -> u32 {
        self.served.get(rater).map_or(0, |s| s[qi(question)])
    }

    /// Non-practice pairs of methods `a` and `b` served for `question`.
    pub fn pair_count(&self, question: Question, a: &str, b: &str) -> u64 {
        let (Some(&a), Some(&b)) = (self.method_index.get(a), self.method_index.get(b)) else {
            return 0;
        };
        self.pair_index
            .get(&(a.min(b), a.max(b)))
            .map_or(0, |&p| self.pair_counts[qi(question)][p])
    }
}

/// Which question the rater gets next: questions come in blocks (`practice + block` tasks the
/// first time, `block` after), in `questions` order; a question the rater has exhausted is
/// skipped. Returns the candidates in the order to try.
pub fn question_order(
    questions: &[Question],
    served: impl Fn(Question) -> u32,
    practice: u32,
    block: u32,
) -> Vec<Question> {
    let block = block.max(1);
    let done_blocks = |n: u32| {
        if n < practice + block {
            0
        } else {
            1 + (n - practice - block) / block
        }
    };
    let mut order: Vec<(u32, usize, Question)> = questions
        .iter()
        .enumerate()
        .map(|(i, &q)| (done_blocks(served(q)), i, q))
        .collect();
    order.sort();
    order.into_iter().map(|(_, _, q)| q).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::arena::items::ArenaItem;
    use crate::layout::BenchDir;

    fn items(n: usize, methods: &[&str]) -> ArenaItems {
        let items = (0..n)
            .map(|i| ArenaItem {
                set: "s".into(),
                identity: format!("id{i}"),
                prompt_id: "p".into(),
                category: "c".into(),
                seed: 0,
                prompt: "a photo".into(),
                references: vec!["r.png".into()],
                images: methods
                    .iter()
                    .map(|m| (m.to_string(), format!("{m}/{i}.png")))
                    .collect::<BTreeMap<_, _>>(),
            })
            .collect();
        ArenaItems::new(
            BenchDir::new("b"),
            methods.iter().map(|m| m.to_string()).collect(),
            items,
            0,
        )
    }

    #[test]
    fn pairs_are_balanced_and_items_never_repeat() {
        let items = items(6, &["a", "b", "c"]);
        let mut s = Scheduler::new(&items);
        let mut rng = StdRng::seed_from_u64(1);
        // Two raters take turns: every pair is served before any is served twice.
        let mut shown: Vec<(String, usize)> = Vec::new();
        for k in 0..12 {
            let rater = if k % 2 == 0 { "r1" } else { "r2" };
            let p = s.pick(rater, Question::Fidelity, &mut rng).unwrap();
            assert!(!shown.contains(&(rater.to_string(), p.item)), "repeat");
            shown.push((rater.to_string(), p.item));
            s.record(
                rater,
                Question::Fidelity,
                Some(p.item),
                &p.left,
                &p.right,
                false,
            );
            let counts: Vec<u64> = [("a", "b"), ("a", "c"), ("b", "c")]
                .iter()
                .map(|(x, y)| s.pair_count(Question::Fidelity, x, y))
                .collect();
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 1, "unbalanced after {k}: {counts:?}");
        }
        // Each rater has seen all 6 items: nothing left for them on this question.
        assert!(s.pick("r1", Question::Fidelity, &mut rng).is_none());
        assert!(s.pick("r1", Question::Adherence, &mut rng).is_some());
    }

    #[test]
    fn blocks_alternate_after_practice() {
        let qs = Question::ALL;
        let order = |f: u32, a: u32| {
            question_order(&qs, |q| if q == Question::Fidelity { f } else { a }, 2, 3)[0]
        };
        assert_eq!(order(0, 0), Question::Fidelity);
        assert_eq!(order(4, 0), Question::Fidelity);
        assert_eq!(order(5, 0), Question::Adherence);
        assert_eq!(order(5, 4), Question::Adherence);
        assert_eq!(order(5, 5), Question::Fidelity);
        assert_eq!(order(8, 5), Question::Adherence);
    }
}
