//! A minimal reader of ONNX model files (`.onnx`, a protobuf `ModelProto`), enough to take the
//! weights and the layer sequence out of an exported network and rebuild it in burn.
//!
//! Hand-written instead of generated: the loader needs a dozen fields of `onnx/onnx.proto3`
//! (`ModelProto`, `GraphProto`, `NodeProto`, `AttributeProto`, `TensorProto`, `ValueInfoProto`),
//! and a few hundred lines of varint / length-delimited parsing are cheaper to audit than a
//! protobuf toolchain. Field numbers follow `onnx.proto3` (ONNX 1.17); unknown fields are skipped,
//! as protobuf requires. Tensors are decoded eagerly: `FLOAT`, `FLOAT16`, `BFLOAT16` and `DOUBLE`
//! become f32, `INT64` and `INT32` stay integers; other types are kept as their type code and
//! refused when asked for. Tensors stored outside the file (`data_location = EXTERNAL`, used for
//! models over 2 GB) are refused with an error naming them: ArcFace-class models are one file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::ModelError;

/// A parsed `.onnx` file.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    path: PathBuf,
    /// `ModelProto.ir_version`.
    pub ir_version: i64,
    /// `(domain, version)` of each imported operator set; the default domain is `""`.
    pub opset_imports: Vec<(String, i64)>,
    /// The exporter, e.g. `pytorch`.
    pub producer_name: String,
    /// The exporter's version, e.g. `2.5.1`.
    pub producer_version: String,
    /// The main graph.
    pub graph: Graph,
    initializer_index: HashMap<String, usize>,
}

/// `GraphProto`: nodes in the file's (topological) order, weights, inputs and outputs.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// The graph's name.
    pub name: String,
    /// The nodes, in file order (ONNX requires a topological order).
    pub nodes: Vec<Node>,
    /// The weights (`initializer`).
    pub initializers: Vec<OnnxTensor>,
    /// Declared inputs; old exports also list every initializer here.
    pub inputs: Vec<ValueInfo>,
    /// Declared outputs.
    pub outputs: Vec<ValueInfo>,
}

/// `NodeProto`: one operator application.
#[derive(Debug, Clone, Default)]
pub struct Node {
    /// The node's name (may be empty).
    pub name: String,
    /// The operator, e.g. `Conv`.
    pub op_type: String,
    /// The operator set domain (`""` is the default ONNX domain).
    pub domain: String,
    /// Input value names; an empty name is an omitted optional input.
    pub inputs: Vec<String>,
    /// Output value names.
    pub outputs: Vec<String>,
    /// The attributes.
    pub attributes: Vec<Attribute>,
}

/// `AttributeProto`: a named attribute of a node.
#[derive(Debug, Clone)]
pub struct Attribute {
    /// Name, e.g. `strides`.
    pub name: String,
    /// Value.
    pub value: AttributeValue,
}

/// The value of an attribute.
#[derive(Debug, Clone)]
pub enum AttributeValue {
    /// `FLOAT`.
    Float(f32),
    /// `INT`.
    Int(i64),
    /// `STRING` (bytes, usually UTF-8).
    String(Vec<u8>),
    /// `TENSOR` (e.g. the value of a `Constant` node).
    Tensor(Box<OnnxTensor>),
    /// `FLOATS`.
    Floats(Vec<f32>),
    /// `INTS`.
    Ints(Vec<i64>),
    /// `STRINGS`.
    Strings(Vec<Vec<u8>>),
    /// Any other kind (graphs, sparse tensors, type protos), by its `AttributeType` code.
    Other(i32),
}

/// `TensorProto`: a named constant tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxTensor {
    /// Name (initializers are referred to by it).
    pub name: String,
    /// Shape; empty for a scalar.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub values: TensorValues,
}

