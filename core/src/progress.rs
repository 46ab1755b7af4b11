//! Progress on long loops: an indicatif bar on a terminal, a plain log line every few seconds
//! otherwise (CI logs, `nohup`, Slurm output files), nothing when `IDFORGE_PROGRESS=off`.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often plain log lines are written when there is no terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

enum Sink {
    Bar(ProgressBar),
    Log { last: Mutex<Instant> },
    Off,
}

/// A progress counter for `total` items of work. Cheap to update from many threads.
pub struct Progress {
    label: String,
    total: u64,
    done: AtomicU64,
    start: Instant,
    sink: Sink,
}

impl Progress {
    /// Starts reporting `label` over `total` items.
    pub fn new(label: impl Into<String>, total: u64) -> Self {
        let label = label.into();
        let off = std::env::var("IDFORGE_PROGRESS").is_ok_and(|v| v == "off" || v == "0");
        let sink = if off {
            Sink::Off
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:.bold} [{elapsed_precise}] {wide_bar:.cyan/blue} {pos}/{len} {per_sec} eta {eta} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.clone());
            Sink::Bar(bar)
        } else {
            eprintln!("{label}: 0/{total}");
            Sink::Log {
                last: Mutex::new(Instant::now()),
            }
        };
        Progress {
            label,
            total,
            done: AtomicU64::new(0),
            start: Instant::now(),
            sink,
        }
    }

    /// Marks `n` more items done.
    pub fn inc(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        match &self.sink {
            Sink::Bar(bar) => bar.inc(n),
            Sink::Log { last } => {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if last.elapsed() >= LOG_EVERY {
                    *last = Instant::now();
                    eprintln!("{}", self.line(done));
                }
            }
            Sink::Off => {}
        }
    }

    /// A short note shown next to the bar (ignored in log mode).
    pub fn set_message(&self, msg: impl Into<String>) {
        if let Sink::Bar(bar) = &self.sink {
            bar.set_message(msg.into());
        }
    }

    /// Items done so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    fn line(&self, done: u64) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = done as f64 / secs;
        let pct = if self.total == 0 {
            100.0
        } else {
            100.0 * done as f64 / self.total as f64
        };
        let eta = if rate > 0.0 {
            (self.total.saturating_sub(done)) as f64 / rate
        } else {
            0.0
        };
        format!(
            "{}: {done}/{} ({pct:.1}%) {rate:.1}/s, {secs:.0}s elapsed, eta {eta:.0}s",
            self.label, self.total
        )
    }

    /// Ends the bar, or writes the final log line.
    pub fn finish(&self) {
        match &self.sink {
            Sink::Bar(bar) => bar.finish(),
            Sink::Log { .. } => eprintln!("{}", self.line(self.done())),
            Sink::Off => {}
        }
    }
}
