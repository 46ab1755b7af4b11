//! The arena's HTTP server: one self-contained page, a small JSON API, and the images under
//! opaque ids. hyper's HTTP/1.1 on tokio; every database call runs on the blocking pool behind
//! one lock, so shown pairs and votes are serialised and the scheduler's counts stay exact.
//!
//! Every refusal is a 4xx with `{"error": {"code", "message"}}` and stores nothing:
//!
//! | status | code | when |
//! |---|---|---|
//! | 400 | `malformed_json`, `missing_field`, `bad_field`, `unknown_field` | the body is not the [`VoteRequest`] shape |
//! | 400 | `malformed_token` | the pair token is not `<payload>.<signature>` of a pair |
//! | 401 | `no_rater`, `bad_rater`, `unknown_rater`, `rater_expired` | the `Authorization: Bearer` rater token is absent, forged, unknown or too old |
//! | 403 | `forged_token` | the pair token's signature or nonce does not match |
//! | 403 | `wrong_rater` | the pair was shown to another rater |
//! | 404 | `unknown_task`, `not_found` | no such shown pair; no such route or image |
//! | 405 | `method_not_allowed` | e.g. `GET /api/vote` |
//! | 409 | `already_answered` | the pair's token was used already (replay, double click) |
//! | 409 | `duplicate_vote` | the rater already answered that item for that question |
//! | 410 | `task_expired` | the pair was shown longer ago than the task lifetime |
//! | 413 | `body_too_large` | a body over 16 KiB |
//! | 415 | `unsupported_media_type` | a vote that is not `application/json` |
//! | 422 | `unknown_question`, `unknown_answer`, `wrong_question`, `bad_answer_ms` | values out of range |
//! | 429 | `too_many_raters` | this IP address asked for more rater ids than `raters_per_ip_per_hour` (with `Retry-After`) |

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use idforge_core::schema::{Answer, Question};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;

use super::api::{
    ErrorBody, ErrorDetail, Health, RaterResponse, ShownTask, TaskResponse, VoteRequest,
    VoteResponse,
};
use super::items::ArenaItems;
use super::schedule::{Scheduler, question_order};
use super::store::{NewTask, Store, TaskRow, VoteRefusal};
use super::token::{Signer, TaskClaim, TokenError, random_hex};
use super::{ArenaConfig, ArenaError, now_ms};
use crate::layout::BenchDir;

const PAGE_HTML: &str = include_str!("../../assets/arena.html");
const PAGE_CSS: &str = include_str!("../../assets/arena.css");
const PAGE_JS: &str = include_str!("../../assets/arena.js");

/// The page loads only its own script, style and images, and may not be framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Largest request body read.
pub const MAX_BODY: usize = 16 * 1024;

/// An answer may claim at most this much more time than the server saw pass since it showed
/// the pair (the page's clock starts later than the server's, so honest pages stay under).
const ANSWER_MS_SLACK: i64 = 1_000;

/// A refusal, turned into a JSON 4xx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The stable code.
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// Seconds to wait before asking again (`Retry-After`), for 429.
    pub retry_after: Option<u64>,
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
        retry_after: None,
    }
}

impl From<ArenaError> for ApiError {
    fn from(e: ArenaError) -> Self {
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the server failed: {e}"),
        )
    }
}

struct Inner {
    store: Store,
    scheduler: Scheduler,
    raters: HashMap<String, i64>,
    answered: HashMap<String, u64>,
    rng: StdRng,
}

/// A running arena's state: the items, the signer and the database.
pub struct Arena {
    config: ArenaConfig,
    items: ArenaItems,
    signer: Signer,
    /// Opaque image id → file.
    images: HashMap<String, PathBuf>,
    /// Image path relative to the bench folder → opaque id.
    image_ids: HashMap<String, String>,
    inner: Mutex<Inner>,
    /// New-rater allowance per client address (token buckets).
    rater_buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

/// A token bucket: `tokens` left as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets kept before idle (full) ones are dropped, so that many addresses cannot grow the
/// map without bound either.
const MAX_BUCKETS: usize = 10_000;

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("bench", &self.config.bench)
            .field("db", &self.config.db)
            .field("items", &self.items.items.len())
            .finish()
    }
}

