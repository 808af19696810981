//! RFC 3339 instants as Fyle writes them, read without chrono's general
//! parser: every record carries several timestamps, and the pager and the
//! de-duplication read one of them for each record.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};

/// The instant `text` names, to the nanosecond; `None` when it is not RFC 3339.
pub fn parse_rfc3339(text: &str) -> Option<DateTime<Utc>> {
    if let Some(t) = common_shape(text.as_bytes(), Precision::Nanos) {
        return Some(t);
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// How many fraction digits [`common_shape`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// All of them.
    Nanos,
    /// Six: what CSV and Parquet cells hold (the rest is truncated).
    Micros,
}

/// The common shape `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `None` for
/// anything else (leap seconds, a lowercase `t`, other separators, odd
/// offsets), which chrono then decides.
pub fn common_shape(b: &[u8], precision: Precision) -> Option<DateTime<Utc>> {
    #[inline(always)]
    fn digit(c: u8) -> Option<u32> {
        let v = c.wrapping_sub(b'0');
        (v < 10).then_some(u32::from(v))
    }
    #[inline(always)]
    fn two(b: &[u8], at: usize) -> Option<u32> {
        Some(digit(b[at])? * 10 + digit(b[at + 1])?)
    }
    // Scales a fraction of `n` digits to nanoseconds.
    const SCALE: [u32; 10] = [
        0,
        100_000_000,
        10_000_000,
        1_000_000,
        100_000,
        10_000,
        1_000,
        100,
        10,
        1,
    ];
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = two(b, 0)? * 100 + two(b, 2)?;
    let date = NaiveDate::from_ymd_opt(year as i32, two(b, 5)?, two(b, 8)?)?;
    let (h, m, sec) = (two(b, 11)?, two(b, 14)?, two(b, 17)?);
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix(b".") {
        let mut n = 0;
        while let Some(v) = frac.get(n).and_then(|&c| digit(c)) {
            if n == 9 {
                return None;
            }
            nanos = nanos * 10 + v;
            n += 1;
        }
        if n == 0 {
            return None;
        }
        nanos *= SCALE[n];
        rest = &frac[n..];
    }
    let offset_secs = match *rest {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (oh, om) = (two(&[h1, h2], 0)?, two(&[m1, m2], 0)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let secs = i64::from(oh * 3600 + om * 60);
            if sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    if precision == Precision::Micros {
        nanos -= nanos % 1000;
    }
    // Leap seconds (60) and other out-of-range fields are left to chrono.
    let local = date.and_time(NaiveTime::from_hms_nano_opt(h, m, sec, nanos)?);
    if offset_secs == 0 {
        return Some(local.and_utc());
    }
    let utc = local.checked_sub_signed(chrono::Duration::seconds(offset_secs))?;
    Some(utc.and_utc())
}

/// Timestamps in every shape the fast reader must decide as chrono does:
/// the common ones, those only chrono accepts, invalid ones, every fraction
/// length and offset sign, and a common one with each byte replaced by a
/// digit, a separator or junk, and cut at each byte.
#[cfg(test)]
pub(crate) fn sample_texts() -> Vec<String> {
    let mut texts: Vec<String> = [
        "2024-03-05T10:22:33Z",
        "2024-03-05T10:22:33.489185+00:00",
        "2024-02-29T23:59:59.999999999-05:30",
        "2023-02-29T10:00:00Z",
        "2024-03-05T24:00:00Z",
        "2016-12-31T23:59:60Z",
        "2024-03-05t10:22:33z",
        "2024-03-05 10:22:33Z",
        "2024-03-05T10:22:33.Z",
        "2024-03-05T10:22:33.1234567890Z",
        "2024-03-05T10:22:33+24:00",
        "2024-03-05T10:22:33+0100",
        "+2024-03-05T10:22:33Z",
        "2024-3-05T10:22:33Z",
        "0000-01-01T00:00:00+00:01",
        "9999-12-31T23:59:59-23:59",
        "not a time",
    ]
    .map(String::from)
    .to_vec();
    // Every fraction length and offset sign over a day boundary.
    for digits in 1..=9 {
        for offset in ["Z", "+05:45", "-11:00", "+00:00"] {
            texts.push(format!(
                "2024-12-31T23:59:59.{}{offset}",
                &"987654321"[..digits]
            ));
        }
    }
    let base = "2024-02-29T23:59:59.123456+05:30";
    for at in 0..base.len() {
        for c in ['0', '9', '-', ':', '.', 'Z', '+', 'x', '/'] {
            let mut t = base.to_string();
            t.replace_range(at..at + 1, &c.to_string());
            texts.push(t);
        }
        texts.push(base[..at].to_string());
    }
    texts
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::SubsecRound;

    #[test]
    fn instants_are_read_as_chrono_reads_them_to_the_nanosecond_or_the_microsecond() {
        for text in &sample_texts() {
            let chrono = DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|t| t.with_timezone(&Utc));
            assert_eq!(parse_rfc3339(text), chrono, "{text}");
            // The fast shape decides only what chrono would read the same way.
            if let Some(fast) = common_shape(text.as_bytes(), Precision::Micros) {
                assert_eq!(Some(fast), chrono.map(|t| t.trunc_subsecs(6)), "{text}");
            }
        }
        assert!(common_shape(b"2024-03-05T10:22:33.489185+00:00", Precision::Nanos).is_some());
        // Two instants a nanosecond apart stay apart (the pager orders by them).
        let a = parse_rfc3339("2024-01-01T00:00:00.000000001Z").unwrap();
        let b = parse_rfc3339("2024-01-01T00:00:00.000000002Z").unwrap();
        assert!(a < b);
    }
}
