//! The NG commands over [`Relay`]: one datagram in, one reply out.
//!
//! [`Ng`] holds what the protocol needs beyond the media core: the reply
//! cache, labels and timestamps per call, the last offer of each call (to
//! take a repeated answer, as after a 183 and a 200 with SDP), deletions
//! postponed by `delete-delay`, and counters for `statistics`. No I/O: the
//! server task ([`super::server`]) feeds it datagrams and the time.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tracing::{debug, info, info_span, warn};

use super::{
    bencode::{self, Dict, Value},
    cache::ReplyCache,
    request::{Command, Request, normalize},
};
use crate::{
    config::DataplaneMode,
    dataplane::{RuleView, monotonic_ns},
    media::{
        Answer, MediaError, Offer, SrtpOptions, SrtpPolicy,
        mos::{MosHistory, MosSample},
        ports::PortError,
        srtp as media_srtp,
    },
    relay::{Relay, RelayError},
    rule::{Path, Policy},
    sdp::{self, MediaRewrite, Rewrite},
    srtp::Suite,
};

/// Longest cookie accepted (the modules send `serverid_pid_seq`).
const MAX_COOKIE: usize = 128;
/// Largest reply sent; beyond, the reply is replaced by an error.
const MAX_REPLY: usize = 65_000;
/// Most proxies (client addresses) counted separately in `statistics`.
const MAX_PROXIES: usize = 256;
/// `list` without `limit`.
const DEFAULT_LIST_LIMIT: i64 = 32;
/// Longest `delete-delay` honoured (seconds).
const MAX_DELETE_DELAY_S: i64 = 3600;

/// `error-reason` strings the Kamailio module recognises and answers by
/// trying the next relay of the set (`RTPENGINE_SESS_LIMIT_MSG`,
/// `RTPENGINE_SESS_OUT_OF_PORTS_MSG` in its source).
pub const SESSION_LIMIT_REASON: &str = "Parallel session limit reached";
pub const OUT_OF_PORTS_REASON: &str = "Ran out of ports";

/// What the protocol keeps per call beside the media core's state.
#[derive(Clone, Debug, Default)]
struct CallMeta {
    /// Label per SIP tag (`label` in offer/answer).
    labels: HashMap<String, String>,
    /// The last offer as given to the media core, to replay before a
    /// repeated answer.
    last_offer: Option<LastOffer>,
}

#[derive(Clone, Debug)]
struct LastOffer {
    from_tag: String,
    sdp: String,
}

/// Counters for the `statistics` command.
#[derive(Clone, Debug, Default)]
struct Counters {
    /// Per command name, per proxy, plus errors.
    per_proxy: BTreeMap<IpAddr, BTreeMap<&'static str, u64>>,
    totals: BTreeMap<&'static str, u64>,
    managed_sessions: u64,
    rejected_sessions: u64,
    deleted_sessions: u64,
    duplicates: u64,
    /// RTP/RTCP figures of calls deleted over NG, summed.
    ended: Totals,
}

/// packets, bytes, errors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    pub packets: u64,
    pub bytes: u64,
    pub errors: u64,
}

impl Figures {
    fn add(&mut self, o: Figures) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.errors += o.errors;
    }

    fn to_value(self) -> Value {
        Dict::new()
            .with("packets", Value::int(self.packets))
            .with("bytes", Value::int(self.bytes))
            .with("errors", Value::int(self.errors))
            .into()
    }

    fn of(view: Option<&RuleView>) -> Figures {
        let Some(v) = view else {
            return Figures::default();
        };
        let mut f = Figures::default();
        for s in [&v.xdp, &v.userspace].into_iter().flatten() {
            f.packets += s.packets;
            f.bytes += s.bytes;
            f.errors += s.total_drops();
        }
        f
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub rtp: Figures,
    pub rtcp: Figures,
}

/// A command's failure, as the reply says it.
enum Failure {
    /// `result: error`, `error-reason`.
    Error(String),
    /// `result: load limit` (the client said it supports it).
    LoadLimit(String),
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure::Error(s)
    }
}

impl From<&str> for Failure {
    fn from(s: &str) -> Self {
        Failure::Error(s.to_string())
    }
}

type Outcome = Result<Dict, Failure>;

pub struct Ng {
    started: Instant,
    cache: ReplyCache,
    calls: HashMap<String, CallMeta>,
    /// Calls to delete at the given time (`delete-delay`).
    delayed: HashMap<String, Instant>,
    counters: Counters,
}

