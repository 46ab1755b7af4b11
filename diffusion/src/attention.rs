//! The UNet's attention: diffusers' `Attention` (self and cross), `BasicTransformerBlock` and
//! `Transformer2DModel`, and the seam through which adapters reach them without copying the
//! UNet.
//!
//! The seam is [`AttentionHook`], called at two kinds of places:
//! - every `Linear` of a transformer (`to_q`, `to_k`, `to_v`, `to_out.0`, `proj_in`, `proj_out`,
//!   `ff.net.0.proj`, `ff.net.2`), with the module's diffusers path and, for the attention
//!   projections, the layer: LoRA adds `scale · B(A(input))` to the output there;
//! - before `to_out` of every attention layer: IP-Adapter's decoupled cross-attention adds
//!   `scale · softmax(q·k_ipᵀ)·v_ip` there, given the layer's query.
//!
//! Layers are addressed by diffusers' name (`down_blocks.1.attentions.0.transformer_blocks.0.attn2`)
//! or by their index in diffusers' `attn_processors` order ([`AttentionLayer::index`], the
//! numbering of IP-Adapter checkpoints). Hooks compose: [`Hooks`] runs several (IP-Adapter-FaceID
//! is LoRA *and* decoupled attention), each adding its own terms.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::error::DiffusionError;
use crate::nn::{
    Conv2d, Geglu, GroupNorm, Init, LayerNorm, Linear, child, multi_head_attention, split_heads,
};

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

impl Projection {
    /// The diffusers module name under the layer.
    pub fn module(self) -> &'static str {
        match self {
            Projection::Query => "to_q",
            Projection::Key => "to_k",
            Projection::Value => "to_v",
            Projection::Out => "to_out.0",
        }
    }
}

/// What an adapter needs to know about an attention layer to build its own projections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttentionLayer {
    /// The diffusers module path (the attention processor's name without `.processor`).
    pub name: String,
    /// Position in diffusers' `attn_processors` order (down blocks, up blocks, mid block; self-
    /// then cross-attention per transformer block): how IP-Adapter checkpoints number layers
    /// (`ip_adapter.{index}.to_k_ip.weight` on the cross-attention layers' odd indices).
    pub index: usize,
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

/// A `Linear` the hook is called on: where it is and its shape.
#[derive(Debug, Clone, Copy)]
pub struct LinearSite<'a> {
    /// The module path of the block it belongs to (`…transformer_blocks.0.attn2`,
    /// `…transformer_blocks.0`, `down_blocks.1.attentions.0`).
    pub parent: &'a str,
    /// Its name under `parent` (`to_k`, `to_out.0`, `ff.net.2`, `proj_in`).
    pub module: &'a str,
    /// The attention layer, for the four attention projections.
    pub layer: Option<&'a AttentionLayer>,
    /// Which projection, for the four attention projections.
    pub projection: Option<Projection>,
    /// Input width.
    pub in_features: usize,
    /// Output width.
    pub out_features: usize,
}

impl LinearSite<'_> {
    /// The full diffusers module path (`parent.module`), as LoRA state dicts name it.
    pub fn name(&self) -> String {
        child(self.parent, self.module)
    }

    /// Whether the full path is `name`, without allocating.
    pub fn is(&self, name: &str) -> bool {
        name.len() == self.parent.len() + 1 + self.module.len()
            && name.starts_with(self.parent)
            && name.as_bytes()[self.parent.len()] == b'.'
            && name.ends_with(self.module)
    }
}

/// Adds to the UNet what an adapter trains, without changing the base UNet.
///
/// Every method defaults to doing nothing; the UNet calls them on every site.
pub trait AttentionHook<B: Backend> {
    /// The output of a `Linear` (`[batch, tokens, out]`), given its input; LoRA returns
    /// `output + scale · B(A(input))`.
    fn linear(
        &self,
        _site: &LinearSite<'_>,
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

    /// Whether [`AttentionHook::linear`] may change anything: `false` lets the UNet skip the
    /// token reshapes around its 1×1-convolution projections.
    fn touches_linears(&self) -> bool {
        true
    }
}

/// The hook that adds nothing: the base model.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHook;

impl<B: Backend> AttentionHook<B> for NoHook {
    fn touches_linears(&self) -> bool {
        false
    }
}

/// Several hooks as one: each `Linear` output goes through every hook in turn (each adds its
/// term), and the extra attention outputs are summed.
pub struct Hooks<'a, B: Backend>(pub Vec<&'a dyn AttentionHook<B>>);

