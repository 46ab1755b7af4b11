//! The rater's page in a real browser: headless Chromium (driven over WebDriver) opens the
//! arena, starts, answers the practice pairs and five counted pairs by clicking and by keyboard,
//! survives a reload, fits a 375 px phone screen, logs no console error (the CSP would log any
//! blocked resource), and the answers are then read back from the SQLite database.
//!
//! Needs `chromium` and `chromedriver` (Debian/Ubuntu: `apt-get install chromium
//! chromium-driver`); without them the test fails and says so. Set
//! `IDFORGE_ARENA_PAGE_OUT=<dir>` to keep screenshots (desktop and phone) for a look.

mod common;

use std::time::Duration;

use common::arena::{config, make_bench, query};
use common::webdriver::WebDriver;
use idforge_bench::arena::ArenaServer;

const WAIT: Duration = Duration::from_secs(20);

/// Waits until the page has rendered its `n`-th pair and enabled the buttons.
fn wait_for_pair(wd: &WebDriver, n: usize) {
    wd.wait_for(
        &format!(
            "return document.body.dataset.state === 'ready' && document.body.dataset.shown === '{n}';"
        ),
        WAIT,
    )
    .unwrap_or_else(|e| panic!("pair {n}: {e}"));
}

/// Saves a screenshot as `<$IDFORGE_ARENA_PAGE_OUT>/<name>.png` when that is set.
fn keep_screenshot(wd: &WebDriver, name: &str) {
    if let Some(dir) = std::env::var_os("IDFORGE_ARENA_PAGE_OUT") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), wd.screenshot().unwrap()).unwrap();
    }
}

fn text_of(wd: &WebDriver, selector: &str) -> String {
    let el = wd.find(selector).unwrap();
    wd.text(&el).unwrap()
}

