//! The caption cache: what a server was paid for, kept across runs and settings, so that a
//! re-run (after a kill, with more images, with another splitter or trigger) asks again only for
//! what it does not have, while a new prompt version or model asks again for everything.
//!
//! Keys are sha256 digests of
//! - captions: `caption \0 <sha256 of the image bytes> \0 <captioner> \0 <model> \0 <prompt version>`;
//! - `llm` splits: `split \0 <sha256 of the caption> \0 <model> \0 <prompt version>`.
//!
//! Storage: `caption/cache/<shard>.jsonl`, one JSON line per success, appended as it arrives
//! (failures are never cached: a re-run retries them). Each shard appends to its own file and
//! reads everyone's, so shards on different machines of a cluster share what is done.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use idforge_core::hash::sha256_hex;
use idforge_core::journal::Journal;

use crate::captioner::Outcome;
use crate::error::CaptionError;

/// The key of a caption.
pub fn caption_key(
    image_sha256: &str,
    captioner: &str,
    model: &str,
    prompt_version: &str,
) -> String {
    sha256_hex(
        format!("caption\0{image_sha256}\0{captioner}\0{model}\0{prompt_version}").as_bytes(),
    )
}

/// The key of an `llm` split of a caption.
pub fn split_key(caption: &str, model: &str, prompt_version: &str) -> String {
    sha256_hex(
        format!(
            "split\0{}\0{model}\0{prompt_version}",
            sha256_hex(caption.as_bytes())
        )
        .as_bytes(),
    )
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    key: String,
    outcome: Outcome,
}

/// The cache of one shard: everything on disk for reading, its own file for appending.
pub struct Cache {
    entries: Mutex<HashMap<String, Outcome>>,
    journal: Journal<Entry>,
}

impl Cache {
    /// Opens `dir` (created if missing), reading every shard's file and appending to
    /// `<own>.jsonl`.
    pub fn open(dir: &Path, own: &str) -> Result<Self, CaptionError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            CaptionError::Settings(format!(
                "cannot create the cache folder {}: {e}",
                dir.display()
            ))
        })?;
        let own_path = dir.join(format!("{own}.jsonl"));
        let mut entries = HashMap::new();
        let listing = std::fs::read_dir(dir).map_err(|e| {
            CaptionError::Settings(format!(
                "cannot read the cache folder {}: {e}",
                dir.display()
            ))
        })?;
        let mut others: Vec<_> = listing
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl") && *p != own_path)
            .collect();
        others.sort();
        for path in others {
            for e in Journal::<Entry>::read_only(&path)? {
                entries.insert(e.key, e.outcome);
            }
        }
        let (journal, mine) = Journal::<Entry>::open(&own_path)?;
        for e in mine {
            entries.insert(e.key, e.outcome);
        }
        Ok(Cache {
            entries: Mutex::new(entries),
            journal,
        })
    }

    /// The outcome stored under `key`.
    pub fn get(&self, key: &str) -> Option<Outcome> {
        self.entries.lock().unwrap().get(key).cloned()
    }

    /// Stores a success, on disk first.
    pub fn put(&self, key: &str, outcome: &Outcome) -> Result<(), CaptionError> {
        self.journal.append(&Entry {
            key: key.to_string(),
            outcome: outcome.clone(),
        })?;
        self.entries
            .lock()
            .unwrap()
            .insert(key.to_string(), outcome.clone());
        Ok(())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_of_the_key_matters_and_shards_share_entries() {
        let base = caption_key("aa", "openai", "m", "one-call-v1");
        for other in [
            caption_key("ab", "openai", "m", "one-call-v1"),
            caption_key("aa", "import", "m", "one-call-v1"),
            caption_key("aa", "openai", "m2", "one-call-v1"),
            caption_key("aa", "openai", "m", "one-call-v2"),
        ] {
            assert_ne!(base, other);
        }
        let dir = tempfile::tempdir().unwrap();
        let a = Cache::open(dir.path(), "0-of-2").unwrap();
        let outcome = Outcome {
            caption: Some("a man".into()),
            attempts: 2,
            ..Default::default()
        };
        a.put(&base, &outcome).unwrap();
        let b = Cache::open(dir.path(), "1-of-2").unwrap();
        assert_eq!(b.get(&base), Some(outcome));
        assert_eq!(b.len(), 1);
    }
}
