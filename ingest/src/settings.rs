//! The `[ingest]` table of a recipe. Every field has a default; CLI flags override them.

use std::path::PathBuf;

use idforge_core::limits::{
    ByteLimit, Concurrency, Delay, Hamming, PixelLimit, Rate, Redirects, Retries, Seconds, Shards,
    Threads,
};
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
    pub shards: Shards,
    /// Images with more pixels than this are `too_large` (decompression-bomb guard).
    pub max_pixels: PixelLimit,
    /// Hamming distance at or below which two pHashes are the same photograph.
    pub phash_threshold: Hamming,
    /// Threads for decoding and hashing; 0 means one per core.
    pub decode_threads: Threads,
    /// Read rows of a URL list that are local paths instead of URLs. Off by default: a list
    /// from a third party could otherwise pull any readable image on this machine into a
    /// dataset that may be published. When on, only paths under the list's own folder are
    /// read (no absolute paths, no `..`) unless `allow_absolute_paths` is set too. Folders
    /// given as sources are not affected.
    pub allow_local_paths: bool,
    /// With `allow_local_paths`: also read absolute paths and paths leaving the list's folder.
    pub allow_absolute_paths: bool,
    /// HTTP behaviour.
    pub fetch: FetchSettings,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            sources: Vec::new(),
            store: None,
            shards: Shards::lit(1),
            max_pixels: PixelLimit::lit(idforge_core::image_io::DEFAULT_MAX_PIXELS),
            phash_threshold: Hamming::lit(4),
            decode_threads: Threads::lit(0),
            allow_local_paths: false,
            allow_absolute_paths: false,
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
    pub concurrency: Concurrency,
    /// Requests in flight to one host.
    pub per_host_concurrency: Concurrency,
    /// Requests per second to one host; 0 means unlimited.
    pub per_host_rate: Rate,
    /// Seconds to establish a connection.
    pub connect_timeout_s: Seconds,
    /// Seconds for a whole request, body included.
    pub timeout_s: Seconds,
    /// Bodies larger than this are abandoned as `too_large`.
    pub max_bytes: ByteLimit,
    /// Redirects followed before `too_many_redirects`.
    pub max_redirects: Redirects,
    /// Retries after the first attempt, for 408/429/5xx, timeouts and connection errors.
    pub retries: Retries,
    /// First backoff in seconds; doubles each retry, with full jitter.
    pub backoff_s: Delay,
    /// Longest backoff in seconds.
    pub max_backoff_s: Delay,
    /// A `Retry-After` longer than this gives up instead of waiting.
    pub max_retry_after_s: Delay,
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
            concurrency: Concurrency::lit(64),
            per_host_concurrency: Concurrency::lit(8),
            per_host_rate: Rate::lit(0.0),
            connect_timeout_s: Seconds::lit(10.0),
            timeout_s: Seconds::lit(30.0),
            max_bytes: ByteLimit::lit(50 * 1024 * 1024),
            max_redirects: Redirects::lit(5),
            retries: Retries::lit(3),
            backoff_s: Delay::lit(0.5),
            max_backoff_s: Delay::lit(30.0),
            max_retry_after_s: Delay::lit(120.0),
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
