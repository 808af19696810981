//! Shared helpers for integration tests: a simulator, pipelines pointing at
//! it, and readers for the files a run writes.
#![allow(dead_code)]

pub mod azurite;
pub mod s3;
pub mod scenarios;
pub mod store;
pub mod tools;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use expense_sync::auth::FyleCredentials;
use expense_sync::config::{self, Pipeline};
use expense_sync::http::HttpClient;
use expense_sync::pipeline::{self, RunOptions, RunOutcome};
use expense_sync::simulator::{SimConfig, Simulator};
use rust_decimal::Decimal;
use secrecy::SecretString;
#[allow(unused_imports)]
pub use store::TestStore;

/// Columns used by most tests: one of each type.
pub const TEST_COLUMNS: &str = r#"
[[columns]]
name = "id"
path = "id"

[[columns]]
name = "amount"
path = "amount"
type = "decimal"
scale = 2

[[columns]]
name = "currency"
path = "currency"

[[columns]]
name = "merchant"
path = "merchant"

[[columns]]
name = "purpose"
path = "purpose"

[[columns]]
name = "spent_at"
path = "spent_at"
type = "timestamp"

[[columns]]
name = "spent_on"
path = "spent_at"
type = "date"

[[columns]]
name = "is_reimbursable"
path = "is_reimbursable"
type = "bool"

[[columns]]
name = "category_id"
path = "category.id"
type = "integer"

[[columns]]
name = "employee_email"
path = "employee.user.email"
"#;

/// A pipeline file's text for `sim`, writing CSV and Parquet.
pub fn pipeline_text(sim: &Simulator, name: &str, extra_source: &str, http: &str) -> String {
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
{http}

[source]
type = "fyle"
resource = "expenses"
safety_lag = "0s"
{extra_source}

{TEST_COLUMNS}

[[sinks]]
type = "csv"
path = "{{pipeline}}.csv"

[[sinks]]
type = "parquet"
path = "{{pipeline}}.parquet"
"#,
        accounts = sim.accounts_url()
    )
}

/// The simulator's credentials as the library takes them.
pub fn credentials(sim: &Simulator) -> FyleCredentials {
    let c = sim.credentials();
    FyleCredentials {
        accounts_url: url::Url::parse(&sim.accounts_url()).unwrap(),
        client_id: c.client_id.clone(),
        client_secret: SecretString::from(c.client_secret.clone()),
        refresh_token: SecretString::from(c.refresh_token.clone()),
    }
}

/// Starts a simulator with `expenses` records and no rate limit unless given.
pub async fn simulator(expenses: usize, seed: u64, rate_limit: Option<u32>) -> Simulator {
    Simulator::start(SimConfig {
        seed,
        expenses,
        rate_limit,
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts")
}

/// Loads pipeline text and runs it in-process against `sim`.
pub async fn run_text(sim: &Simulator, text: &str, out: &Path) -> (Pipeline, RunOutcome) {
    let p = config::load_str(text, Path::new("test.toml")).expect("pipeline is valid");
    let http = HttpClient::new(&p.spec.http).unwrap();
    let opts = RunOptions {
        output_dir: Some(out.to_path_buf()),
        credentials: Some(credentials(sim).into()),
        ..RunOptions::default()
    };
    let outcome = pipeline::run(&p, &http, &opts).await;
    (p, outcome)
}

/// Reads a CSV with the csv crate into header + rows.
pub fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let bytes = std::fs::read(path).unwrap();
    let bytes = bytes
        .strip_prefix(b"\xEF\xBB\xBF")
        .unwrap_or(&bytes)
        .to_vec();
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes.as_slice());
    let header = r.headers().unwrap().iter().map(str::to_string).collect();
    let rows = r
        .records()
        .map(|rec| rec.unwrap().iter().map(str::to_string).collect())
        .collect();
    (header, rows)
}

/// CSV rows keyed by the first column (the id); panics on a duplicate id.
pub fn csv_by_id(path: &Path) -> (Vec<String>, BTreeMap<String, Vec<String>>) {
    let (header, rows) = read_csv(path);
    let mut map = BTreeMap::new();
    for row in rows {
        let id = row[0].clone();
        assert!(
            map.insert(id.clone(), row).is_none(),
            "id {id} appears twice in {}",
            path.display()
        );
    }
    (header, map)
}

/// The exact decimal of a JSON number (via its text, never f64).
pub fn json_decimal(v: &serde_json::Value) -> Option<Decimal> {
    if v.is_null() {
        return None;
    }
    Some(v.to_string().trim_matches('"').parse().expect("decimal"))
}

/// Expected expenses: ground truth, keyed by id.
pub fn truth_by_id(sim: &Simulator) -> BTreeMap<String, serde_json::Value> {
    sim.ground_truth("expenses")
        .into_iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r))
        .collect()
}

/// Every file below `dir`, relative.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_in(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Whether `{file}.manifest.json` exists beside `file`.
pub fn manifest_exists(file: &Path) -> bool {
    let mut name = file.file_name().unwrap().to_os_string();
    name.push(".manifest.json");
    file.with_file_name(name).exists()
}

/// Every (id, updated_at) row of every committed CSV in `dir` (first two
/// columns), with how often it occurs. A temporary file at a final path fails the test.
pub fn committed_versions(dir: &Path) -> BTreeMap<(String, String), usize> {
    let mut seen = BTreeMap::new();
    for f in files_in(dir) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".csv") {
            continue;
        }
        assert!(
            !name.starts_with('.'),
            "a temporary file sits at a final path: {name}"
        );
        for r in read_csv(&f).1 {
            *seen.entry((r[0].clone(), r[1].clone())).or_insert(0) += 1;
        }
    }
    seen
}

/// The current (id, updated_at) of every expense in the simulator.
pub fn truth_versions(sim: &Simulator) -> std::collections::BTreeSet<(String, String)> {
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

/// Every current expense version is in the committed CSVs of `dir`, and no version is there twice.
pub fn assert_exactly_once(dir: &Path, sim: &Simulator) {
    let seen = committed_versions(dir);
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(doubled.is_empty(), "versions delivered twice: {doubled:?}");
    let missing: Vec<_> = truth_versions(sim)
        .into_iter()
        .filter(|v| !seen.contains_key(v))
        .collect();
    assert!(
        missing.is_empty(),
        "{} current versions never delivered, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
}

/// An incremental pipeline writing one CSV per run, with the exact cursor text.
pub fn incremental_text(sim: &Simulator, name: &str, extra_source: &str) -> String {
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
safety_lag = "0s"
{extra_source}

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

[[sinks]]
type = "csv"
path = "{{pipeline}}-{{run_id}}.csv"
"#,
        accounts = sim.accounts_url()
    )
}
