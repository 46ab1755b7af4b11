//! The `openai` captioner and `llm` splitter against the loopback OpenAI-compatible double:
//! good JSON, malformed JSON, 429 with Retry-After, 500, a slow answer, a server without
//! JSON-schema support; retries, validation, caching and the failure records.

use idforge_core::limits::{Concurrency, Delay, Retries, Seconds};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::backend::Flex;
use image::{ImageEncoder, RgbImage};

use idforge_caption::engine::{Engine, EngineInputs};
use idforge_caption::settings::{CallMode, CaptionSettings, CaptionerKind, SplitterKind};
use idforge_caption::stage::CaptionStage;
use idforge_caption::testkit::{ChatServer, Fault, ServerOptions};
use idforge_core::RunDir;
use idforge_core::run::ShardSelection;
use idforge_core::schema::faces::{FaceRow, FacesTable, Reason, Verdict};
use idforge_core::schema::{CaptionRow, CaptionStatus, CaptionsTable};

/// A run folder with a `faces` table of `n` kept faces (identities alice / bob) and one
/// rejected face, each kept face with its own small JPEG crop.
fn make_run(n: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("run");
    let mut rows = Vec::new();
    for i in 0..n {
        let crop = format!("curate/crops/{i:02}/face-{i}.jpg");
        let img = RgbImage::from_fn(48, 48, |x, y| {
            image::Rgb([(x * 5) as u8, (y * 5) as u8, (i * 40) as u8])
        });
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .write_image(img.as_raw(), 48, 48, image::ExtendedColorType::Rgb8)
            .unwrap();
        let path = root.join(&crop);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, jpeg).unwrap();
        let identity = if i % 2 == 0 { "alice" } else { "bob" };
        let mut row = FaceRow::image_rejected(
            i as u64,
            format!("{i:064x}"),
            Some(identity.into()),
            Reason::NoFace,
            String::new(),
        );
        row.verdict = Verdict::Kept;
        row.reason = None;
        row.detail = None;
        row.group = Some(identity.into());
        row.face_index = Some(0);
        row.crop_path = Some(crop);
        rows.push(row);
    }
    let mut rejected = rows[0].clone();
    rejected.face_index = Some(1);
    rejected.reject(Reason::LowScore, "score 0.4 < 0.5");
    rows.push(rejected);
    FacesTable {
        embedder: "face-api".into(),
        embedding_dim: 4,
        rows,
    }
    .write(&root.join("curate/faces.parquet"))
    .unwrap();
    (dir, root)
}

fn settings(server: &ChatServer) -> CaptionSettings {
    let mut s = CaptionSettings {
        captioner: CaptionerKind::Openai,
        ..Default::default()
    };
    s.openai.base_url = server.base_url();
    s.openai.model = "test-vlm".into();
    s.openai.backoff_s = Delay::lit(0.01);
    s.openai.max_backoff_s = Delay::lit(3.0);
    s.openai.timeout_s = Seconds::lit(10.0);
    s
}

fn stage(s: &CaptionSettings, root: &Path, api_key: Option<&str>) -> CaptionStage {
    let resolve = |p: &Path| p.to_path_buf();
    let engine = Engine::from_settings::<Flex>(
        s,
        EngineInputs {
            resolve: &resolve,
            face_api_models: None,
            api_key: api_key.map(str::to_string),
            device: Default::default(),
        },
    )
    .unwrap();
    CaptionStage::new(s.clone(), root, engine).unwrap()
}

fn run(stage: &CaptionStage, root: &Path, retry_failed: bool) -> (Vec<CaptionRow>, Option<String>) {
    let (report, note) = stage
        .run(&RunDir::at(root), ShardSelection::All(1), retry_failed)
        .unwrap();
    assert!(report.merged.is_some());
    let table = CaptionsTable::read(&root.join("caption/captions.parquet")).unwrap();
    (table.rows, note)
}

fn raw_replies(row: &CaptionRow) -> Vec<String> {
    serde_json::from_str(row.raw.as_deref().unwrap_or("[]")).unwrap()
}

