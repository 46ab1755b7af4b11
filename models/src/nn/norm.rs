//! `torch.nn.LayerNorm` and `torch.nn.GroupNorm`.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use super::{Init, child, param, scale};
use crate::error::ModelError;

/// `torch.nn.LayerNorm` over the last axis, with affine parameters.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// `[width]`
    pub weight: Param<Tensor<B, 1>>,
    /// `[width]`
    pub bias: Param<Tensor<B, 1>>,
    #[module(skip)]
    eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// `{prefix}.weight` and `{prefix}.bias`.
    pub fn new(
        init: &Init<'_>,
        prefix: &str,
        width: usize,
        eps: f64,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            weight: scale(init, &child(prefix, "weight"), width, device)?,
            bias: param(init, &child(prefix, "bias"), [width], None, device)?,
            eps,
        })
    }

    /// A layer from tensors a loader read.
    pub fn from_tensors(weight: Tensor<B, 1>, bias: Tensor<B, 1>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: Param::from_tensor(bias),
            eps,
        }
    }

    /// Normalises the last axis (biased variance), through the backend's fused layer norm
    /// (burn's decomposition where a backend has none, so autodiff works).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
            x.into_primitive().tensor(),
            self.weight.val().into_primitive().tensor(),
            Some(self.bias.val().into_primitive().tensor()),
            self.eps,
        )))
    }
}

/// `torch.nn.GroupNorm` with affine parameters.
#[derive(Module, Debug)]
pub struct GroupNorm<B: Backend> {
    /// `[channels]`
    pub weight: Param<Tensor<B, 1>>,
    /// `[channels]`
    pub bias: Param<Tensor<B, 1>>,
    #[module(skip)]
    groups: usize,
    #[module(skip)]
    eps: f64,
}

impl<B: Backend> GroupNorm<B> {
    /// `{prefix}.weight` and `{prefix}.bias`; the channels must split into the groups.
    pub fn new(
        init: &Init<'_>,
        prefix: &str,
        groups: usize,
        channels: usize,
        eps: f64,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(ModelError::Setting(format!(
                "{prefix}: {channels} channels cannot be split into {groups} groups"
            )));
        }
        Ok(Self {
            weight: scale(init, &child(prefix, "weight"), channels, device)?,
            bias: param(init, &child(prefix, "bias"), [channels], None, device)?,
            groups,
            eps,
        })
    }

    /// Normalises each group of channels over the channels and positions, biased variance.
    ///
    /// # Shapes
    /// `[batch, channels, …]` (rank 3 or 4)
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let (weight, bias) = (self.weight.val(), self.bias.val());
        let x = match super::fast::group_norm(x, weight, bias, self.groups, self.eps) {
            Ok(y) => return y,
            Err(x) => x,
        };
        let shape = x.shape();
        let dims: [usize; D] = shape.dims();
        let (batch, channels) = (dims[0], dims[1]);
        let per_group = dims[2..].iter().product::<usize>() * channels / self.groups;
        let g = x.reshape([batch, self.groups, per_group]);
        let mean = g.clone().mean_dim(2);
        let centered = g - mean;
        let var = centered.clone().square().mean_dim(2);
        let normed = (centered / (var + self.eps).sqrt()).reshape(dims);
        let mut affine = [1usize; D];
        affine[1] = channels;
        normed * self.weight.val().reshape(affine) + self.bias.val().reshape(affine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    #[test]
    fn layer_norm_matches_the_formula() {
        let d = Default::default();
        let x = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![1., 2., 3., 4., -1., 0.], [2, 3]),
            &d,
        );
        let ln = LayerNorm::from_tensors(
            Tensor::from_floats([1., 2., 0.5], &d),
            Tensor::from_floats([0., 1., -1.], &d),
            1e-5,
        );
        let y = ln.forward(x).into_data().to_vec::<f32>().unwrap();
        // Row [1, 2, 3]: mean 2, biased var 2/3.
        let s = (2f32 / 3. + 1e-5).sqrt();
        let want = [-1. / s, 1., 0.5 / s - 1.];
        for (a, b) in y[..3].iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{y:?}");
        }
    }

    #[test]
    fn group_norm_refuses_indivisible_channels() {
        let e = GroupNorm::<Flex>::new(&Init::Random, "norm", 3, 8, 1e-5, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("norm") && e.contains('8') && e.contains('3'),
            "{e}"
        );
    }
}
