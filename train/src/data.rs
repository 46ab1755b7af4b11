//! The training data: the dataset export's train split (`data/train-*.parquet`, written by
//! `idforge dataset export`), each sample a target photo and 1–4 other photos of the same
//! identity as references (never the target itself).
//!
//! Everything random here is a pure function of the seed and the sample's position in the run
//! (epoch = position / samples, a Fisher–Yates shuffle per epoch seeded by `(seed, epoch)`, the
//! references by `(seed, position)`), so that a resumed run needs only its step to continue the
//! same data stream. Decoding (JPEG → resized, centre-cropped pixels) runs on worker threads
//! ahead of the step, each sending through a bounded channel.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use arrow::array::{
    Array, BinaryArray, FixedSizeListArray, Float32Array, StringArray, StructArray,
};
use arrow::record_batch::RecordBatch;
use idforge_core::schema::dataset::{
    DATA_DIR, FACE_BOX, IDENTITY, IMAGE, IMAGE_BYTES, IMAGE_PATH, REF_IMAGE, Split,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::TrainError;

/// The most references one sample gets (IP-Adapter's multi-image and PhotoMaker's setting).
pub const MAX_REFERENCES: usize = 4;

/// An image of the export: its encoded bytes (kept in memory) or a file beside the shards.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// Encoded bytes from the shard.
    Bytes(Arc<[u8]>),
    /// A file, resolved against the export folder.
    File(PathBuf),
}

impl ImageSource {
    /// The encoded bytes.
    pub fn bytes(&self) -> Result<Arc<[u8]>, TrainError> {
        match self {
            ImageSource::Bytes(b) => Ok(b.clone()),
            ImageSource::File(p) => std::fs::read(p)
                .map(Arc::from)
                .map_err(|e| TrainError::io(p, e)),
        }
    }
}

/// One training photo of the export.
#[derive(Debug, Clone)]
pub struct TrainRow {
    /// The training crop.
    pub image: ImageSource,
    /// The tight reference face crop, when the export has one.
    pub ref_image: Option<ImageSource>,
    /// Who it is.
    pub identity: String,
    /// `prompt_general`: the caption the UNet is conditioned on.
    pub prompt: String,
    /// The face box in the crop's pixels.
    pub face_box: Option<[f32; 4]>,
}

/// The train split, with the rows that can be trained on (identities with at least two photos).
#[derive(Debug, Clone)]
pub struct TrainSet {
    /// Every row of the split, in shard order.
    pub rows: Vec<TrainRow>,
    /// The rows that are targets: those whose identity has another photo.
    pub samples: Vec<usize>,
    /// For each row, the other rows of its identity.
    pub others: Vec<Vec<usize>>,
}

impl TrainSet {
    /// Reads `<export>/data/train-*.parquet`.
    pub fn open(export: &Path) -> Result<Self, TrainError> {
        let data = export.join(DATA_DIR);
        let bad = |message: String| TrainError::Data {
            path: export.to_path_buf(),
            message,
        };
        if !data.is_dir() {
            return Err(bad(format!(
                "no `{DATA_DIR}/` folder: give the folder `idforge dataset export` wrote"
            )));
        }
        let mut shards: Vec<PathBuf> = std::fs::read_dir(&data)
            .map_err(|e| TrainError::io(&data, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(Split::of_shard_file)
                    == Some(Split::Train)
            })
            .collect();
        shards.sort();
        if shards.is_empty() {
            return Err(bad(format!(
                "no train split ({DATA_DIR}/train-*.parquet): export with identities left for \
                 training (a smaller --validation share)"
            )));
        }
        let mut rows = Vec::new();
        for shard in &shards {
            let file = File::open(shard).map_err(|e| TrainError::io(shard, e))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|b| b.build())
                .map_err(|e| TrainError::Data {
                    path: shard.clone(),
                    message: format!("not a Parquet file: {e}"),
                })?;
            for batch in reader {
                let batch = batch.map_err(|e| TrainError::Data {
                    path: shard.clone(),
                    message: format!("reading Parquet: {e}"),
                })?;
                read_batch(&batch, shard, export, &mut rows)?;
            }
        }
        let mut by_identity: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, r) in rows.iter().enumerate() {
            by_identity.entry(&r.identity).or_default().push(i);
        }
        let mut others = vec![Vec::new(); rows.len()];
        for members in by_identity.values() {
            for &i in members {
                others[i] = members.iter().copied().filter(|&j| j != i).collect();
            }
        }
        let samples: Vec<usize> = (0..rows.len()).filter(|&i| !others[i].is_empty()).collect();
        if samples.is_empty() {
            return Err(bad(format!(
                "the train split has {} photos but no identity with two: each sample needs \
                 another photo of its identity as the reference",
                rows.len()
            )));
        }
        Ok(Self {
            rows,
            samples,
            others,
        })
    }

    /// Identities with at least two photos.
    pub fn identities(&self) -> usize {
        let mut ids: Vec<&str> = self
            .samples
            .iter()
            .map(|&i| self.rows[i].identity.as_str())
            .collect();
        ids.dedup();
        ids.len()
    }
}

