//! Sinks: where rows go. Each file sink writes to a temporary file beside
//! its final path ([`StagedFile`]); `finish` makes the bytes durable but does
//! not rename, because the runner commits every sink of a run together and
//! only then advances state. The HTTP sink pushes as it goes, returns from
//! `finish` only once the receiver acknowledged everything, and stages just
//! its dead-letter file.
//!
//! Sinks know nothing of Fyle: they see a [`Schema`] and [`Batch`]es.

pub mod csv;
pub mod csv_ledger;
pub mod csv_split;
pub mod http;
pub mod iif;
pub mod journal;
pub mod ledger;
pub mod output;
pub mod parquet;
pub mod parquet_partitioned;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;

use crate::common::Problem;
use crate::fsutil::StagedFile;
use crate::row::{Batch, Cell, Schema};

/// A destination for rows that writes to a temporary output until the runner commits it.
pub trait Sink: Send {
    /// Appends rows to the temporary output (blocking I/O; call from a blocking thread).
    fn write(&mut self, batch: &Batch) -> Result<(), SinkError>;
    /// Like [`Sink::write`], with the source version (id, cursor) of each row
    /// (`versions[i]` for `batch.rows[i]`; shorter when unknown): pushing sinks
    /// derive per-record keys from it, file sinks do not need it.
    fn write_versions(
        &mut self,
        batch: &Batch,
        versions: &[Option<crate::state::Version>],
    ) -> Result<(), SinkError> {
        let _ = versions;
        self.write(batch)
    }
    /// Whether [`Sink::write_versions`] reads the versions; a sink that overrides
    /// it must say `true`, or it is handed none.
    fn wants_versions(&self) -> bool {
        false
    }
    /// Hands a pushing sink the journal of what receivers acknowledged in
    /// runs not yet committed (see [`journal`]); other sinks ignore it.
    fn use_journal(&mut self, journal: &journal::PushJournal) {
        let _ = journal;
    }
    /// Flushes and fsyncs the temporary output, leaving the rename to the runner.
    fn finish(self: Box<Self>) -> Result<SinkOutput, SinkError>;
    /// Removes the temporary output.
    fn abort(self: Box<Self>);
}

/// A finished, durable temporary output, ready to be committed.
#[derive(Debug)]
pub struct SinkOutput {
    /// Sink type, e.g. `csv`.
    pub kind: &'static str,
    /// The temporary file and where it goes on commit; `None` when a sink
    /// delivered everything elsewhere (an HTTP push with nothing rejected).
    pub staged: Option<StagedFile>,
    /// Data rows written (not counting a header); for HTTP, rows acknowledged.
    pub rows: u64,
    /// Size of the finished file in bytes; for HTTP, body bytes acknowledged.
    pub bytes: u64,
    /// What a pushing sink delivered and what the receiver rejected.
    pub delivery: Option<http::Delivery>,
    /// Further files committed together with this one (e.g. its manifest).
    pub companions: Vec<Companion>,
}

/// A file a sink stages beside its main output, committed atomically with it.
#[derive(Debug)]
pub struct Companion {
    /// What it is, e.g. `manifest`, or `parquet` for another partition's file.
    pub kind: &'static str,
    /// The temporary file and where it goes on commit.
    pub staged: StagedFile,
    /// Data rows in it (0 for a manifest).
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
}

impl SinkOutput {
    /// Every staged file of this output: the main one first, then its companions.
    pub fn staged_files(&self) -> impl Iterator<Item = &StagedFile> {
        self.staged
            .iter()
            .chain(self.companions.iter().map(|c| &c.staged))
    }

    /// Data rows in the main output and every companion (split and partitioned sinks).
    pub fn total_rows(&self) -> u64 {
        self.rows + self.companions.iter().map(|c| c.rows).sum::<u64>()
    }

    /// Removes every staged file (a run that fails before its commit point).
    pub fn discard(&self) {
        self.staged_files().for_each(StagedFile::discard);
    }
}

/// `[[sinks]]` in a pipeline file, chosen by `type`.
///
/// Deserialized like `#[serde(tag = "type", rename_all = "lowercase")]`, but
/// by hand: a derived internally tagged enum buffers the table and loses the
/// key of a type error inside it (`bom = "yes"` would only point at
/// `sinks[0]`), so errors here name the inner key themselves.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// `type = "csv"`.
    Csv(csv::CsvSinkConfig),
    /// `type = "parquet"`.
    Parquet(parquet::ParquetSinkConfig),
    /// `type = "http"`.
    Http(Box<http::HttpSinkConfig>),
    /// `type = "iif"` (QuickBooks Desktop).
    Iif(iif::IifSinkConfig),
}

