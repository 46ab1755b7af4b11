//! `idforge caption`: arguments mirrored from the recipe's `[caption]` table, resolved into
//! [`CaptionSettings`] (recipe first, flags on top), run on the chosen device.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use idforge_caption::CaptionSettings;
use idforge_caption::attributes::AttributesCaptioner;
use idforge_caption::captioner::SchemaMode;
use idforge_caption::engine::{Engine, EngineInputs};
use idforge_caption::settings::{CallMode, CaptionerKind, SplitterKind};
use idforge_caption::stage::{CaptionStage, OfflineCaptioner};
use idforge_core::Name;
use idforge_core::limits::{Concurrency, Retries, Seconds, Shards, Threads};
use idforge_core::recipe::Recipe;
use idforge_core::run::{RunDir, ShardSelection};
use idforge_core::schema::{CaptionStatus, CaptionsTable};

use super::curate::Device;

#[derive(Debug, Args)]
#[command(after_long_help = "\
Examples:
  idforge caption --recipe datasets/recipes/demo.toml             # offline, face attributes
  idforge caption --name faces --captioner openai --base-url http://127.0.0.1:8000/v1 \\
      --model Qwen/Qwen2.5-VL-7B-Instruct --concurrency 16
  idforge caption --name faces --captioner openai --mode two-call --splitter llm \\
      --model llava:13b --split-model qwen2.5:7b --base-url http://127.0.0.1:11434/v1
  idforge caption --name faces --captioner import --import-file captions.csv
  idforge caption --name faces --retry-failed                     # ask again for failures

