//! The identity methods `idforge generate`, `idforge bench generate` and the trainer's periodic
//! samples run, in one place: an adapter file's kind from its keys, the adapters loaded once on
//! a pipeline, an identity's inputs from reference photos (or precomputed embeddings), and
//! images from settings, prompts and initial noise. All three call [`Method::render`] (or its
//! batched form [`Method::render_batch`]), so a benchmark image or a training sample is the image
//! `generate` makes with the same settings.
//!
//! Kinds (detected as diffusers does, from the keys):
//! - IP-Adapter family (`image_proj.*`): plain, Plus, full-face, FaceID, FaceID-Plus;
//! - PhotoMaker v1 / v2 (`id_encoder.*`; v2 holds `id_encoder.qformer_perceiver.*`);
//! - the split-prompt adapter (`split_prompt.*`, or persongen's `adapter_modules.*`), alone or
//!   with a PhotoMaker file for the identity, as persongen's `ipmakerbgbody`;
//! - none: the base model with the prompt alone (the text-only baseline).
//!
//! Errors are [`MethodError`]s whose messages name the CLI flag at fault (`--adapter`, `--ref`,
//! `--arcface`, …); other callers map the flags to their own settings.

mod error;
mod identity;
mod kind;
mod render;

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use idforge_models::face_api::Detector;
use idforge_models::face_embedder::{FaceEmbedder, embedder_name};
use idforge_models::reference::{
    ClipInput, CropChannels, ImageEncoder, Reference, ReferenceEncoder, ReferenceNeeds,
};

pub use error::MethodError;
use error::{ResultExt, invalid};
pub use identity::Identity;
pub use kind::{AdapterKind, adapter_kinds};
pub use render::{BatchItem, RenderSettings};

use crate::adapters::ip_adapter::{IpAdapter, ProjectionSpec, ReferencePooling};
use crate::adapters::photomaker::{IdEncoderOptions, PhotoMaker, Version};
use crate::adapters::split_prompt::SplitPrompt;
use crate::reference::{check_ip_adapter_encoder, ip_adapter_clip_width, ip_adapter_needs};
use crate::{Family, Pipeline};

/// At most this many reference photos (IP-Adapter's multi-image demos and PhotoMaker use up
/// to 4).
pub const MAX_REFERENCES: usize = 4;

/// PhotoMaker's `start_merge_step` when none is given: a fifth of the steps (the demo's style
/// strength of 20 %, the reference's 10 of 50).
pub fn default_start_merge_step(steps: usize) -> usize {
    steps / 5
}

/// Everything besides the base model that decides which method runs and how identities are
/// read: the adapter files and the networks for reference photos.
#[derive(Debug, Clone, Default)]
pub struct MethodOptions {
    /// Adapter files: none (text only), one, or a PhotoMaker file and a split-prompt file.
    pub adapters: Vec<PathBuf>,
    /// An ArcFace ONNX model for the reference faces (FaceID kinds, PhotoMaker v2).
    pub arcface: Option<PathBuf>,
    /// diffusers' `image_encoder/` folder for the IP-Adapter CLIP kinds.
    pub image_encoder: Option<PathBuf>,
    /// face-api's model folder (default: the asset cache's).
    pub face_api_weights: Option<PathBuf>,
    /// FaceID-Plus's face-crop channel order.
    pub crop: Option<CropChannels>,
    /// FaceID-Plus V2's shortcut.
    pub plus_v2: bool,
    /// How IP-Adapter references combine.
    pub pooling: Option<ReferencePooling>,
    /// PhotoMaker's trigger word (default `img`).
    pub trigger: Option<String>,
    /// PhotoMaker ID-encoder head widths for checkpoints other than the published ones.
    pub id_encoder_heads: Option<IdEncoderOptions>,
    /// Where notes go (what loaded, which flag is unused): the CLI prints them to stderr;
    /// `None` drops them (the trainer's samples).
    pub log: Option<fn(&str)>,
}

impl MethodOptions {
    fn note(&self, message: &str) {
        if let Some(log) = self.log {
            log(message);
        }
    }
}

/// The adapters of a method, loaded on one pipeline, and the networks that read its
/// identities' photos.
pub struct Method<B: Backend> {
    /// The base model.
    pub pipe: Pipeline<B>,
    ip: Option<(IpAdapter<B>, ProjectionSpec)>,
    photomaker: Option<PhotoMaker<B>>,
    split: Option<SplitPrompt<B>>,
    options: MethodOptions,
    encoder: Option<ReferenceEncoder<B>>,
    needs: ReferenceNeeds,
}

