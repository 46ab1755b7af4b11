//! `idforge faces detect` on a face-api sample photograph (lossless PNG fixture): the three faces
//! face-api's own tiny face detector finds at input size 416.

#[test]
fn faces_detect_prints_the_reference_boxes_as_json() {
    let png = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/tests/fixtures/face-api/sample1_640.png"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_idforge"))
        .args(["faces", "detect", png])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let faces = v["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 3, "{stdout}");
    // face-api 1.7.15 (tfjs CPU): score 0.798413, box x 258.326566, y 146.718301 (results.json).
    assert!(
        (faces[0]["score"].as_f64().unwrap() - 0.798413).abs() < 1e-4,
        "{stdout}"
    );
    assert!(
        (faces[0]["box"]["x"].as_f64().unwrap() - 258.326566).abs() < 0.01,
        "{stdout}"
    );
    assert!(
        (faces[0]["box"]["y"].as_f64().unwrap() - 146.718301).abs() < 0.01,
        "{stdout}"
    );

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_idforge"))
        .args(["faces", "detect", "--input-size", "100", png])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("multiple of 32"));
}
