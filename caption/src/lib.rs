//! The caption stage: every kept face crop gets three texts, `P_general` (the person, face,
//! expression, framing), `P_bg` (what is behind them) and `P_body` (body, clothing, pose),
//! from a vision-language model or offline, with the identity's class word and trigger.
//!
//! - [`openai`]: the client for OpenAI-compatible servers (retries, backoff, usage);
//! - [`captioner`]: one-call / two-call captioning and the `llm` splitter, JSON validation;
//! - [`rules`]: the offline splitter; [`class_word`]: class word and trigger;
//! - [`cache`]: captions keyed by (image hash, captioner, model, prompt version);
//! - [`stage`]: the resumable stage that writes the `captions` table.

pub mod attributes;
pub mod cache;
pub mod captioner;
pub mod class_word;
pub mod engine;
pub mod error;
pub mod import;
pub mod openai;
pub mod prompts;
pub mod rules;
pub mod settings;
pub mod stage;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use error::CaptionError;
pub use settings::CaptionSettings;
