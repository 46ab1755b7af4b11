//! Parity of the face-api ports with the package itself (`@vladmandic/face-api` 1.7.15 on the
//! tfjs 4.22 CPU backend in Node), on lossless PNGs of the package's sample photographs, with
//! fixtures made by `tools/face-api-reference/make_fixtures.mjs`.
//!
//! Tolerances:
//! - network inputs: both sides compute the same float32 values; the fixture prints 6 decimals,
//!   so values must agree within 1e-6;
//! - raw head outputs: float32 sums in another order (tfjs loops vs burn's kernels) through six
//!   convolutions; within 1e-4 relative to max(1, |value|);
//! - detections: the same faces, box IoU ≥ 0.99 (issue 3), scores within 1e-4.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::Tensor;
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::face_api::{Detection, TinyFaceDetector};
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

fn weights(model: &str) -> TfjsWeights {
    let dir = idforge_core::cache::face_api_dir_if_fetched()
        .expect("run tools/fetch-assets (make test does)");
    TfjsWeights::load(&dir.join(format!("model/{model}-weights_manifest.json"))).unwrap()
}

/// Checks `first16` and `center16` of a fixture tensor against `got` (flattened NHWC).
#[track_caller]
fn check_stats(what: &str, got: &[f32], reference: &Value, tol: impl Fn(f64) -> f64) {
    // 1-D fixtures have no centre window.
    let windows = match reference["center16_offset"].as_u64() {
        Some(offset) => vec![(0, "first16"), (offset as usize, "center16")],
        None => vec![(0, "first16")],
    };
    for (start, key) in windows {
        for (i, want) in floats(&reference[key]).into_iter().enumerate() {
            let g = f64::from(got[start + i]);
            if i == 0 {
                eprintln!(
                    "{what} {key}[0]: {g} vs {want} (diff {:.1e})",
                    (g - want).abs()
                );
            }
            assert!(
                (g - want).abs() <= tol(want),
                "{what} {key}[{i}]: {g} vs {want}"
            );
        }
    }
    let mean = got.iter().map(|&v| f64::from(v)).sum::<f64>() / got.len() as f64;
    let min = got.iter().copied().fold(f32::INFINITY, f32::min);
    let max = got.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for (key, g) in [
        ("mean", mean),
        ("min", f64::from(min)),
        ("max", f64::from(max)),
    ] {
        let want = reference[key].as_f64().unwrap();
        assert!((g - want).abs() <= tol(want), "{what} {key}: {g} vs {want}");
    }
}

/// Every SSD face of the reference results: (image name, pixels, face index, face record).
fn ssd_faces(results: &Value) -> Vec<(String, image::RgbImage, usize, Value)> {
    let mut out = Vec::new();
    for image in results["images"].as_array().unwrap() {
        let name = image["png"].as_str().unwrap().to_string();
        for (f, face) in image["ssd_mobilenetv1"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            out.push((name.clone(), png(&name), f, face.clone()));
        }
    }
    out
}

fn view_of(img: &image::RgbImage) -> RgbView<'_> {
    RgbView {
        width: img.width() as usize,
        height: img.height() as usize,
        data: img.as_raw(),
    }
}

fn rect(v: &Value) -> idforge_models::face_api::PixelRect {
    let u = |k: &str| v[k].as_u64().unwrap() as usize;
    idforge_models::face_api::PixelRect {
        x: u("x"),
        y: u("y"),
        width: u("width"),
        height: u("height"),
    }
}

fn nhwc(t: Tensor<B, 4>) -> Vec<f32> {
    t.permute([0, 2, 3, 1]).into_data().to_vec().unwrap()
}

