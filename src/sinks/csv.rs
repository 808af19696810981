//! CSV sink: RFC 4180 text that Excel and accounting tools open as-is.
//!
//! Fields holding the delimiter, a quote, CR or LF are quoted and quotes are
//! doubled; everything else is written verbatim. Values are never altered to
//! defend against spreadsheet formula injection (a leading `=` stays), since
//! changing an accountant's data is worse than the risk it would hide; open
//! untrusted exports with formulas disabled.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::{
    Sink, SinkContext, SinkError, SinkOutput, cell_text, fit_decimal_for_column, label, stage,
};
use crate::config::Problem;
use crate::fsutil::{StagedFile, sync_file};
use crate::row::{Batch, Cell, ColumnType, Schema};

/// Bytes the csv writer buffers before touching the file.
const BUFFER_BYTES: usize = 256 * 1024;

/// The UTF-8 byte order mark, which makes Excel read the file as UTF-8.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// `[[sinks]] type = "csv"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSinkConfig {
    /// Output path; may use `{pipeline}`, `{run_id}`, `{run_date}`, `{run_time}`.
    pub path: String,
    /// Field separator: one ASCII character, not a quote or line break (default `,`).
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Start the file with a UTF-8 byte order mark, for Excel (default false).
    #[serde(default)]
    pub bom: bool,
    /// Write a header row with the column names (default true).
    #[serde(default = "default_true")]
    pub header: bool,
    /// Record terminator: `crlf` (RFC 4180, the default) or `lf`.
    #[serde(default)]
    pub line_ending: LineEnding,
}

fn default_delimiter() -> char {
    ','
}

fn default_true() -> bool {
    true
}

/// How CSV records end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineEnding {
    /// `\r\n`, as RFC 4180 specifies.
    #[default]
    Crlf,
    /// `\n`, for Unix tools.
    Lf,
}

impl CsvSinkConfig {
    /// A config writing `path` with all defaults.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            delimiter: default_delimiter(),
            bom: false,
            header: true,
            line_ending: LineEnding::Crlf,
        }
    }

    pub(super) fn validate(&self, key_prefix: &str) -> Vec<Problem> {
        let d = self.delimiter;
        if !d.is_ascii() || matches!(d, '"' | '\r' | '\n') {
            vec![Problem::new(
                format!("{key_prefix}.delimiter"),
                format!(
                    "{d:?} cannot separate fields; use one ASCII character other than a quote or line break, e.g. \",\", \";\" or \"\\t\""
                ),
            )]
        } else {
            Vec::new()
        }
    }
}

/// Writes rows as CSV to a staged temporary file.
#[derive(Debug)]
pub struct CsvSink {
    label: String,
    schema: Arc<Schema>,
    // Both `Some` until finish/abort; taken there so Drop can clean up after a panic.
    writer: Option<::csv::Writer<File>>,
    staged: Option<StagedFile>,
    rows: u64,
    record: Vec<String>,
}

impl CsvSink {
    /// Creates the temporary file at `path`'s staged name and writes the BOM and header.
    pub fn create(
        config: &CsvSinkConfig,
        path: &Path,
        ctx: &SinkContext,
        schema: Arc<Schema>,
    ) -> Result<Self, SinkError> {
        let label = label("csv", path);
        let problems = config.validate("csv");
        if let Some(p) = problems.first() {
            return Err(SinkError::new(&label, p.message.clone()));
        }
        let (staged, mut file) = stage("csv", path, ctx)?;
        let mut sink = Self {
            label,
            schema,
            writer: None,
            staged: Some(staged),
            rows: 0,
            record: Vec::new(),
        };
        if config.bom {
            file.write_all(UTF8_BOM)
                .map_err(|e| sink.io_error("cannot write", &e))?;
        }
        let terminator = match config.line_ending {
            LineEnding::Crlf => ::csv::Terminator::CRLF,
            LineEnding::Lf => ::csv::Terminator::Any(b'\n'),
        };
        let mut writer = ::csv::WriterBuilder::new()
            .delimiter(config.delimiter as u8)
            .terminator(terminator)
            .quote_style(::csv::QuoteStyle::Necessary)
            .buffer_capacity(BUFFER_BYTES)
            .from_writer(file);
        if config.header {
            // Written now so that a run with no rows still yields a file with a header.
            let names = sink.schema.columns.iter().map(|c| c.name.as_str());
            if let Err(e) = writer.write_record(names) {
                let err = sink.csv_error(e);
                sink.discard();
                return Err(err);
            }
        }
        sink.writer = Some(writer);
        Ok(sink)
    }

