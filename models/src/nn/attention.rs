//! Multi-head scaled dot-product attention, the one function every transformer here (CLIP,
//! DINO, the UNet, the adapters' decoupled attention) computes attention with.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

/// `[batch, tokens, heads·head_dim]` → `[batch, heads, tokens, head_dim]`.
pub fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, n, w] = x.dims();
    x.reshape([b, n, heads, w / heads]).swap_dims(1, 2)
}

/// `[batch, heads, tokens, head_dim]` → `[batch, tokens, heads·head_dim]`.
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, n, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, n, h * d])
}

/// `softmax(q·kᵀ / √d)·v` over `[batch, heads, tokens, head_dim]` tensors (causal: each query
/// sees only keys at or before its position), merged back to `[batch, tokens, heads·head_dim]`,
/// through burn's fused attention, or on flex (f32) through the host kernel of `nn::fast`
/// (vectorised softmax; burn-flex 0.21's is scalar).
pub fn multi_head_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    causal: bool,
) -> Tensor<B, 3> {
    if let Some(out) = super::fast::attention(&q, &k, &v, causal) {
        return out;
    }
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: causal,
    };
    merge_heads(attention(q, k, v, None, None, options))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;
    use burn::tensor::activation::softmax;

    #[test]
    fn fused_attention_equals_the_formula() {
        let d = Default::default();
        let q = Tensor::<Flex, 4>::random([2, 3, 5, 4], Distribution::Normal(0., 1.), &d);
        let k = Tensor::<Flex, 4>::random([2, 3, 7, 4], Distribution::Normal(0., 1.), &d);
        let v = Tensor::<Flex, 4>::random([2, 3, 7, 4], Distribution::Normal(0., 1.), &d);
        let got = multi_head_attention(q.clone(), k.clone(), v.clone(), false);
        let want = merge_heads(softmax(q.matmul(k.swap_dims(2, 3)) / 2.0, 3).matmul(v));
        let diff = (got - want).abs().max().into_scalar();
        assert!(diff < 1e-5, "{diff}");
    }
}
