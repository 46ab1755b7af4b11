//! `idforge bench generate`: renders every job of a bench's plan with idforge's own pipelines
//! (the methods `generate` runs, through the same [`Method::render`]) into the method folder
//! layout `bench import` reads, then imports it.
//!
//! - Resumable: each image is written to a temporary name and renamed, so a file under its
//!   final name is whole; a rerun renders only the missing ones.
//! - Sharded: `--shard i/N` (or the Slurm / Kubernetes variables, as the stages) renders jobs
//!   `k` with `k mod N = i`; the process that finds the folder complete writes `method.toml` and
//!   imports (one, by an exclusive lock file).
//! - Costs measured: each process records images, seconds and peak memory in `.costs/`;
//!   `method.toml` gets seconds per image (rendering only) and the peak, each with the
//!   hardware under `[cost.measured.*]`; `--train-run` adds the training minutes, training
//!   peak and disk per identity from the `idforge train` run folder.
//! - Refuses early, before any rendering, a render folder or bench that cannot be written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use idforge_bench::generations::import;
use idforge_bench::layout::{BenchDir, METHOD_FILE};
use idforge_bench::method::{CostFile, MeasuredBy, MethodFile};
use idforge_bench::plan::{Job, plan};
use idforge_bench::protocol::Protocol;
use idforge_bench::references::References;
use idforge_core::limits::{Count, Factor};
use idforge_core::progress::Progress;
use idforge_core::run::Shard;
use idforge_diffusion::adapters::photomaker::IdEncoderOptions;
use idforge_diffusion::adapters::split_prompt::{SplitPrompts, SplitScale};
use idforge_diffusion::{Family, SamplerKind};
use idforge_train::costs::RunCost;
use serde::{Deserialize, Serialize};

use idforge_diffusion::methods::{
    AdapterKind, BatchItem, Identity, MAX_REFERENCES, Method, MethodOptions, RenderSettings,
    adapter_kinds,
};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The bench folder (`idforge bench init`).
    bench: PathBuf,
    /// The method's name: its folder under generations/ and its row in the leaderboard
    /// (letters, digits, `-_.`).
    #[arg(long)]
    method: String,
    /// The base model: a diffusers pipeline folder.
    #[arg(long)]
    model: PathBuf,
    /// Adapter files, as `idforge generate --adapter` takes them (IP-Adapter family,
    /// PhotoMaker v1/v2, the split-prompt adapter, or PhotoMaker and split-prompt together);
    /// none: the text-only baseline (the base model with the prompt alone).
    #[arg(long, value_name = "FILE")]
    adapter: Vec<PathBuf>,
    /// An ArcFace ONNX model for the references' faces (FaceID kinds, PhotoMaker v2).
    #[arg(long, value_name = "ONNX")]
    arcface: Option<PathBuf>,
    /// diffusers' `image_encoder/` folder (the IP-Adapter CLIP kinds).
    #[arg(long, value_name = "DIR")]
    image_encoder: Option<PathBuf>,
    /// face-api's model folder (default: the asset cache's).
    #[arg(long, value_name = "DIR")]
    face_api_weights: Option<PathBuf>,
    /// Denoising steps (the seed thesis' validation: 50).
    #[arg(long, default_value = "50")]
    steps: Count<1, 1000>,
    /// Classifier-free guidance scale (the seed thesis' validation: 5).
    #[arg(long, default_value = "5")]
    cfg: Factor,
    /// The identity's start: the first step that sees an IP-Adapter, PhotoMaker's
    /// `start_merge_step` (the seed thesis' validation: 10).
    #[arg(long, default_value = "10")]
    id_start_step: Count<0, 1000>,
    /// The IP-Adapter scale.
    #[arg(long, default_value = "1")]
    adapter_scale: Factor,
    /// The split-prompt adapter's background weight.
    #[arg(long, default_value = "1")]
    bg_scale: Factor,
    /// The split-prompt adapter's body weight.
    #[arg(long, default_value = "1")]
    body_scale: Factor,
    /// FaceID-Plus V2's shortcut.
    #[arg(long)]
    plus_v2: bool,
    /// PhotoMaker's trigger word (placed after the class word in the plan's prompts).
    #[arg(long, default_value = "img")]
    trigger: String,
    /// The negative prompt (default: none; SDXL's zeros, SD's empty prompt).
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Image side in pixels (default: the model's native size).
    #[arg(long)]
    size: Option<Count<8, 16384>>,
    /// Where the method folder is rendered before the import (default:
    /// `<bench>/renders/<method>`).
    #[arg(long)]
    folder: Option<PathBuf>,
    /// The `idforge train` run folder (`runs/<name>/train`) that trained the adapter: its
    /// training minutes (resumed processes summed), training peak memory and the export's disk
    /// go into method.toml, marked measured; the adapter defaults to the run's export.
    #[arg(long, value_name = "DIR")]
    train_run: Option<PathBuf>,
    /// Render shard INDEX/COUNT of the jobs (default: the scheduler's, else all).
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// Jobs denoised together per UNet call (classifier-free guidance doubles the UNet's batch);
    /// the images equal one-at-a-time rendering's. Default 2: the fastest per image on CPU for
    /// the tiny and the SD 1.5-sized UNet (README, "bench generate --batch").
    #[arg(long, default_value = "2")]
    batch: Count<1, 64>,
    /// PhotoMaker ID-encoder head widths for non-published checkpoints (tiny test files).
    #[arg(long, value_name = "V,P", hide = true)]
    id_encoder_heads: Option<String>,
}

