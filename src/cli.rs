//! Command line: `run`, `check`, `demo`, `simulate`, `completions`, `man`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use clap::{Parser, Subcommand, ValueEnum};
use secrecy::SecretString;

use crate::auth::{FyleCredentials, FyleSession};
use crate::config::{self, Pipeline};
use crate::error::{Error, ExitCode};
use crate::http::HttpClient;
use crate::pipeline::{self, RunMode, RunOptions, RunOutcome};
use crate::simulator::{Faults, SimConfig, Simulator};
use crate::sources::SourceConfig;
use crate::sources::fyle::FyleClient;

/// The demo pipeline, built in so `demo` works from any directory.
pub const DEMO_PIPELINE: &str = include_str!("../pipelines/demo.toml");

/// expense-sync: export Fyle expense data to CSV, Parquet and other systems.
#[derive(Debug, Parser)]
#[command(name = "expense-sync", version, about, long_about = None)]
pub struct Cli {
    /// Log detail for expense-sync's own messages (error, warn, info, debug, trace).
    /// EXPENSE_SYNC_LOG, if set, is used instead as a full tracing filter.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Credential vault file (default: $XDG_CONFIG_HOME/expense-sync/vault.json).
    #[arg(long, global = true, env = "EXPENSE_SYNC_VAULT")]
    pub vault: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// What `run` prints on stdout when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SummaryFormat {
    /// The full run summary as JSON.
    Json,
    /// One line for people, e.g. for cron mail.
    Text,
    /// Nothing (errors and warnings still go to stderr).
    None,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline once: export, write outputs atomically, print a JSON summary on stdout.
    Run {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Write outputs under this directory instead of the file's pipeline.output_dir.
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// Also write the JSON run summary to this file.
        #[arg(long)]
        summary: Option<PathBuf>,
        /// What to print on stdout at the end: the JSON summary, one line for people (cron mail), or nothing.
        #[arg(long, value_enum, default_value = "json")]
        summary_format: SummaryFormat,
        /// Write run metrics (OpenMetrics text) to this file for node-exporter's textfile collector; overrides [metrics] textfile.
        #[arg(long, value_name = "FILE")]
        metrics_file: Option<PathBuf>,
        /// Push run metrics to this Pushgateway base URL; overrides [metrics] pushgateway.
        #[arg(long, value_name = "URL")]
        metrics_push: Option<String>,
        /// Export everything from incremental.start and reset the watermark to now.
        #[arg(long, conflicts_with_all = ["since", "until"])]
        full_refresh: bool,
        /// Backfill from this instant (RFC 3339 or YYYY-MM-DD, UTC); leaves the incremental state alone.
        #[arg(long, value_parser = parse_instant)]
        since: Option<DateTime<Utc>>,
        /// Backfill up to this instant (exclusive); default now minus the safety lag.
        #[arg(long, value_parser = parse_instant)]
        until: Option<DateTime<Utc>>,
    },
    /// Show a pipeline's incremental state (watermark, pending commit, recent runs).
    State {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// The output directory the pipeline runs with, if overridden with --output-dir.
        #[arg(long)]
        output_dir: Option<PathBuf>,
    },
    /// Validate a pipeline file, then check credentials, cluster, roles and the resource.
    Check {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Only validate the file; make no network calls.
        #[arg(long)]
        offline: bool,
    },
    /// Export from the built-in simulator with pipelines/demo.toml: no credentials, no network.
    Demo {
        /// Folder for the CSV and Parquet files.
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Number of simulated expenses.
        #[arg(long, default_value_t = 500)]
        expenses: usize,
        /// Seed for the simulated data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Use this pipeline file instead of the built-in demo pipeline.
        #[arg(long)]
        pipeline: Option<PathBuf>,
    },
    /// Manage stored connections in the credential vault: add, login, list, refresh-all, revoke, remove.
    Auth {
        /// What to do.
        #[command(subcommand)]
        action: crate::auth::cmd::AuthCommand,
    },
    /// Serve a local, faithful Fyle platform simulator until Ctrl-C.
    Simulate {
        /// Port of the accounts server (`/oauth/token`, `/oauth/cluster`).
        #[arg(long, default_value_t = 8600)]
        port: u16,
        /// Port of the data cluster (`/platform/v1/…`); default port + 1.
        #[arg(long)]
        cluster_port: Option<u16>,
        /// Seed for the simulated data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Number of simulated expenses.
        #[arg(long, default_value_t = 500)]
        expenses: usize,
        /// Requests per second per client before 429; 0 turns the limit off.
        #[arg(long, default_value_t = 10)]
        rate_limit: u32,
        /// Access-token lifetime, e.g. "1h" or "30s".
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        token_ttl: Duration,
        /// Probability (0–1) that a data request answers 5xx.
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Delay added to every response, e.g. "150ms".
        #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
        latency: Duration,
        /// Expenses changed per second in the background while clients page.
        #[arg(long, default_value_t = 0)]
        mutate_per_sec: u32,
        /// Also serve the test receiver for HTTP pushes on this port (see `pipelines/push-to-receiver.toml`).
        #[arg(long)]
        receiver_port: Option<u16>,
        /// Signing secret the receiver verifies batches with (read from the environment only).
        #[arg(
            long = "receiver-secret",
            env = "RECEIVER_SIGNING_SECRET",
            hide = true,
            hide_env_values = true
        )]
        receiver_secret: Option<String>,
    },
    /// Print a shell completion script on stdout, e.g. `expense-sync completions bash > /etc/bash_completion.d/expense-sync`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout, e.g. `expense-sync man > /usr/local/share/man/man1/expense-sync.1`.
    Man,
}

