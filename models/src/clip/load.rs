//! CLIP weights from `.safetensors` files in the two layouts checkpoints come in, and the
//! names and shapes each layout has.
//!
//! - **Hugging Face** (transformers `CLIPModel`, `CLIPTextModel[WithProjection]`,
//!   `CLIPVisionModel[WithProjection]`, modeling_clip.py as of 4.46): `text_model.*`,
//!   `vision_model.*` (with upstream's `pre_layrnorm` typo), `text_projection.weight` and
//!   `visual_projection.weight` as `nn.Linear` (`[out, in]`), attention as separate
//!   `q_proj`/`k_proj`/`v_proj`.
//! - **OpenCLIP** (open_clip 3.3 `CLIP`, also OpenAI's own `clip` package): `token_embedding`,
//!   `positional_embedding`, `transformer.resblocks.*`, `ln_final`, `text_projection` and
//!   `visual.proj` as plain matrices used as `x @ proj` (`[in, out]`), `visual.*`, attention
//!   as `nn.MultiheadAttention` with the packed `in_proj_weight` (`[3·width, width]`, rows
//!   q, k, v).
//!
//! Both become the same burn module: one packed qkv projection per block, linear weights in
//! burn's `[in, out]` order. The tensors come from the one [`WeightStore`] (read on demand,
//! f32, f16, bf16 and f64 read as f32); the loader ignores tensors it does not need (`logit_scale` of a text-only load, `position_ids` of older exports), and
//! fails on a missing tensor or another shape with an error naming it.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::config::{ClipConfig, ClipTextConfig, ClipVisionConfig};
use crate::error::ModelError;
use crate::weights::{WeightStore, transpose};

/// The naming scheme of a CLIP checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// transformers' `text_model.*` / `vision_model.*`.
    HuggingFace,
    /// open_clip's (and OpenAI's) `transformer.resblocks.*` / `visual.*`.
    OpenClip,
}

impl WeightLayout {
    /// Guesses the layout from the names in the files (after the prefix), so that users need
    /// not know which library saved a checkpoint.
    pub fn detect(weights: &WeightStore) -> Option<Self> {
        let has = |p: &str| weights.names().any(|n| n.starts_with(p));
        if has("text_model.") || has("vision_model.") {
            Some(Self::HuggingFace)
        } else if has("transformer.resblocks.") || has("visual.") {
            Some(Self::OpenClip)
        } else {
            None
        }
    }
}

/// Builds one burn tensor from its spec: the parts concatenated along the first axis,
/// transposed if asked.
pub(super) fn tensor<B: Backend, const D: usize>(
    weights: &WeightStore,
    spec: &Spec,
    device: &B::Device,
) -> Result<Tensor<B, D>, ModelError> {
    let mut values = Vec::new();
    for (name, shape) in &spec.parts {
        values.extend(weights.values(name, shape)?);
    }
    let shape = spec.shape();
    assert_eq!(shape.len(), D, "spec {:?} is not {D}-d", spec.parts);
    let values = if spec.transpose {
        transpose(&values, shape[1], shape[0])
    } else {
        values
    };
    Ok(Tensor::from_data(TensorData::new(values, shape), device))
}

/// Where one burn parameter comes from: file tensors (name, shape) stacked along their first
/// axis, then transposed (`nn.Linear`'s `[out, in]` to burn's `[in, out]`) if `transpose`.
#[derive(Debug, Clone)]
pub(super) struct Spec {
    pub(super) parts: Vec<(String, Vec<usize>)>,
    pub(super) transpose: bool,
}

impl Spec {
    fn plain(name: String, shape: Vec<usize>) -> Self {
        Self {
            parts: vec![(name, shape)],
            transpose: false,
        }
    }

    /// A `[out, in]` matrix used as burn's `[in, out]`.
    fn linear(name: String, out: usize, inp: usize) -> Self {
        Self {
            parts: vec![(name, vec![out, inp])],
            transpose: true,
        }
    }

    /// The shape of the burn parameter.
    pub(super) fn shape(&self) -> Vec<usize> {
        let mut shape = self.parts[0].1.clone();
        shape[0] = self.parts.iter().map(|(_, s)| s[0]).sum();
        if self.transpose {
            shape.reverse();
        }
        shape
    }
}

/// A LayerNorm's scale and shift.
#[derive(Debug, Clone)]
pub(super) struct NormSpec {
    pub(super) weight: Spec,
    pub(super) bias: Spec,
}

fn norm(prefix: &str, width: usize) -> NormSpec {
    NormSpec {
        weight: Spec::plain(format!("{prefix}.weight"), vec![width]),
        bias: Spec::plain(format!("{prefix}.bias"), vec![width]),
    }
}

/// A linear layer's weight (`[in, out]`) and bias.
#[derive(Debug, Clone)]
pub(super) struct LinearSpec {
    pub(super) weight: Spec,
    pub(super) bias: Spec,
}

