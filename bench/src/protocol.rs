//! The benchmark protocol: a versioned TOML file in `datasets/benchmarks/` naming the reference
//! sets, the split prompts (with `{class}` and `{trigger}` placeholders) and the seeds. Every
//! method is generated and scored against the same file, so its sha256 goes into the leaderboard.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use idforge_core::hash::sha256_hex;
use serde::Deserialize;

use crate::error::BenchError;

/// A parsed, validated protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct Protocol {
    /// e.g. `idforge-v1`.
    pub name: String,
    /// The file's own version number (a changed prompt is a new version).
    pub version: u32,
    /// One paragraph for readers.
    pub description: String,
    /// Seeds per (reference, prompt).
    pub seeds: Vec<u64>,
    /// How many reference images per identity a method receives.
    pub references_per_identity: usize,
    /// The class word when the references name none.
    pub class_word: String,
    /// Prompt categories in display order.
    pub categories: Vec<String>,
    /// The reference sets, in display order.
    pub sets: Vec<SetSpec>,
    /// The prompts, in file order.
    pub prompts: Vec<PromptSpec>,
    /// sha256 of the file's bytes.
    pub sha256: String,
    /// The original text (copied into a bench folder as is).
    pub text: String,
}

/// A reference set of the protocol.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSpec {
    /// `in-train`, `out-of-train`, `out-of-domain`.
    pub name: String,
    /// What the set holds.
    #[serde(default)]
    pub description: String,
}

/// One prompt, split as idforge's captions are.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    /// Stable id, also the generations' folder name (`clothing-01`).
    pub id: String,
    /// One of the protocol's categories.
    pub category: String,
    /// The person (with `{class} {trigger}`), expression, view, shot, style.
    pub general: String,
    /// Behind / around the person; empty for none.
    #[serde(default)]
    pub background: String,
    /// Body, clothing, pose; empty for none.
    #[serde(default)]
    pub body: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    protocol: Header,
    sets: Vec<SetSpec>,
    prompts: Vec<PromptSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: String,
    version: u32,
    #[serde(default)]
    description: String,
    seeds: Vec<u64>,
    #[serde(default = "one")]
    references_per_identity: usize,
    #[serde(default = "person")]
    class_word: String,
    categories: Vec<String>,
}

fn one() -> usize {
    1
}

fn person() -> String {
    "person".into()
}

impl Protocol {
    /// Reads and validates a protocol file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, BenchError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses `text`; `path` names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, BenchError> {
        let bad = |m: String| BenchError::invalid(path, m);
        let file: File = toml::from_str(text).map_err(|e| bad(format!("not a protocol: {e}")))?;
        let h = file.protocol;
        if h.seeds.is_empty() {
            return Err(bad("`seeds` is empty: give at least one seed".into()));
        }
        if h.seeds.iter().collect::<BTreeSet<_>>().len() != h.seeds.len() {
            return Err(bad("`seeds` has duplicates".into()));
        }
        if h.references_per_identity == 0 {
            return Err(bad("`references_per_identity` must be at least 1".into()));
        }
        if file.sets.is_empty() {
            return Err(bad("no [[sets]]: name at least one reference set".into()));
        }
        unique(file.sets.iter().map(|s| s.name.as_str()), "set name").map_err(&bad)?;
        for s in &file.sets {
            check_name(&s.name).map_err(|m| bad(format!("set `{}`: {m}", s.name)))?;
        }
        unique(h.categories.iter().map(String::as_str), "category").map_err(&bad)?;
        if file.prompts.is_empty() {
            return Err(bad("no [[prompts]]".into()));
        }
        unique(file.prompts.iter().map(|p| p.id.as_str()), "prompt id").map_err(&bad)?;
        for p in &file.prompts {
            let at = |m: String| bad(format!("prompt `{}`: {m}", p.id));
            check_name(&p.id).map_err(at)?;
            if !h.categories.contains(&p.category) {
                return Err(at(format!(
                    "category `{}` is not in `categories` ({})",
                    p.category,
                    h.categories.join(", ")
                )));
            }
            if p.general.matches("{class}").count() != 1 {
                return Err(at("`general` must hold `{class}` exactly once".into()));
            }
            for (part, t) in [
                ("general", &p.general),
                ("background", &p.background),
                ("body", &p.body),
            ] {
                if part != "general" && (t.contains("{class}") || t.contains("{trigger}")) {
                    return Err(at(format!("`{part}` must not hold a placeholder")));
                }
                let rest = t.replace("{class}", "").replace("{trigger}", "");
                if rest.contains('{') || rest.contains('}') {
                    return Err(at(format!(
                        "`{part}` has an unknown placeholder (only {{class}} and {{trigger}})"
                    )));
                }
            }
        }
        Ok(Protocol {
            name: h.name,
            version: h.version,
            description: h.description,
            seeds: h.seeds,
            references_per_identity: h.references_per_identity,
            class_word: h.class_word,
            categories: h.categories,
            sets: file.sets,
            prompts: file.prompts,
            sha256: sha256_hex(text.as_bytes()),
            text: text.to_string(),
        })
    }

    /// The prompt with id `id`.
    pub fn prompt(&self, id: &str) -> Option<&PromptSpec> {
        self.prompts.iter().find(|p| p.id == id)
    }

    /// The builtin protocols' folder in a source checkout (for `--help` texts and the demo).
    pub fn builtin_dir() -> PathBuf {
        PathBuf::from("datasets/benchmarks")
    }
}

