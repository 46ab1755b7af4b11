//! TF.js layers weight files: `*-weights_manifest.json` plus the binary shards it lists, as the
//! face-api npm package ships them.
//!
//! Follows `decodeWeights` of `@tensorflow/tfjs-core` (`src/io/io_utils.ts`): each manifest group
//! is the concatenation of its `paths`; tensors are read from it in manifest order; a quantized
//! tensor is `q · scale + min` computed in double precision, then stored as float32, or rounded
//! when the tensor is int32; `float16` quantization is IEEE half. Layout helpers map TF layouts
//! to burn's: conv `[kh, kw, in, out]` → `[out, in, kh, kw]`, depthwise `[kh, kw, in, m]` →
//! grouped conv `[in·m, 1, kh, kw]`, dense `[in, out]` unchanged (burn's `Linear` is `[in, out]`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Deserialize;

use crate::error::ModelError;

#[derive(Debug, Deserialize)]
struct Group {
    paths: Vec<String>,
    weights: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    name: String,
    shape: Vec<usize>,
    dtype: String,
    #[serde(default)]
    quantization: Option<Quantization>,
}

#[derive(Debug, Deserialize)]
struct Quantization {
    dtype: String,
    #[serde(default)]
    scale: Option<f64>,
    #[serde(default)]
    min: Option<f64>,
}

/// Values of one tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// float32 tensors (dequantized if stored quantized).
    F32(Vec<f32>),
    /// int32 tensors.
    I32(Vec<i32>),
}

/// One named tensor of the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightTensor {
    /// Name as in the manifest (`conv0/filters`).
    pub name: String,
    /// TF shape.
    pub shape: Vec<usize>,
    /// The values, row-major in TF layout.
    pub values: Values,
}

/// All tensors of a TF.js weight manifest, in manifest order.
#[derive(Debug, Clone)]
pub struct TfjsWeights {
    manifest: PathBuf,
    tensors: Vec<WeightTensor>,
    index: HashMap<String, usize>,
}

