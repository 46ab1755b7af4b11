//! The reference images: `references/<set>/<identity>/<image>` in the bench folder, built from a
//! folder in that layout or from a dataset export (train identities → `in-train`, validation
//! identities → `out-of-train`). Class words come from an optional `class_words.toml`
//! (`identity = "woman"`) at the top of the folder, else the protocol's default.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, BinaryArray, RecordBatch, StringArray, StructArray};
use idforge_core::hash::sha256_hex;
use idforge_core::schema::dataset::{
    self, CLASS_WORD, DATA_DIR, IDENTITY, IMAGE, IMAGE_BYTES, IMAGE_PATH, Split,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sha2::{Digest, Sha256};

use crate::error::BenchError;
use crate::layout::{BenchDir, REFERENCES_DIR, is_image_file};
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
    let data = export_dir.join(DATA_DIR);
    if !data.is_dir() {
        return Err(BenchError::invalid(
            export_dir,
            format!(
                "not a dataset export (no {DATA_DIR}/ folder): run `idforge dataset export` first"
            ),
        ));
    }
    // set → identity → (class word, refs as (file name, bytes))
    type Refs = BTreeMap<String, (Option<String>, Vec<(String, Vec<u8>)>)>;
    let mut sets: BTreeMap<&str, Refs> = BTreeMap::new();
    for path in read_dir_sorted(&data)? {
        let set = match Split::of_shard_file(&file_name(&path)) {
            Some(Split::Train) => "in-train",
            Some(Split::Validation) => "out-of-train",
            None => continue,
        };
        for batch in read_batches(&path)? {
            let identity: &StringArray = export_column(&batch, &path, IDENTITY)?;
            let class_word: &StringArray = export_column(&batch, &path, CLASS_WORD)?;
            let refs: &StructArray = export_column(&batch, &path, IMAGE)?;
            // The struct's type was checked against the export schema, so its fields are there.
            let bytes = refs
                .column_by_name(IMAGE_BYTES)
                .and_then(|c| c.as_any().downcast_ref::<BinaryArray>())
                .expect("an Image struct has binary bytes");
            let names = refs
                .column_by_name(IMAGE_PATH)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .expect("an Image struct has a string path");
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
            format!(
                "no {}-*.parquet or {}-*.parquet shard",
                Split::Train,
                Split::Validation
            ),
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

/// Column `name` of an export shard, checked against the type the export schema
/// (`idforge_core::schema::dataset`) gives it, so that a shard of another layout is an error
/// naming the column rather than a wrong read.
fn export_column<'a, A: Array + 'static>(
    batch: &'a RecordBatch,
    path: &Path,
    name: &str,
) -> Result<&'a A, BenchError> {
    let schema = dataset::dataset_schema();
    let want = schema
        .field_with_name(name)
        .expect("the column is in the export schema")
        .data_type();
    let column = batch.column_by_name(name).ok_or_else(|| {
        BenchError::invalid(
            path,
            format!("no `{name}` column: not a dataset export shard"),
        )
    })?;
    if column.data_type() != want {
        return Err(BenchError::invalid(
            path,
            format!(
                "column `{name}` is {}, the dataset export writes {want}",
                column.data_type()
            ),
        ));
    }
    Ok(column
        .as_any()
        .downcast_ref::<A>()
        .expect("the Arrow type was checked above"))
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

/// File of the bench's own settings (beside `protocol.toml`), written by `bench init`.
pub const SETTINGS_FILE: &str = "bench.toml";

/// The face detector every per-image face metric uses. `bench init` keeps only references in
/// which it finds a face, so Face-Sim, Face-Div and No-face % all count the same items; `bench
/// score` runs the same detector, and the leaderboard records it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FaceDetectorSetting {
    /// Detector name: `ssd_mobilenetv1` (face-api's default).
    pub detector: String,
    /// Minimum detection score (face-api: 0.5).
    pub min_confidence: f32,
}

impl Default for FaceDetectorSetting {
    fn default() -> Self {
        FaceDetectorSetting {
            detector: "ssd_mobilenetv1".into(),
            min_confidence: 0.5,
        }
    }
}

impl FaceDetectorSetting {
    /// `ssd_mobilenetv1@0.5`: the name the leaderboard records.
    pub fn label(&self) -> String {
        format!("{}@{}", self.detector, self.min_confidence)
    }
}

/// The bench settings file's contents.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BenchSettings {
    /// The scoring face detector.
    pub face_detector: FaceDetectorSetting,
}

impl BenchSettings {
    /// Reads the bench's settings; a bench made before the file existed gets the defaults
    /// (face-api's SSD at 0.5, what `bench score` always used).
    pub fn load(bench: &BenchDir) -> Result<Self, BenchError> {
        let path = bench.root.join(SETTINGS_FILE);
        if !path.is_file() {
            return Ok(BenchSettings::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| BenchError::io(&path, e))?;
        let s: BenchSettings = toml::from_str(&text)
            .map_err(|e| BenchError::invalid(&path, format!("not a bench settings file: {e}")))?;
        if s.face_detector.detector != "ssd_mobilenetv1"
            || !(0.0..=1.0).contains(&s.face_detector.min_confidence)
        {
            return Err(BenchError::invalid(
                &path,
                "face_detector: detector must be `ssd_mobilenetv1` and min_confidence in [0, 1]",
            ));
        }
        Ok(s)
    }

    /// Writes the settings file into the bench folder.
    pub fn save(&self, bench: &BenchDir) -> Result<(), BenchError> {
        let path = bench.root.join(SETTINGS_FILE);
        let text = toml::to_string(self)
            .map_err(|e| BenchError::invalid(&path, format!("serialising settings: {e}")))?;
        std::fs::write(&path, text).map_err(|e| BenchError::io(&path, e))
    }
}

/// Every reference image in the bench folder (`references/<set>/<identity>/<image>`, relative
/// to the bench folder, sorted) in which `has_face` finds no face. All images are checked, not
/// only the first `references_per_identity`, so dropping one never lets an unchecked one in.
pub fn find_faceless<F>(bench: &BenchDir, has_face: F) -> Result<Vec<String>, BenchError>
where
    F: Fn(&Path) -> Result<bool, BenchError> + Sync,
{
    use rayon::prelude::*;
    let root = bench.references_dir();
    let mut images = Vec::new();
    for set in read_dir_sorted(&root)?.into_iter().filter(|p| p.is_dir()) {
        for id in read_dir_sorted(&set)?.into_iter().filter(|p| p.is_dir()) {
            images.extend(
                read_dir_sorted(&id)?
                    .into_iter()
                    .filter(|p| p.is_file() && is_image_file(p)),
            );
        }
    }
    let found: Vec<bool> = images
        .par_iter()
        .map(|p| has_face(p))
        .collect::<Result<_, _>>()?;
    Ok(images
        .iter()
        .zip(found)
        .filter(|(_, f)| !f)
        .map(|(p, _)| bench.relative(p))
        .collect())
}

/// Deletes the `faceless` references (paths relative to the bench folder) and then every
/// identity folder left without an image. Returns those identities as `set/identity`.
pub fn drop_references(bench: &BenchDir, faceless: &[String]) -> Result<Vec<String>, BenchError> {
    let mut dirs = BTreeSet::new();
    for rel in faceless {
        let path = bench.root.join(rel);
        std::fs::remove_file(&path).map_err(|e| BenchError::io(&path, e))?;
        if let Some(dir) = path.parent() {
            dirs.insert(dir.to_path_buf());
        }
    }
    let mut emptied = Vec::new();
    for dir in dirs {
        let left = read_dir_sorted(&dir)?
            .into_iter()
            .any(|p| p.is_file() && is_image_file(&p));
        if !left {
            std::fs::remove_dir_all(&dir).map_err(|e| BenchError::io(&dir, e))?;
            let rel = bench.relative(&dir);
            let rel = rel
                .strip_prefix(&format!("{REFERENCES_DIR}/"))
                .unwrap_or(&rel)
                .to_string();
            emptied.push(rel);
        }
    }
    Ok(emptied)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, BinaryArray, Int32Array, new_null_array};
    use arrow::datatypes::{DataType, Field, Schema};
    use idforge_core::schema::dataset::{COLUMNS, dataset_schema};
    use parquet::arrow::ArrowWriter;

    use super::*;

    /// `(identity, class word, file name, bytes)`.
    type Row<'a> = (&'a str, &'a str, &'a str, &'a [u8]);

    fn strings<'a>(rows: &[Row<'a>], f: impl Fn(&Row<'a>) -> &'a str) -> ArrayRef {
        Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
    }

    /// A shard in the export's own schema.
    fn write_shard(path: &Path, rows: &[Row]) {
        let schema = dataset_schema();
        let DataType::Struct(image_fields) = dataset::image_struct_type() else {
            unreachable!()
        };
        let columns: Vec<ArrayRef> = COLUMNS
            .iter()
            .map(|&(name, _, _)| -> ArrayRef {
                match name {
                    IDENTITY => strings(rows, |r| r.0),
                    CLASS_WORD => strings(rows, |r| r.1),
                    IMAGE => Arc::new(StructArray::new(
                        image_fields.clone(),
                        vec![
                            Arc::new(rows.iter().map(|r| Some(r.3)).collect::<BinaryArray>()),
                            strings(rows, |r| r.2),
                        ],
                        None,
                    )),
                    _ => new_null_array(
                        schema.field_with_name(name).unwrap().data_type(),
                        rows.len(),
                    ),
                }
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut w = ArrowWriter::try_new(File::create(path).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    #[test]
    fn export_shards_become_sets_by_split_with_class_words() {
        let tmp = tempfile::tempdir().unwrap();
        let export = tmp.path().join("export");
        write_shard(
            &export.join(Split::Train.shard_path(0, 1)),
            &[
                ("ann", "woman", "a1.jpg", b"A1"),
                ("ann", "woman", "a2.jpg", b"A2"),
                ("bob", "man", "b1.jpg", b"B1"),
            ],
        );
        write_shard(
            &export.join(Split::Validation.shard_path(0, 1)),
            &[("cid", "person", "c1.jpg", b"C1")],
        );
        std::fs::write(export.join(DATA_DIR).join("notes.txt"), "not a shard").unwrap();
        let bench = BenchDir::new(tmp.path().join("bench"));
        let counts = references_from_export(&export, &bench, 1, None).unwrap();
        assert_eq!(
            counts,
            BTreeMap::from([("in-train".into(), 2), ("out-of-train".into(), 1)])
        );
        let refs = bench.references_dir();
        assert_eq!(
            std::fs::read(refs.join("in-train/ann/a1.jpg")).unwrap(),
            b"A1"
        );
        assert!(
            !refs.join("in-train/ann/a2.jpg").exists(),
            "one per identity"
        );
        assert_eq!(
            std::fs::read(refs.join("out-of-train/cid/c1.jpg")).unwrap(),
            b"C1"
        );
        let words = std::fs::read_to_string(refs.join(CLASS_WORDS_FILE)).unwrap();
        assert!(words.contains("\"bob\" = \"man\""), "{words}");
    }

    #[test]
    fn a_shard_in_another_layout_is_refused_naming_the_column() {
        let tmp = tempfile::tempdir().unwrap();
        let export = tmp.path().join("export");
        let path = export.join(Split::Train.shard_path(0, 1));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new(IDENTITY, DataType::Int32, true),
            Field::new(CLASS_WORD, DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int32Array::from(vec![1])),
                Arc::new(StringArray::from(vec!["man"])),
            ],
        )
        .unwrap();
        let mut w = ArrowWriter::try_new(File::create(&path).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let bench = BenchDir::new(tmp.path().join("bench"));
        let err = references_from_export(&export, &bench, 1, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`identity`") && err.contains("Int32"), "{err}");
    }

    #[test]
    fn faceless_references_are_found_dropped_and_settings_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let bench = BenchDir::new(tmp.path());
        for (id, files) in [("a", &["1.png", "2.png"][..]), ("b", &["1.png"][..])] {
            let d = bench.references_dir().join("in-train").join(id);
            std::fs::create_dir_all(&d).unwrap();
            for f in files {
                std::fs::write(d.join(f), b"x").unwrap();
            }
        }
        // "2.png" of a and b's only image have no face.
        let faceless = find_faceless(&bench, |p| {
            Ok(!(p.ends_with("a/2.png") || p.ends_with("b/1.png")))
        })
        .unwrap();
        assert_eq!(
            faceless,
            ["references/in-train/a/2.png", "references/in-train/b/1.png"]
        );
        let emptied = drop_references(&bench, &faceless).unwrap();
        assert_eq!(emptied, ["in-train/b"]);
        assert!(bench.references_dir().join("in-train/a/1.png").is_file());
        assert!(!bench.references_dir().join("in-train/b").exists());

        assert_eq!(
            BenchSettings::load(&bench).unwrap(),
            BenchSettings::default()
        );
        let s = BenchSettings {
            face_detector: FaceDetectorSetting {
                min_confidence: 0.7,
                ..FaceDetectorSetting::default()
            },
        };
        s.save(&bench).unwrap();
        assert_eq!(BenchSettings::load(&bench).unwrap(), s);
        assert_eq!(s.face_detector.label(), "ssd_mobilenetv1@0.7");
        std::fs::write(
            tmp.path().join(SETTINGS_FILE),
            "[face_detector]\ndetector = \"x\"\nmin_confidence = 0.5\n",
        )
        .unwrap();
        assert!(BenchSettings::load(&bench).is_err());
    }
}
