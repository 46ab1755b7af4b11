//! The reference images: `references/<set>/<identity>/<image>` in the bench folder, built from a
//! folder in that layout or from a dataset export (train identities → `in-train`, validation
//! identities → `out-of-train`). Class words come from an optional `class_words.toml`
//! (`identity = "woman"`) at the top of the folder, else the protocol's default.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, BinaryArray, RecordBatch, StringArray, StructArray};
use idforge_core::hash::sha256_hex;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sha2::{Digest, Sha256};

use crate::error::BenchError;
use crate::layout::{BenchDir, is_image_file};
use crate::protocol::Protocol;

/// File of per-identity class words at the top of a references folder.
pub const CLASS_WORDS_FILE: &str = "class_words.toml";

/// One identity of a reference set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its set.
    pub set: String,
    /// Its name (a folder name).
    pub name: String,
    /// The class word its prompts use.
    pub class_word: String,
    /// Its reference images (at most the protocol's `references_per_identity`, sorted by
    /// name), relative to the bench folder.
    pub references: Vec<String>,
}

/// Every identity of every set, in protocol set order then by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct References {
    /// The identities.
    pub identities: Vec<Identity>,
    /// sha256 over the used reference images (path and bytes), in order: two leaderboards with
    /// the same value were scored against the same photos.
    pub sha256: String,
}

impl References {
    /// Reads the bench folder's references and checks them against the protocol.
    pub fn scan(bench: &BenchDir, protocol: &Protocol) -> Result<Self, BenchError> {
        let root = bench.references_dir();
        if !root.is_dir() {
            return Err(BenchError::invalid(
                &root,
                "no references: run `idforge bench init` with --references or --from-dataset",
            ));
        }
        let class_words = read_class_words(&root)?;
        for entry in read_dir_sorted(&root)? {
            let name = file_name(&entry);
            if entry.is_dir() && !protocol.sets.iter().any(|s| s.name == name) {
                let sets: Vec<&str> = protocol.sets.iter().map(|s| s.name.as_str()).collect();
                return Err(BenchError::invalid(
                    &entry,
                    format!("set `{name}` is not in the protocol ({})", sets.join(", ")),
                ));
            }
        }
        let mut identities = Vec::new();
        let mut seen = BTreeMap::new();
        let mut digest = Sha256::new();
        for set in &protocol.sets {
            let dir = root.join(&set.name);
            if !dir.is_dir() {
                continue;
            }
            for id_dir in read_dir_sorted(&dir)? {
                if !id_dir.is_dir() {
                    continue;
                }
                let name = file_name(&id_dir);
                if name.starts_with('.') {
                    continue;
                }
                if let Some(other) = seen.insert(name.clone(), set.name.clone()) {
                    return Err(BenchError::invalid(
                        &id_dir,
                        format!(
                            "identity `{name}` is also in set `{other}`: an identity belongs to \
                             one set"
                        ),
                    ));
                }
                let mut images: Vec<PathBuf> = read_dir_sorted(&id_dir)?
                    .into_iter()
                    .filter(|p| p.is_file() && is_image_file(p))
                    .collect();
                if images.is_empty() {
                    return Err(BenchError::invalid(
                        &id_dir,
                        "no reference image (png, jpg, jpeg, webp, bmp)",
                    ));
                }
                images.truncate(protocol.references_per_identity);
                for p in &images {
                    let bytes = std::fs::read(p).map_err(|e| BenchError::io(p, e))?;
                    digest.update(bench.relative(p).as_bytes());
                    digest.update(&bytes);
                }
                identities.push(Identity {
                    set: set.name.clone(),
                    class_word: class_words
                        .get(&name)
                        .cloned()
                        .unwrap_or_else(|| protocol.class_word.clone()),
                    name,
                    references: images.iter().map(|p| bench.relative(p)).collect(),
                });
            }
        }
        if identities.is_empty() {
            return Err(BenchError::invalid(
                &root,
                "no identity folder under any set (expected references/<set>/<identity>/<image>)",
            ));
        }
        Ok(References {
            identities,
            sha256: hex::encode(digest.finalize()),
        })
    }

    /// The identities of `set`.
    pub fn of_set<'a>(&'a self, set: &'a str) -> impl Iterator<Item = &'a Identity> + 'a {
        self.identities.iter().filter(move |i| i.set == set)
    }

    /// The identity named `name`.
    pub fn identity(&self, name: &str) -> Option<&Identity> {
        self.identities.iter().find(|i| i.name == name)
    }
}

