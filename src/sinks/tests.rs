use std::str::FromStr;

use chrono::{NaiveDate, TimeZone};
use rust_decimal::Decimal;

use super::csv::{CsvSinkConfig, LineEnding};
use super::parquet::{Compression, ParquetSinkConfig};
use super::*;

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct File {
    sinks: Vec<SinkConfig>,
}

fn from_toml(text: &str) -> Result<Vec<SinkConfig>, String> {
    toml::from_str::<File>(text)
        .map(|f| f.sinks)
        .map_err(|e| e.to_string())
}

/// Deserializes the way the pipeline loader does: `config` crate, then serde_path_to_error.
fn from_config_crate(text: &str) -> Result<Vec<SinkConfig>, (String, String)> {
    let built = ::config::Config::builder()
        .add_source(::config::File::from_str(text, ::config::FileFormat::Toml))
        .build()
        .unwrap();
    serde_path_to_error::deserialize::<_, File>(built)
        .map(|f| f.sinks)
        .map_err(|e| (e.path().to_string(), e.inner().to_string()))
}

fn ctx() -> SinkContext {
    SinkContext {
        pipeline: "daily".into(),
        run_id: "r42".into(),
        started_at: Utc.with_ymd_and_hms(2024, 3, 5, 6, 7, 8).unwrap(),
        output_dir: PathBuf::from("/data/out"),
        window_start: None,
        window_end: Some(Utc.with_ymd_and_hms(2024, 3, 5, 6, 0, 0).unwrap()),
    }
}

const BOTH: &str = r#"
[[sinks]]
type = "csv"
path = "{pipeline}-{run_date}.csv"
delimiter = ";"
bom = true
line_ending = "lf"

[[sinks]]
type = "parquet"
path = "lake/{run_time}.parquet"
compression = "snappy"
row_group_rows = 1000
"#;

#[test]
fn sink_tables_deserialize_with_defaults() {
    for sinks in [from_toml(BOTH).unwrap(), from_config_crate(BOTH).unwrap()] {
        let SinkConfig::Csv(c) = &sinks[0] else {
            panic!("{sinks:?}")
        };
        assert_eq!(
            (c.delimiter, c.bom, c.header, c.line_ending),
            (';', Some(true), true, Some(LineEnding::Lf))
        );
        let SinkConfig::Parquet(p) = &sinks[1] else {
            panic!("{sinks:?}")
        };
        assert_eq!(
            (p.compression, p.zstd_level, p.row_group_rows),
            (Compression::Snappy, None, 1000)
        );
        assert_eq!(sinks[1].kind(), "parquet");
        assert_eq!(sinks[0].path_template(), "{pipeline}-{run_date}.csv");
    }
    let sinks = from_toml("[[sinks]]\ntype = \"csv\"\npath = \"x.csv\"\n").unwrap();
    let SinkConfig::Csv(c) = &sinks[0] else {
        panic!()
    };
    assert_eq!(
        (c.delimiter, c.writes_bom(), c.header, c.line_ending()),
        (',', false, true, LineEnding::Crlf)
    );
    let sinks = from_toml("[[sinks]]\ntype = \"parquet\"\npath = \"x.parquet\"\n").unwrap();
    let SinkConfig::Parquet(p) = &sinks[0] else {
        panic!()
    };
    assert_eq!(
        (p.compression, p.zstd_level, p.row_group_rows),
        (Compression::Zstd, None, 65_536)
    );
}

#[test]
fn unknown_key_inside_a_sink_table_is_rejected_and_named() {
    let text = "[[sinks]]\ntype = \"csv\"\npath = \"x.csv\"\ndelimeter = \";\"\n";
    let err = from_toml(text).unwrap_err();
    assert!(err.contains("unknown field `delimeter`"), "{err}");

    let (path, message) = from_config_crate(text).unwrap_err();
    assert_eq!(path, "sinks[0]");
    assert!(message.contains("unknown field `delimeter`"), "{message}");

    let text = "[[sinks]]\ntype = \"parquet\"\npath = \"x.parquet\"\ncompresion = \"zstd\"\n";
    assert!(
        from_toml(text)
            .unwrap_err()
            .contains("unknown field `compresion`")
    );
    let (_, message) = from_config_crate(text).unwrap_err();
    assert!(message.contains("unknown field `compresion`"), "{message}");
}

