//! `idforge bench`: plan the generations of a protocol, import any method's images, score them
//! and write the leaderboard.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};

use idforge_bench::aggregate::{LeaderboardOptions, build, write_files};
use idforge_bench::baselines::{Baseline, COPY_REFERENCE, copy_reference_method, write_baseline};
use idforge_bench::generations::import;
use idforge_bench::layout::{BenchDir, METHOD_FILE};
use idforge_bench::method::MethodFile;
use idforge_bench::plan::{Job, layout_help, plan, to_table, to_tsv};
use idforge_bench::protocol::Protocol;
use idforge_bench::ratings::{NeitherPolicy, RatingOptions};
use idforge_bench::references::{
    BenchSettings, FaceDetectorSetting, References, copy_references, drop_references,
    find_faceless, references_from_export,
};
use idforge_bench::score::{ReferenceFeatures, ScoringModels, has_face, models_of};
use idforge_core::Name;
use idforge_core::limits::{Amount, Resamples, Threads};
use idforge_core::schema::ScoresTable;
use idforge_models::clip::{ClipCheckpoint, ClipSource};
use idforge_models::dino::DinoEmbedder;
use idforge_models::face_api::Detector;
use idforge_models::face_embedder::FaceEmbedder;
use idforge_models::inception::FidInception;

use super::device::Backend;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Make a bench folder: copy the protocol and the reference images into it.
    ///
    /// References come from a folder laid out as <set>/<identity>/<image> (with an optional
    /// class_words.toml of `identity = "woman"` lines), or from a dataset export: train
    /// identities become `in-train`, validation identities `out-of-train`.
    Init(InitArgs),
    /// Print the generation jobs (identity, reference, prompt, seed, output file) for any
    /// method's own code to fill, and the folder layout `bench import` reads.
    Plan(PlanArgs),
    /// Check a method folder (<method>/<identity>/<prompt_id>/<seed>.png + method.toml)
    /// against the plan and copy it into the bench folder; missing, extra and unreadable images
    /// are listed, never guessed.
    Import(ImportArgs),
    /// Render every job of the plan with idforge's own pipelines (an adapter file, or none:
    /// the text-only baseline) into the method folder layout, then import it. Resumable and
    /// shardable; settings and measured costs go to method.toml.
    Generate(super::bench_generate::GenerateArgs),
    /// Write a calibration baseline as a method folder ready for `bench import`:
    /// `flipped-reference` (the same person mirrored) or `other-identity` (another identity's
    /// reference: the floor of Face-Sim).
    Baseline(BaselineArgs),
    /// Score copy-reference and every imported method (cached per image), then write the
    /// leaderboard (leaderboard.json, LEADERBOARD.md, index.html).
    Score(ScoreArgs),
    /// Rewrite the leaderboard from the scores tables, without running any network.
    Leaderboard(LeaderboardArgs),
}

#[derive(Debug, Args)]
struct InitArgs {
    /// The bench folder to create (e.g. runs/demo/bench).
    bench: PathBuf,
    /// The protocol file (datasets/benchmarks/idforge-v1.toml, demo-v1.toml, or your own).
    #[arg(long)]
    protocol: PathBuf,
    /// A references folder: <set>/<identity>/<image>.
    #[arg(
        long,
        conflicts_with = "from_dataset",
        required_unless_present = "from_dataset"
    )]
    references: Option<PathBuf>,
    /// A dataset export (`idforge dataset export`): its training crops (`image`) become the
    /// references.
    #[arg(long)]
    from_dataset: Option<PathBuf>,
    /// With --from-dataset: keep the first N identities (by name) of each set.
    #[arg(long)]
    identities_per_set: Option<Amount>,
    /// face-api's model folder for the face check (default: the asset cache's).
    #[arg(long)]
    face_api_weights: Option<PathBuf>,
    /// Minimum score of the scoring face detector (face-api's SSD), a bench setting: every
    /// reference must have a face at this score, and `bench score` detects at it.
    #[arg(long, default_value_t = 0.5, value_parser = parse_confidence)]
    face_min_confidence: f32,
    /// Delete (and list) the references in which the detector finds no face, and identities
    /// left without a reference, instead of refusing the bench.
    #[arg(long)]
    drop_faceless_references: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PlanFormat {
    /// An aligned table for reading.
    Table,
    /// Tab-separated values with every prompt part, for scripts.
    Tsv,
    /// A JSON array of jobs.
    Json,
}

