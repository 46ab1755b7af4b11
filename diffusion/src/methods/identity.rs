//! An identity's inputs for the loaded adapters: from reference photos, or from precomputed
//! embedding files.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use idforge_models::WeightStore;
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::readback::ReadBack;
use idforge_models::reference::{ImageEncoder, read_rgb};

use super::error::{MethodError, ResultExt, invalid};
use super::{MAX_REFERENCES, Method};
use crate::adapters::ip_adapter::{ProjectionInput, ProjectionSpec};
use crate::adapters::photomaker::Version;
use crate::reference::{ip_adapter_clip_width, ip_adapter_id_width, ip_adapter_inputs};

/// An identity's inputs, ready for the loaded adapters.
#[derive(Debug, Clone)]
pub enum Identity<B: Backend> {
    /// No identity (text only, or the split-prompt adapter alone).
    None,
    /// IP-Adapter projection inputs: conditional and unconditional rows.
    IpAdapter {
        /// The references' inputs.
        pos: ProjectionInput<B>,
        /// The unconditional inputs.
        neg: ProjectionInput<B>,
    },
    /// PhotoMaker: CLIP-preprocessed photos and, for v2, their raw ArcFace embeddings.
    PhotoMaker {
        /// `[refs, 3, size, size]`
        pixels: Tensor<B, 4>,
        /// `[refs, 512]`, v2 only.
        id_embeds: Option<Tensor<B, 2>>,
    },
}

impl<B: Backend> Method<B> {
    /// The identity's inputs from reference photos, each photo described in the log when
    /// `verbose`. `id_embeds` gives PhotoMaker v2's ArcFace embeddings instead of --arcface;
    /// `save_inputs` writes the IP-Adapter inputs for --id-embeds / --image-embeds.
    pub fn identity_from_photos(
        &self,
        photos: &[PathBuf],
        id_embeds: Option<&Path>,
        save_inputs: Option<&Path>,
        verbose: bool,
    ) -> Result<Identity<B>, MethodError> {
        let n = photos.len();
        if !(1..=MAX_REFERENCES).contains(&n) {
            invalid!("--ref: give 1 to {MAX_REFERENCES} reference photos ({n} given)");
        }
        for p in photos {
            if !p.is_file() {
                invalid!("--ref {}: no such file", p.display());
            }
        }
        let not_loaded = || MethodError::Invalid("the reference networks were not loaded".into());
        let device = self.pipe.device();
        if let Some((_, spec)) = &self.ip {
            let encoder = self.encoder.as_ref().ok_or_else(not_loaded)?;
            let mut references = Vec::with_capacity(n);
            for path in photos {
                let r = encoder
                    .encode_file(path, &self.needs)
                    .ctx(|| format!("--ref {}", path.display()))?;
                if verbose {
                    self.options.note(&self.describe_reference(&r));
                }
                references.push(r);
            }
            let uncond = encoder.image_encoder().map(ImageEncoder::unconditional);
            let (pos, neg) = ip_adapter_inputs(spec, &references, uncond.as_ref(), device)?;
            if let Some(out) = save_inputs {
                save_projection_inputs(out, &pos, &neg)?;
                self.options
                    .note(&format!("adapter inputs written to {}", out.display()));
            }
            return Ok(Identity::IpAdapter { pos, neg });
        }
        let Some(pm) = &self.photomaker else {
            return Ok(Identity::None);
        };
        let mut images = Vec::with_capacity(n);
        let mut raw = Vec::new();
        for path in photos {
            let (width, height, rgb) =
                read_rgb(path).ctx(|| format!("--ref {}", path.display()))?;
            if self.needs.face {
                let encoder = self.encoder.as_ref().ok_or_else(not_loaded)?;
                let view = RgbView {
                    width,
                    height,
                    data: &rgb,
                };
                let r = encoder
                    .encode(view, path, &self.needs)
                    .ctx(|| format!("--ref {}", path.display()))?;
                let Some(face) = r.face.as_ref() else {
                    invalid!(
                        "--ref {}: no face found for the ArcFace embedding",
                        path.display()
                    );
                };
                if verbose {
                    self.options.note(&self.describe_reference(&r));
                }
                raw.extend_from_slice(&face.embedding);
            } else if verbose {
                self.options.note(&format!(
                    "reference {}: the whole photo ({width}x{height}) to PhotoMaker's CLIP",
                    path.display()
                ));
            }
            images.push((width, height, rgb));
        }
        let views: Vec<RgbView<'_>> = images
            .iter()
            .map(|(width, height, data)| RgbView {
                width: *width,
                height: *height,
                data,
            })
            .collect();
        let pixels = pm.preprocess(&views, device);
        let id_embeds = match pm.version() {
            Version::V1 => {
                if id_embeds.is_some() || self.options.arcface.is_some() {
                    self.options.note(
                        "note: photomaker-v1 takes no ArcFace embedding; --arcface / --id-embeds \
                         are not used",
                    );
                }
                None
            }
            Version::V2 => {
                let want = pm.spec().qformer.map_or(512, |q| q.id_dim);
                let e = match id_embeds {
                    Some(file) => read_id_embeds(file, device)?,
                    None if !raw.is_empty() => {
                        let width = raw.len() / n;
                        Tensor::from_data(TensorData::new(raw, [n, width]), device)
                    }
                    None => invalid!(
                        "--adapter is photomaker-v2, which takes the ArcFace embedding of each \
                         reference face: pass --arcface with an ArcFace ONNX model \
                         (insightface's buffalo_l w600k_r50.onnx), or the embeddings with \
                         --id-embeds"
                    ),
                };
                let [rows, width] = e.dims();
                if width != want {
                    invalid!(
                        "the ArcFace embeddings are {width} wide, photomaker-v2 takes {want} \
                         (insightface's buffalo_l w600k_r50.onnx gives 512)"
                    );
                }
                if rows != n {
                    invalid!(
                        "--id-embeds holds {rows} embeddings for {n} --ref photos: give one per \
                         photo, in order"
                    );
                }
                Some(e)
            }
        };
        Ok(Identity::PhotoMaker { pixels, id_embeds })
    }

