//! Arrow schemas of the tables that pass between stages, one module per table.
//!
//! A schema change bumps the table's version constant; readers refuse other versions with a
//! message that points at the migration note in `docs/ARCHITECTURE.md`.
//!
//! Every table type implements [`TableSpec`] (its name, version, the stage that writes it and
//! the command to run for it), and the tables of a run folder also [`RunTable`] (its file in
//! that stage's folder): stages find each other's tables through these, with
//! [`crate::RunDir::table`] and [`crate::RunDir::require`], never by writing another stage's
//! path as a literal.

pub mod captions;
pub mod dataset;
pub mod faces;
pub mod images;
pub mod scores;
pub mod votes;

pub use captions::{
    CAPTIONS_SCHEMA_VERSION, CAPTIONS_TABLE, CaptionRow, CaptionStatus, CaptionsTable,
};
pub use dataset::DatasetExport;
pub use faces::{FACES_SCHEMA_VERSION, FACES_TABLE, FaceRow, FacesTable, Reason, Verdict};
pub use images::{IMAGES_SCHEMA_VERSION, IMAGES_TABLE, ImageRow, ImageStatus, ImagesTable};
pub use scores::{SCORES_SCHEMA_VERSION, SCORES_TABLE, ScoreRow, ScoreStatus, ScoresTable};
pub use votes::{Answer, Question, VOTES_SCHEMA_VERSION, VOTES_TABLE, VoteRow, VotesTable};

/// What a table says about itself, so that no reader has to know which stage wrote it, where,
/// or which command a user must run when it is missing.
pub trait TableSpec {
    /// The table's name, as stamped in its Parquet metadata (`images`, `faces`, ...).
    const NAME: &'static str;
    /// The schema version this build reads and writes; a change of columns bumps it.
    const VERSION: u32;
    /// The stage that writes the table, which is also its folder: under the run folder for the
    /// dataset tables (`ingest`, `curate`, ...), under the bench folder for the benchmark's.
    const STAGE: &'static str;
    /// The command that writes the table, named in errors when it is missing.
    const COMMAND: &'static str;
}

/// A table at a fixed place in a run folder: `runs/<name>/<STAGE>/<FILE>`.
pub trait RunTable: TableSpec {
    /// The table's file (or, for the dataset export, folder of shards) in its stage folder.
    const FILE: &'static str;
    /// Everything above as one value, for [`crate::Stage::inputs`] and
    /// [`crate::Stage::outputs`] and for the runner's checks.
    const INFO: TableInfo = TableInfo {
        name: Self::NAME,
        version: Self::VERSION,
        stage: Self::STAGE,
        file: Self::FILE,
        command: Self::COMMAND,
    };
}

/// A [`RunTable`]'s declaration as a value: what a [`crate::Stage`] lists as its inputs and
/// outputs, so that the runner can check them without knowing the table types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TableInfo {
    /// [`TableSpec::NAME`].
    pub name: &'static str,
    /// [`TableSpec::VERSION`].
    pub version: u32,
    /// [`TableSpec::STAGE`].
    pub stage: &'static str,
    /// [`RunTable::FILE`].
    pub file: &'static str,
    /// [`TableSpec::COMMAND`].
    pub command: &'static str,
}

impl TableInfo {
    /// The table's path relative to the run folder, with `/` (`curate/faces.parquet`), as
    /// messages and the dataset card name it.
    pub fn relative_path(&self) -> String {
        format!("{}/{}", self.stage, self.file)
    }
}

impl TableSpec for ImagesTable {
    const NAME: &'static str = IMAGES_TABLE;
    const VERSION: u32 = IMAGES_SCHEMA_VERSION;
    const STAGE: &'static str = "ingest";
    const COMMAND: &'static str = "idforge ingest";
}

impl RunTable for ImagesTable {
    const FILE: &'static str = "images.parquet";
}

impl TableSpec for FacesTable {
    const NAME: &'static str = FACES_TABLE;
    const VERSION: u32 = FACES_SCHEMA_VERSION;
    const STAGE: &'static str = "curate";
    const COMMAND: &'static str = "idforge curate";
}

impl RunTable for FacesTable {
    const FILE: &'static str = "faces.parquet";
}

impl TableSpec for CaptionsTable {
    const NAME: &'static str = CAPTIONS_TABLE;
    const VERSION: u32 = CAPTIONS_SCHEMA_VERSION;
    const STAGE: &'static str = "caption";
    const COMMAND: &'static str = "idforge caption";
}

impl RunTable for CaptionsTable {
    const FILE: &'static str = "captions.parquet";
}

impl TableSpec for DatasetExport {
    const NAME: &'static str = dataset::DATASET_TABLE;
    const VERSION: u32 = dataset::DATASET_SCHEMA_VERSION;
    const STAGE: &'static str = "dataset";
    const COMMAND: &'static str = "idforge dataset export";
}

impl RunTable for DatasetExport {
    const FILE: &'static str = dataset::DATA_DIR;
}

/// `scores` lives in the bench folder, one file per method: `<bench>/scores/<method>.parquet`.
impl TableSpec for ScoresTable {
    const NAME: &'static str = SCORES_TABLE;
    const VERSION: u32 = SCORES_SCHEMA_VERSION;
    const STAGE: &'static str = "scores";
    const COMMAND: &'static str = "idforge bench score";
}

/// `votes` lives in the bench folder: `<bench>/arena/votes.parquet`.
impl TableSpec for VotesTable {
    const NAME: &'static str = VOTES_TABLE;
    const VERSION: u32 = VOTES_SCHEMA_VERSION;
    const STAGE: &'static str = "arena";
    const COMMAND: &'static str = "idforge arena export";
}

impl VotesTable {
    /// The table's file in its folder of the bench folder.
    pub const FILE: &'static str = "votes.parquet";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_tables_have_distinct_stages_and_files_named_after_them() {
        let infos = [
            ImagesTable::INFO,
            FacesTable::INFO,
            CaptionsTable::INFO,
            DatasetExport::INFO,
        ];
        for (i, a) in infos.iter().enumerate() {
            assert!(a.command.starts_with("idforge "), "{a:?}");
            assert!(a.command.contains(a.stage), "{a:?}");
            for b in &infos[i + 1..] {
                assert_ne!(a.stage, b.stage);
                assert_ne!(a.name, b.name);
            }
        }
        assert_eq!(FacesTable::INFO.relative_path(), "curate/faces.parquet");
        assert_eq!(ImagesTable::INFO.relative_path(), "ingest/images.parquet");
        assert_eq!(
            CaptionsTable::INFO.relative_path(),
            "caption/captions.parquet"
        );
    }
}
