//! `idforge generate` on the tiny diffusers SD pipeline of diffusion/tests/fixtures (written by
//! tools/diffusers-reference): from diffusers' own initial noise it ends at diffusers' image;
//! from a seed it is reproducible; bad input is refused with a message.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use burn::backend::Flex;
use idforge_models::WeightStore as Weights;

use common::{idforge, text};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("diffusion/tests/fixtures")
}

fn generate(args: &[&str]) -> Output {
    idforge()
        .arg("generate")
        .args(args)
        .output()
        .expect("idforge runs")
}

#[test]
fn generate_from_diffusers_noise_ends_at_diffusers_image() {
    let f = fixtures();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.join("sd_parity.json")).unwrap()).unwrap();
    let prompt = json["loop"]["prompt"].as_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("out.png");
    let parity = f.join("sd_parity.safetensors");
    let out = generate(&[
        "--model",
        f.join("tiny-sd").to_str().unwrap(),
        "--prompt",
        prompt,
        "--negative-prompt",
        "",
        "--steps",
        "10",
        "--cfg",
        "7.5",
        "--sampler",
        "ddim",
        "--noise",
        parity.to_str().unwrap(),
        "--noise-tensor",
        "loop.ddim.noise",
        "-o",
        png.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_within_half_a_level(&png, &parity, "loop.ddim.image");
}

/// The PNG equals diffusers' image (`output_type="pt"`, `[1, 3, 64, 64]` in [0, 1]) but for
/// the 8-bit rounding: ≤ 0.5 of a level plus the loop's ~1e-6 relative error.
fn assert_within_half_a_level(png: &Path, fixture: &Path, tensor: &str) {
    let img = image::open(png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (64, 64));
    let want = Weights::open(fixture).unwrap();
    let want = want
        .tensor::<Flex, 4>(tensor, [1, 3, 64, 64], &Default::default())
        .unwrap()
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let mut worst = 0f32;
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            let w = want[c * 64 * 64 + y as usize * 64 + x as usize] * 255.0;
            worst = worst.max((p[c] as f32 - w).abs());
        }
    }
    assert!(
        worst <= 0.51,
        "a pixel differs from diffusers' by {worst} levels"
    );
}

#[test]
fn generate_is_reproducible_per_seed() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let run = |seed: &str, name: &str| {
        let png = tmp.path().join(name);
        let out = generate(&[
            "--model",
            f.join("tiny-sd").to_str().unwrap(),
            "--prompt",
            "a portrait of a woman",
            "--steps",
            "4",
            "--seed",
            seed,
            "-o",
            png.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("seed {seed}")));
        image::open(&png).unwrap().to_rgb8()
    };
    let a = run("7", "a.png");
    let b = run("7", "b.png");
    let c = run("8", "c.png");
    assert_eq!(a.dimensions(), (64, 64), "the model's native size");
    assert_eq!(a, b, "same seed, different image");
    assert_ne!(a, c, "different seeds, same image");
}

