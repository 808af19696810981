//! The runner: takes the pipeline lock, recovers from any interrupted run,
//! wires source → transform → sinks with bounded channels, and commits the
//! outputs and the state together.

mod cancel;
mod dry_run;
pub mod progress;
mod run;
mod selection;
mod stream;
mod summary;
mod window;

use std::path::PathBuf;
use std::time::Instant;

use chrono::{DateTime, Utc};

pub use cancel::CancelToken;
pub use dry_run::{DryRun, dry_run};
pub use summary::{OutputSummary, RunStatus, RunSummary};
pub use window::{Plan, RunMode, plan_window};

use crate::config::{ConfigError, Pipeline};
use crate::error::Error;
use crate::http::HttpClient;
use crate::state;

/// Per-run choices that are not part of the pipeline file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Overrides `pipeline.output_dir`.
    pub output_dir: Option<PathBuf>,
    /// Use these credentials instead of resolving `[connection]` (demo, tests,
    /// embedding); `FyleCredentials` convert with `.into()`.
    pub credentials: Option<crate::sources::Credentials>,
    /// Incremental, full refresh, or a backfill of a given window.
    pub mode: RunMode,
    /// Credential vault for `[connection] vault = "…"`; default from
    /// `EXPENSE_SYNC_VAULT` or the user's config directory.
    pub vault: Option<PathBuf>,
    /// Carry on from the watermark even though the selection changed since it was set.
    pub accept_selection_change: bool,
    /// Raised (e.g. on SIGINT/SIGTERM) to stop the run; see [`CancelToken`].
    pub cancel: CancelToken,
    /// Export a sample of at most this many records; the state never advances.
    pub limit: Option<u64>,
    /// How often progress is reported; default [`progress::DEFAULT_INTERVAL`].
    pub progress_interval: Option<std::time::Duration>,
    /// Draw progress as a live line on stderr (a terminal) instead of log lines.
    pub live_progress: bool,
}

/// How a run ended: its summary, and the error if it failed.
#[derive(Debug)]
pub struct RunOutcome {
    /// What happened, always filled in.
    pub summary: RunSummary,
    /// Why the run failed, if it did.
    pub error: Option<Error>,
}

impl RunOutcome {
    /// The process exit code for this outcome.
    pub fn exit_code(&self) -> crate::ExitCode {
        match &self.error {
            Some(e) => e.exit_code(),
            None if self
                .summary
                .writeback
                .as_ref()
                .is_some_and(|w| w.failed.is_some()) =>
            {
                crate::ExitCode::WriteBack
            }
            None if self.summary.quarantined > 0 || self.summary.rejected > 0 => {
                crate::ExitCode::Partial
            }
            None => crate::ExitCode::Ok,
        }
    }
}

/// Runs `pipeline` once.
pub async fn run(pipeline: &Pipeline, http: &HttpClient, opts: &RunOptions) -> RunOutcome {
    let started_at = Utc::now();
    let clock = Instant::now();
    let stats_before = http.stats();
    let mut run = run::Run::new(pipeline, http, opts, new_run_id(started_at), started_at);
    let result = run.execute().await;
    let mut summary = run.summary;
    summary.finish(
        clock.elapsed(),
        http.stats().since(&stats_before),
        run.grants,
    );
    let error = result.err();
    summary.status = match (&error, summary.quarantined + summary.rejected) {
        (Some(Error::Interrupted(_)), _) => RunStatus::Interrupted,
        (Some(_), _) => RunStatus::Failed,
        (None, 0) => RunStatus::Ok,
        (None, _) => RunStatus::Partial,
    };
    summary.error = error.as_ref().map(|e| e.to_string());
    let mut outcome = RunOutcome { summary, error };
    outcome.summary.exit_code = outcome.exit_code().code();
    outcome
}

/// Why the output directory cannot be used, and what to do.
pub fn unwritable_output_dir(dir: &std::path::Path, e: &std::io::Error) -> String {
    format!(
        "output directory {} is not writable ({e}); create it with write permission for this user, \
         or choose another with pipeline.output_dir or --output-dir",
        dir.display()
    )
}

fn new_run_id(at: DateTime<Utc>) -> String {
    format!(
        "{}-{:04x}",
        at.format("%Y%m%dT%H%M%SZ"),
        rand::random::<u16>()
    )
}

/// The window this run covers, from the committed state.
fn plan_run(
    pipeline: &Pipeline,
    opts: &RunOptions,
    st: &state::State,
    started_at: DateTime<Utc>,
    safety_lag: std::time::Duration,
) -> Result<Plan, Error> {
    let plan = plan_window(
        &opts.mode,
        pipeline.spec.incremental.as_ref(),
        st,
        started_at,
        safety_lag,
    )
    .map_err(|m| Error::Config(ConfigError::single(&pipeline.file, "(command line)", m)))?;
    // A sample is the start of the window, not all of it: committing it as
    // progress would skip the rest.
    Ok(match opts.limit {
        Some(_) => Plan {
            kind: "sample",
            advance_to: None,
            ..plan
        },
        None => plan,
    })
}

/// The error for a sink whose output file exists already and may not be replaced.
fn output_exists(pipeline: &Pipeline, sink: usize, path: &std::path::Path) -> Error {
    let cfg = &pipeline.spec.sinks[sink];
    let overwrite = if matches!(cfg, crate::sinks::SinkConfig::Http(_)) {
        ""
    } else {
        ", or set `overwrite = true` on this sink to replace the file on every run"
    };
    Error::Config(ConfigError::single(
        &pipeline.file,
        format!("sinks[{sink}].{}", cfg.path_key()),
        format!(
            "{} already exists (an earlier run's output); expense-sync never replaces a committed \
             file. Nothing was written. Move the file away, put {} in the path to write a new file \
             every run{overwrite}",
            path.display(),
            crate::sinks::RUN_UNIQUE
        ),
    ))
}

fn interrupted_before_commit() -> Error {
    Error::Interrupted(
        "interrupted before the commit: nothing was written, temporary files were removed and \
         the state is unchanged; the next run exports this window again"
            .into(),
    )
}
