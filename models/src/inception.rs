//! The Inception-v3 of FID: pytorch-fid's `FIDInceptionA/C/E_1/E_2` variant of torchvision's
//! Inception3 (the port of TensorFlow's 2015-12-05 graph), loaded from the user's
//! `pt_inception-2015-12-05-6726825d.pth` with burn's PyTorch store; pool3 features (2048-d)
//! and logits (1008 classes), and the two preprocessing modes FID implementations use.
//!
//! Follows pytorch-fid 0.3.0 `src/pytorch_fid/inception.py` (`fid_inception_v3`,
//! `InceptionV3` with `output_blocks=[3]`) over torchvision 0.20 `models/inception.py`: every
//! convolution is a `BasicConv2d` (conv without bias → BatchNorm eps 1e-3 → ReLU; the BatchNorm
//! is folded into the convolution at load time, in double precision); the FID blocks differ from
//! torchvision's in their average pools (`count_include_pad=False`, TensorFlow's) and in
//! `Mixed_7c`'s max pool where the paper has an average pool. pool3 is the global average of
//! `Mixed_7c`; the logits are `fc` on it (dropout is off at inference).
//!
//! Preprocessing ([`FidPreprocess`]):
//! - [`FidPreprocess::Clean`], clean-fid's default mode: each channel of the 8-bit image resized
//!   to 299 × 299 as a Pillow mode-`F` image with bicubic (float, no quantisation), clipped to
//!   [0, 255], then `(x − 128) / 128` (clean-fid's `InceptionV3W` on its TorchScript port of the
//!   same TensorFlow graph).
//! - [`FidPreprocess::LegacyPytorch`], pytorch-fid's `InceptionV3(resize_input=True,
//!   normalize_input=True)` (clean-fid's `legacy_pytorch`): torch `F.interpolate(x, (299, 299),
//!   mode="bilinear", align_corners=False)` on `ToTensor()`'s [0, 1] image, then `2x − 1`.
//!
//! The channel counts are torchvision's divided by [`InceptionConfig::width_divisor`] (1 for the
//! real network): the committed test fixture is the same graph 16 times narrower.

use std::path::Path;

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::{avg_pool2d, conv2d, linear, max_pool2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Tensor, TensorData};

use crate::error::ModelError;
use crate::face_api::preprocess::RgbView;
use crate::readback::ReadBack;
use crate::weights::WeightStore;

/// Hands out a tensor's values by state-dict name and expected shape (from a file, or random).
type Getter<'a> = dyn Fn(&str, &[usize]) -> Result<Vec<f32>, ModelError> + 'a;

/// Side of the network input.
pub const FID_INPUT_SIZE: usize = 299;

/// BatchNorm epsilon of torchvision's `BasicConv2d` (TensorFlow's 0.001).
const BN_EPS: f64 = 1e-3;

/// The shape of an FID Inception.
#[derive(Config, Debug, PartialEq, Eq)]
pub struct InceptionConfig {
    /// Every channel count of torchvision's Inception3 (input excepted) divided by this; all
    /// of them are multiples of 16.
    #[config(default = 1)]
    pub width_divisor: usize,
    /// Classes of `fc` (1008 in the FID weights: TensorFlow's 1000 plus unused ones).
    #[config(default = 1008)]
    pub num_classes: usize,
}

/// One `BasicConv2d`: upstream name prefix, channels, kernel `(h, w)`, stride, padding `(h, w)`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConvSpec {
    name: String,
    cin: usize,
    cout: usize,
    kernel: (usize, usize),
    stride: usize,
    padding: (usize, usize),
}

impl InceptionConfig {
    /// pytorch-fid's network as `pt_inception-2015-12-05-6726825d.pth` fills it.
    pub fn fid() -> Self {
        Self::new()
    }

