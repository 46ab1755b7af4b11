//! A client for OpenAI-compatible chat-completions servers (vLLM, SGLang, llama.cpp's server,
//! Ollama, hosted APIs): one request shape, the retries every one of them needs.
//!
//! - 429 and 5xx are retried, honouring `Retry-After` (seconds or an HTTP date) where the server
//!   sends it, else exponential backoff with jitter; timeouts and connection errors likewise.
//! - Other 4xx are not retried: the request itself is wrong. A 400/422 that complains about
//!   `response_format` is reported as [`CallError::is_schema_unsupported`], so the caller can
//!   fall back to instructions plus validation.
//! - Every reply carries the attempts it took, its latency and the token usage the server
//!   reported.

use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How hard to try.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (429, 5xx, timeouts, connection errors).
    pub max_retries: u32,
    /// Backoff before the first retry; doubled each time, with jitter.
    pub base_backoff: Duration,
    /// Cap on any wait, `Retry-After` included.
    pub max_backoff: Duration,
    /// Whole-request timeout (connect, upload, generation, download).
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(120),
        }
    }
}

/// One chat message; `content` is a string or a list of parts (text, image_url).
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    /// `system` or `user`.
    pub role: &'static str,
    /// The content, as the API takes it.
    pub content: Value,
}

impl Message {
    /// A system message.
    pub fn system(text: &str) -> Self {
        Message {
            role: "system",
            content: Value::String(text.to_string()),
        }
    }

    /// A user message of text only.
    pub fn user(text: &str) -> Self {
        Message {
            role: "user",
            content: Value::String(text.to_string()),
        }
    }

    /// A user message with an image (sent inline as a base64 data URL) followed by text.
    pub fn user_with_image(text: &str, mime: &str, image: &[u8]) -> Self {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(image);
        Message {
            role: "user",
            content: json!([
                {"type": "image_url", "image_url": {"url": format!("data:{mime};base64,{b64}")}},
                {"type": "text", "text": text},
            ]),
        }
    }
}

/// A chat-completions request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The messages.
    pub messages: Vec<Message>,
    /// `response_format` (a JSON schema), or none.
    pub response_format: Option<Value>,
    /// `max_tokens`.
    pub max_tokens: u32,
    /// `temperature`.
    pub temperature: f32,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatReply {
    /// `choices[0].message.content`.
    pub content: String,
    /// `choices[0].finish_reason`.
    pub finish_reason: Option<String>,
    /// `usage.prompt_tokens`.
    pub prompt_tokens: Option<u32>,
    /// `usage.completion_tokens`.
    pub completion_tokens: Option<u32>,
    /// Wall time of the successful attempt.
    pub latency: Duration,
    /// Attempts made, the successful one included.
    pub attempts: u32,
}

/// Why a request gave no reply.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The server answered with an error status (after retries, for retryable ones).
    #[error("HTTP {status} after {attempts} attempt(s): {body}")]
    Status {
        /// The last status.
        status: u16,
        /// The last body, shortened.
        body: String,
        /// Attempts made.
        attempts: u32,
    },
    /// No answer within the timeout, every attempt.
    #[error("timed out after {attempts} attempt(s) of {timeout_s} s each")]
    Timeout {
        /// Attempts made.
        attempts: u32,
        /// The per-attempt timeout.
        timeout_s: f64,
    },
    /// Could not connect or the connection broke, every attempt.
    #[error("connection failed after {attempts} attempt(s): {message}")]
    Transport {
        /// The last error.
        message: String,
        /// Attempts made.
        attempts: u32,
    },
    /// A 200 whose body is not a chat completion.
    #[error("not a chat-completions reply: {message}; body: {body}")]
    Protocol {
        /// What is missing.
        message: String,
        /// The body, shortened.
        body: String,
    },
}

impl CallError {
    /// A 400/422 about `response_format`: the server has no JSON-schema support.
    pub fn is_schema_unsupported(&self) -> bool {
        match self {
            CallError::Status { status, body, .. } => {
                let b = body.to_ascii_lowercase();
                matches!(status, 400 | 422)
                    && (b.contains("response_format")
                        || b.contains("json_schema")
                        || b.contains("guided"))
            }
            _ => false,
        }
    }

    /// Attempts made before giving up.
    pub fn attempts(&self) -> u32 {
        match self {
            CallError::Status { attempts, .. }
            | CallError::Timeout { attempts, .. }
            | CallError::Transport { attempts, .. } => *attempts,
            CallError::Protocol { .. } => 1,
        }
    }
}

/// Shortens a body for error messages (whole replies are kept in the `raw` column instead).
fn shorten(s: &str) -> String {
    const MAX: usize = 500;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// A chat-completions endpoint with its model and retry policy.
#[derive(Debug, Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    endpoint: String,
    model: String,
    api_key: Option<String>,
    policy: RetryPolicy,
}

