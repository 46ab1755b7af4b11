//! The arena's HTTP API on a real server on loopback with a real SQLite database: every
//! refusal is a clear 4xx with a JSON error and stores nothing; a replayed or duplicated vote is
//! refused; raters, pending pairs and tokens survive a restart; the scheduler never repeats an
//! item for a rater and question and serves the least-served method pair and item first; the
//! page is self-contained and method names never reach the client.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::arena::{Http, config, count, make_bench, query};
use idforge_bench::arena::token::{SECRET_LEN, Signer, TaskClaim};
use idforge_bench::arena::{ArenaConfig, ArenaServer};
use reqwest::Method;
use serde_json::{Value, json};

const METHODS: [&str; 3] = ["alpha-method", "beta-method", "gamma-method"];

fn start(cfg: ArenaConfig) -> ArenaServer {
    ArenaServer::start(cfg, "127.0.0.1:0").expect("the arena starts")
}

/// The real secret, read from the database as someone holding the file could.
fn secret(db: &Path) -> Signer {
    let hex_secret = &query(db, "SELECT value FROM meta WHERE key = 'secret'")[0][0];
    let bytes: [u8; SECRET_LEN] = hex::decode(hex_secret).unwrap().try_into().unwrap();
    Signer::new(bytes)
}

fn votes(db: &Path) -> i64 {
    count(db, "SELECT count(*) FROM votes")
}

