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

/// The tiny ArcFace (16-d, the tiny FaceID adapters' width) and CLIP image encoder (width and
/// projection 16) of models/tests/fixtures.
fn model_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tests/fixtures")
}

fn tiny_arcface() -> PathBuf {
    model_fixtures().join("iresnet/iresnet18_w4_mxnet.onnx")
}

fn tiny_image_encoder() -> PathBuf {
    model_fixtures().join("reference/image_encoder")
}

/// `generate` on the tiny SD pipeline, 4 Euler steps from seed 3, plus `extra`.
fn generate_tiny(extra: &[&str], out: &Path) -> Output {
    let model = fixtures().join("tiny-sd");
    let mut args = vec![
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a photo of a man",
        "--steps",
        "4",
        "--seed",
        "3",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    generate(&args)
}

fn pixels(p: &Path) -> Vec<u8> {
    image::open(p).unwrap().to_rgb8().into_raw()
}

#[test]
fn generate_from_reference_photos_equals_the_run_from_their_embeddings() {
    // --ref + --arcface with the FaceID adapter: the largest face of each photo, its ArcFace
    // embedding L2-normalised. The same embeddings computed here with the face embedder and
    // given through --id-embeds give the same image, bit for bit.
    let photos = common::sample_photos_dir();
    let refs = [photos.join("sample1.jpg"), photos.join("sample4.jpg")];
    let device = Default::default();
    let faces = idforge_models::face_embedder::FaceEmbedder::<Flex>::load(
        &common::face_api_dir().join("model"),
        idforge_models::face_api::Detector::default(),
        Some(&tiny_arcface()),
        &device,
    )
    .unwrap();
    let mut ids = Vec::new();
    for r in &refs {
        let img = image::open(r).unwrap().to_rgb8();
        let view = idforge_models::face_api::preprocess::RgbView {
            width: img.width() as usize,
            height: img.height() as usize,
            data: img.as_raw(),
        };
        let (_, embedding) = faces
            .largest_face(view)
            .expect("a face in the sample photo");
        ids.extend(embedding);
    }
    let tmp = tempfile::tempdir().unwrap();
    let id_file = tmp.path().join("ids.safetensors");
    write_id_embeds(&id_file, &ids, 16);
    let adapter = fixtures().join("ip-adapter/faceid.safetensors");
    let saved = tmp.path().join("saved.safetensors");
    let (a, b) = (tmp.path().join("ref.png"), tmp.path().join("ids.png"));
    let from_refs = generate_tiny(
        &[
            "--adapter",
            adapter.to_str().unwrap(),
            "--ref",
            refs[0].to_str().unwrap(),
            "--ref",
            refs[1].to_str().unwrap(),
            "--arcface",
            tiny_arcface().to_str().unwrap(),
            "--save-inputs",
            saved.to_str().unwrap(),
            "--adapter-scale",
            "0.8",
        ],
        &a,
    );
    assert!(from_refs.status.success(), "{}", text(&from_refs));
    let said = text(&from_refs);
    assert!(said.contains("ip-adapter-faceid"), "{said}");
    for r in &refs {
        assert!(
            said.contains(&format!("reference {}", r.display())),
            "{said}"
        );
    }
    assert!(
        said.contains("arcface:iresnet18_w4_mxnet.onnx 16-d"),
        "{said}"
    );
    let from_ids = generate_tiny(
        &[
            "--adapter",
            adapter.to_str().unwrap(),
            "--id-embeds",
            id_file.to_str().unwrap(),
            "--adapter-scale",
            "0.8",
        ],
        &b,
    );
    assert!(from_ids.status.success(), "{}", text(&from_ids));
    assert_eq!(pixels(&a), pixels(&b), "--ref and --id-embeds disagree");
    let base = generate_tiny(&[], &tmp.path().join("base.png"));
    assert!(base.status.success(), "{}", text(&base));
    assert_ne!(pixels(&a), pixels(&tmp.path().join("base.png")));
    // --save-inputs wrote the same embeddings, in the shape --id-embeds reads.
    let store = Weights::open(&saved).unwrap();
    let (shape, values) = store.read_f32("id_embeds").unwrap();
    assert_eq!(shape, [2, 16]);
    let worst = values
        .iter()
        .zip(&ids)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst == 0.0, "saved id_embeds differ by {worst}");
}

