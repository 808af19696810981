//! The money policy end to end: float-noise amounts, currencies with 0 and 3
//! minor units under the default columns, and the expense selections that
//! `preset` and `fund_source` stand for.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;
use std::str::FromStr;

use arrow::array::{Array, Decimal128Array, StringArray};
use arrow::datatypes::DataType;
use common::*;
use expense_sync::simulator::{SimConfig, Simulator};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rust_decimal::{Decimal, RoundingStrategy};

async fn start(expenses: usize, seed: u64, f: impl FnOnce(&mut SimConfig)) -> Simulator {
    let mut cfg = SimConfig {
        seed,
        expenses,
        rate_limit: None,
        ..SimConfig::default()
    };
    f(&mut cfg);
    Simulator::start(cfg).await.expect("simulator starts")
}

/// A pipeline with the default expense columns (no `[[columns]]`), writing CSV and Parquet.
fn default_columns_pipeline(sim: &Simulator, name: &str, extra_source: &str) -> String {
    format!(
        r#"
[pipeline]
name = "{name}"

[connection]
accounts_url = "{accounts}"
client_id = {{ env = "FYLE_CLIENT_ID" }}
client_secret = {{ env = "FYLE_CLIENT_SECRET" }}
refresh_token = {{ env = "FYLE_REFRESH_TOKEN" }}

[source]
type = "fyle"
resource = "expenses"
safety_lag = "0s"
{extra_source}

[[sinks]]
type = "csv"
path = "{{pipeline}}.csv"
manifest = true

[[sinks]]
type = "parquet"
path = "{{pipeline}}.parquet"
"#,
        accounts = sim.accounts_url()
    )
}

/// The exact decimal of a JSON number's text.
fn text_decimal(v: &serde_json::Value) -> Option<Decimal> {
    if v.is_null() {
        return None;
    }
    Some(Decimal::from_str(&v.to_string()).expect("a plain decimal"))
}

/// Decimal columns of a Parquet file by name: (declared scale, id → value).
fn parquet_decimals(path: &Path, column: &str) -> (i8, BTreeMap<String, Option<Decimal>>) {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    let schema = builder.schema().clone();
    let DataType::Decimal128(_, scale) = schema.field_with_name(column).unwrap().data_type() else {
        panic!("{column} is not a decimal column");
    };
    let scale = *scale;
    let id_idx = schema.index_of("expense_id").unwrap();
    let col_idx = schema.index_of(column).unwrap();
    let mut out = BTreeMap::new();
    for batch in builder.build().unwrap() {
        let batch = batch.unwrap();
        let ids = batch.column(id_idx);
        let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
        let values = batch.column(col_idx);
        let values = values.as_any().downcast_ref::<Decimal128Array>().unwrap();
        for i in 0..batch.num_rows() {
            let v = (!values.is_null(i))
                .then(|| Decimal::from_i128_with_scale(values.value(i), scale as u32));
            out.insert(ids.value(i).to_string(), v);
        }
    }
    (scale, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn float_noise_amounts_export_exactly_without_quarantine_and_are_counted() {
    let sim = start(600, 31, |c| c.float_noise = 0.1).await;
    let out = tempfile::tempdir().unwrap();
    let (_, outcome) = run_text(
        &sim,
        &default_columns_pipeline(&sim, "noise", ""),
        out.path(),
    )
    .await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(outcome.summary.quarantined, 0);
    assert_eq!(outcome.exit_code(), expense_sync::ExitCode::Ok);

    let truth = truth_by_id(&sim);
    let mut noisy = 0u64;
    for r in truth.values() {
        for field in ["amount", "tax_amount"] {
            if let Some(d) = text_decimal(&r[field])
                && d.scale() > 2
            {
                noisy += 1;
            }
        }
    }
    assert!(
        noisy > 20,
        "the switch should produce noisy amounts; saw {noisy}"
    );
    assert_eq!(outcome.summary.amounts_normalised, noisy);

    // The intended amount is the noisy one to the cent; a float error is far below it.
    let cents = |d: Decimal| {
        let mut c = d.round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven);
        c.rescale(2);
        c
    };
    let (header, rows) = csv_by_id(&out.path().join("noise.csv"));
    assert_eq!(rows.len(), truth.len());
    let a = header.iter().position(|h| h == "amount").unwrap();
    let t = header.iter().position(|h| h == "tax_amount").unwrap();
    let (_, parquet_amounts) = parquet_decimals(&out.path().join("noise.parquet"), "amount");
    for (id, row) in &rows {
        let want = text_decimal(&truth[id]["amount"]).map(cents).unwrap();
        assert_eq!(row[a], want.to_string(), "amount of {id}");
        assert_eq!(parquet_amounts[id], Some(want), "parquet amount of {id}");
        let want_tax = text_decimal(&truth[id]["tax_amount"]).map(cents);
        assert_eq!(
            row[t],
            want_tax.map(|d| d.to_string()).unwrap_or_default(),
            "tax of {id}"
        );
    }
    let sum: Decimal = truth
        .values()
        .filter_map(|r| text_decimal(&r["amount"]).map(cents))
        .sum();
    assert_eq!(
        manifest_total(&out.path().join("noise.csv"), "USD", "amount"),
        sum
    );
    sim.shutdown().await;
}

/// The manifest's total of `column` for `currency`, beside the CSV file `csv`.
fn manifest_total(csv: &Path, currency: &str, column: &str) -> Decimal {
    let mut name = csv.file_name().unwrap().to_os_string();
    name.push(".manifest.json");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(csv.with_file_name(name)).unwrap()).unwrap();
    let v = &m["totals"][currency][column];
    Decimal::from_str(v.to_string().trim_matches('"')).unwrap_or_else(|_| panic!("{m}"))
}

