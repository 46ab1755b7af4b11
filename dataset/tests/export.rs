//! The export end to end on a hand-built run (faces table with kept and rejected rows, captions
//! table with ok and failed rows, real JPEG crops): the shards are read back and checked column
//! by column against the tables and files, the card against the shards, and re-exports against
//! stale files.
//!
//! Set `IDFORGE_KEEP_EXPORT=<folder>` to keep the export of
//! `every_column_reads_back_as_the_run_wrote_it` there (for `tools/hf-export-check`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use arrow::array::{
    Array, BinaryArray, FixedSizeListArray, Float32Array, RecordBatch, StringArray, StructArray,
    UInt32Array,
};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use idforge_core::schema::dataset::{DATA_DIR, HF_METADATA_KEY, huggingface_metadata};
use idforge_core::schema::{
    CaptionRow, CaptionStatus, CaptionsTable, FaceRow, FacesTable, Reason, Verdict,
};
use idforge_dataset::export::{EXPORT_MARKER, ROW_GROUP_ROWS, arrow_nbytes};
use idforge_dataset::{DatasetError, ExportOptions, ExportSummary, export};

const CROP_PX: u32 = 64;
const REF_PX: u32 = 40;

fn jpeg(side: u32, seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([
            (x * 4 + seed * 37) as u8,
            (y * 4 + seed * 11) as u8,
            (seed * 53) as u8,
        ])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

/// A kept face of `identity` (or of the discovered `group` when `identity` is None) with its
/// crop and reference crop written under `run`.
fn kept(run: &Path, row_id: u64, face_index: u32, identity: Option<&str>, group: &str) -> FaceRow {
    let image_id = format!("{row_id:064x}");
    let crop = format!(
        "curate/crops/{}/{image_id}_{face_index}.jpg",
        &image_id[..2]
    );
    let reference = format!("curate/refs/{}/{image_id}_{face_index}.jpg", &image_id[..2]);
    for (rel, side) in [(&crop, CROP_PX), (&reference, REF_PX)] {
        let path = run.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, jpeg(side, row_id as u32 * 3 + face_index)).unwrap();
    }
    let f = row_id as f32;
    let mut row = FaceRow::image_rejected(
        row_id,
        image_id,
        identity.map(String::from),
        Reason::NoFace,
        String::new(),
    );
    row.verdict = Verdict::Kept;
    row.reason = None;
    row.detail = None;
    row.group = Some(group.to_string());
    row.face_index = Some(face_index);
    row.bbox = Some([100.0 + f, 80.0, 300.0, 310.0]);
    row.score = Some(0.9);
    row.embedding = Some(vec![0.5; 4]);
    row.crop_path = Some(crop);
    row.face_box_in_crop = Some([10.0 + f / 4.0, 12.5, 50.0, 54.25 - f / 8.0]);
    row.ref_path = Some(reference);
    row
}

fn caption(face: &FaceRow, status: CaptionStatus) -> CaptionRow {
    let i = face.row_id;
    let ok = status == CaptionStatus::Ok;
    let text = |s: String| ok.then_some(s);
    CaptionRow {
        row_id: face.row_id,
        image_id: face.image_id.clone(),
        face_index: face.face_index.unwrap(),
        identity: face.identity.clone(),
        group: face.group.clone(),
        crop_path: face.crop_path.clone().unwrap(),
        input_sha256: "ef".repeat(32),
        captioner: "openai".into(),
        model: "qwen2.5-vl-7b".into(),
        prompt_version: "one-call-v1".into(),
        splitter: if i.is_multiple_of(2) {
            "json"
        } else {
            "rules-v1"
        }
        .into(),
        status,
        error: (!ok).then(|| "invalid JSON after 3 attempts".to_string()),
        caption: (ok && i % 2 == 1).then(|| format!("a person number {i} in a room")),
        general: text(format!("a woman img number {i}, smiling")),
        general_raw: text(format!("a woman number {i}, smiling")),
        // Row 3 says there is no background (empty), row 5 describes none (null).
        background: text(match i {
            3 => String::new(),
            _ => format!("a kitchen {i}"),
        })
        .filter(|_| i != 5),
        body: (ok && !i.is_multiple_of(3)).then(|| format!("a red coat {i}")),
        class_word: text("woman".into()),
        trigger: text("img".into()),
        raw: Some("[]".into()),
        attempts: 1,
        cached: false,
        latency_ms: Some(100),
        prompt_tokens: Some(10),
        completion_tokens: Some(5),
    }
}

