//! A test receiver for HTTP pushes: the other end of the `http` sink, for
//! tests and demos (`expense-sync simulate --receiver-port …`).
//!
//! It does what a careful production receiver should: verifies the
//! `X-Expense-Sync-Signature` HMAC over the exact body bytes, de-duplicates
//! batches by `Idempotency-Key` (a repeated key gets the first answer again,
//! and nothing is accepted twice), and records what it accepted. On demand it
//! answers 500, 429 with `Retry-After`, answers too late (after accepting, so
//! the client times out and retries), answers an applied batch with an
//! unreadable body, redirects, de-duplicates per record key, and rejects
//! chosen records, either in the 2xx body's `errors` list or with a 4xx for
//! the whole batch.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Header the receiver reads the signature from.
pub const SIGNATURE_HEADER: &str = "x-expense-sync-signature";

/// How to start a receiver.
#[derive(Clone, Default)]
pub struct ReceiverConfig {
    /// Shared signing secret; when set, unsigned or badly signed batches get 401.
    pub secret: Option<String>,
    /// How far a signature's timestamp may be from now (default 5 minutes).
    pub tolerance: Option<Duration>,
    /// When set, requests without `Authorization: Bearer <this>` get 401.
    pub bearer: Option<String>,
    /// When set, the bearer token must satisfy this check (e.g. an access token
    /// the simulator's accounts server issued: [`super::Simulator::token_checker`]).
    pub accept_token: Option<TokenCheck>,
    /// When set, every request to the receiver's own path (`/expenses`) is
    /// answered with this redirect and nothing is applied; other paths are
    /// served normally, and a GET anywhere answers `200 []` (a listing, as a
    /// real endpoint behind the new location might).
    pub redirect: Option<Redirect>,
    /// When set, records are also de-duplicated by the value of this body
    /// field (e.g. `_idempotency_key`): a record whose key was applied before
    /// is not applied again, whatever batch it comes in.
    pub record_key_field: Option<String>,
}

/// A redirect the receiver answers with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
    /// The `Location` header: a path (same origin) or an absolute URL (any origin).
    pub location: String,
}

/// Decides whether a bearer token is acceptable.
pub type TokenCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

impl std::fmt::Debug for ReceiverConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverConfig")
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field("tolerance", &self.tolerance)
            .field("bearer", &self.bearer.as_ref().map(|_| "[redacted]"))
            .field("accept_token", &self.accept_token.is_some())
            .field("redirect", &self.redirect)
            .field("record_key_field", &self.record_key_field)
            .finish()
    }
}

/// A failure injected into the next batch request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer 500 without accepting anything.
    ServerError,
    /// Answer 429 with `Retry-After: <secs>` without accepting anything.
    TooManyRequests {
        /// Seconds in `Retry-After`.
        retry_after_secs: u64,
    },
    /// Accept the batch, then hold the answer this long (longer than the client's timeout).
    SlowAnswer(Duration),
    /// Accept the batch, then answer 200 `application/json` with a body cut
    /// off mid-JSON (complete per its Content-Length, so only parsing fails).
    UnreadableAnswer,
    /// Accept the batch, then promise a longer body than is sent and cut the connection.
    TruncatedAnswer,
}

/// How records marked for rejection are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RejectMode {
    /// 200 with the others accepted and `{"errors": [{"index", "id", "reason"}]}`.
    #[default]
    InBody,
    /// The whole batch refused with this status (e.g. 422) and nothing accepted.
    Status(u16),
}

/// Counters of what the receiver saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Requests received.
    pub requests: u64,
    /// Batches accepted (first time their key was seen).
    pub batches: u64,
    /// Requests whose key had been seen already (answered from memory).
    pub duplicate_batches: u64,
    /// Requests refused for a missing, stale or wrong signature.
    pub bad_signatures: u64,
    /// Faults injected.
    pub faults: u64,
    /// Records rejected.
    pub rejected: u64,
    /// Size of the largest request body, in bytes.
    pub largest_body: u64,
    /// Requests per HTTP method, e.g. `{"POST": 12}`.
    pub methods: std::collections::BTreeMap<String, u64>,
    /// Requests carrying each header, by lowercase name (values are never kept).
    pub headers_seen: std::collections::BTreeMap<String, u64>,
    /// Redirects answered.
    pub redirects: u64,
    /// Records not applied because their record key was applied before.
    pub duplicate_records: u64,
}