/// The decoded values of a tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorValues {
    /// `FLOAT`, and `FLOAT16` / `BFLOAT16` / `DOUBLE` converted to f32.
    F32(Vec<f32>),
    /// `INT64` (shape constants, axes).
    I64(Vec<i64>),
    /// `INT32`.
    I32(Vec<i32>),
    /// Any other `TensorProto.DataType`, by its code; its values are not decoded.
    Unsupported(i32),
    /// Kept in another file (`data_location = EXTERNAL`); [`OnnxModel::parse`] refuses
    /// initializers stored so.
    External {
        /// The `location` entry of `external_data`: the file, relative to the model.
        location: String,
    },
}

/// `ValueInfoProto`: a graph input or output.
#[derive(Debug, Clone, Default)]
pub struct ValueInfo {
    /// Name.
    pub name: String,
    /// `TensorProto.DataType` of the elements (0 when not declared).
    pub elem_type: i32,
    /// Shape, when declared.
    pub shape: Option<Vec<Dim>>,
}

/// One axis of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Value(i64),
    /// A named free size, e.g. `None` or `batch`.
    Param(String),
    /// Neither.
    Unknown,
}

/// `TensorProto.DataType` codes the reader decodes.
mod data_type {
    pub const FLOAT: i32 = 1;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const FLOAT16: i32 = 10;
    pub const DOUBLE: i32 = 11;
    pub const BFLOAT16: i32 = 16;
}

impl OnnxModel {
    /// Reads and parses a `.onnx` file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::parse(&bytes, path)
    }

    /// Parses the bytes of a `.onnx` file; `path` names it in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, ModelError> {
        let format = |message: String| ModelError::Format {
            path: path.to_path_buf(),
            message,
        };
        let mut model =
            parse_model(bytes).map_err(|e| format(format!("not a valid ONNX model: {e}")))?;
        model.path = path.to_path_buf();
        if model.graph.nodes.is_empty() {
            return Err(format(
                "not an ONNX model: it has no graph nodes (is it the right file?)".into(),
            ));
        }
        for t in &model.graph.initializers {
            if let TensorValues::External { location } = &t.values {
                return Err(format(format!(
                    "tensor `{}` keeps its data in an external file (`{location}`); idforge \
                     reads self-contained .onnx files only (re-save the model with \
                     onnx.save_model(model, path, save_as_external_data=False))",
                    t.name
                )));
            }
        }
        model.initializer_index = model
            .graph
            .initializers
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(model)
    }

    /// The file the model was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The version of the default (`ai.onnx`) operator set, if imported.
    pub fn opset(&self) -> Option<i64> {
        self.opset_imports
            .iter()
            .find(|(d, _)| d.is_empty() || d == "ai.onnx")
            .map(|&(_, v)| v)
    }

    /// An initializer by name.
    pub fn initializer(&self, name: &str) -> Option<&OnnxTensor> {
        self.initializer_index
            .get(name)
            .map(|&i| &self.graph.initializers[i])
    }

    /// A constant value: an initializer, or the output of a `Constant` node (`value` tensor, or
    /// `value_float(s)` / `value_int(s)`).
    pub fn constant(&self, name: &str) -> Option<OnnxTensor> {
        if let Some(t) = self.initializer(name) {
            return Some(t.clone());
        }
        let node =
            self.graph.nodes.iter().find(|n| {
                n.op_type == "Constant" && n.outputs.first().is_some_and(|o| o == name)
            })?;
        let attr = node.attributes.first()?;
        let (dims, values) = match &attr.value {
            AttributeValue::Tensor(t) => {
                return Some(OnnxTensor {
                    name: name.into(),
                    ..(**t).clone()
                });
            }
            AttributeValue::Float(v) => (vec![], TensorValues::F32(vec![*v])),
            AttributeValue::Floats(v) => (vec![v.len()], TensorValues::F32(v.clone())),
            AttributeValue::Int(v) => (vec![], TensorValues::I64(vec![*v])),
            AttributeValue::Ints(v) => (vec![v.len()], TensorValues::I64(v.clone())),
            _ => return None,
        };
        Some(OnnxTensor {
            name: name.into(),
            dims,
            values,
        })
    }

    /// The float values and shape of a constant (see [`OnnxModel::constant`]), or an error
    /// naming it and the file.
    pub fn floats(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), ModelError> {
        let t = self
            .constant(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
                available: self.graph.initializers.len(),
            })?;
        match t.values {
            TensorValues::F32(v) => Ok((v, t.dims)),
            other => Err(ModelError::Format {
                path: self.path.clone(),
                message: format!(
                    "tensor `{name}` holds {}, expected floating-point values",
                    other.kind()
                ),
            }),
        }
    }
}

