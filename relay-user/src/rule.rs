//! Flow rules as the control plane speaks of them (socket addresses, enums),
//! and their translation to the kernel's byte layout.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use relay_common::{
    Action, Addr, FLAG_AUTH_LATCH, FLAG_SRTP_CRYPTO, FlowKey, FlowRule, SourcePolicy, addr_from_v4,
    addr_is_v4, policy::rate_params,
};
use serde::{Deserialize, Serialize};

use crate::srtp::MasterKey;

/// The SRTP keys of one direction of a flow. Never serialized: rules reach
/// the control socket and `relayctl`, keys must not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSrtp {
    /// The key the sending peer protects with: what arrives is unprotected
    /// (or, when equal to `outbound`, only authenticated before latching).
    pub inbound: Option<MasterKey>,
    /// The key the receiving peer expects: what leaves is protected.
    pub outbound: Option<MasterKey>,
}

impl RuleSrtp {
    /// Both legs use the same key: packets cross unchanged (pass-through).
    pub fn passthrough(&self) -> bool {
        self.inbound.is_some() && self.inbound == self.outbound
    }

    /// Whether the forwarder must touch packets (not pass-through, some key).
    pub fn needs_crypto(&self) -> bool {
        !self.passthrough() && (self.inbound.is_some() || self.outbound.is_some())
    }

    /// The mode as shown to operators (no key material).
    pub fn mode(&self) -> &'static str {
        match (&self.inbound, &self.outbound) {
            _ if self.passthrough() => "passthrough",
            (Some(_), Some(_)) => "rekey",
            (Some(_), None) => "decrypt",
            (None, Some(_)) => "encrypt",
            (None, None) => "plain",
        }
    }
}

/// Source policy as configured (see `relay_common::SourcePolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Strict,
    Restricted,
    Latch,
}

/// What a rule does with accepted packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// In the kernel (XDP), falling back to userspace when XDP cannot.
    Forward,
    /// Always through the userspace forwarder (the crypto path).
    Userspace,
    /// Drop everything.
    Block,
}

/// A flow rule: packets arriving at `local` from the allowed source are sent
/// from `out_src` to `dst`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Userspace id; 0 lets the data plane assign one.
    #[serde(default)]
    pub id: u64,
    /// Relay endpoint that receives the flow.
    pub local: SocketAddr,
    pub policy: Policy,
    /// Declared peer: address and port for `strict`, address for `restricted`
    /// (port ignored), unused for `latch`.
    #[serde(default)]
    pub peer: Option<SocketAddr>,
    /// `latch`: how long after installation the first packet may teach the source.
    #[serde(default = "default_latch_window_ms")]
    pub latch_window_ms: u64,
    /// Relay endpoint the forwarded packets leave from.
    pub out_src: SocketAddr,
    /// Destination of forwarded packets.
    pub dst: SocketAddr,
    pub path: Path,
    /// Packets per second; 0 = unlimited.
    #[serde(default)]
    pub rate_pps: u32,
    /// Packets allowed back to back above the rate.
    #[serde(default)]
    pub burst: u32,
    /// RTP clock rate of the stream in Hz, for the jitter figure (from the
    /// SDP for call rules); 0 = not RTP or unknown: no jitter. Absent in
    /// rules written before it existed, which read as 0.
    #[serde(default)]
    pub clock_rate: u32,
    /// SRTP keys (call rules of SRTP legs only). Serialized as the mode
    /// name alone ("rekey", ...) and never read back, so keys never leave
    /// the process through the control socket or `relayctl`.
    #[serde(
        default,
        skip_deserializing,
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_srtp_mode"
    )]
    /// Boxed: keys are large and most rules have none.
    pub srtp: Option<Box<RuleSrtp>>,
}

fn serialize_srtp_mode<S: serde::Serializer>(
    srtp: &Option<Box<RuleSrtp>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match srtp {
        Some(k) => s.serialize_str(k.mode()),
        None => s.serialize_none(),
    }
}

fn default_latch_window_ms() -> u64 {
    10_000
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("policy {0:?} needs a declared peer")]
    PeerRequired(Policy),
    #[error("local endpoint {0} must have a non-zero port")]
    ZeroPort(SocketAddr),
    #[error("out_src {out_src} and dst {dst} must be the same address family")]
    FamilyMismatch {
        out_src: SocketAddr,
        dst: SocketAddr,
    },
    #[error("peer {peer} and local {local} must be the same address family")]
    PeerFamily { peer: SocketAddr, local: SocketAddr },
}

impl Rule {
    pub fn validate(&self) -> Result<(), RuleError> {
        if self.local.port() == 0 {
            return Err(RuleError::ZeroPort(self.local));
        }
        if self.out_src.is_ipv4() != self.dst.is_ipv4() {
            return Err(RuleError::FamilyMismatch {
                out_src: self.out_src,
                dst: self.dst,
            });
        }
        match (self.policy, self.peer) {
            (Policy::Strict | Policy::Restricted, None) => {
                Err(RuleError::PeerRequired(self.policy))
            }
            (_, Some(peer)) if peer.is_ipv4() != self.local.is_ipv4() => {
                Err(RuleError::PeerFamily {
                    peer,
                    local: self.local,
                })
            }
            _ => Ok(()),
        }
    }

