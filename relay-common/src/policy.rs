//! The per-packet decisions of the data plane, as pure functions.
//!
//! The XDP program and the userspace forwarder both call these, so a flow gets
//! the same verdicts whichever path carries it. Everything is `#[inline(always)]`
//! and free of loops, slices and panics so the verifier accepts it in the kernel.

use crate::{Addr, DropReason, FlowRule, FlowState, SourcePolicy};

/// The shortest RTP (or RTCP) packet: a 12-byte fixed RTP header.
pub const RTP_MIN_LEN: usize = 12;

/// RTP/RTCP sanity: at least a fixed header, and version 2.
#[inline(always)]
pub fn check_rtp(payload_len: usize, first_byte: u8) -> Result<(), DropReason> {
    if payload_len < RTP_MIN_LEN || first_byte >> 6 != 2 {
        return Err(DropReason::NotRtp);
    }
    Ok(())
}

/// True for RTCP (second byte 192..=223, RFC 5761 section 4): the sender's
/// SSRC sits at offset 4 and there is no sequence number to account.
#[inline(always)]
pub fn is_rtcp(second_byte: u8) -> bool {
    (192..=223).contains(&second_byte)
}

/// Where the sender's SSRC sits: RTCP packets (second byte 192..=223, the range
/// RFC 5761 section 4 reserves for RTCP when it shares a port with RTP) carry it
/// at offset 4, RTP at offset 8.
#[inline(always)]
pub fn ssrc_offset(second_byte: u8) -> usize {
    if is_rtcp(second_byte) { 4 } else { 8 }
}

/// Compares addresses as two 64-bit words: a plain `==` on arrays may become a
/// `memcmp` call, which BPF programs cannot make.
#[inline(always)]
pub fn addr_eq(a: &Addr, b: &Addr) -> bool {
    let a0 = u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let a1 = u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    let b0 = u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let b1 = u64::from_ne_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    a0 == b0 && a1 == b1
}

/// Outcome of an accepted source check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceCheck {
    /// The source was already allowed.
    Accepted,
    /// This packet taught the rule its source, which is now locked: report it.
    Latched,
}

/// A packet for the rule must arrive on the rule's ingress device (when it
/// names one): the peer's address alone proves nothing on another interface.
#[inline(always)]
pub fn check_ingress(rule: &FlowRule, ifindex: u32) -> Result<(), DropReason> {
    if rule.ingress_ifindex == 0 || rule.ingress_ifindex == ifindex {
        Ok(())
    } else {
        Err(DropReason::BadSource)
    }
}

/// Applies the rule's source policy to a packet from `src_addr:src_port` whose
/// RTP/RTCP sender is `ssrc`, learning and locking the source where the policy
/// allows. `now_ns` is CLOCK_MONOTONIC.
#[inline(always)]
pub fn check_source(
    rule: &FlowRule,
    state: &mut FlowState,
    src_addr: &Addr,
    src_port: [u8; 2],
    ssrc: u32,
    now_ns: u64,
) -> Result<SourceCheck, DropReason> {
    match SourcePolicy::from_u8(rule.policy) {
        Some(SourcePolicy::Strict) => {
            if addr_eq(src_addr, &rule.peer_addr) && src_port == rule.peer_port {
                Ok(SourceCheck::Accepted)
            } else {
                Err(DropReason::BadSource)
            }
        }
        Some(SourcePolicy::Restricted) => {
            if !addr_eq(src_addr, &rule.peer_addr) {
                return Err(DropReason::BadSource);
            }
            if state.locked != 0 {
                return if src_port == state.src_port {
                    Ok(SourceCheck::Accepted)
                } else {
                    Err(DropReason::BadSource)
                };
            }
            state.src_addr = *src_addr;
            state.src_port = src_port;
            state.ssrc = ssrc;
            state.locked = 1;
            Ok(SourceCheck::Latched)
        }
        Some(SourcePolicy::Latch) => {
            if state.locked != 0 {
                return if addr_eq(src_addr, &state.src_addr)
                    && src_port == state.src_port
                    && ssrc == state.ssrc
                {
                    Ok(SourceCheck::Accepted)
                } else {
                    Err(DropReason::BadSource)
                };
            }
            if now_ns > rule.latch_until_ns {
                // The window closed with nothing learned: nobody may send.
                return Err(DropReason::BadSource);
            }
            state.src_addr = *src_addr;
            state.src_port = src_port;
            state.ssrc = ssrc;
            state.locked = 1;
            Ok(SourceCheck::Latched)
        }
        None => Err(DropReason::BadSource),
    }
}

