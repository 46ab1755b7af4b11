//! A method's generations: checked against the plan (missing, extra and unreadable images are
//! reported, never guessed) and imported into the bench folder whole.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use idforge_core::image_io::{DEFAULT_MAX_PIXELS, decode};
use rayon::prelude::*;
use serde::Serialize;

use crate::error::BenchError;
use crate::layout::{BenchDir, IMAGE_EXTENSIONS, METHOD_FILE};
use crate::method::MethodFile;
use crate::plan::Job;

/// What a method folder holds compared with the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// The method's name.
    pub method: String,
    /// Images the plan expects.
    pub expected: usize,
    /// Expected images present (readable or not).
    pub found: usize,
    /// Expected images absent (`<identity>/<prompt_id>/<seed>.png`).
    pub missing: Vec<String>,
    /// Files the plan does not expect (other names, seeds, identities or a second file for the
    /// same seed); not imported.
    pub extra: Vec<String>,
    /// Expected files that do not decode, with the decoder's message; imported, scored as
    /// unreadable.
    pub unreadable: Vec<(String, String)>,
}

impl ImportReport {
    /// Whether every expected image is present and readable, and nothing else is there.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.unreadable.is_empty()
    }

    /// A few lines for people: counts, then the first `show` paths of each list.
    pub fn summary(&self, show: usize) -> String {
        let mut out = format!(
            "{}: {} of {} expected images found, {} missing, {} unreadable, {} extra file(s)\n",
            self.method,
            self.found,
            self.expected,
            self.missing.len(),
            self.unreadable.len(),
            self.extra.len()
        );
        let mut list = |title: &str, items: Vec<String>| {
            if items.is_empty() {
                return;
            }
            out.push_str(&format!("  {title}:\n"));
            for i in items.iter().take(show) {
                out.push_str(&format!("    {i}\n"));
            }
            if items.len() > show {
                out.push_str(&format!("    … and {} more\n", items.len() - show));
            }
        };
        list("missing", self.missing.clone());
        list(
            "unreadable",
            self.unreadable
                .iter()
                .map(|(p, e)| format!("{p}: {e}"))
                .collect(),
        );
        list("extra (not imported)", self.extra.clone());
        out
    }
}

/// The generation of `(identity, prompt_id, seed)` in a method folder, whatever its image
/// extension.
pub fn find_generation(
    method_dir: &Path,
    identity: &str,
    prompt_id: &str,
    seed: u64,
) -> Option<PathBuf> {
    let dir = method_dir.join(identity).join(prompt_id);
    IMAGE_EXTENSIONS
        .iter()
        .flat_map(|e| [e.to_string(), e.to_ascii_uppercase()])
        .map(|e| dir.join(format!("{seed}.{e}")))
        .find(|p| p.is_file())
}

/// The expected files found in a method folder: (`<identity>/<prompt_id>/<seed>`, file).
pub type FoundFiles = Vec<(String, PathBuf)>;

/// Compares `folder` with the plan; decodes every expected image (on all cores).
pub fn check_folder(
    folder: &Path,
    jobs: &[Job],
) -> Result<(MethodFile, ImportReport, FoundFiles), BenchError> {
    let method = MethodFile::load(&folder.join(METHOD_FILE))?;
    let expected: BTreeMap<String, &Job> = jobs
        .iter()
        .map(|j| (j.output.trim_end_matches(".png").to_string(), j))
        .collect();
    let mut found: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut extra = Vec::new();
    for entry in walkdir::WalkDir::new(folder)
        .min_depth(1)
        .sort_by_file_name()
    {
        let entry =
            entry.map_err(|e| BenchError::invalid(folder, format!("reading the folder: {e}")))?;
        if entry.file_type().is_dir() {
            continue;
        }
        let rel = entry.path().strip_prefix(folder).expect("under folder");
        let rel_str = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        if rel_str == METHOD_FILE || rel_str.starts_with('.') || rel_str.contains("/.") {
            continue;
        }
        let ext_ok = entry
            .path()
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()));
        let stem = match rel_str.rsplit_once('.') {
            Some((stem, _)) if ext_ok => stem.to_string(),
            _ => {
                extra.push(rel_str);
                continue;
            }
        };
        if expected.contains_key(&stem) && !found.contains_key(&stem) {
            found.insert(stem, entry.path().to_path_buf());
        } else {
            extra.push(rel_str);
        }
    }
    let missing: Vec<String> = expected
        .iter()
        .filter(|(stem, _)| !found.contains_key(*stem))
        .map(|(_, j)| j.output.clone())
        .collect();
    let found_list: Vec<(String, PathBuf)> = found.into_iter().collect();
    let mut unreadable: Vec<(String, String)> = found_list
        .par_iter()
        .filter_map(|(stem, path)| {
            let err = match std::fs::read(path) {
                Ok(bytes) => decode(&bytes, DEFAULT_MAX_PIXELS)
                    .err()
                    .map(|e| e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            err.map(|e| (format!("{stem}.{}", ext_of(path)), e))
        })
        .collect();
    unreadable.sort();
    let report = ImportReport {
        method: method.name.clone(),
        expected: expected.len(),
        found: found_list.len(),
        missing,
        extra,
        unreadable,
    };
    Ok((method, report, found_list))
}

fn ext_of(p: &Path) -> String {
    p.extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Checks `folder` and copies its expected images and `method.toml` into
/// `generations/<name>/`, replacing a previous import of the same name whole.
pub fn import(bench: &BenchDir, folder: &Path, jobs: &[Job]) -> Result<ImportReport, BenchError> {
    let (method, report, found) = check_folder(folder, jobs)?;
    if method.name == crate::baselines::COPY_REFERENCE {
        return Err(BenchError::invalid(
            folder.join(METHOD_FILE),
            "`copy-reference` is built in; name the method something else",
        ));
    }
    let target = bench.method_dir(&method.name);
    let parent = bench.generations_dir();
    let staging = parent.join(format!(".staging-{}", method.name));
    let old = parent.join(format!(".old-{}", method.name));
    for p in [&staging, &old] {
        if p.exists() {
            std::fs::remove_dir_all(p).map_err(|e| BenchError::io(p, e))?;
        }
    }
    std::fs::create_dir_all(&staging).map_err(|e| BenchError::io(&staging, e))?;
    let dirs: BTreeSet<PathBuf> = found
        .iter()
        .filter_map(|(stem, _)| staging.join(stem).parent().map(Path::to_path_buf))
        .collect();
    for d in dirs {
        std::fs::create_dir_all(&d).map_err(|e| BenchError::io(&d, e))?;
    }
    found.par_iter().try_for_each(|(stem, path)| {
        let dest = staging.join(format!("{stem}.{}", ext_of(path)));
        std::fs::copy(path, &dest)
            .map(|_| ())
            .map_err(|e| BenchError::io(&dest, e))
    })?;
    let dest = staging.join(METHOD_FILE);
    std::fs::copy(folder.join(METHOD_FILE), &dest).map_err(|e| BenchError::io(&dest, e))?;
    if target.exists() {
        std::fs::rename(&target, &old).map_err(|e| BenchError::io(&target, e))?;
    }
    std::fs::rename(&staging, &target).map_err(|e| BenchError::io(&target, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| BenchError::io(&old, e))?;
    }
    Ok(report)
}
