//! The IP-Adapter family's image projections: what turns a CLIP image embedding, CLIP hidden
//! states or an ArcFace embedding into the tokens the decoupled cross-attention attends to.
//! Names are the original repository's (`ip_adapter/ip_adapter.py`, `resampler.py`,
//! `ip_adapter_faceid.py`), as its checkpoints store them under `image_proj.`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use idforge_models::WeightStore;
use idforge_models::nn::{Init, LayerNorm, Linear, child, multi_head_attention, split_heads};

use crate::error::DiffusionError;

/// `Linear → GELU → Linear` (`proj.0`, `proj.2`), with biases.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    pub(crate) fn new(
        init: &Init<'_>,
        prefix: &str,
        [inp, hidden, out]: [usize; 3],
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        Ok(Self {
            fc1: Linear::new(init, &child(prefix, "0"), inp, hidden, true, device)?,
            fc2: Linear::new(init, &child(prefix, "2"), hidden, out, true, device)?,
        })
    }

    pub(crate) fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.fc2.forward(gelu(self.fc1.forward(x)))
    }

    /// Input width.
    pub(crate) fn in_features(&self) -> usize {
        self.fc1.in_features()
    }
}

/// The Perceiver attention of the resamplers: queries from the latents, keys and values from
/// the features and the latents together.
#[derive(Module, Debug)]
pub struct PerceiverAttention<B: Backend> {
    norm1: LayerNorm<B>,
    norm2: LayerNorm<B>,
    to_q: Linear<B>,
    to_kv: Linear<B>,
    to_out: Linear<B>,
    #[module(skip)]
    heads: usize,
}

impl<B: Backend> PerceiverAttention<B> {
    fn new(
        init: &Init<'_>,
        prefix: &str,
        dim: usize,
        heads: usize,
        head_dim: usize,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        let inner = heads * head_dim;
        let c = |n| child(prefix, n);
        Ok(Self {
            norm1: LayerNorm::new(init, &c("norm1"), dim, 1e-5, device)?,
            norm2: LayerNorm::new(init, &c("norm2"), dim, 1e-5, device)?,
            to_q: Linear::new(init, &c("to_q"), dim, inner, false, device)?,
            to_kv: Linear::new(init, &c("to_kv"), dim, 2 * inner, false, device)?,
            to_out: Linear::new(init, &c("to_out"), inner, dim, false, device)?,
            heads,
        })
    }

    /// `x`: `[b, n, dim]` features, `latents`: `[b, l, dim]` → `[b, l, dim]`.
    fn forward(&self, x: Tensor<B, 3>, latents: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = self.norm1.forward(x);
        let latents = self.norm2.forward(latents);
        let q = self.to_q.forward(latents.clone());
        let kv = self.to_kv.forward(Tensor::cat(vec![x, latents], 1));
        let inner = q.dims()[2];
        let k = kv.clone().narrow(2, 0, inner);
        let v = kv.narrow(2, inner, inner);
        let h = self.heads;
        let out = multi_head_attention(
            split_heads(q, h),
            split_heads(k, h),
            split_heads(v, h),
            false,
        );
        self.to_out.forward(out)
    }
}

/// `LayerNorm → Linear → GELU → Linear`, bias-free (`.0`, `.1`, `.3`).
#[derive(Module, Debug)]
pub struct PerceiverFeedForward<B: Backend> {
    norm: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
}

impl<B: Backend> PerceiverFeedForward<B> {
    fn new(
        init: &Init<'_>,
        prefix: &str,
        dim: usize,
        mult: usize,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        let c = |n| child(prefix, n);
        Ok(Self {
            norm: LayerNorm::new(init, &c("0"), dim, 1e-5, device)?,
            fc1: Linear::new(init, &c("1"), dim, mult * dim, false, device)?,
            fc2: Linear::new(init, &c("3"), mult * dim, dim, false, device)?,
        })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.fc2
            .forward(gelu(self.fc1.forward(self.norm.forward(x))))
    }
}

