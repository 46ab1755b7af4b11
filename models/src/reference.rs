//! Reference photos → the inputs identity adapters take, computed once here so that
//! `idforge generate`, the trainer and `bench generate` agree on them.
//!
//! Per reference photo, as the adapters' own demos compute them (insightface replaced by
//! face-api's detector and landmarks, see [`crate::face_embedder`]):
//!
//! - the largest face: face-api SSD box → 68 landmarks → insightface's five points
//!   ([`five_points_from_68`]);
//! - the ArcFace embedding of its 112 px `norm_crop`, raw (insightface's `face.embedding`,
//!   PhotoMaker v2's `id_embeds`) and L2-normalised (`face.normed_embedding`, IP-Adapter-FaceID's
//!   `faceid_embeds`);
//! - the 224 px `norm_crop` (`face_align.norm_crop(image, landmark=face.kps, image_size=224)`:
//!   the `arcface_dst` template scaled by 2), which IP-Adapter-FaceID-Plus gives CLIP;
//! - CLIP's image features ([`ImageEncoder`], diffusers' `image_encoder/` folder): the projected
//!   `image_embeds` (plain IP-Adapter) and the penultimate hidden states (`hidden_states[-2]`:
//!   Plus, full-face, FaceID-Plus), of the whole photo or of the face crop, and the hidden
//!   states of an all-zero pixel tensor, the unconditional input diffusers' `encode_image` and
//!   IP-Adapter's `get_image_embeds` use.
//!
//! Which of these an adapter needs is the caller's choice ([`ReferenceNeeds`]); the mapping
//! from an adapter's kind lives next to the adapters (`idforge_diffusion::reference`).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::clip::checkpoint::checkpoint_files;
use crate::clip::{
    ClipConfig, ClipPreprocess, ClipVisionConfig, ClipVisionTransformer, Convention, WeightLayout,
};
use crate::error::ModelError;
use crate::face_align::{AlignedFace, five_points_from_68, norm_crop};
use crate::face_api::Face;
use crate::face_api::preprocess::RgbView;
use crate::face_embedder::FaceEmbedder;
use crate::readback::ReadBack;
use crate::weights::WeightStore;

/// Side of the face crop IP-Adapter-FaceID-Plus's demo hands to CLIP (and PhotoMaker's ID
/// encoder's input size).
pub const FACE_CROP_SIZE: usize = 224;

/// The channel order of the face crop CLIP is given.
///
/// IP-Adapter-FaceID-Plus's published demo (the model card's, and diffusers' ip_adapter docs)
/// reads the photo with OpenCV (BGR), crops it with `norm_crop` and passes that BGR array to
/// `CLIPImageProcessor`, which takes it as RGB: CLIP sees the face with red and blue swapped.
/// [`CropChannels::Bgr`] reproduces that; [`CropChannels::Rgb`] gives the true colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CropChannels {
    /// Red and blue swapped, as the reference demo feeds CLIP.
    #[default]
    Bgr,
    /// The crop's true colours.
    Rgb,
}

/// Which image CLIP encodes for an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipInput {
    /// The whole photo, resized and centre-cropped by `CLIPImageProcessor` (plain, Plus,
    /// full-face: diffusers' `ip_adapter_image`).
    WholeImage,
    /// The 224 px `norm_crop` of the largest face (FaceID-Plus).
    FaceCrop(CropChannels),
}

/// What to compute per reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReferenceNeeds {
    /// The largest face with its ArcFace embedding and 224 px crop; a photo without a face is
    /// then an error.
    pub face: bool,
    /// CLIP's features of this image, if any.
    pub clip: Option<ClipInput>,
}

/// The largest face of a reference photo and what identity adapters take from it.
#[derive(Debug, Clone)]
pub struct ReferenceFace {
    /// The detection and its 68 landmarks, in the photo's pixels (`descriptor`: the raw ArcFace
    /// embedding).
    pub face: Face,
    /// insightface's five points (eyes, nose tip, mouth corners) derived from the landmarks.
    pub points: [(f64, f64); 5],
    /// The ArcFace embedding as the network gives it (insightface `face.embedding`).
    pub embedding: Vec<f32>,
    /// The same, L2-normalised (`face.normed_embedding`).
    pub normed_embedding: Vec<f32>,
    /// The [`FACE_CROP_SIZE`] `norm_crop`, true colours.
    pub crop: AlignedFace,
}

