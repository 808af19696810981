//! Careful file output: write under a temporary name beside the final path,
//! flush and fsync, then rename into place and fsync the directory, so a
//! reader never sees a half-written file at a final path.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Prefix of every temporary file this tool writes; used to find leftovers.
pub const TEMP_PREFIX: &str = ".expense-sync-";

/// The temporary name used for `final_path` during run `run_id` (same directory, hidden).
pub fn temp_path_for(final_path: &Path, run_id: &str) -> PathBuf {
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    final_path.with_file_name(format!("{TEMP_PREFIX}{run_id}-{name}.tmp"))
}

/// A file being written under its temporary name.
#[derive(Debug)]
pub struct StagedFile {
    /// Where the bytes are being written now.
    pub temp_path: PathBuf,
    /// Where they will appear on commit.
    pub final_path: PathBuf,
}

impl StagedFile {
    /// Creates the temporary file (and missing parent directories) for `final_path`.
    pub fn create(final_path: &Path, run_id: &str) -> io::Result<(Self, File)> {
        Self::create_with_mode(final_path, run_id, None)
    }

    /// Like [`StagedFile::create`], creating the temporary file with Unix `mode`
    /// (e.g. `0o600` for credentials) so it is never readable by others, not even briefly.
    pub fn create_with_mode(
        final_path: &Path,
        run_id: &str,
        mode: Option<u32>,
    ) -> io::Result<(Self, File)> {
        if let Some(parent) = final_path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| annotate(e, parent, "create directory"))?;
        }
        let temp_path = temp_path_for(final_path, run_id);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        if let Some(mode) = mode {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let file = options
            .open(&temp_path)
            .map_err(|e| annotate(e, &temp_path, "create"))?;
        Ok((
            Self {
                temp_path,
                final_path: final_path.to_path_buf(),
            },
            file,
        ))
    }

    /// Moves the finished, fsynced temporary file into place and makes the rename durable.
    pub fn commit(&self) -> io::Result<()> {
        fs::rename(&self.temp_path, &self.final_path)
            .map_err(|e| annotate(e, &self.final_path, "rename into place"))?;
        sync_parent_dir(&self.final_path)
    }

    /// Removes the temporary file (used when a run fails before commit).
    pub fn discard(&self) {
        let _ = fs::remove_file(&self.temp_path);
    }
}

/// Moves `from` to `to` only if nothing exists at `to`: a committed file is
/// never replaced. Fails with [`io::ErrorKind::AlreadyExists`] when `to` exists.
///
/// Linux uses `renameat2(RENAME_NOREPLACE)`; where the file system or OS
/// lacks it, a hard link to `to` (which also refuses an existing name)
/// followed by unlinking `from`. A crash between those two steps leaves both
/// names on one file; [`same_file`] lets recovery recognise that.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte")
            })
        };
        let (old, new) = (c(from)?, c(to)?);
        // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                old.as_ptr(),
                libc::AT_FDCWD,
                new.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // Not supported by this kernel or file system: fall back below.
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => {}
            _ => return Err(err),
        }
    }
    fs::hard_link(from, to)?;
    fs::remove_file(from)
}

/// Whether `a` and `b` are names of one file (same device and inode).
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (a, b);
        false
    }
}

/// Flushes a file's data and metadata to disk.
pub fn sync_file(file: &File, path: &Path) -> io::Result<()> {
    file.sync_all().map_err(|e| annotate(e, path, "fsync"))
}

/// fsyncs the directory holding `path`, so a rename in it survives a crash.
pub fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| annotate(e, dir, "fsync directory"))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, bytes: &[u8], run_id: &str) -> io::Result<()> {
    write_atomic_with_mode(path, bytes, run_id, None)
}

/// [`write_atomic`] with the file created with Unix `mode` (e.g. `0o600`).
pub fn write_atomic_with_mode(
    path: &Path,
    bytes: &[u8],
    run_id: &str,
    mode: Option<u32>,
) -> io::Result<()> {
    use std::io::Write;
    let (staged, mut file) = StagedFile::create_with_mode(path, run_id, mode)?;
    let result = file
        .write_all(bytes)
        .map_err(|e| annotate(e, &staged.temp_path, "write"))
        .and_then(|_| sync_file(&file, &staged.temp_path))
        .and_then(|_| staged.commit());
    if result.is_err() {
        staged.discard();
    }
    result
}

/// Adds the path and the operation to an I/O error so the user knows where it happened.
pub fn annotate(err: io::Error, path: &Path, what: &str) -> io::Error {
    io::Error::new(
        err.kind(),
        format!("cannot {what} {}: {err}", path.display()),
    )
}

/// Creates `dir` if needed and proves a file can be created in it (a probe
/// file is written and removed), so an unwritable output directory is found
/// before a run fetches anything.
pub fn ensure_writable_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    probe(dir)
}

/// Like [`ensure_writable_dir`] but creates nothing: the nearest existing
/// ancestor of `dir` must be a directory that accepts new files.
pub fn check_writable_dir(dir: &Path) -> io::Result<()> {
    let mut at = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    loop {
        match fs::metadata(at) {
            Ok(m) if m.is_dir() => return probe(at),
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is a file, not a directory", at.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match at.parent() {
                Some(p) if !p.as_os_str().is_empty() => at = p,
                _ => at = Path::new("."),
            },
            Err(e) => return Err(e),
        }
    }
}

fn probe(dir: &Path) -> io::Result<()> {
    let path = dir.join(format!(".expense-sync-write-test-{}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    fs::remove_file(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_file_is_invisible_until_commit() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let final_path = dir.path().join("sub/out.csv");
        let (staged, mut f) = StagedFile::create(&final_path, "r1").unwrap();
        f.write_all(b"a,b\n").unwrap();
        sync_file(&f, &staged.temp_path).unwrap();
        assert!(!final_path.exists());
        staged.commit().unwrap();
        assert_eq!(fs::read(&final_path).unwrap(), b"a,b\n");
        assert!(!staged.temp_path.exists());
    }

    #[test]
    fn rename_noreplace_refuses_to_replace_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, "new").unwrap();
        fs::write(&b, "committed").unwrap();
        let err = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&b).unwrap(), b"committed");
        assert_eq!(fs::read(&a).unwrap(), b"new");
        fs::remove_file(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert_eq!(fs::read(&b).unwrap(), b"new");
        assert!(!a.exists());
    }

    #[test]
    fn same_file_recognises_two_names_of_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        fs::write(&a, "x").unwrap();
        fs::hard_link(&a, &b).unwrap();
        fs::write(&c, "x").unwrap();
        assert!(same_file(&a, &b));
        assert!(!same_file(&a, &c));
    }

    #[test]
    fn write_atomic_replaces_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        write_atomic(&p, b"one", "a").unwrap();
        write_atomic(&p, b"two", "b").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }
}
