//! The SIP transaction layer (RFC 3261 section 17, with the RFC 6026
//! Accepted states), without I/O: messages and `now` go in, [`Action`]s
//! (bytes to send, events for the transaction user) come out. Time is only
//! what the caller passes; call [`TransactionLayer::poll`] at
//! [`TransactionLayer::next_deadline`].
//!
//! ```text
//! transport --receive(msg, from, now)--> TransactionLayer --Action::Deliver(Event)--> TU (B2BUA)
//! transport <--Action::Send{dest,bytes}-- TransactionLayer <--send_request/send_response/cancel/ack_2xx-- TU
//!                                         poll(now) at next_deadline(): retransmissions, timeouts
//! ```
//!
//! Choices, where the RFC leaves one or where this layer goes beyond it:
//!
//! - **100 Trying is sent at once** when a new INVITE arrives, before the
//!   TU sees it (RFC 3261 17.2.1 allows it; a B2BUA forwards the INVITE and
//!   may wait well over 200 ms for the far side, and an immediate 100 stops
//!   the caller's timer A retransmissions sooner). The TU never sends 100.
//! - **Accepted states (RFC 6026).** After a 2xx, an INVITE client
//!   transaction stays in Accepted for timer M (64*T1): further 2xx (a
//!   retransmission, or a fork) are delivered to the TU, except that a 2xx
//!   whose To tag was already ACKed through [`TransactionLayer::ack_2xx`]
//!   is answered with that ACK again by the layer. After sending a 2xx, an
//!   INVITE server transaction stays in Accepted for timer L (64*T1): on
//!   UDP it retransmits the 2xx (T1 doubling to T2, RFC 3261 13.3.1.4)
//!   until the ACK arrives, absorbs INVITE retransmissions (so a late one
//!   cannot start a second call), and delivers the ACK to the TU. No ACK
//!   by timer L gives [`Event::Timeout`] (the TU should send BYE).
//!   Pure RFC 3261 ends both at the 2xx and leaves all of this to the TU.
//! - **ACK for a 2xx is not a transaction.** A received one (matched to its
//!   INVITE by Call-ID, CSeq number and From tag, since it has a new
//!   branch) is delivered as [`Event::Ack`], as is an ACK that matches
//!   nothing. The TU sends its own with [`TransactionLayer::ack_2xx`] (or
//!   [`Action::send`] for any message outside a transaction).
//! - **CANCEL** is its own non-INVITE client transaction.
//!   [`TransactionLayer::cancel`] builds it from the INVITE and sends it to
//!   the INVITE's destination, holding it until a provisional response has
//!   arrived (RFC 3261 9.1). A received CANCEL is delivered as a request;
//!   [`TransactionLayer::invite_for_cancel`] finds the INVITE it cancels
//!   (the TU answers the CANCEL 200 and the INVITE 487).
//! - **Responses go back to the request's source** (`from` of
//!   [`TransactionLayer::receive`], with its connection id): symmetric
//!   response routing, as RFC 3581 rport does, which NATed PBXs need.
//! - **Reliability** follows [`Dest::transport`]: no retransmissions on TCP
//!   and TLS, and timers D, K, I, J are zero there.
//! - **Bounds.** At most [`Config::max_transactions`] transactions: beyond
//!   it, a new request is answered 503 statelessly (ACK is not answered) and
//!   [`TransactionLayer::send_request`] fails. A non-INVITE server
//!   transaction that the TU never answers ends after 64*T1 (the client has
//!   given up by then). An INVITE server transaction waits for the TU
//!   (ringing may last minutes): the B2BUA's no-answer timer ends it with a
//!   final response. An INVITE client transaction that got a provisional
//!   response has no timeout either (RFC 3261 timer B stops in
//!   Proceeding): the TU runs a no-answer timer and uses `cancel`.
//! - **Events are final.** After [`Event::Terminated`] the key is free and
//!   nothing more is said about it. Timeout and TransportError are followed
//!   by Terminated.

#[cfg(test)]
mod tests;

use std::{collections::HashMap, net::SocketAddr, time::Duration, time::Instant};

use super::{
    message::{
        self, Bytes, Method, ParseError, SipMessage, TxKey, TxRole, ack_for_non2xx, cancel_for,
        response_for, tx_key,
    },
    timers::{DeadlineQueue, TimerConfig},
};

