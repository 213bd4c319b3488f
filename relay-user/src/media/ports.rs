//! RTP/RTCP port pairs of one interface's media range.
//!
//! Pairs never handed out go first, in ascending order; released pairs come
//! back only after that, oldest release first. A freed port therefore rests as
//! long as possible before a new call gets it, and packets still in flight for
//! the old call (or a peer that did not hear the BYE) do not land in the new
//! one.

use std::collections::VecDeque;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("port range {min}-{max}: {reason}")]
    InvalidRange {
        min: u16,
        max: u16,
        reason: &'static str,
    },
    #[error("no free port pair in {min}-{max}")]
    Exhausted { min: u16, max: u16 },
    #[error("port {port} is outside the range {min}-{max}")]
    OutOfRange { port: u16, min: u16, max: u16 },
    #[error("port {port} is odd: pairs are named by their even (RTP) port")]
    NotEven { port: u16 },
    #[error("port pair {port} is not allocated")]
    NotAllocated { port: u16 },
    #[error("port pair {port} is already in use")]
    InUse { port: u16 },
}

/// State of one pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pair {
    /// Never handed out or reserved.
    Fresh,
    InUse,
    /// Released; waiting in the queue.
    Released,
}

/// RTP/RTCP port pairs of one interface's media range: RTP even, RTCP = RTP + 1.
///
/// Memory is O(range): one byte per pair plus a queue of released pairs.
#[derive(Clone, Debug)]
pub struct PortAllocator {
    min: u16,
    max: u16,
    pairs: Vec<Pair>,
    /// Pairs below this index are not `Fresh` or were skipped as taken.
    next_fresh: usize,
    /// Released pairs (indexes), oldest release first; each `Released` pair
    /// is in here exactly once.
    released: VecDeque<usize>,
    in_use: usize,
}

impl PortAllocator {
    /// `min` even and non-zero, `max` odd, `min <= max` (the configuration
    /// validates this too).
    pub fn new(min: u16, max: u16) -> Result<Self, PortError> {
        let invalid = |reason| Err(PortError::InvalidRange { min, max, reason });
        if min == 0 {
            return invalid("port 0 cannot be allocated");
        }
        if !min.is_multiple_of(2) {
            return invalid("the first port must be even (RTP)");
        }
        if max.is_multiple_of(2) {
            return invalid("the last port must be odd (RTCP)");
        }
        if min > max {
            return invalid("the first port is above the last");
        }
        let count = usize::from(max - min) / 2 + 1;
        Ok(Self {
            min,
            max,
            pairs: vec![Pair::Fresh; count],
            next_fresh: 0,
            released: VecDeque::with_capacity(count),
            in_use: 0,
        })
    }

    /// Allocates a pair and returns its even (RTP) port. Released pairs are
    /// reused only after every never-used pair has been handed out, and in
    /// release order (FIFO).
    pub fn allocate(&mut self) -> Result<u16, PortError> {
        while let Some(state) = self.pairs.get(self.next_fresh).copied() {
            let i = self.next_fresh;
            self.next_fresh += 1;
            if state == Pair::Fresh {
                return Ok(self.take(i));
            }
        }
        match self.released.pop_front() {
            Some(i) => Ok(self.take(i)),
            None => Err(PortError::Exhausted {
                min: self.min,
                max: self.max,
            }),
        }
    }

    /// Returns a pair by its RTP port. Releasing a pair that is not allocated
    /// (or releasing it twice) is an error.
    pub fn release(&mut self, rtp: u16) -> Result<(), PortError> {
        let i = self.index(rtp)?;
        if self.pairs[i] != Pair::InUse {
            return Err(PortError::NotAllocated { port: rtp });
        }
        self.pairs[i] = Pair::Released;
        self.released.push_back(i);
        self.in_use -= 1;
        Ok(())
    }

    /// Marks a specific pair as used (for rules adopted at restart). An error
    /// if it is taken or out of range.
    pub fn reserve(&mut self, rtp: u16) -> Result<(), PortError> {
        let i = self.index(rtp)?;
        match self.pairs[i] {
            Pair::InUse => return Err(PortError::InUse { port: rtp }),
            // Rare (restarts, static rules): a linear search is fine.
            Pair::Released => self.released.retain(|&r| r != i),
            Pair::Fresh => {}
        }
        self.take(i);
        Ok(())
    }

    /// Whether the pair of `rtp` is allocated or reserved.
    pub fn is_in_use(&self, rtp: u16) -> bool {
        self.index(rtp).is_ok_and(|i| self.pairs[i] == Pair::InUse)
    }

