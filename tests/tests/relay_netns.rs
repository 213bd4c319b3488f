//! End to end: relayd in a network namespace, the real XDP program attached in
//! driver mode to its veths, ordinary UDP sockets in the caller's and callee's
//! namespaces exchanging RTP-shaped packets through rules installed with
//! relayctl, and an attacker namespace spraying the media ports and spoofing
//! sources. The same scenario runs with `--dataplane userspace`.

use std::{net::UdpSocket, time::Duration};

use relay_common::DropReason;
use relay_tests::topology::{self, Topology};
use relay_user::{
    control::Request,
    dataplane::{CountersView, RuleView},
};

const PACKETS: u16 = 200;

fn rtp(ssrc: u32, seq: u16, marker: u8) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(seq as u32 * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..160u32).map(|i| (i as u8) ^ marker ^ (seq as u8)));
    p
}

fn rules(t: &Topology) -> Vec<RuleView> {
    serde_json::from_value(t.call(&Request::Rules).unwrap()).unwrap()
}

fn rule_on(t: &Topology, local: &str) -> RuleView {
    rules(t)
        .into_iter()
        .find(|v| v.rule.local.to_string() == local)
        .unwrap_or_else(|| panic!("no rule on {local}"))
}

fn counters(t: &Topology) -> CountersView {
    serde_json::from_value(t.call(&Request::Counters).unwrap()).unwrap()
}

/// Sends `PACKETS` RTP packets from `tx` to `to` and checks that `rx` gets
/// every one, byte for byte, from `expect_from`.
fn stream(t: &Topology, tx: &UdpSocket, to: &str, rx: &UdpSocket, expect_from: &str, ssrc: u32) {
    let mut buf = [0u8; 2048];
    for seq in 0..PACKETS {
        let p = rtp(ssrc, seq, 0x5a);
        tx.send_to(&p, to).unwrap();
        let (n, from) = rx
            .recv_from(&mut buf)
            .unwrap_or_else(|e| {
                panic!(
                    "packet {seq} to {to} not delivered: {e}\nUDP errors caller {:?} callee {:?}\ncounters: {:?}\nrules: {:#?}\nrelayd log:\n{}",
                    Topology::udp_errors(&t.caller),
                    Topology::udp_errors(&t.callee),
                    counters(t),
                    rules(t),
                    t.relayd_log()
                )
            });
        assert_eq!(from.to_string(), expect_from, "source of packet {seq}");
        assert_eq!(&buf[..n], &p[..], "payload of packet {seq}");
    }
}

/// Nothing more arrives on `rx` within a short wait.
fn silent(rx: &UdpSocket) {
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2048];
    if let Ok((n, from)) = rx.recv_from(&mut buf) {
        panic!("unexpected {n}-byte packet from {from}");
    }
}