impl Arena {
    /// Reads the bench folder's items, opens (or creates) the database and restores the
    /// scheduler's counts from the pairs already shown.
    pub fn open(config: ArenaConfig) -> Result<Self, ArenaError> {
        if config.questions.is_empty() {
            return Err(ArenaError::Serve {
                addr: String::new(),
                message: "no question to ask: give fidelity, adherence or both".into(),
            });
        }
        let bench = BenchDir::new(&config.bench);
        let items = ArenaItems::load(&bench, config.include_copy_reference)?;
        let store = Store::open_rebinding(&config.db, &config.bench, config.rebind)?;
        let signer = Signer::new(store.secret());
        let mut scheduler = Scheduler::new(&items);
        let tasks = store.tasks()?;
        scheduler.restore(&items, &tasks);
        let mut answered: HashMap<String, u64> = HashMap::new();
        for t in tasks
            .iter()
            .filter(|t| t.answered_at.is_some() && !t.practice)
        {
            *answered.entry(t.rater.clone()).or_default() += 1;
        }
        let raters = store.raters()?.into_iter().collect();
        let mut images = HashMap::new();
        let mut image_ids = HashMap::new();
        for item in &items.items {
            for rel in item.references.iter().take(1).chain(item.images.values()) {
                let id = signer.image_id(rel);
                images.insert(id.clone(), bench.root.join(rel));
                image_ids.insert(rel.clone(), id);
            }
        }
        Ok(Arena {
            config,
            items,
            signer,
            images,
            image_ids,
            inner: Mutex::new(Inner {
                store,
                scheduler,
                raters,
                answered,
                rng: StdRng::from_os_rng(),
            }),
            rater_buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one new-rater token for `ip`, or refuses with 429 and the seconds until the next
    /// token (`raters_per_ip_per_hour` per hour, as a bucket of that size; 0 = no limit).
    pub fn admit_new_rater(&self, ip: IpAddr, now: Instant) -> Result<(), ApiError> {
        let per_hour = self.config.raters_per_ip_per_hour;
        if per_hour == 0 {
            return Ok(());
        }
        let capacity = f64::from(per_hour);
        let per_second = capacity / 3600.0;
        let mut buckets = self.rater_buckets.lock().unwrap_or_else(|p| p.into_inner());
        let refill = |b: &Bucket| {
            (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_second)
                .min(capacity)
        };
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, b| refill(b) < capacity);
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let tokens = refill(bucket);
        if tokens < 1.0 {
            let wait = ((1.0 - tokens) / per_second).ceil() as u64;
            return Err(ApiError {
                retry_after: Some(wait),
                ..refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_raters",
                    format!(
                        "this address has asked for {per_hour} rater ids within the hour; try \
                         again in {wait} s (or keep the rater id you have)"
                    ),
                )
            });
        }
        *bucket = Bucket {
            tokens: tokens - 1.0,
            at: now,
        };
        Ok(())
    }

    /// The items being compared.
    pub fn items(&self) -> &ArenaItems {
        &self.items
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (each write is one SQLite
        // transaction), so a poisoned lock is taken over.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn image_url(&self, rel: &str) -> String {
        format!("/img/{}", self.image_ids[rel])
    }

    /// Issues a new rater id.
    pub fn new_rater(&self) -> Result<RaterResponse, ApiError> {
        let id = random_hex(16);
        let now = now_ms();
        let mut inner = self.lock();
        inner.store.add_rater(&id, now)?;
        inner.raters.insert(id.clone(), now);
        Ok(RaterResponse {
            rater: self.signer.rater_token(&id),
            id,
        })
    }

    /// The rater named by an `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<String, ApiError> {
        let unauthorized = |code, message: &str| refuse(StatusCode::UNAUTHORIZED, code, message);
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                unauthorized(
                    "no_rater",
                    "no rater: send the token from `POST /api/raters` as `Authorization: Bearer <token>`",
                )
            })?;
        let rater = self.signer.verify_rater(token).map_err(|e| match e {
            TokenError::Forged => unauthorized(
                "bad_rater",
                "the rater token was not issued by this arena (another database?): reload the page for a new one",
            ),
            TokenError::Malformed(m) => unauthorized("bad_rater", &format!("rater token: {m}")),
        })?;
        let created = self.lock().raters.get(&rater).copied().ok_or_else(|| {
            unauthorized(
                "unknown_rater",
                "this arena has no such rater: reload the page for a new rater id",
            )
        })?;
        if now_ms() - created > self.config.rater_ttl.as_millis() as i64 {
            return Err(unauthorized(
                "rater_expired",
                "this rater id has expired: reload the page to start a new session",
            ));
        }
        Ok(rater)
    }

    fn shown(&self, t: &TaskRow, item: usize, served: u32) -> ShownTask {
        let item = &self.items.items[item];
        let fidelity = t.question == Question::Fidelity;
        ShownTask {
            token: self.signer.task_token(&TaskClaim {
                task_id: t.task_id,
                rater: t.rater.clone(),
                nonce: t.nonce.clone(),
            }),
            question: t.question.as_str().into(),
            instruction: instruction(t.question).into(),
            reference: fidelity.then(|| self.image_url(&item.references[0])),
            prompt: (!fidelity).then(|| item.prompt.clone()),
            left: self.image_url(&item.images[&t.method_left]),
            right: self.image_url(&item.images[&t.method_right]),
            practice: t.practice,
            practice_number: t
                .practice
                .then(|| served.clamp(1, self.config.practice.max(1))),
            practice_total: self.config.practice,
        }
    }

    /// The rater's pending pair (shown and not answered), else the next one; `done` when every
    /// item has been shown to the rater for every question.
    pub fn next_task(&self, rater: &str) -> Result<TaskResponse, ApiError> {
        let now = now_ms();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let answered = inner.answered.get(rater).copied().unwrap_or(0);
        let since = now - self.config.task_ttl.as_millis() as i64;
        if let Some(t) = inner.store.pending_task(rater, since)?
            && let Some(item) = self.items.find(&t.item)
            && self.items.items[item].images.contains_key(&t.method_left)
            && self.items.items[item].images.contains_key(&t.method_right)
        {
            let served = inner.scheduler.served(rater, t.question);
            return Ok(TaskResponse {
                done: false,
                task: Some(self.shown(&t, item, served)),
                answered,
            });
        }
        let order = question_order(
            &self.config.questions,
            |q| inner.scheduler.served(rater, q),
            self.config.practice,
            self.config.block,
        );
        for q in order {
            let Some(pick) = inner.scheduler.pick(rater, q, &mut inner.rng) else {
                continue;
            };
            let served = inner.scheduler.served(rater, q);
            let practice = served < self.config.practice;
            let item = &self.items.items[pick.item];
            let task = inner.store.insert_task(&NewTask {
                rater: rater.to_string(),
                question: q,
                item: item.key(),
                method_left: pick.left.clone(),
                method_right: pick.right.clone(),
                practice,
                shown_at: now,
            })?;
            inner
                .scheduler
                .record(rater, q, Some(pick.item), &pick.left, &pick.right, practice);
            return Ok(TaskResponse {
                done: false,
                task: Some(self.shown(&task, pick.item, served + 1)),
                answered,
            });
        }
        Ok(TaskResponse {
            done: true,
            task: None,
            answered,
        })
    }

    /// Checks and stores an answer; a refusal stores nothing.
    pub fn vote(&self, rater: &str, body: &[u8]) -> Result<VoteResponse, ApiError> {
        let (req, question, answer) = parse_vote(body)?;
        let claim = self.signer.verify_task(&req.token).map_err(|e| match e {
            TokenError::Forged => refuse(
                StatusCode::FORBIDDEN,
                "forged_token",
                "the pair token's signature does not match: it was not issued by this arena",
            ),
            TokenError::Malformed(m) => refuse(
                StatusCode::BAD_REQUEST,
                "malformed_token",
                format!("pair token: {m}"),
            ),
        })?;
        if claim.rater != rater {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "wrong_rater",
                "this pair was shown to another rater: answer the pairs shown to you",
            ));
        }
        let now = now_ms();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let task = inner.store.task(claim.task_id)?.ok_or_else(|| {
            refuse(
                StatusCode::NOT_FOUND,
                "unknown_task",
                "no such shown pair in this arena's database: load the next pair",
            )
        })?;
        if task.nonce != claim.nonce || task.rater != claim.rater {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "forged_token",
                "the pair token does not match the pair that was shown",
            ));
        }
        if task.answered_at.is_some() {
            return Err(already_answered());
        }
        if task.question != question {
            return Err(refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                "wrong_question",
                format!(
                    "this pair was shown for the `{}` question, not `{}`",
                    task.question.as_str(),
                    question.as_str()
                ),
            ));
        }
        let age = now - task.shown_at;
        if age > self.config.task_ttl.as_millis() as i64 {
            return Err(refuse(
                StatusCode::GONE,
                "task_expired",
                format!(
                    "this pair was shown {} s ago, longer than the {} s a pair stays open: load the next pair",
                    age / 1000,
                    self.config.task_ttl.as_secs()
                ),
            ));
        }
        if req.answer_ms < 0 || req.answer_ms > age + ANSWER_MS_SLACK {
            return Err(refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_answer_ms",
                format!(
                    "answer_ms {} is not between 0 and the {age} ms since the pair was shown",
                    req.answer_ms
                ),
            ));
        }
        let vote_id = match inner.store.insert_vote(&task, answer, now, req.answer_ms) {
            Ok(id) => id,
            Err(VoteRefusal::AlreadyAnswered) => return Err(already_answered()),
            Err(VoteRefusal::Duplicate) => {
                return Err(refuse(
                    StatusCode::CONFLICT,
                    "duplicate_vote",
                    "this rater already answered this item for this question",
                ));
            }
            Err(VoteRefusal::Db(e)) => return Err(e.into()),
        };
        let answered = inner.answered.entry(rater.to_string()).or_default();
        if !task.practice {
            *answered += 1;
        }
        Ok(VoteResponse {
            vote_id,
            practice: task.practice,
            answered: *answered,
        })
    }

    /// What `GET /healthz` answers.
    pub fn health(&self) -> Result<Health, ApiError> {
        Ok(Health {
            ok: true,
            items: self.items.items.len(),
            methods: self.items.methods.len(),
            votes: self.lock().store.vote_count()?,
        })
    }
}