#[test]
fn tiny_face_detector_input_and_head_match_tfjs() {
    let debug = json("debug_sample1.json");
    let img = png("sample1_640.png");
    let view = RgbView {
        width: img.width() as usize,
        height: img.height() as usize,
        data: img.as_raw(),
    };
    let device = Default::default();
    let net = TinyFaceDetector::<B>::load(&weights("tiny_face_detector_model"), &device).unwrap();
    for size in [416usize, 608] {
        let reference = &debug["tiny_face_detector"][size.to_string()];
        let input = TinyFaceDetector::<B>::input(view, size, &device);
        check_stats(
            &format!("input {size}"),
            &nhwc(input.clone()),
            &reference["input"],
            |_| 1e-6,
        );
        let out = net.forward(input);
        let shape: Vec<usize> = reference["output"]["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            vec![shape[0], shape[3], shape[1], shape[2]],
            out.dims().to_vec()
        );
        check_stats(
            &format!("head {size}"),
            &nhwc(out),
            &reference["output"],
            |w| 1e-4 * w.abs().max(1.0),
        );
    }
}

#[test]
fn tiny_face_detector_finds_the_reference_faces() {
    let results = json("results.json");
    let device = Default::default();
    let net = TinyFaceDetector::<B>::load(&weights("tiny_face_detector_model"), &device).unwrap();
    for image in results["images"].as_array().unwrap() {
        let name = image["png"].as_str().unwrap();
        let img = png(name);
        let view = RgbView {
            width: img.width() as usize,
            height: img.height() as usize,
            data: img.as_raw(),
        };
        for size in [416usize, 608] {
            let want: Vec<Detection> = image["tiny_face_detector"][size.to_string()]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| Detection {
                    score: d["score"].as_f64().unwrap() as f32,
                    x: d["box"]["x"].as_f64().unwrap(),
                    y: d["box"]["y"].as_f64().unwrap(),
                    width: d["box"]["width"].as_f64().unwrap(),
                    height: d["box"]["height"].as_f64().unwrap(),
                })
                .collect();
            let got = net.detect(view, size, 0.5);
            assert_eq!(got.len(), want.len(), "{name} @{size}: {got:?}");
            for (g, w) in got.iter().zip(&want) {
                eprintln!(
                    "{name} @{size}: IoU {:.6}, score diff {:.2e}",
                    g.iou(w),
                    (g.score - w.score).abs()
                );
                assert!(
                    g.iou(w) >= 0.99,
                    "{name} @{size}: IoU {} for {g:?} vs {w:?}",
                    g.iou(w)
                );
                assert!(
                    (g.score - w.score).abs() <= 1e-4,
                    "{name} @{size}: score {} vs {}",
                    g.score,
                    w.score
                );
            }
        }
    }
}

#[test]
fn face_landmark_68_matches_the_package_within_a_pixel() {
    use idforge_models::face_api::FaceLandmark68;
    let results = json("results.json");
    let debug = json("debug_sample1.json");
    let device = Default::default();
    let net = FaceLandmark68::<B>::load(&weights("face_landmark_68_model"), &device).unwrap();
    let mut worst = 0f64;
    for (name, img, f, face) in ssd_faces(&results) {
        let name = name.as_str();
        let view = view_of(&img);
        let crop = rect(&face["landmark_crop"]);
        if name == "sample1_640.png" && f == 0 {
            let data = idforge_models::face_api::preprocess::crop(view, crop);
            let cv = RgbView {
                width: crop.width,
                height: crop.height,
                data: &data,
            };
            let input = FaceLandmark68::<B>::input(cv, &device);
            check_stats(
                "landmark input",
                &nhwc(input),
                &debug["face_landmark_68"]["input"],
                |_| 1e-6,
            );
        }
        let box_xy = (
            face["box"]["x"].as_f64().unwrap(),
            face["box"]["y"].as_f64().unwrap(),
        );
        let got = net.landmarks(view, crop, box_xy);
        let want = face["landmarks_68"].as_array().unwrap();
        assert_eq!(got.len(), 68);
        for (g, w) in got.iter().zip(want) {
            let (wx, wy) = (w[0].as_f64().unwrap(), w[1].as_f64().unwrap());
            let d = ((g.0 - wx).powi(2) + (g.1 - wy).powi(2)).sqrt();
            worst = worst.max(d);
            assert!(d <= 1.0, "{name} face {f}: {g:?} vs ({wx}, {wy})");
        }
    }
    eprintln!("landmarks: largest distance to the reference {worst:.2e} px");
}