#[derive(Default)]
struct State {
    faults: VecDeque<Fault>,
    reject: HashMap<String, String>,
    mode: RejectMode,
    latency: Duration,
    answers: HashMap<String, (u16, Value)>,
    accepted: Vec<Value>,
    counts: HashMap<String, u32>,
    applied_keys: HashMap<String, u32>,
    stats: ReceiverStats,
}

struct Inner {
    secret: Option<Vec<u8>>,
    bearer: Option<String>,
    accept_token: Option<TokenCheck>,
    redirect: Option<Redirect>,
    record_key_field: Option<String>,
    tolerance: Duration,
    state: Mutex<State>,
}

/// A running receiver on 127.0.0.1; stops when dropped or on [`Receiver::shutdown`].
pub struct Receiver {
    inner: Arc<Inner>,
    url: String,
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Receiver {
    /// Starts on any free port.
    pub async fn start(cfg: ReceiverConfig) -> std::io::Result<Receiver> {
        Self::start_on(cfg, 0).await
    }

    /// Starts on `port` of 127.0.0.1 (0 = any free port).
    pub async fn start_on(cfg: ReceiverConfig, port: u16) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let url = format!(
            "http://127.0.0.1:{}/expenses",
            listener.local_addr()?.port()
        );
        let inner = Arc::new(Inner {
            secret: cfg.secret.map(String::into_bytes),
            bearer: cfg.bearer,
            accept_token: cfg.accept_token,
            redirect: cfg.redirect,
            record_key_field: cfg.record_key_field,
            tolerance: cfg.tolerance.unwrap_or(Duration::from_secs(300)),
            state: Mutex::new(State::default()),
        });
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, Arc::clone(&inner), rx));
        Ok(Receiver {
            inner,
            url,
            shutdown: tx,
            task: Mutex::new(Some(task)),
        })
    }

    /// The URL to push to, e.g. `http://127.0.0.1:41234/expenses` (any path works).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Queues faults for the next batch requests, in order.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state().faults.extend(faults);
    }

    /// Rejects the record whose `id` field is `id`, with `reason`, whenever it arrives.
    pub fn reject(&self, id: &str, reason: &str) {
        self.state().reject.insert(id.into(), reason.into());
    }

    /// Chooses how rejected records are refused.
    pub fn set_reject_mode(&self, mode: RejectMode) {
        self.state().mode = mode;
    }

    /// Delay before every answer (to make a push last long enough to be interrupted).
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// Every record accepted, in arrival order.
    pub fn accepted(&self) -> Vec<Value> {
        self.state().accepted.clone()
    }

    /// How many times each record `id` was accepted (1 everywhere when nothing was doubled).
    pub fn accept_counts(&self) -> HashMap<String, u32> {
        self.state().counts.clone()
    }

    /// How many times each record key (see [`ReceiverConfig::record_key_field`])
    /// was applied: 1 everywhere when no record version was applied twice.
    /// Without a record key field, counts the keys found in accepted records.
    pub fn applied_key_counts(&self) -> HashMap<String, u32> {
        self.state().applied_keys.clone()
    }

    /// Counters so far.
    pub fn stats(&self) -> ReceiverStats {
        self.state().stats.clone()
    }

    /// Stops serving.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let task = self.task.lock().expect("task").take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().expect("receiver state")
    }
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SignatureError(pub String);

