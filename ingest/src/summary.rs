//! A plain-text summary of an `images` table, for the end of a run and `idforge show`.

use std::collections::BTreeMap;
use std::fmt::Write;

use idforge_core::schema::{ImageStatus, ImagesTable};

/// Counts per status with one example reason each, identities, formats, sizes.
pub fn summarize(table: &ImagesTable) -> String {
    let mut s = String::new();
    let rows = &table.rows;
    let ok: Vec<_> = rows
        .iter()
        .filter(|r| r.status == ImageStatus::Ok)
        .collect();
    let _ = writeln!(s, "{} rows, {} ok", rows.len(), ok.len());
    let _ = writeln!(s, "  {:<20} {:>7}  example reason", "status", "rows");
    for (status, n) in table.status_counts() {
        if n == 0 {
            continue;
        }
        let example = rows
            .iter()
            .find(|r| r.status == status)
            .and_then(|r| r.error.as_deref())
            .map(|e| truncate(e, 90))
            .unwrap_or_default();
        let _ = writeln!(s, "  {:<20} {:>7}  {example}", status.as_str(), n);
    }
    let mut per_identity: BTreeMap<&str, usize> = BTreeMap::new();
    let mut unlabeled = 0;
    for r in &ok {
        match r.identity.as_deref() {
            Some(id) => *per_identity.entry(id).or_default() += 1,
            None => unlabeled += 1,
        }
    }
    if !per_identity.is_empty() {
        let mut sizes: Vec<usize> = per_identity.values().copied().collect();
        sizes.sort_unstable();
        let _ = writeln!(
            s,
            "identities: {} (ok images per identity: min {}, median {}, max {})",
            sizes.len(),
            sizes[0],
            sizes[sizes.len() / 2],
            sizes[sizes.len() - 1]
        );
    }
    if unlabeled > 0 {
        let _ = writeln!(s, "unlabeled ok images: {unlabeled}");
    }
    if !ok.is_empty() {
        let mut formats: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &ok {
            *formats
                .entry(r.format.as_deref().unwrap_or("?"))
                .or_default() += 1;
        }
        let list: Vec<String> = formats.iter().map(|(f, n)| format!("{f} {n}")).collect();
        let _ = writeln!(s, "formats: {}", list.join(", "));
        let short =
            |r: &&idforge_core::schema::ImageRow| r.width.unwrap_or(0).min(r.height.unwrap_or(0));
        let (min, max) = (
            ok.iter().map(short).min().unwrap_or(0),
            ok.iter().map(short).max().unwrap_or(0),
        );
        let at_512 = ok.iter().filter(|r| short(r) >= 512).count();
        let bytes: u64 = ok.iter().filter_map(|r| r.bytes).sum();
        let _ = writeln!(
            s,
            "short side: {min}–{max} px ({at_512} of {} at least 512 px); {:.1} MB stored",
            ok.len(),
            bytes as f64 / 1e6
        );
    }
    s
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}
