//! The names of the tensors a trainer changes: each parameter of an adapter module, by its burn
//! module path and by its key in the checkpoint layout the references load
//! (`image_proj.proj.weight`, `ip_adapter.3.to_k_ip.weight`,
//! `ip_adapter.0.to_q_lora.down.weight`). Parameter groups pick tensors by these keys, the
//! optimizer keeps its state under them (so that a resumed run finds it again although burn's
//! parameter ids are new), and the parity test and the export compare and write them.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use idforge_diffusion::UNet;
use idforge_diffusion::adapters::ip_adapter::IpAdapter;

use crate::error::TrainError;

/// One parameter of a trained module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedTensor {
    /// burn's id of the parameter (stable across optimizer steps).
    pub id: ParamId,
    /// The burn module path (`layers.0.to_k_ip.weight`; enum variants and `Vec` indices are
    /// path segments).
    pub path: String,
    /// The key in the reference checkpoint.
    pub key: String,
    /// Whether the checkpoint stores the transpose (`Linear` weights: burn `[in, out]`, torch
    /// `[out, in]`).
    pub transposed: bool,
    /// burn's shape.
    pub shape: Vec<usize>,
    /// Whether it requires a gradient (trainable) in the module it was read from.
    pub trainable: bool,
}

/// Every parameter of a module with its checkpoint key.
#[derive(Debug, Clone, Default)]
pub struct ParamNames {
    tensors: Vec<NamedTensor>,
    by_id: HashMap<ParamId, usize>,
}

impl ParamNames {
    /// The parameters of `module` in visiting order, each named by `key(path)`.
    pub fn of_module<B: Backend, M: Module<B>>(
        module: &M,
        key: impl Fn(&[String]) -> Result<String, TrainError>,
    ) -> Result<Self, TrainError> {
        let mut visitor = PathVisitor {
            stack: Vec::new(),
            found: Vec::new(),
        };
        module.visit(&mut visitor);
        let mut tensors = Vec::new();
        for (segments, id, shape, trainable) in visitor.found {
            let key = key(&segments)?;
            let transposed = shape.len() == 2 && key.ends_with(".weight");
            tensors.push(NamedTensor {
                id,
                path: segments.join("."),
                key,
                transposed,
                shape,
                trainable,
            });
        }
        let by_id = tensors.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
        Ok(Self { tensors, by_id })
    }

    /// An IP-Adapter's parameters under the keys of the original `{image_proj, ip_adapter}`
    /// layout, numbered for `unet` (the layout `IpAdapter::load` reads).
    pub fn ip_adapter<B: Backend>(
        adapter: &IpAdapter<B>,
        unet: &UNet<B>,
    ) -> Result<Self, TrainError> {
        let layers = unet.attention_layers();
        let ip_index = adapter.layer_indices().to_vec();
        let lora_names: Vec<String> = adapter
            .lora
            .as_ref()
            .map(|l| l.names().to_vec())
            .unwrap_or_default();
        Self::of_module(adapter, |path| {
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            let unknown = || {
                TrainError::Setting(format!(
                    "no checkpoint key for the adapter tensor `{}`",
                    p.join(".")
                ))
            };
            match p.as_slice() {
                ["layers", j, kv @ ("to_k_ip" | "to_v_ip"), "weight"] => {
                    let j: usize = j.parse().map_err(|_| unknown())?;
                    let i = ip_index.get(j).ok_or_else(unknown)?;
                    Ok(format!("ip_adapter.{i}.{kv}.weight"))
                }
                ["lora", "layers", j, which @ ("down" | "up"), "weight"] => {
                    let j: usize = j.parse().map_err(|_| unknown())?;
                    let name = lora_names.get(j).ok_or_else(unknown)?;
                    let (short, layer) = [
                        ("q", ".to_q"),
                        ("k", ".to_k"),
                        ("v", ".to_v"),
                        ("out", ".to_out.0"),
                    ]
                    .into_iter()
                    .find_map(|(s, suffix)| name.strip_suffix(suffix).map(|l| (s, l)))
                    .ok_or_else(unknown)?;
                    let i = layers
                        .iter()
                        .find(|l| l.name == layer)
                        .map(|l| l.index)
                        .ok_or_else(unknown)?;
                    Ok(format!("ip_adapter.{i}.to_{short}_lora.{which}.weight"))
                }
                ["projection", variant, rest @ ..] => projection_key(variant, rest)
                    .map(|k| format!("image_proj.{k}"))
                    .ok_or_else(unknown),
                _ => Err(unknown()),
            }
        })
    }

    /// These parameters then `other`'s: the names of a module made of parts named apart (the
    /// split-prompt adapter's PhotoMaker parts and its own projections).
    pub fn chain(mut self, other: ParamNames) -> Self {
        for t in other.tensors {
            self.by_id.insert(t.id, self.tensors.len());
            self.tensors.push(t);
        }
        self
    }

    /// Every parameter, in visiting order.
    pub fn iter(&self) -> impl Iterator<Item = &NamedTensor> {
        self.tensors.iter()
    }

    /// The parameter with this id.
    pub fn get(&self, id: ParamId) -> Option<&NamedTensor> {
        self.by_id.get(&id).map(|&i| &self.tensors[i])
    }

    /// How many parameters.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the module has no parameter.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// The key under `image_proj.` of a projection tensor (module path below the enum variant).
fn projection_key(variant: &str, rest: &[&str]) -> Option<String> {
    let mlp = |rest: &[&str]| -> Option<String> {
        match rest {
            ["mlp", "fc1", p] => Some(format!("proj.0.{p}")),
            ["mlp", "fc2", p] => Some(format!("proj.2.{p}")),
            ["norm", p] => Some(format!("norm.{p}")),
            _ => None,
        }
    };
    match (variant, rest) {
        ("Plain", [m @ ("proj" | "norm"), p]) => Some(format!("{m}.{p}")),
        ("FullFace", ["norm", p]) => Some(format!("proj.3.{p}")),
        ("FullFace", r) | ("FaceId", r) => mlp(r),
        ("Plus", ["latents"]) => Some("latents".into()),
        ("Plus", ["resampler", r @ ..]) => resampler_key(r),
        ("FaceIdPlus", ["face_id", r @ ..]) => mlp(r),
        ("FaceIdPlus", ["resampler", r @ ..]) => {
            resampler_key(r).map(|k| format!("perceiver_resampler.{k}"))
        }
        _ => None,
    }
}

/// The original `Resampler` key of a resampler tensor: `attention.{i}` is `layers.{i}.0`, the
/// feed-forward `layers.{i}.1.{0,1,3}`.
fn resampler_key(rest: &[&str]) -> Option<String> {
    match rest {
        [m @ ("proj_in" | "proj_out" | "norm_out"), p] => Some(format!("{m}.{p}")),
        ["attention", i, r @ ..] => Some(format!("layers.{i}.0.{}", r.join("."))),
        ["feed_forward", i, m, p] => {
            let n = match *m {
                "norm" => "0",
                "fc1" => "1",
                "fc2" => "3",
                _ => return None,
            };
            Some(format!("layers.{i}.1.{n}.{p}"))
        }
        _ => None,
    }
}

struct PathVisitor {
    stack: Vec<String>,
    found: Vec<(Vec<String>, ParamId, Vec<usize>, bool)>,
}

impl<B: Backend> ModuleVisitor<B> for PathVisitor {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        self.found.push((
            self.stack.clone(),
            param.id,
            value.dims().to_vec(),
            value.is_require_grad(),
        ));
    }
}
