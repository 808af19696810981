//! The shared client: rate limiter → request with timeout → classify → retry.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap, LOCATION, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tracing::{debug, warn};
use url::Url;

use super::{HttpConfig, HttpError};

/// Same-origin 307/308 hops followed for one request before giving up.
const MAX_REDIRECTS: u32 = 5;

/// One request to make; the client adds rate limiting, timeouts and retries.
#[derive(Clone)]
pub struct Request {
    /// HTTP method.
    pub method: Method,
    /// Absolute URL.
    pub url: Url,
    /// Query pairs, appended in order (a key may repeat).
    pub query: Vec<(String, String)>,
    /// JSON body, if any.
    pub json: Option<Value>,
    /// Form body, if any (exclusive with `json`).
    pub form: Option<Vec<(String, String)>>,
    /// Bearer token, sent as `Authorization: Bearer …` and marked sensitive.
    pub bearer: Option<SecretString>,
    /// HTTP Basic credentials (user, password), e.g. an OAuth client id and secret.
    pub basic: Option<(String, SecretString)>,
    /// Exact body bytes with their content type (exclusive with `json` and
    /// `form`), for bodies that are signed and must go out byte for byte.
    pub raw: Option<(bytes::Bytes, String)>,
    /// Extra headers sent as written (never secrets).
    pub headers: Vec<(String, String)>,
    /// Extra headers whose values are secrets (API keys, basic auth): marked sensitive, never logged.
    pub secret_headers: Vec<(String, SecretString)>,
    /// Accept a 2xx body that is not JSON (kept as `Value::Null`) instead of
    /// retrying it as cut off; a body whose `Content-Type` says JSON but does
    /// not parse is still retried (it was cut off or garbled on the way).
    pub any_success_body: bool,
    /// Signs the `raw` body on every attempt (fresh timestamp per retry).
    pub signer: Option<super::Signer>,
    /// Must not be repeated once it may have reached the server (a rotating
    /// refresh token, a single-use code): retry only when it certainly did not
    /// (could not connect, or 429); anything else is [`HttpError::OutcomeUnknown`].
    pub retry_unsent_only: bool,
    /// Reads a 2xx body in place of the JSON tree (`Response::decoded`), e.g.
    /// only the fields a pipeline reads; a body it rejects is retried like invalid JSON.
    pub decode: Option<BodyDecoder>,
}

/// Turns a 2xx body into the caller's own type; `Err` says why the body is
/// unusable as sent (garbled or cut off), which is retried.
pub type BodyDecoder =
    Arc<dyn Fn(&bytes::Bytes) -> Result<Box<dyn std::any::Any + Send>, String> + Send + Sync>;

