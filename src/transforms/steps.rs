//! Record transforms declared in the pipeline file (`[[transforms]]`), applied
//! in order to each JSON record before it is projected into a row:
//!
//! - `filter`: keep only records whose field compares as asked;
//! - `map`: look a field up in a table (CSV file or inline) and store the
//!   result, with a per-mapping policy for values the table lacks;
//! - `derive`: a new field from a template, a constant, a date format or the
//!   first non-null of several fields;
//! - `custom_fields`: Fyle custom fields (a list of `{name, value}`) copied
//!   into top-level fields, so columns and templates can name them.
//!
//! A transform writes its result as a top-level field of the record
//! (`target`), which later transforms and `[[columns]]` read like any other
//! field. Amounts compare as exact decimals, never as floats.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate};
use serde::Deserialize;
use serde_json::Value;

use super::convert::parse_decimal_text;
use crate::common::Problem;
use crate::record::{FieldPath, Record};

/// Skipped records listed one by one in the run summary, at most (the count is always exact).
pub const MAX_LISTED_SKIPS: usize = 200;
/// The lookup key of a missing or null field.
pub const MISSING_KEY: &str = "(missing)";
/// Unmapped values named in a `fail` error, at most.
const MAX_LISTED_MISSING: usize = 50;

/// One `[[transforms]]` entry, chosen by `type`.
#[derive(Debug, Clone)]
pub enum TransformSpec {
    /// `type = "filter"`.
    Filter(FilterSpec),
    /// `type = "map"`.
    Map(MapSpec),
    /// `type = "derive"`.
    Derive(DeriveSpec),
    /// `type = "custom_fields"`.
    CustomFields(CustomFieldsSpec),
}

/// Transform types accepted in `type`.
pub const TRANSFORM_TYPES: [&str; 4] = ["filter", "map", "derive", "custom_fields"];

impl<'de> Deserialize<'de> for TransformSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        // Same approach as `[[sinks]]`: keep the inner key in error messages.
        let mut table = toml::Table::deserialize(deserializer)?;
        let kind = match table.remove("type") {
            Some(toml::Value::String(s)) => s,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "`type`: expected a string (one of {}), found {other}",
                    TRANSFORM_TYPES.join(", ")
                )));
            }
            None => return Err(D::Error::missing_field("type")),
        };
        match kind.as_str() {
            "filter" => crate::common::inner_table(table).map(TransformSpec::Filter),
            "map" => crate::common::inner_table(table).map(TransformSpec::Map),
            "derive" => crate::common::inner_table(table).map(TransformSpec::Derive),
            "custom_fields" => crate::common::inner_table(table).map(TransformSpec::CustomFields),
            other => Err(D::Error::unknown_variant(other, &TRANSFORM_TYPES)),
        }
    }
}

/// `type = "filter"`: keep the records whose `field` satisfies `op value`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// Field path, e.g. `state`, `source_account.type`, `amount`.
    pub field: String,
    /// `eq`, `neq`, `in`, `not_in`, `gt`, `gte`, `lt`, `lte`, `is_null`, `not_null`.
    pub op: FilterOp,
    /// What to compare with: a string, number or bool; a list for `in`/`not_in`; absent for the null tests.
    #[serde(default)]
    pub value: Option<toml::Value>,
}

/// Comparison operators of a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterOp {
    /// Equal.
    Eq,
    /// Not equal (a missing field is "not equal").
    Neq,
    /// One of a list.
    In,
    /// None of a list.
    NotIn,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Gte,
    /// Less than.
    Lt,
    /// Less than or equal.
    Lte,
    /// Missing or null.
    IsNull,
    /// Present and not null.
    NotNull,
}

/// `type = "map"`: `target = table[field]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapSpec {
    /// Field path whose value is the lookup key, e.g. `category.name`.
    pub field: String,
    /// Top-level field the mapped value is stored in, e.g. `gl_account`.
    pub target: String,
    /// A CSV file with a header row (relative paths: from the pipeline file's directory).
    #[serde(default)]
    pub table: Option<PathBuf>,
    /// The table's key column (default: the first column).
    #[serde(default)]
    pub key_column: Option<String>,
    /// The table's value column (default: the second column).
    #[serde(default)]
    pub value_column: Option<String>,
    /// Or: the mapping inline, `{ "Travel" = "6100", … }`.
    #[serde(default)]
    pub entries: Option<BTreeMap<String, String>>,
    /// What to do with a key the table lacks (default `fail`).
    #[serde(default)]
    pub on_missing: OnMissing,
    /// The value used with `on_missing = "default"`.
    #[serde(default)]
    pub default: Option<String>,
}

