//! `models::reference` against its Python references (tools/reference-inputs): from the same
//! five points, insightface's `norm_crop` (OpenCV) at 112 and 224 px, the ArcFace embedding from
//! ONNX Runtime (raw and normalised), and transformers' `CLIPVisionModelWithProjection` with
//! `CLIPImageProcessor` on the photo and on the face crop (BGR as IP-Adapter-FaceID-Plus's demo,
//! and RGB), plus the unconditional hidden states of zero pixels.
//!
//! Needs face-api's weights in the asset cache (`make assets`): the points themselves come from
//! idforge's face-api port, and must still be the ones the fixtures were made from.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use idforge_models::face_align::{five_points_from_68, norm_crop};
use idforge_models::face_api::Detector;
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::face_embedder::FaceEmbedder;
use idforge_models::iresnet::IResNet;
use idforge_models::reference::{
    ClipFeatures, ClipInput, CropChannels, FACE_CROP_SIZE, ImageEncoder, ReferenceEncoder,
    ReferenceNeeds, read_rgb,
};
use idforge_models::{ModelError, WeightStore};
use serde_json::Value;
use sha2::{Digest, Sha256};

type B = Flex;

/// Raw ArcFace embeddings: |Δ| relative to the largest |value| (ONNX Runtime sums in another
/// order; iresnet_parity measures ~1e-6).
const ARCFACE_REL: f32 = 1e-4;
/// Normalised embeddings, absolute.
const NORMED_ABS: f32 = 1e-5;
/// CLIPImageProcessor's pixels: Pillow-exact resize, the same f32 normalisation.
const PIXELS_ABS: f32 = 1e-6;
/// CLIP outputs: |Δ| relative to the largest |value| of the tensor (the project's network bound).
const CLIP_REL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference/reference.json")).unwrap(),
    )
    .unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn face_api_models() -> PathBuf {
    idforge_core::cache::face_api_dir_if_fetched()
        .unwrap_or_else(|| panic!("face-api's weights are missing: run `make assets`"))
        .join("model")
}

fn encoder(arcface: &str) -> ReferenceEncoder<B> {
    let device = Default::default();
    let faces = FaceEmbedder::<B>::load(
        &face_api_models(),
        Detector::default(),
        Some(&fixtures().join("iresnet").join(arcface)),
        &device,
    )
    .unwrap();
    let clip =
        ImageEncoder::<B>::load(&fixtures().join("reference/image_encoder"), &device).unwrap();
    ReferenceEncoder::new(Some(faces), Some(clip))
}

/// The largest |Δ| relative to the largest |want|.
fn rel_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let peak = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()))
        / peak
}

fn abs_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()))
}

