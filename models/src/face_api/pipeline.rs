//! The full face-api chain, `detectAllFaces(...).withFaceLandmarks().withFaceDescriptors()`:
//! detect, cut each face as `dom/extractFaceTensors.ts` does, 68 landmarks, the dlib-style
//! aligned square of `classes/FaceLandmarks.ts` (`alignDlib`), the 128-d descriptor. Faces of
//! one image go through the landmark and descriptor nets as one batch.
//!
//! The attribute nets of `.withFaceExpressions().withAgeAndGender()` ([`FaceAttributeNets`])
//! take a face's 68 landmarks and cut its `alignedRect` ([`aligned_rect`], [`attribute_crop`]).

use std::path::Path;

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::preprocess::{PixelRect, RgbView};
use super::{
    AgeAndGender, AgeGenderNet, Detection, FaceExpressionNet, FaceLandmark68, FaceRecognition,
    Gender, SsdMobilenetV1, TinyFaceDetector,
};
use crate::error::ModelError;
use crate::readback::ReadBack;
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
    Some(forward(Tensor::cat(inputs, 0)).to_f32_vec())
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

/// `FaceLandmarks.align()` with its defaults (`alignMinBbox(0.2)`): the landmarks' bounding box
/// (`ops/minBbox.ts`, whose maxima start from 0), grown by 20% of its width and height, half on
/// each side; then the round trip through relative coordinates that
/// `extendWithFaceLandmarks` makes (`rescale(1/size)`, then `FaceDetection` scales back),
/// which can move the last bit. This is the `alignedRect.box` face-api keeps with each face,
/// as `[x, y, width, height]`, unclipped; `image_size` is the image's `(width, height)`.
/// Public because it is the box face-api reports for a face with landmarks, and because the
/// attribute nets' crop ([`attribute_crop`]) derives from it.
pub fn aligned_rect(points: &[(f64, f64)], image_size: (usize, usize)) -> [f64; 4] {
    let min = |f: fn(&(f64, f64)) -> f64| {
        points
            .iter()
            .map(f)
            .fold(f64::INFINITY, |m, v| if v < m { v } else { m })
    };
    let max = |f: fn(&(f64, f64)) -> f64| {
        points
            .iter()
            .map(f)
            .fold(0.0, |m, v| if m < v { v } else { m })
    };
    let (min_x, min_y, max_x, max_y) = (min(|p| p.0), min(|p| p.1), max(|p| p.0), max(|p| p.1));
    let (w, h) = (max_x - min_x, max_y - min_y);
    // Box.pad(width · 0.2, height · 0.2).
    let (pad_x, pad_y) = (w * 0.2, h * 0.2);
    let padded = [
        min_x - pad_x / 2.0,
        min_y - pad_y / 2.0,
        w + pad_x,
        h + pad_y,
    ];
    relative_round_trip(padded, image_size)
}

/// `new FaceDetection(score, box.rescale(imageDims.reverse()), imageDims).box`: to relative
/// coordinates (times `1/width`, `1/height`) and back, in doubles as JavaScript does.
fn relative_round_trip(b: [f64; 4], (width, height): (usize, usize)) -> [f64; 4] {
    let (w, h) = (width as f64, height as f64);
    let (rw, rh) = (1.0 / w, 1.0 / h);
    [b[0] * rw * w, b[1] * rh * h, b[2] * rw * w, b[3] * rh * h]
}

/// The rectangle face-api cuts for the expression and age/gender nets of a face with
/// landmarks: `extractAllFacesAndComputeResults` takes the face's `alignedRect`
/// ([`aligned_rect`]), `extractFaceTensors` scales it with `forSize(width, height)` (two more
/// relative round trips) and clips it at the image borders, floored. `None` when nothing of it
/// is inside the image (`extractFaceTensors` drops such a face). The nets' outputs depend on
/// the exact pixels cut, so matching face-api's numbers needs this rectangle, not the dlib
/// square of the descriptor nor the detection box.
pub fn attribute_crop(points: &[(f64, f64)], img: RgbView<'_>) -> Option<PixelRect> {
    let size = (img.width, img.height);
    let rect = aligned_rect(points, size);
    // FaceDetection.forSize: ObjectDetection.forSize, then a new FaceDetection from it.
    let rect = relative_round_trip(relative_round_trip(rect, size), size);
    clip_at_image_borders(rect, img)
}

/// What `.withFaceExpressions().withAgeAndGender()` adds to one face, with face-api's meaning
/// of each field, so that callers can report the package's numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceAttributes {
    /// Estimated age in years (the regression output, not rounded).
    pub age: f32,
    /// The more probable gender.
    pub gender: Gender,
    /// The probability of `gender`, in [0.5, 1].
    pub gender_probability: f32,
    /// Expression probabilities in [`super::face_expression::EXPRESSION_LABELS`] order
    /// (neutral, happy, sad, angry, fearful, disgusted, surprised), summing to 1.
    pub expressions: [f32; 7],
    /// The pixels both nets saw: [`attribute_crop`] of the landmarks.
    pub crop: PixelRect,
}