/// What a `map` does with a value its table does not contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    /// The run fails, naming every unmapped value; nothing is written (the default).
    #[default]
    Fail,
    /// The record is left out and listed with the reason in the run summary.
    Skip,
    /// `default` is used.
    Default,
}

/// `type = "derive"`: a new top-level field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeriveSpec {
    /// Top-level field to set.
    pub target: String,
    /// Text with `{path}` or `{path:%d/%m/%Y}` placeholders; missing fields render empty.
    #[serde(default)]
    pub template: Option<String>,
    /// A constant string.
    #[serde(default)]
    pub value: Option<String>,
    /// The first of these fields that is present and not null (e.g. foreign amount, else amount).
    #[serde(default)]
    pub coalesce: Option<Vec<String>>,
    /// With `field`: the field's date or timestamp formatted with this chrono format, e.g. `%m/%d/%Y`.
    #[serde(default)]
    pub date_format: Option<String>,
    /// The field `date_format` applies to.
    #[serde(default)]
    pub field: Option<String>,
}

/// `type = "custom_fields"`: copy Fyle custom fields to top-level fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomFieldsSpec {
    /// Every custom field becomes `{prefix}{snake_case name}` (e.g. `cf_cost_code`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Or: only these, `{ target = "Custom Field Name" }`.
    #[serde(default)]
    pub fields: Option<BTreeMap<String, String>>,
}

/// Compiled transforms, applied in order.
#[derive(Debug, Clone, Default)]
pub struct Transforms {
    steps: Vec<Step>,
}

#[derive(Debug, Clone)]
enum Step {
    Filter {
        field: FieldPath,
        op: FilterOp,
        values: Vec<Value>,
    },
    Map {
        index: usize,
        field: FieldPath,
        target: String,
        table: HashMap<String, String>,
        on_missing: OnMissing,
        default: Option<String>,
    },
    Template {
        target: String,
        parts: Vec<TemplatePart>,
    },
    Constant {
        target: String,
        value: String,
    },
    Coalesce {
        target: String,
        fields: Vec<FieldPath>,
    },
    DateFormat {
        target: String,
        field: FieldPath,
        format: String,
    },
    CustomFields {
        prefix: Option<String>,
        fields: Vec<(String, String)>,
    },
}

#[derive(Debug, Clone)]
enum TemplatePart {
    Text(String),
    Field(FieldPath, Option<String>),
}

/// What the transforms did to a run's records, for the run summary and the `fail` policy.
#[derive(Debug, Default)]
pub struct TransformReport {
    /// Records a filter left out.
    pub filtered: u64,
    /// Records a `map` with `on_missing = "skip"` left out.
    pub skipped: u64,
    /// The first skipped records, with why.
    pub skipped_records: Vec<SkippedRecord>,
    /// Unmapped values of `fail` mappings, by transform index.
    missing: BTreeMap<usize, BTreeSet<String>>,
}

/// A record left out by a mapping, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SkippedRecord {
    /// The record's id.
    pub record_id: String,
    /// Which mapping and which value.
    pub reason: String,
}

impl TransformReport {
    /// The unmapped values of `fail` mappings as problems keyed `transforms[i]`; empty when every value mapped.
    pub fn unmapped_problems(&self, specs: &[TransformSpec]) -> Vec<Problem> {
        self.missing
            .iter()
            .map(|(i, keys)| {
                let field = match specs.get(*i) {
                    Some(TransformSpec::Map(m)) => m.field.as_str(),
                    _ => "?",
                };
                let shown: Vec<String> = keys
                    .iter()
                    .take(MAX_LISTED_MISSING)
                    .map(|k| format!("{k:?}"))
                    .collect();
                let more = keys.len().saturating_sub(MAX_LISTED_MISSING);
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                Problem::new(
                    format!("transforms[{i}]"),
                    format!(
                        "{} value(s) of `{field}` have no mapping: {}{more}; add them to the table, \
                         or set on_missing = \"skip\" or \"default\"; nothing was written",
                        keys.len(),
                        shown.join(", ")
                    ),
                )
            })
            .collect()
    }
}

/// Whether a record goes on after the transforms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Project and write it.
    Keep,
    /// A filter left it out.
    Filtered,
    /// A mapping left it out (listed in the report), or a `fail` mapping found no value.
    Dropped,
}

