//! Parity of the ports of face-api's attribute networks (`face_expression_model`,
//! `age_gender_model`) and of the crop the chain cuts for them with the package itself
//! (`@vladmandic/face-api` 1.7.15 on the tfjs 4.22 CPU backend in Node), with fixtures made by
//! `tools/face-api-reference/make_attribute_fixtures.mjs` on the lossless PNGs of
//! `make_fixtures.mjs`.
//!
//! Tolerances, as in `face_api_parity.rs` for the same kinds of values:
//! - network inputs: the same float32 values on both sides, printed to 6 decimals: 1e-6;
//! - backbone features and raw head outputs (expression logits, age in years, gender logits):
//!   float32 sums in another order through 16–20 convolutions; within 1e-4 relative to
//!   max(1, |value|) (so an age of 30 years within 0.003);
//! - probabilities (softmax of those logits): within 1e-4;
//! - the aligned rectangle and the integer crop: exactly (the fixture keeps the landmarks and
//!   the rectangle as full doubles, and the port repeats face-api's double arithmetic).

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::Tensor;
use idforge_models::face_api::pipeline::{aligned_rect, attribute_crop};
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::face_api::{
    AgeGenderNet, FaceAttributeNets, FaceExpressionNet, Gender, PixelRect,
};
use idforge_models::tfjs::TfjsWeights;
use serde_json::Value;

type B = Flex;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/face-api")
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

fn png(name: &str) -> image::RgbImage {
    image::open(fixtures().join(name)).unwrap().to_rgb8()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn model_dir() -> PathBuf {
    idforge_core::cache::face_api_dir_if_fetched()
        .expect("run tools/fetch-assets (make test does)")
        .join("model")
}

fn weights(model: &str) -> TfjsWeights {
    TfjsWeights::load(&model_dir().join(format!("{model}-weights_manifest.json"))).unwrap()
}

fn view_of(img: &image::RgbImage) -> RgbView<'_> {
    RgbView {
        width: img.width() as usize,
        height: img.height() as usize,
        data: img.as_raw(),
    }
}

fn rect(v: &Value) -> PixelRect {
    let u = |k: &str| v[k].as_u64().unwrap() as usize;
    PixelRect {
        x: u("x"),
        y: u("y"),
        width: u("width"),
        height: u("height"),
    }
}

/// A double the fixture writes as a decimal string: `str::parse` rounds correctly, where
/// serde_json's default number parser can miss the last bit.
fn exact(v: &Value) -> f64 {
    v.as_str().unwrap().parse().unwrap()
}

fn points(face: &Value) -> Vec<(f64, f64)> {
    face["landmarks_68"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (exact(&p[0]), exact(&p[1])))
        .collect()
}

fn nhwc(t: Tensor<B, 4>) -> Vec<f32> {
    t.permute([0, 2, 3, 1]).into_data().to_vec().unwrap()
}

fn vec2(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

/// Relative tolerance of raw outputs: 1e-4 of max(1, |value|).
fn raw_tol(want: f64) -> f64 {
    1e-4 * want.abs().max(1.0)
}

/// The largest |got − want| over `got`, after checking each against `tol(want)`.
#[track_caller]
fn check_values(what: &str, got: &[f32], want: &[f64], tol: impl Fn(f64) -> f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (f64::from(g) - w).abs();
        worst = worst.max(d);
        assert!(d <= tol(w), "{what}[{i}]: {g} vs {w}");
    }
    worst
}

