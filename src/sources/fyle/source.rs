//! The Fyle platform as a [`Source`]: its session, keyset pager, server
//! clock, `check` steps and the export-status write-back after each commit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    FyleClient, FyleError, FyleSourceConfig, Page, PagerStats, Window, WriteBackConfig,
    WriteBackSummary, fetch_window, first_page_query, plan_path, run_pending, stage_plan,
};
use crate::auth::FyleSession;
use crate::common::Problem;
use crate::error::Error;
use crate::extract::FieldSet;
use crate::fsutil::StagedFile;
use crate::http::ServerClock;
use crate::sources::{BuildError, Credentials, Probe, RunFiles, Source, SourceContext};

/// A Fyle source opened for one run.
pub struct FyleSource {
    cfg: FyleSourceConfig,
    /// What the run reads of each record; pages are parsed into only that.
    fields: Arc<FieldSet>,
    client: FyleClient,
    writeback: Option<WriteBackConfig>,
    /// Where the credentials came from, the first line `check` prints.
    origin: Option<String>,
}

impl FyleSource {
    /// The session from given credentials, a vault connection, or `[connection]`.
    pub fn build(cfg: &FyleSourceConfig, ctx: SourceContext<'_>) -> Result<Self, BuildError> {
        let connection = cfg.connection.as_ref().ok_or_else(|| {
            BuildError::Config(vec![Problem::new("connection", "is required but missing")])
        })?;
        let (session, origin) = match (ctx.credentials, &connection.vault) {
            (Some(Credentials::Fyle(c)), _) => (FyleSession::new(ctx.http.clone(), c), None),
            (Some(Credentials::RingCentral(_)), _) => {
                return Err(BuildError::Other(Error::Internal(
                    "RingCentral credentials were given for a Fyle source".into(),
                )));
            }
            (None, Some(name)) => {
                let vault =
                    crate::auth::Vault::open(&crate::auth::vault::vault_path(ctx.vault.as_deref()));
                let origin = format!("using connection `{name}` from {}", vault.path().display());
                let session = FyleSession::from_vault(ctx.http.clone(), vault, name)
                    .map_err(|e| BuildError::Other(e.into()))?;
                (session, Some(origin))
            }
            (None, None) => {
                let c = connection
                    .resolve("connection")
                    .map_err(BuildError::Config)?;
                let origin = format!("secrets resolved (client_id {})", c.client_id);
                (FyleSession::new(ctx.http.clone(), c), Some(origin))
            }
        };
        Ok(Self {
            cfg: cfg.clone(),
            fields: Arc::new(FieldSet::everything()),
            client: FyleClient::new(Arc::new(session)),
            writeback: cfg.writeback.clone(),
            origin,
        })
    }

    /// The `role/resource` path the source reads.
    fn path(&self) -> String {
        format!("{}/{}", self.cfg.role, self.cfg.resource)
    }
}

fn source_error(e: FyleError, cfg: &FyleSourceConfig) -> Error {
    match e {
        FyleError::Auth(a) => Error::from(a),
        other => Error::Source(format!(
            "reading {}/{} from Fyle failed: {other}",
            cfg.role, cfg.resource
        )),
    }
}

impl Source for FyleSource {
    fn cursor(&self) -> &str {
        self.cfg.cursor()
    }

    fn safety_lag(&self) -> Duration {
        self.cfg.safety_lag
    }

    /// Parallel slices deliver records in a timing-dependent order.
    fn reproducible_order(&self) -> bool {
        self.cfg.concurrency <= 1
    }

    fn make_reproducible(&mut self) {
        if self.cfg.concurrency > 1 {
            info!(
                configured = self.cfg.concurrency,
                "an HTTP sink needs reproducible batches; paging the source sequentially"
            );
            self.cfg.concurrency = 1;
        }
    }

