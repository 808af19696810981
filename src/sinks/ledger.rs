//! Accounting entries from rows, shared by the IIF sink and the CSV `journal`
//! and `bill` layouts: which output columns hold the date, amount, accounts
//! and names (`fields`), one [`Line`] per row, and grouping of lines into
//! entries by a column (per report, employee, card, day) with exact totals.
//!
//! Grouped entries are held until the end of the run and emitted in
//! group-key order, so files are deterministic; without grouping each row is
//! its own entry and streams straight through.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Deserialize;

use super::cell_text;
use crate::common::Problem;
use crate::row::{Cell, ColumnType, Schema};

/// Output column names for each accounting field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerFields {
    /// Date or timestamp column (an entry takes its latest date).
    pub date: String,
    /// Decimal column: the expense amount (positive = spent, negative = refund).
    pub amount: String,
    /// Expense account of each line, e.g. a mapped `gl_account`.
    pub account: String,
    /// Vendor / payee, e.g. a mapped employee vendor, or the merchant for cards.
    pub name: String,
    /// Memo per line.
    #[serde(default)]
    pub memo: Option<String>,
    /// Class (or department) per line, e.g. a mapped project.
    #[serde(default)]
    pub class: Option<String>,
    /// Document number; default: the group key, or none without grouping.
    #[serde(default)]
    pub doc_number: Option<String>,
    /// Column holding the credit account, instead of the constant `credit_account`.
    #[serde(default)]
    pub credit_account: Option<String>,
}

