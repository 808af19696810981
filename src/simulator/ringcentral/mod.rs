//! A local stand-in for RingCentral's platform (`platform.ringcentral.com`),
//! in the style of the Fyle simulator: bare hyper on loopback, data
//! deterministic from a seed. It serves the OAuth endpoints under
//! `/restapi/oauth/` (JWT bearer, authorization code with PKCE, rotating
//! refresh tokens, revocation), rate-limit groups with `X-Rate-Limit-*`
//! headers and penalty windows, the company call log with navigation paging
//! and late-arriving records, and a team-messaging incoming webhook that
//! records what it received. Errors use RingCentral's shapes.

mod calls;
mod limits;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, LOCATION};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::rng::Rng;
pub use limits::{Group, GroupLimit};

/// Client id of the simulated confidential (REST API) app.
pub const RC_CLIENT_ID: &str = "rc-sim-client";
/// Client secret of the simulated confidential app.
pub const RC_CLIENT_SECRET: &str = "rc-sim-secret-5f2a";
/// Client id of the simulated public app (no secret; PKCE required).
pub const RC_PUBLIC_CLIENT_ID: &str = "rc-sim-public";
/// The redirect URI registered for both simulated apps.
pub const RC_REDIRECT_URI: &str = "http://127.0.0.1:8765/callback";

/// How the RingCentral simulator behaves. Defaults follow the real service.
#[derive(Debug, Clone)]
pub struct RcSimConfig {
    /// Seed for the generated call log.
    pub seed: u64,
    /// Number of call-log records, spread over the `history` before start.
    pub calls: usize,
    /// How far back the generated calls reach.
    pub history: Duration,
    /// Access-token lifetime granted by the token endpoint.
    pub access_ttl: Duration,
    /// Limits per group (requests per window, window, penalty).
    pub limits: HashMap<Group, GroupLimit>,
    /// Send `Retry-After` on 429 (RingCentral does; off tests the fallback).
    pub retry_after_header: bool,
    /// A finished call becomes visible this long after its start plus
    /// duration: a range, each record drawing its own delay (real: 15–30 s).
    pub visibility_lag: (Duration, Duration),
    /// Status the incoming webhook answers with (200 when `None`).
    pub webhook_status: Option<u16>,
    /// Redirect URIs registered for the apps (exact match).
    pub redirect_uris: Vec<String>,
    /// The call log answers 403 CMN-408 (the user lacks the company call-log
    /// permission), as RingCentral does for a non-admin JWT user.
    pub call_log_forbidden: bool,
}

impl Default for RcSimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            calls: 250,
            history: Duration::from_secs(3 * 24 * 3600),
            access_ttl: Duration::from_secs(3600),
            limits: Group::ALL.iter().map(|g| (*g, g.default_limit())).collect(),
            retry_after_header: true,
            visibility_lag: (Duration::from_secs(15), Duration::from_secs(30)),
            webhook_status: None,
            redirect_uris: vec![RC_REDIRECT_URI.to_string()],
            call_log_forbidden: false,
        }
    }
}

/// One request the simulator received (never the secrets it carried).
#[derive(Debug, Clone)]
pub struct RcLoggedRequest {
    /// When it arrived.
    pub at: Instant,
    /// HTTP method.
    pub method: String,
    /// Path without query.
    pub path: String,
    /// The query string.
    pub query: String,
    /// Rate-limit group it counted against.
    pub group: Option<Group>,
    /// Status answered.
    pub status: u16,
}

/// One message posted to the incoming webhook.
#[derive(Debug, Clone)]
pub struct WebhookMessage {
    /// The token in the webhook URL.
    pub token: String,
    /// The `Content-Type` sent.
    pub content_type: String,
    /// The JSON body.
    pub body: Value,
}

struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    challenge: Option<(String, String)>,
    expires: Instant,
    used: bool,
}

struct Session {
    client_id: String,
    access: String,
    refresh: String,
    /// After rotation: the old refresh token keeps answering with the new
    /// pair for a grace period (60 min, or 10 s once the new token is used).
    superseded: Option<(String, Instant)>,
}

