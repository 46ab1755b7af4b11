//! The `config.json` of diffusers' `UNet2DConditionModel` and `AutoencoderKL`: the keys this
//! port reads, with diffusers' defaults, and a refusal (naming the key) for every option it
//! does not implement, so that an unsupported checkpoint fails at load, not with wrong images.

use std::path::Path;

use serde::Deserialize;

use crate::attention::AttentionLayer;
use crate::error::DiffusionError;

/// A config value diffusers accepts as one value for every block or as one per block.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    /// The same for every block.
    One(T),
    /// One per down block.
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// The value for each of `n` blocks.
    pub fn expand(&self, n: usize) -> Vec<T> {
        match self {
            PerBlock::One(v) => vec![v.clone(); n],
            PerBlock::Each(v) => v.clone(),
        }
    }
}

/// `UNet2DConditionModel`'s config.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    /// Latent channels in.
    #[serde(default = "four")]
    pub in_channels: usize,
    /// Channels out (the noise / velocity prediction).
    #[serde(default = "four")]
    pub out_channels: usize,
    /// Latent side (informational: the UNet runs at any multiple of its downsampling).
    #[serde(default)]
    pub sample_size: Option<usize>,
    /// `CrossAttnDownBlock2D` or `DownBlock2D` per level.
    pub down_block_types: Vec<String>,
    /// `CrossAttnUpBlock2D` or `UpBlock2D` per level.
    pub up_block_types: Vec<String>,
    /// `UNetMidBlock2DCrossAttn` (or absent / `null` for none).
    #[serde(default = "mid_cross_attn")]
    pub mid_block_type: Option<String>,
    /// Channels per level.
    pub block_out_channels: Vec<usize>,
    /// ResNet layers per down level (up levels have one more).
    #[serde(default = "two_per_block")]
    pub layers_per_block: PerBlock<usize>,
    /// Padding of the strided downsampling convolution.
    #[serde(default = "one")]
    pub downsample_padding: usize,
    /// GroupNorm groups.
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// GroupNorm epsilon of the ResNets and the output norm.
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    /// Width of the text conditioning.
    pub cross_attention_dim: PerBlock<usize>,
    /// Transformer layers in each attention of a level (SDXL: `[1, 2, 10]`).
    #[serde(default = "one_per_block")]
    pub transformer_layers_per_block: PerBlock<usize>,
    /// diffusers' historical name for the number of heads (not their size).
    #[serde(default = "eight_per_block")]
    pub attention_head_dim: PerBlock<usize>,
    /// The number of heads when set (newer configs); overrides `attention_head_dim`.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    /// Linear instead of 1×1-convolution projections in and out of each transformer (SD2,
    /// SDXL).
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Order of the sinusoidal time embedding halves.
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// Shift of the time embedding's frequencies.
    #[serde(default)]
    pub freq_shift: f64,
    /// `text_time` for SDXL's added conditioning, else absent.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Width of each sinusoidal embedding of SDXL's size and crop conditions.
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// Input width of SDXL's added embedding (pooled text + 6 time ids × their width).
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Options of other diffusers models, refused when set (see [`UNetConfig::check`]).
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Refused when set.
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    /// Refused when set.
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    /// Refused unless `default`.
    #[serde(default = "default_str")]
    pub resnet_time_scale_shift: String,
    /// Refused unless `silu`.
    #[serde(default = "silu_str")]
    pub act_fn: String,
    /// Refused unless false.
    #[serde(default)]
    pub only_cross_attention: PerBlock<bool>,
    /// Refused unless false.
    #[serde(default)]
    pub dual_cross_attention: bool,
    /// Refused unless `positional`.
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    /// Refused unless 3.
    #[serde(default = "three")]
    pub conv_in_kernel: usize,
    /// Refused unless 3.
    #[serde(default = "three")]
    pub conv_out_kernel: usize,
    /// Up levels' transformer layers when they differ from the down levels' reversed.
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<Vec<usize>>,
}

impl Default for PerBlock<bool> {
    fn default() -> Self {
        PerBlock::One(false)
    }
}

/// One resolution level, as the UNet builds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Level {
    /// Channels of the level.
    pub channels: usize,
    /// ResNets (down side; the up side has one more).
    pub layers: usize,
    /// Whether the level has cross-attention transformers.
    pub attention: bool,
    /// Heads of its attention layers.
    pub heads: usize,
    /// Transformer layers per attention.
    pub transformer_layers: usize,
    /// Width of the text conditioning.
    pub cross_attention_dim: usize,
}