    /// The config a state dict implies: the width from `Conv2d_1a_3x3` (32 output channels at
    /// full width), the classes from `fc`.
    fn from_file(file: &WeightStore) -> Result<Self, ModelError> {
        let shape = |name: &str| {
            file.shape(name)
                .map(<[usize]>::to_vec)
                .ok_or_else(|| ModelError::MissingTensor {
                    path: file.origin().to_path_buf(),
                    name: name.to_string(),
                    available: file.len(),
                })
        };
        let stem = shape("Conv2d_1a_3x3.conv.weight")?;
        let fc = shape("fc.weight")?;
        if stem.len() != 4 || stem[0] == 0 || 32 % stem[0] != 0 || fc.len() != 2 {
            return Err(ModelError::Shape {
                path: file.origin().to_path_buf(),
                name: "Conv2d_1a_3x3.conv.weight".into(),
                found: stem,
                expected: "[32 / d, 3, 3, 3] for a divisor d of 32".into(),
            });
        }
        Ok(Self::new()
            .with_width_divisor(32 / stem[0])
            .with_num_classes(fc[0]))
    }

    /// Width of pool3.
    pub fn features(&self) -> usize {
        2048 / self.width_divisor
    }

    /// Every `BasicConv2d` in forward order (the order [`FidInception`] consumes them).
    fn conv_specs(&self) -> Vec<ConvSpec> {
        let w = |c: usize| c / self.width_divisor;
        let mut v = Vec::new();
        let mut conv = |name: String, cin, cout, kernel, stride, padding| {
            v.push(ConvSpec {
                name,
                cin,
                cout,
                kernel,
                stride,
                padding,
            })
        };
        let k = |n| (n, n);
        conv("Conv2d_1a_3x3".into(), 3, w(32), k(3), 2, k(0));
        conv("Conv2d_2a_3x3".into(), w(32), w(32), k(3), 1, k(0));
        conv("Conv2d_2b_3x3".into(), w(32), w(64), k(3), 1, k(1));
        conv("Conv2d_3b_1x1".into(), w(64), w(80), k(1), 1, k(0));
        conv("Conv2d_4a_3x3".into(), w(80), w(192), k(3), 1, k(0));
        for (m, cin, pool) in [
            ("Mixed_5b", 192, 32),
            ("Mixed_5c", 256, 64),
            ("Mixed_5d", 288, 64),
        ] {
            let (cin, n) = (w(cin), |b: &str| format!("{m}.{b}"));
            conv(n("branch1x1"), cin, w(64), k(1), 1, k(0));
            conv(n("branch5x5_1"), cin, w(48), k(1), 1, k(0));
            conv(n("branch5x5_2"), w(48), w(64), k(5), 1, k(2));
            conv(n("branch3x3dbl_1"), cin, w(64), k(1), 1, k(0));
            conv(n("branch3x3dbl_2"), w(64), w(96), k(3), 1, k(1));
            conv(n("branch3x3dbl_3"), w(96), w(96), k(3), 1, k(1));
            conv(n("branch_pool"), cin, w(pool), k(1), 1, k(0));
        }
        let (cin, n) = (w(288), |b: &str| format!("Mixed_6a.{b}"));
        conv(n("branch3x3"), cin, w(384), k(3), 2, k(0));
        conv(n("branch3x3dbl_1"), cin, w(64), k(1), 1, k(0));
        conv(n("branch3x3dbl_2"), w(64), w(96), k(3), 1, k(1));
        conv(n("branch3x3dbl_3"), w(96), w(96), k(3), 2, k(0));
        for (m, c7) in [
            ("Mixed_6b", 128),
            ("Mixed_6c", 160),
            ("Mixed_6d", 160),
            ("Mixed_6e", 192),
        ] {
            let (cin, c7, n) = (w(768), w(c7), |b: &str| format!("{m}.{b}"));
            let (row, col) = (((1, 7), (0, 3)), ((7, 1), (3, 0)));
            conv(n("branch1x1"), cin, w(192), k(1), 1, k(0));
            conv(n("branch7x7_1"), cin, c7, k(1), 1, k(0));
            conv(n("branch7x7_2"), c7, c7, row.0, 1, row.1);
            conv(n("branch7x7_3"), c7, w(192), col.0, 1, col.1);
            conv(n("branch7x7dbl_1"), cin, c7, k(1), 1, k(0));
            conv(n("branch7x7dbl_2"), c7, c7, col.0, 1, col.1);
            conv(n("branch7x7dbl_3"), c7, c7, row.0, 1, row.1);
            conv(n("branch7x7dbl_4"), c7, c7, col.0, 1, col.1);
            conv(n("branch7x7dbl_5"), c7, w(192), row.0, 1, row.1);
            conv(n("branch_pool"), cin, w(192), k(1), 1, k(0));
        }
        let (cin, n) = (w(768), |b: &str| format!("Mixed_7a.{b}"));
        conv(n("branch3x3_1"), cin, w(192), k(1), 1, k(0));
        conv(n("branch3x3_2"), w(192), w(320), k(3), 2, k(0));
        conv(n("branch7x7x3_1"), cin, w(192), k(1), 1, k(0));
        conv(n("branch7x7x3_2"), w(192), w(192), (1, 7), 1, (0, 3));
        conv(n("branch7x7x3_3"), w(192), w(192), (7, 1), 1, (3, 0));
        conv(n("branch7x7x3_4"), w(192), w(192), k(3), 2, k(0));
        for (m, cin) in [("Mixed_7b", 1280), ("Mixed_7c", 2048)] {
            let (cin, n) = (w(cin), |b: &str| format!("{m}.{b}"));
            conv(n("branch1x1"), cin, w(320), k(1), 1, k(0));
            conv(n("branch3x3_1"), cin, w(384), k(1), 1, k(0));
            conv(n("branch3x3_2a"), w(384), w(384), (1, 3), 1, (0, 1));
            conv(n("branch3x3_2b"), w(384), w(384), (3, 1), 1, (1, 0));
            conv(n("branch3x3dbl_1"), cin, w(448), k(1), 1, k(0));
            conv(n("branch3x3dbl_2"), w(448), w(384), k(3), 1, k(1));
            conv(n("branch3x3dbl_3a"), w(384), w(384), (1, 3), 1, (0, 1));
            conv(n("branch3x3dbl_3b"), w(384), w(384), (3, 1), 1, (1, 0));
            conv(n("branch_pool"), cin, w(192), k(1), 1, k(0));
        }
        v
    }

