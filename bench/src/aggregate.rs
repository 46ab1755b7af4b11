//! From the methods' `scores` tables to the leaderboard document: means of the per-image
//! metrics with cluster-bootstrap intervals (per set and per prompt category), the set-level
//! distribution metrics (FID, KID, IS, CMMD) with image-bootstrap intervals, Face-Div, and the
//! image grids' thumbnails.
//!
//! Reference features for the set-level metrics come from the built-in `copy-reference`
//! method's table (its generations are the references), so no network runs here.
//!
//! The preference arena's votes, when there are any, join as their own section: Bradley–Terry
//! ratings per question ([`crate::ratings`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use idforge_core::image_io::{DEFAULT_MAX_PIXELS, decode};
use idforge_core::schema::{ScoreRow, ScoreStatus, ScoresTable, VotesTable};
use rayon::prelude::*;

use crate::baselines::COPY_REFERENCE;
use crate::error::BenchError;
use crate::layout::BenchDir;
use crate::leaderboard::{
    BootstrapInfo, Estimate, Grid, GridCell, LEADERBOARD_SCHEMA_VERSION, Leaderboard, MethodEntry,
    MethodRow, MetricInfo, ModelsUsed, ProtocolInfo, SetResult,
};
use crate::protocol::Protocol;
use crate::ratings::{ArenaResults, RatingOptions, rate_votes};
use crate::references::References;
use crate::stats::Features;
use crate::stats::bootstrap::{mean_ci, statistic_ci};
use crate::stats::cmmd::{CmmdResampler, cmmd};
use crate::stats::diversity::face_div;
use crate::stats::frechet::fid;
use crate::stats::inception_score::inception_score;
use crate::stats::kid::{KidOptions, kid};

/// How the leaderboard is computed.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderboardOptions {
    /// Bootstrap resamples for the per-image means.
    pub resamples: usize,
    /// Bootstrap resamples for FID, KID, IS and CMMD (each one recomputes the statistic).
    pub set_resamples: usize,
    /// Seed of every resampling.
    pub seed: u64,
    /// Confidence level.
    pub level: f64,
    /// Grids per set (each one identity × one prompt, first seed).
    pub grids_per_set: usize,
    /// Longest side of the grid thumbnails.
    pub thumb_px: u32,
    /// The arena's votes table; `None` reads `<bench>/arena/votes.parquet` when it exists
    /// (`idforge arena export` writes it there) and leaves the arena out otherwise.
    pub votes: Option<PathBuf>,
    /// How the arena's votes are rated.
    pub arena: RatingOptions,
}

impl Default for LeaderboardOptions {
    fn default() -> Self {
        LeaderboardOptions {
            resamples: 1000,
            set_resamples: 200,
            seed: 0,
            level: 0.95,
            grids_per_set: 3,
            thumb_px: 256,
            votes: None,
            arena: RatingOptions::default(),
        }
    }
}

/// The metric columns, in display order.
pub fn metric_catalogue() -> Vec<MetricInfo> {
    let m = |key: &str, label: &str, higher: bool, per_image: bool, description: &str| MetricInfo {
        key: key.into(),
        label: label.into(),
        higher_is_better: higher,
        per_image,
        description: description.into(),
    };
    vec![
        m(
            "face_sim",
            "Face-Sim",
            true,
            true,
            "cosine similarity of the generated face's and the reference face's identity embeddings (largest face; 0 when no face is detected), mean over images",
        ),
        m(
            "face_failure",
            "No face %",
            false,
            true,
            "share of generations in which the detector finds no face, in percent",
        ),
        m(
            "clip_t",
            "CLIP-T",
            true,
            true,
            "100 · max(cos(CLIP image, CLIP text), 0) with the prompt's trigger word removed (torchmetrics' CLIPScore), mean over images",
        ),
        m(
            "clip_i",
            "CLIP-I",
            true,
            true,
            "cosine similarity of the CLIP image embeddings of generation and reference, mean over images",
        ),
        m(
            "dino",
            "DINO",
            true,
            true,
            "cosine similarity of the DINO CLS embeddings of generation and reference, mean over images",
        ),
        m(
            "face_div",
            "Face-Div",
            true,
            false,
            "diversity of the generated faces across seeds: mean pairwise 1 − cos of their identity embeddings per (identity, prompt), mean over items",
        ),
        m(
            "fid",
            "FID",
            false,
            false,
            "Fréchet Inception distance of the generations to the set's reference images (clean-fid conventions: clean resize, pool3)",
        ),
        m(
            "kid",
            "KID×10³",
            false,
            false,
            "kernel Inception distance (clean-fid: cubic polynomial kernel, 100 subsets), times 1000",
        ),
        m(
            "is",
            "IS",
            true,
            false,
            "Inception Score of the generations (torchmetrics: unbiased logits, 10 splits)",
        ),
        m(
            "cmmd",
            "CMMD",
            false,
            false,
            "CLIP maximum mean discrepancy to the references (Gaussian kernel σ = 10, scale 1000)",
        ),
    ]
}

