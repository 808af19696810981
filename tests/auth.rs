//! Every way an app authenticates, end to end over loopback against the
//! simulator: Fyle OAuth 2.0 apps, the standard profile (PKCE, Basic and
//! body client auth, rotation, JWT, password, client credentials), the
//! credential vault and its commands, and the "reconnect needed" failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use expense_sync::auth::login;
use expense_sync::auth::oauth2::{Grant, TokenError, pkce_pair, request_token};
use expense_sync::auth::vault::{ClientAuth, ConnectionStatus, GrantKind, Profile, VaultError};
use expense_sync::auth::{AuthError, Connection, FyleSession, Vault, VaultAuth};
use expense_sync::http::{HttpClient, HttpConfig};
use expense_sync::pipeline::{self, RunOptions};
use expense_sync::simulator::{
    Faults, SIM_PASSWORD, SIM_PUBLIC_CLIENT_ID, SIM_USERNAME, Simulator, TokenFault,
};
use expense_sync::sources::fyle::FyleClient;
use expense_sync::{ExitCode, config};
use secrecy::{ExposeSecret, SecretString};

const BIN: &str = env!("CARGO_BIN_EXE_expense-sync");

fn http() -> HttpClient {
    HttpClient::new(&HttpConfig {
        requests_per_second: 1000.0,
        ..HttpConfig::default()
    })
    .unwrap()
}

fn new_vault(dir: &Path) -> Vault {
    Vault::with_key(&dir.join("vault.json"), None)
}

fn add(vault: &Vault, name: &str, c: Connection) {
    vault
        .update(|all| {
            all.insert(name.to_string(), c);
            Ok::<_, VaultError>(())
        })
        .unwrap();
}

fn secret(s: &str) -> Option<SecretString> {
    Some(SecretString::from(s.to_string()))
}

fn fyle_app(sim: &Simulator) -> Connection {
    let c = sim.credentials();
    let mut conn = Connection::new(
        Profile::Fyle,
        GrantKind::AuthorizationCode,
        &sim.accounts_url(),
        &c.client_id,
    );
    conn.client_secret = secret(&c.client_secret);
    conn.redirect_uri = Some("http://127.0.0.1:0/callback".into());
    conn
}

fn standard_app(sim: &Simulator, grant: GrantKind) -> Connection {
    let c = sim.credentials();
    let mut conn = Connection::new(Profile::Oauth2, grant, &sim.accounts_url(), &c.client_id);
    conn.client_secret = secret(&c.client_secret);
    conn.redirect_uri = Some("http://127.0.0.1:0/callback".into());
    conn
}

/// Plays the browser: follows the authorize URL's redirect to the loopback listener.
async fn login_in_browser(vault: &Vault, http: &HttpClient, name: &str) {
    let conn = vault.get(name).unwrap();
    let mut pending = login::begin(name, &conn, true).await.unwrap();
    let url = pending.authorize_url.clone();
    let browser = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status().as_u16()) });
    let code = pending.wait(Duration::from_secs(20)).await.unwrap();
    assert_eq!(browser.await.unwrap().unwrap(), 200);
    pending.complete(vault, http, &code).await.unwrap();
}

/// Asks the authorize endpoint for a code without following the redirect.
async fn authorize_redirect(url: &url::Url) -> url::Url {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client.get(url.clone()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 302, "{:?}", resp.text().await);
    url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap()
}

