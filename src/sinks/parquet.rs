//! Parquet sink: typed columns for analysts and data lakes.
//!
//! Column types map one to one: string → `Utf8`, decimal →
//! `Decimal128(precision, scale)` built from the exact mantissa (no `f64`),
//! timestamp → `Timestamp(Microsecond, "UTC")`, date → `Date32`, bool →
//! `Boolean`, integer → `Int64`; every column is nullable. Memory is bounded
//! by one row group's buffered pages: the writer closes a row group after
//! `row_group_rows` rows or once it holds `row_group_bytes`, whichever comes
//! first. Arrow arrays live only for the batch being encoded.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use ::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use ::arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use ::arrow::record_batch::RecordBatch;
use ::parquet::arrow::ArrowWriter;
use ::parquet::basic::{Compression as PqCompression, ZstdLevel};
use ::parquet::file::properties::WriterProperties;
use chrono::{Datelike, NaiveDate};
use serde::Deserialize;

use super::{Sink, SinkContext, SinkError, SinkOutput, column_mantissa, label, stage};
use crate::common::Problem;
use crate::fsutil::{StagedFile, sync_file};
use crate::row::{Batch, Cell, Column, ColumnType, Schema};

/// Rows per row group unless configured.
pub const DEFAULT_ROW_GROUP_ROWS: usize = 65_536;
/// Bytes a row group may hold in memory (pages, dictionaries) unless configured:
/// small enough that a million-record export stays within tens of MiB, large
/// enough for row groups of tens of thousands of typical expense rows.
pub const DEFAULT_ROW_GROUP_BYTES: usize = 8 * 1024 * 1024;
/// zstd level unless configured: zstd's own default, a good size/speed balance.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// `[[sinks]] type = "parquet"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// Replace the file at `path` on every run (a fixed "latest" name); off by
    /// default, when an existing file is never replaced.
    #[serde(default)]
    pub overwrite: bool,
    /// Output path; may use `{pipeline}`, `{run_id}`, `{run_date}`, `{run_time}`.
    pub path: String,
    /// Page compression: `zstd` (default), `snappy` or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// zstd level 1..=22 (default 3); only with `compression = "zstd"`.
    #[serde(default)]
    pub zstd_level: Option<i32>,
    /// Rows per row group (default 65 536); bounds the sink's memory.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    /// Close a row group once the writer holds this many bytes for it (default 8 MiB); bounds the sink's memory.
    #[serde(default = "default_row_group_bytes")]
    pub row_group_bytes: usize,
    /// Hive-style partitioning: one file per value of this column, under `{key}={value}/` directories.
    #[serde(default)]
    pub partition_by: Option<String>,
    /// `value` (default), or `year`, `month`, `day` of a date/timestamp column.
    #[serde(default)]
    pub partition_granularity: Granularity,
    /// Write nothing (no file, no manifest) when the run gives this sink no rows; the state still advances.
    #[serde(default)]
    pub skip_empty: bool,
}

/// How a partition column's value becomes a partition directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// The value itself: `{column}=value`.
    #[default]
    Value,
    /// `{column}_year=2024`.
    Year,
    /// `{column}_month=2024-03`.
    Month,
    /// `{column}_day=2024-03-05`.
    Day,
}

fn default_row_group_rows() -> usize {
    DEFAULT_ROW_GROUP_ROWS
}

fn default_row_group_bytes() -> usize {
    DEFAULT_ROW_GROUP_BYTES
}

/// Parquet page compression codecs offered in pipeline files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd: small files, fast to read (the default).
    #[default]
    Zstd,
    /// Snappy: faster to write, larger files.
    Snappy,
    /// No compression.
    None,
}

