//! A minimal W3C WebDriver client for headless Chromium: enough to load a page, find elements
//! by CSS, click, type keys, read text and attributes, run script, read the browser console and
//! take screenshots.
//!
//! It starts its own `chromedriver` on a free loopback port and talks HTTP/1.1 over a plain
//! `TcpStream` (one request per connection), so it needs no async runtime or HTTP crate. The
//! session uses a fresh profile in a temporary folder; dropping the client quits the browser and
//! kills the driver.
//!
//! Binaries: `$CHROMEDRIVER` and `$CHROME_BIN` when set, else `chromedriver` and the first of
//! `chromium`, `chromium-browser`, `google-chrome` on `PATH`. Missing ones are an error that
//! says how to install them; tests must fail on it, never skip.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The key W3C uses for element references in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How to get the browser, for error messages.
pub const INSTALL_HINT: &str = "install Chromium and its driver (Debian/Ubuntu: \
    `sudo apt-get install chromium chromium-driver`), or point $CHROME_BIN and $CHROMEDRIVER at them";

/// An element found on the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element(String);

/// One browser console message.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// `SEVERE`, `WARNING`, `INFO`, `DEBUG`.
    pub level: String,
    /// `console-api`, `network`, `javascript`, `security`, …
    pub source: String,
    /// The message text.
    pub message: String,
}

/// A chromedriver process and one browser session on it.
pub struct WebDriver {
    driver: Child,
    port: u16,
    session: String,
    log_file: PathBuf,
    scratch: tempfile::TempDir,
}

/// Result of this module's calls: errors are messages ready for a test failure.
pub type Result<T> = std::result::Result<T, String>;

/// The first of `names` that is an executable file on `PATH`.
fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in names {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// `$var` if set, else the first of `names` on `PATH`.
fn locate(var: &str, names: &[&str]) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "${var} = {} is not a file; {INSTALL_HINT}",
                p.display()
            ))
        };
    }
    which(names).ok_or_else(|| format!("{} not found on PATH; {INSTALL_HINT}", names.join(" / ")))
}

/// A port nothing listens on right now.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// One HTTP/1.1 request to `127.0.0.1:port` on its own connection; returns status and body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("connect to chromedriver: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{method} {path}: {e}"))?;
    // chromedriver keeps the connection open despite `Connection: close`, so the body is read
    // by its length (or its chunks), not to the end of the stream.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let read_more = |stream: &mut TcpStream, raw: &mut Vec<u8>, buf: &mut [u8]| -> Result<bool> {
        let n = stream
            .read(buf)
            .map_err(|e| format!("{method} {path}: reading the answer: {e}"))?;
        raw.extend_from_slice(&buf[..n]);
        Ok(n > 0)
    };
    let split = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if !read_more(&mut stream, &mut raw, &mut buf)? {
            return Err(format!(
                "{method} {path}: connection closed before the HTTP header ended"
            ));
        }
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{method} {path}: bad status line in {head:?}"))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let start = split + 4;
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            if let Some(body) = dechunk(&raw[start..]) {
                break body;
            }
            if !read_more(&mut stream, &mut raw, &mut buf)? {
                return Err(format!(
                    "{method} {path}: connection closed inside a chunked body"
                ));
            }
        }
    } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while raw.len() < start + len {
            if !read_more(&mut stream, &mut raw, &mut buf)? {
                return Err(format!(
                    "{method} {path}: connection closed after {} of {len} bytes",
                    raw.len() - start
                ));
            }
        }
        raw[start..start + len].to_vec()
    } else {
        while read_more(&mut stream, &mut raw, &mut buf)? {}
        raw[start..].to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).to_string()))
}

/// The body of a complete chunked transfer, or `None` while it is incomplete.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