impl ChatClient {
    /// `base_url` is the API root (`http://127.0.0.1:8000/v1`); `/chat/completions` is added.
    pub fn new(
        base_url: &str,
        model: &str,
        api_key: Option<String>,
        policy: RetryPolicy,
    ) -> Result<Self, String> {
        let url = url::Url::parse(base_url)
            .map_err(|e| format!("base_url `{base_url}` is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("base_url `{base_url}` must be http or https"));
        }
        let http = reqwest::Client::builder()
            .timeout(policy.timeout)
            .connect_timeout(policy.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("idforge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(ChatClient {
            http,
            endpoint: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            model: model.to_string(),
            api_key,
            policy,
        })
    }

    /// The model name sent with every request.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Sends `req`, retrying what is worth retrying.
    pub async fn chat(&self, req: &ChatRequest) -> Result<ChatReply, CallError> {
        let mut body = json!({
            "model": self.model,
            "messages": req.messages,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
        });
        if let Some(rf) = &req.response_format {
            body["response_format"] = rf.clone();
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut request = self.http.post(&self.endpoint).json(&body);
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            let started = Instant::now();
            let retry_after;
            let last: CallError = match request.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    retry_after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_retry_after);
                    match resp.text().await {
                        Ok(text) if status.is_success() => {
                            return parse_reply(&text, started.elapsed(), attempts);
                        }
                        Ok(text) => CallError::Status {
                            status: status.as_u16(),
                            body: shorten(&text),
                            attempts,
                        },
                        Err(e) if e.is_timeout() => CallError::Timeout {
                            attempts,
                            timeout_s: self.policy.timeout.as_secs_f64(),
                        },
                        Err(e) => CallError::Transport {
                            message: e.to_string(),
                            attempts,
                        },
                    }
                }
                Err(e) if e.is_timeout() => {
                    retry_after = None;
                    CallError::Timeout {
                        attempts,
                        timeout_s: self.policy.timeout.as_secs_f64(),
                    }
                }
                Err(e) => {
                    retry_after = None;
                    CallError::Transport {
                        message: error_chain(&e),
                        attempts,
                    }
                }
            };
            let retryable = match &last {
                CallError::Status { status, .. } => {
                    let s = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST);
                    s == StatusCode::TOO_MANY_REQUESTS
                        || s == StatusCode::REQUEST_TIMEOUT
                        || s.is_server_error()
                }
                CallError::Timeout { .. } | CallError::Transport { .. } => true,
                CallError::Protocol { .. } => false,
            };
            if !retryable || attempts > self.policy.max_retries {
                return Err(last);
            }
            tokio::time::sleep(self.backoff(attempts, retry_after)).await;
        }
    }

    /// The wait before retry number `attempt`: `Retry-After` when given, else exponential with
    /// full jitter in its upper half; both capped.
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(d) = retry_after {
            return d.min(self.policy.max_backoff);
        }
        let exp = self
            .policy
            .base_backoff
            .saturating_mul(1 << (attempt - 1).min(16));
        let capped = exp.min(self.policy.max_backoff);
        capped.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// `Retry-After`: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u32>,
    #[serde(default)]
    completion_tokens: Option<u32>,
}

fn parse_reply(text: &str, latency: Duration, attempts: u32) -> Result<ChatReply, CallError> {
    let protocol = |message: String| CallError::Protocol {
        message,
        body: shorten(text),
    };
    let c: Completion = serde_json::from_str(text).map_err(|e| protocol(e.to_string()))?;
    let choice = c
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| protocol("`choices` is empty".into()))?;
    let content = choice
        .message
        .content
        .ok_or_else(|| protocol("`choices[0].message.content` is null".into()))?;
    Ok(ChatReply {
        content,
        finish_reason: choice.finish_reason,
        prompt_tokens: c.usage.as_ref().and_then(|u| u.prompt_tokens),
        completion_tokens: c.usage.as_ref().and_then(|u| u.completion_tokens),
        latency,
        attempts,
    })
}

/// The `response_format` asking for `{general, background, body}` strings, strict.
pub fn split_schema() -> Value {
    json!({
        "type": "json_schema",
        "json_schema": {
            "name": "split_prompt",
            "strict": true,
            "schema": {
                "type": "object",
                "properties": {
                    "general": {"type": "string"},
                    "background": {"type": "string"},
                    "body": {"type": "string"},
                },
                "required": ["general", "background", "body"],
                "additionalProperties": false,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        let past = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert_eq!(parse_retry_after(past), Some(Duration::ZERO));
        let future =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        let d = parse_retry_after(&future).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn schema_unsupported_is_recognised_only_on_request_errors() {
        let e = |status, body: &str| CallError::Status {
            status,
            body: body.into(),
            attempts: 1,
        };
        assert!(
            e(
                400,
                "{\"error\": \"response_format json_schema not supported\"}"
            )
            .is_schema_unsupported()
        );
        assert!(e(422, "guided decoding backend unavailable").is_schema_unsupported());
        assert!(!e(400, "image too large").is_schema_unsupported());
        assert!(!e(500, "response_format").is_schema_unsupported());
    }

    #[test]
    fn replies_without_content_are_protocol_errors() {
        let ok = parse_reply(
            r#"{"choices":[{"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],
               "usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}}"#,
            Duration::from_millis(5),
            2,
        )
        .unwrap();
        assert_eq!(ok.content, "hi");
        assert_eq!(
            (ok.prompt_tokens, ok.completion_tokens),
            (Some(10), Some(2))
        );
        assert_eq!(ok.attempts, 2);
        for bad in [
            "not json",
            r#"{"choices":[]}"#,
            r#"{"choices":[{"message":{"content":null}}]}"#,
        ] {
            let err = parse_reply(bad, Duration::ZERO, 1).unwrap_err();
            assert!(matches!(err, CallError::Protocol { .. }), "{bad}: {err}");
        }
    }
}
