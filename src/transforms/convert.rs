//! JSON value → typed cell conversions.
//!
//! Every conversion works on the value's exact source text (numbers keep it
//! through `serde_json/arbitrary_precision`), so money never passes through
//! `f64`. Errors are plain reasons; the projector adds the record and column.

use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::Value;

use super::Rounding;
use crate::row::Cell;

/// Longest value text quoted back in an error, so a huge blob cannot flood the quarantine file.
const MAX_QUOTED: usize = 80;

/// The value as it appeared in the source, shortened for error messages.
pub(crate) fn quote(value: &Value) -> String {
    let text = match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    if text.chars().count() > MAX_QUOTED {
        let cut: String = text.chars().take(MAX_QUOTED).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// Text for a `string` column: scalars as written, scalar lists joined, structures as JSON.
/// Written into `out`, whose string memory a scalar reuses (see [`Cell::set_str`]).
pub(crate) fn set_string_cell(value: &Value, out: &mut Cell) {
    match value {
        Value::Null => *out = Cell::Null,
        Value::String(s) => out.set_str(s),
        Value::Number(n) => out.set_str(n.as_str()),
        Value::Bool(b) => out.set_str(if *b { "true" } else { "false" }),
        Value::Array(items) if items.iter().all(is_scalar) => {
            // Nulls inside a list carry no information for a reader of the joined text.
            let parts: Vec<String> = items
                .iter()
                .filter(|v| !v.is_null())
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            *out = Cell::Str(parts.join(", ").into());
        }
        other => *out = Cell::Str(other.to_string().into()),
    }
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Array(_) | Value::Object(_))
}

/// Parses decimal text exactly: plain (`-1234.50`) or scientific (`1.5e3`), never via `f64`.
pub(crate) fn parse_decimal_text(text: &str) -> Result<Decimal, String> {
    let text = text.trim();
    let bad = || format!("`{text}` is not a decimal number");
    if text.is_empty()
        || !text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
    {
        return Err(bad());
    }
    let (base, exponent) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    let base = base.strip_prefix('+').unwrap_or(base);
    if base.is_empty() {
        return Err(bad());
    }
    let mut d = Decimal::from_str_exact(base).map_err(|e| decimal_error(text, e))?;
    if let Some(exp) = exponent {
        let exp: i64 = exp.parse().map_err(|_| bad())?;
        let scale = i64::from(d.scale());
        if exp <= scale {
            let new_scale = scale
                .checked_sub(exp)
                .and_then(|s| u32::try_from(s).ok())
                .filter(|s| *s <= Decimal::MAX_SCALE)
                .ok_or_else(|| {
                    format!("`{text}` has more decimal places than can be held exactly (28)")
                })?;
            d.set_scale(new_scale).map_err(|e| decimal_error(text, e))?;
        } else {
            d.set_scale(0).map_err(|e| decimal_error(text, e))?;
            let mut remaining = exp - scale;
            while remaining > 0 {
                d = d
                    .checked_mul(Decimal::TEN)
                    .ok_or_else(|| format!("`{text}` is too large for a decimal column"))?;
                remaining -= 1;
            }
        }
    }
    if d.is_zero() {
        // `-0.00` would otherwise print with its sign in CSV.
        d.set_sign_positive(true);
    }
    Ok(d)
}

fn decimal_error(text: &str, e: rust_decimal::Error) -> String {
    match e {
        rust_decimal::Error::ExceedsMaximumPossibleValue
        | rust_decimal::Error::LessThanMinimumPossibleValue => {
            format!("`{text}` is too large for a decimal column")
        }
        rust_decimal::Error::Underflow | rust_decimal::Error::ScaleExceedsMaximumPrecision(_) => {
            format!("`{text}` has more decimal places than can be held exactly (28)")
        }
        _ => format!("`{text}` is not a decimal number"),
    }
}

/// The exact decimal of a number or numeric string, with its source text; `None` for null.
fn decimal_of(value: &Value) -> Result<Option<(Decimal, String)>, String> {
    let text = match value {
        Value::Null => return Ok(None),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => return Err(format!("expected a decimal number, found {}", quote(other))),
    };
    let d = parse_decimal_text(&text)?;
    Ok(Some((d, text)))
}

/// Converts to a decimal at exactly `scale` digits, checking `precision`;
/// the flag says whether float noise was removed on the way.
pub(crate) fn to_decimal(
    value: &Value,
    precision: u8,
    scale: u8,
    rounding: Rounding,
) -> Result<(Cell, bool), String> {
    let Some((d, text)) = decimal_of(value)? else {
        return Ok((Cell::Null, false));
    };
    decimal_cell(d, &text, precision, scale, rounding)
}

/// [`to_decimal`] of a JSON number's exact text.
pub(crate) fn number_to_decimal(
    text: &str,
    precision: u8,
    scale: u8,
    rounding: Rounding,
) -> Result<(Cell, bool), String> {
    decimal_cell(parse_decimal_text(text)?, text, precision, scale, rounding)
}

fn decimal_cell(
    d: Decimal,
    text: &str,
    precision: u8,
    scale: u8,
    rounding: Rounding,
) -> Result<(Cell, bool), String> {
    let (d, normalised) = denoise(d, text, u32::from(scale));
    let d = fit_decimal(d, text, precision, scale, rounding)?;
    Ok((Cell::Decimal(d), normalised))
}

/// Converts an amount to its currency's minor units (ISO 4217; at most
/// `scale`, the column's storage scale), checking `precision` at `scale`.
pub(crate) fn to_money(
    value: &Value,
    currency: Option<&Value>,
    precision: u8,
    scale: u8,
    rounding: Rounding,
) -> Result<(Cell, bool), String> {
    let Some((d, text)) = decimal_of(value)? else {
        return Ok((Cell::Null, false));
    };
    money_cell(
        d,
        &text,
        currency.and_then(Value::as_str),
        precision,
        scale,
        rounding,
    )
}

/// [`to_money`] of a JSON number's exact text and the currency's text (when a string).
pub(crate) fn number_to_money(
    text: &str,
    currency: Option<&str>,
    precision: u8,
    scale: u8,
    rounding: Rounding,
) -> Result<(Cell, bool), String> {
    let d = parse_decimal_text(text)?;
    money_cell(d, text, currency, precision, scale, rounding)
}

fn money_cell(
    d: Decimal,
    text: &str,
    currency: Option<&str>,
    precision: u8,
    scale: u8,
    rounding: Rounding,
) -> Result<(Cell, bool), String> {
    let code = currency.map(str::trim).filter(|c| !c.is_empty());
    let digits = code
        .and_then(minor_units)
        .unwrap_or(UNKNOWN_CURRENCY_DIGITS)
        .min(u32::from(scale));
    let (d, normalised) = denoise(d, text, digits);
    if rounding == Rounding::Error && d.scale() > digits && d.trunc_with_scale(digits) != d {
        let unit = match code.map(|c| (c, minor_units(c))) {
            Some((c, Some(_))) => format!("the minor units of {c}"),
            Some((c, None)) => format!("assumed for `{c}`, which is not an ISO 4217 code we know"),
            None => "assumed as the record has no currency".to_string(),
        };
        return Err(format!(
            "`{}` has more than {digits} decimal places ({unit}); money is not rounded silently \
             (set `rounding = \"half_even\"` or `\"half_up\"` on this column)",
            text.trim()
        ));
    }
    let digits8 = u8::try_from(digits).expect("at most the column scale");
    let d = fit_decimal(d, text, precision, digits8, rounding)?;
    // Parquet stores the column at `scale`; the value must fit there too.
    fit_decimal(d, text, precision, scale, Rounding::Error)?;
    Ok((Cell::Decimal(d), normalised))
}

/// Digits after the point for a currency the ISO 4217 table below does not know.
const UNKNOWN_CURRENCY_DIGITS: u32 = 2;

/// ISO 4217 minor units of `code`: 0 or 3 for the currencies listed, 2 for any
/// other three-letter code, `None` for something that is not a currency code.
/// (CLF and UYW, units of account with 4, are not spent and count as 2.)
pub(crate) fn minor_units(code: &str) -> Option<u32> {
    const ZERO: &[&str] = &[
        "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
        "VUV", "XAF", "XOF", "XPF",
    ];
    const THREE: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
    let &[a, b, c] = code.as_bytes() else {
        return None;
    };
    if ![a, b, c].iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    // Uppercased on the stack: this runs for every amount of every record.
    let upper = [
        a.to_ascii_uppercase(),
        b.to_ascii_uppercase(),
        c.to_ascii_uppercase(),
    ];
    let upper = std::str::from_utf8(&upper).expect("ASCII letters");
    Some(if ZERO.contains(&upper) {
        0
    } else if THREE.contains(&upper) {
        3
    } else {
        2
    })
}

/// Significant digits every IEEE-754 double keeps through a decimal round trip.
const DOUBLE_DIGITS: u32 = 15;

/// `d` with binary-float noise removed; the flag says whether that made it
/// fit a column of `scale` digits (what the summary counts as normalised).
///
/// Noise is removed even when the exact value still has more decimals than
/// the column, so `rounding` works on the amount meant (`0.025`), not on its
/// noise (`0.025000000000000005` would round half-even the other way).
fn denoise(d: Decimal, text: &str, scale: u32) -> (Decimal, bool) {
    if d.scale() <= scale {
        return (d, false);
    }
    match float_noise_value(d, text) {
        Some(exact) => (exact, exact.scale() <= scale),
        None => (d, false),
    }
}

/// The decimal a float-noise value stands for: `0.30000000000000004` → `0.3`.
///
/// Noise is a value whose text is the shortest round-trip form of a double
/// and has more than 15 significant digits: digits a double cannot carry
/// faithfully. It is rounded to 15 significant digits on its decimal text
/// (never through `f64` arithmetic). The `f64` parse only checks that the text
/// is what a float printer writes; a longer decimal was written on purpose.
pub(crate) fn float_noise_value(d: Decimal, text: &str) -> Option<Decimal> {
    let n = d.normalize();
    let digits = significant_digits(n);
    // A double's shortest round-trip text has at most 17 significant digits.
    if !(DOUBLE_DIGITS + 1..=17).contains(&digits) {
        return None;
    }
    let f: f64 = text.trim().parse().ok()?;
    if !f.is_finite() {
        return None;
    }
    let shortest = Decimal::from_str_exact(&format!("{f}")).ok()?;
    if shortest != n {
        return None;
    }
    let mut exact = n.round_sf(DOUBLE_DIGITS)?.normalize();
    if exact.is_zero() {
        exact.set_sign_positive(true);
    }
    Some(exact)
}

fn significant_digits(n: Decimal) -> u32 {
    let mut m = n.mantissa().unsigned_abs();
    let mut k = 0;
    while m > 0 {
        m /= 10;
        k += 1;
    }
    k
}

/// Brings `d` to `scale` (rounding only when allowed) and checks it fits `precision` digits.
pub(crate) fn fit_decimal(
    mut d: Decimal,
    text: &str,
    precision: u8,
    scale: u8,
    rounding: Rounding,
) -> Result<Decimal, String> {
    let scale32 = u32::from(scale);
    if d.scale() > scale32 {
        let rounded = match rounding {
            Rounding::Error => d.round_dp_with_strategy(scale32, RoundingStrategy::ToZero),
            Rounding::HalfEven => {
                d.round_dp_with_strategy(scale32, RoundingStrategy::MidpointNearestEven)
            }
            Rounding::HalfUp => {
                d.round_dp_with_strategy(scale32, RoundingStrategy::MidpointAwayFromZero)
            }
        };
        if rounding == Rounding::Error && rounded != d {
            return Err(format!(
                "`{}` has more than {scale} decimal places; money is not rounded silently \
                 (raise `scale`, or set `rounding = \"half_even\"` or `\"half_up\"` on this column)",
                text.trim()
            ));
        }
        d = rounded;
    }
    d.rescale(scale32);
    if d.scale() != scale32 {
        return Err(format!(
            "`{}` is too large to hold with {scale} decimal places",
            text.trim()
        ));
    }
    if d.is_zero() {
        d.set_sign_positive(true);
    }
    let limit = 10i128.pow(u32::from(precision));
    if d.mantissa().abs() >= limit {
        return Err(format!(
            "`{}` needs more than {precision} digits (precision {precision}, scale {scale}); raise `precision`",
            text.trim()
        ));
    }
    Ok(d)
}

/// Parses an RFC 3339 instant; sub-microsecond digits are truncated so CSV and Parquet agree.
pub(crate) fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Some(t) = common_timestamp(text.as_bytes()) {
        return Some(t);
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc).trunc_subsecs(6))
}