fn scenario(mode: &str) {
    if !relay_tests::require_root() {
        return;
    }
    let mut t = Topology::new().expect("topology");
    t.start_relayd(mode).expect("relayd");

    // A call's two directions, strict on the declared peers.
    t.relayctl_ok(&[
        "rule",
        "add",
        "--local",
        "192.0.2.1:30000",
        "--peer",
        "192.0.2.10:4000",
        "--out-src",
        "198.51.100.1:40000",
        "--dst",
        "198.51.100.10:5000",
    ]);
    t.relayctl_ok(&[
        "rule",
        "add",
        "--local",
        "198.51.100.1:40000",
        "--peer",
        "198.51.100.10:5000",
        "--out-src",
        "192.0.2.1:30000",
        "--dst",
        "192.0.2.10:4000",
    ]);
    // A latching rule: the caller's port is not known in advance.
    t.relayctl_ok(&[
        "rule",
        "add",
        "--local",
        "192.0.2.1:30002",
        "--policy",
        "latch",
        "--out-src",
        "198.51.100.1:40002",
        "--dst",
        "198.51.100.10:5002",
    ]);

    let caller = Topology::socket(&t.caller, "192.0.2.10:4000").unwrap();
    let callee = Topology::socket(&t.callee, "198.51.100.10:5000").unwrap();
    stream(
        &t,
        &caller,
        "192.0.2.1:30000",
        &callee,
        "198.51.100.1:40000",
        0x1111,
    );
    stream(
        &t,
        &callee,
        "198.51.100.1:40000",
        &caller,
        "192.0.2.1:30000",
        0x2222,
    );

    // Latching: the first source wins and is locked.
    let latcher = Topology::socket(&t.caller, "192.0.2.10:4100").unwrap();
    let latch_rx = Topology::socket(&t.callee, "198.51.100.10:5002").unwrap();
    stream(
        &t,
        &latcher,
        "192.0.2.1:30002",
        &latch_rx,
        "198.51.100.1:40002",
        0x3333,
    );
    let v = rule_on(&t, "192.0.2.1:30002");
    assert_eq!(
        v.latched_source.map(|s| s.to_string()).as_deref(),
        Some("192.0.2.10:4100")
    );
    assert_eq!(v.latched_ssrc, Some(0x3333));
    let intruder = Topology::socket(&t.caller, "192.0.2.10:4101").unwrap();
    for seq in 0..20 {
        intruder
            .send_to(&rtp(0x3333, seq, 1), "192.0.2.1:30002")
            .unwrap();
        latcher
            .send_to(&rtp(0x4444, seq, 1), "192.0.2.1:30002")
            .unwrap();
    }
    silent(&latch_rx);
    assert!(rule_on(&t, "192.0.2.1:30002").drops(DropReason::BadSource) >= 40);

    // The attacker: spray the inside port range, then spoof sources at a live rule.
    let before = counters(&t);
    let sprayer = Topology::socket(&t.attacker, "203.0.113.66:6000").unwrap();
    let mut sprayed = 0u64;
    for port in 30004..30104u16 {
        sprayer
            .send_to(&rtp(0x6666, port, 2), ("192.0.2.1", port))
            .unwrap();
        sprayed += 1;
    }
    let spoofers = [
        Topology::spoofing_socket(&t.attacker, "192.0.2.10:4999").unwrap(),
        Topology::spoofing_socket(&t.attacker, "192.0.2.99:4000").unwrap(),
    ];
    for s in &spoofers {
        for seq in 0..25 {
            s.send_to(&rtp(0x1111, seq, 3), "192.0.2.1:30000").unwrap();
        }
    }
    silent(&callee);
    silent(&caller);
    let after = counters(&t);
    let bad_source = after.drops(DropReason::BadSource) - before.drops(DropReason::BadSource);
    assert!(
        bad_source >= 50,
        "spoofed packets dropped as bad_source: {bad_source}"
    );
    assert!(rule_on(&t, "192.0.2.1:30000").drops(DropReason::BadSource) >= 50);
    {
        // The caller's exact address and port, forged on the edge interface:
        // the rule is bound to the inside device (XDP reads the ingress
        // device from its context, the forwarder from IP_PKTINFO; the
        // kernel's rp_filter, off in test namespaces, would not stop it).
        let before = rule_on(&t, "192.0.2.1:30000").drops(DropReason::BadSource);
        let forger = Topology::spoofing_socket(&t.attacker, "192.0.2.10:4000").unwrap();
        for seq in 0..25 {
            forger
                .send_to(&rtp(0x1111, seq, 5), "192.0.2.1:30000")
                .unwrap();
        }
        silent(&callee);
        let forged = rule_on(&t, "192.0.2.1:30000").drops(DropReason::BadSource) - before;
        assert_eq!(forged, 25, "the forged peer dropped on the wrong interface");
    }
    if mode == "xdp" {
        let no_flow = after.drops(DropReason::NoFlow) - before.drops(DropReason::NoFlow);
        assert!(
            no_flow >= sprayed,
            "unsolicited packets dropped in XDP: {no_flow} of {sprayed}"
        );
        let xdp = after.xdp.as_ref().expect("xdp counters");
        assert!(
            xdp["xdp_redirect"] >= PACKETS as u64,
            "forwarded in the kernel: {xdp:?}"
        );
        let v = rule_on(&t, "192.0.2.1:30000");
        assert!(
            v.xdp.as_ref().unwrap().packets >= PACKETS as u64 - 5,
            "most packets took the XDP path: {v:?}"
        );
    } else {
        let user = after.userspace.as_ref().expect("userspace counters");
        assert!(user["forwarded"] >= 3 * PACKETS as u64, "{user:?}");
    }

    // The receiving kernels found every checksum right.
    for ns in [&t.caller, &t.callee] {
        let (csum, errs) = Topology::udp_errors(ns).unwrap();
        assert_eq!(
            (csum, errs),
            (0, 0),
            "UDP InCsumErrors/InErrors in {}",
            ns.name()
        );
    }

    // relayctl shows the rules and counters an operator reads.
    let table = t.relayctl_ok(&["rules"]);
    assert!(
        table.contains("192.0.2.1:30000") && table.contains("192.0.2.10:4100*"),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&t.relayctl_ok(&["--json", "counters"])).unwrap();
    assert!(json["userspace"].is_object());
    // The path each flow's packets take follows the data-plane mode.
    let flows: serde_json::Value =
        serde_json::from_str(&t.relayctl_ok(&["--json", "flows", "--interval", "0"])).unwrap();
    let want = if mode == "xdp" { "xdp" } else { "userspace" };
    for f in flows["flows"].as_array().unwrap() {
        assert_eq!(f["path"], want, "{f:#}");
    }

    // Deleting the rules stops the media and frees the sockets: they stay
    // bound in the forwarder's pool, where a packet finds no rule and is
    // counted as such (in userspace mode; XDP drops it before).
    for local in ["192.0.2.1:30000", "198.51.100.1:40000", "192.0.2.1:30002"] {
        t.relayctl_ok(&["rule", "del", local]);
    }
    let no_flow = |c: &CountersView| {
        let map = if mode == "xdp" { &c.xdp } else { &c.userspace };
        map.as_ref()
            .and_then(|m| m.get("drop_no_flow").copied())
            .unwrap_or(0)
    };
    let before = no_flow(&counters(&t));
    caller
        .send_to(&rtp(0x1111, 999, 4), "192.0.2.1:30000")
        .unwrap();
    silent(&callee);
    assert_eq!(
        no_flow(&counters(&t)),
        before + 1,
        "the packet to a pooled socket counted as no_flow"
    );
    let version = t.call(&Request::Version).unwrap();
    assert_eq!(version["rules"], 0);
    assert_eq!(version["bound_endpoints"], 0);
    assert!(
        version["idle_sockets"].as_u64().unwrap() >= 3,
        "sockets kept for the next rules: {version}"
    );

    let status = t.stop_relayd().unwrap();
    assert!(
        status.success(),
        "relayd exit: {status}\n{}",
        t.relayd_log()
    );
}

