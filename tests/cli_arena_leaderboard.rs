//! `idforge bench leaderboard` with the preference arena's votes: a tiny bench (two reference
//! photos, copy-reference's scores written directly, so no network runs), a `votes.parquet`
//! written with `VotesTable`, and the three leaderboard files checked for the arena's ratings;
//! `--votes`, `--neither` and `--arena-bootstrap`, and the errors a user meets.

mod common;

use std::path::{Path, PathBuf};

use idforge_bench::ratings::{NeitherPolicy, RatingOptions, rate_votes};
use idforge_core::schema::{
    Answer, Question, ScoreRow, ScoreStatus, ScoresTable, VoteRow, VotesTable,
};
use serde_json::Value;

use common::{idforge, ok, sample_photos_dir, text};

const PROTOCOL: &str = r#"
[protocol]
name = "arena-test-v1"
version = 1
seeds = [0]
categories = ["style"]

[[sets]]
name = "in-train"

[[prompts]]
id = "style-01"
category = "style"
general = "an oil painting of a {class} {trigger}"
"#;

/// A bench with two identities and copy-reference "scored" (Face-Sim 1 on every job), as
/// `bench score` would leave it, without running a network.
fn make_bench(root: &Path) -> PathBuf {
    let refs = root.join("refs");
    for (k, id) in ["p1", "p2"].iter().enumerate() {
        let d = refs.join("in-train").join(id);
        std::fs::create_dir_all(&d).unwrap();
        // A photo with a face: `bench init` refuses references the face detector finds none in.
        image::open(sample_photos_dir().join(format!("sample{}.jpg", k + 1)))
            .unwrap()
            .save(d.join("ref.png"))
            .unwrap();
    }
    let protocol = root.join("protocol.toml");
    std::fs::write(&protocol, PROTOCOL).unwrap();
    let bench = root.join("bench");
    ok(idforge()
        .args(["bench", "init"])
        .arg(&bench)
        .arg("--protocol")
        .arg(&protocol)
        .arg("--references")
        .arg(&refs));
    let rows = ["p1", "p2"]
        .iter()
        .map(|id| {
            let path = format!("references/in-train/{id}/ref.png");
            ScoreRow {
                method: "copy-reference".into(),
                set: "in-train".into(),
                identity: id.to_string(),
                prompt_id: "style-01".into(),
                category: "style".into(),
                seed: 0,
                path: path.clone(),
                reference: path,
                status: Some(ScoreStatus::Ok),
                error: None,
                image_sha256: None,
                face_embedder: "face-api".into(),
                face_detected: true,
                face_sim: Some(1.0),
                face_box: None,
                face_embedding: None,
                clip_t: None,
                clip_i: None,
                dino: None,
                clip_embedding: None,
                inception_pool3: None,
                inception_logits: None,
            }
        })
        .collect();
    std::fs::create_dir_all(bench.join("scores")).unwrap();
    ScoresTable { rows }
        .write(&bench.join("scores/copy-reference.parquet"))
        .unwrap();
    std::fs::write(
        bench.join("scores/copy-reference.models.json"),
        r#"{"models": {"face_embedder": "face-api", "clip": null, "dino": null, "inception": null},
            "references_sha256": "test"}"#,
    )
    .unwrap();
    bench
}

