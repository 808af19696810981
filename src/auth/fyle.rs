//! Fyle's refresh-token grant (JSON body to `/oauth/token`) and cluster
//! discovery (`/oauth/cluster`), cached and refreshed ahead of expiry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;
use tracing::{debug, info};
use url::Url;

use super::tokens::VaultAuth;
use super::types::{AuthError, DEFAULT_ACCOUNTS_URL};
use super::vault::Vault;
use crate::common::{Problem, SecretRef};
use crate::http::{HttpClient, HttpError, Request};

/// Tokens whose lifetime we cannot read are assumed to live this long (Fyle: about 1 hour).
const ASSUMED_LIFETIME: Duration = Duration::from_secs(55 * 60);

/// `[connection]`: how to reach and authenticate to a Fyle organisation —
/// either a stored vault connection (`vault = "acme"`) or an internal app's
/// secrets from the environment or files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FyleConnectionConfig {
    /// Accounts (auth) server; change it for a sandbox or the simulator.
    #[serde(default = "default_accounts_url")]
    pub accounts_url: String,
    /// Name of a connection in the credential vault (`expense-sync auth list`).
    #[serde(default)]
    pub vault: Option<String>,
    /// The app's client id (not secret: may be inline).
    #[serde(default)]
    pub client_id: Option<SecretRef>,
    /// The app's client secret.
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    /// The refresh token of the internal app (or from the OAuth flow).
    #[serde(default)]
    pub refresh_token: Option<SecretRef>,
}

impl Default for FyleConnectionConfig {
    fn default() -> Self {
        Self {
            accounts_url: default_accounts_url(),
            vault: None,
            client_id: None,
            client_secret: None,
            refresh_token: None,
        }
    }
}

fn default_accounts_url() -> String {
    DEFAULT_ACCOUNTS_URL.to_string()
}

impl FyleConnectionConfig {
    /// Checks what can be checked without reading secrets.
    pub fn validate(&self, prefix: &str) -> Vec<Problem> {
        use crate::common::connection::{check_http_url, check_vault_or_inline};
        let mut p: Vec<Problem> = check_http_url(
            format!("{prefix}.accounts_url"),
            &self.accounts_url,
            DEFAULT_ACCOUNTS_URL,
        )
        .into_iter()
        .collect();
        p.extend(check_vault_or_inline(
            prefix,
            self.vault.as_deref(),
            &[
                ("client_id", self.client_id.is_some()),
                ("client_secret", self.client_secret.is_some()),
                ("refresh_token", self.refresh_token.is_some()),
            ],
            &["client_id", "client_secret", "refresh_token"],
            "",
        ));
        p
    }

    /// Reads the referenced secrets (internal-app form only).
    pub fn resolve(&self, prefix: &str) -> Result<FyleCredentials, Vec<Problem>> {
        let (Some(client_id), Some(client_secret), Some(refresh_token)) =
            (&self.client_id, &self.client_secret, &self.refresh_token)
        else {
            let mut problems = self.validate(prefix);
            if problems.is_empty() {
                problems.push(Problem::new(
                    format!("{prefix}.vault"),
                    "names a vault connection; it has no secrets to resolve here",
                ));
            }
            return Err(problems);
        };
        let id = client_id.resolve(&format!("{prefix}.client_id"), true);
        let secret = client_secret.resolve(&format!("{prefix}.client_secret"), false);
        let refresh = refresh_token.resolve(&format!("{prefix}.refresh_token"), false);
        let url = Url::parse(&self.accounts_url);
        match (id, secret, refresh, url) {
            (Ok(id), Ok(client_secret), Ok(refresh_token), Ok(accounts_url)) => {
                Ok(FyleCredentials {
                    accounts_url,
                    client_id: id.expose_secret().to_string(),
                    client_secret,
                    refresh_token,
                })
            }
            (id, secret, refresh, url) => {
                let mut problems: Vec<Problem> = [id.err(), secret.err(), refresh.err()]
                    .into_iter()
                    .flatten()
                    .collect();
                if url.is_err() {
                    problems.extend(self.validate(prefix));
                }
                Err(problems)
            }
        }
    }
}

/// Resolved credentials of an internal (or already authorised OAuth) Fyle app.
#[derive(Clone)]
pub struct FyleCredentials {
    /// Accounts server.
    pub accounts_url: Url,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: SecretString,
    /// Refresh token.
    pub refresh_token: SecretString,
}

