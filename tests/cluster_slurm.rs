//! The stages under a real scheduler: a one-node Slurm cluster (slurmctld + slurmd from Debian's
//! slurm-wlm, started by `tools/slurm-test-cluster`) runs the README's array script,
//! `datasets/cluster/idforge-array.sbatch`, for ingest (against the loopback server), curate
//! and caption, each a 4-task array after the previous one. The merged tables must equal a
//! single process's row for row. Then a task cancelled with `scancel` mid-shard and
//! resubmitted alone (`sbatch --array=2`) must redo its shard only.
//!
//! `make test` installs the packages (`tools/setup-test-deps`); the test runs as root, as CI does.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use idforge_core::run::{RunDir, Shard};
use idforge_core::schema::{CaptionsTable, FacesTable, ImagesTable};
use idforge_ingest::testkit::FixtureServer;

use common::{sample_photos_dir, text};

const SHARDS: usize = 4;
const SCRIPT: &str = "datasets/cluster/idforge-array.sbatch";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running test cluster; stopped when dropped.
struct Cluster {
    dir: PathBuf,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let out = Command::new(root().join("tools/slurm-test-cluster"))
            .arg("start")
            .arg(dir)
            .arg(free_port().to_string())
            .arg(free_port().to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the test cluster did not start (run tools/setup-test-deps):\n{}",
            text(&out)
        );
        Cluster {
            dir: dir.to_path_buf(),
        }
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("slurm.conf")
    }

    /// A Slurm client command on this cluster, with the environment a user's job would have.
    fn client(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", self.conf())
            .env("IDFORGE", env!("CARGO_BIN_EXE_idforge"))
            .env("IDFORGE_SHARDS", SHARDS.to_string());
        c
    }

    /// `sbatch --parsable ARGS` → the job id.
    fn sbatch(&self, args: &[&str], workdir: &Path) -> String {
        let out = self
            .client("sbatch")
            .arg("--parsable")
            .arg(format!("--chdir={}", workdir.display()))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "sbatch {args:?}:\n{}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(';')
            .next()
            .unwrap()
            .to_string()
    }

    /// Waits until no task of `job` is queued or running.
    fn wait(&self, job: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            let out = self
                .client("squeue")
                .args(["-h", "-j", job, "-o", "%i %T"])
                .output()
                .unwrap();
            let queued = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if queued.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "job {job} still queued after {limit:?}: {queued}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The job logs, for failure messages.
    fn logs(&self) -> String {
        let mut all = String::new();
        for dir in [self.dir.join("work"), self.dir.join("log")] {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let body = std::fs::read_to_string(e.path()).unwrap_or_default();
                    let tail: Vec<&str> = body.lines().rev().take(15).collect();
                    all += &format!("--- {}\n", e.path().display());
                    for l in tail.into_iter().rev() {
                        all += l;
                        all += "\n";
                    }
                }
            }
        }
        all
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(root().join("tools/slurm-test-cluster"))
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// The six face-api sample photographs, served on loopback.
fn server() -> FixtureServer {
    let photos = sample_photos_dir();
    let images = (1..=6)
        .map(|i| {
            let name = format!("sample{i}.jpg");
            let bytes = std::fs::read(photos.join(&name)).unwrap();
            (name, bytes)
        })
        .collect();
    FixtureServer::start(images).unwrap()
}

/// A recipe over `urls` (one identity per photo: they show different people) with the
/// demo's curation and offline captioning settings.
fn write_recipe(dir: &Path, name: &str, urls: &[String]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut csv = String::from("url,identity\n");
    for (i, u) in urls.iter().enumerate() {
        csv += &format!("{u},person{i}\n");
    }
    std::fs::write(dir.join(format!("{name}.csv")), csv).unwrap();
    let recipe = dir.join(format!("{name}.toml"));
    std::fs::write(
        &recipe,
        format!(
            r#"name = "{name}"

[ingest.fetch]
retries = 1
backoff_s = 0.05
max_retry_after_s = 300.0

[[ingest.sources]]
kind = "urls"
path = "{name}.csv"

[curate]
threads = 1

[curate.faces]
min_face_px = 150

[curate.identity]
min_images = 1

[caption]
captioner = "attributes"
trigger = "img"
"#
        ),
    )
    .unwrap();
    recipe
}

