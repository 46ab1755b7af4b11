//! Recipes: one TOML file that names a run and carries each stage's settings in its own table.
//!
//! ```toml
//! name = "demo"                 # runs/<name>/
//! runs_dir = "runs"             # optional, relative to the working directory
//!
//! [ingest]                      # read by the ingest stage, see its settings type
//! [[ingest.sources]]
//! kind = "folder"
//! path = "${IDFORGE_CACHE}/face-api-1.7.15/demo"
//! ```
//!
//! `${VAR}` in any string is replaced by the environment variable (`IDFORGE_CACHE` defaults to
//! the asset cache). Relative paths inside stage tables are relative to the recipe's folder.
//! Core knows only `name` and `runs_dir`; each stage deserialises its own table and rejects
//! unknown keys, so a typo is an error rather than a silently ignored setting.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::error::{CoreError, IoContext, Result};

/// A parsed recipe.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The file it was read from.
    pub path: PathBuf,
    /// Run name: outputs go to `<runs_dir>/<name>/`.
    pub name: String,
    /// Where runs live; `runs` by default.
    pub runs_dir: PathBuf,
    table: toml::Table,
}

impl Recipe {
    /// Reads and parses a recipe file, expanding `${VAR}` references.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).at(path)?;
        Self::parse(path, &text)
    }

    /// Parses recipe text; `path` names it in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let err = |message: String| CoreError::Recipe {
            path: path.to_path_buf(),
            message,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        expand_table(&mut table).map_err(err)?;
        let name = match table.remove("name") {
            Some(toml::Value::String(s)) => match crate::name::Name::new(s) {
                Ok(n) => n.into_string(),
                Err(e) => return Err(err(format!("`name` must be a plain folder name: {e}"))),
            },
            Some(_) => return Err(err("`name` must be a string".into())),
            None => {
                return Err(err(
                    "missing `name = \"...\"` (the run's folder name)".into()
                ));
            }
        };
        let runs_dir = match table.remove("runs_dir") {
            Some(toml::Value::String(s)) => PathBuf::from(s),
            Some(_) => return Err(err("`runs_dir` must be a string".into())),
            None => PathBuf::from("runs"),
        };
        Ok(Recipe {
            path: path.to_path_buf(),
            name,
            runs_dir,
            table,
        })
    }

    /// The folder relative paths in stage settings are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// Resolves a path from the recipe against its folder (absolute paths stay as they are).
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir().join(p)
        }
    }

    /// A stage's settings table, or `T::default()` if the recipe has none.
    pub fn stage<T: DeserializeOwned + Default>(&self, stage: &str) -> Result<T> {
        match self.table.get(stage) {
            None => Ok(T::default()),
            Some(v) => v
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| CoreError::Recipe {
                    path: self.path.clone(),
                    message: format!("[{stage}]: {e}"),
                }),
        }
    }
}

fn expand_table(t: &mut toml::Table) -> std::result::Result<(), String> {
    for (_, v) in t.iter_mut() {
        expand_value(v)?;
    }
    Ok(())
}

fn expand_value(v: &mut toml::Value) -> std::result::Result<(), String> {
    match v {
        toml::Value::String(s) => *s = expand_vars(s)?,
        toml::Value::Array(a) => {
            for x in a {
                expand_value(x)?;
            }
        }
        toml::Value::Table(t) => expand_table(t)?,
        _ => {}
    }
    Ok(())
}

/// Replaces `${VAR}` with the environment variable's value.
pub fn expand_vars(s: &str) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in `{s}`"))?;
        let var = &after[..end];
        let value = match std::env::var(var) {
            Ok(v) => v,
            Err(_) if var == "IDFORGE_CACHE" => crate::cache::cache_dir().display().to_string(),
            Err(_) => return Err(format!("`{s}` uses ${{{var}}}, which is not set")),
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Fake {
        workers: usize,
        path: String,
    }

    #[test]
    fn parses_name_and_stage_tables_with_variables() {
        let r = Recipe::parse(
            Path::new("/r/recipe.toml"),
            "name = \"demo\"\n[fake]\nworkers = 3\npath = \"${IDFORGE_TEST_VAR_UNSET_OK:-}x\"",
        );
        assert!(r.is_err(), "unset variables are an error");
        // SAFETY: tests in this module do not read this variable concurrently.
        unsafe { std::env::set_var("IDFORGE_RECIPE_TEST", "/data") };
        let r = Recipe::parse(
            Path::new("/r/recipe.toml"),
            "name = \"demo\"\n[fake]\nworkers = 3\npath = \"${IDFORGE_RECIPE_TEST}/x\"",
        )
        .unwrap();
        assert_eq!(r.name, "demo");
        assert_eq!(
            r.stage::<Fake>("fake").unwrap(),
            Fake {
                workers: 3,
                path: "/data/x".into()
            }
        );
        assert_eq!(r.stage::<Fake>("other").unwrap(), Fake::default());
        assert_eq!(r.resolve(Path::new("a.csv")), PathBuf::from("/r/a.csv"));
    }

    #[test]
    fn unknown_keys_and_bad_names_are_errors_that_say_where() {
        let r = Recipe::parse(Path::new("x.toml"), "name = \"d\"\n[fake]\nworkerz = 3").unwrap();
        let e = r.stage::<Fake>("fake").unwrap_err().to_string();
        assert!(e.contains("[fake]") && e.contains("workerz"), "{e}");
        let e = Recipe::parse(Path::new("x.toml"), "name = \"../up\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("plain folder name"), "{e}");
        let e = Recipe::parse(Path::new("x.toml"), "runs_dir = \"r\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing `name"), "{e}");
    }
}
