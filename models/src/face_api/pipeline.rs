//! The full face-api chain, `detectAllFaces(...).withFaceLandmarks().withFaceDescriptors()`:
//! detect, cut each face as `dom/extractFaceTensors.ts` does, 68 landmarks, the dlib-style
//! aligned square of `classes/FaceLandmarks.ts` (`alignDlib`), the 128-d descriptor. Faces of
//! one image go through the landmark and descriptor nets as one batch.

use std::path::Path;

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::preprocess::{PixelRect, RgbView, crop};
use super::{Detection, FaceLandmark68, FaceRecognition, SsdMobilenetV1, TinyFaceDetector};
use crate::error::ModelError;
use crate::tfjs::TfjsWeights;

/// Which face-api detector finds the faces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Detector {
    /// `ssd_mobilenetv1`, the accurate one (face-api's default).
    SsdMobilenetV1 {
        /// Minimum score (face-api: 0.5).
        min_confidence: f32,
        /// At most this many faces (face-api: 100).
        max_results: usize,
    },
    /// `tiny_face_detector`, the fast one.
    Tiny {
        /// Network input side, a multiple of 32 (face-api: 416).
        input_size: usize,
        /// Minimum score (face-api: 0.5).
        score_threshold: f32,
    },
}

impl Default for Detector {
    fn default() -> Self {
        Detector::SsdMobilenetV1 {
            min_confidence: 0.5,
            max_results: 100,
        }
    }
}

/// One face: where, its 68 landmarks, and its descriptor.
#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    /// The detection box in image pixels.
    pub detection: Detection,
    /// 68 iBUG points in image pixels (`None` if the landmark net did not run).
    pub landmarks: Option<Vec<(f64, f64)>>,
    /// The aligned square the descriptor saw, clipped to the image.
    pub aligned_crop: Option<PixelRect>,
    /// The 128-d descriptor, not normalised, as face-api returns it (compare with Euclidean
    /// distance, face-api's match threshold is 0.6).
    pub descriptor: Option<Vec<f32>>,
}

/// How far [`FaceApi::analyze`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stages {
    /// Boxes only.
    Detect,
    /// Boxes and landmarks.
    Landmarks,
    /// Boxes, landmarks and descriptors.
    Descriptors,
}

/// The face-api networks, loaded once and run per image.
#[derive(Debug)]
pub struct FaceApi<B: Backend> {
    ssd: Option<SsdMobilenetV1<B>>,
    tiny: Option<TinyFaceDetector<B>>,
    landmarks: Option<FaceLandmark68<B>>,
    recognition: Option<FaceRecognition<B>>,
}

impl<B: Backend> FaceApi<B> {
    /// Loads what `detector` and `stages` need from the package's `model/` folder.
    pub fn load(
        model_dir: &Path,
        detector: Detector,
        stages: Stages,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let weights = |name: &str| {
            TfjsWeights::load(&model_dir.join(format!("{name}-weights_manifest.json")))
        };
        let ssd = match detector {
            Detector::SsdMobilenetV1 { .. } => Some(SsdMobilenetV1::load(
                &weights("ssd_mobilenetv1_model")?,
                device,
            )?),
            Detector::Tiny { .. } => None,
        };
        let tiny = match detector {
            Detector::Tiny { .. } => Some(TinyFaceDetector::load(
                &weights("tiny_face_detector_model")?,
                device,
            )?),
            Detector::SsdMobilenetV1 { .. } => None,
        };
        let landmarks = if stages >= Stages::Landmarks {
            Some(FaceLandmark68::load(
                &weights("face_landmark_68_model")?,
                device,
            )?)
        } else {
            None
        };
        let recognition = if stages >= Stages::Descriptors {
            Some(FaceRecognition::load(
                &weights("face_recognition_model")?,
                device,
            )?)
        } else {
            None
        };
        Ok(FaceApi {
            ssd,
            tiny,
            landmarks,
            recognition,
        })
    }

