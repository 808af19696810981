//! The default columns of the call log, for pipelines that list no `[[columns]]`.
//!
//! Paths follow the call-log record (`CallLogRecord` in RingCentral's
//! OpenAPI): `from`/`to` are the parties, `extension` the account's extension
//! the record belongs to (absent for some company-level records).

use crate::transforms::{ColumnSpec, TypeName};

/// The default columns for `resource` (`call-log`).
pub fn default_columns(resource: &str) -> Option<Vec<ColumnSpec>> {
    (resource == "call-log").then(call_log)
}

fn call_log() -> Vec<ColumnSpec> {
    let s = ColumnSpec::path;
    vec![
        s("call_id", "id"),
        s("session_id", "sessionId"),
        // RingCentral writes UTC with a `Z`: the column stays UTC.
        ColumnSpec::path("start_time_utc", "startTime").typed(TypeName::Timestamp),
        ColumnSpec::path("duration_seconds", "duration").typed(TypeName::Integer),
        s("direction", "direction"),
        s("type", "type"),
        s("result", "result"),
        s("from_number", "from.phoneNumber"),
        s("from_name", "from.name"),
        s("from_extension", "from.extensionNumber"),
        s("to_number", "to.phoneNumber"),
        s("to_name", "to.name"),
        s("to_extension", "to.extensionNumber"),
        s("extension_id", "extension.id"),
    ]
}
