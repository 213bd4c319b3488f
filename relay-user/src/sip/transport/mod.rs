//! SIP transports (tokio): UDP sockets, TCP and TLS listeners, and outgoing
//! TCP/TLS connections, all feeding one queue of [`Inbound`] messages.
//!
//! - UDP: one datagram is one message. A datagram over `max_message_size`
//!   is dropped and counted, as are whitespace-only keep-alives.
//! - TCP/TLS: messages are cut out of the stream by Content-Length
//!   ([`framing`]); a stream that cannot be framed (no Content-Length,
//!   oversize) is closed. CRLF CRLF pings are answered with CRLF (RFC 5626).
//! - TLS: the trunk of an incoming connection is chosen by source address
//!   before the handshake and its CA verifies the client (see
//!   [`super::tls`]); sources of no TLS trunk are refused unhandshaked.
//!   Every handshake failure is one `warn` line with peer, trunk and reason.
//! - Sources: with [`Transports::set_source_filter`], UDP datagrams and TCP
//!   connections from addresses of no trunk are dropped at the door
//!   (counted, logged once a minute per source).
//! - Limits: `max_connections` (open and handshaking, both directions),
//!   `idle_timeout_s` (no traffic either way closes a connection),
//!   `handshake_timeout_s` (connect plus handshake, and any single write), a
//!   bounded inbound queue (UDP drops and counts when it is full; streams
//!   wait, which pushes back on the peer).
//!
//! [`Dest`] and [`TransportKind`] are the transaction layer's (re-exported
//! here). A `Dest` says where a message came from, or where to send one: for
//! TCP/TLS `conn` names the connection (answers go back on it, RFC 3261
//! 18.2.2); for UDP it names the socket the message arrived on, so the
//! answer leaves from the address the request reached.
//!
//! Dropping [`Transports`] stops every task and closes every socket.

pub mod framing;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    fmt, io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{Notify, mpsc, watch},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, warn};

pub use super::transaction::{Dest, TransportKind};

use self::framing::{Frame, FrameError, StreamFramer};
use super::{
    tls::{TlsSetup, TlsTarget, describe_error},
    trunk::SipConfig,
};

/// Inbound messages queued for the SIP layer before UDP starts dropping.
pub const INBOUND_QUEUE: usize = 1024;
/// Bytes read from a stream at a time.
const READ_CHUNK: usize = 16 * 1024;
/// A refused source is logged at most once per this period.
const REFUSED_LOG_PERIOD: Duration = Duration::from_secs(60);

/// A transport's name as written in the configuration and in logs.
pub fn kind_name(kind: TransportKind) -> &'static str {
    match kind {
        TransportKind::Udp => "udp",
        TransportKind::Tcp => "tcp",
        TransportKind::Tls => "tls",
    }
}

/// The port a SIP URI without one implies (RFC 3261 19.1.2).
pub fn default_port(kind: TransportKind) -> u16 {
    match kind {
        TransportKind::Tls => 5061,
        TransportKind::Udp | TransportKind::Tcp => 5060,
    }
}

fn ser_kind<S: serde::Serializer>(kind: &TransportKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind_name(*kind))
}

/// A message as received.
#[derive(Clone, Debug)]
pub struct Inbound {
    pub bytes: Bytes,
    pub from: Dest,
    /// Our address it arrived on.
    pub local: SocketAddr,
    /// TLS: the trunk the connection was accepted for (its source matched
    /// and, with `require_client_cert`, its CA verified the certificate) or
    /// opened to. `None` for UDP and TCP: look the source up in
    /// [`Trunks`](super::trunk::Trunks).
    pub trunk: Option<Arc<str>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("binding {} {addr}: {source}", kind_name(*kind))]
    Bind {
        kind: TransportKind,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("sip.listen_tls needs a TLS setup ([sip.tls])")]
    NoTls,
    #[error("no UDP socket can send to {0} (none of its address family)")]
    NoSocket(SocketAddr),
    #[error("TLS to {0} needs the trunk's TLS target")]
    NoTlsTarget(SocketAddr),
    #[error("message of {size} bytes is larger than max_message_size ({max})")]
    TooLarge { size: usize, max: usize },
    #[error("connection limit reached (sip.max_connections = {0})")]
    ConnectionLimit(usize),
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connecting to {0}: timed out")]
    Timeout(SocketAddr),
    #[error(
        "not connecting to {addr} for another {} ms: the last {failures} attempt(s) failed",
        retry_in.as_millis()
    )]
    Backoff {
        addr: SocketAddr,
        retry_in: Duration,
        failures: u32,
    },
    #[error("TLS handshake with {addr} (trunk {trunk}): {reason}")]
    Handshake {
        addr: SocketAddr,
        trunk: Arc<str>,
        reason: String,
    },
    #[error("sending to {addr} over {}: {source}", kind_name(*kind))]
    Send {
        addr: SocketAddr,
        kind: TransportKind,
        source: io::Error,
    },
}

