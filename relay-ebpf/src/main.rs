//! relay's XDP program: the per-packet fast path.
//!
//! For every frame: if it is UDP to a relay address inside that address's media
//! port range, it is the relay's business; everything else (SIP, SSH, ARP, ...)
//! is passed to the kernel untouched. The relay's packets are matched against a
//! flow rule keyed by the receiving relay endpoint; no rule means unsolicited
//! and the frame is dropped here, in the driver. A matching packet must pass the
//! RTP sanity check, the rule's source policy and its rate limit (the same code
//! the userspace forwarder runs: `relay_common::policy`), then it is rewritten
//! (MACs from the FIB, addresses, ports, checksums) and sent with XDP_TX or a
//! devmap redirect. What the fast path cannot finish (neighbour unresolved, no
//! route, VLAN, address family change, crypto) goes up with XDP_PASS to the
//! userspace forwarder, which holds a socket on every relay endpoint.
#![no_std]
#![no_main]
// The verifier rejects any path into a panic: forbid what produces one.
#![deny(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod access;

use access::{read, write};
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, BPF_NOEXIST, bpf_fib_lookup as FibParams, xdp_action},
    helpers::{bpf_fib_lookup, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::{Array, DevMapHash, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::XdpContext,
};
use relay_common::{
    Action, Addr, AddrKey, COUNTERS as N_COUNTERS, Counter, DropReason, FLAG_AUTH_LATCH, FlowKey,
    FlowRule, FlowState, FlowStats, LatchEvent, PortRange, SourcePolicy, addr_from_v4, addr_is_v4,
    csum::Incremental,
    maps::{MAX_FLOWS, USER_PORT_WORDS},
    policy::{self, SourceCheck},
    quality,
};

/// Flow rules by receiving relay endpoint. Written by userspace only.
#[map(name = "FLOWS")]
static FLOWS: HashMap<FlowKey, FlowRule> = HashMap::pinned(MAX_FLOWS, 0);

/// Learned source and rate-limit clock per rule. Created by userspace with the
/// rule, updated here.
#[map(name = "FLOW_STATE")]
static FLOW_STATE: HashMap<FlowKey, FlowState> = HashMap::pinned(MAX_FLOWS, 0);

/// Per-rule, per-CPU packets, bytes, last-seen and drops by reason.
#[map(name = "FLOW_STATS")]
static FLOW_STATS: PerCpuHashMap<FlowKey, FlowStats> = PerCpuHashMap::pinned(MAX_FLOWS, 0);

/// Global per-CPU counters indexed by `relay_common::Counter`.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(N_COUNTERS as u32, 0);

/// The relay's own addresses and the media port range on each: only UDP to
/// these is the relay's business.
#[map(name = "RELAY_ADDRS")]
static RELAY_ADDRS: HashMap<AddrKey, PortRange> = HashMap::pinned(64, 0);

/// Interfaces the relay may redirect to, keyed by ifindex.
#[map(name = "EGRESS")]
static EGRESS: DevMapHash = DevMapHash::pinned(64, 0);

/// One bit per UDP port: relay endpoints whose rule lives only in the
/// userspace forwarder because writing it here failed (FLOWS full). Their
/// packets go up instead of being dropped as unsolicited. An array: updating
/// it never fails for lack of memory.
#[map(name = "USER_PORTS")]
static USER_PORTS: Array<u64> = Array::pinned(USER_PORT_WORDS, 0);

/// The FIB lookup's 64-byte parameter block, one per CPU: on the stack it
/// left too little of the 512 bytes for the quality update. A per-CPU array
/// lookup is inlined by the verifier (no hashing). Pinned only because every
/// map of the object is.
#[map(name = "FIB_SCRATCH")]
static FIB_SCRATCH: PerCpuArray<FibParams> = PerCpuArray::pinned(1, 0);

/// Latch events for userspace.
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(256 * 1024, 0);

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const ETH_P_8021Q: [u8; 2] = [0x81, 0x00];
const IPPROTO_UDP: u8 = 17;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// What the program decided for a frame of the relay's.
enum Verdict {
    /// Not the relay's business, or the kernel's job: XDP_PASS, nothing counted.
    Pass,
    /// Dropped; counted globally and, when a rule matched, per rule.
    Drop(DropReason),
    /// Accepted but handed to userspace (rule says so, or the fast path cannot
    /// finish it): XDP_PASS, counted.
    Up(Counter),
    /// Rewritten and sent (XDP_TX or XDP_REDIRECT).
    Sent(u32, Counter),
}

#[xdp]
pub fn relay(ctx: XdpContext) -> u32 {
    match handle(&ctx) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop(reason) => {
            count(Counter::for_drop(reason));
            xdp_action::XDP_DROP
        }
        Verdict::Up(counter) => {
            count(counter);
            xdp_action::XDP_PASS
        }
        Verdict::Sent(action, counter) => {
            count(counter);
            action
        }
    }
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(c) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no other writer on this CPU while we run.
        unsafe { *c += 1 };
    }
}