/// Runs `idforge STAGE --recipe R --runs-dir D` in this process's environment (no shard
/// variables: every shard here).
fn single(stage: &str, recipe: &Path, runs: &Path) {
    let out = common::idforge()
        .args([stage, "--recipe"])
        .arg(recipe)
        .arg("--runs-dir")
        .arg(runs)
        .env_remove("IDFORGE_SHARDS")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .unwrap();
    assert!(out.status.success(), "{stage}:\n{}", text(&out));
}

fn images(run: &RunDir) -> ImagesTable {
    let mut t = ImagesTable::read(&run.table::<ImagesTable>()).unwrap();
    for r in &mut t.rows {
        r.fetched_at = None;
    }
    t
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn stages_as_slurm_arrays_equal_one_process_and_a_cancelled_task_redoes_only_its_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(&tmp.path().join("slurm"));
    let work = tmp.path().join("slurm/work");
    std::fs::create_dir_all(&work).unwrap();
    let script = root().join(SCRIPT);
    let script = script.to_str().unwrap();
    let srv = server();

    // 1. ingest → curate → caption as three arrays, each after the previous one.
    let urls: Vec<String> = (1..=6)
        .map(|i| srv.url(&format!("/img/sample{i}.jpg")))
        .collect();
    let recipe = write_recipe(&tmp.path().join("recipes"), "photos", &urls);
    let recipe_s = recipe.to_str().unwrap();
    let cluster_runs = tmp.path().join("cluster-runs");
    let runs_s = cluster_runs.to_str().unwrap();
    let array = format!("--array=0-{}", SHARDS - 1);
    let a = cluster.sbatch(
        &[&array, script, "ingest", recipe_s, "--runs-dir", runs_s],
        &work,
    );
    let after_a = format!("--dependency=afterok:{a}");
    let b = cluster.sbatch(
        &[
            &array,
            &after_a,
            "--kill-on-invalid-dep=yes",
            script,
            "curate",
            recipe_s,
            "--runs-dir",
            runs_s,
        ],
        &work,
    );
    let after_b = format!("--dependency=afterok:{b}");
    let c = cluster.sbatch(
        &[
            &array,
            &after_b,
            "--kill-on-invalid-dep=yes",
            script,
            "caption",
            recipe_s,
            "--runs-dir",
            runs_s,
        ],
        &work,
    );
    cluster.wait(&c, Duration::from_secs(600));
    let on_cluster = RunDir::new(&cluster_runs, "photos");
    for stage in ["ingest", "curate", "caption"] {
        let dir = on_cluster.stage(stage);
        assert!(
            dir.is_final(),
            "{stage} was not merged on the cluster:\n{}",
            cluster.logs()
        );
        for index in 0..SHARDS {
            assert!(dir.is_complete(Shard {
                index,
                count: SHARDS
            }));
        }
    }

    let single_runs = tmp.path().join("single-runs");
    for stage in ["ingest", "curate", "caption"] {
        single(stage, &recipe, &single_runs);
    }
    let alone = RunDir::new(&single_runs, "photos");
    let (i_cluster, i_alone) = (images(&on_cluster), images(&alone));
    assert_eq!(i_cluster.rows.len(), 6);
    assert_eq!(i_cluster, i_alone, "images: 4 array tasks = one process");
    let faces = |r: &RunDir| FacesTable::read(&r.table::<FacesTable>()).unwrap();
    let (f_cluster, f_alone) = (faces(&on_cluster), faces(&alone));
    assert!(!f_cluster.rows.is_empty());
    assert_eq!(f_cluster, f_alone, "faces: 4 array tasks = one process");
    let captions = |r: &RunDir| CaptionsTable::read(&r.table::<CaptionsTable>()).unwrap();
    let (c_cluster, c_alone) = (captions(&on_cluster), captions(&alone));
    assert!(!c_cluster.rows.is_empty());
    assert_eq!(c_cluster, c_alone, "captions: 4 array tasks = one process");

    // 2. A task cancelled mid-shard, resubmitted alone. Shard 2 of 4 over 6 rows is row 3,
    //    whose first answer is 429 with `Retry-After: 120`: task 2 sleeps there until
    //    cancelled; the resubmitted task finds it served.
    let urls: Vec<String> = (1..=6)
        .map(|i| match i {
            4 => srv.url("/retry/1/120/sample4.jpg"),
            _ => srv.url(&format!("/img/sample{i}.jpg")),
        })
        .collect();
    let recipe = write_recipe(&tmp.path().join("recipes"), "resume", &urls);
    let recipe_s = recipe.to_str().unwrap();
    let job = cluster.sbatch(
        &[&array, script, "ingest", recipe_s, "--runs-dir", runs_s],
        &work,
    );
    let run = RunDir::new(&cluster_runs, "resume");
    let dir = run.stage("ingest");
    let shard = |index| Shard {
        index,
        count: SHARDS,
    };
    let start = Instant::now();
    while ![0, 1, 3].iter().all(|&i| dir.is_complete(shard(i))) {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "shards 0, 1, 3 never finished:\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!dir.is_complete(shard(2)), "task 2 waits on Retry-After");
    let out = cluster
        .client("scancel")
        .arg(format!("{job}_2"))
        .output()
        .unwrap();
    assert!(out.status.success(), "scancel: {}", text(&out));
    cluster.wait(&job, Duration::from_secs(60));
    assert!(!dir.is_complete(shard(2)) && !dir.is_final());
    let stats = |i| dir.path().join(format!("stats/{}.json", shard(i).label()));
    let before: Vec<SystemTime> = [0, 1, 3].iter().map(|&i| mtime(&stats(i))).collect();
    let hits_before = srv.hits("/img/sample1.jpg");

    let again = cluster.sbatch(
        &[
            "--array=2",
            script,
            "ingest",
            recipe_s,
            "--runs-dir",
            runs_s,
        ],
        &work,
    );
    cluster.wait(&again, Duration::from_secs(300));
    assert!(
        dir.is_final(),
        "the resubmitted task merged:\n{}",
        cluster.logs()
    );
    let after: Vec<SystemTime> = [0, 1, 3].iter().map(|&i| mtime(&stats(i))).collect();
    assert_eq!(before, after, "shards 0, 1, 3 were not run again");
    assert_eq!(
        srv.hits("/img/sample1.jpg"),
        hits_before,
        "no other shard's image was fetched again"
    );
    let table = images(&run);
    assert_eq!(table.rows.len(), 6);
    let statuses: Vec<String> = table.rows.iter().map(|r| r.status.to_string()).collect();
    assert_eq!(
        statuses.iter().filter(|s| *s == "ok").count(),
        6,
        "{statuses:?}"
    );
}

/// The README shows the very script this test submits, and its Kubernetes job sets the
/// variables the next test runs the stages with.
#[test]
fn the_readme_shows_the_script_the_cluster_test_runs() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let script = std::fs::read_to_string(root().join(SCRIPT)).unwrap();
    assert!(
        readme.contains(&format!("```bash\n{script}```")),
        "README.md's Cluster section must show {SCRIPT} verbatim"
    );
    for needle in [
        "completionMode: Indexed",
        "name: IDFORGE_SHARDS",
        "JOB_COMPLETION_INDEX",
    ] {
        assert!(
            readme.contains(needle),
            "README's indexed job lacks {needle}"
        );
    }
}

