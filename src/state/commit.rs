//! The commit protocol. Outputs are already written and fsynced under
//! temporary names when a run reaches [`commit`]:
//!
//! 1. the plan (which temp file becomes which final file, and the new
//!    watermark) is written into the state file as `pending` — the commit point;
//! 2. every temp file is renamed to its final name, directories fsynced —
//!    without replacing anything already there, unless the sink asked for
//!    `overwrite` (see [`place`]);
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
    /// The sink replaces its file every run (`overwrite = true`); otherwise an
    /// existing file at `final` is never replaced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replace: bool,
}

/// The new incremental position a commit moves to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advance {
    /// New watermark (the window's upper bound).
    pub watermark: DateTime<Utc>,
    /// Versions delivered inside the next run's lookback.
    pub boundary: BTreeSet<Version>,
    /// The selection the new watermark belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<super::Selection>,
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

/// Where a commit's files and state live: a local directory, or object
/// storage (`crate::store::state::RemoteTarget`). The protocol above is the
/// same for both; only saving the state and placing one file differ.
pub trait Target {
    /// Saves `state` (the commit point when it carries `pending`).
    fn save(&mut self, state: &State) -> Result<(), StateError>;
    /// Moves one planned file into place; must be safe to repeat after a crash at any instant.
    fn place(&mut self, f: &PlannedFile) -> Result<(), String>;
    /// The state's location, for messages.
    fn location(&self) -> PathBuf;
}

/// A state file and outputs on the local filesystem.
#[derive(Debug)]
pub struct LocalTarget<'a> {
    /// The state file.
    pub state_path: &'a Path,
}

impl Target for LocalTarget<'_> {
    fn save(&mut self, state: &State) -> Result<(), StateError> {
        save(self.state_path, state)
    }

    fn place(&mut self, f: &PlannedFile) -> Result<(), String> {
        place(f)
    }

    fn location(&self) -> PathBuf {
        self.state_path.to_path_buf()
    }
}

/// Runs the protocol for `plan` and leaves `state` as saved.
pub fn commit(state_path: &Path, state: &mut State, plan: CommitPlan) -> Result<(), StateError> {
    commit_to(&mut LocalTarget { state_path }, state, plan)
}

/// [`commit`] into any [`Target`].
pub fn commit_to(
    target: &mut dyn Target,
    state: &mut State,
    plan: CommitPlan,
) -> Result<(), StateError> {
    crate::failpoint::hit("before-commit");
    state.pending = Some(plan.clone());
    // On an error `pending` stays set: the save may have landed (e.g. only the
    // directory fsync failed), so the temporaries are left for recovery.
    target.save(state)?;
    crate::failpoint::hit("after-pending");
    finish_pending(target, state)
}

/// Carries out the pending plan of `state`, if any, and applies it.
pub fn finish_pending(target: &mut dyn Target, state: &mut State) -> Result<(), StateError> {
    let Some(plan) = state.pending.clone() else {
        return Ok(());
    };
    for f in &plan.files {
        target.place(f).map_err(|message| {
            state_err(
                &target.location(),
                format!(
                    "committing run {} (window {:?}..{:?}): {message}",
                    plan.run.run_id, plan.run.window_from, plan.run.window_to
                ),
            )
        })?;
    }
    state.apply(&plan);
    target.save(state)?;
    crate::failpoint::hit("after-commit");
    Ok(())
}

