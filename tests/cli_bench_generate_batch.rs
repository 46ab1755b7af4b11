//! `idforge bench generate --batch N` renders the images of `--batch 1`: several jobs (other
//! identities, prompts and seeds) stacked in one UNet batch change nothing but the speed. Checked
//! for the text-only baseline, an IP-Adapter (Plus, CLIP of the photo) and PhotoMaker with the
//! split-prompt adapter, on the tiny pipelines of diffusion/tests/fixtures.

mod common;

use std::path::{Path, PathBuf};

use common::{idforge, ok, sample_photos_dir, text};

/// Most a pixel channel of a batched image may differ from the one-at-a-time image, in 8-bit
/// levels. Stacking jobs changes the matrix products' row counts, which may change how a
/// kernel tiles (and so rounds) them: at most one level after the VAE's rounding to 8 bits.
const TOLERANCE_LEVELS: u8 = 1;

const PROTOCOL: &str = r#"
[protocol]
name = "tiny-v1"
version = 1
seeds = [0, 1]
categories = ["clothing", "style"]

[[sets]]
name = "in-train"

[[prompts]]
id = "clothing-01"
category = "clothing"
general = "a photo of a {class} {trigger} smiling"
background = "in a park"
body = "wearing a red scarf"

[[prompts]]
id = "style-01"
category = "style"
general = "an oil painting of a {class} {trigger}"
"#;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("diffusion/tests/fixtures")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Two identities with one photo each, 2 prompts × 2 seeds: 8 jobs.
fn make_bench(root: &Path) -> PathBuf {
    let refs = root.join("refs");
    for (id, sample) in [("p1", "sample1.jpg"), ("p2", "sample2.jpg")] {
        let dir = refs.join("in-train").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        image::open(sample_photos_dir().join(sample))
            .unwrap()
            .save(dir.join("ref.png"))
            .unwrap();
    }
    std::fs::write(root.join("p.toml"), PROTOCOL).unwrap();
    let bench = root.join("bench");
    ok(idforge().args([
        "bench",
        "init",
        s(&bench),
        "--protocol",
        s(&root.join("p.toml")),
        "--references",
        s(&refs),
    ]));
    bench
}

/// The rendered images of a method folder, decoded, by relative path.
fn images(dir: &Path) -> Vec<(String, image::RgbImage)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "png") {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, image::open(&p).unwrap().to_rgb8()));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Renders `method` at `--batch 1` and `--batch 3` (chunks 3, 3, 2 mixing both identities)
/// and compares the images.
fn batched_equals_single(bench: &Path, method: &str, args: &[&str]) {
    let run = |batch: &str| {
        let name = format!("{method}-b{batch}");
        let out = ok(idforge()
            .args(["bench", "generate", s(bench), "--method", &name])
            .args(args)
            .args(["--steps", "2", "--id-start-step", "1", "--batch", batch]));
        let got = images(&bench.join("generations").join(&name));
        assert_eq!(got.len(), 8, "{}", text(&out));
        got
    };
    let single = run("1");
    let batched = run("3");
    let mut worst = 0u8;
    for ((name, a), (other, b)) in single.iter().zip(&batched) {
        assert_eq!(name, other);
        assert_eq!(a.dimensions(), b.dimensions(), "{method} {name}");
        for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
            worst = worst.max(x.abs_diff(*y));
        }
    }
    eprintln!("{method}: batch 3 vs 1, max difference {worst} levels");
    assert!(
        worst <= TOLERANCE_LEVELS,
        "{method}: --batch 3 differs from --batch 1 by {worst} levels"
    );
}

#[test]
fn batched_jobs_render_the_single_job_images() {
    let tmp = tempfile::tempdir().unwrap();
    let bench = make_bench(tmp.path());
    let f = fixtures();
    let sd = f.join("tiny-sd");
    let encoder =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tests/fixtures/reference/image_encoder");
    batched_equals_single(&bench, "text", &["--model", s(&sd)]);
    batched_equals_single(
        &bench,
        "plus",
        &[
            "--model",
            s(&sd),
            "--adapter",
            s(&f.join("ip-adapter/plus.safetensors")),
            "--image-encoder",
            s(&encoder),
        ],
    );
    batched_equals_single(
        &bench,
        "pm-split",
        &[
            "--model",
            s(&f.join("tiny-sdxl")),
            "--adapter",
            s(&f.join("photomaker/photomaker-v1.bin")),
            "--adapter",
            s(&f.join("split-prompt/adapter.safetensors")),
            "--id-encoder-heads",
            "16,32",
        ],
    );
}