    /// The IP-Adapter inputs from precomputed `--image-embeds` / `--id-embeds` files, their
    /// widths checked against the adapter's projection.
    pub fn identity_from_embeds(
        &self,
        image_embeds: Option<&Path>,
        id_embeds: Option<&Path>,
    ) -> Result<Identity<B>, MethodError> {
        let Some((_, spec)) = &self.ip else {
            invalid!("--image-embeds / --id-embeds feed an IP-Adapter file; PhotoMaker takes --ref")
        };
        let device = self.pipe.device();
        if image_embeds.is_none() && id_embeds.is_none() {
            invalid!(
                "--adapter needs its input: reference photos (--ref face.jpg, with --arcface for \
                 the FaceID kinds and --image-encoder for the CLIP ones), or precomputed \
                 --id-embeds (an ArcFace embedding) and/or --image-embeds (CLIP image_embeds or \
                 hidden_states)"
            );
        }
        let mut pos = ProjectionInput {
            image_embeds: None,
            hidden_states: None,
            id_embeds: None,
        };
        let mut neg = pos.clone();
        let kind = spec.kind();
        if let Some(path) = image_embeds {
            let store = WeightStore::open(path)
                .ctx(|| format!("reading --image-embeds {}", path.display()))?;
            let clip = ip_adapter_clip_width(spec);
            let check = |what: &str, width: usize| -> Result<(), MethodError> {
                match clip {
                    Some((w, want)) if w == what && want != width => invalid!(
                        "--image-embeds {}: `{what}` is {width} wide, the {kind} adapter takes \
                         {want}-wide {what}",
                        path.display()
                    ),
                    Some((w, _)) if w != what => invalid!(
                        "--image-embeds {}: the {kind} adapter takes {w}, not `{what}`",
                        path.display()
                    ),
                    None => invalid!(
                        "--image-embeds {}: the {kind} adapter takes no CLIP features; give \
                         --id-embeds",
                        path.display()
                    ),
                    _ => Ok(()),
                }
            };
            if store.contains("image_embeds") {
                let e = rows::<B, 2>(&store, "image_embeds", path, device)?;
                check("image_embeds", e.dims()[1])?;
                neg.image_embeds = Some(e.zeros_like());
                pos.image_embeds = Some(e);
            }
            if store.contains("hidden_states") {
                let h = rows::<B, 3>(&store, "hidden_states", path, device)?;
                check("hidden states", h.dims()[2])?;
                neg.hidden_states = Some(if store.contains("negative_hidden_states") {
                    rows::<B, 3>(&store, "negative_hidden_states", path, device)?
                } else {
                    h.zeros_like()
                });
                pos.hidden_states = Some(h);
            }
            if pos.image_embeds.is_none() && pos.hidden_states.is_none() {
                invalid!(
                    "--image-embeds {}: no `image_embeds` or `hidden_states` tensor",
                    path.display()
                );
            }
        }
        if let Some(path) = id_embeds {
            let e = read_id_embeds(path, device)?;
            let width = e.dims()[1];
            match ip_adapter_id_width(spec) {
                Some(want) if want != width => invalid!(
                    "--id-embeds {}: the embeddings are {width} wide, the {kind} adapter takes \
                     {want} (insightface's buffalo_l w600k_r50.onnx gives 512)",
                    path.display()
                ),
                None => invalid!(
                    "--id-embeds {}: the {kind} adapter takes no ArcFace embedding; give \
                     --image-embeds or --ref",
                    path.display()
                ),
                _ => {}
            }
            neg.id_embeds = Some(e.zeros_like());
            pos.id_embeds = Some(e);
        }
        if let ProjectionSpec::FaceIdPlus { .. } = spec
            && (pos.id_embeds.is_none() || pos.hidden_states.is_none())
        {
            invalid!(
                "the {kind} adapter takes both --id-embeds (ArcFace) and --image-embeds \
                 (`hidden_states` of the face crop)"
            );
        }
        if let ProjectionSpec::FaceId { .. } = spec
            && pos.id_embeds.is_none()
        {
            invalid!("the {kind} adapter takes --id-embeds (an ArcFace embedding)");
        }
        Ok(Identity::IpAdapter { pos, neg })
    }
}