    fn temp_display(&self) -> String {
        self.staged
            .as_ref()
            .map(|s| s.temp_path.display().to_string())
            .unwrap_or_default()
    }

    fn io_error(&self, what: &str, e: &std::io::Error) -> SinkError {
        SinkError::io(&self.label, &format!("{what} {}", self.temp_display()), e)
    }

    fn csv_error(&self, e: ::csv::Error) -> SinkError {
        match e.into_kind() {
            ::csv::ErrorKind::Io(io) => self.io_error("cannot write", &io),
            other => SinkError::new(&self.label, format!("cannot write CSV: {other:?}")),
        }
    }

    fn discard(&mut self) {
        self.writer = None;
        if let Some(staged) = self.staged.take() {
            staged.discard();
        }
    }
}

impl Sink for CsvSink {
    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let columns = &self.schema.columns;
        for row in &batch.rows {
            if row.cells.len() != columns.len() {
                return Err(SinkError::new(
                    &self.label,
                    format!(
                        "a row has {} cells but the schema has {} columns (a bug in the caller)",
                        row.cells.len(),
                        columns.len()
                    ),
                ));
            }
            // Field buffers are reused across rows to keep allocation out of the hot loop.
            self.record.resize_with(columns.len(), String::new);
            for ((cell, column), buf) in row.cells.iter().zip(columns).zip(&mut self.record) {
                buf.clear();
                match (cell, column.ty) {
                    // Printed at the column's scale so every value in the column lines up (`5` → `5.00`).
                    (Cell::Decimal(d), ColumnType::Decimal { precision, scale }) => {
                        let d = fit_decimal_for_column(*d, precision, scale).map_err(|m| {
                            SinkError::new(&self.label, format!("column `{}`: {m}", column.name))
                        })?;
                        write!(buf, "{d}").expect("writing to a String cannot fail");
                    }
                    _ => buf.push_str(&cell_text(cell)),
                }
            }
            let writer = self.writer.as_mut().ok_or_else(|| {
                SinkError::new(
                    &self.label,
                    "write after finish or abort (a bug in the caller)",
                )
            })?;
            if let Err(e) = writer.write_record(&self.record) {
                return Err(self.csv_error(e));
            }
            self.rows += 1;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<SinkOutput, SinkError> {
        let writer = self.writer.take().ok_or_else(|| {
            SinkError::new(&self.label, "finish after abort (a bug in the caller)")
        })?;
        let result = writer
            .into_inner()
            .map_err(|e| self.io_error("cannot flush", e.error()))
            .and_then(|file| {
                let staged = self.staged.as_ref().expect("staged until finish");
                sync_file(&file, &staged.temp_path)
                    .and_then(|_| file.metadata())
                    .map(|m| m.len())
                    .map_err(|e| self.io_error("cannot make durable", &e))
            });
        match result {
            Ok(bytes) => Ok(SinkOutput {
                kind: "csv",
                staged: Some(self.staged.take().expect("staged until finish")),
                rows: self.rows,
                bytes,
                delivery: None,
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

impl Drop for CsvSink {
    fn drop(&mut self) {
        // Reached with `staged` still set only when neither finish nor abort ran (e.g. a panic).
        self.discard();
    }
}