/// A SIP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TransportKind {
    Udp,
    Tcp,
    Tls,
}

impl TransportKind {
    pub fn reliability(self) -> Reliability {
        match self {
            TransportKind::Udp => Reliability::Unreliable,
            TransportKind::Tcp | TransportKind::Tls => Reliability::Reliable,
        }
    }

    /// The transport token of a Via header.
    pub fn via_name(self) -> &'static str {
        match self {
            TransportKind::Udp => "UDP",
            TransportKind::Tcp => "TCP",
            TransportKind::Tls => "TLS",
        }
    }
}

/// Whether a transport retransmits by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reliability {
    Unreliable,
    Reliable,
}

/// Where a message goes or came from, as the transport layer names it: the
/// peer address, the transport, and for TCP/TLS the connection the
/// transport layer assigned (`None`: any, or open one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dest {
    pub addr: SocketAddr,
    pub transport: TransportKind,
    pub conn: Option<u64>,
}

impl Dest {
    pub fn udp(addr: SocketAddr) -> Dest {
        Dest {
            addr,
            transport: TransportKind::Udp,
            conn: None,
        }
    }

    pub fn tcp(addr: SocketAddr, conn: Option<u64>) -> Dest {
        Dest {
            addr,
            transport: TransportKind::Tcp,
            conn,
        }
    }

    pub fn tls(addr: SocketAddr, conn: Option<u64>) -> Dest {
        Dest {
            addr,
            transport: TransportKind::Tls,
            conn,
        }
    }

    pub fn reliability(&self) -> Reliability {
        self.transport.reliability()
    }

    fn is_reliable(&self) -> bool {
        self.reliability() == Reliability::Reliable
    }
}

/// Transaction layer settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub timers: TimerConfig,
    /// Most live transactions (client and server together). A transaction
    /// holds its request and last response, a few KiB.
    pub max_transactions: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            timers: TimerConfig::default(),
            max_transactions: 100_000,
        }
    }
}

/// What the layer tells the transaction user.
#[derive(Clone, Debug)]
pub enum Event {
    /// A new request created server transaction `key`: answer it with
    /// [`TransactionLayer::send_response`]. (Never ACK; see [`Event::Ack`].)
    Request {
        key: TxKey,
        msg: SipMessage,
        from: Dest,
    },
    /// An ACK outside any transaction: the ACK for a 2xx, or one that
    /// matches nothing.
    Ack { msg: SipMessage, from: Dest },
    /// A response on client transaction `key` (1xx and every final; see the
    /// module doc for 2xx retransmissions).
    Response { key: TxKey, msg: SipMessage },
    /// Client: no final response in time (timers B, F). Server: no ACK in
    /// time (timer H for a non-2xx, timer L for a 2xx).
    Timeout { key: TxKey },
    /// [`TransactionLayer::transport_error`] was reported for `key`.
    TransportError { key: TxKey },
    /// The transaction is gone; its key is free.
    Terminated { key: TxKey },
}

/// What the caller must do, in order.
#[derive(Clone, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "actions live briefly in a Vec and are moved once; boxing the message would cost an allocation per event"
)]
pub enum Action {
    /// Send these bytes. `key` is the transaction that sends them, for
    /// [`TransactionLayer::transport_error`]; `None` for stateless sends.
    Send {
        dest: Dest,
        bytes: Bytes,
        key: Option<TxKey>,
    },
    /// Hand this event to the transaction user.
    Deliver(Event),
}

impl Action {
    /// A send outside any transaction (ACK for a 2xx without
    /// [`TransactionLayer::ack_2xx`], stateless responses, keep-alives).
    pub fn send(msg: &SipMessage, dest: Dest) -> Action {
        Action::Send {
            dest,
            bytes: msg.to_bytes(),
            key: None,
        }
    }
}