impl<B: Backend> AttentionHook<B> for Hooks<'_, B> {
    fn linear(
        &self,
        site: &LinearSite<'_>,
        input: &Tensor<B, 3>,
        output: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        self.0
            .iter()
            .fold(output, |out, h| h.linear(site, input, out))
    }

    fn extra_attention(
        &self,
        layer: &AttentionLayer,
        query: &Tensor<B, 4>,
    ) -> Option<Tensor<B, 3>> {
        self.0
            .iter()
            .filter_map(|h| h.extra_attention(layer, query))
            .reduce(|a, b| a + b)
    }

    fn touches_linears(&self) -> bool {
        self.0.iter().any(|h| h.touches_linears())
    }
}

/// A `Linear` with the hook applied to its output.
fn hooked<B: Backend>(
    linear: &Linear<B>,
    site: LinearSite<'_>,
    x: Tensor<B, 3>,
    hook: &dyn AttentionHook<B>,
) -> Tensor<B, 3> {
    let out = linear.forward(x.clone());
    hook.linear(&site, &x, out)
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
                index: 0,
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
        let project = |linear: &Linear<B>, which: Projection, input: Tensor<B, 3>| {
            let site = LinearSite {
                parent: &l.name,
                module: which.module(),
                layer: Some(l),
                projection: Some(which),
                in_features: linear.in_features(),
                out_features: linear.out_features(),
            };
            hooked(linear, site, input, hook)
        };
        let q = split_heads(project(&self.to_q, Projection::Query, x), l.heads);
        let k = split_heads(project(&self.to_k, Projection::Key, kv_in.clone()), l.heads);
        let v = split_heads(project(&self.to_v, Projection::Value, kv_in), l.heads);
        let mut a = multi_head_attention(q.clone(), k, v, false);
        if let Some(extra) = hook.extra_attention(l, &q) {
            a = a + extra;
        }
        project(&self.to_out, Projection::Out, a)
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
    #[module(skip)]
    name: String,
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
            name: prefix.to_string(),
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
        let site = |linear: &Linear<B>, module| LinearSite {
            parent: &self.name,
            module,
            layer: None,
            projection: None,
            in_features: linear.in_features(),
            out_features: linear.out_features(),
        };
        let h = hooked(
            &self.ff_in.proj,
            site(&self.ff_in.proj, "ff.net.0.proj"),
            self.norm3.forward(x.clone()),
            hook,
        );
        let h = Geglu::gate(h);
        hooked(&self.ff_out, site(&self.ff_out, "ff.net.2"), h, hook) + x
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
    #[module(skip)]
    name: String,
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
            name: prefix.to_string(),
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
        let site = |module| LinearSite {
            parent: &self.name,
            module,
            layer: None,
            projection: None,
            in_features: c,
            out_features: c,
        };
        let n = self.norm.forward(x.clone());
        let mut t = match &self.proj_in {
            ProjIn::Conv(conv) if hook.touches_linears() => {
                // A 1×1 convolution is a Linear on the tokens: the hook sees it as one.
                let out = to_tokens(conv.forward(n.clone()));
                hook.linear(&site("proj_in"), &to_tokens(n), out)
            }
            ProjIn::Conv(conv) => to_tokens(conv.forward(n)),
            ProjIn::Linear(lin) => hooked(lin, site("proj_in"), to_tokens(n), hook),
        };
        for block in &self.blocks {
            t = block.forward(t, context, hook);
        }
        let out = match &self.proj_out {
            ProjIn::Conv(conv) if hook.touches_linears() => {
                let out = to_tokens(conv.forward(to_map(t.clone())));
                to_map(hook.linear(&site("proj_out"), &t, out))
            }
            ProjIn::Conv(conv) => conv.forward(to_map(t)),
            ProjIn::Linear(lin) => to_map(hooked(lin, site("proj_out"), t, hook)),
        };
        out + x
    }

    /// The attention layers, self then cross per block.
    pub fn attention_layers(&self) -> impl Iterator<Item = &AttentionLayer> {
        self.blocks
            .iter()
            .flat_map(|b| [b.attn1.layer(), b.attn2.layer()])
    }

    /// The same, to number them.
    pub(crate) fn attention_layers_mut(&mut self) -> impl Iterator<Item = &mut AttentionLayer> {
        self.blocks
            .iter_mut()
            .flat_map(|b| [&mut b.attn1.layer, &mut b.attn2.layer])
    }
}
