//! The typed row model shared by transforms and sinks.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;

/// The type of an output column; sinks map it to their own types
/// (Parquet: `Utf8`, `Decimal128(precision, scale)`, `Timestamp(µs, UTC)`, `Date32`, `Boolean`, `Int64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// UTF-8 text.
    String,
    /// An exact decimal with a fixed number of digits after the point.
    Decimal {
        /// Total significant digits (1..=38).
        precision: u8,
        /// Digits after the decimal point.
        scale: u8,
    },
    /// An instant, stored in UTC with microsecond precision.
    Timestamp,
    /// A calendar date.
    Date,
    /// true/false.
    Bool,
    /// A 64-bit signed integer.
    Integer,
}

/// One output column: its name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name as written in headers and schemas.
    pub name: String,
    /// Column type.
    pub ty: ColumnType,
}

/// The ordered columns every row of a run carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schema {
    /// Columns in output order.
    pub columns: Vec<Column>,
}

/// One typed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Missing or null in the source.
    Null,
    /// Text (held inline up to 24 bytes: a row of ids, names and codes
    /// allocates nothing for them).
    Str(compact_str::CompactString),
    /// Exact decimal, already at the column's scale (a `scale = "currency"`
    /// column: at the record currency's minor units, at most the column's scale).
    Decimal(Decimal),
    /// Integer.
    Int(i64),
    /// Boolean.
    Bool(bool),
    /// UTC instant.
    Timestamp(DateTime<Utc>),
    /// Calendar date.
    Date(NaiveDate),
}

/// The most heap capacity a text cell keeps when it is given a new value:
/// enough for emails, names and purposes, so a reused row allocates nothing
/// for them, while one huge value is not kept alive in a row that is reused.
const KEPT_TEXT_CAPACITY: usize = 256;

impl Cell {
    /// Makes this cell the text `s`, reusing its string's heap memory when it has some.
    pub fn set_str(&mut self, s: &str) {
        match self {
            // Inline text is rebuilt instead: cheaper than editing it in place.
            Cell::Str(old) if old.is_heap_allocated() && old.capacity() <= KEPT_TEXT_CAPACITY => {
                old.clear();
                old.push_str(s);
            }
            _ => *self = Cell::Str(s.into()),
        }
    }
}

/// One output row; `cells[i]` belongs to `schema.columns[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Cells in column order.
    pub cells: Vec<Cell>,
}

/// A batch of rows handed to every sink (shared, never copied per sink).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Rows in source order.
    pub rows: Vec<Row>,
}
