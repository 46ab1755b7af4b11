//! The `votes` table: one row per answer a rater gave in the preference arena (`idforge arena
//! export`), the input of the Bradley–Terry leaderboard.
//!
//! A row names both methods as they were shown (left, right), so the shown order is kept and a
//! position bias can be measured. Practice answers are rows too (`practice = true`): stored, so
//! a rater's session can be audited, but never rated. Times are milliseconds since the Unix
//! epoch, UTC: the row holds them as `i64`, the Parquet column is `timestamp[ms, tz=UTC]`.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Int64Array, RecordBatch, StringArray,
    StringBuilder, TimestampMillisecondArray, TimestampMillisecondBuilder, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

/// Table name in the Parquet metadata.
pub const VOTES_TABLE: &str = "votes";
/// Version of the `votes` schema; see the migration notes in `docs/ARCHITECTURE.md`.
pub const VOTES_SCHEMA_VERSION: u32 = 1;

/// What the rater was asked; each question has its own leaderboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Question {
    /// "Which looks more like the person in the reference?" (shown with the reference).
    Fidelity,
    /// "Which matches the prompt better?" (shown with the prompt text).
    Adherence,
}

impl Question {
    /// Every question, in display order.
    pub const ALL: [Question; 2] = [Question::Fidelity, Question::Adherence];

    /// The value stored in the `question` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Question::Fidelity => "fidelity",
            Question::Adherence => "adherence",
        }
    }

    /// The inverse of [`Question::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// A rater's answer, relative to the shown order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// The left image (`method_left`) is better.
    Left,
    /// The right image (`method_right`) is better.
    Right,
    /// Both are equally good.
    Tie,
    /// Neither answers the question (both bad); rated as a tie or dropped, the leaderboard's
    /// choice.
    Neither,
}

impl Answer {
    /// Every answer, in button order.
    pub const ALL: [Answer; 4] = [Answer::Left, Answer::Right, Answer::Tie, Answer::Neither];

    /// The value stored in the `answer` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Left => "left",
            Answer::Right => "right",
            Answer::Tie => "tie",
            Answer::Neither => "neither",
        }
    }

    /// The inverse of [`Answer::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRow {
    /// The arena database's id of the vote, increasing in the order votes were stored.
    pub vote_id: i64,
    /// An opaque rater id (random, issued by the server; no personal data).
    pub rater: String,
    /// Which question was asked.
    pub question: Question,
    /// The item's reference set.
    pub set: String,
    /// The item's identity.
    pub identity: String,
    /// The item's prompt id.
    pub prompt_id: String,
    /// The item's seed.
    pub seed: u64,
    /// The method shown on the left.
    pub method_left: String,
    /// The method shown on the right.
    pub method_right: String,
    /// The answer, relative to the shown order.
    pub answer: Answer,
    /// A practice item: stored, never rated.
    pub practice: bool,
    /// When the pair was served, ms since the Unix epoch (UTC).
    pub shown_at: i64,
    /// When the answer was stored, ms since the Unix epoch (UTC).
    pub answered_at: i64,
    /// Time to answer as the page measured it (ms), which excludes network time.
    pub answer_ms: i64,
}

impl VoteRow {
    /// The method the answer prefers, if any (`left` / `right`); `None` for `tie` / `neither`.
    pub fn winner(&self) -> Option<&str> {
        match self.answer {
            Answer::Left => Some(&self.method_left),
            Answer::Right => Some(&self.method_right),
            Answer::Tie | Answer::Neither => None,
        }
    }
}

/// The rows of `votes.parquet`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VotesTable {
    /// In `vote_id` order.
    pub rows: Vec<VoteRow>,
}

const STRING_COLUMNS: [&str; 8] = [
    "rater",
    "question",
    "set",
    "identity",
    "prompt_id",
    "method_left",
    "method_right",
    "answer",
];

