//! What the state and the committed files promise across runs: a committed
//! file is never replaced behind the user's back, a changed selection does not
//! silently change what "since the last run" means, and a crash at any instant
//! of a state save never blocks the next run.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;
use expense_sync::simulator::Simulator;

const BIN: &str = env!("CARGO_BIN_EXE_expense-sync");

/// A pipeline writing (id, updated_at, amount) to one CSV sink.
struct Spec<'a> {
    name: &'a str,
    path: &'a str,
    incremental: bool,
    sink_extra: &'a str,
    source_extra: &'a str,
    pipeline_extra: &'a str,
    extra_columns: &'a str,
}

impl<'a> Spec<'a> {
    fn new(name: &'a str, path: &'a str) -> Self {
        Self {
            name,
            path,
            incremental: true,
            sink_extra: "",
            source_extra: "",
            pipeline_extra: "",
            extra_columns: "",
        }
    }

    fn text(&self, sim: &Simulator) -> String {
        format!(
            r#"
[pipeline]
name = "{name}"
{pipeline_extra}

[connection]
accounts_url = "{accounts}"
client_id = {{ env = "FYLE_CLIENT_ID" }}
client_secret = {{ env = "FYLE_CLIENT_SECRET" }}
refresh_token = {{ env = "FYLE_REFRESH_TOKEN" }}

[http]
requests_per_second = 1000
initial_backoff = "20ms"

[source]
type = "fyle"
resource = "expenses"
safety_lag = "0s"
{source_extra}

{incremental}

[[columns]]
name = "id"
path = "id"

[[columns]]
name = "updated_at"
path = "updated_at"

[[columns]]
name = "amount"
path = "amount"
type = "decimal"
{extra_columns}

[[sinks]]
type = "csv"
path = "{path}"
{sink_extra}
"#,
            name = self.name,
            pipeline_extra = self.pipeline_extra,
            accounts = sim.accounts_url(),
            source_extra = self.source_extra,
            incremental = if self.incremental {
                "[incremental]\nlookback = \"2s\""
            } else {
                ""
            },
            extra_columns = self.extra_columns,
            path = self.path,
            sink_extra = self.sink_extra,
        )
    }

    fn write(&self, sim: &Simulator, dir: &Path) -> PathBuf {
        let file = dir.join(format!("{}.toml", self.name));
        std::fs::write(&file, self.text(sim)).unwrap();
        file
    }
}

async fn run_bin(
    pipeline: &Path,
    sim: &Simulator,
    extra_args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let c = sim.credentials();
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("run")
        .arg(pipeline)
        .args(extra_args)
        .current_dir(pipeline.parent().unwrap())
        .env("FYLE_CLIENT_ID", &c.client_id)
        .env("FYLE_CLIENT_SECRET", &c.client_secret)
        .env("FYLE_REFRESH_TOKEN", &c.refresh_token)
        .env_remove("EXPENSE_SYNC_LOG")
        .env_remove("EXPENSE_SYNC_FAILPOINT")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

fn summary(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}): {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every (id, updated_at) row of every committed CSV below `dir`, with its count.
fn committed_versions(dir: &Path) -> BTreeMap<(String, String), usize> {
    let mut seen = BTreeMap::new();
    for f in files_in(dir) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".csv") {
            continue;
        }
        assert!(
            !name.starts_with('.'),
            "a temporary file sits at a final path: {name}"
        );
        let (_, rows) = read_csv(&f);
        for r in rows {
            *seen.entry((r[0].clone(), r[1].clone())).or_insert(0) += 1;
        }
    }
    seen
}

