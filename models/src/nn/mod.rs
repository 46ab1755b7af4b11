//! The one set of layers every burn network of idforge is built from (CLIP, DINO, the UNet,
//! the VAE, the adapters): torch's `Linear`, `Conv2d`, `LayerNorm`, `GroupNorm` and multi-head
//! scaled dot-product attention, with torch's semantics (weights in torch's layout on disk,
//! burn's in memory), each loadable from a name prefix of a [`WeightStore`], built from
//! tensors a loader assembled (packed q/k/v), or drawn at random for tests and timing.
//!
//! Parameters are `Param`s, so that every network runs under burn's autodiff backend and can be
//! frozen with `Module::no_grad`.

mod activation;
mod attention;
mod conv;
pub(crate) mod fast;
mod linear;
mod norm;

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

pub use activation::{geglu, gelu, quick_gelu, silu};
pub use attention::{merge_heads, multi_head_attention, split_heads};
pub use conv::Conv2d;
pub use linear::Linear;
pub use norm::{GroupNorm, LayerNorm};

use crate::error::ModelError;
use crate::weights::WeightStore;

/// Where a layer's parameters come from.
#[derive(Clone, Copy)]
pub enum Init<'a> {
    /// Random weights (N(0, 1/fan_in) matrices and kernels, zero biases, identity norms).
    Random,
    /// The tensors under a name prefix of a checkpoint.
    Load(&'a WeightStore),
}

/// A name under a prefix (`prefix.name`, or `name` at the root).
pub fn child(prefix: &str, name: impl std::fmt::Display) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A parameter read from the store, or random N(0, 1/fan_in) (zeros without a fan-in).
fn param<B: Backend, const D: usize>(
    init: &Init<'_>,
    name: &str,
    shape: [usize; D],
    fan_in: Option<usize>,
    device: &B::Device,
) -> Result<Param<Tensor<B, D>>, ModelError> {
    let tensor = match init {
        Init::Load(w) => w.tensor(name, shape, device)?,
        Init::Random => match fan_in {
            Some(f) => Tensor::random(
                shape,
                Distribution::Normal(0.0, (f as f64).powf(-0.5)),
                device,
            ),
            None => Tensor::zeros(shape, device),
        },
    };
    Ok(Param::from_tensor(tensor))
}

/// A norm's scale: read, or ones.
fn scale<B: Backend>(
    init: &Init<'_>,
    name: &str,
    width: usize,
    device: &B::Device,
) -> Result<Param<Tensor<B, 1>>, ModelError> {
    match init {
        Init::Random => Ok(Param::from_tensor(Tensor::ones([width], device))),
        Init::Load(_) => param(init, name, [width], None, device),
    }
}
