//! `ssd_mobilenetv1`: the accurate face-api detector, an SSD head on a MobileNetV1 backbone.
//! Follows `ssdMobilenetv1/SsdMobilenetv1.ts` (`forwardInput`, `locateFaces`), `mobileNetV1.ts`,
//! `pointwiseConvLayer.ts`, `predictionLayer.ts`, `boxPredictionLayer.ts`, `outputLayer.ts`
//! and `nonMaxSuppression.ts`.
//!
//! Input: the image zero-padded bottom/right to a square, resized to 512 (tfjs legacy
//! bilinear), `x / 127.5 − 1`. Backbone: a 3×3 conv (stride 2) then 13 depthwise (batch norm,
//! ReLU6) + pointwise (bias, ReLU6) pairs, strides 2 at pairs 2, 4, 6, 12. Head: eight extra
//! convolutions and six box predictors (on pair 11's output, the backbone output and extra
//! convs 1, 3, 5, 7), 5118 anchors in all, decoded against the packaged anchors
//! (`Output/extra_dim`) with the TF Object Detection API scales 10, 10, 5, 5.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};

use super::Detection;
use super::layers::pad_same;
use super::preprocess::{RgbView, reshaped_dims, to_square_input};
use crate::error::ModelError;
use crate::readback::ReadBack;
use crate::tfjs::{TfjsWeights, Values};

/// The network input side (`toBatchTensor(512, false)`).
pub const INPUT_SIZE: usize = 512;
/// `epsilon` of `mobileNetV1.ts`.
const BN_EPSILON: f32 = 0.001; // 0.0010000000474974513 in the source: the same float32
/// The NMS IoU threshold of `locateFaces`.
const IOU_THRESHOLD: f64 = 0.5;
/// Anchors per cell of box predictor 0 (3) and of the others (6).
const ANCHORS_PER_CELL: [usize; 6] = [3, 6, 6, 6, 6, 6];

/// A convolution with bias (ReLU6 optional), TF 'same' padding; `pointwiseConvLayer` (whose
/// bias is the folded batch-norm offset), the depthwise layer with its batch norm folded in, and
/// the predictors' `convLayer`.
#[derive(Module, Debug)]
struct ConvBias<B: Backend> {
    filters: Param<Tensor<B, 4>>,
    bias: Param<Tensor<B, 1>>,
    stride: usize,
    groups: usize,
    relu6: bool,
}

impl<B: Backend> ConvBias<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let k = self.filters.val().dims()[2];
        // 1×1 convolutions run at stride 1 only, where 'same' adds nothing.
        let (x, p) = if k == 3 && self.stride == 1 {
            (x, 1)
        } else if k == 3 {
            (pad_same(x, self.stride), 0)
        } else {
            (x, 0)
        };
        let out = conv2d(
            x,
            self.filters.val(),
            Some(self.bias.val()),
            ConvOptions::new([self.stride, self.stride], [p, p], [1, 1], self.groups),
        );
        if self.relu6 { out.clamp(0.0, 6.0) } else { out }
    }
}

fn pointwise<B: Backend>(
    w: &TfjsWeights,
    prefix: &str,
    stride: usize,
    device: &B::Device,
) -> Result<ConvBias<B>, ModelError> {
    Ok(ConvBias {
        filters: Param::from_tensor(w.conv2d(&format!("{prefix}/weights"), device)?),
        bias: Param::from_tensor(w.tensor(&format!("{prefix}/convolution_bn_offset"), device)?),
        stride,
        groups: 1,
        relu6: true,
    })
}

