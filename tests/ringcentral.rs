//! RingCentral end to end over loopback against its simulator: the JWT and
//! authorization-code + PKCE grants with the `ringcentral` provider preset,
//! rotation and token reuse, and rate-limit groups obeyed by the one HTTP
//! stack (measured from the simulator's request log).

use std::path::Path;
use std::time::Duration;

use expense_sync::auth::login;
use expense_sync::auth::presets::Provider;
use expense_sync::auth::vault::{ClientAuth, GrantKind, VaultError};
use expense_sync::auth::{Connection, Vault, VaultAuth};
use expense_sync::http::{HttpClient, HttpConfig, HttpError, Request};
use expense_sync::simulator::ringcentral::{
    Group, GroupLimit, RC_CLIENT_ID, RC_CLIENT_SECRET, RC_PUBLIC_CLIENT_ID, RC_REDIRECT_URI,
    RcSimConfig, RcSimulator,
};
use secrecy::{ExposeSecret, SecretString};

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

fn call_log_url(sim: &RcSimulator) -> url::Url {
    url::Url::parse(&format!("{}/restapi/v1.0/account/~/call-log", sim.url())).unwrap()
}

async fn call_log(http: &HttpClient, sim: &RcSimulator, token: SecretString) -> serde_json::Value {
    let req = Request::get(call_log_url(sim))
        .with_query(vec![
            ("dateFrom".into(), "2000-01-01T00:00:00Z".into()),
            ("perPage".into(), "10".into()),
        ])
        .with_bearer(token);
    http.execute(&req).await.unwrap().json
}

