//! `arena export`: the database's votes as the `votes` Parquet table (practice answers
//! included and flagged), which the leaderboard reads from `<bench>/arena/votes.parquet`.
//! Reads through a read-only connection, so it runs beside a live server.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use idforge_core::schema::{Question, VotesTable};

use super::ArenaError;
use super::store::Store;
use crate::layout::BenchDir;

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// The Parquet file.
    pub path: PathBuf,
    /// Rows written (practice included).
    pub rows: usize,
    /// Of which practice answers.
    pub practice: usize,
    /// Counted answers per question.
    pub per_question: Vec<(Question, usize)>,
    /// Distinct raters.
    pub raters: usize,
}

/// The default output: `<bench>/arena/votes.parquet` of the bench folder the database was
/// made for.
pub fn default_output(db: &Path) -> Result<PathBuf, ArenaError> {
    let store = Store::open_read_only(db)?;
    let bench = store.bench()?.ok_or_else(|| {
        ArenaError::db(
            db,
            "the database names no bench folder: give the output with -o",
        )
    })?;
    Ok(BenchDir::new(bench).votes_path())
}

/// Writes every vote of `db` to `out` (staged, then renamed into place).
pub fn export_votes(db: &Path, out: &Path) -> Result<ExportSummary, ArenaError> {
    let store = Store::open_read_only(db)?;
    let rows = store.votes()?;
    let practice = rows.iter().filter(|r| r.practice).count();
    let per_question = Question::ALL
        .iter()
        .map(|&q| {
            (
                q,
                rows.iter()
                    .filter(|r| r.question == q && !r.practice)
                    .count(),
            )
        })
        .collect();
    let raters = rows.iter().map(|r| &r.rater).collect::<BTreeSet<_>>().len();
    let n = rows.len();
    VotesTable { rows }.write(out)?;
    Ok(ExportSummary {
        path: out.to_path_buf(),
        rows: n,
        practice,
        per_question,
        raters,
    })
}