impl ParquetSinkConfig {
    /// A config writing `path` with all defaults.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            overwrite: false,
            compression: Compression::Zstd,
            zstd_level: None,
            row_group_rows: DEFAULT_ROW_GROUP_ROWS,
            row_group_bytes: DEFAULT_ROW_GROUP_BYTES,
            partition_by: None,
            partition_granularity: Granularity::Value,
            skip_empty: false,
        }
    }

    pub(super) fn validate(&self, key_prefix: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Some(level) = self.zstd_level {
            if self.compression != Compression::Zstd {
                problems.push(Problem::new(
                    format!("{key_prefix}.zstd_level"),
                    "only applies with compression = \"zstd\"; remove it or change `compression`",
                ));
            } else if !(1..=22).contains(&level) {
                problems.push(Problem::new(
                    format!("{key_prefix}.zstd_level"),
                    format!("{level} is out of range; expected 1 (fastest) to 22 (smallest)"),
                ));
            }
        }
        if self.row_group_bytes == 0 {
            problems.push(Problem::new(
                format!("{key_prefix}.row_group_bytes"),
                format!("must be at least 1; the default is {DEFAULT_ROW_GROUP_BYTES} (8 MiB)"),
            ));
        }
        if self.partition_by.is_none() && self.partition_granularity != Granularity::Value {
            problems.push(Problem::new(
                format!("{key_prefix}.partition_granularity"),
                "only applies with partition_by",
            ));
        }
        if self.row_group_rows == 0 {
            problems.push(Problem::new(
                format!("{key_prefix}.row_group_rows"),
                format!("must be at least 1; the default is {DEFAULT_ROW_GROUP_ROWS}"),
            ));
        }
        problems
    }

    pub(super) fn validate_columns(&self, key_prefix: &str, columns: &[&str]) -> Vec<Problem> {
        match &self.partition_by {
            Some(c) if !columns.contains(&c.as_str()) => vec![Problem::new(
                format!("{key_prefix}.partition_by"),
                format!(
                    "there is no column `{c}`; columns are: {}",
                    columns.join(", ")
                ),
            )],
            _ => Vec::new(),
        }
    }

    fn writer_properties(&self) -> Result<WriterProperties, String> {
        let compression = match self.compression {
            Compression::Zstd => {
                let level = self.zstd_level.unwrap_or(DEFAULT_ZSTD_LEVEL);
                PqCompression::ZSTD(ZstdLevel::try_new(level).map_err(|e| e.to_string())?)
            }
            Compression::Snappy => PqCompression::SNAPPY,
            Compression::None => PqCompression::UNCOMPRESSED,
        };
        Ok(WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(self.row_group_rows))
            .set_max_row_group_bytes(Some(self.row_group_bytes.max(1)))
            .set_created_by(format!("expense-sync {}", env!("CARGO_PKG_VERSION")))
            .build())
    }
}

/// The Arrow type a row column is written as.
pub fn arrow_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::String => DataType::Utf8,
        ColumnType::Decimal { precision, scale } => DataType::Decimal128(precision, scale as i8),
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ColumnType::Date => DataType::Date32,
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Integer => DataType::Int64,
    }
}

/// The Arrow schema for a row schema; every column nullable.
pub fn arrow_schema(schema: &Schema) -> SchemaRef {
    Arc::new(ArrowSchema::new(
        schema
            .columns
            .iter()
            .map(|c| Field::new(&c.name, arrow_type(c.ty), true))
            .collect::<Vec<_>>(),
    ))
}

/// Writes rows as Parquet to a staged temporary file.
pub struct ParquetSink {
    label: String,
    schema: Arc<Schema>,
    arrow_schema: SchemaRef,
    // Both `Some` until finish/abort; taken there so Drop can clean up after a panic.
    writer: Option<ArrowWriter<File>>,
    staged: Option<StagedFile>,
    rows: u64,
    /// `row_group_bytes`: the writer's buffered bytes that close a row group.
    flush_bytes: usize,
}