/// Parses the command line, runs the command and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::Internal.code();
        }
    };
    let result = runtime.block_on(dispatch(cli.command, cli.vault));
    match result {
        Ok(code) => code.code(),
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code().code()
        }
    }
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    // Other crates stay at warn unless the user asks for them explicitly:
    // their trace output is not written with secrets in mind.
    let filter = std::env::var("EXPENSE_SYNC_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| {
            EnvFilter::try_new(format!("warn,expense_sync={}", cli.log_level))
                .unwrap_or_else(|_| EnvFilter::new("warn,expense_sync=info"))
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match cli.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

async fn dispatch(command: Command, vault: Option<PathBuf>) -> Result<ExitCode, Error> {
    match command {
        Command::Auth { action } => crate::auth::cmd::run(action, vault).await,
        Command::Run {
            pipeline,
            output_dir,
            summary,
            summary_format,
            metrics_file,
            metrics_push,
            full_refresh,
            since,
            until,
        } => {
            let mode = if full_refresh {
                RunMode::FullRefresh
            } else if since.is_some() || until.is_some() {
                RunMode::Backfill { since, until }
            } else {
                RunMode::Auto
            };
            let p = config::load(&pipeline)?;
            let http = HttpClient::new(&p.spec.http).map_err(|e| Error::Internal(e.to_string()))?;
            let opts = RunOptions {
                output_dir,
                credentials: None,
                mode,
                vault,
            };
            let outcome = pipeline::run(&p, &http, &opts).await;
            let mut metrics = p.spec.metrics.clone().unwrap_or_default();
            if metrics_file.is_some() {
                metrics.textfile = metrics_file;
            }
            if metrics_push.is_some() {
                metrics.pushgateway = metrics_push;
            }
            if metrics.is_enabled() {
                for problem in crate::metrics::export(&metrics, &outcome.summary).await {
                    eprintln!("warning: {problem}");
                }
            }
            report_run(&outcome, summary.as_deref(), summary_format)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "expense-sync", &mut std::io::stdout());
            Ok(ExitCode::Ok)
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|e| Error::Internal(format!("cannot write the man page: {e}")))?;
            Ok(ExitCode::Ok)
        }
        Command::Check { pipeline, offline } => check(&pipeline, offline, vault).await,
        Command::State {
            pipeline,
            output_dir,
        } => {
            let p = config::load(&pipeline)?;
            let dir = output_dir.unwrap_or_else(|| p.spec.pipeline.output_dir.clone());
            let path = p.state_path(&dir);
            let SourceConfig::Fyle(src) = &p.spec.source;
            let st = crate::state::load(&path, p.name(), src.cursor())
                .map_err(|e| Error::State(e.to_string()))?;
            eprintln!("state file: {}", path.display());
            println!(
                "{}",
                serde_json::to_string_pretty(&st).map_err(|e| Error::Internal(e.to_string()))?
            );
            Ok(ExitCode::Ok)
        }
        Command::Demo {
            out,
            expenses,
            seed,
            pipeline,
        } => demo(out, expenses, seed, pipeline).await,
        Command::Simulate {
            port,
            cluster_port,
            seed,
            expenses,
            rate_limit,
            token_ttl,
            error_rate,
            latency,
            mutate_per_sec,
            receiver_port,
            receiver_secret,
        } => {
            let cfg = SimConfig {
                seed,
                expenses,
                rate_limit: (rate_limit > 0).then_some(rate_limit),
                token_ttl,
                faults: Faults {
                    error_rate,
                    latency,
                    mutations_per_sec: mutate_per_sec,
                    ..Faults::default()
                },
                ..SimConfig::default()
            };
            let cluster_port = cluster_port.unwrap_or(port.saturating_add(1));
            let receiver = match receiver_port {
                None => None,
                Some(rp) => {
                    use crate::simulator::receiver::{Receiver, ReceiverConfig};
                    let signed = receiver_secret.is_some();
                    let r = Receiver::start_on(
                        ReceiverConfig {
                            secret: receiver_secret,
                            ..ReceiverConfig::default()
                        },
                        rp,
                    )
                    .await
                    .map_err(|e| Error::Internal(format!("receiver on port {rp}: {e}")))?;
                    println!(
                        "Test receiver for HTTP pushes: {} ({})",
                        r.url(),
                        if signed {
                            "verifying signatures with RECEIVER_SIGNING_SECRET"
                        } else {
                            "not verifying signatures: RECEIVER_SIGNING_SECRET is not set"
                        }
                    );
                    Some(r)
                }
            };
            crate::simulator::run_until_ctrl_c(cfg, port, cluster_port)
                .await
                .map_err(|e| Error::Internal(format!("simulator: {e}")))?;
            if let Some(r) = receiver {
                let s = r.stats();
                println!(
                    "receiver: {} batches accepted, {} duplicates answered from memory, {} bad signatures",
                    s.batches, s.duplicate_batches, s.bad_signatures
                );
                r.shutdown().await;
            }
            Ok(ExitCode::Ok)
        }
    }
}

