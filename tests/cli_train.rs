//! `idforge train` on the tiny SD fixture and a tiny dataset export made here (synthetic JPEG
//! crops, `idforge dataset export`): a run's files, `--resume` after SIGKILL ending with the
//! same weights as an uninterrupted run (bit-exact), the export loading in `generate`, and the
//! bad inputs a user meets first.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{CuratedRun, idforge, text};
use idforge_core::resample::Plane8;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tiny_sd() -> PathBuf {
    root().join("diffusion/tests/fixtures/tiny-sd")
}

fn arcface() -> PathBuf {
    root().join("models/tests/fixtures/iresnet/iresnet50_w4.onnx")
}

fn save_jpeg(path: &Path, side: usize, seed: u64) {
    let plane = Plane8 {
        width: side,
        height: side,
        channels: 3,
        data: (0..side * side * 3)
            .map(|i| ((i as u64 * 31 + seed * 77) % 251) as u8)
            .collect(),
    };
    idforge_curate::crop::save_jpeg(path, &plane, 90).unwrap();
}

/// A run with three photos of each of `who`, captioned, exported to `<run>/dataset` with the
/// last identity held out for validation.
fn make_export(dir: &Path) -> PathBuf {
    make_export_with(dir, None)
}

/// [`make_export`], the caption of take `untriggered` (of every identity) without its trigger.
fn make_export_with(dir: &Path, untriggered: Option<u64>) -> PathBuf {
    let runs = dir.join("runs");
    let run = runs.join("demo");
    CuratedRun {
        identities: &["ana", "ben", "cleo"],
        per_identity: 3,
        crop_side: 48,
        face_box: [8.0, 6.0, 40.0, 44.0],
    }
    .write(&run, save_jpeg, |_, j| {
        let trigger = if untriggered == Some(j) { "" } else { " sks" };
        Some((
            format!("a photo of a person{trigger}, take {j}"),
            format!("a photo of a person, take {j}"),
        ))
    });
    let out = idforge()
        .args(["dataset", "export"])
        .arg(&run)
        .args(["--val-identities", "cleo"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    run.join("dataset")
}

/// A recipe for a 4-step FaceID run at 64 px, checkpoints every 2 steps.
fn recipe(dir: &Path, name: &str, export: &Path, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\nruns_dir = \"{runs}\"\n\n[train]\nmethod = \"ip-adapter-faceid\"\n\
             model = \"{model}\"\ndataset = \"{export}\"\narcface = \"{arcface}\"\n\
             ref_faces = \"crop\"\nresolution = 64\nbatch_size = 2\ngrad_accum = 2\nsteps = 4\n\
             lr = 1e-3\nlora_lr = 1e-2\nlora_rank = 4\nwarmup_steps = 1\nlr_decay = \"cosine\"\n\
             masked_loss_p = 0.5\nnoise_offset = 0.05\nsnr_gamma = 5.0\nmax_references = 2\n\
             checkpoint_every = 2\nkeep_checkpoints = 1\nseed = 7\ncache_dir = \"{cache}\"\n{extra}",
            runs = dir.join("runs").display(),
            model = tiny_sd().display(),
            export = export.display(),
            arcface = arcface().display(),
            cache = dir.join("cache").display(),
        ),
    )
    .unwrap();
    path
}

