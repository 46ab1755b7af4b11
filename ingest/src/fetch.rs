//! HTTP fetching that is fast on a loopback server and polite on the open web: a global
//! concurrency limit (the caller's), a per-host limit and rate, retries with exponential
//! backoff and full jitter that honour `Retry-After`, connect and total timeouts, a body limit
//! enforced while streaming, a redirect limit, and the opt-outs of [`crate::opt_out`].
//!
//! Redirects are followed here, hop by hop, rather than by the HTTP client: a hop to another
//! origin is checked against that origin's robots.txt before it is requested, and the final
//! response's `X-Robots-Tag` before its body is kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, LOCATION, RETRY_AFTER};
use tokio::sync::{OnceCell, Semaphore};
use tokio::time::Instant;

use idforge_core::schema::ImageStatus;

use crate::error::IngestError;
use crate::opt_out::{RobotsRules, x_robots_tag_opt_out};
use crate::settings::FetchSettings;

/// Largest robots.txt read (RFC 9309 asks parsers to read at least 500 KiB).
const ROBOTS_MAX_BYTES: u64 = 512 * 1024;

/// Redirects followed for robots.txt (RFC 9309 §2.3.1.2: at least five).
const ROBOTS_MAX_REDIRECTS: usize = 5;

/// The result of fetching one URL.
#[derive(Debug)]
pub enum Fetched {
    /// A complete body from a 2xx response.
    Body {
        /// The bytes.
        bytes: Vec<u8>,
        /// The final HTTP status.
        http_status: u16,
    },
    /// Nothing usable; the status and the reason.
    Failed {
        /// Row status.
        status: ImageStatus,
        /// Readable reason.
        error: String,
        /// HTTP status if a response was received.
        http_status: Option<u16>,
    },
}

impl Fetched {
    fn failed(status: ImageStatus, error: impl Into<String>, http_status: Option<u16>) -> Self {
        Fetched::Failed {
            status,
            error: error.into(),
            http_status,
        }
    }
}

/// Per-host state: a concurrency limit, the next free slot of the rate limit, robots.txt.
struct Host {
    permits: Semaphore,
    next_slot: tokio::sync::Mutex<Instant>,
    robots: OnceCell<RobotsRules>,
}

/// Counters reported in the stage's stats.
#[derive(Debug, Default)]
pub struct FetchCounters {
    /// Requests sent, retries and robots.txt included.
    pub requests: AtomicU64,
    /// Retries after a failed attempt.
    pub retries: AtomicU64,
    /// Body bytes received.
    pub bytes: AtomicU64,
}

/// A shared HTTP fetcher; clone the `Arc` into tasks.
pub struct Fetcher {
    /// Follows no redirect: [`Fetcher::attempt`] does, checking each new origin's robots.txt.
    client: reqwest::Client,
    /// For robots.txt itself, which RFC 9309 §2.3.1.2 says to follow through redirects.
    robots_client: reqwest::Client,
    settings: FetchSettings,
    agent_token: String,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
    /// What was done, for stats.
    pub counters: FetchCounters,
}

