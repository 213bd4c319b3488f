//! The relay's XDP program in the kernel, one verdict per test, through
//! BPF_PROG_TEST_RUN on crafted frames.
//!
//! Each test loads its own copy of the program (fresh maps), fills the maps the
//! way relayd does, runs frames built with etherparse, and checks the verdict,
//! the frame that comes out, the global counters and the rule's statistics.
//! Rewritten frames are parsed and their checksums recomputed with etherparse,
//! independently of the program's incremental updates.
//!
//! Forwarding needs `bpf_fib_lookup` to find a route and a neighbour, so those
//! tests build a network namespace (two veth pairs, documentation addresses,
//! permanent neighbour entries) and run inside it, with the frame "arriving"
//! on the inside interface.
//!
//! Needs root; run with `--test-threads=1` like the other kernel tests.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
    time::Duration,
};

use anyhow::Result;
use relay_common::{
    Action, COUNTERS, Counter, DROP_REASONS, DropReason, FlowKey, FlowRule, FlowState, FlowStats,
    SourcePolicy, policy::rate_params,
};
use relay_tests::{
    clock::{monotonic_ns, monotonic_ns_in},
    frames::{
        ParsedUdp, UdpFrame, arp_request, parse_udp, reseal_ipv4_header, rtcp_rr, rtp, tcp_syn,
    },
    netns::{Link, NetNs, format_mac},
    relay_xdp::{RelayXdp, Run, action, addr_of, flow_key, flow_rule},
    require_root,
};

// The relay's addresses: inside (towards the PBX) and outside (towards the
// service), IPv4 and IPv6, with their media port range.
const RELAY_IN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const RELAY_OUT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const RELAY_IN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
const RELAY_OUT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
const PORTS: RangeInclusive<u16> = 30000..=30999;

// Peers. The caller and the callee have permanent neighbour entries in the
// forwarding namespace; UNRESOLVED has a route but no neighbour.
const CALLER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const CALLER2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
const CALLEE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const UNRESOLVED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);
const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
const NATTED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
const CALLER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
const CALLEE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10);

const CALLER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x01, 0x0a];
const CALLER2_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x01, 0x14];
const CALLEE_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x02, 0x0a];

const SSRC: u32 = 0x1122_3344;

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// The relay endpoint most tests send to, and its rule's parts.
fn endpoint() -> SocketAddr {
    sa(RELAY_IN, 30000)
}
fn caller() -> SocketAddr {
    sa(CALLER, 4000)
}
fn out_src() -> SocketAddr {
    sa(RELAY_OUT, 30002)
}
fn callee() -> SocketAddr {
    sa(CALLEE, 5000)
}

/// A strict rule at [`endpoint`]: from [`caller`], out from [`out_src`] to [`callee`].
fn strict_rule(action: Action) -> FlowRule {
    flow_rule(
        7,
        action,
        SourcePolicy::Strict,
        caller(),
        out_src(),
        callee(),
    )
}

/// An RTP frame from `src` to `dst` with a 160-byte G.711 payload.
fn rtp_frame(src: SocketAddr, dst: SocketAddr) -> UdpFrame {
    UdpFrame::new(src, dst, rtp(SSRC, 1, 12 + 160))
}

/// The program with the relay's four addresses installed.
fn load() -> Result<RelayXdp> {
    let mut relay = RelayXdp::load()?;
    for ip in [
        IpAddr::from(RELAY_IN),
        RELAY_OUT.into(),
        RELAY_IN6.into(),
        RELAY_OUT6.into(),
    ] {
        relay.add_relay_addr(ip, PORTS)?;
    }
    Ok(relay)
}

// ---------------------------------------------------------------------------
// Assertions

#[track_caller]
fn assert_action(run: &Run, want: u32) {
    assert_eq!(
        run.action,
        want,
        "verdict {} ({}), expected {} ({})",
        action::name(run.action),
        run.action,
        action::name(want),
        want
    );
}

/// Runs `frame` and asserts the verdict; the frame that comes out is returned.
#[track_caller]
fn run_expect(relay: &RelayXdp, frame: &[u8], ingress: Option<u32>, want: u32) -> Vec<u8> {
    let run = relay.run(frame, ingress).expect("test run");
    assert_action(&run, want);
    run.frame
}

/// Runs `frame`, asserts the verdict and that the frame came out unchanged.
#[track_caller]
fn run_untouched(relay: &RelayXdp, frame: &[u8], ingress: Option<u32>, want: u32) {
    let out = run_expect(relay, frame, ingress, want);
    assert_eq!(out, frame, "the frame must come out untouched");
}

fn describe(counters: &[u64; COUNTERS]) -> String {
    let set: Vec<String> = Counter::ALL
        .iter()
        .filter(|c| counters[**c as usize] != 0)
        .map(|c| format!("{}={}", c.as_str(), counters[*c as usize]))
        .collect();
    if set.is_empty() {
        "all zero".into()
    } else {
        set.join(" ")
    }
}

/// Asserts the global counters: the listed ones have these values, all others are 0.
#[track_caller]
fn assert_counters(relay: &RelayXdp, want: &[(Counter, u64)]) {
    let got = relay.counters().expect("read COUNTERS");
    let mut expected = [0u64; COUNTERS];
    for (c, n) in want {
        expected[*c as usize] = *n;
    }
    assert_eq!(
        got,
        expected,
        "COUNTERS: got {}, expected {}",
        describe(&got),
        describe(&expected)
    );
}

/// A rule's expected statistics (last-seen is checked separately).
#[derive(Debug, Default, PartialEq, Eq)]
struct Stats {
    packets: u64,
    bytes: u64,
    passed_up: u64,
    drops: [u64; DROP_REASONS],
}

impl Stats {
    fn accepted(packets: u64, bytes: u64) -> Self {
        Self {
            packets,
            bytes,
            ..Self::default()
        }
    }
    fn passed_up(n: u64) -> Self {
        Self {
            passed_up: n,
            ..Self::default()
        }
    }
    fn drops(list: &[(DropReason, u64)]) -> Self {
        let mut s = Self::default();
        for (r, n) in list {
            s.drops[*r as usize] = *n;
        }
        s
    }
}

#[track_caller]
fn assert_stats(relay: &RelayXdp, key: &FlowKey, want: Stats) -> FlowStats {
    let s = relay.flow_stats(key).expect("read FLOW_STATS");
    let got = Stats {
        packets: s.packets,
        bytes: s.bytes,
        passed_up: s.passed_up,
        drops: s.drops,
    };
    assert_eq!(got, want, "FLOW_STATS of port {}", key.port());
    s
}

/// Asserts that `last_seen_ns` was stamped between `before` and now.
#[track_caller]
fn assert_seen_since(stats: &FlowStats, before: u64) {
    let now = monotonic_ns();
    assert!(
        (before..=now).contains(&stats.last_seen_ns),
        "last_seen_ns {} not within [{before}, {now}]",
        stats.last_seen_ns
    );
}

