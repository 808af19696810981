//! `expense-sync auth …`: add, login, list, refresh-all, revoke, remove.

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use secrecy::SecretString;

use super::login;
use super::oauth2::revoke_token;
use super::presets::Provider;
use super::tokens::VaultAuth;
use super::types::{AuthError, DEFAULT_ACCOUNTS_URL};
use super::vault::{
    ClientAuth, Connection, ConnectionStatus, GrantKind, Profile, Vault, VaultError, vault_path,
};
use crate::error::{Error, ExitCode};
use crate::http::{HttpClient, HttpConfig};

/// `auth` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Store a new connection (client and endpoints) in the vault; then run `auth login NAME`.
    Add(Box<AddArgs>),
    /// Authorise a connection and store its tokens (browser flow, or the connection's direct grant).
    Login {
        /// Connection name.
        name: String,
        /// Do not listen for the redirect: print the URL and read the pasted redirect URL (or code) from stdin.
        #[arg(long)]
        headless: bool,
        /// How long to wait for the browser redirect.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// List stored connections and their token status (never the secrets).
    List,
    /// Refresh every authorised connection (run daily from cron; safe while pipelines run).
    RefreshAll,
    /// Revoke a connection's tokens at the provider (when it can) and forget them.
    Revoke {
        /// Connection name.
        name: String,
    },
    /// Delete a connection from the vault.
    Remove {
        /// Connection name.
        name: String,
    },
}

/// `auth add` options.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Connection name, e.g. the organisation (`acme`).
    name: String,
    /// Token dialect: `fyle` (JSON, client secret in the body; the default) or `oauth2` (standard, form-encoded).
    #[arg(long, value_enum, conflicts_with = "provider")]
    profile: Option<Profile>,
    /// A known provider: fills in its server, endpoints and client authentication (`ringcentral`).
    #[arg(long, value_enum)]
    provider: Option<Provider>,
    /// How tokens are obtained.
    #[arg(long, value_enum, default_value = "authorization-code")]
    grant: GrantKind,
    /// Accounts server; token, authorize and revoke URLs default beneath it
    /// (default: Fyle's, or the provider's, e.g. https://platform.ringcentral.com).
    #[arg(long)]
    accounts_url: Option<String>,
    /// Token endpoint (default `{accounts_url}/oauth/token`).
    #[arg(long)]
    token_url: Option<String>,
    /// Authorization endpoint.
    #[arg(long)]
    authorize_url: Option<String>,
    /// Revocation endpoint (RFC 7009).
    #[arg(long)]
    revoke_url: Option<String>,
    /// The app's client id.
    #[arg(long)]
    client_id: String,
    /// Environment variable holding the client secret (omit for a public client).
    #[arg(long)]
    client_secret_env: Option<String>,
    /// Client authentication at the token endpoint (oauth2 profile).
    #[arg(long, value_enum)]
    client_auth: Option<ClientAuth>,
    /// Loopback redirect URI registered with the app (port 0: any free port).
    #[arg(long)]
    redirect_uri: Option<String>,
    /// Scope to request.
    #[arg(long)]
    scope: Option<String>,
    /// Do not use PKCE (oauth2 profile uses S256 by default).
    #[arg(long)]
    no_pkce: bool,
    /// Environment variable holding the JWT credential (jwt-bearer grant).
    #[arg(long)]
    jwt_env: Option<String>,
    /// User name (password grant).
    #[arg(long)]
    username: Option<String>,
    /// Environment variable holding the password (password grant).
    #[arg(long)]
    password_env: Option<String>,
    /// Environment variable holding an internal app's refresh token (refresh-token grant).
    #[arg(long)]
    refresh_token_env: Option<String>,
    /// Replace an existing connection of that name.
    #[arg(long)]
    replace: bool,
}

fn env_secret(var: &Option<String>, flag: &str) -> Result<Option<SecretString>, Error> {
    let Some(var) = var else { return Ok(None) };
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(Some(SecretString::from(v.trim().to_string()))),
        _ => Err(Error::Auth(format!(
            "{flag} names environment variable {var}, which is not set or empty; export it first"
        ))),
    }
}

fn http() -> Result<HttpClient, Error> {
    HttpClient::new(&HttpConfig::default()).map_err(|e| Error::Internal(e.to_string()))
}

