//! The credential vault: named connections (one per organisation or tenant)
//! with their client credentials and current tokens, in one JSON file.
//!
//! - The file is created mode 0600 and replaced atomically (temp file, fsync,
//!   rename); a vault readable by group or others is refused.
//! - Every read-modify-write holds an exclusive `flock` on `{vault}.lock`, so
//!   `auth refresh-all` from cron and running pipelines never lose a rotated
//!   refresh token to each other.
//! - With `EXPENSE_SYNC_VAULT_KEY` set, the connections are sealed with
//!   ChaCha20-Poly1305 under a key derived from that value by Argon2id with a
//!   random per-write salt.
//! - The vault can live in object storage (`--vault s3://bucket/vault.json`);
//!   there it must be encrypted, and there is no lock: each save is a put
//!   conditional on the version this process last read. When another process
//!   wrote in between (HTTP 412), the save re-reads the vault, re-applies this
//!   process's changes (the connections it changed since its read) onto what
//!   the other wrote, and tries again, so neither write loses the other's
//!   rotated refresh token.
//! - The vault can be a mounted Kubernetes Secret (`--vault k8s-secret:DIR`),
//!   read-only: each key is one connection's JSON (or `vault.json` a whole
//!   vault file). Tokens obtained at run time stay in this process's memory;
//!   nothing is ever written to the mount.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use argon2::Argon2;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::types::DEFAULT_ACCOUNTS_URL;
pub use super::types::{VAULT_KEY_ENV, VaultError};

/// Environment variable naming the vault file (the `--vault` flag wins).
pub const VAULT_ENV: &str = "EXPENSE_SYNC_VAULT";
/// Prefix of a vault location naming a mounted Kubernetes Secret (read-only).
pub const SECRET_DIR_PREFIX: &str = "k8s-secret:";
/// The Secret key that holds a whole vault file rather than one connection.
pub const SECRET_VAULT_KEY: &str = "vault.json";

/// The mounted Secret directory a vault location names (`k8s-secret:DIR`), if it names one.
pub fn secret_dir(location: &Path) -> Option<PathBuf> {
    location
        .to_str()
        .and_then(|s| s.strip_prefix(SECRET_DIR_PREFIX))
        .map(PathBuf::from)
}

/// The vault file to use: `explicit`, else `$EXPENSE_SYNC_VAULT`, else
/// `$XDG_CONFIG_HOME/expense-sync/vault.json` (or `~/.config/…`).
pub fn vault_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os(VAULT_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("expense-sync").join("vault.json")
}

/// Which token-endpoint dialect a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Fyle: JSON body with `client_id` and `client_secret`; no PKCE.
    Fyle,
    /// Standard OAuth 2.0 (RFC 6749, RingCentral and most SaaS APIs): form
    /// body, HTTP Basic or body client authentication, PKCE, rotation.
    Oauth2,
}

/// How a connection obtains its first tokens (and new ones when it has no refresh token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    /// A person authorises in a browser (`auth login`); the code is exchanged for tokens.
    AuthorizationCode,
    /// A refresh token copied from the provider (Fyle internal app).
    RefreshToken,
    /// `urn:ietf:params:oauth:grant-type:jwt-bearer` with a JWT credential as `assertion`.
    JwtBearer,
    /// Resource-owner password grant (deprecated; use the JWT grant).
    Password,
    /// Client credentials: the app acts for itself.
    ClientCredentials,
}

/// How the client authenticates to the token endpoint (standard profile).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `Authorization: Basic base64(client_id:client_secret)`.
    Basic,
    /// `client_id` (and `client_secret`, if any) in the form body; public clients.
    Body,
}

/// Whether a connection can be used without a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    /// Added, never authorised.
    New,
    /// Has working credentials as of the last refresh.
    Ok,
    /// The provider refused the refresh token or credential: `auth login` again.
    ReconnectNeeded,
    /// Tokens were revoked with `auth revoke`.
    Revoked,
}

impl ConnectionStatus {
    /// Lower-case name for listings.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionStatus::New => "new",
            ConnectionStatus::Ok => "ok",
            ConnectionStatus::ReconnectNeeded => "reconnect-needed",
            ConnectionStatus::Revoked => "revoked",
        }
    }
}

