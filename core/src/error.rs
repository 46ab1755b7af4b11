//! Errors of the shared layer, each naming the file or value it is about.

use std::path::PathBuf;

/// Result alias for the core crate.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// What can go wrong in tables, recipes and run directories.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file the operation was about.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A Parquet or Arrow operation failed.
    #[error("{path}: {message}")]
    Table {
        /// The table file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A table was written by another schema version than this build reads.
    #[error(
        "{path}: table `{table}` has schema version {found}, this idforge reads version {expected}; \
         re-run the stage that wrote it, or see docs/ARCHITECTURE.md for the migration note"
    )]
    SchemaVersion {
        /// The table file.
        path: PathBuf,
        /// Table name.
        table: String,
        /// Version found in the file's metadata.
        found: String,
        /// Version this build writes and reads.
        expected: u32,
    },
    /// A table lacks a column or has it with another type.
    #[error("{path}: {message}")]
    Schema {
        /// The table file (or a description of the batch).
        path: PathBuf,
        /// Which column and what was expected.
        message: String,
    },
    /// The recipe is malformed or names something that does not exist.
    #[error("recipe {path}: {message}")]
    Recipe {
        /// The recipe file.
        path: PathBuf,
        /// What to fix.
        message: String,
    },
    /// A table a stage reads is not in the run folder: the stage that writes it has not run.
    #[error(
        "{path} does not exist: run `{command}` for this run first (it writes the `{table}` table)"
    )]
    MissingTable {
        /// The table's name.
        table: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The command that writes it.
        command: &'static str,
    },
    /// A stage finished without writing a table it declares as an output.
    #[error("stage `{stage}` finished without writing its `{table}` table at {path}")]
    MissingOutput {
        /// The stage.
        stage: &'static str,
        /// The table's name.
        table: &'static str,
        /// Where it should be.
        path: PathBuf,
    },
    /// A run, identity or method name that cannot be a folder name.
    #[error("{0}")]
    Name(String),
    /// A shard specification like `3/8` could not be understood.
    #[error("invalid shard `{spec}`: {message}")]
    Shard {
        /// The text given.
        spec: String,
        /// What is wrong with it.
        message: String,
    },
}

impl CoreError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Adds the path to an I/O result.
pub trait IoContext<T> {
    /// Maps an `io::Error` into [`CoreError::Io`] naming `path`.
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| CoreError::io(path, e))
    }
}
