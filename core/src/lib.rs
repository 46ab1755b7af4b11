//! The contracts every idforge stage shares: table schemas and their Parquet files, the recipe,
//! the run directory with its shards and completion markers, image decoding, progress reporting.
//!
//! Stages never depend on each other; they meet in the tables defined here.
#![warn(missing_docs)]

pub mod bench;
pub mod cache;
pub mod error;
pub mod hash;
pub mod html;
pub mod image_io;
pub mod journal;
pub mod limits;
pub mod name;
pub mod phash;
pub mod progress;
pub mod recipe;
pub mod resample;
pub mod run;
pub mod schema;
pub mod table;
pub mod unique;

pub use error::{CoreError, Result};
pub use name::Name;
pub use run::{RunDir, Shard, Stage, StageStats};
