//! The RingCentral call log as a [`Source`]: its token (a vault connection's,
//! reused across runs, or a JWT grant per run), windows on `startTime`, and
//! `check`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;
use url::Url;

use super::{CallLogPager, CallLogWindow, RingCentralSourceConfig};
use crate::auth::tokens::direct_grant;
use crate::auth::{Connection, Vault, VaultAuth};
use crate::common::Problem;
use crate::error::Error;
use crate::http::{HttpClient, HttpError, ServerClock};
use crate::sources::{
    BuildError, Credentials, Page, PagerStats, Probe, Source, SourceContext, Window,
};

/// How the source gets its access token.
enum Auth {
    /// A vault connection: its stored token is reused while fresh, and a
    /// rotated refresh token is saved before the new access token is used.
    Vault(VaultAuth),
    /// A connection described in the pipeline file (or given by the caller):
    /// one JWT grant per run, kept in memory.
    Direct {
        conn: Box<Connection>,
        http: HttpClient,
        token: tokio::sync::Mutex<Option<SecretString>>,
        grants: AtomicU64,
    },
}

impl Auth {
    /// A usable access token; `rejected` is one the API just refused.
    async fn token(&self, rejected: Option<&SecretString>) -> Result<SecretString, Error> {
        match self {
            Auth::Vault(v) => Ok(v.access_token(rejected, false).await?.access),
            Auth::Direct {
                conn,
                http,
                token,
                grants,
            } => {
                let mut held = token.lock().await;
                if let Some(t) = held.as_ref()
                    && rejected.is_none_or(|r| r.expose_secret() != t.expose_secret())
                {
                    return Ok(t.clone());
                }
                grants.fetch_add(1, Ordering::Relaxed);
                let tokens = direct_grant(http, conn, "connection").await.map_err(|e| {
                    Error::Auth(format!(
                        "RingCentral refused the JWT grant at {}: {e}. Check connection.client_id, \
                         connection.client_secret and connection.jwt (a JWT credential of a user \
                         allowed to read the company call log, issued for this app)",
                        conn.token_url
                    ))
                })?;
                *held = Some(tokens.access_token.clone());
                Ok(tokens.access_token)
            }
        }
    }

    fn grants(&self) -> u64 {
        match self {
            Auth::Vault(v) => v.grant_count(),
            Auth::Direct { grants, .. } => grants.load(Ordering::Relaxed),
        }
    }
}

/// The call log opened for one run.
pub struct RingCentralSource {
    cfg: RingCentralSourceConfig,
    http: HttpClient,
    auth: Arc<Auth>,
    /// The API server, e.g. `https://platform.ringcentral.com`.
    server: Url,
    /// Where the credentials came from, the first line `check` prints.
    origin: String,
}

impl RingCentralSource {
    /// The token source from given credentials, a vault connection, or `[connection]`.
    pub fn build(
        cfg: &RingCentralSourceConfig,
        ctx: SourceContext<'_>,
    ) -> Result<Self, BuildError> {
        let missing = || {
            BuildError::Config(vec![Problem::new(
                "connection",
                "is required but missing; e.g. [connection] vault = \"ringcentral\"",
            )])
        };
        let (auth, server, origin) = match (ctx.credentials, cfg.connection.as_ref()) {
            (Some(Credentials::RingCentral(conn)), _) => {
                let server = conn.accounts_url.clone();
                (
                    direct(*conn, ctx.http),
                    server,
                    "credentials given by the caller".to_string(),
                )
            }
            (Some(Credentials::Fyle(_)), _) => {
                return Err(BuildError::Other(Error::Internal(
                    "Fyle credentials were given for a RingCentral source".into(),
                )));
            }
            (None, None) => return Err(missing()),
            (None, Some(c)) => match &c.vault {
                Some(name) => {
                    let vault = Vault::open(&crate::auth::vault::vault_path(ctx.vault.as_deref()));
                    let stored = vault.get(name).map_err(|e| BuildError::Other(e.into()))?;
                    let origin =
                        format!("using connection `{name}` from {}", vault.path().display());
                    (
                        Auth::Vault(VaultAuth::new(vault, name, ctx.http.clone())),
                        stored.accounts_url,
                        origin,
                    )
                }
                None => {
                    let conn = c.resolve("connection").map_err(BuildError::Config)?;
                    let server = conn.accounts_url.clone();
                    let origin = format!("secrets resolved (client_id {})", conn.client_id);
                    (direct(conn, ctx.http), server, origin)
                }
            },
        };
        let server = Url::parse(&server).map_err(|e| {
            BuildError::Other(Error::Config(crate::common::ConfigError::single(
                ctx.file,
                "connection",
                format!("the connection's server `{server}` is not a URL ({e})"),
            )))
        })?;
        Ok(Self {
            cfg: cfg.clone(),
            http: ctx.http.clone(),
            auth: Arc::new(auth),
            server,
            origin,
        })
    }
}

