//! `method.toml`: who made a folder of generations, with what, and what it cost — the cost
//! columns of the leaderboard sit beside the quality columns.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::BenchError;
use crate::leaderboard::{Cost, MethodEntry};

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
    /// The authors' cost figures.
    #[serde(default)]
    pub cost: CostFile,
}

/// `[cost]` of `method.toml`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostFile {
    /// Training or tuning time per identity, minutes (0 for tuning-free methods).
    pub training_minutes: Option<f64>,
    /// Peak GPU memory, GiB.
    pub peak_memory_gib: Option<f64>,
    /// Extra disk per identity, MiB.
    pub disk_per_identity_mib: Option<f64>,
    /// Inference seconds per image.
    pub seconds_per_image: Option<f64>,
    /// The hardware the figures were measured on.
    pub hardware: Option<String>,
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
        for (what, v) in [
            ("training_minutes", self.cost.training_minutes),
            ("peak_memory_gib", self.cost.peak_memory_gib),
            ("disk_per_identity_mib", self.cost.disk_per_identity_mib),
            ("seconds_per_image", self.cost.seconds_per_image),
        ] {
            if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err(format!("cost.{what} must be a number ≥ 0"));
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
                peak_memory_gib: self.cost.peak_memory_gib,
                disk_per_identity_mib: self.cost.disk_per_identity_mib,
                seconds_per_image: self.cost.seconds_per_image,
                hardware: self.cost.hardware.clone(),
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
        for (k, v) in [
            ("training_minutes", c.training_minutes),
            ("peak_memory_gib", c.peak_memory_gib),
            ("disk_per_identity_mib", c.disk_per_identity_mib),
            ("seconds_per_image", c.seconds_per_image),
        ] {
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
        out
    }
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