/// What one process measured, in `<folder>/.costs/`.
#[derive(Debug, Serialize, Deserialize)]
struct Measured {
    images: usize,
    seconds: f64,
    peak_memory_gib: f64,
    hardware: String,
}

pub fn run(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    idforge_core::name::Name::new(&a.method)
        .map_err(|e| anyhow::anyhow!("--method {:?}: {e}", a.method))?;
    if a.id_start_step.get() > a.steps.get() {
        bail!(
            "--id-start-step {}: at most --steps ({})",
            a.id_start_step,
            a.steps
        );
    }
    let bench = BenchDir::new(&a.bench);
    let protocol: Protocol = bench.protocol()?;
    let refs = References::scan(&bench, &protocol)?;
    let train_run = match &a.train_run {
        Some(dir) => Some(
            idforge_train::costs::run_cost(dir)
                .with_context(|| format!("--train-run {}", dir.display()))?,
        ),
        None => None,
    };
    let adapters = match &train_run {
        Some(run) if a.adapter.is_empty() => vec![run.adapter.clone()],
        _ => a.adapter.clone(),
    };
    let options = MethodOptions {
        adapters,
        arcface: a.arcface.clone(),
        image_encoder: a.image_encoder.clone(),
        face_api_weights: a.face_api_weights.clone(),
        crop: None,
        plus_v2: a.plus_v2,
        pooling: None,
        trigger: Some(a.trigger.clone()),
        id_encoder_heads: parse_heads(a.id_encoder_heads.as_deref())?,
        log: Some(super::log_stderr),
    };
    let kinds = adapter_kinds(&options.adapters)?;
    let photomaker = kinds
        .iter()
        .any(|(_, k)| matches!(k, AdapterKind::PhotoMaker(_)));
    let split = kinds
        .iter()
        .any(|(_, k)| matches!(k, AdapterKind::SplitPrompt));
    let identity = kinds
        .iter()
        .any(|(_, k)| !matches!(k, AdapterKind::SplitPrompt));
    let trigger = photomaker.then_some(a.trigger.as_str());
    let jobs = plan(&protocol, &refs, trigger);
    if jobs.is_empty() {
        bail!(
            "{}: the plan has no jobs (no identities under references/, or no prompts or \
             seeds): run `idforge bench init` with --references or --from-dataset",
            bench.root.display()
        );
    }
    if identity && let Some(j) = jobs.iter().find(|j| j.references.is_empty()) {
        bail!(
            "identity `{}` has no reference images under {}: the identity methods need them",
            j.identity,
            bench.references_dir().display()
        );
    }
    let shard = match &a.shard {
        Some(s) => Shard::parse(s)?,
        None => Shard::from_env()?.unwrap_or(Shard::WHOLE),
    };
    let folder = a
        .folder
        .clone()
        .unwrap_or_else(|| bench.root.join("renders").join(&a.method));
    // Both places written to must take files before anything is rendered: the render folder
    // and the bench's generations/ (the import). Nothing is created by the check.
    check_writable(&folder, "--folder (the render folder)")?;
    check_writable(&bench.generations_dir(), "the bench's generations/ folder")?;
    let todo: Vec<&Job> = jobs
        .iter()
        .enumerate()
        .filter(|(k, _)| k % shard.count == shard.index)
        .map(|(_, j)| j)
        .filter(|j| !folder.join(&j.output).is_file())
        .collect();
    let mine = jobs
        .iter()
        .enumerate()
        .filter(|(k, _)| k % shard.count == shard.index)
        .count();
    eprintln!(
        "{}: {} jobs, shard {}/{}: {mine}, {} to render into {}",
        a.method,
        jobs.len(),
        shard.index,
        shard.count,
        todo.len(),
        folder.display()
    );
    let settings = RenderSettings {
        steps: a.steps.usize(),
        guidance: a.cfg.f32(),
        sampler: SamplerKind::Euler,
        id_start_step: Some(a.id_start_step.usize()),
        adapter_scale: a.adapter_scale.f32(),
        split_scale: SplitScale {
            background: a.bg_scale.f32(),
            body: a.body_scale.f32(),
        },
    };
    let mut family = None;
    if !todo.is_empty() {
        let device = Default::default();
        let method = Method::<super::device::Backend>::load(&a.model, options, &device, identity)?;
        family = Some(method.pipe.family);
        let side = a.size.map_or(method.pipe.default_size(), |s| s.usize());
        method.pipe.check_size(side, side)?;
        let progress = Progress::new(format!("{} images", a.method), todo.len() as u64);
        let started = Instant::now();
        let mut rendered = 0usize;
        let mut loaded: Vec<(String, Identity<super::device::Backend>)> = Vec::new();
        let mut result = Ok(());
        for chunk in todo.chunks(a.batch.usize()) {
            let step = (|| -> anyhow::Result<()> {
                // The chunk's identities, read once each (kept while consecutive chunks use them).
                loaded.retain(|(name, _)| chunk.iter().any(|j| j.identity == *name));
                for job in chunk {
                    if identity && !loaded.iter().any(|(name, _)| *name == job.identity) {
                        let photos: Vec<PathBuf> = job
                            .references
                            .iter()
                            .take(MAX_REFERENCES)
                            .map(|r| bench.root.join(r))
                            .collect();
                        let id = method
                            .identity_from_photos(&photos, None, None, false)
                            .with_context(|| format!("identity `{}`", job.identity))?;
                        loaded.push((job.identity.clone(), id));
                    }
                }
                let none = Identity::None;
                let mut items = Vec::with_capacity(chunk.len());
                for job in chunk {
                    let prompts = if split {
                        SplitPrompts {
                            main: &job.prompt_general,
                            background: &job.prompt_background,
                            body: &job.prompt_body,
                            negative: a.negative_prompt.as_deref(),
                        }
                    } else {
                        SplitPrompts {
                            main: &job.prompt,
                            negative: a.negative_prompt.as_deref(),
                            ..SplitPrompts::default()
                        }
                    };
                    items.push(BatchItem {
                        identity: loaded
                            .iter()
                            .find(|(name, _)| *name == job.identity)
                            .map_or(&none, |(_, id)| id),
                        prompts,
                        noise: method.pipe.seeded_noise(job.seed, (side, side))?,
                    });
                }
                let images = method.render_batch(&items, &settings, &mut |_, _| {})?;
                for (job, img) in chunk.iter().zip(&images) {
                    write_atomically(img, &folder.join(&job.output))?;
                    rendered += 1;
                    progress.inc(1);
                }
                Ok(())
            })();
            if let Err(e) = step {
                let names: Vec<&str> = chunk.iter().map(|j| j.output.as_str()).collect();
                result = Err(e.context(format!("job {}", names.join(", "))));
                break;
            }
        }
        progress.finish();
        if rendered > 0 {
            record_cost(&folder, shard, rendered, started.elapsed().as_secs_f64())?;
        }
        result?;
    }
    let missing = jobs
        .iter()
        .filter(|j| !folder.join(&j.output).is_file())
        .count();
    if missing > 0 {
        eprintln!(
            "{} of {} images rendered in {}; the other shards render the rest (the last one \
             imports)",
            jobs.len() - missing,
            jobs.len(),
            folder.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    // Exactly one process imports: the one that creates the lock.
    let lock = folder.join(".import.lock");
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&lock)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!("another process imports {}", folder.display());
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e).with_context(|| format!("creating {}", lock.display())),
    }
    let outcome = (|| -> anyhow::Result<()> {
        let method_file = method_file(&a, &kinds, family, trigger, &folder, train_run.as_ref())?;
        std::fs::write(folder.join(METHOD_FILE), method_file.to_toml())
            .with_context(|| format!("writing {}", folder.join(METHOD_FILE).display()))?;
        let import_jobs = plan(&protocol, &refs, None);
        let report = import(&bench, &folder, &import_jobs)
            .with_context(|| format!("importing {}", folder.display()))?;
        eprint!("{}", report.summary(10));
        eprintln!(
            "imported into {}; next: idforge bench score {}",
            bench.method_dir(&report.method).display(),
            bench.root.display()
        );
        Ok(())
    })();
    let _ = std::fs::remove_file(&lock);
    outcome?;
    Ok(ExitCode::SUCCESS)
}

