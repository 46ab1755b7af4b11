//! The leaderboard: one schema-versioned JSON document (`leaderboard.json`) from which the
//! Markdown table and the static HTML page are rendered, so the three never disagree.
//!
//! # Schema versions
//!
//! - **3**: a method's [`Cost`] says where each figure came from: `sources` maps a figure's
//!   key (`seconds_per_image`, …) to [`CostSource`] — `measured` (by which idforge command, on
//!   which hardware, with a note) or `reported` (typed into `method.toml`, e.g. from a paper) —
//!   and gains `training_peak_memory_gib`. A version 1 or 2 file reads as version 3 with every
//!   figure it has `reported` (those versions could not tell) and no training peak.
//! - **2**: adds `arena` (optional, `null` without votes): the preference arena's
//!   Bradley–Terry ratings ([`crate::ratings::ArenaResults`]): the votes file, the `neither`
//!   policy, the bootstrap (resamples, seed, level), the rating scale (`scale` 400, `base` 10,
//!   `anchor` 1000, `prior_sd`), what happened to the votes' rows, and per question the rated
//!   methods (rating, interval, rank, games, wins, losses, ties, win rate, `separated`,
//!   `component`), every pair's counts and win rate, and the raters' agreement. Nothing else
//!   changed: a version 1 file reads as version 2 without arena results.
//! - **1**: protocol, models, bootstrap, metrics, methods, per-set results, grids.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::ratings::ArenaResults;

pub mod charts;
pub mod html;
pub mod markdown;

/// Version of `leaderboard.json` (see the module's schema versions); readers take this one and
/// versions 1 and 2 (migrated as the module's schema versions say), and refuse others.
pub const LEADERBOARD_SCHEMA_VERSION: u32 = 3;

/// Everything the three leaderboard files show.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Leaderboard {
    /// [`LEADERBOARD_SCHEMA_VERSION`] when written.
    pub schema_version: u32,
    /// The protocol the generations followed.
    pub protocol: ProtocolInfo,
    /// When the file was written (RFC 3339, UTC).
    pub generated_at: String,
    /// The idforge version that scored.
    pub idforge_version: String,
    /// Which networks computed the metrics; a metric whose network was not given is absent.
    pub models: ModelsUsed,
    /// How the confidence intervals were drawn.
    pub bootstrap: BootstrapInfo,
    /// The metrics present in this file, in display order.
    pub metrics: Vec<MetricInfo>,
    /// Every scored method, built-in baselines included.
    pub methods: Vec<MethodEntry>,
    /// One table per reference set.
    pub sets: Vec<SetResult>,
    /// Image grids (reference | each method) for a few (identity, prompt) items.
    pub grids: Vec<Grid>,
    /// The preference arena's ratings, per question; `None` without a votes file. Absent from
    /// version 1 files.
    #[serde(default)]
    pub arena: Option<ArenaResults>,
}

/// The protocol's identity, so two leaderboards can be told comparable or not.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProtocolInfo {
    /// e.g. `idforge-v1`.
    pub name: String,
    /// The protocol file's own version number.
    pub version: u32,
    /// sha256 of the protocol file's bytes.
    pub sha256: String,
    /// sha256 over the reference images (paths and bytes), in a stable order.
    pub references_sha256: String,
    /// Seeds per (reference, prompt).
    pub seeds: usize,
    /// Number of prompts.
    pub prompts: usize,
    /// Prompt categories in display order.
    pub categories: Vec<String>,
}

/// The networks behind the metrics, as names a reader can look up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ModelsUsed {
    /// `face-api` (128-d descriptor) or `arcface:<file>`.
    pub face_embedder: String,
    /// The CLIP weights for CLIP-T, CLIP-I and CMMD, if given.
    pub clip: Option<String>,
    /// The DINO weights, if given.
    pub dino: Option<String>,
    /// The FID Inception weights for FID, KID and IS, if given.
    pub inception: Option<String>,
    /// The face detector and its threshold (`ssd_mobilenetv1@0.5`), a bench setting: absent in
    /// leaderboards written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub face_detector: Option<String>,
}

/// The bootstrap behind every interval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BootstrapInfo {
    /// Number of resamples.
    pub resamples: usize,
    /// RNG seed, so intervals reproduce.
    pub seed: u64,
    /// Confidence level, 0.95.
    pub level: f64,
    /// What is resampled (e.g. "(identity, prompt) items" or "images").
    pub unit: String,
}

/// One metric column.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricInfo {
    /// Key in [`MethodRow::metrics`], e.g. `face_sim`.
    pub key: String,
    /// Column title, e.g. `Face-Sim`.
    pub label: String,
    /// Whether a larger value is better (sorting, arrows).
    pub higher_is_better: bool,
    /// Whether it is a mean over images (also shown per category) or a set-level statistic.
    pub per_image: bool,
    /// One line on what it measures and how.
    pub description: String,
}

impl MetricInfo {
    /// "higher is better, mean over images" and the like: how to read the column, in words
    /// shared by the Markdown and HTML definitions.
    pub fn reading(&self) -> String {
        let direction = if self.higher_is_better {
            "higher is better"
        } else {
            "lower is better"
        };
        let scope = if self.per_image {
            "mean over images"
        } else {
            "set-level statistic"
        };
        format!("{direction}, {scope}")
    }
}

