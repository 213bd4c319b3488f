//! SIP configuration: `[sip]` (listeners, limits, our TLS identity) and
//! `[[trunk]]` (the peers the relay talks to), validated into a [`Trunks`]
//! table with errors that name the field (`trunk[1].tls.ca: ...`), and the
//! source-address lookup that says which trunk a message or connection
//! belongs to.
//!
//! ```toml
//! [sip]
//! listen_udp = ["192.0.2.1:5060"]
//! listen_tls = ["198.51.100.1:5061"]
//! [sip.tls]
//! cert = "/etc/relay/relay.pem"
//! key = "/etc/relay/relay.key"
//!
//! [[trunk]]
//! name = "voicemail"
//! transport = "tls"
//! peer = "voicemail.example.net:5061"
//! interface = "outside"
//! [trunk.tls]
//! ca = "/etc/relay/service-ca.pem"
//! ```
//!
//! No I/O here except [`Trunks::resolve`], which looks up peer host names.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;
use rustls_pki_types::ServerName;
use serde::Deserialize;

use super::transport::{Dest, TransportKind, default_port, kind_name};

/// `[sip]`: where the relay listens for SIP and the limits that protect it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// UDP sockets to listen on.
    pub listen_udp: Vec<SocketAddr>,
    /// TCP listeners.
    pub listen_tcp: Vec<SocketAddr>,
    /// TLS listeners (need `[sip.tls]`).
    pub listen_tls: Vec<SocketAddr>,
    /// Largest SIP message accepted or sent, headers and body, in bytes.
    pub max_message_size: usize,
    /// INVITEs per second accepted from one source address; the excess is
    /// answered 503 with Retry-After. 0 turns the limit off.
    pub invite_rate_per_source: u32,
    /// Most TCP and TLS connections open at once, incoming and outgoing
    /// (handshakes in progress included).
    pub max_connections: usize,
    /// A TCP/TLS connection with no traffic in either direction for this
    /// long (seconds) is closed.
    pub idle_timeout_s: u64,
    /// Time allowed for a TCP connect plus TLS handshake, and for one write
    /// on a connection (seconds).
    pub handshake_timeout_s: u64,
    /// Our certificate and key, presented as TLS server and as TLS client.
    pub tls: Option<TlsIdentityConfig>,
    /// An outgoing INVITE unanswered this long (seconds) is cancelled and
    /// the caller gets 408.
    pub ring_timeout_s: u64,
}

pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 65535;

impl Default for SipConfig {
    fn default() -> Self {
        Self {
            listen_udp: Vec::new(),
            listen_tcp: Vec::new(),
            listen_tls: Vec::new(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            invite_rate_per_source: 20,
            max_connections: 1024,
            idle_timeout_s: 600,
            handshake_timeout_s: 10,
            tls: None,
            ring_timeout_s: 120,
        }
    }
}

impl SipConfig {
    /// True when any SIP listener is configured.
    pub fn listens(&self) -> bool {
        !(self.listen_udp.is_empty() && self.listen_tcp.is_empty() && self.listen_tls.is_empty())
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_s)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_s)
    }

    /// Checks `[sip]` alone; [`Trunks::new`] checks it against the trunks.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.ring_timeout_s == 0 {
            return Err(FieldError::new(
                "sip.ring_timeout_s",
                "must be at least 1 second",
            ));
        }
        if !(MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(&self.max_message_size) {
            return Err(FieldError::new(
                "sip.max_message_size",
                format!(
                    "{} is outside {MIN_MESSAGE_SIZE}..={MAX_MESSAGE_SIZE}",
                    self.max_message_size
                ),
            ));
        }
        if self.max_connections == 0 {
            return Err(FieldError::new("sip.max_connections", "must be at least 1"));
        }
        if self.idle_timeout_s == 0 {
            return Err(FieldError::new(
                "sip.idle_timeout_s",
                "must be at least 1 second",
            ));
        }
        if self.handshake_timeout_s == 0 || self.handshake_timeout_s > 300 {
            return Err(FieldError::new(
                "sip.handshake_timeout_s",
                format!("{} is outside 1..=300", self.handshake_timeout_s),
            ));
        }
        for (name, list) in [
            ("listen_udp", &self.listen_udp),
            ("listen_tcp", &self.listen_tcp),
            ("listen_tls", &self.listen_tls),
        ] {
            let mut seen = HashSet::new();
            for (j, addr) in list.iter().enumerate() {
                if addr.ip().is_multicast() {
                    return Err(FieldError::new(
                        format!("sip.{name}[{j}]"),
                        format!("{addr} is a multicast address"),
                    ));
                }
                if !seen.insert(addr) {
                    return Err(FieldError::new(
                        format!("sip.{name}[{j}]"),
                        format!("{addr} is listed twice"),
                    ));
                }
            }
        }
        // TCP and TLS listeners are both TCP sockets: one address cannot be both.
        for (j, addr) in self.listen_tls.iter().enumerate() {
            if addr.port() != 0 && self.listen_tcp.contains(addr) {
                return Err(FieldError::new(
                    format!("sip.listen_tls[{j}]"),
                    format!("{addr} is also in sip.listen_tcp"),
                ));
            }
        }
        if let Some(tls) = &self.tls {
            if tls.cert.as_os_str().is_empty() {
                return Err(FieldError::new("sip.tls.cert", "must not be empty"));
            }
            if tls.key.as_os_str().is_empty() {
                return Err(FieldError::new("sip.tls.key", "must not be empty"));
            }
        } else if !self.listen_tls.is_empty() {
            return Err(FieldError::new(
                "sip.tls",
                "sip.listen_tls needs [sip.tls] (cert and key)",
            ));
        }
        Ok(())
    }
}

