//! Tenants: one pipeline definition run for many vault connections, each
//! with its own state, output directory and summary; one failing tenant never
//! stops the others. See "Many tenants and shards" in the README.

pub mod shard;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::common::{ConfigError, Problem};
use crate::config::Pipeline;
use crate::error::ExitCode;
use crate::http::HttpClient;
use crate::pipeline::{self, RunOptions, RunOutcome, RunStatus, RunSummary};

pub use shard::Shard;

/// The placeholder for the tenant's name in `output_dir` and `state_path`.
pub const TENANT: &str = "{tenant}";

/// Tenants running at once unless `--tenant-concurrency` says otherwise.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// One tenant: a name and the vault connection it exports with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Used for `{tenant}`, in the summary and in logs (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// The vault connection; default: the same as `name`.
    #[serde(default)]
    pub connection: Option<String>,
    /// Overrides the output directory for this tenant (`{tenant}` is replaced).
    #[serde(default)]
    pub output_dir: Option<String>,
    /// Overrides the state file for this tenant (`{tenant}` is replaced).
    #[serde(default)]
    pub state_path: Option<String>,
}

impl Tenant {
    /// A tenant named after its vault connection.
    pub fn of_connection(name: &str) -> Tenant {
        Tenant {
            name: name.to_string(),
            connection: None,
            output_dir: None,
            state_path: None,
        }
    }

    /// The vault connection this tenant uses.
    pub fn connection(&self) -> &str {
        self.connection.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    #[serde(default)]
    tenants: Vec<Tenant>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks names (they become directory names) and that none repeats.
fn validate(tenants: &[Tenant], file: &Path) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, t) in tenants.iter().enumerate() {
        if !valid_name(&t.name) {
            problems.push(Problem::new(
                format!("tenants[{i}].name"),
                format!(
                    "`{}` cannot be a tenant name: it names a directory, so use only letters, digits, \
                     `-`, `_` and `.` (not first)",
                    t.name
                ),
            ));
        }
        if !seen.insert(t.name.as_str()) {
            problems.push(Problem::new(
                format!("tenants[{i}].name"),
                format!(
                    "tenant `{}` is listed twice; each tenant needs its own name",
                    t.name
                ),
            ));
        }
    }
    if tenants.is_empty() {
        problems.push(Problem::new(
            "tenants",
            "no tenants listed: add [[tenants]] tables with at least `name` (and `connection` if \
             the vault connection is named differently)",
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError {
            file: file.to_path_buf(),
            problems,
        })
    }
}

/// Reads a tenants file: `[[tenants]]` tables with `name`, and optionally
/// `connection`, `output_dir`, `state_path`.
pub fn load_file(path: &Path) -> Result<Vec<Tenant>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::single(path, "(file)", format!("cannot read the tenants file: {e}"))
    })?;
    parse_file(&text, path)
}

/// Parses a tenants file's text (see [`load_file`]).
pub fn parse_file(text: &str, path: &Path) -> Result<Vec<Tenant>, ConfigError> {
    let f: TenantsFile = toml::from_str(text)
        .map_err(|e| ConfigError::single(path, "(file)", e.message().to_string()))?;
    validate(&f.tenants, path)?;
    Ok(f.tenants)
}

