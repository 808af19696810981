//! The simulated organisation: compact expense rows plus the shared entities
//! they embed.
//!
//! Expenses are stored as small structs and rendered to `expense_out` JSON
//! on demand: 100k fully materialised JSON trees would cost gigabytes, and a
//! typed cell per column keeps filters over 100k rows allocation-free.

use rust_decimal::Decimal;
use serde_json::{Map, Value, json};

use super::values::{Cell, fmt_ts, money_value, noisy_money_value};

/// Expense states in workflow order (the order `mutate` advances them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum State {
    Draft,
    Unreportable,
    Complete,
    ApproverPending,
    Approved,
    PaymentPending,
    PaymentProcessing,
    Paid,
}

impl State {
    pub(crate) fn name(self) -> &'static str {
        match self {
            State::Draft => "DRAFT",
            State::Unreportable => "UNREPORTABLE",
            State::Complete => "COMPLETE",
            State::ApproverPending => "APPROVER_PENDING",
            State::Approved => "APPROVED",
            State::PaymentPending => "PAYMENT_PENDING",
            State::PaymentProcessing => "PAYMENT_PROCESSING",
            State::Paid => "PAID",
        }
    }

    pub(crate) fn display_name(self) -> &'static str {
        match self {
            State::Draft => "Incomplete",
            State::Unreportable => "Unreportable",
            State::Complete => "Complete",
            State::ApproverPending => "Reported",
            State::Approved => "Approved",
            State::PaymentPending => "Payment Pending",
            State::PaymentProcessing => "Processing",
            State::Paid => "Closed",
        }
    }

    /// State of the report an expense in this state sits in.
    pub(crate) fn report_state(self) -> &'static str {
        match self {
            State::Draft | State::Unreportable | State::Complete => "DRAFT",
            State::ApproverPending => "APPROVER_PENDING",
            State::Approved => "APPROVED",
            State::PaymentPending => "PAYMENT_PENDING",
            State::PaymentProcessing => "PAYMENT_PROCESSING",
            State::Paid => "PAID",
        }
    }

    pub(crate) fn report_display_name(self) -> &'static str {
        match self {
            State::Draft | State::Unreportable | State::Complete => "Draft",
            State::ApproverPending => "Reported",
            State::Approved => "Approved",
            State::PaymentPending => "Payment Pending",
            State::PaymentProcessing => "Processing",
            State::Paid => "Closed",
        }
    }

    pub(crate) fn is_approved(self) -> bool {
        self >= State::Approved
    }

    pub(crate) fn is_settled(self) -> bool {
        self >= State::PaymentProcessing
    }
}

/// Which of the employee's accounts paid for the expense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Account {
    Cash = 0,
    Card = 1,
    Advance = 2,
}

impl Account {
    pub(crate) fn type_name(self) -> &'static str {
        match self {
            Account::Cash => "PERSONAL_CASH_ACCOUNT",
            Account::Card => "PERSONAL_CORPORATE_CREDIT_CARD_ACCOUNT",
            Account::Advance => "PERSONAL_ADVANCE_ACCOUNT",
        }
    }
}

/// What kind of spend a category is, so travel fields can be filled sensibly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CatKind {
    Plain,
    Flight,
    Taxi,
    Train,
    Hotel,
    Mileage,
}

pub(crate) struct Employee {
    pub(crate) id: String,
    pub(crate) user_id: String,
    pub(crate) email: String,
    pub(crate) full_name: String,
    pub(crate) manager: usize,
    pub(crate) account_ids: [String; 3],
    pub(crate) card_id: String,
    pub(crate) card_number: String,
    pub(crate) user_embed: Value,
    pub(crate) embed: Value,
    pub(crate) report_embed: Value,
    pub(crate) account_embeds: [Value; 3],
}

pub(crate) struct Category {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) kind: CatKind,
    pub(crate) embed: Value,
}

pub(crate) struct Embedded {
    pub(crate) id: i64,
    pub(crate) embed: Value,
}

/// The parts of a report that never change after generation.
pub(crate) struct ReportInfo {
    pub(crate) id: String,
    pub(crate) seq_num: String,
    pub(crate) title: Option<&'static str>,
    pub(crate) emp: u32,
    pub(crate) created_at: i64,
    pub(crate) reimbursement_id: String,
    pub(crate) reimbursement_seq_num: String,
}

