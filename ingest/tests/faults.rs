//! Every failure mode of fetching, against the loopback fixture server, each with its exact
//! status and reason; then sharding, limits and opt-out switches.

use std::path::Path;
use std::time::{Duration, Instant};

use idforge_core::Shard;
use idforge_core::limits::{
    ByteLimit, Concurrency, Delay, Rate, Redirects, Retries, Seconds, Shards,
};
use idforge_core::run::{RunDir, ShardSelection, run_stage};
use idforge_core::schema::{ImageRow, ImageStatus, ImagesTable};
use idforge_ingest::testkit::{FixtureServer, synthetic_jpeg};
use idforge_ingest::{IngestSettings, IngestStage, SourceSpec};

/// Distinct fixture images `a.jpg` … `g.jpg`, plus a photograph `h.png` and `h_q.png`, the same
/// photograph after a JPEG round trip at quality 40 (the pHash fixtures).
fn server() -> FixtureServer {
    let mut images: Vec<(String, Vec<u8>)> = "abcdefg"
        .chars()
        .enumerate()
        .map(|(i, c)| {
            (
                format!("{c}.jpg"),
                synthetic_jpeg(320, 240, i as u32 * 5 + 1),
            )
        })
        .collect();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/phash");
    images.push((
        "h.png".into(),
        std::fs::read(fixtures.join("sample1_160.png")).unwrap(),
    ));
    images.push((
        "h_q.png".into(),
        std::fs::read(fixtures.join("sample1_160_q40.png")).unwrap(),
    ));
    FixtureServer::start(images).unwrap()
}

fn test_settings(list: &Path) -> IngestSettings {
    let mut s = IngestSettings {
        sources: vec![SourceSpec::from_cli(list.to_path_buf())],
        ..Default::default()
    };
    s.fetch.retries = Retries::lit(2);
    s.fetch.backoff_s = Delay::lit(0.01);
    s.fetch.timeout_s = Seconds::lit(1.5);
    s.fetch.connect_timeout_s = Seconds::lit(1.0);
    s.fetch.max_bytes = ByteLimit::lit(5_000_000);
    s.fetch.max_redirects = Redirects::lit(3);
    s
}

/// Writes a CSV of (url, identity) rows and ingests it; returns the merged table.
fn ingest(
    dir: &Path,
    rows: &[(String, &str)],
    tweak: impl FnOnce(&mut IngestSettings),
) -> ImagesTable {
    let list = dir.join("urls.csv");
    let mut csv = String::from("url,identity\n");
    for (url, id) in rows {
        csv.push_str(&format!("{url},{id}\n"));
    }
    std::fs::write(&list, csv).unwrap();
    let mut settings = test_settings(&list);
    tweak(&mut settings);
    let run = RunDir::new(dir.join("runs"), "t");
    let stage = IngestStage::new(settings, run.root()).unwrap();
    let report = run_stage(&stage, &run, ShardSelection::All(1)).unwrap();
    assert!(report.merged.is_some());
    ImagesTable::read(&run.stage("ingest").path().join("images.parquet")).unwrap()
}

fn find<'a>(t: &'a ImagesTable, url: &str) -> &'a ImageRow {
    t.rows
        .iter()
        .find(|r| r.source == url)
        .unwrap_or_else(|| panic!("no row for {url}"))
}

#[track_caller]
fn expect(t: &ImagesTable, url: &str, status: ImageStatus, error: Option<&str>, http: Option<u16>) {
    let r = find(t, url);
    assert_eq!(r.status, status, "{url}: {:?}", r.error);
    match error {
        Some(e) => assert!(
            r.error.as_deref().is_some_and(|got| got.contains(e)),
            "{url}: error {:?} lacks {e:?}",
            r.error
        ),
        None => assert_eq!(r.error, None, "{url}"),
    }
    assert_eq!(r.http_status, http, "{url}");
}

