//! The IP-Adapter family (tencent-ailab/IP-Adapter; diffusers' `load_ip_adapter`): an image
//! projection (see [`projection`]) makes tokens from a reference; every cross-attention layer
//! attends to them with its own `to_k_ip` / `to_v_ip` and adds `scale · SDPA(q, k_ip, v_ip)`
//! before `to_out`; FaceID adds a LoRA to every attention projection.
//!
//! Checkpoints are read in the original layout: `image_proj.*` and `ip_adapter.{i}.*` with `i`
//! the layer's index in diffusers' `attn_processors` order (cross-attention layers odd), as a
//! torch pickle of `{"image_proj", "ip_adapter"}` or one safetensors file with those prefixes.

pub mod projection;

use std::path::Path;

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use idforge_models::WeightStore;
use idforge_models::nn::{Init, Linear, multi_head_attention, split_heads};

pub use projection::{
    ImageProjection, ProjectionInput, ProjectionSpec, ReferencePooling, ShapeList, TensorShapes,
};

use super::lora::{Lora, LoraLayer};
use crate::attention::{AttentionHook, AttentionLayer, LinearSite, Projection};
use crate::error::DiffusionError;
use crate::unet::UNet;

/// One cross-attention layer's image key and value projections (bias-free).
#[derive(Module, Debug)]
pub struct IpLayer<B: Backend> {
    /// `to_k_ip`: `cross → hidden`.
    pub to_k_ip: Linear<B>,
    /// `to_v_ip`: `cross → hidden`.
    pub to_v_ip: Linear<B>,
}

/// An IP-Adapter: its image projection, one [`IpLayer`] per cross-attention layer of the UNet,
/// and FaceID's LoRA when the checkpoint has one.
#[derive(Module, Debug)]
pub struct IpAdapter<B: Backend> {
    /// Reference → tokens.
    pub projection: ImageProjection<B>,
    /// The decoupled key/value projections, by layer in `attn_processors` order.
    pub layers: Vec<IpLayer<B>>,
    /// The `attn_processors` index of each entry of `layers`.
    #[module(skip)]
    layer_index: Vec<usize>,
    /// The kind and shape the projection was built for.
    #[module(skip)]
    spec: ProjectionSpec,
    /// FaceID's LoRA on every attention projection.
    pub lora: Option<Lora<B>>,
}

impl<B: Backend> IpAdapter<B> {
    /// Reads an adapter file (`.bin` / `.safetensors`) for `unet`; the kind comes from the keys,
    /// as diffusers detects it. An adapter made for another base model (another cross-attention
    /// width or layer count) is an error saying so.
    pub fn load(path: &Path, unet: &UNet<B>, device: &B::Device) -> Result<Self, DiffusionError> {
        let store = WeightStore::open(path)?;
        if !store.names().any(|n| n.starts_with("image_proj.")) {
            return Err(DiffusionError::Config {
                path: path.to_path_buf(),
                message:
                    "no `image_proj.*` tensors: not an IP-Adapter file (PhotoMaker files hold \
                          `id_encoder.*`)"
                        .into(),
            });
        }
        let spec = ProjectionSpec::detect(&store, "image_proj.")?;
        Self::new(&Init::Load(&store), spec, unet, device).map_err(|e| match e {
            DiffusionError::Weights(idforge_models::ModelError::Shape {
                name,
                found,
                expected,
                ..
            }) => DiffusionError::Config {
                path: path.to_path_buf(),
                message: format!(
                    "tensor `{name}` has shape {found:?}, this UNet needs {expected}: the adapter \
                         was made for another base model (SD 1.5 / SDXL?)"
                ),
            },
            e => e,
        })
    }

