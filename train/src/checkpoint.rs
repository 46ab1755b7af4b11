//! Checkpoints of a run: every N steps a folder `checkpoints/step-NNNNNNNN/` with the trained
//! weights (`adapter.safetensors`, the export layout), the optimizer's moments
//! (`optimizer.safetensors`, keyed by checkpoint key) and `state.json` (step, data position,
//! seed, each tensor's Adam step, the settings' fingerprint). The folder is written under a
//! temporary name and renamed, so a checkpoint either exists whole or not at all; only the last
//! K are kept.
//!
//! The random streams (shuffle, references, noise, timesteps, drops, masks) are functions of
//! `(seed, step, position)` (see [`crate::data::mix`]), so the step and the seed are the whole
//! RNG state: a resumed run draws exactly what the uninterrupted one would have.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use idforge_models::WeightStore;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::export::{F32Tensor, write_atomic, write_safetensors};
use crate::optim::AdamState;

/// The trained weights' file in a checkpoint (the export layout).
pub const ADAPTER_FILE: &str = "adapter.safetensors";
/// The optimizer moments' file in a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The checkpoint's counters.
pub const STATE_FILE: &str = "state.json";

/// What a checkpoint records besides tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Samples consumed (the data position: the next sample is this one).
    pub samples_seen: u64,
    /// The run's seed (with `step`, the state of every random stream).
    pub seed: u64,
    /// The fingerprint of the settings that change the result; a resume refuses others.
    pub settings: String,
    /// Each trained tensor's Adam step (torch's `state["step"]`).
    pub optimizer_steps: BTreeMap<String, u64>,
}

/// The folder of the checkpoint at `step`.
pub fn checkpoint_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step-{step:08}"))
}

/// Writes a checkpoint under `root` and keeps the newest `keep` (0: all).
pub fn save<B: Backend>(
    root: &Path,
    adapter: &[F32Tensor],
    optimizer: &HashMap<String, AdamState<B>>,
    state: &CheckpointState,
    keep: usize,
) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(root).map_err(|e| TrainError::io(root, e))?;
    let dir = checkpoint_dir(root, state.step);
    let tmp = root.join(format!(
        ".step-{:08}.{}.tmp",
        state.step,
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    write_safetensors(&tmp.join(ADAPTER_FILE), adapter, Some(("format", "pt")))?;
    let mut moments: Vec<F32Tensor> = Vec::with_capacity(optimizer.len() * 2);
    let mut keys: Vec<&String> = optimizer.keys().collect();
    keys.sort();
    for key in keys {
        let s = &optimizer[key];
        for (what, t) in [("exp_avg", &s.exp_avg), ("exp_avg_sq", &s.exp_avg_sq)] {
            let v = t
                .clone()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| TrainError::Setting(format!("reading {what} of {key}: {e:?}")))?;
            moments.push((format!("{what}/{key}"), vec![v.len()], v));
        }
    }
    write_safetensors(&tmp.join(OPTIMIZER_FILE), &moments, None)?;
    let json = serde_json::to_vec_pretty(state)
        .map_err(|e| TrainError::Setting(format!("serialising the checkpoint state: {e}")))?;
    write_atomic(&tmp.join(STATE_FILE), &json)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| TrainError::io(&dir, e))?;
    if let Ok(f) = std::fs::File::open(root) {
        let _ = f.sync_all();
    }
    if keep > 0 {
        let all = list(root)?;
        for (_, old) in all.iter().rev().skip(keep) {
            std::fs::remove_dir_all(old).map_err(|e| TrainError::io(old, e))?;
        }
    }
    Ok(dir)
}

/// The complete checkpoints under `root`, oldest first (temporary folders are ignored).
pub fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| TrainError::io(root, e))? {
        let entry = entry.map_err(|e| TrainError::io(root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<u64>().ok())
            && entry.path().join(STATE_FILE).is_file()
        {
            found.push((step, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// A checkpoint read back: its counters and the optimizer's state on `device`.
pub struct Loaded<B: Backend> {
    /// The counters.
    pub state: CheckpointState,
    /// The weights file, for `IpAdapter::load`.
    pub adapter: PathBuf,
    /// The optimizer's moments by checkpoint key.
    pub optimizer: HashMap<String, AdamState<B>>,
}

/// Reads the checkpoint in `dir`.
pub fn load<B: Backend>(dir: &Path, device: &B::Device) -> Result<Loaded<B>, TrainError> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    let state: CheckpointState = serde_json::from_str(&text)
        .map_err(|e| TrainError::data(&state_path, format!("not a checkpoint state: {e}")))?;
    let store = WeightStore::open(dir.join(OPTIMIZER_FILE))?;
    let mut optimizer = HashMap::new();
    for (key, &step) in &state.optimizer_steps {
        let read = |what: &str| -> Result<Tensor<B, 1>, TrainError> {
            let (_, v) = store.read_f32(&format!("{what}/{key}"))?;
            let n = v.len();
            Ok(Tensor::from_data(TensorData::new(v, [n]), device))
        };
        optimizer.insert(
            key.clone(),
            AdamState {
                step,
                exp_avg: read("exp_avg")?,
                exp_avg_sq: read("exp_avg_sq")?,
            },
        );
    }
    Ok(Loaded {
        state,
        adapter: dir.join(ADAPTER_FILE),
        optimizer,
    })
}
