//! Prompt files: the instructions sent to a vision-language or text model, versioned as files in
//! `datasets/prompts/` so that a caption can always be traced to the words that produced it and
//! a changed prompt (a new `version`) re-captions instead of mixing two prompts in one dataset.
//!
//! ```toml
//! version = "one-call-v1"   # goes into the cache key and the `prompt_version` column
//! kind = "one-call"         # one-call | caption | split
//! system = "..."
//! user = "..."              # `{caption}` is replaced in `split` prompts
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::CaptionError;

/// What a prompt asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptKind {
    /// Image in, the three parts out as JSON.
    OneCall,
    /// Image in, one detailed caption out (two-call mode, first call).
    Caption,
    /// Caption in, the three parts out as JSON (the `llm` splitter).
    Split,
}

/// A loaded prompt file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompt {
    /// The version string: part of every cache key and stored with each caption.
    pub version: String,
    /// What the prompt asks for.
    pub kind: PromptKind,
    /// The system message.
    pub system: String,
    /// The user message (`{caption}` is the caption, in split prompts).
    pub user: String,
    /// Where it was read from.
    #[serde(skip)]
    pub path: PathBuf,
}

impl Prompt {
    /// Reads a prompt file and checks it is of the `expected` kind.
    pub fn load(path: &Path, expected: PromptKind) -> Result<Self, CaptionError> {
        let text = std::fs::read_to_string(path).map_err(|e| CaptionError::Prompt {
            path: path.to_path_buf(),
            message: format!("{e} (prompt files live in datasets/prompts/)"),
        })?;
        Self::parse(path, &text, expected)
    }

    /// The prompt shipped with idforge for `kind` (`datasets/prompts/*-v1.toml`, compiled in so
    /// that an installed binary has them).
    pub fn builtin(kind: PromptKind) -> Self {
        let (name, text) = match kind {
            PromptKind::OneCall => (
                "one-call-v1.toml",
                include_str!("../../datasets/prompts/one-call-v1.toml"),
            ),
            PromptKind::Caption => (
                "caption-v1.toml",
                include_str!("../../datasets/prompts/caption-v1.toml"),
            ),
            PromptKind::Split => (
                "split-v1.toml",
                include_str!("../../datasets/prompts/split-v1.toml"),
            ),
        };
        Self::parse(&Path::new("datasets/prompts").join(name), text, kind)
            .expect("the shipped prompts are valid")
    }

    /// Parses prompt text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str, expected: PromptKind) -> Result<Self, CaptionError> {
        let err = |message: String| CaptionError::Prompt {
            path: path.to_path_buf(),
            message,
        };
        let mut prompt: Prompt = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        if prompt.kind != expected {
            return Err(err(format!(
                "is a {:?} prompt where a {expected:?} prompt is needed",
                prompt.kind
            )));
        }
        if prompt.version.trim().is_empty() {
            return Err(err("`version` is empty".into()));
        }
        if expected == PromptKind::Split && !prompt.user.contains("{caption}") {
            return Err(err(
                "a split prompt's `user` text must contain `{caption}`".into()
            ));
        }
        prompt.path = path.to_path_buf();
        Ok(prompt)
    }

    /// The user message with `{caption}` filled in.
    pub fn user_with_caption(&self, caption: &str) -> String {
        self.user.replace("{caption}", caption)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompts_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/prompts")
    }

    #[test]
    fn the_shipped_prompts_load_with_their_kinds() {
        let d = prompts_dir();
        let one = Prompt::load(&d.join("one-call-v1.toml"), PromptKind::OneCall).unwrap();
        assert_eq!(one.version, "one-call-v1");
        let cap = Prompt::load(&d.join("caption-v1.toml"), PromptKind::Caption).unwrap();
        assert_eq!(cap.version, "caption-v1");
        let split = Prompt::load(&d.join("split-v1.toml"), PromptKind::Split).unwrap();
        assert!(split.user_with_caption("X Y").contains("X Y"));
        let wrong = Prompt::load(&d.join("split-v1.toml"), PromptKind::OneCall).unwrap_err();
        assert!(
            wrong.to_string().contains("Split prompt where a OneCall"),
            "{wrong}"
        );
        assert_eq!(Prompt::builtin(PromptKind::OneCall).user, one.user);
    }
}