    /// An adapter of `spec` for `unet`, read from `init` (`image_proj.*`, `ip_adapter.*`) or
    /// random (for training from scratch: `to_k_ip` / `to_v_ip` then start as copies of the
    /// layer's `to_k` / `to_v` only when the trainer copies them).
    pub fn new(
        init: &Init<'_>,
        spec: ProjectionSpec,
        unet: &UNet<B>,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        let layers_all = unet.attention_layers();
        let cross = layers_all
            .iter()
            .find_map(|l| l.cross_attention_dim)
            .ok_or_else(|| {
                DiffusionError::Setting("the UNet has no cross-attention layer".into())
            })?;
        if spec.cross_dim() != cross {
            return Err(DiffusionError::Setting(format!(
                "the adapter makes {}-wide tokens, the UNet's cross-attention takes {cross}: the \
                 adapter was made for another base model (SD 1.5 / SDXL?)",
                spec.cross_dim()
            )));
        }
        let projection = ImageProjection::new(init, "image_proj.", spec, device)?;
        let mut layers = Vec::new();
        let mut layer_index = Vec::new();
        for l in layers_all.iter().filter(|l| l.is_cross()) {
            let (c, hidden) = ip_shape(l);
            let p = |n: &str| format!("ip_adapter.{}.{n}", l.index);
            layers.push(IpLayer {
                to_k_ip: Linear::new(init, &p("to_k_ip"), c, hidden, false, device)?,
                to_v_ip: Linear::new(init, &p("to_v_ip"), c, hidden, false, device)?,
            });
            layer_index.push(l.index);
        }
        let lora = match init {
            Init::Load(store) if store.contains(LORA_PROBE) => {
                Some(faceid_lora(init, &layers_all, 0, device)?)
            }
            _ => None,
        };
        if let Init::Load(store) = init {
            // More IP layers in the file than this UNet has: another base model.
            let expected = layers_all.len();
            let extra = store
                .names()
                .filter_map(|n| {
                    n.strip_prefix("ip_adapter.")?
                        .split('.')
                        .next()?
                        .parse::<usize>()
                        .ok()
                })
                .find(|&i| i >= expected);
            if let Some(i) = extra {
                return Err(DiffusionError::Config {
                    path: store.origin().to_path_buf(),
                    message: format!(
                        "`ip_adapter.{i}.*` but this UNet has {expected} attention layers: the \
                         adapter was made for another base model (SD 1.5 / SDXL?)"
                    ),
                });
            }
        }
        Ok(Self {
            projection,
            layers,
            layer_index,
            spec,
            lora,
        })
    }

    /// Adds FaceID's LoRA of `rank` on every attention projection, initialised for training
    /// (down N(0, 1/rank²), up zero: the base model's output until trained); FaceID trains
    /// rank 128.
    pub fn with_random_lora(
        mut self,
        unet: &UNet<B>,
        rank: usize,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        self.lora = Some(faceid_lora(
            &Init::Random,
            &unet.attention_layers(),
            rank,
            device,
        )?);
        Ok(self)
    }

    /// The `attn_processors` index of each entry of [`IpAdapter::layers`]: the `i` of
    /// `ip_adapter.{i}.to_k_ip.weight`, for the trainer's checkpoint names.
    pub fn layer_indices(&self) -> &[usize] {
        &self.layer_index
    }

    /// The kind, as idforge prints it (`ip-adapter-faceid`, …).
    pub fn kind(&self) -> &'static str {
        self.spec.kind()
    }

    /// The kind and shapes read from the file (what its inputs must look like).
    pub fn spec(&self) -> ProjectionSpec {
        self.spec
    }

    /// Sets FaceID-Plus V2's shortcut (`tokens + scale · resampled`); no effect on other kinds.
    pub fn set_shortcut(&mut self, on: bool, scale: f32) {
        if let ImageProjection::FaceIdPlus(p) = &mut self.projection {
            p.shortcut = on;
            p.shortcut_scale = scale;
        }
    }

    /// Tokens for `batch` rows of `references` images each: the projections of the
    /// `batch · references` inputs (row-major), concatenated per row as diffusers does for
    /// several images (one joint softmax over all their tokens): `[batch, references·tokens, cross]`.
    pub fn tokens(
        &self,
        input: &ProjectionInput<B>,
        batch: usize,
    ) -> Result<Tensor<B, 3>, DiffusionError> {
        self.pooled_tokens(input, batch, ReferencePooling::Concat)
    }

    /// [`IpAdapter::tokens`] with the references of a row pooled before projection (mean or
    /// max) instead of concatenated after it.
    pub fn pooled_tokens(
        &self,
        input: &ProjectionInput<B>,
        batch: usize,
        pooling: ReferencePooling,
    ) -> Result<Tensor<B, 3>, DiffusionError> {
        let rows = [
            &input.image_embeds.as_ref().map(|t| t.dims()[0]),
            &input.id_embeds.as_ref().map(|t| t.dims()[0]),
            &input.hidden_states.as_ref().map(|t| t.dims()[0]),
        ]
        .into_iter()
        .flatten()
        .copied()
        .next()
        .unwrap_or(0);
        if batch == 0 || rows % batch != 0 {
            return Err(DiffusionError::Setting(format!(
                "{rows} reference inputs do not split into {batch} rows"
            )));
        }
        let input = input.pooled(rows / batch, pooling);
        let t = self.projection.forward(&input).map_err(|e| {
            DiffusionError::Setting(format!("this IP-Adapter ({}) {e}", self.kind()))
        })?;
        let [n, k, c] = t.dims();
        Ok(t.reshape([batch, (n / batch) * k, c]))
    }

    /// The hook that conditions the UNet on `tokens` (one row per UNet batch row: with
    /// classifier-free guidance, the unconditional rows first, as the UNet's batch) at `scale`.
    pub fn hook(&self, tokens: Tensor<B, 3>, scale: IpScale) -> IpAttention<'_, B> {
        IpAttention {
            adapter: self,
            tokens,
            scale,
        }
    }
}

