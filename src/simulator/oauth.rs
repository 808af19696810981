//! OAuth 2.0 on the simulated accounts server, beyond Fyle's refresh grant:
//! an authorize endpoint issuing single-use, short-lived codes bound to the
//! client, the redirect URI and the PKCE challenge; the standard
//! (form-encoded, RFC 6749) token endpoint with HTTP Basic or body client
//! authentication, rotating refresh tokens, the JWT bearer, password and
//! client-credentials grants; and RFC 7009 revocation. Errors use each
//! style's own shape: `{"error": "invalid_grant", "error_description": …}`
//! for the standard style, `{"message": …}` for Fyle's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, LOCATION, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};
use url::Url;

use super::respond::{Body, json_value};
use super::rng::Rng;
use super::state::{CodeGrant, JwtCredential, OAuthBook, RefreshGrant, Shared};

/// Client id of the simulated *public* client (no secret; PKCE required).
pub const SIM_PUBLIC_CLIENT_ID: &str = "sim-public-client";
/// User name accepted by the (deprecated) password grant.
pub const SIM_USERNAME: &str = "sim-user@example.com";
/// Password accepted by the password grant.
pub const SIM_PASSWORD: &str = "sim-password-31c8";
/// Lifetime of refresh tokens issued by the standard endpoint (RingCentral: a week).
pub const REFRESH_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl OAuthBook {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            codes: HashMap::new(),
            refresh: HashMap::new(),
            jwts: HashMap::new(),
            rng: Rng::new(seed ^ 0x0A07_4C0D),
            code_ttl: Duration::from_secs(60),
        }
    }

    fn random(&mut self, prefix: &str) -> String {
        format!("{prefix}{}", self.rng.alnum(32))
    }

    /// Mints a JWT credential (what a provider's console issues for the JWT flow).
    pub(crate) fn issue_jwt(&mut self, ttl: Duration) -> String {
        let exp = chrono::Utc::now().timestamp() + ttl.as_secs() as i64;
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let jti = self.rng.alnum(16);
        let payload = URL_SAFE_NO_PAD.encode(
            json!({"iss": "fyle-simulator", "sub": SIM_USERNAME, "exp": exp, "jti": jti})
                .to_string(),
        );
        let sig = URL_SAFE_NO_PAD.encode(self.rng.alnum(32));
        let jwt = format!("{header}.{payload}.{sig}");
        self.jwts.insert(
            jwt.clone(),
            JwtCredential {
                exp,
                revoked: false,
            },
        );
        jwt
    }

    pub(crate) fn revoke_jwt(&mut self, jwt: &str) {
        if let Some(j) = self.jwts.get_mut(jwt) {
            j.revoked = true;
        }
    }

    /// Forgets every refresh token (as if they all expired or were revoked).
    pub(crate) fn revoke_all_refresh(&mut self) -> Vec<String> {
        self.refresh.drain().map(|(_, g)| g.access).collect()
    }

    pub(crate) fn refresh_is_live(&self, token: &str) -> bool {
        self.refresh
            .get(token)
            .is_some_and(|g| g.expires > Instant::now())
    }
}

/// A standard-style OAuth error response.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    json_value(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

