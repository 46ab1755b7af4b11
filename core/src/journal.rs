//! A per-shard journal: one JSON line per finished row, so a stage killed mid-shard resumes where
//! it stopped instead of redoing (or refetching) the rows it had already finished.
//!
//! Each row is written with a single `write` under a lock, so a kill can tear at most the last
//! line; [`Journal::open`] discards that torn line and truncates the file, so the next append
//! starts on a clean line.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{IoContext, Result};

/// An append-only file of finished rows of type `T`, one JSON object per line.
///
/// Shared between worker threads (it is `Sync`): rows are appended as they finish, in any order,
/// each with one write, so lines never interleave.
pub struct Journal<T> {
    path: PathBuf,
    file: Mutex<File>,
    rows: PhantomData<fn(&T)>,
}

impl<T: Serialize + DeserializeOwned> Journal<T> {
    /// Opens (or creates, with its parent folders) the journal at `path` and returns the rows
    /// finished so far, in file order; the caller keys them as it needs.
    ///
    /// Reading stops at the first line that lacks its newline or does not parse — the line a
    /// kill tore — and the file is truncated there, so a resumed run appends after the last
    /// whole row.
    pub fn open(path: &Path) -> Result<(Journal<T>, Vec<T>)> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).at(parent)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .at(path)?;
        let mut rows = Vec::new();
        let mut good_len = 0u64;
        let mut reader = BufReader::new(&mut file);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).at(path)?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            match serde_json::from_str::<T>(&line) {
                Ok(row) => {
                    rows.push(row);
                    good_len += n as u64;
                }
                Err(_) => break,
            }
        }
        drop(reader);
        file.set_len(good_len).at(path)?;
        file.seek(SeekFrom::End(0)).at(path)?;
        Ok((
            Journal {
                path: path.to_path_buf(),
                file: Mutex::new(file),
                rows: PhantomData,
            },
            rows,
        ))
    }

    /// Reads the whole rows of a journal another process may still be appending to, without
    /// touching the file (a torn last line is skipped, not cut off). A missing file is empty.
    pub fn read_only(path: &Path) -> Result<Vec<T>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).at(path),
        };
        let mut rows = Vec::new();
        for line in text.split_inclusive('\n') {
            if !line.ends_with('\n') {
                break;
            }
            match serde_json::from_str::<T>(line) {
                Ok(row) => rows.push(row),
                Err(_) => break,
            }
        }
        Ok(rows)
    }

    /// Appends one finished row as a JSON line, with a single write, so a kill leaves either the
    /// whole line or a torn tail that the next [`Journal::open`] discards.
    ///
    /// # Panics
    /// If `T`'s `Serialize` implementation fails (plain data rows never do).
    pub fn append(&self, row: &T) -> Result<()> {
        let mut line = serde_json::to_string(row).expect("journal rows serialise to JSON");
        line.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(line.as_bytes()).at(&self.path)
    }

    /// The journal file, for messages and for removing it once the shard's table is written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Row {
        id: u64,
        name: String,
    }

    fn row(id: u64) -> Row {
        Row {
            id,
            name: format!("row {id}"),
        }
    }

    #[test]
    fn appended_rows_come_back_in_order_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shards/0.journal.jsonl");
        let (journal, done) = Journal::<Row>::open(&path).unwrap();
        assert!(done.is_empty());
        for id in [3, 1, 2] {
            journal.append(&row(id)).unwrap();
        }
        drop(journal);
        let (journal, done) = Journal::<Row>::open(&path).unwrap();
        assert_eq!(done, vec![row(3), row(1), row(2)]);
        journal.append(&row(4)).unwrap();
        drop(journal);
        let (_, done) = Journal::<Row>::open(&path).unwrap();
        assert_eq!(done, vec![row(3), row(1), row(2), row(4)]);
    }

    #[test]
    fn a_torn_last_line_is_discarded_and_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.journal.jsonl");
        let (journal, _) = Journal::<Row>::open(&path).unwrap();
        journal.append(&row(1)).unwrap();
        drop(journal);
        let whole = std::fs::metadata(&path).unwrap().len();
        // A kill in the middle of the second write: part of a line, no newline.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"id":2,"na"#).unwrap();
        drop(f);

        let (journal, done) = Journal::<Row>::open(&path).unwrap();
        assert_eq!(done, vec![row(1)]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        journal.append(&row(2)).unwrap();
        drop(journal);

        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let (_, done) = Journal::<Row>::open(&path).unwrap();
        assert_eq!(done, vec![row(1), row(2)]);
    }

    #[test]
    fn read_only_skips_a_torn_line_and_leaves_the_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.journal.jsonl");
        assert!(Journal::<Row>::read_only(&path).unwrap().is_empty());
        let (journal, _) = Journal::<Row>::open(&path).unwrap();
        journal.append(&row(1)).unwrap();
        drop(journal);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"id\": 2, \"na")
            .unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        assert_eq!(Journal::<Row>::read_only(&path).unwrap(), vec![row(1)]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), before);
    }
}
