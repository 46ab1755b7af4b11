//! CLIP's text tower: token + position embeddings, a causal pre-LN transformer, the final
//! LayerNorm, pooling at the end-of-text token, and the projection into the joint space.
//!
//! Follows transformers' `CLIPTextTransformer` (modeling_clip.py, 4.46) and open_clip's
//! `CLIP.encode_text` (3.3), which compute the same function; only the pooling rule differs
//! (see [`TextPooling`]).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::module::embedding;
use burn::tensor::{Distribution, Int, Tensor, TensorData};

use super::config::{ClipTextConfig, TextPooling};
use super::load::{WeightLayout, tensor, text_spec};
use super::transformer::{BlockShape, ResidualBlock, load_norm, run_blocks};
use crate::error::ModelError;
use crate::nn::{Init, LayerNorm, Linear};
use crate::weights::WeightStore;

/// The text tower.
#[derive(Module, Debug)]
pub struct ClipTextTransformer<B: Backend> {
    /// `[vocab, width]`
    token_embedding: Param<Tensor<B, 2>>,
    /// `[context, width]`
    position_embedding: Param<Tensor<B, 2>>,
    blocks: Vec<ResidualBlock<B>>,
    final_ln: LayerNorm<B>,
    /// `[width, embed]`
    projection: Option<Linear<B>>,
    #[module(skip)]
    config: ClipTextConfig,
}

/// Everything the text tower computes, for the uses that need more than the embedding
/// (Stable Diffusion conditions on hidden states, SDXL on the penultimate ones).
#[derive(Debug, Clone)]
pub struct TextOutput<B: Backend> {
    /// After the final LayerNorm (transformers' `last_hidden_state`): `[batch, tokens, width]`.
    pub last_hidden_state: Tensor<B, 3>,
    /// The last block's input, without LayerNorm (transformers' `hidden_states[-2]`, SDXL's
    /// conditioning): `[batch, tokens, width]`.
    pub penultimate_hidden_state: Tensor<B, 3>,
    /// `last_hidden_state` at the end-of-text token (`pooler_output`): `[batch, width]`.
    pub pooled: Tensor<B, 2>,
    /// `pooled` projected (`text_embeds`, not L2-normalised): `[batch, embed]`; `None`
    /// without a projection.
    pub embeds: Option<Tensor<B, 2>>,
}

impl ClipTextConfig {
    /// A tower of this shape with random weights (matrices N(0, 1/fan_in), embeddings
    /// N(0, 0.02²), identity LayerNorms), for tests and timing.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ClipTextTransformer<B> {
        let normal = |shape: [usize; 2]| {
            Param::from_tensor(Tensor::random(
                shape,
                Distribution::Normal(0.0, 0.02),
                device,
            ))
        };
        ClipTextTransformer {
            token_embedding: normal([self.vocab_size, self.width]),
            position_embedding: normal([self.context_length, self.width]),
            blocks: (0..self.layers)
                .map(|_| ResidualBlock::init(self.block_shape(), device))
                .collect(),
            final_ln: LayerNorm::new(&Init::Random, "", self.width, self.layer_norm_eps, device)
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

impl<B: Backend> ClipTextTransformer<B> {
    /// Reads the tower from a checkpoint in `layout`. A `projection_dim` of `None` skips
    /// `text_projection` (text encoders saved without it).
    pub fn load(
        weights: &WeightStore,
        config: &ClipTextConfig,
        layout: WeightLayout,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let spec = text_spec(config, layout);
        // In the order of the network, so that a wrong layout names its first tensor.
        let token_embedding = tensor(weights, &spec.token_embedding, device)?;
        let position_embedding = tensor(weights, &spec.position_embedding, device)?;
        let blocks = spec
            .blocks
            .iter()
            .map(|b| ResidualBlock::load(weights, b, config.block_shape(), device))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            token_embedding: Param::from_tensor(token_embedding),
            position_embedding: Param::from_tensor(position_embedding),
            blocks,
            final_ln: load_norm(weights, &spec.final_ln, config.layer_norm_eps, device)?,
            projection: spec
                .projection
                .as_ref()
                .map(|p| tensor(weights, p, device).map(|w| Linear::from_tensors(w, None)))
                .transpose()?,
            config: config.clone(),
        })
    }

