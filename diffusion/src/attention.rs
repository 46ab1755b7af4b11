//! The UNet's attention: diffusers' `Attention` (self and cross), `BasicTransformerBlock` and
//! `Transformer2DModel`, and the hook through which adapters reach every attention layer by
//! name without copying the UNet.
//!
//! IP-Adapter's decoupled cross-attention adds `softmax(q·k_ipᵀ)·v_ip` to a cross-attention
//! layer's output before its `to_out`; LoRA adds a low-rank update to a projection's output.
//! [`AttentionHook`] is called at exactly those two places, with the layer's diffusers name
//! (`down_blocks.1.attentions.0.transformer_blocks.0.attn2`).

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use crate::error::DiffusionError;
use crate::nn::{Conv2d, Geglu, GroupNorm, Init, LayerNorm, Linear, child};

/// One of an attention layer's four projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    /// `to_q`
    Query,
    /// `to_k`
    Key,
    /// `to_v`
    Value,
    /// `to_out.0`
    Out,
}

/// What an adapter needs to know about an attention layer to build its own projections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttentionLayer {
    /// The diffusers module path (the attention processor's name without `.processor`).
    pub name: String,
    /// Width of the image tokens (the query's input).
    pub query_dim: usize,
    /// Width of the conditioning tokens for cross-attention; `None` for self-attention.
    pub cross_attention_dim: Option<usize>,
    /// Heads.
    pub heads: usize,
    /// Width of each head.
    pub head_dim: usize,
}

impl AttentionLayer {
    /// Whether the layer attends to the conditioning (`attn2`) rather than to the image.
    pub fn is_cross(&self) -> bool {
        self.cross_attention_dim.is_some()
    }
}

/// Adds to attention layers what an adapter trains, without changing the base UNet.
///
/// Both methods default to doing nothing; the UNet calls them on every attention layer.
pub trait AttentionHook<B: Backend> {
    /// The output of a projection (`[batch, tokens, width]`), given its input; LoRA returns
    /// `output + scale · B(A(input))`.
    fn projection(
        &self,
        _layer: &AttentionLayer,
        _which: Projection,
        _input: &Tensor<B, 3>,
        output: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        output
    }

    /// Extra attention output to add before `to_out` (`[batch, tokens, heads·head_dim]`), given
    /// the layer's query (`[batch, heads, tokens, head_dim]`); IP-Adapter attends to its image
    /// tokens here with its own key and value projections.
    fn extra_attention(
        &self,
        _layer: &AttentionLayer,
        _query: &Tensor<B, 4>,
    ) -> Option<Tensor<B, 3>> {
        None
    }
}

/// The hook that adds nothing: the base model.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHook;

impl<B: Backend> AttentionHook<B> for NoHook {}

/// Scaled dot-product attention over `[batch, heads, tokens, head_dim]` tensors, merged back
/// to `[batch, tokens, heads·head_dim]`; shared with adapters so they compute it the same way.
pub fn multi_head_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> Tensor<B, 3> {
    let [b, h, n, d] = q.dims();
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: false,
    };
    attention(q, k, v, None, None, options)
        .swap_dims(1, 2)
        .reshape([b, n, h * d])
}

/// `[batch, tokens, heads·head_dim]` → `[batch, heads, tokens, head_dim]`.
pub fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, n, w] = x.dims();
    x.reshape([b, n, heads, w / heads]).swap_dims(1, 2)
}

/// diffusers' `Attention` as the UNet uses it: bias-free q/k/v, `to_out.0` with bias.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `to_q`
    pub to_q: Linear<B>,
    /// `to_k`
    pub to_k: Linear<B>,
    /// `to_v`
    pub to_v: Linear<B>,
    /// `to_out.0`
    pub to_out: Linear<B>,
    #[module(skip)]
    layer: AttentionLayer,
}

