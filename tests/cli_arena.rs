//! `idforge arena` as a user runs it: `serve` on a small bench folder (a real process on a free
//! loopback port), `simulate` scripted raters against it, stop it with SIGTERM (graceful: the
//! votes are all there), `export` the votes to Parquet and read them back as the `votes`
//! table; and the errors a user meets first.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use idforge_core::schema::{Question, VotesTable};

use common::{idforge, text};

/// Two methods over 2 identities × 2 prompts × 2 seeds, flat-colour images.
fn make_bench(dir: &Path, methods: &[&str]) -> PathBuf {
    let bench = dir.join("bench");
    std::fs::create_dir_all(&bench).unwrap();
    std::fs::write(
        bench.join("protocol.toml"),
        r#"
[protocol]
name = "cli-arena"
version = 1
seeds = [0, 1]
categories = ["style"]

[[sets]]
name = "in-train"

[[prompts]]
id = "p0"
category = "style"
general = "an oil painting of a {class} {trigger}"

[[prompts]]
id = "p1"
category = "style"
general = "a sketch of a {class} {trigger}"
"#,
    )
    .unwrap();
    let square = |v: u8| image::RgbImage::from_pixel(16, 16, image::Rgb([v, v, v]));
    for i in 0..2 {
        let d = bench.join(format!("references/in-train/id{i}"));
        std::fs::create_dir_all(&d).unwrap();
        square(100).save(d.join("ref.png")).unwrap();
    }
    for (k, m) in methods.iter().enumerate() {
        let md = bench.join("generations").join(m);
        std::fs::create_dir_all(&md).unwrap();
        std::fs::write(md.join("method.toml"), format!("name = \"{m}\"\n")).unwrap();
        for i in 0..2 {
            for p in 0..2 {
                let d = md.join(format!("id{i}/p{p}"));
                std::fs::create_dir_all(&d).unwrap();
                for s in 0..2 {
                    square(110 + 60 * k as u8)
                        .save(d.join(format!("{s}.png")))
                        .unwrap();
                }
            }
        }
    }
    bench
}

/// The server process, killed if a failing assertion leaves it running.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `arena serve` on a free port; returns the child and its URL from the banner.
fn serve(bench: &Path, db: &Path) -> (Server, String, BufReader<std::process::ChildStdout>) {
    let child = idforge()
        .args(["arena", "serve"])
        .arg(bench)
        .arg("--db")
        .arg(db)
        .args(["--addr", "127.0.0.1:0", "--block", "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Server(child);
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let start = Instant::now();
    let mut banner = String::new();
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            let status = child.0.wait().unwrap();
            let mut err = String::new();
            std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("arena serve exited ({status}) before serving:\n{banner}\n{err}");
        }
        banner.push_str(&line);
        if let Some(rest) = line.strip_prefix("serving ") {
            let url = rest
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches('/');
            return (child, url.to_string(), out);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no banner: {banner}"
        );
    }
}

fn terminate(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn serve_simulate_stop_and_export() {
    let tmp = tempfile::tempdir().unwrap();
    let bench = make_bench(tmp.path(), &["left-hand", "right-hand"]);
    let db = tmp.path().join("arena/votes.sqlite");
    let (mut child, url, mut out) = serve(&bench, &db);

    let sim = idforge()
        .args(["arena", "simulate", "--url", &url])
        .args(["--raters", "3", "--votes", "5", "--seed", "1"])
        .output()
        .unwrap();
    assert!(sim.status.success(), "{}", text(&sim));
    let said = String::from_utf8_lossy(&sim.stdout);
    assert!(
        said.contains("3 simulated raters cast 15 votes (+12 practice)"),
        "{said}"
    );
    assert!(said.contains("not data about methods"), "{said}");

    terminate(&mut child.0);
    let status = child.0.wait().unwrap();
    assert!(status.success(), "graceful stop exits 0: {status}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(rest.contains("stopped; 27 votes"), "{rest}");

    // Default output: the database's bench folder.
    let exp = idforge()
        .args(["arena", "export", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(exp.status.success(), "{}", text(&exp));
    let path = bench.join("arena/votes.parquet");
    assert!(
        String::from_utf8_lossy(&exp.stdout).contains("wrote 27 votes (12 practice) from 3 raters"),
        "{}",
        text(&exp)
    );
    let table = VotesTable::read(&path).unwrap();
    assert_eq!(table.rows.len(), 27);
    assert_eq!(table.rows.iter().filter(|r| r.practice).count(), 12);
    let ids: Vec<i64> = table.rows.iter().map(|r| r.vote_id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in vote_id order");
    for r in &table.rows {
        assert_ne!(r.method_left, r.method_right);
        assert!(["left-hand", "right-hand"].contains(&r.method_left.as_str()));
        assert_eq!(r.set, "in-train");
        assert!(r.answered_at >= r.shown_at);
        assert!(r.answer_ms >= 0);
    }
    // Blocks of 4 after 2 practice pairs per question: each rater's 5 counted votes are 4
    // fidelity and 1 adherence (after its 2 practice pairs).
    let counted = |q| {
        table
            .rows
            .iter()
            .filter(|r| !r.practice && r.question == q)
            .count()
    };
    assert_eq!(
        (counted(Question::Fidelity), counted(Question::Adherence)),
        (12, 3)
    );

    // An explicit output.
    let other = tmp.path().join("elsewhere/v.parquet");
    let exp = idforge()
        .args(["arena", "export", "--db"])
        .arg(&db)
        .arg("-o")
        .arg(&other)
        .output()
        .unwrap();
    assert!(exp.status.success(), "{}", text(&exp));
    assert_eq!(VotesTable::read(&other).unwrap(), table);
}

#[test]
fn the_first_mistakes_say_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    // One method: nothing to compare.
    let bench = make_bench(tmp.path(), &["lonely"]);
    let out = idforge()
        .args(["arena", "serve"])
        .arg(&bench)
        .arg("--db")
        .arg(tmp.path().join("v.sqlite"))
        .args(["--addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("idforge bench import"), "{err}");

    // No such database.
    let out = idforge()
        .args(["arena", "export", "--db"])
        .arg(tmp.path().join("missing.sqlite"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no such file") && err.contains("arena serve"),
        "{err}"
    );

    // A question that does not exist.
    let out = idforge()
        .args(["arena", "serve"])
        .arg(&bench)
        .args(["--db", "x.sqlite", "--questions", "beauty"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fidelity or adherence"), "{err}");

    // Nobody listening.
    let out = idforge()
        .args([
            "arena",
            "simulate",
            "--url",
            "http://127.0.0.1:9",
            "--raters",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the server running?"), "{err}");
}