    /// The config the tower was built with.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Runs the tower on token ids (from [`super::ClipTokenizer`]).
    ///
    /// # Shapes
    /// - `ids`: `[batch, tokens]`, `tokens ≤ context_length`
    ///
    /// # Panics
    /// If an id is outside the vocabulary or the sequence is longer than the context.
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> TextOutput<B> {
        let embeds = self.embed_tokens(ids.clone());
        self.forward_embeddings(embeds, ids)
    }

    /// The token embeddings of `ids` (`[batch, tokens, width]`), before positions are added:
    /// what an adapter that edits token embeddings (textual-inversion style) changes before
    /// [`ClipTextTransformer::forward_embeddings`]. (PhotoMaker edits the encoder's output
    /// instead, see `idforge_diffusion::adapters::photomaker`.)
    ///
    /// # Panics
    /// If an id is outside the vocabulary.
    pub fn embed_tokens(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let vocab = self.config.vocab_size;
        let host = ids_on_host(&ids);
        if let Some(bad) = host.iter().find(|&&id| id < 0 || id as usize >= vocab) {
            panic!("token id {bad} outside the vocabulary of {vocab}");
        }
        embedding(self.token_embedding.val(), ids)
    }

    /// Runs the tower on token embeddings (transformers' `inputs_embeds`); `ids` are the
    /// tokens they stand for, which choose the pooled position.
    ///
    /// # Shapes
    /// - `embeds`: `[batch, tokens, width]`, `tokens ≤ context_length`
    /// - `ids`: `[batch, tokens]`
    ///
    /// # Panics
    /// If the sequence is longer than the context or the shapes disagree.
    pub fn forward_embeddings(
        &self,
        embeds: Tensor<B, 3>,
        ids: Tensor<B, 2, Int>,
    ) -> TextOutput<B> {
        let [batch, n, _] = embeds.dims();
        let c = &self.config;
        assert!(
            n <= c.context_length,
            "{n} tokens, the text tower has {} positions",
            c.context_length
        );
        assert_eq!(
            ids.dims(),
            [batch, n],
            "ids and embeddings of different shapes"
        );
        let host = ids_on_host(&ids);
        let x = embeds
            + self
                .position_embedding
                .val()
                .narrow(0, 0, n)
                .unsqueeze_dim::<3>(0);
        let (x, penultimate) = run_blocks(&self.blocks, x, true);
        let last = self.final_ln.forward(x);
        let positions: Vec<i64> = host
            .chunks(n)
            .map(|row| pool_position(row, c.pooling) as i64)
            .collect();
        let width = c.width;
        let index =
            Tensor::<B, 1, Int>::from_data(TensorData::new(positions, [batch]), &last.device())
                .reshape([batch, 1, 1])
                .repeat_dim(2, width);
        let pooled = last.clone().gather(1, index).reshape([batch, width]);
        let embeds = self.projection.as_ref().map(|p| p.forward(pooled.clone()));
        TextOutput {
            last_hidden_state: last,
            penultimate_hidden_state: penultimate,
            pooled,
            embeds,
        }
    }

    /// Projected embeddings (not normalised) of tokenized texts: `[texts.len(), embed]`.
    ///
    /// # Panics
    /// Without a projection, or as [`ClipTextTransformer::forward`].
    pub fn embed(&self, ids: &[Vec<u32>], device: &B::Device) -> Tensor<B, 2> {
        let n = ids.first().map_or(0, Vec::len);
        assert!(
            ids.iter().all(|r| r.len() == n),
            "token rows of different lengths"
        );
        let flat: Vec<i64> = ids.iter().flatten().map(|&i| i64::from(i)).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [ids.len(), n]), device);
        self.forward(ids)
            .embeds
            .expect("the text tower has no projection")
    }
}

fn ids_on_host<B: Backend>(ids: &Tensor<B, 2, Int>) -> Vec<i64> {
    ids.clone()
        .into_data()
        .convert::<i64>()
        .to_vec()
        .expect("i64 ids")
}