fn invalid_grant(description: &str) -> Response<Body> {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

fn redirect(to: &Url) -> Response<Body> {
    let mut r = json_value(StatusCode::FOUND, &json!({}));
    if let Ok(v) = HeaderValue::from_str(to.as_str()) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

fn is_loopback_redirect(u: &Url) -> bool {
    u.scheme() == "http" && matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"))
}

/// Whether a request body is form-encoded (standard style) rather than JSON (Fyle style).
pub(crate) fn is_form(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

async fn read_form(req: Request<Incoming>) -> Option<Vec<(String, String)>> {
    let body: Bytes = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .ok()?
        .to_bytes();
    serde_urlencoded::from_bytes(&body).ok()
}

fn basic_credentials(req: &Request<Incoming>) -> Option<Result<(String, String), ()>> {
    let h = req.headers().get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = h.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD
        .decode(rest.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    let Some((id, secret)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
        return Some(Err(()));
    };
    let dec = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some(Ok((dec(id), dec(secret))))
}

/// Which client authenticated.
#[derive(PartialEq, Eq, Clone, Copy)]
enum Client {
    Confidential,
    Public,
}

impl Shared {
    pub(crate) fn issue_access(&self) -> String {
        let (subject, org) = {
            let store = self.store.read().expect("store");
            let p = &store.profile()["data"];
            (
                p["user_id"].as_str().unwrap_or_default().to_owned(),
                p["org_id"].as_str().unwrap_or_default().to_owned(),
            )
        };
        self.tokens
            .lock()
            .expect("tokens")
            .issue(self.token_ttl, &subject, &org)
    }

    /// Issues an access token and a refresh token bound to `client_id`.
    fn issue_pair(&self, client_id: &str, rotating: bool) -> (String, String) {
        let access = self.issue_access();
        let mut book = self.oauth.lock().expect("oauth");
        let refresh = book.random("sim-rt-");
        book.refresh.insert(
            refresh.clone(),
            RefreshGrant {
                client_id: client_id.to_string(),
                access: access.clone(),
                expires: Instant::now() + REFRESH_TOKEN_TTL,
                rotating,
            },
        );
        (access, refresh)
    }

    /// `GET …/oauth/authorize`: the consent page, auto-approved: redirects
    /// to `redirect_uri` with a fresh code (or an error) and the `state`.
    pub(crate) fn authorize(&self, query: &str) -> Response<Body> {
        let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| params.get(k).map(String::as_str);
        let client_id = get("client_id").unwrap_or_default();
        if client_id != self.credentials.client_id && client_id != SIM_PUBLIC_CLIENT_ID {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "unknown client_id",
            );
        }
        // Never redirect to an unverified URI: errors about it are shown here.
        let Some(mut target) = get("redirect_uri").and_then(|r| Url::parse(r).ok()) else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "redirect_uri is missing or not a URL",
            );
        };
        if !is_loopback_redirect(&target) {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "redirect_uri is not registered for this app (the simulator allows http loopback URIs on any port)",
            );
        }
        let redirect_uri = target.to_string();
        let state = get("state").map(str::to_string);
        let fail = |mut t: Url, error: &str, desc: &str| {
            {
                let mut q = t.query_pairs_mut();
                q.append_pair("error", error)
                    .append_pair("error_description", desc);
                if let Some(s) = &state {
                    q.append_pair("state", s);
                }
            }
            redirect(&t)
        };
        if let Some(rt) = get("response_type")
            && rt != "code"
        {
            return fail(
                target,
                "unsupported_response_type",
                "only response_type=code is supported",
            );
        }
        let challenge = get("code_challenge").map(str::to_string);
        if challenge.is_some() && get("code_challenge_method") != Some("S256") {
            return fail(
                target,
                "invalid_request",
                "code_challenge_method must be S256",
            );
        }
        if client_id == SIM_PUBLIC_CLIENT_ID && challenge.is_none() {
            return fail(
                target,
                "invalid_request",
                "public clients must use PKCE (code_challenge)",
            );
        }
        let code = {
            let mut book = self.oauth.lock().expect("oauth");
            let code = book.random("sim-code-");
            let expires = Instant::now() + book.code_ttl;
            book.codes.insert(
                code.clone(),
                CodeGrant {
                    client_id: client_id.to_string(),
                    redirect_uri,
                    challenge,
                    expires,
                    used: false,
                    issued: Vec::new(),
                },
            );
            code
        };
        {
            let mut q = target.query_pairs_mut();
            q.append_pair("code", &code);
            if let Some(s) = &state {
                q.append_pair("state", s);
            }
        }
        redirect(&target)
    }

    /// Redeems an authorization code; `Err` is the `invalid_grant` description.
    fn redeem_code(
        &self,
        code: &str,
        client_id: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
    ) -> Result<(), String> {
        let mut book = self.oauth.lock().expect("oauth");
        let Some(g) = book.codes.get_mut(code) else {
            return Err("unknown authorization code".into());
        };
        if g.used {
            // A replayed code may be stolen: revoke what it already bought.
            let issued = std::mem::take(&mut g.issued);
            book.refresh.retain(|_, r| !issued.contains(&r.access));
            drop(book);
            let mut tokens = self.tokens.lock().expect("tokens");
            for t in &issued {
                tokens.revoke(t);
            }
            return Err("authorization code was already used".into());
        }
        if Instant::now() > g.expires {
            return Err("authorization code has expired".into());
        }
        if g.client_id != client_id {
            return Err("authorization code was issued to another client".into());
        }
        if let Some(r) = redirect_uri
            && r != g.redirect_uri
        {
            return Err("redirect_uri does not match the authorization request".into());
        }
        if let Some(ch) = &g.challenge {
            let Some(v) = verifier else {
                return Err("code_verifier is required".into());
            };
            if URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes())) != *ch {
                return Err("code_verifier does not match the code_challenge".into());
            }
        }
        g.used = true;
        Ok(())
    }

    fn remember_issued(&self, code: &str, access: &str) {
        if let Some(g) = self.oauth.lock().expect("oauth").codes.get_mut(code) {
            g.issued.push(access.to_string());
        }
    }

    /// Fyle-style (JSON) authorization-code exchange for a code from the
    /// authorize endpoint: `Some(refresh_token)` on success.
    pub(crate) fn fyle_code_exchange(
        &self,
        code: &str,
        client_id: &str,
    ) -> Option<(String, String)> {
        self.redeem_code(code, client_id, None, None).ok()?;
        let pair = self.issue_pair(client_id, false);
        self.remember_issued(code, &pair.0);
        Some(pair)
    }

    /// Fyle-style refresh with a refresh token issued by a code exchange.
    pub(crate) fn fyle_refresh(&self, token: &str, client_id: &str) -> Option<String> {
        let ok = self
            .oauth
            .lock()
            .expect("oauth")
            .refresh
            .get(token)
            .is_some_and(|g| g.client_id == client_id && g.expires > Instant::now());
        ok.then(|| self.issue_access())
    }

    fn client_auth(
        &self,
        basic: Option<Result<(String, String), ()>>,
        fields: &HashMap<String, String>,
    ) -> Result<(Client, String), Box<Response<Body>>> {
        let invalid_client = |desc: &str, basic_used: bool| {
            let mut r = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", desc);
            if basic_used {
                r.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"simulator\""),
                );
            }
            Box::new(r)
        };
        let c = &self.credentials;
        match basic {
            Some(Err(())) => Err(invalid_client("malformed Basic credentials", true)),
            Some(Ok((id, secret))) => {
                if fields.contains_key("client_secret") {
                    return Err(Box::new(oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "use one client authentication method, not Basic and client_secret together",
                    )));
                }
                if id == c.client_id && secret == c.client_secret {
                    Ok((Client::Confidential, id))
                } else {
                    Err(invalid_client("client authentication failed", true))
                }
            }
            None => {
                let id = fields
                    .get("client_id")
                    .map(String::as_str)
                    .unwrap_or_default();
                match fields.get("client_secret") {
                    Some(s) if id == c.client_id && *s == c.client_secret => {
                        Ok((Client::Confidential, id.to_string()))
                    }
                    None if id == SIM_PUBLIC_CLIENT_ID => Ok((Client::Public, id.to_string())),
                    _ => Err(invalid_client("client authentication failed", false)),
                }
            }
        }
    }

    /// `POST /oauth/token` with a form body: the standard OAuth 2.0 style.
    pub(crate) async fn standard_token(&self, req: Request<Incoming>) -> Response<Body> {
        let basic = basic_credentials(&req);
        let Some(pairs) = read_form(req).await else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the form body is unreadable",
            );
        };
        let fields: HashMap<String, String> = pairs.into_iter().collect();
        let (client, client_id) = match self.client_auth(basic, &fields) {
            Ok(c) => c,
            Err(r) => return *r,
        };
        let get = |k: &str| fields.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let grant = get("grant_type").unwrap_or_default();
        let ttl = self.token_ttl.as_secs();
        let pair_body = |access: &str, refresh: &str| {
            json_value(
                StatusCode::OK,
                &json!({
                    "access_token": access,
                    "token_type": "bearer",
                    "expires_in": ttl,
                    "refresh_token": refresh,
                    "refresh_token_expires_in": REFRESH_TOKEN_TTL.as_secs(),
                    "scope": get("scope").unwrap_or("ReadAccounts"),
                }),
            )
        };
        match grant {
            "authorization_code" => {
                let Some(code) = get("code") else {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "code is required",
                    );
                };
                let Some(redirect_uri) = get("redirect_uri") else {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "redirect_uri is required",
                    );
                };
                if let Err(d) =
                    self.redeem_code(code, &client_id, Some(redirect_uri), get("code_verifier"))
                {
                    return invalid_grant(&d);
                }
                let (a, r) = self.issue_pair(&client_id, true);
                self.remember_issued(code, &a);
                pair_body(&a, &r)
            }
            "refresh_token" => {
                let Some(rt) = get("refresh_token") else {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "refresh_token is required",
                    );
                };
                let old = {
                    let mut book = self.oauth.lock().expect("oauth");
                    match book.refresh.get(rt) {
                        Some(g) if g.client_id != client_id => {
                            return invalid_grant("refresh token was issued to another client");
                        }
                        Some(g) if g.expires <= Instant::now() => {
                            return invalid_grant("refresh token has expired");
                        }
                        Some(g) if !g.rotating => None,
                        Some(_) => book.refresh.remove(rt),
                        None => {
                            return invalid_grant("refresh token is invalid, expired or revoked");
                        }
                    }
                };
                match old {
                    // Rotation: the old refresh token and its access token die now.
                    Some(g) => {
                        self.tokens.lock().expect("tokens").revoke(&g.access);
                        let (a, r) = self.issue_pair(&client_id, true);
                        pair_body(&a, &r)
                    }
                    None => json_value(
                        StatusCode::OK,
                        &json!({"access_token": self.issue_access(), "token_type": "bearer", "expires_in": ttl}),
                    ),
                }
            }
            crate::auth::oauth2::JWT_BEARER => {
                if client != Client::Confidential {
                    return oauth_error(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized_client",
                        "the JWT grant needs a confidential client",
                    );
                }
                let Some(assertion) = get("assertion") else {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "assertion is required",
                    );
                };
                let verdict = match self.oauth.lock().expect("oauth").jwts.get(assertion) {
                    None => Err("assertion is not a JWT credential issued for this app"),
                    Some(j) if j.revoked => Err("JWT credential has been revoked"),
                    Some(j) if j.exp <= chrono::Utc::now().timestamp() => {
                        Err("JWT assertion has expired")
                    }
                    Some(_) => Ok(()),
                };
                if let Err(d) = verdict {
                    return invalid_grant(d);
                }
                let (a, r) = self.issue_pair(&client_id, true);
                pair_body(&a, &r)
            }
            "password" => {
                if client != Client::Confidential {
                    return oauth_error(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized_client",
                        "the password grant needs a confidential client",
                    );
                }
                if get("username") != Some(SIM_USERNAME) || get("password") != Some(SIM_PASSWORD) {
                    return invalid_grant("invalid resource owner credentials");
                }
                let (a, r) = self.issue_pair(&client_id, true);
                pair_body(&a, &r)
            }
            "client_credentials" => {
                if client != Client::Confidential {
                    return oauth_error(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized_client",
                        "client_credentials needs a confidential client",
                    );
                }
                json_value(
                    StatusCode::OK,
                    &json!({"access_token": self.issue_access(), "token_type": "bearer", "expires_in": ttl}),
                )
            }
            "" => oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            ),
            other => oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("grant_type {other} is not supported"),
            ),
        }
    }

    /// `POST /oauth/revoke` (RFC 7009): 200 whether or not the token was known.
    pub(crate) async fn revoke(&self, req: Request<Incoming>) -> Response<Body> {
        let basic = basic_credentials(&req);
        let Some(pairs) = read_form(req).await else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the form body is unreadable",
            );
        };
        let fields: HashMap<String, String> = pairs.into_iter().collect();
        if let Err(r) = self.client_auth(basic, &fields) {
            return *r;
        }
        let Some(token) = fields.get("token") else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "token is required",
            );
        };
        let removed = self.oauth.lock().expect("oauth").refresh.remove(token);
        let mut tokens = self.tokens.lock().expect("tokens");
        match removed {
            Some(g) => tokens.revoke(&g.access),
            None => tokens.revoke(token),
        }
        json_value(StatusCode::OK, &json!({}))
    }
}
