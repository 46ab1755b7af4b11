//! What every `tests/cli_*.rs` needs to drive the `idforge` binary: one way to start it, to
//! read what it printed, to insist it succeeded, and to find the fetched test assets. Included
//! with `mod common;` (a folder module, so Cargo does not build it as a test of its own).

// Each test file uses only some of these helpers; the rest would be dead code in that file.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `idforge` binary of this build, with progress bars off (the tests read plain output) and
/// without the user's `IDFORGE_RUNS`, so that runs go only where the test says.
pub fn idforge() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_idforge"));
    c.env("IDFORGE_PROGRESS", "off").env_remove("IDFORGE_RUNS");
    c
}

/// Runs `idforge` with `args` to completion.
pub fn run(args: &[&str]) -> Output {
    idforge()
        .args(args)
        .output()
        .expect("the idforge binary starts")
}

/// The exit code, stdout and stderr of a finished command, for assertion messages and for
/// checking what the user was told wherever it was printed.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd`, failing the test with everything it printed unless it succeeded.
pub fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("the idforge binary starts");
    assert!(out.status.success(), "{}", text(&out));
    out
}

/// [`ok`], returning what the command printed on stdout.
pub fn ok_stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&ok(cmd).stdout).into_owned()
}

/// The face-api package in the asset cache; the tests that need its weights or photographs
/// cannot run without it, so its absence fails them with the command that fetches it.
pub fn face_api_dir() -> PathBuf {
    idforge_core::cache::face_api_dir_if_fetched().unwrap_or_else(|| {
        panic!(
            "{} is missing: run `make assets` (tools/fetch-assets) first",
            idforge_core::cache::face_api_dir().display()
        )
    })
}

/// face-api's sample photographs (`sample1.jpg` …) in the asset cache.
pub fn sample_photos_dir() -> PathBuf {
    let dir = face_api_dir().join("demo");
    assert!(
        dir.join("sample1.jpg").is_file(),
        "{} has no sample1.jpg: run `make assets`",
        dir.display()
    );
    dir
}

/// A hand-built curated and captioned run, for tests of what reads the `faces` and `captions`
/// tables (`dataset export`, and through it `train`): `per_identity` kept faces of each of
/// `identities`, with their crops (`crop_side` px) and reference crops (half that) saved by
/// `save_jpeg(path, side, row_id)`, the face box `face_box` in the crop, and the caption
/// `(general, general_raw)` that `caption(row_id, j)` gives (`None`: a failed caption).
pub struct CuratedRun<'a> {
    /// Identity labels, in row order.
    pub identities: &'a [&'a str],
    /// Kept faces per identity.
    pub per_identity: u64,
    /// Side of each training crop, in pixels.
    pub crop_side: usize,
    /// The face's box in the crop.
    pub face_box: [f32; 4],
}

impl CuratedRun<'_> {
    /// Writes `run`'s `curate/faces.parquet`, `caption/captions.parquet` and the crops.
    pub fn write(
        &self,
        run: &std::path::Path,
        save_jpeg: impl Fn(&std::path::Path, usize, u64),
        caption: impl Fn(u64, u64) -> Option<(String, String)>,
    ) {
        use idforge_core::schema::{
            CaptionRow, CaptionStatus, CaptionsTable, FaceRow, FacesTable, Reason, Verdict,
        };
        let mut faces = Vec::new();
        let mut captions = Vec::new();
        for (k, who) in self.identities.iter().enumerate() {
            for j in 0..self.per_identity {
                let row_id = k as u64 * self.per_identity + j;
                let image_id = format!("{row_id:064x}");
                let crop = format!("curate/crops/{image_id}_0.jpg");
                let reference = format!("curate/refs/{image_id}_0.jpg");
                save_jpeg(&run.join(&crop), self.crop_side, row_id);
                save_jpeg(&run.join(&reference), self.crop_side / 2, row_id);
                let mut f = FaceRow::image_rejected(
                    row_id,
                    image_id.clone(),
                    Some(who.to_string()),
                    Reason::NoFace,
                    String::new(),
                );
                f.verdict = Verdict::Kept;
                f.reason = None;
                f.detail = None;
                f.group = Some(who.to_string());
                f.face_index = Some(0);
                f.crop_path = Some(crop.clone());
                f.face_box_in_crop = Some(self.face_box);
                f.ref_path = Some(reference);
                let text = caption(row_id, j);
                let ok = text.is_some();
                let (general, general_raw) = text.unzip();
                captions.push(CaptionRow {
                    row_id,
                    image_id,
                    face_index: 0,
                    identity: f.identity.clone(),
                    group: f.group.clone(),
                    crop_path: crop,
                    input_sha256: "00".repeat(32),
                    captioner: "attributes".into(),
                    model: "face-api-1.7.15".into(),
                    prompt_version: "v1".into(),
                    splitter: "none".into(),
                    status: if ok {
                        CaptionStatus::Ok
                    } else {
                        CaptionStatus::Failed
                    },
                    error: (!ok).then(|| "timeout".into()),
                    caption: None,
                    general,
                    general_raw,
                    background: None,
                    body: None,
                    class_word: ok.then(|| "person".into()),
                    trigger: ok.then(|| "sks".into()),
                    raw: None,
                    attempts: 0,
                    cached: false,
                    latency_ms: None,
                    prompt_tokens: None,
                    completion_tokens: None,
                });
                faces.push(f);
            }
        }
        FacesTable {
            embedder: "face-api".into(),
            embedding_dim: 128,
            rows: faces,
        }
        .write(&run.join("curate/faces.parquet"))
        .unwrap();
        CaptionsTable { rows: captions }
            .write(&run.join("caption/captions.parquet"))
            .unwrap();
    }
}
