//! The back-to-back user agent: an INVITE from one trunk becomes a new INVITE
//! to the trunk its configuration routes to, with its SDP through the media
//! core. It is the transaction user of [`TransactionLayer`]: messages and the
//! time go in, bytes to send come out ([`Send`]); the server in
//! [`super::server`] does the I/O.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use tracing::{debug, info, info_span, warn};

use super::{
    dialog::{Dialog, OutgoingInvite, copy_allowed},
    message::{Method, SipMessage, TxKey, new_branch, new_call_id, new_tag, response_for},
    transaction::{Action, Dest, Event, TransactionLayer, TransportKind},
    trunk::Trunks,
};
use crate::{
    media::{Answer, Offer},
    relay::{Relay, RelayError},
};

/// Bytes for the transport layer. `key` names the transaction that sent
/// them, so a failed send can be reported back.
#[derive(Clone, Debug)]
pub struct Send {
    pub dest: Dest,
    pub bytes: super::message::Bytes,
    pub key: Option<TxKey>,
}

#[derive(Clone, Debug)]
pub struct B2buaConfig {
    /// An INVITE unanswered this long is cancelled (408 to the caller).
    pub ring_timeout: Duration,
    /// INVITEs per second per source address; 0 = unlimited.
    pub invite_rate: u32,
    pub max_message_size: usize,
}

/// Counters for operators.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SipStats {
    pub calls_started: u64,
    pub calls_answered: u64,
    pub calls_failed: u64,
    pub rate_limited: u64,
    pub unknown_source: u64,
    pub malformed: u64,
    /// Responses we sent, by class (1xx .. 6xx).
    pub responses_sent: [u64; 6],
    /// Time from a caller's INVITE to the call's media rules being installed
    /// (at the callee's 2xx), as a log2 histogram: bucket i counts
    /// [2^i, 2^(i+1)) microseconds.
    pub invite_to_rules_us: [u64; 24],
}

impl SipStats {
    fn record_setup(&mut self, d: Duration) {
        let us = d.as_micros().max(1) as u64;
        let bucket = (63 - us.leading_zeros() as usize).min(23);
        self.invite_to_rules_us[bucket] += 1;
    }

    /// The upper bound (µs) of the bucket holding quantile `q` (0..=1) of the
    /// INVITE-to-rules times, if any call was answered.
    pub fn setup_quantile_us(&self, q: f64) -> Option<u64> {
        let total: u64 = self.invite_to_rules_us.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.invite_to_rules_us.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(1u64 << (i + 1));
            }
        }
        None
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    A,
    B,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallState {
    /// INVITE sent to B, no final response yet.
    Calling,
    Confirmed,
    /// Cancelled or failed: waiting for B's final response to clean up.
    Ending,
}

struct Call {
    media_id: String,
    a: Dialog,
    b: Dialog,
    a_trunk: usize,
    b_trunk: usize,
    /// The caller's INVITE server transaction and the request, until answered.
    a_invite: Option<(TxKey, SipMessage)>,
    b_invite: Option<TxKey>,
    state: CallState,
    ring_deadline: Instant,
    invite_at: Instant,
}