const MIN_MESSAGE_SIZE: usize = 1024;
const MAX_MESSAGE_SIZE: usize = 1 << 20;

/// `[sip.tls]`: our certificate chain and private key (PEM files).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsIdentityConfig {
    /// Certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Private key of the leaf (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// One `[[trunk]]` as written in the file; [`Trunks::new`] checks it and
/// turns it into a [`Trunk`].
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    pub name: String,
    /// "udp", "tcp" or "tls".
    #[serde(deserialize_with = "de_transport")]
    pub transport: TransportKind,
    /// "192.0.2.10:5060", "[2001:db8::10]:5060", "host.example.net:5061";
    /// without a port, 5060 (udp, tcp) or 5061 (tls).
    pub peer: String,
    /// Media interface (`[[interface]]` name) this trunk's media uses.
    pub interface: String,
    /// Networks SIP from this trunk may come from ("192.0.2.0/24", or a bare
    /// address). Empty: the peer's own address(es).
    #[serde(default)]
    pub sources: Vec<String>,
    /// Trunk that INVITEs from this trunk are sent to.
    #[serde(default)]
    pub route_to: Option<String>,
    /// OPTIONS keep-alive interval in seconds; 0 turns it off.
    #[serde(default = "default_options_interval")]
    pub options_interval_s: u64,
    /// Most concurrent calls on this trunk (either direction); absent: no
    /// limit besides `[media] max_calls`.
    #[serde(default)]
    pub max_calls: Option<u32>,
    /// Headers copied from an INVITE arriving on this trunk into the INVITE
    /// sent on the other side (e.g. Diversion, History-Info).
    #[serde(default)]
    pub pass_headers: Vec<String>,
    /// TLS settings; required for, and only allowed with, transport "tls".
    #[serde(default)]
    pub tls: Option<TrunkTlsConfig>,
    /// SRTP on this trunk's media legs: "required", "optional" or "off";
    /// absent: the media interface's `srtp`.
    #[serde(default)]
    pub srtp: Option<crate::media::SrtpPolicy>,
}

fn de_transport<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TransportKind, D::Error> {
    let s = String::deserialize(d)?;
    match s.as_str() {
        "udp" => Ok(TransportKind::Udp),
        "tcp" => Ok(TransportKind::Tcp),
        "tls" => Ok(TransportKind::Tls),
        _ => Err(serde::de::Error::custom(format!(
            "transport {s:?}: expected \"udp\", \"tcp\" or \"tls\""
        ))),
    }
}

fn default_options_interval() -> u64 {
    30
}

/// `[trunk.tls]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrunkTlsConfig {
    /// Trust anchors (PEM, one or more certificates) for the peer's
    /// certificate, as client and as server.
    pub ca: PathBuf,
    /// Name the peer's certificate must carry on connections we open.
    /// Default: the peer's host name, or its IP address.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Incoming connections from this trunk must present a certificate that
    /// `ca` verifies (mutual TLS). Default: true.
    #[serde(default = "yes")]
    pub require_client_cert: bool,
}