/// The common RFC 3339 shape read without chrono, to the microsecond.
fn common_timestamp(b: &[u8]) -> Option<DateTime<Utc>> {
    crate::common::instant::common_shape(b, crate::common::instant::Precision::Micros)
}

/// Converts an RFC 3339 string to a UTC instant.
pub(crate) fn to_timestamp(value: &Value) -> Result<Cell, String> {
    match value {
        Value::Null => Ok(Cell::Null),
        Value::String(s) => parse_timestamp(s).map(Cell::Timestamp).ok_or_else(|| {
            format!(
                "{} is not an RFC 3339 timestamp (expected e.g. 2024-03-05T10:22:33.123+00:00)",
                quote(value)
            )
        }),
        other => Err(format!(
            "expected an RFC 3339 timestamp string, found {}",
            quote(other)
        )),
    }
}

/// Converts `YYYY-MM-DD`, or a timestamp (taking its UTC date), to a date.
pub(crate) fn to_date(value: &Value) -> Result<Cell, String> {
    match value {
        Value::Null => Ok(Cell::Null),
        Value::String(s) => date_of(s).map(Cell::Date).ok_or_else(|| {
            format!(
                "{} is not a date (expected YYYY-MM-DD or an RFC 3339 timestamp)",
                quote(value)
            )
        }),
        other => Err(format!(
            "expected a date string (YYYY-MM-DD), found {}",
            quote(other)
        )),
    }
}

