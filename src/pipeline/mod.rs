//! The runner: takes the pipeline lock, recovers from any interrupted run,
//! wires source → transform → sinks with bounded channels, and commits the
//! outputs and the state together.

mod cancel;
mod dry_run;
pub mod progress;
mod selection;
mod summary;
mod window;

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tracing::{info, warn};

pub use cancel::CancelToken;
pub use dry_run::{DryRun, dry_run};
pub use summary::{OutputSummary, RunStatus, RunSummary};
pub use window::{Plan, RunMode, plan_window};

use crate::auth::{FyleCredentials, FyleSession};
use crate::config::{ConfigError, Pipeline};
use crate::error::Error;
use crate::fsutil::StagedFile;
use crate::http::HttpClient;
use crate::row::Batch;
use crate::sinks::journal::{PushJournal, journal_path};
use crate::sinks::{Sink, SinkContext, SinkError, SinkOutput};
use crate::sources::SourceConfig;
use crate::sources::fyle::{FyleClient, FyleError, Page, PagerStats, fetch_window, run_pending};
use crate::state::{self, CommitPlan, PlannedFile, RunRecord, Version};
use crate::transforms::{Projector, TransformReport, Transforms, Verdict};

/// Pages in flight between the source and the transform stage.
const PAGE_BUFFER: usize = 8;
/// Batches in flight to each sink.
const BATCH_BUFFER: usize = 2;

/// Rows for the sinks with the source version of each (for pushes' per-record keys).
struct Versioned {
    batch: Batch,
    versions: Vec<Option<Version>>,
}

/// Per-run choices that are not part of the pipeline file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Overrides `pipeline.output_dir`.
    pub output_dir: Option<PathBuf>,
    /// Use these credentials instead of resolving `[connection]` (demo, tests, embedding).
    pub credentials: Option<FyleCredentials>,
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
    let run_id = new_run_id(started_at);
    let mut summary = RunSummary::new(pipeline.name(), &run_id, started_at);
    let mut grants = 0;
    let result = execute(
        pipeline,
        http,
        opts,
        &run_id,
        started_at,
        &mut summary,
        &mut grants,
    )
    .await;
    summary.finish(clock.elapsed(), http.stats().since(&stats_before), grants);
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

/// Everything the transform stage needs to know about de-duplication.
struct Dedup {
    cursor_field: String,
    /// Versions delivered by earlier runs inside this run's lookback.
    seen: HashSet<Version>,
    /// Versions at or after this instant are remembered for the next run.
    keep_from: Option<DateTime<Utc>>,
    kept: BTreeSet<Version>,
}

impl Dedup {
    fn is_delivered(&self, record: &serde_json::Value) -> bool {
        if self.seen.is_empty() {
            return false;
        }
        match version_of(record, &self.cursor_field) {
            Some((v, _)) => self.seen.contains(&v),
            None => false,
        }
    }

    fn remember(&mut self, record: &serde_json::Value) {
        let Some(from) = self.keep_from else { return };
        if let Some((v, at)) = version_of(record, &self.cursor_field)
            && at >= from
        {
            self.kept.insert(v);
        }
    }
}

fn version_of(record: &serde_json::Value, cursor: &str) -> Option<(Version, DateTime<Utc>)> {
    let text = record.get(cursor)?.as_str()?;
    let at = DateTime::parse_from_rfc3339(text).ok()?.with_timezone(&Utc);
    Some((
        Version {
            id: crate::record::record_id(record),
            cursor: text.to_string(),
        },
        at,
    ))
}