#[test]
fn xdp_forwards_and_drops_unsolicited() {
    scenario("xdp");
}

#[test]
fn userspace_forwarder_same_semantics() {
    scenario("userspace");
}

/// Rules live in pinned maps: relayctl reads them with relayd down, and a
/// restarted relayd adopts and forwards them.
#[test]
fn pinned_rules_survive_restart() {
    if !relay_tests::require_root() {
        return;
    }
    let mut t = Topology::new().expect("topology");
    t.start_relayd("xdp").expect("relayd");
    t.relayctl_ok(&[
        "rule",
        "add",
        "--local",
        "192.0.2.1:30010",
        "--peer",
        "192.0.2.10:4010",
        "--out-src",
        "198.51.100.1:40010",
        "--dst",
        "198.51.100.10:5010",
    ]);
    assert!(t.stop_relayd().unwrap().success());

    let out = t.relayctl(&["--json", "rules"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
    let views: Vec<RuleView> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].rule.local.to_string(), "192.0.2.1:30010");

    t.start_relayd("xdp").expect("relayd again");
    let caller = Topology::socket(&t.caller, "192.0.2.10:4010").unwrap();
    let callee = Topology::socket(&t.callee, "198.51.100.10:5010").unwrap();
    stream(
        &t,
        &caller,
        "192.0.2.1:30010",
        &callee,
        "198.51.100.1:40010",
        0x7777,
    );
}

