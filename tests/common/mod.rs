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
