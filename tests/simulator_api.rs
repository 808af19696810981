//! The simulator over real loopback HTTP: auth, cluster discovery, list
//! queries, rate limiting, faults and the request log.

use std::time::Duration;

use base64::Engine;
use chrono::DateTime;
use expense_sync::simulator::{
    DEMO_AUTHORIZATION_CODE, Faults, MSG_INVALID_CLIENT, MSG_INVALID_TOKEN, SimConfig,
    SimCredentials, Simulator,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn start(cfg: SimConfig) -> Simulator {
    Simulator::start(cfg).await.expect("start simulator")
}

fn cfg(expenses: usize) -> SimConfig {
    SimConfig {
        seed: 11,
        expenses,
        rate_limit: None,
        ..SimConfig::default()
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn token_body(c: &SimCredentials) -> Value {
    json!({
        "grant_type": "refresh_token",
        "refresh_token": c.refresh_token,
        "client_id": c.client_id,
        "client_secret": c.client_secret,
    })
}

async fn post_token(sim: &Simulator, body: &Value) -> (StatusCode, Value) {
    let r = http()
        .post(format!("{}/oauth/token", sim.accounts_url()))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap())
}

async fn token(sim: &Simulator) -> String {
    let (status, body) = post_token(sim, &token_body(sim.credentials())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// GET a cluster path with a bearer token and query pairs.
async fn get(
    sim: &Simulator,
    tok: &str,
    path: &str,
    query: &[(&str, &str)],
) -> (StatusCode, Value) {
    let r = http()
        .get(format!("{}{path}", sim.cluster_url()))
        .bearer_auth(tok)
        .query(query)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn list(sim: &Simulator, tok: &str, resource: &str, query: &[(&str, &str)]) -> Value {
    let (status, body) = get(sim, tok, &format!("/platform/v1/admin/{resource}"), query).await;
    assert_eq!(status, StatusCode::OK, "{resource} {query:?}: {body}");
    body
}

fn ids(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn micros(v: &Value) -> i64 {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .timestamp_micros()
}

// ---------------------------------------------------------------- auth

#[tokio::test]
async fn refresh_token_grant_returns_jwt_shaped_token_with_expiry() {
    let sim = start(SimConfig {
        token_ttl: Duration::from_secs(1800),
        ..cfg(20)
    })
    .await;
    let tok = token(&sim).await;
    let parts: Vec<&str> = tok.split('.').collect();
    assert_eq!(parts.len(), 3);
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    let (iat, exp) = (
        payload["iat"].as_i64().unwrap(),
        payload["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 1800);
    assert!((iat - chrono::Utc::now().timestamp()).abs() < 5);
    assert_ne!(token(&sim).await, tok, "every grant issues a fresh token");
}

#[tokio::test]
async fn bad_client_secret_gets_401() {
    let sim = start(cfg(5)).await;
    let mut body = token_body(sim.credentials());
    body["client_secret"] = json!("wrong");
    assert_eq!(
        post_token(&sim, &body).await,
        (
            StatusCode::UNAUTHORIZED,
            json!({"message": MSG_INVALID_CLIENT})
        )
    );
    let mut body = token_body(sim.credentials());
    body["client_id"] = json!("someone-else");
    assert_eq!(post_token(&sim, &body).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_refresh_token_gets_401_invalid_token() {
    let sim = start(cfg(5)).await;
    let mut body = token_body(sim.credentials());
    body["refresh_token"] = json!("expired-or-revoked");
    assert_eq!(
        post_token(&sim, &body).await,
        (
            StatusCode::UNAUTHORIZED,
            json!({"message": MSG_INVALID_TOKEN})
        )
    );
}

#[tokio::test]
async fn malformed_token_requests_get_400() {
    let sim = start(cfg(5)).await;
    let c = sim.credentials().clone();
    let mut unsupported = token_body(&c);
    unsupported["grant_type"] = json!("password");
    let mut missing = token_body(&c);
    missing.as_object_mut().unwrap().remove("client_secret");
    let mut no_refresh = token_body(&c);
    no_refresh.as_object_mut().unwrap().remove("refresh_token");
    let mut extra = token_body(&c);
    extra["scope"] = json!("*");
    for body in [unsupported, missing, no_refresh, extra, json!([1, 2])] {
        let (status, resp) = post_token(&sim, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            resp["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{resp}"
        );
    }
    let r = http()
        .post(format!("{}/oauth/token", sim.accounts_url()))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn authorization_code_grant_yields_refresh_token() {
    let sim = start(cfg(5)).await;
    let c = sim.credentials();
    let body = json!({"grant_type": "authorization_code", "code": DEMO_AUTHORIZATION_CODE, "client_id": c.client_id, "client_secret": c.client_secret});
    let (status, resp) = post_token(&sim, &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resp["refresh_token"], json!(c.refresh_token));
    assert!(resp["access_token"].is_string());
    let bad = json!({"grant_type": "authorization_code", "code": "nope", "client_id": c.client_id, "client_secret": c.client_secret});
    assert_eq!(post_token(&sim, &bad).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn cluster_discovery_returns_the_data_server() {
    let sim = start(cfg(5)).await;
    let tok = token(&sim).await;
    let url = format!("{}/oauth/cluster", sim.accounts_url());
    let r = http().post(&url).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"cluster_domain": sim.cluster_url()})
    );
    let r = http()
        .post(&url)
        .bearer_auth("forged.token.here")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "invalid token"})
    );
    let r = http().post(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn my_profile_describes_an_admin() {
    let sim = start(cfg(5)).await;
    let tok = token(&sim).await;
    let (status, body) = get(&sim, &tok, "/platform/v1/spender/my_profile", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let d = &body["data"];
    assert!(d["roles"].as_array().unwrap().contains(&json!("ADMIN")));
    assert_eq!(d["org"]["currency"], "USD");
    for k in ["user_id", "org_id", "org", "user", "roles"] {
        assert!(d.get(k).is_some(), "my_profile lacks {k}");
    }
    assert!(d["user"]["email"].as_str().unwrap().contains('@'));
}

#[tokio::test]
async fn missing_or_forged_token_gets_401_invalid_token() {
    let sim = start(cfg(5)).await;
    let r = http()
        .get(format!("{}/platform/v1/admin/expenses", sim.cluster_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "invalid token"})
    );
    let (status, body) = get(&sim, "a.b.c", "/platform/v1/admin/expenses", &[]).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::UNAUTHORIZED,
            json!({"message": "invalid token"})
        )
    );
}

#[tokio::test]
async fn expired_token_gets_401_invalid_token() {
    let sim = start(SimConfig {
        token_ttl: Duration::from_millis(300),
        ..cfg(5)
    })
    .await;
    let tok = token(&sim).await;
    assert_eq!(
        get(&sim, &tok, "/platform/v1/admin/expenses", &[]).await.0,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body) = get(&sim, &tok, "/platform/v1/admin/expenses", &[]).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::UNAUTHORIZED,
            json!({"message": "invalid token"})
        )
    );
    // A fresh grant works again.
    let tok = token(&sim).await;
    assert_eq!(
        get(&sim, &tok, "/platform/v1/admin/expenses", &[]).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn expire_tokens_revokes_every_issued_token() {
    let sim = start(cfg(5)).await;
    let (a, b) = (token(&sim).await, token(&sim).await);
    sim.expire_tokens();
    for t in [a, b] {
        assert_eq!(
            get(&sim, &t, "/platform/v1/admin/expenses", &[]).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let fresh = token(&sim).await;
    assert_eq!(
        get(&sim, &fresh, "/platform/v1/admin/expenses", &[])
            .await
            .0,
        StatusCode::OK
    );
}

// ---------------------------------------------------------------- lists

#[tokio::test]
async fn unknown_resource_or_role_is_404() {
    let sim = start(cfg(5)).await;
    let tok = token(&sim).await;
    for path in [
        "/platform/v1/admin/unicorns",
        "/platform/v1/approver/expenses",
        "/nope",
    ] {
        let (status, body) = get(&sim, &tok, path, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body, json!({"message": "Resource not found"}), "{path}");
    }
}

#[tokio::test]
async fn every_admin_resource_lists_with_count_and_offset() {
    let sim = start(cfg(120)).await;
    let tok = token(&sim).await;
    for r in expense_sync::simulator::RESOURCES {
        let body = list(&sim, &tok, r, &[("offset", "1"), ("limit", "3")]).await;
        let truth = sim.ground_truth(r);
        assert_eq!(body["count"], truth.len(), "{r}");
        assert_eq!(body["offset"], 1, "{r}");
        assert_eq!(
            body["data"].as_array().unwrap().len(),
            3.min(truth.len() - 1),
            "{r}"
        );
        let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["count", "offset", "data"]);
    }
}

#[tokio::test]
async fn default_limit_is_50_and_pages_match_ground_truth() {
    let sim = start(cfg(130)).await;
    let tok = token(&sim).await;
    let body = list(&sim, &tok, "expenses", &[]).await;
    assert_eq!(body["count"], 130);
    assert_eq!(body["data"].as_array().unwrap().len(), 50);
    let truth = sim.ground_truth("expenses");
    // Without `order` rows come in id order, so offset paging is stable.
    let mut seen = Vec::new();
    for offset in [0, 50, 100] {
        let o = offset.to_string();
        let page = list(&sim, &tok, "expenses", &[("offset", &o)]).await;
        for (i, rec) in page["data"].as_array().unwrap().iter().enumerate() {
            assert_eq!(rec, &truth[offset + i], "served record equals ground truth");
        }
        seen.extend(ids(&page));
    }
    assert_eq!(seen.len(), 130);
    let past = list(&sim, &tok, "expenses", &[("offset", "500")]).await;
    assert_eq!(
        (past["count"].clone(), past["data"].clone()),
        (json!(130), json!([]))
    );
}

#[tokio::test]
async fn limit_over_200_is_a_validation_error() {
    let sim = start(cfg(5)).await;
    let tok = token(&sim).await;
    for bad in ["201", "0", "-1", "ten"] {
        let (status, body) =
            get(&sim, &tok, "/platform/v1/admin/expenses", &[("limit", bad)]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "limit={bad}");
        assert_eq!(body["error"], "ValidationError");
        assert_eq!(body["data"], Value::Null);
        assert!(
            body["message"].as_str().unwrap().contains("limit"),
            "{body}"
        );
    }
    assert_eq!(
        get(
            &sim,
            &tok,
            "/platform/v1/admin/expenses",
            &[("limit", "200")]
        )
        .await
        .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn unknown_column_or_malformed_filter_is_a_validation_error() {
    let sim = start(cfg(5)).await;
    let tok = token(&sim).await;
    for (k, v) in [
        ("colour", "eq.red"),
        ("state", "PAID"),
        ("state", "equals.PAID"),
        ("amount", "gt.lots"),
        ("updated_at", "gte.yesterday"),
        ("or", "(state.eq.PAID"),
        ("or", "(nope.eq.1)"),
        ("order", "nope.asc"),
        ("order", "updated_at.up"),
        ("offset", "x"),
    ] {
        let (status, body) = get(&sim, &tok, "/platform/v1/admin/expenses", &[(k, v)]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{k}={v}: {body}");
        assert_eq!(body["error"], "ValidationError", "{k}={v}");
        assert!(
            body["message"].as_str().is_some_and(|m| m.len() > 10),
            "{k}={v}: {body}"
        );
    }
}

#[tokio::test]
async fn unencoded_plus_in_a_timestamp_is_explained() {
    let sim = start(cfg(5)).await;
    let tok = token(&sim).await;
    let url = format!(
        "{}/platform/v1/admin/expenses?updated_at=gte.2024-01-01T00:00:00+00:00",
        sim.cluster_url()
    );
    let r = http().get(url).bearer_auth(&tok).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("%2B"), "{body}");
}

fn count_where(truth: &[Value], f: impl Fn(&Value) -> bool) -> usize {
    truth.iter().filter(|e| f(e)).count()
}

#[tokio::test]
async fn filters_match_ground_truth() {
    let sim = start(cfg(800)).await;
    let tok = token(&sim).await;
    let truth = sim.ground_truth("expenses");
    let t = "2025-01-01T00:00:00Z";
    let t_us = micros(&json!("2025-01-01T00:00:00+00:00"));
    let after = |e: &Value, k: &str| e[k].is_string() && micros(&e[k]) >= t_us;
    let email = truth[0]["employee"]["user"]["email"]
        .as_str()
        .unwrap()
        .to_owned();
    let email_q = format!("eq.{email}");
    let updated_q = format!("gte.{t}");
    let cases: Vec<(Vec<(&str, &str)>, usize)> = vec![
        (
            vec![
                ("state", "in.(PAYMENT_PROCESSING,PAID)"),
                ("last_settled_at", "gte.2025-01-01T00:00:00Z"),
            ],
            count_where(&truth, |e| {
                ["PAYMENT_PROCESSING", "PAID"].contains(&e["state"].as_str().unwrap())
                    && after(e, "last_settled_at")
            }),
        ),
        (
            vec![
                ("state", "eq.PAID"),
                ("report_last_paid_at", "gte.2025-01-01"),
            ],
            count_where(&truth, |e| {
                e["state"] == "PAID" && after(e, "report_last_paid_at")
            }),
        ),
        (
            vec![(
                "source_account->type",
                "eq.PERSONAL_CORPORATE_CREDIT_CARD_ACCOUNT",
            )],
            count_where(&truth, |e| {
                e["source_account"]["type"] == "PERSONAL_CORPORATE_CREDIT_CARD_ACCOUNT"
            }),
        ),
        (
            vec![("employee->user->email", &email_q)],
            count_where(&truth, |e| e["employee"]["user"]["email"] == email.as_str()),
        ),
        (
            vec![("amount", "lt.0")],
            count_where(&truth, |e| e["amount"].to_string().starts_with('-')),
        ),
        (
            vec![("merchant", "is.null")],
            count_where(&truth, |e| e["merchant"].is_null()),
        ),
        (
            vec![("merchant", "not.is.null")],
            count_where(&truth, |e| !e["merchant"].is_null()),
        ),
        (
            vec![("merchant", "neq.Uber")],
            count_where(&truth, |e| {
                e["merchant"].is_string() && e["merchant"] != "Uber"
            }),
        ),
        (
            vec![("merchant", "ilike.*café*")],
            count_where(&truth, |e| {
                e["merchant"]
                    .as_str()
                    .is_some_and(|m| m.to_lowercase().contains("café"))
            }),
        ),
        (
            vec![("project_id", "is.null")],
            count_where(&truth, |e| e["project_id"].is_null()),
        ),
        (
            vec![("is_reimbursable", "is.true")],
            count_where(&truth, |e| e["is_reimbursable"] == true),
        ),
        (
            vec![("state", "not_in.(DRAFT,PAID)")],
            count_where(&truth, |e| {
                !["DRAFT", "PAID"].contains(&e["state"].as_str().unwrap())
            }),
        ),
        (
            vec![("report->state", "eq.APPROVED")],
            count_where(&truth, |e| e["report"]["state"] == "APPROVED"),
        ),
        (
            vec![("or", "(state.eq.DRAFT,and(state.eq.PAID,amount.gte.100))")],
            count_where(&truth, |e| {
                e["state"] == "DRAFT"
                    || (e["state"] == "PAID"
                        && e["amount"]
                            .to_string()
                            .parse::<rust_decimal::Decimal>()
                            .unwrap()
                            >= rust_decimal::Decimal::from(100))
            }),
        ),
        (
            vec![("updated_at", &updated_q)],
            count_where(&truth, |e| after(e, "updated_at")),
        ),
    ];
    for (q, expected) in cases {
        let mut q = q;
        q.push(("limit", "1"));
        let body = list(&sim, &tok, "expenses", &q).await;
        assert_eq!(body["count"], expected, "{q:?}");
    }
}

#[tokio::test]
async fn same_column_filtered_twice_applies_both() {
    let sim = start(cfg(400)).await;
    let tok = token(&sim).await;
    let truth = sim.ground_truth("expenses");
    let (lo, hi) = ("2024-06-01T00:00:00.000000+00:00", "2024-09-01T00:00:00Z");
    let (lo_us, hi_us) = (
        micros(&json!(lo)),
        micros(&json!("2024-09-01T00:00:00+00:00")),
    );
    let expected: Vec<String> = truth
        .iter()
        .filter(|e| (lo_us..hi_us).contains(&micros(&e["updated_at"])))
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!expected.is_empty() && expected.len() < truth.len());
    let lo_q = format!("gte.{lo}");
    let hi_q = format!("lt.{hi}");
    let body = list(
        &sim,
        &tok,
        "expenses",
        &[
            ("updated_at", &lo_q),
            ("updated_at", &hi_q),
            ("limit", "200"),
            ("order", "id.asc"),
        ],
    )
    .await;
    assert_eq!(body["count"], expected.len());
    assert_eq!(ids(&body), expected[..expected.len().min(200)]);
}

#[tokio::test]
async fn order_supports_multiple_columns_and_directions() {
    let sim = start(cfg(300)).await;
    let tok = token(&sim).await;
    let body = list(
        &sim,
        &tok,
        "expenses",
        &[("order", "amount.desc,id.asc"), ("limit", "200")],
    )
    .await;
    let amounts: Vec<f64> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["amount"].to_string().parse().unwrap())
        .collect();
    assert!(amounts.windows(2).all(|w| w[0] >= w[1]));
    let body = list(
        &sim,
        &tok,
        "expenses",
        &[
            ("order", "project_id.asc.nullsfirst,id.desc"),
            ("limit", "5"),
        ],
    )
    .await;
    assert!(body["data"][0]["project_id"].is_null());
    let body = list(
        &sim,
        &tok,
        "expenses",
        &[("order", "employee->user->email.asc"), ("limit", "200")],
    )
    .await;
    let emails: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["employee"]["user"]["email"].as_str().unwrap())
        .collect();
    assert!(emails.windows(2).all(|w| w[0] <= w[1]));
}

/// Pages with the client's keyset filter and returns (ids, requests made).
async fn keyset_page_all(
    sim: &Simulator,
    tok: &str,
    limit: usize,
    quoted: bool,
) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut cursor: Option<(String, String)> = None;
    let lim = limit.to_string();
    let mut requests = 0;
    loop {
        let filter = cursor.as_ref().map(|(t, id)| {
            if quoted {
                format!("(updated_at.gt.\"{t}\",and(updated_at.eq.\"{t}\",id.gt.{id}))")
            } else {
                format!("(updated_at.gt.{t},and(updated_at.eq.{t},id.gt.{id}))")
            }
        });
        let mut q = vec![("order", "updated_at.asc,id.asc"), ("limit", lim.as_str())];
        if let Some(f) = &filter {
            q.push(("or", f));
        }
        let body = list(sim, tok, "expenses", &q).await;
        requests += 1;
        let data = body["data"].as_array().unwrap();
        out.extend(ids(&body));
        if data.len() < limit {
            return (out, requests);
        }
        let last = data.last().unwrap();
        cursor = Some((
            last["updated_at"].as_str().unwrap().to_owned(),
            last["id"].as_str().unwrap().to_owned(),
        ));
    }
}

#[tokio::test]
async fn keyset_or_filter_pages_through_ties_without_gaps() {
    let sim = start(cfg(500)).await;
    let tok = token(&sim).await;
    let mut truth: Vec<(i64, String)> = sim
        .ground_truth("expenses")
        .iter()
        .map(|e| {
            (
                micros(&e["updated_at"]),
                e["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    truth.sort();
    let expected: Vec<String> = truth.iter().map(|(_, id)| id.clone()).collect();
    let biggest_tie = {
        let mut counts = std::collections::HashMap::new();
        for (t, _) in &truth {
            *counts.entry(*t).or_insert(0usize) += 1;
        }
        counts.into_values().max().unwrap()
    };
    assert!(
        biggest_tie > 25,
        "data must have a tie group larger than a page ({biggest_tie})"
    );
    for quoted in [false, true] {
        let (got, requests) = keyset_page_all(&sim, &tok, 25, quoted).await;
        assert_eq!(got, expected, "quoted={quoted}");
        assert_eq!(requests, 500 / 25 + 1);
    }
}

#[tokio::test]
async fn mutations_while_paging_move_records_past_the_cursor() {
    let sim = start(cfg(300)).await;
    let tok = token(&sim).await;
    let first = list(
        &sim,
        &tok,
        "expenses",
        &[("order", "updated_at.asc,id.asc"), ("limit", "100")],
    )
    .await;
    let before = sim.ground_truth("expenses");
    sim.mutate(20);
    let deleted = sim.delete(5);
    let truth = sim.ground_truth("expenses");
    assert_eq!(truth.len(), 295);
    let last = first["data"].as_array().unwrap().last().unwrap();
    let (t, id) = (
        last["updated_at"].as_str().unwrap(),
        last["id"].as_str().unwrap(),
    );
    let f = format!("(updated_at.gt.\"{t}\",and(updated_at.eq.\"{t}\",id.gt.{id}))");
    let rest = list(
        &sim,
        &tok,
        "expenses",
        &[
            ("order", "updated_at.asc,id.asc"),
            ("limit", "200"),
            ("or", &f),
        ],
    )
    .await;
    let rest_ids = ids(&rest);
    // Every record changed by mutate() is newer than any cursor, so paging on reaches it again.
    let changed: Vec<&Value> = truth.iter().filter(|e| !before.contains(e)).collect();
    assert!(changed.len() >= 15, "{} changed", changed.len());
    assert!(
        changed
            .iter()
            .all(|e| micros(&e["updated_at"]) > micros(&json!(t)))
    );
    assert!(deleted.iter().all(|d| !rest_ids.contains(d)));
    let cursor = (micros(&json!(t)), id.to_owned());
    let beyond = truth
        .iter()
        .filter(|e| {
            (
                micros(&e["updated_at"]),
                e["id"].as_str().unwrap().to_owned(),
            ) > cursor
        })
        .count();
    assert_eq!(rest["count"].as_u64().unwrap() as usize, beyond);
}

// ---------------------------------------------------------------- limits and faults

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let sim = start(SimConfig {
        rate_limit: Some(5),
        ..cfg(5)
    })
    .await;
    let client = http();
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let r = client
            .post(format!("{}/oauth/cluster", sim.accounts_url()))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.headers()["retry-after"], "1");
            let body: Value = r.json().await.unwrap();
            assert!(body["message"].is_string());
        }
    }
    assert!(statuses[..5].iter().all(|&s| s == 401), "{statuses:?}");
    assert!(
        statuses.iter().filter(|&&s| s == 429).count() >= 5,
        "{statuses:?}"
    );
    // The bucket refills at the configured rate.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let r = client
        .post(format!("{}/oauth/cluster", sim.accounts_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let logged_429 = sim.request_log().iter().filter(|l| l.status == 429).count();
    assert_eq!(logged_429, statuses.iter().filter(|&&s| s == 429).count());
}

#[tokio::test]
async fn burst_429_fault_answers_the_next_n_data_requests() {
    let sim = start(cfg(5)).await;
    let tok = token(&sim).await;
    sim.set_faults(Faults {
        burst_429: 3,
        ..Faults::default()
    });
    // Auth requests are not data requests and are not affected.
    let _ = token(&sim).await;
    for _ in 0..3 {
        let r = http()
            .get(format!("{}/platform/v1/admin/expenses", sim.cluster_url()))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "1");
    }
    assert_eq!(
        get(&sim, &tok, "/platform/v1/admin/expenses", &[]).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn error_rate_fault_answers_5xx() {
    let sim = start(cfg(5)).await;
    let tok = token(&sim).await;
    sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (status, _) = get(&sim, &tok, "/platform/v1/admin/expenses", &[]).await;
        assert!(status.is_server_error(), "{status}");
        seen.insert(status.as_u16());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [500, 502, 503]);
    sim.set_faults(Faults::default());
    assert_eq!(
        get(&sim, &tok, "/platform/v1/admin/expenses", &[]).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn drop_rate_fault_closes_connections_or_truncates_bodies() {
    let sim = start(cfg(50)).await;
    let tok = token(&sim).await;
    sim.set_faults(Faults {
        drop_rate: 1.0,
        ..Faults::default()
    });
    let mut failures = 0;
    for _ in 0..6 {
        // A fresh client per request: a dropped connection must not poison a pool.
        let r = http()
            .get(format!("{}/platform/v1/admin/expenses", sim.cluster_url()))
            .bearer_auth(&tok)
            .send()
            .await;
        let failed = match r {
            Err(_) => true,
            Ok(resp) => resp.bytes().await.is_err(),
        };
        failures += failed as usize;
    }
    assert_eq!(failures, 6);
    let statuses: Vec<u16> = sim
        .request_log()
        .iter()
        .filter(|l| l.server == "cluster")
        .map(|l| l.status)
        .collect();
    assert!(
        statuses.contains(&0) && statuses.contains(&200),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn latency_fault_delays_responses() {
    let sim = start(cfg(5)).await;
    sim.set_faults(Faults {
        latency: Duration::from_millis(150),
        ..Faults::default()
    });
    let t = std::time::Instant::now();
    let _ = token(&sim).await;
    assert!(t.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn request_log_records_both_servers_without_tokens() {
    let sim = start(cfg(5)).await;
    let tok = token(&sim).await;
    let _ = get(
        &sim,
        &tok,
        "/platform/v1/admin/expenses",
        &[("limit", "2"), ("state", "eq.PAID")],
    )
    .await;
    let _ = get(
        &sim,
        &tok,
        "/platform/v1/admin/expenses",
        &[("limit", "999")],
    )
    .await;
    let log = sim.request_log();
    assert_eq!(log.len(), 3);
    assert_eq!(
        (
            log[0].server,
            log[0].method.as_str(),
            log[0].path.as_str(),
            log[0].status
        ),
        ("accounts", "POST", "/oauth/token", 200)
    );
    assert!(!log[0].authorization_present);
    assert_eq!(
        (log[1].server, log[1].path.as_str(), log[1].status),
        ("cluster", "/platform/v1/admin/expenses", 200)
    );
    assert_eq!(log[1].query, "limit=2&state=eq.PAID");
    assert!(log[1].authorization_present);
    assert_eq!(log[2].status, 400);
    assert!(log.windows(2).all(|w| w[0].at <= w[1].at));
    let dump = format!("{log:?}");
    assert!(!dump.contains(&tok) && !dump.contains(&sim.credentials().refresh_token));
}

#[tokio::test]
async fn credentials_debug_redacts_secrets() {
    let c = SimCredentials::default();
    let shown = format!("{c:?} {:?}", SimConfig::default());
    assert!(shown.contains("sim-client-id"));
    assert!(
        !shown.contains(&c.client_secret) && !shown.contains(&c.refresh_token),
        "{shown}"
    );
}

#[tokio::test]
async fn shutdown_stops_both_servers() {
    let sim = start(cfg(5)).await;
    let (a, c) = (sim.accounts_url(), sim.cluster_url());
    sim.shutdown().await;
    for url in [a, c] {
        assert!(
            reqwest::Client::new().get(&url).send().await.is_err(),
            "{url} still answers"
        );
    }
}

#[tokio::test]
async fn accounting_export_summary_bulk_records_export_state() {
    let sim = start(cfg(50)).await;
    let tok = token(&sim).await;
    let url = format!(
        "{}/platform/v1/admin/expenses/accounting_export_summary/bulk",
        sim.cluster_url()
    );
    let truth = sim.ground_truth("expenses");
    let (a, b) = (
        truth[0]["id"].as_str().unwrap(),
        truth[1]["id"].as_str().unwrap(),
    );
    let ok = json!({"data": [
        {"id": a, "state": "COMPLETE", "error_type": null, "url": "https://erp.example/a"},
        {"id": b, "state": "ERROR", "error_type": "MAPPING", "url": "https://erp.example/b"},
    ]});
    let r = http()
        .post(&url)
        .bearer_auth(&tok)
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let after = sim.ground_truth("expenses");
    assert_eq!(after[0]["accounting_export_summary"]["state"], "COMPLETE");
    assert_eq!(after[0]["is_exported"], true);
    assert!(after[0]["last_exported_at"].is_string());
    assert_eq!(
        after[1]["accounting_export_summary"]["error_type"],
        "MAPPING"
    );
    assert_eq!(
        after[0]["updated_at"], truth[0]["updated_at"],
        "write-back leaves updated_at alone"
    );

    // One bad row rejects the whole batch with Fyle's BulkError shape.
    let bad = json!({"data": [
        {"id": a, "state": "SKIPPED", "error_type": null, "url": "u"},
        {"id": "txDoesNotExist", "state": "DONE", "error_type": null, "url": "u"},
    ]});
    let r = http()
        .post(&url)
        .bearer_auth(&tok)
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "BulkError");
    let rows: Vec<(i64, &str)> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["row"].as_i64().unwrap(), p["key"].as_str().unwrap()))
        .collect();
    assert_eq!(rows, [(1, "id"), (1, "state")]);
    assert_eq!(
        sim.ground_truth("expenses")[0]["accounting_export_summary"]["state"],
        "COMPLETE"
    );

    let r = http()
        .post(&url)
        .bearer_auth(&tok)
        .json(&json!({"items": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "ValidationError");
    let r = http().post(&url).json(&ok).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}
