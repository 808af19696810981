//! The commit protocol. Outputs are already written and fsynced under
//! temporary names when a run reaches [`commit`]:
//!
//! 1. the plan (which temp file becomes which final file, and the new
//!    watermark) is written into the state file as `pending` — the commit point;
//! 2. every temp file is renamed to its final name, directories fsynced;
//! 3. the plan is applied to the state (watermark advanced, run logged) and
//!    `pending` cleared.
//!
//! A crash before 1 leaves only temp files, which [`recover`] deletes: the run
//! rolls back and the next run redoes its window. A crash after 1 leaves a
//! pending plan, which [`recover`] rolls forward. Either way each record
//! version ends up in the committed outputs exactly once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{RunRecord, State, StateError, Version, save};
use crate::fsutil::{TEMP_PREFIX, sync_parent_dir};

/// A temporary file and the final name it gets on commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedFile {
    /// Where the finished bytes are now.
    pub temp: PathBuf,
    /// Where they go.
    #[serde(rename = "final")]
    pub final_path: PathBuf,
}

/// The new incremental position a commit moves to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advance {
    /// New watermark (the window's upper bound).
    pub watermark: DateTime<Utc>,
    /// Versions delivered inside the next run's lookback.
    pub boundary: BTreeSet<Version>,
}

/// Everything a commit does, written down before it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitPlan {
    /// The run being committed.
    pub run: RunRecord,
    /// Files to move into place.
    pub files: Vec<PlannedFile>,
    /// The incremental position to advance to; `None` for backfills.
    pub advance: Option<Advance>,
}

/// What [`recover`] found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// A pending commit was rolled forward (its run id).
    pub rolled_forward: Option<String>,
    /// Temporary files of interrupted runs that were deleted.
    pub removed_temps: Vec<PathBuf>,
}

fn state_err(path: &Path, message: String) -> StateError {
    StateError {
        path: path.to_path_buf(),
        message,
    }
}

/// Runs the protocol for `plan` and leaves `state` as saved.
pub fn commit(state_path: &Path, state: &mut State, plan: CommitPlan) -> Result<(), StateError> {
    crate::failpoint::hit("before-commit");
    state.pending = Some(plan.clone());
    save(state_path, state)?;
    crate::failpoint::hit("after-pending");
    finish_pending(state_path, state)
}

fn finish_pending(state_path: &Path, state: &mut State) -> Result<(), StateError> {
    let Some(plan) = state.pending.clone() else {
        return Ok(());
    };
    for f in &plan.files {
        if f.temp.exists() {
            std::fs::rename(&f.temp, &f.final_path).map_err(|e| {
                state_err(
                    state_path,
                    format!(
                        "committing run {}: cannot rename {} to {}: {e}; the commit stays pending and the next run retries it",
                        plan.run.run_id,
                        f.temp.display(),
                        f.final_path.display()
                    ),
                )
            })?;
            sync_parent_dir(&f.final_path).map_err(|e| state_err(state_path, e.to_string()))?;
            crate::failpoint::hit("after-rename");
        } else if !f.final_path.exists() {
            return Err(state_err(
                state_path,
                format!(
                    "run {} was committed but neither {} nor its temporary file {} exists; \
                     someone removed it. Restore the file, or remove `pending` from the state file \
                     and rerun with --since/--until for window {:?}..{:?}",
                    plan.run.run_id,
                    f.final_path.display(),
                    f.temp.display(),
                    plan.run.window_from,
                    plan.run.window_to
                ),
            ));
        }
    }
    state.apply(&plan);
    save(state_path, state)?;
    crate::failpoint::hit("after-commit");
    Ok(())
}

