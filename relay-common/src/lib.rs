//! Types shared by the XDP program (`relay-ebpf`) and userspace (`relay-user`).
//!
//! Everything here is `no_std`, `#[repr(C)]` and free of implicit padding, so the
//! kernel and userspace agree on every byte of every map key and value. Addresses
//! are 16 bytes (IPv4 as IPv4-mapped IPv6, `::ffff:a.b.c.d`) and ports are kept in
//! network byte order; counters and times are native-endian integers (the BPF
//! target is little-endian, like every host we build for).
//!
//! [`policy`] holds the per-packet decisions (RTP sanity, source policy, rate
//! limit) as pure functions so that the XDP program and the userspace forwarder
//! apply literally the same rules.
#![no_std]

pub mod csum;
pub mod policy;
pub mod quality;

/// A 16-byte IP address; IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`).
pub type Addr = [u8; 16];

/// Prefix of an IPv4-mapped IPv6 address.
pub const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// Maps an IPv4 address (network order bytes) into the 16-byte form.
#[inline(always)]
pub const fn addr_from_v4(v4: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// True when the 16-byte address holds an IPv4 address.
#[inline(always)]
pub fn addr_is_v4(addr: &Addr) -> bool {
    addr[..12] == V4_MAPPED_PREFIX
}

/// The relay-side endpoint that receives a flow's packets: the key of every
/// per-flow map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub addr: Addr,
    /// UDP port, network byte order.
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}

impl FlowKey {
    pub const fn new(addr: Addr, port: u16) -> Self {
        Self {
            addr,
            port: port.to_be_bytes(),
            _pad: [0; 2],
        }
    }
    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
}

/// What a rule does with a packet that passes the checks.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Rewrite and send out in the driver (XDP_TX / redirect).
    Forward = 0,
    /// Check, count, then hand to the userspace forwarder (crypto path).
    Userspace = 1,
    /// Drop every packet (`blocked`), e.g. NG `block media`.
    Block = 2,
}

impl Action {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Forward),
            1 => Some(Self::Userspace),
            2 => Some(Self::Block),
            _ => None,
        }
    }
}

/// Who may send to a rule's relay endpoint.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourcePolicy {
    /// Only the declared peer address and port.
    Strict = 0,
    /// The declared address; the port is learned from the first packet, then locked.
    Restricted = 1,
    /// Any source, learned from the first packet inside the latch window, then
    /// locked together with its SSRC.
    Latch = 2,
}

impl SourcePolicy {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Strict),
            1 => Some(Self::Restricted),
            2 => Some(Self::Latch),
            _ => None,
        }
    }
}

/// A flow rule, written by userspace only (the `FLOWS` map value).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRule {
    /// Userspace's id for the rule; carried into latch events.
    pub id: u64,
    /// `Latch` policy: learning is allowed until this CLOCK_MONOTONIC time (ns).
    pub latch_until_ns: u64,
    /// Rate limit as GCRA: one packet per `rate_interval_ns`; 0 = unlimited.
    pub rate_interval_ns: u64,
    /// Rate limit tolerance (burst × interval), ns.
    pub rate_burst_ns: u64,
    /// Declared peer (expected source) address.
    pub peer_addr: Addr,
    /// Relay address the forwarded packet leaves from.
    pub out_src_addr: Addr,
    /// Where the forwarded packet goes.
    pub dst_addr: Addr,
    /// Declared peer port (network order); ignored by `Restricted` and `Latch`.
    pub peer_port: [u8; 2],
    pub out_src_port: [u8; 2],
    pub dst_port: [u8; 2],
    /// [`Action`] as u8.
    pub action: u8,
    /// [`SourcePolicy`] as u8.
    pub policy: u8,
    /// RTP clock rate of the stream (Hz), for the jitter figure; 0 = not RTP
    /// or unknown (sequence figures are still kept).
    pub clock_rate: u32,
    /// `FLAG_*` bits.
    pub flags: u8,
    pub _reserved: [u8; 3],
    /// The only device the rule's packets may arrive on (the one of the
    /// relay interface that owns the rule's address); 0 = any. A packet with
    /// the right peer address that arrives on another interface is spoofed.
    pub ingress_ifindex: u32,
    pub _pad: u32,
}

/// [`FlowRule::flags`]: the source must be learned in userspace, after the
/// packet authenticated (SRTP legs): while the rule's state is not locked,
/// the program passes packets up instead of latching on them itself, so an
/// unauthenticated packet can never teach the source (RTP Bleed,
/// CVE-2025-53399). Userspace writes the learned source into `FLOW_STATE`.
pub const FLAG_AUTH_LATCH: u8 = 1;