    /// Every parameter the network reads, with its state-dict name and shape, in load order
    /// (BatchNorm's `num_batches_tracked` is not read).
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut v = Vec::new();
        for s in self.conv_specs() {
            v.push((
                format!("{}.conv.weight", s.name),
                vec![s.cout, s.cin, s.kernel.0, s.kernel.1],
            ));
            for p in ["weight", "bias", "running_mean", "running_var"] {
                v.push((format!("{}.bn.{p}", s.name), vec![s.cout]));
            }
        }
        v.push(("fc.weight".into(), vec![self.num_classes, self.features()]));
        v.push(("fc.bias".into(), vec![self.num_classes]));
        v
    }

    /// A network of this shape with random weights (He-normal convolutions, identity
    /// BatchNorms), for tests and timing; its features mean nothing.
    pub fn init<B: Backend>(&self, device: &B::Device) -> FidInception<B> {
        let random = |shape: &[usize], std: f64| {
            let n: usize = shape.iter().product();
            Tensor::<B, 1>::random([n], Distribution::Normal(0.0, std), device).to_f32_vec()
        };
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>, ModelError> {
            let n: usize = shape.iter().product();
            Ok(if name.ends_with("conv.weight") || name == "fc.weight" {
                random(
                    shape,
                    (2.0 / shape[1..].iter().product::<usize>() as f64).sqrt(),
                )
            } else if name.ends_with("bn.weight") || name.ends_with("running_var") {
                vec![1.0; n]
            } else {
                vec![0.0; n]
            })
        };
        FidInception::build(self, &get, device).expect("random weights fit their own shapes")
    }
}

