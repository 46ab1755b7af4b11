//! Shapes of the CLIP towers, the named checkpoints' presets, and the reading of a Hugging Face
//! `config.json`.
//!
//! Presets reproduce the upstream configs: OpenAI's through Hugging Face's
//! `openai/clip-vit-{base-patch32,base-patch16,large-patch14,large-patch14-336}/config.json`
//! (identical to `open_clip/model_configs/ViT-{B-32,B-16,L-14,L-14-336}.json` with QuickGELU),
//! LAION's through `open_clip/model_configs/ViT-{H-14,bigG-14}.json` (open_clip 2.x/3.x, GELU).

use std::path::Path;

use burn::config::Config;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ModelError;

/// The MLP non-linearity: OpenAI trained with QuickGELU, LAION's OpenCLIP models with exact GELU.
/// Running a checkpoint with the other one still gives plausible but wrong embeddings, so it is
/// part of the config rather than guessed from the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// `x · σ(1.702 x)` (`quick_gelu`, open_clip's `QuickGELU`).
    QuickGelu,
    /// `x · Φ(x)` with the error function (`gelu`, `nn.GELU()`).
    Gelu,
}

impl Activation {
    /// Parses Hugging Face's `hidden_act`.
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Self::QuickGelu),
            "gelu" => Some(Self::Gelu),
            _ => None,
        }
    }
}

/// Which reference library's conventions to follow where they differ for the same weights:
/// the checkpoint's home library, so that results match what its users get. The tokenizer's
/// cleaning and pad id, and the preprocessing's crop rounding, depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Convention {
    /// transformers: `CLIPTokenizerFast` (the `tokenizer.json` normalizer, padding with the pad
    /// token) and `CLIPImageProcessor` (crop offset floored).
    HuggingFace,
    /// open_clip: `open_clip.tokenize` (ftfy + HTML clean-up, padding with 0) and its eval
    /// transform (torchvision's crop offset, rounded half to even).
    OpenClip,
}

/// Which token's hidden state becomes the text's pooled output. Every CLIP pools at the
/// end-of-text token; checkpoints differ only in how they find it, which matters when the ids
/// are padded with that same token or contain a larger id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TextPooling {
    /// The position of the largest id (OpenAI's CLIP and open_clip: the end-of-text token has
    /// the largest id of the vocabulary; Hugging Face when `eos_token_id == 2`, its legacy
    /// configs).
    Argmax,
    /// The first position of this id (Hugging Face with any other `eos_token_id`).
    FirstEos(u32),
}

/// The text tower: token and position embeddings, a causal pre-LN transformer, the final
/// LayerNorm, the end-of-text pooling and an optional projection.
#[derive(Config, Debug, PartialEq)]
pub struct ClipTextConfig {
    /// Number of token ids.
    #[config(default = 49408)]
    pub vocab_size: usize,
    /// Positions (the tokenizer's context length).
    #[config(default = 77)]
    pub context_length: usize,
    /// Width of the residual stream.
    #[config(default = 512)]
    pub width: usize,
    /// Attention heads (`width` must be a multiple).
    #[config(default = 8)]
    pub heads: usize,
    /// Residual blocks.
    #[config(default = 12)]
    pub layers: usize,
    /// Hidden width of each block's MLP.
    #[config(default = 2048)]
    pub mlp_width: usize,
    /// The MLP non-linearity.
    #[config(default = "Activation::QuickGelu")]
    pub activation: Activation,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// How the end-of-text position is found.
    #[config(default = "TextPooling::Argmax")]
    pub pooling: TextPooling,
    /// Output width of `text_projection`; `None` for towers saved without it (Stable
    /// Diffusion's `CLIPTextModel`).
    #[config(default = "Some(512)")]
    pub projection_dim: Option<usize>,
}

