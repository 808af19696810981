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
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use ::arrow::array::{BooleanBufferBuilder, NullBufferBuilder};
use ::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use ::arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use ::arrow::record_batch::RecordBatch;
use ::parquet::arrow::{ArrowSchemaConverter, ArrowWriter};
use ::parquet::basic::{Compression as PqCompression, ZstdLevel};
use ::parquet::file::properties::WriterProperties;
use ::parquet::schema::types::ColumnPath;
use chrono::{Datelike, NaiveDate};
use serde::Deserialize;

use super::{Sink, SinkContext, SinkError, SinkOutput, column_mantissa, label, stage};
use crate::common::Problem;
use crate::fsutil::{StagedFile, sync_file};
use crate::row::{Batch, Cell, Column, ColumnType, Row, Schema};

/// Rows per row group unless configured.
pub const DEFAULT_ROW_GROUP_ROWS: usize = 65_536;
/// Bytes a row group may hold in memory (pages, dictionaries) unless configured:
/// small enough that a million-record export stays within tens of MiB, large
/// enough for row groups of tens of thousands of typical expense rows.
pub const DEFAULT_ROW_GROUP_BYTES: usize = 8 * 1024 * 1024;
/// zstd level unless configured: the fastest of zstd's regular levels; on
/// expense exports its files are within about 1% of level 3's, for a third
/// less compression work.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

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
    /// zstd level 1..=22 (default 1); only with `compression = "zstd"`.
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
    writer: Option<Writer>,
    staged: Option<StagedFile>,
    rows: u64,
    /// `row_group_bytes`: the writer's buffered bytes that close a row group.
    flush_bytes: usize,
    pending: PendingRows,
}

