//! DINO ViT-S/16 and DINOv2 ViT-S/14 image embedders, built from a Hugging Face snapshot
//! (`config.json`, `model.safetensors`, `preprocessor_config.json`), and the DINO score of
//! subject-driven generation papers.
//!
//! Follows transformers 4.46.3: `models/vit/modeling_vit.py` (`ViTModel`, the layout of
//! `facebook/dino-vits16`: pre-norm blocks `layernorm_before → attention → + x →
//! layernorm_after → intermediate (GELU) → output → + x`) and `models/dinov2/modeling_dinov2.py`
//! (`Dinov2Model`, `facebook/dinov2-small`: the same with `norm1`/`norm2`, `mlp.fc1`/`mlp.fc2` and
//! a per-channel layer scale after each branch). Both end in a final LayerNorm; the embedding is
//! its CLS token (`last_hidden_state[:, 0]`, which is also `Dinov2Model`'s `pooler_output`).
//! Position embeddings are interpolated (torch bicubic, `align_corners=False`, as both models'
//! `interpolate_pos_encoding`) when the patch grid differs from the checkpoint's, so DINOv2's
//! 518-pixel table serves its 224-pixel processor output (16×16 patches from 37×37). Register
//! tokens and SwiGLU feed-forwards (other DINOv2 checkpoints) are refused with an error.
//!
//! One code path for every size: the shape comes from [`DinoConfig`] (read from `config.json`,
//! or a preset), and every tensor is looked up by its upstream name and checked against the
//! shape the config implies ([`DinoConfig::parameter_shapes`]). Pixels go through
//! [`ImageProcessor`], a port of the transformers image processors the checkpoints ship with.

use std::path::Path;

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Tensor, TensorData};
use idforge_core::resample::{Filter, Plane8, resize};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ModelError;
use crate::face_api::preprocess::RgbView;
use crate::nn::{LayerNorm, Linear, gelu, multi_head_attention, split_heads};
use crate::readback::ReadBack;
use crate::weights::WeightStore;

/// Hands out a tensor's values by upstream name and expected shape (from a file, or random).
type Getter<'a> = dyn Fn(&str, &[usize]) -> Result<Vec<f32>, ModelError> + 'a;

/// Which of the two transformers layouts a checkpoint has: they differ in parameter names and
/// in DINOv2's layer scale, not in the computation otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DinoArch {
    /// `ViTModel` (`model_type: "vit"`), DINO v1 checkpoints such as `facebook/dino-vits16`.
    Vit,
    /// `Dinov2Model` (`model_type: "dinov2"`), e.g. `facebook/dinov2-small`.
    Dinov2,
}

/// The shape of a DINO / DINOv2 vision transformer.
#[derive(Config, Debug, PartialEq)]
pub struct DinoConfig {
    /// Parameter layout.
    pub arch: DinoArch,
    /// Token width (`hidden_size`).
    pub hidden_size: usize,
    /// Transformer blocks (`num_hidden_layers`).
    pub num_layers: usize,
    /// Attention heads (`num_attention_heads`); must divide `hidden_size`.
    pub num_heads: usize,
    /// Feed-forward width (`intermediate_size`, or `hidden_size · mlp_ratio` for DINOv2).
    pub intermediate_size: usize,
    /// Side of a square patch (`patch_size`).
    pub patch_size: usize,
    /// Side of the square image the position table was trained for (`image_size`).
    pub image_size: usize,
    /// LayerNorm epsilon (`layer_norm_eps`: 1e-12 in the `ViTConfig` that `facebook/dino-vits16`
    /// was converted with, 1e-6 for DINOv2).
    #[config(default = 1e-6)]
    pub layer_norm_eps: f64,
    /// Input channels.
    #[config(default = 3)]
    pub num_channels: usize,
}

impl DinoConfig {
    /// `facebook/dino-vits16` (transformers' `ViTConfig` defaults with the ViT-S sizes, as its
    /// conversion script sets them).
    pub fn vit_s16() -> Self {
        Self::new(DinoArch::Vit, 384, 12, 6, 1536, 16, 224).with_layer_norm_eps(1e-12)
    }

    /// `facebook/dinov2-small` (ViT-S/14, position table for 518 pixels, `mlp_ratio` 4).
    pub fn dinov2_vit_s14() -> Self {
        Self::new(DinoArch::Dinov2, 384, 12, 6, 1536, 14, 518)
    }

