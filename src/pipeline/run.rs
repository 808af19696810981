//! One run, stage by stage: plan → stream → finish → commit → after-commit.
//! Each stage is a method over [`Run`], which holds what the stages share.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::OutputSummary;
use super::stream::{Dedup, Quarantine, TransformStage, Versioned, batch_pool, take_records};
use super::{
    Plan, RunOptions, RunSummary, interrupted_before_commit, output_exists, plan_run, progress,
    selection, window,
};
use crate::config::{ConfigError, Pipeline};
use crate::error::Error;
use crate::fsutil::StagedFile;
use crate::http::HttpClient;
use crate::sinks::journal::{PushJournal, journal_path};
use crate::sinks::{Sink, SinkContext, SinkError, SinkOutput};
use crate::sources::{BuildError, Page, RunFiles, Source, SourceContext};
use crate::state::{self, CommitPlan, PlannedFile, RunRecord, Selection, Version};
use crate::store::OutputLocation;
use crate::transforms::{Projector, TransformReport, Transforms};

/// Pages queued between the source and the transform stage.
///
/// Each queued page holds its body (~1 MB, kept for quarantine) and its
/// decoded records. Two are enough to keep the transform stage busy: a pager
/// worker that finds the queue full holds its own page until there is room,
/// so up to `concurrency` more pages stand ready behind these.
const PAGE_BUFFER: usize = 2;
/// Batches in flight to each sink.
const BATCH_BUFFER: usize = 2;

/// What every stage of one run shares.
pub(super) struct Run<'a> {
    pub(super) pipeline: &'a Pipeline,
    pub(super) http: &'a HttpClient,
    pub(super) opts: &'a RunOptions,
    pub(super) run_id: String,
    pub(super) started_at: DateTime<Utc>,
    pub(super) summary: RunSummary,
    /// Token grants the source made, for the summary (also when the run fails).
    pub(super) grants: u64,
    /// Where the sinks write: the output directory, or the local spool when it is remote.
    output_dir: PathBuf,
    state_path: PathBuf,
    /// Outputs and state in object storage (`output_dir = "s3://…"`).
    remote: Option<RemoteRun>,
}

/// A run whose outputs and state live in object storage: the sinks write into
/// a local spool, and the commit stage uploads and commits there.
struct RemoteRun {
    /// The output location as configured, e.g. `s3://bucket/prefix`.
    url: String,
    /// Local directory the sinks write into; removed when the run ends.
    spool: PathBuf,
    /// The state object, once read (plan stage).
    target: Option<crate::store::state::RemoteTarget>,
    /// One run per pipeline at a time; released when the run ends.
    lease: Option<crate::store::lease::Lease>,
}

