//! Parsing only what a pipeline reads (the extraction plan) must yield
//! exactly the rows the full JSON tree yields: same verdicts, same cells,
//! same quarantine reasons, for every simulator record and for generated
//! records with hostile strings, nulls, nested paths, custom fields and
//! float-noise amounts in 0-, 2- and 3-decimal currencies.

mod common;

use std::path::Path;

use bytes::Bytes;
use expense_sync::extract::{Columns, FieldSet, PageSource, RecordRef, decode_page};
use expense_sync::row::Row;
use expense_sync::simulator::{Faults, SimConfig, Simulator};
use expense_sync::sources::fyle::default_columns;
use expense_sync::transforms::{
    ColumnSpec, Projector, TransformReport, TransformSpec, Transforms, Verdict,
};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Fyle's default expense columns plus a custom field, a nested index and a quoted key.
const COLUMNS: &str = r#"
[[columns]]
name = "cost_code"
custom_field = "Cost Code"

[[columns]]
name = "second_city"
path = "locations[1].city"

[[columns]]
name = "quoted"
path = 'extra."odd.key"'
"#;

/// Transforms that read nested paths no column reads (templates, dates,
/// coalesce, custom fields), columns that read only what they write, and
/// columns that read what a transform reads too.
const TRANSFORMS: &str = r#"
[[transforms]]
type = "filter"
field = "review.state"
op = "not_in"
value = ["DRAFT"]

[[transforms]]
type = "map"
field = "category.name"
target = "gl_account"
entries = { "Food" = "6100", "Travel" = "6200" }
on_missing = "default"
default = "6999"

[[transforms]]
type = "map"
field = "employee.title"
target = "dept_code"
entries = { "Sales" = "S" }
on_missing = "skip"

[[transforms]]
type = "derive"
target = "memo"
template = "{employee.user.nickname}: {notes} ({review.at:%m/%d/%Y}) {locations[0].town}"

[[transforms]]
type = "derive"
target = "original_amount"
coalesce = ["alt_amount", "review.amount"]

[[transforms]]
type = "derive"
target = "txn_date"
field = "review.at"
date_format = "%d.%m.%Y"

[[transforms]]
type = "custom_fields"
prefix = "cf_"

[[columns]]
name = "gl_account"
path = "gl_account"

[[columns]]
name = "memo"
path = "memo"

[[columns]]
name = "original_amount"
path = "original_amount"
type = "decimal"
scale = 4

[[columns]]
name = "txn_date"
path = "txn_date"

[[columns]]
name = "cf_cost_code"
path = "cf_cost_code"

[[columns]]
name = "dept_code"
path = "dept_code"

# Read by the columns and the transforms alike, and by a column alone.
[[columns]]
name = "category"
path = "category.name"

[[columns]]
name = "review_state"
path = "review.state"
"#;

struct Plan {
    transforms: Transforms,
    projector: Projector,
    fields: FieldSet,
}

/// The default columns and [`COLUMNS`] without transforms, or [`TRANSFORMS`] alone.
fn plan(with_transforms: bool) -> Plan {
    compile(with_transforms, false)
}

/// [`plan`] as the runner compiles it: the columns' values captured from the page.
fn captured_plan(with_transforms: bool) -> Plan {
    compile(with_transforms, true)
}

fn compile(with_transforms: bool, capture: bool) -> Plan {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        transforms: Vec<TransformSpec>,
        columns: Vec<ColumnSpec>,
    }
    let (file, mut columns) = if with_transforms {
        (TRANSFORMS, Vec::new())
    } else {
        (
            COLUMNS,
            default_columns("expenses").expect("expense defaults"),
        )
    };
    let file: File = toml::from_str(file).expect("test pipeline parses");
    columns.extend(file.columns);
    let transforms = Transforms::new(&file.transforms, Path::new(".")).expect("transforms");
    let mut projector = Projector::new(&columns).expect("columns");
    // What the runner compiles: columns, transforms, the cursor and `id`.
    let mut fields = FieldSet::nothing();
    if capture {
        projector.capture_fields(&mut fields, &transforms);
    } else {
        projector.read_fields(&mut fields);
    }
    transforms.read_fields(&mut fields);
    for key in ["updated_at", "id"] {
        if capture {
            fields.capture_key(key);
        } else {
            fields.add_key(key);
        }
    }
    assert!(!fields.is_everything());
    Plan {
        transforms,
        projector,
        fields,
    }
}

/// A record's verdict and row (or quarantine reason), as text to compare.
fn outcome(plan: &Plan, record: Value) -> String {
    outcome_with(plan, record, None)
}

