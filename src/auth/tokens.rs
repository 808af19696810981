//! Access tokens for vault connections: reuse a stored token while it is
//! fresh, otherwise refresh it — one refresh in flight per connection (a
//! process-wide mutex, plus the vault's file lock across processes), with a
//! rotated refresh token saved to the vault *before* the new access token is
//! handed out.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use tracing::{debug, info, warn};

use super::oauth2::{Grant, TokenError, Tokens, request_token};
use super::types::AuthError;
use super::vault::{Connection, ConnectionStatus, GrantKind, Vault};
use crate::http::HttpClient;

/// How a lost refresh answer is recorded in `last_error` (and recognised later).
const LOST: &str = "the token endpoint may have rotated the refresh token but its answer was lost";

/// Access tokens whose lifetime the provider did not state are trusted this long.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(55 * 60);

/// An access token from the vault and when it stops being usable.
pub struct StoredToken {
    /// The bearer token.
    pub access: SecretString,
    /// When it expires (server's word, or assumed).
    pub expires_at: DateTime<Utc>,
    /// How long before `expires_at` to refresh.
    pub margin: Duration,
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken")
            .field("access", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Keeps one vault connection's tokens fresh.
pub struct VaultAuth {
    vault: Vault,
    name: String,
    http: HttpClient,
    grants: AtomicU64,
}

impl std::fmt::Debug for VaultAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultAuth")
            .field("vault", &self.vault)
            .field("connection", &self.name)
            .finish()
    }
}

type InflightMap = std::sync::Mutex<HashMap<(PathBuf, String), Arc<tokio::sync::Mutex<()>>>>;

/// One async mutex per (vault, connection) in this process.
fn inflight(vault: &Vault, name: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<InflightMap> = OnceLock::new();
    let key = (
        std::path::absolute(vault.path()).unwrap_or_else(|_| vault.path().to_path_buf()),
        name.to_string(),
    );
    LOCKS
        .get_or_init(Default::default)
        .lock()
        .expect("inflight map")
        .entry(key)
        .or_default()
        .clone()
}

/// The "reconnect needed" error for `name`.
pub fn reconnect(name: &str, reason: impl Into<String>) -> AuthError {
    AuthError::ReconnectNeeded {
        connection: name.to_string(),
        reason: reason.into(),
    }
}

/// Refresh margin: a tenth of the lifetime, at most a minute.
fn margin_for(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(60))
}

impl VaultAuth {
    /// Tokens of connection `name` in `vault`, requested through `http`.
    pub fn new(vault: Vault, name: &str, http: HttpClient) -> Self {
        Self {
            vault,
            name: name.to_string(),
            http,
            grants: AtomicU64::new(0),
        }
    }

    /// The connection name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Token grants made through this object.
    pub fn grant_count(&self) -> u64 {
        self.grants.load(Ordering::Relaxed)
    }

