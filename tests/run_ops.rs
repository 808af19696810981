//! Operating a run: stopping it with a signal, looking before leaping
//! (`--dry-run`), samples (`--limit`) and progress output.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::*;
use expense_sync::simulator::{Faults, SimConfig, Simulator};

const BIN: &str = env!("CARGO_BIN_EXE_expense-sync");

fn sim_env(sim: &Simulator) -> Vec<(&'static str, String)> {
    let c = sim.credentials();
    vec![
        ("FYLE_CLIENT_ID", c.client_id.clone()),
        ("FYLE_CLIENT_SECRET", c.client_secret.clone()),
        ("FYLE_REFRESH_TOKEN", c.refresh_token.clone()),
    ]
}

fn command(args: &[&str], cwd: &Path, sim: &Simulator) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("EXPENSE_SYNC_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in sim_env(sim) {
        cmd.env(k, v);
    }
    cmd
}

async fn run_bin(args: &[&str], cwd: &Path, sim: &Simulator) -> Output {
    command(args, cwd, sim).output().await.expect("binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn summary_of(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is the JSON summary ({e}): {}", text(o)))
}

/// Requests for expense pages (not token, cluster or profile requests).
fn data_requests(sim: &Simulator) -> Vec<expense_sync::simulator::LoggedRequest> {
    sim.request_log()
        .into_iter()
        .filter(|r| r.server == "cluster" && r.path.ends_with("/expenses"))
        .collect()
}

/// An incremental pipeline paging 50 records at a time.
fn incremental_pipeline(sim: &Simulator, name: &str) -> String {
    pipeline_text(
        sim,
        name,
        "page_size = 50\n\n[incremental]\nstart = \"2000-01-01T00:00:00Z\"\nlookback = \"0s\"\n",
        "",
    )
    .replace("{pipeline}.csv", "{pipeline}-{run_id}.csv")
    .replace("{pipeline}.parquet", "{pipeline}-{run_id}.parquet")
}

/// The CSV files a run left in `dir`.
fn csv_files(dir: &Path) -> Vec<std::path::PathBuf> {
    files_in(dir)
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "csv"))
        .collect()
}