#[derive(Debug, Args)]
struct PlanArgs {
    /// The bench folder.
    bench: PathBuf,
    /// The method's trigger word, placed after the class word (e.g. `img` for PhotoMaker).
    #[arg(long)]
    trigger: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = PlanFormat::Table)]
    format: PlanFormat,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// The method folder (with method.toml).
    folder: PathBuf,
    /// The bench folder.
    #[arg(long)]
    bench: PathBuf,
    /// Fail (exit 1, nothing imported) unless every expected image is there and readable.
    #[arg(long)]
    strict: bool,
}

#[derive(Debug, Args)]
struct BaselineArgs {
    /// `flipped-reference` or `other-identity`.
    kind: String,
    /// The bench folder.
    #[arg(long)]
    bench: PathBuf,
    /// The method folder to write.
    #[arg(long, short)]
    output: PathBuf,
}

#[derive(Debug, Args)]
struct ModelArgs {
    /// face-api's model folder (default: the asset cache's, from `make assets`).
    #[arg(long)]
    face_api_weights: Option<PathBuf>,
    /// An ArcFace-class ONNX model (insightface's w600k_r50.onnx, ...) for Face-Sim, instead of
    /// face-api's 128-d descriptor.
    #[arg(long)]
    arcface: Option<PathBuf>,
    /// CLIP weights for CLIP-T, CLIP-I and CMMD: a Hugging Face model folder or .safetensors
    /// file (OpenCLIP layout too). Without it those columns are absent.
    #[arg(long)]
    clip: Option<PathBuf>,
    /// CLIP shape preset when there is no config.json beside the weights (ViT-B-32, ...).
    #[arg(long)]
    clip_model: Option<String>,
    /// A DINO snapshot folder (facebook/dino-vits16 or dinov2-small layout) for the DINO column.
    #[arg(long)]
    dino: Option<PathBuf>,
    /// pytorch-fid's Inception weights (pt_inception-2015-12-05-6726825d.pth) for FID, KID, IS.
    #[arg(long)]
    inception: Option<PathBuf>,
}

/// What a `neither` answer of the arena counts as.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum NeitherArg {
    /// A tie: neither image is better (LMArena's convention for "both bad").
    Tie,
    /// Left out of the ratings.
    Drop,
}

#[derive(Debug, Args)]
struct AggregateArgs {
    /// Bootstrap resamples for the per-image means.
    #[arg(long, default_value = "1000")]
    resamples: Resamples,
    /// Bootstrap resamples for FID, KID, IS and CMMD.
    #[arg(long, default_value = "200")]
    set_resamples: Resamples,
    /// Seed of the resampling (the arena's too).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The arena's votes table (default: <bench>/arena/votes.parquet when it exists, written by
    /// `idforge arena export`); its Bradley–Terry ratings join the leaderboard.
    #[arg(long, value_name = "FILE")]
    votes: Option<PathBuf>,
    /// What the arena's `neither` answers count as.
    #[arg(long, value_enum, default_value_t = NeitherArg::Tie)]
    neither: NeitherArg,
    /// Bootstrap resamples for the arena ratings' intervals (each refits the ratings; 0: none).
    #[arg(long, default_value = "1000", value_name = "N")]
    arena_bootstrap: Resamples,
}

#[derive(Debug, Args)]
struct ScoreArgs {
    /// The bench folder.
    bench: PathBuf,
    /// Score only these imported methods (repeat); copy-reference is always scored.
    #[arg(long = "method", value_parser = parse_method)]
    methods: Vec<String>,
    #[command(flatten)]
    models: ModelArgs,
    #[command(flatten)]
    aggregate: AggregateArgs,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<Threads>,
}

#[derive(Debug, Args)]
struct LeaderboardArgs {
    /// The bench folder.
    bench: PathBuf,
    #[command(flatten)]
    aggregate: AggregateArgs,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        BenchCommand::Init(a) => init(a),
        BenchCommand::Plan(a) => plan_cmd(a),
        BenchCommand::Import(a) => import_cmd(a),
        BenchCommand::Generate(a) => super::bench_generate::run(a),
        BenchCommand::Baseline(a) => baseline(a),
        BenchCommand::Score(a) => score(a),
        BenchCommand::Leaderboard(a) => leaderboard(a),
    }
}

