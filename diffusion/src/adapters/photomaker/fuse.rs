//! PhotoMaker's `FuseModule` (`photomaker/model.py`, identical in `model_v2.py`): each class-word
//! token of the prompt embeddings is fused with one identity token,
//! `layer_norm(mlp2(mlp1(cat[p, id]) + p))`, and written back in place.

use std::ops::Range;

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use idforge_models::nn::{Init, LayerNorm, Linear, child};

use crate::error::DiffusionError;

/// model.py's `MLP`: `LayerNorm → fc1 → GELU → fc2`, plus the input when `residual`.
#[derive(Module, Debug)]
pub struct FuseMlp<B: Backend> {
    layernorm: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
    #[module(skip)]
    residual: bool,
}

impl<B: Backend> FuseMlp<B> {
    fn new(
        init: &Init<'_>,
        prefix: &str,
        [inp, hidden, out]: [usize; 3],
        residual: bool,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        let c = |n| child(prefix, n);
        Ok(Self {
            layernorm: LayerNorm::new(init, &c("layernorm"), inp, 1e-5, device)?,
            fc1: Linear::new(init, &c("fc1"), inp, hidden, true, device)?,
            fc2: Linear::new(init, &c("fc2"), hidden, out, true, device)?,
            residual,
        })
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let y = self
            .fc2
            .forward(gelu(self.fc1.forward(self.layernorm.forward(x.clone()))));
        if self.residual { y + x } else { y }
    }
}

/// `FuseModule(embed_dim)`: `mlp1 = MLP(2·d, d, d)`, `mlp2 = MLP(d, d, d, residual)`,
/// `layer_norm = LayerNorm(d)`, with `d` the SDXL text width (2048).
#[derive(Module, Debug)]
pub struct FuseModule<B: Backend> {
    mlp1: FuseMlp<B>,
    mlp2: FuseMlp<B>,
    layer_norm: LayerNorm<B>,
}

impl<B: Backend> FuseModule<B> {
    /// `{prefix}.mlp1.*`, `{prefix}.mlp2.*`, `{prefix}.layer_norm.*` of width `dim`, or random.
    pub fn new(
        init: &Init<'_>,
        prefix: &str,
        dim: usize,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        let c = |n| child(prefix, n);
        Ok(Self {
            mlp1: FuseMlp::new(init, &c("mlp1"), [2 * dim, dim, dim], false, device)?,
            mlp2: FuseMlp::new(init, &c("mlp2"), [dim, dim, dim], true, device)?,
            layer_norm: LayerNorm::new(init, &c("layer_norm"), dim, 1e-5, device)?,
        })
    }

    /// `fuse_fn`: one fused token per row.
    ///
    /// # Shapes
    /// - `prompt`, `id`: `[tokens, dim]` → `[tokens, dim]`
    pub fn fuse_fn(&self, prompt: Tensor<B, 2>, id: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = self.mlp1.forward(Tensor::cat(vec![prompt.clone(), id], 1)) + prompt;
        self.layer_norm.forward(self.mlp2.forward(x))
    }

    /// The prompt embeddings with the class tokens at `class_tokens` replaced by their fusion
    /// with the identity tokens, in order (`masked_scatter_`): the first `class_tokens.len()`
    /// rows of `id_tokens` are used, as the reference keeps the first references when the
    /// class tokens were cut at the context length.
    ///
    /// # Shapes
    /// - `prompt_embeds`: `[1, context, dim]`
    /// - `id_tokens`: `[references · tokens_per_reference, dim]`
    pub fn forward(
        &self,
        prompt_embeds: Tensor<B, 3>,
        class_tokens: Range<usize>,
        id_tokens: Tensor<B, 2>,
    ) -> Result<Tensor<B, 3>, DiffusionError> {
        let [batch, context, dim] = prompt_embeds.dims();
        let [ids, id_dim] = id_tokens.dims();
        let n = class_tokens.len();
        if batch != 1 || class_tokens.end > context || n == 0 || n > ids || id_dim != dim {
            return Err(DiffusionError::Setting(format!(
                "PhotoMaker fuse: class tokens {class_tokens:?} of a [{batch}, {context}, {dim}] \
                 prompt with {ids} identity tokens of width {id_dim} (one prompt, one identity \
                 token per class token, equal widths)"
            )));
        }
        let row = prompt_embeds.clone().reshape([context, dim]);
        let fused = self.fuse_fn(
            row.clone().narrow(0, class_tokens.start, n),
            id_tokens.narrow(0, 0, n),
        );
        let mut parts = Vec::new();
        if class_tokens.start > 0 {
            parts.push(row.clone().narrow(0, 0, class_tokens.start));
        }
        parts.push(fused);
        if class_tokens.end < context {
            parts.push(row.narrow(0, class_tokens.end, context - class_tokens.end));
        }
        Ok(Tensor::cat(parts, 0).reshape([1, context, dim]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn only_the_class_tokens_change() {
        let device = Default::default();
        let fuse = FuseModule::<Flex>::new(&Init::Random, "", 8, &device).unwrap();
        let prompt = Tensor::<Flex, 3>::random(
            [1, 6, 8],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let ids = Tensor::<Flex, 2>::ones([3, 8], &device);
        let out = fuse.forward(prompt.clone(), 2..4, ids).unwrap();
        let diff = (out - prompt).abs().sum_dim(2).reshape([6]).to_data();
        let d: Vec<f32> = diff.to_vec().unwrap();
        assert!(d[0] == 0.0 && d[1] == 0.0 && d[4] == 0.0 && d[5] == 0.0);
        assert!(d[2] > 0.0 && d[3] > 0.0);
    }

    #[test]
    fn too_few_identity_tokens_is_an_error() {
        let device = Default::default();
        let fuse = FuseModule::<Flex>::new(&Init::Random, "", 8, &device).unwrap();
        let prompt = Tensor::<Flex, 3>::zeros([1, 6, 8], &device);
        let ids = Tensor::<Flex, 2>::ones([1, 8], &device);
        assert!(fuse.forward(prompt, 2..4, ids).is_err());
    }
}