impl Default for Ng {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl Ng {
    pub fn new(now: Instant) -> Self {
        Self {
            started: now,
            cache: ReplyCache::default(),
            calls: HashMap::new(),
            delayed: HashMap::new(),
            counters: Counters::default(),
        }
    }

    /// Handles one datagram: `cookie SP dictionary` (bencode, or JSON when
    /// the dictionary starts with `{`). Returns the reply datagram, or None
    /// for input that has no cookie to answer to. Never panics on input.
    pub fn datagram(
        &mut self,
        relay: &Mutex<Relay>,
        from: SocketAddr,
        packet: &[u8],
        now: Instant,
    ) -> Option<Vec<u8>> {
        let Some(space) = packet.iter().position(|&b| b == b' ') else {
            debug!(%from, len = packet.len(), "NG datagram without a cookie: dropped");
            return None;
        };
        let (cookie, body) = (&packet[..space], &packet[space + 1..]);
        if cookie.is_empty() || cookie.len() > MAX_COOKIE {
            debug!(%from, "NG datagram with an empty or oversized cookie: dropped");
            return None;
        }
        if let Some(reply) = self.cache.get(from, cookie) {
            self.counters.duplicates += 1;
            debug!(%from, cookie = %String::from_utf8_lossy(cookie), "NG retransmission answered from the cache");
            return Some(reply.to_vec());
        }
        let json = body.first() == Some(&b'{');
        let decoded = if json {
            serde_json::from_slice::<serde_json::Value>(body)
                .map(|j| Value::from_json(&j))
                .map_err(|e| format!("Failed to decode JSON: {e}"))
        } else {
            bencode::decode(body).map_err(|e| format!("Failed to decode bencode: {e}"))
        };
        let reply = match decoded {
            Ok(value) => {
                let relay = &mut *relay.lock().unwrap_or_else(|p| p.into_inner());
                self.request(relay, from, &value, now)
            }
            Err(reason) => {
                self.count(from.ip(), "errors");
                error_reply(&reason)
            }
        };
        let mut out = cookie.to_vec();
        out.push(b' ');
        let encoded = encode(&reply, json);
        if encoded.len() + out.len() > MAX_REPLY {
            out.extend(encode(&error_reply("reply too large for a datagram"), json));
        } else {
            out.extend(encoded);
        }
        self.cache.insert(from, cookie, out.clone(), now);
        Some(out)
    }

    /// Periodic work: deletions postponed by `delete-delay` that are due,
    /// expired cache entries, state of calls the media core no longer has
    /// (ended by media timeout or over the control socket).
    pub fn tick(&mut self, relay: &Mutex<Relay>, now: Instant) {
        self.cache.expire(now);
        let relay = &mut *relay.lock().unwrap_or_else(|p| p.into_inner());
        let due: Vec<String> = self
            .delayed
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.delayed.remove(&id);
            if relay.media.call(&id).is_some() {
                info!(call = %id, "NG delete-delay over: deleting the call");
                let totals = self.call_stats(relay, &id).map(|(_, t)| t);
                match relay.delete(&id) {
                    Ok(()) => self.count_ended(totals.unwrap_or_default()),
                    Err(e) => warn!(call = %id, error = %e, "NG delayed delete"),
                }
            }
        }
        self.calls.retain(|id, _| relay.media.call(id).is_some());
        self.delayed.retain(|id, _| relay.media.call(id).is_some());
    }