fn linear(prefix: &str, out: usize, inp: usize) -> LinearSpec {
    LinearSpec {
        weight: Spec::linear(format!("{prefix}.weight"), out, inp),
        bias: Spec::plain(format!("{prefix}.bias"), vec![out]),
    }
}

/// One residual attention block.
#[derive(Debug, Clone)]
pub(super) struct BlockSpec {
    pub(super) ln1: NormSpec,
    pub(super) qkv: LinearSpec,
    pub(super) out: LinearSpec,
    pub(super) ln2: NormSpec,
    pub(super) fc1: LinearSpec,
    pub(super) fc2: LinearSpec,
}

fn block(layout: WeightLayout, prefix: &str, width: usize, mlp: usize) -> BlockSpec {
    match layout {
        WeightLayout::HuggingFace => {
            let attn = format!("{prefix}.self_attn");
            let parts = |kind: &str, shape: Vec<usize>| -> Vec<(String, Vec<usize>)> {
                ["q", "k", "v"]
                    .iter()
                    .map(|p| (format!("{attn}.{p}_proj.{kind}"), shape.clone()))
                    .collect()
            };
            BlockSpec {
                ln1: norm(&format!("{prefix}.layer_norm1"), width),
                qkv: LinearSpec {
                    weight: Spec {
                        parts: parts("weight", vec![width, width]),
                        transpose: true,
                    },
                    bias: Spec {
                        parts: parts("bias", vec![width]),
                        transpose: false,
                    },
                },
                out: linear(&format!("{attn}.out_proj"), width, width),
                ln2: norm(&format!("{prefix}.layer_norm2"), width),
                fc1: linear(&format!("{prefix}.mlp.fc1"), mlp, width),
                fc2: linear(&format!("{prefix}.mlp.fc2"), width, mlp),
            }
        }
        WeightLayout::OpenClip => BlockSpec {
            ln1: norm(&format!("{prefix}.ln_1"), width),
            qkv: LinearSpec {
                weight: Spec::linear(format!("{prefix}.attn.in_proj_weight"), 3 * width, width),
                bias: Spec::plain(format!("{prefix}.attn.in_proj_bias"), vec![3 * width]),
            },
            out: linear(&format!("{prefix}.attn.out_proj"), width, width),
            ln2: norm(&format!("{prefix}.ln_2"), width),
            fc1: linear(&format!("{prefix}.mlp.c_fc"), mlp, width),
            fc2: linear(&format!("{prefix}.mlp.c_proj"), width, mlp),
        },
    }
}

/// The text tower's tensors.
#[derive(Debug, Clone)]
pub(super) struct TextSpec {
    pub(super) token_embedding: Spec,
    pub(super) position_embedding: Spec,
    pub(super) blocks: Vec<BlockSpec>,
    pub(super) final_ln: NormSpec,
    pub(super) projection: Option<Spec>,
}

pub(super) fn text_spec(c: &ClipTextConfig, layout: WeightLayout) -> TextSpec {
    let w = c.width;
    let (tok, pos, blocks, ln) = match layout {
        WeightLayout::HuggingFace => (
            "text_model.embeddings.token_embedding.weight",
            "text_model.embeddings.position_embedding.weight",
            "text_model.encoder.layers",
            "text_model.final_layer_norm",
        ),
        WeightLayout::OpenClip => (
            "token_embedding.weight",
            "positional_embedding",
            "transformer.resblocks",
            "ln_final",
        ),
    };
    TextSpec {
        token_embedding: Spec::plain(tok.into(), vec![c.vocab_size, w]),
        position_embedding: Spec::plain(pos.into(), vec![c.context_length, w]),
        blocks: (0..c.layers)
            .map(|i| block(layout, &format!("{blocks}.{i}"), w, c.mlp_width))
            .collect(),
        final_ln: norm(ln, w),
        projection: c.projection_dim.map(|e| match layout {
            WeightLayout::HuggingFace => Spec::linear("text_projection.weight".into(), e, w),
            WeightLayout::OpenClip => Spec::plain("text_projection".into(), vec![w, e]),
        }),
    }
}

/// The vision tower's tensors.
#[derive(Debug, Clone)]
pub(super) struct VisionSpec {
    pub(super) class_embedding: Spec,
    pub(super) patch_embedding: Spec,
    pub(super) position_embedding: Spec,
    pub(super) pre_ln: NormSpec,
    pub(super) blocks: Vec<BlockSpec>,
    pub(super) post_ln: NormSpec,
    pub(super) projection: Option<Spec>,
}

