use std::str::FromStr;

use chrono::{NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::*;
use crate::sources::fyle::default_columns;

fn fixture() -> Value {
    serde_json::from_str(include_str!("testdata/expense.json")).unwrap()
}

fn dec(s: &str) -> Cell {
    Cell::Decimal(Decimal::from_str(s).unwrap())
}

fn spec(toml_text: &str) -> Vec<ColumnSpec> {
    #[derive(Deserialize)]
    struct File {
        columns: Vec<ColumnSpec>,
    }
    toml::from_str::<File>(toml_text).unwrap().columns
}

fn keys(problems: &[Problem]) -> Vec<&str> {
    problems.iter().map(|p| p.key.as_str()).collect()
}

fn one(column: ColumnSpec, record: Value) -> Result<Cell, RecordError> {
    let p = Projector::new(&[column]).unwrap();
    p.project(&record).map(|mut r| r.cells.remove(0))
}

#[test]
fn realistic_expense_projects_nested_paths_and_custom_fields() {
    let cols = spec(
        r#"
        [[columns]]
        name = "id"
        path = "id"
        [[columns]]
        name = "email"
        path = "employee.user.email"
        [[columns]]
        name = "city"
        path = "locations[0].city"
        [[columns]]
        name = "cost_code"
        custom_field = "Cost Code"
        [[columns]]
        name = "attendees"
        custom_field = "Attendees"
        [[columns]]
        name = "hours"
        custom_field = "Client Billable Hours"
        type = "integer"
        [[columns]]
        name = "offsite"
        custom_field = "Is Offsite"
        type = "bool"
        [[columns]]
        name = "venue"
        custom_field = "Venue"
        [[columns]]
        name = "po"
        custom_field = "PO Number"
        [[columns]]
        name = "missing_cf"
        custom_field = "No Such Field"
        [[columns]]
        name = "amount"
        path = "amount"
        type = "decimal"
        [[columns]]
        name = "spent"
        path = "spent_at"
        type = "date"
        [[columns]]
        name = "approved"
        path = "report.last_approved_at"
        type = "timestamp"
        [[columns]]
        name = "billable"
        path = "is_billable"
        type = "bool"
        [[columns]]
        name = "cost_center_id"
        path = "cost_center_id"
        type = "integer"
        [[columns]]
        name = "sub_project"
        path = "project.sub_project"
        [[columns]]
        name = "merchant"
        path = "merchant"
        [[columns]]
        name = "file_ids"
        path = "file_ids"
        "#,
    );
    let p = Projector::new(&cols).unwrap();
    let row = p.project(&fixture()).unwrap();
    let expected = vec![
        Cell::Str("txAbC123dEf".into()),
        Cell::Str("priya.sharma@acme.example".into()),
        Cell::Str("Zürich".into()),
        Cell::Str("CC-7781".into()),
        Cell::Str("Ana, Bo, Jr., Chen".into()),
        Cell::Int(12),
        Cell::Bool(false),
        Cell::Str(r#"{"city":"Zürich","display_name":"Kronenhalle"}"#.into()),
        Cell::Null,
        Cell::Null,
        dec("-1234.50"),
        Cell::Date(NaiveDate::from_ymd_opt(2024, 3, 4).unwrap()),
        // 09:00:00.5+05:30 is 03:30:00.5 UTC.
        Cell::Timestamp(
            Utc.with_ymd_and_hms(2024, 3, 6, 3, 30, 0).unwrap()
                + chrono::Duration::milliseconds(500),
        ),
        Cell::Bool(true),
        Cell::Int(4021),
        Cell::Null,
        Cell::Str("Café \"Zürich\", Ltd.\r\nBranch 2".into()),
        Cell::Str("fiXyZ".into()),
    ];
    assert_eq!(row.cells, expected);
    assert_eq!(p.schema().columns.len(), expected.len());
    assert_eq!(
        p.schema().columns[10].ty,
        ColumnType::Decimal {
            precision: 18,
            scale: 2
        }
    );
}

#[test]
fn default_expense_columns_compile_and_resolve_against_the_fixture() {
    for resource in [
        "expenses",
        "reports",
        "employees",
        "categories",
        "projects",
        "cost_centers",
    ] {
        let cols = default_columns(resource).unwrap();
        Projector::new(&cols).unwrap_or_else(|p| panic!("{resource}: {p:?}"));
    }
    assert!(default_columns("widgets").is_none());
    let p = Projector::new(&default_columns("expenses").unwrap()).unwrap();
    let row = p.project(&fixture()).unwrap();
    let get = |name: &str| {
        let i = p
            .schema()
            .columns
            .iter()
            .position(|c| c.name == name)
            .unwrap();
        row.cells[i].clone()
    };
    assert_eq!(get("amount"), dec("-1234.50"));
    assert_eq!(get("foreign_amount"), dec("-1133.255"));
    assert_eq!(get("tax_amount"), dec("0.10"));
    assert_eq!(
        get("fund_source"),
        Cell::Str("PERSONAL_CASH_ACCOUNT".into())
    );
    assert_eq!(get("report_number"), Cell::Str("C/2024/03/R/7".into()));
    assert_eq!(get("department"), Cell::Str("Sales".into()));
    assert!(matches!(get("settled_at"), Cell::Timestamp(_)));
    assert!(matches!(get("spent_date"), Cell::Date(_)));
}

#[test]
fn decimals_are_exact_and_never_pass_through_f64() {
    let col = || ColumnSpec::path("amount", "v").decimal(2);
    for (json_text, expected) in [
        ("0.1", "0.10"),
        ("-1234.50", "-1234.50"),
        ("123456789012.34", "123456789012.34"),
        ("1500", "1500.00"),
        ("\"42.5\"", "42.50"),
        ("1.5e3", "1500.00"),
        ("12.300", "12.30"),
        ("-0.00", "0.00"),
    ] {
        let record: Value = serde_json::from_str(&format!(r#"{{"v": {json_text}}}"#)).unwrap();
        let cell = one(col(), record).unwrap();
        assert_eq!(cell, dec(expected), "{json_text}");
        let Cell::Decimal(d) = cell else {
            unreachable!()
        };
        assert_eq!(d.scale(), 2, "{json_text}");
        assert_eq!(d.to_string(), expected, "{json_text}");
    }
}

#[test]
fn extra_decimal_places_are_rejected_unless_rounding_is_chosen() {
    let record: Value = serde_json::from_str(r#"{"id": "tx9", "v": 2.345}"#).unwrap();
    let err = one(ColumnSpec::path("amount", "v").decimal(2), record.clone()).unwrap_err();
    assert_eq!(err.record_id, "tx9");
    assert_eq!(err.column, "amount");
    assert!(err.reason.contains("2.345"), "{err}");
    assert!(err.to_string().starts_with("record tx9: column `amount`: "));

    let mut half_even = ColumnSpec::path("amount", "v").decimal(2);
    half_even.rounding = Some(Rounding::HalfEven);
    assert_eq!(one(half_even.clone(), record.clone()).unwrap(), dec("2.34"));
    let mut half_up = ColumnSpec::path("amount", "v").decimal(2);
    half_up.rounding = Some(Rounding::HalfUp);
    assert_eq!(one(half_up, record).unwrap(), dec("2.35"));
    let odd: Value = serde_json::from_str(r#"{"v": 2.355}"#).unwrap();
    assert_eq!(one(half_even, odd).unwrap(), dec("2.36"));
}

#[test]
fn decimals_beyond_precision_are_record_errors() {
    let mut col = ColumnSpec::path("amount", "v").decimal(2);
    col.precision = Some(5);
    let ok: Value = serde_json::from_str(r#"{"v": 999.99}"#).unwrap();
    assert_eq!(one(col.clone(), ok).unwrap(), dec("999.99"));
    let too_big: Value = serde_json::from_str(r#"{"v": 1000.00}"#).unwrap();
    let err = one(col, too_big).unwrap_err();
    assert!(err.reason.contains("precision"), "{err}");
    let huge: Value = serde_json::from_str(r#"{"v": 1e40}"#).unwrap();
    assert!(one(ColumnSpec::path("a", "v").decimal(2), huge).is_err());
    for bad in [r#""12,50""#, r#""$3""#, "true", r#""""#, "[1]"] {
        let r: Value = serde_json::from_str(&format!(r#"{{"v": {bad}}}"#)).unwrap();
        assert!(
            one(ColumnSpec::path("a", "v").decimal(2), r).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn bad_timestamp_names_record_column_and_value() {
    let record = json!({"id": "tx123", "created_at": "05/03/2024 10:22"});
    let col = ColumnSpec::path("created", "created_at").typed(TypeName::Timestamp);
    let err = one(col, record).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("record tx123: column `created`: "),
        "{text}"
    );
    assert!(text.contains("05/03/2024 10:22"), "{text}");
}

#[test]
fn timestamps_accept_offsets_z_and_fractions() {
    let col = || ColumnSpec::path("t", "t").typed(TypeName::Timestamp);
    let at = |s: &str| one(col(), json!({ "t": s })).unwrap();
    let base = Utc.with_ymd_and_hms(2024, 3, 5, 10, 22, 33).unwrap();
    assert_eq!(at("2024-03-05T10:22:33Z"), Cell::Timestamp(base));
    assert_eq!(at("2024-03-05T10:22:33+00:00"), Cell::Timestamp(base));
    assert_eq!(at("2024-03-05T15:52:33+05:30"), Cell::Timestamp(base));
    assert_eq!(
        at("2024-03-05T10:22:33.123456+00:00"),
        Cell::Timestamp(base + chrono::Duration::microseconds(123_456))
    );
    // Nanoseconds are cut to microseconds, the finest unit both sinks hold.
    assert_eq!(
        at("2024-03-05T10:22:33.123456789Z"),
        Cell::Timestamp(base + chrono::Duration::microseconds(123_456))
    );
    assert!(one(col(), json!({"t": "2024-03-05"})).is_err());
    assert!(one(col(), json!({"t": 1709634153})).is_err());
}

#[test]
fn dates_accept_plain_dates_and_timestamps_in_utc() {
    let col = || ColumnSpec::path("d", "d").typed(TypeName::Date);
    let d = |y, m, day| Cell::Date(NaiveDate::from_ymd_opt(y, m, day).unwrap());
    assert_eq!(
        one(col(), json!({"d": "2024-02-29"})).unwrap(),
        d(2024, 2, 29)
    );
    assert_eq!(
        one(col(), json!({"d": "2024-03-01T02:00:00+05:30"})).unwrap(),
        d(2024, 2, 29)
    );
    assert!(one(col(), json!({"d": "2023-02-29"})).is_err());
    assert!(one(col(), json!({"d": "2024-3-5"})).is_err());
}

#[test]
fn bools_integers_and_strings_convert_by_the_rules() {
    let b = || ColumnSpec::path("b", "v").typed(TypeName::Bool);
    assert_eq!(one(b(), json!({"v": "true"})).unwrap(), Cell::Bool(true));
    assert_eq!(one(b(), json!({"v": false})).unwrap(), Cell::Bool(false));
    assert!(one(b(), json!({"v": 1})).is_err());

    let i = || ColumnSpec::path("i", "v").typed(TypeName::Integer);
    assert_eq!(one(i(), json!({"v": 42})).unwrap(), Cell::Int(42));
    assert_eq!(one(i(), json!({"v": "-7"})).unwrap(), Cell::Int(-7));
    let r: Value = serde_json::from_str(r#"{"v": 3.0}"#).unwrap();
    assert_eq!(one(i(), r).unwrap(), Cell::Int(3));
    let r: Value = serde_json::from_str(r#"{"v": 3.5}"#).unwrap();
    assert!(one(i(), r).unwrap_err().reason.contains("fractional"));
    let r: Value = serde_json::from_str(r#"{"v": 92233720368547758070}"#).unwrap();
    assert!(one(i(), r).is_err());

    let s = || ColumnSpec::path("s", "v");
    let r: Value = serde_json::from_str(r#"{"v": 0.1000000000000000055511151231257827}"#).unwrap();
    assert_eq!(
        one(s(), r).unwrap(),
        Cell::Str("0.1000000000000000055511151231257827".into())
    );
    assert_eq!(
        one(s(), json!({"v": true})).unwrap(),
        Cell::Str("true".into())
    );
    assert_eq!(
        one(s(), json!({"v": [1, "a", null, false]})).unwrap(),
        Cell::Str("1, a, false".into())
    );
    assert_eq!(
        one(s(), json!({"v": [{"a": 1}]})).unwrap(),
        Cell::Str(r#"[{"a":1}]"#.into())
    );
}

#[test]
fn missing_and_null_are_null_for_every_type() {
    for ty in [
        TypeName::String,
        TypeName::Decimal,
        TypeName::Timestamp,
        TypeName::Date,
        TypeName::Bool,
        TypeName::Integer,
    ] {
        let col = ColumnSpec::path("c", "a.b").typed(ty);
        assert_eq!(
            one(col.clone(), json!({"a": {"b": null}})).unwrap(),
            Cell::Null
        );
        assert_eq!(one(col.clone(), json!({"a": null})).unwrap(), Cell::Null);
        assert_eq!(one(col, json!({})).unwrap(), Cell::Null);
    }
}

#[test]
fn config_problems_are_keyed_by_column_and_field() {
    let cols = spec(
        r#"
        [[columns]]
        name = "a"
        path = "a..b"
        [[columns]]
        name = "b"
        [[columns]]
        name = "c"
        path = "c"
        custom_field = "C"
        [[columns]]
        name = "a"
        path = "x"
        scale = 3
        [[columns]]
        name = "e"
        path = "e"
        type = "decimal"
        precision = 39
        [[columns]]
        name = "f"
        path = "f"
        type = "decimal"
        precision = 4
        scale = 5
        [[columns]]
        name = ""
        path = "g"
        type = "timestamp"
        rounding = "half_up"
        "#,
    );
    let problems = Projector::new(&cols).unwrap_err();
    assert_eq!(
        keys(&problems),
        vec![
            "columns[0].path",
            "columns[1].path",
            "columns[2].custom_field",
            "columns[3].name",
            "columns[3].scale",
            "columns[4].precision",
            "columns[5].scale",
            "columns[6].name",
            "columns[6].rounding",
        ],
        "{problems:#?}"
    );
    assert!(problems[3].message.contains("columns[0]"));
    assert_eq!(keys(&Projector::new(&[]).unwrap_err()), vec!["columns"]);
}

#[test]
fn unknown_column_keys_and_types_are_rejected_by_serde() {
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct File {
        columns: Vec<ColumnSpec>,
    }
    let err = toml::from_str::<File>("[[columns]]\nname = \"a\"\npath = \"a\"\nscael = 2\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `scael`"), "{err}");
    let err = toml::from_str::<File>("[[columns]]\nname = \"a\"\npath = \"a\"\ntype = \"money\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown variant `money`"), "{err}");
    let err = toml::from_str::<File>(
        "[[columns]]\nname = \"a\"\npath = \"a\"\ntype = \"decimal\"\nrounding = \"up\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("half_even"), "{err}");
}

#[test]
fn record_without_id_is_reported_as_such() {
    let col = ColumnSpec::path("b", "v").typed(TypeName::Bool);
    let err = one(col, json!({"v": "yes"})).unwrap_err();
    assert_eq!(err.record_id, "<no id>");
    assert!(err.reason.contains("\"yes\""), "{err}");
}

#[test]
fn currency_scale_columns_are_checked_and_store_three_places() {
    let cols = spec(
        r#"
        [[columns]]
        name = "amount"
        path = "amount"
        type = "decimal"
        scale = "currency"

        [[columns]]
        name = "foreign"
        path = "foreign_amount"
        type = "decimal"
        scale = "currency"
        currency_path = "foreign_currency"
        "#,
    );
    let p = Projector::new(&cols).unwrap();
    assert_eq!(
        p.schema().columns[0].ty,
        ColumnType::Decimal {
            precision: 18,
            scale: CURRENCY_SCALE
        }
    );
    let row = p
        .project(&json!({"id": "tx1", "amount": 1200.0, "currency": "JPY",
            "foreign_amount": 7.000000000000001, "foreign_currency": "KWD"}))
        .unwrap();
    assert_eq!(row.cells, vec![dec("1200"), dec("7.000")]);
    assert_eq!(p.amounts_normalised(), 1);

    let bad = spec(
        r#"
        [[columns]]
        name = "a"
        path = "amount"
        type = "decimal"
        scale = "cents"

        [[columns]]
        name = "b"
        path = "amount"
        type = "decimal"
        scale = 2
        currency_path = "currency"
        "#,
    );
    let problems = Projector::new(&bad).unwrap_err();
    assert_eq!(
        keys(&problems),
        vec!["columns[0].scale", "columns[1].currency_path"]
    );
    assert!(
        problems[0].message.contains("\"currency\""),
        "{problems:#?}"
    );
    let err = toml::from_str::<toml::Value>("scale = -1")
        .unwrap()
        .get("scale")
        .cloned()
        .unwrap()
        .try_into::<Scale>()
        .unwrap_err();
    assert!(err.to_string().contains("0 to 28"), "{err}");
}

#[test]
fn a_reused_row_holds_exactly_what_a_fresh_projection_of_the_new_record_holds() {
    let p = Projector::new(&spec(
        r#"
        [[columns]]
        name = "id"
        path = "id"
        [[columns]]
        name = "email"
        path = "employee.user.email"
        [[columns]]
        name = "tags"
        path = "tags"
        [[columns]]
        name = "amount"
        path = "amount"
        type = "decimal"
        [[columns]]
        name = "spent"
        path = "spent_at"
        type = "timestamp"
        [[columns]]
        name = "cost_code"
        custom_field = "Cost Code"
        "#,
    ))
    .unwrap();
    let long = "a.very.long.email.address@example-company.com";
    let records = [
        // Every column set, long texts on the heap.
        json!({"id": "tx1", "employee": {"user": {"email": long}}, "tags": ["x", "y"],
               "amount": 12.5, "spent_at": "2024-03-05T10:00:00Z",
               "custom_fields": [{"name": "Cost Code", "value": "CC-0000000000000000000000001"}]}),
        // Short text where long text was, nulls and missing values where values were.
        json!({"id": "tx2", "employee": {"user": {"email": "a@b.c"}}, "tags": null, "amount": 1}),
        // Quarantined half-way (three decimals in a two-place column).
        json!({"id": "tx3", "employee": {"user": {"email": long}}, "amount": 1.234,
               "spent_at": "2024-03-05T10:00:00Z"}),
        // A number and a bool into text columns, nothing else.
        json!({"id": 7, "employee": {"user": {"email": true}}}),
        json!({"id": "tx5", "employee": {"user": {"email": long}}, "tags": "one",
               "custom_fields": [{"name": "Cost Code", "value": "short"}]}),
    ];
    let mut row = Row { cells: Vec::new() };
    for record in &records {
        let fresh = p.project(record).map_err(|e| e.to_string());
        let reused = p
            .project_into(record, None, &mut row)
            .map(|()| row.clone())
            .map_err(|e| e.to_string());
        assert_eq!(
            format!("{reused:?}"),
            format!("{fresh:?}"),
            "record {record}"
        );
    }
}

#[test]
fn a_text_cell_given_new_text_keeps_its_memory_unless_it_is_large() {
    let long = "x".repeat(40);
    let mut cell = Cell::Str(long.as_str().into());
    let Cell::Str(s) = &cell else { unreachable!() };
    let before = s.as_ptr();
    cell.set_str("short");
    cell.set_str(&"y".repeat(30));
    assert!(matches!(&cell, Cell::Str(s) if s.as_ptr() == before && s.as_str() == "y".repeat(30)));
    let mut huge = Cell::Str("z".repeat(10_000).into());
    huge.set_str("small again");
    assert!(matches!(&huge, Cell::Str(s) if !s.is_heap_allocated() && s.as_str() == "small again"));
    let mut null = Cell::Null;
    null.set_str("text");
    assert_eq!(null, Cell::Str("text".into()));
}
