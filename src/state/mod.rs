//! Incremental state, the per-pipeline lock, and the commit protocol.
//!
//! The state file is JSON a person can read: the committed watermark, the
//! record versions delivered near it (to de-duplicate the lookback overlap),
//! a pending commit while one is in flight, and a short history of runs.

mod commit;
mod lock;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use commit::{
    Advance, CommitPlan, LocalTarget, PlannedFile, Recovery, Target, commit, commit_to,
    finish_pending, recover,
};
pub use lock::{LockError, PipelineLock, acquire};

/// Version of the state file format.
pub const STATE_VERSION: u32 = 1;
/// Runs kept in the history.
const HISTORY: usize = 50;

/// A record version: its id and the exact cursor text it had.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
pub struct Version {
    /// Record id.
    pub id: String,
    /// Cursor value as the API wrote it.
    pub cursor: String,
}

/// What a pipeline selects, part by part (e.g. `source filters` →
/// `state=in.(PAID)`), so a change can be named; long parts are stored as a
/// digest. "Since the last run" only means something while this stays the same.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Selection(pub BTreeMap<String, String>);

/// One part of the selection that differs between two fingerprints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectionChange {
    /// Which part, e.g. `columns`.
    pub part: String,
    /// Its value before (`None`: not recorded then).
    pub before: Option<String>,
    /// Its value now (`None`: no longer part of the selection).
    pub after: Option<String>,
}

impl Selection {
    /// The parts that differ from `now`, in a stable order.
    pub fn changes(&self, now: &Selection) -> Vec<SelectionChange> {
        let parts: BTreeSet<&String> = self.0.keys().chain(now.0.keys()).collect();
        parts
            .into_iter()
            .filter(|p| self.0.get(*p) != now.0.get(*p))
            .map(|p| SelectionChange {
                part: p.clone(),
                before: self.0.get(p).cloned(),
                after: now.0.get(p).cloned(),
            })
            .collect()
    }
}

/// One committed run, kept for people to inspect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Run id.
    pub run_id: String,
    /// `incremental`, `full_refresh` or `backfill`.
    pub kind: String,
    /// Window start (inclusive).
    pub window_from: Option<DateTime<Utc>>,
    /// Window end (exclusive).
    pub window_to: Option<DateTime<Utc>>,
    /// When the outputs were made final.
    pub committed_at: DateTime<Utc>,
    /// Rows written per sink.
    pub rows: u64,
    /// Final paths of the files written.
    pub files: Vec<PathBuf>,
}

/// The state of one pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// File format version.
    pub version: u32,
    /// Pipeline name (a state file belongs to one pipeline).
    pub pipeline: String,
    /// Cursor field the watermark refers to.
    pub cursor_field: String,
    /// Upper bound (exclusive) of the last committed incremental window.
    pub watermark: Option<DateTime<Utc>>,
    /// Versions delivered with a cursor inside the next run's lookback.
    #[serde(default)]
    pub boundary: BTreeSet<Version>,
    /// What the pipeline selected when the watermark was last advanced
    /// (absent in state files written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<Selection>,
    /// A commit that was decided but may not have finished (crash recovery rolls it forward).
    #[serde(default)]
    pub pending: Option<CommitPlan>,
    /// Recent committed runs, newest last.
    #[serde(default)]
    pub runs: Vec<RunRecord>,
}

impl State {
    /// A fresh state for `pipeline`.
    pub fn new(pipeline: &str, cursor_field: &str) -> Self {
        Self {
            version: STATE_VERSION,
            pipeline: pipeline.to_string(),
            cursor_field: cursor_field.to_string(),
            watermark: None,
            boundary: BTreeSet::new(),
            selection: None,
            pending: None,
            runs: Vec::new(),
        }
    }

    /// Applies a finished commit: advance the watermark (if the plan says so) and log the run.
    pub fn apply(&mut self, plan: &CommitPlan) {
        if let Some(advance) = &plan.advance {
            self.watermark = Some(advance.watermark);
            self.boundary = advance.boundary.clone();
            if advance.selection.is_some() {
                self.selection = advance.selection.clone();
            }
        }
        self.runs.push(plan.run.clone());
        if self.runs.len() > HISTORY {
            let excess = self.runs.len() - HISTORY;
            self.runs.drain(..excess);
        }
        self.pending = None;
    }
}

/// A state file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("state file {}: {message}", path.display())]
pub struct StateError {
    /// The state file.
    pub path: PathBuf,
    /// What is wrong and what to do.
    pub message: String,
}

/// Reads the state file; a missing file is a fresh state, anything unreadable is an error.
pub fn load(path: &Path, pipeline: &str, cursor_field: &str) -> Result<State, StateError> {
    let err = |message: String| StateError {
        path: path.to_path_buf(),
        message,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(State::new(pipeline, cursor_field));
        }
        Err(e) => return Err(err(format!("cannot be read: {e}"))),
    };
    parse(&text, path, pipeline, cursor_field)
}

