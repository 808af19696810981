//! Default column sets per Fyle resource, for pipelines that list no `[[columns]]`.
//!
//! Paths follow the admin OpenAPI schemas (`expense_out`, `admin_report_out`,
//! `employee_out`, `admin_approver_category_out`, `admin_approver_project_out`,
//! `admin_cost_center_out`); names are what an accountant expects in a header.

use crate::transforms::{ColumnSpec, TypeName};

/// The default columns for `resource` (`expenses`, `reports`, `employees`, `categories`, `projects`, `cost_centers`).
pub fn default_columns(resource: &str) -> Option<Vec<ColumnSpec>> {
    let cols = match resource {
        "expenses" => expenses(),
        "reports" => reports(),
        "employees" => employees(),
        "categories" => categories(),
        "projects" => projects(),
        "cost_centers" => cost_centers(),
        _ => return None,
    };
    Some(cols)
}

fn s(name: &str, path: &str) -> ColumnSpec {
    ColumnSpec::path(name, path)
}

fn ts(name: &str, path: &str) -> ColumnSpec {
    ColumnSpec::path(name, path).typed(TypeName::Timestamp)
}

fn b(name: &str, path: &str) -> ColumnSpec {
    ColumnSpec::path(name, path).typed(TypeName::Bool)
}

fn int(name: &str, path: &str) -> ColumnSpec {
    ColumnSpec::path(name, path).typed(TypeName::Integer)
}

/// An amount kept at its currency's ISO 4217 minor units (`scale = "currency"`).
fn money(name: &str, path: &str, currency_path: &str) -> ColumnSpec {
    ColumnSpec::path(name, path).money(currency_path)
}

fn expenses() -> Vec<ColumnSpec> {
    vec![
        s("expense_id", "id"),
        s("expense_number", "seq_num"),
        ColumnSpec::path("spent_date", "spent_at").typed(TypeName::Date),
        s("employee_email", "employee.user.email"),
        s("employee_name", "employee.user.full_name"),
        s("employee_code", "employee.code"),
        s("department", "employee.department.name"),
        s("merchant", "merchant"),
        s("purpose", "purpose"),
        s("category", "category.name"),
        s("sub_category", "category.sub_category"),
        s("category_code", "category.code"),
        s("project", "project.name"),
        s("project_code", "project.code"),
        s("cost_center", "cost_center.name"),
        s("cost_center_code", "cost_center.code"),
        s("currency", "currency"),
        money("amount", "amount", "currency"),
        money("tax_amount", "tax_amount", "currency"),
        s("foreign_currency", "foreign_currency"),
        // Three places for every foreign currency (KWD, BHD, OMR… included), as
        // before: a converted foreign amount with a third decimal is kept, not refused.
        ColumnSpec::path("foreign_amount", "foreign_amount").decimal(3),
        s("state", "state"),
        s("fund_source", "source_account.type"),
        b("is_reimbursable", "is_reimbursable"),
        b("is_billable", "is_billable"),
        s("report_id", "report_id"),
        s("report_number", "report.seq_num"),
        s("report_title", "report.title"),
        ts("approved_at", "report_last_approved_at"),
        ts("paid_at", "report_last_paid_at"),
        ts("settled_at", "last_settled_at"),
        ts("created_at", "created_at"),
        ts("updated_at", "updated_at"),
    ]
}

fn reports() -> Vec<ColumnSpec> {
    vec![
        s("report_id", "id"),
        s("report_number", "seq_num"),
        s("title", "purpose"),
        s("employee_email", "employee.user.email"),
        s("employee_name", "employee.user.full_name"),
        s("employee_code", "employee.code"),
        s("currency", "currency"),
        money("amount", "amount", "currency"),
        money("tax", "tax", "currency"),
        int("num_expenses", "num_expenses"),
        s("state", "state"),
        ts("submitted_at", "last_submitted_at"),
        ts("approved_at", "last_approved_at"),
        ts("paid_at", "last_paid_at"),
        s("reimbursement_id", "reimbursement_id"),
        ts("created_at", "created_at"),
        ts("updated_at", "updated_at"),
    ]
}

fn employees() -> Vec<ColumnSpec> {
    vec![
        s("employee_id", "id"),
        s("employee_code", "code"),
        s("email", "user.email"),
        s("full_name", "user.full_name"),
        s("department", "department.name"),
        s("sub_department", "department.sub_department"),
        s("level", "level.name"),
        s("title", "title"),
        s("location", "location"),
        s("business_unit", "business_unit"),
        b("is_enabled", "is_enabled"),
        b("has_accepted_invite", "has_accepted_invite"),
        ts("joined_at", "joined_at"),
        ts("created_at", "created_at"),
        ts("updated_at", "updated_at"),
    ]
}

fn categories() -> Vec<ColumnSpec> {
    vec![
        int("category_id", "id"),
        s("name", "name"),
        s("sub_category", "sub_category"),
        s("display_name", "display_name"),
        s("code", "code"),
        s("system_category", "system_category"),
        b("is_enabled", "is_enabled"),
        ts("created_at", "created_at"),
        ts("updated_at", "updated_at"),
    ]
}

fn projects() -> Vec<ColumnSpec> {
    vec![
        int("project_id", "id"),
        s("name", "name"),
        s("sub_project", "sub_project"),
        s("display_name", "display_name"),
        s("code", "code"),
        s("description", "description"),
        b("is_enabled", "is_enabled"),
        ts("created_at", "created_at"),
        ts("updated_at", "updated_at"),
    ]
}

fn cost_centers() -> Vec<ColumnSpec> {
    vec![
        int("cost_center_id", "id"),
        s("name", "name"),
        s("code", "code"),
        s("description", "description"),
        b("is_enabled", "is_enabled"),
        ts("created_at", "created_at"),
        ts("updated_at", "updated_at"),
    ]
}
