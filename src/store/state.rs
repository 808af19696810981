//! The commit protocol's [`Target`] in object storage.
//!
//! Object stores have no rename and no directory fsync; what they have is a
//! conditional put. So:
//!
//! - outputs are uploaded under temporary keys
//!   (`{prefix}/.expense-sync-tmp/{pipeline}/{run_id}/…`) before the commit point;
//! - every save of the state object is conditional on the version this
//!   process last read or wrote (`If-Match` on its ETag, or `If-None-Match: *`
//!   when there was none), so of two processes that planned from the same
//!   state only one can write its commit point;
//! - placing a file creates the final key only if it does not exist (unless
//!   the sink has `overwrite = true`), then deletes the temporary key.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use object_store::{PutMode, UpdateVersion};
use tracing::{info, warn};

use super::{ObjectKey as Key, Remote, StoreError};
use crate::state::{self, PlannedFile, Recovery, State, StateError, Target};

/// Folder, under the output prefix, of the temporary objects of unfinished runs.
pub const TEMP_DIR: &str = ".expense-sync-tmp";

/// A state object and the outputs of one pipeline in an object store.
#[derive(Debug)]
pub struct RemoteTarget {
    remote: Arc<Remote>,
    state_key: Key,
    /// The version last read or written; `None`: the object did not exist.
    version: Option<UpdateVersion>,
    /// The last save was refused because another process had changed the state.
    refused: bool,
}

impl RemoteTarget {
    /// Reads the state object (a missing one is a fresh state) and remembers its version.
    pub fn load(
        remote: Arc<Remote>,
        state_key: Key,
        pipeline: &str,
        cursor_field: &str,
    ) -> Result<(RemoteTarget, State), StateError> {
        let url = PathBuf::from(remote.url(&state_key));
        let got = remote.get(&state_key).map_err(|e| StateError {
            path: url.clone(),
            message: format!("cannot be read: {}", e.message),
        })?;
        let (state, version) = match got {
            None => (State::new(pipeline, cursor_field), None),
            Some((bytes, version)) => {
                let text = String::from_utf8_lossy(&bytes);
                (
                    state::parse(&text, &url, pipeline, cursor_field)?,
                    Some(version),
                )
            }
        };
        Ok((
            RemoteTarget {
                remote,
                state_key,
                version,
                refused: false,
            },
            state,
        ))
    }

    /// Whether the last save was refused by the conditional put (nothing was written).
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// The state object's key.
    pub fn state_key(&self) -> &Key {
        &self.state_key
    }

    /// The store.
    pub fn remote(&self) -> &Arc<Remote> {
        &self.remote
    }

    /// Where the temporary objects of `pipeline`'s unfinished runs live.
    pub fn temp_root(&self, pipeline: &str) -> Key {
        self.remote.key(&format!("{TEMP_DIR}/{pipeline}"))
    }

    /// The temporary key for `rel` (slash-separated, relative to the output prefix) in run `run_id`.
    pub fn temp_key(&self, pipeline: &str, run_id: &str, rel: &str) -> Key {
        self.remote
            .key(&format!("{TEMP_DIR}/{pipeline}/{run_id}/{rel}"))
    }

    /// Brings outputs and state back to a committed point: rolls a pending
    /// commit forward, then deletes `pipeline`'s temporary objects that no
    /// pending plan names. Call it while holding the pipeline's lease.
    pub fn recover(&mut self, state: &mut State) -> Result<Recovery, StateError> {
        let mut report = Recovery::default();
        if let Some(plan) = &state.pending {
            let run_id = plan.run.run_id.clone();
            warn!(
                run_id,
                "the previous run stopped during its commit; finishing it"
            );
            state::finish_pending(self, state)?;
            report.rolled_forward = Some(run_id);
        }
        let root = self.temp_root(&state.pipeline);
        let leftovers = self.remote.list(&root).map_err(|e| self.error(e))?;
        if leftovers.is_empty() {
            return Ok(report);
        }
        // A run that lost its lease while paused may still try to commit with the
        // version it read: saving first makes that attempt fail instead of
        // writing a plan whose temporary objects are deleted below.
        self.save(state)?;
        for key in leftovers {
            self.remote.delete(&key).map_err(|e| self.error(e))?;
            report
                .removed_temps
                .push(PathBuf::from(self.remote.url(&key)));
        }
        info!(
            count = report.removed_temps.len(),
            "removed temporary objects of an interrupted run (it rolled back; this run redoes its window)"
        );
        Ok(report)
    }