/// `depthwiseConvLayer` with `batchNorm(x, mean, variance, offset, scale)` folded into the
/// filters and a bias: `x·s + (offset − mean·s)`, `s = scale / √(variance + ε)`.
fn depthwise<B: Backend>(
    w: &TfjsWeights,
    idx: usize,
    stride: usize,
    device: &B::Device,
) -> Result<ConvBias<B>, ModelError> {
    let p = format!("MobilenetV1/Conv2d_{idx}_depthwise");
    let vec = |name: &str| -> Result<Vec<f32>, ModelError> {
        match &w.get(&format!("{p}/BatchNorm/{name}"))?.values {
            Values::F32(v) => Ok(v.clone()),
            Values::I32(_) => Err(ModelError::Shape {
                path: w.manifest().to_path_buf(),
                name: format!("{p}/BatchNorm/{name}"),
                found: vec![],
                expected: "float32 batch-norm parameters".into(),
            }),
        }
    };
    let (gamma, beta, mean, var) = (
        vec("gamma")?,
        vec("beta")?,
        vec("moving_mean")?,
        vec("moving_variance")?,
    );
    let scale: Vec<f32> = gamma
        .iter()
        .zip(&var)
        .map(|(g, v)| g / (v + BN_EPSILON).sqrt())
        .collect();
    let bias: Vec<f32> = beta
        .iter()
        .zip(&mean)
        .zip(&scale)
        .map(|((b, m), s)| b - m * s)
        .collect();
    let filters = w.depthwise::<B>(&format!("{p}/depthwise_weights"), device)?;
    let channels = filters.dims()[0];
    if scale.len() != channels {
        return Err(ModelError::Shape {
            path: w.manifest().to_path_buf(),
            name: format!("{p}/BatchNorm/gamma"),
            found: vec![scale.len()],
            expected: format!("{channels} channels, as the depthwise filter has"),
        });
    }
    let scale = Tensor::<B, 1>::from_data(TensorData::new(scale, [channels]), device);
    Ok(ConvBias {
        filters: Param::from_tensor(filters * scale.reshape([channels, 1, 1, 1])),
        bias: Param::from_tensor(Tensor::from_data(TensorData::new(bias, [channels]), device)),
        stride,
        groups: channels,
        relu6: true,
    })
}

/// One box predictor: box encodings and class logits merged into one 1×1 convolution.
#[derive(Module, Debug)]
struct BoxPredictor<B: Backend> {
    conv: ConvBias<B>,
    anchors: usize,
}

impl<B: Backend> BoxPredictor<B> {
    fn load(w: &TfjsWeights, idx: usize, device: &B::Device) -> Result<Self, ModelError> {
        let p = format!("Prediction/BoxPredictor_{idx}");
        let anchors = ANCHORS_PER_CELL[idx];
        let conv = |name: &str| w.conv2d::<B>(&format!("{p}/{name}/weights"), device);
        let bias = |name: &str| w.tensor::<B, 1>(&format!("{p}/{name}/biases"), device);
        let (bf, cf) = (conv("BoxEncodingPredictor")?, conv("ClassPredictor")?);
        for (name, f, per) in [("BoxEncodingPredictor", &bf, 4), ("ClassPredictor", &cf, 3)] {
            if f.dims()[0] != anchors * per {
                return Err(ModelError::Shape {
                    path: w.manifest().to_path_buf(),
                    name: format!("{p}/{name}/weights"),
                    found: f.dims().to_vec(),
                    expected: format!("{} output channels", anchors * per),
                });
            }
        }
        Ok(BoxPredictor {
            conv: ConvBias {
                filters: Param::from_tensor(Tensor::cat(vec![bf, cf], 0)),
                bias: Param::from_tensor(Tensor::cat(
                    vec![bias("BoxEncodingPredictor")?, bias("ClassPredictor")?],
                    0,
                )),
                stride: 1,
                groups: 1,
                relu6: false,
            },
            anchors,
        })
    }

    /// `[batch, cells·anchors, 7]`: four box encodings then three class logits per anchor, in
    /// TF's (row, column, anchor) order.
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 3> {
        let out = self.conv.forward(x);
        let [b, _, h, w] = out.dims();
        let a = self.anchors;
        // Channels are [a·4 box values | a·3 class values]; bring them next to their anchor.
        let nhwc = out.permute([0, 2, 3, 1]);
        let boxes = nhwc.clone().narrow(3, 0, a * 4).reshape([b, h * w * a, 4]);
        let classes = nhwc.narrow(3, a * 4, a * 3).reshape([b, h * w * a, 3]);
        Tensor::cat(vec![boxes, classes], 2)
    }
}

/// The SSD MobileNetV1 face detector with its weights.
#[derive(Module, Debug)]
pub struct SsdMobilenetV1<B: Backend> {
    conv0: ConvBias<B>,
    /// The 13 (depthwise, pointwise) pairs.
    pairs: Vec<(ConvBias<B>, ConvBias<B>)>,
    /// `prediction_layer` conv_0 … conv_7.
    extra: Vec<ConvBias<B>>,
    predictors: Vec<BoxPredictor<B>>,
    /// `[5118, 4]` anchors as `[ymin, xmin, ymax, xmax]` in the unit square.
    anchors: Vec<[f32; 4]>,
}