pub(crate) struct Currency {
    pub(crate) code: &'static str,
    /// Home-currency value of one unit, exact.
    pub(crate) rate: Decimal,
    pub(crate) decimals: u32,
}

/// Shared organisation data that expense rows point into.
pub(crate) struct Ctx {
    pub(crate) org_id: String,
    pub(crate) org_name: &'static str,
    pub(crate) currency: &'static str,
    /// Digits after the point of `currency` (ISO 4217 minor units); amounts are stored in those units.
    pub(crate) minor_digits: u32,
    /// Share of expense amounts printed with binary-float noise (0 = none).
    pub(crate) float_noise: f64,
    /// Share of personal-cash expenses the employee marked not reimbursable (0 = none).
    pub(crate) non_reimbursable_cash: f64,
    pub(crate) employees: Vec<Employee>,
    pub(crate) categories: Vec<Category>,
    pub(crate) projects: Vec<Embedded>,
    pub(crate) cost_centers: Vec<Embedded>,
    pub(crate) reports: Vec<ReportInfo>,
    pub(crate) currencies: Vec<Currency>,
    pub(crate) tax_group_id: String,
    pub(crate) tpa_id: String,
}

/// Values of the org's expense custom fields for one expense.
#[derive(Clone, Debug, Default)]
pub(crate) struct Custom {
    pub(crate) client_code: Option<&'static str>,
    pub(crate) cost_code: Option<&'static str>,
    pub(crate) attendees: Option<i64>,
    pub(crate) travel_types: u8,
    pub(crate) invoice_date: Option<i64>,
    pub(crate) billable_to_client: Option<bool>,
}

/// (id, name, type, flattened key) of the org's expense custom fields.
pub(crate) const CUSTOM_FIELDS: [(i64, &str, &str, &str); 6] = [
    (211_001, "Client Code", "TEXT", "client_code"),
    (211_002, "Cost Code", "SELECT", "cost_code"),
    (211_003, "Attendees", "NUMBER", "attendees"),
    (211_004, "Travel Type", "MULTI_SELECT", "travel_type"),
    (211_005, "Invoice Date", "DATE", "invoice_date"),
    (
        211_006,
        "Billable To Client",
        "BOOLEAN",
        "billable_to_client",
    ),
];

pub(crate) const TRAVEL_TYPES: [&str; 4] =
    ["Domestic", "International", "Client Visit", "Training"];

pub(crate) mod flag {
    pub(crate) const BILLABLE: u16 = 1;
    pub(crate) const RECEIPT: u16 = 1 << 1;
    pub(crate) const MANUALLY_FLAGGED: u16 = 1 << 2;
    pub(crate) const POLICY_FLAGGED: u16 = 1 << 3;
    pub(crate) const VERIFIED: u16 = 1 << 4;
    pub(crate) const EXPORTED: u16 = 1 << 5;
    pub(crate) const RECONCILED: u16 = 1 << 6;
    pub(crate) const RECEIPT_MANDATORY: u16 = 1 << 7;
    pub(crate) const EXTRACTED: u16 = 1 << 8;
    pub(crate) const DUPLICATE: u16 = 1 << 9;
    pub(crate) const AUTO_MATCHED: u16 = 1 << 10;
    pub(crate) const ROUND_TRIP: u16 = 1 << 11;
    pub(crate) const BREAKFAST: u16 = 1 << 12;
    pub(crate) const PDF: u16 = 1 << 13;
}

