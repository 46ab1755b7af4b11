//! `idforge caption` end to end on the face-api sample photographs, as the demo runs it:
//! ingest → curate → caption (offline attributes captioner) → dataset export; then the same
//! curated run captioned through the CLI by the loopback OpenAI-compatible server, and the
//! errors a user meets first.

mod common;

use std::path::{Path, PathBuf};

use idforge_caption::testkit::{ChatServer, Fault, ServerOptions};
use idforge_core::schema::{CaptionStatus, CaptionsTable, FacesTable, Verdict};

use common::{idforge, ok_stdout, text};

fn recipe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/recipes/demo.toml")
}

/// The demo recipe's ingest and curate, into `runs`.
fn curated_demo(runs: &Path) {
    assert!(
        idforge_core::cache::face_api_dir_if_fetched().is_some(),
        "the face-api package is missing: run `make assets` (tools/fetch-assets) first"
    );
    for stage in ["ingest", "curate"] {
        ok_stdout(
            idforge()
                .args([stage, "--recipe"])
                .arg(recipe())
                .arg("--runs-dir")
                .arg(runs),
        );
    }
}

#[test]
fn the_demo_pipeline_captions_every_kept_face_and_exports_them() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    curated_demo(&runs);
    let stdout = ok_stdout(
        idforge()
            .args(["caption", "--recipe"])
            .arg(recipe())
            .arg("--runs-dir")
            .arg(&runs),
    );
    assert!(stdout.contains("captioned, 0 failed"), "{stdout}");
    let run = runs.join("demo");
    let faces = FacesTable::read(&run.join("curate/faces.parquet")).unwrap();
    let kept: Vec<_> = faces
        .rows
        .iter()
        .filter(|r| r.verdict == Verdict::Kept)
        .map(|r| (r.image_id.clone(), r.face_index.unwrap()))
        .collect();
    let captions = CaptionsTable::read(&run.join("caption/captions.parquet")).unwrap();
    let keys: Vec<_> = captions
        .rows
        .iter()
        .map(|r| (r.image_id.clone(), r.face_index))
        .collect();
    assert_eq!(keys, kept, "one caption row per kept face, in table order");
    assert!(
        kept.len() >= 10,
        "the demo keeps the faces of six group photos"
    );
    for r in &captions.rows {
        assert_eq!(r.status, CaptionStatus::Ok, "{r:?}");
        assert_eq!(
            (r.captioner.as_str(), r.splitter.as_str()),
            ("attributes", "none")
        );
        let class = r.class_word.as_deref().unwrap();
        let general = r.general.as_deref().unwrap();
        assert!(
            general.starts_with(&format!("a {class} img"))
                || general.starts_with(&format!("an elderly {class} img"))
                || general.starts_with(&format!("a teenage {class} img"))
                || general.starts_with(&format!("a photo of a {class} img")),
            "{general}"
        );
        assert_eq!((r.background.as_deref(), r.body.as_deref()), (None, None));
        let raw: Vec<String> = serde_json::from_str(r.raw.as_deref().unwrap()).unwrap();
        let numbers: serde_json::Value = serde_json::from_str(&raw[0]).unwrap();
        let age = numbers["age"].as_f64().unwrap();
        assert!((1.0..100.0).contains(&age), "{numbers}");
        assert_eq!(numbers["expressions"].as_object().unwrap().len(), 7);
    }

    let stdout = ok_stdout(idforge().args(["dataset", "export"]).arg(&run));
    let export = run.join("dataset");
    assert!(export.join("README.md").is_file(), "{stdout}");
    let shards: Vec<_> = std::fs::read_dir(export.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(shards.iter().any(|s| s.starts_with("train-")), "{shards:?}");
}

#[test]
fn the_cli_drives_an_openai_compatible_server_and_reports_failures() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    curated_demo(&runs);
    let server = ChatServer::start(ServerOptions {
        api_key: Some("sk-cli".into()),
        ..Default::default()
    })
    .unwrap();
    // Every request of the first face fails validation: that face is a recorded failure.
    server.push_faults([Fault::Malformed, Fault::Malformed, Fault::Malformed]);
    let caption = |extra: &[&str]| {
        let mut c = idforge();
        c.args(["caption", "--recipe"])
            .arg(recipe())
            .arg("--runs-dir")
            .arg(&runs)
            .args([
                "--captioner",
                "openai",
                "--model",
                "test-vlm",
                "--concurrency",
                "1",
            ])
            .args(["--api-key-env", "IDFORGE_TEST_KEY"])
            .arg("--base-url")
            .arg(server.base_url())
            .env("IDFORGE_TEST_KEY", "sk-cli")
            .args(extra);
        c.output().unwrap()
    };
    let out = caption(&[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "failures exit 3\n{}",
        text(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(" 1 failed"), "{stdout}");
    assert!(stdout.contains("no valid JSON after 3 replies"), "{stdout}");
    let n = CaptionsTable::read(&runs.join("demo/caption/captions.parquet"))
        .unwrap()
        .rows
        .len();
    assert_eq!(server.requests().len(), n + 2);

    let out = caption(&["--retry-failed"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("retrying 1 failed"),
        "{}",
        text(&out)
    );
    assert_eq!(
        server.requests().len(),
        n + 3,
        "only the failed face was asked again"
    );
    let table = CaptionsTable::read(&runs.join("demo/caption/captions.parquet")).unwrap();
    assert!(table.rows.iter().all(|r| r.status == CaptionStatus::Ok
        && r.general.as_deref().unwrap().starts_with("a man img with")));
}

#[test]
fn first_mistakes_get_messages_that_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = idforge()
        .args(["caption", "--name", "nothing", "--runs-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("run `idforge curate` for this run first"),
        "{}",
        text(&out)
    );

    let out = idforge()
        .args([
            "caption",
            "--name",
            "nothing",
            "--captioner",
            "openai",
            "--runs-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("[caption.openai] model is required"),
        "{}",
        text(&out)
    );

    let out = idforge()
        .args([
            "caption",
            "--name",
            "x",
            "--trigger",
            "two words",
            "--runs-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(text(&out).contains("must be one word"), "{}", text(&out));
}