struct State {
    cfg: RcSimConfig,
    rng: Rng,
    calls: calls::CallLog,
    limiter: limits::Limiter,
    log: Vec<RcLoggedRequest>,
    webhooks: Vec<WebhookMessage>,
    codes: HashMap<String, CodeGrant>,
    /// access token → (session index, expiry).
    access: HashMap<String, (usize, Instant)>,
    sessions: Vec<Option<Session>>,
    jwts: HashMap<String, bool>,
    token_requests: u64,
}

struct Inner {
    state: Mutex<State>,
    base: String,
}

/// A running RingCentral simulator.
pub struct RcSimulator {
    inner: Arc<Inner>,
    shutdown: watch::Sender<bool>,
}

type Body = Full<Bytes>;

impl RcSimulator {
    /// Starts on a free loopback port.
    pub async fn start(cfg: RcSimConfig) -> std::io::Result<RcSimulator> {
        Self::start_on(cfg, 0).await
    }

    /// Starts on `port` (0: any free port).
    pub async fn start_on(cfg: RcSimConfig, port: u16) -> std::io::Result<RcSimulator> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let base = format!("http://127.0.0.1:{}", listener.local_addr()?.port());
        let now = Utc::now();
        let mut rng = Rng::new(cfg.seed ^ 0x5243_0000);
        let calls = calls::CallLog::generate(&mut rng, &cfg, now, &base);
        let limiter = limits::Limiter::new(cfg.limits.clone());
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                cfg,
                rng,
                calls,
                limiter,
                log: Vec::new(),
                webhooks: Vec::new(),
                codes: HashMap::new(),
                access: HashMap::new(),
                sessions: Vec::new(),
                jwts: HashMap::new(),
                token_requests: 0,
            }),
            base,
        });
        let (tx, rx) = watch::channel(false);
        tokio::spawn(serve(listener, Arc::clone(&inner), rx));
        Ok(RcSimulator {
            inner,
            shutdown: tx,
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:41234` (what `platform.ringcentral.com` is for real).
    pub fn url(&self) -> &str {
        &self.inner.base
    }

    /// The incoming-webhook URL for `token` (the URL is the secret).
    pub fn webhook_url(&self, token: &str) -> String {
        format!("{}/webhook/v2/{token}", self.inner.base)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().expect("rc state")
    }

    /// Mints a JWT credential, as the Developer Console does for a user.
    pub fn issue_jwt(&self) -> String {
        let mut s = self.state();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(
            json!({"aud": "https://platform.ringcentral.com/restapi/oauth/token",
                   "sub": "256440016", "iss": "https://platform.ringcentral.com",
                   "jti": s.rng.alnum(16)})
            .to_string(),
        );
        let jwt = format!("{header}.{payload}.{}", s.rng.alnum(43));
        s.jwts.insert(jwt.clone(), true);
        jwt
    }

    /// Revokes a JWT credential (as in the console).
    pub fn revoke_jwt(&self, jwt: &str) {
        self.state().jwts.insert(jwt.to_string(), false);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RcLoggedRequest> {
        self.state().log.clone()
    }

    /// Requests made to the token endpoint so far.
    pub fn token_requests(&self) -> u64 {
        self.state().token_requests
    }

    /// Messages posted to the incoming webhook.
    pub fn webhook_messages(&self) -> Vec<WebhookMessage> {
        self.state().webhooks.clone()
    }

    /// Sets the incoming webhook's answer (None: 200).
    pub fn set_webhook_status(&self, status: Option<u16>) {
        self.state().cfg.webhook_status = status;
    }

    /// Ground truth: ids of every call (visible yet or not) starting in `[from, to)`.
    pub fn call_ids_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<String> {
        self.state().calls.ids_between(from, to)
    }

    /// Adds a call that started `ago` before now; it becomes visible after
    /// its duration plus the visibility lag, like a call that just ended.
    pub fn add_call(&self, ago: Duration) -> String {
        let mut s = self.state();
        let State {
            calls, rng, cfg, ..
        } = &mut *s;
        let start = Utc::now() - chrono::Duration::from_std(ago).unwrap_or_default();
        calls.add(rng, cfg, start, &self.inner.base)
    }

    /// Adds a call that started at `start` and lasted `duration`; it becomes
    /// visible the visibility lag after it ended.
    pub fn add_call_at(&self, start: DateTime<Utc>, duration: Duration) -> String {
        let mut s = self.state();
        let State {
            calls, rng, cfg, ..
        } = &mut *s;
        calls.add_with(rng, cfg, start, Some(duration), &self.inner.base)
    }

    /// Ids of the calls that started in `[from, to)` and are visible now:
    /// what a complete export of that window reads.
    pub fn visible_call_ids_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<String> {
        self.state().calls.visible_ids_between(from, to, Utc::now())
    }

    /// Stops the server.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for RcSimulator {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

async fn serve(listener: TcpListener, inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = shutdown.changed() => return,
        };
        let inner = Arc::clone(&inner);
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let inner = Arc::clone(&inner);
                async move { Ok::<_, Infallible>(handle(&inner, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = conn_shutdown.changed() => {}
            }
        });
    }
}

/// A JSON response.
fn json(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// RingCentral's API error shape.
fn api_error(status: StatusCode, code: &str, message: &str, extra: Value) -> Response<Body> {
    let mut entry = json!({"errorCode": code, "message": message});
    if let (Some(e), Value::Object(x)) = (entry.as_object_mut(), extra) {
        e.extend(x);
    }
    json(
        status,
        &json!({"errorCode": code, "message": message, "errors": [entry]}),
    )
}

/// RingCentral's OAuth error shape: `error`, `error_description` and `errors[]`.
fn oauth_error(status: StatusCode, error: &str, code: &str, description: &str) -> Response<Body> {
    json(
        status,
        &json!({"error": error, "error_description": description,
                "errors": [{"errorCode": code, "message": description}]}),
    )
}

fn endpoint_group(method: &Method, path: &str) -> Option<Group> {
    if path.starts_with("/restapi/oauth/") {
        Some(Group::Auth)
    } else if path.contains("/call-log") {
        Some(Group::Heavy)
    } else if path.starts_with("/restapi/v1.0/subscription") && method != Method::GET {
        Some(Group::Medium)
    } else if path.starts_with("/restapi/") {
        Some(Group::Light)
    } else {
        None
    }
}

async fn handle(inner: &Inner, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let group = endpoint_group(&method, &path);
    let at = Instant::now();
    // The limiter answers first: a request during a penalty never reaches the API.
    let verdict = group.map(|g| {
        let mut s = inner.state.lock().expect("rc state");
        let retry_after = s.cfg.retry_after_header;
        (g, s.limiter.admit(g, at), retry_after)
    });
    let mut resp = match &verdict {
        Some((g, limits::Verdict::Throttled { retry_after, .. }, send_retry_after)) => {
            let mut r = api_error(
                StatusCode::TOO_MANY_REQUESTS,
                "CMN-301",
                "Request rate exceeded",
                json!({}),
            );
            if *send_retry_after {
                r.headers_mut().insert(
                    "retry-after",
                    HeaderValue::from(retry_after.as_secs().max(1)),
                );
            }
            let _ = g;
            r
        }
        _ => route(inner, req, &method, &path, &query).await,
    };
    if let Some((g, v, _)) = &verdict {
        let (limit, remaining, window) = v.headers();
        let h = resp.headers_mut();
        h.insert("x-rate-limit-group", HeaderValue::from_static(g.name()));
        h.insert("x-rate-limit-limit", HeaderValue::from(limit));
        h.insert("x-rate-limit-remaining", HeaderValue::from(remaining));
        h.insert("x-rate-limit-window", HeaderValue::from(window));
    }
    inner
        .state
        .lock()
        .expect("rc state")
        .log
        .push(RcLoggedRequest {
            at,
            method: method.to_string(),
            path,
            query,
            group,
            status: resp.status().as_u16(),
        });
    resp
}

async fn read_body(req: Request<Incoming>) -> Option<Bytes> {
    Limited::new(req.into_body(), 2 * 1024 * 1024)
        .collect()
        .await
        .ok()
        .map(|c| c.to_bytes())
}

async fn route(
    inner: &Inner,
    req: Request<Incoming>,
    method: &Method,
    path: &str,
    query: &str,
) -> Response<Body> {
    match (method, path) {
        (&Method::GET, "/restapi/oauth/authorize") => authorize(inner, query),
        (&Method::POST, "/restapi/oauth/token") => token(inner, req).await,
        (&Method::POST, "/restapi/oauth/revoke") => revoke(inner, req).await,
        (&Method::GET, "/restapi/v1.0/account/~/call-log") => {
            if let Err(r) = bearer(inner, &req) {
                return *r;
            }
            let mut s = inner.state.lock().expect("rc state");
            if s.cfg.call_log_forbidden {
                return api_error(
                    StatusCode::FORBIDDEN,
                    "CMN-408",
                    "In order to call this API endpoint, user needs to have [ReadCompanyCallLog] permission for requested resource.",
                    json!({"permissionName": "ReadCompanyCallLog"}),
                );
            }
            s.calls.list(query, &inner.base, Utc::now())
        }
        (&Method::POST, p) if p.starts_with("/webhook/v2/") => {
            let token = p["/webhook/v2/".len()..].to_string();
            let content_type = req
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body = read_body(req).await.unwrap_or_default();
            let Ok(body) = serde_json::from_slice::<Value>(&body) else {
                return json(
                    StatusCode::BAD_REQUEST,
                    &json!({"status": "error", "message": "the body is not JSON"}),
                );
            };
            let mut s = inner.state.lock().expect("rc state");
            s.webhooks.push(WebhookMessage {
                token,
                content_type,
                body,
            });
            match s.cfg.webhook_status {
                Some(code) if code != 200 => json(
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    &json!({"status": "error", "message": "webhook delivery failed (simulated)"}),
                ),
                _ => json(StatusCode::OK, &json!({"status": "OK"})),
            }
        }
        _ => api_error(
            StatusCode::NOT_FOUND,
            "CMN-102",
            &format!("Resource for parameter [{path}] is not found"),
            json!({}),
        ),
    }
}

/// Checks the bearer token: 401 OAU-213 when unknown, OAU-128 when expired.
fn bearer(inner: &Inner, req: &Request<Incoming>) -> Result<(), Box<Response<Body>>> {
    let token = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let mut s = inner.state.lock().expect("rc state");
    match s.access.get(token).copied() {
        None => Err(Box::new(api_error(
            StatusCode::UNAUTHORIZED,
            "OAU-213",
            "Token not found",
            json!({}),
        ))),
        Some((_, exp)) if exp <= Instant::now() => Err(Box::new(api_error(
            StatusCode::UNAUTHORIZED,
            "OAU-128",
            "Access token expired",
            json!({}),
        ))),
        Some((sid, _)) => {
            // First use of a rotated pair shortens the old refresh token's grace to 10 s.
            if let Some(Some(sess)) = s.sessions.get_mut(sid)
                && let Some((_, until)) = &mut sess.superseded
            {
                *until = (*until).min(Instant::now() + Duration::from_secs(10));
            }
            Ok(())
        }
    }
}

fn authorize(inner: &Inner, query: &str) -> Response<Body> {
    let p: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| p.get(k).map(String::as_str).unwrap_or_default();
    let client_id = get("client_id");
    if client_id != RC_CLIENT_ID && client_id != RC_PUBLIC_CLIENT_ID {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "OAU-123",
            "Client id is invalid",
        );
    }
    if get("response_type") != "code" {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_response_type",
            "OAU-101",
            "Parameter [response_type] is invalid",
        );
    }
    let mut s = inner.state.lock().expect("rc state");
    let redirect_uri = get("redirect_uri");
    if !s.cfg.redirect_uris.iter().any(|r| r == redirect_uri) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "OAU-109",
            "Redirect URI does not match the registered one",
        );
    }
    let challenge = p.get("code_challenge").map(|c| {
        (
            c.clone(),
            p.get("code_challenge_method")
                .cloned()
                .unwrap_or_else(|| "plain".into()),
        )
    });
    if client_id == RC_PUBLIC_CLIENT_ID && challenge.is_none() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "OAU-100",
            "PKCE code_challenge is required for this app",
        );
    }
    let code = format!("rc-code-{}", s.rng.alnum(24));
    s.codes.insert(
        code.clone(),
        CodeGrant {
            client_id: client_id.to_string(),
            redirect_uri: redirect_uri.to_string(),
            challenge,
            expires: Instant::now() + Duration::from_secs(60),
            used: false,
        },
    );
    let Ok(mut to) = url::Url::parse(redirect_uri) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "OAU-109",
            "Redirect URI is not a URL",
        );
    };
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", get("state"))
        .append_pair("expires_in", "60");
    let mut r = json(StatusCode::FOUND, &json!({}));
    if let Ok(v) = HeaderValue::from_str(to.as_str()) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

/// `Ok(confidential)` or the error to answer.
fn client_auth(
    headers: &hyper::HeaderMap,
    form: &HashMap<String, String>,
) -> Result<(String, bool), Box<Response<Body>>> {
    let basic = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "));
    let bad = || {
        Box::new(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "OAU-123",
            "Invalid client credentials",
        ))
    };
    if form.contains_key("client_secret") {
        // Not a documented way to authenticate: RingCentral wants HTTP Basic.
        return Err(bad());
    }
    match basic {
        Some(b) => {
            let decoded = STANDARD
                .decode(b.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .unwrap_or_default();
            match decoded.split_once(':') {
                Some((RC_CLIENT_ID, RC_CLIENT_SECRET)) => Ok((RC_CLIENT_ID.into(), true)),
                _ => Err(bad()),
            }
        }
        None => match form.get("client_id").map(String::as_str) {
            Some(RC_PUBLIC_CLIENT_ID) => Ok((RC_PUBLIC_CLIENT_ID.into(), false)),
            _ => Err(bad()),
        },
    }
}

async fn token(inner: &Inner, req: Request<Incoming>) -> Response<Body> {
    let headers = req.headers().clone();
    let body = read_body(req).await.unwrap_or_default();
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let mut form = HashMap::new();
    for (k, v) in pairs {
        if form.insert(k.clone(), v).is_some() {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "OAU-111",
                &format!("Parameter [{k}] is sent more than once"),
            );
        }
    }
    let (client_id, confidential) = match client_auth(&headers, &form) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let mut s = inner.state.lock().expect("rc state");
    s.token_requests += 1;
    let now = Instant::now();
    let grant_error =
        |code: &str, d: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", code, d);
    match get("grant_type") {
        crate::auth::oauth2::JWT_BEARER => {
            if !confidential {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unauthorized_client",
                    "OAU-251",
                    "Unauthorized for this grant type",
                );
            }
            match s.jwts.get(get("assertion")) {
                Some(true) => issue(&mut s, &client_id, now),
                Some(false) => grant_error("OAU-213", "Token is revoked"),
                None => grant_error("OAU-211", "Invalid token"),
            }
        }
        "authorization_code" => {
            let code = get("code").to_string();
            let Some(g) = s.codes.get_mut(&code) else {
                return grant_error("OAU-106", "Authorization code is invalid");
            };
            if g.used {
                return grant_error("OAU-106", "Authorization code is already used");
            }
            g.used = true;
            if g.expires <= now {
                return grant_error("OAU-108", "Authorization code is expired");
            }
            if g.client_id != client_id {
                return grant_error("OAU-110", "Authorization code was issued to another app");
            }
            if g.redirect_uri != get("redirect_uri") {
                return grant_error("OAU-109", "Redirect URI does not match");
            }
            if let Some((challenge, method)) = &g.challenge {
                let verifier = get("code_verifier");
                let ok = match method.as_str() {
                    "S256" => {
                        URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) == *challenge
                    }
                    _ => verifier == challenge,
                };
                if verifier.is_empty() || !ok {
                    return grant_error("OAU-106", "Code verifier does not match the challenge");
                }
            }
            issue(&mut s, &client_id, now)
        }
        "refresh_token" => refresh(&mut s, &client_id, get("refresh_token"), now),
        "" => oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "OAU-101",
            "Parameter [grant_type] is required",
        ),
        other => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "OAU-101",
            &format!("Unsupported grant type [{other}]"),
        ),
    }
}

fn pair_body(s: &State, sess: &Session) -> Response<Body> {
    json(
        StatusCode::OK,
        &json!({"access_token": sess.access, "token_type": "bearer",
                "expires_in": s.cfg.access_ttl.as_secs(),
                "refresh_token": sess.refresh, "refresh_token_expires_in": 604800,
                "scope": "ReadCallLog", "owner_id": "256440016",
                "endpoint_id": "rc-sim-endpoint"}),
    )
}

fn issue(s: &mut State, client_id: &str, now: Instant) -> Response<Body> {
    let sess = Session {
        client_id: client_id.to_string(),
        access: format!("rc-at-{}", s.rng.alnum(32)),
        refresh: format!("rc-rt-{}", s.rng.alnum(32)),
        superseded: None,
    };
    let id = s.sessions.len();
    s.access
        .insert(sess.access.clone(), (id, now + s.cfg.access_ttl));
    let r = pair_body(s, &sess);
    s.sessions.push(Some(sess));
    r
}

fn refresh(s: &mut State, client_id: &str, rt: &str, now: Instant) -> Response<Body> {
    let refused = || {
        oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "OAU-210",
            "Token expired",
        )
    };
    let Some(id) = s.sessions.iter().position(|x| {
        x.as_ref().is_some_and(|x| {
            x.refresh == rt || x.superseded.as_ref().is_some_and(|(old, _)| old == rt)
        })
    }) else {
        return refused();
    };
    let ttl = s.cfg.access_ttl;
    let new_access = format!("rc-at-{}", s.rng.alnum(32));
    let new_refresh = format!("rc-rt-{}", s.rng.alnum(32));
    let sess = s.sessions[id].as_mut().expect("found above");
    if sess.client_id != client_id {
        return refused();
    }
    if sess.refresh != rt {
        // The superseded token within its grace answers with the current pair.
        return match &sess.superseded {
            Some((_, until)) if *until > now => {
                let sess = s.sessions[id].take().expect("present");
                let r = pair_body(s, &sess);
                s.sessions[id] = Some(sess);
                r
            }
            _ => refused(),
        };
    }
    // Rotation: the old access token dies at once.
    let old_access = std::mem::replace(&mut sess.access, new_access.clone());
    let old_refresh = std::mem::replace(&mut sess.refresh, new_refresh);
    sess.superseded = Some((old_refresh, now + Duration::from_secs(3600)));
    s.access.remove(&old_access);
    s.access.insert(new_access, (id, now + ttl));
    let sess = s.sessions[id].take().expect("present");
    let r = pair_body(s, &sess);
    s.sessions[id] = Some(sess);
    r
}

async fn revoke(inner: &Inner, req: Request<Incoming>) -> Response<Body> {
    let headers = req.headers().clone();
    let body = read_body(req).await.unwrap_or_default();
    let form: HashMap<String, String> =
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body)
            .unwrap_or_default()
            .into_iter()
            .collect();
    if let Err(r) = client_auth(&headers, &form) {
        return *r;
    }
    let token = form.get("token").cloned().unwrap_or_default();
    let mut s = inner.state.lock().expect("rc state");
    // Revoking either token of a session ends the whole session.
    if let Some(id) = s.sessions.iter().position(|x| {
        x.as_ref()
            .is_some_and(|x| x.refresh == token || x.access == token)
    }) && let Some(sess) = s.sessions[id].take()
    {
        s.access.remove(&sess.access);
    }
    json(StatusCode::OK, &json!({}))
}
