//! HTTP sink: pushes rows to another system (an ERP, an AP tool) as JSON
//! array or NDJSON batches, with a deterministic `Idempotency-Key` and an
//! HMAC-SHA256 signature per batch.
//!
//! Delivery contract (see README "Pushing over HTTP"):
//! - `write` returns only after every complete batch was acknowledged (2xx)
//!   or its records were dead-lettered, so when the runner commits and
//!   advances state, the receiver has everything.
//! - A batch's key is a hash of its records' bytes, independent of order, so
//!   a retry or a rerun that sends the same records sends the same key.
//! - Every record also carries its own key (by default in the body field
//!   `_idempotency_key`), derived from its id and cursor value alone, so a
//!   receiver can recognise a record version however batches are cut.
//! - Acknowledged record versions are appended to the push journal
//!   ([`super::journal`]); a rerun of a run that did not commit skips them.
//! - Records the receiver rejects (a configured 4xx, or an entry in the 2xx
//!   body's error list) go to a JSONL dead-letter file committed with the run.
//!
//! The sink runs on a blocking thread (the [`Sink`] trait is synchronous) and
//! drives its async requests with the runtime handle captured at build time.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use url::Url;

use super::journal::{JournalRecord, PushJournal, key_bytes};
use super::{Sink, SinkContext, SinkError, SinkOutput, cell_text, label, template_parts};
use crate::common::{Problem, SecretRef};
use crate::fsutil::{StagedFile, sync_file};
pub use crate::http::sign;
use crate::http::{HttpClient, HttpConfig, HttpError, Request, Signer};
use crate::row::{Batch, Cell, Schema};
use crate::state::Version;

/// Default header carrying the batch signature.
pub const SIGNATURE_HEADER: &str = "X-Expense-Sync-Signature";
/// Header carrying the batch's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// `[[sinks]] type = "http"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// Where batches are sent.
    pub url: String,
    /// `POST` (default) or `PUT`.
    #[serde(default)]
    pub method: PushMethod,
    /// `json` (one JSON array per batch, the default) or `ndjson` (one object per line).
    #[serde(default)]
    pub format: BodyFormat,
    /// Shape of each record; strings `"{column}"` become the column's typed value,
    /// other placeholders are interpolated as text; object keys come out in
    /// alphabetical order. Default: one key per column, in column order.
    #[serde(default)]
    pub template: Option<toml::Table>,
    /// Most records in one batch (default 100).
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// Most body bytes in one batch (default 1 MiB); a single larger record goes alone.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Send a partial batch once its first record has waited this long. Batches
    /// then depend on timing, so a rerun may cut them differently (see README).
    #[serde(default, deserialize_with = "optional_duration")]
    pub max_wait: Option<Duration>,
    /// Dead-letter file for rejected records (JSONL); placeholders as for file paths.
    #[serde(default = "default_dead_letter")]
    pub dead_letter: String,
    /// How to authenticate: bearer, basic or a custom header.
    #[serde(default)]
    pub auth: Option<PushAuth>,
    /// Extra headers sent with every batch (not secrets: use `auth` for those).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Key for the HMAC-SHA256 batch signature; no signature when absent.
    #[serde(default)]
    pub signing_secret: Option<SecretRef>,
    /// Header carrying the signature (default `X-Expense-Sync-Signature`).
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
    /// Batches in flight at once (default 1).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// This sink's own rate limit, timeouts and retries (same keys as `[http]`).
    #[serde(default)]
    pub http: HttpConfig,
    /// 4xx statuses that mean "these records are rejected" rather than "the
    /// request is wrong": batches are split to find the rejected records,
    /// which go to the dead-letter file. Other 4xx fail the run (default [400, 422]).
    #[serde(default = "default_reject_statuses")]
    pub reject_statuses: Vec<u16>,
    /// Field of a 2xx JSON body listing per-record errors as
    /// `[{"index": n, "reason": "…"}]` (default `errors`; `""` ignores the body).
    #[serde(default = "default_errors_field")]
    pub record_errors_field: String,
    /// Column holding the expense id, naming records in the dead-letter file and the
    /// write-back (default `id`, or `expense_id` of the default columns).
    #[serde(default = "default_id_column")]
    pub id_column: String,
    /// Body field carrying each record's own key, derived from its id and
    /// cursor value (default `_idempotency_key`); `""` leaves the body as the
    /// template makes it, and with `max_records = 1` the `Idempotency-Key`
    /// header is then the record's key.
    #[serde(default = "default_record_key_field")]
    pub record_key_field: String,
}

/// HTTP method of a push.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PushMethod {
    /// `POST`.
    #[default]
    Post,
    /// `PUT`.
    Put,
}

/// Body encoding of a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    /// `[{…},{…}]`, `Content-Type: application/json`.
    #[default]
    Json,
    /// `{…}\n{…}\n`, `Content-Type: application/x-ndjson`.
    Ndjson,
}

