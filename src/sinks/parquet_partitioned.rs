//! Hive-style partitioned Parquet: one file per partition value, at
//! `{dir}/{key}={value}/{file}` where `{dir}/{file}` is the sink's rendered
//! path, so Spark, DuckDB, pyarrow and Athena read the directory as one table
//! with the partition as a column.
//!
//! Every partition's file is staged like any other output and committed in
//! the run's single atomic step. Each open partition holds up to one row
//! group in memory, so at most [`MAX_PARTITIONS`] partitions are written per
//! run. A run with no rows writes one empty file (the schema only) at
//! `{dir}/_empty-{file}`: names starting with `_` are skipped by Hive-style
//! readers, and the run still leaves evidence of what it exported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::parquet::{Granularity, ParquetSink, ParquetSinkConfig};
use super::{Sink, SinkContext, SinkError, SinkOutput, cell_text, label};
use crate::row::{Batch, Cell, ColumnType, Row, Schema};

/// Partitions one run may write; each holds a row group in memory while open.
pub const MAX_PARTITIONS: usize = 256;

/// Hive's name for the partition of null values.
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Writes one Parquet file per partition value.
#[derive(Debug)]
pub struct PartitionedParquetSink {
    label: String,
    config: ParquetSinkConfig,
    ctx: SinkContext,
    schema: Arc<Schema>,
    path: PathBuf,
    column: usize,
    key: String,
    parts: BTreeMap<String, Box<ParquetSink>>,
}

impl PartitionedParquetSink {
    /// Checks the partition column; files are opened as partitions appear.
    pub fn new(
        config: &ParquetSinkConfig,
        path: &Path,
        ctx: &SinkContext,
        schema: Arc<Schema>,
    ) -> Result<Self, SinkError> {
        let label = label("parquet", path);
        let name = config.partition_by.clone().unwrap_or_default();
        let column = super::column_index(&schema, &name, "partition_by", &label)?;
        let temporal = matches!(
            schema.columns[column].ty,
            ColumnType::Date | ColumnType::Timestamp
        );
        let key = match config.partition_granularity {
            Granularity::Value => name.clone(),
            _ if !temporal => {
                return Err(SinkError::new(
                    &label,
                    format!(
                        "partition_granularity: year, month and day need a date or timestamp column; `{name}` is neither"
                    ),
                ));
            }
            Granularity::Year => format!("{name}_year"),
            Granularity::Month => format!("{name}_month"),
            Granularity::Day => format!("{name}_day"),
        };
        Ok(Self {
            label,
            config: config.clone(),
            ctx: ctx.clone(),
            schema,
            path: path.to_path_buf(),
            column,
            key,
            parts: BTreeMap::new(),
        })
    }

    /// The partition directory value of a cell (URL-style escaping of `/`, `=`, `%` and control characters).
    fn value(&self, cell: &Cell) -> String {
        let date = match cell {
            Cell::Null => return NULL_PARTITION.to_string(),
            Cell::Date(d) => Some(*d),
            Cell::Timestamp(t) => Some(t.date_naive()),
            _ => None,
        };
        let text = match (self.config.partition_granularity, date) {
            (Granularity::Year, Some(d)) => d.format("%Y").to_string(),
            (Granularity::Month, Some(d)) => d.format("%Y-%m").to_string(),
            (Granularity::Day, Some(d)) => d.format("%Y-%m-%d").to_string(),
            _ => cell_text(cell).into_owned(),
        };
        escape(&text)
    }

    fn file_for(&self, dir_name: Option<&str>) -> PathBuf {
        let file = self
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let parent = self.path.parent().unwrap_or(Path::new(""));
        match dir_name {
            Some(d) => parent.join(d).join(file),
            None => {
                let mut name = std::ffi::OsString::from("_empty-");
                name.push(file);
                parent.join(name)
            }
        }
    }

    fn open(&self, path: &Path) -> Result<Box<ParquetSink>, SinkError> {
        let plain = ParquetSinkConfig {
            partition_by: None,
            partition_granularity: Granularity::Value,
            ..self.config.clone()
        };
        ParquetSink::create(&plain, path, &self.ctx, self.schema.clone()).map(Box::new)
    }
}

/// Escapes what cannot appear in one path segment, as Hive does (`%2F` for `/`).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(
            c,
            '/' | '\\' | '=' | '%' | ':' | '"' | '\'' | '#' | '?' | '*'
        ) || c.is_control()
        {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    if out.is_empty() || out == "." || out == ".." {
        return NULL_PARTITION.to_string();
    }
    out
}

impl Sink for PartitionedParquetSink {
    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let mut split: BTreeMap<String, Vec<Row>> = BTreeMap::new();
        for row in &batch.rows {
            let cell = row.cells.get(self.column).unwrap_or(&Cell::Null);
            split.entry(self.value(cell)).or_default().push(row.clone());
        }
        for (value, rows) in split {
            if !self.parts.contains_key(&value) {
                if self.parts.len() >= MAX_PARTITIONS {
                    return Err(SinkError::new(
                        &self.label,
                        format!(
                            "more than {MAX_PARTITIONS} partitions of `{}` in one run; use a coarser \
                             partition_granularity or narrow the run (--since/--until)",
                            self.key
                        ),
                    ));
                }
                let path = self.file_for(Some(&format!("{}={value}", self.key)));
                let part = self.open(&path)?;
                self.parts.insert(value.clone(), part);
            }
            let part = self.parts.get_mut(&value).expect("inserted above");
            part.write(&Batch { rows })?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<SinkOutput, SinkError> {
        let mut parts = std::mem::take(&mut self.parts).into_values();
        let first = match parts.next() {
            Some(p) => p,
            None => self.open(&self.file_for(None))?,
        };
        super::finish_parts("parquet", first, parts)
    }

    fn abort(mut self: Box<Self>) {
        std::mem::take(&mut self.parts)
            .into_values()
            .for_each(|p| p.abort());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_values_cannot_escape_their_directory() {
        assert_eq!(escape("2024-03"), "2024-03");
        assert_eq!(escape("a/b=c"), "a%2Fb%3Dc");
        assert_eq!(escape("../x"), "..%2Fx");
        assert_eq!(escape(".."), NULL_PARTITION);
        assert_eq!(escape(""), NULL_PARTITION);
        assert_eq!(escape("line\nbreak"), "line%0Abreak");
    }
}