impl LedgerFields {
    /// Problems with the column names these fields (and `group_by`) refer to.
    pub fn validate_columns(
        &self,
        key_prefix: &str,
        group_by: Option<&str>,
        columns: &[&str],
    ) -> Vec<Problem> {
        let refs = [
            ("fields.date", Some(self.date.as_str())),
            ("fields.amount", Some(self.amount.as_str())),
            ("fields.account", Some(self.account.as_str())),
            ("fields.name", Some(self.name.as_str())),
            ("fields.memo", self.memo.as_deref()),
            ("fields.class", self.class.as_deref()),
            ("fields.doc_number", self.doc_number.as_deref()),
            ("fields.credit_account", self.credit_account.as_deref()),
            ("group_by", group_by),
        ];
        refs.into_iter()
            .filter_map(|(k, c)| c.map(|c| (k, c)))
            .filter(|(_, c)| !columns.contains(c))
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

/// Exactly one of the constant `credit_account` and `fields.credit_account` must be set.
pub fn validate_credit_account(
    key_prefix: &str,
    constant: Option<&String>,
    fields: &LedgerFields,
) -> Vec<Problem> {
    match (constant, &fields.credit_account) {
        (None, None) => vec![Problem::new(
            format!("{key_prefix}.credit_account"),
            "is required: the payable account (bills, journals) or card account (card charges), \
             e.g. credit_account = \"Accounts Payable\", or a column in fields.credit_account",
        )],
        (Some(_), Some(_)) => vec![Problem::new(
            format!("{key_prefix}.credit_account"),
            "set either `credit_account` or `fields.credit_account`, not both",
        )],
        _ => Vec::new(),
    }
}

/// One expense line of an entry.
#[derive(Debug, Clone)]
pub struct Line {
    /// Date of the expense.
    pub date: NaiveDate,
    /// Amount, exact (positive = debit the expense account).
    pub amount: Decimal,
    /// Expense account.
    pub account: String,
    /// Vendor / payee.
    pub name: String,
    /// Memo (may be empty).
    pub memo: String,
    /// Class (may be empty).
    pub class: String,
    /// Document number from the row (may be empty).
    pub doc_number: String,
    /// The account credited (payable or card).
    pub credit_account: String,
}

/// Resolved column positions and the rules for turning rows into lines.
#[derive(Debug, Clone)]
pub struct Ledger {
    fields: LedgerFields,
    credit_constant: Option<String>,
    date: usize,
    amount: usize,
    account: usize,
    name: usize,
    memo: Option<usize>,
    class: Option<usize>,
    doc_number: Option<usize>,
    credit_account: Option<usize>,
    group: Option<usize>,
    /// The amount column's precision and scale.
    pub amount_type: ColumnType,
    groups: BTreeMap<String, Vec<Line>>,
    rows_seen: u64,
}

/// Entries come out with their document number, which defaults to the group key.
pub type Entry = (String, Vec<Line>);

impl Ledger {
    /// Resolves `fields` against `schema`; `clean` makes text safe for the target format.
    pub fn new(
        fields: &LedgerFields,
        group_by: Option<&str>,
        credit_constant: Option<&String>,
        schema: &Schema,
    ) -> Result<Self, String> {
        let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
        if let Some(p) = fields.validate_columns("", group_by, &names).first() {
            return Err(format!("{}: {}", p.key.trim_start_matches('.'), p.message));
        }
        let pos = |c: &str| names.iter().position(|n| *n == c).expect("checked above");
        let amount = pos(&fields.amount);
        let date = pos(&fields.date);
        let amount_type = schema.columns[amount].ty;
        if !matches!(amount_type, ColumnType::Decimal { .. }) {
            return Err(format!(
                "fields.amount: column `{}` must be type = \"decimal\"",
                fields.amount
            ));
        }
        if !matches!(
            schema.columns[date].ty,
            ColumnType::Date | ColumnType::Timestamp
        ) {
            return Err(format!(
                "fields.date: column `{}` must be type = \"date\" or \"timestamp\"",
                fields.date
            ));
        }
        Ok(Self {
            fields: fields.clone(),
            credit_constant: credit_constant.cloned(),
            date,
            amount,
            account: pos(&fields.account),
            name: pos(&fields.name),
            memo: fields.memo.as_deref().map(pos),
            class: fields.class.as_deref().map(pos),
            doc_number: fields.doc_number.as_deref().map(pos),
            credit_account: fields.credit_account.as_deref().map(pos),
            group: group_by.map(pos),
            amount_type,
            groups: BTreeMap::new(),
            rows_seen: 0,
        })
    }

    /// Takes one row: returns it as a finished entry when not grouping, else holds it in its group.
    pub fn push(
        &mut self,
        cells: &[Cell],
        clean: fn(&str) -> String,
    ) -> Result<Option<Entry>, String> {
        self.rows_seen += 1;
        let line = self
            .line(cells, clean)
            .map_err(|m| format!("row {}: {m}", self.rows_seen))?;
        match self.group {
            None => Ok(Some((line.doc_number.clone(), vec![line]))),
            Some(g) => {
                let key = clean(&cell_text(&cells[g]));
                self.groups.entry(key).or_default().push(line);
                Ok(None)
            }
        }
    }

    /// The held groups in key order, each with its document number.
    pub fn drain(&mut self) -> Vec<Entry> {
        std::mem::take(&mut self.groups)
            .into_iter()
            .map(|(key, lines)| {
                let doc = if lines[0].doc_number.is_empty() {
                    key
                } else {
                    lines[0].doc_number.clone()
                };
                (doc, lines)
            })
            .collect()
    }

    fn line(&self, cells: &[Cell], clean: fn(&str) -> String) -> Result<Line, String> {
        let text = |i: Option<usize>| i.map_or(String::new(), |i| clean(&cell_text(&cells[i])));
        let date = match &cells[self.date] {
            Cell::Date(d) => *d,
            Cell::Timestamp(t) => t.date_naive(),
            _ => {
                return Err(format!(
                    "`{}` is empty; an entry needs a date",
                    self.fields.date
                ));
            }
        };
        let amount = match &cells[self.amount] {
            Cell::Decimal(d) => *d,
            _ => {
                return Err(format!(
                    "`{}` is empty; an entry needs an amount (filter such rows out with a [[transforms]] filter)",
                    self.fields.amount
                ));
            }
        };
        let account = text(Some(self.account));
        if account.is_empty() {
            return Err(format!(
                "`{}` is empty; every line needs an account (map it with on_missing = \"fail\" or \"default\")",
                self.fields.account
            ));
        }
        let credit_account = match (self.credit_account, &self.credit_constant) {
            (Some(i), _) => text(Some(i)),
            (None, Some(c)) => clean(c),
            (None, None) => String::new(),
        };
        if credit_account.is_empty() {
            return Err("the credit account is empty".to_string());
        }
        Ok(Line {
            date,
            amount,
            account,
            name: text(Some(self.name)),
            memo: text(self.memo),
            class: text(self.class),
            doc_number: text(self.doc_number),
            credit_account,
        })
    }
}

/// Checks that an entry's lines agree on what is entry-level: the credit
/// account always, and the vendor too for bills (one bill has one vendor).
pub fn check_entry(doc: &str, lines: &[Line], one_vendor: bool) -> Result<(), String> {
    let first = &lines[0];
    if let Some(other) = lines
        .iter()
        .find(|l| l.credit_account != first.credit_account)
    {
        return Err(format!(
            "entry {doc:?} mixes credit accounts {:?} and {:?}; group_by must keep one credit account per entry",
            first.credit_account, other.credit_account
        ));
    }
    if one_vendor && let Some(other) = lines.iter().find(|l| l.name != first.name) {
        return Err(format!(
            "bill {doc:?} mixes vendors {:?} and {:?}; a bill has one vendor, so group bills per report or employee",
            first.name, other.name
        ));
    }
    Ok(())
}

/// The total of an entry's lines, exact.
pub fn total(lines: &[Line]) -> Decimal {
    lines.iter().map(|l| l.amount).sum()
}

/// `-total` without a negative zero (`-0.00` would look like a credit).
pub fn negated(total: Decimal) -> Decimal {
    let n = -total;
    if n.is_zero() { n.abs() } else { n }
}
