//! One training step of the IP-Adapter family (plain, Plus, full-face, FaceID with its LoRA,
//! FaceID-Plus) on an autodiff backend, as tencent-ailab/IP-Adapter's `tutorial_train*.py`
//! run it: the UNet frozen, the adapter's projection, `to_k_ip` / `to_v_ip` (and FaceID's LoRA)
//! trained, the decoupled attention at scale 1.
//!
//! A step is [`Trainer::gradients`] (forward and backward over `k` micro-batches, the mean of
//! their gradients, on one device or spread over replicas) then [`Trainer::apply`] (clipping,
//! the learning rate of the step, Adam(W)); [`Trainer::step`] does both. The trainer is one for
//! every method: a method is its [`Trained`] implementation (the IP-Adapter family's is here,
//! PhotoMaker's and the split-prompt adapter's beside their parts).

use std::marker::PhantomData;

use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use idforge_diffusion::adapters::ip_adapter::{IpAdapter, IpScale, ProjectionInput};
use idforge_diffusion::unet::AddedConditions;
use idforge_diffusion::{AttentionHook, DdpmSchedule, UNet, UNetInput};

use crate::error::TrainError;
use crate::loss::{LossConfig, NoiseDraw, diffusion_loss, noised};
use crate::names::ParamNames;
use crate::optim::{GradAccumulator, Optimizer, clip_grad_norm};
use crate::schedule::LrSchedule;

/// One (micro-)batch: clean latents, the random draws, text embeddings and the references.
#[derive(Debug, Clone)]
pub struct IpBatch<B: Backend> {
    /// VAE latents × scaling factor, `[batch, 4, h, w]`.
    pub latents: Tensor<B, 4>,
    /// Noise, offset noise and timesteps.
    pub draw: NoiseDraw<B>,
    /// The text encoder's hidden states, `[batch, tokens, cross]` (empty-prompt states for a
    /// dropped caption).
    pub context: Tensor<B, 3>,
    /// The references' embeddings, `batch · references` rows, row-major (zeros for a dropped
    /// image, as the reference scripts do).
    pub references: ProjectionInput<B>,
    /// The face box of each sample in image pixels `[x0, y0, x1, y1]` when this step uses the
    /// masked loss.
    pub face_boxes: Option<Vec<[f32; 4]>>,
}

/// What a step does besides Adam: the loss options, clipping, the learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepConfig {
    /// Noise offset and min-SNR.
    pub loss: LossConfig,
    /// `clip_grad_norm_`'s `max_norm` (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
    /// The factor of every group's base rate per step.
    pub lr: LrSchedule,
}

/// The gradients of one step before clipping.
#[derive(Debug)]
pub struct Gradients {
    /// The adapter's gradients (the mean over the micro-batches).
    pub params: GradientsParams,
    /// The loss, the mean over the micro-batches.
    pub loss: f32,
    /// Each micro-batch's loss.
    pub micro_losses: Vec<f32>,
}

/// What a step did, for the progress bar and `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// The index of the step taken (0-based).
    pub step: u64,
    /// Its loss (mean over micro-batches).
    pub loss: f32,
    /// The global gradient norm before clipping.
    pub grad_norm: f32,
    /// Each group's learning rate at this step.
    pub lrs: Vec<f64>,
}

/// What a [`Trainer`] trains: a module of trained tensors, its batches, its loss on the frozen
/// UNet. Each method implements it; the step around it (micro-batches and replicas, clipping,
/// Adam, the schedule, the counters) is one piece of code for all.
pub trait Trained<A: AutodiffBackend>: AutodiffModule<A> + Sync {
    /// One (micro-)batch of this method.
    type Batch: ToDevice<A> + Sync;
    /// The trained tensors with their checkpoint keys (what the optimizer's groups select).
    fn names(&self, unet: &UNet<A>) -> Result<ParamNames, TrainError>;
    /// The loss of one batch, in the autodiff graph, `unet` frozen.
    fn loss(
        &self,
        unet: &UNet<A>,
        objective: &Objective<'_>,
        batch: &Self::Batch,
    ) -> Result<Tensor<A, 1>, TrainError>;
}

/// The diffusion objective of every method: the training noise schedule and the loss options.
#[derive(Debug, Clone, Copy)]
pub struct Objective<'a> {
    /// The base model's training schedule (ᾱ, the prediction type).
    pub schedule: &'a DdpmSchedule,
    /// Noise offset and min-SNR.
    pub loss: &'a LossConfig,
}

