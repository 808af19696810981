//! Record → row transforms: a list of column specs compiled once into a
//! [`Projector`] that turns each JSON record into a typed [`Row`].
//!
//! A value that cannot be converted exactly is a [`RecordError`] for that
//! record (the runner quarantines it); it is never guessed, rounded or
//! dropped silently.

mod convert;
pub mod steps;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use serde_json::Value;

use crate::common::Problem;
use crate::extract::{Columns, plain_string};
use crate::record::{FieldPath, Record};
use crate::row::{Cell, Column, ColumnType, Row, Schema};

pub use steps::{TransformReport, TransformSpec, Transforms, Verdict};

/// Default digits after the point for decimal columns (cents).
pub const DEFAULT_SCALE: u8 = 2;
/// Default total digits for decimal columns.
pub const DEFAULT_PRECISION: u8 = 18;
/// Largest precision a decimal column may declare (Parquet `Decimal128`).
pub const MAX_PRECISION: u8 = 38;
/// Largest scale a decimal column may declare (what `rust_decimal` holds exactly).
pub const MAX_SCALE: u8 = 28;
/// Storage scale of a `scale = "currency"` column: the most minor units an
/// ISO 4217 currency that is spent has (KWD, BHD, OMR, JOD, TND, LYD, IQD).
pub const CURRENCY_SCALE: u8 = 3;

/// A decimal column's `scale`: digits after the point, or `"currency"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scale {
    /// A fixed number of digits after the point.
    Digits(u8),
    /// A word; `"currency"` (the record currency's ISO 4217 minor units) is the only one.
    Named(String),
}