fn already_answered() -> ApiError {
    refuse(
        StatusCode::CONFLICT,
        "already_answered",
        "this pair has been answered already (a token is used once): load the next pair",
    )
}

/// The question as the page words it.
pub fn instruction(q: Question) -> &'static str {
    match q {
        Question::Fidelity => "Which image looks more like the person in the reference photo?",
        Question::Adherence => "Which image matches the description better?",
    }
}

/// The vote body, checked field by field so each mistake gets its own message.
fn parse_vote(body: &[u8]) -> Result<(VoteRequest, Question, Answer), ApiError> {
    let bad = |code, m: String| refuse(StatusCode::BAD_REQUEST, code, m);
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad("malformed_json", format!("the body is not JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| {
        bad(
            "malformed_json",
            "the body must be a JSON object {token, question, answer, answer_ms}".into(),
        )
    })?;
    const FIELDS: [&str; 4] = ["token", "question", "answer", "answer_ms"];
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(bad(
            "unknown_field",
            format!("unknown field `{k}`: a vote has {}", FIELDS.join(", ")),
        ));
    }
    let field = |name: &str| {
        obj.get(name)
            .ok_or_else(|| bad("missing_field", format!("field `{name}` is missing")))
    };
    let string = |name: &str| {
        field(name)?
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| bad("bad_field", format!("field `{name}` must be a string")))
    };
    let req = VoteRequest {
        token: string("token")?,
        question: string("question")?,
        answer: string("answer")?,
        answer_ms: field("answer_ms")?.as_i64().ok_or_else(|| {
            bad(
                "bad_field",
                "field `answer_ms` must be an integer number of milliseconds".into(),
            )
        })?,
    };
    let question = Question::parse(&req.question).ok_or_else(|| {
        refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_question",
            format!("unknown question `{}`: fidelity or adherence", req.question),
        )
    })?;
    let answer = Answer::parse(&req.answer).ok_or_else(|| {
        refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_answer",
            format!(
                "unknown answer `{}`: left, right, tie or neither",
                req.answer
            ),
        )
    })?;
    Ok((req, question, answer))
}

