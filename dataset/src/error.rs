//! Errors of the export, each naming the file or value to fix and, where there is one, the
//! command that fixes it.

use std::path::PathBuf;

use idforge_core::CoreError;

/// What can stop an export. Nothing is written to the output folder unless the export succeeds.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    /// A table of the run could not be read (missing columns, another schema version, ...).
    #[error(transparent)]
    Core(#[from] CoreError),
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder the operation was about.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Writing a Parquet shard failed.
    #[error("{path}: {message}")]
    Parquet {
        /// The shard being written.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A stage table the export reads does not exist.
    #[error("{path} does not exist: {hint}")]
    MissingTable {
        /// The table file looked for.
        path: PathBuf,
        /// What to run to produce it.
        hint: String,
    },
    /// A kept face's crop or reference crop is not on disk.
    #[error(
        "{path} (the {what} of {key}) does not exist: the run folder is incomplete; re-run \
         `idforge curate` for this run (or pass --skip-missing-files to export without such faces)"
    )]
    MissingFile {
        /// The file named by the faces table.
        path: PathBuf,
        /// `crop` or `reference crop`.
        what: &'static str,
        /// `image_id#face_index` of the face.
        key: String,
    },
    /// The faces or captions table contradicts itself (a kept face without a group, two
    /// captions for one face, ...).
    #[error("{path}: {message}")]
    Malformed {
        /// The table file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The output folder holds files that an export did not write; they are left untouched.
    #[error(
        "{path} is not empty and is not an idforge export (no idforge-export.json); \
         it holds {entries}; choose another --out or empty it"
    )]
    NotAnExport {
        /// The output folder.
        path: PathBuf,
        /// Some of its entries, for the message.
        entries: String,
    },
    /// The options cannot be satisfied (a fraction out of range, an unknown identity, ...).
    #[error("{0}")]
    Options(String),
    /// No row would be exported.
    #[error("nothing to export from {run}: {reason}")]
    Empty {
        /// The run folder.
        run: PathBuf,
        /// Why, with the counts.
        reason: String,
    },
}

/// Adds the path to an I/O result.
pub(crate) trait At<T> {
    /// Maps an `io::Error` into [`DatasetError::Io`] naming `path`.
    fn at(self, path: impl Into<PathBuf>) -> Result<T, DatasetError>;
}

impl<T> At<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, DatasetError> {
        self.map_err(|source| DatasetError::Io {
            path: path.into(),
            source,
        })
    }
}