impl<'de> Deserialize<'de> for Scale {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scale;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("digits after the point (0 to 28) or \"currency\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scale, E> {
                u8::try_from(v)
                    .map(Scale::Digits)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scale, E> {
                u8::try_from(v)
                    .map(Scale::Digits)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scale, E> {
                Ok(Scale::Named(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// One output column as written in a pipeline file (`[[columns]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// Output column name.
    pub name: String,
    /// Field path into the record, e.g. `employee.user.email`.
    #[serde(default)]
    pub path: Option<String>,
    /// Or: a Fyle custom field by name (from the record's `custom_fields` list).
    #[serde(default)]
    pub custom_field: Option<String>,
    /// Output type; `string` when omitted.
    #[serde(rename = "type", default)]
    pub ty: TypeName,
    /// Decimal only: digits after the point (default 2), or `"currency"` for
    /// the minor units of the record's currency (stored with 3 in Parquet).
    #[serde(default)]
    pub scale: Option<Scale>,
    /// Decimal with `scale = "currency"` only: path of the currency code (default `currency`).
    #[serde(default)]
    pub currency_path: Option<String>,
    /// Decimal only: total digits (default 18, at most 38).
    #[serde(default)]
    pub precision: Option<u8>,
    /// Decimal only: what to do with extra decimal places (default `error`).
    #[serde(default)]
    pub rounding: Option<Rounding>,
}

impl ColumnSpec {
    /// A string column read from `path`.
    pub fn path(name: &str, path: &str) -> Self {
        Self {
            name: name.to_string(),
            path: Some(path.to_string()),
            custom_field: None,
            ty: TypeName::String,
            scale: None,
            currency_path: None,
            precision: None,
            rounding: None,
        }
    }

    /// A string column read from the custom field named `field`.
    pub fn custom_field(name: &str, field: &str) -> Self {
        Self {
            path: None,
            custom_field: Some(field.to_string()),
            ..Self::path(name, "")
        }
    }

    /// The same column with type `ty`.
    pub fn typed(mut self, ty: TypeName) -> Self {
        self.ty = ty;
        self
    }

    /// The same column as a decimal with `scale` digits after the point.
    pub fn decimal(mut self, scale: u8) -> Self {
        self.ty = TypeName::Decimal;
        self.scale = Some(Scale::Digits(scale));
        self
    }

    /// The same column as an amount in the currency found at `currency_path`
    /// (`scale = "currency"`).
    pub fn money(mut self, currency_path: &str) -> Self {
        self.ty = TypeName::Decimal;
        self.scale = Some(Scale::Named("currency".into()));
        self.currency_path = Some(currency_path.to_string());
        self
    }
}

/// Column type names accepted in pipeline files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TypeName {
    /// Text (the default).
    #[default]
    String,
    /// Exact decimal with fixed scale.
    Decimal,
    /// RFC 3339 instant, stored in UTC.
    Timestamp,
    /// Calendar date.
    Date,
    /// true/false.
    Bool,
    /// 64-bit integer.
    Integer,
}

impl TypeName {
    fn as_str(self) -> &'static str {
        match self {
            TypeName::String => "string",
            TypeName::Decimal => "decimal",
            TypeName::Timestamp => "timestamp",
            TypeName::Date => "date",
            TypeName::Bool => "bool",
            TypeName::Integer => "integer",
        }
    }
}

/// What a decimal column does with more decimal places than its scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Reject the record: money is never silently rounded (the default).
    #[default]
    Error,
    /// Round half to even (banker's rounding).
    HalfEven,
    /// Round half away from zero (`2.345` → `2.35`, `-2.345` → `-2.35`).
    HalfUp,
}

/// Where a column's value comes from.
#[derive(Debug, Clone)]
enum Source {
    Path(FieldPath),
    CustomField(String),
}

#[derive(Debug, Clone)]
struct Compiled {
    name: String,
    source: Source,
    ty: ColumnType,
    rounding: Rounding,
    /// Where the record's currency is, for `scale = "currency"` columns.
    currency: Option<FieldPath>,
}

/// Column specs compiled for fast, repeated projection of records into rows.
#[derive(Debug, Clone)]
pub struct Projector {
    columns: Vec<Compiled>,
    lookups: Lookups,
    schema: Arc<Schema>,
    /// Amounts whose float noise was removed, over every clone of this projector.
    normalised: Arc<AtomicU64>,
    /// Slots whose value comes from the page ([`Columns`]) when the page has a capture.
    captured: Vec<bool>,
}

/// A column's value as found: nothing (missing or null), a value of the
/// record, or the JSON text of a value captured from the page.
#[derive(Debug, Clone, Copy)]
enum Found<'a> {
    Missing,
    Tree(&'a Value),
    Raw(&'a str),
}

/// Why one record could not be turned into a row.
#[derive(Debug, Clone, thiserror::Error)]
pub struct RecordError {
    /// The record's `id` (or `<no id>`).
    pub record_id: String,
    /// The output column whose value was bad.
    pub column: String,
    /// What was wrong with the value.
    pub reason: String,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "record {}: column `{}`: {}",
            self.record_id, self.column, self.reason
        )
    }
}

impl Projector {
    /// Checks and compiles the column specs; every problem is reported, keyed `columns[i].<field>`.
    pub fn new(specs: &[ColumnSpec]) -> Result<Projector, Vec<Problem>> {
        let mut problems = Vec::new();
        if specs.is_empty() {
            problems.push(Problem::new(
                "columns",
                "at least one column is needed, e.g. [[columns]] name = \"amount\", path = \"amount\", type = \"decimal\"",
            ));
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut columns = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let key = |field: &str| format!("columns[{i}].{field}");
            let before = problems.len();

            let name = spec.name.trim();
            if name.is_empty() {
                problems.push(Problem::new(key("name"), "must not be empty"));
            } else if name != spec.name {
                problems.push(Problem::new(
                    key("name"),
                    format!("`{}` has leading or trailing spaces", spec.name),
                ));
            } else if let Some(first) = seen.insert(name, i) {
                problems.push(Problem::new(
                    key("name"),
                    format!(
                        "`{name}` is already used by columns[{first}]; column names must be unique"
                    ),
                ));
            }

            let source = match (&spec.path, &spec.custom_field) {
                (Some(_), Some(_)) => {
                    problems.push(Problem::new(
                        key("custom_field"),
                        "set either `path` or `custom_field`, not both",
                    ));
                    None
                }
                (None, None) => {
                    problems.push(Problem::new(
                        key("path"),
                        "is required: set `path` (e.g. \"employee.user.email\") or `custom_field` (a custom field's name)",
                    ));
                    None
                }
                (Some(p), None) => match FieldPath::parse(p) {
                    Ok(fp) => Some(Source::Path(fp)),
                    Err(e) => {
                        problems.push(Problem::new(key("path"), e));
                        None
                    }
                },
                (None, Some(cf)) if cf.trim().is_empty() => {
                    problems.push(Problem::new(key("custom_field"), "must not be empty"));
                    None
                }
                (None, Some(cf)) => Some(Source::CustomField(cf.clone())),
            };

            let mut currency = None;
            let ty = if spec.ty == TypeName::Decimal {
                let precision = spec.precision.unwrap_or(DEFAULT_PRECISION);
                let scale = match &spec.scale {
                    None => DEFAULT_SCALE,
                    Some(Scale::Digits(s)) => *s,
                    Some(Scale::Named(w)) if w == "currency" => {
                        let path = spec.currency_path.as_deref().unwrap_or("currency");
                        match FieldPath::parse(path) {
                            Ok(fp) => currency = Some(fp),
                            Err(e) => problems.push(Problem::new(key("currency_path"), e)),
                        }
                        CURRENCY_SCALE
                    }
                    Some(Scale::Named(w)) => {
                        problems.push(Problem::new(
                            key("scale"),
                            format!(
                                "`{w}` is not a scale; give the digits after the point (e.g. 2) or \"currency\" for the record currency's minor units"
                            ),
                        ));
                        DEFAULT_SCALE
                    }
                };
                if spec.currency_path.is_some() && currency.is_none() {
                    problems.push(Problem::new(
                        key("currency_path"),
                        "only applies with scale = \"currency\"; set that or remove `currency_path`",
                    ));
                }
                if !(1..=MAX_PRECISION).contains(&precision) {
                    problems.push(Problem::new(
                        key("precision"),
                        format!("{precision} is out of range; expected 1 to {MAX_PRECISION}"),
                    ));
                } else if scale > precision {
                    problems.push(Problem::new(
                        key("scale"),
                        format!("{scale} is larger than the precision {precision}; scale must be at most the precision"),
                    ));
                }
                if scale > MAX_SCALE {
                    problems.push(Problem::new(
                        key("scale"),
                        format!("{scale} is out of range; at most {MAX_SCALE} decimal places are supported"),
                    ));
                }
                ColumnType::Decimal { precision, scale }
            } else {
                for (field, set) in [
                    ("scale", spec.scale.is_some()),
                    ("currency_path", spec.currency_path.is_some()),
                    ("precision", spec.precision.is_some()),
                    ("rounding", spec.rounding.is_some()),
                ] {
                    if set {
                        problems.push(Problem::new(
                            key(field),
                            format!(
                                "only applies to decimal columns; this column is type `{}` (set type = \"decimal\" or remove `{field}`)",
                                spec.ty.as_str()
                            ),
                        ));
                    }
                }
                match spec.ty {
                    TypeName::String => ColumnType::String,
                    TypeName::Timestamp => ColumnType::Timestamp,
                    TypeName::Date => ColumnType::Date,
                    TypeName::Bool => ColumnType::Bool,
                    TypeName::Integer => ColumnType::Integer,
                    TypeName::Decimal => unreachable!("handled above"),
                }
            };

            if let (Some(source), true) = (source, problems.len() == before) {
                columns.push(Compiled {
                    name: spec.name.clone(),
                    source,
                    ty,
                    rounding: spec.rounding.unwrap_or_default(),
                    currency,
                });
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let schema = Arc::new(Schema {
            columns: columns
                .iter()
                .map(|c| Column {
                    name: c.name.clone(),
                    ty: c.ty,
                })
                .collect(),
        });
        let lookups = Lookups::new(&columns);
        Ok(Projector {
            columns,
            captured: vec![false; lookups.slots],
            lookups,
            schema,
            normalised: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Amounts with binary-float noise normalised so far, in rows projected successfully.
    pub fn amounts_normalised(&self) -> u64 {
        self.normalised.load(Ordering::Relaxed)
    }

    /// The schema of every row this projector produces.
    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// Adds every record field the columns read to `fields`.
    pub fn read_fields(&self, fields: &mut crate::extract::FieldSet) {
        for (path, _) in self.paths(fields) {
            fields.add_path(path);
        }
    }

    /// Like [`Projector::read_fields`], but the columns' values are captured
    /// from the page ([`FieldSet::capture_path`](crate::extract::FieldSet::capture_path))
    /// instead of built into the record — except under a top-level key a transform
    /// may write, whose final value only the record holds.
    pub fn capture_fields(
        &mut self,
        fields: &mut crate::extract::FieldSet,
        transforms: &Transforms,
    ) {
        let mut captured = Vec::new();
        for (path, slot) in self.paths(fields) {
            let written = path.keys().next().is_some_and(|k| transforms.may_write(k));
            match slot {
                Some(slot) if !written && fields.capture_path(path, slot) => captured.push(slot),
                _ => fields.add_path(path),
            }
        }
        for slot in captured {
            self.captured[slot] = true;
        }
    }

    /// The paths the columns read (values and currencies) with their slots;
    /// custom-field columns read the record's `custom_fields`, added to `fields` here.
    fn paths(&self, fields: &mut crate::extract::FieldSet) -> Vec<(&FieldPath, Option<usize>)> {
        let mut paths = Vec::new();
        for (col, slots) in self.columns.iter().zip(&self.lookups.columns) {
            match &col.source {
                Source::Path(p) => paths.push((p, slots.value)),
                Source::CustomField(_) => fields.add_key("custom_fields"),
            }
            if let Some(p) = &col.currency {
                paths.push((p, slots.currency));
            }
        }
        paths
    }

    /// Turns one record into a row, or says which column's value is unusable and why.
    pub fn project(&self, record: &Record) -> Result<Row, RecordError> {
        self.project_with(record, None)
    }

    /// [`Projector::project`] of a record whose captured values are `columns`
    /// (the page's, when it was read with this projector's capture).
    pub fn project_with(
        &self,
        record: &Record,
        columns: Option<Columns<'_>>,
    ) -> Result<Row, RecordError> {
        let mut row = Row {
            cells: Vec::with_capacity(self.columns.len()),
        };
        self.project_into(record, columns, &mut row)?;
        Ok(row)
    }

    /// [`Projector::project_with`] into `row`, a row of an earlier record
    /// whose memory (its cells, their text) is reused. On success `row` holds
    /// exactly this record's cells; after an error its cells are unspecified
    /// and it is only fit to be projected into again.
    pub fn project_into(
        &self,
        record: &Record,
        columns: Option<Columns<'_>>,
        row: &mut Row,
    ) -> Result<(), RecordError> {
        // On the stack for the usual few dozen columns: this runs once per record.
        let mut found: smallvec::SmallVec<[Found<'_>; 64]> =
            smallvec::smallvec![Found::Missing; self.lookups.slots];
        match columns {
            Some(cols) => {
                let mut rest = false;
                for (slot, captured) in self.captured.iter().enumerate() {
                    if *captured {
                        if let Some(raw) = cols.get(slot).filter(|t| *t != "null") {
                            found[slot] = Found::Raw(raw);
                        }
                    } else {
                        rest = true;
                    }
                }
                if rest {
                    self.lookups.root.walk(record, &mut found, &self.captured);
                }
            }
            None => self.lookups.root.walk(record, &mut found, &[]),
        }
        let at = |slot: Option<usize>, path: &FieldPath| match slot {
            Some(s) => found[s],
            None => path.lookup(record).map_or(Found::Missing, Found::Tree),
        };
        // Every cell is written below: one per column, each overwritten in place.
        row.cells.resize(self.columns.len(), Cell::Null);
        let mut normalised = 0;
        for ((col, slots), cell) in self
            .columns
            .iter()
            .zip(&self.lookups.columns)
            .zip(row.cells.iter_mut())
        {
            let value = match &col.source {
                Source::Path(p) => at(slots.value, p),
                Source::CustomField(name) => {
                    custom_field(record, name).map_or(Found::Missing, Found::Tree)
                }
            };
            match value {
                Found::Missing => *cell = Cell::Null,
                value => {
                    let currency = col.currency.as_ref().map(|p| at(slots.currency, p));
                    let denoised = convert_found(value, col, currency, cell).map_err(|reason| {
                        RecordError {
                            record_id: crate::extract::RecordRef::new(record, columns).id_text(),
                            column: col.name.clone(),
                            reason,
                        }
                    })?;
                    normalised += u64::from(denoised);
                }
            }
        }
        if normalised > 0 {
            self.normalised.fetch_add(normalised, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The columns' key-only paths as one tree, so a record is walked once per
/// projection instead of hashing every path's keys again for every column
/// (serde_json's maps hash with SipHash).
#[derive(Debug, Clone, Default)]
struct Lookups {
    root: PathNode,
    /// Distinct paths in the tree.
    slots: usize,
    /// For each column, the slots of its value and currency paths (`None`: looked up directly).
    columns: Vec<ColumnSlots>,
}

#[derive(Debug, Clone, Copy, Default)]
struct ColumnSlots {
    value: Option<usize>,
    currency: Option<usize>,
}

#[derive(Debug, Clone, Default)]
struct PathNode {
    /// The slot of the path ending here.
    slot: Option<usize>,
    children: std::collections::HashMap<String, PathNode, foldhash::fast::RandomState>,
}

impl Lookups {
    fn new(columns: &[Compiled]) -> Self {
        let mut me = Lookups::default();
        for col in columns {
            let value = match &col.source {
                Source::Path(p) => me.slot_of(p),
                Source::CustomField(_) => None,
            };
            let currency = col.currency.as_ref().and_then(|p| me.slot_of(p));
            me.columns.push(ColumnSlots { value, currency });
        }
        me
    }

    fn slot_of(&mut self, path: &FieldPath) -> Option<usize> {
        let keys = path.key_only()?;
        let mut node = &mut self.root;
        for k in keys {
            node = node.children.entry(k.to_owned()).or_default();
        }
        if node.slot.is_none() {
            node.slot = Some(self.slots);
            self.slots += 1;
        }
        node.slot
    }
}

impl PathNode {
    /// Fills the slots of this tree's paths from `value`, leaving `skip`ped slots alone.
    fn walk<'a>(&self, value: &'a Value, found: &mut [Found<'a>], skip: &[bool]) {
        let Value::Object(map) = value else { return };
        for (k, v) in map {
            if let Some(child) = self.children.get(k.as_str()) {
                if let Some(slot) = child.slot
                    && !skip.get(slot).copied().unwrap_or(false)
                {
                    found[slot] = if v.is_null() {
                        Found::Missing
                    } else {
                        Found::Tree(v)
                    };
                }
                if !child.children.is_empty() {
                    child.walk(v, found, skip);
                }
            }
        }
    }
}

/// One found value as the column's cell, written into `out`; the flag says
/// whether float noise was removed. Captured text is converted directly
/// in the common cases (a plain string, a number, a bool); anything else is
/// parsed into a value and converted as a record's value is, so both ways
/// give the same cell or the same error.
fn convert_found(
    value: Found<'_>,
    col: &Compiled,
    currency: Option<Found<'_>>,
    out: &mut Cell,
) -> Result<bool, String> {
    if let Found::Raw(raw) = value
        && let Some(done) = convert_raw(raw, col, currency, out)
    {
        return done;
    }
    let value = found_value(value)?;
    let currency = currency.map(found_value).transpose()?;
    let currency = currency.as_ref().map(|c| c.as_deref());
    match &value {
        Some(v) => convert(v, col, currency, out),
        None => {
            *out = Cell::Null;
            Ok(false)
        }
    }
}

/// The found value as a JSON value (captured text parsed; `None` when missing).
fn found_value(found: Found<'_>) -> Result<Option<std::borrow::Cow<'_, Value>>, String> {
    Ok(match found {
        Found::Missing => None,
        Found::Tree(v) => Some(std::borrow::Cow::Borrowed(v)),
        Found::Raw(raw) => Some(std::borrow::Cow::Owned(
            serde_json::from_str(raw).map_err(|e| format!("unreadable value: {e}"))?,
        )),
    })
}

/// Converts captured JSON text directly into `out` when that is plainly the
/// same as converting its value; `None` (with `out` untouched) leaves it to
/// the general way.
fn convert_raw(
    raw: &str,
    col: &Compiled,
    currency: Option<Found<'_>>,
    out: &mut Cell,
) -> Option<Result<bool, String>> {
    if col.ty == ColumnType::String {
        let text = match raw.as_bytes().first()? {
            b'"' => plain_string(raw)?,
            // A number's or bool's text is exactly what serde_json (arbitrary_precision) prints.
            b'-' | b'0'..=b'9' | b't' | b'f' => raw,
            _ => return None,
        };
        out.set_str(text);
        return Some(Ok(false));
    }
    let done = raw_cell(raw, col, currency)?;
    Some(done.map(|(cell, denoised)| {
        *out = cell;
        denoised
    }))
}

/// [`convert_raw`] for the columns other than `string`.
fn raw_cell(
    raw: &str,
    col: &Compiled,
    currency: Option<Found<'_>>,
) -> Option<Result<(Cell, bool), String>> {
    let first = *raw.as_bytes().first()?;
    let ok = |cell: Cell| Some(Ok((cell, false)));
    match first {
        b'"' => {
            let s = plain_string(raw)?;
            match col.ty {
                ColumnType::Timestamp => ok(Cell::Timestamp(convert::parse_timestamp(s)?)),
                ColumnType::Date => ok(Cell::Date(convert::date_of(s)?)),
                ColumnType::Bool => ok(Cell::Bool(convert::bool_of(s)?)),
                ColumnType::String | ColumnType::Decimal { .. } | ColumnType::Integer => None,
            }
        }
        b'-' | b'0'..=b'9' => match col.ty {
            ColumnType::Integer => Some(convert::number_to_integer(raw).map(|c| (c, false))),
            ColumnType::Decimal { precision, scale } => match currency {
                None => Some(convert::number_to_decimal(
                    raw,
                    precision,
                    scale,
                    col.rounding,
                )),
                Some(currency) => {
                    let code = match currency {
                        Found::Missing => None,
                        Found::Tree(v) => Some(v.as_str()),
                        Found::Raw(r) if r.starts_with('"') => Some(Some(plain_string(r)?)),
                        Found::Raw(_) => Some(None),
                    };
                    Some(convert::number_to_money(
                        raw,
                        code.flatten(),
                        precision,
                        scale,
                        col.rounding,
                    ))
                }
            },
            _ => None,
        },
        b't' | b'f' => match col.ty {
            ColumnType::Bool => ok(Cell::Bool(raw == "true")),
            _ => None,
        },
        _ => None,
    }
}

/// The value of the custom field named `name` in the record's `custom_fields` list.
fn custom_field<'a>(record: &'a Value, name: &str) -> Option<&'a Value> {
    record
        .get("custom_fields")?
        .as_array()?
        .iter()
        .find(|f| f.get("name").and_then(Value::as_str) == Some(name))?
        .get("value")
        .filter(|v| !v.is_null())
}

/// One value as the column's cell, written into `out`; the flag says whether
/// float noise was removed.
fn convert(
    value: &Value,
    col: &Compiled,
    currency: Option<Option<&Value>>,
    out: &mut Cell,
) -> Result<bool, String> {
    let (cell, denoised) = match col.ty {
        ColumnType::String => {
            convert::set_string_cell(value, out);
            return Ok(false);
        }
        ColumnType::Decimal { precision, scale } => match currency {
            Some(currency) => convert::to_money(value, currency, precision, scale, col.rounding)?,
            None => convert::to_decimal(value, precision, scale, col.rounding)?,
        },
        ColumnType::Timestamp => (convert::to_timestamp(value)?, false),
        ColumnType::Date => (convert::to_date(value)?, false),
        ColumnType::Bool => (convert::to_bool(value)?, false),
        ColumnType::Integer => (convert::to_integer(value)?, false),
    };
    *out = cell;
    Ok(denoised)
}

#[cfg(test)]
mod tests;
