//! CSV sink: RFC 4180 text that Excel and accounting tools open as-is.
//!
//! Fields holding the delimiter, a quote, CR or LF are quoted and quotes are
//! doubled. Two presets bundle the usual choices: `rfc4180` (no BOM, CRLF,
//! values verbatim) and `excel` (UTF-8 BOM, CRLF, and formula-injection
//! protection: a text cell starting with `=`, `+`, `-`, `@`, tab or CR gets a
//! leading `'`, so a spreadsheet shows it as text instead of evaluating it).
//! Typed cells (decimals, dates, numbers) are never altered: a negative
//! amount stays `-5.00`. Each option can override its preset.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::Deserialize;

use super::output::{FileCompression, Manifest, Output, file_name, stage_manifest};
use super::{
    Sink, SinkContext, SinkError, SinkOutput, column_mantissa, fit_decimal_for_column, label,
    push_cell_bytes, push_decimal,
};
use crate::common::Problem;
use crate::fsutil::StagedFile;
use crate::row::{Batch, Cell, ColumnType, Schema};

/// Bytes of whole records buffered before they are written to the file.
const BUFFER_BYTES: usize = 256 * 1024;

/// The UTF-8 byte order mark, which makes Excel read the file as UTF-8.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// First characters that make a spreadsheet evaluate a cell (OWASP's list).
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// `[[sinks]] type = "csv"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSinkConfig {
    /// Replace the file at `path` on every run (a fixed "latest" name); off by
    /// default, when an existing file is never replaced.
    #[serde(default)]
    pub overwrite: bool,
    /// Output path; may use `{pipeline}`, `{run_id}`, `{run_date}`, `{run_time}`, `{window_start}`, `{window_end}`.
    pub path: String,
    /// `rfc4180` or `excel`; sets `bom`, `line_ending` and `formula_protection` unless they are given.
    #[serde(default)]
    pub preset: Option<CsvPreset>,
    /// Field separator: one ASCII character, not a quote or line break (default `,`).
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Start the file with a UTF-8 byte order mark, for Excel (preset default; false without one).
    #[serde(default)]
    pub bom: Option<bool>,
    /// Write a header row with the column names (default true).
    #[serde(default = "default_true")]
    pub header: bool,
    /// Record terminator: `crlf` (RFC 4180, the default) or `lf`.
    #[serde(default)]
    pub line_ending: Option<LineEnding>,
    /// Prefix text cells starting with `= + - @` (or tab, CR) with `'` (excel preset: on).
    #[serde(default)]
    pub formula_protection: Option<bool>,
    /// When fields are quoted: `necessary` (default), `always` or `non_numeric`.
    #[serde(default)]
    pub quote_style: QuoteStyle,
    /// Text written for a null cell (default empty).
    #[serde(default)]
    pub null_text: String,
    /// Header text per column name, e.g. `{ amount = "Amount (USD)" }`; other columns keep their names.
    #[serde(default)]
    pub header_names: BTreeMap<String, String>,
    /// chrono format for `date` columns (default `%Y-%m-%d`), e.g. `%m/%d/%Y`.
    #[serde(default)]
    pub date_format: Option<String>,
    /// chrono format for `timestamp` columns (default RFC 3339 UTC), e.g. `%Y-%m-%d %H:%M:%S`.
    #[serde(default)]
    pub timestamp_format: Option<String>,
    /// Decimal separator for `decimal` columns: `.` (default) or `,`.
    #[serde(default = "default_decimal_separator")]
    pub decimal_separator: char,
    /// `none` (default) or `gzip` (compress the whole file; name it `….csv.gz`).
    #[serde(default)]
    pub compression: FileCompression,
    /// Also write `{file}.manifest.json` (rows, totals per currency, sha256), committed with the file.
    #[serde(default)]
    pub manifest: bool,
    /// Column whose value keys the manifest's totals (default: a column named `currency`, if any).
    #[serde(default)]
    pub manifest_currency_column: Option<String>,
    /// Decimal columns the manifest totals (default: every decimal column).
    #[serde(default)]
    pub manifest_totals: Option<Vec<String>>,
    /// One file per value of this column; the path must contain `{group}`.
    #[serde(default)]
    pub split_by: Option<String>,
    /// `rows` (default: one row per record), `journal` (balanced debit/credit lines) or `bill` (bill header + lines).
    #[serde(default)]
    pub layout: Layout,
    /// `journal`/`bill`: column whose value groups rows into one entry (absent = one entry per row).
    #[serde(default)]
    pub group_by: Option<String>,
    /// `journal`/`bill`: the payable or card account credited, as a constant.
    #[serde(default)]
    pub credit_account: Option<String>,
    /// `journal`/`bill`: which output columns hold the date, amount, accounts and names.
    #[serde(default)]
    pub fields: Option<super::ledger::LedgerFields>,
    /// Write nothing (no file, no manifest) when the run gives this sink no rows; the state still advances.
    #[serde(default)]
    pub skip_empty: bool,
}