pub type Result<T, E = TransportError> = std::result::Result<T, E>;

/// Counters since start (for metrics and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TransportStats {
    pub udp_received: u64,
    pub stream_received: u64,
    pub sent: u64,
    /// UDP datagrams or stream messages over `max_message_size`.
    pub oversize: u64,
    /// UDP datagrams dropped because the inbound queue was full.
    pub queue_full: u64,
    /// UDP datagrams from sources the source filter refuses.
    pub udp_refused_source: u64,
    /// Connections closed because the stream could not be framed.
    pub framing_errors: u64,
    pub keepalive_pings: u64,
    pub connections_accepted: u64,
    pub connections_opened: u64,
    pub connections_refused_limit: u64,
    /// TCP connections the source filter refuses, TLS connections from
    /// addresses of no TLS trunk.
    pub connections_refused_source: u64,
    pub connections_idle_closed: u64,
    pub tls_handshake_failures: u64,
    /// Messages refused at once because dialing their destination failed
    /// moments ago (see [`dial_backoff`]).
    pub dials_backed_off: u64,
}

#[derive(Default)]
struct Counters {
    udp_received: AtomicU64,
    stream_received: AtomicU64,
    sent: AtomicU64,
    oversize: AtomicU64,
    queue_full: AtomicU64,
    udp_refused_source: AtomicU64,
    framing_errors: AtomicU64,
    keepalive_pings: AtomicU64,
    connections_accepted: AtomicU64,
    connections_opened: AtomicU64,
    connections_refused_limit: AtomicU64,
    connections_refused_source: AtomicU64,
    connections_idle_closed: AtomicU64,
    tls_handshake_failures: AtomicU64,
    dials_backed_off: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> TransportStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            udp_received: g(&self.udp_received),
            stream_received: g(&self.stream_received),
            sent: g(&self.sent),
            oversize: g(&self.oversize),
            queue_full: g(&self.queue_full),
            udp_refused_source: g(&self.udp_refused_source),
            framing_errors: g(&self.framing_errors),
            keepalive_pings: g(&self.keepalive_pings),
            connections_accepted: g(&self.connections_accepted),
            connections_opened: g(&self.connections_opened),
            connections_refused_limit: g(&self.connections_refused_limit),
            connections_refused_source: g(&self.connections_refused_source),
            connections_idle_closed: g(&self.connections_idle_closed),
            tls_handshake_failures: g(&self.tls_handshake_failures),
            dials_backed_off: g(&self.dials_backed_off),
        }
    }
}

/// An open TCP or TLS connection, for listings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnectionInfo {
    pub id: u64,
    #[serde(serialize_with = "ser_kind")]
    pub kind: TransportKind,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub trunk: Option<String>,
    /// Opened by us (true) or accepted.
    pub outgoing: bool,
    pub idle: Duration,
}

/// Connections are found again by peer address, transport and (TLS) trunk.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ConnKey {
    kind: TransportKind,
    addr: SocketAddr,
    trunk: Option<Arc<str>>,
}

struct Conn {
    id: u64,
    key: ConnKey,
    local: SocketAddr,
    outgoing: bool,
    writer: tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Milliseconds since `Inner::epoch` of the last read or write.
    last_active: AtomicU64,
    closing: Notify,
    closed: AtomicBool,
}

impl Conn {
    fn dest(&self) -> Dest {
        Dest {
            addr: self.key.addr,
            transport: self.key.kind,
            conn: Some(self.id),
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.closing.notify_one();
    }

    async fn write(&self, inner: &Inner, bytes: &[u8]) -> io::Result<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(io::ErrorKind::NotConnected.into());
        }
        let mut w = self.writer.lock().await;
        let result = tokio::time::timeout(inner.handshake_timeout, async {
            w.write_all(bytes).await?;
            w.flush().await
        })
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out")));
        match &result {
            Ok(()) => inner.touch(self),
            Err(_) => self.close(),
        }
        result
    }
}