impl SinkConfig {
    /// The sink type as written in pipeline files.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Csv(_) => "csv",
            SinkConfig::Parquet(_) => "parquet",
            SinkConfig::Http(_) => "http",
            SinkConfig::Iif(_) => "iif",
        }
    }

    /// `skip_empty = true`: a sink given no rows in a run commits no file at all.
    pub fn skip_empty(&self) -> bool {
        match self {
            SinkConfig::Csv(c) => c.skip_empty,
            SinkConfig::Parquet(c) => c.skip_empty,
            SinkConfig::Iif(c) => c.skip_empty,
            // A push with no rows sends nothing already.
            SinkConfig::Http(_) => false,
        }
    }

    /// The output path as written, placeholders unexpanded (for HTTP: the dead-letter file).
    pub fn path_template(&self) -> &str {
        match self {
            SinkConfig::Csv(c) => &c.path,
            SinkConfig::Parquet(c) => &c.path,
            SinkConfig::Http(c) => &c.dead_letter,
            SinkConfig::Iif(c) => &c.path,
        }
    }

    /// Reads the secrets this sink needs (environment variables, files) and
    /// returns every one that cannot be read, so a run can refuse before it starts.
    pub fn resolve_secrets(&self, key_prefix: &str) -> Vec<Problem> {
        match self {
            SinkConfig::Http(c) => c.resolve_secrets(key_prefix).err().unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Whether every run replaces this sink's file (`overwrite = true`); an
    /// HTTP sink's dead-letter file is never replaced.
    pub fn overwrite(&self) -> bool {
        match self {
            SinkConfig::Csv(c) => c.overwrite,
            SinkConfig::Parquet(c) => c.overwrite,
            SinkConfig::Iif(c) => c.overwrite,
            SinkConfig::Http(_) => false,
        }
    }

    /// The key of [`SinkConfig::path_template`] in the pipeline file.
    pub fn path_key(&self) -> &'static str {
        match self {
            SinkConfig::Http(_) => "dead_letter",
            _ => "path",
        }
    }

    /// A problem if this sink's path could name one file in two runs (see
    /// [`validate_run_unique`]); `incremental`: the pipeline has `[incremental]`.
    pub fn validate_run_unique(&self, key_prefix: &str, incremental: bool) -> Option<Problem> {
        if self.overwrite() {
            return None;
        }
        validate_run_unique(
            self.path_template(),
            &format!("{key_prefix}.{}", self.path_key()),
            incremental,
            !matches!(self, SinkConfig::Http(_)),
        )
    }

    /// Every problem with this sink's settings, keyed under `key_prefix` (e.g. `sinks[1].delimiter`).
    pub fn validate(&self, key_prefix: &str) -> Vec<Problem> {
        let mut problems = validate_path_template(self.path_template(), key_prefix);
        if !matches!(self, SinkConfig::Csv(_)) && self.path_template().contains("{group}") {
            problems.push(Problem::new(
                format!("{key_prefix}.path"),
                "{group} is only available to CSV sinks with split_by; Parquet partitions with partition_by",
            ));
        }
        match self {
            SinkConfig::Csv(c) => problems.extend(c.validate(key_prefix)),
            SinkConfig::Parquet(c) => problems.extend(c.validate(key_prefix)),
            SinkConfig::Http(c) => problems.extend(c.validate(key_prefix)),
            SinkConfig::Iif(c) => problems.extend(c.validate(key_prefix)),
        }
        problems
    }

    /// Problems with the output column names this sink refers to (`columns` = the pipeline's output columns).
    pub fn validate_columns(&self, key_prefix: &str, columns: &[&str]) -> Vec<Problem> {
        match self {
            SinkConfig::Csv(c) => c.validate_columns(key_prefix, columns),
            SinkConfig::Iif(c) => c.validate_columns(key_prefix, columns),
            SinkConfig::Parquet(c) => c.validate_columns(key_prefix, columns),
            // Template references are checked when the sink is built.
            SinkConfig::Http(_) => Vec::new(),
        }
    }

    /// Opens the sink's temporary output for a run.
    pub fn build(
        &self,
        ctx: &SinkContext,
        schema: Arc<Schema>,
    ) -> Result<Box<dyn Sink>, SinkError> {
        let path = render_path(self.path_template(), ctx);
        match self {
            SinkConfig::Csv(c) if c.split_by.is_some() => Ok(Box::new(
                csv_split::SplitCsvSink::new(c, &path, ctx, schema)?,
            )),
            SinkConfig::Csv(c) if c.layout != csv::Layout::Rows => Ok(Box::new(
                csv_ledger::LedgerCsvSink::create(c, &path, ctx, schema)?,
            )),
            SinkConfig::Csv(c) => Ok(Box::new(csv::CsvSink::create(c, &path, ctx, schema)?)),
            SinkConfig::Parquet(c) if c.partition_by.is_some() => Ok(Box::new(
                parquet_partitioned::PartitionedParquetSink::new(c, &path, ctx, schema)?,
            )),
            SinkConfig::Parquet(c) => Ok(Box::new(parquet::ParquetSink::create(
                c, &path, ctx, schema,
            )?)),
            SinkConfig::Http(c) => Ok(Box::new(http::HttpSink::create(c, &path, ctx, schema)?)),
            SinkConfig::Iif(c) => Ok(Box::new(iif::IifSink::create(c, &path, ctx, schema)?)),
        }
    }
}

