//! Notifications after a run: the run summary posted to a RingCentral
//! team-messaging incoming webhook as an Adaptive Card, or to any JSON
//! webhook, through the one HTTP stack. A notification that fails is logged
//! and counted; it never changes the run's outcome or exit code.

use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tracing::{info, warn};
use url::Url;

use crate::http::{HttpClient, Request};
use crate::pipeline::{RunStatus, RunSummary};

pub mod config;

pub use config::{NotifyConfig, NotifyKind, NotifySummary, NotifyWhen};

fn status_word(s: &RunStatus) -> &'static str {
    match s {
        RunStatus::Running => "running",
        RunStatus::Ok => "committed",
        RunStatus::Partial => "partial",
        RunStatus::Failed => "failed",
        RunStatus::Interrupted => "interrupted",
    }
}

fn window(s: &RunSummary) -> String {
    let f = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| "…".into())
    };
    format!("{} → {}", f(s.window_from), f(s.window_to))
}

/// The facts both formats carry, as (title, value) pairs.
fn facts(s: &RunSummary) -> Vec<(String, String)> {
    let mut v = vec![
        (
            "Status".into(),
            format!("{} (exit {})", status_word(&s.status), s.exit_code),
        ),
        ("Run".into(), s.run_id.clone()),
        ("Window".into(), window(s)),
        (
            "Records".into(),
            format!("{} in, {} out", s.records_in, s.records_out),
        ),
        (
            "Duration".into(),
            format!("{:.1} s", s.duration_ms as f64 / 1000.0),
        ),
    ];
    if s.quarantined > 0 || s.rejected > 0 {
        v.push((
            "Problems".into(),
            format!(
                "{} quarantined, {} rejected by receivers",
                s.quarantined, s.rejected
            ),
        ));
    }
    for o in &s.outputs {
        v.push((
            format!("{} sink", o.kind),
            format!("{} rows → {}", o.rows, o.path.display()),
        ));
    }
    if let Some(e) = &s.error {
        v.push(("Error".into(), e.clone()));
    }
    v
}

/// The RingCentral incoming-webhook body: an Adaptive Card with a FactSet.
pub fn ringcentral_card(s: &RunSummary) -> Value {
    let title = format!("expense-sync: {} {}", s.pipeline, status_word(&s.status));
    let facts: Vec<Value> = facts(s)
        .into_iter()
        .map(|(t, v)| json!({"title": t, "value": v}))
        .collect();
    json!({
        "activity": "expense-sync",
        "title": title,
        "text": format!("Pipeline **{}** {}", s.pipeline, status_word(&s.status)),
        "attachments": [{
            "type": "AdaptiveCard",
            "version": "1.0",
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "body": [
                {"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": true},
                {"type": "FactSet", "facts": facts}
            ]
        }]
    })
}

/// The generic webhook body: the run summary with a short text line.
pub fn webhook_body(s: &RunSummary) -> Value {
    json!({
        "text": format!("expense-sync: {} {}", s.pipeline, status_word(&s.status)),
        "summary": serde_json::to_value(s).unwrap_or(Value::Null),
    })
}

/// Sends every applicable notification for a finished run.
pub async fn notify_all(
    http: &HttpClient,
    targets: &[NotifyConfig],
    summary: &RunSummary,
) -> NotifySummary {
    let mut out = NotifySummary::default();
    for (i, t) in targets.iter().enumerate() {
        if t.on == NotifyWhen::Problems && matches!(summary.status, RunStatus::Ok) {
            continue;
        }
        match send(http, t, summary, i).await {
            Ok(()) => {
                out.sent += 1;
                info!(target = i, kind = ?t.kind, "notification sent");
            }
            Err(e) => {
                warn!(target = i, kind = ?t.kind, error = %e, "notification failed; the run's outcome is unchanged");
                out.failed += 1;
                out.errors.push(e);
            }
        }
    }
    out
}

async fn send(
    http: &HttpClient,
    t: &NotifyConfig,
    summary: &RunSummary,
    i: usize,
) -> Result<(), String> {
    let key = format!("notify[{i}].url");
    let url = t
        .url
        .resolve(&key, false)
        .map_err(|p| format!("{}: {}", p.key, p.message))?;
    let url = Url::parse(url.expose_secret())
        .map_err(|e| format!("{key} is not a URL ({e}); it is not shown because it is a secret"))?;
    let body = match t.kind {
        NotifyKind::Ringcentral => ringcentral_card(summary),
        NotifyKind::Webhook => webhook_body(summary),
    };
    let mut req = Request::post_json(url, body);
    // A webhook may answer with any body, or none.
    req.any_success_body = true;
    http.execute(&req).await.map(|_| ()).map_err(|e| {
        // The error text names the URL; the URL is the secret, so drop it.
        format!(
            "{key} ({:?} webhook): {}",
            t.kind,
            redact_url(&e.to_string())
        )
    })
}

fn redact_url(s: &str) -> String {
    s.split_whitespace()
        .map(|w| {
            if w.starts_with("http://") || w.starts_with("https://") {
                Url::parse(w.trim_end_matches([':', ',', ')']))
                    .map(|u| format!("{}://{}/[REDACTED]", u.scheme(), u.host_str().unwrap_or("")))
                    .unwrap_or_else(|_| "[REDACTED]".into())
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
