//! SRTP in calls, end to end: offer/answer through relayd's control socket,
//! real packets through the namespace topology with XDP attached, and the
//! SRTP peer's crypto done by libsrtp (tests/src/libsrtp.rs), independent of
//! relay's own implementation.
//!
//! - transcrypt: a plain-RTP caller and an SRTP-only callee; audio verified
//!   on both sides, tampered packets and replays dropped and counted per flow,
//!   no key in any control-socket reply, relayctl output or the log; a
//!   caller that restarts its sequence numbers goes on seamlessly; a
//!   restarted relayd (no keys) removes the transcrypt rules instead of
//!   forwarding plain RTP onto the SRTP leg;
//! - pass-through with authenticated latching: SRTP-looking packets sent
//!   before the real caller, from another interface (dropped in XDP) or from
//!   the caller's side (failing authentication in userspace), never latch or
//!   reach the callee; the real caller latches, and the flow then runs in XDP.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use relay_tests::{
    frames::rtp_numbered, libsrtp::LibSrtp, sdp_crypto, sdp_media_endpoint, topology::Topology,
};
use relay_user::{
    control::{Client, Request},
    media::SrtpPolicy,
    rule::Policy,
    srtp::{Suite, sdes::CryptoAttribute},
};
use serde_json::Value;

fn sdp(addr: &str, port: u16, proto: &str, crypto: &[String]) -> String {
    let mut s = format!(
        "v=0\r\no=peer 1 1 IN IP4 {addr}\r\ns=call\r\nc=IN IP4 {addr}\r\nt=0 0\r\n\
         m=audio {port} {proto} 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n"
    );
    for c in crypto {
        s.push_str(&format!("a=crypto:{c}\r\n"));
    }
    s
}

/// A 172-byte PCMU packet whose payload encodes its SSRC and sequence number.
fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
    rtp_numbered(0, ssrc, seq)
}

fn protect(s: &mut LibSrtp, plain: &[u8]) -> Vec<u8> {
    s.protect_rtp_vec(plain).expect("libsrtp protect")
}

fn recv(rx: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    rx.recv_from(&mut buf)
        .ok()
        .map(|(n, from)| (buf[..n].to_vec(), from))
}

fn assert_silent(rx: &UdpSocket, what: &str) {
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    if let Some((p, from)) = recv(rx) {
        panic!("{what}: unexpected {}-byte packet from {from}", p.len());
    }
    rx.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
}

fn call(c: &mut Client, t: &Topology, r: &Request) -> Value {
    c.call(r)
        .unwrap_or_else(|e| panic!("{r:?}: {e}\nrelayd log:\n{}", t.relayd_log()))
}

/// The SRTP callee (198.51.100.10:5000, tag "b") answers call `call_id`
/// with its own `a=crypto` line; returns the SDP the relay gives the caller.
fn callee_answers_srtp(
    c: &mut Client,
    t: &Topology,
    call_id: &str,
    line: &CryptoAttribute,
) -> String {
    let v = call(
        c,
        t,
        &Request::Answer {
            call_id: call_id.into(),
            from_tag: "a".into(),
            to_tag: "b".into(),
            sdp: sdp("198.51.100.10", 5000, "RTP/SAVP", &[line.to_sdp_value()]),
            policy: None,
        },
    );
    v["sdp"].as_str().unwrap().to_string()
}

/// The control socket's view of the rule on `local` (raw JSON: the SRTP
/// mode is serialized, never read back).
fn rule_view(t: &Topology, local: SocketAddr) -> Value {
    t.call(&Request::Rule { local }).unwrap()
}

fn drops(v: &Value, path: &str, reason: &str) -> u64 {
    v[path]["drops"][reason].as_u64().unwrap_or(0)
}

fn packets(v: &Value, path: &str) -> u64 {
    v[path]["packets"].as_u64().unwrap_or(0)
}

#[test]
fn transcrypt_plain_caller_srtp_callee() {
    transcrypt("xdp");
}

/// The same with the userspace forwarder as the whole data plane.
#[test]
fn transcrypt_userspace_dataplane() {
    transcrypt("userspace");
}

