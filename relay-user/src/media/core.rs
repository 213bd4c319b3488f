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
};
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
}

impl MediaError {
    /// True for refusals a front door should turn into 503 / NG `load limit`.
    pub fn is_load_limit(&self) -> bool {
        matches!(
            self,
            MediaError::LimitReached(_) | MediaError::Ports(PortError::Exhausted { .. })
        )
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
        for m in media {
            update_side(
                &mut call.streams[m.index].sides[from],
                m,
                parsed.format_clock_rates(m),
            );
        }
        call.pending_offer = Some(from);
        call.last_offerer = from;
        call.touched_ns = o.now_ns;
        let rewrite = Rewrite {
            addr: call.legs[to].address,
            media: media
                .iter()
                .map(|m| side_rewrite(m, &call.streams[m.index].sides[to]))
                .collect(),
            strip_ice: true,
        };
        let sdp = parsed.rewrite(&rewrite)?;
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
        for m in &media {
            update_side(
                &mut call.streams[m.index].sides[answerer],
                m,
                parsed.format_clock_rates(m),
            );
        }
        call.pending_offer = None;
        call.answered = true;
        call.touched_ns = a.now_ns;
        let rewrite = Rewrite {
            addr: call.legs[offerer].address,
            media: media
                .iter()
                .map(|m| side_rewrite(m, &call.streams[m.index].sides[offerer]))
                .collect(),
            strip_ice: true,
        };
        let sdp = parsed.rewrite(&rewrite)?;
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

/// How one m-line is rewritten toward a leg: that leg's relay ports.
fn side_rewrite(m: &sdp::Media, toward: &Side) -> MediaRewrite {
    if m.port == 0 {
        return MediaRewrite {
            port: None,
            rtcp_port: None,
            direction: None,
        };
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
        direction: None,
    }
}
