//! The caption stage: the kept faces of the `faces` table, sharded; per shard, each crop is
//! captioned (from the cache when it can be) and split; once every shard is done, the class word
//! of each identity is chosen and the trigger placed, and `captions.parquet` is written.
//!
//! Files under `runs/<name>/caption/`:
//! - `settings.json`: what the captions depend on (inputs, captioner, model, prompt versions,
//!   splitter, trigger). A re-run with other settings starts the stage over — keeping `cache/`,
//!   so only what the new settings change is asked for again;
//! - `cache/<shard>.jsonl`: every caption and `llm` split a server was paid for (see [`crate::cache`]);
//! - `shards/<shard>.captions.parquet`: the shard's rows before class words and triggers;
//! - `captions.parquet`, `stats.json`: the merged outputs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use idforge_core::hash::sha256_hex;
use idforge_core::progress::Progress;
use idforge_core::run::{
    RunDir, ShardSelection, StageDir, StageReport, read_json, run_stage, write_json,
};
use idforge_core::schema::faces::{FacesTable, Verdict};
use idforge_core::schema::{
    CaptionRow, CaptionStatus, CaptionsTable, ImageRow, ImagesTable, RunTable, TableInfo, TableSpec,
};
use idforge_core::{Shard, Stage, StageStats};

use crate::cache::{Cache, caption_key, split_key};
use crate::captioner::{Failure, OpenAiCaptioner, Outcome, Parts};
use crate::class_word::{find_class_word, insert_trigger, most_frequent_class_word};
use crate::engine::{Engine, Splitter};
use crate::error::CaptionError;
use crate::rules;
use crate::settings::CaptionSettings;

/// Folder of the cache inside the stage folder (survives a settings change).
pub const CACHE_DIR: &str = "cache";
/// Class word of an identity none of whose captions names one.
pub const FALLBACK_CLASS_WORD: &str = "person";

/// One kept face to caption, with what the captioners may need of its image.
#[derive(Debug, Clone)]
pub struct Item {
    /// `images.row_id`.
    pub row_id: u64,
    /// sha256 of the source image.
    pub image_id: String,
    /// `faces.face_index`.
    pub face_index: u32,
    /// Identity label.
    pub identity: Option<String>,
    /// Verification group.
    pub group: Option<String>,
    /// The training crop, run-relative.
    pub crop_path: String,
    /// The source image in the store, absolute.
    pub source_path: Option<PathBuf>,
    /// The source row's URL or path (import files may key on it).
    pub source: String,
    /// The caption that came with the source row.
    pub source_caption: Option<String>,
    /// Face box in source pixels.
    pub bbox: Option<[f32; 4]>,
    /// 68 landmarks in source pixels, `x, y` interleaved.
    pub landmarks: Option<Vec<f32>>,
    /// Source image size (after EXIF orientation).
    pub image_size: Option<(u32, u32)>,
}

impl Item {
    /// The group class words are chosen in: the verification group, else the label, else the
    /// image itself.
    pub fn class_group(&self) -> String {
        self.group
            .clone()
            .or_else(|| self.identity.clone())
            .unwrap_or_else(|| self.image_id.clone())
    }
}

/// A captioner that needs no server (it runs on the stage's thread pool).
pub trait OfflineCaptioner: Send + Sync {
    /// `captioner` column.
    fn name(&self) -> &str;
    /// `model` column.
    fn model(&self) -> String;
    /// `prompt_version` column: the version of the template or import.
    fn version(&self) -> String;
    /// Captions one item; `crop` holds the crop's bytes.
    fn caption(&self, item: &Item, crop: &[u8]) -> Result<Outcome, Failure>;
}

/// What the captions depend on; another value starts the stage over (cache kept).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Fingerprint {
    faces: usize,
    faces_sha256: String,
    captioner: String,
    model: String,
    prompt_version: String,
    splitter: String,
    trigger: String,
    class_word: String,
}

/// The caption stage, ready to run: tables read, captioner built.
pub struct CaptionStage {
    settings: CaptionSettings,
    run: RunDir,
    items: Vec<Item>,
    engine: Engine,
    pool: rayon::ThreadPool,
}

