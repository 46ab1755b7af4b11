//! What the bench binaries (`harness = false`) share: their arguments, and what they record
//! about the machine they ran on, so that figures are compared only where they are comparable
//! (Linux `/proc`; `None` elsewhere).

/// The arguments cargo passes to a `harness = false` bench binary.
pub struct BenchArgs {
    /// `cargo bench` passes `--bench`; `cargo test --all-targets` does not (smoke mode).
    pub bench: bool,
    argv: Vec<String>,
}

impl BenchArgs {
    /// This process's arguments.
    pub fn from_env() -> Self {
        let argv: Vec<String> = std::env::args().skip(1).collect();
        BenchArgs {
            bench: argv.iter().any(|a| a == "--bench"),
            argv,
        }
    }

    /// The value after `flag` (`--rounds 5` → `"5"`).
    pub fn value(&self, flag: &str) -> Option<String> {
        self.argv
            .iter()
            .position(|a| a == flag)
            .and_then(|i| self.argv.get(i + 1).cloned())
    }
}

/// Seconds of CPU time (user + system) this process has used so far, from `/proc/self/stat`
/// (clock ticks, assumed 100 per second).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The one-minute load average: a busy machine makes a timing worth less.
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The CPU's model name.
pub fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// This process's peak resident memory (Linux `VmHWM`), GiB: the memory figure of a CPU run,
/// for the benchmark's cost columns.
pub fn peak_rss_gib() -> Option<f64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn cpu_time_and_load_are_read_on_linux() {
        let before = super::cpu_seconds().expect("/proc/self/stat");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 50 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        assert!(super::cpu_seconds().unwrap() >= before);
        assert!(super::loadavg().unwrap() >= 0.0);
        assert!(!super::cpu_model().unwrap_or_default().is_empty());
        assert!(super::peak_rss_gib().unwrap() > 0.0);
    }
}
