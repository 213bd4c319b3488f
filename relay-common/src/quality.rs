//! Per-flow RTP reception quality, RFC 3550 appendix A, as pure functions.
//!
//! Both data planes call [`rtp_arrived`] for every accepted RTP packet of a
//! rule (RTCP is not counted), on the rule's [`RtpQuality`] inside its
//! `FlowState`, so the XDP program and the userspace forwarder measure with
//! literally the same code. What is kept:
//!
//! - the SSRC and how often it changed; a new SSRC starts a new sequence
//!   state (RFC 3550 A.1 `init_seq`), the finished segment's expected and
//!   received counts are folded into running totals so the flow's loss
//!   survives the change;
//! - the extended highest sequence number (sequence wraps counted in
//!   `cycles`), with A.1's `MAX_DROPOUT` / `MAX_MISORDER` rules: a jump of
//!   3000 or more ahead is ignored unless the next packet confirms it (then
//!   the sequence restarts), anything less than 100 behind is a late packet;
//! - packets received (duplicates included, as in A.3), from which
//!   expected = extended highest − base + 1 and lost = expected − received;
//!   a late packet therefore cancels the loss its gap had counted, and
//!   duplicates can make lost negative (A.3 allows that too);
//! - out-of-order packets: those A.1 classes as "duplicate or reordered"
//!   (behind the highest sequence number). RFC 3550 keeps no such counter;
//! - interarrival jitter (A.8): J += (|D| − J) / 16 with D the difference of
//!   two successive packets' transit times, in RTP timestamp units.
//!
//! A.1's probation (`MIN_SEQUENTIAL`) is left out: it validates a new source
//! in a multicast session, and here the rule's source policy has already
//! decided whom to accept; the first packet starts the state.
//!
//! Precision and cost: arrival times are CLOCK_MONOTONIC ns; the arrival gap
//! is converted into timestamp units with a Q32 multiplier (one multiply and
//! a shift per packet, rounded to 1/16 unit) that is computed with a division
//! only when the rule's clock rate changes. Jitter is kept in 1/256 units
//! (A.8's integer form scaled by 16 once more) so the 1/16-unit arrival
//! resolution is not rounded away. A gap of 2^32 ns (4.3 s) or more between
//! two packets (a pause, hold) is not a network delay sample: it restarts the
//! transit reference instead of feeding D, which also keeps the multiply
//! inside 64 bits. Clock rate 0 means "not RTP or unknown": sequence figures
//! are kept, jitter is not.
//!
//! Everything is `#[inline(always)]`, loop-free and panic-free (wrapping or
//! saturating arithmetic only) so the verifier accepts it and a hostile
//! sequence cannot make userspace panic.

/// RFC 3550 A.1: a jump this far ahead (or more) is not trusted at once.
pub const MAX_DROPOUT: u16 = 3000;
/// RFC 3550 A.1: less than this far behind the highest sequence number, a
/// packet is a late (reordered) one rather than a jump.
pub const MAX_MISORDER: u16 = 100;
/// `bad_seq` value that no 16-bit sequence number matches.
const NO_BAD_SEQ: u32 = 1 << 16 | 1;
/// Arrival gaps at or above this (ns) restart the jitter reference.
pub const MAX_JITTER_GAP_NS: u64 = 1 << 32;

/// `flags`: the sequence state has been started by a first packet.
pub const Q_STARTED: u32 = 1;
/// `flags`: `last_arrival_ns` / `last_ts` hold a jitter reference.
pub const Q_TRANSIT: u32 = 2;

/// The quality state of one rule (part of `FlowState`, written by the data
/// plane, zeroed by userspace with the rest of the state).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RtpQuality {
    /// CLOCK_MONOTONIC ns of the previous packet (jitter reference).
    pub last_arrival_ns: u64,
    /// Interarrival jitter in 1/256 RTP timestamp units (RFC 3550 J × 256).
    pub jitter_q8: u64,
    /// Packets received in the current sequence segment (duplicates count).
    pub received: u64,
    /// Expected and received packets of earlier segments (before an SSRC
    /// change or a sequence restart).
    pub prior_expected: u64,
    pub prior_received: u64,
    /// Current SSRC (valid with [`Q_STARTED`]).
    pub ssrc: u32,
    /// How often the SSRC changed after the first packet.
    pub ssrc_changes: u32,
    /// Sequence number wraps in the current segment.
    pub cycles: u32,
    /// First and highest sequence numbers of the current segment.
    pub base_seq: u16,
    pub max_seq: u16,
    /// A.1's `bad_seq`: the sequence number that would confirm a big jump.
    pub bad_seq: u32,
    /// Packets that arrived behind the highest sequence number.
    pub out_of_order: u32,
    /// RTP timestamp of the previous packet (jitter reference).
    pub last_ts: u32,
    /// The clock rate `ts_per_ns_q32` was computed for.
    pub rate: u32,
    /// Timestamp units per ns, Q32: rate × 2^32 / 10^9.
    pub ts_per_ns_q32: u32,
    /// [`Q_STARTED`], [`Q_TRANSIT`].
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<RtpQuality>() == 80);