impl CaptionStage {
    /// Reads the kept faces of the run's `faces` table (and their `images` rows, when that
    /// table is there).
    pub fn new(
        settings: CaptionSettings,
        run_root: &Path,
        engine: Engine,
    ) -> Result<Self, CaptionError> {
        settings.validate().map_err(CaptionError::Settings)?;
        let run = RunDir::at(run_root);
        let items = load_items(&run)?;
        let threads = idforge_core::limits::threads_or_cores(settings.threads);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("caption-{i}"))
            .build()
            .map_err(|e| CaptionError::Settings(e.to_string()))?;
        Ok(CaptionStage {
            settings,
            run,
            items,
            engine,
            pool,
        })
    }

    /// The kept faces this stage captions.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// (captioner, model, prompt version, splitter) as stored in every row.
    pub fn identity(&self) -> (String, String, String, String) {
        match &self.engine {
            Engine::Server {
                captioner,
                splitter,
            } => (
                "openai".into(),
                captioner.model().to_string(),
                captioner.prompt().version.clone(),
                if captioner.answers_in_parts() {
                    "json".into()
                } else {
                    splitter.name()
                },
            ),
            Engine::Offline {
                captioner,
                splitter,
            } => (
                captioner.name().to_string(),
                captioner.model(),
                captioner.version(),
                if captioner.name() == "attributes" {
                    "none".into()
                } else {
                    splitter.name()
                },
            ),
        }
    }

    /// Runs the selected shards and merges, first starting over (cache kept) if the settings
    /// changed since the stage was last run, or if `retry_failed` and the last run left failures.
    /// Returns the report and, when it started over, why.
    pub fn run(
        &self,
        run: &RunDir,
        selection: ShardSelection,
        retry_failed: bool,
    ) -> Result<(StageReport, Option<String>), CaptionError> {
        let note = self.prepare(&run.stage(self.name()), retry_failed)?;
        Ok((run_stage(self, run, selection)?, note))
    }

    fn fingerprint(&self) -> Fingerprint {
        let mut text = String::new();
        for it in &self.items {
            text.push_str(&format!(
                "{}#{}\t{}\n",
                it.image_id, it.face_index, it.crop_path
            ));
        }
        let (captioner, model, prompt_version, splitter) = self.identity();
        Fingerprint {
            faces: self.items.len(),
            faces_sha256: sha256_hex(text.as_bytes()),
            captioner,
            model,
            prompt_version,
            splitter,
            trigger: self.settings.trigger.clone(),
            class_word: self.settings.class_word.clone(),
        }
    }

    fn prepare(&self, dir: &StageDir, retry_failed: bool) -> Result<Option<String>, CaptionError> {
        let path = dir.path().join("settings.json");
        let now = self.fingerprint();
        let mut note = None;
        if path.is_file() {
            let then: Fingerprint = read_json(&path)?;
            if then != now {
                note = Some(describe_change(&then, &now));
            } else if retry_failed && dir.is_final() {
                let table = CaptionsTable::read(&dir.table::<CaptionsTable>())?;
                let failed = table
                    .rows
                    .iter()
                    .filter(|r| r.status == CaptionStatus::Failed)
                    .count();
                if failed > 0 {
                    note = Some(format!("retrying {failed} failed caption(s)"));
                }
            }
            if note.is_some() {
                dir.reset_keeping(&[CACHE_DIR])?;
            }
        }
        write_json(&path, &now)?;
        Ok(note)
    }

    fn base_row(&self, item: &Item, input_sha256: String) -> CaptionRow {
        let (captioner, model, prompt_version, splitter) = self.identity();
        CaptionRow {
            row_id: item.row_id,
            image_id: item.image_id.clone(),
            face_index: item.face_index,
            identity: item.identity.clone(),
            group: item.group.clone(),
            crop_path: item.crop_path.clone(),
            input_sha256,
            captioner,
            model,
            prompt_version,
            splitter,
            status: CaptionStatus::Failed,
            error: None,
            caption: None,
            general: None,
            general_raw: None,
            background: None,
            body: None,
            class_word: None,
            trigger: None,
            raw: None,
            attempts: 0,
            cached: false,
            latency_ms: None,
            prompt_tokens: None,
            completion_tokens: None,
        }
    }

    /// Fills a row from an outcome (success) or a failure.
    fn finish_row(
        &self,
        mut row: CaptionRow,
        result: Result<(Outcome, bool), Failure>,
    ) -> CaptionRow {
        match result {
            Ok((out, cached)) => {
                row.cached = cached;
                row.attempts = out.attempts;
                row.latency_ms = (out.attempts > 0).then_some(out.latency_ms);
                row.prompt_tokens = out.prompt_tokens;
                row.completion_tokens = out.completion_tokens;
                row.raw = (!out.raw.is_empty()).then(|| serde_json::to_string(&out.raw).unwrap());
                row.caption = out.caption;
                match out.parts {
                    Some(p) => {
                        row.status = CaptionStatus::Ok;
                        row.general_raw = Some(p.general);
                        row.background = p.background;
                        row.body = p.body;
                    }
                    None => {
                        row.error = Some("the captioner returned no parts".into());
                    }
                }
            }
            Err(f) => {
                row.error = Some(f.error);
                row.attempts = f.attempts;
                row.raw = (!f.raw.is_empty()).then(|| serde_json::to_string(&f.raw).unwrap());
            }
        }
        row
    }

    fn read_crop(&self, item: &Item) -> Result<(Vec<u8>, String), Failure> {
        let path = self.run.resolve(&item.crop_path);
        let bytes = std::fs::read(&path).map_err(|e| Failure {
            error: format!(
                "cannot read the crop {}: {e} (re-run `idforge curate` for this run)",
                path.display()
            ),
            raw: vec![],
            attempts: 0,
        })?;
        let sha = sha256_hex(&bytes);
        Ok((bytes, sha))
    }

    /// Splits a whole caption with the rules (local) or the `llm` splitter (cached).
    async fn split(
        &self,
        splitter: &Splitter,
        cache: &Cache,
        mut out: Outcome,
    ) -> Result<Outcome, Failure> {
        let Some(caption) = out.caption.clone().filter(|_| out.parts.is_none()) else {
            return Ok(out);
        };
        match splitter {
            Splitter::Rules => {
                let s = rules::split(&caption);
                out.parts = Some(Parts {
                    general: s.general,
                    background: Some(s.background),
                    body: Some(s.body),
                });
                if out.parts.as_ref().is_some_and(|p| p.general.is_empty()) {
                    return Err(Failure {
                        error: "the rules splitter found no general part in the caption".into(),
                        raw: out.raw,
                        attempts: out.attempts,
                    });
                }
                Ok(out)
            }
            Splitter::Llm(llm) => {
                let key = split_key(&caption, llm.model(), llm.version());
                let split = match cache.get(&key) {
                    Some(s) => s,
                    None => {
                        let s = llm.split(&caption).await.map_err(|f| Failure {
                            error: format!("splitting: {}", f.error),
                            raw: out.raw.iter().cloned().chain(f.raw).collect(),
                            attempts: out.attempts + f.attempts,
                        })?;
                        cache.put(&key, &s).map_err(|e| Failure {
                            error: e.to_string(),
                            raw: vec![],
                            attempts: 0,
                        })?;
                        s
                    }
                };
                out.absorb_costs(&split);
                out.parts = split.parts;
                Ok(out)
            }
        }
    }

    async fn caption_with_server(
        &self,
        item: &Item,
        captioner: &OpenAiCaptioner,
        splitter: &Splitter,
        cache: &Cache,
    ) -> CaptionRow {
        let (bytes, sha) = match self.read_crop(item) {
            Ok(x) => x,
            Err(f) => return self.finish_row(self.base_row(item, String::new()), Err(f)),
        };
        let row = self.base_row(item, sha.clone());
        let key = caption_key(
            &sha,
            "openai",
            captioner.model(),
            &captioner.prompt().version,
        );
        let (out, cached) = match cache.get(&key) {
            Some(out) => (out, true),
            None => {
                let mime = image::guess_format(&bytes)
                    .map(|f| f.to_mime_type())
                    .unwrap_or("image/jpeg");
                match captioner.caption(mime, &bytes).await {
                    Ok(out) => {
                        if let Err(e) = cache.put(&key, &out) {
                            return self.finish_row(
                                row,
                                Err(Failure {
                                    error: e.to_string(),
                                    raw: out.raw,
                                    attempts: out.attempts,
                                }),
                            );
                        }
                        (out, false)
                    }
                    Err(f) => return self.finish_row(row, Err(f)),
                }
            }
        };
        let result = self.split(splitter, cache, out).await.map(|o| (o, cached));
        self.finish_row(row, result)
    }

    fn caption_offline(
        &self,
        item: &Item,
        captioner: &dyn OfflineCaptioner,
        splitter: &Splitter,
        cache: &Cache,
        rt: Option<&tokio::runtime::Runtime>,
    ) -> CaptionRow {
        let (bytes, sha) = match self.read_crop(item) {
            Ok(x) => x,
            Err(f) => return self.finish_row(self.base_row(item, String::new()), Err(f)),
        };
        let row = self.base_row(item, sha);
        let result = captioner.caption(item, &bytes).and_then(|out| {
            let fut = self.split(splitter, cache, out);
            match rt {
                Some(rt) => rt.block_on(fut),
                None => poll_local(fut),
            }
        });
        self.finish_row(row, result.map(|o| (o, false)))
    }
}