/// What the fixture run holds.
struct Fixture {
    _dir: tempfile::TempDir,
    run: PathBuf,
    faces: FacesTable,
    captions: CaptionsTable,
}

impl Fixture {
    fn out(&self, name: &str) -> PathBuf {
        self.run.parent().unwrap().join(name)
    }
}

/// Identities alice (4 kept faces, one of them without a caption), bob (3, one caption failed),
/// carol (2), dave (2, two faces of one photo) and the discovered group auto-0001 (2, no
/// label); rejected rows of every kind; a caption for a rejected face.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("demo");
    let mut rows = Vec::new();
    let mut id = 0;
    let mut next = || {
        id += 1;
        id
    };
    for (identity, n) in [("alice", 4), ("bob", 3), ("carol", 2)] {
        for _ in 0..n {
            rows.push(kept(&run, next(), 0, Some(identity), identity));
        }
    }
    let photo = next();
    rows.push(kept(&run, photo, 0, Some("dave"), "dave"));
    rows.push(kept(&run, photo, 1, Some("dave"), "dave"));
    for _ in 0..2 {
        rows.push(kept(&run, next(), 0, None, "auto-0001"));
    }
    // Rejected: an image without a face, an outlier face (its crop moved to rejected/).
    rows.push(FaceRow::image_rejected(
        next(),
        "aa".repeat(32),
        Some("alice".into()),
        Reason::NoFace,
        "no face".into(),
    ));
    let mut outlier = kept(&run, next(), 0, Some("bob"), "bob");
    outlier.reject(Reason::IdOutlier, "z = -4.2");
    rows.push(outlier.clone());

    let mut captions = Vec::new();
    for r in rows.iter().filter(|r| r.verdict == Verdict::Kept) {
        match (r.identity.as_deref(), r.row_id) {
            (Some("alice"), 2) => {} // never captioned
            (Some("bob"), 6) => captions.push(caption(r, CaptionStatus::Failed)),
            _ => captions.push(caption(r, CaptionStatus::Ok)),
        }
    }
    captions.push(caption(&outlier, CaptionStatus::Ok)); // orphan: the face is rejected
    let faces = FacesTable {
        embedder: "face-api".into(),
        embedding_dim: 4,
        rows,
    };
    faces.write(&run.join("curate/faces.parquet")).unwrap();
    let captions = CaptionsTable { rows: captions };
    captions
        .write(&run.join("caption/captions.parquet"))
        .unwrap();
    std::fs::write(run.join("curate/report.html"), "<html></html>").unwrap();
    Fixture {
        _dir: dir,
        run,
        faces,
        captions,
    }
}

/// One exported row, decoded.
#[derive(Debug, Clone, PartialEq)]
struct Exported {
    image: (Vec<u8>, String),
    identity: String,
    prompt_general: Option<String>,
    prompt_background: Option<String>,
    prompt_body: Option<String>,
    class_word: Option<String>,
    trigger: Option<String>,
    face_box: Option<[f32; 4]>,
    ref_image: Option<(Vec<u8>, String)>,
    image_id: String,
    face_index: u32,
    caption: Option<String>,
}

struct Shard {
    rows: Vec<Exported>,
    kv: BTreeMap<String, String>,
    schema_metadata: std::collections::HashMap<String, String>,
    row_group_rows: Vec<usize>,
    /// `num_bytes` as `datasets` counts it, from the batches read back (one per row group).
    nbytes: u64,
}