fn train(args: &[&str], recipe: &Path) -> std::process::Output {
    idforge()
        .arg("train")
        .arg("--recipe")
        .arg(recipe)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn train_resume_after_sigkill_equals_uninterrupted_and_exports_for_generate() {
    let dir = tempfile::tempdir().unwrap();
    let export = make_export(dir.path());

    // Uninterrupted.
    let whole = recipe(dir.path(), "whole", &export, "");
    let out = train(&[], &whole);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("trained 4 steps (0–4) on 6 samples of 2 identities"),
        "{}",
        text(&out)
    );
    let run = dir.path().join("runs/whole/train");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4, "{metrics}");
    assert!(metrics.lines().all(|l| l.contains("\"loss\":")));
    let report = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(report.contains("<svg") && report.contains("Learning rate"));
    let ckpts: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ckpts, ["step-00000004"], "keep_checkpoints = 1");
    // Running again without --resume is refused.
    let again = train(&[], &whole);
    assert!(!again.status.success());
    assert!(text(&again).contains("--resume"), "{}", text(&again));

    // Killed (SIGKILL) after the checkpoint of step 2, then resumed.
    let killed = recipe(dir.path(), "killed", &export, "");
    let ckpt = dir
        .path()
        .join("runs/killed/train/checkpoints/step-00000002/state.json");
    let mut child = idforge()
        .args(["train", "--recipe"])
        .arg(&killed)
        .env(idforge_train::run::HOLD_ENV, "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !ckpt.is_file() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint of step 2"
        );
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !dir.path()
            .join("runs/killed/train/adapter.safetensors")
            .exists()
    );
    let out = train(&["--resume"], &killed);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("trained 2 steps (2–4)"),
        "{}",
        text(&out)
    );
    let a = std::fs::read(run.join("adapter.safetensors")).unwrap();
    let b = std::fs::read(dir.path().join("runs/killed/train/adapter.safetensors")).unwrap();
    assert!(
        a == b,
        "the resumed run's weights differ from the uninterrupted run's"
    );
    // For tools/train-export-check by hand: IDFORGE_TRAIN_TEST_KEEP=<file> keeps the export.
    if let Some(keep) = std::env::var_os("IDFORGE_TRAIN_TEST_KEEP") {
        std::fs::write(keep, &a).unwrap();
    }
    let resumed_metrics =
        std::fs::read_to_string(dir.path().join("runs/killed/train/metrics.jsonl")).unwrap();
    let losses = |m: &str| -> Vec<String> {
        m.lines()
            .map(|l| l.split("\"grad_norm\"").next().unwrap().to_string())
            .collect()
    };
    assert_eq!(losses(&resumed_metrics), losses(&metrics));

    // The export loads in `generate --adapter`.
    let embeds = dir.path().join("id.safetensors");
    // The ArcFace fixture makes 32-d embeddings, so the adapter trained here takes 32.
    let values: Vec<u8> = (0..32)
        .flat_map(|i| ((i as f32 * 0.37).sin() / 16.0).to_le_bytes())
        .collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 32], &values)
        .unwrap();
    safetensors::serialize_to_file([("id_embeds", view)], None, &embeds).unwrap();
    let png = dir.path().join("out.png");
    let out = idforge()
        .args(["generate", "--model"])
        .arg(tiny_sd())
        .args(["--prompt", "a photo of a person sks", "--steps", "2"])
        .args(["--width", "64", "--height", "64", "--adapter"])
        .arg(run.join("adapter.safetensors"))
        .arg("--id-embeds")
        .arg(&embeds)
        .arg("--output")
        .arg(&png)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ip-adapter-faceid"), "{}", text(&out));
    assert!(png.is_file());
}

#[test]
fn bad_inputs_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let export = make_export(dir.path());
    let fails = |r: &Path, args: &[&str], want: &str| {
        let out = train(args, r);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(text(&out).contains(want), "want {want:?} in {}", text(&out));
    };

    let r = recipe(dir.path(), "typo", &export, "learning_rate = 1e-4\n");
    fails(&r, &[], "unknown field `learning_rate`");

    let r = recipe(dir.path(), "pm", &export, "");
    fails(&r, &["--method", "split-prompt"], "--adapter");
    fails(&r, &["--method", "photomaker"], "--adapter");
    let pm_file = root().join("diffusion/tests/fixtures/photomaker/photomaker-v1.bin");
    let pm_args = [
        "--method",
        "photomaker",
        "--drop",
        "persongen",
        "--adapter",
        pm_file.to_str().unwrap(),
    ];
    fails(&r, &pm_args, "is an SD 1.x pipeline");
    fails(
        &r,
        &["--method", "photomaker", "--adapter", pm_args[5]],
        "drop = \"persongen\"",
    );
    let sdxl_model = root().join("diffusion/tests/fixtures/tiny-sdxl");
    fails(
        &r,
        &["--model", sdxl_model.to_str().unwrap()],
        "IP-Adapter training on SDXL is not implemented",
    );
    fails(&r, &["--method", "ip-adapter-plus"], "--image-encoder");

    let r = dir.path().join("noarc.toml");
    std::fs::write(
        &r,
        format!(
            "name = \"noarc\"\n[train]\nmodel = \"{}\"\ndataset = \"{}\"\n",
            tiny_sd().display(),
            export.display()
        ),
    )
    .unwrap();
    fails(&r, &[], "--arcface");

    let sdxl = root().join("diffusion/tests/fixtures/ip-adapter/sdxl_faceid.safetensors");
    let r = recipe(dir.path(), "other", &export, "");
    fails(
        &r,
        &["--adapter", sdxl.to_str().unwrap()],
        "another base model",
    );

    // An export of the validation split alone (a published held-out set, say).
    let val_only = dir.path().join("val-only");
    std::fs::create_dir_all(val_only.join("data")).unwrap();
    let shard = "data/validation-00000-of-00001.parquet";
    std::fs::copy(export.join(shard), val_only.join(shard)).unwrap();
    let r = recipe(dir.path(), "nosplit", &val_only, "");
    fails(&r, &[], "no train split");
}