impl<B: Backend> Attention<B> {
    /// The layer `prefix` (`…attn1` or `…attn2`).
    pub fn new(
        init: &Init<'_>,
        prefix: &str,
        query_dim: usize,
        cross_attention_dim: Option<usize>,
        heads: usize,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        let kv_dim = cross_attention_dim.unwrap_or(query_dim);
        Ok(Self {
            to_q: Linear::new(
                init,
                &child(prefix, "to_q"),
                query_dim,
                query_dim,
                false,
                device,
            )?,
            to_k: Linear::new(
                init,
                &child(prefix, "to_k"),
                kv_dim,
                query_dim,
                false,
                device,
            )?,
            to_v: Linear::new(
                init,
                &child(prefix, "to_v"),
                kv_dim,
                query_dim,
                false,
                device,
            )?,
            to_out: Linear::new(
                init,
                &child(prefix, "to_out.0"),
                query_dim,
                query_dim,
                true,
                device,
            )?,
            layer: AttentionLayer {
                name: prefix.to_string(),
                query_dim,
                cross_attention_dim,
                heads,
                head_dim: query_dim / heads,
            },
        })
    }

    /// The layer's name and shape.
    pub fn layer(&self) -> &AttentionLayer {
        &self.layer
    }

    /// # Shapes
    /// - `x`: `[batch, tokens, query_dim]`
    /// - `context`: `[batch, text_tokens, cross_attention_dim]` for cross-attention, else
    ///   `None` (self-attention)
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        context: Option<&Tensor<B, 3>>,
        hook: &dyn AttentionHook<B>,
    ) -> Tensor<B, 3> {
        let l = &self.layer;
        let kv_in = context.cloned().unwrap_or_else(|| x.clone());
        let q = hook.projection(l, Projection::Query, &x, self.to_q.forward(x.clone()));
        let k = hook.projection(l, Projection::Key, &kv_in, self.to_k.forward(kv_in.clone()));
        let v = hook.projection(
            l,
            Projection::Value,
            &kv_in,
            self.to_v.forward(kv_in.clone()),
        );
        let q = split_heads(q, l.heads);
        let mut a =
            multi_head_attention(q.clone(), split_heads(k, l.heads), split_heads(v, l.heads));
        if let Some(extra) = hook.extra_attention(l, &q) {
            a = a + extra;
        }
        hook.projection(l, Projection::Out, &a, self.to_out.forward(a.clone()))
    }
}

/// diffusers' `BasicTransformerBlock` (layer norms, self-attention, cross-attention, GEGLU).
#[derive(Module, Debug)]
pub struct TransformerBlock<B: Backend> {
    norm1: LayerNorm<B>,
    /// Self-attention.
    pub attn1: Attention<B>,
    norm2: LayerNorm<B>,
    /// Cross-attention to the text.
    pub attn2: Attention<B>,
    norm3: LayerNorm<B>,
    ff_in: Geglu<B>,
    ff_out: Linear<B>,
}

impl<B: Backend> TransformerBlock<B> {
    fn new(
        init: &Init<'_>,
        prefix: &str,
        dim: usize,
        heads: usize,
        cross_attention_dim: usize,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        let eps = 1e-5;
        Ok(Self {
            norm1: LayerNorm::new(init, &child(prefix, "norm1"), dim, eps, device)?,
            attn1: Attention::new(init, &child(prefix, "attn1"), dim, None, heads, device)?,
            norm2: LayerNorm::new(init, &child(prefix, "norm2"), dim, eps, device)?,
            attn2: Attention::new(
                init,
                &child(prefix, "attn2"),
                dim,
                Some(cross_attention_dim),
                heads,
                device,
            )?,
            norm3: LayerNorm::new(init, &child(prefix, "norm3"), dim, eps, device)?,
            ff_in: Geglu::new(init, &child(prefix, "ff.net.0"), dim, 4 * dim, device)?,
            ff_out: Linear::new(init, &child(prefix, "ff.net.2"), 4 * dim, dim, true, device)?,
        })
    }