/// Sink types accepted in `type`.
pub const SINK_TYPES: [&str; 4] = ["csv", "parquet", "http", "iif"];

impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        use toml::Value;
        // A TOML table holds everything a pipeline file can say, and its numbers give precise errors.
        let mut table = toml::Table::deserialize(deserializer)?;
        let kind = match table.remove("type") {
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "`type`: expected a string (\"csv\", \"parquet\", \"http\" or \"iif\"), found {other}"
                )));
            }
            None => return Err(D::Error::missing_field("type")),
        };
        match kind.as_str() {
            "csv" => crate::common::inner_table(table).map(SinkConfig::Csv),
            "parquet" => crate::common::inner_table(table).map(SinkConfig::Parquet),
            "http" => crate::common::inner_table(table).map(|c| SinkConfig::Http(Box::new(c))),
            "iif" => crate::common::inner_table(table).map(SinkConfig::Iif),
            other => Err(D::Error::unknown_variant(other, &SINK_TYPES)),
        }
    }
}

/// What a sink needs to know about the run it writes for.
#[derive(Debug, Clone)]
pub struct SinkContext {
    /// Pipeline name (`{pipeline}`).
    pub pipeline: String,
    /// Run id (`{run_id}`); with the pipeline, it names temporary files.
    pub run_id: String,
    /// When the run started (`{run_date}`, `{run_time}`).
    pub started_at: DateTime<Utc>,
    /// Directory relative sink paths are resolved against.
    pub output_dir: PathBuf,
    /// Inclusive start of the cursor window this run exports (`{window_start}`); `None` = from the beginning.
    pub window_start: Option<DateTime<Utc>>,
    /// Exclusive end of the cursor window (`{window_end}`); `None` = open-ended.
    pub window_end: Option<DateTime<Utc>>,
}

impl SinkContext {
    /// The tag in this run's temporary file names, `{pipeline}.{run_id}`, so recovery can find one pipeline's leftovers.
    pub fn temp_tag(&self) -> String {
        format!("{}.{}", self.pipeline, self.run_id)
    }
}

/// Placeholders a sink path may use.
pub const PLACEHOLDERS: [&str; 7] = [
    "group",
    "pipeline",
    "run_id",
    "run_date",
    "run_time",
    "window_start",
    "window_end",
];

/// Placeholders that change from run to run but can repeat: they resolve to
/// the second, and two runs close together (or a run with nothing new) share them.
const PER_SECOND: [&str; 3] = ["{run_time}", "{window_start}", "{window_end}"];

/// The placeholder that is unique to a run.
pub const RUN_UNIQUE: &str = "{run_id}";

