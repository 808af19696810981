//! The CSV `journal` and `bill` layouts: rows grouped into accounting entries
//! (see [`super::ledger`]) and written through the ordinary CSV sink, so
//! presets, formula protection, gzip and manifests apply unchanged.
//!
//! - `journal`: per entry, one debit row per expense (a refund is a credit
//!   row) on its expense account, then one row on the credit account for
//!   the entry's total; debits equal credits in every entry, exactly.
//! - `bill`: one row per expense line, with the bill's number, date, vendor,
//!   payable account and total repeated on each line (the shape bill imports
//!   of QuickBooks Online, Xero and NetSuite take).

use std::path::Path;
use std::sync::Arc;

use rust_decimal::Decimal;

use super::csv::{BILL_COLUMNS, CsvSink, CsvSinkConfig, JOURNAL_COLUMNS, Layout};
use super::ledger::{Entry, Ledger, check_entry, negated, total};
use super::{Sink, SinkContext, SinkError, SinkOutput, label};
use crate::row::{Batch, Cell, Column, ColumnType, Row, Schema};

/// A CSV sink writing journal or bill rows built from the pipeline's rows.
#[derive(Debug)]
pub struct LedgerCsvSink {
    label: String,
    layout: Layout,
    ledger: Ledger,
    inner: Option<Box<CsvSink>>,
}

impl LedgerCsvSink {
    /// Resolves the ledger fields against `schema` and opens the CSV file with the layout's columns.
    pub fn create(
        config: &CsvSinkConfig,
        path: &Path,
        ctx: &SinkContext,
        schema: Arc<Schema>,
    ) -> Result<Self, SinkError> {
        let label = label("csv", path);
        let fields = config.fields.as_ref().ok_or_else(|| {
            SinkError::new(
                &label,
                "fields: required with layout = \"journal\" or \"bill\"",
            )
        })?;
        let ledger = Ledger::new(
            fields,
            config.group_by.as_deref(),
            config.credit_account.as_ref(),
            &schema,
        )
        .map_err(|m| SinkError::new(&label, m))?;
        let money = ledger.amount_type;
        let col = |name: &str, ty| Column {
            name: name.to_string(),
            ty,
        };
        let columns: Vec<Column> = match config.layout {
            Layout::Journal => JOURNAL_COLUMNS
                .iter()
                .map(|n| match *n {
                    "date" => col(n, ColumnType::Date),
                    "debit" | "credit" => col(n, money),
                    _ => col(n, ColumnType::String),
                })
                .collect(),
            _ => BILL_COLUMNS
                .iter()
                .map(|n| match *n {
                    "date" => col(n, ColumnType::Date),
                    "bill_total" | "amount" => col(n, money),
                    "line" => col(n, ColumnType::Integer),
                    _ => col(n, ColumnType::String),
                })
                .collect(),
        };
        let inner_config = CsvSinkConfig {
            layout: Layout::Rows,
            group_by: None,
            credit_account: None,
            fields: None,
            ..config.clone()
        };
        let inner = CsvSink::create(&inner_config, path, ctx, Arc::new(Schema { columns }))?;
        Ok(Self {
            label,
            layout: config.layout,
            ledger,
            inner: Some(Box::new(inner)),
        })
    }

    fn emit(&mut self, entries: Vec<Entry>) -> Result<(), SinkError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::new();
        for (doc, lines) in entries {
            check_entry(&doc, &lines, self.layout == Layout::Bill)
                .map_err(|m| SinkError::new(&self.label, m))?;
            let total = total(&lines);
            let date = lines
                .iter()
                .map(|l| l.date)
                .max()
                .expect("an entry has lines");
            let first = &lines[0];
            let text = |s: &str| {
                if s.is_empty() {
                    Cell::Null
                } else {
                    Cell::Str(s.into())
                }
            };
            match self.layout {
                Layout::Journal => {
                    for l in &lines {
                        let (dr, cr) = split(l.amount);
                        rows.push(Row {
                            cells: vec![
                                text(&doc),
                                Cell::Date(date),
                                text(&l.account),
                                text(&l.name),
                                text(&l.memo),
                                text(&l.class),
                                dr,
                                cr,
                            ],
                        });
                    }
                    // The balancing line: credit the payable/card account by the total.
                    let (dr, cr) = split(negated(total));
                    rows.push(Row {
                        cells: vec![
                            text(&doc),
                            Cell::Date(date),
                            text(&first.credit_account),
                            text(&first.name),
                            text(&first.memo),
                            Cell::Null,
                            dr,
                            cr,
                        ],
                    });
                }
                _ => {
                    for (i, l) in lines.iter().enumerate() {
                        rows.push(Row {
                            cells: vec![
                                text(&doc),
                                Cell::Date(date),
                                text(&first.name),
                                text(&first.credit_account),
                                Cell::Decimal(total),
                                Cell::Int(i as i64 + 1),
                                text(&l.account),
                                Cell::Decimal(l.amount),
                                text(&l.memo),
                                text(&l.class),
                            ],
                        });
                    }
                }
            }
        }
        let inner = self.inner.as_mut().ok_or_else(|| {
            SinkError::new(
                &self.label,
                "write after finish or abort (a bug in the caller)",
            )
        })?;
        inner.write(&Batch { rows })
    }
}

/// A signed amount as (debit, credit) cells: positive debits, negative credits.
fn split(a: Decimal) -> (Cell, Cell) {
    if a < Decimal::ZERO {
        (Cell::Null, Cell::Decimal(negated(a)))
    } else {
        (Cell::Decimal(a), Cell::Null)
    }
}

impl Sink for LedgerCsvSink {
    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let mut entries = Vec::new();
        for row in &batch.rows {
            if let Some(e) = self
                .ledger
                .push(&row.cells, str::to_string)
                .map_err(|m| SinkError::new(&self.label, m))?
            {
                entries.push(e);
            }
        }
        self.emit(entries)
    }

    fn finish(mut self: Box<Self>) -> Result<SinkOutput, SinkError> {
        let held = self.ledger.drain();
        if let Err(e) = self.emit(held) {
            if let Some(inner) = self.inner.take() {
                inner.abort();
            }
            return Err(e);
        }
        let inner = self.inner.take().ok_or_else(|| {
            SinkError::new(&self.label, "finish after abort (a bug in the caller)")
        })?;
        inner.finish()
    }

    fn abort(mut self: Box<Self>) {
        if let Some(inner) = self.inner.take() {
            inner.abort();
        }
    }
}
