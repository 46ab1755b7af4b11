//! The safetensors header (names, dtypes, shapes, byte ranges) and on-demand reads of one
//! tensor's bytes, so that opening a multi-gigabyte checkpoint reads kilobytes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;

use serde_json::Value;

use super::Dtype;
use crate::error::ModelError;

/// One header entry: name, dtype, shape, absolute start and length in bytes.
pub(super) type HeaderEntry = (String, Dtype, Vec<usize>, u64, u64);

/// Opens `path` and reads its header; every byte range is checked to lie in the file and to
/// hold its shape.
pub(super) fn read_header(path: &Path) -> Result<(File, Vec<HeaderEntry>), ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let format = |message: String| ModelError::Format {
        path: path.to_path_buf(),
        message,
    };
    let mut file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| format("too short for a safetensors header".into()))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > 100 << 20 || 8 + header_len > file_len {
        return Err(format(format!(
            "header length {header_len} does not fit the file ({file_len} bytes); \
             not a safetensors file?"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(io)?;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&header)
        .map_err(|e| format(format!("header is not a JSON object: {e}")))?;
    let data_start = 8 + header_len;
    let mut out = Vec::with_capacity(header.len());
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = match info.get("dtype").and_then(Value::as_str) {
            Some("F32") => Dtype::F32,
            Some("F16") => Dtype::F16,
            Some("BF16") => Dtype::Bf16,
            Some("F64") => Dtype::F64,
            Some(_) => Dtype::Other,
            None => return Err(format(format!("tensor `{name}` has no dtype"))),
        };
        let shape: Option<Vec<usize>> = info
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect());
        let offsets: Option<Vec<u64>> = info
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_u64).collect());
        let (Some(shape), Some(offsets)) = (shape, offsets) else {
            return Err(format(format!("tensor `{name}` has no shape or offsets")));
        };
        let [begin, end] = offsets[..] else {
            return Err(format(format!("tensor `{name}`: bad data_offsets")));
        };
        let count: usize = shape.iter().product();
        if end < begin
            || data_start + end > file_len
            || (dtype != Dtype::Other && (end - begin) as usize != count * dtype.size())
        {
            return Err(format(format!(
                "tensor `{name}`: bytes {begin}..{end} do not hold {shape:?} or lie outside the file"
            )));
        }
        out.push((name, dtype, shape, data_start + begin, end - begin));
    }
    Ok((file, out))
}

/// `len` bytes from `start`.
pub(super) fn read_bytes(file: &Mutex<File>, start: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; len as usize];
    let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut bytes)?;
    Ok(bytes)
}