/// The Fyle session a run uses: given credentials, a vault connection, or `[connection]`.
fn open_session(
    pipeline: &Pipeline,
    http: &HttpClient,
    opts: &RunOptions,
) -> Result<FyleSession, Error> {
    let spec = &pipeline.spec;
    let mut problems = Vec::new();
    let credentials = match (&opts.credentials, &spec.connection.vault) {
        (Some(c), _) => Some(c.clone()),
        (None, Some(_)) => None,
        (None, None) => spec
            .connection
            .resolve("connection")
            .map_err(|ps| problems.extend(ps))
            .ok(),
    };
    for (i, sink) in spec.sinks.iter().enumerate() {
        problems.extend(sink.resolve_secrets(&format!("sinks[{i}]")));
    }
    if !problems.is_empty() {
        return Err(ConfigError {
            file: pipeline.file.clone(),
            problems,
        }
        .into());
    }
    Ok(match (credentials, &spec.connection.vault) {
        (Some(c), _) => FyleSession::new(http.clone(), c),
        (None, Some(name)) => {
            let vault =
                crate::auth::Vault::open(&crate::auth::vault::vault_path(opts.vault.as_deref()));
            FyleSession::from_vault(http.clone(), vault, name)?
        }
        (None, None) => unreachable!("connection secrets were resolved above"),
    })
}

