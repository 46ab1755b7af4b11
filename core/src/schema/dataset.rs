//! The dataset export's table: the columns `idforge dataset export` writes and the folder layout
//! of its shards, here in `core` so that readers of an export (the benchmark's references) use
//! the same names and types as the writer instead of repeating them.
//!
//! The columns are Hugging Face `datasets` features: one list that the Arrow schema, the
//! `huggingface` Parquet metadata and the dataset card's `dataset_info.features` are all derived
//! from, so the three cannot disagree.
//!
//! Encodings checked against `datasets` 5.2.0 and 3.6.0 (pyarrow 26): an `Image` is the Arrow
//! struct `{bytes: binary, path: string}` with `{"_type": "Image"}` in the metadata; a
//! fixed-length float list is an Arrow `fixed_size_list<float>[4]` declared as
//! `{"feature": {"dtype": "float32", "_type": "Value"}, "length": 4, "_type": "Sequence"}`.
//! `datasets` ≥ 4 writes `"_type": "List"` there instead and reads `Sequence` as the same
//! `List(Value('float32'), length=4)`; 3.x does not know `List`. `Sequence` is what both read.
//!
//! ```text
//! <export>/data/train-NNNNN-of-MMMMM.parquet        the training split's shards
//! <export>/data/validation-NNNNN-of-MMMMM.parquet   the held-out identities' shards
//! ```

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};

/// The export's table name (it is not stamped in the shards, which follow `datasets`' layout).
pub const DATASET_TABLE: &str = "dataset";
/// Version of [`COLUMNS`]: a change of the exported columns bumps it (with a migration note in
/// `docs/ARCHITECTURE.md`). Version 1: first release.
pub const DATASET_SCHEMA_VERSION: u32 = 1;
/// Folder of the Parquet shards inside an export (the Hub's convention).
pub const DATA_DIR: &str = "data";

/// The export of a run, as a table type: `runs/<name>/dataset/data/` by default. It has no rows
/// in memory (the export streams its shards); it exists to carry the export's [`TableSpec`].
///
/// [`TableSpec`]: super::TableSpec
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetExport;

/// Column `image`: the training crop, an `Image`.
pub const IMAGE: &str = "image";
/// Column `identity`: who the face belongs to.
pub const IDENTITY: &str = "identity";
/// Column `class_word`: the identity's class word.
pub const CLASS_WORD: &str = "class_word";
/// Column `face_box`: the face box in the crop's pixels.
pub const FACE_BOX: &str = "face_box";
/// Column `ref_image`: the reference face crop, an `Image`.
pub const REF_IMAGE: &str = "ref_image";
/// Field of an `Image` struct holding the encoded bytes.
pub const IMAGE_BYTES: &str = "bytes";
/// Field of an `Image` struct holding the file name.
pub const IMAGE_PATH: &str = "path";

/// A split of the export. Validation holds whole identities never seen in training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    /// The training identities.
    Train,
    /// The held-out identities.
    Validation,
}

impl Split {
    /// Both splits, in the card's order.
    pub const ALL: [Split; 2] = [Split::Train, Split::Validation];

