//! Parity of the DINO / DINOv2 embedders and the FID Inception with their reference libraries:
//! transformers 4.46.3 (`ViTModel`, `Dinov2Model`, `ViTImageProcessor`, `BitImageProcessor`),
//! pytorch-fid 0.3.0 and clean-fid 0.1.35 on torch 2.5.1 / torchvision 0.20.1 / Pillow 11.0.
//! Fixtures come from `tools/dino-inception-reference/make_fixtures.py`: small random-weight
//! models in the upstream layouts (ViT and DINOv2 at hidden 32, 2 layers, patch 8, image 32;
//! the FID Inception graph built by pytorch-fid's own code at 1/16 of its channels), the
//! processors' and resizers' outputs, and the parameter lists of the full-size networks.
//!
//! Tolerances:
//! - processor pixel values: the 8-bit Pillow resize is bit-exact (`core::resample`), the rest
//!   is the same f32 arithmetic as transformers; max |Δ| ≤ 1e-6;
//! - clean-fid's float resize: the same double-precision sums as Pillow's 32-bit resampler,
//!   over values in [0, 255]; max |Δ| ≤ 1e-3 (observed 0); torch bilinear on [0, 1]:
//!   max |Δ| ≤ 1e-6;
//! - embeddings, pool3 and logits: f32 sums in another order (burn's kernels, BatchNorm folded
//!   in double precision) through the network; cosine ≥ 0.9999 and max |Δ| ≤ 1e-4 (absolute;
//!   pool3 and logits reach 15–21 on the random Inception, embeddings 2–4). Observed: DINO
//!   ≤ 1e-6, Inception ≤ 7e-5.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use idforge_models::ModelError;
use idforge_models::dino::{
    DinoArch, DinoConfig, DinoEmbedder, DinoModel, ImageProcessor, ResizeTo, mean_pairwise_cosine,
};
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::inception::{FidInception, FidPreprocess, InceptionConfig};
use idforge_models::iresnet::cosine_similarity;
use serde_json::Value;

type B = Flex;

const MIN_COSINE: f64 = 0.9999;
const MAX_ABS: f64 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Images by the names the fixtures use (relative to `tests/fixtures/` or to the folder).
fn image(folder: &str, name: &str) -> image::RgbImage {
    let direct = fixtures().join(name);
    let path = if direct.exists() {
        direct
    } else {
        fixtures().join(folder).join(name)
    };
    image::open(path).unwrap().to_rgb8()
}

fn view(img: &image::RgbImage) -> RgbView<'_> {
    RgbView {
        width: img.width() as usize,
        height: img.height() as usize,
        data: img.as_raw(),
    }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Compares a flat array with the script's `summary` (shape, sums, strided sample); returns the
/// largest difference on the sample.
fn check_summary(what: &str, got: &[f32], shape: &[usize], want: &Value, tol: f64) -> f64 {
    let want_shape: Vec<usize> = want["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(shape, want_shape.as_slice(), "{what}: shape");
    assert_eq!(got.len(), shape.iter().product::<usize>(), "{what}: length");
    let stride = want["stride"].as_u64().unwrap() as usize;
    let sample = floats(&want["sample"]);
    let mut worst = 0f64;
    for (i, &w) in sample.iter().enumerate() {
        let d = (f64::from(got[i * stride]) - f64::from(w)).abs();
        worst = worst.max(d);
    }
    assert!(worst <= tol, "{what}: sample max |Δ| {worst:e} > {tol:e}");
    // The sums cover every value, not only the sample.
    let sum: f64 = got.iter().map(|&v| f64::from(v)).sum();
    let sum_sq: f64 = got.iter().map(|&v| f64::from(v).powi(2)).sum();
    let n = got.len() as f64;
    let (ws, wq) = (
        want["sum"].as_f64().unwrap(),
        want["sum_sq"].as_f64().unwrap(),
    );
    assert!((sum - ws).abs() <= tol * n, "{what}: sum {sum} vs {ws}");
    assert!(
        (sum_sq - wq).abs() <= tol * n * 2.0 * (wq / n).sqrt().max(1.0),
        "{what}: sum of squares {sum_sq} vs {wq}"
    );
    worst
}

/// Cosine and max |Δ| of an output against the reference.
fn compare(what: &str, got: &[f32], want: &[f32]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let cos = cosine_similarity(got, want);
    let max_abs = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs())
        .fold(0f64, f64::max);
    assert!(cos >= MIN_COSINE, "{what}: cosine {cos}");
    assert!(max_abs <= MAX_ABS, "{what}: max |Δ| {max_abs:e}");
    (cos, max_abs)
}

