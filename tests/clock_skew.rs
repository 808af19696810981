//! Clock skew between this machine and the data server: windows follow the
//! server's clock (which stamps `updated_at`), and the state never moves past
//! an instant the server's clock has not reached.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::*;
use expense_sync::ExitCode;
use expense_sync::simulator::{Faults, SimConfig, Simulator};

/// An incremental pipeline writing one CSV per run with the exact cursor text.
fn skew_text(sim: &Simulator, name: &str) -> String {
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
initial_backoff = "20ms"

[source]
type = "fyle"
resource = "expenses"
safety_lag = "2s"
page_size = 50

[incremental]
lookback = "1s"

[[columns]]
name = "id"
path = "id"

[[columns]]
name = "updated_at"
path = "updated_at"

[[sinks]]
type = "csv"
path = "{{pipeline}}-{{run_id}}.csv"
"#,
        accounts = sim.accounts_url()
    )
}

async fn skewed_simulator(expenses: usize, seed: u64, offset_secs: i64) -> Simulator {
    Simulator::start(SimConfig {
        seed,
        expenses,
        rate_limit: None,
        clock_offset: chrono::TimeDelta::seconds(offset_secs),
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts")
}

/// Every (id, updated_at) of every committed CSV in `dir`, with its count.
fn committed_versions(dir: &Path) -> BTreeMap<(String, String), usize> {
    let mut seen = BTreeMap::new();
    for f in files_in(dir) {
        if f.extension().is_some_and(|e| e == "csv") {
            for r in read_csv(&f).1 {
                *seen.entry((r[0].clone(), r[1].clone())).or_insert(0) += 1;
            }
        }
    }
    seen
}

fn truth_versions(sim: &Simulator) -> BTreeSet<(String, String)> {
    sim.ground_truth("expenses")
        .into_iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["updated_at"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_clock_ahead_of_the_server_loses_no_version_across_incremental_runs() {
    // The server's clock is 30 s behind this machine's: far more than the
    // lookback plus the safety lag.
    let sim = skewed_simulator(600, 71, -30).await;
    let out = tempfile::tempdir().unwrap();
    let text = skew_text(&sim, "skew");
    let (_, first) = run_text(&sim, &text, out.path()).await;
    assert!(first.error.is_none(), "{:?}", first.error);
    assert_eq!(first.summary.records_out, 600);

    // Users keep editing, during the runs and between them.
    sim.set_faults(Faults {
        mutations_per_sec: 60,
        ..Faults::default()
    });
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (_, o) = run_text(&sim, &text, out.path()).await;
        assert!(o.error.is_none(), "{:?}", o.error);
    }
    sim.set_faults(Faults::default());
    // Past the safety lag (and the Date header's one-second precision) on the
    // server's clock, a last run must pick up everything.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (_, last) = run_text(&sim, &text, out.path()).await;
    assert!(last.error.is_none(), "{:?}", last.error);

    let seen = committed_versions(out.path());
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "versions delivered twice: {doubled:?}");
    let delivered: BTreeSet<_> = seen.into_keys().collect();
    let truth = truth_versions(&sim);
    let missing: Vec<_> = truth.difference(&delivered).collect();
    assert!(
        missing.is_empty(),
        "{} of {} current versions never delivered, e.g. {:?}",
        missing.len(),
        truth.len(),
        &missing[..missing.len().min(3)]
    );
    // The windows ended by the server's clock, not by this machine's.
    let window_to = last.summary.window_to.unwrap();
    assert!(
        window_to < chrono::Utc::now() - chrono::TimeDelta::seconds(25),
        "window ended at {window_to}, by this machine's clock"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_clock_that_falls_behind_during_a_run_stops_the_state_from_advancing() {
    let sim = skewed_simulator(600, 72, 0).await;
    let out = tempfile::tempdir().unwrap();
    let text = skew_text(&sim, "stepback");
    // Slow pages, so the clock can be moved while the run pages.
    sim.set_faults(Faults {
        latency: Duration::from_millis(100),
        ..Faults::default()
    });
    let run = {
        let (sim, text, dir) = (sim.clone(), text.clone(), out.path().to_path_buf());
        tokio::spawn(async move { run_text(&sim, &text, &dir).await.1 })
    };
    // Once the run has read the server's clock and planned its window, the
    // server's clock steps back a minute (as a bad NTP correction would).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !sim
        .request_log()
        .iter()
        .any(|r| r.path == "/platform/v1/admin/expenses")
    {
        assert!(std::time::Instant::now() < deadline, "the run never paged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sim.set_clock_offset(chrono::TimeDelta::seconds(-60));
    let o = run.await.unwrap();
    let err = o.error.as_ref().expect("the run must not commit");
    let msg = err.to_string();
    assert_eq!(o.exit_code(), ExitCode::Source, "{msg}");
    for part in ["behind", "NTP", "source.safety_lag", "not advanced"] {
        assert!(msg.contains(part), "`{part}` missing from: {msg}");
    }
    assert!(
        committed_versions(out.path()).is_empty(),
        "files were committed"
    );

    // With the clocks agreeing again, the next run exports everything once.
    sim.set_faults(Faults::default());
    sim.set_clock_offset(chrono::TimeDelta::zero());
    let (_, o) = run_text(&sim, &text, out.path()).await;
    assert!(o.error.is_none(), "{:?}", o.error);
    assert_eq!(o.summary.records_out, 600);
    sim.shutdown().await;
}
