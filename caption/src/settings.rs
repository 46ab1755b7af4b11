//! The `[caption]` table of a recipe. Every field has a default; CLI flags override them.

use std::path::PathBuf;

use idforge_core::limits::{Concurrency, Delay, Fraction, Retries, Seconds, Shards, Threads};
use serde::{Deserialize, Serialize};

use crate::captioner::SchemaMode;

/// Which captioner writes the texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptionerKind {
    /// An OpenAI-compatible chat-completions server that takes images.
    Openai,
    /// Offline: face-api age, gender and expression plus the framing, templated.
    Attributes,
    /// Captions that came with the source rows, or from a file.
    Import,
}

/// How a whole caption is divided into the three parts (two-call mode, `import`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitterKind {
    /// The offline clause classifier.
    Rules,
    /// A text model over the same API, with a JSON schema.
    Llm,
}

/// One call (parts as JSON) or two (caption, then split).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallMode {
    /// The VLM answers `{general, background, body}` directly.
    OneCall,
    /// The VLM captions; the splitter divides the caption.
    TwoCall,
}

/// Settings of the caption stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptionSettings {
    /// `openai`, `attributes` or `import`.
    pub captioner: CaptionerKind,
    /// `rules` or `llm` (two-call mode and `import`; one-call answers in parts).
    pub splitter: SplitterKind,
    /// Token placed after the class word (PhotoMaker's is `img`).
    pub trigger: String,
    /// `auto`: the most frequent class word of each identity's captions; or a fixed word.
    pub class_word: String,
    /// Number of shards (each resumable on its own).
    pub shards: Shards,
    /// Worker threads for the offline captioner; 0 means one per core.
    pub threads: Threads,
    /// The server, for `openai` and the `llm` splitter.
    pub openai: OpenAiSettings,
    /// The offline captioner.
    pub attributes: AttributesSettings,
    /// Imported captions.
    pub import: ImportSettings,
}

impl Default for CaptionSettings {
    fn default() -> Self {
        CaptionSettings {
            captioner: CaptionerKind::Attributes,
            splitter: SplitterKind::Rules,
            trigger: "img".into(),
            class_word: "auto".into(),
            shards: Shards::lit(1),
            threads: Threads::lit(0),
            openai: Default::default(),
            attributes: Default::default(),
            import: Default::default(),
        }
    }
}

/// `[caption.openai]`: the server and how to talk to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiSettings {
    /// API root, e.g. `http://127.0.0.1:8000/v1` (vLLM, SGLang), `http://127.0.0.1:11434/v1`
    /// (Ollama), `http://127.0.0.1:8080/v1` (llama.cpp).
    pub base_url: String,
    /// Model name as the server knows it.
    pub model: String,
    /// Environment variable holding the API key (none sent when unset or empty).
    pub api_key_env: String,
    /// `one-call` or `two-call`.
    pub mode: CallMode,
    /// `auto`, `json_schema` or `instructions`.
    pub schema: SchemaMode,
    /// Prompt file of the captioning call (kind `one-call` or `caption` to match `mode`).
    /// Relative paths are resolved against the recipe's folder.
    pub prompt: Option<PathBuf>,
    /// Prompt file of the `llm` splitter (kind `split`).
    pub split_prompt: Option<PathBuf>,
    /// Model of the `llm` splitter; the captioning model when empty.
    pub split_model: String,
    /// Requests in flight at once.
    pub concurrency: Concurrency,
    /// Retries of 429 / 5xx / timeouts / connection errors per request.
    pub max_retries: Retries,
    /// Further requests when a reply is not the JSON asked for.
    pub json_retries: Retries,
    /// Per-request timeout, seconds.
    pub timeout_s: Seconds,
    /// Backoff before the first retry, seconds (doubled each retry, with jitter).
    pub backoff_s: Delay,
    /// Cap on any wait between retries, `Retry-After` included, seconds.
    pub max_backoff_s: Delay,
    /// `max_tokens` of each request.
    pub max_tokens: u32,
    /// `temperature` of captioning requests (splitting always uses 0).
    pub temperature: f32,
    /// Minimum share of the caption's content words an `llm` split must keep.
    pub min_coverage: Fraction,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        OpenAiSettings {
            base_url: "http://127.0.0.1:8000/v1".into(),
            model: String::new(),
            api_key_env: "OPENAI_API_KEY".into(),
            mode: CallMode::OneCall,
            schema: SchemaMode::Auto,
            prompt: None,
            split_prompt: None,
            split_model: String::new(),
            concurrency: Concurrency::lit(8),
            max_retries: Retries::lit(5),
            json_retries: Retries::lit(2),
            timeout_s: Seconds::lit(120.0),
            backoff_s: Delay::lit(0.5),
            max_backoff_s: Delay::lit(60.0),
            max_tokens: 512,
            temperature: 0.0,
            min_coverage: Fraction::lit(0.9),
        }
    }
}

