//! The push journal: which record versions receivers acknowledged during
//! runs that have not committed yet.
//!
//! A pushed record cannot be taken back, but a run that fails (or is killed)
//! after some batches were acknowledged commits nothing, so its rerun reads
//! the same window again. If the source changed in between, batches are cut
//! differently and their keys differ, so a receiver that de-duplicates by
//! batch key would apply those records twice. The journal closes that gap:
//! every acknowledged batch appends one line (fsynced) naming its records'
//! versions, and a rerun skips the versions already acknowledged.
//!
//! One file per pipeline, beside its state: `{state file}.push-journal.jsonl`.
//! Each line is `{"run", "sink", "records": [{"id", "cursor", "key"}]}`.
//! Object storage has no append, so with the state there the journal is a
//! prefix instead, one object per acknowledged batch holding what would be
//! one line: `{state key}.push-journal/{run}/{seq:08}.json`, written (its put
//! acknowledged) before the sink sends the next batch. Both are a [`Storage`];
//! everything below holds for either. The
//! journal belongs to the uncommitted runs in it; once one of them commits,
//! everything in it is covered by the committed state (its watermark and
//! boundary versions), so the runner removes the file after the commit, and
//! a run that finds a journal naming a committed run (a crash between the
//! commit and the removal) removes it before reading anything. Because a
//! skip matches an exact record version (id and cursor value), a new version
//! of a record is never skipped, whatever is in the journal.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::fsutil::sync_parent_dir;
use crate::store::{ObjectKey, Remote};

/// One acknowledged record version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// Record id, when the record has one.
    pub id: Option<String>,
    /// Cursor value of this version, when known.
    pub cursor: Option<String>,
    /// The per-record key the record was sent with.
    pub key: String,
}

#[derive(Serialize, Deserialize)]
struct Line {
    run: String,
    sink: String,
    records: Vec<JournalRecord>,
}

/// Where the journal's entries (one acknowledged batch each) are kept.
trait Storage: Send + Sync {
    /// Calls `each` with every stored entry, until it returns `false`.
    fn scan(&self, each: &mut dyn FnMut(&[u8]) -> bool) -> io::Result<()>;
    /// Stores entry number `seq` of run `run` durably before returning.
    fn append(&self, run: &str, seq: u64, entry: &[u8]) -> io::Result<()>;
    /// Removes every entry; nothing stored is not an error.
    fn remove(&self) -> io::Result<()>;
    /// Where the journal is, for messages.
    fn location(&self) -> &str;
}

/// The journal of one pipeline, shared by its pushing sinks for one run.
#[derive(Clone)]
pub struct PushJournal {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Box<dyn Storage>,
    run_id: String,
    /// Keys acknowledged by earlier uncommitted runs, per sink URL, as the
    /// 32 bytes of their SHA-256 (about 50 bytes a record in memory).
    earlier: HashMap<String, HashSet<[u8; 32]>>,
    /// Entries this run stored, numbering the next one.
    seq: AtomicU64,
}

impl std::fmt::Debug for PushJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushJournal")
            .field("location", &self.inner.storage.location())
            .field("run_id", &self.inner.run_id)
            .finish_non_exhaustive()
    }
}

/// Where the journal of the pipeline whose state is at `state_path` lives.
pub fn journal_path(state_path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.push-journal.jsonl", state_path.display()))
}

/// The prefix of the journal objects of the pipeline whose state object is `state_key`.
pub fn journal_prefix(state_key: &ObjectKey) -> ObjectKey {
    ObjectKey::from(format!("{}.push-journal", state_key.as_ref()))
}

impl PushJournal {
    /// Opens the journal file at `path` for run `run_id`: reads what
    /// uncommitted runs acknowledged, or removes the file if `committed` says
    /// one of its runs has committed since. Call it while holding the pipeline
    /// lock, after recovery.
    pub fn open(
        path: &Path,
        run_id: &str,
        committed: impl Fn(&str) -> bool,
    ) -> io::Result<PushJournal> {
        let storage = LocalFile {
            path: path.to_path_buf(),
            shown: path.display().to_string(),
            file: Mutex::new(None),
        };
        Self::open_in(Box::new(storage), run_id, committed)
    }

    /// [`PushJournal::open`] for a state object in `remote`: the journal is
    /// the objects under [`journal_prefix`]. Call it while holding the lease.
    pub fn open_remote(
        remote: Arc<Remote>,
        state_key: &ObjectKey,
        run_id: &str,
        committed: impl Fn(&str) -> bool,
    ) -> io::Result<PushJournal> {
        let prefix = journal_prefix(state_key);
        let storage = RemotePrefix {
            shown: remote.url(&prefix),
            remote,
            prefix,
        };
        Self::open_in(Box::new(storage), run_id, committed)
    }

