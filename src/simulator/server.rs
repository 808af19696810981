//! The two HTTP servers (accounts and cluster), with auth, rate limiting,
//! fault injection and the request log.
//!
//! Built on bare hyper with our own accept loop so a fault can drop a
//! connection without answering, which no router framework exposes.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use super::respond::{Body, full, json_response, json_value};
use super::state::Shared;
use super::store::{ListQuirks, Listed, WriteBackError};
use super::{
    DEMO_AUTHORIZATION_CODE, LoggedRequest, MSG_INVALID_CLIENT, MSG_INVALID_TOKEN,
    MSG_RATE_LIMITED, TokenFault,
};

/// Which server a request arrived on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Server {
    Accounts,
    Cluster,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Accounts => "accounts",
            Server::Cluster => "cluster",
        }
    }
}

enum Outcome {
    Respond(Response<Body>),
    /// Close the connection without answering.
    Drop,
}

fn message(status: StatusCode, msg: &str) -> Response<Body> {
    json_value(status, &json!({ "message": msg }))
}

fn validation_error(msg: &str) -> Response<Body> {
    json_value(
        StatusCode::BAD_REQUEST,
        &json!({"data": null, "error": "ValidationError", "message": msg}),
    )
}

fn too_many(msg: &str) -> Response<Body> {
    let mut r = message(StatusCode::TOO_MANY_REQUESTS, msg);
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn not_found() -> Response<Body> {
    message(StatusCode::NOT_FOUND, "Resource not found")
}

fn method_not_allowed() -> Response<Body> {
    message(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}

fn html(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(full(text));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
    r
}

/// Sends the headers of `resp` (with the full Content-Length) but only half
/// its body, then fails the stream so the connection is cut mid-body.
async fn truncate(resp: Response<Body>) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let half = bytes.slice(..bytes.len() / 2);
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
        Ok(Frame::data(half)),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "simulated truncated body",
        )),
    ];
    let body = StreamBody::new(futures::stream::iter(frames)).boxed();
    let mut r = Response::from_parts(parts, body);
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    r
}

/// The first half of the body, framed as the whole of it.
async fn cut_in_half(resp: Response<Body>) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let half = bytes.slice(..bytes.len() / 2);
    let len = half.len();
    let mut r = Response::from_parts(parts, full(half));
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    r
}

