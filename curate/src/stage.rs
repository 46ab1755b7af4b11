//! The curate stage: the `ok` rows of the `images` table, sharded; per shard, filters 1–3 and
//! the crops, journaled image by image; once every shard is done, identity grouping,
//! verification, duplicates and the minimum per identity over the whole table, then the
//! merged `faces.parquet` and `report.html`.
//!
//! Files under `runs/<name>/curate/`:
//! - `inputs.json`: count and fingerprint of the input images, checked on every re-run;
//! - `shards/<shard>.journal.jsonl`: one finished image (all its face rows) per line;
//! - `shards/<shard>.faces.parquet`: the shard's rows before the group-level filters;
//! - `crops/ab/<image_id>-<face>.jpg`: training crops of kept faces (`rejected/` holds those of
//!   faces rejected by filters 4–5, so that `crops/` is the training set);
//! - `refs/ab/<image_id>-<face>.jpg`: reference face crops of every detected face;
//! - `faces.parquet`, `stats.json`, `report.html`: the merged outputs.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::backend::Backend;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use idforge_core::journal::Journal;
use idforge_core::progress::Progress;
use idforge_core::run::{StageDir, read_json, write_json};
use idforge_core::schema::faces::{FaceRow, FacesTable, Reason, Verdict};
use idforge_core::schema::{
    ImageRow, ImageStatus, ImagesTable, RunTable, TableInfo, TableSpec, faces::REPORT_FILE,
};
use idforge_core::{CoreError, RunDir, Shard, Stage, StageStats};

use crate::analyze::{Analyzer, CROPS_DIR};
use crate::error::CurateError;
use crate::report::{GroupThresholds, ReportContext};
use crate::settings::{CurateSettings, IdentityMode};
use crate::verify::{self, Candidate, Decision, Rules};

/// Folder of training crops of faces rejected by the group-level filters.
pub const REJECTED_DIR: &str = "rejected";

/// The curate stage, ready to run: images table read, networks loaded.
pub struct CurateStage<B: Backend> {
    settings: CurateSettings,
    run: RunDir,
    run_name: String,
    images: Vec<ImageRow>,
    analyzer: Analyzer<B>,
    pool: rayon::ThreadPool,
}

/// One journal line: an image and the rows it produced.
#[derive(Debug, Serialize, Deserialize)]
struct ImageDone {
    row_id: u64,
    rows: Vec<FaceRow>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct InputsFingerprint {
    images: usize,
    sha256: String,
}

impl<B: Backend> CurateStage<B>
where
    Analyzer<B>: Sync,
{
    /// Reads the run's `images` table and loads the networks.
    pub fn new(
        settings: CurateSettings,
        run_root: &Path,
        face_api_models: &Path,
        device: &B::Device,
    ) -> Result<Self, CurateError> {
        settings.validate().map_err(CurateError::Settings)?;
        let run = RunDir::at(run_root);
        let table = ImagesTable::read(&run.require::<ImagesTable>()?)?;
        let images: Vec<ImageRow> = table
            .rows
            .into_iter()
            .filter(|r| r.status == ImageStatus::Ok)
            .collect();
        let threads = idforge_core::limits::threads_or_cores(settings.threads);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("curate-{i}"))
            .build()
            .map_err(|e| CurateError::Settings(e.to_string()))?;
        let analyzer = Analyzer::load(&settings, face_api_models, device)?;
        let run_name = run_root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(CurateStage {
            settings,
            run,
            run_name,
            images,
            analyzer,
            pool,
        })
    }

    /// The `ok` images this stage curates.
    pub fn images(&self) -> &[ImageRow] {
        &self.images
    }

    /// The settings in force.
    pub fn settings(&self) -> &CurateSettings {
        &self.settings
    }