/// A Kubernetes indexed job's pods: `JOB_COMPLETION_INDEX` of `IDFORGE_SHARDS`, all at once.
#[test]
fn kubernetes_indexed_job_variables_give_one_process_s_table() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server();
    let urls: Vec<String> = (1..=6)
        .map(|i| srv.url(&format!("/img/sample{i}.jpg")))
        .collect();
    let recipe = write_recipe(tmp.path(), "k8s", &urls);
    let pods: Vec<_> = (0..SHARDS)
        .map(|i| {
            common::idforge()
                .args(["ingest", "--recipe"])
                .arg(&recipe)
                .arg("--runs-dir")
                .arg(tmp.path().join("pods"))
                .env("JOB_COMPLETION_INDEX", i.to_string())
                .env("IDFORGE_SHARDS", SHARDS.to_string())
                .env_remove("SLURM_ARRAY_TASK_ID")
                .spawn()
                .unwrap()
        })
        .collect();
    for mut p in pods {
        assert!(p.wait().unwrap().success());
    }
    single("ingest", &recipe, &tmp.path().join("single"));
    let pods = RunDir::new(tmp.path().join("pods"), "k8s");
    assert!(pods.stage("ingest").is_final(), "one pod merged");
    assert_eq!(
        images(&pods),
        images(&RunDir::new(tmp.path().join("single"), "k8s"))
    );
}