impl<B: Backend> Method<B> {
    /// Checks the adapters and the networks their identities need (`with_photos`: identities
    /// come from reference photos), then loads the networks, the pipeline of `model` and the
    /// adapters on it.
    pub fn load(
        model: &Path,
        options: MethodOptions,
        device: &B::Device,
        with_photos: bool,
    ) -> Result<Self, MethodError> {
        let load = || {
            Pipeline::<B>::load(model, device)
                .ctx(|| format!("loading the diffusers pipeline in {}", model.display()))
        };
        Self::load_on(model, load, options, device, with_photos)
    }

    /// [`Method::load`] on a pipeline already loaded from `model`: the trainer renders its
    /// samples on the base model it trains on.
    pub fn with_pipeline(
        model: &Path,
        pipe: Pipeline<B>,
        options: MethodOptions,
        device: &B::Device,
        with_photos: bool,
    ) -> Result<Self, MethodError> {
        Self::load_on(model, || Ok(pipe), options, device, with_photos)
    }

    fn load_on(
        model: &Path,
        load: impl FnOnce() -> Result<Pipeline<B>, MethodError>,
        options: MethodOptions,
        device: &B::Device,
        with_photos: bool,
    ) -> Result<Self, MethodError> {
        let kinds = adapter_kinds(&options.adapters)?;
        for (path, kind) in &kinds {
            options.note(&format!("adapter {}: {}", path.display(), kind.name()));
        }
        let mut needs = ReferenceNeeds {
            face: false,
            clip: None,
        };
        let crop = options.crop.unwrap_or(CropChannels::Bgr);
        for (_, kind) in &kinds {
            match kind {
                AdapterKind::IpAdapter(spec) => needs = ip_adapter_needs(spec, crop),
                AdapterKind::PhotoMaker(Version::V2) => {
                    needs.face = with_photos && options.arcface.is_some()
                }
                _ => {}
            }
        }
        let encoder = if with_photos {
            Some(reference_encoder(&options, &kinds, &needs, device)?)
        } else {
            None
        };
        let started = std::time::Instant::now();
        let pipe = load()?;
        options.note(&format!(
            "loaded {} ({:?}) in {:.1} s",
            model.display(),
            pipe.family,
            started.elapsed().as_secs_f64()
        ));
        let family = pipe.family;
        let wrong_base = |path: &Path| {
            format!(
                "loading --adapter {} for the {:?} model {}: pass the adapter made for this base \
                 model, or the --model it was made for",
                path.display(),
                family,
                model.display()
            )
        };
        let mut method = Self {
            ip: None,
            photomaker: None,
            split: None,
            encoder,
            needs,
            pipe,
            options,
        };
        for (path, kind) in kinds {
            match kind {
                AdapterKind::IpAdapter(spec) => {
                    let mut a = IpAdapter::load(&path, &method.pipe.unet, device)
                        .ctx(|| wrong_base(&path))?;
                    a.set_shortcut(method.options.plus_v2, 1.0);
                    method.ip = Some((a, spec));
                }
                AdapterKind::PhotoMaker(_) => {
                    if method.pipe.family != Family::StableDiffusionXl {
                        invalid!(
                            "--adapter {} is PhotoMaker, made for SDXL; --model {} is {:?}: \
                             give an SDXL pipeline",
                            path.display(),
                            model.display(),
                            method.pipe.family
                        );
                    }
                    let heads = method.options.id_encoder_heads.unwrap_or_default();
                    let mut pm = PhotoMaker::load_with(&path, &method.pipe, &heads, device)
                        .ctx(|| wrong_base(&path))?;
                    if let Some(t) = &method.options.trigger {
                        pm = pm.with_trigger(t);
                    }
                    method.photomaker = Some(pm);
                }
                AdapterKind::SplitPrompt => {
                    if method.pipe.family != Family::StableDiffusionXl {
                        invalid!(
                            "--adapter {} is the split-prompt adapter, made for SDXL; --model {} \
                             is {:?}: give an SDXL pipeline",
                            path.display(),
                            model.display(),
                            method.pipe.family
                        );
                    }
                    method.split = Some(
                        SplitPrompt::load(&path, &method.pipe.unet, device)
                            .ctx(|| wrong_base(&path))?,
                    );
                }
            }
        }
        Ok(method)
    }

    /// Whether the method conditions on an identity (an IP-Adapter or PhotoMaker file).
    pub fn takes_identity(&self) -> bool {
        self.ip.is_some() || self.photomaker.is_some()
    }