impl Transforms {
    /// Compiles `specs`; `base_dir` resolves relative table paths. Every problem is reported, keyed `transforms[i].<key>`.
    pub fn new(specs: &[TransformSpec], base_dir: &Path) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut steps = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let key = |k: &str| format!("transforms[{i}].{k}");
            let path =
                |k: &str, text: &str, problems: &mut Vec<Problem>| match FieldPath::parse(text) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        problems.push(Problem::new(key(k), e));
                        None
                    }
                };
            match spec {
                TransformSpec::Filter(f) => {
                    let field = path("field", &f.field, &mut problems);
                    let values = filter_values(f, &key("value"), &mut problems);
                    if let (Some(field), Some(values)) = (field, values) {
                        steps.push(Step::Filter {
                            field,
                            op: f.op,
                            values,
                        });
                    }
                }
                TransformSpec::Map(m) => {
                    let field = path("field", &m.field, &mut problems);
                    check_target(&m.target, &key("target"), &mut problems);
                    let table = load_table(m, base_dir, &key, &mut problems);
                    match (m.on_missing, &m.default) {
                        (OnMissing::Default, None) => problems.push(Problem::new(
                            key("default"),
                            "is required with on_missing = \"default\"",
                        )),
                        (OnMissing::Fail | OnMissing::Skip, Some(_)) => problems.push(
                            Problem::new(
                                key("default"),
                                "only applies with on_missing = \"default\"; remove it or change on_missing",
                            ),
                        ),
                        _ => {}
                    }
                    if let (Some(field), Some(table)) = (field, table) {
                        steps.push(Step::Map {
                            index: i,
                            field,
                            target: m.target.clone(),
                            table,
                            on_missing: m.on_missing,
                            default: m.default.clone(),
                        });
                    }
                }
                TransformSpec::Derive(d) => {
                    check_target(&d.target, &key("target"), &mut problems);
                    let set = [
                        d.template.is_some(),
                        d.value.is_some(),
                        d.coalesce.is_some(),
                        d.date_format.is_some(),
                    ];
                    if set.iter().filter(|s| **s).count() != 1 {
                        problems.push(Problem::new(
                            key("template"),
                            "set exactly one of `template`, `value`, `coalesce` or `date_format` (with `field`)",
                        ));
                        continue;
                    }
                    if d.field.is_some() && d.date_format.is_none() {
                        problems.push(Problem::new(
                            key("field"),
                            "only applies with `date_format`; use {field} inside a `template` instead",
                        ));
                        continue;
                    }
                    let target = d.target.clone();
                    if let Some(t) = &d.template {
                        match parse_template(t) {
                            Ok(parts) => steps.push(Step::Template { target, parts }),
                            Err(e) => problems.push(Problem::new(key("template"), e)),
                        }
                    } else if let Some(v) = &d.value {
                        steps.push(Step::Constant {
                            target,
                            value: v.clone(),
                        });
                    } else if let Some(fields) = &d.coalesce {
                        if fields.is_empty() {
                            problems.push(Problem::new(key("coalesce"), "lists no fields"));
                        }
                        let parsed: Vec<_> = fields
                            .iter()
                            .filter_map(|f| path("coalesce", f, &mut problems))
                            .collect();
                        steps.push(Step::Coalesce {
                            target,
                            fields: parsed,
                        });
                    } else if let Some(format) = &d.date_format {
                        if let Err(e) = check_date_format(format) {
                            problems.push(Problem::new(key("date_format"), e));
                        }
                        match &d.field {
                            None => problems.push(Problem::new(
                                key("field"),
                                "is required with `date_format`: the date or timestamp to format",
                            )),
                            Some(f) => {
                                if let Some(field) = path("field", f, &mut problems) {
                                    steps.push(Step::DateFormat {
                                        target,
                                        field,
                                        format: format.clone(),
                                    });
                                }
                            }
                        }
                    }
                }
                TransformSpec::CustomFields(c) => {
                    match (&c.prefix, &c.fields) {
                        (Some(_), Some(_)) | (None, None) => problems.push(Problem::new(
                            key("prefix"),
                            "set either `prefix` (copy every custom field) or `fields` (only these), not both",
                        )),
                        _ => {}
                    }
                    let fields: Vec<(String, String)> = c
                        .fields
                        .iter()
                        .flatten()
                        .map(|(t, n)| (t.clone(), n.clone()))
                        .collect();
                    for (t, _) in &fields {
                        check_target(t, &key(&format!("fields.{t}")), &mut problems);
                    }
                    steps.push(Step::CustomFields {
                        prefix: c.prefix.clone(),
                        fields,
                    });
                }
            }
        }
        if problems.is_empty() {
            Ok(Self { steps })
        } else {
            Err(problems)
        }
    }

    /// No transforms at all.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Whether some transform may set the record's top-level field `key`.
    pub fn may_write(&self, key: &str) -> bool {
        self.steps.iter().any(|step| match step {
            Step::Filter { .. } => false,
            Step::Map { target, .. }
            | Step::Template { target, .. }
            | Step::Constant { target, .. }
            | Step::Coalesce { target, .. }
            | Step::DateFormat { target, .. } => target == key,
            Step::CustomFields {
                prefix: Some(prefix),
                ..
            } => key.starts_with(prefix.as_str()),
            Step::CustomFields { fields, .. } => fields.iter().any(|(target, _)| target == key),
        })
    }

    /// Adds every record field the transforms read to `fields`.
    pub fn read_fields(&self, fields: &mut crate::extract::FieldSet) {
        // A transform's message about a record names its `id`.
        if !self.steps.is_empty() {
            fields.add_key("id");
        }
        for step in &self.steps {
            match step {
                Step::Filter { field, .. }
                | Step::Map { field, .. }
                | Step::DateFormat { field, .. } => fields.add_path(field),
                Step::Template { parts, .. } => {
                    for part in parts {
                        if let TemplatePart::Field(p, _) = part {
                            fields.add_path(p);
                        }
                    }
                }
                Step::Coalesce { fields: paths, .. } => {
                    paths.iter().for_each(|p| fields.add_path(p))
                }
                Step::Constant { .. } => {}
                Step::CustomFields { .. } => fields.add_key("custom_fields"),
            }
        }
    }

    /// Applies every transform in order to `record`, recording filtered, skipped and unmapped records in `report`.
    pub fn apply(&self, record: &mut Record, report: &mut TransformReport) -> Verdict {
        for step in &self.steps {
            match step {
                Step::Filter { field, op, values } => {
                    if !filter_matches(field.lookup(record), *op, values) {
                        report.filtered += 1;
                        return Verdict::Filtered;
                    }
                }
                Step::Map {
                    index,
                    field,
                    target,
                    table,
                    on_missing,
                    default,
                } => {
                    let key = field.lookup(record).map(key_text);
                    // A missing or null field is looked up as `(missing)`, so a table can map it too.
                    let mapped = table.get(key.as_deref().unwrap_or(MISSING_KEY)).cloned();
                    let value = match (mapped, on_missing) {
                        (Some(v), _) => v,
                        (None, OnMissing::Default) => default.clone().unwrap_or_default(),
                        (None, OnMissing::Skip) => {
                            report.skipped += 1;
                            if report.skipped_records.len() < MAX_LISTED_SKIPS {
                                report.skipped_records.push(SkippedRecord {
                                    record_id: crate::extract::RecordRef::new(record, None)
                                        .id_text(),
                                    reason: format!(
                                        "transforms[{index}]: no mapping for `{field}` = {}",
                                        key.as_deref()
                                            .map_or("(missing)".to_string(), |k| format!("{k:?}"))
                                    ),
                                });
                            }
                            return Verdict::Dropped;
                        }
                        (None, OnMissing::Fail) => {
                            report
                                .missing
                                .entry(*index)
                                .or_default()
                                .insert(key.unwrap_or_else(|| MISSING_KEY.to_string()));
                            return Verdict::Dropped;
                        }
                    };
                    set(record, target, Value::String(value));
                }
                Step::Template { target, parts } => {
                    let mut out = String::new();
                    for part in parts {
                        match part {
                            TemplatePart::Text(t) => out.push_str(t),
                            TemplatePart::Field(p, format) => {
                                let v = p.lookup(record);
                                match (v, format) {
                                    (None, _) => {}
                                    (Some(v), Some(f)) => out.push_str(
                                        &format_date(v, f).unwrap_or_else(|| key_text(v)),
                                    ),
                                    (Some(v), None) => out.push_str(&key_text(v)),
                                }
                            }
                        }
                    }
                    set(record, target, Value::String(out));
                }
                Step::Constant { target, value } => {
                    set(record, target, Value::String(value.clone()));
                }
                Step::Coalesce { target, fields } => {
                    let v = fields
                        .iter()
                        .find_map(|f| f.lookup(record))
                        .cloned()
                        .unwrap_or(Value::Null);
                    set(record, target, v);
                }
                Step::DateFormat {
                    target,
                    field,
                    format,
                } => {
                    let v = field
                        .lookup(record)
                        .and_then(|v| format_date(v, format))
                        .map_or(Value::Null, Value::String);
                    set(record, target, v);
                }
                Step::CustomFields { prefix, fields } => {
                    let list: Vec<(String, Value)> = record
                        .get("custom_fields")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|f| {
                            Some((
                                f.get("name")?.as_str()?.to_string(),
                                f.get("value").cloned().unwrap_or(Value::Null),
                            ))
                        })
                        .collect();
                    if let Some(prefix) = prefix {
                        for (name, value) in list {
                            set(record, &format!("{prefix}{}", snake_case(&name)), value);
                        }
                    } else {
                        for (target, name) in fields {
                            let v = list
                                .iter()
                                .find(|(n, _)| n == name)
                                .map_or(Value::Null, |(_, v)| v.clone());
                            set(record, target, v);
                        }
                    }
                }
            }
        }
        Verdict::Keep
    }
}

