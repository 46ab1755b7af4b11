//! The exported columns as Hugging Face `datasets` features: one list that the Arrow schema, the
//! `huggingface` Parquet metadata and the dataset card's `dataset_info.features` are all derived
//! from, so the three cannot disagree.
//!
//! Encodings checked against `datasets` 5.2.0 and 3.6.0 (pyarrow 26): an `Image` is the Arrow
//! struct `{bytes: binary, path: string}` with `{"_type": "Image"}` in the metadata; a
//! fixed-length float list is an Arrow `fixed_size_list<float>[4]` declared as
//! `{"feature": {"dtype": "float32", "_type": "Value"}, "length": 4, "_type": "Sequence"}`.
//! `datasets` ≥ 4 writes `"_type": "List"` there instead and reads `Sequence` as the same
//! `List(Value('float32'), length=4)`; 3.x does not know `List`. `Sequence` is what both read.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};

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
        "image",
        Feature::Image,
        "the training crop (square JPEG, as curate wrote it); `path` is its file name",
    ),
    (
        "identity",
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
        "class_word",
        Feature::Value("string"),
        "the identity's class word (`man`, `woman`, ...), chosen per identity",
    ),
    (
        "trigger",
        Feature::Value("string"),
        "the token that stands for the identity in `prompt_general`",
    ),
    (
        "face_box",
        Feature::FixedList {
            dtype: "float32",
            length: 4,
        },
        "the face box `[x0, y0, x1, y1]` in the crop's pixels (for a face-masked loss)",
    ),
    (
        "ref_image",
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
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
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
}
