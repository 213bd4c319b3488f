//! Kamailio (Debian's package, its `rtpengine` module) drives relayd over the
//! NG protocol: sipp calls through Kamailio, the media goes through the
//! relay's XDP path, `$rtpstat` and `rtpengine_query_v()` show the figures,
//! and teardown leaves no rule behind. Then two relayd nodes in one rtpengine
//! set: calls spread over both, and when one stops, new calls go to the other
//! and every call still has media.
//!
//! The second node runs in userspace mode on secondary addresses of the same
//! devices (192.0.2.2, 198.51.100.2): the first node's XDP program owns the
//! devices, and it passes traffic for addresses it does not serve.

use std::{collections::BTreeMap, net::SocketAddr};

use relay_tests::{
    ng_peers::{
        self, CallLog, Kamailio, NgClient, Scenarios, SecondRelayd, Uac, calls_in_log,
        rtp_packets_per_tag,
    },
    topology::{CALLEE, CALLER, RELAY_IN, RELAY_OUT, RelaydOpts, Topology},
    unique_name,
};
use relay_user::{control::Request, ng::bencode::Value};

const NG1: &str = "127.0.0.1:2223";
const NG2: &str = "127.0.0.1:2224";
/// RTP packets each side of a call sends (the g711a sample has 236); a few
/// may go before the relay has the rule (the first packets race the 200 OK).
const MIN_PACKETS: u64 = 200;

struct Setup {
    t: Topology,
    dir: std::path::PathBuf,
    scenarios: Scenarios,
}

