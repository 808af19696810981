//! Command line: `run`, `check`, `demo`, `simulate`, `completions`, `man`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use secrecy::SecretString;

use crate::auth::FyleCredentials;
use crate::config;
use crate::error::{Error, ExitCode};
use crate::http::HttpClient;
use crate::pipeline::{self, CancelToken, RunMode, RunOptions, RunOutcome};
use crate::simulator::{Faults, SimConfig, Simulator};

/// The demo pipeline, built in so `demo` works from any directory.
pub const DEMO_PIPELINE: &str = include_str!("../pipelines/demo.toml");

/// expense-sync: export Fyle expense data to CSV, Parquet and other systems.
#[derive(Debug, Parser)]
#[command(name = "expense-sync", version, about, long_about = None)]
pub struct Cli {
    /// Log detail for expense-sync's own messages.
    /// EXPENSE_SYNC_LOG, if set, is used instead as a full tracing filter.
    #[arg(long, global = true, value_enum, default_value = "info")]
    pub log_level: LogLevel,
    /// Only errors on stderr (same as --log-level error; also hides the demo's report).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More detail: -v for debug, -vv for trace (overrides --log-level).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// Log line format on stderr; `json` also writes the final error and the demo's report as JSON lines.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Credential vault: a file (default: $XDG_CONFIG_HOME/expense-sync/vault.json), an
    /// object-store URL (s3://bucket/vault.json) or k8s-secret:DIR (a mounted Kubernetes Secret, read-only).
    #[arg(long, global = true, env = "EXPENSE_SYNC_VAULT")]
    pub vault: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log levels for expense-sync's own messages.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogLevel {
    /// Failures only.
    Error,
    /// Failures and retries.
    Warn,
    /// Progress of a run.
    Info,
    /// Every request and response status.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
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
        /// Carry on from the watermark although the selection (filters, fund_source,
        /// preset, resource, role, columns, filter transforms) changed since the last run.
        #[arg(long)]
        accept_selection_change: bool,
        /// Print the window, the requests and the files a run would make, after one count
        /// probe; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Export a sample of at most N records; never advances the incremental state.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// How often to report progress (a live line on a terminal, log lines otherwise).
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        progress_interval: Duration,
        /// Run once per vault connection, as tenants: `all` (every Fyle connection) or `a,b,c`.
        #[arg(long, value_name = "all|NAME,...", conflicts_with = "tenants")]
        connections: Option<String>,
        /// Run once per tenant listed in this TOML file (`[[tenants]]` with `name`, and
        /// optionally `connection`, `output_dir`, `state_path`).
        #[arg(long, value_name = "FILE")]
        tenants: Option<PathBuf>,
        /// Tenants that run at the same time; they share the request budget, taking turns.
        #[arg(long, value_name = "N", default_value_t = crate::tenants::DEFAULT_CONCURRENCY,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..256))]
        tenant_concurrency: usize,
        /// Run only this shard's tenants, as INDEX/COUNT (0-based, e.g. 0/3); default: the
        /// index from JOB_COMPLETION_INDEX (Kubernetes Indexed Job) and the count from --shards.
        #[arg(long, value_name = "INDEX/COUNT")]
        shard: Option<crate::tenants::Shard>,
        /// Number of shards when the index comes from JOB_COMPLETION_INDEX.
        #[arg(long, value_name = "N", env = "EXPENSE_SYNC_SHARDS",
              value_parser = clap::value_parser!(u32).range(1..))]
        shards: Option<u32>,
        /// This many processes share one egress address: use [http] requests_per_second / N.
        #[arg(long, value_name = "N", env = "EXPENSE_SYNC_SHARD_BUDGET",
              value_parser = clap::value_parser!(u32).range(1..))]
        shard_budget: Option<u32>,
    },
    /// Show a pipeline's incremental state (watermark, pending commit, recent runs).
    State {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// The output directory the pipeline runs with, if overridden with --output-dir.
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// Show this tenant's state (a pipeline run with --connections / --tenants).
        #[arg(long, value_name = "NAME")]
        tenant: Option<String>,
        /// The tenants file the pipeline runs with (its per-tenant output_dir / state_path).
        #[arg(long, value_name = "FILE", requires = "tenant")]
        tenants: Option<PathBuf>,
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
        /// Background changes come in bulk updates of this many expenses sharing one `updated_at`.
        #[arg(long, default_value_t = 0)]
        bulk_update_size: u32,
        /// Text collation of the simulated database: `C` (byte order) or `en_US` (case-insensitive first).
        #[arg(long, default_value = "C")]
        collation: crate::simulator::Collation,
        /// Probability (0–1) that a list page is cut short although more records match.
        #[arg(long, default_value_t = 0.0)]
        short_page_rate: f64,
        /// Overstate every list `count` by this many records (a misbehaving server).
        #[arg(long, default_value_t = 0)]
        count_excess: u64,
        /// Mishandle clients' `and=`/`or=` seek filters: none, repeat-boundary or ignore.
        #[arg(long, default_value = "none")]
        seek_fault: crate::simulator::SeekFault,
        /// The org's currency for every amount, e.g. KWD (3 decimals) or JPY (none).
        #[arg(long, default_value = "USD")]
        currency: String,
        /// Share (0–1) of expense amounts printed with binary-float noise (`0.30000000000000004`).
        #[arg(long, default_value_t = 0.0)]
        float_noise: f64,
        /// Share (0–1) of personal-cash expenses marked not reimbursable.
        #[arg(long, default_value_t = 0.0)]
        non_reimbursable_cash: f64,
        /// Seconds the simulator's clock (`Date` headers, `updated_at` of changes)
        /// runs ahead of the real one; negative: behind, as if this machine's clock were ahead.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        clock_offset: i64,
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
        /// Make the receiver answer pushes to `/expenses` with a redirect,
        /// as `STATUS:LOCATION`, e.g. `301:/v2/expenses` or `307:http://127.0.0.1:8800/expenses`.
        #[arg(long, value_parser = parse_redirect)]
        receiver_redirect: Option<crate::simulator::receiver::Redirect>,
        /// Make the receiver also de-duplicate records by this body field (e.g. `_idempotency_key`).
        #[arg(long)]
        receiver_record_key: Option<String>,
        /// Also serve a RingCentral simulator (OAuth under /restapi/oauth, call log,
        /// rate-limit groups, incoming webhook) on this port.
        #[arg(long)]
        ringcentral_port: Option<u16>,
        /// RingCentral simulator: Heavy-group (call log) requests allowed per minute.
        #[arg(long, default_value_t = 10)]
        ringcentral_heavy_limit: u32,
    },
    /// Print a shell completion script on stdout, e.g. `expense-sync completions bash > /etc/bash_completion.d/expense-sync`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout, e.g. `expense-sync man > /usr/local/share/man/man1/expense-sync.1`,
    /// or write it and one page per subcommand (`expense-sync-run.1`, …) into a directory.
    Man {
        /// Write every page into this directory (created if absent) instead of printing the main one.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Whether stderr lines are JSON (`--log-format json`).
static JSON_LINES: AtomicBool = AtomicBool::new(false);
/// Whether `-q` asked for errors only.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Parses the command line, runs the command and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            report_error(
                &format!("cannot start the async runtime: {e}"),
                ExitCode::Internal,
            );
            return ExitCode::Internal.code();
        }
    };
    let result = runtime.block_on(dispatch(cli.command, cli.vault, cli.log_format));
    match result {
        Ok(code) => code.code(),
        Err(e) => {
            report_error(&e.to_string(), e.exit_code());
            e.exit_code().code()
        }
    }
}