/// A convolution with its BatchNorm folded in, then ReLU.
#[derive(Module, Debug)]
struct ConvBn<B: Backend> {
    /// `[out, in, kh, kw]`
    weight: Param<Tensor<B, 4>>,
    /// `[out]`
    bias: Param<Tensor<B, 1>>,
    stride: usize,
    pad_h: usize,
    pad_w: usize,
}

impl<B: Backend> ConvBn<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let s = self.stride;
        let (weight, bias) = (self.weight.val(), self.bias.val());
        let pad = [self.pad_h, self.pad_w];
        relu(
            match crate::nn::fast::conv2d(x, &weight, Some(&bias), [s, s], pad) {
                Ok(y) => y,
                Err(x) => conv2d(
                    x,
                    weight,
                    Some(bias),
                    ConvOptions::new([s, s], pad, [1, 1], 1),
                ),
            },
        )
    }
}

/// TensorFlow's 3×3 average pool, stride 1, 'SAME': zero padding not counted.
fn avg_pool_same<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    match crate::nn::fast::avg_pool_3x3_same(x) {
        Ok(y) => y,
        Err(x) => avg_pool2d(x, [3, 3], [1, 1], [1, 1], false, false),
    }
}

/// `FIDInceptionA` (`Mixed_5b`–`5d`).
#[derive(Module, Debug)]
struct BlockA<B: Backend> {
    b1: ConvBn<B>,
    b5: Vec<ConvBn<B>>,
    b3: Vec<ConvBn<B>>,
    pool: ConvBn<B>,
}

/// torchvision `InceptionB` (`Mixed_6a`).
#[derive(Module, Debug)]
struct BlockB<B: Backend> {
    b3: ConvBn<B>,
    b3dbl: Vec<ConvBn<B>>,
}

/// `FIDInceptionC` (`Mixed_6b`–`6e`).
#[derive(Module, Debug)]
struct BlockC<B: Backend> {
    b1: ConvBn<B>,
    b7: Vec<ConvBn<B>>,
    b7dbl: Vec<ConvBn<B>>,
    pool: ConvBn<B>,
}

/// torchvision `InceptionD` (`Mixed_7a`).
#[derive(Module, Debug)]
struct BlockD<B: Backend> {
    b3: Vec<ConvBn<B>>,
    b7x3: Vec<ConvBn<B>>,
}

/// `FIDInceptionE_1` (`Mixed_7b`, average pool) and `FIDInceptionE_2` (`Mixed_7c`, max pool).
#[derive(Module, Debug)]
struct BlockE<B: Backend> {
    b1: ConvBn<B>,
    b3_1: ConvBn<B>,
    b3_2a: ConvBn<B>,
    b3_2b: ConvBn<B>,
    bdbl_1: ConvBn<B>,
    bdbl_2: ConvBn<B>,
    bdbl_3a: ConvBn<B>,
    bdbl_3b: ConvBn<B>,
    pool: ConvBn<B>,
    max_pool: bool,
}

fn chain<B: Backend>(convs: &[ConvBn<B>], x: Tensor<B, 4>) -> Tensor<B, 4> {
    convs.iter().fold(x, |x, c| c.forward(x))
}

impl<B: Backend> BlockA<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        Tensor::cat(
            vec![
                self.b1.forward(x.clone()),
                chain(&self.b5, x.clone()),
                chain(&self.b3, x.clone()),
                self.pool.forward(avg_pool_same(x)),
            ],
            1,
        )
    }
}

impl<B: Backend> BlockB<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        Tensor::cat(
            vec![
                self.b3.forward(x.clone()),
                chain(&self.b3dbl, x.clone()),
                max_pool2d(x, [3, 3], [2, 2], [0, 0], [1, 1], false),
            ],
            1,
        )
    }
}

impl<B: Backend> BlockC<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        Tensor::cat(
            vec![
                self.b1.forward(x.clone()),
                chain(&self.b7, x.clone()),
                chain(&self.b7dbl, x.clone()),
                self.pool.forward(avg_pool_same(x)),
            ],
            1,
        )
    }
}

