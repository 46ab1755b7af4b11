//! `idforge bench generate` end to end on the tiny diffusers pipelines of
//! diffusion/tests/fixtures: the whole plan rendered and imported with measured costs in
//! method.toml; a run killed midway and rerun renders only the rest; two shards give the
//! single process's images; PhotoMaker with the split-prompt adapter renders the image
//! `idforge generate` makes for the same job; `--train-run` fills the training costs, marked
//! measured through to the leaderboard; bad input (no references, an adapter for another base
//! model, a train run that is not one, an unwritable folder) leaves nothing half-written.

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
    // Both measured, on this machine; no training figures without --train-run.
    for key in ["seconds_per_image", "peak_memory_gib"] {
        let m = &cost["measured"][key];
        assert_eq!(m["by"].as_str(), Some("idforge bench generate"), "{toml}");
        assert!(
            m["hardware"].as_str().unwrap().contains("threads"),
            "{toml}"
        );
    }
    assert!(cost.get("training_minutes").is_none(), "{toml}");

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

fn arcface() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/tests/fixtures/iresnet/iresnet18_w4_mxnet.onnx")
}

/// A finished `idforge train` run folder as the trainer leaves it: settings, metrics of two
/// processes (the first killed after step 2, the second resumed from its checkpoint), the
/// finished process's cost line and the exported adapter (the FaceID fixture).
fn train_run(dir: &Path) -> PathBuf {
    let run = dir.join("runs/faceid/train");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("settings.json"),
        r#"{"method": "ip-adapter-faceid", "steps": 4}"#,
    )
    .unwrap();
    let line = |step: u64, seconds: f64| {
        format!(
            "{{\"step\":{step},\"loss\":0.5,\"grad_norm\":1.0,\"lr\":[0.001],\"seconds\":{seconds}}}\n"
        )
    };
    std::fs::write(
        run.join("metrics.jsonl"),
        [line(1, 30.0), line(2, 60.0), line(3, 40.0), line(4, 80.0)].concat(),
    )
    .unwrap();
    std::fs::write(
        run.join("costs.jsonl"),
        "{\"first_step\":2,\"last_step\":4,\"seconds\":90.0,\"peak_memory_gib\":1.5,\
         \"hardware\":\"Test CPU, 2 threads (burn flex, CPU)\"}\n",
    )
    .unwrap();
    std::fs::copy(
        fixtures().join("ip-adapter/faceid.safetensors"),
        run.join("adapter.safetensors"),
    )
    .unwrap();
    run
}

