//! IResNet, the backbone of insightface's ArcFace-class face embedders (`buffalo_l`
//! `w600k_r50.onnx`, `antelopev2` `glintr100.onnx`, and the MXNet-era models converted to
//! ONNX), built from the user's `.onnx` file.
//!
//! Follows `recognition/arcface_torch/backbones/iresnet.py` (deepinsight/insightface, commit
//! 04a433f): stem `conv3x3(3, 64) → bn1 → prelu`; four stages of `IBasicBlock`s
//! (`bn1 → conv3x3 → bn2 → prelu → conv3x3(stride) → bn3`, plus the input or, in each stage's
//! first block, a `conv1x1(stride) → bn` downsample), the first block of each stage with stride
//! 2; then `bn2 → flatten → dropout → fc → features` (BatchNorm1d). r18 / r34 / r50 / r100 / r200
//! have `[2, 2, 2, 2]`, `[3, 4, 6, 3]`, `[3, 4, 14, 3]`, `[3, 13, 30, 3]`, `[6, 26, 60, 6]`
//! blocks at widths 64, 128, 256, 512.
//!
//! Exports name their weights in different ways (`layer1.0.bn1.weight`, `onnx::Conv_685`, plain
//! numbers) and torch's eval-mode export folds every `Conv → BatchNorm` pair into one `Conv`
//! with a bias, so the loader does not look weights up by name: it walks the graph from its
//! input along the data flow, matches the op sequence above node by node, and reads each node's
//! weights from the initializers it names. Block counts, widths, the embedding size and whether
//! a BatchNorm was folded all come from the graph; every shape and attribute is checked, and
//! anything else is an error naming the node. BatchNorms that follow a convolution (or the
//! `fc`) are folded into it at load time, in double precision; the block's leading `bn1`
//! cannot be (the next convolution zero-pads its output) and stays a per-channel affine.
//!
//! Input: insightface's `model_zoo/arcface_onnx.py` feeds RGB `(x − 127.5) / 127.5`, NCHW
//! 112×112 (`cv2.dnn.blobFromImages(..., swapRB=True)` on the BGR crop of `norm_crop`). Graphs
//! that normalise their input themselves (MXNet conversions start with `_minusscalar0` Sub and
//! `_mulscalar0` Mul) get raw pixels instead: insightface decides this from the names of the
//! first 8 nodes (a `Sub`/`_minus` one and a `Mul`/`_mul` one), and so does [`InputNorm`]. Such
//! leading per-channel `Sub`/`Mul`/`Add`/`Div` nodes are run as part of [`IResNet::forward`].
//! The output is the raw embedding, as `ArcFaceONNX.get_feat` returns it; [`l2_normalize`] gives
//! insightface's `normed_embedding`.

use std::collections::HashMap;
use std::path::Path;

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::activation::prelu;
use burn::tensor::backend::Backend;
use burn::tensor::module::{conv2d, linear};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Tensor, TensorData};

use crate::error::ModelError;
use crate::face_api::preprocess::RgbView;
use crate::onnx::{Dim, Node, OnnxModel};
use crate::readback::ReadBack;

/// The shape of an IResNet.
#[derive(Config, Debug)]
pub struct IResNetConfig {
    /// `IBasicBlock`s per stage, e.g. `[3, 4, 14, 3]` for r50.
    pub layers: Vec<usize>,
    /// Output channels of each stage.
    #[config(default = "vec![64, 128, 256, 512]")]
    pub widths: Vec<usize>,
    /// Channels of the stem convolution.
    #[config(default = 64)]
    pub stem_width: usize,
    /// Length of the embedding (`num_features`).
    #[config(default = 512)]
    pub embedding_size: usize,
    /// Side of the square input.
    #[config(default = 112)]
    pub input_size: usize,
}

impl IResNetConfig {
    /// `iresnet18`.
    pub fn r18() -> Self {
        Self::new(vec![2, 2, 2, 2])
    }
    /// `iresnet34`.
    pub fn r34() -> Self {
        Self::new(vec![3, 4, 6, 3])
    }
    /// `iresnet50` (`buffalo_l`'s `w600k_r50.onnx`).
    pub fn r50() -> Self {
        Self::new(vec![3, 4, 14, 3])
    }
    /// `iresnet100` (`antelopev2`'s `glintr100.onnx`).
    pub fn r100() -> Self {
        Self::new(vec![3, 13, 30, 3])
    }
    /// `iresnet200`.
    pub fn r200() -> Self {
        Self::new(vec![6, 26, 60, 6])
    }

