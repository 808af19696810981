//! A local, faithful stand-in for the Fyle platform, for demos and tests.
//!
//! Two HTTP servers on 127.0.0.1: the *accounts* server (`/oauth/token`,
//! `/oauth/cluster`) and the *cluster* (data) server
//! (`/platform/v1/spender/my_profile`, `/platform/v1/admin/{resource}`).
//! Data is generated deterministically from a seed and conforms to the
//! OpenAPI reference (`expense_out` and friends); list endpoints implement
//! `offset`/`limit`/`order` and PostgREST filters. Faults (429 bursts, 5xx,
//! latency, dropped or truncated responses), token expiry and concurrent
//! data changes can be injected while a client runs.
//!
//! Quirks kept on purpose because the real API has them: timestamps are
//! Python `isoformat()` (no fraction when microseconds are zero), money is
//! printed like a Python float (`12.5`, `100.0`), and 502/503 bodies are HTML.

mod generate;
mod index;
mod model;
mod oauth;
mod query;
pub mod receiver;
mod reports;
mod respond;
pub mod ringcentral;
mod rng;
mod server;
mod state;
mod store;
mod values;

use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use server::Server;
use state::{Limiter, OAuthBook, Shared, TokenBook};
use store::Store;

pub use oauth::{REFRESH_TOKEN_TTL, SIM_PASSWORD, SIM_PUBLIC_CLIENT_ID, SIM_USERNAME};
pub use query::{DEFAULT_LIMIT, MAX_LIMIT};
pub use store::RESOURCES;
pub use values::Collation;

/// 401 body message for a missing, unknown, expired or revoked token (and a wrong refresh token).
pub const MSG_INVALID_TOKEN: &str = "invalid token";
/// 401 body message when `client_id`/`client_secret` do not match.
pub const MSG_INVALID_CLIENT: &str = "invalid client credentials";
/// 429 body message for rate limiting and injected 429 bursts.
pub const MSG_RATE_LIMITED: &str = "Too many requests, please retry after some time";
/// The one authorization code the accounts server accepts for `grant_type=authorization_code`.
pub const DEMO_AUTHORIZATION_CODE: &str = "sim-auth-code-7b1e";

/// How to build and run a simulator.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// All generated data is a pure function of this seed (and `expenses`).
    pub seed: u64,
    /// Number of expenses to generate; other resources scale with it.
    pub expenses: usize,
    /// Requests per second per client IP (token bucket, capacity = rate); `None` disables limiting.
    pub rate_limit: Option<u32>,
    /// Lifetime of issued access tokens.
    pub token_ttl: Duration,
    /// Faults active from the start; change them later with [`Simulator::set_faults`].
    pub faults: Faults,
    /// The only credentials the accounts server accepts.
    pub credentials: SimCredentials,
    /// Text collation of the simulated database, for `order=` and text comparisons alike.
    pub collation: Collation,
    /// The org's currency, in which every `amount` is printed (default `USD`);
    /// one of [`SIM_CURRENCIES`], e.g. `KWD` (3 decimals) or `JPY` (none).
    pub currency: String,
    /// Share (0–1) of expense `amount`/`tax_amount` values printed with
    /// binary-float noise, e.g. `0.30000000000000004` for 0.3 (default 0).
    pub float_noise: f64,
    /// Share (0–1) of personal-cash expenses with `is_reimbursable = false`
    /// (the employee paid but claims nothing back); default 0.
    pub non_reimbursable_cash: f64,
    /// How far the simulator's clock runs ahead of (negative: behind) the
    /// real one: its `Date` headers and the timestamps it stamps on changes.
    /// Zero by default; change it later with [`Simulator::set_clock_offset`].
    pub clock_offset: chrono::TimeDelta,
}