/// Runs an `auth` subcommand against the vault at `vault` (or the default).
pub async fn run(cmd: AuthCommand, vault: Option<PathBuf>) -> Result<ExitCode, Error> {
    let vault = Vault::open(&vault_path(vault.as_deref()));
    // Tokens a read-only vault would keep only in memory die with this
    // process: refuse the commands that exist to store something.
    let changes = match &cmd {
        AuthCommand::Add(_) => Some("`auth add` cannot store a connection"),
        AuthCommand::Login { .. } => Some("`auth login` cannot store the tokens it obtains"),
        AuthCommand::Revoke { .. } => Some("`auth revoke` cannot forget the stored tokens"),
        AuthCommand::Remove { .. } => Some("`auth remove` cannot delete a connection"),
        AuthCommand::List | AuthCommand::RefreshAll => None,
    };
    if let Some(what) = changes.filter(|_| vault.is_read_only()) {
        return Err(AuthError::Vault(VaultError::ReadOnly {
            path: vault.path().to_path_buf(),
            what: what.to_string(),
        })
        .into());
    }
    match cmd {
        AuthCommand::Add(args) => {
            let AddArgs {
                name,
                profile,
                provider,
                grant,
                accounts_url,
                token_url,
                authorize_url,
                revoke_url,
                client_id,
                client_secret_env,
                client_auth,
                redirect_uri,
                scope,
                no_pkce,
                jwt_env,
                username,
                password_env,
                refresh_token_env,
                replace,
            } = *args;
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(Error::Auth(format!(
                    "connection name `{name}` must use only letters, digits, `-`, `_` and `.`"
                )));
            }
            let mut c = match provider {
                Some(p) => p.connection(grant, accounts_url.as_deref(), &client_id),
                None => Connection::new(
                    profile.unwrap_or(Profile::Fyle),
                    grant,
                    accounts_url.as_deref().unwrap_or(DEFAULT_ACCOUNTS_URL),
                    &client_id,
                ),
            };
            let profile = c.profile;
            if let Some(u) = token_url {
                c.token_url = u;
            }
            if authorize_url.is_some() {
                c.authorize_url = authorize_url;
            }
            if revoke_url.is_some() {
                c.revoke_url = revoke_url;
            }
            c.client_secret = env_secret(&client_secret_env, "--client-secret-env")?;
            c.client_auth = client_auth.unwrap_or(if c.client_secret.is_some() {
                c.client_auth
            } else {
                ClientAuth::Body
            });
            if redirect_uri.is_some() {
                c.redirect_uri = redirect_uri;
            }
            c.scope = scope;
            c.pkce = c.pkce && !no_pkce;
            c.assertion = env_secret(&jwt_env, "--jwt-env")?;
            c.username = username;
            c.password = env_secret(&password_env, "--password-env")?;
            c.refresh_token = env_secret(&refresh_token_env, "--refresh-token-env")?;
            let missing = match grant {
                GrantKind::JwtBearer if c.assertion.is_none() => Some("--jwt-env"),
                GrantKind::Password if c.username.is_none() || c.password.is_none() => {
                    Some("--username and --password-env")
                }
                GrantKind::RefreshToken if c.refresh_token.is_none() => Some("--refresh-token-env"),
                GrantKind::ClientCredentials if c.client_secret.is_none() => {
                    Some("--client-secret-env")
                }
                _ => None,
            };
            if let Some(m) = missing {
                return Err(Error::Auth(format!("the {grant:?} grant needs {m}")));
            }
            if profile == Profile::Fyle && c.client_secret.is_none() {
                return Err(Error::Auth(
                    "Fyle apps authenticate with their client secret: give --client-secret-env"
                        .into(),
                ));
            }
            vault.update(|all| {
                if all.contains_key(&name) && !replace {
                    return Err(Error::Auth(format!(
                        "connection `{name}` already exists in {}; use --replace, or `auth remove {name}` first",
                        vault.path().display()
                    )));
                }
                all.insert(name.clone(), c);
                Ok(())
            })?;
            eprintln!(
                "added connection `{name}` to {}; now run `expense-sync auth login {name}`",
                vault.path().display()
            );
            Ok(ExitCode::Ok)
        }
        AuthCommand::Login {
            name,
            headless,
            timeout,
        } => {
            let conn = vault.get(&name).map_err(AuthError::from)?;
            let http = http()?;
            if conn.grant != GrantKind::AuthorizationCode {
                login::login_direct(&vault, &http, &name).await?;
                eprintln!("connection `{name}` is authorised");
                return Ok(ExitCode::Ok);
            }
            let mut pending = login::begin(&name, &conn, !headless).await?;
            eprintln!(
                "Open this URL in a browser and authorise the app:\n\n  {}\n",
                pending.authorize_url
            );
            let code = if headless {
                eprintln!(
                    "After authorising, the browser is sent to {} (the page may fail to load).\n\
                     Paste that whole URL here (or just the code) and press Enter:",
                    pending.redirect_uri
                );
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .map_err(|e| Error::Auth(format!("cannot read the pasted URL: {e}")))?;
                pending.code_from_pasted(&line)?
            } else {
                eprintln!("Waiting for the redirect on {} …", pending.redirect_uri);
                pending.wait(timeout).await?
            };
            pending.complete(&vault, &http, &code).await?;
            eprintln!(
                "connection `{name}` is authorised; tokens saved to {}",
                vault.path().display()
            );
            Ok(ExitCode::Ok)
        }
        AuthCommand::List => {
            let all = vault.load().map_err(AuthError::from)?;
            if all.is_empty() {
                eprintln!("no connections in {}", vault.path().display());
                return Ok(ExitCode::Ok);
            }
            println!(
                "{:<20} {:<7} {:<19} {:<17} {:<24} {:<21} LAST_ERROR",
                "NAME", "PROFILE", "GRANT", "STATUS", "CLIENT_ID", "ACCESS_EXPIRES"
            );
            for (name, c) in &all {
                let grant = serde_json::to_value(c.grant)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let profile = match c.profile {
                    Profile::Fyle => "fyle",
                    Profile::Oauth2 => "oauth2",
                };
                println!(
                    "{:<20} {:<7} {:<19} {:<17} {:<24} {:<21} {}",
                    name,
                    profile,
                    grant,
                    c.status.as_str(),
                    c.client_id,
                    c.access_expires_at
                        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                        .unwrap_or_else(|| "-".into()),
                    c.last_error.as_deref().unwrap_or("-")
                );
            }
            Ok(ExitCode::Ok)
        }
        AuthCommand::RefreshAll => refresh_all(&vault).await,
        AuthCommand::Revoke { name } => {
            let conn = vault.get(&name).map_err(AuthError::from)?;
            let http = http()?;
            let mut revoked_remotely = false;
            if conn.profile == Profile::Oauth2 && conn.revoke_url.is_some() {
                let (token, hint) = match (&conn.refresh_token, &conn.access_token) {
                    (Some(r), _) => (Some(r), "refresh_token"),
                    (None, Some(a)) => (Some(a), "access_token"),
                    _ => (None, ""),
                };
                if let Some(t) = token {
                    revoke_token(&http, &conn, t, hint).await.map_err(|e| {
                        Error::Auth(format!(
                            "the provider did not confirm revocation of `{name}` ({e}); the tokens are kept, try again"
                        ))
                    })?;
                    revoked_remotely = true;
                }
            }
            vault
                .update(|all| {
                    let c = all.get_mut(&name).ok_or_else(|| vault.unknown(&name))?;
                    c.refresh_token = None;
                    c.access_token = None;
                    c.access_expires_at = None;
                    c.refresh_expires_at = None;
                    c.status = ConnectionStatus::Revoked;
                    c.last_error = Some("revoked with `auth revoke`".into());
                    Ok::<_, VaultError>(())
                })
                .map_err(AuthError::from)?;
            if revoked_remotely {
                eprintln!(
                    "revoked the tokens of `{name}` at the provider and removed them from the vault"
                );
            } else {
                eprintln!(
                    "removed the tokens of `{name}` from the vault; this provider has no revocation endpoint, \
                     so also remove the app's access on the provider's side (Fyle: Settings → Integrations → Custom Apps)"
                );
            }
            Ok(ExitCode::Ok)
        }
        AuthCommand::Remove { name } => {
            vault
                .update(|all| {
                    all.remove(&name)
                        .map(|_| ())
                        .ok_or_else(|| vault.unknown(&name))
                })
                .map_err(AuthError::from)?;
            eprintln!(
                "removed connection `{name}` from {} (tokens were not revoked at the provider; use `auth revoke` for that)",
                vault.path().display()
            );
            Ok(ExitCode::Ok)
        }
    }
}

/// Refreshes every connection that has been authorised; reports each.
pub async fn refresh_all(vault: &Vault) -> Result<ExitCode, Error> {
    let all = vault.load().map_err(AuthError::from)?;
    let http = http()?;
    let (mut failed, mut reconnect) = (0, 0);
    for (name, c) in &all {
        if c.status == ConnectionStatus::New {
            println!("skip {name}: never logged in (run `expense-sync auth login {name}`)");
            continue;
        }
        let auth = VaultAuth::new(vault.clone(), name, http.clone());
        match auth.access_token(None, true).await {
            Ok(t) => println!(
                "ok   {name}: refreshed; access token valid until {}",
                t.expires_at.format("%Y-%m-%dT%H:%M:%SZ")
            ),
            Err(
                e @ (AuthError::ReconnectNeeded { .. }
                | AuthError::RefreshLost { .. }
                | AuthError::RotatedInReadOnlyVault { .. }),
            ) => {
                reconnect += 1;
                println!("FAIL {name}: {e}");
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {name}: {e}");
            }
        }
    }
    Ok(if failed > 0 {
        ExitCode::Auth
    } else if reconnect > 0 {
        ExitCode::Reconnect
    } else {
        ExitCode::Ok
    })
}
