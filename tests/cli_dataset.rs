//! `idforge dataset export` on a hand-built run (faces and captions tables written directly,
//! crops saved as curate saves them): the summary it prints, the files it writes, and the
//! errors a user meets first (no run, a folder that is not an export, no captions yet).

mod common;

use std::path::{Path, PathBuf};

use common::{CuratedRun, idforge, text};
use idforge_core::resample::Plane8;

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
    let last = 4 * per_identity - 1;
    CuratedRun {
        identities: &["ana", "ben", "cleo", "dan"],
        per_identity,
        crop_side: 32,
        face_box: [4.0, 5.0, 28.0, 30.0],
    }
    .write(
        &run,
        |path, side, row_id| save_jpeg(path, side, row_id as u8),
        |row_id, _| {
            (row_id != last).then(|| {
                (
                    format!("a person sks, row {row_id}"),
                    format!("a person, row {row_id}"),
                )
            })
        },
    );
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
