//! Sources: where records come from. A source streams pages of records into
//! a bounded channel and knows nothing of transforms or sinks.
//!
//! The runner knows only the [`Source`] trait: each platform has its config
//! (a variant of [`SourceConfig`]) and a `build` step returning
//! `Box<dyn Source>`. Adding a source is one folder plus one registration
//! line in [`SourceConfig`].

pub mod exported;
pub mod fyle;
pub mod ringcentral;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::common::Problem;
use crate::error::Error;
use crate::fsutil::StagedFile;
use crate::http::{HttpClient, ServerClock};

pub use exported::ExportedIds;
pub use fyle::WriteBackSummary as AfterCommitSummary;

/// The half-open time range `[from, to)` of the cursor field a run covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Inclusive lower bound; `None` means from the beginning.
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// Exclusive upper bound; `None` means no bound.
    pub to: Option<chrono::DateTime<chrono::Utc>>,
}

/// One page of records, in the source's order (Fyle: cursor, id; RingCentral: newest first).
#[derive(Debug)]
pub struct Page {
    /// Records of the page, duplicates from earlier pages removed.
    pub records: Vec<crate::record::Record>,
    /// Matching records in the whole window, as the server counted them on the first page.
    pub total: Option<u64>,
    /// The page as the server sent it, when `records` hold only the fields the run reads.
    pub source: Option<crate::extract::PageSource>,
}

impl Page {
    /// A page of records parsed in full, as any source can build it.
    pub fn new(records: Vec<crate::record::Record>, total: Option<u64>) -> Self {
        Self {
            records,
            total,
            source: None,
        }
    }
}

/// What the pager did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PagerStats {
    /// Requests that returned a page.
    pub pages: u64,
    /// Records passed on.
    pub records: u64,
    /// Records seen twice at page boundaries and dropped.
    pub duplicates: u64,
}

/// A system records are read from, opened for one run.
pub trait Source: Send + Sync {
    /// The record field the window and the watermark follow (e.g. `updated_at`).
    fn cursor(&self) -> &str;

    /// How far behind the server's clock a window must end, so that records
    /// still being stamped are not skipped.
    fn safety_lag(&self) -> Duration;

    /// Whether a rerun of the same window yields the same records in the same
    /// order (pushes need it to cut the same batches after a crash).
    fn reproducible_order(&self) -> bool;

    /// Switches to a reproducible order, possibly slower (e.g. sequential paging).
    fn make_reproducible(&mut self);

    /// Authenticates; a failure here leaves nothing on disk.
    fn open(&self) -> BoxFuture<'_, Result<(), Error>>;

    /// Token grants made so far, for the run summary.
    fn grants(&self) -> u64;

    /// Reads the server's clock just before the window is planned; `None`
    /// when the server does not tell (windows then follow this machine's clock).
    fn server_clock(&self) -> BoxFuture<'_, Result<Option<ServerClock>, Error>>;

    /// The most recent server clock reading seen by any request, without a new request.
    fn latest_server_clock(&self) -> BoxFuture<'_, Result<Option<ServerClock>, Error>>;

    /// Builds only `fields` of each record from now on (everything the run
    /// reads); a source that cannot prune keeps its records whole.
    fn read_only(&mut self, _fields: crate::extract::FieldSet) {}

    /// Streams every record of `window` into `pages`; returns early without
    /// error when the receiver goes away (the run is stopping).
    fn fetch(
        &self,
        window: Window,
        pages: mpsc::Sender<Page>,
    ) -> BoxFuture<'static, Result<PagerStats, Error>>;

    /// What `run --dry-run` shows: the requests the run would start with, and a count.
    fn probe(&self, window: Window) -> BoxFuture<'_, Result<Probe, Error>>;

    /// `expense-sync check`: prints one `ok …` line per step to stdout; a
    /// failed check comes back as its message and exit code.
    fn check(&self) -> BoxFuture<'_, Result<Option<(String, crate::ExitCode)>, Error>>;

    /// Whether the after-commit hook needs the ids of the exported records.
    fn wants_exported_ids(&self) -> bool {
        false
    }

