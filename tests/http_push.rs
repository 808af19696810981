//! HTTP push end to end: the simulator as the source, the test receiver as
//! the destination, over loopback. Faults, rejections, signatures, a SIGKILL
//! mid-push, and the write-back of export status to Fyle.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{TEST_COLUMNS, credentials, run_text, simulator, truth_by_id};
use expense_sync::ExitCode;
use expense_sync::simulator::Simulator;
use expense_sync::simulator::receiver::{Fault, Receiver, ReceiverConfig, RejectMode};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_expense-sync");
const SECRET: &str = "whsec-test-4b7d";

/// A pipeline pushing every expense to `receiver`, signed with the secret in `secret_file`.
fn push_text(
    sim: &Simulator,
    receiver: &Receiver,
    name: &str,
    secret_file: &Path,
    sink_extra: &str,
    tail: &str,
) -> String {
    format!(
        r#"
[pipeline]
name = "{name}"

[connection]
accounts_url = "{accounts}"
client_id = {{ env = "FYLE_CLIENT_ID" }}
client_secret = {{ env = "FYLE_CLIENT_SECRET" }}
refresh_token = {{ env = "FYLE_REFRESH_TOKEN" }}

[source]
type = "fyle"
resource = "expenses"
safety_lag = "0s"
page_size = 50
concurrency = 4

{TEST_COLUMNS}

[[sinks]]
type = "http"
url = "{url}"
max_records = 20
signing_secret = {{ file = "{secret}" }}
headers = {{ "X-Tenant" = "acme" }}
{sink_extra}

[sinks.http]
requests_per_second = 500
request_timeout = "1s"
initial_backoff = "20ms"
max_backoff = "1s"
max_retries = 6

{tail}
"#,
        accounts = sim.accounts_url(),
        url = receiver.url(),
        secret = secret_file.display(),
    )
}

fn secret_file(dir: &Path, secret: &str) -> PathBuf {
    let p = dir.join("signing.secret");
    std::fs::write(&p, secret).unwrap();
    p
}

async fn receiver() -> Receiver {
    Receiver::start(ReceiverConfig {
        secret: Some(SECRET.into()),
        ..ReceiverConfig::default()
    })
    .await
    .unwrap()
}

/// Every record was accepted exactly once and the accepted set is the ground truth.
fn assert_each_accepted_once(receiver: &Receiver, expected: &BTreeSet<String>) {
    let counts = receiver.accept_counts();
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "accepted more than once: {doubled:?}");
    let got: BTreeSet<String> = counts.into_keys().collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "missing: {:?}",
        expected.difference(&got).take(3).collect::<Vec<_>>()
    );
    assert_eq!(&got, expected);
}

fn ids(sim: &Simulator) -> BTreeSet<String> {
    truth_by_id(sim).into_keys().collect()
}

