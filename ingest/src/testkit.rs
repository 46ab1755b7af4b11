//! A loopback HTTP/1.1 server with fault injection, for the tests and the throughput bench.
//!
//! It is written on raw TCP so that it can misbehave in ways a well-behaved server library
//! would not let it: bodies shorter than their `Content-Length`, bytes dripped one at a time,
//! redirect loops. It binds `127.0.0.1` only and runs on its own thread and runtime, so sync
//! tests, async tests and child processes can all use it. Routes:
//!
//! | path | behaviour |
//! |---|---|
//! | `/robots.txt` | `User-agent: *` / `Disallow: /private/` |
//! | `/img/<name>` , `/private/<name>` | the fixture image, correct `Content-Type` |
//! | `/status/<code>` | that status, empty body |
//! | `/retry/<n>/<secs>/<name>` | 429 with `Retry-After: secs` for the first n hits, then the image |
//! | `/flaky/<n>/<name>` | 503 without `Retry-After` for the first n hits, then the image |
//! | `/drip/<ms>/<name>` | the image one byte every `ms` milliseconds |
//! | `/slow/<ms>/<name>` | waits `ms` before answering with the image |
//! | `/truncated/<name>` | full `Content-Length`, half the body, then close |
//! | `/wrong-type/<name>` | the image served as `text/html` |
//! | `/not-image` | an HTML page served as `image/jpeg` |
//! | `/oversized/<bytes>` | that many bytes with `Content-Length` |
//! | `/oversized-chunked/<bytes>` | that many bytes, chunked, no length |
//! | `/loop` | 302 to itself |
//! | `/redirect/<name>` | 302 to `/img/<name>` |
//! | `/away/<port>/<path…>` | 302 to `http://127.0.0.1:<port>/<path…>`, another origin (a second server) |
//! | `/bomb.png` | a valid 1-bit PNG of 32768×32768 pixels in about 850 KB |
//! | `/noai/<name>` | the image with `X-Robots-Tag: noai` |
//! | `/scoped-noai/<name>` | the image with `X-Robots-Tag: idforge: noimageai` |
//! | `/other-bot-noai/<name>` | the image with `X-Robots-Tag: otherbot: noai` (allowed for us) |

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A running fixture server; stops when dropped.
pub struct FixtureServer {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct State {
    images: HashMap<String, Vec<u8>>,
    hits: Mutex<HashMap<String, usize>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl State {
    fn hit(&self, path: &str) -> usize {
        let mut hits = self.hits.lock().unwrap();
        let n = hits.entry(path.to_string()).or_default();
        *n += 1;
        *n
    }
}

impl FixtureServer {
    /// Starts serving `images` (name → bytes) on an ephemeral loopback port.
    pub fn start(images: Vec<(String, Vec<u8>)>) -> std::io::Result<Self> {
        let state = Arc::new(State {
            images: images.into_iter().collect(),
            hits: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("fixture-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("fixture server runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("listener");
                    loop {
                        tokio::select! {
                            _ = &mut rx => break,
                            accepted = listener.accept() => {
                                if let Ok((sock, _)) = accepted {
                                    let st = st.clone();
                                    tokio::spawn(async move { let _ = serve(sock, st).await; });
                                }
                            }
                        }
                    }
                });
                rt.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(FixtureServer {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The loopback port it listens on (to point one server's redirects at another).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests received for `path` (query string excluded).
    pub fn hits(&self, path: &str) -> usize {
        self.state
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Requests received in all.
    pub fn total_hits(&self) -> usize {
        self.state.hits.lock().unwrap().values().sum()
    }

    /// The most requests that were being answered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for FixtureServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        _ => "application/octet-stream",
    }
}

/// Serves requests on one connection (keep-alive) until the client closes or a fault closes it.
async fn serve(sock: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let mut reader = BufReader::new(sock);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let mut close = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await? == 0 {
                return Ok(());
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        let path = target.split('?').next().unwrap_or("/").to_string();
        let n = state.hit(&path);
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let keep = respond(reader.get_mut(), &state, &path, n).await;
        state.in_flight.fetch_sub(1, Ordering::SeqCst);
        let keep = keep?;
        if close || !keep {
            let _ = reader.get_mut().shutdown().await;
            return Ok(());
        }
    }
}

async fn send(
    sock: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    sock.write_all(&out).await
}

async fn send_image(sock: &mut TcpStream, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    send(
        sock,
        "200 OK",
        &[("Content-Type", content_type(name).into())],
        bytes,
    )
    .await
}

/// Answers one request; returns whether the connection may be reused.
async fn respond(
    sock: &mut TcpStream,
    state: &State,
    path: &str,
    hit: usize,
) -> std::io::Result<bool> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let image = |name: &str| state.images.get(name).cloned();
    match parts.as_slice() {
        ["robots.txt"] => {
            send(
                sock,
                "200 OK",
                &[("Content-Type", "text/plain".into())],
                b"User-agent: *\nDisallow: /private/\n",
            )
            .await?;
        }
        ["img" | "private", name] => match image(name) {
            Some(b) => send_image(sock, name, &b).await?,
            None => send(sock, "404 Not Found", &[], b"").await?,
        },
        ["status", code] => {
            let code: u16 = code.parse().unwrap_or(500);
            let reason = reqwest_reason(code);
            send(sock, &format!("{code} {reason}"), &[], b"").await?;
        }
        ["retry", n, secs, name] => {
            if hit <= n.parse().unwrap_or(0) {
                send(
                    sock,
                    "429 Too Many Requests",
                    &[("Retry-After", secs.to_string())],
                    b"",
                )
                .await?;
            } else if let Some(b) = image(name) {
                send_image(sock, name, &b).await?;
            }
        }
        ["flaky", n, name] => {
            if hit <= n.parse().unwrap_or(0) {
                send(sock, "503 Service Unavailable", &[], b"").await?;
            } else if let Some(b) = image(name) {
                send_image(sock, name, &b).await?;
            }
        }
        ["slow", ms, name] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(100))).await;
            if let Some(b) = image(name) {
                send_image(sock, name, &b).await?;
            }
        }
        ["drip", ms, name] => {
            let Some(b) = image(name) else {
                return Ok(false);
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
                content_type(name),
                b.len()
            );
            sock.write_all(head.as_bytes()).await?;
            let pause = Duration::from_millis(ms.parse().unwrap_or(100));
            for byte in b {
                sock.write_all(&[byte]).await?;
                tokio::time::sleep(pause).await;
            }
            return Ok(false);
        }
        ["truncated", name] => {
            let Some(b) = image(name) else {
                return Ok(false);
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
                content_type(name),
                b.len()
            );
            sock.write_all(head.as_bytes()).await?;
            sock.write_all(&b[..b.len() / 2]).await?;
            sock.flush().await?;
            return Ok(false);
        }
        ["wrong-type", name] => {
            if let Some(b) = image(name) {
                send(
                    sock,
                    "200 OK",
                    &[("Content-Type", "text/html; charset=utf-8".into())],
                    &b,
                )
                .await?;
            }
        }
        ["not-image"] => {
            let html = b"<!doctype html><html><body>This is not the image you are looking for</body></html>";
            send(
                sock,
                "200 OK",
                &[("Content-Type", "image/jpeg".into())],
                html,
            )
            .await?;
        }
        ["oversized", len] => {
            let len: usize = len.parse().unwrap_or(1 << 20);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {len}\r\n\r\n"
            );
            sock.write_all(head.as_bytes()).await?;
            let chunk = vec![0xFFu8; 64 * 1024];
            let mut sent = 0;
            while sent < len {
                let n = chunk.len().min(len - sent);
                if sock.write_all(&chunk[..n]).await.is_err() {
                    return Ok(false);
                }
                sent += n;
            }
        }
        ["oversized-chunked", len] => {
            let len: usize = len.parse().unwrap_or(1 << 20);
            sock.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n").await?;
            let chunk = vec![0xFFu8; 64 * 1024];
            let mut sent = 0;
            while sent < len {
                let n = chunk.len().min(len - sent);
                let mut frame = format!("{n:x}\r\n").into_bytes();
                frame.extend_from_slice(&chunk[..n]);
                frame.extend_from_slice(b"\r\n");
                if sock.write_all(&frame).await.is_err() {
                    return Ok(false);
                }
                sent += n;
            }
            sock.write_all(b"0\r\n\r\n").await?;
        }
        ["loop"] => send(sock, "302 Found", &[("Location", "/loop".into())], b"").await?,
        ["redirect", name] => {
            send(
                sock,
                "302 Found",
                &[("Location", format!("/img/{name}"))],
                b"",
            )
            .await?
        }
        ["away", port, rest @ ..] => {
            send(
                sock,
                "302 Found",
                &[(
                    "Location",
                    format!("http://127.0.0.1:{port}/{}", rest.join("/")),
                )],
                b"",
            )
            .await?
        }
        ["bomb.png"] => {
            send(
                sock,
                "200 OK",
                &[("Content-Type", "image/png".into())],
                bomb_png(),
            )
            .await?
        }
        [tag @ ("noai" | "scoped-noai" | "other-bot-noai"), name] => {
            let value = match *tag {
                "noai" => "noai",
                "scoped-noai" => "idforge: noimageai",
                _ => "otherbot: noai",
            };
            if let Some(b) = image(name) {
                let headers = [
                    ("Content-Type", content_type(name).to_string()),
                    ("X-Robots-Tag", value.to_string()),
                ];
                send(sock, "200 OK", &headers, &b).await?;
            }
        }
        _ => send(sock, "404 Not Found", &[], b"").await?,
    }
    Ok(true)
}

fn reqwest_reason(code: u16) -> &'static str {
    reqwest::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Status")
}

/// A real decompression bomb: a valid 1-bit grayscale PNG of 32768×32768 zero pixels (1 Gpx,
/// 4 GB as RGBA) whose zlib stream of 134 MB of zeros takes about 850 KB.
pub fn bomb_png() -> &'static [u8] {
    static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
    BOMB.get_or_init(|| {
        const SIDE: u32 = 32768;
        let row = vec![0u8; 1 + SIDE as usize / 8]; // filter byte + 4096 bytes of bits
        let mut z = Vec::new();
        {
            let mut enc = flate2_like::ZlibZeros::new(&mut z);
            for _ in 0..SIDE {
                enc.write_all(&row).unwrap();
            }
            enc.finish().unwrap();
        }
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&SIDE.to_be_bytes());
        ihdr.extend_from_slice(&SIDE.to_be_bytes());
        ihdr.extend_from_slice(&[1, 0, 0, 0, 0]); // bit depth 1, grayscale, deflate, no filter set, no interlace
        chunk(&mut png, b"IHDR", &ihdr);
        chunk(&mut png, b"IDAT", &z);
        chunk(&mut png, b"IEND", &[]);
        png
    })
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc_input = kind.to_vec();
    crc_input.extend_from_slice(data);
    out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Just enough zlib to compress long runs of zeros: a fixed-Huffman deflate stream of
