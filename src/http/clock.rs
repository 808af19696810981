//! The servers' clocks as their `Date` headers show them, so windows can be
//! bounded by the clock that stamps the data rather than by this machine's.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use reqwest::header::{DATE, HeaderMap};
use url::Url;

/// `Date` has one-second precision: the server's clock was somewhere in `[date, date + 1 s)`.
const DATE_PRECISION: Duration = Duration::seconds(1);

/// One reading of a server's clock: its `Date` header and when we received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerClock {
    /// The server's `Date` header.
    pub date: DateTime<Utc>,
    /// This machine's clock when the response headers arrived.
    pub received_at: DateTime<Utc>,
}

impl ServerClock {
    /// The latest the server's clock can read at local instant `local_now`
    /// (the header is truncated to the second, so add its precision).
    pub fn latest_now(&self, local_now: DateTime<Utc>) -> DateTime<Utc> {
        self.date + DATE_PRECISION + (local_now - self.received_at)
    }

    /// Server clock minus this machine's clock (positive: the server is ahead),
    /// estimated from the middle of the header's precision.
    pub fn skew(&self) -> Duration {
        self.date + DATE_PRECISION / 2 - self.received_at
    }
}

/// Describes a skew for people: "12.3 s behind" / "4.0 s ahead".
pub fn describe_skew(skew: Duration) -> String {
    let secs = skew.num_milliseconds() as f64 / 1000.0;
    if secs < 0.0 {
        format!("{:.1} s behind", -secs)
    } else {
        format!("{secs:.1} s ahead")
    }
}

/// The last clock reading per origin (scheme, host, port).
#[derive(Debug, Default)]
pub(crate) struct Clocks {
    by_origin: Mutex<HashMap<String, ServerClock>>,
}

impl Clocks {
    /// Records the `Date` header of a response from `url`, if it has a valid one.
    pub(crate) fn observe(&self, url: &Url, headers: &HeaderMap, received_at: DateTime<Utc>) {
        let Some(date) = headers
            .get(DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| DateTime::parse_from_rfc2822(v.trim()).ok())
        else {
            return;
        };
        self.by_origin.lock().expect("clocks").insert(
            url.origin().ascii_serialization(),
            ServerClock {
                date: date.with_timezone(&Utc),
                received_at,
            },
        );
    }

    /// The last reading of the server at `url`'s origin.
    pub(crate) fn get(&self, url: &Url) -> Option<ServerClock> {
        self.by_origin
            .lock()
            .expect("clocks")
            .get(&url.origin().ascii_serialization())
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_date_header_is_read_per_origin() {
        let clocks = Clocks::default();
        let mut h = HeaderMap::new();
        h.insert(DATE, "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
        let at: DateTime<Utc> = "1994-11-06T08:50:07.250Z".parse().unwrap();
        clocks.observe(&Url::parse("http://a.test:81/x?y=1").unwrap(), &h, at);
        let c = clocks
            .get(&Url::parse("http://a.test:81/other").unwrap())
            .unwrap();
        assert_eq!(
            c.date,
            "1994-11-06T08:49:37Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(c.skew(), Duration::milliseconds(-29_750));
        assert_eq!(describe_skew(c.skew()), "29.8 s behind");
        assert_eq!(
            c.latest_now(at + Duration::seconds(10)),
            "1994-11-06T08:49:48Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert!(
            clocks
                .get(&Url::parse("http://a.test:82/").unwrap())
                .is_none()
        );
        h.insert(DATE, "yesterday".parse().unwrap());
        clocks.observe(&Url::parse("http://b.test/").unwrap(), &h, at);
        assert!(clocks.get(&Url::parse("http://b.test/").unwrap()).is_none());
    }
}