/// Why the layer refused a call from the TU.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("transaction limit of {max} reached")]
    TooManyTransactions { max: usize },
    #[error("expected a request")]
    NotARequest,
    #[error("expected a response")]
    NotAResponse,
    #[error("ACK is not sent in a transaction: use ack_2xx or Action::send")]
    AckIsNotATransaction,
    #[error("message has no transaction key: {0}")]
    BadMessage(#[from] ParseError),
    #[error("transaction {0} exists already")]
    Duplicate(TxKey),
    #[error("no transaction {0}")]
    NoSuchTransaction(TxKey),
    #[error("cannot {what} in state {state:?}")]
    InvalidState { state: State, what: &'static str },
}

/// A transaction state (RFC 3261 17, RFC 6026).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// INVITE client before any response.
    Calling,
    /// Non-INVITE client or server before any response.
    Trying,
    Proceeding,
    Completed,
    /// INVITE server after the ACK for its non-2xx.
    Confirmed,
    /// INVITE client after a 2xx, INVITE server after sending a 2xx.
    Accepted,
}

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub client_created: u64,
    pub server_created: u64,
    /// Retransmissions this layer sent (timers A, E, G, 2xx, and answers to
    /// retransmitted requests or responses).
    pub retransmitted: u64,
    /// Retransmissions received and absorbed.
    pub absorbed: u64,
    /// Responses that matched no client transaction (dropped).
    pub stray_responses: u64,
    /// Messages without a usable transaction key (dropped).
    pub unkeyed: u64,
    /// Requests answered 503 because the layer was full.
    pub rejected_full: u64,
    pub timeouts: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    InviteClient,
    NonInviteClient,
    InviteServer,
    NonInviteServer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CancelState {
    None,
    /// Asked for while in Calling: sent at the first provisional response.
    Pending,
    Sent,
}

/// How an ACK for a 2xx finds its INVITE server transaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct AckMatch {
    call_id: String,
    cseq: u32,
    from_tag: String,
}

impl AckMatch {
    fn of(msg: &SipMessage) -> Option<AckMatch> {
        Some(AckMatch {
            call_id: msg.call_id()?.to_string(),
            cseq: msg.cseq()?.seq,
            from_tag: msg.from_tag().unwrap_or_default().to_string(),
        })
    }
}

struct Tx {
    kind: Kind,
    state: State,
    /// Client: where the request goes. Server: where responses go.
    dest: Dest,
    /// Client: the request as sent, for retransmission.
    request: Bytes,
    /// INVITE client: the request, for the ACK of a non-2xx and for CANCEL.
    invite: Option<Box<SipMessage>>,
    /// Server: the last response sent. INVITE client in Completed: the ACK.
    last_sent: Option<Bytes>,
    /// Timers A, E, G and the 2xx retransmission.
    retransmit_at: Option<Instant>,
    interval: Duration,
    /// Timers B, F, H, L, M and the non-INVITE server guard.
    timeout_at: Option<Instant>,
    /// Timers D, K, I, J.
    end_at: Option<Instant>,
    cancel: CancelState,
    /// INVITE server: ACK for the 2xx seen.
    acked: bool,
    /// INVITE server: what its 2xx's ACK carries.
    ack_match: Option<AckMatch>,
    /// INVITE client in Accepted: the ACKs sent per To tag, with their
    /// destination, re-sent when that 2xx is retransmitted.
    acks_2xx: Vec<(String, Bytes, Dest)>,
}