/// The final error on stderr: `error: …`, or a JSON line in `--log-format json`.
fn report_error(message: &str, code: ExitCode) {
    if JSON_LINES.load(Ordering::Relaxed) {
        tracing::error!(exit_code = code.code(), "{message}");
    } else {
        eprintln!("error: {message}");
    }
}

/// A failed `check` step on stderr: `FAIL …`, or a JSON line in `--log-format json`.
fn check_failed(message: &str, code: ExitCode) {
    if JSON_LINES.load(Ordering::Relaxed) {
        report_error(message, code);
    } else {
        eprintln!("FAIL {message}");
    }
}

/// A line for people on stderr (demo report, warnings): plain text, a JSON
/// line in `--log-format json`, nothing with `-q`.
fn say(message: &str) {
    if QUIET.load(Ordering::Relaxed) {
    } else if JSON_LINES.load(Ordering::Relaxed) {
        tracing::info!("{message}");
    } else {
        eprintln!("{message}");
    }
}

/// Colours only on a terminal, and never when `NO_COLOR` is set to anything
/// but the empty string (<https://no-color.org>).
fn use_colour(is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let json = matches!(cli.log_format, LogFormat::Json);
    JSON_LINES.store(json, Ordering::Relaxed);
    QUIET.store(cli.quiet, Ordering::Relaxed);
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => LogLevel::Error,
        (false, 0) => cli.log_level,
        (false, 1) => LogLevel::Debug,
        (false, _) => LogLevel::Trace,
    };
    // Other crates stay at warn unless the user asks for them explicitly:
    // their trace output is not written with secrets in mind.
    let filter = std::env::var("EXPENSE_SYNC_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(format!("warn,expense_sync={}", level.as_str())));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::pipeline::progress::StderrBelowProgress)
        .with_ansi(use_colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ));
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// A live progress line only where a person watches plain text logs on a terminal.
fn live_progress(format: LogFormat) -> bool {
    matches!(format, LogFormat::Text)
        && !QUIET.load(Ordering::Relaxed)
        && std::io::stderr().is_terminal()
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

async fn dispatch(
    command: Command,
    vault: Option<PathBuf>,
    log_format: LogFormat,
) -> Result<ExitCode, Error> {
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
            accept_selection_change,
            dry_run,
            limit,
            progress_interval,
            connections,
            tenants,
            tenant_concurrency,
            shard,
            shards,
            shard_budget,
        } => {
            let mode = if full_refresh {
                RunMode::FullRefresh
            } else if since.is_some() || until.is_some() {
                RunMode::Backfill { since, until }
            } else {
                RunMode::Auto
            };
            let p = match config::load(&pipeline) {
                Ok(p) => p,
                Err(e) => {
                    return report_unloadable(&pipeline, e, summary.as_deref(), summary_format);
                }
            };
            let mut http_cfg = p.spec.http.clone();
            if let Some(n) = shard_budget {
                // Processes behind one egress address share its budget evenly.
                http_cfg.requests_per_second /= f64::from(n);
            }
            let http = HttpClient::new(&http_cfg).map_err(|e| Error::Internal(e.to_string()))?;
            let cancel = CancelToken::new();
            let opts = RunOptions {
                output_dir,
                credentials: None,
                mode,
                vault,
                accept_selection_change,
                cancel: cancel.clone(),
                limit,
                progress_interval: Some(progress_interval),
                live_progress: live_progress(log_format),
            };
            if connections.is_some() || tenants.is_some() {
                let job_index = std::env::var(crate::tenants::shard::JOB_COMPLETION_INDEX_ENV).ok();
                let shard = match shard {
                    Some(s) => Some(s),
                    None => crate::tenants::Shard::from_job_index(job_index.as_deref(), shards)
                        .map_err(|m| config::ConfigError::single(&pipeline, "--shard", m))?,
                };
                let run = TenantsRun {
                    connections,
                    file: tenants,
                    shard,
                    concurrency: tenant_concurrency,
                    dry_run,
                    metrics_file,
                    metrics_push,
                };
                return run_tenants(&p, &http, opts, run, summary.as_deref(), summary_format).await;
            }
            if let Some(s) = shard {
                return Err(config::ConfigError::single(
                    &pipeline,
                    "--shard",
                    format!(
                        "--shard {s} splits tenants among processes, but this run has none: add                          --connections or --tenants"
                    ),
                )
                .into());
            }
            if dry_run {
                print!("{}", pipeline::dry_run(&p, &http, &opts).await?);
                return Ok(ExitCode::Ok);
            }
            let signals = stop_on_signals(cancel);
            let mut outcome = pipeline::run(&p, &http, &opts).await;
            if !p.spec.notify.is_empty() {
                let sent = crate::notify::notify_all(&http, &p.spec.notify, &outcome.summary).await;
                for e in &sent.errors {
                    eprintln!("warning: notification failed (the run's outcome is unchanged): {e}");
                }
                outcome.summary.notify = Some(sent);
            }
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
            signals.abort();
            report_run(&outcome, summary.as_deref(), summary_format)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "expense-sync", &mut std::io::stdout());
            Ok(ExitCode::Ok)
        }
        Command::Man { dir: None } => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|e| Error::Internal(format!("cannot write the man page: {e}")))?;
            Ok(ExitCode::Ok)
        }
        Command::Man { dir: Some(dir) } => {
            use clap::CommandFactory;
            // generate_to builds the command itself (building first would add `help` pages).
            std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
                .map_err(|e| {
                    Error::Sink(format!(
                        "cannot write the man pages into {}: {e}",
                        dir.display()
                    ))
                })?;
            Ok(ExitCode::Ok)
        }
        Command::Check { pipeline, offline } => check(&pipeline, offline, vault).await,
        Command::State {
            pipeline,
            output_dir,
            tenant,
            tenants,
        } => {
            let mut p = config::load(&pipeline)?;
            let mut dir = output_dir.unwrap_or_else(|| p.spec.pipeline.output_dir.clone());
            if let Some(name) = tenant {
                let t = match tenants {
                    Some(file) => crate::tenants::load_file(&file)?
                        .into_iter()
                        .find(|t| t.name == name)
                        .ok_or_else(|| {
                            crate::common::ConfigError::single(
                                &file,
                                "tenants",
                                format!(
                                    "no tenant named `{name}`; pass one of its names with --tenant"
                                ),
                            )
                        })?,
                    None => crate::tenants::Tenant::of_connection(&name),
                };
                let opts = RunOptions {
                    output_dir: Some(dir),
                    ..RunOptions::default()
                };
                let (tp, to) = crate::tenants::for_tenant(&p, &opts, &t)?;
                p = tp;
                dir = to.output_dir.expect("set per tenant");
            }
            let path = p.state_path(&dir);
            if path.to_string_lossy().contains(crate::tenants::TENANT) {
                let key = if p.spec.pipeline.state_path.is_some() {
                    "pipeline.state_path"
                } else {
                    "pipeline.output_dir"
                };
                return Err(crate::common::ConfigError::single(
                    &pipeline,
                    key,
                    format!(
                        "the state location {} contains {}: name the tenant whose state to show \
                         with --tenant NAME (and --tenants FILE if the pipeline runs with a tenants file)",
                        path.display(),
                        crate::tenants::TENANT
                    ),
                )
                .into());
            }
            let st = if crate::store::is_remote(&path) {
                read_remote_state(&path, p.name(), p.spec.source.cursor())?
            } else {
                crate::state::load(&path, p.name(), p.spec.source.cursor())
                    .map_err(|e| Error::State(e.to_string()))?
            };
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
            bulk_update_size,
            collation,
            short_page_rate,
            count_excess,
            seek_fault,
            currency,
            float_noise,
            non_reimbursable_cash,
            clock_offset,
            receiver_port,
            receiver_secret,
            receiver_redirect,
            receiver_record_key,
            ringcentral_port,
            ringcentral_heavy_limit,
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
                    bulk_update_size,
                    short_page_rate,
                    count_excess,
                    seek_fault,
                    ..Faults::default()
                },
                collation,
                currency,
                float_noise,
                non_reimbursable_cash,
                clock_offset: chrono::TimeDelta::seconds(clock_offset),
                ..SimConfig::default()
            };
            // Port 0 asks the OS for a free port: the cluster gets its own free one.
            let cluster_port =
                cluster_port.unwrap_or(if port == 0 { 0 } else { port.saturating_add(1) });
            let receiver = match receiver_port {
                None => None,
                Some(rp) => {
                    use crate::simulator::receiver::{Receiver, ReceiverConfig};
                    let signed = receiver_secret.is_some();
                    let r = Receiver::start_on(
                        ReceiverConfig {
                            secret: receiver_secret,
                            redirect: receiver_redirect,
                            record_key_field: receiver_record_key,
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
            let ringcentral = match ringcentral_port {
                None => None,
                Some(rp) => {
                    use crate::simulator::ringcentral::{Group, RcSimConfig, RcSimulator};
                    let mut rc = RcSimConfig {
                        seed,
                        ..RcSimConfig::default()
                    };
                    if let Some(l) = rc.limits.get_mut(&Group::Heavy) {
                        l.requests = ringcentral_heavy_limit.max(1);
                    }
                    let sim = RcSimulator::start_on(rc, rp).await.map_err(|e| {
                        Error::Internal(format!("RingCentral simulator on port {rp}: {e}"))
                    })?;
                    println!(
                        "RingCentral simulator: {} (JWT credential for the JWT flow: {}; incoming webhook: {})",
                        sim.url(),
                        sim.issue_jwt(),
                        sim.webhook_url("demo")
                    );
                    Some(sim)
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
            if let Some(rc) = ringcentral {
                println!(
                    "RingCentral simulator: {} requests, {} webhook messages",
                    rc.requests().len(),
                    rc.webhook_messages().len()
                );
            }
            Ok(ExitCode::Ok)
        }
    }
}

/// Cancels `cancel` on the first SIGINT or SIGTERM so the run stops cleanly;
/// a second one exits at once (the next run removes what is left behind).
fn stop_on_signals(cancel: CancelToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            #[cfg(unix)]
            let terminate = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let terminate = std::future::pending::<()>();
            tokio::select! {
                r = tokio::signal::ctrl_c() => {
                    if r.is_err() {
                        // No SIGINT handler could be installed: wait for SIGTERM only.
                        std::future::pending::<()>().await;
                    }
                }
                _ = terminate => {}
            }
            if cancel.is_cancelled() {
                eprintln!(
                    "error: stopped at once by a second signal; temporary files may be left, the next run removes them"
                );
                std::process::exit(ExitCode::Interrupted.code());
            }
            tracing::warn!(
                "stop requested: removing temporary files and stopping (send the signal again to exit at once)"
            );
            cancel.cancel();
        }
    })
}

