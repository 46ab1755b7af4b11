//! The `rules` splitter against the hand-split prompts in `datasets/prompts/validation.toml`.
//!
//! The expected splits were written before the rules were tuned; this test holds the rules to
//! them (exact match rate and per-part token F1) and checks that no word is lost or invented.

use std::collections::HashMap;
use std::path::PathBuf;

use idforge_caption::rules::{DROPPABLE_JOINERS, SplitPrompt, split};
use serde::Deserialize;

/// Fraction of prompts whose three parts must all match exactly (after normalisation).
/// Measured: 113 of 115; the two misses are marked "known miss" in the set.
const MIN_EXACT_RATE: f64 = 0.98;
/// Floor on the mean token F1 of each part over the set (measured: general 0.996,
/// background 1.000, body 0.997).
const MIN_PART_F1: f64 = 0.99;

#[derive(Deserialize)]
struct Validation {
    version: u32,
    prompt: Vec<Prompt>,
}

#[derive(Deserialize)]
struct Prompt {
    text: String,
    general: String,
    background: String,
    body: String,
    #[allow(dead_code)]
    note: Option<String>,
}

fn load() -> Validation {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../datasets/prompts/validation.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whitespace collapsed, lowercased, trailing punctuation removed.
fn normalise(s: &str) -> String {
    let s = s
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    s.trim_end_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace())
        .to_string()
}

/// Lowercased words with surrounding punctuation stripped.
fn words(s: &str) -> Vec<String> {
    s.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

fn counts(ws: &[String]) -> HashMap<&str, i64> {
    let mut m = HashMap::new();
    for w in ws {
        *m.entry(w.as_str()).or_default() += 1;
    }
    m
}

/// Token F1 between two texts' word multisets; two empty texts score 1.
fn f1(expected: &str, got: &str) -> f64 {
    let (e, g) = (words(expected), words(got));
    if e.is_empty() && g.is_empty() {
        return 1.0;
    }
    let (ce, cg) = (counts(&e), counts(&g));
    let common: i64 = ce
        .iter()
        .map(|(w, n)| (*n).min(*cg.get(w).unwrap_or(&0)))
        .sum();
    if common == 0 {
        return 0.0;
    }
    let p = common as f64 / g.len() as f64;
    let r = common as f64 / e.len() as f64;
    2.0 * p * r / (p + r)
}

fn parts(s: &SplitPrompt) -> [&str; 3] {
    [&s.general, &s.background, &s.body]
}

#[test]
fn validation_set_exact_match_and_f1() {
    let v = load();
    assert_eq!(v.version, 1);
    assert!(v.prompt.len() >= 40, "{} prompts", v.prompt.len());
    let mut exact = 0;
    let mut f1_sum = [0.0; 3];
    let mut report = String::new();
    for p in &v.prompt {
        let got = split(&p.text);
        let want = [p.general.as_str(), p.background.as_str(), p.body.as_str()];
        let ok = want
            .iter()
            .zip(parts(&got))
            .all(|(w, g)| normalise(w) == normalise(g));
        for (i, (w, g)) in want.iter().zip(parts(&got)).enumerate() {
            f1_sum[i] += f1(w, g);
        }
        if ok {
            exact += 1;
        } else {
            report.push_str(&format!("\n{}\n", p.text));
            for ((name, w), g) in ["general", "background", "body"]
                .iter()
                .zip(want)
                .zip(parts(&got))
            {
                let mark = if normalise(w) == normalise(g) {
                    " "
                } else {
                    "✗"
                };
                report.push_str(&format!(
                    "  {mark} {name:<10} want {w:?}\n  {mark} {:<10} got  {g:?}\n",
                    ""
                ));
            }
        }
    }
    let n = v.prompt.len() as f64;
    let rate = exact as f64 / n;
    let f1s = f1_sum.map(|s| s / n);
    println!(
        "exact {exact}/{} = {rate:.3}; token F1 general {:.3} background {:.3} body {:.3}{report}",
        v.prompt.len(),
        f1s[0],
        f1s[1],
        f1s[2]
    );
    assert!(
        rate >= MIN_EXACT_RATE,
        "exact-match rate {rate:.3} < {MIN_EXACT_RATE}{report}"
    );
    for (name, f) in ["general", "background", "body"].iter().zip(f1s) {
        assert!(
            f >= MIN_PART_F1,
            "{name} token F1 {f:.3} < {MIN_PART_F1}{report}"
        );
    }
}

/// Every word of the caption is in exactly one part; only `DROPPABLE_JOINERS` may go missing,
/// and nothing is added.
#[test]
fn validation_set_preserves_words() {
    for p in &load().prompt {
        let got = split(&p.text);
        let input = words(&p.text);
        let output: Vec<String> = parts(&got).iter().flat_map(|s| words(s)).collect();
        let (ci, co) = (counts(&input), counts(&output));
        for (w, n) in &co {
            let have = ci.get(w).copied().unwrap_or(0);
            assert!(
                *n <= have,
                "{w:?} appears {n}x in the parts, {have}x in {:?}",
                p.text
            );
        }
        for (w, n) in &ci {
            let out = co.get(w).copied().unwrap_or(0);
            assert!(
                out == *n || (out < *n && DROPPABLE_JOINERS.contains(w)),
                "{w:?}: {n}x in {:?}, {out}x in {got:?}",
                p.text
            );
        }
        // Parts are trimmed and never end in punctuation.
        for part in parts(&got) {
            assert_eq!(part, part.trim());
            assert!(!part.ends_with(['.', ',', ';', ':']), "{part:?}");
        }
    }
}

/// The expected splits obey the same word-preservation contract, so the set itself is coherent.
#[test]
fn validation_expectations_preserve_words() {
    for p in &load().prompt {
        let input = counts(&words(&p.text))
            .into_iter()
            .map(|(w, n)| (w.to_string(), n))
            .collect::<HashMap<_, _>>();
        let expected: Vec<String> = [&p.general, &p.background, &p.body]
            .iter()
            .flat_map(|s| words(s))
            .collect();
        let ce = counts(&expected);
        for (w, n) in &input {
            let e = ce.get(w.as_str()).copied().unwrap_or(0);
            assert!(
                e == *n || (e < *n && DROPPABLE_JOINERS.contains(&w.as_str())),
                "expectation for {:?}: {w:?} {n}x in text, {e}x in parts",
                p.text
            );
        }
        for (w, n) in &ce {
            assert!(
                input.get(*w).copied().unwrap_or(0) >= *n,
                "expectation for {:?} adds {w:?}",
                p.text
            );
        }
    }
}