impl Tx {
    fn new(kind: Kind, state: State, dest: Dest, request: Bytes) -> Tx {
        Tx {
            kind,
            state,
            dest,
            request,
            invite: None,
            last_sent: None,
            retransmit_at: None,
            interval: Duration::ZERO,
            timeout_at: None,
            end_at: None,
            cancel: CancelState::None,
            acked: false,
            ack_match: None,
            acks_2xx: Vec::new(),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        [self.retransmit_at, self.timeout_at, self.end_at]
            .into_iter()
            .flatten()
            .min()
    }

    fn stop_timers(&mut self) {
        self.retransmit_at = None;
        self.timeout_at = None;
        self.end_at = None;
    }
}

/// All live transactions. See the module documentation.
pub struct TransactionLayer {
    cfg: Config,
    txs: HashMap<TxKey, Tx>,
    deadlines: DeadlineQueue<TxKey>,
    /// INVITE server transactions in Accepted, by what their ACK carries.
    ack_index: HashMap<AckMatch, TxKey>,
    stats: Stats,
}

impl TransactionLayer {
    pub fn new(cfg: Config) -> TransactionLayer {
        TransactionLayer {
            cfg,
            txs: HashMap::new(),
            deadlines: DeadlineQueue::new(),
            ack_index: HashMap::new(),
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Live transactions.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The state of a live transaction.
    pub fn state(&self, key: &TxKey) -> Option<State> {
        self.txs.get(key).map(|tx| tx.state)
    }

    /// When [`TransactionLayer::poll`] next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.next_deadline()
    }

    /// A message from the transport (already [`message::parse`]d). A
    /// response goes to its client transaction, or is dropped as stray. A
    /// request that matches a server transaction is a retransmission (the
    /// last response is sent again) or the ACK of a non-2xx (absorbed); an
    /// ACK that matches none is delivered as [`Event::Ack`]; any other
    /// request creates a server transaction and is delivered as
    /// [`Event::Request`].
    pub fn receive(&mut self, msg: SipMessage, from: Dest, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if msg.is_request() {
            self.receive_request(msg, from, now, &mut out);
        } else {
            self.receive_response(msg, now, &mut out);
        }
        out
    }

    /// Starts a client transaction for `msg` (not ACK) towards `to`. The
    /// top Via must carry a fresh branch ([`message::new_branch`]).
    pub fn send_request(
        &mut self,
        msg: SipMessage,
        to: Dest,
        now: Instant,
    ) -> Result<(TxKey, Vec<Action>), Error> {
        self.start_client(msg, to, now, true)
    }

    /// Sends a response on server transaction `key` (build it with
    /// [`message::response_for`]). 1xx keeps the transaction proceeding; a
    /// final response completes it. A 2xx to an INVITE may be sent again
    /// in Accepted.
    pub fn send_response(
        &mut self,
        key: &TxKey,
        msg: SipMessage,
        now: Instant,
    ) -> Result<Vec<Action>, Error> {
        let code = msg.status().ok_or(Error::NotAResponse)?;
        let t = self.cfg.timers;
        let tx = self
            .txs
            .get_mut(key)
            .ok_or_else(|| Error::NoSuchTransaction(key.clone()))?;
        let bytes = msg.to_bytes();
        let mut out = Vec::new();
        let reliable = tx.dest.is_reliable();
        let mut terminate = false;
        match (tx.kind, tx.state, code) {
            (Kind::InviteServer, State::Proceeding, 100..=199) => {}
            (Kind::InviteServer, State::Proceeding, 200..=299) => {
                tx.state = State::Accepted;
                tx.timeout_at = Some(now + t.timeout_64t1());
                if !reliable {
                    tx.interval = t.t1;
                    tx.retransmit_at = Some(now + t.t1);
                }
                if let Some(m) = tx.ack_match.clone() {
                    self.ack_index.insert(m, key.clone());
                }
            }
            (Kind::InviteServer, State::Accepted, 200..=299) => {}
            (Kind::InviteServer, State::Proceeding, _) => {
                tx.state = State::Completed;
                tx.timeout_at = Some(now + t.timeout_64t1());
                if !reliable {
                    tx.interval = t.t1;
                    tx.retransmit_at = Some(now + t.t1);
                }
            }
            (Kind::NonInviteServer, State::Trying | State::Proceeding, 100..=199) => {
                tx.state = State::Proceeding;
            }
            (Kind::NonInviteServer, State::Trying | State::Proceeding, _) => {
                tx.state = State::Completed;
                tx.timeout_at = None;
                if reliable {
                    terminate = true;
                } else {
                    tx.end_at = Some(now + t.timeout_64t1());
                }
            }
            (Kind::InviteClient | Kind::NonInviteClient, state, _) => {
                return Err(Error::InvalidState {
                    state,
                    what: "send a response on a client transaction",
                });
            }
            (_, state, _) => {
                return Err(Error::InvalidState {
                    state,
                    what: "send this response",
                });
            }
        }
        tx.last_sent = Some(bytes.clone());
        out.push(Action::Send {
            dest: tx.dest,
            bytes,
            key: Some(key.clone()),
        });
        if terminate {
            self.terminate(key, &mut out);
        } else {
            self.schedule(key);
        }
        Ok(out)
    }

    /// Cancels the INVITE of client transaction `invite_key` (RFC 3261 9.1):
    /// sends a CANCEL now if a provisional response has arrived, else when
    /// the first one does. The CANCEL's own transaction has the key
    /// `invite_key.with_method(Method::CANCEL)`; its 200 comes as an
    /// [`Event::Response`] on that key, the INVITE's 487 on `invite_key`.
    /// Cancelling twice does nothing more. Fails once a final response
    /// has arrived (after a 2xx the TU sends ACK and BYE instead).
    pub fn cancel(&mut self, invite_key: &TxKey, now: Instant) -> Result<Vec<Action>, Error> {
        let tx = self
            .txs
            .get_mut(invite_key)
            .ok_or_else(|| Error::NoSuchTransaction(invite_key.clone()))?;
        if tx.kind != Kind::InviteClient {
            return Err(Error::InvalidState {
                state: tx.state,
                what: "cancel a transaction that is not an INVITE client",
            });
        }
        let mut out = Vec::new();
        match (tx.state, tx.cancel) {
            (State::Calling | State::Proceeding, CancelState::Pending | CancelState::Sent) => {}
            (State::Calling, CancelState::None) => tx.cancel = CancelState::Pending,
            (State::Proceeding, CancelState::None) => self.send_cancel(invite_key, now, &mut out),
            (state, _) => {
                return Err(Error::InvalidState {
                    state,
                    what: "cancel after a final response",
                });
            }
        }
        Ok(out)
    }

    /// Sends the TU's ACK for a 2xx to the INVITE of `invite_key` (outside
    /// any transaction, to `dest`, the dialog's remote target). While that
    /// INVITE transaction is in Accepted, a retransmission of the same 2xx
    /// (same To tag) is answered with this ACK by the layer.
    pub fn ack_2xx(
        &mut self,
        invite_key: &TxKey,
        ack: SipMessage,
        dest: Dest,
    ) -> Result<Vec<Action>, Error> {
        if ack.method() != Some(&Method::ACK) {
            return Err(Error::NotARequest);
        }
        let bytes = ack.to_bytes();
        if let Some(tx) = self.txs.get_mut(invite_key)
            && tx.kind == Kind::InviteClient
            && tx.state == State::Accepted
        {
            let tag = ack.to_tag().unwrap_or_default().to_string();
            tx.acks_2xx.retain(|(t, _, _)| *t != tag);
            tx.acks_2xx.push((tag, bytes.clone(), dest));
        }
        Ok(vec![Action::Send {
            dest,
            bytes,
            key: None,
        }])
    }

    /// The transport could not send for transaction `key` (connection
    /// refused or reset, TLS handshake failed, ICMP unreachable): the TU
    /// hears [`Event::TransportError`] and the transaction ends (RFC 3261
    /// 17.1.4, 17.2.4).
    pub fn transport_error(&mut self, key: &TxKey) -> Vec<Action> {
        let mut out = Vec::new();
        if self.txs.contains_key(key) {
            out.push(Action::Deliver(Event::TransportError { key: key.clone() }));
            self.terminate(key, &mut out);
        }
        out
    }

    /// For a received CANCEL's server transaction key, the live INVITE
    /// server transaction it cancels (RFC 3261 9.2: same branch and sent-by).
    /// `None`: answer the CANCEL 481. Otherwise answer it 200 and, if the
    /// INVITE is still proceeding, the INVITE 487.
    pub fn invite_for_cancel(&self, cancel_key: &TxKey) -> Option<TxKey> {
        if cancel_key.role() != TxRole::Server || *cancel_key.method() != Method::CANCEL {
            return None;
        }
        let key = cancel_key.with_method(Method::INVITE);
        self.txs.contains_key(&key).then_some(key)
    }

    /// Fires every timer due at `now`.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(key) = self.deadlines.pop_due(now) {
            self.fire(&key, now, &mut out);
        }
        out
    }

