//! `age_gender_model`: age (years, regressed) and gender (two-way softmax) from a face crop.
//! Follows `ageGenderNet/AgeGenderNet.ts` (`runNet`, `forwardInput`, `predictAgeAndGender`)
//! on the backbone of `xception/TinyXception.ts` with two main blocks, whose input is the
//! shared face input (`toBatchTensor(112, true)`, `(x − [122.782, 117.001, 104.298]) / 255`).
//!
//! Backbone: conv_in (3×3, stride 2, 'same') → ReLU → reduction block 0 (input not
//! activated) → reduction block 1 → 2 main blocks → exit reduction block → separable conv →
//! ReLU, 112 → 56 → 28 → 14 → 14 → 7 → 7 pixels, 512 channels. Head: 7×7 average pool, then
//! one fully connected layer per output (512 → 1 age, 512 → 2 gender logits, male first).

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::activation::{relu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, PadMode};

use super::face_feature_extractor::FaceFeatureExtractor;
use super::layers::{FullyConnected, SeparableConv, pad_same, same_pad};
use super::preprocess::{PixelRect, RgbView};
use crate::error::ModelError;
use crate::readback::ReadBack;
use crate::tfjs::TfjsWeights;

/// `TinyXception(2)`: the number of middle-flow blocks `AgeGenderNet` builds it with.
const MAIN_BLOCKS: usize = 2;

