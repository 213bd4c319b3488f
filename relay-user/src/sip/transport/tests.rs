//! Transports on loopback: UDP, TCP framing, connection reuse and limits,
//! and TLS with certificates made by rcgen (mutual TLS, untrusted client,
//! no client certificate, wrong server name, non-trunk source).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc::Receiver,
    time::timeout,
};

use super::*;
use crate::sip::{
    tls::TlsSetup,
    trunk::{SipConfig, TlsIdentityConfig, TrunkConfig, TrunkTlsConfig, Trunks},
};

const WAIT: Duration = Duration::from_secs(5);
const LO: &str = "127.0.0.1:0";

fn options(n: u32, body: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:relay@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bK{n}\r\nCSeq: {n} OPTIONS\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn sip(f: impl FnOnce(&mut SipConfig)) -> SipConfig {
    let mut c = SipConfig {
        max_message_size: 4096,
        ..SipConfig::default()
    };
    f(&mut c);
    c.validate().unwrap();
    c
}

async fn recv(rx: &mut Receiver<Inbound>) -> Inbound {
    timeout(WAIT, rx.recv())
        .await
        .expect("timed out")
        .expect("closed")
}

async fn nothing(rx: &mut Receiver<Inbound>) {
    if let Ok(Some(m)) = timeout(Duration::from_millis(300), rx.recv()).await {
        panic!("unexpected message from {:?}", m.from);
    }
}

#[tokio::test]
async fn udp_round_trip_and_oversize_dropped() {
    let (a, mut arx) = Transports::start(&sip(|c| c.listen_udp = vec![LO.parse().unwrap()]), None)
        .await
        .unwrap();
    let (b, mut brx) = Transports::start(&sip(|c| c.listen_udp = vec![LO.parse().unwrap()]), None)
        .await
        .unwrap();
    let a_addr = a.local_addr(TransportKind::Udp).unwrap();
    let b_addr = b.local_addr(TransportKind::Udp).unwrap();

    let used = a
        .send(&Dest::udp(b_addr), &options(1, ""), None)
        .await
        .unwrap();
    assert_eq!(
        used,
        Dest {
            addr: b_addr,
            transport: TransportKind::Udp,
            conn: Some(0)
        }
    );
    let m = recv(&mut brx).await;
    assert_eq!(&m.bytes[..], &options(1, "")[..]);
    assert_eq!(
        m.from,
        Dest {
            addr: a_addr,
            transport: TransportKind::Udp,
            conn: Some(0)
        }
    );
    assert_eq!(m.local, b_addr);
    assert_eq!(m.trunk, None);

    b.send(&m.from, b"SIP/2.0 200 OK\r\n\r\n", None)
        .await
        .unwrap();
    let r = recv(&mut arx).await;
    assert_eq!(&r.bytes[..], b"SIP/2.0 200 OK\r\n\r\n");
    assert_eq!(r.from.addr, b_addr);

    // Oversize datagrams and keep-alives never reach the SIP layer.
    let raw = tokio::net::UdpSocket::bind(LO).await.unwrap();
    raw.send_to(&vec![b'x'; 5000], b_addr).await.unwrap();
    raw.send_to(b"\r\n\r\n", b_addr).await.unwrap();
    raw.send_to(&options(2, ""), b_addr).await.unwrap();
    let m = recv(&mut brx).await;
    assert_eq!(&m.bytes[..], &options(2, "")[..]);
    assert_eq!(b.stats().oversize, 1);
    assert_eq!(b.stats().udp_received, 2);
    // Sending more than max_message_size is refused.
    assert!(matches!(
        a.send(&Dest::udp(b_addr), &vec![b'x'; 5000], None).await,
        Err(TransportError::TooLarge {
            size: 5000,
            max: 4096
        })
    ));
    // No socket of the family.
    assert!(matches!(
        a.send(&Dest::udp("[::1]:5060".parse().unwrap()), b"x", None)
            .await,
        Err(TransportError::NoSocket(_))
    ));
}

#[test]
fn udp_socket_choice() {
    let l = |s: &str| s.parse::<SocketAddr>().unwrap();
    let locals = [l("127.0.0.1:5060"), l("[::]:5060"), l("192.0.2.1:5060")];
    assert_eq!(
        pick_udp(&locals, l("127.0.0.1:9")),
        Some(0),
        "kernel picks 127.0.0.1"
    );
    assert_eq!(pick_udp(&locals, l("[::1]:9")), Some(1));
    assert_eq!(pick_udp(&locals[..1], l("[::1]:9")), None);
    assert!(fits(l("[::]:1"), l("192.0.2.9:1")));
    assert!(!fits(l("[::1]:1"), l("192.0.2.9:1")));
}

#[tokio::test]
async fn tcp_framing_split_pipelined_ping_and_oversize() {
    let (b, mut brx) = Transports::start(&sip(|c| c.listen_tcp = vec![LO.parse().unwrap()]), None)
        .await
        .unwrap();
    let b_addr = b.local_addr(TransportKind::Tcp).unwrap();
    let mut client = TcpStream::connect(b_addr).await.unwrap();

    // One message in three pieces, with pauses between them.
    let m1 = options(1, "v=0\r\n");
    for piece in [&m1[..10], &m1[10..60], &m1[60..]] {
        client.write_all(piece).await.unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Two pipelined in one write, with a keep-alive ping between them.
    let (m2, m3) = (options(2, ""), options(3, "abc"));
    client
        .write_all(&[&m2[..], b"\r\n\r\n", &m3[..]].concat())
        .await
        .unwrap();

    let got: Vec<Inbound> = vec![
        recv(&mut brx).await,
        recv(&mut brx).await,
        recv(&mut brx).await,
    ];
    assert_eq!(&got[0].bytes[..], &m1[..]);
    assert_eq!(&got[1].bytes[..], &m2[..]);
    assert_eq!(&got[2].bytes[..], &m3[..]);
    assert!(
        got.iter()
            .all(|m| m.from == got[0].from && m.from.transport == TransportKind::Tcp)
    );
    assert_eq!(got[0].from.addr, client.local_addr().unwrap());

    // The pong, then an answer on the same connection.
    let mut pong = [0u8; 2];
    timeout(WAIT, client.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&pong, b"\r\n");
    let ok = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n";
    let used = b.send(&got[0].from, ok, None).await.unwrap();
    assert_eq!(used, got[0].from);
    let mut answer = vec![0u8; ok.len()];
    timeout(WAIT, client.read_exact(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&answer[..], ok);
    assert_eq!(b.stats().keepalive_pings, 1);
    assert_eq!(b.connections().len(), 1);

    // A message declaring more than max_message_size: the connection is closed.
    client
        .write_all(b"INVITE sip:x SIP/2.0\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let n = timeout(WAIT, client.read_to_end(&mut rest)).await.unwrap();
    assert!(n.is_err() || rest.is_empty(), "{n:?} {rest:?}");
    nothing(&mut brx).await;
    assert_eq!(b.stats().oversize, 1);
    assert!(b.connections().is_empty());
    assert_eq!(b.stats().stream_received, 3);

    // A message without Content-Length cannot be framed either.
    let mut c2 = TcpStream::connect(b_addr).await.unwrap();
    c2.write_all(b"OPTIONS sip:x SIP/2.0\r\nVia: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = timeout(WAIT, c2.read_to_end(&mut rest)).await.unwrap();
    assert_eq!(b.stats().framing_errors, 1);
}

#[tokio::test]
async fn tcp_connection_reuse_and_answer_on_it() {
    let (a, mut arx) = Transports::start(&sip(|_| {}), None).await.unwrap();
    let (b, mut brx) = Transports::start(&sip(|c| c.listen_tcp = vec![LO.parse().unwrap()]), None)
        .await
        .unwrap();
    let to = Dest::tcp(b.local_addr(TransportKind::Tcp).unwrap(), None);
    let first = a.send(&to, &options(1, ""), None).await.unwrap();
    let second = a.send(&to, &options(2, ""), None).await.unwrap();
    assert!(first.conn.is_some());
    assert_eq!(first, second, "the second send reuses the connection");
    let m1 = recv(&mut brx).await;
    let m2 = recv(&mut brx).await;
    assert_eq!(m1.from, m2.from);
    assert_eq!(b.stats().connections_accepted, 1);
    assert_eq!(a.stats().connections_opened, 1);
    let info = a.connections();
    assert_eq!(info.len(), 1);
    assert!(info[0].outgoing && info[0].kind == TransportKind::Tcp);

    // The answer comes back on the connection A opened.
    b.send(&m1.from, &options(9, ""), None).await.unwrap();
    let r = recv(&mut arx).await;
    assert_eq!(r.from, first);

    // After B closes it, A opens a new one.
    assert!(b.close(m1.from.conn.unwrap()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = a.send(&to, &options(3, ""), None).await.unwrap();
    assert_ne!(third.conn, first.conn);
    assert_eq!(&recv(&mut brx).await.bytes[..], &options(3, "")[..]);
}

#[test]
fn dial_backoff_doubles_to_sixteen_seconds() {
    let secs: Vec<u64> = (1..=7).map(|n| dial_backoff(n).as_secs()).collect();
    assert_eq!(secs, [1, 2, 4, 8, 16, 16, 16]);
    assert_eq!(dial_backoff(u32::MAX).as_secs(), 16);
}

#[tokio::test]
async fn a_failed_dial_backs_off_then_retries() {
    let (a, _arx) = Transports::start(&sip(|_| {}), None).await.unwrap();
    // A port with nobody listening: take one, then close it.
    let addr = std::net::TcpListener::bind(LO)
        .unwrap()
        .local_addr()
        .unwrap();
    let to = Dest::tcp(addr, None);
    let first = a.send(&to, &options(1, ""), None).await.unwrap_err();
    assert!(matches!(first, TransportError::Connect { .. }), "{first}");
    // Within a second: refused without a dial, saying when it will retry.
    let second = a.send(&to, &options(2, ""), None).await.unwrap_err();
    let TransportError::Backoff {
        retry_in, failures, ..
    } = second
    else {
        panic!("expected a backoff: {second}");
    };
    assert_eq!(failures, 1);
    assert!(retry_in <= Duration::from_secs(1));
    assert_eq!(a.stats().dials_backed_off, 1);
    assert_eq!(a.stats().connections_opened, 0);
    // Once it is due, the next message dials again: now somebody listens.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::time::sleep(retry_in + Duration::from_millis(50)).await;
    a.send(&to, &options(3, ""), None).await.unwrap();
    let (mut peer, _) = timeout(WAIT, listener.accept()).await.unwrap().unwrap();
    let mut buf = vec![0u8; options(3, "").len()];
    timeout(WAIT, peer.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf, options(3, ""));
    assert_eq!(a.stats().connections_opened, 1);
}

#[tokio::test]
async fn concurrent_sends_share_one_new_connection() {
    let (a, _arx) = Transports::start(&sip(|_| {}), None).await.unwrap();
    let (b, mut brx) = Transports::start(&sip(|c| c.listen_tcp = vec![LO.parse().unwrap()]), None)
        .await
        .unwrap();
    let to = Dest::tcp(b.local_addr(TransportKind::Tcp).unwrap(), None);
    let (m1, m2, m3) = (options(1, ""), options(2, ""), options(3, ""));
    let (x, y, z) = tokio::join!(
        a.send(&to, &m1, None),
        a.send(&to, &m2, None),
        a.send(&to, &m3, None)
    );
    assert_eq!(x.unwrap().conn, y.unwrap().conn);
    assert_eq!(z.unwrap().conn, a.connections()[0].id.into());
    for _ in 0..3 {
        recv(&mut brx).await;
    }
    assert_eq!(b.stats().connections_accepted, 1);
}

#[tokio::test]
async fn connection_limit_and_idle_timeout() {
    let cfg = sip(|c| {
        c.listen_tcp = vec![LO.parse().unwrap()];
        c.max_connections = 1;
        c.idle_timeout_s = 1;
    });
    let (b, _brx) = Transports::start(&cfg, None).await.unwrap();
    let b_addr = b.local_addr(TransportKind::Tcp).unwrap();
    let mut first = TcpStream::connect(b_addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = TcpStream::connect(b_addr).await.unwrap();
    let mut buf = [0u8; 1];
    // Over the limit: closed at once.
    assert!(matches!(
        timeout(Duration::from_millis(500), second.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    ));
    assert_eq!(b.stats().connections_refused_limit, 1);
    // Idle: closed after idle_timeout_s.
    let started = std::time::Instant::now();
    assert!(matches!(
        timeout(WAIT, first.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    ));
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert_eq!(b.stats().connections_idle_closed, 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(b.connections().is_empty());
    // A place is free again; an outgoing connection counts too.
    let (a, _arx) = Transports::start(&cfg, None).await.unwrap();
    let (c, _crx) = Transports::start(&sip(|c| c.listen_tcp = vec![LO.parse().unwrap()]), None)
        .await
        .unwrap();
    let to_c = Dest::tcp(c.local_addr(TransportKind::Tcp).unwrap(), None);
    a.send(&to_c, &options(1, ""), None).await.unwrap();
    let to_b = Dest::tcp(b_addr, None);
    assert!(matches!(
        a.send(&to_b, &options(1, ""), None).await,
        Err(TransportError::ConnectionLimit(1))
    ));
}

#[tokio::test]
async fn source_filter_drops_udp_and_refuses_tcp() {
    let cfg = sip(|c| {
        c.listen_udp = vec![LO.parse().unwrap()];
        c.listen_tcp = vec![LO.parse().unwrap()];
    });
    let (b, mut brx) = Transports::start(&cfg, None).await.unwrap();
    let net: ipnet::IpNet = "192.0.2.0/24".parse().unwrap();
    b.set_source_filter(Some(Arc::new(move |ip| net.contains(&ip))));
    let udp = b.local_addr(TransportKind::Udp).unwrap();
    let tcp = b.local_addr(TransportKind::Tcp).unwrap();
    let raw = tokio::net::UdpSocket::bind(LO).await.unwrap();
    raw.send_to(&options(1, ""), udp).await.unwrap();
    raw.send_to(&options(2, ""), udp).await.unwrap();
    let mut conn = TcpStream::connect(tcp).await.unwrap();
    let mut buf = [0u8; 1];
    assert!(matches!(
        timeout(WAIT, conn.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    ));
    nothing(&mut brx).await;
    assert_eq!(b.stats().udp_refused_source, 2);
    assert_eq!(b.stats().connections_refused_source, 1);
    assert_eq!(b.stats().connections_accepted, 0);
    // Lifted: both pass.
    b.set_source_filter(None);
    raw.send_to(&options(3, ""), udp).await.unwrap();
    assert_eq!(&recv(&mut brx).await.bytes[..], &options(3, "")[..]);
    let mut conn = TcpStream::connect(tcp).await.unwrap();
    conn.write_all(&options(4, "")).await.unwrap();
    assert_eq!(&recv(&mut brx).await.bytes[..], &options(4, "")[..]);
}

#[tokio::test]
async fn dropping_transports_closes_listeners() {
    let (b, _brx) = Transports::start(&sip(|c| c.listen_tcp = vec![LO.parse().unwrap()]), None)
        .await
        .unwrap();
    let addr = b.local_addr(TransportKind::Tcp).unwrap();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    drop(b);
    let mut buf = [0u8; 1];
    assert!(matches!(
        timeout(WAIT, conn.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(addr).await.is_err());
}

// ---------------------------------------------------------------- TLS

/// A test CA that issues certificates into a temporary directory.
struct Pki {
    dir: PathBuf,
    ca_pem: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let ca_pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_pem, cert.pem()).unwrap();
        Pki {
            dir: dir.into(),
            ca_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses), usable as server and client.
    fn issue(&self, file: &str, names: &[&str]) -> TlsIdentityConfig {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let c = self.dir.join(format!("{file}.pem"));
        let k = self.dir.join(format!("{file}.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        TlsIdentityConfig { cert: c, key: k }
    }
}

/// A TLS trunk on loopback.
fn tls_trunk(name: &str, ca: &Path, server_name: &str, sources: &[&str]) -> TrunkConfig {
    TrunkConfig {
        name: name.into(),
        transport: TransportKind::Tls,
        peer: "127.0.0.1:5061".into(),
        interface: "lo".into(),
        sources: sources.iter().map(|s| s.to_string()).collect(),
        route_to: None,
        options_interval_s: 0,
        max_calls: None,
        pass_headers: Vec::new(),
        tls: Some(TrunkTlsConfig {
            ca: ca.into(),
            server_name: Some(server_name.into()),
            require_client_cert: true,
        }),
        srtp: None,
    }
}

/// Starts TLS transports with our identity and one trunk.
async fn start_tls(
    listen: bool,
    identity: TlsIdentityConfig,
    trunk: TrunkConfig,
) -> (Transports, Receiver<Inbound>) {
    let cfg = sip(|c| {
        if listen {
            c.listen_tls = vec![LO.parse().unwrap()];
        }
        c.tls = Some(identity);
    });
    let trunks = Trunks::new(&cfg, &[trunk], &["lo"]).unwrap();
    let tls = TlsSetup::load(&cfg, &trunks).unwrap();
    Transports::start(&cfg, tls).await.unwrap()
}

/// Captures this thread's `warn` logs (the tests run on a current-thread
/// runtime, so every task logs here).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        (logs.clone(), tracing::subscriber::set_default(sub))
    }

    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The handshake failure lines, waiting up to WAIT for `n` of them.
    async fn handshake_failures(&self, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let found: Vec<String> = self
                .lines()
                .into_iter()
                .filter(|l| l.contains("TLS handshake failed"))
                .collect();
            if found.len() >= n || tokio::time::Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct TlsWorld {
    _dir: tempfile::TempDir,
    pki: Pki,
    /// The service side: listens for TLS, trunk "relay-a" requires client certificates.
    b: Transports,
    brx: Receiver<Inbound>,
    b_addr: SocketAddr,
}

async fn tls_world(server_names: &[&str], b_sources: &[&str]) -> TlsWorld {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "service");
    let b_id = pki.issue("b", server_names);
    let (b, brx) = start_tls(
        true,
        b_id,
        tls_trunk("relay-a", &pki.ca_pem, "a.example.net", b_sources),
    )
    .await;
    let b_addr = b.local_addr(TransportKind::Tls).unwrap();
    TlsWorld {
        _dir: dir,
        pki,
        b,
        brx,
        b_addr,
    }
}

const SERVICE: &str = "voicemail.example.net";

#[tokio::test]
async fn mutual_tls_succeeds_and_reuses_the_connection() {
    let (logs, _guard) = Logs::capture();
    let mut w = tls_world(&[SERVICE], &["127.0.0.1"]).await;
    let a_id = w.pki.issue("a", &["a.example.net"]);
    let (a, mut arx) = start_tls(
        false,
        a_id,
        tls_trunk("voicemail", &w.pki.ca_pem, SERVICE, &["127.0.0.1/32"]),
    )
    .await;
    let target = a.tls().unwrap().target("voicemail").unwrap().clone();
    let to = Dest::tls(w.b_addr, None);

    let first = a.send(&to, &options(1, ""), Some(&target)).await.unwrap();
    let m = recv(&mut w.brx).await;
    assert_eq!(&m.bytes[..], &options(1, "")[..]);
    assert_eq!(m.from.transport, TransportKind::Tls);
    assert_eq!(m.trunk.as_deref(), Some("relay-a"));
    assert_eq!(m.local, w.b_addr);

    // The answer goes back on the same connection and says which trunk it is.
    w.b.send(
        &m.from,
        b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        None,
    )
    .await
    .unwrap();
    let r = recv(&mut arx).await;
    assert_eq!(r.from, first);
    assert_eq!(r.trunk.as_deref(), Some("voicemail"));

    let second = a.send(&to, &options(2, ""), Some(&target)).await.unwrap();
    assert_eq!(second, first);
    assert_eq!(recv(&mut w.brx).await.from, m.from);
    assert_eq!(w.b.stats().connections_accepted, 1);
    assert_eq!(a.stats().connections_opened, 1);
    assert_eq!(w.b.stats().tls_handshake_failures, 0);
    // A TLS send without a target cannot open a connection.
    let elsewhere = Dest::tls("127.0.0.1:9".parse().unwrap(), None);
    assert!(matches!(
        a.send(&elsewhere, b"x", None).await,
        Err(TransportError::NoTlsTarget(_))
    ));
    assert!(
        logs.handshake_failures(0).await.is_empty(),
        "{:?}",
        logs.lines()
    );
}

#[tokio::test]
async fn untrusted_client_certificate_is_refused_and_reported() {
    let (logs, _guard) = Logs::capture();
    let mut w = tls_world(&[SERVICE], &["127.0.0.1"]).await;
    // A client whose certificate comes from another CA (it trusts the service's CA).
    let rogue = Pki::new(&w.pki.dir, "rogue");
    let a_id = rogue.issue("a-rogue", &["a.example.net"]);
    let (a, _arx) = start_tls(
        false,
        a_id,
        tls_trunk("voicemail", &w.pki.ca_pem, SERVICE, &["127.0.0.1"]),
    )
    .await;
    let target = a.tls().unwrap().target("voicemail").unwrap().clone();
    // TLS 1.3: our side of the handshake may complete before the server's verdict.
    let _ = a
        .send(&Dest::tls(w.b_addr, None), &options(1, ""), Some(&target))
        .await;
    nothing(&mut w.brx).await;
    let lines = logs.handshake_failures(2).await;
    let server_side: Vec<_> = lines.iter().filter(|l| l.contains("incoming")).collect();
    assert_eq!(server_side.len(), 1, "{lines:#?}");
    assert!(server_side[0].contains("unknown CA"), "{}", server_side[0]);
    assert!(
        server_side[0].contains("relay-a") && server_side[0].contains("127.0.0.1:"),
        "{}",
        server_side[0]
    );
    assert_eq!(w.b.stats().tls_handshake_failures, 1);
    // The client learns it too (alert), and says so.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("outgoing") && l.contains("peer refused our certificate")),
        "{lines:#?}"
    );
    assert!(w.b.connections().is_empty());
}

#[tokio::test]
async fn client_without_certificate_is_refused_when_required() {
    let (logs, _guard) = Logs::capture();
    let mut w = tls_world(&[SERVICE], &["127.0.0.1"]).await;
    let roots = crate::sip::tls::load_roots(&w.pki.ca_pem, "ca").unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(w.b_addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(SERVICE).unwrap();
    let connected = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await;
    if let Ok(mut s) = connected {
        let _ = s.write_all(&options(1, "")).await;
        let mut buf = [0u8; 16];
        let r = timeout(WAIT, s.read(&mut buf)).await.unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
    nothing(&mut w.brx).await;
    let lines = logs.handshake_failures(1).await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("no client certificate") && lines[0].contains("relay-a"),
        "{}",
        lines[0]
    );
    assert_eq!(w.b.stats().tls_handshake_failures, 1);
}

#[tokio::test]
async fn server_with_wrong_name_is_refused_by_our_client() {
    let (logs, _guard) = Logs::capture();
    let mut w = tls_world(&["other.example.net"], &["127.0.0.1"]).await;
    let a_id = w.pki.issue("a", &["a.example.net"]);
    let (a, _arx) = start_tls(
        false,
        a_id,
        tls_trunk("voicemail", &w.pki.ca_pem, SERVICE, &["127.0.0.1"]),
    )
    .await;
    let target = a.tls().unwrap().target("voicemail").unwrap().clone();
    let err = a
        .send(&Dest::tls(w.b_addr, None), &options(1, ""), Some(&target))
        .await
        .unwrap_err();
    let TransportError::Handshake { trunk, reason, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(&**trunk, "voicemail");
    assert!(reason.starts_with("name mismatch"), "{reason}");
    assert!(err.to_string().contains("other.example.net"), "{err}");
    nothing(&mut w.brx).await;
    let lines = logs.handshake_failures(2).await;
    assert!(
        lines.iter().any(|l| l.contains("outgoing")
            && l.contains("name mismatch")
            && l.contains("voicemail")),
        "{lines:#?}"
    );
    assert_eq!(a.stats().tls_handshake_failures, 1);
    assert!(a.connections().is_empty());
}

#[tokio::test]
async fn tls_from_a_source_of_no_tls_trunk_is_refused() {
    let (logs, _guard) = Logs::capture();
    let mut w = tls_world(&[SERVICE], &["192.0.2.0/24"]).await;
    let a_id = w.pki.issue("a", &["a.example.net"]);
    let (a, _arx) = start_tls(
        false,
        a_id,
        tls_trunk("voicemail", &w.pki.ca_pem, SERVICE, &["127.0.0.1"]),
    )
    .await;
    let target = a.tls().unwrap().target("voicemail").unwrap().clone();
    let to = Dest::tls(w.b_addr, None);
    assert!(a.send(&to, &options(1, ""), Some(&target)).await.is_err());
    // A second connection once A's dial backoff allows one.
    tokio::time::sleep(dial_backoff(1)).await;
    assert!(a.send(&to, &options(2, ""), Some(&target)).await.is_err());
    nothing(&mut w.brx).await;
    assert_eq!(w.b.stats().connections_refused_source, 2);
    assert_eq!(w.b.stats().connections_accepted, 0);
    let refused: Vec<_> = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("TLS connection refused"))
        .collect();
    assert_eq!(
        refused.len(),
        1,
        "logged once per source per minute: {refused:#?}"
    );
}

#[test]
fn tls_setup_errors_name_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "svc");
    let id = pki.issue("b", &[SERVICE]);
    let cfg = sip(|c| c.tls = Some(id.clone()));
    let mut trunk = tls_trunk(
        "voicemail",
        &dir.path().join("missing-ca.pem"),
        SERVICE,
        &[],
    );
    let trunks = Trunks::new(&cfg, std::slice::from_ref(&trunk), &["lo"]).unwrap();
    let e = TlsSetup::load(&cfg, &trunks).unwrap_err().to_string();
    assert!(
        e.starts_with("trunk[0].tls.ca: ") && e.contains("missing-ca.pem"),
        "{e}"
    );

    // Our key is not the certificate's key.
    trunk.tls.as_mut().unwrap().ca = pki.ca_pem.clone();
    let other = pki.issue("other", &[SERVICE]);
    let mismatched = sip(|c| {
        c.tls = Some(TlsIdentityConfig {
            cert: id.cert.clone(),
            key: other.key.clone(),
        })
    });
    let trunks = Trunks::new(&mismatched, std::slice::from_ref(&trunk), &["lo"]).unwrap();
    let e = TlsSetup::load(&mismatched, &trunks)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("sip.tls.key: "), "{e}");

    // A key file holding a certificate.
    let swapped = sip(|c| {
        c.tls = Some(TlsIdentityConfig {
            cert: id.cert.clone(),
            key: id.cert.clone(),
        })
    });
    let e = TlsSetup::load(&swapped, &trunks).unwrap_err().to_string();
    assert!(
        e.starts_with("sip.tls.key: ") && e.contains("b.pem") && e.contains("no PRIVATE KEY"),
        "{e}"
    );

    // Nothing uses TLS: no setup.
    let plain = sip(|_| {});
    assert!(
        TlsSetup::load(&plain, &Trunks::default())
            .unwrap()
            .is_none()
    );
}