    /// Answers one decoded request.
    pub fn request(
        &mut self,
        relay: &mut Relay,
        from: SocketAddr,
        value: &Value,
        now: Instant,
    ) -> Value {
        let r = Request::from_value(value);
        let _span = r
            .call_id
            .as_deref()
            .map(|id| info_span!("ng", call_id = id).entered());
        let name: &'static str = match &r.command {
            Some(Command::Ping) => "ping",
            Some(Command::Offer) => "offer",
            Some(Command::Answer) => "answer",
            Some(Command::Delete) => "delete",
            Some(Command::Query) => "query",
            Some(Command::List) => "list",
            Some(Command::Statistics) => "statistics",
            Some(Command::BlockMedia) => "block media",
            Some(Command::UnblockMedia) => "unblock media",
            Some(Command::Other(_)) | None => "other",
        };
        self.count(from.ip(), name);
        if !r.ignored.is_empty() {
            debug!(command = name, ignored = ?r.ignored, "NG keys without effect");
        }
        let outcome = if !r.errors.is_empty() {
            Err(Failure::Error(r.errors.join("; ")))
        } else {
            match &r.command {
                None => Err("Could not find key 'command'".into()),
                Some(Command::Ping) => {
                    return Dict::new().with("result", Value::str("pong")).into();
                }
                Some(Command::Offer) => self.offer(relay, &r),
                Some(Command::Answer) => self.answer(relay, &r),
                Some(Command::Delete) => self.delete(relay, &r, now),
                Some(Command::Query) => self.query(relay, &r),
                Some(Command::List) => self.list(relay, &r),
                Some(Command::Statistics) => Ok(self.statistics(relay, now)),
                Some(Command::BlockMedia) => self.block(relay, &r, true),
                Some(Command::UnblockMedia) => self.block(relay, &r, false),
                Some(Command::Other(c)) => Err(format!("Unrecognized command {c:?}").into()),
            }
        };
        match outcome {
            Ok(mut dict) => {
                dict.set("result", Value::str("ok"));
                dict.into()
            }
            Err(Failure::LoadLimit(message)) => {
                self.count(from.ip(), "errors");
                Dict::new()
                    .with("result", Value::str("load limit"))
                    .with("message", Value::str(message))
                    .into()
            }
            Err(Failure::Error(reason)) => {
                self.count(from.ip(), "errors");
                debug!(command = name, call = ?r.call_id, %reason, "NG request refused");
                error_reply(&reason)
            }
        }
    }

    /// Requests by command name plus "errors" (refused requests), and
    /// "duplicates" (retransmissions answered from the cache): the metrics.
    pub fn request_totals(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<_> = self.counters.totals.iter().map(|(k, v)| (*k, *v)).collect();
        out.push(("duplicates", self.counters.duplicates));
        out
    }

    /// A call deleted over NG, with its last figures.
    fn count_ended(&mut self, totals: Totals) {
        self.counters.deleted_sessions += 1;
        self.counters.ended.rtp.add(totals.rtp);
        self.counters.ended.rtcp.add(totals.rtcp);
    }

    fn count(&mut self, proxy: IpAddr, what: &'static str) {
        *self.counters.totals.entry(what).or_default() += 1;
        if self.counters.per_proxy.len() < MAX_PROXIES
            || self.counters.per_proxy.contains_key(&proxy)
        {
            *self
                .counters
                .per_proxy
                .entry(proxy)
                .or_default()
                .entry(what)
                .or_default() += 1;
        }
    }

    fn offer(&mut self, relay: &mut Relay, r: &Request) -> Outcome {
        let call_id = required(&r.call_id, "call-id")?;
        let from_tag = required(&r.from_tag, "from-tag")?;
        let sdp_in = required(&r.sdp, "sdp")?;
        let mut warnings = Vec::new();
        let prepared = prepare_sdp(r, sdp_in, &mut warnings)?;
        let (to_srtp, srtp) = srtp_options(r)?;
        let mut from_iface = r.from_interface.as_deref();
        let mut to_iface = r.to_interface.as_deref();
        for iface in [&mut from_iface, &mut to_iface] {
            if let Some(name) = *iface
                && matches!(name, "internal" | "external")
                && !relay.dp.interfaces().iter().any(|i| i.name == name)
            {
                warnings.push(format!(
                    "direction {name:?} is not a configured interface: ignored"
                ));
                *iface = None;
            }
        }
        let new_call = relay.media.call(call_id).is_none();
        let result = relay.offer(&Offer {
            call_id,
            from_tag,
            sdp: &prepared.sdp,
            from_iface,
            to_iface,
            from_policy: prepared.policy,
            from_srtp: None,
            to_srtp,
            srtp,
            now_ns: monotonic_ns(),
        });
        let sdp_out = match result {
            Ok(s) => s,
            Err(e) => {
                if e.is_load_limit() {
                    self.counters.rejected_sessions += 1;
                    warn!(call = %call_id, error = %e, "NG offer refused: load limit");
                }
                return Err(media_failure(&e, r.supports_load_limit));
            }
        };
        if new_call {
            self.counters.managed_sessions += 1;
        }
        self.delayed.remove(call_id);
        let meta = self.calls.entry(call_id.to_string()).or_default();
        if let Some(label) = &r.label {
            meta.labels.insert(from_tag.to_string(), label.clone());
        }
        meta.last_offer = Some(LastOffer {
            from_tag: from_tag.to_string(),
            sdp: prepared.sdp,
        });
        Ok(with_warnings(
            Dict::new().with("sdp", Value::str(sdp_out)),
            warnings,
        ))
    }

    fn answer(&mut self, relay: &mut Relay, r: &Request) -> Outcome {
        let call_id = required(&r.call_id, "call-id")?;
        let from_tag = required(&r.from_tag, "from-tag")?;
        let to_tag = required(&r.to_tag, "to-tag")?;
        let sdp_in = required(&r.sdp, "sdp")?;
        let mut warnings = Vec::new();
        let prepared = prepare_sdp(r, sdp_in, &mut warnings)?;
        let answer = Answer {
            call_id,
            from_tag,
            to_tag,
            sdp: &prepared.sdp,
            to_policy: prepared.policy,
            now_ns: monotonic_ns(),
        };
        let result = match relay.answer(&answer) {
            // A second answer to the same offer (18x with SDP, then 200 OK):
            // the media core has closed the offer, so give it the offer again
            // (same SDP, so no rule changes) and then this answer.
            Err(RelayError::Media(MediaError::NoPendingOffer(_))) => {
                match self
                    .calls
                    .get(call_id)
                    .and_then(|m| m.last_offer.clone())
                    .filter(|o| o.from_tag == from_tag)
                {
                    Some(last) => {
                        debug!(call = %call_id, "NG repeated answer: replaying the offer");
                        relay
                            .offer(&Offer {
                                call_id,
                                from_tag,
                                sdp: &last.sdp,
                                now_ns: monotonic_ns(),
                                ..Default::default()
                            })
                            .and_then(|_| relay.answer(&answer))
                    }
                    None => relay.answer(&answer),
                }
            }
            other => other,
        };
        let sdp_out = result.map_err(|e| media_failure(&e, r.supports_load_limit))?;
        self.delayed.remove(call_id);
        if let Some(label) = &r.label {
            self.calls
                .entry(call_id.to_string())
                .or_default()
                .labels
                .insert(to_tag.to_string(), label.clone());
        }
        Ok(with_warnings(
            Dict::new().with("sdp", Value::str(sdp_out)),
            warnings,
        ))
    }

    fn delete(&mut self, relay: &mut Relay, r: &Request, now: Instant) -> Outcome {
        let call_id = required(&r.call_id, "call-id")?;
        let found = relay.media.call(call_id).is_some_and(|call| {
            r.from_tag
                .as_deref()
                .is_none_or(|t| call.legs.iter().any(|l| l.tag.as_deref() == Some(t)))
        });
        if !found {
            let reason = "Call-ID not found or tags didn't match";
            if r.has("fatal") {
                return Err(reason.into());
            }
            return Ok(Dict::new().with("warning", Value::str(reason)));
        }
        let (mut reply, totals) = if r.has("fast") {
            (Dict::new(), None)
        } else {
            let (d, t) = self.call_stats(relay, call_id).unwrap_or_default();
            (d, Some(t))
        };
        let delay = r.delete_delay.unwrap_or(0);
        if delay > 0 {
            let delay = delay.min(MAX_DELETE_DELAY_S) as u64;
            self.delayed
                .insert(call_id.to_string(), now + Duration::from_secs(delay));
            debug!(call = %call_id, delay, "NG delete postponed");
            return Ok(reply);
        }
        let totals = match totals {
            Some(t) => t,
            None => self.call_stats(relay, call_id).unwrap_or_default().1,
        };
        relay
            .delete(call_id)
            .map_err(|e| Failure::Error(e.to_string()))?;
        self.count_ended(totals);
        self.calls.remove(call_id);
        self.delayed.remove(call_id);
        reply.set("deleted", Value::int(1));
        Ok(reply)
    }

    fn query(&mut self, relay: &mut Relay, r: &Request) -> Outcome {
        let call_id = required(&r.call_id, "call-id")?;
        self.call_stats(relay, call_id)
            .map(|(d, _)| d)
            .ok_or_else(|| "Unknown call-id".into())
    }

    fn list(&mut self, relay: &mut Relay, r: &Request) -> Outcome {
        let limit = r.limit.unwrap_or(DEFAULT_LIST_LIMIT);
        if limit <= 0 {
            return Err("limit must be at least 1".into());
        }
        let calls = relay.media.list();
        Ok(Dict::new().with(
            "calls",
            Value::list_of_str(calls.iter().take(limit as usize)),
        ))
    }

    fn block(&mut self, relay: &mut Relay, r: &Request, blocked: bool) -> Outcome {
        let call_id = required(&r.call_id, "call-id")?;
        if r.from_tag.is_some() || r.label.is_some() || r.to_tag.is_some() {
            return Err(
                "directional media blocking (from-tag, to-tag or label) is not supported: \
                 send call-id alone to block the whole call"
                    .into(),
            );
        }
        if relay.media.call(call_id).is_none() {
            return Err("Unknown call-id".into());
        }
        relay
            .block(call_id, blocked)
            .map_err(|e| Failure::Error(e.to_string()))?;
        Ok(Dict::new())
    }

    fn statistics(&mut self, relay: &Relay, now: Instant) -> Dict {
        let mut live = Totals::default();
        for id in relay.media.list() {
            if let Some((_, t)) = self.call_stats(relay, &id) {
                live.rtp.add(t.rtp);
                live.rtcp.add(t.rtcp);
            }
        }
        let c = &self.counters;
        let mut relayed = c.ended.rtp;
        relayed.add(c.ended.rtcp);
        relayed.add(live.rtp);
        relayed.add(live.rtcp);
        let current = Dict::new()
            .with("sessionsown", Value::int(relay.media.len()))
            .with("sessionsforeign", Value::int(0))
            .with("sessionstotal", Value::int(relay.media.len()))
            .with("transcodedmedia", Value::int(0));
        let total = Dict::new()
            .with(
                "uptime",
                Value::str(
                    now.saturating_duration_since(self.started)
                        .as_secs()
                        .to_string(),
                ),
            )
            .with("managedsessions", Value::int(c.managed_sessions))
            .with("rejectedsessions", Value::int(c.rejected_sessions))
            .with("regularterminatedsessions", Value::int(c.deleted_sessions))
            .with("relayedpackets", Value::int(relayed.packets))
            .with("relayedbytes", Value::int(relayed.bytes))
            .with("relayedpacketerrors", Value::int(relayed.errors))
            .with("duplicaterequests", Value::int(c.duplicates));
        const NAMES: [(&str, &str); 10] = [
            ("ping", "pingcount"),
            ("offer", "offercount"),
            ("answer", "answercount"),
            ("delete", "deletecount"),
            ("query", "querycount"),
            ("list", "listcount"),
            ("block media", "blkmedia"),
            ("unblock media", "unblkmedia"),
            ("statistics", "statistics"),
            ("errors", "errorcount"),
        ];
        let proxies = c
            .per_proxy
            .iter()
            .map(|(ip, counts)| {
                let mut d = Dict::new().with("proxy", Value::str(ip.to_string()));
                for (name, key) in NAMES {
                    d.set(key, Value::int(counts.get(name).copied().unwrap_or(0)));
                }
                d.into_value()
            })
            .collect();
        let mut control = Dict::new().with("proxies", Value::List(proxies));
        for (name, key) in NAMES {
            control.set(
                &format!("total{key}"),
                Value::int(c.totals.get(name).copied().unwrap_or(0)),
            );
        }
        Dict::new().with(
            "statistics",
            Dict::new()
                .with("currentstatistics", current.into())
                .with("totalstatistics", total.into())
                .with("controlstatistics", control.into())
                .into(),
        )
    }

    /// The `query` reply of a call (also added to `delete` replies): per tag
    /// and stream the relay endpoint, the peer, and the figures of the rule
    /// that receives from that peer; `totals` sums RTP and RTCP over all.
    fn call_stats(&self, relay: &Relay, call_id: &str) -> Option<(Dict, Totals)> {
        let call = relay.media.call(call_id)?;
        let clock = Clock::now();
        let meta = self.calls.get(call_id);
        let kernel = relay.dp.mode() == DataplaneMode::Xdp;
        let mut totals = Totals::default();
        let mut tags = Vec::new();
        let mut ssrcs = Vec::new();
        for (i, leg) in call.legs.iter().enumerate() {
            let tag = leg.tag.clone().unwrap_or_default();
            let other = call.legs[1 - i].tag.clone().unwrap_or_default();
            let mut medias = Vec::new();
            for (index, stream) in call.streams.iter().enumerate() {
                let side = &stream.sides[i];
                let mut streams = Vec::new();
                for (rtcp, port, peer) in [
                    (false, side.relay_port, side.peer_rtp),
                    (true, side.relay_port.wrapping_add(1), side.peer_rtcp),
                ] {
                    let local = SocketAddr::new(leg.address, port);
                    let view = relay.dp.view(local);
                    let figures = Figures::of(view.as_ref());
                    if rtcp {
                        totals.rtcp.add(figures);
                    } else {
                        totals.rtp.add(figures);
                        let quality = view.as_ref().and_then(|v| v.quality.as_ref());
                        let never_sampled = MosHistory::default();
                        let mos = relay.mos.get(&local).unwrap_or(&never_sampled);
                        if let (Some(q), Some(h)) = (quality, mos.report(quality, clock.unix_s)) {
                            ssrcs.push((q.ssrc.to_string().into_bytes(), ssrc_value(q, &h)));
                        }
                    }
                    streams.push(stream_value(
                        rtcp,
                        local,
                        peer,
                        view.as_ref(),
                        figures,
                        kernel,
                        &clock,
                    ));
                }
                let mut flags = vec!["initialized"];
                if side.rtcp_mux {
                    flags.push("rtcp-mux");
                }
                medias.push(
                    Dict::new()
                        .with("index", Value::int(index + 1))
                        .with("type", Value::str(&stream.kind))
                        .with("flags", Value::list_of_str(flags))
                        .with("streams", Value::List(streams))
                        .into_value(),
                );
            }
            let mut d = Dict::new()
                .with("tag", Value::str(&tag))
                .with("created", Value::int(clock.unix_of(call.created_ns)))
                .with("in dialogue with", Value::str(&other))
                .with("medias", Value::List(medias));
            if let Some(label) = meta.and_then(|m| m.labels.get(&tag)) {
                d.set("label", Value::str(label));
            }
            tags.push((tag.into_bytes(), d.into_value()));
        }
        let dict = Dict::new()
            .with("created", Value::int(clock.unix_of(call.created_ns)))
            .with("last signal", Value::int(clock.unix_of(call.touched_ns)))
            .with("SSRC", Value::Dict(ssrcs))
            .with("tags", Value::Dict(tags))
            .with(
                "totals",
                Dict::new()
                    .with("RTP", totals.rtp.to_value())
                    .with("RTCP", totals.rtcp.to_value())
                    .into(),
            );
        Some((dict, totals))
    }

    /// Calls with protocol state (tests, leak checks).
    pub fn tracked_calls(&self) -> usize {
        self.calls.len()
    }
}