/// Builds the leaderboard from the scores of `methods` (the first must be `copy-reference`).
pub fn build(
    bench: &BenchDir,
    protocol: &Protocol,
    refs: &References,
    methods: &[(MethodEntry, ScoresTable)],
    models: &ModelsUsed,
    opts: &LeaderboardOptions,
) -> Result<Leaderboard, BenchError> {
    let Some((_, reference_scores)) = methods.iter().find(|(m, _)| m.name == COPY_REFERENCE) else {
        return Err(BenchError::Metric(
            "no copy-reference scores: its table holds the reference features; run `idforge bench score`".into(),
        ));
    };
    let mut present: BTreeSet<String> = BTreeSet::new();
    let mut sets = Vec::new();
    for set in &protocol.sets {
        let identities: Vec<_> = refs.of_set(&set.name).collect();
        if identities.is_empty() {
            continue;
        }
        let ref_rows = unique_references(&reference_scores.rows, &set.name);
        let mut rows = Vec::new();
        for (entry, table) in methods {
            let set_rows: Vec<&ScoreRow> =
                table.rows.iter().filter(|r| r.set == set.name).collect();
            let row = method_row(entry, &set_rows, &ref_rows, protocol, opts);
            present.extend(row.metrics.keys().cloned());
            rows.push(row);
        }
        sets.push(SetResult {
            name: set.name.clone(),
            description: set.description.clone(),
            identities: identities.len(),
            references: identities.iter().map(|i| i.references.len()).sum(),
            rows,
        });
    }
    let metrics = metric_catalogue()
        .into_iter()
        .filter(|m| present.contains(&m.key))
        .collect();
    let grids = grids(bench, protocol, refs, methods, opts)?;
    let arena = arena_results(bench, opts)?;
    Ok(Leaderboard {
        schema_version: LEADERBOARD_SCHEMA_VERSION,
        protocol: ProtocolInfo {
            name: protocol.name.clone(),
            version: protocol.version,
            sha256: protocol.sha256.clone(),
            references_sha256: refs.sha256.clone(),
            seeds: protocol.seeds.len(),
            prompts: protocol.prompts.len(),
            categories: protocol.categories.clone(),
        },
        generated_at: now_rfc3339(),
        idforge_version: env!("CARGO_PKG_VERSION").into(),
        models: models.clone(),
        bootstrap: BootstrapInfo {
            resamples: opts.resamples,
            seed: opts.seed,
            level: opts.level,
            unit: format!(
                "per-image metrics: (identity, prompt) items, all seeds of an item together; \
                 FID, KID, IS, CMMD: generated images ({} resamples)",
                opts.set_resamples
            ),
        },
        metrics,
        methods: methods.iter().map(|(m, _)| m.clone()).collect(),
        sets,
        grids,
        arena,
    })
}