fn read_shard(path: &Path) -> Shard {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    let meta = builder.metadata().clone();
    let kv = meta
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.key, e.value.unwrap_or_default()))
        .collect();
    let schema_metadata = builder.schema().metadata().clone();
    let batches: Vec<RecordBatch> = builder
        .with_batch_size(ROW_GROUP_ROWS)
        .build()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut rows = Vec::new();
    for b in &batches {
        let s = |name: &str| {
            b.column_by_name(name)
                .unwrap_or_else(|| panic!("no column {name}"))
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap_or_else(|| panic!("{name} is not a string column"))
                .clone()
        };
        let opt = |a: &StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_string());
        let image = |name: &str, i: usize| {
            let st = b
                .column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<StructArray>()
                .unwrap();
            st.is_valid(i).then(|| {
                let bytes = st
                    .column_by_name("bytes")
                    .unwrap()
                    .as_any()
                    .downcast_ref::<BinaryArray>()
                    .unwrap();
                let path = st
                    .column_by_name("path")
                    .unwrap()
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap();
                (bytes.value(i).to_vec(), path.value(i).to_string())
            })
        };
        let boxes = b
            .column_by_name("face_box")
            .unwrap()
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .unwrap();
        let face_index = b
            .column_by_name("face_index")
            .unwrap()
            .as_any()
            .downcast_ref::<UInt32Array>()
            .unwrap();
        let (identity, general, background, body, class_word, trigger, image_id, cap) = (
            s("identity"),
            s("prompt_general"),
            s("prompt_background"),
            s("prompt_body"),
            s("class_word"),
            s("trigger"),
            s("image_id"),
            s("caption"),
        );
        for i in 0..b.num_rows() {
            rows.push(Exported {
                image: image("image", i).expect("image is never null"),
                identity: identity.value(i).to_string(),
                prompt_general: opt(&general, i),
                prompt_background: opt(&background, i),
                prompt_body: opt(&body, i),
                class_word: opt(&class_word, i),
                trigger: opt(&trigger, i),
                face_box: boxes.is_valid(i).then(|| {
                    let v = boxes.value(i);
                    let v = v.as_any().downcast_ref::<Float32Array>().unwrap();
                    [v.value(0), v.value(1), v.value(2), v.value(3)]
                }),
                ref_image: image("ref_image", i),
                image_id: image_id.value(i).to_string(),
                face_index: face_index.value(i),
                caption: opt(&cap, i),
            });
        }
    }
    Shard {
        rows,
        kv,
        schema_metadata,
        row_group_rows: meta
            .row_groups()
            .iter()
            .map(|g| g.num_rows() as usize)
            .collect(),
        nbytes: batches.iter().map(arrow_nbytes).sum(),
    }
}

/// The shard files of a split, in name order.
fn shard_files(out: &Path, split: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out.join(DATA_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{split}-"))
        })
        .collect();
    files.sort();
    files
}

fn read_split(out: &Path, split: &str) -> Vec<Exported> {
    shard_files(out, split)
        .iter()
        .flat_map(|p| read_shard(p).rows)
        .collect()
}

fn expected_row(fx: &Fixture, face: &FaceRow, cap: Option<&CaptionRow>) -> Exported {
    let file = |rel: &str| {
        (
            std::fs::read(fx.run.join(rel)).unwrap(),
            Path::new(rel)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        )
    };
    let t = |f: fn(&CaptionRow) -> &Option<String>| cap.and_then(|c| f(c).clone());
    Exported {
        image: file(face.crop_path.as_deref().unwrap()),
        identity: face.identity.clone().or(face.group.clone()).unwrap(),
        prompt_general: t(|c| &c.general),
        prompt_background: t(|c| &c.background),
        prompt_body: t(|c| &c.body),
        class_word: t(|c| &c.class_word),
        trigger: t(|c| &c.trigger),
        face_box: face.face_box_in_crop,
        ref_image: face.ref_path.as_deref().map(file),
        image_id: face.image_id.clone(),
        face_index: face.face_index.unwrap(),
        caption: t(|c| &c.caption),
    }
}

