//! A CLIP checkpoint as users have it on disk — a Hugging Face model folder, or `.safetensors`
//! files in either layout — opened with its config, tokenizer and preprocessing, so every
//! command that needs CLIP (`idforge clip score`, the benchmark's CLIP-T / CLIP-I / CMMD) opens
//! it the same way.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::{Clip, ClipConfig, ClipPreprocess, ClipTokenizer, WeightLayout, cached_bpe_vocab};
use crate::error::ModelError;
use crate::face_api::preprocess::RgbView;
use crate::readback::ReadBack;
use crate::weights::WeightStore;

/// Where the checkpoint is and how to read it.
#[derive(Debug, Clone, Default)]
pub struct ClipSource {
    /// A `.safetensors` file (several for shards) or one Hugging Face model folder.
    pub weights: Vec<PathBuf>,
    /// A shape preset name; default: the `config.json` beside the weights.
    pub preset: Option<String>,
    /// The tensor-name layout; default: detected from the names.
    pub layout: Option<WeightLayout>,
    /// A `tokenizer.json`; default: the one beside the weights, else the cached BPE vocabulary.
    pub tokenizer: Option<PathBuf>,
    /// Prefix of the CLIP tensors inside a larger checkpoint.
    pub prefix: String,
}

/// The loaded model with the tokenizer and preprocessing that go with it.
pub struct ClipCheckpoint<B: Backend> {
    /// Both towers.
    pub model: Clip<B>,
    /// The text tokenizer, with the model's context length.
    pub tokenizer: ClipTokenizer,
    /// Resize, crop and normalisation of the checkpoint's library.
    pub preprocess: ClipPreprocess,
    /// The shapes.
    pub config: ClipConfig,
    /// The tensor-name layout found.
    pub layout: WeightLayout,
    /// The first weight file's (or the folder's) name, for tables and leaderboards.
    pub name: String,
    device: B::Device,
}

impl<B: Backend> ClipCheckpoint<B> {
    /// Opens the checkpoint `source` describes.
    pub fn load(source: &ClipSource, device: &B::Device) -> Result<Self, ModelError> {
        let (files, folder) = checkpoint_files(&source.weights)?;
        let weights = WeightStore::safetensors(&files)?.with_prefix(&source.prefix);
        let format = |message: String| ModelError::Format {
            path: files[0].clone(),
            message,
        };
        let layout = match source.layout {
            Some(l) => l,
            None => WeightLayout::detect(&weights).ok_or_else(|| {
                format("neither Hugging Face nor OpenCLIP CLIP tensor names (wrong prefix?)".into())
            })?,
        };
        let config_json = folder.as_deref().map(|f| f.join("config.json"));
        let config = match (&source.preset, config_json) {
            (Some(name), _) => ClipConfig::preset(name).ok_or_else(|| {
                let names: Vec<&str> = ClipConfig::PRESETS.iter().map(|(n, _)| *n).collect();
                format(format!(
                    "unknown CLIP preset {name:?}; presets: {}",
                    names.join(", ")
                ))
            })?,
            (None, Some(json)) if json.is_file() => ClipConfig::from_hf_config_json(&json)?,
            (None, _) => {
                return Err(format(
                    "no config.json beside the weights: name a preset (e.g. ViT-B-32)".into(),
                ));
            }
        };
        let tokenizer_json = source.tokenizer.clone().or_else(|| {
            folder
                .as_ref()
                .map(|f| f.join("tokenizer.json"))
                .filter(|p| p.is_file())
        });
        let tokenizer_path = tokenizer_json.clone().unwrap_or_else(cached_bpe_vocab);
        let tokenizer = match tokenizer_json {
            Some(path) => ClipTokenizer::from_tokenizer_json(&path)?,
            None => {
                let vocab = cached_bpe_vocab();
                if !vocab.is_file() {
                    return Err(ModelError::Format {
                        path: vocab,
                        message: "missing: run tools/clip-reference/fetch-vocab, or give a \
                                  tokenizer.json"
                            .into(),
                    });
                }
                ClipTokenizer::from_bpe_vocab(&vocab, layout.convention())?
            }
        }
        .with_context_length(config.text.context_length);
        let vocab = tokenizer.vocab_size();
        if vocab > config.text.vocab_size {
            return Err(ModelError::Setting(format!(
                "{}: the tokenizer has {vocab} tokens but the model's embedding table has {} \
                 (they belong to different models; give the tokenizer.json saved with the \
                 weights)",
                tokenizer_path.display(),
                config.text.vocab_size
            )));
        }
        let model = Clip::load(&weights, &config, layout, device)?;
        let preprocess = ClipPreprocess::new(config.vision.image_size, layout.convention());
        let name = match &folder {
            Some(dir) if source.weights.len() == 1 && source.weights[0].is_dir() => dir,
            _ => &files[0],
        }
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
        Ok(ClipCheckpoint {
            model,
            tokenizer,
            preprocess,
            config,
            layout,
            name,
            device: device.clone(),
        })
    }