    // ---- internals ----

    fn start_client(
        &mut self,
        msg: SipMessage,
        to: Dest,
        now: Instant,
        check_limit: bool,
    ) -> Result<(TxKey, Vec<Action>), Error> {
        let method = msg.method().cloned().ok_or(Error::NotARequest)?;
        if method == Method::ACK {
            return Err(Error::AckIsNotATransaction);
        }
        let key = tx_key(&msg, TxRole::Client)?;
        if self.txs.contains_key(&key) {
            return Err(Error::Duplicate(key));
        }
        if check_limit && self.txs.len() >= self.cfg.max_transactions {
            return Err(Error::TooManyTransactions {
                max: self.cfg.max_transactions,
            });
        }
        let t = self.cfg.timers;
        let bytes = msg.to_bytes();
        let mut tx = if method == Method::INVITE {
            let mut tx = Tx::new(Kind::InviteClient, State::Calling, to, bytes.clone());
            tx.invite = Some(Box::new(msg));
            tx
        } else {
            Tx::new(Kind::NonInviteClient, State::Trying, to, bytes.clone())
        };
        if !to.is_reliable() {
            tx.interval = t.t1;
            tx.retransmit_at = Some(now + t.t1);
        }
        tx.timeout_at = Some(now + t.timeout_64t1());
        self.txs.insert(key.clone(), tx);
        self.schedule(&key);
        self.stats.client_created += 1;
        let out = vec![Action::Send {
            dest: to,
            bytes,
            key: Some(key.clone()),
        }];
        Ok((key, out))
    }