    fn forward(
        &self,
        x: Tensor<B, 3>,
        context: &Tensor<B, 3>,
        hook: &dyn AttentionHook<B>,
    ) -> Tensor<B, 3> {
        let x = self
            .attn1
            .forward(self.norm1.forward(x.clone()), None, hook)
            + x;
        let x = self
            .attn2
            .forward(self.norm2.forward(x.clone()), Some(context), hook)
            + x;
        self.ff_out
            .forward(self.ff_in.forward(self.norm3.forward(x.clone())))
            + x
    }
}

/// How a `Transformer2DModel` enters and leaves token space.
#[derive(Module, Debug)]
enum ProjIn<B: Backend> {
    Conv(Conv2d<B>),
    Linear(Linear<B>),
}

/// diffusers' `Transformer2DModel` on a feature map: GroupNorm, projection in, transformer
/// blocks, projection out, residual.
#[derive(Module, Debug)]
pub struct Transformer2D<B: Backend> {
    norm: GroupNorm<B>,
    proj_in: ProjIn<B>,
    /// The transformer blocks, in order.
    pub blocks: Vec<TransformerBlock<B>>,
    proj_out: ProjIn<B>,
}

/// The shape of one `Transformer2DModel`.
#[derive(Debug, Clone, Copy)]
pub struct TransformerShape {
    /// Channels of the feature map.
    pub channels: usize,
    /// Heads.
    pub heads: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Width of the text conditioning.
    pub cross_attention_dim: usize,
    /// GroupNorm groups.
    pub groups: usize,
    /// Linear instead of 1×1-convolution projections.
    pub linear_projection: bool,
}

impl<B: Backend> Transformer2D<B> {
    /// The module `prefix` (`down_blocks.1.attentions.0`).
    pub fn new(
        init: &Init<'_>,
        prefix: &str,
        s: TransformerShape,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        let c = s.channels;
        let proj = |name: &str| -> Result<ProjIn<B>, DiffusionError> {
            let p = child(prefix, name);
            Ok(if s.linear_projection {
                ProjIn::Linear(Linear::new(init, &p, c, c, true, device)?)
            } else {
                ProjIn::Conv(Conv2d::new(init, &p, c, c, 1, 1, 0, device)?)
            })
        };
        Ok(Self {
            norm: GroupNorm::new(init, &child(prefix, "norm"), s.groups, c, 1e-6, device)?,
            proj_in: proj("proj_in")?,
            blocks: (0..s.layers)
                .map(|i| {
                    TransformerBlock::new(
                        init,
                        &child(prefix, format!("transformer_blocks.{i}")),
                        c,
                        s.heads,
                        s.cross_attention_dim,
                        device,
                    )
                })
                .collect::<Result<_, _>>()?,
            proj_out: proj("proj_out")?,
        })
    }

    /// # Shapes
    /// - `x`: `[batch, channels, h, w]`
    /// - `context`: `[batch, text_tokens, cross_attention_dim]`
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        context: &Tensor<B, 3>,
        hook: &dyn AttentionHook<B>,
    ) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let to_tokens = |t: Tensor<B, 4>| t.reshape([b, c, h * w]).swap_dims(1, 2);
        let to_map = |t: Tensor<B, 3>| t.swap_dims(1, 2).reshape([b, c, h, w]);
        let n = self.norm.forward(x.clone());
        let mut t = match &self.proj_in {
            ProjIn::Conv(conv) => to_tokens(conv.forward(n)),
            ProjIn::Linear(lin) => lin.forward(to_tokens(n)),
        };
        for block in &self.blocks {
            t = block.forward(t, context, hook);
        }
        let out = match &self.proj_out {
            ProjIn::Conv(conv) => conv.forward(to_map(t)),
            ProjIn::Linear(lin) => to_map(lin.forward(t)),
        };
        out + x
    }

    /// The attention layers, self then cross per block.
    pub fn attention_layers(&self) -> impl Iterator<Item = &AttentionLayer> {
        self.blocks
            .iter()
            .flat_map(|b| [b.attn1.layer(), b.attn2.layer()])
    }
}
