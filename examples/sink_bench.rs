//! Micro-benchmark of the file sinks alone (a figure to read, not a test):
//! rows read back from an exported CSV of the default expense columns are
//! written through the CSV and Parquet sinks, with no source or network, so a
//! profiler sees only the sinks:
//!
//!     cargo run --release --example sink_bench -- out/bench.csv [repeat] [csv|parquet|both]
//!     valgrind --tool=callgrind target/release/examples/sink_bench out/bench.csv 1 parquet

use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, NaiveDate, Utc};
use expense_sync::row::{Batch, Cell, Column, ColumnType, Row, Schema};
use expense_sync::sinks::csv::{CsvSink, CsvSinkConfig};
use expense_sync::sinks::parquet::{ParquetSink, ParquetSinkConfig};
use expense_sync::sinks::{Sink, SinkContext};
use rust_decimal::Decimal;

/// The type a default expense column has, by name.
fn column_type(name: &str) -> ColumnType {
    match name {
        "amount" | "tax_amount" => ColumnType::Decimal {
            precision: 18,
            scale: 3,
        },
        "foreign_amount" => ColumnType::Decimal {
            precision: 18,
            scale: 3,
        },
        "spent_date" => ColumnType::Date,
        "is_reimbursable" | "is_billable" => ColumnType::Bool,
        n if n.ends_with("_at") => ColumnType::Timestamp,
        _ => ColumnType::String,
    }
}

fn cell(text: &str, ty: ColumnType) -> Cell {
    if text.is_empty() {
        return Cell::Null;
    }
    match ty {
        ColumnType::String => Cell::Str(text.into()),
        ColumnType::Decimal { .. } => Cell::Decimal(Decimal::from_str(text).unwrap()),
        ColumnType::Date => Cell::Date(NaiveDate::from_str(text).unwrap()),
        ColumnType::Bool => Cell::Bool(text == "true"),
        ColumnType::Timestamp => Cell::Timestamp(
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc),
        ),
        ColumnType::Integer => Cell::Int(text.parse().unwrap()),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let input = args
        .get(1)
        .expect("usage: sink_bench <file.csv> [repeat] [csv|parquet|both]");
    let repeat: usize = args.get(2).map_or(1, |r| r.parse().unwrap());
    let which = args.get(3).map_or("both", String::as_str);
    let mut reader = csv::Reader::from_path(input).unwrap();
    let schema = Schema {
        columns: reader
            .headers()
            .unwrap()
            .iter()
            .map(|n| Column {
                name: n.to_string(),
                ty: column_type(n),
            })
            .collect(),
    };
    let rows: Vec<Row> = reader
        .records()
        .map(|r| Row {
            cells: r
                .unwrap()
                .iter()
                .zip(&schema.columns)
                .map(|(t, c)| cell(t, c.ty))
                .collect(),
        })
        .collect();
    let batches: Vec<Batch> = rows
        .chunks(200)
        .map(|c| Batch { rows: c.to_vec() })
        .collect();
    let schema = Arc::new(schema);
    let dir = tempfile::tempdir().unwrap();
    let ctx = SinkContext {
        pipeline: "bench".into(),
        run_id: "r1".into(),
        started_at: Utc::now(),
        output_dir: dir.path().to_path_buf(),
        window_start: None,
        window_end: None,
    };
    for kind in ["csv", "parquet"] {
        if which != "both" && which != kind {
            continue;
        }
        let path = dir.path().join(format!("bench.{kind}"));
        let mut sink: Box<dyn Sink> = match kind {
            "csv" => Box::new(
                CsvSink::create(
                    &CsvSinkConfig::new(path.display().to_string()),
                    &path,
                    &ctx,
                    schema.clone(),
                )
                .unwrap(),
            ),
            _ => Box::new(
                ParquetSink::create(
                    &ParquetSinkConfig::new(path.display().to_string()),
                    &path,
                    &ctx,
                    schema.clone(),
                )
                .unwrap(),
            ),
        };
        let t = Instant::now();
        for _ in 0..repeat {
            for b in &batches {
                sink.write(b).unwrap();
            }
        }
        let out = sink.finish().unwrap();
        let n = rows.len() * repeat;
        println!(
            "{kind:8} {n} rows in {:?} ({:.2} µs/row), {} bytes",
            t.elapsed(),
            t.elapsed().as_secs_f64() * 1e6 / n as f64,
            out.bytes
        );
        for f in out.staged_files() {
            f.discard();
        }
    }
}