    /// The preset this config equals (`"r50"`, ...), if any.
    pub fn preset_name(&self) -> Option<&'static str> {
        [
            ("r18", Self::r18()),
            ("r34", Self::r34()),
            ("r50", Self::r50()),
            ("r100", Self::r100()),
            ("r200", Self::r200()),
        ]
        .into_iter()
        .find(|(_, c)| {
            c.layers == self.layers
                && c.widths == self.widths
                && c.stem_width == self.stem_width
                && c.embedding_size == self.embedding_size
                && c.input_size == self.input_size
        })
        .map(|(n, _)| n)
    }

    /// Side of the last feature map: the input halved (rounding up) once per stage.
    fn final_side(&self) -> usize {
        (0..self.widths.len()).fold(self.input_size, |s, _| s.div_ceil(2))
    }

    /// A network of this shape with random weights (convolutions and `fc` N(0, 1/fan_in),
    /// identity BatchNorms, PReLU slopes 0.25), for tests and timing; embeddings from it mean
    /// nothing.
    ///
    /// # Panics
    /// If `layers` and `widths` differ in length or a stage has no block.
    pub fn init<B: Backend>(&self, device: &B::Device) -> IResNet<B> {
        assert_eq!(self.layers.len(), self.widths.len(), "one width per stage");
        assert!(self.layers.iter().all(|&n| n > 0), "empty stage");
        let normal = |shape: [usize; 4]| {
            let fan_in = (shape[1] * shape[2] * shape[3]) as f64;
            Tensor::random(shape, Distribution::Normal(0.0, fan_in.powf(-0.5)), device)
        };
        let conv = |o, i, k, stride| ConvUnit {
            weight: Param::from_tensor(normal([o, i, k, k])),
            bias: Param::from_tensor(Tensor::zeros([o], device)),
            stride,
            padding: k / 2,
        };
        let slopes = |c| Param::from_tensor(Tensor::full([c], 0.25, device));
        let mut blocks = Vec::new();
        let mut c = self.stem_width;
        for (&n, &w) in self.layers.iter().zip(&self.widths) {
            for b in 0..n {
                let stride = if b == 0 { 2 } else { 1 };
                blocks.push(Block {
                    bn1_scale: Param::from_tensor(Tensor::ones([c], device)),
                    bn1_shift: Param::from_tensor(Tensor::zeros([c], device)),
                    conv1: conv(w, c, 3, 1),
                    prelu: slopes(w),
                    conv2: conv(w, w, 3, stride),
                    downsample: (b == 0).then(|| conv(w, c, 1, stride)),
                });
                c = w;
            }
        }
        let side = self.final_side();
        let k = c * side * side;
        IResNet {
            stem: conv(self.stem_width, 3, 3, 1),
            stem_prelu: slopes(self.stem_width),
            blocks,
            fc_weight: Param::from_tensor(Tensor::random(
                [k, self.embedding_size],
                Distribution::Normal(0.0, (k as f64).powf(-0.5)),
                device,
            )),
            fc_bias: Param::from_tensor(Tensor::zeros([self.embedding_size], device)),
            input_ops: Vec::new(),
            norm: InputNorm::ARCFACE,
            config: self.clone(),
        }
    }
}

/// How pixels become network input: `(x − mean) / std` per RGB channel, computed as
/// `cv2.dnn.blobFromImages` does (float32 subtract, then multiply by `1/std`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputNorm {
    /// Subtracted from each 0–255 value.
    pub mean: f32,
    /// The divisor.
    pub std: f32,
}

impl InputNorm {
    /// arcface_torch exports: `(x − 127.5) / 127.5`.
    pub const ARCFACE: InputNorm = InputNorm {
        mean: 127.5,
        std: 127.5,
    };
    /// Graphs that normalise their input themselves (MXNet conversions): raw pixels.
    pub const RAW: InputNorm = InputNorm {
        mean: 0.0,
        std: 1.0,
    };

    /// `ArcFaceONNX.__init__`'s rule: a node named `Sub…`/`_minus…` and one named `Mul…`/`_mul…`
    /// among the first 8 mean the graph normalises; then raw pixels, else [`InputNorm::ARCFACE`].
    pub fn for_graph(nodes: &[Node]) -> InputNorm {
        let first = &nodes[..nodes.len().min(8)];
        let has = |a: &str, b: &str| {
            first
                .iter()
                .any(|n| n.name.starts_with(a) || n.name.starts_with(b))
        };
        if has("Sub", "_minus") && has("Mul", "_mul") {
            InputNorm::RAW
        } else {
            InputNorm::ARCFACE
        }
    }
}

/// A per-channel elementwise operation the graph applies to its input before the stem.
#[derive(Debug, Clone, PartialEq)]
struct InputOp {
    op: ElementOp,
    /// One value, or one per channel.
    values: Vec<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ElementOp {
    Sub,
    Add,
    Mul,
    Div,
}

/// A convolution with its BatchNorm folded in.
#[derive(Module, Debug)]
struct ConvUnit<B: Backend> {
    /// `[out, in, k, k]`
    weight: Param<Tensor<B, 4>>,
    /// `[out]`
    bias: Param<Tensor<B, 1>>,
    stride: usize,
    padding: usize,
}

impl<B: Backend> ConvUnit<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let (s, p) = (self.stride, self.padding);
        conv2d(
            x,
            self.weight.val(),
            Some(self.bias.val()),
            ConvOptions::new([s, s], [p, p], [1, 1], 1),
        )
    }
}

/// `IBasicBlock`.
#[derive(Module, Debug)]
struct Block<B: Backend> {
    /// `bn1` as `x · scale + shift`, `[in]` each.
    bn1_scale: Param<Tensor<B, 1>>,
    bn1_shift: Param<Tensor<B, 1>>,
    /// `conv1` with `bn2` folded in.
    conv1: ConvUnit<B>,
    /// `[planes]`
    prelu: Param<Tensor<B, 1>>,
    /// `conv2` with `bn3` folded in.
    conv2: ConvUnit<B>,
    /// `downsample` (conv1x1 with its BatchNorm folded in).
    downsample: Option<ConvUnit<B>>,
}

impl<B: Backend> Block<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let channel = |t: Tensor<B, 1>| t.reshape([1, -1, 1, 1]);
        let out = x.clone() * channel(self.bn1_scale.val()) + channel(self.bn1_shift.val());
        let out = prelu(self.conv1.forward(out), self.prelu.val());
        let out = self.conv2.forward(out);
        let identity = match &self.downsample {
            Some(d) => d.forward(x),
            None => x,
        };
        out + identity
    }
}