impl Objective<'_> {
    /// Noises `latents` with `draw`, runs `unet` with `hook` on `context` (and SDXL's `added`
    /// conditions), and returns the loss against the schedule's target (over the face boxes
    /// when given).
    #[allow(clippy::too_many_arguments)]
    pub fn denoising_loss<B: Backend>(
        &self,
        unet: &UNet<B>,
        latents: Tensor<B, 4>,
        draw: &NoiseDraw<B>,
        context: Tensor<B, 3>,
        added: Option<AddedConditions<B>>,
        hook: &dyn AttentionHook<B>,
        face_boxes: Option<&[[f32; 4]]>,
    ) -> Result<Tensor<B, 1>, TrainError> {
        let device = latents.device();
        let n = noised(self.schedule, self.loss, latents, draw)?;
        let timesteps: Vec<f32> = draw.timesteps.iter().map(|&t| t as f32).collect();
        let prediction = unet.forward_with(
            &UNetInput {
                sample: n.noisy,
                timesteps: Tensor::from_floats(timesteps.as_slice(), &device),
                context,
                added,
            },
            hook,
        );
        diffusion_loss(
            self.schedule,
            self.loss,
            prediction,
            n.target,
            &draw.timesteps,
            face_boxes,
        )
    }
}

impl<A: AutodiffBackend> Trained<A> for IpAdapter<A> {
    type Batch = IpBatch<A>;

    fn names(&self, unet: &UNet<A>) -> Result<ParamNames, TrainError> {
        ParamNames::ip_adapter(self, unet)
    }

    /// The decoupled attention at scale 1 on the text context, as the reference scripts.
    fn loss(
        &self,
        unet: &UNet<A>,
        objective: &Objective<'_>,
        batch: &IpBatch<A>,
    ) -> Result<Tensor<A, 1>, TrainError> {
        let b = batch.latents.dims()[0];
        let tokens = self.tokens(&batch.references, b)?;
        let hook = self.hook(tokens, IpScale::uniform(1.0));
        objective.denoising_loss(
            unet,
            batch.latents.clone(),
            &batch.draw,
            batch.context.clone(),
            None,
            &hook,
            batch.face_boxes.as_deref(),
        )
    }
}

/// Trains the tensors of `P` (an adapter, PhotoMaker's parts, ...) on a frozen UNet.
pub struct Trainer<A: AutodiffBackend, P: Trained<A>> {
    unet: UNet<A>,
    schedule: DdpmSchedule,
    optimizer: Optimizer<A::InnerBackend>,
    config: StepConfig,
    step: u64,
    replicas: Replicas<A, UNet<A>>,
    _trained: PhantomData<fn() -> P>,
}

/// Trains an [`IpAdapter`] (plain, Plus, full-face, FaceID with its LoRA, FaceID-Plus).
pub type IpAdapterTrainer<A> = Trainer<A, IpAdapter<A>>;

impl<A: AutodiffBackend, P: Trained<A>> Trainer<A, P> {
    /// A trainer for `trained` on `unet`, which is frozen here (`no_grad`: burn tracks no
    /// gradient for its weights). Fails when a trainable tensor of `trained` is in no group.
    pub fn new(
        unet: UNet<A>,
        trained: &P,
        schedule: DdpmSchedule,
        optimizer: Optimizer<A::InnerBackend>,
        config: StepConfig,
    ) -> Result<Self, TrainError> {
        let unet = unet.no_grad();
        optimizer.check(&trained.names(&unet)?)?;
        Ok(Self {
            replicas: Replicas::single(&unet),
            unet,
            schedule,
            optimizer,
            config,
            step: 0,
            _trained: PhantomData,
        })
    }

    /// Spreads each step's micro-batches over `devices` (data parallelism): the frozen UNet is
    /// copied to each, each copy runs its share of the micro-batches on its own thread, and the
    /// gradients are summed on the first device in micro-batch order, so the step equals the
    /// one-device step with the same micro-batches bit for bit. The first device must be the
    /// one the UNet and the trained tensors are on.
    /// One device (or none) leaves the trainer as it is.
    pub fn with_devices(mut self, devices: Vec<A::Device>) -> Self {
        if devices.len() > 1 {
            self.replicas = Replicas::new(&self.unet, devices);
        }
        self
    }

    /// The frozen UNet.
    pub fn unet(&self) -> &UNet<A> {
        &self.unet
    }