/// CLIP's features of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipFeatures {
    /// The projected, not normalised `image_embeds` (`[projection_dim]`); `None` for an encoder
    /// without `visual_projection`.
    pub image_embeds: Option<Vec<f32>>,
    /// `hidden_states[-2]`, `[tokens, width]` row-major.
    pub hidden_states: Vec<f32>,
    /// Tokens of `hidden_states` (1 + patches).
    pub tokens: usize,
    /// Width of `hidden_states`.
    pub width: usize,
}

/// One reference photo, encoded.
#[derive(Debug, Clone)]
pub struct Reference {
    /// The file it came from (empty for in-memory images).
    pub path: PathBuf,
    /// The largest face, when asked for (or when CLIP sees its crop).
    pub face: Option<ReferenceFace>,
    /// CLIP's features of the image [`ReferenceNeeds::clip`] chose.
    pub clip: Option<ClipFeatures>,
}

/// A CLIP vision tower with its projection and `CLIPImageProcessor`'s preprocessing: diffusers'
/// `image_encoder` (`CLIPVisionModelWithProjection`).
pub struct ImageEncoder<B: Backend> {
    tower: ClipVisionTransformer<B>,
    preprocess: ClipPreprocess,
    path: PathBuf,
    device: B::Device,
}

impl<B: Backend> ImageEncoder<B> {
    /// Opens an `image_encoder/` folder (`config.json` + `model.safetensors`, as
    /// `CLIPVisionModelWithProjection.save_pretrained` writes it; a whole `CLIPModel` folder
    /// works too). `visual_projection` is optional (only plain IP-Adapter needs it).
    ///
    /// # Errors
    /// No folder or config, no CLIP vision tensors, a missing or misshapen tensor, named.
    pub fn load(path: &Path, device: &B::Device) -> Result<Self, ModelError> {
        if !path.exists() {
            return Err(ModelError::Missing {
                path: path.to_path_buf(),
                what: "no such image encoder folder".into(),
            });
        }
        let (files, folder) = checkpoint_files(&[path.to_path_buf()])?;
        let config_json = folder
            .as_deref()
            .map(|f| f.join("config.json"))
            .filter(|p| p.is_file())
            .ok_or_else(|| ModelError::Missing {
                path: path.to_path_buf(),
                what: "no config.json beside the weights (diffusers' image_encoder/ folder has \
                       config.json and model.safetensors)"
                    .into(),
            })?;
        let config: ClipConfig = ClipConfig::from_hf_config_json(&config_json)?;
        let weights = WeightStore::safetensors(&files)?;
        if WeightLayout::detect(&weights) != Some(WeightLayout::HuggingFace)
            || !weights.names().any(|n| n.starts_with("vision_model."))
        {
            return Err(ModelError::Format {
                path: files[0].clone(),
                message: "no `vision_model.*` tensors: not a transformers CLIP vision model \
                          (CLIPVisionModelWithProjection)"
                    .into(),
            });
        }
        let mut vision: ClipVisionConfig = config.vision;
        if !weights.contains("visual_projection.weight") {
            vision.projection_dim = None;
        }
        let tower =
            ClipVisionTransformer::load(&weights, &vision, WeightLayout::HuggingFace, device)?;
        Ok(Self {
            preprocess: ClipPreprocess::new(vision.image_size, Convention::HuggingFace),
            tower,
            path: path.to_path_buf(),
            device: device.clone(),
        })
    }

    /// The tower's config.
    pub fn config(&self) -> &ClipVisionConfig {
        self.tower.config()
    }

    /// Width of the hidden states (1280 for ViT-H/14, 1664 for bigG/14).
    pub fn hidden_size(&self) -> usize {
        self.config().width
    }

    /// Width of `image_embeds` (1024 for ViT-H/14, 1280 for bigG/14); `None` without a
    /// projection.
    pub fn projection_dim(&self) -> Option<usize> {
        self.config().projection_dim
    }