fn caption_of<'a>(fx: &'a Fixture, face: &FaceRow) -> Option<&'a CaptionRow> {
    fx.captions
        .rows
        .iter()
        .find(|c| c.image_id == face.image_id && Some(c.face_index) == face.face_index)
}

fn identities(rows: &[Exported]) -> BTreeSet<String> {
    rows.iter().map(|r| r.identity.clone()).collect()
}

#[test]
fn every_column_reads_back_as_the_run_wrote_it() {
    let fx = fixture();
    let out = std::env::var_os("IDFORGE_KEEP_EXPORT")
        .map(PathBuf::from)
        .unwrap_or_else(|| fx.out("export"));
    let mut opts = ExportOptions::new(&out);
    opts.val_fraction = 0.3; // 5 identities → 2 held out
    opts.rows_per_shard = 3;
    opts.pretty_name = Some("idforge test faces".into());
    let summary = export(&fx.run, &opts).unwrap();

    // Every kept face is exported or counted: alice's uncaptioned face, bob's failed one.
    assert_eq!(summary.kept_faces, 13);
    assert_eq!(summary.skipped.caption_failed, 1);
    assert_eq!(summary.skipped.missing_caption, 1);
    assert_eq!(summary.skipped.missing_file, 0);
    assert_eq!(summary.orphan_captions, 1);
    assert_eq!(summary.uncaptioned, 0);
    assert_eq!(summary.rows() + summary.skipped.total(), summary.kept_faces);

    let train = read_split(&out, "train");
    let validation = read_split(&out, "validation");
    assert_eq!(train.len(), summary.train.rows);
    assert_eq!(validation.len(), summary.validation.rows);
    assert_eq!(summary.validation.identities.len(), 2);
    assert!(identities(&train).is_disjoint(&identities(&validation)));
    assert_eq!(
        identities(&train),
        summary.train.identities.keys().cloned().collect()
    );
    assert!(
        identities(&train).contains("auto-0001") || identities(&validation).contains("auto-0001"),
        "an unlabeled face takes its group as identity"
    );

    // Column by column against the tables and the files.
    let mut expected = BTreeMap::new();
    for face in fx.faces.rows.iter().filter(|r| r.verdict == Verdict::Kept) {
        let cap = caption_of(&fx, face);
        if cap.is_some_and(|c| c.status == CaptionStatus::Ok) {
            expected.insert(
                (face.image_id.clone(), face.face_index.unwrap()),
                expected_row(&fx, face, cap),
            );
        }
    }
    let mut seen = BTreeSet::new();
    for row in train.iter().chain(&validation) {
        let key = (row.image_id.clone(), row.face_index);
        let want = expected
            .get(&key)
            .unwrap_or_else(|| panic!("unexpected row {key:?}"));
        assert_eq!(row, want, "row {key:?}");
        assert!(seen.insert(key), "a face exported twice");
    }
    assert_eq!(seen.len(), expected.len());
    // Null and empty stay apart.
    let by_row = |i: u64| {
        train
            .iter()
            .chain(&validation)
            .find(|r| r.image_id == format!("{i:064x}"))
            .unwrap()
    };
    assert_eq!(by_row(3).prompt_background.as_deref(), Some(""));
    assert_eq!(by_row(5).prompt_background, None);
    assert_eq!(by_row(3).prompt_body, None);

    // Rows sorted by identity within a split; shards of at most 3 rows named like the Hub's.
    let order: Vec<&str> = train.iter().map(|r| r.identity.as_str()).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
    let files = shard_files(&out, "train");
    assert_eq!(files.len(), summary.train.rows.div_ceil(3));
    assert!(
        files[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with(&format!("train-00000-of-{:05}.parquet", files.len()))
    );

    // The `huggingface` metadata, as `datasets` reads it from the Arrow schema.
    for file in files.iter().chain(&shard_files(&out, "validation")) {
        let shard = read_shard(file);
        assert_eq!(
            shard.schema_metadata.get(HF_METADATA_KEY),
            Some(&huggingface_metadata())
        );
        assert!(shard.kv.contains_key("ARROW:schema"));
        assert_eq!(shard.kv.get(HF_METADATA_KEY), Some(&huggingface_metadata()));
        assert!(shard.row_group_rows.iter().all(|&n| n <= ROW_GROUP_ROWS));
        let json: serde_json::Value =
            serde_json::from_str(&shard.schema_metadata[HF_METADATA_KEY]).unwrap();
        let features = &json["info"]["features"];
        assert_eq!(features["image"]["_type"], "Image");
        assert_eq!(features["ref_image"]["_type"], "Image");
        assert_eq!(features["face_box"]["_type"], "Sequence");
        assert_eq!(features["face_box"]["length"], 4);
        assert_eq!(features["face_box"]["feature"]["dtype"], "float32");
        assert_eq!(features["face_index"]["dtype"], "uint32");
        assert_eq!(features["prompt_body"]["dtype"], "string");
    }
    let schema = ParquetRecordBatchReaderBuilder::try_new(File::open(&files[0]).unwrap())
        .unwrap()
        .schema()
        .clone();
    let DataType::Struct(image_fields) = schema.field_with_name("image").unwrap().data_type()
    else {
        panic!("image is not a struct")
    };
    let names: Vec<(&str, &DataType)> = image_fields
        .iter()
        .map(|f| (f.name().as_str(), f.data_type()))
        .collect();
    assert_eq!(
        names,
        [("bytes", &DataType::Binary), ("path", &DataType::Utf8)]
    );
    assert!(matches!(
        schema.field_with_name("face_box").unwrap().data_type(),
        DataType::FixedSizeList(item, 4) if item.data_type() == &DataType::Float32
    ));

    check_card(&out, &summary);
    assert!(out.join(EXPORT_MARKER).is_file());
}

/// The card's YAML header against the shards: splits, counts, sizes, features, configs.
fn check_card(out: &Path, summary: &ExportSummary) {
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    let header = card
        .strip_prefix("---\n")
        .and_then(|rest| rest.split_once("\n---\n"))
        .map(|(h, _)| h)
        .expect("a YAML header between --- lines");
    assert!(header.contains("license: \"other\"\n"), "{header}");
    assert!(header.contains("task_categories:\n- text-to-image\n"));
    let mut download = 0;
    let mut size = 0;
    for split in ["train", "validation"] {
        let files = shard_files(out, split);
        let shards: Vec<Shard> = files.iter().map(|p| read_shard(p)).collect();
        let rows: usize = shards.iter().map(|s| s.rows.len()).sum();
        let bytes: u64 = shards.iter().map(|s| s.nbytes).sum();
        download += files
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum::<u64>();
        size += bytes;
        if rows == 0 {
            assert!(!header.contains(&format!("split: {split}")));
            continue;
        }
        assert!(
            header.contains(&format!("  - split: {split}\n    path: data/{split}-*\n")),
            "{header}"
        );
        assert!(
            header.contains(&format!(
                "  - name: {split}\n    num_bytes: {bytes}\n    num_examples: {rows}\n"
            )),
            "{header}"
        );
        let body_row = format!(
            "| {split} | {rows} | {} | {} |",
            identities(
                &shards
                    .iter()
                    .flat_map(|s| s.rows.clone())
                    .collect::<Vec<_>>()
            )
            .len(),
            files.len()
        );
        assert!(card.contains(&body_row), "{body_row} not in the card");
    }
    assert!(header.contains(&format!(
        "  download_size: {download}\n  dataset_size: {size}"
    )));
    assert!(header.contains("  - name: face_box\n    sequence: float32\n    length: 4\n"));
    assert!(header.contains("  - name: image\n    dtype: image\n"));
    assert!(header.contains("  - name: face_index\n    dtype: uint32\n"));
    let names: Vec<&str> = header
        .lines()
        .filter_map(|l| l.strip_prefix("  - name: "))
        .collect();
    assert_eq!(
        &names[..12],
        [
            "image",
            "identity",
            "prompt_general",
            "prompt_background",
            "prompt_body",
            "class_word",
            "trigger",
            "face_box",
            "ref_image",
            "image_id",
            "face_index",
            "caption"
        ]
    );
    assert_eq!(summary.rows(), summary.train.rows + summary.validation.rows);
    assert!(card.contains("curate/report.html"));
}

#[test]
fn the_split_is_deterministic_and_follows_the_seed() {
    let fx = fixture();
    let run_with = |name: &str, seed: u64| {
        let mut opts = ExportOptions::new(fx.out(name));
        opts.val_fraction = 0.3;
        opts.seed = seed;
        export(&fx.run, &opts).unwrap()
    };
    let a = run_with("a", 7);
    let b = run_with("b", 7);
    assert_eq!(a.validation.identities, b.validation.identities);
    for split in ["train", "validation"] {
        let fa = shard_files(&fx.out("a"), split);
        let fb = shard_files(&fx.out("b"), split);
        assert_eq!(fa.len(), fb.len());
        for (x, y) in fa.iter().zip(&fb) {
            assert_eq!(
                std::fs::read(x).unwrap(),
                std::fs::read(y).unwrap(),
                "{x:?}"
            );
        }
    }
    let draws: BTreeSet<Vec<String>> = (0..6)
        .map(|seed| {
            run_with(&format!("s{seed}"), seed)
                .validation
                .identities
                .into_keys()
                .collect()
        })
        .collect();
    assert!(draws.len() > 1, "six seeds drew the same validation set");
}

#[test]
fn named_validation_identities_override_the_draw() {
    let fx = fixture();
    let mut opts = ExportOptions::new(fx.out("named"));
    opts.val_identities = Some(vec!["carol".into(), "auto-0001".into()]);
    let summary = export(&fx.run, &opts).unwrap();
    assert_eq!(
        summary.validation.identities,
        BTreeMap::from([("auto-0001".to_string(), 2), ("carol".to_string(), 2)])
    );
    opts.val_identities = Some(vec!["mallory".into()]);
    let err = export(&fx.run, &opts).unwrap_err().to_string();
    assert!(err.contains("`mallory`"), "{err}");
}

#[test]
fn a_re_export_replaces_every_old_shard() {
    let fx = fixture();
    let out = fx.out("again");
    let mut opts = ExportOptions::new(&out);
    opts.rows_per_shard = 1;
    let first = export(&fx.run, &opts).unwrap();
    assert!(first.train.shards.len() > 3);
    std::fs::create_dir(out.join(".git")).unwrap();
    opts.rows_per_shard = 1000;
    opts.license = "cc-by-4.0".into();
    let second = export(&fx.run, &opts).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(out.join(DATA_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "train-00000-of-00001.parquet",
            "validation-00000-of-00001.parquet"
        ]
    );
    let mut top: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, [".git", "README.md", "data", EXPORT_MARKER]);
    assert_eq!(read_split(&out, "train").len(), second.train.rows);
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("license: \"cc-by-4.0\""));
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(EXPORT_MARKER)).unwrap()).unwrap();
    assert_eq!(marker["state"], "complete");
    assert_eq!(marker["options"]["rows_per_shard"], 1000);
}