/// Checks `header` (`t=<unix>,v1=<hex>`) against HMAC-SHA256(`secret`, `"{t}." + body`),
/// in constant time, and that `t` is within `tolerance` of `now` (unix seconds).
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => sigs.push(v.to_string()),
            _ => {}
        }
    }
    let t = t.ok_or_else(|| SignatureError("signature header has no valid t=".into()))?;
    if (now - t).unsigned_abs() > tolerance.as_secs() {
        return Err(SignatureError(format!(
            "signature timestamp {t} is more than {}s from now",
            tolerance.as_secs()
        )));
    }
    for sig in sigs {
        let Ok(bytes) = hex::decode(&sig) else {
            continue;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        if mac.verify_slice(&bytes).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError("signature does not match the body".into()))
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn answer(status: u16, body: &Value, retry_after: Option<u64>) -> Response<Body> {
    let mut r = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json");
    if let Some(s) = retry_after {
        r = r.header("retry-after", s.to_string());
    }
    r.body(full(body.to_string())).expect("valid response")
}

/// 200 with a JSON content type and a body that stops mid-JSON.
fn unreadable(reply: &Value) -> Response<Body> {
    let text = reply.to_string();
    let cut = text.len() / 2;
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(full(text[..cut].to_string()))
        .expect("valid response")
}

/// Headers promising the whole reply, half of it sent, then the connection cut.
fn truncated(reply: &Value) -> Response<Body> {
    let text = Bytes::from(reply.to_string());
    let half = text.slice(..text.len() / 2);
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
        Ok(Frame::data(half)),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "receiver: truncated answer",
        )),
    ];
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("content-length", text.len())
        .body(BodyExt::boxed(StreamBody::new(futures::stream::iter(
            frames,
        ))))
        .expect("valid response")
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let headers = req.headers().clone();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), 64 * 1024 * 1024)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return answer(
                400,
                &json!({"message": "body too large or unreadable"}),
                None,
            );
        }
    };
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let latency = {
        let mut st = inner.state.lock().expect("state");
        st.stats.requests += 1;
        st.stats.largest_body = st.stats.largest_body.max(body.len() as u64);
        *st.stats.methods.entry(method.clone()).or_default() += 1;
        for name in headers.keys() {
            *st.stats
                .headers_seen
                .entry(name.as_str().to_string())
                .or_default() += 1;
        }
        st.latency
    };
    if let Some(r) = &inner.redirect {
        let own_path = "/expenses";
        if path == own_path {
            inner.state.lock().expect("state").stats.redirects += 1;
            return Response::builder()
                .status(StatusCode::from_u16(r.status).unwrap_or(StatusCode::FOUND))
                .header("location", r.location.as_str())
                .body(full(Bytes::new()))
                .expect("valid response");
        }
        if method == "GET" {
            return answer(200, &json!([]), None);
        }
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(token) = &inner.bearer {
        let expected = format!("Bearer {token}");
        // Not constant-time: a test receiver, and the signature check below is.
        if text("authorization").as_deref() != Some(expected.as_str()) {
            return answer(
                401,
                &json!({"message": "missing or wrong bearer token"}),
                None,
            );
        }
    }
    if let Some(check) = &inner.accept_token {
        let token =
            text("authorization").and_then(|h| h.strip_prefix("Bearer ").map(str::to_string));
        if !token.is_some_and(|t| check(&t)) {
            return answer(401, &json!({"message": "invalid token"}), None);
        }
    }
    if let Some(secret) = &inner.secret {
        let checked = match text(SIGNATURE_HEADER) {
            None => Err(SignatureError("missing signature header".into())),
            Some(h) => verify_signature(
                secret,
                &h,
                &body,
                chrono::Utc::now().timestamp(),
                inner.tolerance,
            ),
        };
        if let Err(e) = checked {
            inner.state.lock().expect("state").stats.bad_signatures += 1;
            return answer(401, &json!({"message": e.0}), None);
        }
    }
    let Some(key) = text("idempotency-key") else {
        return answer(
            400,
            &json!({"message": "Idempotency-Key header is required"}),
            None,
        );
    };
    let ndjson = text("content-type").is_some_and(|c| c.contains("ndjson"));
    let records: Result<Vec<Value>, String> = if ndjson {
        body.split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(|l| serde_json::from_slice(l).map_err(|e| e.to_string()))
            .collect()
    } else {
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    };
    let (status, reply, slow, garble) = {
        let mut st = inner.state.lock().expect("state");
        let fault = st.faults.pop_front();
        if fault.is_some() {
            st.stats.faults += 1;
        }
        match fault {
            Some(Fault::ServerError) => {
                return answer(500, &json!({"message": "injected server error"}), None);
            }
            Some(Fault::TooManyRequests { retry_after_secs }) => {
                return answer(
                    429,
                    &json!({"message": "slow down"}),
                    Some(retry_after_secs),
                );
            }
            _ => {}
        }
        let slow = match fault {
            Some(Fault::SlowAnswer(d)) => Some(d),
            _ => None,
        };
        let garble = match fault {
            Some(Fault::UnreadableAnswer) => Some(false),
            Some(Fault::TruncatedAnswer) => Some(true),
            _ => None,
        };
        if let Some((status, reply)) = st.answers.get(&key).cloned() {
            st.stats.duplicate_batches += 1;
            (status, reply, slow, garble)
        } else {
            let records = match records {
                Ok(r) => r,
                Err(e) => {
                    return answer(
                        400,
                        &json!({"message": format!("body is not JSON: {e}")}),
                        None,
                    );
                }
            };
            let rejected: Vec<(usize, String, String)> = records
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let id = r.get("id").and_then(Value::as_str)?;
                    st.reject
                        .get(id)
                        .map(|why| (i, id.to_string(), why.clone()))
                })
                .collect();
            if let (RejectMode::Status(code), false) = (st.mode, rejected.is_empty()) {
                let reasons: Vec<String> = rejected
                    .iter()
                    .map(|(_, id, why)| format!("{id}: {why}"))
                    .collect();
                return answer(code, &json!({"message": reasons.join("; ")}), None);
            }
            for (i, r) in records.iter().enumerate() {
                if rejected.iter().any(|(j, _, _)| *j == i) {
                    continue;
                }
                let field = inner
                    .record_key_field
                    .as_deref()
                    .unwrap_or("_idempotency_key");
                if let Some(k) = r.get(field).and_then(Value::as_str) {
                    let seen = st.applied_keys.contains_key(k);
                    if seen && inner.record_key_field.is_some() {
                        st.stats.duplicate_records += 1;
                        continue;
                    }
                    *st.applied_keys.entry(k.to_string()).or_default() += 1;
                }
                if let Some(id) = r.get("id").and_then(Value::as_str) {
                    *st.counts.entry(id.to_string()).or_default() += 1;
                }
                st.accepted.push(r.clone());
            }
            st.stats.batches += 1;
            st.stats.rejected += rejected.len() as u64;
            let errors: Vec<Value> = rejected
                .iter()
                .map(|(i, id, why)| json!({"index": i, "id": id, "reason": why}))
                .collect();
            let reply = json!({"accepted": records.len() - rejected.len(), "errors": errors});
            st.answers.insert(key, (200, reply.clone()));
            (200, reply, slow, garble)
        }
    };
    if let Some(d) = slow {
        tokio::time::sleep(d).await;
    }
    match garble {
        Some(false) => unreadable(&reply),
        Some(true) => truncated(&reply),
        None => answer(status, &reply, None),
    }
}

