//! diffusers' `AutoencoderKL` (`autoencoder_kl.py`, `vae.py`): the encoder that turns
//! training images into latents and the decoder that turns sampled latents into images.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::attention::multi_head_attention;
use crate::config::VaeConfig;
use crate::error::DiffusionError;
use crate::nn::{Conv2d, GroupNorm, Init, Linear, child, silu, upsample_nearest_2x};
use crate::unet::{ResnetBlock, ResnetShape};
use crate::weights::Weights;

/// The VAE's single-head spatial self-attention (mid block), with its own GroupNorm and
/// residual. Reads diffusers' `to_q/to_k/to_v/to_out.0` names or the older
/// `query/key/value/proj_attn`.
#[derive(Module, Debug)]
struct SpatialAttention<B: Backend> {
    group_norm: GroupNorm<B>,
    to_q: Linear<B>,
    to_k: Linear<B>,
    to_v: Linear<B>,
    to_out: Linear<B>,
}

impl<B: Backend> SpatialAttention<B> {
    fn new(
        init: &Init<'_>,
        prefix: &str,
        c: usize,
        groups: usize,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        let old = matches!(init, Init::Load(w) if !w.contains(&child(prefix, "to_q.weight"))
            && w.contains(&child(prefix, "query.weight")));
        let names = if old {
            ["query", "key", "value", "proj_attn"]
        } else {
            ["to_q", "to_k", "to_v", "to_out.0"]
        };
        let lin = |n: &str| Linear::new(init, &child(prefix, n), c, c, true, device);
        Ok(Self {
            group_norm: GroupNorm::new(
                init,
                &child(prefix, "group_norm"),
                groups,
                c,
                1e-6,
                device,
            )?,
            to_q: lin(names[0])?,
            to_k: lin(names[1])?,
            to_v: lin(names[2])?,
            to_out: lin(names[3])?,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, c, h, w] = x.dims();
        let t = self
            .group_norm
            .forward(x.clone())
            .reshape([b, c, h * w])
            .swap_dims(1, 2);
        let head = |t: Tensor<B, 3>| t.reshape([b, 1, h * w, c]);
        let a = multi_head_attention(
            head(self.to_q.forward(t.clone())),
            head(self.to_k.forward(t.clone())),
            head(self.to_v.forward(t)),
        );
        let out = self.to_out.forward(a).swap_dims(1, 2).reshape([b, c, h, w]);
        out + x
    }
}

/// ResNet, attention, ResNet at the lowest resolution.
#[derive(Module, Debug)]
struct VaeMid<B: Backend> {
    resnet0: ResnetBlock<B>,
    attention: SpatialAttention<B>,
    resnet1: ResnetBlock<B>,
}

impl<B: Backend> VaeMid<B> {
    fn new(
        init: &Init<'_>,
        prefix: &str,
        c: usize,
        groups: usize,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        let shape = ResnetShape {
            inp: c,
            out: c,
            temb: None,
            groups,
            eps: 1e-6,
        };
        Ok(Self {
            resnet0: ResnetBlock::new(init, &child(prefix, "resnets.0"), shape, device)?,
            attention: SpatialAttention::new(
                init,
                &child(prefix, "attentions.0"),
                c,
                groups,
                device,
            )?,
            resnet1: ResnetBlock::new(init, &child(prefix, "resnets.1"), shape, device)?,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.resnet1
            .forward(self.attention.forward(self.resnet0.forward(x, None)), None)
    }
}

/// One encoder or decoder level: ResNets and a resampling convolution.
#[derive(Module, Debug)]
struct VaeLevel<B: Backend> {
    resnets: Vec<ResnetBlock<B>>,
    resample: Option<Conv2d<B>>,
}

/// The encoder: image → the posterior's mean and log-variance (after `quant_conv`).
#[derive(Module, Debug)]
pub struct VaeEncoder<B: Backend> {
    conv_in: Conv2d<B>,
    down: Vec<VaeLevel<B>>,
    mid: VaeMid<B>,
    norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
    quant_conv: Option<Conv2d<B>>,
}

/// The decoder: latent → image in [-1, 1] (before clamping).
#[derive(Module, Debug)]
pub struct VaeDecoder<B: Backend> {
    post_quant_conv: Option<Conv2d<B>>,
    conv_in: Conv2d<B>,
    mid: VaeMid<B>,
    up: Vec<VaeLevel<B>>,
    norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
}

/// The diagonal Gaussian the encoder predicts for a latent.
#[derive(Debug, Clone)]
pub struct Posterior<B: Backend> {
    /// `[batch, latent_channels, h, w]`
    pub mean: Tensor<B, 4>,
    /// Clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor<B, 4>,
}

impl<B: Backend> Posterior<B> {
    /// `mean + std · noise` with `noise` ~ N(0, 1) of the latent's shape.
    pub fn sample(&self, noise: Tensor<B, 4>) -> Tensor<B, 4> {
        self.mean.clone() + (self.logvar.clone() * 0.5).exp() * noise
    }
}

/// The autoencoder with its latent scaling factor.
#[derive(Module, Debug)]
pub struct Vae<B: Backend> {
    /// Image → latent distribution.
    pub encoder: VaeEncoder<B>,
    /// Latent → image.
    pub decoder: VaeDecoder<B>,
    #[module(skip)]
    config: VaeConfig,
}

impl<B: Backend> Vae<B> {
    /// Loads `<folder>/config.json` and the weights beside it (diffusers' `vae/`).
    pub fn load(folder: &Path, device: &B::Device) -> Result<Self, DiffusionError> {
        let config = VaeConfig::from_file(&folder.join("config.json"))?;
        let weights = Weights::open(folder)?;
        Self::new(&config, &Init::Load(&weights), device)
    }

    /// A VAE of this shape with random weights, for tests and timing.
    pub fn random(config: &VaeConfig, device: &B::Device) -> Self {
        Self::new(config, &Init::Random, device).expect("random weights always fit the config")
    }

    /// Builds the VAE, reading each tensor by its diffusers name.
    pub fn new(
        config: &VaeConfig,
        init: &Init<'_>,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        config.check().map_err(DiffusionError::Setting)?;
        let c = config;
        let ch = &c.block_out_channels;
        let n = ch.len();
        let g = c.norm_num_groups;
        let lc = c.latent_channels;
        let resnet = |prefix: String, inp: usize, out: usize| {
            ResnetBlock::new(
                init,
                &prefix,
                ResnetShape {
                    inp,
                    out,
                    temb: None,
                    groups: g,
                    eps: 1e-6,
                },
                device,
            )
        };

        let mut down = Vec::with_capacity(n);
        let mut prev = ch[0];
        for (i, &out) in ch.iter().enumerate() {
            let p = format!("encoder.down_blocks.{i}");
            let resnets = (0..c.layers_per_block)
                .map(|j| {
                    resnet(
                        format!("{p}.resnets.{j}"),
                        if j == 0 { prev } else { out },
                        out,
                    )
                })
                .collect::<Result<_, _>>()?;
            // diffusers pads (0, 1, 0, 1) and convolves with stride 2 and no padding.
            let resample = (i + 1 < n)
                .then(|| {
                    Conv2d::new(
                        init,
                        &format!("{p}.downsamplers.0.conv"),
                        out,
                        out,
                        3,
                        2,
                        0,
                        device,
                    )
                })
                .transpose()?;
            down.push(VaeLevel { resnets, resample });
            prev = out;
        }
        let encoder = VaeEncoder {
            conv_in: Conv2d::new(
                init,
                "encoder.conv_in",
                c.in_channels,
                ch[0],
                3,
                1,
                1,
                device,
            )?,
            down,
            mid: VaeMid::new(init, "encoder.mid_block", ch[n - 1], g, device)?,
            norm_out: GroupNorm::new(init, "encoder.conv_norm_out", g, ch[n - 1], 1e-6, device)?,
            conv_out: Conv2d::new(init, "encoder.conv_out", ch[n - 1], 2 * lc, 3, 1, 1, device)?,
            quant_conv: c
                .use_quant_conv
                .then(|| Conv2d::new(init, "quant_conv", 2 * lc, 2 * lc, 1, 1, 0, device))
                .transpose()?,
        };

        let mut up = Vec::with_capacity(n);
        let mut prev = ch[n - 1];
        for (i, &out) in ch.iter().rev().enumerate() {
            let p = format!("decoder.up_blocks.{i}");
            let resnets = (0..c.layers_per_block + 1)
                .map(|j| {
                    resnet(
                        format!("{p}.resnets.{j}"),
                        if j == 0 { prev } else { out },
                        out,
                    )
                })
                .collect::<Result<_, _>>()?;
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
            up.push(VaeLevel { resnets, resample });
            prev = out;
        }
        let decoder = VaeDecoder {
            post_quant_conv: c
                .use_post_quant_conv
                .then(|| Conv2d::new(init, "post_quant_conv", lc, lc, 1, 1, 0, device))
                .transpose()?,
            conv_in: Conv2d::new(init, "decoder.conv_in", lc, ch[n - 1], 3, 1, 1, device)?,
            mid: VaeMid::new(init, "decoder.mid_block", ch[n - 1], g, device)?,
            up,
            norm_out: GroupNorm::new(init, "decoder.conv_norm_out", g, ch[0], 1e-6, device)?,
            conv_out: Conv2d::new(
                init,
                "decoder.conv_out",
                ch[0],
                c.out_channels,
                3,
                1,
                1,
                device,
            )?,
        };
        Ok(Self {
            encoder,
            decoder,
            config: c.clone(),
        })
    }

    /// The config the VAE was built from.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// What latents are multiplied by before the UNet sees them.
    pub fn scaling_factor(&self) -> f64 {
        self.config.scaling_factor
    }

    /// Images in [-1, 1] (`[batch, 3, H, W]`, sides a multiple of the downscale) → the
    /// latent distribution (unscaled).
    pub fn encode(&self, images: Tensor<B, 4>) -> Posterior<B> {
        let e = &self.encoder;
        let mut x = e.conv_in.forward(images);
        for level in &e.down {
            for r in &level.resnets {
                x = r.forward(x, None);
            }
            if let Some(conv) = &level.resample {
                let [b, c, h, w] = x.dims();
                let device = x.device();
                // Pad one row at the bottom and one column at the right.
                let x_w = Tensor::cat(vec![x, Tensor::zeros([b, c, h, 1], &device)], 3);
                let x_hw = Tensor::cat(vec![x_w, Tensor::zeros([b, c, 1, w + 1], &device)], 2);
                x = conv.forward(x_hw);
            }
        }
        x = e.mid.forward(x);
        x = e.conv_out.forward(silu(e.norm_out.forward(x)));
        if let Some(q) = &e.quant_conv {
            x = q.forward(x);
        }
        let lc = self.config.latent_channels;
        Posterior {
            mean: x.clone().narrow(1, 0, lc),
            logvar: x.narrow(1, lc, lc).clamp(-30.0, 20.0),
        }
    }

    /// Unscaled latents → images in about [-1, 1] (not clamped).
    pub fn decode(&self, latents: Tensor<B, 4>) -> Tensor<B, 4> {
        let d = &self.decoder;
        let mut x = match &d.post_quant_conv {
            Some(p) => p.forward(latents),
            None => latents,
        };
        x = d.mid.forward(d.conv_in.forward(x));
        for level in &d.up {
            for r in &level.resnets {
                x = r.forward(x, None);
            }
            if let Some(conv) = &level.resample {
                x = conv.forward(upsample_nearest_2x(x));
            }
        }
        d.conv_out.forward(silu(d.norm_out.forward(x)))
    }
}