/// [`outcome`] of a record read from a page, with its captured values.
fn outcome_with(plan: &Plan, mut record: Value, columns: Option<Columns<'_>>) -> String {
    let mut report = TransformReport::default();
    match plan.transforms.apply(&mut record, &mut report) {
        Verdict::Keep => match plan.projector.project_with(&record, columns) {
            Ok(row) => format!("row {:?}", row.cells),
            Err(e) => format!("quarantined {}: {}: {}", e.record_id, e.column, e.reason),
        },
        other => format!("{other:?} {:?}", report.skipped_records),
    }
}

fn assert_same_rows(plan: &Plan, text: &str) {
    let full: Value = serde_json::from_str(text).expect("valid JSON");
    let pruned = plan.fields.parse_record(text).expect("the plan parses it");
    assert_eq!(pruned, plan.fields.prune(&full), "pruned tree of {text}");
    assert_eq!(
        outcome(plan, pruned),
        outcome(plan, full),
        "plan and full tree disagree on {text}"
    );
}

/// The outcomes of `texts` read as one page with `plan` (captured values
/// included), and whether the page was read with a capture.
fn page_outcomes(plan: &Plan, texts: &[String]) -> (Vec<String>, bool) {
    let body = Bytes::from(format!(
        "{{\"count\": {}, \"data\": [{}]}}",
        texts.len(),
        texts.join(",\n")
    ));
    let page = decode_page(&plan.fields, &body).expect("valid page");
    let captured = page.columns.is_some();
    let data = page.data.expect("a data list");
    let positions = (0..data.len() as u32).collect();
    let source = PageSource::new(page.body, positions).with_columns(page.columns);
    let outcomes = data
        .into_iter()
        .enumerate()
        .map(|(i, record)| outcome_with(plan, record, source.columns(i)))
        .collect();
    (outcomes, captured)
}

/// Each record of `texts`, read as one page, projected into the one row the
/// records before it went into (as the runner reuses rows, quarantined
/// records included) equals its projection into a new row.
fn assert_reused_row_is_fresh(plan: &Plan, texts: &[String]) {
    let body = Bytes::from(format!(
        "{{\"count\": {}, \"data\": [{}]}}",
        texts.len(),
        texts.join(",\n")
    ));
    let page = decode_page(&plan.fields, &body).expect("valid page");
    let data = page.data.expect("a data list");
    let positions = (0..data.len() as u32).collect();
    let source = PageSource::new(page.body, positions).with_columns(page.columns);
    let mut row = Row { cells: Vec::new() };
    for (i, (mut record, text)) in data.into_iter().zip(texts).enumerate() {
        let mut report = TransformReport::default();
        if plan.transforms.apply(&mut record, &mut report) != Verdict::Keep {
            continue;
        }
        let fresh = plan
            .projector
            .project_with(&record, source.columns(i))
            .map_err(|e| e.to_string());
        let reused = plan
            .projector
            .project_into(&record, source.columns(i), &mut row)
            .map(|()| row.clone())
            .map_err(|e| e.to_string());
        assert_eq!(
            format!("{reused:?}"),
            format!("{fresh:?}"),
            "reused row disagrees on {text}"
        );
    }
}

/// Rows from captured page values equal the full tree's, record by record.
fn assert_same_rows_from_page(plan: &Plan, texts: &[String]) -> bool {
    let (got, captured) = page_outcomes(plan, texts);
    for (got, text) in got.iter().zip(texts) {
        let full: Value = serde_json::from_str(text).expect("valid JSON");
        assert_eq!(
            got,
            &outcome(plan, full),
            "captured values disagree on {text}"
        );
    }
    captured
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_yields_the_rows_of_the_full_tree_for_every_simulator_record() {
    let plan = plan(false);
    for (currency, noise) in [("USD", 0.0), ("USD", 0.2), ("JPY", 0.1), ("KWD", 0.1)] {
        let sim = Simulator::start(SimConfig {
            seed: 11,
            expenses: 300,
            currency: currency.into(),
            float_noise: noise,
            ..SimConfig::default()
        })
        .await
        .expect("simulator starts");
        let truth = sim.ground_truth("expenses");
        assert_eq!(truth.len(), 300);
        let rows = truth
            .iter()
            .map(|r| {
                let text = r.to_string();
                assert_same_rows(&plan, &text);
                outcome(&plan, r.clone())
            })
            .filter(|o| o.starts_with("row"))
            .count();
        assert!(rows > 0, "{currency}: some records must reach the columns");
        let texts: Vec<String> = truth.iter().map(Value::to_string).collect();
        for with_transforms in [false, true] {
            assert!(
                assert_same_rows_from_page(&captured_plan(with_transforms), &texts),
                "{currency}: a simulator page is read with its columns captured"
            );
        }
    }
}

fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ]{0,12}",
        Just(String::new()),
        Just("\"quoted\" \\ back\\slash".to_string()),
        Just("line\nbreak\ttab\r\u{0}nul".to_string()),
        Just("ünïcödé ✓ 日本 🎉".to_string()),
        Just("$serde_json::private::Number".to_string()),
        Just("Food".to_string()),
        Just("Sales".to_string()),
        Just("DRAFT".to_string()),
        Just("{memo}".to_string()),
        "\\PC{0,8}",
    ]
}