/// Prints the summary on stdout in `format` (and the JSON to `summary_file`), the error on stderr.
fn report_run(
    outcome: &RunOutcome,
    summary_file: Option<&Path>,
    format: SummaryFormat,
) -> Result<ExitCode, Error> {
    let json = serde_json::to_string_pretty(&outcome.summary)
        .map_err(|e| Error::Internal(format!("cannot render the summary: {e}")))?;
    match format {
        SummaryFormat::Json => println!("{json}"),
        SummaryFormat::Text => println!("{}", summary_line(&outcome.summary)),
        SummaryFormat::None => {}
    }
    if let Some(path) = summary_file {
        crate::fsutil::write_atomic(path, json.as_bytes(), &outcome.summary.run_id)
            .map_err(|e| Error::Sink(format!("cannot write the run summary: {e}")))?;
    }
    if let Some(e) = &outcome.error {
        eprintln!("error: {e}");
    } else if let Some(q) = &outcome.summary.quarantine_file {
        eprintln!(
            "warning: {} record(s) could not be exported and were quarantined with their reasons in {}",
            outcome.summary.quarantined,
            q.display()
        );
    }
    Ok(outcome.exit_code())
}

/// The run in one line for people: status, counts, files, requests.
pub fn summary_line(s: &crate::pipeline::RunSummary) -> String {
    use crate::pipeline::RunStatus;
    let secs = s.duration_ms as f64 / 1000.0;
    let head = format!("expense-sync {}:", s.pipeline);
    if s.status == RunStatus::Failed {
        let why = s
            .error
            .as_deref()
            .and_then(|e| e.lines().next())
            .unwrap_or("unknown error");
        return format!(
            "{head} FAILED (exit {}) after {secs:.1}s, nothing committed: {why}",
            s.exit_code
        );
    }
    let mut line = format!(
        "{head} {} — {} of {} record(s) exported in {secs:.1}s",
        if s.status == RunStatus::Partial {
            "PARTIAL"
        } else {
            "ok"
        },
        s.records_out,
        s.records_in
    );
    if s.outputs.is_empty() {
        line.push_str(", nothing written");
    } else {
        let paths: Vec<String> = s
            .outputs
            .iter()
            .map(|o| o.path.display().to_string())
            .collect();
        line.push_str(&format!(" to {}", paths.join(", ")));
    }
    if s.quarantined > 0 {
        line.push_str(&format!("; {} quarantined", s.quarantined));
    }
    if s.rejected > 0 {
        line.push_str(&format!("; {} rejected", s.rejected));
    }
    line.push_str(&format!(
        "; {} request(s), {} retried, {} throttled",
        s.http.requests, s.http.retries, s.http.throttled_429
    ));
    if s.exit_code != 0 {
        line.push_str(&format!(" (exit {})", s.exit_code));
    }
    line
}