/// The shape of a resampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResamplerShape {
    /// Width of the input features (CLIP's hidden size).
    pub embedding_dim: usize,
    /// Width inside the resampler.
    pub dim: usize,
    /// Width of the output tokens (the UNet's cross-attention width).
    pub output_dim: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of each head (64 in every published checkpoint).
    pub head_dim: usize,
    /// Attention + feed-forward layers.
    pub depth: usize,
}

/// The Perceiver resampler: `proj_in`, `depth` × (attention, feed-forward) on the latents,
/// `proj_out`, `norm_out`. Plus learns its latents; FaceID-Plus's `FacePerceiverResampler` takes
/// them as input, and so does PhotoMaker v2's `QFormerPerceiver` (the same module, 128-wide
/// heads), which builds it through this crate.
#[derive(Module, Debug)]
pub struct Resampler<B: Backend> {
    proj_in: Linear<B>,
    attention: Vec<PerceiverAttention<B>>,
    feed_forward: Vec<PerceiverFeedForward<B>>,
    proj_out: Linear<B>,
    norm_out: LayerNorm<B>,
}

impl<B: Backend> Resampler<B> {
    pub(crate) fn new(
        init: &Init<'_>,
        prefix: &str,
        s: ResamplerShape,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        let c = |n: &str| child(prefix, n);
        let mut attention = Vec::new();
        let mut feed_forward = Vec::new();
        for i in 0..s.depth {
            let layer = c(&format!("layers.{i}"));
            attention.push(PerceiverAttention::new(
                init,
                &child(&layer, "0"),
                s.dim,
                s.heads,
                s.head_dim,
                device,
            )?);
            feed_forward.push(PerceiverFeedForward::new(
                init,
                &child(&layer, "1"),
                s.dim,
                4,
                device,
            )?);
        }
        Ok(Self {
            proj_in: Linear::new(init, &c("proj_in"), s.embedding_dim, s.dim, true, device)?,
            attention,
            feed_forward,
            proj_out: Linear::new(init, &c("proj_out"), s.dim, s.output_dim, true, device)?,
            norm_out: LayerNorm::new(init, &c("norm_out"), s.output_dim, 1e-5, device)?,
        })
    }

    /// `x`: `[b, n, embedding_dim]`, `latents`: `[b, l, dim]` → `[b, l, output_dim]`.
    pub(crate) fn forward(&self, x: Tensor<B, 3>, mut latents: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = self.proj_in.forward(x);
        for (attn, ff) in self.attention.iter().zip(&self.feed_forward) {
            latents = attn.forward(x.clone(), latents.clone()) + latents;
            latents = ff.forward(latents.clone()) + latents;
        }
        self.norm_out.forward(self.proj_out.forward(latents))
    }
}

/// What a projection takes, per reference image (batch first).
#[derive(Debug, Clone)]
pub struct ProjectionInput<B: Backend> {
    /// CLIP's projected `image_embeds`, `[n, projection_dim]` (plain IP-Adapter).
    pub image_embeds: Option<Tensor<B, 2>>,
    /// CLIP's penultimate hidden states, `[n, tokens, hidden]` (Plus, full-face, FaceID-Plus).
    pub hidden_states: Option<Tensor<B, 3>>,
    /// The ArcFace embedding, `[n, 512]` (FaceID, FaceID-Plus; L2-normalised).
    pub id_embeds: Option<Tensor<B, 2>>,
}

/// How several references of one row become the adapter's condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReferencePooling {
    /// Each reference projected, the tokens concatenated into one sequence (diffusers'
    /// multi-image rule: one joint softmax over every reference's tokens).
    #[default]
    Concat,
    /// The inputs averaged over the references, then projected once (the MIPT seed's pooling).
    Mean,
    /// The element-wise maximum over the references, then projected once.
    Max,
}