/// Plays the browser: the authorize URL's redirect, without following it.
async fn authorize_redirect(url: &url::Url) -> url::Url {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client.get(url.clone()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 302, "{:?}", resp.text().await);
    url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_grant_with_ringcentral_preset_reads_the_call_log_and_reuses_the_token() {
    let sim = RcSimulator::start(RcSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let mut conn =
        Provider::Ringcentral.connection(GrantKind::JwtBearer, Some(sim.url()), RC_CLIENT_ID);
    conn.client_secret = Some(SecretString::from(RC_CLIENT_SECRET.to_string()));
    conn.assertion = Some(SecretString::from(sim.issue_jwt()));
    add(&vault, "rc", conn);
    let http = http();
    login::login_direct(&vault, &http, "rc").await.unwrap();
    assert_eq!(sim.token_requests(), 1);
    // A second "run": the stored access token is used, no new token request
    // (the Auth group allows only 5 a minute).
    let token = VaultAuth::new(vault.clone(), "rc", http.clone())
        .access_token(None, false)
        .await
        .unwrap();
    assert_eq!(
        sim.token_requests(),
        1,
        "the stored access token must be reused"
    );
    let page = call_log(&http, &sim, token.access).await;
    assert_eq!(page["records"].as_array().unwrap().len(), 10, "{page}");
    // The token request used HTTP Basic, form-encoded, at /restapi/oauth/token.
    let log = sim.requests();
    assert_eq!(log[0].path, "/restapi/oauth/token");
    assert_eq!(log[0].status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_jwt_credential_needs_a_reconnect_with_ringcentrals_message() {
    let sim = RcSimulator::start(RcSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let jwt = sim.issue_jwt();
    sim.revoke_jwt(&jwt);
    let mut conn =
        Provider::Ringcentral.connection(GrantKind::JwtBearer, Some(sim.url()), RC_CLIENT_ID);
    conn.client_secret = Some(SecretString::from(RC_CLIENT_SECRET.to_string()));
    conn.assertion = Some(SecretString::from(jwt.clone()));
    add(&vault, "rc", conn);
    let err = login::login_direct(&vault, &http(), "rc")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("revoked"), "{err}");
    assert!(
        !err.contains(&jwt) && !err.contains(RC_CLIENT_SECRET),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkce_login_for_a_public_app_then_rotation_kills_the_old_access_token() {
    let sim = RcSimulator::start(RcSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let mut conn = Provider::Ringcentral.connection(
        GrantKind::AuthorizationCode,
        Some(sim.url()),
        RC_PUBLIC_CLIENT_ID,
    );
    conn.client_auth = ClientAuth::Body;
    conn.redirect_uri = Some(RC_REDIRECT_URI.into());
    add(&vault, "spa", conn.clone());
    let http = http();
    let pending = login::begin("spa", &conn, false).await.unwrap();
    let authorize = pending.authorize_url.clone();
    assert!(authorize.path().ends_with("/restapi/oauth/authorize"));
    assert!(
        authorize
            .query_pairs()
            .any(|(k, v)| k == "code_challenge_method" && v == "S256")
    );
    let redirect = authorize_redirect(&authorize).await;
    let code = pending.code_from_pasted(redirect.as_str()).unwrap();
    pending.complete(&vault, &http, &code).await.unwrap();
    let first = vault.get("spa").unwrap();
    let old_access = first.access_token.clone().unwrap();
    // Refresh rotates: a new refresh token is stored, the old access token dies.
    VaultAuth::new(vault.clone(), "spa", http.clone())
        .access_token(None, true)
        .await
        .unwrap();
    let second = vault.get("spa").unwrap();
    assert_ne!(
        first.refresh_token.unwrap().expose_secret(),
        second.refresh_token.clone().unwrap().expose_secret()
    );
    let req = Request::get(call_log_url(&sim)).with_bearer(old_access);
    match http.execute(&req).await {
        Err(HttpError::Unauthorized { message, .. }) => {
            assert!(message.contains("Token not found"), "{message}")
        }
        other => panic!("the old access token still works: {other:?}"),
    }
    let page = call_log(&http, &sim, second.access_token.unwrap()).await;
    assert!(page["records"].is_array(), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkce_code_with_a_wrong_verifier_is_refused() {
    let sim = RcSimulator::start(RcSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let mut conn = Provider::Ringcentral.connection(
        GrantKind::AuthorizationCode,
        Some(sim.url()),
        RC_CLIENT_ID,
    );
    conn.client_secret = Some(SecretString::from(RC_CLIENT_SECRET.to_string()));
    conn.redirect_uri = Some(RC_REDIRECT_URI.into());
    add(&vault, "rc", conn.clone());
    // Two logins: the code of the first is redeemed with the second's verifier.
    let a = login::begin("rc", &conn, false).await.unwrap();
    let b = login::begin("rc", &conn, false).await.unwrap();
    let redirect = authorize_redirect(&a.authorize_url).await;
    let code = a.code_from_pasted(redirect.as_str()).unwrap();
    let err = b
        .complete(&vault, &http(), &code)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("verifier"), "{err}");
}

fn short_heavy(retry_after_header: bool) -> RcSimConfig {
    let mut cfg = RcSimConfig {
        retry_after_header,
        ..RcSimConfig::default()
    };
    cfg.limits.insert(
        Group::Heavy,
        GroupLimit {
            requests: 3,
            window: Duration::from_secs(2),
            penalty: Duration::from_secs(2),
        },
    );
    cfg
}

async fn jwt_token(sim: &RcSimulator, http: &HttpClient, dir: &Path) -> SecretString {
    let vault = new_vault(dir);
    let mut conn =
        Provider::Ringcentral.connection(GrantKind::JwtBearer, Some(sim.url()), RC_CLIENT_ID);
    conn.client_secret = Some(SecretString::from(RC_CLIENT_SECRET.to_string()));
    conn.assertion = Some(SecretString::from(sim.issue_jwt()));
    add(&vault, "rc", conn);
    VaultAuth::new(vault, "rc", http.clone())
        .access_token(None, false)
        .await
        .unwrap()
        .access
}

fn heavy_log(sim: &RcSimulator) -> Vec<(std::time::Instant, u16)> {
    sim.requests()
        .into_iter()
        .filter(|r| r.group == Some(Group::Heavy))
        .map(|r| (r.at, r.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_group_sends_nothing_until_its_window_ends() {
    let sim = RcSimulator::start(short_heavy(true)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = http();
    let token = jwt_token(&sim, &http, dir.path()).await;
    for _ in 0..7 {
        call_log(&http, &sim, token.clone()).await;
    }
    let log = heavy_log(&sim);
    assert_eq!(log.len(), 7, "no request was refused, none repeated");
    assert!(log.iter().all(|(_, s)| *s == 200), "{log:?}");
    // Remaining hit 0 after requests 3 and 6: each next one waited a window.
    for i in [3, 6] {
        let gap = log[i].0.duration_since(log[i - 1].0);
        assert!(
            gap >= Duration::from_secs(2),
            "request {i} sent {gap:?} after the group was exhausted"
        );
    }
}

async fn penalty_is_respected(retry_after_header: bool) {
    let sim = RcSimulator::start(short_heavy(retry_after_header))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = http();
    let token = jwt_token(&sim, &first, dir.path()).await;
    for _ in 0..3 {
        call_log(&first, &sim, token.clone()).await;
    }
    // Another process that has not seen the headers runs into the limit.
    let second = http();
    let page = call_log(&second, &sim, token).await;
    assert!(page["records"].is_array());
    let log = heavy_log(&sim);
    let throttled: Vec<_> = log.iter().filter(|(_, s)| *s == 429).collect();
    assert_eq!(
        throttled.len(),
        1,
        "a request during the penalty restarts it: {log:?}"
    );
    let after = log
        .iter()
        .find(|(t, _)| *t > throttled[0].0)
        .expect("a retry");
    assert_eq!(after.1, 200);
    assert!(
        after.0.duration_since(throttled[0].0) >= Duration::from_secs(2),
        "retried within the penalty"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn penalty_after_429_honours_retry_after() {
    penalty_is_respected(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn penalty_without_retry_after_waits_the_groups_window() {
    penalty_is_respected(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_log_pages_follow_navigation_and_hide_calls_that_just_ended() {
    let sim = RcSimulator::start(RcSimConfig {
        calls: 0,
        ..RcSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = http();
    let token = jwt_token(&sim, &http, dir.path()).await;
    // Ended long ago: visible. Started 1 s ago: not visible for 15-30 s.
    let old: Vec<String> = (0..5)
        .map(|i| sim.add_call(Duration::from_secs(7200 + i)))
        .collect();
    let fresh = sim.add_call(Duration::from_secs(1));
    let mut url = call_log_url(&sim);
    url.query_pairs_mut()
        .append_pair("dateFrom", "2000-01-01T00:00:00Z")
        .append_pair("perPage", "2");
    let mut seen = Vec::new();
    let mut next = Some(url);
    while let Some(u) = next {
        let page = http
            .execute(&Request::get(u).with_bearer(token.clone()))
            .await
            .unwrap()
            .json;
        for r in page["records"].as_array().unwrap() {
            assert!(r.get("legs").is_none(), "Simple view has no legs");
            seen.push(r["id"].as_str().unwrap().to_string());
        }
        next = page["navigation"]["nextPage"]["uri"]
            .as_str()
            .map(|s| url::Url::parse(s).unwrap());
    }
    let mut want = old.clone();
    want.sort();
    seen.sort();
    assert_eq!(seen, want);
    assert!(!seen.contains(&fresh));
    // perPage above 1000 is refused in RingCentral's error shape.
    let req = Request::get(call_log_url(&sim))
        .with_query(vec![("perPage".into(), "1001".into())])
        .with_bearer(token);
    let err = http.execute(&req).await.unwrap_err().to_string();
    assert!(err.contains("perPage"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_log_window_over_many_pages_equals_ground_truth_and_late_calls_are_caught_by_the_lookback()
 {
    use expense_sync::sources::ringcentral::{CallLogPager, CallLogWindow, View, window_start};
    let mut cfg = RcSimConfig {
        calls: 300,
        history: Duration::from_secs(6 * 3600),
        ..RcSimConfig::default()
    };
    // Dozens of pages: lift the Heavy group's 10 a minute so the test is quick.
    cfg.limits.insert(
        Group::Heavy,
        GroupLimit {
            requests: 1000,
            window: Duration::from_secs(60),
            penalty: Duration::from_secs(60),
        },
    );
    let sim = RcSimulator::start(cfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = http();
    let token = jwt_token(&sim, &http, dir.path()).await;
    let to = chrono::Utc::now() - chrono::Duration::hours(1);
    let from = to - chrono::Duration::hours(5);
    let export = |from, to, token: SecretString| {
        let http = http.clone();
        let base = sim.url().to_string();
        async move {
            let window = CallLogWindow {
                from,
                to,
                per_page: 7,
                view: View::Detailed,
            };
            let mut pager = CallLogPager::new(http, &base, token, &window).unwrap();
            let mut ids = Vec::new();
            while let Some(page) = pager.next_page().await.unwrap() {
                for r in page {
                    assert!(r["legs"].is_array(), "Detailed view has legs");
                    ids.push(r["id"].as_str().unwrap().to_string());
                }
            }
            (ids, pager.pages)
        }
    };
    let (mut ids, pages) = export(from, to, token.clone()).await;
    let mut truth = sim.call_ids_between(from, to);
    ids.sort();
    truth.sort();
    assert!(pages > 10, "{pages} pages");
    assert_eq!(ids, truth, "each call exactly once");

    // A call that started a minute before this window's end shows up only
    // after the export (it arrived late): the next run's window starts a
    // lookback before the watermark and picks it up.
    let late = sim.add_call(Duration::from_secs(3600 + 60));
    assert!(!ids.contains(&late));
    let (next, _) = export(
        window_start(to, Duration::from_secs(300)),
        chrono::Utc::now(),
        token,
    )
    .await;
    assert!(
        next.contains(&late),
        "the late call is exported by the next run"
    );
}
