//! The machine-readable run summary.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::http::StatsSnapshot;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Still running (never seen in a finished summary).
    Running,
    /// Every record exported and committed.
    Ok,
    /// Committed, but some records were quarantined or rejected by a receiver.
    Partial,
    /// Nothing was committed.
    Failed,
    /// Stopped by SIGINT/SIGTERM; `error` says whether the commit point was passed.
    Interrupted,
}

/// One committed output file.
#[derive(Debug, Clone, Serialize)]
pub struct OutputSummary {
    /// Sink kind (`csv`, `parquet`).
    pub kind: String,
    /// Final path (for `http`, the URL pushed to).
    pub path: PathBuf,
    /// Data rows written (for `http`, rows the receiver acknowledged).
    pub rows: u64,
    /// File size (for `http`, body bytes acknowledged).
    pub bytes: u64,
    /// Records a receiver rejected (`http` only).
    #[serde(skip_serializing_if = "is_zero")]
    pub rejected: u64,
    /// Where rejected records went, with their reasons (`http` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<PathBuf>,
    /// Requests of this sink's own HTTP client (`http` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<StatsSnapshot>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a run did, printed as JSON at the end of `run`.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Pipeline name.
    pub pipeline: String,
    /// The tenant this run was for, in a multi-tenant run (`--connections`, `--tenants`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Unique id of this run (also in temporary file names).
    pub run_id: String,
    /// Outcome.
    pub status: RunStatus,
    /// `incremental`, `full_refresh`, `backfill` or `full`.
    pub kind: String,
    /// Process exit code for this outcome.
    pub exit_code: i32,
    /// Start time.
    pub started_at: DateTime<Utc>,
    /// Wall time.
    pub duration_ms: u64,
    /// Lower bound of the cursor window (inclusive), if any.
    pub window_from: Option<DateTime<Utc>>,
    /// Upper bound of the cursor window (exclusive).
    pub window_to: Option<DateTime<Utc>>,
    /// The committed watermark after this run (incremental pipelines).
    pub watermark: Option<DateTime<Utc>>,
    /// An interrupted earlier run whose commit this run finished first.
    pub recovered_run: Option<String>,
    /// Temporary files of an interrupted earlier run that were removed.
    pub removed_temp_files: u64,
    /// Records received from the source.
    pub records_in: u64,
    /// Rows written to each sink.
    pub records_out: u64,
    /// Records that could not be transformed.
    pub quarantined: u64,
    /// Amounts carrying binary-float noise (`0.30000000000000004`) that were
    /// normalised to their exact decimal (see "Money" in the README).
    pub amounts_normalised: u64,
    /// Where quarantined records went.
    pub quarantine_file: Option<PathBuf>,
    /// Records a receiver rejected (every HTTP sink together); see each output's dead-letter file.
    pub rejected: u64,
    /// The write-back of export status to Fyle, when the pipeline has `[writeback]`.
    pub writeback: Option<crate::sources::fyle::WriteBackSummary>,
    /// Records left out by `[[transforms]]` filters.
    pub filtered: u64,
    /// Records left out by a mapping with `on_missing = "skip"`.
    pub skipped: u64,
    /// The first skipped records (up to 200), each with the reason.
    pub skipped_records: Vec<crate::transforms::steps::SkippedRecord>,
    /// Record versions seen twice (page boundaries, lookback overlap) and dropped.
    pub duplicates_skipped: u64,
    /// Pages fetched.
    pub pages: u64,
    /// Request counters for this run.
    pub http: StatsSnapshot,
    /// Access tokens granted during the run.
    pub token_grants: u64,
    /// Committed outputs.
    pub outputs: Vec<OutputSummary>,
    /// Peak resident memory of the process so far (Linux only).
    pub peak_rss_bytes: Option<u64>,
    /// Why the run failed.
    pub error: Option<String>,
    /// Notifications sent after the run (`[[notify]]`); failures never change the outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify: Option<crate::notify::config::NotifySummary>,
}

impl RunSummary {
    /// A summary for a run that is starting.
    pub fn new(pipeline: &str, run_id: &str, started_at: DateTime<Utc>) -> Self {
        Self {
            pipeline: pipeline.to_string(),
            tenant: None,
            run_id: run_id.to_string(),
            status: RunStatus::Running,
            kind: String::new(),
            exit_code: 0,
            started_at,
            duration_ms: 0,
            window_from: None,
            window_to: None,
            watermark: None,
            recovered_run: None,
            removed_temp_files: 0,
            records_in: 0,
            records_out: 0,
            quarantined: 0,
            amounts_normalised: 0,
            quarantine_file: None,
            rejected: 0,
            writeback: None,
            filtered: 0,
            skipped: 0,
            skipped_records: Vec::new(),
            duplicates_skipped: 0,
            pages: 0,
            http: StatsSnapshot::default(),
            token_grants: 0,
            outputs: Vec::new(),
            peak_rss_bytes: None,
            error: None,
            notify: None,
        }
    }

    pub(crate) fn finish(&mut self, elapsed: Duration, http: StatsSnapshot, grants: u64) {
        self.duration_ms = elapsed.as_millis() as u64;
        self.http = http;
        self.token_grants = grants;
        self.peak_rss_bytes = peak_rss_bytes();
    }
}

/// `VmHWM` from /proc/self/status: the most memory the process has held.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