/// Runs a future that never waits (the rules splitter) on this thread.
fn poll_local<F: std::future::Future>(fut: F) -> F::Output {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(fut).poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => unreachable!("the rules splitter never waits"),
    }
}

fn describe_change(then: &Fingerprint, now: &Fingerprint) -> String {
    let mut changed = Vec::new();
    let mut diff = |what: &str, a: &str, b: &str| {
        if a != b {
            changed.push(format!("{what} {a} → {b}"));
        }
    };
    diff("captioner", &then.captioner, &now.captioner);
    diff("model", &then.model, &now.model);
    diff("prompt version", &then.prompt_version, &now.prompt_version);
    diff("splitter", &then.splitter, &now.splitter);
    diff("trigger", &then.trigger, &now.trigger);
    diff("class word", &then.class_word, &now.class_word);
    if then.faces_sha256 != now.faces_sha256 {
        changed.push(format!("kept faces {} → {}", then.faces, now.faces));
    }
    format!(
        "settings changed ({}): captioning again, reusing cached captions whose key still matches",
        changed.join(", ")
    )
}

/// The kept faces with a crop, joined with their `images` rows (the source photos the offline
/// captioners look at, and the ingest captions), when the run has that table.
fn load_items(run: &RunDir) -> Result<Vec<Item>, CaptionError> {
    let faces = FacesTable::read(&run.require::<FacesTable>()?)?;
    let images_path = run.table::<ImagesTable>();
    let images: HashMap<u64, ImageRow> = if images_path.is_file() {
        ImagesTable::read(&images_path)?
            .rows
            .into_iter()
            .map(|r| (r.row_id, r))
            .collect()
    } else {
        HashMap::new()
    };
    let mut items = Vec::new();
    for f in faces.rows {
        let (Verdict::Kept, Some(face_index), Some(crop_path)) =
            (f.verdict, f.face_index, f.crop_path)
        else {
            continue;
        };
        let img = images.get(&f.row_id);
        let source_path = img
            .and_then(|r| r.store_path.as_deref())
            .map(|p| run.resolve(p));
        items.push(Item {
            row_id: f.row_id,
            image_id: f.image_id,
            face_index,
            identity: f.identity,
            group: f.group,
            crop_path,
            source_path,
            source: img.map(|r| r.source.clone()).unwrap_or_default(),
            source_caption: img.and_then(|r| r.caption.clone()),
            bbox: f.bbox,
            landmarks: f.landmarks,
            image_size: img.and_then(|r| Some((r.width?, r.height?))),
        });
    }
    Ok(items)
}