    /// A usable access token. With `rejected`, that token was just refused by
    /// the API: a different, newer stored token is used if another process
    /// already refreshed, otherwise the connection is refreshed. `force`
    /// refreshes regardless (`auth refresh-all`).
    pub async fn access_token(
        &self,
        rejected: Option<&SecretString>,
        force: bool,
    ) -> Result<StoredToken, AuthError> {
        let inflight = inflight(&self.vault, &self.name);
        let _one_at_a_time = inflight.lock().await;
        let lock = self.vault.lock_async().await.map_err(AuthError::Vault)?;
        let mut all = self.vault.load().map_err(AuthError::Vault)?;
        let conn = all
            .get(&self.name)
            .cloned()
            .ok_or_else(|| AuthError::Vault(self.vault.unknown(&self.name)))?;
        if !force && let Some(t) = usable(&conn, rejected) {
            debug!(connection = %self.name, "using the stored access token");
            return Ok(t);
        }
        match conn.status {
            ConnectionStatus::ReconnectNeeded | ConnectionStatus::Revoked => {
                return Err(reconnect(
                    &self.name,
                    format!(
                        "the connection is marked {}{}",
                        conn.status.as_str(),
                        conn.last_error
                            .as_deref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default()
                    ),
                ));
            }
            ConnectionStatus::New | ConnectionStatus::Ok => {}
        }
        let result = self.obtain(&conn).await;
        if let Err(TokenError::Lost(detail)) = result {
            return self.after_lost_answer(&lock, &conn, rejected, detail);
        }
        let entry = all.get_mut(&self.name).expect("present above");
        match result {
            Ok((tokens, sent))
                if self.spends_read_only(sent, &tokens) && !direct_grant_possible(&conn) =>
            {
                // The Secret's refresh token is spent and its successor cannot
                // be stored: later refreshes in this process must not send it.
                let reason = format!(
                    "the token endpoint rotated the refresh token stored in the read-only Kubernetes Secret {}",
                    self.vault.path().display()
                );
                entry.status = ConnectionStatus::ReconnectNeeded;
                entry.last_error = Some(reason);
                entry.access_token = None;
                entry.access_expires_at = None;
                if let Err(e) = self.vault.save(&lock, &all) {
                    warn!(connection = %self.name, error = %e, "could not record the spent refresh token in memory");
                }
                Err(AuthError::RotatedInReadOnlyVault {
                    connection: self.name.clone(),
                    vault: self.vault.path().display().to_string(),
                })
            }
            Ok((tokens, sent)) => {
                if self.spends_read_only(sent, &tokens) {
                    // Its own grant (JWT, client credentials…) still works: carry on.
                    warn!(connection = %self.name, vault = %self.vault.path().display(), "the token endpoint rotated the refresh token stored in the read-only Kubernetes Secret, so that one is spent; later runs fall back to the connection's own grant. Remove refresh_token from the Secret");
                }
                let rotated = tokens.refresh_token.is_some();
                let token = apply_tokens(entry, tokens);
                // Persist first: if the provider rotated the refresh token, the
                // old one is dead and the new one exists only in memory until
                // this write lands.
                self.vault.save(&lock, &all).map_err(|e| {
                    AuthError::Protocol(format!(
                        "connection `{}` was refreshed but the vault could not be saved ({e}); \
                         if the provider rotated the refresh token you will need `expense-sync auth login {}`",
                        self.name, self.name
                    ))
                })?;
                if self.vault.is_read_only() {
                    info!(connection = %self.name, rotated, expires_at = %token.expires_at, "access token obtained (kept in memory: the vault is read-only)");
                } else {
                    info!(connection = %self.name, rotated, expires_at = %token.expires_at, "access token refreshed and saved to the vault");
                }
                Ok(token)
            }
            Err(TokenError::GrantRefused(reason)) => {
                // A refused token right after a lost answer: say why it is spent.
                let reason = match entry.last_error.as_deref() {
                    Some(prev) if prev.contains(LOST) => format!("{reason}; earlier, {prev}"),
                    _ => reason,
                };
                entry.status = ConnectionStatus::ReconnectNeeded;
                entry.last_error = Some(reason.clone());
                entry.access_token = None;
                entry.access_expires_at = None;
                // Recording the status is best effort: the error below is what matters.
                if let Err(e) = self.vault.save(&lock, &all) {
                    warn!(connection = %self.name, error = %e, "could not record reconnect-needed in the vault");
                }
                Err(reconnect(&self.name, reason))
            }
            Err(TokenError::Other(m) | TokenError::Lost(m)) => Err(AuthError::Protocol(format!(
                "refreshing connection `{}` failed: {m}",
                self.name
            ))),
        }
    }

    /// A refresh whose answer was lost: the provider may have rotated the
    /// refresh token, so it is not sent again. Another process (one outside
    /// our lock, e.g. on another host sharing the vault) may have stored newer
    /// tokens meanwhile: use them if so; otherwise record what happened.
    fn after_lost_answer(
        &self,
        lock: &super::vault::VaultLock,
        sent: &Connection,
        rejected: Option<&SecretString>,
        detail: String,
    ) -> Result<StoredToken, AuthError> {
        let mut all = self.vault.load().map_err(AuthError::Vault)?;
        let entry = all
            .get_mut(&self.name)
            .ok_or_else(|| AuthError::Vault(self.vault.unknown(&self.name)))?;
        let same = |a: &Option<SecretString>, b: &Option<SecretString>| {
            a.as_ref().map(ExposeSecret::expose_secret)
                == b.as_ref().map(ExposeSecret::expose_secret)
        };
        if !same(&entry.refresh_token, &sent.refresh_token)
            && let Some(t) = usable(entry, rejected)
        {
            info!(connection = %self.name, "the refresh's answer was lost, but another process stored newer tokens; using them");
            return Ok(t);
        }
        warn!(connection = %self.name, %detail, "{LOST} after the refresh request may have reached the provider");
        entry.last_error = Some(format!(
            "{LOST} at {} ({detail})",
            Utc::now().format("%Y-%m-%d %H:%M:%SZ")
        ));
        if let Err(e) = self.vault.save(lock, &all) {
            warn!(connection = %self.name, error = %e, "could not record the lost refresh answer in the vault");
        }
        Err(AuthError::RefreshLost {
            connection: self.name.clone(),
            detail,
        })
    }

    /// Whether `tokens`, granted for the refresh token `sent`, replace a
    /// refresh token that a read-only vault holds and so cannot replace.
    fn spends_read_only(&self, sent: Option<&SecretString>, tokens: &Tokens) -> bool {
        match (sent, &tokens.refresh_token) {
            (Some(old), Some(new)) => {
                old.expose_secret() != new.expose_secret()
                    && self.vault.holds_read_only(&self.name, old)
            }
            _ => false,
        }
    }