impl UNetConfig {
    /// Reads `unet/config.json`.
    pub fn from_file(path: &Path) -> Result<Self, DiffusionError> {
        read_config(path, Self::check)
    }

    /// Parses a config from JSON text (tests, presets).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let config: Self = serde_json::from_str(text).map_err(|e| e.to_string())?;
        config.check()?;
        Ok(config)
    }

    /// Stable Diffusion 1.5's UNet (`runwayml/stable-diffusion-v1-5`), for timing with random
    /// weights.
    pub fn sd15() -> Self {
        Self::from_json(
            r#"{"block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768,
            "attention_head_dim": 8, "layers_per_block": 2, "sample_size": 64,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}"#,
        )
        .expect("the SD1.5 preset parses")
    }

    /// Stable Diffusion XL's base UNet (`stabilityai/stable-diffusion-xl-base-1.0`,
    /// `unet/config.json`), for timing at 1024 px with random weights: no attention in the
    /// first level, 1 / 2 / 10 transformer layers, 2048-wide text context and the `text_time`
    /// added conditions (1280-d pooled embedding + six 256-d time ids = 2816).
    pub fn sdxl() -> Self {
        Self::from_json(
            r#"{"block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
            "attention_head_dim": [5, 10, 20], "transformer_layers_per_block": [1, 2, 10],
            "layers_per_block": 2, "sample_size": 128, "use_linear_projection": true,
            "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]}"#,
        )
        .expect("the SDXL preset parses")
    }

    /// Refuses the options this port does not implement, naming them.
    pub fn check(&self) -> Result<(), String> {
        let n = self.block_out_channels.len();
        let refuse = |what: &str| Err(format!("{what} is not supported by idforge's UNet"));
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "{} block_out_channels, {} down_block_types and {} up_block_types: they must be \
                 the same number",
                n,
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                return refuse(&format!("down block type `{t}`"));
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                return refuse(&format!("up block type `{t}`"));
            }
        }
        if let Some(t) = &self.mid_block_type
            && t != "UNetMidBlock2DCrossAttn"
        {
            return refuse(&format!("mid block type `{t}`"));
        }
        for (key, len) in [
            ("layers_per_block", per_len(&self.layers_per_block)),
            ("cross_attention_dim", per_len(&self.cross_attention_dim)),
            (
                "transformer_layers_per_block",
                per_len(&self.transformer_layers_per_block),
            ),
            ("attention_head_dim", per_len(&self.attention_head_dim)),
        ] {
            if len.is_some_and(|l| l != n) {
                return Err(format!(
                    "`{key}` has {} entries for {n} blocks",
                    len.unwrap_or(0)
                ));
            }
        }
        if self.class_embed_type.is_some() {
            return refuse("`class_embed_type`");
        }
        if self.time_cond_proj_dim.is_some() {
            return refuse("`time_cond_proj_dim` (LCM-distilled UNets)");
        }
        if self.encoder_hid_dim.is_some() {
            return refuse("`encoder_hid_dim`");
        }
        if self.resnet_time_scale_shift != "default" {
            return refuse(&format!(
                "resnet_time_scale_shift `{}`",
                self.resnet_time_scale_shift
            ));
        }
        if self.act_fn != "silu" {
            return refuse(&format!("act_fn `{}`", self.act_fn));
        }
        if self.only_cross_attention.expand(n).iter().any(|&b| b) || self.dual_cross_attention {
            return refuse("only/dual cross-attention");
        }
        if self.time_embedding_type != "positional" {
            return refuse(&format!(
                "time_embedding_type `{}`",
                self.time_embedding_type
            ));
        }
        if self.conv_in_kernel != 3 || self.conv_out_kernel != 3 {
            return refuse("conv_in/conv_out kernels other than 3");
        }
        match self.addition_embed_type.as_deref() {
            None => {}
            Some("text_time")
                if self.addition_time_embed_dim.is_none()
                    || self.projection_class_embeddings_input_dim.is_none() =>
            {
                return Err(
                    "addition_embed_type `text_time` needs addition_time_embed_dim \
                            and projection_class_embeddings_input_dim"
                        .into(),
                );
            }
            Some("text_time") => {}
            Some(t) => return refuse(&format!("addition_embed_type `{t}`")),
        }
        for (i, level) in self.levels().iter().enumerate() {
            if level.attention && level.channels % level.heads != 0 {
                return Err(format!(
                    "block {i}: {} channels are not divisible into {} heads",
                    level.channels, level.heads
                ));
            }
            if level.channels % self.norm_num_groups != 0 {
                return Err(format!(
                    "block {i}: {} channels are not divisible into {} groups",
                    level.channels, self.norm_num_groups
                ));
            }
        }
        Ok(())
    }

    /// The down levels, in order.
    pub fn levels(&self) -> Vec<Level> {
        let n = self.block_out_channels.len();
        let heads = self
            .num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .expand(n);
        let layers = self.layers_per_block.expand(n);
        let transformer = self.transformer_layers_per_block.expand(n);
        let cross = self.cross_attention_dim.expand(n);
        (0..n)
            .map(|i| Level {
                channels: self.block_out_channels[i],
                layers: layers[i],
                attention: self.down_block_types[i].starts_with("CrossAttn"),
                heads: heads[i],
                transformer_layers: transformer[i],
                cross_attention_dim: cross[i],
            })
            .collect()
    }

    /// Transformer layers of each up level (diffusers reverses the down levels' unless
    /// `reverse_transformer_layers_per_block` is given).
    pub fn up_transformer_layers(&self) -> Vec<usize> {
        match &self.reverse_transformer_layers_per_block {
            Some(v) => v.clone(),
            None => self
                .levels()
                .iter()
                .rev()
                .map(|l| l.transformer_layers)
                .collect(),
        }
    }

    /// Every attention layer this config builds, in diffusers' `attn_processors` order (down
    /// blocks, up blocks, mid block; self- then cross-attention per transformer block), without
    /// building the UNet: what adapter checkpoints are checked against at full size (SD1.5 has
    /// 32 layers, SDXL 140) with nothing allocated. [`crate::UNet::attention_layers`] gives the
    /// same list for a built UNet.
    pub fn attention_layers(&self) -> Vec<AttentionLayer> {
        let levels = self.levels();
        let n = levels.len();
        let mut out = Vec::new();
        let mut transformer = |prefix: String, level: &Level, layers: usize| {
            for b in 0..layers {
                for (attn, cross) in [("attn1", None), ("attn2", Some(level.cross_attention_dim))] {
                    out.push(AttentionLayer {
                        name: format!("{prefix}.transformer_blocks.{b}.{attn}"),
                        index: 0,
                        query_dim: level.channels,
                        cross_attention_dim: cross,
                        heads: level.heads,
                        head_dim: level.channels / level.heads,
                    });
                }
            }
        };
        for (i, level) in levels.iter().enumerate().filter(|(_, l)| l.attention) {
            for j in 0..level.layers {
                transformer(
                    format!("down_blocks.{i}.attentions.{j}"),
                    level,
                    level.transformer_layers,
                );
            }
        }
        let up_layers = self.up_transformer_layers();
        for (i, level) in levels.iter().rev().enumerate() {
            if self.up_block_types[i].starts_with("CrossAttn") {
                for j in 0..level.layers + 1 {
                    transformer(format!("up_blocks.{i}.attentions.{j}"), level, up_layers[i]);
                }
            }
        }
        if self.mid_block_type.is_some() {
            let last = &levels[n - 1];
            transformer(
                "mid_block.attentions.0".into(),
                last,
                last.transformer_layers,
            );
        }
        for (i, l) in out.iter_mut().enumerate() {
            l.index = i;
        }
        out
    }

    /// The width of the time embedding (4 × the first level's channels).
    pub fn time_embed_dim(&self) -> usize {
        4 * self.block_out_channels[0]
    }
}