/// Asserts what a forwarded frame must look like: new MACs, addresses and
/// ports from the rule, TTL, options and payload as they came in, checksums
/// valid by etherparse's recomputation.
#[track_caller]
fn assert_forwarded(
    out: &[u8],
    sent: &UdpFrame,
    macs: ([u8; 6], [u8; 6]),
    from: SocketAddr,
    to: SocketAddr,
) -> ParsedUdp {
    let p = parse_udp(out);
    assert_eq!(out.len(), sent.build().len(), "frame length");
    assert_eq!(
        (format_mac(&p.dst_mac), format_mac(&p.src_mac)),
        (format_mac(&macs.0), format_mac(&macs.1)),
        "(destination, source) MAC"
    );
    assert_eq!((p.src, p.dst), (from, to), "(source, destination)");
    assert_eq!(p.ttl, sent.ttl, "TTL / hop limit is not decremented");
    assert_eq!(p.vlan, None);
    assert_eq!(p.ipv4_options, sent.ipv4_options, "IPv4 options");
    assert_eq!(p.payload, sent.payload, "payload");
    p.assert_checksums_valid();
    p
}

// ---------------------------------------------------------------------------
// The forwarding namespace

/// A namespace standing in for the relay host: `rin0` inside (192.0.2.1/24,
/// 2001:db8:1::1/64) and `rout0` outside (198.51.100.1/24, 2001:db8:2::1/64),
/// each a veth whose peer (`rin1`, `rout1`) stays in the namespace, unused.
/// Forwarding on; permanent neighbours for the caller(s) and the callee.
struct Host {
    ns: NetNs,
    inside: Link,
    outside: Link,
}

impl Host {
    fn new() -> Result<Self> {
        let ns = NetNs::new("relaytest")?;
        ns.enable_forwarding()?;
        ns.add_veth("rin0", "rin1", None)?;
        ns.add_veth("rout0", "rout1", None)?;
        for (cidr, dev) in [
            ("192.0.2.1/24", "rin0"),
            ("198.51.100.1/24", "rout0"),
            ("2001:db8:1::1/64", "rin0"),
            ("2001:db8:2::1/64", "rout0"),
        ] {
            let mut args = vec!["addr", "add", cidr, "dev", dev];
            if cidr.contains(':') {
                args.push("nodad");
            }
            ns.ip(&args)?;
        }
        for (ip, mac, dev) in [
            (IpAddr::from(CALLER), CALLER_MAC, "rin0"),
            (CALLER2.into(), CALLER2_MAC, "rin0"),
            (CALLER6.into(), CALLER_MAC, "rin0"),
            (CALLEE.into(), CALLEE_MAC, "rout0"),
            (CALLEE6.into(), CALLEE_MAC, "rout0"),
        ] {
            let (ip, mac) = (ip.to_string(), format_mac(&mac));
            ns.ip(&[
                "neigh",
                "add",
                &ip,
                "lladdr",
                &mac,
                "nud",
                "permanent",
                "dev",
                dev,
            ])?;
        }
        let inside = ns.link("rin0")?;
        let outside = ns.link("rout0")?;
        Ok(Self {
            ns,
            inside,
            outside,
        })
    }

    /// Loads the program inside the namespace, with the relay addresses and
    /// the outside interface in EGRESS, and runs `f` there.
    fn run<T: Send>(&self, f: impl FnOnce(&mut RelayXdp) -> Result<T> + Send) -> Result<T> {
        let outside = self.outside.ifindex;
        self.ns.run(move || {
            let mut relay = load()?;
            relay.add_egress(outside)?;
            f(&mut relay)
        })?
    }

    /// A frame as the caller's NIC would send it to the relay's inside MAC.
    fn caller_frame(&self, mut f: UdpFrame) -> UdpFrame {
        f.src_mac = CALLER_MAC;
        f.dst_mac = self.inside.mac;
        f
    }
}

// ---------------------------------------------------------------------------
// Not the relay's business: XDP_PASS, untouched, nothing counted.

/// Every frame here is passed untouched and counted nowhere, even with a rule
/// on the relay endpoint involved.
fn assert_not_our_business(frames: &[(&str, Vec<u8>)]) -> Result<()> {
    let mut relay = load()?;
    let key = flow_key(endpoint());
    relay.add_rule(key, &strict_rule(Action::Userspace))?;
    for (what, frame) in frames {
        let run = relay.run(frame, None)?;
        assert_eq!(
            (action::name(run.action), &run.frame == frame),
            ("XDP_PASS", true),
            "{what}: must pass untouched"
        );
    }
    assert_counters(&relay, &[]);
    assert_stats(&relay, &key, Stats::default());
    Ok(())
}

#[test]
fn pass_arp() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    assert_not_our_business(&[(
        "ARP who-has the relay address",
        arp_request(CALLER_MAC, CALLER.octets(), RELAY_IN.octets()),
    )])
}

#[test]
fn pass_tcp_to_relay_address() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    assert_not_our_business(&[
        (
            "TCP SYN to the SIP port",
            tcp_syn(caller(), sa(RELAY_IN, 5060)),
        ),
        ("TCP SYN to a media port", tcp_syn(caller(), endpoint())),
        (
            "TCP SYN over IPv6 to a media port",
            tcp_syn(sa(CALLER6, 4000), sa(RELAY_IN6, 30000)),
        ),
    ])
}

#[test]
fn pass_udp_outside_port_range() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    assert_not_our_business(&[
        (
            "SIP over UDP",
            rtp_frame(caller(), sa(RELAY_IN, 5060)).build(),
        ),
        (
            "just below the range",
            rtp_frame(caller(), sa(RELAY_IN, 29999)).build(),
        ),
        (
            "just above the range",
            rtp_frame(caller(), sa(RELAY_IN, 31000)).build(),
        ),
        (
            "SIP over UDP/IPv6",
            rtp_frame(sa(CALLER6, 5060), sa(RELAY_IN6, 5060)).build(),
        ),
    ])
}

#[test]
fn pass_udp_to_other_address() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    assert_not_our_business(&[
        (
            "another host, media port",
            rtp_frame(caller(), sa(CALLER2, 30000)).build(),
        ),
        (
            "the relay's subnet broadcast",
            rtp_frame(caller(), sa(Ipv4Addr::new(192, 0, 2, 255), 30000)).build(),
        ),
        (
            "another IPv6 host",
            rtp_frame(sa(CALLER6, 4000), sa(CALLEE6, 30000)).build(),
        ),
    ])
}

#[test]
fn pass_ipv4_fragments() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut first = rtp_frame(caller(), endpoint());
    first.more_fragments = true;
    let mut later = rtp_frame(caller(), endpoint());
    later.fragment_offset = 185; // 1480 bytes on
    let mut last = later.clone();
    last.more_fragments = true;
    assert_not_our_business(&[
        ("first fragment (MF set)", first.build()),
        ("last fragment (offset, no MF)", later.build()),
        ("middle fragment (offset and MF)", last.build()),
    ])
}

#[test]
fn pass_ipv6_extension_header() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut f = rtp_frame(sa(CALLER6, 4000), sa(RELAY_IN6, 30000));
    f.hop_by_hop = true;
    let frame = f.build();
    assert_eq!(frame[14 + 6], 0, "next header: hop-by-hop");
    assert_not_our_business(&[("hop-by-hop options before UDP", frame)])
}

// ---------------------------------------------------------------------------
// Drops, one reason each.

