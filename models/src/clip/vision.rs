//! CLIP's vision tower (ViT): non-overlapping patches embedded by a bias-free convolution, a
//! class token in front, position embeddings, the pre-LayerNorm, a pre-LN transformer, the
//! post-LayerNorm on the class token, and the projection into the joint space.
//!
//! Follows transformers' `CLIPVisionTransformer` (modeling_clip.py, 4.46) and open_clip's
//! `VisionTransformer` with its CLIP defaults (3.3: `pool_type='tok'`, no patch dropout, no
//! attentional pooler, `final_ln_after_pool=False`).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Tensor};

use super::config::ClipVisionConfig;
use super::load::{WeightLayout, tensor, vision_spec};
use super::transformer::{BlockShape, ResidualBlock, load_norm, run_blocks};
use crate::error::ModelError;
use crate::nn::{Init, LayerNorm, Linear};
use crate::weights::WeightStore;

/// The vision tower.
#[derive(Module, Debug)]
pub struct ClipVisionTransformer<B: Backend> {
    /// `[width]`
    class_embedding: Param<Tensor<B, 1>>,
    /// `[width, 3, patch, patch]`
    patch_embedding: Param<Tensor<B, 4>>,
    /// `[1 + grid², width]`
    position_embedding: Param<Tensor<B, 2>>,
    pre_ln: LayerNorm<B>,
    blocks: Vec<ResidualBlock<B>>,
    post_ln: LayerNorm<B>,
    /// `[width, embed]`
    projection: Option<Linear<B>>,
    #[module(skip)]
    config: ClipVisionConfig,
}

/// Everything the vision tower computes (IP-Adapter Plus reads the penultimate hidden states).
#[derive(Debug, Clone)]
pub struct VisionOutput<B: Backend> {
    /// The last block's output, without the post-LayerNorm (transformers'
    /// `last_hidden_state`): `[batch, 1 + grid², width]`.
    pub last_hidden_state: Tensor<B, 3>,
    /// The last block's input (transformers' `hidden_states[-2]`): `[batch, 1 + grid², width]`.
    pub penultimate_hidden_state: Tensor<B, 3>,
    /// The class token after the post-LayerNorm (`pooler_output`): `[batch, width]`.
    pub pooled: Tensor<B, 2>,
    /// `pooled` projected (`image_embeds`, not L2-normalised): `[batch, embed]`; `None`
    /// without a projection.
    pub embeds: Option<Tensor<B, 2>>,
}

impl ClipVisionConfig {
    /// A tower of this shape with random weights (matrices N(0, 1/fan_in), embeddings
    /// N(0, 0.02²), identity LayerNorms), for tests and timing.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ClipVisionTransformer<B> {
        let p = self.patch_size;
        ClipVisionTransformer {
            class_embedding: Param::from_tensor(Tensor::random(
                [self.width],
                Distribution::Normal(0.0, 0.02),
                device,
            )),
            patch_embedding: Param::from_tensor(Tensor::random(
                [self.width, 3, p, p],
                Distribution::Normal(0.0, ((3 * p * p) as f64).powf(-0.5)),
                device,
            )),
            position_embedding: Param::from_tensor(Tensor::random(
                [self.tokens(), self.width],
                Distribution::Normal(0.0, 0.02),
                device,
            )),
            pre_ln: LayerNorm::new(&Init::Random, "", self.width, self.layer_norm_eps, device)
                .expect("random layers always build"),
            blocks: (0..self.layers)
                .map(|_| ResidualBlock::init(self.block_shape(), device))
                .collect(),
            post_ln: LayerNorm::new(&Init::Random, "", self.width, self.layer_norm_eps, device)
                .expect("random layers always build"),
            projection: self.projection_dim.map(|e| {
                Linear::new(&Init::Random, "", self.width, e, false, device)
                    .expect("random layers always build")
            }),
            config: self.clone(),
        }
    }

    fn block_shape(&self) -> BlockShape {
        BlockShape {
            width: self.width,
            heads: self.heads,
            mlp_width: self.mlp_width,
            activation: self.activation,
            eps: self.layer_norm_eps,
        }
    }
}