    pub fn key(&self) -> FlowKey {
        key_of(self.local)
    }

    /// The SRTP mode, if the rule has SRTP keys ("passthrough", "rekey",
    /// "decrypt", "encrypt").
    pub fn srtp_mode(&self) -> Option<&'static str> {
        self.srtp.as_deref().map(RuleSrtp::mode)
    }

    /// The key that authenticates arriving packets, if they are SRTP: the
    /// source is learned only from packets that pass it.
    pub fn auth_key(&self) -> Option<&MasterKey> {
        self.srtp.as_ref().and_then(|s| s.inbound.as_ref())
    }

    /// The kernel form; `installed_ns` is CLOCK_MONOTONIC at installation and
    /// starts the latch window; `ingress_ifindex` is the device the rule's
    /// packets must arrive on (0: any).
    pub fn to_kernel(&self, installed_ns: u64, ingress_ifindex: u32) -> FlowRule {
        let (rate_interval_ns, rate_burst_ns) = rate_params(self.rate_pps, self.burst);
        let peer = self
            .peer
            .unwrap_or_else(|| SocketAddr::new(unspecified_like(self.local.ip()), 0));
        FlowRule {
            id: self.id,
            latch_until_ns: installed_ns
                .saturating_add(Duration::from_millis(self.latch_window_ms).as_nanos() as u64),
            rate_interval_ns,
            rate_burst_ns,
            peer_addr: addr_of(peer.ip()),
            out_src_addr: addr_of(self.out_src.ip()),
            dst_addr: addr_of(self.dst.ip()),
            peer_port: peer.port().to_be_bytes(),
            out_src_port: self.out_src.port().to_be_bytes(),
            dst_port: self.dst.port().to_be_bytes(),
            action: match self.path {
                Path::Forward => Action::Forward,
                Path::Userspace => Action::Userspace,
                Path::Block => Action::Block,
            } as u8,
            policy: match self.policy {
                Policy::Strict => SourcePolicy::Strict,
                Policy::Restricted => SourcePolicy::Restricted,
                Policy::Latch => SourcePolicy::Latch,
            } as u8,
            clock_rate: self.clock_rate,
            flags: if self.auth_key().is_some() {
                FLAG_AUTH_LATCH
            } else {
                0
            } | if self.srtp.as_ref().is_some_and(|s| s.needs_crypto()) {
                FLAG_SRTP_CRYPTO
            } else {
                0
            },
            _reserved: [0; 3],
            ingress_ifindex,
            _pad: 0,
        }
    }

    /// Whether a restarted relayd can carry on a rule it finds pinned, whose
    /// state says `locked`: not when the forwarder needs keys for it (they
    /// lived only in the previous process): a transcrypt rule would forward
    /// plain RTP onto the encrypted leg, and an SRTP leg that has not
    /// authenticated its source yet would latch on anybody's packet. A locked
    /// pass-through leg runs in XDP without keys and stays.
    pub fn adoptable(r: &FlowRule, locked: bool) -> Result<(), &'static str> {
        if r.flags & FLAG_SRTP_CRYPTO != 0 {
            Err("its SRTP keys are not kept across a restart")
        } else if r.flags & FLAG_AUTH_LATCH != 0 && !locked {
            Err(
                "its source must be authenticated with SRTP keys that are not kept across a restart",
            )
        } else {
            Ok(())
        }
    }

    /// Back from the kernel form (for `relayctl` reading pinned maps and for a
    /// restarted `relayd` adopting the rules it finds). The latch window is not
    /// recoverable from an absolute deadline and comes back as 0.
    pub fn from_kernel(key: &FlowKey, r: &FlowRule) -> Option<Rule> {
        let policy = match SourcePolicy::from_u8(r.policy)? {
            SourcePolicy::Strict => Policy::Strict,
            SourcePolicy::Restricted => Policy::Restricted,
            SourcePolicy::Latch => Policy::Latch,
        };
        let path = match Action::from_u8(r.action)? {
            Action::Forward => Path::Forward,
            Action::Userspace => Path::Userspace,
            Action::Block => Path::Block,
        };
        let interval = r.rate_interval_ns;
        let rate_pps = 1_000_000_000u64.checked_div(interval).unwrap_or(0) as u32;
        let burst = r
            .rate_burst_ns
            .checked_div(interval)
            .map_or(0, |b| b as u32 + 1);
        Some(Rule {
            id: r.id,
            local: sock_of(&key.addr, key.port),
            policy,
            peer: (policy != Policy::Latch).then(|| sock_of(&r.peer_addr, r.peer_port)),
            latch_window_ms: 0,
            out_src: sock_of(&r.out_src_addr, r.out_src_port),
            dst: sock_of(&r.dst_addr, r.dst_port),
            path,
            rate_pps,
            burst,
            clock_rate: r.clock_rate,
            // Keys live only in the process that negotiated them.
            srtp: None,
        })
    }
}

fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

pub fn key_of(local: SocketAddr) -> FlowKey {
    FlowKey::new(addr_of(local.ip()), local.port())
}

/// The 16-byte form of an address (IPv4-mapped for IPv4).
pub fn addr_of(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => addr_from_v4(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub fn ip_of(addr: &Addr) -> IpAddr {
    if addr_is_v4(addr) {
        IpAddr::V4(Ipv4Addr::new(addr[12], addr[13], addr[14], addr[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*addr))
    }
}

pub fn sock_of(addr: &Addr, port: [u8; 2]) -> SocketAddr {
    SocketAddr::new(ip_of(addr), u16::from_be_bytes(port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> Rule {
        Rule {
            id: 3,
            local: "192.0.2.1:30000".parse().unwrap(),
            policy: Policy::Strict,
            peer: Some("192.0.2.10:4000".parse().unwrap()),
            latch_window_ms: 5_000,
            out_src: "198.51.100.1:30002".parse().unwrap(),
            dst: "198.51.100.10:5000".parse().unwrap(),
            path: Path::Forward,
            rate_pps: 100,
            burst: 10,
            clock_rate: 8000,
            srtp: None,
        }
    }

    #[test]
    fn kernel_round_trip() {
        let r = rule();
        let k = r.to_kernel(1_000, 0);
        assert_eq!(k.latch_until_ns, 1_000 + 5_000_000_000);
        assert_eq!(k.peer_port, 4000u16.to_be_bytes());
        let back = Rule::from_kernel(&r.key(), &k).unwrap();
        assert_eq!(
            back,
            Rule {
                latch_window_ms: 0,
                ..r
            }
        );
    }

    #[test]
    fn json_without_clock_rate_reads_as_unknown() {
        let json = r#"{"local":"192.0.2.1:30000","policy":"strict","peer":"192.0.2.10:4000",
            "out_src":"198.51.100.1:30002","dst":"198.51.100.10:5000","path":"forward"}"#;
        let r: Rule = serde_json::from_str(json).unwrap();
        assert_eq!(r.clock_rate, 0);
        assert_eq!(r.to_kernel(0, 0).clock_rate, 0);
    }

    #[test]
    fn ipv6_round_trip() {
        let mut r = rule();
        r.local = "[2001:db8::1]:30000".parse().unwrap();
        r.peer = Some("[2001:db8::10]:4000".parse().unwrap());
        r.out_src = "[2001:db8:1::1]:30002".parse().unwrap();
        r.dst = "[2001:db8:1::10]:5000".parse().unwrap();
        let k = r.to_kernel(0, 0);
        assert!(!addr_is_v4(&k.dst_addr));
        let back = Rule::from_kernel(&r.key(), &k).unwrap();
        assert_eq!(back.dst, r.dst);
        assert_eq!(back.local, r.local);
    }

    #[test]
    fn srtp_rules_that_need_their_keys_are_not_adopted() {
        let key = || Some(MasterKey::generate(crate::srtp::Suite::AesCm128HmacSha1_80).unwrap());
        let with = |inbound, outbound| {
            let mut r = rule();
            r.srtp = Some(Box::new(RuleSrtp { inbound, outbound }));
            r.to_kernel(0, 0)
        };
        let plain = rule().to_kernel(0, 0);
        assert_eq!(Rule::adoptable(&plain, false), Ok(()));
        // Transcrypt either way and re-key: the keys are the rule.
        for k in [with(None, key()), with(key(), None), with(key(), key())] {
            assert_eq!(k.flags & FLAG_SRTP_CRYPTO, FLAG_SRTP_CRYPTO);
            assert!(Rule::adoptable(&k, true).is_err());
        }
        // Pass-through: fine once its source is locked (XDP needs no key),
        // not while the source still has to authenticate.
        let k1 = key();
        let pass = with(k1.clone(), k1);
        assert_eq!(pass.flags, FLAG_AUTH_LATCH);
        assert_eq!(Rule::adoptable(&pass, true), Ok(()));
        assert!(Rule::adoptable(&pass, false).is_err());
    }

    #[test]
    fn validation() {
        let mut r = rule();
        assert_eq!(r.validate(), Ok(()));
        r.peer = None;
        assert_eq!(r.validate(), Err(RuleError::PeerRequired(Policy::Strict)));
        r.policy = Policy::Latch;
        assert_eq!(r.validate(), Ok(()));
        r.dst = "[2001:db8::1]:5000".parse().unwrap();
        assert!(matches!(
            r.validate(),
            Err(RuleError::FamilyMismatch { .. })
        ));
        let mut r = rule();
        r.local.set_port(0);
        assert!(matches!(r.validate(), Err(RuleError::ZeroPort(_))));
    }
}