/// An IResNet face embedder with its weights.
#[derive(Module, Debug)]
pub struct IResNet<B: Backend> {
    /// `conv1` with `bn1` folded in.
    stem: ConvUnit<B>,
    /// `[stem_width]`
    stem_prelu: Param<Tensor<B, 1>>,
    blocks: Vec<Block<B>>,
    /// `fc` with `bn2` before it and `features` after it folded in, `[in, embedding]` (burn's
    /// `Linear` layout).
    fc_weight: Param<Tensor<B, 2>>,
    /// `[embedding]`
    fc_bias: Param<Tensor<B, 1>>,
    #[module(skip)]
    input_ops: Vec<InputOp>,
    #[module(skip)]
    norm: InputNorm,
    #[module(skip)]
    config: IResNetConfig,
}

impl<B: Backend> IResNet<B> {
    /// Builds the network from an ArcFace-class `.onnx` file (see the module docs for what it
    /// accepts).
    pub fn load(path: &Path, device: &B::Device) -> Result<Self, ModelError> {
        Self::from_onnx(&OnnxModel::load(path)?, device)
    }

    /// Builds the network from a parsed ONNX model.
    pub fn from_onnx(model: &OnnxModel, device: &B::Device) -> Result<Self, ModelError> {
        let p = Walker::new(model).parse()?;
        let t1 = |v: Vec<f32>| {
            let n = v.len();
            Param::from_tensor(Tensor::<B, 1>::from_data(TensorData::new(v, [n]), device))
        };
        let conv = |c: FoldedConv| ConvUnit {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(c.weight, c.shape),
                device,
            )),
            bias: t1(c.bias),
            stride: c.stride,
            padding: c.padding,
        };
        let blocks = p
            .blocks
            .into_iter()
            .map(|b| Block {
                bn1_scale: t1(b.bn1.0),
                bn1_shift: t1(b.bn1.1),
                conv1: conv(b.conv1),
                prelu: t1(b.prelu),
                conv2: conv(b.conv2),
                downsample: b.downsample.map(conv),
            })
            .collect();
        let (k, e) = (p.fc_shape[0], p.fc_shape[1]);
        Ok(IResNet {
            stem: conv(p.stem),
            stem_prelu: t1(p.stem_prelu),
            blocks,
            fc_weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(p.fc_weight, [k, e]),
                device,
            )),
            fc_bias: t1(p.fc_bias),
            input_ops: p.input_ops,
            norm: InputNorm::for_graph(&model.graph.nodes),
            config: p.config,
        })
    }

    /// The shape read from the graph.
    pub fn config(&self) -> &IResNetConfig {
        &self.config
    }

    /// The input normalisation insightface uses for this graph.
    pub fn input_norm(&self) -> InputNorm {
        self.norm
    }

    /// Whether the graph normalises its input itself (leading Sub/Mul/Add/Div nodes).
    pub fn normalises_input(&self) -> bool {
        !self.input_ops.is_empty()
    }

    /// The network input `[n, 3, size, size]` for aligned RGB crops (see
    /// [`crate::face_align::norm_crop`]): `(x − mean) · (1/std)`, rounded to float32 as
    /// `cv2.dnn.blobFromImages` computes it.
    ///
    /// # Panics
    /// If a crop is not `input_size` square or its buffer has the wrong size.
    pub fn input(&self, crops: &[RgbView<'_>], device: &B::Device) -> Tensor<B, 4> {
        let s = self.config.input_size;
        // OpenCV multiplies the float32 difference by the double scale factor in double
        // precision, then rounds to float32 (a float32 product would differ in the last bit).
        let scale = 1.0 / f64::from(self.norm.std);
        let mut v = Vec::with_capacity(crops.len() * 3 * s * s);
        for crop in crops {
            assert!(
                crop.width == s && crop.height == s && crop.data.len() == s * s * 3,
                "aligned crop of {s}×{s} RGB expected, got {}×{} ({} bytes)",
                crop.width,
                crop.height,
                crop.data.len()
            );
            for c in 0..3 {
                v.extend(
                    crop.data[c..]
                        .iter()
                        .step_by(3)
                        .map(|&x| (f64::from(f32::from(x) - self.norm.mean) * scale) as f32),
                );
            }
        }
        Tensor::from_data(TensorData::new(v, [crops.len(), 3, s, s]), device)
    }

    /// Raw embeddings (not unit length), as the ONNX graph outputs them.
    ///
    /// # Shapes
    /// - `x`: `[batch, 3, input_size, input_size]`, the graph's input
    /// - output: `[batch, embedding_size]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = x;
        for op in &self.input_ops {
            let c = Tensor::<B, 1>::from_data(
                TensorData::new(op.values.clone(), [op.values.len()]),
                &x.device(),
            )
            .reshape([1, -1, 1, 1]);
            x = match op.op {
                ElementOp::Sub => x - c,
                ElementOp::Add => x + c,
                ElementOp::Mul => x * c,
                ElementOp::Div => x / c,
            };
        }
        let mut x = prelu(self.stem.forward(x), self.stem_prelu.val());
        for block in &self.blocks {
            x = block.forward(x);
        }
        let [b, c, h, w] = x.dims();
        linear(
            x.reshape([b, c * h * w]),
            self.fc_weight.val(),
            Some(self.fc_bias.val()),
        )
    }

    /// The raw embedding of one aligned crop.
    pub fn embed(&self, crop: RgbView<'_>) -> Vec<f32> {
        let device = self.fc_bias.val().device();
        self.forward(self.input(&[crop], &device)).to_f32_vec()
    }
}