/// The arena's ratings from `opts.votes`, or from `<bench>/arena/votes.parquet` when that
/// exists; `None` when neither is there.
pub fn arena_results(
    bench: &BenchDir,
    opts: &LeaderboardOptions,
) -> Result<Option<ArenaResults>, BenchError> {
    let path = match &opts.votes {
        Some(p) if !p.is_file() => {
            return Err(BenchError::invalid(
                p,
                "no such votes file: give the votes.parquet that `idforge arena export` wrote",
            ));
        }
        Some(p) => p.clone(),
        None => {
            let p = bench.votes_path();
            if !p.is_file() {
                return Ok(None);
            }
            p
        }
    };
    let table = VotesTable::read(&path)?;
    let source = if path.starts_with(&bench.root) {
        bench.relative(&path)
    } else {
        path.display().to_string()
    };
    rate_votes(&table.rows, &source, &opts.arena)
        .map(Some)
        .map_err(|e| BenchError::invalid(&path, e.to_string()))
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil conversion (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// One row per reference image of the set (copy-reference scores each reference once per
/// (prompt, seed); the features are the same).
fn unique_references<'a>(rows: &'a [ScoreRow], set: &str) -> Vec<&'a ScoreRow> {
    let mut seen = BTreeSet::new();
    rows.iter()
        .filter(|r| r.set == set && r.status == Some(ScoreStatus::Ok))
        .filter(|r| seen.insert(r.path.clone()))
        .collect()
}

fn method_row(
    entry: &MethodEntry,
    rows: &[&ScoreRow],
    ref_rows: &[&ScoreRow],
    protocol: &Protocol,
    opts: &LeaderboardOptions,
) -> MethodRow {
    let ok: Vec<&ScoreRow> = rows
        .iter()
        .copied()
        .filter(|r| r.status == Some(ScoreStatus::Ok))
        .collect();
    let mut metrics = per_image_metrics(&ok, opts);
    if let Some(e) = face_diversity(&ok, opts) {
        metrics.insert("face_div".into(), e);
    }
    metrics.extend(set_metrics(&ok, ref_rows, opts));
    let mut by_category = BTreeMap::new();
    for c in &protocol.categories {
        let in_c: Vec<&ScoreRow> = ok.iter().copied().filter(|r| &r.category == c).collect();
        if !in_c.is_empty() {
            by_category.insert(c.clone(), per_image_metrics(&in_c, opts));
        }
    }
    MethodRow {
        method: entry.name.clone(),
        expected: rows.len(),
        scored: ok.len(),
        metrics,
        by_category,
    }
}

/// Means with cluster-bootstrap intervals of the per-image metrics over `rows`.
fn per_image_metrics(rows: &[&ScoreRow], opts: &LeaderboardOptions) -> BTreeMap<String, Estimate> {
    let mut clusters: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let groups: Vec<usize> = rows
        .iter()
        .map(|r| {
            let n = clusters.len();
            *clusters.entry((&r.identity, &r.prompt_id)).or_insert(n)
        })
        .collect();
    let mut out = BTreeMap::new();
    let mut add = |key: &str, values: Vec<(usize, f64)>| {
        if values.is_empty() {
            return;
        }
        let (g, v): (Vec<usize>, Vec<f64>) = values.into_iter().unzip();
        let (value, lo, hi) = mean_ci(&v, Some(&g), opts.resamples, opts.seed, opts.level);
        out.insert(
            key.to_string(),
            Estimate {
                value,
                lo,
                hi,
                n: v.len(),
            },
        );
    };
    let pick = |f: &dyn Fn(&ScoreRow) -> Option<f64>| -> Vec<(usize, f64)> {
        rows.iter()
            .zip(&groups)
            .filter_map(|(r, &g)| f(r).map(|v| (g, v)))
            .collect()
    };
    add("face_sim", pick(&|r| r.face_sim.map(f64::from)));
    add(
        "face_failure",
        pick(&|r| Some(if r.face_detected { 0.0 } else { 100.0 })),
    );
    add("clip_t", pick(&|r| r.clip_t.map(f64::from)));
    add("clip_i", pick(&|r| r.clip_i.map(f64::from)));
    add("dino", pick(&|r| r.dino.map(f64::from)));
    // torchmetrics' CLIPScore is max(mean(100·cos), 0): the clamp is on the mean (and its
    // interval), the table keeps each image's unclamped 100·cos.
    if let Some(e) = out.get_mut("clip_t") {
        e.value = e.value.max(0.0);
        e.lo = e.lo.max(0.0);
        e.hi = e.hi.max(0.0);
    }
    out
}

