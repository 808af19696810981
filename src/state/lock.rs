//! One run per pipeline at a time: an exclusive `flock` on a lock file next
//! to the state file. The kernel releases it when the process dies, even by
//! SIGKILL, so a crash never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Held while a run of the pipeline is in progress; released on drop.
#[derive(Debug)]
pub struct PipelineLock {
    _file: File,
    path: PathBuf,
}

impl PipelineLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("another run of pipeline `{pipeline}` is in progress (lock {} held{holder}); wait for it to finish, or stop it", path.display())]
    Held {
        /// Pipeline name.
        pipeline: String,
        /// Lock file.
        path: PathBuf,
        /// Who holds it, as written in the file.
        holder: String,
    },
    /// The lock file could not be opened.
    #[error("cannot open lock file {}: {source}", path.display())]
    Io {
        /// Lock file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}

/// Takes the pipeline's lock without waiting.
pub fn acquire(path: &Path, pipeline: &str) -> Result<PipelineLock, LockError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| LockError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| LockError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .map(|s| format!(" by {s}"))
                .unwrap_or_default();
            return Err(LockError::Held {
                pipeline: pipeline.to_string(),
                path: path.to_path_buf(),
                holder,
            });
        }
        Err(TryLockError::Error(source)) => {
            return Err(LockError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    // Who holds it, for the message the next run prints; not used for locking.
    let _ = file.set_len(0);
    let _ = writeln!(
        file,
        "pid {} since {}",
        std::process::id(),
        chrono::Utc::now().to_rfc3339()
    );
    Ok(PipelineLock {
        _file: file,
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_first_releases() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let first = acquire(&p, "x").unwrap();
        let err = acquire(&p, "x").unwrap_err();
        assert!(
            err.to_string()
                .contains("another run of pipeline `x` is in progress"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        acquire(&p, "x").unwrap();
    }
}
