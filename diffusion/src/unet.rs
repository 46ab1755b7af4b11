//! diffusers' `UNet2DConditionModel` (diffusers 0.3x, `unet_2d_condition.py` and
//! `unet_2d_blocks.py`): one config-driven code path for the tiny test models, Stable
//! Diffusion 1.5 and SDXL (linear projections, several transformer layers per block, the
//! added text-time embedding).

use std::path::Path;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::attention::{
    Attention, AttentionHook, AttentionLayer, NoHook, Transformer2D, TransformerShape,
};
use crate::config::{Level, UNetConfig};
use crate::error::DiffusionError;
use crate::nn::{Conv2d, GroupNorm, Init, Linear, child, silu, upsample_nearest_2x};
use idforge_models::WeightStore;

/// diffusers' `get_timestep_embedding`: sinusoids of `t` at `dim / 2` geometric frequencies.
///
/// # Shapes
/// `t`: `[batch]` → `[batch, dim]`
pub fn timestep_embedding<B: Backend>(
    t: Tensor<B, 1>,
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
) -> Tensor<B, 2> {
    let half = dim / 2;
    let device = t.device();
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / (half as f64 - shift)).exp() as f32)
        .collect();
    let freqs = Tensor::<B, 1>::from_data(TensorData::new(freqs, [half]), &device);
    let [batch] = t.dims();
    let args = t.reshape([batch, 1]) * freqs.reshape([1, half]);
    let (sin, cos) = (args.clone().sin(), args.cos());
    let emb = if flip_sin_to_cos {
        Tensor::cat(vec![cos, sin], 1)
    } else {
        Tensor::cat(vec![sin, cos], 1)
    };
    if dim % 2 == 1 {
        Tensor::cat(vec![emb, Tensor::zeros([batch, 1], &device)], 1)
    } else {
        emb
    }
}

/// diffusers' `TimestepEmbedding`: `linear_2(silu(linear_1(x)))`.
#[derive(Module, Debug)]
pub struct TimestepMlp<B: Backend> {
    linear_1: Linear<B>,
    linear_2: Linear<B>,
}

impl<B: Backend> TimestepMlp<B> {
    fn new(
        init: &Init<'_>,
        prefix: &str,
        inp: usize,
        out: usize,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        Ok(Self {
            linear_1: Linear::new(init, &child(prefix, "linear_1"), inp, out, true, device)?,
            linear_2: Linear::new(init, &child(prefix, "linear_2"), out, out, true, device)?,
        })
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}

/// diffusers' `ResnetBlock2D` (the `default` time-embedding norm); without a time embedding
/// in the VAE.
#[derive(Module, Debug)]
pub struct ResnetBlock<B: Backend> {
    norm1: GroupNorm<B>,
    conv1: Conv2d<B>,
    time_emb_proj: Option<Linear<B>>,
    norm2: GroupNorm<B>,
    conv2: Conv2d<B>,
    conv_shortcut: Option<Conv2d<B>>,
}

/// The shape of one ResNet block.
#[derive(Debug, Clone, Copy)]
pub struct ResnetShape {
    /// Channels in.
    pub inp: usize,
    /// Channels out.
    pub out: usize,
    /// Width of the time embedding, if the block takes one.
    pub temb: Option<usize>,
    /// GroupNorm groups.
    pub groups: usize,
    /// GroupNorm epsilon.
    pub eps: f64,
}

impl<B: Backend> ResnetBlock<B> {
    /// The block `prefix` (`down_blocks.0.resnets.1`).
    pub fn new(
        init: &Init<'_>,
        prefix: &str,
        s: ResnetShape,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        let p = |n: &str| child(prefix, n);
        Ok(Self {
            norm1: GroupNorm::new(init, &p("norm1"), s.groups, s.inp, s.eps, device)?,
            conv1: Conv2d::new(init, &p("conv1"), s.inp, s.out, 3, 1, 1, device)?,
            time_emb_proj: s
                .temb
                .map(|t| Linear::new(init, &p("time_emb_proj"), t, s.out, true, device))
                .transpose()?,
            norm2: GroupNorm::new(init, &p("norm2"), s.groups, s.out, s.eps, device)?,
            conv2: Conv2d::new(init, &p("conv2"), s.out, s.out, 3, 1, 1, device)?,
            conv_shortcut: (s.inp != s.out)
                .then(|| Conv2d::new(init, &p("conv_shortcut"), s.inp, s.out, 1, 1, 0, device))
                .transpose()?,
        })
    }

    /// # Shapes
    /// - `x`: `[batch, in, h, w]`, `temb`: `[batch, temb]` → `[batch, out, h, w]`
    pub fn forward(&self, x: Tensor<B, 4>, temb: Option<&Tensor<B, 2>>) -> Tensor<B, 4> {
        let mut h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(silu(t.clone()));
            let [b, c] = t.dims();
            h = h + t.reshape([b, c, 1, 1]);
        }
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        shortcut + h
    }
}