#[test]
fn drop_no_flow() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut relay = load()?;
    let other = flow_key(sa(RELAY_IN, 30002));
    relay.add_rule(other, &strict_rule(Action::Userspace))?;
    for frame in [
        rtp_frame(caller(), endpoint()).build(),
        rtp_frame(caller(), sa(RELAY_OUT, 30999)).build(),
        rtp_frame(sa(CALLER6, 4000), sa(RELAY_IN6, 30000)).build(),
    ] {
        run_untouched(&relay, &frame, None, action::DROP);
    }
    assert_counters(&relay, &[(Counter::DropNoFlow, 3)]);
    assert_stats(&relay, &other, Stats::default());
    Ok(())
}

/// A port whose rule lives only in the userspace forwarder (the kernel's flow
/// map was full) goes up instead of being dropped as unsolicited.
#[test]
fn no_rule_but_userspace_port_passes_up() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut relay = load()?;
    relay.add_user_port(30000)?;
    relay.add_user_port(30063)?;
    for port in [30000, 30063] {
        let frame = rtp_frame(caller(), sa(RELAY_IN, port)).build();
        run_untouched(&relay, &frame, None, action::PASS);
    }
    // Neighbouring bits stay clear.
    for port in [30001, 30062, 30064] {
        let frame = rtp_frame(caller(), sa(RELAY_IN, port)).build();
        run_untouched(&relay, &frame, None, action::DROP);
    }
    assert_counters(
        &relay,
        &[(Counter::ToUserspace, 2), (Counter::DropNoFlow, 3)],
    );
    Ok(())
}

#[test]
fn drop_bad_source_strict() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut relay = load()?;
    let key = flow_key(endpoint());
    relay.add_rule(key, &strict_rule(Action::Userspace))?;
    for src in [
        sa(CALLER, 4001),   // right address, wrong port
        sa(STRANGER, 4000), // wrong address, right port
        sa(NATTED, 61000),  // neither
    ] {
        run_untouched(
            &relay,
            &rtp_frame(src, endpoint()).build(),
            None,
            action::DROP,
        );
    }
    assert_counters(&relay, &[(Counter::DropBadSource, 3)]);
    assert_stats(&relay, &key, Stats::drops(&[(DropReason::BadSource, 3)]));
    assert_eq!(
        relay.flow_state(&key)?.locked,
        0,
        "strict rules never learn"
    );
    // The declared peer still gets through.
    run_untouched(
        &relay,
        &rtp_frame(caller(), endpoint()).build(),
        None,
        action::PASS,
    );
    assert_counters(
        &relay,
        &[(Counter::DropBadSource, 3), (Counter::ToUserspace, 1)],
    );
    Ok(())
}

#[test]
fn drop_not_rtp() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut relay = load()?;
    let key = flow_key(endpoint());
    relay.add_rule(key, &strict_rule(Action::Userspace))?;
    let short = UdpFrame::new(caller(), endpoint(), rtp(SSRC, 1, 12)[..11].to_vec());
    // An 11-byte payload, the frame padded to Ethernet's 60-byte minimum: the
    // UDP length decides, not the frame length.
    let mut padded = short.build();
    padded.resize(60, 0);
    let mut v1 = rtp(SSRC, 1, 172);
    v1[0] = 0x40;
    let mut v3 = rtp(SSRC, 1, 172);
    v3[0] = 0xc0;
    for frame in [
        short.build(),
        padded,
        UdpFrame::new(caller(), endpoint(), v1).build(),
        UdpFrame::new(caller(), endpoint(), v3).build(),
    ] {
        run_untouched(&relay, &frame, None, action::DROP);
    }
    assert_counters(&relay, &[(Counter::DropNotRtp, 4)]);
    assert_stats(&relay, &key, Stats::drops(&[(DropReason::NotRtp, 4)]));
    // Exactly a fixed header is enough.
    let minimal = UdpFrame::new(caller(), endpoint(), rtp(SSRC, 1, 12)).build();
    run_untouched(&relay, &minimal, None, action::PASS);
    assert_stats(
        &relay,
        &key,
        Stats {
            packets: 1,
            bytes: 12,
            ..Stats::drops(&[(DropReason::NotRtp, 4)])
        },
    );
    Ok(())
}

#[test]
fn drop_rate_limited() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut relay = load()?;
    let key = flow_key(endpoint());
    let mut rule = strict_rule(Action::Userspace);
    // 1 packet/s with bursts of 3: a test runs far inside one interval.
    (rule.rate_interval_ns, rule.rate_burst_ns) = rate_params(1, 3);
    relay.add_rule(key, &rule)?;
    // Packets from a wrong source are dropped before they cost a token.
    let stranger = rtp_frame(sa(STRANGER, 4000), endpoint()).build();
    for _ in 0..5 {
        run_untouched(&relay, &stranger, None, action::DROP);
    }
    let frame = rtp_frame(caller(), endpoint()).build();
    let verdicts: Vec<&str> = (0..5)
        .map(|_| action::name(relay.run(&frame, None).expect("run").action))
        .collect();
    assert_eq!(
        verdicts,
        ["XDP_PASS", "XDP_PASS", "XDP_PASS", "XDP_DROP", "XDP_DROP"],
        "a burst of 3, then nothing until the next interval"
    );
    // Many more back to back, in one BPF_PROG_TEST_RUN.
    let run = relay.run_repeat(&frame, None, 100)?;
    assert_action(&run, action::DROP);
    assert_eq!(run.frame, frame);
    assert_counters(
        &relay,
        &[
            (Counter::DropBadSource, 5),
            (Counter::ToUserspace, 3),
            (Counter::DropRateLimited, 102),
        ],
    );
    assert_stats(
        &relay,
        &key,
        Stats {
            packets: 3,
            bytes: 3 * 172,
            ..Stats::drops(&[(DropReason::BadSource, 5), (DropReason::RateLimited, 102)])
        },
    );
    let state = relay.flow_state(&key)?;
    let (interval, _) = rate_params(1, 3);
    assert!(
        state.tat_ns > monotonic_ns() + interval,
        "three packets moved the GCRA clock three intervals on"
    );
    Ok(())
}

#[test]
fn drop_blocked() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut relay = load()?;
    let key = flow_key(endpoint());
    relay.add_rule(key, &strict_rule(Action::Block))?;
    for src in [caller(), sa(STRANGER, 9)] {
        run_untouched(
            &relay,
            &rtp_frame(src, endpoint()).build(),
            None,
            action::DROP,
        );
    }
    // Blocked before anything else is looked at, RTP sanity included.
    let junk = UdpFrame::new(caller(), endpoint(), vec![0; 3]).build();
    run_untouched(&relay, &junk, None, action::DROP);
    assert_counters(&relay, &[(Counter::DropBlocked, 3)]);
    assert_stats(&relay, &key, Stats::drops(&[(DropReason::Blocked, 3)]));
    Ok(())
}