    /// Every face in `img`, in detector order, as far as the loaded networks go.
    ///
    /// # Panics
    /// If `detector` is not the one this was loaded for.
    pub fn analyze(&self, img: RgbView<'_>, detector: Detector) -> Vec<Face> {
        let detections = match detector {
            Detector::SsdMobilenetV1 {
                min_confidence,
                max_results,
            } => self
                .ssd
                .as_ref()
                .expect("loaded with Detector::SsdMobilenetV1")
                .detect(img, min_confidence, max_results),
            Detector::Tiny {
                input_size,
                score_threshold,
            } => self
                .tiny
                .as_ref()
                .expect("loaded with Detector::Tiny")
                .detect(img, input_size, score_threshold),
        };
        let mut faces: Vec<Face> = detections
            .into_iter()
            .map(|detection| Face {
                detection,
                landmarks: None,
                aligned_crop: None,
                descriptor: None,
            })
            .collect();
        let Some(net) = &self.landmarks else {
            return faces;
        };
        // extractFaceTensors drops boxes that clip to nothing; those faces keep only the box.
        let crops: Vec<(usize, PixelRect)> = faces
            .iter()
            .enumerate()
            .filter_map(|(i, f)| clip_at_image_borders(box_of(&f.detection), img).map(|r| (i, r)))
            .collect();
        if crops.is_empty() {
            return faces;
        }
        let device = net_device(net);
        let inputs = crops
            .iter()
            .map(|&(_, r)| FaceLandmark68::<B>::input(view(&crop(img, r), r), &device))
            .collect();
        let raw: Vec<f32> = net
            .forward(Tensor::cat(inputs, 0))
            .into_data()
            .to_vec()
            .expect("f32 output");
        for (&(i, rect), out) in crops.iter().zip(raw.chunks_exact(136)) {
            let d = faces[i].detection;
            faces[i].landmarks = Some(FaceLandmark68::<B>::points(out, rect, (d.x, d.y)));
        }
        let Some(rec) = &self.recognition else {
            return faces;
        };
        let aligned: Vec<(usize, PixelRect)> = crops
            .iter()
            .filter_map(|&(i, rect)| {
                let points = faces[i].landmarks.as_ref()?;
                let r = align_dlib(points, (rect.width, rect.height));
                clip_at_image_borders(r, img).map(|c| (i, c))
            })
            .collect();
        if aligned.is_empty() {
            return faces;
        }
        let inputs = aligned
            .iter()
            .map(|&(_, r)| FaceRecognition::<B>::input(view(&crop(img, r), r), &device))
            .collect();
        let raw: Vec<f32> = rec
            .forward(Tensor::cat(inputs, 0))
            .into_data()
            .to_vec()
            .expect("f32 output");
        for (&(i, rect), out) in aligned.iter().zip(raw.chunks_exact(128)) {
            faces[i].aligned_crop = Some(rect);
            faces[i].descriptor = Some(out.to_vec());
        }
        faces
    }
}

fn net_device<B: Backend>(net: &FaceLandmark68<B>) -> B::Device {
    use burn::module::Module;
    net.devices().into_iter().next().unwrap_or_default()
}

fn view(data: &[u8], r: PixelRect) -> RgbView<'_> {
    RgbView {
        width: r.width,
        height: r.height,
        data,
    }
}

fn box_of(d: &Detection) -> [f64; 4] {
    [d.x, d.y, d.width, d.height]
}

/// `Box.clipAtImageBorders` (`classes/Box.ts`): clip `[x, y, width, height]` to the image, then
/// floor every field; `None` when nothing is left, which `extractFaceTensors` skips.
pub fn clip_at_image_borders(b: [f64; 4], img: RgbView<'_>) -> Option<PixelRect> {
    let [x, y, w, h] = b;
    let (cx, cy) = (x.max(0.0), y.max(0.0));
    let width = ((x + w) - cx).min(img.width as f64 - cx).floor();
    let height = ((y + h) - cy).min(img.height as f64 - cy).floor();
    if width <= 0.0 || height <= 0.0 {
        return None;
    }
    Some(PixelRect {
        x: cx.floor() as usize,
        y: cy.floor() as usize,
        width: width as usize,
        height: height as usize,
    })
}

/// `FaceLandmarks.alignDlib`: a square of side `⌊mean eye-to-mouth distance / 0.45⌋` around the
/// mean of the eye and mouth centres (0.5 of the side left of it, 0.43 above), as
/// `[x, y, width, height]`. `crop_size` is the landmark crop's, which caps the width as the
/// reference does.
pub fn align_dlib(points: &[(f64, f64)], crop_size: (usize, usize)) -> [f64; 4] {
    assert_eq!(points.len(), 68, "68 landmarks");
    // getCenterPoint: a running sum from (0, 0) in point order, then a division.
    let center = |pts: &[(f64, f64)]| {
        let (sx, sy) = pts
            .iter()
            .fold((0.0, 0.0), |(sx, sy), &(x, y)| (sx + x, sy + y));
        (sx / pts.len() as f64, sy / pts.len() as f64)
    };
    let centers = [
        center(&points[36..42]),
        center(&points[42..48]),
        center(&points[48..68]),
    ];
    let [left_eye, right_eye, mouth] = centers;
    let dist = |p: (f64, f64)| ((mouth.0 - p.0).powi(2) + (mouth.1 - p.1).powi(2)).sqrt();
    let size = ((dist(left_eye) + dist(right_eye)) / 2.0 / 0.45).floor();
    let reference = center(&centers);
    let x = (reference.0 - 0.5 * size).max(0.0).floor();
    let y = (reference.1 - 0.43 * size).max(0.0).floor();
    [
        x,
        y,
        size.min(crop_size.0 as f64 + x),
        size.min(crop_size.1 as f64 + y),
    ]
}