fn yes() -> bool {
    true
}

/// A configuration error naming its field, e.g. `trunk[1].tls.ca`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Host part of a trunk's peer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PeerHost {
    Addr(IpAddr),
    /// A DNS name, resolved at start ([`Trunks::resolve`]) and again when
    /// sending to it fails.
    Name(String),
}

impl fmt::Display for PeerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerHost::Addr(IpAddr::V6(a)) => write!(f, "[{a}]"),
            PeerHost::Addr(a) => write!(f, "{a}"),
            PeerHost::Name(n) => f.write_str(n),
        }
    }
}

/// A trunk's peer: host and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub host: PeerHost,
    pub port: u16,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Peer {
    /// Parses "addr:port", "[v6]:port", "host:port", or any of these without
    /// the port (then `default_port`).
    pub fn parse(s: &str, default_port: u16) -> Result<Peer, String> {
        let s = s.trim();
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Self::checked(PeerHost::Addr(sa.ip()), sa.port());
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Self::checked(PeerHost::Addr(ip), default_port);
        }
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'))
            && let Ok(ip) = inner.parse::<IpAddr>()
        {
            return Self::checked(PeerHost::Addr(ip), default_port);
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{s:?}: {p:?} is not a port"))?,
            ),
            None => (s, default_port),
        };
        if !is_host_name(host) {
            return Err(format!(
                "{s:?} is not an address, address:port, host or host:port"
            ));
        }
        Self::checked(PeerHost::Name(host.to_ascii_lowercase()), port)
    }

    fn checked(host: PeerHost, port: u16) -> Result<Peer, String> {
        if port == 0 {
            return Err("port 0 is not a peer port".into());
        }
        if let PeerHost::Addr(ip) = host
            && (ip.is_unspecified() || ip.is_multicast())
        {
            return Err(format!("{ip} is not a unicast address"));
        }
        Ok(Peer { host, port })
    }

    /// The peer's address when it is written as one.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self.host {
            PeerHost::Addr(ip) => Some(SocketAddr::new(ip, self.port)),
            PeerHost::Name(_) => None,
        }
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and hyphens,
/// at least one letter somewhere (so "300.1.1.1" is not a name).
fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().any(|b| b.is_ascii_alphabetic())
        && s.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `[trunk.tls]`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrunkTls {
    pub ca: PathBuf,
    /// Checked against the peer's certificate on connections we open.
    pub server_name: ServerName<'static>,
    pub require_client_cert: bool,
}

/// A checked trunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trunk {
    pub name: Arc<str>,
    pub transport: TransportKind,
    pub peer: Peer,
    pub interface: String,
    /// Configured source networks; empty means the peer's addresses
    /// ([`Trunk::effective_sources`]).
    pub sources: Vec<IpNet>,
    /// Index (in [`Trunks`]) of the trunk INVITEs from this one go to.
    pub route_to: Option<usize>,
    pub options_interval: Option<Duration>,
    pub max_calls: Option<u32>,
    pub pass_headers: Vec<String>,
    pub tls: Option<TrunkTls>,
    /// SRTP policy of this trunk's media legs (None: the interface's).
    pub srtp: Option<crate::media::SrtpPolicy>,
    /// Addresses a host-name peer resolved to ([`Trunks::resolve`]).
    resolved: Vec<SocketAddr>,
}

impl Trunk {
    /// Where to send requests: the literal address, or what the host name
    /// resolved to (empty before [`Trunks::resolve`] or when it failed).
    pub fn peer_addrs(&self) -> Vec<SocketAddr> {
        match self.peer.addr() {
            Some(a) => vec![a],
            None => self.resolved.clone(),
        }
    }

    /// Destination for a new request to this trunk (the first peer address).
    pub fn dest(&self) -> Option<Dest> {
        self.peer_addrs().first().map(|&addr| Dest {
            addr,
            transport: self.transport,
            conn: None,
        })
    }

    /// Networks SIP from this trunk may come from: `sources`, or else the
    /// peer's address(es) as host routes.
    pub fn effective_sources(&self) -> Vec<IpNet> {
        if !self.sources.is_empty() {
            return self.sources.clone();
        }
        self.peer_addrs()
            .iter()
            .map(|a| IpNet::from(a.ip().to_canonical()))
            .collect()
    }

