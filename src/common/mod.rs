//! Primitives every component's configuration uses: problems found in a
//! pipeline file, secret references, durations, and `type`-tagged sections.
//! A leaf: nothing here imports from the rest of the crate, so components can
//! use it without depending on the config module that collects them all.

pub mod duration;
mod secret;

pub use secret::SecretRef;

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