fn set(record: &mut Record, target: &str, value: Value) {
    if let Some(obj) = record.as_object_mut() {
        obj.insert(target.to_string(), value);
    }
}

fn check_target(target: &str, key: &str, problems: &mut Vec<Problem>) {
    if target.is_empty()
        || !target
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        problems.push(Problem::new(
            key,
            format!(
                "`{target}` must be a plain field name (letters, digits, `_`), e.g. \"gl_account\"; columns read it with path = \"{target}\""
            ),
        ));
    }
}

/// `Cost Code` → `cost_code`.
fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for c in name.trim().chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_string()
}

/// A value as lookup and template text: strings as they are, numbers by their exact text.
fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn format_date(v: &Value, format: &str) -> Option<String> {
    let text = v.as_str()?;
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        // Fyle's `spent_at` is a calendar date carried at midnight UTC; format in UTC so it does not shift.
        return Some(t.with_timezone(&chrono::Utc).format(format).to_string());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .map(|d| d.format(format).to_string())
}

/// Rejects chrono formats that would fail when rendered (chrono panics on them in `to_string`).
pub(crate) fn check_date_format(format: &str) -> Result<(), String> {
    use chrono::format::{Item, StrftimeItems};
    if StrftimeItems::new(format).any(|i| matches!(i, Item::Error)) {
        return Err(format!(
            "`{format}` is not a valid date format; use chrono/strftime codes such as %m/%d/%Y or %Y-%m-%d"
        ));
    }
    Ok(())
}