#[test]
fn generate_refuses_bad_input_with_a_message() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("x.png");
    let model = f.join("tiny-sd");
    let model = model.to_str().unwrap();

    let out = generate(&[
        "--model",
        tmp.path().to_str().unwrap(),
        "--prompt",
        "p",
        "-o",
        png.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("model_index.json"), "{}", text(&out));

    let out = generate(&[
        "--model",
        model,
        "--prompt",
        "p",
        "--width",
        "61",
        "-o",
        png.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("multiples of"), "{}", text(&out));

    let out = generate(&[
        "--model",
        model,
        "--prompt",
        "p",
        "--steps",
        "0",
        "-o",
        png.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--steps") && text(&out).contains("1 to 1000"),
        "{}",
        text(&out)
    );

    std::fs::write(&png, b"keep me").unwrap();
    let out = generate(&[
        "--model",
        model,
        "--prompt",
        "p",
        "--steps",
        "2",
        "-o",
        png.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--overwrite"), "{}", text(&out));
    assert_eq!(
        std::fs::read(&png).unwrap(),
        b"keep me",
        "an existing file was touched"
    );

    let jpg = tmp.path().join("x.jpg");
    let out = generate(&[
        "--model",
        model,
        "--prompt",
        "p",
        "-o",
        jpg.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains(".png"), "{}", text(&out));
}

/// Writes `id_embeds` `[refs, dim]` as f32 safetensors.
fn write_id_embeds(path: &Path, values: &[f32], dim: usize) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![values.len() / dim, dim],
        &bytes,
    )
    .unwrap();
    safetensors::serialize_to_file([("id_embeds", view)], None, path).unwrap();
}

#[test]
fn generate_with_an_ip_adapter_faceid_file() {
    // The FaceID adapter of tools/adapters-reference (the tiny SD UNet's layout, with LoRA):
    // scale 0 gives exactly the base model's image, scale 1 another; the kind is printed.
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let ids = tmp.path().join("ids.safetensors");
    let id: Vec<f32> = (0..16).map(|i| ((i as f32) * 0.7).sin() / 2.0).collect();
    write_id_embeds(&ids, &id, 16);
    let adapter = f.join("ip-adapter/faceid.safetensors");
    let png = |name: &str| tmp.path().join(name);
    let common = |out: &Path| -> Vec<String> {
        [
            "--model",
            f.join("tiny-sd").to_str().unwrap(),
            "--prompt",
            "a photo of a man",
            "--steps",
            "4",
            "--seed",
            "3",
            "-o",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |extra: &[&str], out: &Path| {
        let mut args = common(out);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        generate(&args)
    };
    let base = run(&[], &png("base.png"));
    assert!(base.status.success(), "{}", text(&base));
    let adapter_args = |scale: &'static str| {
        vec![
            "--adapter",
            adapter.to_str().unwrap(),
            "--id-embeds",
            ids.to_str().unwrap(),
            "--adapter-scale",
            scale,
        ]
    };
    let zero = run(&adapter_args("0"), &png("zero.png"));
    assert!(zero.status.success(), "{}", text(&zero));
    assert!(text(&zero).contains("ip-adapter-faceid"), "{}", text(&zero));
    let one = run(&adapter_args("1"), &png("one.png"));
    assert!(one.status.success(), "{}", text(&one));
    let pixels = |p: &Path| image::open(p).unwrap().to_rgb8().into_raw();
    // Scale 0 removes the decoupled attention but FaceID's LoRA stays (as in diffusers).
    let (b, z, o) = (
        pixels(&png("base.png")),
        pixels(&png("zero.png")),
        pixels(&png("one.png")),
    );
    assert_ne!(z, o, "the adapter scale changes nothing");
    assert_ne!(b, o, "the adapter changes nothing");
    // An adapter that starts after the last step leaves the base model alone (per-step inputs).
    let late = run(
        &[adapter_args("1"), vec!["--id-start-step", "4"]].concat(),
        &png("late.png"),
    );
    assert!(late.status.success(), "{}", text(&late));
    assert_eq!(
        pixels(&png("late.png")),
        b,
        "an adapter starting after the last step is the base model"
    );
    // Bad input.
    let missing = run(&["--adapter", adapter.to_str().unwrap()], &png("x.png"));
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    assert!(text(&missing).contains("--id-embeds"), "{}", text(&missing));
    let not_adapter = run(
        &[
            "--adapter",
            f.join("sd_parity.safetensors").to_str().unwrap(),
            "--id-embeds",
            ids.to_str().unwrap(),
        ],
        &png("y.png"),
    );
    assert_eq!(not_adapter.status.code(), Some(1), "{}", text(&not_adapter));
    assert!(
        text(&not_adapter).contains("image_proj"),
        "{}",
        text(&not_adapter)
    );
}

#[test]
fn generate_with_ip_adapter_faceid_ends_at_diffusers_image() {
    // diffusers' StableDiffusionPipeline with the FaceID file loaded by `load_ip_adapter` (LoRA
    // on), two references, scale 0.8, 10 guided DDIM steps from fixed noise
    // (tools/adapters-reference): the same image to the 8-bit rounding.
    let f = fixtures();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.join("ip-adapter/parity.json")).unwrap())
            .unwrap();
    let l = &meta["loop_faceid"];
    let inputs = f.join("ip-adapter/loop_faceid.safetensors");
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("faceid.png");
    let out = generate(&[
        "--model",
        f.join("tiny-sd").to_str().unwrap(),
        "--prompt",
        l["prompt"].as_str().unwrap(),
        "--negative-prompt",
        "",
        "--steps",
        &l["steps"].to_string(),
        "--cfg",
        &l["guidance"].to_string(),
        "--sampler",
        "ddim",
        "--noise",
        inputs.to_str().unwrap(),
        "--noise-tensor",
        "noise",
        "--adapter",
        f.join("ip-adapter/faceid.safetensors").to_str().unwrap(),
        "--id-embeds",
        inputs.to_str().unwrap(),
        "--adapter-scale",
        &l["scale"].to_string(),
        "-o",
        png.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_within_half_a_level(&png, &inputs, "image");
}