/// Every CLIP-based IP-Adapter kind trains from scratch (references through the tiny CLIP image
/// encoder, FaceID-Plus also through ArcFace), exports a file of its kind, and the Plus export
/// generates from a reference photo through `generate --ref --image-encoder`.
#[test]
fn clip_kinds_train_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let export = make_export(dir.path());
    let encoder = root().join("models/tests/fixtures/reference/image_encoder");
    for (method, kind) in [
        ("ip-adapter", "image_proj.proj.weight"),
        ("ip-adapter-plus", "image_proj.latents"),
        ("ip-adapter-full-face", "image_proj.proj.3.weight"),
        (
            "ip-adapter-faceid-plus",
            "image_proj.perceiver_resampler.proj_in.weight",
        ),
    ] {
        let name = method.replace('-', "_");
        let r = recipe(
            dir.path(),
            &name,
            &export,
            &format!("image_encoder = \"{}\"\n", encoder.display()),
        );
        let out = train(
            &[
                "--method",
                method,
                "--steps",
                "2",
                "--grad-accum",
                "1",
                "--checkpoint-every",
                "0",
            ],
            &r,
        );
        assert!(out.status.success(), "{method}: {}", text(&out));
        let file = dir
            .path()
            .join(format!("runs/{name}/train/adapter.safetensors"));
        let bytes = std::fs::read(&file).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let names: Vec<String> = st.names().into_iter().map(String::from).collect();
        assert!(names.iter().any(|n| n == kind), "{method}: {names:?}");
        assert!(
            names.iter().any(|n| n.ends_with("to_k_ip.weight")),
            "{method}"
        );
        assert_eq!(
            names.iter().any(|n| n.contains("_lora.")),
            method == "ip-adapter-faceid-plus",
            "{method}: LoRA only for FaceID kinds"
        );
        // The references' CLIP features are cached beside the latents.
        if method == "ip-adapter-plus" {
            let refs = dir.path().join("cache/references");
            let cached = std::fs::read_dir(&refs)
                .unwrap()
                .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
                .count();
            assert!(
                cached > 0,
                "no cached reference features in {}",
                refs.display()
            );
            let photo = dir.path().join("ref.jpg");
            save_jpeg(&photo, 48, 3);
            let png = dir.path().join("plus.png");
            let out = idforge()
                .args(["generate", "--model"])
                .arg(tiny_sd())
                .args(["--prompt", "a photo of a person sks", "--steps", "2"])
                .args(["--width", "64", "--height", "64", "--adapter"])
                .arg(&file)
                .arg("--ref")
                .arg(&photo)
                .arg("--image-encoder")
                .arg(&encoder)
                .arg("--output")
                .arg(&png)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out));
            assert!(text(&out).contains("ip-adapter-plus"), "{}", text(&out));
            assert!(png.is_file());
        }
    }
}