fn parse_template(t: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if rest[..open].contains('}') {
            return Err(format!("`}}` without a matching `{{` in `{t}`"));
        }
        parts.push(TemplatePart::Text(rest[..open].to_string()));
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in `{t}`"))?;
        let inner = &after[..close];
        let (path, format) = match inner.find(":%") {
            Some(i) => (&inner[..i], Some(inner[i + 1..].to_string())),
            None => (inner, None),
        };
        if let Some(f) = &format {
            check_date_format(f)?;
        }
        parts.push(TemplatePart::Field(FieldPath::parse(path.trim())?, format));
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("`}}` without a matching `{{` in `{t}`"));
    }
    parts.push(TemplatePart::Text(rest.to_string()));
    Ok(parts)
}

fn toml_to_json(v: &toml::Value) -> Option<Value> {
    Some(match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        // A float in the file is kept by its text, then compared as a decimal.
        toml::Value::Float(f) => serde_json::from_str(&f.to_string()).ok()?,
        toml::Value::Boolean(b) => Value::Bool(*b),
        _ => return None,
    })
}

fn filter_values(f: &FilterSpec, key: &str, problems: &mut Vec<Problem>) -> Option<Vec<Value>> {
    let wrong = |problems: &mut Vec<Problem>, m: &str| {
        problems.push(Problem::new(key, m.to_string()));
        None
    };
    match (f.op, &f.value) {
        (FilterOp::IsNull | FilterOp::NotNull, None) => Some(Vec::new()),
        (FilterOp::IsNull | FilterOp::NotNull, Some(_)) => wrong(
            problems,
            "is_null and not_null take no value; remove `value`",
        ),
        (_, None) => wrong(problems, "is required for this op"),
        (FilterOp::In | FilterOp::NotIn, Some(toml::Value::Array(items))) => {
            let values: Option<Vec<Value>> = items.iter().map(toml_to_json).collect();
            values.or_else(|| wrong(problems, "list items must be strings, numbers or bools"))
        }
        (FilterOp::In | FilterOp::NotIn, Some(_)) => wrong(
            problems,
            "`in` and `not_in` take a list, e.g. value = [\"APPROVED\", \"PAID\"]",
        ),
        (_, Some(v)) => match toml_to_json(v) {
            Some(j) => Some(vec![j]),
            None => wrong(
                problems,
                "must be a string, number or bool (a list only with `in`/`not_in`)",
            ),
        },
    }
}

