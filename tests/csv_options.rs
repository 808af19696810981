//! CSV presets and options: byte-exact golden files for the `rfc4180` and
//! `excel` presets, formula-injection protection, hostile strings, gzip, and
//! the manifest committed beside each file.

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use chrono::{NaiveDate, TimeZone, Utc};
use expense_sync::row::{Batch, Cell, Column, ColumnType, Row, Schema};
use expense_sync::sinks::csv::{CsvPreset, CsvSinkConfig, QuoteStyle};
use expense_sync::sinks::output::FileCompression;
use expense_sync::sinks::{SinkConfig, SinkContext, SinkOutput, render_path};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

fn ctx(dir: &Path) -> SinkContext {
    SinkContext {
        pipeline: "books".into(),
        run_id: "r1".into(),
        started_at: Utc.with_ymd_and_hms(2024, 3, 5, 6, 7, 8).unwrap(),
        output_dir: dir.to_path_buf(),
        window_start: None,
        window_end: Some(Utc.with_ymd_and_hms(2024, 3, 5, 6, 0, 0).unwrap()),
    }
}

fn schema() -> Arc<Schema> {
    let col = |name: &str, ty| Column {
        name: name.into(),
        ty,
    };
    Arc::new(Schema {
        columns: vec![
            col("merchant", ColumnType::String),
            col("currency", ColumnType::String),
            col(
                "amount",
                ColumnType::Decimal {
                    precision: 18,
                    scale: 2,
                },
            ),
            col("spent", ColumnType::Date),
            col("at", ColumnType::Timestamp),
        ],
    })
}

const HOSTILE: [&str; 9] = [
    "Acme, Inc.",
    "He said \"hi\"",
    "line one\r\nline two",
    "=HYPERLINK(\"http://evil\",\"x\")",
    "+1 555",
    "-2+3",
    "@SUM(A1)",
    "\tTabbed",
    "Café 東京 🍽️",
];

fn rows() -> Vec<Row> {
    let d = |s| Cell::Decimal(Decimal::from_str(s).unwrap());
    HOSTILE
        .iter()
        .enumerate()
        .map(|(i, m)| Row {
            cells: vec![
                Cell::Str((*m).into()),
                Cell::Str(if i % 3 == 0 { "EUR" } else { "USD" }.into()),
                if i == 5 {
                    Cell::Null
                } else {
                    d(["12.30", "-5.00", "0.01"][i % 3])
                },
                Cell::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()),
                Cell::Timestamp(Utc.with_ymd_and_hms(2024, 3, 1, 9, 8, 7).unwrap()),
            ],
        })
        .collect()
}

/// Writes `rows()` through the CSV sink and commits; returns the output and its path.
fn write(dir: &Path, config: CsvSinkConfig) -> (SinkOutput, PathBuf) {
    let config = SinkConfig::Csv(config);
    assert!(config.validate("sinks[0]").is_empty());
    let path = render_path(config.path_template(), &ctx(dir));
    let mut sink = config.build(&ctx(dir), schema()).unwrap();
    sink.write(&Batch { rows: rows() }).unwrap();
    let out = sink.finish().unwrap();
    assert!(!path.exists(), "nothing is visible before the commit");
    for f in out.staged_files() {
        f.commit().unwrap();
    }
    (out, path)
}

fn golden(name: &str, actual: &[u8]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&path, actual).unwrap();
    }
    let expected = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        String::from_utf8_lossy(actual),
        String::from_utf8_lossy(&expected),
        "differs from {}",
        path.display()
    );
}

#[test]
fn rfc4180_preset_matches_its_golden_file_and_round_trips_hostile_strings() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = CsvSinkConfig::new("plain.csv");
    c.preset = Some(CsvPreset::Rfc4180);
    let (_, path) = write(dir.path(), c);
    let bytes = fs::read(&path).unwrap();
    golden("rfc4180.csv", &bytes);
    let mut r = csv::Reader::from_reader(bytes.as_slice());
    let merchants: Vec<String> = r.records().map(|r| r.unwrap()[0].to_string()).collect();
    assert_eq!(merchants, HOSTILE, "verbatim under rfc4180");
}

