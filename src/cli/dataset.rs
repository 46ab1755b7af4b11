//! `idforge dataset export`: the run's kept, captioned faces as a Hugging Face `datasets`
//! folder (Parquet shards split by identity, and a dataset card), via
//! [`idforge_dataset::export`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use idforge_core::limits::{Amount, Fraction};
use idforge_dataset::{ExportOptions, ExportSummary, default_out, export};

/// `idforge dataset <command>`.
#[derive(Debug, Args)]
pub struct DatasetArgs {
    #[command(subcommand)]
    command: DatasetCommand,
}

#[derive(Debug, Subcommand)]
enum DatasetCommand {
    /// Write the run's kept, captioned faces as Parquet shards that Hugging Face `datasets`
    /// loads (train / validation split by identity), with a dataset card (README.md).
    Export(ExportArgs),
}

#[derive(Debug, Args)]
#[command(after_long_help = "\
Examples:
  idforge dataset export runs/demo
  idforge dataset export demo --out /data/demo-faces --license cc-by-4.0 --pretty-name \"Demo faces\"
  idforge dataset export runs/demo --val-identities alice,bob
  idforge dataset export runs/demo --include-uncaptioned     # before or without captioning

Reads runs/<name>/curate/faces.parquet (kept faces) and runs/<name>/caption/captions.parquet
(status ok), joined on the face. Writes, in the output folder:
  data/train-00000-of-000NN.parquet, data/validation-....parquet   the shards
  README.md            the dataset card: license, features, splits and counts, how it was made
  idforge-export.json  options and counts; marks the folder as an export
Columns: image and ref_image (Image: {bytes, path}), identity, prompt_general,
prompt_background, prompt_body, class_word, trigger, face_box (4 floats, crop pixels),
image_id, face_index, caption.

The validation identities are the first ceil(fraction × identities) by sha256(seed ‖ identity):
the same seed gives the same split anywhere, and no identity is in both splits. Every kept face
not exported is counted by cause (caption failed, no caption, missing file). Re-exporting
replaces a previous export (its data/, README.md, idforge-export.json) completely; a non-empty
folder that is not an export is refused. Entries starting with '.' (.git, .gitattributes of a
cloned dataset repository) are left alone.

Load it with datasets.load_dataset(\"<out>\"), or check it with tools/hf-export-check/run <out>.")]
pub struct ExportArgs {
    /// The run folder (runs/<name>), or a run name looked up under --runs-dir.
    run: PathBuf,
    /// Folder holding runs (for a run given by name).
    #[arg(long, env = "IDFORGE_RUNS")]
    runs_dir: Option<PathBuf>,
    /// Output folder [default: <run>/dataset].
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Share of the identities held out as the validation split (0 for none), rounded up; at
    /// least one identity when there are two or more, never all.
    #[arg(long, default_value = "0.1", value_name = "FRACTION")]
    val_fraction: Fraction,
    /// The validation identities by name, comma-separated, instead of drawing them.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "A,B,...",
        conflicts_with = "val_fraction"
    )]
    val_identities: Option<Vec<String>>,
    /// Seed of the validation draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Most rows per Parquet shard (a 512 px crop and its reference take about 60 KB).
    #[arg(long, default_value = "2000", value_name = "ROWS")]
    rows_per_shard: Amount,
    /// The card's license identifier (cc-by-4.0, mit, ...). The images' terms are their
    /// sources'; `other` until you set what they allow.
    #[arg(long, default_value = "other")]
    license: String,
    /// The card's title [default: the run's name].
    #[arg(long)]
    pretty_name: Option<String>,
    /// Also export kept faces whose caption failed or is missing, with null prompts.
    #[arg(long)]
    include_uncaptioned: bool,
    /// Skip and count kept faces whose crop or reference crop file is gone, instead of
    /// stopping.
    #[arg(long)]
    skip_missing_files: bool,
}

/// Runs `idforge dataset <command>`.
pub fn run(args: DatasetArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        DatasetCommand::Export(a) => run_export(a),
    }
}

/// The run folder: the path as given when it is a folder, else `<runs dir>/<name>`.
fn resolve_run(run: &Path, runs_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    if run.is_dir() {
        return Ok(run.to_path_buf());
    }
    if run.components().count() == 1 {
        let dir = runs_dir.unwrap_or(Path::new("runs")).join(run);
        if dir.is_dir() {
            return Ok(dir);
        }
        bail!(
            "no run folder {} or {}: give the run's folder (runs/<name>) or its name with \
             --runs-dir",
            run.display(),
            dir.display()
        );
    }
    bail!("{} is not a run folder", run.display())
}

fn run_export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let run = resolve_run(&args.run, args.runs_dir.as_deref())?;
    let out = args.out.clone().unwrap_or_else(|| default_out(&run));
    let opts = ExportOptions {
        out,
        val_fraction: args.val_fraction.get(),
        val_identities: args.val_identities,
        seed: args.seed,
        rows_per_shard: args.rows_per_shard.usize(),
        license: args.license,
        pretty_name: args.pretty_name,
        include_uncaptioned: args.include_uncaptioned,
        skip_missing_files: args.skip_missing_files,
    };
    let summary =
        export(&run, &opts).with_context(|| format!("exporting the run {}", run.display()))?;
    print_summary(&summary);
    Ok(ExitCode::SUCCESS)
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn print_summary(s: &ExportSummary) {
    let identities = s.train.identities.len() + s.validation.identities.len();
    println!(
        "exported {} of {} kept faces ({identities} identities) from {} to {}",
        s.rows(),
        s.kept_faces,
        s.run.display(),
        s.out.display()
    );
    for split in s.splits() {
        println!(
            "  {:<10} {:>7} rows {:>5} identities {:>3} shards {:>10}",
            split.name,
            split.rows,
            split.identities.len(),
            split.shards.len(),
            megabytes(split.file_bytes)
        );
    }
    let k = &s.skipped;
    if k.total() > 0 {
        println!(
            "  not exported: {} caption failed, {} without a caption, {} missing files",
            k.caption_failed, k.missing_caption, k.missing_file
        );
    }
    if s.uncaptioned > 0 {
        println!("  {} exported without prompts", s.uncaptioned);
    }
    if s.orphan_captions > 0 {
        println!(
            "  {} captions are of faces that are no longer kept (curate re-run?); ignored",
            s.orphan_captions
        );
    }
    for note in &s.notes {
        println!("  note: {note}");
    }
    println!(
        "load it with datasets.load_dataset(\"{}\"); check it with tools/hf-export-check/run {}",
        s.out.display(),
        s.out.display()
    );
}
