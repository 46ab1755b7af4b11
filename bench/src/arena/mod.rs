//! The preference arena: people compare the images of two hidden methods for one (identity,
//! prompt, seed) and say which is better, because automatic metrics miss artefacts a person
//! sees at once. The votes become the Bradley–Terry columns of the leaderboard.
//!
//! ```text
//! bench folder ─► items (≥ 2 methods with an image) ─► scheduler (least-voted pair, then item;
//!   never the same item twice for a rater and question) ─► signed pair token ─► page
//!   ─► vote (token checked, single use) ─► SQLite (WAL) ─► `arena export` ─► votes.parquet
//! ```
//!
//! Two questions are asked as separate tasks, in blocks: *fidelity* (which looks more like the
//! person in the reference, shown beside it) and *adherence* (which matches the prompt, shown
//! above). The first tasks of each question are practice: stored, never rated.
//!
//! Method names never leave the server: images are served under opaque ids, and the token of a
//! shown pair names only its task. The HMAC secret is made once and kept in the database, so
//! tokens and raters survive a restart.

pub mod api;
pub mod export;
pub mod items;
pub mod schedule;
pub mod server;
pub mod simulate;
pub mod store;
pub mod token;

use std::path::PathBuf;
use std::time::Duration;

use idforge_core::schema::Question;

pub use export::{ExportSummary, export_votes};
pub use items::{ArenaItem, ArenaItems};
pub use server::{Arena, ArenaServer, serve, serve_until_signal};
pub use simulate::{SimulateOptions, SimulateReport, simulate, simulate_blocking};
pub use store::Store;

/// What went wrong in the arena, with the file or request it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArenaError {
    /// The bench folder could not be read or does not hold what the arena needs.
    #[error(transparent)]
    Bench(#[from] crate::error::BenchError),
    /// The vote database could not be opened, read or written.
    #[error("vote database {path}: {message}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// What failed, and what to do when the user can act on it.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The server could not start (address in use, no permission).
    #[error("arena server on {addr}: {message}")]
    Serve {
        /// The address it was to listen on.
        addr: String,
        /// What failed.
        message: String,
    },
    /// A table could not be written.
    #[error(transparent)]
    Core(#[from] idforge_core::error::CoreError),
    /// The simulated rater met an answer it did not expect.
    #[error("simulated rater against {url}: {message}")]
    Simulate {
        /// The server.
        url: String,
        /// What happened.
        message: String,
    },
}

impl ArenaError {
    /// A database error on `path`.
    pub fn db(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        ArenaError::Db {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

/// Settings of an arena server, resolved from the command line.
#[derive(Debug, Clone)]
pub struct ArenaConfig {
    /// The bench folder whose generations are compared.
    pub bench: PathBuf,
    /// The SQLite database of raters, shown pairs and votes (created if absent).
    pub db: PathBuf,
    /// Show `copy-reference` (the reference image itself) as a contestant; off by default, as a
    /// copy of the reference wins every fidelity vote and says nothing about a method.
    pub include_copy_reference: bool,
    /// The questions asked, in block order.
    pub questions: Vec<Question>,
    /// Practice tasks at the start of each question (stored with `practice = true`).
    pub practice: u32,
    /// Tasks of one question in a row before the page switches to the other.
    pub block: u32,
    /// How long a shown pair may be answered.
    pub task_ttl: Duration,
    /// How long a rater id stays valid after it was issued.
    pub rater_ttl: Duration,
    /// Rater ids one IP address may obtain per hour (`POST /api/raters`), as a token bucket
    /// of this size refilled over the hour; 0 turns the limit off. Without it a script could
    /// mint raters without bound, each a fresh identity for the per-rater rules. Behind a
    /// proxy every rater shares the proxy's address: raise it or turn it off there.
    pub raters_per_ip_per_hour: u32,
    /// Accept a database made for the bench folder at another path (the folder was moved or
    /// copied): its recorded path is updated to this one. Without it such a database is
    /// refused, so that votes on two benchmarks never mix.
    pub rebind: bool,
}

impl ArenaConfig {
    /// The defaults for `bench` and `db`: both questions, 2 practice tasks each, blocks of 10,
    /// pairs valid for an hour, raters for 30 days, 100 new raters per IP address per hour.
    pub fn new(bench: impl Into<PathBuf>, db: impl Into<PathBuf>) -> Self {
        ArenaConfig {
            bench: bench.into(),
            db: db.into(),
            include_copy_reference: false,
            questions: Question::ALL.to_vec(),
            practice: 2,
            block: 10,
            task_ttl: Duration::from_secs(3600),
            rater_ttl: Duration::from_secs(30 * 24 * 3600),
            raters_per_ip_per_hour: 100,
            rebind: false,
        }
    }
}

/// Milliseconds since the Unix epoch, the arena's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
