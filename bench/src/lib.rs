//! The benchmark: a versioned protocol (reference sets, split prompts, seeds), the generations
//! any method's own code fills in, the metrics that score them, and the leaderboard files.
//!
//! It is useful before idforge trains anything: a method is a folder of images in the layout
//! `idforge bench plan` prints, plus a `method.toml`.
#![warn(missing_docs)]

pub mod aggregate;
pub mod arena;
pub mod baselines;
pub mod error;
pub mod generations;
pub mod layout;
pub mod leaderboard;
pub mod method;
pub mod plan;
pub mod protocol;
pub mod ratings;
pub mod references;
pub mod score;
pub mod stats;

pub use error::BenchError;