    fn check_inputs(&self, dir: &StageDir) -> Result<(), CurateError> {
        let mut text = String::new();
        for r in &self.images {
            text.push_str(r.image_id.as_deref().unwrap_or(""));
            text.push('\t');
            text.push_str(r.identity.as_deref().unwrap_or(""));
            text.push('\n');
        }
        let now = InputsFingerprint {
            images: self.images.len(),
            sha256: idforge_core::hash::sha256_hex(text.as_bytes()),
        };
        let path = dir.path().join("inputs.json");
        if path.is_file() {
            let then: InputsFingerprint = read_json(&path)?;
            if then != now {
                return Err(CurateError::Settings(format!(
                    "the images table changed since {} was started ({} images then, {} now); \
                     remove that folder to curate again",
                    dir.path().display(),
                    then.images,
                    now.images
                )));
            }
            return Ok(());
        }
        Ok(write_json(&path, &now)?)
    }
}

fn stats_of(table: &FacesTable) -> StageStats {
    let mut images: Vec<u64> = table.rows.iter().map(|r| r.row_id).collect();
    images.dedup();
    StageStats {
        rows: images.len() as u64,
        counts: table.outcome_counts(),
        ..Default::default()
    }
}

impl<B: Backend> Stage for CurateStage<B>
where
    Analyzer<B>: Sync,
{
    type Error = CurateError;

    fn name(&self) -> &'static str {
        FacesTable::STAGE
    }

    fn inputs(&self) -> &'static [TableInfo] {
        &[ImagesTable::INFO]
    }

    fn outputs(&self) -> &'static [TableInfo] {
        &[FacesTable::INFO]
    }

    fn run_shard(&self, dir: &StageDir, shard: Shard) -> Result<StageStats, CurateError> {
        self.check_inputs(dir)?;
        let range = shard.rows(self.images.len());
        let ids: std::collections::HashSet<u64> = self.images[range.clone()]
            .iter()
            .map(|r| r.row_id)
            .collect();
        let (journal, done) = Journal::<ImageDone>::open(&dir.shard_file(shard, "journal.jsonl"))?;
        let mut finished: BTreeMap<u64, Vec<FaceRow>> = done
            .into_iter()
            .filter(|d| ids.contains(&d.row_id))
            .map(|d| (d.row_id, d.rows))
            .collect();
        let todo: Vec<&ImageRow> = self.images[range.clone()]
            .iter()
            .filter(|r| !finished.contains_key(&r.row_id))
            .collect();
        let progress = Progress::new(format!("curate shard {shard}"), range.len() as u64);
        progress.inc(finished.len() as u64);
        let stage_dir = dir.path();
        let results: Vec<ImageDone> = self.pool.install(|| {
            todo.par_iter()
                .map(|row| {
                    let rows = self.analyzer.analyze(row, &self.run, stage_dir)?;
                    let done = ImageDone {
                        row_id: row.row_id,
                        rows,
                    };
                    journal.append(&done)?;
                    progress.inc(1);
                    Ok(done)
                })
                .collect::<Result<_, CurateError>>()
        })?;
        progress.finish();
        finished.extend(results.into_iter().map(|d| (d.row_id, d.rows)));
        let table = FacesTable {
            embedder: self.analyzer.embedder_name(),
            embedding_dim: self.analyzer.embedding_dim(),
            rows: finished.into_values().flatten().collect(),
        };
        table.write(&dir.shard_table::<FacesTable>(shard))?;
        Ok(stats_of(&table))
    }

    fn finalize(&self, dir: &StageDir, shards: &[Shard]) -> Result<StageStats, CurateError> {
        let mut rows = Vec::new();
        let mut seconds = 0.0;
        for &shard in shards {
            let part = FacesTable::read(&dir.shard_table::<FacesTable>(shard))?;
            rows.extend(part.rows);
            seconds += dir.shard_stats(shard)?.seconds;
        }
        rows.sort_by_key(|r| (r.row_id, r.face_index));
        let mut table = FacesTable {
            embedder: self.analyzer.embedder_name(),
            embedding_dim: self.analyzer.embedding_dim(),
            rows,
        };
        let groups = group_filters(&mut table.rows, &self.settings);
        move_rejected_crops(&self.run, &mut table.rows)?;
        table.write(&dir.table::<FacesTable>())?;
        let settings_json = serde_json::to_string_pretty(&self.settings).unwrap_or_default();
        let report = dir.path().join(REPORT_FILE);
        crate::report::write(
            &report,
            &ReportContext {
                run_name: &self.run_name,
                table: &table,
                groups: &groups,
                settings_json: &settings_json,
            },
        )
        .map_err(|e| CoreError::io(&report, e))?;
        for &shard in shards {
            // The shard tables hold every row now; the journals are no longer needed.
            let _ = std::fs::remove_file(dir.shard_file(shard, "journal.jsonl"));
        }
        let mut stats = stats_of(&table);
        stats.seconds = seconds;
        let kept_groups: std::collections::BTreeSet<&str> = table
            .rows
            .iter()
            .filter(|r| r.verdict == Verdict::Kept)
            .filter_map(|r| r.group.as_deref())
            .collect();
        stats
            .extra
            .insert("identities_kept".into(), kept_groups.len() as f64);
        Ok(stats)
    }
}

