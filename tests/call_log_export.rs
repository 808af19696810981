//! The RingCentral call log exported through the same runner, transforms and
//! sinks as expenses, against the RingCentral simulator over loopback: the
//! library for the incremental runs, the real binary for `check`,
//! `--dry-run`, the JWT connection from the vault, and errors.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use chrono::{DateTime, Utc};
use expense_sync::auth::presets::Provider;
use expense_sync::auth::vault::{GrantKind, VaultError};
use expense_sync::auth::{Connection, Vault};
use expense_sync::config;
use expense_sync::http::HttpClient;
use expense_sync::pipeline::{self, RunOptions, RunOutcome};
use expense_sync::simulator::ringcentral::{
    Group, GroupLimit, RC_CLIENT_ID, RC_CLIENT_SECRET, RcSimConfig, RcSimulator,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use secrecy::SecretString;

const BIN: &str = env!("CARGO_BIN_EXE_expense-sync");

/// A simulator whose Heavy group (the call log) allows `heavy` requests a minute.
async fn sim_with(calls: usize, heavy: u32, tweak: impl FnOnce(&mut RcSimConfig)) -> RcSimulator {
    let mut cfg = RcSimConfig {
        calls,
        history: Duration::from_secs(6 * 3600),
        ..RcSimConfig::default()
    };
    cfg.limits.insert(
        Group::Heavy,
        GroupLimit {
            requests: heavy,
            window: Duration::from_secs(60),
            penalty: Duration::from_secs(60),
        },
    );
    tweak(&mut cfg);
    RcSimulator::start(cfg).await.unwrap()
}

/// A vault at `dir/vault.json` holding `rc`, a JWT connection made as
/// `auth add --provider ringcentral` makes it.
fn vault_with_jwt(sim: &RcSimulator, dir: &Path) -> Vault {
    vault_with_jwt_named(sim, dir, "rc")
}

fn vault_with_jwt_named(sim: &RcSimulator, dir: &Path, name: &str) -> Vault {
    let vault = Vault::with_key(&dir.join("vault.json"), None);
    let mut conn: Connection =
        Provider::Ringcentral.connection(GrantKind::JwtBearer, Some(sim.url()), RC_CLIENT_ID);
    conn.client_secret = Some(SecretString::from(RC_CLIENT_SECRET.to_string()));
    conn.assertion = Some(SecretString::from(sim.issue_jwt()));
    vault
        .update(|all| {
            all.insert(name.to_string(), conn);
            Ok::<_, VaultError>(())
        })
        .unwrap();
    vault
}

/// A call-log pipeline with default columns, writing CSV and Parquet files per run.
fn pipeline_text(start: DateTime<Utc>, per_page: u32, extra_source: &str) -> String {
    format!(
        r#"
[pipeline]
name = "calls"

[connection]
vault = "rc"

[http]
requests_per_second = 1000

[source]
type = "ringcentral"
per_page = {per_page}
safety_lag = "0s"
{extra_source}

[incremental]
start = "{start}"

[[sinks]]
type = "csv"
path = "{{pipeline}}-{{run_id}}.csv"

[[sinks]]
type = "parquet"
path = "{{pipeline}}-{{run_id}}.parquet"
"#,
        start = start.to_rfc3339()
    )
}

async fn run_lib(text: &str, out: &Path, vault: &Path) -> RunOutcome {
    let p = config::load_str(text, Path::new("calls.toml")).expect("pipeline is valid");
    let http = HttpClient::new(&p.spec.http).unwrap();
    let opts = RunOptions {
        output_dir: Some(out.to_path_buf()),
        vault: Some(vault.join("vault.json")),
        ..RunOptions::default()
    };
    pipeline::run(&p, &http, &opts).await
}

/// The call ids of every CSV in `dir`, with how often each was written.
fn exported_ids(dir: &Path) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for f in common::files_in(dir) {
        if f.extension().is_some_and(|e| e == "csv") {
            let (header, rows) = common::read_csv(&f);
            let col = header.iter().position(|h| h == "call_id").unwrap();
            for r in rows {
                *ids.entry(r[col].clone()).or_default() += 1;
            }
        }
    }
    ids
}