#[test]
fn a_folder_that_is_not_an_export_is_left_alone() {
    let fx = fixture();
    let out = fx.out("mine");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let err = export(&fx.run, &ExportOptions::new(&out)).unwrap_err();
    assert!(matches!(err, DatasetError::NotAnExport { .. }), "{err}");
    assert!(err.to_string().contains("notes.txt"), "{err}");
    let entries: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert_eq!(entries.len(), 1);
    // Hidden entries only (a fresh clone of a dataset repository) do not count.
    let clone = fx.out("clone");
    std::fs::create_dir_all(&clone).unwrap();
    std::fs::write(clone.join(".gitattributes"), "*.parquet filter=lfs").unwrap();
    export(&fx.run, &ExportOptions::new(&clone)).unwrap();
    assert!(clone.join(".gitattributes").is_file() && clone.join("README.md").is_file());
}

#[test]
fn a_missing_crop_is_an_error_naming_it_unless_skipped() {
    let fx = fixture();
    let face = &fx.faces.rows[0];
    let crop = fx.run.join(face.crop_path.as_deref().unwrap());
    std::fs::remove_file(&crop).unwrap();
    let out = fx.out("missing");
    let err = export(&fx.run, &ExportOptions::new(&out)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, DatasetError::MissingFile { .. }), "{text}");
    assert!(text.contains(&crop.display().to_string()), "{text}");
    assert!(text.contains("idforge curate"), "{text}");
    assert!(!out.join("README.md").exists(), "nothing written on error");

    let mut opts = ExportOptions::new(&out);
    opts.skip_missing_files = true;
    let summary = export(&fx.run, &opts).unwrap();
    assert_eq!(summary.skipped.missing_file, 1);
    assert_eq!(summary.rows() + summary.skipped.total(), summary.kept_faces);
    let mut left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["README.md", "data", EXPORT_MARKER],
        "no staging left"
    );
}

