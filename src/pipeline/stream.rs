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
use crate::extract::{PageSource, RecordRef};
use crate::fsutil::StagedFile;
use crate::record::Record;
use crate::row::{Batch, Row};
use crate::sinks::SinkContext;
use crate::sources::Page;
use crate::state::Version;
use crate::transforms::{Projector, TransformReport, Transforms, Verdict};

/// Rows for the sinks with the source version of each (for pushes' per-record keys).
#[derive(Default)]
pub(super) struct Versioned {
    pub(super) batch: Batch,
    pub(super) versions: Vec<Option<Version>>,
}

/// At most this many batches the sinks are done with wait to be filled again:
/// about as many as can be in flight (being filled, queued for a sink, being
/// written), so a run keeps about the memory it had when every batch was new.
pub(super) const RETURNED_BATCHES: usize = 4;

/// The sinks' end of the batch pool: a batch goes back to the transform
/// stage, to be filled with the next page, once every sink has written it.
/// Rows are then built into memory of the stage's own thread instead of
/// being allocated there and freed on a sink's.
#[derive(Clone)]
pub(super) struct ReturnBatches(std::sync::mpsc::SyncSender<Versioned>);

impl ReturnBatches {
    /// Called by each sink after writing `batch`; the last one hands it back.
    pub(super) fn done(&self, batch: Arc<Versioned>) {
        // Exactly one of the holders' calls gets the batch (`Arc::into_inner`).
        if let Some(batch) = Arc::into_inner(batch) {
            // The pool is full or the stage has finished: the batch is dropped.
            let _ = self.0.try_send(batch);
        }
    }
}

