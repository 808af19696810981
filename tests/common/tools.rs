//! Test tools beyond Rust (a real S3 server, a Kubernetes schema validator):
//! installed by the project's own `.ci/setup.sh` into `.ci/venv` the first
//! time a test needs them, so `cargo test` stays the one command to run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

/// The checkout's root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool in `.ci/venv/bin`, running `.ci/setup.sh` first when it is missing.
pub fn venv_tool(name: &str) -> PathBuf {
    ci_tool(&format!("venv/bin/{name}"))
}

/// A file `.ci/setup.sh` installs (`rel` is relative to `.ci`), running the
/// script first when it is missing. Test binaries run in parallel, so the
/// script runs under `flock`.
pub fn ci_tool(rel: &str) -> PathBuf {
    let path = repo_root().join(".ci").join(rel);
    if !path.is_file() {
        static SETUP: Once = Once::new();
        SETUP.call_once(run_setup);
    }
    assert!(
        path.is_file(),
        "{rel} is still missing from {} after .ci/setup.sh; run `bash .ci/setup.sh` and read its output",
        repo_root().join(".ci").display()
    );
    path
}

fn run_setup() {
    let root = repo_root();
    let lock = root.join(".ci/setup.lock");
    let out = Command::new("flock")
        .arg(&lock)
        .arg("bash")
        .arg(root.join(".ci/setup.sh"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `flock {} bash .ci/setup.sh`: {e}",
                lock.display()
            )
        });
    assert!(
        out.status.success(),
        ".ci/setup.sh failed ({}): it installs the test tools from PyPI into .ci/venv and from npm into .ci/node_modules (needs python3 with venv, npm, and access to both registries)\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `path` runs (for tools given by environment variables).
pub fn runs(path: &Path) -> bool {
    Command::new(path)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A loopback port free right now (a parallel test may still take it first:
/// servers started on it retry with a fresh one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