#[test]
fn every_fault_ends_in_its_own_status_with_a_reason() {
    let srv = server();
    let tmp = tempfile::tempdir().unwrap();
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // Another origin (another port): redirects to it answer to its own robots.txt.
    let other = FixtureServer::start(vec![("z.jpg".into(), synthetic_jpeg(320, 240, 99))]).unwrap();
    let away = |p: &str| srv.url(&format!("/away/{}{p}", other.port()));
    let u = |p: &str| srv.url(p);
    let refused = format!("http://127.0.0.1:{closed_port}/a.jpg");
    // A readable image on this machine, named by a third party's list.
    let local_image = tmp.path().join("elsewhere.jpg");
    std::fs::write(&local_image, synthetic_jpeg(64, 64, 9)).unwrap();
    let local_image = local_image.display().to_string();
    let rows = vec![
        (u("/img/a.jpg"), "ann"),
        (u("/status/404"), "ann"),
        (away("/img/z.jpg"), "ann"),
        (away("/private/z.jpg"), "ann"),
        (away("/noai/z.jpg"), "ann"),
        (u("/status/500"), "ann"),
        (u("/retry/2/1/b.jpg"), "ann"),
        (u("/retry/1/3600/a.jpg"), "ann"),
        (u("/flaky/2/f.jpg"), "ann"),
        (u("/drip/100/a.jpg"), "ann"),
        (u("/truncated/a.jpg"), "ann"),
        (u("/wrong-type/c.jpg"), "ann"),
        (u("/not-image"), "ann"),
        (u("/oversized/20000000"), "ann"),
        (u("/oversized-chunked/20000000"), "ann"),
        (u("/loop"), "ann"),
        (u("/redirect/d.jpg"), "ann"),
        (u("/bomb.png"), "ann"),
        (u("/noai/a.jpg"), "ann"),
        (u("/scoped-noai/a.jpg"), "ann"),
        (u("/other-bot-noai/e.jpg"), "ann"),
        (u("/private/a.jpg"), "ann"),
        ("ftp://example.invalid/a.jpg".to_string(), "ann"),
        (refused.clone(), "ann"),
        // Rows the list got wrong: each its own status, none stops the run.
        (String::new(), "ann"),
        ("not a url".to_string(), "ann"),
        (local_image.clone(), "ann"),
        ("../elsewhere.jpg".to_string(), "ann"),
        // Duplicates and conflicts.
        (u("/img/a.jpg?copy=1"), "ann"),
        (u("/img/g.jpg"), "ann"),
        (u("/img/g.jpg?again"), "bob"),
        (u("/img/h.png"), "cy"),
        (u("/img/h_q.png"), "cy"),
    ];
    let start = Instant::now();
    let t = ingest(tmp.path(), &rows, |_| {});
    let elapsed = start.elapsed();
    assert_eq!(t.rows.len(), rows.len(), "every input row is in the table");

    use ImageStatus::*;
    expect(&t, &u("/img/a.jpg"), Ok, None, Some(200));
    let a = find(&t, &u("/img/a.jpg"));
    assert_eq!(
        (a.width, a.height, a.format.as_deref()),
        (Some(320), Some(240), Some("jpg"))
    );
    let stored = tmp
        .path()
        .join("runs/t")
        .join(a.store_path.as_ref().unwrap());
    assert_eq!(
        idforge_core::hash::sha256_hex(&std::fs::read(stored).unwrap()),
        *a.image_id.as_ref().unwrap()
    );

    expect(
        &t,
        &u("/status/404"),
        HttpError,
        Some("HTTP 404 Not Found"),
        Some(404),
    );
    assert_eq!(srv.hits("/status/404"), 1, "a 404 is not retried");
    expect(
        &t,
        &u("/status/500"),
        HttpError,
        Some("HTTP 500 Internal Server Error (after 3 attempts)"),
        Some(500),
    );
    assert_eq!(srv.hits("/status/500"), 3);
    expect(&t, &u("/retry/2/1/b.jpg"), Ok, None, Some(200));
    assert_eq!(srv.hits("/retry/2/1/b.jpg"), 3);
    assert!(
        elapsed >= Duration::from_secs(2),
        "Retry-After: 1 was honoured twice ({elapsed:?})"
    );
    expect(
        &t,
        &u("/retry/1/3600/a.jpg"),
        HttpError,
        Some("Retry-After of 3600s is longer than max_retry_after_s = 120"),
        Some(429),
    );
    assert_eq!(srv.hits("/retry/1/3600/a.jpg"), 1);
    expect(&t, &u("/flaky/2/f.jpg"), Ok, None, Some(200));
    assert_eq!(srv.hits("/flaky/2/f.jpg"), 3);
    expect(
        &t,
        &u("/drip/100/a.jpg"),
        Timeout,
        Some("(after 3 attempts)"),
        Some(200),
    );
    expect(
        &t,
        &u("/truncated/a.jpg"),
        Truncated,
        Some("connection closed after"),
        Some(200),
    );
    expect(&t, &u("/wrong-type/c.jpg"), Ok, None, Some(200));
    assert_eq!(
        find(&t, &u("/wrong-type/c.jpg")).format.as_deref(),
        Some("jpg"),
        "format comes from the bytes"
    );
    expect(
        &t,
        &u("/not-image"),
        NotImage,
        Some("no known image signature"),
        Some(200),
    );
    expect(
        &t,
        &u("/oversized/20000000"),
        TooLarge,
        Some("Content-Length 20000000 is over max_bytes = 5000000"),
        Some(200),
    );
    expect(
        &t,
        &u("/oversized-chunked/20000000"),
        TooLarge,
        Some("body passed max_bytes = 5000000"),
        Some(200),
    );
    expect(
        &t,
        &u("/loop"),
        TooManyRedirects,
        Some("more than max_redirects = 3 redirects"),
        Some(302),
    );
    assert_eq!(
        srv.hits("/loop"),
        4,
        "the first request and three redirects"
    );
    expect(&t, &u("/redirect/d.jpg"), Ok, None, Some(200));
    expect(
        &t,
        &u("/bomb.png"),
        TooLarge,
        Some("32768×32768 = 1073741824 pixels is over the limit"),
        Some(200),
    );
    expect(
        &t,
        &u("/noai/a.jpg"),
        OptedOut,
        Some("X-Robots-Tag `noai`"),
        Some(200),
    );
    expect(
        &t,
        &u("/scoped-noai/a.jpg"),
        OptedOut,
        Some("X-Robots-Tag `idforge: noimageai`"),
        Some(200),
    );
    expect(&t, &u("/other-bot-noai/e.jpg"), Ok, None, Some(200));
    expect(
        &t,
        &u("/private/a.jpg"),
        OptedOut,
        Some("robots.txt disallows this path"),
        None,
    );
    assert_eq!(
        srv.hits("/private/a.jpg"),
        0,
        "a disallowed path is never requested"
    );
    assert_eq!(
        srv.hits("/robots.txt"),
        1,
        "robots.txt is fetched once per host"
    );
    expect(&t, &away("/img/z.jpg"), Ok, None, Some(200));
    expect(
        &t,
        &away("/private/z.jpg"),
        OptedOut,
        Some("redirected to http://127.0.0.1"),
        Some(302),
    );
    assert!(
        find(&t, &away("/private/z.jpg"))
            .error
            .as_deref()
            .is_some_and(|e| e.contains("robots.txt disallows this path")),
        "the other origin's robots.txt is the reason"
    );
    assert_eq!(
        other.hits("/private/z.jpg"),
        0,
        "a redirect to a path the other origin disallows is never followed"
    );
    assert_eq!(
        other.hits("/robots.txt"),
        1,
        "the redirect target's robots.txt is asked, once"
    );
    expect(
        &t,
        &away("/noai/z.jpg"),
        OptedOut,
        Some("X-Robots-Tag `noai`"),
        Some(200),
    );
    expect(
        &t,
        "ftp://example.invalid/a.jpg",
        InvalidUrl,
        Some("unsupported URL scheme `ftp`"),
        None,
    );
    expect(
        &t,
        &refused,
        ConnectError,
        Some("robots.txt unreachable"),
        None,
    );

    expect(&t, "", InvalidUrl, Some("empty `url`"), None);
    expect(
        &t,
        "not a url",
        InvalidUrl,
        Some("`not a url` is not an http(s) URL"),
        None,
    );
    for path in [local_image.as_str(), "../elsewhere.jpg"] {
        expect(&t, path, InvalidUrl, Some("--allow-local-paths"), None);
        assert_eq!(find(&t, path).image_id, None, "{path} was not read");
    }

    let a_id = a.row_id;
    expect(
        &t,
        &u("/img/a.jpg?copy=1"),
        Duplicate,
        Some(&format!("same bytes as row {a_id}")),
        Some(200),
    );
    expect(
        &t,
        &u("/img/g.jpg"),
        Conflict,
        Some("also labelled `bob`"),
        Some(200),
    );
    expect(
        &t,
        &u("/img/g.jpg?again"),
        Conflict,
        Some("labelled `ann`, not `bob`"),
        Some(200),
    );
    let h = find(&t, &u("/img/h.png"));
    assert_eq!(h.status, Ok);
    let hq = find(&t, &u("/img/h_q.png"));
    assert_eq!(
        (hq.status, hq.duplicate_of),
        (Duplicate, Some(h.row_id)),
        "{:?}",
        hq.error
    );
    assert!(
        hq.error
            .as_deref()
            .unwrap()
            .starts_with("near-duplicate of row"),
        "{:?}",
        hq.error
    );

    let stats = RunDir::new(tmp.path().join("runs"), "t")
        .stage("ingest")
        .final_stats()
        .unwrap();
    assert_eq!(stats.rows, rows.len() as u64);
    assert_eq!(
        stats.counts["ok"], 8,
        "7 from the first origin, z.jpg through a redirect"
    );
    assert_eq!(stats.counts["conflict"], 2);
    assert_eq!(stats.extra["exact_duplicates"], 1.0);
    assert_eq!(stats.extra["near_duplicates"], 1.0);
}

