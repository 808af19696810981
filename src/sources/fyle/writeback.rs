//! Write-back of export status to Fyle: after a run committed, each exported
//! expense is marked through `POST /admin/expenses/accounting_export_summary/bulk`
//! so finance teams see in Fyle what was exported and what failed.
//!
//! Each small batch is first marked `IN_PROGRESS`, then `COMPLETE` (or
//! `ERROR` with `error_type` for records a receiver rejected), so an
//! interruption between the two leaves a visible `IN_PROGRESS` rather than a
//! silent gap. Expenses deleted in Fyle since they were read are skipped:
//! Fyle refuses the whole bulk call naming them, and the call is repeated
//! without them.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{FyleClient, FyleError};
use crate::config::Problem;
use crate::http::HttpError;

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

/// Which of `ids` (at most 200) are still expenses in Fyle.
async fn existing_ids(client: &FyleClient, ids: &[&str]) -> Result<HashSet<String>, FyleError> {
    let query = vec![
        ("id".to_string(), format!("in.({})", ids.join(","))),
        ("limit".to_string(), "200".to_string()),
        ("offset".to_string(), "0".to_string()),
        ("order".to_string(), "id.asc".to_string()),
    ];
    let body = client.get("admin/expenses", &query).await?;
    let rows = body
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| FyleError::Protocol("expenses list without `data`".into()))?;
    Ok(rows
        .iter()
        .filter_map(|r| r.get("id").and_then(Value::as_str).map(str::to_string))
        .collect())
}
