//! Crash injection for tests: with `EXPENSE_SYNC_FAILPOINT=<name>` set, a
//! debug build aborts the process at that point, as a power cut or SIGKILL
//! would, so tests can prove recovery from every step of the commit protocol.
//! `<name>#<n>` aborts at the n-th time the point is reached instead of the
//! first (e.g. the second state save of a commit). Release builds compile
//! this to nothing.

/// Aborts the process if the failpoint `name` is armed (debug builds only).
#[inline]
pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    if let Ok(armed) = std::env::var("EXPENSE_SYNC_FAILPOINT") {
        let (point, nth) = match armed.rsplit_once('#') {
            Some((p, n)) => (p, n.parse::<u64>().unwrap_or(1)),
            None => (armed.as_str(), 1),
        };
        if point == name {
            use std::sync::atomic::{AtomicU64, Ordering};
            // Only one point is armed per process, so one counter suffices.
            static HITS: AtomicU64 = AtomicU64::new(0);
            if HITS.fetch_add(1, Ordering::SeqCst) + 1 == nth {
                eprintln!("failpoint {armed}: aborting");
                std::process::abort();
            }
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