/// Rows of every Parquet file in `dir`, read back with the parquet crate.
fn parquet_rows(dir: &Path) -> usize {
    common::files_in(dir)
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "parquet"))
        .map(|f| {
            let r =
                ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap()).unwrap();
            r.metadata().file_metadata().num_rows() as usize
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_log_export_over_many_pages_equals_ground_truth_and_the_next_run_adds_late_calls_once()
{
    // Calls show up 3 s after they end (RingCentral: 15–30 s).
    let sim = sim_with(300, 1000, |c| {
        c.visibility_lag = (Duration::from_secs(3), Duration::from_secs(3))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    vault_with_jwt(&sim, dir.path());
    let start = Utc::now() - chrono::Duration::hours(7);
    let text = pipeline_text(start, 20, "");

    // Calls that end around the run's start: inside its window, not yet visible.
    let late: Vec<String> = (0..3)
        .map(|_| sim.add_call_at(Utc::now() - chrono::Duration::seconds(2), Duration::ZERO))
        .collect();
    // More calls keep arriving while the run pages.
    let adder = async {
        let mut ids = Vec::new();
        for _ in 0..10 {
            ids.push(sim.add_call_at(Utc::now(), Duration::ZERO));
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        ids
    };
    let (first, during) = tokio::join!(run_lib(&text, &out, dir.path()), adder);
    assert!(first.error.is_none(), "{:?}", first.error);
    let first_to = first.summary.window_to.unwrap();
    let after_first = exported_ids(&out);
    assert!(first.summary.pages > 10, "{} pages", first.summary.pages);
    let truth_first: BTreeSet<String> = sim
        .visible_call_ids_between(start, first_to)
        .into_iter()
        .filter(|id| !late.contains(id) && !during.contains(id))
        .collect();
    for id in &truth_first {
        assert_eq!(after_first.get(id), Some(&1), "call {id} exported once");
    }
    for id in &late {
        assert!(
            !after_first.contains_key(id),
            "the late call {id} was visible too early for this test"
        );
    }

    // Everything becomes visible; the next incremental run reaches back a
    // lookback before the watermark and adds what arrived late, once.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let second = run_lib(&text, &out, dir.path()).await;
    assert!(second.error.is_none(), "{:?}", second.error);
    let second_to = second.summary.window_to.unwrap();
    let all = exported_ids(&out);
    let truth: BTreeSet<String> = sim
        .visible_call_ids_between(start, second_to)
        .into_iter()
        .collect();
    for id in &late {
        assert!(truth.contains(id));
    }
    assert_eq!(
        all.keys().cloned().collect::<BTreeSet<_>>(),
        truth,
        "both runs together export exactly the visible calls of the window"
    );
    assert!(
        all.values().all(|n| *n == 1),
        "a call exported twice: {:?}",
        all.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    assert!(
        second.summary.duplicates_skipped > 0,
        "the lookback re-read calls of the first run and dropped them"
    );
    assert_eq!(parquet_rows(&out), truth.len(), "Parquet has every row too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_log_rows_read_back_with_the_default_columns() {
    let sim = sim_with(40, 1000, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    vault_with_jwt(&sim, dir.path());
    let start = Utc::now() - chrono::Duration::hours(7);
    let outcome = run_lib(
        &pipeline_text(start, 1000, "view = \"Detailed\""),
        &out,
        dir.path(),
    )
    .await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let csv = common::files_in(&out)
        .into_iter()
        .find(|f| f.extension().is_some_and(|e| e == "csv"))
        .unwrap();
    let (header, rows) = common::read_csv(&csv);
    assert_eq!(
        header,
        [
            "call_id",
            "session_id",
            "start_time_utc",
            "duration_seconds",
            "direction",
            "type",
            "result",
            "from_number",
            "from_name",
            "from_extension",
            "to_number",
            "to_name",
            "to_extension",
            "extension_id"
        ]
    );
    assert!(!rows.is_empty());
    for r in &rows {
        assert!(
            r[2].ends_with('Z') || r[2].contains("+00:00"),
            "UTC: {}",
            r[2]
        );
        r[3].parse::<u64>().expect("whole seconds");
        assert!(["Inbound", "Outbound"].contains(&r[4].as_str()), "{r:?}");
        assert!(
            r[7].starts_with("+1650") && r[10].starts_with("+1650"),
            "{r:?}"
        );
        assert!(r[13].starts_with("2620001"), "{r:?}");
    }
    let parquet = common::files_in(&out)
        .into_iter()
        .find(|f| f.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(parquet).unwrap()).unwrap();
    let schema = reader.schema().clone();
    assert!(
        matches!(
            schema.field_with_name("start_time_utc").unwrap().data_type(),
            arrow::datatypes::DataType::Timestamp(_, Some(tz)) if tz.as_ref() == "UTC"
        ),
        "{schema:?}"
    );
    assert_eq!(
        schema
            .field_with_name("duration_seconds")
            .unwrap()
            .data_type(),
        &arrow::datatypes::DataType::Int64
    );
    let n: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n, rows.len());
}

async fn run_bin(args: &[&str], cwd: &Path, vault: &Path) -> Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("EXPENSE_SYNC_LOG")
        .env_remove("FYLE_ACCOUNTS_URL")
        .env("EXPENSE_SYNC_VAULT", vault.join("vault.json"))
        .output()
        .await
        .expect("binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_vault_connection_checks_dry_runs_and_exports_with_one_token_request() {
    let sim = sim_with(60, 1000, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    vault_with_jwt(&sim, dir.path());
    let start = Utc::now() - chrono::Duration::hours(7);
    std::fs::write(
        dir.path().join("calls.toml"),
        pipeline_text(start, 1000, ""),
    )
    .unwrap();

    let check = run_bin(&["check", "calls.toml"], dir.path(), dir.path()).await;
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains("using connection `rc`"),
        "{}",
        text(&check)
    );
    assert!(
        text(&check).contains("call log answers"),
        "{}",
        text(&check)
    );

    let dry = run_bin(&["run", "calls.toml", "--dry-run"], dir.path(), dir.path()).await;
    assert!(dry.status.success(), "{}", text(&dry));
    let shown = text(&dry);
    assert!(
        shown.contains("/restapi/v1.0/account/~/call-log?dateFrom="),
        "{shown}"
    );
    assert!(
        shown.contains("dateTo=") && shown.contains("perPage=1000"),
        "{shown}"
    );
    assert!(!dir.path().join("out").exists(), "a dry run writes nothing");

    let run = run_bin(&["run", "calls.toml"], dir.path(), dir.path()).await;
    assert_eq!(run.status.code(), Some(0), "{}", text(&run));
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let to: DateTime<Utc> = summary["window_to"].as_str().unwrap().parse().unwrap();
    let truth: BTreeSet<String> = sim
        .visible_call_ids_between(start, to)
        .into_iter()
        .collect();
    let got = exported_ids(&dir.path().join("out"));
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), truth);

    // The access token stored by the first grant serves every later command
    // (the Auth group allows 5 token requests a minute).
    let again = run_bin(&["run", "calls.toml"], dir.path(), dir.path()).await;
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(
        sim.token_requests(),
        1,
        "one JWT grant, then the stored token"
    );
    let jwt_and_secret = [RC_CLIENT_SECRET.to_string()];
    for o in [&check, &dry, &run, &again] {
        for s in &jwt_and_secret {
            assert!(!text(o).contains(s.as_str()), "a secret was printed");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_waits_out_the_heavy_groups_penalty_without_restarting_it() {
    // Three call-log requests per 2 s; a 429 blocks the group for 2 s, and
    // the simulator sends no Retry-After (the window is waited instead).
    let sim = sim_with(60, 3, |c| {
        c.retry_after_header = false;
        c.limits.insert(
            Group::Heavy,
            GroupLimit {
                requests: 3,
                window: Duration::from_secs(2),
                penalty: Duration::from_secs(2),
            },
        );
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    vault_with_jwt(&sim, dir.path());
    let start = Utc::now() - chrono::Duration::hours(7);
    let text = pipeline_text(start, 10, "");
    // Another client used up the group: the run's first request is throttled.
    let token = expense_sync::auth::VaultAuth::new(
        Vault::with_key(&dir.path().join("vault.json"), None),
        "rc",
        HttpClient::new(&Default::default()).unwrap(),
    )
    .access_token(None, false)
    .await
    .unwrap()
    .access;
    let other = HttpClient::new(&Default::default()).unwrap();
    for _ in 0..3 {
        let url = url::Url::parse(&format!(
            "{}/restapi/v1.0/account/~/call-log?perPage=1",
            sim.url()
        ))
        .unwrap();
        other
            .execute(&expense_sync::http::Request::get(url).with_bearer(token.clone()))
            .await
            .unwrap();
    }
    let outcome = run_lib(&text, &out, dir.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let heavy: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.group == Some(Group::Heavy))
        .collect();
    let throttled: Vec<_> = heavy.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        throttled.len(),
        1,
        "a request during the penalty would restart it: {heavy:?}"
    );
    let next = heavy
        .iter()
        .find(|r| r.at > throttled[0].at)
        .expect("the export went on");
    assert!(
        next.at.duration_since(throttled[0].at) >= Duration::from_secs(2),
        "the next call-log request came within the penalty"
    );
    let truth: BTreeSet<String> = sim
        .visible_call_ids_between(start, outcome.summary.window_to.unwrap())
        .into_iter()
        .collect();
    assert!(truth.len() > 40, "several pages of 10");
    assert_eq!(
        exported_ids(&out).keys().cloned().collect::<BTreeSet<_>>(),
        truth
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ringcentral_error_shape_reaches_the_cli_message_and_exit_code() {
    let sim = sim_with(10, 1000, |c| c.call_log_forbidden = true).await;
    let dir = tempfile::tempdir().unwrap();
    vault_with_jwt(&sim, dir.path());
    std::fs::write(
        dir.path().join("calls.toml"),
        pipeline_text(Utc::now() - chrono::Duration::hours(1), 1000, ""),
    )
    .unwrap();
    let run = run_bin(&["run", "calls.toml"], dir.path(), dir.path()).await;
    let shown = text(&run);
    assert_eq!(run.status.code(), Some(4), "source error: {shown}");
    assert!(shown.contains("HTTP 403 CMN-408"), "{shown}");
    assert!(
        shown.contains("ReadCompanyCallLog"),
        "the server's message: {shown}"
    );
    assert!(shown.contains("ReadCallLog"), "what to do: {shown}");
    assert!(
        exported_ids(&dir.path().join("out")).is_empty(),
        "nothing was written"
    );

    let check = run_bin(&["check", "calls.toml"], dir.path(), dir.path()).await;
    assert_eq!(check.status.code(), Some(3), "{}", text(&check));
    assert!(text(&check).contains("CMN-408"), "{}", text(&check));
}

#[tokio::test]
async fn ringcentral_pipeline_files_are_checked_key_by_key() {
    let base = pipeline_text(Utc::now(), 1000, "");
    let err = |t: &str| {
        config::load_str(t, Path::new("calls.toml"))
            .unwrap_err()
            .to_string()
    };
    let e = err(&base.replace("per_page = 1000", "per_page = 1001"));
    assert!(
        e.contains("source.per_page") && e.contains("1 to 1000"),
        "{e}"
    );
    let e = err(&base.replace(
        "vault = \"rc\"",
        "vault = \"rc\"\njwt = { env = \"RC_JWT\" }",
    ));
    assert!(
        e.contains("connection.jwt") && e.contains("cannot be combined"),
        "{e}"
    );
    let e = err(&base.replace(
        "vault = \"rc\"",
        "client_id = \"x\"\nrefresh_token = { env = \"R\" }",
    ));
    assert!(
        e.contains("connection.refresh_token") && e.contains("unknown key"),
        "{e}"
    );
    assert!(e.contains("calls.toml:"), "with the line: {e}");
    let e = err(&format!("{base}\n[writeback]\n"));
    assert!(e.contains("writeback") && e.contains("RingCentral"), "{e}");
    let e = err(&format!(
        "{base}\n[[notify]]\nkind = \"ringcentral\"\nurl = \"https://hooks.example/x\"\n"
    ));
    assert!(
        e.contains("notify[0].url") && e.contains("calls.toml:"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_call_log_pipeline_runs_against_the_simulator() {
    let sim = sim_with(80, 1000, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    vault_with_jwt_named(&sim, dir.path(), "ringcentral");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/ringcentral-call-log.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let out = dir.path().join("out");
    let outcome = run_lib(&text, &out, dir.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let kinds: Vec<&str> = outcome
        .summary
        .outputs
        .iter()
        .map(|o| o.kind.as_str())
        .collect();
    assert_eq!(kinds, ["csv", "parquet"]);
    let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    let truth: BTreeSet<String> = sim
        .visible_call_ids_between(start, outcome.summary.window_to.unwrap())
        .into_iter()
        .collect();
    assert!(!truth.is_empty());
    assert_eq!(
        exported_ids(&out).keys().cloned().collect::<BTreeSet<_>>(),
        truth
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_jwt_connection_from_secret_files_exports_without_a_vault() {
    let sim = sim_with(30, 1000, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), RC_CLIENT_SECRET).unwrap();
    std::fs::write(dir.path().join("jwt"), sim.issue_jwt()).unwrap();
    let start = Utc::now() - chrono::Duration::hours(7);
    let connection = format!(
        "server = \"{}\"\nclient_id = \"{RC_CLIENT_ID}\"\nclient_secret = {{ file = \"{}\" }}\njwt = {{ file = \"{}\" }}",
        sim.url(),
        dir.path().join("secret").display(),
        dir.path().join("jwt").display()
    );
    let text = pipeline_text(start, 1000, "").replace("vault = \"rc\"", &connection);
    let out = dir.path().join("out");
    // No vault file exists: the connection comes from the pipeline file.
    let outcome = run_lib(&text, &out, dir.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert!(!dir.path().join("vault.json").exists());
    assert_eq!(sim.token_requests(), 1);
    let truth: BTreeSet<String> = sim
        .visible_call_ids_between(start, outcome.summary.window_to.unwrap())
        .into_iter()
        .collect();
    assert_eq!(
        exported_ids(&out).keys().cloned().collect::<BTreeSet<_>>(),
        truth
    );
    // A JWT the server does not know: an authentication error naming what to check.
    std::fs::write(dir.path().join("jwt"), "not-a-jwt").unwrap();
    let failed = run_lib(&text, &dir.path().join("out2"), dir.path()).await;
    let e = failed.error.as_ref().expect("refused").to_string();
    assert_eq!(failed.exit_code(), expense_sync::ExitCode::Auth, "{e}");
    assert!(
        e.contains("connection.jwt") && !e.contains("not-a-jwt"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_a_notify_url_that_does_not_resolve_as_a_config_error() {
    let sim = sim_with(5, 1000, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    vault_with_jwt(&sim, dir.path());
    let file = format!(
        "{}\n[[notify]]\nkind = \"ringcentral\"\nurl = {{ env = \"EXPENSE_SYNC_TEST_UNSET_WEBHOOK\" }}\n",
        pipeline_text(Utc::now() - chrono::Duration::hours(1), 1000, "")
    );
    std::fs::write(dir.path().join("calls.toml"), file).unwrap();
    let check = run_bin(&["check", "calls.toml"], dir.path(), dir.path()).await;
    let shown = text(&check);
    assert_eq!(check.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains("notify[0].url") && shown.contains("EXPENSE_SYNC_TEST_UNSET_WEBHOOK"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_token_the_api_refuses_is_replaced_once_and_the_export_completes() {
    let sim = sim_with(30, 1000, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = vault_with_jwt(&sim, dir.path());
    // A stored access token that looks fresh but that RingCentral no longer knows.
    vault
        .update(|all| {
            let c = all.get_mut("rc").unwrap();
            c.access_token = Some(SecretString::from("revoked-elsewhere".to_string()));
            c.access_expires_at = Some(Utc::now() + chrono::Duration::hours(1));
            c.last_refresh_at = Some(Utc::now());
            c.status = expense_sync::auth::vault::ConnectionStatus::Ok;
            Ok::<_, VaultError>(())
        })
        .unwrap();
    let start = Utc::now() - chrono::Duration::hours(7);
    let out = dir.path().join("out");
    let outcome = run_lib(&pipeline_text(start, 10, ""), &out, dir.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let refused = sim
        .requests()
        .iter()
        .filter(|r| r.group == Some(Group::Heavy) && r.status == 401)
        .count();
    assert_eq!(refused, 1, "one refusal, then the new token");
    assert_eq!(
        sim.token_requests(),
        1,
        "one JWT grant replaced the refused token"
    );
    let truth: BTreeSet<String> = sim
        .visible_call_ids_between(start, outcome.summary.window_to.unwrap())
        .into_iter()
        .collect();
    assert_eq!(
        exported_ids(&out).keys().cloned().collect::<BTreeSet<_>>(),
        truth
    );
}
