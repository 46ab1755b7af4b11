//! The ingest stage: lists of image URLs and folders of photographs, each row tagged with an
//! identity, become the `images` table and a content-addressed store.
//!
//! Every input row ends in the table: fetched and stored (`ok`), or with the status and the
//! reason it was not. The stage is resumable at row granularity: a journal records each
//! finished row, so a killed run loses nothing and fetches nothing twice.
#![warn(missing_docs)]

pub mod dedup;
pub mod error;
pub mod fetch;
pub mod opt_out;
pub mod settings;
pub mod source;
pub mod stage;
pub mod store;
pub mod summary;
pub mod validate;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use error::IngestError;
/// The 64-bit DCT pHash, shared with other stages from [`idforge_core::phash`]; re-exported so
/// `idforge_ingest::phash::…` keeps working.
pub use idforge_core::phash;
pub use settings::{FetchSettings, IngestSettings};
pub use source::{FolderIdentity, ListFormat, SourceSpec};
pub use stage::IngestStage;
