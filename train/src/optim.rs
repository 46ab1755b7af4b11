//! Adam and AdamW with torch's exact semantics over parameter groups, torch's
//! `clip_grad_norm_`, and gradient accumulation.
//!
//! Why not burn 0.21's `AdamW` / `Adam` (`burn-optim/src/optim/adamw.rs`, `adam.rs`): their
//! update rule is the same as torch's (decoupled decay `p·(1 − lr·wd)` before the moments, bias
//! correction, ε outside the square root; Adam's decay added to the gradient), but
//! - one optimizer takes one learning rate per step: there are no parameter groups (the
//!   references train LoRA at 1e-4 and the rest at 1e-5);
//! - their gradient clipping (`GradientClipping::Norm`) scales each tensor by its own norm;
//!   torch's `clip_grad_norm_` scales all of them by the global L2 norm;
//! - the bias corrections are computed in float32 (`1 − 0.999f32` is 1.3e-5 relative off
//!   torch's double `1 − 0.999` at t = 1) and `√(v / bc₂)` is taken where torch takes `√v / √bc₂`;
//! - their state is keyed by burn's parameter ids, which a reloaded adapter does not keep.
//!
//! So this module implements torch 2.5's `_single_tensor_adam(w)` (the CPU path) step for
//! step over burn's `GradientsParams`, with state keyed by checkpoint key ([`ParamNames`]):
//!
//! ```text
//! AdamW: p ← p · (1 − lr·wd)           Adam: g ← g + wd · p
//! m ← m + (1 − β₁)(g − m)              (lerp)
//! v ← v · β₂ + (1 − β₂) · g · g
//! p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
//! ```
//!
//! Frozen parameters (no gradient: `require_grad` off, or not in the graph) get no update and
//! no state.

use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};

use crate::error::TrainError;
use crate::names::ParamNames;

/// Which of torch's two Adams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdamKind {
    /// `torch.optim.AdamW`: weight decay applied to the weights, decoupled from the moments.
    AdamW,
    /// `torch.optim.Adam`: weight decay as an L2 term added to the gradient.
    Adam,
}

/// The hyper-parameters torch's constructors take (except the learning rate, per group).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Adam or AdamW.
    pub kind: AdamKind,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Weight decay.
    pub weight_decay: f64,
}

impl AdamConfig {
    /// `torch.optim.AdamW` defaults (β 0.9 / 0.999, ε 1e-8, decay 1e-2), IP-Adapter's scripts'.
    pub fn adamw() -> Self {
        Self {
            kind: AdamKind::AdamW,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }

    /// `torch.optim.Adam` defaults (no weight decay), persongen's.
    pub fn adam() -> Self {
        Self {
            kind: AdamKind::Adam,
            weight_decay: 0.0,
            ..Self::adamw()
        }
    }
}

/// Tensors trained at their own base learning rate.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamGroup {
    /// Picks tensors whose checkpoint key contains it (`_lora.`, `image_proj.`); the empty
    /// pattern picks every tensor. The first group that matches a tensor takes it.
    pub pattern: String,
    /// The base learning rate (the schedule scales it).
    pub lr: f64,
}

impl ParamGroup {
    /// A group of the tensors whose key contains `pattern`.
    pub fn new(pattern: impl Into<String>, lr: f64) -> Self {
        Self {
            pattern: pattern.into(),
            lr,
        }
    }
}

/// One tensor's moments, flattened (so that tensors of every rank share one map).
#[derive(Debug, Clone)]
pub struct AdamState<B: Backend> {
    /// Steps taken (torch's `state["step"]`).
    pub step: u64,
    /// First moment `m`.
    pub exp_avg: Tensor<B, 1>,
    /// Second moment `v`.
    pub exp_avg_sq: Tensor<B, 1>,
}

/// Adam(W) over parameter groups; `B` is the inner (non-autodiff) backend the update runs on.
#[derive(Debug, Clone)]
pub struct Optimizer<B: Backend> {
    config: AdamConfig,
    groups: Vec<ParamGroup>,
    state: HashMap<String, AdamState<B>>,
}