/// 600 votes between four methods with a clear order on fidelity (and the reverse on
/// adherence), ties and `neither` answers, 6 raters, every tenth a practice answer.
fn votes() -> Vec<VoteRow> {
    let methods = ["photomaker", "instantid", "pulid", "copy-reference"];
    let mut rows = Vec::new();
    for k in 0..600usize {
        let (i, j) = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)][k % 6];
        let question = if (k / 12) % 2 == 0 {
            Question::Fidelity
        } else {
            Question::Adherence
        };
        // The better method (lower index on fidelity, higher on adherence) wins 6 of 10,
        // loses 2, ties 1, and 1 is "neither".
        let better_left = (k / 6) % 2 == 0;
        let (left, right) = if better_left { (i, j) } else { (j, i) };
        let better_wins = match k % 10 {
            0..=5 => Some(true),
            6 | 7 => Some(false),
            _ => None,
        };
        let answer = match (better_wins, k % 10) {
            (None, 8) => Answer::Tie,
            (None, _) => Answer::Neither,
            (Some(w), _) => {
                let fidelity = question == Question::Fidelity;
                // On fidelity the lower index is better; on adherence the higher one.
                let left_is_better = better_left == fidelity;
                if w == left_is_better {
                    Answer::Left
                } else {
                    Answer::Right
                }
            }
        };
        rows.push(VoteRow {
            vote_id: k as i64 + 1,
            rater: format!("rater-{}", (k / 7) % 6),
            question,
            set: "in-train".into(),
            identity: ["p1", "p2"][(k / 6) % 2].into(),
            prompt_id: "style-01".into(),
            seed: 0,
            method_left: methods[left].into(),
            method_right: methods[right].into(),
            answer,
            practice: k % 10 == 3,
            shown_at: 1_700_000_000_000 + k as i64 * 1000,
            answered_at: 1_700_000_000_900 + k as i64 * 1000,
            answer_ms: 900,
        });
    }
    rows
}

fn read_json(bench: &Path) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(bench.join("leaderboard/leaderboard.json")).unwrap(),
    )
    .unwrap()
}

fn question<'a>(lb: &'a Value, q: &str) -> &'a Value {
    lb["arena"]["questions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["question"] == q)
        .unwrap_or_else(|| panic!("no {q} in {}", lb["arena"]))
}