/// The Parquet writer, started once the first chunk of rows shows which
/// columns are worth a dictionary.
enum Writer {
    /// The file is open (and has passed the schema check); nothing written yet.
    Waiting {
        file: File,
        props: WriterProperties,
    },
    Writing(ArrowWriter<File>),
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
        // What starting the writer would reject, rejected before any row is fetched.
        if let Err(e) = ArrowSchemaConverter::new().convert(&arrow_schema) {
            return Err(SinkError::new(
                &label,
                format!("cannot write these columns as Parquet: {e}"),
            ));
        }
        let (staged, file) = stage("parquet", path, ctx)?;
        Ok(Self {
            label,
            arrow_schema,
            writer: Some(Writer::Waiting { file, props }),
            staged: Some(staged),
            rows: 0,
            flush_bytes: config.row_group_bytes.max(1),
            pending: PendingRows::new(&schema),
            schema,
        })
    }

    /// The started writer; the first call starts it, with no dictionary for
    /// the columns whose pending values are mostly distinct.
    fn started(&mut self) -> Result<&mut ArrowWriter<File>, SinkError> {
        if let Some(Writer::Waiting { .. }) = self.writer {
            let Some(Writer::Waiting { file, props }) = self.writer.take() else {
                unreachable!("matched above")
            };
            let mut builder = props.into_builder();
            for (column, pending) in self.schema.columns.iter().zip(&self.pending.columns) {
                if pending.mostly_distinct() {
                    builder = builder.set_column_dictionary_enabled(
                        ColumnPath::from(column.name.as_str()),
                        false,
                    );
                }
            }
            match ArrowWriter::try_new(file, self.arrow_schema.clone(), Some(builder.build())) {
                Ok(w) => self.writer = Some(Writer::Writing(w)),
                Err(e) => {
                    return Err(self.parquet_error("cannot start the Parquet writer on", e));
                }
            }
        }
        match self.writer.as_mut() {
            Some(Writer::Writing(w)) => Ok(w),
            _ => Err(SinkError::new(
                &self.label,
                "write after finish or abort (a bug in the caller)",
            )),
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

    /// Hands the pending rows to the writer, closing the row group once the
    /// writer holds `row_group_bytes`.
    fn write_pending(&mut self) -> Result<(), SinkError> {
        if self.pending.rows == 0 {
            return Ok(());
        }
        // What the next chunk will hold, about: the row group closes now if it would not fit beside it.
        let chunk_bytes = self.pending.bytes();
        self.started()?;
        let record_batch = self
            .pending
            .take_batch(&self.arrow_schema)
            .map_err(|m| SinkError::new(&self.label, m))?;
        let Some(Writer::Writing(writer)) = self.writer.as_mut() else {
            unreachable!("started above")
        };
        // The writer's own byte limit counts the estimated *encoded* size; what
        // it holds in memory (uncompressed page buffers, dictionaries) can be
        // several times more, and that is what `row_group_bytes` bounds.
        let flush_bytes = self.flush_bytes;
        let written = writer.write(&record_batch).and_then(|()| {
            if writer.memory_size() + chunk_bytes >= flush_bytes {
                writer.flush()
            } else {
                Ok(())
            }
        });
        written.map_err(|e| self.parquet_error("cannot write", e))
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

/// Rows accepted by [`ParquetSink::write`] and not yet handed to the Parquet
/// writer, held column by column in the layout their Arrow arrays take over.
///
/// The writer pays a fixed cost per call and per column (levels, statistics,
/// page checks), so rows go to it in chunks of about [`WRITE_ROWS`] instead of
/// one call per incoming batch; `finish` writes whatever is left.
#[derive(Debug)]
struct PendingRows {
    columns: Vec<PendingColumn>,
    rows: usize,
    /// Text bytes held, so a chunk of very long strings is written early.
    text_bytes: usize,
}

/// One column's values of the pending rows.
#[derive(Debug)]
struct PendingColumn {
    values: PendingValues,
    nulls: NullBufferBuilder,
    /// Values and text bytes of the last chunk, reserved when the next one
    /// starts so that a chunk is built without regrowing its buffers.
    last_len: usize,
    last_bytes: usize,
}

/// A column's values, in the layout its Arrow array takes over without a copy.
#[derive(Debug)]
enum PendingValues {
    /// Where each value ends in `bytes` (the array's offsets without the leading 0).
    Str {
        ends: Vec<i32>,
        bytes: Vec<u8>,
    },
    Decimal {
        values: Vec<i128>,
        precision: u8,
        scale: u8,
    },
    Timestamp(Vec<i64>),
    Date(Vec<i32>),
    Bool(BooleanBufferBuilder),
    Int(Vec<i64>),
}

/// Rows handed to the Parquet writer per call (a chunk ends at the first
/// incoming batch that reaches it).
const WRITE_ROWS: usize = 2048;
/// Non-null values of a column in the first chunk needed to judge whether it
/// is worth a dictionary; with fewer it gets one, as Parquet writers do by default.
const DICTIONARY_SAMPLE: usize = 256;
/// Text bytes that make the pending rows go to the writer before [`WRITE_ROWS`].
const WRITE_TEXT_BYTES: usize = 8 * 1024 * 1024;

/// Why a column could not take a batch's cells.
enum CellError<'a> {
    /// The cell's type is not the column's (a bug in the caller).
    Mismatch(&'a Cell),
    /// The value does not fit the column (e.g. a decimal with too many digits).
    Value(String),
}

impl PendingColumn {
    fn new(ty: ColumnType) -> Self {
        let values = match ty {
            ColumnType::String => PendingValues::Str {
                ends: Vec::new(),
                bytes: Vec::new(),
            },
            ColumnType::Decimal { precision, scale } => PendingValues::Decimal {
                values: Vec::new(),
                precision,
                scale,
            },
            ColumnType::Timestamp => PendingValues::Timestamp(Vec::new()),
            ColumnType::Date => PendingValues::Date(Vec::new()),
            ColumnType::Bool => PendingValues::Bool(BooleanBufferBuilder::new(0)),
            ColumnType::Integer => PendingValues::Int(Vec::new()),
        };
        Self {
            values,
            nulls: NullBufferBuilder::new(0),
            last_len: 0,
            last_bytes: 0,
        }
    }

    /// Appends cell `i` of every row; on error the column may hold part of
    /// them (the caller truncates). Returns the text bytes appended.
    fn extend<'a>(&mut self, rows: &'a [Row], i: usize) -> Result<usize, CellError<'a>> {
        let nulls = &mut self.nulls;
        let first = nulls.is_empty();
        let want = rows.len().max(self.last_len);
        // Each arm: one pass over the batch, the column's type matched once.
        match &mut self.values {
            PendingValues::Str { ends, bytes } => {
                if first {
                    ends.reserve(want);
                    bytes.reserve(self.last_bytes);
                }
                let start = bytes.len();
                for row in rows {
                    match &row.cells[i] {
                        Cell::Str(s) => {
                            bytes.extend_from_slice(s.as_bytes());
                            nulls.append_non_null();
                        }
                        Cell::Null => nulls.append_null(),
                        other => return Err(CellError::Mismatch(other)),
                    }
                    let end = i32::try_from(bytes.len()).map_err(|_| {
                        CellError::Value("more than 2 GiB of text in one batch".into())
                    })?;
                    ends.push(end);
                }
                return Ok(bytes.len() - start);
            }
            PendingValues::Decimal {
                values,
                precision,
                scale,
            } => {
                if first {
                    values.reserve(want);
                }
                for row in rows {
                    match &row.cells[i] {
                        Cell::Decimal(d) => {
                            values.push(
                                column_mantissa(d, *precision, *scale).map_err(CellError::Value)?,
                            );
                            nulls.append_non_null();
                        }
                        Cell::Null => {
                            values.push(0);
                            nulls.append_null();
                        }
                        other => return Err(CellError::Mismatch(other)),
                    }
                }
            }
            PendingValues::Timestamp(values) => {
                extend_primitive(values, nulls, first, want, rows, i, |c| match c {
                    Cell::Timestamp(t) => Some(t.timestamp_micros()),
                    _ => None,
                })?
            }
            PendingValues::Date(values) => {
                extend_primitive(values, nulls, first, want, rows, i, |c| match c {
                    Cell::Date(d) => Some(date32(*d)),
                    _ => None,
                })?
            }
            PendingValues::Int(values) => {
                extend_primitive(values, nulls, first, want, rows, i, |c| match c {
                    Cell::Int(v) => Some(*v),
                    _ => None,
                })?
            }
            PendingValues::Bool(values) => {
                if first {
                    values.reserve(want);
                }
                for row in rows {
                    match &row.cells[i] {
                        Cell::Bool(b) => {
                            values.append(*b);
                            nulls.append_non_null();
                        }
                        Cell::Null => {
                            values.append(false);
                            nulls.append_null();
                        }
                        other => return Err(CellError::Mismatch(other)),
                    }
                }
            }
        }
        Ok(0)
    }

    /// Whether most of the pending values differ from each other (ids,
    /// creation instants): a dictionary would then hold nearly every value a
    /// second time, cost a hash per value, and leave the file bigger than
    /// plain values under zstd. Too few values to tell: no.
    fn mostly_distinct(&self) -> bool {
        let n = self.nulls.len();
        let valid = |i: &usize| self.nulls.is_valid(*i);
        let present = (0..n).filter(valid).count();
        if present < DICTIONARY_SAMPLE {
            return false;
        }
        let limit = present / 2;
        match &self.values {
            PendingValues::Str { ends, bytes } => more_distinct_than(
                (0..n).filter(valid).map(|i| {
                    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
                    &bytes[start..ends[i] as usize]
                }),
                limit,
            ),
            PendingValues::Decimal { values, .. } => {
                more_distinct_than((0..n).filter(valid).map(|i| values[i]), limit)
            }
            PendingValues::Timestamp(v) | PendingValues::Int(v) => {
                more_distinct_than((0..n).filter(valid).map(|i| v[i]), limit)
            }
            PendingValues::Date(v) => more_distinct_than((0..n).filter(valid).map(|i| v[i]), limit),
            // Parquet writes booleans bit-packed, never with a dictionary.
            PendingValues::Bool(_) => false,
        }
    }

    /// Drops every value after the first `len`.
    fn truncate(&mut self, len: usize) {
        match &mut self.values {
            PendingValues::Str { ends, bytes } => {
                ends.truncate(len);
                bytes.truncate(ends.last().map_or(0, |&e| e as usize));
            }
            PendingValues::Decimal { values, .. } => values.truncate(len),
            PendingValues::Timestamp(v) | PendingValues::Int(v) => v.truncate(len),
            PendingValues::Date(v) => v.truncate(len),
            PendingValues::Bool(v) => v.truncate(len),
        }
        self.nulls.truncate(len);
    }

    /// The values as an Arrow array of `data_type`, leaving this column empty.
    fn take_array(&mut self, data_type: &DataType) -> ArrayRef {
        self.last_len = self.nulls.len();
        let nulls = self.nulls.finish();
        match &mut self.values {
            PendingValues::Str { ends, bytes } => {
                self.last_bytes = bytes.len() + bytes.len() / 8;
                let mut offsets = Vec::with_capacity(ends.len() + 1);
                offsets.push(0);
                offsets.append(ends);
                let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
                let bytes = Buffer::from_vec(std::mem::take(bytes));
                // SAFETY: `bytes` is whole `&str`s laid end to end and each offset
                // is where one of them ends, so the buffer is UTF-8 and every
                // offset falls on a character boundary.
                Arc::new(unsafe { StringArray::new_unchecked(offsets, bytes, nulls) })
            }
            PendingValues::Decimal { values, .. } => Arc::new(
                Decimal128Array::new(ScalarBuffer::from(std::mem::take(values)), nulls)
                    .with_data_type(data_type.clone()),
            ),
            PendingValues::Timestamp(v) => Arc::new(
                TimestampMicrosecondArray::new(ScalarBuffer::from(std::mem::take(v)), nulls)
                    .with_data_type(data_type.clone()),
            ),
            PendingValues::Date(v) => Arc::new(Date32Array::new(
                ScalarBuffer::from(std::mem::take(v)),
                nulls,
            )),
            PendingValues::Bool(v) => Arc::new(BooleanArray::new(v.finish(), nulls)),
            PendingValues::Int(v) => Arc::new(Int64Array::new(
                ScalarBuffer::from(std::mem::take(v)),
                nulls,
            )),
        }
    }

    /// Bytes this column's pending values take.
    fn bytes(&self) -> usize {
        let values = match &self.values {
            PendingValues::Str { ends, bytes } => ends.capacity() * 4 + bytes.capacity(),
            PendingValues::Decimal { values, .. } => values.capacity() * 16,
            PendingValues::Timestamp(v) | PendingValues::Int(v) => v.capacity() * 8,
            PendingValues::Date(v) => v.capacity() * 4,
            PendingValues::Bool(v) => v.capacity() / 8,
        };
        values + self.nulls.allocated_size()
    }
}

/// Whether `values` holds more than `limit` distinct values.
fn more_distinct_than<T: std::hash::Hash + Eq>(
    values: impl Iterator<Item = T>,
    limit: usize,
) -> bool {
    let mut seen = std::collections::HashSet::with_capacity_and_hasher(
        limit + 1,
        foldhash::fast::RandomState::default(),
    );
    for v in values {
        if seen.insert(v) && seen.len() > limit {
            return true;
        }
    }
    false
}

/// Appends cell `i` of every row to a fixed-width column; `value` gives the
/// native value of a cell of the column's type and `None` for any other.
fn extend_primitive<'a, T: Default>(
    values: &mut Vec<T>,
    nulls: &mut NullBufferBuilder,
    first: bool,
    want: usize,
    rows: &'a [Row],
    i: usize,
    value: impl Fn(&Cell) -> Option<T>,
) -> Result<(), CellError<'a>> {
    if first {
        values.reserve(want);
    }
    for row in rows {
        let cell = &row.cells[i];
        match value(cell) {
            Some(v) => {
                values.push(v);
                nulls.append_non_null();
            }
            None if matches!(cell, Cell::Null) => {
                values.push(T::default());
                nulls.append_null();
            }
            None => return Err(CellError::Mismatch(cell)),
        }
    }
    Ok(())
}

