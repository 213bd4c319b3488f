//! relayctl and the metrics endpoint against a real relayd in the namespace
//! topology, with real RTP through a call's rules and a static rule:
//! the `flows` column layout (values that vary masked), every control-socket
//! reply and `--json` output validated against docs/control-api.schema.json,
//! `flow ID` with its kernel map entries, `drops`, `watch`, the Prometheus
//! text scraped over HTTP and parsed, the socket's mode, the pinned maps read
//! with relayd stopped, and the one-line errors.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::unix::{fs::MetadataExt, process::CommandExt},
    time::Duration,
};

use relay_tests::{
    sdp_media_endpoint,
    topology::{RelaydOpts, Topology},
};
use relay_user::control::{Client, Request, flows::FlowRef};
use serde_json::Value;

const METRICS: &str = "127.0.0.1:9477";
const NG: &str = "127.0.0.1:2223";
const PACKETS: u32 = 100;
const SPOOFED: u32 = 30;

/// The schema with `$ref` pointed at one of its definitions.
fn validator(def: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/control-api.schema.json"
    ))
    .expect("docs/control-api.schema.json");
    let mut schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    schema["$ref"] = Value::String(format!("#/$defs/{def}"));
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

fn assert_valid(def: &str, v: &Value) {
    let errors: Vec<String> = validator(def)
        .iter_errors(v)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{def} does not match the schema: {errors:#?}\n{}",
        serde_json::to_string_pretty(v).unwrap()
    );
}

/// One raw request line and its reply line, validated as the envelope and
/// its result as `def`.
fn raw_call(t: &Topology, request: &Request, def: &str) -> Value {
    let mut s = std::os::unix::net::UnixStream::connect(t.control_socket()).unwrap();
    let mut line = serde_json::to_vec(request).unwrap();
    line.push(b'\n');
    s.write_all(&line).unwrap();
    let mut reply = String::new();
    let mut r = std::io::BufReader::new(s);
    std::io::BufRead::read_line(&mut r, &mut reply).unwrap();
    let v: Value = serde_json::from_str(&reply).unwrap();
    assert_valid("response", &v);
    assert_eq!(v["ok"], true, "{request:?}: {v}");
    assert_valid(def, &v["result"]);
    v["result"].clone()
}

fn relayctl_json(t: &Topology, args: &[&str], def: &str) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let v: Value = serde_json::from_str(&t.relayctl_ok(&all)).expect("relayctl --json");
    assert_valid(def, &v);
    v
}

/// A failing relayctl: non-zero exit and exactly one stderr line, without
/// a panic or a Debug dump.
fn relayctl_err(out: std::process::Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    for bad in ["panicked", "RUST_BACKTRACE", "Os {", "kind:", "Error {"] {
        assert!(!err.contains(bad), "no {bad:?} in: {err}");
    }
    err
}

