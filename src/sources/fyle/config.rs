//! `[source]` with `type = "fyle"`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::common::Problem;

/// Admin list resources of the Fyle platform API (from the OpenAPI reference).
pub const ADMIN_RESOURCES: &[&str] = &[
    "accounting_export_lineitems",
    "accounting_exports",
    "accounts",
    "advance_refunds",
    "advance_requests",
    "advance_wallets",
    "advances",
    "budget_usages",
    "budgets",
    "categories",
    "corporate_card_transactions",
    "corporate_cards",
    "cost_centers",
    "departments",
    "dependent_expense_field_values",
    "employee_account_summaries",
    "employee_fields",
    "employee_settings",
    "employees",
    "expense_fields",
    "expense_policy_rules",
    "expense_policy_states",
    "expense_rules",
    "expenses",
    "feature_configs",
    "levels",
    "merchants",
    "mileage_rates",
    "orgs",
    "per_diem_rates",
    "projects",
    "reconciliation_entries",
    "reimbursements",
    "reminders",
    "reports",
    "schedules",
    "scheduled_callbacks",
    "statement_mappings",
    "statements",
    "subscriptions",
    "tax_groups",
    "virtual_cards",
];

const ROLES: &[&str] = &["admin", "spender", "approver", "accountant"];

const OPERATORS: &[&str] = &[
    "eq", "neq", "lt", "lte", "gt", "gte", "in", "not_in", "is", "like", "ilike", "cs", "cd", "ov",
    "not",
];

/// Query parameters the pager owns; a filter may not set them.
const RESERVED: &[&str] = &["offset", "limit", "order"];

/// A filter's value: one `op.value` string, or several for the same column (all apply).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum FilterValue {
    /// `state = "in.(APPROVED,PAID)"`.
    One(String),
    /// `updated_at = ["gte.2024-01-01", "lt.2024-02-01"]`.
    Many(Vec<String>),
}

impl FilterValue {
    /// Every value, in order.
    pub fn values(&self) -> Vec<&str> {
        match self {
            FilterValue::One(v) => vec![v.as_str()],
            FilterValue::Many(vs) => vs.iter().map(String::as_str).collect(),
        }
    }
}

/// What to read from Fyle and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FyleSourceConfig {
    /// Resource name under the role, e.g. `expenses`, `reports`, `employees`.
    pub resource: String,
    /// API role the credentials act as.
    #[serde(default = "default_role")]
    pub role: String,
    /// Records per request (Fyle allows at most 200).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// PostgREST-style filters: column (or `or`/`and`) → `op.value`.
    #[serde(default)]
    pub filters: BTreeMap<String, FilterValue>,
    /// Timestamp column the pager walks (with `id` as tie-breaker); default
    /// `updated_at`, or the preset's. Read it through [`FyleSourceConfig::cursor`].
    #[serde(default)]
    pub cursor_field: Option<String>,
    /// A selection Fyle's accounting integrations use: `approved`, `paid` or `settled`.
    #[serde(default)]
    pub preset: Option<Preset>,
    /// Restrict expenses to one fund source: `reimbursable`, `corporate_card` or `advance`.
    #[serde(default)]
    pub fund_source: Option<FundSource>,
    /// Records changed within this long before the run starts wait for the next run,
    /// so late-committed changes with slightly older timestamps are not missed.
    #[serde(default = "default_safety_lag", with = "crate::common::duration")]
    pub safety_lag: Duration,
    /// Requests in flight at once; the window is split into slices so a
    /// backfill is bounded by the rate limit, not by round-trip latency.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Slices are never split below this time span (a split needs a
    /// midpoint with records on both sides to pay off).
    #[serde(default = "default_min_slice", with = "crate::common::duration")]
    pub min_slice: Duration,
    /// `[connection]`, parsed by [`FyleSourceConfig::parse_sections`].
    #[serde(skip)]
    pub connection: Option<crate::auth::FyleConnectionConfig>,
    /// `[writeback]`, parsed by [`FyleSourceConfig::parse_sections`].
    #[serde(skip)]
    pub writeback: Option<super::WriteBackConfig>,
}