/// Org currencies the simulator can use, with their ISO 4217 minor units.
pub const SIM_CURRENCIES: &[(&str, u32)] = &[
    ("USD", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("INR", 2),
    ("KWD", 3),
    ("BHD", 3),
    ("OMR", 3),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
];

/// The [`SIM_CURRENCIES`] entry for `code` (case-insensitive).
pub fn sim_currency(code: &str) -> Option<(&'static str, u32)> {
    SIM_CURRENCIES
        .iter()
        .find(|(c, _)| c.eq_ignore_ascii_case(code))
        .copied()
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            expenses: 500,
            rate_limit: Some(10),
            token_ttl: Duration::from_secs(3600),
            faults: Faults::default(),
            credentials: SimCredentials::default(),
            collation: Collation::C,
            currency: "USD".into(),
            float_noise: 0.0,
            non_reimbursable_cash: 0.0,
            clock_offset: chrono::TimeDelta::zero(),
        }
    }
}

/// Injected failures, applied to data (`/platform/...`) requests unless noted.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Probability that a data request answers 500, 502 or 503 (seeded).
    pub error_rate: f64,
    /// The next N data requests answer 429 with `Retry-After: 1`.
    pub burst_429: u32,
    /// Delay added before every response of both servers.
    pub latency: Duration,
    /// Probability that a data request gets no response (connection closed)
    /// or a truncated body (half the bytes of the promised Content-Length), 50/50.
    pub drop_rate: f64,
    /// Expenses changed per second in the background (new `updated_at`, amount
    /// or state), as users edit data while clients page; 0 = off.
    pub mutations_per_sec: u32,
    /// Background changes come as bulk updates of this many expenses sharing
    /// one `updated_at` (a nightly job, an approval of a whole report); 0 or 1 = one at a time.
    pub bulk_update_size: u32,
    /// Probability that a list page is cut short (fewer rows than `limit`
    /// although more match), as APIs that cap pages by bytes or time do.
    pub short_page_rate: f64,
    /// Added to every list `count`: the server promises records it never returns.
    pub count_excess: u64,
    /// How the server mishandles `and=(…)`/`or=(…)` filters, i.e. a client's seek condition.
    pub seek_fault: SeekFault,
    /// Write-back calls (`accounting_export_summary/bulk`) answer this status
    /// with a Fyle error body instead of recording anything; `None` = off.
    pub writeback_status: Option<u16>,
    /// The next N successful answers of the accounts server's `/oauth/token`
    /// (either dialect) are lost *after* the grant took effect: a rotating
    /// refresh token is already spent, its successor never arrives.
    pub lost_token_answers: u32,
    /// How those token answers are lost.
    pub token_fault: TokenFault,
    /// The next N data requests, when they succeed, are cut in half mid-JSON but framed
    /// as complete (Content-Length of the cut body), as a proxy that re-frames
    /// a cut-off upstream does: HTTP 200 with invalid JSON.
    pub cut_json_bodies: u32,
}

/// A server bug in the logic-group filters a keyset pager seeks with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeekFault {
    /// Filters work as documented.
    #[default]
    None,
    /// `id.gt.X` inside a group acts as `id.gte.X`: the boundary record comes again.
    RepeatBoundary,
    /// `and=`/`or=` are ignored: every page starts from the beginning again.
    Ignore,
}

impl std::str::FromStr for SeekFault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(SeekFault::None),
            "repeat-boundary" => Ok(SeekFault::RepeatBoundary),
            "ignore" => Ok(SeekFault::Ignore),
            _ => Err(format!(
                "unknown seek fault \"{s}\": use none, repeat-boundary or ignore"
            )),
        }
    }
}

/// How a token answer is lost (see [`Faults::lost_token_answers`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenFault {
    /// The connection is closed without a response.
    #[default]
    Reset,
    /// Headers and half the body, then the connection is cut.
    Truncate,
    /// A 502 from a gateway in front of the token service.
    ServerError,
}

/// Client credentials of the simulated internal app.
#[derive(Clone, PartialEq, Eq)]
pub struct SimCredentials {
    /// OAuth client id (not secret).
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: String,
    /// Long-lived refresh token.
    pub refresh_token: String,
}

impl Default for SimCredentials {
    fn default() -> Self {
        SimCredentials {
            client_id: "sim-client-id".into(),
            client_secret: "sim-client-secret-5f2c".into(),
            refresh_token: "sim-refresh-token-9d41".into(),
        }
    }
}

