//! The `import` captioner: captions that came with the data — the ingest `caption` column
//! (a list's caption field, a `.txt` beside an image), or a CSV / JSON-lines file — split by the
//! configured splitter.
//!
//! A file row names its image by `crop_path` (one face), `image_id` or `source` (every face of
//! the image); the most specific match wins. A face without any caption is a `failed` row that
//! says so, never an invented caption.

use std::collections::HashMap;
use std::path::Path;

use crate::captioner::{Failure, Outcome};
use crate::error::CaptionError;
use crate::stage::{Item, OfflineCaptioner};

/// Imported captions, by what they are keyed on.
pub struct ImportCaptioner {
    model: String,
    by_crop: HashMap<String, String>,
    by_image: HashMap<String, String>,
    by_source: HashMap<String, String>,
    from_ingest: bool,
}

impl ImportCaptioner {
    /// Captions from the ingest `caption` column.
    pub fn from_ingest() -> Self {
        ImportCaptioner {
            model: "ingest".into(),
            by_crop: HashMap::new(),
            by_image: HashMap::new(),
            by_source: HashMap::new(),
            from_ingest: true,
        }
    }

    /// Captions from a CSV (with a header) or JSON-lines (`.jsonl`, `.ndjson`) file.
    pub fn from_file(path: &Path) -> Result<Self, CaptionError> {
        let err =
            |m: String| CaptionError::Settings(format!("import file {}: {m}", path.display()));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut rows: Vec<HashMap<String, String>> = Vec::new();
        let jsonl = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("jsonl" | "ndjson")
        );
        if jsonl {
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let v: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(line).map_err(|e| err(format!("line {}: {e}", i + 1)))?;
                rows.push(
                    v.into_iter()
                        .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
                        .collect(),
                );
            }
        } else {
            let mut reader = csv::Reader::from_reader(text.as_bytes());
            let headers = reader.headers().map_err(|e| err(e.to_string()))?.clone();
            for (i, rec) in reader.records().enumerate() {
                let rec = rec.map_err(|e| err(format!("row {}: {e}", i + 1)))?;
                rows.push(
                    headers
                        .iter()
                        .zip(rec.iter())
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                );
            }
        }
        let mut out = ImportCaptioner {
            model: format!("file:{name}"),
            by_crop: HashMap::new(),
            by_image: HashMap::new(),
            by_source: HashMap::new(),
            from_ingest: false,
        };
        for (i, row) in rows.into_iter().enumerate() {
            let caption = row
                .get("caption")
                .filter(|c| !c.trim().is_empty())
                .ok_or_else(|| err(format!("row {}: no `caption`", i + 1)))?
                .trim()
                .to_string();
            // An empty cell (a CSV with several key columns) names nothing.
            let key = |k: &str| row.get(k).filter(|v| !v.trim().is_empty());
            if let Some(k) = key("crop_path") {
                out.by_crop.insert(k.clone(), caption);
            } else if let Some(k) = key("image_id") {
                out.by_image.insert(k.clone(), caption);
            } else if let Some(k) = key("source") {
                out.by_source.insert(k.clone(), caption);
            } else {
                return Err(err(format!(
                    "row {}: name the image with `crop_path`, `image_id` or `source`",
                    i + 1
                )));
            }
        }
        Ok(out)
    }

    fn lookup(&self, item: &Item) -> Option<String> {
        if self.from_ingest {
            return item.source_caption.clone().filter(|c| !c.trim().is_empty());
        }
        self.by_crop
            .get(&item.crop_path)
            .or_else(|| self.by_image.get(&item.image_id))
            .or_else(|| self.by_source.get(&item.source))
            .cloned()
    }
}

impl OfflineCaptioner for ImportCaptioner {
    fn name(&self) -> &str {
        "import"
    }

    fn model(&self) -> String {
        self.model.clone()
    }

    fn version(&self) -> String {
        "import-v1".into()
    }

    fn caption(&self, item: &Item, _crop: &[u8]) -> Result<Outcome, Failure> {
        match self.lookup(item) {
            Some(caption) => Ok(Outcome {
                caption: Some(caption),
                ..Default::default()
            }),
            None => Err(Failure {
                error: format!(
                    "no imported caption for this face ({})",
                    if self.from_ingest {
                        "the ingest row has no caption".to_string()
                    } else {
                        format!(
                            "{} has no row for its crop_path, image_id or source",
                            self.model
                        )
                    }
                ),
                raw: vec![],
                attempts: 0,
            }),
        }
    }
}