impl<B: Backend> BlockD<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        Tensor::cat(
            vec![
                chain(&self.b3, x.clone()),
                chain(&self.b7x3, x.clone()),
                max_pool2d(x, [3, 3], [2, 2], [0, 0], [1, 1], false),
            ],
            1,
        )
    }
}

impl<B: Backend> BlockE<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let b3 = self.b3_1.forward(x.clone());
        let bd = self.bdbl_2.forward(self.bdbl_1.forward(x.clone()));
        let pooled = if self.max_pool {
            max_pool2d(x.clone(), [3, 3], [1, 1], [1, 1], [1, 1], false)
        } else {
            avg_pool_same(x.clone())
        };
        Tensor::cat(
            vec![
                self.b1.forward(x),
                self.b3_2a.forward(b3.clone()),
                self.b3_2b.forward(b3),
                self.bdbl_3a.forward(bd.clone()),
                self.bdbl_3b.forward(bd),
                self.pool.forward(pooled),
            ],
            1,
        )
    }
}

/// What the network gives per image.
#[derive(Debug, Clone)]
pub struct InceptionOutput<B: Backend> {
    /// Global average of `Mixed_7c`, the FID features: `[batch, 2048]`.
    pub pool3: Tensor<B, 2>,
    /// `fc` on pool3 (the Inception Score's logits): `[batch, num_classes]`.
    pub logits: Tensor<B, 2>,
}

/// pytorch-fid's FID Inception-v3.
#[derive(Module, Debug)]
pub struct FidInception<B: Backend> {
    /// `Conv2d_1a_3x3` … `Conv2d_4a_3x3`.
    stem: Vec<ConvBn<B>>,
    mixed_5: Vec<BlockA<B>>,
    mixed_6a: BlockB<B>,
    mixed_6: Vec<BlockC<B>>,
    mixed_7a: BlockD<B>,
    mixed_7b: BlockE<B>,
    mixed_7c: BlockE<B>,
    /// `[features, classes]` (burn's `Linear` layout).
    fc_weight: Param<Tensor<B, 2>>,
    /// `[classes]`
    fc_bias: Param<Tensor<B, 1>>,
    #[module(skip)]
    config: InceptionConfig,
}

impl<B: Backend> FidInception<B> {
    /// Loads a PyTorch state dict with pytorch-fid's names (`Conv2d_1a_3x3.conv.weight`, …,
    /// `fc.bias`), legacy or zip format. The width and class count come from the file; every
    /// tensor is checked against them, a missing or misshaped one is an error naming it.
    pub fn load(path: impl AsRef<Path>, device: &B::Device) -> Result<Self, ModelError> {
        let file = WeightStore::pytorch(path)?;
        let config = InceptionConfig::from_file(&file)?;
        let get = |name: &str, shape: &[usize]| file.values(name, shape);
        Self::build(&config, &get, device)
    }

    /// The config the network was built for.
    pub fn config(&self) -> &InceptionConfig {
        &self.config
    }

    /// The `fc` bias: torchmetrics' Inception Score uses the logits without it
    /// (torch-fidelity's `logits_unbiased`), i.e. `logits − bias`.
    pub fn fc_bias(&self) -> Vec<f32> {
        self.fc_bias.val().to_f32_vec()
    }