#[test]
fn drop_malformed() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut relay = load()?;
    let key = flow_key(endpoint());
    relay.add_rule(key, &strict_rule(Action::Userspace))?;
    let f = rtp_frame(caller(), endpoint());
    let (l3, l4) = (f.l3(), f.l4());
    let good = f.build();
    let tot_len = (good.len() - l3) as u16;
    let udp_len = (good.len() - l4) as u16;
    let set16 = |at: usize, v: u16, reseal: bool| {
        let mut frame = good.clone();
        frame[at..at + 2].copy_from_slice(&v.to_be_bytes());
        if reseal {
            reseal_ipv4_header(&mut frame, l3);
        }
        frame
    };
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for ihl in [0u8, 1, 4] {
        let mut frame = good.clone();
        frame[l3] = 0x40 | ihl;
        cases.push(("IHL < 5", frame));
    }
    cases.push((
        "IPv4 total length past the frame",
        set16(l3 + 2, tot_len + 1, true),
    ));
    cases.push(("IPv4 total length 0xffff", set16(l3 + 2, 0xffff, true)));
    cases.push((
        "IPv4 total length shorter than IP + UDP headers",
        set16(l3 + 2, 27, true),
    ));
    cases.push(("UDP length 0", set16(l4 + 4, 0, false)));
    cases.push(("UDP length 7", set16(l4 + 4, 7, false)));
    cases.push((
        "UDP length past the IP payload",
        set16(l4 + 4, udp_len + 1, false),
    ));
    // IHL 15 (60-byte header) leaves no room for UDP in this total length.
    let mut frame = good.clone();
    frame[l3] = 0x4f;
    frame[l3 + 2..l3 + 4].copy_from_slice(&64u16.to_be_bytes());
    reseal_ipv4_header(&mut frame, l3);
    cases.push(("IHL 15 with a total length of 64", frame));
    // IPv6.
    let f6 = rtp_frame(sa(CALLER6, 4000), sa(RELAY_IN6, 30000));
    let good6 = f6.build();
    let plen = (good6.len() - f6.l3() - 40) as u16;
    for (what, v) in [
        ("IPv6 payload length past the frame", plen + 1),
        ("IPv6 payload length shorter than UDP", 7),
    ] {
        let mut frame = good6.clone();
        frame[f6.l3() + 4..f6.l3() + 6].copy_from_slice(&v.to_be_bytes());
        cases.push((what, frame));
    }
    let mut frame = good6.clone();
    let l4_6 = f6.l4();
    frame[l4_6 + 4..l4_6 + 6].copy_from_slice(&(plen + 1).to_be_bytes());
    cases.push(("UDP length past the IPv6 payload", frame));

    for (what, frame) in &cases {
        let run = relay.run(frame, None)?;
        assert_eq!(action::name(run.action), "XDP_DROP", "{what}");
        assert_eq!(&run.frame, frame, "{what}: untouched");
    }
    assert_counters(&relay, &[(Counter::DropMalformed, cases.len() as u64)]);
    // Broken headers are dropped before any rule is looked up: they are
    // counted globally only.
    assert_stats(&relay, &key, Stats::default());
    Ok(())
}

// ---------------------------------------------------------------------------
// Source learning.

#[test]
fn latch_learns_source_and_ssrc_then_locks() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut relay = load()?;
    let key = flow_key(endpoint());
    let mut rule = flow_rule(
        77,
        Action::Userspace,
        SourcePolicy::Latch,
        sa(Ipv4Addr::UNSPECIFIED, 0),
        out_src(),
        callee(),
    );
    rule.latch_until_ns = monotonic_ns_in(Duration::from_secs(60));
    relay.add_rule(key, &rule)?;
    let natted = sa(NATTED, 61000);

    let before = monotonic_ns();
    run_untouched(
        &relay,
        &rtp_frame(natted, endpoint()).build(),
        None,
        action::PASS,
    );
    let after = monotonic_ns();
    let state = relay.flow_state(&key)?;
    assert_eq!(state.locked, 1, "latched");
    assert_eq!(state.src_addr, addr_of(NATTED.into()));
    assert_eq!(state.src_port, 61000u16.to_be_bytes());
    assert_eq!(state.ssrc, SSRC);
    let events = relay.latch_events()?;
    assert_eq!(events.len(), 1, "one latch event: {events:?}");
    let ev = events[0];
    assert_eq!(ev.rule_id, 77);
    assert_eq!(ev.key, key);
    assert_eq!(ev.src_addr, addr_of(NATTED.into()));
    assert_eq!(ev.src_port, 61000u16.to_be_bytes());
    assert_eq!(ev.policy, SourcePolicy::Latch as u8);
    assert_eq!(ev.ssrc, SSRC);
    assert!(
        (before..=after).contains(&ev.time_ns),
        "event time {}",
        ev.time_ns
    );

    // The same source and SSRC, as RTP and as RTCP (SSRC at offset 4).
    run_untouched(
        &relay,
        &rtp_frame(natted, endpoint()).build(),
        None,
        action::PASS,
    );
    let rtcp = UdpFrame::new(natted, endpoint(), rtcp_rr(SSRC, 8)).build();
    run_untouched(&relay, &rtcp, None, action::PASS);
    // Anything else is locked out.
    let mut other_ssrc = rtp_frame(natted, endpoint());
    other_ssrc.payload = rtp(SSRC + 1, 2, 172);
    for frame in [
        rtp_frame(sa(STRANGER, 61000), endpoint()).build(),
        rtp_frame(sa(NATTED, 61001), endpoint()).build(),
        other_ssrc.build(),
        UdpFrame::new(natted, endpoint(), rtcp_rr(SSRC + 1, 8)).build(),
    ] {
        run_untouched(&relay, &frame, None, action::DROP);
    }
    assert_counters(
        &relay,
        &[(Counter::ToUserspace, 3), (Counter::DropBadSource, 4)],
    );
    assert_stats(
        &relay,
        &key,
        Stats {
            packets: 3,
            bytes: 172 * 2 + 16,
            ..Stats::drops(&[(DropReason::BadSource, 4)])
        },
    );
    assert_eq!(relay.latch_events()?, [], "latched once only");
    // The lock holds (the quality figures in the same state move on).
    let lock = |s: FlowState| (s.locked, s.src_addr, s.src_port, s.ssrc);
    assert_eq!(lock(relay.flow_state(&key)?), lock(state), "the lock holds");
    Ok(())
}

#[test]
fn latch_window_passed_drops() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut relay = load()?;
    let key = flow_key(endpoint());
    let mut rule = flow_rule(
        78,
        Action::Userspace,
        SourcePolicy::Latch,
        caller(),
        out_src(),
        callee(),
    );
    rule.latch_until_ns = monotonic_ns() - 1;
    relay.add_rule(key, &rule)?;
    for src in [sa(NATTED, 61000), caller()] {
        run_untouched(
            &relay,
            &rtp_frame(src, endpoint()).build(),
            None,
            action::DROP,
        );
    }
    assert_counters(&relay, &[(Counter::DropBadSource, 2)]);
    assert_stats(&relay, &key, Stats::drops(&[(DropReason::BadSource, 2)]));
    assert_eq!(relay.flow_state(&key)?.locked, 0, "nothing learned");
    assert_eq!(relay.latch_events()?, []);
    Ok(())
}

