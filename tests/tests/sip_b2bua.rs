//! The SIP B2BUA end to end: sipp as the PBX (UDP and TCP) calling through
//! relayd to a TLS-only service, Kamailio with its `tls` module (mutual TLS,
//! someone else's TLS stack) in front of a sipp user agent. Media runs
//! through the relay's XDP program.

use std::{
    net::UdpSocket,
    path::PathBuf,
    time::{Duration, Instant},
};

use relay_tests::{
    netns::NetNs,
    sip_peers::{
        Hangup, Peer, Pki, Uac, Uas, relay_sip_config, start_kamailio_tls, start_pbx, start_service,
    },
    topology::{RelaydOpts, Topology},
};
use relay_user::{control::Request, dataplane::RuleView};

struct Setup {
    t: Topology,
    kamailio: Peer,
    dir: PathBuf,
}

fn setup(service_identity: &str, ring_timeout_s: u32) -> Setup {
    let mut t = Topology::new().expect("topology");
    let dir = t.dir().join("sip");
    std::fs::create_dir_all(&dir).unwrap();
    let pki = Pki::create(&dir.join("pki")).expect("certificates");
    let kamailio = start_kamailio_tls(&t.callee, &pki, service_identity, &dir).expect("kamailio");
    t.start_relayd_opts(&RelaydOpts {
        extra: relay_sip_config(&pki, ring_timeout_s),
        ..RelaydOpts::default()
    })
    .expect("relayd");
    Setup { t, kamailio, dir }
}

fn uas(s: &Setup, name: &str, plan: Uas, calls: u32) -> Peer {
    start_service(&s.t.callee, &s.dir, name, plan, calls).expect("sipp uas")
}

fn uac(s: &Setup, name: &str, plan: Uac, transport: &str, extra: &[&str]) -> Peer {
    start_pbx(&s.t.caller, &s.dir, name, plan, transport, extra).expect("sipp uac")
}

/// One call between the service's and the PBX's plans over UDP: both sipp
/// scenarios must complete, and relayd must be left with nothing.
fn one_call(s: &Setup, service: Uas, pbx: Uac) {
    let mut callee = uas(s, "uas", service, 1);
    let mut caller = uac(s, "uac", pbx, "u1", &[]);
    finish(s, &mut caller, Duration::from_secs(20));
    finish(s, &mut callee, Duration::from_secs(20));
    assert_clean(s);
}

fn rules(t: &Topology) -> Vec<RuleView> {
    serde_json::from_value(t.call(&Request::Rules).unwrap()).unwrap()
}

fn version(t: &Topology) -> serde_json::Value {
    t.call(&Request::Version).unwrap()
}

/// Waits for a sipp to succeed; on failure shows every log involved.
fn finish(s: &Setup, peer: &mut Peer, limit: Duration) {
    let status = peer
        .wait(limit)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(s)));
    assert!(
        status.success(),
        "sipp failed ({status}):\n{}\n{}",
        peer.log(),
        logs(s)
    );
}

fn logs(s: &Setup) -> String {
    let mut out = format!(
        "--- relayd\n{}\n--- kamailio\n{}\n",
        s.t.relayd_log(),
        s.kamailio.log()
    );
    if let Ok(entries) = std::fs::read_dir(&s.dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with("_errors.log") || name.ends_with("_messages.log") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: String = text
                    .chars()
                    .rev()
                    .take(6000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                out += &format!("--- {name}\n{tail}\n");
            }
        }
    }
    out
}

/// Waits until relayd holds no call and no rule.
fn assert_clean(s: &Setup) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = version(&s.t);
        if v["calls"] == 0 && v["rules"] == 0 {
            assert_eq!(v["ports_in_use"], 0, "{v}");
            assert_eq!(v["bound_endpoints"], 0, "{v}");
            return;
        }
        assert!(Instant::now() < deadline, "leftovers: {v}\n{}", logs(s));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// While a call is up, both directions forward packets in XDP.
fn wait_media_both_ways(s: &Setup) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let views = rules(&s.t);
        if !views.is_empty() {
            seen = views.clone();
        }
        let xdp = |prefix: &str| {
            views
                .iter()
                .filter(|v| v.rule.local.ip().to_string() == prefix)
                .map(|v| v.xdp.as_ref().map_or(0, |x| x.packets))
                .max()
                .unwrap_or(0)
        };
        if xdp("192.0.2.1") >= 20 && xdp("198.51.100.1") >= 20 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "media did not flow through XDP: {seen:#?}\ncounters: {}\n{}",
            s.t.call(&Request::Counters).unwrap(),
            logs(s)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn require() -> bool {
    relay_tests::require_root()
}

fn call_with_audio(transport: &str, pbx_hangs_up: bool) {
    if !require() {
        return;
    }
    let s = setup("service", 30);
    let (uac_hangup, uas_hangup) = if pbx_hangs_up {
        (Hangup::Sends, Hangup::Awaits)
    } else {
        (Hangup::Awaits, Hangup::Sends)
    };
    let mut callee = uas(
        &s,
        "uas",
        Uas::Accept {
            hangup: uas_hangup,
            hold: false,
            audio_ms: 3000,
        },
        1,
    );
    let mut caller = uac(
        &s,
        "uac",
        Uac::Call {
            hangup: uac_hangup,
            hold: false,
            audio_ms: 3000,
        },
        transport,
        &[],
    );
    wait_media_both_ways(&s);
    finish(&s, &mut caller, Duration::from_secs(30));
    finish(&s, &mut callee, Duration::from_secs(30));
    assert_clean(&s);
    // Log lines carry the span of the call they belong to: the 200 OK came
    // on the service leg, whose Call-ID is the relay's own.
    let rlog = s.t.relayd_log();
    let answered = rlog
        .lines()
        .find(|l| l.contains("call answered"))
        .unwrap_or_else(|| panic!("no 'call answered' line:\n{rlog}"));
    assert!(answered.contains("sip{call_id="), "{answered}");
    let klog = s.kamailio.log();
    assert!(
        klog.contains("over tls diversion=<sip:2000@pbx.example.test>"),
        "{klog}"
    );
    assert!(
        !klog.contains("192.0.2.10"),
        "the PBX's address crossed to the service:\n{klog}"
    );
    for ns in [&s.t.caller, &s.t.callee] {
        assert_eq!(
            Topology::udp_errors(ns).unwrap().0,
            0,
            "UDP checksum errors in {}",
            ns.name()
        );
    }
}

