//! Which shard runs which tenant: rendezvous (highest random weight) hashing
//! over the tenant name, so every process computes the same answer alone.
//!
//! Each tenant goes to the shard with the highest `hash(tenant, shard)`.
//! Adding a tenant moves no other tenant; going from N to N+1 shards moves
//! only the tenants the new shard now wins (about 1/(N+1) of them), and
//! removing a shard moves only that shard's tenants.

use sha2::{Digest, Sha256};

/// Kubernetes sets this in every pod of an Indexed Job (0-based).
pub const JOB_COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// The shard count when the index comes from [`JOB_COMPLETION_INDEX_ENV`].
pub const SHARDS_ENV: &str = "EXPENSE_SYNC_SHARDS";

/// One shard out of several: `index` in `0..count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, 0-based.
    pub index: u32,
    /// How many shards there are.
    pub count: u32,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `INDEX/COUNT`, e.g. `0/3`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("`{s}` is not a shard: write INDEX/COUNT with 0 <= INDEX < COUNT, e.g. 0/3");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        Shard::new(index, count).ok_or_else(bad)
    }
}

impl Shard {
    /// `index` of `count`, if `index < count`.
    pub fn new(index: u32, count: u32) -> Option<Shard> {
        (index < count).then_some(Shard { index, count })
    }

    /// The shard from the environment of a Kubernetes Indexed Job: the index
    /// from `JOB_COMPLETION_INDEX`, the count from `count` (`--shards`, or
    /// `EXPENSE_SYNC_SHARDS`). `Ok(None)` when no index is set.
    pub fn from_job_index(
        index: Option<&str>,
        count: Option<u32>,
    ) -> Result<Option<Shard>, String> {
        let Some(index) = index.map(str::trim).filter(|i| !i.is_empty()) else {
            return Ok(None);
        };
        let i: u32 = index.parse().map_err(|_| {
            format!("{JOB_COMPLETION_INDEX_ENV}=`{index}` is not a shard index (a number from 0)")
        })?;
        let Some(n) = count else {
            return Err(format!(
                "{JOB_COMPLETION_INDEX_ENV}={i} is set but not the number of shards: pass --shards N \
                 or set {SHARDS_ENV} (the Job's `completions`)"
            ));
        };
        Shard::new(i, n).map(Some).ok_or_else(|| {
            format!("{JOB_COMPLETION_INDEX_ENV}={i} is not below the shard count {n}: --shards / {SHARDS_ENV} must equal the Job's `completions`")
        })
    }

    /// Whether this shard runs `tenant`.
    pub fn owns(&self, tenant: &str) -> bool {
        shard_of(tenant, self.count) == self.index
    }

    /// The items (tenants) of `all` this shard runs, in their order.
    pub fn pick<T>(&self, all: Vec<T>, name: impl Fn(&T) -> &str) -> Vec<T> {
        all.into_iter().filter(|t| self.owns(name(t))).collect()
    }
}

/// The shard (`0..count`) that runs `tenant`.
pub fn shard_of(tenant: &str, count: u32) -> u32 {
    (0..count.max(1))
        .max_by_key(|&shard| (weight(tenant, shard), shard))
        .unwrap_or(0)
}

/// A stable weight of (tenant, shard): SHA-256, so it never changes across
/// versions, platforms or processes.
fn weight(tenant: &str, shard: u32) -> u64 {
    let mut h = Sha256::new();
    h.update(tenant.as_bytes());
    h.update([0]);
    h.update(shard.to_be_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("tenant-{i:04}")).collect()
    }

    #[test]
    fn every_tenant_belongs_to_exactly_one_shard() {
        for count in [1, 2, 3, 7] {
            for t in names(300) {
                let owners = (0..count)
                    .filter(|&i| Shard::new(i, count).unwrap().owns(&t))
                    .count();
                assert_eq!(owners, 1, "{t} with {count} shards");
            }
        }
    }

    #[test]
    fn shards_get_about_equal_shares() {
        let count = 4;
        let mut per = [0usize; 4];
        for t in names(4000) {
            per[shard_of(&t, count) as usize] += 1;
        }
        for n in per {
            assert!((850..=1150).contains(&n), "uneven: {per:?}");
        }
    }

    #[test]
    fn adding_a_tenant_moves_no_other() {
        let before = names(200);
        let mut after = before.clone();
        after.insert(17, "newcomer".into());
        for i in 0..5 {
            let shard = Shard::new(i, 5).unwrap();
            let mut then = shard.pick(before.clone(), |t| t);
            let now = shard.pick(after.clone(), |t| t);
            if shard.owns("newcomer") {
                then.insert(
                    now.iter().position(|t| t == "newcomer").unwrap(),
                    "newcomer".into(),
                );
            }
            assert_eq!(then, now, "shard {shard}");
        }
    }

    #[test]
    fn adding_a_shard_moves_about_one_in_n_plus_one_and_only_to_the_new_shard() {
        let tenants = names(3000);
        for n in [2u32, 3, 5] {
            let moved: Vec<&String> = tenants
                .iter()
                .filter(|t| shard_of(t, n) != shard_of(t, n + 1))
                .collect();
            for t in &moved {
                assert_eq!(shard_of(t, n + 1), n, "{t} moved to an old shard");
            }
            let expected = tenants.len() / (n as usize + 1);
            assert!(
                moved.len() > expected * 8 / 10 && moved.len() < expected * 12 / 10,
                "{} of {} moved going from {n} to {} shards",
                moved.len(),
                tenants.len(),
                n + 1
            );
        }
    }

    #[test]
    fn shard_parses_index_over_count_and_explains_mistakes() {
        assert_eq!(
            "1/3".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 3 }
        );
        assert!("3/3".parse::<Shard>().unwrap_err().contains("INDEX/COUNT"));
        assert!("x".parse::<Shard>().is_err());
        assert_eq!(
            Shard::from_job_index(Some("2"), Some(4)).unwrap(),
            Some(Shard { index: 2, count: 4 })
        );
        assert_eq!(Shard::from_job_index(None, Some(4)).unwrap(), None);
        assert!(
            Shard::from_job_index(Some("2"), None)
                .unwrap_err()
                .contains("--shards")
        );
        assert!(Shard::from_job_index(Some("4"), Some(4)).is_err());
    }
}