type Body = Full<Bytes>;

fn with_common_headers(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, v: &impl Serialize) -> Response<Body> {
    let mut r = response(
        status,
        "application/json",
        serde_json::to_vec(v).expect("plain structs serialise"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error(e: ApiError) -> Response<Body> {
    let retry_after = e.retry_after;
    let mut r = json(
        e.status,
        &ErrorBody {
            error: ErrorDetail {
                code: e.code.into(),
                message: e.message,
            },
        },
    );
    if let Some(secs) = retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if e.status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"idforge-arena\""),
        );
    }
    r
}

fn page(content_type: &'static str, body: &'static str) -> Response<Body> {
    let mut r = response(StatusCode::OK, content_type, body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn image_type(path: &std::path::Path) -> &'static str {
    match path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .as_deref()
    {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("bmp") => "image/bmp",
        _ => "application/octet-stream",
    }
}

/// Runs `f` on the blocking pool (the database is synchronous).
async fn blocking<T: Send + 'static>(
    arena: &Arc<Arena>,
    f: impl FnOnce(&Arena) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let arena = Arc::clone(arena);
    tokio::task::spawn_blocking(move || f(&arena))
        .await
        .unwrap_or_else(|e| {
            Err(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the request's worker failed: {e}"),
            ))
        })
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is over {MAX_BODY} bytes"),
        )),
        Err(e) => Err(refuse(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("reading the body: {e}"),
        )),
    }
}

