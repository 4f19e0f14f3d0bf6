//! The login throttle: failed sign-ins slow down further tries, per user name and per source
//! address, sans-IO (the endpoint passes the time).
//!
//! The first few failures are free (typos happen). After them each further failure makes the
//! key wait twice as long before the next try, up to [`ThrottlePolicy::max_delay`]; a key with
//! no failure for [`ThrottlePolicy::forget_after`] starts over, and a success clears the user's
//! count. So a guesser gets a handful of tries a minute at most, and a legitimate user is never
//! locked out for longer than the longest delay. Source addresses get more free failures than
//! user names, since many people may share one address behind NAT.
//!
//! The table is bounded ([`ThrottlePolicy::capacity`]); when it is full, the entry whose last
//! failure is oldest makes room (a spray over many names cannot grow memory, and the entries
//! it displaces are the least recent guessers).

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

/// The throttle's limits.
#[derive(Clone, Copy, Debug)]
pub struct ThrottlePolicy {
    /// Failures of one user name before the delays start.
    pub free_per_user: u32,
    /// Failures from one source address before the delays start.
    pub free_per_source: u32,
    /// The first delay; each further failure doubles it.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A key with no failure for this long is forgotten.
    pub forget_after: Duration,
    /// Keys remembered at most.
    pub capacity: usize,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        ThrottlePolicy {
            free_per_user: 5,
            free_per_source: 20,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            forget_after: Duration::from_secs(15 * 60),
            capacity: 10_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Source(IpAddr),
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    blocked_until: Instant,
}

/// A throttle refused a try: what to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// "user" or "source".
    pub by: &'static str,
    pub retry_after: Duration,
}

/// The throttle.
#[derive(Debug, Default)]
pub struct Throttle {
    policy: ThrottlePolicy,
    entries: HashMap<Key, Entry>,
}

impl Throttle {
    pub fn new(policy: ThrottlePolicy) -> Self {
        Throttle {
            policy,
            entries: HashMap::new(),
        }
    }

    fn user_key(user: &str) -> Key {
        Key::User(user.to_lowercase())
    }

    /// May `user` from `source` try now?
    pub fn check(&mut self, now: Instant, user: &str, source: IpAddr) -> Result<(), Refusal> {
        for (key, by) in [
            (Self::user_key(user), "user"),
            (Key::Source(source), "source"),
        ] {
            if let Some(e) = self.entries.get(&key) {
                if now.saturating_duration_since(e.last_failure) >= self.policy.forget_after {
                    self.entries.remove(&key);
                } else if now < e.blocked_until {
                    return Err(Refusal {
                        by,
                        retry_after: e.blocked_until - now,
                    });
                }
            }
        }
        Ok(())
    }

    /// A try failed. Returns the keys ("user", "source") whose delays start with this
    /// failure — the moment to log a burst, once.
    pub fn failed(&mut self, now: Instant, user: &str, source: IpAddr) -> Vec<&'static str> {
        let mut started = Vec::new();
        for (key, by, free) in [
            (Self::user_key(user), "user", self.policy.free_per_user),
            (Key::Source(source), "source", self.policy.free_per_source),
        ] {
            if !self.entries.contains_key(&key) && self.entries.len() >= self.policy.capacity {
                self.evict_oldest();
            }
            let policy = self.policy;
            let e = self.entries.entry(key).or_insert(Entry {
                failures: 0,
                last_failure: now,
                blocked_until: now,
            });
            if now.saturating_duration_since(e.last_failure) >= policy.forget_after {
                e.failures = 0;
            }
            e.failures = e.failures.saturating_add(1);
            e.last_failure = now;
            if e.failures > free {
                let doublings = (e.failures - free - 1).min(16);
                let delay = policy
                    .base_delay
                    .saturating_mul(1 << doublings)
                    .min(policy.max_delay);
                e.blocked_until = now + delay;
                if e.failures == free + 1 {
                    started.push(by);
                }
            }
        }
        started
    }

    /// A sign-in succeeded: the user's count starts over (the source's does not: one good
    /// password behind a NAT must not reset a guesser next to it).
    pub fn succeeded(&mut self, user: &str) {
        self.entries.remove(&Self::user_key(user));
    }

    fn evict_oldest(&mut self) {
        if let Some(key) = self
            .entries
            .iter()
            .min_by_key(|(_, e)| e.last_failure)
            .map(|(k, _)| k.clone())
        {
            self.entries.remove(&key);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn free_failures_then_doubling_delays_capped_and_forgotten() {
        let mut t = Throttle::new(ThrottlePolicy::default());
        let t0 = Instant::now();
        for i in 0..5 {
            assert_eq!(t.check(t0, "alice", SRC), Ok(()), "try {i}");
            assert!(t.failed(t0, "alice", SRC).is_empty());
        }
        // The sixth failure starts the delays, and says so once.
        assert_eq!(t.failed(t0, "Alice", SRC), vec!["user"]);
        let r = t.check(t0, "ALICE", SRC).expect_err("throttled");
        assert_eq!((r.by, r.retry_after), ("user", Duration::from_secs(1)));
        assert_eq!(t.check(t0 + Duration::from_secs(1), "alice", SRC), Ok(()));
        // Doubling: 2 s, 4 s, ... capped at 60 s; never logged again in the burst.
        let mut now = t0 + Duration::from_secs(1);
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            assert!(t.failed(now, "alice", SRC).is_empty());
            last = t
                .check(now, "alice", SRC)
                .expect_err("throttled")
                .retry_after;
            now += last;
        }
        assert_eq!(last, Duration::from_secs(60));
        // Other users are not affected.
        assert_eq!(t.check(now - last, "bob", SRC), Ok(()));
        // Quiet for 15 minutes: forgotten.
        let later = now + Duration::from_secs(15 * 60);
        assert_eq!(t.check(later, "alice", SRC), Ok(()));
        assert!(t.failed(later, "alice", SRC).is_empty());
    }

    #[test]
    fn a_success_clears_the_user_but_not_the_source() {
        let mut t = Throttle::new(ThrottlePolicy {
            free_per_source: 3,
            ..Default::default()
        });
        let t0 = Instant::now();
        for u in ["a", "b", "c", "d"] {
            t.failed(t0, u, SRC);
        }
        t.succeeded("d");
        let r = t.check(t0, "e", SRC).expect_err("the source is throttled");
        assert_eq!(r.by, "source");
    }

    #[test]
    fn the_table_is_bounded_and_the_oldest_entry_makes_room() {
        let mut t = Throttle::new(ThrottlePolicy {
            capacity: 100,
            free_per_user: 0,
            ..Default::default()
        });
        let t0 = Instant::now();
        // The oldest guesser first, then a spray over many names from other addresses.
        t.failed(t0, "victim", SRC);
        for i in 0..500u32 {
            let src = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            t.failed(
                t0 + Duration::from_millis(u64::from(i) + 1),
                &format!("u{i}"),
                src,
            );
            assert!(t.len() <= 100, "{} entries", t.len());
        }
        // The most recent guessers are still throttled.
        let src = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + 499));
        assert!(t
            .check(t0 + Duration::from_millis(500), "u499", src)
            .is_err());
    }
}