fn assert_exactly_once(dir: &Path, sim: &Simulator) {
    let seen = committed_versions(dir);
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "versions delivered twice: {doubled:?}");
    let truth: std::collections::BTreeSet<(String, String)> = sim
        .ground_truth("expenses")
        .into_iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["updated_at"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let missing: Vec<_> = truth.iter().filter(|v| !seen.contains_key(*v)).collect();
    assert!(
        missing.is_empty(),
        "{} current versions never delivered, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    files_in(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect()
}

// ---- A committed file is never overwritten -------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_second_name_without_run_id_is_a_config_error_before_anything_is_written() {
    let sim = simulator(50, 71, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = Spec::new("persecond", "{pipeline}-{window_end}.csv").write(&sim, dir.path());
    let o = run_bin(&file, &sim, &[], &[]).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("sinks[0].path") && err.contains("{run_id}") && err.contains("overwrite"),
        "the error names the key and both ways out: {err}"
    );
    assert!(committed_versions(dir.path()).is_empty());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_incremental_runs_keep_every_delivered_record_on_disk() {
    let sim = simulator(300, 72, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = Spec::new("quick", "{pipeline}-{window_end}-{run_id}.csv").write(&sim, dir.path());
    let mut delivered = 0;
    for _ in 0..4 {
        let o = run_bin(&file, &sim, &[], &[]).await;
        let s = summary(&o);
        assert!(o.status.success(), "{s}");
        delivered += s["records_out"].as_u64().unwrap();
        sim.mutate(7);
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let o = run_bin(&file, &sim, &[], &[]).await;
    delivered += summary(&o)["records_out"].as_u64().unwrap();
    let on_disk: usize = committed_versions(dir.path()).values().sum();
    assert_eq!(
        on_disk as u64, delivered,
        "every reported record is on disk"
    );
    assert_exactly_once(dir.path(), &sim);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_file_name_is_not_replaced_by_the_next_run() {
    let sim = simulator(60, 73, None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = Spec::new("fixed", "{pipeline}.csv");
    spec.incremental = false;
    let file = spec.write(&sim, dir.path());
    let o = run_bin(&file, &sim, &[], &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = dir.path().join("out/fixed.csv");
    let first = std::fs::read(&csv).unwrap();

    sim.mutate(5);
    let o = run_bin(&file, &sim, &[], &[]).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("fixed.csv")
            && err.contains("already exists")
            && err.contains("{run_id}")
            && err.contains("overwrite = true"),
        "{err}"
    );
    assert_eq!(std::fs::read(&csv).unwrap(), first, "the file is untouched");
    assert!(temp_files(dir.path()).is_empty());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_true_replaces_a_fixed_file_on_every_run() {
    let sim = simulator(60, 74, None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = Spec::new("latest", "{pipeline}.csv");
    spec.incremental = false;
    spec.sink_extra = "overwrite = true";
    let file = spec.write(&sim, dir.path());
    for _ in 0..2 {
        let o = run_bin(&file, &sim, &[], &[]).await;
        assert!(o.status.success(), "{}", stderr(&o));
        sim.mutate(5);
    }
    let o = run_bin(&file, &sim, &[], &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    // The one file is the latest full export: every current version once.
    assert_exactly_once(dir.path(), &sim);
    assert_eq!(
        committed_versions(dir.path()).len(),
        sim.ground_truth("expenses").len()
    );
    sim.shutdown().await;
}

// ---- Selection fingerprint ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_selection_stops_the_run_and_explains_the_choices() {
    let sim = simulator(200, 75, None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = Spec::new("selection", "{pipeline}-{run_id}.csv");
    spec.source_extra = "[source.filters]\nstate = \"eq.PAID\"";
    let file = spec.write(&sim, dir.path());
    let o = run_bin(&file, &sim, &[], &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let state_path = dir.path().join("out/selection.state.json");
    let before = std::fs::read_to_string(&state_path).unwrap();

    // Widen the filter and add a column.
    spec.source_extra = "[source.filters]\nstate = \"in.(APPROVED,PAID)\"";
    spec.extra_columns = "\n[[columns]]\nname = \"currency\"\npath = \"currency\"\n";
    let file = spec.write(&sim, dir.path());
    let files_before = files_in(dir.path());
    let o = run_bin(&file, &sim, &[], &[]).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for needle in [
        "source filters",
        "columns",
        "--full-refresh",
        "--since",
        "--accept-selection-change",
    ] {
        assert!(err.contains(needle), "`{needle}` missing from: {err}");
    }
    assert_eq!(std::fs::read_to_string(&state_path).unwrap(), before);
    let lock = |p: &PathBuf| p.to_string_lossy().ends_with(".lock");
    assert_eq!(
        files_in(dir.path())
            .into_iter()
            .filter(|p| !lock(p))
            .collect::<Vec<_>>(),
        files_before
            .into_iter()
            .filter(|p| !lock(p))
            .collect::<Vec<_>>(),
        "nothing written"
    );

    // Accepting carries on from the watermark and records the new selection.
    let o = run_bin(&file, &sim, &["--accept-selection-change"], &[]).await;
    let s = summary(&o);
    assert!(o.status.success(), "{s}");
    assert_eq!(s["kind"], "incremental");
    let o = run_bin(&file, &sim, &[], &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));

    // A full refresh is the other way to adopt a new selection.
    spec.source_extra = "";
    let file = spec.write(&sim, dir.path());
    assert_eq!(run_bin(&file, &sim, &[], &[]).await.status.code(), Some(2));
    let o = run_bin(&file, &sim, &["--full-refresh"], &[]).await;
    let s = summary(&o);
    assert!(o.status.success(), "{s}");
    assert_eq!(s["records_out"], 200);
    let o = run_bin(&file, &sim, &[], &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_without_a_fingerprint_is_accepted_and_gets_one() {
    let sim = simulator(100, 76, None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = Spec::new("oldstate", "{pipeline}-{run_id}.csv");
    let file = spec.write(&sim, dir.path());
    let o = run_bin(&file, &sim, &[], &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    // What an earlier expense-sync wrote: no `selection`.
    let state_path = dir.path().join("out/oldstate.state.json");
    let mut st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    assert!(st.as_object_mut().unwrap().remove("selection").is_some());
    std::fs::write(&state_path, serde_json::to_string_pretty(&st).unwrap()).unwrap();

    spec.source_extra = "[source.filters]\nstate = \"eq.PAID\"";
    let file = spec.write(&sim, dir.path());
    let o = run_bin(&file, &sim, &[], &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    assert!(st["selection"].is_object(), "{st}");

    spec.source_extra = "";
    let file = spec.write(&sim, dir.path());
    assert_eq!(run_bin(&file, &sim, &[], &[]).await.status.code(), Some(2));
    sim.shutdown().await;
}

// ---- A kill during a state save ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_at_each_step_of_a_state_save_never_blocks_the_next_run() {
    // Each commit saves the state twice (the pending plan, then the applied
    // plan); `#2` aborts in the second save.
    let mut points = Vec::new();
    for step in [
        "state-save-created",
        "state-save-written",
        "state-save-synced",
        "state-save-renamed",
    ] {
        points.push(step.to_string());
        points.push(format!("{step}#2"));
    }
    for point in points {
        let sim = simulator(150, 77, None).await;
        let dir = tempfile::tempdir().unwrap();
        let mut spec = Spec::new("savekill", "{pipeline}-{run_id}.csv");
        // The state outside the output directory: nothing sweeps it by accident.
        spec.pipeline_extra = "state_path = \"state/savekill.json\"";
        spec.source_extra = "page_size = 40";
        let file = spec.write(&sim, dir.path());
        let o = run_bin(&file, &sim, &[], &[("EXPENSE_SYNC_FAILPOINT", &point)]).await;
        assert!(
            o.status.code().is_none() || !o.status.success(),
            "{point}: the run should have crashed: {}",
            stderr(&o)
        );
        sim.mutate(10);
        tokio::time::sleep(Duration::from_millis(20)).await;
        for attempt in 0..2 {
            let o = run_bin(&file, &sim, &[], &[]).await;
            assert!(o.status.success(), "{point} run {attempt}: {}", stderr(&o));
        }
        assert_exactly_once(dir.path(), &sim);
        assert!(
            temp_files(dir.path()).is_empty(),
            "{point}: {:?}",
            temp_files(dir.path())
        );
        sim.shutdown().await;
    }
}