#[test]
fn train_run_costs_are_filled_measured_and_shown_in_the_leaderboard() {
    let tmp = tempfile::tempdir().unwrap();
    let bench = make_bench(tmp.path());
    let run = train_run(tmp.path());
    // The adapter comes from the run (no --adapter).
    ok(idforge().args([
        "bench",
        "generate",
        s(&bench),
        "--method",
        "faceid-trained",
        "--model",
        s(&fixtures().join("tiny-sd")),
        "--arcface",
        s(&arcface()),
        "--train-run",
        s(&run),
        "--steps",
        "2",
        "--id-start-step",
        "0",
    ]));
    let method = bench.join("generations/faceid-trained");
    let toml: toml::Table =
        toml::from_str(&std::fs::read_to_string(method.join("method.toml")).unwrap()).unwrap();
    let cost = &toml["cost"];
    // 60 s of the killed process (its metrics) + 90 s of the finished one (its cost line).
    assert_eq!(cost["training_minutes"].as_float(), Some(2.5), "{toml}");
    assert_eq!(cost["training_peak_memory_gib"].as_float(), Some(1.5));
    assert_eq!(cost["disk_per_identity_mib"].as_float(), Some(0.0));
    for key in [
        "training_minutes",
        "training_peak_memory_gib",
        "disk_per_identity_mib",
    ] {
        let m = &cost["measured"][key];
        assert_eq!(m["by"].as_str(), Some("idforge train"), "{key}: {toml}");
        assert_eq!(
            m["hardware"].as_str(),
            Some("Test CPU, 2 threads (burn flex, CPU)")
        );
    }
    let minutes_note = cost["measured"]["training_minutes"]["note"]
        .as_str()
        .unwrap();
    assert!(
        minutes_note.contains("ip-adapter-faceid") && minutes_note.contains("2 processes summed"),
        "{minutes_note}"
    );
    let disk_note = cost["measured"]["disk_per_identity_mib"]["note"]
        .as_str()
        .unwrap();
    let size = std::fs::metadata(run.join("adapter.safetensors"))
        .unwrap()
        .len();
    assert!(
        disk_note.contains(&format!("{:.3} MiB", size as f64 / (1024.0 * 1024.0))),
        "{disk_note}"
    );
    assert!(
        toml["settings"]["adapter"]
            .as_str()
            .unwrap()
            .contains("adapter.safetensors")
    );

    // Scored beside copy-reference: the leaderboard marks the measured figures, JSON to HTML.
    ok(idforge().args([
        "bench",
        "score",
        s(&bench),
        "--resamples",
        "50",
        "--set-resamples",
        "10",
    ]));
    let lb: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bench.join("leaderboard/leaderboard.json")).unwrap())
            .unwrap();
    assert_eq!(lb["schema_version"], 3);
    let entry = lb["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "faceid-trained")
        .unwrap();
    let sources = &entry["cost"]["sources"];
    for key in [
        "training_minutes",
        "training_peak_memory_gib",
        "disk_per_identity_mib",
        "seconds_per_image",
        "peak_memory_gib",
    ] {
        assert_eq!(sources[key]["kind"], "measured", "{key}: {entry}");
    }
    let copy = lb["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "copy-reference")
        .unwrap();
    assert_eq!(
        copy["cost"]["sources"]["seconds_per_image"]["kind"],
        "reported"
    );
    let md = std::fs::read_to_string(bench.join("leaderboard/LEADERBOARD.md")).unwrap();
    let row = md
        .lines()
        .find(|l| l.starts_with("| faceid-trained |") && l.contains("2.5ᵐ"))
        .unwrap_or_else(|| panic!("no marked row in\n{md}"));
    assert!(row.contains("| 1.5ᵐ | 0.0ᵐ |"), "{row}");
    assert!(md.contains("measured by idforge train on Test CPU"), "{md}");
    let html = std::fs::read_to_string(bench.join("leaderboard/index.html")).unwrap();
    assert!(
        html.contains("class=\"num cost cost-first measured\""),
        "the marked cell"
    );
}

#[test]
fn train_run_that_is_not_a_finished_run_is_refused_before_rendering() {
    let tmp = tempfile::tempdir().unwrap();
    let bench = make_bench(tmp.path());
    let generate = |run: &Path| {
        idforge()
            .args([
                "bench",
                "generate",
                s(&bench),
                "--method",
                "m",
                "--model",
                s(&fixtures().join("tiny-sd")),
                "--arcface",
                s(&arcface()),
                "--train-run",
                s(run),
                "--steps",
                "2",
                "--id-start-step",
                "0",
            ])
            .output()
            .unwrap()
    };
    // The bench folder is not a train run.
    let o = generate(&bench);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("--train-run") && text(&o).contains("not an idforge train run"),
        "{}",
        text(&o)
    );
    // A run killed before its export.
    let run = train_run(tmp.path());
    std::fs::remove_file(run.join("adapter.safetensors")).unwrap();
    let o = generate(&run);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("has not finished"), "{}", text(&o));
    assert!(!bench.join("renders").exists() && !bench.join("generations/m").exists());
}

#[test]
fn an_unwritable_output_is_refused_before_rendering_and_nothing_is_left() {
    let tmp = tempfile::tempdir().unwrap();
    let bench = make_bench(tmp.path());
    // A render folder under a regular file (root ignores permission bits; a file is a file).
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    let o = text_only(&bench, "m", "2", &["--folder", s(&file.join("renders"))])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("--folder") && text(&o).contains("is a file, not a folder"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a folder");
    assert!(!bench.join("renders").exists() && !bench.join("generations/m").exists());
    // The bench's generations/ a file: refused before any image is rendered, not at the import.
    std::fs::write(bench.join("generations"), "").unwrap();
    let o = text_only(&bench, "m", "2", &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("generations/ folder"), "{}", text(&o));
    assert!(!bench.join("renders").exists(), "nothing rendered");
    // A read-only folder, where permission bits count (not as root).
    let ro = tmp.path().join("read-only");
    std::fs::create_dir(&ro).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let probe = ro.join("probe");
    if std::fs::write(&probe, "").is_ok() {
        // Running as root: modes are ignored, the case above is the one that can be tested.
        std::fs::remove_file(&probe).unwrap();
    } else {
        std::fs::remove_file(bench.join("generations")).unwrap();
        let o = text_only(&bench, "m", "2", &["--folder", s(&ro.join("renders"))])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains("cannot write in"), "{}", text(&o));
    }
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}