impl<B: Backend> ProjectionInput<B> {
    /// Each input pooled over its `references` consecutive rows: `[batch·references, …]` →
    /// `[batch, …]`.
    pub fn pooled(&self, references: usize, pooling: ReferencePooling) -> Self {
        fn pool<B: Backend, const D: usize, const E: usize>(
            t: &Tensor<B, D>,
            refs: usize,
            pooling: ReferencePooling,
        ) -> Tensor<B, D> {
            let dims = t.dims();
            let mut grouped = [0usize; E];
            grouped[0] = dims[0] / refs;
            grouped[1] = refs;
            grouped[2..].copy_from_slice(&dims[1..]);
            let g: Tensor<B, E> = t.clone().reshape(grouped);
            let reduced = match pooling {
                ReferencePooling::Max => g.max_dim(1),
                _ => g.mean_dim(1),
            };
            let mut out = dims;
            out[0] = dims[0] / refs;
            reduced.reshape(out)
        }
        if pooling == ReferencePooling::Concat || references <= 1 {
            return self.clone();
        }
        Self {
            image_embeds: self
                .image_embeds
                .as_ref()
                .map(|t| pool::<B, 2, 3>(t, references, pooling)),
            hidden_states: self
                .hidden_states
                .as_ref()
                .map(|t| pool::<B, 3, 4>(t, references, pooling)),
            id_embeds: self
                .id_embeds
                .as_ref()
                .map(|t| pool::<B, 2, 3>(t, references, pooling)),
        }
    }
}

/// One of the family's projections.
// One projection per adapter is built, so the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum ImageProjection<B: Backend> {
    /// `ImageProjModel`: `proj` to `tokens × cross`, `norm` per token.
    Plain(TokenProjection<B>),
    /// Full-face `MLPProjModel`: per token `proj.0 → GELU → proj.2 → proj.3 (LayerNorm)`.
    FullFace(FullFaceProjection<B>),
    /// FaceID `MLPProjModel`: `proj.0 → GELU → proj.2` to `tokens × cross`, `norm` per token.
    FaceId(FaceIdProjection<B>),
    /// Plus: the `Resampler` with learned latents.
    Plus(PlusProjection<B>),
    /// FaceID-Plus (`shortcut = false`) / PlusV2 (`shortcut = true`): FaceID's tokens refined by
    /// a `FacePerceiverResampler` over the face crop's CLIP hidden states.
    FaceIdPlus(FaceIdPlusProjection<B>),
}

/// [`ImageProjection::Plain`].
#[derive(Module, Debug)]
pub struct TokenProjection<B: Backend> {
    proj: Linear<B>,
    norm: LayerNorm<B>,
    #[module(skip)]
    tokens: usize,
}

/// [`ImageProjection::FullFace`].
#[derive(Module, Debug)]
pub struct FullFaceProjection<B: Backend> {
    mlp: Mlp<B>,
    norm: LayerNorm<B>,
}

/// [`ImageProjection::FaceId`].
#[derive(Module, Debug)]
pub struct FaceIdProjection<B: Backend> {
    mlp: Mlp<B>,
    norm: LayerNorm<B>,
    #[module(skip)]
    tokens: usize,
}

impl<B: Backend> FaceIdProjection<B> {
    fn forward(&self, id: Tensor<B, 2>) -> Tensor<B, 3> {
        let n = id.dims()[0];
        let x = self.mlp.forward(id);
        let cross = x.dims()[1] / self.tokens;
        self.norm.forward(x.reshape([n, self.tokens, cross]))
    }
}

/// [`ImageProjection::Plus`].
#[derive(Module, Debug)]
pub struct PlusProjection<B: Backend> {
    /// `[1, queries, dim]`
    latents: Param<Tensor<B, 3>>,
    resampler: Resampler<B>,
}

/// [`ImageProjection::FaceIdPlus`].
#[derive(Module, Debug)]
pub struct FaceIdPlusProjection<B: Backend> {
    face_id: FaceIdProjection<B>,
    resampler: Resampler<B>,
    /// PlusV2: `out = tokens + shortcut_scale · resampled`.
    #[module(skip)]
    pub shortcut: bool,
    /// The weight of the resampled part with `shortcut` (1 by default, as diffusers').
    #[module(skip)]
    pub shortcut_scale: f32,
}

