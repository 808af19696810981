//! Writes rows through the CSV and Parquet sinks, commits, and reads the files back
//! with independent readers (`csv`, `parquet`), checking every value survives exactly.

use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{
    Array, BooleanArray, Date32Array, Decimal128Array, Int64Array, RecordBatchReader, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, TimeUnit};
use chrono::{NaiveDate, TimeZone, Utc};
use expense_sync::row::{Batch, Cell, Column, ColumnType, Row, Schema};
use expense_sync::sinks::csv::{CsvSinkConfig, LineEnding};
use expense_sync::sinks::parquet::ParquetSinkConfig;
use expense_sync::sinks::{Sink, SinkConfig, SinkContext, SinkOutput};
use expense_sync::sources::fyle::default_columns;
use expense_sync::transforms::Projector;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rust_decimal::Decimal;

const HOSTILE: [&str; 7] = [
    "Acme, Inc.",
    "He said \"hi\"",
    "line one\r\nline two\nline three\rend",
    "🍽️ Café Zürich — 東京",
    "=HYPERLINK(\"http://evil\",\"x\")",
    "  padded  ",
    "",
];

fn ctx(dir: &Path) -> SinkContext {
    SinkContext {
        pipeline: "daily".into(),
        run_id: "run7".into(),
        started_at: Utc.with_ymd_and_hms(2024, 3, 5, 6, 7, 8).unwrap(),
        output_dir: dir.to_path_buf(),
        window_start: None,
        window_end: Some(Utc.with_ymd_and_hms(2024, 3, 5, 6, 0, 0).unwrap()),
    }
}

fn all_types_schema() -> Arc<Schema> {
    let col = |name: &str, ty| Column {
        name: name.into(),
        ty,
    };
    Arc::new(Schema {
        columns: vec![
            col("text", ColumnType::String),
            col(
                "amount",
                ColumnType::Decimal {
                    precision: 18,
                    scale: 2,
                },
            ),
            col("at", ColumnType::Timestamp),
            col("day", ColumnType::Date),
            col("flag", ColumnType::Bool),
            col("count", ColumnType::Integer),
        ],
    })
}

fn d(s: &str) -> Cell {
    Cell::Decimal(Decimal::from_str(s).unwrap())
}

fn all_types_rows() -> Vec<Row> {
    let t = Utc.with_ymd_and_hms(2024, 3, 5, 10, 22, 33).unwrap()
        + chrono::Duration::microseconds(123_456);
    vec![
        Row {
            cells: vec![
                Cell::Str("Acme, Inc.".into()),
                d("-1234.50"),
                Cell::Timestamp(t),
                Cell::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()),
                Cell::Bool(true),
                Cell::Int(-42),
            ],
        },
        Row {
            cells: vec![Cell::Null; 6],
        },
        Row {
            cells: vec![
                Cell::Str("🍽️".into()),
                d("123456789012.34"),
                Cell::Timestamp(Utc.with_ymd_and_hms(1969, 12, 31, 23, 59, 59).unwrap()),
                Cell::Date(NaiveDate::from_ymd_opt(1900, 1, 1).unwrap()),
                Cell::Bool(false),
                Cell::Int(i64::MAX),
            ],
        },
        Row {
            cells: vec![
                Cell::Null,
                d("0.10"),
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Int(0),
            ],
        },
    ]
}

/// Finishes a sink and checks the atomic-output contract around commit.
fn finish_and_commit(sink: Box<dyn Sink>, final_path: &Path) -> SinkOutput {
    assert!(!final_path.exists(), "final path visible before finish");
    let out = sink.finish().unwrap();
    let staged = out.staged.as_ref().expect("file sinks always stage a file");
    assert_eq!(staged.final_path, final_path);
    assert!(staged.temp_path.exists());
    // Recovery after a crash sweeps `.expense-sync-{pipeline}.` files, so the name must start that way.
    let temp_name = staged
        .temp_path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        temp_name.starts_with(".expense-sync-daily.run7-"),
        "{temp_name}"
    );
    assert_eq!(staged.temp_path.parent(), final_path.parent());
    assert!(!final_path.exists(), "final path visible before commit");
    assert_eq!(fs::metadata(&staged.temp_path).unwrap().len(), out.bytes);
    staged.commit().unwrap();
    assert!(final_path.exists());
    assert!(!staged.temp_path.exists(), "temp file left after commit");
    assert_no_temp_files(final_path.parent().unwrap());
    out
}