fn dead_letters(dir: &Path) -> Vec<Value> {
    let files: Vec<PathBuf> = common::files_in(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".dead-letter.jsonl"))
        .collect();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_under_500s_429s_and_timeouts_accepts_every_record_once() {
    let sim = simulator(300, 11, None).await;
    let rx = receiver().await;
    rx.inject([
        Fault::ServerError,
        Fault::TooManyRequests {
            retry_after_secs: 1,
        },
        // Accepted, but answered after the client gave up: the retry must be recognised.
        Fault::SlowAnswer(Duration::from_millis(1500)),
        Fault::ServerError,
        Fault::ServerError,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), SECRET);
    let text = push_text(&sim, &rx, "push", &secret, "concurrency = 3", "");
    let (_, outcome) = run_text(&sim, &text, dir.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(outcome.exit_code(), ExitCode::Ok);
    assert_each_accepted_once(&rx, &ids(&sim));
    let stats = rx.stats();
    assert_eq!(stats.faults, 5);
    assert!(
        stats.duplicate_batches >= 1,
        "the timed-out batch was re-sent with the same key: {stats:?}"
    );
    assert_eq!(stats.bad_signatures, 0);
    assert_eq!(stats.batches, 15, "300 records in batches of 20");
    let out = &outcome.summary.outputs[0];
    assert_eq!((out.kind.as_str(), out.rows), ("http", 300));
    let sent = out.http.expect("the push reports its own requests");
    assert_eq!((sent.server_errors, sent.throttled_429), (3, 1), "{sent:?}");
    assert!(
        sent.transport_errors >= 1,
        "the slow answer timed out: {sent:?}"
    );
    assert!(dead_letters(dir.path()).is_empty());

    // Money arrives exactly: the JSON number's text is the source's decimal at scale 2.
    let truth = truth_by_id(&sim);
    for rec in rx.accepted() {
        let id = rec["id"].as_str().unwrap();
        let sent = common::json_decimal(&rec["amount"]).unwrap();
        assert_eq!(
            Some(sent),
            common::json_decimal(&truth[id]["amount"]),
            "{id}"
        );
        assert_eq!(
            rec["amount"].to_string().split('.').nth(1).map(str::len),
            Some(2)
        );
    }
    rx.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_shapes_each_record_and_the_bearer_token_is_sent() {
    let sim = simulator(30, 18, None).await;
    let rx = Receiver::start(ReceiverConfig {
        secret: Some(SECRET.into()),
        bearer: Some("erp-token-77".into()),
        ..ReceiverConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), SECRET);
    let token = dir.path().join("erp.token");
    std::fs::write(&token, "erp-token-77\n").unwrap();
    let sink = format!(
        r#"auth = {{ type = "bearer", token = {{ file = "{}" }} }}

[sinks.template]
id = "{{id}}"
total = {{ amount = "{{amount}}", currency = "{{currency}}" }}
memo = "{{merchant}} ({{currency}})"
source = "fyle"
"#,
        token.display()
    );
    let text = push_text(&sim, &rx, "templated", &secret, &sink, "");
    let (_, outcome) = run_text(&sim, &text, dir.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let truth = truth_by_id(&sim);
    let accepted = rx.accepted();
    assert_eq!(accepted.len(), 30);
    for rec in accepted {
        let obj = rec.as_object().unwrap();
        assert_eq!(
            obj.keys().collect::<Vec<_>>(),
            ["id", "memo", "source", "total", "_idempotency_key"],
            "{rec}"
        );
        let t = &truth[rec["id"].as_str().unwrap()];
        assert_eq!(
            common::json_decimal(&rec["total"]["amount"]),
            common::json_decimal(&t["amount"])
        );
        assert_eq!(rec["total"]["currency"], t["currency"]);
        let merchant = t["merchant"].as_str().unwrap_or("");
        assert_eq!(
            rec["memo"],
            format!("{merchant} ({})", t["currency"].as_str().unwrap())
        );
        assert_eq!(rec["source"], "fyle");
    }
    rx.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_cut_by_body_bytes_as_well_as_records() {
    let sim = simulator(100, 19, None).await;
    let rx = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), SECRET);
    let text = push_text(
        &sim,
        &rx,
        "bytes",
        &secret,
        "method = \"PUT\"\nformat = \"ndjson\"\nmax_bytes = 2048",
        "",
    );
    let (_, outcome) = run_text(&sim, &text, dir.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let stats = rx.stats();
    assert!(stats.largest_body <= 2048, "{stats:?}");
    assert!(
        stats.batches > 100 / 20,
        "byte limit cut more batches than the record limit would: {stats:?}"
    );
    assert_eq!(stats.methods.get("PUT"), Some(&stats.requests), "{stats:?}");
    assert_each_accepted_once(&rx, &ids(&sim));
    rx.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_wait_sends_partial_batches_when_records_trickle_in() {
    let sim = simulator(50, 21, None).await;
    // Each page of 10 takes 200 ms, so a 100-record batch would wait for all five.
    sim.set_faults(expense_sync::simulator::Faults {
        latency: Duration::from_millis(200),
        ..Default::default()
    });
    let rx = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), SECRET);
    let text = push_text(&sim, &rx, "wait", &secret, "max_wait = \"100ms\"", "")
        .replace("max_records = 20", "max_records = 100")
        .replace("page_size = 50", "page_size = 10");
    let (_, outcome) = run_text(&sim, &text, dir.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let stats = rx.stats();
    assert!(
        stats.batches >= 4,
        "a batch per slow page, not one at the end: {stats:?}"
    );
    assert_each_accepted_once(&rx, &ids(&sim));
    rx.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_rejected_in_the_answer_body_go_to_the_dead_letter_file() {
    let sim = simulator(120, 12, None).await;
    let rx = receiver().await;
    let all: Vec<String> = ids(&sim).into_iter().collect();
    let bad = [&all[3], &all[50], &all[51]];
    for id in bad {
        rx.reject(id, "unknown vendor");
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), SECRET);
    let text = push_text(&sim, &rx, "rejects", &secret, "format = \"ndjson\"", "");
    let (_, outcome) = run_text(&sim, &text, dir.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(outcome.exit_code(), ExitCode::Partial);
    assert_eq!(outcome.summary.rejected, 3);
    let dead = dead_letters(dir.path());
    let dead_ids: BTreeSet<&str> = dead.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(dead_ids, bad.iter().map(|s| s.as_str()).collect());
    for d in &dead {
        assert_eq!(d["status"], 200);
        assert_eq!(d["reason"], "unknown vendor");
        assert_eq!(d["record"]["id"], d["id"]);
        assert_eq!(d["idempotency_key"].as_str().unwrap().len(), 64);
    }
    let expected: BTreeSet<String> = all.iter().filter(|i| !bad.contains(i)).cloned().collect();
    assert_each_accepted_once(&rx, &expected);
    rx.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejecting_status_splits_the_batch_down_to_the_rejected_record() {
    let sim = simulator(60, 13, None).await;
    let rx = receiver().await;
    rx.set_reject_mode(RejectMode::Status(422));
    let all: Vec<String> = ids(&sim).into_iter().collect();
    rx.reject(&all[7], "amount exceeds policy");
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), SECRET);
    let text = push_text(&sim, &rx, "split", &secret, "", "");
    let (_, outcome) = run_text(&sim, &text, dir.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let dead = dead_letters(dir.path());
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["id"], all[7].as_str());
    assert_eq!(dead[0]["status"], 422);
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains("amount exceeds policy")
    );
    let expected: BTreeSet<String> = all.iter().filter(|i| **i != all[7]).cloned().collect();
    assert_each_accepted_once(&rx, &expected);
    rx.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_signing_secret_is_refused_and_nothing_is_committed() {
    let sim = simulator(40, 14, None).await;
    let rx = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "not-the-shared-secret");
    let text = push_text(&sim, &rx, "badsig", &secret, "", "[incremental]\n");
    let (p, outcome) = run_text(&sim, &text, dir.path()).await;
    let err = outcome.error.as_ref().expect("the run fails").to_string();
    assert_eq!(outcome.exit_code(), ExitCode::Sink, "{err}");
    assert!(err.contains("401") && err.contains("signature"), "{err}");
    assert!(
        !err.contains("not-the-shared-secret"),
        "secret leaked: {err}"
    );
    assert!(rx.accepted().is_empty());
    assert!(rx.stats().bad_signatures >= 1);
    // State did not advance: the next run starts from the beginning again.
    if let Ok(text) = std::fs::read_to_string(p.state_path(dir.path())) {
        let state: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(state["watermark"], Value::Null, "{text}");
    }

    // With the right secret, the next run delivers everything.
    let secret = secret_file(dir.path(), SECRET);
    let text = push_text(&sim, &rx, "badsig", &secret, "", "[incremental]\n");
    let (p, outcome) = run_text(&sim, &text, dir.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_each_accepted_once(&rx, &ids(&sim));
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(p.state_path(dir.path())).unwrap()).unwrap();
    assert!(state["watermark"].is_string(), "{state}");
    rx.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn push_settings_are_checked_with_their_keys() {
    let sim = simulator(1, 1, None).await;
    let rx = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), SECRET);
    let text = push_text(&sim, &rx, "bad", &secret, "reject_statuses = [401]", "")
        .replace("max_records = 20", "max_records = 0")
        .replace("\"X-Tenant\" = \"acme\"", "\"idempotency-key\" = \"fixed\"")
        .replace(
            &format!("signing_secret = {{ file = \"{}\" }}", secret.display()),
            "signing_secret = \"inline-secret\"",
        );
    let err = expense_sync::config::load_str(&text, Path::new("bad.toml")).unwrap_err();
    let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "sinks[0].max_records",
            "sinks[0].reject_statuses",
            "sinks[0].headers.idempotency-key",
            "sinks[0].signing_secret"
        ],
        "{err}"
    );
    assert!(!err.to_string().contains("inline-secret"), "{err}");

    // With [writeback], the push must name records by the expense id.
    let text = push_text(&sim, &rx, "wb", &secret, "id_column = \"expense\"", "")
        + "\n[writeback]\nurl = \"https://erp.example.com/{id}\"\n";
    let err = expense_sync::config::load_str(&text, Path::new("wb.toml")).unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!(err.problems[0].key, "sinks[0].id_column");
    rx.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writeback_marks_exactly_the_exported_expenses() {
    let sim = simulator(200, 15, None).await;
    let rx = receiver().await;
    let before = truth_by_id(&sim);
    // Export only approved-and-later expenses, so some are not exported at all.
    let exported: BTreeSet<String> = before
        .iter()
        .filter(|(_, e)| ["PAYMENT_PROCESSING", "PAID"].contains(&e["state"].as_str().unwrap()))
        .map(|(id, _)| id.clone())
        .collect();
    assert!(exported.len() > 5 && exported.len() < 200);
    let rejected = exported.iter().next().unwrap().clone();
    rx.reject(&rejected, "no such cost centre");
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), SECRET);
    let text = push_text(&sim, &rx, "wb", &secret, "", "").replace(
        "concurrency = 4",
        "concurrency = 4\nfilters = { state = \"in.(PAYMENT_PROCESSING,PAID)\" }",
    ) + "\n[writeback]\nurl = \"https://erp.example.com/bills?expense={id}\"\nbatch_size = 7\n";
    let (_, outcome) = run_text(&sim, &text, dir.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let wb = outcome.summary.writeback.clone().expect("write-back ran");
    assert_eq!(wb.failed, None);
    assert_eq!(wb.complete as usize, exported.len() - 1);
    assert_eq!(wb.error, 1);

    let after = truth_by_id(&sim);
    for (id, e) in &after {
        let summary = &e["accounting_export_summary"];
        if *id == rejected {
            assert_eq!(summary["state"], "ERROR");
            assert_eq!(summary["error_type"], "ACCOUNTING_INTEGRATION_ERROR");
        } else if exported.contains(id) {
            assert_eq!(summary["state"], "COMPLETE", "{id}");
            assert_eq!(
                summary["url"],
                format!("https://erp.example.com/bills?expense={id}")
            );
        } else {
            assert_eq!(
                summary, &before[id]["accounting_export_summary"],
                "{id} was touched"
            );
        }
    }
    rx.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_write_back_leaves_it_to_the_next_run() {
    let sim = simulator(60, 20, None).await;
    let rx = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), SECRET);
    let file = dir.path().join("wbcrash.toml");
    let text = push_text(&sim, &rx, "wbcrash", &secret, "", "[incremental]\n")
        + "\n[writeback]\nurl = \"https://erp.example.com/{id}\"\n";
    std::fs::write(&file, text).unwrap();
    let exported_state = |sim: &Simulator| -> Vec<Value> {
        truth_by_id(sim)
            .into_values()
            .map(|e| e["accounting_export_summary"]["state"].clone())
            .collect()
    };
    let before = exported_state(&sim);

    // Abort (as a crash would) right after the commit, before any write-back.
    let out = spawn_bin_env(&file, &sim, &[("EXPENSE_SYNC_FAILPOINT", "after-commit")])
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), None, "aborted by the failpoint");
    assert_each_accepted_once(&rx, &ids(&sim));
    assert_eq!(exported_state(&sim), before, "nothing was marked yet");
    let plans: Vec<PathBuf> = common::files_in(dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".writeback.jsonl"))
        .collect();
    assert_eq!(
        plans.len(),
        1,
        "the committed write-back plan survives: {plans:?}"
    );

    // The next run has nothing new to push but carries out the pending write-back.
    let out = spawn_bin(&file, &sim).wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["records_out"], 0);
    assert_eq!(summary["writeback"]["complete"], 60, "{summary}");
    assert!(exported_state(&sim).iter().all(|s| s == "COMPLETE"));
    assert!(!plans[0].exists(), "the plan is removed once carried out");
    assert_eq!(rx.stats().batches, 3, "nothing was pushed twice");
    rx.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writeback_skips_expenses_deleted_since_the_export() {
    use expense_sync::auth::FyleSession;
    use expense_sync::http::{HttpClient, HttpConfig};
    use expense_sync::sources::fyle::{FyleClient, WriteBackConfig, write_back};
    use std::sync::Arc;

    let sim = simulator(80, 16, None).await;
    let exported: Vec<String> = ids(&sim).into_iter().take(30).collect();
    let gone = sim.delete(40);
    let gone_exported: BTreeSet<&String> = exported.iter().filter(|i| gone.contains(i)).collect();
    assert!(
        !gone_exported.is_empty(),
        "the seed must delete some exported expenses"
    );
    let http = HttpClient::new(&HttpConfig::default()).unwrap();
    let client = FyleClient::new(Arc::new(FyleSession::new(http, credentials(&sim))));
    let cfg: WriteBackConfig = toml::from_str("url = \"https://erp.example.com/{id}\"").unwrap();
    let summary = write_back(&client, &cfg, &exported, &Default::default()).await;
    assert_eq!(summary.failed, None);
    assert_eq!(summary.skipped_deleted as usize, gone_exported.len());
    assert_eq!(
        summary.complete as usize,
        exported.len() - gone_exported.len()
    );
    let after = truth_by_id(&sim);
    for id in exported.iter().filter(|i| !gone.contains(i)) {
        assert_eq!(after[id]["accounting_export_summary"]["state"], "COMPLETE");
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_push_then_rerun_delivers_each_record_once() {
    let sim = simulator(400, 17, None).await;
    let rx = receiver().await;
    // Slow answers make the push last a few seconds, so the kill lands mid-push.
    rx.set_latency(Duration::from_millis(120));
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), SECRET);
    let file = dir.path().join("killed.toml");
    std::fs::write(
        &file,
        push_text(&sim, &rx, "killed", &secret, "", "[incremental]\n"),
    )
    .unwrap();
    let mut child = spawn_bin(&file, &sim);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rx.stats().batches < 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "the push never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.start_kill().unwrap(); // SIGKILL
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), None, "killed by a signal, not finished");
    let before_rerun = rx.stats().batches;
    assert!(
        before_rerun < 20,
        "the kill landed mid-push ({before_rerun} of 20 batches)"
    );

    let out = spawn_bin(&file, &sim).wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_each_accepted_once(&rx, &ids(&sim));
    let stats = rx.stats();
    // The rerun skipped the batches the killed run had journaled as
    // acknowledged; at most the one in flight at the kill came again, with
    // the same key (batches stay aligned on max_records).
    assert!(
        stats.duplicate_batches <= 1,
        "{stats:?}, {before_rerun} batches before the rerun"
    );
    assert_eq!(stats.batches, 20);

    // A third run finds nothing new and sends nothing.
    let third = spawn_bin(&file, &sim).wait_with_output().await.unwrap();
    assert!(third.status.success());
    assert_eq!(rx.stats().requests, stats.requests);
    rx.shutdown().await;
    sim.shutdown().await;
}

