//! The captioners that ask a server, and the `llm` splitter: requests, JSON validation and the
//! fallback from a JSON schema to plain instructions.
//!
//! A reply that is not the JSON asked for is retried (`json_retries` more times) and then
//! recorded as a failure with every raw reply; a server without JSON-schema support (a 400/422
//! about `response_format`) switches the whole run to instructions plus validation.

use std::sync::atomic::{AtomicU8, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::openai::{ChatClient, ChatReply, ChatRequest, Message, split_schema};
use crate::prompts::Prompt;

/// How structured output is requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SchemaMode {
    /// `response_format` with a JSON schema; instructions if the server refuses it.
    #[default]
    Auto,
    /// Always `response_format` (a refusal is a failure).
    JsonSchema,
    /// Never `response_format`: instructions, then validation.
    Instructions,
}

/// The three texts, as a captioner or splitter produced them (before the trigger).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parts {
    /// `P_general`.
    pub general: String,
    /// `P_bg`; `None` when the captioner does not describe backgrounds.
    pub background: Option<String>,
    /// `P_body`; `None` when the captioner does not describe bodies.
    pub body: Option<String>,
}

/// What one captioning (or splitting) produced, and what it cost: the unit of the cache.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// The whole caption (two-call, import, attributes).
    pub caption: Option<String>,
    /// The parts, when the answer came in parts.
    pub parts: Option<Parts>,
    /// Every reply's content, in order (failed validations included).
    pub raw: Vec<String>,
    /// HTTP requests, retries included.
    pub attempts: u32,
    /// Wall time of the successful requests.
    pub latency_ms: u64,
    /// Prompt tokens over all requests that reported them.
    pub prompt_tokens: Option<u32>,
    /// Completion tokens over all requests that reported them.
    pub completion_tokens: Option<u32>,
}

impl Outcome {
    fn add(&mut self, reply: &ChatReply) {
        self.raw.push(reply.content.clone());
        self.attempts += reply.attempts;
        self.latency_ms += reply.latency.as_millis() as u64;
        let sum = |a: Option<u32>, b: Option<u32>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        self.prompt_tokens = sum(self.prompt_tokens, reply.prompt_tokens);
        self.completion_tokens = sum(self.completion_tokens, reply.completion_tokens);
    }

    /// Adds another outcome's costs (the split after the caption).
    pub fn absorb_costs(&mut self, other: &Outcome) {
        self.raw.extend(other.raw.iter().cloned());
        self.attempts += other.attempts;
        self.latency_ms += other.latency_ms;
        let sum = |a: Option<u32>, b: Option<u32>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        self.prompt_tokens = sum(self.prompt_tokens, other.prompt_tokens);
        self.completion_tokens = sum(self.completion_tokens, other.completion_tokens);
    }
}

/// A caption that could not be had; recorded in the table, never cached.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// Why.
    pub error: String,
    /// What the server said, reply by reply.
    pub raw: Vec<String>,
    /// HTTP requests made.
    pub attempts: u32,
}

/// Text appended to the user prompt when no JSON schema can be sent.
const JSON_INSTRUCTIONS: &str = "\n\nAnswer with only the JSON object, for example \
{\"general\": \"...\", \"background\": \"...\", \"body\": \"...\"}, and nothing else.";

/// Reads `{general, background, body}` from a reply: a JSON object with exactly those three
/// string keys and a non-empty `general`. Code fences and text around the object are tolerated
/// (models without schema support add them); anything else is an error saying what is wrong.
pub fn parse_parts(reply: &str) -> Result<Parts, String> {
    let trimmed = reply.trim();
    let candidate = match (trimmed.find('{'), trimmed.rfind('}')) {
        (Some(a), Some(b)) if b > a => &trimmed[a..=b],
        _ => return Err("no JSON object in the reply".into()),
    };
    let value: Value = serde_json::from_str(candidate).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("the reply is not a JSON object".into());
    };
    let mut extra: Vec<&String> = map
        .keys()
        .filter(|k| !matches!(k.as_str(), "general" | "background" | "body"))
        .collect();
    extra.sort();
    if !extra.is_empty() {
        return Err(format!("unexpected keys {extra:?}"));
    }
    let get = |k: &str| match map.get(k) {
        Some(Value::String(s)) => Ok(s.trim().to_string()),
        Some(other) => Err(format!("`{k}` is {other}, not a string")),
        None => Err(format!("`{k}` is missing")),
    };
    let general = get("general")?;
    if general.is_empty() {
        return Err("`general` is empty".into());
    }
    Ok(Parts {
        general,
        background: Some(get("background")?),
        body: Some(get("body")?),
    })
}

/// Content words of a text: lower-case alphanumeric tokens of three or more characters that are
/// not function words. What the `llm` splitter must not lose.
pub fn content_words(text: &str) -> Vec<String> {
    const STOP: &[&str] = &[
        "the", "and", "with", "her", "his", "their", "its", "for", "from", "into", "onto", "who",
        "that", "this", "are", "has", "have", "while", "which", "there", "they", "she", "him",
        "them", "one", "also", "behind", "photo", "image", "picture",
    ];
    text.split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
        .filter(|w| w.chars().count() >= 3 && !STOP.contains(&w.as_str()))
        .collect()
}

