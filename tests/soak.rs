//! The guarantees under everything at once: a server with a locale collation
//! whose data changes in bulk updates sharing one `updated_at` while the
//! client pages, 429s, 5xx, dropped and truncated responses, short pages,
//! float-noise amounts, expiring tokens, SIGKILLs at random instants, and a
//! push to a receiver that de-duplicates by record key. Afterwards every
//! final record version is in the committed files exactly once, and every
//! pushed version was applied exactly once.
//!
//! The short version runs in the normal suite; the long one
//! (`cargo test --release --test soak -- --ignored`) runs 50 seeded iterations.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{files_in, read_csv};
use expense_sync::simulator::receiver::{Receiver, ReceiverConfig};
use expense_sync::simulator::{Collation, Faults, SimConfig, Simulator};
use expense_sync::sinks::http::record_key;
use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_expense-sync");
const KEY_FIELD: &str = "_idempotency_key";

fn pipeline_text(sim: &Simulator, receiver: &str) -> String {
    format!(
        r#"
[pipeline]
name = "soak"

[connection]
accounts_url = "{accounts}"
client_id = {{ env = "FYLE_CLIENT_ID" }}
client_secret = {{ env = "FYLE_CLIENT_SECRET" }}
refresh_token = {{ env = "FYLE_REFRESH_TOKEN" }}

[http]
requests_per_second = 200
initial_backoff = "20ms"
max_backoff = "200ms"
max_retries = 12
request_timeout = "2s"

[source]
type = "fyle"
resource = "expenses"
safety_lag = "0s"
page_size = 40

[incremental]
lookback = "2s"

[[columns]]
name = "id"
path = "id"

[[columns]]
name = "updated_at"
path = "updated_at"

[[columns]]
name = "amount"
path = "amount"
type = "decimal"
scale = "currency"

[[sinks]]
type = "csv"
path = "{{pipeline}}-{{run_id}}.csv"

[[sinks]]
type = "http"
url = "{receiver}"
max_records = 25

[sinks.http]
requests_per_second = 500
request_timeout = "1s"
initial_backoff = "20ms"
max_backoff = "200ms"
max_retries = 12
"#,
        accounts = sim.accounts_url(),
    )
}

fn spawn_bin(pipeline: &Path, sim: &Simulator) -> tokio::process::Child {
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
        .env_remove("FYLE_ACCOUNTS_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd.spawn().unwrap()
}

/// Every (id, updated_at) row of every committed CSV, with how often it occurs.
fn committed_versions(out: &Path) -> BTreeMap<(String, String), usize> {
    let mut seen = BTreeMap::new();
    for f in files_in(out) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".csv") {
            continue;
        }
        assert!(
            !name.starts_with('.'),
            "a temporary file sits at a final path: {name}"
        );
        let (_, rows) = read_csv(&f);
        for r in rows {
            *seen.entry((r[0].clone(), r[1].clone())).or_insert(0) += 1;
        }
    }
    seen
}

fn final_versions(sim: &Simulator) -> BTreeSet<(String, String)> {
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

fn adverse_faults(rng: &mut rand::rngs::StdRng) -> Faults {
    Faults {
        error_rate: 0.04,
        drop_rate: 0.03,
        burst_429: rng.random_range(0..4),
        latency: Duration::from_millis(rng.random_range(0..6)),
        mutations_per_sec: 40,
        bulk_update_size: 60,
        short_page_rate: 0.1,
        ..Faults::default()
    }
}

/// Runs `iterations` killed-or-not runs under faults, then one clean run, and
/// checks the committed files and the receiver against the simulator.
async fn soak(iterations: usize, seed: u64) {
    let sim = Simulator::start(SimConfig {
        seed,
        expenses: 700,
        rate_limit: Some(100),
        token_ttl: Duration::from_secs(2),
        collation: Collation::EnUs,
        float_noise: 0.05,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let rx = Receiver::start(ReceiverConfig {
        record_key_field: Some(KEY_FIELD.into()),
        ..ReceiverConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("soak.toml");
    std::fs::write(&file, pipeline_text(&sim, rx.url())).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut killed = 0;

    for i in 0..iterations {
        sim.set_faults(adverse_faults(&mut rng));
        // A burst of changes sharing one cursor value before every run, too.
        sim.bulk_update(rng.random_range(20..120));
        let mut child = spawn_bin(&file, &sim);
        if i % 3 != 2 {
            tokio::time::sleep(Duration::from_millis(rng.random_range(30..900))).await;
            if rng.random_bool(0.3) {
                sim.expire_tokens();
            }
            let _ = child.start_kill(); // SIGKILL, or nothing if it already ended
        }
        let out = child.wait_with_output().await.unwrap();
        match out.status.code() {
            None => killed += 1,
            // Faults may exhaust retries; that is a loud failure, never a silent gap.
            Some(0) | Some(4) => {}
            Some(code) => panic!(
                "iteration {i}: unexpected exit {code}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
    assert!(
        killed * 3 >= iterations,
        "only {killed} of {iterations} runs were killed mid-run; the soak proves little"
    );

    // Calm: no faults, no background changes; one run catches up.
    sim.set_faults(Faults::default());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let out = spawn_bin(&file, &sim).wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "the calm run after the storm: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let outputs: PathBuf = dir.path().join("out");
    let seen = committed_versions(&outputs);
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(doubled.is_empty(), "versions in two files: {doubled:?}");
    let delivered: BTreeSet<_> = seen.into_keys().collect();
    let missing: Vec<_> = final_versions(&sim)
        .difference(&delivered)
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "{} final versions never committed, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );

    let applied = rx.applied_key_counts();
    let twice: Vec<_> = applied.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "versions applied twice: {twice:?}");
    for (id, at) in final_versions(&sim) {
        let key = record_key(&id, &at);
        assert!(
            applied.contains_key(&key),
            "final version {id}@{at} was never pushed"
        );
    }
    let leftovers: Vec<_> = files_in(&outputs)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    rx.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_at_once_short_soak_is_exactly_once() {
    soak(9, 0x50a4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long soak: cargo test --release --test soak -- --ignored"]
async fn everything_at_once_long_soak_is_exactly_once() {
    let seeds: u64 = std::env::var("SOAK_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    for seed in 0..seeds {
        soak(50, 0x50a4 + seed).await;
    }
}