/// One expense, compact; everything else in `expense_out` is derived.
#[derive(Clone, Debug)]
pub(crate) struct Expense {
    pub(crate) id: String,
    pub(crate) seq_num: String,
    pub(crate) emp: u32,
    pub(crate) category: Option<u16>,
    pub(crate) project: Option<u16>,
    pub(crate) cost_center: Option<u16>,
    pub(crate) report: Option<u32>,
    pub(crate) account: Account,
    pub(crate) state: State,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) spent_at: i64,
    pub(crate) added_to_report_at: Option<i64>,
    pub(crate) submitted_at: Option<i64>,
    pub(crate) approved_at: Option<i64>,
    pub(crate) settled_at: Option<i64>,
    pub(crate) paid_at: Option<i64>,
    pub(crate) exported_at: Option<i64>,
    pub(crate) merchant: Option<&'static str>,
    pub(crate) purpose: Option<&'static str>,
    /// Home-currency cents.
    pub(crate) amount: i64,
    /// (index into `Ctx::currencies`, amount in that currency)
    pub(crate) foreign: Option<(u8, Decimal)>,
    pub(crate) tax: Option<i64>,
    /// Tenths of a mile, for mileage expenses.
    pub(crate) distance_tenths: Option<i64>,
    pub(crate) nights: u8,
    /// Snapshot of the parent report's total when this expense last changed.
    pub(crate) report_amount: i64,
    pub(crate) split_group_id: String,
    pub(crate) split_group_amount: i64,
    pub(crate) is_split: bool,
    pub(crate) custom: Option<Custom>,
    pub(crate) flags: u16,
    pub(crate) source: &'static str,
    pub(crate) approver_comment: Option<&'static str>,
    pub(crate) invoice_number: Option<u32>,
    pub(crate) cities: (u8, u8),
    /// Set by the write-back endpoint; overrides the generated summary.
    pub(crate) export_summary: Option<Box<ExportSummary>>,
}

/// What an integration reported back through `accounting_export_summary/bulk`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ExportSummary {
    pub(crate) state: &'static str,
    pub(crate) error_type: Option<&'static str>,
    pub(crate) url: String,
}

/// Allowed `accounting_export_summary_in.state` values.
pub(crate) const EXPORT_STATES: [&str; 5] =
    ["COMPLETE", "ERROR", "IN_PROGRESS", "SKIPPED", "INITIATED"];
/// Allowed `accounting_export_summary_in.error_type` values (besides null).
pub(crate) const EXPORT_ERROR_TYPES: [&str; 2] = ["ACCOUNTING_INTEGRATION_ERROR", "MAPPING"];

impl Expense {
    fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }
}

macro_rules! columns {
    ($($c:ident),* $(,)?) => {
        /// Columns of `expense_out`, in the schema's property order.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum Col { $($c),* }
        pub(crate) const EXPENSE_COLUMNS: &[(&str, Col)] = &[$((stringify!($c), Col::$c)),*];
    };
}

columns!(
    id,
    user_id,
    user,
    org_id,
    created_at,
    updated_at,
    spent_at,
    source,
    merchant,
    currency,
    amount,
    claim_amount,
    policy_amount,
    admin_amount,
    foreign_currency,
    foreign_amount,
    purpose,
    cost_center_id,
    cost_center,
    category_id,
    category,
    project_id,
    project,
    source_account_id,
    advance_wallet_id,
    source_account,
    tax_amount,
    tax_group_id,
    calculated_tax_amount,
    is_billable,
    is_reimbursable,
    distance,
    distance_unit,
    mileage_calculated_distance,
    mileage_calculated_amount,
    selected_vehicle_ownership,
    selected_vehicle_category,
    passenger_count,
    passenger_mileage_rate,
    passenger_amount,
    mileage_rate_id,
    mileage_rate,
    mileage_is_round_trip,
    per_diem_rate_id,
    per_diem_rate,
    per_diem_num_days,
    started_at,
    ended_at,
    travel_classes,
    hotel_is_breakfast_provided,
    locations,
    custom_fields,
    custom_fields_flattened,
    code,
    state,
    state_display_name,
    seq_num,
    report_id,
    added_to_report_at,
    added_to_report_by,
    report,
    is_verified,
    last_verified_at,
    is_receipt_mandatory,
    is_exported,
    last_exported_at,
    file_ids,
    files,
    expense_policy_comments,
    approvals,
    verifications,
    employee_id,
    employee,
    is_corporate_card_transaction_auto_matched,
    matched_corporate_card_transaction_ids,
    matched_corporate_card_transactions,
    matched_corporate_card_transaction_id,
    matched_corporate_card_transaction,
    last_settled_at,
    missing_mandatory_fields,
    creator_user_id,
    activity_details,
    extracted_data,
    is_manually_flagged,
    is_policy_flagged,
    split_group_id,
    split_group_amount,
    is_physical_bill_submitted,
    physical_bill_submitted_at,
    expense_rule_id,
    expense_rule_data,
    is_split,
    tax_group,
    approver_comments,
    verifier_comments,
    policy_checks,
    accounting_export_summary,
    report_last_paid_at,
    report_last_approved_at,
    invoice_number,
    commute_deduction,
    commute_details_id,
    commute_details,
    is_duplicate_present,
    is_reconciled,
    report_auto_approval_state,
);

