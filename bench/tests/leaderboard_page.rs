//! The leaderboard page in a real browser: headless Chromium loads `index.html` and its
//! thumbnails from a loopback HTTP server, and the test checks what a reader would see and do:
//! headings, escaped method names, sorting by click and by keyboard, the charts, the images, the
//! preference arena's sections (ratings table, chart, win-rate heat table), a phone-width
//! layout, and a console free of errors.
//!
//! Needs `chromium` and `chromedriver` (Debian/Ubuntu: `apt-get install chromium
//! chromium-driver`); without them the test fails and says so. Set
//! `IDFORGE_LEADERBOARD_PAGE_OUT=<dir>` to keep the rendered page for a look.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::static_server::StaticServer;
use common::webdriver::WebDriver;
use idforge_bench::leaderboard::{
    BootstrapInfo, Cost, Estimate, Grid, GridCell, LEADERBOARD_SCHEMA_VERSION, Leaderboard,
    MethodEntry, MethodRow, MetricInfo, ModelsUsed, ProtocolInfo, SetResult, html,
};
use idforge_bench::ratings::{ArenaResults, RatingOptions, rate_votes};
use idforge_core::schema::{Answer, Question, VoteRow};
use serde_json::{Value, json};

const COPY: &str = "copy-reference";
const PHOTO: &str = "photomaker";
const NASTY: &str = "<b>&\"x\"";

fn est(value: f64, half: f64) -> Estimate {
    Estimate {
        value,
        lo: value - half,
        hi: value + half,
        n: 40,
    }
}

fn metric(key: &str, label: &str, higher_is_better: bool, per_image: bool) -> MetricInfo {
    MetricInfo {
        key: key.into(),
        label: label.into(),
        higher_is_better,
        per_image,
        description: format!("What {label} measures."),
    }
}