/// An amount as JSON number text: exact, float noise, 0 and 3 decimals, huge.
fn amount_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (0i64..100_000, 0u32..100).prop_map(|(a, c)| format!("{a}.{c:02}")),
        (0i64..100_000).prop_map(|a| a.to_string()),
        (0i64..100_000, 0u32..1000).prop_map(|(a, c)| format!("{a}.{c:03}")),
        (0i64..1000, 0u32..100).prop_map(|(a, c)| format!("{a}.{c:02}00000000000001")),
        (0i64..1000, 0u32..100).prop_map(|(a, c)| format!("-{a}.{c:02}9999999999999")),
        Just("1e3".to_string()),
        Just("123456789012345678901234567890.5".to_string()),
    ]
}

fn maybe<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = Option<T>> {
    prop::option::weighted(0.8, s)
}

fn str_or_null(s: Option<String>) -> Value {
    s.map_or(Value::Null, Value::String)
}

fn num_or_null(s: Option<String>) -> Value {
    s.map_or(Value::Null, |t| {
        serde_json::from_str(&t).expect("number text")
    })
}

prop_compose! {
    /// Fields only the transforms read, and junk nobody reads.
    fn extra()(
        odd in maybe(hostile_string()),
        review_state in maybe(prop_oneof![Just("DRAFT".to_string()), hostile_string()]),
        review_at in maybe(prop_oneof![Just("2024-03-05T10:00:00.000Z".to_string()), hostile_string()]),
        review_amount in maybe(amount_text()),
        alt_amount in maybe(amount_text()),
        notes in maybe(hostile_string()),
        junk in prop::collection::vec((hostile_string(), hostile_string()), 0..4),
    ) -> Vec<(String, Value)> {
        let mut fields = vec![
            ("extra".to_string(), json!({"odd.key": str_or_null(odd), "odd": {"key": "wrong"}})),
            ("review".to_string(), json!({"state": str_or_null(review_state), "at": str_or_null(review_at),
                                           "amount": num_or_null(review_amount)})),
            ("alt_amount".to_string(), num_or_null(alt_amount)),
            ("notes".to_string(), str_or_null(notes)),
        ];
        for (k, v) in junk {
            fields.push((k, json!({"deep": [v, {"x": [null, true]}]})));
        }
        fields
    }
}

