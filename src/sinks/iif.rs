//! QuickBooks Desktop IIF sink: tab-delimited, CRLF, `!TRNS`/`!SPL`/`!ENDTRNS`
//! header lines, then one `TRNS` line, its `SPL` lines and `ENDTRNS` per
//! transaction. Every transaction balances to zero (TRNS + SPLs), exactly.
//!
//! Rows become transactions one per row, or grouped by a column (per report,
//! employee, card, day: whatever column the pipeline supplies). Grouped
//! transactions are held until the end of the run and written in group-key
//! order, so the file is deterministic; memory grows with the rows of the
//! run for a grouped IIF sink (a few short strings per row).
//!
//! - `bill`: TRNS credits the payable account (`credit_account`) by the
//!   total, an SPL debits each row's expense account. A group whose total is
//!   negative is a vendor credit, `BILL REFUND`, with the signs reversed.
//! - `credit_card`: TRNS credits the card account by the charge, SPLs debit
//!   the expense accounts; a negative total is a `CCARD REFUND`.
//! - `journal`: `GENERAL JOURNAL`, TRNS credits `credit_account` (payable or
//!   card), SPLs debit the expense accounts.
//!
//! IIF has no quoting: tabs, CR and LF inside a value become spaces and `"`
//! becomes `'` (QuickBooks treats a field starting with `"` as quoted).

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Deserialize;

use super::output::{FileCompression, Output};
use super::{Sink, SinkContext, SinkError, SinkOutput, cell_text, label};
use crate::config::Problem;
use crate::fsutil::StagedFile;
use crate::row::{Batch, Cell, ColumnType, Schema};

/// Default IIF date format (QuickBooks US).
pub const DEFAULT_DATE_FORMAT: &str = "%m/%d/%Y";

/// `[[sinks]] type = "iif"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IifSinkConfig {
    /// Output path; the same placeholders as CSV.
    pub path: String,
    /// `bill`, `credit_card` or `journal`.
    pub transaction: IifTransaction,
    /// Column whose value groups rows into one transaction (e.g. `report_number`); absent = one per row.
    #[serde(default)]
    pub group_by: Option<String>,
    /// chrono format of DATE (default `%m/%d/%Y`).
    #[serde(default = "default_date_format")]
    pub date_format: String,
    /// The payable (bill, journal) or card (credit_card) account as a constant; or use `fields.credit_account`.
    #[serde(default)]
    pub credit_account: Option<String>,
    /// Which output columns feed the IIF fields.
    pub fields: IifFields,
}

fn default_date_format() -> String {
    DEFAULT_DATE_FORMAT.to_string()
}

/// The kind of QuickBooks transaction written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IifTransaction {
    /// `BILL` / `BILL REFUND` (accounts payable).
    Bill,
    /// `CREDIT CARD` / `CCARD REFUND`.
    CreditCard,
    /// `GENERAL JOURNAL`.
    Journal,
}

/// Output column names for each IIF field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IifFields {
    /// Date or timestamp column (DATE; a group takes its latest date).
    pub date: String,
    /// Decimal column: the expense amount (positive = spent, negative = refund).
    pub amount: String,
    /// Expense account of each line (SPL ACCNT), e.g. a mapped `gl_account`.
    pub account: String,
    /// Vendor / payee (NAME), e.g. a mapped employee vendor, or the merchant for cards.
    pub name: String,
    /// Memo per line (MEMO).
    #[serde(default)]
    pub memo: Option<String>,
    /// Class per line (CLASS), e.g. a mapped project.
    #[serde(default)]
    pub class: Option<String>,
    /// Document number (DOCNUM); default: the group key, or none without grouping.
    #[serde(default)]
    pub doc_number: Option<String>,
    /// Column holding the credit account, instead of the constant `credit_account`.
    #[serde(default)]
    pub credit_account: Option<String>,
}

impl IifSinkConfig {
    pub(super) fn validate(&self, key_prefix: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Err(e) = crate::transforms::steps::check_date_format(&self.date_format) {
            problems.push(Problem::new(format!("{key_prefix}.date_format"), e));
        }
        match (&self.credit_account, &self.fields.credit_account) {
            (None, None) => problems.push(Problem::new(
                format!("{key_prefix}.credit_account"),
                "is required: the payable account (bill, journal) or card account (credit_card), \
                 e.g. credit_account = \"Accounts Payable\", or a column in fields.credit_account",
            )),
            (Some(_), Some(_)) => problems.push(Problem::new(
                format!("{key_prefix}.credit_account"),
                "set either `credit_account` or `fields.credit_account`, not both",
            )),
            _ => {}
        }
        problems
    }