pub(crate) const CITIES: [(&str, &str, &str, f64, f64); 8] = [
    (
        "San Francisco",
        "California",
        "United States",
        37.7749,
        -122.4194,
    ),
    ("New York", "New York", "United States", 40.7128, -74.0060),
    ("London", "England", "United Kingdom", 51.5072, -0.1276),
    ("Bengaluru", "Karnataka", "India", 12.9716, 77.5946),
    ("São Paulo", "São Paulo", "Brazil", -23.5558, -46.6396),
    ("Tōkyō", "Tokyo", "Japan", 35.6762, 139.6503),
    ("Zürich", "Zürich", "Switzerland", 47.3769, 8.5417),
    ("Chicago", "Illinois", "United States", 41.8781, -87.6298),
];

fn location(i: u8) -> Value {
    let (city, state, country, lat, lon) = CITIES[i as usize % CITIES.len()];
    json!({
        "city": city,
        "state": state,
        "country": country,
        "display_name": format!("{city}, {state}, {country}"),
        "formatted_address": format!("{city}, {state}, {country}"),
        "latitude": serde_json::Number::from_f64(lat),
        "longitude": serde_json::Number::from_f64(lon),
    })
}

const MILEAGE_RATE_CENTS: i64 = 67;

fn opt_ts<'a>(t: Option<i64>) -> Cell<'a> {
    t.map_or(Cell::Null, Cell::Ts)
}

fn opt_str<'a>(s: Option<&'a str>) -> Cell<'a> {
    s.map_or(Cell::Null, Cell::Str)
}

impl Ctx {
    /// An amount held in minor units of the org currency, as the server prints it.
    pub(crate) fn money<'a>(&self, minor: i64) -> Cell<'a> {
        if self.minor_digits == 2 {
            Cell::Money(minor)
        } else {
            Cell::Dec(Decimal::new(minor, self.minor_digits))
        }
    }

    /// [`Ctx::money`] as a JSON value.
    pub(crate) fn money_json(&self, minor: i64) -> Value {
        if self.minor_digits == 2 {
            money_value(minor)
        } else {
            self.money(minor).to_value()
        }
    }

    /// An expense amount; with `float_noise`, a stable share of them carry the
    /// one-ulp error an upstream `float` computation leaves (`0.30000000000000004`).
    fn expense_money<'a>(&self, e: &Expense, field: u64, minor: i64) -> Cell<'a> {
        if self.float_noise > 0.0
            && minor != 0
            && noise_draw(&e.id, field, minor) < self.float_noise
        {
            return Cell::Owned(noisy_money_value(Decimal::new(minor, self.minor_digits)));
        }
        self.money(minor)
    }