fn stream_value(
    rtcp: bool,
    local: SocketAddr,
    peer: Option<SocketAddr>,
    view: Option<&RuleView>,
    figures: Figures,
    kernel: bool,
    clock: &Clock,
) -> Value {
    let mut flags = vec![if rtcp { "RTCP" } else { "RTP" }];
    let mut d = Dict::new().with("local port", Value::int(local.port()));
    if let Some(peer) = peer {
        flags.push("filled");
        d.set("advertised endpoint", endpoint(peer));
    }
    let learned = view.and_then(|v| v.latched_source);
    if let Some(ep) = learned.or(peer) {
        d.set("endpoint", endpoint(ep));
    }
    if figures.packets > 0 {
        flags.push("confirmed");
    }
    if let Some(v) = view {
        if kernel && v.rule.path == Path::Forward {
            flags.push("kernelized");
        }
        let idle_ms = [&v.xdp, &v.userspace]
            .into_iter()
            .flatten()
            .filter_map(|s| s.idle_ms)
            .min();
        if let Some(ms) = idle_ms {
            d.set(
                "last packet",
                Value::int(clock.unix_s.saturating_sub(ms / 1000)),
            );
        }
        // The SSRC this stream receives: Kamailio matches it against the
        // top-level "SSRC" figures to report MOS per label.
        if let Some(ssrc) = v.latched_ssrc.or(v.quality.as_ref().map(|q| q.ssrc)) {
            d.set("SSRC", Value::int(ssrc));
        }
    }
    d.set("flags", Value::list_of_str(flags));
    d.set("stats", figures.to_value());
    d.into()
}