/// The window this run covers, from the committed state.
fn plan_run(
    pipeline: &Pipeline,
    opts: &RunOptions,
    st: &state::State,
    started_at: DateTime<Utc>,
) -> Result<Plan, Error> {
    let SourceConfig::Fyle(source_cfg) = &pipeline.spec.source;
    let plan = plan_window(
        &opts.mode,
        pipeline.spec.incremental.as_ref(),
        st,
        started_at,
        source_cfg.safety_lag,
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

/// Passes on pages until `limit` records went through, then closes the
/// source's channel, which stops the pager after its request in flight.
fn take_records(mut pages: mpsc::Receiver<Page>, limit: u64) -> mpsc::Receiver<Page> {
    let (tx, rx) = mpsc::channel::<Page>(1);
    tokio::spawn(async move {
        let mut left = limit;
        while left > 0 {
            let Some(mut page) = pages.recv().await else {
                break;
            };
            page.records.truncate(left as usize);
            page.total = page.total.map(|t| t.min(limit));
            left -= page.records.len() as u64;
            if tx.send(page).await.is_err() {
                break;
            }
        }
    });
    rx
}

#[allow(clippy::too_many_arguments)]
async fn execute(
    pipeline: &Pipeline,
    http: &HttpClient,
    opts: &RunOptions,
    run_id: &str,
    started_at: DateTime<Utc>,
    summary: &mut RunSummary,
    grants: &mut u64,
) -> Result<(), Error> {
    let spec = &pipeline.spec;
    let SourceConfig::Fyle(source_cfg) = &spec.source;
    let source_cfg = &push_safe_source(source_cfg, &spec.sinks);
    let session = open_session(pipeline, http, opts)?;
    let projector = Projector::new(&spec.columns).map_err(|problems| ConfigError {
        file: pipeline.file.clone(),
        problems,
    })?;
    let transforms =
        Transforms::new(&spec.transforms, &pipeline.base_dir()).map_err(|problems| {
            ConfigError {
                file: pipeline.file.clone(),
                problems,
            }
        })?;
    let output_dir = opts
        .output_dir
        .clone()
        .unwrap_or_else(|| spec.pipeline.output_dir.clone());

    let session = Arc::new(session);
    let client = FyleClient::new(session.clone());
    // Authenticate before touching the disk: bad credentials must leave nothing behind.
    let auth = tokio::select! {
        auth = session.token() => auth,
        _ = opts.cancel.cancelled() => return Err(interrupted_before_commit()),
    };
    *grants = session.refresh_count();
    auth?;

    // One run per pipeline at a time; then bring outputs and state back to a
    // committed point if the previous run was interrupted.
    crate::fsutil::ensure_writable_dir(&output_dir)
        .map_err(|e| Error::Sink(unwritable_output_dir(&output_dir, &e)))?;
    let state_path = pipeline.state_path(&output_dir);
    let lock_path = PathBuf::from(format!("{}.lock", state_path.display()));
    let _lock = state::acquire(&lock_path, pipeline.name()).map_err(|e| match e {
        state::LockError::Held { .. } => Error::Locked(e.to_string()),
        other => Error::State(other.to_string()),
    })?;
    let mut st = state::load(&state_path, pipeline.name(), source_cfg.cursor())
        .map_err(|e| Error::State(e.to_string()))?;

    // The server stamps the cursor with its own clock: read it just before planning.
    let server_clock = read_server_clock(&client, source_cfg)
        .await
        .map_err(|e| source_error(e, source_cfg))?;
    let plan_now = window::planning_now(started_at, server_clock);
    let plan = plan_run(pipeline, opts, &st, plan_now)?;
    let ctx = SinkContext {
        pipeline: pipeline.name().to_string(),
        run_id: run_id.to_string(),
        started_at,
        output_dir: output_dir.clone(),
        window_start: plan.window.from,
        window_end: plan.window.to,
    };
    let mut roots: Vec<PathBuf> = vec![output_dir.clone()];
    for cfg in &spec.sinks {
        if let Some(parent) = crate::sinks::render_path(cfg.path_template(), &ctx).parent()
            && !roots.iter().any(|r| r == parent)
        {
            roots.push(parent.to_path_buf());
        }
    }
    let recovery =
        state::recover(&state_path, &mut st, &roots).map_err(|e| Error::State(e.to_string()))?;
    summary.recovered_run = recovery.rolled_forward.clone();
    summary.removed_temp_files = recovery.removed_temps.len() as u64;
    // Recovery may have advanced the watermark: plan again from the recovered state.
    let plan = if recovery.rolled_forward.is_some() {
        plan_run(pipeline, opts, &st, plan_now)?
    } else {
        plan
    };
    let ctx = SinkContext {
        window_start: plan.window.from,
        window_end: plan.window.to,
        ..ctx
    };
    // The watermark means "everything this selection matched up to here"; under
    // another selection an incremental run would silently skip what it adds.
    let selection = selection::fingerprint(spec, source_cfg);
    if plan.kind == "incremental"
        && st.watermark.is_some()
        && !opts.accept_selection_change
        && let Some(before) = &st.selection
    {
        let changes = before.changes(&selection);
        if !changes.is_empty() {
            return Err(Error::Config(ConfigError::single(
                &pipeline.file,
                "(selection)",
                selection::explain(&changes, st.watermark),
            )));
        }
    }
    summary.kind = plan.kind.to_string();
    summary.window_from = plan.window.from;
    summary.window_to = plan.window.to;

    // A fixed name that is already taken stops the run before it reads anything.
    for (i, cfg) in spec.sinks.iter().enumerate() {
        let path = crate::sinks::render_path(cfg.path_template(), &ctx);
        if !cfg.overwrite() && path.symlink_metadata().is_ok() {
            return Err(output_exists(pipeline, i, &path));
        }
    }
    // What receivers acknowledged in earlier runs that did not commit; a
    // journal of a run that has committed since is removed here.
    let journal = if spec
        .sinks
        .iter()
        .any(|s| matches!(s, crate::sinks::SinkConfig::Http(_)))
    {
        let committed = |run: &str| st.runs.iter().any(|r| r.run_id == run);
        Some(
            PushJournal::open(&journal_path(&state_path), run_id, committed)
                .map_err(|e| Error::State(e.to_string()))?,
        )
    } else {
        None
    };
    let mut sinks: Vec<Box<dyn Sink>> = Vec::with_capacity(spec.sinks.len());
    for cfg in &spec.sinks {
        match cfg.build(&ctx, projector.schema().clone()) {
            Ok(mut s) => {
                if let Some(j) = &journal {
                    s.use_journal(j);
                }
                sinks.push(s)
            }
            Err(e) => {
                sinks.into_iter().for_each(|s| s.abort());
                return Err(Error::Sink(e.to_string()));
            }
        }
    }

    let progress = progress::Progress::start(
        http,
        opts.progress_interval.unwrap_or(progress::DEFAULT_INTERVAL),
        spec.http.requests_per_second,
        opts.live_progress,
    );
    progress.phase("paging", http);

    // Stage 1: the source pages into a bounded channel.
    let (page_tx, page_rx) = mpsc::channel::<Page>(PAGE_BUFFER);
    let source_task = {
        let client = client.clone();
        let cfg = source_cfg.clone();
        let window = plan.window;
        tokio::spawn(async move { fetch_window(&client, &cfg, window, &page_tx).await })
    };

    // Stage 3: every sink on its own blocking thread, fed through its own bounded channel.
    let mut sink_txs = Vec::new();
    let mut workers = Vec::new();
    for mut sink in sinks {
        let (tx, mut rx) = mpsc::channel::<Arc<Versioned>>(BATCH_BUFFER);
        sink_txs.push(tx);
        workers.push(tokio::task::spawn_blocking(move || {
            while let Some(v) = rx.blocking_recv() {
                if let Err(e) = sink.write_versions(&v.batch, &v.versions) {
                    return (sink, Err(e));
                }
            }
            (sink, Ok(()))
        }));
    }

    // Stage 2 (here): de-duplicate, project records to rows, quarantine the ones that cannot be.
    let mut dedup = Dedup {
        cursor_field: source_cfg.cursor().to_string(),
        seen: if plan.dedup_against_state {
            st.boundary.iter().cloned().collect()
        } else {
            HashSet::new()
        },
        keep_from: plan.advance_to.map(|w| w - plan.lookback),
        kept: BTreeSet::new(),
    };
    let mut quarantine = Quarantine::new(&ctx);
    // A sample is for looking at: marking it exported in Fyle could hide those
    // records from the real runs whose filters leave exported ones out.
    let mut exported: Option<Vec<String>> = spec
        .writeback
        .as_ref()
        .filter(|_| opts.limit.is_none())
        .map(|_| Vec::new());
    let page_rx = match opts.limit {
        Some(n) => take_records(page_rx, n),
        None => page_rx,
    };
    let page_rx = progress.observe(page_rx);
    let mut report = TransformReport::default();
    // A stop drops the transform stage mid-page: the source sees its channel
    // close, the sinks their input end, and everything staged is aborted below.
    let mut transformed = tokio::select! {
        t = transform(
            page_rx,
            &transforms,
            &mut report,
            &projector,
            &sink_txs,
            &mut quarantine,
            &mut dedup,
            summary,
            &mut exported,
        ) => t,
        _ = opts.cancel.cancelled() => Err(interrupted_before_commit()),
    };
    drop(sink_txs);
    let interrupted = matches!(transformed, Err(Error::Interrupted(_)));
    if interrupted {
        // It may be waiting out a retry; nothing it fetches now is used.
        source_task.abort();
    }
    summary.filtered = report.filtered;
    summary.skipped = report.skipped;
    summary.skipped_records = std::mem::take(&mut report.skipped_records);
    // A `fail` mapping lists every unmapped value of the run at once, then nothing is committed.
    let unmapped = report.unmapped_problems(&spec.transforms);
    if transformed.is_ok() && !unmapped.is_empty() {
        transformed = Err(Error::Config(ConfigError {
            file: pipeline.file.clone(),
            problems: unmapped,
        }));
    }

    let source_result = source_task.await;
    *grants = session.refresh_count();
    let mut sinks = Vec::new();
    let mut sink_error: Option<SinkError> = None;
    for w in workers {
        match w.await {
            Ok((sink, res)) => {
                sinks.push(sink);
                if let Err(e) = res {
                    sink_error.get_or_insert(e);
                }
            }
            Err(join) => {
                sink_error.get_or_insert(SinkError {
                    sink: "sink".into(),
                    message: format!("the sink thread stopped unexpectedly: {join}"),
                });
            }
        }
    }
    let abort_all = |sinks: Vec<Box<dyn Sink>>, quarantine: Quarantine| {
        sinks.into_iter().for_each(|s| s.abort());
        quarantine.discard();
    };

    if interrupted {
        abort_all(sinks, quarantine);
        return Err(interrupted_before_commit());
    }
    let pager_stats: PagerStats = match source_result {
        Ok(Ok(stats)) => stats,
        Ok(Err(e)) => {
            abort_all(sinks, quarantine);
            return Err(source_error(e, source_cfg));
        }
        Err(join) => {
            abort_all(sinks, quarantine);
            return Err(Error::Internal(format!(
                "the source task stopped unexpectedly: {join}"
            )));
        }
    };
    summary.pages = pager_stats.pages;
    summary.duplicates_skipped += pager_stats.duplicates;
    if let Err(e) = transformed {
        abort_all(sinks, quarantine);
        return Err(e);
    }
    if let Some(e) = sink_error {
        abort_all(sinks, quarantine);
        return Err(Error::Sink(e.to_string()));
    }
    // The window must be closed on the server's clock too, or the state would
    // move past records the server has yet to stamp inside it.
    if let Some(end) = plan.advance_to {
        let cluster = session.token().await?.cluster.clone();
        let latest = http.server_clock(&cluster);
        if let Err(m) = window::check_window_closed(end, latest, Utc::now(), source_cfg.safety_lag)
        {
            abort_all(sinks, quarantine);
            return Err(Error::Source(m));
        }
    }

    progress.report_now(http);
    progress.phase("finishing", http);
    // Make every output durable under its temporary name…
    let mut outputs: Vec<SinkOutput> = Vec::new();
    let mut iter = sinks.into_iter();
    while let Some(sink) = iter.next() {
        let finished = tokio::task::spawn_blocking(move || sink.finish())
            .await
            .map_err(|e| Error::Internal(format!("sink finish panicked: {e}")))?;
        match finished {
            Ok(out) => outputs.push(out),
            Err(e) => {
                outputs.iter().for_each(SinkOutput::discard);
                iter.for_each(|s| s.abort());
                quarantine.discard();
                return Err(Error::Sink(e.to_string()));
            }
        }
    }
    // skip_empty: a sink that got no rows commits nothing; the state still
    // advances, so the next run does not select the same empty window again.
    let outputs: Vec<SinkOutput> = outputs
        .into_iter()
        .zip(&spec.sinks)
        .filter_map(|(out, cfg)| {
            if cfg.skip_empty() && out.total_rows() == 0 && out.delivery.is_none() {
                info!(
                    sink = cfg.kind(),
                    path = cfg.path_template(),
                    "no rows for this sink; skip_empty: no file written"
                );
                out.discard();
                None
            } else {
                Some(out)
            }
        })
        .collect();
    let quarantine_staged = match quarantine.finish() {
        Ok(q) => q,
        Err(e) => {
            outputs.iter().for_each(SinkOutput::discard);
            return Err(Error::Sink(format!("quarantine file: {e}")));
        }
    };
    // The last moment a stop can still leave everything as it was.
    if opts.cancel.is_cancelled() {
        outputs.iter().for_each(SinkOutput::discard);
        if let Some(q) = &quarantine_staged {
            q.discard();
        }
        return Err(interrupted_before_commit());
    }

    // …then commit: write the plan into the state, move files into place,
    // advance the state (see state::commit for why this order is crash-safe).
    // Outputs come back in the order of `spec.sinks`.
    let mut files: Vec<PlannedFile> = Vec::new();
    let mut taken: Option<Error> = None;
    for (i, (out, cfg)) in outputs.iter().zip(&spec.sinks).enumerate() {
        for o in out.staged_files() {
            // Split and partitioned sinks name their files only now: check them
            // before the commit point, where refusing still rolls back cleanly.
            if !cfg.overwrite() && taken.is_none() && o.final_path.symlink_metadata().is_ok() {
                taken = Some(output_exists(pipeline, i, &o.final_path));
            }
            files.push(PlannedFile {
                temp: o.temp_path.clone(),
                final_path: o.final_path.clone(),
                replace: cfg.overwrite(),
            });
        }
    }
    if let Some(e) = taken {
        outputs.iter().for_each(SinkOutput::discard);
        if let Some(q) = &quarantine_staged {
            q.discard();
        }
        return Err(e);
    }
    if let Some(q) = &quarantine_staged {
        files.push(PlannedFile {
            temp: q.temp_path.clone(),
            final_path: q.final_path.clone(),
            replace: false,
        });
    }
    // The run's files, as recorded in the state (the write-back plan is
    // bookkeeping, removed once carried out).
    let run_files: Vec<PathBuf> = files.iter().map(|f| f.final_path.clone()).collect();
    let mut rejected_ids = std::collections::HashMap::new();
    for d in outputs.iter().filter_map(|o| o.delivery.as_ref()) {
        rejected_ids.extend(d.rejected_ids.iter().cloned());
    }
    let writeback_plan = match (&spec.writeback, &exported) {
        (Some(_), Some(ids)) if !ids.is_empty() => {
            let path = crate::sources::fyle::plan_path(&output_dir, pipeline.name(), run_id);
            match crate::sources::fyle::stage_plan(&path, &ctx.temp_tag(), ids, &rejected_ids) {
                Ok(staged) => Some(staged),
                Err(e) => {
                    outputs
                        .iter()
                        .filter_map(|o| o.staged.as_ref())
                        .for_each(StagedFile::discard);
                    if let Some(q) = &quarantine_staged {
                        q.discard();
                    }
                    return Err(Error::Sink(format!(
                        "write-back plan {}: {e}",
                        path.display()
                    )));
                }
            }
        }
        _ => None,
    };
    if let Some(wp) = &writeback_plan {
        files.push(PlannedFile {
            temp: wp.temp_path.clone(),
            final_path: wp.final_path.clone(),
            replace: false,
        });
    }
    let advance = plan.advance_to.map(|to| {
        let watermark = st.watermark.map_or(to, |w| w.max(to));
        let keep_from = watermark - plan.lookback;
        let mut boundary: BTreeSet<Version> = st
            .boundary
            .iter()
            .filter(|v| {
                DateTime::parse_from_rfc3339(&v.cursor)
                    .is_ok_and(|t| t.with_timezone(&Utc) >= keep_from)
            })
            .cloned()
            .collect();
        boundary.extend(std::mem::take(&mut dedup.kept));
        state::Advance {
            watermark,
            boundary,
            selection: Some(selection.clone()),
        }
    });
    let commit_plan = CommitPlan {
        run: RunRecord {
            run_id: run_id.to_string(),
            kind: plan.kind.to_string(),
            window_from: plan.window.from,
            window_to: plan.window.to,
            committed_at: Utc::now(),
            rows: summary.records_out,
            files: run_files,
        },
        files,
        advance,
    };
    if let Err(e) = state::commit(&state_path, &mut st, commit_plan) {
        // Before the commit point the temps are ours to remove; after it the
        // plan is in the state file and the next run finishes it.
        if st.pending.is_none() {
            outputs.iter().for_each(SinkOutput::discard);
            if let Some(q) = &quarantine_staged {
                q.discard();
            }
            if let Some(wp) = &writeback_plan {
                wp.discard();
            }
        }
        return Err(Error::State(e.to_string()));
    }
    summary.watermark = st.watermark;
    // The commit covers what the journal held; a crash before this removal
    // is handled when the next run opens the journal.
    if let Some(j) = journal
        && let Err(e) = j.retire()
    {
        warn!("{e}; the next run removes it");
    }
    for out in &outputs {
        let final_path = out.staged.as_ref().map(|s| s.final_path.clone());
        let (path, dead_letter, rejected) = match &out.delivery {
            Some(d) => {
                summary.rejected += d.rejected;
                (PathBuf::from(&d.url), final_path, d.rejected)
            }
            None => (final_path.unwrap_or_default(), None, 0),
        };
        if let Some(dl) = &dead_letter {
            warn!(
                count = rejected,
                file = %dl.display(),
                "the receiver rejected some records; they are in the dead-letter file with their reasons"
            );
        }
        summary.outputs.push(OutputSummary {
            kind: out.kind.to_string(),
            path,
            rows: out.rows,
            bytes: out.bytes,
            rejected,
            dead_letter,
            http: out.delivery.as_ref().map(|d| d.http),
        });
        for c in &out.companions {
            summary.outputs.push(OutputSummary {
                kind: c.kind.to_string(),
                path: c.staged.final_path.clone(),
                rows: c.rows,
                bytes: c.bytes,
                rejected: 0,
                dead_letter: None,
                http: None,
            });
        }
    }
    if let Some(q) = quarantine_staged {
        warn!(
            count = summary.quarantined,
            file = %q.final_path.display(),
            "some records could not be transformed and were quarantined with their reasons"
        );
        summary.quarantine_file = Some(q.final_path.clone());
    }
    info!(
        records = summary.records_out,
        outputs = summary.outputs.len(),
        "run committed"
    );
    // Write-back comes after the commit: it can neither block nor undo it,
    // and its failure shows in the summary and the exit code.
    // The plan was committed with the outputs, so a crash here leaves it for
    // the next run, which carries out every plan still pending.
    if let Some(cfg) = &spec.writeback {
        progress.phase("write-back", http);
        let wb = tokio::select! {
            wb = run_pending(&client, cfg, &output_dir, pipeline.name()) => wb,
            _ = opts.cancel.cancelled() => return Err(Error::Interrupted(
                "interrupted during the write-back to Fyle: the run's outputs and state were \
                 committed; the write-back plan stays pending and the next run carries it out"
                    .into(),
            )),
        };
        progress.report_now(http);
        if let Some(why) = &wb.failed {
            warn!("{why}");
        }
        summary.writeback = Some(wb);
    }
    Ok(())
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

/// A pipeline that pushes over HTTP pages sequentially: parallel slices
/// deliver records in a timing-dependent order, and a rerun after a crash
/// must cut the same batches for the receiver to recognise their keys.
fn push_safe_source(
    cfg: &crate::sources::fyle::FyleSourceConfig,
    sinks: &[crate::sinks::SinkConfig],
) -> crate::sources::fyle::FyleSourceConfig {
    let mut cfg = cfg.clone();
    if cfg.concurrency > 1
        && sinks
            .iter()
            .any(|s| matches!(s, crate::sinks::SinkConfig::Http(_)))
    {
        info!(
            configured = cfg.concurrency,
            "an HTTP sink needs reproducible batches; paging the source sequentially"
        );
        cfg.concurrency = 1;
    }
    cfg
}

#[allow(clippy::too_many_arguments)]
async fn transform(
    mut pages: mpsc::Receiver<Page>,
    transforms: &Transforms,
    report: &mut TransformReport,
    projector: &Projector,
    sinks: &[mpsc::Sender<Arc<Versioned>>],
    quarantine: &mut Quarantine,
    dedup: &mut Dedup,
    summary: &mut RunSummary,
    exported: &mut Option<Vec<String>>,
) -> Result<(), Error> {
    while let Some(page) = pages.recv().await {
        if let Some(total) = page.total {
            info!(total, "records to export");
        }
        summary.records_in += page.records.len() as u64;
        let mut batch = Batch {
            rows: Vec::with_capacity(page.records.len()),
        };
        let mut versions = Vec::with_capacity(page.records.len());
        for mut record in page.records {
            let record = &mut record;
            if dedup.is_delivered(record) {
                summary.duplicates_skipped += 1;
                continue;
            }
            // Remembered from the source version, before transforms add fields.
            dedup.remember(record);
            let version = version_of(record, &dedup.cursor_field).map(|(v, _)| v);
            if transforms.apply(record, report) != Verdict::Keep {
                continue;
            }
            match projector.project(record) {
                Ok(row) => {
                    if let Some(ids) = exported.as_mut() {
                        ids.push(crate::record::record_id(record));
                    }
                    batch.rows.push(row);
                    versions.push(version);
                }
                Err(e) => {
                    summary.quarantined += 1;
                    quarantine
                        .add(&e, record)
                        .map_err(|io| Error::Sink(format!("quarantine file: {io}")))?;
                }
            }
        }
        summary.records_out += batch.rows.len() as u64;
        summary.amounts_normalised = projector.amounts_normalised();
        if batch.rows.is_empty() {
            continue;
        }
        let batch = Arc::new(Versioned { batch, versions });
        for tx in sinks {
            // A closed channel means that sink failed; its error is collected by the caller.
            if tx.send(batch.clone()).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Reads the data server's clock with a one-record request of the resource;
/// `None` when it sends no `Date` header (windows then follow this machine's clock).
async fn read_server_clock(
    client: &FyleClient,
    cfg: &crate::sources::fyle::FyleSourceConfig,
) -> Result<Option<crate::http::ServerClock>, FyleError> {
    let path = format!("{}/{}", cfg.role, cfg.resource);
    client
        .get(&path, &[("limit".to_string(), "1".to_string())])
        .await?;
    let cluster = client.session().token().await?.cluster.clone();
    let clock = client.session().http().server_clock(&cluster);
    // The Date header has one-second precision: smaller skews cannot be told apart.
    let noticeable = chrono::Duration::from_std(cfg.safety_lag)
        .unwrap_or_default()
        .max(chrono::Duration::seconds(1));
    match clock {
        Some(c) if c.skew().abs() > noticeable => {
            warn!(
                skew_ms = c.skew().num_milliseconds(),
                "the data server's clock is {} this machine's (more than source.safety_lag); \
                 windows end by the server's clock. Check NTP on this machine",
                crate::http::describe_skew(c.skew())
            );
        }
        Some(_) => {}
        None => warn!(
            "the data server sent no Date header; windows end by this machine's clock, \
             which must agree with the server's to within source.safety_lag"
        ),
    }
    Ok(clock)
}

fn interrupted_before_commit() -> Error {
    Error::Interrupted(
        "interrupted before the commit: nothing was written, temporary files were removed and \
         the state is unchanged; the next run exports this window again"
            .into(),
    )
}

fn source_error(e: FyleError, cfg: &crate::sources::fyle::FyleSourceConfig) -> Error {
    match e {
        FyleError::Auth(a) => Error::from(a),
        other => Error::Source(format!(
            "reading {}/{} from Fyle failed: {other}",
            cfg.role, cfg.resource
        )),
    }
}

/// Records that could not be transformed, kept with their reasons in a JSONL file.
struct Quarantine {
    path: PathBuf,
    tag: String,
    file: Option<(StagedFile, std::io::BufWriter<std::fs::File>)>,
}

impl Quarantine {
    fn new(ctx: &SinkContext) -> Self {
        Self {
            path: ctx
                .output_dir
                .join(format!("{}.{}.quarantine.jsonl", ctx.pipeline, ctx.run_id)),
            tag: ctx.temp_tag(),
            file: None,
        }
    }

    fn add(
        &mut self,
        err: &crate::transforms::RecordError,
        record: &serde_json::Value,
    ) -> std::io::Result<()> {
        use std::io::Write;
        if self.file.is_none() {
            let (staged, file) = StagedFile::create(&self.path, &self.tag)?;
            self.file = Some((staged, std::io::BufWriter::new(file)));
        }
        let (_, w) = self.file.as_mut().expect("opened above");
        let line = serde_json::json!({
            "record_id": err.record_id,
            "column": err.column,
            "reason": err.reason,
            "record": record,
        });
        serde_json::to_writer(&mut *w, &line)?;
        w.write_all(b"\n")
    }

    fn finish(self) -> std::io::Result<Option<StagedFile>> {
        use std::io::Write;
        match self.file {
            None => Ok(None),
            Some((staged, mut w)) => {
                w.flush()?;
                let f = w.into_inner().map_err(|e| e.into_error())?;
                crate::fsutil::sync_file(&f, &staged.temp_path)?;
                Ok(Some(staged))
            }
        }
    }

    fn discard(self) {
        if let Some((staged, _)) = self.file {
            staged.discard();
        }
    }
}