// Bodies of token requests carry client secrets, codes and refresh tokens:
// Debug shows only their field names.
impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let json_keys: Option<Vec<&String>> = self
            .json
            .as_ref()
            .and_then(Value::as_object)
            .map(|m| m.keys().collect());
        let form_keys: Option<Vec<&String>> = self
            .form
            .as_ref()
            .map(|f| f.iter().map(|(k, _)| k).collect());
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &self.url.as_str())
            .field("query", &self.query)
            .field("json_fields", &json_keys)
            .field("form_fields", &form_keys)
            .field("bearer", &self.bearer.as_ref().map(|_| "[REDACTED]"))
            .field("basic_user", &self.basic.as_ref().map(|(u, _)| u))
            .field("raw_bytes", &self.raw.as_ref().map(|(b, _)| b.len()))
            .field("decode", &self.decode.is_some())
            .field("headers", &self.headers)
            .field(
                "secret_headers",
                &self
                    .secret_headers
                    .iter()
                    .map(|(k, _)| k)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Request {
    /// A GET of `url`.
    pub fn get(url: Url) -> Self {
        Self::new(Method::GET, url)
    }

    /// A bodiless request with `method`; set `json`, `form` or `raw` for a body.
    pub fn new(method: Method, url: Url) -> Self {
        Self {
            method,
            url,
            query: Vec::new(),
            json: None,
            form: None,
            bearer: None,
            basic: None,
            raw: None,
            headers: Vec::new(),
            secret_headers: Vec::new(),
            any_success_body: false,
            signer: None,
            retry_unsent_only: false,
            decode: None,
        }
    }

    /// A POST of a form-encoded body (`application/x-www-form-urlencoded`) to `url`.
    pub fn post_form(url: Url, form: Vec<(String, String)>) -> Self {
        Self {
            method: Method::POST,
            url,
            query: Vec::new(),
            json: None,
            form: Some(form),
            bearer: None,
            basic: None,
            raw: None,
            headers: Vec::new(),
            secret_headers: Vec::new(),
            any_success_body: false,
            signer: None,
            retry_unsent_only: false,
            decode: None,
        }
    }

    /// A POST of `json` to `url`.
    pub fn post_json(url: Url, json: Value) -> Self {
        Self {
            method: Method::POST,
            url,
            query: Vec::new(),
            json: Some(json),
            form: None,
            bearer: None,
            basic: None,
            raw: None,
            headers: Vec::new(),
            secret_headers: Vec::new(),
            any_success_body: false,
            signer: None,
            retry_unsent_only: false,
            decode: None,
        }
    }

    /// Adds HTTP Basic authentication (RFC 6749 §2.3.1 client authentication).
    pub fn with_basic_auth(mut self, user: String, password: SecretString) -> Self {
        self.basic = Some((user, password));
        self
    }

    /// Adds a bearer token.
    pub fn with_bearer(mut self, token: SecretString) -> Self {
        self.bearer = Some(token);
        self
    }

    /// Adds query pairs.
    pub fn with_query(mut self, query: Vec<(String, String)>) -> Self {
        self.query = query;
        self
    }

    /// The URL with its query, for messages (query values never carry secrets).
    /// The URL with its query, as errors and logs show it: credentials in the
    /// URL itself (`user:password@`) are never shown.
    pub fn display_url(&self) -> String {
        let mut u = without_credentials(&self.url);
        if !self.query.is_empty() {
            u.query_pairs_mut().extend_pairs(self.query.iter());
        }
        u.to_string()
    }
}

/// A successful (2xx) response with its body parsed as JSON (`Null` when empty).
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Parsed body (`Null` when the request had a decoder).
    pub json: Value,
    /// What the request's decoder made of the body.
    pub decoded: Option<Box<dyn std::any::Any + Send>>,
}

/// Counters kept by the client, shared by everything that uses it.
#[derive(Debug, Default)]
pub struct HttpStats {
    requests: AtomicU64,
    retries: AtomicU64,
    throttled: AtomicU64,
    server_errors: AtomicU64,
    transport_errors: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Requests sent (every attempt counts).
    pub requests: u64,
    /// Attempts that were retries.
    pub retries: u64,
    /// 429 answers.
    pub throttled_429: u64,
    /// 5xx answers.
    pub server_errors: u64,
    /// Timeouts, resets, truncated or unreadable bodies.
    pub transport_errors: u64,
}

impl StatsSnapshot {
    /// Counts since `earlier`.
    pub fn since(&self, earlier: &StatsSnapshot) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests - earlier.requests,
            retries: self.retries - earlier.retries,
            throttled_429: self.throttled_429 - earlier.throttled_429,
            server_errors: self.server_errors - earlier.server_errors,
            transport_errors: self.transport_errors - earlier.transport_errors,
        }
    }
}

struct Inner {
    client: reqwest::Client,
    limiter: DefaultDirectRateLimiter,
    /// When the client was built: the origin of `limited_at_ms`.
    started: Instant,
    /// Milliseconds after `started` at which a request last had to wait for
    /// the limiter (`u64::MAX`: never).
    limited_at_ms: AtomicU64,
    config: HttpConfig,
    stats: HttpStats,
    /// Hosts (`host:port`) that have sent at least one HTTP response: a
    /// refused connection to one of them is a restart, worth full retries.
    answered: Mutex<HashSet<String>>,
    clocks: super::clock::Clocks,
    groups: super::ratelimit_groups::Groups,
    /// Tenants take turns on `limiter` (see [`super::fair`]).
    fair: super::fair::FairQueue,
    /// Buffers response bodies are read into, used again page after page.
    bodies: super::body::BodyPool,
}

