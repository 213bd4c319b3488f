//! SIP timer values (RFC 3261 17 and its table A, RFC 6026) and a deadline
//! queue. No clock is read here: callers pass `now`.
//!
//! | timer | meaning                                   | unreliable (UDP)    | reliable (TCP/TLS) |
//! |-------|-------------------------------------------|---------------------|--------------------|
//! | A     | INVITE client retransmit                  | T1, doubling        | none               |
//! | B     | INVITE client timeout (Calling)           | 64*T1               | 64*T1              |
//! | D     | INVITE client wait in Completed           | [`TimerConfig::timer_d`] (32 s) | 0      |
//! | E     | non-INVITE client retransmit              | T1, doubling to T2; T2 once a 1xx arrived | none |
//! | F     | non-INVITE client timeout                 | 64*T1               | 64*T1              |
//! | K     | non-INVITE client wait in Completed       | T4                  | 0                  |
//! | G     | INVITE server non-2xx final retransmit    | T1, doubling to T2  | none               |
//! | H     | INVITE server wait for ACK                | 64*T1               | 64*T1              |
//! | I     | INVITE server wait in Confirmed           | T4                  | 0                  |
//! | J     | non-INVITE server wait in Completed       | 64*T1               | 0                  |
//! | L     | INVITE server in Accepted (RFC 6026)      | 64*T1               | 64*T1              |
//! | M     | INVITE client in Accepted (RFC 6026)      | 64*T1               | 64*T1              |
//! | 2xx   | UAS 2xx retransmit until ACK (13.3.1.4)   | T1, doubling to T2  | none               |

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

/// The base timer values. Defaults are RFC 3261's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate; retransmission intervals start here. Default 500 ms.
    pub t1: Duration,
    /// Longest retransmission interval for non-INVITE requests and INVITE
    /// responses. Default 4 s.
    pub t2: Duration,
    /// Longest time a message stays in the network. Default 5 s.
    pub t4: Duration,
    /// Timer D on unreliable transports (RFC 3261: at least 32 s).
    pub timer_d: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            timer_d: Duration::from_secs(32),
        }
    }
}

impl TimerConfig {
    /// 64*T1: timers B, F, H, J (unreliable), L and M.
    pub fn timeout_64t1(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// The next retransmission interval after `current`: doubled, and
    /// capped at T2 when `cap` (timers E and G; timer A is not capped).
    pub fn backoff(&self, current: Duration, cap: bool) -> Duration {
        let next = current.saturating_mul(2);
        if cap { next.min(self.t2) } else { next }
    }
}

/// One deadline per key, earliest first (ties in key order, so the order
/// of expiry is deterministic).
#[derive(Clone, Debug)]
pub struct DeadlineQueue<K: Ord + Clone> {
    queue: BTreeSet<(Instant, K)>,
    by_key: BTreeMap<K, Instant>,
}

impl<K: Ord + Clone> Default for DeadlineQueue<K> {
    fn default() -> Self {
        DeadlineQueue {
            queue: BTreeSet::new(),
            by_key: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> DeadlineQueue<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or moves) the deadline of `key`; `None` removes it.
    pub fn set(&mut self, key: K, at: Option<Instant>) {
        if let Some(old) = self.by_key.remove(&key) {
            self.queue.remove(&(old, key.clone()));
        }
        if let Some(at) = at {
            self.queue.insert((at, key.clone()));
            self.by_key.insert(key, at);
        }
    }

    pub fn remove(&mut self, key: &K) {
        if let Some(old) = self.by_key.remove(key) {
            self.queue.remove(&(old, key.clone()));
        }
    }

    pub fn get(&self, key: &K) -> Option<Instant> {
        self.by_key.get(key).copied()
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.first().map(|(at, _)| *at)
    }

    /// Removes and returns the earliest key whose deadline is at or before
    /// `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        let (at, _) = self.queue.first()?;
        if *at > now {
            return None;
        }
        let (_, key) = self.queue.pop_first()?;
        self.by_key.remove(&key);
        Some(key)
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_rfc3261() {
        let t = TimerConfig::default();
        assert_eq!(t.t1, Duration::from_millis(500));
        assert_eq!(t.t2, Duration::from_secs(4));
        assert_eq!(t.t4, Duration::from_secs(5));
        assert_eq!(t.timeout_64t1(), Duration::from_secs(32));
        assert_eq!(
            t.backoff(Duration::from_secs(2), true),
            Duration::from_secs(4)
        );
        assert_eq!(
            t.backoff(Duration::from_secs(4), true),
            Duration::from_secs(4)
        );
        assert_eq!(
            t.backoff(Duration::from_secs(4), false),
            Duration::from_secs(8)
        );
    }

    #[test]
    fn queue_orders_moves_and_removes() {
        let t0 = Instant::now();
        let mut q = DeadlineQueue::new();
        q.set(3u64, Some(t0 + Duration::from_secs(3)));
        q.set(1, Some(t0 + Duration::from_secs(1)));
        q.set(2, Some(t0 + Duration::from_secs(1)));
        assert_eq!(q.len(), 3);
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_secs(1)));
        q.set(1, Some(t0 + Duration::from_secs(5)));
        assert_eq!(q.get(&1), Some(t0 + Duration::from_secs(5)));
        assert_eq!(q.pop_due(t0), None);
        assert_eq!(q.pop_due(t0 + Duration::from_secs(3)), Some(2));
        assert_eq!(q.pop_due(t0 + Duration::from_secs(3)), Some(3));
        assert_eq!(q.pop_due(t0 + Duration::from_secs(3)), None);
        q.remove(&1);
        assert!(q.is_empty());
        assert_eq!(q.next_deadline(), None);
        q.set(4, Some(t0));
        q.set(4, None);
        assert!(q.is_empty());
    }
}
