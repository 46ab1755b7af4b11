//! `method.toml`: who made a folder of generations, with what, and what it cost — the cost
//! columns of the leaderboard sit beside the quality columns.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::BenchError;
use crate::leaderboard::{Cost, CostSource, MethodEntry};

/// The parsed file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodFile {
    /// Display name; also the folder name under `generations/` (letters, digits, `-_.`).
    pub name: String,
    /// e.g. `SDXL 1.0`.
    pub base_model: Option<String>,
    /// Paper or code.
    pub link: Option<String>,
    /// The trigger word in the prompts it was given (`img` for PhotoMaker), removed for CLIP-T.
    pub trigger: Option<String>,
    /// Free-form settings (steps, guidance, adapter scale…), shown as given.
    #[serde(default)]
    pub settings: BTreeMap<String, toml::Value>,
    /// What it cost: figures typed in (reported) or measured by idforge.
    #[serde(default)]
    pub cost: CostFile,
}

/// `[cost]` of `method.toml`: figures typed in are reported; those idforge measured name how
/// in `[cost.measured.<figure>]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostFile {
    /// Training or tuning time, minutes: per identity for methods tuned per identity (0 for
    /// tuning-free methods), the one-off training of a general adapter trained for the bench.
    pub training_minutes: Option<f64>,
    /// Peak memory while training, GiB.
    pub training_peak_memory_gib: Option<f64>,
    /// Peak memory while generating, GiB.
    pub peak_memory_gib: Option<f64>,
    /// Extra disk per identity, MiB.
    pub disk_per_identity_mib: Option<f64>,
    /// Inference seconds per image.
    pub seconds_per_image: Option<f64>,
    /// The hardware the reported figures were measured on.
    pub hardware: Option<String>,
    /// Figure key → how idforge measured it (written by `idforge bench generate`); a figure
    /// without an entry is reported.
    #[serde(default)]
    pub measured: BTreeMap<String, MeasuredBy>,
}

/// `[cost.measured.<figure>]`: the command and machine behind a measured figure.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasuredBy {
    /// e.g. `idforge bench generate`.
    pub by: String,
    /// The machine.
    pub hardware: String,
    /// What exactly was measured.
    pub note: Option<String>,
}