    /// Longest prefix among this trunk's sources that contains `addr`.
    fn match_len(&self, addr: IpAddr) -> Option<u8> {
        let addr = addr.to_canonical();
        self.effective_sources()
            .iter()
            .filter(|n| n.contains(&addr))
            .map(IpNet::prefix_len)
            .max()
    }

    /// Records what a host-name peer resolved to (only the trunk's port is
    /// kept); ignored for address peers.
    pub fn set_resolved(&mut self, addrs: impl IntoIterator<Item = IpAddr>) {
        if matches!(self.peer.host, PeerHost::Name(_)) {
            let mut v: Vec<SocketAddr> = Vec::new();
            for ip in addrs {
                let a = SocketAddr::new(ip.to_canonical(), self.peer.port);
                if !v.contains(&a) {
                    v.push(a);
                }
            }
            self.resolved = v;
        }
    }
}

/// The checked `[[trunk]]` list, in configuration order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trunks {
    trunks: Vec<Trunk>,
}

/// Headers a trunk may never pass across: the B2BUA owns them on each leg.
const NEVER_PASSED: &[&str] = &[
    "via",
    "v",
    "route",
    "record-route",
    "contact",
    "m",
    "call-id",
    "i",
    "cseq",
    "from",
    "f",
    "to",
    "t",
    "max-forwards",
    "content-length",
    "l",
    "content-type",
    "c",
    "content-encoding",
    "e",
];

/// RFC 3261 `token` characters (header names).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