async fn check(path: &Path, offline: bool, vault: Option<PathBuf>) -> Result<ExitCode, Error> {
    let p = config::load(path)?;
    println!("ok   pipeline file {} is valid", path.display());
    if offline {
        return Ok(ExitCode::Ok);
    }
    let http = HttpClient::new(&p.spec.http).map_err(|e| Error::Internal(e.to_string()))?;
    let session = match &p.spec.connection.vault {
        Some(name) => {
            let v = crate::auth::Vault::open(&crate::auth::vault::vault_path(vault.as_deref()));
            println!("ok   using connection `{name}` from {}", v.path().display());
            FyleSession::from_vault(http, v, name)?
        }
        None => {
            let creds = p
                .spec
                .connection
                .resolve("connection")
                .map_err(|problems| config::ConfigError {
                    file: path.to_path_buf(),
                    problems,
                })?;
            println!("ok   secrets resolved (client_id {})", creds.client_id);
            FyleSession::new(http, creds)
        }
    };
    check_connection(&p, session).await
}

async fn check_connection(p: &Pipeline, session: FyleSession) -> Result<ExitCode, Error> {
    let accounts = session.accounts_url().clone();
    let session = std::sync::Arc::new(session);
    let token = session.token().await?;
    println!("ok   access token granted by {accounts}");
    println!("ok   cluster is {}", token.cluster);
    let client = FyleClient::new(session);
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
    let SourceConfig::Fyle(src) = &p.spec.source;
    let needed = src.role.to_uppercase();
    let has_role = roles
        .iter()
        .any(|r| *r == needed || (needed == "SPENDER" && r == "FYLER"));
    if !has_role {
        eprintln!(
            "FAIL source.role is `{}` but {email} has roles [{}]; use a user with that role or change source.role",
            src.role,
            roles.join(", ")
        );
        return Ok(ExitCode::Auth);
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
    Ok(ExitCode::Ok)
}

async fn demo(
    out: PathBuf,
    expenses: usize,
    seed: u64,
    pipeline: Option<PathBuf>,
) -> Result<ExitCode, Error> {
    let p = match &pipeline {
        Some(path) => config::load(path)?,
        None => config::load_str(DEMO_PIPELINE, Path::new("pipelines/demo.toml (built in)"))?,
    };
    let sim = Simulator::start(SimConfig {
        seed,
        expenses,
        ..SimConfig::default()
    })
    .await
    .map_err(|e| Error::Internal(format!("cannot start the simulator: {e}")))?;
    eprintln!(
        "simulator: {expenses} expenses (seed {seed}) at {} — local only, no credentials, no network",
        sim.accounts_url()
    );
    let c = sim.credentials();
    let creds = FyleCredentials {
        accounts_url: url::Url::parse(&sim.accounts_url())
            .map_err(|e| Error::Internal(e.to_string()))?,
        client_id: c.client_id.clone(),
        client_secret: SecretString::from(c.client_secret.clone()),
        refresh_token: SecretString::from(c.refresh_token.clone()),
    };
    let http = HttpClient::new(&p.spec.http).map_err(|e| Error::Internal(e.to_string()))?;
    let opts = RunOptions {
        output_dir: Some(out),
        credentials: Some(creds),
        mode: RunMode::Auto,
        vault: None,
    };
    let outcome = pipeline::run(&p, &http, &opts).await;
    sim.shutdown().await;
    if let Some(e) = outcome.error {
        return Err(e);
    }
    let s = &outcome.summary;
    eprintln!(
        "\nexported {} of {} records in {:.1}s ({} requests, {} retries, {} throttled)",
        s.records_out,
        s.records_in,
        s.duration_ms as f64 / 1000.0,
        s.http.requests,
        s.http.retries,
        s.http.throttled_429
    );
    for o in &s.outputs {
        eprintln!(
            "  {:<8} {} ({} rows, {} bytes)",
            o.kind,
            o.path.display(),
            o.rows,
            o.bytes
        );
    }
    if let Some(q) = &s.quarantine_file {
        eprintln!("  quarantined {} record(s): {}", s.quarantined, q.display());
    }
    Ok(outcome_code(s.quarantined))
}

fn outcome_code(quarantined: u64) -> ExitCode {
    if quarantined > 0 {
        ExitCode::Partial
    } else {
        ExitCode::Ok
    }
}

/// Parses `2024-03-01T00:00:00Z`, `2024-03-01T05:30:00+05:30` or `2024-03-01` (midnight UTC).
fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc())
        .map_err(|_| format!("`{s}` is not a time; write 2024-03-01T00:00:00Z or 2024-03-01"))
}
