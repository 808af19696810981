//! RingCentral's rate-limit groups: a sliding window per group, and a
//! penalty after the limit is exceeded that every request made during it
//! restarts.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A rate-limit group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// 50 requests a minute by default (message store, most reads).
    Light,
    /// 40 a minute (subscription changes).
    Medium,
    /// 10 a minute (call log).
    Heavy,
    /// 5 a minute (token endpoint).
    Auth,
}

impl Group {
    /// Every group.
    pub const ALL: [Group; 4] = [Group::Light, Group::Medium, Group::Heavy, Group::Auth];

    /// The name sent in `X-Rate-Limit-Group`.
    pub fn name(self) -> &'static str {
        match self {
            Group::Light => "light",
            Group::Medium => "medium",
            Group::Heavy => "heavy",
            Group::Auth => "auth",
        }
    }

    /// RingCentral's default limit for the group.
    pub fn default_limit(self) -> GroupLimit {
        let requests = match self {
            Group::Light => 50,
            Group::Medium => 40,
            Group::Heavy => 10,
            Group::Auth => 5,
        };
        GroupLimit {
            requests,
            window: Duration::from_secs(60),
            penalty: Duration::from_secs(60),
        }
    }
}

/// The limit of one group.
#[derive(Debug, Clone, Copy)]
pub struct GroupLimit {
    /// Requests allowed per window.
    pub requests: u32,
    /// The sliding window.
    pub window: Duration,
    /// How long a group stays blocked after the limit is exceeded.
    pub penalty: Duration,
}

/// What the limiter decided about one request.
pub(crate) enum Verdict {
    Allowed {
        limit: GroupLimit,
        remaining: u32,
    },
    Throttled {
        limit: GroupLimit,
        retry_after: Duration,
    },
}

impl Verdict {
    /// (`-Limit`, `-Remaining`, `-Window` in seconds) for the headers.
    pub(crate) fn headers(&self) -> (u32, u32, u64) {
        match self {
            Verdict::Allowed { limit, remaining } => {
                (limit.requests, *remaining, limit.window.as_secs().max(1))
            }
            Verdict::Throttled { limit, .. } => (limit.requests, 0, limit.window.as_secs().max(1)),
        }
    }
}

#[derive(Default)]
struct GroupState {
    sent: VecDeque<Instant>,
    penalty_until: Option<Instant>,
}

pub(crate) struct Limiter {
    limits: HashMap<Group, GroupLimit>,
    state: HashMap<Group, GroupState>,
}

impl Limiter {
    pub(crate) fn new(limits: HashMap<Group, GroupLimit>) -> Self {
        Self {
            limits,
            state: HashMap::new(),
        }
    }

    pub(crate) fn admit(&mut self, group: Group, now: Instant) -> Verdict {
        let limit = self
            .limits
            .get(&group)
            .copied()
            .unwrap_or_else(|| group.default_limit());
        let st = self.state.entry(group).or_default();
        if let Some(until) = st.penalty_until
            && now < until
        {
            // Every request during the penalty restarts it.
            st.penalty_until = Some(now + limit.penalty);
            return Verdict::Throttled {
                limit,
                retry_after: limit.penalty,
            };
        }
        while st
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= limit.window)
        {
            st.sent.pop_front();
        }
        if st.sent.len() as u32 >= limit.requests {
            st.penalty_until = Some(now + limit.penalty);
            return Verdict::Throttled {
                limit,
                retry_after: limit.penalty,
            };
        }
        st.sent.push_back(now);
        Verdict::Allowed {
            limit,
            remaining: limit.requests - st.sent.len() as u32,
        }
    }
}