fn column<'a, A: Array + 'static>(
    batch: &'a RecordBatch,
    shard: &Path,
    name: &str,
) -> Result<&'a A, TrainError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<A>())
        .ok_or_else(|| TrainError::Data {
            path: shard.to_path_buf(),
            message: format!(
                "no `{name}` column of the dataset export's type: not an `idforge dataset \
                 export` shard (or of another schema version)"
            ),
        })
}

fn image_at(images: &StructArray, i: usize, export: &Path) -> Option<ImageSource> {
    if images.is_null(i) {
        return None;
    }
    let bytes = images
        .column_by_name(IMAGE_BYTES)
        .and_then(|c| c.as_any().downcast_ref::<BinaryArray>());
    if let Some(b) = bytes.filter(|b| !b.is_null(i)) {
        return Some(ImageSource::Bytes(Arc::from(b.value(i))));
    }
    let path = images
        .column_by_name(IMAGE_PATH)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())?;
    (!path.is_null(i)).then(|| ImageSource::File(export.join(path.value(i))))
}

/// Every row of one split of the export, in shard order (empty when the export has no such
/// split): the trainer's samples take their references from the validation split.
pub fn split_rows(export: &Path, split: Split) -> Result<Vec<TrainRow>, TrainError> {
    let data = export.join(DATA_DIR);
    let mut shards: Vec<PathBuf> = match std::fs::read_dir(&data) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(Split::of_shard_file)
                    == Some(split)
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    shards.sort();
    let mut rows = Vec::new();
    for shard in &shards {
        let file = File::open(shard).map_err(|e| TrainError::io(shard, e))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| TrainError::Data {
                path: shard.clone(),
                message: format!("not a Parquet file: {e}"),
            })?;
        for batch in reader {
            let batch = batch.map_err(|e| TrainError::Data {
                path: shard.clone(),
                message: format!("reading Parquet: {e}"),
            })?;
            read_batch(&batch, shard, export, &mut rows)?;
        }
    }
    Ok(rows)
}

fn read_batch(
    batch: &RecordBatch,
    shard: &Path,
    export: &Path,
    rows: &mut Vec<TrainRow>,
) -> Result<(), TrainError> {
    let images: &StructArray = column(batch, shard, IMAGE)?;
    let refs: Option<&StructArray> = batch
        .column_by_name(REF_IMAGE)
        .and_then(|c| c.as_any().downcast_ref::<StructArray>());
    let identity: &StringArray = column(batch, shard, IDENTITY)?;
    let prompt: &StringArray = column(batch, shard, "prompt_general")?;
    let boxes: Option<&FixedSizeListArray> = batch
        .column_by_name(FACE_BOX)
        .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>());
    for i in 0..batch.num_rows() {
        let image = image_at(images, i, export).ok_or_else(|| TrainError::Data {
            path: shard.to_path_buf(),
            message: format!("row {i} has neither image bytes nor an image path"),
        })?;
        let face_box = boxes.filter(|b| !b.is_null(i)).and_then(|b| {
            let v = b.value(i);
            let v = v.as_any().downcast_ref::<Float32Array>()?;
            (v.len() == 4).then(|| [v.value(0), v.value(1), v.value(2), v.value(3)])
        });
        rows.push(TrainRow {
            image,
            ref_image: refs.and_then(|r| image_at(r, i, export)),
            identity: identity.value(i).to_string(),
            prompt: if prompt.is_null(i) {
                String::new()
            } else {
                prompt.value(i).to_string()
            },
            face_box,
        });
    }
    Ok(())
}

/// Mixes numbers into one seed (splitmix64 steps), for the per-position random streams.
pub fn mix(parts: &[u64]) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64;
    for &p in parts {
        h ^= p
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(h << 6)
            .wrapping_add(h >> 2);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h = z ^ (z >> 31);
    }
    h
}

/// Salts of the random streams, so that no two draw from the same sequence.
pub mod salt {
    /// The epoch's shuffle.
    pub const SHUFFLE: u64 = 1;
    /// A sample's references.
    pub const REFERENCES: u64 = 2;
    /// How many references a step takes.
    pub const REFERENCE_COUNT: u64 = 3;
    /// A micro-batch's noise, timesteps, drops and mask.
    pub const STEP: u64 = 4;
    /// The adapter's random initialisation.
    pub const INIT: u64 = 5;
}