/// Compares two values: as exact decimals when both read as numbers, else as text.
fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    let num = |v: &Value| match v {
        Value::Number(n) => parse_decimal_text(&n.to_string()).ok(),
        Value::String(s) => parse_decimal_text(s).ok(),
        _ => None,
    };
    match (num(a), num(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => key_text(a).cmp(&key_text(b)),
    }
}

fn filter_matches(v: Option<&Value>, op: FilterOp, values: &[Value]) -> bool {
    use std::cmp::Ordering::*;
    let eq = |v: &Value, w: &Value| compare(v, w) == Equal;
    match (op, v) {
        (FilterOp::IsNull, v) => v.is_none(),
        (FilterOp::NotNull, v) => v.is_some(),
        (FilterOp::Neq, None) | (FilterOp::NotIn, None) => true,
        (_, None) => false,
        (FilterOp::Eq, Some(v)) => eq(v, &values[0]),
        (FilterOp::Neq, Some(v)) => !eq(v, &values[0]),
        (FilterOp::In, Some(v)) => values.iter().any(|w| eq(v, w)),
        (FilterOp::NotIn, Some(v)) => !values.iter().any(|w| eq(v, w)),
        (FilterOp::Gt, Some(v)) => compare(v, &values[0]) == Greater,
        (FilterOp::Gte, Some(v)) => compare(v, &values[0]) != Less,
        (FilterOp::Lt, Some(v)) => compare(v, &values[0]) == Less,
        (FilterOp::Lte, Some(v)) => compare(v, &values[0]) != Greater,
    }
}

fn load_table(
    m: &MapSpec,
    base_dir: &Path,
    key: &dyn Fn(&str) -> String,
    problems: &mut Vec<Problem>,
) -> Option<HashMap<String, String>> {
    match (&m.table, &m.entries) {
        (Some(_), Some(_)) | (None, None) => {
            problems.push(Problem::new(
                key("table"),
                "set either `table` (a CSV file) or `entries` (an inline table), not both",
            ));
            None
        }
        (None, Some(entries)) => {
            if m.key_column.is_some() || m.value_column.is_some() {
                problems.push(Problem::new(
                    key("key_column"),
                    "key_column and value_column only apply to a CSV `table`",
                ));
            }
            Some(entries.clone().into_iter().collect())
        }
        (Some(path), None) => {
            let path = if path.is_absolute() {
                path.clone()
            } else {
                base_dir.join(path)
            };
            match read_csv_table(&path, m.key_column.as_deref(), m.value_column.as_deref()) {
                Ok(t) => Some(t),
                Err(e) => {
                    problems.push(Problem::new(key("table"), e));
                    None
                }
            }
        }
    }
}

