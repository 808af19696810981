//! Sources: where records come from. A source streams pages of records into
//! a bounded channel and knows nothing of transforms or sinks.

pub mod fyle;

use serde::Deserialize;

use crate::config::Problem;

/// `[source]`: which system to read and what to select.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
    /// The Fyle platform API.
    Fyle(fyle::FyleSourceConfig),
}

impl SourceConfig {
    /// Checks the section; keys are prefixed with `prefix`.
    pub fn validate(&self, prefix: &str) -> Vec<Problem> {
        match self {
            SourceConfig::Fyle(c) => c.validate(prefix),
        }
    }

    /// The resource name, used for default columns.
    pub fn resource(&self) -> &str {
        match self {
            SourceConfig::Fyle(c) => &c.resource,
        }
    }
}