async fn serve(listener: TcpListener, inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let inner = Arc::clone(&inner);
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let inner = Arc::clone(&inner);
                async move { Ok::<_, Infallible>(handle(inner, req).await) }
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

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    const NOW: i64 = 1_700_000_000;
    const TOL: Duration = Duration::from_secs(300);

    #[test]
    fn a_signature_from_the_sink_verifies() {
        let body = br#"[{"id":"tx1","amount":12.30}]"#;
        let header = crate::sinks::http::sign(&SecretString::from("s3cret"), NOW, body);
        assert_eq!(
            verify_signature(b"s3cret", &header, body, NOW + 10, TOL),
            Ok(())
        );
    }

    #[test]
    fn a_tampered_body_fails_verification() {
        let body = br#"[{"id":"tx1","amount":12.30}]"#;
        let header = crate::sinks::http::sign(&SecretString::from("s3cret"), NOW, body);
        let tampered = br#"[{"id":"tx1","amount":12.31}]"#;
        assert!(verify_signature(b"s3cret", &header, tampered, NOW, TOL).is_err());
    }

    #[test]
    fn a_wrong_secret_fails_verification() {
        let body = b"[]";
        let header = crate::sinks::http::sign(&SecretString::from("s3cret"), NOW, body);
        assert!(verify_signature(b"other", &header, body, NOW, TOL).is_err());
    }

    #[test]
    fn a_stale_or_replayed_timestamp_fails_verification() {
        let body = b"[]";
        let header = crate::sinks::http::sign(&SecretString::from("k"), NOW, body);
        assert!(verify_signature(b"k", &header, body, NOW + 301, TOL).is_err());
        // Moving the timestamp forward breaks the MAC, since t is signed too.
        let moved = header.replace("t=1700000000", "t=1700000200");
        assert!(verify_signature(b"k", &moved, body, NOW + 200, TOL).is_err());
    }
}
