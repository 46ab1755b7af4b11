//! The curate stage end to end on the face-api package's sample photographs (fetched into the
//! asset cache by `make assets`), with the real networks: threshold boundaries, an impostor in
//! an identity group, identity discovery on group photos.
//!
//! The test images are derived from the samples (crops, rescales, mirror images) so that the
//! ground truth is known by construction: a mirrored face is the same person, two faces of one
//! photograph are two people.

use idforge_core::limits::{Amount, Pixels, Side};
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use idforge_core::resample::{Filter, Plane8, resize};
use idforge_core::run::{RunDir, ShardSelection, run_stage};
use idforge_core::schema::faces::{FaceRow, FacesTable, Reason, Verdict};
use idforge_core::schema::{ImageRow, ImageStatus, ImagesTable};
use idforge_curate::{CurateSettings, CurateStage};
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::face_api::{Detector, FaceApi, Stages};

fn face_api_dir() -> PathBuf {
    idforge_core::cache::face_api_dir_if_fetched()
        .expect("the face-api package is not in the asset cache: run `make assets` first")
}

fn sample(n: usize) -> Plane8 {
    let path = face_api_dir().join("demo").join(format!("sample{n}.jpg"));
    let img = image::open(&path).unwrap().into_rgb8();
    Plane8 {
        width: img.width() as usize,
        height: img.height() as usize,
        channels: 3,
        data: img.into_raw(),
    }
}

fn view(p: &Plane8) -> RgbView<'_> {
    RgbView {
        width: p.width,
        height: p.height,
        data: &p.data,
    }
}

fn scaled(p: &Plane8, factor: f64) -> Plane8 {
    let w = (p.width as f64 * factor).round() as usize;
    let h = (p.height as f64 * factor).round() as usize;
    resize(p, w, h, Filter::Lanczos)
}

fn to_size(p: &Plane8, w: usize, h: usize) -> Plane8 {
    resize(p, w, h, Filter::Lanczos)
}

fn mirrored(p: &Plane8) -> Plane8 {
    let mut data = Vec::with_capacity(p.data.len());
    for y in 0..p.height {
        for x in (0..p.width).rev() {
            let i = (y * p.width + x) * 3;
            data.extend_from_slice(&p.data[i..i + 3]);
        }
    }
    Plane8 { data, ..p.clone() }
}

fn region(p: &Plane8, x0: usize, y0: usize, w: usize, h: usize) -> Plane8 {
    let mut data = Vec::with_capacity(w * h * 3);
    for y in y0..y0 + h {
        data.extend_from_slice(&p.data[(y * p.width + x0) * 3..(y * p.width + x0 + w) * 3]);
    }
    Plane8 {
        width: w,
        height: h,
        channels: 3,
        data,
    }
}

fn brighter(p: &Plane8, add: u8) -> Plane8 {
    Plane8 {
        data: p.data.iter().map(|v| v.saturating_add(add)).collect(),
        ..p.clone()
    }
}

