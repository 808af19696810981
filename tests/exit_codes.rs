//! The README's exit code table, one test per row, against the real binary.
//! Row 1 (internal error) has no way in short of a bug; row 9 (reconnect) is
//! proven in tests/auth.rs, where stored connections are set up.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_expense-sync");

async fn run_bin(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("EXPENSE_SYNC_LOG")
        .env_remove("FYLE_ACCOUNTS_URL")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Generous: a hang must fail the test, not stall the suite.
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the binary answers within a minute")
        .expect("binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn summary(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is the JSON summary ({e}): {}", text(o)))
}

fn sim_env(sim: &expense_sync::simulator::Simulator) -> Vec<(&'static str, String)> {
    let c = sim.credentials();
    vec![
        ("FYLE_CLIENT_ID", c.client_id.clone()),
        ("FYLE_CLIENT_SECRET", c.client_secret.clone()),
        ("FYLE_REFRESH_TOKEN", c.refresh_token.clone()),
    ]
}

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A pipeline whose accounts server is `accounts_url`, exporting one CSV.
fn pipeline_at(accounts_url: &str, name: &str) -> String {
    format!(
        r#"
[pipeline]
name = "{name}"

[connection]
accounts_url = "{accounts_url}"
client_id = {{ env = "FYLE_CLIENT_ID" }}
client_secret = {{ env = "FYLE_CLIENT_SECRET" }}
refresh_token = {{ env = "FYLE_REFRESH_TOKEN" }}

[source]
type = "fyle"
resource = "expenses"
safety_lag = "0s"

{TEST_COLUMNS}

[[sinks]]
type = "csv"
path = "{{pipeline}}.csv"
"#
    )
}

/// A loopback port with nothing listening on it.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_0_when_everything_selected_is_exported() {
    let sim = simulator(30, 11, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.toml");
    std::fs::write(&file, pipeline_at(&sim.accounts_url(), "ok")).unwrap();
    let env = sim_env(&sim);
    let o = run_bin(
        &["run", file.to_str().unwrap(), "--output-dir", "o"],
        dir.path(),
        &refs(&env),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let s = summary(&o);
    assert_eq!(s["status"], "ok");
    assert_eq!(s["records_out"], 30);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_2_when_a_sink_secret_variable_is_unset_in_run_and_check() {
    let sim = simulator(10, 12, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("push.toml");
    let text_in = pipeline_at(&sim.accounts_url(), "push").replace(
        "[[sinks]]\ntype = \"csv\"\npath = \"{pipeline}.csv\"",
        "[[sinks]]\ntype = \"http\"\nurl = \"http://127.0.0.1:9/expenses\"\n\
         auth = { type = \"bearer\", token = { env = \"PUSH_TOKEN_SURELY_UNSET\" } }",
    );
    std::fs::write(&file, text_in).unwrap();
    let env = sim_env(&sim);
    let o = run_bin(
        &["run", file.to_str().unwrap(), "--output-dir", "o"],
        dir.path(),
        &refs(&env),
    )
    .await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("sinks[0].auth.token") && t.contains("PUSH_TOKEN_SURELY_UNSET is not set"),
        "{t}"
    );
    assert_eq!(summary(&o)["exit_code"], 2);
    assert!(
        files_in(&dir.path().join("o")).is_empty(),
        "nothing written"
    );

    let o = run_bin(&["check", file.to_str().unwrap()], dir.path(), &refs(&env)).await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "check resolves sink secrets: {t}");
    assert!(t.contains("PUSH_TOKEN_SURELY_UNSET is not set"), "{t}");
    sim.shutdown().await;
}

#[tokio::test]
async fn exit_2_with_a_json_summary_when_the_pipeline_file_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let o = run_bin(&["run", "no-such-pipeline.toml"], dir.path(), &[]).await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("no-such-pipeline.toml"), "{t}");
    let s = summary(&o);
    assert_eq!(s["status"], "failed");
    assert_eq!(s["exit_code"], 2);
    assert!(
        s["error"]
            .as_str()
            .unwrap()
            .contains("no-such-pipeline.toml"),
        "{s}"
    );
}

#[tokio::test]
async fn exit_3_fast_when_check_finds_nothing_listening_at_accounts_url() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("closed.toml");
    let url = format!("http://127.0.0.1:{}", closed_port());
    std::fs::write(&file, pipeline_at(&url, "closed")).unwrap();
    let env = [
        ("FYLE_CLIENT_ID", "id"),
        ("FYLE_CLIENT_SECRET", "s"),
        ("FYLE_REFRESH_TOKEN", "r"),
    ];
    let o = run_bin(&["check", file.to_str().unwrap()], dir.path(), &env).await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(3), "{t}");
    assert!(t.contains(&url) && t.contains("refused"), "{t}");
    assert!(t.contains("after 2 attempts"), "a couple of attempts: {t}");
    assert_eq!(t.matches("retrying").count(), 1, "{t}");
}