fn format_err(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl TfjsWeights {
    /// Reads a manifest and the weight files it names (relative to the manifest's folder).
    pub fn load(manifest: &Path) -> Result<Self, ModelError> {
        let io = |path: &Path, e| ModelError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let text = std::fs::read_to_string(manifest).map_err(|e| io(manifest, e))?;
        let groups: Vec<Group> = serde_json::from_str(&text)
            .map_err(|e| format_err(manifest, format!("not a TF.js weights manifest: {e}")))?;
        let dir = manifest.parent().unwrap_or(Path::new(""));
        let mut tensors = Vec::new();
        for group in &groups {
            let mut buf = Vec::new();
            for p in &group.paths {
                let path = dir.join(p);
                buf.extend_from_slice(&std::fs::read(&path).map_err(|e| io(&path, e))?);
            }
            let mut offset = 0;
            for entry in &group.weights {
                let (values, used) = decode(entry, &buf[offset.min(buf.len())..])
                    .map_err(|m| format_err(manifest, format!("tensor `{}`: {m}", entry.name)))?;
                offset += used;
                tensors.push(WeightTensor {
                    name: entry.name.clone(),
                    shape: entry.shape.clone(),
                    values,
                });
            }
            if offset != buf.len() {
                return Err(format_err(
                    manifest,
                    format!(
                        "the weight files of group {:?} hold {} bytes, the manifest describes {offset}",
                        group.paths,
                        buf.len()
                    ),
                ));
            }
        }
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(TfjsWeights {
            manifest: manifest.to_path_buf(),
            tensors,
            index,
        })
    }

    /// The manifest these weights came from.
    pub fn manifest(&self) -> &Path {
        &self.manifest
    }

    /// Every tensor, in manifest order.
    pub fn tensors(&self) -> &[WeightTensor] {
        &self.tensors
    }

    /// A tensor by name, or an error naming it and the manifest.
    pub fn get(&self, name: &str) -> Result<&WeightTensor, ModelError> {
        self.index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.manifest.clone(),
                name: name.to_string(),
                available: self.tensors.len(),
            })
    }

    fn f32_with_rank(
        &self,
        name: &str,
        rank: usize,
        what: &str,
    ) -> Result<(&[f32], &[usize]), ModelError> {
        let t = self.get(name)?;
        let shape_err = || ModelError::Shape {
            path: self.manifest.clone(),
            name: name.to_string(),
            found: t.shape.clone(),
            expected: what.to_string(),
        };
        match &t.values {
            Values::F32(v) if t.shape.len() == rank => Ok((v, &t.shape)),
            _ => Err(shape_err()),
        }
    }

    /// A float tensor of any rank in its TF layout.
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Result<Tensor<B, D>, ModelError> {
        let (v, shape) = self.f32_with_rank(name, D, &format!("a float32 tensor of rank {D}"))?;
        Ok(Tensor::from_data(
            TensorData::new(v.to_vec(), shape.to_vec()),
            device,
        ))
    }

    /// An int32 tensor in its TF layout.
    pub fn int_tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Result<Tensor<B, D, Int>, ModelError> {
        let t = self.get(name)?;
        match &t.values {
            Values::I32(v) if t.shape.len() == D => Ok(Tensor::from_data(
                TensorData::new(v.clone(), t.shape.clone()),
                device,
            )),
            _ => Err(ModelError::Shape {
                path: self.manifest.clone(),
                name: name.to_string(),
                found: t.shape.clone(),
                expected: format!("an int32 tensor of rank {D}"),
            }),
        }
    }

    /// A TF conv filter `[kh, kw, in, out]` as a burn `Conv2d` weight `[out, in, kh, kw]`.
    pub fn conv2d<B: Backend>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Result<Tensor<B, 4>, ModelError> {
        self.f32_with_rank(name, 4, "a conv filter [kh, kw, in, out]")?;
        let t = self.tensor::<B, 4>(name, device)?.permute([3, 2, 0, 1]);
        Ok(Tensor::from_data(t.into_data(), device))
    }

    /// A TF depthwise filter `[kh, kw, in, m]` as a grouped `Conv2d` weight `[in·m, 1, kh, kw]`
    /// (groups = in; output channel `i·m + j` as in TF).
    pub fn depthwise<B: Backend>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Result<Tensor<B, 4>, ModelError> {
        let (_, shape) =
            self.f32_with_rank(name, 4, "a depthwise filter [kh, kw, in, multiplier]")?;
        let [kh, kw, c, m] = [shape[0], shape[1], shape[2], shape[3]];
        let t: Tensor<B, 4> = self.tensor(name, device)?;
        Ok(t.reshape([kh, kw, c * m])
            .permute([2, 0, 1])
            .reshape([c * m, 1, kh, kw]))
    }

    /// A TF dense kernel `[in, out]`, which is burn's `Linear` layout as it is.
    pub fn dense<B: Backend>(
        &self,
        name: &str,
        device: &B::Device,
    ) -> Result<Tensor<B, 2>, ModelError> {
        self.f32_with_rank(name, 2, "a dense kernel [in, out]")?;
        self.tensor(name, device)
    }
}