    /// Stages what the after-commit hook will do, committed with the outputs
    /// so that a crash after the commit still carries it out; `None` when
    /// there is nothing to do. `rejected` maps ids to the receiver's reasons.
    fn stage_after_commit(
        &self,
        _run: &RunFiles<'_>,
        _exported: &mut ExportedIds,
        _rejected: &HashMap<String, String>,
    ) -> Result<Option<StagedFile>, Error> {
        Ok(None)
    }

    /// Carries out every staged after-commit plan (e.g. Fyle's export-status
    /// write-back); `None` when the source has no such hook.
    fn after_commit<'a>(
        &'a self,
        _run: &'a RunFiles<'a>,
    ) -> Option<BoxFuture<'a, AfterCommitSummary>> {
        None
    }

    /// The error for a stop during [`Source::after_commit`].
    fn after_commit_interrupted(&self) -> Error {
        Error::Interrupted(
            "interrupted after the commit: the run's outputs and state were committed".into(),
        )
    }
}

/// Where a run keeps its files, for a source's after-commit bookkeeping.
#[derive(Debug, Clone)]
pub struct RunFiles<'a> {
    /// The run's output directory (the local spool when outputs are remote):
    /// where after-commit plans are staged.
    pub output_dir: &'a Path,
    /// Where committed outputs are, so after-commit plans are found there later.
    pub location: crate::store::OutputLocation,
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// The run's id.
    pub run_id: &'a str,
    /// The tag of the run's temporary files.
    pub temp_tag: String,
}

/// The requests a run would start with, shown by `run --dry-run`.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The one-record request that counted the matches.
    pub count_probe: String,
    /// Matches in the window, if the server said.
    pub count: Option<u64>,
    /// The first page's request.
    pub first_page: String,
    /// Records per page.
    pub page_size: u32,
    /// Pages fetched at once.
    pub concurrency: u32,
}

/// What building a source needs from the pipeline file and the run.
#[derive(Debug, Clone)]
pub struct SourceContext<'a> {
    /// The pipeline file, named in errors.
    pub file: &'a Path,
    /// The one HTTP stack.
    pub http: &'a HttpClient,
    /// Credentials given by the caller instead of `[connection]` (demo, tests, embedding).
    pub credentials: Option<Credentials>,
    /// The credential vault for `[connection] vault = "…"`.
    pub vault: Option<PathBuf>,
}

/// Credentials given by the caller instead of the pipeline's `[connection]`;
/// the variant must match the source's platform.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A Fyle internal app's client and refresh token.
    Fyle(crate::auth::FyleCredentials),
    /// A RingCentral connection with a non-interactive grant (JWT), not stored anywhere.
    RingCentral(Box<crate::auth::Connection>),
}

impl From<crate::auth::FyleCredentials> for Credentials {
    fn from(c: crate::auth::FyleCredentials) -> Self {
        Credentials::Fyle(c)
    }
}

/// Why a source could not be built.
#[derive(Debug)]
pub enum BuildError {
    /// The pipeline file is wrong (e.g. a secret reference that does not resolve).
    Config(Vec<Problem>),
    /// Anything else (e.g. the vault has no such connection).
    Other(Error),
}

/// Source types a pipeline file may name.
pub const SOURCE_TYPES: [&str; 2] = ["fyle", "ringcentral"];

/// `[source]`: which system to read and what to select, chosen by `type`.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// `type = "fyle"`: the Fyle platform API.
    Fyle(fyle::FyleSourceConfig),
    /// `type = "ringcentral"`: RingCentral's company call log.
    RingCentral(ringcentral::RingCentralSourceConfig),
}