    fn error(&self, e: StoreError) -> StateError {
        StateError {
            path: PathBuf::from(self.remote.url(&self.state_key)),
            message: e.to_string(),
        }
    }
}

impl Target for RemoteTarget {
    fn save(&mut self, state: &State) -> Result<(), StateError> {
        let url = PathBuf::from(self.remote.url(&self.state_key));
        let text = state::to_text(state).map_err(|message| StateError {
            path: url.clone(),
            message,
        })?;
        let mode = match &self.version {
            Some(v) => PutMode::Update(v.clone()),
            None => PutMode::Create,
        };
        let put = self.remote.put(&self.state_key, Bytes::from(text), mode);
        self.refused = matches!(&put, Err(e) if e.conflict);
        match put {
            Ok(v) => {
                self.version = Some(v);
                Ok(())
            }
            Err(e) if e.conflict => Err(StateError {
                path: url,
                message: "was changed by another process since this run read it (conditional put \
                          refused): another run of this pipeline committed or recovered meanwhile. \
                          This run committed nothing; the next run starts from what the other wrote"
                    .to_string(),
            }),
            Err(e) => Err(StateError {
                path: url,
                message: format!("cannot be written: {}", e.message),
            }),
        }
    }

    fn place(&mut self, f: &PlannedFile) -> Result<(), String> {
        let pending_note = "the commit stays pending and the next run retries it";
        let temp = Key::from(f.temp.to_string_lossy().as_ref());
        let fin = Key::from(f.final_path.to_string_lossy().as_ref());
        let (temp_url, final_url) = (self.remote.url(&temp), self.remote.url(&fin));
        let occupied = || {
            format!(
                "{final_url} already exists and is not this run's object; expense-sync never replaces \
                 a committed object. Move it aside and run again: {pending_note}, placing {temp_url} there"
            )
        };
        let store = |e: StoreError| format!("{e}; {pending_note}");
        // The bytes are copied inside the store, never through this process: a
        // placed file (or a write-back plan of a million ids) can be any size.
        if !self.remote.exists(&temp).map_err(store)? {
            return if self.remote.exists(&fin).map_err(store)? {
                Ok(())
            } else {
                Err(format!(
                    "neither {final_url} nor its temporary object {temp_url} exists; someone removed it. \
                     Restore the object, or remove `pending` from the state object and rerun with \
                     --since/--until for the window"
                ))
            };
        }
        if f.replace {
            self.remote.copy(&temp, &fin).map_err(store)?;
        } else {
            match self.remote.copy_create(&temp, &fin) {
                Ok(()) => {}
                // Placed by an earlier attempt that stopped before deleting the temporary.
                Err(e) if e.conflict && self.remote.same_content(&fin, &temp).map_err(store)? => {}
                Err(e) if e.conflict => return Err(occupied()),
                Err(e) => return Err(store(e)),
            }
        }
        crate::failpoint::hit("remote-placed");
        self.remote.delete(&temp).map_err(store)?;
        Ok(())
    }

