//! Replies by (client, cookie), so a retransmitted request is answered again
//! without being executed twice. The proxy modules retransmit a request whose
//! reply they have not seen after `rtpengine_tout_ms` (1 s by default), up to
//! `rtpengine_retr` times (5): a reply must stay findable for a few seconds.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    time::{Duration, Instant},
};

/// How long a reply is kept.
pub const TTL: Duration = Duration::from_secs(30);
/// Most replies kept, and most bytes over all of them (a reply can be up to a
/// datagram, 64 KiB): whichever bound is hit first evicts the oldest.
pub const MAX_ENTRIES: usize = 100_000;
pub const MAX_BYTES: usize = 64 << 20;

type Key = (SocketAddr, Vec<u8>);

#[derive(Default)]
pub struct ReplyCache {
    map: HashMap<Key, Vec<u8>>,
    /// Insertion order with insertion time: the front expires first.
    order: VecDeque<(Instant, Key)>,
    bytes: usize,
}

impl ReplyCache {
    pub fn get(&self, from: SocketAddr, cookie: &[u8]) -> Option<&[u8]> {
        self.map.get(&(from, cookie.to_vec())).map(Vec::as_slice)
    }

    pub fn insert(&mut self, from: SocketAddr, cookie: &[u8], reply: Vec<u8>, now: Instant) {
        self.expire(now);
        let key = (from, cookie.to_vec());
        let size = reply.len() + cookie.len();
        if let Some(old) = self.map.insert(key.clone(), reply) {
            // Same cookie again after its first reply: keep the first entry's
            // place in the queue, account for the new size.
            self.bytes -= old.len() + cookie.len();
        } else {
            self.order.push_back((now, key));
        }
        self.bytes += size;
        while self.map.len() > MAX_ENTRIES || self.bytes > MAX_BYTES {
            if !self.pop_front() {
                break;
            }
        }
    }

    /// Drops replies older than [`TTL`].
    pub fn expire(&mut self, now: Instant) {
        while let Some((t, _)) = self.order.front() {
            if now.saturating_duration_since(*t) < TTL {
                break;
            }
            self.pop_front();
        }
    }

    fn pop_front(&mut self) -> bool {
        let Some((_, key)) = self.order.pop_front() else {
            return false;
        };
        if let Some(reply) = self.map.remove(&key) {
            self.bytes -= reply.len() + key.1.len();
        }
        true
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_by_client_and_cookie_and_expires() {
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let t0 = Instant::now();
        let mut c = ReplyCache::default();
        c.insert(a, b"1_2_3", b"d6:result4:ponge".to_vec(), t0);
        assert_eq!(c.get(a, b"1_2_3"), Some(&b"d6:result4:ponge"[..]));
        assert_eq!(c.get(b, b"1_2_3"), None, "another client's cookie");
        assert_eq!(c.get(a, b"1_2_4"), None);
        c.expire(t0 + TTL - Duration::from_millis(1));
        assert_eq!(c.len(), 1);
        c.expire(t0 + TTL);
        assert!(c.is_empty());
        assert_eq!(c.bytes, 0);
    }

    #[test]
    fn bounded_in_bytes() {
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let t0 = Instant::now();
        let mut c = ReplyCache::default();
        let big = vec![b'x'; 60_000];
        for i in 0..2_000u32 {
            c.insert(a, &i.to_be_bytes(), big.clone(), t0);
        }
        assert!(c.bytes <= MAX_BYTES);
        assert!(c.get(a, &1999u32.to_be_bytes()).is_some(), "newest kept");
        assert!(c.get(a, &0u32.to_be_bytes()).is_none(), "oldest evicted");
        assert_eq!(c.map.len(), c.order.len());
    }
}
