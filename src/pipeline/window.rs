//! Which window of the cursor field a run covers, and whether it moves the
//! incremental state.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::IncrementalConfig;
use crate::http::{ServerClock, describe_skew};
use crate::sources::Window;
use crate::state::State;

/// What kind of run to make.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RunMode {
    /// Incremental if the pipeline has `[incremental]`, else a full export.
    #[default]
    Auto,
    /// Export everything from `incremental.start` and reset the watermark to now.
    FullRefresh,
    /// Export `[since, until)` without touching the incremental state.
    Backfill {
        /// Inclusive start.
        since: Option<DateTime<Utc>>,
        /// Exclusive end; default now minus the safety lag.
        until: Option<DateTime<Utc>>,
    },
}

/// The decided window and what committing it does to the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `incremental`, `full_refresh`, `backfill` or `full`.
    pub kind: &'static str,
    /// Cursor range to export.
    pub window: Window,
    /// New watermark on commit; `None` leaves the state's position alone.
    pub advance_to: Option<DateTime<Utc>>,
    /// Skip versions the state says were delivered already.
    pub dedup_against_state: bool,
    /// The lookback in force.
    pub lookback: chrono::Duration,
}

/// The instant a window is planned from: this machine's clock, but never
/// later than the data server's clock can read, because the server stamps
/// the cursor with its own clock (a client running ahead would otherwise
/// close windows the server is still writing into).
pub fn planning_now(client_now: DateTime<Utc>, server: Option<ServerClock>) -> DateTime<Utc> {
    match server {
        Some(c) => client_now.min(c.latest_now(client_now)),
        None => client_now,
    }
}

/// Before the state moves to `window_end`: the data server's clock must have
/// passed it, or records it stamps later inside the window would never be
/// read (the next run starts after them). `server` is its latest reading.
pub fn check_window_closed(
    window_end: DateTime<Utc>,
    server: Option<ServerClock>,
    local_now: DateTime<Utc>,
    safety_lag: Duration,
) -> Result<(), String> {
    let Some(c) = server else { return Ok(()) };
    let server_now = c.latest_now(local_now);
    if server_now >= window_end {
        return Ok(());
    }
    let skew = c.skew();
    let needed =
        (window_end - server_now).num_milliseconds() as f64 / 1000.0 + safety_lag.as_secs_f64();
    Err(format!(
        "the data server's clock (Date: {}) is {} this machine's clock and has not reached the end of \
         this run's window ({}) yet: records it stamps before then would be skipped by the next run, \
         so nothing was committed and the incremental state was not advanced. Fix the clock of this \
         machine or of the server (NTP), or raise source.safety_lag to at least {:.0}s",
        c.date.to_rfc2822(),
        describe_skew(skew),
        window_end.to_rfc3339(),
        needed.ceil()
    ))
}