/// The kind and shape of a projection, as read from a checkpoint's `image_proj.*` tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectionSpec {
    /// Plain: input width, tokens, cross width.
    Plain {
        /// CLIP's projection width.
        embed_dim: usize,
        /// Output tokens (4 in every published and diffusers-loadable file).
        tokens: usize,
        /// UNet cross-attention width.
        cross: usize,
    },
    /// Full face: input (CLIP hidden) width, cross width.
    FullFace {
        /// CLIP's hidden width.
        hidden: usize,
        /// UNet cross-attention width.
        cross: usize,
    },
    /// FaceID: ID width, MLP width, tokens, cross width.
    FaceId {
        /// ArcFace width (512).
        id_dim: usize,
        /// MLP hidden width.
        mlp: usize,
        /// Output tokens.
        tokens: usize,
        /// UNet cross-attention width.
        cross: usize,
    },
    /// Plus: the resampler and its learned queries.
    Plus {
        /// Learned queries.
        queries: usize,
        /// The resampler.
        resampler: ResamplerShape,
    },
    /// FaceID-Plus: FaceID's MLP and the face resampler.
    FaceIdPlus {
        /// ArcFace width (512).
        id_dim: usize,
        /// MLP hidden width.
        mlp: usize,
        /// Output tokens.
        tokens: usize,
        /// The resampler (its `dim` and `output_dim` are the cross width).
        resampler: ResamplerShape,
    },
}

impl ProjectionSpec {
    /// Width of the tokens the projection makes.
    pub fn cross_dim(&self) -> usize {
        match *self {
            ProjectionSpec::Plain { cross, .. }
            | ProjectionSpec::FullFace { cross, .. }
            | ProjectionSpec::FaceId { cross, .. } => cross,
            ProjectionSpec::Plus { resampler, .. }
            | ProjectionSpec::FaceIdPlus { resampler, .. } => resampler.output_dim,
        }
    }

    /// The kind's name, as idforge prints it.
    pub fn kind(&self) -> &'static str {
        match self {
            ProjectionSpec::Plain { .. } => "ip-adapter",
            ProjectionSpec::FullFace { .. } => "ip-adapter-full-face",
            ProjectionSpec::FaceId { .. } => "ip-adapter-faceid",
            ProjectionSpec::Plus { .. } => "ip-adapter-plus",
            ProjectionSpec::FaceIdPlus { .. } => "ip-adapter-faceid-plus",
        }
    }

    /// Reads the kind and shape from the tensors under `prefix` (`image_proj.`), in diffusers'
    /// order of detection (`_convert_ip_adapter_image_proj_to_diffusers`); from the names and
    /// shapes alone, so a key/shape list ([`ShapeList`]) serves as well as a file.
    pub fn detect<S: TensorShapes + ?Sized>(
        store: &S,
        prefix: &str,
    ) -> Result<Self, DiffusionError> {
        let shape = |name: &str| -> Result<Vec<usize>, DiffusionError> {
            let full = format!("{prefix}{name}");
            store.shape_of(&full).ok_or_else(|| {
                idforge_models::ModelError::MissingTensor {
                    path: store.origin().to_path_buf(),
                    name: full,
                    available: store.count(),
                }
                .into()
            })
        };
        let has = |name: &str| store.shape_of(&format!("{prefix}{name}")).is_some();
        let resampler =
            |root: &str, cross_out: Option<usize>| -> Result<ResamplerShape, DiffusionError> {
                let proj_in = shape(&format!("{root}proj_in.weight"))?;
                let to_q = shape(&format!("{root}layers.0.0.to_q.weight"))?;
                let proj_out = shape(&format!("{root}proj_out.weight"))?;
                let depth = (0..)
                    .take_while(|i| has(&format!("{root}layers.{i}.0.to_q.weight")))
                    .count();
                let inner = to_q[0];
                Ok(ResamplerShape {
                    embedding_dim: proj_in[1],
                    dim: proj_in[0],
                    output_dim: cross_out.unwrap_or(proj_out[0]),
                    heads: (inner / 64).max(1),
                    head_dim: if inner >= 64 { 64 } else { inner },
                    depth,
                })
            };
        if has("proj.weight") {
            let w = shape("proj.weight")?;
            let cross = shape("norm.weight")?[0];
            return Ok(ProjectionSpec::Plain {
                embed_dim: w[1],
                tokens: w[0] / cross,
                cross,
            });
        }
        if has("proj.3.weight") {
            let w = shape("proj.0.weight")?;
            return Ok(ProjectionSpec::FullFace {
                hidden: w[1],
                cross: shape("proj.3.weight")?[0],
            });
        }
        let face_id = || -> Result<(usize, usize, usize, usize), DiffusionError> {
            let w0 = shape("proj.0.weight")?;
            let w2 = shape("proj.2.weight")?;
            let cross = shape("norm.weight")?[0];
            Ok((w0[1], w0[0], w2[0] / cross, cross))
        };
        if has("perceiver_resampler.proj_in.weight") {
            let (id_dim, mlp, tokens, _) = face_id()?;
            return Ok(ProjectionSpec::FaceIdPlus {
                id_dim,
                mlp,
                tokens,
                resampler: resampler("perceiver_resampler.", None)?,
            });
        }
        if has("norm.weight") {
            let (id_dim, mlp, tokens, cross) = face_id()?;
            return Ok(ProjectionSpec::FaceId {
                id_dim,
                mlp,
                tokens,
                cross,
            });
        }
        if has("latents") {
            let latents = shape("latents")?;
            return Ok(ProjectionSpec::Plus {
                queries: latents[1],
                resampler: resampler("", None)?,
            });
        }
        Err(DiffusionError::Config {
            path: store.origin().to_path_buf(),
            message: format!(
                "`{prefix}*` holds no IP-Adapter image projection this version knows \
                 (`proj.weight`, `proj.3.weight`, `norm.weight`, `perceiver_resampler.*`, `latents`)"
            ),
        })
    }
}