fn tasks(db: &Path) -> i64 {
    count(db, "SELECT count(*) FROM tasks")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_a_clear_4xx_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let bench = make_bench(tmp.path(), &METHODS[..2], 3, 2, 2);
    let mut cfg = config(tmp.path(), &bench);
    cfg.practice = 0;
    let db = cfg.db.clone();
    let server = start(cfg);
    let http = Http::new(&server.url());
    let alice = http.new_rater().await;
    let bob = http.new_rater().await;
    let task = http.task(&alice).await["task"].clone();
    let token = task["token"].as_str().unwrap().to_string();
    let question = task["question"].as_str().unwrap().to_string();
    let other_question = if question == "fidelity" {
        "adherence"
    } else {
        "fidelity"
    };
    let real = secret(&db);
    let alice_id = real.verify_rater(&alice).unwrap();
    let claim = real.verify_task(&token).unwrap();
    let (tasks_before, votes_before) = (tasks(&db), votes(&db));
    assert_eq!(votes_before, 0);

    let good = |over: Value| {
        let mut v = json!({"token": token, "question": question, "answer": "left", "answer_ms": 0});
        for (k, x) in over.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let (payload, sig) = token.split_once('.').unwrap();
    let tampered = format!(
        "{}.{sig}",
        URL_SAFE_NO_PAD.encode(format!(
            "t1:{}:{}:{}",
            claim.task_id + 1,
            claim.rater,
            claim.nonce
        ))
    );
    let other_key = Signer::new([9; SECRET_LEN]);
    let resigned = other_key.task_token(&claim);
    let unknown_task = real.task_token(&TaskClaim {
        task_id: 999_999,
        ..claim.clone()
    });
    let wrong_nonce = real.task_token(&TaskClaim {
        nonce: "0123456789abcdef".into(),
        ..claim.clone()
    });
    let big = format!("{{\"token\": \"{}\"}}", "x".repeat(20 * 1024));

    // (rater header, body, content type, expected status, expected code)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, &'a str, u16, &'a str);
    let body = |v: Value| v.to_string().into_bytes();
    let unknown_rater = real.rater_token("00ff00ff00ff00ff");
    let forged_rater = other_key.rater_token(&alice_id);
    let cases: Vec<Case> = vec![
        (
            "no rater",
            None,
            body(good(json!({}))),
            "application/json",
            401,
            "no_rater",
        ),
        (
            "garbage rater",
            Some("not-a-token"),
            body(good(json!({}))),
            "application/json",
            401,
            "bad_rater",
        ),
        (
            "forged rater",
            Some(&forged_rater),
            body(good(json!({}))),
            "application/json",
            401,
            "bad_rater",
        ),
        (
            "pair token as rater",
            Some(&token),
            body(good(json!({}))),
            "application/json",
            401,
            "bad_rater",
        ),
        (
            "unknown rater",
            Some(&unknown_rater),
            body(good(json!({}))),
            "application/json",
            401,
            "unknown_rater",
        ),
        (
            "text body",
            Some(&alice),
            body(good(json!({}))),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        (
            "huge body",
            Some(&alice),
            big.into_bytes(),
            "application/json",
            413,
            "body_too_large",
        ),
        (
            "broken JSON",
            Some(&alice),
            b"{\"token\": ".to_vec(),
            "application/json",
            400,
            "malformed_json",
        ),
        (
            "JSON array",
            Some(&alice),
            b"[1, 2]".to_vec(),
            "application/json",
            400,
            "malformed_json",
        ),
        (
            "missing answer",
            Some(&alice),
            body(json!({"token": token, "question": question, "answer_ms": 5})),
            "application/json",
            400,
            "missing_field",
        ),
        (
            "answer_ms as text",
            Some(&alice),
            body(good(json!({"answer_ms": "12"}))),
            "application/json",
            400,
            "bad_field",
        ),
        (
            "answer as number",
            Some(&alice),
            body(good(json!({"answer": 1}))),
            "application/json",
            400,
            "bad_field",
        ),
        (
            "extra field",
            Some(&alice),
            body(good(json!({"method_left": "alpha-method"}))),
            "application/json",
            400,
            "unknown_field",
        ),
        (
            "unknown answer",
            Some(&alice),
            body(good(json!({"answer": "maybe"}))),
            "application/json",
            422,
            "unknown_answer",
        ),
        (
            "unknown question",
            Some(&alice),
            body(good(json!({"question": "beauty"}))),
            "application/json",
            422,
            "unknown_question",
        ),
        (
            "malformed token",
            Some(&alice),
            body(good(json!({"token": "abc"}))),
            "application/json",
            400,
            "malformed_token",
        ),
        (
            "bad base64 token",
            Some(&alice),
            body(good(json!({"token": format!("{payload}.!!")}))),
            "application/json",
            400,
            "malformed_token",
        ),
        (
            "rater token as pair",
            Some(&alice),
            body(good(json!({"token": alice}))),
            "application/json",
            400,
            "malformed_token",
        ),
        (
            "tampered payload",
            Some(&alice),
            body(good(json!({"token": tampered}))),
            "application/json",
            403,
            "forged_token",
        ),
        (
            "other key",
            Some(&alice),
            body(good(json!({"token": resigned}))),
            "application/json",
            403,
            "forged_token",
        ),
        (
            "wrong nonce",
            Some(&alice),
            body(good(json!({"token": wrong_nonce}))),
            "application/json",
            403,
            "forged_token",
        ),
        (
            "another rater's pair",
            Some(&bob),
            body(good(json!({}))),
            "application/json",
            403,
            "wrong_rater",
        ),
        (
            "unknown task",
            Some(&alice),
            body(good(json!({"token": unknown_task}))),
            "application/json",
            404,
            "unknown_task",
        ),
        (
            "wrong question",
            Some(&alice),
            body(good(json!({"question": other_question}))),
            "application/json",
            422,
            "wrong_question",
        ),
        (
            "negative time",
            Some(&alice),
            body(good(json!({"answer_ms": -5}))),
            "application/json",
            422,
            "bad_answer_ms",
        ),
        (
            "impossible time",
            Some(&alice),
            body(good(json!({"answer_ms": 600_000}))),
            "application/json",
            422,
            "bad_answer_ms",
        ),
    ];
    for (name, rater, bytes, ct, status, code) in cases {
        let r = http
            .send(Method::POST, "/api/vote", rater, Some(bytes), Some(ct))
            .await;
        assert_eq!((r.status, r.code()), (status, code), "{name}: {:?}", r.json);
        assert!(
            r.message().len() > 15,
            "{name}: the message should say what to do: {:?}",
            r.json
        );
        assert_eq!(
            r.headers["content-type"], "application/json",
            "{name}: errors are JSON"
        );
        if status == 401 {
            assert!(r.headers.contains_key("www-authenticate"), "{name}");
        }
        assert_eq!(votes(&db), votes_before, "{name}: nothing stored");
        assert_eq!(tasks(&db), tasks_before, "{name}: no pair shown");
    }

    // Routes and methods.
    let r = http
        .send(Method::GET, "/api/vote", Some(&alice), None, None)
        .await;
    assert_eq!((r.status, r.code()), (405, "method_not_allowed"));
    assert_eq!(r.headers["allow"], "POST");
    let r = http
        .send(Method::GET, "/api/nothing", None, None, None)
        .await;
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let (status, _, _) = http.get_bytes("/img/0123456789abcdef01234567").await;
    assert_eq!(status, 404);
    let r = http.send(Method::POST, "/api/task", None, None, None).await;
    assert_eq!((r.status, r.code()), (401, "no_rater"));

    // The good vote is stored once; the same vote again (replayed or sent twice) is refused.
    let r = http
        .vote_raw(Some(&alice), &good(json!({"answer": "tie"})))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(r.json["practice"], false);
    assert_eq!(r.json["answered"], 1);
    for _ in 0..2 {
        let r = http
            .vote_raw(Some(&alice), &good(json!({"answer": "left"})))
            .await;
        assert_eq!(
            (r.status, r.code()),
            (409, "already_answered"),
            "{:?}",
            r.json
        );
    }
    let stored = query(
        &db,
        "SELECT rater, question, answer, practice, method_left != method_right FROM votes",
    );
    assert_eq!(
        stored,
        vec![vec![
            alice_id.clone(),
            question.clone(),
            "tie".into(),
            "0".into(),
            "1".into()
        ]]
    );

    // Sent many times at once (a double click on a slow line): exactly one is stored.
    let task = http.task(&alice).await["task"].clone();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (http, alice, task) = (http.clone(), alice.clone(), task.clone());
        set.spawn(async move { http.vote(&alice, &task, "right").await.status });
    }
    let mut statuses = Vec::new();
    while let Some(s) = set.join_next().await {
        statuses.push(s.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [&[201][..], &[409; 11][..]].concat());
    assert_eq!(votes(&db), 2);
    server.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_pairs_and_raters_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let bench = make_bench(tmp.path(), &METHODS[..2], 2, 1, 2);
    let mut cfg = config(tmp.path(), &bench);
    cfg.task_ttl = Duration::from_millis(600);
    cfg.rater_ttl = Duration::from_millis(1500);
    let db = cfg.db.clone();
    let server = start(cfg);
    let http = Http::new(&server.url());
    let rater = http.new_rater().await;
    let task = http.task(&rater).await["task"].clone();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = http.vote(&rater, &task, "left").await;
    assert_eq!((r.status, r.code()), (410, "task_expired"), "{:?}", r.json);
    assert!(r.message().contains("load the next pair"));
    // The expired pair is not shown again; a new one is.
    let fresh = http.task(&rater).await["task"].clone();
    assert_ne!(fresh["token"], task["token"]);
    tokio::time::sleep(Duration::from_millis(900)).await;
    let r = http
        .send(Method::POST, "/api/task", Some(&rater), None, None)
        .await;
    assert_eq!((r.status, r.code()), (401, "rater_expired"), "{:?}", r.json);
    let r = http.vote(&rater, &fresh, "left").await;
    assert_eq!((r.status, r.code()), (401, "rater_expired"));
    assert_eq!(votes(&db), 0);
    server.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raters_tokens_and_votes_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let bench = make_bench(tmp.path(), &METHODS, 2, 2, 2);
    let cfg = config(tmp.path(), &bench);
    let db = cfg.db.clone();

    let server = start(cfg.clone());
    let http = Http::new(&server.url());
    let rater = http.new_rater().await;
    for answer in ["left", "right", "tie"] {
        let t = http.task(&rater).await["task"].clone();
        assert_eq!(http.vote(&rater, &t, answer).await.status, 201);
    }
    let pending = http.task(&rater).await["task"].clone();
    // Asking again (a reload) shows the same pair, not a new one.
    assert_eq!(http.task(&rater).await["task"], pending);
    let shown_before = tasks(&db);
    server.stop().unwrap();

    let server = start(cfg.clone());
    let http = Http::new(&server.url());
    assert_eq!(
        http.task(&rater).await["task"],
        pending,
        "same pending pair and token"
    );
    assert_eq!(tasks(&db), shown_before);
    let r = http.vote(&rater, &pending, "neither").await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    // Counted answers are restored (the first two were fidelity practice, not counted).
    assert_eq!(r.json["answered"], 2);
    // A token answered before the restart is still refused after it.
    assert_eq!(
        http.vote(&rater, &pending, "left").await.code(),
        "already_answered"
    );
    // The rater goes on to the end of every question without ever repeating an item.
    loop {
        let next = http.task(&rater).await;
        if next["done"] == true {
            break;
        }
        assert_eq!(http.vote(&rater, &next["task"], "left").await.status, 201);
    }
    let per_question = query(
        &db,
        "SELECT question, count(*), count(DISTINCT set_name || identity || prompt_id || seed) \
         FROM votes GROUP BY question ORDER BY question",
    );
    assert_eq!(
        per_question,
        vec![
            vec!["adherence".to_string(), "8".into(), "8".into()],
            vec!["fidelity".to_string(), "8".into(), "8".into()],
        ]
    );
    server.stop().unwrap();

    // Another bench folder on the same database is refused, and says why.
    let other = make_bench(&tmp.path().join("other"), &METHODS, 1, 1, 1);
    let err = ArenaServer::start(ArenaConfig::new(&other, &db), "127.0.0.1:0").unwrap_err();
    assert!(
        err.to_string().contains("give each benchmark its own --db"),
        "{err}"
    );
}

/// One (question, method pair, item) per served non-practice task, from the database.
fn served(db: &Path) -> Vec<(String, (String, String), String, String)> {
    query(
        db,
        "SELECT question, method_left, method_right, identity || '/' || prompt_id || '/' || seed, \
         rater FROM tasks WHERE practice = 0 ORDER BY task_id",
    )
    .into_iter()
    .map(|r| {
        let (a, b) = (r[1].clone(), r[2].clone());
        (
            r[0].clone(),
            (a.clone().min(b.clone()), a.max(b)),
            r[3].clone(),
            r[4].clone(),
        )
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_favours_least_served_pairs_and_items_and_never_repeats() {
    let tmp = tempfile::tempdir().unwrap();
    // 3 methods (3 pairs), 6 items: every item has every pair.
    let bench = make_bench(tmp.path(), &METHODS, 3, 1, 2);
    let mut cfg = config(tmp.path(), &bench);
    cfg.practice = 0;
    cfg.block = 100;
    cfg.questions = vec![idforge_core::schema::Question::Fidelity];
    let db = cfg.db.clone();
    let server = start(cfg);
    let http = Http::new(&server.url());
    let raters = [
        http.new_rater().await,
        http.new_rater().await,
        http.new_rater().await,
    ];
    let ids: Vec<String> = {
        let s = secret(&db);
        raters.iter().map(|r| s.verify_rater(r).unwrap()).collect()
    };
    let mut left_first = 0;
    for step in 0..18 {
        let k = step % 3;
        let before = served(&db);
        let t = http.task(&raters[k]).await;
        assert_eq!(t["done"], false);
        let after = served(&db);
        assert_eq!(after.len(), before.len() + 1);
        let new = after.last().unwrap().clone();
        // The pair served is one of the least served.
        let mut pair_counts: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (m, a) in METHODS.iter().enumerate() {
            for b in &METHODS[m + 1..] {
                pair_counts.insert((a.to_string(), b.to_string()), 0);
            }
        }
        for s in &before {
            *pair_counts.get_mut(&s.1).unwrap() += 1;
        }
        let min_pair = *pair_counts.values().min().unwrap();
        assert_eq!(
            pair_counts[&new.1], min_pair,
            "step {step}: {pair_counts:?}"
        );
        // Among the rater's unseen items, one of the least served.
        let seen: BTreeSet<&String> = before
            .iter()
            .filter(|s| s.3 == ids[k])
            .map(|s| &s.2)
            .collect();
        assert!(!seen.contains(&new.2), "step {step}: item shown twice");
        let mut item_counts: BTreeMap<&String, usize> = BTreeMap::new();
        for s in &before {
            *item_counts.entry(&s.2).or_default() += 1;
        }
        let all_items: BTreeSet<String> = (0..3)
            .flat_map(|i| (0..2).map(move |s| format!("id{i}/p0/{s}")))
            .collect();
        let min_item = all_items
            .iter()
            .filter(|i| !seen.contains(i))
            .map(|i| item_counts.get(i).copied().unwrap_or(0))
            .min()
            .unwrap();
        assert_eq!(
            item_counts.get(&new.2).copied().unwrap_or(0),
            min_item,
            "step {step}"
        );
        let row = &query(
            &db,
            "SELECT method_left FROM tasks ORDER BY task_id DESC LIMIT 1",
        )[0];
        left_first += usize::from(row[0] == new.1.0);
        assert_eq!(http.vote(&raters[k], &t["task"], "left").await.status, 201);
    }
    // Each rater has now seen all 6 items: nothing more for them.
    for r in &raters {
        assert_eq!(http.task(r).await["done"], true);
    }
    // Left/right order is random: both orders occur (18 draws; all alike has p ≈ 8e-6).
    assert!((1..18).contains(&left_first), "{left_first}");
    server.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_self_contained_and_hides_method_names() {
    let tmp = tempfile::tempdir().unwrap();
    let bench = make_bench(tmp.path(), &METHODS[..2], 2, 1, 1);
    let server = start(config(tmp.path(), &bench));
    let http = Http::new(&server.url());
    let (status, headers, html) = http.get_bytes("/").await;
    assert_eq!(status, 200);
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let html = String::from_utf8(html).unwrap();
    assert!(html.contains("width=device-width"));
    for asset in ["/", "/arena.css", "/arena.js"] {
        let (status, _, body) = http.get_bytes(asset).await;
        assert_eq!(status, 200, "{asset}");
        let text = String::from_utf8(body).unwrap();
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "{asset} names an external URL"
        );
    }
    let health = http.send(Method::GET, "/healthz", None, None, None).await;
    assert_eq!(health.json["items"], 2);
    assert_eq!(health.json["methods"], 2);

    let rater = http.new_rater().await;
    for _ in 0..4 {
        let t = http.task(&rater).await;
        let text = t.to_string();
        for m in METHODS {
            assert!(!text.contains(m), "a method name reached the page: {text}");
        }
        let task = &t["task"];
        match task["question"].as_str().unwrap() {
            "fidelity" => {
                assert!(task["reference"].is_string() && task["prompt"].is_null());
            }
            _ => {
                assert!(task["prompt"].as_str().unwrap().contains("watercolour"));
                assert!(!task["prompt"].as_str().unwrap().contains("{trigger}"));
                assert!(task["reference"].is_null());
            }
        }
        for side in ["left", "right"] {
            let (status, headers, bytes) = http.get_bytes(task[side].as_str().unwrap()).await;
            assert_eq!(status, 200);
            assert_eq!(headers["content-type"], "image/png");
            assert!(image::load_from_memory(&bytes).is_ok());
        }
        assert_ne!(task["left"], task["right"]);
        assert_eq!(http.vote(&rater, task, "right").await.status, 201);
    }
    server.stop().unwrap();
}

#[test]
fn a_bench_without_two_methods_is_refused_with_a_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let bench = make_bench(tmp.path(), &METHODS[..1], 1, 1, 1);
    let err = ArenaServer::start(config(tmp.path(), &bench), "127.0.0.1:0").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("idforge bench import"), "{text}");
    assert!(text.contains("--include-copy-reference"), "{text}");
    // With the reference as a contestant there are two.
    let mut cfg = config(tmp.path(), &bench);
    cfg.include_copy_reference = true;
    let server = ArenaServer::start(cfg, "127.0.0.1:0").unwrap();
    assert_eq!(
        server.arena().items().methods,
        ["alpha-method", "copy-reference"]
    );
    server.stop().unwrap();
}