/// One stored connection: endpoints, client, grant, and current tokens.
#[derive(Clone, Serialize, Deserialize)]
pub struct Connection {
    /// Token dialect.
    pub profile: Profile,
    /// How tokens are first obtained.
    pub grant: GrantKind,
    /// Accounts server (Fyle: also where `/oauth/cluster` lives).
    pub accounts_url: String,
    /// Token endpoint.
    pub token_url: String,
    /// Authorization endpoint (authorization-code grant).
    #[serde(default)]
    pub authorize_url: Option<String>,
    /// Revocation endpoint (RFC 7009), if the provider has one.
    #[serde(default)]
    pub revoke_url: Option<String>,
    /// Client id (not secret).
    pub client_id: String,
    /// Client secret; absent for public clients.
    #[serde(default, with = "opt_secret")]
    pub client_secret: Option<SecretString>,
    /// Client authentication at the token endpoint (standard profile).
    pub client_auth: ClientAuth,
    /// Loopback redirect URI for `auth login`, e.g. `http://127.0.0.1:8765/callback` (port 0: any free port).
    #[serde(default)]
    pub redirect_uri: Option<String>,
    /// Requested scope, space separated.
    #[serde(default)]
    pub scope: Option<String>,
    /// Whether the authorization-code grant uses PKCE S256.
    #[serde(default)]
    pub pkce: bool,
    /// JWT credential for the JWT bearer grant.
    #[serde(default, with = "opt_secret")]
    pub assertion: Option<SecretString>,
    /// User name for the password grant.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for the password grant.
    #[serde(default, with = "opt_secret")]
    pub password: Option<SecretString>,
    /// Current refresh token.
    #[serde(default, with = "opt_secret")]
    pub refresh_token: Option<SecretString>,
    /// When the refresh token expires, if the provider said.
    #[serde(default)]
    pub refresh_expires_at: Option<DateTime<Utc>>,
    /// Current access token.
    #[serde(default, with = "opt_secret")]
    pub access_token: Option<SecretString>,
    /// When the access token expires.
    #[serde(default)]
    pub access_expires_at: Option<DateTime<Utc>>,
    /// Usable, or waiting for a person.
    pub status: ConnectionStatus,
    /// Last successful token grant.
    #[serde(default)]
    pub last_refresh_at: Option<DateTime<Utc>>,
    /// Why the last grant failed (the provider's words; never a secret).
    #[serde(default)]
    pub last_error: Option<String>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |s: &Option<SecretString>| s.as_ref().map(|_| "[REDACTED]");
        f.debug_struct("Connection")
            .field("profile", &self.profile)
            .field("grant", &self.grant)
            .field("accounts_url", &self.accounts_url)
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &redacted(&self.client_secret))
            .field("assertion", &redacted(&self.assertion))
            .field("password", &redacted(&self.password))
            .field("refresh_token", &redacted(&self.refresh_token))
            .field("access_token", &redacted(&self.access_token))
            .field("access_expires_at", &self.access_expires_at)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A new connection with the profile's default endpoints under `accounts_url`.
    pub fn new(profile: Profile, grant: GrantKind, accounts_url: &str, client_id: &str) -> Self {
        let base = accounts_url.trim_end_matches('/');
        let (authorize, revoke, client_auth) = match profile {
            // Fyle's consent page lives on the app host; the simulator serves
            // it on its accounts server, so the default follows accounts_url
            // unless it is the real accounts server.
            Profile::Fyle => (
                if base == DEFAULT_ACCOUNTS_URL {
                    "https://app.fylehq.com/app/developers/oauth/authorize".to_string()
                } else {
                    format!("{base}/app/developers/oauth/authorize")
                },
                None,
                ClientAuth::Body,
            ),
            Profile::Oauth2 => (
                format!("{base}/oauth/authorize"),
                Some(format!("{base}/oauth/revoke")),
                ClientAuth::Basic,
            ),
        };
        Connection {
            profile,
            grant,
            accounts_url: base.to_string(),
            token_url: format!("{base}/oauth/token"),
            authorize_url: Some(authorize),
            revoke_url: revoke,
            client_id: client_id.to_string(),
            client_secret: None,
            client_auth,
            redirect_uri: Some("http://127.0.0.1:8765/callback".into()),
            scope: None,
            pkce: profile == Profile::Oauth2,
            assertion: None,
            username: None,
            password: None,
            refresh_token: None,
            refresh_expires_at: None,
            access_token: None,
            access_expires_at: None,
            status: ConnectionStatus::New,
            last_refresh_at: None,
            last_error: None,
        }
    }

    /// Every secret value this connection holds (for redaction checks in tests and tools).
    pub fn secret_values(&self) -> Vec<&str> {
        [
            &self.client_secret,
            &self.assertion,
            &self.password,
            &self.refresh_token,
            &self.access_token,
        ]
        .into_iter()
        .flatten()
        .map(|s| s.expose_secret())
        .collect()
    }
}

/// Connections by name.
pub type Connections = BTreeMap<String, Connection>;

/// On-disk form.
#[derive(Serialize, Deserialize)]
struct VaultFile {
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<Sealed>,
    #[serde(default)]
    connections: Connections,
}

/// Encrypted connections: ChaCha20-Poly1305 under Argon2id(key, salt).
#[derive(Serialize, Deserialize)]
struct Sealed {
    kdf: String,
    cipher: String,
    salt: String,
    nonce: String,
    ciphertext: String,
}