#[test]
fn uncaptioned_faces_are_exported_with_null_prompts_when_asked() {
    let fx = fixture();
    let mut opts = ExportOptions::new(fx.out("all"));
    opts.include_uncaptioned = true;
    let summary = export(&fx.run, &opts).unwrap();
    assert_eq!(summary.rows(), summary.kept_faces);
    assert_eq!(summary.uncaptioned, 2);
    assert_eq!(summary.skipped.total(), 0);
    let rows: Vec<Exported> = read_split(&fx.out("all"), "train")
        .into_iter()
        .chain(read_split(&fx.out("all"), "validation"))
        .collect();
    let nulls = rows.iter().filter(|r| r.prompt_general.is_none()).count();
    assert_eq!(nulls, 2);
    assert!(
        rows.iter()
            .filter(|r| r.prompt_general.is_none())
            .all(|r| r.trigger.is_none() && r.class_word.is_none())
    );
}

#[test]
fn without_a_captions_table_the_export_says_what_to_run() {
    let fx = fixture();
    std::fs::remove_file(fx.run.join("caption/captions.parquet")).unwrap();
    let err = export(&fx.run, &ExportOptions::new(fx.out("x")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("idforge caption") && err.contains("--include-uncaptioned"),
        "{err}"
    );
    let mut opts = ExportOptions::new(fx.out("x"));
    opts.include_uncaptioned = true;
    let summary = export(&fx.run, &opts).unwrap();
    assert_eq!(summary.uncaptioned, summary.kept_faces);
    let card = std::fs::read_to_string(fx.out("x").join("README.md")).unwrap();
    assert!(card.contains("Captions: none"));
}

#[test]
fn a_single_identity_goes_to_train_with_a_note() {
    let fx = fixture();
    let mut faces = fx.faces.clone();
    for r in &mut faces.rows {
        r.identity = Some("alice".into());
    }
    faces.write(&fx.run.join("curate/faces.parquet")).unwrap();
    let summary = export(&fx.run, &ExportOptions::new(fx.out("solo"))).unwrap();
    assert_eq!(summary.validation.rows, 0);
    assert!(summary.notes[0].contains("one identity"));
    assert!(shard_files(&fx.out("solo"), "validation").is_empty());
    check_card(&fx.out("solo"), &summary);
}