/// The parsed headers of a UDP packet aimed at a relay endpoint.
struct Udp {
    v4: bool,
    vlan: bool,
    l3: usize,
    l4: usize,
    src: Addr,
    dst: Addr,
    sport: [u8; 2],
    dport: [u8; 2],
    /// IPv4 total length or IPv6 payload length + 40: the FIB wants it.
    ip_len: u16,
    /// UDP payload length from the UDP header, checked against the frame.
    payload_len: usize,
}

#[inline(always)]
fn handle(ctx: &XdpContext) -> Verdict {
    match parse(ctx) {
        Ok(Some(udp)) => relay_packet(ctx, &udp),
        Ok(None) => Verdict::Pass,
        Err(reason) => Verdict::Drop(reason),
    }
}

/// Ok(None): not the relay's business. Err: the relay's, and broken.
#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Option<Udp>, DropReason> {
    let Some(mut ethertype) = read::<[u8; 2]>(ctx, 12) else {
        return Ok(None);
    };
    let mut l3 = ETH_HLEN;
    let mut vlan = false;
    if ethertype == ETH_P_8021Q {
        let Some(inner) = read::<[u8; 2]>(ctx, ETH_HLEN + 2) else {
            return Ok(None);
        };
        ethertype = inner;
        l3 = ETH_HLEN + VLAN_HLEN;
        vlan = true;
    }
    let frame_len = ctx.data_end() - ctx.data();
    if ethertype == ETH_P_IP {
        let Some(vihl) = read::<u8>(ctx, l3) else {
            return Ok(None);
        };
        let Some(dst4) = read::<[u8; 4]>(ctx, l3 + 16) else {
            return Ok(None);
        };
        if vihl >> 4 != 4 {
            return Ok(None);
        }
        let dst = addr_from_v4(dst4);
        let Some(range) = relay_range(&dst) else {
            return Ok(None);
        };
        // Sequential reads with early returns: a tuple of Options lets LLVM
        // merge paths in ways the verifier rejects.
        let Some(proto) = read::<u8>(ctx, l3 + 9) else {
            return Ok(None);
        };
        let Some(frag) = read::<[u8; 2]>(ctx, l3 + 6) else {
            return Ok(None);
        };
        let Some(tot) = read::<[u8; 2]>(ctx, l3 + 2) else {
            return Ok(None);
        };
        let Some(src4) = read::<[u8; 4]>(ctx, l3 + 12) else {
            return Ok(None);
        };
        if proto != IPPROTO_UDP {
            return Ok(None);
        }
        // Fragments (MF set or an offset) go to the kernel to be reassembled.
        if u16::from_be_bytes(frag) & 0x3fff != 0 {
            return Ok(None);
        }
        let ihl = (vihl & 0x0f) as usize * 4;
        let tot_len = u16::from_be_bytes(tot);
        if ihl < 20 || (tot_len as usize) < ihl + UDP_HLEN || l3 + tot_len as usize > frame_len {
            return Err(DropReason::Malformed);
        }
        let src = addr_from_v4(src4);
        udp_part(
            ctx,
            range,
            true,
            vlan,
            l3,
            l3 + ihl,
            src,
            dst,
            tot_len,
            tot_len as usize - ihl,
        )
    } else if ethertype == ETH_P_IPV6 {
        let Some(vtc) = read::<u8>(ctx, l3) else {
            return Ok(None);
        };
        let Some(nh) = read::<u8>(ctx, l3 + 6) else {
            return Ok(None);
        };
        let Some(plen) = read::<[u8; 2]>(ctx, l3 + 4) else {
            return Ok(None);
        };
        let Some(dst) = read::<Addr>(ctx, l3 + 24) else {
            return Ok(None);
        };
        if vtc >> 4 != 6 {
            return Ok(None);
        }
        let Some(range) = relay_range(&dst) else {
            return Ok(None);
        };
        // Extension headers are the kernel's job.
        if nh != IPPROTO_UDP {
            return Ok(None);
        }
        let Some(src) = read::<Addr>(ctx, l3 + 8) else {
            return Ok(None);
        };
        // IPv4-mapped addresses inside IPv6 must not match IPv4 rules (and the
        // kernel drops such packets itself).
        if addr_is_v4(&dst) || addr_is_v4(&src) {
            return Ok(None);
        }
        let plen = u16::from_be_bytes(plen) as usize;
        if plen < UDP_HLEN || l3 + IPV6_HLEN + plen > frame_len {
            return Err(DropReason::Malformed);
        }
        let ip_len = (plen + IPV6_HLEN) as u16;
        udp_part(
            ctx,
            range,
            false,
            vlan,
            l3,
            l3 + IPV6_HLEN,
            src,
            dst,
            ip_len,
            plen,
        )
    } else {
        Ok(None)
    }
}