#[test]
fn generate_faceid_plus_and_plus_from_reference_photos() {
    // FaceID-Plus V2 takes the ArcFace embedding and CLIP of the 224 px face crop; its inputs
    // written by --save-inputs and given back as --id-embeds + --image-embeds give the same
    // image. The crop's channel order matters; Plus takes CLIP of the whole photo.
    let photos = common::sample_photos_dir();
    let photo = photos.join("sample6.jpg");
    let tmp = tempfile::tempdir().unwrap();
    let saved = tmp.path().join("saved.safetensors");
    let adapter = fixtures().join("ip-adapter/faceid_plus_v2.safetensors");
    let png = |n: &str| tmp.path().join(n);
    let refs = |channels: &'static str, save: bool| -> Vec<String> {
        let mut v: Vec<String> = [
            "--adapter",
            adapter.to_str().unwrap(),
            "--plus-v2",
            "--ref",
            photo.to_str().unwrap(),
            "--arcface",
            tiny_arcface().to_str().unwrap(),
            "--image-encoder",
            tiny_image_encoder().to_str().unwrap(),
            "--face-crop-channels",
            channels,
        ]
        .map(String::from)
        .to_vec();
        if save {
            v.extend(["--save-inputs".into(), saved.to_str().unwrap().into()]);
        }
        v
    };
    let run = |args: &[String], out: &Path| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        generate_tiny(&args, out)
    };
    let bgr = run(&refs("bgr", true), &png("bgr.png"));
    assert!(bgr.status.success(), "{}", text(&bgr));
    let said = text(&bgr);
    assert!(said.contains("ip-adapter-faceid-plus"), "{said}");
    assert!(
        said.contains("224 px face crop (BGR): hidden states 5x16"),
        "{said}"
    );
    let store = Weights::open(&saved).unwrap();
    for (name, shape) in [
        ("id_embeds", vec![1, 16]),
        ("hidden_states", vec![1, 5, 16]),
        ("negative_hidden_states", vec![1, 5, 16]),
    ] {
        assert_eq!(store.shape(name), Some(shape.as_slice()), "{name}");
    }
    let given = run(
        &[
            "--adapter",
            adapter.to_str().unwrap(),
            "--plus-v2",
            "--id-embeds",
            saved.to_str().unwrap(),
            "--image-embeds",
            saved.to_str().unwrap(),
        ]
        .map(String::from),
        &png("given.png"),
    );
    assert!(given.status.success(), "{}", text(&given));
    assert_eq!(pixels(&png("bgr.png")), pixels(&png("given.png")));
    let rgb = run(&refs("rgb", false), &png("rgb.png"));
    assert!(rgb.status.success(), "{}", text(&rgb));
    assert_ne!(
        pixels(&png("bgr.png")),
        pixels(&png("rgb.png")),
        "the crop's channel order changes nothing"
    );
    // Plus: CLIP of the whole photo; --arcface is not needed (and said to be unused).
    let plus = generate_tiny(
        &[
            "--adapter",
            fixtures()
                .join("ip-adapter/plus.safetensors")
                .to_str()
                .unwrap(),
            "--ref",
            photo.to_str().unwrap(),
            "--image-encoder",
            tiny_image_encoder().to_str().unwrap(),
            "--arcface",
            tiny_arcface().to_str().unwrap(),
        ],
        &png("plus.png"),
    );
    assert!(plus.status.success(), "{}", text(&plus));
    assert!(text(&plus).contains("CLIP"), "{}", text(&plus));
    assert!(
        text(&plus).contains("--arcface is not used"),
        "{}",
        text(&plus)
    );
}