impl FaceAttributes {
    /// The most probable expression and its probability (`asSortedArray()[0]`; the first label
    /// wins a tie, as the stable sort keeps it first).
    pub fn dominant_expression(&self) -> (&'static str, f32) {
        let mut best = 0;
        for (i, &p) in self.expressions.iter().enumerate() {
            if p > self.expressions[best] {
                best = i;
            }
        }
        (
            super::face_expression::EXPRESSION_LABELS[best],
            self.expressions[best],
        )
    }
}

/// face-api's two attribute networks, loaded together because the chain runs both on the same
/// crop; separate from [`FaceApi`] so that its loading and results stay as they were.
#[derive(Debug)]
pub struct FaceAttributeNets<B: Backend> {
    expression: FaceExpressionNet<B>,
    age_gender: AgeGenderNet<B>,
}

impl<B: Backend> FaceAttributeNets<B> {
    /// Loads `face_expression_model` and `age_gender_model` from the package's `model/`
    /// folder (the one [`FaceApi::load`] takes).
    pub fn load(model_dir: &Path, device: &B::Device) -> Result<Self, ModelError> {
        let weights = |name: &str| {
            TfjsWeights::load(&model_dir.join(format!("{name}-weights_manifest.json")))
        };
        Ok(FaceAttributeNets {
            expression: FaceExpressionNet::load(&weights("face_expression_model")?, device)?,
            age_gender: AgeGenderNet::load(&weights("age_gender_model")?, device)?,
        })
    }

    /// Builds from nets already loaded.
    pub fn new(expression: FaceExpressionNet<B>, age_gender: AgeGenderNet<B>) -> Self {
        FaceAttributeNets {
            expression,
            age_gender,
        }
    }

    /// The expression net, to run it alone.
    pub fn expression_net(&self) -> &FaceExpressionNet<B> {
        &self.expression
    }

    /// The age and gender net, to run it alone.
    pub fn age_gender_net(&self) -> &AgeGenderNet<B> {
        &self.age_gender
    }

    /// Expressions, age and gender of one face of `img` from its 68 landmarks in image pixels
    /// (e.g. [`Face::landmarks`]); `None` when its [`attribute_crop`] is empty.
    pub fn attributes(&self, img: RgbView<'_>, landmarks: &[(f64, f64)]) -> Option<FaceAttributes> {
        self.attributes_batch(img, &[landmarks]).pop().flatten()
    }

    /// [`Self::attributes`] of several faces of one image, run through each net as one batch;
    /// one entry per face, in order.
    ///
    /// # Panics
    /// If a face has not 68 landmarks.
    pub fn attributes_batch(
        &self,
        img: RgbView<'_>,
        landmarks: &[&[(f64, f64)]],
    ) -> Vec<Option<FaceAttributes>> {
        let crops: Vec<(usize, PixelRect)> = landmarks
            .iter()
            .enumerate()
            .filter_map(|(i, points)| {
                assert_eq!(points.len(), 68, "68 landmarks");
                attribute_crop(points, img).map(|r| (i, r))
            })
            .collect();
        let mut out = vec![None; landmarks.len()];
        if crops.is_empty() {
            return out;
        }
        let device = self
            .expression
            .devices()
            .into_iter()
            .next()
            .unwrap_or_default();
        // Both nets take the same input (`toBatchTensor(112, true)`, the same mean).
        let input = Tensor::cat(
            crops
                .iter()
                .map(|&(_, r)| FaceExpressionNet::<B>::input_at(img, r, &device))
                .collect(),
            0,
        );
        let expressions: Vec<f32> = self.expression.forward(input.clone()).to_f32_vec();
        let (age, gender) = self.age_gender.forward(input);
        let age: Vec<f32> = age.to_f32_vec();
        let gender: Vec<f32> = gender.to_f32_vec();
        for (k, &(i, crop)) in crops.iter().enumerate() {
            let AgeAndGender {
                age,
                gender,
                gender_probability,
            } = AgeAndGender::from_outputs(age[k], gender[2 * k]);
            out[i] = Some(FaceAttributes {
                age,
                gender,
                gender_probability,
                expressions: expressions[7 * k..7 * k + 7]
                    .try_into()
                    .expect("7 probabilities"),
                crop,
            });
        }
        out
    }

    /// [`Self::attributes_batch`] of the faces [`FaceApi::analyze`] returned, as
    /// `.withFaceLandmarks().withFaceExpressions().withAgeAndGender()` does; `None` for a face
    /// without landmarks (loaded with [`Stages::Detect`], or a box empty in the image): without
    /// landmarks face-api would cut the detection box instead, a chain this does not offer.
    pub fn attributes_of_faces(
        &self,
        img: RgbView<'_>,
        faces: &[Face],
    ) -> Vec<Option<FaceAttributes>> {
        let with: Vec<(usize, &[(f64, f64)])> = faces
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.landmarks.as_deref().map(|l| (i, l)))
            .collect();
        let results = self.attributes_batch(img, &with.iter().map(|&(_, l)| l).collect::<Vec<_>>());
        let mut out = vec![None; faces.len()];
        for ((i, _), r) in with.into_iter().zip(results) {
            out[i] = r;
        }
        out
    }
}
