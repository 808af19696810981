//! Stage 2 of a run: de-duplicate, transform and project records into rows
//! for the sinks; records that cannot be projected are quarantined.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tracing::info;

use super::RunSummary;
use crate::error::Error;
use crate::extract::RecordRef;
use crate::fsutil::StagedFile;
use crate::row::Batch;
use crate::sinks::SinkContext;
use crate::sources::Page;
use crate::state::Version;
use crate::transforms::{Projector, TransformReport, Transforms, Verdict};

/// Rows for the sinks with the source version of each (for pushes' per-record keys).
pub(super) struct Versioned {
    pub(super) batch: Batch,
    pub(super) versions: Vec<Option<Version>>,
}

/// Everything the transform stage needs to know about de-duplication.
pub(super) struct Dedup {
    pub(super) cursor_field: String,
    /// Versions delivered by earlier runs inside this run's lookback.
    pub(super) seen: HashSet<Version>,
    /// Versions at or after this instant are remembered for the next run.
    pub(super) keep_from: Option<DateTime<Utc>>,
    pub(super) kept: BTreeSet<Version>,
}

impl Dedup {
    fn is_delivered(&self, record: &RecordRef<'_>) -> bool {
        if self.seen.is_empty() {
            return false;
        }
        match version_of(record, &self.cursor_field) {
            Some((v, _)) => self.seen.contains(&v),
            None => false,
        }
    }

    fn remember(&mut self, record: &RecordRef<'_>) {
        let Some(from) = self.keep_from else { return };
        // Most records lie before the lookback: their version is not built at all.
        if let Some((text, at)) = cursor_of(record, &self.cursor_field)
            && at >= from
        {
            self.kept.insert(version(record, text));
        }
    }
}

/// The record's cursor text and the instant it names.
fn cursor_of<'r>(record: &RecordRef<'r>, cursor: &str) -> Option<(Cow<'r, str>, DateTime<Utc>)> {
    let text = record.str(cursor)?;
    let at = crate::common::instant::parse_rfc3339(&text)?;
    Some((text, at))
}

fn version(record: &RecordRef<'_>, cursor_text: Cow<'_, str>) -> Version {
    Version {
        id: record.id_text(),
        cursor: cursor_text.into_owned(),
    }
}

fn version_of(record: &RecordRef<'_>, cursor: &str) -> Option<(Version, DateTime<Utc>)> {
    cursor_of(record, cursor).map(|(text, at)| (version(record, text), at))
}

/// What the transform stage holds across pages.
pub(super) struct TransformStage {
    pub(super) transforms: Transforms,
    pub(super) projector: Projector,
    pub(super) report: TransformReport,
    pub(super) quarantine: Quarantine,
    pub(super) dedup: Dedup,
    /// Ids of the exported records, when the source's after-commit hook needs them.
    pub(super) exported: Option<crate::sources::ExportedIds>,
    /// Whether a sink reads each row's source version ([`crate::sinks::Sink::wants_versions`]);
    /// building them costs two strings and a timestamp parse per record.
    pub(super) versions: bool,
}

