//! Progress while a run works: one report per phase as it starts, then one
//! every interval, with rates and an ETA. Off a terminal these are plain log
//! lines (cron mail, CI logs); on one, a live line redrawn in place on stderr.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tracing::Instrument;
use tracing::info;

use crate::http::{HttpClient, StatsSnapshot};
use crate::sources::Page;

/// How often progress is reported unless told otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Reports a run's progress until dropped.
pub(crate) struct Progress {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    requests_per_second: f64,
    live: bool,
}

struct Shared {
    phase: Mutex<Phase>,
    records: AtomicU64,
    /// `u64::MAX` until the server's count arrives.
    total: AtomicU64,
    wake: Notify,
}

#[derive(Clone)]
struct Phase {
    name: &'static str,
    started: Instant,
    http_at_start: StatsSnapshot,
}

impl Progress {
    /// Starts reporting every `interval`; `requests_per_second` is the configured limit shown beside the rate.
    pub(crate) fn start(
        http: &HttpClient,
        interval: Duration,
        requests_per_second: f64,
        live: bool,
    ) -> Self {
        let shared = Arc::new(Shared {
            phase: Mutex::new(Phase {
                name: "starting",
                started: Instant::now(),
                http_at_start: http.stats(),
            }),
            records: AtomicU64::new(0),
            total: AtomicU64::new(u64::MAX),
            wake: Notify::new(),
        });
        let task = {
            let (shared, http) = (shared.clone(), http.clone());
            tokio::spawn(
                async move {
                    // Reports only after a wake (a new phase) or an interval: a phase
                    // entered before this task first runs leaves a permit, so
                    // reporting at the top of the loop as well printed it twice.
                    loop {
                        let woken = shared.wake.notified();
                        tokio::pin!(woken);
                        woken.as_mut().enable();
                        tokio::select! {
                            _ = tokio::time::sleep(interval) => {}
                            _ = woken => {}
                        }
                        report(&shared, &http, requests_per_second, live);
                    }
                }
                // Progress lines carry the run's span (the tenant in a multi-tenant run).
                .in_current_span(),
            )
        };
        Self {
            shared,
            task,
            requests_per_second,
            live,
        }
    }

    /// Enters phase `name` (`paging`, `finishing`, `write-back`) and reports it at once.
    pub(crate) fn phase(&self, name: &'static str, http: &HttpClient) {
        *self.shared.phase.lock().expect("progress phase") = Phase {
            name,
            started: Instant::now(),
            http_at_start: http.stats(),
        };
        self.shared.wake.notify_one();
    }

    /// Reports the current phase now, e.g. its final numbers as it ends.
    pub(crate) fn report_now(&self, http: &HttpClient) {
        report(&self.shared, http, self.requests_per_second, self.live);
    }

    /// Counts the records (and the server's total) of pages on their way to the transform stage.
    pub(crate) fn observe(&self, mut pages: mpsc::Receiver<Page>) -> mpsc::Receiver<Page> {
        let (tx, rx) = mpsc::channel::<Page>(1);
        let shared = self.shared.clone();
        tokio::spawn(
            async move {
                while let Some(page) = pages.recv().await {
                    if let Some(t) = page.total {
                        shared.total.store(t, Ordering::Relaxed);
                    }
                    shared
                        .records
                        .fetch_add(page.records.len() as u64, Ordering::Relaxed);
                    if tx.send(page).await.is_err() {
                        break;
                    }
                }
            }
            .in_current_span(),
        );
        rx
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
        if LIVE_LINE.lock().map(|l| l.is_some()).unwrap_or(false) {
            clear_live_line();
        }
    }
}

fn report(shared: &Shared, http: &HttpClient, limit: f64, live: bool) {
    let phase = shared.phase.lock().expect("progress phase").clone();
    if phase.name == "starting" {
        return;
    }
    let elapsed = phase.started.elapsed().as_secs_f64().max(0.001);
    let stats = http.stats().since(&phase.http_at_start);
    let requests_per_s = stats.requests as f64 / elapsed;
    let limit_text = if limit > 0.0 {
        format!("{limit}")
    } else {
        "none".into()
    };
    match phase.name {
        "paging" => {
            let done = shared.records.load(Ordering::Relaxed);
            let total = shared.total.load(Ordering::Relaxed);
            let total = (total != u64::MAX).then_some(total);
            let records_per_s = done as f64 / elapsed;
            let eta_s = match total {
                Some(t) if records_per_s > 0.0 => {
                    Some((t.saturating_sub(done) as f64 / records_per_s).round() as u64)
                }
                _ => None,
            };
            if live {
                let of = total.map(|t| format!("/{t}")).unwrap_or_default();
                let eta = eta_s.map(|s| format!(", ETA {s}s")).unwrap_or_default();
                draw_live_line(format!(
                    "paging: {done}{of} records, {records_per_s:.0} records/s, \
                     {requests_per_s:.1} requests/s (limit {limit_text}), {} retries{eta}",
                    stats.retries
                ));
            } else {
                info!(
                    phase = %"paging",
                    done,
                    total,
                    records_per_s = %format!("{records_per_s:.1}"),
                    requests_per_s = %format!("{requests_per_s:.1}"),
                    limit = %limit_text,
                    retries = stats.retries,
                    eta_s,
                    "progress"
                );
            }
        }
        name => {
            if live {
                draw_live_line(format!(
                    "{name}: {:.0}s, {} requests, {requests_per_s:.1} requests/s (limit {limit_text}), {} retries",
                    elapsed, stats.requests, stats.retries
                ));
            } else {
                info!(
                    phase = %name,
                    elapsed_s = %format!("{elapsed:.1}"),
                    requests = stats.requests,
                    requests_per_s = %format!("{requests_per_s:.1}"),
                    limit = %limit_text,
                    retries = stats.retries,
                    "progress"
                );
            }
        }
    }
}

/// The live line currently drawn at the bottom of the terminal, if any.
static LIVE_LINE: Mutex<Option<String>> = Mutex::new(None);

fn draw_live_line(line: String) {
    let mut current = LIVE_LINE.lock().unwrap_or_else(|p| p.into_inner());
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[2K{line}");
    let _ = err.flush();
    *current = Some(line);
}

fn clear_live_line() {
    let mut current = LIVE_LINE.lock().unwrap_or_else(|p| p.into_inner());
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[2K");
    let _ = err.flush();
    *current = None;
}

/// Stderr for log lines that keeps the live progress line below them: each
/// log line first clears the progress line, which is drawn again after it.
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrBelowProgress;

/// A writer for one log event; see [`StderrBelowProgress`].
pub struct LogLineWriter {
    buf: Vec<u8>,
}

impl Write for LogLineWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLineWriter {
    fn drop(&mut self) {
        let current = LIVE_LINE.lock().unwrap_or_else(|p| p.into_inner());
        let mut err = std::io::stderr().lock();
        match current.as_ref() {
            Some(line) => {
                let _ = write!(err, "\r\x1b[2K");
                let _ = err.write_all(&self.buf);
                let _ = write!(err, "{line}");
            }
            None => {
                let _ = err.write_all(&self.buf);
            }
        }
        let _ = err.flush();
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StderrBelowProgress {
    type Writer = LogLineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogLineWriter { buf: Vec::new() }
    }
}