/// A method and its cost figures as its authors measured them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MethodEntry {
    /// Folder name and display name.
    pub name: String,
    /// Built in (a baseline such as `copy-reference`) rather than imported.
    pub builtin: bool,
    /// e.g. `SDXL 1.0`.
    pub base_model: Option<String>,
    /// Paper or code.
    pub link: Option<String>,
    /// The trigger word the method's prompts carried (removed for CLIP-T).
    pub trigger: Option<String>,
    /// The method's own settings, as given in `method.toml`.
    pub settings: BTreeMap<String, String>,
    /// Cost columns.
    pub cost: Cost,
}

/// What a method costs, per its `method.toml`; absent figures stay absent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Cost {
    /// Training or tuning time, minutes: per identity for methods tuned per identity (0 for
    /// tuning-free methods used as published); the one-off training of a general adapter
    /// trained for this bench (its source's note says so).
    pub training_minutes: Option<f64>,
    /// Peak memory while generating, GiB (GPU memory on a GPU, resident memory on the CPU).
    pub peak_memory_gib: Option<f64>,
    /// Extra disk per identity, MiB (0 for a general adapter: nothing is stored per identity;
    /// the shared file's size is in the source's note).
    pub disk_per_identity_mib: Option<f64>,
    /// Inference seconds per image.
    pub seconds_per_image: Option<f64>,
    /// The hardware the reported figures were measured on (measured figures carry their own).
    pub hardware: Option<String>,
    /// Peak memory while training, GiB. Absent from version 1 and 2 files.
    #[serde(default)]
    pub training_peak_memory_gib: Option<f64>,
    /// Figure key (as the fields above are named) → where it came from; a figure without an
    /// entry is reported. Absent from version 1 and 2 files.
    #[serde(default)]
    pub sources: BTreeMap<String, CostSource>,
}

/// The figures of a [`Cost`] by key, in display order: what `sources` keys name.
pub const COST_KEYS: [&str; 5] = [
    "training_minutes",
    "training_peak_memory_gib",
    "disk_per_identity_mib",
    "seconds_per_image",
    "peak_memory_gib",
];

impl Cost {
    /// The figure named `key` (one of [`COST_KEYS`]).
    pub fn figure(&self, key: &str) -> Option<f64> {
        match key {
            "training_minutes" => self.training_minutes,
            "training_peak_memory_gib" => self.training_peak_memory_gib,
            "disk_per_identity_mib" => self.disk_per_identity_mib,
            "seconds_per_image" => self.seconds_per_image,
            "peak_memory_gib" => self.peak_memory_gib,
            _ => None,
        }
    }

    /// Where the figure `key` came from, `None` when the figure is absent.
    pub fn source(&self, key: &str) -> Option<CostSource> {
        self.figure(key)?;
        Some(
            self.sources
                .get(key)
                .cloned()
                .unwrap_or(CostSource::Reported),
        )
    }
}

/// Where a cost figure came from, so a reader can tell a number idforge measured from one
/// typed in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CostSource {
    /// Measured by idforge while it ran the method.
    Measured {
        /// The command that measured it, e.g. `idforge bench generate`.
        by: String,
        /// The machine, e.g. `AMD EPYC 7763, 2 threads (burn flex, CPU)`.
        hardware: String,
        /// What exactly was measured (processes summed, the file sized…).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// Typed into `method.toml` (the authors', a paper's or the user's figure).
    Reported,
}

impl CostSource {
    /// Whether idforge measured it.
    pub fn is_measured(&self) -> bool {
        matches!(self, CostSource::Measured { .. })
    }
}

/// One reference set's table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SetResult {
    /// `in-train`, `out-of-train` or `out-of-domain`.
    pub name: String,
    /// From the protocol.
    pub description: String,
    /// Identities in the set.
    pub identities: usize,
    /// Reference images in the set.
    pub references: usize,
    /// One row per method, in method order.
    pub rows: Vec<MethodRow>,
}

/// A method's results on one set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MethodRow {
    /// [`MethodEntry::name`].
    pub method: String,
    /// Generations the protocol expects for this set.
    pub expected: usize,
    /// Generations found and decoded.
    pub scored: usize,
    /// Metric key → estimate; absent when its network was not given or too few images.
    pub metrics: BTreeMap<String, Estimate>,
    /// Category → metric key → estimate, for the per-image metrics.
    pub by_category: BTreeMap<String, BTreeMap<String, Estimate>>,
}

/// A value with its 95 % bootstrap interval.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Estimate {
    /// The statistic on all the data.
    pub value: f64,
    /// Lower bound of the interval.
    pub lo: f64,
    /// Upper bound of the interval.
    pub hi: f64,
    /// Number of observations behind it.
    pub n: usize,
}

/// Reference | each method, for one (identity, prompt, seed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Grid {
    /// Reference set.
    pub set: String,
    /// Identity.
    pub identity: String,
    /// Prompt id.
    pub prompt_id: String,
    /// The prompt without trigger, as shown to readers.
    pub prompt: String,
    /// Seed shown.
    pub seed: u64,
    /// Reference thumbnail, relative to the leaderboard folder.
    pub reference: String,
    /// One cell per method, in method order.
    pub cells: Vec<GridCell>,
}

/// One method's image in a grid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GridCell {
    /// Method name.
    pub method: String,
    /// Thumbnail relative to the leaderboard folder; `None` when the image is missing.
    pub image: Option<String>,
    /// Its Face-Sim, if scored.
    pub face_sim: Option<f64>,
}