/// The date of `YYYY-MM-DD` text, or of an RFC 3339 timestamp (its UTC date).
pub(crate) fn date_of(text: &str) -> Option<NaiveDate> {
    let t = text.trim();
    if let Some(t) = common_timestamp(t.as_bytes()) {
        return Some(t.date_naive());
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        // chrono accepts `2024-3-5`; a strict ten-character form avoids ambiguity.
        if t.len() == 10 {
            return Some(d);
        }
    }
    parse_timestamp(t).map(|ts| ts.date_naive())
}

/// Converts a JSON bool, or the strings `true`/`false` (any case), to a bool.
pub(crate) fn to_bool(value: &Value) -> Result<Cell, String> {
    match value {
        Value::Null => Ok(Cell::Null),
        Value::Bool(b) => Ok(Cell::Bool(*b)),
        Value::String(s) => bool_of(s)
            .map(Cell::Bool)
            .ok_or_else(|| format!("expected true or false, found {}", quote(value))),
        other => Err(format!("expected true or false, found {}", quote(other))),
    }
}

/// `true`/`false` text, any case, spaces around allowed.
pub(crate) fn bool_of(text: &str) -> Option<bool> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("true") {
        Some(true)
    } else if t.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Converts a JSON integer or integer string to an `i64`; a fractional part is an error.
