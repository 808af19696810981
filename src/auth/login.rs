//! `auth login`: the authorization-code flow with a loopback redirect
//! (RFC 8252) or a pasted redirect URL, `state` checked, PKCE S256 for the
//! standard profile; the direct grants (JWT, password, client credentials)
//! for connections that need no browser. Tokens land in the vault.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::info;
use url::Url;

use super::oauth2::{Grant, TokenError, pkce_pair, request_token};
use super::tokens::{apply_tokens, direct_grant, reconnect};
use super::types::AuthError;
use super::vault::{Connection, GrantKind, Profile, Vault};
use crate::http::HttpClient;

/// An authorization request waiting for its redirect.
pub struct PendingLogin {
    /// Open this in a browser.
    pub authorize_url: Url,
    /// The redirect URI sent (with the real port when the configured one was 0).
    pub redirect_uri: String,
    state: SecretString,
    verifier: Option<SecretString>,
    listener: Option<TcpListener>,
    connection: String,
}

impl std::fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLogin")
            .field("redirect_uri", &self.redirect_uri)
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

fn random_token() -> String {
    use base64::Engine;
    let bytes: [u8; 24] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Builds the authorization URL for `conn`; with `listen`, binds the
/// loopback redirect URI so [`PendingLogin::wait`] can receive the redirect.
pub async fn begin(name: &str, conn: &Connection, listen: bool) -> Result<PendingLogin, AuthError> {
    let authorize = conn
        .authorize_url
        .as_deref()
        .ok_or_else(|| AuthError::Protocol(format!("connection `{name}` has no authorize_url")))?;
    let mut authorize_url = Url::parse(authorize).map_err(|e| {
        AuthError::Protocol(format!(
            "authorize_url `{authorize}` of `{name}` is not a URL: {e}"
        ))
    })?;
    let configured = conn
        .redirect_uri
        .as_deref()
        .unwrap_or("http://127.0.0.1:8765/callback");
    let mut redirect = Url::parse(configured).map_err(|e| {
        AuthError::Protocol(format!(
            "redirect_uri `{configured}` of `{name}` is not a URL: {e}"
        ))
    })?;
    let mut listener = None;
    if listen {
        let host = redirect.host_str().unwrap_or("127.0.0.1").to_string();
        if !matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]") {
            return Err(AuthError::Protocol(format!(
                "redirect_uri `{configured}` is not a loopback address, so this machine cannot receive the redirect; \
                 use --headless and paste the redirect URL, or set a http://127.0.0.1:PORT/… redirect URI"
            )));
        }
        let port = redirect.port().unwrap_or(80);
        let bind_host = if host == "localhost" {
            "127.0.0.1"
        } else {
            host.trim_matches(['[', ']'])
        };
        let l = TcpListener::bind((bind_host, port)).await.map_err(|e| {
            AuthError::Protocol(format!(
                "cannot listen on {bind_host}:{port} for the redirect ({e}); free the port or change the connection's redirect_uri"
            ))
        })?;
        let actual = l
            .local_addr()
            .map_err(|e| AuthError::Protocol(e.to_string()))?
            .port();
        let _ = redirect.set_port(Some(actual));
        listener = Some(l);
    }
    let state = random_token();
    let verifier = {
        let mut q = authorize_url.query_pairs_mut();
        if conn.profile == Profile::Oauth2 {
            q.append_pair("response_type", "code");
        }
        q.append_pair("client_id", &conn.client_id);
        q.append_pair("redirect_uri", redirect.as_str());
        q.append_pair("state", &state);
        if let Some(scope) = conn.scope.as_deref().filter(|s| !s.is_empty()) {
            q.append_pair("scope", scope);
        }
        if conn.pkce && conn.profile == Profile::Oauth2 {
            let (verifier, challenge) = pkce_pair();
            q.append_pair("code_challenge", &challenge);
            q.append_pair("code_challenge_method", "S256");
            Some(verifier)
        } else {
            None
        }
    };
    Ok(PendingLogin {
        authorize_url,
        redirect_uri: redirect.to_string(),
        state: SecretString::from(state),
        verifier,
        listener,
        connection: name.to_string(),
    })
}