    fn build(
        config: &InceptionConfig,
        get: &Getter<'_>,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let mut convs = Vec::new();
        for s in config.conv_specs() {
            let (kh, kw) = s.kernel;
            let w = get(&format!("{}.conv.weight", s.name), &[s.cout, s.cin, kh, kw])?;
            let bn = |p: &str| get(&format!("{}.bn.{p}", s.name), &[s.cout]);
            let (gamma, beta, mean, var) = (
                bn("weight")?,
                bn("bias")?,
                bn("running_mean")?,
                bn("running_var")?,
            );
            let per_out = s.cin * kh * kw;
            let mut weight = Vec::with_capacity(w.len());
            let mut bias = Vec::with_capacity(s.cout);
            for o in 0..s.cout {
                let scale = f64::from(gamma[o]) / (f64::from(var[o]) + BN_EPS).sqrt();
                weight.extend(
                    w[o * per_out..][..per_out]
                        .iter()
                        .map(|&v| (f64::from(v) * scale) as f32),
                );
                bias.push((f64::from(beta[o]) - f64::from(mean[o]) * scale) as f32);
            }
            convs.push(ConvBn {
                weight: Param::from_tensor(Tensor::from_data(
                    TensorData::new(weight, [s.cout, s.cin, kh, kw]),
                    device,
                )),
                bias: Param::from_tensor(Tensor::from_floats(bias.as_slice(), device)),
                stride: s.stride,
                pad_h: s.padding.0,
                pad_w: s.padding.1,
            });
        }
        let mut it = convs.into_iter();
        let mut take = |n: usize| it.by_ref().take(n).collect::<Vec<_>>();
        let stem = take(5);
        let mixed_5 = (0..3)
            .map(|_| {
                let mut c = take(7).into_iter();
                let mut next = || c.next().expect("7 convolutions");
                BlockA {
                    b1: next(),
                    b5: vec![next(), next()],
                    b3: vec![next(), next(), next()],
                    pool: next(),
                }
            })
            .collect();
        let mut c = take(4).into_iter();
        let mixed_6a = BlockB {
            b3: c.next().expect("4 convolutions"),
            b3dbl: c.collect(),
        };
        let mixed_6 = (0..4)
            .map(|_| {
                let mut c = take(10);
                let pool = c.pop().expect("10 convolutions");
                let b7dbl = c.split_off(4);
                let b7 = c.split_off(1);
                BlockC {
                    b1: c.pop().expect("10 convolutions"),
                    b7,
                    b7dbl,
                    pool,
                }
            })
            .collect();
        let mut c = take(6);
        let mixed_7a = BlockD {
            b7x3: c.split_off(2),
            b3: c,
        };
        let mut e = |max_pool| {
            let mut c = take(9).into_iter();
            let mut next = || c.next().expect("9 convolutions");
            BlockE {
                b1: next(),
                b3_1: next(),
                b3_2a: next(),
                b3_2b: next(),
                bdbl_1: next(),
                bdbl_2: next(),
                bdbl_3a: next(),
                bdbl_3b: next(),
                pool: next(),
                max_pool,
            }
        };
        let mixed_7b = e(false);
        let mixed_7c = e(true);
        let (k, f) = (config.num_classes, config.features());
        let fc = get("fc.weight", &[k, f])?;
        Ok(Self {
            stem,
            mixed_5,
            mixed_6a,
            mixed_6,
            mixed_7a,
            mixed_7b,
            mixed_7c,
            // Laid out `[f, k]` once here (a transposed view would be copied by every matmul).
            fc_weight: Param::from_tensor(Tensor::<B, 2>::from_data(
                TensorData::new(crate::weights::transpose(&fc, k, f), [f, k]),
                device,
            )),
            fc_bias: Param::from_tensor(Tensor::from_floats(
                get("fc.bias", &[k])?.as_slice(),
                device,
            )),
            config: config.clone(),
        })
    }

    /// pool3 features and logits of a batch of preprocessed images (see [`FidPreprocess`]).
    ///
    /// # Shapes
    /// - `x`: `[batch, 3, 299, 299]` (any side ≥ 75 runs; FID is defined at 299)
    /// - output: [`InceptionOutput`]
    pub fn forward(&self, x: Tensor<B, 4>) -> InceptionOutput<B> {
        let x = chain(&self.stem[..3], x);
        let x = max_pool2d(x, [3, 3], [2, 2], [0, 0], [1, 1], false);
        let x = chain(&self.stem[3..], x);
        let x = max_pool2d(x, [3, 3], [2, 2], [0, 0], [1, 1], false);
        let x = self.mixed_5.iter().fold(x, |x, b| b.forward(x));
        let x = self.mixed_6a.forward(x);
        let x = self.mixed_6.iter().fold(x, |x, b| b.forward(x));
        let x = self.mixed_7a.forward(x);
        let x = self.mixed_7c.forward(self.mixed_7b.forward(x));
        let [b, c, _, _] = x.dims();
        let pool3 = x.flatten::<3>(2, 3).mean_dim(2).reshape([b, c]);
        let logits = linear(
            pool3.clone(),
            self.fc_weight.val(),
            Some(self.fc_bias.val()),
        );
        InceptionOutput { pool3, logits }
    }