fn read_csv_table(
    path: &Path,
    key_column: Option<&str>,
    value_column: Option<&str>,
) -> Result<HashMap<String, String>, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    // Tables saved from Excel often start with a BOM.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let header = reader
        .headers()
        .map_err(|e| format!("{shown}: {e}"))?
        .clone();
    let find = |name: Option<&str>, default: usize, what: &str| -> Result<usize, String> {
        match name {
            None if header.len() > default => Ok(default),
            None => Err(format!(
                "{shown} needs at least two columns (key, value) with a header row"
            )),
            Some(n) => header.iter().position(|h| h.trim() == n).ok_or_else(|| {
                format!(
                    "{shown} has no {what} column `{n}`; its header is: {}",
                    header.iter().collect::<Vec<_>>().join(", ")
                )
            }),
        }
    };
    let k = find(key_column, 0, "key")?;
    let v = find(value_column, 1, "value")?;
    let mut table = HashMap::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| format!("{shown}: {e}"))?;
        let (Some(key), Some(value)) = (rec.get(k), rec.get(v)) else {
            return Err(format!("{shown} line {}: too few columns", i + 2));
        };
        if let Some(prev) = table.insert(key.to_string(), value.to_string())
            && prev != value
        {
            return Err(format!(
                "{shown} line {}: key {key:?} appears twice with different values ({prev:?}, {value:?})",
                i + 2
            ));
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(toml_text: &str) -> Result<(Vec<TransformSpec>, Transforms), Vec<Problem>> {
        #[derive(Deserialize)]
        struct F {
            transforms: Vec<TransformSpec>,
        }
        let f: F = toml::from_str(toml_text).expect("parses");
        let t = Transforms::new(&f.transforms, Path::new("."))?;
        Ok((f.transforms, t))
    }

    fn expense() -> Value {
        serde_json::from_str(
            r#"{"id": "tx1", "amount": 12.50, "currency": "USD", "foreign_amount": null,
                "state": "PAID", "spent_at": "2024-03-05T00:00:00.000Z",
                "purpose": "Lunch", "category": {"name": "Food"},
                "source_account": {"type": "PERSONAL_CASH_ACCOUNT"},
                "employee": {"user": {"email": "a@x.io", "full_name": "Ann Lee"}},
                "custom_fields": [{"name": "Cost Code", "value": "CC-7"}, {"name": "Region", "value": null}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn filters_compare_amounts_as_decimals_and_states_as_lists() {
        let (_, t) = compile(
            r#"
[[transforms]]
type = "filter"
field = "state"
op = "in"
value = ["APPROVED", "PAID"]
[[transforms]]
type = "filter"
field = "amount"
op = "gt"
value = 12.4
[[transforms]]
type = "filter"
field = "source_account.type"
op = "eq"
value = "PERSONAL_CASH_ACCOUNT"
"#,
        )
        .unwrap();
        let mut report = TransformReport::default();
        assert_eq!(t.apply(&mut expense(), &mut report), Verdict::Keep);
        let mut refund = expense();
        refund["amount"] = serde_json::from_str("-12.50").unwrap();
        assert_eq!(t.apply(&mut refund, &mut report), Verdict::Filtered);
        let mut zero = expense();
        zero["amount"] = serde_json::from_str("12.40").unwrap();
        assert_eq!(t.apply(&mut zero, &mut report), Verdict::Filtered);
        assert_eq!(report.filtered, 2);
    }

    #[test]
    fn zero_amounts_can_be_left_out() {
        let (_, t) = compile(
            "[[transforms]]\ntype = \"filter\"\nfield = \"amount\"\nop = \"neq\"\nvalue = 0\n",
        )
        .unwrap();
        let mut r = TransformReport::default();
        let mut zero = expense();
        zero["amount"] = serde_json::from_str("0.00").unwrap();
        assert_eq!(t.apply(&mut zero, &mut r), Verdict::Filtered);
        assert_eq!(t.apply(&mut expense(), &mut r), Verdict::Keep);
    }

    #[test]
    fn unmapped_values_follow_each_policy() {
        let base = r#"
[[transforms]]
type = "map"
field = "category.name"
target = "gl"
entries = { "Travel" = "6100" }
"#;
        // fail: the record is held back and the value listed.
        let (specs, t) = compile(base).unwrap();
        let mut r = TransformReport::default();
        assert_eq!(t.apply(&mut expense(), &mut r), Verdict::Dropped);
        let mut no_cat = expense();
        no_cat["category"] = Value::Null;
        t.apply(&mut no_cat, &mut r);
        let p = r.unmapped_problems(&specs);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, "transforms[0]");
        assert!(
            p[0].message.contains("\"Food\"") && p[0].message.contains("(missing)"),
            "{p:?}"
        );
        // skip: left out, listed with the reason.
        let (specs, t) = compile(&format!("{base}on_missing = \"skip\"\n")).unwrap();
        let mut r = TransformReport::default();
        assert_eq!(t.apply(&mut expense(), &mut r), Verdict::Dropped);
        assert_eq!(r.skipped, 1);
        assert_eq!(r.skipped_records[0].record_id, "tx1");
        assert!(r.skipped_records[0].reason.contains("\"Food\""));
        assert!(r.unmapped_problems(&specs).is_empty());
        // default: kept with the default value.
        let (_, t) = compile(&format!(
            "{base}on_missing = \"default\"\ndefault = \"6999\"\n"
        ))
        .unwrap();
        let mut rec = expense();
        assert_eq!(t.apply(&mut rec, &mut r), Verdict::Keep);
        assert_eq!(rec["gl"], json!("6999"));
        let mut travel = expense();
        travel["category"]["name"] = json!("Travel");
        t.apply(&mut travel, &mut r);
        assert_eq!(travel["gl"], json!("6100"));
        // A table can map a missing field through the `(missing)` key.
        let (_, t) =
            compile(&base.replace("\"Travel\" = \"6100\"", "\"(missing)\" = \"6999\"")).unwrap();
        let mut rec = expense();
        rec["category"] = Value::Null;
        assert_eq!(t.apply(&mut rec, &mut r), Verdict::Keep);
        assert_eq!(rec["gl"], json!("6999"));
    }

    #[test]
    fn csv_tables_are_read_by_named_columns() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("vendors.csv"),
            "\u{feff}email,name,vendor_id\r\na@x.io,\"Lee, Ann\",V-001\r\n",
        )
        .unwrap();
        let f: Vec<TransformSpec> = vec![TransformSpec::Map(MapSpec {
            field: "employee.user.email".into(),
            target: "vendor".into(),
            table: Some("vendors.csv".into()),
            key_column: Some("email".into()),
            value_column: Some("vendor_id".into()),
            entries: None,
            on_missing: OnMissing::Fail,
            default: None,
        })];
        let t = Transforms::new(&f, dir.path()).unwrap();
        let mut rec = expense();
        t.apply(&mut rec, &mut TransformReport::default());
        assert_eq!(rec["vendor"], json!("V-001"));
        let mut bad = f.clone();
        if let TransformSpec::Map(m) = &mut bad[0] {
            m.value_column = Some("vendor".into());
        }
        let p = Transforms::new(&bad, dir.path()).unwrap_err();
        assert_eq!(p[0].key, "transforms[0].table");
        assert!(p[0].message.contains("email, name, vendor_id"), "{p:?}");
    }

    #[test]
    fn derived_fields_use_templates_constants_dates_and_coalesce() {
        let (_, t) = compile(
            r#"
[[transforms]]
type = "derive"
target = "memo"
template = "{employee.user.full_name}: {purpose} ({spent_at:%m/%d/%Y}){missing.x}"
[[transforms]]
type = "derive"
target = "ap"
value = "2000 Accounts Payable"
[[transforms]]
type = "derive"
target = "txn_date"
field = "spent_at"
date_format = "%d.%m.%Y"
[[transforms]]
type = "derive"
target = "original_amount"
coalesce = ["foreign_amount", "amount"]
[[transforms]]
type = "custom_fields"
prefix = "cf_"
"#,
        )
        .unwrap();
        let mut rec = expense();
        assert_eq!(
            t.apply(&mut rec, &mut TransformReport::default()),
            Verdict::Keep
        );
        assert_eq!(rec["memo"], json!("Ann Lee: Lunch (03/05/2024)"));
        assert_eq!(rec["ap"], json!("2000 Accounts Payable"));
        assert_eq!(rec["txn_date"], json!("05.03.2024"));
        assert_eq!(rec["original_amount"].to_string(), "12.50");
        assert_eq!(rec["cf_cost_code"], json!("CC-7"));
        assert_eq!(rec["cf_region"], Value::Null);
    }

    #[test]
    fn bad_transforms_name_their_keys() {
        let p = compile(
            r#"
[[transforms]]
type = "map"
field = "category.name"
target = "gl account"
entries = {}
on_missing = "default"
[[transforms]]
type = "filter"
field = "state"
op = "in"
value = "PAID"
[[transforms]]
type = "derive"
target = "d"
field = "spent_at"
date_format = "%Q"
"#,
        )
        .unwrap_err();
        let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "transforms[0].target",
                "transforms[0].default",
                "transforms[1].value",
                "transforms[2].date_format"
            ],
            "{p:?}"
        );
    }
}

#[cfg(test)]
mod pipeline_file_tests {
    use super::*;

    #[test]
    fn inline_entries_keep_their_case_through_the_pipeline_loader() {
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
[[transforms]]
type = "map"
field = "category.name"
target = "gl"
entries = { "Meals & Entertainment" = "6010", "Food" = "6000" }
[[sinks]]
type = "csv"
path = "x.csv"
"#;
        let p = crate::config::load_str(text, Path::new("p.toml")).unwrap();
        let TransformSpec::Map(m) = &p.spec.transforms[0] else {
            panic!("{:?}", p.spec.transforms)
        };
        let keys: Vec<&str> = m
            .entries
            .as_ref()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["Food", "Meals & Entertainment"]);
    }
}