    /// The split's name in `datasets` and in its shards' file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
        }
    }

    /// Shard `index` of `count` of this split, relative to the export folder:
    /// `data/train-00000-of-00003.parquet`.
    pub fn shard_path(self, index: usize, count: usize) -> String {
        format!(
            "{DATA_DIR}/{}-{index:05}-of-{count:05}.parquet",
            self.as_str()
        )
    }

    /// The split a shard file (its file name, in [`DATA_DIR`]) belongs to, if it is one.
    pub fn of_shard_file(name: &str) -> Option<Split> {
        Split::ALL.into_iter().find(|s| {
            name.strip_prefix(s.as_str())
                .is_some_and(|rest| rest.starts_with('-') && rest.ends_with(".parquet"))
        })
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Arrow schema-metadata key `datasets` reads its features from.
pub const HF_METADATA_KEY: &str = "huggingface";

/// A column's type as `datasets` declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// `Image()`: encoded bytes plus a file name, decoded to a PIL image on access.
    Image,
    /// `Value(dtype)` with `dtype` a `datasets` dtype name (`string`, `uint32`, ...).
    Value(&'static str),
    /// `Sequence(Value(dtype), length=n)`: a list of exactly `length` values.
    FixedList {
        /// `datasets` dtype of the items.
        dtype: &'static str,
        /// Number of items in every row.
        length: usize,
    },
}

/// The exported columns in file order, with what each holds for the dataset card.
pub const COLUMNS: [(&str, Feature, &str); 12] = [
    (
        IMAGE,
        Feature::Image,
        "the training crop (square JPEG, as curate wrote it); `path` is its file name",
    ),
    (
        IDENTITY,
        Feature::Value("string"),
        "who the face belongs to: the source's label, or the group curate discovered \
         (`auto-NNNN`) for unlabeled images; splits never share an identity",
    ),
    (
        "prompt_general",
        Feature::Value("string"),
        "the person, face, expression and framing, with the trigger placed after the class word",
    ),
    (
        "prompt_background",
        Feature::Value("string"),
        "what is behind the person; null when the captioner does not describe backgrounds \
         (empty when it says there is nothing to describe)",
    ),
    (
        "prompt_body",
        Feature::Value("string"),
        "body, clothing and pose; null when the captioner does not describe bodies",
    ),
    (
        CLASS_WORD,
        Feature::Value("string"),
        "the identity's class word (`man`, `woman`, ...), chosen per identity",
    ),
    (
        "trigger",
        Feature::Value("string"),
        "the token that stands for the identity in `prompt_general`",
    ),
    (
        FACE_BOX,
        Feature::FixedList {
            dtype: "float32",
            length: 4,
        },
        "the face box `[x0, y0, x1, y1]` in the crop's pixels (for a face-masked loss)",
    ),
    (
        REF_IMAGE,
        Feature::Image,
        "the reference face crop (the face box plus a margin) for ID encoders; null when curate \
         did not write one",
    ),
    (
        "image_id",
        Feature::Value("string"),
        "sha256 of the source image's bytes (several faces of one photo share it)",
    ),
    (
        "face_index",
        Feature::Value("uint32"),
        "the face within the source image, in the detector's score order",
    ),
    (
        "caption",
        Feature::Value("string"),
        "the whole caption before it was split; null when the captioner answered in parts",
    ),
];

/// The Arrow type `datasets` uses for an `Image` column.
pub fn image_struct_type() -> DataType {
    DataType::Struct(Fields::from(vec![
        Field::new(IMAGE_BYTES, DataType::Binary, true),
        Field::new(IMAGE_PATH, DataType::Utf8, true),
    ]))
}

fn arrow_type(feature: Feature) -> DataType {
    match feature {
        Feature::Image => image_struct_type(),
        Feature::Value(dtype) => value_type(dtype),
        Feature::FixedList { dtype, length } => DataType::FixedSizeList(
            // pyarrow names the child `element`; `datasets` accepts `item` as well.
            Arc::new(Field::new("element", value_type(dtype), true)),
            length as i32,
        ),
    }
}

fn value_type(dtype: &str) -> DataType {
    match dtype {
        "string" => DataType::Utf8,
        "uint32" => DataType::UInt32,
        "float32" => DataType::Float32,
        other => unreachable!("no Arrow type for the dtype `{other}`"),
    }
}

/// The exported Arrow schema, with the `huggingface` metadata `datasets` reads its features from.
/// Every column is nullable, as in the files `datasets` writes.
pub fn dataset_schema() -> SchemaRef {
    let fields: Vec<Field> = COLUMNS
        .iter()
        .map(|&(name, feature, _)| Field::new(name, arrow_type(feature), true))
        .collect();
    let metadata = [(HF_METADATA_KEY.to_string(), huggingface_metadata())].into();
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

fn feature_json(feature: Feature) -> String {
    let value = |dtype: &str| format!("{{\"dtype\": {}, \"_type\": \"Value\"}}", json_str(dtype));
    match feature {
        Feature::Image => "{\"_type\": \"Image\"}".to_string(),
        Feature::Value(dtype) => value(dtype),
        Feature::FixedList { dtype, length } => format!(
            "{{\"feature\": {}, \"length\": {length}, \"_type\": \"Sequence\"}}",
            value(dtype)
        ),
    }
}

/// The `huggingface` metadata value, byte for byte as Python's `json.dumps` writes what
/// `datasets` stores: `{"info": {"features": {...}}}` with the columns in file order.
pub fn huggingface_metadata() -> String {
    let features: Vec<String> = COLUMNS
        .iter()
        .map(|&(name, feature, _)| format!("{}: {}", json_str(name), feature_json(feature)))
        .collect();
    format!(
        "{{\"info\": {{\"features\": {{{}}}}}}}",
        features.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_what_datasets_writes() {
        // Python: `Features({...}).to_dict()` as `datasets` 3.6 stores it, for the first
        // columns of each kind.
        let json = huggingface_metadata();
        assert!(
            json.starts_with(
                "{\"info\": {\"features\": {\"image\": {\"_type\": \"Image\"}, \"identity\": \
                 {\"dtype\": \"string\", \"_type\": \"Value\"}, "
            ),
            "{json}"
        );
        assert!(
            json.contains(
                "\"face_box\": {\"feature\": {\"dtype\": \"float32\", \"_type\": \"Value\"}, \
                 \"length\": 4, \"_type\": \"Sequence\"}"
            ),
            "{json}"
        );
        assert!(json.ends_with("\"caption\": {\"dtype\": \"string\", \"_type\": \"Value\"}}}}"));
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            parsed["info"]["features"].as_object().unwrap().len(),
            COLUMNS.len()
        );
    }

    #[test]
    fn schema_follows_the_columns() {
        let schema = dataset_schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let want: Vec<&str> = COLUMNS.iter().map(|c| c.0).collect();
        assert_eq!(names, want);
        assert_eq!(
            schema.field_with_name("image").unwrap().data_type(),
            &image_struct_type()
        );
    }

    #[test]
    fn shard_files_name_their_split() {
        assert_eq!(
            Split::Validation.shard_path(2, 10),
            "data/validation-00002-of-00010.parquet"
        );
        assert_eq!(
            Split::of_shard_file("train-00000-of-00001.parquet"),
            Some(Split::Train)
        );
        assert_eq!(
            Split::of_shard_file("validation-00000-of-00001.parquet"),
            Some(Split::Validation)
        );
        assert_eq!(Split::of_shard_file("trainer-00000.parquet"), None);
        assert_eq!(Split::of_shard_file("train-00000-of-00001.json"), None);
    }
}