impl Call {
    fn dialog(&mut self, side: Side) -> &mut Dialog {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    /// The media core's tag for a side: the caller's From tag, the callee's To tag.
    fn media_tag(&self, side: Side) -> String {
        match side {
            Side::A => self.a.remote_tag.clone().unwrap_or_default(),
            Side::B => self.b.remote_tag.clone().unwrap_or_default(),
        }
    }

    /// Gives the media core the answer `sdp` to the offer `offerer` made;
    /// returns the SDP to send on to `offerer`.
    fn answer_media(
        &self,
        relay: &mut Relay,
        offerer: Side,
        sdp: &str,
    ) -> Result<String, RelayError> {
        relay.answer(&Answer {
            call_id: &self.media_id,
            from_tag: &self.media_tag(offerer),
            to_tag: &self.media_tag(offerer.other()),
            sdp,
            to_policy: None,
            now_ns: crate::dataplane::monotonic_ns(),
        })
    }

    /// The callee's 1xx or 2xx (`code`, `reason`) to the caller's INVITE
    /// `invite`, in the caller's dialog: our To tag and our Contact.
    fn caller_response(&self, invite: &SipMessage, code: u16, reason: &str) -> SipMessage {
        let mut r = response_for(invite, code, reason, Some(&self.a.local_tag));
        r.add_header("Contact", &self.a.contact());
        r
    }
}

/// A relayed request's bookkeeping, taken out of [`Pending::Relay`].
struct Relayed {
    call: u64,
    from: Side,
    server: TxKey,
    request: SipMessage,
    method: Method,
    cseq: u32,
    has_sdp: bool,
}

enum Pending {
    /// Our INVITE to B.
    Invite(u64),
    /// A request relayed from `from`; `server` is its transaction there.
    Relay {
        call: u64,
        from: Side,
        server: TxKey,
        request: Box<SipMessage>,
        method: Method,
        cseq: u32,
        has_sdp: bool,
    },
    /// BYE or CANCEL we originated: nothing to relay back.
    Ours,
    /// OPTIONS keep-alive to a trunk.
    Ping(usize),
}

struct TrunkState {
    up: bool,
    calls: u32,
    next_ping: Option<Instant>,
    pinging: bool,
}

pub struct B2bua {
    pub tx: TransactionLayer,
    pub trunks: Trunks,
    cfg: B2buaConfig,
    /// Our SIP listening addresses.
    local: Vec<(TransportKind, SocketAddr)>,
    calls: HashMap<u64, Call>,
    /// (Call-ID, our tag) -> call and side.
    dialogs: HashMap<(String, String), (u64, Side)>,
    by_media: HashMap<String, u64>,
    client: HashMap<TxKey, Pending>,
    trunk_state: Vec<TrunkState>,
    rate: HashMap<IpAddr, (Instant, u32)>,
    next_id: u64,
    pub stats: SipStats,
}

impl B2bua {
    pub fn new(
        tx: TransactionLayer,
        trunks: Trunks,
        local: Vec<(TransportKind, SocketAddr)>,
        cfg: B2buaConfig,
        now: Instant,
    ) -> Self {
        let trunk_state = trunks
            .iter()
            .map(|t| TrunkState {
                up: true,
                calls: 0,
                next_ping: t.options_interval.map(|_| now),
                pinging: false,
            })
            .collect();
        Self {
            tx,
            trunks,
            cfg,
            local,
            calls: HashMap::new(),
            dialogs: HashMap::new(),
            by_media: HashMap::new(),
            client: HashMap::new(),
            trunk_state,
            rate: HashMap::new(),
            next_id: 1,
            stats: SipStats::default(),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    /// (trunk name, up, active calls) for each trunk.
    pub fn trunk_status(&self) -> Vec<(String, bool, u32)> {
        self.trunks
            .iter()
            .zip(&self.trunk_state)
            .map(|(t, s)| (t.name.to_string(), s.up, s.calls))
            .collect()
    }

    /// Bytes from the network. Sources that are no trunk's are dropped; a
    /// malformed request gets 400 where a response can be built, other
    /// garbage is dropped.
    pub fn receive(
        &mut self,
        bytes: &[u8],
        from: Dest,
        relay: &mut Relay,
        now: Instant,
    ) -> Vec<Send> {
        if self
            .trunks
            .trunk_for(from.addr.ip(), from.transport)
            .is_none()
        {
            self.stats.unknown_source += 1;
            return Vec::new();
        }
        let (actions, error) = super::transaction::receive_bytes(
            &mut self.tx,
            bytes,
            self.cfg.max_message_size,
            from,
            now,
        );
        if let Some(e) = error {
            self.stats.malformed += 1;
            debug!(from = %from.addr, error = %e, "malformed SIP message");
        }
        self.run(actions, relay, now)
    }

    /// Timers: transactions, ringing calls, keep-alives.
    pub fn poll(&mut self, relay: &mut Relay, now: Instant) -> Vec<Send> {
        let mut out = Vec::new();
        let actions = self.tx.poll(now);
        out.extend(self.run(actions, relay, now));
        let ringing: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| c.state == CallState::Calling && now >= c.ring_deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in ringing {
            info!(call = id, "no answer in time: cancelling");
            out.extend(self.fail_call(id, 408, "Request Timeout", relay, now));
        }
        for i in 0..self.trunk_state.len() {
            let due = self.trunk_state[i].next_ping.is_some_and(|t| now >= t)
                && !self.trunk_state[i].pinging;
            if due {
                out.extend(self.ping(i, now));
            }
        }
        out
    }

    /// When something needs doing next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let calls = self
            .calls
            .values()
            .filter(|c| c.state == CallState::Calling)
            .map(|c| c.ring_deadline);
        let pings = self
            .trunk_state
            .iter()
            .filter(|s| !s.pinging)
            .filter_map(|s| s.next_ping);
        self.tx
            .next_deadline()
            .into_iter()
            .chain(calls)
            .chain(pings)
            .min()
    }

    /// The media core ended a call (media timeout): BYE on both sides.
    pub fn media_ended(&mut self, media_id: &str, relay: &mut Relay, now: Instant) -> Vec<Send> {
        let Some(id) = self.by_media.get(media_id).copied() else {
            return Vec::new();
        };
        info!(call = id, "media timeout: BYE on both sides");
        let mut out = Vec::new();
        for side in [Side::A, Side::B] {
            out.extend(self.send_bye(id, side, now));
        }
        self.end_call(id, relay);
        out
    }

    /// A transport failed to send bytes of transaction `key`.
    pub fn transport_error(&mut self, key: &TxKey, relay: &mut Relay, now: Instant) -> Vec<Send> {
        let actions = self.tx.transport_error(key);
        self.run(actions, relay, now)
    }

    fn run(&mut self, actions: Vec<Action>, relay: &mut Relay, now: Instant) -> Vec<Send> {
        let mut out = Vec::new();
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send { dest, bytes, key } => {
                    count_response(&mut self.stats, &bytes);
                    out.push(Send { dest, bytes, key });
                }
                Action::Deliver(event) => {
                    let more = self.event(event, relay, now);
                    queue.extend(more);
                }
            }
        }
        out
    }