impl Stage for CaptionStage {
    type Error = CaptionError;

    fn name(&self) -> &'static str {
        CaptionsTable::STAGE
    }

    /// The `faces` table; `images` is read too when it is there, but a run without it (faces
    /// imported from elsewhere) still captions its crops.
    fn inputs(&self) -> &'static [TableInfo] {
        &[FacesTable::INFO]
    }

    fn outputs(&self) -> &'static [TableInfo] {
        &[CaptionsTable::INFO]
    }

    fn run_shard(&self, dir: &StageDir, shard: Shard) -> Result<StageStats, CaptionError> {
        let range = shard.rows(self.items.len());
        let items = &self.items[range];
        let cache = Cache::open(&dir.path().join(CACHE_DIR), &shard.label())?;
        let progress = Progress::new(format!("caption shard {shard}"), items.len() as u64);
        let rows: Vec<CaptionRow> = match &self.engine {
            Engine::Server {
                captioner,
                splitter,
            } => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| CaptionError::Settings(format!("tokio runtime: {e}")))?;
                let limit = Arc::new(tokio::sync::Semaphore::new(
                    self.settings.openai.concurrency.usize(),
                ));
                rt.block_on(async {
                    let tasks = items.iter().map(|item| {
                        let limit = limit.clone();
                        let progress = &progress;
                        let cache = &cache;
                        async move {
                            let _permit = limit.acquire().await.expect("semaphore open");
                            let row = self
                                .caption_with_server(item, captioner, splitter, cache)
                                .await;
                            progress.inc(1);
                            row
                        }
                    });
                    futures_util::future::join_all(tasks).await
                })
            }
            Engine::Offline {
                captioner,
                splitter,
            } => {
                let rt = match splitter {
                    Splitter::Llm(_) => Some(
                        tokio::runtime::Builder::new_multi_thread()
                            .worker_threads(2)
                            .enable_all()
                            .build()
                            .map_err(|e| CaptionError::Settings(format!("tokio runtime: {e}")))?,
                    ),
                    Splitter::Rules => None,
                };
                self.pool.install(|| {
                    items
                        .par_iter()
                        .map(|item| {
                            let row = self.caption_offline(
                                item,
                                captioner.as_ref(),
                                splitter,
                                &cache,
                                rt.as_ref(),
                            );
                            progress.inc(1);
                            row
                        })
                        .collect()
                })
            }
        };
        progress.finish();
        let table = CaptionsTable { rows };
        table.write(&dir.shard_table::<CaptionsTable>(shard))?;
        Ok(stats_of(&table))
    }

    fn finalize(&self, dir: &StageDir, shards: &[Shard]) -> Result<StageStats, CaptionError> {
        let mut rows = Vec::new();
        let mut seconds = 0.0;
        for &shard in shards {
            rows.extend(CaptionsTable::read(&dir.shard_table::<CaptionsTable>(shard))?.rows);
            seconds += dir.shard_stats(shard)?.seconds;
        }
        rows.sort_by_key(|r| (r.row_id, r.face_index));
        let class_words = choose_class_words(&rows, &self.settings.class_word);
        for r in rows.iter_mut().filter(|r| r.status == CaptionStatus::Ok) {
            let class = class_words
                .get(&class_group(r))
                .cloned()
                .unwrap_or_else(|| FALLBACK_CLASS_WORD.to_string());
            let general = r.general_raw.as_deref().unwrap_or("");
            r.general = Some(insert_trigger(general, &class, &self.settings.trigger));
            r.class_word = Some(class);
            r.trigger = Some(self.settings.trigger.clone());
        }
        let table = CaptionsTable { rows };
        table.write(&dir.table::<CaptionsTable>())?;
        let mut stats = stats_of(&table);
        stats.seconds = seconds;
        Ok(stats)
    }
}

