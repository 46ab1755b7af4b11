//! The trainer of idforge's identity adapters. It holds, so far, what training needs on top of
//! the diffusion crate: the autodiff backend with gradient checkpointing. The data loader,
//! losses, optimizers, checkpoints and exports land with the trainer issue.
#![warn(missing_docs)]

/// Autodiff that recomputes cheap (memory-bound) operations in the backward pass instead of
/// keeping their outputs: burn's gradient checkpointing, for training large UNets in less
/// memory.
pub type CheckpointedAutodiff<B> = burn::backend::Autodiff<
    B,
    burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing,
>;