    /// Runs the right grant for `conn`: refresh if it has a refresh token,
    /// else (or if that is refused) its non-interactive grant. Also returns
    /// the refresh token the tokens were granted for, if that grant made them.
    async fn obtain<'c>(
        &self,
        conn: &'c Connection,
    ) -> Result<(Tokens, Option<&'c SecretString>), TokenError> {
        if let Some(rt) = &conn.refresh_token {
            self.grants.fetch_add(1, Ordering::Relaxed);
            match request_token(&self.http, conn, &Grant::RefreshToken(rt)).await {
                Ok(tokens) => return Ok((tokens, Some(rt))),
                Err(TokenError::GrantRefused(reason)) if direct_grant_possible(conn) => {
                    info!(connection = %self.name, %reason, "refresh token refused; using the connection's own grant instead");
                }
                // The refresh token may be spent; the connection's own grant is not.
                Err(TokenError::Lost(detail)) if direct_grant_possible(conn) => {
                    info!(connection = %self.name, %detail, "the answer to the refresh was lost; using the connection's own grant instead");
                }
                Err(e) => return Err(e),
            }
        }
        if !direct_grant_possible(conn) {
            return Err(TokenError::GrantRefused(
                "no refresh token is stored for this connection".into(),
            ));
        }
        self.grants.fetch_add(1, Ordering::Relaxed);
        Ok((direct_grant(&self.http, conn, &self.name).await?, None))
    }
}

/// Whether `conn` can get tokens without a person (JWT, password, client credentials).
pub fn direct_grant_possible(conn: &Connection) -> bool {
    match conn.grant {
        GrantKind::JwtBearer => conn.assertion.is_some(),
        GrantKind::Password => conn.username.is_some() && conn.password.is_some(),
        GrantKind::ClientCredentials => true,
        GrantKind::AuthorizationCode | GrantKind::RefreshToken => false,
    }
}

/// Runs the JWT, password or client-credentials grant of `conn`.
pub async fn direct_grant(
    http: &HttpClient,
    conn: &Connection,
    name: &str,
) -> Result<Tokens, TokenError> {
    match (conn.grant, &conn.assertion, &conn.username, &conn.password) {
        (GrantKind::JwtBearer, Some(a), _, _) => {
            request_token(http, conn, &Grant::JwtBearer(a)).await
        }
        (GrantKind::Password, _, Some(u), Some(p)) => {
            warn!(connection = %name, "the password grant is deprecated (RingCentral and OAuth 2.1 drop it); switch this connection to the JWT grant");
            request_token(
                http,
                conn,
                &Grant::Password {
                    username: u,
                    password: p,
                },
            )
            .await
        }
        (GrantKind::ClientCredentials, ..) => {
            request_token(http, conn, &Grant::ClientCredentials).await
        }
        _ => Err(TokenError::GrantRefused(
            "the connection has no credential for its grant".into(),
        )),
    }
}

/// A stored access token that may still be used.
fn usable(conn: &Connection, rejected: Option<&SecretString>) -> Option<StoredToken> {
    if conn.status != ConnectionStatus::Ok {
        return None;
    }
    let access = conn.access_token.as_ref()?;
    if rejected.is_some_and(|r| r.expose_secret() == access.expose_secret()) {
        return None;
    }
    let expires_at = conn.access_expires_at?;
    let issued = conn.last_refresh_at.unwrap_or_else(Utc::now);
    let lifetime = (expires_at - issued).to_std().unwrap_or_default();
    let margin = margin_for(lifetime);
    let left = (expires_at - Utc::now()).to_std().unwrap_or_default();
    (left > margin).then(|| StoredToken {
        access: access.clone(),
        expires_at,
        margin,
    })
}

/// Records freshly granted tokens in `conn` and returns the access token.
pub fn apply_tokens(conn: &mut Connection, t: Tokens) -> StoredToken {
    let now = Utc::now();
    let lifetime = t.expires_in.unwrap_or(ASSUMED_LIFETIME);
    let expires_at =
        now + chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::hours(1));
    conn.access_token = Some(t.access_token.clone());
    conn.access_expires_at = Some(expires_at);
    if let Some(r) = t.refresh_token {
        conn.refresh_token = Some(r);
        conn.refresh_expires_at = t
            .refresh_expires_in
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| now + d);
    }
    conn.status = ConnectionStatus::Ok;
    conn.last_refresh_at = Some(now);
    conn.last_error = None;
    StoredToken {
        access: t.access_token,
        expires_at,
        margin: margin_for(lifetime),
    }
}