fn sha(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

struct Worst(Vec<(String, f32)>);

impl Worst {
    fn check(&mut self, what: String, diff: f32, bound: f32) {
        assert!(diff <= bound, "{what}: {diff:e} > {bound:e}");
        self.0.push((what, diff));
    }
}

#[test]
fn reference_inputs_match_insightface_onnxruntime_and_transformers() {
    let r = reference();
    let tensors = WeightStore::open(fixtures().join("reference/reference.safetensors")).unwrap();
    let t = |name: &str| tensors.read_f32(name).unwrap().1;
    let mut worst = Worst(Vec::new());
    for arcface in ["iresnet18_w4_mxnet.onnx", "iresnet50_w4.onnx"] {
        let enc = encoder(arcface);
        for (i, photo) in r["photos"].as_array().unwrap().iter().enumerate() {
            let name = photo["image"].as_str().unwrap();
            let path = fixtures().join("face-api").join(name);
            let needs = ReferenceNeeds {
                face: true,
                clip: Some(ClipInput::FaceCrop(CropChannels::Bgr)),
            };
            let got = enc.encode_file(&path, &needs).unwrap();
            let face = got.face.as_ref().unwrap();
            // The same five points the fixtures were made from (face-api port unchanged).
            let want_points: Vec<Vec<f64>> = photo["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    p.as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap())
                        .collect()
                })
                .collect();
            for (g, w) in face.points.iter().zip(&want_points) {
                assert!(
                    (g.0 - w[0]).abs() <= 1e-9 && (g.1 - w[1]).abs() <= 1e-9,
                    "{name}: points {:?} vs {want_points:?} (regenerate with \
                     tools/reference-inputs/run if face-api's port changed on purpose)",
                    face.points
                );
            }
            assert_eq!(
                five_points_from_68(face.face.landmarks.as_deref().unwrap()),
                face.points
            );
            // insightface's norm_crop at 224 (what FaceID-Plus gives CLIP) and at 112
            // (ArcFace's input), byte for byte.
            assert_eq!(face.crop.size, FACE_CROP_SIZE);
            assert_eq!(
                sha(&face.crop.data),
                photo["crop224_rgb_sha256"].as_str().unwrap(),
                "{name}: the 224 px crop differs from OpenCV's"
            );
            let (w, h, rgb) = read_rgb(&path).unwrap();
            let view = RgbView {
                width: w,
                height: h,
                data: &rgb,
            };
            let crop112 = norm_crop(view, &face.points, 112);
            assert_eq!(
                sha(&crop112.data),
                photo["crop112_rgb_sha256"].as_str().unwrap(),
                "{name}: the 112 px crop differs from OpenCV's"
            );
            // ArcFace, raw and normalised.
            let want = &photo["arcface"][arcface];
            worst.check(
                format!("{arcface} {name} embedding"),
                rel_diff(&face.embedding, &floats(&want["embedding"])),
                ARCFACE_REL,
            );
            worst.check(
                format!("{arcface} {name} normed_embedding"),
                abs_diff(&face.normed_embedding, &floats(&want["normed_embedding"])),
                NORMED_ABS,
            );
            let norm: f32 = face.normed_embedding.iter().map(|v| v * v).sum::<f32>();
            assert!((norm - 1.0).abs() < 1e-5, "{norm}");
            if arcface != "iresnet18_w4_mxnet.onnx" {
                continue;
            }
            // CLIP of the BGR crop (computed by encode above), of the RGB crop and of the photo.
            let clip = enc.image_encoder().unwrap();
            let mut compare = |key: String, f: &ClipFeatures, pixels: Option<Vec<f32>>| {
                if let Some(p) = pixels {
                    worst.check(
                        format!("{key}.pixel_values"),
                        abs_diff(&p, &t(&format!("{key}.pixel_values"))),
                        PIXELS_ABS,
                    );
                }
                worst.check(
                    format!("{key}.hidden_states"),
                    rel_diff(&f.hidden_states, &t(&format!("{key}.hidden_states"))),
                    CLIP_REL,
                );
                worst.check(
                    format!("{key}.image_embeds"),
                    rel_diff(
                        f.image_embeds.as_deref().unwrap(),
                        &t(&format!("{key}.image_embeds")),
                    ),
                    CLIP_REL,
                );
            };
            compare(format!("crop_bgr.{i}"), got.clip.as_ref().unwrap(), None);
            let rgb_crop = face.crop.view();
            let pixels = |v: RgbView<'_>| -> Vec<f32> {
                use idforge_models::readback::ReadBack;
                clip.pixels(&[v]).to_f32_vec()
            };
            let f = clip.encode(&[rgb_crop]).pop().unwrap();
            compare(format!("crop_rgb.{i}"), &f, Some(pixels(rgb_crop)));
            let whole = enc
                .encode_file(
                    &path,
                    &ReferenceNeeds {
                        face: false,
                        clip: Some(ClipInput::WholeImage),
                    },
                )
                .unwrap();
            assert!(whole.face.is_none());
            compare(
                format!("photo.{i}"),
                whole.clip.as_ref().unwrap(),
                Some(pixels(view)),
            );
            let bgr: Vec<u8> = face
                .crop
                .data
                .chunks_exact(3)
                .flat_map(|p| [p[2], p[1], p[0]])
                .collect();
            let bgr_view = RgbView {
                width: FACE_CROP_SIZE,
                height: FACE_CROP_SIZE,
                data: &bgr,
            };
            worst.check(
                format!("crop_bgr.{i}.pixel_values"),
                abs_diff(&pixels(bgr_view), &t(&format!("crop_bgr.{i}.pixel_values"))),
                PIXELS_ABS,
            );
        }
        if arcface == "iresnet18_w4_mxnet.onnx" {
            let uncond = enc.image_encoder().unwrap().unconditional();
            assert_eq!((uncond.tokens, uncond.width), (5, 16));
            worst.check(
                "uncond.hidden_states".into(),
                rel_diff(&uncond.hidden_states, &t("uncond.hidden_states")),
                CLIP_REL,
            );
        }
    }
    // The largest difference per kind of output, for the record.
    let mut kinds: Vec<(String, f32)> = Vec::new();
    for (what, d) in &worst.0 {
        let kind = what.rsplit(['.', ' ']).next().unwrap_or(what).to_string();
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, m)) => *m = m.max(*d),
            None => kinds.push((kind, *d)),
        }
    }
    eprintln!(
        "{} comparisons; largest per output: {kinds:?}",
        worst.0.len()
    );
}

#[test]
fn a_photo_without_a_face_and_an_unreadable_file_are_named() {
    let enc = encoder("iresnet18_w4_mxnet.onnx");
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank.png");
    image::RgbImage::from_pixel(96, 80, image::Rgb([200, 180, 160]))
        .save(&blank)
        .unwrap();
    let needs = ReferenceNeeds {
        face: true,
        clip: None,
    };
    let e = enc.encode_file(&blank, &needs).unwrap_err();
    assert!(matches!(e, ModelError::NoFace { .. }), "{e:?}");
    assert!(e.to_string().contains("blank.png"), "{e}");
    // Without needing a face, the same photo is fine for CLIP.
    let r = enc
        .encode_file(
            &blank,
            &ReferenceNeeds {
                face: false,
                clip: Some(ClipInput::WholeImage),
            },
        )
        .unwrap();
    assert_eq!(r.clip.unwrap().tokens, 5);
    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, b"not an image").unwrap();
    let e = enc.encode_file(&text, &needs).unwrap_err();
    assert!(matches!(e, ModelError::Image { .. }), "{e:?}");
    assert!(e.to_string().contains("notes.jpg"), "{e}");
    let e = enc
        .encode_file(&dir.path().join("missing.jpg"), &needs)
        .unwrap_err();
    assert!(matches!(e, ModelError::Io { .. }), "{e:?}");
}

#[test]
fn an_image_encoder_folder_is_checked() {
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let e = ImageEncoder::<B>::load(&dir.path().join("nope"), &device)
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("no such image encoder folder"),
        "{e}"
    );
    // A CLIP text model is not an image encoder.
    std::fs::copy(
        fixtures().join("clip/tiny_hf_gelu.config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    std::fs::write(dir.path().join("model.safetensors"), b"").unwrap();
    assert!(ImageEncoder::<B>::load(dir.path(), &device).is_err());
    let enc =
        ImageEncoder::<B>::load(&fixtures().join("reference/image_encoder"), &device).unwrap();
    assert_eq!((enc.hidden_size(), enc.projection_dim()), (16, Some(16)));
    // IResNet is reachable as a plain embedder too (the trainer's path).
    let net =
        IResNet::<B>::load(&fixtures().join("iresnet/iresnet18_w4_mxnet.onnx"), &device).unwrap();
    assert_eq!(net.config().embedding_size, 16);
}
