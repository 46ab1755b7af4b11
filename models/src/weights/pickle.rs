//! PyTorch pickles through burn-store's reader (legacy pickle format of 2019-era files and the
//! zip format of torch ≥ 1.6). Tensors are kept in their stored dtype and widened to f32 when
//! a network asks for them.

use std::path::Path;

use burn::tensor::{DType, TensorData};

use super::Dtype;
use crate::error::ModelError;

/// One tensor of a pickle: name, dtype, shape, data.
pub(super) type PickleEntry = (String, Dtype, Vec<usize>, TensorData);

/// Every tensor of the file.
pub(super) fn read(path: &Path) -> Result<Vec<PickleEntry>, ModelError> {
    if let Err(source) = std::fs::metadata(path) {
        return Err(ModelError::Io {
            path: path.to_path_buf(),
            source,
        });
    }
    let format = |message: String| ModelError::Format {
        path: path.to_path_buf(),
        message,
    };
    let reader = burn_store::pytorch::PytorchReader::new(path)
        .map_err(|e| format(format!("not a readable PyTorch file: {e}")))?;
    let mut out = Vec::new();
    for (name, snapshot) in reader.into_tensors() {
        let shape = snapshot.shape.to_vec();
        let dtype = match snapshot.dtype {
            DType::F32 => Dtype::F32,
            DType::F16 => Dtype::F16,
            DType::BF16 => Dtype::Bf16,
            DType::F64 => Dtype::F64,
            _ => Dtype::Other,
        };
        let data = snapshot
            .to_data()
            .map_err(|e| format(format!("tensor `{name}`: {e}")))?;
        out.push((name, dtype, shape, data));
    }
    Ok(out)
}

/// The values of a floating-point tensor as f32.
pub(super) fn to_f32(data: &TensorData) -> Result<Vec<f32>, String> {
    let data = if data.dtype == DType::F32 {
        data.clone()
    } else {
        data.clone().convert::<f32>()
    };
    data.into_vec::<f32>().map_err(|e| format!("{e:?}"))
}