impl FyleSourceConfig {
    /// Reads `[connection]` (required) and `[writeback]` (optional).
    pub fn parse_sections(
        &mut self,
        connection: Option<&toml::Table>,
        writeback: Option<&toml::Table>,
    ) -> Vec<Problem> {
        use crate::common::keys::deserialize_collecting;
        let mut p = Vec::new();
        match connection {
            None => p.push(Problem::new("connection", "is required but missing")),
            Some(t) => {
                let (c, problems) = deserialize_collecting::<crate::auth::FyleConnectionConfig>(
                    toml::Value::Table(t.clone()),
                    "connection",
                );
                p.extend(problems);
                if let Some(c) = c {
                    p.extend(c.validate("connection"));
                    self.connection = Some(c);
                }
            }
        }
        if let Some(t) = writeback {
            let (wb, problems) = deserialize_collecting::<super::WriteBackConfig>(
                toml::Value::Table(t.clone()),
                "writeback",
            );
            p.extend(problems);
            if let Some(wb) = wb {
                p.extend(wb.validate("writeback", &self.resource));
                self.writeback = Some(wb);
            }
        }
        p
    }
}

fn default_min_slice() -> Duration {
    Duration::from_secs(1)
}

fn default_concurrency() -> u32 {
    4
}

fn default_role() -> String {
    "admin".into()
}
fn default_page_size() -> u32 {
    200
}
/// Selections Fyle's own accounting integrations export by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// Approved or later, by when the report was last approved.
    Approved,
    /// Paid, by when the report was last paid.
    Paid,
    /// In payment or paid, by when the expense was last settled.
    Settled,
}

impl Preset {
    /// The cursor field and the state filter of the preset.
    pub fn selection(self) -> (&'static str, &'static str) {
        match self {
            Preset::Approved => (
                "report_last_approved_at",
                "in.(APPROVED,PAYMENT_PROCESSING,PAID)",
            ),
            Preset::Paid => ("report_last_paid_at", "eq.PAID"),
            Preset::Settled => ("last_settled_at", "in.(PAYMENT_PROCESSING,PAID)"),
        }
    }
}

/// Where the money for an expense came from (`source_account.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FundSource {
    /// Paid by the employee and to be reimbursed: personal cash, `is_reimbursable`.
    Reimbursable,
    /// Paid with a corporate card.
    CorporateCard,
    /// Paid from an advance.
    Advance,
}

impl FundSource {
    /// The filters (column, `op.value`) this fund source adds to the query.
    pub fn filters(self) -> &'static [(&'static str, &'static str)] {
        match self {
            // Fyle's accounting connector exports only personal-cash expenses the
            // employee claims back; a non-reimbursable cash expense owes nobody.
            FundSource::Reimbursable => &[
                ("source_account->type", "eq.PERSONAL_CASH_ACCOUNT"),
                ("is_reimbursable", "eq.true"),
            ],
            FundSource::CorporateCard => &[(
                "source_account->type",
                "eq.PERSONAL_CORPORATE_CREDIT_CARD_ACCOUNT",
            )],
            FundSource::Advance => &[("source_account->type", "eq.PERSONAL_ADVANCE_ACCOUNT")],
        }
    }
}

/// What a preset selects without `fund_source`: what Fyle's accounting
/// connector exports (personal cash and corporate card), never advance-account
/// expenses, which it settles against the advance instead.
pub const PRESET_FUND_SOURCES: &str =
    "in.(PERSONAL_CASH_ACCOUNT,PERSONAL_CORPORATE_CREDIT_CARD_ACCOUNT)";

fn default_safety_lag() -> Duration {
    Duration::from_secs(5)
}

impl FyleSourceConfig {
    /// Checks resource, role, page size and filter syntax.
    pub fn validate(&self, prefix: &str) -> Vec<Problem> {
        let mut p = Vec::new();
        if !ROLES.contains(&self.role.as_str()) {
            p.push(Problem::new(
                format!("{prefix}.role"),
                format!(
                    "unknown role `{}`; expected one of {}",
                    self.role,
                    ROLES.join(", ")
                ),
            ));
        }
        if self.role == "admin" && !ADMIN_RESOURCES.contains(&self.resource.as_str()) {
            let stem: String = self.resource.chars().take(4).collect();
            let closest = |prefix: &str| {
                ADMIN_RESOURCES
                    .iter()
                    .filter(|r| !prefix.is_empty() && r.starts_with(prefix))
                    .min_by_key(|r| r.len())
            };
            let hint = closest(&self.resource)
                .or_else(|| closest(&stem))
                .map(|r| format!(" (did you mean `{r}`?)"))
                .unwrap_or_default();
            p.push(Problem::new(
                format!("{prefix}.resource"),
                format!(
                    "unknown admin resource `{}`{hint}; expected one of: {}",
                    self.resource,
                    ADMIN_RESOURCES.join(", ")
                ),
            ));
        } else if self.resource.is_empty()
            || !self
                .resource
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_')
        {
            p.push(Problem::new(
                format!("{prefix}.resource"),
                "must be a resource name like `expenses`",
            ));
        }
        if !(1..=200).contains(&self.page_size) {
            p.push(Problem::new(
                format!("{prefix}.page_size"),
                format!(
                    "must be between 1 and 200 (the Fyle API refuses larger pages), got {}",
                    self.page_size
                ),
            ));
        }
        if !(1..=32).contains(&self.concurrency) {
            p.push(Problem::new(
                format!("{prefix}.concurrency"),
                format!("must be between 1 and 32, got {}", self.concurrency),
            ));
        }
        if self.cursor().is_empty() {
            p.push(Problem::new(
                format!("{prefix}.cursor_field"),
                "must not be empty",
            ));
        }
        for (col, value) in &self.filters {
            let key = format!("{prefix}.filters.{col}");
            if RESERVED.contains(&col.as_str()) {
                p.push(Problem::new(
                    key,
                    format!("`{col}` is set by the pager and cannot be a filter"),
                ));
                continue;
            }
            if value.values().is_empty() {
                p.push(Problem::new(key.clone(), "give at least one `op.value`"));
            }
            for v in value.values() {
                if let Some(msg) = check_filter(col, v) {
                    p.push(Problem::new(key.clone(), msg));
                }
            }
        }
        p
    }

