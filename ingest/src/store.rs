//! The content-addressed store: bytes saved once under their sha256, `ab/cdef….jpg`.
//!
//! Writes go to a temporary file that is renamed into place, so a file in the store is always
//! complete, and a second put of the same bytes costs one `stat`.

use std::path::{Path, PathBuf};

/// A folder of files named by the sha256 of their contents.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Store { root: root.into() }
    }

    /// The store's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of the object with hex digest `sha` and extension `ext`, relative to the root.
    pub fn relative_path(sha: &str, ext: &str) -> PathBuf {
        Path::new(&sha[..2]).join(format!("{}.{ext}", &sha[2..]))
    }

    /// Saves `bytes` (whose digest is `sha`) unless already present; returns the relative path.
    pub fn put(&self, sha: &str, ext: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let rel = Self::relative_path(sha, ext);
        let path = self.root.join(&rel);
        if path.is_file() {
            return Ok(rel);
        }
        let dir = path.parent().expect("objects live in a sub-folder");
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            &sha[2..],
            idforge_core::unique::unique_tag()
        ));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)?;
        Ok(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_is_idempotent_and_content_addressed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let sha = idforge_core::hash::sha256_hex(b"abc");
        let rel = store.put(&sha, "jpg", b"abc").unwrap();
        assert_eq!(rel, Path::new("ba").join(format!("{}.jpg", &sha[2..])));
        assert_eq!(store.put(&sha, "jpg", b"abc").unwrap(), rel);
        assert_eq!(std::fs::read(dir.path().join(&rel)).unwrap(), b"abc");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("ba")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left behind");
    }
}