/// Face-Div per (identity, prompt) item over its seeds' detected faces, mean over items.
fn face_diversity(rows: &[&ScoreRow], opts: &LeaderboardOptions) -> Option<Estimate> {
    let mut items: BTreeMap<(&str, &str), Vec<Vec<f32>>> = BTreeMap::new();
    for r in rows {
        if let Some(e) = &r.face_embedding {
            items
                .entry((&r.identity, &r.prompt_id))
                .or_default()
                .push(e.clone());
        }
    }
    let values: Vec<f64> = items.values().filter_map(|e| face_div(e)).collect();
    if values.is_empty() {
        return None;
    }
    let (value, lo, hi) = mean_ci(&values, None, opts.resamples, opts.seed, opts.level);
    Some(Estimate {
        value,
        lo,
        hi,
        n: values.len(),
    })
}

/// FID, KID, IS and CMMD of the generations against the set's references.
fn set_metrics(
    ok: &[&ScoreRow],
    ref_rows: &[&ScoreRow],
    opts: &LeaderboardOptions,
) -> BTreeMap<String, Estimate> {
    let mut out = BTreeMap::new();
    fn matrix(rows: &[&ScoreRow], f: fn(&ScoreRow) -> Option<&Vec<f32>>) -> Option<Features> {
        let v: Vec<Vec<f32>> = rows.iter().filter_map(|r| f(r).cloned()).collect();
        (v.len() >= 2)
            .then(|| Features::from_rows(&v).ok())
            .flatten()
    }
    let with_ci = |n: usize, value: f64, stat: &(dyn Fn(&[usize]) -> Option<f64> + Sync)| {
        let (lo, hi) = statistic_ci(n, opts.set_resamples, opts.seed, opts.level, stat)
            .unwrap_or((value, value));
        Estimate { value, lo, hi, n }
    };
    fn pool(r: &ScoreRow) -> Option<&Vec<f32>> {
        r.inception_pool3.as_ref()
    }
    fn logits(r: &ScoreRow) -> Option<&Vec<f32>> {
        r.inception_logits.as_ref()
    }
    fn clip(r: &ScoreRow) -> Option<&Vec<f32>> {
        r.clip_embedding.as_ref()
    }
    if let (Some(gen_f), Some(ref_f)) = (matrix(ok, pool), matrix(ref_rows, pool)) {
        if let Ok(v) = fid(&gen_f, &ref_f) {
            let stat = |idx: &[usize]| fid(&gen_f.select(idx), &ref_f).ok();
            out.insert("fid".into(), with_ci(gen_f.n, v, &stat));
        }
        let kid_opts = KidOptions {
            seed: opts.seed,
            ..KidOptions::default()
        };
        if let Ok(v) = kid(&gen_f, &ref_f, &kid_opts) {
            let stat = |idx: &[usize]| {
                kid(&gen_f.select(idx), &ref_f, &kid_opts)
                    .ok()
                    .map(|k| k * 1000.0)
            };
            out.insert("kid".into(), with_ci(gen_f.n, v * 1000.0, &stat));
        }
    }
    if let Some(logits) = matrix(ok, logits)
        && let Ok((v, _)) = inception_score(&logits, 10)
    {
        let stat = |idx: &[usize]| {
            inception_score(&logits.select(idx), 10)
                .ok()
                .map(|(m, _)| m)
        };
        out.insert("is".into(), with_ci(logits.n, v, &stat));
    }
    if let (Some(gen_c), Some(ref_c)) = (matrix(ok, clip), matrix(ref_rows, clip))
        && let Ok(v) = cmmd(&gen_c, &ref_c)
    {
        let estimate = match CmmdResampler::new(&gen_c, &ref_c) {
            Ok(Some(r)) => with_ci(gen_c.n, v, &|idx: &[usize]| Some(r.cmmd(idx))),
            _ => with_ci(gen_c.n, v, &|idx: &[usize]| {
                cmmd(&gen_c.select(idx), &ref_c).ok()
            }),
        };
        out.insert("cmmd".into(), estimate);
    }
    out
}

