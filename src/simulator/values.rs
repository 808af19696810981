//! Cell values, filter literals and their comparison semantics.
//!
//! Comparisons follow PostgreSQL as PostgREST exposes it: numbers compare
//! as exact decimals, timestamps as instants, text lexically, and NULL never
//! satisfies a comparison (three-valued logic is handled by the caller).

use std::cmp::Ordering;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;

/// One column value of one row, borrowed where possible so filters over
/// 100k rows do not allocate.
#[derive(Debug, Clone)]
pub(crate) enum Cell<'a> {
    Null,
    Bool(bool),
    Int(i64),
    /// Cents of the home currency; exact by construction.
    Money(i64),
    Dec(Decimal),
    /// Microseconds since the Unix epoch, UTC.
    Ts(i64),
    Str(&'a str),
    Val(&'a Value),
    Owned(Value),
}

impl Cell<'_> {
    pub(crate) fn is_null(&self) -> bool {
        match self {
            Cell::Null => true,
            Cell::Val(v) => v.is_null(),
            Cell::Owned(v) => v.is_null(),
            _ => false,
        }
    }

    pub(crate) fn to_value(&self) -> Value {
        match self {
            Cell::Null => Value::Null,
            Cell::Bool(b) => Value::Bool(*b),
            Cell::Int(i) => Value::from(*i),
            Cell::Money(c) => money_value(*c),
            Cell::Dec(d) => decimal_value(*d),
            Cell::Ts(us) => Value::String(fmt_ts(*us)),
            Cell::Str(s) => Value::String((*s).to_owned()),
            Cell::Val(v) => (*v).clone(),
            Cell::Owned(v) => v.clone(),
        }
    }

    /// Appends the JSON text of this cell.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Cell::Null => out.extend_from_slice(b"null"),
            Cell::Bool(true) => out.extend_from_slice(b"true"),
            Cell::Bool(false) => out.extend_from_slice(b"false"),
            Cell::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
            Cell::Money(c) => out.extend_from_slice(py_float_text(Decimal::new(*c, 2)).as_bytes()),
            Cell::Dec(d) => out.extend_from_slice(py_float_text(*d).as_bytes()),
            Cell::Ts(us) => {
                out.push(b'"');
                out.extend_from_slice(fmt_ts(*us).as_bytes());
                out.push(b'"');
            }
            Cell::Str(s) => write_json_str(out, s),
            Cell::Val(v) => write_value(out, v),
            Cell::Owned(v) => write_value(out, v),
        }
    }
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    // Serializing a Value into a Vec cannot fail.
    serde_json::to_writer(&mut *out, v).expect("serialize JSON value");
}

pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("serialize JSON string");
}

/// Follows a `a->b->c` path below a cell; anything missing is NULL, as in
/// PostgreSQL's `->` on jsonb.
pub(crate) fn nav<'a>(cell: Cell<'a>, path: &[String]) -> Cell<'a> {
    if path.is_empty() {
        return cell;
    }
    match cell {
        Cell::Val(v) => {
            let mut cur = v;
            for key in path {
                match step(cur, key) {
                    Some(next) => cur = next,
                    None => return Cell::Null,
                }
            }
            Cell::Val(cur)
        }
        Cell::Owned(v) => {
            let mut cur = v;
            for key in path {
                let next = match &mut cur {
                    Value::Object(m) => m.remove(key.as_str()),
                    Value::Array(a) => key
                        .parse::<usize>()
                        .ok()
                        .filter(|&i| i < a.len())
                        .map(|i| a.swap_remove(i)),
                    _ => None,
                };
                match next {
                    Some(n) => cur = n,
                    None => return Cell::Null,
                }
            }
            Cell::Owned(cur)
        }
        _ => Cell::Null,
    }
}

fn step<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    match v {
        Value::Object(m) => m.get(key),
        Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    }
}

// ---------------------------------------------------------------- time

