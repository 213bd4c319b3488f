//! The media core end to end: offer and answer through relayd's control
//! socket, then real RTP both ways through the XDP program in the namespace
//! topology; re-offers (new port, hold, resume), delete, and 10,000 calls that
//! leave nothing behind.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use relay_common::DropReason;
use relay_tests::{sdp_media_endpoint, topology::Topology};
use relay_user::{
    control::{Client, Request},
    dataplane::{CountersView, RuleView, maps::FlowMaps},
};

fn sdp(addr: &str, port: u16, direction: &str) -> String {
    format!(
        "v=0\r\no=pbx 1 1 IN IP4 {addr}\r\ns=call\r\nc=IN IP4 {addr}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na={direction}\r\n"
    )
}

fn rtp(ssrc: u32, seq: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&(seq as u16).to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend(std::iter::repeat_n(0xd5, 156));
    p
}

fn seq_of(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[12], p[13], p[14], p[15]])
}

struct Calls<'a> {
    t: &'a Topology,
    client: Client,
}

impl Calls<'_> {
    fn call(&mut self, r: &Request) -> serde_json::Value {
        self.client
            .call(r)
            .unwrap_or_else(|e| panic!("{r:?}: {e}\nrelayd log:\n{}", self.t.relayd_log()))
    }

    fn offer(&mut self, call_id: &str, from_tag: &str, sdp: String, initial: bool) -> String {
        let (from_iface, to_iface) = if initial {
            (Some("inside".to_string()), Some("outside".to_string()))
        } else {
            (None, None)
        };
        let v = self.call(&Request::Offer {
            from_srtp: None,
            to_srtp: None,
            srtp_passthrough: None,
            call_id: call_id.into(),
            from_tag: from_tag.into(),
            sdp,
            from_iface,
            to_iface,
            policy: None,
        });
        v["sdp"].as_str().unwrap().to_string()
    }

    fn answer(&mut self, call_id: &str, from_tag: &str, to_tag: &str, sdp: String) -> String {
        let v = self.call(&Request::Answer {
            call_id: call_id.into(),
            from_tag: from_tag.into(),
            to_tag: to_tag.into(),
            sdp,
            policy: None,
        });
        v["sdp"].as_str().unwrap().to_string()
    }
}

fn rules(t: &Topology) -> Vec<RuleView> {
    serde_json::from_value(t.call(&Request::Rules).unwrap()).unwrap()
}

fn counters(t: &Topology) -> CountersView {
    serde_json::from_value(t.call(&Request::Counters).unwrap()).unwrap()
}

/// Sends `n` packets and checks each arrives intact from `from`.
fn exchange(tx: &UdpSocket, to: SocketAddr, rx: &UdpSocket, from: SocketAddr, n: u32) {
    let mut buf = [0u8; 2048];
    for seq in 0..n {
        let p = rtp(0xabc, seq);
        tx.send_to(&p, to).unwrap();
        let (len, src) = rx
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("packet {seq} to {to}: {e}"));
        assert_eq!(src, from);
        assert_eq!(&buf[..len], &p[..]);
    }
}

fn assert_silent(rx: &UdpSocket) {
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2048];
    if let Ok((n, from)) = rx.recv_from(&mut buf) {
        panic!("unexpected {n}-byte packet from {from}");
    }
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
}

fn drain(rx: &UdpSocket) {
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 2048];
    while rx.recv_from(&mut buf).is_ok() {}
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
}