#[test]
fn restricted_learns_port_from_declared_address() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut relay = load()?;
    let key = flow_key(endpoint());
    // The declared port (4000) is ignored: the PBX's NAT picks another.
    let rule = flow_rule(
        79,
        Action::Userspace,
        SourcePolicy::Restricted,
        caller(),
        out_src(),
        callee(),
    );
    relay.add_rule(key, &rule)?;
    // A wrong address is dropped and teaches nothing.
    run_untouched(
        &relay,
        &rtp_frame(sa(STRANGER, 5555), endpoint()).build(),
        None,
        action::DROP,
    );
    assert_eq!(relay.flow_state(&key)?.locked, 0);
    // The declared address from any port: learned.
    let learned = sa(CALLER, 5555);
    run_untouched(
        &relay,
        &rtp_frame(learned, endpoint()).build(),
        None,
        action::PASS,
    );
    let state = relay.flow_state(&key)?;
    assert_eq!(
        (state.locked, state.src_addr, state.src_port),
        (1, addr_of(CALLER.into()), 5555u16.to_be_bytes())
    );
    let events = relay.latch_events()?;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].rule_id, events[0].policy, events[0].src_port),
        (79, SourcePolicy::Restricted as u8, 5555u16.to_be_bytes())
    );
    // Same address and port: accepted, whatever the SSRC.
    let mut new_ssrc = rtp_frame(learned, endpoint());
    new_ssrc.payload = rtp(SSRC + 1, 2, 172);
    run_untouched(&relay, &new_ssrc.build(), None, action::PASS);
    // Another port, even the declared one, and other addresses: dropped.
    for src in [sa(CALLER, 5556), caller(), sa(STRANGER, 5555)] {
        run_untouched(
            &relay,
            &rtp_frame(src, endpoint()).build(),
            None,
            action::DROP,
        );
    }
    assert_counters(
        &relay,
        &[(Counter::ToUserspace, 2), (Counter::DropBadSource, 4)],
    );
    assert_stats(
        &relay,
        &key,
        Stats {
            packets: 2,
            bytes: 2 * 172,
            ..Stats::drops(&[(DropReason::BadSource, 4)])
        },
    );
    assert_eq!(relay.latch_events()?, []);
    Ok(())
}

// ---------------------------------------------------------------------------
// Accepted but passed up.

/// An SRTP leg (FLAG_AUTH_LATCH): the program never latches; it passes
/// packets up until userspace, having authenticated one, writes the learned
/// source, and enforces that source from then on.
#[test]
fn auth_latch_passes_up_unlatched_then_enforces_userspace_lock() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut relay = load()?;
    let key = flow_key(endpoint());
    for action in [Action::Userspace, Action::Forward] {
        let mut rule = flow_rule(
            78,
            action,
            SourcePolicy::Latch,
            sa(Ipv4Addr::UNSPECIFIED, 0),
            out_src(),
            callee(),
        );
        rule.latch_until_ns = monotonic_ns_in(Duration::from_secs(60));
        rule.flags = relay_common::FLAG_AUTH_LATCH;
        relay.add_rule(key, &rule)?;
        let attacker = sa(NATTED, 61000);
        for _ in 0..3 {
            run_untouched(
                &relay,
                &rtp_frame(attacker, endpoint()).build(),
                None,
                action::PASS,
            );
        }
        assert_eq!(
            relay.flow_state(&key)?.locked,
            0,
            "{action:?}: never latched in XDP"
        );
        assert!(relay.latch_events()?.is_empty(), "{action:?}");

        // Userspace authenticated the caller's packet and locked it.
        let mut state = relay.flow_state(&key)?;
        state.src_addr = addr_of(CALLER.into());
        state.src_port = 4000u16.to_be_bytes();
        state.ssrc = SSRC;
        state.locked = 1;
        relay.set_flow_state(key, state)?;
        let before = relay.flow_stats(&key)?.drops[DropReason::BadSource as usize];
        run_untouched(
            &relay,
            &rtp_frame(attacker, endpoint()).build(),
            None,
            action::DROP,
        );
        let after = relay.flow_stats(&key)?.drops[DropReason::BadSource as usize];
        assert_eq!(
            after - before,
            1,
            "{action:?}: the locked source is enforced"
        );
    }
    Ok(())
}

#[test]
fn userspace_action_passes_untouched() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut relay = load()?;
    let key = flow_key(endpoint());
    relay.add_rule(key, &strict_rule(Action::Userspace))?;
    let before = monotonic_ns();
    run_untouched(
        &relay,
        &rtp_frame(caller(), endpoint()).build(),
        None,
        action::PASS,
    );
    assert_counters(&relay, &[(Counter::ToUserspace, 1)]);
    let s = assert_stats(&relay, &key, Stats::accepted(1, 172));
    assert_seen_since(&s, before);
    Ok(())
}

#[test]
fn family_change_passes_up() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut relay = load()?;
    let key = flow_key(endpoint());
    // IPv4 in, IPv6 out: the userspace forwarder's job.
    let rule = flow_rule(
        8,
        Action::Forward,
        SourcePolicy::Strict,
        caller(),
        sa(RELAY_OUT6, 30002),
        sa(CALLEE6, 5000),
    );
    relay.add_rule(key, &rule)?;
    run_untouched(
        &relay,
        &rtp_frame(caller(), endpoint()).build(),
        None,
        action::PASS,
    );
    assert_counters(&relay, &[(Counter::OtherPass, 1)]);
    assert_stats(&relay, &key, Stats::passed_up(1));
    Ok(())
}

#[test]
fn vlan_tagged_policy_then_pass_up() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut relay = load()?;
    let key = flow_key(endpoint());
    relay.add_rule(key, &strict_rule(Action::Forward))?;
    let mut wrong = rtp_frame(sa(STRANGER, 4000), endpoint());
    wrong.vlan = Some(100);
    run_untouched(&relay, &wrong.build(), None, action::DROP);
    let mut right = rtp_frame(caller(), endpoint());
    right.vlan = Some(100);
    let frame = right.build();
    assert_eq!(&frame[12..14], &[0x81, 0x00], "802.1Q");
    run_untouched(&relay, &frame, None, action::PASS);
    assert_counters(
        &relay,
        &[(Counter::DropBadSource, 1), (Counter::OtherPass, 1)],
    );
    assert_stats(
        &relay,
        &key,
        Stats {
            passed_up: 1,
            ..Stats::drops(&[(DropReason::BadSource, 1)])
        },
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Forwarding (bpf_fib_lookup in a namespace).

#[test]
fn forward_ipv4_redirect() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let host = Host::new()?;
    let sent = host.caller_frame(rtp_frame(caller(), endpoint()));
    let (inside, outside) = (host.inside, host.outside);
    host.run(|relay| {
        let key = flow_key(endpoint());
        relay.add_rule(key, &strict_rule(Action::Forward))?;
        let before = monotonic_ns();
        let out = run_expect(relay, &sent.build(), Some(inside.ifindex), action::REDIRECT);
        assert_forwarded(&out, &sent, (CALLEE_MAC, outside.mac), out_src(), callee());
        assert_counters(relay, &[(Counter::Redirect, 1)]);
        let s = assert_stats(relay, &key, Stats::accepted(1, 172));
        assert_seen_since(&s, before);
        Ok(())
    })
}

#[test]
fn ingress_bound_rule_drops_the_peer_forged_on_another_interface() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let host = Host::new()?;
    let sent = host.caller_frame(rtp_frame(caller(), endpoint()));
    let (inside, outside) = (host.inside, host.outside);
    host.run(|relay| {
        let key = flow_key(endpoint());
        let mut rule = strict_rule(Action::Forward);
        rule.ingress_ifindex = inside.ifindex;
        relay.add_rule(key, &rule)?;
        // The declared peer's exact address and port, but arriving on the
        // outside device: spoofed.
        run_untouched(relay, &sent.build(), Some(outside.ifindex), action::DROP);
        assert_counters(relay, &[(Counter::DropBadSource, 1)]);
        assert_stats(relay, &key, Stats::drops(&[(DropReason::BadSource, 1)]));
        // From the inside device it is forwarded.
        run_expect(relay, &sent.build(), Some(inside.ifindex), action::REDIRECT);
        assert_counters(
            relay,
            &[(Counter::DropBadSource, 1), (Counter::Redirect, 1)],
        );
        Ok(())
    })
}