/// The vision tower: patch embedding, class token, pre-LayerNorm, a pre-LN transformer, the
/// post-LayerNorm on the class token and an optional projection.
#[derive(Config, Debug, PartialEq)]
pub struct ClipVisionConfig {
    /// Side of the square input.
    #[config(default = 224)]
    pub image_size: usize,
    /// Side of a patch (the input side must be a multiple).
    #[config(default = 32)]
    pub patch_size: usize,
    /// Width of the residual stream.
    #[config(default = 768)]
    pub width: usize,
    /// Attention heads (`width` must be a multiple).
    #[config(default = 12)]
    pub heads: usize,
    /// Residual blocks.
    #[config(default = 12)]
    pub layers: usize,
    /// Hidden width of each block's MLP.
    #[config(default = 3072)]
    pub mlp_width: usize,
    /// The MLP non-linearity.
    #[config(default = "Activation::QuickGelu")]
    pub activation: Activation,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// Output width of `visual_projection`; `None` for towers saved without it.
    #[config(default = "Some(512)")]
    pub projection_dim: Option<usize>,
}

impl ClipVisionConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens the encoder sees: the class token and one per patch.
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

/// Both towers of a CLIP checkpoint.
#[derive(Config, Debug, PartialEq)]
pub struct ClipConfig {
    /// The text tower.
    pub text: ClipTextConfig,
    /// The vision tower.
    pub vision: ClipVisionConfig,
}

