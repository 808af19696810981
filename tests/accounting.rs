//! Accounting outputs: QuickBooks IIF (bills, card charges, journals) and the
//! CSV `journal` and `bill` layouts. Golden files; structure and balance of
//! every transaction; totals that reconcile to the cent with the simulator.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{NaiveDate, TimeZone, Utc};
use expense_sync::row::{Batch, Cell, Column, ColumnType, Row, Schema};
use expense_sync::sinks::{SinkConfig, SinkContext, render_path};
use rust_decimal::Decimal;

fn ctx(dir: &Path) -> SinkContext {
    SinkContext {
        pipeline: "qb".into(),
        run_id: "r1".into(),
        started_at: Utc.with_ymd_and_hms(2024, 3, 5, 6, 7, 8).unwrap(),
        output_dir: dir.to_path_buf(),
        window_start: None,
        window_end: None,
    }
}

fn schema() -> Arc<Schema> {
    let s = |n: &str| Column {
        name: n.into(),
        ty: ColumnType::String,
    };
    Arc::new(Schema {
        columns: vec![
            s("report"),
            Column {
                name: "spent".into(),
                ty: ColumnType::Date,
            },
            Column {
                name: "amount".into(),
                ty: ColumnType::Decimal {
                    precision: 18,
                    scale: 2,
                },
            },
            s("gl"),
            s("vendor"),
            s("memo"),
            s("class"),
        ],
    })
}

fn rows() -> Vec<Row> {
    let r = |report: &str, day: u32, amount: &str, gl: &str, vendor: &str, memo: &str| Row {
        cells: vec![
            Cell::Str(report.into()),
            Cell::Date(NaiveDate::from_ymd_opt(2024, 3, day).unwrap()),
            Cell::Decimal(Decimal::from_str(amount).unwrap()),
            Cell::Str(gl.into()),
            Cell::Str(vendor.into()),
            Cell::Str(memo.into()),
            if day.is_multiple_of(2) {
                Cell::Str("Client A".into())
            } else {
                Cell::Null
            },
        ],
    };
    vec![
        r(
            "R/2024/03/2",
            4,
            "120.50",
            "6100 Travel",
            "Ann Lee",
            "Taxi\tto \"airport\"",
        ),
        r(
            "R/2024/03/1",
            2,
            "33.10",
            "6000 Meals",
            "Raj Rao",
            "Lunch\r\nwith client",
        ),
        r(
            "R/2024/03/2",
            5,
            "-20.00",
            "6100 Travel",
            "Ann Lee",
            "Refund",
        ),
        r(
            "R/2024/03/1",
            3,
            "0.01",
            "6800 Bank fees",
            "Raj Rao",
            "=fee",
        ),
        r(
            "R/2024/03/3",
            6,
            "-7.25",
            "6000 Meals",
            "Mo Chen",
            "Returned",
        ),
    ]
}

fn write(dir: &Path, toml_text: &str) -> (String, u64) {
    #[derive(serde::Deserialize)]
    struct F {
        sinks: Vec<SinkConfig>,
    }
    let f: F = toml::from_str(toml_text).unwrap();
    let config = &f.sinks[0];
    assert!(
        config.validate("sinks[0]").is_empty(),
        "{:?}",
        config.validate("sinks[0]")
    );
    let path = render_path(config.path_template(), &ctx(dir));
    let mut sink = config.build(&ctx(dir), schema()).unwrap();
    sink.write(&Batch { rows: rows() }).unwrap();
    let out = sink.finish().unwrap();
    out.staged
        .as_ref()
        .expect("file sinks stage a file")
        .commit()
        .unwrap();
    (fs::read_to_string(path).unwrap(), out.rows)
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&path, actual).unwrap();
    }
    assert_eq!(
        actual,
        fs::read_to_string(&path).unwrap(),
        "differs from {}",
        path.display()
    );
}

/// One parsed transaction: TRNSTYPE, DOCNUM, and (ACCNT, AMOUNT) of TRNS then SPLs.
#[derive(Debug)]
struct Txn {
    kind: String,
    doc: String,
    lines: Vec<(String, Decimal)>,
}