/// The tenant a client handle makes requests for, with that tenant's own counters.
struct TenantTag {
    name: Arc<str>,
    stats: HttpStats,
}

/// Attempts made when a host that never answered refuses the connection or
/// its name does not resolve: a typo in a URL, not a passing fault.
const UNREACHABLE_ATTEMPTS: u32 = 2;

/// The process-wide HTTP client. Cheap to clone; clones share the limiter and counters.
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
    tenant: Option<Arc<TenantTag>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field(
                "requests_per_second",
                &self.inner.config.requests_per_second,
            )
            .finish_non_exhaustive()
    }
}

/// Why one attempt failed, and whether another may succeed.
enum Attempt {
    Done(Response),
    Fatal(HttpError),
    /// A 307/308 to the same origin: send the same request there.
    Redirect(Url),
    Retry {
        reason: String,
        wait: Option<Duration>,
        /// The host never answered and cannot be reached (refused, unknown
        /// name): retried only briefly.
        unreachable: bool,
        /// The server certainly did not act on this attempt (no connection, or a 429).
        unsent: bool,
    },
}

/// The backoff delays for one request: exponential with jitter, each at most `max_backoff`.
fn backoff(cfg: &HttpConfig) -> impl Iterator<Item = Duration> + use<> {
    let max = cfg.max_backoff;
    // backon adds the jitter after applying its cap, so cap again.
    ExponentialBuilder::default()
        .with_min_delay(cfg.initial_backoff)
        .with_max_delay(cfg.max_backoff)
        .with_jitter()
        .with_max_times(cfg.max_retries as usize)
        .build()
        .map(move |d| d.min(max))
}

/// `host:port` of `url`, the unit a connection goes to.
fn authority(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    )
}

/// Whether a transport failure means the server cannot be reached at all:
/// the connection was refused or the host name does not resolve.
fn is_unreachable(e: &reqwest::Error) -> bool {
    if !e.is_connect() {
        return false;
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        // hyper-util names resolver failures "dns error"; the OS adds
        // "failed to lookup address information".
        let text = inner.to_string();
        if text.starts_with("dns error") || text.contains("failed to lookup address") {
            return true;
        }
        source = inner.source();
    }
    false
}