/// `auth = { type = "bearer" | "basic" | "header" | "vault", … }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum PushAuth {
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token, as `{ env = … }` or `{ file = … }`.
        token: SecretRef,
    },
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        /// User name (not secret).
        username: String,
        /// Password, as `{ env = … }` or `{ file = … }`.
        password: SecretRef,
    },
    /// A custom header such as `X-Api-Key`.
    Header {
        /// Header name.
        name: String,
        /// Header value, as `{ env = … }` or `{ file = … }`.
        value: SecretRef,
    },
    /// `Authorization: Bearer <token>` with a token from a vault connection,
    /// typically an OAuth 2.0 client-credentials app (`auth add … --grant
    /// client-credentials`); it is fetched, cached and renewed like any other.
    Vault {
        /// The connection's name in the vault.
        connection: String,
        /// The vault file; default `$EXPENSE_SYNC_VAULT`, else the standard location.
        #[serde(default)]
        vault: Option<PathBuf>,
    },
}

fn default_max_records() -> usize {
    100
}
fn default_max_bytes() -> usize {
    1024 * 1024
}
fn default_dead_letter() -> String {
    "{pipeline}-{run_id}.dead-letter.jsonl".into()
}
fn default_signature_header() -> String {
    SIGNATURE_HEADER.into()
}
fn default_concurrency() -> usize {
    1
}
fn default_reject_statuses() -> Vec<u16> {
    vec![400, 422]
}
fn default_errors_field() -> String {
    "errors".into()
}
fn default_id_column() -> String {
    "id".into()
}
fn default_record_key_field() -> String {
    "_idempotency_key".into()
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    crate::common::duration::deserialize(d).map(Some)
}

impl HttpSinkConfig {
    /// Every problem with these settings, keyed under `prefix`.
    pub fn validate(&self, prefix: &str) -> Vec<Problem> {
        let mut p = Vec::new();
        match Url::parse(&self.url) {
            Ok(u) if u.password().is_some() => p.push(Problem::new(
                format!("{prefix}.url"),
                "must not carry credentials (they would appear in logs and errors); use `auth`",
            )),
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => p.push(Problem::new(
                format!("{prefix}.url"),
                format!("must be an http or https URL, got scheme `{}`", u.scheme()),
            )),
            Err(e) => p.push(Problem::new(
                format!("{prefix}.url"),
                format!(
                    "`{}` is not a URL ({e}); e.g. \"https://erp.example.com/expenses\"",
                    self.url
                ),
            )),
        }
        if self.max_records == 0 {
            p.push(Problem::new(
                format!("{prefix}.max_records"),
                "must be at least 1",
            ));
        }
        if self.max_bytes < 1024 {
            p.push(Problem::new(
                format!("{prefix}.max_bytes"),
                "must be at least 1024",
            ));
        }
        if !(1..=64).contains(&self.concurrency) {
            p.push(Problem::new(
                format!("{prefix}.concurrency"),
                format!("must be between 1 and 64, got {}", self.concurrency),
            ));
        }
        if let Some(w) = self.max_wait
            && w.is_zero()
        {
            p.push(Problem::new(
                format!("{prefix}.max_wait"),
                "must be longer than zero, or left out",
            ));
        }
        for s in &self.reject_statuses {
            if !(400..=499).contains(s) || matches!(s, 401 | 403 | 429) {
                p.push(Problem::new(
                    format!("{prefix}.reject_statuses"),
                    format!("{s} cannot mean a rejected record; list 4xx statuses other than 401, 403 and 429"),
                ));
            }
        }
        for name in self.headers.keys().chain([&self.signature_header]) {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                p.push(Problem::new(
                    format!("{prefix}.headers"),
                    format!("`{name}` is not a valid header name"),
                ));
            }
        }
        for (name, value) in &self.headers {
            let reserved = [
                IDEMPOTENCY_HEADER,
                "Content-Type",
                "Authorization",
                &self.signature_header,
            ];
            if reserved.iter().any(|r| r.eq_ignore_ascii_case(name)) {
                p.push(Problem::new(
                    format!("{prefix}.headers.{name}"),
                    "is set by the sink itself (use `auth` for Authorization, `signature_header` for the signature)",
                ));
            }
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                p.push(Problem::new(
                    format!("{prefix}.headers.{name}"),
                    "is not a valid header value (printable ASCII, no line breaks)",
                ));
            }
        }
        p.extend(self.http.validate(&format!("{prefix}.http")));
        // Secrets are read when the run starts (like [connection]); here only
        // refuse secrets written inline.
        let mut refs: Vec<(&str, &SecretRef)> = Vec::new();
        match &self.auth {
            None => {}
            Some(PushAuth::Bearer { token }) => refs.push(("auth.token", token)),
            Some(PushAuth::Basic { password, .. }) => refs.push(("auth.password", password)),
            Some(PushAuth::Vault { connection, .. }) if connection.trim().is_empty() => {
                p.push(Problem::new(
                    format!("{prefix}.auth.connection"),
                    "name the vault connection, e.g. connection = \"erp\"",
                ));
            }
            Some(PushAuth::Vault { .. }) => {}
            Some(PushAuth::Header { name, value }) => {
                refs.push(("auth.value", value));
                if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    p.push(Problem::new(
                        format!("{prefix}.auth.name"),
                        format!("`{name}` is not a valid header name"),
                    ));
                }
            }
        }
        if let Some(s) = &self.signing_secret {
            refs.push(("signing_secret", s));
        }
        for (key, r) in refs {
            if let SecretRef::Inline(_) = r
                && let Err(problem) = r.resolve(&format!("{prefix}.{key}"), false)
            {
                p.push(problem);
            }
        }
        p
    }

    /// Reads the auth and signing secrets: (auth headers, signing key).
    #[allow(clippy::type_complexity)]
    pub(crate) fn resolve_secrets(
        &self,
        prefix: &str,
    ) -> Result<(Vec<(String, SecretString)>, Option<SecretString>), Vec<Problem>> {
        let mut problems = Vec::new();
        let mut headers = Vec::new();
        let mut take = |r: &SecretRef, key: &str| match r.resolve(&format!("{prefix}.{key}"), false)
        {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(e);
                None
            }
        };
        match &self.auth {
            None => {}
            Some(PushAuth::Bearer { token }) => {
                if let Some(t) = take(token, "auth.token") {
                    headers.push((
                        "Authorization".to_string(),
                        SecretString::from(format!("Bearer {}", t.expose_secret())),
                    ));
                }
            }
            Some(PushAuth::Basic { username, password }) => {
                if let Some(pw) = take(password, "auth.password") {
                    let raw = format!("{username}:{}", pw.expose_secret());
                    let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
                    headers.push((
                        "Authorization".to_string(),
                        SecretString::from(format!("Basic {encoded}")),
                    ));
                }
            }
            Some(PushAuth::Header { name, value }) => {
                if let Some(v) = take(value, "auth.value") {
                    headers.push((name.clone(), v));
                }
            }
            // Fetched per request from the vault (see `HttpSink::send`).
            Some(PushAuth::Vault { .. }) => {}
        }
        let secret = self
            .signing_secret
            .as_ref()
            .and_then(|s| take(s, "signing_secret"));
        if problems.is_empty() {
            Ok((headers, secret))
        } else {
            Err(problems)
        }
    }
}

