//! `idforge train` with periodic samples (`sample_every`) on the tiny SD fixture: every N
//! steps the adapter of that step renders the sample prompts for the validation split's
//! identities into `<run>/samples/step-NNNNNN/`, report.html shows a grid per step, a sample
//! is the image `idforge generate` makes with the exported adapter, and rendering leaves the
//! training itself unchanged (the same adapter, bit for bit, as a run without samples).

mod common;

use std::path::{Path, PathBuf};

use common::{CuratedRun, idforge, text};
use idforge_core::resample::Plane8;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn encoder() -> PathBuf {
    root().join("models/tests/fixtures/reference/image_encoder")
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

/// Three photos of each of three identities, `cleo` held out for validation.
fn make_export(dir: &Path) -> PathBuf {
    let run = dir.join("runs").join("demo");
    CuratedRun {
        identities: &["ana", "ben", "cleo"],
        per_identity: 3,
        crop_side: 48,
        face_box: [8.0, 6.0, 40.0, 44.0],
    }
    .write(&run, save_jpeg, |_, j| {
        Some((
            format!("a photo of a person sks, take {j}"),
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

/// A 4-step IP-Adapter Plus run (CLIP of the whole photo: no face detector needed) at 64 px.
fn train(dir: &Path, name: &str, export: &Path, extra: &str) -> PathBuf {
    let recipe = dir.join(format!("{name}.toml"));
    std::fs::write(
        &recipe,
        format!(
            "name = \"{name}\"\nruns_dir = \"{runs}\"\n\n[train]\nmethod = \"ip-adapter-plus\"\n\
             model = \"{model}\"\ndataset = \"{export}\"\nimage_encoder = \"{encoder}\"\n\
             resolution = 64\nbatch_size = 2\nsteps = 4\nlr = 1e-3\nseed = 7\n\
             checkpoint_every = 2\ncache_dir = \"{cache}\"\n{extra}",
            runs = dir.join("runs").display(),
            model = root().join("diffusion/tests/fixtures/tiny-sd").display(),
            export = export.display(),
            encoder = encoder().display(),
            cache = dir.join("cache").display(),
        ),
    )
    .unwrap();
    let out = idforge()
        .arg("train")
        .arg("--recipe")
        .arg(&recipe)
        .output()
        .unwrap();
    assert!(out.status.success(), "{name}: {}", text(&out));
    dir.join("runs").join(name).join("train")
}

#[test]
fn periodic_samples_render_through_generate_and_leave_training_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let export = make_export(dir.path());
    let sampled = train(
        dir.path(),
        "sampled",
        &export,
        "sample_every = 2\nsample_steps = 2\nsample_identities = 2\nsample_seed = 3\n\
         sample_prompts = [\"a photo of a person\", \"a person at the beach\"]\n",
    );
    let plain = train(dir.path(), "plain", &export, "");

    // Rendering draws nothing from the training streams: the same adapter, bit for bit.
    assert_eq!(
        std::fs::read(sampled.join("adapter.safetensors")).unwrap(),
        std::fs::read(plain.join("adapter.safetensors")).unwrap(),
        "samples changed the training"
    );
    assert!(!plain.join("samples").exists());

    // The validation split's one identity × 2 prompts at steps 2 and 4, its reference once.
    let samples = sampled.join("samples");
    assert!(samples.join("references/cleo.png").is_file());
    for step in ["step-000002", "step-000004"] {
        for k in 0..2 {
            let png = samples.join(step).join(format!("cleo-{k}.png"));
            assert!(png.is_file(), "{} missing", png.display());
        }
    }
    let left: Vec<_> = std::fs::read_dir(&samples)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    assert!(left.is_empty(), "temporary adapters left: {left:?}");
    // Steps 2 and 4 differ (the adapter trained in between).
    assert_ne!(
        std::fs::read(samples.join("step-000002/cleo-0.png")).unwrap(),
        std::fs::read(samples.join("step-000004/cleo-0.png")).unwrap()
    );

    // The last step's sample is what `idforge generate` makes with the exported adapter.
    let png = dir.path().join("generate.png");
    let out = idforge()
        .args(["generate", "--model"])
        .arg(root().join("diffusion/tests/fixtures/tiny-sd"))
        .arg("--adapter")
        .arg(sampled.join("adapter.safetensors"))
        .arg("--image-encoder")
        .arg(encoder())
        .arg("--ref")
        .arg(samples.join("references/cleo.png"))
        .args([
            "--prompt",
            "a person at the beach",
            "--steps",
            "2",
            "--cfg",
            "5",
        ])
        .args(["--seed", "4", "-o"])
        .arg(&png)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(&png).unwrap(),
        std::fs::read(samples.join("step-000004/cleo-1.png")).unwrap(),
        "the sample differs from generate's image"
    );

    // The report shows a grid per step.
    let report = std::fs::read_to_string(sampled.join("report.html")).unwrap();
    assert!(report.contains("<h2>Samples</h2>"), "{report}");
    assert!(report.contains("validation split"), "{report}");
    assert!(report.contains("samples/references/cleo.png"), "{report}");
    for step in ["step-000002", "step-000004"] {
        assert!(report.contains(&format!("<h3>{step}</h3>")), "{report}");
        assert!(
            report.contains(&format!("samples/{step}/cleo-1.png")),
            "{report}"
        );
    }
    let plain_report = std::fs::read_to_string(plain.join("report.html")).unwrap();
    assert!(!plain_report.contains("<h2>Samples</h2>"));
}