fn setup() -> Setup {
    ng_peers::require_tools().expect("tools");
    let mut t = Topology::new().expect("topology");
    t.start_relayd_opts(&RelaydOpts {
        ng_listen: Some(NG1.parse().unwrap()),
        ..RelaydOpts::default()
    })
    .expect("relayd");
    let dir = std::env::temp_dir().join(unique_name("relayng"));
    std::fs::create_dir_all(&dir).unwrap();
    let scenarios = Scenarios::write(&dir, CALLEE).unwrap();
    Setup { t, dir, scenarios }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("NG test files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `calls` parallel calls from the caller through Kamailio.
fn uac(s: &Setup, calls: u32, name: &str) -> (std::process::ExitStatus, String) {
    let run = Uac {
        ip: CALLER,
        proxy: RELAY_IN,
        calls,
        rate: 6,
        name,
    };
    ng_peers::run_uac(&s.t.caller, &s.scenarios, &run, &s.dir).expect("sipp UAC")
}

fn ng_call(client: &mut NgClient, name: &str) -> Value {
    client.command(name).expect("NG reply")
}

fn stat(v: &Value, path: &[&str]) -> i64 {
    let mut cur = v;
    for k in path {
        cur = cur.get(k).unwrap_or_else(|| panic!("no {k} in {cur}"));
    }
    cur.as_int().unwrap()
}

/// Every call of `calls` had media both ways through the relay.
fn assert_media(calls: &BTreeMap<String, CallLog>, kernel: bool, log: &str) {
    for (id, call) in calls {
        let (rtp, _) = call
            .rtpstat
            .unwrap_or_else(|| panic!("{id}: no $rtpstat line\n{log}"));
        assert!(rtp >= 2 * MIN_PACKETS, "{id}: $rtpstat RTP packets {rtp}");
        let query = call
            .query
            .as_ref()
            .unwrap_or_else(|| panic!("{id}: no rtpengine_query_v JSON\n{log}"));
        assert_eq!(query["result"], "ok", "{id}: {query}");
        // Kamailio read the delete reply's MOS figures: overall and per
        // label. Clean media on the namespace links scores 4.4.
        let mos = call
            .mos
            .as_ref()
            .unwrap_or_else(|| panic!("{id}: no NGMOS line\n{log}"));
        for (what, v) in [
            ("average", mos.average),
            ("lowest", mos.lowest),
            ("highest", mos.highest),
            ("caller", mos.caller),
            ("callee", mos.callee),
        ] {
            let v = v.unwrap_or_else(|| panic!("{id}: no {what} MOS: {mos:?}"));
            assert!((4.0..=4.5).contains(&v), "{id}: {what} MOS {v}: {mos:?}");
        }
        assert!(mos.samples.is_some_and(|n| n >= 1), "{id}: {mos:?}");
        assert_eq!(mos.loss_pct, Some(0), "{id}: {mos:?}");
        let per_tag = rtp_packets_per_tag(query);
        assert_eq!(per_tag.len(), 2, "{id}: two tags: {query}");
        for (tag, packets, kernelized) in per_tag {
            assert!(
                packets >= MIN_PACKETS,
                "{id}: only {packets} RTP packets from {tag}: {query}"
            );
            if kernel {
                assert!(kernelized, "{id}: {tag} not on the XDP path: {query}");
            }
        }
    }
}

fn assert_empty(v: &serde_json::Value, who: &str) {
    assert_eq!(v["calls"], 0, "{who}: {v}");
    assert_eq!(v["rules"], 0, "{who}: {v}");
    assert_eq!(v["ports_in_use"], 0, "{who}: {v}");
    assert_eq!(v["bound_endpoints"], 0, "{who}: {v}");
}

#[test]
fn kamailio_calls_through_relayd_over_ng() {
    if !relay_tests::require_root() {
        return;
    }
    let s = setup();
    let t = &s.t;
    let kamailio = Kamailio::start(
        &t.relay,
        &s.dir,
        &[RELAY_IN, RELAY_OUT],
        &[&format!("udp:{NG1}")],
    )
    .expect("kamailio");
    let _uas = ng_peers::start_uas(&t.callee, &s.scenarios, CALLEE, &s.dir).unwrap();
    let mut ng = NgClient::new(&t.relay, NG1.parse::<SocketAddr>().unwrap()).unwrap();
    assert_eq!(
        ng_call(&mut ng, "ping").get("result"),
        Some(&Value::str("pong"))
    );

    let calls = 3;
    let (status, out) = uac(&s, calls, "uac");
    let log = kamailio.log();
    assert!(
        status.success(),
        "sipp UAC failed ({status}):\n{out}\nkamailio:\n{log}\nrelayd:\n{}",
        t.relayd_log()
    );
    let seen = calls_in_log(&log, 0);
    assert_eq!(
        seen.len(),
        calls as usize,
        "calls in Kamailio's log:\n{log}"
    );
    for (id, c) in &seen {
        assert_eq!(c.node.as_deref(), Some(&*format!("udp:{NG1}")), "{id}");
    }
    assert_media(&seen, true, &log);

    // The media took the XDP path, both ways.
    let counters = t.call(&Request::Counters).unwrap();
    let redirected = counters["xdp"]["xdp_redirect"].as_u64().unwrap_or(0);
    assert!(
        redirected >= u64::from(calls) * 2 * MIN_PACKETS,
        "XDP redirected only {redirected}: {counters}"
    );
    // Teardown (rtpengine_delete on BYE) removed every rule and port.
    assert_empty(&t.call(&Request::Version).unwrap(), "relayd");
    let stats = ng_call(&mut ng, "statistics");
    let st = stats.get("statistics").unwrap();
    assert_eq!(
        stat(st, &["totalstatistics", "managedsessions"]),
        i64::from(calls)
    );
    assert_eq!(
        stat(st, &["totalstatistics", "regularterminatedsessions"]),
        i64::from(calls)
    );
    assert!(stat(st, &["totalstatistics", "relayedpackets"]) >= i64::from(calls) * 2 * 200);
    assert_eq!(
        stat(st, &["controlstatistics", "totalerrorcount"]),
        0,
        "{stats}"
    );
    let list = ng_call(&mut ng, "list");
    assert_eq!(list.get("calls"), Some(&Value::List(vec![])));
}

#[test]
fn two_relayd_nodes_share_calls_and_fail_over() {
    if !relay_tests::require_root() {
        return;
    }
    let s = setup();
    let t = &s.t;
    let (in2, out2) = ("192.0.2.2", "198.51.100.2");
    t.relay
        .ip(&["addr", "add", &format!("{in2}/24"), "dev", "in0"])
        .unwrap();
    t.relay
        .ip(&["addr", "add", &format!("{out2}/24"), "dev", "out0"])
        .unwrap();
    let mut node2 =
        SecondRelayd::start(&t.relay, &s.dir, in2, out2, NG2.parse().unwrap()).expect("node 2");
    let nodes = [format!("udp:{NG1}"), format!("udp:{NG2}")];
    let kamailio = Kamailio::start(
        &t.relay,
        &s.dir,
        &[RELAY_IN, RELAY_OUT],
        &[&nodes[0], &nodes[1]],
    )
    .expect("kamailio");
    let _uas = ng_peers::start_uas(&t.callee, &s.scenarios, CALLEE, &s.dir).unwrap();

    // Both nodes up: calls spread over the set.
    let calls = 12;
    let (status, out) = uac(&s, calls, "uac1");
    let log = kamailio.log();
    assert!(
        status.success(),
        "phase 1 sipp failed ({status}):\n{out}\n{log}"
    );
    let phase1 = calls_in_log(&log, 0);
    assert_eq!(phase1.len(), calls as usize, "{log}");
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for c in phase1.values() {
        *per_node
            .entry(c.node.clone().unwrap_or_default())
            .or_default() += 1;
    }
    assert_eq!(
        per_node.len(),
        2,
        "calls spread over both nodes: {per_node:?}"
    );
    assert_media(&phase1, false, &log);
    let mut ng1 = NgClient::new(&t.relay, NG1.parse::<SocketAddr>().unwrap()).unwrap();
    let mut ng2 = NgClient::new(&t.relay, NG2.parse::<SocketAddr>().unwrap()).unwrap();
    let managed = |ng: &mut NgClient| {
        stat(
            ng_call(ng, "statistics").get("statistics").unwrap(),
            &["totalstatistics", "managedsessions"],
        ) as usize
    };
    assert_eq!(managed(&mut ng1), per_node[&nodes[0]]);
    assert_eq!(managed(&mut ng2), per_node[&nodes[1]]);
    assert_empty(&t.call(&Request::Version).unwrap(), "node 1");
    assert_empty(&node2.call(&Request::Version).unwrap(), "node 2");

    // Node 2 stops: every new call goes to node 1, and every call has media.
    let status = node2.proc.stop().expect("node 2 was running");
    assert!(status.success(), "node 2 exit: {status}");
    let mark = log.len();
    let calls = 6;
    let (status, out) = uac(&s, calls, "uac2");
    let log = kamailio.log();
    assert!(
        status.success(),
        "phase 2 sipp failed ({status}):\n{out}\n{log}"
    );
    let phase2 = calls_in_log(&log, mark);
    assert_eq!(phase2.len(), calls as usize, "{}", &log[mark..]);
    for (id, c) in &phase2 {
        assert_eq!(c.node.as_deref(), Some(&*nodes[0]), "{id} went elsewhere");
    }
    assert_media(&phase2, true, &log[mark..]);
    assert!(!log[mark..].contains("NGFAIL"), "{}", &log[mark..]);
    // Calls whose call-id hashed to node 2 found it silent and moved on.
    let failovers = log[mark..]
        .lines()
        .filter(|l| l.contains(NG2) && (l.contains("can't") || l.contains("timeout")))
        .count();
    eprintln!("phase 2: {calls} calls on node 1; {failovers} NG errors toward node 2 logged");
    assert_eq!(managed(&mut ng1), per_node[&nodes[0]] + calls as usize);
    assert_empty(&t.call(&Request::Version).unwrap(), "node 1");
}