/// PhotoMaker v1 fine-tuned from the PhotoMaker fixture on the tiny SDXL pipeline: captions
/// without the trigger are skipped and counted, a run killed (SIGKILL) after its step-2
/// checkpoint and resumed ends with the uninterrupted run's file byte for byte, the frozen
/// references' pooled outputs are cached, and the export generates through `generate
/// --adapter`.
#[test]
fn photomaker_trains_resumes_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let export = make_export_with(dir.path(), Some(2));
    let fixtures = root().join("diffusion/tests/fixtures");
    let sdxl = fixtures.join("tiny-sdxl");
    let pm = fixtures.join("photomaker");
    let recipe = |name: &str| -> PathBuf {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "name = \"{name}\"\nruns_dir = \"{runs}\"\n\n[train]\nmethod = \"photomaker\"\n\
                 model = \"{model}\"\ndataset = \"{export}\"\nadapter = \"{adapter}\"\n\
                 id_encoder_heads = [16, 32]\ndrop = \"persongen\"\noptimizer = \"adam\"\n\
                 resolution = 32\nbatch_size = 1\ngrad_accum = 2\nsteps = 4\nlr = 1e-3\n\
                 lora_lr = 1e-2\nwarmup_steps = 1\nmasked_loss_p = 0.5\nmax_references = 2\n\
                 checkpoint_every = 2\nkeep_checkpoints = 1\nseed = 7\ncache_dir = \"{cache}\"\n",
                runs = dir.path().join("runs").display(),
                model = sdxl.display(),
                export = export.display(),
                adapter = pm.join("photomaker-v1.bin").display(),
                cache = dir.path().join("cache").display(),
            ),
        )
        .unwrap();
        path
    };

    let whole = recipe("pm_whole");
    let out = train(&[], &whole);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("trained 4 steps (0–4) on 4 samples of 2 identities"),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("skipped 2 rows as targets: captions without exactly one trigger"),
        "{}",
        text(&out)
    );
    let run = dir.path().join("runs/pm_whole/train");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 4, "{metrics}");
    let refs = dir.path().join("cache/photomaker-references");
    let cached = std::fs::read_dir(&refs)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .count();
    assert!(cached > 0, "no cached pooled outputs in {}", refs.display());

    let killed = recipe("pm_killed");
    let ckpt = dir
        .path()
        .join("runs/pm_killed/train/checkpoints/step-00000002/state.json");
    let mut child = idforge()
        .args(["train", "--recipe"])
        .arg(&killed)
        .env(idforge_train::run::HOLD_ENV, "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !ckpt.is_file() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint of step 2"
        );
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let out = train(&["--resume"], &killed);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("trained 2 steps (2–4)"),
        "{}",
        text(&out)
    );
    let a = std::fs::read(run.join("adapter.safetensors")).unwrap();
    let b = std::fs::read(dir.path().join("runs/pm_killed/train/adapter.safetensors")).unwrap();
    assert!(
        a == b,
        "the resumed PhotoMaker run's weights differ from the uninterrupted run's"
    );
    // The trained groups moved, CLIP's backbone is the starting file's, and the keys are a
    // PhotoMaker file's.
    let base = idforge_models::WeightStore::open(pm.join("photomaker-v1.bin")).unwrap();
    let trained = idforge_models::WeightStore::open(run.join("adapter.safetensors")).unwrap();
    let mut want: Vec<&str> = base.names().collect();
    let mut got: Vec<&str> = trained.names().collect();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want);
    for name in want {
        let moved = base.read_f32(name).unwrap() != trained.read_f32(name).unwrap();
        let frozen = name.starts_with("id_encoder.vision_model.");
        assert_eq!(moved, !frozen, "{name}: moved {moved}");
    }

    let png = dir.path().join("pm.png");
    let out = idforge()
        .args(["generate", "--model"])
        .arg(&sdxl)
        .args(["--prompt", "a photo of a man img", "--steps", "2"])
        .args(["--width", "64", "--height", "64", "--adapter"])
        .arg(run.join("adapter.safetensors"))
        .arg("--ref")
        .arg(pm.join("ref0.png"))
        .args(["--id-encoder-heads", "16,32", "--output"])
        .arg(&png)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("photomaker-v1"), "{}", text(&out));
    assert!(png.is_file());
}