impl CostFile {
    /// The figures with their keys ([`crate::leaderboard::COST_KEYS`]).
    fn figures(&self) -> [(&'static str, Option<f64>); 5] {
        [
            ("training_minutes", self.training_minutes),
            ("training_peak_memory_gib", self.training_peak_memory_gib),
            ("peak_memory_gib", self.peak_memory_gib),
            ("disk_per_identity_mib", self.disk_per_identity_mib),
            ("seconds_per_image", self.seconds_per_image),
        ]
    }
}

impl MethodFile {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, BenchError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            BenchError::invalid(
                path,
                format!("cannot read the method file ({e}); every method folder needs a method.toml with at least `name`"),
            )
        })?;
        let file: MethodFile = toml::from_str(&text)
            .map_err(|e| BenchError::invalid(path, format!("not a method file: {e}")))?;
        file.check().map_err(|m| BenchError::invalid(path, m))?;
        Ok(file)
    }

    fn check(&self) -> Result<(), String> {
        let n = &self.name;
        if n.is_empty()
            || n.starts_with('.')
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "name {n:?}: use letters, digits, `-`, `_` or `.` (it becomes a folder name)"
            ));
        }
        let figures = self.cost.figures();
        for (what, v) in figures {
            if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err(format!("cost.{what} must be a number ≥ 0"));
            }
        }
        for key in self.cost.measured.keys() {
            match figures.iter().find(|(k, _)| k == key) {
                None => {
                    return Err(format!(
                        "cost.measured.{key}: not a cost figure (one of {})",
                        figures.map(|(k, _)| k).join(", ")
                    ));
                }
                Some((_, None)) => {
                    return Err(format!(
                        "cost.measured.{key}: says how cost.{key} was measured, but cost.{key} \
                         is not given"
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The leaderboard's description of the method.
    pub fn entry(&self, builtin: bool) -> MethodEntry {
        MethodEntry {
            name: self.name.clone(),
            builtin,
            base_model: self.base_model.clone(),
            link: self.link.clone(),
            trigger: self.trigger.clone().filter(|t| !t.is_empty()),
            settings: self
                .settings
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect(),
            cost: Cost {
                training_minutes: self.cost.training_minutes,
                training_peak_memory_gib: self.cost.training_peak_memory_gib,
                peak_memory_gib: self.cost.peak_memory_gib,
                disk_per_identity_mib: self.cost.disk_per_identity_mib,
                seconds_per_image: self.cost.seconds_per_image,
                hardware: self.cost.hardware.clone(),
                sources: self
                    .cost
                    .figures()
                    .into_iter()
                    .filter(|(_, v)| v.is_some())
                    .map(|(k, _)| {
                        let source = match self.cost.measured.get(k) {
                            Some(m) => CostSource::Measured {
                                by: m.by.clone(),
                                hardware: m.hardware.clone(),
                                note: m.note.clone(),
                            },
                            None => CostSource::Reported,
                        };
                        (k.to_string(), source)
                    })
                    .collect(),
            },
        }
    }

    /// The file's text for `entry`-like values (used by the baselines).
    pub fn to_toml(&self) -> String {
        let mut out = format!("name = {}\n", quote(&self.name));
        for (k, v) in [
            ("base_model", &self.base_model),
            ("link", &self.link),
            ("trigger", &self.trigger),
        ] {
            if let Some(v) = v {
                out.push_str(&format!("{k} = {}\n", quote(v)));
            }
        }
        if !self.settings.is_empty() {
            out.push_str("\n[settings]\n");
            for (k, v) in &self.settings {
                out.push_str(&format!("{} = {v}\n", quote(k)));
            }
        }
        let c = &self.cost;
        let mut cost = String::new();
        for (k, v) in c.figures() {
            if let Some(v) = v {
                cost.push_str(&format!("{k} = {v:?}\n"));
            }
        }
        if let Some(h) = &c.hardware {
            cost.push_str(&format!("hardware = {}\n", quote(h)));
        }
        if !cost.is_empty() {
            out.push_str("\n[cost]\n");
            out.push_str(&cost);
        }
        for (k, m) in &c.measured {
            out.push_str(&format!(
                "\n[cost.measured.{k}]\nby = {}\nhardware = {}\n",
                quote(&m.by),
                quote(&m.hardware)
            ));
            if let Some(n) = &m.note {
                out.push_str(&format!("note = {}\n", quote(n)));
            }
        }
        out
    }
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<MethodFile, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("method.toml");
        std::fs::write(&path, text).unwrap();
        MethodFile::load(&path).map_err(|e| e.to_string())
    }

    const MEASURED: &str = "name = \"m\"\n\n[cost]\ntraining_minutes = 2.5\n\
        seconds_per_image = 0.25\nhardware = \"A100\"\n\n\
        [cost.measured.seconds_per_image]\nby = \"idforge bench generate\"\n\
        hardware = \"CPU x\"\nnote = \"rendering only\"\n";

    #[test]
    fn measured_figures_carry_their_source_and_typed_ones_are_reported() {
        let file = parse(MEASURED).unwrap();
        let cost = file.entry(false).cost;
        assert_eq!(
            cost.source("seconds_per_image"),
            Some(CostSource::Measured {
                by: "idforge bench generate".into(),
                hardware: "CPU x".into(),
                note: Some("rendering only".into()),
            })
        );
        assert_eq!(cost.source("training_minutes"), Some(CostSource::Reported));
        assert_eq!(cost.source("peak_memory_gib"), None);
        // What bench generate writes reads back the same.
        assert_eq!(parse(&file.to_toml()).unwrap(), file);
    }

    #[test]
    fn a_source_without_its_figure_or_for_an_unknown_figure_is_refused() {
        let no_figure = MEASURED.replace("seconds_per_image = 0.25\n", "");
        let err = parse(&no_figure).unwrap_err();
        assert!(
            err.contains("cost.measured.seconds_per_image") && err.contains("not given"),
            "{err}"
        );
        let unknown = MEASURED.replace(
            "[cost.measured.seconds_per_image]",
            "[cost.measured.seconds]",
        );
        let err = parse(&unknown).unwrap_err();
        assert!(err.contains("not a cost figure"), "{err}");
        let negative = MEASURED.replace("2.5", "-1");
        assert!(
            parse(&negative)
                .unwrap_err()
                .contains("cost.training_minutes")
        );
    }
}
