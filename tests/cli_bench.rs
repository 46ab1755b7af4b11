//! `idforge bench` end to end on faces cropped from face-api's sample photographs: references,
//! the plan, baselines with known properties (the same person mirrored, the wrong person), a
//! method folder with missing, unreadable, extra and face-less images, scoring with face-api
//! (and with the tiny CLIP / DINO / Inception fixtures for the other columns), the leaderboard
//! files, and the errors a user meets first.

mod common;

use std::path::Path;

use idforge_models::face_api::Detector;
use idforge_models::face_api::preprocess::RgbView;
use idforge_models::face_embedder::FaceEmbedder;
use serde_json::Value;

use common::{face_api_dir, idforge, ok, text};

const PROTOCOL: &str = r#"
[protocol]
name = "test-v1"
version = 1
seeds = [0, 1]
categories = ["clothing", "style"]

[[sets]]
name = "in-train"
[[sets]]
name = "out-of-train"

[[prompts]]
id = "clothing-01"
category = "clothing"
general = "a photo of a {class} {trigger} smiling"
background = "in a park"
body = "wearing a red scarf"

[[prompts]]
id = "style-01"
category = "style"
general = "an oil painting of a {class} {trigger}"
"#;

/// The largest face of three sample photographs (three different people), cropped square with
/// a margin, as `refs/<set>/<identity>/ref.png`: p1, p2 in-train; p3 out-of-train.
fn make_references(dir: &Path) {
    let face_api = face_api_dir();
    let device = Default::default();
    let faces = FaceEmbedder::<burn::backend::Flex>::load(
        &face_api.join("model"),
        Detector::default(),
        None,
        &device,
    )
    .unwrap();
    for (k, (photo, set)) in [
        ("sample1.jpg", "in-train"),
        ("sample2.jpg", "in-train"),
        ("sample3.jpg", "out-of-train"),
    ]
    .iter()
    .enumerate()
    {
        let img = image::open(face_api.join("demo").join(photo))
            .unwrap()
            .into_rgb8();
        let view = RgbView {
            width: img.width() as usize,
            height: img.height() as usize,
            data: img.as_raw(),
        };
        let (face, _) = faces
            .largest_face(view)
            .expect("a face in the sample photo");
        let d = face.detection;
        let side = (d.width.max(d.height) * 1.8) as u32;
        let cx = (d.x + d.width / 2.0) as i64;
        let cy = (d.y + d.height / 2.0) as i64;
        let x0 = (cx - i64::from(side) / 2).clamp(0, i64::from(img.width() - side)) as u32;
        let y0 = (cy - i64::from(side) / 2).clamp(0, i64::from(img.height() - side)) as u32;
        let crop = image::imageops::crop_imm(&img, x0, y0, side, side).to_image();
        let out = dir.join(set).join(format!("p{}", k + 1));
        std::fs::create_dir_all(&out).unwrap();
        crop.save(out.join("ref.png")).unwrap();
    }
    std::fs::write(dir.join("class_words.toml"), "p1 = \"woman\"\n").unwrap();
}

/// `field` of every entry of the array `array` of the leaderboard document.
fn field_of<'a>(lb: &'a Value, array: &str, field: &str) -> Vec<&'a str> {
    lb[array]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[field].as_str().unwrap())
        .collect()
}