/// The split-prompt adapter (PhotoMaker v1 + background / body attention) fine-tuned from the
/// PhotoMaker fixture on the tiny SDXL pipeline: a run stopped after one step and resumed to two
/// ends with the two-step run's files byte for byte, and the two exported files generate
/// together through `generate --adapter PM --adapter SPLIT`.
#[test]
fn split_prompt_trains_resumes_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let export = make_export(dir.path());
    let fixtures = root().join("diffusion/tests/fixtures");
    let sdxl = fixtures.join("tiny-sdxl");
    let pm = fixtures.join("photomaker");
    let recipe = |name: &str, steps: u32| -> PathBuf {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "name = \"{name}\"\nruns_dir = \"{runs}\"\n\n[train]\nmethod = \"split-prompt\"\n\
                 model = \"{model}\"\ndataset = \"{export}\"\nadapter = \"{adapter}\"\n\
                 id_encoder_heads = [16, 32]\ndrop = \"persongen\"\noptimizer = \"adam\"\n\
                 resolution = 32\nbatch_size = 2\nsteps = {steps}\nlr = 1e-3\nlora_lr = 1e-2\n\
                 masked_loss_p = 0.5\nmax_references = 2\nmax_grad_norm = 0.0\n\
                 checkpoint_every = 1\nseed = 3\ncache_dir = \"{cache}\"\n",
                runs = dir.path().join("runs").display(),
                model = sdxl.display(),
                export = export.display(),
                adapter = pm.join("photomaker-v1.bin").display(),
                cache = dir.path().join("cache").display(),
            ),
        )
        .unwrap();
        path
    };
    let whole = recipe("sp_whole", 2);
    let out = train(&[], &whole);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("split_prompt.safetensors"),
        "{}",
        text(&out)
    );
    let halves = recipe("sp_halves", 1);
    let out = train(&[], &halves);
    assert!(out.status.success(), "{}", text(&out));
    let out = train(&["--resume", "--steps", "2"], &halves);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("trained 1 steps (1–2)"),
        "{}",
        text(&out)
    );
    let a = dir.path().join("runs/sp_whole/train");
    let b = dir.path().join("runs/sp_halves/train");
    for file in ["adapter.safetensors", "split_prompt.safetensors"] {
        assert!(
            std::fs::read(a.join(file)).unwrap() == std::fs::read(b.join(file)).unwrap(),
            "{file}: the resumed run differs from the uninterrupted one"
        );
    }
    // The background / body projections train: step 2's differ from step 1's checkpoint.
    let split = idforge_models::WeightStore::open(a.join("split_prompt.safetensors")).unwrap();
    let step1 =
        idforge_models::WeightStore::open(b.join("checkpoints/step-00000001/adapter.safetensors"))
            .unwrap();
    let name = split
        .names()
        .find(|n| n.ends_with(".to_k_ip_bg.weight"))
        .unwrap()
        .to_string();
    assert_ne!(
        split.read_f32(&name).unwrap(),
        step1.read_f32(&name).unwrap(),
        "{name} did not move"
    );

    let png = dir.path().join("sp.png");
    let out = idforge()
        .args(["generate", "--model"])
        .arg(&sdxl)
        .args(["--prompt", "a photo of a man img", "--steps", "2"])
        .args(["--width", "64", "--height", "64", "--adapter"])
        .arg(a.join("adapter.safetensors"))
        .arg("--adapter")
        .arg(a.join("split_prompt.safetensors"))
        .args([
            "--bg-prompt",
            "a sunny beach",
            "--body-prompt",
            "a red jacket",
        ])
        .arg("--ref")
        .arg(pm.join("ref0.png"))
        .args(["--id-encoder-heads", "16,32", "--output"])
        .arg(&png)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(png.is_file());
}

#[test]
fn two_data_parallel_devices_equal_two_accumulated_micro_batches() {
    let dir = tempfile::tempdir().unwrap();
    let export = make_export(dir.path());
    // The recipe's grad_accum = 2 on one device …
    let one = recipe(dir.path(), "one", &export, "");
    let out = train(&[], &one);
    assert!(out.status.success(), "{}", text(&out));
    // … and one micro-batch on each of two replicas (threads of the CPU backend).
    let two = recipe(dir.path(), "two", &export, "");
    let out = train(&["--grad-accum", "1", "--devices", "2"], &two);
    assert!(out.status.success(), "{}", text(&out));
    let read = |name: &str, file: &str| {
        std::fs::read(dir.path().join("runs").join(name).join("train").join(file)).unwrap()
    };
    assert_eq!(
        read("one", "adapter.safetensors"),
        read("two", "adapter.safetensors"),
        "the exports differ"
    );
    let losses = |name: &str| -> Vec<String> {
        String::from_utf8(read(name, "metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                l.split("\"loss\":")
                    .nth(1)
                    .unwrap()
                    .split(',')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(losses("one"), losses("two"));
    // A device count the run is not given is refused by name.
    let bad = train(&["--devices", "0"], &two);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("`devices` = 0"), "{}", text(&bad));
}