/// Grids: per set, the first identities × distinct-category prompts, first seed; thumbnails
/// written under `leaderboard/thumbs/`.
fn grids(
    bench: &BenchDir,
    protocol: &Protocol,
    refs: &References,
    methods: &[(MethodEntry, ScoresTable)],
    opts: &LeaderboardOptions,
) -> Result<Vec<Grid>, BenchError> {
    let out_dir = bench.leaderboard_dir();
    let seed = protocol.seeds[0];
    let mut prompts = Vec::new();
    let mut cats = BTreeSet::new();
    for p in &protocol.prompts {
        if cats.insert(&p.category) {
            prompts.push(p);
        }
    }
    let mut grids = Vec::new();
    let mut thumbs: Vec<(String, String)> = Vec::new(); // (source rel to bench, dest rel to leaderboard)
    for set in &protocol.sets {
        let identities: Vec<_> = refs.of_set(&set.name).collect();
        for (k, prompt) in prompts.iter().take(opts.grids_per_set).enumerate() {
            let Some(identity) = identities.get(k % identities.len().max(1)) else {
                continue;
            };
            let reference = format!("thumbs/references/{}.jpg", identity.name);
            thumbs.push((identity.references[0].clone(), reference.clone()));
            let mut cells = Vec::new();
            for (entry, table) in methods {
                let row = table.rows.iter().find(|r| {
                    r.identity == identity.name && r.prompt_id == prompt.id && r.seed == seed
                });
                let image = match row {
                    Some(r) if r.status == Some(ScoreStatus::Ok) => {
                        let dest = format!(
                            "thumbs/{}/{}__{}__{}.jpg",
                            entry.name, identity.name, prompt.id, seed
                        );
                        thumbs.push((r.path.clone(), dest.clone()));
                        Some(dest)
                    }
                    _ => None,
                };
                cells.push(GridCell {
                    method: entry.name.clone(),
                    image,
                    face_sim: row.and_then(|r| r.face_sim.map(f64::from)),
                });
            }
            grids.push(Grid {
                set: set.name.clone(),
                identity: identity.name.clone(),
                prompt_id: prompt.id.clone(),
                prompt: prompt.text_without_trigger(&identity.class_word),
                seed,
                reference,
                cells,
            });
        }
    }
    thumbs.sort();
    thumbs.dedup();
    thumbs.par_iter().try_for_each(|(src, dest)| {
        write_thumb(&bench.root.join(src), &out_dir.join(dest), opts.thumb_px)
    })?;
    Ok(grids)
}

fn write_thumb(src: &Path, dest: &Path, px: u32) -> Result<(), BenchError> {
    let bytes = std::fs::read(src).map_err(|e| BenchError::io(src, e))?;
    let img = decode(&bytes, DEFAULT_MAX_PIXELS)
        .map_err(|e| BenchError::invalid(src, e.to_string()))?
        .image
        .into_rgb8();
    let thumb = image::DynamicImage::ImageRgb8(img)
        .thumbnail(px, px)
        .into_rgb8();
    if let Some(d) = dest.parent() {
        std::fs::create_dir_all(d).map_err(|e| BenchError::io(d, e))?;
    }
    thumb
        .save_with_format(dest, image::ImageFormat::Jpeg)
        .map_err(|e| BenchError::invalid(dest, format!("writing a thumbnail: {e}")))
}

/// Writes `leaderboard.json`, `LEADERBOARD.md` and `index.html` into the leaderboard folder
/// (thumbnails are already there).
pub fn write_files(bench: &BenchDir, lb: &Leaderboard) -> Result<(), BenchError> {
    let dir = bench.leaderboard_dir();
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::io(&dir, e))?;
    let files = [
        (
            "leaderboard.json",
            serde_json::to_string_pretty(lb).expect("serialisable") + "\n",
        ),
        ("LEADERBOARD.md", crate::leaderboard::markdown::render(lb)),
        ("index.html", crate::leaderboard::html::render(lb)),
    ];
    for (name, text) in files {
        let p = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).map_err(|e| BenchError::io(&tmp, e))?;
        std::fs::rename(&tmp, &p).map_err(|e| BenchError::io(&p, e))?;
    }
    Ok(())
}

