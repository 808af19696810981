//! Shared plumbing for text sinks (CSV, IIF): a staged file written through a
//! SHA-256 and byte counter, optionally gzip-compressed, and the manifest
//! (`{file}.manifest.json`) that is staged beside it and committed with it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Companion, SinkContext, SinkError, stage};
use crate::fsutil::{StagedFile, sync_file};

/// Whole-file compression for text outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileCompression {
    /// Plain text (the default).
    #[default]
    None,
    /// gzip (RFC 1952); name the file `….gz`.
    Gzip,
}

/// Counts the bytes that reach the file and hashes them when a manifest needs the digest.
#[derive(Debug)]
pub struct Hashed {
    file: File,
    hasher: Option<Sha256>,
    bytes: u64,
}

impl Write for Hashed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The byte stream of a text output: plain or gzip, always hashed.
#[derive(Debug)]
pub enum Output {
    /// Uncompressed.
    Plain(Hashed),
    /// gzip-compressed.
    Gzip(flate2::write::GzEncoder<Hashed>),
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Plain(h) => h.write(buf),
            Output::Gzip(g) => g.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Plain(h) => h.flush(),
            Output::Gzip(g) => g.flush(),
        }
    }
}

/// What a finished output file holds: size and digest of the bytes on disk.
#[derive(Debug, Clone)]
pub struct Written {
    /// Bytes on disk (compressed, when gzip).
    pub bytes: u64,
    /// Hex SHA-256 of the bytes on disk (when the output was created with `hash`).
    pub sha256: Option<String>,
}

impl Output {
    /// Starts the staged file for `path`; `hash` computes the SHA-256 a manifest reports.
    pub fn create(
        kind: &str,
        path: &Path,
        ctx: &SinkContext,
        compression: FileCompression,
        hash: bool,
    ) -> Result<(StagedFile, Output), SinkError> {
        let (staged, file) = stage(kind, path, ctx)?;
        let hashed = Hashed {
            file,
            hasher: hash.then(Sha256::new),
            bytes: 0,
        };
        let out = match compression {
            FileCompression::None => Output::Plain(hashed),
            FileCompression::Gzip => Output::Gzip(flate2::write::GzEncoder::new(
                hashed,
                flate2::Compression::default(),
            )),
        };
        Ok((staged, out))
    }

    /// Ends compression, fsyncs, and returns the size and digest.
    pub fn finish(self, temp_path: &Path) -> io::Result<Written> {
        let mut hashed = match self {
            Output::Plain(h) => h,
            Output::Gzip(g) => g.finish()?,
        };
        hashed.flush()?;
        sync_file(&hashed.file, temp_path)?;
        Ok(Written {
            bytes: hashed.bytes,
            sha256: hashed.hasher.map(|h| hex(&h.finalize())),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `{file}.manifest.json`: what a reader can check a delivered file against.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// The data file's name (same directory).
    pub file: String,
    /// `csv` or `iif`.
    pub format: &'static str,
    /// Compression of the data file.
    pub compression: &'static str,
    /// Data rows (CSV) or transactions (IIF).
    pub rows: u64,
    /// Size of the data file in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the data file's bytes.
    pub sha256: String,
    /// Sums of every amount column, per currency (`"(none)"` when there is no currency column).
    pub totals: BTreeMap<String, BTreeMap<String, Decimal>>,
    /// Pipeline name.
    pub pipeline: String,
    /// Run that wrote the file.
    pub run_id: String,
    /// Cursor window the run covered.
    pub window_start: Option<chrono::DateTime<chrono::Utc>>,
    /// Exclusive end of the window.
    pub window_end: Option<chrono::DateTime<chrono::Utc>>,
}

/// The manifest's path: the data file's path with `.manifest.json` appended.
pub fn manifest_path(data: &Path) -> PathBuf {
    let mut name = data
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".manifest.json");
    data.with_file_name(name)
}

/// Stages the manifest for `data` (written and fsynced; committed by the runner with the data file).
pub fn stage_manifest(
    kind: &str,
    data: &StagedFile,
    manifest: &Manifest,
    ctx: &SinkContext,
) -> Result<Companion, SinkError> {
    let path = manifest_path(&data.final_path);
    let (staged, mut out) = Output::create(kind, &path, ctx, FileCompression::None, false)?;
    let mut text = serde_json::to_vec_pretty(manifest).expect("a manifest always serializes");
    text.push(b'\n');
    let written = out
        .write_all(&text)
        .and_then(|_| out.finish(&staged.temp_path));
    match written {
        Ok(w) => Ok(Companion {
            kind: "manifest",
            staged,
            rows: 0,
            bytes: w.bytes,
        }),
        Err(e) => {
            staged.discard();
            Err(SinkError::io(
                &super::label(kind, &path),
                "cannot write the manifest",
                &e,
            ))
        }
    }
}

/// The file name part of a path, for manifests.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