#[test]
fn face_recognition_descriptors_match_the_package() {
    use idforge_models::face_api::FaceRecognition;
    let results = json("results.json");
    let debug = json("debug_sample1.json");
    let device = Default::default();
    let net = FaceRecognition::<B>::load(&weights("face_recognition_model"), &device).unwrap();
    let mut worst = 1f64;
    let mut all = Vec::new();
    for (name, img, f, face) in ssd_faces(&results) {
        let name = name.as_str();
        let view = view_of(&img);
        let crop = rect(&face["descriptor_crop"]);
        if name == "sample1_640.png" && f == 0 {
            let data = idforge_models::face_api::preprocess::crop(view, crop);
            let cv = RgbView {
                width: crop.width,
                height: crop.height,
                data: &data,
            };
            check_stats(
                "descriptor input",
                &nhwc(FaceRecognition::<B>::input(cv, &device)),
                &debug["face_recognition"]["input"],
                |_| 1e-6,
            );
        }
        let got = net.descriptor(view, crop);
        let want: Vec<f64> = floats(&face["descriptor"]);
        assert_eq!(got.len(), 128);
        let dot: f64 = got.iter().zip(&want).map(|(&g, w)| f64::from(g) * w).sum();
        let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
        let cos =
            dot / (norm(&mut got.iter().map(|&g| f64::from(g))) * norm(&mut want.iter().copied()));
        worst = worst.min(cos);
        assert!(cos >= 0.9999, "{name} face {f}: cosine {cos}");
        all.push((name.to_string(), want));
    }
    eprintln!(
        "descriptors: lowest cosine to the reference {worst:.8} over {} faces",
        all.len()
    );
}

#[test]
fn ssd_mobilenetv1_input_and_decoded_outputs_match_tfjs() {
    use idforge_models::face_api::SsdMobilenetV1;
    let debug = &json("debug_sample1.json")["ssd_mobilenetv1"];
    let img = png("sample1_640.png");
    let device = Default::default();
    let net = SsdMobilenetV1::<B>::load(&weights("ssd_mobilenetv1_model"), &device).unwrap();
    let input = SsdMobilenetV1::<B>::input(view_of(&img), &device);
    check_stats("ssd input", &nhwc(input.clone()), &debug["input"], |_| 1e-6);
    let raw: Vec<f32> = net.forward(input).into_data().to_vec().unwrap();
    let (boxes, scores) = net.decode(&raw);
    assert_eq!(boxes.len(), 5118);
    let flat: Vec<f32> = boxes.iter().flatten().map(|&v| v as f32).collect();
    // Box coordinates are O(1) sums over 13 + 8 layers of 1024-wide convolutions.
    check_stats("ssd boxes", &flat, &debug["decoded_boxes"], |_| 1e-4);
    check_stats("ssd scores", &scores, &debug["scores"], |_| 1e-4);
    for top in debug["top8"].as_array().unwrap() {
        let a = top["anchor"].as_u64().unwrap() as usize;
        let want = top["score"].as_f64().unwrap();
        assert!(
            (f64::from(scores[a]) - want).abs() <= 1e-4,
            "anchor {a}: {} vs {want}",
            scores[a]
        );
        for (g, w) in boxes[a].iter().zip(floats(&top["box"])) {
            assert!(
                (g - w).abs() <= 1e-4,
                "anchor {a}: {:?} vs {}",
                boxes[a],
                top["box"]
            );
        }
    }
}