/// Reads a `leaderboard.json` of the current schema version, or of version 1 or 2, migrated:
/// version 1 has no arena results, versions 1 and 2 no cost sources (every figure reads as
/// reported) and no training peak; refuses other versions.
pub fn read_leaderboard(path: &Path) -> Result<Leaderboard, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| BenchError::invalid(path, format!("not JSON: {e}")))?;
    let version = v.get("schema_version").and_then(|v| v.as_u64());
    if !matches!(version, Some(1 | 2)) && version != Some(u64::from(LEADERBOARD_SCHEMA_VERSION)) {
        return Err(BenchError::invalid(
            path,
            format!(
                "schema_version {version:?}, this idforge reads 1 to {LEADERBOARD_SCHEMA_VERSION}: \
                 re-run `idforge bench leaderboard`"
            ),
        ));
    }
    let mut lb: Leaderboard =
        serde_json::from_value(v).map_err(|e| BenchError::invalid(path, e.to_string()))?;
    lb.schema_version = LEADERBOARD_SCHEMA_VERSION;
    Ok(lb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leaderboard::markdown::tests::sample;

    #[test]
    fn reads_this_version_and_versions_1_and_2_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leaderboard.json");
        let lb = sample();
        assert!(lb.arena.is_some());
        std::fs::write(&path, serde_json::to_string(&lb).unwrap()).unwrap();
        let back = read_leaderboard(&path).unwrap();
        assert_eq!(back.schema_version, LEADERBOARD_SCHEMA_VERSION);
        // serde_json's default float parsing may be off by one unit in the last place.
        fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
            use serde_json::Value::{Array, Number, Object};
            match (a, b) {
                (Number(x), Number(y)) => {
                    let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                    (x - y).abs() <= 1e-12 * x.abs().max(1.0)
                }
                (Array(x), Array(y)) => {
                    x.len() == y.len() && x.iter().zip(y).all(|(x, y)| close(x, y))
                }
                (Object(x), Object(y)) => {
                    x.len() == y.len()
                        && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
                }
                _ => a == b,
            }
        }
        let (a, b) = (
            serde_json::to_value(&back.arena).unwrap(),
            serde_json::to_value(&lb.arena).unwrap(),
        );
        assert!(a.is_object() && close(&a, &b), "{a}\n{b}");
        // Version 1: no `arena` key; reads as the current version without arena results.
        let mut v1 = serde_json::to_value(&lb).unwrap();
        v1["schema_version"] = 1.into();
        v1.as_object_mut().unwrap().remove("arena");
        std::fs::write(&path, v1.to_string()).unwrap();
        let back = read_leaderboard(&path).unwrap();
        assert_eq!(back.schema_version, LEADERBOARD_SCHEMA_VERSION);
        assert!(back.arena.is_none());
        assert!(close(
            &serde_json::to_value(&back.sets).unwrap(),
            &serde_json::to_value(&lb.sets).unwrap()
        ));
        // Version 2: no cost sources and no training peak; its figures read as reported.
        let mut v2 = serde_json::to_value(&lb).unwrap();
        v2["schema_version"] = 2.into();
        for m in v2["methods"].as_array_mut().unwrap() {
            let cost = m["cost"].as_object_mut().unwrap();
            cost.remove("sources");
            cost.remove("training_peak_memory_gib");
        }
        std::fs::write(&path, v2.to_string()).unwrap();
        let back = read_leaderboard(&path).unwrap();
        assert_eq!(back.schema_version, LEADERBOARD_SCHEMA_VERSION);
        let measured = lb
            .methods
            .iter()
            .find(|m| !m.cost.sources.is_empty())
            .expect("the sample has a measured figure");
        let migrated = back
            .methods
            .iter()
            .find(|m| m.name == measured.name)
            .unwrap();
        assert!(migrated.cost.sources.is_empty());
        assert_eq!(migrated.cost.training_peak_memory_gib, None);
        assert_eq!(
            migrated.cost.source("seconds_per_image"),
            Some(crate::leaderboard::CostSource::Reported)
        );
        assert_eq!(
            migrated.cost.seconds_per_image,
            measured.cost.seconds_per_image
        );
        v1["schema_version"] = 4.into();
        std::fs::write(&path, v1.to_string()).unwrap();
        let err = read_leaderboard(&path).unwrap_err().to_string();
        assert!(err.contains("schema_version Some(4)"), "{err}");
        assert!(err.contains("re-run `idforge bench leaderboard`"), "{err}");
    }
}
