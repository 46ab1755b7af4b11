//! A small bench folder for the arena tests, and an HTTP client for its API.
//!
//! Every method's images are flat colours at a distance from the reference's colour that grows
//! with the method's position, so the simulated rater's fidelity rule has something to see.

use std::path::{Path, PathBuf};

use idforge_bench::arena::ArenaConfig;
use serde_json::Value;

/// Writes `<dir>/bench` with `identities` identities in one set, `prompts` prompts, `seeds`
/// seeds and the `methods` imported; returns its path.
pub fn make_bench(
    dir: &Path,
    methods: &[&str],
    identities: usize,
    prompts: usize,
    seeds: usize,
) -> PathBuf {
    let bench = dir.join("bench");
    std::fs::create_dir_all(&bench).unwrap();
    let mut protocol = format!(
        "[protocol]\nname = \"arena-test\"\nversion = 1\nseeds = [{}]\ncategories = [\"style\"]\n\n\
         [[sets]]\nname = \"in-train\"\n",
        (0..seeds)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for p in 0..prompts {
        protocol.push_str(&format!(
            "\n[[prompts]]\nid = \"p{p}\"\ncategory = \"style\"\n\
             general = \"a watercolour of a {{class}} {{trigger}} number {p}\"\nbackground = \"by a lake\"\n"
        ));
    }
    std::fs::write(bench.join("protocol.toml"), protocol).unwrap();
    let square = |rgb: [u8; 3]| image::RgbImage::from_pixel(24, 24, image::Rgb(rgb));
    for i in 0..identities {
        let d = bench.join("references/in-train").join(format!("id{i}"));
        std::fs::create_dir_all(&d).unwrap();
        square([100, 120, 140]).save(d.join("ref.png")).unwrap();
    }
    for (k, m) in methods.iter().enumerate() {
        let md = bench.join("generations").join(m);
        std::fs::create_dir_all(&md).unwrap();
        std::fs::write(md.join("method.toml"), format!("name = \"{m}\"\n")).unwrap();
        let shift = (k as u8) * 40;
        for i in 0..identities {
            for p in 0..prompts {
                let d = md.join(format!("id{i}/p{p}"));
                std::fs::create_dir_all(&d).unwrap();
                for s in 0..seeds {
                    square([100 + shift, 120, 140 - shift / 2])
                        .save(d.join(format!("{s}.png")))
                        .unwrap();
                }
            }
        }
    }
    bench
}

/// The defaults for the bench folder and database in `dir`.
pub fn config(dir: &Path, bench: &Path) -> ArenaConfig {
    ArenaConfig::new(bench, dir.join("votes.sqlite"))
}

/// The answer to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The JSON body (`Null` when it is not JSON).
    pub json: Value,
    /// Response headers, lowercase names.
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    /// The refusal's code, or "" if the body has none.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }

    /// The refusal's message, or "".
    pub fn message(&self) -> &str {
        self.json["error"]["message"].as_str().unwrap_or("")
    }
}

/// A client for one arena server.
#[derive(Debug, Clone)]
pub struct Http {
    /// `http://127.0.0.1:port`.
    pub base: String,
    client: reqwest::Client,
}

impl Http {
    /// A client for `base`.
    pub fn new(base: &str) -> Self {
        Http {
            base: base.trim_end_matches('/').to_string(),
            client: reqwest::Client::new(),
        }
    }

    /// `method path` with an optional bearer rater token, body and content type.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        rater: Option<&str>,
        body: Option<Vec<u8>>,
        content_type: Option<&str>,
    ) -> Reply {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(r) = rater {
            req = req.header("Authorization", format!("Bearer {r}"));
        }
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.expect("the server answers");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        Reply {
            status,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            headers,
        }
    }

    /// `GET path`, the raw body.
    pub async fn get_bytes(&self, path: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.bytes().await.unwrap().to_vec())
    }

    /// A new rater's token.
    pub async fn new_rater(&self) -> String {
        let r = self
            .send(reqwest::Method::POST, "/api/raters", None, None, None)
            .await;
        assert_eq!(r.status, 201, "{:?}", r.json);
        r.json["rater"].as_str().unwrap().to_string()
    }

    /// The rater's next task (`json["task"]`), asserting 200.
    pub async fn task(&self, rater: &str) -> Value {
        let r = self
            .send(reqwest::Method::POST, "/api/task", Some(rater), None, None)
            .await;
        assert_eq!(r.status, 200, "{:?}", r.json);
        r.json
    }

    /// Posts a vote body as JSON.
    pub async fn vote_raw(&self, rater: Option<&str>, body: &Value) -> Reply {
        self.send(
            reqwest::Method::POST,
            "/api/vote",
            rater,
            Some(body.to_string().into_bytes()),
            Some("application/json"),
        )
        .await
    }

    /// Answers `task` with `answer`.
    pub async fn vote(&self, rater: &str, task: &Value, answer: &str) -> Reply {
        let body = serde_json::json!({
            "token": task["token"],
            "question": task["question"],
            "answer": answer,
            "answer_ms": 0,
        });
        self.vote_raw(Some(rater), &body).await
    }
}

/// Rows of a query on the database, each as strings (for assertions).
pub fn query(db: &Path, sql: &str) -> Vec<Vec<String>> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |row| {
        (0..n)
            .map(|i| {
                let v: rusqlite::types::Value = row.get(i)?;
                Ok(match v {
                    rusqlite::types::Value::Null => "NULL".to_string(),
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    rusqlite::types::Value::Real(f) => f.to_string(),
                    rusqlite::types::Value::Text(t) => t,
                    rusqlite::types::Value::Blob(b) => format!("{b:?}"),
                })
            })
            .collect()
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// `SELECT count(*) …` as a number.
pub fn count(db: &Path, sql: &str) -> i64 {
    query(db, sql)[0][0].parse().unwrap()
}
