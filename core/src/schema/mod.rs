//! Arrow schemas of the tables that pass between stages, one module per table.
//!
//! A schema change bumps the table's version constant; readers refuse other versions with a
//! message that points at the migration note in `docs/ARCHITECTURE.md`.

pub mod captions;
pub mod faces;
pub mod images;
pub mod scores;
pub mod votes;

pub use captions::{
    CAPTIONS_SCHEMA_VERSION, CAPTIONS_TABLE, CaptionRow, CaptionStatus, CaptionsTable,
};
pub use faces::{FACES_SCHEMA_VERSION, FACES_TABLE, FaceRow, FacesTable, Reason, Verdict};
pub use images::{IMAGES_SCHEMA_VERSION, IMAGES_TABLE, ImageRow, ImageStatus, ImagesTable};
pub use scores::{SCORES_SCHEMA_VERSION, SCORES_TABLE, ScoreRow, ScoreStatus, ScoresTable};
pub use votes::{Answer, Question, VOTES_SCHEMA_VERSION, VOTES_TABLE, VoteRow, VotesTable};
