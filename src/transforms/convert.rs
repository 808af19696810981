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
pub(crate) fn to_string_cell(value: &Value) -> Cell {
    match value {
        Value::Null => Cell::Null,
        Value::String(s) => Cell::Str(s.clone()),
        Value::Number(n) => Cell::Str(n.to_string()),
        Value::Bool(b) => Cell::Str(b.to_string()),
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
            Cell::Str(parts.join(", "))
        }
        other => Cell::Str(other.to_string()),
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

/// Converts to a decimal at exactly `scale` digits, checking `precision`.
pub(crate) fn to_decimal(
    value: &Value,
    precision: u8,
    scale: u8,
    rounding: Rounding,
) -> Result<Cell, String> {
    let text = match value {
        Value::Null => return Ok(Cell::Null),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => return Err(format!("expected a decimal number, found {}", quote(other))),
    };
    let d = parse_decimal_text(&text)?;
    Ok(Cell::Decimal(fit_decimal(
        d, &text, precision, scale, rounding,
    )?))
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
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc).trunc_subsecs(6))
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
        Value::String(s) => {
            let t = s.trim();
            if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
                // chrono accepts `2024-3-5`; a strict ten-character form avoids ambiguity.
                if t.len() == 10 {
                    return Ok(Cell::Date(d));
                }
            }
            parse_timestamp(t)
                .map(|ts| Cell::Date(ts.date_naive()))
                .ok_or_else(|| {
                    format!(
                        "{} is not a date (expected YYYY-MM-DD or an RFC 3339 timestamp)",
                        quote(value)
                    )
                })
        }
        other => Err(format!(
            "expected a date string (YYYY-MM-DD), found {}",
            quote(other)
        )),
    }
}

/// Converts a JSON bool, or the strings `true`/`false` (any case), to a bool.
pub(crate) fn to_bool(value: &Value) -> Result<Cell, String> {
    match value {
        Value::Null => Ok(Cell::Null),
        Value::Bool(b) => Ok(Cell::Bool(*b)),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(Cell::Bool(true)),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(Cell::Bool(false)),
        other => Err(format!("expected true or false, found {}", quote(other))),
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
    if let Ok(i) = text.parse::<i64>() {
        return Ok(Cell::Int(i));
    }
    let d = parse_decimal_text(&text).map_err(|_| format!("`{text}` is not an integer"))?;
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
