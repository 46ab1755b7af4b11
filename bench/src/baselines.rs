//! Reference methods that need no generator, to calibrate the metrics: `copy-reference` (built
//! in: the reference image itself, the ceiling of Face-Sim and the floor of prompt adherence),
//! and folders written in the import layout — `flipped-reference` (the same person, mirrored)
//! and `other-identity` (another identity's reference from the same set: the floor of
//! Face-Sim).

use std::path::Path;

use idforge_core::image_io::{DEFAULT_MAX_PIXELS, decode};
use rayon::prelude::*;

use crate::error::BenchError;
use crate::layout::{BenchDir, METHOD_FILE};
use crate::method::{CostFile, MethodFile};
use crate::plan::Job;

/// Name of the built-in method scored with every leaderboard.
pub const COPY_REFERENCE: &str = "copy-reference";

/// A baseline that can be written as a method folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// The reference, mirrored left–right.
    FlippedReference,
    /// The reference of the next identity (by name, cyclically) of the same set, or of another
    /// set when the set has one identity.
    OtherIdentity,
}

impl Baseline {
    /// The method name it is written under.
    pub fn name(self) -> &'static str {
        match self {
            Baseline::FlippedReference => "flipped-reference",
            Baseline::OtherIdentity => "other-identity",
        }
    }

    /// Parses [`Baseline::name`].
    pub fn parse(s: &str) -> Option<Self> {
        [Baseline::FlippedReference, Baseline::OtherIdentity]
            .into_iter()
            .find(|b| b.name() == s)
    }
}

/// The built-in method's entry.
pub fn copy_reference_method() -> MethodFile {
    MethodFile {
        name: COPY_REFERENCE.into(),
        base_model: None,
        link: None,
        trigger: None,
        settings: Default::default(),
        cost: CostFile {
            training_minutes: Some(0.0),
            peak_memory_gib: Some(0.0),
            disk_per_identity_mib: Some(0.0),
            seconds_per_image: Some(0.0),
            ..CostFile::default()
        },
    }
}

/// Writes `baseline` for every job into `out` (a method folder ready for import).
pub fn write_baseline(
    baseline: Baseline,
    bench: &BenchDir,
    jobs: &[Job],
    out: &Path,
) -> Result<usize, BenchError> {
    let mut identities: Vec<(&str, &str, &str)> = jobs
        .iter()
        .map(|j| {
            (
                j.set.as_str(),
                j.identity.as_str(),
                j.references[0].as_str(),
            )
        })
        .collect();
    identities.dedup();
    let source_of = |job: &Job| -> String {
        match baseline {
            Baseline::FlippedReference => job.references[0].clone(),
            Baseline::OtherIdentity => {
                let same: Vec<_> = identities
                    .iter()
                    .filter(|(s, _, _)| *s == job.set)
                    .collect();
                let pool = if same.len() > 1 {
                    same
                } else {
                    identities.iter().collect()
                };
                let at = pool
                    .iter()
                    .position(|(_, i, _)| *i == job.identity)
                    .unwrap_or(0);
                pool[(at + 1) % pool.len()].2.to_string()
            }
        }
    };
    std::fs::create_dir_all(out).map_err(|e| BenchError::io(out, e))?;
    let method = MethodFile {
        name: baseline.name().into(),
        base_model: None,
        link: None,
        trigger: None,
        settings: Default::default(),
        cost: copy_reference_method().cost,
    };
    let p = out.join(METHOD_FILE);
    std::fs::write(&p, method.to_toml()).map_err(|e| BenchError::io(&p, e))?;
    jobs.par_iter().try_for_each(|job| {
        let src = bench.root.join(source_of(job));
        let bytes = std::fs::read(&src).map_err(|e| BenchError::io(&src, e))?;
        let img = decode(&bytes, DEFAULT_MAX_PIXELS)
            .map_err(|e| BenchError::invalid(&src, e.to_string()))?
            .image
            .into_rgb8();
        let img = match baseline {
            Baseline::FlippedReference => image::imageops::flip_horizontal(&img),
            Baseline::OtherIdentity => img,
        };
        let dest = out.join(&job.output);
        if let Some(d) = dest.parent() {
            std::fs::create_dir_all(d).map_err(|e| BenchError::io(d, e))?;
        }
        img.save(&dest)
            .map_err(|e| BenchError::invalid(&dest, format!("writing PNG: {e}")))
    })?;
    Ok(jobs.len())
}