fn per_len<T>(p: &PerBlock<T>) -> Option<usize> {
    match p {
        PerBlock::One(_) => None,
        PerBlock::Each(v) => Some(v.len()),
    }
}

/// `AutoencoderKL`'s config.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    /// Image channels.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "three")]
    pub out_channels: usize,
    /// Channels per level.
    pub block_out_channels: Vec<usize>,
    /// ResNets per encoder level (decoder levels have one more).
    #[serde(default = "one")]
    pub layers_per_block: usize,
    /// Latent channels.
    #[serde(default = "four")]
    pub latent_channels: usize,
    /// GroupNorm groups.
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// Latents are multiplied by this before the UNet sees them (SD1.5 0.18215, SDXL 0.13025).
    #[serde(default = "scaling")]
    pub scaling_factor: f64,
    /// Subtracted before scaling when set (SD3, Flux); absent for SD1.5 and SDXL.
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// The 1×1 convolutions around the latent (absent in some newer VAEs).
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    /// See `use_quant_conv`.
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    /// Refused unless `silu`.
    #[serde(default = "silu_str")]
    pub act_fn: String,
    /// Refused unless true.
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    /// Encoder block types (checked).
    #[serde(default)]
    pub down_block_types: Vec<String>,
    /// Decoder block types (checked).
    #[serde(default)]
    pub up_block_types: Vec<String>,
}