#[test]
fn one_call_captions_every_crop_from_its_own_image_and_records_costs() {
    let server = ChatServer::start(ServerOptions {
        api_key: Some("sk-test".into()),
        ..Default::default()
    })
    .unwrap();
    let (_dir, root) = make_run(4);
    let mut s = settings(&server);
    s.openai.concurrency = Concurrency::lit(4);
    let (rows, note) = run(&stage(&s, &root, Some("sk-test")), &root, false);
    assert_eq!(note, None);
    assert_eq!(
        rows.len(),
        4,
        "one row per kept face, the rejected face is not captioned"
    );
    for r in &rows {
        assert_eq!(r.status, CaptionStatus::Ok, "{r:?}");
        let tag = &r.input_sha256[..8];
        let crop = std::fs::read(root.join(&r.crop_path)).unwrap();
        assert_eq!(r.input_sha256, idforge_core::hash::sha256_hex(&crop));
        assert_eq!(
            r.general_raw.as_deref(),
            Some(format!("a man with short dark hair and a calm expression, photo {tag}").as_str())
        );
        assert_eq!(
            r.general.as_deref(),
            Some(
                format!("a man img with short dark hair and a calm expression, photo {tag}")
                    .as_str()
            )
        );
        assert_eq!(r.background.as_deref(), Some("a plain white wall"));
        assert_eq!(
            r.body.as_deref(),
            Some("wearing a grey shirt, arms crossed")
        );
        assert_eq!(
            (r.class_word.as_deref(), r.trigger.as_deref()),
            (Some("man"), Some("img"))
        );
        assert_eq!(
            (r.captioner.as_str(), r.model.as_str()),
            ("openai", "test-vlm")
        );
        assert_eq!(
            (r.prompt_version.as_str(), r.splitter.as_str()),
            ("one-call-v1", "json")
        );
        assert_eq!(r.attempts, 1);
        assert!(!r.cached);
        assert!(r.latency_ms.is_some());
        assert!(
            r.prompt_tokens.unwrap() > 256 && r.completion_tokens.unwrap() > 5,
            "{r:?}"
        );
        assert_eq!(raw_replies(r).len(), 1);
    }
    let requests = server.requests();
    assert_eq!(requests.len(), 4);
    assert!(
        requests
            .iter()
            .all(|q| q.response_format && q.status == 200 && q.model == "test-vlm")
    );
    let mut sent: Vec<_> = requests
        .iter()
        .map(|q| q.image_sha256.clone().unwrap())
        .collect();
    let mut have: Vec<_> = rows.iter().map(|r| r.input_sha256.clone()).collect();
    sent.sort();
    have.sort();
    assert_eq!(sent, have, "each crop was sent once, byte for byte");
}

#[test]
fn a_wrong_api_key_is_a_failure_that_names_the_status() {
    let server = ChatServer::start(ServerOptions {
        api_key: Some("sk-test".into()),
        ..Default::default()
    })
    .unwrap();
    let (_dir, root) = make_run(1);
    let (rows, _) = run(
        &stage(&settings(&server), &root, Some("wrong")),
        &root,
        false,
    );
    assert_eq!(rows[0].status, CaptionStatus::Failed);
    let error = rows[0].error.as_deref().unwrap();
    assert!(error.contains("HTTP 401 after 1 attempt"), "{error}");
}

#[test]
fn retry_after_and_5xx_are_retried_and_invalid_json_is_retried_then_recorded() {
    let server = ChatServer::start(ServerOptions::default()).unwrap();
    let (_dir, root) = make_run(3);
    let mut s = settings(&server);
    s.openai.concurrency = Concurrency::lit(1);
    s.openai.json_retries = Retries::lit(2);
    server.push_faults([
        // Face 0: 429 (wait 1 s as told), 500, then a good answer.
        Fault::RateLimited("1".into()),
        Fault::Status(500),
        Fault::Pass,
        // Face 1: malformed JSON, then a good answer.
        Fault::Malformed,
        Fault::Pass,
        // Face 2: three bad replies: recorded as a failure with all three.
        Fault::Malformed,
        Fault::WrongShape,
        Fault::Malformed,
    ]);
    let st = stage(&s, &root, None);
    let start = Instant::now();
    let (rows, _) = run(&st, &root, false);
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );
    assert_eq!(rows[0].status, CaptionStatus::Ok);
    assert_eq!(rows[0].attempts, 3);
    assert_eq!(rows[1].status, CaptionStatus::Ok);
    assert_eq!(rows[1].attempts, 2);
    assert_eq!(
        raw_replies(&rows[1]).len(),
        2,
        "the malformed reply is kept"
    );
    assert_eq!(rows[2].status, CaptionStatus::Failed);
    assert_eq!(rows[2].attempts, 3);
    let error = rows[2].error.as_deref().unwrap();
    assert!(error.contains("no valid JSON after 3 replies"), "{error}");
    let raw = raw_replies(&rows[2]);
    assert_eq!(raw.len(), 3);
    assert!(raw[0].starts_with("Sure!"));
    assert!(rows[2].general.is_none() && rows[2].class_word.is_none());
    let statuses: Vec<u16> = server.requests().iter().map(|q| q.status).collect();
    assert_eq!(statuses, [429, 500, 200, 200, 200, 200, 200, 200]);

    // Failures are not cached: a re-run with --retry-failed asks again for face 2 only.
    let (rows, note) = run(&st, &root, true);
    assert!(note.unwrap().contains("retrying 1 failed"));
    assert_eq!(server.requests().len(), 9);
    assert!(rows.iter().all(|r| r.status == CaptionStatus::Ok));
    assert_eq!(
        rows.iter().map(|r| r.cached).collect::<Vec<_>>(),
        [true, true, false]
    );
}

