//! `idforge ingest`: arguments mirrored from the recipe's `[ingest]` table, then resolved into
//! [`IngestSettings`] (recipe first, flags on top).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;

use idforge_core::Name;
use idforge_core::limits::{
    ByteLimit, Concurrency, Hamming, PixelLimit, Rate, Redirects, Retries, Seconds, Shards, Threads,
};
use idforge_core::recipe::Recipe;
use idforge_core::run::{RunDir, ShardSelection, run_stage};
use idforge_core::schema::{ImagesTable, TableSpec};
use idforge_ingest::source::resolve_sources;
use idforge_ingest::{IngestSettings, IngestStage, SourceSpec};

#[derive(Debug, Args)]
#[command(after_long_help = "\
Examples:
  idforge ingest --recipe datasets/recipes/demo.toml
  idforge ingest --name faces --source urls.csv --source photos/ --per-host-rate 2
  idforge ingest --recipe r.toml --shard 3/8        # one task of a cluster array

Every input row ends in runs/<name>/ingest/images.parquet with a status (ok, http_error,
timeout, too_large, not_image, decode_error, opted_out, duplicate, conflict, ...) and a reason.
Interrupt at any time and run the same command again: finished rows are not fetched again.")]
pub struct IngestArgs {
    /// Recipe file (TOML) naming the run, its sources and settings.
    #[arg(long, short)]
    recipe: Option<PathBuf>,
    /// Run name (folder under --runs-dir); required without a recipe.
    #[arg(long)]
    name: Option<Name>,
    /// Folder holding runs.
    #[arg(long, env = "IDFORGE_RUNS")]
    runs_dir: Option<PathBuf>,
    /// Extra source: a URL list (.csv, .tsv, .jsonl, .parquet with `url`, `identity` columns)
    /// or a folder whose sub-folders are identities. Repeatable; added after the recipe's.
    #[arg(long = "source", short = 's')]
    sources: Vec<PathBuf>,
    /// Run only shard INDEX/COUNT (zero-based), e.g. 3/8. Without it, the Slurm array or
    /// Kubernetes indexed-job variables are used if set, else every shard runs here.
    #[arg(long)]
    shard: Option<String>,
    /// Number of shards the rows are split into.
    #[arg(long)]
    shards: Option<Shards>,
    /// Content-addressed store folder (default: runs/<name>/ingest/store).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Requests in flight across all hosts (1 to 4096).
    #[arg(long)]
    concurrency: Option<Concurrency>,
    /// Requests in flight to one host (1 to 4096).
    #[arg(long)]
    per_host_concurrency: Option<Concurrency>,
    /// Requests per second to one host: 0 = unlimited, else 0.001 to 10000.
    #[arg(long)]
    per_host_rate: Option<Rate>,
    /// Seconds to connect (above 0, at most 86400).
    #[arg(long)]
    connect_timeout: Option<Seconds>,
    /// Seconds for a whole request, body included (above 0, at most 86400).
    #[arg(long)]
    timeout: Option<Seconds>,
    /// Retries after the first attempt (408, 429, 5xx, timeouts, resets); 0 to 100.
    #[arg(long)]
    retries: Option<Retries>,
    /// Largest body in bytes.
    #[arg(long)]
    max_bytes: Option<ByteLimit>,
    /// Largest image in pixels (decompression-bomb guard).
    #[arg(long)]
    max_pixels: Option<PixelLimit>,
    /// Redirects to follow (0 to 100).
    #[arg(long)]
    max_redirects: Option<Redirects>,
    /// User agent; its first token is matched against robots.txt and X-Robots-Tag scopes.
    #[arg(long)]
    user_agent: Option<String>,
    /// Do not honour robots.txt. Only for sites you own or have permission to crawl.
    #[arg(long)]
    ignore_robots_txt: bool,
    /// Do not honour X-Robots-Tag opt-outs (noai, noimageai, ...). Only with permission.
    #[arg(long)]
    ignore_x_robots_tag: bool,
    /// pHash Hamming distance at or below which two images are the same photograph.
    #[arg(long)]
    phash_threshold: Option<Hamming>,
    /// Threads for decoding and hashing (0 = one per core, at most 1024).
    #[arg(long)]
    decode_threads: Option<Threads>,
    /// Read rows of URL lists that are local paths, under the list's own folder only. Off by
    /// default: a list from a third party could otherwise pull any readable image on this
    /// machine into the dataset. Folders given with --source are not affected.
    #[arg(long)]
    allow_local_paths: bool,
    /// With local paths: also read absolute paths and paths leaving the list's folder.
    #[arg(long)]
    allow_absolute_paths: bool,
}