impl<B: Backend> Optimizer<B> {
    /// An optimizer with no state yet; `groups` must not be empty.
    pub fn new(config: AdamConfig, groups: Vec<ParamGroup>) -> Result<Self, TrainError> {
        if groups.is_empty() {
            return Err(TrainError::Setting(
                "no parameter group: give at least one (an empty pattern takes every tensor)"
                    .into(),
            ));
        }
        Ok(Self {
            config,
            groups,
            state: HashMap::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// The groups, in matching order.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// The group index of a tensor key.
    pub fn group_of(&self, key: &str) -> Option<usize> {
        self.groups.iter().position(|g| key.contains(&g.pattern))
    }

    /// Checks that every trainable tensor of `names` falls in a group.
    pub fn check(&self, names: &ParamNames) -> Result<(), TrainError> {
        match names
            .iter()
            .find(|t| t.trainable && self.group_of(&t.key).is_none())
        {
            Some(t) => Err(TrainError::Ungrouped(t.key.clone())),
            None => Ok(()),
        }
    }

    /// The state of each tensor that has been stepped, by checkpoint key (for checkpoints).
    pub fn state(&self) -> &HashMap<String, AdamState<B>> {
        &self.state
    }

    /// Replaces the state (resuming from a checkpoint).
    pub fn set_state(&mut self, state: HashMap<String, AdamState<B>>) {
        self.state = state;
    }

    /// One optimizer step on `module` with `grads` (already clipped / accumulated), every
    /// group at `base lr · lr_factor`. Tensors without a gradient are left as they are.
    pub fn step<A, M>(
        &mut self,
        module: M,
        mut grads: GradientsParams,
        names: &ParamNames,
        lr_factor: f64,
    ) -> Result<M, TrainError>
    where
        A: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<A>,
    {
        // Refuse before changing anything: every tensor with a gradient needs a name and a
        // group.
        let mut check = GroupCheck {
            optimizer: self,
            grads: &grads,
            names,
            error: None,
        };
        module.visit(&mut check);
        if let Some(e) = check.error {
            return Err(e);
        }
        let mut mapper = AdamMapper {
            optimizer: self,
            grads: &mut grads,
            names,
            lr_factor,
        };
        Ok(module.map(&mut mapper))
    }

    fn update<const D: usize>(
        &mut self,
        key: &str,
        lr: f64,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
    ) -> Tensor<B, D> {
        let c = self.config;
        let shape = param.shape();
        let n = shape.num_elements();
        let mut p = param.reshape([n]);
        let mut g = grad.reshape([n]);
        let state = self.state.remove(key).unwrap_or_else(|| AdamState {
            step: 0,
            exp_avg: p.zeros_like(),
            exp_avg_sq: p.zeros_like(),
        });
        if c.weight_decay != 0.0 {
            match c.kind {
                AdamKind::AdamW => p = p.mul_scalar(1.0 - lr * c.weight_decay),
                AdamKind::Adam => g = g + p.clone().mul_scalar(c.weight_decay),
            }
        }
        let step = state.step + 1;
        // torch: exp_avg.lerp_(grad, 1 − β₁), which is `m + w·(g − m)` for w < ½.
        let m = state.exp_avg.clone() + (g.clone() - state.exp_avg).mul_scalar(1.0 - c.beta1);
        // exp_avg_sq.mul_(β₂).addcmul_(grad, grad, value = 1 − β₂).
        let v = state.exp_avg_sq.mul_scalar(c.beta2) + g.clone().mul_scalar(1.0 - c.beta2) * g;
        let bias1 = 1.0 - c.beta1.powi(step as i32);
        let bias2_sqrt = (1.0 - c.beta2.powi(step as i32)).sqrt();
        let step_size = lr / bias1;
        let denom = v.clone().sqrt().div_scalar(bias2_sqrt).add_scalar(c.eps);
        // param.addcdiv_(exp_avg, denom, value = −step_size): p + (value · m) / denom.
        let p = p + m.clone().mul_scalar(-step_size) / denom;
        self.state.insert(
            key.to_string(),
            AdamState {
                step,
                exp_avg: m,
                exp_avg_sq: v,
            },
        );
        p.reshape(shape)
    }
}

struct GroupCheck<'a, B: Backend> {
    optimizer: &'a Optimizer<B>,
    grads: &'a GradientsParams,
    names: &'a ParamNames,
    error: Option<TrainError>,
}

impl<A: AutodiffBackend> ModuleVisitor<A> for GroupCheck<'_, A::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        if self.error.is_some() || self.grads.get::<A::InnerBackend, D>(param.id).is_none() {
            return;
        }
        self.error = match self.names.get(param.id) {
            None => Some(TrainError::Setting(
                "a tensor with a gradient is not in the trainer's names (names built for another \
                 module?)"
                    .into(),
            )),
            Some(named) if self.optimizer.group_of(&named.key).is_none() => {
                Some(TrainError::Ungrouped(named.key.clone()))
            }
            Some(_) => None,
        };
    }
}