#[derive(Default)]
struct ConnTable {
    by_id: HashMap<u64, Arc<Conn>>,
    by_key: HashMap<ConnKey, u64>,
}

struct Inner {
    udp: Vec<Arc<UdpSocket>>,
    udp_local: Vec<SocketAddr>,
    tcp_local: Vec<SocketAddr>,
    tls_local: Vec<SocketAddr>,
    tx: mpsc::Sender<Inbound>,
    tls: Option<TlsSetup>,
    max_message_size: usize,
    max_connections: usize,
    idle_timeout: Duration,
    handshake_timeout: Duration,
    conns: Mutex<ConnTable>,
    /// One connection attempt per key at a time.
    dialing: Mutex<HashMap<ConnKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Places whose last dials failed, and until when not to dial them.
    backoff: Mutex<HashMap<ConnKey, DialBackoff>>,
    /// Connections open or handshaking.
    open: AtomicUsize,
    next_id: AtomicU64,
    counters: Counters,
    epoch: Instant,
    shutdown: watch::Receiver<()>,
    refused_logged: Mutex<HashMap<IpAddr, Instant>>,
    source_filter: RwLock<Option<SourceFilter>>,
}

/// Decides whether an address may send SIP over UDP or open a TCP
/// connection (see [`Transports::set_source_filter`]).
pub type SourceFilter = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Holds one of `max_connections` places until dropped.
struct Slot(Arc<Inner>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Inner {
    fn take_slot(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_connections).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self, c: &Conn) {
        c.last_active.store(self.now_ms(), Ordering::Relaxed);
    }

    fn idle_for(&self, c: &Conn) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(c.last_active.load(Ordering::Relaxed)),
        )
    }

    fn conn(&self, id: u64) -> Option<Arc<Conn>> {
        lock(&self.conns)
            .by_id
            .get(&id)
            .filter(|c| !c.closed.load(Ordering::Relaxed))
            .cloned()
    }

    fn conn_by_key(&self, key: &ConnKey) -> Option<Arc<Conn>> {
        let t = lock(&self.conns);
        t.by_key
            .get(key)
            .and_then(|id| t.by_id.get(id))
            .filter(|c| !c.closed.load(Ordering::Relaxed))
            .cloned()
    }

    fn register(
        &self,
        key: ConnKey,
        local: SocketAddr,
        outgoing: bool,
        writer: Box<dyn AsyncWrite + Send + Unpin>,
    ) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            key,
            local,
            outgoing,
            writer: tokio::sync::Mutex::new(writer),
            last_active: AtomicU64::new(self.now_ms()),
            closing: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let mut t = lock(&self.conns);
        t.by_id.insert(conn.id, conn.clone());
        t.by_key.insert(conn.key.clone(), conn.id);
        conn
    }

    fn unregister(&self, conn: &Conn) {
        conn.closed.store(true, Ordering::Relaxed);
        let mut t = lock(&self.conns);
        t.by_id.remove(&conn.id);
        if t.by_key.get(&conn.key) == Some(&conn.id) {
            t.by_key.remove(&conn.key);
        }
    }

    /// True when `ip` was not logged as refused within the last minute.
    fn should_log_refused(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut m = lock(&self.refused_logged);
        if m.len() >= 4096 {
            m.retain(|_, t| now.duration_since(*t) < REFUSED_LOG_PERIOD);
            if m.len() >= 4096 {
                m.clear();
            }
        }
        match m.get(&ip) {
            Some(t) if now.duration_since(*t) < REFUSED_LOG_PERIOD => false,
            _ => {
                m.insert(ip, now);
                true
            }
        }
    }

    fn source_allowed(&self, ip: IpAddr) -> bool {
        match &*self.source_filter.read().unwrap_or_else(|p| p.into_inner()) {
            Some(f) => f(ip),
            None => true,
        }
    }

    fn handshake_failed(&self, peer: SocketAddr, trunk: &str, direction: &str, reason: &str) {
        bump(&self.counters.tls_handshake_failures);
        warn!(%peer, trunk, direction, reason, "TLS handshake failed");
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The SIP transports of the relay.
pub struct Transports {
    inner: Arc<Inner>,
    /// Dropping it tells every task to stop.
    _shutdown: watch::Sender<()>,
}

impl fmt::Debug for Transports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transports")
            .field("local", &self.local_addrs())
            .finish_non_exhaustive()
    }
}