async fn route(
    arena: Arc<Arena>,
    peer: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let not_allowed = |allowed: &'static str| {
        let mut r = error(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}: use {allowed}"),
        ));
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allowed));
        Ok(r)
    };
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match path.as_str() {
        "/" | "/index.html" => match method {
            Method::GET => Ok(page("text/html; charset=utf-8", PAGE_HTML)),
            _ => not_allowed("GET"),
        },
        "/arena.css" | "/arena.js" if method != Method::GET => not_allowed("GET"),
        "/arena.css" => Ok(page("text/css; charset=utf-8", PAGE_CSS)),
        "/arena.js" => Ok(page("text/javascript; charset=utf-8", PAGE_JS)),
        "/favicon.ico" => Ok(response(
            StatusCode::NO_CONTENT,
            "image/x-icon",
            Bytes::new(),
        )),
        "/healthz" => {
            let h = blocking(&arena, |a| a.health()).await?;
            Ok(json(StatusCode::OK, &h))
        }
        "/api/raters" => match method {
            Method::POST => {
                arena.admit_new_rater(peer, Instant::now())?;
                let r = blocking(&arena, |a| a.new_rater()).await?;
                Ok(json(StatusCode::CREATED, &r))
            }
            _ => not_allowed("POST"),
        },
        "/api/task" => match method {
            Method::POST => {
                let t = blocking(&arena, move |a| {
                    let rater = a.authenticate(auth.as_deref())?;
                    a.next_task(&rater)
                })
                .await?;
                Ok(json(StatusCode::OK, &t))
            }
            _ => not_allowed("POST"),
        },
        "/api/vote" => match method {
            Method::POST => {
                let is_json = req
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| {
                        v.split(';')
                            .next()
                            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
                    });
                if !is_json {
                    return Err(refuse(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "unsupported_media_type",
                        "send the vote as `Content-Type: application/json`",
                    ));
                }
                let body = read_body(req).await?;
                let v = blocking(&arena, move |a| {
                    let rater = a.authenticate(auth.as_deref())?;
                    a.vote(&rater, &body)
                })
                .await?;
                Ok(json(StatusCode::CREATED, &v))
            }
            _ => not_allowed("POST"),
        },
        p if p.starts_with("/img/") && method == Method::GET => {
            let file = arena
                .images
                .get(&p["/img/".len()..])
                .cloned()
                .ok_or_else(|| {
                    refuse(StatusCode::NOT_FOUND, "not_found", format!("no image {p}"))
                })?;
            let bytes = tokio::fs::read(&file).await.map_err(|e| {
                refuse(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("image {p} cannot be read on the server: {e}"),
                )
            })?;
            let mut r = response(StatusCode::OK, image_type(&file), bytes);
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=3600"),
            );
            Ok(r)
        }
        _ => Err(refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route {method} {path}: the page is at /"),
        )),
    }
}

async fn handle(
    arena: Arc<Arena>,
    peer: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let r = route(arena, peer, req).await.unwrap_or_else(error);
    Ok(with_common_headers(r))
}