fn assert_no_temp_files(dir: &Path) {
    let leftovers: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(expense_sync::fsutil::TEMP_PREFIX)
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn csv_sink(dir: &Path, config: CsvSinkConfig, schema: Arc<Schema>) -> (Box<dyn Sink>, PathBuf) {
    let config = SinkConfig::Csv(config);
    assert!(config.validate("sinks[0]").is_empty());
    let path = expense_sync::sinks::render_path(config.path_template(), &ctx(dir));
    (config.build(&ctx(dir), schema).unwrap(), path)
}

fn parquet_sink(
    dir: &Path,
    config: ParquetSinkConfig,
    schema: Arc<Schema>,
) -> (Box<dyn Sink>, PathBuf) {
    let config = SinkConfig::Parquet(config);
    assert!(config.validate("sinks[0]").is_empty());
    let path = expense_sync::sinks::render_path(config.path_template(), &ctx(dir));
    (config.build(&ctx(dir), schema).unwrap(), path)
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::ReaderBuilder::new().from_path(path).unwrap();
    let header = reader.headers().unwrap().iter().map(String::from).collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

#[test]
fn csv_keeps_hostile_strings_intact() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema {
        columns: vec![
            Column {
                name: "merchant, name".into(),
                ty: ColumnType::String,
            },
            Column {
                name: "n".into(),
                ty: ColumnType::Integer,
            },
        ],
    });
    let (mut sink, path) = csv_sink(
        dir.path(),
        CsvSinkConfig::new("{pipeline}-{run_date}.csv"),
        schema,
    );
    assert_eq!(path, dir.path().join("daily-2024-03-05.csv"));
    let rows = HOSTILE
        .iter()
        .enumerate()
        .map(|(i, s)| Row {
            cells: vec![Cell::Str((*s).into()), Cell::Int(i as i64)],
        })
        .collect();
    sink.write(&Batch { rows }).unwrap();
    let out = finish_and_commit(sink, &path);
    assert_eq!((out.kind, out.rows), ("csv", HOSTILE.len() as u64));

    let bytes = fs::read(&path).unwrap();
    assert!(
        !bytes.starts_with(b"\xEF\xBB\xBF"),
        "BOM written without being asked"
    );
    assert!(bytes.starts_with(b"\"merchant, name\",n\r\n"));
    let (header, rows) = read_csv(&path);
    assert_eq!(header, ["merchant, name", "n"]);
    let texts: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(texts, HOSTILE);
    assert_eq!(rows[6][1], "6");
}

#[test]
fn csv_bom_is_written_only_when_asked_and_options_apply() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = CsvSinkConfig::new("bom.csv");
    config.bom = Some(true);
    config.delimiter = ';';
    config.line_ending = Some(LineEnding::Lf);
    let (mut sink, path) = csv_sink(dir.path(), config, all_types_schema());
    sink.write(&Batch {
        rows: all_types_rows(),
    })
    .unwrap();
    finish_and_commit(sink, &path);
    let text = fs::read_to_string(&path).unwrap();
    let body = text.strip_prefix('\u{feff}').expect("BOM at the start");
    let lines: Vec<&str> = body.split('\n').collect();
    assert_eq!(
        lines,
        [
            "text;amount;at;day;flag;count",
            "Acme, Inc.;-1234.50;2024-03-05T10:22:33.123456Z;2024-02-29;true;-42",
            ";;;;;",
            "🍽️;123456789012.34;1969-12-31T23:59:59Z;1900-01-01;false;9223372036854775807",
            ";0.10;;;;0",
            "",
        ]
    );

    let mut no_header = CsvSinkConfig::new("plain.csv");
    no_header.header = false;
    let (mut sink, path) = csv_sink(dir.path(), no_header, all_types_schema());
    sink.write(&Batch {
        rows: all_types_rows()[..1].to_vec(),
    })
    .unwrap();
    finish_and_commit(sink, &path);
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "\"Acme, Inc.\",-1234.50,2024-03-05T10:22:33.123456Z,2024-02-29,true,-42\r\n"
    );
}

