//! PhotoMaker's ID encoder: `PhotoMakerIDEncoder` (v1, `photomaker/model.py`) and
//! `PhotoMakerIDEncoder_CLIPInsightfaceExtendtoken` (v2, `photomaker/model_v2.py`), TencentARC/
//! PhotoMaker at 060b4fc. Names are the checkpoints' `id_encoder.*` ones, without the prefix.
//!
//! - v1: CLIP ViT-L/14's post-LayerNorm class token through `visual_projection` (→ 768) and
//!   `visual_projection_2` (→ 1280), concatenated: one 2048-wide token per reference.
//! - v2: the un-normalised ArcFace embedding through `qformer_perceiver.token_proj` (`Linear →
//!   GELU → Linear`) to 2 tokens, `token_norm`, then the `FacePerceiverResampler` over CLIP's
//!   `last_hidden_state` (no post-LayerNorm), added back (`x + out`): two tokens per reference.
//!   The projections are in v2's files too, unused.
//!
//! Both carry the [`FuseModule`]. Widths come from the checkpoint; only the heads are not
//! stored, see [`IdEncoderOptions`].

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use idforge_models::WeightStore;
use idforge_models::clip::{ClipVisionConfig, ClipVisionTransformer, WeightLayout, vision_tensors};
use idforge_models::nn::{Init, LayerNorm, Linear};

use super::fuse::FuseModule;
use crate::adapters::ip_adapter::projection::{Mlp, Resampler, ResamplerShape};
use crate::error::DiffusionError;

/// Which PhotoMaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `photomaker-v1.bin`: CLIP only, one token per reference.
    V1,
    /// `photomaker-v2.bin`: CLIP and an ArcFace embedding, two tokens per reference.
    V2,
}

impl Version {
    /// `v1` / `v2`, as the reference's `pm_version`.
    pub fn name(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// What the checkpoint does not store: the head widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdEncoderOptions {
    /// Width of the CLIP vision tower's heads (ViT-L/14: 64, 16 heads of 1024).
    pub vision_head_dim: usize,
    /// Width of the v2 perceiver's heads (`dim_head=128` in model_v2.py).
    pub perceiver_head_dim: usize,
}

impl Default for IdEncoderOptions {
    fn default() -> Self {
        Self {
            vision_head_dim: 64,
            perceiver_head_dim: 128,
        }
    }
}

/// v2's `QFormerPerceiver` shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QFormerSpec {
    /// ArcFace width (512).
    pub id_dim: usize,
    /// `token_proj`'s hidden width (`id_dim · 4`).
    pub hidden: usize,
    /// Tokens per reference (2).
    pub tokens: usize,
    /// The perceiver resampler (`dim = output_dim` = the SDXL text width, `embedding_dim` =
    /// CLIP's width).
    pub resampler: ResamplerShape,
}

/// The shape of an ID encoder, as read from a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct IdEncoderSpec {
    /// v1 or v2.
    pub version: Version,
    /// The CLIP vision tower (`projection_dim` is `visual_projection`'s output).
    pub vision: ClipVisionConfig,
    /// `visual_projection_2`'s output width.
    pub projection_2: usize,
    /// The fuse width (the SDXL text width, 2048).
    pub dim: usize,
    /// v2's perceiver.
    pub qformer: Option<QFormerSpec>,
}

impl IdEncoderSpec {
    /// The published encoders: CLIP ViT-L/14 at 224 px, 768 + 1280 = 2048, and for v2 the
    /// `QFormerPerceiver(512, 2048, 2)` with a depth-4, 16 × 128 resampler.
    pub fn full_size(version: Version) -> Self {
        let vision = ClipVisionConfig::new()
            .with_image_size(224)
            .with_patch_size(14)
            .with_width(1024)
            .with_heads(16)
            .with_layers(24)
            .with_mlp_width(4096)
            .with_projection_dim(Some(768));
        let qformer = (version == Version::V2).then_some(QFormerSpec {
            id_dim: 512,
            hidden: 2048,
            tokens: 2,
            resampler: ResamplerShape {
                embedding_dim: 1024,
                dim: 2048,
                output_dim: 2048,
                heads: 16,
                head_dim: 128,
                depth: 4,
            },
        });
        Self {
            version,
            vision,
            projection_2: 1280,
            dim: 2048,
            qformer,
        }
    }