fn read_class_words(root: &Path) -> Result<BTreeMap<String, String>, BenchError> {
    let path = root.join(CLASS_WORDS_FILE);
    if !path.is_file() {
        return Ok(BTreeMap::new());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| BenchError::io(&path, e))?;
    toml::from_str(&text).map_err(|e| {
        BenchError::invalid(
            &path,
            format!("expected `identity = \"class word\"` lines: {e}"),
        )
    })
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| BenchError::io(dir, e))? {
        out.push(entry.map_err(|e| BenchError::io(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Copies a folder laid out as `<set>/<identity>/<image>` (and its `class_words.toml`) into
/// the bench folder's references. Returns the number of images copied.
pub fn copy_references(from: &Path, bench: &BenchDir) -> Result<usize, BenchError> {
    let to = bench.references_dir();
    if !from.is_dir() {
        return Err(BenchError::invalid(from, "no such references folder"));
    }
    std::fs::create_dir_all(&to).map_err(|e| BenchError::io(&to, e))?;
    let mut copied = 0;
    for entry in walkdir::WalkDir::new(from).min_depth(1).sort_by_file_name() {
        let entry = entry.map_err(|e| {
            BenchError::invalid(from, format!("reading the references folder: {e}"))
        })?;
        let rel = entry.path().strip_prefix(from).expect("under from");
        let depth = rel.components().count();
        let dest = to.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&dest).map_err(|e| BenchError::io(&dest, e))?;
        } else if (depth == 3 && is_image_file(entry.path()))
            || (depth == 1 && rel.as_os_str() == CLASS_WORDS_FILE)
        {
            std::fs::copy(entry.path(), &dest).map_err(|e| BenchError::io(&dest, e))?;
            copied += usize::from(depth == 3);
        }
    }
    Ok(copied)
}

/// Writes references from a dataset export (`idforge dataset export`): each identity's first
/// training crops (`image`: the face with its context, as a method would be given it; the tight
/// `ref_image` crops are too tight for face detectors to find the face again) go to `in-train` for the train split and `out-of-train` for
/// the validation split, and its class word to `class_words.toml`. `per_set` keeps the first
/// identities of each set (by name) when given. Returns identities written per set.
pub fn references_from_export(
    export_dir: &Path,
    bench: &BenchDir,
    per_identity: usize,
    per_set: Option<usize>,
) -> Result<BTreeMap<String, usize>, BenchError> {
    let data = export_dir.join("data");
    if !data.is_dir() {
        return Err(BenchError::invalid(
            export_dir,
            "not a dataset export (no data/ folder): run `idforge dataset export` first",
        ));
    }
    // set → identity → (class word, refs as (file name, bytes))
    type Refs = BTreeMap<String, (Option<String>, Vec<(String, Vec<u8>)>)>;
    let mut sets: BTreeMap<&str, Refs> = BTreeMap::new();
    for path in read_dir_sorted(&data)? {
        let name = file_name(&path);
        let set = if name.starts_with("train-") {
            "in-train"
        } else if name.starts_with("validation-") {
            "out-of-train"
        } else {
            continue;
        };
        for batch in read_batches(&path)? {
            let strings = |col: &str| {
                batch
                    .column_by_name(col)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                    .ok_or_else(|| BenchError::invalid(&path, format!("no string column `{col}`")))
            };
            let identity = strings("identity")?;
            let class_word = strings("class_word")?;
            let refs = batch
                .column_by_name("image")
                .and_then(|c| c.as_any().downcast_ref::<StructArray>())
                .ok_or_else(|| BenchError::invalid(&path, "no `image` column"))?;
            let bytes = refs
                .column_by_name("bytes")
                .and_then(|c| c.as_any().downcast_ref::<BinaryArray>())
                .ok_or_else(|| BenchError::invalid(&path, "`image` has no `bytes`"))?;
            let names = refs
                .column_by_name("path")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .ok_or_else(|| BenchError::invalid(&path, "`image` has no `path`"))?;
            for i in 0..batch.num_rows() {
                if !identity.is_valid(i) || !bytes.is_valid(i) {
                    continue;
                }
                let entry = sets
                    .entry(set)
                    .or_default()
                    .entry(identity.value(i).to_string())
                    .or_default();
                if entry.0.is_none() && class_word.is_valid(i) {
                    entry.0 = Some(class_word.value(i).to_string());
                }
                if entry.1.len() < per_identity {
                    let file = if names.is_valid(i) {
                        file_name(Path::new(names.value(i)))
                    } else {
                        format!("{}.jpg", &sha256_hex(bytes.value(i))[..16])
                    };
                    entry.1.push((file, bytes.value(i).to_vec()));
                }
            }
        }
    }
    if sets.is_empty() {
        return Err(BenchError::invalid(
            &data,
            "no train-*.parquet or validation-*.parquet shard",
        ));
    }
    let root = bench.references_dir();
    let mut class_words = String::new();
    let mut counts = BTreeMap::new();
    for (set, identities) in sets {
        let mut written = 0;
        for (identity, (class_word, refs)) in
            identities.into_iter().take(per_set.unwrap_or(usize::MAX))
        {
            let safe: String = identity
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let dir = root.join(set).join(&safe);
            std::fs::create_dir_all(&dir).map_err(|e| BenchError::io(&dir, e))?;
            let mut used = BTreeSet::new();
            for (k, (name, bytes)) in refs.into_iter().enumerate() {
                let name = if used.insert(name.clone()) {
                    name
                } else {
                    format!("{k}-{name}")
                };
                let p = dir.join(name);
                std::fs::write(&p, bytes).map_err(|e| BenchError::io(&p, e))?;
            }
            if let Some(w) = class_word {
                class_words.push_str(&format!("{} = {}\n", toml_key(&safe), toml_string(&w)));
            }
            written += 1;
        }
        counts.insert(set.to_string(), written);
    }
    if !class_words.is_empty() {
        let p = root.join(CLASS_WORDS_FILE);
        std::fs::write(&p, class_words).map_err(|e| BenchError::io(&p, e))?;
    }
    Ok(counts)
}

fn read_batches(path: &Path) -> Result<Vec<RecordBatch>, BenchError> {
    let file = File::open(path).map_err(|e| BenchError::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| BenchError::invalid(path, format!("not a Parquet file: {e}")))?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BenchError::invalid(path, format!("reading Parquet: {e}")))
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_key(s: &str) -> String {
    toml_string(s)
}