#[test]
fn unknown_or_missing_sink_type_is_rejected() {
    let err = from_toml("[[sinks]]\ntype = \"xlsx\"\npath = \"x\"\n").unwrap_err();
    assert!(err.contains("unknown variant `xlsx`"), "{err}");
    let (_, message) = from_config_crate("[[sinks]]\ntype = \"xlsx\"\npath = \"x\"\n").unwrap_err();
    assert!(message.contains("xlsx"), "{message}");
    let err = from_toml("[[sinks]]\npath = \"x\"\n").unwrap_err();
    assert!(err.contains("missing field `type`"), "{err}");
    let err = from_toml("[[sinks]]\ntype = \"csv\"\n").unwrap_err();
    assert!(err.contains("missing field `path`"), "{err}");
    let err =
        from_toml("[[sinks]]\ntype = \"csv\"\npath = \"x\"\ndelimiter = \";;\"\n").unwrap_err();
    assert!(err.contains("delimiter") || err.contains("char"), "{err}");
}

#[test]
fn sink_config_also_reads_from_json_with_exact_numbers() {
    // serde_json's arbitrary_precision buffers numbers specially; internally tagged enums must still read them.
    let json = r#"{"sinks": [{"type": "parquet", "path": "x.parquet", "row_group_rows": 10, "zstd_level": 5}]}"#;
    let result = serde_json::from_str::<File>(json);
    match result {
        Ok(f) => {
            let SinkConfig::Parquet(p) = &f.sinks[0] else {
                panic!()
            };
            assert_eq!((p.row_group_rows, p.zstd_level), (10, Some(5)));
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn validate_keys_problems_under_the_prefix() {
    let mut csv = CsvSinkConfig::new("out/{pipeline}-{date}.csv");
    csv.delimiter = '"';
    let problems = SinkConfig::Csv(csv).validate("sinks[1]");
    let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["sinks[1].path", "sinks[1].delimiter"],
        "{problems:?}"
    );
    assert!(problems[0].message.contains("{date}"));

    for bad in ['\n', '\r', 'é'] {
        let mut c = CsvSinkConfig::new("x.csv");
        c.delimiter = bad;
        assert_eq!(SinkConfig::Csv(c).validate("s").len(), 1, "{bad:?}");
    }
    let mut tab = CsvSinkConfig::new("x.tsv");
    tab.delimiter = '\t';
    assert!(SinkConfig::Csv(tab).validate("s").is_empty());

    let mut pq = ParquetSinkConfig::new("x.parquet");
    pq.zstd_level = Some(23);
    pq.row_group_rows = 0;
    let keys: Vec<_> = SinkConfig::Parquet(pq.clone())
        .validate("sinks[0]")
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(keys, ["sinks[0].zstd_level", "sinks[0].row_group_rows"]);
    pq.zstd_level = Some(3);
    pq.row_group_rows = 10;
    pq.compression = Compression::None;
    assert_eq!(SinkConfig::Parquet(pq).validate("p")[0].key, "p.zstd_level");

    for (path, ok) in [
        ("", false),
        ("out/", false),
        ("x-{run_id.csv", false),
        ("x}.csv", false),
        ("{pipeline}/{run_date}/{run_time}-{run_id}.csv", true),
        ("{window_start}-{window_end}.csv", true),
    ] {
        let problems = SinkConfig::Csv(CsvSinkConfig::new(path)).validate("k");
        assert_eq!(problems.is_empty(), ok, "{path}: {problems:?}");
        if !ok {
            assert_eq!(problems[0].key, "k.path");
        }
    }
}

#[test]
fn render_path_expands_placeholders_and_resolves_relative_paths() {
    let c = ctx();
    assert_eq!(
        render_path("{pipeline}/{run_date}/exp-{run_time}-{run_id}.csv", &c),
        PathBuf::from("/data/out/daily/2024-03-05/exp-20240305T060708Z-r42.csv")
    );
    assert_eq!(
        render_path("/abs/{pipeline}.parquet", &c),
        PathBuf::from("/abs/daily.parquet")
    );
    assert_eq!(
        render_path("exp-{window_start}-{window_end}.csv", &c),
        PathBuf::from("/data/out/exp-beginning-20240305T060000Z.csv")
    );
    let windowed = SinkContext {
        window_start: Some(Utc.with_ymd_and_hms(2024, 3, 4, 0, 0, 0).unwrap()),
        window_end: None,
        ..ctx()
    };
    assert_eq!(
        render_path("{window_start}_{window_end}.csv", &windowed),
        PathBuf::from("/data/out/20240304T000000Z_open.csv")
    );
    assert_eq!(ctx().temp_tag(), "daily.r42");
    assert_eq!(
        render_path("x-{nope}.csv", &c),
        PathBuf::from("/data/out/x-{nope}.csv")
    );
}

#[test]
fn cell_text_formats_each_type_for_csv() {
    let t = Utc.with_ymd_and_hms(2024, 3, 5, 10, 22, 33).unwrap();
    let cases = [
        (Cell::Null, ""),
        (Cell::Decimal(Decimal::from_str("12.30").unwrap()), "12.30"),
        (Cell::Decimal(Decimal::from_str("-5.00").unwrap()), "-5.00"),
        (Cell::Int(-7), "-7"),
        (Cell::Bool(true), "true"),
        (Cell::Timestamp(t), "2024-03-05T10:22:33Z"),
        (
            Cell::Timestamp(t + chrono::Duration::microseconds(120)),
            "2024-03-05T10:22:33.000120Z",
        ),
        (
            Cell::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()),
            "2024-02-29",
        ),
    ];
    for (cell, text) in cases {
        assert_eq!(cell_text(&cell), text);
    }
}

#[test]
fn decimals_are_fitted_to_the_column_without_rounding() {
    let d = |s| Decimal::from_str(s).unwrap();
    assert_eq!(
        fit_decimal_for_column(d("5"), 18, 2).unwrap().to_string(),
        "5.00"
    );
    assert!(fit_decimal_for_column(d("5.001"), 18, 2).is_err());
    assert!(fit_decimal_for_column(d("1000.00"), 5, 2).is_err());
    assert_eq!(
        fit_decimal_for_column(d("999.99"), 5, 2)
            .unwrap()
            .mantissa(),
        99_999
    );
}

#[test]
fn type_errors_inside_a_sink_table_name_the_inner_key() {
    let text = "[[sinks]]\ntype = \"csv\"\npath = \"x.csv\"\nbom = \"yes\"\n";
    let err = from_toml(text).unwrap_err();
    assert!(
        err.contains("`bom`: invalid type: string \"yes\", expected a boolean"),
        "{err}"
    );
    let (path, message) = from_config_crate(text).unwrap_err();
    assert_eq!(path, "sinks[0]");
    assert!(message.starts_with("`bom`: invalid type"), "{message}");
    assert_eq!(message.matches("bom").count(), 1, "{message}");

    let text = "[[sinks]]\ntype = \"parquet\"\npath = \"x.parquet\"\nrow_group_rows = -5\n";
    let (_, message) = from_config_crate(text).unwrap_err();
    assert!(
        message.starts_with("`row_group_rows`: invalid value"),
        "{message}"
    );
    let text = "[[sinks]]\ntype = 3\npath = \"x.parquet\"\n";
    assert!(
        from_toml(text)
            .unwrap_err()
            .contains("`type`: expected a string")
    );
}

proptest::proptest! {
    #[test]
    fn push_decimal_prints_what_display_prints(
        lo: u32,
        mid: u32,
        hi: u32,
        small in 0u32..100_000,
        negative: bool,
        scale in 0u32..=28,
    ) {
        for d in [
            Decimal::from_parts(lo, mid, hi, negative, scale),
            Decimal::from_parts(small, 0, 0, negative, scale),
            Decimal::from_parts(lo, mid, 0, negative, scale),
        ] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, &d, b'.');
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), format!("x{d}"));
            let mut comma = Vec::new();
            push_decimal(&mut comma, &d, b',');
            proptest::prop_assert_eq!(String::from_utf8(comma).unwrap(), d.to_string().replace('.', ","));
        }
    }
}