    /// The folder it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `CLIPImageProcessor`'s pixels of `images` (shortest side to the input size, bicubic,
    /// centre crop, OpenAI mean/std).
    ///
    /// # Shapes
    /// - output: `[images.len(), 3, size, size]`
    pub fn pixels(&self, images: &[RgbView<'_>]) -> Tensor<B, 4> {
        self.preprocess.tensor(images, &self.device)
    }

    /// The features of each image.
    pub fn encode(&self, images: &[RgbView<'_>]) -> Vec<ClipFeatures> {
        if images.is_empty() {
            return Vec::new();
        }
        self.features(self.pixels(images))
    }

    /// The features of an all-zero pixel tensor (after normalisation: the dataset mean's
    /// colour), the unconditional `hidden_states` of diffusers' `encode_image`
    /// (`torch.zeros_like(image)`) and of IP-Adapter-FaceID-Plus.
    pub fn unconditional(&self) -> ClipFeatures {
        let s = self.config().image_size;
        let zeros = Tensor::from_data(TensorData::zeros::<f32, _>([1, 3, s, s]), &self.device);
        self.features(zeros).pop().expect("one row in, one row out")
    }

    fn features(&self, pixels: Tensor<B, 4>) -> Vec<ClipFeatures> {
        let out = self.tower.forward(pixels);
        let [n, tokens, width] = out.penultimate_hidden_state.dims();
        let hidden: Vec<f32> = out.penultimate_hidden_state.to_f32_vec();
        let embeds: Option<(Vec<f32>, usize)> = out.embeds.map(|e| {
            let d = e.dims()[1];
            (e.to_f32_vec(), d)
        });
        (0..n)
            .map(|i| ClipFeatures {
                image_embeds: embeds.as_ref().map(|(v, d)| v[i * d..(i + 1) * d].to_vec()),
                hidden_states: hidden[i * tokens * width..(i + 1) * tokens * width].to_vec(),
                tokens,
                width,
            })
            .collect()
    }
}

/// The face networks and the image encoder a set of adapters needs, loaded once.
pub struct ReferenceEncoder<B: Backend> {
    faces: Option<FaceEmbedder<B>>,
    clip: Option<ImageEncoder<B>>,
}

impl<B: Backend> ReferenceEncoder<B> {
    /// From what was loaded: `faces` must embed with ArcFace (not face-api's descriptor) when
    /// faces are needed.
    pub fn new(faces: Option<FaceEmbedder<B>>, clip: Option<ImageEncoder<B>>) -> Self {
        Self { faces, clip }
    }

    /// The face networks, if loaded.
    pub fn faces(&self) -> Option<&FaceEmbedder<B>> {
        self.faces.as_ref()
    }

    /// The image encoder, if loaded.
    pub fn image_encoder(&self) -> Option<&ImageEncoder<B>> {
        self.clip.as_ref()
    }

    /// Length of the ArcFace embedding, if an ArcFace model is loaded.
    pub fn arcface_dim(&self) -> Option<usize> {
        self.faces
            .as_ref()
            .filter(|f| f.has_arcface())
            .map(FaceEmbedder::embedding_dim)
    }

    /// Checks that the loaded networks can compute `needs`.
    ///
    /// # Errors
    /// [`ModelError::Setting`] naming the missing network.
    pub fn check(&self, needs: &ReferenceNeeds) -> Result<(), ModelError> {
        if (needs.face || matches!(needs.clip, Some(ClipInput::FaceCrop(_))))
            && self.arcface_dim().is_none()
        {
            return Err(ModelError::Setting(
                "the reference faces need face-api's detector and an ArcFace ONNX model".into(),
            ));
        }
        if needs.clip.is_some() && self.clip.is_none() {
            return Err(ModelError::Setting(
                "the references need a CLIP image encoder".into(),
            ));
        }
        Ok(())
    }

    /// Encodes one decoded photo (`path` only names it in errors and the result).
    ///
    /// # Errors
    /// [`ModelError::NoFace`] when a face is needed and none is found; as [`Self::check`].
    pub fn encode(
        &self,
        image: RgbView<'_>,
        path: &Path,
        needs: &ReferenceNeeds,
    ) -> Result<Reference, ModelError> {
        self.check(needs)?;
        let face = match (
            needs.face || matches!(needs.clip, Some(ClipInput::FaceCrop(_))),
            &self.faces,
        ) {
            (true, Some(faces)) => Some(largest_face(faces, image, path)?),
            _ => None,
        };
        let clip = match (needs.clip, &self.clip) {
            (Some(ClipInput::WholeImage), Some(enc)) => enc.encode(&[image]).pop(),
            (Some(ClipInput::FaceCrop(channels)), Some(enc)) => {
                let crop = &face.as_ref().expect("computed above").crop;
                let data = match channels {
                    CropChannels::Rgb => crop.data.clone(),
                    CropChannels::Bgr => swap_red_blue(&crop.data),
                };
                let view = RgbView {
                    width: crop.size,
                    height: crop.size,
                    data: &data,
                };
                enc.encode(&[view]).pop()
            }
            _ => None,
        };
        Ok(Reference {
            path: path.to_path_buf(),
            face,
            clip,
        })
    }

    /// Reads, decodes (EXIF orientation applied) and encodes a photo.
    ///
    /// # Errors
    /// [`ModelError::Io`] / [`ModelError::Image`] naming the file; as [`Self::encode`].
    pub fn encode_file(
        &self,
        path: &Path,
        needs: &ReferenceNeeds,
    ) -> Result<Reference, ModelError> {
        let (width, height, rgb) = read_rgb(path)?;
        self.encode(
            RgbView {
                width,
                height,
                data: &rgb,
            },
            path,
            needs,
        )
    }
}

/// A photo file as RGB bytes (EXIF orientation applied): `(width, height, data)`.
///
/// # Errors
/// [`ModelError::Io`] when unreadable, [`ModelError::Image`] when not a decodable image.
pub fn read_rgb(path: &Path) -> Result<(usize, usize, Vec<u8>), ModelError> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let decoded =
        idforge_core::image_io::decode(&bytes, idforge_core::image_io::DEFAULT_MAX_PIXELS)
            .map_err(|e| ModelError::Image {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
    let rgb = decoded.image.to_rgb8();
    Ok((rgb.width() as usize, rgb.height() as usize, rgb.into_raw()))
}

/// The largest face with its embeddings and 224 px crop.
fn largest_face<B: Backend>(
    faces: &FaceEmbedder<B>,
    image: RgbView<'_>,
    path: &Path,
) -> Result<ReferenceFace, ModelError> {
    let no_face = || ModelError::NoFace {
        path: path.to_path_buf(),
    };
    let (face, normed_embedding) = faces.largest_face(image).ok_or_else(no_face)?;
    let landmarks = face.landmarks.as_deref().ok_or_else(no_face)?;
    let points = five_points_from_68(landmarks);
    let embedding = face.descriptor.clone().ok_or_else(no_face)?;
    Ok(ReferenceFace {
        crop: norm_crop(image, &points, FACE_CROP_SIZE),
        points,
        embedding,
        normed_embedding,
        face,
    })
}

/// RGB ↔ BGR.
fn swap_red_blue(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .flat_map(|p| [p[2], p[1], p[0]])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swapping_red_and_blue_twice_is_the_identity() {
        let px = [1u8, 2, 3, 4, 5, 6];
        assert_eq!(swap_red_blue(&px), [3, 2, 1, 6, 5, 4]);
        assert_eq!(swap_red_blue(&swap_red_blue(&px)), px);
    }

    #[test]
    fn missing_networks_are_named() {
        let enc = ReferenceEncoder::<burn::backend::Flex>::new(None, None);
        let face = ReferenceNeeds {
            face: true,
            clip: None,
        };
        assert!(
            enc.check(&face)
                .unwrap_err()
                .to_string()
                .contains("ArcFace")
        );
        let clip = ReferenceNeeds {
            face: false,
            clip: Some(ClipInput::WholeImage),
        };
        assert!(
            enc.check(&clip)
                .unwrap_err()
                .to_string()
                .contains("image encoder")
        );
        enc.check(&ReferenceNeeds::default()).unwrap();
    }
}
