//! A sweep of bad input over every subcommand's numeric, path and name arguments, and over the
//! recipe keys that mirror them. Each case must end in a non-zero exit, never a panic (exit 101
//! or a `RUST_BACKTRACE` hint), never a hang, with a message naming the argument or key, and
//! with nothing written outside the folder runs go to.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one case may take: bad input is refused at once, so this only catches hangs.
const LIMIT: Duration = Duration::from_secs(60);

/// Every path under `root`, relative, except those under `root/<skip>`.
fn tree(root: &Path, skip: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if rel.starts_with(skip) {
                continue;
            }
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.insert(rel);
        }
    }
    out
}

struct Sweep {
    _tmp: tempfile::TempDir,
    /// The root of everything the cases may see; runs go to `<root>/work/runs`.
    root: PathBuf,
    /// The working directory of every case.
    work: PathBuf,
    failures: Vec<String>,
    cases: usize,
}

impl Sweep {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let work = root.join("work");
        std::fs::create_dir_all(work.join("runs")).unwrap();
        std::fs::create_dir_all(work.join("photos/ann")).unwrap();
        std::fs::write(work.join("photos/ann/1.jpg"), b"not really a jpeg").unwrap();
        std::fs::write(
            work.join("urls.csv"),
            "url,identity\nhttp://127.0.0.1:9/a.jpg,ann\n",
        )
        .unwrap();
        std::fs::create_dir_all(work.join("bench")).unwrap();
        Sweep {
            _tmp: tmp,
            root,
            work,
            failures: Vec::new(),
            cases: 0,
        }
    }

    /// Writes a file under the working directory (recipes for the recipe-key cases).
    fn file(&self, name: &str, text: &str) -> String {
        std::fs::write(self.work.join(name), text).unwrap();
        name.to_string()
    }

    /// Runs `idforge args…`; records a failure unless it is a clear refusal naming `names`.
    fn refuse(&mut self, args: &[&str], names: &str) {
        self.cases += 1;
        let case = args.join(" ");
        let before = tree(&self.root, Path::new("work/runs"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_idforge"))
            .args(args)
            .current_dir(&self.work)
            .env("IDFORGE_PROGRESS", "off")
            .env("IDFORGE_RUNS", "runs")
            .env("IDFORGE_CACHE", self.root.join("no-cache"))
            .env_remove("RUST_BACKTRACE")
            .env_remove("SLURM_ARRAY_TASK_ID")
            .env_remove("JOB_COMPLETION_INDEX")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if start.elapsed() > LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let both = format!("{stdout}{stderr}");
        let mut fail = |why: String| {
            self.failures
                .push(format!("`idforge {case}`: {why}\n---\n{both}---"))
        };
        let Some(status) = status else {
            fail(format!("still running after {LIMIT:?}"));
            return;
        };
        match status.code() {
            Some(0) => fail("exit 0: the bad input was accepted".into()),
            Some(101) => fail("exit 101: a panic".into()),
            None => fail("killed by a signal".into()),
            Some(_) => {}
        }
        if both.contains("panicked") || both.contains("RUST_BACKTRACE") {
            fail("a panic message".into());
        }
        if !names.split('|').any(|n| both.contains(n)) {
            fail(format!("the message does not name {names}"));
        }
        let after = tree(&self.root, Path::new("work/runs"));
        let new: Vec<_> = after.difference(&before).collect();
        if !new.is_empty() {
            fail(format!("wrote outside the runs folder: {new:?}"));
        }
        let escaped = self.root.join("work/escape");
        if escaped.exists() {
            fail(format!("{} exists", escaped.display()));
        }
    }
}

#[test]
fn bad_input_is_a_clear_error_everywhere() {
    let mut s = Sweep::new();

    // ingest: every number, the run name, the shard.
    let ingest = |extra: &[&'static str]| {
        let mut a = vec!["ingest", "--name", "r", "--source", "urls.csv"];
        a.extend_from_slice(extra);
        a
    };
    for (flag, values) in [
        ("--timeout", &["-5", "nan", "1e30", "0", "inf"][..]),
        ("--connect-timeout", &["-1", "nan", "1e30"]),
        ("--per-host-rate", &["nan", "1e-300", "-2", "1e9", "inf"]),
        ("--concurrency", &["0", "-1", "100000", "2.5"]),
        ("--per-host-concurrency", &["0", "1e3"]),
        ("--retries", &["-1", "1000"]),
        ("--max-bytes", &["0", "-5"]),
        ("--max-pixels", &["0", "nan"]),
        ("--max-redirects", &["-1", "1000"]),
        ("--phash-threshold", &["65", "-1"]),
        ("--decode-threads", &["100000", "-1"]),
        ("--shards", &["0", "-3", "1000000"]),
        ("--shard", &["5/2", "x", "0/1000000"]),
    ] {
        for v in values {
            let arg: &'static str = Box::leak(format!("{flag}={v}").into_boxed_str());
            s.refuse(&ingest(&[arg]), flag);
        }
    }
    for name in [
        "../escape",
        "a/b",
        "..",
        ".",
        "",
        ".hidden",
        "tab\there",
        "a\\b",
    ] {
        let arg: &'static str = Box::leak(format!("--name={name}").into_boxed_str());
        s.refuse(&["ingest", arg, "--source", "photos"], "--name");
    }

    // The recipe keys that mirror them.
    for (table, key, value) in [
        ("[ingest.fetch]", "timeout_s", "-5"),
        ("[ingest.fetch]", "timeout_s", "nan"),
        ("[ingest.fetch]", "connect_timeout_s", "1e30"),
        ("[ingest.fetch]", "per_host_rate", "-2"),
        ("[ingest.fetch]", "per_host_rate", "1e-300"),
        ("[ingest.fetch]", "concurrency", "0"),
        ("[ingest.fetch]", "backoff_s", "-1"),
        ("[ingest.fetch]", "max_retry_after_s", "inf"),
        ("[ingest]", "decode_threads", "100000"),
        ("[ingest]", "shards", "0"),
        ("[ingest]", "max_pixels", "-1"),
    ] {
        let recipe = s.file(
            "r.toml",
            &format!(
                "name = \"r\"\n{table}\n{key} = {value}\n\n[[ingest.sources]]\nkind = \"folder\"\npath = \"photos\"\n"
            ),
        );
        s.refuse(&["ingest", "--recipe", &recipe], key);
    }
    for name in ["../escape", "a/b", ".."] {
        let recipe = s.file("n.toml", &format!("name = \"{name}\"\n"));
        s.refuse(&["ingest", "--recipe", &recipe], "name");
    }

    // curate.
    for (flag, values) in [
        ("--k", &["nan", "-1", "1e30"][..]),
        ("--min-score", &["nan", "2", "-0.5"]),
        ("--min-face-px", &["nan", "-1", "1e9"]),
        ("--face-share", &["-1", "nan", "1.5"]),
        ("--floor", &["5", "nan"]),
        ("--discover-threshold", &["nan", "-2"]),
        ("--min-images", &["0", "-1"]),
        ("--min-short-side", &["-1", "1000000"]),
        ("--threads", &["100000", "-1"]),
        ("--shards", &["0"]),
        ("--resolution", &["nan", "-1"]),
        ("--name", &["../escape", "a/b"]),
    ] {
        for v in values {
            let arg: &'static str = Box::leak(format!("{flag}={v}").into_boxed_str());
            s.refuse(&["curate", "--name", "r", arg], flag);
        }
    }
    s.refuse(&["curate", "--name", "r", "--k=0"], "k must be positive");
    s.refuse(&["curate", "--name", "r", "--face-share=0"], "face_share");
    for (table, key, value) in [
        ("[curate.identity]", "k", "nan"),
        ("[curate.faces]", "min_score", "1.5"),
        ("[curate.faces]", "min_face_px", "-1"),
        ("[curate]", "threads", "100000"),
        ("[curate.crop]", "ref_margin", "-1"),
    ] {
        let recipe = s.file(
            "c.toml",
            &format!("name = \"r\"\n{table}\n{key} = {value}\n"),
        );
        s.refuse(&["curate", "--recipe", &recipe], key);
    }

    // caption.
    for (flag, values) in [
        ("--timeout", &["nan", "-1", "1e30"][..]),
        ("--concurrency", &["0", "100000"]),
        ("--max-retries", &["-1", "1000"]),
        ("--threads", &["-1", "100000"]),
        ("--shards", &["0"]),
        ("--name", &["../escape"]),
    ] {
        for v in values {
            let arg: &'static str = Box::leak(format!("{flag}={v}").into_boxed_str());
            s.refuse(&["caption", "--name", "r", arg], flag);
        }
    }
    for (table, key, value) in [
        ("[caption.openai]", "timeout_s", "1e30"),
        ("[caption.openai]", "backoff_s", "nan"),
        ("[caption.openai]", "min_coverage", "2"),
        ("[caption]", "threads", "-1"),
    ] {
        let recipe = s.file(
            "p.toml",
            &format!("name = \"r\"\n{table}\n{key} = {value}\n"),
        );
        s.refuse(&["caption", "--recipe", &recipe], key);
    }

    // dataset export.
    for (flag, values) in [
        ("--val-fraction", &["nan", "-0.1", "2"][..]),
        ("--rows-per-shard", &["0", "-1"]),
    ] {
        for v in values {
            let arg: &'static str = Box::leak(format!("{flag}={v}").into_boxed_str());
            s.refuse(&["dataset", "export", "runs/r", arg], flag);
        }
    }

    // bench.
    for (args, flag) in [
        (
            &["bench", "score", "bench", "--threads=100000"][..],
            "--threads",
        ),
        (
            &["bench", "score", "bench", "--resamples=-1"],
            "--resamples",
        ),
        (&["bench", "score", "bench", "--method=../x"], "--method"),
        (
            &["bench", "score", "bench", "--arena-bootstrap=nan"],
            "--arena-bootstrap",
        ),
        (
            &["bench", "leaderboard", "bench", "--set-resamples=-1"],
            "--set-resamples",
        ),
        (
            &[
                "bench",
                "init",
                "b2",
                "--protocol",
                "p.toml",
                "--from-dataset",
                "d",
                "--identities-per-set=0",
            ],
            "--identities-per-set",
        ),
    ] {
        s.refuse(args, flag);
    }

    // arena.
    let serve = |extra: &'static str| ["arena", "serve", "bench", "--db", "runs/v.sqlite", extra];
    for (arg, flag) in [
        ("--addr=notanaddress", "--addr"),
        ("--addr=127.0.0.1", "--addr"),
        ("--block=0", "--block"),
        ("--practice=-1", "--practice"),
        ("--task-ttl-secs=0", "--task-ttl-secs"),
        ("--rater-ttl-days=1e30", "--rater-ttl-days"),
        ("--rater-ttl-days=99999999999999999", "--rater-ttl-days"),
        ("--raters-per-ip-per-hour=-1", "--raters-per-ip-per-hour"),
    ] {
        s.refuse(&serve(arg), flag);
    }
    s.refuse(
        &[
            "arena",
            "serve",
            "bench",
            "--db",
            "runs/v.sqlite",
            "--addr=notanaddress",
        ],
        "not an address",
    );
    for (arg, flag) in [("--raters=0", "--raters"), ("--votes=-1", "--votes")] {
        s.refuse(
            &["arena", "simulate", "--url", "http://127.0.0.1:9", arg],
            flag,
        );
    }

    // generate, faces, device.
    let generate = |extra: &'static str| {
        [
            "generate",
            "--model",
            "m",
            "--prompt",
            "p",
            "-o",
            "runs/x.png",
            extra,
        ]
    };
    for (arg, flag) in [
        ("--steps=0", "--steps"),
        ("--steps=100000000", "--steps"),
        ("--cfg=nan", "--cfg"),
        ("--cfg=-1", "--cfg"),
        ("--width=0", "--width"),
        ("--height=1000000", "--height"),
    ] {
        s.refuse(&generate(arg), flag);
    }
    // The adapter's numbers (checked before any file is read).
    for (arg, flag) in [
        ("--adapter-scale=nan", "--adapter-scale"),
        ("--adapter-scale=-1", "--adapter-scale"),
        ("--id-start-step=100000", "--id-start-step"),
        ("--bg-scale=nan", "--bg-scale"),
        ("--body-scale=-1", "--body-scale"),
    ] {
        let mut args = generate("--adapter=a.bin").to_vec();
        args.push(arg);
        s.refuse(&args, flag);
    }
    // Reference photos: flags that need or exclude each other, a bad channel order.
    for (extra, flag) in [
        (&["--ref=photos/ann/1.jpg"][..], "--adapter"),
        (
            &[
                "--adapter=a.bin",
                "--ref=photos/ann/1.jpg",
                "--image-embeds=e.safetensors",
            ][..],
            "--image-embeds",
        ),
        (&["--adapter=a.bin", "--arcface=w.onnx"][..], "--ref"),
        (
            &[
                "--adapter=a.bin",
                "--ref=photos/ann/1.jpg",
                "--face-crop-channels=grey",
            ][..],
            "--face-crop-channels",
        ),
    ] {
        let mut args = generate("--steps=2").to_vec();
        args.extend_from_slice(extra);
        s.refuse(&args, flag);
    }
    for (arg, flag) in [
        ("--min-score=nan", "--min-score"),
        ("--max-faces=0", "--max-faces"),
        ("--input-size=100000", "--input-size"),
        ("--input-size=100", "--input-size"),
    ] {
        s.refuse(&["faces", "detect", "photos/ann/1.jpg", arg], flag);
    }
    for (arg, flag) in [
        ("--size=0", "--size"),
        ("--size=100000", "--size"),
        ("--reps=0", "--reps"),
    ] {
        s.refuse(&["device", arg], flag);
    }

    assert!(
        s.failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        s.failures.len(),
        s.cases,
        s.failures.join("\n\n")
    );
    assert!(s.cases >= 140, "{} cases", s.cases);
}