impl TensorValues {
    /// The element type in words, for errors.
    pub fn kind(&self) -> String {
        match self {
            TensorValues::F32(_) => "float values".into(),
            TensorValues::I64(_) => "int64 values".into(),
            TensorValues::I32(_) => "int32 values".into(),
            TensorValues::Unsupported(t) => format!("values of unsupported data type {t}"),
            TensorValues::External { location } => format!("values kept in `{location}`"),
        }
    }
}

impl Node {
    /// An attribute by name.
    pub fn attr(&self, name: &str) -> Option<&AttributeValue> {
        self.attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| &a.value)
    }

    /// An `INT` attribute.
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.attr(name)? {
            AttributeValue::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// A `FLOAT` attribute.
    pub fn float(&self, name: &str) -> Option<f32> {
        match self.attr(name)? {
            AttributeValue::Float(v) => Some(*v),
            _ => None,
        }
    }

    /// An `INTS` attribute.
    pub fn ints(&self, name: &str) -> Option<&[i64]> {
        match self.attr(name)? {
            AttributeValue::Ints(v) => Some(v),
            _ => None,
        }
    }

    /// How errors name the node: its name, or its first output when unnamed.
    pub fn label(&self) -> &str {
        if self.name.is_empty() {
            self.outputs.first().map_or("", String::as_str)
        } else {
            &self.name
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Protobuf wire format.

/// One field as read off the wire.
enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Reads the fields of one message, in order.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(format!(
                    "truncated: a varint runs past the end ({} bytes)",
                    self.buf.len()
                ));
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("malformed varint at byte {}", self.pos))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return Err(format!(
                "truncated: a field needs {n} bytes, {left} are left in its message"
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// The next `(field number, value)`, or `None` at the end of the message.
    fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, String> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = (key >> 3) as u32;
        if field == 0 {
            return Err(format!("field number 0 at byte {}", self.pos));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
                Value::Bytes(self.take(n)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().unwrap())),
            w => return Err(format!("unsupported wire type {w} (field {field})")),
        };
        Ok(Some((field, value)))
    }
}

fn string(v: Value<'_>, what: &str) -> Result<String, String> {
    match v {
        Value::Bytes(b) => String::from_utf8(b.to_vec()).map_err(|_| format!("{what}: not UTF-8")),
        _ => Err(format!("{what}: expected a string")),
    }
}

fn int(v: Value<'_>, what: &str) -> Result<i64, String> {
    match v {
        Value::Varint(x) => Ok(x as i64),
        _ => Err(format!("{what}: expected a varint")),
    }
}

fn bytes<'a>(v: Value<'a>, what: &str) -> Result<&'a [u8], String> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(format!("{what}: expected a length-delimited field")),
    }
}

/// A repeated varint field, packed or not; appends to `out`.
fn push_varints(v: Value<'_>, out: &mut Vec<i64>, what: &str) -> Result<(), String> {
    match v {
        Value::Varint(x) => out.push(x as i64),
        Value::Bytes(b) => {
            let mut f = Fields::new(b);
            while f.pos < b.len() {
                out.push(f.varint().map_err(|e| format!("{what}: {e}"))? as i64);
            }
        }
        _ => return Err(format!("{what}: expected varints")),
    }
    Ok(())
}