pub(crate) fn to_integer(value: &Value) -> Result<Cell, String> {
    let text = match value {
        Value::Null => return Ok(Cell::Null),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_string(),
        other => return Err(format!("expected an integer, found {}", quote(other))),
    };
    number_to_integer(&text)
}

/// [`to_integer`] of a JSON number's exact text (or a numeric string's trimmed text).
pub(crate) fn number_to_integer(text: &str) -> Result<Cell, String> {
    if let Ok(i) = text.parse::<i64>() {
        return Ok(Cell::Int(i));
    }
    let d = parse_decimal_text(text).map_err(|_| format!("`{text}` is not an integer"))?;
    if !d.fract().is_zero() {
        return Err(format!(
            "`{text}` has a fractional part; expected an integer"
        ));
    }
    // `12.0` or `1e3`: integral after all.
    let mut whole = d;
    whole.rescale(0);
    i64::try_from(whole.mantissa())
        .map(Cell::Int)
        .map_err(|_| format!("`{text}` is outside the 64-bit integer range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(text: &str) -> Value {
        serde_json::from_str(text).expect("a JSON number")
    }

    fn dec(cell: Cell) -> String {
        match cell {
            Cell::Decimal(d) => d.to_string(),
            other => panic!("not a decimal: {other:?}"),
        }
    }

    #[test]
    fn timestamps_are_read_as_chrono_reads_them_to_the_microsecond() {
        for t in &crate::common::instant::sample_texts() {
            let chrono = DateTime::parse_from_rfc3339(t)
                .ok()
                .map(|t| t.with_timezone(&Utc).trunc_subsecs(6));
            assert_eq!(parse_timestamp(t), chrono, "{t}");
        }
        assert_eq!(
            date_of("2024-01-01T01:00:00+02:00"),
            NaiveDate::from_ymd_opt(2023, 12, 31)
        );
    }

    #[test]
    fn float_noise_is_normalised_from_the_decimal_text() {
        for (text, want) in [
            ("0.30000000000000004", "0.30"),
            ("7.000000000000001", "7.00"),
            ("434.99999999999994", "435.00"),
            ("-12.340000000000002", "-12.34"),
            ("1.2e-1", "0.12"),
        ] {
            let (cell, normalised) = to_decimal(&num(text), 18, 2, Rounding::Error).unwrap();
            assert_eq!(dec(cell), want, "{text}");
            assert_eq!(normalised, text.len() > 10, "{text}");
        }
    }

    #[test]
    fn genuine_extra_decimals_follow_the_rounding_policy() {
        // 16 digits, but not a double's shortest text: written on purpose.
        let long = num("0.1000000000000000001");
        assert!(to_decimal(&long, 18, 2, Rounding::Error).is_err());
        // Noise whose exact value still has 3 decimals is not noise for a 2-place column.
        let three = num("12.345000000000002");
        let err = to_decimal(&three, 18, 2, Rounding::Error).unwrap_err();
        assert!(err.contains("more than 2 decimal places"), "{err}");
        let plain = num("12.345");
        assert!(to_decimal(&plain, 18, 2, Rounding::Error).is_err());
        let (c, n) = to_decimal(&plain, 18, 2, Rounding::HalfEven).unwrap();
        assert_eq!((dec(c), n), ("12.34".to_string(), false));
        let (c, _) = to_decimal(&plain, 18, 2, Rounding::HalfUp).unwrap();
        assert_eq!(dec(c), "12.35");
        // Rounding works on the amount meant, not on its noise: 12.345 → 12.34 half-even.
        let (c, n) = to_decimal(&three, 18, 2, Rounding::HalfEven).unwrap();
        assert_eq!((dec(c), n), ("12.34".to_string(), false));
        // With room for the digits, noise normalises to them.
        let (c, n) = to_decimal(&three, 18, 3, Rounding::Error).unwrap();
        assert_eq!((dec(c), n), ("12.345".to_string(), true));
    }

    #[test]
    fn money_keeps_each_currencys_minor_units() {
        let s = |c: &str| Value::String(c.into());
        let money = |text: &str, cur: Option<Value>, r| {
            to_money(&num(text), cur.as_ref(), 18, 3, r).map(|(c, n)| (dec(c), n))
        };
        assert_eq!(
            money("12.345", Some(s("KWD")), Rounding::Error).unwrap().0,
            "12.345"
        );
        assert_eq!(
            money("12.3", Some(s("KWD")), Rounding::Error).unwrap().0,
            "12.300"
        );
        assert_eq!(
            money("12.3", Some(s("USD")), Rounding::Error).unwrap().0,
            "12.30"
        );
        assert_eq!(
            money("1200.0", Some(s("JPY")), Rounding::Error).unwrap().0,
            "1200"
        );
        assert_eq!(
            money("1200.0000000000002", Some(s("jpy")), Rounding::Error).unwrap(),
            ("1200".to_string(), true)
        );
        let err = money("12.345", Some(s("USD")), Rounding::Error).unwrap_err();
        assert!(err.contains("minor units of USD"), "{err}");
        let err = money("1200.5", Some(s("JPY")), Rounding::Error).unwrap_err();
        assert!(err.contains("more than 0 decimal places"), "{err}");
        assert_eq!(
            money("12.345", Some(s("USD")), Rounding::HalfUp).unwrap().0,
            "12.35"
        );
        let err = money("12.345", None, Rounding::Error).unwrap_err();
        assert!(err.contains("no currency"), "{err}");
        assert_eq!(minor_units("XYZ"), Some(2));
        assert_eq!(minor_units("dollars"), None);
    }
}