    /// A model of `config`'s shape with random weights and the cached BPE tokenizer's
    /// conventions, for timing (speed does not depend on the values).
    ///
    /// # Panics
    /// If the BPE vocabulary is not in the asset cache (`tools/clip-reference/fetch-vocab`).
    pub fn random(config: &ClipConfig, device: &B::Device) -> Self {
        let layout = WeightLayout::HuggingFace;
        let tokenizer = ClipTokenizer::from_bpe_vocab(&cached_bpe_vocab(), layout.convention())
            .expect("the CLIP BPE vocabulary: run tools/clip-reference/fetch-vocab")
            .with_context_length(config.text.context_length);
        ClipCheckpoint {
            model: config.init(device),
            tokenizer,
            preprocess: ClipPreprocess::new(config.vision.image_size, layout.convention()),
            config: config.clone(),
            layout,
            name: "random".into(),
            device: device.clone(),
        }
    }

    /// L2-normalised image embeddings, one per image.
    pub fn embed_images(&self, images: &[RgbView<'_>]) -> Vec<Vec<f32>> {
        if images.is_empty() {
            return Vec::new();
        }
        let size = self.config.vision.image_size;
        let pixels: Vec<f32> = images
            .iter()
            .flat_map(|&img| self.preprocess.pixels(img))
            .collect();
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(pixels, [images.len(), 3, size, size]),
            &self.device,
        );
        rows(self.model.encode_image(x))
    }

    /// L2-normalised text embeddings, one per text (longer texts cut as the references cut).
    pub fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let ids = self.tokenizer.encode_batch(texts)?;
        Ok(rows(self.model.encode_text(&ids, &self.device)))
    }
}

fn rows<B: Backend>(t: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let [n, d] = t.dims();
    let v: Vec<f32> = t.to_f32_vec();
    (0..n).map(|i| v[i * d..(i + 1) * d].to_vec()).collect()
}

/// CLIP-T of one pair of L2-normalised embeddings: `100 · max(cos, 0)` (torchmetrics).
pub fn clip_t(image: &[f32], text: &[f32]) -> f32 {
    let cos: f32 = image.iter().zip(text).map(|(a, b)| a * b).sum();
    100.0 * cos.max(0.0)
}

/// The `.safetensors` files of the checkpoint and, for a folder (or a file inside one), the
/// folder where `config.json` and `tokenizer.json` may be.
pub fn checkpoint_files(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, Option<PathBuf>), ModelError> {
    let Some(first) = paths.first() else {
        return Err(ModelError::Format {
            path: PathBuf::new(),
            message: "no CLIP weights given".into(),
        });
    };
    if let [dir] = paths
        && dir.is_dir()
    {
        let preferred = ["model.safetensors", "open_clip_model.safetensors"];
        if let Some(file) = preferred.iter().map(|f| dir.join(f)).find(|p| p.is_file()) {
            return Ok((vec![file], Some(dir.clone())));
        }
        let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| ModelError::Io {
                path: dir.clone(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        shards.sort();
        if shards.is_empty() {
            return Err(ModelError::Format {
                path: dir.clone(),
                message: "no .safetensors file in the folder".into(),
            });
        }
        return Ok((shards, Some(dir.clone())));
    }
    let folder = first.parent().map(Path::to_path_buf);
    Ok((paths.to_vec(), folder))
}