#[test]
fn leaderboard_joins_the_arena_ratings() {
    let tmp = tempfile::tempdir().unwrap();
    let bench = make_bench(tmp.path());

    // No votes yet: no arena section, and nothing said about one.
    ok(idforge().args(["bench", "leaderboard"]).arg(&bench));
    let lb = read_json(&bench);
    assert_eq!(lb["schema_version"], 3);
    assert!(lb["arena"].is_null(), "{}", lb["arena"]);
    let md = std::fs::read_to_string(bench.join("leaderboard/LEADERBOARD.md")).unwrap();
    assert!(!md.contains("Arena"), "{md}");

    // `idforge arena export` writes <bench>/arena/votes.parquet: picked up by default.
    let rows = votes();
    std::fs::create_dir_all(bench.join("arena")).unwrap();
    VotesTable { rows: rows.clone() }
        .write(&bench.join("arena/votes.parquet"))
        .unwrap();
    let out = ok(idforge()
        .args([
            "bench",
            "leaderboard",
            "--arena-bootstrap",
            "200",
            "--seed",
            "5",
        ])
        .arg(&bench));
    assert!(
        text(&out).contains("arena: 540 of 600 votes rated from arena/votes.parquet"),
        "{}",
        text(&out)
    );
    let lb = read_json(&bench);
    let arena = &lb["arena"];
    assert_eq!(arena["source"], "arena/votes.parquet");
    assert_eq!(arena["neither"], "tie");
    assert_eq!(
        (&arena["resamples"], &arena["seed"], &arena["level"]),
        (&Value::from(200), &Value::from(5), &Value::from(0.95))
    );
    assert_eq!(
        (&arena["scale"], &arena["base"], &arena["anchor"]),
        (
            &Value::from(400.0),
            &Value::from(10.0),
            &Value::from(1000.0)
        )
    );
    assert_eq!(arena["votes"]["practice"], 60);
    assert_eq!(arena["votes"]["rated"], 540);

    // Exactly the library's ratings on the same rows and options: the flags reach it.
    let want = rate_votes(
        &rows,
        "arena/votes.parquet",
        &RatingOptions {
            neither: NeitherPolicy::Tie,
            resamples: 200,
            seed: 5,
            level: 0.95,
        },
    )
    .unwrap();
    // Through JSON text both ways: serde_json's float parsing may differ from the value in the
    // last bit, the same way on both sides.
    let want: Value = serde_json::from_str(&serde_json::to_string(&want).unwrap()).unwrap();
    assert_eq!(
        want, *arena,
        "the leaderboard's arena section is rate_votes' result"
    );

    // The order the votes encode: fidelity prefers the first method, adherence the last.
    let order = |q: &str| -> Vec<String> {
        question(&lb, q)["methods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["method"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        order("fidelity"),
        ["photomaker", "instantid", "pulid", "copy-reference"]
    );
    assert_eq!(
        order("adherence"),
        ["copy-reference", "pulid", "instantid", "photomaker"]
    );
    let fid = question(&lb, "fidelity");
    let methods = fid["methods"].as_array().unwrap();
    let mean = methods
        .iter()
        .map(|m| m["rating"].as_f64().unwrap())
        .sum::<f64>()
        / 4.0;
    assert!((mean - 1000.0).abs() < 1e-6, "{mean}");
    for m in methods {
        let (lo, r, hi) = (
            m["lo"].as_f64().unwrap(),
            m["rating"].as_f64().unwrap(),
            m["hi"].as_f64().unwrap(),
        );
        assert!(lo < r && r < hi, "{m}");
        assert_eq!(m["separated"], false);
    }
    assert_eq!(methods[0]["rank"], 1);
    assert_eq!(fid["pairs"].as_array().unwrap().len(), 6);
    assert!(
        fid["agreement"]["units"].as_u64().unwrap() > 0,
        "{}",
        fid["agreement"]
    );

    // Markdown and HTML show it.
    let md = std::fs::read_to_string(bench.join("leaderboard/LEADERBOARD.md")).unwrap();
    let best = &methods[0];
    assert!(md.contains("## Arena — identity fidelity"), "{md}");
    assert!(md.contains("## Arena — prompt adherence"), "{md}");
    assert!(
        md.contains(&format!(
            "| photomaker | 1 | {:.0} | [{:.0}, {:.0}] | {} |",
            best["rating"].as_f64().unwrap(),
            best["lo"].as_f64().unwrap(),
            best["hi"].as_f64().unwrap(),
            best["games"]
        )),
        "{md}"
    );
    assert!(
        md.contains("- **Arena:** `arena/votes.parquet`: 540 votes rated"),
        "{md}"
    );
    let html = std::fs::read_to_string(bench.join("leaderboard/index.html")).unwrap();
    for want in [
        "id=\"arena-fidelity-table\"",
        "id=\"arena-adherence-table\"",
        "id=\"arena-fidelity-wins\"",
        "class=\"chart chart-arena\"",
        "<dt>Arena rating</dt>",
    ] {
        assert!(html.contains(want), "index.html lacks {want}");
    }

    // --neither drop: the `neither` answers leave the ratings.
    ok(idforge()
        .args([
            "bench",
            "leaderboard",
            "--neither",
            "drop",
            "--arena-bootstrap",
            "0",
        ])
        .arg(&bench));
    let lb = read_json(&bench);
    assert_eq!(lb["arena"]["neither"], "drop");
    assert_eq!(lb["arena"]["votes"]["neither_dropped"], 60);
    assert_eq!(lb["arena"]["votes"]["rated"], 480);
    let m = &question(&lb, "fidelity")["methods"][0];
    assert!(m["lo"].is_null() && m["hi"].is_null(), "no resamples: {m}");

    // --votes: another file, named as given.
    let other = tmp.path().join("other-votes.parquet");
    VotesTable {
        rows: rows
            .iter()
            .filter(|r| r.question == Question::Adherence)
            .cloned()
            .collect(),
    }
    .write(&other)
    .unwrap();
    ok(idforge()
        .args(["bench", "leaderboard", "--arena-bootstrap", "50", "--votes"])
        .arg(&other)
        .arg(&bench));
    let lb = read_json(&bench);
    assert_eq!(lb["arena"]["source"], other.display().to_string());
    let qs: Vec<&str> = lb["arena"]["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["question"].as_str().unwrap())
        .collect();
    assert_eq!(qs, ["adherence"]);

    // A votes file that is not there is an error that says what to give.
    let out = idforge()
        .args(["bench", "leaderboard", "--votes"])
        .arg(tmp.path().join("nope.parquet"))
        .arg(&bench)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no such votes file") && text(&out).contains("arena export"),
        "{}",
        text(&out)
    );
    // A file that is not a votes table is refused, named.
    let out = idforge()
        .args(["bench", "leaderboard", "--votes"])
        .arg(bench.join("scores/copy-reference.parquet"))
        .arg(&bench)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("copy-reference.parquet"),
        "{}",
        text(&out)
    );
}