/// Exports an org in `currency` with the default columns and checks CSV
/// text and Parquet values against the simulator's amounts.
async fn currency_exports_exactly(currency: &str, digits: u32, seed: u64) {
    let sim = start(400, seed, |c| c.currency = currency.into()).await;
    let out = tempfile::tempdir().unwrap();
    let (_, outcome) = run_text(&sim, &default_columns_pipeline(&sim, "cur", ""), out.path()).await;
    assert!(outcome.error.is_none(), "{currency}: {:?}", outcome.error);
    assert_eq!(outcome.summary.quarantined, 0, "{currency}");
    assert_eq!(outcome.summary.amounts_normalised, 0, "{currency}");

    let truth = truth_by_id(&sim);
    let (header, rows) = csv_by_id(&out.path().join("cur.csv"));
    assert_eq!(rows.len(), truth.len(), "{currency}");
    let a = header.iter().position(|h| h == "amount").unwrap();
    let c = header.iter().position(|h| h == "currency").unwrap();
    let (scale, parquet_amounts) = parquet_decimals(&out.path().join("cur.parquet"), "amount");
    assert_eq!(
        scale, 3,
        "Parquet amounts hold every currency's minor units"
    );
    let mut with_all_digits = 0;
    for (id, row) in &rows {
        assert_eq!(row[c], currency);
        let want = text_decimal(&truth[id]["amount"]).unwrap();
        // CSV prints the currency's minor units, no more and no fewer.
        let mut shown = want;
        shown.rescale(digits);
        assert_eq!(row[a], shown.to_string(), "{currency} amount of {id}");
        assert_eq!(Decimal::from_str(&row[a]).unwrap(), want);
        assert_eq!(
            parquet_amounts[id],
            Some(want),
            "{currency} parquet amount of {id}"
        );
        if want.normalize().scale() == digits && digits > 0 {
            with_all_digits += 1;
        }
    }
    if digits == 3 {
        assert!(
            with_all_digits > 50,
            "few 3-decimal amounts: {with_all_digits}"
        );
    }
    let sum: Decimal = truth
        .values()
        .filter_map(|r| text_decimal(&r["amount"]))
        .sum();
    assert_eq!(
        manifest_total(&out.path().join("cur.csv"), currency, "amount"),
        sum
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kwd_amounts_keep_three_decimals_with_default_columns() {
    currency_exports_exactly("KWD", 3, 32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jpy_amounts_export_as_whole_yen_with_default_columns() {
    currency_exports_exactly("JPY", 0, 33).await;
}

/// The expense-list queries sent after the first `skip` logged requests,
/// decoded, without the pager's own parameters and cursor bounds.
fn selection_queries(sim: &Simulator, skip: usize) -> BTreeSet<Vec<(String, String)>> {
    sim.request_log()
        .into_iter()
        .skip(skip)
        .filter(|r| r.path.ends_with("/admin/expenses") && r.status == 200)
        // The run's one server-clock probe selects nothing.
        .filter(|r| r.query != "limit=1")
        .map(|r| {
            let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(r.query.as_bytes())
                .into_owned()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "offset" | "limit" | "order" | "and" | "or")
                        && !k.ends_with("_at")
                })
                .collect();
            pairs.sort();
            pairs
        })
        .collect()
}

/// Which expenses a selection takes.
type Selects = fn(&serde_json::Value) -> bool;
/// A `fund_source` (or none), the query pairs it adds, and what it selects.
type FundCase = (Option<&'static str>, Vec<(String, String)>, Selects);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presets_and_fund_sources_send_the_documented_queries_and_export_the_ground_truth() {
    let cash = "PERSONAL_CASH_ACCOUNT";
    let card = "PERSONAL_CORPORATE_CREDIT_CARD_ACCOUNT";
    let advance = "PERSONAL_ADVANCE_ACCOUNT";
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
    let presets: [(&str, &str, &str, &[&str]); 3] = [
        (
            "approved",
            "in.(APPROVED,PAYMENT_PROCESSING,PAID)",
            "report_last_approved_at",
            &["APPROVED", "PAYMENT_PROCESSING", "PAID"],
        ),
        ("paid", "eq.PAID", "report_last_paid_at", &["PAID"]),
        (
            "settled",
            "in.(PAYMENT_PROCESSING,PAID)",
            "last_settled_at",
            &["PAYMENT_PROCESSING", "PAID"],
        ),
    ];
    let funds: [FundCase; 4] = [
        (
            None,
            vec![pair("source_account->type", &format!("in.({cash},{card})"))],
            |r| {
                matches!(
                    r["source_account"]["type"].as_str(),
                    Some("PERSONAL_CASH_ACCOUNT" | "PERSONAL_CORPORATE_CREDIT_CARD_ACCOUNT")
                )
            },
        ),
        (
            Some("reimbursable"),
            vec![
                pair("is_reimbursable", "eq.true"),
                pair("source_account->type", &format!("eq.{cash}")),
            ],
            |r| {
                r["source_account"]["type"] == "PERSONAL_CASH_ACCOUNT"
                    && r["is_reimbursable"] == true
            },
        ),
        (
            Some("corporate_card"),
            vec![pair("source_account->type", &format!("eq.{card}"))],
            |r| r["source_account"]["type"] == "PERSONAL_CORPORATE_CREDIT_CARD_ACCOUNT",
        ),
        (
            Some("advance"),
            vec![pair("source_account->type", &format!("eq.{advance}"))],
            |r| r["source_account"]["type"] == "PERSONAL_ADVANCE_ACCOUNT",
        ),
    ];

    let sim = start(1200, 34, |c| c.non_reimbursable_cash = 0.2).await;
    let truth = sim.ground_truth("expenses");
    assert!(
        truth
            .iter()
            .any(|r| r["source_account"]["type"] == "PERSONAL_CASH_ACCOUNT"
                && r["is_reimbursable"] == false),
        "the switch should produce non-reimbursable cash expenses"
    );
    let mut log_seen = 0;
    for (preset, state, cursor, states) in presets {
        for (fund, fund_pairs, selects) in &funds {
            let label = format!("{preset}/{fund:?}");
            let extra = match fund {
                Some(f) => format!("preset = \"{preset}\"\nfund_source = \"{f}\""),
                None => format!("preset = \"{preset}\""),
            };
            let out = tempfile::tempdir().unwrap();
            let (_, outcome) =
                run_text(&sim, &pipeline_text(&sim, "sel", &extra, ""), out.path()).await;
            assert!(outcome.error.is_none(), "{label}: {:?}", outcome.error);

            let mut want: Vec<(String, String)> = fund_pairs.clone();
            want.push(pair("state", state));
            want.sort();
            let sent = selection_queries(&sim, log_seen);
            log_seen = sim.request_log().len();
            assert_eq!(
                sent,
                BTreeSet::from([want]),
                "{label}: the query sent is the documented one"
            );

            let expected: BTreeSet<String> = truth
                .iter()
                .filter(|r| states.contains(&r["state"].as_str().unwrap_or("")))
                .filter(|r| r[cursor].is_string())
                .filter(|r| selects(r))
                .map(|r| r["id"].as_str().unwrap().to_string())
                .collect();
            let (_, rows) = csv_by_id(&out.path().join("sel.csv"));
            let got: BTreeSet<String> = rows.keys().cloned().collect();
            assert_eq!(got, expected, "{label}");
        }
    }
    sim.shutdown().await;
}

/// A pipeline with one `amount` column of 2 places and the given rounding.
fn two_place_pipeline(sim: &Simulator, name: &str, rounding: &str) -> String {
    format!(
        r#"
[pipeline]
name = "{name}"

[connection]
accounts_url = "{accounts}"
client_id = {{ env = "FYLE_CLIENT_ID" }}
client_secret = {{ env = "FYLE_CLIENT_SECRET" }}
refresh_token = {{ env = "FYLE_REFRESH_TOKEN" }}

[source]
type = "fyle"
resource = "expenses"
safety_lag = "0s"

[[columns]]
name = "expense_id"
path = "id"

[[columns]]
name = "amount"
path = "amount"
type = "decimal"
scale = 2
rounding = "{rounding}"

[[sinks]]
type = "csv"
path = "{{pipeline}}.csv"
"#,
        accounts = sim.accounts_url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genuinely_over_precise_amounts_follow_the_columns_rounding() {
    // Fils in a 2-place column are real extra decimals, not float noise.
    let sim = start(300, 35, |c| {
        c.currency = "KWD".into();
        c.float_noise = 0.2;
    })
    .await;
    let truth = truth_by_id(&sim);
    let exact = |r: &serde_json::Value| {
        let d = text_decimal(&r["amount"]).unwrap();
        // Noise printed by the simulator stands for the 3-decimal amount.
        d.round_dp_with_strategy(3, RoundingStrategy::MidpointNearestEven)
    };
    let over_precise: BTreeSet<String> = truth
        .iter()
        .filter(|(_, r)| exact(r).normalize().scale() > 2)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(over_precise.len() > 50, "{}", over_precise.len());

    let out = tempfile::tempdir().unwrap();
    let (_, outcome) = run_text(
        &sim,
        &two_place_pipeline(&sim, "strict", "error"),
        out.path(),
    )
    .await;
    assert_eq!(outcome.exit_code(), expense_sync::ExitCode::Partial);
    assert_eq!(outcome.summary.quarantined, over_precise.len() as u64);
    let (_, rows) = csv_by_id(&out.path().join("strict.csv"));
    assert!(rows.keys().all(|id| !over_precise.contains(id)));
    assert_eq!(rows.len() + over_precise.len(), truth.len());

    for (rounding, strategy) in [
        ("half_even", RoundingStrategy::MidpointNearestEven),
        ("half_up", RoundingStrategy::MidpointAwayFromZero),
    ] {
        let out = tempfile::tempdir().unwrap();
        let (_, outcome) = run_text(
            &sim,
            &two_place_pipeline(&sim, rounding, rounding),
            out.path(),
        )
        .await;
        assert!(outcome.error.is_none(), "{rounding}: {:?}", outcome.error);
        assert_eq!(outcome.summary.quarantined, 0, "{rounding}");
        let (_, rows) = csv_by_id(&out.path().join(format!("{rounding}.csv")));
        assert_eq!(rows.len(), truth.len());
        for (id, row) in &rows {
            let mut want = exact(&truth[id]).round_dp_with_strategy(2, strategy);
            want.rescale(2);
            assert_eq!(row[1], want.to_string(), "{rounding} amount of {id}");
        }
    }
    sim.shutdown().await;
}