fn query(u: &url::Url, k: &str) -> String {
    u.query_pairs()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

async fn profile_with(vault: &Vault, name: &str) -> Result<serde_json::Value, String> {
    let session =
        FyleSession::from_vault(http(), vault.clone(), name).map_err(|e| e.to_string())?;
    FyleClient::new(Arc::new(session))
        .my_profile()
        .await
        .map_err(|e| e.to_string())
}

fn vault_pipeline(name: &str, connection: &str) -> String {
    format!(
        r#"
[pipeline]
name = "{name}"

[connection]
vault = "{connection}"

[source]
type = "fyle"
resource = "expenses"
safety_lag = "0s"

{TEST_COLUMNS}

[[sinks]]
type = "csv"
path = "{{pipeline}}.csv"
"#
    )
}

async fn run_vault_pipeline(
    vault: &Vault,
    name: &str,
    conn: &str,
    out: &Path,
) -> pipeline::RunOutcome {
    let p = config::load_str(&vault_pipeline(name, conn), Path::new("t.toml")).unwrap();
    let opts = RunOptions {
        output_dir: Some(out.to_path_buf()),
        vault: Some(vault.path().to_path_buf()),
        ..RunOptions::default()
    };
    pipeline::run(&p, &http(), &opts).await
}

fn run_bin(
    args: &[&str],
    cwd: &Path,
    env: &[(&str, &str)],
) -> impl std::future::Future<Output = Output> + use<> {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("EXPENSE_SYNC_LOG")
        .env_remove("EXPENSE_SYNC_VAULT_KEY")
        .env_remove("EXPENSE_SYNC_VAULT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    async move { cmd.output().await.expect("binary runs") }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn vault_arg(v: &Vault) -> String {
    v.path().display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fyle_oauth_app_login_over_loopback_then_pipeline_runs_from_the_vault() {
    let sim = simulator(300, 1, None).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    add(&vault, "acme", fyle_app(&sim));
    login_in_browser(&vault, &http(), "acme").await;
    let stored = vault.get("acme").unwrap();
    assert_eq!(stored.status, ConnectionStatus::Ok);
    let rt = stored.refresh_token.clone().expect("refresh token stored");
    assert!(sim.refresh_token_is_live(rt.expose_secret()));
    // The Fyle dialect: JSON body to /oauth/token.
    assert!(
        sim.request_log()
            .iter()
            .any(|r| r.path == "/app/developers/oauth/authorize")
    );

    let out = dir.path().join("out");
    let outcome = run_vault_pipeline(&vault, "acme_expenses", "acme", &out).await;
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(outcome.summary.records_out, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_login_with_pkce_and_basic_auth_reaches_the_api() {
    let sim = simulator(20, 2, None).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let conn = standard_app(&sim, GrantKind::AuthorizationCode);
    assert!(conn.pkce && conn.client_auth == ClientAuth::Basic);
    add(&vault, "rc", conn);
    login_in_browser(&vault, &http(), "rc").await;
    let profile = profile_with(&vault, "rc").await.unwrap();
    assert!(profile["data"].is_object(), "{profile}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_client_authenticates_with_client_id_in_the_body() {
    let sim = simulator(20, 3, None).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let mut conn = standard_app(&sim, GrantKind::AuthorizationCode);
    conn.client_id = SIM_PUBLIC_CLIENT_ID.into();
    conn.client_secret = None;
    conn.client_auth = ClientAuth::Body;
    add(&vault, "spa", conn);
    login_in_browser(&vault, &http(), "spa").await;
    // Refresh (rotation) works for the public client too.
    let before = vault.get("spa").unwrap().refresh_token.unwrap();
    VaultAuth::new(vault.clone(), "spa", http())
        .access_token(None, true)
        .await
        .unwrap();
    let after = vault.get("spa").unwrap().refresh_token.unwrap();
    assert_ne!(before.expose_secret(), after.expose_secret());
    assert!(profile_with(&vault, "spa").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_mismatch_is_rejected_on_the_loopback_and_when_pasted() {
    let sim = simulator(10, 4, None).await;
    let conn = fyle_app(&sim);
    let mut pending = login::begin("acme", &conn, true).await.unwrap();
    let forged = format!("{}?code=whatever&state=forged", pending.redirect_uri);
    let browser =
        tokio::spawn(async move { reqwest::get(forged).await.map(|r| r.status().as_u16()) });
    let err = pending
        .wait(Duration::from_secs(10))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("state mismatch"), "{err}");
    assert_eq!(browser.await.unwrap().unwrap(), 400);

    let pending = login::begin("acme", &conn, false).await.unwrap();
    let real = authorize_redirect(&pending.authorize_url).await;
    let mut tampered = real.clone();
    tampered.set_query(Some(&format!("code={}&state=other", query(&real, "code"))));
    let err = pending
        .code_from_pasted(tampered.as_str())
        .unwrap_err()
        .to_string();
    assert!(err.contains("state mismatch"), "{err}");
    // The genuine redirect is accepted.
    let code = pending.code_from_pasted(real.as_str()).unwrap();
    assert_eq!(code.expose_secret(), query(&real, "code"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pkce_verifier_wrong_redirect_and_reused_codes_are_rejected() {
    let sim = simulator(10, 5, None).await;
    let http = http();
    let conn = standard_app(&sim, GrantKind::AuthorizationCode);
    let (verifier, challenge) = pkce_pair();
    let redirect = "http://127.0.0.1:9/callback";
    let authorize = |challenge: &str| {
        let mut u = url::Url::parse(conn.authorize_url.as_deref().unwrap()).unwrap();
        u.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &conn.client_id)
            .append_pair("redirect_uri", redirect)
            .append_pair("state", "s")
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256");
        u
    };
    let exchange = |code: String, verifier: SecretString, redirect: &'static str| {
        let (http, conn) = (http.clone(), conn.clone());
        async move {
            let code = SecretString::from(code);
            request_token(
                &http,
                &conn,
                &Grant::AuthorizationCode {
                    code: &code,
                    redirect_uri: redirect,
                    verifier: Some(&verifier),
                },
            )
            .await
        }
    };
    let refused = |r: Result<_, TokenError>| match r {
        Err(TokenError::GrantRefused(m)) => m,
        Err(e) => panic!("expected invalid_grant, got {e}"),
        Ok(_) => panic!("expected invalid_grant, got tokens"),
    };

    // Wrong verifier.
    let code = query(&authorize_redirect(&authorize(&challenge)).await, "code");
    let (other, _) = pkce_pair();
    let m = refused(exchange(code, other, redirect).await);
    assert!(m.contains("code_verifier does not match"), "{m}");

    // Redirect URI other than the one the code was issued for.
    let code = query(&authorize_redirect(&authorize(&challenge)).await, "code");
    let m = refused(exchange(code, verifier.clone(), "http://127.0.0.1:10/callback").await);
    assert!(m.contains("redirect_uri does not match"), "{m}");

    // Reuse: the first exchange works, the second is refused and revokes the first's tokens.
    let code = query(&authorize_redirect(&authorize(&challenge)).await, "code");
    let tokens = exchange(code.clone(), verifier.clone(), redirect)
        .await
        .unwrap();
    let rt = tokens.refresh_token.unwrap();
    assert!(sim.refresh_token_is_live(rt.expose_secret()));
    let m = refused(exchange(code, verifier.clone(), redirect).await);
    assert!(m.contains("already used"), "{m}");
    assert!(!sim.refresh_token_is_live(rt.expose_secret()));

    // Expired code.
    sim.set_code_ttl(Duration::ZERO);
    let code = query(&authorize_redirect(&authorize(&challenge)).await, "code");
    let m = refused(exchange(code, verifier, redirect).await);
    assert!(m.contains("expired"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_grant_is_accepted_and_expired_or_revoked_assertions_are_refused() {
    let sim = simulator(10, 6, None).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let http = http();
    let good = sim.issue_jwt_credential(Duration::from_secs(3600));
    let expired = sim.issue_jwt_credential(Duration::ZERO);
    let revoked = sim.issue_jwt_credential(Duration::from_secs(3600));
    sim.revoke_jwt_credential(&revoked);
    for (name, jwt) in [
        ("good", &good),
        ("expired", &expired),
        ("revoked", &revoked),
    ] {
        let mut c = standard_app(&sim, GrantKind::JwtBearer);
        c.assertion = secret(jwt);
        add(&vault, name, c);
    }
    login::login_direct(&vault, &http, "good").await.unwrap();
    assert!(profile_with(&vault, "good").await.is_ok());
    let e = login::login_direct(&vault, &http, "expired")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("JWT assertion has expired"), "{e}");
    let e = login::login_direct(&vault, &http, "revoked")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("revoked"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_and_client_credentials_grants_work() {
    let sim = simulator(10, 7, None).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let http = http();
    let mut pw = standard_app(&sim, GrantKind::Password);
    pw.username = Some(SIM_USERNAME.into());
    pw.password = secret(SIM_PASSWORD);
    add(&vault, "pw", pw);
    let mut cc = standard_app(&sim, GrantKind::ClientCredentials);
    cc.client_auth = ClientAuth::Body;
    add(&vault, "cc", cc);
    login::login_direct(&vault, &http, "pw").await.unwrap();
    login::login_direct(&vault, &http, "cc").await.unwrap();
    assert!(vault.get("pw").unwrap().refresh_token.is_some());
    let cc = vault.get("cc").unwrap();
    assert!(cc.refresh_token.is_none() && cc.access_token.is_some());
    // Without a refresh token, client credentials are simply granted again.
    VaultAuth::new(vault.clone(), "cc", http.clone())
        .access_token(None, true)
        .await
        .unwrap();
    assert!(profile_with(&vault, "pw").await.is_ok());
    assert!(profile_with(&vault, "cc").await.is_ok());
    let mut bad = standard_app(&sim, GrantKind::Password);
    bad.username = Some(SIM_USERNAME.into());
    bad.password = secret("nope");
    add(&vault, "bad", bad);
    let e = login::login_direct(&vault, &http, "bad")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid resource owner credentials"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_saves_the_new_refresh_token_and_the_old_access_token_dies() {
    let sim = simulator(10, 8, None).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    add(
        &vault,
        "rc",
        standard_app(&sim, GrantKind::AuthorizationCode),
    );
    login_in_browser(&vault, &http(), "rc").await;
    let before = vault.get("rc").unwrap();
    let auth = VaultAuth::new(vault.clone(), "rc", http());
    // A fresh stored token is reused, not refreshed.
    let t = auth.access_token(None, false).await.unwrap();
    assert_eq!(
        t.access.expose_secret(),
        before.access_token.as_ref().unwrap().expose_secret()
    );
    assert_eq!(auth.grant_count(), 0);
    let t2 = auth.access_token(None, true).await.unwrap();
    let after = vault.get("rc").unwrap();
    let (old_rt, new_rt) = (before.refresh_token.unwrap(), after.refresh_token.unwrap());
    assert_ne!(old_rt.expose_secret(), new_rt.expose_secret());
    assert!(!sim.refresh_token_is_live(old_rt.expose_secret()));
    assert!(sim.refresh_token_is_live(new_rt.expose_secret()));
    assert_eq!(
        t2.access.expose_secret(),
        after.access_token.unwrap().expose_secret()
    );
    // A pipeline still holding the old access token: 401, then it picks up the new one.
    let stale = t.access;
    let again = auth.access_token(Some(&stale), false).await.unwrap();
    assert_eq!(again.access.expose_secret(), t2.access.expose_secret());
    assert_eq!(
        auth.grant_count(),
        1,
        "the newer stored token is used, no second refresh"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_tokens_are_refreshed_ahead_of_expiry() {
    let sim = Simulator::start(expense_sync::simulator::SimConfig {
        seed: 9,
        expenses: 10,
        rate_limit: None,
        token_ttl: Duration::from_secs(2),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let jwt = sim.issue_jwt_credential(Duration::from_secs(3600));
    let mut c = standard_app(&sim, GrantKind::JwtBearer);
    c.assertion = secret(&jwt);
    add(&vault, "j", c);
    login::login_direct(&vault, &http(), "j").await.unwrap();
    let first = vault.get("j").unwrap().access_token.unwrap();
    // 1.85 s into a 2 s lifetime is inside the refresh margin (a tenth).
    tokio::time::sleep(Duration::from_millis(1850)).await;
    let auth = VaultAuth::new(vault.clone(), "j", http());
    let t = auth.access_token(None, false).await.unwrap();
    assert_ne!(t.access.expose_secret(), first.expose_secret());
    assert_eq!(auth.grant_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refreshes_in_tasks_and_processes_lose_no_rotated_token() {
    let sim = simulator(10, 10, None).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    add(
        &vault,
        "rc",
        standard_app(&sim, GrantKind::AuthorizationCode),
    );
    login_in_browser(&vault, &http(), "rc").await;

    // Eight tasks in this process, each with its own VaultAuth.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let v = vault.clone();
        tasks.push(tokio::spawn(async move {
            VaultAuth::new(v, "rc", http())
                .access_token(None, true)
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // Two processes refreshing at once, five rounds.
    let cwd = dir.path().to_path_buf();
    let va = vault_arg(&vault);
    for _ in 0..5 {
        let a = run_bin(&["--vault", &va, "auth", "refresh-all"], &cwd, &[]);
        let b = run_bin(&["--vault", &va, "auth", "refresh-all"], &cwd, &[]);
        let (a, b) = tokio::join!(a, b);
        assert!(a.status.success(), "{}", text(&a));
        assert!(b.status.success(), "{}", text(&b));
    }
    let rt = vault.get("rc").unwrap().refresh_token.unwrap();
    assert!(
        sim.refresh_token_is_live(rt.expose_secret()),
        "the vault holds the live refresh token"
    );
    assert!(profile_with(&vault, "rc").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_concurrent_pipeline_processes_share_a_rotating_connection() {
    let sim = Simulator::start(expense_sync::simulator::SimConfig {
        seed: 11,
        expenses: 3000,
        rate_limit: None,
        token_ttl: Duration::from_millis(1500),
        faults: expense_sync::simulator::Faults {
            latency: Duration::from_millis(60),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    add(
        &vault,
        "rc",
        standard_app(&sim, GrantKind::AuthorizationCode),
    );
    login_in_browser(&vault, &http(), "rc").await;
    for name in ["one", "two"] {
        std::fs::write(
            dir.path().join(format!("{name}.toml")),
            vault_pipeline(name, "rc"),
        )
        .unwrap();
    }
    let cwd = dir.path().to_path_buf();
    let va = vault_arg(&vault);
    let a = run_bin(
        &["--vault", &va, "run", "one.toml", "--output-dir", "out"],
        &cwd,
        &[],
    );
    let b = run_bin(
        &["--vault", &va, "run", "two.toml", "--output-dir", "out"],
        &cwd,
        &[],
    );
    let cron = async {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let o = run_bin(&["--vault", &va, "auth", "refresh-all"], &cwd, &[]).await;
            assert!(o.status.success(), "{}", text(&o));
        }
    };
    let (a, b, ()) = tokio::join!(a, b, cron);
    assert!(a.status.success(), "{}", text(&a));
    assert!(b.status.success(), "{}", text(&b));
    for name in ["one", "two"] {
        let (_, rows) = read_csv(&dir.path().join(format!("out/{name}.csv")));
        assert_eq!(rows.len(), 3000);
    }
    let rt = vault.get("rc").unwrap().refresh_token.unwrap();
    assert!(sim.refresh_token_is_live(rt.expose_secret()));
    let rotations = sim
        .request_log()
        .iter()
        .filter(|r| r.path == "/oauth/token" && r.status == 200)
        .count();
    assert!(
        rotations >= 4,
        "tokens were rotated during the runs ({rotations})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_all_covers_many_connections_and_reports_reconnects() {
    let sim = simulator(10, 12, None).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let http = http();
    let mut jwts = Vec::new();
    for i in 0..12 {
        let jwt = sim.issue_jwt_credential(Duration::from_secs(3600));
        let mut c = standard_app(&sim, GrantKind::JwtBearer);
        c.assertion = secret(&jwt);
        let name = format!("org{i:02}");
        add(&vault, &name, c);
        login::login_direct(&vault, &http, &name).await.unwrap();
        jwts.push(jwt);
    }
    let mut internal = fyle_app(&sim);
    internal.grant = GrantKind::RefreshToken;
    internal.refresh_token = secret(&sim.credentials().refresh_token);
    add(&vault, "internal", internal);
    login::login_direct(&vault, &http, "internal")
        .await
        .unwrap();
    add(
        &vault,
        "never",
        standard_app(&sim, GrantKind::AuthorizationCode),
    );

    let before: Vec<String> = (0..12)
        .map(|i| {
            vault
                .get(&format!("org{i:02}"))
                .unwrap()
                .refresh_token
                .unwrap()
                .expose_secret()
                .to_string()
        })
        .collect();
    let va = vault_arg(&vault);
    let o = run_bin(&["--vault", &va, "auth", "refresh-all"], dir.path(), &[]).await;
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert_eq!(out.matches("ok   ").count(), 13, "{out}");
    assert!(out.contains("skip never"), "{out}");
    for (i, old) in before.iter().enumerate() {
        let now = vault
            .get(&format!("org{i:02}"))
            .unwrap()
            .refresh_token
            .unwrap();
        assert_ne!(now.expose_secret(), old, "org{i:02} rotated");
        assert!(sim.refresh_token_is_live(now.expose_secret()));
    }

    // Every refresh token dies; one JWT credential is revoked too.
    sim.revoke_refresh_tokens();
    sim.revoke_jwt_credential(&jwts[3]);
    let o = run_bin(&["--vault", &va, "auth", "refresh-all"], dir.path(), &[]).await;
    let out = text(&o);
    assert_eq!(o.status.code(), Some(ExitCode::Reconnect.code()), "{out}");
    assert!(
        out.contains("FAIL org03: reconnect needed: run `expense-sync auth login org03`"),
        "{out}"
    );
    assert_eq!(
        out.matches("ok   ").count(),
        12,
        "the others fall back to their JWT: {out}"
    );
    assert_eq!(
        vault.get("org03").unwrap().status,
        ConnectionStatus::ReconnectNeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_refresh_token_means_reconnect_needed_with_its_own_exit_code_and_no_retry_loop() {
    let sim = simulator(50, 13, None).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    add(
        &vault,
        "acme",
        standard_app(&sim, GrantKind::AuthorizationCode),
    );
    login_in_browser(&vault, &http(), "acme").await;
    sim.revoke_refresh_tokens();
    std::fs::write(dir.path().join("p.toml"), vault_pipeline("p", "acme")).unwrap();
    let va = vault_arg(&vault);
    let token_calls = |sim: &Simulator| {
        sim.request_log()
            .iter()
            .filter(|r| r.path == "/oauth/token")
            .count()
    };
    let before = token_calls(&sim);
    let o = run_bin(
        &["--vault", &va, "run", "p.toml", "--output-dir", "out"],
        dir.path(),
        &[],
    )
    .await;
    let out = text(&o);
    assert_eq!(o.status.code(), Some(9), "{out}");
    assert!(
        out.contains("reconnect needed: run `expense-sync auth login acme`"),
        "{out}"
    );
    assert_eq!(
        token_calls(&sim) - before,
        1,
        "one refresh attempt, no retry loop"
    );
    // The next run knows without asking the provider again.
    let o = run_bin(
        &["--vault", &va, "run", "p.toml", "--output-dir", "out"],
        dir.path(),
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    assert_eq!(token_calls(&sim) - before, 1);
    let list = run_bin(&["--vault", &va, "auth", "list"], dir.path(), &[]).await;
    assert!(text(&list).contains("reconnect-needed"), "{}", text(&list));
    // Logging in again heals it.
    login_in_browser(&vault, &http(), "acme").await;
    let o = run_bin(
        &["--vault", &va, "run", "p.toml", "--output-dir", "out"],
        dir.path(),
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_readable_by_others_is_refused_with_how_to_fix() {
    use std::os::unix::fs::PermissionsExt;
    let sim = simulator(10, 14, None).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    add(&vault, "acme", fyle_app(&sim));
    let mode = std::fs::metadata(vault.path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    std::fs::set_permissions(vault.path(), std::fs::Permissions::from_mode(0o640)).unwrap();
    let o = run_bin(
        &["--vault", &vault_arg(&vault), "auth", "list"],
        dir.path(),
        &[],
    )
    .await;
    assert!(!o.status.success());
    assert!(
        text(&o).contains(&format!("chmod 600 {}", vault.path().display())),
        "{}",
        text(&o)
    );
    std::fs::write(dir.path().join("p.toml"), vault_pipeline("p", "acme")).unwrap();
    let o = run_bin(
        &["--vault", &vault_arg(&vault), "run", "p.toml"],
        dir.path(),
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(ExitCode::Auth.code()), "{}", text(&o));
    assert!(text(&o).contains("chmod 600"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_add_headless_login_list_revoke_remove() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let sim = simulator(10, 15, None).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let va = vault_arg(&vault);
    let c = sim.credentials().clone();
    let o = run_bin(
        &[
            "--vault",
            &va,
            "auth",
            "add",
            "rc",
            "--profile",
            "oauth2",
            "--accounts-url",
            &sim.accounts_url(),
            "--client-id",
            &c.client_id,
            "--client-secret-env",
            "RC_SECRET",
            "--redirect-uri",
            "http://127.0.0.1:0/callback",
        ],
        dir.path(),
        &[("RC_SECRET", &c.client_secret)],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));

    let mut child = tokio::process::Command::new(BIN)
        .args(["--vault", &va, "auth", "login", "rc", "--headless"])
        .env_remove("EXPENSE_SYNC_VAULT_KEY")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut url = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(u) = line.trim().strip_prefix("http") {
            url = Some(url::Url::parse(&format!("http{u}")).unwrap());
            break;
        }
    }
    let url = url.expect("the authorize URL is printed");
    assert!(url.as_str().contains("code_challenge="), "{url}");
    let redirected = authorize_redirect(&url).await;
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{redirected}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let status = child.wait().await.unwrap();
    assert!(status.success());
    let stored = vault.get("rc").unwrap();
    let rt = stored.refresh_token.clone().unwrap();
    assert!(sim.refresh_token_is_live(rt.expose_secret()));

    let list = run_bin(&["--vault", &va, "auth", "list"], dir.path(), &[]).await;
    let listing = text(&list);
    assert!(
        listing.contains("rc") && listing.contains(" ok "),
        "{listing}"
    );
    for s in stored.secret_values() {
        assert!(!listing.contains(s), "listing leaks a secret: {listing}");
    }

    let o = run_bin(&["--vault", &va, "auth", "revoke", "rc"], dir.path(), &[]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(!sim.refresh_token_is_live(rt.expose_secret()));
    let after = vault.get("rc").unwrap();
    assert_eq!(after.status, ConnectionStatus::Revoked);
    assert!(after.refresh_token.is_none() && after.access_token.is_none());
    let e = VaultAuth::new(vault.clone(), "rc", http())
        .access_token(None, false)
        .await
        .unwrap_err();
    assert!(matches!(e, AuthError::ReconnectNeeded { .. }), "{e}");

    let o = run_bin(&["--vault", &va, "auth", "remove", "rc"], dir.path(), &[]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(vault.load().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_vault_via_the_environment_key() {
    let sim = simulator(10, 16, None).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.json");
    let va = path.display().to_string();
    let jwt = sim.issue_jwt_credential(Duration::from_secs(3600));
    let c = sim.credentials().clone();
    let key = [
        ("EXPENSE_SYNC_VAULT_KEY", "correct horse battery staple"),
        ("J", jwt.as_str()),
        ("S", c.client_secret.as_str()),
    ];
    let o = run_bin(
        &[
            "--vault",
            &va,
            "auth",
            "add",
            "j",
            "--profile",
            "oauth2",
            "--grant",
            "jwt-bearer",
            "--accounts-url",
            &sim.accounts_url(),
            "--client-id",
            &c.client_id,
            "--client-secret-env",
            "S",
            "--jwt-env",
            "J",
        ],
        dir.path(),
        &key,
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let o = run_bin(&["--vault", &va, "auth", "login", "j"], dir.path(), &key).await;
    assert!(o.status.success(), "{}", text(&o));
    let raw = std::fs::read_to_string(&path).unwrap();
    assert!(
        !raw.contains(&jwt) && !raw.contains(&c.client_secret),
        "sealed"
    );
    let opened = Vault::with_key(&path, secret("correct horse battery staple"))
        .get("j")
        .unwrap();
    assert!(opened.refresh_token.is_some());
    let o = run_bin(&["--vault", &va, "auth", "list"], dir.path(), &[]).await;
    assert!(!o.status.success());
    assert!(text(&o).contains("EXPENSE_SYNC_VAULT_KEY"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_level_run_output_state_and_summary_contain_no_secret() {
    let sim = simulator(200, 17, None).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    add(
        &vault,
        "acme",
        standard_app(&sim, GrantKind::AuthorizationCode),
    );
    login_in_browser(&vault, &http(), "acme").await;
    // Expire the stored access token so the run refreshes (and rotates) it.
    vault
        .update(|all| {
            all.get_mut("acme").unwrap().access_expires_at = Some(chrono::Utc::now());
            Ok::<_, VaultError>(())
        })
        .unwrap();
    let before = vault.get("acme").unwrap();
    std::fs::write(dir.path().join("p.toml"), vault_pipeline("p", "acme")).unwrap();
    let o = run_bin(
        &[
            "--vault",
            &vault_arg(&vault),
            "--log-level",
            "trace",
            "run",
            "p.toml",
            "--output-dir",
            "out",
            "--summary",
            "summary.json",
        ],
        dir.path(),
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    let after = vault.get("acme").unwrap();
    assert_ne!(
        before.refresh_token.as_ref().unwrap().expose_secret(),
        after.refresh_token.as_ref().unwrap().expose_secret(),
        "the run rotated the refresh token"
    );
    let mut everything = text(&o);
    assert!(
        everything.contains("TRACE") || everything.contains("DEBUG"),
        "trace logging is on"
    );
    for f in walk(&dir.path().join("out"))
        .into_iter()
        .chain([dir.path().join("summary.json")])
    {
        everything.push_str(&String::from_utf8_lossy(&std::fs::read(&f).unwrap()));
    }
    let secrets: Vec<&str> = before
        .secret_values()
        .into_iter()
        .chain(after.secret_values())
        .collect();
    assert!(secrets.len() >= 5);
    for s in secrets {
        assert!(
            !everything.contains(s),
            "a secret leaked into the output, state or summary"
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_connection_takes_vault_or_secrets_not_both() {
    let text = vault_pipeline("p", "acme").replace(
        "vault = \"acme\"",
        "vault = \"acme\"\nclient_secret = { env = \"S\" }",
    );
    let e = config::load_str(&text, Path::new("p.toml")).unwrap_err();
    assert_eq!(e.problems[0].key, "connection.client_secret", "{e}");
    let text = vault_pipeline("p", "acme").replace("vault = \"acme\"", "client_id = \"x\"");
    let e = config::load_str(&text, Path::new("p.toml")).unwrap_err();
    assert!(e.to_string().contains("connection.client_secret"), "{e}");
}

#[tokio::test]
async fn auth_commands_have_help() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["add", "login", "list", "refresh-all", "revoke", "remove"] {
        let o = run_bin(&["auth", sub, "--help"], dir.path(), &[]).await;
        assert!(o.status.success(), "{sub}: {}", text(&o));
        assert!(text(&o).contains("Usage"), "{sub}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_token_errors_use_each_dialects_shape() {
    let sim = simulator(10, 18, None).await;
    let c = sim.credentials().clone();
    let token_url = format!("{}/oauth/token", sim.accounts_url());
    let client = reqwest::Client::new();

    // Standard dialect: form body, RFC 6749 error objects.
    let r = client
        .post(&token_url)
        .basic_auth(&c.client_id, Some(&c.client_secret))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "no-such-token"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "{body}");
    assert!(body["error_description"].is_string(), "{body}");

    let r = client
        .post(&token_url)
        .basic_auth(&c.client_id, Some("wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client", "{body}");

    let r = client
        .post(&token_url)
        .form(&[
            ("grant_type", "implicit"),
            ("client_id", SIM_PUBLIC_CLIENT_ID),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type", "{body}");

    // Fyle dialect: JSON body, `{"message": …}` errors.
    let r = client
        .post(&token_url)
        .json(&serde_json::json!({
            "grant_type": "refresh_token", "refresh_token": "no-such-token",
            "client_id": c.client_id, "client_secret": c.client_secret,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["message"], "invalid token", "{body}");
}

fn token_calls(sim: &Simulator) -> usize {
    sim.request_log()
        .iter()
        .filter(|r| r.path == "/oauth/token")
        .count()
}

fn lose_next_token_answer(sim: &Simulator, kind: TokenFault) {
    sim.set_faults(Faults {
        lost_token_answers: 1,
        token_fault: kind,
        ..Faults::default()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotating_refresh_whose_answer_is_lost_is_never_repeated_and_says_what_happened() {
    let sim = simulator(10, 21, None).await;
    for kind in [
        TokenFault::Reset,
        TokenFault::Truncate,
        TokenFault::ServerError,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let vault = new_vault(dir.path());
        add(
            &vault,
            "rc",
            standard_app(&sim, GrantKind::AuthorizationCode),
        );
        login_in_browser(&vault, &http(), "rc").await;
        // The provider rotates the refresh token, then its answer is lost.
        lose_next_token_answer(&sim, kind);
        let before = token_calls(&sim);
        let err = VaultAuth::new(vault.clone(), "rc", http())
            .access_token(None, true)
            .await
            .unwrap_err();
        assert_eq!(
            token_calls(&sim) - before,
            1,
            "{kind:?}: the spent refresh token was sent again"
        );
        let msg = err.to_string();
        for part in [
            "connection `rc`",
            "may have rotated the refresh token",
            "answer was lost",
            "expense-sync auth login rc",
        ] {
            assert!(msg.contains(part), "{kind:?}: `{part}` missing from: {msg}");
        }
        assert_eq!(
            expense_sync::error::Error::from(err).exit_code(),
            ExitCode::Reconnect,
            "{kind:?}"
        );
        // What happened is recorded for `auth list`, and no secret is in it.
        let conn = vault.get("rc").unwrap();
        let recorded = conn.last_error.clone().unwrap_or_default();
        assert!(recorded.contains("answer was lost"), "{kind:?}: {recorded}");
        let rt = conn.refresh_token.unwrap();
        assert!(!msg.contains(rt.expose_secret()) && !recorded.contains(rt.expose_secret()));
        // The next refresh finds the stored token spent: reconnect needed, saying why.
        let again = VaultAuth::new(vault.clone(), "rc", http())
            .access_token(None, true)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            again.contains("reconnect needed") && again.contains("answer was lost"),
            "{kind:?}: {again}"
        );
        assert_eq!(
            vault.get("rc").unwrap().status,
            ConnectionStatus::ReconnectNeeded
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_whose_refresh_answer_is_lost_exits_reconnect_needed_and_writes_nothing() {
    let sim = simulator(30, 22, None).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    add(
        &vault,
        "acme",
        standard_app(&sim, GrantKind::AuthorizationCode),
    );
    login_in_browser(&vault, &http(), "acme").await;
    // The stored access token is rejected, so the run must refresh.
    sim.expire_tokens();
    lose_next_token_answer(&sim, TokenFault::Reset);
    let before = token_calls(&sim);
    let out = dir.path().join("out");
    let o = run_vault_pipeline(&vault, "p", "acme", &out).await;
    let msg = o.error.as_ref().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(o.exit_code(), ExitCode::Reconnect, "{msg}");
    assert!(msg.contains("expense-sync auth login acme"), "{msg}");
    assert!(msg.contains("answer was lost"), "{msg}");
    assert_eq!(token_calls(&sim) - before, 1);
    assert!(!out.join("p.csv").exists());
    // Logging in again heals it.
    login_in_browser(&vault, &http(), "acme").await;
    let o = run_vault_pipeline(&vault, "p", "acme", &out).await;
    assert!(o.error.is_none(), "{:?}", o.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_refresh_answer_falls_back_to_the_connections_own_grant() {
    let sim = simulator(10, 23, None).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let mut c = standard_app(&sim, GrantKind::JwtBearer);
    c.assertion = secret(&sim.issue_jwt_credential(Duration::from_secs(3600)));
    add(&vault, "j", c);
    login::login_direct(&vault, &http(), "j").await.unwrap();
    lose_next_token_answer(&sim, TokenFault::Truncate);
    let before = token_calls(&sim);
    let t = VaultAuth::new(vault.clone(), "j", http())
        .access_token(None, true)
        .await
        .unwrap();
    assert_eq!(
        token_calls(&sim) - before,
        2,
        "refresh (lost), then the JWT grant"
    );
    let conn = vault.get("j").unwrap();
    assert_eq!(conn.status, ConnectionStatus::Ok);
    assert_eq!(
        t.access.expose_secret(),
        conn.access_token.unwrap().expose_secret()
    );
    assert!(sim.refresh_token_is_live(conn.refresh_token.unwrap().expose_secret()));
    assert!(profile_with(&vault, "j").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_must_not_repeat_is_retried_only_when_it_never_connected() {
    use expense_sync::http::{HttpError, Request};
    let http = HttpClient::new(&HttpConfig {
        requests_per_second: 1000.0,
        max_retries: 2,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        ..HttpConfig::default()
    })
    .unwrap();
    // Nothing listens: the request never left, so it is retried (briefly: a
    // host that never answered gets one quick second try, not the full policy).
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut req = Request::post_json(
        url::Url::parse(&format!("http://127.0.0.1:{port}/oauth/token")).unwrap(),
        serde_json::json!({}),
    );
    req.retry_unsent_only = true;
    match http.execute(&req).await {
        Err(HttpError::RetriesExhausted { attempts, .. }) => assert_eq!(attempts, 2),
        other => panic!("expected retries, got {other:?}"),
    }
    // A server that reads the request and hangs up: it may have acted on it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
        }
    });
    req.url = url::Url::parse(&format!("http://127.0.0.1:{port}/oauth/token")).unwrap();
    match http.execute(&req).await {
        Err(e @ HttpError::OutcomeUnknown { .. }) => {
            assert!(e.to_string().contains("not repeated"), "{e}")
        }
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}