fn string_of(r: &VoteRow, column: &str) -> String {
    match column {
        "rater" => r.rater.clone(),
        "question" => r.question.as_str().to_string(),
        "set" => r.set.clone(),
        "identity" => r.identity.clone(),
        "prompt_id" => r.prompt_id.clone(),
        "method_left" => r.method_left.clone(),
        "method_right" => r.method_right.clone(),
        "answer" => r.answer.as_str().to_string(),
        other => unreachable!("not a string column: {other}"),
    }
}

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The Arrow schema of the `votes` table.
pub fn votes_schema() -> SchemaRef {
    let mut fields = vec![Field::new("vote_id", DataType::Int64, false)];
    fields.extend(
        STRING_COLUMNS
            .iter()
            .map(|&n| Field::new(n, DataType::Utf8, false)),
    );
    // Unsigned like the `scores` table's seed, so the two join without a cast.
    fields.push(Field::new("seed", DataType::UInt64, false));
    fields.push(Field::new("practice", DataType::Boolean, false));
    fields.push(Field::new("shown_at", timestamp_type(), false));
    fields.push(Field::new("answered_at", timestamp_type(), false));
    fields.push(Field::new("answer_ms", DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

impl VotesTable {
    /// The rows as one record batch.
    pub fn to_batch(&self) -> Result<RecordBatch> {
        let rows = &self.rows;
        let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.vote_id),
        ))];
        for name in STRING_COLUMNS {
            let mut b = StringBuilder::new();
            for r in rows {
                b.append_value(string_of(r, name));
            }
            columns.push(Arc::new(b.finish()));
        }
        columns.push(Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.seed),
        )));
        let mut practice = BooleanBuilder::with_capacity(rows.len());
        for r in rows {
            practice.append_value(r.practice);
        }
        columns.push(Arc::new(practice.finish()));
        for get in [|r: &VoteRow| r.shown_at, |r: &VoteRow| r.answered_at] {
            let mut b = TimestampMillisecondBuilder::with_capacity(rows.len()).with_timezone("UTC");
            for r in rows {
                b.append_value(get(r));
            }
            columns.push(Arc::new(b.finish()));
        }
        columns.push(Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.answer_ms),
        )));
        RecordBatch::try_new(votes_schema(), columns).map_err(|e| CoreError::Schema {
            path: "votes table".into(),
            message: e.to_string(),
        })
    }

    /// Rows from record batches read from `path` (named in errors).
    pub fn from_batches(path: &Path, batches: &[RecordBatch]) -> Result<Self> {
        let expected = votes_schema();
        let mut rows = Vec::new();
        for batch in batches {
            crate::table::check_columns(path, VOTES_TABLE, &expected, &batch.schema())?;
            let col = |name: &str| batch.column_by_name(name).expect("schema checked above");
            let string = |name: &str| col(name).as_any().downcast_ref::<StringArray>().unwrap();
            let int = |name: &str| col(name).as_any().downcast_ref::<Int64Array>().unwrap();
            let ts = |name: &str| {
                col(name)
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .unwrap()
            };
            let seed = col("seed").as_any().downcast_ref::<UInt64Array>().unwrap();
            let practice = col("practice")
                .as_any()
                .downcast_ref::<BooleanArray>()
                .unwrap();
            for i in 0..batch.num_rows() {
                let s = |name: &str| string(name).value(i).to_string();
                let bad = |message: String| CoreError::Schema {
                    path: path.to_path_buf(),
                    message: format!("row {i}: {message}"),
                };
                let question = s("question");
                let question = Question::parse(&question)
                    .ok_or_else(|| bad(format!("unknown question `{question}`")))?;
                let answer = s("answer");
                let answer = Answer::parse(&answer)
                    .ok_or_else(|| bad(format!("unknown answer `{answer}`")))?;
                rows.push(VoteRow {
                    vote_id: int("vote_id").value(i),
                    rater: s("rater"),
                    question,
                    set: s("set"),
                    identity: s("identity"),
                    prompt_id: s("prompt_id"),
                    seed: seed.value(i),
                    method_left: s("method_left"),
                    method_right: s("method_right"),
                    answer,
                    practice: practice.value(i),
                    shown_at: ts("shown_at").value(i),
                    answered_at: ts("answered_at").value(i),
                    answer_ms: int("answer_ms").value(i),
                });
            }
        }
        Ok(VotesTable { rows })
    }

    /// Writes `path` (staged, then renamed into place).
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::table::write_parquet(path, &self.to_batch()?, VOTES_TABLE, VOTES_SCHEMA_VERSION)
    }

    /// Reads `path`, refusing another table or schema version.
    pub fn read(path: &Path) -> Result<Self> {
        let batches = crate::table::read_parquet(path, VOTES_TABLE, VOTES_SCHEMA_VERSION)?;
        Self::from_batches(path, &batches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_survive_a_parquet_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("votes.parquet");
        let first = VoteRow {
            vote_id: 1,
            rater: "r-1".into(),
            question: Question::Fidelity,
            set: "in-train".into(),
            identity: "alice".into(),
            prompt_id: "style-01".into(),
            seed: 3,
            method_left: "a".into(),
            method_right: "b".into(),
            answer: Answer::Right,
            practice: false,
            shown_at: 1_700_000_000_000,
            answered_at: 1_700_000_002_500,
            answer_ms: 2_400,
        };
        let second = VoteRow {
            vote_id: 2,
            question: Question::Adherence,
            answer: Answer::Neither,
            practice: true,
            ..first.clone()
        };
        let table = VotesTable {
            rows: vec![first.clone(), second],
        };
        table.write(&path).unwrap();
        assert_eq!(VotesTable::read(&path).unwrap(), table);
        assert_eq!(first.winner(), Some("b"));
    }

    #[test]
    fn enums_parse_what_they_print() {
        for q in Question::ALL {
            assert_eq!(Question::parse(q.as_str()), Some(q));
        }
        for a in Answer::ALL {
            assert_eq!(Answer::parse(a.as_str()), Some(a));
        }
        assert_eq!(Answer::parse("Left"), None);
        assert_eq!(Question::parse(""), None);
    }
}
