//! `idforge bench init` checks every reference with the scoring face detector: a reference
//! without a face would count in No-face % but not in Face-Sim, so the bench is refused with
//! the list, or with `--drop-faceless-references` those references (and identities left
//! without one) are dropped and listed; the detector is recorded in `bench.toml`.

mod common;

use std::path::Path;

use common::{idforge, ok, sample_photos_dir, text};

const PROTOCOL: &str = r#"
[protocol]
name = "faces-test-v1"
version = 1
seeds = [0]
categories = ["style"]

[[sets]]
name = "in-train"

[[prompts]]
id = "style-01"
category = "style"
general = "an oil painting of a {class} {trigger}"
"#;

/// A smooth synthetic image with no face in it.
fn blank(path: &Path) {
    image::RgbImage::from_fn(96, 96, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 2) as u8, 120])
    })
    .save(path)
    .unwrap();
}

/// p1: a photo; p2: only a blank image; p3: a photo and a blank image.
fn make_references(dir: &Path) {
    let photos = sample_photos_dir();
    for id in ["p1", "p2", "p3"] {
        std::fs::create_dir_all(dir.join("in-train").join(id)).unwrap();
    }
    std::fs::copy(photos.join("sample1.jpg"), dir.join("in-train/p1/a.jpg")).unwrap();
    blank(&dir.join("in-train/p2/a.png"));
    std::fs::copy(photos.join("sample2.jpg"), dir.join("in-train/p3/a.jpg")).unwrap();
    blank(&dir.join("in-train/p3/b.png"));
}

#[test]
fn init_refuses_or_drops_faceless_references() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let refs = root.join("refs");
    make_references(&refs);
    let protocol = root.join("p.toml");
    std::fs::write(&protocol, PROTOCOL).unwrap();
    let bench = root.join("bench");
    let init = |extra: &[&str]| {
        let mut c = idforge();
        c.args(["bench", "init"])
            .arg(&bench)
            .arg("--protocol")
            .arg(&protocol)
            .arg("--references")
            .arg(&refs)
            .args(extra);
        c
    };

    // Refused, with every faceless reference and the flag named; nothing is left behind.
    let out = init(&[]).output().unwrap();
    let msg = text(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(msg.contains("references/in-train/p2/a.png"), "{msg}");
    assert!(msg.contains("references/in-train/p3/b.png"), "{msg}");
    assert!(
        !msg.contains("p1/a.jpg") && !msg.contains("p3/a.jpg"),
        "{msg}"
    );
    assert!(msg.contains("--drop-faceless-references"), "{msg}");
    assert!(msg.contains("ssd_mobilenetv1@0.5"), "{msg}");
    assert!(!bench.exists());

    // Dropped and listed: p2 loses its only reference and goes too; p3 keeps its photo.
    let out = ok(&mut init(&["--drop-faceless-references"]));
    let msg = text(&out);
    assert!(
        msg.contains("dropped reference references/in-train/p2/a.png"),
        "{msg}"
    );
    assert!(
        msg.contains("dropped reference references/in-train/p3/b.png"),
        "{msg}"
    );
    assert!(msg.contains("dropped identity in-train/p2"), "{msg}");
    assert!(!msg.contains("dropped identity in-train/p3"), "{msg}");
    assert!(!bench.join("references/in-train/p2").exists());
    assert!(!bench.join("references/in-train/p3/b.png").exists());
    assert!(bench.join("references/in-train/p3/a.jpg").is_file());
    // The source folder is untouched.
    assert!(refs.join("in-train/p2/a.png").is_file());

    // The detector is a bench setting.
    let settings = std::fs::read_to_string(bench.join("bench.toml")).unwrap();
    assert!(settings.contains("ssd_mobilenetv1"), "{settings}");
    assert!(settings.contains("min_confidence = 0.5"), "{settings}");

    // The plan counts the same identities every metric will: p1 and p3.
    let plan = String::from_utf8(
        ok(idforge()
            .args(["bench", "plan", "--format", "tsv"])
            .arg(&bench))
        .stdout,
    )
    .unwrap();
    let ids: Vec<&str> = plan
        .lines()
        .skip(1)
        .map(|l| l.split('\t').nth(1).unwrap())
        .collect();
    assert_eq!(ids, ["p1", "p3"], "{plan}");
}
