//! The weights of one diffusers component (`unet/`, `vae/`, `text_encoder/`): its safetensors
//! file(s), fp16, bf16 or fp32 on disk, read into the backend's float type, with every
//! missing or misshapen tensor named.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use idforge_models::clip::ClipWeights;

use crate::error::DiffusionError;

/// File names diffusers writes for a component, in the order they are looked for: the full
/// precision file, then the `fp16` variant (`save_pretrained(variant="fp16")`).
const WEIGHT_FILES: &[&str] = &[
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors",
];
/// The index of a sharded checkpoint (`weight_map`: tensor → shard file).
const INDEX_FILES: &[&str] = &[
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors.index.fp16.json",
    "model.safetensors.index.fp16.json",
];

/// The tensors of one component, read on demand.
#[derive(Debug)]
pub struct Weights {
    inner: ClipWeights,
    /// The component folder or file, for messages.
    origin: PathBuf,
}

impl Weights {
    /// Opens a component folder (one safetensors file or a sharded index) or a single
    /// `.safetensors` file.
    pub fn open(path: &Path) -> Result<Self, DiffusionError> {
        let files = if path.is_dir() {
            component_files(path)?
        } else {
            vec![path.to_path_buf()]
        };
        Ok(Self {
            inner: ClipWeights::open_many(&files)?,
            origin: path.to_path_buf(),
        })
    }

    /// The folder or file the tensors come from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }

    /// The tensor names, in no particular order.
    pub fn names(&self) -> Vec<String> {
        self.inner.names().map(str::to_string).collect()
    }

    /// The stored shape of a tensor (`None` when absent).
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.inner.read_f32(name).ok().map(|(shape, _)| shape)
    }

    /// The CLIP view of the same files, for the text encoders.
    pub fn into_clip(self) -> ClipWeights {
        self.inner
    }

    /// A tensor of exactly `shape`.
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>, DiffusionError> {
        let (found, values) = self.inner.read_f32(name)?;
        if found.as_slice() != shape.as_slice() {
            return Err(self.shape_error(name, &found, &shape));
        }
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    }

    /// A linear layer's weight, stored `[out, in]` by torch, as burn's `[in, out]`. A 1×1
    /// convolution's `[out, in, 1, 1]` is accepted too (the original Stable Diffusion VAE
    /// stores its attention projections that way).
    pub fn linear_weight<B: Backend>(
        &self,
        name: &str,
        inp: usize,
        out: usize,
        device: &B::Device,
    ) -> Result<Tensor<B, 2>, DiffusionError> {
        let (found, values) = self.inner.read_f32(name)?;
        let ok = found == [out, inp] || found == [out, inp, 1, 1];
        if !ok {
            return Err(self.shape_error(name, &found, &[out, inp]));
        }
        let mut t = vec![0f32; values.len()];
        for o in 0..out {
            for i in 0..inp {
                t[i * out + o] = values[o * inp + i];
            }
        }
        Ok(Tensor::from_data(TensorData::new(t, [inp, out]), device))
    }

    fn shape_error(&self, name: &str, found: &[usize], expected: &[usize]) -> DiffusionError {
        DiffusionError::Shape {
            path: self.origin.clone(),
            name: name.to_string(),
            found: found.to_vec(),
            expected: expected.to_vec(),
        }
    }
}

/// The safetensors files of a component folder.
fn component_files(dir: &Path) -> Result<Vec<PathBuf>, DiffusionError> {
    for index in INDEX_FILES {
        let path = dir.join(index);
        if path.is_file() {
            return shard_files(&path);
        }
    }
    for name in WEIGHT_FILES {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(vec![path]);
        }
    }
    Err(DiffusionError::Missing {
        path: dir.to_path_buf(),
        what: format!(
            "no weights: expected one of {} (diffusers' `save_pretrained(safe_serialization=True)`; \
             convert `.bin` files to safetensors first)",
            WEIGHT_FILES.join(", ")
        ),
    })
}

/// The shard files an index names, each once, in first-use order.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>, DiffusionError> {
    let text = std::fs::read_to_string(index).map_err(|source| DiffusionError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| DiffusionError::Config {
            path: index.to_path_buf(),
            message: e.to_string(),
        })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| DiffusionError::Config {
            path: index.to_path_buf(),
            message: "no `weight_map` object".into(),
        })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        files.push(dir.join(name));
    }
    Ok(files)
}
