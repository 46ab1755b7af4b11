//! One face-identity embedder for every stage that compares faces (curation's identity check,
//! the benchmark's Face-Sim): face-api's 128-d descriptor, or an ArcFace-class IResNet from an
//! ONNX file on the 5-point `norm_crop`, after face-api's detector and landmarks either way.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;

use crate::error::ModelError;
use crate::face_align::{five_points_from_68, norm_crop};
use crate::face_api::preprocess::RgbView;
use crate::face_api::{Detector, Face, FaceApi, Stages};
use crate::iresnet::{IResNet, l2_normalize};

/// The face detector, landmark net and embedding network, loaded once and shared by threads.
pub struct FaceEmbedder<B: Backend> {
    face_api: FaceApi<B>,
    detector: Detector,
    arcface: Option<(IResNet<B>, PathBuf)>,
}

impl<B: Backend> FaceEmbedder<B> {
    /// Loads face-api's `detector`, its landmark net, and the descriptor net, or the ArcFace
    /// ONNX model at `arcface_onnx` in its place.
    pub fn load(
        face_api_models: &Path,
        detector: Detector,
        arcface_onnx: Option<&Path>,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let stages = match arcface_onnx {
            None => Stages::Descriptors,
            Some(_) => Stages::Landmarks,
        };
        let face_api = FaceApi::load(face_api_models, detector, stages, device)?;
        let arcface = match arcface_onnx {
            Some(path) => Some((IResNet::load(path, device)?, path.to_path_buf())),
            None => None,
        };
        Ok(FaceEmbedder {
            face_api,
            detector,
            arcface,
        })
    }

    /// The face-api networks (for callers that need detection only).
    pub fn face_api(&self) -> &FaceApi<B> {
        &self.face_api
    }

    /// The detector and its thresholds.
    pub fn detector(&self) -> Detector {
        self.detector
    }

    /// Whether the embeddings are an ArcFace ONNX model's (not face-api's descriptor).
    pub fn has_arcface(&self) -> bool {
        self.arcface.is_some()
    }

    /// Length of the embeddings: 128 for face-api, the ONNX model's for ArcFace.
    pub fn embedding_dim(&self) -> usize {
        match &self.arcface {
            Some((net, _)) => net.config().embedding_size,
            None => 128,
        }
    }

    /// `face-api` or `arcface:<file name>`: the name tables record, so embeddings from
    /// different networks are never compared.
    pub fn name(&self) -> String {
        embedder_name(self.arcface.as_ref().map(|(_, p)| p.as_path()))
    }

    /// Every face the detector finds in `img`, without landmarks or embeddings yet.
    pub fn detect(&self, img: RgbView<'_>) -> Vec<Face> {
        self.face_api.detect(img, self.detector)
    }

    /// Adds the landmarks and the embedding (`descriptor`, not normalised) to each face.
    pub fn embed_faces(&self, img: RgbView<'_>, faces: &mut [Face]) {
        if faces.is_empty() {
            return;
        }
        self.face_api.add_landmarks(img, faces);
        match &self.arcface {
            None => self.face_api.add_descriptors(img, faces),
            Some((net, _)) => {
                for face in faces.iter_mut() {
                    let points = five_points_from_68(face.landmarks.as_deref().unwrap_or(&[]));
                    let aligned = norm_crop(img, &points, 112);
                    face.descriptor = Some(net.embed(aligned.view()));
                }
            }
        }
    }

    /// The largest face of `img` with its landmarks and L2-normalised embedding, or `None`
    /// when no face is detected: how a benchmark compares "the" face of a generated image.
    pub fn largest_face(&self, img: RgbView<'_>) -> Option<(Face, Vec<f32>)> {
        let faces = self.detect(img);
        let largest = faces.into_iter().max_by(|a, b| {
            let area = |f: &Face| f.detection.width * f.detection.height;
            area(a).total_cmp(&area(b))
        })?;
        let mut one = [largest];
        self.embed_faces(img, &mut one);
        let [face] = one;
        let embedding = l2_normalize(face.descriptor.as_deref()?);
        Some((face, embedding))
    }
}

/// `face-api`, or `arcface:<file name>` for an ONNX model.
pub fn embedder_name(arcface_onnx: Option<&Path>) -> String {
    match arcface_onnx {
        Some(p) => format!(
            "arcface:{}",
            p.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ),
        None => "face-api".into(),
    }
}
