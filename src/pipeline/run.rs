//! One run, stage by stage: plan → stream → finish → commit → after-commit.
//! Each stage is a method over [`Run`], which holds what the stages share.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::OutputSummary;
use super::stream::{Dedup, Quarantine, TransformStage, Versioned, take_records};
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
use crate::transforms::{Projector, TransformReport, Transforms};

/// Pages in flight between the source and the transform stage.
const PAGE_BUFFER: usize = 8;
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
    output_dir: PathBuf,
    state_path: PathBuf,
}

/// What planning produced: the opened source, the locked state, the window and the sinks.
struct Planned {
    source: Box<dyn Source>,
    projector: Projector,
    transforms: Transforms,
    _lock: state::PipelineLock,
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
    exported: Option<Vec<String>>,
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
        }
    }

    /// Every stage in order.
    pub(super) async fn execute(&mut self) -> Result<(), Error> {
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
        // Parse only what the run reads: columns, transforms, the cursor and `id`
        // (de-duplication, paging and the after-commit hook use those two).
        let mut fields = crate::extract::FieldSet::nothing();
        projector.read_fields(&mut fields);
        transforms.read_fields(&mut fields);
        fields.add_key(source.cursor());
        fields.add_key("id");
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
        let lock_path = PathBuf::from(format!("{}.lock", self.state_path.display()));
        let lock = state::acquire(&lock_path, pipeline.name()).map_err(|e| match e {
            state::LockError::Held { .. } => Error::Locked(e.to_string()),
            other => Error::State(other.to_string()),
        })?;
        let mut st = state::load(&self.state_path, pipeline.name(), source.cursor())
            .map_err(|e| Error::State(e.to_string()))?;

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
        let recovery = state::recover(&self.state_path, &mut st, &roots)
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
            if !cfg.overwrite() && path.symlink_metadata().is_ok() {
                return Err(output_exists(pipeline, i, &path));
            }
        }
        // What receivers acknowledged in earlier runs that did not commit; a
        // journal of a run that has committed since is removed here.
        let journal = if has_push(pipeline) {
            let committed = |run: &str| st.runs.iter().any(|r| r.run_id == run);
            Some(
                PushJournal::open(&journal_path(&self.state_path), &self.run_id, committed)
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
        for mut sink in std::mem::take(&mut planned.sinks) {
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
            exported: (planned.source.wants_exported_ids() && opts.limit.is_none()).then(Vec::new),
        };
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
        let after_commit_plan = match &finished.exported {
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
        if let Err(e) = state::commit(&self.state_path, st, commit_plan) {
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

    fn run_files(&self) -> RunFiles<'_> {
        RunFiles {
            output_dir: &self.output_dir,
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