impl<B: Backend> ClipVisionTransformer<B> {
    /// Reads the tower from a checkpoint in `layout`. A `projection_dim` of `None` skips
    /// `visual_projection`.
    pub fn load(
        weights: &WeightStore,
        config: &ClipVisionConfig,
        layout: WeightLayout,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let spec = vision_spec(config, layout);
        let eps = config.layer_norm_eps;
        // In the order of the network, so that a wrong layout names its first tensor.
        let class_embedding = tensor(weights, &spec.class_embedding, device)?;
        let patch_embedding = tensor(weights, &spec.patch_embedding, device)?;
        let position_embedding = tensor(weights, &spec.position_embedding, device)?;
        let pre_ln = load_norm(weights, &spec.pre_ln, eps, device)?;
        let blocks = spec
            .blocks
            .iter()
            .map(|b| ResidualBlock::load(weights, b, config.block_shape(), device))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            class_embedding: Param::from_tensor(class_embedding),
            patch_embedding: Param::from_tensor(patch_embedding),
            position_embedding: Param::from_tensor(position_embedding),
            pre_ln,
            blocks,
            post_ln: load_norm(weights, &spec.post_ln, eps, device)?,
            projection: spec
                .projection
                .as_ref()
                .map(|p| tensor(weights, p, device).map(|w| Linear::from_tensors(w, None)))
                .transpose()?,
            config: config.clone(),
        })
    }

    /// The config the tower was built with.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// `visual_projection` of pooled outputs (`image_embeds` from [`VisionOutput::pooled`]), so
    /// that a trainer that caches the frozen tower's pooled output can still train the
    /// projection; `None` without a projection.
    ///
    /// # Shapes
    /// - `pooled`: `[batch, width]` → `[batch, embed]`
    pub fn project(&self, pooled: Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        self.projection.as_ref().map(|p| p.forward(pooled))
    }

    /// Runs the tower on normalised pixels (from [`super::ClipPreprocess`]).
    ///
    /// # Shapes
    /// - `pixels`: `[batch, 3, image_size, image_size]`
    ///
    /// # Panics
    /// If the pixels have another shape.
    pub fn forward(&self, pixels: Tensor<B, 4>) -> VisionOutput<B> {
        let c = &self.config;
        let [batch, channels, h, w] = pixels.dims();
        assert!(
            channels == 3 && h == c.image_size && w == c.image_size,
            "pixels {:?}, the vision tower takes [batch, 3, {s}, {s}]",
            pixels.dims(),
            s = c.image_size
        );
        let p = c.patch_size;
        let patches = conv2d(
            pixels,
            self.patch_embedding.val(),
            None,
            ConvOptions::new([p, p], [0, 0], [1, 1], 1),
        );
        let grid = c.grid();
        let patches = patches
            .reshape([batch, c.width, grid * grid])
            .swap_dims(1, 2);
        let class = self
            .class_embedding
            .val()
            .reshape([1, 1, c.width])
            .expand([batch, 1, c.width]);
        let x = Tensor::cat(vec![class, patches], 1)
            + self.position_embedding.val().unsqueeze_dim::<3>(0);
        let x = self.pre_ln.forward(x);
        let (last, penultimate) = run_blocks(&self.blocks, x, false);
        let pooled = self
            .post_ln
            .forward(last.clone().narrow(1, 0, 1).reshape([batch, c.width]));
        let embeds = self.project(pooled.clone());
        VisionOutput {
            last_hidden_state: last,
            penultimate_hidden_state: penultimate,
            pooled,
            embeds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn tiny() -> ClipVisionConfig {
        ClipVisionConfig::new()
            .with_image_size(16)
            .with_patch_size(4)
            .with_width(12)
            .with_heads(3)
            .with_layers(2)
            .with_mlp_width(24)
            .with_projection_dim(Some(6))
    }

    #[test]
    fn output_shapes() {
        let device = Default::default();
        let tower = tiny().init::<Flex>(&device);
        let out = tower.forward(Tensor::zeros([2, 3, 16, 16], &device));
        assert_eq!(out.last_hidden_state.dims(), [2, 17, 12]);
        assert_eq!(out.penultimate_hidden_state.dims(), [2, 17, 12]);
        assert_eq!(out.pooled.dims(), [2, 12]);
        assert_eq!(out.embeds.unwrap().dims(), [2, 6]);
    }

    #[test]
    #[should_panic(expected = "the vision tower takes")]
    fn wrong_image_size_panics() {
        let device = Default::default();
        tiny()
            .init::<Flex>(&device)
            .forward(Tensor::zeros([1, 3, 32, 32], &device));
    }
}
