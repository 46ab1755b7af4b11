//! The vote database: SQLite in WAL mode with `synchronous = FULL`, so an answered 201 is on
//! disk, and readers (`arena export`) never block the server.
//!
//! ```text
//! meta(key, value)           schema_version, secret (hex), bench (absolute path), created_at
//! raters(rater, created_at)
//! tasks(task_id, rater, question, set_name, identity, prompt_id, seed, method_left,
//!       method_right, practice, nonce, shown_at, answered_at)
//!       UNIQUE(rater, question, set_name, identity, prompt_id, seed): never shown twice
//! votes(vote_id, task_id UNIQUE, rater, question, set_name, identity, prompt_id, seed,
//!       method_left, method_right, answer, practice, shown_at, answered_at, answer_ms)
//!       UNIQUE(rater, question, set_name, identity, prompt_id, seed): never voted twice
//! ```
//!
//! Times are milliseconds since the Unix epoch (UTC). Seeds are stored as SQLite integers
//! (protocol seeds above 2^63 are refused).

use std::path::{Path, PathBuf};

use idforge_core::schema::{Answer, Question, VoteRow};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::ArenaError;
use super::items::ItemKey;
use super::token::{SECRET_LEN, random_hex};

/// Version of the database layout; another is refused on open.
pub const STORE_SCHEMA_VERSION: u32 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS raters (
    rater TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS tasks (
    task_id INTEGER PRIMARY KEY,
    rater TEXT NOT NULL REFERENCES raters(rater),
    question TEXT NOT NULL CHECK (question IN ('fidelity', 'adherence')),
    set_name TEXT NOT NULL,
    identity TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    seed INTEGER NOT NULL,
    method_left TEXT NOT NULL,
    method_right TEXT NOT NULL,
    practice INTEGER NOT NULL,
    nonce TEXT NOT NULL,
    shown_at INTEGER NOT NULL,
    answered_at INTEGER,
    UNIQUE (rater, question, set_name, identity, prompt_id, seed)
) STRICT;
CREATE INDEX IF NOT EXISTS tasks_pending ON tasks (rater, answered_at);
CREATE TABLE IF NOT EXISTS votes (
    vote_id INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL UNIQUE REFERENCES tasks(task_id),
    rater TEXT NOT NULL,
    question TEXT NOT NULL,
    set_name TEXT NOT NULL,
    identity TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    seed INTEGER NOT NULL,
    method_left TEXT NOT NULL,
    method_right TEXT NOT NULL,
    answer TEXT NOT NULL CHECK (answer IN ('left', 'right', 'tie', 'neither')),
    practice INTEGER NOT NULL,
    shown_at INTEGER NOT NULL,
    answered_at INTEGER NOT NULL,
    answer_ms INTEGER NOT NULL,
    UNIQUE (rater, question, set_name, identity, prompt_id, seed)
) STRICT;
";

/// A pair shown to a rater.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    /// Row id (named by the pair token).
    pub task_id: i64,
    /// The rater.
    pub rater: String,
    /// The question asked.
    pub question: Question,
    /// The item.
    pub item: ItemKey,
    /// The method on the left.
    pub method_left: String,
    /// The method on the right.
    pub method_right: String,
    /// A practice task.
    pub practice: bool,
    /// The token's nonce.
    pub nonce: String,
    /// When it was served (ms).
    pub shown_at: i64,
    /// When it was answered (ms), if it was.
    pub answered_at: Option<i64>,
}

/// A pair about to be shown (the store adds the id and nonce).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    /// The rater.
    pub rater: String,
    /// The question.
    pub question: Question,
    /// The item.
    pub item: ItemKey,
    /// The method on the left.
    pub method_left: String,
    /// The method on the right.
    pub method_right: String,
    /// A practice task.
    pub practice: bool,
    /// When it is served (ms).
    pub shown_at: i64,
}

/// Why a vote was not stored.
#[derive(Debug)]
pub enum VoteRefusal {
    /// The task already has its answer (a replayed or re-sent token).
    AlreadyAnswered,
    /// The rater already answered this item for this question through another task.
    Duplicate,
    /// The database failed.
    Db(ArenaError),
}