/// One entry of the reply's "SSRC" dictionary, in rtpengine's shape (which
/// Kamailio's rtpengine module parses into its `mos_*_pv` variables):
/// cumulative loss and the average, lowest and highest MOS sample. No
/// "round-trip time": the relay does not measure it (see media::mos).
fn ssrc_value(q: &crate::dataplane::QualityView, h: &MosHistory) -> Value {
    let sample = |s: &MosSample| {
        Dict::new()
            .with("MOS", Value::int(s.mos_x10))
            .with("packet loss", Value::int(s.loss_pct))
            .with("jitter", Value::int(s.jitter_ms))
            .with("reported at", Value::int(s.at_unix))
            .into_value()
    };
    let mut d = Dict::new().with("cumulative loss", Value::int(q.lost.max(0)));
    if let Some(a) = h.average() {
        d.set(
            "average MOS",
            Dict::new()
                .with("MOS", Value::int(a.mos_x10))
                .with("packet loss", Value::int(a.loss_pct))
                .with("jitter", Value::int(a.jitter_ms))
                .with("samples", Value::int(a.samples))
                .into_value(),
        );
    }
    if let Some(s) = &h.lowest {
        d.set("lowest MOS", sample(s));
    }
    if let Some(s) = &h.highest {
        d.set("highest MOS", sample(s));
    }
    d.into_value()
}