/// What one CSV row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// One row per record, the pipeline's columns (the default).
    #[default]
    Rows,
    /// Balanced journal entries: a debit row per expense, a credit row per entry.
    Journal,
    /// Bills: one row per expense line, with the bill's header fields repeated.
    Bill,
}

/// Columns of the `journal` layout.
pub const JOURNAL_COLUMNS: [&str; 8] = [
    "entry_number",
    "date",
    "account",
    "name",
    "memo",
    "class",
    "debit",
    "credit",
];

/// Columns of the `bill` layout.
pub const BILL_COLUMNS: [&str; 10] = [
    "bill_number",
    "date",
    "vendor",
    "ap_account",
    "bill_total",
    "line",
    "account",
    "amount",
    "memo",
    "class",
];

fn default_delimiter() -> char {
    ','
}

fn default_decimal_separator() -> char {
    '.'
}

fn default_true() -> bool {
    true
}

/// Bundled CSV settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CsvPreset {
    /// Plain RFC 4180: no BOM, CRLF, values verbatim.
    Rfc4180,
    /// For Excel: UTF-8 BOM, CRLF, formula-injection protection on.
    Excel,
}

/// When the CSV writer quotes a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuoteStyle {
    /// Only fields holding the delimiter, a quote, CR or LF (the default).
    #[default]
    Necessary,
    /// Every field.
    Always,
    /// Every field that is not a number.
    NonNumeric,
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
            overwrite: false,
            preset: None,
            delimiter: default_delimiter(),
            bom: None,
            header: true,
            line_ending: None,
            formula_protection: None,
            quote_style: QuoteStyle::Necessary,
            null_text: String::new(),
            header_names: BTreeMap::new(),
            date_format: None,
            timestamp_format: None,
            decimal_separator: default_decimal_separator(),
            compression: FileCompression::None,
            manifest: false,
            manifest_currency_column: None,
            manifest_totals: None,
            split_by: None,
            layout: Layout::Rows,
            group_by: None,
            credit_account: None,
            fields: None,
            skip_empty: false,
        }
    }

    /// Whether a BOM is written (explicit setting, else the preset's).
    pub fn writes_bom(&self) -> bool {
        self.bom.unwrap_or(self.preset == Some(CsvPreset::Excel))
    }

    /// The line ending in force.
    pub fn line_ending(&self) -> LineEnding {
        self.line_ending.unwrap_or_default()
    }

    /// Whether formula-injection protection is on (explicit setting, else the preset's).
    pub fn protects_formulas(&self) -> bool {
        self.formula_protection
            .unwrap_or(self.preset == Some(CsvPreset::Excel))
    }

    pub(super) fn validate(&self, key_prefix: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let key = |k: &str| format!("{key_prefix}.{k}");
        let d = self.delimiter;
        if !d.is_ascii() || matches!(d, '"' | '\r' | '\n') {
            problems.push(Problem::new(
                key("delimiter"),
                format!(
                    "{d:?} cannot separate fields; use one ASCII character other than a quote or line break, e.g. \",\", \";\" or \"\\t\""
                ),
            ));
        }
        if !matches!(self.decimal_separator, '.' | ',') {
            problems.push(Problem::new(
                key("decimal_separator"),
                "must be \".\" or \",\"",
            ));
        } else if self.decimal_separator == d {
            problems.push(Problem::new(
                key("decimal_separator"),
                format!("{d:?} is also the delimiter; with decimal_separator = \",\" use delimiter = \";\""),
            ));
        }
        for (k, f) in [
            ("date_format", &self.date_format),
            ("timestamp_format", &self.timestamp_format),
        ] {
            if let Some(f) = f
                && let Err(e) = crate::transforms::steps::check_date_format(f)
            {
                problems.push(Problem::new(key(k), e));
            }
        }
        match (self.layout, &self.fields) {
            (Layout::Rows, _) => {
                for (k, set) in [
                    ("group_by", self.group_by.is_some()),
                    ("credit_account", self.credit_account.is_some()),
                    ("fields", self.fields.is_some()),
                ] {
                    if set {
                        problems.push(Problem::new(
                            key(k),
                            "only applies with layout = \"journal\" or \"bill\"",
                        ));
                    }
                }
            }
            (_, None) => problems.push(Problem::new(
                key("fields"),
                "is required with this layout, e.g. fields = { date = \"spent_date\", amount = \"amount\", account = \"gl_account\", name = \"vendor\" }",
            )),
            (_, Some(f)) => problems.extend(super::ledger::validate_credit_account(
                key_prefix,
                self.credit_account.as_ref(),
                f,
            )),
        }
        match (&self.split_by, self.path.contains("{group}")) {
            (Some(_), false) => problems.push(Problem::new(
                key("path"),
                "split_by writes one file per group, so the path needs {group}, e.g. \"expenses-{group}-{run_date}.csv\"",
            )),
            (None, true) => problems.push(Problem::new(
                key("path"),
                "{group} needs split_by = \"<column>\" (one file per value of that column)",
            )),
            _ => {}
        }
        for (k, set) in [
            (
                "manifest_currency_column",
                self.manifest_currency_column.is_some(),
            ),
            ("manifest_totals", self.manifest_totals.is_some()),
        ] {
            if set && !self.manifest {
                problems.push(Problem::new(key(k), "only applies with manifest = true"));
            }
        }
        problems
    }

    /// Problems with column names this sink refers to, given the pipeline's output columns.
    pub(super) fn validate_columns(&self, key_prefix: &str, columns: &[&str]) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Some(f) = &self.fields {
            problems.extend(f.validate_columns(key_prefix, self.group_by.as_deref(), columns));
        }
        if let Some(c) = &self.split_by
            && !columns.contains(&c.as_str())
        {
            problems.push(Problem::new(
                format!("{key_prefix}.split_by"),
                format!(
                    "there is no column `{c}`; columns are: {}",
                    columns.join(", ")
                ),
            ));
        }
        // The file's own columns: the pipeline's, or the layout's.
        let columns: &[&str] = match self.layout {
            Layout::Rows => columns,
            Layout::Journal => &JOURNAL_COLUMNS,
            Layout::Bill => &BILL_COLUMNS,
        };
        for name in self.header_names.keys() {
            if !columns.contains(&name.as_str()) {
                problems.push(Problem::new(
                    format!("{key_prefix}.header_names.{name}"),
                    format!(
                        "there is no column `{name}`; columns are: {}",
                        columns.join(", ")
                    ),
                ));
            }
        }
        for c in self.manifest_totals.iter().flatten() {
            if !columns.contains(&c.as_str()) {
                problems.push(Problem::new(
                    format!("{key_prefix}.manifest_totals"),
                    format!(
                        "there is no column `{c}`; columns are: {}",
                        columns.join(", ")
                    ),
                ));
            }
        }
        if let Some(c) = &self.manifest_currency_column
            && !columns.contains(&c.as_str())
        {
            problems.push(Problem::new(
                format!("{key_prefix}.manifest_currency_column"),
                format!(
                    "there is no column `{c}`; columns are: {}",
                    columns.join(", ")
                ),
            ));
        }
        problems
    }
}