/// length-258 back-references, with the Adler-32 trailer. Avoids a compression dependency for
/// one test fixture.
mod flate2_like {
    use std::io::Write;

    pub struct ZlibZeros<'a> {
        out: &'a mut Vec<u8>,
        zeros: u64,
    }

    impl<'a> ZlibZeros<'a> {
        pub fn new(out: &'a mut Vec<u8>) -> Self {
            ZlibZeros { out, zeros: 0 }
        }

        pub fn finish(self) -> std::io::Result<()> {
            let mut bits = BitWriter {
                out: self.out,
                acc: 0,
                n: 0,
            };
            bits.out.extend_from_slice(&[0x78, 0x01]);
            bits.put(1, 1); // BFINAL
            bits.put(1, 2); // BTYPE = 01 fixed Huffman
            let mut left = self.zeros;
            if left > 0 {
                bits.literal(0);
                left -= 1;
            }
            while left >= 258 {
                // length 258 = code 285 (no extra bits); distance 1 = code 0 (5 bits).
                bits.code(285);
                bits.put_rev(0, 5);
                left -= 258;
            }
            while left > 0 {
                bits.literal(0);
                left -= 1;
            }
            bits.code(256);
            bits.flush();
            // Adler-32 of `zeros` zero bytes: a = 1, b = zeros mod 65521.
            let a: u32 = 1;
            let b: u32 = (self.zeros % 65521) as u32;
            bits.out.extend_from_slice(&((b << 16) | a).to_be_bytes());
            Ok(())
        }
    }

    impl Write for ZlibZeros<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            assert!(buf.iter().all(|&b| b == 0), "only zeros");
            self.zeros += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct BitWriter<'a> {
        out: &'a mut Vec<u8>,
        acc: u32,
        n: u32,
    }

    impl BitWriter<'_> {
        /// Writes `n` bits of `v`, least significant first (deflate's order for non-Huffman fields).
        fn put(&mut self, v: u32, n: u32) {
            for i in 0..n {
                self.acc |= ((v >> i) & 1) << self.n;
                self.n += 1;
                if self.n == 8 {
                    self.out.push(self.acc as u8);
                    self.acc = 0;
                    self.n = 0;
                }
            }
        }
        /// Writes a Huffman code of `n` bits, most significant first.
        fn put_rev(&mut self, code: u32, n: u32) {
            for i in (0..n).rev() {
                self.put((code >> i) & 1, 1);
            }
        }
        fn literal(&mut self, byte: u32) {
            // Fixed Huffman: literals 0..=143 are 8-bit codes 0x30 + value.
            self.put_rev(0x30 + byte, 8);
        }
        fn code(&mut self, sym: u32) {
            match sym {
                256..=279 => self.put_rev(sym - 256, 7),
                280..=287 => self.put_rev(0xC0 + (sym - 280), 8),
                _ => unreachable!(),
            }
        }
        fn flush(&mut self) {
            if self.n > 0 {
                self.out.push(self.acc as u8);
                self.acc = 0;
                self.n = 0;
            }
        }
    }
}

/// A synthetic photograph-like JPEG (gradients and texture), `w`×`h`, varied by `seed`.
pub fn synthetic_jpeg(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let v = x.wrapping_mul(7 + seed) ^ y.wrapping_mul(13 + seed * 3);
        image::Rgb([
            (x * 255 / w.max(1)) as u8,
            (y * 255 / h.max(1)) as u8,
            (v % 251) as u8,
        ])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&img)
        .unwrap();
    out
}

/// The face-api demo photographs from the asset cache, or an error telling how to fetch them.
pub fn demo_photos() -> Result<Vec<(String, Vec<u8>)>, String> {
    let dir = idforge_core::cache::face_api_dir_if_fetched()
        .ok_or_else(|| {
            format!(
                "{} is missing: run tools/fetch-assets (make test does)",
                idforge_core::cache::face_api_dir().display()
            )
        })?
        .join("demo");
    let mut out = Vec::new();
    for i in 1..=6 {
        let name = format!("sample{i}.jpg");
        let bytes = std::fs::read(dir.join(&name))
            .map_err(|e| format!("{}: {e}", dir.join(&name).display()))?;
        out.push((name, bytes));
    }
    let _ = std::io::stderr().flush();
    Ok(out)
}