impl fmt::Debug for SimCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimCredentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("refresh_token", &"[redacted]")
            .finish()
    }
}

/// One request as the simulator saw it (never the token itself).
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    /// When the request arrived (before any injected latency): what a rate limit measures.
    pub at: Instant,
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// Path without the query, e.g. `/platform/v1/admin/expenses`.
    pub path: String,
    /// Raw (still percent-encoded) query string, empty if none.
    pub query: String,
    /// Status sent; 0 when the connection was dropped without a response.
    pub status: u16,
    /// `"accounts"` or `"cluster"`.
    pub server: &'static str,
    /// Whether an `Authorization` header was sent.
    pub authorization_present: bool,
}

struct Inner {
    shared: Arc<Shared>,
    accounts_url: String,
    cluster_url: String,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Servers stop when the last handle goes away, even without shutdown().
        let _ = self.shutdown.send(true);
    }
}

/// Handle to a running simulator; clones share the same servers and data.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator")
            .field("accounts_url", &self.inner.accounts_url)
            .field("cluster_url", &self.inner.cluster_url)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Starts both servers on free ports of 127.0.0.1.
    pub async fn start(cfg: SimConfig) -> std::io::Result<Simulator> {
        Self::start_on(cfg, 0, 0).await
    }

    /// Starts both servers on the given ports of 127.0.0.1 (0 = any free port).
    pub async fn start_on(
        cfg: SimConfig,
        accounts_port: u16,
        cluster_port: u16,
    ) -> std::io::Result<Simulator> {
        let accounts = TcpListener::bind(("127.0.0.1", accounts_port)).await?;
        let cluster = TcpListener::bind(("127.0.0.1", cluster_port)).await?;
        let accounts_url = format!("http://127.0.0.1:{}", accounts.local_addr()?.port());
        let cluster_url = format!("http://127.0.0.1:{}", cluster.local_addr()?.port());
        let (seed, n, noise, unreimbursed, collation) = (
            cfg.seed,
            cfg.expenses,
            cfg.float_noise,
            cfg.non_reimbursable_cash,
            cfg.collation,
        );
        let currency = sim_currency(&cfg.currency).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "simulator currency `{}` is not supported; use one of {}",
                    cfg.currency,
                    SIM_CURRENCIES
                        .iter()
                        .map(|c| c.0)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        let offset_us = cfg.clock_offset.num_microseconds().unwrap_or(0);
        let mut store = tokio::task::spawn_blocking(move || {
            let mut s = Store::with_money(seed, n, currency, noise, unreimbursed);
            s.collation = collation;
            s
        })
        .await
        .map_err(std::io::Error::other)?;
        store.clock_offset_us = offset_us;
        let shared = Arc::new(Shared {
            store: RwLock::new(store),
            credentials: cfg.credentials,
            token_ttl: cfg.token_ttl,
            faults: Mutex::new(cfg.faults),
            fault_rng: Mutex::new(rng::Rng::new(cfg.seed ^ 0xFA17)),
            tokens: Mutex::new(TokenBook::new(cfg.seed)),
            limiter: Mutex::new(Limiter::new(cfg.rate_limit)),
            log: Mutex::new(Vec::new()),
            cluster_url: cluster_url.clone(),
            oauth: Mutex::new(OAuthBook::new(cfg.seed)),
            clock_offset_us: std::sync::atomic::AtomicI64::new(offset_us),
        });
        let (tx, rx) = watch::channel(false);
        let mutator = tokio::spawn(mutate_in_background(Arc::clone(&shared), rx.clone()));
        let tasks = vec![
            mutator,
            tokio::spawn(server::serve(
                accounts,
                Arc::clone(&shared),
                Server::Accounts,
                rx.clone(),
            )),
            tokio::spawn(server::serve(
                cluster,
                Arc::clone(&shared),
                Server::Cluster,
                rx,
            )),
        ];
        Ok(Simulator {
            inner: Arc::new(Inner {
                shared,
                accounts_url,
                cluster_url,
                shutdown: tx,
                tasks: Mutex::new(tasks),
            }),
        })
    }

    /// Base URL of the accounts server, e.g. `http://127.0.0.1:41234`.
    pub fn accounts_url(&self) -> String {
        self.inner.accounts_url.clone()
    }

    /// Base URL of the data server; what `POST /oauth/cluster` returns as `cluster_domain`.
    pub fn cluster_url(&self) -> String {
        self.inner.cluster_url.clone()
    }

    /// The credentials the accounts server accepts.
    pub fn credentials(&self) -> &SimCredentials {
        &self.inner.shared.credentials
    }

    /// Current records of an admin resource (`"expenses"`, `"reports"`, …), sorted by id; empty if unknown.
    pub fn ground_truth(&self, resource: &str) -> Vec<serde_json::Value> {
        self.inner
            .shared
            .store
            .read()
            .expect("store")
            .ground_truth(resource)
    }

    /// Every request both servers have answered (or dropped) so far, in order.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.inner.shared.log.lock().expect("log").clone()
    }

    /// Replaces the active faults (a new `burst_429` restarts the burst count).
    pub fn set_faults(&self, faults: Faults) {
        *self.inner.shared.faults.lock().expect("faults") = faults;
    }

    /// Sets how far the simulator's clock runs ahead of (negative: behind)
    /// the real one, from now on (see [`SimConfig::clock_offset`]).
    pub fn set_clock_offset(&self, offset: chrono::TimeDelta) {
        let us = offset.num_microseconds().unwrap_or(0);
        let shared = &self.inner.shared;
        shared
            .clock_offset_us
            .store(us, std::sync::atomic::Ordering::Relaxed);
        shared.store.write().expect("store").clock_offset_us = us;
    }

    /// Changes the per-IP rate limit at runtime (`None` = off).
    pub fn set_rate_limit(&self, rate_limit: Option<u32>) {
        *self.inner.shared.limiter.lock().expect("limiter") = Limiter::new(rate_limit);
    }

    /// Revokes every access token issued so far; later requests with them get 401 "invalid token".
    pub fn expire_tokens(&self) {
        self.inner
            .shared
            .tokens
            .lock()
            .expect("tokens")
            .expire_all();
    }

    /// Mints a JWT credential for the JWT bearer grant, valid for `ttl`
    /// (what a provider's developer console issues).
    pub fn issue_jwt_credential(&self, ttl: Duration) -> String {
        self.inner
            .shared
            .oauth
            .lock()
            .expect("oauth")
            .issue_jwt(ttl)
    }

    /// Revokes a JWT credential: later JWT grants with it get `invalid_grant`.
    pub fn revoke_jwt_credential(&self, jwt: &str) {
        self.inner
            .shared
            .oauth
            .lock()
            .expect("oauth")
            .revoke_jwt(jwt);
    }

    /// Invalidates every refresh token issued by the OAuth flows (and their
    /// access tokens), as if they had expired or been revoked.
    pub fn revoke_refresh_tokens(&self) {
        let access = self
            .inner
            .shared
            .oauth
            .lock()
            .expect("oauth")
            .revoke_all_refresh();
        let mut tokens = self.inner.shared.tokens.lock().expect("tokens");
        for a in access {
            tokens.revoke(&a);
        }
    }

    /// Whether `refresh_token` (issued by an OAuth flow) would still be accepted.
    pub fn refresh_token_is_live(&self, refresh_token: &str) -> bool {
        self.inner
            .shared
            .oauth
            .lock()
            .expect("oauth")
            .refresh_is_live(refresh_token)
    }

    /// How long authorization codes stay redeemable (default 60 s).
    pub fn set_code_ttl(&self, ttl: Duration) {
        self.inner.shared.oauth.lock().expect("oauth").code_ttl = ttl;
    }

    /// Changes `n` random expenses: each gets a new `updated_at` (now, strictly
    /// increasing) and either a new amount or the next workflow state.
    pub fn mutate(&self, n: usize) {
        self.inner.shared.store.write().expect("store").mutate(n);
    }

    /// A check that a bearer token is an access token this simulator issued
    /// and still honours; lets a receiver accept OAuth tokens from it.
    pub fn token_checker(&self) -> receiver::TokenCheck {
        let shared = Arc::clone(&self.inner.shared);
        Arc::new(move |token: &str| shared.tokens.lock().expect("tokens").valid(token))
    }

    /// Changes `n` random expenses in one bulk update: like [`Simulator::mutate`]
    /// but all of them get the same new `updated_at`.
    pub fn bulk_update(&self, n: usize) {
        self.inner
            .shared
            .store
            .write()
            .expect("store")
            .bulk_update(n);
    }

    /// Expenses as they were at instant `at` (what a client could have seen
    /// then), sorted by id; other resources do not change.
    pub fn expenses_as_of(&self, at: chrono::DateTime<chrono::Utc>) -> Vec<serde_json::Value> {
        self.inner
            .shared
            .store
            .read()
            .expect("store")
            .expenses_as_of(at.timestamp_micros())
    }

    /// Deletes `n` random expenses and returns their ids (sorted).
    pub fn delete(&self, n: usize) -> Vec<String> {
        self.inner.shared.store.write().expect("store").delete(n)
    }

    /// Stops both servers and closes open connections.
    pub async fn shutdown(self) {
        let _ = self.inner.shutdown.send(true);
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().expect("tasks"));
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Applies `Faults::mutations_per_sec` in steps of 50 ms until shutdown.
async fn mutate_in_background(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let step = Duration::from_millis(50);
    let mut owed = 0.0f64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(step) => {}
            _ = stop.changed() => return,
        }
        let (rate, bulk) = {
            let f = shared.faults.lock().expect("faults");
            (f.mutations_per_sec, f.bulk_update_size as usize)
        };
        if rate == 0 {
            owed = 0.0;
            continue;
        }
        owed += f64::from(rate) * step.as_secs_f64();
        if bulk > 1 {
            while owed >= bulk as f64 {
                owed -= bulk as f64;
                shared.store.write().expect("store").bulk_update(bulk);
            }
            continue;
        }
        let n = owed.floor() as usize;
        if n > 0 {
            owed -= n as f64;
            shared.store.write().expect("store").mutate(n);
        }
    }
}

