//! The runner: wires source → transform → sinks with bounded channels,
//! commits outputs together, and reports what happened.

mod summary;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tracing::{info, warn};

pub use summary::{OutputSummary, RunStatus, RunSummary};

use crate::auth::{FyleCredentials, FyleSession};
use crate::config::{ConfigError, Pipeline};
use crate::error::Error;
use crate::fsutil::StagedFile;
use crate::http::HttpClient;
use crate::row::Batch;
use crate::sinks::{Sink, SinkContext, SinkError, SinkOutput};
use crate::sources::SourceConfig;
use crate::sources::fyle::{FyleClient, FyleError, Page, PagerStats, Window, fetch_window};
use crate::transforms::Projector;

/// Pages in flight between the source and the transform stage.
const PAGE_BUFFER: usize = 4;
/// Batches in flight to each sink.
const BATCH_BUFFER: usize = 2;

/// Per-run choices that are not part of the pipeline file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Overrides `pipeline.output_dir`.
    pub output_dir: Option<PathBuf>,
    /// Use these credentials instead of resolving `[connection]` (demo, tests, embedding).
    pub credentials: Option<FyleCredentials>,
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
            None if self.summary.quarantined > 0 => crate::ExitCode::Partial,
            None => crate::ExitCode::Ok,
        }
    }
}

/// Runs `pipeline` once: authenticate, page the source, transform, write
/// every sink to temporary files, then make them final together.
pub async fn run(pipeline: &Pipeline, http: &HttpClient, opts: &RunOptions) -> RunOutcome {
    let started_at = Utc::now();
    let clock = Instant::now();
    let stats_before = http.stats();
    let run_id = new_run_id(started_at);
    let mut summary = RunSummary::new(pipeline.name(), &run_id, started_at);
    let mut session_grants = 0;
    let result = execute(
        pipeline,
        http,
        opts,
        &run_id,
        started_at,
        &mut summary,
        &mut session_grants,
    )
    .await;
    summary.finish(
        clock.elapsed(),
        http.stats().since(&stats_before),
        session_grants,
    );
    let error = result.err();
    summary.status = match (&error, summary.quarantined) {
        (Some(_), _) => RunStatus::Failed,
        (None, 0) => RunStatus::Ok,
        (None, _) => RunStatus::Partial,
    };
    summary.error = error.as_ref().map(|e| e.to_string());
    let outcome = RunOutcome { summary, error };
    let code = outcome.exit_code();
    outcome_summary_code(outcome, code)
}

fn outcome_summary_code(mut outcome: RunOutcome, code: crate::ExitCode) -> RunOutcome {
    outcome.summary.exit_code = code.code();
    outcome
}

