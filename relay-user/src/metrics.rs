//! The Prometheus text endpoint: `GET /metrics` on the `[metrics] listen`
//! address (off by default). Every scrape reads the relay's figures under its
//! lock into a [`Snapshot`], then encodes them with `prometheus-client`
//! (OpenMetrics text) outside the lock.
//!
//! The HTTP side is a few dozen lines on tokio rather than hyper or axum: one
//! path, one method, no keep-alive, no body to read, on a loopback or
//! management address. What matters is that a slow or hostile client cannot
//! hold memory or the relay lock: requests are capped at 8 KiB and 5 s,
//! connections at 16 at a time, and the lock is held only while copying
//! figures.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use relay_common::DropReason;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, warn};

use crate::{
    control::flows::{FlowPath, path_of},
    ng::Ng,
    relay::Relay,
    sip::server::SipStatus,
};

/// Longest request head read; a scrape request is a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request and read the reply.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once; more wait for a slot.
const MAX_CONNECTIONS: usize = 16;

/// The figures one scrape shows, copied out of the relay.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub uptime_s: u64,
    pub calls: u64,
    pub ports_in_use: u64,
    /// Rules by effective path (`xdp`, `userspace`, `blocked`).
    pub rules: BTreeMap<&'static str, u64>,
    /// Forwarded packets and bytes by path (`xdp`, `userspace`): live rules
    /// plus rules removed since start.
    pub packets: BTreeMap<&'static str, u64>,
    pub bytes: BTreeMap<&'static str, u64>,
    /// Global drops by (path, reason).
    pub drops: BTreeMap<(&'static str, &'static str), u64>,
    /// Kernel verdicts other than drops (`xdp_tx`, `xdp_redirect`, ...).
    pub xdp_actions: BTreeMap<String, u64>,
    pub kernel_write_failures: u64,
    pub fallback_rules: u64,
    pub call_rule_errors: u64,
    pub sip: Option<SipStatus>,
    /// NG requests by command, plus "errors" and "duplicates"; None when
    /// NG is off.
    pub ng: Option<Vec<(&'static str, u64)>>,
}

impl Snapshot {
    /// Copies the figures; call with the relay locked, keep it short.
    pub fn take(relay: &Relay, started: Instant) -> Self {
        let mut s = Snapshot {
            uptime_s: started.elapsed().as_secs(),
            calls: relay.media.len() as u64,
            ports_in_use: relay.media.ports_in_use() as u64,
            call_rule_errors: relay.rule_errors,
            sip: relay.sip.clone(),
            ..Snapshot::default()
        };
        for path in [FlowPath::Xdp, FlowPath::Userspace, FlowPath::Blocked] {
            s.rules.insert(path.as_str(), 0);
        }
        let r = &relay.retired;
        s.packets.insert("xdp", r.xdp_packets);
        s.bytes.insert("xdp", r.xdp_bytes);
        s.packets.insert("userspace", r.userspace_packets);
        s.bytes.insert("userspace", r.userspace_bytes);
        for v in relay.dp.views() {
            *s.rules.entry(path_of(relay, &v).as_str()).or_default() += 1;
            for (path, stats) in [("xdp", &v.xdp), ("userspace", &v.userspace)] {
                if let Some(st) = stats {
                    *s.packets.entry(path).or_default() += st.packets;
                    *s.bytes.entry(path).or_default() += st.bytes;
                }
            }
        }
        let counters = relay.dp.counters();
        for (path, map) in [("xdp", &counters.xdp), ("userspace", &counters.userspace)] {
            let Some(map) = map else { continue };
            for reason in DropReason::ALL {
                let name = format!("drop_{}", reason.as_str());
                s.drops.insert(
                    (path, reason.as_str()),
                    map.get(&name).copied().unwrap_or(0),
                );
            }
            if path == "xdp" {
                s.xdp_actions = map
                    .iter()
                    .filter(|(k, _)| !k.starts_with("drop_"))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
            } else {
                s.kernel_write_failures = map.get("kernel_write_failures").copied().unwrap_or(0);
                s.fallback_rules = map.get("fallback_rules").copied().unwrap_or(0);
            }
        }
        s
    }