prop_compose! {
    fn record()(
        id in prop_oneof![hostile_string().prop_map(Value::String), (0u64..1000).prop_map(Value::from)],
        state in maybe(prop_oneof![Just("APPROVED".to_string()), Just("DRAFT".to_string()), hostile_string()]),
        currency in maybe(prop_oneof![Just("USD"), Just("JPY"), Just("KWD"), Just("BHD"), Just("XXX")].prop_map(String::from)),
        amount in maybe(amount_text()),
        foreign_amount in maybe(amount_text()),
        tax in maybe(amount_text()),
        category in maybe(hostile_string()),
        dept in maybe(prop_oneof![Just("Sales".to_string()), hostile_string()]),
        email in maybe(hostile_string()),
        name in maybe(hostile_string()),
        purpose in maybe(hostile_string()),
        spent_at in maybe(prop_oneof![Just("2024-03-05T10:00:00.000Z".to_string()), Just("2024-02-29".to_string()), hostile_string()]),
        cities in prop::collection::vec(maybe(hostile_string()), 0..3),
        custom in prop::collection::vec((prop_oneof![Just("Cost Code".to_string()), hostile_string()], maybe(hostile_string())), 0..4),
        reimbursable in maybe(any::<bool>()),
        seq in maybe(0u64..100_000),
        title in maybe(prop_oneof![Just("Sales".to_string()), hostile_string()]),
        extra in extra().boxed(),
        employee_is_scalar in prop::bool::weighted(0.1),
    ) -> Value {
        let employee = if employee_is_scalar {
            json!("not an object")
        } else {
            json!({"user": {"email": str_or_null(email), "full_name": str_or_null(name.clone()),
                            "nickname": str_or_null(name), "extra": [1, {"a": null}]},
                   "department": {"name": str_or_null(dept)}, "code": 7, "title": str_or_null(title)})
        };
        let mut r = json!({
            "id": id,
            "updated_at": "2024-03-05T10:22:33.500000+00:00",
            "state": str_or_null(state),
            "currency": str_or_null(currency),
            "amount": num_or_null(amount),
            "foreign_amount": num_or_null(foreign_amount),
            "tax_amount": num_or_null(tax),
            "category": {"name": str_or_null(category), "code": null},
            "employee": employee,
            "purpose": str_or_null(purpose),
            "spent_at": str_or_null(spent_at),
            "is_reimbursable": reimbursable.map_or(Value::Null, Value::Bool),
            "seq_num": seq.map_or(Value::Null, Value::from),
            "locations": cities.into_iter().map(|c| json!({"city": str_or_null(c.clone()), "town": str_or_null(c), "lat": 1.5})).collect::<Vec<_>>(),
            "custom_fields": custom.into_iter().map(|(n, v)| json!({"name": n, "value": str_or_null(v)})).collect::<Vec<_>>(),
        });
        for (k, v) in extra {
            r.as_object_mut().unwrap().entry(k).or_insert(v);
        }
        r
    }
}

