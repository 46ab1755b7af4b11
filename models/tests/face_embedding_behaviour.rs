//! How the face descriptor behaves on real faces (the package's demo photographs at full size,
//! 1920 px wide, faces about 180 px, through the normal JPEG decoder): the same face under a
//! horizontal flip, small shifts of its crop, a rescaled photo and JPEG re-encoding stays
//! closer to itself than to any other person in the photo.
//!
//! Faces in one photo are different people; across photos the package's samples may show the
//! same people, so "other person" means another face of the same photo. Distances are
//! Euclidean on the descriptors, face-api's own metric.
//!
//! Two checks. Every variation is nearer to its own face's original than to any other person's
//! (identification), for all 11 faces. And every pair of variations of a face is nearer than any
//! variation of another person, for the faces the network itself tells apart from everyone in
//! the photo, i.e. whose originals are farther than face-api's match threshold (0.6,
//! `FaceMatcher`) from every other face. Two people in `sample4.jpg` are 0.48 apart, a match by
//! face-api's own rule, and only the first check applies to them; this is the dlib descriptor's
//! limit (the port matches the package at cosine 1.0), not a bug here.

use burn::backend::Flex;
use idforge_core::resample::{Filter, Plane8, resize};
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::face_api::{Detector, FaceApi, FaceRecognition, PixelRect, Stages};

type B = Flex;

fn view(img: &image::RgbImage) -> RgbView<'_> {
    RgbView {
        width: img.width() as usize,
        height: img.height() as usize,
        data: img.as_raw(),
    }
}

fn distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f32>()
        .sqrt()
}

/// `rect` moved by `(dx, dy)` and kept inside the image.
fn shifted(rect: PixelRect, dx: isize, dy: isize, img: &image::RgbImage) -> PixelRect {
    let x = (rect.x as isize + dx).clamp(0, (img.width() as usize - rect.width) as isize);
    let y = (rect.y as isize + dy).clamp(0, (img.height() as usize - rect.height) as isize);
    PixelRect {
        x: x as usize,
        y: y as usize,
        ..rect
    }
}

/// Descriptors of one face under each variation, labelled.
fn variants(
    net: &FaceRecognition<B>,
    img: &image::RgbImage,
    rect: PixelRect,
) -> Vec<(String, Vec<f32>)> {
    let mut out = vec![("original".to_string(), net.descriptor(view(img), rect))];

    let flipped = image::imageops::flip_horizontal(img);
    let mirrored = PixelRect {
        x: img.width() as usize - rect.x - rect.width,
        ..rect
    };
    out.push(("flip".into(), net.descriptor(view(&flipped), mirrored)));

    // 4% of the crop side: what detector and landmark jitter does.
    let j = (rect.width as f64 * 0.04).round() as isize;
    for (dx, dy) in [(-j, 0), (j, 0), (0, -j), (0, j), (j / 2, j / 2)] {
        out.push((
            format!("shift {dx},{dy}"),
            net.descriptor(view(img), shifted(rect, dx, dy, img)),
        ));
    }

    // The photo at 70%, with Pillow's bicubic, and the crop scaled with it.
    let s = 0.7;
    let (w, h) = (
        (f64::from(img.width()) * s).round() as usize,
        (f64::from(img.height()) * s).round() as usize,
    );
    let small = resize(
        &Plane8 {
            width: img.width() as usize,
            height: img.height() as usize,
            channels: 3,
            data: img.as_raw().clone(),
        },
        w,
        h,
        Filter::Bicubic,
    );
    let small = image::RgbImage::from_raw(w as u32, h as u32, small.data).unwrap();
    let scaled = PixelRect {
        x: (rect.x as f64 * s).round() as usize,
        y: (rect.y as f64 * s).round() as usize,
        width: ((rect.width as f64 * s).round() as usize).min(w - (rect.x as f64 * s) as usize),
        height: ((rect.height as f64 * s).round() as usize).min(h - (rect.y as f64 * s) as usize),
    };
    out.push(("rescale 0.7".into(), net.descriptor(view(&small), scaled)));

    // JPEG re-encoding at the quality web photos often carry.
    for quality in [90u8, 70] {
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
            .encode_image(img)
            .unwrap();
        let decoded =
            idforge_core::image_io::decode(&bytes, idforge_core::image_io::DEFAULT_MAX_PIXELS)
                .unwrap()
                .image
                .to_rgb8();
        out.push((
            format!("jpeg q{quality}"),
            net.descriptor(view(&decoded), rect),
        ));
    }
    out
}