fn spawn_bin(pipeline: &Path, sim: &Simulator) -> tokio::process::Child {
    spawn_bin_env(pipeline, sim, &[])
}

fn spawn_bin_env(pipeline: &Path, sim: &Simulator, env: &[(&str, &str)]) -> tokio::process::Child {
    let c = sim.credentials();
    tokio::process::Command::new(BIN)
        .arg("run")
        .arg(pipeline)
        .current_dir(pipeline.parent().unwrap())
        .env("FYLE_CLIENT_ID", &c.client_id)
        .env("FYLE_CLIENT_SECRET", &c.client_secret)
        .env("FYLE_REFRESH_TOKEN", &c.refresh_token)
        .env_remove("EXPENSE_SYNC_LOG")
        .env_remove("EXPENSE_SYNC_FAILPOINT")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_client_credentials_from_the_vault_authenticate_the_push_and_survive_expiry() {
    use expense_sync::auth::vault::{GrantKind, Profile};
    use expense_sync::auth::{Connection, Vault, VaultError};

    let sim = simulator(120, 19, None).await;
    // The receiver accepts only access tokens the simulator's accounts server
    // issued and still honours.
    let rx = Receiver::start(ReceiverConfig {
        secret: Some(SECRET.into()),
        accept_token: Some(sim.token_checker()),
        ..ReceiverConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vault_path = dir.path().join("vault.json");
    let vault = Vault::open(&vault_path);
    let c = sim.credentials();
    let mut erp = Connection::new(
        Profile::Oauth2,
        GrantKind::ClientCredentials,
        &sim.accounts_url(),
        &c.client_id,
    );
    erp.client_secret = Some(secrecy::SecretString::from(c.client_secret.clone()));
    vault
        .update(|all| {
            all.insert("erp".to_string(), erp);
            Ok::<_, VaultError>(())
        })
        .unwrap();

    let secret = secret_file(dir.path(), SECRET);
    let sink = format!(
        "auth = {{ type = \"vault\", connection = \"erp\", vault = \"{}\" }}",
        vault_path.display()
    );
    let text = push_text(&sim, &rx, "cc", &secret, &sink, "");
    // Every token issued so far dies in the middle of the push: the sink gets a
    // 401, fetches a new token through the vault and retries the batch.
    let (sim_ref, rx_ref) = (&sim, &rx);
    let expire = async {
        while rx_ref.accepted().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        sim_ref.expire_tokens();
    };
    rx.set_latency(std::time::Duration::from_millis(30));
    let ((_, outcome), ()) = tokio::join!(run_text(&sim, &text, dir.path()), expire);
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_each_accepted_once(&rx, &ids(&sim));
    let stats = rx.stats();
    assert!(
        stats.requests > stats.batches,
        "a batch should have met the expired token and been retried: {stats:?}"
    );

    // Without a usable connection the push fails and nothing is committed.
    let bad = text
        .replace("connection = \"erp\"", "connection = \"nobody\"")
        .replace("name = \"cc\"", "name = \"cc2\"");
    let (_, outcome) = run_text(&sim, &bad, dir.path()).await;
    let err = outcome.error.expect("unknown connection fails").to_string();
    assert!(err.contains("nobody"), "{err}");
    rx.shutdown().await;
    sim.shutdown().await;
}
