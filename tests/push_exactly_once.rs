//! Pushes against receivers that behave like the real world, not like our
//! client expects: redirects, answers lost after the batch was applied,
//! unreadable 2xx bodies, and a SIGKILL with the source changing before the
//! rerun. Counted at the receiver: every pushed record version is applied
//! exactly once, and nothing is acknowledged that was not received.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{TEST_COLUMNS, run_text, simulator, truth_by_id};
use expense_sync::ExitCode;
use expense_sync::simulator::Simulator;
use expense_sync::simulator::receiver::{Fault, Receiver, ReceiverConfig, Redirect};
use expense_sync::sinks::http::record_key;

const BIN: &str = env!("CARGO_BIN_EXE_expense-sync");
const SECRET: &str = "whsec-exactly-once-1c9e";
const API_KEY: &str = "erp-api-key-do-not-leak-5a1f";

/// A pipeline pushing every expense to `url`, signed, with an `X-Api-Key` secret header.
fn push_text(sim: &Simulator, url: &str, name: &str, dir: &Path, sink_extra: &str) -> String {
    let secret = dir.join("signing.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let key = dir.join("api.key");
    std::fs::write(&key, API_KEY).unwrap();
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

{TEST_COLUMNS}

[[sinks]]
type = "http"
url = "{url}"
max_records = 20
signing_secret = {{ file = "{secret}" }}
auth = {{ type = "header", name = "X-Api-Key", value = {{ file = "{key}" }} }}
{sink_extra}

[sinks.http]
requests_per_second = 500
request_timeout = "1s"
initial_backoff = "20ms"
max_backoff = "500ms"
max_retries = 6

[incremental]
"#,
        accounts = sim.accounts_url(),
        secret = secret.display(),
        key = key.display(),
    )
}

async fn receiver_with(redirect: Option<Redirect>, record_key_field: Option<&str>) -> Receiver {
    Receiver::start(ReceiverConfig {
        secret: Some(SECRET.into()),
        redirect,
        record_key_field: record_key_field.map(str::to_string),
        ..ReceiverConfig::default()
    })
    .await
    .unwrap()
}

fn state_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.state.json"))
}

