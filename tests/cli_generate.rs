//! `idforge generate` on the tiny diffusers SD pipeline of diffusion/tests/fixtures (written by
//! tools/diffusers-reference): from diffusers' own initial noise it ends at diffusers' image;
//! from a seed it is reproducible; bad input is refused with a message.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use burn::backend::Flex;
use idforge_diffusion::Weights;

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
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (64, 64));
    // diffusers' image in [0, 1] (`output_type="pt"`), [1, 3, 64, 64].
    let want = Weights::open(&parity).unwrap();
    let want = want
        .tensor::<Flex, 4>("loop.ddim.image", [1, 3, 64, 64], &Default::default())
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
    // Rounding to 8 bits is the only difference allowed: ≤ 0.5 of a level plus the loop's
    // 1e-6 relative error.
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
    assert!(!out.status.success());
    assert!(text(&out).contains("sampling steps"), "{}", text(&out));

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
