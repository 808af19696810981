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
    let err = outcome.error.as_ref().expect("a redirect is a delivery failure");
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
        let err = outcome.error.as_ref().expect("a cross-origin redirect fails");
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

/// Ensures the test setup counted what it meant to: at least one request each.
fn assert_no_doubles(counts: &HashMap<String, u32>) {
    assert!(!counts.is_empty());
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "applied more than once: {doubled:?}");
}