fn bearer(req: &Request<Incoming>) -> Option<String> {
    let h = req.headers().get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = h.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

impl Shared {
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        match bearer(req) {
            Some(t) => self.tokens.lock().expect("tokens").valid(&t),
            None => false,
        }
    }

    async fn handle(
        self: &Arc<Self>,
        server: Server,
        peer: IpAddr,
        req: Request<Incoming>,
    ) -> Outcome {
        // Arrival time: what a rate limit measures (latency comes after).
        let arrived = Instant::now();
        let method = req.method().to_string();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let authorization_present = req.headers().contains_key(AUTHORIZATION);
        let faults = self.faults.lock().expect("faults").clone();

        let mut outcome = self.answer(server, peer, req, &path, &query).await;
        let offset = self
            .clock_offset_us
            .load(std::sync::atomic::Ordering::Relaxed);
        // hyper writes the real time unless a Date is already set.
        if offset != 0
            && let Outcome::Respond(r) = &mut outcome
        {
            let at = chrono::Utc::now() + chrono::TimeDelta::microseconds(offset);
            let text = at.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
            if let Ok(v) = HeaderValue::from_str(&text) {
                r.headers_mut().insert(hyper::header::DATE, v);
            }
        }
        if !faults.latency.is_zero() {
            tokio::time::sleep(faults.latency).await;
        }
        let status = match &outcome {
            Outcome::Respond(r) => r.status().as_u16(),
            Outcome::Drop => 0,
        };
        tracing::debug!(server = server.name(), %method, %path, status, "simulator request");
        self.log.lock().expect("log").push(LoggedRequest {
            at: arrived,
            method,
            path,
            query,
            status,
            server: server.name(),
            authorization_present,
        });
        outcome
    }

    async fn answer(
        self: &Arc<Self>,
        server: Server,
        peer: IpAddr,
        req: Request<Incoming>,
        path: &str,
        query: &str,
    ) -> Outcome {
        if !self.limiter.lock().expect("limiter").allow(peer) {
            return Outcome::Respond(too_many(MSG_RATE_LIMITED));
        }
        if server == Server::Accounts {
            let resp = self.accounts(req, path, query).await;
            if path == "/oauth/token" && resp.status() == StatusCode::OK {
                let lost = {
                    let mut f = self.faults.lock().expect("faults");
                    (f.lost_token_answers > 0).then(|| {
                        f.lost_token_answers -= 1;
                        f.token_fault
                    })
                };
                return match lost {
                    None => Outcome::Respond(resp),
                    Some(TokenFault::Reset) => Outcome::Drop,
                    Some(TokenFault::Truncate) => Outcome::Respond(truncate(resp).await),
                    Some(TokenFault::ServerError) => Outcome::Respond(html(
                        StatusCode::BAD_GATEWAY,
                        "<html><body><h1>502 Bad Gateway</h1></body></html>",
                    )),
                };
            }
            return Outcome::Respond(resp);
        }
        let data_request = path.starts_with("/platform/");
        let mut drop_kind = None;
        let mut cut_json = false;
        if data_request {
            let mut faults = self.faults.lock().expect("faults");
            if faults.burst_429 > 0 {
                faults.burst_429 -= 1;
                return Outcome::Respond(too_many(MSG_RATE_LIMITED));
            }
            if faults.cut_json_bodies > 0 {
                faults.cut_json_bodies -= 1;
                cut_json = true;
            }
            let (error_rate, drop_rate) = (faults.error_rate, faults.drop_rate);
            drop(faults);
            let mut rng = self.fault_rng.lock().expect("fault rng");
            if error_rate > 0.0 && rng.chance(error_rate) {
                return Outcome::Respond(match rng.below(3) {
                    0 => message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
                    1 => html(
                        StatusCode::BAD_GATEWAY,
                        "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n",
                    ),
                    _ => html(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "<html><body><h1>503 Service Unavailable</h1>No server is available to handle this request.</body></html>",
                    ),
                });
            }
            if drop_rate > 0.0 && rng.chance(drop_rate) {
                drop_kind = Some(rng.chance(0.5));
            }
        }
        let resp = self.cluster(req, path, query).await;
        if cut_json && resp.status() == StatusCode::OK {
            return Outcome::Respond(cut_in_half(resp).await);
        }
        match drop_kind {
            Some(true) => Outcome::Drop,
            Some(false) => Outcome::Respond(truncate(resp).await),
            None => Outcome::Respond(resp),
        }
    }

    async fn accounts(
        self: &Arc<Self>,
        req: Request<Incoming>,
        path: &str,
        query: &str,
    ) -> Response<Body> {
        match path {
            "/oauth/token" | "/oauth/cluster" | "/oauth/revoke" if req.method() != Method::POST => {
                method_not_allowed()
            }
            "/app/developers/oauth/authorize" | "/oauth/authorize" => {
                if req.method() == Method::GET {
                    self.authorize(query)
                } else {
                    method_not_allowed()
                }
            }
            "/oauth/token" if super::oauth::is_form(&req) => self.standard_token(req).await,
            "/oauth/token" => self.token(req).await,
            "/oauth/revoke" => self.revoke(req).await,
            "/oauth/cluster" => {
                if self.authorized(&req) {
                    json_value(
                        StatusCode::OK,
                        &json!({ "cluster_domain": self.cluster_url }),
                    )
                } else {
                    message(StatusCode::UNAUTHORIZED, MSG_INVALID_TOKEN)
                }
            }
            _ => not_found(),
        }
    }

    async fn token(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => {
                return message(
                    StatusCode::BAD_REQUEST,
                    "request body is too large or unreadable",
                );
            }
        };
        let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) else {
            return message(
                StatusCode::BAD_REQUEST,
                "request body must be a JSON object",
            );
        };
        const ALLOWED: [&str; 5] = [
            "grant_type",
            "refresh_token",
            "code",
            "client_id",
            "client_secret",
        ];
        if let Some(k) = fields.keys().find(|k| !ALLOWED.contains(&k.as_str())) {
            return message(
                StatusCode::BAD_REQUEST,
                &format!("unexpected field \"{k}\" in request body"),
            );
        }
        let field = |k: &str| fields.get(k).and_then(Value::as_str);
        for k in ["grant_type", "client_id", "client_secret"] {
            if field(k).is_none() {
                return message(
                    StatusCode::BAD_REQUEST,
                    &format!("\"{k}\" is required and must be a string"),
                );
            }
        }
        let grant = field("grant_type").unwrap_or_default();
        if grant != "refresh_token" && grant != "authorization_code" {
            return message(
                StatusCode::BAD_REQUEST,
                &format!(
                    "unsupported grant_type \"{grant}\"; use refresh_token or authorization_code"
                ),
            );
        }
        let secret_field = if grant == "refresh_token" {
            "refresh_token"
        } else {
            "code"
        };
        let Some(presented) = field(secret_field) else {
            return message(
                StatusCode::BAD_REQUEST,
                &format!("\"{secret_field}\" is required for grant_type {grant}"),
            );
        };
        let c = &self.credentials;
        if field("client_id") != Some(c.client_id.as_str())
            || field("client_secret") != Some(c.client_secret.as_str())
        {
            return message(StatusCode::UNAUTHORIZED, MSG_INVALID_CLIENT);
        }
        let client_id = c.client_id.as_str();
        if grant == "refresh_token" {
            let access = if presented == c.refresh_token {
                Some(self.issue_access())
            } else {
                self.fyle_refresh(presented, client_id)
            };
            return match access {
                Some(token) => json_value(StatusCode::OK, &json!({ "access_token": token })),
                None => message(StatusCode::UNAUTHORIZED, MSG_INVALID_TOKEN),
            };
        }
        if presented == DEMO_AUTHORIZATION_CODE {
            let token = self.issue_access();
            return json_value(
                StatusCode::OK,
                &json!({"access_token": token, "refresh_token": c.refresh_token}),
            );
        }
        match self.fyle_code_exchange(presented, client_id) {
            Some((access, refresh)) => json_value(
                StatusCode::OK,
                &json!({"access_token": access, "refresh_token": refresh}),
            ),
            None => message(StatusCode::UNAUTHORIZED, MSG_INVALID_TOKEN),
        }
    }

    async fn cluster(
        self: &Arc<Self>,
        req: Request<Incoming>,
        path: &str,
        query: &str,
    ) -> Response<Body> {
        let Some(rest) = path.strip_prefix("/platform/v1/") else {
            return not_found();
        };
        if !self.authorized(&req) {
            return message(StatusCode::UNAUTHORIZED, MSG_INVALID_TOKEN);
        }
        let rest = rest.trim_end_matches('/');
        if rest == "spender/my_profile" {
            if req.method() != Method::GET {
                return method_not_allowed();
            }
            let body = self.store.read().expect("store").profile().to_string();
            return json_response(StatusCode::OK, body.into_bytes());
        }
        let Some(resource) = rest.strip_prefix("admin/") else {
            return not_found();
        };
        if resource == "expenses/accounting_export_summary/bulk" {
            if req.method() != Method::POST {
                return method_not_allowed();
            }
            let injected = self.faults.lock().expect("faults").writeback_status;
            if let Some(status) = injected.and_then(|s| StatusCode::from_u16(s).ok()) {
                return message(status, "write-back refused (injected fault)");
            }
            return self.export_summary_bulk(req).await;
        }
        if resource.contains('/') {
            return not_found();
        }
        if req.method() != Method::GET {
            return method_not_allowed();
        }
        let quirks = self.list_quirks();
        let shared = Arc::clone(self);
        let (resource, query) = (resource.to_owned(), query.to_owned());
        // Filtering 100k rows is CPU work; keep it off the async workers.
        let listed = tokio::task::spawn_blocking(move || {
            shared
                .store
                .read()
                .expect("store")
                .list(&resource, &query, quirks)
        })
        .await
        .unwrap_or_else(|_| Listed::Invalid("internal error".into()));
        match listed {
            Listed::Body(b) => json_response(StatusCode::OK, b),
            Listed::UnknownResource => not_found(),
            Listed::Invalid(m) => validation_error(&m),
        }
    }
}