    /// pool3 and logits of one RGB image, preprocessed by `mode`.
    pub fn features(&self, image: RgbView<'_>, mode: FidPreprocess) -> (Vec<f32>, Vec<f32>) {
        let device = self.fc_bias.val().device();
        let n = FID_INPUT_SIZE;
        let x =
            Tensor::<B, 4>::from_data(TensorData::new(mode.input(image), [1, 3, n, n]), &device);
        let out = self.forward(x);
        (out.pool3.to_f32_vec(), out.logits.to_f32_vec())
    }
}

/// How an image becomes the 299 × 299 network input (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FidPreprocess {
    /// clean-fid's default: Pillow mode-`F` bicubic, clip, `(x − 128) / 128`.
    #[default]
    Clean,
    /// pytorch-fid: torch bilinear (`align_corners=False`) on [0, 1], `2x − 1`.
    LegacyPytorch,
}

impl FidPreprocess {
    /// The resized image, height × width × RGB, in [0, 255] for [`FidPreprocess::Clean`] and
    /// [0, 1] for [`FidPreprocess::LegacyPytorch`] (the ranges each reference resizes in).
    pub fn resize(self, image: RgbView<'_>, width: usize, height: usize) -> Vec<f32> {
        let (w, h) = (image.width, image.height);
        let mut out = vec![0f32; width * height * 3];
        for c in 0..3 {
            let plane: Vec<f32> = match self {
                FidPreprocess::Clean => image.data[c..]
                    .iter()
                    .step_by(3)
                    .map(|&p| f32::from(p))
                    .collect(),
                FidPreprocess::LegacyPytorch => image.data[c..]
                    .iter()
                    .step_by(3)
                    .map(|&p| f32::from(p) / 255.0)
                    .collect(),
            };
            let resized = match self {
                FidPreprocess::Clean => pil_bicubic_f32(&plane, w, h, width, height)
                    .into_iter()
                    .map(|v| v.clamp(0.0, 255.0))
                    .collect(),
                FidPreprocess::LegacyPytorch => torch_bilinear(&plane, w, h, width, height),
            };
            for (i, v) in resized.into_iter().enumerate() {
                out[i * 3 + c] = v;
            }
        }
        out
    }

    /// The network input: channels first, 3 × 299 × 299, in [−1, 1].
    pub fn input(self, image: RgbView<'_>) -> Vec<f32> {
        let n = FID_INPUT_SIZE;
        let resized = self.resize(image, n, n);
        let mut out = vec![0f32; 3 * n * n];
        for (i, px) in resized.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * n * n + i] = match self {
                    FidPreprocess::Clean => (px[c] - 128.0) / 128.0,
                    FidPreprocess::LegacyPytorch => 2.0 * px[c] - 1.0,
                };
            }
        }
        out
    }
}

/// Pillow's `precompute_coeffs` for bicubic (a = −0.5), normalised, in double precision: per
/// output index, the first tap and the weights.
fn pil_bicubic_coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f64>)> {
    let cubic = |x: f64| {
        const A: f64 = -0.5;
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * A
        } else {
            0.0
        }
    };
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let inv = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) casts truncate toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut k: Vec<f64> = (xmin..xmax)
                .map(|x| cubic((x as f64 - center + 0.5) * inv))
                .collect();
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                k.iter_mut().for_each(|v| *v /= ww);
            }
            (xmin, k)
        })
        .collect()
}