fn direct(conn: Connection, http: &HttpClient) -> Auth {
    Auth::Direct {
        conn: Box::new(conn),
        http: http.clone(),
        token: tokio::sync::Mutex::new(None),
        grants: AtomicU64::new(0),
    }
}

/// The window's bounds as `dateFrom`/`dateTo`: both are always sent, since
/// the API otherwise means the last 24 hours; an open start is 1970.
fn window_bounds(window: Window) -> (DateTime<Utc>, DateTime<Utc>) {
    let from = window.from.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let to = window.to.unwrap_or_else(Utc::now);
    (from, to)
}

/// A pager over `window`, or `None` when the window is empty.
fn pager(
    cfg: &RingCentralSourceConfig,
    http: &HttpClient,
    server: &Url,
    token: SecretString,
    window: Window,
    per_page: u32,
) -> Result<Option<CallLogPager>, Error> {
    let (from, to) = window_bounds(window);
    if from >= to {
        return Ok(None);
    }
    let w = CallLogWindow {
        from,
        to,
        per_page,
        view: cfg.view,
    };
    let mut p = CallLogPager::new(http.clone(), server.as_str(), token, &w)
        .map_err(|m| Error::Source(format!("cannot page the RingCentral call log: {m}")))?;
    p.filter(&cfg.filter_pairs());
    Ok(Some(p))
}

/// The error of a failed call-log request, in RingCentral's words.
fn call_log_error(e: HttpError) -> Error {
    let hint = match &e {
        HttpError::Rejected { status: 403, .. } => {
            " — the app needs the ReadCallLog permission (app settings in the Developer Console) \
             and the user of the JWT credential the FullCompanyCallLog permission (an admin)"
        }
        HttpError::Unauthorized { .. } => {
            " — the access token was refused twice; run `expense-sync auth refresh-all` or reconnect"
        }
        _ => "",
    };
    let message = format!("reading the RingCentral call log failed: {e}{hint}");
    match e {
        HttpError::Unauthorized { .. } => Error::Auth(message),
        _ => Error::Source(message),
    }
}

/// Pages through `pager` into `pages`; a refused token is replaced once by a
/// fresh one and the same page asked for again.
async fn page_all(
    auth: &Auth,
    mut pager: CallLogPager,
    token: SecretString,
    pages: &mpsc::Sender<Page>,
) -> Result<PagerStats, Error> {
    let mut token = token;
    let mut refreshed = false;
    let mut stats = PagerStats::default();
    loop {
        match pager.next_page().await {
            Ok(Some(records)) => {
                refreshed = false;
                stats.pages += 1;
                stats.records += records.len() as u64;
                stats.duplicates = pager.duplicates;
                if pages.send(Page::new(records, None)).await.is_err() {
                    // The run is stopping.
                    return Ok(stats);
                }
            }
            Ok(None) => return Ok(stats),
            Err(HttpError::Unauthorized { .. }) if !refreshed => {
                refreshed = true;
                token = auth.token(Some(&token)).await?;
                pager.set_token(token.clone());
            }
            Err(e) => return Err(call_log_error(e)),
        }
    }
}

