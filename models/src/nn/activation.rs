//! The activations of the networks here (exact GELU, CLIP's quick GELU, SiLU, diffusers'
//! GEGLU gating), through the vectorised, threaded host kernels of `nn::fast` on flex f32
//! (burn-flex 0.21's elementwise ops are scalar and single-threaded, the exact GELU through a
//! scalar `erf`), burn's ops everywhere else (autodiff, GPUs).

use burn::tensor::Tensor;
use burn::tensor::activation;
use burn::tensor::backend::Backend;

use super::fast::{self, Act};

/// `x·Φ(x)` with the exact normal CDF (torch's `gelu`, approximate `none`).
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    fast::activation(x, Act::Gelu).unwrap_or_else(activation::gelu)
}

/// `x·sigmoid(1.702·x)` (OpenAI CLIP's `QuickGELU`).
pub fn quick_gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    fast::activation(x, Act::QuickGelu)
        .unwrap_or_else(|m| m.clone() * activation::sigmoid(m * 1.702))
}

/// `x·sigmoid(x)`.
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    fast::activation(x, Act::Silu).unwrap_or_else(activation::silu)
}

/// diffusers' `GEGLU` gating: `h · gelu(gate)` with `[h, gate]` the two halves of the last
/// axis of `x`.
///
/// # Shapes
/// `[batch, tokens, 2·inner]` → `[batch, tokens, inner]`
pub fn geglu<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    fast::geglu(x).unwrap_or_else(|h| {
        let inner = h.dims()[2] / 2;
        let gate = h.clone().narrow(2, inner, inner);
        h.narrow(2, 0, inner) * activation::gelu(gate)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{Distribution, TensorData};

    /// Values over the activations' whole range: ±20 and the interesting middle.
    fn inputs() -> Tensor<Flex, 2> {
        let v: Vec<f32> = (0..8000).map(|i| (i as f32 - 4000.0) * 0.005).collect();
        let mut v2 = v.clone();
        v2.extend([-100.0, -30.0, -9.0, 9.0, 30.0, 100.0, 0.0, -0.0]);
        let n = v2.len();
        Tensor::from_data(TensorData::new(v2, [2, n / 2]), &Default::default())
    }

    /// The largest difference relative to `1 + |x|` (a few ulp of the output).
    fn max_diff(a: Tensor<Flex, 2>, b: Tensor<Flex, 2>) -> f32 {
        let x = inputs();
        let scale = x.abs() + 1.0;
        ((a - b).abs() / scale).max().into_scalar()
    }

    #[test]
    fn activations_match_burns() {
        let x = inputs();
        let gelu_diff = max_diff(gelu(x.clone()), activation::gelu(x.clone()));
        assert!(gelu_diff < 1e-6, "gelu {gelu_diff}");
        let quick = x.clone() * activation::sigmoid(x.clone() * 1.702);
        let quick_diff = max_diff(quick_gelu(x.clone()), quick);
        assert!(quick_diff < 1e-6, "quick gelu {quick_diff}");
        let silu_diff = max_diff(silu(x.clone()), activation::silu(x.clone()));
        assert!(silu_diff < 1e-6, "silu {silu_diff}");
    }

    #[test]
    fn activations_keep_a_shared_input_and_read_strided_views() {
        let x = inputs();
        let keep = x.clone();
        let _ = gelu(x.clone());
        assert_eq!(max_diff(keep, x.clone()), 0.0);
        let got = silu(x.clone().swap_dims(0, 1)).swap_dims(0, 1);
        assert!(max_diff(got, activation::silu(x)) < 1e-6);
    }

    #[test]
    fn geglu_matches_the_formula() {
        let d = Default::default();
        let h = Tensor::<Flex, 3>::random([2, 5, 14], Distribution::Normal(0., 3.), &d);
        let want = h.clone().narrow(2, 0, 7) * activation::gelu(h.clone().narrow(2, 7, 7));
        let diff = (geglu(h) - want).abs().max().into_scalar();
        assert!(diff < 1e-5, "{diff}");
    }
}