/// One preset: the name it is known by and its shape.
type Preset = (&'static str, fn() -> ClipConfig);

impl ClipConfig {
    /// Every preset with the names accepted by [`ClipConfig::preset`] (open_clip's spelling).
    pub const PRESETS: [Preset; 6] = [
        ("ViT-B-32", Self::vit_b_32),
        ("ViT-B-16", Self::vit_b_16),
        ("ViT-L-14", Self::vit_l_14),
        ("ViT-L-14-336", Self::vit_l_14_336),
        ("ViT-H-14", Self::vit_h_14),
        ("ViT-bigG-14", Self::vit_bigg_14),
    ];

    /// A preset by its open_clip name (`ViT-B-32`, ..., `ViT-bigG-14`; `/` and `@` are accepted
    /// for `-`, as in `ViT-L/14@336`, and case is ignored).
    pub fn preset(name: &str) -> Option<Self> {
        let key = |s: &str| s.replace(['/', '@'], "-").to_ascii_lowercase();
        Self::PRESETS
            .iter()
            .find(|(n, _)| key(n) == key(name))
            .map(|(_, f)| f())
    }

    /// OpenAI's two towers: QuickGELU, 77 tokens, 49 408 ids, argmax pooling.
    fn openai(text: (usize, usize, usize), vision: (usize, usize, usize, usize, usize)) -> Self {
        let (tw, th, tl) = text;
        let (image, patch, vw, vh, vl) = vision;
        // OpenAI's embedding width is the text width.
        let embed = tw;
        Self::new(
            ClipTextConfig::new()
                .with_width(tw)
                .with_heads(th)
                .with_layers(tl)
                .with_mlp_width(4 * tw)
                .with_projection_dim(Some(embed)),
            ClipVisionConfig::new()
                .with_image_size(image)
                .with_patch_size(patch)
                .with_width(vw)
                .with_heads(vh)
                .with_layers(vl)
                .with_mlp_width(4 * vw)
                .with_projection_dim(Some(embed)),
        )
    }

    /// OpenAI ViT-B/32 (`openai/clip-vit-base-patch32`).
    pub fn vit_b_32() -> Self {
        Self::openai((512, 8, 12), (224, 32, 768, 12, 12))
    }

    /// OpenAI ViT-B/16 (`openai/clip-vit-base-patch16`).
    pub fn vit_b_16() -> Self {
        Self::openai((512, 8, 12), (224, 16, 768, 12, 12))
    }

    /// OpenAI ViT-L/14 (`openai/clip-vit-large-patch14`, Stable Diffusion 1.x's text encoder).
    pub fn vit_l_14() -> Self {
        Self::openai((768, 12, 12), (224, 14, 1024, 16, 24))
    }

    /// OpenAI ViT-L/14 at 336 px (`openai/clip-vit-large-patch14-336`).
    pub fn vit_l_14_336() -> Self {
        Self::openai((768, 12, 12), (336, 14, 1024, 16, 24))
    }

    /// OpenCLIP ViT-H/14 (`laion/CLIP-ViT-H-14-laion2B-s32B-b79K`; Stable Diffusion 2.x's text
    /// encoder, IP-Adapter's image encoder): GELU, 1024-d embeddings.
    pub fn vit_h_14() -> Self {
        Self::new(
            ClipTextConfig::new()
                .with_width(1024)
                .with_heads(16)
                .with_layers(24)
                .with_mlp_width(4096)
                .with_activation(Activation::Gelu)
                .with_projection_dim(Some(1024)),
            ClipVisionConfig::new()
                .with_patch_size(14)
                .with_width(1280)
                .with_heads(16)
                .with_layers(32)
                .with_mlp_width(5120)
                .with_activation(Activation::Gelu)
                .with_projection_dim(Some(1024)),
        )
    }

    /// OpenCLIP ViT-bigG/14 (`laion/CLIP-ViT-bigG-14-laion2B-39B-b160k`, SDXL's second text
    /// encoder): GELU, 1280-d embeddings, vision MLP ratio 4.9231 (8192), head width 104.
    pub fn vit_bigg_14() -> Self {
        Self::new(
            ClipTextConfig::new()
                .with_width(1280)
                .with_heads(20)
                .with_layers(32)
                .with_mlp_width(5120)
                .with_activation(Activation::Gelu)
                .with_projection_dim(Some(1280)),
            ClipVisionConfig::new()
                .with_patch_size(14)
                .with_width(1664)
                .with_heads(16)
                .with_layers(48)
                .with_mlp_width(8192)
                .with_activation(Activation::Gelu)
                .with_projection_dim(Some(1280)),
        )
    }

    /// The config of a Hugging Face `CLIPModel` `config.json` (or a text/vision model's, whose
    /// fields sit at the top level: the other tower then keeps its defaults). Absent fields
    /// take `CLIPTextConfig`'s / `CLIPVisionConfig`'s defaults, as transformers does.
    ///
    /// Text pooling follows `CLIPTextTransformer`: argmax when `eos_token_id` is 2 (the legacy
    /// value of OpenAI's configs), else the first end-of-text id.
    pub fn from_hf_config_json(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let format = |message: String| ModelError::Format {
            path: path.to_path_buf(),
            message,
        };
        let root: Value =
            serde_json::from_str(&text).map_err(|e| format(format!("not JSON: {e}")))?;
        let projection = root.get("projection_dim").and_then(Value::as_u64);
        let section = |key: &str| match root.get(key) {
            Some(v) if v.is_object() => Some(v.clone()),
            _ => None,
        };
        let model_type = root.get("model_type").and_then(Value::as_str).unwrap_or("");
        let text_cfg = section("text_config")
            .or_else(|| (model_type == "clip_text_model").then(|| root.clone()));
        let vision_cfg = section("vision_config")
            .or_else(|| (model_type == "clip_vision_model").then(|| root.clone()));
        if text_cfg.is_none() && vision_cfg.is_none() {
            return Err(format(
                "neither `text_config` nor `vision_config`, and `model_type` is not a CLIP tower"
                    .into(),
            ));
        }
        let get = |v: &Value, key: &str, default: usize| -> Result<usize, ModelError> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| format(format!("`{key}` is not a count: {x}"))),
            }
        };
        let act = |v: &Value| -> Result<Activation, ModelError> {
            let name = v
                .get("hidden_act")
                .and_then(Value::as_str)
                .unwrap_or("quick_gelu");
            Activation::from_hf(name)
                .ok_or_else(|| format(format!("unsupported `hidden_act` {name:?}")))
        };
        let eps = |v: &Value| {
            v.get("layer_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-5)
        };
        // `CLIPModel` projects to the top-level `projection_dim` (the towers' own copies can
        // disagree with it); a tower saved alone (`CLIPTextModelWithProjection`) has only its
        // own. transformers' default is 512.
        let proj = |v: &Value| {
            projection
                .or_else(|| v.get("projection_dim").and_then(Value::as_u64))
                .unwrap_or(512) as usize
        };
        let mut config = Self::new(ClipTextConfig::new(), ClipVisionConfig::new());
        if let Some(t) = &text_cfg {
            let eos = get(t, "eos_token_id", 49407)? as u32;
            config.text = ClipTextConfig::new()
                .with_vocab_size(get(t, "vocab_size", 49408)?)
                .with_context_length(get(t, "max_position_embeddings", 77)?)
                .with_width(get(t, "hidden_size", 512)?)
                .with_heads(get(t, "num_attention_heads", 8)?)
                .with_layers(get(t, "num_hidden_layers", 12)?)
                .with_mlp_width(get(t, "intermediate_size", 2048)?)
                .with_activation(act(t)?)
                .with_layer_norm_eps(eps(t))
                .with_pooling(if eos == 2 {
                    TextPooling::Argmax
                } else {
                    TextPooling::FirstEos(eos)
                })
                .with_projection_dim(Some(proj(t)));
        }
        if let Some(v) = &vision_cfg {
            config.vision = ClipVisionConfig::new()
                .with_image_size(get(v, "image_size", 224)?)
                .with_patch_size(get(v, "patch_size", 32)?)
                .with_width(get(v, "hidden_size", 768)?)
                .with_heads(get(v, "num_attention_heads", 12)?)
                .with_layers(get(v, "num_hidden_layers", 12)?)
                .with_mlp_width(get(v, "intermediate_size", 3072)?)
                .with_activation(act(v)?)
                .with_layer_norm_eps(eps(v))
                .with_projection_dim(Some(proj(v)));
        }
        config.validate().map_err(format)?;
        Ok(config)
    }

    /// Checks the shapes fit together (heads divide widths, patches tile the image), so that a
    /// bad config is an error before any weight is read.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.text;
        let v = &self.vision;
        if t.heads == 0 || !t.width.is_multiple_of(t.heads) {
            return Err(format!(
                "text width {} is not a multiple of {} heads",
                t.width, t.heads
            ));
        }
        if v.heads == 0 || !v.width.is_multiple_of(v.heads) {
            return Err(format!(
                "vision width {} is not a multiple of {} heads",
                v.width, v.heads
            ));
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(format!(
                "image size {} is not a multiple of the patch size {}",
                v.image_size, v.patch_size
            ));
        }
        if t.layers == 0 || v.layers == 0 {
            return Err("a tower without layers".into());
        }
        if t.vocab_size == 0 || t.context_length == 0 {
            return Err("an empty vocabulary or context".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_resolve_by_any_spelling_and_are_valid() {
        for (name, f) in ClipConfig::PRESETS {
            assert_eq!(ClipConfig::preset(name), Some(f()));
            f().validate().unwrap();
        }
        assert_eq!(
            ClipConfig::preset("vit-l/14@336"),
            Some(ClipConfig::vit_l_14_336())
        );
        assert_eq!(ClipConfig::preset("ViT-Q-99"), None);
        let g = ClipConfig::vit_bigg_14();
        assert_eq!(g.vision.width / g.vision.heads, 104);
        assert_eq!(g.vision.tokens(), 257);
    }

    #[test]
    fn hf_config_json_takes_defaults_and_legacy_pooling() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"model_type": "clip", "projection_dim": 768,
                "text_config": {"hidden_size": 768, "num_attention_heads": 12,
                                "intermediate_size": 3072, "eos_token_id": 2},
                "vision_config": {"hidden_size": 1024, "num_attention_heads": 16,
                                  "num_hidden_layers": 24, "intermediate_size": 4096,
                                  "patch_size": 14}}"#,
        )
        .unwrap();
        assert_eq!(
            ClipConfig::from_hf_config_json(&path).unwrap(),
            ClipConfig::vit_l_14()
        );
        std::fs::write(
            &path,
            r#"{"model_type": "clip_text_model", "hidden_act": "relu"}"#,
        )
        .unwrap();
        let err = ClipConfig::from_hf_config_json(&path).unwrap_err();
        assert!(err.to_string().contains("hidden_act"), "{err}");
    }
}