async fn slow_simulator(expenses: usize) -> Simulator {
    Simulator::start(SimConfig {
        seed: 12,
        expenses,
        rate_limit: None,
        faults: Faults {
            latency: Duration::from_millis(100),
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_exits_130_with_an_interrupted_summary_and_no_files_then_next_run_exports_once()
 {
    let sim = slow_simulator(1500).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sig.toml");
    std::fs::write(&file, incremental_pipeline(&sim, "sig")).unwrap();
    let out = dir.path().join("out");
    let args = ["run", file.to_str().unwrap(), "--output-dir", "out"];
    let child = command(&args, dir.path(), &sim).spawn().unwrap();
    let pid = child.id().expect("child is running");

    // Stop it once it is paging: a few pages in, far from the end (30 pages).
    let mut waited = 0;
    while data_requests(&sim).len() < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
        if waited > 1500 {
            let o = child.wait_with_output().await.unwrap();
            panic!("the run never started paging: {}", text(&o));
        }
    }
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().await.unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(130), "{t}");
    let summary = summary_of(&o);
    assert_eq!(summary["status"], "interrupted", "{t}");
    assert_eq!(summary["exit_code"], 130, "{t}");
    assert!(t.contains("interrupted"), "{t}");
    // Nothing was committed: no output, no temporary file, no watermark.
    for f in files_in(&out) {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            !name.ends_with(".csv") && !name.ends_with(".parquet") && !name.ends_with(".tmp"),
            "left behind: {}",
            f.display()
        );
    }
    let state = out.join("sig.state.json");
    if state.exists() {
        let st: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
        assert!(st["watermark"].is_null(), "the state moved: {st}");
    }

    // The next run exports every record exactly once.
    sim.set_faults(Faults::default());
    let o = run_bin(&args, dir.path(), &sim).await;
    assert!(o.status.success(), "{}", text(&o));
    let csvs = csv_files(&out);
    assert_eq!(csvs.len(), 1, "{csvs:?}");
    let (_, rows) = csv_by_id(&csvs[0]);
    assert_eq!(rows.len(), 1500);
    let (_, all) = read_csv(&csvs[0]);
    assert_eq!(all.len(), 1500, "no record twice");
    sim.shutdown().await;
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    files_in(dir)
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(&f).unwrap();
            (f, bytes)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_window_requests_and_files_makes_only_the_printed_request_and_writes_nothing()
 {
    let sim = simulator(300, 5, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dry.toml");
    std::fs::write(&file, incremental_pipeline(&sim, "dry")).unwrap();
    let f = file.to_str().unwrap();

    // Before any run: the output directory is not even created.
    let o = run_bin(
        &["run", f, "--output-dir", "fresh", "--dry-run"],
        dir.path(),
        &sim,
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(!dir.path().join("fresh").exists(), "{}", text(&o));

    // After a real run: state and outputs stay byte for byte.
    let o = run_bin(&["run", f, "--output-dir", "out"], dir.path(), &sim).await;
    assert!(o.status.success(), "{}", text(&o));
    let watermark = summary_of(&o)["watermark"].as_str().unwrap().to_string();
    let out = dir.path().join("out");
    let before = snapshot(&out);
    let logged = sim.request_log().len();
    let o = run_bin(
        &["run", f, "--output-dir", "out", "--dry-run"],
        dir.path(),
        &sim,
    )
    .await;
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        snapshot(&out),
        before,
        "the dry run changed the output directory"
    );

    // The window starts at the committed watermark.
    let from = chrono::DateTime::parse_from_rfc3339(&watermark).unwrap();
    let from = from.with_timezone(&chrono::Utc);
    assert!(t.contains("window"), "{t}");
    assert!(
        t.contains(&expense_sync::sources::fyle::fyle_timestamp(from)),
        "window start {watermark} not shown: {t}"
    );
    // The requests it would make: the first page, with its filters.
    assert!(t.contains("order=updated_at.asc%2Cid.asc"), "{t}");
    assert!(t.contains("limit=50"), "{t}");
    // The files it would write.
    assert!(t.contains(".csv") && t.contains(".parquet"), "{t}");
    // Only data requests it printed were made (at most one count probe).
    let data: Vec<_> = sim.request_log()[logged..]
        .iter()
        .filter(|r| r.server == "cluster")
        .cloned()
        .collect();
    assert!(data.len() <= 1, "{data:?}");
    for r in &data {
        assert!(
            t.contains(&format!("{}?{}", r.path, r.query)),
            "request {}?{} was not printed: {t}",
            r.path,
            r.query
        );
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_exports_a_sample_of_at_most_n_records_and_never_advances_the_state() {
    use expense_sync::pipeline::{RunOptions, RunStatus};
    let sim = simulator(500, 9, None).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let text = incremental_pipeline(&sim, "sample");
    let p = expense_sync::config::load_str(&text, Path::new("sample.toml")).unwrap();
    let http = expense_sync::http::HttpClient::new(&p.spec.http).unwrap();
    let opts = RunOptions {
        output_dir: Some(out.clone()),
        credentials: Some(credentials(&sim).into()),
        limit: Some(120),
        ..RunOptions::default()
    };
    let outcome = expense_sync::pipeline::run(&p, &http, &opts).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let s = &outcome.summary;
    assert_eq!(s.status, RunStatus::Ok);
    assert_eq!(s.kind, "sample");
    assert_eq!(s.records_in, 120);
    assert!(s.watermark.is_none(), "a sample moved the watermark");
    let csvs = csv_files(&out);
    assert_eq!(csvs.len(), 1, "{csvs:?}");
    let (_, rows) = csv_by_id(&csvs[0]);
    assert_eq!(rows.len(), 120);
    let truth = truth_by_id(&sim);
    assert!(rows.keys().all(|id| truth.contains_key(id)));
    let st =
        expense_sync::state::load(&out.join("sample.state.json"), "sample", "updated_at").unwrap();
    assert!(
        st.watermark.is_none(),
        "the state advanced: {:?}",
        st.watermark
    );

    // The next incremental run still exports everything.
    let (_, outcome) = run_text(&sim, &text, &out).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(outcome.summary.records_out, 500);
    assert!(outcome.summary.watermark.is_some());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_off_a_terminal_is_plain_lines_for_paging_and_write_back_without_control_sequences()
 {
    let sim = Simulator::start(SimConfig {
        seed: 4,
        expenses: 400,
        rate_limit: None,
        faults: Faults {
            latency: Duration::from_millis(30),
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prog.toml");
    let pipeline = incremental_pipeline(&sim, "prog")
        + "\n[writeback]\nurl = \"https://erp.example.com/bills?expense={id}\"\nbatch_size = 50\n";
    std::fs::write(&file, pipeline).unwrap();
    let o = run_bin(
        &[
            "run",
            file.to_str().unwrap(),
            "--output-dir",
            "out",
            "--progress-interval",
            "20ms",
        ],
        dir.path(),
        &sim,
    )
    .await;
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        !err.contains('\u{1b}'),
        "control sequences off a terminal: {err:?}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("progress")).collect();
    let paging: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("phase=paging"))
        .collect();
    assert!(!paging.is_empty(), "{err}");
    assert!(
        paging
            .iter()
            .any(|l| l.contains("total=400") && l.contains("records_per_s=")),
        "{err}"
    );
    // The write-back reports its requests (2 per batch of 50: in progress, complete).
    let requests = |l: &str| -> u64 {
        let at = l.find(" requests=").expect("requests field") + " requests=".len();
        l[at..].split(' ').next().unwrap().parse().unwrap()
    };
    assert!(
        lines
            .iter()
            .filter(|l| l.contains("phase=\"write-back\"") || l.contains("phase=write-back"))
            .any(|l| requests(l) >= 8),
        "the write-back phase is silent: {err}"
    );
    assert_eq!(summary_of(&o)["records_out"], 400);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_the_write_back_keeps_the_commit_and_the_next_run_finishes_the_write_back() {
    let sim = slow_simulator(400).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wb.toml");
    let pipeline = incremental_pipeline(&sim, "wb")
        + "\n[writeback]\nurl = \"https://erp.example.com/bills?expense={id}\"\nbatch_size = 20\n";
    std::fs::write(&file, pipeline).unwrap();
    let out = dir.path().join("out");
    let args = ["run", file.to_str().unwrap(), "--output-dir", "out"];
    let child = command(&args, dir.path(), &sim).spawn().unwrap();
    let pid = child.id().expect("child is running");
    let bulk = |sim: &Simulator| {
        sim.request_log()
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/bulk"))
            .count()
    };
    // 20 batches of 20, two calls each: stop after the first few.
    let mut waited = 0;
    while bulk(&sim) < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
        if waited > 1500 {
            let o = child.wait_with_output().await.unwrap();
            panic!("the write-back never started: {}", text(&o));
        }
    }
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().await.unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(130), "{t}");
    let summary = summary_of(&o);
    assert_eq!(summary["status"], "interrupted", "{t}");
    assert!(summary["watermark"].is_string(), "the commit stands: {t}");
    assert!(t.contains("write-back"), "{t}");
    let csvs = csv_files(&out);
    assert_eq!(csvs.len(), 1, "{csvs:?}");
    assert_eq!(csv_by_id(&csvs[0]).1.len(), 400);
    assert!(
        files_in(&out)
            .iter()
            .all(|f| !f.to_string_lossy().ends_with(".tmp")),
        "{:?}",
        files_in(&out)
    );

    // The next run carries out the rest of the write-back and exports nothing twice.
    sim.set_faults(Faults::default());
    let o = run_bin(&args, dir.path(), &sim).await;
    assert!(o.status.success(), "{}", text(&o));
    let s = summary_of(&o);
    assert_eq!(s["writeback"]["failed"], serde_json::Value::Null, "{s}");
    assert!(s["writeback"]["complete"].as_u64().unwrap() > 0, "{s}");
    let exported = sim
        .ground_truth("expenses")
        .iter()
        .filter(|e| {
            e.pointer("/accounting_export_summary/state")
                .and_then(|v| v.as_str())
                == Some("COMPLETE")
        })
        .count();
    assert_eq!(exported, 400);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_on_a_terminal_is_one_live_line_redrawn_below_the_log_lines() {
    // util-linux `script` gives the binary a pseudo-terminal.
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: `script` (util-linux) is not installed");
        return;
    }
    let sim = slow_simulator(600).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tty.toml");
    std::fs::write(&file, incremental_pipeline(&sim, "tty")).unwrap();
    let typescript = dir.path().join("typescript");
    let inner = format!(
        "{BIN} run {} --output-dir out --progress-interval 50ms > summary.json",
        file.display()
    );
    let mut cmd = tokio::process::Command::new("script");
    cmd.args(["-qfec", &inner])
        .arg(&typescript)
        .current_dir(dir.path())
        .env("TERM", "xterm")
        .env_remove("EXPENSE_SYNC_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    for (k, v) in sim_env(&sim) {
        cmd.env(k, v);
    }
    assert!(cmd.status().await.unwrap().success());
    let screen = std::fs::read_to_string(&typescript).unwrap();
    assert!(
        screen.contains("\r\u{1b}[2Kpaging: ") && screen.contains("/600 records"),
        "{screen:?}"
    );
    assert!(
        screen.contains("records/s") && screen.contains("ETA"),
        "{screen:?}"
    );
    // A log line first clears the live line, then the live line is drawn again below it.
    let log = screen.find("records to export").expect("log line shown");
    let before = &screen[..log];
    let line_start = before.rfind('\r').unwrap();
    assert!(
        before[line_start..].starts_with("\r\u{1b}[2K"),
        "{screen:?}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["records_out"], 600);
    sim.shutdown().await;
}

/// Fyle's export status goes on the expenses the server sent, whatever a
/// transform made of a record's `id` before the sinks saw it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_back_marks_the_expenses_as_sent_when_a_transform_rewrites_their_id() {
    let sim = Simulator::start(SimConfig {
        seed: 9,
        expenses: 120,
        rate_limit: None,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rw.toml");
    let pipeline = incremental_pipeline(&sim, "rw")
        + "\n[[transforms]]\ntype = \"derive\"\ntarget = \"id\"\ntemplate = \"ERP-{id}\"\n"
        + "\n[writeback]\nurl = \"https://erp.example.com/bills?expense={id}\"\nbatch_size = 50\n";
    std::fs::write(&file, pipeline).unwrap();
    let o = run_bin(
        &["run", file.to_str().unwrap(), "--output-dir", "out"],
        dir.path(),
        &sim,
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let s = summary_of(&o);
    assert_eq!(s["records_out"], 120, "{s}");
    assert_eq!(s["writeback"]["complete"], 120, "{s}");
    let csv = std::fs::read_to_string(&csv_files(&dir.path().join("out"))[0]).unwrap();
    assert!(
        csv.contains("ERP-tx"),
        "the transform rewrote the column: {csv}"
    );
    for (id, e) in truth_by_id(&sim) {
        let summary = &e["accounting_export_summary"];
        assert_eq!(summary["state"], "COMPLETE", "{id}: {summary}");
        assert_eq!(
            summary["url"],
            format!("https://erp.example.com/bills?expense={id}")
        );
    }
    sim.shutdown().await;
}