impl Source for RingCentralSource {
    fn cursor(&self) -> &str {
        self.cfg.cursor()
    }

    fn safety_lag(&self) -> Duration {
        self.cfg.safety_lag
    }

    /// One request at a time over a fixed window.
    fn reproducible_order(&self) -> bool {
        true
    }

    fn make_reproducible(&mut self) {}

    fn open(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.auth.token(None).await?;
            Ok(())
        })
    }

    fn grants(&self) -> u64 {
        self.auth.grants()
    }

    /// The latest `Date` the API server sent: reading it anew would cost a
    /// request of the Heavy group, which allows 10 a minute.
    fn server_clock(&self) -> BoxFuture<'_, Result<Option<ServerClock>, Error>> {
        Box::pin(async move { Ok(self.http.server_clock(&self.server)) })
    }

    fn latest_server_clock(&self) -> BoxFuture<'_, Result<Option<ServerClock>, Error>> {
        Box::pin(async move { Ok(self.http.server_clock(&self.server)) })
    }

    fn fetch(
        &self,
        window: Window,
        pages: mpsc::Sender<Page>,
    ) -> BoxFuture<'static, Result<PagerStats, Error>> {
        let auth = Arc::clone(&self.auth);
        let cfg = self.cfg.clone();
        let http = self.http.clone();
        let server = self.server.clone();
        Box::pin(async move {
            let token = auth.token(None).await?;
            match pager(&cfg, &http, &server, token.clone(), window, cfg.per_page)? {
                Some(p) => page_all(&auth, p, token, &pages).await,
                None => Ok(PagerStats::default()),
            }
        })
    }

    /// The first page's request, and one record of it to prove access (the
    /// call log does not count matches).
    fn probe(&self, window: Window) -> BoxFuture<'_, Result<Probe, Error>> {
        Box::pin(async move {
            let token = self.auth.token(None).await?;
            let first = pager(
                &self.cfg,
                &self.http,
                &self.server,
                token.clone(),
                window,
                self.cfg.per_page,
            )?;
            let first_page = first.as_ref().and_then(|p| p.next_url()).map_or_else(
                || "(nothing: the window is empty)".to_string(),
                Url::to_string,
            );
            let (count_probe, count) =
                match pager(&self.cfg, &self.http, &self.server, token, window, 1)? {
                    Some(mut p) => {
                        let url = p.next_url().map(Url::to_string).unwrap_or_default();
                        let records = p
                            .next_page()
                            .await
                            .map_err(call_log_error)?
                            .unwrap_or_default();
                        // One record and no next page: the window holds exactly that many.
                        let count = p.next_url().is_none().then_some(records.len() as u64);
                        (url, count)
                    }
                    None => (first_page.clone(), Some(0)),
                };
            Ok(Probe {
                count_probe,
                count,
                first_page,
                page_size: self.cfg.per_page,
                concurrency: 1,
            })
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<Option<(String, crate::ExitCode)>, Error>> {
        println!("ok   {}", self.origin);
        Box::pin(async move {
            let token = self.auth.token(None).await?;
            println!("ok   access token for {}", self.server);
            let now = Utc::now();
            let window = Window {
                from: Some(now - chrono::Duration::hours(24)),
                to: Some(now),
            };
            let Some(mut p) = pager(&self.cfg, &self.http, &self.server, token, window, 1)? else {
                return Ok(None);
            };
            match p.next_page().await {
                Ok(_) => {
                    println!("ok   the call log answers (one record of the last 24 hours read)");
                    Ok(None)
                }
                Err(e @ HttpError::Rejected { status: 403, .. }) => {
                    let code = crate::ExitCode::Auth;
                    Ok(Some((call_log_error(e).to_string(), code)))
                }
                Err(e) => Err(call_log_error(e)),
            }
        })
    }
}
