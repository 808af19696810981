//! TEMPORARY interface stub in main; the real module lands from branch `sinks`.
use crate::config::Problem;
use crate::record::Record;
use crate::row::{Row, Schema};
use serde::Deserialize;
use std::sync::Arc;

/// Column spec.
#[derive(Debug, Clone, Deserialize)]
pub struct ColumnSpec {
    /// name
    pub name: String,
    /// path
    pub path: Option<String>,
}
/// Projector.
pub struct Projector {
    schema: Arc<Schema>,
}
impl Projector {
    /// new
    pub fn new(_specs: &[ColumnSpec]) -> Result<Projector, Vec<Problem>> {
        Ok(Projector {
            schema: Arc::new(Schema::default()),
        })
    }
    /// schema
    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }
    /// project
    pub fn project(&self, _r: &Record) -> Result<Row, RecordError> {
        Ok(Row { cells: vec![] })
    }
}
/// RecordError.
#[derive(Debug, Clone)]
pub struct RecordError {
    /// id
    pub record_id: String,
    /// col
    pub column: String,
    /// reason
    pub reason: String,
}
/// defaults
pub fn default_columns(_r: &str) -> Option<Vec<ColumnSpec>> {
    None
}