impl std::fmt::Debug for ParquetSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetSink")
            .field("label", &self.label)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl ParquetSink {
    /// Creates the temporary file at `path`'s staged name and starts the Parquet writer.
    pub fn create(
        config: &ParquetSinkConfig,
        path: &Path,
        ctx: &SinkContext,
        schema: Arc<Schema>,
    ) -> Result<Self, SinkError> {
        let label = label("parquet", path);
        if let Some(p) = config.validate("parquet").first() {
            return Err(SinkError::new(&label, p.message.clone()));
        }
        let props = config
            .writer_properties()
            .map_err(|m| SinkError::new(&label, m))?;
        let arrow_schema = arrow_schema(&schema);
        let (staged, file) = stage("parquet", path, ctx)?;
        match ArrowWriter::try_new(file, arrow_schema.clone(), Some(props)) {
            Ok(writer) => Ok(Self {
                label,
                schema,
                arrow_schema,
                writer: Some(writer),
                staged: Some(staged),
                rows: 0,
                flush_bytes: config.row_group_bytes.max(1),
            }),
            Err(e) => {
                staged.discard();
                Err(SinkError::new(
                    &label,
                    format!(
                        "cannot start the Parquet writer on {}: {e}",
                        staged.temp_path.display()
                    ),
                ))
            }
        }
    }

    fn temp_display(&self) -> String {
        self.staged
            .as_ref()
            .map(|s| s.temp_path.display().to_string())
            .unwrap_or_default()
    }

    fn parquet_error(&self, what: &str, e: ::parquet::errors::ParquetError) -> SinkError {
        SinkError::new(
            &self.label,
            format!(
                "{what} {}: {e}; check that the disk is not full and the directory is writable",
                self.temp_display()
            ),
        )
    }

    /// Converts a batch of rows into one Arrow record batch of this sink's schema.
    fn to_record_batch(&self, batch: &Batch) -> Result<RecordBatch, SinkError> {
        let n = batch.rows.len();
        let width = self.schema.columns.len();
        if let Some(row) = batch.rows.iter().find(|r| r.cells.len() != width) {
            return Err(SinkError::new(
                &self.label,
                format!(
                    "a row has {} cells but the schema has {width} columns (a bug in the caller)",
                    row.cells.len()
                ),
            ));
        }
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(width);
        for (i, column) in self.schema.columns.iter().enumerate() {
            let cells = batch.rows.iter().map(|r| &r.cells[i]);
            let array = build_array(column, cells, n).map_err(|m| {
                SinkError::new(&self.label, format!("column `{}`: {m}", column.name))
            })?;
            arrays.push(array);
        }
        RecordBatch::try_new(self.arrow_schema.clone(), arrays).map_err(|e| {
            SinkError::new(&self.label, format!("cannot assemble a record batch: {e}"))
        })
    }

    fn discard(&mut self) {
        self.writer = None;
        if let Some(staged) = self.staged.take() {
            staged.discard();
        }
    }
}

fn mismatch(column: &Column, cell: &Cell) -> String {
    format!(
        "a {:?} cell in a {:?} column (a bug in the caller)",
        cell, column.ty
    )
}

/// Days from 0001-01-01 (CE) to 1970-01-01.
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// Days from 1970-01-01, the Date32 encoding.
fn date32(d: NaiveDate) -> i32 {
    // i32 days reach far beyond chrono's date range, so this cannot overflow.
    d.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE
}