/// The position whose hidden state is pooled, as the reference libraries choose it (first
/// occurrence, as `torch.argmax` returns).
fn pool_position(row: &[i64], pooling: TextPooling) -> usize {
    let argmax = || {
        row.iter()
            .enumerate()
            .fold(
                (0, i64::MIN),
                |best, (i, &v)| if v > best.1 { (i, v) } else { best },
            )
            .0
    };
    match pooling {
        TextPooling::Argmax => argmax(),
        // transformers: `(input_ids == eos_token_id).int().argmax(-1)`, 0 when absent.
        TextPooling::FirstEos(eos) => row.iter().position(|&v| v == i64::from(eos)).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn pooling_positions_follow_the_references() {
        let row = [49406, 320, 49407, 49407, 49407];
        assert_eq!(pool_position(&row, TextPooling::Argmax), 2);
        assert_eq!(pool_position(&row, TextPooling::FirstEos(49407)), 2);
        let padded_with_zero = [49406, 320, 1125, 49407, 0, 0];
        assert_eq!(pool_position(&padded_with_zero, TextPooling::Argmax), 3);
        assert_eq!(pool_position(&[1, 2, 3], TextPooling::FirstEos(9)), 0);
    }

    fn tiny_config() -> ClipTextConfig {
        ClipTextConfig::new()
            .with_vocab_size(50)
            .with_context_length(7)
            .with_width(16)
            .with_heads(2)
            .with_layers(2)
            .with_mlp_width(32)
            .with_projection_dim(Some(8))
    }

    #[test]
    fn output_shapes() {
        let config = tiny_config();
        let device = Default::default();
        let tower = config.init::<Flex>(&device);
        let out = tower.forward(Tensor::from_data(
            TensorData::new(vec![1i64, 5, 49, 3, 0, 2, 9, 9, 9, 9], [2, 5]),
            &device,
        ));
        assert_eq!(out.last_hidden_state.dims(), [2, 5, 16]);
        assert_eq!(out.penultimate_hidden_state.dims(), [2, 5, 16]);
        assert_eq!(out.pooled.dims(), [2, 16]);
        assert_eq!(out.embeds.unwrap().dims(), [2, 8]);
    }

    #[test]
    fn embeddings_input_equals_ids_input() {
        let config = tiny_config();
        let device = Default::default();
        let tower = config.init::<Flex>(&device);
        let ids = Tensor::<Flex, 2, Int>::from_data(
            TensorData::new(vec![1i64, 5, 49, 3, 0, 2, 9, 9, 9, 9], [2, 5]),
            &device,
        );
        let a = tower.forward(ids.clone());
        let embeds = tower.embed_tokens(ids.clone());
        let b = tower.forward_embeddings(embeds.clone(), ids.clone());
        let diff = (a.last_hidden_state - b.last_hidden_state)
            .abs()
            .max()
            .into_scalar();
        assert_eq!(diff, 0.0);
        // An edited embedding changes the output from that position on (causal mask).
        let edited = embeds.slice_assign([0..1, 2..3, 0..16], Tensor::zeros([1, 1, 16], &device));
        let c = tower.forward_embeddings(edited, ids).last_hidden_state;
        let a = tower.forward(Tensor::from_data(
            TensorData::new(vec![1i64, 5, 49, 3, 0, 2, 9, 9, 9, 9], [2, 5]),
            &device,
        ));
        let before = (a.last_hidden_state.clone().narrow(1, 0, 2) - c.clone().narrow(1, 0, 2))
            .abs()
            .max()
            .into_scalar();
        let after = (a.last_hidden_state.narrow(1, 2, 1) - c.narrow(1, 2, 1))
            .abs()
            .max()
            .into_scalar();
        assert_eq!(before, 0.0);
        assert!(after > 1e-3, "{after}");
    }

    #[test]
    #[should_panic(expected = "outside the vocabulary")]
    fn ids_outside_the_vocabulary_panic() {
        let config = ClipTextConfig::new()
            .with_vocab_size(10)
            .with_context_length(4)
            .with_width(8)
            .with_heads(2)
            .with_layers(1)
            .with_mlp_width(8);
        let device = Default::default();
        let tower = config.init::<Flex>(&device);
        tower.embed(&[vec![1, 2, 10]], &device);
    }
}