impl TransformStage {
    /// Turns every page into rows and hands each batch to every sink.
    pub(super) async fn run(
        &mut self,
        mut pages: mpsc::Receiver<Page>,
        sinks: &[mpsc::Sender<Arc<Versioned>>],
        summary: &mut RunSummary,
    ) -> Result<(), Error> {
        while let Some(page) = pages.recv().await {
            if let Some(total) = page.total {
                info!(total, "records to export");
            }
            summary.records_in += page.records.len() as u64;
            let mut batch = Batch {
                rows: Vec::with_capacity(page.records.len()),
            };
            let mut versions =
                Vec::with_capacity(if self.versions { page.records.len() } else { 0 });
            let source = page.source;
            for (i, mut record) in page.records.into_iter().enumerate() {
                let columns = source.as_ref().and_then(|s| s.columns(i));
                // Read as the source sent it, before transforms change the record.
                let (version, id) = {
                    let sent = RecordRef::new(&record, columns);
                    if self.dedup.is_delivered(&sent) {
                        summary.duplicates_skipped += 1;
                        continue;
                    }
                    self.dedup.remember(&sent);
                    let version = self
                        .versions
                        .then(|| version_of(&sent, &self.dedup.cursor_field).map(|(v, _)| v));
                    (version, self.exported.is_some().then(|| sent.id_text()))
                };
                if self.transforms.apply(&mut record, &mut self.report) != Verdict::Keep {
                    continue;
                }
                match self.projector.project_with(&record, columns) {
                    Ok(row) => {
                        if let (Some(ids), Some(id)) = (self.exported.as_mut(), id) {
                            ids.push(&id).map_err(|e| {
                                Error::Sink(format!(
                                    "the exported-ids spool (temporary directory): {e}"
                                ))
                            })?;
                        }
                        batch.rows.push(row);
                        if let Some(version) = version {
                            versions.push(version);
                        }
                    }
                    Err(e) => {
                        summary.quarantined += 1;
                        let original = source.as_ref().and_then(|s| s.original(i));
                        self.quarantine
                            .add(&e, &record, original)
                            .map_err(|io| Error::Sink(format!("quarantine file: {io}")))?;
                    }
                }
            }
            summary.records_out += batch.rows.len() as u64;
            summary.amounts_normalised = self.projector.amounts_normalised();
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
}

/// Passes on pages until `limit` records went through, then closes the
/// source's channel, which stops the pager after its request in flight.
pub(super) fn take_records(mut pages: mpsc::Receiver<Page>, limit: u64) -> mpsc::Receiver<Page> {
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

/// Records that could not be transformed, kept with their reasons in a JSONL file.
pub(super) struct Quarantine {
    path: PathBuf,
    tag: String,
    file: Option<(StagedFile, std::io::BufWriter<std::fs::File>)>,
}

impl Quarantine {
    pub(super) fn new(ctx: &SinkContext) -> Self {
        Self {
            path: ctx
                .output_dir
                .join(format!("{}.{}.quarantine.jsonl", ctx.pipeline, ctx.run_id)),
            tag: ctx.temp_tag(),
            file: None,
        }
    }

    /// Writes `err` with the record as the server sent it (`original`), or
    /// else as the run holds it.
    pub(super) fn add(
        &mut self,
        err: &crate::transforms::RecordError,
        record: &serde_json::Value,
        original: Option<&str>,
    ) -> std::io::Result<()> {
        use std::io::Write;
        if self.file.is_none() {
            let (staged, file) = StagedFile::create(&self.path, &self.tag)?;
            self.file = Some((staged, std::io::BufWriter::new(file)));
        }
        let (_, w) = self.file.as_mut().expect("opened above");
        #[derive(serde::Serialize)]
        struct Line<'a, R: serde::Serialize> {
            record_id: &'a str,
            column: &'a str,
            reason: &'a str,
            record: R,
        }
        let (record_id, column, reason) = (&err.record_id, &err.column, &err.reason);
        // One line per record: the original's line breaks can only be
        // whitespace between tokens (JSON strings escape theirs), so they go.
        let original = original
            .map(|t| t.replace(['\n', '\r'], ""))
            .and_then(|t| serde_json::value::RawValue::from_string(t).ok());
        match original {
            Some(raw) => serde_json::to_writer(
                &mut *w,
                &Line {
                    record_id,
                    column,
                    reason,
                    record: raw,
                },
            )?,
            None => serde_json::to_writer(
                &mut *w,
                &Line {
                    record_id,
                    column,
                    reason,
                    record,
                },
            )?,
        }
        w.write_all(b"\n")
    }

    pub(super) fn finish(self) -> std::io::Result<Option<StagedFile>> {
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

    pub(super) fn discard(self) {
        if let Some((staged, _)) = self.file {
            staged.discard();
        }
    }
}