impl RtpQuality {
    /// Nothing measured yet (the `Default`, usable in a `static`).
    pub const ZERO: RtpQuality = RtpQuality {
        last_arrival_ns: 0,
        jitter_q8: 0,
        received: 0,
        prior_expected: 0,
        prior_received: 0,
        ssrc: 0,
        ssrc_changes: 0,
        cycles: 0,
        base_seq: 0,
        max_seq: 0,
        bad_seq: 0,
        out_of_order: 0,
        last_ts: 0,
        rate: 0,
        ts_per_ns_q32: 0,
        flags: 0,
    };

    /// Extended highest sequence number of the current segment.
    #[inline(always)]
    pub fn extended_max(&self) -> u64 {
        ((self.cycles as u64) << 16) | self.max_seq as u64
    }

    /// Packets expected over all segments (A.3).
    #[inline(always)]
    pub fn expected(&self) -> u64 {
        self.prior_expected.wrapping_add(self.segment_expected())
    }

    #[inline(always)]
    fn segment_expected(&self) -> u64 {
        if self.flags & Q_STARTED == 0 {
            return 0;
        }
        self.extended_max()
            .wrapping_sub(self.base_seq as u64)
            .wrapping_add(1)
    }

    /// Packets received over all segments.
    #[inline(always)]
    pub fn total_received(&self) -> u64 {
        self.prior_received.wrapping_add(self.received)
    }

    /// Expected − received (A.3): negative when duplicates outnumber losses.
    #[inline(always)]
    pub fn lost(&self) -> i64 {
        self.expected().wrapping_sub(self.total_received()) as i64
    }

    /// RFC 3550's interarrival jitter in timestamp units (as RTCP reports it).
    #[inline(always)]
    pub fn jitter_units(&self) -> u64 {
        self.jitter_q8 >> 8
    }

    /// Starts a new sequence segment at `seq` (A.1 `init_seq`), keeping the
    /// finished segment's counts.
    #[inline(always)]
    fn init_seq(&mut self, seq: u16) {
        self.prior_expected = self.prior_expected.wrapping_add(self.segment_expected());
        self.prior_received = self.prior_received.wrapping_add(self.received);
        self.base_seq = seq;
        self.max_seq = seq;
        self.bad_seq = NO_BAD_SEQ;
        self.cycles = 0;
        self.received = 0;
        self.flags = (self.flags | Q_STARTED) & !Q_TRANSIT;
    }
}

/// Timestamp units per ns in Q32 for `rate` Hz (0 for 0). A division: call
/// it when the rate changes, not per packet.
#[inline(always)]
pub fn ts_per_ns_q32(rate: u32) -> u32 {
    // rate < 10^9 keeps the result below 2^32; clock rates are < 10^6.
    (((rate as u64) << 32) / 1_000_000_000) as u32
}

/// What [`rtp_arrived`] made of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqVerdict {
    /// Next, or ahead with a gap (the gap counts as lost until filled).
    InOrder,
    /// Behind the highest sequence number (late or duplicate).
    Late,
    /// A first packet, a new SSRC, or a confirmed jump: a new segment.
    Restart,
    /// A jump of `MAX_DROPOUT` or more not yet confirmed: not counted.
    Ignored,
}

/// Accounts one accepted RTP packet (not RTCP) of a rule: `ssrc`, `seq` and
/// `ts` from its header, `now_ns` its arrival (CLOCK_MONOTONIC), `clock_rate`
/// from the rule (0: no jitter).
#[inline(always)]
pub fn rtp_arrived(
    q: &mut RtpQuality,
    clock_rate: u32,
    ssrc: u32,
    seq: u16,
    ts: u32,
    now_ns: u64,
) -> SeqVerdict {
    let verdict = update_seq(q, ssrc, seq);
    if verdict != SeqVerdict::Ignored {
        update_jitter(q, clock_rate, ts, now_ns);
    }
    verdict
}