#[test]
fn generate_from_references_says_what_is_missing() {
    let photos = common::sample_photos_dir();
    let photo = photos.join("sample1.jpg");
    let photo = photo.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let faceid = fixtures().join("ip-adapter/faceid.safetensors");
    let faceid = faceid.to_str().unwrap();
    let plus = fixtures().join("ip-adapter/plus.safetensors");
    let plus = plus.to_str().unwrap();
    let arcface = tiny_arcface();
    let arcface = arcface.to_str().unwrap();
    let refuse = |args: &[&str], code: i32, wants: &[&str]| {
        let o = generate_tiny(args, &out);
        assert_eq!(o.status.code(), Some(code), "{args:?}\n{}", text(&o));
        for w in wants {
            assert!(
                text(&o).contains(w),
                "{args:?} should say {w:?}\n{}",
                text(&o)
            );
        }
        assert!(!out.exists(), "an image was written");
    };
    // FaceID without --arcface; Plus without --image-encoder: the flag and what to pass.
    refuse(
        &["--adapter", faceid, "--ref", photo],
        1,
        &[
            "ip-adapter-faceid",
            "--arcface",
            "w600k_r50.onnx",
            "--id-embeds",
        ],
    );
    refuse(
        &["--adapter", plus, "--ref", photo],
        1,
        &[
            "ip-adapter-plus",
            "--image-encoder",
            "image_encoder/",
            "--image-embeds",
        ],
    );
    // A photo without a face, an unreadable one, a missing one: named.
    let blank = tmp.path().join("blank.png");
    image::RgbImage::from_pixel(120, 90, image::Rgb([90, 120, 150]))
        .save(&blank)
        .unwrap();
    refuse(
        &[
            "--adapter",
            faceid,
            "--ref",
            blank.to_str().unwrap(),
            "--arcface",
            arcface,
        ],
        1,
        &["--ref", "blank.png", "no face found"],
    );
    let notes = tmp.path().join("notes.jpg");
    std::fs::write(&notes, b"not a photo").unwrap();
    refuse(
        &[
            "--adapter",
            faceid,
            "--ref",
            notes.to_str().unwrap(),
            "--arcface",
            arcface,
        ],
        1,
        &["notes.jpg", "not a readable image"],
    );
    refuse(
        &[
            "--adapter",
            faceid,
            "--ref",
            "nowhere/face.jpg",
            "--arcface",
            arcface,
        ],
        1,
        &["--ref nowhere/face.jpg: no such file"],
    );
    // An image encoder of another width (the tiny CLIPModel of the CLIP fixtures: 48 wide).
    let wide = tmp.path().join("wide_encoder");
    std::fs::create_dir(&wide).unwrap();
    let clip = model_fixtures().join("clip");
    std::fs::copy(
        clip.join("tiny_hf_gelu.config.json"),
        wide.join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        clip.join("tiny_hf_gelu.safetensors"),
        wide.join("model.safetensors"),
    )
    .unwrap();
    refuse(
        &[
            "--adapter",
            plus,
            "--ref",
            photo,
            "--image-encoder",
            wide.to_str().unwrap(),
        ],
        1,
        &["--image-encoder", "48-wide hidden states", "takes 16-wide"],
    );
    // An SDXL adapter on the SD 1.5 model.
    let sdxl = fixtures().join("ip-adapter/sdxl_faceid.safetensors");
    refuse(
        &[
            "--adapter",
            sdxl.to_str().unwrap(),
            "--ref",
            photo,
            "--arcface",
            arcface,
        ],
        1,
        &[
            "another base model",
            "pass the adapter made for this base model",
        ],
    );
    // An IP-Adapter's input twice (PhotoMaker v2 takes --ref with --id-embeds; IP-Adapters
    // one or the other), checked from the file's keys.
    refuse(
        &[
            "--adapter",
            faceid,
            "--ref",
            photo,
            "--id-embeds",
            "ids.safetensors",
        ],
        1,
        &["--id-embeds", "not both"],
    );
    // Flags that do not go together: clap's usage errors.
    refuse(&["--ref", photo], 2, &["--adapter"]);
    refuse(&["--adapter", faceid, "--arcface", arcface], 2, &["--ref"]);
    let five: Vec<&str> = ["--adapter", faceid, "--arcface", arcface]
        .into_iter()
        .chain((0..5).flat_map(|_| ["--ref", photo]))
        .collect();
    refuse(&five, 1, &["1 to 4 reference photos"]);
}