    fn open_in(
        storage: Box<dyn Storage>,
        run_id: &str,
        committed: impl Fn(&str) -> bool,
    ) -> io::Result<PushJournal> {
        let mut earlier: HashMap<String, HashSet<[u8; 32]>> = HashMap::new();
        let mut stale = false;
        storage.scan(&mut |entry| {
            // An entry cut by a crash mid-append does not parse and is
            // ignored: its batch was acknowledged but not journaled, and the
            // per-record keys let the receiver recognise it when it is sent again.
            let Ok(line) = serde_json::from_slice::<Line>(entry) else {
                return true;
            };
            if committed(&line.run) {
                stale = true;
                return false;
            }
            earlier
                .entry(line.sink)
                .or_default()
                .extend(line.records.iter().filter_map(|r| key_bytes(&r.key)));
            true
        })?;
        if stale {
            tracing::info!(
                journal = storage.location(),
                "removing the push journal of a run that has committed"
            );
            earlier.clear();
            storage.remove()?;
        }
        Ok(PushJournal {
            inner: Arc::new(Inner {
                storage,
                run_id: run_id.to_string(),
                earlier,
                seq: AtomicU64::new(0),
            }),
        })
    }

    /// Where the journal is: its file, or its object prefix's URL.
    pub fn location(&self) -> &str {
        self.inner.storage.location()
    }

    /// Keys of record versions that `sink` (its URL) acknowledged in earlier
    /// uncommitted runs, as [`key_bytes`].
    pub fn acknowledged(&self, sink: &str) -> HashSet<[u8; 32]> {
        self.inner.earlier.get(sink).cloned().unwrap_or_default()
    }

    /// Stores one acknowledged batch durably (fsynced line, or acknowledged put) before returning.
    pub fn record(&self, sink: &str, records: Vec<JournalRecord>) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let line = Line {
            run: self.inner.run_id.clone(),
            sink: sink.to_string(),
            records,
        };
        let bytes = serde_json::to_vec(&line).map_err(io::Error::other)?;
        let seq = self.inner.seq.fetch_add(1, Ordering::SeqCst);
        self.inner.storage.append(&self.inner.run_id, seq, &bytes)?;
        crate::failpoint::hit("push-journaled");
        Ok(())
    }

    /// Removes the journal once the run committed (its content is then in the state).
    pub fn retire(self) -> io::Result<()> {
        self.inner.storage.remove()
    }
}

/// The journal as one append-only, fsynced file of JSON lines.
struct LocalFile {
    path: PathBuf,
    shown: String,
    /// Opened on the first acknowledgement, so a run that pushes nothing leaves no file.
    file: Mutex<Option<File>>,
}

impl Storage for LocalFile {
    fn scan(&self, each: &mut dyn FnMut(&[u8]) -> bool) -> io::Result<()> {
        let path = &self.path;
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(annotate(e, path, "open")),
        };
        for l in io::BufReader::new(f).lines() {
            let l = l.map_err(|e| annotate(e, path, "read"))?;
            if !each(l.as_bytes()) {
                break;
            }
        }
        Ok(())
    }

    fn append(&self, _run: &str, _seq: u64, entry: &[u8]) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(entry.len() + 1);
        bytes.extend_from_slice(entry);
        bytes.push(b'\n');
        let path = &self.path;
        let mut guard = self.file.lock().expect("journal lock");
        if guard.is_none() {
            let existed = path.exists();
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| annotate(e, path, "open"))?;
            // After a crash mid-append the file may end inside a line; start a fresh one.
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len > 0 && !ends_with_newline(path, len) {
                f.write_all(b"\n").map_err(|e| annotate(e, path, "write"))?;
            }
            if !existed {
                sync_parent_dir(path)?;
            }
            *guard = Some(f);
        }
        let f = guard.as_mut().expect("opened above");
        // One write per line: with O_APPEND, lines of two sinks never interleave.
        f.write_all(&bytes)
            .and_then(|_| f.sync_data())
            .map_err(|e| annotate(e, path, "append to"))
    }

    fn remove(&self) -> io::Result<()> {
        remove(&self.path)
    }

    fn location(&self) -> &str {
        &self.shown
    }
}

/// Entries fetched together while scanning a remote journal (bounds memory, keeps order).
const SCAN_CHUNK: usize = 256;