/// RFC 3550 A.1 `update_seq`, without probation, plus SSRC changes.
#[inline(always)]
fn update_seq(q: &mut RtpQuality, ssrc: u32, seq: u16) -> SeqVerdict {
    if q.flags & Q_STARTED == 0 || q.ssrc != ssrc {
        if q.flags & Q_STARTED != 0 {
            q.ssrc_changes = q.ssrc_changes.wrapping_add(1);
        }
        q.ssrc = ssrc;
        q.init_seq(seq);
        q.received = 1;
        return SeqVerdict::Restart;
    }
    let udelta = seq.wrapping_sub(q.max_seq);
    let verdict = if udelta < MAX_DROPOUT {
        // In order, with a permissible gap.
        if seq < q.max_seq {
            q.cycles = q.cycles.wrapping_add(1);
        }
        q.max_seq = seq;
        SeqVerdict::InOrder
    } else if udelta <= u16::MAX - MAX_MISORDER + 1 {
        // A very large jump: believe it only when the next packet follows it
        // (the sender restarted its sequence without a new SSRC).
        if seq as u32 == q.bad_seq {
            q.init_seq(seq);
            SeqVerdict::Restart
        } else {
            q.bad_seq = seq.wrapping_add(1) as u32;
            return SeqVerdict::Ignored;
        }
    } else {
        // Duplicate or reordered.
        q.out_of_order = q.out_of_order.wrapping_add(1);
        SeqVerdict::Late
    };
    q.received = q.received.wrapping_add(1);
    verdict
}