/// A pool of up to [`RETURNED_BATCHES`] batches: the sinks' end and the transform stage's.
pub(super) fn batch_pool() -> (ReturnBatches, std::sync::mpsc::Receiver<Versioned>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(RETURNED_BATCHES);
    (ReturnBatches(tx), rx)
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
    /// Batches the sinks are done with ([`batch_pool`]).
    pub(super) returned: std::sync::mpsc::Receiver<Versioned>,
    /// A batch no row went into (every record of its page skipped), kept for the next page.
    pub(super) spare: Option<Versioned>,
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
            let filled = self.fill(page, summary)?;
            if filled.batch.rows.is_empty() {
                self.spare = Some(filled);
                continue;
            }
            if !hand_to_sinks(filled, sinks).await {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The rows of one page's records, in a batch from the pool.
    fn fill(&mut self, page: Page, summary: &mut RunSummary) -> Result<Versioned, Error> {
        summary.records_in += page.records.len() as u64;
        let mut filled = self.empty_batch();
        let Versioned { batch, versions } = &mut filled;
        // Room for the page: `reserve` counts from the rows kept from the last one.
        batch
            .rows
            .reserve(page.records.len().saturating_sub(batch.rows.len()));
        if self.versions {
            versions.reserve(page.records.len());
        }
        // Rows `..used` hold this page's records; the ones after, earlier pages'.
        let mut used = 0;
        let source = page.source.as_ref();
        for (i, record) in page.records.into_iter().enumerate() {
            if let Some(next) = source.and_then(|s| s.columns(i + 1)) {
                next.prefetch();
            }
            if used == batch.rows.len() {
                batch.rows.push(Row { cells: Vec::new() });
            }
            // A record that makes no row leaves `used` as it is: the next one overwrites it.
            if let Taken::Row(version) =
                self.take(record, source, i, &mut batch.rows[used], summary)?
            {
                used += 1;
                if self.versions {
                    versions.push(version);
                }
            }
        }
        batch.rows.truncate(used);
        summary.records_out += used as u64;
        summary.amounts_normalised = self.projector.amounts_normalised();
        Ok(filled)
    }

    /// De-duplicates, transforms and projects the `i`-th record of a page into `row`.
    fn take(
        &mut self,
        mut record: Record,
        source: Option<&PageSource>,
        i: usize,
        row: &mut Row,
        summary: &mut RunSummary,
    ) -> Result<Taken, Error> {
        let columns = source.and_then(|s| s.columns(i));
        // Read as the source sent it, before transforms change the record.
        let (version, id) = {
            let sent = RecordRef::new(&record, columns);
            if self.dedup.is_delivered(&sent) {
                summary.duplicates_skipped += 1;
                return Ok(Taken::Nothing);
            }
            self.dedup.remember(&sent);
            let version = self
                .versions
                .then(|| version_of(&sent, &self.dedup.cursor_field).map(|(v, _)| v));
            (version, self.exported.is_some().then(|| sent.id_text()))
        };
        if self.transforms.apply(&mut record, &mut self.report) != Verdict::Keep {
            return Ok(Taken::Nothing);
        }
        if let Err(e) = self.projector.project_into(&record, columns, row) {
            summary.quarantined += 1;
            let original = source.and_then(|s| s.original(i));
            self.quarantine
                .add(&e, &record, original)
                .map_err(|io| Error::Sink(format!("quarantine file: {io}")))?;
            return Ok(Taken::Nothing);
        }
        if let (Some(ids), Some(id)) = (self.exported.as_mut(), id) {
            ids.push(&id).map_err(|e| {
                Error::Sink(format!("the exported-ids spool (temporary directory): {e}"))
            })?;
        }
        Ok(Taken::Row(version.flatten()))
    }

    /// A batch to fill: one the sinks handed back, or else a new one. Its
    /// rows are the previous page's, to be overwritten; its versions are cleared.
    fn empty_batch(&mut self) -> Versioned {
        let mut batch = self
            .spare
            .take()
            .or_else(|| self.returned.try_recv().ok())
            .unwrap_or_default();
        batch.versions.clear();
        batch
    }
}

/// What became of one record.
enum Taken {
    /// Its row was written; its source version (`None` when it has none or no sink reads versions).
    Row(Option<Version>),
    /// Delivered before, filtered out or quarantined: no row.
    Nothing,
}

/// Hands a batch to every sink; `false` when a sink has stopped (its error
/// is collected by the caller). The last sink gets the stage's own handle,
/// so none is left here and the last sink done with the batch can hand it back.
async fn hand_to_sinks(filled: Versioned, sinks: &[mpsc::Sender<Arc<Versioned>>]) -> bool {
    let filled = Arc::new(filled);
    let Some((last, others)) = sinks.split_last() else {
        return true;
    };
    for tx in others {
        if tx.send(filled.clone()).await.is_err() {
            return false;
        }
    }
    last.send(filled).await.is_ok()
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::transforms::ColumnSpec;

    fn stage(
        dir: &std::path::Path,
        returned: std::sync::mpsc::Receiver<Versioned>,
    ) -> TransformStage {
        let ctx = SinkContext {
            pipeline: "p".into(),
            run_id: "r".into(),
            started_at: Utc::now(),
            output_dir: dir.to_path_buf(),
            window_start: None,
            window_end: None,
        };
        let columns = [
            ColumnSpec::path("id", "id"),
            ColumnSpec::path("purpose", "purpose"),
            ColumnSpec::path("amount", "amount").decimal(2),
        ];
        TransformStage {
            transforms: Transforms::default(),
            projector: Projector::new(&columns).expect("columns"),
            report: TransformReport::default(),
            quarantine: Quarantine::new(&ctx),
            dedup: Dedup {
                cursor_field: "updated_at".into(),
                seen: HashSet::new(),
                keep_from: None,
                kept: BTreeSet::new(),
            },
            exported: None,
            versions: true,
            returned,
            spare: None,
        }
    }

    fn record(id: &str, purpose: Option<&str>, amount: &str) -> serde_json::Value {
        json!({"id": id, "updated_at": "2024-03-05T10:00:00Z", "purpose": purpose,
               "amount": serde_json::from_str::<serde_json::Value>(amount).unwrap()})
    }

    /// What a sink saw of one batch: where its rows are, the rows, their versions' ids.
    type Seen = (usize, String, Vec<String>);

    #[tokio::test]
    async fn a_batch_the_sinks_hand_back_is_refilled_with_the_next_pages_rows_only() {
        let dir = tempfile::tempdir().unwrap();
        let (give_back, returned) = batch_pool();
        let mut stage = stage(dir.path(), returned);
        let long = "a purpose far longer than twenty-four bytes";
        let pages = vec![
            vec![
                record("a1", Some(long), "1.5"),
                record("a2", Some("short"), "2"),
                record("a3", Some(long), "3"),
            ],
            // Fewer rows: the first one quarantined (three decimals), a null where text was.
            vec![record("b1", Some("x"), "1.234"), record("b2", None, "5")],
            vec![record("c1", Some("y"), "6")],
        ];
        let expected: Vec<(String, Vec<String>)> = pages
            .iter()
            .map(|page| {
                let (mut rows, mut ids) = (Vec::new(), Vec::new());
                for r in page {
                    if let Ok(row) = stage.projector.project(r) {
                        rows.push(row);
                        ids.push(r["id"].as_str().unwrap().to_string());
                    }
                }
                (format!("{rows:?}"), ids)
            })
            .collect();
        let (page_tx, page_rx) = mpsc::channel(1);
        let (mut sink_txs, mut sink_rxs) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let (tx, rx) = mpsc::channel::<Arc<Versioned>>(1);
            sink_txs.push(tx);
            sink_rxs.push(rx);
        }
        let sinks = async {
            let mut seen: Vec<Seen> = Vec::new();
            for page in pages {
                page_tx.send(Page::new(page, None)).await.unwrap();
                // Both sinks write the batch and hand it back before the next page comes.
                for rx in &mut sink_rxs {
                    let v = rx.recv().await.expect("a batch for every sink");
                    let ids = v.versions.iter().map(|v| v.as_ref().unwrap().id.clone());
                    let rows = format!("{:?}", v.batch.rows);
                    seen.push((v.batch.rows.as_ptr() as usize, rows, ids.collect()));
                    give_back.done(v);
                }
            }
            drop(page_tx);
            seen
        };
        let mut summary = RunSummary::new("p", "r", Utc::now());
        let (ran, seen) = tokio::join!(stage.run(page_rx, &sink_txs, &mut summary), sinks);
        ran.unwrap();
        assert_eq!((summary.records_out, summary.quarantined), (5, 1));
        for (page, (rows, ids)) in expected.iter().enumerate() {
            for sink in 0..2 {
                let (_, got_rows, got_ids) = &seen[page * 2 + sink];
                assert_eq!(got_rows, rows, "page {page}, sink {sink}: rows");
                assert_eq!(got_ids, ids, "page {page}, sink {sink}: versions");
            }
        }
        assert!(
            seen.iter().all(|s| s.0 == seen[0].0),
            "every page was built in the first page's batch: {:?}",
            seen.iter().map(|s| s.0).collect::<Vec<_>>()
        );
    }
}