fn transcrypt(mode: &str) {
    if !relay_tests::require_root() {
        return;
    }
    let mut t = Topology::new().expect("topology");
    t.start_relayd(mode).expect("relayd");
    let mut c = Client::connect(&t.control_socket()).unwrap();
    let caller = Topology::socket(&t.caller, "192.0.2.10:4000").unwrap();
    let callee = Topology::socket(&t.callee, "198.51.100.10:5000").unwrap();
    for s in [&caller, &callee] {
        s.set_read_timeout(Some(Duration::from_millis(1000)))
            .unwrap();
    }

    // The callee's leg is SRTP-only; the caller offers plain RTP.
    let v = call(
        &mut c,
        &t,
        &Request::Offer {
            call_id: "srtp-1".into(),
            from_tag: "a".into(),
            sdp: sdp("192.0.2.10", 4000, "RTP/AVP", &[]),
            from_iface: Some("inside".into()),
            to_iface: Some("outside".into()),
            policy: None,
            from_srtp: None,
            to_srtp: Some(SrtpPolicy::Required),
            srtp_passthrough: None,
        },
    );
    let to_callee = v["sdp"].as_str().unwrap().to_string();
    assert!(to_callee.contains(" RTP/SAVP 0 101\r\n"), "{to_callee}");
    let offered = sdp_crypto(&to_callee);
    assert_eq!(offered.len(), Suite::ALL.len(), "{to_callee}");
    // The callee takes the classic suite and sends with its own fresh key.
    let relay_line = offered
        .iter()
        .find(|l| l.suite() == Suite::AesCm128HmacSha1_80)
        .unwrap()
        .clone();
    let callee_line = relay_line.answer().unwrap();
    let to_caller = callee_answers_srtp(&mut c, &t, "srtp-1", &callee_line);
    assert!(to_caller.contains(" RTP/AVP 0 101\r\n"), "{to_caller}");
    assert!(!to_caller.contains("a=crypto"), "{to_caller}");
    let relay_out = sdp_media_endpoint(&to_callee);
    let relay_in = sdp_media_endpoint(&to_caller);

    // libsrtp on the callee: it unprotects with the relay's key and
    // protects with its own.
    let mut callee_rx = LibSrtp::new(&relay_line.key, true).unwrap();
    let mut callee_tx = LibSrtp::new(&callee_line.key, false).unwrap();

    // Caller -> callee: plain in, SRTP out.
    const N: u16 = 50;
    for seq in 0..N {
        let plain = rtp(0x1111, seq);
        caller.send_to(&plain, relay_in).unwrap();
        let (mut got, from) =
            recv(&callee).unwrap_or_else(|| panic!("packet {seq} lost\n{}", t.relayd_log()));
        assert_eq!(from, relay_out);
        assert_eq!(got.len(), plain.len() + 10, "80-bit tag appended");
        assert_ne!(got[12..172], plain[12..], "payload encrypted on the wire");
        let n = callee_rx
            .unprotect_rtp(&mut got, plain.len() + 10)
            .unwrap_or_else(|e| panic!("libsrtp rejected packet {seq}: {e}"));
        assert_eq!(&got[..n], &plain[..], "packet {seq}");
    }
    // The caller restarts its sequence numbers, same SSRC: the relay shifts
    // them so libsrtp sees the stream go on (N, N+1, ...) instead of the
    // relay dropping them as too old, or reusing a keystream.
    // (A jump back of more than the 128-packet replay window: a smaller one
    // cannot be told from duplicates.)
    for seq in 0..5u16 {
        let plain = rtp(0x1111, 60_000 + seq);
        caller.send_to(&plain, relay_in).unwrap();
        let (mut got, _) = recv(&callee)
            .unwrap_or_else(|| panic!("restarted packet {seq} lost\n{}", t.relayd_log()));
        let n = callee_rx
            .unprotect_rtp(&mut got, plain.len() + 10)
            .unwrap_or_else(|e| panic!("libsrtp rejected restarted packet {seq}: {e}"));
        assert_eq!(u16::from_be_bytes([got[2], got[3]]), N + seq);
        assert_eq!(got[4..n], plain[4..], "restarted packet {seq}");
    }

    // Callee -> caller: SRTP in, plain out. Keep protected copies to replay.
    let mut sent = Vec::new();
    for seq in 0..N {
        let plain = rtp(0x2222, seq);
        let srtp = protect(&mut callee_tx, &plain);
        callee.send_to(&srtp, relay_out).unwrap();
        let (got, from) =
            recv(&caller).unwrap_or_else(|| panic!("packet {seq} lost\n{}", t.relayd_log()));
        assert_eq!(from, relay_in);
        assert_eq!(got, plain, "packet {seq} decrypted");
        sent.push(srtp);
    }

    // Tampered (one payload bit) and replayed packets go nowhere and are
    // counted on the callee's flow.
    let before = rule_view(&t, relay_out);
    let mut tampered = protect(&mut callee_tx, &rtp(0x2222, N));
    tampered[40] ^= 0x01;
    callee.send_to(&tampered, relay_out).unwrap();
    for p in &sent[..3] {
        callee.send_to(p, relay_out).unwrap();
    }
    assert_silent(&caller, "tampered and replayed packets");
    let after = rule_view(&t, relay_out);
    assert_eq!(
        drops(&after, "userspace", "srtp_auth") - drops(&before, "userspace", "srtp_auth"),
        1,
        "{after:#}"
    );
    assert_eq!(
        drops(&after, "userspace", "srtp_replay") - drops(&before, "userspace", "srtp_replay"),
        3,
        "{after:#}"
    );
    // The genuine stream goes on after them.
    let plain = rtp(0x2222, N + 1);
    callee
        .send_to(&protect(&mut callee_tx, &plain), relay_out)
        .unwrap();
    assert_eq!(recv(&caller).expect("stream resumes").0, plain);

    // Both rules take the userspace (crypto) path and say which step.
    let up = rule_view(&t, relay_in);
    assert_eq!(up["rule"]["path"], "userspace", "{up:#}");
    assert_eq!(up["rule"]["srtp"], "encrypt", "{up:#}");
    assert_eq!(after["rule"]["srtp"], "decrypt", "{after:#}");
    assert!(packets(&up, "userspace") >= u64::from(N), "{up:#}");
    if mode == "xdp" {
        assert!(
            packets(&up, "xdp") >= u64::from(N),
            "XDP checked and passed up: {up:#}"
        );
    }
    let counters = t.call(&Request::Counters).unwrap();
    assert!(counters["userspace"]["drop_srtp_auth"].as_u64() >= Some(1));
    assert!(counters["userspace"]["drop_srtp_replay"].as_u64() >= Some(3));

    // relayctl shows the drops per flow next to the others.
    let out = t.relayctl(&["flows"]).unwrap();
    let flows = String::from_utf8_lossy(&out.stdout);
    assert!(
        flows.contains("auth=1") && flows.contains("replay=3"),
        "{flows}"
    );
    // ... and what the forwarder does with each direction's crypto.
    assert!(
        flows.contains("userspace/encrypt") && flows.contains("userspace/decrypt"),
        "{flows}"
    );
    let out = t.relayctl(&["drops"]).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("srtp_auth") && table.contains("srtp_replay"),
        "{table}"
    );

    // No key anywhere an operator can look.
    let keys: Vec<String> = [&relay_line, &callee_line]
        .iter()
        .map(|l| {
            l.to_sdp_value()
                .split("inline:")
                .nth(1)
                .unwrap()
                .to_string()
        })
        .collect();
    let mut seen = String::new();
    for args in [
        &["--json", "rules"][..],
        &["--json", "flows"],
        &["--json", "calls"],
        &["flows"],
        &["calls"],
    ] {
        let out = t.relayctl(args).unwrap();
        seen.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    seen.push_str(
        &t.call(&Request::Query {
            call_id: "srtp-1".into(),
        })
        .unwrap()
        .to_string(),
    );
    seen.push_str(&t.call(&Request::Rules).unwrap().to_string());
    seen.push_str(&t.relayd_log());
    for k in &keys {
        assert!(!seen.contains(k.as_str()), "a key leaked");
        // Also in its unpadded form.
        assert!(!seen.contains(k.trim_end_matches('=')), "a key leaked");
    }
    assert!(
        seen.contains("AES_CM_128_HMAC_SHA1_80"),
        "the suite is shown"
    );

    if mode != "xdp" {
        call(
            &mut c,
            &t,
            &Request::Delete {
                call_id: "srtp-1".into(),
            },
        );
        return;
    }
    // relayd restarts: the pinned transcrypt rules need keys that lived only
    // in the old process, so the new one removes them rather than forward
    // the caller's plain RTP unencrypted onto the SRTP leg.
    drop(c);
    assert!(t.stop_relayd().unwrap().success());
    t.start_relayd("xdp").expect("relayd again");
    let log = t.relayd_log();
    assert!(
        log.contains("dropping a pinned rule this relayd cannot carry on")
            && log.contains("SRTP keys are not kept across a restart"),
        "{log}"
    );
    let rules = t.call(&Request::Rules).unwrap().to_string();
    for local in [relay_in, relay_out] {
        assert!(
            !rules.contains(&local.to_string()),
            "{local} adopted: {rules}"
        );
    }
    caller.send_to(&rtp(0x1111, 100), relay_in).unwrap();
    assert_silent(&callee, "plain RTP after the restart");
}