#[test]
fn push_cell_text_and_push_cell_bytes_write_what_cell_text_returns() {
    let t = Utc.with_ymd_and_hms(2024, 3, 5, 10, 22, 33).unwrap();
    let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
        .unwrap()
        .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
        .unwrap()
        .and_utc();
    let d = |s| Cell::Decimal(Decimal::from_str(s).unwrap());
    let cells = [
        Cell::Null,
        Cell::Str("a, \"b\" é".into()),
        Cell::Str("a, \"b\"".into()),
        d("-0.050"),
        d("-0.00"),
        d("0"),
        d("79228162514264337593543950335"),
        d("-7.9228162514264337593543950335"),
        d("0.0000000000000000000000000001"),
        Cell::Int(i64::MIN),
        Cell::Int(0),
        Cell::Int(i64::MAX),
        Cell::Bool(false),
        Cell::Bool(true),
        Cell::Timestamp(t),
        Cell::Timestamp(t + chrono::Duration::nanoseconds(999)),
        Cell::Timestamp(t + chrono::Duration::microseconds(123_456)),
        Cell::Timestamp(t + chrono::Duration::microseconds(1)),
        Cell::Timestamp(Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap()),
        Cell::Timestamp(Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap()),
        Cell::Timestamp(Utc.with_ymd_and_hms(12345, 6, 7, 8, 9, 10).unwrap()),
        Cell::Timestamp(Utc.with_ymd_and_hms(-44, 3, 15, 0, 0, 0).unwrap()),
        Cell::Timestamp(leap),
        Cell::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()),
        Cell::Date(NaiveDate::from_ymd_opt(0, 1, 2).unwrap()),
        Cell::Date(NaiveDate::from_ymd_opt(7, 1, 2).unwrap()),
        Cell::Date(NaiveDate::from_ymd_opt(10000, 1, 2).unwrap()),
        Cell::Date(NaiveDate::from_ymd_opt(-3, 1, 2).unwrap()),
    ];
    for cell in cells {
        let mut buf = b"x".to_vec();
        push_cell_bytes(&mut buf, &cell);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            format!("x{}", cell_text(&cell)),
            "{cell:?}"
        );
        let mut text = String::from("x");
        push_cell_text(&mut text, &cell);
        assert_eq!(text, format!("x{}", cell_text(&cell)), "{cell:?}");
    }
}