#[test]
fn csv_with_no_rows_still_has_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, path) = csv_sink(
        dir.path(),
        CsvSinkConfig::new("empty.csv"),
        all_types_schema(),
    );
    let out = finish_and_commit(sink, &path);
    assert_eq!(out.rows, 0);
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "text,amount,at,day,flag,count\r\n"
    );
}

#[test]
fn parquet_declares_exact_arrow_types_and_keeps_values_and_nulls() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sink, path) = parquet_sink(
        dir.path(),
        ParquetSinkConfig::new("lake/{pipeline}/{run_time}.parquet"),
        all_types_schema(),
    );
    assert_eq!(path, dir.path().join("lake/daily/20240305T060708Z.parquet"));
    let rows = all_types_rows();
    sink.write(&Batch {
        rows: rows[..2].to_vec(),
    })
    .unwrap();
    sink.write(&Batch {
        rows: rows[2..].to_vec(),
    })
    .unwrap();
    let out = finish_and_commit(sink, &path);
    assert_eq!((out.kind, out.rows), ("parquet", 4));

    let reader = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(&path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let schema = reader.schema();
    let types: Vec<(String, DataType, bool)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
        .collect();
    assert_eq!(
        types,
        [
            ("text".to_string(), DataType::Utf8, true),
            ("amount".to_string(), DataType::Decimal128(18, 2), true),
            (
                "at".to_string(),
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true
            ),
            ("day".to_string(), DataType::Date32, true),
            ("flag".to_string(), DataType::Boolean, true),
            ("count".to_string(), DataType::Int64, true),
        ]
    );
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    let batch = arrow::compute::concat_batches(&schema, &batches).unwrap();
    assert_eq!(batch.num_rows(), 4);

    let text = batch
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert_eq!(text.value(0), "Acme, Inc.");
    assert!(text.is_null(1) && text.is_null(3));
    assert_eq!(text.value(2), "🍽️");

    let amount = batch
        .column(1)
        .as_any()
        .downcast_ref::<Decimal128Array>()
        .unwrap();
    let cents: Vec<Option<i128>> = amount.iter().collect();
    assert_eq!(
        cents,
        [Some(-123_450), None, Some(12_345_678_901_234), Some(10)]
    );

    let at = batch
        .column(2)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .unwrap();
    assert_eq!(at.value(0), 1_709_634_153_123_456);
    assert!(at.is_null(1));
    assert_eq!(at.value(2), -1_000_000);

    let day = batch
        .column(3)
        .as_any()
        .downcast_ref::<Date32Array>()
        .unwrap();
    assert_eq!(day.value(0), 19_782);
    assert_eq!(day.value(2), -25_567);
    assert!(day.is_null(3));

    let flag = batch
        .column(4)
        .as_any()
        .downcast_ref::<BooleanArray>()
        .unwrap();
    assert_eq!(
        flag.iter().collect::<Vec<_>>(),
        [Some(true), None, Some(false), None]
    );

    let count = batch
        .column(5)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(
        count.iter().collect::<Vec<_>>(),
        [Some(-42), None, Some(i64::MAX), Some(0)]
    );
}