    /// What this section selects, part by part, for the selection fingerprint.
    pub fn selection(&self) -> BTreeMap<String, String> {
        let source = self;
        let mut parts = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            parts.insert(k.to_string(), v);
        };
        put("resource", source.resource.clone());
        put("role", source.role.clone());
        put("cursor", source.cursor().to_string());
        put(
            "preset",
            source.preset.map_or("none".into(), |p| format!("{p:?}")),
        );
        put(
            "fund_source",
            source
                .fund_source
                .map_or("none".into(), |f| format!("{f:?}")),
        );
        // The filters as sent to the API, presets and fund_source expanded: what the server is asked.
        let filters: Vec<String> = source
            .filter_pairs()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        put("source filters", filters.join("&"));
        parts
    }

    /// The timestamp column the pager walks.
    pub fn cursor(&self) -> &str {
        self.cursor_field.as_deref().unwrap_or("updated_at")
    }

    /// Expands `preset` and `fund_source` into the cursor and filters they
    /// stand for; a filter or cursor the file also sets by hand is a conflict.
    pub fn apply_presets(&mut self, prefix: &str) -> Vec<Problem> {
        let mut p = Vec::new();
        if (self.preset.is_some() || self.fund_source.is_some()) && self.resource != "expenses" {
            p.push(Problem::new(
                format!("{prefix}.preset"),
                "presets and fund_source select expenses; use them with resource = \"expenses\"",
            ));
            return p;
        }
        if let Some(preset) = self.preset {
            let (cursor, state) = preset.selection();
            add_filter(&mut self.filters, &mut p, prefix, "preset", "state", state);
            match &self.cursor_field {
                Some(c) if c != cursor => p.push(Problem::new(
                    format!("{prefix}.cursor_field"),
                    format!("the preset pages by `{cursor}`; remove cursor_field or the preset"),
                )),
                _ => self.cursor_field = Some(cursor.to_string()),
            }
        }
        match self.fund_source {
            Some(fund) => {
                for (column, value) in fund.filters() {
                    add_filter(
                        &mut self.filters,
                        &mut p,
                        prefix,
                        "fund_source",
                        column,
                        value,
                    );
                }
            }
            // A hand-written fund-source filter is the user's choice; otherwise
            // a preset never silently includes advance-account expenses.
            None if self.preset.is_some() && !self.filters.contains_key("source_account->type") => {
                self.filters.insert(
                    "source_account->type".to_string(),
                    FilterValue::One(PRESET_FUND_SOURCES.to_string()),
                );
            }
            None => {}
        }
        p
    }

    /// Filters as query pairs, in a stable order.
    pub fn filter_pairs(&self) -> Vec<(String, String)> {
        self.filters
            .iter()
            .flat_map(|(k, v)| {
                v.values()
                    .into_iter()
                    .map(move |x| (k.clone(), x.to_string()))
            })
            .collect()
    }
}

/// Adds a filter a preset implies, unless the file sets that column itself.
fn add_filter(
    filters: &mut BTreeMap<String, FilterValue>,
    problems: &mut Vec<Problem>,
    prefix: &str,
    by: &str,
    column: &str,
    value: &str,
) {
    if filters.contains_key(column) {
        problems.push(Problem::new(
            format!("{prefix}.filters.{column}"),
            format!("is set by {prefix}.{by} already; remove one of them"),
        ));
    } else {
        filters.insert(column.to_string(), FilterValue::One(value.to_string()));
    }
}

