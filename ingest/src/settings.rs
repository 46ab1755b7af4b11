//! The `[ingest]` table of a recipe. Every field has a default; CLI flags override them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::source::SourceSpec;

/// Settings of the ingest stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// Where the rows come from, in order; `row_id`s follow this order.
    pub sources: Vec<SourceSpec>,
    /// Content-addressed store; `<run>/ingest/store` by default. A shared store lets several
    /// runs reuse bytes.
    pub store: Option<PathBuf>,
    /// Number of shards the input rows are split into (each resumable on its own).
    pub shards: usize,
    /// Images with more pixels than this are `too_large` (decompression-bomb guard).
    pub max_pixels: u64,
    /// Hamming distance at or below which two pHashes are the same photograph.
    pub phash_threshold: u32,
    /// Threads for decoding and hashing; 0 means one per core.
    pub decode_threads: usize,
    /// HTTP behaviour.
    pub fetch: FetchSettings,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            sources: Vec::new(),
            store: None,
            shards: 1,
            max_pixels: idforge_core::image_io::DEFAULT_MAX_PIXELS,
            phash_threshold: 4,
            decode_threads: 0,
            fetch: FetchSettings::default(),
        }
    }
}

/// How URLs are fetched: limits, retries and opt-out handling.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchSettings {
    /// Sent with every request; its first product token (`idforge`) is the name robots.txt
    /// groups and scoped `X-Robots-Tag` directives are matched against.
    pub user_agent: String,
    /// Requests in flight across all hosts.
    pub concurrency: usize,
    /// Requests in flight to one host.
    pub per_host_concurrency: usize,
    /// Requests per second to one host; 0 means unlimited.
    pub per_host_rate: f64,
    /// Seconds to establish a connection.
    pub connect_timeout_s: f64,
    /// Seconds for a whole request, body included.
    pub timeout_s: f64,
    /// Bodies larger than this are abandoned as `too_large`.
    pub max_bytes: u64,
    /// Redirects followed before `too_many_redirects`.
    pub max_redirects: usize,
    /// Retries after the first attempt, for 408/429/5xx, timeouts and connection errors.
    pub retries: u32,
    /// First backoff in seconds; doubles each retry, with full jitter.
    pub backoff_s: f64,
    /// Longest backoff in seconds.
    pub max_backoff_s: f64,
    /// A `Retry-After` longer than this gives up instead of waiting.
    pub max_retry_after_s: f64,
    /// Honour robots.txt (RFC 9309) for image URLs.
    pub robots_txt: bool,
    /// Honour `X-Robots-Tag` opt-outs (noai, noimageai, noindex, noimageindex, none).
    pub x_robots_tag: bool,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            user_agent: format!(
                "idforge/{} (identity dataset builder; honours robots.txt and X-Robots-Tag noai)",
                env!("CARGO_PKG_VERSION")
            ),
            concurrency: 64,
            per_host_concurrency: 8,
            per_host_rate: 0.0,
            connect_timeout_s: 10.0,
            timeout_s: 30.0,
            max_bytes: 50 * 1024 * 1024,
            max_redirects: 5,
            retries: 3,
            backoff_s: 0.5,
            max_backoff_s: 30.0,
            max_retry_after_s: 120.0,
            robots_txt: true,
            x_robots_tag: true,
        }
    }
}

impl FetchSettings {
    /// The user-agent product token opt-outs are matched against (`idforge` by default).
    pub fn agent_token(&self) -> String {
        self.user_agent
            .split(|c: char| c == '/' || c.is_whitespace())
            .next()
            .unwrap_or("idforge")
            .to_ascii_lowercase()
    }
}