fn metric(lb: &Value, set: &str, method: &str, key: &str) -> Option<f64> {
    let set = lb["sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == set)?;
    let row = set["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["method"] == method)?;
    row["metrics"][key]["value"].as_f64()
}

#[test]
fn bench_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let refs = root.join("refs");
    make_references(&refs);
    let protocol = root.join("test-v1.toml");
    std::fs::write(&protocol, PROTOCOL).unwrap();
    let bench = root.join("bench");

    // Not a bench folder yet.
    let out = idforge()
        .args(["bench", "plan"])
        .arg(&bench)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("bench init"), "{}", text(&out));

    ok(idforge()
        .args(["bench", "init"])
        .arg(&bench)
        .arg("--protocol")
        .arg(&protocol)
        .arg("--references")
        .arg(&refs));
    let again = idforge()
        .args(["bench", "init"])
        .arg(&bench)
        .arg("--protocol")
        .arg(&protocol)
        .arg("--references")
        .arg(&refs)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        text(&again).contains("already a bench folder"),
        "{}",
        text(&again)
    );
    // A folder with other things in it is never taken (a failed init would remove it).
    let busy = idforge()
        .args(["bench", "init"])
        .arg(root)
        .arg("--protocol")
        .arg(&protocol)
        .arg("--references")
        .arg(&refs)
        .output()
        .unwrap();
    assert!(!busy.status.success());
    assert!(text(&busy).contains("not empty"), "{}", text(&busy));
    assert!(refs.is_dir() && protocol.is_file());

    // The plan: 3 identities × 2 prompts × 2 seeds, the trigger after the class word.
    let plan = ok(idforge()
        .args(["bench", "plan", "--format", "tsv", "--trigger", "img"])
        .arg(&bench));
    let plan = String::from_utf8(plan.stdout).unwrap();
    let lines: Vec<&str> = plan.lines().collect();
    assert_eq!(lines.len(), 1 + 12, "{plan}");
    assert!(lines[0].starts_with("set\tidentity\treferences"));
    assert!(
        plan.contains("p1/clothing-01/0.png")
            && plan.contains("a photo of a woman img smiling, in a park, wearing a red scarf"),
        "{plan}"
    );
    assert!(plan.contains("an oil painting of a person img"), "{plan}");
    let table = ok(idforge().args(["bench", "plan"]).arg(&bench));
    assert!(
        String::from_utf8_lossy(&table.stdout)
            .contains("<method>/<identity>/<prompt_id>/<seed>.png")
    );

    // Baselines with known properties, imported like any method.
    for kind in ["flipped-reference", "other-identity"] {
        let folder = root.join(kind);
        ok(idforge()
            .args(["bench", "baseline", kind, "--bench"])
            .arg(&bench)
            .arg("-o")
            .arg(&folder));
        let out = ok(idforge()
            .args(["bench", "import"])
            .arg(&folder)
            .arg("--bench")
            .arg(&bench));
        assert!(
            text(&out).contains("12 of 12 expected images found, 0 missing, 0 unreadable, 0 extra"),
            "{}",
            text(&out)
        );
    }

    // A method folder with every kind of problem.
    let partial = root.join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(
        partial.join("method.toml"),
        "name = \"partial\"\nbase_model = \"SD 1.5\"\ntrigger = \"img\"\n\n[settings]\nsteps = 30\n\n[cost]\ntraining_minutes = 0\nseconds_per_image = 2.5\nhardware = \"A100\"\n",
    )
    .unwrap();
    let gray = image::RgbImage::from_pixel(128, 128, image::Rgb([128, 128, 128]));
    for prompt in ["clothing-01", "style-01"] {
        for seed in [0, 1] {
            // p1: its reference (the job p1/style-01/1 is left missing).
            if !(prompt == "style-01" && seed == 1) {
                let d = partial.join("p1").join(prompt);
                std::fs::create_dir_all(&d).unwrap();
                std::fs::copy(
                    refs.join("in-train/p1/ref.png"),
                    d.join(format!("{seed}.png")),
                )
                .unwrap();
            }
            // p2: no face at all.
            let d = partial.join("p2").join(prompt);
            std::fs::create_dir_all(&d).unwrap();
            gray.save(d.join(format!("{seed}.png"))).unwrap();
            // p3: its reference, but one file is not an image.
            let d = partial.join("p3").join(prompt);
            std::fs::create_dir_all(&d).unwrap();
            if prompt == "clothing-01" && seed == 0 {
                std::fs::write(d.join("0.png"), b"not an image").unwrap();
            } else {
                std::fs::copy(
                    refs.join("out-of-train/p3/ref.png"),
                    d.join(format!("{seed}.png")),
                )
                .unwrap();
            }
        }
    }
    std::fs::copy(
        refs.join("in-train/p1/ref.png"),
        partial.join("p1/clothing-01/7.png"),
    )
    .unwrap();
    std::fs::write(partial.join("notes.txt"), "seeds from our script").unwrap();
    let strict = idforge()
        .args(["bench", "import", "--strict"])
        .arg(&partial)
        .arg("--bench")
        .arg(&bench)
        .output()
        .unwrap();
    assert!(!strict.status.success());
    let report = text(&strict);
    assert!(
        report.contains("11 of 12 expected images found, 1 missing, 1 unreadable, 2 extra"),
        "{report}"
    );
    assert!(
        report.contains("p1/style-01/1.png")
            && report.contains("p1/clothing-01/7.png")
            && report.contains("notes.txt"),
        "{report}"
    );
    assert!(!bench.join("generations/partial").exists());
    ok(idforge()
        .args(["bench", "import"])
        .arg(&partial)
        .arg("--bench")
        .arg(&bench));

    // Score with face-api only: the CLIP, DINO and Inception columns are absent.
    ok(idforge().args(["bench", "score"]).arg(&bench).args([
        "--resamples",
        "200",
        "--set-resamples",
        "20",
    ]));
    let lb_path = bench.join("leaderboard/leaderboard.json");
    let lb: Value = serde_json::from_str(&std::fs::read_to_string(&lb_path).unwrap()).unwrap();
    assert_eq!(lb["schema_version"], 3);
    assert!(lb["arena"].is_null(), "no votes, no arena: {}", lb["arena"]);
    assert_eq!(lb["protocol"]["name"], "test-v1");
    let keys: Vec<&str> = field_of(&lb, "metrics", "key");
    assert_eq!(keys, ["face_sim", "face_failure", "face_div"]);
    let methods: Vec<&str> = field_of(&lb, "methods", "name");
    assert_eq!(
        methods,
        [
            "copy-reference",
            "flipped-reference",
            "other-identity",
            "partial"
        ]
    );

    // Known properties: the reference itself scores 1, the mirrored person stays close, the
    // wrong person falls, a face-less image scores 0 and counts as a face failure.
    let fs = |set: &str, m: &str| metric(&lb, set, m, "face_sim").unwrap();
    assert!((fs("in-train", "copy-reference") - 1.0).abs() < 1e-5);
    assert!(
        fs("in-train", "flipped-reference") > 0.9,
        "{}",
        fs("in-train", "flipped-reference")
    );
    assert!(fs("in-train", "other-identity") < fs("in-train", "flipped-reference") - 0.05);
    assert_eq!(
        metric(&lb, "in-train", "copy-reference", "face_failure"),
        Some(0.0)
    );
    // in-train partial: p1 has 3 scored images (faces), p2 4 face-less ones.
    let fail = metric(&lb, "in-train", "partial", "face_failure").unwrap();
    assert!((fail - 400.0 / 7.0).abs() < 1e-9, "{fail}");
    let partial_fs = fs("in-train", "partial");
    assert!((partial_fs - 3.0 / 7.0).abs() < 1e-4, "{partial_fs}");
    // Face-Div: identical images across seeds are not diverse.
    assert!(
        metric(&lb, "in-train", "copy-reference", "face_div")
            .unwrap()
            .abs()
            < 1e-6
    );
    let set = lb["sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "out-of-train")
        .unwrap();
    let row = set["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["method"] == "partial")
        .unwrap();
    assert_eq!(
        (row["expected"].as_u64(), row["scored"].as_u64()),
        (Some(4), Some(3))
    );
    let e = &row["metrics"]["face_sim"];
    assert!(
        e["lo"].as_f64().unwrap() <= e["value"].as_f64().unwrap()
            && e["value"].as_f64().unwrap() <= e["hi"].as_f64().unwrap()
    );
    let partial_entry = lb["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "partial")
        .unwrap();
    assert_eq!(partial_entry["cost"]["seconds_per_image"], 2.5);
    assert_eq!(partial_entry["trigger"], "img");
    for f in ["LEADERBOARD.md", "index.html"] {
        assert!(bench.join("leaderboard").join(f).is_file(), "{f}");
    }
    let md = std::fs::read_to_string(bench.join("leaderboard/LEADERBOARD.md")).unwrap();
    assert!(md.contains("partial") && md.contains("Face-Sim"), "{md}");
    let grids = lb["grids"].as_array().unwrap();
    assert!(!grids.is_empty());
    for g in grids {
        assert!(
            bench
                .join("leaderboard")
                .join(g["reference"].as_str().unwrap())
                .is_file()
        );
    }

    // The scores table keeps every expected row, with its status.
    let scores =
        idforge_core::schema::ScoresTable::read(&bench.join("scores/partial.parquet")).unwrap();
    assert_eq!(scores.rows.len(), 12);
    let status = |s| scores.rows.iter().filter(|r| r.status == Some(s)).count();
    use idforge_core::schema::ScoreStatus;
    assert_eq!(
        (
            status(ScoreStatus::Ok),
            status(ScoreStatus::Missing),
            status(ScoreStatus::Unreadable)
        ),
        (10, 1, 1)
    );

    // The other columns, from the tiny random-weight fixtures of the parity tests (their values
    // mean nothing; the columns must appear and be finite).
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tests/fixtures");
    let clip = root.join("tiny-clip");
    std::fs::create_dir_all(&clip).unwrap();
    for (from, to) in [
        ("clip/tiny_hf_gelu.safetensors", "model.safetensors"),
        ("clip/tiny_hf_gelu.config.json", "config.json"),
        ("clip/tiny_tokenizer.json", "tokenizer.json"),
    ] {
        std::fs::copy(fixtures.join(from), clip.join(to)).unwrap();
    }
    ok(idforge()
        .args(["bench", "score"])
        .arg(&bench)
        .args([
            "--resamples",
            "100",
            "--set-resamples",
            "10",
            "--method",
            "partial",
        ])
        .arg("--clip")
        .arg(&clip)
        .arg("--dino")
        .arg(fixtures.join("dino/vit"))
        .arg("--inception")
        .arg(fixtures.join("inception/fid_inception_w16.pth")));
    let lb: Value = serde_json::from_str(&std::fs::read_to_string(&lb_path).unwrap()).unwrap();
    let keys: Vec<&str> = field_of(&lb, "metrics", "key");
    assert_eq!(
        keys,
        [
            "face_sim",
            "face_failure",
            "clip_t",
            "clip_i",
            "dino",
            "face_div",
            "fid",
            "kid",
            "is",
            "cmmd"
        ]
    );
    assert_eq!(lb["models"]["clip"], "tiny-clip");
    // Methods scored with other networks are left out, never mixed in.
    let methods: Vec<&str> = field_of(&lb, "methods", "name");
    assert_eq!(methods, ["copy-reference", "partial"]);
    for key in ["clip_t", "clip_i", "dino", "fid", "kid", "is", "cmmd"] {
        let v = metric(&lb, "in-train", "partial", key).unwrap_or_else(|| panic!("{key}"));
        assert!(v.is_finite(), "{key} = {v}");
    }
    assert!((metric(&lb, "in-train", "copy-reference", "clip_i").unwrap() - 1.0).abs() < 1e-5);
    assert!((metric(&lb, "in-train", "copy-reference", "dino").unwrap() - 1.0).abs() < 1e-5);
    let t = metric(&lb, "in-train", "partial", "clip_t").unwrap();
    assert!((0.0..=100.0).contains(&t));

    // The leaderboard alone, without networks.
    std::fs::remove_file(&lb_path).unwrap();
    ok(idforge().args(["bench", "leaderboard"]).arg(&bench));
    assert!(lb_path.is_file());
}
