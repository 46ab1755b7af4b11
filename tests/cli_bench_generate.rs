//! `idforge bench generate` end to end on the tiny diffusers pipelines of
//! diffusion/tests/fixtures: the whole plan rendered and imported with measured costs in
//! method.toml; a run killed midway and rerun renders only the rest; two shards give the
//! single process's images; PhotoMaker with the split-prompt adapter renders the image
//! `idforge generate` makes for the same job; bad input leaves nothing half-written.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{idforge, ok, sample_photos_dir, text};

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

/// A bench of two identities (PhotoMaker's fixture photos), 2 prompts × 2 seeds: 8 jobs.
fn make_bench(root: &Path) -> PathBuf {
    let refs = root.join("refs");
    for (id, photo) in [("p1", "ref0.png"), ("p2", "ref1.png")] {
        let dir = refs.join("in-train").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        // A photo with a face (`bench init` refuses references without one), under the
        // fixture's name.
        let sample = if photo == "ref0.png" {
            "sample1.jpg"
        } else {
            "sample2.jpg"
        };
        image::open(sample_photos_dir().join(sample))
            .unwrap()
            .save(dir.join(photo))
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

/// `bench generate` of the text-only baseline on the tiny SD pipeline.
fn text_only(bench: &Path, method: &str, steps: &str, extra: &[&str]) -> std::process::Command {
    let mut c = idforge();
    c.args([
        "bench",
        "generate",
        s(bench),
        "--method",
        method,
        "--model",
        s(&fixtures().join("tiny-sd")),
        "--steps",
        steps,
        "--id-start-step",
        "0",
    ])
    .args(extra);
    c
}

fn pngs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "png") {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn text_only_baseline_renders_the_whole_plan_resumes_and_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let bench = make_bench(tmp.path());
    // Whole plan, imported, with the settings and measured costs.
    let out = ok(&mut text_only(&bench, "text-only", "3", &[]));
    let method = bench.join("generations/text-only");
    let whole = pngs(&method);
    assert_eq!(whole.len(), 8, "{}", text(&out));
    let toml: toml::Table =
        toml::from_str(&std::fs::read_to_string(method.join("method.toml")).unwrap()).unwrap();
    assert_eq!(toml["settings"]["steps"].as_integer(), Some(3));
    assert_eq!(toml["settings"]["cfg"].as_float(), Some(5.0));
    let cost = &toml["cost"];
    assert!(
        cost["seconds_per_image"].as_float().unwrap() > 0.0,
        "{toml}"
    );
    assert!(cost["peak_memory_gib"].as_float().unwrap() > 0.0, "{toml}");
    assert!(
        cost["hardware"]
            .as_str()
            .unwrap()
            .contains("measured by idforge bench generate")
    );

    // Killed midway: a rerun renders only what is missing, and the same images.
    let killed = bench.join("renders/killed");
    let mut child = text_only(&bench, "killed", "60", &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while pngs(&killed).is_empty() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = pngs(&killed).len();
    assert!((1..8).contains(&before), "{before} images before the kill");
    assert!(
        !bench.join("generations/killed").exists(),
        "imported unfinished"
    );
    let rerun = ok(&mut text_only(&bench, "killed", "60", &[]));
    let said = text(&rerun);
    assert!(
        said.contains(&format!("{} to render", 8 - before)),
        "the rerun renders only the rest:\n{said}"
    );
    assert_eq!(pngs(&bench.join("generations/killed")).len(), 8);

    // Two shards, as two processes: the single process's images; the last one imports.
    let first = ok(&mut text_only(&bench, "sharded", "3", &["--shard", "0/2"]));
    assert!(text(&first).contains("4 of 8 images"), "{}", text(&first));
    assert!(!bench.join("generations/sharded").exists());
    ok(text_only(&bench, "sharded", "3", &[])
        .env("IDFORGE_SHARDS", "2")
        .env("SLURM_ARRAY_TASK_ID", "1"));
    assert_eq!(pngs(&bench.join("generations/sharded")), whole);
}

#[test]
fn photomaker_with_split_prompt_renders_what_generate_makes() {
    let tmp = tempfile::tempdir().unwrap();
    let bench = make_bench(tmp.path());
    let f = fixtures();
    let pm = f.join("photomaker/photomaker-v1.bin");
    let split = f.join("split-prompt/adapter.safetensors");
    let out = ok(idforge().args([
        "bench",
        "generate",
        s(&bench),
        "--method",
        "pm-split",
        "--model",
        s(&f.join("tiny-sdxl")),
        "--adapter",
        s(&pm),
        "--adapter",
        s(&split),
        "--steps",
        "3",
        "--id-start-step",
        "1",
        "--id-encoder-heads",
        "16,32",
    ]));
    let method = bench.join("generations/pm-split");
    assert_eq!(pngs(&method).len(), 8, "{}", text(&out));
    let toml = std::fs::read_to_string(method.join("method.toml")).unwrap();
    assert!(toml.contains("trigger = \"img\""), "{toml}");
    // The job p1 / clothing-01 / seed 1 from `idforge generate`: the general prompt with the
    // trigger, the background and body parts, the seed.
    let plan: serde_json::Value = serde_json::from_slice(
        &ok(idforge().args([
            "bench",
            "plan",
            s(&bench),
            "--trigger",
            "img",
            "--format",
            "json",
        ]))
        .stdout,
    )
    .unwrap();
    let job = plan
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["output"] == "p1/clothing-01/1.png")
        .unwrap();
    let png = tmp.path().join("one.png");
    ok(idforge().args([
        "generate",
        "--model",
        s(&f.join("tiny-sdxl")),
        "--adapter",
        s(&pm),
        "--adapter",
        s(&split),
        "--ref",
        s(&bench.join(job["references"][0].as_str().unwrap())),
        "--prompt",
        job["prompt_general"].as_str().unwrap(),
        "--bg-prompt",
        job["prompt_background"].as_str().unwrap(),
        "--body-prompt",
        job["prompt_body"].as_str().unwrap(),
        "--steps",
        "3",
        "--cfg",
        "5",
        "--id-start-step",
        "1",
        "--seed",
        "1",
        "--id-encoder-heads",
        "16,32",
        "-o",
        s(&png),
    ]));
    assert_eq!(
        std::fs::read(&png).unwrap(),
        std::fs::read(method.join("p1/clothing-01/1.png")).unwrap(),
        "bench generate and generate disagree"
    );
}

#[test]
fn bench_generate_refuses_bad_input_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures();
    // A bench without references.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("protocol.toml"), PROTOCOL).unwrap();
    let o = text_only(&empty, "m", "2", &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("bench init"), "{}", text(&o));
    assert!(!empty.join("generations/m").exists());
    // Adapters for another base model: the split-prompt (SDXL) and PhotoMaker on SD 1.5, an
    // SD 1.5 IP-Adapter on SDXL.
    let bench = make_bench(tmp.path());
    for (model, adapter, wants) in [
        ("tiny-sd", "split-prompt/adapter.safetensors", "SDXL"),
        ("tiny-sd", "photomaker/photomaker-v1.bin", "SDXL"),
        (
            "tiny-sdxl",
            "ip-adapter/faceid.safetensors",
            "another base model",
        ),
    ] {
        let o = idforge()
            .args([
                "bench",
                "generate",
                s(&bench),
                "--method",
                "wrong",
                "--model",
                s(&f.join(model)),
                "--adapter",
                s(&f.join(adapter)),
                "--arcface",
                s(&Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("models/tests/fixtures/iresnet/iresnet18_w4_mxnet.onnx")),
                "--steps",
                "2",
                "--id-start-step",
                "0",
            ])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{adapter}: {}", text(&o));
        assert!(text(&o).contains(wants), "{adapter}: {}", text(&o));
        assert!(!bench.join("generations/wrong").exists());
        assert!(
            !bench.join("renders").exists(),
            "{adapter}: a folder was left"
        );
    }
    // A bad method name or shard.
    let o = text_only(&bench, "no/slash", "2", &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = text_only(&bench, "m", "2", &["--shard", "2/2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}
