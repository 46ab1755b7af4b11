//! A loopback OpenAI-compatible chat-completions server: the test double for the VLM servers
//! that cannot run here. It speaks the real protocol — `POST /v1/chat/completions`, bearer
//! authentication, messages with `image_url` parts carrying base64 data URLs (decoded and
//! checked to be an image), `response_format` JSON schemas, `usage` in the reply, OpenAI-style
//! error bodies — and misbehaves on request from a script of [`Fault`]s consumed one per
//! request.
//!
//! Its answers are made from what it was sent, so tests can check that every crop got its own
//! caption: a tag of the first 8 hex digits of the sha256 of the decoded image bytes appears in
//! the general part.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use idforge_core::hash::sha256_hex;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One scripted misbehaviour, applied to the next request.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// 429 with this `Retry-After` value.
    RateLimited(String),
    /// This status (500, 503, ...) with an error body.
    Status(u16),
    /// 200 whose content is not JSON.
    Malformed,
    /// 200 whose content is JSON without the `body` key.
    WrongShape,
    /// Waits this long before answering normally.
    Slow(Duration),
    /// Answers normally (a placeholder in a script).
    Pass,
}

/// How the server behaves apart from the script.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Refuse `response_format` with a 400, like a server without guided decoding.
    pub no_schema_support: bool,
    /// Require `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
}

/// What the server saw in one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// `model`.
    pub model: String,
    /// sha256 of the decoded image, when there was one.
    pub image_sha256: Option<String>,
    /// Whether `response_format` was sent.
    pub response_format: bool,
    /// The text parts of the user message.
    pub user_text: String,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
    /// The status answered.
    pub status: u16,
}

struct State {
    options: ServerOptions,
    script: Mutex<VecDeque<Fault>>,
    requests: Mutex<Vec<RecordedRequest>>,
}