    /// Reads a transformers `config.json` (`model_type` `vit` or `dinov2`).
    pub fn from_hf_config(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let err = |message: String| ModelError::Format {
            path: path.to_path_buf(),
            message,
        };
        let v: Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let int = |key: &str| {
            v[key]
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| err(format!("`{key}` missing or not an integer")))
        };
        let arch = match v["model_type"].as_str() {
            Some("vit") => DinoArch::Vit,
            Some("dinov2") => DinoArch::Dinov2,
            other => return Err(err(format!("model_type {other:?}: expected vit or dinov2"))),
        };
        if let Some(act) = v["hidden_act"].as_str()
            && act != "gelu"
        {
            return Err(err(format!(
                "hidden_act {act:?}: only exact GELU is supported"
            )));
        }
        if v["qkv_bias"].as_bool() == Some(false) {
            return Err(err("qkv_bias false is not supported".into()));
        }
        let hidden = int("hidden_size")?;
        let intermediate = match arch {
            DinoArch::Vit => int("intermediate_size")?,
            DinoArch::Dinov2 => {
                if v["use_swiglu_ffn"].as_bool() == Some(true) {
                    return Err(err(
                        "use_swiglu_ffn: SwiGLU feed-forwards are not supported".into(),
                    ));
                }
                if v["num_register_tokens"].as_u64().unwrap_or(0) > 0 {
                    return Err(err("register tokens are not supported".into()));
                }
                let ratio = v["mlp_ratio"].as_f64().unwrap_or(4.0);
                (hidden as f64 * ratio) as usize
            }
        };
        let mut config = Self::new(
            arch,
            hidden,
            int("num_hidden_layers")?,
            int("num_attention_heads")?,
            intermediate,
            int("patch_size")?,
            int("image_size")?,
        );
        if let Some(eps) = v["layer_norm_eps"].as_f64() {
            config.layer_norm_eps = eps;
        }
        if let Some(c) = v["num_channels"].as_u64() {
            config.num_channels = c as usize;
        }
        if hidden % config.num_heads != 0 {
            return Err(err(format!(
                "hidden_size {hidden} is not a multiple of num_attention_heads {}",
                config.num_heads
            )));
        }
        Ok(config)
    }

    /// Patches per side of the position table.
    fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Every parameter the network reads, with its upstream name (no `vit.` / `dinov2.` prefix)
    /// and shape, in load order. Upstream parameters not listed (DINOv2's `mask_token`, a
    /// `pooler`) are not used for embeddings.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, i, c, p) = (
            self.hidden_size,
            self.intermediate_size,
            self.num_channels,
            self.patch_size,
        );
        let n = self.grid() * self.grid();
        let mut v: Vec<(String, Vec<usize>)> = vec![
            ("embeddings.cls_token".into(), vec![1, 1, d]),
            ("embeddings.position_embeddings".into(), vec![1, n + 1, d]),
            (
                "embeddings.patch_embeddings.projection.weight".into(),
                vec![d, c, p, p],
            ),
            (
                "embeddings.patch_embeddings.projection.bias".into(),
                vec![d],
            ),
        ];
        for l in 0..self.num_layers {
            let names = LayerNames::new(self.arch, l);
            let mut add = |name: &str, shape: Vec<usize>| v.push((name.to_string(), shape));
            add(&format!("{}.weight", names.norm1), vec![d]);
            add(&format!("{}.bias", names.norm1), vec![d]);
            for proj in ["query", "key", "value"] {
                add(&format!("{}.{proj}.weight", names.attention), vec![d, d]);
                add(&format!("{}.{proj}.bias", names.attention), vec![d]);
            }
            add(&format!("{}.weight", names.attn_out), vec![d, d]);
            add(&format!("{}.bias", names.attn_out), vec![d]);
            if let Some(s) = &names.scale1 {
                add(s, vec![d]);
            }
            add(&format!("{}.weight", names.norm2), vec![d]);
            add(&format!("{}.bias", names.norm2), vec![d]);
            add(&format!("{}.weight", names.fc1), vec![i, d]);
            add(&format!("{}.bias", names.fc1), vec![i]);
            add(&format!("{}.weight", names.fc2), vec![d, i]);
            add(&format!("{}.bias", names.fc2), vec![d]);
            if let Some(s) = &names.scale2 {
                add(s, vec![d]);
            }
        }
        v.push(("layernorm.weight".into(), vec![d]));
        v.push(("layernorm.bias".into(), vec![d]));
        v
    }

    /// A network of this shape with random weights (for tests and timing; its embeddings mean
    /// nothing).
    ///
    /// # Panics
    /// If `num_heads` does not divide `hidden_size`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> DinoModel<B> {
        assert_eq!(
            self.hidden_size % self.num_heads,
            0,
            "heads must divide hidden_size"
        );
        let normal = |shape: Vec<usize>, std: f64| {
            let n: usize = shape.iter().product();
            Tensor::<B, 1>::random([n], Distribution::Normal(0.0, std), device).to_f32_vec()
        };
        let tensors = self
            .parameter_shapes()
            .into_iter()
            .map(|(name, shape)| {
                let fan_in = if shape.len() >= 2 {
                    shape[1..].iter().product::<usize>()
                } else {
                    0
                };
                let values = if name.ends_with("lambda1")
                    || (name.contains("norm") && name.ends_with("weight"))
                {
                    vec![1.0; shape[0]]
                } else if shape.len() == 1 {
                    vec![0.0; shape[0]]
                } else if fan_in > 0 && !name.contains("_token") && !name.contains("position") {
                    normal(shape.clone(), (fan_in as f64).powf(-0.5))
                } else {
                    normal(shape.clone(), 0.02)
                };
                (name, shape, values)
            })
            .collect::<Vec<_>>();
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>, ModelError> {
            let (_, s, v) = tensors.iter().find(|(n, _, _)| n == name).expect("listed");
            assert_eq!(s, shape);
            Ok(v.clone())
        };
        DinoModel::build(self, &get, device).expect("random weights fit their own shapes")
    }
}

