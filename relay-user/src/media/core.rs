//! The media core's verbs (`offer`, `answer`, `delete`, `query`, `list`) as
//! deterministic logic: SDP and the time in, rewritten SDP and rule changes
//! out. Nothing here touches a socket or a map; [`super::Media`] applies
//! the changes to the data plane.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use super::{
    call::{Call, CallView, Leg, RuleContext, Side, Stream},
    ports::{PortAllocator, PortError},
    srtp::{self, SideSrtp, SrtpError, SrtpOptions, SrtpPolicy},
};
use crate::srtp::sdes::CryptoAttribute;
use crate::{
    config::{Interface, MediaConfig},
    rule::{Policy, Rule},
    sdp::{self, MediaRewrite, Rewrite, SdpError},
};

/// A change the data plane must make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleChange {
    /// Install or replace the rule on `rule.local`.
    Install(Rule),
    /// Remove the rule on this relay endpoint.
    Remove(SocketAddr),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MediaError {
    #[error("bad SDP: {0}")]
    Sdp(#[from] SdpError),
    #[error("no interface named {0:?}")]
    UnknownInterface(String),
    #[error("no call {0:?}")]
    UnknownCall(String),
    #[error("call {call}: tag {tag:?} is not a leg of this call")]
    UnknownTag { call: String, tag: String },
    #[error("call {0:?}: answer without an offer")]
    NoPendingOffer(String),
    #[error("call {call:?}: the answer has {got} m-lines, the offer had {want}")]
    StreamCount {
        call: String,
        got: usize,
        want: usize,
    },
    #[error("load limit: {0}")]
    LimitReached(String),
    #[error("media ports: {0}")]
    Ports(#[from] PortError),
    #[error("SRTP: {0}")]
    Srtp(#[from] SrtpError),
}

impl MediaError {
    /// True for refusals a front door should turn into 503 / NG `load limit`.
    pub fn is_load_limit(&self) -> bool {
        matches!(
            self,
            MediaError::LimitReached(_) | MediaError::Ports(PortError::Exhausted { .. })
        )
    }

    /// True for SDP the relay cannot accept under the legs' SRTP policies
    /// (SIP 488 Not Acceptable Here).
    pub fn is_not_acceptable(&self) -> bool {
        matches!(self, MediaError::Srtp(e) if *e != SrtpError::Random)
    }
}

/// An offer: SDP from the leg with `from_tag`, to be sent to the other leg.
#[derive(Clone, Debug, Default)]
pub struct Offer<'a> {
    pub call_id: &'a str,
    pub from_tag: &'a str,
    pub sdp: &'a str,
    /// Interfaces facing the offerer and the answerer (initial offer only;
    /// None: the first and the last configured interface).
    pub from_iface: Option<&'a str>,
    pub to_iface: Option<&'a str>,
    /// Source policy for the offerer's side (None: the interface's).
    pub from_policy: Option<Policy>,
    /// SRTP policies of the offerer's and the answerer's legs (None: the
    /// interface's on the initial offer, then what the leg had).
    pub from_srtp: Option<SrtpPolicy>,
    pub to_srtp: Option<SrtpPolicy>,
    /// SRTP choices for the call (None: the configured defaults on the
    /// initial offer, then unchanged).
    pub srtp: Option<SrtpOptions>,
    pub now_ns: u64,
}

/// An answer: SDP from the leg with `to_tag`, to be sent back to the offerer.
#[derive(Clone, Debug, Default)]
pub struct Answer<'a> {
    pub call_id: &'a str,
    pub from_tag: &'a str,
    pub to_tag: &'a str,
    pub sdp: &'a str,
    pub to_policy: Option<Policy>,
    pub now_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub sdp: String,
    pub changes: Vec<RuleChange>,
}

struct IfaceState {
    iface: Interface,
    ports: PortAllocator,
}

pub struct MediaCore {
    ifaces: Vec<IfaceState>,
    calls: HashMap<String, Call>,
    /// Rules installed per call, as last handed out.
    installed: HashMap<String, BTreeMap<SocketAddr, Rule>>,
    limits: MediaConfig,
    streams: usize,
}

impl MediaCore {
    pub fn new(interfaces: &[Interface], limits: MediaConfig) -> Result<Self, MediaError> {
        let ifaces = interfaces
            .iter()
            .map(|i| {
                Ok(IfaceState {
                    iface: i.clone(),
                    ports: PortAllocator::new(i.port_min, i.port_max)?,
                })
            })
            .collect::<Result<_, MediaError>>()?;
        Ok(Self {
            ifaces,
            calls: HashMap::new(),
            installed: HashMap::new(),
            limits,
            streams: 0,
        })
    }

    pub fn offer(&mut self, o: &Offer) -> Result<Outcome, MediaError> {
        let parsed = sdp::parse(o.sdp)?;
        let media = parsed.media();
        let new_call = !self.calls.contains_key(o.call_id);
        if new_call {
            if self.calls.len() >= self.limits.max_calls {
                return Err(MediaError::LimitReached(format!(
                    "{} calls (media.max_calls)",
                    self.limits.max_calls
                )));
            }
            let from = self.iface_index(o.from_iface, 0)?;
            let to = self.iface_index(o.to_iface, self.ifaces.len() - 1)?;
            let leg = |i: usize, tag: Option<String>, policy: Option<Policy>| Leg {
                tag,
                iface: i,
                address: self.ifaces[i].iface.address,
                policy: policy.unwrap_or(self.ifaces[i].iface.source_policy),
                srtp: self.ifaces[i].iface.srtp,
            };
            let call = Call {
                id: o.call_id.to_string(),
                legs: [
                    leg(from, Some(o.from_tag.to_string()), o.from_policy),
                    leg(to, None, None),
                ],
                streams: Vec::new(),
                pending_offer: None,
                last_offerer: 0,
                answered: false,
                created_ns: o.now_ns,
                touched_ns: o.now_ns,
                blocked: false,
                srtp: SrtpOptions {
                    passthrough: self.limits.srtp_passthrough,
                    ..SrtpOptions::default()
                },
            };
            self.calls.insert(o.call_id.to_string(), call);
        }
        let result = self.apply_offer(o, &parsed, &media);
        if result.is_err() && new_call {
            // Nothing of a refused first offer stays behind.
            let _ = self.delete(o.call_id);
        }
        result
    }

    fn apply_offer(
        &mut self,
        o: &Offer,
        parsed: &sdp::Sdp,
        media: &[sdp::Media],
    ) -> Result<Outcome, MediaError> {
        let call = self
            .calls
            .get(o.call_id)
            .ok_or_else(|| MediaError::UnknownCall(o.call_id.into()))?;
        let from = leg_of(call, o.from_tag).ok_or_else(|| MediaError::UnknownTag {
            call: o.call_id.into(),
            tag: o.from_tag.into(),
        })?;
        let to = 1 - from;
        let have = call.streams.len();
        if media.len() > have {
            let extra = media.len() - have;
            if self.streams + extra > self.limits.max_streams {
                return Err(MediaError::LimitReached(format!(
                    "{} streams (media.max_streams)",
                    self.limits.max_streams
                )));
            }
            let ifs = [call.legs[0].iface, call.legs[1].iface];
            for m in &media[have..] {
                let p0 = self.ifaces[ifs[0]].ports.allocate()?;
                let p1 = match self.ifaces[ifs[1]].ports.allocate() {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = self.ifaces[ifs[0]].ports.release(p0);
                        return Err(e.into());
                    }
                };
                self.streams += 1;
                let call = self.calls.get_mut(o.call_id).expect("checked above");
                call.streams.push(Stream {
                    kind: m.kind.clone(),
                    sides: [Side::new(p0), Side::new(p1)],
                });
            }
        }
        let call = self.calls.get_mut(o.call_id).expect("checked above");
        if let Some(p) = o.from_srtp {
            call.legs[from].srtp = p;
        }
        if let Some(p) = o.to_srtp {
            call.legs[to].srtp = p;
        }
        if let Some(opts) = &o.srtp {
            call.srtp = opts.clone();
        }
        // SRTP is negotiated for every m-line before anything changes, so a
        // refused offer leaves a running call as it was.
        let negotiated = media
            .iter()
            .map(|m| {
                let sides = &call.streams[m.index].sides;
                srtp_offer(
                    m,
                    [call.legs[from].srtp, call.legs[to].srtp],
                    &call.srtp,
                    [sides[from].srtp.as_ref(), sides[to].srtp.as_ref()],
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        call.pending_offer = Some(from);
        call.last_offerer = from;
        call.touched_ns = o.now_ns;
        let sdp = record_and_rewrite(call, parsed, media, negotiated, from, from)?;
        let changes = self.sync_rules(o.call_id);
        Ok(Outcome { sdp, changes })
    }

    pub fn answer(&mut self, a: &Answer) -> Result<Outcome, MediaError> {
        let parsed = sdp::parse(a.sdp)?;
        let media = parsed.media();
        let call = self
            .calls
            .get_mut(a.call_id)
            .ok_or_else(|| MediaError::UnknownCall(a.call_id.into()))?;
        let offerer = call
            .pending_offer
            .or(call.answered.then_some(call.last_offerer))
            .ok_or_else(|| MediaError::NoPendingOffer(a.call_id.into()))?;
        let answerer = 1 - offerer;
        if media.len() != call.streams.len() {
            return Err(MediaError::StreamCount {
                call: a.call_id.into(),
                got: media.len(),
                want: call.streams.len(),
            });
        }
        // from-tag names the offerer, to-tag the answerer (learned now for a
        // new call's second leg), as in the SIP dialog of the offer.
        if call.legs[offerer].tag.as_deref() != Some(a.from_tag) {
            return Err(MediaError::UnknownTag {
                call: a.call_id.into(),
                tag: a.from_tag.into(),
            });
        }
        match &call.legs[answerer].tag {
            None => call.legs[answerer].tag = Some(a.to_tag.to_string()),
            Some(t) if t == a.to_tag => {}
            Some(_) => {
                return Err(MediaError::UnknownTag {
                    call: a.call_id.into(),
                    tag: a.to_tag.into(),
                });
            }
        }
        if let Some(p) = a.to_policy {
            call.legs[answerer].policy = p;
        }
        let negotiated = media
            .iter()
            .map(|m| {
                let sides = &call.streams[m.index].sides;
                srtp_answer(
                    m,
                    sides[answerer].srtp.as_ref(),
                    sides[offerer].srtp.as_ref(),
                    &sides[offerer].proto,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        call.pending_offer = None;
        call.answered = true;
        call.touched_ns = a.now_ns;
        let sdp = record_and_rewrite(call, &parsed, &media, negotiated, offerer, answerer)?;
        let changes = self.sync_rules(a.call_id);
        Ok(Outcome { sdp, changes })
    }

    /// Ends a call: every rule goes, every port pair is released.
    pub fn delete(&mut self, call_id: &str) -> Result<Vec<RuleChange>, MediaError> {
        let call = self
            .calls
            .remove(call_id)
            .ok_or_else(|| MediaError::UnknownCall(call_id.into()))?;
        for stream in &call.streams {
            for (leg, side) in call.legs.iter().zip(&stream.sides) {
                // Ports come from this allocator, so release cannot fail; if
                // it ever did, losing a pair is better than failing a delete.
                let _ = self.ifaces[leg.iface].ports.release(side.relay_port);
            }
        }
        self.streams -= call.streams.len();
        let installed = self.installed.remove(call_id).unwrap_or_default();
        Ok(installed.into_keys().map(RuleChange::Remove).collect())
    }

    /// Blocks or unblocks every rule of a call (NG `block media`).
    pub fn set_blocked(
        &mut self,
        call_id: &str,
        blocked: bool,
    ) -> Result<Vec<RuleChange>, MediaError> {
        let call = self
            .calls
            .get_mut(call_id)
            .ok_or_else(|| MediaError::UnknownCall(call_id.into()))?;
        call.blocked = blocked;
        Ok(self.sync_rules(call_id))
    }

    pub fn query(&self, call_id: &str) -> Option<CallView> {
        self.calls.get(call_id).map(Call::view)
    }

    pub fn call(&self, call_id: &str) -> Option<&Call> {
        self.calls.get(call_id)
    }

    pub fn list(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.calls.keys().cloned().collect();
        ids.sort();
        ids
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Relay endpoints with rules of `call_id` (for media timeouts and stats).
    pub fn endpoints(&self, call_id: &str) -> Vec<SocketAddr> {
        self.installed
            .get(call_id)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The call context of every rule a call owns, by receiving endpoint
    /// (rules absent here are static).
    pub fn rule_contexts(&self) -> HashMap<SocketAddr, RuleContext> {
        let name = |i: usize| {
            self.ifaces
                .get(i)
                .map_or_else(String::new, |s| s.iface.name.clone())
        };
        let mut out = HashMap::new();
        for (id, rules) in &self.installed {
            let Some(call) = self.calls.get(id) else {
                continue;
            };
            for local in rules.keys() {
                if let Some(ctx) = call.rule_context(*local, name) {
                    out.insert(*local, ctx);
                }
            }
        }
        out
    }

    /// Port pairs in use over all interfaces (leak checks).
    pub fn ports_in_use(&self) -> usize {
        self.ifaces.iter().map(|i| i.ports.in_use()).sum()
    }

    /// Calls whose media has been silent for the media timeout: `last_seen`
    /// gives the latest packet time (ns) of a relay endpoint, if any.
    pub fn expired(
        &self,
        now_ns: u64,
        last_seen: impl Fn(SocketAddr) -> Option<u64>,
    ) -> Vec<String> {
        let timeout = self.limits.media_timeout_s.saturating_mul(1_000_000_000);
        let mut out: Vec<String> = self
            .calls
            .values()
            .filter(|call| {
                let latest = self
                    .endpoints(&call.id)
                    .into_iter()
                    .filter_map(&last_seen)
                    .max()
                    .unwrap_or(0)
                    .max(call.touched_ns);
                now_ns.saturating_sub(latest) > timeout
            })
            .map(|c| c.id.clone())
            .collect();
        out.sort();
        out
    }

    /// Reserves a statically configured rule's port pair so calls never get it.
    pub fn reserve_static(&mut self, local: SocketAddr) -> Result<(), MediaError> {
        if let Some(i) = self
            .ifaces
            .iter_mut()
            .find(|i| i.iface.address == local.ip())
        {
            i.ports.reserve(local.port() & !1)?;
        }
        Ok(())
    }

    /// Releases a static rule's reservation.
    pub fn release_static(&mut self, local: SocketAddr) {
        if let Some(i) = self
            .ifaces
            .iter_mut()
            .find(|i| i.iface.address == local.ip())
        {
            let _ = i.ports.release(local.port() & !1);
        }
    }

    /// Diffs the call's desired rules against what was handed out.
    fn sync_rules(&mut self, call_id: &str) -> Vec<RuleChange> {
        let Some(call) = self.calls.get(call_id) else {
            return Vec::new();
        };
        let desired = call.desired_rules();
        let installed = self.installed.entry(call_id.to_string()).or_default();
        let mut changes: Vec<RuleChange> = installed
            .keys()
            .filter(|k| !desired.contains_key(k))
            .map(|k| RuleChange::Remove(*k))
            .collect();
        for (local, rule) in &desired {
            if installed.get(local) != Some(rule) {
                changes.push(RuleChange::Install(rule.clone()));
            }
        }
        *installed = desired;
        changes
    }

    fn iface_index(&self, name: Option<&str>, default: usize) -> Result<usize, MediaError> {
        match name {
            None => Ok(default),
            Some(n) => self
                .ifaces
                .iter()
                .position(|i| i.iface.name == n)
                .ok_or_else(|| MediaError::UnknownInterface(n.into())),
        }
    }
}

fn leg_of(call: &Call, tag: &str) -> Option<usize> {
    call.legs.iter().position(|l| l.tag.as_deref() == Some(tag))
}

/// Records what a leg's SDP says about one stream.
fn update_side(side: &mut Side, m: &sdp::Media, formats: Vec<(String, u32)>) {
    side.rejected = m.port == 0;
    side.formats = formats;
    side.direction = m.direction;
    side.rtcp_mux = m.rtcp_mux;
    side.proto = m.proto.clone();
    let Some(addr) = m.connection else {
        return;
    };
    side.hold_addr = addr.is_unspecified();
    if side.hold_addr || side.rejected {
        // Keep the last real address: the source check still needs it.
        return;
    }
    side.peer_rtp = Some(SocketAddr::new(addr, m.port));
    side.peer_rtcp = Some(match m.rtcp {
        Some((port, Some(a))) => SocketAddr::new(a, port),
        Some((port, None)) => SocketAddr::new(addr, port),
        None => SocketAddr::new(addr, m.port.wrapping_add(1)),
    });
}

/// What an offer and an answer end with alike: the SDP `sender` sent is
/// recorded on its side of every stream, the negotiated SRTP on both sides
/// ([`SrtpStep::from`] is always the offerer's, `to` the answerer's), and
/// the SDP is rewritten for the other leg, toward that leg's relay ports.
fn record_and_rewrite(
    call: &mut Call,
    parsed: &sdp::Sdp,
    media: &[sdp::Media],
    negotiated: Vec<SrtpStep>,
    offerer: usize,
    sender: usize,
) -> Result<String, SdpError> {
    let answerer = 1 - offerer;
    let receiver = 1 - sender;
    for (m, neg) in media.iter().zip(&negotiated) {
        let sides = &mut call.streams[m.index].sides;
        update_side(&mut sides[sender], m, parsed.format_clock_rates(m));
        sides[offerer].srtp = neg.from.clone();
        sides[answerer].srtp = neg.to.clone();
    }
    let rewrite = Rewrite {
        addr: call.legs[receiver].address,
        media: media
            .iter()
            .zip(negotiated)
            .map(|(m, neg)| MediaRewrite {
                proto: neg.proto,
                crypto: neg.crypto,
                ..side_rewrite(m, &call.streams[m.index].sides[receiver])
            })
            .collect(),
        strip_ice: true,
    };
    parsed.rewrite(&rewrite)
}

/// How one m-line is rewritten toward a leg: that leg's relay ports.
fn side_rewrite(m: &sdp::Media, toward: &Side) -> MediaRewrite {
    if m.port == 0 {
        return MediaRewrite::default();
    }
    MediaRewrite {
        port: Some(toward.relay_port),
        // a=rtcp only where the peer wrote one; otherwise RTP + 1 is implied.
        rtcp_port: m.rtcp.map(|_| {
            if m.rtcp_mux {
                toward.relay_port
            } else {
                toward.relay_port + 1
            }
        }),
        ..MediaRewrite::default()
    }
}

/// SRTP of one m-line after an offer or answer: the new state of the
/// offerer's side (`from`) and the answerer's (`to`), and what the SDP sent
/// on gets as profile and a=crypto lines.
struct SrtpStep {
    from: Option<SideSrtp>,
    to: Option<SideSrtp>,
    proto: Option<String>,
    crypto: Option<Vec<String>>,
}

/// An offer's m-line from the leg with policy `pol[0]` toward the leg with
/// `pol[1]`; `prev` is what the two sides had (re-offers keep agreed keys,
/// so a re-INVITE for hold does not restart the crypto).
fn srtp_offer(
    m: &sdp::Media,
    pol: [SrtpPolicy; 2],
    opts: &SrtpOptions,
    prev: [Option<&SideSrtp>; 2],
) -> Result<SrtpStep, SrtpError> {
    if m.port == 0 || !srtp::is_rtp_profile(&m.proto) {
        return Ok(SrtpStep {
            from: None,
            to: None,
            proto: None,
            crypto: None,
        });
    }
    let index = m.index;
    let (lines, why) = srtp::usable_lines(&m.crypto, &opts.suites);
    let secure = srtp::is_srtp_profile(&m.proto);
    let from_srtp = match pol[0] {
        // An a=crypto on RTP/AVP is best effort: a plain leg ignores it.
        SrtpPolicy::Off if secure => return Err(SrtpError::Forbidden { index }),
        SrtpPolicy::Off => false,
        SrtpPolicy::Required if lines.is_empty() => {
            return Err(SrtpError::Required { index, why });
        }
        SrtpPolicy::Optional if secure && lines.is_empty() => {
            return Err(SrtpError::NoUsableCrypto { index, why });
        }
        SrtpPolicy::Required | SrtpPolicy::Optional => !lines.is_empty(),
    };
    let to_srtp = match pol[1] {
        SrtpPolicy::Required => true,
        SrtpPolicy::Off => false,
        SrtpPolicy::Optional => from_srtp,
    };
    if !to_srtp {
        // The offerer's own keys never reach a plain leg.
        return Ok(SrtpStep {
            from: from_srtp
                .then(|| offerer_side(&lines, prev[0]))
                .transpose()?,
            to: None,
            proto: Some(srtp::plain_profile(&m.proto)),
            crypto: Some(Vec::new()),
        });
    }
    // The answerer side keeps its agreed key until it answers this offer.
    let keep = |p: Option<&SideSrtp>| SideSrtp {
        peer_key: p.and_then(|p| p.peer_key.clone()),
        relay_line: p.and_then(|p| p.relay_line.clone()),
        ..SideSrtp::default()
    };
    if from_srtp && opts.passthrough {
        // Pass-through: the offerer's lines go on unchanged; the keys are
        // paired when the answer says which line was taken.
        return Ok(SrtpStep {
            from: Some(SideSrtp {
                passthrough: true,
                ..keep(prev[0])
            }),
            to: Some(SideSrtp {
                offered: lines,
                passthrough: true,
                ..keep(prev[1])
            }),
            proto: Some(srtp::srtp_profile(&m.proto)),
            crypto: None,
        });
    }
    let offered = match prev[1].and_then(|p| p.relay_line.as_ref()) {
        // Agreed before and still allowed: offer the same key again.
        Some(line)
            if !prev[1].is_some_and(|p| p.passthrough) && opts.suites.contains(&line.suite()) =>
        {
            vec![line.clone()]
        }
        _ => srtp::fresh_offer(&opts.suites)?,
    };
    Ok(SrtpStep {
        from: from_srtp
            .then(|| offerer_side(&lines, prev[0]))
            .transpose()?,
        to: Some(SideSrtp {
            offered: offered.clone(),
            ..keep(prev[1])
        }),
        proto: Some(srtp::srtp_profile(&m.proto)),
        crypto: Some(srtp::sdp_values(&offered)),
    })
}

/// The offerer's side when the relay terminates its SRTP: its first usable
/// line gives the key it sends with; the relay answers that line with its
/// own key (the same one again if the line is the one agreed before).
fn offerer_side(lines: &[CryptoAttribute], prev: Option<&SideSrtp>) -> Result<SideSrtp, SrtpError> {
    let chosen = lines.first().ok_or(SrtpError::Random)?;
    let relay_line = match prev.and_then(|p| p.relay_line.as_ref()) {
        Some(l)
            if !prev.is_some_and(|p| p.passthrough)
                && l.tag == chosen.tag
                && l.suite() == chosen.suite() =>
        {
            l.clone()
        }
        _ => chosen.answer().map_err(|_| SrtpError::Random)?,
    };
    Ok(SideSrtp {
        peer_key: Some(chosen.key.clone()),
        relay_line: Some(relay_line),
        offered: Vec::new(),
        passthrough: false,
    })
}

/// An answer's m-line from the answerer (`to`, with what the relay offered
/// it) back to the offerer (`from`, whose m-line had profile `from_proto`).
fn srtp_answer(
    m: &sdp::Media,
    to: Option<&SideSrtp>,
    from: Option<&SideSrtp>,
    from_proto: &str,
) -> Result<SrtpStep, SrtpError> {
    let index = m.index;
    // The answer goes back in the offerer's own profile.
    let proto = srtp::is_rtp_profile(from_proto).then(|| from_proto.to_string());
    if m.port == 0 {
        return Ok(SrtpStep {
            from: from.cloned(),
            to: to.cloned(),
            proto,
            crypto: Some(Vec::new()),
        });
    }
    let Some(to) = to else {
        // A plain answerer: whatever a=crypto it wrote is ignored.
        return Ok(SrtpStep {
            from: from.cloned(),
            to: None,
            proto,
            crypto: Some(
                from.and_then(|f| f.relay_line.as_ref())
                    .map_or_else(Vec::new, |l| srtp::sdp_values(std::slice::from_ref(l))),
            ),
        });
    };
    // The answer's line must carry the tag and suite of a line we offered.
    let accepted = m.crypto.iter().find_map(|v| {
        let line = CryptoAttribute::parse(v).ok()?;
        let ours = to
            .offered
            .iter()
            .find(|o| o.tag == line.tag && o.suite() == line.suite())?;
        Some((line, ours.clone()))
    });
    let Some((theirs, ours)) = accepted else {
        return Err(SrtpError::AnswerWithoutCrypto { index });
    };
    let new_to = SideSrtp {
        peer_key: Some(theirs.key.clone()),
        relay_line: Some(ours.clone()),
        offered: to.offered.clone(),
        passthrough: to.passthrough,
    };
    if to.passthrough {
        // Each side gets the other's key unchanged: the answer's lines go
        // back as they are.
        return Ok(SrtpStep {
            from: Some(SideSrtp {
                peer_key: Some(ours.key.clone()),
                relay_line: Some(theirs),
                offered: Vec::new(),
                passthrough: true,
            }),
            to: Some(new_to),
            proto,
            crypto: None,
        });
    }
    Ok(SrtpStep {
        from: from.cloned(),
        to: Some(new_to),
        proto,
        crypto: Some(
            from.and_then(|f| f.relay_line.as_ref())
                .map_or_else(Vec::new, |l| srtp::sdp_values(std::slice::from_ref(l))),
        ),
    })
}