#[test]
fn excel_preset_writes_bom_crlf_and_neutralises_formulas() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = CsvSinkConfig::new("excel.csv");
    c.preset = Some(CsvPreset::Excel);
    c.date_format = Some("%m/%d/%Y".into());
    let (_, path) = write(dir.path(), c);
    let bytes = fs::read(&path).unwrap();
    golden("excel.csv", &bytes);
    assert!(bytes.starts_with(b"\xEF\xBB\xBF"));
    let mut r = csv::Reader::from_reader(&bytes[3..]);
    for (rec, original) in r.records().zip(HOSTILE) {
        let rec = rec.unwrap();
        let dangerous = original.starts_with(['=', '+', '-', '@', '\t', '\r']);
        // The documented rule: a leading apostrophe, the rest unchanged.
        let expected = if dangerous {
            format!("'{original}")
        } else {
            original.to_string()
        };
        assert_eq!(&rec[0], expected);
        // Amounts are typed, never prefixed: a refund stays a number.
        assert!(!rec[2].starts_with('\''), "{:?}", &rec[2]);
        assert_eq!(&rec[3], "02/29/2024");
    }
    // Every record ends with CRLF, and no bare LF appears outside quotes.
    let text = String::from_utf8(bytes[3..].to_vec()).unwrap();
    assert!(text.ends_with("\r\n"));
}

#[test]
fn options_override_the_preset() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = CsvSinkConfig::new("eu.csv");
    c.preset = Some(CsvPreset::Excel);
    c.bom = Some(false);
    c.formula_protection = Some(false);
    c.delimiter = ';';
    c.decimal_separator = ',';
    c.quote_style = QuoteStyle::Always;
    c.null_text = "NULL".into();
    c.timestamp_format = Some("%Y-%m-%d %H:%M".into());
    c.header_names
        .insert("amount".into(), "Amount (home)".into());
    let (_, path) = write(dir.path(), c);
    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(
        lines[0],
        "\"merchant\";\"currency\";\"Amount (home)\";\"spent\";\"at\""
    );
    assert_eq!(
        lines[1],
        "\"Acme, Inc.\";\"EUR\";\"12,30\";\"2024-02-29\";\"2024-03-01 09:08\""
    );
    assert!(text.contains("\"=HYPERLINK(\"\"http://evil\"\",\"\"x\"\")\""));
    assert!(text.contains("\"NULL\""));
}