#[test]
fn parquet_splits_row_groups_and_honours_compression() {
    let dir = tempfile::tempdir().unwrap();
    for (compression, codec) in [
        (
            "zstd",
            parquet::basic::Compression::ZSTD(Default::default()),
        ),
        ("snappy", parquet::basic::Compression::SNAPPY),
        ("none", parquet::basic::Compression::UNCOMPRESSED),
    ] {
        let level = if compression == "zstd" {
            "zstd_level = 9\n"
        } else {
            ""
        };
        let text = format!(
            "[[sinks]]\ntype = \"parquet\"\npath = \"{compression}.parquet\"\ncompression = \"{compression}\"\n{level}row_group_rows = 10\n"
        );
        #[derive(serde::Deserialize)]
        struct File {
            sinks: Vec<SinkConfig>,
        }
        let config = toml::from_str::<File>(&text).unwrap().sinks.remove(0);
        let SinkConfig::Parquet(config) = config else {
            panic!()
        };
        let (mut sink, path) = parquet_sink(dir.path(), config, all_types_schema());
        for _ in 0..25 {
            sink.write(&Batch {
                rows: all_types_rows()[..1].to_vec(),
            })
            .unwrap();
        }
        finish_and_commit(sink, &path);
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(fs::File::open(&path).unwrap()).unwrap();
        let meta = builder.metadata();
        let groups: Vec<i64> = meta.row_groups().iter().map(|g| g.num_rows()).collect();
        assert_eq!(groups, [10, 10, 5], "{compression}");
        // The zstd level is not recorded in the file, so compare the codec only.
        assert_eq!(
            std::mem::discriminant(&meta.row_group(0).column(1).compression()),
            std::mem::discriminant(&codec),
            "{compression}"
        );
    }
}

#[test]
fn abort_and_drop_leave_no_temp_file_and_no_final_file() {
    let dir = tempfile::tempdir().unwrap();
    let (mut csv, csv_path) = csv_sink(dir.path(), CsvSinkConfig::new("a.csv"), all_types_schema());
    let (mut pq, pq_path) = parquet_sink(
        dir.path(),
        ParquetSinkConfig::new("a.parquet"),
        all_types_schema(),
    );
    let batch = Batch {
        rows: all_types_rows(),
    };
    csv.write(&batch).unwrap();
    pq.write(&batch).unwrap();
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        2,
        "two temp files while writing"
    );
    csv.abort();
    pq.abort();
    assert!(!csv_path.exists() && !pq_path.exists());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

    // A sink dropped without finish or abort (a panicking runner) cleans up too.
    let (mut csv, _) = csv_sink(dir.path(), CsvSinkConfig::new("b.csv"), all_types_schema());
    let (pq, _) = parquet_sink(
        dir.path(),
        ParquetSinkConfig::new("b.parquet"),
        all_types_schema(),
    );
    csv.write(&batch).unwrap();
    drop(csv);
    drop(pq);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn rows_of_the_wrong_shape_are_sink_errors_naming_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let (mut csv, _) = csv_sink(dir.path(), CsvSinkConfig::new("a.csv"), all_types_schema());
    let short = Batch {
        rows: vec![Row {
            cells: vec![Cell::Null],
        }],
    };
    let err = csv.write(&short).unwrap_err();
    assert!(err.to_string().starts_with("csv sink "), "{err}");
    csv.abort();

    let (mut pq, _) = parquet_sink(
        dir.path(),
        ParquetSinkConfig::new("a.parquet"),
        all_types_schema(),
    );
    let mut row = all_types_rows().remove(0);
    row.cells[1] = Cell::Str("12.30".into());
    let err = pq.write(&Batch { rows: vec![row] }).unwrap_err();
    assert!(err.to_string().contains("column `amount`"), "{err}");
    pq.abort();
    assert_no_temp_files(dir.path());
}

