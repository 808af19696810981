//! `[http]` section of a pipeline file.

use std::time::Duration;

use serde::Deserialize;

use crate::common::Problem;

/// Limits, timeouts and retry policy for every request a pipeline makes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Requests per second for the whole process (Fyle allows 10 per IP).
    pub requests_per_second: f64,
    /// Requests that may leave back to back after a quiet spell, as a token
    /// bucket of this size refilled at `requests_per_second` (default: one
    /// less than `requests_per_second`, at least 1; 1 spaces every request).
    pub burst: Option<u32>,
    /// How long to wait for a TCP/TLS connection.
    #[serde(with = "crate::common::duration")]
    pub connect_timeout: Duration,
    /// How long one request may take, body included.
    #[serde(with = "crate::common::duration")]
    pub request_timeout: Duration,
    /// Retries after the first attempt, for 429, 5xx, timeouts and resets.
    pub max_retries: u32,
    /// First backoff delay; doubles each retry, with jitter.
    #[serde(with = "crate::common::duration")]
    pub initial_backoff: Duration,
    /// Longest backoff delay, and the longest `Retry-After` honoured.
    #[serde(with = "crate::common::duration")]
    pub max_backoff: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            requests_per_second: 10.0,
            burst: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_retries: 8,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl HttpConfig {
    /// The same limits with short timeouts and few, short retries, so that
    /// `check` answers within seconds whatever is wrong.
    pub fn for_check(&self) -> HttpConfig {
        let max_backoff = self.max_backoff.min(Duration::from_secs(2));
        HttpConfig {
            requests_per_second: self.requests_per_second,
            burst: self.burst,
            connect_timeout: self.connect_timeout.min(Duration::from_secs(5)),
            request_timeout: self.request_timeout.min(Duration::from_secs(20)),
            max_retries: self.max_retries.min(2),
            initial_backoff: self.initial_backoff.min(max_backoff),
            max_backoff,
        }
    }

    /// The limiter's bucket size: `burst`, or one less than the rate, so that a
    /// server whose bucket holds one second's worth (Fyle's 10 per IP) keeps a
    /// token in reserve for requests that reach it closer together than they left.
    pub fn effective_burst(&self) -> u32 {
        self.burst
            .unwrap_or_else(|| (self.requests_per_second.floor() as u32).saturating_sub(1))
            .max(1)
    }

    /// Checks values a request could not work with.
    pub fn validate(&self, prefix: &str) -> Vec<Problem> {
        let mut p = Vec::new();
        if !(self.requests_per_second.is_finite() && self.requests_per_second > 0.0) {
            p.push(Problem::new(
                format!("{prefix}.requests_per_second"),
                format!(
                    "must be a number greater than 0 (requests per second), got {}",
                    self.requests_per_second
                ),
            ));
        } else if self.requests_per_second > 1000.0 {
            p.push(Problem::new(
                format!("{prefix}.requests_per_second"),
                "must be at most 1000",
            ));
        }
        if self.burst == Some(0) {
            p.push(Problem::new(
                format!("{prefix}.burst"),
                "must be at least 1 (1 spaces every request evenly)",
            ));
        }
        for (key, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("max_backoff", self.max_backoff),
        ] {
            if d.is_zero() {
                p.push(Problem::new(
                    format!("{prefix}.{key}"),
                    "must be longer than zero, e.g. \"30s\"",
                ));
            }
        }
        if self.initial_backoff > self.max_backoff {
            p.push(Problem::new(
                format!("{prefix}.initial_backoff"),
                "must not be longer than max_backoff",
            ));
        }
        p
    }
}
