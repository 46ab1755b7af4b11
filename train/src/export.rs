//! Writing a trained IP-Adapter as the one safetensors file the references load: `image_proj.*`
//! and `ip_adapter.{i}.to_{k,v}_ip.weight` in diffusers' attention-processor numbering, plus
//! FaceID's LoRA as `ip_adapter.{i}.to_{q,k,v,out}_lora.{down,up}.weight` — the keys of
//! [`ParamNames::ip_adapter`], `Linear` weights transposed back to torch's `[out, in]`. The same
//! file is what `IpAdapter::load` (and so `idforge generate --adapter`) and diffusers'
//! `load_ip_adapter` read.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use idforge_diffusion::UNet;
use idforge_diffusion::adapters::ip_adapter::IpAdapter;

use crate::error::TrainError;
use crate::names::ParamNames;

/// One f32 tensor to write: name, shape, row-major values.
pub type F32Tensor = (String, Vec<usize>, Vec<f32>);

/// Every parameter of `module` by id, as f32 values in burn's layout.
pub fn param_values<B: Backend, M: Module<B>>(module: &M) -> HashMap<ParamId, Vec<f32>> {
    struct Values(HashMap<ParamId, Vec<f32>>);
    impl<B: Backend> ModuleVisitor<B> for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let v = param
                .val()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap_or_default();
            self.0.insert(param.id, v);
        }
    }
    let mut v = Values(HashMap::new());
    module.visit(&mut v);
    v.0
}

/// The adapter's tensors under their checkpoint keys in torch's layout.
pub fn adapter_tensors<B: Backend>(
    adapter: &IpAdapter<B>,
    unet: &UNet<B>,
) -> Result<Vec<F32Tensor>, TrainError> {
    let names = ParamNames::ip_adapter(adapter, unet)?;
    let mut values = param_values(adapter);
    let mut out = Vec::with_capacity(names.len());
    for t in names.iter() {
        let v = values.remove(&t.id).ok_or_else(|| {
            TrainError::Setting(format!("no value for the adapter tensor `{}`", t.key))
        })?;
        if t.transposed {
            let (inp, outd) = (t.shape[0], t.shape[1]);
            let mut w = vec![0f32; v.len()];
            for i in 0..inp {
                for o in 0..outd {
                    w[o * inp + i] = v[i * outd + o];
                }
            }
            out.push((t.key.clone(), vec![outd, inp], w));
        } else {
            out.push((t.key.clone(), t.shape.clone(), v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Writes `adapter` for `unet` to `path` (one safetensors file, f32), atomically.
pub fn export_ip_adapter<B: Backend>(
    adapter: &IpAdapter<B>,
    unet: &UNet<B>,
    path: &Path,
) -> Result<(), TrainError> {
    let tensors = adapter_tensors(adapter, unet)?;
    write_safetensors(path, &tensors, Some(("format", "pt")))
}

/// Writes f32 tensors as one safetensors file: to a temporary name beside `path`, synced, then
/// renamed over it, so that a reader never sees half a file.
pub fn write_safetensors(
    path: &Path,
    tensors: &[F32Tensor],
    metadata: Option<(&str, &str)>,
) -> Result<(), TrainError> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), b) in tensors.iter().zip(&bytes) {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
            .map_err(|e| TrainError::Setting(format!("tensor `{name}`: {e}")))?;
        views.push((name.clone(), view));
    }
    let metadata = metadata.map(|(k, v)| HashMap::from([(k.to_string(), v.to_string())]));
    let data = safetensors::serialize(views, metadata)
        .map_err(|e| TrainError::Setting(format!("serialising {}: {e}", path.display())))?;
    write_atomic(path, &data)
}

/// Writes `data` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), TrainError> {
    use std::io::Write;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(d) = dir {
        std::fs::create_dir_all(d).map_err(|e| TrainError::io(d, e))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    f.write_all(data).map_err(|e| TrainError::io(&tmp, e))?;
    f.sync_all().map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}