/// [`FlowRule::flags`]: the userspace forwarder protects or unprotects this
/// rule's packets (transcrypt, re-key) with keys that live only in the
/// relayd that installed it. The XDP program ignores the flag; a restarted
/// relayd does not adopt such a rule, which without its keys would forward
/// plain RTP onto a leg that must be encrypted.
pub const FLAG_SRTP_CRYPTO: u8 = 2;

/// Per-rule state written by the data plane (the `FLOW_STATE` map value).
/// Userspace creates it zeroed with the rule and resets it when the rule's
/// source policy or peer changes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// GCRA theoretical arrival time, ns.
    pub tat_ns: u64,
    /// Learned source address (valid when `locked`).
    pub src_addr: Addr,
    /// Learned source port, network order.
    pub src_port: [u8; 2],
    /// 1 once the source is learned and locked.
    pub locked: u8,
    pub _pad: u8,
    /// Locked SSRC (`Latch` policy).
    pub ssrc: u32,
    /// RTP reception quality ([`quality`]). Kept here, next to the source
    /// lock, because its arithmetic is sequential (each packet's figures
    /// depend on the previous packet of the flow), which a per-CPU map would
    /// split into per-CPU subsequences, and because the program already has
    /// this entry in hand: no extra map lookup per packet.
    pub quality: quality::RtpQuality,
}

impl FlowState {
    /// The state of a new rule: nothing learned, nothing measured.
    pub const ZERO: FlowState = FlowState {
        tat_ns: 0,
        src_addr: [0; 16],
        src_port: [0; 2],
        locked: 0,
        _pad: 0,
        ssrc: 0,
        quality: quality::RtpQuality::ZERO,
    };
}

/// Why a packet aimed at the relay was dropped (or would have been).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// No rule for the relay endpoint: unsolicited.
    NoFlow = 0,
    /// Source not allowed by the rule's policy, or SSRC changed after latching.
    BadSource = 1,
    /// Shorter than an RTP header or not RTP version 2.
    NotRtp = 2,
    /// Over the rule's packet rate.
    RateLimited = 3,
    /// The rule blocks its media.
    Blocked = 4,
    /// Broken headers (IHL, lengths) on packets to a relay address.
    Malformed = 5,
    /// SRTP/SRTCP that failed authentication or could not be processed
    /// (wrong key, tampered, truncated, malformed). Userspace only.
    SrtpAuth = 6,
    /// SRTP/SRTCP replayed or older than the replay window. Userspace only.
    SrtpReplay = 7,
}

pub const DROP_REASONS: usize = 8;

impl DropReason {
    pub const ALL: [DropReason; DROP_REASONS] = [
        Self::NoFlow,
        Self::BadSource,
        Self::NotRtp,
        Self::RateLimited,
        Self::Blocked,
        Self::Malformed,
        Self::SrtpAuth,
        Self::SrtpReplay,
    ];
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoFlow => "no_flow",
            Self::BadSource => "bad_source",
            Self::NotRtp => "not_rtp",
            Self::RateLimited => "rate_limited",
            Self::Blocked => "blocked",
            Self::Malformed => "malformed",
            Self::SrtpAuth => "srtp_auth",
            Self::SrtpReplay => "srtp_replay",
        }
    }
}

/// Per-rule counters, per CPU in the kernel (the `FLOW_STATS` map value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Packets forwarded (or handed to userspace by a `Userspace` rule).
    pub packets: u64,
    pub bytes: u64,
    /// CLOCK_MONOTONIC ns of the last accepted packet.
    pub last_seen_ns: u64,
    /// Accepted packets the kernel could not forward and passed up
    /// (neighbour unresolved, no route, VLAN, address family change).
    pub passed_up: u64,
    /// Drops by [`DropReason`] index.
    pub drops: [u64; DROP_REASONS],
}

impl FlowStats {
    /// Adds another CPU's (or path's) counters; last-seen is the latest.
    pub fn merge(&mut self, other: &FlowStats) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.passed_up += other.passed_up;
        if other.last_seen_ns > self.last_seen_ns {
            self.last_seen_ns = other.last_seen_ns;
        }
        let mut i = 0;
        while i < DROP_REASONS {
            self.drops[i] += other.drops[i];
            i += 1;
        }
    }
}

