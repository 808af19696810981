//! One run per pipeline at a time when the state is in object storage: a
//! lease object with an expiry replaces `flock` (there is no kernel to release
//! a lock when a process dies).
//!
//! - Acquire: create the lease object only if it does not exist.
//! - Held and unexpired: refuse, naming the holder and the expiry.
//! - Held but expired: the holder died (or stalled past its expiry); take the
//!   lease over with a put conditional on the ETag just read, so of two
//!   processes taking over at once only one wins.
//! - While the run lasts, a thread renews the expiry every third of the
//!   lease's duration, conditionally on its own last write; a renewal refused
//!   means the lease was taken over, and the run must not commit.
//!
//! Expiry is judged on the clock of the process that wants the lease: keep
//! clocks synchronised (NTP) and the duration far above their skew.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::{PutMode, UpdateVersion};
use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use super::{ObjectKey as Key, Remote, StoreError};

/// Default lease duration; `EXPENSE_SYNC_LEASE_TTL` (e.g. `30s`) changes it.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Environment variable with the lease duration.
pub const TTL_ENV: &str = "EXPENSE_SYNC_LEASE_TTL";

/// What the lease object holds (JSON), for people and for the next process.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Body {
    pipeline: String,
    holder: String,
    run_id: String,
    acquired_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

/// Why the lease could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another live run holds it.
    #[error("{0}")]
    Held(String),
    /// The store failed.
    #[error("lease {0}")]
    Store(#[from] StoreError),
}

/// The lease duration from `EXPENSE_SYNC_LEASE_TTL`, or the default.
pub fn ttl_from_env() -> Result<Duration, String> {
    match std::env::var(TTL_ENV) {
        Ok(v) if !v.trim().is_empty() => humantime::parse_duration(v.trim())
            .ok()
            .filter(|d| *d >= Duration::from_secs(1))
            .ok_or_else(|| {
                format!("{TTL_ENV}={v:?} is not a duration of at least 1s (e.g. `60s`, `5m`)")
            }),
        _ => Ok(DEFAULT_TTL),
    }
}