    /// The value of one column of one expense; rendering and filtering both
    /// go through here so they can never disagree.
    pub(crate) fn expense_cell<'a>(&'a self, e: &'a Expense, col: Col) -> Cell<'a> {
        // Looked up lazily: the common filter columns need neither, and each
        // is a cache miss when scanning 100k rows.
        let emp = || &self.employees[e.emp as usize];
        let cat = || e.category.map(|c| &self.categories[c as usize]);
        let kind = || cat().map_or(CatKind::Plain, |c| c.kind);
        let card = e.account == Account::Card;
        match col {
            Col::id => Cell::Str(&e.id),
            Col::user_id | Col::creator_user_id => Cell::Str(&emp().user_id),
            Col::user => Cell::Val(&emp().user_embed),
            Col::org_id => Cell::Str(&self.org_id),
            Col::created_at => Cell::Ts(e.created_at),
            Col::updated_at => Cell::Ts(e.updated_at),
            Col::spent_at => Cell::Ts(e.spent_at),
            Col::source => Cell::Str(e.source),
            Col::merchant => opt_str(e.merchant),
            Col::currency => Cell::Str(self.currency),
            Col::amount | Col::claim_amount => self.expense_money(e, 1, e.amount),
            Col::policy_amount | Col::admin_amount => Cell::Null,
            Col::foreign_currency => e.foreign.map_or(Cell::Null, |(c, _)| {
                Cell::Str(self.currencies[c as usize].code)
            }),
            Col::foreign_amount => e.foreign.map_or(Cell::Null, |(_, a)| Cell::Dec(a)),
            Col::purpose => opt_str(e.purpose),
            Col::cost_center_id => e
                .cost_center
                .map_or(Cell::Null, |c| Cell::Int(self.cost_centers[c as usize].id)),
            Col::cost_center => e.cost_center.map_or(Cell::Null, |c| {
                Cell::Val(&self.cost_centers[c as usize].embed)
            }),
            Col::category_id => cat().map_or(Cell::Null, |c| Cell::Int(c.id)),
            Col::category => cat().map_or(Cell::Null, |c| Cell::Val(&c.embed)),
            Col::project_id => e
                .project
                .map_or(Cell::Null, |p| Cell::Int(self.projects[p as usize].id)),
            Col::project => e
                .project
                .map_or(Cell::Null, |p| Cell::Val(&self.projects[p as usize].embed)),
            Col::source_account_id => Cell::Str(&emp().account_ids[e.account as usize]),
            Col::advance_wallet_id => Cell::Null,
            Col::source_account => Cell::Val(&emp().account_embeds[e.account as usize]),
            Col::tax_amount | Col::calculated_tax_amount => {
                e.tax.map_or(Cell::Null, |t| self.expense_money(e, 2, t))
            }
            Col::tax_group_id => e.tax.map_or(Cell::Null, |_| Cell::Str(&self.tax_group_id)),
            Col::tax_group => e.tax.map_or(Cell::Null, |_| {
                Cell::Owned(json!({"name": "GST 5%", "percentage": 5}))
            }),
            Col::is_billable => Cell::Bool(e.has(flag::BILLABLE)),
            Col::is_reimbursable => Cell::Bool(
                e.account == Account::Cash
                    && !(self.non_reimbursable_cash > 0.0
                        && noise_draw(&e.id, 3, 0) < self.non_reimbursable_cash),
            ),
            Col::distance | Col::mileage_calculated_distance => e
                .distance_tenths
                .map_or(Cell::Null, |d| Cell::Dec(Decimal::new(d, 1))),
            Col::distance_unit => e.distance_tenths.map_or(Cell::Null, |_| Cell::Str("MILES")),
            Col::mileage_calculated_amount => e
                .distance_tenths
                .map_or(Cell::Null, |_| self.money(e.amount)),
            Col::selected_vehicle_ownership => e
                .distance_tenths
                .map_or(Cell::Null, |_| Cell::Str("PERSONAL")),
            Col::selected_vehicle_category => {
                e.distance_tenths.map_or(Cell::Null, |_| Cell::Str("CAR"))
            }
            Col::passenger_count => e.distance_tenths.map_or(Cell::Null, |_| Cell::Int(0)),
            Col::passenger_mileage_rate | Col::passenger_amount => Cell::Null,
            Col::mileage_rate_id | Col::mileage_rate => Cell::Null,
            Col::mileage_is_round_trip => e
                .distance_tenths
                .map_or(Cell::Null, |_| Cell::Bool(e.has(flag::ROUND_TRIP))),
            Col::per_diem_rate_id | Col::per_diem_rate | Col::per_diem_num_days => Cell::Null,
            Col::started_at => match kind() {
                CatKind::Hotel => Cell::Ts(e.spent_at),
                _ => Cell::Null,
            },
            Col::ended_at => match kind() {
                CatKind::Hotel => Cell::Ts(e.spent_at + e.nights as i64 * 86_400_000_000),
                _ => Cell::Null,
            },
            Col::hotel_is_breakfast_provided => match kind() {
                CatKind::Hotel => Cell::Bool(e.has(flag::BREAKFAST)),
                _ => Cell::Null,
            },
            Col::travel_classes => Cell::Owned(match kind() {
                CatKind::Flight if e.has(flag::ROUND_TRIP) => json!(["BUSINESS", "ECONOMY"]),
                CatKind::Flight => json!(["ECONOMY"]),
                CatKind::Train => json!(["SECOND_AC"]),
                _ => json!([]),
            }),
            Col::locations => Cell::Owned(match kind() {
                CatKind::Flight | CatKind::Taxi | CatKind::Train | CatKind::Mileage => {
                    json!([location(e.cities.0), location(e.cities.1)])
                }
                _ => json!([]),
            }),
            Col::custom_fields => Cell::Owned(self.custom_fields(e)),
            Col::custom_fields_flattened => Cell::Owned(self.custom_fields_flattened(e)),
            Col::code => Cell::Null,
            Col::state => Cell::Str(e.state.name()),
            Col::state_display_name => Cell::Str(e.state.display_name()),
            Col::seq_num => Cell::Str(&e.seq_num),
            Col::report_id => e
                .report
                .map_or(Cell::Null, |r| Cell::Str(&self.reports[r as usize].id)),
            Col::added_to_report_at => opt_ts(e.added_to_report_at),
            Col::added_to_report_by => e.report.map_or(Cell::Null, |_| Cell::Str("USER")),
            Col::report => e
                .report
                .map_or(Cell::Null, |r| Cell::Owned(self.report_embed(e, r))),
            Col::is_verified => Cell::Bool(e.has(flag::VERIFIED)),
            Col::last_verified_at => {
                if e.has(flag::VERIFIED) {
                    opt_ts(e.approved_at)
                } else {
                    Cell::Null
                }
            }
            Col::is_receipt_mandatory => Cell::Bool(e.has(flag::RECEIPT_MANDATORY)),
            Col::is_exported => Cell::Bool(e.has(flag::EXPORTED)),
            Col::last_exported_at => opt_ts(e.exported_at),
            Col::file_ids => Cell::Owned(if e.has(flag::RECEIPT) {
                json!([file_id(e)])
            } else {
                json!([])
            }),
            Col::files => Cell::Owned(if e.has(flag::RECEIPT) {
                let (name, ct) = if e.has(flag::PDF) {
                    (format!("receipt_{}.pdf", &e.id[2..]), "application/pdf")
                } else {
                    (format!("IMG_{}.jpg", &e.id[2..]), "image/jpeg")
                };
                json!([{"id": file_id(e), "name": name, "type": "RECEIPT", "content_type": ct}])
            } else {
                json!([])
            }),
            Col::expense_policy_comments | Col::verifications | Col::verifier_comments => {
                Cell::Owned(Value::Array(Vec::new()))
            }
            Col::approvals => Cell::Owned(self.approvals(e)),
            Col::employee_id => Cell::Str(&emp().id),
            Col::employee => Cell::Val(&emp().embed),
            Col::is_corporate_card_transaction_auto_matched => {
                Cell::Bool(card && e.has(flag::AUTO_MATCHED))
            }
            Col::matched_corporate_card_transaction_ids => Cell::Owned(if card {
                json!([card_txn_id(e)])
            } else {
                json!([])
            }),
            Col::matched_corporate_card_transactions => Cell::Owned(if card {
                json!([self.card_txn(e)])
            } else {
                json!([])
            }),
            Col::matched_corporate_card_transaction_id => {
                if card {
                    Cell::Owned(Value::String(card_txn_id(e)))
                } else {
                    Cell::Null
                }
            }
            Col::matched_corporate_card_transaction => Cell::Owned(if card {
                self.card_txn(e)
            } else {
                Value::Object(Map::new())
            }),
            Col::last_settled_at => opt_ts(e.settled_at),
            Col::missing_mandatory_fields => Cell::Owned(json!({
                "expense_field_ids": if e.state == State::Draft { json!([CUSTOM_FIELDS[1].0]) } else { json!([]) },
                "amount": false,
                "currency": false,
            })),
            Col::activity_details => Cell::Null,
            Col::extracted_data => {
                if e.has(flag::EXTRACTED) {
                    Cell::Owned(json!({
                        "amount": self.money_json(e.amount),
                        "vendor_name": e.merchant,
                        "currency": self.currency,
                        "category": cat().map(|c| c.name.as_str()),
                        "date": fmt_ts(e.spent_at).get(..10),
                    }))
                } else {
                    Cell::Null
                }
            }
            Col::is_manually_flagged => Cell::Bool(e.has(flag::MANUALLY_FLAGGED)),
            Col::is_policy_flagged => Cell::Bool(e.has(flag::POLICY_FLAGGED)),
            Col::split_group_id => Cell::Str(&e.split_group_id),
            Col::split_group_amount => self.money(e.split_group_amount),
            Col::is_physical_bill_submitted => Cell::Bool(false),
            Col::physical_bill_submitted_at => Cell::Null,
            Col::expense_rule_id | Col::expense_rule_data => Cell::Null,
            Col::is_split => Cell::Bool(e.is_split),
            Col::approver_comments => Cell::Owned(match e.approver_comment {
                Some(c) => json!([c]),
                None => json!([]),
            }),
            Col::policy_checks => Cell::Owned(json!({
                "is_amount_limit_applied": e.has(flag::POLICY_FLAGGED),
                "are_approvers_added": e.report.is_some(),
                "is_flagged_ever": e.has(flag::POLICY_FLAGGED) || e.has(flag::MANUALLY_FLAGGED),
                "violations": if e.has(flag::POLICY_FLAGGED) {
                    json!([{"policy_rule_description": "Expense amount is greater than the policy limit", "policy_rule_id": "tprSimLimit01"}])
                } else {
                    json!([])
                },
            })),
            Col::accounting_export_summary => {
                Cell::Owned(match (&e.export_summary, e.exported_at) {
                    (Some(s), _) => json!({
                        "state": s.state,
                        "error_type": s.error_type,
                        "url": s.url,
                        "tpa_id": self.tpa_id,
                    }),
                    (None, Some(_)) => json!({
                        "state": "COMPLETE",
                        "error_type": null,
                        "url": format!("https://erp.sim.example/expenses/{}", e.id),
                        "tpa_id": self.tpa_id,
                    }),
                    (None, None) => Value::Object(Map::new()),
                })
            }
            Col::report_last_paid_at => opt_ts(e.paid_at),
            Col::report_last_approved_at => opt_ts(e.approved_at),
            Col::invoice_number => e.invoice_number.map_or(Cell::Null, |n| {
                Cell::Owned(Value::String(format!("INV-{n:05}")))
            }),
            Col::commute_deduction | Col::commute_details_id | Col::commute_details => Cell::Null,
            Col::is_duplicate_present => Cell::Bool(e.has(flag::DUPLICATE)),
            Col::is_reconciled => Cell::Bool(e.has(flag::RECONCILED)),
            Col::report_auto_approval_state => match e.report {
                Some(_) if e.state >= State::ApproverPending => Cell::Str("NOT_ELIGIBLE"),
                _ => Cell::Null,
            },
        }
    }