/// Pillow's `Image.resize(BICUBIC)` of a mode-`F` (float32) image: horizontal pass, then
/// vertical, each summing `f32 pixel × f64 weight` in double precision and storing f32
/// (`ImagingResampleHorizontal_32bpc` / `Vertical_32bpc`). A pass whose size does not change is
/// skipped, as Pillow does.
fn pil_bicubic_f32(src: &[f32], w: usize, h: usize, ow: usize, oh: usize) -> Vec<f32> {
    let horizontal = if ow != w {
        let coeffs = pil_bicubic_coeffs(w, ow);
        let mut out = Vec::with_capacity(ow * h);
        for row in src.chunks_exact(w) {
            for (xmin, k) in &coeffs {
                let ss: f64 = row[*xmin..][..k.len()]
                    .iter()
                    .zip(k)
                    .map(|(&p, &k)| f64::from(p) * k)
                    .sum();
                out.push(ss as f32);
            }
        }
        out
    } else {
        src.to_vec()
    };
    if oh == h {
        return horizontal;
    }
    let coeffs = pil_bicubic_coeffs(h, oh);
    let mut out = Vec::with_capacity(ow * oh);
    for (ymin, k) in &coeffs {
        for x in 0..ow {
            let ss: f64 = k
                .iter()
                .enumerate()
                .map(|(j, &k)| f64::from(horizontal[(ymin + j) * ow + x]) * k)
                .sum();
            out.push(ss as f32);
        }
    }
    out
}

/// torch's `F.interpolate(mode="bilinear", align_corners=False)` (no antialias) of one plane,
/// in f32 as its CPU kernel: source `max(0, (i + 0.5)·in/out − 0.5)`, the next tap clamped to
/// the border, `Σ_y w_y · Σ_x w_x · v`.
fn torch_bilinear(src: &[f32], w: usize, h: usize, ow: usize, oh: usize) -> Vec<f32> {
    fn axis(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
        let scale = input as f32 / output as f32;
        (0..output)
            .map(|i| {
                let real = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (real.floor() as usize).min(input - 1);
                let l1 = (real - i0 as f32).clamp(0.0, 1.0);
                let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
                (i0, i1, 1.0 - l1, l1)
            })
            .collect()
    }
    let xs = axis(w, ow);
    let ys = axis(h, oh);
    let mut out = Vec::with_capacity(ow * oh);
    for &(y0, y1, wy0, wy1) in &ys {
        let (r0, r1) = (&src[y0 * w..][..w], &src[y1 * w..][..w]);
        for &(x0, x1, wx0, wx1) in &xs {
            let top = r0[x0] * wx0 + r0[x1] * wx1;
            let bottom = r1[x0] * wx0 + r1[x1] * wx1;
            out.push(top * wy0 + bottom * wy1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn full_width_has_the_fid_parameter_count() {
        let n: usize = InceptionConfig::fid()
            .parameter_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        // pytorch-fid's fid_inception_v3() state dict without num_batches_tracked.
        assert_eq!(n, FULL_PARAMETERS);
    }

    const FULL_PARAMETERS: usize = 23_885_392;

    #[test]
    fn narrow_random_network_gives_pool3_and_logits() {
        let config = InceptionConfig::new()
            .with_width_divisor(16)
            .with_num_classes(10);
        let net = config.init::<Flex>(&Default::default());
        let x = Tensor::<Flex, 4>::zeros([1, 3, 299, 299], &Default::default());
        let out = net.forward(x);
        assert_eq!(out.pool3.dims(), [1, 128]);
        assert_eq!(out.logits.dims(), [1, 10]);
    }

    #[test]
    fn resizers_keep_a_constant_image_constant() {
        let plane = vec![7.0f32; 5 * 4];
        assert!(
            pil_bicubic_f32(&plane, 5, 4, 13, 9)
                .iter()
                .all(|&v| (v - 7.0).abs() < 1e-4)
        );
        assert!(
            torch_bilinear(&plane, 5, 4, 13, 9)
                .iter()
                .all(|&v| (v - 7.0).abs() < 1e-5)
        );
    }
}