fn sdp(addr: &str, port: u16) -> String {
    format!(
        "v=0\r\no=pbx 1 1 IN IP4 {addr}\r\ns=call\r\nc=IN IP4 {addr}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
}

fn rtp(ssrc: u32, seq: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&(seq as u16).to_be_bytes());
    p.extend_from_slice(&(seq * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend(std::iter::repeat_n(0xd5, 160));
    p
}

/// Sends `n` packets and waits for each on `rx`.
fn exchange(tx: &UdpSocket, to: SocketAddr, rx: &UdpSocket, n: u32, first_seq: u32) {
    let mut buf = [0u8; 2048];
    for seq in first_seq..first_seq + n {
        tx.send_to(&rtp(0xabc, seq), to).unwrap();
        rx.recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("packet {seq} to {to}: {e}"));
    }
}

/// One HTTP exchange with the metrics endpoint, inside the relay namespace.
fn http(t: &Topology, request: Vec<u8>) -> String {
    t.relay
        .run(move || -> std::io::Result<String> {
            let mut s = TcpStream::connect(METRICS)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(&request)?;
            let mut out = Vec::new();
            s.read_to_end(&mut out)?;
            Ok(String::from_utf8_lossy(&out).into_owned())
        })
        .unwrap()
        .expect("HTTP exchange")
}

/// GET /metrics, parsed.
fn scrape(t: &Topology) -> prometheus_parse::Scrape {
    let text = http(t, b"GET /metrics HTTP/1.1\r\nHost: relay\r\n\r\n".to_vec());
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP reply");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("openmetrics-text"), "{head}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

fn metric(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {name}{labels:?}"));
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => panic!("{name} is not a plain value"),
    }
}

/// The cells of a table line: runs separated by two or more spaces.
fn cells(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
}

const FLOWS_HEADER: [&str; 17] = [
    "ID",
    "CALL",
    "LEG",
    "DIR",
    "RELAY",
    "POLICY",
    "SOURCE",
    "DESTINATION",
    "PATH",
    "PACKETS",
    "BYTES",
    "PPS",
    "DROPS",
    "LOSS%",
    "JITTER",
    "AGE",
    "IDLE",
];

#[test]
fn relayctl_and_metrics_on_a_running_relayd() {
    if !relay_tests::require_root() {
        return;
    }
    let mut t = Topology::new().expect("topology");
    t.start_relayd_opts(&RelaydOpts {
        extra: format!("[metrics]\nlisten = \"{METRICS}\"\n"),
        ng_listen: Some(NG.parse().unwrap()),
        ..RelaydOpts::default()
    })
    .expect("relayd");

    // The control socket: a socket, mode 0600, owned by root.
    let meta = std::fs::metadata(t.control_socket()).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600, "control socket mode");
    assert_eq!(meta.uid(), 0, "control socket owner");

    // A call through the control socket, and a static rule.
    let mut client = Client::connect(&t.control_socket()).unwrap();
    let to_callee = client
        .call(&Request::Offer {
            from_srtp: None,
            to_srtp: None,
            srtp_passthrough: None,
            call_id: "call-1".into(),
            from_tag: "from-1".into(),
            sdp: sdp("192.0.2.10", 4000),
            from_iface: Some("inside".into()),
            to_iface: Some("outside".into()),
            policy: None,
        })
        .unwrap();
    let to_caller = client
        .call(&Request::Answer {
            call_id: "call-1".into(),
            from_tag: "from-1".into(),
            to_tag: "to-1".into(),
            sdp: sdp("198.51.100.10", 5000),
            policy: None,
        })
        .unwrap();
    let relay_in = sdp_media_endpoint(to_caller["sdp"].as_str().unwrap());
    let relay_out = sdp_media_endpoint(to_callee["sdp"].as_str().unwrap());
    t.relayctl_ok(&[
        "rule",
        "add",
        "--local",
        "192.0.2.1:30900",
        "--peer",
        "192.0.2.10:4900",
        "--out-src",
        "198.51.100.1:40900",
        "--dst",
        "198.51.100.10:5900",
    ]);
    let caller = Topology::socket(&t.caller, "192.0.2.10:4000").unwrap();
    let callee = Topology::socket(&t.callee, "198.51.100.10:5000").unwrap();
    exchange(&caller, relay_in, &callee, PACKETS, 0);
    exchange(&callee, relay_out, &caller, PACKETS, 0);
    // Spoofed sources at the call's inside endpoint: bad_source drops.
    let spoofer = Topology::spoofing_socket(&t.attacker, "192.0.2.10:4999").unwrap();
    for seq in 0..SPOOFED {
        spoofer.send_to(&rtp(0xbad, seq), relay_in).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));

    // Every reply of the control socket matches the schema.
    raw_call(&t, &Request::Version, "version");
    raw_call(&t, &Request::Rules, "rules");
    raw_call(&t, &Request::Rule { local: relay_in }, "rule_view");
    raw_call(&t, &Request::Counters, "counters");
    raw_call(&t, &Request::Calls, "calls");
    raw_call(
        &t,
        &Request::Query {
            call_id: "call-1".into(),
        },
        "call",
    );
    raw_call(&t, &Request::Sip, "sip");
    let flows = raw_call(&t, &Request::Flows, "flows");
    raw_call(
        &t,
        &Request::Flow {
            flow: FlowRef::Local(relay_in),
        },
        "flow_detail",
    );
    raw_call(
        &t,
        &Request::Flow {
            flow: FlowRef::Id(1),
        },
        "flow_detail",
    );
    let all = flows["flows"].as_array().unwrap();
    assert_eq!(all.len(), 5, "4 call rules and a static one: {flows:#}");

    // The flows table: header and column order, the call's row with the
    // values that vary masked.
    let table = t.relayctl_ok(&["flows", "--interval", "0", "--sort", "call"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(cells(lines[0]), FLOWS_HEADER, "{table}");
    assert_eq!(lines.len(), 6, "{table}");
    let row = lines
        .iter()
        .map(|l| cells(l))
        .find(|c| c[4] == relay_in.to_string())
        .unwrap_or_else(|| panic!("no row for {relay_in}:\n{table}"));
    let masked: Vec<&str> = row
        .iter()
        .enumerate()
        .map(|(i, c)| match i {
            0 | 14 | 15 | 16 => "*",
            _ => c.as_str(),
        })
        .collect();
    assert_eq!(
        masked,
        [
            "*",
            "call-1",
            "a:from-1",
            "inside>outside",
            &relay_in.to_string(),
            "strict",
            "192.0.2.10:4000",
            "198.51.100.10:5000",
            "xdp",
            "100",
            "16.8K",
            "-",
            &format!("src={SPOOFED}"),
            // 100 packets in sequence: nothing lost.
            "0.0",
            "*",
            "*",
            "*"
        ],
        "{table}"
    );
    let last = cells(lines[5]);
    assert_eq!(
        (last[1].as_str(), last[2].as_str(), last[3].as_str()),
        ("static", "-", "-"),
        "static rules sort last by call:\n{table}"
    );
    // A narrow terminal keeps the must-have columns in order, and fits.
    let out = t
        .relayctl_command(&["flows", "--interval", "0"])
        .unwrap()
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    let narrow = String::from_utf8_lossy(&out.stdout);
    assert!(narrow.lines().all(|l| l.chars().count() <= 100), "{narrow}");
    let head = cells(narrow.lines().next().unwrap());
    let must = ["ID", "CALL", "RELAY", "PATH", "PACKETS", "PPS"];
    assert_eq!(
        head.iter()
            .filter(|h| must.contains(&h.as_str()))
            .collect::<Vec<_>>(),
        must,
        "{narrow}"
    );
    // Filters.
    let only_drops = t.relayctl_ok(&["flows", "--interval", "0", "--drops"]);
    assert_eq!(only_drops.lines().count(), 2, "{only_drops}");
    let static_only = t.relayctl_ok(&["flows", "--interval", "0", "--call", "static"]);
    assert!(static_only.contains("192.0.2.1:30900"), "{static_only}");
    assert_eq!(static_only.lines().count(), 2, "{static_only}");

    // --json with packet rates from two samples while media flows.
    let sender = std::thread::spawn({
        let caller = caller.try_clone().unwrap();
        move || {
            for seq in 0..150u32 {
                caller.send_to(&rtp(0xabc, 1000 + seq), relay_in).unwrap();
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    let json = relayctl_json(&t, &["flows", "--interval", "1"], "flows");
    sender.join().unwrap();
    let flow = json["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"]["local"] == relay_in.to_string())
        .unwrap();
    let pps = flow["pps"].as_f64().expect("a rate");
    assert!((30.0..=120.0).contains(&pps), "pps {pps}");
    assert_eq!(flow["call"]["call_id"], "call-1");
    assert_eq!(flow["path"], "xdp");

    // flow ID: everything, with the kernel's entries per CPU.
    let detail = relayctl_json(&t, &["flow", &relay_in.to_string()], "flow_detail");
    let id = detail["flow"]["rule"]["id"].as_u64().unwrap();
    let per_cpu: u64 = detail["kernel"]["stats_per_cpu"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["packets"].as_u64().unwrap())
        .sum();
    assert_eq!(per_cpu, detail["flow"]["xdp"]["packets"].as_u64().unwrap());
    assert_eq!(detail["kernel"]["rule"]["id"].as_u64(), Some(id));
    let text = t.relayctl_ok(&["flow", &id.to_string()]);
    for want in ["call             call-1", "FLOWS key", "FLOW_STATE", "cpu0"] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }

    // drops: the table and its JSON.
    let drops = t.relayctl_ok(&["drops", "--interval", "0.2"]);
    assert_eq!(
        cells(drops.lines().next().unwrap()),
        ["REASON", "XDP", "USERSPACE", "TOTAL", "PER_S", "MEANING"],
        "{drops}"
    );
    let bad = drops
        .lines()
        .map(cells)
        .find(|c| c[0] == "bad_source")
        .unwrap();
    assert!(bad[3].parse::<u32>().unwrap() >= SPOOFED, "{drops}");
    relayctl_json(&t, &["drops", "--interval", "0"], "counters");
    relayctl_json(&t, &["calls"], "call_views");

    // watch, not on a terminal: a bounded number of frames, then exit 0.
    let frames = t.relayctl_ok(&["watch", "--interval", "0.2", "--count", "2"]);
    assert_eq!(frames.matches("relayctl watch").count(), 2, "{frames}");
    assert!(frames.contains("RELAY"), "{frames}");
    assert!(
        frames.ends_with("\x1b[?1049l"),
        "terminal restored: {frames:?}"
    );

    // Metrics: parsed, and the same figures the control socket shows.
    let pong = t
        .relay
        .run(|| -> std::io::Result<String> {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.send_to(b"c1 d7:command4:pinge", NG)?;
            let mut buf = [0u8; 512];
            let n = s.recv(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .unwrap()
        .expect("NG ping");
    assert_eq!(pong, "c1 d6:result4:ponge");
    let m = scrape(&t);
    assert_eq!(
        metric(&m, "relay_ng_requests_total", &[("command", "ping")]),
        1.0
    );
    let views: Vec<Value> = serde_json::from_value(raw_call(&t, &Request::Rules, "rules")).unwrap();
    let xdp_packets: u64 = views
        .iter()
        .map(|v| v["xdp"]["packets"].as_u64().unwrap())
        .sum();
    assert!(xdp_packets >= 2 * PACKETS as u64);
    assert_eq!(
        metric(&m, "relay_packets_total", &[("path", "xdp")]),
        xdp_packets as f64
    );
    let counters = raw_call(&t, &Request::Counters, "counters");
    assert_eq!(
        metric(
            &m,
            "relay_drops_total",
            &[("path", "xdp"), ("reason", "bad_source")]
        ),
        counters["xdp"]["drop_bad_source"].as_u64().unwrap() as f64
    );
    assert!(
        metric(
            &m,
            "relay_drops_total",
            &[("path", "xdp"), ("reason", "bad_source")]
        ) >= SPOOFED as f64
    );
    assert_eq!(metric(&m, "relay_calls", &[]), 1.0);
    assert_eq!(metric(&m, "relay_rules", &[("path", "xdp")]), 5.0);
    assert_eq!(metric(&m, "relay_up", &[]), 1.0);
    // Anything else gets a short error, and an endless header is cut off.
    let reply = http(&t, b"GET / HTTP/1.1\r\n\r\n".to_vec());
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    let reply = http(&t, b"POST /metrics HTTP/1.1\r\n\r\n".to_vec());
    assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");
    let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 10_000));
    let reply = http(&t, long);
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    // Deleting the call keeps its packets in the totals: counters never go down.
    client
        .call(&Request::Delete {
            call_id: "call-1".into(),
        })
        .unwrap();
    let m = scrape(&t);
    assert_eq!(
        metric(&m, "relay_packets_total", &[("path", "xdp")]),
        xdp_packets as f64
    );
    assert_eq!(metric(&m, "relay_calls", &[]), 0.0);
    assert_eq!(metric(&m, "relay_rules", &[("path", "xdp")]), 1.0);

    // A user other than root gets one line saying so.
    let out = t
        .relayctl_command(&["flows", "--interval", "0"])
        .unwrap()
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = relayctl_err(out);
    assert!(err.contains("permission denied"), "{err}");

    // relayd down: the pinned maps, kernel state only, said once.
    assert!(t.stop_relayd().unwrap().success(), "{}", t.relayd_log());
    let out = t.relayctl(&["flows", "--interval", "0"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let note = String::from_utf8_lossy(&out.stderr);
    assert_eq!(note.lines().count(), 1, "{note}");
    assert!(note.contains("kernel state only"), "{note}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        cells(table.lines().next().unwrap()),
        FLOWS_HEADER,
        "{table}"
    );
    // The maps know no calls: no flow claims to be static.
    let row = table
        .lines()
        .map(cells)
        .find(|c| c[4] == "192.0.2.1:30900")
        .unwrap_or_else(|| panic!("no static rule row:\n{table}"));
    assert_eq!(row[1], "?", "{table}");
    assert!(!table.contains("static"), "{table}");
    let json = relayctl_json(&t, &["flows", "--interval", "0"], "flows");
    assert_eq!(json["kernel_only"], true);
    let detail = relayctl_json(&t, &["flow", "192.0.2.1:30900"], "flow_detail");
    assert_eq!(detail["kernel_only"], true);
    assert!(detail["kernel"]["stats_per_cpu"].is_array());
    relayctl_json(&t, &["drops", "--interval", "0"], "counters");
}

/// Nothing to read at all: one line that says both, non-zero exit.
#[test]
fn relayctl_errors_are_one_line() {
    if !relay_tests::require_root() {
        return;
    }
    let dir = std::env::temp_dir().join(relay_tests::unique_name("relayctl"));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(relay_tests::topology::binary("relayctl").unwrap())
            .arg("--socket")
            .arg(dir.join("relayd.sock"))
            .arg("--pin-path")
            .arg(dir.join("no-maps"))
            .args(args)
            .output()
            .unwrap()
    };
    let err = relayctl_err(run(&["flows"]));
    assert!(
        err.contains("relayd is not running") && err.contains("no maps are pinned"),
        "{err}"
    );
    let err = relayctl_err(run(&["calls"]));
    assert!(err.contains("relayd is not running"), "{err}");
    let err = relayctl_err(run(&["flow", "not-an-id"]));
    assert!(
        err.contains("neither a rule id nor a relay endpoint"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIP trunks as relayctl and the metrics show them, after a real SIP
/// exchange (an OPTIONS from the PBX answered 200).
#[test]
fn trunks_and_sip_metrics() {
    if !relay_tests::require_root() {
        return;
    }
    let mut t = Topology::new().expect("topology");
    t.start_relayd_opts(&RelaydOpts {
        extra: format!(
            r#"[metrics]
listen = "{METRICS}"

[sip]
listen_udp = ["192.0.2.1:5060"]

[[trunk]]
name = "pbx"
transport = "udp"
peer = "192.0.2.10:5060"
interface = "inside"
route_to = "service"
options_interval_s = 0

[[trunk]]
name = "service"
transport = "udp"
peer = "198.51.100.10:5060"
interface = "outside"
options_interval_s = 30
"#
        ),
        ..RelaydOpts::default()
    })
    .expect("relayd");

    let pbx = Topology::socket(&t.caller, "192.0.2.10:5060").unwrap();
    let options = "OPTIONS sip:192.0.2.1:5060 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-relayctl-1\r\n\
        Max-Forwards: 70\r\n\
        From: <sip:pbx@192.0.2.10>;tag=ping-1\r\n\
        To: <sip:relay@192.0.2.1>\r\n\
        Call-ID: options-1@192.0.2.10\r\n\
        CSeq: 1 OPTIONS\r\n\
        Content-Length: 0\r\n\r\n";
    pbx.send_to(options.as_bytes(), "192.0.2.1:5060").unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = pbx.recv_from(&mut buf).expect("a reply to OPTIONS");
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(reply.starts_with("SIP/2.0 200"), "{reply}");

    let table = t.relayctl_ok(&["trunks"]);
    let row = |name: &str| {
        table
            .lines()
            .map(cells)
            .find(|c| c[0] == name)
            .unwrap_or_else(|| panic!("no trunk {name}:\n{table}"))
    };
    assert_eq!(row("pbx")[1..], ["up", "0", "off (not pinged)"], "{table}");
    assert_eq!(row("service")[3], "every 30s", "{table}");
    let json = relayctl_json(&t, &["trunks"], "sip");

    let m = scrape(&t);
    assert!(metric(&m, "relay_sip_responses_sent_total", &[("class", "2xx")]) >= 1.0);
    assert_eq!(metric(&m, "relay_tls_handshake_failures_total", &[]), 0.0);
    for trunk in json["trunks"].as_array().unwrap() {
        let name = trunk["name"].as_str().unwrap();
        let up = if trunk["up"] == true { 1.0 } else { 0.0 };
        assert_eq!(
            metric(&m, "relay_trunk_up", &[("trunk", name)]),
            up,
            "{name}"
        );
    }
}