/// A path template that could name the same file in two runs, which would
/// make the later run replace a committed file, is a configuration error
/// unless it has `{run_id}`. A fixed name (no per-run placeholder) is allowed
/// for a pipeline without `[incremental]`; a run then refuses to start if the
/// file exists, unless the sink sets `overwrite = true`.
pub fn validate_run_unique(
    template: &str,
    key: &str,
    incremental: bool,
    can_overwrite: bool,
) -> Option<Problem> {
    if template.contains(RUN_UNIQUE) {
        return None;
    }
    let or_overwrite = if can_overwrite {
        ", or set `overwrite = true` on the sink if one file that every run replaces is what you want"
    } else {
        ""
    };
    let example = with_run_id(template);
    if let Some(ph) = PER_SECOND.iter().find(|ph| template.contains(*ph)) {
        return Some(Problem::new(
            key,
            format!(
                "`{template}` can name the same file in two runs: {ph} resolves to the second, so two runs \
                 close together (or runs with nothing new) get the same name and the later would replace \
                 the earlier run's committed file. Add {RUN_UNIQUE}, e.g. \"{example}\"{or_overwrite}"
            ),
        ));
    }
    if incremental {
        return Some(Problem::new(
            key,
            format!(
                "an incremental pipeline writes new records to a new file every run, but `{template}` names \
                 the same file each time, so each run would replace the last one's records. Add {RUN_UNIQUE}, \
                 e.g. \"{example}\"{or_overwrite}"
            ),
        ));
    }
    None
}

/// `template` with `-{run_id}` before the file name's extension, for error messages.
fn with_run_id(template: &str) -> String {
    let name_start = template.rfind(['/', '\\']).map_or(0, |i| i + 1);
    match template[name_start..].find('.') {
        Some(dot) if dot > 0 => {
            let at = name_start + dot;
            format!("{}-{RUN_UNIQUE}{}", &template[..at], &template[at..])
        }
        _ => format!("{template}-{RUN_UNIQUE}"),
    }
}

/// Instants in file names: compact, sortable and free of `:` (not allowed in Windows names).
const FILE_TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// A failure in one sink: which sink, what failed, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{sink}: {message}")]
pub struct SinkError {
    /// The sink, e.g. `csv sink out/x.csv`.
    pub sink: String,
    /// What failed (with path and OS error) and what to do.
    pub message: String,
}

impl SinkError {
    /// An error for the sink labelled `sink`.
    pub fn new(sink: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            sink: sink.into(),
            message: message.into(),
        }
    }

    /// An I/O failure, with a hint at the usual causes.
    pub(crate) fn io(sink: &str, what: &str, err: &std::io::Error) -> Self {
        Self::new(
            sink,
            format!(
                "{what}: {err}; check that the directory exists and is writable and the disk is not full"
            ),
        )
    }
}

/// Splits a template into literal text and `{placeholder}` names.
fn template_parts(template: &str) -> Result<Vec<(bool, &str)>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(format!("`}}` without a matching `{{` in `{template}`"));
        }
        parts.push((false, &rest[..open]));
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in `{template}`"))?;
        parts.push((true, &after[..close]));
        rest = &after[close + 1..];
    }
    parts.push((false, rest));
    Ok(parts)
}

fn validate_path_template(template: &str, key_prefix: &str) -> Vec<Problem> {
    let key = format!("{key_prefix}.path");
    if template.trim().is_empty() {
        return vec![Problem::new(
            key,
            "must not be empty; e.g. \"{pipeline}-{run_date}.csv\"",
        )];
    }
    if template.ends_with(['/', '\\']) {
        return vec![Problem::new(
            key,
            format!("`{template}` names a directory; it must end with a file name"),
        )];
    }
    match template_parts(template) {
        Err(e) => vec![Problem::new(key, e)],
        Ok(parts) => parts
            .into_iter()
            .filter(|(is_ph, name)| *is_ph && !PLACEHOLDERS.contains(name))
            .map(|(_, name)| {
                Problem::new(
                    key.clone(),
                    format!(
                        "unknown placeholder `{{{name}}}`; use {}",
                        PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                    ),
                )
            })
            .collect(),
    }
}