#[test]
fn a_slow_answer_times_out_and_is_retried() {
    let server = ChatServer::start(ServerOptions::default()).unwrap();
    let (_dir, root) = make_run(1);
    let mut s = settings(&server);
    s.openai.timeout_s = Seconds::lit(0.5);
    server.push_faults([Fault::Slow(Duration::from_millis(1500)), Fault::Pass]);
    let (rows, _) = run(&stage(&s, &root, None), &root, false);
    assert_eq!(rows[0].status, CaptionStatus::Ok, "{:?}", rows[0].error);
    assert_eq!(rows[0].attempts, 2);
}

#[test]
fn a_server_without_schema_support_gets_instructions_and_validation() {
    let server = ChatServer::start(ServerOptions {
        no_schema_support: true,
        ..Default::default()
    })
    .unwrap();
    let (_dir, root) = make_run(3);
    let mut s = settings(&server);
    s.openai.concurrency = Concurrency::lit(1);
    let (rows, _) = run(&stage(&s, &root, None), &root, false);
    assert!(rows.iter().all(|r| r.status == CaptionStatus::Ok));
    let requests = server.requests();
    assert_eq!(requests.len(), 4, "one refusal, then one request per face");
    assert!(requests[0].response_format && requests[0].status == 400);
    assert!(requests[1..].iter().all(|q| !q.response_format && q.user_text.contains("Answer with only the JSON object")));
    assert_eq!(rows[0].attempts, 2, "the refused request is counted");
}

#[test]
fn the_cache_pays_for_nothing_twice_and_a_new_prompt_version_recaptions() {
    let server = ChatServer::start(ServerOptions::default()).unwrap();
    let (dir, root) = make_run(3);
    let mut s = settings(&server);
    run(&stage(&s, &root, None), &root, false);
    assert_eq!(server.requests().len(), 3);

    // Same settings: the stage is complete, nothing is asked.
    run(&stage(&s, &root, None), &root, false);
    assert_eq!(server.requests().len(), 3);

    // Another trigger: the stage starts over, every caption comes from the cache.
    s.trigger = "sks".into();
    let (rows, note) = run(&stage(&s, &root, None), &root, false);
    assert!(note.unwrap().contains("trigger img → sks"));
    assert_eq!(server.requests().len(), 3);
    assert!(
        rows.iter()
            .all(|r| r.cached && r.general.as_deref().unwrap().starts_with("a man sks with"))
    );

    // A new prompt version re-captions everything.
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/prompts/one-call-v1.toml"),
    )
    .unwrap()
    .replace("version = \"one-call-v1\"", "version = \"one-call-v2\"");
    let prompt = dir.path().join("one-call-v2.toml");
    std::fs::write(&prompt, text).unwrap();
    s.openai.prompt = Some(prompt);
    let (rows, note) = run(&stage(&s, &root, None), &root, false);
    assert!(
        note.unwrap()
            .contains("prompt version one-call-v1 → one-call-v2")
    );
    assert_eq!(server.requests().len(), 6);
    assert!(
        rows.iter()
            .all(|r| !r.cached && r.prompt_version == "one-call-v2")
    );
}