impl ProjectionSpec {
    /// Every tensor [`ImageProjection::new`] reads for this spec under `prefix`, with its shape
    /// as the checkpoint stores it (torch's `[out, in]`): the names and shapes a published file
    /// of this kind must have, without building anything.
    pub fn layout(&self, prefix: &str) -> Vec<(String, Vec<usize>)> {
        let mut l = Layout {
            prefix,
            out: Vec::new(),
        };
        match *self {
            ProjectionSpec::Plain {
                embed_dim,
                tokens,
                cross,
            } => {
                l.linear("proj", embed_dim, tokens * cross, true);
                l.norm("norm", cross);
            }
            ProjectionSpec::FullFace { hidden, cross } => {
                l.linear("proj.0", hidden, hidden, true);
                l.linear("proj.2", hidden, cross, true);
                l.norm("proj.3", cross);
            }
            ProjectionSpec::FaceId {
                id_dim,
                mlp,
                tokens,
                cross,
            } => {
                l.linear("proj.0", id_dim, mlp, true);
                l.linear("proj.2", mlp, tokens * cross, true);
                l.norm("norm", cross);
            }
            ProjectionSpec::Plus { queries, resampler } => {
                l.put("latents", vec![1, queries, resampler.dim]);
                l.resampler("", &resampler);
            }
            ProjectionSpec::FaceIdPlus {
                id_dim,
                mlp,
                tokens,
                resampler,
            } => {
                let cross = resampler.output_dim;
                l.linear("proj.0", id_dim, mlp, true);
                l.linear("proj.2", mlp, tokens * cross, true);
                l.norm("norm", cross);
                l.resampler("perceiver_resampler.", &resampler);
            }
        }
        l.out.sort();
        l.out
    }
}

/// Collects the names and shapes of [`ProjectionSpec::layout`].
struct Layout<'a> {
    prefix: &'a str,
    out: Vec<(String, Vec<usize>)>,
}