/// Parses an IIF file, asserting the header lines, CRLF endings, block structure and balance.
fn parse_and_check(text: &str) -> Vec<Txn> {
    assert!(text.ends_with("\r\n"));
    let lines: Vec<&str> = text.strip_suffix("\r\n").unwrap().split("\r\n").collect();
    assert!(
        lines[0]
            .starts_with("!TRNS\tTRNSID\tTRNSTYPE\tDATE\tACCNT\tNAME\tCLASS\tAMOUNT\tDOCNUM\tMEMO")
    );
    assert!(lines[1].starts_with("!SPL\tSPLID\tTRNSTYPE\tDATE\tACCNT"));
    assert_eq!(lines[2], "!ENDTRNS");
    let mut txns = Vec::new();
    let mut current: Option<Txn> = None;
    for line in &lines[3..] {
        assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
        let f: Vec<&str> = line.split('\t').collect();
        match f[0] {
            "TRNS" => {
                assert!(current.is_none(), "TRNS inside a transaction");
                assert_eq!(f.len(), 10, "{line:?}");
                current = Some(Txn {
                    kind: f[2].into(),
                    doc: f[8].into(),
                    lines: vec![(f[4].into(), f[7].parse().unwrap())],
                });
            }
            "SPL" => {
                let t = current.as_mut().expect("SPL outside a transaction");
                assert_eq!(f.len(), 10, "{line:?}");
                assert_eq!(f[2], t.kind, "SPL type differs from its TRNS");
                t.lines.push((f[4].into(), f[7].parse().unwrap()));
            }
            "ENDTRNS" => {
                let t = current.take().expect("ENDTRNS without TRNS");
                assert!(t.lines.len() >= 2, "{t:?}");
                let sum: Decimal = t.lines.iter().map(|l| l.1).sum();
                assert_eq!(sum, Decimal::ZERO, "transaction does not balance: {t:?}");
                txns.push(t);
            }
            other => panic!("unexpected line type {other:?}"),
        }
    }
    assert!(current.is_none(), "unterminated transaction");
    txns
}

#[test]
fn bills_grouped_per_report_match_the_golden_file_and_balance() {
    let dir = tempfile::tempdir().unwrap();
    let (text, n) = write(
        dir.path(),
        r#"
[[sinks]]
type = "iif"
path = "bills.iif"
transaction = "bill"
group_by = "report"
credit_account = "2000 Accounts Payable"
fields = { date = "spent", amount = "amount", account = "gl", name = "vendor", memo = "memo", class = "class" }
"#,
    );
    golden("bills.iif", &text);
    let txns = parse_and_check(&text);
    assert_eq!(n, 3);
    let kinds: Vec<(&str, &str)> = txns
        .iter()
        .map(|t| (t.kind.as_str(), t.doc.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("BILL", "R/2024/03/1"),
            ("BILL", "R/2024/03/2"),
            ("BILL REFUND", "R/2024/03/3")
        ]
    );
    // The payable line carries the report's total, negated.
    assert_eq!(
        txns[1].lines[0],
        (
            "2000 Accounts Payable".into(),
            Decimal::from_str("-100.50").unwrap()
        )
    );
    // Hostile text is neutralised: no tab, CR, LF or double quote inside a field.
    assert!(text.contains("Taxi to 'airport'") && text.contains("Lunch  with client"));
}

#[test]
fn card_charges_one_per_expense_with_refunds_match_the_golden_file() {
    let dir = tempfile::tempdir().unwrap();
    let (text, n) = write(
        dir.path(),
        r#"
[[sinks]]
type = "iif"
path = "cards.iif"
transaction = "credit_card"
date_format = "%d/%m/%Y"
credit_account = "2100 Corporate Visa"
fields = { date = "spent", amount = "amount", account = "gl", name = "vendor", doc_number = "report" }
"#,
    );
    golden("cards.iif", &text);
    let txns = parse_and_check(&text);
    assert_eq!(n, 5);
    let kinds: Vec<&str> = txns.iter().map(|t| t.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "CREDIT CARD",
            "CREDIT CARD",
            "CCARD REFUND",
            "CREDIT CARD",
            "CCARD REFUND"
        ]
    );
    assert!(text.contains("\t04/03/2024\t"), "day-first date format");
}

#[test]
fn journals_debit_expense_accounts_and_credit_payables() {
    let dir = tempfile::tempdir().unwrap();
    let (text, _) = write(
        dir.path(),
        r#"
[[sinks]]
type = "iif"
path = "gj.iif"
transaction = "journal"
group_by = "vendor"
credit_account = "2000 Accounts Payable"
fields = { date = "spent", amount = "amount", account = "gl", name = "vendor" }
"#,
    );
    golden("journal.iif", &text);
    let txns = parse_and_check(&text);
    assert!(txns.iter().all(|t| t.kind == "GENERAL JOURNAL"));
    let docs: Vec<&str> = txns.iter().map(|t| t.doc.as_str()).collect();
    assert_eq!(docs, ["Ann Lee", "Mo Chen", "Raj Rao"]);
}