impl WebDriver {
    /// Starts chromedriver and a headless Chromium session with a fresh profile, console logging
    /// on, nothing fetched from the network on its own (no updates, sync or QUIC probes).
    pub fn start() -> Result<Self> {
        let driver_bin = locate("CHROMEDRIVER", &["chromedriver"])?;
        let browser_bin = locate(
            "CHROME_BIN",
            &[
                "chromium",
                "chromium-browser",
                "google-chrome",
                "google-chrome-stable",
            ],
        )?;
        let scratch = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let profile = scratch.path().join("profile");
        let log_file = scratch.path().join("chromedriver.log");
        let port = free_port()?;
        let log = std::fs::File::create(&log_file).map_err(|e| e.to_string())?;
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log_file.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}; {INSTALL_HINT}", driver_bin.display()))?;
        let mut wd = WebDriver {
            driver,
            port,
            session: String::new(),
            log_file,
            scratch,
        };
        wd.wait_ready(Duration::from_secs(30))?;

        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": browser_bin.to_string_lossy(),
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage", "--window-size=1280,1000",
                        format!("--user-data-dir={}", profile.display()),
                    ],
                },
                "goog:loggingPrefs": { "browser": "ALL" },
            }}
        });
        let value = wd
            .call("POST", "/session", Some(&caps), Duration::from_secs(60))
            .map_err(|e| {
                format!(
                    "creating a browser session ({}): {e}; {INSTALL_HINT}",
                    browser_bin.display()
                )
            })?;
        wd.session = value["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no sessionId in {value}"))?
            .to_string();
        Ok(wd)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.driver.try_wait() {
                return Err(format!(
                    "chromedriver exited ({status}): {}",
                    self.driver_log()
                ));
            }
            if let Ok((200, body)) = http(self.port, "GET", "/status", None, Duration::from_secs(2))
                && serde_json::from_str::<Value>(&body).is_ok_and(|v| v["value"]["ready"] == true)
            {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "chromedriver not ready after {timeout:?}: {}",
                    self.driver_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The tail of chromedriver's own log, for error messages.
    pub fn driver_log(&self) -> String {
        let text = std::fs::read_to_string(&self.log_file).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// A WebDriver command; returns the answer's `value`, or the driver's error as text.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value> {
        let (status, text) = http(self.port, method, path, body, timeout)?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("{method} {path}: {e} in {text:?}"))?;
        if status != 200 {
            let err = &v["value"];
            return Err(format!(
                "{method} {path}: HTTP {status}: {}: {}",
                err["error"].as_str().unwrap_or("?"),
                err["message"]
                    .as_str()
                    .unwrap_or(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
            ));
        }
        Ok(v["value"].clone())
    }

    /// A command on this session, `path` relative to `/session/{id}`.
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let full = format!("/session/{}{path}", self.session);
        self.call(method, &full, body.as_ref(), Duration::from_secs(60))
    }

    /// Loads `url` and waits for the document to finish loading.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.cmd("POST", "/url", Some(json!({ "url": url })))
            .map(drop)
    }

    /// The document's title.
    pub fn title(&self) -> Result<String> {
        Ok(self
            .cmd("GET", "/title", None)?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Resizes the browser window (the viewport is a little smaller).
    pub fn set_window_size(&self, width: u32, height: u32) -> Result<()> {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .map(drop)
    }

    fn element(v: &Value) -> Result<Element> {
        v[ELEMENT_KEY]
            .as_str()
            .map(|s| Element(s.to_string()))
            .ok_or_else(|| format!("not an element: {v}"))
    }

    /// The first element matching the CSS `selector`.
    pub fn find(&self, selector: &str) -> Result<Element> {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": selector })),
        );
        Self::element(&v.map_err(|e| format!("finding {selector:?}: {e}"))?)
    }

    /// Every element matching the CSS `selector` (maybe none).
    pub fn find_all(&self, selector: &str) -> Result<Vec<Element>> {
        let v = self.cmd(
            "POST",
            "/elements",
            Some(json!({ "using": "css selector", "value": selector })),
        )?;
        v.as_array()
            .ok_or_else(|| format!("not a list: {v}"))?
            .iter()
            .map(Self::element)
            .collect()
    }

    /// The first element matching `selector` inside `parent`.
    pub fn find_in(&self, parent: &Element, selector: &str) -> Result<Element> {
        let path = format!("/element/{}/element", parent.0);
        let v = self.cmd(
            "POST",
            &path,
            Some(json!({ "using": "css selector", "value": selector })),
        );
        Self::element(&v.map_err(|e| format!("finding {selector:?}: {e}"))?)
    }

    /// Clicks `el` as a user would (scrolled into view, at its centre).
    pub fn click(&self, el: &Element) -> Result<()> {
        self.cmd("POST", &format!("/element/{}/click", el.0), Some(json!({})))
            .map(drop)
    }

    /// The rendered text of `el`.
    pub fn text(&self, el: &Element) -> Result<String> {
        Ok(self
            .cmd("GET", &format!("/element/{}/text", el.0), None)?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// `el`'s attribute `name`, if set.
    pub fn attribute(&self, el: &Element, name: &str) -> Result<Option<String>> {
        let v = self.cmd("GET", &format!("/element/{}/attribute/{name}", el.0), None)?;
        Ok(v.as_str().map(str::to_string))
    }

    /// Runs `script` as a function body with `args` (`arguments[i]`); returns what it returns.
    /// Pass elements with [`WebDriver::element_arg`].
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// `el` as a script argument.
    pub fn element_arg(el: &Element) -> Value {
        json!({ ELEMENT_KEY: el.0 })
    }

    /// Polls `script` until it returns `true`, up to `timeout`.
    pub fn wait_for(&self, script: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.execute(script, vec![])? == Value::Bool(true) {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(format!("timed out after {timeout:?} waiting for: {script}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Presses and releases `key` on the focused element (W3C key values, e.g. `"\u{E007}"`
    /// for Enter, `" "` for Space, `"\u{E004}"` for Tab).
    pub fn press_key(&self, key: &str) -> Result<()> {
        let actions = json!({ "actions": [{
            "type": "key", "id": "keyboard",
            "actions": [{ "type": "keyDown", "value": key }, { "type": "keyUp", "value": key }],
        }]});
        self.cmd("POST", "/actions", Some(actions))?;
        self.cmd("DELETE", "/actions", None).map(drop)
    }

    /// The browser console messages since the last call (chromedriver's `se/log` extension).
    pub fn browser_logs(&self) -> Result<Vec<LogEntry>> {
        let v = self.cmd("POST", "/se/log", Some(json!({ "type": "browser" })))?;
        let entries = v.as_array().ok_or_else(|| format!("not a list: {v}"))?;
        Ok(entries
            .iter()
            .map(|e| LogEntry {
                level: e["level"].as_str().unwrap_or_default().to_string(),
                source: e["source"].as_str().unwrap_or_default().to_string(),
                message: e["message"].as_str().unwrap_or_default().to_string(),
            })
            .collect())
    }

    /// A PNG of the viewport as it is rendered now.
    pub fn screenshot(&self) -> Result<Vec<u8>> {
        use base64::Engine;
        let v = self.cmd("GET", "/screenshot", None)?;
        let b64 = v.as_str().ok_or_else(|| format!("not a string: {v}"))?;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("screenshot: {e}"))
    }

    /// The folder chromedriver's log is in (kept until drop).
    pub fn scratch_dir(&self) -> &Path {
        self.scratch.path()
    }
}

impl Drop for WebDriver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = self.call("DELETE", &path, None, Duration::from_secs(20));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