struct AdamMapper<'a, B: Backend> {
    optimizer: &'a mut Optimizer<B>,
    grads: &'a mut GradientsParams,
    names: &'a ParamNames,
    lr_factor: f64,
}

impl<A, B> ModuleMapper<A> for AdamMapper<'_, B>
where
    A: AutodiffBackend<InnerBackend = B>,
    B: Backend,
{
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<A, D>>) -> Param<Tensor<A, D>> {
        let (id, tensor, mapper) = param.consume();
        let grad = self.grads.remove::<B, D>(id);
        let named = self.names.get(id);
        let tensor = match (grad, named) {
            (Some(grad), Some(named)) => {
                let group = self
                    .optimizer
                    .group_of(&named.key)
                    .expect("groups checked before the step");
                let lr = self.optimizer.groups[group].lr * self.lr_factor;
                let require_grad = tensor.is_require_grad();
                let updated = self.optimizer.update(&named.key, lr, tensor.inner(), grad);
                let mut t = Tensor::from_inner(updated);
                if require_grad {
                    t = t.require_grad();
                }
                t
            }
            _ => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// torch's `clip_grad_norm_(params, max_norm)`: the global L2 norm of all gradients of
/// `module`'s parameters; when `max_norm` is given every gradient is multiplied by
/// `min(1, max_norm / (norm + 1e-6))`. Returns the norm before clipping.
///
/// The norm is reduced on the device; reading it back is the only synchronisation.
pub fn clip_grad_norm<A, M>(module: &M, grads: &mut GradientsParams, max_norm: Option<f64>) -> f32
where
    A: AutodiffBackend,
    M: AutodiffModule<A>,
{
    let mut squares = SquareSum::<A::InnerBackend> { grads, total: None };
    module.visit(&mut squares);
    let Some(total) = squares.total else {
        return 0.0;
    };
    let norm = total.sqrt();
    if let Some(max_norm) = max_norm {
        let coef = (norm.clone().add_scalar(1e-6).recip() * max_norm).clamp_max(1.0);
        let mut scale = Scale::<A::InnerBackend> { grads, coef };
        module.visit(&mut scale);
    }
    norm.into_scalar().elem::<f32>()
}

struct SquareSum<'a, B: Backend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B, 1>>,
}

impl<A: AutodiffBackend> ModuleVisitor<A> for SquareSum<'_, A::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        if let Some(g) = self.grads.get::<A::InnerBackend, D>(param.id) {
            let s = g.square().sum();
            self.total = Some(match self.total.take() {
                None => s,
                Some(t) => t + s,
            });
        }
    }
}

struct Scale<'a, B: Backend> {
    grads: &'a mut GradientsParams,
    coef: Tensor<B, 1>,
}

impl<A: AutodiffBackend> ModuleVisitor<A> for Scale<'_, A::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        if let Some(g) = self.grads.remove::<A::InnerBackend, D>(param.id) {
            let coef = self.coef.clone().reshape([1; D]);
            self.grads.register(param.id, g * coef);
        }
    }
}

/// Sums the gradients of `k` micro-batches; with each micro-batch's loss divided by `k`
/// before its backward pass (as accelerate does), the sum is their mean.
pub struct GradAccumulator<A: AutodiffBackend, M: AutodiffModule<A>> {
    inner: burn::optim::GradientsAccumulator<M>,
    count: usize,
    _backend: std::marker::PhantomData<A>,
}

impl<A: AutodiffBackend, M: AutodiffModule<A>> Default for GradAccumulator<A, M> {
    fn default() -> Self {
        Self {
            inner: burn::optim::GradientsAccumulator::new(),
            count: 0,
            _backend: std::marker::PhantomData,
        }
    }
}

impl<A: AutodiffBackend, M: AutodiffModule<A>> GradAccumulator<A, M> {
    /// Adds one micro-batch's gradients of `module`'s parameters.
    pub fn add(&mut self, module: &M, grads: A::Gradients) {
        let grads = GradientsParams::from_grads(grads, module);
        self.inner.accumulate(module, grads);
        self.count += 1;
    }

    /// Micro-batches added so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The summed gradients; the accumulator starts over.
    pub fn take(&mut self) -> GradientsParams {
        self.count = 0;
        self.inner.grads()
    }
}
