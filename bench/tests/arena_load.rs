//! A bounded load test: 50 simulated raters at once over loopback, each fetching its pairs'
//! images and casting practice answers and 10 counted votes through the HTTP API, against a
//! real SQLite database with `synchronous = FULL`. Every accepted vote must be in the database
//! exactly once, none lost or doubled, and the run must finish within the bound. Prints votes/s.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::arena::{config, count, make_bench, query};
use idforge_bench::arena::{ArenaServer, SimulateOptions, simulate};

const RATERS: usize = 50;
const VOTES: usize = 10;
const BOUND: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_raters_lose_no_vote() {
    let tmp = tempfile::tempdir().unwrap();
    // 4 methods (6 pairs), 4 × 2 × 2 = 16 items: enough for 2 practice + 10 votes each.
    let bench = make_bench(tmp.path(), &["m-a", "m-b", "m-c", "m-d"], 4, 2, 2);
    let cfg = config(tmp.path(), &bench);
    let db = cfg.db.clone();
    let server = ArenaServer::start(cfg, "127.0.0.1:0").unwrap();
    let start = Instant::now();
    let report = tokio::time::timeout(
        BOUND,
        simulate(&SimulateOptions {
            url: server.url(),
            raters: RATERS,
            votes: VOTES,
            seed: 7,
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("the load test ran past {BOUND:?}"))
    .expect("every vote of an honest client is accepted");
    let elapsed = start.elapsed();
    server.stop().unwrap();

    assert_eq!(report.raters, RATERS);
    assert_eq!(report.votes, RATERS * VOTES);
    assert_eq!(
        report.practice,
        RATERS * 2,
        "2 fidelity practice pairs each"
    );
    assert_eq!(report.exhausted, 0);
    let accepted: BTreeSet<i64> = report.vote_ids.iter().copied().collect();
    assert_eq!(
        accepted.len(),
        report.vote_ids.len(),
        "a vote id answered twice"
    );
    let stored: BTreeSet<i64> = query(&db, "SELECT vote_id FROM votes")
        .into_iter()
        .map(|r| r[0].parse().unwrap())
        .collect();
    assert_eq!(
        stored, accepted,
        "the database holds exactly the accepted votes"
    );
    // One vote per shown pair, none per pair twice, none on an item twice per rater.
    assert_eq!(
        count(&db, "SELECT count(DISTINCT task_id) FROM votes"),
        stored.len() as i64
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM (SELECT DISTINCT rater, question, set_name, identity, \
             prompt_id, seed FROM votes)"
        ),
        stored.len() as i64
    );
    assert_eq!(
        count(&db, "SELECT count(DISTINCT rater) FROM votes"),
        RATERS as i64
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM tasks WHERE answered_at IS NULL"),
        0,
        "every served pair was answered"
    );
    // The scheduler spread the 500 counted fidelity votes over the 6 pairs evenly.
    let per_pair: Vec<i64> = query(
        &db,
        "SELECT count(*) FROM votes WHERE practice = 0 GROUP BY min(method_left, method_right), \
         max(method_left, method_right)",
    )
    .into_iter()
    .map(|r| r[0].parse().unwrap())
    .collect();
    assert_eq!(per_pair.len(), 6);
    let (lo, hi) = (
        per_pair.iter().min().unwrap(),
        per_pair.iter().max().unwrap(),
    );
    assert!(hi - lo <= 1, "uneven pairs: {per_pair:?}");

    let total = report.vote_ids.len();
    println!(
        "arena load: {RATERS} raters, {total} votes ({} practice) and {} images in {:.2} s: \
         {:.0} votes/s, {:.0} requests/s",
        report.practice,
        report.images,
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        (RATERS + 2 * total + report.images) as f64 / elapsed.as_secs_f64(),
    );
}