    fn event(&mut self, event: Event, relay: &mut Relay, now: Instant) -> Vec<Action> {
        // Every line logged while handling a message carries the Call-ID it
        // arrived with (the B2BUA's own `call` number links the two legs).
        let call_id = match &event {
            Event::Request { msg, .. } | Event::Response { msg, .. } => msg.call_id(),
            _ => None,
        };
        let _span = call_id.map(|id| info_span!("sip", call_id = id).entered());
        match event {
            Event::Request { key, msg, from } => self.request(key, msg, from, relay, now),
            // We ACK the callee ourselves when its 2xx arrives; the caller's
            // ACK (and ACKs of relayed re-INVITEs) end here.
            Event::Ack { .. } => Vec::new(),
            Event::Response { key, msg } => self.response(key, msg, relay, now),
            Event::Timeout { key } | Event::TransportError { key } => self.timeout(key, relay, now),
            Event::Terminated { key } => {
                self.client.remove(&key);
                Vec::new()
            }
        }
    }

    fn request(
        &mut self,
        key: TxKey,
        msg: SipMessage,
        from: Dest,
        relay: &mut Relay,
        now: Instant,
    ) -> Vec<Action> {
        let method = msg.method().cloned();
        let in_dialog = msg.to_tag().is_some();
        match method {
            Some(Method::INVITE) if !in_dialog => self.new_call(key, msg, from, relay, now),
            Some(Method::CANCEL) => self.cancel(key, msg, relay, now),
            Some(Method::OPTIONS) => self.respond(&key, &msg, 200, "OK", None, now),
            Some(Method::BYE) if in_dialog => self.bye(key, msg, relay, now),
            Some(_) if in_dialog => self.relay_in_dialog(key, msg, relay, now),
            _ => self.respond(&key, &msg, 405, "Method Not Allowed", None, now),
        }
    }

    fn respond(
        &mut self,
        key: &TxKey,
        req: &SipMessage,
        code: u16,
        reason: &str,
        to_tag: Option<&str>,
        now: Instant,
    ) -> Vec<Action> {
        let tag = to_tag.map(str::to_string).unwrap_or_else(new_tag);
        let mut r = response_for(req, code, reason, Some(&tag));
        if code == 405 || (req.method() == Some(&Method::OPTIONS) && code == 200) {
            r.add_header("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO");
        }
        if code == 503 {
            r.add_header("Retry-After", "5");
        }
        self.tx.send_response(key, r, now).unwrap_or_default()
    }

    /// 488 with a Warning (RFC 3261 section 20.43, code 399: miscellaneous)
    /// that says why, e.g. a trunk that requires SRTP and a plain offer.
    fn not_acceptable(
        &mut self,
        key: &TxKey,
        req: &SipMessage,
        e: &RelayError,
        to_tag: &str,
        now: Instant,
    ) -> Vec<Action> {
        let mut r = response_for(req, 488, "Not Acceptable Here", Some(to_tag));
        let text: String = e
            .to_string()
            .chars()
            .map(|c| {
                if c == '"' || c == '\\' || c.is_control() {
                    '\''
                } else {
                    c
                }
            })
            .collect();
        r.add_header("Warning", &format!("399 relay \"{text}\""));
        self.tx.send_response(key, r, now).unwrap_or_default()
    }

    fn no_such_dialog(&mut self, key: &TxKey, msg: &SipMessage, now: Instant) -> Vec<Action> {
        self.respond(key, msg, 481, "Call/Transaction Does Not Exist", None, now)
    }

    /// Our address for Via and Contact toward `peer` over `transport`.
    fn local_for(&self, transport: TransportKind, peer: IpAddr) -> Option<SocketAddr> {
        let mine: Vec<SocketAddr> = self
            .local
            .iter()
            // The listeners whose family can reach the peer, as the
            // transport picks its sockets.
            .filter(|(k, a)| {
                *k == transport && super::transport::fits(*a, SocketAddr::new(peer, 0))
            })
            .map(|(_, a)| *a)
            .collect();
        let needs_route = mine.len() > 1 || mine.iter().any(|a| a.ip().is_unspecified());
        // The one I/O of the B2BUA (a routing lookup, no packet), only
        // when the choice needs it.
        let source = needs_route
            .then(|| super::transport::route_source(peer))
            .flatten();
        choose_local(&mine, source)
    }