/// Share of the caption's content words found in the parts (as a multiset): 1.0 when nothing
/// was lost.
pub fn coverage(caption: &str, parts: &Parts) -> f64 {
    let want = content_words(caption);
    if want.is_empty() {
        return 1.0;
    }
    let mut have = std::collections::HashMap::<String, usize>::new();
    for text in [
        Some(&parts.general),
        parts.background.as_ref(),
        parts.body.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        for w in content_words(text) {
            *have.entry(w).or_default() += 1;
        }
    }
    let mut found = 0;
    for w in &want {
        if let Some(n) = have.get_mut(w)
            && *n > 0
        {
            *n -= 1;
            found += 1;
        }
    }
    found as f64 / want.len() as f64
}

/// Asks for JSON parts until a reply validates: the loop shared by the one-call captioner and
/// the `llm` splitter.
struct JsonAsker<'a> {
    client: &'a ChatClient,
    schema: SchemaMode,
    supported: &'a AtomicU8,
    json_retries: u32,
    max_tokens: u32,
    temperature: f32,
}

const SCHEMA_UNKNOWN: u8 = 0;
const SCHEMA_UNSUPPORTED: u8 = 2;

impl JsonAsker<'_> {
    async fn ask(
        &self,
        system: &str,
        user: &str,
        image: Option<(&str, &[u8])>,
        validate: impl Fn(&Parts) -> Result<(), String>,
    ) -> Result<Outcome, Failure> {
        let mut out = Outcome::default();
        let mut last_problem = String::new();
        let mut replies = 0;
        while replies <= self.json_retries {
            let use_schema = match self.schema {
                SchemaMode::JsonSchema => true,
                SchemaMode::Instructions => false,
                SchemaMode::Auto => self.supported.load(Ordering::Relaxed) != SCHEMA_UNSUPPORTED,
            };
            let text = if use_schema {
                user.to_string()
            } else {
                format!("{user}{JSON_INSTRUCTIONS}")
            };
            let message = match image {
                Some((mime, bytes)) => Message::user_with_image(&text, mime, bytes),
                None => Message::user(&text),
            };
            let req = ChatRequest {
                messages: vec![Message::system(system), message],
                response_format: use_schema.then(split_schema),
                max_tokens: self.max_tokens,
                temperature: self.temperature,
            };
            match self.client.chat(&req).await {
                Err(e)
                    if use_schema
                        && self.schema == SchemaMode::Auto
                        && e.is_schema_unsupported() =>
                {
                    out.attempts += e.attempts();
                    self.supported.store(SCHEMA_UNSUPPORTED, Ordering::Relaxed);
                    continue;
                }
                Err(e) => {
                    return Err(Failure {
                        error: e.to_string(),
                        raw: out.raw,
                        attempts: out.attempts + e.attempts(),
                    });
                }
                Ok(reply) => {
                    replies += 1;
                    out.add(&reply);
                    match parse_parts(&reply.content).and_then(|p| validate(&p).map(|()| p)) {
                        Ok(parts) => {
                            out.parts = Some(parts);
                            return Ok(out);
                        }
                        Err(problem) => last_problem = problem,
                    }
                }
            }
        }
        Err(Failure {
            error: format!("no valid JSON after {replies} replies: {last_problem}"),
            raw: out.raw,
            attempts: out.attempts,
        })
    }
}

/// One-call or two-call captioning through an OpenAI-compatible server.
pub struct OpenAiCaptioner {
    client: ChatClient,
    prompt: Prompt,
    schema: SchemaMode,
    supported: AtomicU8,
    json_retries: u32,
    max_tokens: u32,
    temperature: f32,
}

impl OpenAiCaptioner {
    /// `prompt` is a one-call prompt (parts as JSON) or a caption prompt (free text, split
    /// afterwards).
    pub fn new(
        client: ChatClient,
        prompt: Prompt,
        schema: SchemaMode,
        json_retries: u32,
        max_tokens: u32,
        temperature: f32,
    ) -> Self {
        OpenAiCaptioner {
            client,
            prompt,
            schema,
            supported: AtomicU8::new(SCHEMA_UNKNOWN),
            json_retries,
            max_tokens,
            temperature,
        }
    }

    /// The server's model name.
    pub fn model(&self) -> &str {
        self.client.model()
    }

    /// The prompt in use.
    pub fn prompt(&self) -> &Prompt {
        &self.prompt
    }

    /// Whether the answer comes in parts (one-call) or as one caption to split.
    pub fn answers_in_parts(&self) -> bool {
        self.prompt.kind == crate::prompts::PromptKind::OneCall
    }

