//! Quiet scheduled runs: `skip_empty` writes nothing when a run has no rows
//! (the state still advances), and `--summary-format` makes `run`'s stdout
//! fit for cron mail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use expense_sync::simulator::Simulator;

const BIN: &str = env!("CARGO_BIN_EXE_expense-sync");

/// An incremental pipeline with one file per run from each sink type that has `skip_empty`.
fn pipeline(sim: &Simulator, name: &str, skip_empty: bool) -> String {
    format!(
        r#"
[pipeline]
name = "{name}"

[connection]
accounts_url = "{accounts}"
client_id = {{ env = "FYLE_CLIENT_ID" }}
client_secret = {{ env = "FYLE_CLIENT_SECRET" }}
refresh_token = {{ env = "FYLE_REFRESH_TOKEN" }}

[http]
requests_per_second = 1000

[source]
type = "fyle"
resource = "expenses"
safety_lag = "0s"

[incremental]
lookback = "2s"

{TEST_COLUMNS}

[[sinks]]
type = "csv"
path = "{{pipeline}}-{{run_id}}.csv"
manifest = true
skip_empty = {skip_empty}

[[sinks]]
type = "parquet"
path = "{{pipeline}}-{{run_id}}.parquet"
skip_empty = {skip_empty}
"#,
        accounts = sim.accounts_url()
    )
}

fn data_files(dir: &Path) -> Vec<PathBuf> {
    files_in(dir)
        .into_iter()
        .filter(|f| {
            let n = f.to_string_lossy();
            n.ends_with(".csv") || n.ends_with(".parquet") || n.ends_with(".manifest.json")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_empty_writes_no_file_for_an_empty_run_but_advances_the_state() {
    let sim = simulator(120, 7, None).await;
    let out = tempfile::tempdir().unwrap();
    let text = pipeline(&sim, "quiet", true);

    let (p, first) = run_text(&sim, &text, out.path()).await;
    assert!(first.error.is_none(), "{:?}", first.error);
    assert_eq!(first.summary.records_out, 120);
    let after_first = data_files(out.path());
    // csv + its manifest + parquet
    assert_eq!(after_first.len(), 3, "{after_first:?}");

    let (_, second) = run_text(&sim, &text, out.path()).await;
    assert!(second.error.is_none(), "{:?}", second.error);
    assert_eq!(second.summary.records_out, 0);
    assert!(
        second.summary.outputs.is_empty(),
        "{:?}",
        second.summary.outputs
    );
    assert_eq!(
        data_files(out.path()),
        after_first,
        "an empty run wrote files"
    );
    assert_eq!(second.exit_code(), expense_sync::ExitCode::Ok);

    let st = expense_sync::state::load(&p.state_path(out.path()), "quiet", "updated_at").unwrap();
    assert_eq!(st.runs.last().unwrap().run_id, second.summary.run_id);
    assert_eq!(st.watermark, second.summary.watermark);
    assert!(second.summary.watermark >= first.summary.watermark);
    assert!(st.pending.is_none());
    let leftovers: Vec<_> = files_in(out.path())
        .into_iter()
        .filter(|f| f.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_skip_empty_an_empty_run_still_writes_its_files() {
    let sim = simulator(50, 8, None).await;
    let out = tempfile::tempdir().unwrap();
    let text = pipeline(&sim, "loud", false);
    run_text(&sim, &text, out.path()).await;
    let (_, second) = run_text(&sim, &text, out.path()).await;
    assert_eq!(second.summary.records_out, 0);
    assert_eq!(data_files(out.path()).len(), 6);
    let (header, rows) = read_csv(&second.summary.outputs[0].path);
    assert!(!header.is_empty());
    assert!(rows.is_empty());
}

async fn run_bin(sim: &Simulator, file: &Path, args: &[&str]) -> Output {
    let c = sim.credentials();
    tokio::process::Command::new(BIN)
        .arg("run")
        .arg(file)
        // Relative output_dir ("out") lands beside the pipeline file, not in the repository.
        .current_dir(file.parent().unwrap())
        .args(args)
        .env_remove("EXPENSE_SYNC_LOG")
        .env("FYLE_CLIENT_ID", &c.client_id)
        .env("FYLE_CLIENT_SECRET", &c.client_secret)
        .env("FYLE_REFRESH_TOKEN", &c.refresh_token)
        .output()
        .await
        .expect("binary runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_format_text_prints_one_line_and_none_prints_nothing() {
    let sim = simulator(40, 9, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cron.toml");
    std::fs::write(&file, pipeline(&sim, "cron", true)).unwrap();
    let summary_file = dir.path().join("summary.json");

    let o = run_bin(
        &sim,
        &file,
        &[
            "--summary-format",
            "text",
            "--summary",
            summary_file.to_str().unwrap(),
        ],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("expense-sync cron: ok — 40 of 40 record(s) exported"),
        "{stdout}"
    );
    assert!(stdout.contains(".parquet"), "{stdout}");
    // The JSON summary is still available in the file.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary_file).unwrap()).unwrap();
    assert_eq!(json["records_out"], 40);

    let o = run_bin(
        &sim,
        &file,
        &["--summary-format", "none", "--log-level", "warn"],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_format_text_names_the_failure_and_its_exit_code() {
    let sim = simulator(10, 10, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, pipeline(&sim, "bad", true)).unwrap();
    let o = tokio::process::Command::new(BIN)
        .args(["run", file.to_str().unwrap(), "--summary-format", "text"])
        .current_dir(dir.path())
        .env_remove("EXPENSE_SYNC_LOG")
        .env("FYLE_CLIENT_ID", "nobody")
        .env("FYLE_CLIENT_SECRET", "wrong")
        .env("FYLE_REFRESH_TOKEN", "wrong")
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("expense-sync bad: FAILED (exit 3)"),
        "{stdout}"
    );
    assert!(!stdout.contains("wrong"), "a secret was printed: {stdout}");
}