    /// One line saying what was taken from a reference and by which network.
    fn describe_reference(&self, r: &Reference) -> String {
        let mut parts = vec![format!("reference {}", r.path.display())];
        if let Some(f) = &r.face {
            let d = &f.face.detection;
            parts.push(format!(
                "face [{:.0}, {:.0}, {:.0}, {:.0}] score {:.2}",
                d.x,
                d.y,
                d.x + d.width,
                d.y + d.height,
                d.score
            ));
            if let Some(onnx) = &self.options.arcface {
                let raw = self.photomaker.is_some();
                let e = if raw {
                    &f.embedding
                } else {
                    &f.normed_embedding
                };
                let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt();
                parts.push(format!(
                    "{} {}-d embedding (norm {norm:.2}, {})",
                    embedder_name(Some(onnx)),
                    f.embedding.len(),
                    if raw { "raw" } else { "normalised" }
                ));
            }
        }
        if let (Some(c), Some(dir)) = (&r.clip, &self.options.image_encoder) {
            let seen = match self.needs.clip {
                Some(ClipInput::FaceCrop(CropChannels::Bgr)) => "the 224 px face crop (BGR)",
                Some(ClipInput::FaceCrop(CropChannels::Rgb)) => "the 224 px face crop (RGB)",
                _ => "the photo",
            };
            parts.push(format!(
                "CLIP {} of {seen}: hidden states {}x{}{}",
                dir.display(),
                c.tokens,
                c.width,
                c.image_embeds
                    .as_ref()
                    .map_or(String::new(), |e| format!(", image_embeds {}", e.len()))
            ));
        }
        parts.join("; ")
    }
}

/// face-api's model folder: the given one, else the asset cache's.
fn face_api_models(given: Option<PathBuf>) -> Result<PathBuf, MethodError> {
    match given {
        Some(d) => Ok(d),
        None => match idforge_core::cache::face_api_dir_if_fetched() {
            Some(d) => Ok(d.join("model")),
            None => invalid!(
                "the face-api weights are not in the asset cache: run `make assets` \
                 (or tools/fetch-assets), or give face-api's model folder (--weights; \
                 --face-api-weights for `bench score`)"
            ),
        },
    }
}

/// The networks that read reference photos for `kinds`, after checking the flags name them.
fn reference_encoder<B: Backend>(
    options: &MethodOptions,
    kinds: &[(PathBuf, AdapterKind)],
    needs: &ReferenceNeeds,
    device: &B::Device,
) -> Result<ReferenceEncoder<B>, MethodError> {
    let crop = options.crop.unwrap_or(CropChannels::Bgr);
    let spec = kinds.iter().find_map(|(_, k)| match k {
        AdapterKind::IpAdapter(s) => Some(s),
        _ => None,
    });
    let face_needed = needs.face || matches!(needs.clip, Some(ClipInput::FaceCrop(_)));
    if let Some(spec) = spec {
        let kind = spec.kind();
        if face_needed && options.arcface.is_none() {
            invalid!(
                "--adapter is {kind}, which takes the ArcFace embedding of the reference face: \
                 pass --arcface with an ArcFace ONNX model (insightface's buffalo_l \
                 w600k_r50.onnx), or give the embedding with --id-embeds instead of --ref"
            );
        }
        if let (Some(_), None) = (needs.clip, &options.image_encoder) {
            let (what, width) = ip_adapter_clip_width(spec).unwrap_or(("features", 0));
            invalid!(
                "--adapter is {kind}, which takes CLIP {what} ({width} wide) of the reference{}: \
                 pass --image-encoder with diffusers' image_encoder/ folder \
                 (CLIPVisionModelWithProjection: config.json + model.safetensors; ViT-H/14 for \
                 the SD 1.5 adapters), or give the features with --image-embeds instead of --ref",
                if face_needed {
                    "'s face crop"
                } else {
                    " photo"
                }
            );
        }
        if !face_needed && options.arcface.is_some() {
            options.note(&format!(
                "note: {kind} takes no ArcFace embedding; --arcface is not used"
            ));
        }
        if needs.clip.is_none() && options.image_encoder.is_some() {
            options.note(&format!(
                "note: {kind} takes no CLIP features; --image-encoder is not used"
            ));
        }
    } else if options.image_encoder.is_some() {
        options.note("note: PhotoMaker brings its own CLIP encoder; --image-encoder is not used");
    }
    let faces = if face_needed {
        let dir = face_api_models(options.face_api_weights.clone())?;
        Some(
            FaceEmbedder::<B>::load(
                &dir,
                Detector::default(),
                options.arcface.as_deref(),
                device,
            )
            .ctx(|| {
                format!(
                    "loading face-api from {} and --arcface {}",
                    dir.display(),
                    options
                        .arcface
                        .as_deref()
                        .unwrap_or(Path::new(""))
                        .display()
                )
            })?,
        )
    } else {
        None
    };
    let clip = match (&needs.clip, &options.image_encoder) {
        (Some(_), Some(dir)) => Some(
            ImageEncoder::load(dir, device)
                .ctx(|| format!("loading --image-encoder {}", dir.display()))?,
        ),
        _ => None,
    };
    let encoder = ReferenceEncoder::new(faces, clip);
    if let Some(spec) = spec {
        check_ip_adapter_encoder(spec, &encoder, crop)
            .ctx(|| "--arcface / --image-encoder do not fit --adapter")?;
    }
    Ok(encoder)
}