/// Writes the images as PNG and `<run>/ingest/images.parquet` listing them, as ingest would.
fn ingest(run: &Path, images: &[(&str, Option<&str>, &Plane8)]) {
    let dir = run.join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let mut rows = Vec::new();
    for (i, (name, identity, p)) in images.iter().enumerate() {
        let path = dir.join(format!("{name}.png"));
        image::save_buffer(
            &path,
            &p.data,
            p.width as u32,
            p.height as u32,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let mut row = ImageRow::pending(
            i as u64,
            path.display().to_string(),
            identity.map(str::to_string),
        );
        row.status = ImageStatus::Ok;
        row.image_id = Some(idforge_core::hash::sha256_hex(&bytes));
        row.width = Some(p.width as u32);
        row.height = Some(p.height as u32);
        row.format = Some("png".into());
        row.store_path = Some(path.display().to_string());
        rows.push(row);
    }
    ImagesTable {
        extra_columns: vec![],
        rows,
    }
    .write(&run.join("ingest").join("images.parquet"))
    .unwrap();
}

fn curate(run: &Path, settings: CurateSettings) -> FacesTable {
    let stage = CurateStage::<Flex>::new(
        settings,
        run,
        &face_api_dir().join("model"),
        &Default::default(),
    )
    .unwrap();
    run_stage(&stage, &RunDir::at(run), ShardSelection::All(1)).unwrap();
    FacesTable::read(&run.join("curate").join("faces.parquet")).unwrap()
}

fn rows_of(table: &FacesTable, row_id: u64) -> Vec<&FaceRow> {
    table.rows.iter().filter(|r| r.row_id == row_id).collect()
}

/// The face whose box centre is nearest `(x, y)`.
fn face_near(rows: &[&FaceRow], x: f32, y: f32) -> FaceRow {
    let d = |r: &FaceRow| {
        let b = r.bbox.unwrap();
        ((b[0] + b[2]) / 2.0 - x).powi(2) + ((b[1] + b[3]) / 2.0 - y).powi(2)
    };
    (*rows
        .iter()
        .filter(|r| r.bbox.is_some())
        .min_by(|a, b| d(a).total_cmp(&d(b)))
        .expect("a face"))
    .clone()
}

fn detect_min_side(p: &Plane8, x: f32, y: f32) -> f32 {
    let api = FaceApi::<Flex>::load(
        &face_api_dir().join("model"),
        Detector::default(),
        Stages::Detect,
        &Default::default(),
    )
    .unwrap();
    let faces = api.detect(view(p), Detector::default());
    let f = faces
        .iter()
        .min_by(|a, b| {
            let d = |f: &&idforge_models::face_api::Face| {
                let d = &f.detection;
                ((d.x + d.width / 2.0) as f32 - x).powi(2)
                    + ((d.y + d.height / 2.0) as f32 - y).powi(2)
            };
            d(a).total_cmp(&d(b))
        })
        .unwrap();
    f.detection.width.min(f.detection.height) as f32
}

/// A 511-px image is dropped and a 512-px one kept; a face just under the size limit is
/// rejected and one just over it passes.
#[test]
fn threshold_boundaries_on_resolution_and_face_size() {
    let tmp = tempfile::tempdir().unwrap();
    let s1 = sample(1); // 1920 × 1280; its first face is centred near (502, 475)
    let small = to_size(&s1, 767, 511);
    let ok = to_size(&s1, 768, 512);
    let big = scaled(&s1, 1.04);
    // The limit goes between the face's measured size in the two versions.
    let (under, over) = (
        detect_min_side(&s1, 502.0, 475.0),
        detect_min_side(&big, 522.0, 494.0),
    );
    assert!(over - under > 2.0, "{under} {over}");
    let limit = (under + over) / 2.0;
    ingest(
        tmp.path(),
        &[
            ("r511", Some("a"), &small),
            ("r512", Some("b"), &ok),
            ("under", Some("c"), &s1),
            ("over", Some("d"), &big),
        ],
    );
    let mut settings = CurateSettings::default();
    settings.identity.min_images = Amount::lit(1);
    settings.faces.min_face_px = Pixels::new(limit as f64).unwrap();
    let table = curate(tmp.path(), settings);

    let r511 = rows_of(&table, 0);
    assert_eq!(r511.len(), 1);
    assert_eq!(r511[0].reason, Some(Reason::LowResolution));
    assert!(r511[0].detail.as_deref().unwrap().contains("511 < 512"));
    // At 512 px the image passes filter 1: its faces are detected (and too small for the limit).
    let r512 = rows_of(&table, 1);
    assert!(r512.iter().all(|r| r.face_index.is_some()), "{r512:?}");

    let face_under = face_near(&rows_of(&table, 2), 502.0, 475.0);
    assert_eq!(
        face_under.reason,
        Some(Reason::FaceTooSmall),
        "{face_under:?}"
    );
    let face_over = face_near(&rows_of(&table, 3), 522.0, 494.0);
    assert_eq!(face_over.verdict, Verdict::Kept, "{face_over:?}");
    assert!(face_over.crop_path.is_some() && face_over.embedding.is_some());
    // Every image of the input is accounted for.
    let mut seen: Vec<u64> = table.rows.iter().map(|r| r.row_id).collect();
    seen.dedup();
    assert_eq!(seen, vec![0, 1, 2, 3]);
}

/// One person's crops (rescaled, mirrored, brightened) plus another person's face, all under
/// one label: the impostor is rejected by verification, the person's crops are not.
#[test]
fn an_impostor_in_an_identity_group_is_rejected_by_verification() {
    let tmp = tempfile::tempdir().unwrap();
    let s1 = sample(1);
    let s6 = sample(6);
    // Sample 1's first face is near (502, 475); sample 6's third near (1635, 368).
    let a = region(&s1, 150, 150, 720, 720);
    let crops = [
        scaled(&a, 1.6),
        mirrored(&scaled(&region(&s1, 200, 120, 700, 700), 1.7)),
        brighter(&scaled(&region(&s1, 120, 180, 760, 760), 1.5), 25),
        mirrored(&brighter(&scaled(&a, 1.8), 12)),
    ];
    let impostor = scaled(&region(&s6, 1280, 60, 700, 700), 1.6);
    let mut images: Vec<(&str, Option<&str>, &Plane8)> = vec![
        ("a1", Some("alice"), &crops[0]),
        ("a2", Some("alice"), &crops[1]),
        ("a3", Some("alice"), &crops[2]),
        ("a4", Some("alice"), &crops[3]),
    ];
    images.push(("impostor", Some("alice"), &impostor));
    ingest(tmp.path(), &images);
    let table = curate(tmp.path(), CurateSettings::default());
    for r in &table.rows {
        eprintln!(
            "{} #{:?} {:?} {:?} id_score {:?} z {:?} {:?}",
            r.row_id, r.face_index, r.verdict, r.reason, r.id_score, r.id_z, r.detail
        );
    }
    let main = |row: u64| {
        let rows = rows_of(&table, row);
        (*rows
            .iter()
            .filter(|r| r.embedding.is_some())
            .max_by(|a, b| {
                let area = |r: &&&FaceRow| {
                    let b = r.bbox.unwrap();
                    (b[2] - b[0]) * (b[3] - b[1])
                };
                area(a).total_cmp(&area(b))
            })
            .expect("the crop's face is a candidate"))
        .clone()
    };
    let imp = main(4);
    assert_eq!(imp.verdict, Verdict::Rejected);
    assert_eq!(imp.reason, Some(Reason::IdOutlier), "{imp:?}");
    assert!(imp.detail.as_deref().unwrap().contains("median"));
    for row in 0..4 {
        let f = main(row);
        assert!(
            !matches!(
                f.reason,
                Some(Reason::IdOutlier | Reason::BelowIdFloor | Reason::OtherFaceInImage)
            ),
            "image {row}: {f:?}"
        );
        assert!(f.id_score.unwrap() > imp.id_score.unwrap());
    }
    // Filter 5, after verification: the brightened re-crop of the first crop and the
    // brightened mirror of the second are the same photographs.
    let (a1, a2, a3, a4) = (main(0), main(1), main(2), main(3));
    assert_eq!((a1.verdict, a2.verdict), (Verdict::Kept, Verdict::Kept));
    assert_eq!(a3.reason, Some(Reason::Duplicate), "{a3:?}");
    assert_eq!(a3.duplicate_of, Some(a1.key()));
    assert_eq!(a4.duplicate_of, Some(a2.key()));
    // The report names the identity and the impostor's reason.
    let html = std::fs::read_to_string(tmp.path().join("curate").join("report.html")).unwrap();
    assert!(html.contains("alice") && html.contains("id_outlier"));
}

/// Unlabeled group photos and their mirror images: discovery puts each person's two faces in
/// one pseudo-identity and never two people together.
#[test]
fn discovery_separates_the_people_of_the_group_photos() {
    let tmp = tempfile::tempdir().unwrap();
    let originals = [sample(1), sample(4), sample(6)];
    let mirrors: Vec<Plane8> = originals.iter().map(mirrored).collect();
    let names = ["o1", "o4", "o6", "m1", "m4", "m6"];
    let all: Vec<&Plane8> = originals.iter().chain(&mirrors).collect();
    let images: Vec<(&str, Option<&str>, &Plane8)> = names
        .iter()
        .zip(&all)
        .map(|(n, p)| (*n, None, *p))
        .collect();
    ingest(tmp.path(), &images);
    let mut settings = CurateSettings::default();
    settings.faces.min_face_px = Pixels::lit(100.0); // the group photos' faces are about 180 px wide
    let table = curate(tmp.path(), settings);
    // A person is (photo, face centre in the original's coordinates).
    let person = |r: &FaceRow| -> (u64, i32) {
        let b = r.bbox.unwrap();
        let (photo, width) = (r.row_id % 3, all[r.row_id as usize].width as f32);
        let cx = (b[0] + b[2]) / 2.0;
        let cx = if r.row_id >= 3 { width - cx } else { cx };
        (photo, (cx / 100.0).round() as i32)
    };
    let grouped: Vec<&FaceRow> = table
        .rows
        .iter()
        .filter(|r| r.group.is_some() && r.embedding.is_some())
        .collect();
    assert!(grouped.len() >= 20, "{} faces grouped", grouped.len());
    let mut by_group: std::collections::BTreeMap<&str, Vec<(u64, i32)>> = Default::default();
    for r in &grouped {
        by_group
            .entry(r.group.as_deref().unwrap())
            .or_default()
            .push(person(r));
    }
    for (g, people) in &by_group {
        let first = people[0];
        assert!(
            people
                .iter()
                .all(|p| p.0 == first.0 && (p.1 - first.1).abs() <= 1),
            "{g} mixes people: {people:?}"
        );
    }
    let pairs = by_group.values().filter(|p| p.len() == 2).count();
    assert!(
        pairs >= 10,
        "only {pairs} people found in both copies: {by_group:?}"
    );
    // With two images each, the pairs pass verification and are kept.
    let kept = table
        .rows
        .iter()
        .filter(|r| r.verdict == Verdict::Kept)
        .count();
    assert_eq!(kept, 2 * pairs, "{:?}", table.outcome_counts());
}

/// The ArcFace path of the stage (68 landmarks → 5 points → `norm_crop` → IResNet ONNX) gives
/// the embeddings ONNX Runtime gives on insightface's alignment of the same faces
/// (`tools/iresnet-reference/`, committed in the models crate's fixtures): cosine ≥ 0.9999.
#[test]
fn arcface_embeddings_match_onnx_runtime_through_the_stage() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures");
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("iresnet/iresnet.json")).unwrap(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let img = image::open(fixtures.join("face-api/sample1_640.png"))
        .unwrap()
        .into_rgb8();
    let plane = Plane8 {
        width: img.width() as usize,
        height: img.height() as usize,
        channels: 3,
        data: img.into_raw(),
    };
    ingest(tmp.path(), &[("s1", Some("group"), &plane)]);
    let mut settings = CurateSettings::default();
    settings.resolution.min_short_side = Side::lit(400); // the fixture is 640 × 427
    settings.faces.min_face_px = Pixels::lit(30.0);
    settings.identity.min_images = Amount::lit(1);
    settings.embedder.kind = idforge_curate::settings::EmbedderKind::Arcface;
    settings.embedder.arcface_onnx = Some(fixtures.join("iresnet/iresnet50_w4.onnx"));
    let table = curate(tmp.path(), settings);
    assert_eq!(table.embedder, "arcface:iresnet50_w4.onnx");
    assert_eq!(table.embedding_dim, 32);
    let faces: Vec<&serde_json::Value> = reference["faces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["image"] == "sample1_640.png")
        .collect();
    assert_eq!(faces.len(), 3);
    for f in faces {
        let want: Vec<f32> = f["embeddings"]["iresnet50_w4.onnx"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let want = idforge_curate::verify::l2_normalized(&want);
        // The face whose left-eye centre (the first of the five points) is nearest.
        let eye = &f["landmarks5"][0];
        let (ex, ey) = (
            eye[0].as_f64().unwrap() as f32,
            eye[1].as_f64().unwrap() as f32,
        );
        let row = table
            .rows
            .iter()
            .filter(|r| r.landmarks.is_some())
            .min_by(|a, b| {
                let d = |r: &&FaceRow| {
                    let l = r.landmarks.as_ref().unwrap();
                    let (x, y) = (
                        l[36 * 2..42 * 2].iter().step_by(2).sum::<f32>() / 6.0,
                        l[36 * 2 + 1..42 * 2].iter().step_by(2).sum::<f32>() / 6.0,
                    );
                    (x - ex).powi(2) + (y - ey).powi(2)
                };
                d(a).total_cmp(&d(b))
            })
            .unwrap();
        let cos = idforge_curate::verify::cosine(row.embedding.as_ref().unwrap(), &want);
        assert!(cos >= 0.9999, "face {}: cosine {cos}", f["face"]);
    }
}
