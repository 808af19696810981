//! Parquet for data lakes: Hive-style partitions by month, row groups bounded
//! by bytes, and the documented policy for schema changes between runs.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::Path;

use arrow::array::{Array, Date32Array, Decimal128Array, StringArray};
use chrono::{Datelike, NaiveDate};
use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::{FileReader, SerializedFileReader};
use rust_decimal::Decimal;

fn lake_pipeline(sim: &expense_sync::simulator::Simulator, extra: &str, sink: &str) -> String {
    format!(
        r#"
[pipeline]
name = "lake"

[connection]
accounts_url = "{accounts}"
client_id = "x"
client_secret = {{ env = "UNUSED" }}
refresh_token = {{ env = "UNUSED" }}

[source]
type = "fyle"
resource = "expenses"
safety_lag = "0s"

{extra}

[[columns]]
name = "id"
path = "id"

[[columns]]
name = "spent_date"
path = "spent_at"
type = "date"

[[columns]]
name = "amount"
path = "amount"
type = "decimal"

[[sinks]]
type = "parquet"
{sink}
"#,
        accounts = sim.accounts_url()
    )
}

fn read_all(path: &Path) -> Vec<arrow::record_batch::RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monthly_partitions_hold_each_expense_once_in_its_month_and_reconcile() {
    let sim = simulator(600, 17, None).await;
    let out = tempfile::tempdir().unwrap();
    let text = lake_pipeline(
        &sim,
        "",
        "path = \"lake/expenses/part-{run_id}.parquet\"\npartition_by = \"spent_date\"\npartition_granularity = \"month\"",
    );
    let (_, outcome) = run_text(&sim, &text, out.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let truth = truth_by_id(&sim);
    let files: Vec<_> = files_in(&out.path().join("lake/expenses"));
    assert!(files.len() > 3, "{files:?}");
    let mut seen = BTreeMap::new();
    let mut total = Decimal::ZERO;
    for f in &files {
        let dir = f
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let month = dir
            .strip_prefix("spent_date_month=")
            .expect("hive directory");
        for batch in read_all(f) {
            let ids = batch
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            let days = batch
                .column(1)
                .as_any()
                .downcast_ref::<Date32Array>()
                .unwrap();
            let amounts = batch
                .column(2)
                .as_any()
                .downcast_ref::<Decimal128Array>()
                .unwrap();
            for i in 0..batch.num_rows() {
                let day = NaiveDate::from_num_days_from_ce_opt(days.value(i) + 719_163).unwrap();
                assert_eq!(format!("{}-{:02}", day.year(), day.month()), month);
                assert!(
                    seen.insert(ids.value(i).to_string(), ()).is_none(),
                    "doubled"
                );
                if !amounts.is_null(i) {
                    total += Decimal::from_i128_with_scale(amounts.value(i), 2);
                }
            }
        }
    }
    assert_eq!(seen.len(), truth.len());
    let truth_total: Decimal = truth
        .values()
        .filter_map(|r| json_decimal(&r["amount"]))
        .sum();
    assert_eq!(total, truth_total);
    // Every partition file is listed in the summary as committed output.
    assert_eq!(outcome.summary.outputs.len(), files.len());
    let rows: u64 = outcome.summary.outputs.iter().map(|o| o.rows).sum();
    assert_eq!(rows as usize, truth.len());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_groups_are_bounded_by_bytes() {
    let sim = simulator(800, 4, None).await;
    let out = tempfile::tempdir().unwrap();
    let text = lake_pipeline(
        &sim,
        "",
        "path = \"small-groups.parquet\"\ncompression = \"none\"\nrow_group_rows = 1000000\nrow_group_bytes = 4096",
    );
    let (_, outcome) = run_text(&sim, &text, out.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let reader =
        SerializedFileReader::new(File::open(out.path().join("small-groups.parquet")).unwrap())
            .unwrap();
    let meta = reader.metadata();
    assert!(
        meta.num_row_groups() > 3,
        "{} row groups",
        meta.num_row_groups()
    );
    let rows: i64 = meta.row_groups().iter().map(|g| g.num_rows()).sum();
    assert_eq!(rows, 800);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_column_between_runs_appears_in_new_files_only_and_old_files_stay_intact() {
    let sim = simulator(200, 8, None).await;
    let out = tempfile::tempdir().unwrap();
    let sink = "path = \"exp-{run_id}.parquet\"";
    let (_, first) = run_text(&sim, &lake_pipeline(&sim, "", sink), out.path()).await;
    assert!(first.error.is_none(), "{:?}", first.error);
    let old_path = first.summary.outputs[0].path.clone();
    let old_bytes = fs::read(&old_path).unwrap();

    // The organisation added a custom field; the pipeline adds a column for it.
    let extra = r#"
[[transforms]]
type = "custom_fields"
prefix = "cf_"

[[columns]]
name = "cf_region"
path = "cf_region"
"#;
    let text = lake_pipeline(&sim, "", sink).replace(
        "[[columns]]\nname = \"id\"",
        &format!("{extra}\n[[columns]]\nname = \"id\""),
    );
    let (_, second) = run_text(&sim, &text, out.path()).await;
    assert!(second.error.is_none(), "{:?}", second.error);
    let new_path = second.summary.outputs[0].path.clone();
    assert_ne!(old_path, new_path);
    assert_eq!(
        fs::read(&old_path).unwrap(),
        old_bytes,
        "old files are never rewritten"
    );

    let names = |p: &Path| -> Vec<String> {
        read_all(p)[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    };
    assert_eq!(names(&old_path), ["id", "spent_date", "amount"]);
    assert_eq!(
        names(&new_path),
        ["cf_region", "id", "spent_date", "amount"]
    );
    // Every column is nullable, so readers that union schemas by name fill older files with nulls.
    assert!(
        read_all(&new_path)[0]
            .schema()
            .fields()
            .iter()
            .all(|f| f.is_nullable())
    );
    sim.shutdown().await;
}