/// The vote database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    secret: [u8; SECRET_LEN],
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

fn question_of(s: &str) -> rusqlite::Result<Question> {
    Question::parse(s)
        .ok_or_else(|| rusqlite::Error::InvalidColumnType(0, s.into(), rusqlite::types::Type::Text))
}

fn answer_of(s: &str) -> rusqlite::Result<Answer> {
    Answer::parse(s)
        .ok_or_else(|| rusqlite::Error::InvalidColumnType(0, s.into(), rusqlite::types::Type::Text))
}

fn seed_sql(seed: u64) -> Result<i64, String> {
    i64::try_from(seed).map_err(|_| format!("seed {seed} is above 2^63, which SQLite cannot store"))
}

const TASK_COLUMNS: &str = "task_id, rater, question, set_name, identity, prompt_id, seed, \
     method_left, method_right, practice, nonce, shown_at, answered_at";

fn task_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
    Ok(TaskRow {
        task_id: row.get(0)?,
        rater: row.get(1)?,
        question: question_of(&row.get::<_, String>(2)?)?,
        item: ItemKey {
            set: row.get(3)?,
            identity: row.get(4)?,
            prompt_id: row.get(5)?,
            seed: row.get::<_, i64>(6)? as u64,
        },
        method_left: row.get(7)?,
        method_right: row.get(8)?,
        practice: row.get(9)?,
        nonce: row.get(10)?,
        shown_at: row.get(11)?,
        answered_at: row.get(12)?,
    })
}

impl Store {
    /// Opens (or creates) the database at `path` for the arena of `bench`. A database made for
    /// another bench folder is refused, so votes on two benchmarks never mix.
    pub fn open(path: &Path, bench: &Path) -> Result<Self, ArenaError> {
        Self::open_rebinding(path, bench, false)
    }

