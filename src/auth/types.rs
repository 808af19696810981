//! The primitives the auth modules share: their error types and the
//! well-known names those errors and defaults mention. A leaf: it imports no
//! other auth module, so `fyle` (sessions), `tokens` (vault-backed refresh)
//! and `vault` (storage) can all use it without depending on each other in a
//! circle.

use std::io;
use std::path::PathBuf;

use crate::http::HttpError;

/// Default Fyle accounts server.
pub const DEFAULT_ACCOUNTS_URL: &str = "https://accounts.fylehq.com";

/// Environment variable holding the vault encryption key or passphrase.
pub const VAULT_KEY_ENV: &str = "EXPENSE_SYNC_VAULT_KEY";

/// Why the vault could not be used; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Group or others can read or write the file.
    #[error(
        "the credential vault {} has mode {mode:o}, so other users can read or change it; \
         refusing to use it. Fix it with `chmod 600 {}` (and check no one copied it meanwhile)",
        path.display(), path.display()
    )]
    Permissions {
        /// Vault file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Reading, writing or locking failed.
    #[error("credential vault {}: {source}", path.display())]
    Io {
        /// Vault file.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// The file is not a vault this version understands.
    #[error("credential vault {} is damaged or not a vault: {message}", path.display())]
    Corrupt {
        /// Vault file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The vault is encrypted and no key (or the wrong key) was given.
    #[error("credential vault {} is encrypted and {message}; set {VAULT_KEY_ENV} to the key it was written with", path.display())]
    Key {
        /// Vault file.
        path: PathBuf,
        /// What is wrong with the key.
        message: String,
    },
    /// No connection of that name.
    #[error(
        "no connection `{name}` in the credential vault {}; add it with `expense-sync auth add {name} …` \
         (see `expense-sync auth list`)",
        path.display()
    )]
    Unknown {
        /// Connection name.
        name: String,
        /// Vault file.
        path: PathBuf,
    },
    /// No key of that name in a mounted Secret.
    #[error(
        "no connection `{name}` in the Kubernetes Secret mounted at {}: it has no key `{name}.json` (or `{name}`); \
         add one holding the connection's JSON, e.g. `kubectl create secret generic … --from-file={name}.json=./{name}.json`",
        dir.display()
    )]
    UnknownMounted {
        /// Connection name.
        name: String,
        /// The mount.
        dir: PathBuf,
    },
    /// One key of a mounted Secret is not a connection.
    #[error(
        "credential vault key {}: {message}. Each key of the Secret holds one connection as a JSON object \
         (profile, grant, accounts_url, client_id and its secrets; see README, \"A vault from a Kubernetes Secret\")",
        path.display()
    )]
    MountedKey {
        /// The key's file in the mount.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A change to a vault that is a read-only Kubernetes Secret.
    #[error(
        "the credential vault {} is a Kubernetes Secret, mounted read-only: {what}. Change the Secret itself \
         (`kubectl create secret generic … --dry-run=client -o yaml | kubectl apply -f -`), or keep connections \
         that change in a vault file or in object storage (`--vault s3://bucket/vault.json`)",
        path.display()
    )]
    ReadOnly {
        /// The vault location (`k8s-secret:DIR`).
        path: PathBuf,
        /// What was attempted.
        what: String,
    },
}

impl From<VaultError> for crate::error::Error {
    fn from(e: VaultError) -> Self {
        crate::error::Error::Auth(e.to_string())
    }
}

/// Why authentication failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The accounts server refused the credentials.
    #[error(
        "the accounts server {accounts_url} refused the credentials of client_id {client_id} (HTTP {status}: {message}). \
         Check connection.client_id, connection.client_secret and connection.refresh_token; \
         an internal app's refresh token is shown in Fyle under Settings → Integrations → Custom Apps"
    )]
    Refused {
        /// Accounts server.
        accounts_url: String,
        /// Client id (not secret).
        client_id: String,
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The token or cluster endpoint could not be used.
    #[error(
        "{what} failed: {source}; check connection.accounts_url and that the server can be reached"
    )]
    Http {
        /// Which step.
        what: &'static str,
        /// The request failure.
        source: HttpError,
    },
    /// The server answered something we cannot use.
    #[error("{0}")]
    Protocol(String),
    /// A stored connection's refresh token or credential was refused (expired
    /// or revoked): only a person can fix it, so it is never retried.
    #[error("reconnect needed: run `expense-sync auth login {connection}` ({reason})")]
    ReconnectNeeded {
        /// Vault connection name.
        connection: String,
        /// The provider's words.
        reason: String,
    },
    /// A refresh of a stored connection may have reached the provider, which
    /// may have rotated the refresh token, but the answer was lost.
    #[error(
        "connection `{connection}`: the token endpoint may have rotated the refresh token but its answer was lost \
         ({detail}). The refresh was not repeated: a rotated refresh token is spent, and sending it again is refused \
         (some providers then revoke the whole grant). Run `expense-sync auth login {connection}` to authorise it again; \
         the stored refresh token is kept, so if the provider had not rotated it after all, the next run simply works"
    )]
    RefreshLost {
        /// Vault connection name.
        connection: String,
        /// The request and how its answer was lost (never a secret).
        detail: String,
    },
    /// The provider rotated a refresh token that a read-only vault (a mounted
    /// Kubernetes Secret) holds: the stored one is spent and its successor
    /// cannot be kept.
    #[error(
        "connection `{connection}`: the token endpoint rotated the refresh token, but the vault {vault} is a read-only \
         Kubernetes Secret, which cannot keep the new one, so the refresh token in the Secret is now spent. A Secret \
         suits credentials the server does not rotate (client credentials, a JWT assertion, a Fyle refresh token); \
         keep connections with rotating refresh tokens in the object-store vault (`--vault s3://bucket/vault.json` \
         with {key}) and authorise this one again there: `expense-sync --vault s3://bucket/vault.json auth login {connection}`",
        key = VAULT_KEY_ENV
    )]
    RotatedInReadOnlyVault {
        /// Vault connection name.
        connection: String,
        /// The vault location (`k8s-secret:DIR`).
        vault: String,
    },
    /// The credential vault could not be used.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl From<AuthError> for crate::error::Error {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::ReconnectNeeded { .. }
            | AuthError::RefreshLost { .. }
            | AuthError::RotatedInReadOnlyVault { .. } => {
                crate::error::Error::Reconnect(e.to_string())
            }
            other => crate::error::Error::Auth(other.to_string()),
        }
    }
}