impl Transports {
    /// Binds every listener of `cfg` (an error names the address) and starts
    /// receiving. `tls` is needed when `cfg.listen_tls` is not empty, and to
    /// open TLS connections.
    pub async fn start(
        cfg: &SipConfig,
        tls: Option<TlsSetup>,
    ) -> Result<(Self, mpsc::Receiver<Inbound>)> {
        if !cfg.listen_tls.is_empty() && tls.is_none() {
            return Err(TransportError::NoTls);
        }
        let bind_err = |kind, addr| move |source| TransportError::Bind { kind, addr, source };
        let mut udp = Vec::new();
        let mut udp_local = Vec::new();
        for &addr in &cfg.listen_udp {
            let s = UdpSocket::bind(addr)
                .await
                .map_err(bind_err(TransportKind::Udp, addr))?;
            udp_local.push(s.local_addr().map_err(bind_err(TransportKind::Udp, addr))?);
            udp.push(Arc::new(s));
        }
        let mut listeners = Vec::new();
        for (kind, list) in [
            (TransportKind::Tcp, &cfg.listen_tcp),
            (TransportKind::Tls, &cfg.listen_tls),
        ] {
            for &addr in list {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(bind_err(kind, addr))?;
                let local = l.local_addr().map_err(bind_err(kind, addr))?;
                listeners.push((kind, local, l));
            }
        }
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let (shutdown_tx, shutdown) = watch::channel(());
        let local_of = |k| {
            listeners
                .iter()
                .filter(|(kind, _, _)| *kind == k)
                .map(|(_, a, _)| *a)
                .collect()
        };
        let inner = Arc::new(Inner {
            udp,
            udp_local,
            tcp_local: local_of(TransportKind::Tcp),
            tls_local: local_of(TransportKind::Tls),
            tx,
            tls,
            max_message_size: cfg.max_message_size,
            max_connections: cfg.max_connections.max(1),
            idle_timeout: cfg.idle_timeout(),
            handshake_timeout: cfg.handshake_timeout(),
            conns: Mutex::default(),
            dialing: Mutex::default(),
            backoff: Mutex::default(),
            open: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            counters: Counters::default(),
            epoch: Instant::now(),
            shutdown,
            refused_logged: Mutex::default(),
            source_filter: RwLock::new(None),
        });
        for idx in 0..inner.udp.len() {
            tokio::spawn(udp_loop(inner.clone(), idx));
        }
        for (kind, _, l) in listeners {
            tokio::spawn(accept_loop(inner.clone(), l, kind));
        }
        Ok((
            Transports {
                inner,
                _shutdown: shutdown_tx,
            },
            rx,
        ))
    }

    /// The bound addresses (with the ports actually chosen for port 0).
    pub fn local_addrs(&self) -> Vec<(TransportKind, SocketAddr)> {
        let i = &self.inner;
        [
            (TransportKind::Udp, &i.udp_local),
            (TransportKind::Tcp, &i.tcp_local),
            (TransportKind::Tls, &i.tls_local),
        ]
        .into_iter()
        .flat_map(|(k, v)| v.iter().map(move |a| (k, *a)))
        .collect()
    }

