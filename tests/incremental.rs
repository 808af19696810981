//! Incremental sync: windows, de-duplication, the lock, state errors,
//! backfills, and exactly-once delivery across crashes at any instant.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;
use expense_sync::simulator::{Faults, Simulator};
use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_expense-sync");

async fn run_bin(
    pipeline: &Path,
    sim: &Simulator,
    extra_args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    spawn_bin(pipeline, sim, extra_args, env)
        .wait_with_output()
        .await
        .unwrap()
}

fn spawn_bin(
    pipeline: &Path,
    sim: &Simulator,
    extra_args: &[&str],
    env: &[(&str, &str)],
) -> tokio::process::Child {
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
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn setup(sim: &Simulator, name: &str, extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{name}.toml"));
    std::fs::write(&file, incremental_text(sim, name, extra)).unwrap();
    (dir, file)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_runs_export_only_what_changed() {
    let sim = simulator(800, 31, None).await;
    let (dir, file) = setup(&sim, "b2b", "");
    let o = run_bin(&file, &sim, &[], &[]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(summary(&o)["records_out"], 800);

    tokio::time::sleep(Duration::from_millis(20)).await;
    sim.mutate(37);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let o = run_bin(&file, &sim, &[], &[]).await;
    let s = summary(&o);
    assert!(o.status.success(), "{s}");
    assert_eq!(s["records_out"], 37, "only the changed records: {s}");

    tokio::time::sleep(Duration::from_millis(20)).await;
    let o = run_bin(&file, &sim, &[], &[]).await;
    assert_eq!(summary(&o)["records_out"], 0, "nothing changed since");
    assert_exactly_once(dir.path(), &sim);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_while_paging_lose_and_double_nothing_across_two_runs() {
    let sim = simulator(3000, 32, None).await;
    // A high rate of change: 400 records a second get new versions while we page.
    sim.set_faults(Faults {
        latency: Duration::from_millis(15),
        mutations_per_sec: 400,
        ..Faults::default()
    });
    let (dir, file) = setup(&sim, "churn", "page_size = 50\nconcurrency = 3");
    let o = run_bin(&file, &sim, &[], &[]).await;
    let first = summary(&o);
    assert!(o.status.success(), "{first}");
    sim.set_faults(Faults::default());

    // Run 1 delivered versions that were current at its upper bound (records
    // changed mid-run before the pager reached them belong to run 2).
    let upper: chrono::DateTime<chrono::Utc> =
        first["window_to"].as_str().unwrap().parse().unwrap();
    let as_of: BTreeSet<(String, String)> = sim
        .expenses_as_of(upper)
        .into_iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["updated_at"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let run1 = committed_versions(&dir.path().join("out"));
    let stray: Vec<_> = run1.keys().filter(|v| !as_of.contains(*v)).collect();
    assert!(
        stray.is_empty(),
        "run 1 delivered versions that were not current at its upper bound: {stray:?}"
    );
    let changed_during_run = truth_versions(&sim).difference(&as_of).count();
    assert!(
        changed_during_run > 50,
        "only {changed_during_run} records changed while paging"
    );

    tokio::time::sleep(Duration::from_millis(20)).await;
    let o = run_bin(&file, &sim, &[], &[]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_exactly_once(dir.path(), &sim);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_records_simply_stop_appearing() {
    let sim = simulator(500, 38, None).await;
    let (dir, file) = setup(&sim, "deleted", "");
    assert!(run_bin(&file, &sim, &[], &[]).await.status.success());
    let gone = sim.delete(40);
    sim.mutate(30);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let o = run_bin(&file, &sim, &[], &[]).await;
    let s = summary(&o);
    assert!(o.status.success(), "{s}");
    assert_eq!(s["records_out"], 30);
    assert_exactly_once(dir.path(), &sim);
    let second: Vec<_> = committed_versions(&dir.path().join("out"))
        .into_keys()
        .collect();
    assert!(
        gone.iter()
            .all(|g| second.iter().filter(|(id, _)| id == g).count() <= 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_while_one_is_in_progress_is_refused() {
    let sim = simulator(2000, 33, None).await;
    sim.set_faults(Faults {
        latency: Duration::from_millis(200),
        ..Faults::default()
    });
    let (_dir, file) = setup(&sim, "overlap", "page_size = 50\nconcurrency = 1");
    let mut first = spawn_bin(&file, &sim, &[], &[]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let o = run_bin(&file, &sim, &[], &[]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(7), "{err}");
    assert!(
        err.contains("another run of pipeline `overlap` is in progress"),
        "{err}"
    );
    first.kill().await.unwrap();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_an_error_and_nothing_is_touched() {
    let sim = simulator(100, 34, None).await;
    let (dir, file) = setup(&sim, "corrupt", "");
    let state = dir.path().join("out/corrupt.state.json");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    std::fs::write(
        &state,
        "{\"version\": 1, \"pipeline\": \"corrupt\", \"watermark\": \"yesterday-ish\"",
    )
    .unwrap();
    let o = run_bin(&file, &sim, &[], &[]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(8), "{err}");
    assert!(
        err.contains("corrupt.state.json") && err.contains("not a valid state file"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        "{\"version\": 1, \"pipeline\": \"corrupt\", \"watermark\": \"yesterday-ish\""
    );
    let others: Vec<_> = files_in(&dir.path().join("out"))
        .into_iter()
        .filter(|p| p != &state && !p.to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(others.is_empty(), "{others:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_leaves_the_incremental_state_alone() {
    let sim = simulator(600, 35, None).await;
    let (dir, file) = setup(&sim, "backfill", "");
    let o = run_bin(&file, &sim, &[], &[]).await;
    assert!(o.status.success());
    let state_path = dir.path().join("out/backfill.state.json");
    let before: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();

    let truth = sim.ground_truth("expenses");
    let mut times: Vec<_> = truth
        .iter()
        .map(|r| r["updated_at"].as_str().unwrap().to_string())
        .collect();
    times.sort();
    let (since, until) = (&times[100], &times[300]);
    let o = run_bin(&file, &sim, &["--since", since, "--until", until], &[]).await;
    let s = summary(&o);
    assert!(o.status.success(), "{s}");
    assert_eq!(s["kind"], "backfill");
    let expected = truth
        .iter()
        .filter(|r| {
            let t =
                chrono::DateTime::parse_from_rfc3339(r["updated_at"].as_str().unwrap()).unwrap();
            t >= chrono::DateTime::parse_from_rfc3339(since).unwrap()
                && t < chrono::DateTime::parse_from_rfc3339(until).unwrap()
        })
        .count();
    assert_eq!(s["records_out"].as_u64().unwrap() as usize, expected);

    let after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    assert_eq!(before["watermark"], after["watermark"]);
    assert_eq!(before["boundary"], after["boundary"]);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_each_step_of_the_commit_is_recovered_exactly_once() {
    for point in [
        "before-commit",
        "after-pending",
        "after-rename",
        "after-commit",
    ] {
        let sim = simulator(300, 36, None).await;
        let (dir, file) = setup(&sim, "failpoint", "page_size = 40");
        let o = run_bin(&file, &sim, &[], &[("EXPENSE_SYNC_FAILPOINT", point)]).await;
        assert!(!o.status.success(), "{point}: the run should have crashed");
        sim.mutate(10);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let o = run_bin(&file, &sim, &[], &[]).await;
        assert!(
            o.status.success(),
            "{point}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let s = summary(&o);
        if matches!(point, "after-pending" | "after-rename") {
            assert!(
                s["recovered_run"].is_string(),
                "{point}: the pending commit is rolled forward: {s}"
            );
        }
        assert_exactly_once(dir.path(), &sim);
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_then_rerun_is_exactly_once() {
    let sim = simulator(1500, 37, None).await;
    sim.set_faults(Faults {
        latency: Duration::from_millis(5),
        ..Faults::default()
    });
    let (dir, file) = setup(&sim, "killed", "page_size = 25\nconcurrency = 2");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut interrupted = 0;
    for i in 0..20 {
        // New versions every iteration, so every run has real work to interrupt.
        sim.mutate(60);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut child = spawn_bin(&file, &sim, &[], &[]);
        let delay = rng.random_range(0..400);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let _ = child.start_kill(); // SIGKILL
        let status = child.wait().await.unwrap();
        if status.code().is_none() {
            interrupted += 1;
        }
        // Every few iterations also kill the rerun, so crashes stack up.
        if i % 4 == 3 {
            let mut again = spawn_bin(&file, &sim, &[], &[]);
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
            let _ = again.start_kill();
            let _ = again.wait().await;
        }
    }
    // Most kills must land while a run is under way, or the test proves little.
    assert!(
        interrupted >= 12,
        "only {interrupted} of 20 runs were killed mid-run"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    let o = run_bin(&file, &sim, &[], &[]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_exactly_once(dir.path(), &sim);
    let leftovers: Vec<_> = files_in(dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_refresh_exports_everything_again_and_resets_the_watermark() {
    let sim = simulator(400, 39, None).await;
    let (_dir, file) = setup(&sim, "refresh", "");
    let first = summary(&run_bin(&file, &sim, &[], &[]).await);
    assert_eq!(first["records_out"], 400);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let o = run_bin(&file, &sim, &["--full-refresh"], &[]).await;
    let s = summary(&o);
    assert!(o.status.success(), "{s}");
    assert_eq!(s["kind"], "full_refresh");
    assert_eq!(s["records_out"], 400, "everything again: {s}");
    assert!(s["watermark"].as_str().unwrap() > first["watermark"].as_str().unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        summary(&run_bin(&file, &sim, &[], &[]).await)["records_out"],
        0
    );
    sim.shutdown().await;
}