/// Formats like Fyle (Python `isoformat()`): microseconds are omitted when
/// they are zero, e.g. `2024-03-05T00:00:00+00:00`.
pub(crate) fn fmt_ts(us: i64) -> String {
    use chrono::{Datelike, Timelike};
    use std::fmt::Write;
    // Hand-rolled: chrono's strftime path dominated page rendering.
    let dt = DateTime::<Utc>::from_timestamp_micros(us).expect("timestamp in range");
    let mut s = String::with_capacity(32);
    let _ = write!(
        s,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    let micros = us.rem_euclid(1_000_000);
    if micros != 0 {
        let _ = write!(s, ".{micros:06}");
    }
    s.push_str("+00:00");
    s
}

/// Nanoseconds since the epoch of a filter literal or stored timestamp
/// string; accepts RFC 3339 (`Z` or offsets, with or without fraction), a
/// space instead of `T`, no offset (UTC), or a plain date (midnight UTC).
pub(crate) fn parse_instant(s: &str) -> Option<i128> {
    let s = s.trim();
    if s.len() < 10 || !s.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    let to_nanos = |dt: DateTime<Utc>| {
        dt.timestamp() as i128 * 1_000_000_000 + dt.timestamp_subsec_nanos() as i128
    };
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(to_nanos(dt.with_timezone(&Utc)));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
        if let Ok(dt) = DateTime::parse_from_str(s, fmt) {
            return Some(to_nanos(dt.with_timezone(&Utc)));
        }
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(ndt) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(to_nanos(ndt.and_utc()));
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(to_nanos(d.and_hms_opt(0, 0, 0)?.and_utc()));
    }
    None
}

// ---------------------------------------------------------------- money

/// JSON number text the way Python's float repr prints a decimal value that
/// has at most a few decimals: `12.5`, `100.0`, `-3.07`, `123456.78`.
pub(crate) fn py_float_text(d: Decimal) -> String {
    let n = d.normalize();
    let s = n.to_string();
    if s.contains('.') { s } else { format!("{s}.0") }
}

pub(crate) fn money_value(cents: i64) -> Value {
    decimal_value(Decimal::new(cents, 2))
}

pub(crate) fn decimal_value(d: Decimal) -> Value {
    Value::Number(
        serde_json::Number::from_str(&py_float_text(d)).expect("decimal text is a JSON number"),
    )
}

/// `d` one ulp away from its nearest double, printed the shortest way that
/// round-trips (`0.3` → `0.30000000000000004`): what a `float` column or an
/// upstream float computation sends instead of the exact amount.
pub(crate) fn noisy_money_value(d: Decimal) -> Value {
    use rust_decimal::prelude::ToPrimitive;
    let x = d.to_f64().unwrap_or(0.0);
    let noisy = f64::from_bits(x.to_bits() + 1);
    Value::Number(serde_json::Number::from_str(&format!("{noisy}")).expect("finite float"))
}

fn number_decimal(n: &serde_json::Number) -> Option<Decimal> {
    let s = n.as_str();
    Decimal::from_str(s)
        .ok()
        .or_else(|| Decimal::from_scientific(s).ok())
}

// ---------------------------------------------------------------- collation

/// How the database orders and compares text (`order=` and `gt`/`lt`/… alike).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Collation {
    /// Byte order (PostgreSQL's `C` collation): `txB… < txa…`.
    #[default]
    C,
    /// A glibc `en_US.UTF-8`-like order: letters and digits compared without
    /// case first (punctuation ignored), then lower case before upper case,
    /// then bytes: `txa… < txB…`.
    EnUs,
}

impl Collation {
    /// Compares two texts the way a database with this collation does.
    pub fn cmp(self, a: &str, b: &str) -> Ordering {
        match self {
            Collation::C => a.cmp(b),
            Collation::EnUs => {
                let primary = |s: &str| {
                    s.chars()
                        .filter(|c| c.is_alphanumeric())
                        .flat_map(char::to_lowercase)
                        .collect::<Vec<char>>()
                };
                // Swapping case makes lower case sort first on the tertiary level.
                let tertiary = |s: &str| {
                    s.chars()
                        .map(|c| {
                            if c.is_lowercase() {
                                c.to_ascii_uppercase()
                            } else {
                                c.to_ascii_lowercase()
                            }
                        })
                        .collect::<String>()
                };
                primary(a)
                    .cmp(&primary(b))
                    .then_with(|| tertiary(a).cmp(&tertiary(b)))
                    .then_with(|| a.cmp(b))
            }
        }
    }
}