/// RFC 3550 A.8 with D computed from the arrival gap and the timestamp gap
/// of two successive packets: D = (R_j − R_i) − (S_j − S_i).
#[inline(always)]
fn update_jitter(q: &mut RtpQuality, clock_rate: u32, ts: u32, now_ns: u64) {
    if clock_rate != q.rate {
        // A new codec clock: old jitter is in other units, start again.
        q.rate = clock_rate;
        q.ts_per_ns_q32 = ts_per_ns_q32(clock_rate);
        q.jitter_q8 = 0;
        q.flags &= !Q_TRANSIT;
    }
    if clock_rate == 0 {
        return;
    }
    let had_reference = q.flags & Q_TRANSIT != 0;
    let gap_ns = now_ns.saturating_sub(q.last_arrival_ns);
    let ts_gap = ts.wrapping_sub(q.last_ts);
    q.last_arrival_ns = now_ns;
    q.last_ts = ts;
    q.flags |= Q_TRANSIT;
    if !had_reference || gap_ns >= MAX_JITTER_GAP_NS {
        return;
    }
    // Arrival gap in 1/16 timestamp units, rounded: gap_ns < 2^32 and the
    // multiplier < 2^32, so the product fits in 64 bits.
    let arrival_q4 = (gap_ns * q.ts_per_ns_q32 as u64 + (1 << 27)) >> 28;
    // The timestamp gap is a signed 32-bit difference (reordered packets go
    // back in time), as in A.8's `int` arithmetic.
    let ts_q4 = ((ts_gap as i32) as i64) << 4;
    let d_q4 = (arrival_q4 as i64).wrapping_sub(ts_q4);
    let abs_d_q4 = if d_q4 < 0 {
        d_q4.wrapping_neg() as u64
    } else {
        d_q4 as u64
    };
    // Cap |D| at 2^40/16 units: far above any real delay, and keeps J × 256
    // far from overflow.
    let abs_d_q4 = if abs_d_q4 > 1 << 40 {
        1 << 40
    } else {
        abs_d_q4
    };
    // J += (|D| − J) / 16 in 1/256 units: J256 += |D16| − J256 / 16 (rounded).
    q.jitter_q8 = q
        .jitter_q8
        .wrapping_add(abs_d_q4)
        .saturating_sub((q.jitter_q8 + 8) >> 4);
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::vec::Vec;

    const MS: u64 = 1_000_000;

    /// Feeds packets (seq, ts, arrival ns) with one SSRC at `rate`.
    fn feed(q: &mut RtpQuality, rate: u32, packets: &[(u16, u32, u64)]) {
        for &(seq, ts, at) in packets {
            rtp_arrived(q, rate, 0xabcd, seq, ts, at);
        }
    }

    /// 20 ms packets of 160 samples at 8 kHz: (seq, ts, arrival) for seq
    /// `first..first + n`, each arrival delayed by `delay(i)` ns.
    fn stream(first: u16, n: usize, delay: impl Fn(usize) -> u64) -> Vec<(u16, u32, u64)> {
        (0..n)
            .map(|i| {
                (
                    first.wrapping_add(i as u16),
                    1000u32.wrapping_add(160 * i as u32),
                    1_000 * MS + 20 * MS * i as u64 + delay(i),
                )
            })
            .collect()
    }

    #[test]
    fn in_order_stream_has_no_loss_and_no_jitter() {
        let mut q = RtpQuality::default();
        feed(&mut q, 8000, &stream(100, 50, |_| 0));
        assert_eq!(q.expected(), 50);
        assert_eq!(q.total_received(), 50);
        assert_eq!(q.lost(), 0);
        assert_eq!(q.out_of_order, 0);
        assert_eq!(q.extended_max(), 149);
        assert_eq!(q.jitter_q8, 0);
    }

    #[test]
    fn gap_counts_loss() {
        let mut q = RtpQuality::default();
        let s: Vec<_> = stream(0, 20, |_| 0)
            .into_iter()
            .filter(|p| !(5..8).contains(&p.0))
            .collect();
        feed(&mut q, 8000, &s);
        assert_eq!((q.expected(), q.total_received(), q.lost()), (20, 17, 3));
        assert_eq!(q.out_of_order, 0);
    }

    #[test]
    fn late_packet_cancels_its_loss_and_counts_out_of_order() {
        let mut q = RtpQuality::default();
        let s = stream(10, 6, |_| 0);
        // 10 11 13 14 12 15
        feed(&mut q, 8000, &[s[0], s[1], s[3], s[4]]);
        assert_eq!(q.lost(), 1);
        assert_eq!(
            rtp_arrived(&mut q, 8000, 0xabcd, s[2].0, s[2].1, s[4].2 + MS),
            SeqVerdict::Late
        );
        feed(&mut q, 8000, &[s[5]]);
        assert_eq!((q.expected(), q.lost(), q.out_of_order), (6, 0, 1));
        assert_eq!(q.extended_max(), 15);
    }

    #[test]
    fn duplicates_make_loss_negative() {
        let mut q = RtpQuality::default();
        let s = stream(1, 3, |_| 0);
        feed(&mut q, 8000, &[s[0], s[1], s[1], s[2], s[1]]);
        assert_eq!((q.expected(), q.total_received(), q.lost()), (3, 5, -2));
        // The duplicate of the highest is "in order" for A.1; the older one is late.
        assert_eq!(q.out_of_order, 1);
    }

    #[test]
    fn wrap_counts_cycles() {
        let mut q = RtpQuality::default();
        feed(&mut q, 8000, &stream(65530, 12, |_| 0));
        assert_eq!(q.cycles, 1);
        assert_eq!(q.max_seq, 5);
        assert_eq!(q.extended_max(), 65536 + 5);
        assert_eq!((q.expected(), q.lost()), (12, 0));
        // A late packet from before the wrap does not wrap again.
        rtp_arrived(&mut q, 8000, 0xabcd, 65534, 0, 2_000 * MS);
        assert_eq!((q.cycles, q.out_of_order, q.lost()), (1, 1, -1));
    }

    #[test]
    fn big_jump_needs_confirmation_then_restarts() {
        let mut q = RtpQuality::default();
        feed(&mut q, 8000, &stream(100, 10, |_| 0));
        assert_eq!(
            rtp_arrived(&mut q, 8000, 0xabcd, 30_000, 0, 2_000 * MS),
            SeqVerdict::Ignored
        );
        assert_eq!((q.expected(), q.total_received()), (10, 10));
        assert_eq!(
            rtp_arrived(&mut q, 8000, 0xabcd, 30_001, 160, 2_020 * MS),
            SeqVerdict::Restart
        );
        rtp_arrived(&mut q, 8000, 0xabcd, 30_002, 320, 2_040 * MS);
        assert_eq!(q.base_seq, 30_001);
        assert_eq!((q.expected(), q.total_received(), q.lost()), (12, 12, 0));
        assert_eq!(q.ssrc_changes, 0);
    }

    #[test]
    fn ssrc_change_restarts_sequence_and_keeps_totals() {
        let mut q = RtpQuality::default();
        let s: Vec<_> = stream(100, 10, |_| 0)
            .into_iter()
            .filter(|p| p.0 != 104)
            .collect();
        feed(&mut q, 8000, &s);
        assert_eq!(q.lost(), 1);
        assert_eq!(
            rtp_arrived(&mut q, 8000, 0x5555, 7, 99, 2_000 * MS),
            SeqVerdict::Restart
        );
        rtp_arrived(&mut q, 8000, 0x5555, 9, 419, 2_040 * MS);
        assert_eq!((q.ssrc, q.ssrc_changes), (0x5555, 1));
        assert_eq!((q.base_seq, q.extended_max()), (7, 9));
        assert_eq!((q.expected(), q.total_received(), q.lost()), (13, 11, 2));
    }

    #[test]
    fn hostile_sequences_do_not_panic() {
        let mut q = RtpQuality::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            rtp_arrived(
                &mut q,
                (x >> 40) as u32 % 4,
                (x & 3) as u32,
                x as u16,
                (x >> 16) as u32,
                x >> 3,
            );
        }
        let _ = (q.lost(), q.expected(), q.jitter_units());
    }

    /// A.8 run literally, in floating point, on absolute transit times: the
    /// reference the integer, delta-based version must match.
    fn reference_jitter(rate: f64, packets: &[(u16, u32, u64)]) -> f64 {
        let mut j = 0.0;
        let mut prev: Option<f64> = None;
        for &(_, ts, at) in packets {
            let transit = at as f64 * rate / 1e9 - ts as f64;
            if let Some(p) = prev {
                j += ((transit - p).abs() - j) / 16.0;
            }
            prev = Some(transit);
        }
        j
    }

    #[test]
    fn jitter_of_alternating_delay_is_known() {
        // Delays alternate 0 / 4 ms: every |D| is 4 ms = 32 units at 8 kHz,
        // so J converges to 32 (J_n = 32 (1 − (15/16)^n)).
        let mut q = RtpQuality::default();
        let s = stream(0, 500, |i| if i % 2 == 1 { 4 * MS } else { 0 });
        feed(&mut q, 8000, &s);
        let j = q.jitter_q8 as f64 / 256.0;
        assert!((j - 32.0).abs() < 0.2, "J = {j}");
        assert!((j - reference_jitter(8000.0, &s)).abs() < 0.2);
    }

    #[test]
    fn jitter_matches_the_reference_on_a_random_series() {
        // Uniform delays in 0..10 ms at 8 kHz and 48 kHz: for i.i.d. uniform
        // delays on [0, a], E|D| = a / 3, so J hovers around 3.33 ms.
        for rate in [8000u32, 48_000] {
            let mut q = RtpQuality::default();
            let mut x: u64 = 12345;
            let spt = rate / 50;
            let packets: Vec<(u16, u32, u64)> = (0..3000u64)
                .map(|i| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let delay = (x >> 33) % (10 * MS);
                    (i as u16, (i as u32) * spt, 5_000 * MS + i * 20 * MS + delay)
                })
                .collect();
            feed(&mut q, rate, &packets);
            let got = q.jitter_q8 as f64 / 256.0;
            let want = reference_jitter(rate as f64, &packets);
            assert!(
                (got - want).abs() < 0.1,
                "rate {rate}: integer J {got} vs reference {want}"
            );
            let ms = got * 1000.0 / rate as f64;
            assert!((2.0..5.0).contains(&ms), "rate {rate}: J = {ms} ms");
        }
    }

    #[test]
    fn no_clock_rate_no_jitter() {
        let mut q = RtpQuality::default();
        feed(
            &mut q,
            0,
            &stream(0, 100, |i| if i % 2 == 1 { 4 * MS } else { 0 }),
        );
        assert_eq!(q.jitter_q8, 0);
        assert_eq!(q.total_received(), 100);
    }

    #[test]
    fn long_pause_is_not_a_jitter_sample() {
        let mut q = RtpQuality::default();
        let mut s = stream(0, 10, |_| 0);
        // 10 s of silence with the timestamp moving only 1 s worth.
        s.push((
            10,
            1000 + 160 * 10 + 8000,
            1_000 * MS + 200 * MS + 10_000 * MS,
        ));
        s.push((
            11,
            1000 + 160 * 11 + 8000,
            1_000 * MS + 220 * MS + 10_000 * MS,
        ));
        feed(&mut q, 8000, &s);
        assert_eq!(q.jitter_q8, 0);
    }

    #[test]
    fn conversion_precision() {
        // 20 ms at each rate is exactly one packet's worth of timestamps.
        for (rate, units) in [
            (8000u32, 160u64),
            (16_000, 320),
            (48_000, 960),
            (90_000, 1800),
        ] {
            let m = ts_per_ns_q32(rate) as u64;
            let q4 = (20 * MS * m + (1 << 27)) >> 28;
            assert_eq!(q4, units * 16, "rate {rate}");
        }
        assert_eq!(ts_per_ns_q32(0), 0);
    }
}