fn dino_doc() -> Value {
    json(&fixtures().join("dino/dino.json"))
}

#[test]
fn dino_processors_match_transformers() {
    let doc = dino_doc();
    let mut worst = 0f64;
    for m in doc["models"].as_array().unwrap() {
        let folder = format!("dino/{}", m["folder"].as_str().unwrap());
        let proc = ImageProcessor::from_hf_config(
            fixtures().join(&folder).join("preprocessor_config.json"),
        )
        .unwrap();
        for entry in m["images"].as_array().unwrap() {
            let img = image("dino", entry["image"].as_str().unwrap());
            let (px, h, w) = proc.pixel_values(view(&img));
            worst = worst.max(check_summary(
                &format!("{folder} {}", entry["image"]),
                &px,
                &[3, h, w],
                &entry["pixel_values"],
                1e-6,
            ));
        }
    }
    // The full-size presets, on the 640-pixel photo.
    for (key, preset) in [
        ("dino_vits16", ImageProcessor::dino_vits16()),
        ("dinov2", ImageProcessor::dinov2()),
    ] {
        let p = &doc["presets"][key];
        let img = image("dino", p["image"].as_str().unwrap());
        let (px, h, w) = preset.pixel_values(view(&img));
        worst = worst.max(check_summary(
            key,
            &px,
            &[3, h, w],
            &p["pixel_values"],
            1e-6,
        ));
    }
    eprintln!("processors: worst sample |Δ| {worst:e}");
}

#[test]
fn dino_embeddings_match_transformers() {
    let doc = dino_doc();
    let device = Default::default();
    for m in doc["models"].as_array().unwrap() {
        let folder = fixtures().join("dino").join(m["folder"].as_str().unwrap());
        let embedder = DinoEmbedder::<B>::from_dir(&folder, &device).unwrap();
        let want_arch = match m["class"].as_str().unwrap() {
            "ViTModel" => DinoArch::Vit,
            _ => DinoArch::Dinov2,
        };
        assert_eq!(embedder.model.config().arch, want_arch);
        for entry in m["images"].as_array().unwrap() {
            let img = image("dino", entry["image"].as_str().unwrap());
            let got = embedder.embed(view(&img));
            let what = format!("{} {}", m["folder"], entry["image"]);
            let (cos, d) = compare(&what, &got, &floats(&entry["cls"]));
            eprintln!("{what}: cosine {cos:.9}, max |Δ| {d:.1e}");
        }
        // 48×40: 6×5 patches, position table interpolated from 4×4.
        let (h, w) = (48, 40);
        let mut x = Vec::with_capacity(3 * h * w);
        for c in 0..3 {
            for y in 0..h {
                for xx in 0..w {
                    let (c, y, xx) = (c as f64, y as f64, xx as f64);
                    x.push((0.37 * c + 0.11 * y + 0.07 * xx + 0.013 * y * xx).sin() as f32);
                }
            }
        }
        let x = Tensor::<B, 4>::from_data(TensorData::new(x, [1, 3, h, w]), &device);
        let got: Vec<f32> = embedder.model.forward(x).into_data().to_vec().unwrap();
        let what = format!("{} synthetic 48x40", m["folder"]);
        let (cos, d) = compare(&what, &got, &floats(&m["synthetic_48x40"]));
        eprintln!("{what}: cosine {cos:.9}, max |Δ| {d:.1e}");
    }
}

