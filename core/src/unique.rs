//! Names that no other process will pick: temporary files and staging folders on a shared
//! filesystem, written by array tasks on many nodes at once, where a process id alone repeats.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// This machine's host name as a path-safe string (letters, digits, `.`, `-`; at most 32),
/// `host` when it cannot be read.
pub fn host_name() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| std::env::var("COMPUTERNAME").ok())
            .unwrap_or_default();
        let clean: String = raw
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
            .take(32)
            .collect();
        if clean.is_empty() {
            "host".into()
        } else {
            clean
        }
    })
}

/// `<host>-<pid>-<16 hex digits>`: unique across hosts, processes, threads and calls. The hex
/// part mixes a per-process random seed, the time and a counter.
pub fn unique_tag() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SEED: OnceLock<RandomState> = OnceLock::new();
    let mut h = SEED.get_or_init(RandomState::new).build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{}-{}-{:016x}", host_name(), std::process::id(), h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_distinct_and_path_safe() {
        let tags: std::collections::HashSet<String> = (0..1000).map(|_| unique_tag()).collect();
        assert_eq!(tags.len(), 1000);
        for t in &tags {
            assert!(
                t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')),
                "{t}"
            );
            assert!(t.contains(&format!("-{}-", std::process::id())), "{t}");
        }
    }
}