/// Upstream names of one block's parameters.
struct LayerNames {
    norm1: String,
    attention: String,
    attn_out: String,
    scale1: Option<String>,
    norm2: String,
    fc1: String,
    fc2: String,
    scale2: Option<String>,
}

impl LayerNames {
    fn new(arch: DinoArch, l: usize) -> Self {
        let p = format!("encoder.layer.{l}");
        match arch {
            DinoArch::Vit => Self {
                norm1: format!("{p}.layernorm_before"),
                attention: format!("{p}.attention.attention"),
                attn_out: format!("{p}.attention.output.dense"),
                scale1: None,
                norm2: format!("{p}.layernorm_after"),
                fc1: format!("{p}.intermediate.dense"),
                fc2: format!("{p}.output.dense"),
                scale2: None,
            },
            DinoArch::Dinov2 => Self {
                norm1: format!("{p}.norm1"),
                attention: format!("{p}.attention.attention"),
                attn_out: format!("{p}.attention.output.dense"),
                scale1: Some(format!("{p}.layer_scale1.lambda1")),
                norm2: format!("{p}.norm2"),
                fc1: format!("{p}.mlp.fc1"),
                fc2: format!("{p}.mlp.fc2"),
                scale2: Some(format!("{p}.layer_scale2.lambda1")),
            },
        }
    }
}