    /// The OpenMetrics text of this snapshot.
    pub fn encode(&self) -> String {
        let mut reg = Registry::with_prefix("relay");
        gauge(&mut reg, "up", "1 while relayd serves", 1);
        gauge(
            &mut reg,
            "uptime_seconds",
            "Seconds since relayd started",
            self.uptime_s,
        );
        gauge(&mut reg, "calls", "Calls in the media core", self.calls);
        gauge(
            &mut reg,
            "ports_in_use",
            "Relay port pairs in use",
            self.ports_in_use,
        );
        let rules = Family::<Vec<(String, String)>, Gauge>::default();
        for (path, n) in &self.rules {
            rules.get_or_create(&label("path", path)).set(to_i64(*n));
        }
        reg.register("rules", "Flow rules by the path their packets take", rules);
        let packets = Family::<Vec<(String, String)>, Counter>::default();
        for (path, n) in &self.packets {
            packets.get_or_create(&label("path", path)).inc_by(*n);
        }
        reg.register("packets", "Packets forwarded by rules, by path", packets);
        let bytes = Family::<Vec<(String, String)>, Counter>::default();
        for (path, n) in &self.bytes {
            bytes.get_or_create(&label("path", path)).inc_by(*n);
        }
        reg.register(
            "bytes",
            "UDP payload bytes forwarded by rules, by path",
            bytes,
        );
        let drops = Family::<Vec<(String, String)>, Counter>::default();
        for ((path, reason), n) in &self.drops {
            drops
                .get_or_create(&vec![
                    ("path".to_string(), path.to_string()),
                    ("reason".to_string(), reason.to_string()),
                ])
                .inc_by(*n);
        }
        reg.register(
            "drops",
            "Packets to relay ports dropped, by path and reason",
            drops,
        );
        let actions = Family::<Vec<(String, String)>, Counter>::default();
        for (action, n) in &self.xdp_actions {
            actions.get_or_create(&label("action", action)).inc_by(*n);
        }
        reg.register(
            "xdp_actions",
            "Kernel verdicts on accepted packets (xdp_tx, xdp_redirect, to_userspace, pass_fib, pass_other)",
            actions,
        );
        counter(
            &mut reg,
            "kernel_write_failures",
            "Rule writes the kernel map refused (the forwarder took them)",
            self.kernel_write_failures,
        );
        gauge(
            &mut reg,
            "fallback_rules",
            "Rules carried by the forwarder because the kernel map refused them",
            self.fallback_rules,
        );
        counter(
            &mut reg,
            "call_rule_errors",
            "Rule changes of calls the data plane refused",
            self.call_rule_errors,
        );
        if let Some(sip) = &self.sip {
            encode_sip(&mut reg, sip);
        }
        if let Some(ng) = &self.ng {
            let requests = Family::<Vec<(String, String)>, Counter>::default();
            let mut errors = 0;
            let mut duplicates = 0;
            for (name, n) in ng {
                match *name {
                    "errors" => errors = *n,
                    "duplicates" => duplicates = *n,
                    command => {
                        requests
                            .get_or_create(&label("command", command))
                            .inc_by(*n);
                    }
                }
            }
            reg.register("ng_requests", "NG requests by command", requests);
            counter(
                &mut reg,
                "ng_errors",
                "NG requests answered with an error or load limit",
                errors,
            );
            counter(
                &mut reg,
                "ng_duplicates",
                "NG retransmissions answered from the reply cache",
                duplicates,
            );
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &reg);
        out
    }
}

fn encode_sip(reg: &mut Registry, sip: &SipStatus) {
    gauge(reg, "sip_calls", "SIP calls in the B2BUA", sip.calls as u64);
    let responses = Family::<Vec<(String, String)>, Counter>::default();
    for (i, n) in sip.stats.responses_sent.iter().enumerate() {
        responses
            .get_or_create(&label("class", &format!("{}xx", i + 1)))
            .inc_by(*n);
    }
    reg.register(
        "sip_responses_sent",
        "SIP responses sent, by class",
        responses,
    );
    let calls = Family::<Vec<(String, String)>, Counter>::default();
    let st = &sip.stats;
    for (outcome, n) in [
        ("started", st.calls_started),
        ("answered", st.calls_answered),
        ("failed", st.calls_failed),
    ] {
        calls.get_or_create(&label("outcome", outcome)).inc_by(n);
    }
    reg.register("sip_call_attempts", "SIP calls by outcome", calls);
    let dropped = Family::<Vec<(String, String)>, Counter>::default();
    for (reason, n) in [
        ("unknown_source", st.unknown_source),
        ("rate_limited", st.rate_limited),
        ("malformed", st.malformed),
    ] {
        dropped.get_or_create(&label("reason", reason)).inc_by(n);
    }
    reg.register("sip_dropped", "SIP messages dropped, by reason", dropped);
    counter(
        reg,
        "tls_handshake_failures",
        "TLS handshakes that failed, both directions",
        sip.transport.tls_handshake_failures,
    );
    let up = Family::<Vec<(String, String)>, Gauge>::default();
    let trunk_calls = Family::<Vec<(String, String)>, Gauge>::default();
    for t in &sip.trunks {
        up.get_or_create(&label("trunk", &t.name))
            .set(i64::from(t.up));
        trunk_calls
            .get_or_create(&label("trunk", &t.name))
            .set(i64::from(t.calls));
    }
    reg.register(
        "trunk_up",
        "1 when the trunk answers OPTIONS (or is not pinged), 0 when down",
        up,
    );
    reg.register("trunk_calls", "Active calls per trunk", trunk_calls);
}