/// The largest difference, in 8-bit levels, between a PNG and a fixture image (`[1, 3, 64, 64]`
/// in [0, 1]); includes the PNG's rounding (≤ 0.5).
fn levels_from_fixture(png: &Path, fixture: &Path, tensor: &str) -> f32 {
    let img = image::open(png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (64, 64));
    let want = Weights::open(fixture)
        .unwrap()
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
    worst
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The PhotoMaker loop of diffusion/tests/fixtures/photomaker/parity.json from the CLI.
fn photomaker_args(f: &Path, version: &str, out: &Path) -> Vec<String> {
    let pm = f.join("photomaker");
    let file = if version == "v1" {
        "photomaker-v1.bin"
    } else {
        "photomaker-v2.safetensors"
    };
    let mut args: Vec<String> = [
        "--model",
        path_str(&f.join("tiny-sdxl")),
        "--adapter",
        path_str(&pm.join(file)),
        "--ref",
        path_str(&pm.join("ref0.png")),
        "--ref",
        path_str(&pm.join("ref1.png")),
        "--prompt",
        "a photo of a man img wearing a red hat",
        "--steps",
        "4",
        "--cfg",
        "5",
        "--id-start-step",
        "1",
        "--noise",
        path_str(&pm.join("parity.safetensors")),
        "--noise-tensor",
        "noise",
        "--id-encoder-heads",
        "16,32",
        "-o",
        path_str(out),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if version == "v2" {
        // The fixture's ArcFace stand-ins (`id_embeds`, one per reference).
        args.extend([
            "--id-embeds".into(),
            path_str(&pm.join("parity.safetensors")).into(),
        ]);
    }
    args
}

/// Both PhotoMaker versions from the CLI (`--ref` photos through PhotoMaker's CLIP
/// preprocessing, v2's embeddings from `--id-embeds`) end at the image of the PhotoMaker
/// repository's pipeline (fixture `<v>.loop.image`) within one 8-bit level, PNG rounding
/// included (measured: printed, ≤ 0.5).
#[test]
fn generate_photomaker_ends_at_the_reference_pipelines_image() {
    let f = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    for version in ["v1", "v2"] {
        let png = tmp.path().join(format!("{version}.png"));
        let out = idforge()
            .arg("generate")
            .args(photomaker_args(&f, version, &png))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("photomaker-{version}")),
            "the kind is printed: {}",
            text(&out)
        );
        let d = levels_from_fixture(
            &png,
            &f.join("photomaker/parity.safetensors"),
            &format!("{version}.loop.image"),
        );
        println!("photomaker {version}: max |Δ| {d:.3} levels");
        assert!(d <= 1.0, "{version}: {d} levels from the reference image");
    }
}