impl std::fmt::Debug for FyleCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FyleCredentials")
            .field("accounts_url", &self.accounts_url.as_str())
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .field("refresh_token", &"[REDACTED]")
            .finish()
    }
}

/// A usable access token and the cluster it belongs to.
pub struct Token {
    /// The bearer token.
    pub access: SecretString,
    /// When to stop using it (refresh a little before the server's expiry).
    pub refresh_at: Instant,
    /// Data cluster, e.g. `https://us1.fylehq.com`.
    pub cluster: Url,
    /// Increments on every refresh; lets concurrent callers refresh once, not N times.
    pub generation: u64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("access", &"[REDACTED]")
            .field("cluster", &self.cluster.as_str())
            .field("generation", &self.generation)
            .finish()
    }
}

/// Where a session's access tokens come from.
enum Source {
    /// An internal app's refresh token from the pipeline file's references.
    Static(FyleCredentials),
    /// A vault connection, refreshed (and rotated) through the vault.
    Vault(VaultAuth),
}

/// A cached Fyle session: access token + cluster, refreshed when needed.
pub struct FyleSession {
    http: HttpClient,
    accounts_url: Url,
    client_id: String,
    source: Source,
    current: Mutex<Option<Arc<Token>>>,
    refreshes: AtomicU64,
}

impl std::fmt::Debug for FyleSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("FyleSession");
        d.field("accounts_url", &self.accounts_url.as_str())
            .field("client_id", &self.client_id);
        if let Source::Vault(v) = &self.source {
            d.field("vault_connection", &v.name());
        }
        d.finish_non_exhaustive()
    }
}

impl FyleSession {
    /// A session that will authenticate on first use.
    pub fn new(http: HttpClient, creds: FyleCredentials) -> Self {
        Self {
            http,
            accounts_url: creds.accounts_url.clone(),
            client_id: creds.client_id.clone(),
            source: Source::Static(creds),
            current: Mutex::new(None),
            refreshes: AtomicU64::new(0),
        }
    }

    /// A session for vault connection `name`: tokens are read from and
    /// refreshed into the vault, shared with every other process using it.
    pub fn from_vault(http: HttpClient, vault: Vault, name: &str) -> Result<Self, AuthError> {
        let conn = vault.get(name)?;
        let accounts_url = Url::parse(&conn.accounts_url).map_err(|e| {
            AuthError::Protocol(format!(
                "connection `{name}` has accounts_url `{}`, which is not a URL: {e}",
                conn.accounts_url
            ))
        })?;
        Ok(Self {
            accounts_url,
            client_id: conn.client_id,
            source: Source::Vault(VaultAuth::new(vault, name, http.clone())),
            http,
            current: Mutex::new(None),
            refreshes: AtomicU64::new(0),
        })
    }

    /// The accounts server this session authenticates against.
    pub fn accounts_url(&self) -> &Url {
        &self.accounts_url
    }

    /// The HTTP client every request of this session goes through.
    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// How many token grants this session has made.
    pub fn refresh_count(&self) -> u64 {
        match &self.source {
            Source::Static(_) => self.refreshes.load(Ordering::Relaxed),
            Source::Vault(v) => v.grant_count(),
        }
    }

