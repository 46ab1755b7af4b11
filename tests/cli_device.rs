//! `idforge device` runs a matmul on the default backend and checks it against a scalar sum.

mod common;

use common::run;

#[test]
fn device_reports_the_backend_and_a_correct_matmul() {
    let out = run(&["device", "--size", "64", "--reps", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("backend: flex"), "{stdout}");
    assert!(stdout.contains("GFLOP/s"), "{stdout}");
}