#[test]
fn forward_ipv4_tx_same_interface() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let host = Host::new()?;
    let sent = host.caller_frame(rtp_frame(caller(), endpoint()));
    let inside = host.inside;
    host.run(|relay| {
        // Hairpin: caller to caller2, both inside.
        let key = flow_key(endpoint());
        let to = sa(CALLER2, 6000);
        let from = sa(RELAY_IN, 30004);
        let rule = flow_rule(9, Action::Forward, SourcePolicy::Strict, caller(), from, to);
        relay.add_rule(key, &rule)?;
        let out = run_expect(relay, &sent.build(), Some(inside.ifindex), action::TX);
        assert_forwarded(&out, &sent, (CALLER2_MAC, inside.mac), from, to);
        assert_counters(relay, &[(Counter::Tx, 1)]);
        assert_stats(relay, &key, Stats::accepted(1, 172));
        Ok(())
    })
}

#[test]
fn forward_ipv4_without_udp_checksum() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let host = Host::new()?;
    let mut sent = host.caller_frame(rtp_frame(caller(), endpoint()));
    sent.udp_checksum = false;
    let (inside, outside) = (host.inside, host.outside);
    host.run(|relay| {
        relay.add_rule(flow_key(endpoint()), &strict_rule(Action::Forward))?;
        let out = run_expect(relay, &sent.build(), Some(inside.ifindex), action::REDIRECT);
        let p = assert_forwarded(&out, &sent, (CALLEE_MAC, outside.mac), out_src(), callee());
        assert_eq!(p.udp_checksum.0, 0, "no checksum stays no checksum");
        Ok(())
    })
}

/// A rewritten UDP checksum that folds to 0 must be sent as 0xffff (0 means
/// "none"), and an incoming 0xffff (a computed 0) must be updated like any other.
#[test]
fn forward_ipv4_udp_checksum_edge_values() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let host = Host::new()?;
    let (inside, outside) = (host.inside, host.outside);
    // A frame from the caller whose last payload word makes the UDP checksum
    // over addresses and ports (src, dst) come out as 0xffff.
    let tuned = |src: SocketAddr, dst: SocketAddr| {
        let mut f = host.caller_frame(rtp_frame(caller(), endpoint()));
        let n = f.payload.len();
        f.payload[n - 2..].fill(0);
        let mut probe = f.clone();
        (probe.src, probe.dst) = (src, dst);
        let c = parse_udp(&probe.build()).udp_checksum.1;
        f.payload[n - 2..].copy_from_slice(&c.to_be_bytes());
        probe.payload = f.payload.clone();
        assert_eq!(parse_udp(&probe.build()).udp_checksum.1, 0xffff);
        f
    };
    let output_folds_to_zero = tuned(out_src(), callee());
    let input_folds_to_zero = tuned(caller(), endpoint());
    assert_eq!(
        parse_udp(&input_folds_to_zero.build()).udp_checksum.0,
        0xffff
    );
    host.run(|relay| {
        relay.add_rule(flow_key(endpoint()), &strict_rule(Action::Forward))?;
        let out = run_expect(
            relay,
            &output_folds_to_zero.build(),
            Some(inside.ifindex),
            action::REDIRECT,
        );
        let p = assert_forwarded(
            &out,
            &output_folds_to_zero,
            (CALLEE_MAC, outside.mac),
            out_src(),
            callee(),
        );
        assert_eq!(p.udp_checksum.0, 0xffff, "a computed 0 goes out as 0xffff");
        let out = run_expect(
            relay,
            &input_folds_to_zero.build(),
            Some(inside.ifindex),
            action::REDIRECT,
        );
        assert_forwarded(
            &out,
            &input_folds_to_zero,
            (CALLEE_MAC, outside.mac),
            out_src(),
            callee(),
        );
        Ok(())
    })
}

#[test]
fn forward_ipv6_redirect() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let host = Host::new()?;
    let endpoint6 = sa(RELAY_IN6, 30000);
    let sent = host.caller_frame(rtp_frame(sa(CALLER6, 4000), endpoint6));
    let (inside, outside) = (host.inside, host.outside);
    host.run(|relay| {
        let key = flow_key(endpoint6);
        let (from, to) = (sa(RELAY_OUT6, 30002), sa(CALLEE6, 5000));
        let rule = flow_rule(
            10,
            Action::Forward,
            SourcePolicy::Strict,
            sa(CALLER6, 4000),
            from,
            to,
        );
        relay.add_rule(key, &rule)?;
        let out = run_expect(relay, &sent.build(), Some(inside.ifindex), action::REDIRECT);
        let p = assert_forwarded(&out, &sent, (CALLEE_MAC, outside.mac), from, to);
        assert_ne!(p.udp_checksum.0, 0, "IPv6 UDP checksums are mandatory");
        assert_counters(relay, &[(Counter::Redirect, 1)]);
        assert_stats(relay, &key, Stats::accepted(1, 172));
        Ok(())
    })
}

#[test]
fn forward_unresolved_neighbour_passes_up() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let host = Host::new()?;
    let sent = host.caller_frame(rtp_frame(caller(), endpoint())).build();
    let inside = host.inside;
    host.run(|relay| {
        let key = flow_key(endpoint());
        let rule = flow_rule(
            11,
            Action::Forward,
            SourcePolicy::Strict,
            caller(),
            out_src(),
            sa(UNRESOLVED, 5000),
        );
        relay.add_rule(key, &rule)?;
        run_untouched(relay, &sent, Some(inside.ifindex), action::PASS);
        assert_counters(relay, &[(Counter::FibPass, 1)]);
        assert_stats(relay, &key, Stats::passed_up(1));
        Ok(())
    })?;
    // The lookup does not resolve anything itself: still no neighbour.
    let neigh = host.ns.ip(&["neigh", "show", &UNRESOLVED.to_string()])?;
    assert!(!neigh.contains("lladdr"), "neighbour appeared: {neigh}");
    Ok(())
}

#[test]
fn forward_egress_not_in_devmap_passes_up() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let host = Host::new()?;
    let sent = host.caller_frame(rtp_frame(caller(), endpoint())).build();
    let inside = host.inside;
    host.ns.run(|| -> Result<()> {
        let mut relay = load()?; // EGRESS left empty
        let key = flow_key(endpoint());
        relay.add_rule(key, &strict_rule(Action::Forward))?;
        run_untouched(&relay, &sent, Some(inside.ifindex), action::PASS);
        assert_counters(&relay, &[(Counter::OtherPass, 1)]);
        assert_stats(&relay, &key, Stats::passed_up(1));
        Ok(())
    })?
}

