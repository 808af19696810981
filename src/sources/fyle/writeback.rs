//! Write-back of export status to Fyle: after a run committed, each exported
//! expense is marked through `POST /admin/expenses/accounting_export_summary/bulk`
//! so finance teams see in Fyle what was exported and what failed.
//!
//! The plan (which ids, which were rejected) is committed with the run's
//! outputs as a JSONL file and removed once carried out, so a crash between
//! the commit and the write-back leaves it for the next run. Plans are found,
//! read and removed through [`OutputLocation`], so the same holds for outputs
//! in object storage (`{prefix}/{pipeline}.{run_id}.writeback.jsonl`).
//!
//! Each small batch is first marked `IN_PROGRESS`, then `COMPLETE` (or
//! `ERROR` with `error_type` for records a receiver rejected), so an
//! interruption between the two leaves a visible `IN_PROGRESS` rather than a
//! silent gap. Expenses deleted in Fyle since they were read are skipped:
//! Fyle refuses the whole bulk call naming them, and the call is repeated
//! without them.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{FyleClient, FyleError};
use crate::common::Problem;
use crate::fsutil::{StagedFile, sync_file};
use crate::http::HttpError;
use crate::store::OutputLocation;

const BULK_PATH: &str = "admin/expenses/accounting_export_summary/bulk";

/// `[writeback]`: mark exported expenses in Fyle.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteBackConfig {
    /// Link stored on each expense, `{id}` replaced by the expense id
    /// (e.g. "https://erp.example.com/bills?expense={id}").
    pub url: String,
    /// Expenses per bulk call (default 50, at most 200).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// `error_type` for rejected records: `ACCOUNTING_INTEGRATION_ERROR` (default) or `MAPPING`.
    #[serde(default = "default_error_type")]
    pub error_type: String,
}

fn default_batch_size() -> usize {
    50
}

fn default_error_type() -> String {
    "ACCOUNTING_INTEGRATION_ERROR".into()
}

impl WriteBackConfig {
    /// Every problem with these settings; write-back only exists for `expenses`.
    pub fn validate(&self, prefix: &str, resource: &str) -> Vec<Problem> {
        let mut p = Vec::new();
        if resource != "expenses" {
            p.push(Problem::new(
                prefix,
                format!("write-back marks expenses; it cannot be used with resource `{resource}`"),
            ));
        }
        if !(1..=200).contains(&self.batch_size) {
            p.push(Problem::new(
                format!("{prefix}.batch_size"),
                format!("must be between 1 and 200, got {}", self.batch_size),
            ));
        }
        if !["ACCOUNTING_INTEGRATION_ERROR", "MAPPING"].contains(&self.error_type.as_str()) {
            p.push(Problem::new(
                format!("{prefix}.error_type"),
                "must be \"ACCOUNTING_INTEGRATION_ERROR\" or \"MAPPING\"",
            ));
        }
        if self.url.trim().is_empty() {
            p.push(Problem::new(
                format!("{prefix}.url"),
                "must not be empty; e.g. \"https://erp.example.com/expenses/{id}\"",
            ));
        }
        p
    }
}

/// Suffix of write-back plan files: `{output_dir}/{pipeline}.{run_id}.writeback.jsonl`.
const PLAN_SUFFIX: &str = ".writeback.jsonl";

/// Where a run's write-back plan is committed with its outputs.
pub fn plan_path(output_dir: &Path, pipeline: &str, run_id: &str) -> PathBuf {
    output_dir.join(format!("{pipeline}.{run_id}{PLAN_SUFFIX}"))
}

/// Writes the plan (one `{"id", "rejected"}` line per exported expense) to a
/// staged file, so it is committed atomically with the run's outputs and a
/// crash between the commit and the write-back cannot lose it.
pub fn stage_plan(
    final_path: &Path,
    temp_tag: &str,
    exported: &mut crate::sources::ExportedIds,
    rejected: &HashMap<String, String>,
) -> std::io::Result<StagedFile> {
    let (staged, file) = StagedFile::create(final_path, temp_tag)?;
    let mut w = std::io::BufWriter::new(file);
    let written = (|| {
        exported.for_each(|id| {
            let line = json!({"id": id, "rejected": rejected.get(id)});
            serde_json::to_writer(&mut w, &line)?;
            w.write_all(b"\n")
        })?;
        w.flush()?;
        sync_file(w.get_ref(), &staged.temp_path)
    })();
    match written {
        Ok(()) => Ok(staged),
        Err(e) => {
            staged.discard();
            Err(e)
        }
    }
}

