//! Rate-limit groups as RingCentral runs them: each endpoint belongs to a
//! group (Heavy, Medium, Light, Auth) with its own budget per window,
//! announced on every response in `X-Rate-Limit-Group`, `-Limit`,
//! `-Remaining` and `-Window`. When `Remaining` reaches 0 nothing more is sent
//! in that group until the window has passed; a 429 starts the group's
//! penalty, which every request sent during it would restart, so the group
//! stays silent for `Retry-After` (the window, 60 s by default, when absent;
//! never less than a second). Hosts that never send these headers (Fyle) are
//! not affected.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::HeaderMap;
use tracing::info;
use url::Url;

/// Wait after a 429 when the server names no `Retry-After` nor window.
pub const DEFAULT_PENALTY: Duration = Duration::from_secs(60);
/// Never retry a throttled group sooner than this: a request inside the
/// penalty restarts it.
pub const MIN_PENALTY: Duration = Duration::from_secs(1);

/// The group an endpoint belongs to, by RingCentral's published table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateGroup {
    /// Call log list, get and sync.
    Heavy,
    /// Subscription create, update, delete.
    Medium,
    /// Reads such as the message store.
    Light,
    /// The token, authorize and revoke endpoints.
    Auth,
}

impl RateGroup {
    /// The lower-case name RingCentral uses in `X-Rate-Limit-Group`.
    pub fn name(self) -> &'static str {
        match self {
            RateGroup::Heavy => "heavy",
            RateGroup::Medium => "medium",
            RateGroup::Light => "light",
            RateGroup::Auth => "auth",
        }
    }
}

/// Classifies a request by method and path (the server's header wins once seen).
pub fn classify(method: &Method, path: &str) -> RateGroup {
    if path.contains("/oauth/") {
        RateGroup::Auth
    } else if path.contains("/call-log") {
        RateGroup::Heavy
    } else if path.contains("/subscription") && *method != Method::GET {
        RateGroup::Medium
    } else {
        RateGroup::Light
    }
}

#[derive(Default)]
struct Host {
    /// `METHOD path` → group name the server reported for it.
    learned: HashMap<String, String>,
    /// Group name → when it may be used again.
    blocked_until: HashMap<String, Instant>,
    /// Group name → its window, as last announced.
    windows: HashMap<String, Duration>,
}

/// Per-host group state shared by every clone of the client.
#[derive(Default)]
pub(crate) struct Groups {
    hosts: Mutex<HashMap<String, Host>>,
}

fn host_key(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    )
}

fn endpoint_key(method: &Method, url: &Url) -> String {
    format!("{method} {}", url.path())
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

impl Groups {
    fn group_of(host: &Host, method: &Method, url: &Url) -> String {
        host.learned
            .get(&endpoint_key(method, url))
            .cloned()
            .unwrap_or_else(|| classify(method, url.path()).name().to_string())
    }

    /// Waits until the request's group on its host may be used again.
    pub(crate) async fn wait_ready(&self, method: &Method, url: &Url) {
        loop {
            let until = {
                let hosts = self.hosts.lock().expect("not poisoned");
                let Some(host) = hosts.get(&host_key(url)) else {
                    return;
                };
                let group = Self::group_of(host, method, url);
                match host.blocked_until.get(&group) {
                    Some(t) if *t > Instant::now() => (*t, group),
                    _ => return,
                }
            };
            info!(
                host = %host_key(url), group = %until.1,
                wait_ms = until.0.saturating_duration_since(Instant::now()).as_millis() as u64,
                "rate-limit group exhausted; sending nothing in it until its window ends"
            );
            // The block may have been extended meanwhile: check again after.
            tokio::time::sleep_until(until.0.into()).await;
        }
    }

    /// Reads the group headers of a response. For a 429 on a host that uses
    /// groups, returns how long the group is now blocked.
    pub(crate) fn observe(
        &self,
        method: &Method,
        url: &Url,
        status: u16,
        headers: &HeaderMap,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        let named = headers
            .get("x-rate-limit-group")
            .and_then(|v| v.to_str().ok())
            .map(|g| g.trim().to_ascii_lowercase())
            .filter(|g| !g.is_empty());
        let mut hosts = self.hosts.lock().expect("not poisoned");
        let key = host_key(url);
        if named.is_none() && !hosts.contains_key(&key) {
            return None;
        }
        let host = hosts.entry(key.clone()).or_default();
        if let Some(g) = &named {
            host.learned.insert(endpoint_key(method, url), g.clone());
        }
        let group = named.unwrap_or_else(|| Self::group_of(host, method, url));
        if let Some(w) = header_u64(headers, "x-rate-limit-window").filter(|w| *w > 0) {
            host.windows.insert(group.clone(), Duration::from_secs(w));
        }
        let window = host.windows.get(&group).copied();
        let now = Instant::now();
        let block = if status == 429 {
            let wait = retry_after
                .or(window)
                .unwrap_or(DEFAULT_PENALTY)
                .max(MIN_PENALTY);
            info!(host = %key, %group, wait_s = wait.as_secs_f64(), "HTTP 429: the group's penalty started");
            Some(wait)
        } else if header_u64(headers, "x-rate-limit-remaining") == Some(0) {
            Some(window.unwrap_or(DEFAULT_PENALTY))
        } else {
            None
        };
        let wait = block?;
        let until = host.blocked_until.entry(group).or_insert(now);
        *until = (*until).max(now + wait);
        (status == 429).then_some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn endpoints_are_classified_by_ringcentrals_table() {
        assert_eq!(
            classify(&Method::GET, "/restapi/v1.0/account/~/call-log"),
            RateGroup::Heavy
        );
        assert_eq!(
            classify(&Method::POST, "/restapi/oauth/token"),
            RateGroup::Auth
        );
        assert_eq!(
            classify(&Method::POST, "/restapi/v1.0/subscription"),
            RateGroup::Medium
        );
        assert_eq!(
            classify(
                &Method::GET,
                "/restapi/v1.0/account/~/extension/~/message-store"
            ),
            RateGroup::Light
        );
    }

    #[test]
    fn a_429_without_retry_after_blocks_for_the_window_and_hosts_without_headers_are_untouched() {
        let g = Groups::default();
        let url = Url::parse("http://h:1/restapi/v1.0/account/~/call-log").unwrap();
        let fyle = Url::parse("http://f:2/platform/v1/admin/expenses").unwrap();
        assert_eq!(
            g.observe(&Method::GET, &fyle, 429, &HeaderMap::new(), None),
            None
        );
        let h = headers(&[
            ("x-rate-limit-group", "Heavy"),
            ("x-rate-limit-remaining", "0"),
            ("x-rate-limit-window", "7"),
        ]);
        assert_eq!(
            g.observe(&Method::GET, &url, 429, &h, None),
            Some(Duration::from_secs(7))
        );
        let no_window = headers(&[("x-rate-limit-group", "auth")]);
        let token = Url::parse("http://h:1/restapi/oauth/token").unwrap();
        assert_eq!(
            g.observe(&Method::POST, &token, 429, &no_window, Some(Duration::ZERO)),
            Some(MIN_PENALTY)
        );
    }
}