/// Checks `first16`, `center16`, mean, min and max of a fixture tensor against `got`
/// (flattened NHWC); returns the largest difference.
#[track_caller]
fn check_stats(what: &str, got: &[f32], reference: &Value, tol: impl Fn(f64) -> f64) -> f64 {
    let shape: usize = reference["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .product();
    assert_eq!(got.len(), shape, "{what}: size");
    let mut worst = check_values(
        &format!("{what} first16"),
        &got[..16],
        &floats(&reference["first16"]),
        &tol,
    );
    let offset = reference["center16_offset"].as_u64().unwrap() as usize;
    worst = worst.max(check_values(
        &format!("{what} center16"),
        &got[offset..offset + 16],
        &floats(&reference["center16"]),
        &tol,
    ));
    let mean = got.iter().map(|&v| f64::from(v)).sum::<f64>() / got.len() as f64;
    let min = got.iter().copied().fold(f32::INFINITY, f32::min);
    let max = got.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for (key, g) in [
        ("mean", mean),
        ("min", f64::from(min)),
        ("max", f64::from(max)),
    ] {
        let want = reference[key].as_f64().unwrap();
        worst = worst.max((g - want).abs());
        assert!((g - want).abs() <= tol(want), "{what} {key}: {g} vs {want}");
    }
    worst
}

/// The fixture's fixed 112×112 input, from the formula `make_attribute_fixtures.mjs` uses.
fn synthetic_pixels() -> Vec<u8> {
    let mut px = Vec::with_capacity(112 * 112 * 3);
    for y in 0..112usize {
        for x in 0..112usize {
            for c in 0..3usize {
                px.push(((x * x + 3 * y * y + 7 * x * y + 50 * c) % 256) as u8);
            }
        }
    }
    px
}

/// Both nets on one face input against a fixture record (`synthetic` or a face); returns the
/// largest differences (input, features, logits/raw outputs, probabilities).
fn check_nets(
    what: &str,
    expression: &FaceExpressionNet<B>,
    age_gender: &AgeGenderNet<B>,
    input: Tensor<B, 4>,
    want: &Value,
) -> [f64; 4] {
    let d_input = check_stats(
        &format!("{what} input"),
        &nhwc(input.clone()),
        &want["input"],
        |_| 1e-6,
    );
    let d_feat = check_stats(
        &format!("{what} expression features"),
        &vec2(expression.features(input.clone())),
        &want["expression_features"],
        raw_tol,
    )
    .max(check_stats(
        &format!("{what} xception features"),
        &nhwc(age_gender.features(input.clone())),
        &want["xception_features"],
        raw_tol,
    ));
    let (age_raw, gender_logits) = age_gender.forward_raw(input.clone());
    let age_raw: Vec<f32> = age_raw.into_data().to_vec().unwrap();
    let d_raw = check_values(
        &format!("{what} expression logits"),
        &vec2(expression.logits(input.clone())),
        &floats(&want["expression_logits"]),
        raw_tol,
    )
    .max(check_values(
        &format!("{what} age"),
        &age_raw,
        &[want["age_raw"].as_f64().unwrap()],
        raw_tol,
    ))
    .max(check_values(
        &format!("{what} gender logits"),
        &vec2(gender_logits),
        &floats(&want["gender_logits"]),
        raw_tol,
    ));
    let (_, gender) = age_gender.forward(input.clone());
    let d_prob = check_values(
        &format!("{what} expression probabilities"),
        &vec2(expression.forward(input)),
        &floats(&want["expression_probabilities"]),
        |_| 1e-4,
    )
    .max(check_values(
        &format!("{what} gender probabilities"),
        &vec2(gender),
        &floats(&want["gender_probabilities"]),
        |_| 1e-4,
    ));
    [d_input, d_feat, d_raw, d_prob]
}

fn fmt_worst(w: [f64; 4]) -> String {
    format!(
        "input {:.1e}, features {:.1e}, raw outputs {:.1e}, probabilities {:.1e}",
        w[0], w[1], w[2], w[3]
    )
}

#[test]
fn attribute_nets_alone_match_tfjs_on_a_fixed_input() {
    let fixture = json("attributes.json");
    let want = &fixture["synthetic"];
    let device = Default::default();
    let expression =
        FaceExpressionNet::<B>::load(&weights("face_expression_model"), &device).unwrap();
    let age_gender = AgeGenderNet::<B>::load(&weights("age_gender_model"), &device).unwrap();
    let pixels = synthetic_pixels();
    let view = RgbView {
        width: 112,
        height: 112,
        data: &pixels,
    };
    let input = FaceExpressionNet::<B>::input(view, &device);
    let worst = check_nets("synthetic", &expression, &age_gender, input, want);
    eprintln!("attribute nets on the fixed input: {}", fmt_worst(worst));
}

#[test]
fn attribute_crop_follows_the_package_exactly() {
    let fixture = json("attributes.json");
    for image in fixture["images"].as_array().unwrap() {
        let name = image["png"].as_str().unwrap();
        let img = png(name);
        let view = view_of(&img);
        for (f, face) in image["faces"].as_array().unwrap().iter().enumerate() {
            let points = points(face);
            let want = ["x", "y", "width", "height"].map(|k| exact(&face["aligned_rect"][k]));
            assert_eq!(
                aligned_rect(&points, (view.width, view.height)),
                want,
                "{name} face {f}"
            );
            assert_eq!(
                attribute_crop(&points, view),
                Some(rect(&face["aligned_crop"])),
                "{name} face {f}"
            );
        }
    }
}

#[test]
fn face_attributes_match_the_package_on_its_crops() {
    let fixture = json("attributes.json");
    let labels: Vec<&str> = fixture["expression_labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(labels, idforge_models::face_api::EXPRESSION_LABELS);
    let device = Default::default();
    let nets = FaceAttributeNets::<B>::load(&model_dir(), &device).unwrap();
    let (mut worst_nets, mut worst_expr, mut worst_age, mut worst_gender) =
        ([0f64; 4], 0f64, 0f64, 0f64);
    let mut faces = 0;
    for image in fixture["images"].as_array().unwrap() {
        let name = image["png"].as_str().unwrap();
        let img = png(name);
        let view = view_of(&img);
        let want_faces = image["faces"].as_array().unwrap();
        let all_points: Vec<Vec<(f64, f64)>> = want_faces.iter().map(points).collect();
        let refs: Vec<&[(f64, f64)]> = all_points.iter().map(Vec::as_slice).collect();
        // All faces of the image as one batch, as the pipeline runs them.
        let got = nets.attributes_batch(view, &refs);
        assert_eq!(got.len(), want_faces.len());
        for (f, (g, w)) in got.iter().zip(want_faces).enumerate() {
            let what = format!("{name} face {f}");
            let g = g.as_ref().unwrap_or_else(|| panic!("{what}: no crop"));
            assert_eq!(g.crop, rect(&w["aligned_crop"]), "{what}");
            // Each net alone on this face's crop, stage by stage.
            let input = FaceExpressionNet::<B>::input_at(view, g.crop, &device);
            let d = check_nets(
                &what,
                nets.expression_net(),
                nets.age_gender_net(),
                input,
                w,
            );
            for (a, b) in worst_nets.iter_mut().zip(d) {
                *a = a.max(b);
            }
            worst_expr = worst_expr.max(check_values(
                &format!("{what} expressions"),
                &g.expressions,
                &floats(&w["expressions"]),
                |_| 1e-4,
            ));
            let want_age = w["age"].as_f64().unwrap();
            worst_age = worst_age.max(check_values(
                &format!("{what} age"),
                &[g.age],
                &[want_age],
                raw_tol,
            ));
            let want_gender = match w["gender"].as_str().unwrap() {
                "male" => Gender::Male,
                "female" => Gender::Female,
                other => panic!("{what}: gender {other}"),
            };
            assert_eq!(g.gender, want_gender, "{what}");
            assert_eq!(g.gender.as_str(), w["gender"].as_str().unwrap());
            worst_gender = worst_gender.max(check_values(
                &format!("{what} gender probability"),
                &[g.gender_probability],
                &[w["genderProbability"].as_f64().unwrap()],
                |_| 1e-4,
            ));
            // The single-face path is the batched one.
            assert_eq!(nets.attributes(view, &all_points[f]).as_ref(), Some(g));
            faces += 1;
        }
    }
    assert_eq!(faces, 11, "the fixture's faces");
    eprintln!(
        "attributes over {faces} faces: {}; expressions {worst_expr:.1e}, age {worst_age:.1e} \
         years, gender probability {worst_gender:.1e}",
        fmt_worst(worst_nets)
    );
}

/// From the pixels: the port's own detections and landmarks (within 1 px of the package's, see
/// `face_api_parity.rs`), then the attributes. The landmarks here are not the fixture's, so
/// this checks that the crop is stable under the landmark differences, then holds the results
/// to the same tolerances.
#[test]
fn face_attribute_chain_matches_the_package_end_to_end() {
    use idforge_models::face_api::{Detector, FaceApi, Stages};
    let fixture = json("attributes.json");
    let device = Default::default();
    let api = FaceApi::<B>::load(
        &model_dir(),
        Detector::default(),
        Stages::Landmarks,
        &device,
    )
    .unwrap();
    let nets = FaceAttributeNets::<B>::load(&model_dir(), &device).unwrap();
    let (mut worst_expr, mut worst_age, mut worst_gender) = (0f64, 0f64, 0f64);
    for image in fixture["images"].as_array().unwrap() {
        let name = image["png"].as_str().unwrap();
        let img = png(name);
        let view = view_of(&img);
        let faces = api.analyze(view, Detector::default());
        let want = image["faces"].as_array().unwrap();
        assert_eq!(faces.len(), want.len(), "{name}");
        let got = nets.attributes_of_faces(view, &faces);
        for (f, (g, w)) in got.iter().zip(want).enumerate() {
            let what = format!("{name} face {f}");
            let g = g.as_ref().unwrap();
            assert_eq!(g.crop, rect(&w["aligned_crop"]), "{what}");
            worst_expr = worst_expr.max(check_values(
                &format!("{what} expressions"),
                &g.expressions,
                &floats(&w["expressions"]),
                |_| 1e-4,
            ));
            worst_age = worst_age.max(check_values(
                &format!("{what} age"),
                &[g.age],
                &[w["age"].as_f64().unwrap()],
                raw_tol,
            ));
            assert_eq!(g.gender.as_str(), w["gender"].as_str().unwrap(), "{what}");
            worst_gender = worst_gender.max(check_values(
                &format!("{what} gender probability"),
                &[g.gender_probability],
                &[w["genderProbability"].as_f64().unwrap()],
                |_| 1e-4,
            ));
        }
    }
    eprintln!(
        "attribute chain: expressions {worst_expr:.1e}, age {worst_age:.1e} years, gender \
         probability {worst_gender:.1e}"
    );
}
