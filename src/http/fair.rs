//! Per-tenant fairness on the process-wide rate limiter.
//!
//! Tenants of one process share one request budget. Left to the limiter
//! alone, whoever asks most often gets most of it: a tenant paging a large
//! backfill (or writing back in parallel) would keep the small ones waiting.
//! Here every waiting request queues under its tenant, and each slot the
//! limiter frees goes to the next tenant in turn (round robin over the
//! tenants that are waiting), so a tenant with one request waiting never waits
//! behind more than one request of each other tenant.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use governor::DefaultDirectRateLimiter;
use tokio::sync::oneshot;

/// Requests waiting for the limiter, queued per tenant.
#[derive(Default)]
pub(crate) struct FairQueue {
    waiting: Mutex<Waiting>,
    /// Held by the one waiter that currently waits on the limiter for everybody.
    dispatch: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Waiting {
    queues: BTreeMap<Arc<str>, VecDeque<oneshot::Sender<bool>>>,
    /// The tenant served last; the next slot goes to the next waiting tenant after it.
    last: Option<Arc<str>>,
}

impl Waiting {
    fn pop_next(&mut self) -> Option<oneshot::Sender<bool>> {
        let after = self.last.as_ref().and_then(|last| {
            self.queues
                .range::<str, _>((Bound::Excluded(&**last), Bound::Unbounded))
                .next()
                .map(|(k, _)| k.clone())
        });
        let key = after.or_else(|| self.queues.keys().next().cloned())?;
        let queue = self.queues.get_mut(&key)?;
        let tx = queue.pop_front();
        if queue.is_empty() {
            self.queues.remove(&key);
        }
        self.last = Some(key);
        tx
    }
}

impl FairQueue {
    /// Waits until `limiter` allows one request for `tenant`, taking turns with
    /// other tenants; returns whether the slot had to wait for the limiter.
    pub(crate) async fn until_ready(
        &self,
        limiter: &DefaultDirectRateLimiter,
        tenant: &Arc<str>,
    ) -> bool {
        let (tx, mut rx) = oneshot::channel();
        self.waiting
            .lock()
            .expect("fair queue")
            .queues
            .entry(tenant.clone())
            .or_default()
            .push_back(tx);
        loop {
            tokio::select! {
                biased;
                waited = &mut rx => return waited.unwrap_or(false),
                guard = self.dispatch.lock() => {
                    let waited = limiter.check().is_err();
                    if waited {
                        limiter.until_ready().await;
                    }
                    // The slot goes to the next tenant in turn (perhaps this
                    // one); a waiter that gave up meanwhile is skipped.
                    loop {
                        let next = self.waiting.lock().expect("fair queue").pop_next();
                        let Some(tx) = next else { break };
                        if tx.send(waited).is_ok() {
                            break;
                        }
                    }
                    drop(guard);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use governor::{Quota, RateLimiter};

    use super::*;

    #[tokio::test]
    async fn a_tenant_with_many_waiting_requests_does_not_keep_the_others_waiting() {
        let limiter = Arc::new(RateLimiter::direct(
            Quota::with_period(Duration::from_millis(5))
                .unwrap()
                .allow_burst(NonZeroU32::MIN),
        ));
        let fair = Arc::new(FairQueue::default());
        let order = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut tasks = Vec::new();
        let mut spawn = |tenant: &str, n: usize| {
            let name: Arc<str> = tenant.into();
            for _ in 0..n {
                let (limiter, fair, order, name) =
                    (limiter.clone(), fair.clone(), order.clone(), name.clone());
                tasks.push(tokio::spawn(async move {
                    fair.until_ready(&limiter, &name).await;
                    order.lock().unwrap().push(name.to_string());
                }));
            }
        };
        // The big tenant queues 30 requests before the small ones ask at all.
        spawn("big", 30);
        tokio::task::yield_now().await;
        spawn("small-a", 2);
        spawn("small-b", 2);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order.len(), 34);
        let last_small = order.iter().rposition(|t| t.starts_with("small")).unwrap();
        // Round robin: at most a few of big's requests before each small one.
        assert!(
            last_small < 12,
            "the small tenants were served late: {order:?}"
        );
    }

    #[test]
    fn turns_go_round_the_waiting_tenants_in_order() {
        let mut w = Waiting::default();
        let mut rxs = Vec::new();
        for t in ["a", "a", "a", "b", "c"] {
            let (tx, rx) = oneshot::channel::<bool>();
            w.queues.entry(Arc::from(t)).or_default().push_back(tx);
            rxs.push((t, rx));
        }
        let mut served = Vec::new();
        while let Some(tx) = w.pop_next() {
            tx.send(false).unwrap();
            served.push(w.last.as_deref().unwrap().to_string());
        }
        assert_eq!(served, ["a", "b", "c", "a", "a"]);
    }
}