/// The split-prompt adapter from the CLI ends at persongen's pipeline image (fixture
/// `loop.image`) within one 8-bit level, PNG rounding included.
#[test]
fn generate_split_prompt_ends_at_persongens_image() {
    let f = fixtures();
    let sp = f.join("split-prompt");
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("split.png");
    let out = generate(&[
        "--model",
        path_str(&f.join("tiny-sdxl")),
        "--adapter",
        path_str(&sp.join("adapter.safetensors")),
        "--prompt",
        "a photo of a man",
        "--bg-prompt",
        "a sunny beach with palm trees",
        "--body-prompt",
        "wearing a red jacket",
        "--negative-prompt",
        "lowres, blurry",
        "--steps",
        "10",
        "--cfg",
        "5",
        "--noise",
        path_str(&sp.join("parity.safetensors")),
        "--noise-tensor",
        "loop.noise",
        "-o",
        path_str(&png),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("split-prompt"), "{}", text(&out));
    let d = levels_from_fixture(&png, &sp.join("parity.safetensors"), "loop.image");
    println!("split-prompt: max |Δ| {d:.3} levels");
    assert!(d <= 1.0, "{d} levels from persongen's image");
}

/// PhotoMaker with the split-prompt adapter (persongen's ipmakerbgbody): the CLI's image is
/// the library path's — PhotoMaker's two-phase conditioning, its LoRA and the split parts
/// composed in `Hooks` — byte for byte.
#[test]
fn generate_photomaker_with_split_prompt_equals_the_library_path() {
    use idforge_diffusion::adapters::photomaker::{IdEncoderOptions, PhotoMaker};
    use idforge_diffusion::adapters::split_prompt::{
        SplitPrompt, SplitPrompts, SplitScale, encode_split_prompt,
    };
    use idforge_diffusion::pipeline::to_rgb8;
    use idforge_diffusion::{Hooks, Pipeline, SampleSettings, SamplerKind};
    use idforge_models::face_api::preprocess::RgbView;

    let f = fixtures();
    let pm_dir = f.join("photomaker");
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("both.png");
    let mut args = photomaker_args(&f, "v1", &png);
    args.extend(
        [
            "--adapter",
            path_str(&f.join("split-prompt/adapter.safetensors")),
            "--bg-prompt",
            "a sunny beach",
            "--body-prompt",
            "wearing a red jacket",
            "--bg-scale",
            "0.6",
        ]
        .map(String::from),
    );
    let out = idforge().arg("generate").args(&args).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let got = image::open(&png).unwrap().to_rgb8().into_raw();

    let device = Default::default();
    let pipe = Pipeline::<Flex>::load(&f.join("tiny-sdxl"), &device).unwrap();
    let options = IdEncoderOptions {
        vision_head_dim: 16,
        perceiver_head_dim: 32,
    };
    let pm =
        PhotoMaker::load_with(&pm_dir.join("photomaker-v1.bin"), &pipe, &options, &device).unwrap();
    let split = SplitPrompt::load(
        &f.join("split-prompt/adapter.safetensors"),
        &pipe.unet,
        &device,
    )
    .unwrap();
    let photos: Vec<image::RgbImage> = ["ref0.png", "ref1.png"]
        .iter()
        .map(|p| image::open(pm_dir.join(p)).unwrap().to_rgb8())
        .collect();
    let views: Vec<RgbView<'_>> = photos
        .iter()
        .map(|i| RgbView {
            width: i.width() as usize,
            height: i.height() as usize,
            data: i.as_raw(),
        })
        .collect();
    let prompt = "a photo of a man img wearing a red hat";
    let cond = pm
        .conditioning(&pipe, prompt, pm.preprocess(&views, &device), None)
        .unwrap();
    let parts = encode_split_prompt(
        &pipe,
        &SplitPrompts {
            main: prompt,
            background: "a sunny beach",
            body: "wearing a red jacket",
            negative: None,
        },
        true,
    )
    .unwrap();
    let split_hook = split.hook(
        &parts,
        SplitScale {
            background: 0.6,
            body: 1.0,
        },
    );
    let hooks = Hooks(vec![pm.hook(), &split_hook]);
    let plan = cond.plan(parts.uncond.as_ref(), &hooks, 1);
    let noise = Weights::open(pm_dir.join("parity.safetensors"))
        .unwrap()
        .tensor::<Flex, 4>("noise", [1, 4, 32, 32], &device)
        .unwrap();
    let settings = SampleSettings {
        steps: 4,
        guidance: 5.0,
        sampler: SamplerKind::Euler,
        time_ids: [64.0, 64.0, 0.0, 0.0, 64.0, 64.0],
    };
    let image = pipe.decode(
        pipe.sample_with(&plan, &settings, noise, &mut |_, _| {})
            .unwrap(),
    );
    let (_, _, want) = to_rgb8(image.reshape([3, 64, 64]));
    let differing = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(
        differing, 0,
        "{differing} bytes differ from the library path"
    );
    // The split parts matter: without them the image is another one.
    let plain = pipe.decode(
        pipe.sample_with(
            &cond.plan(parts.uncond.as_ref(), pm.hook(), 1),
            &settings,
            Weights::open(pm_dir.join("parity.safetensors"))
                .unwrap()
                .tensor::<Flex, 4>("noise", [1, 4, 32, 32], &device)
                .unwrap(),
            &mut |_, _| {},
        )
        .unwrap(),
    );
    let (_, _, plain) = to_rgb8(plain.reshape([3, 64, 64]));
    assert_ne!(plain, want, "the split parts change the image");
}

/// Each missing piece of the PhotoMaker and split-prompt kinds, and an `--id-embeds` width
/// the adapter does not take, is an error (exit 1) that names what to pass; nothing is
/// written.
#[test]
fn generate_photomaker_and_split_prompt_say_what_is_missing() {
    let f = fixtures();
    let pm = f.join("photomaker");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let v1 = pm.join("photomaker-v1.bin");
    let v2 = pm.join("photomaker-v2.safetensors");
    let split = f.join("split-prompt/adapter.safetensors");
    let faceid = f.join("ip-adapter/faceid.safetensors");
    let ref0 = pm.join("ref0.png");
    let wide = tmp.path().join("wide.safetensors");
    write_id_embeds(&wide, &[0.1; 24], 24);
    let (sdxl, sd) = (f.join("tiny-sdxl"), f.join("tiny-sd"));
    let refuse = |model: &Path, extra: &[&Path], flags: &[&str], wants: &[&str]| {
        let mut args: Vec<String> = vec![
            "--model".into(),
            path_str(model).into(),
            "--steps".into(),
            "2".into(),
            "--id-encoder-heads".into(),
            "16,32".into(),
            "-o".into(),
            path_str(&out).into(),
        ];
        args.extend(flags.iter().map(|s| s.to_string()));
        for (i, p) in extra.iter().enumerate() {
            // Paths fill the `{}` placeholders of `flags`, in order.
            let at = args
                .iter()
                .position(|a| a == "{}")
                .unwrap_or_else(|| panic!("{i}"));
            args[at] = path_str(p).into();
        }
        let o = idforge().arg("generate").args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}\n{}", text(&o));
        for w in wants {
            assert!(
                text(&o).contains(w),
                "{args:?} should say {w:?}\n{}",
                text(&o)
            );
        }
        assert!(!out.exists(), "an image was written");
    };
    let prompt = "a photo of a man img";
    // PhotoMaker: no trigger word; no photos; v2 without --arcface or --id-embeds; on SD 1.5.
    refuse(
        &sdxl,
        &[&v1, &ref0],
        &[
            "--adapter",
            "{}",
            "--ref",
            "{}",
            "--prompt",
            "a photo of a man",
        ],
        &["trigger word `img`", "--trigger"],
    );
    refuse(
        &sdxl,
        &[&v1, &ref0],
        &[
            "--adapter",
            "{}",
            "--ref",
            "{}",
            "--prompt",
            "a man img",
            "--trigger",
            "sks",
        ],
        &["`sks` 0 times"],
    );
    refuse(
        &sdxl,
        &[&v1],
        &["--adapter", "{}", "--prompt", prompt],
        &["photomaker-v1", "--ref"],
    );
    refuse(
        &sdxl,
        &[&v2, &ref0],
        &["--adapter", "{}", "--ref", "{}", "--prompt", prompt],
        &["photomaker-v2", "--arcface", "--id-embeds"],
    );
    refuse(
        &sdxl,
        &[&v2, &ref0, &wide],
        &[
            "--adapter",
            "{}",
            "--ref",
            "{}",
            "--id-embeds",
            "{}",
            "--prompt",
            prompt,
        ],
        &["24 wide", "photomaker-v2 takes 16"],
    );
    refuse(
        &sd,
        &[&v1, &ref0],
        &["--adapter", "{}", "--ref", "{}", "--prompt", prompt],
        &["PhotoMaker", "SDXL"],
    );
    // Split-prompt: parts without the adapter; on SD 1.5; an identity with no identity adapter;
    // two identity adapters.
    refuse(
        &sdxl,
        &[],
        &[
            "--adapter",
            "/nonexistent.bin",
            "--prompt",
            "p",
            "--bg-prompt",
            "a beach",
        ],
        &["/nonexistent.bin"],
    );
    refuse(
        &sdxl,
        &[&v1, &ref0],
        &[
            "--adapter",
            "{}",
            "--ref",
            "{}",
            "--prompt",
            prompt,
            "--bg-prompt",
            "a beach",
        ],
        &["--bg-prompt", "split-prompt"],
    );
    refuse(
        &sd,
        &[&split],
        &["--adapter", "{}", "--prompt", "p", "--bg-prompt", "a beach"],
        &["split-prompt", "SDXL"],
    );
    refuse(
        &sdxl,
        &[&split, &ref0],
        &["--adapter", "{}", "--ref", "{}", "--prompt", "p"],
        &["PhotoMaker file"],
    );
    refuse(
        &sdxl,
        &[&v1, &faceid, &ref0],
        &[
            "--adapter",
            "{}",
            "--adapter",
            "{}",
            "--ref",
            "{}",
            "--prompt",
            prompt,
        ],
        &["photomaker-v1, ip-adapter-faceid"],
    );
    // An --id-embeds width the IP-Adapter does not take: an error, not a panic in matmul.
    refuse(
        &sd,
        &[&faceid, &wide],
        &["--adapter", "{}", "--id-embeds", "{}", "--prompt", "p"],
        &["24 wide", "ip-adapter-faceid adapter takes 16"],
    );
}