/// Three methods (the baseline, a normal one, one whose name is markup), two sets; CLIP-T only
/// on the first, FID absent for the baseline, costs partly given.
fn leaderboard() -> Leaderboard {
    let names = [COPY, PHOTO, NASTY];
    let face = [0.95, 0.40, 0.62];
    let clip = [21.0, 30.2, 31.4];
    let row = |i: usize, with_clip: bool| {
        let mut metrics = BTreeMap::new();
        metrics.insert("face_sim".to_string(), est(face[i], 0.02));
        if with_clip {
            metrics.insert("clip_t".to_string(), est(clip[i], 0.4));
        }
        if i != 0 {
            metrics.insert("fid".to_string(), est([0.0, 48.5, 61.25][i], 2.5));
        }
        metrics.insert("face_failure".to_string(), est([0.0, 10.0, 5.0][i], 1.0));
        let mut by_category = BTreeMap::new();
        for (c, shift) in [("portrait", 0.03), ("action", -0.04), ("style", 0.0)] {
            let mut m = BTreeMap::new();
            m.insert("face_sim".to_string(), est(face[i] + shift, 0.03));
            if with_clip {
                m.insert("clip_t".to_string(), est(clip[i] - shift * 20.0, 0.6));
            }
            by_category.insert(c.to_string(), m);
        }
        MethodRow {
            method: names[i].into(),
            expected: 60,
            scored: if i == 2 { 57 } else { 60 },
            metrics,
            by_category,
        }
    };
    let method = |name: &str, builtin: bool, cost: Cost| MethodEntry {
        name: name.into(),
        builtin,
        base_model: (!builtin).then(|| "SDXL 1.0".into()),
        link: None,
        trigger: (!builtin).then(|| "img".into()),
        settings: BTreeMap::from([("steps".to_string(), "50".to_string())]),
        cost,
    };
    Leaderboard {
        schema_version: LEADERBOARD_SCHEMA_VERSION,
        protocol: ProtocolInfo {
            name: "idforge-v1".into(),
            version: 1,
            sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            references_sha256: "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"
                .into(),
            seeds: 2,
            prompts: 30,
            categories: vec!["portrait".into(), "action".into(), "style".into()],
        },
        generated_at: "2025-06-01T12:00:00Z".into(),
        idforge_version: "0.1.0".into(),
        models: ModelsUsed {
            face_embedder: "arcface:glint360k_r100.onnx".into(),
            clip: Some("open_clip ViT-L-14".into()),
            dino: None,
            inception: Some("pt_inception-2015-12-05.pth".into()),
            face_detector: None,
        },
        bootstrap: BootstrapInfo {
            resamples: 1000,
            seed: 20250601,
            level: 0.95,
            unit: "(identity, prompt) items".into(),
        },
        metrics: vec![
            metric("face_sim", "Face-Sim", true, true),
            metric("clip_t", "CLIP-T", true, true),
            metric("fid", "FID", false, false),
            metric("face_failure", "No face %", false, true),
        ],
        methods: vec![
            method(
                COPY,
                true,
                Cost {
                    training_minutes: Some(0.0),
                    ..Cost::default()
                },
            ),
            method(
                PHOTO,
                false,
                Cost {
                    training_minutes: Some(0.0),
                    peak_memory_gib: Some(23.1),
                    disk_per_identity_mib: Some(0.0),
                    seconds_per_image: Some(6.4),
                    hardware: Some("1× A100 80GB".into()),
                    ..Cost::default()
                },
            ),
            method(
                NASTY,
                false,
                Cost {
                    training_minutes: Some(12.5),
                    seconds_per_image: Some(3.0),
                    ..Cost::default()
                },
            ),
        ],
        sets: vec![
            SetResult {
                name: "in-train".into(),
                description: "Identities the adapters saw in training.".into(),
                identities: 10,
                references: 40,
                rows: (0..3).map(|i| row(i, true)).collect(),
            },
            SetResult {
                name: "out-of-train".into(),
                description: "Identities never seen.".into(),
                identities: 10,
                references: 40,
                rows: (0..3).map(|i| row(i, false)).collect(),
            },
        ],
        grids: vec![Grid {
            set: "in-train".into(),
            identity: "id_007".into(),
            prompt_id: "p12".into(),
            prompt: "a person surfing a wave, <golden hour>".into(),
            seed: 1,
            reference: "thumbs/ref id_007.png".into(),
            cells: vec![
                GridCell {
                    method: COPY.into(),
                    image: Some("thumbs/copy.png".into()),
                    face_sim: Some(0.951),
                },
                GridCell {
                    method: PHOTO.into(),
                    image: Some("thumbs/b&x #1.png".into()),
                    face_sim: Some(0.402),
                },
                GridCell {
                    method: NASTY.into(),
                    image: None,
                    face_sim: None,
                },
            ],
        }],
        arena: Some(arena()),
    }
}

/// Six methods in the arena (the three of the tables, three more with long names, so the
/// win-rate matrix is wide), with hidden strengths; about 1500 votes on both questions from 8
/// raters, drawn by a fixed integer hash so the page is the same on every run.
const ARENA_METHODS: [&str; 6] = [
    PHOTO,
    "instantid-sdxl-with-a-long-name",
    NASTY,
    "pulid-flux-v0.9.1",
    COPY,
    "ip-adapter-faceid-plusv2-sd15",
];

fn arena() -> ArenaResults {
    let strength: [f64; 6] = [1.0, 0.7, 0.4, 0.2, -0.3, -0.8];
    let hash = |k: u64| {
        let mut z = k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    };
    let mut rows = Vec::new();
    for k in 0..1500u64 {
        let i = (hash(4 * k) * 6.0) as usize % 6;
        let j = (i + 1 + (hash(4 * k + 1) * 5.0) as usize % 5) % 6;
        let p = 1.0 / (1.0 + (strength[j] - strength[i]).exp());
        let u = hash(4 * k + 2);
        let answer = if u < 0.1 {
            Answer::Tie
        } else if u < 0.15 {
            Answer::Neither
        } else if hash(4 * k + 3) < p {
            Answer::Left
        } else {
            Answer::Right
        };
        rows.push(VoteRow {
            vote_id: k as i64,
            rater: format!("rater-{}", k % 8),
            question: if k % 3 == 0 {
                Question::Adherence
            } else {
                Question::Fidelity
            },
            set: "in-train".into(),
            identity: format!("id_{:03}", k % 12),
            prompt_id: "p12".into(),
            seed: 1,
            method_left: ARENA_METHODS[i].into(),
            method_right: ARENA_METHODS[j].into(),
            answer,
            practice: k % 100 == 0,
            shown_at: 0,
            answered_at: 0,
            answer_ms: 1200,
        });
    }
    rate_votes(
        &rows,
        "arena/votes.parquet",
        &RatingOptions {
            resamples: 300,
            seed: 3,
            ..RatingOptions::default()
        },
    )
    .unwrap()
}

