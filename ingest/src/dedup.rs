//! Duplicate flags over the whole table, once every shard is in.
//!
//! Rows are visited in `row_id` order. The first `ok` row of a photograph stays `ok` and
//! represents it; a later row with the same bytes (same sha256) or a pHash within the threshold
//! is a `duplicate` of it when the identities agree (or one is unlabeled), and a `conflict` when
//! two different identities claim the same photograph — then the representative is marked
//! `conflict` too, since neither label can be trusted.
//!
//! Near-duplicate search uses the pigeonhole principle: split the 64 bits into `t + 1`
//! segments; two hashes within distance `t` agree exactly on at least one segment, so only rows
//! sharing a segment value are compared.

use std::collections::HashMap;

use idforge_core::schema::{ImageRow, ImageStatus};

use crate::phash::hamming;

/// Rows flagged by [`flag_duplicates`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DedupCounts {
    /// Same bytes, same identity.
    pub exact_duplicates: usize,
    /// pHash within the threshold, same identity.
    pub near_duplicates: usize,
    /// Rows marked `conflict` (representatives included).
    pub conflicts: usize,
}

struct SegmentIndex {
    bounds: Vec<(u32, u32)>,
    buckets: HashMap<(usize, u64), Vec<usize>>,
}

impl SegmentIndex {
    fn new(threshold: u32) -> Self {
        let k = (threshold + 1).min(64);
        let bounds = (0..k).map(|i| (64 * i / k, 64 * (i + 1) / k)).collect();
        SegmentIndex {
            bounds,
            buckets: HashMap::new(),
        }
    }

    fn keys(&self, h: u64) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.bounds.iter().enumerate().map(move |(i, &(lo, hi))| {
            let width = hi - lo;
            let mask = if width == 64 {
                u64::MAX
            } else {
                (1u64 << width) - 1
            };
            (i, (h >> lo) & mask)
        })
    }

    fn insert(&mut self, h: u64, rep: usize) {
        let keys: Vec<_> = self.keys(h).collect();
        for k in keys {
            self.buckets.entry(k).or_default().push(rep);
        }
    }

    /// Representatives sharing at least one segment with `h`.
    fn candidates(&self, h: u64) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .keys(h)
            .filter_map(|k| self.buckets.get(&k))
            .flatten()
            .copied()
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