impl<'de> Deserialize<'de> for SourceConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut table = toml::Table::deserialize(deserializer)?;
        match table.remove("type") {
            Some(toml::Value::String(kind)) if kind == "fyle" => {
                crate::common::inner_table(table).map(SourceConfig::Fyle)
            }
            Some(toml::Value::String(kind)) if kind == "ringcentral" => {
                crate::common::inner_table(table).map(SourceConfig::RingCentral)
            }
            Some(toml::Value::String(other)) => {
                Err(D::Error::unknown_variant(&other, &SOURCE_TYPES))
            }
            Some(other) => Err(D::Error::custom(format!(
                "`type`: expected a string such as \"fyle\" or \"ringcentral\", found {other}"
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
            SourceConfig::RingCentral(c) => c.validate(prefix),
        }
    }

    /// Expands presets into filters and cursor (part of validation).
    pub fn apply_presets(&mut self, prefix: &str) -> Vec<Problem> {
        match self {
            SourceConfig::Fyle(c) => c.apply_presets(prefix),
            SourceConfig::RingCentral(_) => Vec::new(),
        }
    }

    /// Builds the source a run reads from.
    pub fn build(&self, ctx: SourceContext<'_>) -> Result<Box<dyn Source>, BuildError> {
        match self {
            SourceConfig::Fyle(c) => Ok(Box::new(fyle::FyleSource::build(c, ctx)?)),
            SourceConfig::RingCentral(c) => {
                Ok(Box::new(ringcentral::RingCentralSource::build(c, ctx)?))
            }
        }
    }

    /// The columns a pipeline without `[[columns]]` exports; `None` when the
    /// source has no default set for what it reads.
    pub fn default_columns(&self) -> Option<Vec<crate::transforms::ColumnSpec>> {
        match self {
            SourceConfig::Fyle(c) => fyle::default_columns(&c.resource),
            SourceConfig::RingCentral(c) => ringcentral::default_columns(&c.resource),
        }
    }

    /// The cursor field, for reading state without opening the source.
    pub fn cursor(&self) -> &str {
        match self {
            SourceConfig::Fyle(c) => c.cursor(),
            SourceConfig::RingCentral(c) => c.cursor(),
        }
    }

    /// How far behind the server's clock windows end, for planning without opening the source.
    pub fn safety_lag(&self) -> Duration {
        match self {
            SourceConfig::Fyle(c) => c.safety_lag,
            SourceConfig::RingCentral(c) => c.safety_lag,
        }
    }

    /// What the source selects, part by part, for the selection fingerprint.
    pub fn selection(&self) -> BTreeMap<String, String> {
        match self {
            SourceConfig::Fyle(c) => c.selection(),
            SourceConfig::RingCentral(c) => c.selection(),
        }
    }

    /// The resource name, used for default columns.
    pub fn resource(&self) -> &str {
        match self {
            SourceConfig::Fyle(c) => &c.resource,
            SourceConfig::RingCentral(c) => &c.resource,
        }
    }

    /// Reads `[connection]` and `[writeback]`, whose shape is the source's
    /// (keys in problems are named as written in the file).
    pub fn parse_sections(
        &mut self,
        connection: Option<&toml::Table>,
        writeback: Option<&toml::Table>,
    ) -> Vec<Problem> {
        match self {
            SourceConfig::Fyle(c) => c.parse_sections(connection, writeback),
            SourceConfig::RingCentral(c) => c.parse_connection(connection, writeback),
        }
    }

    /// Points the source at the vault connection `name`, dropping inline
    /// credentials (a tenant's credentials are its vault connection's).
    pub fn use_vault_connection(&mut self, name: &str) {
        match self {
            SourceConfig::Fyle(c) => {
                let conn = c.connection.get_or_insert_with(Default::default);
                conn.vault = Some(name.to_string());
                conn.client_id = None;
                conn.client_secret = None;
                conn.refresh_token = None;
            }
            SourceConfig::RingCentral(c) => {
                let conn = c.connection.get_or_insert_with(Default::default);
                conn.vault = Some(name.to_string());
                conn.server = None;
                conn.client_id = None;
                conn.client_secret = None;
                conn.jwt = None;
            }
        }
    }

    /// Whether the after-commit hook marks exported records by id (Fyle's
    /// `[writeback]`): an HTTP sink must then carry the id column.
    pub fn after_commit_needs_ids(&self) -> bool {
        match self {
            SourceConfig::Fyle(c) => c.writeback.is_some(),
            SourceConfig::RingCentral(_) => false,
        }
    }
}
