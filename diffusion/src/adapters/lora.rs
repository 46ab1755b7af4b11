//! LoRA on any named `Linear` of the UNet's transformers: `out + scale · up(down(x))`, the
//! low-rank update of diffusers' `LoRALinearLayer` (no `network_alpha`: scale 1 unless given).

use std::collections::HashMap;

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use idforge_models::nn::{Init, Linear};

use crate::attention::{AttentionHook, LinearSite};
use crate::error::DiffusionError;

/// One low-rank update.
#[derive(Module, Debug)]
pub struct LoraLayer<B: Backend> {
    /// `in → rank`, no bias.
    pub down: Linear<B>,
    /// `rank → out`, no bias.
    pub up: Linear<B>,
}

impl<B: Backend> LoraLayer<B> {
    /// `{prefix}.down.weight` (`[rank, in]`) and `{prefix}.up.weight` (`[out, rank]`), or, with
    /// [`Init::Random`], diffusers' initialisation for training: `down` N(0, 1/rank²), `up` zero.
    pub fn new(
        init: &Init<'_>,
        prefix: &str,
        inp: usize,
        out: usize,
        rank: usize,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        let child = |n| idforge_models::nn::child(prefix, n);
        let (down, up) = match init {
            Init::Load(_) => (
                Linear::new(init, &child("down"), inp, rank, false, device)?,
                Linear::new(init, &child("up"), rank, out, false, device)?,
            ),
            Init::Random => (
                Linear::from_tensors(
                    Tensor::random(
                        [inp, rank],
                        burn::tensor::Distribution::Normal(0.0, 1.0 / rank as f64),
                        device,
                    ),
                    None,
                ),
                Linear::from_tensors(Tensor::zeros([rank, out], device), None),
            ),
        };
        Ok(Self { down, up })
    }

    /// `up(down(x))`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.up.forward(self.down.forward(x))
    }
}

/// LoRA updates by the full diffusers path of the `Linear` they change
/// (`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`).
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    /// The updates.
    pub layers: Vec<LoraLayer<B>>,
    /// The path each update applies to, in `layers` order.
    #[module(skip)]
    names: Vec<String>,
    #[module(skip)]
    index: HashMap<String, usize>,
    /// `s` in `out + s · up(down(x))`.
    #[module(skip)]
    pub scale: f32,
}

impl<B: Backend> Lora<B> {
    /// The updates for these `(path, layer)` pairs.
    pub fn new(layers: Vec<(String, LoraLayer<B>)>, scale: f32) -> Self {
        let (names, layers): (Vec<_>, Vec<_>) = layers.into_iter().unzip();
        let index = names
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, n)| (n, i))
            .collect();
        Self {
            layers,
            names,
            index,
            scale,
        }
    }

    /// The paths updated, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl<B: Backend> AttentionHook<B> for Lora<B> {
    fn linear(
        &self,
        site: &LinearSite<'_>,
        input: &Tensor<B, 3>,
        output: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        match self.index.get(&site.name()) {
            Some(&i) => output + self.layers[i].forward(input.clone()) * self.scale,
            None => output,
        }
    }
}