/// Committed plans of `pipeline` not yet written back (their names in
/// `location`), oldest first.
pub fn pending_plans(location: &OutputLocation, pipeline: &str) -> std::io::Result<Vec<String>> {
    let prefix = format!("{pipeline}.");
    location.list(|n| {
        // `{pipeline}.{run_id}.writeback.jsonl`; run ids hold no dots.
        n.strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(PLAN_SUFFIX))
            .is_some_and(|run_id| !run_id.is_empty() && !run_id.contains('.'))
    })
}

/// Carries out every pending plan in `location` (oldest first), removing
/// each once Fyle accepted all of it; stops at the first failure, leaving
/// that plan and later ones for the next run.
pub async fn run_pending(
    client: &FyleClient,
    cfg: &WriteBackConfig,
    location: &OutputLocation,
    pipeline: &str,
) -> WriteBackSummary {
    let mut total = WriteBackSummary::default();
    let plans = match pending_plans(location, pipeline) {
        Ok(p) => p,
        Err(e) => {
            total.failed = Some(format!(
                "cannot list the pending write-back plans: {e}; the next run tries again"
            ));
            return total;
        }
    };
    for name in plans {
        let shown = location.shown(&name);
        // A plan is read one batch at a time: a backfill's plan can hold a
        // million ids. Marking is idempotent, so a plan that turns out
        // unreadable half-way is simply left for the next run.
        let cannot_read = |e: std::io::Error| {
            format!("cannot read the write-back plan {shown}: {e}; fix or delete it")
        };
        let mut plan = match location.open(&name) {
            Ok(r) => PlanReader::new(r),
            Err(e) => {
                total.failed = Some(cannot_read(e));
                return total;
            }
        };
        loop {
            let (exported, rejected) = match plan.next_batch(cfg.batch_size) {
                Ok(Some(batch)) => batch,
                Ok(None) => break,
                Err(e) => {
                    total.failed = Some(cannot_read(e));
                    return total;
                }
            };
            let s = write_back(client, cfg, &exported, &rejected).await;
            total.complete += s.complete;
            total.error += s.error;
            total.skipped_deleted += s.skipped_deleted;
            if s.failed.is_some() {
                total.failed = s.failed;
                return total;
            }
        }
        if let Err(e) = location.remove(&name) {
            total.failed = Some(format!(
                "the write-back succeeded but its plan {shown} could not be removed ({e}); \
                 the next run would mark those expenses again"
            ));
            return total;
        }
    }
    total
}

/// Reads a staged plan a batch of lines at a time.
struct PlanReader {
    lines: std::io::Lines<Box<dyn BufRead + Send>>,
}

impl PlanReader {
    fn new(reader: Box<dyn BufRead + Send>) -> Self {
        Self {
            lines: reader.lines(),
        }
    }

    #[cfg(test)]
    fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        Ok(Self::new(Box::new(std::io::BufReader::new(file))))
    }

    /// Up to `size` ids with the receiver's reasons for the rejected ones; `None` at the end.
    #[allow(clippy::type_complexity)]
    fn next_batch(
        &mut self,
        size: usize,
    ) -> std::io::Result<Option<(Vec<String>, HashMap<String, String>)>> {
        let mut exported = Vec::new();
        let mut rejected = HashMap::new();
        while exported.len() < size.max(1) {
            let Some(line) = self.lines.next() else { break };
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&line).map_err(std::io::Error::other)?;
            let id = v
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| std::io::Error::other("a line without an \"id\""))?
                .to_string();
            if let Some(reason) = v.get("rejected").and_then(Value::as_str) {
                rejected.insert(id.clone(), reason.to_string());
            }
            exported.push(id);
        }
        Ok((!exported.is_empty()).then_some((exported, rejected)))
    }
}

/// What the write-back did, for the run summary.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct WriteBackSummary {
    /// Expenses marked `COMPLETE`.
    pub complete: u64,
    /// Expenses marked `ERROR` (rejected by a receiver).
    pub error: u64,
    /// Expenses deleted in Fyle since they were read, skipped.
    pub skipped_deleted: u64,
    /// Why the write-back stopped, if it did; the committed outputs stand either way.
    pub failed: Option<String>,
}

/// Marks `exported` ids `COMPLETE`, or `ERROR` when they are in `rejected`
/// (id → reason), in batches of `cfg.batch_size`.
pub async fn write_back(
    client: &FyleClient,
    cfg: &WriteBackConfig,
    exported: &[String],
    rejected: &HashMap<String, String>,
) -> WriteBackSummary {
    let mut summary = WriteBackSummary::default();
    for chunk in exported.chunks(cfg.batch_size) {
        let mut ids: Vec<&str> = chunk.iter().map(String::as_str).collect();
        for final_phase in [false, true] {
            let result = post_tolerating_deleted(client, cfg, &mut ids, |id| {
                match (final_phase, rejected.contains_key(id)) {
                    (false, _) => ("IN_PROGRESS", None),
                    (true, true) => ("ERROR", Some(cfg.error_type.clone())),
                    (true, false) => ("COMPLETE", None),
                }
            })
            .await;
            match result {
                Ok(gone) => summary.skipped_deleted += gone,
                Err(e) => {
                    summary.failed = Some(format!(
                        "marking expenses in Fyle failed ({e}); the export itself is committed, \
                         re-run the write-back by hand or check the expenses' export status in Fyle"
                    ));
                    return summary;
                }
            }
        }
        for id in &ids {
            match rejected.contains_key(*id) {
                true => summary.error += 1,
                false => summary.complete += 1,
            }
        }
    }
    summary
}