fn build_array<'a>(
    column: &Column,
    cells: impl Iterator<Item = &'a Cell> + Clone,
    n: usize,
) -> Result<ArrayRef, String> {
    Ok(match column.ty {
        ColumnType::String => {
            // Sized exactly, so the value buffer is never regrown and copied.
            let bytes = cells
                .clone()
                .map(|c| match c {
                    Cell::Str(s) => s.len(),
                    _ => 0,
                })
                .sum();
            let mut b = StringBuilder::with_capacity(n, bytes);
            for cell in cells {
                match cell {
                    Cell::Null => b.append_null(),
                    Cell::Str(s) => b.append_value(s),
                    other => return Err(mismatch(column, other)),
                }
            }
            Arc::new(b.finish())
        }
        ColumnType::Decimal { precision, scale } => {
            let mut b = Decimal128Builder::with_capacity(n)
                .with_precision_and_scale(precision, scale as i8)
                .map_err(|e| e.to_string())?;
            for cell in cells {
                match cell {
                    Cell::Null => b.append_null(),
                    Cell::Decimal(d) => b.append_value(column_mantissa(d, precision, scale)?),
                    other => return Err(mismatch(column, other)),
                }
            }
            Arc::new(b.finish())
        }
        ColumnType::Timestamp => {
            let mut b = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
            for cell in cells {
                match cell {
                    Cell::Null => b.append_null(),
                    Cell::Timestamp(t) => b.append_value(t.timestamp_micros()),
                    other => return Err(mismatch(column, other)),
                }
            }
            Arc::new(b.finish())
        }
        ColumnType::Date => {
            let mut b = Date32Builder::with_capacity(n);
            for cell in cells {
                match cell {
                    Cell::Null => b.append_null(),
                    Cell::Date(d) => b.append_value(date32(*d)),
                    other => return Err(mismatch(column, other)),
                }
            }
            Arc::new(b.finish())
        }
        ColumnType::Bool => {
            let mut b = BooleanBuilder::with_capacity(n);
            for cell in cells {
                match cell {
                    Cell::Null => b.append_null(),
                    Cell::Bool(v) => b.append_value(*v),
                    other => return Err(mismatch(column, other)),
                }
            }
            Arc::new(b.finish())
        }
        ColumnType::Integer => {
            let mut b = Int64Builder::with_capacity(n);
            for cell in cells {
                match cell {
                    Cell::Null => b.append_null(),
                    Cell::Int(v) => b.append_value(*v),
                    other => return Err(mismatch(column, other)),
                }
            }
            Arc::new(b.finish())
        }
    })
}

impl ParquetSink {
    /// Bytes the writer holds for the row group in progress (encoded and buffered pages, dictionaries).
    pub fn buffered_bytes(&self) -> usize {
        self.writer.as_ref().map_or(0, |w| w.memory_size())
    }
}