/// A repeated float field, packed or not.
fn push_floats(v: Value<'_>, out: &mut Vec<f32>, what: &str) -> Result<(), String> {
    match v {
        Value::Fixed32(x) => out.push(f32::from_bits(x)),
        Value::Bytes(b) if b.len() % 4 == 0 => out.extend(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap())),
        ),
        _ => return Err(format!("{what}: expected 32-bit floats")),
    }
    Ok(())
}

/// A repeated double field, packed or not.
fn push_doubles(v: Value<'_>, out: &mut Vec<f64>, what: &str) -> Result<(), String> {
    match v {
        Value::Fixed64(x) => out.push(f64::from_bits(x)),
        Value::Bytes(b) if b.len() % 8 == 0 => out.extend(
            b.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap())),
        ),
        _ => return Err(format!("{what}: expected 64-bit floats")),
    }
    Ok(())
}

fn parse_model(buf: &[u8]) -> Result<OnnxModel, String> {
    let mut f = Fields::new(buf);
    let mut model = OnnxModel {
        path: PathBuf::new(),
        ir_version: 0,
        opset_imports: Vec::new(),
        producer_name: String::new(),
        producer_version: String::new(),
        graph: Graph::default(),
        initializer_index: HashMap::new(),
    };
    let mut has_graph = false;
    while let Some((field, v)) = f.next()? {
        match field {
            1 => model.ir_version = int(v, "ir_version")?,
            2 => model.producer_name = string(v, "producer_name")?,
            3 => model.producer_version = string(v, "producer_version")?,
            7 => {
                model.graph = parse_graph(bytes(v, "graph")?).map_err(|e| format!("graph: {e}"))?;
                has_graph = true;
            }
            8 => {
                let mut g = Fields::new(bytes(v, "opset_import")?);
                let (mut domain, mut version) = (String::new(), 0);
                while let Some((field, v)) = g.next().map_err(|e| format!("opset_import: {e}"))? {
                    match field {
                        1 => domain = string(v, "opset_import.domain")?,
                        2 => version = int(v, "opset_import.version")?,
                        _ => {}
                    }
                }
                model.opset_imports.push((domain, version));
            }
            _ => {}
        }
    }
    if !has_graph {
        return Err("no graph (ModelProto field 7)".into());
    }
    Ok(model)
}

fn parse_graph(buf: &[u8]) -> Result<Graph, String> {
    let mut f = Fields::new(buf);
    let mut g = Graph::default();
    while let Some((field, v)) = f.next()? {
        match field {
            1 => {
                let i = g.nodes.len();
                let node = parse_node(bytes(v, "node")?).map_err(|e| format!("node #{i}: {e}"))?;
                g.nodes.push(node);
            }
            2 => g.name = string(v, "name")?,
            5 => {
                let i = g.initializers.len();
                let t = parse_tensor(bytes(v, "initializer")?)
                    .map_err(|e| format!("initializer #{i}: {e}"))?;
                g.initializers.push(t);
            }
            11 => g
                .inputs
                .push(parse_value_info(bytes(v, "input")?).map_err(|e| format!("input: {e}"))?),
            12 => g
                .outputs
                .push(parse_value_info(bytes(v, "output")?).map_err(|e| format!("output: {e}"))?),
            _ => {}
        }
    }
    Ok(g)
}

fn parse_node(buf: &[u8]) -> Result<Node, String> {
    let mut f = Fields::new(buf);
    let mut n = Node::default();
    while let Some((field, v)) = f.next().map_err(|e| with_name(&n.name, e))? {
        match field {
            1 => n.inputs.push(string(v, "input")?),
            2 => n.outputs.push(string(v, "output")?),
            3 => n.name = string(v, "name")?,
            4 => n.op_type = string(v, "op_type")?,
            7 => n.domain = string(v, "domain")?,
            5 => {
                let a = parse_attribute(bytes(v, "attribute")?)
                    .map_err(|e| with_name(&n.name, format!("attribute: {e}")))?;
                n.attributes.push(a);
            }
            _ => {}
        }
    }
    Ok(n)
}