#[inline(always)]
fn relay_range(dst: &Addr) -> Option<PortRange> {
    // SAFETY: written by userspace only, whole values; we copy it out.
    unsafe { RELAY_ADDRS.get(&AddrKey { addr: *dst }) }.copied()
}

#[expect(clippy::too_many_arguments, reason = "one call site, inlined")]
#[inline(always)]
fn udp_part(
    ctx: &XdpContext,
    range: PortRange,
    v4: bool,
    vlan: bool,
    l3: usize,
    l4: usize,
    src: Addr,
    dst: Addr,
    ip_len: u16,
    ip_payload: usize,
) -> Result<Option<Udp>, DropReason> {
    let Some(udp) = read::<[u8; 8]>(ctx, l4) else {
        return Err(DropReason::Malformed);
    };
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    if dport < range.min || dport > range.max {
        return Ok(None);
    }
    let udp_len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    if udp_len < UDP_HLEN || udp_len > ip_payload {
        return Err(DropReason::Malformed);
    }
    Ok(Some(Udp {
        v4,
        vlan,
        l3,
        l4,
        src,
        dst,
        sport: [udp[0], udp[1]],
        dport: [udp[2], udp[3]],
        ip_len,
        payload_len: udp_len - UDP_HLEN,
    }))
}

#[inline(always)]
fn relay_packet(ctx: &XdpContext, udp: &Udp) -> Verdict {
    let key = FlowKey {
        addr: udp.dst,
        port: udp.dport,
        _pad: [0; 2],
    };
    // SAFETY: userspace replaces rules whole (map update), never in place.
    let Some(rule) = (unsafe { FLOWS.get(&key) }) else {
        if userspace_owns(u16::from_be_bytes(udp.dport)) {
            return Verdict::Up(Counter::ToUserspace);
        }
        return Verdict::Drop(DropReason::NoFlow);
    };
    let stats = FLOW_STATS.get_ptr_mut(&key);
    // One clock read per packet serves the policy, the quality figures and
    // last-seen.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut accepted: Option<*mut FlowState> = None;
    let verdict = check_and_forward(ctx, udp, &key, rule, now, &mut accepted);
    if let Some(state) = accepted {
        measure(ctx, udp, rule, state, now);
    }
    if let Some(stats) = stats {
        // SAFETY: per-CPU value, only this CPU writes it while we run.
        let stats = unsafe { &mut *stats };
        match verdict {
            Verdict::Drop(reason) => {
                if let Some(d) = stats.drops.get_mut(reason as usize) {
                    *d += 1;
                }
            }
            Verdict::Up(Counter::ToUserspace) | Verdict::Sent(..) => {
                stats.packets += 1;
                stats.bytes += udp.payload_len as u64;
                stats.last_seen_ns = now;
            }
            Verdict::Up(_) => {
                stats.passed_up += 1;
                stats.last_seen_ns = now;
            }
            Verdict::Pass => {}
        }
    }
    verdict
}

