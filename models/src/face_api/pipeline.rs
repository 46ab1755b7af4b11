//! The full face-api chain, `detectAllFaces(...).withFaceLandmarks().withFaceDescriptors()`:
//! detect, cut each face as `dom/extractFaceTensors.ts` does, 68 landmarks, the dlib-style
//! aligned square of `classes/FaceLandmarks.ts` (`alignDlib`), the 128-d descriptor. Faces of
//! one image go through the landmark and descriptor nets as one batch.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::preprocess::{PixelRect, RgbView};
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
        let mut faces = self.detect(img, detector);
        if self.landmarks.is_some() {
            self.add_landmarks(img, &mut faces);
        }
        if self.recognition.is_some() {
            self.add_descriptors(img, &mut faces);
        }
        faces
    }

    /// The first stage of [`Self::analyze`]: boxes and scores only.
    ///
    /// # Panics
    /// If `detector` is not the one this was loaded for.
    pub fn detect(&self, img: RgbView<'_>, detector: Detector) -> Vec<Face> {
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
        detections
            .into_iter()
            .map(|detection| Face {
                detection,
                landmarks: None,
                aligned_crop: None,
                descriptor: None,
            })
            .collect()
    }

    /// The second stage: 68 landmarks of every face whose box is not empty once clipped to the
    /// image (`extractFaceTensors` skips the others, which keep only their box).
    ///
    /// # Panics
    /// If loaded with [`Stages::Detect`].
    pub fn add_landmarks(&self, img: RgbView<'_>, faces: &mut [Face]) {
        let net = self
            .landmarks
            .as_ref()
            .expect("loaded with Stages::Landmarks or more");
        let crops: Vec<(usize, PixelRect)> = faces
            .iter()
            .enumerate()
            .filter_map(|(i, f)| landmark_crop(&f.detection, img).map(|r| (i, r)))
            .collect();
        let device = net.devices().into_iter().next().unwrap_or_default();
        let inputs = crops
            .iter()
            .map(|&(_, r)| FaceLandmark68::<B>::input_at(img, r, &device))
            .collect();
        let Some(raw) = forward_batch(inputs, |x| net.forward(x)) else {
            return;
        };
        for (&(i, rect), out) in crops.iter().zip(raw.chunks_exact(136)) {
            let d = faces[i].detection;
            faces[i].landmarks = Some(FaceLandmark68::<B>::points(out, rect, (d.x, d.y)));
        }
    }

    /// The third stage: the descriptor of every face with landmarks, on its dlib-aligned
    /// square.
    ///
    /// # Panics
    /// If loaded with less than [`Stages::Descriptors`].
    pub fn add_descriptors(&self, img: RgbView<'_>, faces: &mut [Face]) {
        let net = self
            .recognition
            .as_ref()
            .expect("loaded with Stages::Descriptors");
        let aligned: Vec<(usize, PixelRect)> = faces
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let points = f.landmarks.as_ref()?;
                // alignDlib caps the square by the landmark crop's size.
                let crop = landmark_crop(&f.detection, img)?;
                let r = align_dlib(points, (crop.width, crop.height));
                clip_at_image_borders(r, img).map(|c| (i, c))
            })
            .collect();
        let device = net.devices().into_iter().next().unwrap_or_default();
        let inputs = aligned
            .iter()
            .map(|&(_, r)| FaceRecognition::<B>::input_at(img, r, &device))
            .collect();
        let Some(raw) = forward_batch(inputs, |x| net.forward(x)) else {
            return;
        };
        for (&(i, rect), out) in aligned.iter().zip(raw.chunks_exact(128)) {
            faces[i].aligned_crop = Some(rect);
            faces[i].descriptor = Some(out.to_vec());
        }
    }
}

/// One batched forward over per-face inputs, read back; `None` without faces.
fn forward_batch<B: Backend>(
    inputs: Vec<Tensor<B, 4>>,
    forward: impl FnOnce(Tensor<B, 4>) -> Tensor<B, 2>,
) -> Option<Vec<f32>> {
    if inputs.is_empty() {
        return None;
    }
    Some(
        forward(Tensor::cat(inputs, 0))
            .into_data()
            .to_vec()
            .expect("f32 output"),
    )
}

/// The landmark net's crop of a detection: its box clipped to the image and floored.
fn landmark_crop(d: &Detection, img: RgbView<'_>) -> Option<PixelRect> {
    clip_at_image_borders([d.x, d.y, d.width, d.height], img)
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
