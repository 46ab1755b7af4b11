//! `idforge show`: what is in a table or a run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

use idforge_core::RunDir;
use idforge_core::schema::{
    CaptionStatus, CaptionsTable, FacesTable, ImagesTable, Reason, TableSpec, Verdict,
};

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// An `images.parquet`, `faces.parquet` or `captions.parquet` file, or a run folder (`runs/<name>`: every
    /// finished stage's table).
    path: PathBuf,
    /// Also print the first N rows.
    #[arg(long, default_value_t = 0)]
    rows: usize,
}

pub fn run(args: ShowArgs) -> anyhow::Result<ExitCode> {
    if args.path.is_dir() {
        let run = RunDir::at(&args.path);
        let images = run
            .require::<ImagesTable>()
            .context("give a table file, or a run folder whose ingest stage has finished")?;
        show_images(&images, args.rows)?;
        let faces = run.table::<FacesTable>();
        if faces.is_file() {
            println!();
            show_faces(&faces, args.rows)?;
        }
        let captions = run.table::<CaptionsTable>();
        if captions.is_file() {
            println!();
            show_captions(&captions, args.rows)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let file = args.path.clone();
    let table = if file.is_file() {
        idforge_core::table::table_name(&file)
            .with_context(|| format!("reading {}", file.display()))?
    } else {
        None
    };
    if table.as_deref() == Some(FacesTable::NAME) {
        show_faces(&file, args.rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if table.as_deref() == Some(CaptionsTable::NAME) {
        show_captions(&file, args.rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    show_images(&file, args.rows)?;
    Ok(ExitCode::SUCCESS)
}

fn show_faces(file: &std::path::Path, rows: usize) -> anyhow::Result<()> {
    let table = FacesTable::read(file).with_context(|| format!("reading {}", file.display()))?;
    println!("{}", file.display());
    let mut images: Vec<u64> = table.rows.iter().map(|r| r.row_id).collect();
    images.dedup();
    let faces = table.rows.iter().filter(|r| r.face_index.is_some()).count();
    let kept: Vec<&idforge_core::schema::FaceRow> = table
        .rows
        .iter()
        .filter(|r| r.verdict == Verdict::Kept)
        .collect();
    let mut groups: Vec<&str> = kept.iter().filter_map(|r| r.group.as_deref()).collect();
    groups.sort_unstable();
    groups.dedup();
    println!(
        "{} images, {faces} faces ({}), {} kept in {} identities",
        images.len(),
        table.embedder,
        kept.len(),
        groups.len()
    );
    let counts = table.outcome_counts();
    for reason in Reason::ALL {
        println!(
            "  {:<20} {}",
            reason.as_str(),
            counts.get(reason.as_str()).copied().unwrap_or(0)
        );
    }
    if rows > 0 {
        let batch = table.to_batch()?.slice(0, rows.min(table.rows.len()));
        let cols = [
            "row_id",
            "face_index",
            "group",
            "score",
            "id_score",
            "verdict",
            "reason",
            "detail",
        ];
        print_columns(&batch, &cols)?;
    }
    Ok(())
}

fn show_captions(file: &std::path::Path, rows: usize) -> anyhow::Result<()> {
    let table = CaptionsTable::read(file).with_context(|| format!("reading {}", file.display()))?;
    println!("{}", file.display());
    let ok = table
        .rows
        .iter()
        .filter(|r| r.status == CaptionStatus::Ok)
        .count();
    let mut by: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &table.rows {
        *by.entry(format!(
            "{} ({}, {}, {})",
            r.captioner, r.model, r.prompt_version, r.splitter
        ))
        .or_default() += 1;
    }
    println!(
        "{} faces: {ok} captioned, {} failed, {} from the cache",
        table.rows.len(),
        table.rows.len() - ok,
        table.rows.iter().filter(|r| r.cached).count()
    );
    for (who, n) in by {
        println!("  {who}: {n}");
    }
    if rows > 0 {
        let batch = table.to_batch()?.slice(0, rows.min(table.rows.len()));
        print_columns(
            &batch,
            &[
                "row_id",
                "face_index",
                "status",
                "class_word",
                "general",
                "background",
                "body",
            ],
        )?;
    }
    Ok(())
}

fn show_images(file: &std::path::Path, rows: usize) -> anyhow::Result<()> {
    if !file.is_file() {
        bail!(
            "{} not found: give an images.parquet file or a run folder whose ingest stage has finished",
            file.display()
        );
    }
    let table = ImagesTable::read(file).with_context(|| format!("reading {}", file.display()))?;
    println!("{}", file.display());
    print!("{}", idforge_ingest::summary::summarize(&table));
    if rows > 0 {
        let batch = table.to_batch().slice(0, rows.min(table.rows.len()));
        let cols = [
            "row_id", "identity", "status", "width", "height", "format", "source", "error",
        ];
        print_columns(&batch, &cols)?;
    }
    Ok(())
}

/// Prints the named columns of `batch` as a table.
fn print_columns(batch: &arrow::array::RecordBatch, cols: &[&str]) -> anyhow::Result<()> {
    let indices: Vec<usize> = cols
        .iter()
        .map(|c| batch.schema().index_of(c).expect("fixed column"))
        .collect();
    let projected = batch.project(&indices)?;
    println!(
        "{}",
        arrow::util::pretty::pretty_format_batches(&[projected])?
    );
    Ok(())
}