    fn rate_ok(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.cfg.invite_rate == 0 {
            return true;
        }
        if self.rate.len() > 100_000 {
            self.rate
                .retain(|_, (t, _)| now.duration_since(*t) < Duration::from_secs(1));
        }
        let entry = self.rate.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(1) {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= self.cfg.invite_rate
    }

    fn new_call(
        &mut self,
        key: TxKey,
        msg: SipMessage,
        from: Dest,
        relay: &mut Relay,
        now: Instant,
    ) -> Vec<Action> {
        self.stats.calls_started += 1;
        if !self.rate_ok(from.addr.ip(), now) {
            self.stats.rate_limited += 1;
            return self.respond(&key, &msg, 503, "Rate Limited", None, now);
        }
        let Some(a_trunk) = self
            .trunks
            .trunk_for(from.addr.ip(), from.transport)
            .and_then(|t| self.trunks.index_of(&t.name))
        else {
            return self.respond(&key, &msg, 403, "Forbidden", None, now);
        };
        let Some(b_trunk) = self.trunks.get(a_trunk).and_then(|t| t.route_to) else {
            return self.respond(&key, &msg, 404, "No Route", None, now);
        };
        let (Some(a_cfg), Some(b_cfg)) = (
            self.trunks.get(a_trunk).cloned(),
            self.trunks.get(b_trunk).cloned(),
        ) else {
            return self.respond(&key, &msg, 500, "Server Internal Error", None, now);
        };
        if !self.trunk_state[b_trunk].up {
            self.stats.calls_failed += 1;
            return self.respond(&key, &msg, 503, "Trunk Down", None, now);
        }
        for (i, t) in [(a_trunk, &a_cfg), (b_trunk, &b_cfg)] {
            if t.max_calls
                .is_some_and(|max| self.trunk_state[i].calls >= max)
            {
                self.stats.calls_failed += 1;
                return self.respond(&key, &msg, 503, "Call Limit", None, now);
            }
        }
        if msg
            .content_type()
            .is_none_or(|t| !t.eq_ignore_ascii_case("application/sdp"))
            || msg.body().is_empty()
        {
            return self.respond(&key, &msg, 488, "Offer Required", None, now);
        }
        let Some(b_dest) = b_cfg.dest() else {
            return self.respond(&key, &msg, 503, "Trunk Unresolved", None, now);
        };
        let b_local = self.local_for(b_cfg.transport, b_dest.addr.ip());
        let a_local = self.local_for(from.transport, from.addr.ip());
        let (Some(b_local), Some(a_local)) = (b_local, a_local) else {
            return self.respond(&key, &msg, 500, "No Listener", None, now);
        };
        let id = self.next_id;
        self.next_id += 1;
        let media_id = format!("sip-{id}");
        let a_tag = new_tag();
        let Some(a) = Dialog::uas(&msg, a_tag.clone(), from, a_local) else {
            return self.respond(&key, &msg, 400, "Bad Request", None, now);
        };
        let sdp = String::from_utf8_lossy(msg.body()).into_owned();
        let offered = relay.offer(&Offer {
            call_id: &media_id,
            from_tag: a.remote_tag.as_deref().unwrap_or(""),
            sdp: &sdp,
            from_iface: Some(&a_cfg.interface),
            to_iface: Some(&b_cfg.interface),
            from_policy: None,
            from_srtp: a_cfg.srtp,
            to_srtp: b_cfg.srtp,
            srtp: None,
            now_ns: crate::dataplane::monotonic_ns(),
        });
        let b_sdp = match offered {
            Ok(s) => s,
            Err(e) => {
                self.stats.calls_failed += 1;
                warn!(error = %e, "offer refused");
                let (code, reason) = refusal(&e);
                if code == 488 {
                    return self.not_acceptable(&key, &msg, &e, &a_tag, now);
                }
                return self.respond(&key, &msg, code, reason, Some(&a_tag), now);
            }
        };
        let target_host = b_cfg
            .tls
            .as_ref()
            .map(|t| t.server_name.to_str().into_owned())
            .unwrap_or_else(|| b_dest.addr.ip().to_string());
        let b_call_id = new_call_id(&b_local.ip().to_string());
        let b_tag = new_tag();
        let branch = new_branch();
        let Some(invite) = (OutgoingInvite {
            incoming: &msg,
            call_id: &b_call_id,
            from_tag: &b_tag,
            branch: &branch,
            dest: b_dest,
            local_addr: b_local,
            target_host: &target_host,
            pass_headers: &b_cfg.pass_headers,
            sdp: Some(&b_sdp),
        })
        .build() else {
            let _ = relay.delete(&media_id);
            return self.respond(&key, &msg, 400, "Bad Request-URI", Some(&a_tag), now);
        };
        let b = Dialog {
            call_id: b_call_id.clone(),
            local_tag: b_tag.clone(),
            remote_tag: None,
            local_uri: super::dialog::strip_tag(invite.from_value().unwrap_or_default()),
            remote_uri: invite.to_value().unwrap_or_default().to_string(),
            remote_target: super::message::uri_string(
                invite.request_uri().expect("built with one"),
            ),
            route_set: Vec::new(),
            local_cseq: 1,
            dest: b_dest,
            local_addr: b_local,
        };
        let (b_key, actions) = match self.tx.send_request(invite, b_dest, now) {
            Ok(r) => r,
            Err(e) => {
                let _ = relay.delete(&media_id);
                warn!(error = %e, "cannot start the outgoing INVITE");
                return self.respond(&key, &msg, 503, "Overloaded", Some(&a_tag), now);
            }
        };
        info!(call = id, a_call_id = %a.call_id, b_call_id = %b_call_id, from = %from.addr,
              to = %b_dest.addr, trunk_in = %a_cfg.name, trunk_out = %b_cfg.name, "call started");
        self.client.insert(b_key.clone(), Pending::Invite(id));
        self.dialogs
            .insert((a.call_id.clone(), a_tag), (id, Side::A));
        self.dialogs.insert((b_call_id, b_tag), (id, Side::B));
        self.by_media.insert(media_id.clone(), id);
        self.trunk_state[a_trunk].calls += 1;
        self.trunk_state[b_trunk].calls += 1;
        self.calls.insert(
            id,
            Call {
                media_id,
                a,
                b,
                a_trunk,
                b_trunk,
                a_invite: Some((key, msg)),
                b_invite: Some(b_key),
                state: CallState::Calling,
                ring_deadline: now + self.cfg.ring_timeout,
                invite_at: now,
            },
        );
        actions
    }

    fn response(
        &mut self,
        key: TxKey,
        msg: SipMessage,
        relay: &mut Relay,
        now: Instant,
    ) -> Vec<Action> {
        let Some(pending) = self.client.get(&key) else {
            return Vec::new();
        };
        match *pending {
            Pending::Invite(id) => self.invite_response(id, &key, msg, relay, now),
            Pending::Relay {
                call,
                from,
                ref server,
                ref request,
                ref method,
                cseq,
                has_sdp,
            } => {
                let relayed = Relayed {
                    call,
                    from,
                    server: server.clone(),
                    request: (**request).clone(),
                    method: method.clone(),
                    cseq,
                    has_sdp,
                };
                self.relayed_response(relayed, &key, msg, relay, now)
            }
            Pending::Ours => Vec::new(),
            Pending::Ping(i) => {
                let code = msg.status().unwrap_or(0);
                if code >= 200 {
                    // Any answer but a server failure means the peer is alive.
                    self.set_trunk(i, code < 500, now);
                }
                Vec::new()
            }
        }
    }

    fn invite_response(
        &mut self,
        id: u64,
        key: &TxKey,
        msg: SipMessage,
        relay: &mut Relay,
        now: Instant,
    ) -> Vec<Action> {
        let code = msg.status().unwrap_or(500);
        let Some(call) = self.calls.get_mut(&id) else {
            return Vec::new();
        };
        if code == 100 {
            return Vec::new();
        }
        call.b.learn_from_response(&msg);
        if call.state == CallState::Ending {
            // Cancelled or timed out meanwhile: a late 2xx gets ACK and BYE.
            if (200..300).contains(&code) {
                let ack = call.b.ack(1);
                let mut out = self.tx.ack_2xx(key, ack, call.b.dest).unwrap_or_default();
                out.extend(self.send_bye_actions(id, Side::B, now));
                self.forget(id);
                return out;
            }
            if code >= 300 {
                self.forget(id);
            }
            return Vec::new();
        }
        let sdp =
            (!msg.body().is_empty()).then(|| String::from_utf8_lossy(msg.body()).into_owned());
        let mut a_sdp = None;
        if let Some(sdp) = sdp.filter(|_| code < 300) {
            match call.answer_media(relay, Side::A, &sdp) {
                Ok(s) => a_sdp = Some(s),
                Err(e) => warn!(call = id, error = %e, "the callee's SDP was refused"),
            }
        }
        let call = self.calls.get_mut(&id).expect("present");
        let Some((a_key, a_req)) = call.a_invite.clone() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        match code {
            101..=199 => {
                let mut r = call.caller_response(&a_req, code, msg.reason().unwrap_or(""));
                if let Some(s) = a_sdp {
                    r.set_body(Some("application/sdp"), s.into_bytes());
                }
                out.extend(self.tx.send_response(&a_key, r, now).unwrap_or_default());
            }
            200..=299 => {
                let ack = call.b.ack(1);
                out.extend(self.tx.ack_2xx(key, ack, call.b.dest).unwrap_or_default());
                let mut r = call.caller_response(&a_req, code, msg.reason().unwrap_or(""));
                match a_sdp {
                    Some(s) => r.set_body(Some("application/sdp"), s.into_bytes()),
                    None => {
                        // No usable answer: the call cannot carry media.
                        out.extend(self.send_bye_actions(id, Side::B, now));
                        let r = response_for(
                            &a_req,
                            488,
                            "Not Acceptable Here",
                            Some(&call_tag(&self.calls, id)),
                        );
                        out.extend(self.tx.send_response(&a_key, r, now).unwrap_or_default());
                        self.end_call(id, relay);
                        return out;
                    }
                }
                call.state = CallState::Confirmed;
                call.a_invite = None;
                call.b_invite = None;
                let setup = now.saturating_duration_since(call.invite_at);
                self.stats.calls_answered += 1;
                self.stats.record_setup(setup);
                info!(call = id, "call answered");
                out.extend(self.tx.send_response(&a_key, r, now).unwrap_or_default());
            }
            _ => {
                let (code, reason) = match code {
                    401 | 407 => (403, "Forbidden"),
                    c => (c, msg.reason().unwrap_or("")),
                };
                let r = response_for(&a_req, code, reason, Some(&call.a.local_tag));
                out.extend(self.tx.send_response(&a_key, r, now).unwrap_or_default());
                info!(call = id, code, "call failed");
                self.stats.calls_failed += 1;
                self.end_call(id, relay);
            }
        }
        out
    }

    fn relayed_response(
        &mut self,
        p: Relayed,
        key: &TxKey,
        msg: SipMessage,
        relay: &mut Relay,
        now: Instant,
    ) -> Vec<Action> {
        let code = msg.status().unwrap_or(500);
        if code < 200 {
            return Vec::new();
        }
        let Some(call) = self.calls.get_mut(&p.call) else {
            return Vec::new();
        };
        let to = p.from.other();
        let mut out = Vec::new();
        if (200..300).contains(&code) && p.method == Method::INVITE {
            let ack = call.dialog(to).ack(p.cseq);
            let dest = call.dialog(to).dest;
            out.extend(self.tx.ack_2xx(key, ack, dest).unwrap_or_default());
        }
        let call = self.calls.get_mut(&p.call).expect("present");
        let mut body = None;
        if (200..300).contains(&code) && p.has_sdp && !msg.body().is_empty() {
            let sdp = String::from_utf8_lossy(msg.body()).into_owned();
            match call.answer_media(relay, p.from, &sdp) {
                Ok(s) => body = Some(s),
                Err(e) => warn!(call = p.call, error = %e, "re-INVITE answer refused"),
            }
        }
        let mut r = response_for(&p.request, code, msg.reason().unwrap_or(""), None);
        r.add_header("Contact", &call.dialog(p.from).contact());
        if let Some(b) = body {
            r.set_body(Some("application/sdp"), b.into_bytes());
        }
        out.extend(self.tx.send_response(&p.server, r, now).unwrap_or_default());
        out
    }

    fn timeout(&mut self, key: TxKey, relay: &mut Relay, now: Instant) -> Vec<Action> {
        match self.client.remove(&key) {
            Some(Pending::Invite(id)) => {
                let mut out = Vec::new();
                if let Some(call) = self.calls.get(&id)
                    && let Some((a_key, a_req)) = call.a_invite.clone()
                {
                    let r = response_for(&a_req, 408, "Request Timeout", Some(&call.a.local_tag));
                    out.extend(self.tx.send_response(&a_key, r, now).unwrap_or_default());
                }
                self.stats.calls_failed += 1;
                self.end_call(id, relay);
                self.forget(id);
                out
            }
            Some(Pending::Relay {
                server, request, ..
            }) => {
                let r = response_for(&request, 408, "Request Timeout", None);
                self.tx.send_response(&server, r, now).unwrap_or_default()
            }
            Some(Pending::Ping(i)) => {
                self.set_trunk(i, false, now);
                Vec::new()
            }
            // Our BYE/CANCEL went unanswered, or a server transaction timed
            // out (the caller never ACKed our 2xx): nothing to relay.
            Some(Pending::Ours) | None => Vec::new(),
        }
    }

    fn cancel(
        &mut self,
        key: TxKey,
        msg: SipMessage,
        relay: &mut Relay,
        now: Instant,
    ) -> Vec<Action> {
        let invite_key = self.tx.invite_for_cancel(&key);
        let Some(invite_key) = invite_key else {
            return self.no_such_dialog(&key, &msg, now);
        };
        let mut out = self.respond(&key, &msg, 200, "OK", None, now);
        let id = self
            .calls
            .iter()
            .find(|(_, c)| c.a_invite.as_ref().is_some_and(|(k, _)| *k == invite_key))
            .map(|(id, _)| *id);
        if let Some(id) = id {
            info!(call = id, "caller cancelled");
            out.extend(self.fail_call_actions(id, 487, "Request Terminated", relay, now));
        }
        out
    }

    fn fail_call(
        &mut self,
        id: u64,
        code: u16,
        reason: &str,
        relay: &mut Relay,
        now: Instant,
    ) -> Vec<Send> {
        let actions = self.fail_call_actions(id, code, reason, relay, now);
        self.run(actions, relay, now)
    }

    /// Ends a call that is not answered yet: final response to the caller,
    /// CANCEL to the callee, media released.
    fn fail_call_actions(
        &mut self,
        id: u64,
        code: u16,
        reason: &str,
        relay: &mut Relay,
        now: Instant,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(call) = self.calls.get_mut(&id) else {
            return out;
        };
        if let Some((a_key, a_req)) = call.a_invite.take() {
            let r = response_for(&a_req, code, reason, Some(&call.a.local_tag));
            out.extend(self.tx.send_response(&a_key, r, now).unwrap_or_default());
        }
        let call = self.calls.get_mut(&id).expect("present");
        call.state = CallState::Ending;
        if let Some(b_key) = call.b_invite.clone() {
            out.extend(self.tx.cancel(&b_key, now).unwrap_or_default());
        }
        self.stats.calls_failed += 1;
        self.end_call(id, relay);
        out
    }

    fn bye(&mut self, key: TxKey, msg: SipMessage, relay: &mut Relay, now: Instant) -> Vec<Action> {
        let Some((id, side)) = self.dialog_of(&msg) else {
            return self.no_such_dialog(&key, &msg, now);
        };
        let mut out = self.respond(&key, &msg, 200, "OK", None, now);
        info!(call = id, from = ?side, "BYE");
        let answered = self
            .calls
            .get(&id)
            .is_some_and(|c| c.state == CallState::Confirmed);
        if answered {
            out.extend(self.send_bye_actions(id, side.other(), now));
            self.end_call(id, relay);
            self.forget(id);
        } else if side == Side::B {
            // The callee gave up on an early dialog: fail the caller's INVITE.
            out.extend(self.fail_call_actions(id, 480, "Temporarily Unavailable", relay, now));
        }
        out
    }

    fn relay_in_dialog(
        &mut self,
        key: TxKey,
        msg: SipMessage,
        relay: &mut Relay,
        now: Instant,
    ) -> Vec<Action> {
        let Some((id, side)) = self.dialog_of(&msg) else {
            return self.no_such_dialog(&key, &msg, now);
        };
        let method = msg.method().cloned().unwrap_or(Method::INFO);
        let call = self.calls.get_mut(&id).expect("indexed");
        if call.state != CallState::Confirmed {
            return self.respond(&key, &msg, 491, "Request Pending", None, now);
        }
        let has_sdp = !msg.body().is_empty()
            && msg
                .content_type()
                .is_some_and(|t| t.eq_ignore_ascii_case("application/sdp"));
        let mut body = None;
        if has_sdp {
            let sdp = String::from_utf8_lossy(msg.body()).into_owned();
            let (media_id, tag) = (call.media_id.clone(), call.media_tag(side));
            match relay.offer(&Offer {
                call_id: &media_id,
                from_tag: &tag,
                sdp: &sdp,
                now_ns: crate::dataplane::monotonic_ns(),
                ..Default::default()
            }) {
                Ok(s) => body = Some(s),
                Err(e) => {
                    warn!(call = id, error = %e, "re-offer refused");
                    let (code, reason) = refusal(&e);
                    return self.respond(&key, &msg, code, reason, None, now);
                }
            }
        }
        let call = self.calls.get_mut(&id).expect("indexed");
        let other = call.dialog(side.other());
        let mut req = other.request(method.clone());
        let cseq = other.local_cseq;
        let dest = other.dest;
        let pass = self
            .trunks
            .get(if side == Side::A {
                call.b_trunk
            } else {
                call.a_trunk
            })
            .map(|t| t.pass_headers.clone())
            .unwrap_or_default();
        copy_allowed(&msg, &mut req, &pass);
        match body {
            Some(b) => req.set_body(Some("application/sdp"), b.into_bytes()),
            None if !msg.body().is_empty() => req.set_body(msg.content_type(), msg.body().to_vec()),
            None => {}
        }
        match self.tx.send_request(req, dest, now) {
            Ok((ckey, actions)) => {
                self.client.insert(
                    ckey,
                    Pending::Relay {
                        call: id,
                        from: side,
                        server: key,
                        request: Box::new(msg),
                        method,
                        cseq,
                        has_sdp,
                    },
                );
                actions
            }
            Err(e) => {
                warn!(call = id, error = %e, "cannot relay an in-dialog request");
                self.respond(&key, &msg, 503, "Overloaded", None, now)
            }
        }
    }

    fn dialog_of(&self, msg: &SipMessage) -> Option<(u64, Side)> {
        let call_id = msg.call_id()?.to_string();
        let tag = msg.to_tag()?.to_string();
        self.dialogs.get(&(call_id, tag)).copied()
    }

    fn send_bye(&mut self, id: u64, side: Side, now: Instant) -> Vec<Send> {
        let actions = self.send_bye_actions(id, side, now);
        only_sends(actions)
    }

    fn send_bye_actions(&mut self, id: u64, side: Side, now: Instant) -> Vec<Action> {
        let Some(call) = self.calls.get_mut(&id) else {
            return Vec::new();
        };
        let d = call.dialog(side);
        if d.remote_tag.is_none() {
            return Vec::new();
        }
        let bye = d.request(Method::BYE);
        let dest = d.dest;
        match self.tx.send_request(bye, dest, now) {
            Ok((key, actions)) => {
                self.client.insert(key, Pending::Ours);
                actions
            }
            Err(e) => {
                warn!(call = id, error = %e, "cannot send BYE");
                Vec::new()
            }
        }
    }

    /// Releases the call's media and trunk slots (the call may linger until
    /// the callee's final response, see [`Self::forget`]).
    fn end_call(&mut self, id: u64, relay: &mut Relay) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if self.by_media.remove(&call.media_id).is_some() {
            if let Err(e) = relay.delete(&call.media_id) {
                debug!(call = id, error = %e, "media delete");
            }
            for t in [call.a_trunk, call.b_trunk] {
                self.trunk_state[t].calls = self.trunk_state[t].calls.saturating_sub(1);
            }
        }
        if call.state == CallState::Confirmed || call.b_invite.is_none() {
            self.forget(id);
        }
    }