    fn send_cancel(&mut self, invite_key: &TxKey, now: Instant, out: &mut Vec<Action>) {
        let Some(tx) = self.txs.get_mut(invite_key) else {
            return;
        };
        let Some(invite) = tx.invite.as_deref() else {
            return;
        };
        tx.cancel = CancelState::Sent;
        let (cancel, dest) = (cancel_for(invite), tx.dest);
        // One CANCEL per INVITE, so the limit need not apply; a duplicate
        // key (the TU sent its own CANCEL) is simply not sent twice.
        if let Ok((_, actions)) = self.start_client(cancel, dest, now, false) {
            out.extend(actions);
        }
    }

    fn receive_request(
        &mut self,
        msg: SipMessage,
        from: Dest,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Ok(key) = tx_key(&msg, TxRole::Server) else {
            self.stats.unkeyed += 1;
            return;
        };
        let is_ack = msg.method() == Some(&Method::ACK);
        if self.txs.contains_key(&key) {
            self.request_on_existing(&key, msg, from, is_ack, now, out);
            return;
        }
        if is_ack {
            if let Some(invite_key) = AckMatch::of(&msg).and_then(|m| self.ack_index.get(&m)) {
                let invite_key = invite_key.clone();
                self.ack_received_for_2xx(&invite_key);
            }
            out.push(Action::Deliver(Event::Ack { msg, from }));
            return;
        }
        if self.txs.len() >= self.cfg.max_transactions {
            self.stats.rejected_full += 1;
            let busy = response_for(&msg, 503, "Service Unavailable", None);
            out.push(Action::send(&busy, from));
            return;
        }
        let t = self.cfg.timers;
        let tx = if msg.method() == Some(&Method::INVITE) {
            let mut tx = Tx::new(Kind::InviteServer, State::Proceeding, from, Bytes::new());
            tx.ack_match = AckMatch::of(&msg);
            let trying = response_for(&msg, 100, "Trying", None).to_bytes();
            tx.last_sent = Some(trying.clone());
            out.push(Action::Send {
                dest: from,
                bytes: trying,
                key: Some(key.clone()),
            });
            tx
        } else {
            let mut tx = Tx::new(Kind::NonInviteServer, State::Trying, from, Bytes::new());
            tx.timeout_at = Some(now + t.timeout_64t1());
            tx
        };
        self.txs.insert(key.clone(), tx);
        self.schedule(&key);
        self.stats.server_created += 1;
        out.push(Action::Deliver(Event::Request { key, msg, from }));
    }

    fn request_on_existing(
        &mut self,
        key: &TxKey,
        msg: SipMessage,
        from: Dest,
        is_ack: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let t = self.cfg.timers;
        let Some(tx) = self.txs.get_mut(key) else {
            return;
        };
        let mut resend = false;
        let mut terminate = false;
        match (tx.kind, tx.state, is_ack) {
            (Kind::InviteServer, State::Completed, true) => {
                // The ACK for our non-2xx: stop G and H, absorb, wait I.
                tx.state = State::Confirmed;
                tx.stop_timers();
                if tx.dest.is_reliable() {
                    terminate = true;
                } else {
                    tx.end_at = Some(now + t.t4);
                }
                self.stats.absorbed += 1;
            }
            (Kind::InviteServer, State::Accepted, true) => {
                // An ACK for the 2xx that reuses the INVITE's branch (RFC
                // 2543 style): it still belongs to the TU.
                self.ack_received_for_2xx(key);
                out.push(Action::Deliver(Event::Ack { msg, from }));
                return;
            }
            (Kind::InviteServer, State::Proceeding | State::Completed, false)
            | (Kind::NonInviteServer, State::Proceeding | State::Completed, _) => {
                resend = true;
                self.stats.absorbed += 1;
            }
            _ => self.stats.absorbed += 1,
        }
        if resend && let Some(bytes) = tx.last_sent.clone() {
            self.stats.retransmitted += 1;
            out.push(Action::Send {
                dest: tx.dest,
                bytes,
                key: Some(key.clone()),
            });
        }
        if terminate {
            self.terminate(key, out);
        } else {
            self.schedule(key);
        }
    }

