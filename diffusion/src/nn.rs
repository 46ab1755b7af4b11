//! The layers the UNet and the VAE are made of, as torch defines them (weights in torch's
//! layout on disk, burn's in memory), each loadable from a diffusers name prefix or drawn at
//! random for tests and timing.
//!
//! Parameters are `Param`s, so that the whole model runs under burn's autodiff backend and can
//! be frozen with `Module::no_grad`.

use burn::module::{Module, Param};
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::module::{conv2d, linear};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Tensor};

use crate::error::DiffusionError;
use crate::weights::Weights;

/// Where a module's parameters come from.
pub enum Init<'a> {
    /// Random weights (N(0, 1/fan_in) matrices and kernels, zero biases, identity norms).
    Random,
    /// The tensors under a name prefix of a component's weights.
    Load(&'a Weights),
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn param<B: Backend, const D: usize>(
    init: &Init<'_>,
    name: &str,
    shape: [usize; D],
    fan_in: Option<usize>,
    device: &B::Device,
) -> Result<Param<Tensor<B, D>>, DiffusionError> {
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

/// `torch.nn.Linear`: `x · W + b`, `W` stored `[in, out]`.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[in, out]`
    pub weight: Param<Tensor<B, 2>>,
    /// `[out]`
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// `{prefix}.weight` (`[out, in]` on disk) and, with `bias`, `{prefix}.bias`.
    pub fn new(
        init: &Init<'_>,
        prefix: &str,
        inp: usize,
        out: usize,
        bias: bool,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        let name = join(prefix, "weight");
        let weight = match init {
            Init::Load(w) => Param::from_tensor(w.linear_weight(&name, inp, out, device)?),
            Init::Random => param(init, &name, [inp, out], Some(inp), device)?,
        };
        let bias = bias
            .then(|| param(init, &join(prefix, "bias"), [out], None, device))
            .transpose()?;
        Ok(Self { weight, bias })
    }

    /// Applies the layer on the last axis.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }
}

/// `torch.nn.Conv2d` with square kernel, stride and padding, and a bias.
#[derive(Module, Debug)]
pub struct Conv2d<B: Backend> {
    /// `[out, in, k, k]`
    pub weight: Param<Tensor<B, 4>>,
    /// `[out]`
    pub bias: Param<Tensor<B, 1>>,
    #[module(skip)]
    stride: usize,
    #[module(skip)]
    padding: usize,
}

impl<B: Backend> Conv2d<B> {
    /// `{prefix}.weight` and `{prefix}.bias`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        init: &Init<'_>,
        prefix: &str,
        inp: usize,
        out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        Ok(Self {
            weight: param(
                init,
                &join(prefix, "weight"),
                [out, inp, kernel, kernel],
                Some(inp * kernel * kernel),
                device,
            )?,
            bias: param(init, &join(prefix, "bias"), [out], None, device)?,
            stride,
            padding,
        })
    }

    /// # Shapes
    /// `[batch, in, h, w]` → `[batch, out, h', w']`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        conv2d(
            x,
            self.weight.val(),
            Some(self.bias.val()),
            ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1),
        )
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
    /// `{prefix}.weight` and `{prefix}.bias`.
    pub fn new(
        init: &Init<'_>,
        prefix: &str,
        groups: usize,
        channels: usize,
        eps: f64,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        if groups == 0 || channels % groups != 0 {
            return Err(DiffusionError::Setting(format!(
                "{prefix}: {channels} channels cannot be split into {groups} groups"
            )));
        }
        let weight = match init {
            Init::Random => Param::from_tensor(Tensor::ones([channels], device)),
            Init::Load(_) => param(init, &join(prefix, "weight"), [channels], None, device)?,
        };
        Ok(Self {
            weight,
            bias: param(init, &join(prefix, "bias"), [channels], None, device)?,
            groups,
            eps,
        })
    }

    /// Normalises each group of channels over the channels and positions, biased variance.
    ///
    /// # Shapes
    /// `[batch, channels, …]` (rank 3 or 4)
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
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
    ) -> Result<Self, DiffusionError> {
        let weight = match init {
            Init::Random => Param::from_tensor(Tensor::ones([width], device)),
            Init::Load(_) => param(init, &join(prefix, "weight"), [width], None, device)?,
        };
        Ok(Self {
            weight,
            bias: param(init, &join(prefix, "bias"), [width], None, device)?,
            eps,
        })
    }

    /// Normalises the last axis (biased variance).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mean = x.clone().mean_dim(D - 1);
        let centered = x - mean;
        let var = centered.clone().square().mean_dim(D - 1);
        let normed = centered / (var + self.eps).sqrt();
        let mut affine = [1usize; D];
        affine[D - 1] = self.weight.dims()[0];
        normed * self.weight.val().reshape(affine) + self.bias.val().reshape(affine)
    }
}

/// diffusers' `GEGLU` feed-forward input: `h · gelu(gate)` with `[h, gate] = proj(x)`.
#[derive(Module, Debug)]
pub struct Geglu<B: Backend> {
    /// `dim → 2·inner`
    pub proj: Linear<B>,
}

impl<B: Backend> Geglu<B> {
    /// `{prefix}.proj`.
    pub fn new(
        init: &Init<'_>,
        prefix: &str,
        dim: usize,
        inner: usize,
        device: &B::Device,
    ) -> Result<Self, DiffusionError> {
        Ok(Self {
            proj: Linear::new(init, &join(prefix, "proj"), dim, 2 * inner, true, device)?,
        })
    }

    /// # Shapes
    /// `[batch, tokens, dim]` → `[batch, tokens, inner]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = self.proj.forward(x);
        let inner = h.dims()[2] / 2;
        let gate = h.clone().narrow(2, inner, inner);
        h.narrow(2, 0, inner) * gelu(gate)
    }
}

/// `x · sigmoid(x)`.
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    burn::tensor::activation::silu(x)
}

/// Nearest-neighbour 2× upsampling (torch's `interpolate(scale_factor=2, mode="nearest")`),
/// written with reshapes so that it is differentiable on every backend.
pub fn upsample_nearest_2x<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}

/// A name under a prefix (`prefix.name`, or `name` at the root).
pub fn child(prefix: &str, name: impl std::fmt::Display) -> String {
    join(prefix, &name.to_string())
}