#[inline(always)]
fn userspace_owns(port: u16) -> bool {
    USER_PORTS
        .get(port as u32 / 64)
        .is_some_and(|word| word & (1u64 << (port % 64)) != 0)
}

/// `accepted` is set to the rule's state once the packet passed every check
/// (whatever path it then takes).
#[inline(always)]
fn check_and_forward(
    ctx: &XdpContext,
    udp: &Udp,
    key: &FlowKey,
    rule: &FlowRule,
    now: u64,
    accepted: &mut Option<*mut FlowState>,
) -> Verdict {
    let action = Action::from_u8(rule.action);
    if action == Some(Action::Block) || action.is_none() {
        return Verdict::Drop(DropReason::Blocked);
    }
    // SAFETY: ctx.ctx is the xdp_md the kernel passed to this program.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    if let Err(reason) = policy::check_ingress(rule, ingress) {
        return Verdict::Drop(reason);
    }
    let Some(rtp) = read::<[u8; 12]>(ctx, udp.l4 + UDP_HLEN) else {
        return Verdict::Drop(DropReason::NotRtp);
    };
    if let Err(reason) = policy::check_rtp(udp.payload_len, rtp[0]) {
        return Verdict::Drop(reason);
    }
    let ssrc = if policy::ssrc_offset(rtp[1]) == 4 {
        u32::from_be_bytes([rtp[4], rtp[5], rtp[6], rtp[7]])
    } else {
        u32::from_be_bytes([rtp[8], rtp[9], rtp[10], rtp[11]])
    };
    let Some(state) = flow_state(key) else {
        return Verdict::Up(Counter::OtherPass);
    };
    // SAFETY: a flow's packets arrive on one RX queue (same 5-tuple hash),
    // and one queue's NAPI poll runs on one CPU at a time, so two CPUs race
    // on one state only when a flow is spread over queues; a lost update
    // costs a token, a repeated latch event or a miscounted quality sample,
    // never safety.
    let state_ptr = state;
    let state = unsafe { &mut *state };
    // SRTP legs learn their source in userspace, only from a packet that
    // authenticates; until then every packet goes up unlatched.
    if rule.flags & FLAG_AUTH_LATCH != 0
        && state.locked == 0
        && rule.policy != SourcePolicy::Strict as u8
    {
        return Verdict::Up(Counter::ToUserspace);
    }
    match policy::check_source(rule, state, &udp.src, udp.sport, ssrc, now) {
        Err(reason) => return Verdict::Drop(reason),
        Ok(SourceCheck::Latched) => report_latch(rule, key, state, now),
        Ok(SourceCheck::Accepted) => {}
    }
    if let Err(reason) = policy::check_rate(rule, state, now) {
        return Verdict::Drop(reason);
    }
    *accepted = Some(state_ptr);
    if action == Some(Action::Userspace) {
        return Verdict::Up(Counter::ToUserspace);
    }
    forward(ctx, udp, rule)
}

