//! The `expense-sync` binary: parse the command line, hand over to the library.

fn main() {
    tune_malloc();
    std::process::exit(expense_sync::cli::main());
}

/// Fixes glibc malloc's thresholds so peak memory stays flat on long exports.
///
/// By default glibc raises its mmap threshold to the size of the largest
/// mmapped block freed so far (up to 32 MiB). After the first ~1 MB page body
/// is freed, every later body comes from the heap instead, and bodies, decoded
/// records and Parquet buffers of different lifetimes interleave there: the
/// heap fragments and RSS grows well past what is live. A fixed threshold keeps
/// large, short-lived buffers in their own mappings, returned on free; a fixed
/// trim threshold gives freed heap tops back soon.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    // Setting either value also turns off glibc's dynamic adjustment of both.
    // A value the user set in the environment (glibc reads it before main) wins.
    let set = |param, env: &str, value| {
        if std::env::var_os(env).is_none() && std::env::var_os("GLIBC_TUNABLES").is_none() {
            // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
            unsafe { libc::mallopt(param, value) };
        }
    };
    set(libc::M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", 256 * 1024);
    set(
        libc::M_TRIM_THRESHOLD,
        "MALLOC_TRIM_THRESHOLD_",
        1024 * 1024,
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}