/// One pre-norm transformer block.
#[derive(Module, Debug)]
struct Block<B: Backend> {
    norm1: LayerNorm<B>,
    /// query, key and value side by side: `[d, 3d]`.
    qkv: Linear<B>,
    attn_out: Linear<B>,
    /// DINOv2's `layer_scale1.lambda1`, `[d]`.
    scale1: Option<Param<Tensor<B, 1>>>,
    norm2: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
    /// DINOv2's `layer_scale2.lambda1`, `[d]`.
    scale2: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Block<B> {
    fn forward(&self, x: Tensor<B, 3>, heads: usize) -> Tensor<B, 3> {
        let d = x.dims()[2];
        let qkv = self.qkv.forward(self.norm1.forward(x.clone()));
        let part = |i: usize| split_heads(qkv.clone().narrow(2, i * d, d), heads);
        let ctx = multi_head_attention(part(0), part(1), part(2), false);
        let mut a = self.attn_out.forward(ctx);
        if let Some(s) = &self.scale1 {
            a = a * s.val().unsqueeze::<3>();
        }
        let x = x + a;
        let h = self.norm2.forward(x.clone());
        let mut m = self.fc2.forward(gelu(self.fc1.forward(h)));
        if let Some(s) = &self.scale2 {
            m = m * s.val().unsqueeze::<3>();
        }
        x + m
    }
}

/// A DINO / DINOv2 vision transformer returning the CLS embedding.
#[derive(Module, Debug)]
pub struct DinoModel<B: Backend> {
    /// `[1, 1, d]`
    cls_token: Param<Tensor<B, 3>>,
    /// `[1, 1 + g², d]`, `g` patches per side of the checkpoint's image.
    position_embeddings: Param<Tensor<B, 3>>,
    /// `[d, c, p, p]`
    patch_weight: Param<Tensor<B, 4>>,
    /// `[d]`
    patch_bias: Param<Tensor<B, 1>>,
    blocks: Vec<Block<B>>,
    final_norm: LayerNorm<B>,
    #[module(skip)]
    config: DinoConfig,
}

impl<B: Backend> DinoModel<B> {
    /// Loads the weights for `config`: a `.safetensors` file, or any other extension as a
    /// PyTorch state dict (`pytorch_model.bin`, which older Hub snapshots such as
    /// `facebook/dino-vits16` ship). Parameter names may carry the `vit.` / `dinov2.` prefix of
    /// models saved from a task head; extra tensors are ignored, missing or misshaped ones are
    /// errors naming them.
    pub fn load(
        config: &DinoConfig,
        weights: impl AsRef<Path>,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let weights = weights.as_ref();
        let file = WeightStore::open(weights)?;
        let prefix = ["", "vit.", "dinov2."]
            .into_iter()
            .find(|p| file.contains(&format!("{p}embeddings.cls_token")))
            .unwrap_or("");
        let get = |name: &str, shape: &[usize]| file.values(&format!("{prefix}{name}"), shape);
        Self::build(config, &get, device)
    }

    /// Builds the module from `get(name, shape)`, which returns that tensor's values.
    fn build(
        config: &DinoConfig,
        get: &Getter<'_>,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let (d, i, c, p) = (
            config.hidden_size,
            config.intermediate_size,
            config.num_channels,
            config.patch_size,
        );
        let n = config.grid() * config.grid();
        let t1 = |v: Vec<f32>| Tensor::<B, 1>::from_floats(v.as_slice(), device);
        let vec1 = |name: &str| get(name, &[d]).map(|v| Param::from_tensor(t1(v)));
        let eps = config.layer_norm_eps;
        let norm = |prefix: &str| -> Result<LayerNorm<B>, ModelError> {
            Ok(LayerNorm::from_tensors(
                t1(get(&format!("{prefix}.weight"), &[d])?),
                t1(get(&format!("{prefix}.bias"), &[d])?),
                eps,
            ))
        };
        // torch `[out, in]` → burn `[in, out]`, laid out contiguously once here (a transposed
        // view would be copied by every matmul).
        let transposed = |w: Vec<f32>, out: usize, inp: usize| {
            Tensor::<B, 2>::from_data(
                TensorData::new(crate::weights::transpose(&w, out, inp), [inp, out]),
                device,
            )
        };
        let dense = |prefix: &str, out: usize, inp: usize| -> Result<Linear<B>, ModelError> {
            Ok(Linear::from_tensors(
                transposed(get(&format!("{prefix}.weight"), &[out, inp])?, out, inp),
                Some(t1(get(&format!("{prefix}.bias"), &[out])?)),
            ))
        };
        let mut blocks = Vec::with_capacity(config.num_layers);
        for l in 0..config.num_layers {
            let names = LayerNames::new(config.arch, l);
            let mut ws = Vec::new();
            let mut bs = Vec::new();
            for proj in ["query", "key", "value"] {
                let w = get(&format!("{}.{proj}.weight", names.attention), &[d, d])?;
                ws.push(transposed(w, d, d));
                bs.extend(get(&format!("{}.{proj}.bias", names.attention), &[d])?);
            }
            let scale = |name: &Option<String>| -> Result<Option<Param<Tensor<B, 1>>>, ModelError> {
                name.as_deref().map(vec1).transpose()
            };
            blocks.push(Block {
                norm1: norm(&names.norm1)?,
                qkv: Linear::from_tensors(Tensor::cat(ws, 1), Some(t1(bs))),
                attn_out: dense(&names.attn_out, d, d)?,
                scale1: scale(&names.scale1)?,
                norm2: norm(&names.norm2)?,
                fc1: dense(&names.fc1, i, d)?,
                fc2: dense(&names.fc2, d, i)?,
                scale2: scale(&names.scale2)?,
            });
        }
        let t = |name: &str, shape: Vec<usize>| -> Result<TensorData, ModelError> {
            Ok(TensorData::new(get(name, &shape)?, shape))
        };
        Ok(Self {
            cls_token: Param::from_tensor(Tensor::from_data(
                t("embeddings.cls_token", vec![1, 1, d])?,
                device,
            )),
            position_embeddings: Param::from_tensor(Tensor::from_data(
                t("embeddings.position_embeddings", vec![1, n + 1, d])?,
                device,
            )),
            patch_weight: Param::from_tensor(Tensor::from_data(
                t(
                    "embeddings.patch_embeddings.projection.weight",
                    vec![d, c, p, p],
                )?,
                device,
            )),
            patch_bias: Param::from_tensor(t1(get(
                "embeddings.patch_embeddings.projection.bias",
                &[d],
            )?)),
            blocks,
            final_norm: norm("layernorm")?,
            config: config.clone(),
        })
    }

