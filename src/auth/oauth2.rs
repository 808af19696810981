//! Token-endpoint requests for both dialects: Fyle (JSON body, client
//! credentials in the body) and standard OAuth 2.0 (RFC 6749 form body,
//! HTTP Basic or body client authentication), for every grant we support.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use url::Url;

use super::vault::{ClientAuth, Connection, Profile};
use crate::http::{HttpClient, HttpError, Request};

/// The JWT bearer grant type (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// One token request.
pub enum Grant<'a> {
    /// Exchange an authorization code (with the PKCE verifier, if one was used).
    AuthorizationCode {
        /// The code from the redirect.
        code: &'a SecretString,
        /// The redirect URI used in the authorization request.
        redirect_uri: &'a str,
        /// PKCE code verifier.
        verifier: Option<&'a SecretString>,
    },
    /// Refresh.
    RefreshToken(&'a SecretString),
    /// JWT bearer assertion.
    JwtBearer(&'a SecretString),
    /// Resource-owner password (deprecated).
    Password {
        /// User name.
        username: &'a str,
        /// Password.
        password: &'a SecretString,
    },
    /// Client credentials.
    ClientCredentials,
}

impl Grant<'_> {
    /// The `grant_type` value.
    pub fn grant_type(&self) -> &'static str {
        match self {
            Grant::AuthorizationCode { .. } => "authorization_code",
            Grant::RefreshToken(_) => "refresh_token",
            Grant::JwtBearer(_) => JWT_BEARER,
            Grant::Password { .. } => "password",
            Grant::ClientCredentials => "client_credentials",
        }
    }
}

