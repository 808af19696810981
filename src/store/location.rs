//! Where a run's committed outputs are — a local directory or an object-store
//! prefix — for bookkeeping files committed with them (the write-back plans),
//! which a later step lists, reads and removes. The commit itself goes
//! through `state::Target`; this is only what comes after it.

use std::io::{self, BufRead, Seek};
use std::path::PathBuf;
use std::sync::Arc;

use super::Remote;

/// The committed output location of a pipeline.
#[derive(Debug, Clone)]
pub enum OutputLocation {
    /// A local output directory.
    Dir(PathBuf),
    /// The output prefix in an object store; `spool` is a local directory
    /// where objects are downloaded before they are read.
    Store {
        /// The store, opened at the output prefix.
        remote: Arc<Remote>,
        /// Local scratch space for downloads.
        spool: PathBuf,
    },
}

fn store_error(e: super::StoreError) -> io::Error {
    io::Error::other(e.to_string())
}

impl OutputLocation {
    /// Names of the files directly in the location (not in sub-folders) that
    /// `keep` accepts, sorted; a missing directory has none.
    pub fn list(&self, keep: impl Fn(&str) -> bool) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = match self {
            OutputLocation::Dir(dir) => {
                let entries = match std::fs::read_dir(dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("cannot list {}: {e}", dir.display()),
                        ));
                    }
                };
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| keep(n))
                    .collect()
            }
            OutputLocation::Store { remote, .. } => remote
                .list_here(remote.prefix())
                .map_err(store_error)?
                .into_iter()
                .filter_map(|k| k.filename().map(str::to_string))
                .filter(|n| keep(n))
                .collect(),
        };
        names.sort();
        Ok(names)
    }

    /// Opens the file `name` for reading; an object is first streamed into an
    /// unnamed temporary file in the spool, so it is never held in memory.
    pub fn open(&self, name: &str) -> io::Result<Box<dyn BufRead + Send>> {
        let file = match self {
            OutputLocation::Dir(dir) => std::fs::File::open(dir.join(name))?,
            OutputLocation::Store { remote, spool } => {
                std::fs::create_dir_all(spool)?;
                let mut f = tempfile::tempfile_in(spool)?;
                let key = remote.key(name);
                if remote
                    .download(&key, &mut f)
                    .map_err(store_error)?
                    .is_none()
                {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{} does not exist", remote.url(&key)),
                    ));
                }
                f.rewind()?;
                f
            }
        };
        Ok(Box::new(io::BufReader::new(file)))
    }

    /// Removes the file `name`; one already gone is not an error.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match self {
            OutputLocation::Dir(dir) => {
                let path = dir.join(name);
                match std::fs::remove_file(&path) {
                    Ok(()) => crate::fsutil::sync_parent_dir(&path),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e),
                }
            }
            OutputLocation::Store { remote, .. } => {
                remote.delete(&remote.key(name)).map_err(store_error)
            }
        }
    }

    /// How the file `name` is shown to people: its path or object URL.
    pub fn shown(&self, name: &str) -> String {
        match self {
            OutputLocation::Dir(dir) => dir.join(name).display().to_string(),
            OutputLocation::Store { remote, .. } => remote.url(&remote.key(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use object_store::PutMode;

    #[test]
    fn a_store_location_lists_only_its_own_level_and_reads_and_removes_objects() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let remote = Arc::new(
            Remote::with_store(store, "memory://test", super::super::ObjectKey::from("out"))
                .unwrap(),
        );
        for (k, v) in [
            ("p.r1.writeback.jsonl", "a\nb\n"),
            ("p.r2.writeback.jsonl", "c\n"),
            ("csv/p.r3.writeback.jsonl", "not at this level\n"),
        ] {
            remote
                .put(&remote.key(k), Bytes::from(v), PutMode::Overwrite)
                .unwrap();
        }
        let spool = tempfile::tempdir().unwrap();
        let loc = OutputLocation::Store {
            remote: remote.clone(),
            spool: spool.path().to_path_buf(),
        };
        let names = loc.list(|n| n.ends_with(".writeback.jsonl")).unwrap();
        assert_eq!(names, ["p.r1.writeback.jsonl", "p.r2.writeback.jsonl"]);
        let lines: Vec<String> = loc
            .open(&names[0])
            .unwrap()
            .lines()
            .map(Result::unwrap)
            .collect();
        assert_eq!(lines, ["a", "b"]);
        loc.remove(&names[0]).unwrap();
        loc.remove(&names[0]).unwrap();
        assert_eq!(loc.list(|_| true).unwrap(), ["p.r2.writeback.jsonl"]);
        assert_eq!(
            loc.shown("p.r2.writeback.jsonl"),
            "memory://test/out/p.r2.writeback.jsonl"
        );
        let err = loc.open("gone.jsonl").err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("memory://test/out/gone.jsonl"));
    }
}