impl Trunks {
    /// Checks `raw` against `sip` and the media interface names, and builds
    /// the table. Errors name the field: `trunk[1].tls.ca`.
    pub fn new(
        sip: &SipConfig,
        raw: &[TrunkConfig],
        interfaces: &[&str],
    ) -> Result<Trunks, FieldError> {
        let mut names: Vec<&str> = Vec::new();
        for (i, t) in raw.iter().enumerate() {
            let field = format!("trunk[{i}].name");
            if !is_token(&t.name) {
                return Err(FieldError::new(
                    field,
                    format!(
                        "{:?} is empty or has characters other than letters, digits and -._",
                        t.name
                    ),
                ));
            }
            if names.contains(&t.name.as_str()) {
                return Err(FieldError::new(
                    field,
                    format!("{:?} is used twice", t.name),
                ));
            }
            names.push(&t.name);
        }
        let mut trunks = Vec::with_capacity(raw.len());
        for (i, t) in raw.iter().enumerate() {
            let field = |f: &str| format!("trunk[{i}].{f}");
            let peer = Peer::parse(&t.peer, default_port(t.transport))
                .map_err(|m| FieldError::new(field("peer"), m))?;
            if !interfaces.contains(&t.interface.as_str()) {
                return Err(FieldError::new(
                    field("interface"),
                    format!("{:?} is not the name of an [[interface]]", t.interface),
                ));
            }
            let mut sources = Vec::with_capacity(t.sources.len());
            for (j, s) in t.sources.iter().enumerate() {
                let net = parse_source(s)
                    .map_err(|m| FieldError::new(field(&format!("sources[{j}]")), m))?;
                sources.push(net);
            }
            let route_to = match &t.route_to {
                None => None,
                Some(r) if *r == t.name => {
                    return Err(FieldError::new(
                        field("route_to"),
                        format!("{r:?} is this trunk itself"),
                    ));
                }
                Some(r) => Some(names.iter().position(|n| n == r).ok_or_else(|| {
                    FieldError::new(
                        field("route_to"),
                        format!("{r:?} is not the name of a [[trunk]]"),
                    )
                })?),
            };
            if t.options_interval_s > 3600 {
                return Err(FieldError::new(
                    field("options_interval_s"),
                    format!("{} is outside 0..=3600", t.options_interval_s),
                ));
            }
            if t.max_calls == Some(0) {
                return Err(FieldError::new(
                    field("max_calls"),
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
            let mut pass_headers: Vec<String> = Vec::new();
            for (j, h) in t.pass_headers.iter().enumerate() {
                let f = field(&format!("pass_headers[{j}]"));
                if !is_token(h) {
                    return Err(FieldError::new(f, format!("{h:?} is not a header name")));
                }
                if NEVER_PASSED.contains(&h.to_ascii_lowercase().as_str()) {
                    return Err(FieldError::new(
                        f,
                        format!("{h} belongs to each leg and is never passed across"),
                    ));
                }
                if pass_headers.iter().any(|p| p.eq_ignore_ascii_case(h)) {
                    return Err(FieldError::new(f, format!("{h} is listed twice")));
                }
                pass_headers.push(h.clone());
            }
            let tls = match (&t.tls, t.transport) {
                (None, TransportKind::Tls) => {
                    return Err(FieldError::new(
                        field("tls"),
                        "transport \"tls\" needs [trunk.tls] with ca",
                    ));
                }
                (Some(_), TransportKind::Udp | TransportKind::Tcp) => {
                    return Err(FieldError::new(
                        field("tls"),
                        format!(
                            "only allowed with transport \"tls\", not {:?}",
                            kind_name(t.transport)
                        ),
                    ));
                }
                (None, _) => None,
                (Some(c), _) => {
                    if sip.tls.is_none() {
                        return Err(FieldError::new(
                            "sip.tls",
                            format!(
                                "trunk {:?} uses TLS, which needs our certificate and key in [sip.tls]",
                                t.name
                            ),
                        ));
                    }
                    if c.ca.as_os_str().is_empty() {
                        return Err(FieldError::new(field("tls.ca"), "must not be empty"));
                    }
                    let server_name = match &c.server_name {
                        Some(n) => ServerName::try_from(n.as_str())
                            .map(|s| s.to_owned())
                            .map_err(|_| {
                                FieldError::new(
                                    field("tls.server_name"),
                                    format!("{n:?} is not a DNS name or IP address"),
                                )
                            })?,
                        None => match &peer.host {
                            PeerHost::Addr(ip) => ServerName::IpAddress((*ip).into()),
                            PeerHost::Name(n) => ServerName::try_from(n.trim_end_matches('.'))
                                .map(|s| s.to_owned())
                                .map_err(|_| {
                                    FieldError::new(
                                        field("tls.server_name"),
                                        format!("peer host {n:?} is not usable as a server name; set server_name"),
                                    )
                                })?,
                        },
                    };
                    Some(TrunkTls {
                        ca: c.ca.clone(),
                        server_name,
                        require_client_cert: c.require_client_cert,
                    })
                }
            };
            trunks.push(Trunk {
                name: Arc::from(t.name.as_str()),
                transport: t.transport,
                peer,
                interface: t.interface.clone(),
                sources,
                route_to,
                options_interval: (t.options_interval_s > 0)
                    .then(|| Duration::from_secs(t.options_interval_s)),
                max_calls: t.max_calls,
                pass_headers,
                tls,
                srtp: t.srtp,
                resolved: Vec::new(),
            });
        }
        Ok(Trunks { trunks })
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Trunk> {
        self.trunks.iter()
    }

    pub fn len(&self) -> usize {
        self.trunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.trunks.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&Trunk> {
        self.trunks.get(index)
    }

    pub fn by_name(&self, name: &str) -> Option<&Trunk> {
        self.trunks.iter().find(|t| &*t.name == name)
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.trunks.iter().position(|t| &*t.name == name)
    }

    /// The trunk INVITEs from `trunk` are routed to.
    pub fn route_of(&self, trunk: &Trunk) -> Option<&Trunk> {
        trunk.route_to.and_then(|i| self.trunks.get(i))
    }

    /// Which trunk a message from `addr` belongs to, whatever its transport.
    ///
    /// Longest prefix wins over all trunks' [`Trunk::effective_sources`];
    /// between equal prefixes the trunk listed first wins. IPv4-mapped IPv6
    /// addresses count as IPv4. `None`: not a trunk source (drop it).
    pub fn trunk_for_source(&self, addr: IpAddr) -> Option<&Trunk> {
        self.lookup(addr, |_| true)
    }

    /// Like [`Trunks::trunk_for_source`] among the trunks of one transport
    /// (a TLS connection can only belong to a TLS trunk).
    pub fn trunk_for(&self, addr: IpAddr, transport: TransportKind) -> Option<&Trunk> {
        self.lookup(addr, |t| t.transport == transport)
    }

    fn lookup(&self, addr: IpAddr, filter: impl Fn(&Trunk) -> bool) -> Option<&Trunk> {
        let mut best: Option<(u8, &Trunk)> = None;
        for t in self.trunks.iter().filter(|t| filter(t)) {
            if let Some(len) = t.match_len(addr)
                && best.is_none_or(|(b, _)| len > b)
            {
                best = Some((len, t));
            }
        }
        best.map(|(_, t)| t)
    }

    /// Resolves the host names of peers given by name, keeping the previous
    /// addresses of a trunk whose lookup fails. Returns the failures
    /// (trunk name, error) for the caller to log.
    pub async fn resolve(&mut self) -> Vec<(Arc<str>, std::io::Error)> {
        let mut failures = Vec::new();
        for t in &mut self.trunks {
            let PeerHost::Name(host) = t.peer.host.clone() else {
                continue;
            };
            match tokio::net::lookup_host((host.as_str(), t.peer.port)).await {
                Ok(addrs) => {
                    let ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                    if ips.is_empty() {
                        failures.push((
                            t.name.clone(),
                            std::io::Error::new(
                                std::io::ErrorKind::NotFound,
                                format!("{host} has no address"),
                            ),
                        ));
                    } else {
                        t.set_resolved(ips);
                    }
                }
                Err(e) => failures.push((t.name.clone(), e)),
            }
        }
        failures
    }

    /// Mutable access for re-resolving one trunk (see [`Trunk::set_resolved`]).
    pub fn get_mut(&mut self, index: usize) -> Option<&mut Trunk> {
        self.trunks.get_mut(index)
    }
}

/// "192.0.2.0/24", "2001:db8::/32" or a bare address (a host route). Host
/// bits must be zero, so a typo like "192.0.2.1/24" is caught.
fn parse_source(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip.to_canonical()));
    }
    let net: IpNet = s
        .parse()
        .map_err(|_| format!("{s:?} is not a network like \"192.0.2.0/24\" or an address"))?;
    if net.trunc() != net {
        return Err(format!(
            "{s:?} has host bits set (did you mean \"{}\"?)",
            net.trunc()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIP: &str = r#"
listen_udp = ["192.0.2.1:5060"]
listen_tcp = ["192.0.2.1:5060"]
listen_tls = ["198.51.100.1:5061"]
max_message_size = 65535
invite_rate_per_source = 20
[tls]
cert = "/etc/relay/relay.pem"
key = "/etc/relay/relay.key"
"#;

    const TRUNKS: &str = r#"
[[trunk]]
name = "pbx"
transport = "udp"
peer = "192.0.2.10:5060"
interface = "inside"
sources = ["192.0.2.0/24"]
route_to = "voicemail"
options_interval_s = 30
max_calls = 100
pass_headers = ["Diversion", "History-Info", "P-Asserted-Identity"]

[[trunk]]
name = "voicemail"
transport = "tls"
peer = "198.51.100.10:5061"
interface = "outside"
[trunk.tls]
ca = "/etc/relay/service-ca.pem"
server_name = "voicemail.example.net"
require_client_cert = true
"#;

    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "trunk")]
        trunks: Vec<TrunkConfig>,
    }

    fn build(sip: &str, trunks: &str) -> Result<Trunks, FieldError> {
        let sip: SipConfig = toml::from_str(sip).unwrap();
        sip.validate()?;
        let raw: Raw = toml::from_str(trunks).unwrap();
        Trunks::new(&sip, &raw.trunks, &["inside", "outside"])
    }

    fn field_of(sip: &str, trunks: &str) -> String {
        build(sip, trunks).unwrap_err().field
    }

    #[test]
    fn parses_the_documented_example() {
        let t = build(SIP, TRUNKS).unwrap();
        assert_eq!(t.len(), 2);
        let pbx = t.by_name("pbx").unwrap();
        assert_eq!(pbx.transport, TransportKind::Udp);
        assert_eq!(pbx.options_interval, Some(Duration::from_secs(30)));
        assert_eq!(pbx.max_calls, Some(100));
        assert_eq!(t.route_of(pbx).unwrap().name.as_ref(), "voicemail");
        let vm = t.by_name("voicemail").unwrap();
        let tls = vm.tls.as_ref().unwrap();
        assert_eq!(
            tls.server_name,
            ServerName::try_from("voicemail.example.net").unwrap()
        );
        assert!(tls.require_client_cert);
        assert_eq!(
            vm.dest(),
            Some(Dest::tls("198.51.100.10:5061".parse().unwrap(), None))
        );
    }

    #[test]
    fn defaults() {
        let sip = SipConfig::default();
        sip.validate().unwrap();
        assert_eq!(sip.max_message_size, 65535);
        let t = build(
            "",
            "[[trunk]]\nname=\"a\"\ntransport=\"tcp\"\npeer=\"192.0.2.10\"\ninterface=\"inside\"\n",
        )
        .unwrap();
        let a = t.by_name("a").unwrap();
        assert_eq!(a.peer.port, 5060);
        assert_eq!(a.options_interval, Some(Duration::from_secs(30)));
        assert_eq!(a.max_calls, None);
        assert_eq!(a.route_to, None);
        assert_eq!(
            a.effective_sources(),
            vec!["192.0.2.10/32".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn peers_parse() {
        let p = |s| Peer::parse(s, 5061);
        assert_eq!(
            p("192.0.2.1:5060").unwrap().addr(),
            Some("192.0.2.1:5060".parse().unwrap())
        );
        assert_eq!(p("[2001:db8::1]:5062").unwrap().port, 5062);
        assert_eq!(p("[2001:db8::1]").unwrap().port, 5061);
        assert_eq!(p("2001:db8::1").unwrap().port, 5061);
        let named = p("VoiceMail.example.net:5061").unwrap();
        assert_eq!(named.host, PeerHost::Name("voicemail.example.net".into()));
        assert_eq!(named.addr(), None);
        assert_eq!(p("voicemail.example.net").unwrap().port, 5061);
        for bad in [
            "",
            "192.0.2.1:0",
            "0.0.0.0:5060",
            "a b:5060",
            "host:99999",
            "300.1.1.1",
            "-x.example:1",
        ] {
            assert!(p(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("trunk[1].tls.ca", SIP, "ca = \"/etc/relay/service-ca.pem\""),
            (
                "trunk[1].tls",
                SIP,
                "[trunk.tls]\nca = \"/etc/relay/service-ca.pem\"\nserver_name = \"voicemail.example.net\"\nrequire_client_cert = true",
            ),
            ("trunk[0].peer", SIP, "peer = \"192.0.2.10:5060\""),
            ("trunk[0].interface", SIP, "interface = \"inside\""),
            ("trunk[0].sources[0]", SIP, "sources = [\"192.0.2.0/24\"]"),
            ("trunk[0].route_to", SIP, "route_to = \"voicemail\""),
            ("trunk[0].max_calls", SIP, "max_calls = 100"),
            ("trunk[0].pass_headers[1]", SIP, "\"History-Info\""),
            (
                "trunk[1].tls.server_name",
                SIP,
                "server_name = \"voicemail.example.net\"",
            ),
            ("trunk[1].name", SIP, "name = \"voicemail\""),
        ];
        let replacement = [
            "ca = \"\"",
            "",
            "peer = \"192.0.2.10:http\"",
            "interface = \"dmz\"",
            "sources = [\"192.0.2.1/24\"]",
            "route_to = \"nowhere\"",
            "max_calls = 0",
            "\"Via\"",
            "server_name = \"bad name!\"",
            "name = \"pbx\"",
        ];
        for ((field, sip, from), to) in cases.iter().zip(replacement) {
            let trunks = TRUNKS.replace(from, to);
            assert_ne!(trunks, TRUNKS, "{from}");
            let e = build(sip, &trunks).unwrap_err();
            assert_eq!(&e.field, field, "{e}");
        }
        // A TLS trunk with a TLS section on a UDP trunk.
        let e = field_of(
            SIP,
            &TRUNKS.replace("transport = \"tls\"", "transport = \"udp\""),
        );
        assert_eq!(e, "trunk[1].tls");
        // TLS trunks need our identity.
        let no_identity = SIP.replace("listen_tls = [\"198.51.100.1:5061\"]", "");
        let no_identity = no_identity.split("[tls]").next().unwrap();
        assert_eq!(field_of(no_identity, TRUNKS), "sip.tls");
        assert_eq!(
            field_of(&SIP.replace("65535", "10"), TRUNKS),
            "sip.max_message_size"
        );
        assert_eq!(
            field_of(
                &SIP.replace(
                    "listen_tls = [\"198.51.100.1:5061\"]",
                    "listen_tls = [\"192.0.2.1:5060\"]"
                ),
                TRUNKS
            ),
            "sip.listen_tls[0]"
        );
        assert_eq!(
            field_of(
                &SIP.replace(
                    "[\"192.0.2.1:5060\"]\nlisten_tcp",
                    "[\"192.0.2.1:5060\", \"192.0.2.1:5060\"]\nlisten_tcp"
                ),
                TRUNKS
            ),
            "sip.listen_udp[1]"
        );
        let e = build(
            SIP,
            &TRUNKS.replace("route_to = \"voicemail\"", "route_to = \"pbx\""),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "trunk[0].route_to: \"pbx\" is this trunk itself"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Raw>(&TRUNKS.replace("max_calls", "max_call")).is_err());
        assert!(toml::from_str::<Raw>(&TRUNKS.replace("server_name", "servername")).is_err());
        assert!(toml::from_str::<SipConfig>(&SIP.replace("max_message_size", "max_msg")).is_err());
        assert!(toml::from_str::<Raw>(&TRUNKS.replace("\"udp\"", "\"sctp\"")).is_err());
    }

    #[test]
    fn source_lookup_is_longest_prefix_then_first() {
        let trunks = r#"
[[trunk]]
name = "wide"
transport = "udp"
peer = "192.0.2.10"
interface = "inside"
sources = ["192.0.2.0/24", "2001:db8::/32"]
[[trunk]]
name = "narrow"
transport = "tcp"
peer = "192.0.2.20"
interface = "inside"
sources = ["192.0.2.16/28"]
[[trunk]]
name = "same-as-wide"
transport = "tcp"
peer = "192.0.2.30"
interface = "inside"
sources = ["192.0.2.0/24"]
[[trunk]]
name = "peer-only"
transport = "tcp"
peer = "203.0.113.5"
interface = "outside"
"#;
        let t = build("", trunks).unwrap();
        let name = |a: &str| {
            t.trunk_for_source(a.parse().unwrap())
                .map(|t| t.name.to_string())
        };
        assert_eq!(name("192.0.2.20").as_deref(), Some("narrow"));
        assert_eq!(name("192.0.2.200").as_deref(), Some("wide"));
        assert_eq!(name("::ffff:192.0.2.200").as_deref(), Some("wide"));
        assert_eq!(name("2001:db8::7").as_deref(), Some("wide"));
        assert_eq!(name("203.0.113.5").as_deref(), Some("peer-only"));
        assert_eq!(name("203.0.113.6"), None);
        assert_eq!(name("198.51.100.1"), None);
        let tcp = |a: &str| {
            t.trunk_for(a.parse().unwrap(), TransportKind::Tcp)
                .map(|t| t.name.to_string())
        };
        assert_eq!(tcp("192.0.2.200").as_deref(), Some("same-as-wide"));
        assert_eq!(tcp("192.0.2.20").as_deref(), Some("narrow"));
        assert_eq!(
            t.trunk_for("192.0.2.20".parse().unwrap(), TransportKind::Tls),
            None
        );
    }

    #[test]
    fn host_name_peers_use_resolved_addresses() {
        let mut t = build(
            "",
            "[[trunk]]\nname=\"svc\"\ntransport=\"tcp\"\npeer=\"svc.example.net:5070\"\ninterface=\"outside\"\n",
        )
        .unwrap();
        assert_eq!(t.by_name("svc").unwrap().dest(), None);
        assert_eq!(t.trunk_for_source("198.51.100.7".parse().unwrap()), None);
        t.get_mut(0)
            .unwrap()
            .set_resolved(["198.51.100.7".parse().unwrap()]);
        assert_eq!(
            t.by_name("svc").unwrap().peer_addrs(),
            vec!["198.51.100.7:5070".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            t.trunk_for_source("198.51.100.7".parse().unwrap())
                .map(|t| &*t.name),
            Some("svc")
        );
    }

    #[tokio::test]
    async fn resolve_looks_up_names() {
        let mut t = build(
            "",
            "[[trunk]]\nname=\"lo\"\ntransport=\"tcp\"\npeer=\"localhost:5070\"\ninterface=\"outside\"\n",
        )
        .unwrap();
        let failures = t.resolve().await;
        assert!(failures.is_empty(), "{failures:?}");
        assert!(
            t.by_name("lo")
                .unwrap()
                .peer_addrs()
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 5070)
        );
    }
}