    /// The first bound address of a transport.
    pub fn local_addr(&self, kind: TransportKind) -> Option<SocketAddr> {
        self.local_addrs()
            .into_iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, a)| a)
    }

    pub fn tls(&self) -> Option<&TlsSetup> {
        self.inner.tls.as_ref()
    }

    pub fn stats(&self) -> TransportStats {
        self.inner.counters.snapshot()
    }

    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let conns: Vec<Arc<Conn>> = lock(&self.inner.conns).by_id.values().cloned().collect();
        let mut out: Vec<ConnectionInfo> = conns
            .iter()
            .map(|c| ConnectionInfo {
                id: c.id,
                kind: c.key.kind,
                peer: c.key.addr,
                local: c.local,
                trunk: c.key.trunk.as_deref().map(str::to_owned),
                outgoing: c.outgoing,
                idle: self.inner.idle_for(c),
            })
            .collect();
        out.sort_by_key(|c| c.id);
        out
    }

    /// Drops UDP datagrams and refuses TCP connections from addresses for
    /// which `filter` is false (counted, logged once a minute per source),
    /// before they reach the SIP layer or take a connection slot. TLS
    /// connections are always matched to a TLS trunk by source instead.
    /// `None` (the default) lets every source through, e.g.
    /// `Arc::new(move |ip| trunks.trunk_for_source(ip).is_some())`.
    pub fn set_source_filter(&self, filter: Option<SourceFilter>) {
        *self
            .inner
            .source_filter
            .write()
            .unwrap_or_else(|p| p.into_inner()) = filter;
    }

    /// Closes a TCP/TLS connection; false if it was not open.
    pub fn close(&self, conn: u64) -> bool {
        match self.inner.conn(conn) {
            Some(c) => {
                c.close();
                true
            }
            None => false,
        }
    }

    /// Sends one message.
    ///
    /// - UDP: from the socket `to.conn` names (the one a request arrived
    ///   on), else from the socket whose address the kernel would pick for
    ///   `to.addr` among those of its family.
    /// - TCP/TLS: on connection `to.conn` when it is set and alive; else on
    ///   an open connection to `to.addr` (for TLS: opened for the same
    ///   trunk); else on a new connection (TLS: verified against
    ///   `tls_target`'s CA and server name, presenting our certificate).
    ///
    /// Returns the destination actually used, with its connection id.
    pub async fn send(
        &self,
        to: &Dest,
        bytes: &[u8],
        tls_target: Option<&TlsTarget>,
    ) -> Result<Dest> {
        let inner = &self.inner;
        if bytes.len() > inner.max_message_size {
            return Err(TransportError::TooLarge {
                size: bytes.len(),
                max: inner.max_message_size,
            });
        }
        let addr = canonical(to.addr);
        let used = match to.transport {
            TransportKind::Udp => self.send_udp(addr, to.conn, bytes).await?,
            TransportKind::Tcp | TransportKind::Tls => {
                self.send_stream(to, addr, bytes, tls_target).await?
            }
        };
        bump(&inner.counters.sent);
        Ok(used)
    }

    async fn send_udp(&self, addr: SocketAddr, conn: Option<u64>, bytes: &[u8]) -> Result<Dest> {
        let inner = &self.inner;
        let idx = match conn.and_then(|c| usize::try_from(c).ok()) {
            Some(i) if i < inner.udp.len() && fits(inner.udp_local[i], addr) => i,
            _ => pick_udp(&inner.udp_local, addr).ok_or(TransportError::NoSocket(addr))?,
        };
        let target = match (inner.udp_local[idx].ip(), addr.ip()) {
            (IpAddr::V6(_), IpAddr::V4(v4)) => {
                SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), addr.port())
            }
            _ => addr,
        };
        inner.udp[idx]
            .send_to(bytes, target)
            .await
            .map_err(|source| TransportError::Send {
                addr,
                kind: TransportKind::Udp,
                source,
            })?;
        Ok(Dest {
            addr,
            transport: TransportKind::Udp,
            conn: Some(idx as u64),
        })
    }

    async fn send_stream(
        &self,
        to: &Dest,
        addr: SocketAddr,
        bytes: &[u8],
        tls_target: Option<&TlsTarget>,
    ) -> Result<Dest> {
        let inner = &self.inner;
        // 1. The connection named.
        if let Some(c) = to.conn.and_then(|id| inner.conn(id))
            && c.key.kind == to.transport
        {
            match c.write(inner, bytes).await {
                Ok(()) => return Ok(c.dest()),
                Err(e) => {
                    debug!(conn = c.id, peer = %c.key.addr, error = %e, "write failed, trying another connection")
                }
            }
        }
        let key = ConnKey {
            kind: to.transport,
            addr,
            trunk: match to.transport {
                TransportKind::Tls => tls_target.map(|t| t.trunk.clone()),
                _ => None,
            },
        };
        // 2. An open connection to the same place.
        if let Some(c) = inner.conn_by_key(&key)
            && c.write(inner, bytes).await.is_ok()
        {
            return Ok(c.dest());
        }
        // 3. A new one; concurrent senders to the same place wait for it.
        let gate = lock(&inner.dialing).entry(key.clone()).or_default().clone();
        let result = async {
            let _turn = gate.lock().await;
            if let Some(c) = inner.conn_by_key(&key)
                && c.write(inner, bytes).await.is_ok()
            {
                return Ok(c);
            }
            if let Some(b) = lock(&inner.backoff).get(&key) {
                let now = Instant::now();
                if now < b.until {
                    bump(&inner.counters.dials_backed_off);
                    return Err(TransportError::Backoff {
                        addr,
                        retry_in: b.until - now,
                        failures: b.failures,
                    });
                }
            }
            let dialed = self.dial(&key, tls_target).await;
            {
                let mut backoff = lock(&inner.backoff);
                match &dialed {
                    Ok(_) => {
                        backoff.remove(&key);
                    }
                    // Our own connection limit says nothing about the peer.
                    Err(TransportError::ConnectionLimit(_)) => {}
                    Err(_) => {
                        let b = backoff.entry(key.clone()).or_insert(DialBackoff {
                            failures: 0,
                            until: Instant::now(),
                        });
                        b.failures = b.failures.saturating_add(1);
                        b.until = Instant::now() + dial_backoff(b.failures);
                    }
                }
            }
            let c = dialed?;
            c.write(inner, bytes)
                .await
                .map_err(|source| TransportError::Send {
                    addr,
                    kind: to.transport,
                    source,
                })?;
            Ok(c)
        }
        .await;
        {
            let mut d = lock(&inner.dialing);
            if Arc::strong_count(&gate) <= 2 {
                d.remove(&key);
            }
        }
        result.map(|c| c.dest())
    }

    async fn dial(&self, key: &ConnKey, target: Option<&TlsTarget>) -> Result<Arc<Conn>> {
        let inner = &self.inner;
        let addr = key.addr;
        let target = match key.kind {
            TransportKind::Tls => Some(target.ok_or(TransportError::NoTlsTarget(addr))?),
            _ => None,
        };
        let Some(slot) = inner.take_slot() else {
            bump(&inner.counters.connections_refused_limit);
            return Err(TransportError::ConnectionLimit(inner.max_connections));
        };
        let connect = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|source| TransportError::Connect { addr, source })?;
            let _ = tcp.set_nodelay(true);
            let local = tcp
                .local_addr()
                .map_err(|source| TransportError::Connect { addr, source })?;
            type Halves = (
                Box<dyn AsyncRead + Send + Unpin>,
                Box<dyn AsyncWrite + Send + Unpin>,
            );
            let halves: Halves = match target {
                None => {
                    let (r, w) = tcp.into_split();
                    (Box::new(r), Box::new(w))
                }
                Some(t) => {
                    let connector = TlsConnector::from(t.config.clone());
                    match connector.connect(t.server_name.clone(), tcp).await {
                        Ok(s) => {
                            let (r, w) = tokio::io::split(s);
                            (Box::new(r), Box::new(w))
                        }
                        Err(e) => {
                            let reason = describe_error(&e);
                            inner.handshake_failed(addr, &t.trunk, "outgoing", &reason);
                            return Err(TransportError::Handshake {
                                addr,
                                trunk: t.trunk.clone(),
                                reason,
                            });
                        }
                    }
                }
            };
            Ok((local, halves))
        };
        let (local, (rd, wr)) = match tokio::time::timeout(inner.handshake_timeout, connect).await {
            Ok(r) => r?,
            Err(_) => {
                if let Some(t) = target {
                    inner.handshake_failed(
                        addr,
                        &t.trunk,
                        "outgoing",
                        "connect and handshake timed out",
                    );
                }
                return Err(TransportError::Timeout(addr));
            }
        };
        bump(&inner.counters.connections_opened);
        let conn = inner.register(key.clone(), local, true, wr);
        debug!(conn = conn.id, peer = %addr, kind = kind_name(key.kind), "connection opened");
        tokio::spawn(run_conn(inner.clone(), conn.clone(), rd, slot));
        Ok(conn)
    }
}