impl Sink for ParquetSink {
    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        if batch.rows.is_empty() {
            return Ok(());
        }
        let record_batch = self.to_record_batch(batch)?;
        let writer = self.writer.as_mut().ok_or_else(|| {
            SinkError::new(
                &self.label,
                "write after finish or abort (a bug in the caller)",
            )
        })?;
        // The writer's own byte limit counts the estimated *encoded* size; what
        // it holds in memory (uncompressed page buffers, dictionaries) can be
        // several times more, and that is what `row_group_bytes` bounds.
        let flush_bytes = self.flush_bytes;
        let written = writer.write(&record_batch).and_then(|()| {
            if writer.memory_size() >= flush_bytes {
                writer.flush()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            return Err(self.parquet_error("cannot write", e));
        }
        self.rows += batch.rows.len() as u64;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<SinkOutput, SinkError> {
        let writer = self.writer.take().ok_or_else(|| {
            SinkError::new(&self.label, "finish after abort (a bug in the caller)")
        })?;
        let result = writer
            .into_inner()
            .map_err(|e| self.parquet_error("cannot finish", e))
            .and_then(|file| {
                let staged = self.staged.as_ref().expect("staged until finish");
                sync_file(&file, &staged.temp_path)
                    .and_then(|_| file.metadata())
                    .map(|m| m.len())
                    .map_err(|e| SinkError::io(&self.label, "cannot make the output durable", &e))
            });
        match result {
            Ok(bytes) => Ok(SinkOutput {
                kind: "parquet",
                staged: Some(self.staged.take().expect("staged until finish")),
                rows: self.rows,
                bytes,
                delivery: None,
                companions: Vec::new(),
            }),
            Err(e) => {
                self.discard();
                Err(e)
            }
        }
    }

    fn abort(mut self: Box<Self>) {
        self.discard();
    }
}

impl Drop for ParquetSink {
    fn drop(&mut self) {
        // Reached with `staged` still set only when neither finish nor abort ran (e.g. a panic).
        self.discard();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::parquet::schema::types::ColumnPath;

    fn expense_like_schema() -> Arc<Schema> {
        let col = |name: &str, ty| Column {
            name: name.into(),
            ty,
        };
        Arc::new(Schema {
            columns: vec![
                col("id", ColumnType::String),
                col("purpose", ColumnType::String),
                col(
                    "amount",
                    ColumnType::Decimal {
                        precision: 18,
                        scale: 2,
                    },
                ),
                col("spent_at", ColumnType::Timestamp),
                col("count", ColumnType::Integer),
            ],
        })
    }

    fn batch(start: usize, n: usize) -> Batch {
        use chrono::TimeZone;
        let rows = (start..start + n)
            .map(|i| crate::row::Row {
                cells: vec![
                    Cell::Str(format!("tx{i:012}").into()),
                    // Distinct text per row, so dictionaries and pages keep growing.
                    Cell::Str(
                        format!(
                            "client dinner {i} with a rather long purpose text {}",
                            i * 7919
                        )
                        .into(),
                    ),
                    Cell::Decimal(rust_decimal::Decimal::new(i as i64 * 101, 2)),
                    Cell::Timestamp(
                        chrono::Utc
                            .timestamp_opt(1_700_000_000 + i as i64, 0)
                            .unwrap(),
                    ),
                    Cell::Int(i as i64),
                ],
            })
            .collect();
        Batch { rows }
    }

    fn context(dir: &Path) -> SinkContext {
        SinkContext {
            pipeline: "p".into(),
            run_id: "r1".into(),
            started_at: chrono::Utc::now(),
            output_dir: dir.to_path_buf(),
            window_start: None,
            window_end: None,
        }
    }

    #[test]
    fn row_group_closes_once_the_writer_holds_row_group_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        let mut config = ParquetSinkConfig::new(path.display().to_string());
        config.compression = Compression::None;
        // The writer's own limit counts estimated encoded bytes; here it held
        // 2.7 MiB of pages and dictionaries while estimating 0.9 MiB.
        config.row_group_bytes = 1024 * 1024;
        let mut sink = Box::new(
            ParquetSink::create(&config, &path, &context(dir.path()), expense_like_schema())
                .unwrap(),
        );
        let mut peak = 0;
        for page in 0..100 {
            sink.write(&batch(page * 200, 200)).unwrap();
            let held = sink.buffered_bytes();
            peak = peak.max(held);
            assert!(
                held < config.row_group_bytes,
                "after page {page} the writer still holds {held} bytes, bound {}",
                config.row_group_bytes
            );
        }
        assert!(peak > 0, "nothing was ever buffered");
        let out = sink.finish().unwrap();
        let staged = out.staged.as_ref().unwrap();
        let reader = ::parquet::file::reader::SerializedFileReader::new(
            File::open(&staged.temp_path).unwrap(),
        )
        .unwrap();
        use ::parquet::file::reader::FileReader;
        let meta = reader.metadata();
        let rows: i64 = meta.row_groups().iter().map(|g| g.num_rows()).sum();
        assert_eq!(rows, 20_000);
        assert!(
            meta.num_row_groups() > 2,
            "{} row groups",
            meta.num_row_groups()
        );
        staged.discard();
    }

    #[test]
    fn writer_properties_carry_codec_level_and_row_group_size() {
        let mut config = ParquetSinkConfig::new("x.parquet");
        config.zstd_level = Some(9);
        config.row_group_rows = 123;
        let props = config.writer_properties().unwrap();
        assert_eq!(
            props.compression(&ColumnPath::from("amount")),
            PqCompression::ZSTD(ZstdLevel::try_new(9).unwrap())
        );
        assert_eq!(props.max_row_group_row_count(), Some(123));
        let default = ParquetSinkConfig::new("x.parquet")
            .writer_properties()
            .unwrap();
        assert_eq!(
            default.compression(&ColumnPath::from("amount")),
            PqCompression::ZSTD(ZstdLevel::try_new(DEFAULT_ZSTD_LEVEL).unwrap())
        );
    }
}