/// What the csv crate writes for `rows` with `config`'s delimiter, terminator,
/// quote style and null text (cells as `cell_text`, decimals already at their column's scale).
fn csv_crate_bytes(config: &CsvSinkConfig, header: &[&str], rows: &[crate::row::Row]) -> Vec<u8> {
    let mut w = ::csv::WriterBuilder::new()
        .delimiter(config.delimiter as u8)
        .terminator(match config.line_ending() {
            LineEnding::Crlf => ::csv::Terminator::CRLF,
            LineEnding::Lf => ::csv::Terminator::Any(b'\n'),
        })
        .quote_style(match config.quote_style {
            super::csv::QuoteStyle::Necessary => ::csv::QuoteStyle::Necessary,
            super::csv::QuoteStyle::Always => ::csv::QuoteStyle::Always,
            super::csv::QuoteStyle::NonNumeric => ::csv::QuoteStyle::NonNumeric,
        })
        .from_writer(Vec::new());
    w.write_record(header).unwrap();
    for row in rows {
        w.write_record(row.cells.iter().map(|c| match c {
            Cell::Null => config.null_text.clone(),
            c => cell_text(c).into_owned(),
        }))
        .unwrap();
    }
    w.into_inner().unwrap()
}

/// Writes `rows` through the CSV sink and returns the file's bytes.
fn csv_sink_bytes(config: &CsvSinkConfig, schema: Schema, rows: Vec<crate::row::Row>) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.csv");
    let mut c = ctx();
    c.output_dir = dir.path().to_path_buf();
    let mut sink =
        Box::new(super::csv::CsvSink::create(config, &path, &c, Arc::new(schema)).unwrap());
    sink.write(&Batch { rows }).unwrap();
    let out = sink.finish().unwrap();
    let staged = out.staged.as_ref().unwrap();
    let bytes = std::fs::read(&staged.temp_path).unwrap();
    staged.discard();
    bytes
}