/// What `run` was asked to do for many tenants.
struct TenantsRun {
    connections: Option<String>,
    file: Option<PathBuf>,
    shard: Option<crate::tenants::Shard>,
    concurrency: usize,
    dry_run: bool,
    metrics_file: Option<PathBuf>,
    metrics_push: Option<String>,
}

/// `run --connections/--tenants`: every tenant of this shard, each with its
/// own state, outputs and summary line; the exit code is the worst tenant's.
async fn run_tenants(
    p: &config::Pipeline,
    http: &HttpClient,
    opts: RunOptions,
    run: TenantsRun,
    summary_file: Option<&Path>,
    format: SummaryFormat,
) -> Result<ExitCode, Error> {
    use crate::tenants;
    let all = match (&run.connections, &run.file) {
        (_, Some(file)) => tenants::load_file(file)?,
        (Some(spec), None) => {
            let vault =
                crate::auth::Vault::open(&crate::auth::vault::vault_path(opts.vault.as_deref()));
            tenants::from_connections(spec, &vault)?
        }
        (None, None) => unreachable!("called with --connections or --tenants"),
    };
    let selected = all.len();
    let mine = match run.shard {
        Some(s) => s.pick(all, |t| &t.name),
        None => all,
    };
    if let Some(s) = run.shard {
        tracing::info!(
            "shard {s}: {} of {selected} tenant(s): {}",
            mine.len(),
            mine.iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if run.dry_run {
        for t in &mine {
            let (tp, to) = tenants::for_tenant(p, &opts, t)?;
            println!("== tenant {} (connection {}) ==", t.name, t.connection());
            print!(
                "{}",
                pipeline::dry_run(&tp, &http.for_tenant(&t.name), &to).await?
            );
        }
        return Ok(ExitCode::Ok);
    }
    let signals = stop_on_signals(opts.cancel.clone());
    let mut runs = tenants::run_all(p, http, &opts, &mine, run.concurrency).await?;
    let mut metrics = p.spec.metrics.clone().unwrap_or_default();
    if run.metrics_file.is_some() {
        metrics.textfile = run.metrics_file;
    }
    if run.metrics_push.is_some() {
        metrics.pushgateway = run.metrics_push;
    }
    for r in &mut runs {
        if !p.spec.notify.is_empty() {
            let sent = crate::notify::notify_all(http, &p.spec.notify, &r.outcome.summary).await;
            for e in &sent.errors {
                eprintln!(
                    "warning: tenant {}: notification failed (the run's outcome is unchanged): {e}",
                    r.tenant.name
                );
            }
            r.outcome.summary.notify = Some(sent);
        }
    }
    if metrics.is_enabled() {
        // One file per tenant, or tenants would overwrite each other's file;
        // Pushgateway pushes go to a group per tenant (its `tenant` label).
        if metrics
            .textfile
            .as_ref()
            .is_some_and(|f| !f.to_string_lossy().contains(tenants::TENANT))
        {
            eprintln!(
                "warning: the metrics file was not written: with tenants, [metrics] textfile needs {} in its path (one file per tenant)",
                tenants::TENANT
            );
            metrics.textfile = None;
        }
        for r in &runs {
            let mut m = metrics.clone();
            m.textfile = m.textfile.map(|f| {
                PathBuf::from(f.to_string_lossy().replace(tenants::TENANT, &r.tenant.name))
            });
            for problem in crate::metrics::export(&m, &r.outcome.summary).await {
                eprintln!("warning: tenant {}: {problem}", r.tenant.name);
            }
        }
    }
    signals.abort();
    let total = tenants::TenantsSummary::new(p.name(), run.shard, selected, &runs);
    let json = serde_json::to_string_pretty(&total)
        .map_err(|e| Error::Internal(format!("cannot render the summary: {e}")))?;
    match format {
        SummaryFormat::Json => println!("{json}"),
        SummaryFormat::Text => {
            for r in &runs {
                println!("{}", summary_line(&r.outcome.summary));
            }
            println!("{}", total.line());
        }
        SummaryFormat::None => {}
    }
    if let Some(path) = summary_file {
        let id = format!("{}-tenants", Utc::now().format("%Y%m%dT%H%M%SZ"));
        crate::fsutil::write_atomic(path, json.as_bytes(), &id)
            .map_err(|e| Error::Sink(format!("cannot write the run summary: {e}")))?;
    }
    for r in &runs {
        if let Some(e) = &r.outcome.error {
            report_error(&format!("tenant {}: {e}", r.tenant.name), e.exit_code());
        }
    }
    Ok(tenants::worst(runs.iter().map(|r| r.outcome.exit_code())))
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
        report_error(&e.to_string(), e.exit_code());
    } else if let Some(q) = &outcome.summary.quarantine_file {
        let message = format!(
            "{} record(s) could not be exported and were quarantined with their reasons in {}",
            outcome.summary.quarantined,
            q.display()
        );
        if JSON_LINES.load(Ordering::Relaxed) {
            tracing::warn!("{message}");
        } else {
            eprintln!("warning: {message}");
        }
    }
    Ok(outcome.exit_code())
}

/// The run in one line for people: status, counts, files, requests.
pub fn summary_line(s: &crate::pipeline::RunSummary) -> String {
    use crate::pipeline::RunStatus;
    let secs = s.duration_ms as f64 / 1000.0;
    let head = match &s.tenant {
        Some(t) => format!("expense-sync {} [tenant {t}]:", s.pipeline),
        None => format!("expense-sync {}:", s.pipeline),
    };
    if !matches!(s.status, RunStatus::Ok | RunStatus::Partial) {
        let why = s
            .error
            .as_deref()
            .and_then(|e| e.lines().next())
            .unwrap_or("unknown error");
        let what = if s.status == RunStatus::Interrupted {
            "INTERRUPTED"
        } else {
            "FAILED"
        };
        return format!(
            "{head} {what} (exit {}) after {secs:.1}s: {why}",
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

/// A pipeline file that cannot be loaded still gets a run summary, so a
/// scheduler reading stdout sees every failure the same way.
fn report_unloadable(
    file: &Path,
    error: config::ConfigError,
    summary_file: Option<&Path>,
    format: SummaryFormat,
) -> Result<ExitCode, Error> {
    let started_at = Utc::now();
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let run_id = format!("{}-0000", started_at.format("%Y%m%dT%H%M%SZ"));
    let mut summary = pipeline::RunSummary::new(&name, &run_id, started_at);
    let error = Error::Config(error);
    summary.status = pipeline::RunStatus::Failed;
    summary.exit_code = error.exit_code().code();
    summary.error = Some(error.to_string());
    let outcome = RunOutcome {
        summary,
        error: Some(error),
    };
    report_run(&outcome, summary_file, format)
}

async fn check(path: &Path, offline: bool, vault: Option<PathBuf>) -> Result<ExitCode, Error> {
    let p = config::load(path)?;
    println!("ok   pipeline file {} is valid", path.display());
    if offline {
        return Ok(ExitCode::Ok);
    }
    // Short timeouts and few retries: check answers within seconds.
    let http =
        HttpClient::new(&p.spec.http.for_check()).map_err(|e| Error::Internal(e.to_string()))?;
    let built = p.spec.source.build(crate::sources::SourceContext {
        file: &p.file,
        http: &http,
        credentials: None,
        vault,
    });
    let (built, source_problems) = match built {
        Ok(s) => (Some(Ok(s)), Vec::new()),
        Err(crate::sources::BuildError::Config(ps)) => (None, ps),
        Err(crate::sources::BuildError::Other(e)) => (Some(Err(e)), Vec::new()),
    };
    let sink_problems: Vec<config::Problem> = p
        .spec
        .sinks
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.resolve_secrets(&format!("sinks[{i}]")))
        .chain(
            p.spec
                .notify
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.resolve(&format!("notify[{i}]")).err()),
        )
        .collect();
    let problems: Vec<_> = source_problems.into_iter().chain(sink_problems).collect();
    if !problems.is_empty() {
        return Err(config::ConfigError {
            file: path.to_path_buf(),
            problems,
        }
        .into());
    }
    let output_dir = &p.spec.pipeline.output_dir;
    if crate::store::is_remote(output_dir) {
        let url = output_dir.to_string_lossy();
        let reached = crate::store::Remote::open(&url).and_then(|r| {
            let probe = r.key(crate::store::state::TEMP_DIR);
            r.exists(&probe)
        });
        if let Err(e) = reached {
            check_failed(&e.to_string(), ExitCode::Sink);
            return Ok(ExitCode::Sink);
        }
        println!("ok   output location {url} is reachable");
    } else if let Err(e) = crate::fsutil::check_writable_dir(output_dir) {
        check_failed(
            &pipeline::unwritable_output_dir(output_dir, &e),
            ExitCode::Sink,
        );
        return Ok(ExitCode::Sink);
    }
    if !crate::store::is_remote(output_dir) {
        println!("ok   output directory {} is writable", output_dir.display());
    }
    let source = built.expect("no problems means the source was built or failed")?;
    match source.check().await? {
        None => Ok(ExitCode::Ok),
        Some((message, code)) => {
            check_failed(&message, code);
            Ok(code)
        }
    }
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
    say(&format!(
        "simulator: {expenses} expenses (seed {seed}) at {} — local only, no credentials, no network",
        sim.accounts_url()
    ));
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
        credentials: Some(creds.into()),
        mode: RunMode::Auto,
        vault: None,
        accept_selection_change: false,
        cancel: CancelToken::new(),
        limit: None,
        progress_interval: None,
        live_progress: false,
    };
    let outcome = pipeline::run(&p, &http, &opts).await;
    sim.shutdown().await;
    if let Some(e) = outcome.error {
        return Err(e);
    }
    let s = &outcome.summary;
    say(&format!(
        "exported {} of {} records in {:.1}s ({} requests, {} retries, {} throttled)",
        s.records_out,
        s.records_in,
        s.duration_ms as f64 / 1000.0,
        s.http.requests,
        s.http.retries,
        s.http.throttled_429
    ));
    for o in &s.outputs {
        say(&format!(
            "  {:<8} {} ({} rows, {} bytes)",
            o.kind,
            o.path.display(),
            o.rows,
            o.bytes
        ));
    }
    if let Some(q) = &s.quarantine_file {
        say(&format!(
            "  quarantined {} record(s): {}",
            s.quarantined,
            q.display()
        ));
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

/// `STATUS:LOCATION` for `--receiver-redirect`.
fn parse_redirect(s: &str) -> Result<crate::simulator::receiver::Redirect, String> {
    let (status, location) = s
        .split_once(':')
        .ok_or_else(|| format!("expected STATUS:LOCATION, e.g. 301:/v2/expenses, got `{s}`"))?;
    let status: u16 = status
        .parse()
        .ok()
        .filter(|c| (300..=399).contains(c))
        .ok_or_else(|| format!("`{status}` is not a 3xx status"))?;
    if location.is_empty() {
        return Err("the redirect needs a location after the colon".into());
    }
    Ok(crate::simulator::receiver::Redirect {
        status,
        location: location.to_string(),
    })
}

/// Reads a state object (`expense-sync state` with the state in object storage).
fn read_remote_state(
    url: &std::path::Path,
    pipeline: &str,
    cursor: &str,
) -> Result<crate::state::State, Error> {
    let remote = crate::store::Remote::open(&url.to_string_lossy())
        .map_err(|e| Error::State(e.to_string()))?;
    let key = remote.prefix().clone();
    crate::store::state::RemoteTarget::load(std::sync::Arc::new(remote), key, pipeline, cursor)
        .map(|(_, st)| st)
        .map_err(|e| Error::State(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("".into())));
        assert!(!use_colour(true, Some("1".into())));
        assert!(!use_colour(false, None));
    }
}