/// `v / ‖v‖₂` (insightface's `normed_embedding`); a zero vector stays zero.
pub fn l2_normalize(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    if norm == 0.0 {
        return v.to_vec();
    }
    v.iter().map(|&x| (f64::from(x) / norm) as f32).collect()
}

/// Cosine similarity of two embeddings (insightface `compute_sim`), in double precision.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "embeddings of equal length");
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

// ---------------------------------------------------------------------------------------------
// Reading the graph.

/// A convolution's weights with its BatchNorm folded in.
struct FoldedConv {
    weight: Vec<f32>,
    shape: [usize; 4],
    bias: Vec<f32>,
    stride: usize,
    padding: usize,
}

struct ParsedBlock {
    bn1: (Vec<f32>, Vec<f32>),
    conv1: FoldedConv,
    prelu: Vec<f32>,
    conv2: FoldedConv,
    downsample: Option<FoldedConv>,
}

struct Parsed {
    input_ops: Vec<InputOp>,
    stem: FoldedConv,
    stem_prelu: Vec<f32>,
    blocks: Vec<ParsedBlock>,
    fc_weight: Vec<f32>,
    fc_shape: [usize; 2],
    fc_bias: Vec<f32>,
    config: IResNetConfig,
}

/// A per-channel `x · scale + shift` (a BatchNorm in inference form), in double precision.
struct Affine {
    scale: Vec<f64>,
    shift: Vec<f64>,
}

/// Walks an ONNX graph along its data flow.
struct Walker<'m> {
    model: &'m OnnxModel,
    consumers: HashMap<&'m str, Vec<usize>>,
    visited: Vec<bool>,
}

type R<T> = Result<T, ModelError>;

impl<'m> Walker<'m> {
    fn new(model: &'m OnnxModel) -> Self {
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in model.graph.nodes.iter().enumerate() {
            for input in n.inputs.iter().filter(|s| !s.is_empty()) {
                consumers.entry(input.as_str()).or_default().push(i);
            }
        }
        Walker {
            model,
            consumers,
            visited: vec![false; model.graph.nodes.len()],
        }
    }