#[test]
fn pytorch_bin_and_safetensors_give_the_same_network() {
    let device = Default::default();
    let dir = fixtures().join("dino/vit");
    let config = DinoConfig::from_hf_config(dir.join("config.json")).unwrap();
    let a = DinoModel::<B>::load(&config, dir.join("model.safetensors"), &device).unwrap();
    // torch.save's zip format, read by burn's PyTorch store.
    let b = DinoModel::<B>::load(&config, dir.join("pytorch_model.bin"), &device).unwrap();
    let x = Tensor::<B, 4>::ones([1, 3, 32, 32], &device);
    let (ea, eb): (Vec<f32>, Vec<f32>) = (
        a.forward(x.clone()).into_data().to_vec().unwrap(),
        b.forward(x).into_data().to_vec().unwrap(),
    );
    assert_eq!(ea, eb);
}

fn key_list(path: &Path) -> BTreeMap<String, Vec<usize>> {
    let v = json(path);
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, s)| {
            let s = s
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (k.clone(), s)
        })
        .collect()
}

/// Every parameter the network reads exists upstream with that shape; upstream parameters it
/// does not read are exactly `unused`.
fn check_keys(ours: Vec<(String, Vec<usize>)>, upstream: &Path, unused: &[&str]) {
    let mut theirs = key_list(upstream);
    for (name, shape) in ours {
        let t = theirs
            .remove(&name)
            .unwrap_or_else(|| panic!("{name} not in {}", upstream.display()));
        assert_eq!(t, shape, "{name}");
    }
    let left: Vec<&str> = theirs.keys().map(String::as_str).collect();
    assert_eq!(left, unused, "upstream parameters not read");
}

#[test]
fn full_size_parameter_names_and_shapes_match_upstream() {
    check_keys(
        DinoConfig::vit_s16().parameter_shapes(),
        &fixtures().join("dino/keys_vit_s16.json"),
        &[],
    );
    check_keys(
        DinoConfig::dinov2_vit_s14().parameter_shapes(),
        &fixtures().join("dino/keys_dinov2_s14.json"),
        &["embeddings.mask_token"],
    );
    let mut ours = InceptionConfig::fid().parameter_shapes();
    let keys = key_list(&fixtures().join("inception/keys_fid_inception.json"));
    // num_batches_tracked (one per BatchNorm) is bookkeeping, not read.
    let tracked: Vec<String> = keys
        .keys()
        .filter(|k| k.ends_with("num_batches_tracked"))
        .cloned()
        .collect();
    assert_eq!(tracked.len(), 94);
    ours.extend(tracked.iter().map(|k| (k.clone(), vec![])));
    check_keys(
        ours,
        &fixtures().join("inception/keys_fid_inception.json"),
        &[],
    );
}

#[test]
fn configs_read_from_the_snapshots() {
    let vit = DinoConfig::from_hf_config(fixtures().join("dino/vit/config.json")).unwrap();
    assert_eq!(
        vit,
        DinoConfig::new(DinoArch::Vit, 32, 2, 4, 64, 8, 32).with_layer_norm_eps(1e-12)
    );
    let v2 = DinoConfig::from_hf_config(fixtures().join("dino/dinov2/config.json")).unwrap();
    assert_eq!(v2, DinoConfig::new(DinoArch::Dinov2, 32, 2, 4, 64, 8, 32));
    let p = ImageProcessor::from_hf_config(fixtures().join("dino/dinov2/preprocessor_config.json"))
        .unwrap();
    assert_eq!(p.resize, Some(ResizeTo::ShortestEdge(36)));
    assert_eq!(p.crop, Some((32, 32)));
}