    /// Fast paths for nested filters clients use a lot; `None` means
    /// "navigate the rendered embed" instead.
    pub(crate) fn expense_nested<'a>(
        &'a self,
        e: &'a Expense,
        col: Col,
        path: &[String],
    ) -> Option<Cell<'a>> {
        let key = path.first()?.as_str();
        if path.len() != 1 {
            return None;
        }
        match (col, key) {
            (Col::report, _) => {
                let r = e.report?;
                Some(match key {
                    "id" => Cell::Str(&self.reports[r as usize].id),
                    "seq_num" => Cell::Str(&self.reports[r as usize].seq_num),
                    "state" => Cell::Str(e.state.report_state()),
                    "last_approved_at" => opt_ts(e.approved_at),
                    "last_paid_at" => opt_ts(e.paid_at),
                    "last_submitted_at" => opt_ts(e.submitted_at),
                    "amount" => self.money(e.report_amount),
                    _ => return None,
                })
            }
            (Col::custom_fields_flattened, _) => {
                let i = CUSTOM_FIELDS.iter().position(|f| f.3 == key)?;
                Some(match &e.custom {
                    None => Cell::Null,
                    Some(c) => custom_value_cell(c, i),
                })
            }
            _ => None,
        }
    }

    fn report_embed(&self, e: &Expense, r: u32) -> Value {
        let info = &self.reports[r as usize];
        let reimbursed = e.state.is_settled();
        json!({
            "id": info.id,
            "last_approved_at": e.approved_at.map(fmt_ts),
            "last_submitted_at": e.submitted_at.map(fmt_ts),
            "seq_num": info.seq_num,
            "title": info.title,
            "state": e.state.report_state(),
            "last_paid_at": e.paid_at.map(fmt_ts),
            "reimbursement_id": if reimbursed { Some(&info.reimbursement_id) } else { None },
            "reimbursement_seq_num": if reimbursed { Some(&info.reimbursement_seq_num) } else { None },
            "amount": self.money_json(e.report_amount),
            "last_verified_at": null,
            "approvals": self.approvals(e),
        })
    }

    pub(crate) fn approvals_for(&self, emp: u32, state: State) -> Value {
        if state < State::ApproverPending {
            return json!([]);
        }
        let mgr = &self.employees[self.employees[emp as usize].manager];
        json!([{
            "approver_user_id": mgr.user_id,
            "approver_type": "USER",
            "approver_user": mgr.user_embed,
            "state": if state == State::ApproverPending { "APPROVAL_PENDING" } else { "APPROVAL_DONE" },
            "approver_order": 1,
        }])
    }

    fn approvals(&self, e: &Expense) -> Value {
        if e.report.is_none() {
            return json!([]);
        }
        self.approvals_for(e.emp, e.state)
    }

    fn card_txn(&self, e: &Expense) -> Value {
        let emp = &self.employees[e.emp as usize];
        json!({
            "id": card_txn_id(e),
            "corporate_card_id": emp.card_id,
            "corporate_card_number": emp.card_number,
            "corporate_card_nickname": "Corporate Visa",
            "masked_corporate_card_number": emp.card_number,
            "bank_name": "Sim National Bank",
            "corporate_card_user_full_name": emp.full_name,
            "amount": self.money_json(e.amount),
            "currency": self.currency,
            "spent_at": fmt_ts(e.spent_at),
            "posted_at": fmt_ts(e.spent_at + 2 * 86_400_000_000),
            "status": "POSTED",
            "description": e.merchant,
            "foreign_currency": e.foreign.map(|(c, _)| self.currencies[c as usize].code),
            "foreign_amount": e.foreign.map(|(_, a)| super::values::decimal_value(a)),
            "merchant": e.merchant,
            "category": null,
            "matched_by": emp.email,
        })
    }

    fn custom_fields(&self, e: &Expense) -> Value {
        let Some(c) = &e.custom else {
            return json!([]);
        };
        Value::Array(
            CUSTOM_FIELDS
                .iter()
                .enumerate()
                .map(|(i, (id, name, ty, _))| {
                    json!({"id": id, "name": name, "value": custom_value_cell(c, i).to_value(), "type": ty, "is_enabled": true})
                })
                .collect(),
        )
    }

    fn custom_fields_flattened(&self, e: &Expense) -> Value {
        let Some(c) = &e.custom else {
            return Value::Object(Map::new());
        };
        Value::Object(
            CUSTOM_FIELDS
                .iter()
                .enumerate()
                .map(|(i, f)| (f.3.to_owned(), custom_value_cell(c, i).to_value()))
                .collect(),
        )
    }

    /// Renders one expense as `expense_out` JSON text.
    pub(crate) fn write_expense(&self, e: &Expense, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (name, col)) in EXPENSE_COLUMNS.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            self.expense_cell(e, *col).write_json(out);
        }
        out.push(b'}');
    }

    /// Total in cents of the mileage expense for a distance.
    pub(crate) fn mileage_amount(distance_tenths: i64) -> i64 {
        // tenths of a mile × cents per mile / 10, rounded half up
        (distance_tenths * MILEAGE_RATE_CENTS + 5) / 10
    }
}