/// RTP quality of an accepted packet, whichever path it took (packets
/// handed to userspace are measured here too; see `FlowState::quality` for
/// why the state is shared rather than per CPU). Done after the verdict, with
/// the header read again (the rewrite leaves the RTP header alone), where
/// few other values are live: inside the checks, its registers and theirs
/// spilled past the 512-byte stack.
#[inline(always)]
fn measure(ctx: &XdpContext, udp: &Udp, rule: &FlowRule, state: *mut FlowState, now: u64) {
    let Some(rtp) = read::<[u8; 12]>(ctx, udp.l4 + UDP_HLEN) else {
        return;
    };
    if policy::is_rtcp(rtp[1]) {
        return;
    }
    // SAFETY: as in check_and_forward.
    let q = unsafe { &mut (*state).quality };
    quality::rtp_arrived(
        q,
        rule.clock_rate,
        u32::from_be_bytes([rtp[8], rtp[9], rtp[10], rtp[11]]),
        u16::from_be_bytes([rtp[2], rtp[3]]),
        u32::from_be_bytes([rtp[4], rtp[5], rtp[6], rtp[7]]),
        now,
    );
}

static ZERO_STATE: FlowState = FlowState::ZERO;

#[inline(always)]
fn flow_state(key: &FlowKey) -> Option<*mut FlowState> {
    if let Some(s) = FLOW_STATE.get_ptr_mut(key) {
        return Some(s);
    }
    // Userspace creates the state with the rule; recreate it if it went
    // missing. The zeroed value comes from a static: a FlowState built on
    // the stack would take 112 of the program's 512 bytes.
    let _ = FLOW_STATE.insert(key, &ZERO_STATE, BPF_NOEXIST as u64);
    FLOW_STATE.get_ptr_mut(key)
}

#[inline(always)]
fn report_latch(rule: &FlowRule, key: &FlowKey, state: &FlowState, now: u64) {
    // A full ring loses the event, not the packet; userspace also sees the
    // latched source in FLOW_STATE.
    let Some(mut entry) = EVENTS.reserve::<LatchEvent>(0) else {
        return;
    };
    entry.write(LatchEvent {
        rule_id: rule.id,
        time_ns: now,
        key: *key,
        src_addr: state.src_addr,
        src_port: state.src_port,
        policy: rule.policy,
        _pad: 0,
        ssrc: state.ssrc,
        _reserved: [0; 4],
    });
    entry.submit(0);
}

#[inline(always)]
fn forward(ctx: &XdpContext, udp: &Udp, rule: &FlowRule) -> Verdict {
    // VLAN egress and family translation are the kernel's and the userspace
    // forwarder's job.
    if udp.vlan || addr_is_v4(&rule.dst_addr) != udp.v4 || addr_is_v4(&rule.out_src_addr) != udp.v4
    {
        return Verdict::Up(Counter::OtherPass);
    }
    let ingress = ctx.ingress_ifindex() as u32;
    let Some(fib) = FIB_SCRATCH.get_ptr_mut(0) else {
        return Verdict::Up(Counter::OtherPass);
    };
    // SAFETY: per-CPU slot, nothing else on this CPU uses it while we run;
    // an all-zero bpf_fib_lookup is a valid input.
    let fib = unsafe {
        core::ptr::write_bytes(fib, 0, 1);
        &mut *fib
    };
    fib.l4_protocol = IPPROTO_UDP;
    fib.sport = u16::from_ne_bytes(rule.out_src_port);
    fib.dport = u16::from_ne_bytes(rule.dst_port);
    fib.__bindgen_anon_1.tot_len = udp.ip_len;
    fib.ifindex = ingress;
    let (a, b) = (&rule.out_src_addr, &rule.dst_addr);
    if udp.v4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([b[12], b[13], b[14], b[15]]);
    } else {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = words(a);
        fib.__bindgen_anon_4.ipv6_dst = words(b);
    }
    // SAFETY: the helper reads and writes `fib` only, size given.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            fib as *mut FibParams,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        // NO_NEIGH: the kernel resolves the neighbour while userspace sends this one.
        return Verdict::Up(Counter::FibPass);
    }
    let egress = fib.ifindex;
    if egress != ingress && EGRESS.get_ifindex(egress).is_none() {
        return Verdict::Up(Counter::OtherPass);
    }
    if rewrite(ctx, udp, rule, &fib.dmac, &fib.smac).is_none() {
        return Verdict::Up(Counter::OtherPass);
    }
    if egress == ingress {
        Verdict::Sent(xdp_action::XDP_TX, Counter::Tx)
    } else {
        // The entry was there a moment ago; if userspace removed it since,
        // the rewritten frame has nowhere to go: the flags' low bits make
        // that a plain drop instead of XDP_ABORTED (an exception trace).
        match EGRESS.redirect(egress, u64::from(xdp_action::XDP_DROP)) {
            Ok(action) => Verdict::Sent(action, Counter::Redirect),
            Err(action) => Verdict::Sent(action, Counter::Redirect),
        }
    }
}