/// Refuses `dir` when it could not be created or written: its nearest existing ancestor must
/// be a folder that takes a new file (tried with a probe that is removed at once; root ignores
/// permission bits, so a probe is what tells).
fn check_writable(dir: &Path, what: &str) -> anyhow::Result<()> {
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p,
            _ => {
                existing = Path::new(".");
                break;
            }
        }
    }
    if !existing.is_dir() {
        bail!(
            "{what} {}: cannot be created, {} is a file, not a folder; choose another place",
            dir.display(),
            existing.display()
        );
    }
    let probe = existing.join(format!(".idforge-write-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => bail!(
            "{what} {}: cannot write in {} ({e}); choose a writable place or fix its permissions",
            dir.display(),
            existing.display()
        ),
    }
}

fn parse_heads(s: Option<&str>) -> anyhow::Result<Option<IdEncoderOptions>> {
    let Some(s) = s else { return Ok(None) };
    let parsed: Option<Vec<usize>> = s.split(',').map(|v| v.trim().parse().ok()).collect();
    match parsed.as_deref() {
        Some(&[vision, perceiver]) if vision > 0 && perceiver > 0 => Ok(Some(IdEncoderOptions {
            vision_head_dim: vision,
            perceiver_head_dim: perceiver,
        })),
        _ => bail!("--id-encoder-heads {s:?}: give two head widths, VISION,PERCEIVER"),
    }
}