/// One level of the UNet: ResNets, each followed by a transformer on attention levels, and a
/// resampling convolution.
#[derive(Module, Debug)]
pub struct UNetBlock<B: Backend> {
    /// The ResNets.
    pub resnets: Vec<ResnetBlock<B>>,
    /// The transformers (empty on levels without attention).
    pub attentions: Vec<Transformer2D<B>>,
    /// `downsamplers.0.conv` (stride 2) or `upsamplers.0.conv` (after 2× nearest upsampling).
    resample: Option<Conv2d<B>>,
}

/// The mid block: ResNet, transformer, ResNet.
#[derive(Module, Debug)]
pub struct MidBlock<B: Backend> {
    /// The two ResNets.
    pub resnets: Vec<ResnetBlock<B>>,
    /// The transformer between them.
    pub attentions: Vec<Transformer2D<B>>,
}

/// SDXL's added conditioning: the pooled text embedding and sinusoids of the six size/crop
/// numbers, through an MLP, added to the time embedding.
#[derive(Module, Debug)]
struct TextTimeEmbedding<B: Backend> {
    mlp: TimestepMlp<B>,
    #[module(skip)]
    time_dim: usize,
}

/// The conditioning of one UNet call.
#[derive(Debug, Clone)]
pub struct UNetInput<B: Backend> {
    /// Noisy latents: `[batch, in_channels, h, w]`.
    pub sample: Tensor<B, 4>,
    /// Timesteps: `[batch]` (float, as diffusers passes them).
    pub timesteps: Tensor<B, 1>,
    /// Text tokens: `[batch, text_tokens, cross_attention_dim]`.
    pub context: Tensor<B, 3>,
    /// SDXL's added conditions, required by `text_time` UNets.
    pub added: Option<AddedConditions<B>>,
}

/// SDXL's `added_cond_kwargs`.
#[derive(Debug, Clone)]
pub struct AddedConditions<B: Backend> {
    /// Pooled, projected embedding of the second text encoder: `[batch, width]`.
    pub text_embeds: Tensor<B, 2>,
    /// `original_size + crop_top_left + target_size` (h, w, top, left, h, w): `[batch, 6]`.
    pub time_ids: Tensor<B, 2>,
}

/// The UNet.
#[derive(Module, Debug)]
pub struct UNet<B: Backend> {
    conv_in: Conv2d<B>,
    time_embedding: TimestepMlp<B>,
    add_embedding: Option<TextTimeEmbedding<B>>,
    /// Down levels.
    pub down_blocks: Vec<UNetBlock<B>>,
    /// The mid block.
    pub mid_block: Option<MidBlock<B>>,
    /// Up levels.
    pub up_blocks: Vec<UNetBlock<B>>,
    conv_norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
    #[module(skip)]
    config: UNetConfig,
}

impl<B: Backend> UNet<B> {
    /// Loads `<folder>/config.json` and the weights beside it (diffusers' `unet/`).
    pub fn load(folder: &Path, device: &B::Device) -> Result<Self, DiffusionError> {
        let config = UNetConfig::from_file(&folder.join("config.json"))?;
        let weights = WeightStore::open(folder)?;
        Self::new(&config, &Init::Load(&weights), device)
    }

    /// A UNet of this shape with random weights, for tests and timing.
    pub fn random(config: &UNetConfig, device: &B::Device) -> Self {
        Self::new(config, &Init::Random, device).expect("random weights always fit the config")
    }

