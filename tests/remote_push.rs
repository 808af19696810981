//! Pushes to receivers and write-back to Fyle with outputs and state in
//! object storage (a real SeaweedFS, started per test), run by the real
//! binary: the push journal and the write-back plans live in the store, so a
//! stateless pod needs no volume.

mod common;

use std::collections::BTreeSet;

use common::s3::S3Server;
use common::*;
use expense_sync::simulator::receiver::{Receiver, ReceiverConfig};
use expense_sync::simulator::{Faults, Simulator};
use expense_sync::sinks::http::record_key;

use common::store::{leftovers, run_bin, stderr};

/// An incremental pipeline with outputs in `output_dir` (a CSV per run) and `extra` appended.
fn pipeline(sim: &Simulator, name: &str, output_dir: &str, extra: &str) -> String {
    incremental_text(sim, name, "page_size = 50").replace(
        "[pipeline]\n",
        &format!("[pipeline]\noutput_dir = \"{output_dir}\"\n"),
    ) + extra
}

/// An http sink to `url`, one batch of 20 in flight at a time.
fn http_sink(url: &str) -> String {
    format!(
        r#"
[[sinks]]
type = "http"
url = "{url}"
max_records = 20
concurrency = 1

[sinks.http]
requests_per_second = 500
request_timeout = "2s"
initial_backoff = "20ms"
max_backoff = "500ms"
max_retries = 6
"#
    )
}