#[test]
fn opt_outs_are_fetched_only_when_switched_off() {
    let srv = server();
    let tmp = tempfile::tempdir().unwrap();
    let rows = vec![
        (srv.url("/private/a.jpg"), "ann"),
        (srv.url("/noai/b.jpg"), "ann"),
    ];
    let t = ingest(tmp.path(), &rows, |s| {
        s.fetch.robots_txt = false;
        s.fetch.x_robots_tag = false;
    });
    assert!(
        t.rows.iter().all(|r| r.status == ImageStatus::Ok),
        "{:?}",
        t.rows
    );
    assert_eq!(srv.hits("/robots.txt"), 0);
}

#[test]
fn per_host_concurrency_and_rate_are_respected() {
    let srv = server();
    let tmp = tempfile::tempdir().unwrap();
    let rows: Vec<_> = (0..8)
        .map(|i| (srv.url(&format!("/slow/200/a.jpg?{i}")), "ann"))
        .collect();
    let start = Instant::now();
    ingest(tmp.path(), &rows, |s| {
        s.fetch.per_host_concurrency = Concurrency::lit(2);
        s.fetch.robots_txt = false;
    });
    assert_eq!(srv.max_in_flight(), 2);
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "{:?}",
        start.elapsed()
    );

    let srv = server();
    let tmp = tempfile::tempdir().unwrap();
    let rows: Vec<_> = (0..11)
        .map(|i| (srv.url(&format!("/img/a.jpg?{i}")), "ann"))
        .collect();
    let start = Instant::now();
    ingest(tmp.path(), &rows, |s| {
        s.fetch.per_host_rate = Rate::lit(20.0);
        s.fetch.robots_txt = false;
    });
    // 11 requests at 20/s: the last one starts 0.5 s after the first.
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn shards_run_separately_merge_into_the_same_table_as_one_run() {
    let srv = server();
    let tmp = tempfile::tempdir().unwrap();
    let urls: Vec<String> = ["a", "b", "c", "d", "a", "e", "f"]
        .iter()
        .map(|c| srv.url(&format!("/img/{c}.jpg")))
        .collect();
    // The list as Parquet, with an extra column carried through.
    let list = tmp.path().join("urls.parquet");
    {
        use arrow::array::{Int64Array, RecordBatch, StringArray};
        use std::sync::Arc;
        let ids: Vec<&str> = urls.iter().map(|_| "ann").collect();
        let batch = RecordBatch::try_from_iter([
            ("url", Arc::new(StringArray::from(urls.clone())) as _),
            ("identity", Arc::new(StringArray::from(ids)) as _),
            (
                "votes",
                Arc::new(Int64Array::from_iter_values(0..urls.len() as i64)) as _,
            ),
        ])
        .unwrap();
        let file = std::fs::File::create(&list).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
    let run = RunDir::new(tmp.path().join("runs"), "sharded");
    let mut settings = test_settings(&list);
    settings.shards = Shards::lit(3);
    let stage = IngestStage::new(settings.clone(), run.root()).unwrap();
    let r = run_stage(&stage, &run, ShardSelection::One(Shard::new(2, 3).unwrap())).unwrap();
    assert_eq!(r.waiting_for.len(), 2);
    assert!(!run.stage("ingest").path().join("images.parquet").exists());
    run_stage(&stage, &run, ShardSelection::One(Shard::new(0, 3).unwrap())).unwrap();
    let r = run_stage(&stage, &run, ShardSelection::One(Shard::new(1, 3).unwrap())).unwrap();
    assert_eq!(r.merged.as_ref().unwrap().rows, 7);
    let sharded = ImagesTable::read(&run.stage("ingest").path().join("images.parquet")).unwrap();

    let single = RunDir::new(tmp.path().join("runs"), "single");
    let stage = IngestStage::new(test_settings(&list), single.root()).unwrap();
    run_stage(&stage, &single, ShardSelection::All(1)).unwrap();
    let whole = ImagesTable::read(&single.stage("ingest").path().join("images.parquet")).unwrap();
    let key = |t: &ImagesTable| -> Vec<_> {
        t.rows
            .iter()
            .map(|r| {
                (
                    r.row_id,
                    r.status,
                    r.image_id.clone(),
                    r.duplicate_of,
                    r.extra.clone(),
                )
            })
            .collect()
    };
    assert_eq!(key(&sharded), key(&whole));
    assert_eq!(sharded.extra_columns, vec!["votes"]);
    assert_eq!(
        sharded.rows[4].status,
        ImageStatus::Duplicate,
        "dedup runs across shards"
    );
    assert_eq!(sharded.rows[6].extra, vec![Some("6".to_string())]);

    // A re-run with everything complete does nothing and fetches nothing.
    let before = srv.total_hits();
    let r = run_stage(&stage, &single, ShardSelection::All(1)).unwrap();
    assert_eq!((r.ran.len(), r.skipped.len()), (0, 1));
    assert_eq!(srv.total_hits(), before);
}

#[test]
fn folder_sources_read_files_with_the_same_validation() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("photos");
    std::fs::create_dir_all(root.join("ann")).unwrap();
    std::fs::create_dir_all(root.join("bob")).unwrap();
    std::fs::write(root.join("ann/1.jpg"), synthetic_jpeg(640, 480, 1)).unwrap();
    std::fs::write(
        root.join("ann/broken.jpg"),
        &synthetic_jpeg(640, 480, 2)[..3000],
    )
    .unwrap();
    std::fs::write(root.join("bob/2.png"), b"definitely not a png").unwrap();
    let settings = IngestSettings {
        sources: vec![SourceSpec::from_cli(root.clone())],
        ..Default::default()
    };
    let run = RunDir::new(tmp.path().join("runs"), "f");
    let stage = IngestStage::new(settings, run.root()).unwrap();
    run_stage(&stage, &run, ShardSelection::All(1)).unwrap();
    let t = ImagesTable::read(&run.stage("ingest").path().join("images.parquet")).unwrap();
    let got: Vec<_> = t
        .rows
        .iter()
        .map(|r| (r.identity.as_deref().unwrap(), r.status, r.width))
        .collect();
    assert_eq!(
        got,
        vec![
            ("ann", ImageStatus::Ok, Some(640)),
            ("ann", ImageStatus::DecodeError, None),
            ("bob", ImageStatus::NotImage, None)
        ]
    );
    assert_eq!(t.rows[0].http_status, None);
}