    /// Builds the UNet, reading each tensor by its diffusers name.
    pub fn new(
        config: &UNetConfig,
        init: &Init<'_>,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        config.check().map_err(DiffusionError::Setting)?;
        let c = config;
        let levels = c.levels();
        let n = levels.len();
        let c0 = c.block_out_channels[0];
        let temb = c.time_embed_dim();
        let groups = c.norm_num_groups;
        let resnet = |prefix: String, inp: usize, out: usize| {
            ResnetBlock::new(
                init,
                &prefix,
                ResnetShape {
                    inp,
                    out,
                    temb: Some(temb),
                    groups,
                    eps: c.norm_eps,
                },
                device,
            )
        };
        let transformer = |prefix: String, level: &Level, layers: usize| {
            Transformer2D::new(
                init,
                &prefix,
                TransformerShape {
                    channels: level.channels,
                    heads: level.heads,
                    layers,
                    cross_attention_dim: level.cross_attention_dim,
                    groups,
                    linear_projection: c.use_linear_projection,
                },
                device,
            )
        };

        let conv_in = Conv2d::new(init, "conv_in", c.in_channels, c0, 3, 1, 1, device)?;
        let time_embedding = TimestepMlp::new(init, "time_embedding", c0, temb, device)?;
        let add_embedding = match c.addition_embed_type.as_deref() {
            Some("text_time") => Some(TextTimeEmbedding {
                mlp: TimestepMlp::new(
                    init,
                    "add_embedding",
                    c.projection_class_embeddings_input_dim.unwrap_or_default(),
                    temb,
                    device,
                )?,
                time_dim: c.addition_time_embed_dim.unwrap_or_default(),
            }),
            _ => None,
        };

        let mut down_blocks = Vec::with_capacity(n);
        let mut prev = c0;
        for (i, level) in levels.iter().enumerate() {
            let p = format!("down_blocks.{i}");
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..level.layers {
                let inp = if j == 0 { prev } else { level.channels };
                resnets.push(resnet(format!("{p}.resnets.{j}"), inp, level.channels)?);
                if level.attention {
                    attentions.push(transformer(
                        format!("{p}.attentions.{j}"),
                        level,
                        level.transformer_layers,
                    )?);
                }
            }
            let resample = (i + 1 < n)
                .then(|| {
                    Conv2d::new(
                        init,
                        &format!("{p}.downsamplers.0.conv"),
                        level.channels,
                        level.channels,
                        3,
                        2,
                        c.downsample_padding,
                        device,
                    )
                })
                .transpose()?;
            down_blocks.push(UNetBlock {
                resnets,
                attentions,
                resample,
            });
            prev = level.channels;
        }

        let last = &levels[n - 1];
        let mid_block = match c.mid_block_type {
            Some(_) => Some(MidBlock {
                resnets: vec![
                    resnet("mid_block.resnets.0".into(), last.channels, last.channels)?,
                    resnet("mid_block.resnets.1".into(), last.channels, last.channels)?,
                ],
                attentions: vec![transformer(
                    "mid_block.attentions.0".into(),
                    last,
                    last.transformer_layers,
                )?],
            }),
            None => None,
        };

        let up_layers = c.up_transformer_layers();
        let mut up_blocks = Vec::with_capacity(n);
        let reversed: Vec<&Level> = levels.iter().rev().collect();
        let mut prev_out = reversed[0].channels;
        for (i, level) in reversed.iter().enumerate() {
            let p = format!("up_blocks.{i}");
            let out = level.channels;
            let skip_in = reversed[(i + 1).min(n - 1)].channels;
            let attention = c.up_block_types[i].starts_with("CrossAttn");
            let layers = level.layers + 1;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..layers {
                let skip = if j + 1 == layers { skip_in } else { out };
                let inp = if j == 0 { prev_out } else { out };
                resnets.push(resnet(format!("{p}.resnets.{j}"), inp + skip, out)?);
                if attention {
                    attentions.push(transformer(
                        format!("{p}.attentions.{j}"),
                        level,
                        up_layers[i],
                    )?);
                }
            }
            let resample = (i + 1 < n)
                .then(|| {
                    Conv2d::new(
                        init,
                        &format!("{p}.upsamplers.0.conv"),
                        out,
                        out,
                        3,
                        1,
                        1,
                        device,
                    )
                })
                .transpose()?;
            up_blocks.push(UNetBlock {
                resnets,
                attentions,
                resample,
            });
            prev_out = out;
        }

        let mut unet = Self {
            conv_in,
            time_embedding,
            add_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::new(init, "conv_norm_out", groups, c0, c.norm_eps, device)?,
            conv_out: Conv2d::new(init, "conv_out", c0, c.out_channels, 3, 1, 1, device)?,
            config: c.clone(),
        };
        unet.number_attention_layers();
        Ok(unet)
    }

