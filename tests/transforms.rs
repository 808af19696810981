//! `[[transforms]]` against the simulator over loopback: mappings with each
//! unmapped-value policy, filters, derived fields, and totals that reconcile.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use expense_sync::ExitCode;
use expense_sync::simulator::Simulator;
use rust_decimal::Decimal;

/// A pipeline writing `{name}.csv` with `transforms` and `columns`.
fn pipeline(sim: &Simulator, name: &str, transforms: &str, columns: &str) -> String {
    format!(
        r#"
[pipeline]
name = "{name}"

[connection]
accounts_url = "{accounts}"
client_id = "x"
client_secret = {{ env = "UNUSED" }}
refresh_token = {{ env = "UNUSED" }}

[source]
type = "fyle"
resource = "expenses"
safety_lag = "0s"

{transforms}

[[columns]]
name = "id"
path = "id"

[[columns]]
name = "amount"
path = "amount"
type = "decimal"

{columns}

[[sinks]]
type = "csv"
path = "{{pipeline}}.csv"
"#,
        accounts = sim.accounts_url()
    )
}

const ALL_CATEGORIES: &[(&str, &str)] = &[
    ("Food", "6000 Meals"),
    ("Travel", "6100 Travel"),
    ("Lodging", "6110 Lodging"),
    ("Mileage", "6120 Mileage"),
    ("Office Supplies", "6200 Office"),
    ("Software", "6300 Software"),
    ("Meals & Entertainment", "6010 Entertainment"),
    ("Internet", "6400 Utilities"),
    ("Phone", "6400 Utilities"),
    ("Training", "6500 Training"),
    ("Conferences", "6500 Training"),
    ("Fuel", "6120 Mileage"),
    ("Parking, Tolls", "6130 Parking"),
    ("Courier", "6600 Postage"),
    ("Client Gifts", "6700 Gifts"),
    ("Bank Charges", "6800 Bank fees"),
    ("Rent", "6900 Rent"),
    ("Unspecified", "6999 Suspense"),
];

fn write_table(dir: &Path, rows: &[(&str, &str)]) -> String {
    let path = dir.join("categories.csv");
    let mut w = csv::Writer::from_path(&path).unwrap();
    w.write_record(["Fyle category", "GL account"]).unwrap();
    for (k, v) in rows {
        w.write_record([k, v]).unwrap();
    }
    w.flush().unwrap();
    path.display().to_string().replace('\\', "/")
}

fn map(table: &str, policy: &str) -> String {
    format!(
        r#"
[[transforms]]
type = "map"
field = "category.name"
target = "gl_account"
table = "{table}"
{policy}
"#
    )
}