/// An `id` or cursor of any kind a server might send, or none (`None`).
fn any_top() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        hostile_string().prop_map(|s| Some(Value::String(s))),
        Just(Some(json!("2024-03-05T10:22:33.500000+00:00"))),
        Just(Some(json!("2024-03-05T10:22:33Z"))),
        (0u64..1000).prop_map(|n| Some(Value::from(n))),
        Just(Some(serde_json::from_str("-12.50e3").unwrap())),
        Just(Some(Value::Null)),
        Just(Some(json!(true))),
        Just(Some(json!({"id": "inner", "n": [1, 2]}))),
        Just(None),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A plain export builds no tree: paging, de-duplication and messages read
    /// `id` and the cursor from the page, and must read what the tree holds.
    #[test]
    fn the_id_and_cursor_read_from_the_page_are_the_ones_the_full_tree_holds(
        records in prop::collection::vec((record().boxed(), any_top(), any_top(), prop::option::of(any_top())), 1..5),
        t in any::<bool>(),
        pretty in any::<bool>(),
    ) {
        let plan = captured_plan(t);
        let texts: Vec<String> = records
            .into_iter()
            .map(|(mut r, id, at, repeated)| {
                let obj = r.as_object_mut().unwrap();
                for (key, value) in [("id", id), ("updated_at", at)] {
                    match value {
                        Some(v) => obj.insert(key.to_string(), v),
                        // Keeping the order: serde_json reads an object whose first key
                        // is its private number token as a number, not a record.
                        None => obj.shift_remove(key),
                    };
                }
                let text = if pretty { serde_json::to_string_pretty(&r).unwrap() } else { r.to_string() };
                match repeated {
                    // The same key twice: the last one counts, in the tree as in the page.
                    Some(first) => format!("{{\"id\": {}, {}", first.unwrap_or(json!(0)), &text[1..]),
                    None => text,
                }
            })
            .collect();
        let body = Bytes::from(format!("{{\"data\": [{}]}}", texts.join(",\n")));
        let page = decode_page(&plan.fields, &body).expect("valid page");
        // A page the fast path leaves to serde (a key with an escape) has no
        // capture: its records then hold `id` and the cursor themselves.
        let table = page.columns.as_ref();
        let data = page.data.expect("a data list");
        for (i, (record, text)) in data.iter().zip(&texts).enumerate() {
            let full: Value = serde_json::from_str(text).unwrap();
            let columns = table.and_then(|t| t.record(i));
            let (got, want) = (RecordRef::new(record, columns), RecordRef::new(&full, None));
            prop_assert_eq!(got.id(), want.id(), "{}", text);
            prop_assert_eq!(got.id_text(), want.id_text(), "{}", text);
            // What messages and the write-back have always called a record's id.
            let named = match full.get("id") {
                Some(Value::String(s)) => s.clone(),
                Some(v) if !v.is_null() => v.to_string(),
                _ => "<no id>".to_string(),
            };
            prop_assert_eq!(want.id_text(), named, "{}", text);
            prop_assert_eq!(got.str("updated_at"), want.str("updated_at"), "{}", text);
            if !t && table.is_some() {
                let built: Vec<&String> = record.as_object().unwrap().keys().collect();
                prop_assert!(!built.iter().any(|k| *k == "id" || *k == "updated_at"), "built {:?}", built);
            }
        }
    }

    #[test]
    fn plan_yields_the_rows_of_the_full_tree_for_generated_records(r in record(), pretty in any::<bool>()) {
        let text = if pretty { serde_json::to_string_pretty(&r).unwrap() } else { r.to_string() };
        assert_same_rows(&plan(false), &text);
        assert_same_rows(&plan(true), &text);
    }

    #[test]
    fn a_page_read_with_captured_columns_yields_the_rows_of_the_full_tree(records in prop::collection::vec(record().boxed(), 0..6), t in any::<bool>(), pretty in any::<bool>()) {
        let texts: Vec<String> = records
            .iter()
            .map(|r| if pretty { serde_json::to_string_pretty(r).unwrap() } else { r.to_string() })
            .collect();
        assert_same_rows_from_page(&captured_plan(t), &texts);
    }

    #[test]
    fn a_row_reused_for_the_next_record_holds_what_a_new_row_would(records in prop::collection::vec(record().boxed(), 1..8), t in any::<bool>()) {
        let texts: Vec<String> = records.iter().map(Value::to_string).collect();
        assert_reused_row_is_fresh(&plan(t), &texts);
        assert_reused_row_is_fresh(&captured_plan(t), &texts);
    }

    #[test]
    fn a_page_decodes_to_the_records_the_plan_parses(records in prop::collection::vec(record().boxed(), 0..6), t in any::<bool>()) {
        let plan = plan(t);
        let texts: Vec<String> = records.iter().map(|r| r.to_string()).collect();
        let body = Bytes::from(format!(
            "{{\"count\": {}, \"offset\": 0, \"data\": [{}]}}",
            texts.len(),
            texts.join(", ")
        ));
        let page = decode_page(&plan.fields, &body).expect("valid page");
        prop_assert_eq!(page.count.map(|c| c.to_string()), Some(texts.len().to_string()));
        let data = page.data.expect("a data list");
        prop_assert_eq!(data.len(), texts.len());
        for (got, text) in data.iter().zip(&texts) {
            prop_assert_eq!(got, &plan.fields.parse_record(text).unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_with_invalid_json_are_retried_and_every_record_is_exported() {
    let sim = Simulator::start(SimConfig {
        seed: 5,
        expenses: 450,
        faults: Faults {
            cut_json_bodies: 3,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts");
    let out = tempfile::tempdir().unwrap();
    let text = common::pipeline_text(
        &sim,
        "cut",
        "page_size = 100",
        "initial_backoff = \"10ms\"\nmax_backoff = \"50ms\"",
    );
    let (_, outcome) = common::run_text(&sim, &text, out.path()).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert!(
        outcome.summary.http.transport_errors >= 3,
        "the cut bodies were seen and retried: {:?}",
        outcome.summary.http
    );
    let truth = common::truth_by_id(&sim);
    let (_, rows) = common::csv_by_id(&out.path().join("cut.csv"));
    assert_eq!(rows.len(), truth.len());
    assert!(rows.keys().eq(truth.keys()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantined_records_are_written_whole_as_the_server_sent_them() {
    // Fils (3 decimals) do not fit the test columns' 2-place amount.
    let sim = Simulator::start(SimConfig {
        seed: 9,
        expenses: 200,
        currency: "KWD".into(),
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts");
    let out = tempfile::tempdir().unwrap();
    let text = common::pipeline_text(&sim, "q", "", "");
    let (_, outcome) = common::run_text(&sim, &text, out.path()).await;
    assert!(outcome.summary.quarantined > 0, "{:?}", outcome.summary);
    let truth = common::truth_by_id(&sim);
    let file = common::files_in(out.path())
        .into_iter()
        .find(|f| f.to_string_lossy().ends_with(".quarantine.jsonl"))
        .expect("a quarantine file");
    let lines = std::fs::read_to_string(out.path().join(file)).unwrap();
    let mut seen = 0;
    for line in lines.lines() {
        let q: Value = serde_json::from_str(line).expect("one JSON object per line");
        let id = q["record_id"].as_str().unwrap();
        assert_eq!(q["column"], "amount");
        // Every field, not only the ones the columns read.
        assert_eq!(q["record"], truth[id], "quarantined record {id}");
        seen += 1;
    }
    assert_eq!(seen, outcome.summary.quarantined);
}
