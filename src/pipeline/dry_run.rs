//! `run --dry-run`: what a run would read and write, without writing anything.

use std::fmt;
use std::path::PathBuf;

use chrono::{DateTime, Utc};

use super::run::open_source;
use super::{RunOptions, new_run_id, plan_run};
use crate::config::Pipeline;
use crate::error::Error;
use crate::http::HttpClient;
use crate::sinks::{SinkConfig, SinkContext, render_path};
use crate::sources::Window;
use crate::sources::fyle::fyle_timestamp;

/// What a run of a pipeline would do now.
#[derive(Debug, Clone)]
pub struct DryRun {
    /// Pipeline name.
    pub pipeline: String,
    /// `incremental`, `full_refresh`, `backfill`, `full` or `sample`.
    pub kind: String,
    /// Cursor field the window applies to.
    pub cursor: String,
    /// The window the run would export.
    pub window: Window,
    /// Whether committing would move the watermark.
    pub advances_state: bool,
    /// The state file and its committed watermark.
    pub state_path: PathBuf,
    /// The committed watermark.
    pub watermark: Option<DateTime<Utc>>,
    /// A run whose commit is pending and would be finished first.
    pub pending_run: Option<String>,
    /// The one request the dry run made: the first page with `limit=1`, for the count.
    pub count_probe: String,
    /// Records the server counted in the window (before transforms and de-duplication).
    pub count: Option<u64>,
    /// The first page request a run would make.
    pub first_page: String,
    /// Records per page.
    pub page_size: u32,
    /// Requests in flight at once.
    pub concurrency: u32,
    /// At most this many records (`--limit`).
    pub limit: Option<u64>,
    /// `(sink type, path or URL)` for every sink, placeholders filled in as a run now would.
    pub outputs: Vec<(String, String)>,
    /// Whether export status would be written back to Fyle after the commit.
    pub writeback: bool,
}

/// Authenticates, makes one count probe, and reports what `run` would do; writes nothing.
pub async fn dry_run(
    pipeline: &Pipeline,
    http: &HttpClient,
    opts: &RunOptions,
) -> Result<DryRun, Error> {
    let spec = &pipeline.spec;
    let started_at = Utc::now();
    let output_dir = opts
        .output_dir
        .clone()
        .unwrap_or_else(|| spec.pipeline.output_dir.clone());
    let state_path = pipeline.state_path(&output_dir);
    let cursor = spec.source.cursor();
    // Read only: no lock is taken and no recovery is run, so nothing on disk changes.
    let st = crate::state::load(&state_path, pipeline.name(), cursor)
        .map_err(|e| Error::State(e.to_string()))?;
    let plan = plan_run(pipeline, opts, &st, started_at, spec.source.safety_lag())?;

    let source = open_source(pipeline, http, opts)?;
    let probe = source.probe(plan.window).await?;

    let ctx = SinkContext {
        pipeline: pipeline.name().to_string(),
        run_id: new_run_id(started_at),
        started_at,
        output_dir: output_dir.clone(),
        window_start: plan.window.from,
        window_end: plan.window.to,
    };
    let outputs = spec
        .sinks
        .iter()
        .map(|s| {
            let target = match s {
                SinkConfig::Http(h) => format!(
                    "{} (rejected records to {})",
                    h.url,
                    render_path(s.path_template(), &ctx).display()
                ),
                _ => render_path(s.path_template(), &ctx).display().to_string(),
            };
            (s.kind().to_string(), target)
        })
        .collect();
    Ok(DryRun {
        pipeline: pipeline.name().to_string(),
        kind: plan.kind.to_string(),
        cursor: cursor.to_string(),
        window: plan.window,
        advances_state: plan.advance_to.is_some(),
        state_path,
        watermark: st.watermark,
        pending_run: st.pending.as_ref().map(|p| p.run.run_id.clone()),
        count_probe: probe.count_probe,
        count: probe.count,
        first_page: probe.first_page,
        page_size: probe.page_size,
        concurrency: probe.concurrency,
        limit: opts.limit,
        outputs,
        writeback: source.wants_exported_ids(),
    })
}

impl fmt::Display for DryRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bound = |t: Option<DateTime<Utc>>, none: &str| {
            t.map(fyle_timestamp).unwrap_or_else(|| none.to_string())
        };
        writeln!(
            f,
            "dry run of pipeline `{}` ({}): nothing is written",
            self.pipeline, self.kind
        )?;
        writeln!(
            f,
            "window:     {} from {} (inclusive) to {} (exclusive)",
            self.cursor,
            bound(self.window.from, "the beginning"),
            bound(self.window.to, "now")
        )?;
        writeln!(
            f,
            "state:      {} (watermark {}); a run would {}",
            self.state_path.display(),
            bound(self.watermark, "none"),
            if self.advances_state {
                "advance it"
            } else {
                "leave it alone"
            }
        )?;
        if let Some(run) = &self.pending_run {
            writeln!(
                f,
                "pending:    run {run} was interrupted after its commit point; a run finishes it first (the window may then start later)"
            )?;
        }
        writeln!(f, "requested:  GET {}", self.count_probe)?;
        match self.count {
            Some(n) => writeln!(f, "            {n} record(s) match")?,
            None => writeln!(f, "            the server sent no count")?,
        }
        let expected = match (self.count, self.limit) {
            (Some(n), Some(l)) => Some(n.min(l)),
            (n, _) => n,
        };
        writeln!(f, "would read: GET {}", self.first_page)?;
        if let Some(n) = expected {
            writeln!(
                f,
                "            then seek page by page: about {} page request(s) of {} record(s), {} in flight",
                n.div_ceil(u64::from(self.page_size.max(1))).max(1),
                self.page_size,
                self.concurrency
            )?;
        }
        if let Some(l) = self.limit {
            writeln!(f, "            stopping after {l} record(s) (--limit)")?;
        }
        writeln!(
            f,
            "would write (the run id in names differs on a real run):"
        )?;
        for (kind, target) in &self.outputs {
            writeln!(f, "  {kind:<8} {target}")?;
        }
        if self.writeback {
            writeln!(
                f,
                "then write the export status of the exported records back to Fyle"
            )?;
        }
        Ok(())
    }
}
