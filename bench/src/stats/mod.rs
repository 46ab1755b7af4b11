//! Set-level and statistical metrics: Fréchet distance (FID), KID, Inception Score, CMMD,
//! face diversity, and bootstrap confidence intervals.
//!
//! Each follows a named reference implementation (clean-fid, torchmetrics,
//! google-research/cmmd) and `bench/tests/metric_parity.rs` checks it against fixtures that
//! `tools/bench-reference/` makes with those libraries. Arithmetic is f64 throughout; inputs
//! are [`Features`], one row per image.

pub mod bootstrap;
pub mod cmmd;
pub mod diversity;
pub mod features;
pub mod frechet;
pub mod inception_score;
pub mod kid;

pub use bootstrap::{mean_ci, statistic_ci};
pub use cmmd::cmmd;
pub use diversity::face_div;
pub use features::Features;
pub use frechet::{fid, frechet_distance_from_stats};
pub use inception_score::inception_score;
pub use kid::{KidOptions, kid};
