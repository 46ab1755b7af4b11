//! Named weight tensors from the files users bring: Hugging Face `.safetensors` (DINO, DINOv2)
//! and PyTorch `.pth` state dicts (the FID Inception), read through burn's PyTorch store
//! (`burn_store::pytorch::PytorchReader`: the legacy pickle format of 2019-era files as well as
//! the zip format of torch ≥ 1.6).
//!
//! Networks built from such files ask for each tensor by its upstream name and shape; a missing
//! tensor or another shape is an error naming both, never a silent zero or a panic deep in a
//! matmul. Floating-point tensors (f16, bf16, f32, f64) are widened or narrowed to f32; integer
//! tensors (BatchNorm's `num_batches_tracked`) are listed but cannot be taken as weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::error::ModelError;

/// One tensor of the file: its shape and, for floating-point tensors, its values as f32.
#[derive(Debug, Clone)]
struct Entry {
    shape: Vec<usize>,
    values: Option<Vec<f32>>,
}

/// The tensors of one weight file, by name.
#[derive(Debug, Clone)]
pub struct TensorFile {
    path: PathBuf,
    tensors: HashMap<String, Entry>,
}

impl TensorFile {
    /// Reads a `.safetensors` file (the Hub's `model.safetensors`).
    pub fn safetensors(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let format = |message: String| ModelError::Format {
            path: path.clone(),
            message,
        };
        let st = SafeTensors::deserialize(&bytes).map_err(|e| format(e.to_string()))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let data = view.data();
            let values = match view.dtype() {
                Dtype::F32 => Some(
                    data.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                ),
                Dtype::F16 => Some(
                    data.chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect(),
                ),
                Dtype::BF16 => Some(
                    data.chunks_exact(2)
                        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect(),
                ),
                Dtype::F64 => Some(
                    data.chunks_exact(8)
                        .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
                        .collect(),
                ),
                _ => None,
            };
            tensors.insert(
                name,
                Entry {
                    shape: view.shape().to_vec(),
                    values,
                },
            );
        }
        Ok(Self { path, tensors })
    }

    /// Reads a PyTorch `torch.save` state dict (`.pth`, `.pt`, `.bin`), legacy or zip format.
    pub fn pytorch(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref().to_path_buf();
        if let Err(source) = std::fs::metadata(&path) {
            return Err(ModelError::Io { path, source });
        }
        let format = |message: String| ModelError::Format {
            path: path.clone(),
            message,
        };
        let reader = burn_store::pytorch::PytorchReader::new(&path)
            .map_err(|e| format(format!("not a readable PyTorch file: {e}")))?;
        let mut tensors = HashMap::new();
        for (name, snapshot) in reader.into_tensors() {
            let shape = snapshot.shape.to_vec();
            let values = if snapshot.dtype.is_float() {
                let data = snapshot
                    .to_data()
                    .map_err(|e| format(format!("tensor `{name}`: {e}")))?;
                let data = if data.dtype == DType::F32 {
                    data
                } else {
                    data.convert::<f32>()
                };
                Some(
                    data.into_vec::<f32>()
                        .map_err(|e| format(format!("tensor `{name}`: {e:?}")))?,
                )
            } else {
                None
            };
            tensors.insert(name, Entry { shape, values });
        }
        Ok(Self { path, tensors })
    }

    /// The file, for error messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many tensors the file holds.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the file holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Whether the file has a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Names and shapes of every tensor, sorted by name (for key-list comparisons).
    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v: Vec<_> = self
            .tensors
            .iter()
            .map(|(k, e)| (k.clone(), e.shape.clone()))
            .collect();
        v.sort();
        v
    }

    /// The values of tensor `name`, checked to have shape `expected`.
    pub fn values(&self, name: &str, expected: &[usize]) -> Result<&[f32], ModelError> {
        let entry = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
                available: self.tensors.len(),
            })?;
        if entry.shape != expected {
            return Err(ModelError::Shape {
                path: self.path.clone(),
                name: name.to_string(),
                found: entry.shape.clone(),
                expected: format!("{expected:?}"),
            });
        }
        entry.values.as_deref().ok_or_else(|| ModelError::Format {
            path: self.path.clone(),
            message: format!("tensor `{name}` is not floating-point"),
        })
    }

    /// Tensor `name` on `device`, checked to have shape `expected`.
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        expected: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>, ModelError> {
        let values = self.values(name, &expected)?;
        Ok(Tensor::from_data(
            TensorData::new(values.to_vec(), expected),
            device,
        ))
    }
}