#[test]
fn a_bill_cannot_mix_vendors() {
    #[derive(serde::Deserialize)]
    struct F {
        sinks: Vec<SinkConfig>,
    }
    for layout in [
        "type = \"iif\"\ntransaction = \"bill\"",
        "type = \"csv\"\nlayout = \"bill\"",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let f: F = toml::from_str(&format!(
            "[[sinks]]\n{layout}\npath = \"x\"\ngroup_by = \"spent\"\ncredit_account = \"AP\"\n\
             fields = {{ date = \"spent\", amount = \"amount\", account = \"gl\", name = \"vendor\" }}\n"
        ))
        .unwrap();
        let mut sink = f.sinks[0].build(&ctx(dir.path()), schema()).unwrap();
        let mut rows = rows();
        // Two employees' expenses on one day would make one bill with two vendors.
        rows[1].cells[1] = rows[0].cells[1].clone();
        let result = sink
            .write(&Batch { rows })
            .and_then(|_| sink.finish().map(|_| ()));
        let err = result.expect_err(layout).to_string();
        assert!(err.contains("mixes vendors"), "{err}");
        assert!(!dir.path().join("x").exists());
    }
}

#[test]
fn iif_settings_that_cannot_work_are_named() {
    let text = r#"
[pipeline]
name = "t"
[connection]
client_id = "id"
client_secret = { env = "S" }
refresh_token = { env = "R" }
[source]
type = "fyle"
resource = "expenses"
[[sinks]]
type = "iif"
path = "x.iif"
transaction = "bill"
fields = { date = "spent_date", amount = "amount", account = "gl_account", name = "employee_name" }
"#;
    let err = expense_sync::config::load_str(text, Path::new("p.toml")).unwrap_err();
    let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["sinks[0].credit_account", "sinks[0].fields.account"],
        "{err}"
    );
}

/// A pipeline exporting reimbursable expenses as bills, one per report.
fn bill_pipeline(sim: &expense_sync::simulator::Simulator) -> String {
    format!(
        r#"
[pipeline]
name = "qb-bills"

[connection]
accounts_url = "{accounts}"
client_id = "x"
client_secret = {{ env = "UNUSED" }}
refresh_token = {{ env = "UNUSED" }}

[source]
type = "fyle"
resource = "expenses"
safety_lag = "0s"

[[transforms]]
type = "filter"
field = "report_id"
op = "not_null"

[[transforms]]
type = "filter"
field = "source_account.type"
op = "eq"
value = "PERSONAL_CASH_ACCOUNT"

[[transforms]]
type = "map"
field = "category.name"
target = "gl_account"
entries = {{ "Food" = "6000 Meals", "Travel" = "6100 Travel" }}
on_missing = "default"
default = "6999 Other expenses"

[[transforms]]
type = "derive"
target = "memo"
template = "{{seq_num}} {{merchant}}: {{purpose}}"

[[columns]]
name = "report_number"
path = "report.seq_num"

[[columns]]
name = "spent_date"
path = "spent_at"
type = "date"

[[columns]]
name = "amount"
path = "amount"
type = "decimal"

[[columns]]
name = "gl_account"
path = "gl_account"

[[columns]]
name = "vendor"
path = "employee.user.full_name"

[[columns]]
name = "memo"
path = "memo"

[[sinks]]
type = "iif"
path = "{{pipeline}}.iif"
transaction = "bill"
group_by = "report_number"
credit_account = "2000 Accounts Payable"
fields = {{ date = "spent_date", amount = "amount", account = "gl_account", name = "vendor", memo = "memo" }}
manifest = true
"#,
        accounts = sim.accounts_url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bills_per_report_from_the_simulator_balance_and_reconcile_to_the_cent() {
    let sim = common::simulator(500, 13, None).await;
    let out = tempfile::tempdir().unwrap();
    let (_, outcome) = common::run_text(&sim, &bill_pipeline(&sim), out.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let text = fs::read_to_string(out.path().join("qb-bills.iif")).unwrap();
    let txns = parse_and_check(&text);

    let truth = common::truth_by_id(&sim);
    let mut per_report: BTreeMap<String, Decimal> = BTreeMap::new();
    for r in truth.values() {
        if r["report_id"].is_null() || r["source_account"]["type"] != "PERSONAL_CASH_ACCOUNT" {
            continue;
        }
        *per_report
            .entry(r["report"]["seq_num"].as_str().unwrap().to_string())
            .or_default() += common::json_decimal(&r["amount"]).unwrap_or_default();
    }
    assert!(per_report.len() > 5);
    let docs: BTreeSet<&str> = txns.iter().map(|t| t.doc.as_str()).collect();
    assert_eq!(docs.len(), txns.len(), "one bill per report");
    assert_eq!(txns.len(), per_report.len());
    for t in &txns {
        let expected = per_report[&t.doc];
        assert_eq!(-t.lines[0].1, expected, "bill {}", t.doc);
        assert_eq!(t.lines[0].0, "2000 Accounts Payable");
        let want = if expected < Decimal::ZERO {
            "BILL REFUND"
        } else {
            "BILL"
        };
        assert_eq!(t.kind, want);
    }
    assert_eq!(outcome.summary.outputs[0].rows as usize, per_report.len());
    // The manifest's total is the sum of every expense line: the source amounts, to the cent.
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out.path().join("qb-bills.iif.manifest.json")).unwrap())
            .unwrap();
    let expected: Decimal = per_report.values().sum();
    assert_eq!(
        manifest["totals"]["(none)"]["amount"]
            .as_str()
            .unwrap()
            .parse::<Decimal>()
            .unwrap(),
        expected
    );
    assert_eq!(manifest["rows"], txns.len() as u64);
    sim.shutdown().await;
}

fn read_csv_rows(text: &str) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_reader(text.as_bytes());
    r.records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect()
}