/// The journal as one object per entry under a prefix (object storage has no append).
struct RemotePrefix {
    remote: Arc<Remote>,
    prefix: ObjectKey,
    shown: String,
}

impl RemotePrefix {
    fn fail(&self, what: &str, e: crate::store::StoreError) -> io::Error {
        io::Error::other(format!(
            "cannot {what} the push journal {}: {e}",
            self.shown
        ))
    }
}

impl Storage for RemotePrefix {
    fn scan(&self, each: &mut dyn FnMut(&[u8]) -> bool) -> io::Result<()> {
        let mut keys = self
            .remote
            .list(&self.prefix)
            .map_err(|e| self.fail("list", e))?;
        keys.sort();
        for chunk in keys.chunks(SCAN_CHUNK) {
            let entries = self
                .remote
                .get_many(chunk)
                .map_err(|e| self.fail("read", e))?;
            // Listed but deleted meanwhile (`None`): nothing to read.
            for bytes in entries.iter().flatten() {
                if !each(bytes) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn append(&self, run: &str, seq: u64, entry: &[u8]) -> io::Result<()> {
        let key = ObjectKey::from(format!("{}/{run}/{seq:08}.json", self.prefix.as_ref()));
        self.remote
            .put(
                &key,
                Bytes::copy_from_slice(entry),
                object_store::PutMode::Overwrite,
            )
            .map(|_| ())
            .map_err(|e| self.fail("write to", e))
    }

    fn remove(&self) -> io::Result<()> {
        let mut keys = self
            .remote
            .list(&self.prefix)
            .map_err(|e| self.fail("list", e))?;
        // Run ids sort by start time, so the last entry belongs to the newest
        // run — the one that committed — and goes last: stopped half-way, the
        // rest still names the committed run and the next run removes it
        // before reading anything.
        keys.sort();
        let last = keys.pop();
        self.remote
            .delete_many(&keys)
            .and_then(|()| self.remote.delete_many(last.as_slice()))
            .map_err(|e| self.fail("remove", e))
    }

    fn location(&self) -> &str {
        &self.shown
    }
}

/// A 64-hex-digit key as its 32 bytes; `None` for anything else.
pub fn key_bytes(key: &str) -> Option<[u8; 32]> {
    hex::decode(key).ok()?.try_into().ok()
}

fn ends_with_newline(path: &Path, len: u64) -> bool {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else {
        return true;
    };
    let mut last = [0u8; 1];
    f.seek(SeekFrom::Start(len - 1))
        .and_then(|_| f.read_exact(&mut last))
        .map_or(true, |_| last[0] == b'\n')
}

fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_parent_dir(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(annotate(e, path, "remove")),
    }
}

fn annotate(e: io::Error, path: &Path, what: &str) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("cannot {what} the push journal {}: {e}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, cursor: &str) -> JournalRecord {
        JournalRecord {
            id: Some(id.into()),
            cursor: Some(cursor.into()),
            key: crate::sinks::http::record_key(id, cursor),
        }
    }

    fn has(set: &HashSet<[u8; 32]>, id: &str, cursor: &str) -> bool {
        set.contains(&key_bytes(&crate::sinks::http::record_key(id, cursor)).unwrap())
    }

    #[test]
    fn an_uncommitted_runs_acknowledgements_survive_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir.path().join("p.state.json"));
        let j = PushJournal::open(&path, "r1", |_| false).unwrap();
        j.record("https://a/x", vec![rec("tx1", "t1"), rec("tx2", "t1")])
            .unwrap();
        j.record("https://b/y", vec![rec("tx3", "t2")]).unwrap();
        // A crash mid-append leaves half a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"run":"r1","sink":"https://a/x","rec"#)
            .unwrap();
        drop(f);

