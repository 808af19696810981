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

use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::Deserialize;

use super::ledger::{Ledger, LedgerFields, Line, check_entry, negated, total};
use super::output::{FileCompression, Manifest, Output, file_name, stage_manifest};
use super::{Sink, SinkContext, SinkError, SinkOutput, label};
use crate::common::Problem;
use crate::fsutil::StagedFile;
use crate::row::{Batch, Schema};

/// Default IIF date format (QuickBooks US).
pub const DEFAULT_DATE_FORMAT: &str = "%m/%d/%Y";

/// `[[sinks]] type = "iif"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IifSinkConfig {
    /// Replace the file at `path` on every run (a fixed "latest" name); off by
    /// default, when an existing file is never replaced.
    #[serde(default)]
    pub overwrite: bool,
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
    pub fields: LedgerFields,
    /// Also write `{file}.manifest.json` (transactions, total of the expense lines, sha256), committed with the file.
    #[serde(default)]
    pub manifest: bool,
    /// Write nothing (no file, no manifest) when the run gives this sink no rows; the state still advances.
    #[serde(default)]
    pub skip_empty: bool,
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

impl IifSinkConfig {
    pub(super) fn validate(&self, key_prefix: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Err(e) = crate::transforms::steps::check_date_format(&self.date_format) {
            problems.push(Problem::new(format!("{key_prefix}.date_format"), e));
        }
        problems.extend(super::ledger::validate_credit_account(
            key_prefix,
            self.credit_account.as_ref(),
            &self.fields,
        ));
        problems
    }

    /// Problems with the column names this sink refers to.
    pub(super) fn validate_columns(&self, key_prefix: &str, columns: &[&str]) -> Vec<Problem> {
        self.fields
            .validate_columns(key_prefix, self.group_by.as_deref(), columns)
    }
}

/// Writes rows as QuickBooks IIF transactions to a staged temporary file.
#[derive(Debug)]
pub struct IifSink {
    label: String,
    config: IifSinkConfig,
    ledger: Ledger,
    writer: Option<BufWriter<Output>>,
    staged: Option<StagedFile>,
    transactions: u64,
    ctx: SinkContext,
    /// Sum of every expense line written (the SPL side), for the manifest.
    lines_total: Decimal,
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
        if let Some(p) = config.validate("iif").first() {
            return Err(SinkError::new(&label, format!("{}: {}", p.key, p.message)));
        }
        let ledger = Ledger::new(
            &config.fields,
            config.group_by.as_deref(),
            config.credit_account.as_ref(),
            &schema,
        )
        .map_err(|m| SinkError::new(&label, m))?;
        let (staged, out) =
            Output::create("iif", path, ctx, FileCompression::None, config.manifest)?;
        let mut writer = BufWriter::new(out);
        if let Err(e) = writer.write_all(TRNS_HEADER.as_bytes()) {
            staged.discard();
            return Err(SinkError::io(&label, "cannot write", &e));
        }
        Ok(Self {
            label,
            config: config.clone(),
            ledger,
            writer: Some(writer),
            staged: Some(staged),
            transactions: 0,
            ctx: ctx.clone(),
            lines_total: Decimal::ZERO,
        })
    }

    fn write_transaction(&mut self, doc: &str, lines: &[Line]) -> Result<(), SinkError> {
        check_entry(doc, lines, self.config.transaction == IifTransaction::Bill)
            .map_err(|m| SinkError::new(&self.label, m))?;
        let total = total(lines);
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
        let mut text = String::new();
        // The credit side: the payable or card account, the negated total.
        push_line(
            &mut text,
            "TRNS",
            kind,
            &date,
            &first.credit_account,
            &first.name,
            "",
            negated(total),
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
        self.lines_total += total;
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
            let entry = self
                .ledger
                .push(&row.cells, clean)
                .map_err(|m| SinkError::new(&self.label, m))?;
            if let Some((doc, lines)) = entry {
                self.write_transaction(&doc, &lines)?;
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<SinkOutput, SinkError> {
        for (doc, lines) in self.ledger.drain() {
            if let Err(e) = self.write_transaction(&doc, &lines) {
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
        let written = match result {
            Ok(w) => w,
            Err(e) => {
                staged.discard();
                return Err(SinkError::io(&self.label, "cannot make durable", &e));
            }
        };
        let mut companions = Vec::new();
        if self.config.manifest {
            let totals = [(
                "(none)".to_string(),
                [(self.config.fields.amount.clone(), self.lines_total)].into(),
            )]
            .into();
            let manifest = Manifest {
                file: file_name(&staged.final_path),
                format: "iif",
                compression: "none",
                rows: self.transactions,
                bytes: written.bytes,
                sha256: written
                    .sha256
                    .expect("the file is hashed when a manifest is asked for"),
                totals,
                pipeline: self.ctx.pipeline.clone(),
                run_id: self.ctx.run_id.clone(),
                window_start: self.ctx.window_start,
                window_end: self.ctx.window_end,
            };
            match stage_manifest("iif", &staged, &manifest, &self.ctx) {
                Ok(c) => companions.push(c),
                Err(e) => {
                    staged.discard();
                    return Err(e);
                }
            }
        }
        Ok(SinkOutput {
            kind: "iif",
            staged: Some(staged),
            delivery: None,
            rows: self.transactions,
            bytes: written.bytes,
            companions,
        })
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