/// Posts one bulk call for `ids`. When Fyle refuses it (it refuses the
/// whole call if any id is unknown), asks which of `ids` still exist, drops
/// the rest from `ids` and posts again; a refusal with every id present is a
/// real error. Returns how many ids were dropped.
async fn post_tolerating_deleted(
    client: &FyleClient,
    cfg: &WriteBackConfig,
    ids: &mut Vec<&str>,
    state_of: impl Fn(&str) -> (&'static str, Option<String>),
) -> Result<u64, FyleError> {
    let mut removed = 0;
    loop {
        if ids.is_empty() {
            return Ok(removed);
        }
        let data: Vec<Value> = ids
            .iter()
            .map(|id| {
                let (state, error_type) = state_of(id);
                json!({"id": id, "state": state, "error_type": error_type, "url": cfg.url.replace("{id}", id)})
            })
            .collect();
        match client.post(BULK_PATH, &json!({ "data": data })).await {
            Ok(_) => return Ok(removed),
            Err(FyleError::Http(HttpError::Rejected {
                status: 400,
                message,
                ..
            })) => {
                let existing = existing_ids(client, ids).await?;
                let before = ids.len();
                ids.retain(|id| existing.contains(*id));
                if ids.len() == before {
                    return Err(FyleError::Protocol(format!(
                        "Fyle refused the export status update: {message}"
                    )));
                }
                tracing::info!(
                    skipped = before - ids.len(),
                    "expenses deleted in Fyle since they were exported; not marking them"
                );
                removed += (before - ids.len()) as u64;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The query listing `ids`, each written as a filter literal the way the
/// pager writes them (quoted only where the grammar needs it).
fn existing_ids_query(ids: &[&str]) -> Vec<(String, String)> {
    let list: Vec<String> = ids.iter().map(|id| super::pager::literal(id)).collect();
    vec![
        ("id".to_string(), format!("in.({})", list.join(","))),
        ("limit".to_string(), "200".to_string()),
        ("offset".to_string(), "0".to_string()),
        ("order".to_string(), "id.asc".to_string()),
    ]
}

/// Which of `ids` (at most 200) are still expenses in Fyle.
async fn existing_ids(client: &FyleClient, ids: &[&str]) -> Result<HashSet<String>, FyleError> {
    let body = client
        .get("admin/expenses", &existing_ids_query(ids))
        .await?;
    let rows = body
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| FyleError::Protocol("expenses list without `data`".into()))?;
    Ok(rows
        .iter()
        .filter_map(|r| r.get("id").and_then(Value::as_str).map(str::to_string))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{PlanReader, existing_ids_query, stage_plan};
    use crate::sources::ExportedIds;

    #[test]
    fn a_staged_plan_is_read_back_one_batch_at_a_time_with_its_rejections() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = ExportedIds::new().unwrap();
        for i in 0..25 {
            ids.push(&format!("tx{i:02}")).unwrap();
        }
        let rejected = HashMap::from([("tx07".to_string(), "bad account".to_string())]);
        let path = dir.path().join("p.r1.writeback.jsonl");
        let staged = stage_plan(&path, "t1", &mut ids, &rejected).unwrap();
        let mut plan = PlanReader::open(&staged.temp_path).unwrap();
        let mut sizes = Vec::new();
        let mut all = Vec::new();
        let mut reasons = HashMap::new();
        while let Some((batch, rej)) = plan.next_batch(10).unwrap() {
            sizes.push(batch.len());
            all.extend(batch);
            reasons.extend(rej);
        }
        assert_eq!(sizes, [10, 10, 5]);
        assert_eq!(all.len(), 25);
        assert_eq!(all[24], "tx24");
        assert_eq!(reasons, rejected);
    }

    #[test]
    fn ids_are_listed_as_filter_literals_quoted_only_when_needed() {
        let q = existing_ids_query(&["txAbC09", "tx,odd", "tx(1)"]);
        assert_eq!(q[0].0, "id");
        assert_eq!(q[0].1, r#"in.(txAbC09,"tx,odd","tx(1)")"#);
    }
}
