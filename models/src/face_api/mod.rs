//! The face-api networks (`@vladmandic/face-api` 1.7.15), ported from the package's TypeScript
//! sources, which are the specification: preprocessing, layers, box decoding and NMS follow
//! them line by line, with the file each part follows named in its docs.
//!
//! [`FaceApi`] chains them as `detectAllFaces().withFaceLandmarks().withFaceDescriptors()`
//! does, and [`FaceAttributeNets`] adds `.withFaceExpressions().withAgeAndGender()` from the
//! landmarks; each network is also usable alone.

pub mod age_gender;
pub mod face_expression;
pub mod face_feature_extractor;
pub mod face_landmark_68;
pub mod face_recognition;
mod layers;
pub mod pipeline;
pub mod preprocess;
pub mod ssd_mobilenetv1;
pub mod tiny_face_detector;

pub use age_gender::{AgeAndGender, AgeGenderNet, Gender};
pub use face_expression::{EXPRESSION_LABELS, FaceExpressionNet};
pub use face_feature_extractor::FaceFeatureExtractor;
pub use face_landmark_68::FaceLandmark68;
pub use face_recognition::FaceRecognition;
pub use pipeline::{Detector, Face, FaceApi, FaceAttributeNets, FaceAttributes, Stages};
pub use preprocess::PixelRect;
pub use ssd_mobilenetv1::SsdMobilenetV1;
pub use tiny_face_detector::TinyFaceDetector;

/// A detected face in source-image pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Detector confidence in [0, 1].
    pub score: f32,
    /// Left edge.
    pub x: f64,
    /// Top edge.
    pub y: f64,
    /// Width.
    pub width: f64,
    /// Height.
    pub height: f64,
}

impl Detection {
    /// Intersection over union with another box.
    pub fn iou(&self, other: &Detection) -> f64 {
        iou(
            [self.x, self.y, self.x + self.width, self.y + self.height],
            [
                other.x,
                other.y,
                other.x + other.width,
                other.y + other.height,
            ],
        )
    }
}

/// IoU of two `[left, top, right, bottom]` boxes (`ops/iou.ts`).
pub(crate) fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: [f64; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter)
}

/// face-api's greedy NMS (`ops/nonMaxSuppression.ts`): highest score first, drop boxes whose IoU
/// with a picked one is above the threshold. Returns the picked indices in pick order.
pub(crate) fn non_max_suppression(
    boxes: &[[f64; 4]],
    scores: &[f32],
    iou_threshold: f64,
) -> Vec<usize> {
    // JavaScript's sort is stable: ascending by score, the last popped first.
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut pick = Vec::new();
    while let Some(curr) = order.pop() {
        pick.push(curr);
        order.retain(|&i| iou(boxes[curr], boxes[i]) <= iou_threshold);
    }
    pick
}