impl HttpClient {
    /// Builds the client; call once per process and share it.
    pub fn new(config: &HttpConfig) -> Result<Self, HttpError> {
        let client = reqwest::Client::builder()
            // Redirects are handled in `attempt`: reqwest would turn a 301/302
            // POST into a body-less GET, and its cross-host filtering knows
            // only the standard auth headers, not custom secret ones.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("expense-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HttpError::Invalid {
                url: String::new(),
                message: format!("cannot start the HTTP client: {e}"),
            })?;
        // A token bucket like the server's: after a quiet spell the first
        // `burst` requests leave at once instead of one per period, then
        // requests follow at the configured rate.
        let period = Duration::from_secs_f64(1.0 / config.requests_per_second.max(0.001));
        let burst = NonZeroU32::new(config.effective_burst()).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .expect("period is positive")
            .allow_burst(burst);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                limiter: RateLimiter::direct(quota),
                started: Instant::now(),
                limited_at_ms: AtomicU64::new(u64::MAX),
                config: config.clone(),
                stats: HttpStats::default(),
                answered: Mutex::new(HashSet::new()),
                clocks: Default::default(),
                groups: Default::default(),
                fair: Default::default(),
                bodies: Default::default(),
            }),
            tenant: None,
        })
    }

    /// A handle for one tenant of a multi-tenant run: it shares this client's
    /// limiter (taking turns with the other tenants) and counts its own requests.
    pub fn for_tenant(&self, tenant: &str) -> HttpClient {
        HttpClient {
            inner: self.inner.clone(),
            tenant: Some(Arc::new(TenantTag {
                name: tenant.into(),
                stats: HttpStats::default(),
            })),
        }
    }

    /// The tenant this handle makes requests for, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_ref().map(|t| &*t.name)
    }

    /// Adds one to a counter, process-wide and for this handle's tenant.
    fn bump(&self, counter: impl Fn(&HttpStats) -> &AtomicU64) {
        counter(&self.inner.stats).fetch_add(1, Ordering::Relaxed);
        if let Some(t) = &self.tenant {
            counter(&t.stats).fetch_add(1, Ordering::Relaxed);
        }
    }

    fn mark_rate_bound(&self) {
        let now = self.inner.started.elapsed().as_millis() as u64;
        self.inner.limited_at_ms.store(now, Ordering::Relaxed);
    }

    /// Whether a request had to wait for the rate limiter within the last
    /// second: more requests in flight would not go out any faster.
    pub fn rate_bound(&self) -> bool {
        let at = self.inner.limited_at_ms.load(Ordering::Relaxed);
        at != u64::MAX
            && (self.inner.started.elapsed().as_millis() as u64).saturating_sub(at) < 1000
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &HttpConfig {
        &self.inner.config
    }

    /// The last `Date` reading of the server at `url`'s origin, if it sent one.
    pub fn server_clock(&self, url: &Url) -> Option<super::ServerClock> {
        self.inner.clocks.get(url)
    }

    /// The counters so far (of this handle's tenant, for a [`Self::for_tenant`] handle).
    pub fn stats(&self) -> StatsSnapshot {
        let s = self.tenant.as_ref().map_or(&self.inner.stats, |t| &t.stats);
        StatsSnapshot {
            requests: s.requests.load(Ordering::Relaxed),
            retries: s.retries.load(Ordering::Relaxed),
            throttled_429: s.throttled.load(Ordering::Relaxed),
            server_errors: s.server_errors.load(Ordering::Relaxed),
            transport_errors: s.transport_errors.load(Ordering::Relaxed),
        }
    }

    /// Sends `req`, retrying 429 (honouring `Retry-After`), 5xx, timeouts and
    /// connection failures with exponential backoff and jitter.
    pub async fn execute(&self, req: &Request) -> Result<Response, HttpError> {
        let cfg = &self.inner.config;
        let mut backoff = backoff(cfg);
        let started = Instant::now();
        let mut attempts = 0u32;
        // After a same-origin 307/308: the same request at the new URL.
        let mut moved: Option<Request> = None;
        let mut hops = 0u32;
        let mut retry = false;
        loop {
            attempts += 1;
            if retry {
                self.bump(|s| &s.retries);
            }
            retry = true;
            match self.attempt(moved.as_ref().unwrap_or(req), attempts).await {
                Attempt::Done(resp) => return Ok(resp),
                Attempt::Fatal(err) => return Err(err),
                Attempt::Redirect(url) => {
                    hops += 1;
                    if hops > MAX_REDIRECTS {
                        return Err(HttpError::Redirected {
                            method: req.method.to_string(),
                            url: req.display_url(),
                            status: 307,
                            location: format!(
                                "{} (more than {MAX_REDIRECTS} redirects in a row)",
                                redacted_location(url.as_str())
                            ),
                        });
                    }
                    debug!(method = %req.method, from = %req.url, to = %url, "following a same-origin redirect");
                    let mut next = req.clone();
                    next.url = url;
                    // The Location carries its own query.
                    next.query.clear();
                    moved = Some(next);
                    retry = false;
                }
                Attempt::Retry { reason, unsent, .. } if req.retry_unsent_only && !unsent => {
                    return Err(HttpError::OutcomeUnknown {
                        method: req.method.to_string(),
                        url: req.display_url(),
                        reason,
                    });
                }
                Attempt::Retry {
                    reason,
                    wait,
                    unreachable,
                    ..
                } => {
                    let next = backoff.next();
                    let next = if unreachable && attempts >= UNREACHABLE_ATTEMPTS {
                        None
                    } else if unreachable {
                        // One quick second try, in case of a blip.
                        next.map(|d| d.min(cfg.initial_backoff))
                    } else {
                        next
                    };
                    let Some(delay) = next else {
                        return Err(HttpError::RetriesExhausted {
                            method: req.method.to_string(),
                            url: req.display_url(),
                            attempts,
                            elapsed: started.elapsed(),
                            last: reason,
                        });
                    };
                    // Retry-After is the server's word; honour it, but never wait
                    // longer than max_backoff for one retry.
                    let delay = wait.map_or(delay, |w| w.min(cfg.max_backoff));
                    warn!(
                        method = %req.method, url = %req.url, attempt = attempts,
                        retry_in_ms = delay.as_millis() as u64, "{reason}; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The whole body, read into a pooled buffer (see [`super::body`]).
    async fn read_body(&self, mut resp: reqwest::Response) -> reqwest::Result<bytes::Bytes> {
        let pool = &self.inner.bodies;
        let mut buf = pool.buffer(resp.content_length());
        while let Some(chunk) = resp.chunk().await? {
            buf.extend_from_slice(&chunk);
        }
        Ok(pool.freeze(buf))
    }

    async fn attempt(&self, req: &Request, attempt: u32) -> Attempt {
        self.inner.groups.wait_ready(&req.method, &req.url).await;
        match &self.tenant {
            Some(t) => {
                if self
                    .inner
                    .fair
                    .until_ready(&self.inner.limiter, &t.name)
                    .await
                {
                    self.mark_rate_bound();
                }
            }
            None => {
                if self.inner.limiter.check().is_err() {
                    self.mark_rate_bound();
                    self.inner.limiter.until_ready().await;
                }
            }
        }
        self.bump(|s| &s.requests);
        let mut builder = self
            .inner
            .client
            .request(req.method.clone(), req.url.clone());
        if !req.query.is_empty() {
            builder = builder.query(&req.query);
        }
        if let Some(json) = &req.json {
            builder = builder.json(json);
        } else if let Some(form) = &req.form {
            builder = builder.form(form);
        } else if let Some((body, content_type)) = &req.raw {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, content_type.as_str())
                .body(body.clone());
        }
        for (name, value) in &req.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if let (Some(signer), Some((body, _))) = (&req.signer, &req.raw) {
            let t = chrono::Utc::now().timestamp();
            builder = builder.header(signer.header.as_str(), super::sign(&signer.secret, t, body));
        }
        for (name, value) in &req.secret_headers {
            match reqwest::header::HeaderValue::from_str(value.expose_secret()) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    builder = builder.header(name.as_str(), v);
                }
                Err(_) => {
                    return Attempt::Fatal(HttpError::Invalid {
                        url: req.display_url(),
                        message: format!(
                            "the value of header {name} is not a valid header value (it is a secret, so it is not shown)"
                        ),
                    });
                }
            }
        }
        if let Some(token) = &req.bearer {
            // reqwest marks bearer headers sensitive, keeping them out of debug output.
            builder = builder.bearer_auth(token.expose_secret());
        }
        if let Some((user, password)) = &req.basic {
            // RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            builder = builder.basic_auth(enc(user), Some(enc(password.expose_secret())));
        }
        let sent = Instant::now();
        let result = builder.send().await;
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                self.bump(|s| &s.transport_errors);
                let unreachable = is_unreachable(&e)
                    && !self
                        .inner
                        .answered
                        .lock()
                        .expect("not poisoned")
                        .contains(&authority(&req.url));
                // A failed connect sent nothing; any later failure may follow the server acting.
                return Attempt::Retry {
                    reason: describe_transport(&e),
                    wait: None,
                    unreachable,
                    unsent: e.is_connect(),
                };
            }
        };
        let status = resp.status().as_u16();
        self.inner
            .answered
            .lock()
            .expect("not poisoned")
            .insert(authority(&req.url));
        let headers = resp.headers().clone();
        self.inner
            .clocks
            .observe(&req.url, &headers, chrono::Utc::now());
        let group_penalty = self.inner.groups.observe(
            &req.method,
            &req.url,
            status,
            &headers,
            retry_after(&headers),
        );
        let body = match self.read_body(resp).await {
            Ok(b) => b,
            Err(e) => {
                self.bump(|s| &s.transport_errors);
                return Attempt::Retry {
                    reason: format!(
                        "HTTP {status} but the body could not be read ({})",
                        describe_transport(&e)
                    ),
                    wait: None,
                    unreachable: false,
                    unsent: false,
                };
            }
        };
        debug!(
            method = %req.method, url = %req.url, status, attempt,
            bytes = body.len(), elapsed_ms = sent.elapsed().as_millis() as u64, "response"
        );
        match status {
            200..=299 => {
                if body.iter().all(u8::is_ascii_whitespace) {
                    return Attempt::Done(Response {
                        status,
                        headers,
                        json: Value::Null,
                        decoded: None,
                    });
                }
                let parsed = match &req.decode {
                    Some(decode) => decode(&body).map(|d| (Value::Null, Some(d))),
                    None => serde_json::from_slice(&body)
                        .map(|json| (json, None))
                        .map_err(|e| e.to_string()),
                };
                match parsed {
                    Ok((json, decoded)) => Attempt::Done(Response {
                        status,
                        headers,
                        json,
                        decoded,
                    }),
                    Err(_) if req.any_success_body && !declares_json(&headers) => {
                        Attempt::Done(Response {
                            status,
                            headers,
                            json: Value::Null,
                            decoded: None,
                        })
                    }
                    Err(e) => {
                        // A cut-off body parses as invalid JSON: worth another try.
                        self.bump(|s| &s.transport_errors);
                        Attempt::Retry {
                            reason: format!(
                                "HTTP {status} with a body that is not valid JSON ({e}); it may have been cut off"
                            ),
                            wait: None,
                            unreachable: false,
                            unsent: false,
                        }
                    }
                }
            }
            300..=399 => {
                let location = headers.get(LOCATION).and_then(|v| v.to_str().ok());
                let mut requested = req.url.clone();
                if !req.query.is_empty() {
                    requested.query_pairs_mut().extend_pairs(req.query.iter());
                }
                match location.and_then(|l| requested.join(l).ok()) {
                    Some(to) if matches!(status, 307 | 308) && to.origin() == req.url.origin() => {
                        Attempt::Redirect(to)
                    }
                    _ => Attempt::Fatal(HttpError::Redirected {
                        method: req.method.to_string(),
                        url: req.display_url(),
                        status,
                        location: location
                            .map_or_else(|| "(no Location header)".into(), redacted_location),
                    }),
                }
            }
            429 => {
                self.bump(|s| &s.throttled);
                Attempt::Retry {
                    reason: "HTTP 429 Too Many Requests".into(),
                    wait: Some(
                        group_penalty
                            .or_else(|| retry_after(&headers))
                            .unwrap_or(Duration::from_secs(1)),
                    ),
                    unreachable: false,
                    unsent: true,
                }
            }
            500..=599 => {
                self.bump(|s| &s.server_errors);
                Attempt::Retry {
                    reason: format!("HTTP {status}: {}", server_message(&body).1),
                    wait: retry_after(&headers),
                    unreachable: false,
                    unsent: false,
                }
            }
            401 | 498 => Attempt::Fatal(HttpError::Unauthorized {
                method: req.method.to_string(),
                url: req.display_url(),
                status,
                message: server_message(&body).1,
            }),
            _ => {
                let (error_kind, message) = server_message(&body);
                Attempt::Fatal(HttpError::Rejected {
                    method: req.method.to_string(),
                    url: req.display_url(),
                    status,
                    error_kind,
                    message,
                })
            }
        }
    }
}