impl<B: Backend> SsdMobilenetV1<B> {
    /// Builds the network from `ssd_mobilenetv1_model-weights_manifest.json`.
    pub fn load(weights: &TfjsWeights, device: &B::Device) -> Result<Self, ModelError> {
        let conv0 = pointwise(weights, "MobilenetV1/Conv2d_0_pointwise", 2, device)?;
        let pairs = (1..=13)
            .map(|i| {
                let stride = if [2, 4, 6, 12].contains(&i) { 2 } else { 1 };
                Ok((
                    depthwise(weights, i, stride, device)?,
                    pointwise(
                        weights,
                        &format!("MobilenetV1/Conv2d_{i}_pointwise"),
                        1,
                        device,
                    )?,
                ))
            })
            .collect::<Result<_, ModelError>>()?;
        let extra = (0..8)
            .map(|i| {
                let stride = if i % 2 == 1 { 2 } else { 1 };
                pointwise(
                    weights,
                    &format!("Prediction/Conv2d_{i}_pointwise"),
                    stride,
                    device,
                )
            })
            .collect::<Result<_, _>>()?;
        let predictors = (0..6)
            .map(|i| BoxPredictor::load(weights, i, device))
            .collect::<Result<_, _>>()?;
        let t = weights.get("Output/extra_dim")?;
        let anchors = match &t.values {
            Values::F32(v) if t.shape.len() == 3 && t.shape[0] == 1 && t.shape[2] == 4 => v
                .chunks_exact(4)
                .map(|c| [c[0], c[1], c[2], c[3]])
                .collect::<Vec<_>>(),
            _ => {
                return Err(ModelError::Shape {
                    path: weights.manifest().to_path_buf(),
                    name: "Output/extra_dim".into(),
                    found: t.shape.clone(),
                    expected: "float32 anchors [1, n, 4]".into(),
                });
            }
        };
        Ok(SsdMobilenetV1 {
            conv0,
            pairs,
            extra,
            predictors,
            anchors,
        })
    }

    /// The normalised input `[1, 3, 512, 512]` for an RGB image.
    pub fn input(img: RgbView<'_>, device: &B::Device) -> Tensor<B, 4> {
        let mut hwc = to_square_input(img, INPUT_SIZE, false);
        for v in &mut hwc {
            *v = *v / 127.5 - 1.0;
        }
        Tensor::<B, 3>::from_data(TensorData::new(hwc, [INPUT_SIZE, INPUT_SIZE, 3]), device)
            .permute([2, 0, 1])
            .unsqueeze()
    }

    /// The raw predictions of every anchor.
    ///
    /// # Shapes
    /// - `x`: `[batch, 3, 512, 512]`, as [`Self::input`] makes it
    /// - output: `[batch, 5118, 7]`: box encodings `ty, tx, th, tw`, then three class logits
    ///   (index 1 is "face")
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 3> {
        let mut x = self.conv0.forward(x);
        let mut conv11 = None;
        for (i, (dw, pw)) in self.pairs.iter().enumerate() {
            x = pw.forward(dw.forward(x));
            if i + 1 == 11 {
                conv11 = Some(x.clone());
            }
        }
        let conv11 = conv11.expect("13 layer pairs");
        let mut features = vec![conv11, x.clone()];
        let mut y = x;
        for (i, conv) in self.extra.iter().enumerate() {
            y = conv.forward(y);
            if i % 2 == 1 {
                features.push(y.clone());
            }
        }
        let outs = self
            .predictors
            .iter()
            .zip(features)
            .map(|(p, f)| p.forward(f))
            .collect();
        Tensor::cat(outs, 1)
    }