/// The arguments resolved against the recipe: what to run, where, with which settings.
struct Resolved {
    name: String,
    runs_dir: PathBuf,
    settings: IngestSettings,
    selection: ShardSelection,
}

fn resolve(args: IngestArgs) -> anyhow::Result<Resolved> {
    let recipe = args.recipe.as_deref().map(Recipe::load).transpose()?;
    let mut settings: IngestSettings = match &recipe {
        Some(r) => r.stage("ingest")?,
        None => IngestSettings::default(),
    };
    if let Some(r) = &recipe {
        settings.sources = resolve_sources(std::mem::take(&mut settings.sources), &r.base_dir());
        settings.store = settings.store.map(|s| r.resolve(&s));
    }
    settings
        .sources
        .extend(args.sources.into_iter().map(SourceSpec::from_cli));
    let name = match (args.name, &recipe) {
        (Some(n), _) => n.into_string(),
        (None, Some(r)) => r.name.clone(),
        (None, None) => bail!("give --recipe, or --name for a run without one"),
    };
    let runs_dir = args
        .runs_dir
        .or_else(|| recipe.as_ref().map(|r| r.runs_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("runs"));
    let f = &mut settings.fetch;
    macro_rules! set {
        ($field:expr, $arg:expr) => {
            if let Some(v) = $arg {
                $field = v;
            }
        };
    }
    set!(f.concurrency, args.concurrency);
    set!(f.per_host_concurrency, args.per_host_concurrency);
    set!(f.per_host_rate, args.per_host_rate);
    set!(f.connect_timeout_s, args.connect_timeout);
    set!(f.timeout_s, args.timeout);
    set!(f.retries, args.retries);
    set!(f.max_bytes, args.max_bytes);
    set!(f.max_redirects, args.max_redirects);
    set!(f.user_agent, args.user_agent);
    if args.ignore_robots_txt {
        f.robots_txt = false;
    }
    if args.ignore_x_robots_tag {
        f.x_robots_tag = false;
    }
    if args.allow_local_paths {
        settings.allow_local_paths = true;
    }
    if args.allow_absolute_paths {
        settings.allow_absolute_paths = true;
    }
    set!(settings.max_pixels, args.max_pixels);
    set!(settings.phash_threshold, args.phash_threshold);
    set!(settings.decode_threads, args.decode_threads);
    set!(settings.shards, args.shards);
    if args.store.is_some() {
        settings.store = args.store;
    }
    let selection = super::shard_selection(args.shard.as_deref(), &mut settings.shards)?;
    Ok(Resolved {
        name,
        runs_dir,
        settings,
        selection,
    })
}

pub fn run(args: IngestArgs) -> anyhow::Result<ExitCode> {
    let r = resolve(args)?;
    let run = RunDir::named(&r.runs_dir, &r.name)?;
    let stage = IngestStage::new(r.settings, run.root())
        .with_context(|| format!("preparing the ingest stage of run `{}`", r.name))?;
    let f = &stage.settings().fetch;
    eprintln!(
        "ingest `{}`: {} rows from {} source(s) into {}{}{}",
        r.name,
        stage.inputs().total(),
        stage.settings().sources.len(),
        run.stage(ImagesTable::STAGE).path().display(),
        if f.robots_txt {
            ""
        } else {
            " [robots.txt ignored]"
        },
        if f.x_robots_tag {
            ""
        } else {
            " [X-Robots-Tag ignored]"
        },
    );
    let report = run_stage(&stage, &run, r.selection)
        .with_context(|| format!("running ingest for `{}`", r.name))?;
    if !super::print_shard_report(&report) {
        return Ok(ExitCode::SUCCESS);
    }
    let table_path = run.table::<ImagesTable>();
    let table = ImagesTable::read(&table_path)?;
    println!("{}", table_path.display());
    print!("{}", idforge_ingest::summary::summarize(&table));
    Ok(ExitCode::SUCCESS)
}