#[test]
fn a_rater_answers_practice_and_five_pairs_in_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let bench = make_bench(tmp.path(), &["m-one", "m-two"], 3, 2, 2);
    let mut cfg = config(tmp.path(), &bench);
    cfg.practice = 2;
    cfg.block = 4;
    let db = cfg.db.clone();
    let server = ArenaServer::start(cfg, "127.0.0.1:0").unwrap();
    let wd = WebDriver::start().unwrap_or_else(|e| panic!("{e}"));

    wd.goto(&server.url()).unwrap();
    assert!(wd.title().unwrap().contains("idforge arena"));
    wd.wait_for("return document.body.dataset.state === 'intro';", WAIT)
        .unwrap();
    keep_screenshot(&wd, "intro");
    let start = wd.find("#start").unwrap();
    wd.click(&start).unwrap();

    // Pairs 1–2: fidelity practice; 3–6: fidelity counted (block of 4); 7–8: adherence practice;
    // 9: adherence counted. The clicks and keys below answer them in this order.
    enum Act {
        Click(&'static str),
        Key(&'static str),
    }
    let acts = [
        Act::Click("left"),
        Act::Click("right"),
        Act::Click("left"),
        Act::Key("\u{E014}"), // ArrowRight
        Act::Click("tie"),
        Act::Key("n"),
        Act::Click("neither"),
        Act::Key("1"),
        Act::Click("right"),
    ];
    let expected = [
        "left", "right", "left", "right", "tie", "neither", "neither", "left", "right",
    ];
    // Pairs rendered before the page's own counter restarted (at the reload).
    let mut offset = 0;
    for (i, act) in acts.iter().enumerate() {
        let n = i + 1;
        wait_for_pair(&wd, n - offset);
        let instruction = text_of(&wd, "#instruction");
        let practice = wd.find("#practice").unwrap();
        let practice_shown = wd.attribute(&practice, "hidden").unwrap().is_none();
        let is_practice = matches!(n, 1 | 2 | 7 | 8);
        assert_eq!(practice_shown, is_practice, "pair {n}: practice banner");
        if is_practice {
            assert!(wd.text(&practice).unwrap().contains("not counted"));
        }
        if n <= 6 {
            assert!(instruction.contains("reference"), "pair {n}: {instruction}");
            let reference = wd.find("#reference-box").unwrap();
            assert!(wd.attribute(&reference, "hidden").unwrap().is_none());
        } else {
            assert!(
                instruction.contains("description"),
                "pair {n}: {instruction}"
            );
            assert!(text_of(&wd, "#prompt").contains("watercolour"));
        }
        // Both images really loaded.
        let loaded = wd
            .execute(
                "return ['left', 'right'].every(id => { const i = document.getElementById(id); \
                 return i.complete && i.naturalWidth > 0; });",
                vec![],
            )
            .unwrap();
        assert_eq!(loaded, serde_json::Value::Bool(true), "pair {n}: images");
        if n == 1 || n == 9 {
            keep_screenshot(&wd, &format!("desktop-pair-{n}"));
            // Reference, both images and the buttons on one desktop screen: no scrolling.
            let fits = wd
                .execute(
                    "return document.querySelector('.answers').getBoundingClientRect().bottom \
                     <= window.innerHeight;",
                    vec![],
                )
                .unwrap();
            assert_eq!(
                fits,
                serde_json::Value::Bool(true),
                "pair {n}: buttons below the fold"
            );
        }
        if n == 4 {
            // A reload in the middle shows the same pair again, not a new one.
            let before = wd
                .execute("return document.getElementById('left').src;", vec![])
                .unwrap();
            wd.goto(&server.url()).unwrap();
            wait_for_pair(&wd, 1);
            let after = wd
                .execute("return document.getElementById('left').src;", vec![])
                .unwrap();
            assert_eq!(before, after, "the pending pair survives a reload");
            offset = 3;
        }
        match act {
            Act::Click(answer) => {
                let b = wd
                    .find(&format!("button.answer[data-answer='{answer}']"))
                    .unwrap();
                wd.click(&b).unwrap();
            }
            Act::Key(k) => wd.press_key(k).unwrap(),
        }
    }
    wait_for_pair(&wd, 10 - offset);
    assert_eq!(text_of(&wd, "#progress"), "5 answers");

    // A 375 px phone: no sideways scroll, the four buttons visible and at least 44 px tall.
    wd.set_window_size(375, 812).unwrap();
    wd.wait_for("return window.innerWidth <= 400;", Duration::from_secs(5))
        .unwrap();
    let layout = wd
        .execute(
            "const b = Array.from(document.querySelectorAll('.answer')).map(e => e.getBoundingClientRect()); \
             return { page: document.documentElement.scrollWidth, view: document.documentElement.clientWidth, \
                      minHeight: Math.min(...b.map(r => r.height)), right: Math.max(...b.map(r => r.right)) };",
            vec![],
        )
        .unwrap();
    let (page, view) = (
        layout["page"].as_f64().unwrap(),
        layout["view"].as_f64().unwrap(),
    );
    keep_screenshot(&wd, "phone");
    assert!(page <= view, "sideways scroll on a phone: {layout}");
    assert!(layout["minHeight"].as_f64().unwrap() >= 44.0, "{layout}");
    assert!(layout["right"].as_f64().unwrap() <= view, "{layout}");
    // Keyboard focus (Tab) lands on an answer button and is visible.
    wd.press_key("\u{E004}").unwrap();
    let outline = wd
        .execute(
            "const b = document.activeElement; \
             return b.className + ' ' + getComputedStyle(b).outlineStyle + ' ' + getComputedStyle(b).outlineWidth;",
            vec![],
        )
        .unwrap();
    assert_eq!(
        outline,
        serde_json::Value::String("answer solid 3px".into())
    );

    let logs = wd.browser_logs().unwrap();
    let severe: Vec<_> = logs.iter().filter(|l| l.level == "SEVERE").collect();
    assert!(severe.is_empty(), "console errors: {severe:#?}");
    drop(wd);
    server.stop().unwrap();

    // The answers, in order, in the database: one rater, practice flagged, times measured.
    let rows = query(
        &db,
        "SELECT answer, practice, question, answer_ms, rater FROM votes ORDER BY vote_id",
    );
    let answers: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(answers, expected);
    let practice: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(practice, ["1", "1", "0", "0", "0", "0", "1", "1", "0"]);
    let questions: Vec<&str> = rows.iter().map(|r| r[2].as_str()).collect();
    assert_eq!(
        questions,
        [&["fidelity"; 6][..], &["adherence"; 3][..]].concat()
    );
    assert!(rows.iter().all(|r| r[3].parse::<i64>().unwrap() >= 0));
    assert_eq!(
        rows.iter()
            .map(|r| &r[4])
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        1,
        "one rater across the reload"
    );
    assert_eq!(
        query(&db, "SELECT count(*) FROM votes WHERE practice = 0")[0][0],
        "5"
    );
}