#[test]
fn passthrough_authenticated_latching_then_xdp() {
    if !relay_tests::require_root() {
        return;
    }
    let mut t = Topology::new().expect("topology");
    t.start_relayd("xdp").expect("relayd");
    let mut c = Client::connect(&t.control_socket()).unwrap();
    let caller = Topology::socket(&t.caller, "192.0.2.10:4000").unwrap();
    let callee = Topology::socket(&t.callee, "198.51.100.10:5000").unwrap();
    let attacker = Topology::socket(&t.attacker, "203.0.113.66:4000").unwrap();
    for s in [&caller, &callee, &attacker] {
        s.set_read_timeout(Some(Duration::from_millis(1000)))
            .unwrap();
    }

    // The caller is behind NAT (latch); both legs SRTP, keys passed through.
    let caller_line = CryptoAttribute::generate(1, Suite::AeadAes128Gcm).unwrap();
    let v = call(
        &mut c,
        &t,
        &Request::Offer {
            call_id: "pt-1".into(),
            from_tag: "a".into(),
            sdp: sdp(
                "192.0.2.10",
                4000,
                "RTP/SAVP",
                &[caller_line.to_sdp_value()],
            ),
            from_iface: Some("inside".into()),
            to_iface: Some("outside".into()),
            policy: Some(Policy::Latch),
            from_srtp: None,
            to_srtp: Some(SrtpPolicy::Required),
            srtp_passthrough: Some(true),
        },
    );
    let to_callee = v["sdp"].as_str().unwrap().to_string();
    assert!(
        to_callee.contains(&format!("a=crypto:{}", caller_line.to_sdp_value())),
        "{to_callee}"
    );
    let callee_line = caller_line.answer().unwrap();
    let to_caller = callee_answers_srtp(&mut c, &t, "pt-1", &callee_line);
    let relay_in = sdp_media_endpoint(&to_caller);
    let relay_out = sdp_media_endpoint(&to_callee);
    let up = rule_view(&t, relay_in);
    assert_eq!(up["rule"]["path"], "forward", "{up:#}");
    assert_eq!(up["rule"]["srtp"], "passthrough", "{up:#}");

    // Attackers get there first with SRTP-looking packets: an RTP header and
    // a tag made with a key of their own. The one on another interface (the
    // edge) is dropped in XDP: the rule is bound to the inside device.
    let wrong = CryptoAttribute::generate(1, Suite::AeadAes128Gcm).unwrap();
    let mut forger = LibSrtp::new(&wrong.key, false).unwrap();
    for seq in 0..20 {
        attacker
            .send_to(&protect(&mut forger, &rtp(0x6666, seq)), relay_in)
            .unwrap();
    }
    assert_silent(&callee, "forged SRTP from another interface");
    let v = rule_view(&t, relay_in);
    assert_eq!(drops(&v, "xdp", "bad_source"), 20, "{v:#}");
    // One on the caller's side (another port there, as behind the same NAT)
    // reaches userspace, fails authentication and teaches nothing.
    let on_path = Topology::socket(&t.caller, "192.0.2.10:4666").unwrap();
    for seq in 20..40 {
        on_path
            .send_to(&protect(&mut forger, &rtp(0x6666, seq)), relay_in)
            .unwrap();
    }
    assert_silent(&callee, "forged SRTP before the real peer");
    let v = rule_view(&t, relay_in);
    assert_eq!(drops(&v, "userspace", "srtp_auth"), 20, "{v:#}");
    assert!(v["latched_source"].is_null(), "nothing latched: {v:#}");

    // The real caller's packets authenticate and latch.
    let mut caller_tx = LibSrtp::new(&caller_line.key, false).unwrap();
    let mut callee_rx = LibSrtp::new(&caller_line.key, true).unwrap();
    const N: u16 = 100;
    for seq in 0..N {
        let plain = rtp(0x1234, seq);
        let srtp = protect(&mut caller_tx, &plain);
        caller.send_to(&srtp, relay_in).unwrap();
        let (mut got, from) =
            recv(&callee).unwrap_or_else(|| panic!("packet {seq} lost\n{}", t.relayd_log()));
        assert_eq!(from, relay_out);
        assert_eq!(got, srtp, "pass-through leaves the packet as it is");
        let n = callee_rx.unprotect_rtp(&mut got, srtp.len()).unwrap();
        assert_eq!(&got[..n], &plain[..]);
        if seq == 0 {
            // Let relayd hand the learned source to the kernel.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let v = rule_view(&t, relay_in);
    assert_eq!(v["latched_source"], "192.0.2.10:4000", "{v:#}");
    let user = packets(&v, "userspace");
    assert!(
        (1..10).contains(&user),
        "only the first packets went up: {v:#}"
    );
    assert!(
        packets(&v, "xdp") >= u64::from(N),
        "the rest stayed in XDP: {v:#}"
    );

    // Now locked: the on-path attacker is dropped in the kernel as a bad
    // source, even with a replayed genuine packet.
    let genuine = protect(&mut caller_tx, &rtp(0x1234, N));
    on_path.send_to(&genuine, relay_in).unwrap();
    for seq in 40..50 {
        on_path
            .send_to(&protect(&mut forger, &rtp(0x6666, seq)), relay_in)
            .unwrap();
    }
    assert_silent(&callee, "attacker after the latch");
    let after = rule_view(&t, relay_in);
    assert_eq!(drops(&after, "xdp", "bad_source"), 20 + 11, "{after:#}");
    assert_eq!(packets(&after, "userspace"), user, "{after:#}");

    call(
        &mut c,
        &t,
        &Request::Delete {
            call_id: "pt-1".into(),
        },
    );
}
