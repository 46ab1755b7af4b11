//! `idforge faces detect` on a face-api sample photograph (lossless PNG fixture), checked against
//! face-api 1.7.15's own results (`models/tests/fixtures/face-api/results.json`).

mod common;

use common::run;

const PNG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/tests/fixtures/face-api/sample1_640.png"
);

fn reference_face0() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/tests/fixtures/face-api/results.json"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["images"][0]["ssd_mobilenetv1"][0].clone()
}

#[test]
fn faces_detect_prints_boxes_landmarks_and_descriptors() {
    let out = run(&["faces", "detect", PNG]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["detector"], "ssd_mobilenetv1");
    let faces = v["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 3, "{stdout}");
    let want = reference_face0();
    let got = &faces[0];
    // Same tolerances as the library parity tests: scores 1e-4; boxes to 0.01 px here.
    assert!((got["score"].as_f64().unwrap() - want["score"].as_f64().unwrap()).abs() < 1e-4);
    for k in ["x", "y", "width", "height"] {
        let (g, w) = (
            got["box"][k].as_f64().unwrap(),
            want["box"][k].as_f64().unwrap(),
        );
        assert!((g - w).abs() < 0.01, "box {k}: {g} vs {w}");
    }
    assert_eq!(got["landmarks_68"].as_array().unwrap().len(), 68);
    assert_eq!(got["aligned_crop"], want["descriptor_crop"]);
    let (g, w) = (
        got["descriptor"].as_array().unwrap(),
        want["descriptor"].as_array().unwrap(),
    );
    assert_eq!(g.len(), 128);
    let dot: f64 = g
        .iter()
        .zip(w)
        .map(|(a, b)| a.as_f64().unwrap() * b.as_f64().unwrap())
        .sum();
    let norm = |v: &Vec<serde_json::Value>| {
        v.iter()
            .map(|a| a.as_f64().unwrap().powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let cos = dot / (norm(g) * norm(w));
    assert!(cos >= 0.9999, "descriptor cosine {cos}");
}

#[test]
fn faces_detect_tiny_boxes_only() {
    let out = run(&[
        "faces",
        "detect",
        "--detector",
        "tiny",
        "--until",
        "boxes",
        PNG,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["input_size"], 416);
    let faces = v["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 3, "{stdout}");
    // face-api 1.7.15 (tfjs CPU): score 0.798413, box x 258.326566, y 146.718301.
    assert!((faces[0]["score"].as_f64().unwrap() - 0.798413).abs() < 1e-4);
    assert!((faces[0]["box"]["x"].as_f64().unwrap() - 258.326566).abs() < 0.01);
    assert!((faces[0]["box"]["y"].as_f64().unwrap() - 146.718301).abs() < 0.01);
    assert!(faces[0].get("landmarks_68").is_none() && faces[0].get("descriptor").is_none());
}

#[test]
fn faces_detect_reports_bad_input_and_keeps_going() {
    let bad = run(&["faces", "detect", "--input-size", "100", PNG]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("multiple of 32"));

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("not-an-image.jpg");
    std::fs::write(&junk, b"this is text").unwrap();
    let out = run(&[
        "faces",
        "detect",
        "--until",
        "boxes",
        junk.to_str().unwrap(),
        PNG,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0]["error"]
            .as_str()
            .unwrap()
            .contains("not-an-image.jpg")
    );
    assert_eq!(lines[1]["faces"].as_array().unwrap().len(), 3);
}
