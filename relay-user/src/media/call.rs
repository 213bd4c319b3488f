//! The call model: a call has two legs, each facing one relay interface; a
//! leg has one side per stream (m-line). Rules are derived from it, never
//! stored in it.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;

use super::srtp::{self, SideSrtp, SrtpOptions, SrtpPolicy};
use crate::{
    rule::{Path, Policy, Rule},
    sdp::Direction,
};

/// One leg's view of one stream: where the relay listens for it on the leg's
/// interface, and what the leg's SDP said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    /// Relay RTP port on the leg's interface (RTCP is this + 1).
    pub relay_port: u16,
    /// The peer's RTP address from its SDP (None until that SDP arrives).
    pub peer_rtp: Option<SocketAddr>,
    /// The peer's RTCP address (a=rtcp, else RTP port + 1).
    pub peer_rtcp: Option<SocketAddr>,
    pub direction: Direction,
    /// c=0.0.0.0 (or ::): the peer wants nothing sent to it.
    pub hold_addr: bool,
    pub rtcp_mux: bool,
    /// Port 0 in the peer's SDP.
    pub rejected: bool,
    /// The formats of the peer's m= line, in its order of preference, with
    /// their RTP clock rates.
    pub formats: Vec<(String, u32)>,
    /// The transport profile of the peer's m= line ("RTP/AVP", "RTP/SAVP").
    pub proto: String,
    /// SRTP on this side (None: plain RTP).
    pub srtp: Option<SideSrtp>,
}

impl Side {
    pub fn new(relay_port: u16) -> Self {
        Self {
            relay_port,
            peer_rtp: None,
            peer_rtcp: None,
            direction: Direction::SendRecv,
            hold_addr: false,
            rtcp_mux: false,
            rejected: false,
            formats: Vec::new(),
            proto: String::new(),
            srtp: None,
        }
    }

