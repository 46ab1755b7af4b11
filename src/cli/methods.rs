//! The identity methods `idforge generate` and `idforge bench generate` run, in one place: an
//! adapter file's kind from its keys, the adapters loaded once on a pipeline, an identity's
//! inputs from reference photos (or precomputed embeddings), and one image from settings, a
//! prompt and initial noise. Both commands call [`Method::render`], so a benchmark image is the
//! image `generate` makes with the same settings.
//!
//! Kinds (detected as diffusers does, from the keys):
//! - IP-Adapter family (`image_proj.*`): plain, Plus, full-face, FaceID, FaceID-Plus;
//! - PhotoMaker v1 / v2 (`id_encoder.*`; v2 holds `id_encoder.qformer_perceiver.*`);
//! - the split-prompt adapter (`split_prompt.*`, or persongen's `adapter_modules.*`), alone or
//!   with a PhotoMaker file for the identity, as persongen's `ipmakerbgbody`;
//! - none: the base model with the prompt alone (the text-only baseline).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::tensor::{Device, Tensor, TensorData};
use idforge_diffusion::adapters::ip_adapter::{
    IpAdapter, IpScale, ProjectionInput, ProjectionSpec, ReferencePooling,
};
use idforge_diffusion::adapters::photomaker::{IdEncoderOptions, PhotoMaker, Version};
use idforge_diffusion::adapters::split_prompt::{
    self, SplitPrompt, SplitPrompts, SplitScale, encode_split_prompt,
};
use idforge_diffusion::pipeline::to_rgb8;
use idforge_diffusion::reference::{
    check_ip_adapter_encoder, ip_adapter_clip_width, ip_adapter_id_width, ip_adapter_inputs,
    ip_adapter_needs,
};
use idforge_diffusion::{
    AttentionHook, Conditioning, Family, Hooks, Pipeline, SampleSettings, SamplerKind, StepInputs,
    SwitchAt,
};
use idforge_models::WeightStore;
use idforge_models::face_api::Detector;
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::face_embedder::{FaceEmbedder, embedder_name};
use idforge_models::readback::ReadBack;
use idforge_models::reference::{
    ClipInput, CropChannels, ImageEncoder, Reference, ReferenceEncoder, ReferenceNeeds, read_rgb,
};

use super::device::Backend;

/// At most this many reference photos (IP-Adapter's multi-image demos and PhotoMaker use up
/// to 4).
pub const MAX_REFERENCES: usize = 4;

/// PhotoMaker's `start_merge_step` when none is given: a fifth of the steps (the demo's style
/// strength of 20 %, the reference's 10 of 50).
pub fn default_start_merge_step(steps: usize) -> usize {
    steps / 5
}

/// What an adapter file is, from its keys alone (headers only, before anything loads).
#[derive(Debug, Clone)]
pub enum AdapterKind {
    /// An IP-Adapter-family file and its projection's shape.
    IpAdapter(ProjectionSpec),
    /// A PhotoMaker file.
    PhotoMaker(Version),
    /// The split-prompt adapter.
    SplitPrompt,
}

impl AdapterKind {
    /// Reads the kind of `path` from its tensor names.
    pub fn detect(path: &Path) -> anyhow::Result<Self> {
        let store = WeightStore::open(path)
            .with_context(|| format!("reading --adapter {}", path.display()))?;
        let has = |prefix: &str| store.names().any(|n| n.starts_with(prefix));
        if has("image_proj.") {
            let spec = ProjectionSpec::detect(&store, "image_proj.")
                .with_context(|| format!("--adapter {}", path.display()))?;
            Ok(Self::IpAdapter(spec))
        } else if has("id_encoder.") {
            Ok(Self::PhotoMaker(if has("id_encoder.qformer_perceiver.") {
                Version::V2
            } else {
                Version::V1
            }))
        } else if has(split_prompt::PREFIX) || has(split_prompt::PERSONGEN_PREFIX) {
            Ok(Self::SplitPrompt)
        } else {
            let sample: Vec<&str> = store.names().take(3).collect();
            bail!(
                "--adapter {}: not an adapter idforge knows (IP-Adapter files hold \
                 `image_proj.*`, PhotoMaker files `id_encoder.*`, the split-prompt adapter \
                 `split_prompt.*` or persongen's `adapter_modules.*`; this one holds {})",
                path.display(),
                if sample.is_empty() {
                    "no tensors".to_string()
                } else {
                    sample.join(", ")
                }
            )
        }
    }

