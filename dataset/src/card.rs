//! The dataset card (`README.md`): the YAML header the Hub and `datasets.load_dataset(folder)`
//! read (license, configs with the split files, `dataset_info` with features and counts), then a
//! body for people: what the columns mean, who is in which split, how the rows were made, how to
//! load them.
//!
//! The header follows what `datasets`' `push_to_hub` writes; a fixed-length list is declared as
//! `sequence: float32` with `length: 4`, which `datasets` 3.x and ≥ 4 both read as the Parquet
//! metadata's type (`list:` would be a variable-length list to 3.x).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use idforge_core::run::STATS_FILE;
use idforge_core::schema::dataset::{COLUMNS, DATA_DIR, Feature};
use idforge_core::schema::faces::REPORT_FILE;
use idforge_core::schema::{CaptionRow, CaptionsTable, FacesTable, ImagesTable, RunTable};

use crate::export::{EXPORT_MARKER, ExportOptions, ExportSummary, SplitSummary};

/// Identities listed by name per split in the card body; the full lists are in
/// `idforge-export.json`.
const LISTED_IDENTITIES: usize = 100;

/// Where the exported rows came from, for the card's "how it was made" section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MadeWith {
    /// The run folder's name.
    pub run_name: String,
    /// Run-relative files of the stages that exist (tables, reports, statistics).
    pub run_files: Vec<String>,
    /// Exported rows per `(captioner, model, prompt version, splitter)`; uncaptioned rows are
    /// not counted.
    pub captioners: BTreeMap<(String, String, String, String), usize>,
}

impl MadeWith {
    /// Looks up the run's stage files and tallies the captions of the exported rows.
    pub fn from_rows<'a>(
        run_dir: &Path,
        captions: impl Iterator<Item = Option<&'a CaptionRow>>,
    ) -> Self {
        let (faces, captions_table) = (FacesTable::INFO, CaptionsTable::INFO);
        let run_files = [
            ImagesTable::INFO.relative_path(),
            faces.relative_path(),
            format!("{}/{REPORT_FILE}", faces.stage),
            format!("{}/{STATS_FILE}", faces.stage),
            captions_table.relative_path(),
            format!("{}/{STATS_FILE}", captions_table.stage),
        ]
        .into_iter()
        .filter(|f| run_dir.join(f).is_file())
        .collect();
        let mut captioners = BTreeMap::new();
        for c in captions.flatten() {
            *captioners
                .entry((
                    c.captioner.clone(),
                    c.model.clone(),
                    c.prompt_version.clone(),
                    c.splitter.clone(),
                ))
                .or_default() += 1;
        }
        MadeWith {
            run_name: run_dir
                .canonicalize()
                .unwrap_or_else(|_| run_dir.to_path_buf())
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            run_files,
            captioners,
        }
    }
}

/// A YAML scalar for any text: a double-quoted string, whose escapes JSON's are a subset of.
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// Escapes the characters Markdown would read as formatting or table cells.
fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if "\\`*_[]<>|".contains(ch) {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// The Hub's `size_categories` bucket for `n` rows.
pub fn size_category(n: usize) -> &'static str {
    match n {
        0..1_000 => "n<1K",
        1_000..10_000 => "1K<n<10K",
        10_000..100_000 => "10K<n<100K",
        100_000..1_000_000 => "100K<n<1M",
        1_000_000..10_000_000 => "1M<n<10M",
        _ => "10M<n<100M",
    }
}

fn non_empty(summary: &ExportSummary) -> impl Iterator<Item = &SplitSummary> {
    summary.splits().into_iter().filter(|s| s.rows > 0)
}

fn header(summary: &ExportSummary, opts: &ExportOptions, pretty_name: &str) -> String {
    let mut y = String::from("---\n");
    let _ = writeln!(y, "license: {}", yaml_str(&opts.license));
    let _ = writeln!(y, "pretty_name: {}", yaml_str(pretty_name));
    y.push_str("task_categories:\n- text-to-image\n");
    y.push_str("tags:\n- faces\n- identity\n- personalization\n- idforge\n");
    let _ = writeln!(
        y,
        "size_categories:\n- {}",
        yaml_str(size_category(summary.rows()))
    );
    y.push_str("configs:\n- config_name: default\n  data_files:\n");
    for s in non_empty(summary) {
        let _ = writeln!(
            y,
            "  - split: {}\n    path: {DATA_DIR}/{}-*",
            s.name, s.name
        );
    }
    y.push_str("dataset_info:\n  features:\n");
    for &(name, feature, _) in &COLUMNS {
        let _ = writeln!(y, "  - name: {name}");
        match feature {
            Feature::Image => y.push_str("    dtype: image\n"),
            Feature::Value(dtype) => {
                let _ = writeln!(y, "    dtype: {dtype}");
            }
            Feature::FixedList { dtype, length } => {
                let _ = writeln!(y, "    sequence: {dtype}\n    length: {length}");
            }
        }
    }
    y.push_str("  splits:\n");
    for s in non_empty(summary) {
        let _ = writeln!(
            y,
            "  - name: {}\n    num_bytes: {}\n    num_examples: {}",
            s.name, s.num_bytes, s.rows
        );
    }
    let download: u64 = summary.splits().iter().map(|s| s.file_bytes).sum();
    let size: u64 = summary.splits().iter().map(|s| s.num_bytes).sum();
    let _ = writeln!(y, "  download_size: {download}\n  dataset_size: {size}");
    y.push_str("---\n");
    y
}

fn identity_list(split: &SplitSummary) -> String {
    let mut names: Vec<String> = split
        .identities
        .iter()
        .take(LISTED_IDENTITIES)
        .map(|(id, n)| format!("{} ({n})", md(id)))
        .collect();
    if split.identities.len() > LISTED_IDENTITIES {
        names.push(format!(
            "and {} more (see `{EXPORT_MARKER}`)",
            split.identities.len() - LISTED_IDENTITIES
        ));
    }
    names.join(", ")
}

