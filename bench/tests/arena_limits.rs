//! The arena's guards against bad input that is not a malformed request: a script minting
//! raters without bound (a per-IP limit on `POST /api/raters`), a bench folder that was moved
//! (`rebind`), and an address that is not an address.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::arena::{Http, config, make_bench, query};
use idforge_bench::arena::{ArenaServer, server::resolve_addr};
use reqwest::Method;

const METHODS: [&str; 2] = ["alpha-method", "beta-method"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rater_creation_is_limited_per_address_with_retry_after() {
    let tmp = tempfile::tempdir().unwrap();
    let bench = make_bench(tmp.path(), &METHODS, 1, 1, 1);
    let mut cfg = config(tmp.path(), &bench);
    cfg.raters_per_ip_per_hour = 3;
    let server = ArenaServer::start(cfg, "127.0.0.1:0").unwrap();
    let http = Http::new(&server.url());
    for _ in 0..3 {
        let r = http
            .send(Method::POST, "/api/raters", None, None, None)
            .await;
        assert_eq!(r.status, 201, "{:?}", r.json);
    }
    let r = http
        .send(Method::POST, "/api/raters", None, None, None)
        .await;
    assert_eq!(r.status, 429, "{:?}", r.json);
    assert_eq!(r.code(), "too_many_raters");
    assert!(r.message().contains("3 rater ids"), "{}", r.message());
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=1200).contains(&wait), "{wait}");
    let db = tmp.path().join("votes.sqlite");
    assert_eq!(
        query(&db, "SELECT count(*) FROM raters")[0][0],
        "3",
        "a refused request stores no rater"
    );
    server.stop().unwrap();
}

#[test]
fn the_bucket_refills_over_the_hour_and_addresses_are_separate() {
    let tmp = tempfile::tempdir().unwrap();
    let bench = make_bench(tmp.path(), &METHODS, 1, 1, 1);
    let mut cfg = config(tmp.path(), &bench);
    cfg.raters_per_ip_per_hour = 2;
    let server = ArenaServer::start(cfg, "127.0.0.1:0").unwrap();
    let arena = server.arena();
    let (a, b) = (
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
    );
    let t0 = Instant::now();
    assert!(arena.admit_new_rater(a, t0).is_ok());
    assert!(arena.admit_new_rater(a, t0).is_ok());
    let e = arena.admit_new_rater(a, t0).unwrap_err();
    assert_eq!((e.status.as_u16(), e.code), (429, "too_many_raters"));
    let wait = e.retry_after.unwrap();
    assert!(
        (1800..=1801).contains(&wait),
        "one token every 30 minutes: {wait}"
    );
    assert!(arena.admit_new_rater(b, t0).is_ok(), "another address");
    assert!(
        arena
            .admit_new_rater(a, t0 + Duration::from_secs(1799))
            .is_err()
    );
    assert!(
        arena
            .admit_new_rater(a, t0 + Duration::from_secs(1801))
            .is_ok()
    );
    drop(server);

    // 0 turns the limit off.
    let tmp = tempfile::tempdir().unwrap();
    let bench = make_bench(tmp.path(), &METHODS, 1, 1, 1);
    let mut cfg = config(tmp.path(), &bench);
    cfg.raters_per_ip_per_hour = 0;
    let server = ArenaServer::start(cfg, "127.0.0.1:0").unwrap();
    for _ in 0..1000 {
        assert!(server.arena().admit_new_rater(a, t0).is_ok());
    }
}

#[test]
fn a_moved_bench_folder_is_refused_with_the_fix_and_taken_over_with_rebind() {
    let tmp = tempfile::tempdir().unwrap();
    let bench = make_bench(&tmp.path().join("old"), &METHODS, 1, 1, 1);
    let db = tmp.path().join("votes.sqlite");
    let mut cfg = config(tmp.path(), &bench);
    cfg.db = db.clone();
    ArenaServer::start(cfg, "127.0.0.1:0")
        .unwrap()
        .stop()
        .unwrap();

    let moved = tmp.path().join("new");
    std::fs::rename(tmp.path().join("old"), &moved).unwrap();
    let moved_bench = moved.join("bench");
    let mut cfg = config(tmp.path(), &moved_bench);
    cfg.db = db.clone();
    let err = ArenaServer::start(cfg.clone(), "127.0.0.1:0").unwrap_err();
    assert!(err.to_string().contains("--rebind"), "{err}");

    cfg.rebind = true;
    ArenaServer::start(cfg.clone(), "127.0.0.1:0")
        .unwrap()
        .stop()
        .unwrap();
    let recorded = &query(&db, "SELECT value FROM meta WHERE key = 'bench'")[0][0];
    assert_eq!(
        recorded,
        &std::path::absolute(&moved_bench)
            .unwrap()
            .display()
            .to_string()
    );
    // Rebound, the database now opens without the flag.
    cfg.rebind = false;
    ArenaServer::start(cfg, "127.0.0.1:0")
        .unwrap()
        .stop()
        .unwrap();
}

#[test]
fn an_address_that_is_not_one_says_so_instead_of_blaming_the_port() {
    for bad in [
        "notanaddress",
        "127.0.0.1",
        "127.0.0.1:http",
        "1.2.3.4.5:80",
    ] {
        let e = resolve_addr(bad).unwrap_err().to_string();
        assert!(e.contains("not an address to listen on"), "{bad}: {e}");
        assert!(!e.contains("another server"), "{bad}: {e}");
    }
    assert!(resolve_addr("127.0.0.1:0").is_ok());
}