/// Which rows the training stream visits, in order.
#[derive(Debug, Clone)]
pub struct Plan {
    samples: Vec<usize>,
    seed: u64,
}

impl Plan {
    /// The plan over `set`'s samples.
    pub fn new(set: &TrainSet, seed: u64) -> Self {
        Self {
            samples: set.samples.clone(),
            seed,
        }
    }

    /// Samples per epoch.
    pub fn epoch_len(&self) -> u64 {
        self.samples.len() as u64
    }

    /// The row at `position` of the stream: epoch `position / len`, shuffled per epoch.
    pub fn row(&self, position: u64) -> usize {
        let n = self.epoch_len();
        let epoch = position / n;
        let order = self.epoch(epoch);
        order[(position % n) as usize]
    }

    /// One epoch's order (Fisher–Yates from `(seed, epoch)`).
    pub fn epoch(&self, epoch: u64) -> Vec<usize> {
        let mut order = self.samples.clone();
        let mut rng = StdRng::seed_from_u64(mix(&[self.seed, salt::SHUFFLE, epoch]));
        for i in (1..order.len()).rev() {
            let j = rng.random_range(0..=i);
            order.swap(i, j);
        }
        order
    }

    /// How many references the step `step` gives each sample: uniform in `1..=max`, `max` the
    /// fewest other photos any of its samples has (capped at `max_refs`).
    pub fn reference_count(
        &self,
        set: &TrainSet,
        step: u64,
        rows: &[usize],
        max_refs: usize,
    ) -> usize {
        let max = rows
            .iter()
            .map(|&r| set.others[r].len())
            .min()
            .unwrap_or(1)
            .clamp(1, max_refs.max(1));
        let mut rng = StdRng::seed_from_u64(mix(&[self.seed, salt::REFERENCE_COUNT, step]));
        rng.random_range(1..=max)
    }

    /// `count` distinct other photos of the row at `position`'s identity.
    pub fn references(
        &self,
        set: &TrainSet,
        position: u64,
        row: usize,
        count: usize,
    ) -> Vec<usize> {
        let mut others = set.others[row].clone();
        let mut rng = StdRng::seed_from_u64(mix(&[self.seed, salt::REFERENCES, position]));
        let count = count.min(others.len());
        for i in 0..count {
            let j = rng.random_range(i..others.len());
            others.swap(i, j);
        }
        others.truncate(count);
        others
    }
}

/// A target photo decoded for the VAE.
#[derive(Debug, Clone)]
pub struct Pixels {
    /// `[3, side, side]` in [-1, 1].
    pub chw: Vec<f32>,
    /// The face box at the training resolution, in pixels.
    pub face_box: Option<[f32; 4]>,
}

/// Decodes `bytes`, resizes the short side to `side` (bilinear, as torchvision's `Resize`) and
/// crops the centre square; returns the pixels in [-1, 1] and the scale and offset that map a
/// box of the original into the crop.
pub fn decode_square(bytes: &[u8], side: usize) -> Result<(Vec<f32>, f32, [f32; 2]), String> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| format!("decoding an image: {e}"))?
        .to_rgb8();
    let (w, h) = (img.width() as f32, img.height() as f32);
    let scale = side as f32 / w.min(h);
    let (nw, nh) = (
        ((w * scale).round() as u32).max(side as u32),
        ((h * scale).round() as u32).max(side as u32),
    );
    let resized = image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Triangle);
    let (ox, oy) = ((nw as usize - side) / 2, (nh as usize - side) / 2);
    let mut chw = vec![0f32; 3 * side * side];
    for y in 0..side {
        for x in 0..side {
            let p = resized.get_pixel((x + ox) as u32, (y + oy) as u32);
            for c in 0..3 {
                chw[c * side * side + y * side + x] = p[c] as f32 / 127.5 - 1.0;
            }
        }
    }
    Ok((chw, scale, [ox as f32, oy as f32]))
}

/// Decodes `bytes` into RGB8 (`width`, `height`, data), for the face embedder.
pub fn decode_rgb(bytes: &[u8]) -> Result<(usize, usize, Vec<u8>), String> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| format!("decoding an image: {e}"))?
        .to_rgb8();
    Ok((img.width() as usize, img.height() as usize, img.into_raw()))
}