/// A FaceID file's first LoRA tensor: its presence marks the LoRA, its first dimension is the
/// rank.
const LORA_PROBE: &str = "ip_adapter.0.to_q_lora.down.weight";

/// `to_k_ip` / `to_v_ip` of a cross-attention layer: `(cross, hidden)`, stored `[hidden, cross]`.
fn ip_shape(l: &AttentionLayer) -> (usize, usize) {
    (
        l.cross_attention_dim.unwrap_or(l.query_dim),
        l.heads * l.head_dim,
    )
}

/// One FaceID LoRA update: its name prefix in the file, the diffusers path of the `Linear` it
/// changes, and that `Linear`'s input and output widths.
struct LoraSite {
    prefix: String,
    module: String,
    inp: usize,
    out: usize,
}

/// FaceID's LoRA sites: `ip_adapter.{i}.to_{q,k,v,out}_lora` on every processor (self- and
/// cross-attention), as `LoRAAttnProcessor` / `LoRAIPAttnProcessor` name them.
fn lora_sites(layers: &[AttentionLayer]) -> Vec<LoraSite> {
    let mut out = Vec::new();
    for l in layers {
        let hidden = l.heads * l.head_dim;
        for (which, short) in [
            (Projection::Query, "q"),
            (Projection::Key, "k"),
            (Projection::Value, "v"),
            (Projection::Out, "out"),
        ] {
            let inp = match which {
                Projection::Key | Projection::Value => l.cross_attention_dim.unwrap_or(l.query_dim),
                Projection::Query => l.query_dim,
                Projection::Out => hidden,
            };
            let outw = match which {
                Projection::Out => l.query_dim,
                _ => hidden,
            };
            out.push(LoraSite {
                prefix: format!("ip_adapter.{}.to_{short}_lora", l.index),
                module: format!("{}.{}", l.name, which.module()),
                inp,
                out: outw,
            });
        }
    }
    out
}

impl<B: Backend> IpAdapter<B> {
    /// Every tensor a file of `spec` holds for a UNet with these attention layers (`image_proj.*`,
    /// `ip_adapter.{i}.to_{k,v}_ip.weight` on the cross-attention layers and, with `lora_rank`,
    /// FaceID's LoRA on every layer), with the shapes the file stores (torch's `[out, in]`), sorted
    /// by name: what [`IpAdapter::new`] reads. Takes the layers of a built UNet or of a config
    /// ([`crate::UNetConfig::attention_layers`]), so full-size layouts cost nothing.
    pub fn layout(
        spec: &ProjectionSpec,
        layers: &[AttentionLayer],
        lora_rank: Option<usize>,
    ) -> Vec<(String, Vec<usize>)> {
        let mut out = spec.layout("image_proj.");
        for l in layers.iter().filter(|l| l.is_cross()) {
            let (c, hidden) = ip_shape(l);
            for n in ["to_k_ip", "to_v_ip"] {
                out.push((
                    format!("ip_adapter.{}.{n}.weight", l.index),
                    vec![hidden, c],
                ));
            }
        }
        if let Some(r) = lora_rank {
            for s in lora_sites(layers) {
                out.push((format!("{}.down.weight", s.prefix), vec![r, s.inp]));
                out.push((format!("{}.up.weight", s.prefix), vec![s.out, r]));
            }
        }
        out.sort();
        out
    }

