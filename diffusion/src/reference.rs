//! What each identity adapter takes from reference photos, and its inputs built from
//! [`idforge_models::reference`]'s encoded references, so that generation, training and the
//! benchmark turn photos into adapter inputs the same way.
//!
//! IP-Adapter family (as diffusers' `prepare_ip_adapter_image_embeds` / `encode_image` and
//! IP-Adapter's `ip_adapter_faceid.py` do):
//!
//! | kind | input | unconditional |
//! |---|---|---|
//! | plain | CLIP `image_embeds` of the photo | zeros |
//! | Plus, full-face | CLIP `hidden_states[-2]` of the photo | `hidden_states[-2]` of zero pixels |
//! | FaceID | ArcFace embedding, L2-normalised | zeros |
//! | FaceID-Plus (V2) | the same, and CLIP `hidden_states[-2]` of the 224 px face crop | zeros, and `hidden_states[-2]` of zero pixels |
//!
//! Planned users of the same references (ported separately): PhotoMaker v2 takes the raw ArcFace
//! embedding ([`ReferenceFace::embedding`](idforge_models::reference::ReferenceFace)) and CLIP
//! pixels of the photo; the split-prompt adapter takes PhotoMaker's.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use idforge_models::reference::{
    ClipFeatures, ClipInput, CropChannels, Reference, ReferenceEncoder, ReferenceNeeds,
};

use crate::adapters::ip_adapter::{ProjectionInput, ProjectionSpec};
use crate::error::DiffusionError;

/// What an IP-Adapter of `spec` needs computed per reference; `crop` is the channel order of
/// FaceID-Plus's face crop (see [`CropChannels`]).
pub fn ip_adapter_needs(spec: &ProjectionSpec, crop: CropChannels) -> ReferenceNeeds {
    match spec {
        ProjectionSpec::Plain { .. }
        | ProjectionSpec::Plus { .. }
        | ProjectionSpec::FullFace { .. } => ReferenceNeeds {
            face: false,
            clip: Some(ClipInput::WholeImage),
        },
        ProjectionSpec::FaceId { .. } => ReferenceNeeds {
            face: true,
            clip: None,
        },
        ProjectionSpec::FaceIdPlus { .. } => ReferenceNeeds {
            face: true,
            clip: Some(ClipInput::FaceCrop(crop)),
        },
    }
}

/// The CLIP input width an adapter of `spec` takes, as `(what, width)`: `image_embeds` for
/// plain, the hidden states otherwise; `None` for FaceID.
pub fn ip_adapter_clip_width(spec: &ProjectionSpec) -> Option<(&'static str, usize)> {
    match *spec {
        ProjectionSpec::Plain { embed_dim, .. } => Some(("image_embeds", embed_dim)),
        ProjectionSpec::FullFace { hidden, .. } => Some(("hidden states", hidden)),
        ProjectionSpec::Plus { resampler, .. } | ProjectionSpec::FaceIdPlus { resampler, .. } => {
            Some(("hidden states", resampler.embedding_dim))
        }
        ProjectionSpec::FaceId { .. } => None,
    }
}

/// The ArcFace width an adapter of `spec` takes; `None` for the CLIP-only kinds.
pub fn ip_adapter_id_width(spec: &ProjectionSpec) -> Option<usize> {
    match *spec {
        ProjectionSpec::FaceId { id_dim, .. } | ProjectionSpec::FaceIdPlus { id_dim, .. } => {
            Some(id_dim)
        }
        _ => None,
    }
}

/// The published image encoder of a CLIP width, for messages.
fn encoder_hint(what: &str, width: usize) -> &'static str {
    match (what, width) {
        ("image_embeds", 1024) | ("hidden states", 1280) => {
            " (the SD 1.5 adapters and ip-adapter-plus*_sdxl_vit-h use OpenCLIP ViT-H/14: \
             h94/IP-Adapter models/image_encoder)"
        }
        ("image_embeds", 1280) | ("hidden states", 1664) => {
            " (ip-adapter_sdxl uses OpenCLIP ViT-bigG/14: h94/IP-Adapter sdxl_models/image_encoder)"
        }
        _ => "",
    }
}