#[test]
fn two_call_mode_with_the_llm_splitter_loses_nothing_and_caches_the_split() {
    let server = ChatServer::start(ServerOptions::default()).unwrap();
    let (_dir, root) = make_run(2);
    let mut s = settings(&server);
    s.openai.mode = CallMode::TwoCall;
    s.splitter = SplitterKind::Llm;
    let (rows, _) = run(&stage(&s, &root, None), &root, false);
    let requests = server.requests();
    assert_eq!(requests.len(), 4);
    assert_eq!(
        requests.iter().filter(|q| q.image_sha256.is_some()).count(),
        2
    );
    assert!(
        requests
            .iter()
            .filter(|q| q.image_sha256.is_some())
            .all(|q| !q.response_format)
    );
    assert!(
        requests
            .iter()
            .filter(|q| q.image_sha256.is_none())
            .all(|q| q.response_format)
    );
    for r in &rows {
        let tag = &r.input_sha256[..8];
        assert_eq!(r.status, CaptionStatus::Ok, "{:?}", r.error);
        assert_eq!(r.splitter, "llm:test-vlm:split-v1");
        assert_eq!(r.prompt_version, "caption-v1");
        assert!(r.caption.as_deref().unwrap().contains(tag));
        assert_eq!(
            r.general_raw.as_deref(),
            Some(format!("A man with short dark hair and a calm expression, photo {tag}").as_str())
        );
        assert_eq!(
            r.body.as_deref(),
            Some("He is wearing a grey shirt with his arms crossed")
        );
        assert_eq!(
            r.background.as_deref(),
            Some("Behind him is a plain white wall")
        );
        assert_eq!(r.attempts, 2);
        assert_eq!(raw_replies(r).len(), 2);
    }
    s.trigger = "sks".into();
    run(&stage(&s, &root, None), &root, false);
    assert_eq!(
        server.requests().len(),
        4,
        "captions and splits both came from the cache"
    );
}

#[test]
fn two_call_mode_with_the_rules_splitter_needs_one_request_per_face() {
    let server = ChatServer::start(ServerOptions::default()).unwrap();
    let (_dir, root) = make_run(2);
    let mut s = settings(&server);
    s.openai.mode = CallMode::TwoCall;
    let (rows, _) = run(&stage(&s, &root, None), &root, false);
    assert_eq!(server.requests().len(), 2);
    for r in &rows {
        assert_eq!(r.status, CaptionStatus::Ok, "{:?}", r.error);
        assert_eq!(r.splitter, "rules-v1");
        assert!(
            r.general_raw
                .as_deref()
                .unwrap()
                .starts_with("A man with short dark hair"),
            "{r:?}"
        );
        assert!(r.body.as_deref().unwrap().contains("grey shirt"), "{r:?}");
        assert!(
            r.background.as_deref().unwrap().contains("white wall"),
            "{r:?}"
        );
    }
}

#[test]
fn imported_captions_are_matched_by_crop_or_image_and_a_missing_one_is_a_failure() {
    let (dir, root) = make_run(3);
    let faces = FacesTable::read(&root.join("curate/faces.parquet")).unwrap();
    let csv = dir.path().join("captions.csv");
    std::fs::write(
        &csv,
        format!(
            "crop_path,image_id,caption\n{},,\"A woman with curly red hair, wearing a green coat, in a snowy park.\"\n,{},A smiling boy holding a kite on a beach.\n",
            faces.rows[0].crop_path.as_deref().unwrap(),
            faces.rows[1].image_id
        ),
    )
    .unwrap();
    let mut s = CaptionSettings {
        captioner: CaptionerKind::Import,
        ..Default::default()
    };
    s.import.file = Some(csv);
    let (rows, _) = run(&stage(&s, &root, None), &root, false);
    assert_eq!(
        (rows[0].captioner.as_str(), rows[0].model.as_str()),
        ("import", "file:captions.csv")
    );
    assert_eq!(rows[0].status, CaptionStatus::Ok);
    assert_eq!(
        rows[0].general.as_deref(),
        Some("A woman img with curly red hair")
    );
    assert_eq!(rows[0].body.as_deref(), Some("wearing a green coat"));
    assert_eq!(rows[0].background.as_deref(), Some("in a snowy park"));
    assert_eq!(rows[1].status, CaptionStatus::Ok);
    assert_eq!(rows[1].class_word.as_deref(), Some("boy"));
    assert!(
        rows[1]
            .general
            .as_deref()
            .unwrap()
            .starts_with("A smiling boy img"),
        "{:?}",
        rows[1]
    );
    assert_eq!(rows[2].status, CaptionStatus::Failed);
    assert!(
        rows[2]
            .error
            .as_deref()
            .unwrap()
            .contains("no imported caption"),
        "{:?}",
        rows[2]
    );
}