fn with_name(name: &str, e: String) -> String {
    if name.is_empty() {
        e
    } else {
        format!("`{name}`: {e}")
    }
}

fn parse_attribute(buf: &[u8]) -> Result<Attribute, String> {
    let mut f = Fields::new(buf);
    let mut name = String::new();
    let mut ty = 0i64;
    let (mut fl, mut i, mut s, mut t) = (None, None, None, None);
    let (mut floats, mut ints, mut strings) = (Vec::new(), Vec::new(), Vec::new());
    while let Some((field, v)) = f.next().map_err(|e| with_name(&name, e))? {
        match field {
            1 => name = string(v, "name")?,
            20 => ty = int(v, "type")?,
            2 => match v {
                Value::Fixed32(x) => fl = Some(f32::from_bits(x)),
                _ => return Err(with_name(&name, "f: expected a 32-bit float".into())),
            },
            3 => i = Some(int(v, "i")?),
            4 => s = Some(bytes(v, "s")?.to_vec()),
            5 => {
                t = Some(parse_tensor(bytes(v, "t")?).map_err(|e| with_name(&name, e))?);
            }
            7 => push_floats(v, &mut floats, "floats")?,
            8 => push_varints(v, &mut ints, "ints")?,
            9 => strings.push(bytes(v, "strings")?.to_vec()),
            _ => {}
        }
    }
    // AttributeProto.AttributeType; files from before IR version 2 may leave `type` unset, then
    // the field that is present decides.
    let value = match ty {
        1 => AttributeValue::Float(fl.unwrap_or(0.0)),
        2 => AttributeValue::Int(i.unwrap_or(0)),
        3 => AttributeValue::String(s.unwrap_or_default()),
        4 => AttributeValue::Tensor(Box::new(
            t.ok_or_else(|| with_name(&name, "TENSOR attribute without a tensor".into()))?,
        )),
        6 => AttributeValue::Floats(floats),
        7 => AttributeValue::Ints(ints),
        8 => AttributeValue::Strings(strings),
        0 => match (fl, i, s, t) {
            (Some(x), ..) => AttributeValue::Float(x),
            (_, Some(x), ..) => AttributeValue::Int(x),
            (_, _, Some(x), _) => AttributeValue::String(x),
            (.., Some(x)) => AttributeValue::Tensor(Box::new(x)),
            _ if !floats.is_empty() => AttributeValue::Floats(floats),
            _ if !ints.is_empty() => AttributeValue::Ints(ints),
            _ => AttributeValue::Other(0),
        },
        other => AttributeValue::Other(other as i32),
    };
    Ok(Attribute { name, value })
}