impl VaeConfig {
    /// Reads `vae/config.json`.
    pub fn from_file(path: &Path) -> Result<Self, DiffusionError> {
        read_config(path, Self::check)
    }

    /// Refuses what this port does not implement.
    pub fn check(&self) -> Result<(), String> {
        if self.block_out_channels.is_empty() {
            return Err("`block_out_channels` is empty".into());
        }
        if self.act_fn != "silu" || !self.mid_block_add_attention {
            return Err(
                "only the Stable Diffusion VAE (silu, mid-block attention) is supported".into(),
            );
        }
        for t in &self.down_block_types {
            if t != "DownEncoderBlock2D" {
                return Err(format!("encoder block type `{t}` is not supported"));
            }
        }
        for t in &self.up_block_types {
            if t != "UpDecoderBlock2D" {
                return Err(format!("decoder block type `{t}` is not supported"));
            }
        }
        if self.shift_factor.is_some_and(|s| s != 0.0) {
            return Err("`shift_factor` (SD3/Flux VAEs) is not supported".into());
        }
        for &c in &self.block_out_channels {
            if c % self.norm_num_groups != 0 {
                return Err(format!(
                    "{c} channels are not divisible into {} groups",
                    self.norm_num_groups
                ));
            }
        }
        Ok(())
    }

    /// How many times smaller the latent is than the image.
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// Reads a JSON config and refuses what `check` refuses, naming the file in errors.
pub fn read_config<T: for<'de> Deserialize<'de>>(
    path: &Path,
    check: impl Fn(&T) -> Result<(), String>,
) -> Result<T, DiffusionError> {
    let config: T = read_json(path)?;
    check(&config).map_err(|message| DiffusionError::Config {
        path: path.to_path_buf(),
        message,
    })?;
    Ok(config)
}

/// Reads a JSON config, naming the file in errors.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, DiffusionError> {
    let text = std::fs::read_to_string(path).map_err(|source| DiffusionError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| DiffusionError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn one() -> usize {
    1
}
fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn thirty_two() -> usize {
    32
}
fn norm_eps() -> f64 {
    1e-5
}
fn scaling() -> f64 {
    0.18215
}
fn yes() -> bool {
    true
}
fn two_per_block() -> PerBlock<usize> {
    PerBlock::One(2)
}
fn one_per_block() -> PerBlock<usize> {
    PerBlock::One(1)
}
fn eight_per_block() -> PerBlock<usize> {
    PerBlock::One(8)
}
fn mid_cross_attn() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn default_str() -> String {
    "default".into()
}
fn silu_str() -> String {
    "silu".into()
}
fn positional() -> String {
    "positional".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdxl_preset_has_sdxl_base_levels() {
        let c = UNetConfig::sdxl();
        let levels = c.levels();
        assert_eq!(levels.len(), 3);
        assert!(!levels[0].attention && levels[1].attention && levels[2].attention);
        // diffusers' `attention_head_dim` is the head count: 64-wide heads everywhere.
        let widths: Vec<usize> = levels.iter().map(|l| l.channels / l.heads).collect();
        assert_eq!(widths, [64, 64, 64]);
        let layers: Vec<usize> = levels.iter().map(|l| l.transformer_layers).collect();
        assert_eq!(layers, [1, 2, 10]);
        assert_eq!(c.up_transformer_layers(), [10, 2, 1]);
        assert!(levels.iter().all(|l| l.cross_attention_dim == 2048));
        assert_eq!(c.projection_class_embeddings_input_dim, Some(2816));
    }
}