/// Runs a simulator for `expense-sync simulate` until Ctrl-C, printing its
/// URLs and the demo credentials (they only open this local simulator).
pub async fn run_until_ctrl_c(
    cfg: SimConfig,
    accounts_port: u16,
    cluster_port: u16,
) -> std::io::Result<()> {
    let expenses = cfg.expenses;
    let seed = cfg.seed;
    let sim = Simulator::start_on(cfg, accounts_port, cluster_port).await?;
    let c = sim.credentials();
    println!("Fyle simulator running ({expenses} expenses, seed {seed})");
    println!("  accounts server: {}", sim.accounts_url());
    println!("  cluster server:  {}", sim.cluster_url());
    println!();
    // Lines a shell can run as printed; FYLE_ACCOUNTS_URL overrides any
    // pipeline's connection.accounts_url, so every port works.
    println!("Demo credentials for this local simulator (paste into your shell):");
    println!("export FYLE_ACCOUNTS_URL={}", sim.accounts_url());
    println!("export FYLE_CLIENT_ID={}", c.client_id);
    println!("export FYLE_CLIENT_SECRET={}", c.client_secret);
    println!("export FYLE_REFRESH_TOKEN={}", c.refresh_token);
    println!();
    println!(
        "OAuth 2.0 apps (auth add/login): authorize at {}/app/developers/oauth/authorize",
        sim.accounts_url()
    );
    println!("  public client id (PKCE): {SIM_PUBLIC_CLIENT_ID}");
    println!("  password grant: {SIM_USERNAME} / {SIM_PASSWORD}");
    println!(
        "  JWT credential (24 h): SIM_JWT={}",
        sim.issue_jwt_credential(Duration::from_secs(24 * 3600))
    );
    println!();
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}