/// Decides the window for `mode` from the state at `now`.
pub fn plan_window(
    mode: &RunMode,
    incremental: Option<&IncrementalConfig>,
    state: &State,
    now: DateTime<Utc>,
    safety_lag: Duration,
) -> Result<Plan, String> {
    let upper = now - chrono::Duration::from_std(safety_lag).unwrap_or_default();
    let lookback = incremental
        .map(|i| chrono::Duration::from_std(i.lookback).unwrap_or_default())
        .unwrap_or_default();
    let start = incremental.and_then(|i| i.start);
    Ok(match (mode, incremental) {
        (RunMode::Backfill { since, until }, _) => {
            let to = until.unwrap_or(upper);
            if let Some(from) = since
                && *from >= to
            {
                return Err(format!("--since {from} is not before --until {to}"));
            }
            Plan {
                kind: "backfill",
                window: Window {
                    from: *since,
                    to: Some(to),
                },
                advance_to: None,
                dedup_against_state: false,
                lookback,
            }
        }
        (RunMode::FullRefresh, Some(_)) => Plan {
            kind: "full_refresh",
            window: Window {
                from: start,
                to: Some(upper),
            },
            advance_to: Some(upper),
            dedup_against_state: false,
            lookback,
        },
        (RunMode::Auto, Some(_)) => {
            let from = state.watermark.map(|w| w - lookback).or(start);
            // Never ask for an inverted range: a run right after another covers nothing new.
            let from = from.map(|f| f.min(upper));
            Plan {
                kind: "incremental",
                window: Window {
                    from,
                    to: Some(upper),
                },
                advance_to: Some(upper),
                dedup_against_state: true,
                lookback,
            }
        }
        (RunMode::Auto | RunMode::FullRefresh, None) => Plan {
            kind: "full",
            window: Window {
                from: None,
                to: Some(upper),
            },
            advance_to: None,
            dedup_against_state: false,
            lookback,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc() -> IncrementalConfig {
        IncrementalConfig {
            lookback: Duration::from_secs(600),
            start: None,
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn incremental_window_starts_one_lookback_before_the_watermark() {
        let mut st = State::new("p", "updated_at");
        st.watermark = Some(at("2024-01-01T10:00:00Z"));
        let p = plan_window(
            &RunMode::Auto,
            Some(&inc()),
            &st,
            at("2024-01-02T00:00:05Z"),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(p.window.from, Some(at("2024-01-01T09:50:00Z")));
        assert_eq!(p.window.to, Some(at("2024-01-02T00:00:00Z")));
        assert_eq!(p.advance_to, p.window.to);
        assert!(p.dedup_against_state);
    }

    #[test]
    fn backfill_leaves_state_alone() {
        let st = State::new("p", "updated_at");
        let m = RunMode::Backfill {
            since: Some(at("2024-01-01T00:00:00Z")),
            until: Some(at("2024-02-01T00:00:00Z")),
        };
        let p = plan_window(&m, Some(&inc()), &st, Utc::now(), Duration::ZERO).unwrap();
        assert_eq!(p.advance_to, None);
        assert!(!p.dedup_against_state);
        let bad = RunMode::Backfill {
            since: Some(at("2024-03-01T00:00:00Z")),
            until: Some(at("2024-02-01T00:00:00Z")),
        };
        assert!(plan_window(&bad, Some(&inc()), &st, Utc::now(), Duration::ZERO).is_err());
    }

    #[test]
    fn windows_end_by_the_server_clock_when_it_is_behind() {
        let client = at("2024-01-01T12:00:00Z");
        let behind = ServerClock {
            date: at("2024-01-01T11:59:00Z"),
            received_at: client,
        };
        assert_eq!(
            planning_now(client, Some(behind)),
            at("2024-01-01T11:59:01Z")
        );
        let ahead = ServerClock {
            date: at("2024-01-01T12:01:00Z"),
            received_at: client,
        };
        assert_eq!(planning_now(client, Some(ahead)), client);
        assert_eq!(planning_now(client, None), client);
    }

    #[test]
    fn state_does_not_advance_past_the_server_clock() {
        let local = at("2024-01-01T12:00:00Z");
        let behind = ServerClock {
            date: at("2024-01-01T11:59:30Z"),
            received_at: local,
        };
        let err = check_window_closed(
            at("2024-01-01T11:59:55Z"),
            Some(behind),
            local,
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(err.contains("29.5 s behind"), "{err}");
        assert!(err.contains("safety_lag to at least 29s"), "{err}");
        assert!(err.contains("NTP"), "{err}");
        check_window_closed(
            at("2024-01-01T11:59:25Z"),
            Some(behind),
            local,
            Duration::from_secs(5),
        )
        .unwrap();
        check_window_closed(local, None, local, Duration::ZERO).unwrap();
    }

    #[test]
    fn full_refresh_restarts_from_the_configured_start() {
        let mut st = State::new("p", "updated_at");
        st.watermark = Some(at("2024-05-01T00:00:00Z"));
        let cfg = IncrementalConfig {
            start: Some(at("2023-01-01T00:00:00Z")),
            ..inc()
        };
        let p = plan_window(
            &RunMode::FullRefresh,
            Some(&cfg),
            &st,
            at("2024-06-01T00:00:00Z"),
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(p.window.from, Some(at("2023-01-01T00:00:00Z")));
        assert_eq!(p.advance_to, Some(at("2024-06-01T00:00:00Z")));
    }
}
