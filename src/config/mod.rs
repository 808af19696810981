//! Pipeline file model, loading and validation.

use std::path::PathBuf;

/// One thing wrong in a pipeline file: the key and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `source.page_size` or `sinks[1].delimiter`.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl Problem {
    /// A problem at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

/// A pipeline file that cannot be used, with every problem found in it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render(.file, .problems))]
pub struct ConfigError {
    /// The file that was read (or `<command line>`).
    pub file: PathBuf,
    /// What is wrong, key by key.
    pub problems: Vec<Problem>,
}

fn render(file: &std::path::Path, problems: &[Problem]) -> String {
    let mut s = format!("invalid pipeline file {}:", file.display());
    for p in problems {
        s.push_str(&format!("\n  - key `{}`: {}", p.key, p.message));
    }
    s
}
