//! Durations in pipeline files are written the human way: "500ms", "30s", "2m".

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Deserializes "30s"-style strings (or a bare number of seconds).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Secs(u64),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => humantime::parse_duration(t.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{t}` is not a duration ({e}); write it like \"500ms\", \"30s\" or \"5m\""
            ))
        }),
    }
}

/// Serializes as a humantime string.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}