/// `conv` of `TinyXception.ts`: a convolution with bias, 'same' padding.
#[derive(Module, Debug)]
struct Conv<B: Backend> {
    filters: Param<Tensor<B, 4>>,
    bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> Conv<B> {
    fn load(w: &TfjsWeights, prefix: &str, device: &B::Device) -> Result<Self, ModelError> {
        Ok(Conv {
            filters: Param::from_tensor(w.conv2d(&format!("{prefix}/filters"), device)?),
            bias: Param::from_tensor(w.tensor(&format!("{prefix}/bias"), device)?),
        })
    }

    /// Stride 2, 'same': TF pads a 3×3 window by `same_pad` (all after, here), a 1×1 window
    /// not at all.
    fn forward_stride2(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let k = self.filters.val().dims()[2];
        let x = if k == 3 { pad_same(x, 2) } else { x };
        debug_assert!(k == 1 || k == 3, "3×3 or 1×1 filters");
        conv2d(
            x,
            self.filters.val(),
            Some(self.bias.val()),
            ConvOptions::new([2, 2], [0, 0], [1, 1], 1),
        )
    }
}

/// tfjs `maxPool([3, 3], [2, 2], 'same')`: TF's 'same' padding filled with −∞, so padded
/// cells never win.
fn max_pool_3x3_same<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    let ((t, b), (l, r)) = (same_pad(h, 2), same_pad(w, 2));
    let x = x.pad((l, r, t, b), PadMode::Constant(f32::NEG_INFINITY));
    max_pool2d(x, [3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// `reductionBlock`: two separable convolutions and a 'same' max pool, plus the input through
/// a strided 1×1 `expansion_conv`.
#[derive(Module, Debug)]
struct ReductionBlock<B: Backend> {
    separable0: SeparableConv<B>,
    separable1: SeparableConv<B>,
    expansion: Conv<B>,
}

impl<B: Backend> ReductionBlock<B> {
    fn load(w: &TfjsWeights, prefix: &str, device: &B::Device) -> Result<Self, ModelError> {
        Ok(ReductionBlock {
            separable0: SeparableConv::load(w, &format!("{prefix}/separable_conv0"), device)?,
            separable1: SeparableConv::load(w, &format!("{prefix}/separable_conv1"), device)?,
            expansion: Conv::load(w, &format!("{prefix}/expansion_conv"), device)?,
        })
    }

    fn forward(&self, x: Tensor<B, 4>, activate_input: bool) -> Tensor<B, 4> {
        let out = if activate_input {
            relu(x.clone())
        } else {
            x.clone()
        };
        let out = self.separable0.forward(out, 1);
        let out = self.separable1.forward(relu(out), 1);
        let out = max_pool_3x3_same(out);
        out + self.expansion.forward_stride2(x)
    }
}

/// `mainBlock`: three ReLU-then-separable convolutions and a residual connection.
#[derive(Module, Debug)]
struct MainBlock<B: Backend> {
    separable: Vec<SeparableConv<B>>,
}

impl<B: Backend> MainBlock<B> {
    fn load(w: &TfjsWeights, prefix: &str, device: &B::Device) -> Result<Self, ModelError> {
        Ok(MainBlock {
            separable: (0..3)
                .map(|i| SeparableConv::load(w, &format!("{prefix}/separable_conv{i}"), device))
                .collect::<Result<_, _>>()?,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut out = x.clone();
        for conv in &self.separable {
            out = conv.forward(relu(out), 1);
        }
        out + x
    }
}

/// `TinyXception` with its weights (`entry_flow`, `middle_flow`, `exit_flow`).
#[derive(Module, Debug)]
struct TinyXception<B: Backend> {
    conv_in: Conv<B>,
    entry: Vec<ReductionBlock<B>>,
    middle: Vec<MainBlock<B>>,
    exit: ReductionBlock<B>,
    exit_separable: SeparableConv<B>,
}

impl<B: Backend> TinyXception<B> {
    fn load(w: &TfjsWeights, device: &B::Device) -> Result<Self, ModelError> {
        Ok(TinyXception {
            conv_in: Conv::load(w, "entry_flow/conv_in", device)?,
            entry: (0..2)
                .map(|i| {
                    ReductionBlock::load(w, &format!("entry_flow/reduction_block_{i}"), device)
                })
                .collect::<Result<_, _>>()?,
            middle: (0..MAIN_BLOCKS)
                .map(|i| MainBlock::load(w, &format!("middle_flow/main_block_{i}"), device))
                .collect::<Result<_, _>>()?,
            exit: ReductionBlock::load(w, "exit_flow/reduction_block", device)?,
            exit_separable: SeparableConv::load(w, "exit_flow/separable_conv", device)?,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut out = relu(self.conv_in.forward_stride2(x));
        out = self.entry[0].forward(out, false);
        out = self.entry[1].forward(out, true);
        for block in &self.middle {
            out = block.forward(out);
        }
        out = self.exit.forward(out, true);
        relu(self.exit_separable.forward(out, 1))
    }
}

/// Which gender face-api reports (`ageGenderNet/types.ts` `Gender`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gender {
    /// `'male'`: the first gender output above 0.5.
    Male,
    /// `'female'`: otherwise.
    Female,
}

impl Gender {
    /// face-api's string for it (`"male"`, `"female"`), for output that matches the package's.
    pub fn as_str(self) -> &'static str {
        match self {
            Gender::Male => "male",
            Gender::Female => "female",
        }
    }
}

impl std::fmt::Display for Gender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One face's `predictAgeAndGender` result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgeAndGender {
    /// Estimated age in years, the regression output as it is (not rounded, not clamped).
    pub age: f32,
    /// The more probable gender.
    pub gender: Gender,
    /// The probability of `gender`, in [0.5, 1].
    pub gender_probability: f32,
}

impl AgeAndGender {
    /// `predictAgeAndGender`'s reading of one face's outputs: male when `P(male) > 0.5`, and
    /// the probability of the gender chosen.
    pub fn from_outputs(age: f32, prob_male: f32) -> Self {
        let male = prob_male > 0.5;
        AgeAndGender {
            age,
            gender: if male { Gender::Male } else { Gender::Female },
            gender_probability: if male { prob_male } else { 1.0 - prob_male },
        }
    }
}

/// The age and gender network with its weights.
#[derive(Module, Debug)]
pub struct AgeGenderNet<B: Backend> {
    backbone: TinyXception<B>,
    fc_age: FullyConnected<B>,
    fc_gender: FullyConnected<B>,
}

impl<B: Backend> AgeGenderNet<B> {
    /// Builds the network from `age_gender_model-weights_manifest.json`.
    pub fn load(weights: &TfjsWeights, device: &B::Device) -> Result<Self, ModelError> {
        Ok(AgeGenderNet {
            backbone: TinyXception::load(weights, device)?,
            fc_age: FullyConnected::load(weights, "fc/age", device)?,
            fc_gender: FullyConnected::load(weights, "fc/gender", device)?,
        })
    }

    /// The normalised input `[1, 3, 112, 112]` for a face crop: `TinyXception.forwardInput`
    /// builds it exactly as the landmark and expression nets do.
    pub fn input(crop: RgbView<'_>, device: &B::Device) -> Tensor<B, 4> {
        FaceFeatureExtractor::input(crop, device)
    }

    /// [`Self::input`] of the crop `rect` of `img`.
    pub fn input_at(img: RgbView<'_>, rect: PixelRect, device: &B::Device) -> Tensor<B, 4> {
        FaceFeatureExtractor::input_at(img, rect, device)
    }

    /// The TinyXception bottleneck (`faceFeatureExtractor.forwardInput`), for checking the
    /// backbone alone.
    ///
    /// # Shapes
    /// - `x`: `[batch, 3, 112, 112]`
    /// - output: `[batch, 512, 7, 7]`
    pub fn features(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.backbone.forward(x)
    }

    /// `runNet`: the age in years and the two gender logits (male, female).
    ///
    /// # Shapes
    /// - `x`: `[batch, 3, 112, 112]`
    /// - output: `([batch], [batch, 2])`
    pub fn forward_raw(&self, x: Tensor<B, 4>) -> (Tensor<B, 1>, Tensor<B, 2>) {
        let features = self.backbone.forward(x);
        let pooled = avg_pool2d(features, [7, 7], [2, 2], [0, 0], true, false);
        let [batch, c, h, w] = pooled.dims();
        debug_assert_eq!((h, w), (1, 1), "a 112 input pools to one cell");
        let pooled = pooled.reshape([batch, c]);
        let age = self.fc_age.forward(pooled.clone()).reshape([batch]);
        (age, self.fc_gender.forward(pooled))
    }

    /// `forwardInput`: the age in years and the gender probabilities (male, female).
    ///
    /// # Shapes
    /// - `x`: `[batch, 3, 112, 112]`
    /// - output: `([batch], [batch, 2])`
    pub fn forward(&self, x: Tensor<B, 4>) -> (Tensor<B, 1>, Tensor<B, 2>) {
        let (age, gender) = self.forward_raw(x);
        (age, softmax(gender, 1))
    }

    /// `predictAgeAndGender` of the face in `crop_rect` of `img`; see
    /// [`super::pipeline::attribute_crop`] for the rectangle face-api's chain cuts.
    pub fn age_and_gender(&self, img: RgbView<'_>, crop_rect: PixelRect) -> AgeAndGender {
        let device = self.fc_age.device();
        let (age, gender) = self.forward(Self::input_at(img, crop_rect, &device));
        let age: Vec<f32> = age.to_f32_vec();
        let gender: Vec<f32> = gender.to_f32_vec();
        AgeAndGender::from_outputs(age[0], gender[0])
    }
}