    fn open(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.client.session().token().await?;
            Ok(())
        })
    }

    fn grants(&self) -> u64 {
        self.client.session().refresh_count()
    }

    /// A one-record request of the resource, whose `Date` header is the reading.
    fn server_clock(&self) -> BoxFuture<'_, Result<Option<ServerClock>, Error>> {
        Box::pin(async move {
            read_server_clock(&self.client, &self.cfg)
                .await
                .map_err(|e| source_error(e, &self.cfg))
        })
    }

    fn latest_server_clock(&self) -> BoxFuture<'_, Result<Option<ServerClock>, Error>> {
        Box::pin(async move {
            let cluster = self.client.session().token().await?.cluster.clone();
            Ok(self.client.session().http().server_clock(&cluster))
        })
    }

    fn read_only(&mut self, fields: FieldSet) {
        self.fields = Arc::new(fields);
    }

    fn fetch(
        &self,
        window: Window,
        pages: mpsc::Sender<Page>,
    ) -> BoxFuture<'static, Result<PagerStats, Error>> {
        let client = self.client.clone();
        let cfg = self.cfg.clone();
        let fields = self.fields.clone();
        Box::pin(async move {
            fetch_window(&client, &cfg, &fields, window, &pages)
                .await
                .map_err(|e| source_error(e, &cfg))
        })
    }

    fn probe(&self, window: Window) -> BoxFuture<'_, Result<Probe, Error>> {
        Box::pin(async move {
            let token = self.client.session().token().await?;
            let path = self.path();
            let url_of = |query: &[(String, String)]| {
                let base = token
                    .cluster
                    .join(&format!("platform/v1/{path}"))
                    .map(|u| u.to_string())
                    .unwrap_or_else(|_| format!("{}platform/v1/{path}", token.cluster));
                format!(
                    "{base}?{}",
                    serde_urlencoded::to_string(query).unwrap_or_default()
                )
            };
            let first = first_page_query(&self.cfg, window);
            let mut probe = first.clone();
            for (k, v) in probe.iter_mut() {
                if k == "limit" {
                    *v = "1".into();
                }
            }
            let body = self.client.get(&path, &probe).await.map_err(|e| {
                Error::Source(format!(
                    "reading {path} from Fyle failed (count probe of the dry run): {e}"
                ))
            })?;
            let count = body
                .get("count")
                .and_then(|c| c.to_string().parse::<u64>().ok());
            Ok(Probe {
                count_probe: url_of(&probe),
                count,
                first_page: url_of(&first),
                page_size: self.cfg.page_size,
                concurrency: self.cfg.concurrency.max(1),
            })
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<Option<(String, crate::ExitCode)>, Error>> {
        if let Some(origin) = &self.origin {
            println!("ok   {origin}");
        }
        Box::pin(check(&self.client, &self.cfg))
    }

    fn wants_exported_ids(&self) -> bool {
        self.writeback.is_some()
    }

    /// The write-back plan: which ids to mark `COMPLETE`, which `ERROR`.
    fn stage_after_commit(
        &self,
        run: &RunFiles<'_>,
        exported: &mut crate::sources::ExportedIds,
        rejected: &HashMap<String, String>,
    ) -> Result<Option<StagedFile>, Error> {
        if self.writeback.is_none() || exported.is_empty() {
            return Ok(None);
        }
        let path: PathBuf = plan_path(run.output_dir, run.pipeline, run.run_id);
        stage_plan(&path, &run.temp_tag, exported, rejected)
            .map(Some)
            .map_err(|e| Error::Sink(format!("write-back plan {}: {e}", path.display())))
    }

    /// Carries out every write-back plan still pending, this run's included.
    fn after_commit<'a>(
        &'a self,
        run: &'a RunFiles<'a>,
    ) -> Option<BoxFuture<'a, WriteBackSummary>> {
        let cfg = self.writeback.as_ref()?;
        Some(Box::pin(run_pending(
            &self.client,
            cfg,
            &run.location,
            run.pipeline,
        )))
    }

    fn after_commit_interrupted(&self) -> Error {
        Error::Interrupted(
            "interrupted during the write-back to Fyle: the run's outputs and state were \
             committed; the write-back plan stays pending and the next run carries it out"
                .into(),
        )
    }
}

/// Reads the data server's clock with a one-record request of the resource;
/// `None` when it sends no `Date` header (windows then follow this machine's clock).
async fn read_server_clock(
    client: &FyleClient,
    cfg: &FyleSourceConfig,
) -> Result<Option<ServerClock>, FyleError> {
    let path = format!("{}/{}", cfg.role, cfg.resource);
    client
        .get(&path, &[("limit".to_string(), "1".to_string())])
        .await?;
    let cluster = client.session().token().await?.cluster.clone();
    let clock = client.session().http().server_clock(&cluster);
    // The Date header has one-second precision: smaller skews cannot be told apart.
    let noticeable = chrono::Duration::from_std(cfg.safety_lag)
        .unwrap_or_default()
        .max(chrono::Duration::seconds(1));
    match clock {
        Some(c) if c.skew().abs() > noticeable => {
            warn!(
                skew_ms = c.skew().num_milliseconds(),
                "the data server's clock is {} this machine's (more than source.safety_lag); \
                 windows end by the server's clock. Check NTP on this machine",
                crate::http::describe_skew(c.skew())
            );
        }
        Some(_) => {}
        None => warn!(
            "the data server sent no Date header; windows end by this machine's clock, \
             which must agree with the server's to within source.safety_lag"
        ),
    }
    Ok(clock)
}

/// `expense-sync check` for Fyle: token, cluster, the user's roles, and one
/// read of the resource with the pipeline's filters.
async fn check(
    client: &FyleClient,
    src: &FyleSourceConfig,
) -> Result<Option<(String, crate::ExitCode)>, Error> {
    let session = client.session();
    let accounts = session.accounts_url().clone();
    let token = session.token().await?;
    println!("ok   access token granted by {accounts}");
    println!("ok   cluster is {}", token.cluster);
    let profile = client
        .my_profile()
        .await
        .map_err(|e| Error::Auth(format!("GET /spender/my_profile failed: {e}")))?;
    let data = profile.get("data").unwrap_or(&profile);
    let email = data
        .pointer("/user/email")
        .and_then(|v| v.as_str())
        .unwrap_or("(unknown user)");
    let org = data
        .pointer("/org/name")
        .and_then(|v| v.as_str())
        .unwrap_or("(unknown org)");
    let roles: Vec<String> = data
        .get("roles")
        .and_then(|r| r.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "ok   signed in as {email} in {org}; roles: {}",
        roles.join(", ")
    );
    let needed = src.role.to_uppercase();
    let has_role = roles
        .iter()
        .any(|r| *r == needed || (needed == "SPENDER" && r == "FYLER"));
    if !has_role {
        return Ok(Some((
            format!(
                "source.role is `{}` but {email} has roles [{}]; use a user with that role or change source.role",
                src.role,
                roles.join(", ")
            ),
            crate::ExitCode::Auth,
        )));
    }
    println!("ok   role `{}` is present", src.role);
    let mut query = src.filter_pairs();
    query.push(("limit".into(), "1".into()));
    let body = client
        .get(&format!("{}/{}", src.role, src.resource), &query)
        .await
        .map_err(|e| Error::Source(format!("reading {}/{} failed: {e}", src.role, src.resource)))?;
    let count = body
        .get("count")
        .map(|c| c.to_string())
        .unwrap_or_else(|| "?".into());
    println!(
        "ok   {}/{} answers; {count} record(s) match the filters",
        src.role, src.resource
    );
    Ok(None)
}