    /// Reads the shape from the `id_encoder.*` tensors (`store` looks names up under that
    /// prefix); v2 when `qformer_perceiver.*` is there.
    pub fn detect(store: &WeightStore, options: &IdEncoderOptions) -> Result<Self, DiffusionError> {
        let bad = |message: String| DiffusionError::Config {
            path: store.origin().to_path_buf(),
            message,
        };
        // The stored shape, which must have `rank` axes (a linear weight 2, a norm 1).
        let shape_of = |name: &str, rank: usize| -> Result<Vec<usize>, DiffusionError> {
            let s = store.shape(name).map(<[usize]>::to_vec).ok_or_else(|| {
                DiffusionError::from(idforge_models::ModelError::MissingTensor {
                    path: store.origin().to_path_buf(),
                    name: format!("id_encoder.{name}"),
                    available: store.len(),
                })
            })?;
            if s.len() != rank {
                return Err(bad(format!(
                    "`id_encoder.{name}` has shape {s:?}, not {rank}-dimensional"
                )));
            }
            Ok(s)
        };
        let shape = |name: &str| shape_of(name, 2);
        let heads_of = |width: usize, head_dim: usize, what: &str| {
            if head_dim == 0 || width == 0 || !width.is_multiple_of(head_dim) {
                Err(bad(format!(
                    "{what} is {width} wide, not a multiple of the head width {head_dim}: give \
                     the head width this checkpoint was made with"
                )))
            } else {
                Ok(width / head_dim)
            }
        };
        let patch = shape_of("vision_model.embeddings.patch_embedding.weight", 4)?;
        let positions = shape("vision_model.embeddings.position_embedding.weight")?;
        let width = patch[0];
        let p = patch[2];
        let grid = (1..=positions[0])
            .find(|g| g * g + 1 >= positions[0])
            .unwrap_or(0);
        if p == 0 || grid * grid + 1 != positions[0] {
            return Err(bad(format!(
                "the CLIP tower's patch embedding {patch:?} and positions {positions:?} are not \
                 a square ViT's"
            )));
        }
        let layers = (0..)
            .take_while(|i| {
                store.contains(&format!(
                    "vision_model.encoder.layers.{i}.self_attn.q_proj.weight"
                ))
            })
            .count();
        let mlp = shape("vision_model.encoder.layers.0.mlp.fc1.weight")?[0];
        let projection = shape("visual_projection.weight")?[0];
        let projection_2 = shape("visual_projection_2.weight")?[0];
        let dim = shape_of("fuse_module.layer_norm.weight", 1)?[0];
        let vision = ClipVisionConfig::new()
            .with_image_size(grid * p)
            .with_patch_size(p)
            .with_width(width)
            .with_heads(heads_of(width, options.vision_head_dim, "the CLIP tower")?)
            .with_layers(layers)
            .with_mlp_width(mlp)
            .with_projection_dim(Some(projection));
        let version = if store.contains("qformer_perceiver.token_proj.0.weight") {
            Version::V2
        } else {
            Version::V1
        };
        let qformer = match version {
            Version::V1 => {
                if projection + projection_2 != dim {
                    return Err(bad(format!(
                        "visual projections of {projection} + {projection_2} but a fuse width \
                         of {dim}: not a PhotoMaker v1 ID encoder"
                    )));
                }
                None
            }
            Version::V2 => {
                let r = "qformer_perceiver.perceiver_resampler.";
                let p0 = shape("qformer_perceiver.token_proj.0.weight")?;
                let p2 = shape("qformer_perceiver.token_proj.2.weight")?;
                let proj_in = shape(&format!("{r}proj_in.weight"))?;
                let to_q = shape(&format!("{r}layers.0.0.to_q.weight"))?;
                let proj_out = shape(&format!("{r}proj_out.weight"))?;
                let depth = (0..)
                    .take_while(|i| store.contains(&format!("{r}layers.{i}.0.to_q.weight")))
                    .count();
                if proj_in[1] != width {
                    return Err(bad(format!(
                        "the perceiver reads {}-wide CLIP states, the CLIP tower is {width} wide",
                        proj_in[1]
                    )));
                }
                if dim == 0 || !p2[0].is_multiple_of(dim) || proj_out[0] != dim {
                    return Err(bad(format!(
                        "the perceiver makes {} values per reference and {}-wide tokens, the \
                         fuse width is {dim}: not a PhotoMaker v2 ID encoder",
                        p2[0], proj_out[0]
                    )));
                }
                Some(QFormerSpec {
                    id_dim: p0[1],
                    hidden: p0[0],
                    tokens: p2[0] / dim,
                    resampler: ResamplerShape {
                        embedding_dim: proj_in[1],
                        dim: proj_in[0],
                        output_dim: dim,
                        heads: heads_of(
                            to_q[0],
                            options.perceiver_head_dim,
                            "the perceiver's attention",
                        )?,
                        head_dim: options.perceiver_head_dim,
                        depth,
                    },
                })
            }
        };
        Ok(Self {
            version,
            vision,
            projection_2,
            dim,
            qformer,
        })
    }