/// A place whose last dials failed.
struct DialBackoff {
    failures: u32,
    until: Instant,
}

/// How long not to dial a place again after its `failures`-th consecutive
/// failed dial: 1 s, doubling, at most 16 s. Without it every message queued
/// for a peer that refuses or drops handshakes starts a dial of its own (a
/// service out of memory saw 172 handshakes in a few seconds); with it they
/// fail at once (the B2BUA answers 503) until the next attempt is due, and a
/// peer that is back is reached within 16 s (the trunk's OPTIONS ping dials
/// too).
pub fn dial_backoff(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.saturating_sub(1).min(4))
}

/// Can a socket bound to `local` send to `to`? (A socket bound to `[::]`
/// is dual-stack and reaches IPv4 through mapped addresses.)
pub(crate) fn fits(local: SocketAddr, to: SocketAddr) -> bool {
    match (local.ip(), to.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => true,
        (IpAddr::V6(l), IpAddr::V4(_)) => l.is_unspecified(),
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}

/// The source address the routing table picks toward `to`: a connected,
/// never used UDP socket tells; nothing is sent.
pub fn route_source(to: IpAddr) -> Option<IpAddr> {
    let probe_bind: SocketAddr = match to {
        IpAddr::V4(_) => (IpAddr::from([0u8; 4]), 0).into(),
        IpAddr::V6(_) => (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).into(),
    };
    std::net::UdpSocket::bind(probe_bind)
        .and_then(|s| s.connect((to, 9)).and_then(|()| s.local_addr()))
        .map(|a| a.ip().to_canonical())
        .ok()
}

/// The UDP socket to send a new request from: the only one that fits, or
/// the one bound to the address the kernel would use as source towards
/// `to`, or one bound to the unspecified address, or the first that fits.
fn pick_udp(locals: &[SocketAddr], to: SocketAddr) -> Option<usize> {
    let fitting: Vec<usize> = (0..locals.len()).filter(|&i| fits(locals[i], to)).collect();
    if fitting.len() <= 1 {
        return fitting.first().copied();
    }
    route_source(to.ip())
        .and_then(|ip| {
            fitting
                .iter()
                .copied()
                .find(|&i| locals[i].ip().to_canonical() == ip)
        })
        .or_else(|| {
            fitting
                .iter()
                .copied()
                .find(|&i| locals[i].ip().is_unspecified())
        })
        .or(fitting.first().copied())
}

async fn udp_loop(inner: Arc<Inner>, idx: usize) {
    let sock = inner.udp[idx].clone();
    let local = inner.udp_local[idx];
    let mut shutdown = inner.shutdown.clone();
    // One byte more than allowed, so an oversize datagram shows as one.
    let mut buf = vec![0u8; (inner.max_message_size + 1).min(65536)];
    loop {
        let (n, from) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(v) => v,
                Err(e) => {
                    // ICMP errors reported on the socket and the like: not fatal.
                    debug!(%local, error = %e, "UDP receive error");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        if n > inner.max_message_size {
            bump(&inner.counters.oversize);
            debug!(%local, %from, "oversize UDP datagram dropped");
            continue;
        }
        let data = &buf[..n];
        if data.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if !inner.source_allowed(from.ip().to_canonical()) {
            bump(&inner.counters.udp_refused_source);
            if inner.should_log_refused(from.ip().to_canonical()) {
                warn!(peer = %from, %local, "UDP from a source of no trunk dropped (logged once a minute per source)");
            }
            continue;
        }
        bump(&inner.counters.udp_received);
        let msg = Inbound {
            bytes: Bytes::copy_from_slice(data),
            from: Dest {
                addr: canonical(from),
                transport: TransportKind::Udp,
                conn: Some(idx as u64),
            },
            local,
            trunk: None,
        };
        match inner.tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => bump(&inner.counters.queue_full),
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener, kind: TransportKind) {
    let mut shutdown = inner.shutdown.clone();
    let listen = listener.local_addr().ok();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    warn!(listen = ?listen, kind = kind_name(kind), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let peer = canonical(peer);
        let tls = if kind == TransportKind::Tls {
            match inner.tls.as_ref().and_then(|t| t.incoming_for(peer.ip())) {
                Some(v) => Some(v),
                None => {
                    bump(&inner.counters.connections_refused_source);
                    if inner.should_log_refused(peer.ip()) {
                        warn!(%peer, "TLS connection refused: source is not a TLS trunk's (logged once a minute per source)");
                    }
                    continue;
                }
            }
        } else {
            if !inner.source_allowed(peer.ip()) {
                bump(&inner.counters.connections_refused_source);
                if inner.should_log_refused(peer.ip()) {
                    warn!(%peer, "TCP connection refused: source of no trunk (logged once a minute per source)");
                }
                continue;
            }
            None
        };
        let Some(slot) = inner.take_slot() else {
            bump(&inner.counters.connections_refused_limit);
            if inner.should_log_refused(peer.ip()) {
                warn!(%peer, kind = kind_name(kind), max = inner.max_connections, "connection refused: sip.max_connections reached");
            }
            continue;
        };
        bump(&inner.counters.connections_accepted);
        let _ = tcp.set_nodelay(true);
        let Ok(local) = tcp.local_addr() else {
            continue;
        };
        tokio::spawn(accept_one(inner.clone(), tcp, peer, local, tls, slot));
    }
}

async fn accept_one(
    inner: Arc<Inner>,
    tcp: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<(Arc<str>, Arc<rustls::ServerConfig>)>,
    slot: Slot,
) {
    let (key, rd, wr): (
        ConnKey,
        Box<dyn AsyncRead + Send + Unpin>,
        Box<dyn AsyncWrite + Send + Unpin>,
    ) = match tls {
        None => {
            let (r, w) = tcp.into_split();
            let key = ConnKey {
                kind: TransportKind::Tcp,
                addr: peer,
                trunk: None,
            };
            (key, Box::new(r), Box::new(w))
        }
        Some((trunk, config)) => {
            let accept = TlsAcceptor::from(config).accept(tcp);
            let mut shutdown = inner.shutdown.clone();
            let stream = tokio::select! {
                r = tokio::time::timeout(inner.handshake_timeout, accept) => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        inner.handshake_failed(peer, &trunk, "incoming", &describe_error(&e));
                        return;
                    }
                    Err(_) => {
                        inner.handshake_failed(peer, &trunk, "incoming", "handshake timed out");
                        return;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let (r, w) = tokio::io::split(stream);
            let key = ConnKey {
                kind: TransportKind::Tls,
                addr: peer,
                trunk: Some(trunk),
            };
            (key, Box::new(r), Box::new(w))
        }
    };
    let conn = inner.register(key, local, false, wr);
    debug!(conn = conn.id, %peer, kind = kind_name(conn.key.kind), "connection accepted");
    run_conn(inner, conn, rd, slot).await;
}

/// Reads one connection until it closes, is idle too long, or cannot be
/// framed; then unregisters it.
async fn run_conn(
    inner: Arc<Inner>,
    conn: Arc<Conn>,
    mut rd: Box<dyn AsyncRead + Send + Unpin>,
    _slot: Slot,
) {
    let mut shutdown = inner.shutdown.clone();
    let mut framer = StreamFramer::new(inner.max_message_size);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut received_any = false;
    let peer = conn.key.addr;
    let why: &str = 'conn: loop {
        let left = inner.idle_timeout.saturating_sub(inner.idle_for(&conn));
        let n = tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) => break 'conn "closed by peer",
                Ok(n) => n,
                Err(e) => {
                    if conn.key.kind == TransportKind::Tls
                        && e.get_ref().is_some_and(|e| e.is::<rustls::Error>())
                    {
                        // With TLS 1.3 a server's verdict on our client
                        // certificate arrives after our side of the handshake.
                        let trunk = conn.key.trunk.as_deref().unwrap_or("?");
                        let reason = describe_error(&e);
                        if !received_any && conn.outgoing {
                            inner.handshake_failed(peer, trunk, "outgoing", &reason);
                        } else {
                            warn!(%peer, trunk, reason, "TLS connection failed");
                        }
                    } else {
                        debug!(conn = conn.id, %peer, error = %e, "read error");
                    }
                    break 'conn "read error";
                }
            },
            _ = tokio::time::sleep(left) => {
                if inner.idle_for(&conn) >= inner.idle_timeout {
                    bump(&inner.counters.connections_idle_closed);
                    break 'conn "idle";
                }
                continue;
            }
            _ = conn.closing.notified() => break 'conn "closed",
            _ = shutdown.changed() => break 'conn "shutdown",
        };
        received_any = true;
        inner.touch(&conn);
        framer.push(&buf[..n]);
        loop {
            match framer.next_frame() {
                Ok(None) => break,
                Ok(Some(Frame::Ping)) => {
                    bump(&inner.counters.keepalive_pings);
                    if conn.write(&inner, b"\r\n").await.is_err() {
                        break 'conn "write error";
                    }
                }
                Ok(Some(Frame::Message(bytes))) => {
                    bump(&inner.counters.stream_received);
                    let msg = Inbound {
                        bytes,
                        from: conn.dest(),
                        local: conn.local,
                        trunk: conn.key.trunk.clone(),
                    };
                    if inner.tx.send(msg).await.is_err() {
                        break 'conn "shutdown";
                    }
                }
                Err(e) => {
                    match e {
                        FrameError::TooLarge { .. } => bump(&inner.counters.oversize),
                        _ => bump(&inner.counters.framing_errors),
                    }
                    warn!(%peer, kind = kind_name(conn.key.kind), conn = conn.id, error = %e, "closing connection: cannot frame the stream");
                    break 'conn "framing error";
                }
            }
        }
    };
    debug!(conn = conn.id, %peer, why, "connection closed");
    inner.unregister(&conn);
    let mut w = conn.writer.lock().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
}