    /// Forgets a call entirely.
    fn forget(&mut self, id: u64) {
        if let Some(call) = self.calls.remove(&id) {
            self.dialogs
                .remove(&(call.a.call_id.clone(), call.a.local_tag.clone()));
            self.dialogs
                .remove(&(call.b.call_id.clone(), call.b.local_tag.clone()));
            self.by_media.remove(&call.media_id);
        }
    }

    fn ping(&mut self, i: usize, now: Instant) -> Vec<Send> {
        let Some(trunk) = self.trunks.get(i) else {
            return Vec::new();
        };
        let interval = trunk.options_interval.unwrap_or(Duration::from_secs(30));
        self.trunk_state[i].next_ping = Some(now + interval);
        let Some(dest) = trunk.dest() else {
            return Vec::new();
        };
        let Some(local) = self.local_for(trunk.transport, dest.addr.ip()) else {
            return Vec::new();
        };
        let mut d = Dialog {
            call_id: new_call_id(&local.ip().to_string()),
            local_tag: new_tag(),
            remote_tag: None,
            local_uri: format!("<sip:relay@{}>", local.ip()),
            remote_uri: format!("<sip:{}>", dest.addr.ip()),
            remote_target: format!("sip:{}", dest.addr),
            route_set: Vec::new(),
            local_cseq: 0,
            dest,
            local_addr: local,
        };
        let options = d.request(Method::OPTIONS);
        match self.tx.send_request(options, dest, now) {
            Ok((key, actions)) => {
                self.trunk_state[i].pinging = true;
                self.client.insert(key, Pending::Ping(i));
                only_sends(actions)
            }
            Err(_) => Vec::new(),
        }
    }

