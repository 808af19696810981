//! TEMPORARY interface stub in main; the real module lands from branch `sinks`.
use crate::config::Problem;
use crate::row::{Batch, Schema};
use serde::Deserialize;
use std::sync::Arc;
/// Sink.
pub trait Sink: Send {
    /// write
    fn write(&mut self, batch: &Batch) -> Result<(), SinkError>;
    /// finish
    fn finish(self: Box<Self>) -> Result<SinkOutput, SinkError>;
    /// abort
    fn abort(self: Box<Self>);
}
/// out
#[derive(Debug)]
pub struct SinkOutput {
    /// k
    pub kind: &'static str,
    /// s
    pub staged: crate::fsutil::StagedFile,
    /// r
    pub rows: u64,
    /// b
    pub bytes: u64,
}
/// cfg
#[derive(Debug, Clone, Deserialize)]
pub struct SinkConfig {
    /// p
    pub path: String,
}
impl SinkConfig {
    /// k
    pub fn kind(&self) -> &'static str {
        "x"
    }
    /// p
    pub fn path_template(&self) -> &str {
        &self.path
    }
    /// v
    pub fn validate(&self, _p: &str) -> Vec<Problem> {
        vec![]
    }
    /// b
    pub fn build(&self, _ctx: &SinkContext, _s: Arc<Schema>) -> Result<Box<dyn Sink>, SinkError> {
        unimplemented!()
    }
}
/// ctx
#[derive(Debug, Clone)]
pub struct SinkContext {
    /// p
    pub pipeline: String,
    /// r
    pub run_id: String,
    /// s
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// o
    pub output_dir: std::path::PathBuf,
    /// w
    pub window_start: Option<chrono::DateTime<chrono::Utc>>,
    /// w
    pub window_end: Option<chrono::DateTime<chrono::Utc>>,
}
/// err
#[derive(Debug, thiserror::Error)]
#[error("{sink}: {message}")]
pub struct SinkError {
    /// s
    pub sink: String,
    /// m
    pub message: String,
}
impl SinkContext {
    /// t
    pub fn temp_tag(&self) -> String {
        format!("{}.{}", self.pipeline, self.run_id)
    }
}
/// r
pub fn render_path(t: &str, _c: &SinkContext) -> std::path::PathBuf {
    t.into()
}