fn text_strategy() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        proptest::string::string_regex("[a,;\"\r\n\t '=+@é.0-9eE:T|-]{0,40}").unwrap(),
        proptest::sample::select(vec![
            "",
            "1",
            "-1.5",
            "1e3",
            "NaN",
            "inf",
            "-Infinity",
            " 1",
            "1 ",
            "0x10",
            "\"",
            "\"\"",
        ])
        .prop_map(String::from),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    #[test]
    fn csv_sink_writes_the_bytes_the_csv_crate_writes(
        texts in proptest::collection::vec(proptest::option::of(text_strategy()), 1..40),
        style in 0usize..3,
        lf: bool,
        // Also bytes that numbers, dates and timestamps are written with.
        delimiter in proptest::sample::select(vec![',', ';', '\t', '|', '-', ':', 'T', '0', 'e']),
        null_text in proptest::sample::select(vec!["", "NULL", "a;b"]),
        one_column: bool,
    ) {
        use crate::row::{Column, ColumnType, Row};
        let mut config = CsvSinkConfig::new("x.csv");
        config.quote_style = [
            super::csv::QuoteStyle::Necessary,
            super::csv::QuoteStyle::Always,
            super::csv::QuoteStyle::NonNumeric,
        ][style];
        config.line_ending = Some(if lf { LineEnding::Lf } else { LineEnding::Crlf });
        config.delimiter = delimiter;
        config.null_text = null_text.to_string();
        let col = |name: &str, ty| Column { name: name.into(), ty };
        let money = ColumnType::Decimal { precision: 18, scale: 2 };
        let mut columns = vec![col("text", ColumnType::String)];
        if !one_column {
            columns.extend([
                col("a,\"b\"", money),
                col("n", ColumnType::Integer),
                col("ok", ColumnType::Bool),
                col("at", ColumnType::Timestamp),
                col("on", ColumnType::Date),
            ]);
        }
        let rows: Vec<Row> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut cells = vec![t.clone().map_or(Cell::Null, |s| Cell::Str(s.into()))];
                if !one_column {
                    cells.extend([
                        if i % 4 == 3 { Cell::Null } else { Cell::Decimal(Decimal::new(i as i64 * 137 - 300, 2)) },
                        Cell::Int(i as i64 - 5),
                        Cell::Bool(i % 2 == 0),
                        Cell::Timestamp(Utc.timestamp_opt(1_700_000_000 + i as i64 * 3601, (i as u32 % 3) * 250_000_000).unwrap()),
                        Cell::Date(NaiveDate::from_ymd_opt(2024, 1, 1).unwrap() + chrono::Days::new(i as u64)),
                    ]);
                }
                Row { cells }
            })
            .collect();
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        let expected = csv_crate_bytes(&config, &names, &rows);
        let schema = Schema { columns: columns.clone() };
        let actual = csv_sink_bytes(&config, schema, rows);
        proptest::prop_assert_eq!(String::from_utf8(actual).unwrap(), String::from_utf8(expected).unwrap());
    }
}

proptest::proptest! {
    #[test]
    fn column_mantissa_is_the_fitted_decimals_mantissa(
        lo: u32,
        mid: u32,
        small in 0u32..100_000,
        negative: bool,
        from in 0u32..=28,
        precision in 1u8..=38,
        scale in 0u8..=28,
    ) {
        for d in [
            Decimal::from_parts(lo, mid, 0, negative, from),
            Decimal::from_parts(small, 0, 0, negative, from),
            Decimal::from_parts(lo, mid, small, negative, from),
        ] {
            proptest::prop_assert_eq!(
                column_mantissa(&d, precision, scale),
                fit_decimal_for_column(d, precision, scale).map(|f| f.mantissa())
            );
        }
    }
}