#[test]
fn missing_or_misshaped_tensors_are_named() {
    let device = Default::default();
    let weights = fixtures().join("dino/vit/model.safetensors");
    // ViT weights read as DINOv2: the first DINOv2-only name is missing.
    let as_v2 = DinoConfig::new(DinoArch::Dinov2, 32, 2, 4, 64, 8, 32);
    match DinoModel::<B>::load(&as_v2, &weights, &device) {
        Err(ModelError::MissingTensor { name, .. }) => {
            assert_eq!(name, "encoder.layer.0.norm1.weight")
        }
        other => panic!("expected a missing tensor, got {other:?}"),
    }
    // Another feed-forward width: the first tensor of that width has the wrong shape.
    let wider = DinoConfig::new(DinoArch::Vit, 32, 2, 4, 96, 8, 32);
    match DinoModel::<B>::load(&wider, &weights, &device) {
        Err(ModelError::Shape { name, found, .. }) => {
            assert_eq!(name, "encoder.layer.0.intermediate.dense.weight");
            assert_eq!(found, vec![64, 32]);
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    // The Inception loader on a safetensors file: not a PyTorch file.
    assert!(matches!(
        FidInception::<B>::load(&weights, &device),
        Err(ModelError::Format { .. })
    ));
    assert!(matches!(
        FidInception::<B>::load(fixtures().join("inception/absent.pth"), &device),
        Err(ModelError::Io { .. })
    ));
}

fn inception_doc() -> Value {
    json(&fixtures().join("inception/inception.json"))
}

#[test]
fn fid_resizers_match_clean_fid_and_torch() {
    let doc = inception_doc();
    for entry in doc["images"].as_array().unwrap() {
        let name = entry["image"].as_str().unwrap();
        let img = image("inception", name);
        for (mode, key, tol) in [
            (FidPreprocess::Clean, "clean", 1e-3),
            (FidPreprocess::LegacyPytorch, "legacy_pytorch", 1e-6),
        ] {
            let got = mode.resize(view(&img), 299, 299);
            let worst = check_summary(
                &format!("{name} {key}"),
                &got,
                &[299, 299, 3],
                &entry[key]["resized"],
                tol,
            );
            eprintln!("{name} {key} resize: sample max |Δ| {worst:e}");
        }
    }
}

#[test]
fn fid_inception_matches_pytorch_fid() {
    let doc = inception_doc();
    let device = Default::default();
    let net = FidInception::<B>::load(
        fixtures()
            .join("inception")
            .join(doc["file"].as_str().unwrap()),
        &device,
    )
    .unwrap();
    assert_eq!(
        net.config(),
        &InceptionConfig::new().with_width_divisor(doc["width_divisor"].as_u64().unwrap() as usize)
    );
    for entry in doc["images"].as_array().unwrap() {
        let name = entry["image"].as_str().unwrap();
        let img = image("inception", name);
        for (mode, key) in [
            (FidPreprocess::Clean, "clean"),
            (FidPreprocess::LegacyPytorch, "legacy_pytorch"),
        ] {
            let (pool3, logits) = net.features(view(&img), mode);
            for (what, got, want) in [
                ("pool3", &pool3, &entry[key]["pool3"]),
                ("logits", &logits, &entry[key]["logits"]),
            ] {
                let what = format!("{name} {key} {what}");
                let (cos, d) = compare(&what, got, &floats(want));
                eprintln!("{what}: cosine {cos:.9}, max |Δ| {d:.1e}");
            }
        }
    }
}

#[test]
fn dino_score_is_the_mean_pairwise_cosine() {
    let a = vec![vec![1.0, 0.0, 0.0], vec![0.0, 2.0, 0.0]];
    let b = vec![vec![1.0, 1.0, 0.0], vec![0.0, 0.0, 3.0]];
    let s = mean_pairwise_cosine(&a, &b).unwrap();
    let want = (std::f64::consts::FRAC_1_SQRT_2 * 2.0) / 4.0;
    assert!((s - want).abs() < 1e-12, "{s} vs {want}");
}

#[test]
fn full_size_networks_build_and_run() {
    let device = Default::default();
    // ViT-S/16 at its 224 pixels; DINOv2 ViT-S/14 at the processor's 224 (16×16 patches from
    // the 37×37 table).
    for config in [DinoConfig::vit_s16(), DinoConfig::dinov2_vit_s14()] {
        let net = config.init::<B>(&device);
        let x = Tensor::<B, 4>::zeros([1, 3, 224, 224], &device);
        assert_eq!(net.forward(x).dims(), [1, 384]);
    }
    let net = InceptionConfig::fid().init::<B>(&device);
    let out = net.forward(Tensor::<B, 4>::zeros([1, 3, 299, 299], &device));
    assert_eq!(out.pool3.dims(), [1, 2048]);
    assert_eq!(out.logits.dims(), [1, 1008]);
}
