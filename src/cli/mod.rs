//! Command-line arguments and their dispatch to the stage libraries.

mod arena;
mod bench;
mod bench_generate;
mod caption;
mod clip;
mod curate;
mod dataset;
mod device;
mod faces;
mod generate;
mod ingest;
mod show;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use idforge_core::Shard;
use idforge_core::run::{ShardSelection, StageReport};

/// idforge builds identity-oriented face datasets, captions them into split prompts, trains
/// PhotoMaker / IP-Adapter-style adapters and benchmarks identity-personalization methods.
///
/// Every stage reads the previous stage's tables from runs/<name>/ and writes its own there;
/// re-running a stage resumes it. See README.md for the recipe format.
#[derive(Debug, Parser)]
#[command(name = "idforge", version, about, long_about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Fetch or read images from URL lists and folders into the `images` table and the store.
    Ingest(ingest::IngestArgs),
    /// Curate the ingested images: resolution, faces, identity verification, duplicates,
    /// crops; writes the `faces` table and an HTML report.
    Curate(curate::CurateArgs),
    /// Caption the kept faces into general / background / body prompts (a VLM server, offline
    /// face attributes, or imported captions); writes the `captions` table.
    Caption(caption::CaptionArgs),
    /// Publish a run as a dataset: `dataset export` writes Hugging Face `datasets` Parquet
    /// shards and a dataset card.
    Dataset(dataset::DatasetArgs),
    /// Benchmark identity-personalization methods: `bench init` a protocol and references,
    /// `bench plan` the generations, `bench import` a method's images, `bench score` them and
    /// write the leaderboard (JSON, Markdown, HTML).
    Bench(bench::BenchArgs),
    /// The human preference test: `arena serve` a page where raters compare two hidden
    /// methods' images, `arena simulate` scripted raters, `arena export` the votes to Parquet
    /// for the leaderboard's Bradley–Terry columns.
    Arena(arena::ArenaArgs),
    /// CLIP: `clip score --image … --text …` prints CLIP-T (torchmetrics' CLIPScore,
    /// 100·max(cos, 0)) of image–text pairs from the user's checkpoint.
    Clip(clip::ClipArgs),
    /// Face models: `faces detect <image>` prints detected faces as JSON.
    Faces(faces::FacesArgs),
    /// Generate an image from a diffusers Stable Diffusion / SDXL folder (safetensors) with the
    /// burn port of its UNet, VAE, text encoders and DDIM / Euler samplers, optionally with an
    /// IP-Adapter-family identity adapter conditioned on reference photos.
    Generate(generate::GenerateArgs),
    /// Train an identity adapter (IP-Adapter-FaceID for now) on a dataset export: `[train]`
    /// recipe table or flags; checkpoints, `--resume`, metrics.jsonl, report.html and the
    /// exported adapter in runs/<name>/train/.
    Train(train::TrainArgs),
    /// Summarise a table (`images.parquet`) or a run folder.
    Show(show::ShowArgs),
    /// Show the tensor backend in use (CPU `flex`, or CUDA when built with `--features cuda`)
    /// and measure its matmul throughput.
    Device(device::DeviceArgs),
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Ingest(a) => ingest::run(a),
        Command::Curate(a) => curate::run(a),
        Command::Caption(a) => caption::run(a),
        Command::Dataset(a) => dataset::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Arena(a) => arena::run(a),
        Command::Clip(a) => clip::run(a),
        Command::Faces(a) => faces::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Train(a) => train::run(a),
        Command::Show(a) => show::run(a),
        Command::Device(a) => device::run(a),
    }
}

/// face-api's model folder: `given`, else the asset cache's (fetched by `make assets`).
/// Prints a library's note (what loaded, which flag is unused) to stderr.
fn log_stderr(message: &str) {
    eprintln!("{message}");
}

fn face_api_models(given: Option<std::path::PathBuf>) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    match given {
        Some(d) => Ok(d),
        None => idforge_core::cache::face_api_dir_if_fetched()
            .map(|d| d.join("model"))
            .context(
                "the face-api weights are not in the asset cache: run `make assets` \
                 (or tools/fetch-assets), or give face-api's model folder (--weights; \
                 --face-api-weights for `bench score`)",
            ),
    }
}

/// Which shards this process runs: `--shard i/N`, else the cluster scheduler's variables, else
/// all `shards` of the stage. A single shard fixes the stage's shard count to its `N`.
fn shard_selection(
    spec: Option<&str>,
    shards: &mut idforge_core::limits::Shards,
) -> anyhow::Result<ShardSelection> {
    use anyhow::Context;
    let shard = match spec {
        Some(s) => Some(Shard::parse(s).context("--shard")?),
        None => Shard::from_env()?,
    };
    Ok(match shard {
        Some(s) => {
            *shards = idforge_core::limits::Shards::new(s.count as u64)
                .context("the shard count of --shard (or the scheduler's variables)")?;
            ShardSelection::One(s)
        }
        None => ShardSelection::All(shards.usize()),
    })
}

/// Says which shards were skipped as complete and, when the stage is not merged yet, which
/// ones it waits for. Returns whether the merged table exists.
fn print_shard_report(report: &StageReport) -> bool {
    let list = |shards: &[Shard]| {
        shards
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !report.skipped.is_empty() {
        eprintln!("already complete, skipped: shard {}", list(&report.skipped));
    }
    if let Some(holder) = &report.merging_elsewhere {
        println!("shard done; every shard is complete and another task is merging: {holder}");
        return false;
    }
    if report.merged.is_none() {
        println!(
            "shard done; the table is merged when the remaining shards finish: {}",
            list(&report.waiting_for)
        );
        return false;
    }
    true
}
