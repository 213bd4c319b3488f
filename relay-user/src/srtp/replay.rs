//! Packet index estimation (RFC 3711 section 3.3.1 and appendix A) and the
//! sliding replay window (section 3.3.2).

use super::Error;

/// Packets the window remembers behind the highest index: RFC 3711 asks for
/// at least 64; libsrtp uses 128, and so do we, since a relay sees the
/// reordering of two networks.
pub const WINDOW: u64 = 128;

/// The highest authenticated index and which of the [`WINDOW`] indices
/// below it were seen.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ReplayWindow {
    highest: u64,
    /// Bit i set: index `highest - i` was received.
    seen: u128,
}

impl ReplayWindow {
    /// A window whose first packet is `index`.
    pub(crate) fn starting_at(index: u64) -> Self {
        Self {
            highest: index,
            seen: 1,
        }
    }

    pub(crate) fn highest(&self) -> u64 {
        self.highest
    }

    /// Whether `index` may be accepted (nothing changes until [`Self::accept`],
    /// which comes only after authentication).
    pub(crate) fn check(&self, index: u64) -> Result<(), Error> {
        if index > self.highest {
            return Ok(());
        }
        let delta = self.highest - index;
        if delta >= WINDOW {
            return Err(Error::TooOld);
        }
        if self.seen >> delta & 1 == 1 {
            return Err(Error::Replay);
        }
        Ok(())
    }

    /// Records `index` as received.
    pub(crate) fn accept(&mut self, index: u64) {
        if index > self.highest {
            let shift = index - self.highest;
            self.seen = if shift >= WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = index;
        } else {
            let delta = self.highest - index;
            if delta < WINDOW {
                self.seen |= 1 << delta;
            }
        }
    }
}

/// The 48-bit index (ROC << 16 | SEQ) a packet with sequence number `seq`
/// most likely has, given the highest index so far (RFC 3711 appendix A).
/// A guess below index 0 is older than the stream: [`Error::TooOld`]. A ROC
/// past 2^32 - 1 cannot be represented: [`Error::KeyExhausted`].
pub(crate) fn estimate_index(highest: u64, seq: u16) -> Result<u64, Error> {
    let roc = highest >> 16;
    let s_l = highest as u16;
    let v = if s_l < 0x8000 {
        if seq > s_l && seq - s_l > 0x8000 {
            roc.checked_sub(1).ok_or(Error::TooOld)?
        } else {
            roc
        }
    } else if s_l - 0x8000 > seq {
        roc + 1
    } else {
        roc
    };
    if v > u64::from(u32::MAX) {
        return Err(Error::KeyExhausted);
    }
    Ok(v << 16 | u64::from(seq))
}
