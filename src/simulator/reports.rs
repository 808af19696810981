//! Reports (`admin_report_out`) as compact rows derived from their expenses.
//!
//! Kept as structs rather than JSON values for the same reason as expenses:
//! 20k reports as `serde_json::Value` trees cost ~260 MB.

use serde_json::{Value, json};

use super::model::{Ctx, Expense, State, flag};
use super::values::Cell;

/// The changing part of one report; index = index into `Ctx::reports`.
#[derive(Clone, Debug)]
pub(crate) struct Report {
    pub(crate) state: State,
    pub(crate) amount: i64,
    pub(crate) tax: Option<i64>,
    pub(crate) num_expenses: usize,
    pub(crate) flags: u16,
    pub(crate) exported: bool,
    pub(crate) submitted_at: Option<i64>,
    pub(crate) approved_at: Option<i64>,
    pub(crate) paid_at: Option<i64>,
    pub(crate) updated_at: i64,
}

macro_rules! report_columns {
    ($($c:ident),* $(,)?) => {
        /// Columns of `admin_report_out`, in the schema's property order.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum RCol { $($c),* }
        pub(crate) const REPORT_COLUMNS: &[(&str, RCol)] = &[$((stringify!($c), RCol::$c)),*];
    };
}

report_columns!(
    id,
    org_id,
    created_at,
    updated_at,
    user_id,
    user,
    purpose,
    currency,
    amount,
    tax,
    state,
    num_expenses,
    is_verified,
    is_physical_bill_submitted,
    physical_bill_submitted_at,
    is_manually_flagged,
    is_policy_flagged,
    is_exported,
    last_paid_at,
    last_approved_at,
    last_submitted_at,
    last_resubmitted_at,
    seq_num,
    source,
    approvals,
    employee_id,
    employee,
    next_approver_user_ids,
    reimbursement_id,
    reimbursement,
    state_display_name,
    comments,
    accounting_export_summary,
    applied_advance_wallets,
    can_apply_advances,
    creator_type,
    auto_approval_state,
);

/// Aggregates a report from its current member expenses: its state is
/// that of its least advanced expense.
pub(crate) fn summarize(members: &[&Expense], updated_at: i64) -> Report {
    let state = members
        .iter()
        .map(|e| e.state)
        .min()
        .unwrap_or(State::Complete)
        .max(State::Complete);
    let max_of = |f: fn(&Expense) -> Option<i64>| members.iter().filter_map(|e| f(e)).max();
    let any = |f: u16| members.iter().any(|e| e.flags & f != 0);
    let mut flags = 0;
    for f in [flag::VERIFIED, flag::MANUALLY_FLAGGED, flag::POLICY_FLAGGED] {
        if any(f) {
            flags |= f;
        }
    }
    Report {
        state,
        amount: members.iter().map(|e| e.amount).sum(),
        tax: members
            .iter()
            .any(|e| e.tax.is_some())
            .then(|| members.iter().filter_map(|e| e.tax).sum()),
        num_expenses: members.len(),
        flags,
        exported: members.iter().any(|e| e.exported_at.is_some()),
        submitted_at: (state >= State::ApproverPending)
            .then(|| max_of(|e| e.submitted_at))
            .flatten(),
        approved_at: state
            .is_approved()
            .then(|| max_of(|e| e.approved_at))
            .flatten(),
        paid_at: (state == State::Paid)
            .then(|| max_of(|e| e.paid_at))
            .flatten(),
        updated_at,
    }
}

/// When a report last changed, as generated: its latest workflow event.
pub(crate) fn generated_updated_at(created_at: i64, members: &[&Expense]) -> i64 {
    members
        .iter()
        .flat_map(|e| {
            [
                e.added_to_report_at,
                e.submitted_at,
                e.approved_at,
                e.settled_at,
                e.paid_at,
            ]
        })
        .flatten()
        .max()
        .unwrap_or(created_at)
        .max(created_at)
}