/// Writes `img` as PNG under a temporary name beside `path`, then renames it: a file under
/// the final name is always whole.
fn write_atomically(img: &image::RgbImage, path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().context("an output path has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().map_or("x".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Appends this process's measurement to `<folder>/.costs/`.
fn record_cost(folder: &Path, shard: Shard, images: usize, seconds: f64) -> anyhow::Result<()> {
    let m = Measured {
        images,
        seconds,
        peak_memory_gib: idforge_core::bench::peak_rss_gib().unwrap_or(0.0),
        hardware: super::device::machine(),
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = folder.join(".costs");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!(
        "{}-of-{}.{}.{stamp}.json",
        shard.index,
        shard.count,
        std::process::id()
    ));
    std::fs::write(&path, serde_json::to_string(&m)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// `method.toml` for the rendered folder: the settings and the measured costs.
fn method_file(
    a: &GenerateArgs,
    kinds: &[(PathBuf, AdapterKind)],
    family: Option<Family>,
    trigger: Option<&str>,
    folder: &Path,
    train_run: Option<&RunCost>,
) -> anyhow::Result<MethodFile> {
    let mut settings: BTreeMap<String, toml::Value> = BTreeMap::new();
    let mut set = |k: &str, v: toml::Value| {
        settings.insert(k.to_string(), v);
    };
    set("generator", "idforge bench generate".into());
    set(
        "adapter",
        if kinds.is_empty() {
            "none (text only)".to_string()
        } else {
            kinds
                .iter()
                .map(|(p, k)| format!("{} ({})", file_name(p), k.name()))
                .collect::<Vec<_>>()
                .join(" + ")
        }
        .into(),
    );
    set("steps", (a.steps.get() as i64).into());
    set("cfg", f64::from(a.cfg.f32()).into());
    set("sampler", "euler".into());
    if !kinds.is_empty() {
        set("id_start_step", (a.id_start_step.get() as i64).into());
    }
    if kinds
        .iter()
        .any(|(_, k)| matches!(k, AdapterKind::IpAdapter(_)))
    {
        set("adapter_scale", f64::from(a.adapter_scale.f32()).into());
    }
    if kinds
        .iter()
        .any(|(_, k)| matches!(k, AdapterKind::SplitPrompt))
    {
        set("bg_scale", f64::from(a.bg_scale.f32()).into());
        set("body_scale", f64::from(a.body_scale.f32()).into());
    }
    if let Some(n) = &a.negative_prompt {
        set("negative_prompt", n.clone().into());
    }
    if let Some(s) = a.size {
        set("size", (s.get() as i64).into());
    }
    let mut images = 0usize;
    let mut seconds = 0f64;
    let mut peak = 0f64;
    let mut hardware = None;
    let costs = folder.join(".costs");
    if let Ok(entries) = std::fs::read_dir(&costs) {
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path())
                .with_context(|| format!("reading {}", e.path().display()))?;
            let m: Measured = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a cost record", e.path().display()))?;
            images += m.images;
            seconds += m.seconds;
            peak = peak.max(m.peak_memory_gib);
            hardware.get_or_insert(m.hardware);
        }
    }
    let model = file_name(&a.model);
    let mut cost = CostFile::default();
    let by = |hardware: &str, note: String| MeasuredBy {
        by: "idforge bench generate".into(),
        hardware: hardware.to_string(),
        note: Some(note),
    };
    if let Some(h) = &hardware {
        if images > 0 {
            cost.seconds_per_image = Some(round3(seconds / images as f64));
            cost.measured.insert(
                "seconds_per_image".into(),
                by(h, format!("rendering only, {images} images")),
            );
        }
        if peak > 0.0 {
            cost.peak_memory_gib = Some(round3(peak));
            cost.measured.insert(
                "peak_memory_gib".into(),
                by(h, "peak resident memory of the rendering processes".into()),
            );
        }
    }
    if let Some(run) = train_run {
        let train_by = |note: String| MeasuredBy {
            by: "idforge train".into(),
            hardware: run
                .hardware
                .clone()
                .unwrap_or_else(|| "not recorded".into()),
            note: Some(note),
        };
        let what = run.method.as_deref().unwrap_or("adapter");
        cost.training_minutes = Some(round3(run.minutes));
        cost.measured.insert(
            "training_minutes".into(),
            train_by(format!(
                "one-off training of the general {what} adapter: {} steps, {} process{} summed, \
                 run {}",
                run.steps,
                run.processes,
                if run.processes == 1 { "" } else { "es" },
                run.folder.display()
            )),
        );
        if let Some(p) = run.peak_memory_gib {
            cost.training_peak_memory_gib = Some(round3(p));
            cost.measured.insert(
                "training_peak_memory_gib".into(),
                train_by("peak resident memory of the training processes".into()),
            );
        }
        // Every method `idforge train` trains is a general adapter: one file serves every
        // identity, nothing is stored per identity.
        let mib = run.adapter_bytes as f64 / (1024.0 * 1024.0);
        cost.disk_per_identity_mib = Some(0.0);
        cost.measured.insert(
            "disk_per_identity_mib".into(),
            train_by(format!(
                "general adapter: nothing per identity; its one file {} is {mib:.3} MiB",
                file_name(&run.adapter)
            )),
        );
    }
    Ok(MethodFile {
        name: a.method.clone(),
        base_model: Some(match family {
            Some(f) => format!("{model} ({f:?})"),
            None => model,
        }),
        link: None,
        trigger: trigger.map(str::to_string),
        settings,
        cost,
    })
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