fn parse_tensor(buf: &[u8]) -> Result<OnnxTensor, String> {
    let mut f = Fields::new(buf);
    let mut name = String::new();
    let mut dims = Vec::new();
    let mut data_type = 0i32;
    let mut raw: Option<&[u8]> = None;
    let mut float_data = Vec::new();
    let mut int32_data = Vec::new();
    let mut int64_data = Vec::new();
    let mut double_data = Vec::new();
    let mut external = false;
    let mut location = String::new();
    while let Some((field, v)) = f.next().map_err(|e| tensor_err(&name, e))? {
        match field {
            1 => push_varints(v, &mut dims, "dims").map_err(|e| tensor_err(&name, e))?,
            2 => data_type = int(v, "data_type")? as i32,
            3 => {
                return Err(tensor_err(
                    &name,
                    "segmented tensors are not supported".into(),
                ));
            }
            4 => push_floats(v, &mut float_data, "float_data").map_err(|e| tensor_err(&name, e))?,
            5 => {
                push_varints(v, &mut int32_data, "int32_data").map_err(|e| tensor_err(&name, e))?
            }
            7 => {
                push_varints(v, &mut int64_data, "int64_data").map_err(|e| tensor_err(&name, e))?
            }
            8 => name = string(v, "name")?,
            9 => raw = Some(bytes(v, "raw_data")?),
            10 => push_doubles(v, &mut double_data, "double_data")
                .map_err(|e| tensor_err(&name, e))?,
            13 => {
                // StringStringEntryProto { key = 1, value = 2 }
                let mut e = Fields::new(bytes(v, "external_data")?);
                let (mut key, mut value) = (String::new(), String::new());
                while let Some((field, v)) = e.next().map_err(|e| tensor_err(&name, e))? {
                    match field {
                        1 => key = string(v, "external_data.key")?,
                        2 => value = string(v, "external_data.value")?,
                        _ => {}
                    }
                }
                if key == "location" {
                    location = value;
                }
            }
            14 => external = int(v, "data_location")? == 1,
            _ => {}
        }
    }
    if external {
        return Ok(OnnxTensor {
            name,
            dims: Vec::new(),
            values: TensorValues::External { location },
        });
    }
    let dims: Vec<usize> = dims
        .into_iter()
        .map(|d| {
            usize::try_from(d).map_err(|_| tensor_err(&name, format!("negative dimension {d}")))
        })
        .collect::<Result<_, _>>()?;
    let n: usize = dims.iter().product();
    let check = |len: usize, what: &str| {
        if len == n {
            Ok(())
        } else {
            Err(tensor_err(
                &name,
                format!("shape {dims:?} needs {n} values, its {what} holds {len}"),
            ))
        }
    };
    let values = match data_type {
        data_type::FLOAT => TensorValues::F32(match raw {
            Some(r) => {
                check(r.len() / 4, "raw_data")?;
                r.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            }
            None => {
                check(float_data.len(), "float_data")?;
                float_data
            }
        }),
        data_type::FLOAT16 | data_type::BFLOAT16 => {
            let bits: Vec<u16> = match raw {
                Some(r) => {
                    check(r.len() / 2, "raw_data")?;
                    r.chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .collect()
                }
                // Half-precision values are stored one per int32_data element.
                None => {
                    check(int32_data.len(), "int32_data")?;
                    int32_data.iter().map(|&x| x as u16).collect()
                }
            };
            TensorValues::F32(if data_type == data_type::FLOAT16 {
                bits.iter()
                    .map(|&b| half::f16::from_bits(b).to_f32())
                    .collect()
            } else {
                bits.iter()
                    .map(|&b| half::bf16::from_bits(b).to_f32())
                    .collect()
            })
        }
        data_type::DOUBLE => TensorValues::F32(match raw {
            Some(r) => {
                check(r.len() / 8, "raw_data")?;
                r.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect()
            }
            None => {
                check(double_data.len(), "double_data")?;
                double_data.iter().map(|&x| x as f32).collect()
            }
        }),
        data_type::INT64 => TensorValues::I64(match raw {
            Some(r) => {
                check(r.len() / 8, "raw_data")?;
                r.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            }
            None => {
                check(int64_data.len(), "int64_data")?;
                int64_data
            }
        }),
        data_type::INT32 => TensorValues::I32(match raw {
            Some(r) => {
                check(r.len() / 4, "raw_data")?;
                r.chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            }
            None => {
                check(int32_data.len(), "int32_data")?;
                int32_data.iter().map(|&x| x as i32).collect()
            }
        }),
        other => TensorValues::Unsupported(other),
    };
    if let (Some(r), TensorValues::F32(_) | TensorValues::I64(_) | TensorValues::I32(_)) =
        (raw, &values)
    {
        let width = match data_type {
            data_type::FLOAT16 | data_type::BFLOAT16 => 2,
            data_type::FLOAT | data_type::INT32 => 4,
            _ => 8,
        };
        if r.len() % width != 0 {
            return Err(tensor_err(
                &name,
                format!(
                    "raw_data of {} bytes is not a whole number of values",
                    r.len()
                ),
            ));
        }
    }
    Ok(OnnxTensor { name, dims, values })
}

