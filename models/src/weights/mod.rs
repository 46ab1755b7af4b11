//! The one weight store every burn network of idforge loads through (face-api's TF.js
//! manifests aside, which have their own quantised format in [`crate::tfjs`]).
//!
//! A [`WeightStore`] is the named tensors of the files users bring:
//! - `.safetensors`: one file or a sharded checkpoint (`*.safetensors.index.json`), read lazily:
//!   opening reads only the headers, so names and shapes cost nothing and a tensor's bytes are
//!   read when it is asked for;
//! - PyTorch pickles (`.bin`, `.pth`, `.pt`, `.ckpt`; legacy and zip formats) through burn-store,
//!   nested state dicts (`{"image_proj": {...}, "ip_adapter": {...}}`) flattened to dotted names;
//! - a diffusers component folder (`unet/`, `vae/`, `text_encoder/`): its full-precision file,
//!   its `fp16` variant, or its sharded index.
//!
//! f32, f16, bf16 and f64 are read as f32. Names can be looked up under a prefix
//! ([`WeightStore::with_prefix`], for `image_proj.` / `id_encoder.` / `unet.` parts of a bigger
//! file) and through renames ([`WeightStore::with_rename`], for checkpoints whose modules were
//! renamed upstream). A missing tensor names itself and the file; a misshapen one gives both
//! shapes; nothing is ever silently zero.

mod files;
mod pickle;
mod safetensors;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

pub use files::{component_files, shard_files};

use crate::error::ModelError;

/// Element types that hold weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dtype {
    F32,
    F16,
    Bf16,
    F64,
    /// Integer or boolean buffers (`position_ids`, `num_batches_tracked`): listed, never read
    /// as a weight.
    Other,
}

impl Dtype {
    fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::F64 => 8,
            Dtype::Other => 1,
        }
    }

    /// Little-endian bytes of this type as f32 values.
    fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::Bf16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|b| {
                    f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                })
                .collect(),
            Dtype::Other => Vec::new(),
        }
    }
}

/// Where a tensor's values are.
#[derive(Debug)]
enum Location {
    /// Bytes `start..start + len` of a safetensors file.
    Bytes { start: u64, len: u64 },
    /// Already in memory (read from a pickle).
    Data(TensorData),
}

#[derive(Debug)]
struct Entry {
    /// Index into the store's sources.
    source: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    location: Location,
}

/// One file of the store.
#[derive(Debug)]
struct Source {
    path: PathBuf,
    /// Open for lazy reads (safetensors); `None` for pickles, read whole at open.
    file: Option<Mutex<std::fs::File>>,
}

/// The named tensors of one checkpoint, read on demand. See the module docs.
#[derive(Debug)]
pub struct WeightStore {
    /// The file or folder the user named, for messages.
    origin: PathBuf,
    sources: Vec<Source>,
    entries: HashMap<String, Entry>,
    /// Prepended to every name looked up.
    prefix: String,
    /// `(from, to)`: a looked-up name starting with `from` is looked for as `to` + rest.
    renames: Vec<(String, String)>,
}