#[test]
fn forward_ipv4_options_preserved() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let host = Host::new()?;
    let (inside, outside) = (host.inside, host.outside);
    let with_options = |options: Vec<u8>| {
        let mut f = host.caller_frame(rtp_frame(caller(), endpoint()));
        f.ipv4_options = options;
        f
    };
    let frames = [
        // IHL 6: Router Alert.
        with_options(vec![0x94, 0x04, 0x00, 0x00]),
        // IHL 15: the longest header, NOPs and an end of list.
        with_options([vec![1; 39], vec![0]].concat()),
    ];
    host.run(|relay| {
        let key = flow_key(endpoint());
        relay.add_rule(key, &strict_rule(Action::Forward))?;
        for sent in &frames {
            let bytes = sent.build();
            assert_eq!(
                bytes[sent.l3()] & 0x0f,
                5 + sent.ipv4_options.len() as u8 / 4
            );
            let out = run_expect(relay, &bytes, Some(inside.ifindex), action::REDIRECT);
            assert_forwarded(&out, sent, (CALLEE_MAC, outside.mac), out_src(), callee());
        }
        assert_counters(relay, &[(Counter::Redirect, 2)]);
        assert_stats(relay, &key, Stats::accepted(2, 2 * 172));
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// Bad input.

#[test]
fn truncated_frames_pass() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut relay = load()?;
    let key = flow_key(endpoint());
    relay.add_rule(key, &strict_rule(Action::Userspace))?;
    let full = rtp_frame(caller(), endpoint()).build();
    let mut vlan = rtp_frame(caller(), endpoint());
    vlan.vlan = Some(100);
    let vlan = vlan.build();
    let full6 = rtp_frame(sa(CALLER6, 4000), sa(RELAY_IN6, 30000)).build();
    let cases: [(&str, &[u8]); 6] = [
        ("Ethernet header only, IPv4 ethertype", &full[..14]),
        ("Ethernet + 10 bytes of IPv4 header", &full[..24]),
        ("Ethernet + 19 bytes of IPv4 header", &full[..33]),
        ("802.1Q tag, no ethertype after it", &vlan[..16]),
        ("802.1Q tag and inner ethertype, nothing else", &vlan[..18]),
        ("Ethernet + 39 bytes of IPv6 header", &full6[..53]),
    ];
    for (what, frame) in cases {
        let run = relay.run(frame, None)?;
        assert_eq!(
            (action::name(run.action), &run.frame[..] == frame),
            ("XDP_PASS", true),
            "{what}"
        );
    }
    // Shorter than an Ethernet header: the kernel refuses the test run.
    assert!(relay.run(&full[..13], None).is_err(), "13-byte frame");
    assert_counters(&relay, &[]);
    // A whole IPv4 header that promises UDP which the frame does not hold is
    // the relay's (to a relay address), and broken.
    let mut cut = full[..14 + 20 + 4].to_vec();
    cut[14 + 2..14 + 4].copy_from_slice(&24u16.to_be_bytes());
    reseal_ipv4_header(&mut cut, 14);
    run_untouched(&relay, &cut, None, action::DROP);
    assert_counters(&relay, &[(Counter::DropMalformed, 1)]);
    assert_stats(&relay, &key, Stats::default());
    Ok(())
}

#[test]
fn zero_length_udp_payload_is_not_rtp() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut relay = load()?;
    let key = flow_key(endpoint());
    relay.add_rule(key, &strict_rule(Action::Userspace))?;
    let empty = UdpFrame::new(caller(), endpoint(), Vec::new()).build();
    assert_eq!(empty.len(), 14 + 20 + 8);
    run_untouched(&relay, &empty, None, action::DROP);
    let empty6 = UdpFrame::new(sa(CALLER6, 4000), sa(RELAY_IN6, 30000), Vec::new()).build();
    relay.add_rule(
        flow_key(sa(RELAY_IN6, 30000)),
        &flow_rule(
            12,
            Action::Userspace,
            SourcePolicy::Strict,
            sa(CALLER6, 4000),
            sa(RELAY_OUT6, 30002),
            sa(CALLEE6, 5000),
        ),
    )?;
    run_untouched(&relay, &empty6, None, action::DROP);
    assert_counters(&relay, &[(Counter::DropNotRtp, 2)]);
    assert_stats(&relay, &key, Stats::drops(&[(DropReason::NotRtp, 1)]));
    Ok(())
}

/// 3000 bytes (more than a 1500 MTU, less than the linear part of a test-run
/// buffer, PAGE_SIZE minus XDP headroom and tailroom): parsed whole; the FIB
/// refuses it for a 1500-byte egress (passed up for the kernel to fragment)
/// and forwards it over a jumbo egress.
#[test]
fn giant_frame() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let host = Host::new()?;
    let sent = host.caller_frame(UdpFrame::new(caller(), endpoint(), rtp(SSRC, 1, 2958)));
    let bytes = sent.build();
    assert_eq!(bytes.len(), 3000);
    let (inside, outside) = (host.inside, host.outside);
    let key = flow_key(endpoint());
    host.run(|relay| {
        relay.add_rule(key, &strict_rule(Action::Forward))?;
        run_untouched(relay, &bytes, Some(inside.ifindex), action::PASS);
        assert_counters(relay, &[(Counter::FibPass, 1)]);
        Ok(())
    })?;
    host.ns.ip(&["link", "set", "rout0", "mtu", "9000"])?;
    host.run(|relay| {
        relay.add_rule(key, &strict_rule(Action::Forward))?;
        let out = run_expect(relay, &bytes, Some(inside.ifindex), action::REDIRECT);
        assert_forwarded(&out, &sent, (CALLEE_MAC, outside.mac), out_src(), callee());
        assert_stats(relay, &key, Stats::accepted(1, 2958));
        Ok(())
    })
}

/// BPF_PROG_TEST_RUN also takes frames longer than one page, as multi-buffer
/// XDP (the rest in fragments). The relay's program is not frags-aware, so it
/// sees only the linear part, where the IPv4 total length does not fit: it is
/// dropped as malformed, never forwarded half. (A real device cannot hand such
/// a frame to a program loaded without BPF_F_XDP_HAS_FRAGS.)
#[test]
fn multi_buffer_frame_is_not_forwarded() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut relay = load()?;
    let key = flow_key(endpoint());
    relay.add_rule(key, &strict_rule(Action::Userspace))?;
    let frame = UdpFrame::new(caller(), endpoint(), rtp(SSRC, 1, 8958)).build();
    assert_eq!(frame.len(), 9000);
    run_untouched(&relay, &frame, None, action::DROP);
    assert_counters(&relay, &[(Counter::DropMalformed, 1)]);
    Ok(())
}

/// An IPv6 packet whose addresses are IPv4-mapped (`::ffff:a.b.c.d`) would
/// hit the same 16-byte keys IPv4 rules use; it must not be accepted by (or
/// latch) an IPv4 rule, and is left to the kernel.
#[test]
fn ipv6_with_ipv4_mapped_addresses_is_not_an_ipv4_flow() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut relay = load()?;
    let strict = flow_key(endpoint());
    relay.add_rule(strict, &strict_rule(Action::Userspace))?;
    let latch_ep = sa(RELAY_IN, 30010);
    let latch = flow_key(latch_ep);
    let mut rule = flow_rule(
        13,
        Action::Userspace,
        SourcePolicy::Latch,
        caller(),
        out_src(),
        callee(),
    );
    rule.latch_until_ns = monotonic_ns_in(Duration::from_secs(60));
    relay.add_rule(latch, &rule)?;
    let mapped = |sa: SocketAddr| match sa.ip() {
        IpAddr::V4(v4) => SocketAddr::new(v4.to_ipv6_mapped().into(), sa.port()),
        IpAddr::V6(_) => sa,
    };
    for dst in [endpoint(), latch_ep] {
        let frame = rtp_frame(mapped(caller()), mapped(dst)).build();
        relay.run(&frame, None)?;
    }
    assert_eq!(relay.counter(Counter::ToUserspace)?, 0, "accepted as IPv4");
    assert_eq!(relay.flow_stats(&strict)?.packets, 0);
    assert_eq!(
        relay.flow_state(&latch)?.locked,
        0,
        "an IPv6 packet latched an IPv4 rule"
    );
    assert_eq!(relay.latch_events()?, []);
    Ok(())
}