/// What a push delivered, for the run summary and the write-back.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// Where the batches went.
    pub url: String,
    /// Batches the receiver acknowledged (split batches count each part).
    pub batches: u64,
    /// Records acknowledged and not rejected.
    pub accepted: u64,
    /// Records rejected (in the dead-letter file).
    pub rejected: u64,
    /// Values of `id_column` of the rejected records, with the reason.
    pub rejected_ids: Vec<(String, String)>,
    /// Records not sent because an earlier run that did not commit had them
    /// acknowledged already (from the push journal); included in `accepted`.
    pub resumed: u64,
    /// Requests, retries, 429s and errors of this sink's own client.
    pub http: crate::http::StatsSnapshot,
}

/// One record, rendered.
struct Item {
    json: Vec<u8>,
    id: Option<String>,
    /// The record's own key (see [`record_key`]).
    key: String,
    /// Its source version, for the journal.
    version: Option<Version>,
}

/// A compiled record template.
enum Tpl {
    Lit(Value),
    Col(usize),
    Text(Vec<Part>),
    Arr(Vec<Tpl>),
    Obj(Vec<(String, Tpl)>),
}

enum Part {
    Lit(String),
    Col(usize),
}

/// Outcome of delivering one batch (and any halves it was split into).
struct BatchResult {
    batches: u64,
    accepted: u64,
    bytes: u64,
    /// (index in the batch, status, reason, idempotency key of the part).
    rejected: Vec<(usize, u16, String, String)>,
}

/// The sink itself; see the module docs.
pub struct HttpSink {
    label: String,
    cfg: Arc<HttpSinkConfig>,
    client: HttpClient,
    url: Url,
    handle: tokio::runtime::Handle,
    auth_headers: Vec<(String, SecretString)>,
    vault_auth: Option<Arc<crate::auth::VaultAuth>>,
    signing_key: Option<SecretString>,
    schema: Arc<Schema>,
    template: Option<Tpl>,
    id_index: Option<usize>,
    buffer: Vec<Item>,
    buffer_bytes: usize,
    first_buffered: Option<Instant>,
    ready: Vec<Vec<Item>>,
    dead_path: PathBuf,
    temp_tag: String,
    dead: Option<(StagedFile, std::io::BufWriter<std::fs::File>)>,
    delivery: Delivery,
    bytes: u64,
    journal: Option<PushJournal>,
    /// Keys acknowledged by earlier runs that did not commit (from the journal).
    acknowledged: HashSet<[u8; 32]>,
}