/// Moves one planned file into place; safe to repeat after a crash at any instant.
///
/// | temp | final | meaning → action |
/// |---|---|---|
/// | yes | no | not placed yet → rename without replacing |
/// | no | yes | placed already → nothing |
/// | yes | yes, same file | a link-then-unlink placement stopped halfway → unlink the temp |
/// | yes | yes, another file | with `replace`: rename over it; without: someone else's file is there, refuse |
/// | no | no | someone removed the output → refuse |
fn place(f: &PlannedFile) -> Result<(), String> {
    let temp_exists = f.temp.symlink_metadata().is_ok();
    let final_exists = f.final_path.symlink_metadata().is_ok();
    let pending_note = "the commit stays pending and the next run retries it";
    let occupied = || {
        format!(
            "{} already exists and is not this run's file; expense-sync never replaces a committed \
             file. Move it aside and run again: {pending_note}, placing {} there",
            f.final_path.display(),
            f.temp.display()
        )
    };
    match (temp_exists, final_exists) {
        (false, true) => return Ok(()),
        (false, false) => {
            return Err(format!(
                "neither {} nor its temporary file {} exists; someone removed it. Restore the file, \
                 or remove `pending` from the state file and rerun with --since/--until for the window",
                f.final_path.display(),
                f.temp.display()
            ));
        }
        (true, true) if crate::fsutil::same_file(&f.temp, &f.final_path) => {
            std::fs::remove_file(&f.temp)
                .map_err(|e| format!("cannot remove {}: {e}; {pending_note}", f.temp.display()))?;
        }
        (true, true) if !f.replace => return Err(occupied()),
        (true, _) => {
            let moved = if f.replace {
                std::fs::rename(&f.temp, &f.final_path)
            } else {
                crate::fsutil::rename_noreplace(&f.temp, &f.final_path)
            };
            moved.map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    occupied()
                } else {
                    format!(
                        "cannot rename {} to {}: {e}; {pending_note}",
                        f.temp.display(),
                        f.final_path.display()
                    )
                }
            })?;
        }
    }
    sync_parent_dir(&f.final_path).map_err(|e| format!("{e}; {pending_note}"))?;
    crate::failpoint::hit("after-rename");
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
        finish_pending(&mut LocalTarget { state_path }, state)?;
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
                    replace: false,
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
                selection: None,
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
    fn roll_forward_never_replaces_a_file_it_did_not_write() {
        let dir = tempfile::tempdir().unwrap();
        let sp = dir.path().join("p.state.json");
        let mut st = State::new("p", "updated_at");
        let pl = plan(dir.path(), 2);
        std::fs::write(&pl.files[1].final_path, "someone else's").unwrap();
        let err = commit(&sp, &mut st, pl.clone()).unwrap_err();
        assert!(err.message.contains("already exists"), "{err}");
        assert!(err.message.contains("f1.csv"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&pl.files[1].final_path).unwrap(),
            "someone else's"
        );
        // The commit stays pending; once the file is moved aside it finishes.
        assert!(st.pending.is_some());
        std::fs::remove_file(&pl.files[1].final_path).unwrap();
        let mut reloaded = super::super::load(&sp, "p", "updated_at").unwrap();
        recover(&sp, &mut reloaded, &[dir.path().to_path_buf()]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&pl.files[1].final_path).unwrap(),
            "file 1"
        );
        assert!(reloaded.pending.is_none());
    }

    #[test]
    fn a_placement_stopped_between_link_and_unlink_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let sp = dir.path().join("p.state.json");
        let mut st = State::new("p", "updated_at");
        let pl = plan(dir.path(), 1);
        st.pending = Some(pl.clone());
        save(&sp, &st).unwrap();
        std::fs::hard_link(&pl.files[0].temp, &pl.files[0].final_path).unwrap();
        let r = recover(&sp, &mut st, &[dir.path().to_path_buf()]).unwrap();
        assert_eq!(r.rolled_forward.as_deref(), Some("r1"));
        assert!(!pl.files[0].temp.exists());
        assert_eq!(
            std::fs::read_to_string(&pl.files[0].final_path).unwrap(),
            "file 0"
        );
    }

    #[test]
    fn an_overwrite_file_replaces_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let sp = dir.path().join("p.state.json");
        let mut st = State::new("p", "updated_at");
        let mut pl = plan(dir.path(), 1);
        pl.files[0].replace = true;
        std::fs::write(&pl.files[0].final_path, "last run's").unwrap();
        commit(&sp, &mut st, pl.clone()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&pl.files[0].final_path).unwrap(),
            "file 0"
        );
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
