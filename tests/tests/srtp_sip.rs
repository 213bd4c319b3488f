//! SRTP on SIP trunks, through relayd's B2BUA with XDP attached and the
//! TLS-only service behind Kamailio (mutual TLS, as in sip_b2bua.rs):
//!
//! - a call from a plain-RTP PBX to a service whose trunk has
//!   `srtp = "required"`: the service's media endpoint is libsrtp, keyed
//!   from the SDPs (the relay's offer, read back from the service's sipp
//!   log, and the service's own answer); audio both ways, every packet
//!   compared byte for byte after the relay transcrypted it;
//! - policy refusals: a trunk with `srtp = "required"` answers a plain-RTP
//!   INVITE with 488 and a Warning saying why, one with `srtp = "off"`
//!   refuses RTP/SAVP (the service is up, so the refusal is the media
//!   policy's, not a trunk that is down).
//!
//! No call, rule or port stays behind.

use std::{
    net::{SocketAddr, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant},
};

use relay_tests::{
    frames::rtp_numbered,
    libsrtp::LibSrtp,
    sdp_crypto, sdp_media_endpoint,
    sip_peers::{
        Peer, Pki, SRTP_SERVICE_MEDIA_PORT, received_offers, relay_sip_config, relay_srtp_offer,
        start_kamailio_tls, start_srtp_service,
    },
    topology::{RelaydOpts, Topology},
};
use relay_user::{
    control::{Request, flows::FlowsReply},
    srtp::Suite,
};

struct Setup {
    t: Topology,
    kamailio: Peer,
    dir: PathBuf,
}

/// The topology with the TLS service's Kamailio and relayd, the trunk
/// `trunk` with `srtp = "{srtp}"`; `None` (skip) when not root.
fn setup(trunk: &str, srtp: &str) -> Option<Setup> {
    if !relay_tests::require_root() {
        return None;
    }
    let mut t = Topology::new().expect("topology");
    let dir = t.dir().join("sip");
    std::fs::create_dir_all(&dir).unwrap();
    let pki = Pki::create(&dir.join("pki")).expect("certificates");
    let kamailio = start_kamailio_tls(&t.callee, &pki, "service", &dir).expect("kamailio");
    let config = relay_sip_config(&pki, 30).replacen(
        &format!("name = \"{trunk}\"\n"),
        &format!("name = \"{trunk}\"\nsrtp = \"{srtp}\"\n"),
        1,
    );
    t.start_relayd_opts(&RelaydOpts {
        extra: config,
        ..RelaydOpts::default()
    })
    .expect("relayd");
    Some(Setup { t, kamailio, dir })
}

/// relayd's, Kamailio's and the service's logs, for failure messages.
fn logs(s: &Setup) -> String {
    let service = std::fs::read_to_string(s.dir.join("service_messages.log")).unwrap_or_default();
    format!(
        "--- relayd\n{}\n--- kamailio\n{}\n--- service (sipp)\n{service}",
        s.t.relayd_log(),
        s.kamailio.log()
    )
}