fn init(a: InitArgs) -> anyhow::Result<ExitCode> {
    let protocol = Protocol::load(&a.protocol)?;
    let bench = BenchDir::new(&a.bench);
    if bench.protocol_path().exists() || bench.references_dir().exists() {
        bail!(
            "{} is already a bench folder: use another folder, or delete it to start over",
            bench.root.display()
        );
    }
    // A failed init removes the folder again, so it must be one this command creates.
    if bench.root.exists()
        && std::fs::read_dir(&bench.root)
            .with_context(|| format!("reading {}", bench.root.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} exists and is not empty: give a new folder for the bench",
            bench.root.display()
        );
    }
    std::fs::create_dir_all(&bench.root)
        .with_context(|| format!("creating {}", bench.root.display()))?;
    std::fs::write(bench.protocol_path(), &protocol.text)
        .with_context(|| format!("writing {}", bench.protocol_path().display()))?;
    let outcome = (|| -> anyhow::Result<()> {
        match (&a.references, &a.from_dataset) {
            (Some(folder), _) => {
                let n = copy_references(folder, &bench)?;
                eprintln!("copied {n} reference images from {}", folder.display());
            }
            (None, Some(export)) => {
                let counts = references_from_export(
                    export,
                    &bench,
                    protocol.references_per_identity,
                    a.identities_per_set.map(Amount::usize),
                )?;
                for (set, n) in counts {
                    eprintln!("{set}: {n} identities from {}", export.display());
                }
            }
            (None, None) => unreachable!("clap requires one"),
        }
        check_faces(&bench, &a)?;
        References::scan(&bench, &protocol)?;
        Ok(())
    })();
    if let Err(e) = outcome {
        let _ = std::fs::remove_dir_all(&bench.root);
        return Err(e.context(format!("initialising {}", bench.root.display())));
    }
    let refs = References::scan(&bench, &protocol)?;
    let jobs = plan(&protocol, &refs, None);
    eprintln!(
        "bench `{}` ({} v{}): {} identities, {} images per method; next: idforge bench plan {}",
        bench.root.display(),
        protocol.name,
        protocol.version,
        refs.identities.len(),
        jobs.len(),
        bench.root.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs the scoring detector on every reference: without a face a reference would drop out of
/// Face-Sim but not of No-face %, so the bench is refused, or with --drop-faceless-references
/// those references (and identities left without one) are deleted and listed. Records the
/// detector in the bench settings.
fn check_faces(bench: &BenchDir, a: &InitArgs) -> anyhow::Result<()> {
    let settings = BenchSettings {
        face_detector: FaceDetectorSetting {
            min_confidence: a.face_min_confidence,
            ..FaceDetectorSetting::default()
        },
    };
    let face_dir = super::face_api_models(a.face_api_weights.clone())?;
    let faces =
        FaceEmbedder::<Backend>::load(&face_dir, detector_of(&settings), None, &Default::default())
            .with_context(|| format!("loading the face networks from {}", face_dir.display()))?;
    let faceless = find_faceless(bench, |p| has_face(&faces, p))?;
    if faceless.is_empty() {
        eprintln!(
            "face check: every reference has a face ({})",
            settings.face_detector.label()
        );
    } else if a.drop_faceless_references {
        let emptied = drop_references(bench, &faceless)?;
        for p in &faceless {
            eprintln!(
                "dropped reference {p}: no face at {}",
                settings.face_detector.label()
            );
        }
        for id in &emptied {
            eprintln!("dropped identity {id}: no reference with a face left");
        }
    } else {
        bail!(
            "{} reference(s) have no face that the scoring detector ({}) finds, so they would \
             count in No-face % but not in Face-Sim:\n  {}\nreplace them, or pass \
             --drop-faceless-references to drop them (and identities left without a reference)",
            faceless.len(),
            settings.face_detector.label(),
            faceless.join("\n  ")
        );
    }
    settings.save(bench)?;
    Ok(())
}

/// The face-api detector a bench setting names.
fn detector_of(s: &BenchSettings) -> Detector {
    Detector::SsdMobilenetV1 {
        min_confidence: s.face_detector.min_confidence,
        max_results: 100,
    }
}

fn parse_confidence(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}`: a score in [0, 1], e.g. 0.5")),
    }
}

fn open(bench: &Path) -> anyhow::Result<(BenchDir, Protocol, References)> {
    let bench = BenchDir::new(bench);
    let protocol = bench.protocol()?;
    let refs = References::scan(&bench, &protocol)?;
    Ok((bench, protocol, refs))
}

fn plan_cmd(a: PlanArgs) -> anyhow::Result<ExitCode> {
    let (_, protocol, refs) = open(&a.bench)?;
    let jobs = plan(&protocol, &refs, a.trigger.as_deref());
    let text = match a.format {
        PlanFormat::Table => format!("{}\n{}", to_table(&jobs, 70), layout_help(&protocol, &jobs)),
        PlanFormat::Tsv => to_tsv(&jobs),
        PlanFormat::Json => serde_json::to_string_pretty(&jobs)? + "\n",
    };
    match a.output {
        Some(p) => {
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            eprintln!("{} jobs written to {}", jobs.len(), p.display());
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn import_cmd(a: ImportArgs) -> anyhow::Result<ExitCode> {
    let (bench, protocol, refs) = open(&a.bench)?;
    let jobs = plan(&protocol, &refs, None);
    if a.strict {
        let (_, report, _) = idforge_bench::generations::check_folder(&a.folder, &jobs)?;
        if !report.is_complete() {
            eprint!("{}", report.summary(10));
            eprintln!("--strict: nothing imported");
            return Ok(ExitCode::FAILURE);
        }
    }
    let report = import(&bench, &a.folder, &jobs)
        .with_context(|| format!("importing {}", a.folder.display()))?;
    eprint!("{}", report.summary(10));
    eprintln!(
        "imported into {}; next: idforge bench score {}",
        bench.method_dir(&report.method).display(),
        bench.root.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn baseline(a: BaselineArgs) -> anyhow::Result<ExitCode> {
    let Some(kind) = Baseline::parse(&a.kind) else {
        bail!(
            "unknown baseline `{}`: flipped-reference or other-identity ({COPY_REFERENCE} is \
             built in and always scored)",
            a.kind
        );
    };
    let (bench, protocol, refs) = open(&a.bench)?;
    let jobs = plan(&protocol, &refs, None);
    let n = write_baseline(kind, &bench, &jobs, &a.output)?;
    eprintln!(
        "{n} images of `{}` written to {}; next: idforge bench import {} --bench {}",
        kind.name(),
        a.output.display(),
        a.output.display(),
        bench.root.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn load_models(m: &ModelArgs, detector: Detector) -> anyhow::Result<ScoringModels<Backend>> {
    let device = Default::default();
    let face_dir = super::face_api_models(m.face_api_weights.clone())?;
    let faces = FaceEmbedder::load(&face_dir, detector, m.arcface.as_deref(), &device)
        .with_context(|| format!("loading the face networks from {}", face_dir.display()))?;
    let clip = match &m.clip {
        Some(path) => Some(
            ClipCheckpoint::load(
                &ClipSource {
                    weights: vec![path.clone()],
                    preset: m.clip_model.clone(),
                    ..ClipSource::default()
                },
                &device,
            )
            .with_context(|| format!("loading CLIP from {}", path.display()))?,
        ),
        None => None,
    };
    let dino = match &m.dino {
        Some(dir) => Some((
            DinoEmbedder::from_dir(dir, &device)
                .with_context(|| format!("loading DINO from {}", dir.display()))?,
            file_name(dir),
        )),
        None => None,
    };
    let mut models = ScoringModels {
        faces,
        clip,
        dino,
        inception: None,
    };
    if let Some(path) = &m.inception {
        let net = FidInception::load(path, &device)
            .with_context(|| format!("loading the FID Inception from {}", path.display()))?;
        models = models.with_inception(net, file_name(path));
    }
    Ok(models)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A method name as `--method` takes it: one plain folder name ([`Name`]).
fn parse_method(s: &str) -> Result<String, idforge_core::name::NameError> {
    Name::new(s).map(Name::into_string)
}

fn options(a: &AggregateArgs) -> LeaderboardOptions {
    LeaderboardOptions {
        resamples: a.resamples.usize(),
        set_resamples: a.set_resamples.usize(),
        seed: a.seed,
        votes: a.votes.clone(),
        arena: RatingOptions {
            neither: match a.neither {
                NeitherArg::Tie => NeitherPolicy::Tie,
                NeitherArg::Drop => NeitherPolicy::Drop,
            },
            resamples: a.arena_bootstrap.usize(),
            seed: a.seed,
            ..RatingOptions::default()
        },
        ..LeaderboardOptions::default()
    }
}

fn score(a: ScoreArgs) -> anyhow::Result<ExitCode> {
    if let Some(n) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.usize())
            .build_global()
            .context("setting the thread count")?;
    }
    let (bench, protocol, refs) = open(&a.bench)?;
    let imported = bench.imported_methods()?;
    for m in &a.methods {
        if !imported.contains(m) {
            bail!(
                "no imported method `{m}` in {} (imported: {})",
                bench.generations_dir().display(),
                if imported.is_empty() {
                    "none".into()
                } else {
                    imported.join(", ")
                }
            );
        }
    }
    let settings = BenchSettings::load(&bench)?;
    let models = load_models(&a.models, detector_of(&settings))?;
    let jobs = plan(&protocol, &refs, None);
    let ref_features = ReferenceFeatures::compute(&models, &bench, &jobs, &refs.sha256)?;
    for p in &ref_features.faceless {
        eprintln!("warning: no face detected in reference {p}: its identity gets no Face-Sim");
    }
    let mut todo = vec![COPY_REFERENCE.to_string()];
    todo.extend(
        imported
            .iter()
            .filter(|m| a.methods.is_empty() || a.methods.contains(m))
            .cloned(),
    );
    for method in &todo {
        let table = models
            .score_method(&bench, method, &jobs, &ref_features)
            .with_context(|| format!("scoring `{method}`"))?;
        let ok = table
            .rows
            .iter()
            .filter(|r| r.status == Some(idforge_core::schema::ScoreStatus::Ok))
            .count();
        eprintln!("{method}: {ok} of {} images scored", table.rows.len());
    }
    write_leaderboard(
        &bench,
        &protocol,
        &refs,
        &jobs,
        &options(&a.aggregate),
        Some(models.used()),
    )
}

fn leaderboard(a: LeaderboardArgs) -> anyhow::Result<ExitCode> {
    let (bench, protocol, refs) = open(&a.bench)?;
    let jobs = plan(&protocol, &refs, None);
    write_leaderboard(
        &bench,
        &protocol,
        &refs,
        &jobs,
        &options(&a.aggregate),
        None,
    )
}

fn write_leaderboard(
    bench: &BenchDir,
    protocol: &Protocol,
    refs: &References,
    _jobs: &[Job],
    opts: &LeaderboardOptions,
    used: Option<idforge_bench::leaderboard::ModelsUsed>,
) -> anyhow::Result<ExitCode> {
    let used = match used {
        Some(u) => u,
        None => models_of(bench, COPY_REFERENCE)
            .context("no scores yet: run `idforge bench score` first")?,
    };
    let mut methods = Vec::new();
    let mut names = vec![COPY_REFERENCE.to_string()];
    names.extend(bench.imported_methods()?);
    for name in names {
        let path = bench.scores_path(&name);
        if !path.is_file() {
            eprintln!("note: `{name}` has no scores yet (run `idforge bench score`); left out");
            continue;
        }
        if models_of(bench, &name).ok().as_ref() != Some(&used) {
            eprintln!(
                "note: `{name}` was scored with other networks than copy-reference; left out \
                 (score every method with the same networks: `idforge bench score` without \
                 --method)"
            );
            continue;
        }
        let table = ScoresTable::read(&path)?;
        let entry = if name == COPY_REFERENCE {
            copy_reference_method().entry(true)
        } else {
            MethodFile::load(&bench.method_dir(&name).join(METHOD_FILE))?.entry(false)
        };
        methods.push((entry, table));
    }
    let lb = build(bench, protocol, refs, &methods, &used, opts)?;
    write_files(bench, &lb)?;
    if let Some(arena) = &lb.arena {
        let v = &arena.votes;
        eprintln!(
            "arena: {} of {} votes rated from {} ({} practice, {} neither dropped, {} same-method \
             left out); {}",
            v.rated,
            v.rows,
            arena.source,
            v.practice,
            v.neither_dropped,
            v.same_method,
            arena
                .questions
                .iter()
                .map(|q| format!("{} {} methods", q.question.as_str(), q.methods.len()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    print!("{}", idforge_bench::leaderboard::markdown::render(&lb));
    eprintln!(
        "leaderboard written to {} (index.html, LEADERBOARD.md, leaderboard.json)",
        bench.leaderboard_dir().display()
    );
    Ok(ExitCode::SUCCESS)
}