    fn receives(&self) -> bool {
        self.direction.receives() && !self.hold_addr
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stream {
    pub kind: String,
    /// Index 0 faces leg 0 (the first offerer), index 1 leg 1.
    pub sides: [Side; 2],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leg {
    /// SIP tag (from-tag of the first offer for leg 0, to-tag for leg 1).
    pub tag: Option<String>,
    /// Index into the media core's interfaces.
    pub iface: usize,
    pub address: IpAddr,
    /// How this leg's peer may send to the relay.
    pub policy: Policy,
    /// Whether this leg must, may or must not use SRTP.
    pub srtp: SrtpPolicy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub id: String,
    pub legs: [Leg; 2],
    pub streams: Vec<Stream>,
    /// The leg whose offer awaits an answer.
    pub pending_offer: Option<usize>,
    /// The leg that made the last offer: a second answer to it (a 200 after
    /// a 183 with SDP) updates the answering side again.
    pub last_offerer: usize,
    /// An answer has been seen (media may flow).
    pub answered: bool,
    /// CLOCK_MONOTONIC ns of creation and of the last offer/answer.
    pub created_ns: u64,
    pub touched_ns: u64,
    /// Operator/NG `block media`: every rule of the call drops.
    pub blocked: bool,
    /// SRTP choices of this call (pass-through, suites).
    pub srtp: SrtpOptions,
}

impl Call {
    /// The rules this call needs now, keyed by receiving relay endpoint.
    /// A direction gets rules once both of its ends have sent SDP.
    pub fn desired_rules(&self) -> BTreeMap<SocketAddr, Rule> {
        let mut out = BTreeMap::new();
        for stream in &self.streams {
            for from in 0..2 {
                let to = 1 - from;
                if let Some(rules) = self.direction_rules(stream, from, to) {
                    for r in rules {
                        out.insert(r.local, r);
                    }
                }
            }
        }
        out
    }

    fn direction_rules(&self, stream: &Stream, from: usize, to: usize) -> Option<Vec<Rule>> {
        let (src, dst) = (&stream.sides[from], &stream.sides[to]);
        if src.rejected || dst.rejected {
            return None;
        }
        let peer_rtp = src.peer_rtp?;
        let dst_rtp = dst.peer_rtp?;
        let (in_leg, out_leg) = (&self.legs[from], &self.legs[to]);
        let flows = self.blocked || !dst.receives() || !src.direction.sends();
        let mut path = if flows { Path::Block } else { Path::Forward };
        let keys = match srtp::flow_keys(src.srtp.as_ref(), dst.srtp.as_ref()) {
            Ok(keys) => keys,
            // An SRTP side whose key is not agreed yet (re-offer pending):
            // nothing crosses rather than plaintext toward an SRTP leg.
            Err(()) => {
                path = Path::Block;
                None
            }
        };
        // Crypto is done by the userspace forwarder; pass-through and plain
        // flows stay in XDP.
        if path == Path::Forward && keys.as_ref().is_some_and(|k| k.needs_crypto()) {
            path = Path::Userspace;
        }
        // A peer address we cannot check (unspecified) can only be learned.
        let policy = if peer_rtp.ip().is_unspecified() {
            Policy::Latch
        } else {
            in_leg.policy
        };
        let rtp_clock = clock_rate(src, dst);
        let rule =
            |local_port: u16, peer: SocketAddr, out_port: u16, dst: SocketAddr, clock_rate: u32| {
                Rule {
                    id: 0,
                    local: SocketAddr::new(in_leg.address, local_port),
                    policy,
                    peer: (policy != Policy::Latch).then_some(peer),
                    latch_window_ms: 30_000,
                    out_src: SocketAddr::new(out_leg.address, out_port),
                    dst,
                    path,
                    rate_pps: 0,
                    burst: 0,
                    clock_rate,
                    srtp: keys.clone().map(Box::new),
                }
            };
        let mut rules = vec![rule(
            src.relay_port,
            peer_rtp,
            dst.relay_port,
            dst_rtp,
            rtp_clock,
        )];
        let mux = src.rtcp_mux && dst.rtcp_mux;
        if !mux && let (Some(peer_rtcp), Some(dst_rtcp)) = (src.peer_rtcp, dst.peer_rtcp) {
            rules.push(rule(
                src.relay_port + 1,
                peer_rtcp,
                dst.relay_port + 1,
                dst_rtcp,
                // RTCP carries no media: no jitter to measure.
                0,
            ));
        }
        Some(rules)
    }

    /// Which leg, stream and component the rule receiving on `local` serves;
    /// `iface_name` names an interface by index.
    pub fn rule_context(
        &self,
        local: SocketAddr,
        iface_name: impl Fn(usize) -> String,
    ) -> Option<RuleContext> {
        for (index, stream) in self.streams.iter().enumerate() {
            for from in 0..2 {
                let (leg, side) = (&self.legs[from], &stream.sides[from]);
                if leg.address != local.ip() {
                    continue;
                }
                let component = if local.port() == side.relay_port {
                    "rtp"
                } else if local.port() == side.relay_port.wrapping_add(1) {
                    "rtcp"
                } else {
                    continue;
                };
                return Some(RuleContext {
                    call_id: self.id.clone(),
                    leg: if from == 0 { "a" } else { "b" }.into(),
                    tag: leg.tag.clone(),
                    stream: index,
                    media: stream.kind.clone(),
                    component: component.into(),
                    from_iface: iface_name(leg.iface),
                    to_iface: iface_name(self.legs[1 - from].iface),
                });
            }
        }
        None
    }

    pub fn view(&self) -> CallView {
        CallView {
            call_id: self.id.clone(),
            answered: self.answered,
            blocked: self.blocked,
            legs: self
                .legs
                .iter()
                .enumerate()
                .map(|(i, leg)| LegView {
                    tag: leg.tag.clone(),
                    address: leg.address,
                    policy: leg.policy,
                    srtp_policy: leg.srtp,
                    streams: self
                        .streams
                        .iter()
                        .map(|s| {
                            let side = &s.sides[i];
                            StreamView {
                                kind: s.kind.clone(),
                                relay_rtp: SocketAddr::new(leg.address, side.relay_port),
                                peer_rtp: side.peer_rtp,
                                peer_rtcp: side.peer_rtcp,
                                direction: side.direction.as_str().to_string(),
                                hold: side.hold_addr,
                                rtcp_mux: side.rtcp_mux,
                                rejected: side.rejected,
                                srtp: side.srtp.as_ref().map(|s| {
                                    if s.passthrough {
                                        "passthrough".into()
                                    } else {
                                        s.relay_line
                                            .as_ref()
                                            .map_or("pending".into(), |l| l.suite().to_string())
                                    }
                                }),
                            }
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// The RTP clock rate of what `src`'s peer sends to `dst`'s peer. A sender
/// uses formats from the receiver's list (RFC 3264), in practice the first
/// the two lists share, which is the negotiated codec for both directions;
/// failing a common one, the receiver's first, then the sender's first.
fn clock_rate(src: &Side, dst: &Side) -> u32 {
    dst.formats
        .iter()
        .find(|(pt, _)| src.formats.iter().any(|(p, _)| p == pt))
        .or(dst.formats.first())
        .or(src.formats.first())
        .map_or(0, |(_, rate)| *rate)
}

/// The call a rule belongs to, as `relayctl flows` shows it. Packets arrive
/// from leg `leg`'s peer on `from_iface` and leave to the other leg on
/// `to_iface`.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RuleContext {
    pub call_id: String,
    /// "a" (the first offerer's leg) or "b".
    pub leg: String,
    /// The SIP tag of that leg (from-tag of leg a, to-tag of leg b).
    pub tag: Option<String>,
    /// Stream (m-line) index and its media kind.
    pub stream: usize,
    pub media: String,
    /// "rtp" or "rtcp".
    pub component: String,
    pub from_iface: String,
    pub to_iface: String,
}

/// What `query` and the control socket show of a call.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct CallView {
    pub call_id: String,
    pub answered: bool,
    pub blocked: bool,
    pub legs: Vec<LegView>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct LegView {
    pub tag: Option<String>,
    pub address: IpAddr,
    pub policy: Policy,
    #[serde(default)]
    pub srtp_policy: SrtpPolicy,
    pub streams: Vec<StreamView>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StreamView {
    pub kind: String,
    pub relay_rtp: SocketAddr,
    pub peer_rtp: Option<SocketAddr>,
    pub peer_rtcp: Option<SocketAddr>,
    pub direction: String,
    pub hold: bool,
    pub rtcp_mux: bool,
    pub rejected: bool,
    /// SRTP on this side: the suite the relay sends with, "passthrough", or
    /// "pending" (offered, not answered); None = plain RTP. Never a key.
    #[serde(default)]
    pub srtp: Option<String>,
}