    /// As [`Store::open`]; with `rebind`, a database made for the bench folder at another path
    /// (the folder was moved) is taken over: its recorded path becomes `bench`.
    pub fn open_rebinding(path: &Path, bench: &Path, rebind: bool) -> Result<Self, ArenaError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| ArenaError::Io {
                path: parent.to_path_buf(),
                cause: e,
            })?;
        }
        let err = |e: rusqlite::Error| ArenaError::db(path, e);
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(ArenaError::db(
                path,
                format!(
                    "cannot use WAL mode (journal mode is `{mode}`): put the database on a local disk"
                ),
            ));
        }
        conn.execute_batch(
            "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;",
        )
        .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            secret: [0; SECRET_LEN],
        };
        store.init_meta(bench, rebind)?;
        Ok(store)
    }

    /// Opens an existing database read-only (for export while a server runs).
    pub fn open_read_only(path: &Path) -> Result<Self, ArenaError> {
        if !path.is_file() {
            return Err(ArenaError::db(
                path,
                "no such file: give the --db an `idforge arena serve` wrote",
            ));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| ArenaError::db(path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| ArenaError::db(path, e))?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            secret: [0; SECRET_LEN],
        };
        store.check_version()?;
        Ok(store)
    }

    fn meta(&self, key: &str) -> Result<Option<String>, ArenaError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    fn err(&self, e: impl std::fmt::Display) -> ArenaError {
        ArenaError::db(&self.path, e)
    }

    fn check_version(&mut self) -> Result<(), ArenaError> {
        let found = self.meta("schema_version").map_err(|_| {
            self.err("not an arena database (no `meta` table): give the --db `idforge arena serve` wrote")
        })?;
        match found {
            Some(v) if v == STORE_SCHEMA_VERSION.to_string() => Ok(()),
            Some(v) => Err(self.err(format!(
                "database layout version {v}, this idforge reads {STORE_SCHEMA_VERSION}: use \
                 the idforge that wrote it, or export its votes with it"
            ))),
            None => Err(self.err("not an arena database (no schema version)")),
        }
    }

    fn init_meta(&mut self, bench: &Path, rebind: bool) -> Result<(), ArenaError> {
        let bench_abs = std::path::absolute(bench)
            .unwrap_or_else(|_| bench.to_path_buf())
            .to_string_lossy()
            .into_owned();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| ArenaError::db(&self.path, e))?;
        let get = |key: &str| -> rusqlite::Result<Option<String>> {
            tx.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        };
        let err = |e: rusqlite::Error| ArenaError::db(&self.path, e);
        let version = get("schema_version").map_err(err)?;
        match version {
            None => {
                let secret = random_hex(SECRET_LEN);
                for (k, v) in [
                    ("schema_version", STORE_SCHEMA_VERSION.to_string()),
                    ("secret", secret),
                    ("bench", bench_abs.clone()),
                    ("created_at", super::now_ms().to_string()),
                ] {
                    tx.execute(
                        "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                        params![k, v],
                    )
                    .map_err(err)?;
                }
            }
            Some(v) if v != STORE_SCHEMA_VERSION.to_string() => {
                return Err(ArenaError::db(
                    &self.path,
                    format!(
                        "database layout version {v}, this idforge writes {STORE_SCHEMA_VERSION}: \
                         start the arena with a new --db"
                    ),
                ));
            }
            Some(_) => {
                let stored = get("bench").map_err(err)?.unwrap_or_default();
                if stored != bench_abs && rebind {
                    tx.execute(
                        "UPDATE meta SET value = ?1 WHERE key = 'bench'",
                        params![bench_abs],
                    )
                    .map_err(err)?;
                } else if stored != bench_abs {
                    return Err(ArenaError::db(
                        &self.path,
                        format!(
                            "it holds the votes of the bench folder {stored}, not {bench_abs}: \
                             give each benchmark its own --db, or pass --rebind if the bench \
                             folder was moved there"
                        ),
                    ));
                }
            }
        }
        let secret = get("secret").map_err(err)?.unwrap_or_default();
        tx.commit().map_err(err)?;
        let bytes = hex::decode(&secret)
            .ok()
            .and_then(|b| <[u8; SECRET_LEN]>::try_from(b).ok())
            .ok_or_else(|| self.err("the stored secret is not 32 bytes of hex: the database was edited; start with a new --db"))?;
        self.secret = bytes;
        Ok(())
    }

    /// The HMAC secret, made when the database was created.
    pub fn secret(&self) -> [u8; SECRET_LEN] {
        self.secret
    }

    /// The bench folder the database belongs to (absolute, as `arena serve` was given it).
    pub fn bench(&self) -> Result<Option<PathBuf>, ArenaError> {
        Ok(self.meta("bench")?.map(PathBuf::from))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records a new rater.
    pub fn add_rater(&self, rater: &str, created_at: i64) -> Result<(), ArenaError> {
        self.conn
            .prepare_cached("INSERT INTO raters (rater, created_at) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![rater, created_at]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every rater and when it was issued.
    pub fn raters(&self) -> Result<Vec<(String, i64)>, ArenaError> {
        let mut s = self
            .conn
            .prepare("SELECT rater, created_at FROM raters")
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }

    /// Stores a shown pair with a fresh nonce.
    pub fn insert_task(&self, t: &NewTask) -> Result<TaskRow, ArenaError> {
        let nonce = random_hex(16);
        let seed = seed_sql(t.item.seed).map_err(|m| self.err(m))?;
        self.conn
            .prepare_cached(
                "INSERT INTO tasks (rater, question, set_name, identity, prompt_id, seed, \
                 method_left, method_right, practice, nonce, shown_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    t.rater,
                    t.question.as_str(),
                    t.item.set,
                    t.item.identity,
                    t.item.prompt_id,
                    seed,
                    t.method_left,
                    t.method_right,
                    t.practice,
                    nonce,
                    t.shown_at,
                ])
            })
            .map_err(|e| self.err(format!("storing a shown pair: {e}")))?;
        Ok(TaskRow {
            task_id: self.conn.last_insert_rowid(),
            rater: t.rater.clone(),
            question: t.question,
            item: t.item.clone(),
            method_left: t.method_left.clone(),
            method_right: t.method_right.clone(),
            practice: t.practice,
            nonce,
            shown_at: t.shown_at,
            answered_at: None,
        })
    }

    /// The task `task_id`.
    pub fn task(&self, task_id: i64) -> Result<Option<TaskRow>, ArenaError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?1"
            ))
            .and_then(|mut s| s.query_row([task_id], task_of).optional())
            .map_err(|e| self.err(e))
    }

    /// The rater's latest unanswered task shown after `since` (ms), to show again on reload.
    pub fn pending_task(&self, rater: &str, since: i64) -> Result<Option<TaskRow>, ArenaError> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE rater = ?1 AND answered_at IS NULL \
                 AND shown_at > ?2 ORDER BY task_id DESC LIMIT 1"
            ))
            .and_then(|mut s| s.query_row(params![rater, since], task_of).optional())
            .map_err(|e| self.err(e))
    }

    /// Every task, in id order (the scheduler's state after a restart).
    pub fn tasks(&self) -> Result<Vec<TaskRow>, ArenaError> {
        let mut s = self
            .conn
            .prepare(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks ORDER BY task_id"
            ))
            .map_err(|e| self.err(e))?;
        let rows = s.query_map([], task_of).map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }

    /// Stores the answer to `task` in one transaction: the task is marked answered (once) and
    /// the vote inserted, or neither.
    pub fn insert_vote(
        &mut self,
        task: &TaskRow,
        answer: Answer,
        answered_at: i64,
        answer_ms: i64,
    ) -> Result<i64, VoteRefusal> {
        let path = self.path.clone();
        let db = |e: rusqlite::Error| VoteRefusal::Db(ArenaError::db(&path, e));
        let seed =
            seed_sql(task.item.seed).map_err(|m| VoteRefusal::Db(ArenaError::db(&path, m)))?;
        let tx = self.conn.transaction().map_err(db)?;
        let changed = tx
            .prepare_cached(
                "UPDATE tasks SET answered_at = ?1 WHERE task_id = ?2 AND answered_at IS NULL",
            )
            .and_then(|mut s| s.execute(params![answered_at, task.task_id]))
            .map_err(db)?;
        if changed == 0 {
            return Err(VoteRefusal::AlreadyAnswered);
        }
        let inserted = tx
            .prepare_cached(
                "INSERT INTO votes (task_id, rater, question, set_name, identity, prompt_id, \
                 seed, method_left, method_right, answer, practice, shown_at, answered_at, \
                 answer_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    task.task_id,
                    task.rater,
                    task.question.as_str(),
                    task.item.set,
                    task.item.identity,
                    task.item.prompt_id,
                    seed,
                    task.method_left,
                    task.method_right,
                    answer.as_str(),
                    task.practice,
                    task.shown_at,
                    answered_at,
                    answer_ms,
                ])
            });
        match inserted {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(VoteRefusal::Duplicate);
            }
            Err(e) => return Err(db(e)),
        }
        let id = tx.last_insert_rowid();
        tx.commit().map_err(db)?;
        Ok(id)
    }

    /// Every vote, in id order.
    pub fn votes(&self) -> Result<Vec<VoteRow>, ArenaError> {
        let mut s = self
            .conn
            .prepare(
                "SELECT vote_id, rater, question, set_name, identity, prompt_id, seed, \
                 method_left, method_right, answer, practice, shown_at, answered_at, answer_ms \
                 FROM votes ORDER BY vote_id",
            )
            .map_err(|e| self.err(e))?;
        let rows = s
            .query_map([], |r| {
                Ok(VoteRow {
                    vote_id: r.get(0)?,
                    rater: r.get(1)?,
                    question: question_of(&r.get::<_, String>(2)?)?,
                    set: r.get(3)?,
                    identity: r.get(4)?,
                    prompt_id: r.get(5)?,
                    seed: r.get::<_, i64>(6)? as u64,
                    method_left: r.get(7)?,
                    method_right: r.get(8)?,
                    answer: answer_of(&r.get::<_, String>(9)?)?,
                    practice: r.get(10)?,
                    shown_at: r.get(11)?,
                    answered_at: r.get(12)?,
                    answer_ms: r.get(13)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }

    /// How many votes are stored (practice included).
    pub fn vote_count(&self) -> Result<i64, ArenaError> {
        self.conn
            .query_row("SELECT count(*) FROM votes", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }
}