fn class_group(r: &CaptionRow) -> String {
    r.group
        .clone()
        .or_else(|| r.identity.clone())
        .unwrap_or_else(|| r.image_id.clone())
}

/// The class word of every group: the fixed one, or the most frequent among the group's
/// captions (`person` when none names one).
fn choose_class_words(rows: &[CaptionRow], setting: &str) -> BTreeMap<String, String> {
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.status == CaptionStatus::Ok) {
        let words = found.entry(class_group(r)).or_default();
        if let Some((w, _)) = r.general_raw.as_deref().and_then(find_class_word) {
            words.push(w);
        }
    }
    found
        .into_iter()
        .map(|(group, words)| {
            let word = if setting != "auto" {
                setting.to_string()
            } else {
                most_frequent_class_word(words.iter().map(String::as_str))
                    .unwrap_or_else(|| FALLBACK_CLASS_WORD.to_string())
            };
            (group, word)
        })
        .collect()
}

/// Rows per status and what the captions cost: requests, cache hits, tokens, latency.
fn stats_of(table: &CaptionsTable) -> StageStats {
    let mut counts = BTreeMap::new();
    let mut extra = BTreeMap::new();
    let mut latencies = Vec::new();
    for r in &table.rows {
        *counts.entry(r.status.as_str().to_string()).or_default() += 1;
        let mut add = |k: &str, v: f64| *extra.entry(k.to_string()).or_default() += v;
        if r.cached {
            add("cached", 1.0);
        } else {
            add("requests", r.attempts as f64);
            add("prompt_tokens", r.prompt_tokens.unwrap_or(0) as f64);
            add("completion_tokens", r.completion_tokens.unwrap_or(0) as f64);
            if let Some(l) = r.latency_ms {
                latencies.push(l);
            }
        }
    }
    latencies.sort_unstable();
    if !latencies.is_empty() {
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize] as f64;
        extra.insert("latency_p50_ms".into(), pct(0.5));
        extra.insert("latency_p95_ms".into(), pct(0.95));
    }
    StageStats {
        rows: table.rows.len() as u64,
        counts,
        extra,
        ..Default::default()
    }
}