    fn node(&self, i: usize) -> &'m Node {
        &self.model.graph.nodes[i]
    }

    fn err(&self, i: usize, message: impl Into<String>) -> ModelError {
        let n = self.node(i);
        ModelError::Graph {
            path: self.model.path().to_path_buf(),
            node: n.label().to_string(),
            op_type: n.op_type.clone(),
            message: message.into(),
        }
    }

    fn format_err(&self, message: impl Into<String>) -> ModelError {
        ModelError::Format {
            path: self.model.path().to_path_buf(),
            message: message.into(),
        }
    }

    fn users(&self, value: &str) -> Vec<usize> {
        self.consumers.get(value).cloned().unwrap_or_default()
    }

    /// Follows `value` through `Identity` and inference `Dropout` nodes; returns the value
    /// reached and the nodes reading it.
    fn follow(&mut self, value: &str) -> R<(String, Vec<usize>)> {
        let mut value = value.to_string();
        loop {
            let users = self.users(&value);
            match users.as_slice() {
                [i] if matches!(self.node(*i).op_type.as_str(), "Identity" | "Dropout") => {
                    let n = self.node(*i);
                    if n.outputs.iter().skip(1).any(|o| !self.users(o).is_empty()) {
                        return Err(self.err(*i, "its mask output is used; expected inference"));
                    }
                    self.visited[*i] = true;
                    value = n.outputs[0].clone();
                }
                _ => return Ok((value, users)),
            }
        }
    }

    /// The single node reading `value` (after pass-through nodes), which must be one of `ops`
    /// with `value` as its first input; marks it visited.
    fn next(&mut self, value: &str, ops: &[&str], what: &str) -> R<usize> {
        let (value, users) = self.follow(value)?;
        match users.as_slice() {
            [i] => self.expect(*i, &value, ops, what),
            [] => Err(self.format_err(format!(
                "the graph ends at `{value}`, expected {what} after it"
            ))),
            many => Err(self.format_err(format!(
                "`{value}` feeds {} nodes ({}), expected only {what}",
                many.len(),
                many.iter()
                    .map(|&i| format!("`{}` {}", self.node(i).label(), self.node(i).op_type))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    fn expect(&mut self, i: usize, value: &str, ops: &[&str], what: &str) -> R<usize> {
        let n = self.node(i);
        if !ops.contains(&n.op_type.as_str()) {
            return Err(self.err(
                i,
                format!("unexpected operator after `{value}`, expected {what}"),
            ));
        }
        if n.inputs.first().map(String::as_str) != Some(value) && n.op_type != "Add" {
            return Err(self.err(i, format!("expected `{value}` as its first input")));
        }
        if self.visited[i] {
            return Err(self.err(i, "reached twice; the graph is not an IResNet"));
        }
        if !n.domain.is_empty() && n.domain != "ai.onnx" {
            return Err(self.err(i, format!("operator of domain `{}`", n.domain)));
        }
        self.visited[i] = true;
        Ok(i)
    }

    /// A float constant input of node `i`.
    fn constant(&self, i: usize, k: usize, what: &str) -> R<(Vec<f32>, Vec<usize>)> {
        let n = self.node(i);
        let name = n
            .inputs
            .get(k)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| self.err(i, format!("has no {what} input (#{k})")))?;
        self.model.floats(name).map_err(|e| match e {
            ModelError::MissingTensor { .. } => {
                self.err(i, format!("its {what} `{name}` is not a constant"))
            }
            e => e,
        })
    }

    /// The shape of constant input `k` of node `i`, without copying its values.
    fn constant_dims(&self, i: usize, k: usize) -> Option<Vec<usize>> {
        let name = self.node(i).inputs.get(k)?;
        match self.model.initializer(name) {
            Some(t) => Some(t.dims.clone()),
            None => self.model.constant(name).map(|t| t.dims),
        }
    }

    /// A per-channel vector (`[c]`, or `[c, 1, 1]` / `[1, c, 1, 1]`) of node `i`.
    fn channel_vector(&self, i: usize, k: usize, c: usize, what: &str) -> R<Vec<f32>> {
        let (v, dims) = self.constant(i, k, what)?;
        let non_unit: Vec<usize> = dims.iter().copied().filter(|&d| d != 1).collect();
        if v.len() != c || non_unit.len() > 1 {
            return Err(ModelError::Shape {
                path: self.model.path().to_path_buf(),
                name: self.node(i).inputs[k].clone(),
                found: dims,
                expected: format!(
                    "{c} values, one per channel ({what} of `{}`)",
                    self.node(i).label()
                ),
            });
        }
        Ok(v)
    }

    fn single_output(&self, i: usize) -> R<String> {
        let n = self.node(i);
        if n.outputs
            .iter()
            .skip(1)
            .any(|o| !o.is_empty() && !self.users(o).is_empty())
        {
            return Err(self.err(i, "more than one of its outputs is used"));
        }
        Ok(n.outputs[0].clone())
    }

    /// BatchNormalization node `i` over `c` channels as an affine.
    fn batch_norm(&self, i: usize, c: usize) -> R<Affine> {
        let n = self.node(i);
        if n.int("spatial").is_some_and(|s| s != 1) {
            return Err(self.err(
                i,
                "spatial=0, i.e. statistics per pixel, yet an IResNet has them per channel (old \
                 MXNet converters wrote spatial=0 by mistake; set it to 1 in the file)",
            ));
        }
        if n.int("training_mode").is_some_and(|t| t != 0) {
            return Err(self.err(
                i,
                "training_mode=1; expected an inference BatchNormalization",
            ));
        }
        let eps = f64::from(n.float("epsilon").unwrap_or(1e-5));
        let gamma = self.channel_vector(i, 1, c, "scale")?;
        let beta = self.channel_vector(i, 2, c, "bias")?;
        let mean = self.channel_vector(i, 3, c, "mean")?;
        let var = self.channel_vector(i, 4, c, "variance")?;
        let scale: Vec<f64> = (0..c)
            .map(|j| f64::from(gamma[j]) / (f64::from(var[j]) + eps).sqrt())
            .collect();
        let shift = (0..c)
            .map(|j| f64::from(beta[j]) - f64::from(mean[j]) * scale[j])
            .collect();
        Ok(Affine { scale, shift })
    }

    /// If `value` flows into a BatchNormalization, consumes it; returns it and its output.
    fn maybe_batch_norm(&mut self, value: &str, c: usize) -> R<(Option<Affine>, String)> {
        let (v, users) = self.follow(value)?;
        if let [i] = users.as_slice()
            && self.node(*i).op_type == "BatchNormalization"
        {
            let i = self.expect(*i, &v, &["BatchNormalization"], "BatchNormalization")?;
            return Ok((Some(self.batch_norm(i, c)?), self.single_output(i)?));
        }
        Ok((None, v))
    }

    /// Conv node `i` reading `c_in` channels with a `k`×`k` kernel and padding `k/2`; then
    /// the BatchNorm after it, if any, folded in. Returns the folded conv and the value after.
    fn conv(&mut self, i: usize, c_in: usize, k: usize) -> R<(FoldedConv, String)> {
        let n = self.node(i);
        let (w, dims) = self.constant(i, 1, "weight")?;
        if dims.len() != 4 || dims[1] != c_in || dims[2] != k || dims[3] != k {
            return Err(ModelError::Shape {
                path: self.model.path().to_path_buf(),
                name: n.inputs[1].clone(),
                found: dims,
                expected: format!(
                    "a conv weight [out, {c_in}, {k}, {k}] (node `{}`)",
                    n.label()
                ),
            });
        }
        let out = dims[0];
        let attr = |name: &str, default: Vec<i64>| n.ints(name).map_or(default, <[i64]>::to_vec);
        let strides = attr("strides", vec![1, 1]);
        let pads = attr("pads", vec![0; 4]);
        let (p, kk) = ((k / 2) as i64, k as i64);
        let auto_pad = match n.attr("auto_pad") {
            Some(crate::onnx::AttributeValue::String(s)) => String::from_utf8_lossy(s).into_owned(),
            _ => "NOTSET".into(),
        };
        if n.int("group").unwrap_or(1) != 1
            || attr("dilations", vec![1, 1]) != [1, 1]
            || attr("kernel_shape", vec![kk, kk]) != [kk, kk]
            || pads != [p, p, p, p]
            || strides.len() != 2
            || strides[0] != strides[1]
            || !(1..=2).contains(&strides[0])
            || auto_pad != "NOTSET"
        {
            return Err(self.err(
                i,
                format!(
                    "expected a {k}×{k} convolution, padding {p}, stride 1 or 2, no groups or \
                     dilation; found strides {strides:?}, pads {pads:?}, group {}, auto_pad {auto_pad}",
                    n.int("group").unwrap_or(1)
                ),
            ));
        }
        let bias = match n.inputs.get(2).filter(|s| !s.is_empty()) {
            Some(_) => self.channel_vector(i, 2, out, "bias")?,
            None => vec![0.0; out],
        };
        let (bn, after) = self.maybe_batch_norm(&self.single_output(i)?, out)?;
        let per = c_in * k * k;
        let (weight, bias) = match bn {
            None => (w, bias),
            Some(a) => (
                w.iter()
                    .enumerate()
                    .map(|(j, &x)| (f64::from(x) * a.scale[j / per]) as f32)
                    .collect(),
                (0..out)
                    .map(|o| (f64::from(bias[o]) * a.scale[o] + a.shift[o]) as f32)
                    .collect(),
            ),
        };
        Ok((
            FoldedConv {
                weight,
                shape: [out, c_in, k, k],
                bias,
                stride: strides[0] as usize,
                padding: k / 2,
            },
            after,
        ))
    }

    /// PRelu node `i` over `c` channels (one slope, or one per channel).
    fn prelu(&self, i: usize, c: usize) -> R<Vec<f32>> {
        let (v, _) = self.constant(i, 1, "slope")?;
        if v.len() == 1 {
            return Ok(vec![v[0]; c]);
        }
        self.channel_vector(i, 1, c, "slope")
    }

    fn parse(mut self) -> R<Parsed> {
        let model = self.model;
        let g = &model.graph;
        let input = g
            .inputs
            .iter()
            .find(|v| model.initializer(&v.name).is_none())
            .ok_or_else(|| self.format_err("the graph declares no input"))?;
        let mut input_size = 112;
        if let Some(shape) = &input.shape {
            let fixed = |d: &Dim| match d {
                Dim::Value(v) => Some(*v),
                _ => None,
            };
            match shape.as_slice() {
                [_, c, h, w] if fixed(c).is_none_or(|c| c == 3) => {
                    if let (Some(h), Some(w)) = (fixed(h), fixed(w)) {
                        if h != w || h <= 0 {
                            return Err(self.format_err(format!(
                                "input `{}` is {h}×{w}, expected a square image",
                                input.name
                            )));
                        }
                        input_size = h as usize;
                    }
                }
                _ => {
                    return Err(self.format_err(format!(
                        "input `{}` has shape {shape:?}, expected [batch, 3, height, width]",
                        input.name
                    )));
                }
            }
        }

        // Leading per-channel normalisation (Sub / Mul / Add / Div by constants).
        let mut x = input.name.clone();
        let mut input_ops = Vec::new();
        loop {
            let (v, users) = self.follow(&x)?;
            x = v;
            let [i] = users.as_slice() else { break };
            let n = self.node(*i);
            let op = match n.op_type.as_str() {
                "Sub" => ElementOp::Sub,
                "Add" => ElementOp::Add,
                "Mul" => ElementOp::Mul,
                "Div" => ElementOp::Div,
                _ => break,
            };
            let commutes = matches!(op, ElementOp::Add | ElementOp::Mul);
            let k = match (n.inputs.first() == Some(&x), n.inputs.get(1) == Some(&x)) {
                (true, false) => 1,
                (false, true) if commutes => 0,
                _ => {
                    return Err(
                        self.err(*i, "expected the input as the first operand and a constant")
                    );
                }
            };
            let (values, dims) = self.constant(*i, k, "operand")?;
            if !(values.len() == 1 || values.len() == 3)
                || dims.iter().filter(|&&d| d != 1).count() > 1
            {
                return Err(self.err(
                    *i,
                    format!("expected a scalar or per-channel operand, found shape {dims:?}"),
                ));
            }
            self.visited[*i] = true;
            input_ops.push(InputOp { op, values });
            x = self.single_output(*i)?;
        }

        // Stem: conv3x3(3, c) [→ bn1] → prelu.
        let i = self.next(&x, &["Conv"], "the stem convolution")?;
        let (stem, after) = self.conv(i, 3, 3)?;
        if stem.stride != 1 {
            return Err(self.err(i, "expected stride 1 in the stem"));
        }
        let stem_width = stem.shape[0];
        let i = self.next(&after, &["PRelu"], "the stem PReLU")?;
        let stem_prelu = self.prelu(i, stem_width)?;
        x = self.single_output(i)?;

        // Blocks: the input feeds the residual branch and the shortcut (the Add itself, or a
        // downsample convolution); the final bn2 feeds only Flatten.
        let mut c = stem_width;
        let mut side = input_size;
        let mut blocks = Vec::new();
        let mut layers: Vec<usize> = Vec::new();
        let mut widths: Vec<usize> = Vec::new();
        loop {
            let (v, users) = self.follow(&x)?;
            x = v;
            if users.len() < 2 {
                break;
            }
            let block_name = self.node(users[0]).label().to_string();
            if users.len() != 2 {
                return Err(self.format_err(format!(
                    "`{x}` feeds {} nodes; an IResNet block input feeds 2",
                    users.len()
                )));
            }
            let op = |i: usize| self.node(i).op_type.as_str();
            let is_1x1 = |i: usize| {
                op(i) == "Conv"
                    && self
                        .constant_dims(i, 1)
                        .is_some_and(|d| d.len() == 4 && d[2] == 1 && d[3] == 1)
            };
            let (branch, shortcut) = match (users[0], users[1]) {
                (a, b) if op(b) == "Add" || is_1x1(b) => (a, b),
                (a, b) if op(a) == "Add" || is_1x1(a) => (b, a),
                (a, _) => {
                    return Err(self.err(
                        a,
                        "expected an IResNet block: a BatchNormalization and \
                        a residual Add or a 1×1 downsample convolution reading the block input",
                    ));
                }
            };
            // Residual branch: [bn1] → conv1 [→ bn2] → prelu → conv2 [→ bn3] → Add.
            let bn1 = if op(branch) == "BatchNormalization" {
                let i = self.expect(branch, &x, &["BatchNormalization"], "bn1")?;
                let a = self.batch_norm(i, c)?;
                let i = self.next(&self.single_output(i)?, &["Conv"], "conv1 of the block")?;
                (a, i)
            } else {
                let i = self.expect(branch, &x, &["Conv"], "bn1 or conv1 of the block")?;
                (
                    Affine {
                        scale: vec![1.0; c],
                        shift: vec![0.0; c],
                    },
                    i,
                )
            };
            let (bn1, conv1_node) = bn1;
            let (conv1, after) = self.conv(conv1_node, c, 3)?;
            if conv1.stride != 1 {
                return Err(self.err(
                    conv1_node,
                    "expected stride 1 in a block's first convolution",
                ));
            }
            let planes = conv1.shape[0];
            let i = self.next(&after, &["PRelu"], "the block's PReLU")?;
            let prelu = self.prelu(i, planes)?;
            let i = self.next(&self.single_output(i)?, &["Conv"], "conv2 of the block")?;
            let conv2_node = i;
            let (conv2, branch_out) = self.conv(i, planes, 3)?;
            let stride = conv2.stride;
            // Shortcut.
            let (downsample, short_out) = if self.node(shortcut).op_type == "Add" {
                (None, x.clone())
            } else {
                let i = self.expect(shortcut, &x, &["Conv"], "the downsample convolution")?;
                let (d, out) = self.conv(i, c, 1)?;
                if d.shape[0] != planes || d.stride != stride {
                    return Err(self.err(i, format!(
                        "downsample to {} channels at stride {}, the branch gives {planes} at stride {stride}",
                        d.shape[0], d.stride
                    )));
                }
                (Some(d), self.follow(&out)?.0)
            };
            if downsample.is_none() && (stride != 1 || planes != c) {
                return Err(self.err(
                    conv2_node,
                    format!(
                        "a block without downsample must keep its shape; this one goes from {c} to \
                     {planes} channels at stride {stride}"
                    ),
                ));
            }
            let (branch_out, users) = self.follow(&branch_out)?;
            let add = match users.as_slice() {
                [a] if self.node(*a).op_type == "Add" => *a,
                _ => {
                    return Err(self.format_err(format!(
                        "block at `{block_name}`: `{branch_out}` should feed only the residual Add"
                    )));
                }
            };
            let n = self.node(add);
            let mut ins = n.inputs.clone();
            ins.sort();
            let mut want = vec![branch_out.clone(), short_out.clone()];
            want.sort();
            if ins != want {
                return Err(self.err(
                    add,
                    format!(
                        "expected the sum of `{branch_out}` and `{short_out}`, found {:?}",
                        n.inputs
                    ),
                ));
            }
            if self.visited[add] {
                return Err(self.err(add, "reached twice; the graph is not an IResNet"));
            }
            self.visited[add] = true;
            if downsample.is_some() || layers.is_empty() {
                layers.push(0);
                widths.push(planes);
            }
            *layers.last_mut().unwrap() += 1;
            *widths.last_mut().unwrap() = planes;
            side = (side + 2 - 3) / stride + 1;
            c = planes;
            blocks.push(ParsedBlock {
                bn1: (
                    bn1.scale.iter().map(|&v| v as f32).collect(),
                    bn1.shift.iter().map(|&v| v as f32).collect(),
                ),
                conv1,
                prelu,
                conv2,
                downsample,
            });
            x = self.single_output(add)?;
        }
        if blocks.is_empty() {
            return Err(self.format_err(format!(
                "no IResNet block after the stem (at `{x}`); is it an ArcFace IResNet?"
            )));
        }

        // Head: [bn2] → Flatten → [Dropout] → fc (Gemm, or MatMul [+ Add]) [→ features].
        let (bn2, after) = self.maybe_batch_norm(&x, c)?;
        let i = self.next(&after, &["Flatten", "Reshape"], "Flatten")?;
        let k = c * side * side;
        let n = self.node(i);
        let flat_ok = if n.op_type == "Flatten" {
            n.int("axis").unwrap_or(1) == 1
        } else {
            n.inputs
                .get(1)
                .and_then(|s| self.model.constant(s))
                .is_some_and(|t| match t.values {
                    crate::onnx::TensorValues::I64(v) => {
                        v.len() == 2 && (v[1] == -1 || v[1] == k as i64)
                    }
                    _ => false,
                })
        };
        if !flat_ok {
            return Err(self.err(i, format!("expected a flatten to [batch, {k}]")));
        }
        x = self.single_output(i)?;
        let i = self.next(&x, &["Gemm", "MatMul"], "the fc layer")?;
        let n = self.node(i);
        let (w, dims) = self.constant(i, 1, "weight")?;
        let trans_b = n.op_type == "Gemm" && n.int("transB").unwrap_or(0) != 0;
        let e = match (dims.as_slice(), trans_b) {
            ([e, kk], true) if *kk == k => *e,
            ([kk, e], false) if *kk == k => *e,
            _ => {
                return Err(ModelError::Shape {
                    path: self.model.path().to_path_buf(),
                    name: n.inputs[1].clone(),
                    found: dims,
                    expected: format!(
                        "the fc weight over {c}×{side}×{side} = {k} inputs (node `{}`; the \
                         input is {input_size}×{input_size})",
                        n.label()
                    ),
                });
            }
        };
        let (alpha, beta) = if n.op_type == "Gemm" {
            if n.int("transA").unwrap_or(0) != 0 {
                return Err(self.err(i, "transA is not supported"));
            }
            (
                f64::from(n.float("alpha").unwrap_or(1.0)),
                f64::from(n.float("beta").unwrap_or(1.0)),
            )
        } else {
            (1.0, 1.0)
        };
        let mut bias: Vec<f64> = vec![0.0; e];
        if n.op_type == "Gemm" && n.inputs.get(2).is_some_and(|s| !s.is_empty()) {
            let b = self.channel_vector(i, 2, e, "bias")?;
            bias = b.iter().map(|&v| f64::from(v) * beta).collect();
        }
        x = self.single_output(i)?;
        if n.op_type == "MatMul" {
            let (v, users) = self.follow(&x)?;
            x = v;
            if let [a] = users.as_slice()
                && self.node(*a).op_type == "Add"
            {
                let a = *a;
                let n = self.node(a);
                let k = if n.inputs[0] == x { 1 } else { 0 };
                let b = self.channel_vector(a, k, e, "bias")?;
                self.visited[a] = true;
                bias = b.iter().map(|&v| f64::from(v)).collect();
                x = self.single_output(a)?;
            }
        }
        let (features, after) = self.maybe_batch_norm(&x, e)?;
        x = self.follow(&after)?.0;
        if !g.outputs.iter().any(|o| o.name == x) {
            let (_, users) = self.follow(&x)?;
            return match users.first() {
                Some(&i) => Err(self.err(i, "unexpected node after the embedding")),
                None => Err(self.format_err(format!("`{x}` is not a graph output"))),
            };
        }
        if let Some(i) =
            (0..g.nodes.len()).find(|&i| !self.visited[i] && self.node(i).op_type != "Constant")
        {
            return Err(self.err(i, "not part of the IResNet the graph was matched to"));
        }

        // Fold bn2 (per input channel, the flatten is channel-major) and features into fc.
        let hw = side * side;
        let mut fc_weight = vec![0f32; k * e];
        let mut fc_bias = vec![0f32; e];
        for o in 0..e {
            let (fs, ft) = features
                .as_ref()
                .map_or((1.0, 0.0), |f| (f.scale[o], f.shift[o]));
            let mut b = bias[o];
            for j in 0..k {
                let wv = alpha * f64::from(if trans_b { w[o * k + j] } else { w[j * e + o] });
                let (s2, t2) = bn2
                    .as_ref()
                    .map_or((1.0, 0.0), |a| (a.scale[j / hw], a.shift[j / hw]));
                fc_weight[j * e + o] = (wv * s2 * fs) as f32;
                b += wv * t2;
            }
            fc_bias[o] = (b * fs + ft) as f32;
        }

        let config = IResNetConfig::new(layers)
            .with_widths(widths)
            .with_stem_width(stem_width)
            .with_embedding_size(e)
            .with_input_size(input_size);
        Ok(Parsed {
            input_ops,
            stem,
            stem_prelu,
            blocks,
            fc_weight,
            fc_shape: [k, e],
            fc_bias,
            config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn presets_have_the_upstream_block_counts() {
        assert_eq!(IResNetConfig::r50().layers, [3, 4, 14, 3]);
        assert_eq!(IResNetConfig::r100().layers, [3, 13, 30, 3]);
        assert_eq!(IResNetConfig::r100().preset_name(), Some("r100"));
        assert_eq!(IResNetConfig::new(vec![1, 1]).preset_name(), None);
        assert_eq!(IResNetConfig::r50().final_side(), 7);
    }

    #[test]
    fn random_network_output_shape() {
        let config = IResNetConfig::new(vec![1, 2, 1, 1])
            .with_widths(vec![2, 4, 4, 8])
            .with_stem_width(2)
            .with_embedding_size(5);
        let net = config.init::<Flex>(&Default::default());
        let crop = vec![128u8; 112 * 112 * 3];
        let view = RgbView {
            width: 112,
            height: 112,
            data: &crop,
        };
        let x = net.input(&[view, view], &Default::default());
        assert_eq!(net.forward(x).dims(), [2, 5]);
        assert_eq!(net.embed(view).len(), 5);
    }

    #[test]
    #[should_panic(expected = "aligned crop of 112×112 RGB expected")]
    fn input_refuses_unaligned_crops() {
        let net = IResNetConfig::new(vec![1])
            .with_widths(vec![2])
            .with_stem_width(2)
            .init::<Flex>(&Default::default());
        let data = vec![0u8; 100 * 100 * 3];
        let view = RgbView {
            width: 100,
            height: 100,
            data: &data,
        };
        net.input(&[view], &Default::default());
    }

    #[test]
    fn normalisation_helpers() {
        let n = l2_normalize(&[3.0, 4.0]);
        assert_eq!(n, vec![0.6, 0.8]);
        assert_eq!(l2_normalize(&[0.0, 0.0]), vec![0.0, 0.0]);
        assert!((cosine_similarity(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn insightface_input_rule_reads_node_names() {
        let node = |name: &str| Node {
            name: name.into(),
            ..Default::default()
        };
        let mx = [node("_minusscalar0"), node("_mulscalar0"), node("conv0")];
        assert_eq!(InputNorm::for_graph(&mx), InputNorm::RAW);
        let torch = [node("/conv1/Conv"), node("/prelu/PRelu")];
        assert_eq!(InputNorm::for_graph(&torch), InputNorm::ARCFACE);
        assert_eq!(InputNorm::for_graph(&[node("Sub_0")]), InputNorm::ARCFACE);
    }
}
