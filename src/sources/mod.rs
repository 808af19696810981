//! Sources: where records come from. A source streams pages of records into
//! a bounded channel and knows nothing of transforms or sinks.

pub mod fyle;
pub mod ringcentral;

use serde::Deserialize;

use crate::config::Problem;

/// Source types a pipeline file may name.
pub const SOURCE_TYPES: [&str; 1] = ["fyle"];

/// `[source]`: which system to read and what to select, chosen by `type`.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// `type = "fyle"`: the Fyle platform API.
    Fyle(fyle::FyleSourceConfig),
}

impl<'de> Deserialize<'de> for SourceConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut table = toml::Table::deserialize(deserializer)?;
        match table.remove("type") {
            Some(toml::Value::String(kind)) if kind == "fyle" => {
                crate::config::inner_table(table).map(SourceConfig::Fyle)
            }
            Some(toml::Value::String(other)) => {
                Err(D::Error::unknown_variant(&other, &SOURCE_TYPES))
            }
            Some(other) => Err(D::Error::custom(format!(
                "`type`: expected a string such as \"fyle\", found {other}"
            ))),
            None => Err(D::Error::missing_field("type")),
        }
    }
}

impl SourceConfig {
    /// Checks the section; keys are prefixed with `prefix`.
    pub fn validate(&self, prefix: &str) -> Vec<Problem> {
        match self {
            SourceConfig::Fyle(c) => c.validate(prefix),
        }
    }

    /// Expands presets into filters and cursor (part of validation).
    pub fn apply_presets(&mut self, prefix: &str) -> Vec<Problem> {
        match self {
            SourceConfig::Fyle(c) => c.apply_presets(prefix),
        }
    }

    /// The resource name, used for default columns.
    pub fn resource(&self) -> &str {
        match self {
            SourceConfig::Fyle(c) => &c.resource,
        }
    }
}