    /// Identity tokens per reference image (v1: 1, v2: 2).
    pub fn tokens_per_reference(&self) -> usize {
        self.qformer.map_or(1, |q| q.tokens)
    }

    /// Every tensor the encoder reads, with its stored shape, named as in the checkpoint (with
    /// `id_encoder.`): the reference's `state_dict()` keys.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut out: Vec<(String, Vec<usize>)> =
            vision_tensors(&self.vision, WeightLayout::HuggingFace);
        let w = self.vision.width;
        let d = self.dim;
        out.push((
            "visual_projection_2.weight".into(),
            vec![self.projection_2, w],
        ));
        let linear = |out: &mut Vec<_>, name: &str, inp: usize, o: usize, bias: bool| {
            out.push((format!("{name}.weight"), vec![o, inp]));
            if bias {
                out.push((format!("{name}.bias"), vec![o]));
            }
        };
        let norm = |out: &mut Vec<(String, Vec<usize>)>, name: &str, n: usize| {
            out.push((format!("{name}.weight"), vec![n]));
            out.push((format!("{name}.bias"), vec![n]));
        };
        for (mlp, inp) in [("fuse_module.mlp1", 2 * d), ("fuse_module.mlp2", d)] {
            norm(&mut out, &format!("{mlp}.layernorm"), inp);
            linear(&mut out, &format!("{mlp}.fc1"), inp, d, true);
            linear(&mut out, &format!("{mlp}.fc2"), d, d, true);
        }
        norm(&mut out, "fuse_module.layer_norm", d);
        if let Some(q) = self.qformer {
            let p = "qformer_perceiver";
            linear(
                &mut out,
                &format!("{p}.token_proj.0"),
                q.id_dim,
                q.hidden,
                true,
            );
            linear(
                &mut out,
                &format!("{p}.token_proj.2"),
                q.hidden,
                q.tokens * d,
                true,
            );
            norm(&mut out, &format!("{p}.token_norm"), d);
            let r = format!("{p}.perceiver_resampler");
            let s = q.resampler;
            let inner = s.heads * s.head_dim;
            linear(
                &mut out,
                &format!("{r}.proj_in"),
                s.embedding_dim,
                s.dim,
                true,
            );
            linear(
                &mut out,
                &format!("{r}.proj_out"),
                s.dim,
                s.output_dim,
                true,
            );
            norm(&mut out, &format!("{r}.norm_out"), s.output_dim);
            for i in 0..s.depth {
                let a = format!("{r}.layers.{i}.0");
                norm(&mut out, &format!("{a}.norm1"), s.dim);
                norm(&mut out, &format!("{a}.norm2"), s.dim);
                linear(&mut out, &format!("{a}.to_q"), s.dim, inner, false);
                linear(&mut out, &format!("{a}.to_kv"), s.dim, 2 * inner, false);
                linear(&mut out, &format!("{a}.to_out"), inner, s.dim, false);
                let f = format!("{r}.layers.{i}.1");
                norm(&mut out, &format!("{f}.0"), s.dim);
                linear(&mut out, &format!("{f}.1"), s.dim, 4 * s.dim, false);
                linear(&mut out, &format!("{f}.3"), 4 * s.dim, s.dim, false);
            }
        }
        out.into_iter()
            .map(|(n, s)| (format!("id_encoder.{n}"), s))
            .collect()
    }
}