impl Layout<'_> {
    fn put(&mut self, name: &str, shape: Vec<usize>) {
        self.out.push((format!("{}{name}", self.prefix), shape));
    }

    /// A torch `Linear`: `weight [out, in]`, `bias [out]`.
    fn linear(&mut self, name: &str, inp: usize, out: usize, bias: bool) {
        self.put(&format!("{name}.weight"), vec![out, inp]);
        if bias {
            self.put(&format!("{name}.bias"), vec![out]);
        }
    }

    fn norm(&mut self, name: &str, width: usize) {
        self.put(&format!("{name}.weight"), vec![width]);
        self.put(&format!("{name}.bias"), vec![width]);
    }

    /// [`Resampler::new`]'s tensors under `root`.
    fn resampler(&mut self, root: &str, r: &ResamplerShape) {
        let inner = r.heads * r.head_dim;
        self.linear(&format!("{root}proj_in"), r.embedding_dim, r.dim, true);
        self.linear(&format!("{root}proj_out"), r.dim, r.output_dim, true);
        self.norm(&format!("{root}norm_out"), r.output_dim);
        for i in 0..r.depth {
            let a = format!("{root}layers.{i}.0");
            self.norm(&format!("{a}.norm1"), r.dim);
            self.norm(&format!("{a}.norm2"), r.dim);
            self.linear(&format!("{a}.to_q"), r.dim, inner, false);
            self.linear(&format!("{a}.to_kv"), r.dim, 2 * inner, false);
            self.linear(&format!("{a}.to_out"), inner, r.dim, false);
            let f = format!("{root}layers.{i}.1");
            self.norm(&format!("{f}.0"), r.dim);
            self.linear(&format!("{f}.1"), r.dim, 4 * r.dim, false);
            self.linear(&format!("{f}.3"), 4 * r.dim, r.dim, false);
        }
    }
}

/// The names and shapes of a checkpoint's tensors, without their values: what kind detection
/// and layout checks read, from a file ([`WeightStore`]) or a key/shape list ([`ShapeList`]).
pub trait TensorShapes {
    /// The stored shape of a tensor (`None` when absent).
    fn shape_of(&self, name: &str) -> Option<Vec<usize>>;
    /// Every tensor's name.
    fn tensor_names(&self) -> Vec<String>;
    /// The file or list the names come from, for messages.
    fn origin(&self) -> &Path;
    /// How many tensors there are, for messages.
    fn count(&self) -> usize;
}

impl TensorShapes for WeightStore {
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.shape(name).map(<[usize]>::to_vec)
    }
    fn tensor_names(&self) -> Vec<String> {
        self.names().map(str::to_string).collect()
    }
    fn origin(&self) -> &Path {
        WeightStore::origin(self)
    }
    fn count(&self) -> usize {
        self.len()
    }
}

/// A key/shape list: a checkpoint's names and shapes without values (e.g. the lists
/// `tools/adapters-reference/make_published_key_lists.py` makes from the reference modules at
/// full size, so that the published files' layouts are checked without downloading them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShapeList {
    /// Where the list came from, for messages.
    pub origin: PathBuf,
    /// Name → shape.
    pub shapes: BTreeMap<String, Vec<usize>>,
}

impl TensorShapes for ShapeList {
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.shapes.get(name).cloned()
    }
    fn tensor_names(&self) -> Vec<String> {
        self.shapes.keys().cloned().collect()
    }
    fn origin(&self) -> &Path {
        &self.origin
    }
    fn count(&self) -> usize {
        self.shapes.len()
    }
}