impl RemoteRun {
    /// The key, relative to the output prefix, of a file the sinks wrote under the spool.
    fn relative(&self, local: &std::path::Path) -> Option<String> {
        let rel = local.strip_prefix(&self.spool).ok()?;
        let parts: Vec<String> = rel
            .components()
            .map(|c| match c {
                std::path::Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect::<Option<_>>()?;
        (!parts.is_empty()).then(|| parts.join("/"))
    }

    /// How a spooled file is shown to people: its final object URL.
    fn shown(&self, local: &std::path::Path) -> PathBuf {
        match self.relative(local) {
            Some(rel) => PathBuf::from(format!("{}/{rel}", self.url.trim_end_matches('/'))),
            None => local.to_path_buf(),
        }
    }
}

/// What planning produced: the opened source, the locked state, the window and the sinks.
struct Planned {
    source: Box<dyn Source>,
    projector: Projector,
    transforms: Transforms,
    /// The local pipeline lock (a remote run holds a lease in [`RemoteRun`] instead).
    _lock: Option<state::PipelineLock>,
    st: state::State,
    plan: Plan,
    ctx: SinkContext,
    selection: Selection,
    journal: Option<PushJournal>,
    sinks: Vec<Box<dyn Sink>>,
}

/// What streaming produced: sinks that took every batch, and the transform stage's leftovers.
struct Streamed {
    sinks: Vec<Box<dyn Sink>>,
    stage: TransformStage,
    progress: progress::Progress,
}

/// Outputs durable under their temporary names, ready to commit.
struct Finished {
    outputs: Vec<SinkOutput>,
    quarantine: Option<StagedFile>,
    dedup: Dedup,
    exported: Option<crate::sources::ExportedIds>,
    progress: progress::Progress,
}

impl<'a> Run<'a> {
    pub(super) fn new(
        pipeline: &'a Pipeline,
        http: &'a HttpClient,
        opts: &'a RunOptions,
        run_id: String,
        started_at: DateTime<Utc>,
    ) -> Self {
        let output_dir = opts
            .output_dir
            .clone()
            .unwrap_or_else(|| pipeline.spec.pipeline.output_dir.clone());
        let state_path = pipeline.state_path(&output_dir);
        let remote = crate::store::is_remote(&output_dir).then(|| RemoteRun {
            url: output_dir.to_string_lossy().into_owned(),
            spool: spool_dir(pipeline.name(), &run_id),
            target: None,
            lease: None,
        });
        let output_dir = remote.as_ref().map_or(output_dir, |r| r.spool.clone());
        Self {
            summary: RunSummary::new(pipeline.name(), &run_id, started_at),
            pipeline,
            http,
            opts,
            run_id,
            started_at,
            grants: 0,
            output_dir,
            state_path,
            remote,
        }
    }

    /// Every stage in order; a remote run then releases its lease and spool.
    pub(super) async fn execute(&mut self) -> Result<(), Error> {
        let result = self.stages().await;
        if let Some(r) = self.remote.take() {
            let RemoteRun { spool, lease, .. } = r;
            tokio::task::spawn_blocking(move || {
                drop(lease);
                let _ = std::fs::remove_dir_all(&spool);
            })
            .await
            .map_err(|e| Error::Internal(format!("releasing the lease panicked: {e}")))?;
        }
        result
    }

    async fn stages(&mut self) -> Result<(), Error> {
        let mut planned = self.plan().await?;
        let streamed = self.stream(&mut planned).await?;
        let finished = self.finish(streamed).await?;
        let progress = self.commit(&mut planned, finished)?;
        self.after_commit(planned.source.as_ref(), progress).await
    }

    /// Stage 1: open the source, lock and recover the state, plan the window, build the sinks.
    async fn plan(&mut self) -> Result<Planned, Error> {
        let pipeline = self.pipeline;
        let spec = &pipeline.spec;
        let mut source = open_source(pipeline, self.http, self.opts)?;
        let mut projector = Projector::new(&spec.columns).map_err(|problems| ConfigError {
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
        // Parse only what the run reads: columns, transforms, the cursor and `id`
        // (de-duplication, paging and the after-commit hook use those two).
        // The columns' values, the cursor and `id` are read from the page as
        // slices, not built into records: a plain export builds no tree at all.
        let mut fields = crate::extract::FieldSet::nothing();
        projector.capture_fields(&mut fields, &transforms);
        transforms.read_fields(&mut fields);
        fields.capture_key(source.cursor());
        fields.capture_key("id");
        source.read_only(fields);
        // Authenticate before touching the disk: bad credentials must leave nothing behind.
        let auth = tokio::select! {
            auth = source.open() => auth,
            _ = self.opts.cancel.cancelled() => return Err(interrupted_before_commit()),
        };
        self.grants = source.grants();
        auth?;

        // One run per pipeline at a time; then bring outputs and state back to a
        // committed point if the previous run was interrupted.
        let output_dir = &self.output_dir;
        crate::fsutil::ensure_writable_dir(output_dir)
            .map_err(|e| Error::Sink(super::unwritable_output_dir(output_dir, &e)))?;
        let (lock, mut st) = match self.remote.as_mut() {
            None => {
                let lock_path = PathBuf::from(format!("{}.lock", self.state_path.display()));
                let lock = state::acquire(&lock_path, pipeline.name()).map_err(|e| match e {
                    state::LockError::Held { .. } => Error::Locked(e.to_string()),
                    other => Error::State(other.to_string()),
                })?;
                let st = state::load(&self.state_path, pipeline.name(), source.cursor())
                    .map_err(|e| Error::State(e.to_string()))?;
                (Some(lock), st)
            }
            Some(remote) => {
                let st = open_remote(
                    pipeline,
                    remote,
                    &self.state_path,
                    &self.run_id,
                    source.cursor(),
                )?;
                (None, st)
            }
        };

        // The server stamps the cursor with its own clock: read it just before planning.
        let server_clock = source.server_clock().await?;
        let plan_now = window::planning_now(self.started_at, server_clock);
        let plan = plan_run(pipeline, self.opts, &st, plan_now, source.safety_lag())?;
        let ctx = SinkContext {
            pipeline: pipeline.name().to_string(),
            run_id: self.run_id.clone(),
            started_at: self.started_at,
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
        let recovery = match self.remote.as_mut().and_then(|r| r.target.as_mut()) {
            None => state::recover(&self.state_path, &mut st, &roots),
            Some(target) => target.recover(&mut st),
        }
        .map_err(|e| Error::State(e.to_string()))?;
        self.summary.recovered_run = recovery.rolled_forward.clone();
        self.summary.removed_temp_files = recovery.removed_temps.len() as u64;
        // Recovery may have advanced the watermark: plan again from the recovered state.
        let plan = if recovery.rolled_forward.is_some() {
            plan_run(pipeline, self.opts, &st, plan_now, source.safety_lag())?
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
        let selection = selection::fingerprint(spec);
        if plan.kind == "incremental"
            && st.watermark.is_some()
            && !self.opts.accept_selection_change
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
        self.summary.kind = plan.kind.to_string();
        self.summary.window_from = plan.window.from;
        self.summary.window_to = plan.window.to;

        // A fixed name that is already taken stops the run before it reads anything.
        for (i, cfg) in spec.sinks.iter().enumerate() {
            let path = crate::sinks::render_path(cfg.path_template(), &ctx);
            if !cfg.overwrite() && self.final_exists(i, &path)? {
                return Err(output_exists(pipeline, i, &self.shown(&path)));
            }
        }
        // What receivers acknowledged in earlier runs that did not commit; a
        // journal of a run that has committed since is removed here.
        let journal = if has_push(pipeline) {
            let committed = |run: &str| st.runs.iter().any(|r| r.run_id == run);
            let opened = match self.remote.as_ref().and_then(|r| r.target.as_ref()) {
                None => PushJournal::open(&journal_path(&self.state_path), &self.run_id, committed),
                Some(target) => PushJournal::open_remote(
                    target.remote().clone(),
                    target.state_key(),
                    &self.run_id,
                    committed,
                ),
            };
            Some(opened.map_err(|e| Error::State(e.to_string()))?)
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
        Ok(Planned {
            source,
            projector,
            transforms,
            _lock: lock,
            st,
            plan,
            ctx,
            selection,
            journal,
            sinks,
        })
    }

    /// Stage 2: source → transform → sinks through bounded channels, until the
    /// window is exhausted, something fails, or the run is stopped.
    async fn stream(&mut self, planned: &mut Planned) -> Result<Streamed, Error> {
        let (http, opts, spec) = (self.http, self.opts, &self.pipeline.spec);
        let progress = progress::Progress::start(
            http,
            opts.progress_interval.unwrap_or(progress::DEFAULT_INTERVAL),
            spec.http.requests_per_second,
            opts.live_progress,
        );
        progress.phase("paging", http);

        // The source pages into a bounded channel.
        let (page_tx, page_rx) = mpsc::channel::<Page>(PAGE_BUFFER);
        let source_task = tokio::spawn(tracing::Instrument::in_current_span(
            planned.source.fetch(planned.plan.window, page_tx),
        ));

        // Every sink on its own blocking thread, fed through its own bounded channel.
        let mut sink_txs = Vec::new();
        let mut workers = Vec::new();
        let versions = planned.sinks.iter().any(|s| s.wants_versions());
        let (give_back, returned) = batch_pool();
        for mut sink in std::mem::take(&mut planned.sinks) {
            let (tx, mut rx) = mpsc::channel::<Arc<Versioned>>(BATCH_BUFFER);
            sink_txs.push(tx);
            let give_back = give_back.clone();
            workers.push(tokio::task::spawn_blocking(move || {
                while let Some(v) = rx.blocking_recv() {
                    if let Err(e) = sink.write_versions(&v.batch, &v.versions) {
                        return (sink, Err(e));
                    }
                    give_back.done(v);
                }
                (sink, Ok(()))
            }));
        }

        // Here: de-duplicate, project records to rows, quarantine the ones that cannot be.
        let plan = &planned.plan;
        let mut stage = TransformStage {
            transforms: std::mem::take(&mut planned.transforms),
            projector: planned.projector.clone(),
            report: TransformReport::default(),
            quarantine: Quarantine::new(&planned.ctx),
            dedup: Dedup {
                cursor_field: planned.source.cursor().to_string(),
                seen: if plan.dedup_against_state {
                    planned.st.boundary.iter().cloned().collect()
                } else {
                    HashSet::new()
                },
                keep_from: plan.advance_to.map(|w| w - plan.lookback),
                kept: BTreeSet::new(),
            },
            // A sample is for looking at: marking it exported in Fyle could hide those
            // records from the real runs whose filters leave exported ones out.
            exported: (planned.source.wants_exported_ids() && opts.limit.is_none())
                .then(crate::sources::ExportedIds::new)
                .transpose()
                .map_err(|e| {
                    Error::Sink(format!(
                        "cannot create the exported-ids spool in the temporary directory: {e}"
                    ))
                })?,
            versions,
            returned,
            spare: None,
        };
        drop(give_back);
        let page_rx = match opts.limit {
            Some(n) => take_records(page_rx, n),
            None => page_rx,
        };
        let page_rx = progress.observe(page_rx);
        // A stop drops the transform stage mid-page: the source sees its channel
        // close, the sinks their input end, and everything staged is aborted below.
        let mut transformed = tokio::select! {
            t = stage.run(page_rx, &sink_txs, &mut self.summary) => t,
            _ = opts.cancel.cancelled() => Err(interrupted_before_commit()),
        };
        drop(sink_txs);
        let interrupted = matches!(transformed, Err(Error::Interrupted(_)));
        if interrupted {
            // It may be waiting out a retry; nothing it fetches now is used.
            source_task.abort();
        }
        let summary = &mut self.summary;
        summary.filtered = stage.report.filtered;
        summary.skipped = stage.report.skipped;
        summary.skipped_records = std::mem::take(&mut stage.report.skipped_records);
        // A `fail` mapping lists every unmapped value of the run at once, then nothing is committed.
        let unmapped = stage.report.unmapped_problems(&spec.transforms);
        if transformed.is_ok() && !unmapped.is_empty() {
            transformed = Err(Error::Config(ConfigError {
                file: self.pipeline.file.clone(),
                problems: unmapped,
            }));
        }

        let source_result = source_task.await;
        self.grants = planned.source.grants();
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
        let failed = match source_result {
            _ if interrupted => Some(interrupted_before_commit()),
            Ok(Ok(stats)) => {
                self.summary.pages = stats.pages;
                self.summary.duplicates_skipped += stats.duplicates;
                transformed
                    .err()
                    .or_else(|| sink_error.map(|e| Error::Sink(e.to_string())))
            }
            Ok(Err(e)) => Some(e),
            Err(join) => Some(Error::Internal(format!(
                "the source task stopped unexpectedly: {join}"
            ))),
        };
        // The window must be closed on the server's clock too, or the state would
        // move past records the server has yet to stamp inside it.
        let failed = match (failed, plan.advance_to) {
            (Some(e), _) => Some(e),
            (None, Some(end)) => {
                let latest = planned.source.latest_server_clock().await?;
                window::check_window_closed(end, latest, Utc::now(), planned.source.safety_lag())
                    .err()
                    .map(Error::Source)
            }
            (None, None) => None,
        };
        if let Some(e) = failed {
            sinks.into_iter().for_each(|s| s.abort());
            stage.quarantine.discard();
            return Err(e);
        }
        Ok(Streamed {
            sinks,
            stage,
            progress,
        })
    }

    /// Stage 3: make every output durable under its temporary name.
    async fn finish(&mut self, streamed: Streamed) -> Result<Finished, Error> {
        let Streamed {
            sinks,
            stage,
            progress,
        } = streamed;
        let TransformStage {
            quarantine,
            dedup,
            exported,
            ..
        } = stage;
        let spec = &self.pipeline.spec;
        progress.report_now(self.http);
        progress.phase("finishing", self.http);
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
        let quarantine = match quarantine.finish() {
            Ok(q) => q,
            Err(e) => {
                outputs.iter().for_each(SinkOutput::discard);
                return Err(Error::Sink(format!("quarantine file: {e}")));
            }
        };
        let finished = Finished {
            outputs,
            quarantine,
            dedup,
            exported,
            progress,
        };
        // The last moment a stop can still leave everything as it was.
        if self.opts.cancel.is_cancelled() {
            finished.discard(None);
            return Err(interrupted_before_commit());
        }
        Ok(finished)
    }

    /// Stage 4: write the plan into the state, move files into place, advance
    /// the state (see state::commit for why this order is crash-safe).
    fn commit(
        &mut self,
        planned: &mut Planned,
        mut finished: Finished,
    ) -> Result<progress::Progress, Error> {
        let pipeline = self.pipeline;
        let spec = &pipeline.spec;
        // Outputs come back in the order of `spec.sinks`.
        let mut files: Vec<PlannedFile> = Vec::new();
        let mut taken: Option<Error> = None;
        for (i, (out, cfg)) in finished.outputs.iter().zip(&spec.sinks).enumerate() {
            for o in out.staged_files() {
                // Split and partitioned sinks name their files only now: check them
                // before the commit point, where refusing still rolls back cleanly.
                if !cfg.overwrite() && taken.is_none() {
                    match self.final_exists(i, &o.final_path) {
                        Ok(false) => {}
                        Ok(true) => {
                            taken = Some(output_exists(pipeline, i, &self.shown(&o.final_path)))
                        }
                        Err(e) => taken = Some(e),
                    }
                }
                files.push(PlannedFile {
                    temp: o.temp_path.clone(),
                    final_path: o.final_path.clone(),
                    replace: cfg.overwrite(),
                });
            }
        }
        if let Some(e) = taken {
            finished.discard(None);
            return Err(e);
        }
        if let Some(q) = &finished.quarantine {
            files.push(PlannedFile {
                temp: q.temp_path.clone(),
                final_path: q.final_path.clone(),
                replace: false,
            });
        }
        // The run's files, as recorded in the state (the after-commit plan is
        // bookkeeping, removed once carried out).
        let run_files: Vec<PathBuf> = files.iter().map(|f| f.final_path.clone()).collect();
        let mut rejected_ids = HashMap::new();
        for d in finished.outputs.iter().filter_map(|o| o.delivery.as_ref()) {
            rejected_ids.extend(d.rejected_ids.iter().cloned());
        }
        let after_commit_plan = match &mut finished.exported {
            Some(ids) => {
                match planned
                    .source
                    .stage_after_commit(&self.run_files(), ids, &rejected_ids)
                {
                    Ok(staged) => staged,
                    Err(e) => {
                        finished
                            .outputs
                            .iter()
                            .filter_map(|o| o.staged.as_ref())
                            .for_each(StagedFile::discard);
                        if let Some(q) = &finished.quarantine {
                            q.discard();
                        }
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        if let Some(wp) = &after_commit_plan {
            files.push(PlannedFile {
                temp: wp.temp_path.clone(),
                final_path: wp.final_path.clone(),
                replace: false,
            });
        }
        let st = &mut planned.st;
        let plan = &planned.plan;
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
            boundary.extend(std::mem::take(&mut finished.dedup.kept));
            state::Advance {
                watermark,
                boundary,
                selection: Some(planned.selection.clone()),
            }
        });
        let commit_plan = CommitPlan {
            run: RunRecord {
                run_id: self.run_id.clone(),
                kind: plan.kind.to_string(),
                window_from: plan.window.from,
                window_to: plan.window.to,
                committed_at: Utc::now(),
                rows: self.summary.records_out,
                files: run_files,
            },
            files,
            advance,
        };
        let committed = match self.remote.as_mut() {
            None => state::commit(&self.state_path, st, commit_plan),
            Some(remote) => {
                let committed = commit_remote(remote, &self.run_id, st, commit_plan);
                // The spooled files are uploaded or worthless now; the spool goes at the end.
                finished.discard(after_commit_plan.as_ref());
                committed
            }
        };
        if let Err(e) = committed {
            // Before the commit point the temps are ours to remove; after it the
            // plan is in the state file and the next run finishes it.
            if st.pending.is_none() {
                finished.discard(after_commit_plan.as_ref());
            }
            return Err(Error::State(e.to_string()));
        }
        self.summary.watermark = st.watermark;
        // The commit covers what the journal held; a crash before this removal
        // is handled when the next run opens the journal.
        if let Some(j) = planned.journal.take()
            && let Err(e) = j.retire()
        {
            warn!("{e}; the next run removes it");
        }
        self.record_outputs(&finished);
        if let Some(remote) = &self.remote {
            for o in &mut self.summary.outputs {
                o.path = remote.shown(&o.path);
                o.dead_letter = o.dead_letter.as_deref().map(|p| remote.shown(p));
            }
            if let Some(q) = &mut self.summary.quarantine_file {
                *q = remote.shown(q);
            }
        }
        info!(
            records = self.summary.records_out,
            outputs = self.summary.outputs.len(),
            "run committed"
        );
        Ok(finished.progress)
    }

    /// The committed outputs, as the summary lists them.
    fn record_outputs(&mut self, finished: &Finished) {
        let summary = &mut self.summary;
        for out in &finished.outputs {
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
        if let Some(q) = &finished.quarantine {
            warn!(
                count = summary.quarantined,
                file = %q.final_path.display(),
                "some records could not be transformed and were quarantined with their reasons"
            );
            summary.quarantine_file = Some(q.final_path.clone());
        }
    }

    /// Stage 5: the source's after-commit hook (Fyle: the export-status
    /// write-back). It comes after the commit: it can neither block nor undo
    /// it, and its failure shows in the summary and the exit code. Its plan was
    /// committed with the outputs, so a crash here leaves it for the next run,
    /// which carries out every plan still pending.
    async fn after_commit(
        &mut self,
        source: &dyn Source,
        progress: progress::Progress,
    ) -> Result<(), Error> {
        let files = self.run_files();
        let Some(hook) = source.after_commit(&files) else {
            return Ok(());
        };
        progress.phase("write-back", self.http);
        let report = tokio::select! {
            r = hook => r,
            _ = self.opts.cancel.cancelled() => return Err(source.after_commit_interrupted()),
        };
        progress.report_now(self.http);
        if let Some(why) = &report.failed {
            warn!("{why}");
        }
        self.summary.writeback = Some(report);
        Ok(())
    }

    /// Whether sink `sink`'s final file (named by its spool path when remote) exists already.
    fn final_exists(&self, sink: usize, path: &std::path::Path) -> Result<bool, Error> {
        let Some(remote) = &self.remote else {
            return Ok(path.symlink_metadata().is_ok());
        };
        let target = remote.target.as_ref().expect("read in the plan stage");
        let rel = remote.relative(path).ok_or_else(|| {
            Error::Config(ConfigError::single(
                &self.pipeline.file,
                format!(
                    "sinks[{sink}].{}",
                    self.pipeline.spec.sinks[sink].path_key()
                ),
                format!(
                    "{} is outside the output location {}: with outputs in object storage, sink \
                     paths are relative to pipeline.output_dir",
                    path.display(),
                    remote.url
                ),
            ))
        })?;
        let remote_store = target.remote();
        remote_store
            .exists(&remote_store.key(&rel))
            .map_err(|e| Error::Sink(e.to_string()))
    }

    /// A path as people see it: its object URL when the outputs are remote.
    fn shown(&self, path: &std::path::Path) -> PathBuf {
        match &self.remote {
            Some(r) => r.shown(path),
            None => path.to_path_buf(),
        }
    }

    fn run_files(&self) -> RunFiles<'_> {
        let location = match &self.remote {
            None => OutputLocation::Dir(self.output_dir.clone()),
            Some(r) => OutputLocation::Store {
                remote: r
                    .target
                    .as_ref()
                    .expect("read in the plan stage")
                    .remote()
                    .clone(),
                spool: r.spool.clone(),
            },
        };
        RunFiles {
            output_dir: &self.output_dir,
            location,
            pipeline: self.pipeline.name(),
            run_id: &self.run_id,
            temp_tag: format!("{}.{}", self.pipeline.name(), self.run_id),
        }
    }
}

impl Finished {
    /// Removes every staged file; only before the commit point.
    fn discard(&self, after_commit_plan: Option<&StagedFile>) {
        self.outputs.iter().for_each(SinkOutput::discard);
        if let Some(q) = &self.quarantine {
            q.discard();
        }
        if let Some(wp) = after_commit_plan {
            wp.discard();
        }
    }
}

/// Whether any sink pushes over HTTP (pushes need a reproducible source order and a journal).
fn has_push(pipeline: &Pipeline) -> bool {
    pipeline
        .spec
        .sinks
        .iter()
        .any(|s| matches!(s, crate::sinks::SinkConfig::Http(_)))
}

/// Builds the pipeline's source; secrets of the source and of every sink
/// are resolved first, so one error lists every one that is missing.
pub(super) fn open_source(
    pipeline: &Pipeline,
    http: &HttpClient,
    opts: &RunOptions,
) -> Result<Box<dyn Source>, Error> {
    let spec = &pipeline.spec;
    let built = spec.source.build(SourceContext {
        file: &pipeline.file,
        http,
        credentials: opts.credentials.clone(),
        vault: opts.vault.clone(),
    });
    let mut problems = Vec::new();
    let built = match built {
        Ok(s) => Some(Ok(s)),
        Err(BuildError::Config(ps)) => {
            problems.extend(ps);
            None
        }
        Err(BuildError::Other(e)) => Some(Err(e)),
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
    let mut source = built.expect("no problems means the source was built or failed")?;
    // Parallel slices deliver records in a timing-dependent order, and a rerun
    // after a crash must cut the same batches for the receiver to recognise their keys.
    if has_push(pipeline) && !source.reproducible_order() {
        source.make_reproducible();
    }
    Ok(source)
}

/// Where a remote run's sinks write before the upload:
/// `$EXPENSE_SYNC_SPOOL_DIR` (default: the system temp directory)
/// `/expense-sync-spool/{pipeline}.{run_id}`.
fn spool_dir(pipeline: &str, run_id: &str) -> PathBuf {
    let base = std::env::var_os("EXPENSE_SYNC_SPOOL_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    base.join("expense-sync-spool")
        .join(format!("{pipeline}.{run_id}"))
}

/// Opens the output store, takes the pipeline's lease and reads the state object.
fn open_remote(
    pipeline: &Pipeline,
    remote: &mut RemoteRun,
    state_path: &std::path::Path,
    run_id: &str,
    cursor: &str,
) -> Result<state::State, Error> {
    use crate::store::{Remote, lease, state::RemoteTarget};
    let store = Arc::new(Remote::open(&remote.url).map_err(|e| Error::Sink(e.to_string()))?);
    let state_url = state_path.to_string_lossy();
    let state_key = store.key_of_url(&state_url).ok_or_else(|| {
        Error::Config(ConfigError::single(
            &pipeline.file,
            "pipeline.state_path",
            format!(
                "{state_url} is not in the output's object store {}: with outputs in object \
                 storage the state lives in the same store (leave state_path out for \
                 `{{output_dir}}/{{name}}.state.json`)",
                remote.url
            ),
        ))
    })?;
    let ttl = lease::ttl_from_env().map_err(|m| Error::State(m.to_string()))?;
    let lease_key = crate::store::ObjectKey::from(format!("{}.lease", state_key.as_ref()));
    let held = lease::Lease::acquire(store.clone(), lease_key, pipeline.name(), run_id, ttl)
        .map_err(|e| match e {
            lease::LeaseError::Held(m) => Error::Locked(m),
            other => Error::State(other.to_string()),
        })?;
    remote.lease = Some(held);
    let (target, st) = RemoteTarget::load(store, state_key, pipeline.name(), cursor)
        .map_err(|e| Error::State(e.to_string()))?;
    remote.target = Some(target);
    Ok(st)
}

/// The commit stage in object storage: upload every staged file under a
/// temporary key, then run the commit protocol against the state object.
fn commit_remote(
    remote: &mut RemoteRun,
    run_id: &str,
    st: &mut state::State,
    plan: CommitPlan,
) -> Result<(), state::StateError> {
    let mut target = remote.target.take().expect("read in the plan stage");
    let result = upload_and_commit(remote, &mut target, run_id, st, plan);
    remote.target = Some(target);
    result
}

fn upload_and_commit(
    remote: &RemoteRun,
    target: &mut crate::store::state::RemoteTarget,
    run_id: &str,
    st: &mut state::State,
    mut plan: CommitPlan,
) -> Result<(), state::StateError> {
    let err = |message: String| state::StateError {
        path: target_location(&remote.url),
        message,
    };
    if remote.lease.as_ref().is_some_and(|l| l.is_lost()) {
        return Err(err(
            "this run's lease was taken over by another run (it stalled past the lease's expiry); \
             nothing was committed"
                .into(),
        ));
    }
    let store = target.remote().clone();
    let delete_all = |keys: &[crate::store::ObjectKey]| {
        for k in keys {
            if let Err(e) = store.delete(k) {
                warn!(error = %e, "could not delete a temporary object; the next run removes it");
            }
        }
    };
    let pipeline = st.pipeline.clone();
    let mut uploaded = Vec::new();
    let mut files = Vec::with_capacity(plan.files.len());
    for f in &plan.files {
        let rel = remote.relative(&f.final_path).ok_or_else(|| {
            err(format!(
                "{} is outside the spool {}",
                f.final_path.display(),
                remote.spool.display()
            ))
        })?;
        let temp = target.temp_key(&pipeline, run_id, &rel);
        if let Err(e) = store.upload_file(&f.temp, &temp) {
            delete_all(&uploaded);
            return Err(err(format!("uploading the run's outputs failed: {e}")));
        }
        crate::failpoint::hit("remote-uploaded");
        files.push(PlannedFile {
            temp: PathBuf::from(temp.as_ref()),
            final_path: PathBuf::from(store.key(&rel).as_ref()),
            replace: f.replace,
        });
        uploaded.push(temp);
    }
    plan.files = files;
    plan.run.files = plan.run.files.iter().map(|p| remote.shown(p)).collect();
    let result = state::commit_to(target, st, plan);
    if result.is_err()
        && target.refused()
        && st.pending.as_ref().is_some_and(|p| p.run.run_id == run_id)
    {
        // The commit point itself was refused: nothing references this run's objects.
        st.pending = None;
        delete_all(&uploaded);
    }
    result
}

fn target_location(url: &str) -> PathBuf {
    PathBuf::from(url)
}