fn tensor_err(name: &str, e: String) -> String {
    if name.is_empty() {
        format!("tensor: {e}")
    } else {
        format!("tensor `{name}`: {e}")
    }
}

fn parse_value_info(buf: &[u8]) -> Result<ValueInfo, String> {
    let mut f = Fields::new(buf);
    let mut vi = ValueInfo::default();
    while let Some((field, v)) = f.next()? {
        match field {
            1 => vi.name = string(v, "name")?,
            // TypeProto { tensor_type = 1: Tensor { elem_type = 1, shape = 2 } }
            2 => {
                let mut t = Fields::new(bytes(v, "type")?);
                while let Some((field, v)) = t.next()? {
                    if field != 1 {
                        continue;
                    }
                    let mut tt = Fields::new(bytes(v, "tensor_type")?);
                    while let Some((field, v)) = tt.next()? {
                        match field {
                            1 => vi.elem_type = int(v, "elem_type")? as i32,
                            2 => vi.shape = Some(parse_shape(bytes(v, "shape")?)?),
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(vi)
}

fn parse_shape(buf: &[u8]) -> Result<Vec<Dim>, String> {
    let mut f = Fields::new(buf);
    let mut dims = Vec::new();
    while let Some((field, v)) = f.next()? {
        if field != 1 {
            continue;
        }
        let mut d = Fields::new(bytes(v, "dim")?);
        let mut dim = Dim::Unknown;
        while let Some((field, v)) = d.next()? {
            match field {
                1 => dim = Dim::Value(int(v, "dim_value")?),
                2 => dim = Dim::Param(string(v, "dim_param")?),
                _ => {}
            }
        }
        dims.push(dim);
    }
    Ok(dims)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny protobuf writer, just enough to build test messages.
    #[derive(Default)]
    struct W(Vec<u8>);

    impl W {
        fn varint(&mut self, mut v: u64) -> &mut Self {
            loop {
                let b = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    self.0.push(b);
                    return self;
                }
                self.0.push(b | 0x80);
            }
        }
        fn int(&mut self, field: u32, v: i64) -> &mut Self {
            self.varint(u64::from(field) << 3).varint(v as u64)
        }
        fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
            self.varint((u64::from(field) << 3) | 2)
                .varint(b.len() as u64);
            self.0.extend_from_slice(b);
            self
        }
        fn f32(&mut self, field: u32, v: f32) -> &mut Self {
            self.varint((u64::from(field) << 3) | 5);
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
    }

    fn tensor(name: &str, dims: &[i64], data_type: i64, raw: &[u8]) -> Vec<u8> {
        let mut t = W::default();
        for &d in dims {
            t.int(1, d);
        }
        t.int(2, data_type).bytes(8, name.as_bytes()).bytes(9, raw);
        t.0
    }

    fn model(graph: &[u8]) -> Vec<u8> {
        let mut opset = W::default();
        opset.bytes(1, b"").int(2, 11);
        let mut m = W::default();
        m.int(1, 6)
            .bytes(2, b"test")
            .bytes(7, graph)
            .bytes(8, &opset.0);
        m.0
    }

    fn graph() -> Vec<u8> {
        let mut attr = W::default();
        attr.bytes(1, b"strides").int(20, 7);
        // packed ints [2, 2]
        attr.bytes(8, &[2, 2]);
        let mut eps = W::default();
        eps.bytes(1, b"epsilon").int(20, 1).f32(2, 1e-5);
        let mut node = W::default();
        node.bytes(1, b"data")
            .bytes(1, b"w")
            .bytes(2, b"y")
            .bytes(3, b"/conv1/Conv")
            .bytes(4, b"Conv")
            .bytes(5, &attr.0)
            .bytes(5, &eps.0);
        let w: Vec<u8> = [1.0f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let h: Vec<u8> = [half::f16::from_f32(0.5), half::f16::from_f32(-3.0)]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let shape: Vec<u8> = [1i64, -1].iter().flat_map(|x| x.to_le_bytes()).collect();
        // float_data stored unpacked, one fixed32 per value
        let mut fd = W::default();
        fd.int(1, 2)
            .int(2, 1)
            .f32(4, 7.0)
            .f32(4, 8.0)
            .bytes(8, b"fd");
        let mut g = W::default();
        g.bytes(1, &node.0)
            .bytes(2, b"g")
            .bytes(5, &tensor("w", &[2, 1], 1, &w))
            .bytes(5, &tensor("h", &[2], 10, &h))
            .bytes(5, &tensor("s", &[2], 7, &shape))
            .bytes(5, &fd.0);
        g.0
    }

    #[test]
    fn parses_nodes_attributes_and_every_storage_of_initializers() {
        let m = OnnxModel::parse(&model(&graph()), Path::new("t.onnx")).unwrap();
        assert_eq!(
            (m.ir_version, m.opset(), m.producer_name.as_str()),
            (6, Some(11), "test")
        );
        let n = &m.graph.nodes[0];
        assert_eq!((n.op_type.as_str(), n.label()), ("Conv", "/conv1/Conv"));
        assert_eq!(n.inputs, ["data", "w"]);
        assert_eq!(n.ints("strides"), Some(&[2i64, 2][..]));
        assert_eq!(n.float("epsilon"), Some(1e-5));
        assert_eq!(m.floats("w").unwrap(), (vec![1.0, -2.0], vec![2, 1]));
        assert_eq!(m.floats("h").unwrap().0, vec![0.5, -3.0]);
        assert_eq!(m.floats("fd").unwrap().0, vec![7.0, 8.0]);
        assert_eq!(
            m.initializer("s").unwrap().values,
            TensorValues::I64(vec![1, -1])
        );
        let e = m.floats("s").unwrap_err().to_string();
        assert!(e.contains("t.onnx: tensor `s` holds int64 values"), "{e}");
        let e = m.floats("nope").unwrap_err().to_string();
        assert!(e.contains("no tensor `nope`"), "{e}");
    }

    #[test]
    fn truncation_and_bad_sizes_are_errors_naming_the_tensor() {
        let bytes = model(&graph());
        for cut in [3, bytes.len() / 2, bytes.len() - 1] {
            let e = OnnxModel::parse(&bytes[..cut], Path::new("t.onnx"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("t.onnx: not a valid ONNX model"), "{e}");
            assert!(e.contains("truncated"), "{cut}: {e}");
        }
        let mut g = W::default();
        g.bytes(5, &tensor("fc.weight", &[2, 2], 1, &[0; 12]));
        let e = OnnxModel::parse(&model(&g.0), Path::new("t.onnx"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tensor `fc.weight`: shape [2, 2] needs 4 values, its raw_data holds 3"),
            "{e}"
        );
        let e = OnnxModel::parse(b"\x89PNG\r\n\x1a\n", Path::new("x.png"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.png: not a valid ONNX model"), "{e}");
    }

    #[test]
    fn external_data_is_refused_by_name() {
        let mut entry = W::default();
        entry.bytes(1, b"location").bytes(2, b"weights.bin");
        let mut t = W::default();
        t.int(1, 4)
            .int(2, 1)
            .bytes(8, b"fc.weight")
            .bytes(13, &entry.0)
            .int(14, 1);
        let mut node = W::default();
        node.bytes(4, b"Identity");
        let mut g = W::default();
        g.bytes(1, &node.0).bytes(5, &t.0);
        let e = OnnxModel::parse(&model(&g.0), Path::new("big.onnx"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "big.onnx: tensor `fc.weight` keeps its data in an external file (`weights.bin`)"
            ),
            "{e}"
        );
    }
}