impl<B: Backend> ImageProjection<B> {
    /// The projection of `spec`, read under `prefix` or random.
    pub fn new(
        init: &Init<'_>,
        prefix: &str,
        spec: ProjectionSpec,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        let p = |n: &str| format!("{prefix}{n}");
        Ok(match spec {
            ProjectionSpec::Plain {
                embed_dim,
                tokens,
                cross,
            } => ImageProjection::Plain(TokenProjection {
                proj: Linear::new(init, &p("proj"), embed_dim, tokens * cross, true, device)?,
                norm: LayerNorm::new(init, &p("norm"), cross, 1e-5, device)?,
                tokens,
            }),
            ProjectionSpec::FullFace { hidden, cross } => {
                ImageProjection::FullFace(FullFaceProjection {
                    mlp: Mlp::new(init, &p("proj"), [hidden, hidden, cross], device)?,
                    norm: LayerNorm::new(init, &p("proj.3"), cross, 1e-5, device)?,
                })
            }
            ProjectionSpec::FaceId {
                id_dim,
                mlp,
                tokens,
                cross,
            } => ImageProjection::FaceId(FaceIdProjection {
                mlp: Mlp::new(init, &p("proj"), [id_dim, mlp, tokens * cross], device)?,
                norm: LayerNorm::new(init, &p("norm"), cross, 1e-5, device)?,
                tokens,
            }),
            ProjectionSpec::Plus { queries, resampler } => {
                let latents = match init {
                    Init::Load(w) => {
                        w.tensor(&p("latents"), [1, queries, resampler.dim], device)?
                    }
                    Init::Random => Tensor::random(
                        [1, queries, resampler.dim],
                        burn::tensor::Distribution::Normal(0.0, (resampler.dim as f64).powf(-0.5)),
                        device,
                    ),
                };
                ImageProjection::Plus(PlusProjection {
                    latents: Param::from_tensor(latents),
                    resampler: Resampler::new(
                        init,
                        prefix.trim_end_matches('.'),
                        resampler,
                        device,
                    )?,
                })
            }
            ProjectionSpec::FaceIdPlus {
                id_dim,
                mlp,
                tokens,
                resampler,
            } => {
                let cross = resampler.output_dim;
                ImageProjection::FaceIdPlus(FaceIdPlusProjection {
                    face_id: FaceIdProjection {
                        mlp: Mlp::new(init, &p("proj"), [id_dim, mlp, tokens * cross], device)?,
                        norm: LayerNorm::new(init, &p("norm"), cross, 1e-5, device)?,
                        tokens,
                    },
                    resampler: Resampler::new(init, &p("perceiver_resampler"), resampler, device)?,
                    shortcut: false,
                    shortcut_scale: 1.0,
                })
            }
        })
    }

    /// The tokens for a batch of references, `[n, tokens, cross]`.
    pub fn forward(&self, input: &ProjectionInput<B>) -> Result<Tensor<B, 3>, DiffusionError> {
        let need = |what: &str| DiffusionError::Setting(format!("needs {what}"));
        Ok(match self {
            ImageProjection::Plain(p) => {
                let e = input
                    .image_embeds
                    .clone()
                    .ok_or_else(|| need("CLIP image embeddings (`image_embeds`)"))?;
                let n = e.dims()[0];
                let x = p.proj.forward(e);
                let cross = x.dims()[1] / p.tokens;
                p.norm.forward(x.reshape([n, p.tokens, cross]))
            }
            ImageProjection::FullFace(p) => {
                let h = input
                    .hidden_states
                    .clone()
                    .ok_or_else(|| need("CLIP hidden states"))?;
                p.norm.forward(p.mlp.forward(h))
            }
            ImageProjection::FaceId(p) => p.forward(
                input
                    .id_embeds
                    .clone()
                    .ok_or_else(|| need("an ArcFace embedding (`id_embeds`)"))?,
            ),
            ImageProjection::Plus(p) => {
                let h = input
                    .hidden_states
                    .clone()
                    .ok_or_else(|| need("CLIP hidden states"))?;
                let n = h.dims()[0];
                let latents = p.latents.val().repeat_dim(0, n);
                p.resampler.forward(h, latents)
            }
            ImageProjection::FaceIdPlus(p) => {
                let id = input
                    .id_embeds
                    .clone()
                    .ok_or_else(|| need("an ArcFace embedding (`id_embeds`)"))?;
                let h = input
                    .hidden_states
                    .clone()
                    .ok_or_else(|| need("the face crop's CLIP hidden states"))?;
                let tokens = p.face_id.forward(id);
                let out = p.resampler.forward(h, tokens.clone());
                if p.shortcut {
                    tokens + out * p.shortcut_scale
                } else {
                    out
                }
            }
        })
    }
}
