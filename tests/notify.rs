//! `[[notify]]`: after a run — committed, partial or failed — the summary is
//! posted to a RingCentral incoming webhook (an Adaptive Card) or a generic
//! JSON webhook; a failing webhook never changes the exit code. Runs the real
//! binary against the Fyle simulator and the RingCentral simulator's webhook.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;
use expense_sync::simulator::ringcentral::{RcSimConfig, RcSimulator};

const BIN: &str = env!("CARGO_BIN_EXE_expense-sync");

async fn run_bin(file: &Path, cwd: &Path, env: &[(&str, String)]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["run", file.to_str().unwrap(), "--output-dir", "o"])
        .current_dir(cwd)
        .env_remove("EXPENSE_SYNC_LOG")
        .env_remove("FYLE_ACCOUNTS_URL")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
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

fn env_for(sim: &expense_sync::simulator::Simulator, hook: &str) -> Vec<(&'static str, String)> {
    let c = sim.credentials();
    vec![
        ("FYLE_CLIENT_ID", c.client_id.clone()),
        ("FYLE_CLIENT_SECRET", c.client_secret.clone()),
        ("FYLE_REFRESH_TOKEN", c.refresh_token.clone()),
        ("TEAM_CHAT_WEBHOOK", hook.to_string()),
    ]
}

fn pipeline(accounts_url: &str, name: &str, kind: &str) -> String {
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

[[notify]]
kind = "{kind}"
url = {{ env = "TEAM_CHAT_WEBHOOK" }}
"#
    )
}

/// The Adaptive Card's facts as title → value.
fn facts(body: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    let card = &body["attachments"][0];
    assert_eq!(card["type"], "AdaptiveCard", "{body}");
    card["body"][1]["facts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["title"].as_str().unwrap().to_string(),
                f["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_run_posts_a_card_with_counts_files_and_status() {
    let sim = simulator(25, 61, None).await;
    let rc = RcSimulator::start(RcSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.toml");
    std::fs::write(&file, pipeline(&sim.accounts_url(), "ok", "ringcentral")).unwrap();
    let o = run_bin(&file, dir.path(), &env_for(&sim, &rc.webhook_url("tok1"))).await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let msgs = rc.webhook_messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].token, "tok1");
    assert!(msgs[0].content_type.starts_with("application/json"));
    let f = facts(&msgs[0].body);
    assert_eq!(f["Status"], "committed (exit 0)", "{f:?}");
    assert_eq!(f["Records"], "25 in, 25 out", "{f:?}");
    assert!(
        f["csv sink"].starts_with("25 rows → ") && f["csv sink"].ends_with("ok.csv"),
        "{f:?}"
    );
    assert!(
        msgs[0].body["title"]
            .as_str()
            .unwrap()
            .contains("ok committed")
    );
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["notify"]["sent"], 1, "{s}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_run_card_says_partial_and_how_many_were_quarantined() {
    let sim = simulator(20, 62, None).await;
    let rc = RcSimulator::start(RcSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("partial.toml");
    let text_in = pipeline(&sim.accounts_url(), "partial", "ringcentral").replace(
        "name = \"merchant\"\npath = \"merchant\"",
        "name = \"merchant\"\npath = \"merchant\"\ntype = \"integer\"",
    );
    std::fs::write(&file, text_in).unwrap();
    let o = run_bin(&file, dir.path(), &env_for(&sim, &rc.webhook_url("t"))).await;
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    let f = facts(&rc.webhook_messages()[0].body);
    assert_eq!(f["Status"], "partial (exit 6)", "{f:?}");
    assert!(f["Problems"].contains("quarantined"), "{f:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_run_posts_the_error_to_a_generic_webhook() {
    let sim = simulator(10, 63, None).await;
    let rc = RcSimulator::start(RcSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("refused.toml");
    let text_in = pipeline(&sim.accounts_url(), "refused", "webhook").replace(
        "safety_lag = \"0s\"",
        "safety_lag = \"0s\"\nfilters = { no_such_column = \"eq.1\" }",
    );
    std::fs::write(&file, text_in).unwrap();
    let o = run_bin(&file, dir.path(), &env_for(&sim, &rc.webhook_url("g"))).await;
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let body = &rc.webhook_messages()[0].body;
    assert_eq!(body["summary"]["status"], "failed", "{body}");
    assert_eq!(body["summary"]["exit_code"], 4, "{body}");
    assert!(
        body["summary"]["error"]
            .as_str()
            .unwrap()
            .contains("HTTP 400"),
        "{body}"
    );
    assert!(body["text"].as_str().unwrap().contains("refused failed"));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_webhook_is_counted_and_leaves_the_exit_code_unchanged() {
    let sim = simulator(15, 64, None).await;
    let rc = RcSimulator::start(RcSimConfig {
        webhook_status: Some(400),
        ..RcSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hookfail.toml");
    std::fs::write(
        &file,
        pipeline(&sim.accounts_url(), "hookfail", "ringcentral"),
    )
    .unwrap();
    let hook = rc.webhook_url("secret-token-xyz");
    let o = run_bin(&file, dir.path(), &env_for(&sim, &hook)).await;
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("notification failed"), "{t}");
    assert!(
        !t.contains("secret-token-xyz"),
        "the webhook URL is a secret: {t}"
    );
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["status"], "ok");
    assert_eq!(s["notify"]["failed"], 1, "{s}");
    sim.shutdown().await;
}