/// RFC 4180 records appended to one buffer that goes to the output once full.
///
/// Quoting is decided by `csv_core` (the csv crate's engine, with the same
/// delimiter, terminator and quote style), so the bytes are what the csv crate
/// writes; cells are formatted in place instead of through a string per field.
struct RecordWriter {
    out: Output,
    buf: Vec<u8>,
    quoting: ::csv_core::Writer,
    delimiter: u8,
    terminator: &'static [u8],
    /// `quote_style = "necessary"`: a record is written whole and checked in
    /// one pass ([`RecordWriter::end_plain_record`]) instead of field by field.
    by_record: bool,
    /// Where each field of the record being written starts, from the record's start.
    starts: Vec<usize>,
    /// Fields of the record being ended that need quotes (scratch space).
    to_quote: Vec<usize>,
}

impl std::fmt::Debug for RecordWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordWriter")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl RecordWriter {
    fn new(out: Output, config: &CsvSinkConfig) -> Self {
        let (terminator, core_terminator): (&'static [u8], _) = match config.line_ending() {
            LineEnding::Crlf => (b"\r\n", ::csv_core::Terminator::CRLF),
            LineEnding::Lf => (b"\n", ::csv_core::Terminator::Any(b'\n')),
        };
        let style = match config.quote_style {
            QuoteStyle::Necessary => ::csv_core::QuoteStyle::Necessary,
            QuoteStyle::Always => ::csv_core::QuoteStyle::Always,
            QuoteStyle::NonNumeric => ::csv_core::QuoteStyle::NonNumeric,
        };
        let delimiter = config.delimiter as u8;
        Self {
            out,
            buf: Vec::with_capacity(BUFFER_BYTES + BUFFER_BYTES / 4),
            quoting: ::csv_core::WriterBuilder::new()
                .delimiter(delimiter)
                .terminator(core_terminator)
                .quote_style(style)
                .build(),
            delimiter,
            terminator,
            by_record: config.quote_style == QuoteStyle::Necessary,
            starts: Vec::new(),
            to_quote: Vec::new(),
        }
    }

    /// Ends a record written with no quoting (fields from `starts`), then
    /// quotes the fields that hold the delimiter, a quote, CR or LF. Most
    /// records hold none, and one pass over the record tells, far cheaper
    /// than a pass per field; otherwise the special bytes' positions name
    /// the fields to quote.
    fn end_plain_record(&mut self, record: usize) -> io::Result<()> {
        let fields = self.starts.len();
        let (delimiters, others) = special_bytes(&self.buf[record..], self.delimiter);
        if others || delimiters + 1 != fields.max(1) {
            let (buf, starts, to_quote) = (&self.buf, &self.starts, &mut self.to_quote);
            to_quote.clear();
            let mut field = 0;
            special_positions(&buf[record..], self.delimiter, |at| {
                while field + 1 < fields && starts[field + 1] <= at {
                    field += 1;
                }
                // The delimiter written between this field and the next is no reason to quote.
                let separator = field + 1 < fields && starts[field + 1] == at + 1;
                if !separator && to_quote.last() != Some(&field) {
                    to_quote.push(field);
                }
            });
            // From the back, so that quoting a field moves none still to quote.
            for k in (0..self.to_quote.len()).rev() {
                let field = self.to_quote[k];
                let end = self
                    .starts
                    .get(field + 1)
                    .map_or(self.buf.len(), |next| record + next - 1);
                self.quote(record + self.starts[field], end);
            }
        }
        self.end_record(record)
    }

    /// Writes the delimiter before field `i` (not the first) and returns where the field's text starts.
    fn start_field(&mut self, i: usize) -> usize {
        if i > 0 {
            self.buf.push(self.delimiter);
        }
        self.buf.len()
    }

    /// Quotes the text from `start` if the quote style asks for it, doubling its quotes.
    fn end_field(&mut self, start: usize) {
        if self.quoting.should_quote(&self.buf[start..]) {
            self.quote(start, self.buf.len());
        }
    }

    /// Quotes the field at `start..end` in place, doubling its quotes; what follows it moves right.
    fn quote(&mut self, start: usize, end: usize) {
        let len = self.buf.len();
        let quotes = self.buf[start..end].iter().filter(|&&b| b == b'"').count();
        let grow = quotes + 2;
        self.buf.resize(len + grow, 0);
        self.buf.copy_within(end..len, end + grow);
        // Moved right from the back so the text is shifted in place.
        let mut to = end + grow - 1;
        self.buf[to] = b'"';
        for from in (start..end).rev() {
            let b = self.buf[from];
            to -= 1;
            self.buf[to] = b;
            if b == b'"' {
                to -= 1;
                self.buf[to] = b'"';
            }
        }
        self.buf[start] = b'"';
    }

    /// Ends the record that started at `start`, then writes the buffer out once it is full.
    fn end_record(&mut self, start: usize) -> io::Result<()> {
        if self.buf.len() == start {
            // A record of one empty field is written `""`, or the line would read as no record at all.
            self.buf.extend_from_slice(b"\"\"");
        }
        self.buf.extend_from_slice(self.terminator);
        if self.buf.len() >= BUFFER_BYTES {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes what is buffered and returns the output.
    fn into_inner(mut self) -> io::Result<Output> {
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok(self.out)
    }
}

/// How many `delimiter` bytes `text` holds, and whether it holds a quote, CR or LF.
fn special_bytes(text: &[u8], delimiter: u8) -> (usize, bool) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut blocks = text.chunks_exact(16);
        let (mut delimiters, mut others) = (0, 0);
        for block in &mut blocks {
            let (d, o) = special_bytes16(block, delimiter);
            delimiters += d.count_ones() as usize;
            others |= o;
        }
        let (d, o) = special_bytes_scalar(blocks.remainder(), delimiter);
        (delimiters + d, others != 0 || o)
    }
    #[cfg(not(target_arch = "x86_64"))]
    special_bytes_scalar(text, delimiter)
}

