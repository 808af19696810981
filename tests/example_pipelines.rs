//! The accountant-facing pipelines shipped in `pipelines/` run against the
//! simulator and produce what their comments promise.

mod common;

use std::path::{Path, PathBuf};

use expense_sync::config;
use expense_sync::http::HttpClient;
use expense_sync::pipeline::{self, RunOptions, RunOutcome};
use expense_sync::simulator::Simulator;

/// Runs a shipped pipeline file against `sim`, its relative tables resolved from `pipelines/`.
async fn run_shipped(sim: &Simulator, file: &str, out: &Path) -> RunOutcome {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("https://accounts.fylehq.com", &sim.accounts_url());
    let p = config::load_str(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    let http = HttpClient::new(&p.spec.http).unwrap();
    let opts = RunOptions {
        output_dir: Some(out.to_path_buf()),
        credentials: Some(common::credentials(sim).into()),
        ..RunOptions::default()
    };
    pipeline::run(&p, &http, &opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accounting_example_runs_against_the_simulator() {
    let sim = common::simulator(600, 42, None).await;
    for (file, kinds) in [
        ("gl-coded-excel.toml", &["csv", "manifest"][..]),
        ("quickbooks-bills.toml", &["iif"][..]),
        ("quickbooks-card.toml", &["iif"][..]),
        ("journal-csv.toml", &["csv", "manifest"][..]),
    ] {
        let out = tempfile::tempdir().unwrap();
        let outcome = run_shipped(&sim, file, out.path()).await;
        assert!(outcome.error.is_none(), "{file}: {:?}", outcome.error);
        let got: Vec<&str> = outcome
            .summary
            .outputs
            .iter()
            .map(|o| o.kind.as_str())
            .collect();
        assert_eq!(got, kinds, "{file}");
        assert!(outcome.summary.outputs[0].rows > 0, "{file} wrote no rows");
    }
    let out = tempfile::tempdir().unwrap();
    let outcome = run_shipped(&sim, "lake-partitioned.toml", out.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert!(
        outcome.summary.outputs.len() > 1,
        "several monthly partitions"
    );
    assert!(
        outcome.summary.outputs.iter().all(|o| o
            .path
            .to_string_lossy()
            .contains("lake/expenses/spent_date_month=")),
        "{:?}",
        outcome.summary.outputs
    );
    let rows: u64 = outcome.summary.outputs.iter().map(|o| o.rows).sum();
    assert_eq!(rows, 600);
    sim.shutdown().await;
}