fn endpoint(a: SocketAddr) -> Value {
    Dict::new()
        .with(
            "family",
            Value::str(if a.is_ipv4() { "IPv4" } else { "IPv6" }),
        )
        .with("address", Value::str(a.ip().to_string()))
        .with("port", Value::int(a.port()))
        .into()
}

/// Wall clock and monotonic clock read together, to turn the media core's
/// CLOCK_MONOTONIC times into UNIX times.
struct Clock {
    unix_s: u64,
    mono_ns: u64,
}

impl Clock {
    fn now() -> Self {
        Self {
            unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            mono_ns: monotonic_ns(),
        }
    }

    fn unix_of(&self, mono_ns: u64) -> u64 {
        self.unix_s
            .saturating_sub(self.mono_ns.saturating_sub(mono_ns) / 1_000_000_000)
    }
}

fn required<'a>(v: &'a Option<String>, key: &str) -> Result<&'a str, Failure> {
    match v.as_deref() {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Failure::Error(format!("No {key} in message"))),
    }
}

fn error_reply(reason: &str) -> Value {
    Dict::new()
        .with("result", Value::str("error"))
        .with("error-reason", Value::str(reason))
        .into()
}

fn with_warnings(mut d: Dict, warnings: Vec<String>) -> Dict {
    if !warnings.is_empty() {
        d.set("warning", Value::str(warnings.join("; ")));
    }
    d
}