/// The per-record keys of the simulator's current expense versions.
fn version_keys(sim: &Simulator) -> BTreeSet<String> {
    truth_by_id(sim)
        .values()
        .map(|r| record_key(r["id"].as_str().unwrap(), r["updated_at"].as_str().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_push_with_outputs_in_object_storage_delivers_every_record_once_across_a_crash() {
    let s3 = S3Server::start("pushes").await;
    let sim = simulator(200, 41, None).await;
    // Only batch keys: a record sent again in a batch cut differently would be applied twice.
    let rx = Receiver::start(ReceiverConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    let text = pipeline(&sim, "erp", &s3.url("acme/out"), &http_sink(rx.url()));
    std::fs::write(&file, text).unwrap();
    let before = version_keys(&sim);
    let journal = "acme/out/erp.state.json.push-journal";

    // Dies (as a crash would) right after the third acknowledged batch was journaled.
    let ttl = ("EXPENSE_SYNC_LEASE_TTL", "2s");
    let o = run_bin(
        &file,
        &sim,
        &s3,
        &[ttl, ("EXPENSE_SYNC_FAILPOINT", "push-journaled#3")],
    )
    .await;
    assert_eq!(o.status.code(), None, "aborted: {}", stderr(&o));
    assert_eq!(rx.stats().batches, 3, "{:?}", rx.stats());
    let entries = s3.keys(journal).await;
    assert_eq!(
        entries.len(),
        3,
        "one journal object per batch: {entries:?}"
    );

    // The source changes before the rerun: batches are cut differently.
    sim.mutate(40);
    let after = version_keys(&sim);
    // The dead run's lease expires before the rerun can take the pipeline.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let o = run_bin(&file, &sim, &s3, &[ttl]).await;
    assert!(o.status.success(), "{}", stderr(&o));

    let applied = rx.applied_key_counts();
    let doubled: Vec<_> = applied.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "applied more than once: {doubled:?}");
    let keys: BTreeSet<String> = applied.keys().cloned().collect();
    let missing: Vec<_> = after.difference(&keys).take(3).collect();
    assert!(
        missing.is_empty(),
        "current versions never applied: {missing:?}"
    );
    assert!(
        keys.iter().all(|k| before.contains(k) || after.contains(k)),
        "only versions that existed were pushed"
    );
    assert_eq!(
        rx.stats().duplicate_records,
        0,
        "the rerun skipped what the journal held: {:?}",
        rx.stats()
    );
    assert!(
        s3.keys(journal).await.is_empty(),
        "the journal is removed at the commit"
    );
    assert!(leftovers(&s3, "acme/out").await.is_empty());
    let st: serde_json::Value =
        serde_json::from_slice(&s3.read("acme/out/erp.state.json").await).unwrap();
    assert!(
        st["watermark"].is_string() && st["pending"].is_null(),
        "{st}"
    );
    rx.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_commit_and_the_journal_removal_in_object_storage_resends_nothing() {
    let s3 = S3Server::start("latejournal").await;
    let sim = simulator(100, 43, None).await;
    // Only batch keys: a record re-sent would be applied twice.
    let rx = Receiver::start(ReceiverConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    let text = pipeline(&sim, "late", &s3.url("acme/out"), &http_sink(rx.url()));
    std::fs::write(&file, text).unwrap();
    let journal = "acme/out/late.state.json.push-journal";
    let before = version_keys(&sim);

    let ttl = ("EXPENSE_SYNC_LEASE_TTL", "2s");
    let o = run_bin(
        &file,
        &sim,
        &s3,
        &[ttl, ("EXPENSE_SYNC_FAILPOINT", "after-commit")],
    )
    .await;
    assert_eq!(o.status.code(), None, "aborted: {}", stderr(&o));
    let st: serde_json::Value =
        serde_json::from_slice(&s3.read("acme/out/late.state.json").await).unwrap();
    assert!(st["watermark"].is_string(), "it had committed: {st}");
    assert_eq!(
        s3.keys(journal).await.len(),
        5,
        "the crash left the journal"
    );

    // New versions after the crash: the journal of a committed run must neither
    // hide them nor make the rerun skip anything.
    sim.mutate(20);
    let after = version_keys(&sim);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let o = run_bin(&file, &sim, &s3, &[ttl]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let applied = rx.applied_key_counts();
    assert!(applied.values().all(|n| *n == 1), "{applied:?}");
    let keys: BTreeSet<String> = applied.keys().cloned().collect();
    let expected: BTreeSet<String> = before.union(&after).cloned().collect();
    assert_eq!(keys.len(), 120, "100 versions, then 20 new ones");
    assert_eq!(keys, expected);
    assert!(s3.keys(journal).await.is_empty());
    assert!(leftovers(&s3, "acme/out").await.is_empty());
    rx.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writeback_with_outputs_in_object_storage_marks_every_exported_expense_once() {
    let s3 = S3Server::start("writeback").await;
    let sim = simulator(120, 42, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    let extra =
        "\n[writeback]\nurl = \"https://erp.example.com/bills?expense={id}\"\nbatch_size = 25\n";
    std::fs::write(&file, pipeline(&sim, "wb", &s3.url("acme/out"), extra)).unwrap();
    let plans = || async {
        s3.keys("acme/out")
            .await
            .into_iter()
            .filter(|k| k.ends_with(".writeback.jsonl"))
            .collect::<Vec<_>>()
    };
    let state_of = |sim: &Simulator| -> Vec<String> {
        truth_by_id(sim)
            .into_values()
            .map(|e| {
                e["accounting_export_summary"]["state"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    let bulk_calls = |sim: &Simulator| {
        sim.request_log()
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/bulk") && r.status == 200)
            .count()
    };

    let before = state_of(&sim);
    // Fyle refuses the write-back: the export commits, the plan object stays.
    sim.set_faults(Faults {
        writeback_status: Some(403),
        ..Faults::default()
    });
    let o = run_bin(&file, &sim, &s3, &[]).await;
    assert_eq!(o.status.code(), Some(10), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["records_out"], 120, "{summary}");
    assert!(summary["writeback"]["failed"].is_string(), "{summary}");
    let pending = plans().await;
    assert_eq!(
        pending.len(),
        1,
        "the committed plan waits in the store: {pending:?}"
    );
    assert!(pending[0].starts_with("acme/out/wb."), "{pending:?}");
    assert_eq!(state_of(&sim), before, "nothing was marked");
    assert_eq!(bulk_calls(&sim), 0);

    // The next run exports nothing new and carries out the pending plan.
    sim.set_faults(Faults::default());
    let o = run_bin(&file, &sim, &s3, &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["records_out"], 0, "{summary}");
    assert_eq!(summary["writeback"]["complete"], 120, "{summary}");
    assert!(state_of(&sim).iter().all(|s| s == "COMPLETE"));
    // 120 ids in batches of 25, each marked IN_PROGRESS then COMPLETE: once.
    assert_eq!(bulk_calls(&sim), 5 * 2);
    assert!(
        plans().await.is_empty(),
        "the plan is removed once carried out"
    );

    // Nothing left to do: a third run marks nothing again.
    let o = run_bin(&file, &sim, &s3, &[]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["writeback"]["complete"], 0, "{summary}");
    assert_eq!(bulk_calls(&sim), 10);
    assert!(leftovers(&s3, "acme/out").await.is_empty());
    sim.shutdown().await;
}