#[test]
fn csv_journal_entries_per_employee_balance_and_match_the_golden_file() {
    let dir = tempfile::tempdir().unwrap();
    let (text, rows) = write(
        dir.path(),
        r#"
[[sinks]]
type = "csv"
path = "journal.csv"
layout = "journal"
group_by = "vendor"
credit_account = "2000 Accounts Payable"
fields = { date = "spent", amount = "amount", account = "gl", name = "vendor", memo = "memo", class = "class" }
"#,
    );
    golden("journal.csv", &text);
    assert!(text.starts_with("entry_number,date,account,name,memo,class,debit,credit\r\n"));
    let parsed = read_csv_rows(&text);
    assert_eq!(rows as usize, parsed.len());
    let dec = |s: &str| {
        if s.is_empty() {
            Decimal::ZERO
        } else {
            s.parse::<Decimal>().unwrap()
        }
    };
    let mut per_entry: BTreeMap<String, (Decimal, Decimal)> = BTreeMap::new();
    for r in &parsed {
        let e = per_entry.entry(r[0].clone()).or_default();
        e.0 += dec(&r[6]);
        e.1 += dec(&r[7]);
        assert!(
            r[6].is_empty() != r[7].is_empty(),
            "one of debit/credit per row: {r:?}"
        );
    }
    assert_eq!(per_entry.len(), 3);
    for (entry, (dr, cr)) in per_entry {
        assert_eq!(dr, cr, "entry {entry} does not balance");
    }
    // Raj Rao: 33.10 + 0.01 debited, 33.11 credited to payables.
    let raj: Vec<_> = parsed.iter().filter(|r| r[0] == "Raj Rao").collect();
    assert_eq!(raj.last().unwrap()[2], "2000 Accounts Payable");
    assert_eq!(raj.last().unwrap()[7], "33.11");
}

#[test]
fn csv_bills_repeat_the_header_on_each_line_and_match_the_golden_file() {
    let dir = tempfile::tempdir().unwrap();
    let (text, _) = write(
        dir.path(),
        r#"
[[sinks]]
type = "csv"
preset = "excel"
path = "bills.csv"
layout = "bill"
group_by = "report"
credit_account = "2000 Accounts Payable"
fields = { date = "spent", amount = "amount", account = "gl", name = "vendor", memo = "memo" }
"#,
    );
    golden("bills.csv", &text);
    let parsed = read_csv_rows(text.trim_start_matches('\u{feff}'));
    for r in &parsed {
        let lines: Decimal = parsed
            .iter()
            .filter(|o| o[0] == r[0])
            .map(|o| o[7].parse::<Decimal>().unwrap())
            .sum();
        assert_eq!(
            r[4].parse::<Decimal>().unwrap(),
            lines,
            "bill total of {}",
            r[0]
        );
    }
    // The excel preset's formula protection applies to memos.
    assert!(text.contains(",'=fee,"), "{text}");
}