/// The whole `README.md` of an export.
pub fn render(summary: &ExportSummary, opts: &ExportOptions, made: &MadeWith) -> String {
    let pretty_name = opts
        .pretty_name
        .clone()
        .unwrap_or_else(|| made.run_name.clone());
    let mut c = header(summary, opts, &pretty_name);
    let identities = summary.train.identities.len() + summary.validation.identities.len();
    let _ = write!(
        c,
        "\n# {}\n\n{} face crops of {identities} identities, each with its reference face crop \
         and split prompts (general, background, body), made by idforge from the run `{}`. \
         The splits hold disjoint identities: the validation identities are never seen in \
         training.\n",
        md(&pretty_name),
        summary.rows(),
        md(&made.run_name)
    );

    c.push_str("\n## Splits\n\n| split | rows | identities | shards |\n|---|---:|---:|---:|\n");
    for s in summary.splits() {
        let _ = writeln!(
            c,
            "| {} | {} | {} | {} |",
            s.name,
            s.rows,
            s.identities.len(),
            s.shards.len()
        );
    }
    c.push('\n');
    for s in summary.splits() {
        if s.rows > 0 {
            let _ = writeln!(c, "- **{}**: {}", s.name, identity_list(s));
        }
    }
    if summary.validation.rows == 0 {
        c.push_str("- **validation**: none (no validation split is declared)\n");
    }

    c.push_str("\n## Columns\n\n| column | type | meaning |\n|---|---|---|\n");
    for &(name, feature, meaning) in &COLUMNS {
        let ty = match feature {
            Feature::Image => "Image".to_string(),
            Feature::Value(dtype) => format!("Value('{dtype}')"),
            Feature::FixedList { dtype, length } => {
                format!("Sequence(Value('{dtype}'), length={length})")
            }
        };
        let _ = writeln!(c, "| `{name}` | {ty} | {} |", meaning.replace('|', "\\|"));
    }
    c.push_str(
        "\nImages keep the bytes curate wrote (no re-encoding); `datasets` decodes them to PIL \
         images on access.\n",
    );

    c.push_str("\n## How it was made\n\n");
    let _ = writeln!(
        c,
        "- Faces: the kept faces of the curate stage (resolution, detector score, face size, \
         identity verification, duplicates); {} kept faces in the run.",
        summary.kept_faces
    );
    if made.captioners.is_empty() {
        c.push_str("- Captions: none (exported without prompts).\n");
    }
    for ((captioner, model, prompt, splitter), n) in &made.captioners {
        let _ = writeln!(
            c,
            "- Captions: {n} rows by `{captioner}` with model `{model}`, prompt `{prompt}`, \
             split by `{splitter}`."
        );
    }
    let skipped = &summary.skipped;
    let _ = writeln!(
        c,
        "- Not exported: {} faces whose caption failed, {} without a caption, {} whose files \
         were missing.{}",
        skipped.caption_failed,
        skipped.missing_caption,
        skipped.missing_file,
        if summary.uncaptioned > 0 {
            format!(
                " {} exported faces have no prompts (null texts).",
                summary.uncaptioned
            )
        } else {
            String::new()
        }
    );
    let rule = match &opts.val_identities {
        Some(_) => "named explicitly".to_string(),
        None => format!(
            "the first ⌈{} × identities⌉ by sha256(seed as 8 little-endian bytes ‖ identity), \
             seed {}",
            opts.val_fraction, opts.seed
        ),
    };
    let _ = writeln!(c, "- Validation identities: {rule}.");
    for note in &summary.notes {
        let _ = writeln!(c, "- Note: {}", md(note));
    }
    if !made.run_files.is_empty() {
        let files: Vec<String> = made.run_files.iter().map(|f| format!("`{f}`")).collect();
        let _ = writeln!(
            c,
            "- Details are in the run folder: {}; `{}` has every face, kept or rejected, with the \
             reason and the scores behind the decision.",
            files.join(", "),
            FacesTable::INFO.relative_path()
        );
    }
    let _ = writeln!(
        c,
        "- `{EXPORT_MARKER}` records the export's options and counts."
    );

    c.push_str(
        "\n## Loading\n\n```python\nfrom datasets import load_dataset\n\n\
         ds = load_dataset(\"path/to/this/folder\")  # or the Hub repository id\n\
         # without the card: load_dataset(\"parquet\", data_dir=\"path/to/this/folder\")\n\
         row = ds[\"train\"][0]\n\
         row[\"image\"]  # PIL.Image, the training crop\n\
         row[\"ref_image\"], row[\"face_box\"], row[\"prompt_general\"]\n```\n",
    );

    let _ = write!(
        c,
        "\n## License\n\n`{}`. The images come from the sources the run was made from, and \
         their terms apply to the crops; ",
        md(&opts.license)
    );
    if opts.license == "other" {
        c.push_str(
            "idforge cannot know them, so the license is left as `other`: check the sources and \
             set it (`--license`) before publishing.\n",
        );
    } else {
        c.push_str("the license above is the one given at export.\n");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_buckets_follow_the_hub() {
        assert_eq!(size_category(0), "n<1K");
        assert_eq!(size_category(999), "n<1K");
        assert_eq!(size_category(1000), "1K<n<10K");
        assert_eq!(size_category(250_000), "100K<n<1M");
    }

    #[test]
    fn text_is_escaped_for_yaml_and_markdown() {
        assert_eq!(yaml_str("a: \"b\"\n"), "\"a: \\\"b\\\"\\n\"");
        assert_eq!(md("a|b_c"), "a\\|b\\_c");
    }
}