/// Decodes one tensor from the start of `bytes`; returns the values and the bytes used.
fn decode(entry: &Entry, bytes: &[u8]) -> Result<(Values, usize), String> {
    let n: usize = entry.shape.iter().product();
    let (width, stored) = match &entry.quantization {
        Some(q) => match q.dtype.as_str() {
            "uint8" => (1, "uint8"),
            "uint16" => (2, "uint16"),
            "float16" => (2, "float16"),
            other => return Err(format!("unsupported quantization dtype `{other}`")),
        },
        None => match entry.dtype.as_str() {
            "float32" | "int32" => (4, "raw"),
            other => return Err(format!("unsupported dtype `{other}`")),
        },
    };
    let len = n * width;
    if bytes.len() < len {
        return Err(format!(
            "needs {len} bytes, only {} left in the weight files",
            bytes.len()
        ));
    }
    let data = &bytes[..len];
    let as_int = match entry.dtype.as_str() {
        "int32" => true,
        "float32" => false,
        other => return Err(format!("unsupported dtype `{other}`")),
    };
    let values = match stored {
        "raw" if as_int => Values::I32(
            data.chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        "raw" => Values::F32(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        "float16" => {
            let v = data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            if as_int {
                Values::I32(v.map(|x| x.round() as i32).collect())
            } else {
                Values::F32(v.collect())
            }
        }
        _ => {
            let q = entry.quantization.as_ref().expect("quantized");
            let (Some(scale), Some(min)) = (q.scale, q.min) else {
                return Err("quantization without scale and min".into());
            };
            let raw: Vec<f64> = if width == 1 {
                data.iter().map(|&b| f64::from(b)).collect()
            } else {
                data.chunks_exact(2)
                    .map(|b| f64::from(u16::from_le_bytes([b[0], b[1]])))
                    .collect()
            };
            // JavaScript numbers are doubles: q·scale + min is computed in f64, then stored.
            if as_int {
                Values::I32(
                    raw.iter()
                        .map(|&q| js_round(q * scale + min) as i32)
                        .collect(),
                )
            } else {
                Values::F32(raw.iter().map(|&q| (q * scale + min) as f32).collect())
            }
        }
    };
    Ok((values, len))
}

/// JavaScript's `Math.round`: halves round up (towards +∞), unlike Rust's `round`.
fn js_round(x: f64) -> f64 {
    (x + 0.5).floor()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn write_manifest(dir: &Path, manifest: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        let path = dir.join("m-weights_manifest.json");
        std::fs::write(&path, manifest).unwrap();
        path
    }

    #[test]
    fn decodes_every_storage_kind_across_split_shards() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0u8, 10, 255]; // uint8 quantized, 3 values
        bytes.extend_from_slice(&1000u16.to_le_bytes()); // uint16 quantized
        bytes.extend_from_slice(&half::f16::from_f32(1.5).to_le_bytes()); // float16
        bytes.extend_from_slice(&(-2.25f32).to_le_bytes()); // float32
        bytes.extend_from_slice(&(-7i32).to_le_bytes()); // int32
        bytes.extend_from_slice(&[1, 2]); // uint8 quantized into int32: rounded
        let (a, b) = bytes.split_at(4);
        let manifest = r#"[{"paths": ["s1.bin", "s2.bin"], "weights": [
            {"name": "q8", "shape": [3], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 0.1, "min": -1.0}},
            {"name": "q16", "shape": [1], "dtype": "float32", "quantization": {"dtype": "uint16", "scale": 0.001, "min": 0.0}},
            {"name": "h", "shape": [1], "dtype": "float32", "quantization": {"dtype": "float16"}},
            {"name": "f", "shape": [1, 1], "dtype": "float32"},
            {"name": "i", "shape": [1], "dtype": "int32"},
            {"name": "qi", "shape": [2], "dtype": "int32", "quantization": {"dtype": "uint8", "scale": 0.5, "min": 0.0}}
        ]}]"#;
        let path = write_manifest(
            dir.path(),
            manifest,
            &[("s1.bin", a.to_vec()), ("s2.bin", b.to_vec())],
        );
        let w = TfjsWeights::load(&path).unwrap();
        let f = |n: &str| match &w.get(n).unwrap().values {
            Values::F32(v) => v.clone(),
            Values::I32(_) => panic!("{n} is int"),
        };
        assert_eq!(
            f("q8"),
            vec![
                -1.0,
                (10.0f64 * 0.1 - 1.0) as f32,
                (255.0f64 * 0.1 - 1.0) as f32
            ]
        );
        assert_eq!(f("q16"), vec![1.0]);
        assert_eq!(f("h"), vec![1.5]);
        assert_eq!(f("f"), vec![-2.25]);
        assert_eq!(w.get("i").unwrap().values, Values::I32(vec![-7]));
        // Math.round(0.5) = 1, Math.round(1.0) = 1.
        assert_eq!(w.get("qi").unwrap().values, Values::I32(vec![1, 1]));
        assert_eq!(
            w.tensors()
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>(),
            ["q8", "q16", "h", "f", "i", "qi"]
        );
    }

    #[test]
    fn size_mismatches_and_missing_tensors_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = r#"[{"paths": ["s.bin"], "weights": [{"name": "conv0/filters", "shape": [2, 2], "dtype": "float32"}]}]"#;
        let path = write_manifest(dir.path(), manifest, &[("s.bin", vec![0; 12])]);
        let e = TfjsWeights::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("tensor `conv0/filters`: needs 16 bytes, only 12 left"),
            "{e}"
        );
        let path = write_manifest(dir.path(), manifest, &[("s.bin", vec![0; 20])]);
        let e = TfjsWeights::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("hold 20 bytes, the manifest describes 16"),
            "{e}"
        );
        let path = write_manifest(dir.path(), manifest, &[("s.bin", vec![0; 16])]);
        let w = TfjsWeights::load(&path).unwrap();
        let e = w.get("conv1/filters").unwrap_err().to_string();
        assert!(e.contains("no tensor `conv1/filters`"), "{e}");
        let e = w
            .conv2d::<Flex>("conv0/filters", &Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("has shape [2, 2], expected a conv filter"),
            "{e}"
        );
    }

    #[test]
    fn layouts_map_to_burn() {
        let dir = tempfile::tempdir().unwrap();
        // conv [kh=1, kw=2, in=2, out=3] and depthwise [kh=1, kw=2, in=2, m=2], values 0..n.
        let conv: Vec<u8> = (0..12).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let dw: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let manifest = r#"[{"paths": ["c.bin", "d.bin"], "weights": [
            {"name": "c", "shape": [1, 2, 2, 3], "dtype": "float32"},
            {"name": "d", "shape": [1, 2, 2, 2], "dtype": "float32"}]}]"#;
        let path = write_manifest(dir.path(), manifest, &[("c.bin", conv), ("d.bin", dw)]);
        let w = TfjsWeights::load(&path).unwrap();
        let device = Default::default();
        let c = w.conv2d::<Flex>("c", &device).unwrap();
        assert_eq!(c.dims(), [3, 2, 1, 2]);
        // TF index [kh=0, kw=1, in=1, out=2] = ((0·2 + 1)·2 + 1)·3 + 2 = 11 → burn [2, 1, 0, 1].
        let v: Vec<f32> = c
            .clone()
            .slice([2..3, 1..2, 0..1, 1..2])
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(v, vec![11.0]);
        let d = w.depthwise::<Flex>("d", &device).unwrap();
        assert_eq!(d.dims(), [4, 1, 1, 2]);
        // TF [kh=0, kw=1, in=1, m=0] = (1·2 + 1)·2 + 0 = 6 → output channel 1·2 + 0 = 2, kw = 1.
        let v: Vec<f32> = d
            .slice([2..3, 0..1, 0..1, 1..2])
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(v, vec![6.0]);
    }

    #[test]
    fn loads_the_face_api_package_weights() {
        let dir = idforge_core::cache::face_api_dir_if_fetched()
            .expect("face-api assets missing: run tools/fetch-assets (make test does)")
            .join("model");
        for (model, count) in [
            ("tiny_face_detector_model", 19),
            ("ssd_mobilenetv1_model", 151),
            ("face_landmark_68_model", 49),
            ("face_recognition_model", 117),
            ("face_expression_model", 49),
            ("age_gender_model", 51),
        ] {
            let w = TfjsWeights::load(&dir.join(format!("{model}-weights_manifest.json"))).unwrap();
            assert_eq!(w.tensors().len(), count, "{model}");
            for t in w.tensors() {
                let n: usize = t.shape.iter().product();
                let len = match &t.values {
                    Values::F32(v) => {
                        assert!(v.iter().all(|x| x.is_finite()), "{model}/{}", t.name);
                        v.len()
                    }
                    Values::I32(v) => v.len(),
                };
                assert_eq!(len, n, "{model}/{}", t.name);
            }
        }
        let tiny =
            TfjsWeights::load(&dir.join("tiny_face_detector_model-weights_manifest.json")).unwrap();
        let conv0 = tiny
            .conv2d::<Flex>("conv0/filters", &Default::default())
            .unwrap();
        assert_eq!(conv0.dims(), [16, 3, 3, 3]);
    }
}