const GL_COLUMN: &str = "[[columns]]\nname = \"gl_account\"\npath = \"gl_account\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_accounts_cover_every_record_and_totals_reconcile() {
    let sim = simulator(500, 21, None).await;
    let out = tempfile::tempdir().unwrap();
    let table = write_table(out.path(), ALL_CATEGORIES);
    let text = pipeline(
        &sim,
        "mapped",
        &map(
            &table,
            "on_missing = \"default\"\ndefault = \"9999 Uncategorised\"",
        ),
        GL_COLUMN,
    );
    let (_, outcome) = run_text(&sim, &text, out.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let truth = truth_by_id(&sim);
    let (_, rows) = csv_by_id(&out.path().join("mapped.csv"));
    assert_eq!(rows.len(), truth.len());
    let expected: BTreeMap<_, _> = ALL_CATEGORIES.iter().copied().collect();
    let mut total = Decimal::ZERO;
    for (id, row) in &rows {
        let want = truth[id]["category"]["name"]
            .as_str()
            .map_or("9999 Uncategorised", |c| expected[c]);
        assert_eq!(row[2], want, "gl account of {id}");
        total += row[1].parse::<Decimal>().unwrap_or_default();
    }
    let truth_total: Decimal = truth
        .values()
        .filter_map(|r| json_decimal(&r["amount"]))
        .sum();
    assert_eq!(total, truth_total);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmapped_values_fail_the_run_with_every_missing_key_and_write_nothing() {
    let sim = simulator(300, 21, None).await;
    let out = tempfile::tempdir().unwrap();
    let table = write_table(out.path(), &ALL_CATEGORIES[2..]);
    let text = pipeline(&sim, "strict", &map(&table, ""), GL_COLUMN);
    let (_, outcome) = run_text(&sim, &text, out.path()).await;
    let err = outcome.error.expect("the run fails").to_string();
    assert_eq!(outcome.summary.exit_code, ExitCode::Config.code());
    assert!(
        err.contains("transforms[0]") && err.contains("\"Food\"") && err.contains("\"Travel\""),
        "{err}"
    );
    assert!(!out.path().join("strict.csv").exists());
    let leftovers: Vec<_> = files_in(out.path())
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".expense-sync-"))
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_records_are_counted_and_listed_with_reasons() {
    let sim = simulator(300, 21, None).await;
    let out = tempfile::tempdir().unwrap();
    let table = write_table(out.path(), &ALL_CATEGORIES[1..]);
    let text = pipeline(
        &sim,
        "skip",
        &map(&table, "on_missing = \"skip\""),
        GL_COLUMN,
    );
    let (_, outcome) = run_text(&sim, &text, out.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let truth = truth_by_id(&sim);
    let unmapped: Vec<&String> = truth
        .iter()
        .filter(|(_, r)| r["category"]["name"].as_str().is_none_or(|c| c == "Food"))
        .map(|(id, _)| id)
        .collect();
    assert!(!unmapped.is_empty());
    let s = &outcome.summary;
    assert_eq!(s.skipped as usize, unmapped.len());
    assert_eq!(s.records_out as usize, truth.len() - unmapped.len());
    let (_, rows) = csv_by_id(&out.path().join("skip.csv"));
    for id in &unmapped {
        assert!(!rows.contains_key(*id), "{id} should be skipped");
    }
    let listed = &s.skipped_records[0];
    assert!(unmapped.contains(&&listed.record_id));
    assert!(listed.reason.contains("category.name"), "{listed:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_derived_columns_select_and_shape_card_expenses() {
    let sim = simulator(400, 5, None).await;
    let out = tempfile::tempdir().unwrap();
    let transforms = r#"
[[transforms]]
type = "filter"
field = "source_account.type"
op = "eq"
value = "PERSONAL_CORPORATE_CREDIT_CARD_ACCOUNT"

[[transforms]]
type = "filter"
field = "amount"
op = "gt"
value = 0

[[transforms]]
type = "derive"
target = "memo"
template = "{employee.user.email} {spent_at:%m/%d/%Y}"

[[transforms]]
type = "derive"
target = "original_amount"
coalesce = ["foreign_amount", "amount"]

[[transforms]]
type = "derive"
target = "original_currency"
coalesce = ["foreign_currency", "currency"]

[[transforms]]
type = "custom_fields"
fields = { region = "Region" }
"#;
    let columns = r#"
[[columns]]
name = "memo"
path = "memo"

[[columns]]
name = "original_amount"
path = "original_amount"
type = "decimal"
scale = 3

[[columns]]
name = "original_currency"
path = "original_currency"

[[columns]]
name = "region"
path = "region"
"#;
    let text = pipeline(&sim, "cards", transforms, columns);
    let (_, outcome) = run_text(&sim, &text, out.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let truth = truth_by_id(&sim);
    let wanted: Vec<_> = truth
        .iter()
        .filter(|(_, r)| {
            r["source_account"]["type"] == "PERSONAL_CORPORATE_CREDIT_CARD_ACCOUNT"
                && json_decimal(&r["amount"]).is_some_and(|a| a > Decimal::ZERO)
        })
        .collect();
    assert!(wanted.len() > 10);
    let (_, rows) = csv_by_id(&out.path().join("cards.csv"));
    assert_eq!(rows.len(), wanted.len());
    assert_eq!(
        outcome.summary.filtered as usize,
        truth.len() - wanted.len()
    );
    for (id, r) in wanted {
        let row = &rows[id];
        let spent = &r["spent_at"].as_str().unwrap();
        let date = format!("{}/{}/{}", &spent[5..7], &spent[8..10], &spent[..4]);
        assert_eq!(
            row[2],
            format!(
                "{} {date}",
                r["employee"]["user"]["email"].as_str().unwrap()
            )
        );
        let original = json_decimal(&r["foreign_amount"])
            .or_else(|| json_decimal(&r["amount"]))
            .unwrap();
        assert_eq!(row[3].parse::<Decimal>().unwrap(), original, "{id}");
        let currency = r["foreign_currency"].as_str().or(r["currency"].as_str());
        assert_eq!(Some(row[4].as_str()), currency);
        let region = r["custom_fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "Region")
            .and_then(|f| f["value"].as_str())
            .unwrap_or("");
        assert_eq!(row[5], region);
    }
    sim.shutdown().await;
}