fn invite(call_id: &str, proto: &str, crypto: &str) -> String {
    let sdp = format!(
        "v=0\r\no=pbx 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
         m=audio 20000 {proto} 8\r\na=rtpmap:8 PCMA/8000\r\n{crypto}"
    );
    format!(
        "INVITE sip:voicemail@192.0.2.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-{call_id}\r\n\
         From: <sip:1000@192.0.2.10>;tag=pbx-{call_id}\r\nTo: <sip:voicemail@192.0.2.1>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:1000@192.0.2.10:5060>\r\n\
         Max-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// The PBX's SIP socket (192.0.2.10:5060, the trunk's peer).
fn pbx_sip(t: &Topology) -> UdpSocket {
    let pbx = Topology::socket(&t.caller, "192.0.2.10:5060").unwrap();
    pbx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    pbx
}

/// Sends the INVITE from the PBX's address and returns the final response,
/// which it ACKs.
fn final_response(t: &Topology, pbx: &UdpSocket, request: &str) -> String {
    pbx.send_to(request.as_bytes(), "192.0.2.1:5060").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let Ok((n, _)) = pbx.recv_from(&mut buf) else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !text.starts_with("SIP/2.0 1") {
            ack(pbx, &text);
            return text;
        }
    }
    panic!("no final response\n{}", t.relayd_log());
}

/// The whole line of header `name` in a SIP message (empty if absent).
fn header(message: &str, name: &str) -> String {
    message
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

/// The ACK of a final response, so the relay stops retransmitting it: for
/// a non-2xx the INVITE's branch and Request-URI, for a 2xx a request in
/// the dialog.
fn ack(pbx: &UdpSocket, response: &str) {
    let a = if response.starts_with("SIP/2.0 2") {
        in_dialog("ACK", 1, response)
    } else {
        let call_id = header(response, "call-id");
        let id = call_id.split(':').nth(1).unwrap_or_default().trim();
        format!(
            "ACK sip:voicemail@192.0.2.1 SIP/2.0\r\n{}\r\n{}\r\n{}\r\n{}\r\nCSeq: 1 ACK\r\n\
             Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            header(response, "via"),
            header(response, "from"),
            header(response, "to"),
            format_args!("Call-ID: {id}"),
        )
    };
    let _ = pbx.send_to(a.as_bytes(), "192.0.2.1:5060");
}

/// A request in the dialog that the 2xx `ok` to the PBX's INVITE set up: to
/// the relay's Contact, with the relay's To tag and a branch of its own.
fn in_dialog(method: &str, cseq: u32, ok: &str) -> String {
    let contact = header(ok, "contact");
    let target = contact
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(uri, _)| uri)
        .unwrap_or_else(|| panic!("no Contact URI in the 2xx:\n{ok}"));
    let call_id = header(ok, "call-id");
    let id = call_id.split(':').nth(1).unwrap_or_default().trim();
    format!(
        "{method} {target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-{id}-{cseq}-{}\r\n\
         {}\r\n{}\r\nCall-ID: {id}\r\nCSeq: {cseq} {method}\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        method.to_ascii_lowercase(),
        header(ok, "from"),
        header(ok, "to"),
    )
}

/// Sends BYE in the dialog of `ok` (again every 500 ms, as UDP wants) until
/// its 200 arrives.
fn bye(s: &Setup, pbx: &UdpSocket, ok: &str) {
    let request = in_dialog("BYE", 2, ok);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        pbx.send_to(request.as_bytes(), "192.0.2.1:5060").unwrap();
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            let Ok((n, _)) = pbx.recv_from(&mut buf) else {
                continue;
            };
            let text = String::from_utf8_lossy(&buf[..n]);
            let cseq = header(&text, "cseq");
            if text.starts_with("SIP/2.0 ") && cseq.ends_with(" 2 BYE") {
                assert!(text.starts_with("SIP/2.0 200 "), "{text}\n{}", logs(s));
                return;
            }
            if text.starts_with("SIP/2.0 2") && cseq.ends_with(" 1 INVITE") {
                // The 2xx again: our ACK was lost.
                ack(pbx, &text);
            }
        }
    }
    panic!("no response to BYE\n{}", logs(s));
}

/// Waits (up to 10 s) until relayd holds no call, rule, port or socket.
fn assert_nothing_left(t: &Topology) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = t.call(&Request::Version).unwrap();
        let left = (
            &v["calls"],
            &v["rules"],
            &v["ports_in_use"],
            &v["bound_endpoints"],
        );
        if left == (&0.into(), &0.into(), &0.into(), &0.into()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "leftovers: {v}\n{}",
            t.relayd_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One side's media socket (non-blocking), the relay endpoint that must be
/// the source of all it receives, and what it received.
struct MediaEnd<'a> {
    socket: &'a UdpSocket,
    relay: SocketAddr,
    got: Vec<Vec<u8>>,
}

