//! `idforge clip score` on the tiny random-weight CLIP fixture, against torchmetrics'
//! per-pair 100·cos (bench/tests/fixtures/metrics/clip_score.json, from
//! tools/bench-reference/): a Hugging Face model folder, pairs i ↔ i.

mod common;

use std::path::Path;
use std::process::Command;

use common::idforge;

#[test]
fn clip_score_matches_torchmetrics_per_pair() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("models/tests/fixtures");
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("bench/tests/fixtures/metrics/clip_score.json"))
            .unwrap(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny-clip");
    std::fs::create_dir_all(&model).unwrap();
    for (from, to) in [
        ("clip/tiny_hf_gelu.safetensors", "model.safetensors"),
        ("clip/tiny_hf_gelu.config.json", "config.json"),
        ("clip/tiny_tokenizer.json", "tokenizer.json"),
    ] {
        std::fs::copy(fixtures.join(from), model.join(to)).unwrap();
    }
    let mut cmd = idforge();
    cmd.args(["clip", "score", "--weights"]).arg(&model);
    for image in reference["images"].as_array().unwrap() {
        cmd.arg("--image")
            .arg(fixtures.join(image.as_str().unwrap()));
    }
    for prompt in reference["prompts"].as_array().unwrap() {
        cmd.arg("--text").arg(prompt.as_str().unwrap());
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scores: Vec<f64> = stdout
        .lines()
        .map(|l| l.split('\t').next().unwrap().parse().unwrap())
        .collect();
    let want: Vec<f64> = reference["per_pair"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(scores.len(), want.len());
    // One pair: torchmetrics' CLIPScore of a single pair is max(100·cos, 0). The CLI prints 4
    // decimals; the per-pair parity of the embeddings is 1.6e-5 (bench's metric_parity).
    for (got, w) in scores.iter().zip(&want) {
        assert!((got - w.max(0.0)).abs() < 2e-4, "{got} vs {w}");
    }
    // Errors a user meets first.
    let bad = Command::new(env!("CARGO_BIN_EXE_idforge"))
        .args(["clip", "score", "--weights"])
        .arg(tmp.path().join("nope"))
        .args(["--image", "x.png", "--text", "t"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[test]
fn clip_score_refuses_a_tokenizer_larger_than_the_model() {
    // The tiny model's embedding table has 1 024 rows; without its own tokenizer.json the
    // cached 49 408-token BPE vocabulary would produce ids past the table. That is a clear
    // error naming both sizes, not a panic in the embedding lookup.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("models/tests/fixtures/clip");
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny-clip");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::copy(
        fixtures.join("tiny_hf_gelu.safetensors"),
        model.join("model.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        fixtures.join("tiny_hf_gelu.config.json"),
        model.join("config.json"),
    )
    .unwrap();
    let out = idforge()
        .args(["clip", "score", "--weights"])
        .arg(&model)
        .arg("--image")
        .arg(fixtures.join("images/crop_96x130.png"))
        .args(["--text", "a photo of a cat"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("49408") && stderr.contains("1024") && stderr.contains("tokenizer"),
        "{stderr}"
    );
}
