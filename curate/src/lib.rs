//! The curate stage: from the `images` table to the `faces` table and the training crops,
//! following the PhotoMaker-style recipe ID-oriented datasets are built with: resolution,
//! detector score, face size, identity verification, duplicates, then square crops.
//! Nothing is dropped silently: every image and every face gets a row with its verdict.
#![warn(missing_docs)]

pub mod analyze;
pub mod crop;
pub mod error;
pub mod report;
pub mod settings;
pub mod stage;
pub mod verify;

pub use error::CurateError;
pub use settings::CurateSettings;
pub use stage::CurateStage;