/// A failed attempt, and whether another may succeed.
struct AttemptError {
    status: ImageStatus,
    error: String,
    http_status: Option<u16>,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl Fetcher {
    /// Builds the client from the settings. Their numbers are validated types
    /// ([`idforge_core::limits`]), so every timeout is a valid duration and every limit at
    /// least 1 here.
    pub fn new(settings: FetchSettings) -> Result<Self, IngestError> {
        let build = |redirect| {
            reqwest::Client::builder()
                .user_agent(&settings.user_agent)
                .connect_timeout(settings.connect_timeout_s.duration())
                .timeout(settings.timeout_s.duration())
                .redirect(redirect)
                .pool_max_idle_per_host(settings.per_host_concurrency.usize())
                .tcp_nodelay(true)
                .build()
                .map_err(|e| IngestError::Client(e.to_string()))
        };
        let client = build(reqwest::redirect::Policy::none())?;
        let robots_client = build(reqwest::redirect::Policy::limited(ROBOTS_MAX_REDIRECTS))?;
        let agent_token = settings.agent_token();
        Ok(Fetcher {
            client,
            robots_client,
            settings,
            agent_token,
            hosts: Mutex::new(HashMap::new()),
            counters: FetchCounters::default(),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &FetchSettings {
        &self.settings
    }

    fn host(&self, key: &str) -> Arc<Host> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts
            .entry(key.to_string())
            .or_insert_with(|| {
                Arc::new(Host {
                    permits: Semaphore::new(self.settings.per_host_concurrency.usize()),
                    next_slot: tokio::sync::Mutex::new(Instant::now()),
                    robots: OnceCell::new(),
                })
            })
            .clone()
    }

    /// Waits for the host's next rate-limit slot.
    async fn pace(&self, host: &Host) {
        let Some(interval) = self.settings.per_host_rate.interval() else {
            return;
        };
        let at = {
            let mut next = host.next_slot.lock().await;
            let at = (*next).max(Instant::now());
            *next = at + interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }

    /// Fetches `url`, retrying what may succeed later.
    pub async fn fetch(&self, url: &str) -> Fetched {
        let parsed = match url::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
            Ok(u) => {
                return Fetched::failed(
                    ImageStatus::InvalidUrl,
                    format!(
                        "unsupported URL scheme `{}` (only http and https)",
                        u.scheme()
                    ),
                    None,
                );
            }
            Err(e) => {
                return Fetched::failed(ImageStatus::InvalidUrl, format!("invalid URL: {e}"), None);
            }
        };
        let origin = parsed.origin().ascii_serialization();
        let host = self.host(&origin);
        if let Some((status, why)) = self.robots_opt_out(&host, &origin, url).await {
            return Fetched::failed(status, why, None);
        }
        let mut attempt: u32 = 0;
        loop {
            let result = {
                let _permit = host
                    .permits
                    .acquire()
                    .await
                    .expect("semaphore never closed");
                self.pace(&host).await;
                self.attempt(url).await
            };
            let e = match result {
                Ok(body) => return body,
                Err(e) => e,
            };
            if !e.retryable || u64::from(attempt) >= self.settings.retries.get() {
                let mut error = e.error;
                if attempt > 0 {
                    error = format!("{error} (after {} attempts)", attempt + 1);
                }
                return Fetched::Failed {
                    status: e.status,
                    error,
                    http_status: e.http_status,
                };
            }
            let backoff = {
                let cap = (self.settings.backoff_s.get() * 2f64.powi(attempt as i32))
                    .min(self.settings.max_backoff_s.get());
                Duration::from_secs_f64(rand::rng().random_range(0.0..=cap.max(0.0)))
            };
            let wait = match e.retry_after {
                Some(ra) if ra.as_secs_f64() > self.settings.max_retry_after_s.get() => {
                    return Fetched::failed(
                        e.status,
                        format!(
                            "{}; Retry-After of {:.0}s is longer than max_retry_after_s = {}",
                            e.error,
                            ra.as_secs_f64(),
                            self.settings.max_retry_after_s
                        ),
                        e.http_status,
                    );
                }
                Some(ra) => ra.max(backoff),
                None => backoff,
            };
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            attempt += 1;
            tokio::time::sleep(wait).await;
        }
    }

    /// What `origin`'s robots.txt says of `url`, when robots.txt is honoured: `None` if allowed.
    async fn robots_opt_out(
        &self,
        host: &Host,
        origin: &str,
        url: &str,
    ) -> Option<(ImageStatus, String)> {
        if !self.settings.robots_txt {
            return None;
        }
        let rules = host.robots.get_or_init(|| self.fetch_robots(origin)).await;
        rules.check(url)
    }

    /// One request, following redirects hop by hop up to `max_redirects`: a hop to another
    /// origin must be allowed by that origin's robots.txt before it is requested.
    async fn attempt(&self, url: &str) -> Result<Fetched, AttemptError> {
        let max_redirects = self.settings.max_redirects.usize();
        let mut current = url::Url::parse(url).map_err(|e| AttemptError {
            status: ImageStatus::InvalidUrl,
            error: format!("invalid URL: {e}"),
            http_status: None,
            retryable: false,
            retry_after: None,
        })?;
        let mut hops = 0usize;
        let response = loop {
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let response = self
                .client
                .get(current.as_str())
                .send()
                .await
                .map_err(classify)?;
            if !response.status().is_redirection() {
                break response;
            }
            let code = response.status().as_u16();
            let Some(location) = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
            else {
                break response;
            };
            let next = match current.join(location) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
                _ => {
                    return Ok(Fetched::failed(
                        ImageStatus::InvalidUrl,
                        format!("HTTP {code} redirect to an unusable location `{location}`"),
                        Some(code),
                    ));
                }
            };
            hops += 1;
            if hops > max_redirects {
                return Err(AttemptError {
                    status: ImageStatus::TooManyRedirects,
                    error: format!(
                        "more than max_redirects = {max_redirects} redirects (last to {next})"
                    ),
                    http_status: Some(code),
                    retryable: false,
                    retry_after: None,
                });
            }
            let origin = next.origin().ascii_serialization();
            if origin != current.origin().ascii_serialization() {
                let host = self.host(&origin);
                if let Some((status, why)) =
                    self.robots_opt_out(&host, &origin, next.as_str()).await
                {
                    return Ok(Fetched::failed(
                        status,
                        format!("redirected to {next}: {why}"),
                        Some(code),
                    ));
                }
            }
            current = next;
        };
        let status = response.status();
        let code = status.as_u16();
        if !status.is_success() {
            let retryable = matches!(code, 408 | 429 | 500 | 502 | 503 | 504);
            let retry_after = if matches!(code, 429 | 503) {
                response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after)
            } else {
                None
            };
            return Err(AttemptError {
                status: ImageStatus::HttpError,
                error: format!("HTTP {code} {}", status.canonical_reason().unwrap_or(""))
                    .trim_end()
                    .to_string(),
                http_status: Some(code),
                retryable,
                retry_after,
            });
        }
        if self.settings.x_robots_tag {
            let values = response
                .headers()
                .get_all("x-robots-tag")
                .iter()
                .filter_map(|v| v.to_str().ok());
            if let Some(why) = x_robots_tag_opt_out(values, &self.agent_token) {
                return Ok(Fetched::failed(ImageStatus::OptedOut, why, Some(code)));
            }
        }
        let announced = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let max = self.settings.max_bytes.get();
        if let Some(len) = announced.filter(|&l| l > max) {
            return Ok(Fetched::failed(
                ImageStatus::TooLarge,
                format!("Content-Length {len} is over max_bytes = {max}"),
                Some(code),
            ));
        }
        match read_body(response, max, announced, &self.counters.bytes).await {
            Ok(bytes) => Ok(Fetched::Body {
                bytes,
                http_status: code,
            }),
            Err(BodyError::TooLarge(n)) => Ok(Fetched::failed(
                ImageStatus::TooLarge,
                format!("body passed max_bytes = {max} after {n} bytes (no Content-Length)"),
                Some(code),
            )),
            Err(BodyError::Truncated { got, expected }) => Err(AttemptError {
                status: ImageStatus::Truncated,
                error: format!("connection closed after {got} of {expected} bytes"),
                http_status: Some(code),
                retryable: true,
                retry_after: None,
            }),
            Err(BodyError::Transport(e)) => {
                let mut e = classify(e);
                e.http_status = Some(code);
                Err(e)
            }
        }
    }

    async fn fetch_robots(&self, origin: &str) -> RobotsRules {
        let url = format!("{origin}/robots.txt");
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let unreachable = |e: reqwest::Error| {
            let status = if e.is_timeout() {
                ImageStatus::Timeout
            } else {
                ImageStatus::ConnectError
            };
            (None, Vec::new(), status, error_chain(&e))
        };
        let (status, body, failure, why) = match self.robots_client.get(&url).send().await {
            Ok(resp) => {
                let code = resp.status().as_u16();
                if resp.status() == StatusCode::OK {
                    match read_body(resp, ROBOTS_MAX_BYTES, None, &self.counters.bytes).await {
                        Ok(b) => (Some(code), b, ImageStatus::Ok, String::new()),
                        // RFC 9309 §2.5 allows a size limit; an oversized file is ignored.
                        Err(BodyError::TooLarge(_)) => {
                            (Some(404), Vec::new(), ImageStatus::Ok, String::new())
                        }
                        Err(BodyError::Transport(e)) => unreachable(e),
                        Err(e) => (None, Vec::new(), ImageStatus::ConnectError, e.to_string()),
                    }
                } else {
                    (Some(code), Vec::new(), ImageStatus::Ok, String::new())
                }
            }
            Err(e) => unreachable(e),
        };
        RobotsRules::from_response(status, &body, &self.agent_token, failure, &why)
    }
}

#[derive(Debug)]
enum BodyError {
    TooLarge(u64),
    Truncated { got: u64, expected: u64 },
    Transport(reqwest::Error),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge(n) => write!(f, "body over the limit after {n} bytes"),
            BodyError::Truncated { got, expected } => {
                write!(f, "closed after {got} of {expected} bytes")
            }
            BodyError::Transport(e) => write!(f, "{e}"),
        }
    }
}