/// What the token endpoint granted.
pub struct Tokens {
    /// Access token.
    pub access_token: SecretString,
    /// Refresh token, when issued (a rotated one replaces the old).
    pub refresh_token: Option<SecretString>,
    /// Access-token lifetime.
    pub expires_in: Option<Duration>,
    /// Refresh-token lifetime.
    pub refresh_expires_in: Option<Duration>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("access_token", &"[REDACTED]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Why a token request failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The grant itself was refused (`invalid_grant`, or 401 from the token
    /// endpoint): a person must authorise again; retrying cannot help.
    #[error("{0}")]
    GrantRefused(String),
    /// The request may have reached the token endpoint but its answer was
    /// lost (reset, timeout, cut-off body, 5xx). It was not repeated: a
    /// rotating refresh token or a code may already be spent.
    #[error("{0}")]
    Lost(String),
    /// Any other failure (network, 5xx after retries, bad request, bad answer).
    #[error("{0}")]
    Other(String),
}

/// Sends one token request for `conn` and parses the answer.
pub async fn request_token(
    http: &HttpClient,
    conn: &Connection,
    grant: &Grant<'_>,
) -> Result<Tokens, TokenError> {
    let url = Url::parse(&conn.token_url).map_err(|e| {
        TokenError::Other(format!("token_url `{}` is not a URL: {e}", conn.token_url))
    })?;
    let mut req = build_request(url, conn, grant);
    // Sending a spent code or rotated refresh token again is refused (and
    // providers with reuse detection revoke the whole grant): repeat only
    // what certainly never arrived. Fyle's refresh tokens do not rotate.
    req.retry_unsent_only = match grant {
        Grant::AuthorizationCode { .. } => true,
        Grant::RefreshToken(_) => conn.profile == Profile::Oauth2,
        _ => false,
    };
    let resp = http.execute(&req).await.map_err(classify)?;
    parse_tokens(&resp.json, &conn.token_url)
}

fn build_request(url: Url, conn: &Connection, grant: &Grant<'_>) -> Request {
    let mut fields: Vec<(String, String)> = vec![("grant_type".into(), grant.grant_type().into())];
    let mut put = |k: &str, v: &str| fields.push((k.to_string(), v.to_string()));
    match grant {
        Grant::AuthorizationCode {
            code,
            redirect_uri,
            verifier,
        } => {
            put("code", code.expose_secret());
            // Fyle's token endpoint takes no redirect_uri or verifier.
            if conn.profile == Profile::Oauth2 {
                put("redirect_uri", redirect_uri);
                if let Some(v) = verifier {
                    put("code_verifier", v.expose_secret());
                }
            }
        }
        Grant::RefreshToken(t) => put("refresh_token", t.expose_secret()),
        Grant::JwtBearer(a) => put("assertion", a.expose_secret()),
        Grant::Password { username, password } => {
            put("username", username);
            put("password", password.expose_secret());
        }
        Grant::ClientCredentials => {}
    }
    if let Some(scope) = conn.scope.as_deref().filter(|s| !s.is_empty())
        && !matches!(
            grant,
            Grant::RefreshToken(_) | Grant::AuthorizationCode { .. }
        )
    {
        put("scope", scope);
    }
    match conn.profile {
        Profile::Fyle => {
            let mut body = Map::new();
            for (k, v) in fields {
                body.insert(k, Value::String(v));
            }
            body.insert("client_id".into(), Value::String(conn.client_id.clone()));
            body.insert(
                "client_secret".into(),
                Value::String(
                    conn.client_secret
                        .as_ref()
                        .map(|s| s.expose_secret().to_string())
                        .unwrap_or_default(),
                ),
            );
            Request::post_json(url, Value::Object(body))
        }
        Profile::Oauth2 => match (conn.client_auth, &conn.client_secret) {
            (ClientAuth::Basic, Some(secret)) => Request::post_form(url, fields)
                .with_basic_auth(conn.client_id.clone(), secret.clone()),
            (_, secret) => {
                fields.push(("client_id".into(), conn.client_id.clone()));
                if let Some(s) = secret {
                    fields.push(("client_secret".into(), s.expose_secret().to_string()));
                }
                Request::post_form(url, fields)
            }
        },
    }
}

/// Revokes `token` at the connection's revocation endpoint (RFC 7009; standard profile).
pub async fn revoke_token(
    http: &HttpClient,
    conn: &Connection,
    token: &SecretString,
    hint: &str,
) -> Result<(), TokenError> {
    let Some(revoke) = conn.revoke_url.as_deref() else {
        return Err(TokenError::Other("the connection has no revoke_url".into()));
    };
    let url = Url::parse(revoke)
        .map_err(|e| TokenError::Other(format!("revoke_url `{revoke}` is not a URL: {e}")))?;
    let mut fields = vec![
        ("token".to_string(), token.expose_secret().to_string()),
        ("token_type_hint".to_string(), hint.to_string()),
    ];
    let req = match (conn.client_auth, &conn.client_secret) {
        (ClientAuth::Basic, Some(secret)) => {
            Request::post_form(url, fields).with_basic_auth(conn.client_id.clone(), secret.clone())
        }
        (_, secret) => {
            fields.push(("client_id".into(), conn.client_id.clone()));
            if let Some(s) = secret {
                fields.push(("client_secret".into(), s.expose_secret().to_string()));
            }
            Request::post_form(url, fields)
        }
    };
    http.execute(&req).await.map(|_| ()).map_err(classify)
}

fn classify(e: HttpError) -> TokenError {
    match &e {
        HttpError::Unauthorized { message, .. } => TokenError::GrantRefused(message.clone()),
        HttpError::Rejected {
            error_kind: Some(kind),
            message,
            ..
        } if kind == "invalid_grant" => TokenError::GrantRefused(message.clone()),
        HttpError::OutcomeUnknown {
            method,
            url,
            reason,
        } => TokenError::Lost(format!("{method} {url}: {reason}")),
        _ => TokenError::Other(e.to_string()),
    }
}

fn parse_tokens(json: &Value, token_url: &str) -> Result<Tokens, TokenError> {
    let text = |k: &str| {
        json.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| SecretString::from(s.to_string()))
    };
    let secs = |k: &str| {
        json.get(k)
            .and_then(|v| v.to_string().trim_matches('"').parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
    };
    let access_token = text("access_token").ok_or_else(|| {
        TokenError::Other(format!(
            "the token endpoint {token_url} answered without an access_token"
        ))
    })?;
    let expires_in = secs("expires_in").or_else(|| {
        super::jwt_expiry(access_token.expose_secret())
            .map(|exp| Duration::from_secs((exp - chrono::Utc::now().timestamp()).max(0) as u64))
    });
    Ok(Tokens {
        access_token,
        refresh_token: text("refresh_token"),
        expires_in,
        refresh_expires_in: secs("refresh_token_expires_in"),
    })
}

/// A fresh PKCE pair: (verifier, S256 challenge).
pub fn pkce_pair() -> (SecretString, String) {
    let bytes: [u8; 32] = rand::random();
    let verifier = URL_SAFE_NO_PAD.encode(bytes);
    let challenge = pkce_challenge(&verifier);
    (SecretString::from(verifier), challenge)
}

/// `BASE64URL(SHA256(verifier))` (RFC 7636 S256).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_unpadded_base64url_of_sha256() {
        // Expected value computed independently with Python's hashlib/base64.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mJ92K3QWA2A3iJKzLvWoRhq4oaAOy4"),
            "XqWtoR2m2YnmvmzRWgnbp_OPX9JwwsWi4xozk3571-k"
        );
        let (v, c) = pkce_pair();
        assert_eq!(pkce_challenge(v.expose_secret()), c);
        assert!(
            v.expose_secret().len() >= 43,
            "RFC 7636: 43..128 characters"
        );
    }

    #[test]
    fn standard_requests_are_forms_with_basic_auth_and_no_secret_in_debug() {
        let mut c = crate::auth::vault::Connection::new(
            Profile::Oauth2,
            super::super::vault::GrantKind::JwtBearer,
            "http://x",
            "cid",
        );
        c.client_secret = Some(SecretString::from("csecret".to_string()));
        let a = SecretString::from("jwt-value".to_string());
        let req = build_request(
            Url::parse("http://x/oauth/token").unwrap(),
            &c,
            &Grant::JwtBearer(&a),
        );
        let form = req.form.as_ref().unwrap();
        assert!(form.contains(&("grant_type".into(), JWT_BEARER.into())));
        assert!(form.contains(&("assertion".into(), "jwt-value".into())));
        assert!(!form.iter().any(|(k, _)| k == "client_secret"));
        assert_eq!(req.basic.as_ref().unwrap().0, "cid");
        let dbg = format!("{req:?}");
        assert!(
            !dbg.contains("jwt-value") && !dbg.contains("csecret"),
            "{dbg}"
        );
    }
}