    fn location(&self) -> PathBuf {
        PathBuf::from(self.remote.url(&self.state_key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Advance, CommitPlan, RunRecord};
    use chrono::Utc;

    fn remote() -> Arc<Remote> {
        let store = Arc::new(object_store::memory::InMemory::new());
        Arc::new(Remote::with_store(store, "memory://test", Key::from("out")).unwrap())
    }

    fn plan(t: &RemoteTarget, run: &str, n: usize) -> CommitPlan {
        let files = (0..n)
            .map(|i| {
                let temp = t.temp_key("p", run, &format!("f{i}.csv"));
                t.remote
                    .put(&temp, Bytes::from(format!("file {i}")), PutMode::Overwrite)
                    .unwrap();
                PlannedFile {
                    temp: PathBuf::from(temp.as_ref()),
                    final_path: PathBuf::from(t.remote.key(&format!("f{i}.csv")).as_ref()),
                    replace: false,
                }
            })
            .collect();
        CommitPlan {
            run: RunRecord {
                run_id: run.into(),
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
                boundary: Default::default(),
                selection: None,
            }),
        }
    }

    #[test]
    fn of_two_processes_planned_from_one_state_only_one_commits() {
        let r = remote();
        let key = r.key("p.state.json");
        let (mut a, mut sa) = RemoteTarget::load(r.clone(), key.clone(), "p", "u").unwrap();
        let (mut b, mut sb) = RemoteTarget::load(r.clone(), key.clone(), "p", "u").unwrap();
        let pa = plan(&a, "ra", 1);
        let pb = plan(&b, "rb", 1);
        state::commit_to(&mut a, &mut sa, pa).unwrap();
        let e = state::commit_to(&mut b, &mut sb, pb).unwrap_err();
        assert!(e.message.contains("changed by another process"), "{e}");
        let (_, now) = RemoteTarget::load(r.clone(), key, "p", "u").unwrap();
        assert_eq!(now.runs.len(), 1);
        assert_eq!(now.runs[0].run_id, "ra");
        assert!(now.pending.is_none());
    }

    #[test]
    fn a_pending_remote_commit_rolls_forward_and_strays_are_deleted() {
        let r = remote();
        let key = r.key("p.state.json");
        let (mut t, mut st) = RemoteTarget::load(r.clone(), key.clone(), "p", "u").unwrap();
        let pl = plan(&t, "r1", 2);
        // Crash after the commit point, with the first object already placed.
        st.pending = Some(pl.clone());
        t.save(&st).unwrap();
        t.place(&pl.files[0]).unwrap();
        let stray = t.temp_key("p", "r0", "old.csv");
        r.put(&stray, Bytes::from("x"), PutMode::Overwrite).unwrap();
        let other = t.temp_key("q", "r0", "theirs.csv");
        r.put(&other, Bytes::from("y"), PutMode::Overwrite).unwrap();

        let (mut t2, mut st2) = RemoteTarget::load(r.clone(), key.clone(), "p", "u").unwrap();
        let rep = t2.recover(&mut st2).unwrap();
        assert_eq!(rep.rolled_forward.as_deref(), Some("r1"));
        assert_eq!(rep.removed_temps.len(), 1);
        for i in 0..2 {
            let (b, _) = r.get(&r.key(&format!("f{i}.csv"))).unwrap().unwrap();
            assert_eq!(b, Bytes::from(format!("file {i}")));
        }
        assert!(r.list(&t2.temp_root("p")).unwrap().is_empty());
        assert!(
            r.exists(&other).unwrap(),
            "another pipeline's temporaries stay"
        );
        assert!(st2.pending.is_none() && st2.watermark.is_some());
    }

    #[test]
    fn a_remote_commit_never_replaces_an_object_it_did_not_write() {
        let r = remote();
        let key = r.key("p.state.json");
        let (mut t, mut st) = RemoteTarget::load(r.clone(), key, "p", "u").unwrap();
        let pl = plan(&t, "r1", 1);
        let fin = Key::from(pl.files[0].final_path.to_string_lossy().as_ref());
        r.put(&fin, Bytes::from("someone else's"), PutMode::Overwrite)
            .unwrap();
        let e = state::commit_to(&mut t, &mut st, pl).unwrap_err();
        assert!(e.message.contains("already exists"), "{e}");
        assert!(e.message.contains("memory://test/out/f0.csv"), "{e}");
        assert_eq!(
            r.get(&fin).unwrap().unwrap().0,
            Bytes::from("someone else's")
        );
        assert!(st.pending.is_some());
    }
}
