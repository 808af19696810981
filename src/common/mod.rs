//! Primitives every component's configuration uses: problems found in a
//! pipeline file, secret references, durations, and `type`-tagged sections.
//! A leaf: nothing here imports from the rest of the crate, so components can
//! use it without depending on the config module that collects them all.

pub mod connection;
pub mod duration;
pub mod instant;
pub mod keys;
pub mod prefetch;
mod secret;

pub use secret::SecretRef;

use std::path::{Path, PathBuf};

/// One thing wrong in a pipeline file: the key and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `source.page_size` or `sinks[1].delimiter`.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
    /// Where the value came from: `file:line:column`, or the environment
    /// variable that set it; `None` when it cannot be pinned down.
    pub origin: Option<String>,
}

impl Problem {
    /// A problem at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            origin: None,
        }
    }
}

/// Deserializes the settings of a section chosen by `type` (`[source]`,
/// `[[sinks]]`) from its table with `type` removed. A derived internally
/// tagged enum would buffer the table and lose the key of any error inside
/// it, so the inner key is carried in the message as "`key`: …", which
/// `config::load` turns back into a full key.
pub fn inner_table<T: serde::de::DeserializeOwned, E: serde::de::Error>(
    table: toml::Table,
) -> Result<T, E> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().message().to_string();
        // Unknown and missing fields name their key already.
        if path == "."
            || message.starts_with("unknown field")
            || message.starts_with("missing field")
        {
            E::custom(message)
        } else {
            E::custom(format!("`{path}`: {message}"))
        }
    })
}

/// A pipeline file that cannot be used, with every problem found in it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render(.file, .problems))]
pub struct ConfigError {
    /// The file that was read.
    pub file: PathBuf,
    /// What is wrong, key by key.
    pub problems: Vec<Problem>,
}

impl ConfigError {
    /// An error with a single problem.
    pub fn single(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            problems: vec![Problem::new(key, message)],
        }
    }
}

fn render(file: &Path, problems: &[Problem]) -> String {
    let mut s = format!("invalid pipeline file {}:", file.display());
    for p in problems {
        match &p.origin {
            Some(origin) => s.push_str(&format!("\n  - {origin}: key `{}`: {}", p.key, p.message)),
            None => s.push_str(&format!("\n  - key `{}`: {}", p.key, p.message)),
        }
    }
    s
}
