//! A scripted rater for demos and for testing a deployment: it goes through the HTTP API as the
//! page does (new rater, pair, images, vote) and answers by a fixed rule. Its votes are a
//! simulation, never data about methods.
//!
//! The rule sees only what a person sees (the images, not the method names):
//! - fidelity: the image nearer the reference wins more often. Both are reduced to 32×32 grey
//!   thumbnails; with `d` their mean absolute difference to the reference's, the left image wins
//!   with probability `σ(8 · (d_right − d_left) / (d_left + d_right))`; 5 % of answers are `tie`,
//!   2 % `neither`.
//! - adherence: it cannot read prompts, so it answers at random: 10 % `tie`, 5 % `neither`,
//!   otherwise left or right with equal odds.
//!
//! Each rater has its own random stream derived from the seed, so a run is reproducible up to
//! the server's own random choices (pairs, left/right order).

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::de::DeserializeOwned;

use super::ArenaError;
use super::api::{ErrorBody, RaterResponse, ShownTask, TaskResponse, VoteRequest, VoteResponse};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// The arena's base URL (`http://127.0.0.1:8080`).
    pub url: String,
    /// Raters working at the same time.
    pub raters: usize,
    /// Counted (non-practice) votes per rater; a rater stops earlier when no pair is left.
    pub votes: usize,
    /// Seed of the raters' answers.
    pub seed: u64,
}

/// What a simulation did.
#[derive(Debug, Clone, Default)]
pub struct SimulateReport {
    /// Raters that took part.
    pub raters: usize,
    /// Counted votes accepted.
    pub votes: usize,
    /// Practice votes accepted.
    pub practice: usize,
    /// Ids of every accepted vote (practice included), as the server answered them.
    pub vote_ids: Vec<i64>,
    /// Raters who ran out of pairs before casting `votes`.
    pub exhausted: usize,
    /// Images downloaded.
    pub images: usize,
    /// Wall time.
    pub elapsed: Duration,
}

impl SimulateReport {
    /// Accepted votes per second, practice included.
    pub fn votes_per_second(&self) -> f64 {
        self.vote_ids.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    fn err(&self, message: impl Into<String>) -> ArenaError {
        ArenaError::Simulate {
            url: self.url.clone(),
            message: message.into(),
        }
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        rater: Option<&str>,
        body: Option<&VoteRequest>,
    ) -> Result<T, ArenaError> {
        let mut req = self.http.post(format!("{}{path}", self.url));
        if let Some(r) = rater {
            req = req.header("Authorization", format!("Bearer {r}"));
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(serde_json::to_vec(b).expect("plain struct"));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.err(format!("POST {path}: {e} (is the server running?)")))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.err(format!("POST {path}: reading the answer: {e}")))?;
        if !status.is_success() {
            let detail = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| format!("{}: {}", b.error.code, b.error.message))
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(self.err(format!("POST {path}: HTTP {status}: {detail}")));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| self.err(format!("POST {path}: unexpected answer ({e})")))
    }

    async fn image(&self, path: &str) -> Result<Option<image::GrayImage>, ArenaError> {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .map_err(|e| self.err(format!("GET {path}: {e}")))?;
        if !resp.status().is_success() {
            return Err(self.err(format!("GET {path}: HTTP {}", resp.status())));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.err(format!("GET {path}: {e}")))?;
        // An image that does not decode is judged as a person would: as neither.
        Ok(image::load_from_memory(&bytes).ok().map(|img| {
            image::imageops::resize(
                &img.into_luma8(),
                32,
                32,
                image::imageops::FilterType::Triangle,
            )
        }))
    }
}

fn distance(a: &image::GrayImage, b: &image::GrayImage) -> f64 {
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    sum as f64 / (a.as_raw().len() as f64 * 255.0)
}