impl PendingLogin {
    /// Waits (up to `timeout`) for the browser's redirect on the loopback
    /// listener and returns the authorization code once `state` matches.
    pub async fn wait(&mut self, timeout: Duration) -> Result<SecretString, AuthError> {
        let listener = self.listener.take().ok_or_else(|| {
            AuthError::Protocol("this login was started without a loopback listener".into())
        })?;
        let expected_path = Url::parse(&self.redirect_uri)
            .map(|u| u.path().to_string())
            .unwrap_or_else(|_| "/".into());
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (mut stream, _) = tokio::time::timeout_at(deadline, listener.accept())
                .await
                .map_err(|_| {
                    AuthError::Protocol(format!(
                        "no redirect arrived within {}s; run `expense-sync auth login {}` again (or use --headless)",
                        timeout.as_secs(),
                        self.connection
                    ))
                })?
                .map_err(|e| AuthError::Protocol(format!("loopback listener failed: {e}")))?;
            let target = match read_request_target(&mut stream).await {
                Some(t) => t,
                None => continue,
            };
            let url = Url::parse("http://127.0.0.1")
                .and_then(|b| b.join(&target))
                .ok();
            let Some(url) = url.filter(|u| u.path() == expected_path) else {
                // Browsers also ask for /favicon.ico and the like.
                respond(&mut stream, "404 Not Found", "not found").await;
                continue;
            };
            let result = self.code_from_url(&url);
            let (status, text) = match &result {
                Ok(_) => (
                    "200 OK",
                    "expense-sync: authorised. You can close this window and return to the terminal.",
                ),
                Err(_) => (
                    "400 Bad Request",
                    "expense-sync: this authorisation was refused; see the terminal for why.",
                ),
            };
            respond(&mut stream, status, text).await;
            return result;
        }
    }

    /// Takes what the user pasted: the whole redirect URL (state is checked)
    /// or just the code (state cannot be checked then).
    pub fn code_from_pasted(&self, pasted: &str) -> Result<SecretString, AuthError> {
        let text = pasted.trim();
        if text.is_empty() {
            return Err(AuthError::Protocol(
                "nothing was pasted; paste the full URL the browser was sent to after authorising"
                    .into(),
            ));
        }
        match Url::parse(text) {
            Ok(url) => self.code_from_url(&url),
            Err(_) => Ok(SecretString::from(text.to_string())),
        }
    }

    fn code_from_url(&self, url: &Url) -> Result<SecretString, AuthError> {
        let get = |k: &str| {
            url.query_pairs()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.into_owned())
        };
        if let Some(err) = get("error") {
            let desc = get("error_description").unwrap_or_default();
            return Err(AuthError::Protocol(format!(
                "the provider refused the authorisation: {err} {desc}"
            )));
        }
        match get("state") {
            Some(s) if s == self.state.expose_secret() => {}
            _ => {
                return Err(AuthError::Protocol(
                    "state mismatch: the redirect does not belong to the login this command started \
                     (possible cross-site request forgery, or an old browser tab); run `auth login` again"
                        .into(),
                ));
            }
        }
        get("code")
            .filter(|c| !c.is_empty())
            .map(SecretString::from)
            .ok_or_else(|| AuthError::Protocol("the redirect carries no `code`".into()))
    }

    /// Exchanges `code` at the token endpoint and stores the tokens in the vault.
    pub async fn complete(
        self,
        vault: &Vault,
        http: &HttpClient,
        code: &SecretString,
    ) -> Result<(), AuthError> {
        let name = self.connection.clone();
        let conn = vault.get(&name)?;
        let grant = Grant::AuthorizationCode {
            code,
            redirect_uri: &self.redirect_uri,
            verifier: self.verifier.as_ref(),
        };
        let tokens = request_token(http, &conn, &grant)
            .await
            .map_err(|e| login_error(&name, e))?;
        if tokens.refresh_token.is_none() {
            return Err(AuthError::Protocol(format!(
                "the token endpoint of `{name}` granted no refresh token, so the connection could not be kept alive; \
                 check that the app has refresh tokens enabled"
            )));
        }
        store(vault, &name, tokens).await
    }
}

fn login_error(name: &str, e: TokenError) -> AuthError {
    match e {
        TokenError::GrantRefused(reason) => AuthError::Protocol(format!(
            "the token endpoint refused the login of `{name}`: {reason}"
        )),
        TokenError::Lost(m) => AuthError::Protocol(format!(
            "the token endpoint may have redeemed the login of `{name}` but its answer was lost ({m}); \
             it was not repeated because codes and rotated refresh tokens work only once: \
             run `expense-sync auth login {name}` again"
        )),
        TokenError::Other(m) => AuthError::Protocol(m),
    }
}

async fn store(vault: &Vault, name: &str, tokens: super::oauth2::Tokens) -> Result<(), AuthError> {
    let lock = vault.lock_async().await?;
    let mut all = vault.load()?;
    let conn = all.get_mut(name).ok_or_else(|| vault.unknown(name))?;
    apply_tokens(conn, tokens);
    vault.save(&lock, &all)?;
    info!(connection = %name, "connection authorised; tokens saved to the vault");
    Ok(())
}

/// Logs in a connection whose grant needs no browser (JWT, password, client
/// credentials, or a pasted internal-app refresh token) and stores the tokens.
pub async fn login_direct(vault: &Vault, http: &HttpClient, name: &str) -> Result<(), AuthError> {
    let conn = vault.get(name)?;
    let tokens = match conn.grant {
        GrantKind::RefreshToken => {
            let rt = conn.refresh_token.clone().ok_or_else(|| {
                reconnect(name, "no refresh token is stored; add it again with --refresh-token-env")
            })?;
            request_token(http, &conn, &Grant::RefreshToken(&rt))
                .await
                .map_err(|e| match e {
                    TokenError::GrantRefused(reason) => TokenError::GrantRefused(format!(
                        "{reason}; copy the app's current refresh token from Fyle (Settings → Integrations → Custom Apps) \
                         and store it with `expense-sync auth add {name} --replace --grant refresh-token --refresh-token-env VAR …`"
                    )),
                    other => other,
                })
        }
        GrantKind::AuthorizationCode => {
            return Err(AuthError::Protocol(format!(
                "connection `{name}` uses the authorization-code grant; it needs a browser (begin/wait or --headless)"
            )));
        }
        _ => direct_grant(http, &conn, name).await,
    }
    .map_err(|e| login_error(name, e))?;
    store(vault, name, tokens).await
}

/// Reads an HTTP request head and returns its request target.
async fn read_request_target(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 || buf.len() > 16 * 1024 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?, parts.next()?);
    (method == "GET").then(|| target.to_string())
}

async fn respond(stream: &mut tokio::net::TcpStream, status: &str, text: &str) {
    let body =
        format!("<!doctype html><meta charset=utf-8><title>expense-sync</title><p>{text}</p>\n");
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}