    /// The config the network was built for.
    pub fn config(&self) -> &DinoConfig {
        &self.config
    }

    /// CLS embeddings of a batch of processed images (see [`ImageProcessor`]).
    ///
    /// # Shapes
    /// - `pixels`: `[batch, channels, height, width]`, height and width multiples of the patch
    ///   size (a remainder is dropped, as the strided patch convolution does upstream)
    /// - output: `[batch, hidden_size]`
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 2> {
        let [b, _, h, w] = pixels.dims();
        let p = self.config.patch_size;
        let d = self.config.hidden_size;
        let patches = conv2d(
            pixels,
            self.patch_weight.val(),
            Some(self.patch_bias.val()),
            ConvOptions::new([p, p], [0, 0], [1, 1], 1),
        );
        let (gh, gw) = (h / p, w / p);
        let tokens = patches.flatten::<3>(2, 3).swap_dims(1, 2);
        let cls = self.cls_token.val().expand([b, 1, d]);
        let x = Tensor::cat(vec![cls, tokens], 1) + self.positions(gh, gw);
        let x = self
            .blocks
            .iter()
            .fold(x, |x, blk| blk.forward(x, self.config.num_heads));
        self.final_norm.forward(x).narrow(1, 0, 1).reshape([b, d])
    }

    /// The position table for a `gh × gw` patch grid: the checkpoint's when it fits (same count
    /// and a square input, transformers' condition), else its patch part resized with torch's
    /// bicubic (`align_corners=False`, A = −0.75), computed on the host in f32.
    fn positions(&self, gh: usize, gw: usize) -> Tensor<B, 3> {
        let g = self.config.grid();
        let d = self.config.hidden_size;
        let table = self.position_embeddings.val();
        if gh * gw == g * g && gh == gw {
            return table;
        }
        let device = table.device();
        let cls = table.clone().narrow(1, 0, 1);
        // [g·g, d] → [d, g, g] channel planes.
        let grid: Vec<f32> = table
            .narrow(1, 1, g * g)
            .reshape([g * g, d])
            .transpose()
            .to_f32_vec();
        let resized = bicubic_torch(&grid, d, g, g, gh, gw);
        let patch = Tensor::<B, 2>::from_data(TensorData::new(resized, [d, gh * gw]), &device)
            .transpose()
            .reshape([1, gh * gw, d]);
        Tensor::cat(vec![cls, patch], 1)
    }

    /// The embedding of one RGB image after `processor`, as a plain vector.
    pub fn embed(&self, image: RgbView<'_>, processor: &ImageProcessor) -> Vec<f32> {
        let device = self.patch_bias.val().device();
        let (values, h, w) = processor.pixel_values(image);
        let x = Tensor::<B, 4>::from_data(TensorData::new(values, [1, 3, h, w]), &device);
        self.forward(x).to_f32_vec()
    }
}

/// A Hugging Face snapshot loaded as one embedder: network and the processor it was trained
/// with.
#[derive(Debug)]
pub struct DinoEmbedder<B: Backend> {
    /// The network.
    pub model: DinoModel<B>,
    /// Its preprocessing.
    pub processor: ImageProcessor,
}