fn same_identity(a: &Option<String>, b: &Option<String>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// Flags duplicates and conflicts in `rows` (sorted by `row_id`).
pub fn flag_duplicates(rows: &mut [ImageRow], threshold: u32) -> DedupCounts {
    let mut counts = DedupCounts::default();
    let mut by_sha: HashMap<String, usize> = HashMap::new();
    let mut index = SegmentIndex::new(threshold);
    for i in 0..rows.len() {
        if rows[i].status != ImageStatus::Ok {
            continue;
        }
        let (Some(sha), Some(h)) = (rows[i].image_id.clone(), rows[i].phash) else {
            continue;
        };
        let exact = by_sha.get(&sha).copied();
        let found = exact.map(|r| (r, 0)).or_else(|| {
            index
                .candidates(h)
                .into_iter()
                .map(|r| (r, hamming(h, rows[r].phash.unwrap_or(!h))))
                .filter(|&(_, d)| d <= threshold)
                .min_by_key(|&(r, _)| r)
        });
        let Some((rep, distance)) = found else {
            by_sha.insert(sha, i);
            index.insert(h, i);
            continue;
        };
        let (rep_id, rep_identity) = (rows[rep].row_id, rows[rep].identity.clone());
        let how = if exact.is_some() {
            format!("same bytes as row {rep_id}")
        } else {
            format!("near-duplicate of row {rep_id} (pHash distance {distance} ≤ {threshold})")
        };
        let row = &mut rows[i];
        row.duplicate_of = Some(rep_id);
        if same_identity(&row.identity, &rep_identity) {
            row.status = ImageStatus::Duplicate;
            row.error = Some(how);
            if exact.is_some() {
                counts.exact_duplicates += 1;
            } else {
                counts.near_duplicates += 1;
            }
        } else {
            let (mine, theirs) = (
                row.identity.clone().unwrap_or_default(),
                rep_identity.unwrap_or_default(),
            );
            let this_id = row.row_id;
            row.status = ImageStatus::Conflict;
            row.error = Some(format!("{how}, which is labelled `{theirs}`, not `{mine}`"));
            counts.conflicts += 1;
            let rep_row = &mut rows[rep];
            if rep_row.status == ImageStatus::Ok {
                rep_row.status = ImageStatus::Conflict;
                rep_row.error = Some(format!(
                    "the same photograph is also labelled `{mine}` (row {this_id}); neither label is trusted"
                ));
                rep_row.duplicate_of = Some(this_id);
                counts.conflicts += 1;
            }
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u64, identity: Option<&str>, sha: &str, phash: u64) -> ImageRow {
        let mut r = ImageRow::pending(id, format!("http://h/{id}.jpg"), identity.map(String::from));
        r.image_id = Some(sha.into());
        r.phash = Some(phash);
        r
    }

    #[test]
    fn exact_and_near_duplicates_within_an_identity_conflicts_across() {
        let base = 0xF0F0_1234_5678_9ABC;
        let mut rows = vec![
            row(0, Some("ann"), "s0", base),
            row(1, Some("ann"), "s0", base),          // exact copy
            row(2, Some("ann"), "s2", base ^ 0b1011), // 3 bits away
            row(3, Some("bob"), "s3", base ^ 0b1),    // same photo, other identity
            row(4, Some("bob"), "s4", !base),         // a different photo
            row(5, None, "s5", !base ^ 0b11),         // unlabeled copy of row 4
        ];
        rows[4].status = ImageStatus::Ok;
        let mut failed = row(6, Some("bob"), "s0", base);
        failed.status = ImageStatus::HttpError;
        rows.push(failed);
        let counts = flag_duplicates(&mut rows, 4);
        let st: Vec<_> = rows.iter().map(|r| (r.status, r.duplicate_of)).collect();
        assert_eq!(
            st,
            vec![
                (ImageStatus::Conflict, Some(3)),
                (ImageStatus::Duplicate, Some(0)),
                (ImageStatus::Duplicate, Some(0)),
                (ImageStatus::Conflict, Some(0)),
                (ImageStatus::Ok, None),
                (ImageStatus::Duplicate, Some(4)),
                (ImageStatus::HttpError, None),
            ]
        );
        assert_eq!(
            counts,
            DedupCounts {
                exact_duplicates: 1,
                near_duplicates: 2,
                conflicts: 2
            }
        );
        assert_eq!(
            rows[2].error.as_deref(),
            Some("near-duplicate of row 0 (pHash distance 3 ≤ 4)")
        );
        assert!(
            rows[3]
                .error
                .as_deref()
                .unwrap()
                .contains("labelled `ann`, not `bob`")
        );
    }

    #[test]
    fn segment_index_finds_every_pair_within_the_threshold() {
        // Exhaustive check against brute force on pseudo-random hashes with planted neighbours.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut hashes = Vec::new();
        for _ in 0..300 {
            let h = next();
            hashes.push(h);
            let flips = next() % 7;
            let mut n = h;
            for _ in 0..flips {
                n ^= 1 << (next() % 64);
            }
            hashes.push(n);
        }
        for t in [0, 3, 6] {
            let mut idx = SegmentIndex::new(t);
            for (i, &h) in hashes.iter().enumerate() {
                let got: Vec<usize> = idx
                    .candidates(h)
                    .into_iter()
                    .filter(|&j| hamming(h, hashes[j]) <= t)
                    .collect();
                let want: Vec<usize> = (0..i).filter(|&j| hamming(h, hashes[j]) <= t).collect();
                assert_eq!(got, want, "t = {t}, i = {i}");
                idx.insert(h, i);
            }
        }
    }
}
