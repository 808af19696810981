//! Run metrics in the Prometheus/OpenMetrics text format, written at the end of
//! each run to a file for node-exporter's textfile collector and/or pushed to
//! a Pushgateway.
//!
//! Every value describes the last run, so every metric is a gauge: their
//! exposition is the same in OpenMetrics and in the classic Prometheus text
//! format, which is what the textfile collector and the Pushgateway parse.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::http::{HttpClient, HttpConfig, Request};
use crate::pipeline::{RunStatus, RunSummary};

/// The last-success metric, kept across failed runs.
pub const LAST_SUCCESS: &str = "expense_sync_last_success_timestamp_seconds";

pub mod config;

pub use config::{MetricsConfig, pushgateway_group_url, pushgateway_url};

/// What the metrics say about one finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunMetrics {
    /// Pipeline name (the `pipeline` label).
    pub pipeline: String,
    /// Tenant in a multi-tenant run (the `tenant` label, and a Pushgateway group of its own).
    pub tenant: Option<String>,
    /// Whether the run committed (status `ok` or `partial`).
    pub success: bool,
    /// Process exit code of the run.
    pub exit_code: i32,
    /// When the run ended, seconds since the epoch.
    pub finished_at: f64,
    /// Wall time.
    pub duration: Duration,
    /// Records received from the source.
    pub records_in: u64,
    /// Rows written to each sink.
    pub records_out: u64,
    /// Records quarantined.
    pub quarantined: u64,
    /// Records a receiver rejected.
    pub rejected: u64,
    /// HTTP requests (every attempt).
    pub requests: u64,
    /// Retried attempts.
    pub retries: u64,
    /// 429 answers.
    pub throttled: u64,
    /// Bytes of every committed output (for pushes, body bytes acknowledged).
    pub bytes_written: u64,
    /// The last run that committed, seconds since the epoch, if known.
    pub last_success: Option<f64>,
}

impl RunMetrics {
    /// The metrics of the run `summary` describes, ended at `finished_at`.
    pub fn from_summary(summary: &RunSummary, finished_at: DateTime<Utc>) -> Self {
        let success = matches!(summary.status, RunStatus::Ok | RunStatus::Partial);
        let finished_at = epoch_seconds(finished_at);
        Self {
            pipeline: summary.pipeline.clone(),
            tenant: summary.tenant.clone(),
            success,
            exit_code: summary.exit_code,
            finished_at,
            duration: Duration::from_millis(summary.duration_ms),
            records_in: summary.records_in,
            records_out: summary.records_out,
            quarantined: summary.quarantined,
            rejected: summary.rejected,
            requests: summary.http.requests,
            retries: summary.http.retries,
            throttled: summary.http.throttled_429,
            bytes_written: summary.outputs.iter().map(|o| o.bytes).sum(),
            last_success: success.then_some(finished_at),
        }
    }

    /// The label set of every sample: `{pipeline="…"}` or `{pipeline="…",tenant="…"}`.
    pub fn labels(&self) -> String {
        match &self.tenant {
            None => format!("{{pipeline=\"{}\"}}", escape_label(&self.pipeline)),
            Some(t) => format!(
                "{{pipeline=\"{}\",tenant=\"{}\"}}",
                escape_label(&self.pipeline),
                escape_label(t)
            ),
        }
    }

    /// The OpenMetrics text, ending with `# EOF`.
    pub fn render(&self) -> String {
        let label = self.labels();
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{label} {value}\n"
            ));
        };
        gauge(
            "expense_sync_last_run_success",
            "1 if the last run committed its outputs (status ok or partial), 0 if it failed.",
            u8::from(self.success).to_string(),
        );
        gauge(
            "expense_sync_last_run_exit_code",
            "Process exit code of the last run.",
            self.exit_code.to_string(),
        );
        gauge(
            "expense_sync_last_run_timestamp_seconds",
            "When the last run ended, in seconds since the Unix epoch.",
            format_f64(self.finished_at),
        );
        gauge(
            "expense_sync_last_run_duration_seconds",
            "Wall time of the last run.",
            format_f64(self.duration.as_secs_f64()),
        );
        for (name, help, value) in [
            (
                "expense_sync_last_run_records_in",
                "Records the last run received from the source.",
                self.records_in,
            ),
            (
                "expense_sync_last_run_records_out",
                "Rows the last run wrote to each sink.",
                self.records_out,
            ),
            (
                "expense_sync_last_run_quarantined_records",
                "Records the last run could not transform and quarantined.",
                self.quarantined,
            ),
            (
                "expense_sync_last_run_rejected_records",
                "Records a receiver rejected in the last run.",
                self.rejected,
            ),
            (
                "expense_sync_last_run_http_requests",
                "HTTP requests the last run sent, every attempt counted.",
                self.requests,
            ),
            (
                "expense_sync_last_run_http_retries",
                "HTTP attempts of the last run that were retries.",
                self.retries,
            ),
            (
                "expense_sync_last_run_http_throttled",
                "HTTP 429 answers the last run received.",
                self.throttled,
            ),
            (
                "expense_sync_last_run_bytes_written",
                "Bytes of the outputs the last run committed (pushes: body bytes acknowledged).",
                self.bytes_written,
            ),
        ] {
            gauge(name, help, value.to_string());
        }
        if let Some(t) = self.last_success {
            gauge(
                LAST_SUCCESS,
                "When a run last committed its outputs, in seconds since the Unix epoch.",
                format_f64(t),
            );
        }
        out.push_str("# EOF\n");
        out
    }
}