    /// A token valid for a while yet, refreshing first if it is close to expiry.
    pub async fn token(&self) -> Result<Arc<Token>, AuthError> {
        let mut guard = self.current.lock().await;
        if let Some(t) = guard.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(t.clone());
        }
        let generation = guard.as_ref().map_or(1, |t| t.generation + 1);
        let fresh = Arc::new(self.grant(generation, None).await?);
        *guard = Some(fresh.clone());
        Ok(fresh)
    }

    /// Called after a 401 with `stale`: refreshes once, however many callers saw the 401.
    pub async fn refresh_after_rejection(&self, stale: &Token) -> Result<Arc<Token>, AuthError> {
        let mut guard = self.current.lock().await;
        if let Some(t) = guard.as_ref().filter(|t| t.generation > stale.generation) {
            return Ok(t.clone());
        }
        info!("access token was rejected; refreshing it and resolving the cluster again");
        let fresh = Arc::new(self.grant(stale.generation + 1, Some(stale)).await?);
        *guard = Some(fresh.clone());
        Ok(fresh)
    }

    async fn grant(&self, generation: u64, stale: Option<&Token>) -> Result<Token, AuthError> {
        let c = match &self.source {
            Source::Static(c) => c,
            Source::Vault(v) => {
                let mut t = v.access_token(stale.map(|t| &t.access), false).await?;
                // A stored token may have been revoked by another process's
                // rotation since it was saved: refresh once past it.
                let cluster = match self.discover_cluster(&t.access).await {
                    Err(AuthError::Refused { status: 401, .. }) => {
                        info!("stored access token was rejected; refreshing it");
                        t = v.access_token(Some(&t.access), false).await?;
                        self.discover_cluster(&t.access).await?
                    }
                    other => other?,
                };
                let left = (t.expires_at - chrono::Utc::now())
                    .to_std()
                    .unwrap_or_default();
                debug!(cluster = %cluster, lifetime_s = left.as_secs(), generation, "access token from the vault");
                return Ok(Token {
                    access: t.access,
                    refresh_at: Instant::now() + left.saturating_sub(t.margin),
                    cluster,
                    generation,
                });
            }
        };
        let token_url = c.accounts_url.join("oauth/token").map_err(|e| {
            AuthError::Protocol(format!("bad accounts_url {}: {e}", c.accounts_url))
        })?;
        let body = json!({
            "grant_type": "refresh_token",
            "refresh_token": c.refresh_token.expose_secret(),
            "client_id": c.client_id,
            "client_secret": c.client_secret.expose_secret(),
        });
        let issued = Instant::now();
        let resp = self
            .http
            .execute(&Request::post_json(token_url, body))
            .await
            .map_err(|e| self.classify(e, "requesting an access token"))?;
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        let access = resp
            .json
            .get("access_token")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                AuthError::Protocol(format!(
                    "the accounts server {} answered the token request without an access_token",
                    c.accounts_url
                ))
            })?
            .to_string();
        let lifetime = token_lifetime(&access, &resp.json);
        // Refresh early: a tenth of the lifetime, at most a minute, so a long
        // page never starts with a token about to lapse.
        let margin = (lifetime / 10).min(Duration::from_secs(60));
        let access = SecretString::from(access);
        let cluster = self.discover_cluster(&access).await?;
        debug!(cluster = %cluster, lifetime_s = lifetime.as_secs(), generation, "access token granted");
        Ok(Token {
            access,
            refresh_at: issued + lifetime.saturating_sub(margin),
            cluster,
            generation,
        })
    }

    async fn discover_cluster(&self, access: &SecretString) -> Result<Url, AuthError> {
        let url = self
            .accounts_url
            .join("oauth/cluster")
            .map_err(|e| AuthError::Protocol(e.to_string()))?;
        let resp = self
            .http
            .execute(&Request::post_json(url, json!({})).with_bearer(access.clone()))
            .await
            .map_err(|e| self.classify(e, "resolving the cluster"))?;
        let domain = resp
            .json
            .get("cluster_domain")
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                AuthError::Protocol("the cluster endpoint answered without cluster_domain".into())
            })?;
        let mut url = Url::parse(domain).map_err(|e| {
            AuthError::Protocol(format!("cluster_domain `{domain}` is not a URL: {e}"))
        })?;
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(url)
    }

    fn classify(&self, err: HttpError, what: &'static str) -> AuthError {
        match err {
            HttpError::Unauthorized {
                status, message, ..
            }
            | HttpError::Rejected {
                status, message, ..
            } if matches!(status, 400 | 401 | 403) => AuthError::Refused {
                accounts_url: self.accounts_url.to_string(),
                client_id: self.client_id.clone(),
                status,
                message,
            },
            other => AuthError::Http {
                what,
                source: other,
            },
        }
    }
}

fn token_lifetime(access: &str, body: &serde_json::Value) -> Duration {
    if let Some(secs) = body
        .get("expires_in")
        .and_then(|v| v.to_string().parse::<f64>().ok())
    {
        return Duration::from_secs_f64(secs.max(0.0));
    }
    if let Some(exp) = super::jwt_expiry(access) {
        let left = exp - chrono::Utc::now().timestamp();
        return Duration::from_secs(left.max(0) as u64);
    }
    ASSUMED_LIFETIME
}
