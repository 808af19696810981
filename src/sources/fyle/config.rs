//! `[source]` with `type = "fyle"`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::Problem;

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
    /// Timestamp column the pager walks (with `id` as tie-breaker).
    #[serde(default = "default_cursor_field")]
    pub cursor_field: String,
    /// Records changed within this long before the run starts wait for the next run,
    /// so late-committed changes with slightly older timestamps are not missed.
    #[serde(default = "default_safety_lag", with = "crate::config::duration")]
    pub safety_lag: Duration,
    /// Requests in flight at once; the window is split into slices so a
    /// backfill is bounded by the rate limit, not by round-trip latency.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
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
fn default_cursor_field() -> String {
    "updated_at".into()
}
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
        if self.cursor_field.is_empty() {
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
}
