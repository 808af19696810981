//! Keyset paging against a server that does not behave like our defaults:
//! a locale text collation, large ties on the cursor, bulk updates while
//! paging, short pages, and a count that promises more than it returns.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::*;
use expense_sync::simulator::{Collation, Faults, SeekFault, SimConfig, Simulator};

async fn sim_with(expenses: usize, seed: u64, collation: Collation) -> Simulator {
    Simulator::start(SimConfig {
        seed,
        expenses,
        rate_limit: None,
        collation,
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts")
}

/// The largest group of expenses sharing one `updated_at`.
fn largest_tie(sim: &Simulator) -> usize {
    let mut by_ts: BTreeMap<String, usize> = BTreeMap::new();
    for r in sim.ground_truth("expenses") {
        *by_ts
            .entry(r["updated_at"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    by_ts.into_values().max().unwrap_or(0)
}

fn exported_ids(dir: &Path, name: &str) -> BTreeSet<String> {
    csv_by_id(&dir.join(format!("{name}.csv")))
        .1
        .into_keys()
        .collect()
}

fn truth_ids(sim: &Simulator) -> BTreeSet<String> {
    truth_by_id(sim).into_keys().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locale_collation_with_ties_larger_than_a_page_exports_every_record_once() {
    let sim = sim_with(3000, 91, Collation::EnUs).await;
    assert!(largest_tie(&sim) > 100, "the data needs a tie over 2 pages");
    let out = tempfile::tempdir().unwrap();
    let text = pipeline_text(
        &sim,
        "collated",
        "page_size = 50\nconcurrency = 3",
        "requests_per_second = 1000",
    );
    let (_, outcome) = run_text(&sim, &text, out.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(exported_ids(out.path(), "collated"), truth_ids(&sim));
    assert_eq!(outcome.summary.records_out, 3000);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_runs_under_locale_collation_with_bulk_updates_while_paging_deliver_each_final_version_once()
 {
    let sim = sim_with(3000, 92, Collation::EnUs).await;
    // Bulk updates of 120 expenses at one instant, 600 changes a second, while we page.
    sim.set_faults(Faults {
        latency: Duration::from_millis(10),
        mutations_per_sec: 600,
        bulk_update_size: 120,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let text = incremental_text(&sim, "bulk", "page_size = 40\nconcurrency = 2");
    let (_, first) = run_text(&sim, &text, dir.path()).await;
    assert!(first.error.is_none(), "{:?}", first.error);
    // A second run also pages through changes, then one bulk update bigger
    // than several pages lands between runs.
    let (_, second) = run_text(&sim, &text, dir.path()).await;
    assert!(second.error.is_none(), "{:?}", second.error);
    sim.set_faults(Faults::default());
    sim.bulk_update(400);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_, third) = run_text(&sim, &text, dir.path()).await;
    assert!(third.error.is_none(), "{:?}", third.error);
    assert!(
        third.summary.records_out >= 400,
        "the bulk update must be in run 3: {}",
        third.summary.records_out
    );
    assert_exactly_once(dir.path(), &sim);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_pages_do_not_end_a_slice_early() {
    let sim = sim_with(1500, 93, Collation::C).await;
    sim.set_faults(Faults {
        short_page_rate: 0.5,
        ..Faults::default()
    });
    let out = tempfile::tempdir().unwrap();
    let text = pipeline_text(
        &sim,
        "short",
        "page_size = 50\nconcurrency = 2",
        "requests_per_second = 1000",
    );
    let (_, outcome) = run_text(&sim, &text, out.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(exported_ids(out.path(), "short"), truth_ids(&sim));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_page_while_the_count_says_more_remain_fails_loudly() {
    let sim = sim_with(300, 94, Collation::C).await;
    sim.set_faults(Faults {
        count_excess: 7,
        ..Faults::default()
    });
    let out = tempfile::tempdir().unwrap();
    let text = pipeline_text(
        &sim,
        "liar",
        "page_size = 100",
        "requests_per_second = 1000",
    );
    let (_, outcome) = run_text(&sim, &text, out.path()).await;
    let err = outcome
        .error
        .as_ref()
        .expect("a run that cannot get every counted record must fail")
        .to_string();
    assert!(
        err.contains("count") && err.contains("7 more") && err.contains("empty page"),
        "{err}"
    );
    assert!(
        !out.path().join("liar.csv").exists(),
        "nothing may be committed from an incomplete window"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_conditions_carry_unquoted_timestamps_and_ids() {
    let sim = sim_with(400, 95, Collation::C).await;
    let out = tempfile::tempdir().unwrap();
    let text = pipeline_text(
        &sim,
        "unquoted",
        "page_size = 50",
        "requests_per_second = 1000",
    );
    let (_, outcome) = run_text(&sim, &text, out.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let seeks: Vec<String> = sim
        .request_log()
        .into_iter()
        .flat_map(|r| {
            url::form_urlencoded::parse(r.query.as_bytes())
                .filter(|(k, _)| k == "and")
                .map(|(_, v)| v.into_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(seeks.len() >= 7, "one seek per later page: {seeks:?}");
    for s in &seeks {
        assert!(!s.contains('"'), "a literal was quoted: {s}");
        assert!(
            s.contains("updated_at.gt.20") && s.contains("id.gt.tx"),
            "{s}"
        );
    }
    assert_eq!(exported_ids(out.path(), "unquoted"), truth_ids(&sim));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_repeating_the_boundary_record_delivers_each_record_once() {
    let sim = sim_with(1200, 96, Collation::EnUs).await;
    sim.set_faults(Faults {
        seek_fault: SeekFault::RepeatBoundary,
        ..Faults::default()
    });
    let out = tempfile::tempdir().unwrap();
    let text = pipeline_text(
        &sim,
        "repeat",
        "page_size = 50\nconcurrency = 2",
        "requests_per_second = 1000",
    );
    let (_, outcome) = run_text(&sim, &text, out.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(exported_ids(out.path(), "repeat"), truth_ids(&sim));
    assert!(
        outcome.summary.duplicates_skipped > 0,
        "the repeated boundary records were seen and dropped"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_ignoring_the_seek_filter_fails_loudly() {
    let sim = sim_with(400, 97, Collation::C).await;
    sim.set_faults(Faults {
        seek_fault: SeekFault::Ignore,
        ..Faults::default()
    });
    let out = tempfile::tempdir().unwrap();
    let text = pipeline_text(
        &sim,
        "stuck",
        "page_size = 50",
        "requests_per_second = 1000",
    );
    let (_, outcome) = run_text(&sim, &text, out.path()).await;
    let err = outcome
        .error
        .as_ref()
        .expect("a seek that does not advance must fail the run")
        .to_string();
    assert!(err.contains("seek filter"), "{err}");
    assert_eq!(outcome.exit_code() as i32, 4, "{err}");
    assert!(!out.path().join("stuck.csv").exists());
    sim.shutdown().await;
}