const KDF: &str = "argon2id-v19-m19456-t2-p1";
const CIPHER: &str = "chacha20poly1305";

/// Exclusive hold on the vault for a read-modify-write; released on drop.
/// (A vault in object storage has no lock: its saves are conditional instead.)
#[derive(Debug)]
pub struct VaultLock {
    _file: Option<File>,
    _held: Option<Held>,
    _mounted: Option<MountedHeld>,
}

/// This process's hold on a mounted-Secret vault; released on drop.
#[derive(Debug)]
struct MountedHeld(std::sync::Arc<Mounted>);

impl Drop for MountedHeld {
    fn drop(&mut self) {
        *self.0.held.lock().expect("not poisoned") = false;
        self.0.released.notify_one();
    }
}

/// A vault read from a mounted Kubernetes Secret, and the tokens this process
/// obtained for its connections (in memory only: the mount is read-only).
#[derive(Default)]
struct Mounted {
    dir: PathBuf,
    held: std::sync::Mutex<bool>,
    released: std::sync::Condvar,
    /// Each connection as last saved, with the Secret's own form of it then:
    /// its run-time fields overlay the Secret's while the Secret is unchanged.
    runtime: std::sync::Mutex<BTreeMap<String, (serde_json::Value, Connection)>>,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted").field("dir", &self.dir).finish()
    }
}

/// This process's hold on a vault object; released on drop.
#[derive(Debug)]
struct Held(std::sync::Arc<RemoteVault>);

impl Drop for Held {
    fn drop(&mut self) {
        *self.0.held.lock().expect("not poisoned") = false;
        self.0.released.notify_one();
    }
}

/// A vault file and the key (if any) it is sealed with.
#[derive(Clone)]
pub struct Vault {
    path: PathBuf,
    key: Option<SecretString>,
    remote: Option<std::sync::Arc<RemoteVault>>,
    mounted: Option<std::sync::Arc<Mounted>>,
}

/// A vault object: the store (opened on first use) and what this process last read.
#[derive(Default)]
struct RemoteVault {
    /// One read-modify-write at a time in this process (as `flock` does locally),
    /// so `seen` is the read of the task that saves next.
    held: std::sync::Mutex<bool>,
    released: std::sync::Condvar,
    store: std::sync::OnceLock<Result<(crate::store::Remote, crate::store::ObjectKey), String>>,
    /// Version and connections (as JSON) of the last read or write.
    seen: std::sync::Mutex<Option<(Option<crate::store::ObjectVersion>, serde_json::Value)>>,
}

/// Tries of a conditional vault save before giving up.
const SAVE_TRIES: usize = 40;

impl std::fmt::Debug for RemoteVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RemoteVault")
    }
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("path", &self.path)
            .field("encrypted", &self.key.is_some())
            .finish()
    }
}

impl Vault {
    /// The vault at `path`, encrypted with `$EXPENSE_SYNC_VAULT_KEY` if that is set.
    pub fn open(path: &Path) -> Self {
        let key = std::env::var(VAULT_KEY_ENV)
            .ok()
            .filter(|k| !k.is_empty())
            .map(SecretString::from);
        Self::with_key(path, key)
    }

    /// The vault at `path` with an explicit key (`None`: stored in plain JSON, mode 0600).
    pub fn with_key(path: &Path, key: Option<SecretString>) -> Self {
        Self {
            path: path.to_path_buf(),
            key,
            remote: crate::store::is_remote(path).then(Default::default),
            mounted: secret_dir(path).map(|dir| {
                std::sync::Arc::new(Mounted {
                    dir,
                    ..Mounted::default()
                })
            }),
        }
    }

    /// A vault object in a store opened by the caller (`path` is its URL, for messages).
    pub fn with_remote(path: &Path, key: SecretString, store: crate::store::Remote) -> Self {
        let remote = RemoteVault::default();
        let object = store.prefix().clone();
        let _ = remote.store.set(Ok((store, object)));
        Self {
            path: path.to_path_buf(),
            key: Some(key),
            remote: Some(std::sync::Arc::new(remote)),
            mounted: None,
        }
    }

    /// The vault file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this vault is a read-only Kubernetes Secret (tokens kept in memory only).
    pub fn is_read_only(&self) -> bool {
        self.mounted.is_some()
    }

    /// Whether `token` is the refresh token the read-only Secret itself holds
    /// for `name` (so a rotation of it cannot be kept).
    pub fn holds_read_only(&self, name: &str, token: &SecretString) -> bool {
        let Some(mounted) = &self.mounted else {
            return false;
        };
        self.read_mounted(&mounted.dir)
            .ok()
            .and_then(|mut all| all.remove(name))
            .and_then(|c| c.refresh_token)
            .is_some_and(|t| t.expose_secret() == token.expose_secret())
    }