/// Parses and checks state text read from `path` (a file or an object URL).
pub fn parse(
    text: &str,
    path: &Path,
    pipeline: &str,
    cursor_field: &str,
) -> Result<State, StateError> {
    let err = |message: String| StateError {
        path: path.to_path_buf(),
        message,
    };
    let state: State = serde_json::from_str(text).map_err(|e| {
        err(format!(
            "is not a valid state file ({e}). It was left untouched; fix it, or move it aside \
             to start over (the next run then exports everything from incremental.start)"
        ))
    })?;
    if state.version != STATE_VERSION {
        return Err(err(format!(
            "has format version {}, this expense-sync reads version {STATE_VERSION}",
            state.version
        )));
    }
    if state.pipeline != pipeline {
        return Err(err(format!(
            "belongs to pipeline `{}`, not `{pipeline}`; give each pipeline its own state file",
            state.pipeline
        )));
    }
    if state.cursor_field != cursor_field {
        return Err(err(format!(
            "tracks cursor `{}` but the pipeline now pages by `{cursor_field}`; \
             a watermark of one field means nothing for another: move the file aside to start over",
            state.cursor_field
        )));
    }
    Ok(state)
}

/// Writes the state file atomically (temp, fsync, rename, fsync directory).
///
/// The temporary file has a fixed name beside the state file. A process
/// killed mid-save leaves it behind; the caller holds the pipeline lock, so
/// no live writer owns a temp that exists now, and it is removed first
/// rather than blocking every later save.
pub fn save(path: &Path, state: &State) -> Result<(), StateError> {
    use std::io::Write;
    let err = |message: String| StateError {
        path: path.to_path_buf(),
        message,
    };
    let text = to_text(state).map_err(err)?;
    let cannot = |e: std::io::Error| err(format!("cannot be written: {e}"));
    let temp = state_temp_path(path, &state.pipeline);
    match std::fs::remove_file(&temp) {
        Ok(()) => tracing::info!(
            temp = %temp.display(),
            "removed the temporary state file of a save that was interrupted"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(cannot(crate::fsutil::annotate(e, &temp, "remove stale"))),
    }
    let (staged, mut file) =
        crate::fsutil::StagedFile::create(path, &state_temp_tag(&state.pipeline))
            .map_err(cannot)?;
    crate::failpoint::hit("state-save-created");
    let written = file
        .write_all(text.as_bytes())
        .map_err(|e| crate::fsutil::annotate(e, &staged.temp_path, "write"))
        .inspect(|_| crate::failpoint::hit("state-save-written"))
        .and_then(|_| crate::fsutil::sync_file(&file, &staged.temp_path));
    if let Err(e) = written {
        staged.discard();
        return Err(cannot(e));
    }
    crate::failpoint::hit("state-save-synced");
    std::fs::rename(&staged.temp_path, path).map_err(|e| {
        staged.discard();
        cannot(crate::fsutil::annotate(e, path, "rename into place"))
    })?;
    crate::failpoint::hit("state-save-renamed");
    crate::fsutil::sync_parent_dir(path).map_err(cannot)
}

/// The state as the file holds it: pretty JSON and a final newline.
pub fn to_text(state: &State) -> Result<String, String> {
    let mut text =
        serde_json::to_string_pretty(state).map_err(|e| format!("cannot be serialised: {e}"))?;
    text.push('\n');
    Ok(text)
}

fn state_temp_tag(pipeline: &str) -> String {
    format!("{pipeline}.state")
}

/// The fixed temporary name a save of the state file at `path` writes first.
fn state_temp_path(path: &Path, pipeline: &str) -> PathBuf {
    crate::fsutil::temp_path_for(path, &state_temp_tag(pipeline))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_state_is_fresh_and_roundtrips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        let mut s = load(&p, "p", "updated_at").unwrap();
        assert_eq!(s.watermark, None);
        s.boundary.insert(Version {
            id: "tx1".into(),
            cursor: "2024-01-01T00:00:00+00:00".into(),
        });
        save(&p, &s).unwrap();
        assert_eq!(load(&p, "p", "updated_at").unwrap(), s);
    }

    #[test]
    fn a_temp_left_by_a_killed_save_does_not_block_the_next_save() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        let s = State::new("p", "updated_at");
        std::fs::write(state_temp_path(&p, "p"), "{ half a sta").unwrap();
        save(&p, &s).unwrap();
        assert_eq!(load(&p, "p", "updated_at").unwrap(), s);
        assert!(!state_temp_path(&p, "p").exists());
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        std::fs::write(&p, "{ not json").unwrap();
        let e = load(&p, "p", "updated_at").unwrap_err();
        assert!(e.to_string().contains("s.json"), "{e}");
        assert!(e.to_string().contains("not a valid state file"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{ not json");
    }

    #[test]
    fn state_of_another_pipeline_or_cursor_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        save(&p, &State::new("a", "updated_at")).unwrap();
        assert!(
            load(&p, "b", "updated_at")
                .unwrap_err()
                .message
                .contains("belongs to pipeline `a`")
        );
        assert!(
            load(&p, "a", "last_settled_at")
                .unwrap_err()
                .message
                .contains("tracks cursor")
        );
    }
}