/// Serves `arena` on `listener` until `shutdown` resolves, then stops accepting and gives the
/// requests in flight up to 5 s to finish.
pub async fn serve(
    arena: Arc<Arena>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ArenaError> {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok((s, peer)) => (s, peer.ip()),
                    Err(_) => {
                        // Out of file descriptors or a reset during accept: back off briefly.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let arena = Arc::clone(&arena);
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(
                        TokioIo::new(stream),
                        service_fn(move |req| handle(Arc::clone(&arena), peer, req)),
                    );
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
    }
    Ok(())
}

/// An arena server on its own thread and runtime: for the CLI's tests and any caller without
/// a runtime. Dropping it stops the server.
pub struct ArenaServer {
    addr: SocketAddr,
    arena: Arc<Arena>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ArenaError>>>,
}

impl std::fmt::Debug for ArenaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArenaServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl ArenaServer {
    /// Opens the arena and listens on `addr` (`127.0.0.1:0` for a free port); returns once
    /// the port is bound.
    pub fn start(config: ArenaConfig, addr: &str) -> Result<Self, ArenaError> {
        let serve_err = |m: String| ArenaError::Serve {
            addr: addr.to_string(),
            message: m,
        };
        let resolved = resolve_addr(addr)?;
        let arena = Arc::new(Arena::open(config)?);
        let listener = std::net::TcpListener::bind(&resolved[..]).map_err(|e| {
            serve_err(format!(
                "{e}: is another server using the port? pick another with --addr"
            ))
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| serve_err(e.to_string()))?;
        let local = listener
            .local_addr()
            .map_err(|e| serve_err(e.to_string()))?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = Arc::clone(&arena);
        let thread = std::thread::Builder::new()
            .name("arena-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("arena-worker")
                    .build()
                    .map_err(|e| ArenaError::Serve {
                        addr: local.to_string(),
                        message: format!("starting the runtime: {e}"),
                    })?;
                rt.block_on(async move {
                    let listener =
                        TcpListener::from_std(listener).map_err(|e| ArenaError::Serve {
                            addr: local.to_string(),
                            message: e.to_string(),
                        })?;
                    serve(served, listener, async move {
                        let _ = rx.await;
                    })
                    .await
                })
            })
            .map_err(|e| serve_err(format!("starting the server thread: {e}")))?;
        Ok(ArenaServer {
            addr: local,
            arena,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The arena's state (items, for tests that need to know what is shown).
    pub fn arena(&self) -> &Arena {
        &self.arena
    }

    /// Stops accepting, lets requests in flight finish, and waits for the server thread.
    pub fn stop(mut self) -> Result<(), ArenaError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), ArenaError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| {
                Err(ArenaError::Serve {
                    addr: self.addr.to_string(),
                    message: "the server thread panicked".into(),
                })
            }),
            None => Ok(()),
        }
    }
}

impl Drop for ArenaServer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Serves until Ctrl-C (or SIGTERM on Unix), for the command line; `ready` is called once the
/// port is bound, with the address actually used.
pub fn serve_until_signal(
    config: ArenaConfig,
    addr: &str,
    ready: impl FnOnce(&Arena, SocketAddr),
) -> Result<(), ArenaError> {
    let serve_err = |m: String| ArenaError::Serve {
        addr: addr.to_string(),
        message: m,
    };
    let resolved = resolve_addr(addr)?;
    let arena = Arc::new(Arena::open(config)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("arena-worker")
        .build()
        .map_err(|e| serve_err(format!("starting the runtime: {e}")))?;
    rt.block_on(async move {
        let listener = TcpListener::bind(&resolved[..]).await.map_err(|e| {
            serve_err(format!(
                "{e}: is another server using the port? pick another with --addr"
            ))
        })?;
        let local = listener
            .local_addr()
            .map_err(|e| serve_err(e.to_string()))?;
        ready(&arena, local);
        serve(arena, listener, shutdown_signal()).await
    })
}

/// `addr` as socket addresses, or an error saying it is not an address at all (rather than
/// the bind error's hint that the port is in use).
pub fn resolve_addr(addr: &str) -> Result<Vec<SocketAddr>, ArenaError> {
    let bad = |why: String| ArenaError::Serve {
        addr: addr.to_string(),
        message: format!(
            "not an address to listen on ({why}): give HOST:PORT, e.g. 127.0.0.1:8080, or \
             0.0.0.0:8080 to let other machines in"
        ),
    };
    let found: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .collect();
    if found.is_empty() {
        return Err(bad("it resolves to no address".into()));
    }
    Ok(found)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