/// v2's `QFormerPerceiver`.
#[derive(Module, Debug)]
pub struct QFormerPerceiver<B: Backend> {
    token_proj: Mlp<B>,
    token_norm: LayerNorm<B>,
    perceiver_resampler: Resampler<B>,
    #[module(skip)]
    tokens: usize,
}

impl<B: Backend> QFormerPerceiver<B> {
    /// `x = token_norm(token_proj(id))` as `tokens` tokens, then `x + resampler(x, hidden)`.
    ///
    /// # Shapes
    /// - `id`: `[n, id_dim]`, `hidden`: `[n, patches + 1, clip_width]` → `[n, tokens, dim]`
    fn forward(&self, id: Tensor<B, 2>, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let n = id.dims()[0];
        let x = self.token_proj.forward(id);
        let dim = x.dims()[1] / self.tokens;
        let x = self.token_norm.forward(x.reshape([n, self.tokens, dim]));
        let out = self.perceiver_resampler.forward(hidden, x.clone());
        x + out
    }
}

/// The ID encoder (see the module docs).
#[derive(Module, Debug)]
pub struct IdEncoder<B: Backend> {
    /// CLIP's vision tower with `visual_projection`.
    pub vision: ClipVisionTransformer<B>,
    /// `visual_projection_2` (bias-free).
    pub visual_projection_2: Linear<B>,
    /// The fuse module.
    pub fuse_module: FuseModule<B>,
    /// v2's perceiver.
    pub qformer_perceiver: Option<QFormerPerceiver<B>>,
}

impl<B: Backend> IdEncoder<B> {
    /// The encoder of `spec`, read from `init` (names without `id_encoder.`) or random.
    pub fn new(
        init: &Init<'_>,
        spec: &IdEncoderSpec,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        let vision = match init {
            Init::Load(store) => {
                ClipVisionTransformer::load(store, &spec.vision, WeightLayout::HuggingFace, device)?
            }
            Init::Random => spec.vision.init(device),
        };
        let qformer_perceiver = spec
            .qformer
            .map(|q| -> Result<_, DiffusionError> {
                let p = "qformer_perceiver";
                Ok(QFormerPerceiver {
                    token_proj: Mlp::new(
                        init,
                        &format!("{p}.token_proj"),
                        [q.id_dim, q.hidden, q.tokens * spec.dim],
                        device,
                    )?,
                    token_norm: LayerNorm::new(
                        init,
                        &format!("{p}.token_norm"),
                        spec.dim,
                        1e-5,
                        device,
                    )?,
                    perceiver_resampler: Resampler::new(
                        init,
                        &format!("{p}.perceiver_resampler"),
                        q.resampler,
                        device,
                    )?,
                    tokens: q.tokens,
                })
            })
            .transpose()?;
        Ok(Self {
            vision,
            visual_projection_2: Linear::new(
                init,
                "visual_projection_2",
                spec.vision.width,
                spec.projection_2,
                false,
                device,
            )?,
            fuse_module: FuseModule::new(init, "fuse_module", spec.dim, device)?,
            qformer_perceiver,
        })
    }

