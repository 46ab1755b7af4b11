//! Building the captioner and splitter a `[caption]` table asks for.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::backend::Backend;

use crate::attributes::AttributesCaptioner;
use crate::captioner::{LlmSplitter, OpenAiCaptioner};
use crate::error::CaptionError;
use crate::import::ImportCaptioner;
use crate::openai::{ChatClient, RetryPolicy};
use crate::prompts::{Prompt, PromptKind};
use crate::rules;
use crate::settings::{CallMode, CaptionSettings, CaptionerKind, OpenAiSettings, SplitterKind};
use crate::stage::OfflineCaptioner;

/// How the captions are produced.
pub enum Engine {
    /// An OpenAI-compatible server; `splitter` is used in two-call mode.
    Server {
        /// The captioner.
        captioner: Arc<OpenAiCaptioner>,
        /// How its whole captions are divided.
        splitter: Splitter,
    },
    /// An offline captioner (attributes, import), then `splitter` where it answers in one text.
    Offline {
        /// The captioner.
        captioner: Box<dyn OfflineCaptioner>,
        /// How its whole captions are divided.
        splitter: Splitter,
    },
}

/// How a whole caption is divided into parts.
pub enum Splitter {
    /// The offline clause classifier.
    Rules,
    /// A text model.
    Llm(Arc<LlmSplitter>),
}

impl Splitter {
    /// The `splitter` column: `rules-v1` or `llm:<model>:<prompt version>`.
    pub fn name(&self) -> String {
        match self {
            Splitter::Rules => rules::RULES_VERSION.to_string(),
            Splitter::Llm(s) => s.name(),
        }
    }
}

/// Where the pieces of an engine come from besides the settings.
pub struct EngineInputs<'a, B: Backend> {
    /// Resolves a path from the recipe (prompt files, import files) against its folder.
    pub resolve: &'a dyn Fn(&Path) -> PathBuf,
    /// face-api's `model/` folder, for the `attributes` captioner.
    pub face_api_models: Option<PathBuf>,
    /// The API key (from `api_key_env`), if any.
    pub api_key: Option<String>,
    /// Where the networks run.
    pub device: B::Device,
}

fn client(
    o: &OpenAiSettings,
    model: &str,
    api_key: Option<String>,
) -> Result<ChatClient, CaptionError> {
    let policy = RetryPolicy {
        max_retries: o.max_retries.u32(),
        base_backoff: o.backoff_s.duration(),
        max_backoff: o.max_backoff_s.duration(),
        timeout: o.timeout_s.duration(),
    };
    ChatClient::new(&o.base_url, model, api_key, policy)
        .map_err(|e| CaptionError::Settings(format!("[caption.openai] {e}")))
}

fn prompt(
    path: &Option<PathBuf>,
    kind: PromptKind,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Prompt, CaptionError> {
    match path {
        Some(p) => Prompt::load(&resolve(p), kind),
        None => Ok(Prompt::builtin(kind)),
    }
}

impl Engine {
    /// The engine `settings` describe.
    pub fn from_settings<B: Backend>(
        settings: &CaptionSettings,
        inputs: EngineInputs<'_, B>,
    ) -> Result<Self, CaptionError>
    where
        AttributesCaptioner<B>: OfflineCaptioner + 'static,
    {
        settings.validate().map_err(CaptionError::Settings)?;
        let o = &settings.openai;
        let splitter = || -> Result<Splitter, CaptionError> {
            Ok(match settings.splitter {
                SplitterKind::Rules => Splitter::Rules,
                SplitterKind::Llm => {
                    let model = if o.split_model.is_empty() {
                        &o.model
                    } else {
                        &o.split_model
                    };
                    Splitter::Llm(Arc::new(LlmSplitter::new(
                        client(o, model, inputs.api_key.clone())?,
                        prompt(&o.split_prompt, PromptKind::Split, inputs.resolve)?,
                        o.schema,
                        o.json_retries.u32(),
                        o.max_tokens,
                        o.min_coverage.get(),
                    )))
                }
            })
        };
        Ok(match settings.captioner {
            CaptionerKind::Openai => {
                let kind = match o.mode {
                    CallMode::OneCall => PromptKind::OneCall,
                    CallMode::TwoCall => PromptKind::Caption,
                };
                Engine::Server {
                    captioner: Arc::new(OpenAiCaptioner::new(
                        client(o, &o.model, inputs.api_key.clone())?,
                        prompt(&o.prompt, kind, inputs.resolve)?,
                        o.schema,
                        o.json_retries.u32(),
                        o.max_tokens,
                        o.temperature,
                    )),
                    splitter: splitter()?,
                }
            }
            CaptionerKind::Import => Engine::Offline {
                captioner: Box::new(match &settings.import.file {
                    Some(f) => ImportCaptioner::from_file(&(inputs.resolve)(f))?,
                    None => ImportCaptioner::from_ingest(),
                }),
                splitter: splitter()?,
            },
            CaptionerKind::Attributes => {
                let dir = settings
                    .attributes
                    .weights
                    .as_deref()
                    .map(inputs.resolve)
                    .or(inputs.face_api_models.clone())
                    .ok_or_else(|| {
                        CaptionError::Settings(
                            "the attributes captioner needs face-api's weights: run \
                             tools/fetch-assets, or set [caption.attributes] weights"
                                .into(),
                        )
                    })?;
                Engine::Offline {
                    captioner: Box::new(AttributesCaptioner::<B>::load(&dir, &inputs.device)?),
                    splitter: Splitter::Rules,
                }
            }
        })
    }
}

#[allow(unused)]
const _: &str = rules::RULES_VERSION;