/// A held lease; renewed in the background, released (deleted) on drop.
#[derive(Debug)]
pub struct Lease {
    remote: Arc<Remote>,
    key: Key,
    version: Arc<Mutex<UpdateVersion>>,
    lost: Arc<AtomicBool>,
    stop: Option<mpsc::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl Lease {
    /// Takes the lease at `key` for `ttl`, or says who holds it.
    pub fn acquire(
        remote: Arc<Remote>,
        key: Key,
        pipeline: &str,
        run_id: &str,
        ttl: Duration,
    ) -> Result<Lease, LeaseError> {
        let now = Utc::now();
        let body = Body {
            pipeline: pipeline.to_string(),
            holder: format!(
                "pid {} on {}",
                std::process::id(),
                hostname().unwrap_or_else(|| "an unknown host".into())
            ),
            run_id: run_id.to_string(),
            acquired_at: now,
            expires_at: now + ttl,
        };
        let bytes = Bytes::from(serde_json::to_vec_pretty(&body).expect("a lease serialises"));
        let url = remote.url(&key);
        let held = |b: &Body| {
            LeaseError::Held(format!(
                "another run of pipeline `{pipeline}` is in progress (lease {url} held by {} for run {} \
                 until {}); wait for it to finish. If that process died, its lease is taken over once \
                 it expires",
                b.holder,
                b.run_id,
                b.expires_at.to_rfc3339()
            ))
        };
        // Two rounds: the lease may be released between our create and our read.
        for _ in 0..2 {
            match remote.put(&key, bytes.clone(), PutMode::Create) {
                Ok(v) => return Ok(Self::start(remote, key, v, body, ttl)),
                Err(e) if e.conflict => {}
                Err(e) => return Err(e.into()),
            }
            let Some((current, version)) = remote.get(&key)? else {
                continue;
            };
            let theirs: Body = serde_json::from_slice(&current).map_err(|e| {
                LeaseError::Held(format!(
                    "lease {url} of pipeline `{pipeline}` is not one expense-sync wrote ({e}); if no \
                     run of the pipeline is in progress, delete it"
                ))
            })?;
            if theirs.expires_at > Utc::now() {
                return Err(held(&theirs));
            }
            match remote.put(&key, bytes.clone(), PutMode::Update(version)) {
                Ok(v) => {
                    warn!(
                        lease = %url,
                        previous_holder = %theirs.holder,
                        previous_run = %theirs.run_id,
                        expired_at = %theirs.expires_at.to_rfc3339(),
                        "took over an expired lease: its run stopped without releasing it"
                    );
                    return Ok(Self::start(remote, key, v, body, ttl));
                }
                Err(e) if e.conflict => return Err(held(&theirs)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(LeaseError::Held(format!(
            "the lease {url} of pipeline `{pipeline}` keeps changing hands; another run is starting, try again"
        )))
    }

    fn start(
        remote: Arc<Remote>,
        key: Key,
        version: UpdateVersion,
        mut body: Body,
        ttl: Duration,
    ) -> Lease {
        let version = Arc::new(Mutex::new(version));
        let lost = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = mpsc::channel::<()>();
        let renewer = {
            let (remote, key, version, lost) =
                (remote.clone(), key.clone(), version.clone(), lost.clone());
            std::thread::Builder::new()
                .name("lease-renewal".into())
                .spawn(move || {
                    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(ttl / 3)
                    {
                        body.expires_at = Utc::now() + ttl;
                        let bytes = Bytes::from(serde_json::to_vec_pretty(&body).expect("serialises"));
                        let current = version.lock().expect("not poisoned").clone();
                        match remote.put(&key, bytes, PutMode::Update(current)) {
                            Ok(v) => *version.lock().expect("not poisoned") = v,
                            Err(e) if e.conflict => {
                                lost.store(true, Ordering::SeqCst);
                                error!(lease = %remote.url(&key), "the lease was taken over by another run; this run will not commit");
                                return;
                            }
                            Err(e) => warn!(error = %e, "could not renew the lease; retrying"),
                        }
                    }
                })
                .expect("a thread starts")
        };
        Lease {
            remote,
            key,
            version,
            lost,
            stop: Some(stop),
            renewer: Some(renewer),
        }
    }

    /// Whether another run took the lease over (this run must not commit then).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// The lease object's URL.
    pub fn url(&self) -> String {
        self.remote.url(&self.key)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        if self.is_lost() {
            return;
        }
        // Delete it only while it is still ours (a takeover writes a new ETag).
        let ours = self.version.lock().expect("not poisoned").e_tag.clone();
        match self.remote.get(&self.key) {
            Ok(Some((_, v))) if v.e_tag == ours => {
                if let Err(e) = self.remote.delete(&self.key) {
                    warn!(error = %e, "could not release the lease; it expires by itself");
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "could not release the lease; it expires by itself"),
        }
    }
}

fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> Arc<Remote> {
        let store = Arc::new(object_store::memory::InMemory::new());
        Arc::new(Remote::with_store(store, "memory://test", Key::from("out")).unwrap())
    }

    #[test]
    fn a_held_lease_is_refused_and_free_again_after_release() {
        let r = remote();
        let key = r.key("p.state.json.lease");
        let first = Lease::acquire(r.clone(), key.clone(), "p", "r1", DEFAULT_TTL).unwrap();
        let e = Lease::acquire(r.clone(), key.clone(), "p", "r2", DEFAULT_TTL).unwrap_err();
        assert!(e.to_string().contains("another run of pipeline `p`"), "{e}");
        assert!(e.to_string().contains("run r1"), "{e}");
        drop(first);
        assert!(!r.exists(&key).unwrap());
        Lease::acquire(r, key, "p", "r3", DEFAULT_TTL).unwrap();
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_its_old_holder_notices() {
        let r = remote();
        let key = r.key("p.lease");
        // A holder that never renews: its lease has expired already.
        let dead = Body {
            pipeline: "p".into(),
            holder: "pid 1 on elsewhere".into(),
            run_id: "r0".into(),
            acquired_at: Utc::now() - chrono::Duration::seconds(120),
            expires_at: Utc::now() - chrono::Duration::seconds(60),
        };
        r.put(
            &key,
            Bytes::from(serde_json::to_vec(&dead).unwrap()),
            PutMode::Create,
        )
        .unwrap();
        let taken = Lease::acquire(r.clone(), key.clone(), "p", "r1", DEFAULT_TTL).unwrap();
        assert!(!taken.is_lost());
        let (bytes, _) = r.get(&key).unwrap().unwrap();
        let body: Body = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body.run_id, "r1");
    }
}