/// When the kernel's flow map is full, new rules are carried by the
/// userspace forwarder instead of failing, and their packets still arrive.
#[test]
fn full_fast_path_falls_back_to_userspace() {
    if !relay_tests::require_root() {
        return;
    }
    let mut t = Topology::new().expect("topology");
    t.start_relayd_with("xdp", 2).expect("relayd");
    for i in 0..3u16 {
        t.relayctl_ok(&[
            "rule",
            "add",
            "--local",
            &format!("192.0.2.1:{}", 30020 + 2 * i),
            "--peer",
            &format!("192.0.2.10:{}", 4020 + 2 * i),
            "--out-src",
            &format!("198.51.100.1:{}", 40020 + 2 * i),
            "--dst",
            &format!("198.51.100.10:{}", 5020 + 2 * i),
        ]);
    }
    let c = counters(&t);
    let user = c.userspace.as_ref().unwrap();
    assert_eq!(user["fallback_rules"], 1, "{user:?}");
    assert_eq!(user["kernel_write_failures"], 1, "{user:?}");
    for i in 0..3u16 {
        let tx = Topology::socket(&t.caller, &format!("192.0.2.10:{}", 4020 + 2 * i)).unwrap();
        let rx = Topology::socket(&t.callee, &format!("198.51.100.10:{}", 5020 + 2 * i)).unwrap();
        stream(
            &t,
            &tx,
            &format!("192.0.2.1:{}", 30020 + 2 * i),
            &rx,
            &format!("198.51.100.1:{}", 40020 + 2 * i),
            0x100 + i as u32,
        );
    }
    let fallback = rule_on(&t, "192.0.2.1:30024");
    assert_eq!(fallback.userspace.as_ref().unwrap().packets, PACKETS as u64);
    assert_eq!(fallback.xdp.as_ref().unwrap().packets, 0);
    // relayctl says which rule the forwarder carries, and has no kernel entry for it.
    let flows: serde_json::Value =
        serde_json::from_str(&t.relayctl_ok(&["--json", "flows", "--interval", "0"])).unwrap();
    for f in flows["flows"].as_array().unwrap() {
        let carried = f["rule"]["local"] == "192.0.2.1:30024";
        assert_eq!(
            f["path"],
            if carried { "userspace" } else { "xdp" },
            "{f:#}"
        );
    }
    let detail: serde_json::Value =
        serde_json::from_str(&t.relayctl_ok(&["--json", "flow", "192.0.2.1:30024"])).unwrap();
    assert!(detail["kernel"].is_null(), "{detail:#}");
    // Removing the fallback rule makes its port unsolicited again.
    t.relayctl_ok(&["rule", "del", "192.0.2.1:30024"]);
    let before = counters(&t).drops(DropReason::NoFlow);
    let tx = Topology::socket(&t.caller, "192.0.2.10:4024").unwrap();
    tx.send_to(&rtp(1, 1, 1), "192.0.2.1:30024").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(counters(&t).drops(DropReason::NoFlow), before + 1);
}

/// A configuration error names the field and exits with code 2.
#[test]
fn bad_config_exits_2() {
    let dir = std::env::temp_dir().join(relay_tests::unique_name("relaycfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[[interface]]\nname = \"in\"\ndevice = \"lo\"\naddress = \"192.0.2.1\"\nports = \"30001-30999\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(topology::binary("relayd").unwrap())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("interface[0].ports"), "{err}");
}