/// Brings the outputs and state back to a committed point after a crash:
/// rolls a pending commit forward, then deletes this pipeline's leftover
/// temporary files under `roots`. Call it while holding the pipeline lock.
pub fn recover(
    state_path: &Path,
    state: &mut State,
    roots: &[PathBuf],
) -> Result<Recovery, StateError> {
    let mut report = Recovery::default();
    if let Some(plan) = &state.pending {
        let run_id = plan.run.run_id.clone();
        warn!(
            run_id,
            "the previous run stopped during its commit; finishing it"
        );
        finish_pending(state_path, state)?;
        report.rolled_forward = Some(run_id);
    }
    let prefix = format!("{TEMP_PREFIX}{}.", state.pipeline);
    for root in roots {
        sweep(root, &prefix, &mut report.removed_temps);
    }
    if !report.removed_temps.is_empty() {
        info!(
            count = report.removed_temps.len(),
            "removed temporary files of an interrupted run (it rolled back; this run redoes its window)"
        );
    }
    Ok(report)
}

fn sweep(dir: &Path, prefix: &str, removed: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        match e.file_type() {
            Ok(t) if t.is_dir() => sweep(&path, prefix, removed),
            Ok(t)
                if t.is_file()
                    && name.starts_with(prefix)
                    && name.ends_with(".tmp")
                    && std::fs::remove_file(&path).is_ok() =>
            {
                removed.push(path);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dir: &Path, n: usize) -> CommitPlan {
        let files = (0..n)
            .map(|i| {
                let temp = dir.join(format!("{TEMP_PREFIX}p.r1-f{i}.csv.tmp"));
                std::fs::write(&temp, format!("file {i}")).unwrap();
                PlannedFile {
                    temp,
                    final_path: dir.join(format!("f{i}.csv")),
                }
            })
            .collect();
        CommitPlan {
            run: RunRecord {
                run_id: "r1".into(),
                kind: "incremental".into(),
                window_from: None,
                window_to: Some(Utc::now()),
                committed_at: Utc::now(),
                rows: 1,
                files: vec![],
            },
            files,
            advance: Some(Advance {
                watermark: Utc::now(),
                boundary: BTreeSet::new(),
            }),
        }
    }

    #[test]
    fn commit_moves_files_and_advances_state() {
        let dir = tempfile::tempdir().unwrap();
        let sp = dir.path().join("p.state.json");
        let mut st = State::new("p", "updated_at");
        let pl = plan(dir.path(), 2);
        commit(&sp, &mut st, pl.clone()).unwrap();
        assert!(st.pending.is_none());
        assert_eq!(st.watermark, Some(pl.advance.unwrap().watermark));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("f1.csv")).unwrap(),
            "file 1"
        );
        assert_eq!(super::super::load(&sp, "p", "updated_at").unwrap(), st);
    }

    #[test]
    fn a_pending_commit_half_done_is_rolled_forward() {
        let dir = tempfile::tempdir().unwrap();
        let sp = dir.path().join("p.state.json");
        let mut st = State::new("p", "updated_at");
        let pl = plan(dir.path(), 3);
        // Crash after the commit point and after the first rename.
        st.pending = Some(pl.clone());
        save(&sp, &st).unwrap();
        std::fs::rename(&pl.files[0].temp, &pl.files[0].final_path).unwrap();

        let mut reloaded = super::super::load(&sp, "p", "updated_at").unwrap();
        let r = recover(&sp, &mut reloaded, &[dir.path().to_path_buf()]).unwrap();
        assert_eq!(r.rolled_forward.as_deref(), Some("r1"));
        for i in 0..3 {
            assert_eq!(
                std::fs::read_to_string(dir.path().join(format!("f{i}.csv"))).unwrap(),
                format!("file {i}")
            );
        }
        assert!(reloaded.pending.is_none() && reloaded.watermark.is_some());
    }

    #[test]
    fn temps_without_a_pending_commit_are_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let sp = dir.path().join("p.state.json");
        let mut st = State::new("p", "updated_at");
        let pl = plan(dir.path(), 2);
        let other = dir.path().join(format!("{TEMP_PREFIX}other.r9-x.csv.tmp"));
        std::fs::write(&other, "another pipeline's work in progress").unwrap();
        let r = recover(&sp, &mut st, &[dir.path().to_path_buf()]).unwrap();
        assert_eq!(r.removed_temps.len(), 2);
        assert!(!pl.files[0].temp.exists() && !pl.files[0].final_path.exists());
        assert!(
            other.exists(),
            "temps of other pipelines are not ours to remove"
        );
        assert!(st.watermark.is_none());
    }
}