/// `[caption.attributes]`: the offline captioner.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttributesSettings {
    /// Folder with the face-api weights; the asset cache by default.
    pub weights: Option<PathBuf>,
}

/// `[caption.import]`: where imported captions come from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImportSettings {
    /// A CSV (with a header) or JSON-lines file with a `caption` column and one of `image_id`,
    /// `source` or `crop_path`; the ingest `caption` column when absent.
    pub file: Option<PathBuf>,
}

impl CaptionSettings {
    /// Checks values a typo could make meaningless, naming the key to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.trigger.trim().is_empty() || self.trigger.contains(char::is_whitespace) {
            return Err(format!(
                "[caption] trigger = {:?} must be one word without spaces",
                self.trigger
            ));
        }
        if self.class_word.trim().is_empty() {
            return Err("[caption] class_word must be `auto` or a word".into());
        }
        let uses_server = self.captioner == CaptionerKind::Openai
            || (self.captioner == CaptionerKind::Import && self.splitter == SplitterKind::Llm);
        if uses_server {
            let o = &self.openai;
            if o.model.trim().is_empty() {
                return Err(
                    "[caption.openai] model is required: the model name your server serves \
                     (e.g. `Qwen/Qwen2.5-VL-7B-Instruct`)"
                        .into(),
                );
            }
            if !(0.0..=2.0).contains(&o.temperature) {
                return Err(format!(
                    "[caption.openai] temperature = {} must be from 0 to 2",
                    o.temperature
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_key() {
        CaptionSettings::default().validate().unwrap();
        let mut s = CaptionSettings {
            captioner: CaptionerKind::Openai,
            ..Default::default()
        };
        assert!(s.validate().unwrap_err().contains("[caption.openai] model"));
        s.openai.model = "m".into();
        s.validate().unwrap();
        s.trigger = "two words".into();
        assert!(s.validate().unwrap_err().contains("trigger"));
    }

    #[test]
    fn the_recipe_table_parses_with_kebab_and_snake_values() {
        let s: CaptionSettings = toml::from_str(
            "captioner = \"openai\"\nsplitter = \"llm\"\n[openai]\nmodel = \"m\"\nmode = \"two-call\"\nschema = \"instructions\"\n",
        )
        .unwrap();
        assert_eq!(s.openai.mode, CallMode::TwoCall);
        assert_eq!(s.openai.schema, SchemaMode::Instructions);
        let err = toml::from_str::<CaptionSettings>("captioner = \"gpt\"").unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
    }

    fn recipe(name: &str) -> idforge_core::recipe::Recipe {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../datasets/recipes")
            .join(name);
        idforge_core::recipe::Recipe::load(&path).unwrap()
    }

    #[test]
    fn the_example_recipe_lists_every_default() {
        let s: CaptionSettings = recipe("example-urls.toml").stage("caption").unwrap();
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::to_value(CaptionSettings::default()).unwrap()
        );
        s.validate().unwrap();
        let demo: CaptionSettings = recipe("demo.toml").stage("caption").unwrap();
        assert_eq!(demo.captioner, CaptionerKind::Attributes);
    }
}
