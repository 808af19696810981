//! The simulator's generated data: schema conformance, determinism and the
//! awkward cases real Fyle data has.

use std::collections::{HashMap, HashSet};

use chrono::DateTime;
use expense_sync::simulator::{SimConfig, Simulator};
use rust_decimal::Decimal;
use serde_json::Value;

async fn sim(seed: u64, expenses: usize) -> Simulator {
    Simulator::start(SimConfig {
        seed,
        expenses,
        rate_limit: None,
        ..SimConfig::default()
    })
    .await
    .expect("start simulator")
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if !n.as_str().contains(['.', 'e', 'E']) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks `v` against one fixture entry (`{"types": [...], "required": {...}, "items": {...}}`).
fn check(v: &Value, spec: &Value, at: &str, problems: &mut Vec<String>) {
    let types: Vec<&str> = spec["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let t = json_type(v);
    let ok = types.contains(&"any")
        || types.contains(&t)
        || (t == "integer" && types.contains(&"number"));
    if !ok {
        problems.push(format!("{at}: got {t}, allowed {types:?}"));
        return;
    }
    if let (Some(req), Value::Object(m)) = (spec.get("required").and_then(Value::as_object), v) {
        for (field, sub) in req {
            match m.get(field) {
                Some(fv) => check(fv, sub, &format!("{at}.{field}"), problems),
                None => problems.push(format!("{at}.{field}: missing")),
            }
        }
    }
    if let (Some(items), Value::Array(a)) = (spec.get("items"), v) {
        for (i, item) in a.iter().enumerate() {
            check(item, items, &format!("{at}[{i}]"), problems);
        }
    }
}

fn conform(records: &[Value], fixture: &str) {
    let text = std::fs::read_to_string(format!(
        "{}/tests/fixtures/{fixture}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture (regenerate with tests/fixtures/extract_schema.py)");
    let spec: Value = serde_json::from_str(&text).unwrap();
    assert!(!records.is_empty(), "{fixture}: no records to check");
    let mut problems = Vec::new();
    for r in records {
        check(r, &spec, r["id"].as_str().unwrap_or("?"), &mut problems);
    }
    problems.truncate(20);
    assert!(problems.is_empty(), "{fixture}:\n{}", problems.join("\n"));
}

#[tokio::test]
async fn generated_expenses_conform_to_expense_out_schema() {
    let s = sim(1, 600).await;
    let expenses = s.ground_truth("expenses");
    assert_eq!(expenses.len(), 600);
    conform(&expenses, "expense_out.required.json");
}

#[tokio::test]
async fn other_resources_conform_to_their_schemas() {
    let s = sim(2, 300).await;
    conform(&s.ground_truth("reports"), "report_out.required.json");
    conform(&s.ground_truth("employees"), "employee_out.required.json");
    conform(&s.ground_truth("categories"), "category_out.required.json");
    conform(&s.ground_truth("projects"), "project_out.required.json");
    conform(
        &s.ground_truth("cost_centers"),
        "cost_center_out.required.json",
    );
    assert!(s.ground_truth("nope").is_empty());
}

#[tokio::test]
async fn same_seed_gives_same_data() {
    let (a, b, c) = (sim(7, 250).await, sim(7, 250).await, sim(8, 250).await);
    for r in [
        "expenses",
        "reports",
        "employees",
        "categories",
        "projects",
        "cost_centers",
    ] {
        assert_eq!(a.ground_truth(r), b.ground_truth(r), "{r}");
    }
    assert_ne!(a.ground_truth("expenses"), c.ground_truth("expenses"));
}

#[tokio::test]
async fn resource_sizes_scale_with_expenses() {
    let s = sim(3, 1000).await;
    assert_eq!(s.ground_truth("employees").len(), 20);
    assert_eq!(s.ground_truth("categories").len(), 20);
    assert_eq!(s.ground_truth("projects").len(), 15);
    assert_eq!(s.ground_truth("cost_centers").len(), 8);
    let reports = s.ground_truth("reports").len();
    assert!(
        (100..300).contains(&reports),
        "{reports} reports for 1000 expenses"
    );
    let small = sim(3, 10).await;
    assert_eq!(small.ground_truth("employees").len(), 5);
}

fn ids_sorted_unique(records: &[Value]) {
    let ids: Vec<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        ids, sorted,
        "ground truth is sorted by id without duplicates"
    );
}

fn dec(v: &Value) -> Decimal {
    v.to_string().parse().unwrap()
}

fn ts(v: &Value) -> i64 {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_micros()
}

#[tokio::test]
async fn awkward_cases_appear_at_realistic_rates() {
    let s = sim(4, 2000).await;
    let ex = s.ground_truth("expenses");
    ids_sorted_unique(&ex);
    let text = |k: &'static str| ex.iter().filter_map(move |e| e[k].as_str());
    let any = |k: &'static str, f: &dyn Fn(&str) -> bool| text(k).any(f);
    assert!(any("merchant", &|m| m.contains(',')), "comma");
    assert!(any("merchant", &|m| m.contains('"')), "double quote");
    assert!(
        any("merchant", &|m| m.contains('\n') && !m.contains('\r')),
        "newline"
    );
    assert!(any("merchant", &|m| m.contains("\r\n")), "CRLF");
    assert!(
        any("merchant", &|m| m.starts_with(['=', '+', '-', '@'])),
        "formula prefix"
    );
    assert!(
        any("merchant", &|m| m.chars().any(|c| c as u32 > 0xFFFF)),
        "emoji"
    );
    assert!(any("merchant", &|m| m.contains("東京")), "CJK");
    assert!(any("purpose", &|m| m.contains('\n')), "purpose newline");
    assert!(ex.iter().any(|e| e["merchant"].is_null()));
    assert!(ex.iter().any(|e| e["purpose"].is_null()));
    assert!(ex.iter().any(|e| e["project"].is_null()));
    assert!(ex.iter().any(|e| e["cost_center"].is_null()));
    assert!(
        ex.iter().any(|e| dec(&e["amount"]) < Decimal::ZERO),
        "refunds"
    );
    assert!(
        ex.iter()
            .any(|e| dec(&e["amount"]) >= Decimal::from(100_000)),
        "large"
    );
    assert!(
        ex.iter()
            .any(|e| dec(&e["amount"]) < Decimal::ONE && dec(&e["amount"]) > Decimal::ZERO)
    );
    assert!(
        ex.iter().any(|e| dec(&e["amount"]).fract().is_zero()),
        "whole amounts"
    );
    assert!(
        ex.iter().any(|e| e["foreign_currency"].is_string()),
        "foreign currency"
    );
    assert!(ex.iter().any(|e| e["is_split"] == true), "splits");
    assert!(
        ex.iter()
            .any(|e| e["custom_fields"].as_array().is_some_and(|a| !a.is_empty()))
    );
    assert!(ex.iter().any(|e| {
        e["custom_fields_flattened"]["travel_type"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    }));
    let states: HashSet<&str> = text("state").collect();
    assert_eq!(states.len(), 8, "{states:?}");
    let kinds: HashSet<&str> = ex
        .iter()
        .filter_map(|e| e["source_account"]["type"].as_str())
        .collect();
    assert!(
        kinds.contains("PERSONAL_CASH_ACCOUNT")
            && kinds.contains("PERSONAL_CORPORATE_CREDIT_CARD_ACCOUNT")
    );

    // Ties on updated_at, including one larger than a 200-record page.
    let mut by_ts: HashMap<&str, usize> = HashMap::new();
    for t in text("updated_at") {
        *by_ts.entry(t).or_default() += 1;
    }
    let ties = by_ts.values().filter(|&&n| n > 1).count();
    assert!(ties > 50, "{ties} tied updated_at values");
    assert!(
        by_ts.values().any(|&n| n > 100),
        "a tie group larger than half a page"
    );
}

#[tokio::test]
async fn money_is_exact_cents_and_foreign_amounts_convert() {
    let s = sim(5, 1500).await;
    for e in s.ground_truth("expenses") {
        let amount = dec(&e["amount"]);
        assert!(
            amount.scale() <= 2,
            "{} has more than 2 decimals: {amount}",
            e["id"]
        );
        assert_eq!(e["currency"], "USD");
        let text = e["amount"].to_string();
        assert!(
            text.contains('.'),
            "amounts print like Python floats: {text}"
        );
        if e["foreign_currency"].is_string() {
            assert!(e["foreign_amount"].is_number());
        } else {
            assert!(e["foreign_amount"].is_null());
        }
    }
}

#[tokio::test]
async fn timestamps_and_states_are_consistent() {
    let s = sim(6, 1500).await;
    let ex = s.ground_truth("expenses");
    for e in &ex {
        let id = e["id"].as_str().unwrap();
        for k in ["created_at", "updated_at", "spent_at"] {
            let t = e[k].as_str().unwrap();
            assert!(t.ends_with("+00:00"), "{id}.{k} = {t}");
        }
        assert!(
            ts(&e["updated_at"]) >= ts(&e["created_at"]),
            "{id}: updated before created"
        );
        let state = e["state"].as_str().unwrap();
        let settled = matches!(state, "PAYMENT_PROCESSING" | "PAID");
        let approved = settled || matches!(state, "APPROVED" | "PAYMENT_PENDING");
        assert_eq!(
            e["last_settled_at"].is_string(),
            settled,
            "{id} {state} last_settled_at"
        );
        assert_eq!(
            e["report_last_approved_at"].is_string(),
            approved,
            "{id} {state} approved_at"
        );
        assert_eq!(
            e["report_last_paid_at"].is_string(),
            state == "PAID",
            "{id} {state} paid_at"
        );
        let reported = e["report_id"].is_string();
        if matches!(state, "DRAFT" | "UNREPORTABLE") {
            assert!(!reported, "{id}: {state} expense in a report");
        }
        if approved || state == "APPROVER_PENDING" {
            assert!(reported, "{id}: {state} expense without report");
            assert_eq!(e["report"]["id"], e["report_id"]);
            assert!(e["report"]["seq_num"].as_str().unwrap().starts_with("C/20"));
        }
        assert_eq!(
            e["is_reimbursable"],
            e["source_account"]["type"] == "PERSONAL_CASH_ACCOUNT"
        );
        assert!(id.starts_with("tx") && id.len() == 12, "{id}");
        assert!(e["employee"]["id"].as_str().unwrap().starts_with("ou"));
        assert!(
            e["source_account"]["id"]
                .as_str()
                .unwrap()
                .starts_with("acc")
        );
        assert!(
            e["employee"]["user"]["email"]
                .as_str()
                .unwrap()
                .contains('@')
        );
    }
    // Split groups share an id and add up.
    let mut groups: HashMap<&str, Vec<&Value>> = HashMap::new();
    for e in ex.iter().filter(|e| e["is_split"] == true) {
        groups
            .entry(e["split_group_id"].as_str().unwrap())
            .or_default()
            .push(e);
    }
    assert!(!groups.is_empty());
    for (g, members) in groups {
        assert!(members.len() >= 2, "split group {g}");
        let sum: Decimal = members.iter().map(|e| dec(&e["amount"])).sum();
        assert_eq!(
            sum,
            dec(&members[0]["split_group_amount"]),
            "split group {g}"
        );
    }
}

#[test]
fn schema_checker_catches_missing_and_mistyped_fields() {
    let spec: Value = serde_json::json!({
        "types": ["object"],
        "required": {
            "a": {"types": ["number"]},
            "o": {"types": ["object", "null"], "required": {"x": {"types": ["string"]}}},
            "l": {"types": ["array"], "items": {"types": ["object"], "required": {"y": {"types": ["boolean"]}}}}
        }
    });
    let mut problems = Vec::new();
    check(
        &serde_json::json!({"a": 1, "o": null, "l": []}),
        &spec,
        "ok",
        &mut problems,
    );
    assert!(problems.is_empty(), "{problems:?}");
    check(
        &serde_json::json!({"a": "1", "o": {}, "l": [{"y": 1}]}),
        &spec,
        "bad",
        &mut problems,
    );
    assert_eq!(
        problems,
        [
            "bad.a: got string, allowed [\"number\"]",
            "bad.o.x: missing",
            "bad.l[0].y: got integer, allowed [\"boolean\"]"
        ]
    );
}
