//! Which files hold a checkpoint: a diffusers component folder's weight file, its `fp16`
//! variant or its sharded index, and the shards an index names.

use std::path::{Path, PathBuf};

use crate::error::ModelError;

/// File names diffusers and transformers write for a component, in the order they are looked
/// for: the full-precision file, then the `fp16` variant (`save_pretrained(variant="fp16")`).
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

/// The safetensors files of a component folder (`unet/`, `text_encoder/`, …).
pub fn component_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
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
    Err(ModelError::Missing {
        path: dir.to_path_buf(),
        what: format!(
            "no weights: expected one of {} (diffusers' `save_pretrained(safe_serialization=True)`; \
             convert `.bin` files to safetensors first, or name the `.bin` file itself)",
            WEIGHT_FILES.join(", ")
        ),
    })
}

/// The shard files an index names, each once, sorted.
pub fn shard_files(index: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let text = std::fs::read_to_string(index).map_err(|source| ModelError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let format = |message: String| ModelError::Format {
        path: index.to_path_buf(),
        message,
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format(format!("not JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| {
            format("no `weight_map` object (is it a sharded checkpoint's index?)".into())
        })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}