/// The per-rule rate limit as a GCRA (virtual scheduling): each packet moves
/// the theoretical arrival time one interval on; a packet that arrives more
/// than the burst tolerance ahead of it is dropped and does not move it.
#[inline(always)]
pub fn check_rate(rule: &FlowRule, state: &mut FlowState, now_ns: u64) -> Result<(), DropReason> {
    if rule.rate_interval_ns == 0 {
        return Ok(());
    }
    let tat = if state.tat_ns > now_ns {
        state.tat_ns
    } else {
        now_ns
    };
    if tat - now_ns > rule.rate_burst_ns {
        return Err(DropReason::RateLimited);
    }
    state.tat_ns = tat + rule.rate_interval_ns;
    Ok(())
}

/// GCRA parameters for `pps` packets per second with bursts of `burst` packets
/// back to back: (interval, tolerance) in ns. `pps == 0` means unlimited.
pub fn rate_params(pps: u32, burst: u32) -> (u64, u64) {
    if pps == 0 {
        return (0, 0);
    }
    let interval = 1_000_000_000u64 / pps as u64;
    let burst = if burst == 0 { 1 } else { burst } as u64;
    (interval, (burst - 1) * interval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, addr_from_v4};

    fn rule(policy: SourcePolicy) -> FlowRule {
        FlowRule {
            id: 7,
            latch_until_ns: 1_000,
            rate_interval_ns: 0,
            rate_burst_ns: 0,
            peer_addr: addr_from_v4([192, 0, 2, 10]),
            out_src_addr: addr_from_v4([198, 51, 100, 1]),
            dst_addr: addr_from_v4([198, 51, 100, 10]),
            peer_port: 4000u16.to_be_bytes(),
            out_src_port: 30002u16.to_be_bytes(),
            dst_port: 5000u16.to_be_bytes(),
            action: Action::Forward as u8,
            policy: policy as u8,
            clock_rate: 8000,
            flags: 0,
            _reserved: [0; 3],
            ingress_ifindex: 0,
            _pad: 0,
        }
    }

    const PEER: Addr = addr_from_v4([192, 0, 2, 10]);
    const OTHER: Addr = addr_from_v4([192, 0, 2, 66]);

    #[test]
    fn ingress_binding() {
        let mut r = rule(SourcePolicy::Strict);
        assert_eq!(check_ingress(&r, 3), Ok(()), "0 binds nothing");
        r.ingress_ifindex = 3;
        assert_eq!(check_ingress(&r, 3), Ok(()));
        assert_eq!(check_ingress(&r, 4), Err(DropReason::BadSource));
    }

    #[test]
    fn rtp_sanity() {
        assert_eq!(check_rtp(12, 0x80), Ok(()));
        assert_eq!(check_rtp(11, 0x80), Err(DropReason::NotRtp));
        assert_eq!(check_rtp(0, 0x80), Err(DropReason::NotRtp));
        assert_eq!(check_rtp(100, 0x40), Err(DropReason::NotRtp));
        assert_eq!(check_rtp(100, 0xC0), Err(DropReason::NotRtp));
    }

    #[test]
    fn ssrc_offsets() {
        assert_eq!(ssrc_offset(0), 8); // PT 0 (PCMU)
        assert_eq!(ssrc_offset(0x80 | 8), 8); // marker + PCMA
        assert_eq!(ssrc_offset(200), 4); // RTCP SR
        assert_eq!(ssrc_offset(201), 4); // RTCP RR
    }

    #[test]
    fn strict_needs_address_and_port() {
        let r = rule(SourcePolicy::Strict);
        let mut s = FlowState::default();
        let port = 4000u16.to_be_bytes();
        assert_eq!(
            check_source(&r, &mut s, &PEER, port, 1, 0),
            Ok(SourceCheck::Accepted)
        );
        assert_eq!(
            check_source(&r, &mut s, &PEER, 4001u16.to_be_bytes(), 1, 0),
            Err(DropReason::BadSource)
        );
        assert_eq!(
            check_source(&r, &mut s, &OTHER, port, 1, 0),
            Err(DropReason::BadSource)
        );
        assert_eq!(s.locked, 0, "strict never learns");
    }

    #[test]
    fn restricted_learns_port_once() {
        let r = rule(SourcePolicy::Restricted);
        let mut s = FlowState::default();
        let p1 = 5555u16.to_be_bytes();
        assert_eq!(
            check_source(&r, &mut s, &OTHER, p1, 1, 0),
            Err(DropReason::BadSource),
            "wrong address never latches"
        );
        assert_eq!(s.locked, 0);
        assert_eq!(
            check_source(&r, &mut s, &PEER, p1, 1, 0),
            Ok(SourceCheck::Latched)
        );
        assert_eq!(
            check_source(&r, &mut s, &PEER, p1, 2, 0),
            Ok(SourceCheck::Accepted)
        );
        assert_eq!(
            check_source(&r, &mut s, &PEER, 5556u16.to_be_bytes(), 1, 0),
            Err(DropReason::BadSource)
        );
    }

    #[test]
    fn latch_locks_source_and_ssrc_inside_window() {
        let r = rule(SourcePolicy::Latch);
        let mut s = FlowState::default();
        let p = 7000u16.to_be_bytes();
        assert_eq!(
            check_source(&r, &mut s, &OTHER, p, 42, 500),
            Ok(SourceCheck::Latched)
        );
        assert_eq!(
            check_source(&r, &mut s, &OTHER, p, 42, 5_000),
            Ok(SourceCheck::Accepted)
        );
        assert_eq!(
            check_source(&r, &mut s, &OTHER, p, 43, 600),
            Err(DropReason::BadSource)
        );
        assert_eq!(
            check_source(&r, &mut s, &PEER, p, 42, 600),
            Err(DropReason::BadSource)
        );
        assert_eq!(
            check_source(&r, &mut s, &OTHER, 7001u16.to_be_bytes(), 42, 600),
            Err(DropReason::BadSource)
        );
    }

    #[test]
    fn latch_window_closes() {
        let r = rule(SourcePolicy::Latch);
        let mut s = FlowState::default();
        assert_eq!(
            check_source(&r, &mut s, &OTHER, [1, 1], 42, 1_001),
            Err(DropReason::BadSource)
        );
        assert_eq!(s.locked, 0);
    }

    #[test]
    fn unknown_policy_drops() {
        let mut r = rule(SourcePolicy::Strict);
        r.policy = 9;
        let mut s = FlowState::default();
        assert_eq!(
            check_source(&r, &mut s, &PEER, r.peer_port, 1, 0),
            Err(DropReason::BadSource)
        );
    }

    #[test]
    fn rate_limit_allows_burst_then_rate() {
        let mut r = rule(SourcePolicy::Strict);
        (r.rate_interval_ns, r.rate_burst_ns) = rate_params(100, 5); // 10 ms interval
        let mut s = FlowState::default();
        let t0 = 1_000_000_000;
        for _ in 0..5 {
            assert_eq!(check_rate(&r, &mut s, t0), Ok(()));
        }
        assert_eq!(check_rate(&r, &mut s, t0), Err(DropReason::RateLimited));
        // One interval later exactly one more packet fits.
        assert_eq!(check_rate(&r, &mut s, t0 + 10_000_000), Ok(()));
        assert_eq!(
            check_rate(&r, &mut s, t0 + 10_000_000),
            Err(DropReason::RateLimited)
        );
        // A long pause refills the whole burst, not more.
        let t1 = t0 + 10_000_000_000;
        for _ in 0..5 {
            assert_eq!(check_rate(&r, &mut s, t1), Ok(()));
        }
        assert_eq!(check_rate(&r, &mut s, t1), Err(DropReason::RateLimited));
    }

    #[test]
    fn unlimited_rate() {
        let r = rule(SourcePolicy::Strict);
        let mut s = FlowState::default();
        for _ in 0..10_000 {
            assert_eq!(check_rate(&r, &mut s, 0), Ok(()));
        }
        assert_eq!(rate_params(0, 10), (0, 0));
    }

    #[test]
    fn addr_compare() {
        assert!(addr_eq(&PEER, &PEER));
        assert!(!addr_eq(&PEER, &OTHER));
        let mut v6 = [0u8; 16];
        v6[0] = 0x20;
        assert!(!addr_eq(&v6, &PEER));
    }
}