// ---------------------------------------------------------------------------
// RTP quality (relay_common::quality run by the program). `userspace` rules:
// accepted packets are measured whatever path they then take, and passing
// them up needs no forwarding namespace.

/// An RTP packet (PCMU, 172 bytes) with this SSRC, sequence number and timestamp.
fn rtp_packet(ssrc: u32, seq: u16, ts: u32) -> Vec<u8> {
    let mut p = rtp(ssrc, seq, 12 + 160);
    p[4..8].copy_from_slice(&ts.to_be_bytes());
    p
}

/// Loads the program with a `userspace` rule at [`endpoint`] whose clock
/// rate is `clock_rate`.
fn quality_relay(clock_rate: u32) -> Result<(RelayXdp, FlowKey)> {
    let mut relay = load()?;
    let key = flow_key(endpoint());
    let mut rule = strict_rule(Action::Userspace);
    rule.clock_rate = clock_rate;
    relay.add_rule(key, &rule)?;
    Ok((relay, key))
}

/// Sends one RTP packet per (ssrc, seq, ts), each accepted and passed up.
fn send_rtp(relay: &RelayXdp, packets: &[(u32, u16, u32)]) {
    for &(ssrc, seq, ts) in packets {
        let frame = UdpFrame::new(caller(), endpoint(), rtp_packet(ssrc, seq, ts)).build();
        run_expect(relay, &frame, None, action::PASS);
    }
}

/// Sequence numbers with SSRC and 160-sample timestamps.
fn seqs(list: &[u16]) -> Vec<(u32, u16, u32)> {
    list.iter()
        .map(|&s| (SSRC, s, u32::from(s).wrapping_mul(160)))
        .collect()
}

/// (expected, received, lost, out_of_order, extended highest)
fn seq_figures(relay: &RelayXdp, key: &FlowKey) -> (u64, u64, i64, u32, u64) {
    let q = relay.flow_state(key).expect("FLOW_STATE").quality;
    (
        q.expected(),
        q.total_received(),
        q.lost(),
        q.out_of_order,
        q.extended_max(),
    )
}

#[test]
fn quality_in_order() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (relay, key) = quality_relay(8000)?;
    send_rtp(&relay, &seqs(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));
    assert_eq!(seq_figures(&relay, &key), (10, 10, 0, 0, 10));
    let q = relay.flow_state(&key)?.quality;
    assert_eq!((q.ssrc, q.ssrc_changes, q.base_seq), (SSRC, 0, 1));
    // RTCP on the same rule (rtcp-mux) is accepted but not counted.
    let rtcp = UdpFrame::new(caller(), endpoint(), rtcp_rr(SSRC, 8)).build();
    run_expect(&relay, &rtcp, None, action::PASS);
    assert_eq!(seq_figures(&relay, &key), (10, 10, 0, 0, 10));
    assert_counters(&relay, &[(Counter::ToUserspace, 11)]);
    Ok(())
}

#[test]
fn quality_gap_counts_loss() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (relay, key) = quality_relay(8000)?;
    send_rtp(&relay, &seqs(&[1, 2, 3, 7, 8]));
    assert_eq!(seq_figures(&relay, &key), (8, 5, 3, 0, 8));
    Ok(())
}

/// RFC 3550 semantics: a late packet is received, so the loss its gap counted
/// goes away when it arrives; it is counted as out of order.
#[test]
fn quality_reordering() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (relay, key) = quality_relay(8000)?;
    send_rtp(&relay, &seqs(&[1, 2, 4]));
    assert_eq!(seq_figures(&relay, &key), (4, 3, 1, 0, 4));
    send_rtp(&relay, &seqs(&[3, 5]));
    assert_eq!(seq_figures(&relay, &key), (5, 5, 0, 1, 5));
    // Packets dropped by the policy are not the stream's: no effect.
    let stranger = UdpFrame::new(sa(STRANGER, 4000), endpoint(), rtp_packet(SSRC, 9, 0));
    run_expect(&relay, &stranger.build(), None, action::DROP);
    assert_eq!(seq_figures(&relay, &key), (5, 5, 0, 1, 5));
    Ok(())
}

#[test]
fn quality_sequence_wrap_counts_cycles() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (relay, key) = quality_relay(8000)?;
    send_rtp(&relay, &seqs(&[65533, 65534, 65535, 0, 2]));
    assert_eq!(seq_figures(&relay, &key), (6, 5, 1, 0, 65536 + 2));
    assert_eq!(relay.flow_state(&key)?.quality.cycles, 1);
    Ok(())
}

#[test]
fn quality_ssrc_change_restarts_the_sequence() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (relay, key) = quality_relay(8000)?;
    send_rtp(&relay, &seqs(&[1, 2, 4]));
    let other = SSRC ^ 0xffff;
    send_rtp(
        &relay,
        &[(other, 500, 0), (other, 501, 160), (other, 503, 480)],
    );
    let q = relay.flow_state(&key)?.quality;
    assert_eq!((q.ssrc, q.ssrc_changes, q.base_seq), (other, 1, 500));
    // 4 expected of the first SSRC (1 lost), 4 of the second (1 lost).
    assert_eq!(seq_figures(&relay, &key), (8, 6, 2, 0, 503));
    Ok(())
}

/// Back-to-back packets whose timestamps advance 1 s each: every transit
/// difference D is 8000 units at 8 kHz (less the few µs between two test
/// runs), so after n packets J = 8000 (1 − (15/16)^(n−1)) (RFC 3550 A.8).
/// With clock rate 0 the same packets give no jitter.
#[test]
fn quality_jitter_and_clock_rate_zero() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let packets: Vec<(u32, u16, u32)> =
        (0..10u16).map(|i| (SSRC, i, u32::from(i) * 8000)).collect();
    let (relay, key) = quality_relay(8000)?;
    let start = monotonic_ns();
    send_rtp(&relay, &packets);
    let elapsed_units = (monotonic_ns() - start) as f64 * 8000.0 / 1e9;
    let q = relay.flow_state(&key)?.quality;
    let j = q.jitter_q8 as f64 / 256.0;
    let ideal = 8000.0 * (1.0 - (15.0f64 / 16.0).powi(9));
    // Every |D| lies in [8000 − (whole run in units), 8000]; J follows.
    let low = (8000.0 - elapsed_units) * (1.0 - (15.0f64 / 16.0).powi(9));
    assert!(
        (low - 1.0..=ideal + 1.0).contains(&j),
        "J = {j} units, expected {low:.1}..={ideal:.1}"
    );
    assert_eq!(q.rate, 8000);

    let (relay, key) = quality_relay(0)?;
    send_rtp(&relay, &packets);
    let q = relay.flow_state(&key)?.quality;
    assert_eq!((q.jitter_q8, q.rate), (0, 0), "no clock rate, no jitter");
    assert_eq!(seq_figures(&relay, &key), (10, 10, 0, 0, 9));
    Ok(())
}