impl WeightStore {
    /// Opens a weight file or a diffusers component folder, by what it is: a folder, a
    /// `.safetensors` file, a `*.safetensors.index.json`, or (any other extension) a PyTorch
    /// pickle.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let mut store = if path.is_dir() {
            Self::safetensors(&files::component_files(path)?)?
        } else if name.ends_with(".safetensors.index.json") || name.ends_with(".fp16.json") {
            Self::safetensors(&files::shard_files(path)?)?
        } else if name.ends_with(".safetensors") {
            Self::safetensors(&[path.to_path_buf()])?
        } else {
            Self::pytorch(path)?
        };
        store.origin = path.to_path_buf();
        Ok(store)
    }

    /// Opens the `.safetensors` files of one checkpoint (several for a sharded one) and reads
    /// their headers; a name in two files is an error.
    pub fn safetensors(paths: &[PathBuf]) -> Result<Self, ModelError> {
        let mut store = Self::empty(paths.first().cloned().unwrap_or_default());
        for path in paths {
            let (file, tensors) = safetensors::read_header(path)?;
            let source = store.sources.len();
            store.sources.push(Source {
                path: path.clone(),
                file: Some(Mutex::new(file)),
            });
            for (name, dtype, shape, start, len) in tensors {
                store.insert(
                    name,
                    Entry {
                        source,
                        dtype,
                        shape,
                        location: Location::Bytes { start, len },
                    },
                )?;
            }
        }
        Ok(store)
    }

    /// Reads a PyTorch `torch.save` state dict (`.pth`, `.pt`, `.bin`, `.ckpt`), legacy or zip
    /// format, nested dicts flattened to dotted names.
    pub fn pytorch(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref().to_path_buf();
        let mut store = Self::empty(path.clone());
        store.sources.push(Source {
            path: path.clone(),
            file: None,
        });
        for (name, dtype, shape, data) in pickle::read(&path)? {
            store.insert(
                name,
                Entry {
                    source: 0,
                    dtype,
                    shape,
                    location: Location::Data(data),
                },
            )?;
        }
        Ok(store)
    }

    fn empty(origin: PathBuf) -> Self {
        Self {
            origin,
            sources: Vec::new(),
            entries: HashMap::new(),
            prefix: String::new(),
            renames: Vec::new(),
        }
    }

    fn insert(&mut self, name: String, entry: Entry) -> Result<(), ModelError> {
        let path = self.sources[entry.source].path.clone();
        if self.entries.insert(name.clone(), entry).is_some() {
            return Err(ModelError::Format {
                path,
                message: format!("tensor `{name}` is in two files of one checkpoint"),
            });
        }
        Ok(())
    }

    /// Looks every name up under `prefix` (`"image_proj."`, `"unet."`,
    /// `"cond_stage_model.transformer."`), for a network inside a bigger checkpoint. Prefixes
    /// stack: a second call appends to the first.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix.push_str(prefix);
        self
    }

    /// Looks a name starting with `from` up as `to` followed by the rest (after the prefix),
    /// for checkpoints whose modules were renamed (`query.` → `to_q.`).
    pub fn with_rename(mut self, from: &str, to: &str) -> Self {
        self.renames.push((from.to_string(), to.to_string()));
        self
    }

    /// The file or folder the tensors come from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The name as stored for a looked-up name.
    fn full_name(&self, name: &str) -> String {
        for (from, to) in &self.renames {
            if let Some(rest) = name.strip_prefix(from.as_str()) {
                return format!("{}{to}{rest}", self.prefix);
            }
        }
        format!("{}{name}", self.prefix)
    }

    /// The names under the prefix, without it, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries
            .keys()
            .filter_map(|k| k.strip_prefix(self.prefix.as_str()))
    }

    /// How many tensors are under the prefix.
    pub fn len(&self) -> usize {
        self.names().count()
    }

    /// Whether no tensor is under the prefix.
    pub fn is_empty(&self) -> bool {
        self.names().next().is_none()
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(&self.full_name(name))
    }

    /// The stored shape of a tensor, from the header alone (`None` when absent).
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries
            .get(&self.full_name(name))
            .map(|e| e.shape.as_slice())
    }

    /// Names and stored shapes of every tensor under the prefix, sorted by name (for key-list
    /// comparisons against a reference module).
    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v: Vec<_> = self
            .entries
            .iter()
            .filter_map(|(k, e)| {
                k.strip_prefix(self.prefix.as_str())
                    .map(|k| (k.to_string(), e.shape.clone()))
            })
            .collect();
        v.sort();
        v
    }

    fn entry(&self, name: &str) -> Result<(String, &Entry), ModelError> {
        let full = self.full_name(name);
        match self.entries.get(&full) {
            Some(e) => Ok((full, e)),
            None => Err(ModelError::MissingTensor {
                path: self.origin.clone(),
                name: full,
                available: self.entries.len(),
            }),
        }
    }

    /// The shape as stored and the values as f32 of any floating-point tensor.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), ModelError> {
        let (full, entry) = self.entry(name)?;
        Ok((entry.shape.clone(), self.decode(&full, entry)?))
    }

    /// The values of `name` as f32, checked to have shape `expected`.
    pub fn values(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, ModelError> {
        let (full, entry) = self.entry(name)?;
        if entry.shape != expected {
            return Err(ModelError::Shape {
                path: self.sources[entry.source].path.clone(),
                name: full,
                found: entry.shape.clone(),
                expected: format!("{expected:?}"),
            });
        }
        self.decode(&full, entry)
    }

    fn decode(&self, full: &str, entry: &Entry) -> Result<Vec<f32>, ModelError> {
        let source = &self.sources[entry.source];
        if entry.dtype == Dtype::Other {
            return Err(ModelError::Format {
                path: source.path.clone(),
                message: format!("tensor `{full}` is not floating point"),
            });
        }
        match &entry.location {
            Location::Data(data) => pickle::to_f32(data).map_err(|message| ModelError::Format {
                path: source.path.clone(),
                message: format!("tensor `{full}`: {message}"),
            }),
            Location::Bytes { start, len } => {
                let file = source
                    .file
                    .as_ref()
                    .expect("safetensors sources keep their file");
                let bytes =
                    safetensors::read_bytes(file, *start, *len).map_err(|e| ModelError::Io {
                        path: source.path.clone(),
                        source: e,
                    })?;
                Ok(entry.dtype.decode(&bytes))
            }
        }
    }

    /// Tensor `name` on `device`, checked to have exactly `shape`.
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>, ModelError> {
        let values = self.values(name, &shape)?;
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
    ) -> Result<Tensor<B, 2>, ModelError> {
        let (full, entry) = self.entry(name)?;
        if entry.shape != [out, inp] && entry.shape != [out, inp, 1, 1] {
            return Err(ModelError::Shape {
                path: self.sources[entry.source].path.clone(),
                name: full,
                found: entry.shape.clone(),
                expected: format!("{:?} (torch's [out, in])", [out, inp]),
            });
        }
        let values = transpose(&self.decode(&full, entry)?, out, inp);
        Ok(Tensor::from_data(
            TensorData::new(values, [inp, out]),
            device,
        ))
    }
}

