//! `idforge dataset export` on a hand-built run (faces and captions tables written directly,
//! crops saved as curate saves them): the summary it prints, the files it writes, and the
//! errors a user meets first (no run, a folder that is not an export, no captions yet).

mod common;

use std::path::{Path, PathBuf};

use idforge_core::resample::Plane8;
use idforge_core::schema::{
    CaptionRow, CaptionStatus, CaptionsTable, FaceRow, FacesTable, Reason, Verdict,
};

use common::{idforge, text};

fn save_jpeg(path: &Path, side: usize, shade: u8) {
    let plane = Plane8 {
        width: side,
        height: side,
        channels: 3,
        data: (0..side * side * 3).map(|i| (i as u8) ^ shade).collect(),
    };
    idforge_curate::crop::save_jpeg(path, &plane, 90).unwrap();
}

/// A run `demo` in `runs` with `per_identity` kept faces for each of four identities, all
/// captioned except the last face, whose caption failed.
fn make_run(runs: &Path, per_identity: u64) -> PathBuf {
    let run = runs.join("demo");
    let mut faces = Vec::new();
    let mut captions = Vec::new();
    for (k, who) in ["ana", "ben", "cleo", "dan"].iter().enumerate() {
        for j in 0..per_identity {
            let row_id = k as u64 * per_identity + j;
            let image_id = format!("{row_id:064x}");
            let crop = format!("curate/crops/{image_id}_0.jpg");
            let reference = format!("curate/refs/{image_id}_0.jpg");
            save_jpeg(&run.join(&crop), 32, row_id as u8);
            save_jpeg(&run.join(&reference), 16, row_id as u8);
            let mut f = FaceRow::image_rejected(
                row_id,
                image_id.clone(),
                Some(who.to_string()),
                Reason::NoFace,
                String::new(),
            );
            f.verdict = Verdict::Kept;
            f.reason = None;
            f.detail = None;
            f.group = Some(who.to_string());
            f.face_index = Some(0);
            f.crop_path = Some(crop.clone());
            f.face_box_in_crop = Some([4.0, 5.0, 28.0, 30.0]);
            f.ref_path = Some(reference);
            let ok = !(k == 3 && j + 1 == per_identity);
            captions.push(CaptionRow {
                row_id,
                image_id,
                face_index: 0,
                identity: f.identity.clone(),
                group: f.group.clone(),
                crop_path: crop,
                input_sha256: "00".repeat(32),
                captioner: "attributes".into(),
                model: "face-api-1.7.15".into(),
                prompt_version: "v1".into(),
                splitter: "none".into(),
                status: if ok {
                    CaptionStatus::Ok
                } else {
                    CaptionStatus::Failed
                },
                error: (!ok).then(|| "timeout".into()),
                caption: None,
                general: ok.then(|| format!("a person sks, row {row_id}")),
                general_raw: ok.then(|| format!("a person, row {row_id}")),
                background: None,
                body: None,
                class_word: ok.then(|| "person".into()),
                trigger: ok.then(|| "sks".into()),
                raw: None,
                attempts: 0,
                cached: false,
                latency_ms: None,
                prompt_tokens: None,
                completion_tokens: None,
            });
            faces.push(f);
        }
    }
    FacesTable {
        embedder: "face-api".into(),
        embedding_dim: 128,
        rows: faces,
    }
    .write(&run.join("curate/faces.parquet"))
    .unwrap();
    CaptionsTable { rows: captions }
        .write(&run.join("caption/captions.parquet"))
        .unwrap();
    run
}

fn shards(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn export_by_run_name_writes_shards_card_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let run = make_run(&runs, 3);
    let out = idforge()
        .args(["dataset", "export", "demo", "--runs-dir"])
        .arg(&runs)
        .args(["--rows-per-shard", "4", "--val-fraction", "0.25"])
        .args(["--license", "cc-by-4.0", "--pretty-name", "Demo faces"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("exported 11 of 12 kept faces (4 identities)"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("not exported: 1 caption failed, 0 without a caption, 0 missing files"),
        "{}",
        text(&out)
    );
    let export = run.join("dataset");
    // 3 training identities: 8 or 9 rows in shards of 4; one validation identity.
    let names = shards(&export);
    assert!(
        names.iter().any(|n| n.starts_with("train-00000-of-0000")),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n == "validation-00000-of-00001.parquet"),
        "{names:?}"
    );
    let card = std::fs::read_to_string(export.join("README.md")).unwrap();
    assert!(
        card.contains("license: \"cc-by-4.0\"") && card.contains("pretty_name: \"Demo faces\"")
    );
    assert!(export.join("idforge-export.json").is_file());

    // Again with named validation identities into the same folder: replaced, no stale shard.
    let out = idforge()
        .args(["dataset", "export"])
        .arg(&run)
        .args(["--val-identities", "ana,ben"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        shards(&export),
        [
            "train-00000-of-00001.parquet",
            "validation-00000-of-00001.parquet"
        ]
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("validation       6 rows     2 identities"),
        "{}",
        text(&out)
    );
}

#[test]
fn errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");

    let out = idforge()
        .args(["dataset", "export", "nope", "--runs-dir"])
        .arg(&runs)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no run folder"),
        "{}",
        text(&out)
    );

    let run = make_run(&runs, 2);
    let mine = dir.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("thesis.pdf"), "x").unwrap();
    let out = idforge()
        .args(["dataset", "export"])
        .arg(&run)
        .arg("--out")
        .arg(&mine)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not an idforge export") && stderr.contains("thesis.pdf"),
        "{}",
        text(&out)
    );

    std::fs::remove_file(run.join("caption/captions.parquet")).unwrap();
    let out = idforge()
        .args(["dataset", "export"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--include-uncaptioned"),
        "{}",
        text(&out)
    );
    let out = idforge()
        .args(["dataset", "export", "--include-uncaptioned"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("8 exported without prompts"),
        "{}",
        text(&out)
    );
}

#[test]
fn help_explains_the_layout_and_the_split() {
    let out = idforge()
        .args(["dataset", "export", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--val-fraction",
        "--val-identities",
        "--include-uncaptioned",
        "data/train-00000-of-000NN.parquet",
        "sha256(seed",
    ] {
        assert!(help.contains(needle), "`{needle}` not in\n{help}");
    }
}