    fn io(&self, source: io::Error) -> VaultError {
        VaultError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn lock_path(&self) -> PathBuf {
        PathBuf::from(format!("{}.lock", self.path.display()))
    }

    /// Waits for the exclusive lock (blocking; call from a blocking thread in async code).
    pub fn lock(&self) -> Result<VaultLock, VaultError> {
        if let Some(remote) = &self.remote {
            let mut held = remote.held.lock().expect("not poisoned");
            while *held {
                held = remote.released.wait(held).expect("not poisoned");
            }
            *held = true;
            return Ok(VaultLock {
                _file: None,
                _held: Some(Held(remote.clone())),
                _mounted: None,
            });
        }
        if let Some(mounted) = &self.mounted {
            let mut held = mounted.held.lock().expect("not poisoned");
            while *held {
                held = mounted.released.wait(held).expect("not poisoned");
            }
            *held = true;
            return Ok(VaultLock {
                _file: None,
                _held: None,
                _mounted: Some(MountedHeld(mounted.clone())),
            });
        }
        self.ensure_dir()?;
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(self.lock_path()).map_err(|e| self.io(e))?;
        file.lock().map_err(|e| self.io(e))?;
        Ok(VaultLock {
            _file: Some(file),
            _held: None,
            _mounted: None,
        })
    }

    /// [`Vault::lock`] from async code, without blocking a runtime worker.
    pub async fn lock_async(&self) -> Result<VaultLock, VaultError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.lock())
            .await
            .map_err(|e| self.io(io::Error::other(e)))?
    }

    fn ensure_dir(&self) -> Result<(), VaultError> {
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty())
            && !dir.exists()
        {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                b.mode(0o700);
            }
            b.create(dir).map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// Reads every connection (none if the file does not exist yet).
    pub fn load(&self) -> Result<Connections, VaultError> {
        if let Some(remote) = &self.remote {
            let (version, all) = self.load_remote(remote)?;
            // A read under the hold is the base of the save that follows.
            if *remote.held.lock().expect("not poisoned") {
                *remote.seen.lock().expect("not poisoned") = Some((version, to_json(&all)));
            }
            return Ok(all);
        }
        if let Some(mounted) = &self.mounted {
            let mut all = self.read_mounted(&mounted.dir)?;
            let runtime = mounted.runtime.lock().expect("not poisoned");
            for (name, conn) in all.iter_mut() {
                // An operator's update of the Secret (new credentials) starts
                // that connection afresh rather than under stale tokens.
                if let Some((seen, ours)) = runtime.get(name)
                    && serde_json::to_value(&*conn).ok().as_ref() == Some(seen)
                {
                    copy_runtime(ours, conn);
                }
            }
            return Ok(all);
        }
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Connections::new()),
            Err(e) => return Err(self.io(e)),
        };
        self.check_permissions()?;
        self.parse(&bytes)
    }

    fn parse(&self, bytes: &[u8]) -> Result<Connections, VaultError> {
        let file: VaultFile = serde_json::from_slice(bytes).map_err(|e| VaultError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        if file.version != 1 {
            return Err(VaultError::Corrupt {
                path: self.path.clone(),
                message: format!("version {} is not supported (expected 1)", file.version),
            });
        }
        match file.sealed {
            None => Ok(file.connections),
            Some(sealed) => self.unseal(&sealed),
        }
    }

    /// Loads one connection by name.
    pub fn get(&self, name: &str) -> Result<Connection, VaultError> {
        self.load()?.remove(name).ok_or_else(|| self.unknown(name))
    }

    /// The error for a missing connection.
    pub fn unknown(&self, name: &str) -> VaultError {
        if let Some(mounted) = &self.mounted {
            return VaultError::UnknownMounted {
                name: name.to_string(),
                dir: mounted.dir.clone(),
            };
        }
        VaultError::Unknown {
            name: name.to_string(),
            path: self.path.clone(),
        }
    }

    /// Replaces the file with `connections` (mode 0600, atomic). Requires the lock.
    pub fn save(&self, _lock: &VaultLock, connections: &Connections) -> Result<(), VaultError> {
        if let Some(remote) = &self.remote {
            return self.save_remote(remote, connections);
        }
        if let Some(mounted) = &self.mounted {
            return self.save_mounted(mounted, connections);
        }
        self.ensure_dir()?;
        let bytes = self.serialize(connections)?;
        let tag = format!("vault-{}-{:08x}", std::process::id(), rand::random::<u32>());
        crate::fsutil::write_atomic_with_mode(&self.path, &bytes, &tag, Some(0o600))
            .map_err(|e| self.io(e))
    }

    fn serialize(&self, connections: &Connections) -> Result<Vec<u8>, VaultError> {
        let file = match &self.key {
            None => VaultFile {
                version: 1,
                sealed: None,
                connections: connections.clone(),
            },
            Some(key) => VaultFile {
                version: 1,
                sealed: Some(self.seal(key, connections)?),
                connections: Connections::new(),
            },
        };
        serde_json::to_vec_pretty(&file).map_err(|e| self.io(io::Error::other(e)))
    }

    fn store<'a>(
        &self,
        remote: &'a RemoteVault,
    ) -> Result<&'a (crate::store::Remote, crate::store::ObjectKey), VaultError> {
        remote
            .store
            .get_or_init(|| {
                let url = self.path.to_string_lossy();
                let store = crate::store::Remote::open(&url).map_err(|e| e.message)?;
                let key = store.prefix().clone();
                Ok((store, key))
            })
            .as_ref()
            .map_err(|m| self.io(io::Error::other(m.clone())))
    }

    fn load_remote(
        &self,
        remote: &RemoteVault,
    ) -> Result<(Option<crate::store::ObjectVersion>, Connections), VaultError> {
        if self.key.is_none() {
            return Err(VaultError::Key {
                path: self.path.clone(),
                message: format!(
                    "a vault in object storage is always encrypted, but {VAULT_KEY_ENV} is not set"
                ),
            });
        }
        let (store, key) = self.store(remote)?;
        match store.get(key) {
            Ok(None) => Ok((None, Connections::new())),
            Ok(Some((bytes, version))) => Ok((Some(version), self.parse(&bytes)?)),
            Err(e) => Err(self.io(io::Error::other(e.message))),
        }
    }

    /// Writes `connections` conditionally on the version last read; on a
    /// conflict, re-applies this process's changes onto the newer vault.
    fn save_remote(
        &self,
        remote: &RemoteVault,
        connections: &Connections,
    ) -> Result<(), VaultError> {
        let (store, key) = self.store(remote)?;
        let seen = remote.seen.lock().expect("not poisoned").clone();
        let (mut version, base) = match seen {
            Some(s) => s,
            // Never read: the first save must not replace a vault someone else wrote.
            None => {
                let (v, all) = self.load_remote(remote)?;
                (v, to_json(&all))
            }
        };
        if self.key.is_none() {
            // Refused with the reason: a vault object is always encrypted.
            self.load_remote(remote)?;
        }
        let ours = to_json(connections);
        let mut merged = connections.clone();
        for attempt in 0..SAVE_TRIES {
            let bytes = self.serialize(&merged)?;
            let mode = match &version {
                Some(v) => object_store::PutMode::Update(v.clone()),
                None => object_store::PutMode::Create,
            };
            match store.put(key, bytes::Bytes::from(bytes), mode) {
                Ok(v) => {
                    *remote.seen.lock().expect("not poisoned") = Some((Some(v), to_json(&merged)));
                    return Ok(());
                }
                Err(e) if e.conflict => {
                    // Random, growing pauses: writers that collided do not collide again in step.
                    let pause = rand::random_range(5..50u64) * (attempt as u64 + 1).min(8);
                    std::thread::sleep(std::time::Duration::from_millis(pause));
                    let (v, theirs) = self.load_remote(remote)?;
                    merged = reapply(&base, &ours, theirs);
                    version = v;
                    tracing::info!(vault = %self.path.display(), "the vault changed since it was read; re-applied this process's changes and retrying");
                }
                Err(e) => return Err(self.io(io::Error::other(e.message))),
            }
        }
        Err(self.io(io::Error::other(format!(
            "the vault kept changing under {SAVE_TRIES} conditional saves; try again"
        ))))
    }

    /// Locks, loads, applies `f`, saves if `f` succeeded, unlocks.
    pub fn update<R, E: From<VaultError>>(
        &self,
        f: impl FnOnce(&mut Connections) -> Result<R, E>,
    ) -> Result<R, E> {
        let lock = self.lock()?;
        let mut all = self.load()?;
        let r = f(&mut all)?;
        self.save(&lock, &all)?;
        Ok(r)
    }

    /// Keeps run-time changes (tokens, status) in memory; refuses any other change.
    fn save_mounted(&self, mounted: &Mounted, connections: &Connections) -> Result<(), VaultError> {
        let secret = self.read_mounted(&mounted.dir)?;
        let read_only = |what: String| VaultError::ReadOnly {
            path: self.path.clone(),
            what,
        };
        if let Some(name) = connections.keys().find(|n| !secret.contains_key(*n)) {
            return Err(read_only(format!("cannot add connection `{name}`")));
        }
        if let Some(name) = secret.keys().find(|n| !connections.contains_key(*n)) {
            return Err(read_only(format!("cannot remove connection `{name}`")));
        }
        let mut runtime = BTreeMap::new();
        for (name, conn) in connections {
            let mut expected = secret[name].clone();
            copy_runtime(conn, &mut expected);
            if serde_json::to_value(&expected).ok() != serde_json::to_value(conn).ok() {
                return Err(read_only(format!(
                    "cannot change the settings or credentials of connection `{name}`"
                )));
            }
            let seen =
                serde_json::to_value(&secret[name]).map_err(|e| self.io(io::Error::other(e)))?;
            runtime.insert(name.clone(), (seen, conn.clone()));
        }
        *mounted.runtime.lock().expect("not poisoned") = runtime;
        Ok(())
    }

    /// Every connection in the mounted Secret `dir`, read from one version of it.
    fn read_mounted(&self, dir: &Path) -> Result<Connections, VaultError> {
        // kubelet mounts each key as a symlink into `..data`, itself a symlink
        // it swaps atomically to a new timestamped directory on an update:
        // reading inside the directory `..data` resolves to sees one version.
        let base = match std::fs::canonicalize(dir.join("..data")) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => dir.to_path_buf(),
            Err(e) => return Err(self.io(e)),
        };
        let listing = std::fs::read_dir(&base).map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::NotFound {
                format!(
                    "{} does not exist: mount the Secret there (volumeMounts[].mountPath) or correct the directory after {SECRET_DIR_PREFIX}",
                    dir.display()
                )
            } else {
                format!("cannot list {}: {e}", dir.display())
            };
            self.io(io::Error::new(e.kind(), hint))
        })?;
        let mut keys = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|e| self.io(e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // kubelet's own entries (`..data`, `..2026_…`) and hidden files are not keys.
            if !name.starts_with('.') {
                keys.push(name);
            }
        }
        keys.sort();
        if keys.is_empty() {
            return Err(self.io(io::Error::other(format!(
                "{} has no keys: is the Secret mounted there?",
                dir.display()
            ))));
        }
        let mut all = Connections::new();
        let mut from: BTreeMap<String, String> = BTreeMap::new();
        for key in keys {
            let shown = dir.join(&key);
            let bytes = std::fs::read(base.join(&key)).map_err(|e| VaultError::Io {
                path: shown.clone(),
                source: e,
            })?;
            let found = if key == SECRET_VAULT_KEY {
                self.parse(&bytes)?
            } else {
                let name = key.strip_suffix(".json").unwrap_or(&key).to_string();
                Connections::from([(name, parse_mounted_connection(&bytes, &shown)?)])
            };
            for (name, conn) in found {
                if let Some(other) = from.insert(name.clone(), key.clone()) {
                    return Err(VaultError::MountedKey {
                        path: shown,
                        message: format!("connection `{name}` is also defined by key `{other}`"),
                    });
                }
                all.insert(name, conn);
            }
        }
        Ok(all)
    }

    fn check_permissions(&self) -> Result<(), VaultError> {
        if self.remote.is_some() {
            return Ok(());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(&self.path).map_err(|e| self.io(e))?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(VaultError::Permissions {
                    path: self.path.clone(),
                    mode,
                });
            }
        }
        Ok(())
    }

    fn derive(&self, key: &SecretString, salt: &[u8]) -> Result<[u8; 32], VaultError> {
        let mut out = [0u8; 32];
        Argon2::default()
            .hash_password_into(key.expose_secret().as_bytes(), salt, &mut out)
            .map_err(|e| VaultError::Key {
                path: self.path.clone(),
                message: format!("the key cannot be used ({e})"),
            })?;
        Ok(out)
    }

    fn seal(&self, key: &SecretString, connections: &Connections) -> Result<Sealed, VaultError> {
        let salt: [u8; 16] = rand::random();
        let nonce: [u8; 12] = rand::random();
        let k = self.derive(key, &salt)?;
        let plain = serde_json::to_vec(connections).map_err(|e| self.io(io::Error::other(e)))?;
        let ciphertext = ChaCha20Poly1305::new(Key::from_slice(&k))
            .encrypt(Nonce::from_slice(&nonce), plain.as_slice())
            .map_err(|_| self.io(io::Error::other("encryption failed")))?;
        Ok(Sealed {
            kdf: KDF.into(),
            cipher: CIPHER.into(),
            salt: B64.encode(salt),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ciphertext),
        })
    }

    fn unseal(&self, sealed: &Sealed) -> Result<Connections, VaultError> {
        let Some(key) = &self.key else {
            return Err(VaultError::Key {
                path: self.path.clone(),
                message: format!("{VAULT_KEY_ENV} is not set"),
            });
        };
        let corrupt = |m: &str| VaultError::Corrupt {
            path: self.path.clone(),
            message: m.to_string(),
        };
        if sealed.kdf != KDF || sealed.cipher != CIPHER {
            return Err(corrupt("unknown key derivation or cipher"));
        }
        let salt = B64.decode(&sealed.salt).map_err(|_| corrupt("bad salt"))?;
        let nonce = B64
            .decode(&sealed.nonce)
            .map_err(|_| corrupt("bad nonce"))?;
        let ct = B64
            .decode(&sealed.ciphertext)
            .map_err(|_| corrupt("bad ciphertext"))?;
        if nonce.len() != 12 {
            return Err(corrupt("bad nonce length"));
        }
        let k = self.derive(key, &salt)?;
        let plain = ChaCha20Poly1305::new(Key::from_slice(&k))
            .decrypt(Nonce::from_slice(&nonce), ct.as_slice())
            .map_err(|_| VaultError::Key {
                path: self.path.clone(),
                message: "the key does not open it (wrong key, or the file was altered)".into(),
            })?;
        serde_json::from_slice(&plain).map_err(|e| corrupt(&e.to_string()))
    }
}

