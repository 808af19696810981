//! The `expense-sync` binary: parse the command line, hand over to the library.

fn main() {
    std::process::exit(expense_sync::cli::main());
}
