//! SRTP policy on SIP trunks: a trunk with `srtp = "required"` refuses a
//! plain-RTP INVITE with 488 and a Warning saying why, and one with
//! `srtp = "off"` refuses RTP/SAVP; no call, rule or port stays behind. The
//! TLS service (Kamailio, as in sip_b2bua.rs) is up so the refusal is the
//! media policy's, not a trunk that is down.

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use relay_tests::{
    sip_peers::{Peer, Pki, relay_sip_config, start_kamailio_tls},
    topology::{RelaydOpts, Topology},
};
use relay_user::control::Request;

fn setup(pbx_srtp: &str) -> (Topology, Peer) {
    let mut t = Topology::new().expect("topology");
    let dir = t.dir().join("sip");
    std::fs::create_dir_all(&dir).unwrap();
    let pki = Pki::create(&dir.join("pki")).expect("certificates");
    let kamailio = start_kamailio_tls(&t.callee, &pki, "service", &dir).expect("kamailio");
    let config = relay_sip_config(&pki, 30).replacen(
        "name = \"pbx\"\n",
        &format!("name = \"pbx\"\nsrtp = \"{pbx_srtp}\"\n"),
        1,
    );
    t.start_relayd_opts(&RelaydOpts {
        extra: config,
        ..RelaydOpts::default()
    })
    .expect("relayd");
    (t, kamailio)
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

/// Sends the INVITE from the PBX's address and returns the final response.
fn final_response(t: &Topology, request: &str) -> String {
    let pbx = Topology::socket(&t.caller, "192.0.2.10:5060").unwrap();
    pbx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    pbx.send_to(request.as_bytes(), "192.0.2.1:5060").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let Ok((n, _)) = pbx.recv_from(&mut buf) else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !text.starts_with("SIP/2.0 1") {
            ack(&pbx, &text);
            return text;
        }
    }
    panic!("no final response\n{}", t.relayd_log());
}

/// The ACK of a non-2xx final response (same branch), so the relay stops
/// retransmitting it.
fn ack(pbx: &UdpSocket, response: &str) {
    let header = |name: &str| {
        response
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
            .unwrap_or_default()
            .to_string()
    };
    let call_id = header("call-id");
    let id = call_id.split(':').nth(1).unwrap_or_default().trim();
    let a = format!(
        "ACK sip:voicemail@192.0.2.1 SIP/2.0\r\n{}\r\n{}\r\n{}\r\n{}\r\nCSeq: 1 ACK\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        header("via"),
        header("from"),
        header("to"),
        format_args!("Call-ID: {id}"),
    );
    let _ = pbx.send_to(a.as_bytes(), "192.0.2.1:5060");
}

fn assert_nothing_left(t: &Topology) {
    let v = t.call(&Request::Version).unwrap();
    assert_eq!(
        (&v["calls"], &v["rules"], &v["ports_in_use"]),
        (&0.into(), &0.into(), &0.into()),
        "{v}"
    );
}

#[test]
fn required_trunk_refuses_plain_offer_with_488_and_warning() {
    if !relay_tests::require_root() {
        return;
    }
    let (t, _kamailio) = setup("required");
    let r = final_response(&t, &invite("plain-1", "RTP/AVP", ""));
    assert!(r.starts_with("SIP/2.0 488 "), "{r}");
    let warning = r
        .lines()
        .find(|l| l.starts_with("Warning:"))
        .unwrap_or_else(|| panic!("no Warning: {r}"));
    assert!(warning.starts_with("Warning: 399 relay \""), "{warning}");
    assert!(warning.contains("requires SRTP"), "{warning}");
    assert_nothing_left(&t);
}

#[test]
fn off_trunk_refuses_savp_offer() {
    if !relay_tests::require_root() {
        return;
    }
    let (t, _kamailio) = setup("off");
    let r = final_response(
        &t,
        &invite(
            "savp-1",
            "RTP/SAVP",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n",
        ),
    );
    assert!(r.starts_with("SIP/2.0 488 "), "{r}");
    assert!(r.contains("srtp=off"), "{r}");
    assert_nothing_left(&t);
}