Reads the kept faces of runs/<name>/curate/faces.parquet and writes
runs/<name>/caption/captions.parquet: per face `general` (the person, with the trigger after the
class word: \"a man img ...\"), `background`, `body`, the whole caption, the raw replies, tokens
and latency. Captioners: `openai` (any OpenAI-compatible server that takes images: vLLM, SGLang,
llama.cpp's server, Ollama, hosted APIs; the API key is read from the variable named by
--api-key-env), `attributes` (offline: face-api age, gender, expression, head direction and
framing; background and body are left null), `import` (the ingest `caption` column, or a CSV /
JSONL file with `caption` and one of `crop_path`, `image_id`, `source`). Captions are cached by
(image hash, captioner, model, prompt version): re-running pays for nothing already captioned;
changed settings start the stage over using the cache; a new prompt version asks again.")]
pub struct CaptionArgs {
    /// Recipe file (TOML) naming the run and its [caption] settings.
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
    /// Number of shards the faces are split into.
    #[arg(long)]
    shards: Option<Shards>,
    /// Faces captioned in parallel by an offline captioner (0 = one per core, at most 1024).
    #[arg(long)]
    threads: Option<Threads>,
    /// Where the attributes captioner's networks run.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Who writes the captions.
    #[arg(long, value_enum)]
    captioner: Option<Captioner>,
    /// How a whole caption is split (two-call mode and import).
    #[arg(long, value_enum)]
    splitter: Option<Splitter>,
    /// one-call: the VLM answers the three parts as JSON; two-call: it captions, then the
    /// splitter divides the caption.
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1.
    #[arg(long)]
    base_url: Option<String>,
    /// Model name as the server knows it.
    #[arg(long)]
    model: Option<String>,
    /// Environment variable holding the API key.
    #[arg(long)]
    api_key_env: Option<String>,
    /// Structured output: JSON schema (falling back to instructions if refused), always the
    /// schema, or instructions only.
    #[arg(long, value_enum)]
    schema: Option<Schema>,
    /// Prompt file of the captioning call (default: the shipped one-call-v1 / caption-v1).
    #[arg(long)]
    prompt: Option<PathBuf>,
    /// Prompt file of the llm splitter (default: the shipped split-v1).
    #[arg(long)]
    split_prompt: Option<PathBuf>,
    /// Model of the llm splitter (default: --model).
    #[arg(long)]
    split_model: Option<String>,
    /// Requests in flight at once (1 to 4096).
    #[arg(long)]
    concurrency: Option<Concurrency>,
    /// Per-request timeout, seconds (above 0, at most 86400).
    #[arg(long)]
    timeout: Option<Seconds>,
    /// Retries of 429 / 5xx / timeouts per request (0 to 100).
    #[arg(long)]
    max_retries: Option<Retries>,
    /// CSV / JSONL of captions for --captioner import (default: the ingest caption column).
    #[arg(long)]
    import_file: Option<PathBuf>,
    /// Token placed after the class word.
    #[arg(long)]
    trigger: Option<String>,
    /// `auto` (each identity's most frequent class word) or a fixed word.
    #[arg(long)]
    class_word: Option<String>,
    /// Ask again for the captions that failed last time.
    #[arg(long)]
    retry_failed: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Captioner {
    /// An OpenAI-compatible chat-completions server that takes images.
    Openai,
    /// Offline: face-api age, gender, expression; head direction; framing.
    Attributes,
    /// Captions that came with the data.
    Import,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Splitter {
    /// Offline clause classifier.
    Rules,
    /// A text model over the same API.
    Llm,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// One request per face, JSON parts.
    OneCall,
    /// Caption, then split.
    TwoCall,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
#[allow(clippy::enum_variant_names)] // `json-schema` is the API's own name
enum Schema {
    /// JSON schema, instructions if the server refuses it.
    Auto,
    /// Always the JSON schema.
    JsonSchema,
    /// Instructions plus validation only.
    Instructions,
}

struct Resolved {
    name: String,
    runs_dir: PathBuf,
    base_dir: PathBuf,
    settings: CaptionSettings,
    selection: ShardSelection,
}

fn resolve(args: &CaptionArgs) -> anyhow::Result<Resolved> {
    let recipe = args.recipe.as_deref().map(Recipe::load).transpose()?;
    let mut s: CaptionSettings = match &recipe {
        Some(r) => r.stage("caption")?,
        None => CaptionSettings::default(),
    };
    let name = match (&args.name, &recipe) {
        (Some(n), _) => n.to_string(),
        (None, Some(r)) => r.name.clone(),
        (None, None) => bail!("give --recipe, or --name of a run that has been curated"),
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
    set!(s.openai.base_url, args.base_url);
    set!(s.openai.model, args.model);
    set!(s.openai.api_key_env, args.api_key_env);
    set!(s.openai.split_model, args.split_model);
    set!(s.openai.concurrency, args.concurrency);
    set!(s.openai.timeout_s, args.timeout);
    set!(s.openai.max_retries, args.max_retries);
    set!(s.trigger, args.trigger);
    set!(s.class_word, args.class_word);
    // Flag paths are relative to the working directory; recipe paths to the recipe's folder.
    let cwd = std::env::current_dir()?;
    let absolute = |p: &PathBuf| cwd.join(p);
    if let Some(p) = &args.prompt {
        s.openai.prompt = Some(absolute(p));
    }
    if let Some(p) = &args.split_prompt {
        s.openai.split_prompt = Some(absolute(p));
    }
    if let Some(p) = &args.import_file {
        s.import.file = Some(absolute(p));
    }
    if let Some(c) = args.captioner {
        s.captioner = match c {
            Captioner::Openai => CaptionerKind::Openai,
            Captioner::Attributes => CaptionerKind::Attributes,
            Captioner::Import => CaptionerKind::Import,
        };
    }
    if let Some(sp) = args.splitter {
        s.splitter = match sp {
            Splitter::Rules => SplitterKind::Rules,
            Splitter::Llm => SplitterKind::Llm,
        };
    }
    if let Some(m) = args.mode {
        s.openai.mode = match m {
            Mode::OneCall => CallMode::OneCall,
            Mode::TwoCall => CallMode::TwoCall,
        };
    }
    if let Some(m) = args.schema {
        s.openai.schema = match m {
            Schema::Auto => SchemaMode::Auto,
            Schema::JsonSchema => SchemaMode::JsonSchema,
            Schema::Instructions => SchemaMode::Instructions,
        };
    }
    let selection = super::shard_selection(args.shard.as_deref(), &mut s.shards)?;
    // Checked here, before any model or server is set up, so a bad value is the error shown.
    s.validate().map_err(anyhow::Error::msg)?;
    Ok(Resolved {
        name,
        runs_dir,
        base_dir: recipe.map(|r| r.base_dir()).unwrap_or_default(),
        settings: s,
        selection,
    })
}

pub fn run(args: CaptionArgs) -> anyhow::Result<ExitCode> {
    let r = resolve(&args)?;
    let retry = args.retry_failed;
    match args.device {
        Device::Cpu => run_on::<burn::backend::Flex>(r, Default::default(), retry),
        #[cfg(feature = "cuda")]
        Device::Cuda => run_on::<burn::backend::Cuda>(r, Default::default(), retry),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => bail!(
            "--device cuda: this idforge was built without CUDA; rebuild with \
             `cargo build --release --features cuda`"
        ),
    }
}

fn run_on<B: burn::tensor::backend::Backend>(
    r: Resolved,
    device: B::Device,
    retry_failed: bool,
) -> anyhow::Result<ExitCode>
where
    AttributesCaptioner<B>: OfflineCaptioner + 'static,
{
    let run = RunDir::named(&r.runs_dir, &r.name)?;
    let base = r.base_dir.clone();
    let resolve = move |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let api_key = std::env::var(&r.settings.openai.api_key_env)
        .ok()
        .filter(|k| !k.is_empty());
    let engine = Engine::from_settings::<B>(
        &r.settings,
        EngineInputs {
            resolve: &resolve,
            face_api_models: idforge_core::cache::face_api_dir_if_fetched()
                .map(|d| d.join("model")),
            api_key,
            device,
        },
    )
    .context("setting up the captioner")?;
    let stage = CaptionStage::new(r.settings, run.root(), engine)
        .with_context(|| format!("preparing the caption stage of run `{}`", r.name))?;
    let (captioner, model, version, splitter) = stage.identity();
    eprintln!(
        "caption `{}`: {} kept faces, captioner {captioner} ({model}, {version}), splitter {splitter}",
        r.name,
        stage.items().len()
    );
    let (report, note) = stage
        .run(&run, r.selection, retry_failed)
        .with_context(|| format!("running caption for `{}`", r.name))?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    if !super::print_shard_report(&report) {
        return Ok(ExitCode::SUCCESS);
    }
    let stats = report.merged.expect("merged when the report says so");
    let path = run.table::<CaptionsTable>();
    let table = CaptionsTable::read(&path)?;
    println!("{}", path.display());
    let get = |k: &str| stats.extra.get(k).copied().unwrap_or(0.0);
    println!(
        "{} faces: {} captioned, {} failed",
        stats.rows,
        stats.counts.get("ok").copied().unwrap_or(0),
        stats.counts.get("failed").copied().unwrap_or(0),
    );
    if get("requests") + get("cached") > 0.0 {
        println!(
            "{} from the cache, {} requests, {} prompt + {} completion tokens{}",
            get("cached"),
            get("requests"),
            get("prompt_tokens"),
            get("completion_tokens"),
            match (
                stats.extra.get("latency_p50_ms"),
                stats.extra.get("latency_p95_ms")
            ) {
                (Some(a), Some(b)) => format!(", latency p50 {a} ms, p95 {b} ms"),
                _ => String::new(),
            }
        );
    }
    let failed: Vec<_> = table
        .rows
        .iter()
        .filter(|r| r.status == CaptionStatus::Failed)
        .collect();
    for f in failed.iter().take(5) {
        println!(
            "  failed {}: {}",
            f.crop_path,
            f.error.as_deref().unwrap_or("")
        );
    }
    if failed.len() > 5 {
        println!(
            "  … {} more failures (see the `error` and `raw` columns)",
            failed.len() - 5
        );
    }
    if let Some(example) = table.rows.iter().find(|r| r.status == CaptionStatus::Ok) {
        println!("example ({}):", example.crop_path);
        println!("  general:    {}", example.general.as_deref().unwrap_or(""));
        println!(
            "  background: {}",
            example.background.as_deref().unwrap_or("(not described)")
        );
        println!(
            "  body:       {}",
            example.body.as_deref().unwrap_or("(not described)")
        );
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