/// The rule of the module docs.
fn decide(
    task: &ShownTask,
    reference: Option<&image::GrayImage>,
    left: Option<&image::GrayImage>,
    right: Option<&image::GrayImage>,
    rng: &mut StdRng,
) -> &'static str {
    let (Some(l), Some(r)) = (left, right) else {
        return "neither";
    };
    let u: f64 = rng.random();
    if task.question == "fidelity"
        && let Some(reference) = reference
    {
        if u < 0.05 {
            return "tie";
        }
        if u < 0.07 {
            return "neither";
        }
        let (dl, dr) = (distance(l, reference), distance(r, reference));
        let p_left = 1.0 / (1.0 + (-8.0 * (dr - dl) / (dl + dr + 1e-9)).exp());
        return if rng.random_bool(p_left.clamp(0.0, 1.0)) {
            "left"
        } else {
            "right"
        };
    }
    if u < 0.10 {
        "tie"
    } else if u < 0.15 {
        "neither"
    } else if rng.random_bool(0.5) {
        "left"
    } else {
        "right"
    }
}

async fn one_rater(client: &Client, votes: usize, seed: u64) -> Result<SimulateReport, ArenaError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = SimulateReport {
        raters: 1,
        ..SimulateReport::default()
    };
    let rater: RaterResponse = client.post("/api/raters", None, None).await?;
    while report.votes < votes {
        let next: TaskResponse = client.post("/api/task", Some(&rater.rater), None).await?;
        let Some(task) = next.task else {
            report.exhausted = 1;
            break;
        };
        let shown = Instant::now();
        let reference = match &task.reference {
            Some(p) => client.image(p).await?,
            None => None,
        };
        let left = client.image(&task.left).await?;
        let right = client.image(&task.right).await?;
        report.images += 2 + usize::from(task.reference.is_some());
        let answer = decide(
            &task,
            reference.as_ref(),
            left.as_ref(),
            right.as_ref(),
            &mut rng,
        );
        let vote = VoteRequest {
            token: task.token.clone(),
            question: task.question.clone(),
            answer: answer.into(),
            answer_ms: shown.elapsed().as_millis() as i64,
        };
        let done: VoteResponse = client
            .post("/api/vote", Some(&rater.rater), Some(&vote))
            .await?;
        report.vote_ids.push(done.vote_id);
        if done.practice {
            report.practice += 1;
        } else {
            report.votes += 1;
        }
    }
    Ok(report)
}

/// Runs `raters` simulated raters at once against the server at `url`. Any refusal is an
/// error: an honest client's votes must all be accepted.
pub async fn simulate(opts: &SimulateOptions) -> Result<SimulateReport, ArenaError> {
    let url = opts.url.trim_end_matches('/').to_string();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(opts.raters.max(1))
        .build()
        .map_err(|e| ArenaError::Simulate {
            url: url.clone(),
            message: format!("HTTP client: {e}"),
        })?;
    let client = std::sync::Arc::new(Client { http, url });
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..opts.raters {
        let client = std::sync::Arc::clone(&client);
        let seed = opts
            .seed
            .wrapping_add((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let votes = opts.votes;
        set.spawn(async move { one_rater(&client, votes, seed).await });
    }
    let mut total = SimulateReport::default();
    while let Some(done) = set.join_next().await {
        let r = done.map_err(|e| client.err(format!("a rater's task failed: {e}")))??;
        total.raters += r.raters;
        total.votes += r.votes;
        total.practice += r.practice;
        total.exhausted += r.exhausted;
        total.images += r.images;
        total.vote_ids.extend(r.vote_ids);
    }
    total.vote_ids.sort_unstable();
    total.elapsed = start.elapsed();
    Ok(total)
}

/// [`simulate`] on its own runtime, for callers without one.
pub fn simulate_blocking(opts: &SimulateOptions) -> Result<SimulateReport, ArenaError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ArenaError::Simulate {
            url: opts.url.clone(),
            message: format!("starting the runtime: {e}"),
        })?
        .block_on(simulate(opts))
}