fn label(name: &str, value: &str) -> Vec<(String, String)> {
    vec![(name.to_string(), value.to_string())]
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn gauge(reg: &mut Registry, name: &str, help: &str, value: u64) {
    let g = Gauge::<i64>::default();
    g.set(to_i64(value));
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    reg.register(name, help, c);
}

/// What an HTTP request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    BadMethod,
    BadRequest,
}

/// Routes a request head (the bytes up to the blank line).
fn route(head: &[u8]) -> Route {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    if method != "GET" && method != "HEAD" {
        return Route::BadMethod;
    }
    // A query string (`?name[]=...` from some scrapers) changes nothing.
    match target.split('?').next() {
        Some("/metrics") => Route::Metrics,
        _ => Route::NotFound,
    }
}

/// What a scrape reads: the relay, and the NG server's counters when NG runs.
#[derive(Clone)]
pub struct Sources {
    pub relay: Arc<Mutex<Relay>>,
    pub ng: Option<Arc<Mutex<Ng>>>,
    pub started: Instant,
}

/// Serves scrapes until the task is dropped.
pub async fn serve(listener: TcpListener, sources: Sources) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let sources = sources.clone();
                tokio::spawn(async move {
                    let served =
                        tokio::time::timeout(CLIENT_TIMEOUT, scrape(stream, &sources)).await;
                    if !matches!(served, Ok(Ok(()))) {
                        debug!(%peer, "metrics client gave up or timed out");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn scrape(mut stream: TcpStream, sources: &Sources) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            return refuse(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
    }
    let is_head = head.starts_with(b"HEAD ");
    match route(&head) {
        Route::Metrics => {
            let mut snapshot = {
                let relay = sources.relay.lock().unwrap_or_else(|p| p.into_inner());
                Snapshot::take(&relay, sources.started)
            };
            // Taken after the relay lock is released: an NG request holds
            // the NG lock while it waits for the relay.
            snapshot.ng = sources.ng.as_ref().map(|ng| {
                ng.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .request_totals()
            });
            let body = snapshot.encode();
            let body = if is_head { &[][..] } else { body.as_bytes() };
            respond(
                &mut stream,
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            )
            .await
        }
        Route::NotFound => refuse(&mut stream, "404 Not Found", "only /metrics here\n").await,
        Route::BadMethod => refuse(&mut stream, "405 Method Not Allowed", "").await,
        Route::BadRequest => refuse(&mut stream, "400 Bad Request", "").await,
    }
}

/// An error reply, then what the client still sends is read and dropped
/// (bounded in bytes and time): closing a socket with unread data resets
/// the connection, and the client could lose the reply.
async fn refuse(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    respond(stream, status, "text/plain", body.as_bytes()).await?;
    let mut buf = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    Ok(())
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"HEAD /metrics HTTP/1.1\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b""), Route::BadRequest);
    }

    #[test]
    fn encodes_every_family_with_its_labels() {
        let mut s = Snapshot {
            uptime_s: 5,
            calls: 2,
            ..Snapshot::default()
        };
        s.packets.insert("xdp", 400);
        s.bytes.insert("xdp", 64_000);
        s.drops.insert(("xdp", "bad_source"), 7);
        s.rules.insert("xdp", 4);
        let mut sip = SipStatus::default();
        sip.stats.responses_sent[1] = 3;
        sip.transport.tls_handshake_failures = 2;
        sip.trunks.push(crate::sip::server::TrunkStatus {
            name: "service".into(),
            up: false,
            calls: 0,
            options_interval_s: Some(30),
        });
        s.sip = Some(sip);
        s.ng = Some(vec![("offer", 5), ("errors", 1), ("duplicates", 2)]);
        let text = s.encode();
        for line in [
            "relay_calls 2",
            "relay_packets_total{path=\"xdp\"} 400",
            "relay_bytes_total{path=\"xdp\"} 64000",
            "relay_drops_total{path=\"xdp\",reason=\"bad_source\"} 7",
            "relay_rules{path=\"xdp\"} 4",
            "relay_sip_responses_sent_total{class=\"2xx\"} 3",
            "relay_tls_handshake_failures_total 2",
            "relay_trunk_up{trunk=\"service\"} 0",
            "relay_ng_requests_total{command=\"offer\"} 5",
            "relay_ng_errors_total 1",
            "relay_ng_duplicates_total 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