/// `id_embeds` (or the only tensor) of a `.safetensors` file, as `[refs, width]`.
fn read_id_embeds<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<Tensor<B, 2>, MethodError> {
    let store =
        WeightStore::open(path).ctx(|| format!("reading --id-embeds {}", path.display()))?;
    let name = if store.contains("id_embeds") {
        "id_embeds".to_string()
    } else {
        let names: Vec<String> = store.names().map(str::to_string).collect();
        match names.as_slice() {
            [only] => only.clone(),
            _ => invalid!(
                "--id-embeds {}: no `id_embeds` tensor and {} others; name it id_embeds",
                path.display(),
                names.len()
            ),
        }
    };
    rows::<B, 2>(&store, &name, path, device)
}

/// Writes the inputs as `.safetensors` in the names --id-embeds / --image-embeds read.
fn save_projection_inputs<B: Backend>(
    path: &Path,
    pos: &ProjectionInput<B>,
    neg: &ProjectionInput<B>,
) -> Result<(), MethodError> {
    fn entry<B: Backend, const D: usize>(
        name: &str,
        t: &Tensor<B, D>,
    ) -> (String, Vec<usize>, Vec<u8>) {
        let values: Vec<f32> = t.clone().to_f32_vec();
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        (name.to_string(), t.dims().to_vec(), bytes)
    }
    let mut entries = Vec::new();
    if let Some(t) = &pos.id_embeds {
        entries.push(entry("id_embeds", t));
    }
    if let Some(t) = &pos.image_embeds {
        entries.push(entry("image_embeds", t));
    }
    if let Some(t) = &pos.hidden_states {
        entries.push(entry("hidden_states", t));
    }
    if let Some(t) = &neg.hidden_states {
        entries.push(entry("negative_hidden_states", t));
    }
    let views = entries
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .ctx(|| "building the safetensors of --save-inputs")?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
    }
    safetensors::serialize_to_file(views, None, path)
        .ctx(|| format!("writing --save-inputs {}", path.display()))
}

/// A tensor whose last `D - 1` axes are kept and every leading axis becomes references.
fn rows<B: Backend, const D: usize>(
    store: &WeightStore,
    name: &str,
    path: &Path,
    device: &B::Device,
) -> Result<Tensor<B, D>, MethodError> {
    let (shape, values) = store
        .read_f32(name)
        .ctx(|| format!("{}: reading `{name}`", path.display()))?;
    if shape.len() < D - 1 || values.is_empty() {
        invalid!(
            "{}: `{name}` has shape {shape:?}; expected [references, …] with {} trailing axes",
            path.display(),
            D - 1
        );
    }
    let tail = &shape[shape.len() + 1 - D..];
    let mut dims = [0usize; D];
    dims[1..].copy_from_slice(tail);
    dims[0] = values.len() / tail.iter().product::<usize>();
    Ok(Tensor::from_data(TensorData::new(values, dims), device))
}