#[test]
fn ssd_mobilenetv1_finds_the_reference_faces() {
    use idforge_models::face_api::SsdMobilenetV1;
    let results = json("results.json");
    let device = Default::default();
    let net = SsdMobilenetV1::<B>::load(&weights("ssd_mobilenetv1_model"), &device).unwrap();
    let mut worst = 1f64;
    for image in results["images"].as_array().unwrap() {
        let name = image["png"].as_str().unwrap();
        let img = png(name);
        let want = image["ssd_mobilenetv1"].as_array().unwrap();
        let got = net.detect(view_of(&img), 0.5, 100);
        assert_eq!(got.len(), want.len(), "{name}: {got:?}");
        for (g, w) in got.iter().zip(want) {
            let w = Detection {
                score: w["score"].as_f64().unwrap() as f32,
                x: w["box"]["x"].as_f64().unwrap(),
                y: w["box"]["y"].as_f64().unwrap(),
                width: w["box"]["width"].as_f64().unwrap(),
                height: w["box"]["height"].as_f64().unwrap(),
            };
            worst = worst.min(g.iou(&w));
            assert!(
                g.iou(&w) >= 0.99,
                "{name}: IoU {} for {g:?} vs {w:?}",
                g.iou(&w)
            );
            assert!(
                (g.score - w.score).abs() <= 1e-4,
                "{name}: score {} vs {}",
                g.score,
                w.score
            );
        }
    }
    eprintln!("ssd_mobilenetv1: lowest IoU to the reference {worst:.6}");
}

#[test]
fn crops_and_alignment_follow_the_package_exactly() {
    use idforge_models::face_api::pipeline::{align_dlib, clip_at_image_borders};
    let results = json("results.json");
    for (name, img, f, face) in ssd_faces(&results) {
        let view = view_of(&img);
        let b = &face["box"];
        let boxed = ["x", "y", "width", "height"].map(|k| b[k].as_f64().unwrap());
        let crop = clip_at_image_borders(boxed, view).unwrap();
        assert_eq!(crop, rect(&face["landmark_crop"]), "{name} face {f}");
        let points: Vec<(f64, f64)> = face["landmarks_68"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
            .collect();
        let aligned = align_dlib(&points, (crop.width, crop.height));
        let want = &face["descriptor_rect"];
        let want = ["x", "y", "width", "height"].map(|k| want[k].as_f64().unwrap());
        // The fixture prints 6 decimals of the landmarks; the rect is whole pixels.
        assert_eq!(aligned, want, "{name} face {f}");
        assert_eq!(
            clip_at_image_borders(aligned, view),
            Some(rect(&face["descriptor_crop"])),
            "{name} face {f}"
        );
    }
}

#[test]
fn face_api_chain_matches_the_package_end_to_end() {
    use idforge_models::face_api::{Detector, FaceApi, Stages};
    let results = json("results.json");
    let dir = idforge_core::cache::face_api_dir_if_fetched()
        .unwrap()
        .join("model");
    let device = Default::default();
    let api = FaceApi::<B>::load(&dir, Detector::default(), Stages::Descriptors, &device).unwrap();
    let (mut worst_px, mut worst_cos) = (0f64, 1f64);
    for image in results["images"].as_array().unwrap() {
        let name = image["png"].as_str().unwrap();
        let img = png(name);
        let want = image["ssd_mobilenetv1"].as_array().unwrap();
        let got = api.analyze(view_of(&img), Detector::default());
        assert_eq!(got.len(), want.len(), "{name}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.aligned_crop, Some(rect(&w["descriptor_crop"])), "{name}");
            for (p, q) in g
                .landmarks
                .as_ref()
                .unwrap()
                .iter()
                .zip(w["landmarks_68"].as_array().unwrap())
            {
                let d = ((p.0 - q[0].as_f64().unwrap()).powi(2)
                    + (p.1 - q[1].as_f64().unwrap()).powi(2))
                .sqrt();
                worst_px = worst_px.max(d);
                assert!(d <= 1.0, "{name}: landmark {p:?} vs {q}");
            }
            let cos = cosine(g.descriptor.as_ref().unwrap(), &floats(&w["descriptor"]));
            worst_cos = worst_cos.min(cos);
            assert!(cos >= 0.9999, "{name}: descriptor cosine {cos}");
        }
    }
    eprintln!("chain: landmarks within {worst_px:.2e} px, descriptor cosine ≥ {worst_cos:.8}");
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, y)| f64::from(x) * y).sum();
    let na = a.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let nb = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Through a real JPEG decoder: the package's `demo/sample1.jpg` (1920×1280) decoded by