    fn set_trunk(&mut self, i: usize, up: bool, _now: Instant) {
        let state = &mut self.trunk_state[i];
        state.pinging = false;
        if state.up != up {
            let name = self
                .trunks
                .get(i)
                .map(|t| t.name.to_string())
                .unwrap_or_default();
            if up {
                info!(trunk = %name, "trunk up (OPTIONS answered)");
            } else {
                warn!(trunk = %name, "trunk down (OPTIONS unanswered): new calls get 503");
            }
            state.up = up;
        }
    }
}

/// The sends among actions that cannot produce events (our own BYE, OPTIONS).
fn only_sends(actions: Vec<Action>) -> Vec<Send> {
    actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Send { dest, bytes, key } => Some(Send { dest, bytes, key }),
            Action::Deliver(_) => None,
        })
        .collect()
}

fn call_tag(calls: &HashMap<u64, Call>, id: u64) -> String {
    calls
        .get(&id)
        .map(|c| c.a.local_tag.clone())
        .unwrap_or_default()
}

/// SIP response for a refused offer.
fn refusal(e: &RelayError) -> (u16, &'static str) {
    match e {
        e if e.is_load_limit() => (503, "Service Unavailable"),
        RelayError::Media(crate::media::MediaError::Sdp(_)) => (488, "Not Acceptable Here"),
        RelayError::Media(m) if m.is_not_acceptable() => (488, "Not Acceptable Here"),
        _ => (500, "Server Internal Error"),
    }
}