fn describe_transport(e: &reqwest::Error) -> String {
    // reqwest's Display includes the URL; keep the cause chain, which says
    // "connection reset", "operation timed out" and the like.
    let mut s = if e.is_timeout() {
        "request timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        "transport error".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Whether a response says its body is JSON (`application/json`, `…+json`).
fn declares_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || m.ends_with("+json")
        })
}

/// A `Location` for messages: without any user or password it may carry.
fn redacted_location(location: &str) -> String {
    match Url::parse(location) {
        Ok(u) if !u.username().is_empty() || u.password().is_some() => {
            without_credentials(&u).to_string()
        }
        _ => truncate(location),
    }
}

/// `url` without `user:password@`.
fn without_credentials(url: &Url) -> Url {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u
}

/// Parses `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.signed_duration_since(chrono::Utc::now());
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// The server's error kind and message: Fyle's `error` and `message`,
/// RingCentral's `errorCode`, `message` and `errors[]` (each further message
/// appended), or the start of a non-JSON body.
fn server_message(body: &[u8]) -> (Option<String>, String) {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
        let text = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_string);
        let kind = text("error").or_else(|| text("errorCode"));
        let mut message = text("message")
            .or_else(|| text("error_description"))
            .or_else(|| kind.clone())
            .unwrap_or_else(|| truncate(&String::from_utf8_lossy(body)));
        // RingCentral lists each problem in `errors[]`; the first usually repeats the top message.
        for e in map
            .get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let code = e.get("errorCode").and_then(Value::as_str);
            if let Some(m) = e.get("message").and_then(Value::as_str)
                && m != message
                && !message.contains(m)
            {
                match code {
                    Some(c) if Some(c) != kind.as_deref() => {
                        message.push_str(&format!("; {c}: {m}"))
                    }
                    _ => message.push_str(&format!("; {m}")),
                }
            }
        }
        return (kind, message);
    }
    let text = String::from_utf8_lossy(body);
    if text.trim().is_empty() {
        (None, "(empty body)".into())
    } else {
        (None, truncate(&text))
    }
}

