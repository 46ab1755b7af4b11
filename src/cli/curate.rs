//! `idforge curate`: arguments mirrored from the recipe's `[curate]` table, resolved into
//! [`CurateSettings`] (recipe first, flags on top), run on the chosen device.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use idforge_core::Name;
use idforge_core::limits::{Amount, Factor, Fraction, Pixels, Shards, Side, Similarity, Threads};
use idforge_core::recipe::Recipe;
use idforge_core::run::{RunDir, ShardSelection, run_stage};
use idforge_core::schema::faces::REPORT_FILE;
use idforge_core::schema::{FacesTable, ImagesTable, TableSpec};
use idforge_curate::settings::{EmbedderKind, IdentityMode};
use idforge_curate::{CurateSettings, CurateStage};

#[derive(Debug, Args)]
#[command(after_long_help = "\
Examples:
  idforge curate --recipe datasets/recipes/demo.toml
  idforge curate --name faces --min-face-px 200 --mode discover
  idforge curate --recipe r.toml --embedder arcface --arcface-onnx w600k_r50.onnx --device cuda
  idforge curate --recipe r.toml --shard 3/8        # one task of a cluster array

Reads runs/<name>/ingest/images.parquet. Filters, in order: resolution (short side), detector
score, face size, identity verification (one face per image, relative k·σ̂ rule, absolute floor,
minimum images per identity), duplicate faces. Writes runs/<name>/curate/faces.parquet (every
image and every face, kept or rejected with a reason and the numbers behind it), the training
crops in crops/, the reference face crops in refs/, and report.html: open it to judge the
thresholds. Interrupt at any time and run the same command again: finished images are not
analysed again.")]
pub struct CurateArgs {
    /// Recipe file (TOML) naming the run and its [curate] settings.
    #[arg(long, short)]
    recipe: Option<PathBuf>,
    /// Run name (folder under --runs-dir); required without a recipe.
    #[arg(long)]
    name: Option<Name>,
    /// Folder holding runs.
    #[arg(long, env = "IDFORGE_RUNS")]
    runs_dir: Option<PathBuf>,
    /// Run only shard INDEX/COUNT (zero-based), e.g. 3/8. Without it, the Slurm array or
    /// Kubernetes indexed-job variables are used if set, else every shard runs here.
    #[arg(long)]
    shard: Option<String>,
    /// Number of shards the images are split into.
    #[arg(long)]
    shards: Option<Shards>,
    /// Images analysed in parallel (0 = one per core, at most 1024).
    #[arg(long)]
    threads: Option<Threads>,
    /// Where the networks run.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Folder with the face-api weights (default: the asset cache).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Smallest short side of an image, in pixels.
    #[arg(long)]
    min_short_side: Option<Side>,
    /// Smallest detector score of a kept face (0 to 1).
    #[arg(long)]
    min_score: Option<Fraction>,
    /// Smallest face box side, in source pixels (width and height; 0 to 65536).
    #[arg(long)]
    min_face_px: Option<Pixels>,
    /// Identity embedder: face-api's descriptor, or an ArcFace ONNX (needs --arcface-onnx).
    #[arg(long, value_enum)]
    embedder: Option<Embedder>,
    /// insightface ArcFace ONNX file (w600k_r50.onnx, glintr100.onnx, ...).
    #[arg(long)]
    arcface_onnx: Option<PathBuf>,
    /// How images are grouped into identities.
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Relative rule: robust standard deviations below the group median (above 0, at most
    /// 1000).
    #[arg(long)]
    k: Option<Factor>,
    /// Absolute floor on a face's mean cosine similarity to its group (-1 to 1).
    #[arg(long)]
    floor: Option<Similarity>,
    /// Fewest images an identity must keep.
    #[arg(long)]
    min_images: Option<Amount>,
    /// Discovery: average-linkage cosine similarity at which clusters merge (-1 to 1).
    #[arg(long)]
    discover_threshold: Option<Similarity>,
    /// Share of the square crop's area covered by the face box (above 0, at most 1).
    #[arg(long)]
    face_share: Option<Fraction>,
    /// Side of the training crops in pixels (512, or 1024 for SDXL-class models).
    #[arg(long)]
    resolution: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Device {
    /// burn's flex CPU backend, one image per core.
    Cpu,
    /// burn's CUDA backend (builds with `--features cuda`).
    Cuda,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Embedder {
    /// face-api's 128-d descriptor: ships with the package.
    FaceApi,
    /// insightface ArcFace (IResNet ONNX), what PhotoMaker uses.
    Arcface,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// Labels where the images have them, discovery for the rest.
    Auto,
    /// Labels only; an unlabeled image is a group of its own.
    Labels,
    /// Ignore labels and cluster every face.
    Discover,
}

struct Resolved {
    name: String,
    runs_dir: PathBuf,
    settings: CurateSettings,
    selection: ShardSelection,
}

fn resolve(args: &CurateArgs) -> anyhow::Result<Resolved> {
    let recipe = args.recipe.as_deref().map(Recipe::load).transpose()?;
    let mut s: CurateSettings = match &recipe {
        Some(r) => r.stage("curate")?,
        None => CurateSettings::default(),
    };
    if let Some(r) = &recipe {
        s.weights = s.weights.map(|p| r.resolve(&p));
        s.embedder.arcface_onnx = s.embedder.arcface_onnx.map(|p| r.resolve(&p));
    }
    let name = match (&args.name, &recipe) {
        (Some(n), _) => n.to_string(),
        (None, Some(r)) => r.name.clone(),
        (None, None) => bail!("give --recipe, or --name of a run that has been ingested"),
    };
    let runs_dir = args
        .runs_dir
        .clone()
        .or_else(|| recipe.as_ref().map(|r| r.runs_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("runs"));
    macro_rules! set {
        ($field:expr, $arg:expr) => {
            if let Some(v) = $arg.clone() {
                $field = v;
            }
        };
    }
    set!(s.shards, args.shards);
    set!(s.threads, args.threads);
    set!(s.resolution.min_short_side, args.min_short_side);
    set!(s.faces.min_score, args.min_score);
    set!(s.faces.min_face_px, args.min_face_px);
    set!(s.identity.k, args.k);
    set!(s.identity.min_images, args.min_images);
    set!(s.crop.face_share, args.face_share);
    set!(s.crop.resolution, args.resolution);
    if args.floor.is_some() {
        s.identity.floor = args.floor;
    }
    if args.discover_threshold.is_some() {
        s.identity.discover_threshold = args.discover_threshold;
    }
    if args.weights.is_some() {
        s.weights = args.weights.clone();
    }
    if args.arcface_onnx.is_some() {
        s.embedder.arcface_onnx = args.arcface_onnx.clone();
    }
    if let Some(e) = args.embedder {
        s.embedder.kind = match e {
            Embedder::FaceApi => EmbedderKind::FaceApi,
            Embedder::Arcface => EmbedderKind::Arcface,
        };
    }
    if let Some(m) = args.mode {
        s.identity.mode = match m {
            Mode::Auto => IdentityMode::Auto,
            Mode::Labels => IdentityMode::Labels,
            Mode::Discover => IdentityMode::Discover,
        };
    }
    let selection = super::shard_selection(args.shard.as_deref(), &mut s.shards)?;
    // Checked here, before the weights are looked for, so a bad value is the error shown.
    s.validate().map_err(anyhow::Error::msg)?;
    Ok(Resolved {
        name,
        runs_dir,
        settings: s,
        selection,
    })
}

pub fn run(args: CurateArgs) -> anyhow::Result<ExitCode> {
    let r = resolve(&args)?;
    match args.device {
        Device::Cpu => run_on::<burn::backend::Flex>(r, &Default::default()),
        #[cfg(feature = "cuda")]
        Device::Cuda => run_on::<burn::backend::Cuda>(r, &Default::default()),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => bail!(
            "--device cuda: this idforge was built without CUDA; rebuild with \
             `cargo build --release --features cuda`"
        ),
    }
}

fn run_on<B: burn::tensor::backend::Backend>(
    r: Resolved,
    device: &B::Device,
) -> anyhow::Result<ExitCode>
where
    idforge_curate::analyze::Analyzer<B>: Sync,
{
    let run = RunDir::named(&r.runs_dir, &r.name)?;
    let models = super::face_api_models(r.settings.weights.clone())?;
    let stage = CurateStage::<B>::new(r.settings, run.root(), &models, device)
        .with_context(|| format!("preparing the curate stage of run `{}`", r.name))?;
    eprintln!(
        "curate `{}`: {} images from {} on {}",
        r.name,
        stage.images().len(),
        run.table::<ImagesTable>().display(),
        B::name(device),
    );
    let report = run_stage(&stage, &run, r.selection)
        .with_context(|| format!("running curate for `{}`", r.name))?;
    if !super::print_shard_report(&report) {
        return Ok(ExitCode::SUCCESS);
    }
    let stats = report.merged.expect("merged when the report says so");
    let path = run.table::<FacesTable>();
    let table = FacesTable::read(&path)?;
    let faces = table.rows.iter().filter(|r| r.face_index.is_some()).count();
    println!("{}", path.display());
    println!(
        "{} images, {} faces detected, {} kept in {} identities",
        stats.rows,
        faces,
        stats.counts.get("kept").copied().unwrap_or(0),
        stats.extra.get("identities_kept").copied().unwrap_or(0.0)
    );
    for reason in idforge_core::schema::Reason::ALL {
        if let Some(n) = stats.counts.get(reason.as_str()) {
            println!("  {:<20} {n}", reason.as_str());
        }
    }
    println!(
        "report: {}",
        run.stage(FacesTable::STAGE)
            .path()
            .join(REPORT_FILE)
            .display()
    );
    Ok(ExitCode::SUCCESS)
}