    /// The optimizer (its state, for checkpoints).
    pub fn optimizer(&self) -> &Optimizer<A::InnerBackend> {
        &self.optimizer
    }

    /// The optimizer, to restore its state.
    pub fn optimizer_mut(&mut self) -> &mut Optimizer<A::InnerBackend> {
        &mut self.optimizer
    }

    /// Optimizer steps taken (the next step's index).
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// Sets the step counter (resuming: the schedule continues from there).
    pub fn set_steps_taken(&mut self, step: u64) {
        self.step = step;
    }

    /// `trained`'s tensors with their checkpoint keys.
    pub fn names(&self, trained: &P) -> Result<ParamNames, TrainError> {
        trained.names(&self.unet)
    }

    fn objective(&self) -> Objective<'_> {
        Objective {
            schedule: &self.schedule,
            loss: &self.config.loss,
        }
    }

    /// The loss of one batch, in the autodiff graph.
    pub fn loss(&self, trained: &P, batch: &P::Batch) -> Result<Tensor<A, 1>, TrainError> {
        trained.loss(&self.unet, &self.objective(), batch)
    }

    /// Forward and backward over the micro-batches (on the replicas, when there are several):
    /// each loss divided by their count, the gradients summed (their mean).
    pub fn gradients(
        &self,
        trained: &P,
        micro_batches: &[P::Batch],
    ) -> Result<Gradients, TrainError> {
        let objective = self.objective();
        self.replicas
            .accumulate(trained, micro_batches, |unet, t, b| {
                t.loss(unet, &objective, b)
            })
    }

    /// Clips `grads`, takes the step's learning rate and updates the trained tensors.
    pub fn apply(&mut self, trained: P, grads: Gradients) -> Result<(P, StepReport), TrainError> {
        let names = trained.names(&self.unet)?;
        apply_update(
            &mut self.optimizer,
            &self.config,
            &mut self.step,
            trained,
            grads,
            &names,
        )
    }

    /// [`Trainer::gradients`] then [`Trainer::apply`].
    pub fn step(
        &mut self,
        trained: P,
        micro_batches: &[P::Batch],
    ) -> Result<(P, StepReport), TrainError> {
        let grads = self.gradients(&trained, micro_batches)?;
        self.apply(trained, grads)
    }
}

/// Forward and backward over `micro_batches` with `loss`: each loss divided by their count
/// before its backward pass (as accelerate does), the gradients summed (their mean). The
/// common half of every trainer's step.
pub(crate) fn accumulate_gradients<A, M, T>(
    module: &M,
    micro_batches: &[T],
    loss: impl Fn(&M, &T) -> Result<Tensor<A, 1>, TrainError>,
) -> Result<Gradients, TrainError>
where
    A: AutodiffBackend,
    M: burn::module::AutodiffModule<A>,
{
    let k = micro_batches.len();
    if k == 0 {
        return Err(TrainError::Setting(
            "a step needs at least one batch".into(),
        ));
    }
    let mut acc = GradAccumulator::<A, M>::default();
    let mut micro_losses = Vec::with_capacity(k);
    for batch in micro_batches {
        let loss = loss(module, batch)?;
        let scaled = if k == 1 {
            loss.clone()
        } else {
            loss.clone() / k as f32
        };
        acc.add(module, scaled.backward());
        micro_losses.push(loss.into_scalar().elem::<f32>());
    }
    let loss = micro_losses.iter().sum::<f32>() / k as f32;
    Ok(Gradients {
        params: acc.take(),
        loss,
        micro_losses,
    })
}

/// Clips `grads`, takes the step's learning rate, updates `module`'s trained tensors and
/// counts the step: the other half of every trainer's step.
pub(crate) fn apply_update<A, M>(
    optimizer: &mut Optimizer<A::InnerBackend>,
    config: &StepConfig,
    step: &mut u64,
    module: M,
    grads: Gradients,
    names: &ParamNames,
) -> Result<(M, StepReport), TrainError>
where
    A: AutodiffBackend,
    M: burn::module::AutodiffModule<A>,
{
    let mut params: GradientsParams = grads.params;
    let grad_norm = clip_grad_norm(&module, &mut params, config.max_grad_norm);
    let factor = config.lr.factor(*step);
    let module = optimizer.step(module, params, names, factor)?;
    let report = StepReport {
        step: *step,
        loss: grads.loss,
        grad_norm,
        lrs: optimizer.groups().iter().map(|g| g.lr * factor).collect(),
    };
    *step += 1;
    Ok((module, report))
}