    /// Pairs allocated or reserved.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Pairs in the range.
    pub fn capacity(&self) -> usize {
        self.pairs.len()
    }

    /// The range, `(min, max)`.
    pub fn range(&self) -> (u16, u16) {
        (self.min, self.max)
    }

    fn take(&mut self, i: usize) -> u16 {
        self.pairs[i] = Pair::InUse;
        self.in_use += 1;
        self.port_of(i)
    }

    fn port_of(&self, i: usize) -> u16 {
        // i < pairs.len(), so this stays within min..=max.
        self.min + 2 * i as u16
    }

    fn index(&self, rtp: u16) -> Result<usize, PortError> {
        if rtp < self.min || rtp > self.max {
            return Err(PortError::OutOfRange {
                port: rtp,
                min: self.min,
                max: self.max,
            });
        }
        if !rtp.is_multiple_of(2) {
            return Err(PortError::NotEven { port: rtp });
        }
        Ok(usize::from(rtp - self.min) / 2)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn pairs_are_even_rtp_with_odd_rtcp() {
        let mut a = PortAllocator::new(30000, 30009).unwrap();
        assert_eq!(a.capacity(), 5);
        let ports: Vec<u16> = (0..5).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(ports, [30000, 30002, 30004, 30006, 30008]);
        assert!(ports.iter().all(|p| p.is_multiple_of(2) && p + 1 < 30010));
        assert_eq!(a.in_use(), 5);
    }

    #[test]
    fn invalid_ranges() {
        for (min, max) in [(30001, 30009), (30000, 30008), (30010, 30001), (0, 9)] {
            let e = PortAllocator::new(min, max).unwrap_err();
            assert!(
                matches!(e, PortError::InvalidRange { min: a, max: b, .. } if (a, b) == (min, max)),
                "{min}-{max}: {e:?}"
            );
        }
        assert_eq!(
            PortAllocator::new(30001, 30009).unwrap_err().to_string(),
            "port range 30001-30009: the first port must be even (RTP)"
        );
    }

    #[test]
    fn exhaustion_is_an_error() {
        let mut a = PortAllocator::new(2000, 2005).unwrap();
        for _ in 0..3 {
            a.allocate().unwrap();
        }
        let e = a.allocate().unwrap_err();
        assert_eq!(
            e,
            PortError::Exhausted {
                min: 2000,
                max: 2005
            }
        );
        assert_eq!(e.to_string(), "no free port pair in 2000-2005");
        // Still exhausted, still consistent.
        assert_eq!(a.allocate(), Err(e));
        assert_eq!(a.in_use(), 3);
        a.release(2002).unwrap();
        assert_eq!(a.allocate(), Ok(2002));
    }

    #[test]
    fn released_pairs_wait_for_fresh_ones_then_come_back_fifo() {
        let mut a = PortAllocator::new(1000, 1011).unwrap(); // 6 pairs
        assert_eq!(a.allocate(), Ok(1000));
        assert_eq!(a.allocate(), Ok(1002));
        assert_eq!(a.allocate(), Ok(1004));
        a.release(1002).unwrap();
        a.release(1000).unwrap();
        // Fresh pairs first, although 1000 and 1002 are free.
        assert_eq!(a.allocate(), Ok(1006));
        assert_eq!(a.allocate(), Ok(1008));
        a.release(1004).unwrap();
        assert_eq!(a.allocate(), Ok(1010));
        // Then in release order: 1002, 1000, 1004.
        assert_eq!(a.allocate(), Ok(1002));
        a.release(1010).unwrap();
        assert_eq!(a.allocate(), Ok(1000));
        assert_eq!(a.allocate(), Ok(1004));
        assert_eq!(a.allocate(), Ok(1010));
        assert!(matches!(a.allocate(), Err(PortError::Exhausted { .. })));
    }

    #[test]
    fn bad_releases_are_errors() {
        let mut a = PortAllocator::new(1000, 1011).unwrap();
        let p = a.allocate().unwrap();
        a.release(p).unwrap();
        assert_eq!(a.release(p), Err(PortError::NotAllocated { port: p }));
        assert_eq!(a.release(1004), Err(PortError::NotAllocated { port: 1004 }));
        assert_eq!(a.release(1001), Err(PortError::NotEven { port: 1001 }));
        assert_eq!(
            a.release(998),
            Err(PortError::OutOfRange {
                port: 998,
                min: 1000,
                max: 1011
            })
        );
        assert_eq!(
            a.release(1012),
            Err(PortError::OutOfRange {
                port: 1012,
                min: 1000,
                max: 1011
            })
        );
        assert_eq!(a.in_use(), 0);
        // The failed releases queued nothing: the pair comes back once.
        for want in [1002, 1004, 1006, 1008, 1010, 1000] {
            assert_eq!(a.allocate(), Ok(want));
        }
        assert!(a.allocate().is_err());
    }

    #[test]
    fn reserve() {
        let mut a = PortAllocator::new(1000, 1011).unwrap();
        a.reserve(1004).unwrap();
        assert!(a.is_in_use(1004));
        assert_eq!(a.in_use(), 1);
        assert_eq!(a.reserve(1004), Err(PortError::InUse { port: 1004 }));
        assert_eq!(a.reserve(1005), Err(PortError::NotEven { port: 1005 }));
        assert!(matches!(a.reserve(2000), Err(PortError::OutOfRange { .. })));
        // Allocation skips the reserved pair.
        let got: Vec<u16> = (0..5).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(got, [1000, 1002, 1006, 1008, 1010]);
        assert!(a.allocate().is_err());
        // An allocated pair cannot be reserved.
        assert_eq!(a.reserve(1000), Err(PortError::InUse { port: 1000 }));
    }

    #[test]
    fn reserve_released_and_release_reserved() {
        let mut a = PortAllocator::new(1000, 1007).unwrap(); // 4 pairs
        // A reserved pair ahead of the fresh ones, released again, queues like
        // any released pair (after the fresh ones).
        a.reserve(1002).unwrap();
        a.release(1002).unwrap();
        // A released pair taken back by reserve leaves the queue.
        let p = a.allocate().unwrap();
        assert_eq!(p, 1000);
        a.release(p).unwrap();
        a.reserve(p).unwrap();
        assert_eq!(a.allocate(), Ok(1004));
        assert_eq!(a.allocate(), Ok(1006));
        assert_eq!(a.allocate(), Ok(1002));
        assert!(a.allocate().is_err());
        assert_eq!(a.in_use(), 4);
        // Repeated reserve/release keeps one queue entry per pair.
        for _ in 0..10 {
            a.release(1000).unwrap();
            a.reserve(1000).unwrap();
        }
        assert!(a.released.is_empty());
        a.release(1000).unwrap();
        assert_eq!(a.released.len(), 1);
    }

    #[test]
    fn single_pair_range() {
        let mut a = PortAllocator::new(40000, 40001).unwrap();
        assert_eq!(a.capacity(), 1);
        assert_eq!(a.allocate(), Ok(40000));
        assert!(matches!(a.allocate(), Err(PortError::Exhausted { .. })));
        a.release(40000).unwrap();
        assert_eq!(a.allocate(), Ok(40000));
        assert_eq!(a.in_use(), 1);
    }

    #[test]
    fn widest_range() {
        let mut a = PortAllocator::new(2, 65535).unwrap();
        assert_eq!(a.capacity(), 32767);
        assert_eq!(a.reserve(65534), Ok(()));
        assert_eq!(a.range(), (2, 65535));
        let mut last = 0;
        while let Ok(p) = a.allocate() {
            last = p;
        }
        assert_eq!(last, 65532);
        assert_eq!(a.in_use(), a.capacity());
    }

    #[test]
    fn full_range_cycles() {
        let mut a = PortAllocator::new(30000, 39999).unwrap();
        assert_eq!(a.capacity(), 5000);
        let mut order: Vec<u16> = (0..5000).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(order, (30000..40000).step_by(2).collect::<Vec<_>>());
        assert!(matches!(
            a.allocate(),
            Err(PortError::Exhausted {
                min: 30000,
                max: 39999
            })
        ));
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for cycle in 0..4 {
            // Release everything in a shuffled order...
            for i in (1..order.len()).rev() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                order.swap(i, (seed % (i as u64 + 1)) as usize);
            }
            for &p in &order {
                a.release(p).unwrap();
            }
            assert_eq!(a.in_use(), 0, "cycle {cycle}");
            // ...and get it back in exactly that order, each pair once.
            let again: Vec<u16> = (0..5000).map(|_| a.allocate().unwrap()).collect();
            assert_eq!(again, order, "cycle {cycle}");
            assert_eq!(again.iter().collect::<HashSet<_>>().len(), 5000);
            assert!(a.allocate().is_err());
            assert_eq!(a.in_use(), 5000);
        }
        assert!(a.released.capacity() <= 2 * 5000, "queue stays O(range)");
    }
}