fn new_run_id(at: DateTime<Utc>) -> String {
    format!(
        "{}-{:04x}",
        at.format("%Y%m%dT%H%M%SZ"),
        rand::random::<u16>()
    )
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
    let creds = match &opts.credentials {
        Some(c) => c.clone(),
        None => spec
            .connection
            .resolve("connection")
            .map_err(|problems| ConfigError {
                file: pipeline.file.clone(),
                problems,
            })?,
    };
    let projector = Projector::new(&spec.columns).map_err(|problems| ConfigError {
        file: pipeline.file.clone(),
        problems,
    })?;

    let session = Arc::new(FyleSession::new(http.clone(), creds));
    let client = FyleClient::new(session.clone());
    // Authenticate before touching the disk: bad credentials must leave nothing behind.
    let auth = session.token().await;
    *grants = session.refresh_count();
    auth.map_err(|e| Error::Auth(e.to_string()))?;

    let window = Window {
        from: None,
        to: Some(
            started_at - chrono::Duration::from_std(source_cfg.safety_lag).unwrap_or_default(),
        ),
    };
    summary.window_from = window.from;
    summary.window_to = window.to;

    let ctx = SinkContext {
        pipeline: pipeline.name().to_string(),
        run_id: run_id.to_string(),
        started_at,
        output_dir: opts
            .output_dir
            .clone()
            .unwrap_or_else(|| spec.pipeline.output_dir.clone()),
    };
    let mut sinks: Vec<Box<dyn Sink>> = Vec::with_capacity(spec.sinks.len());
    for cfg in &spec.sinks {
        match cfg.build(&ctx, projector.schema().clone()) {
            Ok(s) => sinks.push(s),
            Err(e) => {
                sinks.into_iter().for_each(|s| s.abort());
                return Err(Error::Sink(e.to_string()));
            }
        }
    }

    // Stage 1: the source pages into a bounded channel.
    let (page_tx, page_rx) = mpsc::channel::<Page>(PAGE_BUFFER);
    let source_task = {
        let client = client.clone();
        let cfg = source_cfg.clone();
        tokio::spawn(async move { fetch_window(&client, &cfg, window, &page_tx).await })
    };

    // Stage 3: every sink on its own blocking thread, fed through its own bounded channel.
    let mut sink_txs = Vec::new();
    let mut workers = Vec::new();
    for mut sink in sinks {
        let (tx, mut rx) = mpsc::channel::<Arc<Batch>>(BATCH_BUFFER);
        sink_txs.push(tx);
        workers.push(tokio::task::spawn_blocking(move || {
            while let Some(batch) = rx.blocking_recv() {
                if let Err(e) = sink.write(&batch) {
                    return (sink, Err(e));
                }
            }
            (sink, Ok(()))
        }));
    }

    // Stage 2 (here): project records to rows, quarantine the ones that cannot be.
    let mut quarantine = Quarantine::new(&ctx);
    let transformed = transform(page_rx, &projector, &sink_txs, &mut quarantine, summary).await;
    drop(sink_txs);

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
    summary.duplicates_skipped = pager_stats.duplicates;
    if let Err(e) = transformed {
        abort_all(sinks, quarantine);
        return Err(e);
    }
    if let Some(e) = sink_error {
        abort_all(sinks, quarantine);
        return Err(Error::Sink(e.to_string()));
    }

    // Make every output durable under its temporary name first…
    let mut outputs: Vec<SinkOutput> = Vec::new();
    let mut iter = sinks.into_iter();
    while let Some(sink) = iter.next() {
        let finished = tokio::task::spawn_blocking(move || sink.finish())
            .await
            .map_err(|e| Error::Internal(format!("sink finish panicked: {e}")))?;
        match finished {
            Ok(out) => outputs.push(out),
            Err(e) => {
                outputs.iter().for_each(|o| o.staged.discard());
                iter.for_each(|s| s.abort());
                quarantine.discard();
                return Err(Error::Sink(e.to_string()));
            }
        }
    }
    let quarantine_staged = quarantine.finish().map_err(|e| {
        outputs.iter().for_each(|o| o.staged.discard());
        Error::Sink(format!("quarantine file: {e}"))
    })?;
    // …then move them all into place.
    for out in &outputs {
        out.staged
            .commit()
            .map_err(|e| Error::Sink(format!("{} sink: {e}", out.kind)))?;
        summary.outputs.push(OutputSummary {
            kind: out.kind.to_string(),
            path: out.staged.final_path.clone(),
            rows: out.rows,
            bytes: out.bytes,
        });
    }
    if let Some(q) = quarantine_staged {
        q.commit()
            .map_err(|e| Error::Sink(format!("quarantine file: {e}")))?;
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
    Ok(())
}

async fn transform(
    mut pages: mpsc::Receiver<Page>,
    projector: &Projector,
    sinks: &[mpsc::Sender<Arc<Batch>>],
    quarantine: &mut Quarantine,
    summary: &mut RunSummary,
) -> Result<(), Error> {
    let mut expected: Option<u64> = None;
    let mut last_report = Instant::now();
    while let Some(page) = pages.recv().await {
        if let Some(total) = page.total {
            expected = Some(total);
            info!(total, "records to export");
        }
        summary.records_in += page.records.len() as u64;
        let mut batch = Batch {
            rows: Vec::with_capacity(page.records.len()),
        };
        for record in &page.records {
            match projector.project(record) {
                Ok(row) => batch.rows.push(row),
                Err(e) => {
                    summary.quarantined += 1;
                    quarantine
                        .add(&e, record)
                        .map_err(|io| Error::Sink(format!("quarantine file: {io}")))?;
                }
            }
        }
        summary.records_out += batch.rows.len() as u64;
        let batch = Arc::new(batch);
        for tx in sinks {
            // A closed channel means that sink failed; its error is collected by the caller.
            if tx.send(batch.clone()).await.is_err() {
                return Ok(());
            }
        }
        if last_report.elapsed().as_secs() >= 5 {
            last_report = Instant::now();
            info!(done = summary.records_in, total = expected, "progress");
        }
    }
    Ok(())
}

fn source_error(e: FyleError, cfg: &crate::sources::fyle::FyleSourceConfig) -> Error {
    match e {
        FyleError::Auth(a) => Error::Auth(a.to_string()),
        other => Error::Source(format!(
            "reading {}/{} from Fyle failed: {other}",
            cfg.role, cfg.resource
        )),
    }
}

/// Records that could not be transformed, kept with their reasons in a JSONL file.
struct Quarantine {
    path: PathBuf,
    run_id: String,
    file: Option<(StagedFile, std::io::BufWriter<std::fs::File>)>,
}

impl Quarantine {
    fn new(ctx: &SinkContext) -> Self {
        Self {
            path: ctx
                .output_dir
                .join(format!("{}.{}.quarantine.jsonl", ctx.pipeline, ctx.run_id)),
            run_id: ctx.run_id.clone(),
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
            let (staged, file) = StagedFile::create(&self.path, &self.run_id)?;
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
