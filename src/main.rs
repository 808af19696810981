//! The `expense-sync` binary: parse the command line, hand over to the library.

/// Every record is a tree of small allocations built and dropped per page, on
/// several threads: mimalloc's per-thread free lists cost far less than
/// glibc's arenas and consolidation there (see bench/RESULTS.md, round 3).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(expense_sync::cli::main());
}