fn opt_ts<'a>(t: Option<i64>) -> Cell<'a> {
    t.map_or(Cell::Null, Cell::Ts)
}

impl Ctx {
    /// The value of one column of one report (shared by rendering and filters).
    pub(crate) fn report_cell<'a>(&'a self, idx: usize, r: &'a Report, col: RCol) -> Cell<'a> {
        let info = &self.reports[idx];
        let emp = || &self.employees[info.emp as usize];
        let reimbursed = r.state.is_settled();
        match col {
            RCol::id => Cell::Str(&info.id),
            RCol::org_id => Cell::Str(&self.org_id),
            RCol::created_at => Cell::Ts(info.created_at),
            RCol::updated_at => Cell::Ts(r.updated_at),
            RCol::user_id => Cell::Str(&emp().user_id),
            RCol::user => Cell::Val(&emp().user_embed),
            RCol::purpose => info.title.map_or(Cell::Null, Cell::Str),
            RCol::currency => Cell::Str(self.currency),
            RCol::amount => self.money(r.amount),
            RCol::tax => r.tax.map_or(Cell::Null, |t| self.money(t)),
            RCol::state => Cell::Str(r.state.report_state()),
            RCol::num_expenses => Cell::Int(r.num_expenses as i64),
            RCol::is_verified => Cell::Bool(r.flags & flag::VERIFIED != 0),
            RCol::is_physical_bill_submitted => Cell::Bool(false),
            RCol::physical_bill_submitted_at | RCol::last_resubmitted_at => Cell::Null,
            RCol::is_manually_flagged => Cell::Bool(r.flags & flag::MANUALLY_FLAGGED != 0),
            RCol::is_policy_flagged => Cell::Bool(r.flags & flag::POLICY_FLAGGED != 0),
            RCol::is_exported => Cell::Bool(r.exported),
            RCol::last_paid_at => opt_ts(r.paid_at),
            RCol::last_approved_at => opt_ts(r.approved_at),
            RCol::last_submitted_at => opt_ts(r.submitted_at),
            RCol::seq_num => Cell::Str(&info.seq_num),
            RCol::source => Cell::Str("WEBAPP"),
            RCol::approvals => Cell::Owned(self.approvals_for(info.emp, r.state)),
            RCol::employee_id => Cell::Str(&emp().id),
            RCol::employee => Cell::Val(&emp().report_embed),
            RCol::next_approver_user_ids => Cell::Owned(if r.state == State::ApproverPending {
                json!([self.employees[emp().manager].user_id])
            } else {
                json!([])
            }),
            RCol::reimbursement_id => {
                if reimbursed {
                    Cell::Str(&info.reimbursement_id)
                } else {
                    Cell::Null
                }
            }
            RCol::reimbursement => {
                if reimbursed {
                    Cell::Owned(json!({
                        "id": info.reimbursement_id,
                        "currency": self.currency,
                        "amount": self.money_json(r.amount),
                        "mode": "OFFLINE",
                        "ach_transfer": {},
                    }))
                } else {
                    Cell::Null
                }
            }
            RCol::state_display_name => Cell::Str(r.state.report_display_name()),
            RCol::comments | RCol::applied_advance_wallets => Cell::Owned(Value::Array(Vec::new())),
            RCol::accounting_export_summary => Cell::Owned(Value::Object(Default::default())),
            RCol::can_apply_advances => Cell::Bool(false),
            RCol::creator_type => Cell::Str("USER"),
            RCol::auto_approval_state => {
                if r.state >= State::ApproverPending {
                    Cell::Str("NOT_ELIGIBLE")
                } else {
                    Cell::Null
                }
            }
        }
    }

    /// Renders one report as `admin_report_out` JSON text.
    pub(crate) fn write_report(&self, idx: usize, r: &Report, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (name, col)) in REPORT_COLUMNS.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            self.report_cell(idx, r, *col).write_json(out);
        }
        out.push(b'}');
    }
}