/// `[rows, cols]` row-major → `[cols, rows]`: torch's `[out, in]` matrices to burn's `[in, out]`.
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use burn::backend::Flex;
    use std::collections::HashMap as Map;

    fn write_file(dir: &Path, name: &str, tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> PathBuf {
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, _, v)| {
                v.iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect()
            })
            .collect();
        let views: Map<String, ::safetensors::tensor::TensorView<'_>> = tensors
            .iter()
            .zip(&bytes)
            .map(|((n, s, _), b)| {
                (
                    n.to_string(),
                    ::safetensors::tensor::TensorView::new(::safetensors::Dtype::F16, s.clone(), b)
                        .unwrap(),
                )
            })
            .collect();
        let path = dir.join(name);
        ::safetensors::serialize_to_file(views, None, &path).unwrap();
        path
    }

    #[test]
    fn transpose_swaps_axes() {
        assert_eq!(
            transpose(&[1., 2., 3., 4., 5., 6.], 2, 3),
            vec![1., 4., 2., 5., 3., 6.]
        );
    }

    #[test]
    fn safetensors_f16_prefix_rename_and_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(
            dir.path(),
            "a.safetensors",
            &[
                (
                    "image_proj.proj.weight",
                    vec![3, 2],
                    vec![1., 2., 3., 4., 5., 6.],
                ),
                ("image_proj.norm.bias", vec![3], vec![0.5, -1., 2.]),
            ],
        );
        let store = WeightStore::open(&path).unwrap().with_prefix("image_proj.");
        assert_eq!(store.len(), 2);
        assert_eq!(store.shape("proj.weight"), Some(&[3usize, 2][..]));
        assert!(store.contains("norm.bias") && !store.contains("image_proj.norm.bias"));
        let w = store
            .linear_weight::<Flex>("proj.weight", 2, 3, &Default::default())
            .unwrap();
        assert_eq!(
            w.into_data().to_vec::<f32>().unwrap(),
            vec![1., 3., 5., 2., 4., 6.]
        );
        let store = store.with_rename("norm_out.", "norm.");
        assert_eq!(
            store.values("norm_out.bias", &[3]).unwrap(),
            vec![0.5, -1., 2.]
        );
    }

    #[test]
    fn missing_and_misshapen_tensors_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(
            dir.path(),
            "a.safetensors",
            &[("w", vec![2, 2], vec![0.; 4])],
        );
        let store = WeightStore::open(&path).unwrap();
        let e = store.values("v", &[2]).unwrap_err().to_string();
        assert!(e.contains("`v`") && e.contains("a.safetensors"), "{e}");
        let e = store.values("w", &[4]).unwrap_err().to_string();
        assert!(
            e.contains("`w`") && e.contains("[2, 2]") && e.contains("[4]"),
            "{e}"
        );
        let e = store
            .linear_weight::<Flex>("w", 3, 2, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("[2, 2]") && e.contains("[2, 3]"), "{e}");
    }

    #[test]
    fn sharded_index_and_component_folder() {
        let dir = tempfile::tempdir().unwrap();
        write_file(dir.path(), "m-1.safetensors", &[("a", vec![1], vec![1.])]);
        write_file(dir.path(), "m-2.safetensors", &[("b", vec![1], vec![2.])]);
        std::fs::write(
            dir.path()
                .join("diffusion_pytorch_model.safetensors.index.json"),
            r#"{"metadata": {}, "weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}}"#,
        )
        .unwrap();
        let store = WeightStore::open(dir.path()).unwrap();
        assert_eq!(store.values("a", &[1]).unwrap(), vec![1.]);
        assert_eq!(store.values("b", &[1]).unwrap(), vec![2.]);
        assert_eq!(store.origin(), dir.path());
        let empty = tempfile::tempdir().unwrap();
        let e = WeightStore::open(empty.path()).unwrap_err().to_string();
        assert!(e.contains("diffusion_pytorch_model.safetensors"), "{e}");
    }
}