    fn ack_received_for_2xx(&mut self, invite_key: &TxKey) {
        if let Some(tx) = self.txs.get_mut(invite_key)
            && tx.state == State::Accepted
        {
            tx.acked = true;
            tx.retransmit_at = None;
        }
        self.schedule(invite_key);
    }

    fn receive_response(&mut self, msg: SipMessage, now: Instant, out: &mut Vec<Action>) {
        let Ok(key) = tx_key(&msg, TxRole::Client) else {
            self.stats.unkeyed += 1;
            return;
        };
        let Some(code) = msg.status() else {
            return;
        };
        let t = self.cfg.timers;
        let Some(tx) = self.txs.get_mut(&key) else {
            self.stats.stray_responses += 1;
            return;
        };
        let reliable = tx.dest.is_reliable();
        let mut deliver = true;
        let mut terminate = false;
        let mut send_cancel = false;
        match (tx.kind, tx.state) {
            (Kind::InviteClient, State::Calling | State::Proceeding) => match code {
                100..=199 => {
                    send_cancel = tx.state == State::Calling && tx.cancel == CancelState::Pending;
                    tx.state = State::Proceeding;
                    // Timer A stops; timer B only runs in Calling.
                    tx.retransmit_at = None;
                    tx.timeout_at = None;
                }
                200..=299 => {
                    tx.state = State::Accepted;
                    tx.stop_timers();
                    tx.timeout_at = Some(now + t.timeout_64t1());
                }
                _ => {
                    let ack = match tx.invite.as_deref() {
                        Some(invite) => ack_for_non2xx(invite, &msg).to_bytes(),
                        None => Bytes::new(),
                    };
                    out.push(Action::Send {
                        dest: tx.dest,
                        bytes: ack.clone(),
                        key: Some(key.clone()),
                    });
                    tx.last_sent = Some(ack);
                    tx.state = State::Completed;
                    tx.stop_timers();
                    if reliable {
                        terminate = true;
                    } else {
                        tx.end_at = Some(now + t.timer_d);
                    }
                }
            },
            (Kind::InviteClient, State::Completed) => {
                // A retransmitted final response: ACK it again.
                deliver = false;
                self.stats.absorbed += 1;
                if let Some(ack) = tx.last_sent.clone().filter(|_| code >= 300) {
                    self.stats.retransmitted += 1;
                    out.push(Action::Send {
                        dest: tx.dest,
                        bytes: ack,
                        key: Some(key.clone()),
                    });
                }
            }
            (Kind::InviteClient, State::Accepted) => {
                deliver = (200..=299).contains(&code);
                let tag = msg.to_tag().unwrap_or_default();
                if let Some((_, ack, dest)) = tx.acks_2xx.iter().find(|(t, _, _)| t == tag) {
                    deliver = false;
                    self.stats.retransmitted += 1;
                    out.push(Action::Send {
                        dest: *dest,
                        bytes: ack.clone(),
                        key: None,
                    });
                }
                if !deliver {
                    self.stats.absorbed += 1;
                }
            }
            (Kind::NonInviteClient, State::Trying | State::Proceeding) => {
                if code < 200 {
                    // Timer E keeps its schedule; it continues at T2.
                    tx.state = State::Proceeding;
                } else {
                    tx.state = State::Completed;
                    tx.stop_timers();
                    if reliable {
                        terminate = true;
                    } else {
                        tx.end_at = Some(now + t.t4);
                    }
                }
            }
            _ => {
                deliver = false;
                self.stats.absorbed += 1;
            }
        }
        if deliver {
            out.push(Action::Deliver(Event::Response {
                key: key.clone(),
                msg,
            }));
        }
        if send_cancel {
            self.send_cancel(&key, now, out);
        }
        if terminate {
            self.terminate(&key, out);
        } else {
            self.schedule(&key);
        }
    }