#[test]
fn the_same_face_under_small_changes_stays_closer_than_any_other_person() {
    /// `FaceMatcher`'s default distance threshold: nearer is the same person to face-api.
    const MATCH_THRESHOLD: f32 = 0.6;
    let dir = idforge_core::cache::face_api_dir_if_fetched()
        .expect("run tools/fetch-assets (make test does)")
        .join("model");
    let device = Default::default();
    let api = FaceApi::<B>::load(&dir, Detector::default(), Stages::Descriptors, &device).unwrap();
    let net = FaceRecognition::<B>::load(
        &idforge_models::tfjs::TfjsWeights::load(
            &dir.join("face_recognition_model-weights_manifest.json"),
        )
        .unwrap(),
        &device,
    )
    .unwrap();
    let demo = dir.parent().unwrap().join("demo");
    let (mut identified, mut strict) = (0, 0);
    for name in ["sample1.jpg", "sample4.jpg", "sample6.jpg"] {
        let bytes = std::fs::read(demo.join(name)).unwrap();
        let img =
            idforge_core::image_io::decode(&bytes, idforge_core::image_io::DEFAULT_MAX_PIXELS)
                .unwrap()
                .image
                .to_rgb8();
        let faces = api.analyze(view(&img), Detector::default());
        assert!(faces.len() >= 3, "{name}: {} faces", faces.len());
        let per_face: Vec<Vec<(String, Vec<f32>)>> = faces
            .iter()
            .map(|f| variants(&net, &img, f.aligned_crop.unwrap()))
            .collect();
        for (i, own) in per_face.iter().enumerate() {
            let others = || {
                per_face
                    .iter()
                    .enumerate()
                    .filter(move |&(j, _)| j != i)
                    .map(|(_, o)| o)
            };
            // Identification: each variation's nearest original is its own face's.
            for (label, v) in own {
                let mine = distance(v, &own[0].1);
                for other in others() {
                    let theirs = distance(v, &other[0].1);
                    assert!(
                        mine < theirs,
                        "{name} face {i} ({label}): {mine:.3} from its original, {theirs:.3} from another person"
                    );
                }
            }
            identified += 1;
            // Spread of this face over every pair of its variations...
            let spread = own
                .iter()
                .flat_map(|(_, a)| own.iter().map(move |(_, b)| distance(a, b)))
                .fold(0f32, f32::max);
            // ...against the nearest any variation of it comes to any variation of another.
            let nearest_other = others()
                .flat_map(|other| {
                    own.iter()
                        .flat_map(move |(_, a)| other.iter().map(move |(_, b)| distance(a, b)))
                })
                .fold(f32::INFINITY, f32::min);
            let originals_apart = others()
                .map(|o| distance(&own[0].1, &o[0].1))
                .fold(f32::INFINITY, f32::min);
            eprintln!(
                "{name} face {i}: variations spread {spread:.3}, nearest other person \
                 {nearest_other:.3} (originals {originals_apart:.3} apart)"
            );
            if originals_apart > MATCH_THRESHOLD {
                assert!(
                    spread < nearest_other,
                    "{name} face {i}: variations spread {spread:.3}, another person at {nearest_other:.3}"
                );
                strict += 1;
            }
        }
    }
    assert_eq!(identified, 11);
    // All but the two look-alikes of sample4.jpg (see the module docs).
    assert_eq!(strict, 9);
}