impl FromStr for Collation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "c" | "posix" => Ok(Collation::C),
            "en_us" | "en_us.utf8" | "en_us.utf_8" => Ok(Collation::EnUs),
            _ => Err(format!(
                "unknown collation \"{s}\": use C (byte order) or en_US (case-insensitive first)"
            )),
        }
    }
}

// ---------------------------------------------------------------- literals

/// A filter literal, parsed once per request into every type it could be
/// compared as.
#[derive(Debug, Clone)]
pub(crate) struct Lit {
    pub(crate) raw: String,
    dec: Option<Decimal>,
    ts: Option<i128>,
    boolean: Option<bool>,
}

impl Lit {
    pub(crate) fn new(raw: String) -> Self {
        let t = raw.trim();
        let dec = Decimal::from_str(t).ok().or_else(|| {
            if t.contains(['e', 'E']) {
                Decimal::from_scientific(t).ok()
            } else {
                None
            }
        });
        let ts = parse_instant(t);
        let boolean = match t.to_ascii_lowercase().as_str() {
            "true" | "t" => Some(true),
            "false" | "f" => Some(false),
            _ => None,
        };
        Lit {
            raw,
            dec,
            ts,
            boolean,
        }
    }

    /// Whether comparing this literal with a timestamp column cannot fail.
    pub(crate) fn is_timestamp(&self) -> bool {
        self.ts.is_some()
    }

    /// Whether comparing this literal with a numeric column cannot fail.
    pub(crate) fn is_number(&self) -> bool {
        self.dec.is_some()
    }

    fn need_dec(&self, ty: &str) -> Result<Decimal, String> {
        self.dec
            .ok_or_else(|| format!("invalid input syntax for type {ty}: \"{}\"", self.raw))
    }

    fn need_ts(&self) -> Result<i128, String> {
        self.ts.ok_or_else(|| {
            let hint = if self.raw.contains(' ') {
                " (a `+` in a query string must be percent-encoded as %2B)"
            } else {
                ""
            };
            format!(
                "invalid input syntax for type timestamp with time zone: \"{}\"{hint}",
                self.raw
            )
        })
    }
}

/// Compares a cell with a literal: `Ok(None)` when the cell is NULL (SQL
/// unknown), `Err` when the literal cannot be read as the column's type.
pub(crate) fn cmp_lit(
    cell: &Cell<'_>,
    lit: &Lit,
    coll: Collation,
) -> Result<Option<Ordering>, String> {
    Ok(Some(match cell {
        Cell::Null => return Ok(None),
        Cell::Bool(b) => match lit.boolean {
            Some(l) => b.cmp(&l),
            None => {
                return Err(format!(
                    "invalid input syntax for type boolean: \"{}\"",
                    lit.raw
                ));
            }
        },
        Cell::Int(i) => Decimal::from(*i).cmp(&lit.need_dec("integer")?),
        Cell::Money(c) => Decimal::new(*c, 2).cmp(&lit.need_dec("numeric")?),
        Cell::Dec(d) => d.cmp(&lit.need_dec("numeric")?),
        Cell::Ts(us) => (*us as i128 * 1000).cmp(&lit.need_ts()?),
        Cell::Str(s) => cmp_str(s, lit, coll)?,
        Cell::Val(v) => return cmp_value(v, lit, coll),
        Cell::Owned(v) => return cmp_value(v, lit, coll),
    }))
}

fn cmp_str(s: &str, lit: &Lit, coll: Collation) -> Result<Ordering, String> {
    // Timestamp text compares as an instant, so `Z` and `+00:00` spellings
    // agree; a literal that is no timestamp is an error, as for a timestamptz column.
    if looks_like_date(s)
        && let Some(v) = parse_instant(s)
    {
        return Ok(v.cmp(&lit.need_ts()?));
    }
    Ok(coll.cmp(s, lit.raw.as_str()))
}

pub(crate) fn looks_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 10 && b[4] == b'-' && b[7] == b'-' && b[0].is_ascii_digit()
}

fn cmp_value(v: &Value, lit: &Lit, coll: Collation) -> Result<Option<Ordering>, String> {
    Ok(Some(match v {
        Value::Null => return Ok(None),
        Value::Bool(b) => match lit.boolean {
            Some(l) => b.cmp(&l),
            None => {
                return Err(format!(
                    "invalid input syntax for type boolean: \"{}\"",
                    lit.raw
                ));
            }
        },
        Value::Number(n) => match number_decimal(n) {
            Some(d) => d.cmp(&lit.need_dec("numeric")?),
            None => n.as_str().cmp(lit.raw.as_str()),
        },
        Value::String(s) => cmp_str(s, lit, coll)?,
        other => other.to_string().cmp(&lit.raw),
    }))
}