    /// Decodes raw predictions (the `[anchors·7]` values of one image from [`Self::forward`]) into boxes
    /// `[ymin, xmin, ymax, xmax]` in the padded unit square and face scores, as `outputLayer`
    /// does, each step rounded to float32 as tfjs stores it.
    pub fn decode(&self, raw: &[f32]) -> (Vec<[f64; 4]>, Vec<f32>) {
        let mut boxes = Vec::with_capacity(self.anchors.len());
        let mut scores = Vec::with_capacity(self.anchors.len());
        let exp = |v: f32| f64::from(v).exp() as f32;
        for (a, p) in self.anchors.iter().zip(raw.chunks_exact(7)) {
            let (sy, sx) = (a[2] - a[0], a[3] - a[1]);
            let (cy, cx) = (a[0] + sy / 2.0, a[1] + sx / 2.0);
            let half_h = exp(p[2] / 5.0) * sy / 2.0;
            let center_y = p[0] / 10.0 * sy + cy;
            let half_w = exp(p[3] / 5.0) * sx / 2.0;
            let center_x = p[1] / 10.0 * sx + cx;
            boxes.push([
                f64::from(center_y - half_h),
                f64::from(center_x - half_w),
                f64::from(center_y + half_h),
                f64::from(center_x + half_w),
            ]);
            scores.push((1.0 / (1.0 + (-f64::from(p[5])).exp())) as f32);
        }
        (boxes, scores)
    }

    /// Faces in `img` scoring above `min_confidence`, at most `max_results`, in image pixels
    /// (`locateFaces`; face-api's defaults are 0.5 and 100).
    pub fn detect(
        &self,
        img: RgbView<'_>,
        min_confidence: f32,
        max_results: usize,
    ) -> Vec<Detection> {
        let device = self.conv0.bias.val().device();
        let raw: Vec<f32> = self.forward(Self::input(img, &device)).to_f32_vec();
        let (boxes, scores) = self.decode(&raw);
        let keep = nms(&boxes, &scores, max_results, IOU_THRESHOLD, min_confidence);
        // Back from the padded square to the image (with the rounded reshaped size, as there).
        let (rw, rh) = reshaped_dims(img.width, img.height, INPUT_SIZE);
        let (pad_x, pad_y) = (INPUT_SIZE as f64 / rw as f64, INPUT_SIZE as f64 / rh as f64);
        let (iw, ih) = (img.width as f64, img.height as f64);
        keep.into_iter()
            .map(|i| {
                let b = boxes[i];
                let (top, bottom) = (b[0].max(0.0) * pad_y, b[2].min(1.0) * pad_y);
                let (left, right) = (b[1].max(0.0) * pad_x, b[3].min(1.0) * pad_x);
                Detection {
                    score: scores[i],
                    x: left * iw,
                    y: top * ih,
                    width: (right - left) * iw,
                    height: (bottom - top) * ih,
                }
            })
            .collect()
    }
}

/// `ssdMobilenetv1/nonMaxSuppression.ts`: candidates above the threshold by descending score
/// (stable), each kept unless it overlaps an already kept box by more than `iou_threshold`.
fn nms(
    boxes: &[[f64; 4]],
    scores: &[f32],
    max_results: usize,
    iou_threshold: f64,
    score_threshold: f32,
) -> Vec<usize> {
    let mut candidates: Vec<usize> = (0..scores.len())
        .filter(|&i| scores[i] > score_threshold)
        .collect();
    candidates.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let limit = max_results.min(boxes.len());
    let mut selected: Vec<usize> = Vec::new();
    for c in candidates {
        if selected.len() >= limit {
            break;
        }
        // A zero score is dropped as soon as one IoU passes the threshold; the reference's
        // `score *= 0` then `break` amounts to the same.
        let suppressed = selected
            .iter()
            .rev()
            .any(|&s| ssd_iou(&boxes[c], &boxes[s]) > iou_threshold);
        if !suppressed {
            selected.push(c);
        }
    }
    selected
}

/// The IoU of `nonMaxSuppression.ts`, on `[ymin, xmin, ymax, xmax]` boxes whose corners may be
/// swapped; 0 when either area is not positive.
fn ssd_iou(i: &[f64; 4], j: &[f64; 4]) -> f64 {
    let norm = |b: &[f64; 4]| {
        [
            b[0].min(b[2]),
            b[1].min(b[3]),
            b[0].max(b[2]),
            b[1].max(b[3]),
        ]
    };
    let (a, b) = (norm(i), norm(j));
    let area = |r: [f64; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    let (area_a, area_b) = (area(a), area(b));
    if area_a <= 0.0 || area_b <= 0.0 {
        return 0.0;
    }
    let inter =
        (a[2].min(b[2]) - a[0].max(b[0])).max(0.0) * (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    inter / (area_a + area_b - inter)
}