/// Checks that `encoder` holds the networks an adapter of `spec` needs, with matching widths.
///
/// # Errors
/// [`DiffusionError::Setting`] naming the missing network or both widths.
pub fn check_ip_adapter_encoder<B: Backend>(
    spec: &ProjectionSpec,
    encoder: &ReferenceEncoder<B>,
    crop: CropChannels,
) -> Result<(), DiffusionError> {
    encoder
        .check(&ip_adapter_needs(spec, crop))
        .map_err(|e| DiffusionError::Setting(format!("{} adapter: {e}", spec.kind())))?;
    if let (Some(want), Some(have)) = (ip_adapter_id_width(spec), encoder.arcface_dim())
        && want != have
    {
        return Err(DiffusionError::Setting(format!(
            "the ArcFace model gives {have}-d embeddings, this {} adapter takes {want}-d \
             (insightface's buffalo_l w600k_r50.onnx gives 512)",
            spec.kind()
        )));
    }
    if let (Some((what, want)), Some(enc)) = (ip_adapter_clip_width(spec), encoder.image_encoder())
    {
        let have = match what {
            "image_embeds" => enc.projection_dim(),
            _ => Some(enc.hidden_size()),
        };
        if have != Some(want) {
            let have = have.map_or("no projection".to_string(), |h| format!("{h}-wide {what}"));
            return Err(DiffusionError::Setting(format!(
                "the image encoder {} gives {have}, this {} adapter takes {want}-wide {what}{}",
                enc.path().display(),
                spec.kind(),
                encoder_hint(what, want)
            )));
        }
    }
    Ok(())
}

/// The adapter's conditional and unconditional inputs from encoded references (one row per
/// reference, in order), as [`IpAdapter::pooled_tokens`](crate::adapters::ip_adapter::IpAdapter::pooled_tokens)
/// takes them. `unconditional` is [`ImageEncoder::unconditional`](idforge_models::reference::ImageEncoder::unconditional)'s
/// features (needed for the hidden-state kinds).
///
/// # Errors
/// [`DiffusionError::Setting`] when a reference lacks what the kind needs or widths differ.
pub fn ip_adapter_inputs<B: Backend>(
    spec: &ProjectionSpec,
    references: &[Reference],
    unconditional: Option<&ClipFeatures>,
    device: &B::Device,
) -> Result<(ProjectionInput<B>, ProjectionInput<B>), DiffusionError> {
    let n = references.len();
    if n == 0 {
        return Err(DiffusionError::Setting("no reference image".into()));
    }
    let missing = |what: &str, r: &Reference| {
        DiffusionError::Setting(format!(
            "{}: no {what} computed for this {} adapter",
            r.path.display(),
            spec.kind()
        ))
    };
    let mut pos = ProjectionInput::<B> {
        image_embeds: None,
        hidden_states: None,
        id_embeds: None,
    };
    let mut neg = pos.clone();
    if let Some(want) = ip_adapter_id_width(spec) {
        let mut values = Vec::with_capacity(n * want);
        for r in references {
            let face = r.face.as_ref().ok_or_else(|| missing("face", r))?;
            if face.normed_embedding.len() != want {
                return Err(DiffusionError::Setting(format!(
                    "{}: a {}-d ArcFace embedding, this {} adapter takes {want}-d",
                    r.path.display(),
                    face.normed_embedding.len(),
                    spec.kind()
                )));
            }
            values.extend_from_slice(&face.normed_embedding);
        }
        let t = Tensor::<B, 2>::from_data(TensorData::new(values, [n, want]), device);
        neg.id_embeds = Some(t.zeros_like());
        pos.id_embeds = Some(t);
    }
    if let Some((what, want)) = ip_adapter_clip_width(spec) {
        let features: Vec<&ClipFeatures> = references
            .iter()
            .map(|r| r.clip.as_ref().ok_or_else(|| missing("CLIP features", r)))
            .collect::<Result<_, _>>()?;
        if what == "image_embeds" {
            let mut values = Vec::with_capacity(n * want);
            for (r, f) in references.iter().zip(&features) {
                let e = f
                    .image_embeds
                    .as_ref()
                    .ok_or_else(|| missing("CLIP image_embeds", r))?;
                if e.len() != want {
                    return Err(width_error(spec, what, e.len(), want));
                }
                values.extend_from_slice(e);
            }
            let t = Tensor::<B, 2>::from_data(TensorData::new(values, [n, want]), device);
            neg.image_embeds = Some(t.zeros_like());
            pos.image_embeds = Some(t);
        } else {
            let uncond = unconditional.ok_or_else(|| {
                DiffusionError::Setting(format!(
                    "this {} adapter needs the image encoder's unconditional hidden states",
                    spec.kind()
                ))
            })?;
            let (tokens, width) = (uncond.tokens, uncond.width);
            if width != want {
                return Err(width_error(spec, what, width, want));
            }
            let mut values = Vec::with_capacity(n * tokens * width);
            for f in &features {
                if (f.tokens, f.width) != (tokens, width) {
                    return Err(width_error(spec, what, f.width, want));
                }
                values.extend_from_slice(&f.hidden_states);
            }
            let negative: Vec<f32> = (0..n)
                .flat_map(|_| uncond.hidden_states.iter().copied())
                .collect();
            pos.hidden_states = Some(Tensor::from_data(
                TensorData::new(values, [n, tokens, width]),
                device,
            ));
            neg.hidden_states = Some(Tensor::from_data(
                TensorData::new(negative, [n, tokens, width]),
                device,
            ));
        }
    }
    Ok((pos, neg))
}