/// Total order used by `order=`: values of one column normally share a type;
/// mixed types fall back to a fixed rank so sorting never panics.
pub(crate) fn cmp_cells(a: &Cell<'_>, b: &Cell<'_>, coll: Collation) -> Ordering {
    fn rank(c: &Cell<'_>) -> u8 {
        match c {
            Cell::Null => 0,
            Cell::Bool(_) => 1,
            Cell::Int(_) | Cell::Money(_) | Cell::Dec(_) => 2,
            Cell::Ts(_) => 3,
            Cell::Str(_) => 4,
            Cell::Val(v) => value_rank(v),
            Cell::Owned(v) => value_rank(v),
        }
    }
    fn value_rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 4,
            _ => 5,
        }
    }
    fn num(c: &Cell<'_>) -> Option<Decimal> {
        match c {
            Cell::Int(i) => Some(Decimal::from(*i)),
            Cell::Money(m) => Some(Decimal::new(*m, 2)),
            Cell::Dec(d) => Some(*d),
            Cell::Val(Value::Number(n)) => number_decimal(n),
            Cell::Owned(Value::Number(n)) => number_decimal(n),
            _ => None,
        }
    }
    fn text<'x>(c: &'x Cell<'_>) -> Option<&'x str> {
        match c {
            Cell::Str(s) => Some(s),
            Cell::Val(Value::String(s)) => Some(s),
            Cell::Owned(Value::String(s)) => Some(s),
            _ => None,
        }
    }
    fn boolean(c: &Cell<'_>) -> Option<bool> {
        match c {
            Cell::Bool(b) => Some(*b),
            Cell::Val(Value::Bool(b)) => Some(*b),
            Cell::Owned(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }
    match (a, b) {
        (Cell::Ts(x), Cell::Ts(y)) => return x.cmp(y),
        (Cell::Money(x), Cell::Money(y)) | (Cell::Int(x), Cell::Int(y)) => return x.cmp(y),
        (Cell::Str(x), Cell::Str(y)) => return coll.cmp(x, y),
        _ => {}
    }
    let (ra, rb) = (rank(a), rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match ra {
        0 => Ordering::Equal,
        1 => boolean(a).cmp(&boolean(b)),
        2 => num(a).cmp(&num(b)),
        4 => match (text(a), text(b)) {
            (Some(x), Some(y)) => coll.cmp(x, y),
            (x, y) => x.cmp(&y),
        },
        _ => a.to_value().to_string().cmp(&b.to_value().to_string()),
    }
}

// ---------------------------------------------------------------- LIKE

/// A compiled LIKE pattern: `%` or `*` match any run, `_` one character.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    tokens: Vec<Tok>,
    case_insensitive: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Any,
    One,
    Ch(char),
}

impl Pattern {
    pub(crate) fn new(pat: &str, case_insensitive: bool) -> Self {
        let src = if case_insensitive {
            pat.to_lowercase()
        } else {
            pat.to_owned()
        };
        let tokens = src
            .chars()
            .map(|c| match c {
                '%' | '*' => Tok::Any,
                '_' => Tok::One,
                c => Tok::Ch(c),
            })
            .collect();
        Pattern {
            tokens,
            case_insensitive,
        }
    }

    pub(crate) fn matches(&self, s: &str) -> bool {
        let text: Vec<char> = if self.case_insensitive {
            s.to_lowercase().chars().collect()
        } else {
            s.chars().collect()
        };
        // Classic greedy wildcard match with one backtrack point: linear in practice.
        let (p, t) = (&self.tokens, &text);
        let (mut pi, mut ti) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() && (p[pi] == Tok::One || p[pi] == Tok::Ch(t[ti])) {
                pi += 1;
                ti += 1;
            } else if pi < p.len() && p[pi] == Tok::Any {
                star = Some((pi, ti));
                pi += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        while pi < p.len() && p[pi] == Tok::Any {
            pi += 1;
        }
        pi == p.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_like_python_isoformat() {
        assert_eq!(
            fmt_ts(1_709_634_153_123_456),
            "2024-03-05T10:22:33.123456+00:00"
        );
        assert_eq!(fmt_ts(1_709_596_800_000_000), "2024-03-05T00:00:00+00:00");
        assert_eq!(
            fmt_ts(1_709_634_153_000_010),
            "2024-03-05T10:22:33.000010+00:00"
        );
    }

    #[test]
    fn instants_parse_in_every_spelling_clients_send() {
        let a = parse_instant("2024-01-01T00:00:00Z").unwrap();
        assert_eq!(parse_instant("2024-01-01T00:00:00+00:00"), Some(a));
        assert_eq!(parse_instant("2024-01-01T00:00:00.000000+00:00"), Some(a));
        assert_eq!(parse_instant("2024-01-01"), Some(a));
        assert_eq!(parse_instant("2024-01-01 00:00:00"), Some(a));
        assert_eq!(parse_instant("2024-01-01T05:30:00+05:30"), Some(a));
        assert!(parse_instant("9999-12-31T23:59:59Z").is_some());
        assert_eq!(parse_instant("2024-01-01T00:00:00 00:00"), None);
        assert_eq!(parse_instant("Uber"), None);
    }

    #[test]
    fn money_prints_like_python_floats() {
        assert_eq!(py_float_text(Decimal::new(1250, 2)), "12.5");
        assert_eq!(py_float_text(Decimal::new(10000, 2)), "100.0");
        assert_eq!(py_float_text(Decimal::new(10, 2)), "0.1");
        assert_eq!(py_float_text(Decimal::new(-307, 2)), "-3.07");
        assert_eq!(py_float_text(Decimal::new(12345678, 2)), "123456.78");
        assert_eq!(money_value(1999).to_string(), "19.99");
    }

    #[test]
    fn comparisons_are_typed() {
        let lit = Lit::new("19.990".into());
        assert_eq!(
            cmp_lit(&Cell::Money(1999), &lit, Collation::C).unwrap(),
            Some(Ordering::Equal)
        );
        let ts = Lit::new("2024-03-05T10:22:33.123456Z".into());
        assert_eq!(
            cmp_lit(&Cell::Ts(1_709_634_153_123_456), &ts, Collation::C).unwrap(),
            Some(Ordering::Equal)
        );
        let v = Value::String("2024-03-05T10:22:33.123456+00:00".into());
        assert_eq!(
            cmp_lit(&Cell::Val(&v), &ts, Collation::C).unwrap(),
            Some(Ordering::Equal)
        );
        assert!(cmp_lit(&Cell::Ts(0), &Lit::new("yesterday".into()), Collation::C).is_err());
        assert_eq!(cmp_lit(&Cell::Null, &lit, Collation::C).unwrap(), None);
        assert_eq!(
            cmp_lit(&Cell::Str("b"), &Lit::new("a".into()), Collation::C).unwrap(),
            Some(Ordering::Greater)
        );
    }

    #[test]
    fn locale_collation_ignores_case_first_unlike_byte_order() {
        assert_eq!(Collation::C.cmp("txa1", "txB2"), Ordering::Greater);
        assert_eq!(Collation::EnUs.cmp("txa1", "txB2"), Ordering::Less);
        assert_eq!(Collation::EnUs.cmp("txab", "txAb"), Ordering::Less);
        assert_eq!(Collation::EnUs.cmp("tx9", "txa"), Ordering::Less);
        assert_eq!(Collation::EnUs.cmp("txAb", "txAb"), Ordering::Equal);
        let lit = Lit::new("txB2".into());
        assert_eq!(
            cmp_lit(&Cell::Str("txa1"), &lit, Collation::EnUs).unwrap(),
            Some(Ordering::Less)
        );
    }

    #[test]
    fn like_patterns() {
        assert!(Pattern::new("Caf*", false).matches("Café ☕"));
        assert!(Pattern::new("%tower%", true).matches("Eiffel TOWER cafe"));
        assert!(!Pattern::new("%tower", true).matches("Eiffel TOWER cafe"));
        assert!(Pattern::new("a_c", false).matches("abc"));
        assert!(Pattern::new("*", false).matches(""));
    }
}