/// A batch that can be copied to another device (a replica's).
pub trait ToDevice<B: Backend> {
    /// This batch on `device`.
    fn to_device(&self, device: &B::Device) -> Self;
}

impl<B: Backend> ToDevice<B> for IpBatch<B> {
    fn to_device(&self, device: &B::Device) -> Self {
        let opt2 = |t: &Option<Tensor<B, 2>>| t.as_ref().map(|t| t.clone().to_device(device));
        IpBatch {
            latents: self.latents.clone().to_device(device),
            draw: self.draw.to_device(device),
            context: self.context.clone().to_device(device),
            references: ProjectionInput {
                image_embeds: opt2(&self.references.image_embeds),
                hidden_states: self
                    .references
                    .hidden_states
                    .as_ref()
                    .map(|t| t.clone().to_device(device)),
                id_embeds: opt2(&self.references.id_embeds),
            },
            face_boxes: self.face_boxes.clone(),
        }
    }
}

/// The devices of a data-parallel step and a copy of the frozen model `F` on each (the first
/// is the trainer's own device).
pub(crate) struct Replicas<A: AutodiffBackend, F> {
    devices: Vec<A::Device>,
    frozen: Vec<F>,
}

impl<A: AutodiffBackend, F: burn::module::Module<A> + Sync> Replicas<A, F> {
    /// One device: the step runs on the calling thread.
    pub(crate) fn single(frozen: &F) -> Self {
        Self {
            devices: Vec::new(),
            frozen: vec![frozen.clone()],
        }
    }

    /// `frozen` copied to each of `devices` (shared, not copied, where a device repeats the
    /// first: the CPU backend's threads).
    pub(crate) fn new(frozen: &F, devices: Vec<A::Device>) -> Self {
        let copies = devices.iter().map(|d| frozen.clone().fork(d)).collect();
        Self {
            devices,
            frozen: copies,
        }
    }

    /// [`accumulate_gradients`] over the replicas: micro-batch `i` runs on replica
    /// `i / ceil(k / replicas)` with a fresh copy of `module` there (its own autodiff leaves),
    /// each gradient is moved to the first device and the sum is taken there in micro-batch
    /// order: the same numbers as one device running them in turn.
    pub(crate) fn accumulate<M, T>(
        &self,
        module: &M,
        micro_batches: &[T],
        loss: impl Fn(&F, &M, &T) -> Result<Tensor<A, 1>, TrainError> + Sync,
    ) -> Result<Gradients, TrainError>
    where
        M: burn::module::AutodiffModule<A> + Sync,
        T: ToDevice<A> + Sync,
    {
        let k = micro_batches.len();
        let r = self.devices.len().min(k);
        if r <= 1 {
            return accumulate_gradients(module, micro_batches, |m, b| loss(&self.frozen[0], m, b));
        }
        let chunk = k.div_ceil(r);
        let main = &self.devices[0];
        let loss = &loss;
        let parts: Vec<Result<Vec<(GradientsParams, f32)>, TrainError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..r)
                .map(|ri| {
                    s.spawn(move || {
                        let device = &self.devices[ri];
                        let replica = module.clone().fork(device);
                        let mut out = Vec::with_capacity(chunk);
                        for batch in micro_batches.iter().skip(ri * chunk).take(chunk) {
                            let batch = batch.to_device(device);
                            let l = loss(&self.frozen[ri], &replica, &batch)?;
                            let scaled = l.clone() / k as f32;
                            let grads = GradientsParams::from_grads(scaled.backward(), &replica)
                                .to_device(main, &replica);
                            out.push((grads, l.into_scalar().elem::<f32>()));
                        }
                        Ok(out)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(TrainError::Setting(
                            "a data-parallel replica's thread panicked".into(),
                        ))
                    })
                })
                .collect()
        });
        let mut acc = burn::optim::GradientsAccumulator::<M>::new();
        let mut micro_losses = Vec::with_capacity(k);
        for part in parts {
            for (grads, l) in part? {
                acc.accumulate(module, grads);
                micro_losses.push(l);
            }
        }
        let loss = micro_losses.iter().sum::<f32>() / k as f32;
        Ok(Gradients {
            params: acc.grads(),
            loss,
            micro_losses,
        })
    }
}