impl Shared {
    /// Draws this request's page quirks from the active faults.
    fn list_quirks(&self) -> ListQuirks {
        let (rate, count_excess, seek) = {
            let f = self.faults.lock().expect("faults");
            (f.short_page_rate, f.count_excess, f.seek_fault)
        };
        let mut quirks = ListQuirks {
            count_excess,
            seek,
            ..ListQuirks::default()
        };
        if rate > 0.0 {
            let mut rng = self.fault_rng.lock().expect("fault rng");
            if rng.chance(rate) {
                quirks.short = Some(rng.below(u64::MAX));
            }
        }
        quirks
    }

    async fn export_summary_bulk(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let body = match Limited::new(req.into_body(), 16 * 1024 * 1024)
            .collect()
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(_) => return validation_error("request body is too large or unreadable"),
        };
        let Ok(value) = serde_json::from_slice::<Value>(&body) else {
            return validation_error("request body must be JSON");
        };
        let result = self
            .store
            .write()
            .expect("store")
            .export_summary_bulk(&value);
        match result {
            Ok(()) => json_value(StatusCode::OK, &json!({})),
            Err(WriteBackError::Invalid(m)) => validation_error(&m),
            Err(WriteBackError::Bulk(v)) => json_value(StatusCode::BAD_REQUEST, &v),
        }
    }
}

/// Accepts connections until `shutdown` flips; each connection is served
/// by hyper and cut short when a fault asks for a dropped response.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    server: Server,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let shared = Arc::clone(&shared);
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let cut = Arc::new(Notify::new());
            let cut_in_service = Arc::clone(&cut);
            let service = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                let cut = Arc::clone(&cut_in_service);
                async move {
                    match shared.handle(server, peer.ip(), req).await {
                        Outcome::Respond(r) => Ok::<_, Infallible>(r),
                        Outcome::Drop => {
                            cut.notify_one();
                            std::future::pending().await
                        }
                    }
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = cut.notified() => {}
                _ = conn_shutdown.changed() => {}
            }
        });
    }
}