fn truncate(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displayed_urls_never_carry_credentials() {
        let req =
            Request::get(Url::parse("https://push:s3cret-9f@gw.example/metrics?x=1").unwrap())
                .with_query(vec![("job".into(), "expense_sync".into())]);
        let shown = req.display_url();
        assert!(
            !shown.contains("s3cret-9f") && !shown.contains("push"),
            "{shown}"
        );
        assert!(shown.contains("gw.example/metrics") && shown.contains("job=expense_sync"));
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn server_message_prefers_fyle_fields() {
        let (k, m) =
            server_message(br#"{"data":null,"error":"ValidationError","message":"limit too big"}"#);
        assert_eq!(k.as_deref(), Some("ValidationError"));
        assert_eq!(m, "limit too big");
        let (k, m) = server_message(
            br#"{"errorCode":"CMN-101","message":"Parameter [perPage] value is invalid","errors":[{"errorCode":"CMN-101","message":"Parameter [perPage] value is invalid"},{"errorCode":"CMN-102","message":"Resource for parameter [view] is not found"}]}"#,
        );
        assert_eq!(k.as_deref(), Some("CMN-101"));
        assert_eq!(
            m,
            "Parameter [perPage] value is invalid; CMN-102: Resource for parameter [view] is not found"
        );
        let (k, m) = server_message(b"<html>Bad gateway</html>");
        assert_eq!(k, None);
        assert_eq!(m, "<html>Bad gateway</html>");
    }

    #[test]
    fn the_first_requests_leave_at_once_up_to_the_burst() {
        let client = HttpClient::new(&HttpConfig::default()).unwrap();
        assert_eq!(HttpConfig::default().effective_burst(), 9);
        for i in 0..9 {
            assert!(
                client.inner.limiter.check().is_ok(),
                "request {i} had to wait"
            );
        }
        // Half a request per second with a burst of one: the second waits 2 s.
        let spaced = HttpClient::new(&HttpConfig {
            requests_per_second: 0.5,
            burst: Some(1),
            ..HttpConfig::default()
        })
        .unwrap();
        assert!(spaced.inner.limiter.check().is_ok());
        assert!(spaced.inner.limiter.check().is_err());
        assert!(!spaced.rate_bound());
    }

    #[test]
    fn waits_never_exceed_max_backoff_even_with_jitter() {
        let cfg = HttpConfig {
            initial_backoff: Duration::from_secs(40),
            max_backoff: Duration::from_secs(60),
            max_retries: 50,
            ..HttpConfig::default()
        };
        let waits: Vec<Duration> = backoff(&cfg).collect();
        assert_eq!(waits.len(), 50);
        assert!(waits.iter().all(|w| *w <= cfg.max_backoff), "{waits:?}");
    }

    #[tokio::test]
    async fn refused_connection_to_a_host_that_never_answered_fails_after_two_attempts() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = HttpClient::new(&HttpConfig {
            initial_backoff: Duration::from_millis(10),
            ..HttpConfig::default()
        })
        .unwrap();
        let url = Url::parse(&format!("http://127.0.0.1:{port}/x")).unwrap();
        let err = client.execute(&Request::get(url)).await.unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        assert_eq!(client.stats().requests, 2, "{err}");
    }
}