    /// The layout ([`IpAdapter::layout`]) idforge expects of a file with these names and shapes
    /// on a UNet with these attention layers: the kind and shape detected as
    /// [`IpAdapter::load`] detects them, FaceID's LoRA and its rank when the file has one. A file
    /// idforge loads has exactly these tensors.
    pub fn expected_layout<S: TensorShapes + ?Sized>(
        file: &S,
        layers: &[AttentionLayer],
    ) -> Result<Vec<(String, Vec<usize>)>, DiffusionError> {
        let spec = ProjectionSpec::detect(file, "image_proj.")?;
        let rank = file.shape_of(LORA_PROBE).and_then(|s| s.first().copied());
        Ok(Self::layout(&spec, layers, rank))
    }
}

/// FaceID's LoRA: `ip_adapter.{i}.to_{q,k,v,out}_lora.{down,up}.weight` for every processor.
fn faceid_lora<B: Backend>(
    init: &Init<'_>,
    layers: &[AttentionLayer],
    random_rank: usize,
    device: &B::Device,
) -> Result<Lora<B>, DiffusionError> {
    let mut out = Vec::new();
    for site in lora_sites(layers) {
        let prefix = site.prefix;
        let rank = match init {
            Init::Load(store) => store
                .shape(&format!("{prefix}.down.weight"))
                .and_then(|s| s.first().copied())
                .ok_or_else(|| idforge_models::ModelError::MissingTensor {
                    path: store.origin().to_path_buf(),
                    name: format!("{prefix}.down.weight"),
                    available: store.len(),
                })?,
            Init::Random => random_rank,
        };
        let layer = LoraLayer::new(init, &prefix, site.inp, site.out, rank, device)?;
        out.push((site.module, layer));
    }
    Ok(Lora::new(out, 1.0))
}

/// The IP scale: one value, or per layer (diffusers' `set_ip_adapter_scale` with a dict sets
/// it per block; here by the layer-name prefix, the first matching entry wins).
#[derive(Debug, Clone, PartialEq)]
pub struct IpScale {
    /// The scale of layers no entry matches.
    pub default: f32,
    /// `(layer-name prefix, scale)`, e.g. `("up_blocks.0.attentions.1", 1.0)`.
    pub per_layer: Vec<(String, f32)>,
}

impl IpScale {
    /// One scale everywhere.
    pub fn uniform(scale: f32) -> Self {
        Self {
            default: scale,
            per_layer: Vec::new(),
        }
    }

    /// The scale of one layer.
    pub fn of(&self, layer: &str) -> f32 {
        self.per_layer
            .iter()
            .find(|(p, _)| layer.starts_with(p.as_str()))
            .map_or(self.default, |(_, s)| *s)
    }
}

/// The adapter on the UNet for one set of tokens: the decoupled cross-attention and FaceID's
/// LoRA.
pub struct IpAttention<'a, B: Backend> {
    adapter: &'a IpAdapter<B>,
    tokens: Tensor<B, 3>,
    scale: IpScale,
}

impl<B: Backend> AttentionHook<B> for IpAttention<'_, B> {
    fn linear(
        &self,
        site: &LinearSite<'_>,
        input: &Tensor<B, 3>,
        output: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        match &self.adapter.lora {
            Some(lora) if site.layer.is_some() => lora.linear(site, input, output),
            _ => output,
        }
    }

    fn extra_attention(
        &self,
        layer: &AttentionLayer,
        query: &Tensor<B, 4>,
    ) -> Option<Tensor<B, 3>> {
        if !layer.is_cross() {
            return None;
        }
        let i = self
            .adapter
            .layer_index
            .iter()
            .position(|&i| i == layer.index)?;
        let scale = self.scale.of(&layer.name);
        if scale == 0.0 {
            return None;
        }
        let ip = &self.adapter.layers[i];
        let rows = query.dims()[0];
        let tokens = if self.tokens.dims()[0] == rows {
            self.tokens.clone()
        } else {
            // One set of tokens for every row.
            self.tokens.clone().repeat_dim(0, rows)
        };
        let k = split_heads(ip.to_k_ip.forward(tokens.clone()), layer.heads);
        let v = split_heads(ip.to_v_ip.forward(tokens), layer.heads);
        Some(multi_head_attention(query.clone(), k, v, false) * scale)
    }

    fn touches_linears(&self) -> bool {
        self.adapter.lora.is_some()
    }
}
