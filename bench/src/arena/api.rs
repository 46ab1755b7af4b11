//! The JSON the arena's HTTP API speaks, shared by the server, the page's script (by hand), the
//! simulated rater and the tests.
//!
//! ```text
//! POST /api/raters                      → 201 RaterResponse
//! POST /api/task   (Bearer rater)       → 200 TaskResponse (the pending pair again on reload)
//! POST /api/vote   (Bearer rater, VoteRequest) → 201 VoteResponse
//! GET  /img/<id>                        → the image (opaque id: no method name)
//! GET  /healthz                         → 200 Health
//! every refusal                         → 4xx ErrorBody {"error": {"code", "message"}}
//! ```

use serde::{Deserialize, Serialize};

/// A new rater's credential; the page keeps it in `localStorage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaterResponse {
    /// The signed rater token, sent back as `Authorization: Bearer <rater>`.
    pub rater: String,
    /// The opaque rater id the votes table stores.
    pub id: String,
}

/// One pair to judge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShownTask {
    /// The signed pair token, sent back with the answer.
    pub token: String,
    /// `fidelity` or `adherence`.
    pub question: String,
    /// The question as the page asks it.
    pub instruction: String,
    /// The reference image's URL (fidelity only).
    pub reference: Option<String>,
    /// The prompt without trigger (adherence only).
    pub prompt: Option<String>,
    /// The left image's URL.
    pub left: String,
    /// The right image's URL.
    pub right: String,
    /// A practice task: stored, not rated.
    pub practice: bool,
    /// 1-based position among the question's practice tasks (practice only).
    pub practice_number: Option<u32>,
    /// Practice tasks per question.
    pub practice_total: u32,
}

/// The answer to `POST /api/task`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResponse {
    /// No pair is left for this rater.
    pub done: bool,
    /// The pair, unless done.
    pub task: Option<ShownTask>,
    /// The rater's counted (non-practice) answers so far.
    pub answered: u64,
}

/// The body of `POST /api/vote`. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRequest {
    /// The pair token from [`ShownTask::token`].
    pub token: String,
    /// The question the page showed (must match the token's task).
    pub question: String,
    /// `left`, `right`, `tie` or `neither`.
    pub answer: String,
    /// Milliseconds from the images being on screen to the click.
    pub answer_ms: i64,
}

/// The answer to an accepted vote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteResponse {
    /// The stored vote's id.
    pub vote_id: i64,
    /// Whether it was a practice answer.
    pub practice: bool,
    /// The rater's counted answers, this one included.
    pub answered: u64,
}

/// What a refusal carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable machine-readable code (`forged_token`, `already_answered`, …).
    pub code: String,
    /// What is wrong and what to do, for people.
    pub message: String,
}

/// Every 4xx/5xx body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// `GET /healthz`, for scripts waiting for the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always true when it answers.
    pub ok: bool,
    /// Items with two methods or more.
    pub items: usize,
    /// Contestants.
    pub methods: usize,
    /// Votes stored (practice included).
    pub votes: i64,
}