#[test]
fn unwritable_output_directory_is_a_clear_sink_error() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    fs::write(&blocker, b"x").unwrap();
    let config = SinkConfig::Csv(CsvSinkConfig::new("not-a-dir/out.csv"));
    let err = match config.build(&ctx(dir.path()), all_types_schema()) {
        Ok(_) => panic!("built a sink under a file"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(text.starts_with("csv sink "), "{text}");
    assert!(text.contains("not-a-dir"), "{text}");
}

#[test]
fn fyle_expense_reaches_csv_and_parquet_to_the_cent() {
    let record: serde_json::Value =
        serde_json::from_str(include_str!("../src/transforms/testdata/expense.json")).unwrap();
    let projector = Projector::new(&default_columns("expenses").unwrap()).unwrap();
    let row = projector.project(&record).unwrap();
    let schema = projector.schema().clone();
    let amount_idx = schema
        .columns
        .iter()
        .position(|c| c.name == "amount")
        .unwrap();
    let purpose_idx = schema
        .columns
        .iter()
        .position(|c| c.name == "purpose")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let batch = Batch { rows: vec![row] };

    let (mut csv, csv_path) = csv_sink(dir.path(), CsvSinkConfig::new("e.csv"), schema.clone());
    csv.write(&batch).unwrap();
    finish_and_commit(csv, &csv_path);
    let (header, rows) = read_csv(&csv_path);
    assert_eq!(header[amount_idx], "amount");
    assert_eq!(rows[0][amount_idx], "-1234.50");
    assert_eq!(
        rows[0][purpose_idx],
        "=HYPERLINK(\"http://evil\") client dinner 🍽️"
    );

    let (mut pq, pq_path) = parquet_sink(dir.path(), ParquetSinkConfig::new("e.parquet"), schema);
    pq.write(&batch).unwrap();
    finish_and_commit(pq, &pq_path);
    let mut reader = ParquetRecordBatchReaderBuilder::try_new(fs::File::open(&pq_path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let got = reader.next().unwrap().unwrap();
    let amount = got
        .column(amount_idx)
        .as_any()
        .downcast_ref::<Decimal128Array>()
        .unwrap();
    // Default amounts are `scale = "currency"`: Parquet holds every currency's minor units (3).
    assert_eq!(amount.value(0), -1_234_500);
    assert_eq!(amount.precision(), 18);
    assert_eq!(amount.scale(), 3);
}

#[test]
fn csv_single_column_null_rows_are_not_lost_as_blank_lines() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema {
        columns: vec![Column {
            name: "memo".into(),
            ty: ColumnType::String,
        }],
    });
    let (mut sink, path) = csv_sink(dir.path(), CsvSinkConfig::new("one.csv"), schema);
    let rows = [Cell::Null, Cell::Str("x".into()), Cell::Str("".into())]
        .into_iter()
        .map(|c| Row { cells: vec![c] })
        .collect();
    sink.write(&Batch { rows }).unwrap();
    let out = finish_and_commit(sink, &path);
    assert_eq!(out.rows, 3);
    let (_, rows) = read_csv(&path);
    assert_eq!(rows, [vec![""], vec!["x"], vec![""]]);
}

#[test]
fn csv_with_lf_endings_still_quotes_carriage_returns() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema {
        columns: vec![Column {
            name: "memo".into(),
            ty: ColumnType::String,
        }],
    });
    let mut config = CsvSinkConfig::new("lf.csv");
    config.line_ending = Some(LineEnding::Lf);
    config.delimiter = '\t';
    let (mut sink, path) = csv_sink(dir.path(), config, schema);
    let rows = HOSTILE
        .iter()
        .chain(&["tab\there", "bare\rcr"])
        .map(|s| Row {
            cells: vec![Cell::Str((*s).into())],
        })
        .collect();
    sink.write(&Batch { rows }).unwrap();
    finish_and_commit(sink, &path);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b'\t')
        .from_path(&path)
        .unwrap();
    let got: Vec<String> = reader
        .records()
        .map(|r| r.unwrap()[0].to_string())
        .collect();
    let mut want: Vec<&str> = HOSTILE.to_vec();
    want.extend(["tab\there", "bare\rcr"]);
    assert_eq!(got, want);
}