/// Calls `found` with the position of every delimiter, quote, CR and LF in `text`, in order.
fn special_positions(text: &[u8], delimiter: u8, mut found: impl FnMut(usize)) {
    let special = |b: u8| b == delimiter || matches!(b, b'"' | b'\r' | b'\n');
    #[cfg(target_arch = "x86_64")]
    {
        let mut blocks = text.chunks_exact(16);
        let mut at = 0;
        for block in &mut blocks {
            let (d, o) = special_bytes16(block, delimiter);
            let mut mask = d | o;
            while mask != 0 {
                found(at + mask.trailing_zeros() as usize);
                mask &= mask - 1;
            }
            at += 16;
        }
        for (i, &b) in blocks.remainder().iter().enumerate() {
            if special(b) {
                found(at + i);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (i, &b) in text.iter().enumerate() {
        if special(b) {
            found(i);
        }
    }
}

/// [`special_bytes`] a byte at a time.
fn special_bytes_scalar(text: &[u8], delimiter: u8) -> (usize, bool) {
    let delimiters = text.iter().filter(|&&b| b == delimiter).count();
    (
        delimiters,
        text.iter().any(|&b| matches!(b, b'"' | b'\r' | b'\n')),
    )
}

/// Bit masks of one 16-byte block (bit n for byte n): its delimiters, and its quotes, CRs and LFs.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn special_bytes16(block: &[u8], delimiter: u8) -> (u32, u32) {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    assert!(block.len() >= 16);
    // SAFETY: SSE2 is part of the x86-64 baseline, so these intrinsics exist
    // on every CPU this target runs on; `block` has sixteen readable bytes
    // (checked above), and the unaligned load needs no alignment.
    unsafe {
        let x = _mm_loadu_si128(block.as_ptr().cast());
        let delimiters = _mm_cmpeq_epi8(x, _mm_set1_epi8(delimiter as i8));
        let quote = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'"' as i8));
        let cr = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'\r' as i8));
        let lf = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'\n' as i8));
        (
            _mm_movemask_epi8(delimiters) as u32,
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, cr), lf)) as u32,
        )
    }
}