        let j2 = PushJournal::open(&path, "r2", |_| false).unwrap();
        let a = j2.acknowledged("https://a/x");
        assert_eq!(a.len(), 2);
        assert!(has(&a, "tx1", "t1") && has(&a, "tx2", "t1"));
        assert_eq!(j2.acknowledged("https://b/y").len(), 1);
        j2.record("https://a/x", vec![rec("tx4", "t3")]).unwrap();
        let j3 = PushJournal::open(&path, "r3", |_| false).unwrap();
        assert_eq!(j3.acknowledged("https://a/x").len(), 3);
    }

    #[test]
    fn a_journal_naming_a_committed_run_is_removed_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(&dir.path().join("p.state.json"));
        let j = PushJournal::open(&path, "r1", |_| false).unwrap();
        j.record("u", vec![rec("tx1", "t1")]).unwrap();
        let j2 = PushJournal::open(&path, "r2", |r| r == "r1").unwrap();
        assert!(j2.acknowledged("u").is_empty());
        assert!(!path.exists());
        j.retire().unwrap();
    }

    fn memory_store() -> Arc<Remote> {
        let store = Arc::new(object_store::memory::InMemory::new());
        Arc::new(Remote::with_store(store, "memory://test", ObjectKey::from("out")).unwrap())
    }

    #[test]
    fn a_remote_journal_keeps_one_object_per_batch_and_reads_them_back() {
        let r = memory_store();
        let state = r.key("p.state.json");
        let j = PushJournal::open_remote(r.clone(), &state, "r1", |_| false).unwrap();
        assert_eq!(j.location(), "memory://test/out/p.state.json.push-journal");
        j.record("https://a/x", vec![rec("tx1", "t1"), rec("tx2", "t1")])
            .unwrap();
        j.record("https://b/y", vec![rec("tx3", "t2")]).unwrap();
        let keys: Vec<String> = r
            .list(&journal_prefix(&state))
            .unwrap()
            .iter()
            .map(|k| k.as_ref().to_string())
            .collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(keys.contains(&"out/p.state.json.push-journal/r1/00000001.json".to_string()));

        let j2 = PushJournal::open_remote(r.clone(), &state, "r2", |_| false).unwrap();
        let a = j2.acknowledged("https://a/x");
        assert!(has(&a, "tx1", "t1") && has(&a, "tx2", "t1") && a.len() == 2);
        assert_eq!(j2.acknowledged("https://b/y").len(), 1);
        j2.record("https://a/x", vec![rec("tx4", "t3")]).unwrap();
        let j3 = PushJournal::open_remote(r.clone(), &state, "r3", |_| false).unwrap();
        assert_eq!(j3.acknowledged("https://a/x").len(), 3);
        j3.retire().unwrap();
        assert!(r.list(&journal_prefix(&state)).unwrap().is_empty());
    }

    #[test]
    fn a_remote_journal_longer_than_one_read_chunk_is_read_whole_and_in_order() {
        let r = memory_store();
        let state = r.key("p.state.json");
        let n = SCAN_CHUNK + 44;
        let j = PushJournal::open_remote(r.clone(), &state, "r1", |_| false).unwrap();
        for i in 0..n {
            j.record("u", vec![rec(&format!("tx{i}"), "t1")]).unwrap();
        }
        let j2 = PushJournal::open_remote(r.clone(), &state, "r2", |_| false).unwrap();
        let a = j2.acknowledged("u");
        assert_eq!(a.len(), n);
        assert!((0..n).all(|i| has(&a, &format!("tx{i}"), "t1")));
        // A committed run's entry after the first chunk still makes the whole journal stale.
        j2.record("u", vec![rec("late", "t2")]).unwrap();
        let j3 = PushJournal::open_remote(r.clone(), &state, "r3", |run| run == "r2").unwrap();
        assert!(j3.acknowledged("u").is_empty());
        assert!(r.list(&journal_prefix(&state)).unwrap().is_empty());
    }

    #[test]
    fn a_remote_journal_naming_a_committed_run_is_removed_unread() {
        let r = memory_store();
        let state = r.key("p.state.json");
        let j = PushJournal::open_remote(r.clone(), &state, "r1", |_| false).unwrap();
        j.record("u", vec![rec("tx1", "t1")]).unwrap();
        let j2 = PushJournal::open_remote(r.clone(), &state, "r2", |_| false).unwrap();
        j2.record("u", vec![rec("tx2", "t1")]).unwrap();
        // r2 committed, then stopped before retiring the journal.
        let j3 = PushJournal::open_remote(r.clone(), &state, "r3", |run| run == "r2").unwrap();
        assert!(j3.acknowledged("u").is_empty());
        assert!(r.list(&journal_prefix(&state)).unwrap().is_empty());
        // Another pipeline's journal beside it is not touched.
        let other = r.key("q.state.json");
        let q = PushJournal::open_remote(r.clone(), &other, "r9", |_| false).unwrap();
        q.record("u", vec![rec("tx1", "t1")]).unwrap();
        j3.record("u", vec![rec("tx5", "t1")]).unwrap();
        PushJournal::open_remote(r.clone(), &state, "r4", |run| run == "r3").unwrap();
        assert!(r.list(&journal_prefix(&state)).unwrap().is_empty());
        assert_eq!(r.list(&journal_prefix(&other)).unwrap().len(), 1);
    }
}
