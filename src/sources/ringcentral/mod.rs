//! RingCentral company call log (`GET /restapi/v1.0/account/~/call-log`),
//! fetched one time window at a time into pages of JSON records, as a
//! [`crate::sources::Source`] (`[source] type = "ringcentral"`).
//!
//! `dateFrom`/`dateTo` are always sent (the API otherwise silently means the
//! last 24 hours); pages are followed through `navigation.nextPage.uri` until
//! it is absent; records are de-duplicated by `id`, since the list is newest
//! first and offset-paged, so a call that appears while we page pushes one
//! already seen onto the next page.

mod config;
mod defaults;
mod source;

pub use config::{RESOURCES, RcConnectionConfig, RingCentralSourceConfig};
pub use defaults::default_columns;
pub use source::RingCentralSource;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use secrecy::SecretString;
use serde_json::Value;
use url::Url;

use crate::http::{HttpClient, HttpError, Request};

/// Largest page the call log serves.
pub const MAX_PER_PAGE: u32 = 1000;
/// How far behind the watermark an incremental window starts: calls show up
/// 15–30 s after they end, so a window must reach back past that.
pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(5 * 60);

/// `view`: Detailed adds `legs[]` and `billing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub enum View {
    /// Without legs.
    #[default]
    #[serde(alias = "simple")]
    Simple,
    /// With legs and billing.
    #[serde(alias = "detailed")]
    Detailed,
}

impl View {
    /// The value of the `view` parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            View::Simple => "Simple",
            View::Detailed => "Detailed",
        }
    }
}

/// What to fetch.
#[derive(Debug, Clone)]
pub struct CallLogWindow {
    /// Inclusive start (`dateFrom`).
    pub from: DateTime<Utc>,
    /// Exclusive end (`dateTo`).
    pub to: DateTime<Utc>,
    /// Records per page, 1..=1000.
    pub per_page: u32,
    /// Simple or Detailed.
    pub view: View,
}

/// Start of the next incremental window: the watermark minus the lookback.
pub fn window_start(watermark: DateTime<Utc>, lookback: Duration) -> DateTime<Utc> {
    watermark - chrono::Duration::from_std(lookback).unwrap_or_default()
}

/// Pages through one window of the call log.
pub struct CallLogPager {
    http: HttpClient,
    token: SecretString,
    next: Option<Url>,
    seen: HashSet<String>,
    /// Records dropped because an earlier page already had them.
    pub duplicates: u64,
    /// Pages fetched.
    pub pages: u64,
}

impl CallLogPager {
    /// A pager over `window` at the API server `base` (e.g. `https://platform.ringcentral.com`).
    pub fn new(
        http: HttpClient,
        base: &str,
        token: SecretString,
        window: &CallLogWindow,
    ) -> Result<Self, String> {
        if !(1..=MAX_PER_PAGE).contains(&window.per_page) {
            return Err(format!(
                "per_page must be between 1 and {MAX_PER_PAGE}, got {}",
                window.per_page
            ));
        }
        if window.from >= window.to {
            return Err(format!(
                "the window is empty: dateFrom {} is not before dateTo {}",
                window.from, window.to
            ));
        }
        let mut url = Url::parse(&format!(
            "{}/restapi/v1.0/account/~/call-log",
            base.trim_end_matches('/')
        ))
        .map_err(|e| format!("`{base}` is not a URL: {e}"))?;
        let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
        url.query_pairs_mut()
            .append_pair("dateFrom", &ts(window.from))
            .append_pair("dateTo", &ts(window.to))
            .append_pair("perPage", &window.per_page.to_string())
            .append_pair("view", window.view.as_str());
        Ok(Self {
            http,
            token,
            next: Some(url),
            seen: HashSet::new(),
            duplicates: 0,
            pages: 0,
        })
    }

    /// Narrows the selection with further query parameters (e.g. `direction`);
    /// before the first page only.
    pub fn filter(&mut self, pairs: &[(String, String)]) {
        if let Some(url) = self.next.as_mut() {
            url.query_pairs_mut().extend_pairs(pairs);
        }
    }

    /// The request the next page comes from; `None` after the last page.
    pub fn next_url(&self) -> Option<&Url> {
        self.next.as_ref()
    }

    /// Uses another access token from the next request on (after a refresh).
    pub fn set_token(&mut self, token: SecretString) {
        self.token = token;
    }

    /// The next page's new records, or `None` after the last page. After an
    /// error the same page is asked for again by the next call.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Value>>, HttpError> {
        let Some(url) = self.next.clone() else {
            return Ok(None);
        };
        let resp = self
            .http
            .execute(&Request::get(url.clone()).with_bearer(self.token.clone()))
            .await?;
        self.pages += 1;
        let records = match resp.json.get("records").and_then(Value::as_array) {
            Some(r) => r.clone(),
            None => {
                return Err(HttpError::Invalid {
                    url: url.to_string(),
                    message: "the call-log answer has no `records` array".into(),
                });
            }
        };
        // Only follow links to the same server: the bearer token goes along.
        self.next = resp.json["navigation"]["nextPage"]["uri"]
            .as_str()
            .and_then(|u| Url::parse(u).ok())
            .filter(|u| u.origin() == url.origin());
        let mut fresh = Vec::with_capacity(records.len());
        for r in records {
            let id = r.get("id").and_then(Value::as_str).unwrap_or_default();
            if !id.is_empty() && !self.seen.insert(id.to_string()) {
                self.duplicates += 1;
                continue;
            }
            fresh.push(r);
        }
        Ok(Some(fresh))
    }
}
