//! Turns an idforge run into a dataset others can use: Parquet shards that Hugging Face
//! `datasets` loads with its `Image` feature, split by identity, with a dataset card.
//!
//! The export is a view of the run's tables, not a stage: it reads the `faces` and `captions`
//! tables, writes only to the output folder, and can be redone at any time. Its columns and
//! shard layout are `idforge_core::schema::dataset`, where readers of an export find them too.
#![warn(missing_docs)]

pub mod card;
pub mod error;
pub mod export;

pub use error::DatasetError;
pub use export::{ExportOptions, ExportSummary, Skipped, SplitSummary, default_out, export};