pub(super) fn vision_spec(c: &ClipVisionConfig, layout: WeightLayout) -> VisionSpec {
    let w = c.width;
    let p = c.patch_size;
    let names = match layout {
        WeightLayout::HuggingFace => [
            "vision_model.embeddings.class_embedding",
            "vision_model.embeddings.patch_embedding.weight",
            "vision_model.embeddings.position_embedding.weight",
            "vision_model.pre_layrnorm",
            "vision_model.encoder.layers",
            "vision_model.post_layernorm",
        ],
        WeightLayout::OpenClip => [
            "visual.class_embedding",
            "visual.conv1.weight",
            "visual.positional_embedding",
            "visual.ln_pre",
            "visual.transformer.resblocks",
            "visual.ln_post",
        ],
    };
    VisionSpec {
        class_embedding: Spec::plain(names[0].into(), vec![w]),
        patch_embedding: Spec::plain(names[1].into(), vec![w, 3, p, p]),
        position_embedding: Spec::plain(names[2].into(), vec![c.tokens(), w]),
        pre_ln: norm(names[3], w),
        blocks: (0..c.layers)
            .map(|i| block(layout, &format!("{}.{i}", names[4]), w, c.mlp_width))
            .collect(),
        post_ln: norm(names[5], w),
        projection: c.projection_dim.map(|e| match layout {
            WeightLayout::HuggingFace => Spec::linear("visual_projection.weight".into(), e, w),
            WeightLayout::OpenClip => Spec::plain("visual.proj".into(), vec![w, e]),
        }),
    }
}

/// `logit_scale`: a scalar in both layouts.
pub(super) fn logit_scale_name() -> &'static str {
    "logit_scale"
}

fn push_block(out: &mut Vec<(String, Vec<usize>)>, b: &BlockSpec) {
    for s in [
        &b.ln1.weight,
        &b.ln1.bias,
        &b.qkv.weight,
        &b.qkv.bias,
        &b.out.weight,
        &b.out.bias,
        &b.ln2.weight,
        &b.ln2.bias,
        &b.fc1.weight,
        &b.fc1.bias,
        &b.fc2.weight,
        &b.fc2.bias,
    ] {
        out.extend(s.parts.iter().cloned());
    }
}

/// The tensors (name, shape as stored) a text tower of this config reads in this layout.
pub fn text_tensors(config: &ClipTextConfig, layout: WeightLayout) -> Vec<(String, Vec<usize>)> {
    let s = text_spec(config, layout);
    let mut out = Vec::new();
    out.extend(s.token_embedding.parts.iter().cloned());
    out.extend(s.position_embedding.parts.iter().cloned());
    for b in &s.blocks {
        push_block(&mut out, b);
    }
    out.extend(s.final_ln.weight.parts.iter().cloned());
    out.extend(s.final_ln.bias.parts.iter().cloned());
    if let Some(p) = &s.projection {
        out.extend(p.parts.iter().cloned());
    }
    out
}

/// The tensors (name, shape as stored) a vision tower of this config reads in this layout.
pub fn vision_tensors(
    config: &ClipVisionConfig,
    layout: WeightLayout,
) -> Vec<(String, Vec<usize>)> {
    let s = vision_spec(config, layout);
    let mut out = Vec::new();
    for spec in [
        &s.class_embedding,
        &s.patch_embedding,
        &s.position_embedding,
    ] {
        out.extend(spec.parts.iter().cloned());
    }
    out.extend(s.pre_ln.weight.parts.iter().cloned());
    out.extend(s.pre_ln.bias.parts.iter().cloned());
    for b in &s.blocks {
        push_block(&mut out, b);
    }
    out.extend(s.post_ln.weight.parts.iter().cloned());
    out.extend(s.post_ln.bias.parts.iter().cloned());
    if let Some(p) = &s.projection {
        out.extend(p.parts.iter().cloned());
    }
    out
}

/// Every tensor of a full checkpoint (both towers and `logit_scale`), as stored: what a
/// `CLIPModel` or open_clip `CLIP` state dict holds.
pub fn clip_tensors(config: &ClipConfig, layout: WeightLayout) -> Vec<(String, Vec<usize>)> {
    let mut out = text_tensors(&config.text, layout);
    out.extend(vision_tensors(&config.vision, layout));
    out.push((logit_scale_name().into(), vec![]));
    out
}

/// Reads `logit_scale` if present (a text- or vision-only checkpoint has none).
pub(super) fn logit_scale(weights: &WeightStore) -> Result<Option<f32>, ModelError> {
    if !weights.contains(logit_scale_name()) {
        return Ok(None);
    }
    Ok(weights.values(logit_scale_name(), &[])?.first().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_qkv_spec_is_in_by_three_out() {
        let b = block(WeightLayout::HuggingFace, "x", 8, 32);
        assert_eq!(b.qkv.weight.shape(), vec![8, 24]);
        assert_eq!(b.qkv.bias.shape(), vec![24]);
        let b = block(WeightLayout::OpenClip, "x", 8, 32);
        assert_eq!(b.qkv.weight.shape(), vec![8, 24]);
        assert_eq!(b.fc1.weight.shape(), vec![8, 32]);
    }
}