/// Writes the page and its thumbnails (small gradients, one colour per image) into `dir`.
fn write_page(lb: &Leaderboard, dir: &Path) {
    std::fs::create_dir_all(dir.join("thumbs")).unwrap();
    std::fs::write(dir.join("index.html"), html::render(lb)).unwrap();
    let grid = &lb.grids[0];
    let paths = std::iter::once(grid.reference.as_str())
        .chain(grid.cells.iter().filter_map(|c| c.image.as_deref()));
    for (k, rel) in paths.enumerate() {
        let base = [[0u8, 114, 178], [230, 159, 0], [0, 158, 115]][k % 3];
        let img = image::RgbImage::from_fn(64, 64, |x, y| {
            let t = (x + y) as f32 / 126.0;
            image::Rgb(base.map(|c| (f32::from(c) * (0.6 + 0.4 * t)) as u8))
        });
        img.save(dir.join(rel)).unwrap();
    }
}

/// Method names of the table's rows, top to bottom.
fn row_order(wd: &WebDriver, table: &str) -> Vec<String> {
    let v = wd
        .execute(
            "return Array.from(document.querySelector(arguments[0]).tBodies[0].rows).map(r => r.dataset.method);",
            vec![json!(table)],
        )
        .unwrap();
    serde_json::from_value(v).unwrap()
}

/// The column's `aria-sort` values, by column number.
fn aria_sorts(wd: &WebDriver, table: &str) -> Vec<String> {
    let v = wd
        .execute(
            "return Array.from(document.querySelectorAll(arguments[0] + ' th[aria-sort]')).map(h => h.getAttribute('aria-sort'));",
            vec![json!(table)],
        )
        .unwrap();
    serde_json::from_value(v).unwrap()
}

fn click_header(wd: &WebDriver, table: &str, col: usize) {
    let button = wd
        .find(&format!("{table} th[data-col=\"{col}\"] button"))
        .unwrap();
    wd.click(&button).unwrap();
}