fn custom_value_cell(c: &Custom, i: usize) -> Cell<'static> {
    match i {
        0 => c.client_code.map_or(Cell::Null, Cell::Str),
        1 => c.cost_code.map_or(Cell::Null, Cell::Str),
        2 => c.attendees.map_or(Cell::Null, Cell::Int),
        3 => Cell::Owned(Value::Array(
            TRAVEL_TYPES
                .iter()
                .enumerate()
                .filter(|(b, _)| c.travel_types & (1 << b) != 0)
                .map(|(_, t)| Value::String((*t).to_owned()))
                .collect(),
        )),
        4 => c.invoice_date.map_or(Cell::Null, Cell::Ts),
        _ => c.billable_to_client.map_or(Cell::Null, Cell::Bool),
    }
}

fn file_id(e: &Expense) -> String {
    format!("fi{}", &e.id[2..])
}

fn card_txn_id(e: &Expense) -> String {
    format!("btxn{}", &e.id[2..])
}

/// A number in [0, 1) fixed by the expense, the field and its amount, so the
/// same version always prints the same way (ground truth equals the wire).
fn noise_draw(id: &str, field: u64, minor: i64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ field;
    for b in id.bytes().chain(minor.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    (h >> 11) as f64 / (1u64 << 53) as f64
}