/// Expands `{pipeline}`, `{run_id}`, `{run_date}` (`YYYY-MM-DD`), `{run_time}`, `{window_start}` and
/// `{window_end}` (`YYYYMMDDTHHMMSSZ`); a relative result is joined onto `output_dir`.
///
/// An absent window start renders as `beginning`, an absent end as `open`.
/// Unknown or malformed placeholders are left as written (`validate` reports them).
pub fn render_path(template: &str, ctx: &SinkContext) -> PathBuf {
    let rendered = match template_parts(template) {
        Err(_) => template.to_string(),
        Ok(parts) => parts
            .into_iter()
            .map(|(is_ph, text)| match (is_ph, text) {
                (false, t) => t.to_string(),
                (true, "pipeline") => ctx.pipeline.clone(),
                (true, "run_id") => ctx.run_id.clone(),
                (true, "run_date") => ctx.started_at.format("%Y-%m-%d").to_string(),
                (true, "run_time") => ctx.started_at.format(FILE_TIME_FORMAT).to_string(),
                (true, "window_start") => ctx.window_start.map_or_else(
                    || "beginning".to_string(),
                    |t| t.format(FILE_TIME_FORMAT).to_string(),
                ),
                (true, "window_end") => ctx.window_end.map_or_else(
                    || "open".to_string(),
                    |t| t.format(FILE_TIME_FORMAT).to_string(),
                ),
                (true, other) => format!("{{{other}}}"),
            })
            .collect(),
    };
    let path = Path::new(&rendered);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        ctx.output_dir.join(path)
    }
}

/// The label used in errors, e.g. `csv sink out/x.csv`.
/// Finishes the per-group parts of a split or partitioned sink as one output:
/// the first part's file leads and every other file (with its own companions)
/// rides along as a companion, so the runner commits all of them in one step,
/// or none. A part that fails discards what finished and aborts the rest.
fn finish_parts<S: Sink + ?Sized>(
    kind: &'static str,
    first: Box<S>,
    mut rest: impl Iterator<Item = Box<S>>,
) -> Result<SinkOutput, SinkError> {
    let mut main = match first.finish() {
        Ok(o) => o,
        Err(e) => {
            rest.for_each(|p| p.abort());
            return Err(e);
        }
    };
    while let Some(part) = rest.next() {
        match part.finish() {
            Ok(o) => {
                if let Some(staged) = o.staged {
                    main.companions.push(Companion {
                        kind,
                        staged,
                        rows: o.rows,
                        bytes: o.bytes,
                    });
                }
                main.companions.extend(o.companions);
            }
            Err(e) => {
                main.discard();
                rest.for_each(|p| p.abort());
                return Err(e);
            }
        }
    }
    Ok(main)
}

/// The index of column `name`, which setting `key` of the sink refers to.
fn column_index(schema: &Schema, name: &str, key: &str, label: &str) -> Result<usize, SinkError> {
    schema
        .columns
        .iter()
        .position(|c| c.name == name)
        .ok_or_else(|| SinkError::new(label, format!("{key}: there is no column `{name}`")))
}

fn label(kind: &str, path: &Path) -> String {
    format!("{kind} sink {}", path.display())
}

/// Creates the staged temporary file for `path`, as a sink error on failure.
fn stage(
    kind: &str,
    path: &Path,
    ctx: &SinkContext,
) -> Result<(StagedFile, std::fs::File), SinkError> {
    let label = label(kind, path);
    StagedFile::create(path, &ctx.temp_tag())
        .map_err(|e| SinkError::io(&label, "cannot start the output file", &e))
}

