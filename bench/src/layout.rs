//! The bench folder: everything one benchmark run reads and writes, in one place, so it can be
//! copied, archived or published whole.
//!
//! ```text
//! <bench>/protocol.toml                              the protocol, copied at init
//! <bench>/references/<set>/<identity>/<image>        reference photos (+ class_words.toml)
//! <bench>/generations/<method>/method.toml           each imported method
//! <bench>/generations/<method>/<identity>/<prompt_id>/<seed>.png
//! <bench>/scores/<method>.parquet                    the `scores` table of each method
//! <bench>/leaderboard/{leaderboard.json, LEADERBOARD.md, index.html, thumbs/}
//! <bench>/arena/votes.parquet                        the arena's votes (`arena export`)
//! ```

use std::path::{Path, PathBuf};

use idforge_core::schema::{ScoresTable, TableSpec, VotesTable};

use crate::error::BenchError;
use crate::protocol::Protocol;

/// File name of the protocol copy.
pub const PROTOCOL_FILE: &str = "protocol.toml";
/// Folder of the reference images.
pub const REFERENCES_DIR: &str = "references";
/// Folder of the imported generations.
pub const GENERATIONS_DIR: &str = "generations";
/// Folder of the scores tables.
pub const SCORES_DIR: &str = ScoresTable::STAGE;
/// Folder of the leaderboard files.
pub const LEADERBOARD_DIR: &str = "leaderboard";
/// Folder of the preference arena's exported votes.
pub const ARENA_DIR: &str = VotesTable::STAGE;
/// A method's description file.
pub const METHOD_FILE: &str = "method.toml";

/// A bench folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchDir {
    /// Its root.
    pub root: PathBuf,
}

impl BenchDir {
    /// The folder at `root` (not checked).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        BenchDir { root: root.into() }
    }

    /// The protocol copy.
    pub fn protocol_path(&self) -> PathBuf {
        self.root.join(PROTOCOL_FILE)
    }

    /// The references folder.
    pub fn references_dir(&self) -> PathBuf {
        self.root.join(REFERENCES_DIR)
    }

    /// The folder of all imported methods.
    pub fn generations_dir(&self) -> PathBuf {
        self.root.join(GENERATIONS_DIR)
    }

    /// One imported method's folder.
    pub fn method_dir(&self, method: &str) -> PathBuf {
        self.generations_dir().join(method)
    }

    /// One method's scores table.
    pub fn scores_path(&self, method: &str) -> PathBuf {
        self.root.join(SCORES_DIR).join(format!("{method}.parquet"))
    }

    /// The leaderboard folder.
    pub fn leaderboard_dir(&self) -> PathBuf {
        self.root.join(LEADERBOARD_DIR)
    }

    /// The arena's exported `votes` table, which the leaderboard joins when it exists.
    pub fn votes_path(&self) -> PathBuf {
        self.root.join(ARENA_DIR).join(VotesTable::FILE)
    }

    /// The protocol of an initialised bench folder.
    pub fn protocol(&self) -> Result<Protocol, BenchError> {
        let path = self.protocol_path();
        if !path.is_file() {
            return Err(BenchError::invalid(
                &self.root,
                "not a bench folder (no protocol.toml): run `idforge bench init` first",
            ));
        }
        Protocol::load(path)
    }

    /// `path` relative to the bench root, with `/` separators (as tables store paths).
    pub fn relative(&self, path: &Path) -> String {
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        rel.components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The imported methods (folders with a `method.toml`), sorted.
    pub fn imported_methods(&self) -> Result<Vec<String>, BenchError> {
        let dir = self.generations_dir();
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| BenchError::io(&dir, e))? {
            let entry = entry.map_err(|e| BenchError::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && entry.path().join(METHOD_FILE).is_file() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

/// Image file extensions the benchmark reads.
pub const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "bmp"];

/// Whether `path` has one of [`IMAGE_EXTENSIONS`] (any case).
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}