/// Writes rows as CSV to a staged temporary file.
#[derive(Debug)]
pub struct CsvSink {
    label: String,
    schema: Arc<Schema>,
    config: CsvSinkConfig,
    ctx: SinkContext,
    // Both `Some` until finish/abort; taken there so Drop can clean up after a panic.
    writer: Option<RecordWriter>,
    staged: Option<StagedFile>,
    rows: u64,
    /// Manifest totals: currency → column → sum (only when a manifest is asked for).
    totals: BTreeMap<String, BTreeMap<String, Decimal>>,
    currency_column: Option<usize>,
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
        let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
        let mut problems = config.validate("csv");
        problems.extend(config.validate_columns("csv", &names));
        if let Some(p) = problems.first() {
            return Err(SinkError::new(&label, format!("{}: {}", p.key, p.message)));
        }
        let currency_column = match &config.manifest_currency_column {
            Some(c) => names.iter().position(|n| n == c),
            None => names.iter().position(|n| *n == "currency"),
        };
        let (staged, mut file) =
            Output::create("csv", path, ctx, config.compression, config.manifest)?;
        let mut sink = Self {
            label,
            schema,
            config: config.clone(),
            ctx: ctx.clone(),
            writer: None,
            staged: Some(staged),
            rows: 0,
            totals: BTreeMap::new(),
            currency_column,
        };
        if config.writes_bom()
            && let Err(e) = file.write_all(UTF8_BOM)
        {
            let err = sink.io_error("cannot write", &e);
            sink.discard();
            return Err(err);
        }
        let mut writer = RecordWriter::new(file, config);
        if config.header {
            // Written now so that a run with no rows still yields a file with a header.
            let protect = config.protects_formulas();
            let record = writer.buf.len();
            for (i, c) in sink.schema.columns.iter().enumerate() {
                let name = config.header_names.get(&c.name).unwrap_or(&c.name);
                let field = writer.start_field(i);
                if protect && name.starts_with(FORMULA_STARTS) {
                    writer.buf.push(b'\'');
                }
                writer.buf.extend_from_slice(name.as_bytes());
                writer.end_field(field);
            }
            if let Err(e) = writer.end_record(record) {
                let err = sink.io_error("cannot write", &e);
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

    fn discard(&mut self) {
        self.writer = None;
        if let Some(staged) = self.staged.take() {
            staged.discard();
        }
    }

    fn add_to_totals(&mut self, cells: &[Cell]) {
        let currency = match self.currency_column.map(|i| &cells[i]) {
            Some(Cell::Str(c)) => c.to_string(),
            Some(_) => "(blank)".to_string(),
            None => "(none)".to_string(),
        };
        let per_column = self.totals.entry(currency).or_default();
        let chosen = self.config.manifest_totals.as_ref();
        for (cell, column) in cells.iter().zip(&self.schema.columns) {
            if chosen.is_some_and(|names| !names.contains(&column.name)) {
                continue;
            }
            if let (Cell::Decimal(d), ColumnType::Decimal { .. }) = (cell, column.ty) {
                *per_column.entry(column.name.clone()).or_default() += *d;
            }
        }
    }
}

impl Sink for CsvSink {
    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let schema = self.schema.clone();
        let columns = &schema.columns;
        let protect = self.config.protects_formulas();
        let point = self.config.decimal_separator as u8;
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
            let config = &self.config;
            let null_text = config.null_text.as_bytes();
            let Some(w) = self.writer.as_mut() else {
                return Err(SinkError::new(
                    &self.label,
                    "write after finish or abort (a bug in the caller)",
                ));
            };
            // Cells are formatted straight into the record buffer; no string per cell.
            let record = w.buf.len();
            let by_record = w.by_record;
            w.starts.clear();
            for (i, (cell, column)) in row.cells.iter().zip(columns).enumerate() {
                let field = w.start_field(i);
                if by_record {
                    w.starts.push(field - record);
                }
                let buf = &mut w.buf;
                // Matched on the cell first: text and nulls, most cells, are decided in one step.
                match cell {
                    Cell::Str(s) => {
                        if protect && s.starts_with(FORMULA_STARTS) {
                            buf.push(b'\'');
                        }
                        buf.extend_from_slice(s.as_bytes());
                    }
                    Cell::Null => {
                        if !null_text.is_empty() {
                            buf.extend_from_slice(null_text);
                        }
                    }
                    // Printed at the column's scale so every value in the column lines up (`5` → `5.00`),
                    // except that a `scale = "currency"` cell keeps its currency's fewer digits (JPY `1200`).
                    Cell::Decimal(d)
                        if let ColumnType::Decimal { precision, scale } = column.ty =>
                    {
                        let fitted = if d.scale() <= u32::from(scale) {
                            // Fewer digits stay as they are; only whether they fit is checked.
                            column_mantissa(d, precision, scale).map(|_| *d)
                        } else {
                            fit_decimal_for_column(*d, precision, scale)
                        };
                        match fitted {
                            Ok(d) => push_decimal(buf, &d, point),
                            Err(m) => {
                                buf.truncate(record);
                                return Err(SinkError::new(
                                    &self.label,
                                    format!("column `{}`: {m}", column.name),
                                ));
                            }
                        }
                    }
                    Cell::Date(d) if let Some(f) = &config.date_format => {
                        write!(buf, "{}", d.format(f)).expect("format checked at validation");
                    }
                    Cell::Timestamp(t) if let Some(f) = &config.timestamp_format => {
                        write!(buf, "{}", t.format(f)).expect("format checked at validation");
                    }
                    _ => push_cell_bytes(buf, cell),
                }
                if !by_record {
                    w.end_field(field);
                }
            }
            let ended = if by_record {
                w.end_plain_record(record)
            } else {
                w.end_record(record)
            };
            if let Err(e) = ended {
                return Err(self.io_error("cannot write", &e));
            }
            if self.config.manifest {
                self.add_to_totals(&row.cells);
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
            .map_err(|e| self.io_error("cannot flush", &e))
            .and_then(|out| {
                let staged = self.staged.as_ref().expect("staged until finish");
                out.finish(&staged.temp_path)
                    .map_err(|e| self.io_error("cannot make durable", &e))
            });
        let written = match result {
            Ok(w) => w,
            Err(e) => {
                self.discard();
                return Err(e);
            }
        };
        let staged = self.staged.take().expect("staged until finish");
        let mut companions = Vec::new();
        if self.config.manifest {
            let manifest = Manifest {
                file: file_name(&staged.final_path),
                format: "csv",
                compression: match self.config.compression {
                    FileCompression::None => "none",
                    FileCompression::Gzip => "gzip",
                },
                rows: self.rows,
                bytes: written.bytes,
                sha256: written
                    .sha256
                    .clone()
                    .expect("the file is hashed when a manifest is asked for"),
                totals: std::mem::take(&mut self.totals),
                pipeline: self.ctx.pipeline.clone(),
                run_id: self.ctx.run_id.clone(),
                window_start: self.ctx.window_start,
                window_end: self.ctx.window_end,
            };
            match stage_manifest("csv", &staged, &manifest, &self.ctx) {
                Ok(c) => companions.push(c),
                Err(e) => {
                    staged.discard();
                    return Err(e);
                }
            }
        }
        Ok(SinkOutput {
            kind: "csv",
            staged: Some(staged),
            delivery: None,
            rows: self.rows,
            bytes: written.bytes,
            companions,
        })
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