/// What arrives on the ends' sockets until `until`.
fn drain(ends: &mut [MediaEnd], until: Instant) {
    let mut buf = [0u8; 2048];
    while Instant::now() < until {
        let mut idle = true;
        for end in ends.iter_mut() {
            if let Ok((n, src)) = end.socket.recv_from(&mut buf) {
                assert_eq!(src, end.relay, "a packet from elsewhere");
                end.got.push(buf[..n].to_vec());
                idle = false;
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn seq(rtp: &[u8]) -> u16 {
    u16::from_be_bytes([rtp[2], rtp[3]])
}

/// `got` holds, in any order, each of the [`PACKETS`] packets
/// [`rtp_numbered`] makes for `ssrc`, once and byte for byte.
fn assert_stream(s: &Setup, what: &str, mut got: Vec<Vec<u8>>, ssrc: u32) {
    got.sort_by_key(|p| seq(p));
    assert_eq!(
        got.len(),
        usize::from(PACKETS),
        "{what}: {} of {PACKETS} arrived\n{}",
        got.len(),
        logs(s)
    );
    for (n, p) in (0..PACKETS).zip(&got) {
        assert_eq!(*p, rtp_numbered(8, ssrc, n), "{what}, packet {n}");
    }
}

const PBX_SSRC: u32 = 0x0000_1000;
const SERVICE_SSRC: u32 = 0x5e41_0001;
/// Packets each way: 1 s of 20 ms frames.
const PACKETS: u16 = 50;

#[test]
fn plain_pbx_to_srtp_service_audio_both_ways() {
    let Some(s) = setup("voicemail", "required") else {
        return;
    };
    let t = &s.t;
    // The service answers the relay's first line (tag 1, AEAD_AES_128_GCM)
    // with a key of its own, media to its libsrtp endpoint.
    let (mut service, service_key) =
        start_srtp_service(&t.callee, &s.dir, "service", 1).expect("sipp uas");
    let service_media = Topology::socket(
        &t.callee,
        &format!("198.51.100.10:{SRTP_SERVICE_MEDIA_PORT}"),
    )
    .unwrap();
    let pbx_media = Topology::socket(&t.caller, "192.0.2.10:20000").unwrap();
    for m in [&service_media, &pbx_media] {
        m.set_nonblocking(true).unwrap();
    }

    // The PBX calls with plain RTP/AVP, no a=crypto; the relay answers it
    // plain and offers the service RTP/SAVP with its own keys.
    let pbx = pbx_sip(t);
    let ok = final_response(t, &pbx, &invite("e2e-1", "RTP/AVP", ""));
    assert!(ok.starts_with("SIP/2.0 200 "), "{ok}\n{}", logs(&s));
    let answer = ok
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert!(answer.contains(" RTP/AVP 8"), "{answer}");
    assert!(!answer.contains("a=crypto"), "{answer}");
    let relay_in = sdp_media_endpoint(answer);
    assert_eq!(relay_in.ip().to_string(), "192.0.2.1", "{answer}");

    // The relay's offer as the service received it (through Kamailio), from
    // the service's sipp log: its line with the service's tag is the key
    // the relay sends with.
    let deadline = Instant::now() + Duration::from_secs(5);
    let offer = loop {
        if let Some(o) = received_offers(&s.dir, "service").pop() {
            break o;
        }
        assert!(
            Instant::now() < deadline,
            "the service logged no INVITE\n{}",
            logs(&s)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(offer.contains(" RTP/SAVP 8"), "{offer}");
    assert_eq!(sdp_crypto(&offer).len(), Suite::ALL.len(), "{offer}");
    let (relay_out, relay_line) =
        relay_srtp_offer(&offer, &service_key).unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&s)));
    assert_eq!(relay_out.ip().to_string(), "198.51.100.1", "{offer}");
    assert_ne!(
        relay_line.to_sdp_value(),
        service_key.to_sdp_value(),
        "each side sends with its own key"
    );

    // Audio both ways at 20 ms: plain from the PBX, SRTP from the service
    // (libsrtp, the service's key).
    let mut service_tx = LibSrtp::new(&service_key.key, false).unwrap();
    let mut ends = [
        MediaEnd {
            socket: &service_media,
            relay: relay_out,
            got: Vec::new(),
        },
        MediaEnd {
            socket: &pbx_media,
            relay: relay_in,
            got: Vec::new(),
        },
    ];
    let media_start = Instant::now();
    for n in 0..PACKETS {
        pbx_media
            .send_to(&rtp_numbered(8, PBX_SSRC, n), relay_in)
            .unwrap();
        let srtp = service_tx
            .protect_rtp_vec(&rtp_numbered(8, SERVICE_SSRC, n))
            .unwrap();
        service_media.send_to(&srtp, relay_out).unwrap();
        drain(
            &mut ends,
            media_start + Duration::from_millis(20) * (u32::from(n) + 1),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while ends.iter().any(|e| e.got.len() < usize::from(PACKETS)) && Instant::now() < deadline {
        drain(&mut ends, Instant::now() + Duration::from_millis(20));
    }
    let [at_service, at_pbx] = ends.map(|e| e.got);

    // The service decrypts with the relay's offered key (libsrtp): every
    // packet the PBX sent, as it sent it.
    let mut service_rx = LibSrtp::new(&relay_line.key, true).unwrap();
    let decrypted: Vec<Vec<u8>> = at_service
        .iter()
        .map(|p| {
            assert_eq!(p.len(), 172 + 16, "G.711 plus the GCM tag");
            service_rx
                .unprotect_rtp_vec(p)
                .unwrap_or_else(|e| panic!("libsrtp rejected a packet ({e})\n{}", logs(&s)))
        })
        .collect();
    assert_stream(&s, "PBX -> service", decrypted, PBX_SSRC);
    // The PBX gets plain RTP: every packet the service protected.
    assert_stream(&s, "service -> PBX", at_pbx, SERVICE_SSRC);

    // relayctl: every flow of the call is on the userspace (crypto) path,
    // encrypting toward the service and decrypting toward the PBX; the RTP
    // flows passed XDP's checks and were carried by the forwarder.
    let flows: FlowsReply =
        serde_json::from_str(&t.relayctl_ok(&["--json", "flows", "--interval", "0"])).unwrap();
    assert!(!flows.flows.is_empty(), "no flows");
    for f in &flows.flows {
        let inside = f.local().ip().to_string() == "192.0.2.1";
        let want = if inside { "encrypt" } else { "decrypt" };
        assert_eq!(f.srtp.as_deref(), Some(want), "{f:#?}");
        assert_eq!(f.path.as_str(), "userspace", "{f:#?}");
        assert!(f.call.is_some(), "{f:#?}");
        if f.local() == relay_in || f.local() == relay_out {
            let xdp = f.view.xdp.as_ref().map_or(0, |x| x.packets);
            let userspace = f.view.userspace.as_ref().map_or(0, |x| x.packets);
            assert!(xdp >= u64::from(PACKETS), "{f:#?}");
            assert!(userspace >= u64::from(PACKETS), "{f:#?}");
            assert_eq!(f.total_drops(), 0, "{f:#?}");
        }
    }
    for local in [relay_in, relay_out] {
        assert!(
            flows.flows.iter().any(|f| f.local() == local),
            "no flow on {local}: {flows:#?}"
        );
    }
    // Neither key reaches relayd's log.
    let log = t.relayd_log();
    for line in [&relay_line, &service_key] {
        let value = line.to_sdp_value();
        let key = value.split("inline:").nth(1).unwrap();
        assert!(!log.contains(key.trim_end_matches('=')), "a key leaked");
    }

    // The PBX hangs up; the service's user agent sees the BYE and ends.
    bye(&s, &pbx, &ok);
    let status = service
        .wait(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&s)));
    assert!(
        status.success(),
        "service sipp failed ({status})\n{}",
        logs(&s)
    );
    assert_nothing_left(t);
}

/// Sends the PBX's INVITE `request` to relayd, whose PBX trunk has
/// `srtp = "{srtp}"`, and returns the final response, which must be a 488
/// that leaves nothing behind; `None` when skipped (not root).
fn refused(srtp: &str, request: &str) -> Option<String> {
    let s = setup("pbx", srtp)?;
    let r = final_response(&s.t, &pbx_sip(&s.t), request);
    assert!(r.starts_with("SIP/2.0 488 "), "{r}");
    assert_nothing_left(&s.t);
    Some(r)
}

#[test]
fn required_trunk_refuses_plain_offer_with_488_and_warning() {
    let Some(r) = refused("required", &invite("plain-1", "RTP/AVP", "")) else {
        return;
    };
    let warning = r
        .lines()
        .find(|l| l.starts_with("Warning:"))
        .unwrap_or_else(|| panic!("no Warning: {r}"));
    assert!(warning.starts_with("Warning: 399 relay \""), "{warning}");
    assert!(warning.contains("requires SRTP"), "{warning}");
}

#[test]
fn off_trunk_refuses_savp_offer() {
    let savp = invite(
        "savp-1",
        "RTP/SAVP",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n",
    );
    let Some(r) = refused("off", &savp) else {
        return;
    };
    assert!(r.contains("srtp=off"), "{r}");
}