fn encode(v: &Value, json: bool) -> Vec<u8> {
    if json {
        serde_json::to_vec(&v.to_json()).unwrap_or_default()
    } else {
        bencode::encode(v)
    }
}

/// A media-core refusal as the proxy modules understand it: limits become
/// `load limit` (when the client supports it) or the error reasons the
/// Kamailio module fails over on.
fn media_failure(e: &RelayError, supports_load_limit: bool) -> Failure {
    if e.is_load_limit() {
        if supports_load_limit {
            return Failure::LoadLimit(e.to_string());
        }
        return Failure::Error(
            match e {
                RelayError::Media(MediaError::Ports(PortError::Exhausted { .. })) => {
                    OUT_OF_PORTS_REASON
                }
                _ => SESSION_LIMIT_REASON,
            }
            .to_string(),
        );
    }
    Failure::Error(e.to_string())
}

/// SRTP for the answerer's leg and the call from `transport-protocol`,
/// `SDES` and the `SRTP-passthrough` flag: RTP/SAVP(F) makes the leg
/// SRTP-only, RTP/AVP(F) or `SDES-off` plain; `SDES-no-SUITE` and
/// `SDES-only-SUITE` restrict the suites the relay offers and accepts.
fn srtp_options(r: &Request) -> Result<(Option<SrtpPolicy>, Option<SrtpOptions>), Failure> {
    let mut to = match r.transport_protocol.as_deref() {
        None | Some("accept") => None,
        Some(tp) if media_srtp::is_srtp_profile(tp) => Some(SrtpPolicy::Required),
        Some(tp) if media_srtp::is_rtp_profile(tp) => Some(SrtpPolicy::Off),
        // Checked against the SDP in prepare_sdp.
        Some(_) => None,
    };
    if r.sdes.contains("off") {
        if to == Some(SrtpPolicy::Required) {
            return Err(Failure::Error(
                "SDES-off with an SRTP transport-protocol: no keying left (DTLS-SRTP is not supported)"
                    .into(),
            ));
        }
        to = Some(SrtpPolicy::Off);
    }
    let name = |s: &Suite| normalize(s.sdes_name());
    let mut suites: Vec<Suite> = Suite::ALL.to_vec();
    let only: Vec<Suite> = Suite::ALL
        .into_iter()
        .filter(|s| r.sdes.contains(&format!("only-{}", name(s))))
        .collect();
    if !only.is_empty() {
        suites = only;
    }
    suites.retain(|s| !r.sdes.contains(&format!("no-{}", name(s))));
    if suites.is_empty() {
        return Err(Failure::Error("SDES: every crypto suite excluded".into()));
    }
    let passthrough = r.has("srtp-passthrough");
    let opts = (passthrough || suites.len() != Suite::ALL.len()).then_some(SrtpOptions {
        passthrough,
        suites,
    });
    Ok((to, opts))
}