fn epoch_seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// A float as OpenMetrics writes it (`1.5`, `3.0`, no exponent for our ranges).
fn format_f64(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics file for `pipeline`: `{pipeline}` in the configured path expanded.
pub fn textfile_path(template: &Path, pipeline: &str) -> PathBuf {
    PathBuf::from(template.to_string_lossy().replace("{pipeline}", pipeline))
}

/// The last-success timestamp of `pipeline` in an earlier metrics text, if any.
pub fn previous_last_success(text: &str, pipeline: &str) -> Option<f64> {
    last_success_with(
        text,
        &format!("{{pipeline=\"{}\"}}", escape_label(pipeline)),
    )
}

/// The last-success timestamp of the series with exactly `labels`, if any.
fn last_success_with(text: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{LAST_SUCCESS}{labels} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Writes the metrics file atomically (temporary file + rename), keeping the
/// last-success time of the file it replaces when this run failed.
pub fn write_textfile(path: &Path, metrics: &RunMetrics, run_id: &str) -> Result<(), String> {
    let mut m = metrics.clone();
    if m.last_success.is_none() {
        m.last_success = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| last_success_with(&t, &m.labels()));
    }
    crate::fsutil::write_atomic(path, m.render().as_bytes(), run_id).map_err(|e| {
        format!(
            "cannot write the metrics file {}: {e}; check that its directory exists and is writable",
            path.display()
        )
    })
}

/// Sends the metrics to the Pushgateway group of the pipeline.
///
/// A committed run replaces the group (PUT). A failed run knows no new
/// last-success time, so it POSTs, which replaces only the metrics it sends
/// and leaves the previous last-success value in the group.
pub async fn push(base: &str, metrics: &RunMetrics) -> Result<(), String> {
    let mut group = vec![("pipeline", metrics.pipeline.as_str())];
    if let Some(t) = &metrics.tenant {
        group.push(("tenant", t.as_str()));
    }
    let url = pushgateway_group_url(base, &group)?;
    // Short timeouts and few retries: a missing Pushgateway must not hold up
    // a scheduled job for minutes. Still the project's one HTTP stack.
    let http = HttpClient::new(&HttpConfig {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(15),
        max_retries: 2,
        initial_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(2),
        ..HttpConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let mut m = metrics.clone();
    let method = if m.success {
        reqwest::Method::PUT
    } else {
        m.last_success = None;
        reqwest::Method::POST
    };
    let mut req = Request::new(method, url.clone());
    req.raw = Some((
        bytes::Bytes::from(m.render()),
        "text/plain; version=0.0.4; charset=utf-8".to_string(),
    ));
    req.any_success_body = true;
    http.execute(&req)
        .await
        .map(|_| ())
        .map_err(|e| format!("cannot push metrics to the Pushgateway at {url}: {e}"))
}

/// Writes and pushes what `cfg` asks for; returns a message per failure
/// (metrics never change a run's outcome or exit code).
pub async fn export(cfg: &MetricsConfig, summary: &RunSummary) -> Vec<String> {
    let metrics = RunMetrics::from_summary(summary, Utc::now());
    let mut failures = Vec::new();
    if let Some(t) = &cfg.textfile {
        let path = textfile_path(t, &summary.pipeline);
        if let Err(e) = write_textfile(&path, &metrics, &summary.run_id) {
            failures.push(e);
        }
    }
    if let Some(base) = &cfg.pushgateway
        && let Err(e) = push(base, &metrics).await
    {
        failures.push(e);
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushgateway_url_names_job_and_pipeline() {
        let u = pushgateway_url("http://gw:9091/", "approved").unwrap();
        assert_eq!(
            u.as_str(),
            "http://gw:9091/metrics/job/expense_sync/pipeline/approved"
        );
        assert!(pushgateway_url("gw:9091", "p").is_err());
    }

    #[test]
    fn pushgateway_group_values_with_a_slash_or_empty_are_base64url() {
        let u = pushgateway_group_url("http://gw:9091", &[("pipeline", "p"), ("tenant", "a/b")])
            .unwrap();
        assert_eq!(
            u.as_str(),
            "http://gw:9091/metrics/job/expense_sync/pipeline/p/tenant@base64/YS9i"
        );
        let u = pushgateway_group_url("http://gw:9091", &[("tenant", "")]).unwrap();
        assert_eq!(
            u.as_str(),
            "http://gw:9091/metrics/job/expense_sync/tenant@base64/="
        );
        let u = pushgateway_group_url("http://gw:9091", &[("tenant", "acme corp")]).unwrap();
        assert_eq!(
            u.as_str(),
            "http://gw:9091/metrics/job/expense_sync/tenant/acme%20corp"
        );
    }

    #[test]
    fn previous_last_success_is_read_back_from_rendered_text() {
        let m = RunMetrics {
            pipeline: "p".into(),
            tenant: None,
            success: true,
            exit_code: 0,
            finished_at: 1_700_000_000.25,
            duration: Duration::from_millis(1500),
            records_in: 1,
            records_out: 1,
            quarantined: 0,
            rejected: 0,
            requests: 3,
            retries: 0,
            throttled: 0,
            bytes_written: 10,
            last_success: Some(1_700_000_000.25),
        };
        assert_eq!(
            previous_last_success(&m.render(), "p"),
            Some(1_700_000_000.25)
        );
        assert_eq!(previous_last_success(&m.render(), "other"), None);
    }
}