    fn fire(&mut self, key: &TxKey, now: Instant, out: &mut Vec<Action>) {
        let t = self.cfg.timers;
        let Some(tx) = self.txs.get_mut(key) else {
            return;
        };
        let due = |at: Option<Instant>| at.is_some_and(|at| at <= now);
        if due(tx.end_at) {
            // Timers D, K, I, J.
            self.terminate(key, out);
            return;
        }
        if due(tx.timeout_at) {
            let timeout = match (tx.kind, tx.state) {
                // B, F, H.
                (Kind::InviteClient, State::Calling)
                | (Kind::NonInviteClient, State::Trying | State::Proceeding)
                | (Kind::InviteServer, State::Completed) => true,
                // L without the ACK for the 2xx.
                (Kind::InviteServer, State::Accepted) => !tx.acked,
                // M; the non-INVITE server guard.
                _ => false,
            };
            if timeout {
                self.stats.timeouts += 1;
                out.push(Action::Deliver(Event::Timeout { key: key.clone() }));
            }
            self.terminate(key, out);
            return;
        }
        if due(tx.retransmit_at) {
            let bytes = match (tx.kind, tx.state) {
                // A: doubling without a cap.
                (Kind::InviteClient, State::Calling) => {
                    tx.interval = t.backoff(tx.interval, false);
                    Some(tx.request.clone())
                }
                // E: doubling to T2 in Trying, T2 in Proceeding.
                (Kind::NonInviteClient, State::Trying) => {
                    tx.interval = t.backoff(tx.interval, true);
                    Some(tx.request.clone())
                }
                (Kind::NonInviteClient, State::Proceeding) => {
                    tx.interval = t.t2;
                    Some(tx.request.clone())
                }
                // G, and the 2xx until its ACK.
                (Kind::InviteServer, State::Completed) | (Kind::InviteServer, State::Accepted) => {
                    tx.interval = t.backoff(tx.interval, true);
                    tx.last_sent.clone()
                }
                _ => None,
            };
            match bytes {
                Some(bytes) => {
                    tx.retransmit_at = Some(now + tx.interval);
                    self.stats.retransmitted += 1;
                    out.push(Action::Send {
                        dest: tx.dest,
                        bytes,
                        key: Some(key.clone()),
                    });
                }
                None => tx.retransmit_at = None,
            }
        }
        self.schedule(key);
    }

    fn schedule(&mut self, key: &TxKey) {
        let at = self.txs.get(key).and_then(Tx::deadline);
        self.deadlines.set(key.clone(), at);
    }

    fn terminate(&mut self, key: &TxKey, out: &mut Vec<Action>) {
        if let Some(tx) = self.txs.remove(key) {
            self.deadlines.remove(key);
            if let Some(m) = tx.ack_match {
                if self.ack_index.get(&m) == Some(key) {
                    self.ack_index.remove(&m);
                }
            }
            out.push(Action::Deliver(Event::Terminated { key: key.clone() }));
        }
    }
}

/// Parses `bytes` and hands them to `layer` in one step; a message that
/// does not parse is answered 400 when it is a request that has enough
/// headers for a response, and dropped otherwise. Returns the parse error
/// too, for logging.
pub fn receive_bytes(
    layer: &mut TransactionLayer,
    bytes: &[u8],
    max_size: usize,
    from: Dest,
    now: Instant,
) -> (Vec<Action>, Option<ParseError>) {
    match message::parse(bytes, max_size) {
        Ok(msg) => (layer.receive(msg, from, now), None),
        Err(err) => {
            let mut out = Vec::new();
            if let Ok(msg) = message::parse_unchecked(bytes, max_size)
                && msg.is_request()
                && msg.method() != Some(&Method::ACK)
                && msg.header("Via").is_some()
            {
                let reason = format!("Bad Request ({err})");
                let reason: String = reason.chars().take(100).collect();
                out.push(Action::send(&response_for(&msg, 400, &reason, None), from));
            }
            (out, Some(err))
        }
    }
}