#[test]
fn local_paths_in_a_list_are_read_only_when_allowed_and_only_under_the_list() {
    let tmp = tempfile::tempdir().unwrap();
    let lists = tmp.path().join("lists");
    std::fs::create_dir_all(lists.join("photos")).unwrap();
    std::fs::write(lists.join("photos/1.jpg"), synthetic_jpeg(64, 48, 1)).unwrap();
    let outside = tmp.path().join("outside.jpg");
    std::fs::write(&outside, synthetic_jpeg(64, 48, 2)).unwrap();
    let list = lists.join("urls.csv");
    std::fs::write(
        &list,
        format!(
            "url,identity\nphotos/1.jpg,ann\n../outside.jpg,ann\n{},ann\nphotos/2.jpg,ann/../x\n",
            outside.display()
        ),
    )
    .unwrap();
    let run_with = |name: &str, local: bool, absolute: bool| {
        let mut s = test_settings(&list);
        s.allow_local_paths = local;
        s.allow_absolute_paths = absolute;
        let run = RunDir::new(tmp.path().join("runs"), name);
        let stage = IngestStage::new(s, run.root()).unwrap();
        run_stage(&stage, &run, ShardSelection::All(1)).unwrap();
        ImagesTable::read(&run.stage("ingest").path().join("images.parquet")).unwrap()
    };
    let statuses = |t: &ImagesTable| t.rows.iter().map(|r| r.status).collect::<Vec<_>>();
    use ImageStatus::*;

    let t = run_with("refuse", false, false);
    // The unusable URL is named first; the identity is checked once the source is usable.
    assert_eq!(statuses(&t), vec![InvalidUrl; 4]);
    assert!(t.rows.iter().all(|r| r.image_id.is_none()));

    let t = run_with("under", true, false);
    assert_eq!(
        statuses(&t),
        vec![Ok, InvalidUrl, InvalidUrl, InvalidIdentity]
    );
    assert!(
        t.rows[1]
            .error
            .as_deref()
            .unwrap()
            .contains("--allow-absolute-paths"),
        "{:?}",
        t.rows[1].error
    );
    assert!(
        t.rows[3].error.as_deref().unwrap().contains("identity"),
        "{:?}",
        t.rows[3].error
    );

    let t = run_with("anywhere", true, true);
    assert_eq!(statuses(&t), vec![Ok, Ok, Duplicate, InvalidIdentity]);
}