#[tokio::test]
async fn exit_3_fast_when_accounts_url_names_an_unknown_host() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nxdomain.toml");
    // RFC 2606: `.invalid` never resolves.
    let url = "http://accounts.expense-sync-test.invalid";
    std::fs::write(&file, pipeline_at(url, "nxdomain")).unwrap();
    let env = [
        ("FYLE_CLIENT_ID", "id"),
        ("FYLE_CLIENT_SECRET", "s"),
        ("FYLE_REFRESH_TOKEN", "r"),
    ];
    for cmd in ["check", "run"] {
        let o = run_bin(
            &[cmd, file.to_str().unwrap(), "--log-level", "warn"],
            dir.path(),
            &env,
        )
        .await;
        let t = text(&o);
        assert_eq!(o.status.code(), Some(3), "{cmd}: {t}");
        assert!(t.contains("accounts.expense-sync-test.invalid"), "{t}");
        assert!(t.contains("after 2 attempts"), "{cmd}: {t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_4_when_the_source_refuses_a_request() {
    let sim = simulator(10, 14, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("refused.toml");
    let text_in = pipeline_at(&sim.accounts_url(), "refused").replace(
        "safety_lag = \"0s\"",
        "safety_lag = \"0s\"\nfilters = { no_such_column = \"eq.1\" }",
    );
    std::fs::write(&file, text_in).unwrap();
    let env = sim_env(&sim);
    let o = run_bin(
        &["run", file.to_str().unwrap(), "--output-dir", "o"],
        dir.path(),
        &refs(&env),
    )
    .await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(4), "{t}");
    assert!(t.contains("HTTP 400"), "{t}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_5_when_the_output_directory_cannot_be_written_and_check_says_so() {
    let sim = simulator(10, 15, None).await;
    let dir = tempfile::tempdir().unwrap();
    // A directory below a plain file cannot be created, even by root.
    std::fs::write(dir.path().join("plain-file"), "x").unwrap();
    let file = dir.path().join("unwritable.toml");
    let text_in = pipeline_at(&sim.accounts_url(), "unwritable").replace(
        "name = \"unwritable\"",
        "name = \"unwritable\"\noutput_dir = \"plain-file/out\"",
    );
    std::fs::write(&file, text_in).unwrap();
    let env = sim_env(&sim);
    let o = run_bin(&["run", file.to_str().unwrap()], dir.path(), &refs(&env)).await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(5), "{t}");
    assert!(t.contains("plain-file/out"), "{t}");
    assert_eq!(summary(&o)["exit_code"], 5);

    let o = run_bin(&["check", file.to_str().unwrap()], dir.path(), &refs(&env)).await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(5), "check tests writability: {t}");
    assert!(
        t.contains("plain-file/out") && t.contains("not writable"),
        "{t}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_6_when_records_are_quarantined() {
    let sim = simulator(30, 16, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("partial.toml");
    // Merchants are text: every record fails the integer conversion.
    let text_in = pipeline_at(&sim.accounts_url(), "partial").replace(
        "name = \"merchant\"\npath = \"merchant\"",
        "name = \"merchant\"\npath = \"merchant\"\ntype = \"integer\"",
    );
    std::fs::write(&file, text_in).unwrap();
    let env = sim_env(&sim);
    let o = run_bin(
        &["run", file.to_str().unwrap(), "--output-dir", "o"],
        dir.path(),
        &refs(&env),
    )
    .await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(6), "{t}");
    let s = summary(&o);
    assert_eq!(s["status"], "partial");
    assert!(s["quarantined"].as_u64().unwrap() > 0, "{s}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_7_when_another_run_holds_the_lock() {
    let sim = simulator(10, 17, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("locked.toml");
    std::fs::write(&file, pipeline_at(&sim.accounts_url(), "locked")).unwrap();
    std::fs::create_dir_all(dir.path().join("o")).unwrap();
    let _held =
        expense_sync::state::acquire(&dir.path().join("o/locked.state.json.lock"), "locked")
            .unwrap();
    let env = sim_env(&sim);
    let o = run_bin(
        &["run", file.to_str().unwrap(), "--output-dir", "o"],
        dir.path(),
        &refs(&env),
    )
    .await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(7), "{t}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_8_when_the_state_file_is_unreadable() {
    let sim = simulator(10, 18, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.toml");
    std::fs::write(&file, pipeline_at(&sim.accounts_url(), "state")).unwrap();
    std::fs::create_dir_all(dir.path().join("o")).unwrap();
    std::fs::write(dir.path().join("o/state.state.json"), "{ not json").unwrap();
    let env = sim_env(&sim);
    let o = run_bin(
        &["run", file.to_str().unwrap(), "--output-dir", "o"],
        dir.path(),
        &refs(&env),
    )
    .await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(8), "{t}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("o/state.state.json")).unwrap(),
        "{ not json",
        "left untouched"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_10_when_the_run_committed_but_write_back_failed() {
    let sim = simulator(20, 19, None).await;
    sim.set_faults(expense_sync::simulator::Faults {
        writeback_status: Some(403),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let text_in = pipeline_at(&sim.accounts_url(), "wbfail")
        + "\n[writeback]\nurl = \"https://erp.example.com/{id}\"\n";
    let (_, outcome) = run_text(&sim, &text_in, dir.path()).await;
    assert_eq!(
        outcome.exit_code(),
        expense_sync::ExitCode::WriteBack,
        "{:?}",
        outcome.error
    );
    assert_eq!(outcome.summary.exit_code, 10);
    assert_eq!(
        outcome.summary.records_out, 20,
        "the export itself committed"
    );
    let failed = outcome.summary.writeback.clone().unwrap().failed.unwrap();
    assert!(failed.contains("403"), "{failed}");
    sim.shutdown().await;
}