/// 10^i for i in 0..=38, the largest precision a Decimal128 column has.
const POW10: [u128; 39] = {
    let mut table = [1u128; 39];
    let mut i = 1;
    while i < table.len() {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

/// `d` at exactly `scale` decimal places within `precision` digits; never rounds.
pub(crate) fn fit_decimal_for_column(
    mut d: rust_decimal::Decimal,
    precision: u8,
    scale: u8,
) -> Result<rust_decimal::Decimal, String> {
    let limit = POW10.get(usize::from(precision)).copied();
    if d.scale() == u32::from(scale) {
        // Already at the column's scale (nearly every value): only the digits need checking.
        if limit.is_none_or(|l| d.mantissa().unsigned_abs() < l) {
            return Ok(d);
        }
    }
    let original = d;
    d.rescale(u32::from(scale));
    if d != original || d.scale() != u32::from(scale) {
        return Err(format!(
            "{original} cannot be written with exactly {scale} decimal places without rounding"
        ));
    }
    if limit.is_some_and(|l| d.mantissa().unsigned_abs() >= l) {
        return Err(format!(
            "{original} has more than {precision} digits (precision {precision}, scale {scale})"
        ));
    }
    Ok(d)
}

/// The mantissa of `d` at exactly `scale` decimal places within `precision`
/// digits, as [`fit_decimal_for_column`] would give it, without building a
/// rescaled `Decimal` when the value only gains trailing zeros.
pub(crate) fn column_mantissa(
    d: &rust_decimal::Decimal,
    precision: u8,
    scale: u8,
) -> Result<i128, String> {
    // 2^96: what a `Decimal` mantissa can hold; beyond it `rescale` cannot reach the scale.
    const DECIMAL_MANTISSA_LIMIT: u128 = 1 << 96;
    let (from, to) = (d.scale(), u32::from(scale));
    if from <= to
        && let Some(&factor) = POW10.get((to - from) as usize)
        && let Some(m) = d.mantissa().checked_mul(factor as i128)
        && m.unsigned_abs() < DECIMAL_MANTISSA_LIMIT
        && POW10
            .get(usize::from(precision))
            .is_none_or(|&l| m.unsigned_abs() < l)
    {
        return Ok(m);
    }
    fit_decimal_for_column(*d, precision, scale).map(|f| f.mantissa())
}

/// A cell as text for text formats.
///
/// Decimals print at their column scale (`12.30`, `-5.00`); timestamps as
/// RFC 3339 in UTC with `Z`, with microseconds only when non-zero
/// (`2024-03-05T10:22:33Z`, `2024-03-05T10:22:33.123456Z`), which every
/// RFC 3339 parser reads and keeps whole-second values short; dates as
/// `YYYY-MM-DD`; bools as `true`/`false`; null as empty.
pub fn cell_text(cell: &Cell) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    match cell {
        Cell::Null => Cow::Borrowed(""),
        Cell::Str(s) => Cow::Borrowed(s),
        Cell::Decimal(d) => Cow::Owned(d.to_string()),
        Cell::Int(i) => Cow::Owned(i.to_string()),
        Cell::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Cell::Timestamp(t) => {
            let format = if t.timestamp_subsec_nanos() == 0 {
                SecondsFormat::Secs
            } else {
                SecondsFormat::Micros
            };
            Cow::Owned(t.to_rfc3339_opts(format, true))
        }
        Cell::Date(d) => Cow::Owned(d.format("%Y-%m-%d").to_string()),
    }
}

/// [`cell_text`] appended to `buf`, without a temporary string per number,
/// date or timestamp.
pub fn push_cell_text(buf: &mut String, cell: &Cell) {
    let mut ascii = [0u8; ASCII_CELL_BYTES];
    match cell {
        Cell::Str(s) => buf.push_str(s),
        _ => match ascii_cell(cell, &mut ascii) {
            Some(text) => buf.push_str(std::str::from_utf8(text).expect("ASCII digits and signs")),
            None => buf.push_str(&cell_text(cell)),
        },
    }
}

/// [`cell_text`] appended to `out` as UTF-8 bytes, without a temporary string
/// (the CSV sink writes every cell of every row this way).
pub fn push_cell_bytes(out: &mut Vec<u8>, cell: &Cell) {
    match cell {
        Cell::Str(s) => out.extend_from_slice(s.as_bytes()),
        Cell::Decimal(d) => push_decimal(out, d, b'.'),
        _ => {
            let mut ascii = [0u8; ASCII_CELL_BYTES];
            match ascii_cell(cell, &mut ascii) {
                Some(text) => out.extend_from_slice(text),
                None => out.extend_from_slice(cell_text(cell).as_bytes()),
            }
        }
    }
}

/// Room for the longest text [`ascii_cell`] writes: an `i64`, a decimal, an RFC 3339 instant.
const ASCII_CELL_BYTES: usize = 48;

/// The text [`cell_text`] gives a non-string cell, written into `out`; `None`
/// for strings and for dates outside years 0..=9999 or on a leap second,
/// which take chrono's own formatting.
fn ascii_cell<'a>(cell: &Cell, out: &'a mut [u8; ASCII_CELL_BYTES]) -> Option<&'a [u8]> {
    use chrono::{Datelike, Timelike};
    let n = match cell {
        Cell::Null => 0,
        Cell::Str(_) => return None,
        Cell::Bool(b) => {
            let text: &[u8] = if *b { b"true" } else { b"false" };
            out[..text.len()].copy_from_slice(text);
            text.len()
        }
        Cell::Int(i) => {
            let mut digits = [0u8; 20];
            let at = u64_digits(i.unsigned_abs(), &mut digits);
            let mut n = 0;
            if *i < 0 {
                out[0] = b'-';
                n = 1;
            }
            let len = digits.len() - at;
            out[n..n + len].copy_from_slice(&digits[at..]);
            n + len
        }
        Cell::Decimal(d) => decimal_ascii(d, b'.', out),
        // Four-digit years and no leap second: what `to_rfc3339_opts` prints.
        Cell::Timestamp(t) => {
            // Read through the naive UTC value once: the `DateTime` accessors add the offset on every call.
            let (date, time) = (t.naive_utc().date(), t.naive_utc().time());
            let nanos = time.nanosecond();
            if !(0..=9999).contains(&date.year()) || nanos >= 1_000_000_000 {
                return None;
            }
            put_date(out, date.year() as u32, date.month(), date.day());
            let secs = time.num_seconds_from_midnight();
            out[10] = b'T';
            put_2(&mut out[11..], secs / 3600);
            out[13] = b':';
            put_2(&mut out[14..], secs / 60 % 60);
            out[16] = b':';
            put_2(&mut out[17..], secs % 60);
            let mut n = 19;
            if nanos != 0 {
                let micros = nanos / 1000;
                out[19] = b'.';
                put_2(&mut out[20..], micros / 10_000);
                put_2(&mut out[22..], micros / 100 % 100);
                put_2(&mut out[24..], micros % 100);
                n = 26;
            }
            out[n] = b'Z';
            n + 1
        }
        Cell::Date(d) => {
            if !(0..=9999).contains(&d.year()) {
                return None;
            }
            put_date(out, d.year() as u32, d.month(), d.day());
            10
        }
    };
    Some(&out[..n])
}