/// The watermark in the state file, if the state was ever advanced.
fn watermark(dir: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(state_file(dir, name)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["watermark"].as_str().map(str::to_string)
}

fn ids(sim: &Simulator) -> BTreeSet<String> {
    truth_by_id(sim).into_keys().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_301_answer_to_the_push_fails_the_run_and_acknowledges_nothing() {
    let sim = simulator(60, 31, None).await;
    let rx = receiver_with(
        Some(Redirect {
            status: 301,
            location: "/v2/expenses".into(),
        }),
        None,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let text = push_text(&sim, rx.url(), "moved", dir.path(), "");
    let (_, outcome) = run_text(&sim, &text, dir.path()).await;
    let err = outcome
        .error
        .as_ref()
        .expect("a redirect is a delivery failure");
    assert_eq!(outcome.exit_code(), ExitCode::Sink);
    let msg = err.to_string();
    assert!(msg.contains("301") && msg.contains("/v2/expenses"), "{msg}");
    assert!(rx.accepted().is_empty());
    assert_eq!(rx.stats().methods.get("GET"), None, "{:?}", rx.stats());
    assert_eq!(outcome.summary.outputs.len(), 0);
    assert_eq!(watermark(dir.path(), "moved"), None, "state not advanced");
    rx.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_307_to_the_same_origin_resends_the_same_signed_body_and_key() {
    let sim = simulator(60, 32, None).await;
    let rx = receiver_with(
        Some(Redirect {
            status: 307,
            location: "/v2/expenses".into(),
        }),
        None,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let text = push_text(&sim, rx.url(), "moved307", dir.path(), "");
    let (_, outcome) = run_text(&sim, &text, dir.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let stats = rx.stats();
    // Every batch was redirected once and applied at the new path: the
    // signature over the body verified and the Idempotency-Key was there.
    assert_eq!(stats.redirects, 3, "{stats:?}");
    assert_eq!(stats.batches, 3, "{stats:?}");
    assert_eq!(stats.bad_signatures, 0);
    assert_eq!(stats.methods.get("POST"), Some(&6));
    assert_eq!(stats.headers_seen.get("x-api-key"), Some(&6));
    let counts = rx.accept_counts();
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    assert_eq!(counts.into_keys().collect::<BTreeSet<_>>(), ids(&sim));
    assert!(watermark(dir.path(), "moved307").is_some());
    rx.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_host_never_carries_the_secret_header() {
    let sim = simulator(40, 33, None).await;
    let elsewhere = receiver_with(None, None).await;
    for status in [307, 308, 302] {
        let rx = receiver_with(
            Some(Redirect {
                status,
                location: elsewhere.url().to_string(),
            }),
            None,
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let text = push_text(&sim, rx.url(), "offsite", dir.path(), "");
        let (_, outcome) = run_text(&sim, &text, dir.path()).await;
        let err = outcome
            .error
            .as_ref()
            .expect("a cross-origin redirect fails");
        let msg = err.to_string();
        assert!(
            msg.contains(&status.to_string()) && msg.contains(elsewhere.url()),
            "{msg}"
        );
        assert!(!msg.contains(API_KEY), "{msg}");
        assert_eq!(watermark(dir.path(), "offsite"), None);
        rx.shutdown().await;
    }
    let seen = elsewhere.stats();
    assert_eq!(seen.headers_seen.get("x-api-key"), None, "{seen:?}");
    assert_eq!(seen.requests, 0, "nothing follows a redirect off-site");
    elsewhere.shutdown().await;
    sim.shutdown().await;
}

/// No record key was applied twice (and something was applied at all).
fn assert_no_doubles(counts: &HashMap<String, u32>) {
    assert!(!counts.is_empty());
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "applied more than once: {doubled:?}");
}

/// The per-record keys of the simulator's current expense versions.
fn version_keys(sim: &Simulator) -> BTreeSet<String> {
    truth_by_id(sim)
        .values()
        .map(|r| record_key(r["id"].as_str().unwrap(), r["updated_at"].as_str().unwrap()))
        .collect()
}

fn spawn_bin(pipeline: &Path, sim: &Simulator, failpoint: Option<&str>) -> tokio::process::Child {
    let c = sim.credentials();
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("run")
        .arg(pipeline)
        .current_dir(pipeline.parent().unwrap())
        .env("FYLE_CLIENT_ID", &c.client_id)
        .env("FYLE_CLIENT_SECRET", &c.client_secret)
        .env("FYLE_REFRESH_TOKEN", &c.refresh_token)
        .env_remove("EXPENSE_SYNC_LOG")
        .env_remove("EXPENSE_SYNC_FAILPOINT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(f) = failpoint {
        cmd.env("EXPENSE_SYNC_FAILPOINT", f);
    }
    cmd.spawn().unwrap()
}

/// Where the binary, run in `dir`, keeps the journal (default output dir `out`).
fn journal_file(dir: &Path, name: &str) -> PathBuf {
    dir.join("out")
        .join(format!("{name}.state.json.push-journal.jsonl"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_push_then_changed_source_then_rerun_applies_every_version_once() {
    let sim = simulator(400, 34, None).await;
    // De-duplicates per record key, as the README tells receivers to.
    let rx = receiver_with(None, Some("_idempotency_key")).await;
    rx.set_latency(Duration::from_millis(100));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("killed.toml");
    std::fs::write(&file, push_text(&sim, rx.url(), "killed", dir.path(), "")).unwrap();
    let before = version_keys(&sim);

    let mut child = spawn_bin(&file, &sim, None);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while rx.stats().batches < 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "the push never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.start_kill().unwrap(); // SIGKILL
    assert_eq!(
        child.wait().await.unwrap().code(),
        None,
        "killed by a signal"
    );
    let applied_before_rerun = rx.applied_key_counts().len();
    assert!(
        (100..400).contains(&applied_before_rerun),
        "the kill landed mid-push: {applied_before_rerun}"
    );
    assert!(journal_file(dir.path(), "killed").exists());

    // Records change between the killed run and its rerun: batches shift.
    sim.mutate(80);
    rx.set_latency(Duration::ZERO);
    let out = spawn_bin(&file, &sim, None)
        .wait_with_output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let applied = rx.applied_key_counts();
    assert_no_doubles(&applied);
    let keys: BTreeSet<String> = applied.keys().cloned().collect();
    let after = version_keys(&sim);
    let missing: Vec<_> = after.difference(&keys).take(3).collect();
    assert!(
        missing.is_empty(),
        "final versions never applied: {missing:?}"
    );
    assert!(
        keys.iter().all(|k| before.contains(k) || after.contains(k)),
        "only versions that existed were pushed"
    );
    // The rerun skipped what the killed run had acknowledged (journal): at
    // most the batch in flight at the kill came again.
    let stats = rx.stats();
    assert!(
        stats.duplicate_records <= 20,
        "{} records re-sent: {stats:?}",
        stats.duplicate_records
    );
    assert!(
        !journal_file(dir.path(), "killed").exists(),
        "retired at the commit"
    );
    rx.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_journal_removal_neither_skips_new_versions_nor_resends_old() {
    let sim = simulator(120, 35, None).await;
    // Only batch keys: a re-sent record would show as applied twice.
    let rx = receiver_with(None, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("late.toml");
    std::fs::write(&file, push_text(&sim, rx.url(), "late", dir.path(), "")).unwrap();
    let before = version_keys(&sim);

    let out = spawn_bin(&file, &sim, Some("after-commit"))
        .wait_with_output()
        .await
        .unwrap();
    assert!(!out.status.success(), "aborted at the failpoint");
    assert!(
        watermark(&dir.path().join("out"), "late").is_some(),
        "it had committed"
    );
    assert!(
        journal_file(dir.path(), "late").exists(),
        "the crash left the journal behind"
    );

    sim.mutate(30);
    let after = version_keys(&sim);
    let out = spawn_bin(&file, &sim, None)
        .wait_with_output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let applied = rx.applied_key_counts();
    assert_no_doubles(&applied);
    let keys: BTreeSet<String> = applied.keys().cloned().collect();
    let expected: BTreeSet<String> = before.union(&after).cloned().collect();
    assert_eq!(keys.len(), 150, "120 versions, then 30 new ones");
    assert_eq!(keys, expected);
    assert!(!journal_file(dir.path(), "late").exists());
    rx.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_lost_or_unreadable_after_the_batch_was_applied_are_retried_without_doubles() {
    let sim = simulator(100, 36, None).await;
    // Only batch keys, so a batch applied twice would show.
    let rx = receiver_with(None, None).await;
    let mut truth: Vec<_> = truth_by_id(&sim).into_values().collect();
    truth.sort_by(|a, b| {
        (a["updated_at"].as_str(), a["id"].as_str())
            .cmp(&(b["updated_at"].as_str(), b["id"].as_str()))
    });
    // A record of the first batch is refused in the answer the client cannot read.
    let refused = truth[3]["id"].as_str().unwrap().to_string();
    rx.reject(&refused, "unknown vendor");
    rx.inject([
        Fault::UnreadableAnswer,
        Fault::SlowAnswer(Duration::from_millis(1500)),
        Fault::TruncatedAnswer,
        Fault::UnreadableAnswer,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let text = push_text(&sim, rx.url(), "lossy", dir.path(), "");
    let (_, outcome) = run_text(&sim, &text, dir.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(outcome.exit_code(), ExitCode::Partial, "one record refused");

    let stats = rx.stats();
    assert_eq!(stats.faults, 4);
    assert!(
        stats.duplicate_batches >= 4,
        "each retry was recognised: {stats:?}"
    );
    assert_eq!(stats.batches, 5, "100 records in batches of 20: {stats:?}");
    let applied = rx.applied_key_counts();
    assert_no_doubles(&applied);
    assert_eq!(applied.len(), 99);
    let counts = rx.accept_counts();
    assert!(!counts.contains_key(&refused));
    // The refusal in the unreadable answer was read on the retry, not lost.
    let dead: Vec<serde_json::Value> = common::files_in(dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".dead-letter.jsonl"))
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["id"], refused.as_str());
    assert_eq!(dead[0]["reason"], "unknown vendor");
    rx.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_a_bearer_token_follows_a_same_origin_307_but_never_another_host() {
    use expense_sync::http::{HttpClient, HttpConfig, HttpError, Request};
    use secrecy::SecretString;

    let http = HttpClient::new(&HttpConfig::default()).unwrap();
    let token = SecretString::from("fyle-access-token-secret".to_string());
    let elsewhere = receiver_with(None, None).await;
    let offsite = receiver_with(
        Some(Redirect {
            status: 307,
            location: elsewhere.url().to_string(),
        }),
        None,
    )
    .await;
    let req = Request::get(url::Url::parse(offsite.url()).unwrap()).with_bearer(token.clone());
    match http.execute(&req).await {
        Err(e @ HttpError::Redirected { status: 307, .. }) => {
            assert!(e.to_string().contains(elsewhere.url()), "{e}");
            assert!(!e.to_string().contains("fyle-access-token-secret"));
        }
        other => panic!("expected a refused redirect, got {other:?}"),
    }
    assert_eq!(
        elsewhere.stats().requests,
        0,
        "the bearer never left the host"
    );

    let moved = receiver_with(
        Some(Redirect {
            status: 307,
            location: "/v2/expenses?offset=0".into(),
        }),
        None,
    )
    .await;
    let req = Request::get(url::Url::parse(moved.url()).unwrap()).with_bearer(token);
    let resp = http
        .execute(&req)
        .await
        .expect("same-origin 307 is followed");
    assert_eq!(resp.json, serde_json::json!([]));
    let stats = moved.stats();
    assert_eq!((stats.redirects, stats.requests), (1, 2));
    assert_eq!(stats.headers_seen.get("authorization"), Some(&2));
    for r in [elsewhere, offsite, moved] {
        r.shutdown().await;
    }
}