impl PendingRows {
    fn new(schema: &Schema) -> Self {
        Self {
            columns: schema
                .columns
                .iter()
                .map(|c| PendingColumn::new(c.ty))
                .collect(),
            rows: 0,
            text_bytes: 0,
        }
    }

    /// Appends every row of a batch, or none: on error each column is as it was.
    /// Rows must have one cell per column.
    fn extend(&mut self, schema: &Schema, rows: &[Row]) -> Result<(), String> {
        for (i, (column, pending)) in schema.columns.iter().zip(&mut self.columns).enumerate() {
            match pending.extend(rows, i) {
                Ok(text) => self.text_bytes += text,
                Err(e) => {
                    for c in &mut self.columns[..=i] {
                        c.truncate(self.rows);
                    }
                    return Err(match e {
                        CellError::Mismatch(cell) => {
                            format!("column `{}`: {}", column.name, mismatch(column, cell))
                        }
                        CellError::Value(m) => format!("column `{}`: {m}", column.name),
                    });
                }
            }
        }
        self.rows += rows.len();
        Ok(())
    }

    fn is_full(&self) -> bool {
        self.rows >= WRITE_ROWS || self.text_bytes >= WRITE_TEXT_BYTES
    }

    /// The pending rows as one record batch, leaving none pending.
    fn take_batch(&mut self, schema: &SchemaRef) -> Result<RecordBatch, String> {
        let arrays = self
            .columns
            .iter_mut()
            .zip(schema.fields())
            .map(|(c, f)| c.take_array(f.data_type()))
            .collect();
        self.rows = 0;
        self.text_bytes = 0;
        RecordBatch::try_new(schema.clone(), arrays)
            .map_err(|e| format!("cannot assemble a record batch: {e}"))
    }