/// `YYYY-MM-DD` into `out[..10]` (`year` has at most four digits).
fn put_date(out: &mut [u8], year: u32, month: u32, day: u32) {
    put_2(out, year / 100);
    put_2(&mut out[2..], year % 100);
    out[4] = b'-';
    put_2(&mut out[5..], month);
    out[7] = b'-';
    put_2(&mut out[8..], day);
}

/// `n` (below 100) as two digits into `out[..2]`.
fn put_2(out: &mut [u8], n: u32) {
    out[0] = b'0' + (n / 10) as u8;
    out[1] = b'0' + (n % 10) as u8;
}

/// The decimal digits of `n`, right-aligned in `digits`; returns where they start.
fn u64_digits(mut n: u64, digits: &mut [u8; 20]) -> usize {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return at;
        }
    }
}

/// Appends `d` exactly as `Decimal`'s `Display` prints it (every digit of its
/// scale, `-` for any negative value including `-0`), with `point` as the
/// decimal separator; no `String` and no 96-bit division per digit.
pub fn push_decimal(out: &mut Vec<u8>, d: &rust_decimal::Decimal, point: u8) {
    let mut ascii = [0u8; ASCII_CELL_BYTES];
    let n = decimal_ascii(d, point, &mut ascii);
    out.extend_from_slice(&ascii[..n]);
}

/// [`push_decimal`]'s text written into `out`; returns its length.
fn decimal_ascii(d: &rust_decimal::Decimal, point: u8, out: &mut [u8; ASCII_CELL_BYTES]) -> usize {
    let scale = d.scale() as usize;
    let m = d.mantissa().unsigned_abs();
    // A 96-bit mantissa has at most 29 digits and the scale is at most 28.
    let mut digits = [b'0'; 40];
    let mut at = digits.len();
    if let Ok(small) = u64::try_from(m) {
        let mut d20 = [0u8; 20];
        let from = u64_digits(small, &mut d20);
        at -= d20.len() - from;
        digits[at..].copy_from_slice(&d20[from..]);
    } else {
        let mut n = m;
        while n != 0 {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
    // Zero-padded to at least one digit before the point (`0.05`, `0`).
    at = at.min(digits.len() - (scale + 1));
    let mut n = 0;
    if d.is_sign_negative() {
        out[0] = b'-';
        n = 1;
    }
    let text = &digits[at..];
    let whole = text.len() - scale;
    out[n..n + whole].copy_from_slice(&text[..whole]);
    n += whole;
    if scale > 0 {
        out[n] = point;
        out[n + 1..n + 1 + scale].copy_from_slice(&text[whole..]);
        n += 1 + scale;
    }
    n
}

#[cfg(test)]
mod tests;
