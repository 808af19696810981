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

/// Renders a Parquet file as text: its Arrow schema, then every row.
fn dump(path: &Path) -> String {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let mut out = String::new();
    let batches = read_all(path);
    for f in batches[0].schema().fields() {
        out.push_str(&format!(
            "{}: {} (nullable: {})\n",
            f.name(),
            f.data_type(),
            f.is_nullable()
        ));
    }
    let options = FormatOptions::default().with_null("NULL");
    for b in &batches {
        // Arrow's formatter needs chrono-tz for the "UTC" zone name; timestamps are printed from their micros.
        let text = |c: &arrow::array::ArrayRef, row: usize| -> String {
            if let Some(ts) = c
                .as_any()
                .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
            {
                return if ts.is_null(row) {
                    "NULL".into()
                } else {
                    chrono::DateTime::from_timestamp_micros(ts.value(row))
                        .unwrap()
                        .to_rfc3339()
                };
            }
            ArrayFormatter::try_new(c.as_ref(), &options)
                .unwrap()
                .value(row)
                .to_string()
        };
        for row in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| format!("{:?}", text(c, row)))
                .collect();
            out.push_str(&cells.join(" | "));
            out.push('\n');
        }
    }
    out
}

#[test]
fn parquet_content_and_types_match_the_golden_dump() {
    use expense_sync::row::{Batch, Cell, Column, ColumnType, Row, Schema};
    use expense_sync::sinks::parquet::ParquetSinkConfig;
    use expense_sync::sinks::{SinkConfig, SinkContext};
    use std::str::FromStr;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let ctx = SinkContext {
        pipeline: "g".into(),
        run_id: "r1".into(),
        started_at: chrono::DateTime::from_timestamp(1_709_600_000, 0).unwrap(),
        output_dir: dir.path().to_path_buf(),
        window_start: None,
        window_end: None,
    };
    let col = |name: &str, ty| Column {
        name: name.into(),
        ty,
    };
    let schema = Arc::new(Schema {
        columns: vec![
            col("merchant", ColumnType::String),
            col(
                "amount",
                ColumnType::Decimal {
                    precision: 18,
                    scale: 2,
                },
            ),
            col(
                "foreign_amount",
                ColumnType::Decimal {
                    precision: 18,
                    scale: 3,
                },
            ),
            col("spent", ColumnType::Date),
            col("at", ColumnType::Timestamp),
            col("billable", ColumnType::Bool),
            col("category_id", ColumnType::Integer),
        ],
    });
    let d = |s| Cell::Decimal(Decimal::from_str(s).unwrap());
    let rows = vec![
        Row {
            cells: vec![
                Cell::Str("=HYPERLINK(\"x\"), \"quoted\"\nnewline".into()),
                d("-1234.50"),
                d("12.345"),
                Cell::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()),
                Cell::Timestamp(
                    chrono::DateTime::from_timestamp(1_709_600_000, 123_456_000).unwrap(),
                ),
                Cell::Bool(true),
                Cell::Int(145_801),
            ],
        },
        Row {
            cells: vec![
                Cell::Str("Café 東京 🍽️".into()),
                d("0.01"),
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Null,
            ],
        },
    ];
    let config = SinkConfig::Parquet(ParquetSinkConfig::new("g.parquet"));
    let mut sink = config.build(&ctx, schema).unwrap();
    sink.write(&Batch { rows }).unwrap();
    sink.finish().unwrap().staged.unwrap().commit().unwrap();
    let text = dump(&dir.path().join("g.parquet"));
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/parquet.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&golden, &text).unwrap();
    }
    assert_eq!(text, fs::read_to_string(&golden).unwrap());
}