    /// Bytes the pending values take.
    fn bytes(&self) -> usize {
        self.columns.iter().map(PendingColumn::bytes).sum()
    }
}

impl ParquetSink {
    /// Bytes held for the row group in progress: the writer's encoded and
    /// buffered pages and dictionaries, and the rows not yet handed to it.
    pub fn buffered_bytes(&self) -> usize {
        let writer = match &self.writer {
            Some(Writer::Writing(w)) => w.memory_size(),
            _ => 0,
        };
        writer + self.pending.bytes()
    }
}

impl Sink for ParquetSink {
    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        if self.writer.is_none() {
            return Err(SinkError::new(
                &self.label,
                "write after finish or abort (a bug in the caller)",
            ));
        }
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
        self.pending
            .extend(&self.schema, &batch.rows)
            .map_err(|m| SinkError::new(&self.label, m))?;
        self.rows += batch.rows.len() as u64;
        // Pending rows count against `row_group_bytes` too.
        if self.pending.is_full() || self.buffered_bytes() >= self.flush_bytes {
            self.write_pending()?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<SinkOutput, SinkError> {
        if self.writer.is_none() {
            return Err(SinkError::new(
                &self.label,
                "finish after abort (a bug in the caller)",
            ));
        }
        // A run with no rows still gets a file (schema, no row groups).
        if let Err(e) = self
            .write_pending()
            .and_then(|()| self.started().map(|_| ()))
        {
            self.discard();
            return Err(e);
        }
        let Some(Writer::Writing(writer)) = self.writer.take() else {
            unreachable!("started above")
        };
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

    fn all_types_schema() -> Arc<Schema> {
        let col = |name: &str, ty| Column {
            name: name.into(),
            ty,
        };
        Arc::new(Schema {
            columns: vec![
                col("text", ColumnType::String),
                col(
                    "money",
                    ColumnType::Decimal {
                        precision: 6,
                        scale: 2,
                    },
                ),
                col("at", ColumnType::Timestamp),
                col("day", ColumnType::Date),
                col("flag", ColumnType::Bool),
                col("n", ColumnType::Integer),
            ],
        })
    }

    /// Row `i` of the all-types schema: every column null now and then, at different rows.
    fn all_types_row(i: usize) -> crate::row::Row {
        use chrono::TimeZone;
        let null_or = |every: usize, cell: Cell| {
            if i.is_multiple_of(every) {
                Cell::Null
            } else {
                cell
            }
        };
        crate::row::Row {
            cells: vec![
                null_or(
                    5,
                    Cell::Str(format!("ünïcödé {i} {}", "x".repeat(i % 40)).into()),
                ),
                // A shorter scale than the column's, which the writer widens.
                null_or(
                    7,
                    Cell::Decimal(rust_decimal::Decimal::new(i as i64 % 9999, 1)),
                ),
                null_or(
                    3,
                    Cell::Timestamp(
                        chrono::Utc
                            .timestamp_opt(1_700_000_000 + i as i64, 1000)
                            .unwrap(),
                    ),
                ),
                null_or(
                    4,
                    Cell::Date(
                        NaiveDate::from_ymd_opt(2024, 1, 1).unwrap()
                            + chrono::Days::new(i as u64 % 400),
                    ),
                ),
                null_or(6, Cell::Bool(i.is_multiple_of(2))),
                null_or(11, Cell::Int(i as i64 * 1_000_003 - 42)),
            ],
        }
    }

    /// Every row of a Parquet file, read back with the parquet crate's Arrow reader, as cells.
    fn read_back(path: &Path) -> Vec<crate::row::Row> {
        use ::arrow::array::{Array, AsArray};
        use ::arrow::datatypes::{Date32Type, Decimal128Type, Int64Type, TimestampMicrosecondType};
        let reader = ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            File::open(path).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        let mut rows = Vec::new();
        for batch in reader {
            let batch = batch.unwrap();
            for r in 0..batch.num_rows() {
                let cells = batch
                    .columns()
                    .iter()
                    .map(|a| {
                        if a.is_null(r) {
                            return Cell::Null;
                        }
                        match a.data_type() {
                            DataType::Utf8 => Cell::Str(a.as_string::<i32>().value(r).into()),
                            DataType::Decimal128(_, scale) => {
                                Cell::Decimal(rust_decimal::Decimal::from_i128_with_scale(
                                    a.as_primitive::<Decimal128Type>().value(r),
                                    *scale as u32,
                                ))
                            }
                            DataType::Timestamp(..) => Cell::Timestamp(
                                chrono::DateTime::from_timestamp_micros(
                                    a.as_primitive::<TimestampMicrosecondType>().value(r),
                                )
                                .unwrap(),
                            ),
                            DataType::Date32 => Cell::Date(
                                NaiveDate::from_num_days_from_ce_opt(
                                    a.as_primitive::<Date32Type>().value(r)
                                        + UNIX_EPOCH_DAYS_FROM_CE,
                                )
                                .unwrap(),
                            ),
                            DataType::Boolean => Cell::Bool(a.as_boolean().value(r)),
                            DataType::Int64 => Cell::Int(a.as_primitive::<Int64Type>().value(r)),
                            other => panic!("unexpected column type {other}"),
                        }
                    })
                    .collect();
                rows.push(crate::row::Row { cells });
            }
        }
        rows
    }

    fn all_types_sink(dir: &Path) -> Box<ParquetSink> {
        let path = dir.join("all.parquet");
        let config = ParquetSinkConfig::new(path.display().to_string());
        Box::new(ParquetSink::create(&config, &path, &context(dir), all_types_schema()).unwrap())
    }

    #[test]
    fn rows_read_back_in_order_whatever_the_batch_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = all_types_sink(dir.path());
        // Chunks for the writer end inside batches and between them, and the
        // last rows are still pending when `finish` is called.
        let sizes = [
            1,
            199,
            WRITE_ROWS - 201,
            1,
            700,
            1500,
            2 * WRITE_ROWS + 3,
            17,
        ];
        let mut expected = Vec::new();
        for n in sizes {
            let rows: Vec<_> = (expected.len()..expected.len() + n)
                .map(all_types_row)
                .collect();
            sink.write(&Batch { rows: rows.clone() }).unwrap();
            expected.extend(rows);
        }
        assert!(
            sink.pending.rows > 0,
            "the test should end with rows pending"
        );
        let out = sink.finish().unwrap();
        assert_eq!(out.rows, expected.len() as u64);
        let staged = out.staged.as_ref().unwrap();
        let got = read_back(&staged.temp_path);
        assert_eq!(got.len(), expected.len());
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g, e, "row {i}");
        }
        staged.discard();
    }

    #[test]
    fn finish_writes_the_rows_still_pending() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = all_types_sink(dir.path());
        let rows: Vec<_> = (0..10).map(all_types_row).collect();
        sink.write(&Batch { rows: rows.clone() }).unwrap();
        assert_eq!(sink.pending.rows, 10, "ten rows are fewer than a chunk");
        assert!(sink.buffered_bytes() > 0, "pending rows count as buffered");
        let out = sink.finish().unwrap();
        let staged = out.staged.as_ref().unwrap();
        assert_eq!(read_back(&staged.temp_path), rows);
        staged.discard();
    }

    #[test]
    fn a_batch_with_a_value_that_does_not_fit_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = all_types_sink(dir.path());
        let good: Vec<_> = (0..30).map(all_types_row).collect();
        sink.write(&Batch { rows: good.clone() }).unwrap();
        let mut bad: Vec<_> = (30..40).map(all_types_row).collect();
        // 12345.67 has 7 digits; `money` holds 6.
        bad[6].cells[1] = Cell::Decimal(rust_decimal::Decimal::new(1_234_567, 2));
        let err = sink.write(&Batch { rows: bad }).unwrap_err().to_string();
        assert!(err.contains("column `money`"), "{err}");
        assert!(err.contains("12345.67"), "{err}");
        // A cell of the wrong type in a later column: the columns before it are rolled back too.
        let mut wrong: Vec<_> = (40..45).map(all_types_row).collect();
        wrong[2].cells[5] = Cell::Str("seven".into());
        let err = sink.write(&Batch { rows: wrong }).unwrap_err().to_string();
        assert!(err.contains("column `n`"), "{err}");
        let more: Vec<_> = (50..60).map(all_types_row).collect();
        sink.write(&Batch { rows: more.clone() }).unwrap();
        let out = sink.finish().unwrap();
        assert_eq!(out.rows, 40);
        let staged = out.staged.as_ref().unwrap();
        let expected: Vec<_> = good.into_iter().chain(more).collect();
        assert_eq!(read_back(&staged.temp_path), expected);
        staged.discard();
    }

    #[test]
    fn a_sink_dropped_with_rows_pending_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = all_types_sink(dir.path());
        sink.write(&Batch {
            rows: (0..WRITE_ROWS + 10).map(all_types_row).collect(),
        })
        .unwrap();
        sink.write(&Batch {
            rows: (0..10).map(all_types_row).collect(),
        })
        .unwrap();
        assert!(sink.pending.rows > 0);
        let temp = sink.staged.as_ref().unwrap().temp_path.clone();
        assert!(temp.exists());
        // What a panic or an abandoned run does: no finish, no abort.
        drop(sink);
        assert!(!temp.exists(), "the temporary file is removed");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(
            left.is_empty(),
            "nothing at the final path either: {left:?}"
        );
    }

    #[test]
    fn mostly_distinct_columns_are_written_without_a_dictionary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.parquet");
        let config = ParquetSinkConfig::new(path.display().to_string());
        let mut sink = Box::new(
            ParquetSink::create(&config, &path, &context(dir.path()), expense_like_schema())
                .unwrap(),
        );
        let mut rows = Vec::new();
        for page in 0..20 {
            let mut b = batch(page * 200, 200);
            // `purpose` repeats five values; `id`, `amount`, `spent_at` and `count` never repeat.
            for (i, row) in b.rows.iter_mut().enumerate() {
                row.cells[1] = Cell::Str(format!("purpose {}", i % 5).into());
            }
            sink.write(&b).unwrap();
            rows.extend(b.rows);
        }
        let out = sink.finish().unwrap();
        let staged = out.staged.as_ref().unwrap();
        let (group, with_dictionary) = first_group_dictionaries(&staged.temp_path, true);
        assert_eq!(with_dictionary, ["purpose"]);
        // Statistics stay: row-group min/max of a column without a dictionary.
        let id = group.column(0).statistics().unwrap();
        assert_eq!(id.min_bytes_opt().unwrap(), b"tx000000000000");
        assert_eq!(id.max_bytes_opt().unwrap(), b"tx000000003999");
        assert_eq!(read_back(&staged.temp_path), rows);
        staged.discard();
    }

    #[test]
    fn a_small_file_keeps_dictionaries() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = all_types_sink(dir.path());
        sink.write(&Batch {
            rows: (0..DICTIONARY_SAMPLE - 1).map(all_types_row).collect(),
        })
        .unwrap();
        let out = sink.finish().unwrap();
        let staged = out.staged.as_ref().unwrap();
        // Too few values to judge: every column but the boolean one has its dictionary.
        let (_, without) = first_group_dictionaries(&staged.temp_path, false);
        assert_eq!(without, ["flag"]);
        staged.discard();
    }

    /// The first row group of a Parquet file and the columns in it that
    /// have (`with` true) or have not a dictionary page.
    fn first_group_dictionaries(
        path: &Path,
        with: bool,
    ) -> (::parquet::file::metadata::RowGroupMetaData, Vec<String>) {
        use ::parquet::file::reader::FileReader;
        let reader =
            ::parquet::file::reader::SerializedFileReader::new(File::open(path).unwrap()).unwrap();
        let group = reader.metadata().row_group(0).clone();
        let names = group
            .columns()
            .iter()
            .filter(|c| c.dictionary_page_offset().is_some() == with)
            .map(|c| c.column_path().string())
            .collect();
        (group, names)
    }
}