#[test]
fn gzip_output_and_manifest_are_staged_together_and_describe_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = CsvSinkConfig::new("{pipeline}.csv.gz");
    c.compression = FileCompression::Gzip;
    c.manifest = true;
    let config = SinkConfig::Csv(c);
    let mut sink = config.build(&ctx(dir.path()), schema()).unwrap();
    sink.write(&Batch { rows: rows() }).unwrap();
    let out = sink.finish().unwrap();
    let finals: Vec<_> = out.staged_files().map(|f| f.final_path.clone()).collect();
    assert_eq!(
        finals,
        [
            dir.path().join("books.csv.gz"),
            dir.path().join("books.csv.gz.manifest.json")
        ]
    );
    assert!(finals.iter().all(|p| !p.exists()), "staged, not committed");
    for f in out.staged_files() {
        f.commit().unwrap();
    }

    let gz = fs::read(&finals[0]).unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_string(&mut text)
        .unwrap();
    assert!(text.starts_with("merchant,currency,amount,spent,at\r\n"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(&finals[1]).unwrap()).unwrap();
    let sha: String = Sha256::digest(&gz)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(manifest["sha256"], sha.as_str());
    assert_eq!(manifest["bytes"], gz.len() as u64);
    assert_eq!(manifest["rows"], 9);
    assert_eq!(manifest["file"], "books.csv.gz");
    assert_eq!(manifest["compression"], "gzip");
    // EUR: rows 0, 3, 6 → 12.30 × 3; USD: rows 1, 4, 7 → -5.00 × 3, rows 2, 8 → 0.01 × 2, row 5 null.
    assert_eq!(manifest["totals"]["EUR"]["amount"], "36.90");
    assert_eq!(manifest["totals"]["USD"]["amount"], "-14.98");
    assert_eq!(out.rows, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_commits_the_manifest_with_the_file_and_its_totals_reconcile_to_the_cent() {
    let sim = common::simulator(400, 9, None).await;
    let out = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[pipeline]
name = "ledger"

[connection]
accounts_url = "{accounts}"
client_id = "x"
client_secret = {{ env = "UNUSED" }}
refresh_token = {{ env = "UNUSED" }}

[source]
type = "fyle"
resource = "expenses"
safety_lag = "0s"

[[sinks]]
type = "csv"
preset = "excel"
path = "{{pipeline}}-{{run_date}}.csv"
manifest = true
manifest_totals = ["amount", "tax_amount"]
"#,
        accounts = sim.accounts_url()
    );
    let (_, outcome) = common::run_text(&sim, &text, out.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let kinds: Vec<&str> = outcome
        .summary
        .outputs
        .iter()
        .map(|o| o.kind.as_str())
        .collect();
    assert_eq!(kinds, ["csv", "manifest"]);
    let csv_path = &outcome.summary.outputs[0].path;
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(&outcome.summary.outputs[1].path).unwrap()).unwrap();
    let truth = common::truth_by_id(&sim);
    let mut totals: std::collections::BTreeMap<String, (Decimal, Decimal)> = Default::default();
    for r in truth.values() {
        let e = totals
            .entry(r["currency"].as_str().unwrap().to_string())
            .or_default();
        e.0 += common::json_decimal(&r["amount"]).unwrap_or_default();
        e.1 += common::json_decimal(&r["tax_amount"]).unwrap_or_default();
    }
    for (currency, (amount, tax)) in &totals {
        let got = &manifest["totals"][currency];
        assert_eq!(
            got["amount"].as_str().unwrap().parse::<Decimal>().unwrap(),
            *amount
        );
        assert_eq!(
            got["tax_amount"]
                .as_str()
                .unwrap()
                .parse::<Decimal>()
                .unwrap(),
            *tax
        );
    }
    assert_eq!(manifest["rows"], truth.len() as u64);
    for per_currency in manifest["totals"].as_object().unwrap().values() {
        let keys: Vec<&String> = per_currency.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["amount", "tax_amount"],
            "foreign_amount is not summed"
        );
    }
    let bytes = fs::read(csv_path).unwrap();
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(manifest["sha256"], sha.as_str());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_by_writes_one_file_and_manifest_per_group_committed_together() {
    let sim = common::simulator(300, 6, None).await;
    let out = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[pipeline]
name = "per-employee"

[connection]
accounts_url = "{accounts}"
client_id = "x"
client_secret = {{ env = "UNUSED" }}
refresh_token = {{ env = "UNUSED" }}

[source]
type = "fyle"
resource = "expenses"
safety_lag = "0s"

[[columns]]
name = "id"
path = "id"

[[columns]]
name = "employee_email"
path = "employee.user.email"

[[columns]]
name = "amount"
path = "amount"
type = "decimal"

[[sinks]]
type = "csv"
path = "by-employee/{{pipeline}}-{{group}}.csv"
split_by = "employee_email"
manifest = true
"#,
        accounts = sim.accounts_url()
    );
    let (_, outcome) = common::run_text(&sim, &text, out.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let truth = common::truth_by_id(&sim);
    let emails: std::collections::BTreeSet<String> = truth
        .values()
        .map(|r| r["employee"]["user"]["email"].as_str().unwrap().to_string())
        .collect();
    let csvs: Vec<_> = outcome
        .summary
        .outputs
        .iter()
        .filter(|o| o.kind == "csv")
        .collect();
    let manifests = outcome
        .summary
        .outputs
        .iter()
        .filter(|o| o.kind == "manifest")
        .count();
    assert_eq!(csvs.len(), emails.len());
    assert_eq!(manifests, emails.len());
    let mut ids = std::collections::BTreeSet::new();
    for o in &csvs {
        let (_, rows) = common::read_csv(&o.path);
        assert_eq!(rows.len() as u64, o.rows);
        let name = o.path.file_name().unwrap().to_string_lossy().into_owned();
        for r in rows {
            assert_eq!(
                name,
                format!("per-employee-{}.csv", r[1]),
                "row in the wrong file"
            );
            assert!(ids.insert(r[0].clone()), "{} twice", r[0]);
        }
        assert!(common::manifest_exists(&o.path));
    }
    assert_eq!(ids.len(), truth.len());
    sim.shutdown().await;
}

#[test]
fn a_split_sink_with_no_rows_writes_one_header_only_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = CsvSinkConfig::new("{pipeline}-{group}.csv");
    c.split_by = Some("currency".into());
    let config = SinkConfig::Csv(c);
    assert!(config.validate("s").is_empty());
    let sink = config.build(&ctx(dir.path()), schema()).unwrap();
    let out = sink.finish().unwrap();
    assert_eq!(
        out.staged.as_ref().unwrap().final_path,
        dir.path().join("books-empty.csv")
    );
    assert_eq!(out.rows, 0);
    assert!(out.companions.is_empty());
    out.staged.as_ref().unwrap().commit().unwrap();
    assert_eq!(
        fs::read_to_string(dir.path().join("books-empty.csv")).unwrap(),
        "merchant,currency,amount,spent,at\r\n"
    );
    let mut bad = CsvSinkConfig::new("x.csv");
    bad.split_by = Some("currency".into());
    let problems = SinkConfig::Csv(bad).validate("sinks[0]");
    assert_eq!(problems[0].key, "sinks[0].path", "{problems:?}");
}
