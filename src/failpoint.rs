//! Crash injection for tests: with `EXPENSE_SYNC_FAILPOINT=<name>` set, a
//! debug build aborts the process at that point, as a power cut or SIGKILL
//! would, so tests can prove recovery from every step of the commit protocol.
//! Release builds compile this to nothing.

/// Aborts the process if the failpoint `name` is armed (debug builds only).
#[inline]
pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("EXPENSE_SYNC_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