impl HttpSink {
    /// Prepares a push to `cfg.url`; `dead_letter_path` is where rejected records go.
    pub fn create(
        cfg: &HttpSinkConfig,
        dead_letter_path: &Path,
        ctx: &SinkContext,
        schema: Arc<Schema>,
    ) -> Result<Self, SinkError> {
        let label = format!("http sink {}", cfg.url);
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            SinkError::new(
                &label,
                "the HTTP sink must be built inside the tokio runtime (a bug)",
            )
        })?;
        let url =
            Url::parse(&cfg.url).map_err(|e| SinkError::new(&label, format!("bad url: {e}")))?;
        let (auth_headers, signing_key) = cfg.resolve_secrets("sink").map_err(|ps| {
            SinkError::new(
                &label,
                ps.iter()
                    .map(|p| format!("{}: {}", p.key, p.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        let client =
            HttpClient::new(&cfg.http).map_err(|e| SinkError::new(&label, e.to_string()))?;
        let vault_auth = match &cfg.auth {
            Some(PushAuth::Vault { connection, vault }) => {
                let path = crate::auth::vault::vault_path(vault.as_deref());
                Some(Arc::new(crate::auth::VaultAuth::new(
                    crate::auth::Vault::open(&path),
                    connection,
                    client.clone(),
                )))
            }
            _ => None,
        };
        let template = match &cfg.template {
            None => None,
            Some(t) => Some(
                compile(&toml::Value::Table(t.clone()), &schema)
                    .map_err(|m| SinkError::new(&label, m))?,
            ),
        };
        if cfg.template.is_none()
            && let Some(c) = schema
                .columns
                .iter()
                .find(|c| c.name == cfg.record_key_field)
        {
            return Err(SinkError::new(
                &label,
                format!(
                    "column `{}` has the name of record_key_field, which the sink fills with each \
                     record's key; rename the column or set record_key_field to another name (or \"\")",
                    c.name
                ),
            ));
        }
        let id_index = id_column_index(
            &cfg.id_column,
            schema.columns.iter().map(|c| c.name.as_str()),
        );
        Ok(Self {
            label,
            cfg: Arc::new(cfg.clone()),
            client,
            url,
            handle,
            auth_headers,
            vault_auth,
            signing_key,
            schema,
            template,
            id_index,
            buffer: Vec::new(),
            buffer_bytes: 0,
            first_buffered: None,
            ready: Vec::new(),
            dead_path: dead_letter_path.to_path_buf(),
            temp_tag: ctx.temp_tag(),
            dead: None,
            delivery: Delivery {
                url: cfg.url.clone(),
                ..Delivery::default()
            },
            bytes: 0,
            journal: None,
            acknowledged: HashSet::new(),
        })
    }

    fn render(&self, row: &[Cell], version: Option<&Version>) -> Result<Item, SinkError> {
        let mut value = match &self.template {
            Some(t) => expand(t, row),
            None => Value::Object(
                self.schema
                    .columns
                    .iter()
                    .zip(row)
                    .map(|(c, cell)| (c.name.clone(), cell_json(cell)))
                    .collect(),
            ),
        };
        let encode_err = |e: serde_json::Error| {
            SinkError::new(&self.label, format!("cannot encode a record: {e}"))
        };
        // Without a known version (no cursor value), the content stands for it.
        let key = match version {
            Some(v) => record_key(&v.id, &v.cursor),
            None => hex::encode(Sha256::digest(
                serde_json::to_vec(&value).map_err(encode_err)?,
            )),
        };
        if !self.cfg.record_key_field.is_empty()
            && let Value::Object(map) = &mut value
        {
            map.insert(
                self.cfg.record_key_field.clone(),
                Value::String(key.clone()),
            );
        }
        let json = serde_json::to_vec(&value).map_err(encode_err)?;
        let id = self
            .id_index
            .and_then(|i| row.get(i))
            .filter(|c| !matches!(c, Cell::Null))
            .map(|c| cell_text(c).into_owned());
        Ok(Item {
            json,
            id,
            key,
            version: version.cloned(),
        })
    }

    /// Moves the buffer into the queue of batches ready to send.
    fn cut(&mut self) {
        if !self.buffer.is_empty() {
            self.ready.push(std::mem::take(&mut self.buffer));
            self.buffer_bytes = 0;
            self.first_buffered = None;
        }
    }

    /// Sends every ready batch (up to `concurrency` at once) and waits for the answers.
    fn send_ready(&mut self) -> Result<(), SinkError> {
        if self.ready.is_empty() {
            return Ok(());
        }
        let batches = std::mem::take(&mut self.ready);
        let this = &*self;
        let results = self.handle.block_on(async {
            futures::future::join_all(batches.iter().map(|b| this.deliver(b))).await
        });
        // Journal every acknowledged batch, even when another one failed:
        // the rerun must skip what this run got through.
        let mut failed = None;
        for (batch, result) in batches.iter().zip(results) {
            let r = match result {
                Ok(r) => r,
                Err(e) => {
                    failed.get_or_insert(e);
                    continue;
                }
            };
            self.journal(batch, &r)?;
            self.delivery.batches += r.batches;
            self.delivery.accepted += r.accepted;
            self.bytes += r.bytes;
            for (index, status, reason, key) in r.rejected {
                self.dead_letter(&batch[index], status, &reason, &key)?;
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Appends the accepted records of an acknowledged batch to the push journal.
    fn journal(&self, batch: &[Item], r: &BatchResult) -> Result<(), SinkError> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        let rejected: HashSet<usize> = r.rejected.iter().map(|(i, ..)| *i).collect();
        let records = batch
            .iter()
            .enumerate()
            .filter(|(i, _)| !rejected.contains(i))
            .map(|(_, item)| JournalRecord {
                id: item
                    .version
                    .as_ref()
                    .map(|v| v.id.clone())
                    .or(item.id.clone()),
                cursor: item.version.as_ref().map(|v| v.cursor.clone()),
                key: item.key.clone(),
            })
            .collect();
        journal.record(&self.cfg.url, records).map_err(|e| {
            SinkError::new(
                &self.label,
                format!(
                    "{e}. The receiver acknowledged the batch, but a rerun could not know it; \
                     nothing was committed (the per-record keys let the receiver recognise the records if sent again)"
                ),
            )
        })
    }

    fn dead_letter(
        &mut self,
        item: &Item,
        status: u16,
        reason: &str,
        key: &str,
    ) -> Result<(), SinkError> {
        if self.dead.is_none() {
            let (staged, file) = StagedFile::create(&self.dead_path, &self.temp_tag)
                .map_err(|e| SinkError::io(&self.label, "cannot start the dead-letter file", &e))?;
            self.dead = Some((staged, std::io::BufWriter::new(file)));
        }
        let record: Value = serde_json::from_slice(&item.json).unwrap_or(Value::Null);
        let line = serde_json::json!({
            "id": item.id,
            "status": status,
            "reason": reason,
            "idempotency_key": key,
            "url": self.cfg.url,
            "record": record,
        });
        let (staged, w) = self.dead.as_mut().expect("opened above");
        serde_json::to_writer(&mut *w, &line)
            .map_err(std::io::Error::from)
            .and_then(|_| w.write_all(b"\n"))
            .map_err(|e| {
                SinkError::io(
                    &label("http dead-letter", &staged.final_path),
                    "cannot write",
                    &e,
                )
            })?;
        self.delivery.rejected += 1;
        if let Some(id) = &item.id {
            self.delivery
                .rejected_ids
                .push((id.clone(), reason.to_string()));
        }
        Ok(())
    }

    /// Sends one batch, splitting it on a reject status to isolate the rejected records.
    async fn deliver(&self, batch: &[Item]) -> Result<BatchResult, SinkError> {
        let mut result = BatchResult {
            batches: 0,
            accepted: 0,
            bytes: 0,
            rejected: Vec::new(),
        };
        // (offset in `batch`, length): halves are deterministic, so their keys are too.
        let mut work = vec![(0usize, batch.len())];
        while let Some((start, len)) = work.pop() {
            let part = &batch[start..start + len];
            let body = encode(part, self.cfg.format);
            let key = match part {
                [one] if self.cfg.record_key_field.is_empty() => one.key.clone(),
                _ => idempotency_key(part),
            };
            match self.send(&body, &key).await {
                Ok(resp) => {
                    let errors = record_errors(&resp.json, &self.cfg.record_errors_field, len);
                    result.batches += 1;
                    result.bytes += body.len() as u64;
                    result.accepted += (len - errors.len()) as u64;
                    for (i, reason) in errors {
                        result
                            .rejected
                            .push((start + i, resp.status, reason, key.clone()));
                    }
                }
                Err(HttpError::Rejected {
                    status, message, ..
                }) if self.cfg.reject_statuses.contains(&status) => {
                    if len > 1 {
                        let half = len / 2;
                        work.push((start + half, len - half));
                        work.push((start, half));
                    } else {
                        result.rejected.push((start, status, message, key));
                    }
                }
                Err(e) => {
                    return Err(SinkError::new(
                        &self.label,
                        format!(
                            "a batch of {len} records (Idempotency-Key {key}) was not acknowledged: {e}. \
                             Nothing was committed; the next run sends these records again with the same per-record keys \
                             (and skips those the receiver acknowledged, see the push journal)"
                        ),
                    ));
                }
            }
        }
        Ok(result)
    }

    async fn send(&self, body: &[u8], key: &str) -> Result<crate::http::Response, HttpError> {
        let content_type = match self.cfg.format {
            BodyFormat::Json => "application/json",
            BodyFormat::Ndjson => "application/x-ndjson",
        };
        let method = match self.cfg.method {
            PushMethod::Post => Method::POST,
            PushMethod::Put => Method::PUT,
        };
        let mut req = Request::new(method, self.url.clone());
        req.raw = Some((
            bytes::Bytes::copy_from_slice(body),
            content_type.to_string(),
        ));
        req.any_success_body = true;
        req.headers = self
            .cfg
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        req.headers
            .push((IDEMPOTENCY_HEADER.to_string(), key.to_string()));
        // The client signs each attempt, so a retry carries a fresh timestamp.
        req.signer = self.signing_key.as_ref().map(|secret| Signer {
            header: self.cfg.signature_header.clone(),
            secret: secret.clone(),
        });
        req.secret_headers = self.auth_headers.clone();
        let Some(vault) = &self.vault_auth else {
            return self.client.execute(&req).await;
        };
        // A token the receiver refuses is renewed once (it may have been
        // rotated or revoked since it was cached), then the batch is retried.
        let mut rejected: Option<SecretString> = None;
        loop {
            let token = vault
                .access_token(rejected.as_ref(), false)
                .await
                .map_err(|e| HttpError::Invalid {
                    url: self.url.to_string(),
                    message: format!(
                        "no access token from vault connection `{}`: {e}",
                        vault.name()
                    ),
                })?;
            req.bearer = Some(token.access.clone());
            match self.client.execute(&req).await {
                Err(HttpError::Unauthorized { .. }) if rejected.is_none() => {
                    rejected = Some(token.access);
                }
                other => return other,
            }
        }
    }
}

impl Sink for HttpSink {
    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.write_versions(batch, &[])
    }

    fn use_journal(&mut self, journal: &PushJournal) {
        self.acknowledged = journal.acknowledged(&self.cfg.url);
        if !self.acknowledged.is_empty() {
            tracing::info!(
                sink = %self.label,
                records = self.acknowledged.len(),
                journal = journal.location(),
                "an earlier run that did not commit had records acknowledged; they are not sent again"
            );
        }
        self.journal = Some(journal.clone());
    }

    fn wants_versions(&self) -> bool {
        true
    }

    fn write_versions(
        &mut self,
        batch: &Batch,
        versions: &[Option<Version>],
    ) -> Result<(), SinkError> {
        for (n, row) in batch.rows.iter().enumerate() {
            let version = versions.get(n).and_then(Option::as_ref);
            let item = self.render(&row.cells, version)?;
            if !self.acknowledged.is_empty()
                && key_bytes(&item.key).is_some_and(|k| self.acknowledged.contains(&k))
            {
                self.delivery.resumed += 1;
                self.delivery.accepted += 1;
                continue;
            }
            let extra = item.json.len() + 1;
            let waited = self
                .first_buffered
                .zip(self.cfg.max_wait)
                .is_some_and(|(first, max)| first.elapsed() >= max);
            if !self.buffer.is_empty()
                && (self.buffer.len() >= self.cfg.max_records
                    || self.buffer_bytes + extra + 2 > self.cfg.max_bytes
                    || waited)
            {
                self.cut();
                if self.ready.len() >= self.cfg.concurrency || waited {
                    self.send_ready()?;
                }
            }
            if self.buffer.is_empty() {
                self.first_buffered = Some(Instant::now());
            }
            self.buffer_bytes += extra;
            self.buffer.push(item);
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<SinkOutput, SinkError> {
        self.cut();
        if let Err(e) = self.send_ready() {
            self.abort();
            return Err(e);
        }
        let staged = match self.dead.take() {
            None => None,
            Some((staged, mut w)) => {
                let synced = w
                    .flush()
                    .and_then(|_| w.into_inner().map_err(|e| e.into_error()))
                    .and_then(|f| sync_file(&f, &staged.temp_path));
                if let Err(e) = synced {
                    staged.discard();
                    return Err(SinkError::io(
                        &self.label,
                        "cannot finish the dead-letter file",
                        &e,
                    ));
                }
                Some(staged)
            }
        };
        self.delivery.http = self.client.stats();
        if self.delivery.resumed > 0 {
            tracing::info!(
                sink = %self.label,
                records = self.delivery.resumed,
                "records acknowledged by an earlier run that did not commit were not sent again (push journal)"
            );
        }
        Ok(SinkOutput {
            companions: Vec::new(),
            kind: "http",
            staged,
            rows: self.delivery.accepted,
            bytes: self.bytes,
            delivery: Some(std::mem::take(&mut self.delivery)),
        })
    }

    fn abort(mut self: Box<Self>) {
        if let Some((staged, _)) = self.dead.take() {
            staged.discard();
        }
    }
}

/// Which column names records: `id_column`, or for the default `id` the
/// default expense columns' `expense_id`.
pub fn id_column_index<'a>(
    id_column: &str,
    names: impl Iterator<Item = &'a str> + Clone,
) -> Option<usize> {
    let find = |wanted: &str| names.clone().position(|n| n == wanted);
    find(id_column).or_else(|| (id_column == "id").then(|| find("expense_id")).flatten())
}

/// A cell as JSON: decimals stay exact numbers (`12.30`), instants and dates are RFC 3339 text.
pub fn cell_json(cell: &Cell) -> Value {
    match cell {
        Cell::Null => Value::Null,
        Cell::Str(s) => Value::String(s.to_string()),
        Cell::Bool(b) => Value::Bool(*b),
        Cell::Int(i) => Value::from(*i),
        // arbitrary_precision keeps the decimal's text, so no digit is lost or added.
        Cell::Decimal(d) => serde_json::from_str::<serde_json::Number>(&d.to_string())
            .map_or_else(|_| Value::String(d.to_string()), Value::Number),
        Cell::Timestamp(_) | Cell::Date(_) => Value::String(cell_text(cell).into_owned()),
    }
}

fn compile(v: &toml::Value, schema: &Schema) -> Result<Tpl, String> {
    let column = |name: &str| {
        schema
            .columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| {
                format!(
                    "template placeholder `{{{name}}}` is not a column; columns are {}",
                    schema
                        .columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    };
    Ok(match v {
        toml::Value::String(s) => {
            let parts = template_parts(s).map_err(|e| format!("template: {e}"))?;
            let parts: Vec<_> = parts
                .into_iter()
                .filter(|(ph, t)| *ph || !t.is_empty())
                .collect();
            match parts.as_slice() {
                [] => Tpl::Lit(Value::String(String::new())),
                [(false, t)] => Tpl::Lit(Value::String((*t).to_string())),
                [(true, name)] => Tpl::Col(column(name)?),
                _ => Tpl::Text(
                    parts
                        .into_iter()
                        .map(|(ph, t)| {
                            if ph {
                                column(t).map(Part::Col)
                            } else {
                                Ok(Part::Lit(t.to_string()))
                            }
                        })
                        .collect::<Result<_, _>>()?,
                ),
            }
        }
        toml::Value::Integer(i) => Tpl::Lit(Value::from(*i)),
        toml::Value::Float(f) => {
            Tpl::Lit(serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number))
        }
        toml::Value::Boolean(b) => Tpl::Lit(Value::Bool(*b)),
        toml::Value::Datetime(d) => Tpl::Lit(Value::String(d.to_string())),
        toml::Value::Array(a) => Tpl::Arr(
            a.iter()
                .map(|x| compile(x, schema))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(t) => Tpl::Obj(
            t.iter()
                .map(|(k, x)| compile(x, schema).map(|c| (k.clone(), c)))
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn expand(t: &Tpl, row: &[Cell]) -> Value {
    match t {
        Tpl::Lit(v) => v.clone(),
        Tpl::Col(i) => cell_json(&row[*i]),
        Tpl::Text(parts) => Value::String(
            parts
                .iter()
                .map(|p| match p {
                    Part::Lit(s) => std::borrow::Cow::Borrowed(s.as_str()),
                    Part::Col(i) => cell_text(&row[*i]),
                })
                .collect(),
        ),
        Tpl::Arr(a) => Value::Array(a.iter().map(|x| expand(x, row)).collect()),
        Tpl::Obj(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), expand(x, row))).collect()),
    }
}

fn encode(items: &[Item], format: BodyFormat) -> Vec<u8> {
    let size: usize = items.iter().map(|i| i.json.len() + 1).sum::<usize>() + 2;
    let mut body = Vec::with_capacity(size);
    match format {
        BodyFormat::Json => {
            body.push(b'[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&item.json);
            }
            body.push(b']');
        }
        BodyFormat::Ndjson => {
            for item in items {
                body.extend_from_slice(&item.json);
                body.push(b'\n');
            }
        }
    }
    body
}

/// A record version's own key: hex SHA-256 of its id, a newline and its
/// cursor value as the source wrote it. It depends on nothing else, so a
/// receiver can de-duplicate per record version however records are batched.
pub fn record_key(id: &str, cursor: &str) -> String {
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update(b"\n");
    h.update(cursor.as_bytes());
    hex::encode(h.finalize())
}

/// The batch key: SHA-256 over the sorted SHA-256 digests of each record's
/// bytes, so the same records give the same key whatever their order.
fn idempotency_key(items: &[Item]) -> String {
    let mut digests: Vec<[u8; 32]> = items
        .iter()
        .map(|i| Sha256::digest(&i.json).into())
        .collect();
    digests.sort_unstable();
    let mut h = Sha256::new();
    for d in &digests {
        h.update(d);
    }
    hex::encode(h.finalize())
}

/// Per-record errors in a 2xx body: `{field: [{"index": n, "reason"|"message"|"error": "…"}]}`.
fn record_errors(body: &Value, field: &str, len: usize) -> Vec<(usize, String)> {
    if field.is_empty() {
        return Vec::new();
    }
    let Some(list) = body.get(field).and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut out: Vec<(usize, String)> = list
        .iter()
        .filter_map(|e| {
            let index = e.get("index")?.as_u64()? as usize;
            let reason = ["reason", "message", "error"]
                .iter()
                .find_map(|k| e.get(*k).and_then(Value::as_str))
                .unwrap_or("rejected by the receiver (no reason given)");
            (index < len).then(|| (index, reason.to_string()))
        })
        .collect();
    out.sort_by_key(|(i, _)| *i);
    out.dedup_by_key(|(i, _)| *i);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(s: &str) -> Item {
        Item {
            json: s.as_bytes().to_vec(),
            id: None,
            key: String::new(),
            version: None,
        }
    }

    #[test]
    fn idempotency_key_ignores_order_but_not_content() {
        let a = [item(r#"{"id":"a"}"#), item(r#"{"id":"b"}"#)];
        let b = [item(r#"{"id":"b"}"#), item(r#"{"id":"a"}"#)];
        let c = [item(r#"{"id":"a"}"#), item(r#"{"id":"c"}"#)];
        assert_eq!(idempotency_key(&a), idempotency_key(&b));
        assert_ne!(idempotency_key(&a), idempotency_key(&c));
        assert_eq!(idempotency_key(&a).len(), 64);
    }

    #[test]
    fn a_record_key_names_one_version_of_one_record() {
        let k = record_key("txA1", "2026-01-02T03:04:05.123456+00:00");
        assert_eq!(k.len(), 64);
        assert_eq!(k, record_key("txA1", "2026-01-02T03:04:05.123456+00:00"));
        assert_ne!(k, record_key("txA1", "2026-01-02T03:04:05.123457+00:00"));
        assert_ne!(k, record_key("txA2", "2026-01-02T03:04:05.123456+00:00"));
        // The separator keeps id and cursor apart.
        assert_ne!(record_key("a", "bc"), record_key("ab", "c"));
    }

    #[test]
    fn signature_matches_a_known_hmac_sha256_vector() {
        // Python: hmac.new(b"key", b"1700000000.[]", hashlib.sha256).hexdigest()
        let sig = sign(&SecretString::from("key"), 1_700_000_000, b"[]");
        assert_eq!(
            sig,
            "t=1700000000,v1=2afce10b4f37880815b715635811bcfa4d5334e7213eea5bc2e130e1008055c3"
        );
    }

    #[test]
    fn the_default_id_column_falls_back_to_expense_id() {
        let names = ["expense_id", "amount"];
        assert_eq!(id_column_index("id", names.iter().copied()), Some(0));
        assert_eq!(id_column_index("amount", names.iter().copied()), Some(1));
        assert_eq!(id_column_index("ref", names.iter().copied()), None);
        let names = ["id", "expense_id"];
        assert_eq!(id_column_index("id", names.iter().copied()), Some(0));
    }

    #[test]
    fn auth_settings_become_sensitive_headers() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "pw\n").unwrap();
        let table = |auth: &str| {
            toml::from_str::<HttpSinkConfig>(&format!(
                "url = \"https://ap.example.com/x\"\nauth = {auth}"
            ))
            .unwrap()
        };
        let basic = table(&format!(
            "{{ type = \"basic\", username = \"user\", password = {{ file = \"{}\" }} }}",
            pw.display()
        ));
        let (headers, key) = basic.resolve_secrets("sinks[0]").unwrap();
        assert_eq!(headers[0].0, "Authorization");
        // base64("user:pw")
        assert_eq!(headers[0].1.expose_secret(), "Basic dXNlcjpwdw==");
        assert!(key.is_none());
        let custom = table(&format!(
            "{{ type = \"header\", name = \"X-Api-Key\", value = {{ file = \"{}\" }} }}",
            pw.display()
        ));
        let (headers, _) = custom.resolve_secrets("sinks[0]").unwrap();
        assert_eq!(headers[0].0, "X-Api-Key");
        assert_eq!(headers[0].1.expose_secret(), "pw");
        let missing =
            table("{ type = \"bearer\", token = { env = \"EXPENSE_SYNC_TEST_UNSET_TOKEN\" } }");
        let problems = missing.resolve_secrets("sinks[0]").unwrap_err();
        assert_eq!(problems[0].key, "sinks[0].auth.token");
    }

    #[test]
    fn encodes_json_arrays_and_ndjson() {
        let items = [item("{\"a\":1}"), item("{\"a\":2}")];
        assert_eq!(encode(&items, BodyFormat::Json), b"[{\"a\":1},{\"a\":2}]");
        assert_eq!(
            encode(&items, BodyFormat::Ndjson),
            b"{\"a\":1}\n{\"a\":2}\n"
        );
    }

    #[test]
    fn record_errors_are_read_by_index_and_bounded() {
        let body = serde_json::json!({"errors": [
            {"index": 2, "reason": "unknown vendor"},
            {"index": 0, "message": "bad amount"},
            {"index": 9, "reason": "out of range"}
        ]});
        assert_eq!(
            record_errors(&body, "errors", 3),
            vec![
                (0, "bad amount".to_string()),
                (2, "unknown vendor".to_string())
            ]
        );
        assert!(record_errors(&body, "", 3).is_empty());
    }
}