    /// v1's identity tokens from the frozen CLIP tower's pooled outputs (`vision.forward(pixels)
    /// .pooled`): both projections and their concatenation, as [`IdEncoder::forward`] does after
    /// the tower. A trainer that caches the tower's output calls this.
    ///
    /// # Shapes
    /// - `pooled`: `[n, width]` → `[n, 1, dim]`
    pub fn forward_pooled(&self, pooled: Tensor<B, 2>) -> Result<Tensor<B, 3>, DiffusionError> {
        if self.qformer_perceiver.is_some() {
            return Err(DiffusionError::Setting(
                "PhotoMaker v2 takes the tower's hidden states and ArcFace embeddings, not \
                 pooled outputs: only v1 trains from cached pooled outputs"
                    .into(),
            ));
        }
        let width = self.vision.config().width;
        let [n, w] = pooled.dims();
        if w != width || n == 0 {
            return Err(DiffusionError::Setting(format!(
                "PhotoMaker pooled outputs [{n}, {w}]: the ID encoder takes [references, {width}]"
            )));
        }
        let first = self.vision.project(pooled.clone()).ok_or_else(|| {
            DiffusionError::Setting("the CLIP tower has no visual_projection".into())
        })?;
        let second = self.visual_projection_2.forward(pooled);
        Ok(Tensor::cat(vec![first, second], 1).unsqueeze_dim(1))
    }

    /// The identity tokens of each reference.
    ///
    /// # Shapes
    /// - `pixels`: `[n, 3, size, size]`, CLIPImageProcessor-normalised (224 px at full size)
    /// - `id_embeds` (v2): `[n, id_dim]`, the un-normalised ArcFace embeddings
    /// - → `[n, tokens_per_reference, dim]`
    pub fn forward(
        &self,
        pixels: Tensor<B, 4>,
        id_embeds: Option<Tensor<B, 2>>,
    ) -> Result<Tensor<B, 3>, DiffusionError> {
        let [n, c, h, w] = pixels.dims();
        let size = self.vision.config().image_size;
        if c != 3 || h != size || w != size || n == 0 {
            return Err(DiffusionError::Setting(format!(
                "PhotoMaker reference pixels {:?}: the ID encoder takes [references, 3, {size}, \
                 {size}] (CLIP-preprocessed)",
                [n, c, h, w]
            )));
        }
        match &self.qformer_perceiver {
            None => {
                let out = self.vision.forward(pixels);
                let first = out.embeds.ok_or_else(|| {
                    DiffusionError::Setting("the CLIP tower has no visual_projection".into())
                })?;
                let second = self.visual_projection_2.forward(out.pooled);
                Ok(Tensor::cat(vec![first, second], 1).unsqueeze_dim(1))
            }
            Some(q) => {
                let id = id_embeds.ok_or_else(|| {
                    DiffusionError::Setting(
                        "PhotoMaker v2 needs the references' ArcFace embeddings (`id_embeds`, \
                         insightface's un-normalised `embedding`), one per reference"
                            .into(),
                    )
                })?;
                let [rows, id_dim] = id.dims();
                let want = q.token_proj_in();
                if rows != n || id_dim != want {
                    return Err(DiffusionError::Setting(format!(
                        "PhotoMaker v2: {rows} ArcFace embeddings of width {id_dim} for {n} \
                         reference images; it takes one [{want}] embedding per image"
                    )));
                }
                let out = self.vision.forward(pixels);
                Ok(q.forward(id, out.last_hidden_state))
            }
        }
    }
}

impl<B: Backend> QFormerPerceiver<B> {
    fn token_proj_in(&self) -> usize {
        self.token_proj.in_features()
    }
}