/// A running server; stops when dropped.
pub struct ChatServer {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ChatServer {
    /// Binds `127.0.0.1:0` and serves on its own thread and runtime.
    pub fn start(options: ServerOptions) -> std::io::Result<Self> {
        let state = Arc::new(State {
            options,
            script: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
        });
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("test server runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            if let Ok((stream, _)) = accepted {
                                tokio::spawn(serve(stream, st.clone()));
                            }
                        }
                    }
                }
            });
        });
        Ok(ChatServer {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The API root to give a client: `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Appends faults to the script; each is applied to one request, in order.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.script.lock().unwrap().extend(faults);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().unwrap().clone()
    }
}

impl Drop for ChatServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(stream: TcpStream, state: Arc<State>) {
    let mut reader = BufReader::new(stream);
    // Keep-alive: answer requests on this connection until the client closes it.
    while let Some((head, body)) = read_request(&mut reader).await {
        let (status, extra, reply) = answer(&head, &body, &state).await;
        let body = reply.to_string();
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            429 => "Too Many Requests",
            _ => "Error",
        };
        let mut out = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in extra {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(&body);
        if reader.get_mut().write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads one request: the head (request line and headers, lower-cased names) and the body.
async fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(Vec<String>, Vec<u8>)> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let length = head
        .iter()
        .filter_map(|h| h.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.ok()?;
    Some((head, body))
}

fn error_body(message: &str, kind: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
}

type Answer = (u16, Vec<(String, String)>, Value);

async fn answer(head: &[String], body: &[u8], state: &State) -> Answer {
    let bad = |m: &str| (400, vec![], error_body(m, "invalid_request_error"));
    let request_line = head.first().map(String::as_str).unwrap_or("");
    if !request_line.starts_with("POST /v1/chat/completions ") {
        return (404, vec![], error_body("unknown route", "not_found"));
    }
    if let Some(key) = &state.options.api_key {
        let auth = head
            .iter()
            .filter_map(|h| h.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.trim().to_string());
        if auth.as_deref() != Some(&format!("Bearer {key}")) {
            return (
                401,
                vec![],
                error_body("invalid API key", "authentication_error"),
            );
        }
    }
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return bad("the body is not JSON");
    };
    let model = req["model"].as_str().unwrap_or("").to_string();
    if model.is_empty() {
        return bad("`model` is required");
    }
    let Some(messages) = req["messages"].as_array() else {
        return bad("`messages` must be an array");
    };
    let mut user_text = String::new();
    let mut system_text = String::new();
    let mut image_sha256 = None;
    for m in messages {
        match (&m["role"], &m["content"]) {
            (Value::String(role), Value::String(text)) => {
                if role == "system" {
                    system_text.push_str(text);
                } else {
                    user_text.push_str(text);
                }
            }
            (Value::String(_), Value::Array(parts)) => {
                for p in parts {
                    match p["type"].as_str() {
                        Some("text") => user_text.push_str(p["text"].as_str().unwrap_or("")),
                        Some("image_url") => {
                            let url = p["image_url"]["url"].as_str().unwrap_or("");
                            let Some(b64) = url
                                .strip_prefix("data:")
                                .and_then(|r| r.split_once(";base64,"))
                                .map(|(_, b)| b)
                            else {
                                return bad("image_url must be a base64 data URL");
                            };
                            let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64)
                            else {
                                return bad("image_url: invalid base64");
                            };
                            if image::load_from_memory(&bytes).is_err() {
                                return bad("image_url: not a decodable image");
                            }
                            image_sha256 = Some(sha256_hex(&bytes));
                        }
                        _ => return bad("unknown content part type"),
                    }
                }
            }
            _ => return bad("each message needs a role and a content"),
        }
    }
    let response_format = !req["response_format"].is_null();
    let fault = state.script.lock().unwrap().pop_front();
    let record = |status: u16| RecordedRequest {
        model: model.clone(),
        image_sha256: image_sha256.clone(),
        response_format,
        user_text: user_text.clone(),
        fault: fault.clone(),
        status,
    };
    if response_format && state.options.no_schema_support {
        state.requests.lock().unwrap().push(record(400));
        if let Some(f) = fault.clone() {
            // The refusal did not consume the scripted fault.
            state.script.lock().unwrap().push_front(f);
        }
        return bad("response_format json_schema is not supported by this server");
    }
    let wants_json = response_format || user_text.contains("JSON");
    let tag = image_sha256.as_deref().map(|s| s[..8].to_string());
    let mut content = match (&tag, wants_json) {
        (Some(tag), true) => json!({
            "general": format!("a man with short dark hair and a calm expression, photo {tag}"),
            "background": "a plain white wall",
            "body": "wearing a grey shirt, arms crossed",
        })
        .to_string(),
        (Some(tag), false) => format!(
            "A man with short dark hair and a calm expression, photo {tag}. He is wearing a grey \
             shirt with his arms crossed. Behind him is a plain white wall."
        ),
        (None, _) => split_caption(&user_text),
    };
    match &fault {
        Some(Fault::RateLimited(after)) => {
            state.requests.lock().unwrap().push(record(429));
            return (
                429,
                vec![("Retry-After".into(), after.clone())],
                error_body("rate limit reached", "rate_limit_error"),
            );
        }
        Some(Fault::Status(code)) => {
            state.requests.lock().unwrap().push(record(*code));
            return (
                *code,
                vec![],
                error_body("the model crashed", "server_error"),
            );
        }
        Some(Fault::Malformed) => content = "Sure! {\"general\": \"a man\", \"background".into(),
        Some(Fault::WrongShape) => {
            content = json!({"general": "a man", "background": ""}).to_string()
        }
        Some(Fault::Slow(d)) => tokio::time::sleep(*d).await,
        Some(Fault::Pass) | None => {}
    }
    state.requests.lock().unwrap().push(record(200));
    let prompt_tokens =
        (system_text.len() + user_text.len()) / 4 + if tag.is_some() { 256 } else { 0 };
    let completion_tokens = content.split_whitespace().count();
    (
        200,
        vec![],
        json!({
            "id": format!("chatcmpl-{}", state.requests.lock().unwrap().len()),
            "object": "chat.completion",
            "created": 1_763_700_000u64,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }),
    )
}

/// The double's text-model behaviour for split prompts: the caption after `Caption:`, sentence
/// by sentence — the first is general, sentences about wearing go to body, the rest to
/// background.
fn split_caption(user_text: &str) -> String {
    let caption = user_text
        .rsplit_once("Caption:")
        .map(|(_, c)| c)
        .unwrap_or(user_text);
    let caption = caption.split("\n\nAnswer with only").next().unwrap_or("");
    let (mut general, mut background, mut body) = (vec![], vec![], vec![]);
    for (i, sentence) in caption
        .split('.')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
    {
        if i == 0 {
            general.push(sentence);
        } else if sentence.contains("wear") {
            body.push(sentence);
        } else {
            background.push(sentence);
        }
    }
    json!({"general": general.join(". "), "background": background.join(". "), "body": body.join(". ")})
        .to_string()
}
