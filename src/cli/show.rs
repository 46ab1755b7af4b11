//! `idforge show`: what is in a table or a run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

use idforge_core::schema::ImagesTable;

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// An `images.parquet` file, or a run folder (`runs/<name>`).
    path: PathBuf,
    /// Also print the first N rows.
    #[arg(long, default_value_t = 0)]
    rows: usize,
}

pub fn run(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let file = if args.path.is_dir() {
        args.path.join("ingest").join("images.parquet")
    } else {
        args.path.clone()
    };
    if !file.is_file() {
        bail!(
            "{} not found: give an images.parquet file or a run folder whose ingest stage has finished",
            file.display()
        );
    }
    let table = ImagesTable::read(&file).with_context(|| format!("reading {}", file.display()))?;
    println!("{}", file.display());
    print!("{}", idforge_ingest::summary::summarize(&table));
    if args.rows > 0 {
        let batch = table.to_batch().slice(0, args.rows.min(table.rows.len()));
        let cols = [
            "row_id", "identity", "status", "width", "height", "format", "source", "error",
        ];
        let projected =
            batch.project(&cols.map(|c| batch.schema().index_of(c).expect("fixed column")))?;
        println!(
            "{}",
            arrow::util::pretty::pretty_format_batches(&[projected])?
        );
    }
    Ok(ExitCode::SUCCESS)
}