#[inline(always)]
fn words(a: &Addr) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// Rewrites MACs, addresses, ports and checksums in place. None: the frame
/// moved under us (cannot happen after parse; the verifier wants the checks).
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    udp: &Udp,
    rule: &FlowRule,
    dmac: &[u8; 6],
    smac: &[u8; 6],
) -> Option<()> {
    write::<[u8; 6]>(ctx, 0, *dmac)?;
    write::<[u8; 6]>(ctx, 6, *smac)?;
    let old_udp = read::<[u8; 8]>(ctx, udp.l4)?;
    let udp_check = u16::from_be_bytes([old_udp[6], old_udp[7]]);
    let mut uc = Incremental::new(udp_check);
    uc.replace2(udp.sport, rule.out_src_port);
    uc.replace2(udp.dport, rule.dst_port);
    if udp.v4 {
        let (o, n) = (&rule.out_src_addr, &rule.dst_addr);
        let nsrc = [o[12], o[13], o[14], o[15]];
        let ndst = [n[12], n[13], n[14], n[15]];
        let osrc = [udp.src[12], udp.src[13], udp.src[14], udp.src[15]];
        let odst = [udp.dst[12], udp.dst[13], udp.dst[14], udp.dst[15]];
        let hc = read::<[u8; 2]>(ctx, udp.l3 + 10)?;
        let mut ic = Incremental::new(u16::from_be_bytes(hc));
        ic.replace4(&osrc, &nsrc);
        ic.replace4(&odst, &ndst);
        write::<[u8; 2]>(ctx, udp.l3 + 10, ic.finish().to_be_bytes())?;
        write::<[u8; 4]>(ctx, udp.l3 + 12, nsrc)?;
        write::<[u8; 4]>(ctx, udp.l3 + 16, ndst)?;
        uc.replace4(&osrc, &nsrc);
        uc.replace4(&odst, &ndst);
    } else {
        write::<[u8; 16]>(ctx, udp.l3 + 8, rule.out_src_addr)?;
        write::<[u8; 16]>(ctx, udp.l3 + 24, rule.dst_addr)?;
        uc.replace16(&udp.src, &rule.out_src_addr);
        uc.replace16(&udp.dst, &rule.dst_addr);
    }
    write::<[u8; 2]>(ctx, udp.l4, rule.out_src_port)?;
    write::<[u8; 2]>(ctx, udp.l4 + 2, rule.dst_port)?;
    // IPv4 UDP checksum 0 means "none" and stays none.
    if !(udp.v4 && udp_check == 0) {
        write::<[u8; 2]>(ctx, udp.l4 + 6, uc.finish_udp().to_be_bytes())?;
    }
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; this only satisfies no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