fn width_error(spec: &ProjectionSpec, what: &str, have: usize, want: usize) -> DiffusionError {
    DiffusionError::Setting(format!(
        "the image encoder gives {have}-wide {what}, this {} adapter takes {want}{}",
        spec.kind(),
        encoder_hint(what, want)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::ip_adapter::projection::ResamplerShape;
    use burn::backend::Flex;
    use idforge_models::face_align::AlignedFace;
    use idforge_models::face_api::{Detection, Face};
    use idforge_models::reference::ReferenceFace;

    fn face(e: Vec<f32>) -> ReferenceFace {
        ReferenceFace {
            face: Face {
                detection: Detection {
                    score: 0.9,
                    x: 0.0,
                    y: 0.0,
                    width: 1.0,
                    height: 1.0,
                },
                landmarks: None,
                aligned_crop: None,
                descriptor: None,
            },
            points: [(0.0, 0.0); 5],
            normed_embedding: e.clone(),
            embedding: e,
            crop: AlignedFace {
                matrix: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                size: 1,
                data: vec![0; 3],
            },
        }
    }

    fn resampler(embedding_dim: usize) -> ResamplerShape {
        ResamplerShape {
            embedding_dim,
            dim: 8,
            output_dim: 8,
            heads: 1,
            head_dim: 8,
            depth: 1,
        }
    }

    #[test]
    fn each_kind_asks_for_its_inputs() {
        let faceid = ProjectionSpec::FaceId {
            id_dim: 4,
            mlp: 8,
            tokens: 2,
            cross: 8,
        };
        assert_eq!(
            ip_adapter_needs(&faceid, CropChannels::Bgr),
            ReferenceNeeds {
                face: true,
                clip: None
            }
        );
        let plus = ProjectionSpec::FaceIdPlus {
            id_dim: 4,
            mlp: 8,
            tokens: 2,
            resampler: resampler(16),
        };
        assert_eq!(
            ip_adapter_needs(&plus, CropChannels::Rgb).clip,
            Some(ClipInput::FaceCrop(CropChannels::Rgb))
        );
        assert_eq!(ip_adapter_clip_width(&plus), Some(("hidden states", 16)));
        let plain = ProjectionSpec::Plain {
            embed_dim: 1024,
            tokens: 4,
            cross: 768,
        };
        assert_eq!(
            ip_adapter_needs(&plain, CropChannels::Bgr).clip,
            Some(ClipInput::WholeImage)
        );
        assert!(
            width_error(&plain, "image_embeds", 1280, 1024)
                .to_string()
                .contains("ViT-H/14")
        );
    }

    #[test]
    fn faceid_inputs_are_the_normed_embeddings_and_zeros() {
        let spec = ProjectionSpec::FaceId {
            id_dim: 2,
            mlp: 8,
            tokens: 2,
            cross: 8,
        };
        let refs = vec![
            Reference {
                path: "a.jpg".into(),
                face: Some(face(vec![0.6, 0.8])),
                clip: None,
            },
            Reference {
                path: "b.jpg".into(),
                face: Some(face(vec![1.0, 0.0])),
                clip: None,
            },
        ];
        let (pos, neg) =
            ip_adapter_inputs::<Flex>(&spec, &refs, None, &Default::default()).unwrap();
        let p: Vec<f32> = pos.id_embeds.unwrap().into_data().to_vec().unwrap();
        assert_eq!(p, [0.6, 0.8, 1.0, 0.0]);
        let z: Vec<f32> = neg.id_embeds.unwrap().into_data().to_vec().unwrap();
        assert_eq!(z, [0.0; 4]);
        let short = vec![Reference {
            path: "c.jpg".into(),
            face: Some(face(vec![1.0, 0.0, 0.0])),
            clip: None,
        }];
        let err = ip_adapter_inputs::<Flex>(&spec, &short, None, &Default::default()).unwrap_err();
        assert!(
            err.to_string().contains("c.jpg") && err.to_string().contains("3-d"),
            "{err}"
        );
    }
}