impl<B: Backend> DinoEmbedder<B> {
    /// Loads a snapshot folder: `config.json`, `model.safetensors` (or `pytorch_model.bin` when
    /// there is none), and `preprocessor_config.json` (the architecture's Hub default when
    /// absent).
    pub fn from_dir(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self, ModelError> {
        let dir = dir.as_ref();
        let config = DinoConfig::from_hf_config(dir.join("config.json"))?;
        let safetensors = dir.join("model.safetensors");
        let weights = if safetensors.exists() {
            safetensors
        } else {
            dir.join("pytorch_model.bin")
        };
        let model = DinoModel::load(&config, weights, device)?;
        let pp = dir.join("preprocessor_config.json");
        let processor = if pp.exists() {
            ImageProcessor::from_hf_config(&pp)?
        } else {
            match config.arch {
                DinoArch::Vit => ImageProcessor::dino_vits16(),
                DinoArch::Dinov2 => ImageProcessor::dinov2(),
            }
        };
        Ok(Self { model, processor })
    }

    /// The CLS embedding of one RGB image.
    pub fn embed(&self, image: RgbView<'_>) -> Vec<f32> {
        self.model.embed(image, &self.processor)
    }
}

/// torch's `F.interpolate(mode="bicubic", align_corners=False)` of `c` planes of `h × w` to
/// `oh × ow` (source index `(i + 0.5)·in/out − 0.5`, A = −0.75, taps clamped to the border),
/// in f32 as torch's CPU kernel: weights per axis, then Σ_y w_y · Σ_x w_x · v.
fn bicubic_torch(src: &[f32], c: usize, h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    fn axis(input: usize, output: usize) -> Vec<([usize; 4], [f32; 4])> {
        const A: f32 = -0.75;
        let cc1 = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
        let cc2 = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
        let scale = input as f32 / output as f32;
        (0..output)
            .map(|i| {
                let real = scale * (i as f32 + 0.5) - 0.5;
                let idx = real.floor();
                let t = real - idx;
                let idx = idx as i64;
                let taps = std::array::from_fn(|j| {
                    (idx - 1 + j as i64).clamp(0, input as i64 - 1) as usize
                });
                (taps, [cc2(t + 1.0), cc1(t), cc1(1.0 - t), cc2(2.0 - t)])
            })
            .collect()
    }
    let ys = axis(h, oh);
    let xs = axis(w, ow);
    let mut out = Vec::with_capacity(c * oh * ow);
    for plane in src.chunks_exact(h * w) {
        for (ty, wy) in &ys {
            for (tx, wx) in &xs {
                let mut acc = 0f32;
                for j in 0..4 {
                    let row = &plane[ty[j] * w..][..w];
                    let mut r = 0f32;
                    for i in 0..4 {
                        r += row[tx[i]] * wx[i];
                    }
                    acc += r * wy[j];
                }
                out.push(acc);
            }
        }
    }
    out
}

/// How an image processor sizes the image before cropping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTo {
    /// To exactly `height × width` (`ViTImageProcessor`'s `{"height", "width"}`).
    Exact {
        /// Output height.
        height: usize,
        /// Output width.
        width: usize,
    },
    /// Shorter side to this, the longer `⌊size · long / short⌋` (`{"shortest_edge"}`).
    ShortestEdge(usize),
}

/// A port of the transformers image processors DINO checkpoints ship with
/// (`ViTImageProcessor`, `BitImageProcessor`): Pillow resize of the 8-bit image
/// (`core::resample`, bit-exact), centre crop (`top = (h − crop_h) // 2`), `× rescale` in double
/// precision then f32, `(x − mean) / std` in f32, channels first.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    /// Resize step, if any.
    pub resize: Option<ResizeTo>,
    /// Pillow filter of the resize.
    pub resample: Filter,
    /// Centre crop `(height, width)`, if any.
    pub crop: Option<(usize, usize)>,
    /// `rescale_factor` (1/255), if rescaling.
    pub rescale: Option<f64>,
    /// Per-channel `(mean, std)`, if normalising.
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