    /// The kind's name as printed and recorded (`ip-adapter-faceid`, `photomaker-v2`, …).
    pub fn name(&self) -> String {
        match self {
            Self::IpAdapter(spec) => spec.kind().to_string(),
            Self::PhotoMaker(v) => format!("photomaker-{}", v.name()),
            Self::SplitPrompt => "split-prompt".to_string(),
        }
    }
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
}

/// The per-image settings of a method run.
#[derive(Debug, Clone)]
pub struct RenderSettings {
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale (≤ 1: off).
    pub guidance: f32,
    /// The sampler.
    pub sampler: SamplerKind,
    /// The first step that sees the identity (IP-Adapter) / PhotoMaker's `start_merge_step`
    /// (steps up to and including it are text-only); `None`: 0 for IP-Adapter,
    /// [`default_start_merge_step`] for PhotoMaker.
    pub id_start_step: Option<usize>,
    /// The IP-Adapter scale on every layer.
    pub adapter_scale: f32,
    /// The split-prompt adapter's part scales.
    pub split_scale: SplitScale,
}

/// An identity's inputs, ready for the loaded adapters.
#[derive(Debug, Clone)]
pub enum Identity<B: burn::tensor::backend::Backend> {
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

/// The adapters of a method, loaded on one pipeline, and the networks that read its
/// identities' photos.
pub struct Method {
    /// The base model.
    pub pipe: Pipeline<Backend>,
    ip: Option<(IpAdapter<Backend>, ProjectionSpec)>,
    photomaker: Option<PhotoMaker<Backend>>,
    split: Option<SplitPrompt<Backend>>,
    options: MethodOptions,
    encoder: Option<ReferenceEncoder<Backend>>,
    needs: ReferenceNeeds,
}

/// The kinds of `options.adapters`, checked to form one method (each printed to stderr with
/// `print`).
pub fn adapter_kinds(
    options: &MethodOptions,
    print: bool,
) -> anyhow::Result<Vec<(PathBuf, AdapterKind)>> {
    let mut kinds = Vec::new();
    for path in &options.adapters {
        let kind = AdapterKind::detect(path)?;
        if print {
            eprintln!("adapter {}: {}", path.display(), kind.name());
        }
        kinds.push((path.clone(), kind));
    }
    let count = |f: fn(&AdapterKind) -> bool| kinds.iter().filter(|(_, k)| f(k)).count();
    let ip = count(|k| matches!(k, AdapterKind::IpAdapter(_)));
    let pm = count(|k| matches!(k, AdapterKind::PhotoMaker(_)));
    let split = count(|k| matches!(k, AdapterKind::SplitPrompt));
    if ip > 1 || pm > 1 || split > 1 || (ip == 1 && pm == 1) {
        let names: Vec<String> = kinds.iter().map(|(_, k)| k.name()).collect();
        bail!(
            "--adapter given {} times ({}): give one adapter, or a PhotoMaker file and a \
             split-prompt file together (persongen's ipmakerbgbody)",
            kinds.len(),
            names.join(", ")
        );
    }
    Ok(kinds)
}

impl Method {
    /// Checks the adapters and the networks their identities need, then loads the networks,
    /// the pipeline of `model` and the adapters on it.
    pub fn load(
        model: &Path,
        options: MethodOptions,
        device: &Device<Backend>,
        with_photos: bool,
    ) -> anyhow::Result<Self> {
        let kinds = adapter_kinds(&options, true)?;
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
        let pipe = Pipeline::<Backend>::load(model, device)
            .with_context(|| format!("loading the diffusers pipeline in {}", model.display()))?;
        eprintln!(
            "loaded {} ({:?}) in {:.1} s",
            model.display(),
            pipe.family,
            started.elapsed().as_secs_f64()
        );
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
                        .with_context(|| wrong_base(&path))?;
                    a.set_shortcut(method.options.plus_v2, 1.0);
                    method.ip = Some((a, spec));
                }
                AdapterKind::PhotoMaker(_) => {
                    if method.pipe.family != Family::StableDiffusionXl {
                        bail!(
                            "--adapter {} is PhotoMaker, made for SDXL; --model {} is {:?}: \
                             give an SDXL pipeline",
                            path.display(),
                            model.display(),
                            method.pipe.family
                        );
                    }
                    let heads = method.options.id_encoder_heads.unwrap_or_default();
                    let mut pm = PhotoMaker::load_with(&path, &method.pipe, &heads, device)
                        .with_context(|| wrong_base(&path))?;
                    if let Some(t) = &method.options.trigger {
                        pm = pm.with_trigger(t);
                    }
                    method.photomaker = Some(pm);
                }
                AdapterKind::SplitPrompt => {
                    if method.pipe.family != Family::StableDiffusionXl {
                        bail!(
                            "--adapter {} is the split-prompt adapter, made for SDXL; --model {} \
                             is {:?}: give an SDXL pipeline",
                            path.display(),
                            model.display(),
                            method.pipe.family
                        );
                    }
                    method.split = Some(
                        SplitPrompt::load(&path, &method.pipe.unet, device)
                            .with_context(|| wrong_base(&path))?,
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

    /// The identity's inputs from reference photos, each photo described on stderr when
    /// `verbose`. `id_embeds` gives PhotoMaker v2's ArcFace embeddings instead of --arcface.
    pub fn identity_from_photos(
        &self,
        photos: &[PathBuf],
        id_embeds: Option<&Path>,
        save_inputs: Option<&Path>,
        verbose: bool,
    ) -> anyhow::Result<Identity<Backend>> {
        let n = photos.len();
        if !(1..=MAX_REFERENCES).contains(&n) {
            bail!("--ref: give 1 to {MAX_REFERENCES} reference photos ({n} given)");
        }
        for p in photos {
            if !p.is_file() {
                bail!("--ref {}: no such file", p.display());
            }
        }
        let device = self.pipe.device();
        if let Some((_, spec)) = &self.ip {
            let encoder = self
                .encoder
                .as_ref()
                .context("the reference networks were not loaded")?;
            let mut references = Vec::with_capacity(n);
            for path in photos {
                let r = encoder
                    .encode_file(path, &self.needs)
                    .with_context(|| format!("--ref {}", path.display()))?;
                if verbose {
                    eprintln!("{}", self.describe_reference(&r));
                }
                references.push(r);
            }
            let uncond = encoder.image_encoder().map(ImageEncoder::unconditional);
            let (pos, neg) = ip_adapter_inputs(spec, &references, uncond.as_ref(), device)?;
            if let Some(out) = save_inputs {
                save_projection_inputs(out, &pos, &neg)?;
                eprintln!("adapter inputs written to {}", out.display());
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
                read_rgb(path).with_context(|| format!("--ref {}", path.display()))?;
            if self.needs.face {
                let encoder = self
                    .encoder
                    .as_ref()
                    .context("the reference networks were not loaded")?;
                let view = RgbView {
                    width,
                    height,
                    data: &rgb,
                };
                let r = encoder
                    .encode(view, path, &self.needs)
                    .with_context(|| format!("--ref {}", path.display()))?;
                let face = r.face.as_ref().with_context(|| {
                    format!(
                        "--ref {}: no face found for the ArcFace embedding",
                        path.display()
                    )
                })?;
                if verbose {
                    eprintln!("{}", self.describe_reference(&r));
                }
                raw.extend_from_slice(&face.embedding);
            } else if verbose {
                eprintln!(
                    "reference {}: the whole photo ({width}x{height}) to PhotoMaker's CLIP",
                    path.display()
                );
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
                    eprintln!(
                        "note: photomaker-v1 takes no ArcFace embedding; --arcface / --id-embeds \
                         are not used"
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
                    None => bail!(
                        "--adapter is photomaker-v2, which takes the ArcFace embedding of each \
                         reference face: pass --arcface with an ArcFace ONNX model \
                         (insightface's buffalo_l w600k_r50.onnx), or the embeddings with \
                         --id-embeds"
                    ),
                };
                let [rows, width] = e.dims();
                if width != want {
                    bail!(
                        "the ArcFace embeddings are {width} wide, photomaker-v2 takes {want} \
                         (insightface's buffalo_l w600k_r50.onnx gives 512)"
                    );
                }
                if rows != n {
                    bail!(
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
    ) -> anyhow::Result<Identity<Backend>> {
        let Some((_, spec)) = &self.ip else {
            bail!("--image-embeds / --id-embeds feed an IP-Adapter file; PhotoMaker takes --ref")
        };
        let device = self.pipe.device();
        if image_embeds.is_none() && id_embeds.is_none() {
            bail!(
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
                .with_context(|| format!("reading --image-embeds {}", path.display()))?;
            let clip = ip_adapter_clip_width(spec);
            let check = |what: &str, width: usize| -> anyhow::Result<()> {
                match clip {
                    Some((w, want)) if w == what && want != width => bail!(
                        "--image-embeds {}: `{what}` is {width} wide, the {kind} adapter takes \
                         {want}-wide {what}",
                        path.display()
                    ),
                    Some((w, _)) if w != what => bail!(
                        "--image-embeds {}: the {kind} adapter takes {w}, not `{what}`",
                        path.display()
                    ),
                    None => bail!(
                        "--image-embeds {}: the {kind} adapter takes no CLIP features; give \
                         --id-embeds",
                        path.display()
                    ),
                    _ => Ok(()),
                }
            };
            if store.contains("image_embeds") {
                let e = rows::<2>(&store, "image_embeds", path, device)?;
                check("image_embeds", e.dims()[1])?;
                neg.image_embeds = Some(e.zeros_like());
                pos.image_embeds = Some(e);
            }
            if store.contains("hidden_states") {
                let h = rows::<3>(&store, "hidden_states", path, device)?;
                check("hidden states", h.dims()[2])?;
                neg.hidden_states = Some(if store.contains("negative_hidden_states") {
                    rows::<3>(&store, "negative_hidden_states", path, device)?
                } else {
                    h.zeros_like()
                });
                pos.hidden_states = Some(h);
            }
            if pos.image_embeds.is_none() && pos.hidden_states.is_none() {
                bail!(
                    "--image-embeds {}: no `image_embeds` or `hidden_states` tensor",
                    path.display()
                );
            }
        }
        if let Some(path) = id_embeds {
            let e = read_id_embeds(path, device)?;
            let width = e.dims()[1];
            match ip_adapter_id_width(spec) {
                Some(want) if want != width => bail!(
                    "--id-embeds {}: the embeddings are {width} wide, the {kind} adapter takes \
                     {want} (insightface's buffalo_l w600k_r50.onnx gives 512)",
                    path.display()
                ),
                None => bail!(
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
            bail!(
                "the {kind} adapter takes both --id-embeds (ArcFace) and --image-embeds \
                 (`hidden_states` of the face crop)"
            );
        }
        if let ProjectionSpec::FaceId { .. } = spec
            && pos.id_embeds.is_none()
        {
            bail!("the {kind} adapter takes --id-embeds (an ArcFace embedding)");
        }
        Ok(Identity::IpAdapter { pos, neg })
    }

    /// One image: `prompts` (the background and body parts only reach the split-prompt
    /// adapter), the identity, `settings`, from `noise` (`[1, 4, h/8, w/8]`).
    pub fn render(
        &self,
        identity: &Identity<Backend>,
        prompts: &SplitPrompts<'_>,
        settings: &RenderSettings,
        noise: Tensor<Backend, 4>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> anyhow::Result<image::RgbImage> {
        let pipe = &self.pipe;
        let [_, _, lh, lw] = noise.dims();
        let (h, w) = (lh * pipe.vae_scale(), lw * pipe.vae_scale());
        let sample = SampleSettings {
            steps: settings.steps,
            guidance: settings.guidance,
            sampler: settings.sampler,
            time_ids: [h as f32, w as f32, 0.0, 0.0, h as f32, w as f32],
        };
        let guided = settings.guidance > 1.0;
        if let Some(start) = settings.id_start_step
            && start > settings.steps
        {
            bail!(
                "--id-start-step {start}: at most --steps ({})",
                settings.steps
            );
        }
        if self.split.is_none() && !(prompts.background.is_empty() && prompts.body.is_empty()) {
            bail!(
                "--bg-prompt / --body-prompt need the split-prompt adapter (--adapter with \
                 `split_prompt.*` tensors)"
            );
        }
        // The main prompt's conditioning (split: with the parts), and the negative.
        let split_cond = match &self.split {
            Some(_) => Some(
                encode_split_prompt(pipe, prompts, guided).context("encoding the split prompt")?,
            ),
            None => None,
        };
        let (cond, uncond) = match &split_cond {
            Some(c) => (c.cond.clone(), c.uncond.clone()),
            None => (
                pipe.encode_prompt(prompts.main)
                    .context("encoding the prompt")?,
                if guided {
                    Some(
                        pipe.encode_negative(prompts.negative)
                            .context("encoding the negative prompt")?,
                    )
                } else {
                    None
                },
            ),
        };
        // Hooks on throughout (PhotoMaker's LoRA, the split parts) and from the ID start on.
        let split_hook = match (&self.split, &split_cond) {
            (Some(s), Some(c)) => Some(s.hook(c, settings.split_scale)),
            _ => None,
        };
        let ip_hook = match (&self.ip, identity) {
            (Some((adapter, _)), Identity::IpAdapter { pos, neg }) => {
                let pooling = self.options.pooling.unwrap_or(ReferencePooling::Concat);
                let tokens = adapter
                    .pooled_tokens(pos, 1, pooling)
                    .context("projecting the adapter's input")?;
                let tokens = if guided {
                    let negative = adapter
                        .pooled_tokens(neg, 1, pooling)
                        .context("projecting the unconditional input")?;
                    Tensor::cat(vec![negative, tokens], 0)
                } else {
                    tokens
                };
                Some(adapter.hook(tokens, IpScale::uniform(settings.adapter_scale)))
            }
            (Some(_), _) => bail!("the IP-Adapter has no identity input: give --ref photos"),
            _ => None,
        };
        let mut always: Vec<&dyn AttentionHook<Backend>> = Vec::new();
        if let Some(pm) = &self.photomaker {
            always.push(pm.hook());
        }
        if let Some(h) = &split_hook {
            always.push(h);
        }
        let mut later = always.clone();
        if let Some(h) = &ip_hook {
            later.push(h);
        }
        let (before_hooks, after_hooks) = (Hooks(always), Hooks(later));
        let pm_cond = match (&self.photomaker, identity) {
            (Some(pm), Identity::PhotoMaker { pixels, id_embeds }) => Some(
                pm.conditioning(pipe, prompts.main, pixels.clone(), id_embeds.clone())
                    .context("PhotoMaker's prompt and identity")?,
            ),
            (Some(_), _) => bail!("PhotoMaker has no identity input: give --ref photos"),
            _ => None,
        };
        let (before_cond, after_cond, start): (&Conditioning<Backend>, _, _) = match &pm_cond {
            Some(c) => (
                &c.text_only,
                &c.fused,
                settings
                    .id_start_step
                    .unwrap_or_else(|| default_start_merge_step(settings.steps))
                    .saturating_add(1),
            ),
            None => (&cond, &cond, settings.id_start_step.unwrap_or(0)),
        };
        let plan = SwitchAt {
            before: StepInputs {
                cond: before_cond,
                uncond: uncond.as_ref(),
                hook: &before_hooks,
            },
            after: StepInputs {
                cond: after_cond,
                uncond: uncond.as_ref(),
                hook: &after_hooks,
            },
            start,
        };
        let latents = pipe
            .sample_with(&plan, &sample, noise, progress)
            .context("sampling")?;
        let image = pipe.decode(latents);
        let [_, c, ih, iw] = image.dims();
        let (width, height, rgb) = to_rgb8(image.reshape([c, ih, iw]));
        image::RgbImage::from_raw(width as u32, height as u32, rgb)
            .context("the decoded image has an unexpected size")
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

/// The networks that read reference photos for `kinds`, after checking the flags name them.
fn reference_encoder(
    options: &MethodOptions,
    kinds: &[(PathBuf, AdapterKind)],
    needs: &ReferenceNeeds,
    device: &Device<Backend>,
) -> anyhow::Result<ReferenceEncoder<Backend>> {
    let crop = options.crop.unwrap_or(CropChannels::Bgr);
    let spec = kinds.iter().find_map(|(_, k)| match k {
        AdapterKind::IpAdapter(s) => Some(s),
        _ => None,
    });
    let face_needed = needs.face || matches!(needs.clip, Some(ClipInput::FaceCrop(_)));
    if let Some(spec) = spec {
        let kind = spec.kind();
        if face_needed && options.arcface.is_none() {
            bail!(
                "--adapter is {kind}, which takes the ArcFace embedding of the reference face: \
                 pass --arcface with an ArcFace ONNX model (insightface's buffalo_l \
                 w600k_r50.onnx), or give the embedding with --id-embeds instead of --ref"
            );
        }
        if let (Some(_), None) = (needs.clip, &options.image_encoder) {
            let (what, width) = ip_adapter_clip_width(spec).unwrap_or(("features", 0));
            bail!(
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
            eprintln!("note: {kind} takes no ArcFace embedding; --arcface is not used");
        }
        if needs.clip.is_none() && options.image_encoder.is_some() {
            eprintln!("note: {kind} takes no CLIP features; --image-encoder is not used");
        }
    } else if options.image_encoder.is_some() {
        eprintln!("note: PhotoMaker brings its own CLIP encoder; --image-encoder is not used");
    }
    let faces = if face_needed {
        let dir = super::face_api_models(options.face_api_weights.clone())?;
        Some(
            FaceEmbedder::<Backend>::load(
                &dir,
                Detector::default(),
                options.arcface.as_deref(),
                device,
            )
            .with_context(|| {
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
                .with_context(|| format!("loading --image-encoder {}", dir.display()))?,
        ),
        _ => None,
    };
    let encoder = ReferenceEncoder::new(faces, clip);
    if let Some(spec) = spec {
        check_ip_adapter_encoder(spec, &encoder, crop)
            .context("--arcface / --image-encoder do not fit --adapter")?;
    }
    Ok(encoder)
}

/// `id_embeds` (or the only tensor) of a `.safetensors` file, as `[refs, width]`.
fn read_id_embeds(path: &Path, device: &Device<Backend>) -> anyhow::Result<Tensor<Backend, 2>> {
    let store = WeightStore::open(path)
        .with_context(|| format!("reading --id-embeds {}", path.display()))?;
    let name = if store.contains("id_embeds") {
        "id_embeds".to_string()
    } else {
        let names: Vec<String> = store.names().map(str::to_string).collect();
        match names.as_slice() {
            [only] => only.clone(),
            _ => bail!(
                "--id-embeds {}: no `id_embeds` tensor and {} others; name it id_embeds",
                path.display(),
                names.len()
            ),
        }
    };
    rows::<2>(&store, &name, path, device)
}

/// Writes the inputs as `.safetensors` in the names --id-embeds / --image-embeds read.
fn save_projection_inputs(
    path: &Path,
    pos: &ProjectionInput<Backend>,
    neg: &ProjectionInput<Backend>,
) -> anyhow::Result<()> {
    fn entry<const D: usize>(name: &str, t: &Tensor<Backend, D>) -> (String, Vec<usize>, Vec<u8>) {
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
        .context("building the safetensors of --save-inputs")?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    safetensors::serialize_to_file(views, None, path)
        .with_context(|| format!("writing --save-inputs {}", path.display()))
}

/// A tensor whose last `D - 1` axes are kept and every leading axis becomes references.
fn rows<const D: usize>(
    store: &WeightStore,
    name: &str,
    path: &Path,
    device: &Device<Backend>,
) -> anyhow::Result<Tensor<Backend, D>> {
    let (shape, values) = store
        .read_f32(name)
        .with_context(|| format!("{}: reading `{name}`", path.display()))?;
    if shape.len() < D - 1 || values.is_empty() {
        bail!(
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