#[test]
fn udp_call_caller_hangs_up() {
    call_with_audio("u1", true);
}

#[test]
fn tcp_call_callee_hangs_up() {
    call_with_audio("t1", false);
}

#[test]
fn cancel_before_answer() {
    if !require() {
        return;
    }
    let s = setup("service", 30);
    one_call(&s, Uas::Ring, Uac::Cancel);
}

#[test]
fn busy_is_relayed() {
    if !require() {
        return;
    }
    let s = setup("service", 30);
    one_call(&s, Uas::Busy, Uac::Fails(486));
}

#[test]
fn unanswered_invite_times_out() {
    if !require() {
        return;
    }
    let s = setup("service", 3);
    one_call(&s, Uas::Ring, Uac::Fails(408));
}

#[test]
fn hold_and_resume_by_reinvite() {
    if !require() {
        return;
    }
    let s = setup("service", 30);
    let mut callee = uas(
        &s,
        "uas",
        Uas::Accept {
            hangup: Hangup::Awaits,
            hold: true,
            audio_ms: 2000,
        },
        1,
    );
    let mut caller = uac(
        &s,
        "uac",
        Uac::Call {
            hangup: Hangup::Sends,
            hold: true,
            audio_ms: 2000,
        },
        "u1",
        &[],
    );
    wait_media_both_ways(&s);
    // During hold the rules toward the caller block.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let blocked = rules(&s.t)
            .iter()
            .any(|v| v.rule.path == relay_user::rule::Path::Block);
        if blocked {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hold never blocked media:\n{}",
            logs(&s)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    finish(&s, &mut caller, Duration::from_secs(30));
    finish(&s, &mut callee, Duration::from_secs(30));
    assert_clean(&s);
}

#[test]
fn hundred_concurrent_calls_at_20_per_second() {
    if !require() {
        return;
    }
    let s = setup("service", 30);
    let mut callee = uas(
        &s,
        "uas",
        Uas::Accept {
            hangup: Hangup::Awaits,
            hold: false,
            audio_ms: 0,
        },
        100,
    );
    let mut caller = uac(
        &s,
        "uac",
        Uac::Call {
            hangup: Hangup::Sends,
            hold: false,
            audio_ms: 5000,
        },
        "u1",
        &["-r", "20", "-m", "100", "-l", "100"],
    );
    // 100 calls at 20/s with 5 s of audio each: all up at once near the end.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut peak = 0;
    while caller.is_running() && Instant::now() < deadline {
        peak = peak.max(version(&s.t)["calls"].as_u64().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(200));
    }
    finish(&s, &mut caller, Duration::from_secs(60));
    finish(&s, &mut callee, Duration::from_secs(60));
    assert!(peak >= 90, "concurrent calls seen: {peak}");
    assert_clean(&s);
}

#[test]
fn untrusted_service_certificate_is_refused() {
    if !require() {
        return;
    }
    let s = setup("rogue", 30);
    // The keep-alive fails its handshake: the trunk goes down and calls get 503.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !s.t.relayd_log().contains("trunk down") {
        assert!(
            Instant::now() < deadline,
            "trunk not marked down:\n{}",
            logs(&s)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = s.t.relayd_log();
    assert!(log.contains("TLS handshake failed"), "{log}");
    let out = s.t.relayctl(&["trunks"]).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("voicemail") && l.contains("DOWN")),
        "{table}"
    );
    // The failed handshakes are counted where relayctl and the metrics read them.
    let out = s.t.relayctl(&["--json", "trunks"]).unwrap();
    let sip: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        sip["transport"]["tls_handshake_failures"].as_u64() >= Some(1),
        "{sip:#}"
    );
    let mut caller = uac(&s, "uac", Uac::Fails(503), "u1", &[]);
    finish(&s, &mut caller, Duration::from_secs(20));
    assert_clean(&s);
}

#[test]
fn non_trunk_source_is_ignored() {
    if !require() {
        return;
    }
    let s = setup("service", 30);
    let invite = "OPTIONS sip:relay@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.66:5060;branch=z9hG4bKx\r\n\
                  From: <sip:x@203.0.113.66>;tag=1\r\nTo: <sip:relay@192.0.2.1>\r\nCall-ID: stranger\r\n\
                  CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    let sock = attacker_socket(&s.t.attacker);
    for _ in 0..5 {
        sock.send_to(invite.as_bytes(), "192.0.2.1:5060").unwrap();
    }
    let mut buf = [0u8; 2048];
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "a non-trunk source got an answer"
    );
    // The same request from the PBX is answered.
    let pbx = Topology::socket(&s.t.caller, "192.0.2.10:5099").unwrap();
    pbx.send_to(
        invite.replace("203.0.113.66", "192.0.2.10").as_bytes(),
        "192.0.2.1:5060",
    )
    .unwrap();
    let (n, _) = pbx.recv_from(&mut buf).expect("the PBX gets 200");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("SIP/2.0 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

fn attacker_socket(ns: &NetNs) -> UdpSocket {
    let s = Topology::socket(ns, "203.0.113.66:5060").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    s
}