/// Copies what a run changes (tokens, their expiries, status) from `from` to `to`.
fn copy_runtime(from: &Connection, to: &mut Connection) {
    to.refresh_token = from.refresh_token.clone();
    to.refresh_expires_at = from.refresh_expires_at;
    to.access_token = from.access_token.clone();
    to.access_expires_at = from.access_expires_at;
    to.status = from.status;
    to.last_refresh_at = from.last_refresh_at;
    to.last_error = from.last_error.clone();
}

/// The fields of a connection that hold secrets (all strings).
const SECRET_FIELDS: [&str; 5] = [
    "client_secret",
    "assertion",
    "password",
    "refresh_token",
    "access_token",
];

/// One Secret key's connection: its JSON object over the defaults of
/// `Connection::new` (only `grant` and `client_id` are required; `profile`
/// defaults to `fyle`, `accounts_url` to Fyle's), unknown fields refused.
fn parse_mounted_connection(bytes: &[u8], path: &Path) -> Result<Connection, VaultError> {
    let bad = |message: String| VaultError::MountedKey {
        path: path.to_path_buf(),
        message,
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON ({e})")))?;
    let serde_json::Value::Object(given) = value else {
        return Err(bad("not a JSON object".into()));
    };
    let field = |k: &str| given.get(k).cloned();
    let profile: Profile = match field("profile") {
        Some(v) => serde_json::from_value(v).map_err(|e| bad(format!("profile: {e}")))?,
        None => Profile::Fyle,
    };
    let grant: GrantKind = serde_json::from_value(
        field("grant").ok_or_else(|| bad("missing field `grant` (e.g. \"refresh_token\", \"jwt_bearer\", \"client_credentials\")".into()))?,
    )
    .map_err(|e| bad(format!("grant: {e}")))?;
    let text = |k: &str| -> Result<Option<String>, VaultError> {
        match field(k) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(bad(format!("`{k}` must be a string"))),
        }
    };
    let client_id = text("client_id")?.ok_or_else(|| bad("missing field `client_id`".into()))?;
    let accounts_url = match text("accounts_url")? {
        Some(u) => u,
        None if profile == Profile::Fyle => DEFAULT_ACCOUNTS_URL.to_string(),
        None => return Err(bad("missing field `accounts_url`".into())),
    };
    let base = Connection::new(profile, grant, &accounts_url, &client_id);
    let serde_json::Value::Object(mut merged) =
        serde_json::to_value(&base).map_err(|e| bad(e.to_string()))?
    else {
        return Err(bad("internal: a connection is not an object".into()));
    };
    for (k, v) in given {
        if !merged.contains_key(&k) {
            let known: Vec<&String> = merged.keys().collect();
            return Err(bad(format!(
                "unknown field `{k}` (the fields are: {})",
                known
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        // Named here: serde's own message would not say which field is wrong.
        if SECRET_FIELDS.contains(&k.as_str()) && !(v.is_string() || v.is_null()) {
            return Err(bad(format!("`{k}` must be a string (or null)")));
        }
        if k != "accounts_url" {
            merged.insert(k, v);
        }
    }
    serde_json::from_value(serde_json::Value::Object(merged)).map_err(|e| bad(e.to_string()))
}

/// Connections as comparable JSON (secrets included: the vault's own form).
fn to_json(all: &Connections) -> serde_json::Value {
    serde_json::to_value(all).unwrap_or(serde_json::Value::Null)
}

/// Three-way merge: the connections this process changed since `base`
/// (added, changed or removed in `ours`) applied onto `theirs`.
fn reapply(
    base: &serde_json::Value,
    ours: &serde_json::Value,
    mut theirs: Connections,
) -> Connections {
    let empty = serde_json::Map::new();
    let base = base.as_object().unwrap_or(&empty);
    let ours = ours.as_object().unwrap_or(&empty);
    let names: std::collections::BTreeSet<&String> = base.keys().chain(ours.keys()).collect();
    for name in names {
        match (base.get(name), ours.get(name)) {
            (b, Some(o)) if b != Some(o) => {
                if let Ok(conn) = serde_json::from_value::<Connection>(o.clone()) {
                    theirs.insert(name.clone(), conn);
                }
            }
            (Some(_), None) => {
                theirs.remove(name);
            }
            _ => {}
        }
    }
    theirs
}

/// Serde for `Option<SecretString>`: the vault is the one place secrets are written.
mod opt_secret {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(secret) => s.serialize_some(secret.expose_secret()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(SecretString::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Connections {
        let mut c = Connection::new(Profile::Oauth2, GrantKind::JwtBearer, "http://x", "id");
        c.client_secret = Some(SecretString::from("top-secret-value".to_string()));
        let mut all = Connections::new();
        all.insert("acme".into(), c);
        all
    }

    #[test]
    fn vault_file_is_created_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/vault.json");
        let v = Vault::with_key(&path, None);
        let lock = v.lock().unwrap();
        v.save(&lock, &sample()).unwrap();
        drop(lock);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let back = v.get("acme").unwrap();
        assert_eq!(
            back.client_secret.unwrap().expose_secret(),
            "top-secret-value"
        );
    }

    #[test]
    fn encrypted_vault_hides_secrets_and_needs_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.json");
        let v = Vault::with_key(&path, Some(SecretString::from("k1".to_string())));
        v.update(|all| {
            *all = sample();
            Ok::<_, VaultError>(())
        })
        .unwrap();
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(!raw.contains("top-secret-value") && !raw.contains("acme"));
        assert_eq!(v.load().unwrap().len(), 1);
        let wrong = Vault::with_key(&path, Some(SecretString::from("k2".to_string())));
        assert!(matches!(wrong.load(), Err(VaultError::Key { .. })));
        let none = Vault::with_key(&path, None);
        let err = none.load().unwrap_err().to_string();
        assert!(err.contains(VAULT_KEY_ENV), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn vault_readable_by_others_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.json");
        let v = Vault::with_key(&path, None);
        v.update(|all| {
            *all = sample();
            Ok::<_, VaultError>(())
        })
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = v.load().unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(err.contains("644"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_mounted_key_with_a_secret_of_the_wrong_type_names_the_field_and_not_its_value() {
        let path = Path::new("/var/run/secrets/expense-sync/acme");
        for field in [
            "client_secret",
            "refresh_token",
            "assertion",
            "password",
            "access_token",
        ] {
            let text = format!(
                r#"{{"grant": "refresh_token", "client_id": "cid", "{field}": 987654321}}"#
            );
            let e = parse_mounted_connection(text.as_bytes(), path)
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{field}: {e}");
            assert!(!e.contains("987654321"), "{field}: the secret leaked: {e}");
        }
    }

    #[test]
    fn a_mounted_secret_keeps_tokens_in_memory_until_kubelet_swaps_in_a_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("mount");
        let key = |secret: &str| {
            format!(
                r#"{{"grant": "client_credentials", "profile": "oauth2", "accounts_url": "http://x/",
                    "client_id": "id", "client_secret": "{secret}"}}"#
            )
        };
        for (version, secret) in [("..v1", "s1"), ("..v2", "s2")] {
            std::fs::create_dir_all(mount.join(version)).unwrap();
            std::fs::write(mount.join(version).join("acme.json"), key(secret)).unwrap();
        }
        std::os::unix::fs::symlink("..v1", mount.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/acme.json", mount.join("acme.json")).unwrap();
        let v = Vault::open(Path::new(&format!(
            "{SECRET_DIR_PREFIX}{}",
            mount.display()
        )));
        assert!(v.is_read_only());
        let lock = v.lock().unwrap();
        let mut all = v.load().unwrap();
        assert_eq!(
            all["acme"].accounts_url, "http://x",
            "defaults from Connection::new"
        );
        assert_eq!(all["acme"].token_url, "http://x/oauth/token");
        all.get_mut("acme").unwrap().access_token = Some(SecretString::from("at-1".to_string()));
        v.save(&lock, &all).unwrap();
        drop(lock);
        let again = v.get("acme").unwrap();
        assert_eq!(again.access_token.unwrap().expose_secret(), "at-1");
        // kubelet's atomic update: `..data` now points at the new version.
        std::fs::remove_file(mount.join("..data")).unwrap();
        std::os::unix::fs::symlink("..v2", mount.join("..data")).unwrap();
        let fresh = v.get("acme").unwrap();
        assert_eq!(fresh.client_secret.unwrap().expose_secret(), "s2");
        assert!(fresh.access_token.is_none(), "new credentials start afresh");
        // Changing a setting is refused; nothing was written to the mount.
        let err = v
            .update(|all| {
                all.get_mut("acme").unwrap().client_id = "other".into();
                Ok::<_, VaultError>(())
            })
            .unwrap_err();
        assert!(matches!(err, VaultError::ReadOnly { .. }), "{err}");
        assert_eq!(std::fs::read_dir(&mount).unwrap().count(), 4);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let all = sample();
        let text = format!("{:?}", all["acme"]);
        assert!(!text.contains("top-secret-value"), "{text}");
        assert!(text.contains("[REDACTED]"));
    }
}