/// idforge's normal image path against face-api on jpeg-js's pixels
/// (`tools/face-api-reference/jpeg_path.mjs`). Decoders differ by a few levels per pixel
/// (IDCT rounding, chroma upsampling), so the bounds are looser than on lossless input:
/// box IoU ≥ 0.98, descriptor cosine ≥ 0.999 (same-person descriptors of different photos sit
/// near 0.95).
///
/// Landmarks are checked twice. On the reference's own crop only the decoder differs, and the
/// issue's 1 px bar holds (measured 0.37 px). End to end, the boxes move by about a pixel
/// (IoU 0.993), which moves the floored crop the landmark net sees by a pixel; that net answers
/// a one-pixel crop shift with about 1.4% of the face width (measured 2.8 px on faces
/// 177–203 px wide), so the end-to-end bound is 2% of the box width.
#[test]
fn face_api_chain_through_the_jpeg_decoder_stays_close_to_the_package() {
    use idforge_models::face_api::pipeline::clip_at_image_borders;
    use idforge_models::face_api::{Detector, FaceApi, FaceLandmark68, Stages};
    let reference = json("jpeg_path.json");
    let assets = idforge_core::cache::face_api_dir_if_fetched().unwrap();
    let bytes = std::fs::read(assets.join(reference["source"].as_str().unwrap())).unwrap();
    let decoded =
        idforge_core::image_io::decode(&bytes, idforge_core::image_io::DEFAULT_MAX_PIXELS).unwrap();
    let img = decoded.image.to_rgb8();
    assert_eq!(
        (u64::from(img.width()), u64::from(img.height())),
        (
            reference["width"].as_u64().unwrap(),
            reference["height"].as_u64().unwrap()
        ),
        "the reference decoder does not apply EXIF orientation; this photo must not need it"
    );
    let device = Default::default();
    let api = FaceApi::<B>::load(
        &assets.join("model"),
        Detector::default(),
        Stages::Descriptors,
        &device,
    )
    .unwrap();
    let landmark_net =
        FaceLandmark68::<B>::load(&weights("face_landmark_68_model"), &device).unwrap();
    let got = api.analyze(view_of(&img), Detector::default());
    let want = reference["faces"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    let dist = |p: &(f64, f64), q: &Value| {
        ((p.0 - q[0].as_f64().unwrap()).powi(2) + (p.1 - q[1].as_f64().unwrap()).powi(2)).sqrt()
    };
    let (mut iou, mut same_crop_px, mut px, mut rel, mut cos) = (1f64, 0f64, 0f64, 0f64, 1f64);
    for (g, w) in got.iter().zip(want) {
        let b = ["x", "y", "width", "height"].map(|k| w["box"][k].as_f64().unwrap());
        let wd = Detection {
            score: w["score"].as_f64().unwrap() as f32,
            x: b[0],
            y: b[1],
            width: b[2],
            height: b[3],
        };
        iou = iou.min(g.detection.iou(&wd));
        let ref_points = w["landmarks_68"].as_array().unwrap();
        let crop = clip_at_image_borders(b, view_of(&img)).unwrap();
        for (p, q) in landmark_net
            .landmarks(view_of(&img), crop, (b[0], b[1]))
            .iter()
            .zip(ref_points)
        {
            same_crop_px = same_crop_px.max(dist(p, q));
        }
        for (p, q) in g.landmarks.as_ref().unwrap().iter().zip(ref_points) {
            px = px.max(dist(p, q));
            rel = rel.max(dist(p, q) / b[2]);
        }
        cos = cos.min(cosine(
            g.descriptor.as_ref().unwrap(),
            &floats(&w["descriptor"]),
        ));
    }
    eprintln!(
        "jpeg path: IoU ≥ {iou:.5}; landmarks within {same_crop_px:.3} px on the reference \
         crop, {px:.3} px ({:.2}% of the face width) end to end; descriptor cosine ≥ {cos:.6}",
        rel * 100.0
    );
    assert!(iou >= 0.98, "IoU {iou}");
    assert!(
        same_crop_px <= 1.0,
        "landmarks on the reference crop: {same_crop_px} px"
    );
    assert!(
        rel <= 0.02,
        "landmarks {px} px end to end, {rel} of the face width"
    );
    assert!(cos >= 0.999, "descriptor cosine {cos}");
}