fn check_filter(col: &str, value: &str) -> Option<String> {
    if col == "or" || col == "and" {
        let ok = value.starts_with('(') && value.ends_with(')') && balanced(value);
        return (!ok).then(|| {
            format!("`{value}` must be a parenthesised list like \"(amount.lt.0,state.eq.PAID)\"")
        });
    }
    let op = value.split('.').next().unwrap_or("");
    if !OPERATORS.contains(&op) || !value.contains('.') {
        return Some(format!(
            "`{value}` needs an operator: write it as `op.value`, e.g. \"eq.{value}\"; operators: {}",
            OPERATORS.join(", ")
        ));
    }
    None
}

fn balanced(s: &str) -> bool {
    let mut depth = 0i32;
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    depth == 0 && !quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> FyleSourceConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn page_size_over_200_is_refused() {
        let p = cfg("resource = \"expenses\"\npage_size = 500").validate("source");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, "source.page_size");
        assert!(p[0].message.contains("between 1 and 200"));
    }

    #[test]
    fn unknown_resource_is_named_with_a_hint() {
        let p = cfg("resource = \"expense\"").validate("source");
        assert_eq!(p[0].key, "source.resource");
        assert!(
            p[0].message.contains("did you mean `expenses`"),
            "{}",
            p[0].message
        );
    }

    #[test]
    fn filters_need_operators() {
        let p = cfg("resource = \"expenses\"\n[filters]\nstate = \"APPROVED\"").validate("source");
        assert_eq!(p[0].key, "source.filters.state");
        assert!(p[0].message.contains("eq.APPROVED"));
    }

    #[test]
    fn same_column_twice_and_or_groups_are_accepted() {
        let c = cfg(
            "resource = \"expenses\"\n[filters]\nspent_at = [\"gte.2024-01-01\", \"lt.2024-02-01\"]\nor = \"(amount.lt.0,state.eq.PAID)\"\n\"source_account->type\" = \"eq.PERSONAL_CASH_ACCOUNT\"",
        );
        assert!(c.validate("source").is_empty());
        let pairs = c.filter_pairs();
        assert_eq!(pairs.iter().filter(|(k, _)| k == "spent_at").count(), 2);
    }

    #[test]
    fn presets_expand_to_cursor_and_filters() {
        let mut c =
            cfg("resource = \"expenses\"\npreset = \"approved\"\nfund_source = \"corporate_card\"");
        assert!(c.apply_presets("source").is_empty());
        assert_eq!(c.cursor(), "report_last_approved_at");
        let pairs = c.filter_pairs();
        assert!(pairs.contains(&(
            "state".into(),
            "in.(APPROVED,PAYMENT_PROCESSING,PAID)".into()
        )));
        assert!(pairs.contains(&(
            "source_account->type".into(),
            "eq.PERSONAL_CORPORATE_CREDIT_CARD_ACCOUNT".into()
        )));
    }

    #[test]
    fn reimbursable_also_requires_is_reimbursable() {
        let mut c = cfg("resource = \"expenses\"\nfund_source = \"reimbursable\"");
        assert!(c.apply_presets("source").is_empty());
        assert_eq!(
            c.filter_pairs(),
            vec![
                ("is_reimbursable".into(), "eq.true".into()),
                (
                    "source_account->type".into(),
                    "eq.PERSONAL_CASH_ACCOUNT".into()
                ),
            ]
        );
    }

    #[test]
    fn a_preset_without_fund_source_leaves_out_advances_unless_filtered_by_hand() {
        let mut c = cfg("resource = \"expenses\"\npreset = \"settled\"");
        assert!(c.apply_presets("source").is_empty());
        assert!(
            c.filter_pairs()
                .contains(&("source_account->type".into(), PRESET_FUND_SOURCES.into()))
        );
        let mut c = cfg(
            "resource = \"expenses\"\npreset = \"settled\"\n[filters]\n\"source_account->type\" = \"eq.PERSONAL_ADVANCE_ACCOUNT\"",
        );
        assert!(c.apply_presets("source").is_empty());
        assert!(c.filter_pairs().contains(&(
            "source_account->type".into(),
            "eq.PERSONAL_ADVANCE_ACCOUNT".into()
        )));
    }

    #[test]
    fn a_preset_and_a_hand_written_state_filter_conflict() {
        let mut c =
            cfg("resource = \"expenses\"\npreset = \"paid\"\n[filters]\nstate = \"eq.PAID\"");
        let p = c.apply_presets("source");
        assert_eq!(p[0].key, "source.filters.state");
    }
}