/// A target photo at the training resolution, its face box mapped into the crop.
pub fn target_pixels(row: &TrainRow, side: usize) -> Result<Pixels, String> {
    let bytes = row.image.bytes().map_err(|e| e.to_string())?;
    let (chw, scale, [ox, oy]) = decode_square(&bytes, side)?;
    let s = side as f32;
    let face_box = row.face_box.map(|[x0, y0, x1, y1]| {
        [
            (x0 * scale - ox).clamp(0.0, s),
            (y0 * scale - oy).clamp(0.0, s),
            (x1 * scale - ox).clamp(0.0, s),
            (y1 * scale - oy).clamp(0.0, s),
        ]
    });
    Ok(Pixels { chw, face_box })
}

/// Work done ahead of the step on worker threads: whatever `prepare` makes of a position.
pub struct Prefetch<T: Send + 'static> {
    receivers: Vec<Receiver<(u64, Result<T, String>)>>,
    workers: Vec<JoinHandle<()>>,
    next: u64,
}

impl<T: Send + 'static> Prefetch<T> {
    /// Starts `threads` workers preparing positions `start..end` in order (position `p` on
    /// worker `p % threads`), each at most `ahead` positions in front of the consumer.
    pub fn start(
        start: u64,
        end: u64,
        threads: usize,
        ahead: usize,
        prepare: impl Fn(u64) -> Result<T, String> + Send + Sync + 'static,
    ) -> Self {
        let threads = threads.max(1);
        let prepare = Arc::new(prepare);
        let mut receivers = Vec::new();
        let mut workers = Vec::new();
        for w in 0..threads as u64 {
            let (tx, rx): (SyncSender<_>, Receiver<_>) = sync_channel(ahead.max(1));
            let prepare = prepare.clone();
            workers.push(std::thread::spawn(move || {
                let first = start + (w + threads as u64 - start % threads as u64) % threads as u64;
                let mut p = first;
                while p < end {
                    if tx.send((p, prepare(p))).is_err() {
                        return;
                    }
                    p += threads as u64;
                }
            }));
            receivers.push(rx);
        }
        Self {
            receivers,
            workers,
            next: start,
        }
    }

    /// The next position's result, in order.
    pub fn next_item(&mut self) -> Result<(u64, T), String> {
        let n = self.receivers.len() as u64;
        let rx = &self.receivers[(self.next % n) as usize];
        let (p, item) = rx
            .recv()
            .map_err(|_| "the data workers stopped early".to_string())?;
        debug_assert_eq!(p, self.next);
        self.next += 1;
        item.map(|t| (p, t))
    }
}

impl<T: Send + 'static> Drop for Prefetch<T> {
    fn drop(&mut self) {
        // Closing the channels stops the workers at their next send.
        self.receivers.clear();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(groups: &[usize]) -> TrainSet {
        let mut rows = Vec::new();
        for (g, &n) in groups.iter().enumerate() {
            for _ in 0..n {
                rows.push(TrainRow {
                    image: ImageSource::Bytes(Arc::from(&[][..])),
                    ref_image: None,
                    identity: format!("id{g}"),
                    prompt: String::new(),
                    face_box: None,
                });
            }
        }
        let mut others = vec![Vec::new(); rows.len()];
        for i in 0..rows.len() {
            others[i] = (0..rows.len())
                .filter(|&j| j != i && rows[j].identity == rows[i].identity)
                .collect();
        }
        let samples = (0..rows.len()).filter(|&i| !others[i].is_empty()).collect();
        TrainSet {
            rows,
            samples,
            others,
        }
    }

    #[test]
    fn every_epoch_is_a_permutation_and_references_are_never_the_target() {
        let s = set(&[3, 1, 4]);
        assert_eq!(s.samples.len(), 7, "the lone photo is no sample");
        let plan = Plan::new(&s, 7);
        let mut e0 = plan.epoch(0);
        assert_ne!(e0, plan.epoch(1), "epochs are shuffled differently");
        e0.sort();
        assert_eq!(e0, s.samples);
        for p in 0..30 {
            let row = plan.row(p);
            let refs = plan.references(&s, p, row, MAX_REFERENCES);
            assert!(!refs.is_empty() && !refs.contains(&row));
            assert!(
                refs.iter()
                    .all(|&r| s.rows[r].identity == s.rows[row].identity)
            );
            assert_eq!(
                refs,
                plan.references(&s, p, row, MAX_REFERENCES),
                "deterministic"
            );
        }
    }

    #[test]
    fn prefetch_keeps_the_order() {
        let mut p = Prefetch::start(5, 40, 3, 2, |i| Ok(i * 10));
        for i in 5..40 {
            assert_eq!(p.next_item().unwrap(), (i, i * 10));
        }
    }
}
