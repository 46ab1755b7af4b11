//! The trainer of idforge's identity adapters: one training step equal to PyTorch's, built
//! from parts the later trainer (data loader, checkpoints, export, the `idforge train` verb)
//! drives.
//!
//! - [`loss`]: noising with the DDPM schedule, ε / v targets, noise offset, min-SNR-γ weights,
//!   persongen's masked (face-box) loss.
//! - [`optim`]: torch-exact Adam / AdamW over parameter groups chosen by checkpoint key,
//!   `clip_grad_norm_`, gradient accumulation.
//! - [`schedule`]: linear warm-up (persongen's or diffusers') then constant or cosine.
//! - [`names`]: the checkpoint key of every trained tensor (groups, optimizer state, export).
//! - [`step`]: one IP-Adapter(-FaceID) step on a frozen UNet.
//! - [`photomaker`]: one PhotoMaker v1 step (UNet LoRA, ID encoder projections, fuse module)
//!   and its export as a PhotoMaker file.
//! - [`split_prompt`]: one split-prompt step (persongen's `ipmakerbgbody`: PhotoMaker's parts
//!   plus the background / body projections) and its export as a PhotoMaker file and a
//!   split-prompt file.
//! - [`data`]: the dataset export's train split, references, per-epoch shuffles, decoding on
//!   worker threads.
//! - [`checkpoint`]: atomic checkpoints (weights, optimizer, counters) and `--resume`.
//! - [`export`]: the adapter as one safetensors file in the reference layout.
//! - [`settings`] and [`run`]: the `[train]` table and a whole run (`idforge train`);
//!   [`photomaker_run`] the run of `method = "photomaker"` on SDXL.
//! - [`validate`]: the periodic sample images, rendered through `idforge_diffusion::methods`.
//! - [`costs`]: what a run cost (minutes over resumed processes, peak memory, the export's
//!   size), for the benchmark's cost columns.
//! - [`init`]: starting from scratch as the reference scripts do (`to_k_ip` / `to_v_ip` copied
//!   from the UNet's `to_k` / `to_v`).
//!
//! `train/tests/step_parity.rs` holds every part to PyTorch on the tiny SD fixture
//! (`tools/train-reference/`): the loss, every gradient and the weights after two optimizer
//! steps.
#![warn(missing_docs)]

pub mod checkpoint;
pub mod costs;
pub mod data;
pub mod error;
pub mod export;
pub mod init;
pub mod loss;
pub mod names;
pub mod optim;
pub mod photomaker;
pub mod photomaker_run;
pub mod run;
pub mod schedule;
pub mod settings;
pub mod split_prompt;
pub mod step;
pub mod validate;

pub use error::TrainError;
pub use init::ip_layers_from_unet;
pub use loss::{LossConfig, NoiseDraw};
pub use names::{NamedTensor, ParamNames};
pub use optim::{AdamConfig, AdamKind, GradAccumulator, Optimizer, ParamGroup, clip_grad_norm};
pub use photomaker::{PhotoMakerParts, PhotoMakerTrainer, PmBatch, PmReferences, PmSample};
pub use schedule::{Decay, LrSchedule, Warmup};
pub use settings::{Method, TrainSettings};
pub use split_prompt::{
    SplitBatch, SplitIdentity, SplitParts, SplitPromptTrainer, SplitRates, SplitSample,
};
pub use step::{Gradients, IpAdapterTrainer, IpBatch, StepConfig, StepReport, ToDevice};

/// Autodiff that recomputes cheap (memory-bound) operations in the backward pass instead of
/// keeping their outputs: burn's gradient checkpointing, for training large UNets in less
/// memory.
pub type CheckpointedAutodiff<B> = burn::backend::Autodiff<
    B,
    burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing,
>;