/// Global counters (the `COUNTERS` per-CPU array, indexed by this enum).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    DropNoFlow = 0,
    DropBadSource = 1,
    DropNotRtp = 2,
    DropRateLimited = 3,
    DropBlocked = 4,
    DropMalformed = 5,
    /// Forwarded with XDP_TX (egress = ingress interface).
    Tx = 6,
    /// Forwarded with a devmap redirect.
    Redirect = 7,
    /// Handed to userspace because the rule says so.
    ToUserspace = 8,
    /// Passed up: neighbour not resolved or no route (FIB lookup failed).
    FibPass = 9,
    /// Passed up: VLAN-tagged, family change, or egress not in the devmap.
    OtherPass = 10,
    /// SRTP drops happen in userspace; the slots exist so that every drop
    /// reason has a global counter (appended, so the others keep their index).
    DropSrtpAuth = 11,
    DropSrtpReplay = 12,
}

pub const COUNTERS: usize = 13;

impl Counter {
    pub const ALL: [Counter; COUNTERS] = [
        Self::DropNoFlow,
        Self::DropBadSource,
        Self::DropNotRtp,
        Self::DropRateLimited,
        Self::DropBlocked,
        Self::DropMalformed,
        Self::Tx,
        Self::Redirect,
        Self::ToUserspace,
        Self::FibPass,
        Self::OtherPass,
        Self::DropSrtpAuth,
        Self::DropSrtpReplay,
    ];
    pub const fn for_drop(reason: DropReason) -> Self {
        match reason {
            DropReason::NoFlow => Self::DropNoFlow,
            DropReason::BadSource => Self::DropBadSource,
            DropReason::NotRtp => Self::DropNotRtp,
            DropReason::RateLimited => Self::DropRateLimited,
            DropReason::Blocked => Self::DropBlocked,
            DropReason::Malformed => Self::DropMalformed,
            DropReason::SrtpAuth => Self::DropSrtpAuth,
            DropReason::SrtpReplay => Self::DropSrtpReplay,
        }
    }
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::DropNoFlow => "drop_no_flow",
            Self::DropBadSource => "drop_bad_source",
            Self::DropNotRtp => "drop_not_rtp",
            Self::DropRateLimited => "drop_rate_limited",
            Self::DropBlocked => "drop_blocked",
            Self::DropMalformed => "drop_malformed",
            Self::Tx => "xdp_tx",
            Self::Redirect => "xdp_redirect",
            Self::ToUserspace => "to_userspace",
            Self::FibPass => "pass_fib",
            Self::OtherPass => "pass_other",
            Self::DropSrtpAuth => "drop_srtp_auth",
            Self::DropSrtpReplay => "drop_srtp_replay",
        }
    }
}

/// A relay address and the media port range on it (the `RELAY_ADDRS` map value;
/// the key is the [`Addr`] wrapped in [`AddrKey`]). Ports are host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

/// Map key wrapper for a bare address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub addr: Addr,
}

/// Sent through the `EVENTS` ring buffer when a rule learns and locks a source.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatchEvent {
    pub rule_id: u64,
    pub time_ns: u64,
    pub key: FlowKey,
    pub src_addr: Addr,
    pub src_port: [u8; 2],
    /// [`SourcePolicy`] that latched.
    pub policy: u8,
    pub _pad: u8,
    pub ssrc: u32,
    pub _reserved: [u8; 4],
}

/// Names of the pinned maps, shared by the loader and `relayctl`.
pub mod maps {
    pub const FLOWS: &str = "FLOWS";
    pub const FLOW_STATE: &str = "FLOW_STATE";
    pub const FLOW_STATS: &str = "FLOW_STATS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const RELAY_ADDRS: &str = "RELAY_ADDRS";
    pub const EGRESS: &str = "EGRESS";
    pub const EVENTS: &str = "EVENTS";
    pub const USER_PORTS: &str = "USER_PORTS";
    /// 64-bit words of the USER_PORTS bitmap: one bit per UDP port.
    pub const USER_PORT_WORDS: u32 = 65536 / 64;
    /// Compile-time maximum of the flow maps; userspace may lower it.
    pub const MAX_FLOWS: u32 = 1 << 16;
}

// Layout guards: the kernel and userspace must agree on these sizes, and none
// of the types may carry implicit padding.
const _: () = assert!(core::mem::size_of::<FlowKey>() == 20);
const _: () = assert!(core::mem::size_of::<FlowRule>() == 104);
const _: () = assert!(core::mem::size_of::<FlowState>() == 32 + 80);
const _: () = assert!(core::mem::size_of::<FlowStats>() == 32 + 8 * DROP_REASONS);
const _: () = assert!(core::mem::size_of::<LatchEvent>() == 64);
const _: () = assert!(core::mem::size_of::<PortRange>() == 4);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, contain only integers and byte
    // arrays, and have no padding (see the size assertions above).
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowRule {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::PortRange {}
    unsafe impl aya::Pod for super::AddrKey {}
    unsafe impl aya::Pod for super::LatchEvent {}
}