/// Filters 4 and 5 and the per-identity minimum over the whole table, in place.
///
/// Labeled candidates are grouped by label; unlabeled ones (or all, in `discover` mode) are
/// clustered into `auto-NNNN` pseudo-identities; in `labels` mode an unlabeled image is a group
/// of its own.
pub fn group_filters(rows: &mut [FaceRow], settings: &CurateSettings) -> Vec<GroupThresholds> {
    let id = &settings.identity;
    let kind = settings.embedder.kind;
    let is_candidate = |r: &FaceRow| r.verdict == Verdict::Kept && r.embedding.is_some();
    // Unlabeled candidates, for discovery.
    let unlabeled: Vec<usize> = (0..rows.len())
        .filter(|&i| {
            is_candidate(&rows[i])
                && (id.mode == IdentityMode::Discover || rows[i].identity.is_none())
        })
        .collect();
    match id.mode {
        IdentityMode::Labels => {
            for &i in &unlabeled {
                rows[i].group = Some(format!(
                    "image-{}",
                    &rows[i].image_id[..12.min(rows[i].image_id.len())]
                ));
            }
        }
        IdentityMode::Auto | IdentityMode::Discover => {
            let cands: Vec<Candidate> = unlabeled
                .iter()
                .map(|&i| Candidate {
                    image: rows[i].row_id,
                    embedding: rows[i].embedding.as_deref().expect("candidate"),
                })
                .collect();
            let label = verify::discover(&cands, id.discover_threshold_for(kind));
            for (&i, l) in unlabeled.iter().zip(label) {
                rows[i].group = Some(format!("auto-{:04}", l + 1));
            }
        }
    }
    let mut members: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        if is_candidate(r) {
            members
                .entry(r.group.clone().expect("candidates have a group"))
                .or_default()
                .push(i);
        }
    }
    let rules = Rules {
        k: id.k.f32(),
        sigma_floor: id.sigma_floor.f32(),
        floor: id.floor_for(kind),
    };
    let mut out = Vec::new();
    for (group, idx) in members {
        let cands: Vec<Candidate> = idx
            .iter()
            .map(|&i| Candidate {
                image: rows[i].row_id,
                embedding: rows[i].embedding.as_deref().expect("candidate"),
            })
            .collect();
        let (verified, fig) = verify::verify_group(&cands, rules);
        for (&i, v) in idx.iter().zip(verified) {
            let r = &mut rows[i];
            r.id_score = v.id_score;
            r.id_z = v.id_z;
            match v.decision {
                Decision::Kept => {}
                Decision::OtherFaceInImage {
                    consistency,
                    chosen,
                } => r.reject(
                    Reason::OtherFaceInImage,
                    format!(
                        "consistency with the group {consistency:.3}, another face of this \
                         image has {chosen:.3}"
                    ),
                ),
                Decision::Outlier => r.reject(
                    Reason::IdOutlier,
                    format!(
                        "id_score {:.3} < median {:.3} − {}·σ̂ {:.4} = {:.3}",
                        v.id_score.unwrap_or(f32::NAN),
                        fig.median.unwrap_or(f32::NAN),
                        rules.k,
                        fig.sigma.unwrap_or(f32::NAN),
                        fig.relative_cut.unwrap_or(f32::NAN)
                    ),
                ),
                Decision::BelowFloor => r.reject(
                    Reason::BelowIdFloor,
                    format!(
                        "id_score {:.3} < floor {}",
                        v.id_score.unwrap_or(f32::NAN),
                        rules.floor
                    ),
                ),
            }
        }
        // Filter 5: duplicates among what is still kept, first occurrence wins.
        let kept: Vec<usize> = idx
            .iter()
            .copied()
            .filter(|&i| rows[i].verdict == Verdict::Kept)
            .collect();
        if settings.duplicates.phash_threshold >= 0 {
            let hashes: Vec<u64> = kept
                .iter()
                .map(|&i| rows[i].face_phash.unwrap_or(0))
                .collect();
            let dups = verify::duplicates(&hashes, settings.duplicates.phash_threshold as u32);
            for (k, d) in dups.iter().enumerate() {
                if let Some(j) = d {
                    let first = rows[kept[*j]].key();
                    let bits = (hashes[k] ^ hashes[*j]).count_ones();
                    let short = match first.split_once('#') {
                        Some((id, face)) => format!("{}…#{face}", &id[..id.len().min(12)]),
                        None => first.clone(),
                    };
                    let r = &mut rows[kept[k]];
                    r.reject(
                        Reason::Duplicate,
                        format!("reference crop's pHash is {bits} bits from {short}"),
                    );
                    r.duplicate_of = Some(first);
                }
            }
        }
        // The minimum per identity, on what survived.
        let mut kept_images: Vec<u64> = idx
            .iter()
            .filter(|&&i| rows[i].verdict == Verdict::Kept)
            .map(|&i| rows[i].row_id)
            .collect();
        kept_images.dedup();
        let kept = kept_images.len();
        if kept > 0 && (kept as u64) < id.min_images.get() {
            for &i in &idx {
                if rows[i].verdict == Verdict::Kept {
                    rows[i].reject(
                        Reason::IdentityTooSmall,
                        format!(
                            "the identity kept {kept} image(s), the minimum is {}",
                            id.min_images
                        ),
                    );
                }
            }
        }
        out.push(GroupThresholds {
            group,
            median: fig.median,
            sigma: fig.sigma,
            relative_cut: fig.relative_cut,
            floor: fig.floor,
        });
    }
    out
}

/// Moves the training crops of rejected faces from `crops/` to `rejected/`, so that `crops/`
/// holds exactly the training set. Safe to repeat after an interruption.
fn move_rejected_crops(run: &RunDir, rows: &mut [FaceRow]) -> Result<(), CurateError> {
    let from = format!("/{CROPS_DIR}/");
    let to = format!("/{REJECTED_DIR}/");
    for r in rows.iter_mut().filter(|r| r.verdict == Verdict::Rejected) {
        let Some(old) = r.crop_path.clone() else {
            continue;
        };
        if !old.contains(&from) {
            continue;
        }
        let new = old.replacen(&from, &to, 1);
        let (src, dst) = (run.resolve(&old), run.resolve(&new));
        if src.is_file() {
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent).map_err(|e| CoreError::io(parent, e))?;
            }
            std::fs::rename(&src, &dst).map_err(|e| CoreError::io(&src, e))?;
        }
        r.crop_path = Some(new);
    }
    Ok(())
}