/// ImageNet mean and standard deviation (`IMAGENET_DEFAULT_MEAN` / `_STD`).
const IMAGENET: ([f32; 3], [f32; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);

impl ImageProcessor {
    /// `facebook/dino-vits16`'s processor: the conversion script's `ViTFeatureExtractor`
    /// (224 × 224 bilinear, no crop, ImageNet mean / std). [`DinoEmbedder::from_dir`] reads the
    /// snapshot's own `preprocessor_config.json`; this preset is for when it is absent.
    /// [`ImageProcessor::dinov2`] is the DINO repository's evaluation transform instead.
    pub fn dino_vits16() -> Self {
        Self {
            resize: Some(ResizeTo::Exact {
                height: 224,
                width: 224,
            }),
            resample: Filter::Bilinear,
            crop: None,
            rescale: Some(1.0 / 255.0),
            normalize: Some(IMAGENET),
        }
    }

    /// The DINO repository's evaluation transform (`Resize(256, bicubic)`, `CenterCrop(224)`)
    /// with Pillow's resize, which is also `facebook/dinov2-small`'s `BitImageProcessor`.
    pub fn dinov2() -> Self {
        Self {
            resize: Some(ResizeTo::ShortestEdge(256)),
            resample: Filter::Bicubic,
            crop: Some((224, 224)),
            rescale: Some(1.0 / 255.0),
            normalize: Some(IMAGENET),
        }
    }

    /// Reads a transformers `preprocessor_config.json`.
    pub fn from_hf_config(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let err = |message: String| ModelError::Format {
            path: path.to_path_buf(),
            message,
        };
        let v: Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let flag = |key: &str, default: bool| v[key].as_bool().unwrap_or(default);
        let kind = v["image_processor_type"]
            .as_str()
            .or(v["feature_extractor_type"].as_str())
            .unwrap_or("");
        // An integer `size` is a square for ViT processors, a shortest edge for the others
        // (`get_size_dict`'s `default_to_square`).
        let square_int = kind.starts_with("ViT");
        let size = |val: &Value, square: bool| -> Result<ResizeTo, ModelError> {
            if let Some(n) = val.as_u64() {
                let n = n as usize;
                return Ok(if square {
                    ResizeTo::Exact {
                        height: n,
                        width: n,
                    }
                } else {
                    ResizeTo::ShortestEdge(n)
                });
            }
            if let (Some(h), Some(w)) = (val["height"].as_u64(), val["width"].as_u64()) {
                return Ok(ResizeTo::Exact {
                    height: h as usize,
                    width: w as usize,
                });
            }
            if val.get("longest_edge").is_some() {
                return Err(err("`longest_edge` sizes are not supported".into()));
            }
            if let Some(s) = val["shortest_edge"].as_u64() {
                return Ok(ResizeTo::ShortestEdge(s as usize));
            }
            Err(err(format!("unsupported size {val}")))
        };
        let resize = if flag("do_resize", true) {
            Some(size(&v["size"], square_int)?)
        } else {
            None
        };
        let resample = match v["resample"].as_u64().unwrap_or(2) {
            1 => Filter::Lanczos,
            2 => Filter::Bilinear,
            3 => Filter::Bicubic,
            r => return Err(err(format!("resample {r}: only 1, 2, 3 are supported"))),
        };
        let crop = if flag("do_center_crop", false) {
            match size(&v["crop_size"], true)? {
                ResizeTo::Exact { height, width } => Some((height, width)),
                ResizeTo::ShortestEdge(_) => return Err(err("crop_size must be a size".into())),
            }
        } else {
            None
        };
        let rescale =
            flag("do_rescale", true).then(|| v["rescale_factor"].as_f64().unwrap_or(1.0 / 255.0));
        let triple = |key: &str| -> Result<[f32; 3], ModelError> {
            let a = v[key]
                .as_array()
                .filter(|a| a.len() == 3)
                .ok_or_else(|| err(format!("`{key}` must be three numbers")))?;
            Ok(std::array::from_fn(|i| {
                a[i].as_f64().unwrap_or(f64::NAN) as f32
            }))
        };
        let normalize = if flag("do_normalize", true) {
            Some((triple("image_mean")?, triple("image_std")?))
        } else {
            None
        };
        if let (Some(ResizeTo::Exact { height, width }), Some((ch, cw))) = (resize, crop)
            && (ch > height || cw > width)
        {
            return Err(err(format!(
                "crop {ch}×{cw} larger than the resize {height}×{width}"
            )));
        }
        if let (Some(ResizeTo::ShortestEdge(s)), Some((ch, cw))) = (resize, crop)
            && (ch > s || cw > s)
        {
            return Err(err(format!(
                "crop {ch}×{cw} larger than the shortest edge {s}"
            )));
        }
        Ok(Self {
            resize,
            resample,
            crop,
            rescale,
            normalize,
        })
    }

    /// The processed image, channels first, with its height and width.
    ///
    /// # Panics
    /// If the image (after the resize) is smaller than the crop; transformers pads with zeros
    /// there, which [`ImageProcessor::from_hf_config`]'s checks rule out for resizing configs.
    pub fn pixel_values(&self, image: RgbView<'_>) -> (Vec<f32>, usize, usize) {
        let plane = Plane8 {
            width: image.width,
            height: image.height,
            channels: 3,
            data: image.data.to_vec(),
        };
        let plane = match self.resize {
            None => plane,
            Some(ResizeTo::Exact { height, width }) => resize(&plane, width, height, self.resample),
            Some(ResizeTo::ShortestEdge(s)) => {
                let (w, h) = (plane.width, plane.height);
                let (ow, oh) = if w <= h {
                    (s, (s as f64 * h as f64 / w as f64) as usize)
                } else {
                    ((s as f64 * w as f64 / h as f64) as usize, s)
                };
                resize(&plane, ow, oh, self.resample)
            }
        };
        let (top, left, h, w) = match self.crop {
            None => (0, 0, plane.height, plane.width),
            Some((ch, cw)) => {
                assert!(
                    ch <= plane.height && cw <= plane.width,
                    "image {}×{} smaller than the crop {ch}×{cw}",
                    plane.height,
                    plane.width
                );
                ((plane.height - ch) / 2, (plane.width - cw) / 2, ch, cw)
            }
        };
        let mut out = vec![0f32; 3 * h * w];
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let p = plane.data[((top + y) * plane.width + left + x) * 3 + c];
                    let mut v = match self.rescale {
                        Some(s) => (f64::from(p) * s) as f32,
                        None => f32::from(p),
                    };
                    if let Some((mean, std)) = &self.normalize {
                        v = (v - mean[c]) / std[c];
                    }
                    out[(c * h + y) * w + x] = v;
                }
            }
        }
        (out, h, w)
    }
}