#[test]
fn offer_answer_reoffer_hold_delete() {
    if !relay_tests::require_root() {
        return;
    }
    let mut t = Topology::new().expect("topology");
    t.start_relayd("xdp").expect("relayd");
    let mut c = Calls {
        t: &t,
        client: Client::connect(&t.control_socket()).unwrap(),
    };
    let caller = Topology::socket(&t.caller, "192.0.2.10:4000").unwrap();
    let callee = Topology::socket(&t.callee, "198.51.100.10:5000").unwrap();

    // Offer from the PBX side; the callee sees only the relay's outside address.
    let to_callee = c.offer("call-1", "tag-a", sdp("192.0.2.10", 4000, "sendrecv"), true);
    assert!(
        !to_callee.contains("192.0.2."),
        "inside address leaked:\n{to_callee}"
    );
    let relay_out = sdp_media_endpoint(&to_callee);
    assert_eq!(relay_out.ip().to_string(), "198.51.100.1");
    assert!(rules(&t).is_empty(), "no rules before both ends are known");
    let to_caller = c.answer(
        "call-1",
        "tag-a",
        "tag-b",
        sdp("198.51.100.10", 5000, "sendrecv"),
    );
    assert!(
        !to_caller.contains("198.51.100."),
        "outside address leaked:\n{to_caller}"
    );
    let relay_in = sdp_media_endpoint(&to_caller);
    assert_eq!(relay_in.ip().to_string(), "192.0.2.1");
    assert!(
        to_caller.contains("a=rtpmap:101 telephone-event/8000"),
        "{to_caller}"
    );

    exchange(&caller, relay_in, &callee, relay_out, 100);
    exchange(&callee, relay_out, &caller, relay_in, 100);
    let out = t.relayctl(&["calls"]).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("call-1") && table.contains(" up ") && table.contains(&relay_in.to_string()),
        "{table}"
    );
    let xdp = counters(&t).xdp.unwrap();
    assert!(
        xdp["xdp_redirect"] >= 190,
        "media took the XDP path: {xdp:?}"
    );

    // Re-offer from the callee moving it to port 5004 while the caller streams:
    // every packet sent after the answer reaches the new port.
    let callee_new = Topology::socket(&t.callee, "198.51.100.10:5004").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU32::new(0));
    let sender = {
        let tx = caller.try_clone().unwrap();
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut seq = 0u32;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && seq < 20_000 {
                tx.send_to(&rtp(0xabc, seq), relay_in).unwrap();
                seq += 1;
                sent.store(seq, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    // Drain the new port while the sender runs, so no socket buffer overflows.
    let receiver = {
        let rx = callee_new.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut got = BTreeSet::new();
            let mut buf = [0u8; 2048];
            rx.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            loop {
                match rx.recv_from(&mut buf) {
                    Ok((n, _)) => {
                        got.insert(seq_of(&buf[..n]));
                    }
                    Err(_) if stop.load(Ordering::Relaxed) => return got,
                    Err(_) => {}
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let offer_to_caller = c.offer(
        "call-1",
        "tag-b",
        sdp("198.51.100.10", 5004, "sendrecv"),
        false,
    );
    assert_eq!(
        sdp_media_endpoint(&offer_to_caller),
        relay_in,
        "the caller's view does not change"
    );
    c.answer(
        "call-1",
        "tag-b",
        "tag-a",
        sdp("192.0.2.10", 4000, "sendrecv"),
    );
    let mark = sent.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let last = sent.load(Ordering::Relaxed);
    assert!(
        last > mark + 100,
        "the sender kept going after the answer ({mark}..{last})"
    );
    let got = receiver.join().unwrap();
    callee_new
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let missing: Vec<u32> = (mark..last).filter(|s| !got.contains(s)).collect();
    assert!(missing.is_empty(), "lost after the answer: {missing:?}");
    drain(&callee);
    exchange(&callee_new, relay_out, &caller, relay_in, 50);

    // Hold: the caller puts the call on hold (sendonly). Nothing is forwarded
    // toward the caller any more; the caller's music on hold still flows.
    c.offer(
        "call-1",
        "tag-a",
        sdp("192.0.2.10", 4000, "sendonly"),
        false,
    );
    c.answer(
        "call-1",
        "tag-a",
        "tag-b",
        sdp("198.51.100.10", 5004, "recvonly"),
    );
    let blocked_before = counters(&t).drops(DropReason::Blocked);
    for seq in 0..20 {
        callee_new.send_to(&rtp(0xdef, seq), relay_out).unwrap();
    }
    assert_silent(&caller);
    assert!(counters(&t).drops(DropReason::Blocked) >= blocked_before + 20);
    exchange(&caller, relay_in, &callee_new, relay_out, 20);

    // Resume.
    c.offer(
        "call-1",
        "tag-a",
        sdp("192.0.2.10", 4000, "sendrecv"),
        false,
    );
    c.answer(
        "call-1",
        "tag-a",
        "tag-b",
        sdp("198.51.100.10", 5004, "sendrecv"),
    );
    exchange(&callee_new, relay_out, &caller, relay_in, 20);
    exchange(&caller, relay_in, &callee_new, relay_out, 20);

    // Query shows the call; delete removes every rule and frees every port.
    let q = c.call(&Request::Query {
        call_id: "call-1".into(),
    });
    assert_eq!(q["legs"][1]["streams"][0]["peer_rtp"], "198.51.100.10:5004");
    c.call(&Request::Delete {
        call_id: "call-1".into(),
    });
    let v = c.call(&Request::Version);
    assert_eq!(
        (v["calls"].as_u64(), v["rules"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
    assert_eq!(v["ports_in_use"], 0);
    assert_eq!(v["bound_endpoints"], 0);
    caller.send_to(&rtp(1, 1), relay_in).unwrap();
    assert_silent(&callee_new);
    let maps = FlowMaps::open_pinned(t.pin_path()).unwrap();
    assert!(maps.is_empty());
}

#[test]
fn ten_thousand_calls_leave_nothing_behind() {
    if !relay_tests::require_root() {
        return;
    }
    let mut t = Topology::new().expect("topology");
    t.start_relayd("xdp").expect("relayd");
    let mut c = Calls {
        t: &t,
        client: Client::connect(&t.control_socket()).unwrap(),
    };
    let started = Instant::now();
    for i in 0..10_000u32 {
        let id = format!("bulk-{i}");
        c.offer(
            &id,
            "a",
            sdp("192.0.2.10", 4000 + (i % 1000) as u16 * 2, "sendrecv"),
            true,
        );
        c.answer(
            &id,
            "a",
            "b",
            sdp("198.51.100.10", 5000 + (i % 1000) as u16 * 2, "sendrecv"),
        );
        // Keep a few hundred calls up at once so ports are reused under load.
        if i >= 300 {
            c.call(&Request::Delete {
                call_id: format!("bulk-{}", i - 300),
            });
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "bounded in time"
        );
    }
    let v = c.call(&Request::Version);
    assert_eq!(v["calls"], 300);
    assert_eq!(v["rules"], 300 * 4);
    for i in 9_700..10_000u32 {
        c.call(&Request::Delete {
            call_id: format!("bulk-{i}"),
        });
    }
    let v = c.call(&Request::Version);
    assert_eq!(v["calls"], 0, "{v}");
    assert_eq!(v["rules"], 0, "{v}");
    assert_eq!(v["ports_in_use"], 0, "{v}");
    assert_eq!(v["bound_endpoints"], 0, "{v}");
    let maps = FlowMaps::open_pinned(t.pin_path()).unwrap();
    assert_eq!(maps.len(), 0, "FLOWS entries left");
    assert_eq!(maps.state.keys().count(), 0, "FLOW_STATE entries left");
    assert_eq!(maps.stats.keys().count(), 0, "FLOW_STATS entries left");
    assert_eq!(counters(&t).userspace.unwrap()["call_rule_errors"], 0);
}