    /// Problems with the column names this sink refers to.
    pub(super) fn validate_columns(&self, key_prefix: &str, columns: &[&str]) -> Vec<Problem> {
        let f = &self.fields;
        let refs = [
            ("fields.date", Some(&f.date)),
            ("fields.amount", Some(&f.amount)),
            ("fields.account", Some(&f.account)),
            ("fields.name", Some(&f.name)),
            ("fields.memo", f.memo.as_ref()),
            ("fields.class", f.class.as_ref()),
            ("fields.doc_number", f.doc_number.as_ref()),
            ("fields.credit_account", f.credit_account.as_ref()),
            ("group_by", self.group_by.as_ref()),
        ];
        refs.into_iter()
            .filter_map(|(k, c)| c.map(|c| (k, c)))
            .filter(|(_, c)| !columns.contains(&c.as_str()))
            .map(|(k, c)| {
                Problem::new(
                    format!("{key_prefix}.{k}"),
                    format!(
                        "there is no column `{c}`; columns are: {} (add a [[columns]] entry, e.g. for a mapped field)",
                        columns.join(", ")
                    ),
                )
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy)]
struct Indexes {
    date: usize,
    amount: usize,
    account: usize,
    name: usize,
    memo: Option<usize>,
    class: Option<usize>,
    doc_number: Option<usize>,
    credit_account: Option<usize>,
    group: Option<usize>,
}

/// One expense line of a transaction.
#[derive(Debug, Clone)]
struct Line {
    date: NaiveDate,
    amount: Decimal,
    account: String,
    name: String,
    memo: String,
    class: String,
    doc_number: String,
    credit_account: String,
}

/// Writes rows as QuickBooks IIF transactions to a staged temporary file.
#[derive(Debug)]
pub struct IifSink {
    label: String,
    config: IifSinkConfig,
    idx: Indexes,
    writer: Option<BufWriter<Output>>,
    staged: Option<StagedFile>,
    groups: BTreeMap<String, Vec<Line>>,
    transactions: u64,
    rows_seen: u64,
}

const TRNS_HEADER: &str = "!TRNS\tTRNSID\tTRNSTYPE\tDATE\tACCNT\tNAME\tCLASS\tAMOUNT\tDOCNUM\tMEMO\r\n\
                           !SPL\tSPLID\tTRNSTYPE\tDATE\tACCNT\tNAME\tCLASS\tAMOUNT\tDOCNUM\tMEMO\r\n\
                           !ENDTRNS\r\n";

impl IifSink {
    /// Creates the temporary file at `path`'s staged name and writes the header lines.
    pub fn create(
        config: &IifSinkConfig,
        path: &Path,
        ctx: &SinkContext,
        schema: Arc<Schema>,
    ) -> Result<Self, SinkError> {
        let label = label("iif", path);
        let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
        let mut problems = config.validate("iif");
        problems.extend(config.validate_columns("iif", &names));
        if let Some(p) = problems.first() {
            return Err(SinkError::new(&label, format!("{}: {}", p.key, p.message)));
        }
        let pos = |c: &str| names.iter().position(|n| *n == c).expect("validated above");
        let f = &config.fields;
        let idx = Indexes {
            date: pos(&f.date),
            amount: pos(&f.amount),
            account: pos(&f.account),
            name: pos(&f.name),
            memo: f.memo.as_deref().map(pos),
            class: f.class.as_deref().map(pos),
            doc_number: f.doc_number.as_deref().map(pos),
            credit_account: f.credit_account.as_deref().map(pos),
            group: config.group_by.as_deref().map(pos),
        };
        if !matches!(schema.columns[idx.amount].ty, ColumnType::Decimal { .. }) {
            return Err(SinkError::new(
                &label,
                format!(
                    "fields.amount: column `{}` must be type = \"decimal\"",
                    f.amount
                ),
            ));
        }
        if !matches!(
            schema.columns[idx.date].ty,
            ColumnType::Date | ColumnType::Timestamp
        ) {
            return Err(SinkError::new(
                &label,
                format!(
                    "fields.date: column `{}` must be type = \"date\" or \"timestamp\"",
                    f.date
                ),
            ));
        }
        let (staged, out) = Output::create("iif", path, ctx, FileCompression::None)?;
        let mut writer = BufWriter::new(out);
        if let Err(e) = writer.write_all(TRNS_HEADER.as_bytes()) {
            staged.discard();
            return Err(SinkError::io(&label, "cannot write", &e));
        }
        Ok(Self {
            label,
            config: config.clone(),
            idx,
            writer: Some(writer),
            staged: Some(staged),
            groups: BTreeMap::new(),
            transactions: 0,
            rows_seen: 0,
        })
    }

    fn line(&self, cells: &[Cell], row_no: u64) -> Result<Line, SinkError> {
        let err = |m: String| SinkError::new(&self.label, format!("row {row_no}: {m}"));
        let text = |i: Option<usize>| i.map_or(String::new(), |i| clean(&cell_text(&cells[i])));
        let date = match &cells[self.idx.date] {
            Cell::Date(d) => *d,
            Cell::Timestamp(t) => t.date_naive(),
            _ => {
                return Err(err(format!(
                    "`{}` is empty; IIF needs a date",
                    self.config.fields.date
                )));
            }
        };
        let amount = match &cells[self.idx.amount] {
            Cell::Decimal(d) => *d,
            _ => {
                return Err(err(format!(
                    "`{}` is empty; IIF needs an amount (filter such rows out with a [[transforms]] filter)",
                    self.config.fields.amount
                )));
            }
        };
        let account = text(Some(self.idx.account));
        if account.is_empty() {
            return Err(err(format!(
                "`{}` is empty; every line needs an account (map it with on_missing = \"fail\" or \"default\")",
                self.config.fields.account
            )));
        }
        let credit_account = match (self.idx.credit_account, &self.config.credit_account) {
            (Some(i), _) => text(Some(i)),
            (None, Some(c)) => clean(c),
            (None, None) => String::new(),
        };
        if credit_account.is_empty() {
            return Err(err("the credit account is empty".to_string()));
        }
        Ok(Line {
            date,
            amount,
            account,
            name: text(Some(self.idx.name)),
            memo: text(self.idx.memo),
            class: text(self.idx.class),
            doc_number: text(self.idx.doc_number),
            credit_account,
        })
    }

    fn write_transaction(&mut self, doc: &str, lines: &[Line]) -> Result<(), SinkError> {
        let total: Decimal = lines.iter().map(|l| l.amount).sum();
        let date = lines
            .iter()
            .map(|l| l.date)
            .max()
            .expect("a transaction has lines");
        let first = &lines[0];
        let kind = match (self.config.transaction, total < Decimal::ZERO) {
            (IifTransaction::Bill, false) => "BILL",
            (IifTransaction::Bill, true) => "BILL REFUND",
            (IifTransaction::CreditCard, false) => "CREDIT CARD",
            (IifTransaction::CreditCard, true) => "CCARD REFUND",
            (IifTransaction::Journal, _) => "GENERAL JOURNAL",
        };
        let date = date.format(&self.config.date_format).to_string();
        let doc = if first.doc_number.is_empty() {
            doc
        } else {
            &first.doc_number
        };
        // The credit side: the payable or card account, the negated total (never "-0.00").
        let credit = -total;
        let credit = if credit.is_zero() {
            credit.abs()
        } else {
            credit
        };
        let mut text = String::new();
        push_line(
            &mut text,
            "TRNS",
            kind,
            &date,
            &first.credit_account,
            &first.name,
            "",
            credit,
            doc,
            &first.memo,
        );
        for l in lines {
            push_line(
                &mut text, "SPL", kind, &date, &l.account, &l.name, &l.class, l.amount, doc,
                &l.memo,
            );
        }
        text.push_str("ENDTRNS\r\n");
        let writer = self.writer.as_mut().ok_or_else(|| {
            SinkError::new(
                &self.label,
                "write after finish or abort (a bug in the caller)",
            )
        })?;
        writer
            .write_all(text.as_bytes())
            .map_err(|e| SinkError::io(&self.label, "cannot write", &e))?;
        self.transactions += 1;
        Ok(())
    }

    fn discard(&mut self) {
        self.writer = None;
        if let Some(s) = self.staged.take() {
            s.discard();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn push_line(
    out: &mut String,
    tag: &str,
    kind: &str,
    date: &str,
    account: &str,
    name: &str,
    class: &str,
    amount: Decimal,
    doc: &str,
    memo: &str,
) {
    use std::fmt::Write as _;
    // TRNSID/SPLID stay empty: QuickBooks assigns them.
    writeln!(
        out,
        "{tag}\t\t{kind}\t{date}\t{account}\t{name}\t{class}\t{amount}\t{doc}\t{memo}\r"
    )
    .expect("writing to a String cannot fail");
}

/// A value safe inside a tab-delimited IIF field.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' | '\r' | '\n' => ' ',
            '"' => '\'',
            c => c,
        })
        .collect()
}

impl Sink for IifSink {
    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        for row in &batch.rows {
            self.rows_seen += 1;
            let line = self.line(&row.cells, self.rows_seen)?;
            match self.idx.group {
                None => self.write_transaction("", std::slice::from_ref(&line))?,
                Some(g) => {
                    let key = clean(&cell_text(&row.cells[g]));
                    self.groups.entry(key).or_default().push(line);
                }
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<SinkOutput, SinkError> {
        let groups = std::mem::take(&mut self.groups);
        for (key, lines) in &groups {
            if let Err(e) = self.write_transaction(key, lines) {
                self.discard();
                return Err(e);
            }
        }
        let Some(writer) = self.writer.take() else {
            return Err(SinkError::new(
                &self.label,
                "finish after abort (a bug in the caller)",
            ));
        };
        let staged = self.staged.take().expect("staged until finish");
        let result = writer
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|out| out.finish(&staged.temp_path));
        match result {
            Ok(w) => Ok(SinkOutput {
                kind: "iif",
                staged,
                rows: self.transactions,
                bytes: w.bytes,
                companions: Vec::new(),
            }),
            Err(e) => {
                staged.discard();
                Err(SinkError::io(&self.label, "cannot make durable", &e))
            }
        }
    }

    fn abort(mut self: Box<Self>) {
        self.discard();
    }
}

impl Drop for IifSink {
    fn drop(&mut self) {
        self.discard();
    }
}