fn count_response(stats: &mut SipStats, bytes: &[u8]) {
    if let Some(rest) = bytes.strip_prefix(b"SIP/2.0 ")
        && let Some(&d) = rest.first()
        && (b'1'..=b'6').contains(&d)
    {
        stats.responses_sent[(d - b'1') as usize] += 1;
    }
}

/// Which of our listeners (of one transport) a peer should see in Via and
/// Contact: the one on the address the routing table sends from toward it
/// (`source`), else one bound to the unspecified address (named by that
/// source), else the first. With one listener per transport that is it;
/// with an inside and an outside listener each side gets its own.
fn choose_local(mine: &[SocketAddr], source: Option<IpAddr>) -> Option<SocketAddr> {
    if let Some(ip) = source {
        if let Some(a) = mine.iter().find(|a| a.ip().to_canonical() == ip) {
            return Some(*a);
        }
        if let Some(a) = mine.iter().find(|a| a.ip().is_unspecified()) {
            return Some(SocketAddr::new(ip, a.port()));
        }
    }
    mine.first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_histogram_quantiles() {
        let mut s = SipStats::default();
        assert_eq!(s.setup_quantile_us(0.5), None);
        for us in [300u64, 400, 500, 900, 5_000] {
            s.record_setup(Duration::from_micros(us));
        }
        // 300, 400, 500 fall in [256, 512), 900 in [512, 1024), 5000 in [4096, 8192).
        assert_eq!(s.setup_quantile_us(0.5), Some(512));
        assert_eq!(s.setup_quantile_us(0.8), Some(1024));
        assert_eq!(s.setup_quantile_us(1.0), Some(8192));
    }

    #[test]
    fn via_and_contact_name_the_listener_facing_the_peer() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let (inside, outside) = (a("192.0.2.1:5060"), a("198.51.100.1:5060"));
        let both = [inside, outside];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(choose_local(&both, ip("198.51.100.1")), Some(outside));
        assert_eq!(choose_local(&both, ip("192.0.2.1")), Some(inside));
        // No route known, or a source that is none of ours: the first.
        assert_eq!(choose_local(&both, None), Some(inside));
        assert_eq!(choose_local(&both, ip("203.0.113.1")), Some(inside));
        // A wildcard listener is named by the route's source.
        let any = [a("0.0.0.0:5060")];
        assert_eq!(
            choose_local(&any, ip("198.51.100.1")),
            Some(a("198.51.100.1:5060"))
        );
        assert_eq!(choose_local(&[], ip("198.51.100.1")), None);
    }
}