/// The DINO score of DreamBooth (Ruiz et al., 2023): the mean, over every pair of one embedding
/// from `a` (e.g. generated images) and one from `b` (real images of the subject), of their
/// cosine similarity; in double precision. `None` when either set is empty.
///
/// # Panics
/// If embeddings differ in length.
pub fn mean_pairwise_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> Option<f64> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let unit = |v: &Vec<f32>| {
        let n = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        v.iter()
            .map(|&x| if n > 0.0 { f64::from(x) / n } else { 0.0 })
            .collect::<Vec<f64>>()
    };
    let (ua, ub): (Vec<_>, Vec<_>) = (a.iter().map(unit).collect(), b.iter().map(unit).collect());
    let mut sum = 0.0;
    for x in &ua {
        for y in &ub {
            assert_eq!(x.len(), y.len(), "embeddings of equal length");
            sum += x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>();
        }
    }
    Some(sum / (ua.len() * ub.len()) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn presets_list_the_hub_parameter_counts() {
        let count = |c: &DinoConfig| {
            c.parameter_shapes()
                .iter()
                .map(|(_, s)| s.iter().product::<usize>())
                .sum::<usize>()
        };
        // ViTModel(add_pooling_layer=False) for dino-vits16: 21.67 M parameters.
        assert_eq!(count(&DinoConfig::vit_s16()), 21_665_664);
        // Dinov2Model dinov2-small without mask_token (384).
        assert_eq!(count(&DinoConfig::dinov2_vit_s14()), 22_056_576 - 384);
    }

    #[test]
    fn random_small_model_gives_one_embedding_per_image() {
        let config = DinoConfig::new(DinoArch::Dinov2, 16, 1, 2, 32, 4, 16);
        let net = config.init::<Flex>(&Default::default());
        let x = Tensor::<Flex, 4>::ones([2, 3, 16, 16], &Default::default());
        assert_eq!(net.forward(x).dims(), [2, 16]);
        // Another grid: positions interpolated.
        let x = Tensor::<Flex, 4>::ones([1, 3, 24, 20], &Default::default());
        assert_eq!(net.forward(x).dims(), [1, 16]);
    }

    #[test]
    fn bicubic_of_a_constant_is_the_constant() {
        let src = vec![2.5f32; 2 * 4 * 4];
        let out = bicubic_torch(&src, 2, 4, 4, 6, 3);
        assert!(out.iter().all(|&v| (v - 2.5).abs() < 1e-5), "{out:?}");
    }

    #[test]
    fn mean_pairwise_cosine_of_sets() {
        let a = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let b = vec![vec![2.0, 0.0]];
        assert_eq!(mean_pairwise_cosine(&a, &b), Some(0.5));
        assert_eq!(mean_pairwise_cosine(&a, &[]), None);
    }
}