/// `--connections all` (every Fyle connection in the vault) or `a,b,c`.
pub fn from_connections(
    spec: &str,
    vault: &crate::auth::Vault,
) -> Result<Vec<Tenant>, crate::Error> {
    let names: Vec<String> = if spec.trim() == "all" {
        vault
            .load()
            .map_err(|e| {
                crate::Error::Config(ConfigError::single(vault.path(), "(vault)", e.to_string()))
            })?
            .into_iter()
            .filter(|(_, c)| c.profile == crate::auth::vault::Profile::Fyle)
            .map(|(name, _)| name)
            .collect()
    } else {
        spec.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let tenants: Vec<Tenant> = names.iter().map(|n| Tenant::of_connection(n)).collect();
    if tenants.is_empty() && spec.trim() == "all" {
        return Err(crate::Error::Config(ConfigError::single(
            vault.path(),
            "--connections",
            "the vault has no Fyle connections: add them with `expense-sync auth add`",
        )));
    }
    validate(&tenants, Path::new("--connections"))?;
    Ok(tenants)
}

/// Replaces `{tenant}` in a templated location.
fn template(s: &str, tenant: &str) -> String {
    s.replace(TENANT, tenant)
}

/// The pipeline and run options one tenant runs with: its vault connection,
/// output directory (`{tenant}` replaced, or the tenant's own directory under
/// the output directory when there is no `{tenant}`) and state file.
pub fn for_tenant(
    pipeline: &Pipeline,
    opts: &RunOptions,
    tenant: &Tenant,
) -> Result<(Pipeline, RunOptions), ConfigError> {
    let mut p = pipeline.clone();
    // The vault connection carries the tenant's credentials; inline ones are not its.
    p.spec.source.use_vault_connection(tenant.connection());
    let base = tenant.output_dir.clone().unwrap_or_else(|| {
        opts.output_dir
            .as_ref()
            .unwrap_or(&pipeline.spec.pipeline.output_dir)
            .to_string_lossy()
            .into_owned()
    });
    // Output and state locations are kept as strings: they may be URLs.
    let output_dir = if base.contains(TENANT) {
        template(&base, &tenant.name)
    } else {
        format!("{}/{}", base.trim_end_matches('/'), tenant.name)
    };
    let state = match (&tenant.state_path, &pipeline.spec.pipeline.state_path) {
        (Some(s), _) => Some(template(s, &tenant.name)),
        (None, Some(s)) => {
            let s = s.to_string_lossy();
            if !s.contains(TENANT) {
                return Err(ConfigError::single(
                    &pipeline.file,
                    "pipeline.state_path",
                    format!(
                        "`{s}` has no {TENANT}: every tenant would share one state file. Put \
                         {TENANT} in it (e.g. /data/state/{TENANT}/{}.state.json) or remove \
                         state_path to keep each tenant's state in its output directory",
                        pipeline.name()
                    ),
                ));
            }
            Some(template(&s, &tenant.name))
        }
        (None, None) => None,
    };
    p.spec.pipeline.output_dir = PathBuf::from(&output_dir);
    p.spec.pipeline.state_path = state.map(PathBuf::from);
    let o = RunOptions {
        output_dir: Some(PathBuf::from(output_dir)),
        credentials: None,
        // Several tenants at once cannot share one live line.
        live_progress: false,
        ..opts.clone()
    };
    Ok((p, o))
}

/// One tenant's run.
#[derive(Debug)]
pub struct TenantRun {
    /// Which tenant.
    pub tenant: Tenant,
    /// How its run ended; `summary.tenant` names it.
    pub outcome: RunOutcome,
}

/// Runs `pipeline` for every tenant, up to `concurrency` at a time, all
/// sharing `http` (and so its request budget, fairly). Every tenant is run
/// whatever happens to the others; the results come back in `tenants` order.
pub async fn run_all(
    pipeline: &Pipeline,
    http: &HttpClient,
    opts: &RunOptions,
    tenants: &[Tenant],
    concurrency: usize,
) -> Result<Vec<TenantRun>, ConfigError> {
    // Every tenant's settings are checked before any tenant starts.
    let prepared = tenants
        .iter()
        .map(|t| for_tenant(pipeline, opts, t).map(|po| (t, po)))
        .collect::<Result<Vec<_>, _>>()?;
    let runs = futures::stream::iter(prepared.into_iter().enumerate().map(
        |(i, (tenant, (p, o)))| {
            let http = http.for_tenant(&tenant.name);
            let span = tracing::info_span!("tenant", tenant = %tenant.name);
            async move {
                let mut outcome = pipeline::run(&p, &http, &o).await;
                outcome.summary.tenant = Some(tenant.name.clone());
                (
                    i,
                    TenantRun {
                        tenant: tenant.clone(),
                        outcome,
                    },
                )
            }
            .instrument(span)
        },
    ))
    .buffer_unordered(concurrency.max(1))
    .collect::<Vec<_>>()
    .await;
    let mut runs = runs;
    runs.sort_by_key(|(i, _)| *i);
    Ok(runs.into_iter().map(|(_, r)| r).collect())
}

/// How bad an exit code is, for the process exit code of many tenants: a
/// stop or a bug first, then what a person must fix, then what a retry may
/// fix, then runs that committed with something to look at.
fn severity(code: ExitCode) -> u8 {
    match code {
        ExitCode::Ok => 0,
        ExitCode::Partial => 1,
        ExitCode::WriteBack => 2,
        ExitCode::Locked => 3,
        ExitCode::Source => 4,
        ExitCode::Sink => 5,
        ExitCode::Auth => 6,
        ExitCode::Reconnect => 7,
        ExitCode::State => 8,
        ExitCode::Config => 9,
        ExitCode::Internal => 10,
        ExitCode::Interrupted => 11,
    }
}

/// The worst of `codes` (see the README's exit code table); `Ok` when empty.
pub fn worst(codes: impl IntoIterator<Item = ExitCode>) -> ExitCode {
    codes
        .into_iter()
        .max_by_key(|c| severity(*c))
        .unwrap_or(ExitCode::Ok)
}

/// The summary of a multi-tenant run, printed as JSON at the end of `run`.
#[derive(Debug, Clone, Serialize)]
pub struct TenantsSummary {
    /// Pipeline name.
    pub pipeline: String,
    /// The worst tenant's status.
    pub status: RunStatus,
    /// The process exit code: the worst tenant's.
    pub exit_code: i32,
    /// This process's shard (`INDEX/COUNT`), when sharded.
    pub shard: Option<String>,
    /// Tenants selected before sharding.
    pub tenants_selected: usize,
    /// Tenants this process ran (its shard's).
    pub tenants_run: usize,
    /// Tenants whose run failed or was interrupted.
    pub tenants_failed: usize,
    /// Each tenant's run summary, in the order the tenants were listed.
    pub tenants: Vec<RunSummary>,
}

impl TenantsSummary {
    /// Sums up `runs`.
    pub fn new(
        pipeline: &str,
        shard: Option<Shard>,
        selected: usize,
        runs: &[TenantRun],
    ) -> TenantsSummary {
        let code = worst(runs.iter().map(|r| r.outcome.exit_code()));
        let statuses: Vec<RunStatus> = runs.iter().map(|r| r.outcome.summary.status).collect();
        let status = [
            RunStatus::Interrupted,
            RunStatus::Failed,
            RunStatus::Partial,
        ]
        .into_iter()
        .find(|s| statuses.contains(s))
        .unwrap_or(RunStatus::Ok);
        TenantsSummary {
            pipeline: pipeline.to_string(),
            status,
            exit_code: code.code(),
            shard: shard.map(|s| s.to_string()),
            tenants_selected: selected,
            tenants_run: runs.len(),
            tenants_failed: statuses
                .iter()
                .filter(|s| matches!(s, RunStatus::Failed | RunStatus::Interrupted))
                .count(),
            tenants: runs.iter().map(|r| r.outcome.summary.clone()).collect(),
        }
    }

    /// The closing line for people after each tenant's own line.
    pub fn line(&self) -> String {
        let shard = self
            .shard
            .as_ref()
            .map(|s| format!(" on shard {s} (of {} selected)", self.tenants_selected))
            .unwrap_or_default();
        let ok = self.tenants_run - self.tenants_failed;
        let mut line = format!(
            "expense-sync {}: {} tenant(s){shard} — {ok} committed, {} failed",
            self.pipeline, self.tenants_run, self.tenants_failed
        );
        if self.exit_code != 0 {
            line.push_str(&format!(" (exit {})", self.exit_code));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(extra: &str) -> Pipeline {
        let text = format!(
            r#"
[pipeline]
name = "p"
output_dir = "/data/out"
{extra}

[connection]
vault = "ignored"

[source]
type = "fyle"
resource = "expenses"

[[sinks]]
type = "csv"
path = "x.csv"
"#
        );
        crate::config::load_str(&text, Path::new("p.toml")).unwrap()
    }

    #[test]
    fn each_tenant_gets_its_own_directory_under_the_output_dir_unless_templated() {
        let t = Tenant::of_connection("acme");
        let (p, o) = for_tenant(&pipeline(""), &RunOptions::default(), &t).unwrap();
        assert_eq!(o.output_dir.unwrap(), PathBuf::from("/data/out/acme"));
        let crate::sources::SourceConfig::Fyle(fyle) = &p.spec.source else {
            panic!("a fyle source")
        };
        assert_eq!(
            fyle.connection.as_ref().and_then(|c| c.vault.as_deref()),
            Some("acme")
        );
        assert_eq!(
            p.state_path(&p.spec.pipeline.output_dir),
            PathBuf::from("/data/out/acme/p.state.json")
        );
        let opts = RunOptions {
            output_dir: Some("s3://bucket/{tenant}/exports".into()),
            ..RunOptions::default()
        };
        let (_, o) = for_tenant(&pipeline(""), &opts, &t).unwrap();
        assert_eq!(
            o.output_dir.unwrap(),
            PathBuf::from("s3://bucket/acme/exports")
        );
    }

    #[test]
    fn a_shared_state_path_without_tenant_is_refused() {
        let t = Tenant::of_connection("acme");
        let e = for_tenant(
            &pipeline(r#"state_path = "/data/state/p.json""#),
            &RunOptions::default(),
            &t,
        )
        .unwrap_err();
        assert!(e.to_string().contains("{tenant}"), "{e}");
        let (p, _) = for_tenant(
            &pipeline(r#"state_path = "/data/state/{tenant}.json""#),
            &RunOptions::default(),
            &t,
        )
        .unwrap();
        assert_eq!(
            p.spec.pipeline.state_path.unwrap(),
            PathBuf::from("/data/state/acme.json")
        );
    }

    #[test]
    fn tenants_file_lists_names_connections_and_overrides_and_rejects_bad_names() {
        let ts = parse_file(
            r#"
[[tenants]]
name = "acme"
connection = "acme-fyle"

[[tenants]]
name = "globex"
output_dir = "/elsewhere/{tenant}"
"#,
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(ts[0].connection(), "acme-fyle");
        assert_eq!(ts[1].connection(), "globex");
        let e = parse_file(
            "[[tenants]]\nname = \"../x\"\n[[tenants]]\nname = \"a\"\n[[tenants]]\nname = \"a\"\n",
            Path::new("t.toml"),
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("tenants[0].name") && text.contains("listed twice"),
            "{text}"
        );
    }

    #[test]
    fn the_worst_exit_code_wins() {
        assert_eq!(worst([]), ExitCode::Ok);
        assert_eq!(worst([ExitCode::Ok, ExitCode::Partial]), ExitCode::Partial);
        assert_eq!(
            worst([ExitCode::Partial, ExitCode::Auth, ExitCode::Source]),
            ExitCode::Auth
        );
        assert_eq!(
            worst([ExitCode::Locked, ExitCode::WriteBack, ExitCode::Ok]),
            ExitCode::Locked
        );
    }
}