    /// Captions one image (`mime` its media type).
    pub async fn caption(&self, mime: &str, image: &[u8]) -> Result<Outcome, Failure> {
        if self.answers_in_parts() {
            return self
                .asker()
                .ask(
                    &self.prompt.system,
                    &self.prompt.user,
                    Some((mime, image)),
                    |_| Ok(()),
                )
                .await;
        }
        let req = ChatRequest {
            messages: vec![
                Message::system(&self.prompt.system),
                Message::user_with_image(&self.prompt.user, mime, image),
            ],
            response_format: None,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
        };
        let reply = self.client.chat(&req).await.map_err(|e| Failure {
            error: e.to_string(),
            raw: vec![],
            attempts: e.attempts(),
        })?;
        let mut out = Outcome::default();
        out.add(&reply);
        let caption = reply.content.trim();
        if caption.is_empty() {
            return Err(Failure {
                error: "the server returned an empty caption".into(),
                raw: out.raw,
                attempts: out.attempts,
            });
        }
        out.caption = Some(caption.to_string());
        Ok(out)
    }

    fn asker(&self) -> JsonAsker<'_> {
        JsonAsker {
            client: &self.client,
            schema: self.schema,
            supported: &self.supported,
            json_retries: self.json_retries,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
        }
    }
}

/// The `llm` splitter: a text model divides a caption into the three parts; a split that loses
/// more than `1 − min_coverage` of the caption's content words is retried, then a failure.
pub struct LlmSplitter {
    client: ChatClient,
    prompt: Prompt,
    schema: SchemaMode,
    supported: AtomicU8,
    json_retries: u32,
    max_tokens: u32,
    min_coverage: f64,
}

impl LlmSplitter {
    /// A splitter on `client` with a `split` prompt.
    pub fn new(
        client: ChatClient,
        prompt: Prompt,
        schema: SchemaMode,
        json_retries: u32,
        max_tokens: u32,
        min_coverage: f64,
    ) -> Self {
        LlmSplitter {
            client,
            prompt,
            schema,
            supported: AtomicU8::new(SCHEMA_UNKNOWN),
            json_retries,
            max_tokens,
            min_coverage,
        }
    }

    /// `llm:<model>:<prompt version>`, the `splitter` column and part of the split cache key.
    pub fn name(&self) -> String {
        format!("llm:{}:{}", self.client.model(), self.prompt.version)
    }

    /// The text model's name.
    pub fn model(&self) -> &str {
        self.client.model()
    }

    /// The split prompt's version.
    pub fn version(&self) -> &str {
        &self.prompt.version
    }

    /// Splits one caption.
    pub async fn split(&self, caption: &str) -> Result<Outcome, Failure> {
        let asker = JsonAsker {
            client: &self.client,
            schema: self.schema,
            supported: &self.supported,
            json_retries: self.json_retries,
            max_tokens: self.max_tokens,
            temperature: 0.0,
        };
        let min = self.min_coverage;
        asker
            .ask(
                &self.prompt.system,
                &self.prompt.user_with_caption(caption),
                None,
                |parts| {
                    let c = coverage(caption, parts);
                    if c + 1e-9 < min {
                        Err(format!(
                            "the split keeps {:.0} % of the caption's words (at least {:.0} % required)",
                            100.0 * c,
                            100.0 * min
                        ))
                    } else {
                        Ok(())
                    }
                },
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_parse_strictly_but_tolerate_fences() {
        let p = parse_parts(
            "```json\n{\"general\": \"a man\", \"background\": \"\", \"body\": \"a coat\"}\n```",
        )
        .unwrap();
        assert_eq!(p.general, "a man");
        assert_eq!(p.background.as_deref(), Some(""));
        for (bad, why) in [
            ("sure! here it is", "no JSON object"),
            (
                "{\"general\": \"a man\", \"background\": \"x\"}",
                "`body` is missing",
            ),
            (
                "{\"general\": \"\", \"background\": \"x\", \"body\": \"y\"}",
                "`general` is empty",
            ),
            (
                "{\"general\": 3, \"background\": \"x\", \"body\": \"y\"}",
                "not a string",
            ),
            (
                "{\"general\": \"a\", \"background\": \"x\", \"body\": \"y\", \"notes\": \"z\"}",
                "unexpected keys",
            ),
            ("{\"general\": \"a\", ", "no JSON object"),
            ("{\"general\": \"a\" \"b\"}", "invalid JSON"),
        ] {
            let err = parse_parts(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn coverage_counts_lost_content_words() {
        let caption = "A man with short grey hair, wearing a blue coat, in a snowy park.";
        let full = Parts {
            general: "a man with short grey hair".into(),
            background: Some("in a snowy park".into()),
            body: Some("wearing a blue coat".into()),
        };
        assert_eq!(coverage(caption, &full), 1.0);
        let lossy = Parts {
            body: Some("wearing a coat".into()),
            ..full
        };
        let c = coverage(caption, &lossy);
        // 9 content words (man short grey hair wearing blue coat snowy park), `blue` lost.
        assert!((c - 8.0 / 9.0).abs() < 1e-9, "{c}");
    }
}