    /// The config the UNet was built from.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Every attention layer, in the order of diffusers' `attn_processors` (down blocks, up
    /// blocks, mid block; self- then cross-attention in each transformer block), the order
    /// IP-Adapter checkpoints number their layers in.
    pub fn attention_layers(&self) -> Vec<AttentionLayer> {
        let blocks = self.down_blocks.iter().chain(&self.up_blocks);
        let transformers = blocks
            .flat_map(|b| b.attentions.iter())
            .chain(self.mid_block.iter().flat_map(|m| m.attentions.iter()));
        transformers
            .flat_map(|t| t.attention_layers().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Every attention module (`attn1`, `attn2`) with its weights, in the order of
    /// [`UNet::attention_layers`]: adapters that start from the base model's projections
    /// (IP-Adapter's and the split-prompt adapter's `to_k` / `to_v` copies) read them here.
    pub fn attention_modules(&self) -> Vec<&Attention<B>> {
        let blocks = self.down_blocks.iter().chain(&self.up_blocks);
        blocks
            .flat_map(|b| b.attentions.iter())
            .chain(self.mid_block.iter().flat_map(|m| m.attentions.iter()))
            .flat_map(|t| t.blocks.iter())
            .flat_map(|b| [&b.attn1, &b.attn2])
            .collect()
    }

    /// The attention layer with this diffusers name (`…transformer_blocks.0.attn2`, with or
    /// without `.processor`) or `attn_processors` index.
    pub fn attention_layer(&self, key: LayerKey<'_>) -> Option<AttentionLayer> {
        self.attention_layers().into_iter().find(|l| match key {
            LayerKey::Index(i) => l.index == i,
            LayerKey::Name(n) => l.name == n.strip_suffix(".processor").unwrap_or(n),
        })
    }

    /// Numbers the attention layers in `attn_processors` order.
    fn number_attention_layers(&mut self) {
        let blocks = self.down_blocks.iter_mut().chain(self.up_blocks.iter_mut());
        let transformers = blocks.flat_map(|b| b.attentions.iter_mut()).chain(
            self.mid_block
                .iter_mut()
                .flat_map(|m| m.attentions.iter_mut()),
        );
        for (i, layer) in transformers
            .flat_map(|t| t.attention_layers_mut())
            .enumerate()
        {
            layer.index = i;
        }
    }

    /// The prediction (noise or velocity) of the base model.
    pub fn forward(&self, input: &UNetInput<B>) -> Tensor<B, 4> {
        self.forward_with(input, &NoHook)
    }

    /// The prediction with an adapter's hook on the attention layers.
    ///
    /// # Panics
    /// If a `text_time` UNet gets no added conditions, or the sample's sides are not a
    /// multiple of the UNet's downsampling.
    pub fn forward_with(&self, input: &UNetInput<B>, hook: &dyn AttentionHook<B>) -> Tensor<B, 4> {
        let c = &self.config;
        let [batch, _, h, w] = input.sample.dims();
        let factor = 1 << (self.down_blocks.len() - 1);
        assert!(
            h % factor == 0 && w % factor == 0,
            "latent {h}×{w} is not a multiple of the UNet's downsampling ({factor})"
        );
        let t = broadcast(input.timesteps.clone(), batch);
        let t_emb = timestep_embedding(t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift);
        let mut emb = self.time_embedding.forward(t_emb);
        if let Some(add) = &self.add_embedding {
            let added = input
                .added
                .as_ref()
                .expect("an SDXL (text_time) UNet needs the added conditions");
            let [_, n_ids] = added.time_ids.dims();
            let ids = added.time_ids.clone().reshape([batch * n_ids]);
            let time = timestep_embedding(ids, add.time_dim, c.flip_sin_to_cos, c.freq_shift)
                .reshape([batch, n_ids * add.time_dim]);
            let add_in = Tensor::cat(vec![added.text_embeds.clone(), time], 1);
            emb = emb + add.mlp.forward(add_in);
        }
        let context = &input.context;

        let mut x = self.conv_in.forward(input.sample.clone());
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            for (j, resnet) in block.resnets.iter().enumerate() {
                x = resnet.forward(x, Some(&emb));
                if let Some(attn) = block.attentions.get(j) {
                    x = attn.forward(x, context, hook);
                }
                skips.push(x.clone());
            }
            if let Some(down) = &block.resample {
                x = down.forward(x);
                skips.push(x.clone());
            }
        }
        if let Some(mid) = &self.mid_block {
            x = mid.resnets[0].forward(x, Some(&emb));
            x = mid.attentions[0].forward(x, context, hook);
            x = mid.resnets[1].forward(x, Some(&emb));
        }
        for block in &self.up_blocks {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up resnet");
                x = resnet.forward(Tensor::cat(vec![x, skip], 1), Some(&emb));
                if let Some(attn) = block.attentions.get(j) {
                    x = attn.forward(x, context, hook);
                }
            }
            if let Some(up) = &block.resample {
                x = up.forward(upsample_nearest_2x(x));
            }
        }
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }
}

/// How to name an attention layer: by its diffusers module path or its `attn_processors` index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKey<'a> {
    /// `down_blocks.1.attentions.0.transformer_blocks.0.attn2` (`.processor` may follow).
    Name(&'a str),
    /// Position in `attn_processors` order.
    Index(usize),
}

/// A `[1]` timestep repeated for the batch, or `[batch]` as is.
fn broadcast<B: Backend>(t: Tensor<B, 1>, batch: usize) -> Tensor<B, 1> {
    let [n] = t.dims();
    if n == batch {
        t
    } else {
        assert_eq!(n, 1, "{n} timesteps for a batch of {batch}");
        t.expand([batch])
    }
}