/// Folder-safe names: they become folder names of the generations layout.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("use letters, digits, `-`, `_` or `.` (it becomes a folder name)".into());
    }
    Ok(())
}

fn unique<'a>(names: impl Iterator<Item = &'a str>, what: &str) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for n in names {
        if !seen.insert(n) {
            return Err(format!("{what} `{n}` appears twice"));
        }
    }
    Ok(())
}

/// The three parts of a prompt, filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptParts {
    /// `P_general`.
    pub general: String,
    /// `P_bg`.
    pub background: String,
    /// `P_body`.
    pub body: String,
}

impl PromptParts {
    /// The whole prompt: the non-empty parts joined by `, `.
    pub fn joined(&self) -> String {
        [&self.general, &self.background, &self.body]
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl PromptSpec {
    /// The parts with `{class}` and `{trigger}` filled in; no trigger (or an empty one) leaves
    /// no gap, and `a` before a class word that starts with a vowel becomes `an`.
    pub fn parts(&self, class_word: &str, trigger: Option<&str>) -> PromptParts {
        let general = fill(&self.general, class_word, trigger.unwrap_or(""));
        PromptParts {
            general,
            background: self.background.trim().to_string(),
            body: self.body.trim().to_string(),
        }
    }

    /// The whole prompt as a method is given it.
    pub fn text(&self, class_word: &str, trigger: Option<&str>) -> String {
        self.parts(class_word, trigger).joined()
    }

    /// The prompt CLIP-T compares with: the trigger, meaningless to CLIP, removed.
    pub fn text_without_trigger(&self, class_word: &str) -> String {
        self.text(class_word, None)
    }
}

fn fill(template: &str, class_word: &str, trigger: &str) -> String {
    let vowel = class_word
        .chars()
        .next()
        .is_some_and(|c| "aeiouAEIOU".contains(c));
    let mut t = template.to_string();
    if vowel {
        t = t.replace(" a {class}", " an {class}");
        if let Some(rest) = t.strip_prefix("a {class}") {
            t = format!("an {{class}}{rest}");
        }
        if let Some(rest) = t.strip_prefix("A {class}") {
            t = format!("An {{class}}{rest}");
        }
    }
    let t = t
        .replace("{class}", class_word)
        .replace("{trigger}", trigger);
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin(name: &str) -> Protocol {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../datasets/benchmarks")
            .join(name);
        Protocol::load(path).unwrap()
    }

    #[test]
    fn the_builtin_protocols_are_valid() {
        let v1 = builtin("idforge-v1.toml");
        assert_eq!(v1.name, "idforge-v1");
        assert_eq!(v1.seeds.len(), 5);
        assert_eq!(v1.categories.len(), 7);
        assert_eq!(v1.prompts.len(), 42);
        for c in &v1.categories {
            assert_eq!(
                v1.prompts.iter().filter(|p| &p.category == c).count(),
                6,
                "{c}"
            );
        }
        let names: Vec<_> = v1.sets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["in-train", "out-of-train", "out-of-domain"]);
        let demo = builtin("demo-v1.toml");
        assert_eq!(demo.seeds, [0, 1]);
        assert_eq!(demo.prompts.len(), 4);
    }

    #[test]
    fn placeholders_fill_without_gaps_and_fix_the_article() {
        let p = PromptSpec {
            id: "x".into(),
            category: "style".into(),
            general: "a photo of a {class} {trigger} smiling".into(),
            background: " in a park ".into(),
            body: String::new(),
        };
        assert_eq!(
            p.text("man", Some("img")),
            "a photo of a man img smiling, in a park"
        );
        assert_eq!(
            p.text_without_trigger("woman"),
            "a photo of a woman smiling, in a park"
        );
        assert_eq!(
            p.text_without_trigger("elderly man"),
            "a photo of an elderly man smiling, in a park"
        );
    }

    #[test]
    fn mistakes_are_named() {
        let base = r#"
[protocol]
name = "t"
version = 1
seeds = [0]
categories = ["style"]
[[sets]]
name = "in-train"
[[prompts]]
id = "p1"
category = "style"
general = "a {class} {trigger}"
"#;
        let path = Path::new("t.toml");
        assert!(Protocol::parse(base, path).is_ok());
        let err = |text: String| Protocol::parse(&text, path).unwrap_err().to_string();
        assert!(
            err(base.replace("\"style\"\ngeneral", "\"styl\"\ngeneral"))
                .contains("category `styl`")
        );
        assert!(err(base.replace("a {class} {trigger}", "a person")).contains("exactly once"));
        assert!(err(base.replace("{trigger}", "{trigger} {name}")).contains("unknown placeholder"));
        assert!(err(base.replace("seeds = [0]", "seeds = []")).contains("seeds"));
        assert!(err(base.replace("id = \"p1\"", "id = \"../p1\"")).contains("folder name"));
        assert!(err(base.replace("version = 1", "version = 1\nextra = 2")).contains("extra"));
    }
}