/// The SDP as the media core gets it, and the source policy for its sender.
struct Prepared {
    sdp: String,
    policy: Option<Policy>,
}

/// Applies the options that change what the media core sees: the address
/// the sender really has (`media-address`, `SIP-source-address`, or a
/// private SDP address behind NAT with `received-from`), `rtcp-mux`
/// `reject`/`demux` (the `a=rtcp-mux` lines go), and refuses what the relay
/// cannot do (`transport-protocol` translation). Adds warnings for options
/// that are accepted but have no effect. The SDP is parsed here only when an
/// option needs it (the media core parses it anyway).
fn prepare_sdp(r: &Request, text: &str, warnings: &mut Vec<String>) -> Result<Prepared, Failure> {
    for ice in &r.ice {
        if ice != "remove" && ice != "reject" {
            warnings.push(format!(
                "ICE={ice} is not supported: ICE attributes are removed"
            ));
        }
    }
    let strip_mux = r.rtcp_mux.contains("reject") || r.rtcp_mux.contains("demux");
    for mux in &r.rtcp_mux {
        if matches!(mux.as_str(), "offer" | "require") {
            warnings.push(format!("rtcp-mux={mux} is not supported: ignored"));
        }
    }
    let trust = r.has("trust-address");
    let sip_source = r.has("sip-source-address") && !trust;
    let transport = r.transport_protocol.as_deref().filter(|tp| *tp != "accept");
    let nat_check = !trust && r.received_from.is_some_and(|rf| !is_private(rf));
    let needs_parse = transport.is_some() || r.media_address.is_some() || sip_source || nat_check;

    let mut substitute = None;
    let mut out = None;
    if needs_parse {
        let parsed = sdp::parse(text).map_err(|e| Failure::Error(format!("bad SDP: {e}")))?;
        let media = parsed.media();
        // RTP/AVP(F) <-> RTP/SAVP(F) is the media core's SRTP (see
        // `srtp_options`); other profiles (DTLS-SRTP, UDP/TLS) are not
        // translated.
        if let Some(tp) = transport
            && let Some(m) = media.iter().find(|m| {
                m.port != 0
                    && m.proto != tp
                    && !(media_srtp::is_rtp_profile(&m.proto) && media_srtp::is_rtp_profile(tp))
            })
        {
            return Err(Failure::Error(format!(
                "transport-protocol {tp}: translating from {} is not supported",
                m.proto
            )));
        }
        // Where the sender really is.
        let private_sdp = |rf: IpAddr| {
            media
                .iter()
                .filter_map(|m| m.connection)
                .any(|a| !a.is_unspecified() && is_private(a) && a.is_ipv4() == rf.is_ipv4())
        };
        substitute = match (r.media_address, r.received_from) {
            (Some(a), _) => Some((a, false)),
            (None, Some(rf)) if sip_source => Some((rf, true)),
            (None, Some(rf)) if nat_check && private_sdp(rf) => Some((rf, true)),
            _ => None,
        };
        if let Some((addr, _)) = substitute {
            let rw = Rewrite {
                addr,
                media: media
                    .iter()
                    .map(|m| MediaRewrite {
                        port: None,
                        rtcp_port: m.rtcp.map(|(p, _)| p),
                        ..MediaRewrite::default()
                    })
                    .collect(),
                strip_ice: false,
            };
            out = Some(
                parsed
                    .rewrite(&rw)
                    .map_err(|e| Failure::Error(format!("bad SDP: {e}")))?,
            );
        }
    }
    let mut out = out.unwrap_or_else(|| text.to_string());
    if strip_mux {
        out = out
            .split_inclusive('\n')
            .filter(|l| l.trim_end() != "a=rtcp-mux")
            .collect();
    }
    let untrusted = substitute.is_some_and(|(_, untrusted)| untrusted);
    let policy = if untrusted {
        // The SDP port may be a NAT's mapping away from the real source:
        // learn the source from the first packet and lock it.
        Some(Policy::Latch)
    } else if r.has("asymmetric") {
        // The peer sends from another port than it receives on.
        Some(Policy::Restricted)
    } else if trust || r.media_address.is_some() {
        Some(Policy::Strict)
    } else if r.has("strict-source") || r.has("symmetric") || r.has("port-latching") {
        Some(Policy::Latch)
    } else {
        None
    };
    Ok(Prepared { sdp: out, policy })
}

/// Addresses that cannot be reached from outside the sender's network:
/// RFC 1918, shared address space (RFC 6598), link-local, unique local.
pub fn is_private(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private() || v4.is_link_local() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments()[0];
            (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80
        }
    }
}
