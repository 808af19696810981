//! One CSV file per group: `split_by = "<column>"` with `{group}` in the
//! path writes a separate file (and manifest) for each value of the column,
//! e.g. one file per employee or per report. Every file is staged and
//! committed in the run's single atomic step.
//!
//! The group value is made safe for a file name: characters other than
//! letters, digits, `-`, `_`, `.` and `@` become `_`. A run with no rows still
//! writes one header-only file, with `{group}` = `empty`, as an unsplit CSV
//! sink does, so a scheduled delivery always shows that the run happened.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::csv::{CsvSink, CsvSinkConfig, Layout};
use super::csv_ledger::LedgerCsvSink;
use super::{Sink, SinkContext, SinkError, SinkOutput, cell_text, label};
use crate::row::{Batch, Cell, Row, Schema};

/// Files one run may write for one split sink (each holds an open file and a buffer).
pub const MAX_GROUPS: usize = 256;

/// The `{group}` value of a run with no rows.
pub const EMPTY_GROUP: &str = "empty";

/// A CSV sink writing one file per value of a column.
pub struct SplitCsvSink {
    label: String,
    config: CsvSinkConfig,
    ctx: SinkContext,
    schema: Arc<Schema>,
    /// The rendered path, `{group}` still in it.
    path: PathBuf,
    column: usize,
    parts: BTreeMap<String, Box<dyn Sink>>,
}

impl std::fmt::Debug for SplitCsvSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitCsvSink")
            .field("label", &self.label)
            .field("groups", &self.parts.len())
            .finish_non_exhaustive()
    }
}

impl SplitCsvSink {
    /// Checks the split column; files are opened as groups appear.
    pub fn new(
        config: &CsvSinkConfig,
        path: &Path,
        ctx: &SinkContext,
        schema: Arc<Schema>,
    ) -> Result<Self, SinkError> {
        let label = label("csv", path);
        let name = config.split_by.clone().unwrap_or_default();
        let column = super::column_index(&schema, &name, "split_by", &label)?;
        Ok(Self {
            label,
            // Each group's file is an ordinary CSV sink at a path already chosen.
            config: CsvSinkConfig {
                split_by: None,
                path: config.path.replace("{group}", "group"),
                ..config.clone()
            },
            ctx: ctx.clone(),
            schema,
            path: path.to_path_buf(),
            column,
            parts: BTreeMap::new(),
        })
    }

    fn open(&self, group: &str) -> Result<Box<dyn Sink>, SinkError> {
        let path = PathBuf::from(self.path.to_string_lossy().replace("{group}", group));
        Ok(if self.config.layout == Layout::Rows {
            Box::new(CsvSink::create(
                &self.config,
                &path,
                &self.ctx,
                self.schema.clone(),
            )?)
        } else {
            Box::new(LedgerCsvSink::create(
                &self.config,
                &path,
                &self.ctx,
                self.schema.clone(),
            )?)
        })
    }
}

/// A group value as a file-name part.
pub fn file_part(value: &str) -> String {
    let s: String = value
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '@') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_matches('.').to_string();
    if s.is_empty() { "_".to_string() } else { s }
}

impl Sink for SplitCsvSink {
    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let mut split: BTreeMap<String, Vec<Row>> = BTreeMap::new();
        for row in &batch.rows {
            let value = match row.cells.get(self.column) {
                None | Some(Cell::Null) => "_".to_string(),
                Some(c) => file_part(&cell_text(c)),
            };
            split.entry(value).or_default().push(row.clone());
        }
        for (group, rows) in split {
            if !self.parts.contains_key(&group) {
                if self.parts.len() >= MAX_GROUPS {
                    return Err(SinkError::new(
                        &self.label,
                        format!(
                            "more than {MAX_GROUPS} values of `{}` in one run, so more files than one \
                             run may write; split by a coarser column",
                            self.schema.columns[self.column].name
                        ),
                    ));
                }
                let part = self.open(&group)?;
                self.parts.insert(group.clone(), part);
            }
            self.parts
                .get_mut(&group)
                .expect("inserted above")
                .write(&Batch { rows })?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<SinkOutput, SinkError> {
        let mut parts = std::mem::take(&mut self.parts).into_values();
        let first = match parts.next() {
            Some(p) => p,
            None => self.open(EMPTY_GROUP)?,
        };
        super::finish_parts("csv", first, parts)
    }

    fn abort(mut self: Box<Self>) {
        std::mem::take(&mut self.parts)
            .into_values()
            .for_each(|p| p.abort());
    }
}