/// Streams the body, stopping as soon as it passes `max` bytes.
async fn read_body(
    response: reqwest::Response,
    max: u64,
    announced: Option<u64>,
    counter: &AtomicU64,
) -> Result<Vec<u8>, BodyError> {
    let mut buf = Vec::with_capacity(announced.unwrap_or(64 * 1024).min(max) as usize);
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                counter.fetch_add(c.len() as u64, Ordering::Relaxed);
                if buf.len() as u64 + c.len() as u64 > max {
                    return Err(BodyError::TooLarge(buf.len() as u64 + c.len() as u64));
                }
                buf.extend_from_slice(&c);
            }
            Err(e) => {
                let got = buf.len() as u64;
                return match announced {
                    Some(expected) if got < expected && !e.is_timeout() => {
                        Err(BodyError::Truncated { got, expected })
                    }
                    _ => Err(BodyError::Transport(e)),
                };
            }
        }
    }
    if let Some(expected) = announced.filter(|&e| (buf.len() as u64) < e) {
        return Err(BodyError::Truncated {
            got: buf.len() as u64,
            expected,
        });
    }
    Ok(buf)
}

/// Maps a transport error to a row status; timeouts and connection failures are retryable.
fn classify(e: reqwest::Error) -> AttemptError {
    let (status, retryable) = if e.is_timeout() {
        (ImageStatus::Timeout, true)
    } else if e.is_redirect() {
        (ImageStatus::TooManyRedirects, false)
    } else if e.is_builder() {
        (ImageStatus::InvalidUrl, false)
    } else {
        (ImageStatus::ConnectError, true)
    };
    AttemptError {
        status,
        error: error_chain(&e),
        http_status: None,
        retryable,
        retry_after: None,
    }
}

/// The error and its sources on one line ("error sending request: connection refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let future =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(100));
        let d = parse_retry_after(&future).unwrap();
        assert!(
            d > Duration::from_secs(95) && d <= Duration::from_secs(100),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