#[test]
fn leaderboard_page_in_a_real_browser() {
    let started = Instant::now();
    let lb = leaderboard();
    let dir = tempfile::tempdir().unwrap();
    write_page(&lb, dir.path());
    if let Some(out) = std::env::var_os("IDFORGE_LEADERBOARD_PAGE_OUT") {
        write_page(&lb, Path::new(&out));
    }
    let server = StaticServer::start(dir.path()).unwrap();
    let wd = WebDriver::start().unwrap_or_else(|e| panic!("cannot run the browser test: {e}"));
    wd.goto(&server.url("index.html")).unwrap();

    // Title and headers.
    assert_eq!(wd.title().unwrap(), "Leaderboard — idforge-v1 v1");
    let h1 = wd.text(&wd.find("h1").unwrap()).unwrap();
    assert!(
        h1.contains("Leaderboard") && h1.contains("idforge-v1 v1"),
        "{h1}"
    );
    let h2: Vec<String> = wd
        .find_all("h2")
        .unwrap()
        .iter()
        .map(|e| wd.text(e).unwrap())
        .collect();
    for want in [
        "in-train",
        "out-of-train",
        "Arena — identity fidelity",
        "Arena — prompt adherence",
        "Image grids",
        "Methods",
        "Metric definitions",
    ] {
        assert!(
            h2.iter().any(|h| h == want),
            "no heading {want:?} in {h2:?}"
        );
    }
    let header = wd.text(&wd.find("header.page-header").unwrap()).unwrap();
    for want in [
        "9f86d081884c",
        "arcface:glint360k_r100.onnx",
        "1000 resamples",
        "DINO not given",
    ] {
        assert!(header.contains(want), "header lacks {want:?}: {header}");
    }

    // The markup in a method name is text, not elements.
    let table = "#set-1-in-train-table";
    let nasty = wd
        .find(&format!("{table} tbody tr:nth-child(3) th .name"))
        .unwrap();
    assert_eq!(wd.text(&nasty).unwrap(), NASTY);
    assert_eq!(
        wd.execute("return document.querySelectorAll('main b').length;", vec![])
            .unwrap(),
        json!(0)
    );

    // Sorting: file order first; Face-Sim (higher is better) sorts best first, then toggles.
    assert_eq!(row_order(&wd, table), [COPY, PHOTO, NASTY]);
    assert!(aria_sorts(&wd, table).iter().all(|s| s == "none"));
    click_header(&wd, table, 2);
    assert_eq!(row_order(&wd, table), [COPY, NASTY, PHOTO]);
    assert_eq!(aria_sorts(&wd, table)[2], "descending");
    click_header(&wd, table, 2);
    assert_eq!(row_order(&wd, table), [PHOTO, NASTY, COPY]);
    assert_eq!(aria_sorts(&wd, table)[2], "ascending");
    assert_eq!(
        aria_sorts(&wd, table)
            .iter()
            .filter(|s| *s != "none")
            .count(),
        1
    );
    // The numbers themselves are in order, read from the cells.
    let shown: Vec<f64> = serde_json::from_value(
        wd.execute(
            "return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr td:nth-of-type(2) .v')).map(e => parseFloat(e.textContent));",
            vec![json!(table)],
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(shown, [0.40, 0.62, 0.95]);
    // FID (lower is better) sorts ascending first; the baseline, without FID, stays last both ways.
    click_header(&wd, table, 4);
    assert_eq!(row_order(&wd, table), [PHOTO, NASTY, COPY]);
    assert_eq!(aria_sorts(&wd, table)[4], "ascending");
    click_header(&wd, table, 4);
    assert_eq!(row_order(&wd, table), [NASTY, PHOTO, COPY]);
    // Method names sort as text.
    click_header(&wd, table, 0);
    assert_eq!(row_order(&wd, table), [NASTY, COPY, PHOTO]);
    // Keyboard: focus the CLIP-T header's button and press Enter, then Space.
    wd.execute(
        "document.querySelector(arguments[0] + ' th[data-col=\"3\"] button').focus();",
        vec![json!(table)],
    )
    .unwrap();
    wd.press_key("\u{E007}").unwrap();
    assert_eq!(row_order(&wd, table), [NASTY, PHOTO, COPY]);
    assert_eq!(aria_sorts(&wd, table)[3], "descending");
    wd.press_key(" ").unwrap();
    assert_eq!(row_order(&wd, table), [COPY, PHOTO, NASTY]);
    assert_eq!(aria_sorts(&wd, table)[3], "ascending");
    // The other set's table was left alone.
    assert_eq!(
        row_order(&wd, "#set-2-out-of-train-table"),
        [COPY, PHOTO, NASTY]
    );

    // Charts: drawn, sized, one point per method; the set without CLIP-T says why.
    let charts: Value = wd
        .execute(
            "return Array.from(document.querySelectorAll('svg.chart')).map(s => ({
                 cls: s.getAttribute('class'), width: s.getBoundingClientRect().width,
                 title: s.querySelector('title').textContent, points: s.querySelectorAll('.point').length,
                 bars: s.querySelectorAll('.bar').length, text: s.textContent }));",
            vec![],
        )
        .unwrap();
    let charts = charts.as_array().unwrap();
    assert_eq!(
        charts.len(),
        7,
        "tradeoff + 2 bar charts, dot plot + 1 bar chart, one arena chart per question: {charts:?}"
    );
    for c in charts {
        assert!(
            c["width"].as_f64().unwrap() > 200.0,
            "chart not laid out: {c}"
        );
        assert!(!c["title"].as_str().unwrap().is_empty());
    }
    assert_eq!(charts[0]["cls"], "chart chart-tradeoff");
    assert_eq!(charts[0]["points"], 3);
    assert_eq!(charts[1]["bars"], 9);
    assert_eq!(charts[3]["cls"], "chart chart-dots");
    assert!(
        charts[3]["text"]
            .as_str()
            .unwrap()
            .contains("CLIP-T not available for this set")
    );
    assert!(
        charts[0]["text"].as_str().unwrap().contains(NASTY),
        "escaped label shows as text"
    );

    // The arena: per question a sortable ratings table, a chart and a win-rate heat table.
    let arena = lb.arena.as_ref().unwrap();
    for (k, q) in arena.questions.iter().enumerate() {
        let table = format!("#arena-{}-table", q.question.as_str());
        let by_rating: Vec<&str> = q.methods.iter().map(|m| m.method.as_str()).collect();
        assert_eq!(row_order(&wd, &table), by_rating, "best first");
        // Rating sorts best first, then reverses; the interval column sorts by its lower bound.
        click_header(&wd, &table, 2);
        assert_eq!(row_order(&wd, &table), by_rating);
        assert_eq!(aria_sorts(&wd, &table)[2], "descending");
        click_header(&wd, &table, 2);
        let reversed: Vec<&str> = by_rating.iter().rev().copied().collect();
        assert_eq!(row_order(&wd, &table), reversed);
        click_header(&wd, &table, 3);
        let mut by_lo = q.methods.clone();
        by_lo.sort_by(|a, b| b.lo.unwrap().total_cmp(&a.lo.unwrap()));
        let by_lo: Vec<&str> = by_lo.iter().map(|m| m.method.as_str()).collect();
        assert_eq!(row_order(&wd, &table), by_lo);
        // Votes, most first; then back to rank order.
        click_header(&wd, &table, 4);
        let votes: Vec<f64> = serde_json::from_value(
            wd.execute(
                "return Array.from(document.querySelector(arguments[0]).tBodies[0].rows).map(r => parseFloat(r.cells[4].textContent));",
                vec![json!(table)],
            )
            .unwrap(),
        )
        .unwrap();
        assert!(votes.windows(2).all(|w| w[0] >= w[1]), "{votes:?}");
        click_header(&wd, &table, 1);
        assert_eq!(
            row_order(&wd, &table),
            by_rating,
            "rank order, ties in file order"
        );
        // The shown numbers are the document's.
        let first = wd
            .text(&wd.find(&format!("{table} tbody tr:first-child")).unwrap())
            .unwrap();
        let best = &q.methods[0];
        assert!(
            first.contains(&format!("{:.0}", best.rating))
                && first.contains(&format!(
                    "[{:.0}, {:.0}]",
                    best.lo.unwrap(),
                    best.hi.unwrap()
                )),
            "{first}"
        );
        let chart = &charts[5 + k];
        assert_eq!(chart["cls"], "chart chart-arena");
        assert_eq!(chart["points"], q.methods.len());
        let cells: Value = wd
            .execute(
                "const t = document.querySelector(arguments[0]);
                 return { cells: t.querySelectorAll('tbody td.num').length,
                          coloured: Array.from(t.querySelectorAll('tbody td.num')).filter(c =>
                              getComputedStyle(c).backgroundColor !== 'rgba(0, 0, 0, 0)').length };",
                vec![json!(format!("#arena-{}-wins", q.question.as_str()))],
            )
            .unwrap();
        let n = q.methods.len();
        assert_eq!(cells["cells"], n * (n - 1), "{cells}");
        assert!(
            cells["coloured"].as_u64().unwrap() >= (n * (n - 1) / 2) as u64,
            "heat colours not applied: {cells}"
        );
    }
    let header = wd.text(&wd.find("header.page-header").unwrap()).unwrap();
    assert!(
        header.contains("ARENA") || header.contains("Arena"),
        "{header}"
    );

    // Grid thumbnails (one with a space, `&` and `#` in its name) loaded; the missing one says so.
    wd.wait_for(
        "return Array.from(document.images).every(i => i.complete);",
        Duration::from_secs(10),
    )
    .unwrap();
    let widths: Vec<f64> = serde_json::from_value(
        wd.execute(
            "return Array.from(document.querySelectorAll('.grid img')).map(i => i.naturalWidth);",
            vec![],
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(widths, [64.0, 64.0, 64.0]);
    let missing = wd.find(".grid .cell[data-method] .missing").unwrap();
    assert_eq!(wd.text(&missing).unwrap(), "missing");
    let scores = wd.text(&wd.find(".grid-row").unwrap()).unwrap();
    assert!(
        scores.contains("Face-Sim 0.402") && scores.contains("Face-Sim —"),
        "{scores}"
    );

    // Phone width: the page does not scroll sideways; the wide table scrolls in its box.
    wd.set_window_size(390, 844).unwrap();
    wd.wait_for("return window.innerWidth < 500;", Duration::from_secs(5))
        .unwrap();
    let layout = wd
        .execute(
            "const w = document.querySelector('.table-wrap');
             return { page: document.documentElement.scrollWidth, view: document.documentElement.clientWidth,
                      inner: w.scrollWidth, box: w.clientWidth };",
            vec![],
        )
        .unwrap();
    assert!(
        layout["page"].as_f64() <= layout["view"].as_f64(),
        "page overflows sideways: {layout}"
    );
    assert!(
        layout["inner"].as_f64() > layout["box"].as_f64(),
        "table should scroll in its box: {layout}"
    );
    // Every arena box (tables, heat tables, charts) fits the phone's width; wide tables scroll
    // inside their box.
    let boxes: Value = wd
        .execute(
            "return Array.from(document.querySelectorAll('section.arena .table-wrap, section.arena .chart-card'))
                 .map(e => ({ right: e.getBoundingClientRect().right, view: document.documentElement.clientWidth,
                              inner: e.scrollWidth, box: e.clientWidth, cls: e.className }));",
            vec![],
        )
        .unwrap();
    let boxes = boxes.as_array().unwrap();
    assert_eq!(
        boxes.len(),
        6,
        "2 ratings tables, 2 heat tables, 2 charts: {boxes:?}"
    );
    for b in boxes {
        assert!(
            b["right"].as_f64().unwrap() <= b["view"].as_f64().unwrap() + 0.5,
            "arena box sticks out of the page: {b}"
        );
    }
    assert!(
        boxes
            .iter()
            .any(|b| b["cls"] == "table-wrap heat-wrap" && b["inner"].as_f64() > b["box"].as_f64()),
        "the 6 × 6 heat table should scroll in its box on a phone: {boxes:?}"
    );

    // Nothing went wrong on the way: no console errors, every request found.
    let logs = wd.browser_logs().unwrap();
    let severe: Vec<_> = logs.iter().filter(|l| l.level == "SEVERE").collect();
    assert!(severe.is_empty(), "console errors: {severe:#?}");
    let requests = server.requests();
    assert!(
        requests.iter().all(|r| r.status == 200),
        "failed requests: {requests:?}"
    );
    assert_eq!(
        requests.len(),
        4,
        "the page, three thumbnails and nothing else: {requests:?}"
    );
    drop(wd);
    eprintln!("browser test took {:.1} s", started.elapsed().as_secs_f64());
}

/// Markdown and HTML agree with each other on the same document.
#[test]
fn markdown_and_html_show_the_same_numbers() {
    let lb = leaderboard();
    let md = idforge_bench::leaderboard::markdown::render(&lb);
    let page = html::render(&lb);
    for (value, interval) in [
        ("0.950", "[0.930, 0.970]"),
        ("30.20", "[29.80, 30.60]"),
        ("48.50", "[46.00, 51.00]"),
        ("10.0", "[9.0, 11.0]"),
    ] {
        assert!(
            md.contains(&format!("| {value} {interval} |")),
            "markdown lacks {value} {interval}"
        );
        assert!(
            page.contains(&format!(">{value}</span> <span class=\"ci\"")),
            "html lacks {value}"
        );
        assert!(
            page.contains(&format!(">{interval}</span>")),
            "html lacks {interval}"
        );
    }
    // The arena: rating and interval of every method, in both.
    for q in &lb.arena.as_ref().unwrap().questions {
        for m in &q.methods {
            let (rating, interval) = (
                format!("{:.0}", m.rating),
                format!("[{:.0}, {:.0}]", m.lo.unwrap(), m.hi.unwrap()),
            );
            assert!(
                md.contains(&format!(
                    "| {} | {rating} | {interval} | {} |",
                    m.rank, m.games
                )),
                "markdown lacks {} {rating} {interval}",
                m.method
            );
            assert!(
                page.contains(&format!("<span class=\"v\">{rating}</span>"))
                    && page.contains(&format!("<span class=\"ci-inline\">{interval}</span>")),
                "html lacks {} {rating} {interval}",
                m.method
            );
        }
    }
}
