//! The NG server against a real [`Relay`] (userspace data plane on loopback
//! addresses), driven with request bytes captured from Kamailio 5.6's
//! rtpengine module (Debian's `kamailio` package) talking to relayd: a sipp
//! call through Kamailio with `rtpengine_offer`, `rtpengine_answer`,
//! `$rtpstat`, `rtpengine_query_v`, `block_media`, `unblock_media` and
//! `rtpengine_delete` (captured on loopback with tshark). The requests the
//! module never sends (`list`, `statistics`, JSON, `rtpp-flags` of newer
//! modules) are written in the same shape.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicU8, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    Ng,
    bencode::{Value, decode},
};
use crate::{
    config::Config,
    dataplane::Dataplane,
    relay::Relay,
    rule::{Path as RulePath, Policy},
};
use crate::{srtp::Suite, test_rng::Rng};

// ---- captured from Kamailio 5.6.3 (cookie SP bencode) ----

pub const PING: &str = "0_5998_0 d7:command4:pinge";
pub const OFFER: &str = "0_5998_1 d8:supportsl10:load limite3:sdp142:v=0\r\no=caller 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n3:ICE6:remove5:label6:caller9:directionl6:inside7:outsidee5:flagsl13:trust-addresse7:replacel6:origin18:session-connectione7:call-id16:1-6029@127.0.0.113:received-froml3:IP49:127.0.0.1e8:from-tag14:6029SIPpTag0017:command5:offere";
pub const ANSWER: &str = "0_6000_0 d8:supportsl10:load limite3:sdp142:v=0\r\no=callee 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n5:label6:callee5:flagsl13:trust-addresse7:replacel6:origin18:session-connectione7:call-id16:1-6029@127.0.0.113:received-froml3:IP49:127.0.0.1e8:from-tag14:6029SIPpTag0016:to-tag14:6023SIPpTag0117:command6:answere";
/// `rtpengine_query_v()` in the BYE route.
pub const QUERY: &str = "0_5998_2 d8:supportsl10:load limite7:call-id16:1-6029@127.0.0.113:received-froml3:IP49:127.0.0.1e8:from-tag14:6029SIPpTag0016:to-tag14:6023SIPpTag0117:command5:querye";
/// `$rtpstat` in the BYE route (the same query).
pub const QUERY_RTPSTAT: &str = "0_5998_3 d8:supportsl10:load limite7:call-id16:1-6029@127.0.0.113:received-froml3:IP49:127.0.0.1e8:from-tag14:6029SIPpTag0016:to-tag14:6023SIPpTag0117:command5:querye";
pub const BLOCK_MEDIA: &str = "0_5998_4 d8:supportsl10:load limite7:call-id16:1-6029@127.0.0.113:received-froml3:IP49:127.0.0.1e7:command11:block mediae";
pub const UNBLOCK_MEDIA: &str = "0_5998_5 d8:supportsl10:load limite7:call-id16:1-6029@127.0.0.113:received-froml3:IP49:127.0.0.1e7:command13:unblock mediae";
/// `rtpengine_delete()` in the BYE route: from-tag only.
pub const DELETE: &str = "0_5998_6 d8:supportsl10:load limite7:call-id16:1-6029@127.0.0.113:received-froml3:IP49:127.0.0.1e8:from-tag14:6029SIPpTag0017:command6:deletee";

// ---- written in the same shape ----

pub const LIST: &str = "0_5998_7 d5:limiti10e7:command4:liste";
pub const STATISTICS: &str = "0_5998_8 d7:command10:statisticse";
/// Kamailio 5.8+ with `rtpengine_offer(..)` and daemon-side flag parsing:
/// the flags travel unparsed as `rtpp-flags`.
pub const OFFER_RTPP_FLAGS: &str = "1_77_1 d8:supportsl10:load limite3:sdp142:v=0\r\no=caller 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6002 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n7:call-id6:rtpp-18:from-tag2:ft7:command5:offer16:sip-message-type11:sip request10:rtpp-flags87:replace-origin replace-session-connection direction=inside direction=outside asymmetrice";

pub const CAPTURED_REQUESTS: &[&str] = &[
    PING,
    OFFER,
    ANSWER,
    QUERY,
    QUERY_RTPSTAT,
    BLOCK_MEDIA,
    UNBLOCK_MEDIA,
    DELETE,
    LIST,
    STATISTICS,
    OFFER_RTPP_FLAGS,
];

const CALL: &str = "1-6029@127.0.0.1";

/// A relay in userspace mode on loopback addresses of its own (tests run in
/// parallel): inside 127.77.N.2 (ports 30000-30099), outside 127.77.N.3
/// (40000-40099).
struct Fixture {
    rt: tokio::runtime::Runtime,
    relay: Mutex<Relay>,
    ng: Ng,
    net: u8,
    client: SocketAddr,
    now: Instant,
}

fn fixture() -> Fixture {
    fixture_with("", "30000-30099")
}

fn fixture_with(media: &str, inside_ports: &str) -> Fixture {
    static NEXT: AtomicU8 = AtomicU8::new(1);
    let net = NEXT.fetch_add(1, Ordering::Relaxed);
    let text = format!(
        "[dataplane]\nmode = \"userspace\"\n\n[media]\n{media}\n\n\
         [[interface]]\nname = \"inside\"\ndevice = \"lo\"\naddress = \"127.77.{net}.2\"\nports = \"{inside_ports}\"\n\n\
         [[interface]]\nname = \"outside\"\ndevice = \"lo\"\naddress = \"127.77.{net}.3\"\nports = \"40000-40099\"\n"
    );
    let (config, ifs) = Config::parse(&text, Path::new("ng-test.toml")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let relay = {
        let _g = rt.enter();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let dp = Dataplane::start(&config, ifs, tx).unwrap();
        Relay::new(dp, config.media.clone()).unwrap()
    };
    let now = Instant::now();
    Fixture {
        rt,
        relay: Mutex::new(relay),
        ng: Ng::new(now),
        net,
        client: "127.0.0.1:5060".parse().unwrap(),
        now,
    }
}

impl Fixture {
    /// Sends a datagram, returns the raw reply.
    fn raw(&mut self, packet: &[u8]) -> Option<Vec<u8>> {
        let _g = self.rt.enter();
        self.ng.datagram(&self.relay, self.client, packet, self.now)
    }

    /// Sends `cookie SP bencode`, checks the cookie comes back, returns the
    /// decoded reply.
    fn send(&mut self, packet: &str) -> Value {
        let reply = self.raw(packet.as_bytes()).expect("a reply");
        let (cookie, _) = packet.split_once(' ').unwrap();
        let (rc, body) = reply.split_at(cookie.len() + 1);
        assert_eq!(&rc[..cookie.len()], cookie.as_bytes(), "same cookie");
        assert_eq!(rc[cookie.len()], b' ');
        decode(body).unwrap_or_else(|e| panic!("reply is bencode: {e}: {reply:?}"))
    }

    /// Builds and sends a request dictionary under a fresh cookie.
    fn call(&mut self, pairs: &[(&str, Value)]) -> Value {
        static COOKIE: AtomicU8 = AtomicU8::new(0);
        let dict = Value::Dict(
            pairs
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
                .collect(),
        );
        let mut packet =
            format!("t_{}_{} ", self.net, COOKIE.fetch_add(1, Ordering::Relaxed)).into_bytes();
        packet.extend(super::bencode::encode(&dict));
        let reply = self.raw(&packet).unwrap();
        let space = reply.iter().position(|&b| b == b' ').unwrap();
        decode(&reply[space + 1..]).unwrap()
    }

    fn inside(&self) -> String {
        format!("127.77.{}.2", self.net)
    }

    fn outside(&self) -> String {
        format!("127.77.{}.3", self.net)
    }

    fn relay(&self) -> std::sync::MutexGuard<'_, Relay> {
        self.relay.lock().unwrap()
    }
}

fn result(v: &Value) -> &str {
    v.get("result").and_then(Value::as_str).unwrap_or("<none>")
}

fn reason(v: &Value) -> &str {
    v.get("error-reason").and_then(Value::as_str).unwrap_or("")
}

fn int(v: &Value, path: &[&str]) -> i64 {
    let mut cur = v;
    for key in path {
        cur = cur.get(key).unwrap_or_else(|| panic!("no {key} in {cur}"));
    }
    cur.as_int()
        .unwrap_or_else(|| panic!("{path:?} is not an int"))
}

fn sdp(addr: &str, port: u16, extra: &str) -> Value {
    Value::str(format!(
        "v=0\r\no=x 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n{extra}"
    ))
}

fn offer(call: &str, addr: &str, port: u16, extra: &[(&str, Value)]) -> Vec<(&'static str, Value)> {
    let mut v = vec![
        ("command", Value::str("offer")),
        ("call-id", Value::str(call)),
        ("from-tag", Value::str("a")),
        ("sdp", sdp(addr, port, "")),
        ("direction", Value::list_of_str(["inside", "outside"])),
    ];
    for (k, val) in extra {
        let k: &'static str = Box::leak(k.to_string().into_boxed_str());
        v.retain(|(key, _)| *key != k);
        v.push((k, val.clone()));
    }
    v
}

fn answer(call: &str, addr: &str, port: u16) -> Vec<(&'static str, Value)> {
    vec![
        ("command", Value::str("answer")),
        ("call-id", Value::str(call)),
        ("from-tag", Value::str("a")),
        ("to-tag", Value::str("b")),
        ("sdp", sdp(addr, port, "")),
    ]
}

#[test]
fn captured_kamailio_call() {
    let mut f = fixture();
    assert_eq!(
        f.raw(PING.as_bytes()).unwrap(),
        b"0_5998_0 d6:result4:ponge"
    );

    // The reply bytes as relayd sent them to Kamailio in the captured call
    // (there with the relay on 127.0.0.3 / 127.0.0.2).
    let expect = |cookie: &str, relay: &str, port: u16, who: &str| -> Vec<u8> {
        let sdp = format!(
            "v=0\r\no={who} 53655765 2353687637 IN IP4 {relay}\r\ns=-\r\nc=IN IP4 {relay}\r\n\
             t=0 0\r\nm=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n"
        );
        format!("{cookie} d3:sdp{}:{sdp}6:result2:oke", sdp.len()).into_bytes()
    };
    let (inside, outside) = (f.inside(), f.outside());
    assert_eq!(
        f.raw(OFFER.as_bytes()).unwrap(),
        expect("0_5998_1", &outside, 40000, "caller")
    );
    assert_eq!(
        f.raw(ANSWER.as_bytes()).unwrap(),
        expect("0_6000_0", &inside, 30000, "callee")
    );
    // (Both again, from the cache.)
    let r = f.send(OFFER);
    assert_eq!(result(&r), "ok", "{r}");
    let sdp = r.get("sdp").and_then(Value::as_str).unwrap().to_string();
    assert!(
        sdp.contains(&format!("c=IN IP4 {}\r\n", f.outside())),
        "{sdp}"
    );
    assert!(sdp.contains(&format!(
        "o=caller 53655765 2353687637 IN IP4 {}\r\n",
        f.outside()
    )));
    assert!(sdp.contains("m=audio 40000 RTP/AVP 8\r\n"), "{sdp}");
    assert!(
        !sdp.contains("127.0.0.1"),
        "the caller's address leaked: {sdp}"
    );
    assert!(r.get("warning").is_none(), "{r}");

    let r = f.send(ANSWER);
    assert_eq!(result(&r), "ok", "{r}");
    let sdp = r.get("sdp").and_then(Value::as_str).unwrap();
    assert!(
        sdp.contains(&format!("c=IN IP4 {}\r\n", f.inside())),
        "{sdp}"
    );
    assert!(sdp.contains("m=audio 30000 RTP/AVP 8\r\n"), "{sdp}");
    {
        let relay = f.relay();
        assert_eq!(relay.dp.rules().count(), 4, "RTP and RTCP both ways");
        let call = relay.media.call(CALL).unwrap();
        assert_eq!(call.legs[0].policy, Policy::Strict, "trust-address");
        assert_eq!(call.legs[1].policy, Policy::Strict, "trust-address");
    }

    for q in [QUERY, QUERY_RTPSTAT] {
        let r = f.send(q);
        assert_eq!(result(&r), "ok", "{r}");
        // What Kamailio's $rtpstat reads.
        for proto in ["RTP", "RTCP"] {
            for k in ["packets", "bytes", "errors"] {
                assert_eq!(int(&r, &["totals", proto, k]), 0);
            }
        }
        let tags = r.get("tags").unwrap();
        let caller = tags.get("6029SIPpTag001").expect("caller tag");
        assert_eq!(caller.get("label").and_then(Value::as_str), Some("caller"));
        assert_eq!(
            caller.get("in dialogue with").and_then(Value::as_str),
            Some("6023SIPpTag011")
        );
        let callee = tags.get("6023SIPpTag011").expect("callee tag");
        assert_eq!(callee.get("label").and_then(Value::as_str), Some("callee"));
        let stream = &callee.get("medias").unwrap().as_list().unwrap()[0]
            .get("streams")
            .unwrap()
            .as_list()
            .unwrap()[0];
        assert_eq!(int(stream, &["local port"]), 40000);
        assert_eq!(int(stream, &["endpoint", "port"]), 7000);
        assert!(int(&r, &["created"]) > 1_600_000_000);
    }

    assert_eq!(
        f.raw(BLOCK_MEDIA.as_bytes()).unwrap(),
        b"0_5998_4 d6:result2:oke"
    );
    assert!(f.relay().dp.rules().all(|r| r.path == RulePath::Block));
    assert_eq!(
        f.raw(UNBLOCK_MEDIA.as_bytes()).unwrap(),
        b"0_5998_5 d6:result2:oke"
    );
    assert!(f.relay().dp.rules().all(|r| r.path == RulePath::Forward));

    let r = f.send(DELETE);
    assert_eq!(result(&r), "ok", "{r}");
    assert_eq!(
        int(&r, &["totals", "RTP", "packets"]),
        0,
        "stats in the delete reply"
    );
    assert!(r.get("tags").is_some());
    let relay = f.relay();
    assert!(relay.media.is_empty());
    assert_eq!(relay.dp.rules().count(), 0);
    assert_eq!(relay.media.ports_in_use(), 0);
    drop(relay);
    assert_eq!(f.ng.tracked_calls(), 0);
}

#[test]
fn retransmissions_are_answered_from_the_cache() {
    let mut f = fixture();
    let first = f.raw(OFFER.as_bytes()).unwrap();
    // The proxy missed the reply and sends the very same datagram again.
    let again = f.raw(OFFER.as_bytes()).unwrap();
    assert_eq!(first, again);
    // An answer changes the call; a retransmitted offer must not undo that.
    f.send(ANSWER);
    let rules_before: Vec<_> = f.relay().dp.rules().cloned().collect();
    assert_eq!(f.raw(OFFER.as_bytes()).unwrap(), first);
    assert!(f.relay().media.call(CALL).unwrap().pending_offer.is_none());
    let rules_after: Vec<_> = f.relay().dp.rules().cloned().collect();
    assert_eq!(rules_before, rules_after);
    let r = f.send(STATISTICS);
    let s = r.get("statistics").unwrap();
    assert_eq!(int(s, &["totalstatistics", "managedsessions"]), 1);
    assert_eq!(int(s, &["totalstatistics", "duplicaterequests"]), 2);
    assert_eq!(
        int(s, &["controlstatistics", "totaloffercount"]),
        1,
        "executed once"
    );
    // The same cookie from another client is another request.
    f.client = "127.0.0.1:5061".parse().unwrap();
    let r = f.send(OFFER);
    assert_eq!(result(&r), "ok");
    let r = f.send(STATISTICS);
    let s = r.get("statistics").unwrap();
    assert_eq!(int(s, &["controlstatistics", "totaloffercount"]), 2);
}

#[test]
fn malformed_and_unknown_requests_get_error_replies() {
    let mut f = fixture();
    assert_eq!(f.raw(b"no-cookie-at-all"), None, "nothing to answer to");
    assert_eq!(f.raw(b" d7:command4:pinge"), None, "empty cookie");
    let r = f.send("c1 d7:command4:ping");
    assert_eq!(result(&r), "error");
    assert!(reason(&r).starts_with("Failed to decode bencode"), "{r}");
    let r = f.send("c2 i42e");
    assert_eq!(result(&r), "error");
    let r = f.send("c3 d7:command4:fooze");
    assert_eq!(reason(&r), "Unrecognized command \"fooz\"");
    let r = f.send("c4 d4:call1:xe");
    assert_eq!(reason(&r), "Could not find key 'command'");
    // Exact bytes of an error reply.
    assert_eq!(
        f.raw(b"c5 d7:command5:querye").unwrap(),
        b"c5 d6:result5:error12:error-reason21:No call-id in messagee".to_vec()
    );
    let r = f.call(&[
        ("command", Value::str("query")),
        ("call-id", Value::str("nope")),
    ]);
    assert_eq!(reason(&r), "Unknown call-id");
    let mut bad_sdp = offer("c", "127.0.0.1", 6000, &[]);
    bad_sdp.retain(|(k, _)| *k != "sdp");
    bad_sdp.push(("sdp", Value::str("v=0\r\nm=audio x\r\n")));
    let r = f.call(&bad_sdp);
    assert!(reason(&r).starts_with("bad SDP"), "{r}");
    let r = f.call(&answer("nope", "127.0.0.1", 7000));
    assert!(reason(&r).contains("no call"), "{r}");
    let r = f.call(&offer(
        "c",
        "127.0.0.1",
        6000,
        &[("received-from", Value::list_of_str(["IP4", "not-an-ip"]))],
    ));
    assert!(reason(&r).contains("not an IP address"), "{r}");
    let r = f.call(&offer(
        "c",
        "127.0.0.1",
        6000,
        &[("direction", Value::list_of_str(["inside", "nowhere"]))],
    ));
    assert!(reason(&r).contains("nowhere"), "{r}");
    assert!(
        f.relay().media.is_empty(),
        "nothing of refused offers stays"
    );

    // Deleting what is not there: a warning, or an error with `fatal`.
    let r = f.call(&[
        ("command", Value::str("delete")),
        ("call-id", Value::str("gone")),
    ]);
    assert_eq!(result(&r), "ok");
    assert_eq!(
        r.get("warning").and_then(Value::as_str),
        Some("Call-ID not found or tags didn't match")
    );
    let r = f.call(&[
        ("command", Value::str("delete")),
        ("call-id", Value::str("gone")),
        ("flags", Value::list_of_str(["fatal"])),
    ]);
    assert_eq!(result(&r), "error");
}

#[test]
fn load_limit_with_and_without_support() {
    let mut f = fixture_with("max_calls = 1", "30000-30099");
    assert_eq!(result(&f.call(&offer("c1", "127.0.0.1", 6000, &[]))), "ok");
    let limited = offer(
        "c2",
        "127.0.0.1",
        6002,
        &[("supports", Value::list_of_str(["load limit"]))],
    );
    let r = f.call(&limited);
    assert_eq!(result(&r), "load limit", "{r}");
    assert!(
        r.get("message")
            .and_then(Value::as_str)
            .unwrap()
            .contains("max_calls")
    );
    let r = f.call(&offer("c2", "127.0.0.1", 6002, &[]));
    assert_eq!(reason(&r), super::handler::SESSION_LIMIT_REASON);
    let r = f.send(STATISTICS);
    assert_eq!(
        int(
            r.get("statistics").unwrap(),
            &["totalstatistics", "rejectedsessions"]
        ),
        2
    );

    // Ports run out before the call limit: one pair on the inside.
    let mut f = fixture_with("", "30000-30001");
    assert_eq!(result(&f.call(&offer("c1", "127.0.0.1", 6000, &[]))), "ok");
    let r = f.call(&offer("c2", "127.0.0.1", 6002, &[]));
    assert_eq!(reason(&r), super::handler::OUT_OF_PORTS_REASON);
    let r = f.call(&offer(
        "c2",
        "127.0.0.1",
        6002,
        &[("supports", Value::list_of_str(["load limit"]))],
    ));
    assert_eq!(result(&r), "load limit");
    assert_eq!(f.relay().media.len(), 1);
}

#[test]
fn rtpp_flags_string_from_newer_modules() {
    let mut f = fixture();
    let r = f.send(OFFER_RTPP_FLAGS);
    assert_eq!(result(&r), "ok", "{r}");
    let sdp = r.get("sdp").and_then(Value::as_str).unwrap();
    assert!(
        sdp.contains(&f.outside()),
        "direction=inside direction=outside: {sdp}"
    );
    let relay = f.relay();
    let call = relay.media.call("rtpp-1").unwrap();
    assert_eq!(call.legs[0].policy, Policy::Restricted, "asymmetric");
}

#[test]
fn flags_choose_the_source_policy() {
    let mut f = fixture();
    for (i, (flags, want)) in [
        (&[][..], Policy::Strict), // the interface's configured policy
        (&["trust-address"][..], Policy::Strict),
        (&["trust address", "strict source"][..], Policy::Strict),
        (&["asymmetric"][..], Policy::Restricted),
        (&["symmetric"][..], Policy::Latch),
        (&["port-latching"][..], Policy::Latch),
        (&["strict-source"][..], Policy::Latch),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("p{i}");
        let r = f.call(&offer(
            &id,
            "192.0.2.10",
            6000,
            &[("flags", Value::list_of_str(flags))],
        ));
        assert_eq!(result(&r), "ok", "{r}");
        let policy = f.relay().media.call(&id).unwrap().legs[0].policy;
        assert_eq!(policy, want, "{flags:?}");
    }
}

#[test]
fn private_sdp_address_behind_nat_uses_received_from() {
    let mut f = fixture();
    let nat = [("received-from", Value::list_of_str(["IP4", "203.0.113.7"]))];
    let r = f.call(&offer("nat", "10.1.2.3", 6000, &nat));
    assert_eq!(result(&r), "ok", "{r}");
    {
        let relay = f.relay();
        let call = relay.media.call("nat").unwrap();
        assert_eq!(call.legs[0].policy, Policy::Latch);
        assert_eq!(
            call.streams[0].sides[0].peer_rtp,
            Some("203.0.113.7:6000".parse().unwrap())
        );
    }
    // trust-address: the SDP is taken as it is.
    let mut trusted = nat.to_vec();
    trusted.push(("flags", Value::list_of_str(["trust-address"])));
    f.call(&offer("trusted", "10.1.2.3", 6000, &trusted));
    // A public SDP address is kept, unless SIP-source-address says otherwise.
    f.call(&offer("public", "192.0.2.10", 6000, &nat));
    let mut sip_source = nat.to_vec();
    sip_source.push(("flags", Value::list_of_str(["SIP-source-address"])));
    f.call(&offer("sipsrc", "192.0.2.10", 6000, &sip_source));
    let relay = f.relay();
    let peer = |id: &str| relay.media.call(id).unwrap().streams[0].sides[0].peer_rtp;
    let policy = |id: &str| relay.media.call(id).unwrap().legs[0].policy;
    assert_eq!(peer("trusted"), Some("10.1.2.3:6000".parse().unwrap()));
    assert_eq!(policy("trusted"), Policy::Strict);
    assert_eq!(peer("public"), Some("192.0.2.10:6000".parse().unwrap()));
    assert_eq!(peer("sipsrc"), Some("203.0.113.7:6000".parse().unwrap()));
    assert_eq!(policy("sipsrc"), Policy::Latch);
}

#[test]
fn rtcp_mux_ice_and_transport_options() {
    let mut f = fixture();
    let mut req = offer(
        "mux",
        "192.0.2.10",
        6000,
        &[("rtcp-mux", Value::list_of_str(["reject"]))],
    );
    req.retain(|(k, _)| *k != "sdp");
    req.push((
        "sdp",
        sdp(
            "192.0.2.10",
            6000,
            "a=rtcp-mux\r\na=candidate:1 1 UDP 1 192.0.2.10 6000 typ host\r\n",
        ),
    ));
    let r = f.call(&req);
    assert_eq!(result(&r), "ok", "{r}");
    let out = r.get("sdp").and_then(Value::as_str).unwrap();
    assert!(!out.contains("rtcp-mux"), "{out}");
    assert!(!out.contains("candidate"), "ICE is always removed: {out}");
    assert!(!f.relay().media.call("mux").unwrap().streams[0].sides[0].rtcp_mux);

    let r = f.call(&offer(
        "warn",
        "192.0.2.10",
        6000,
        &[
            ("rtcp-mux", Value::list_of_str(["offer"])),
            ("ICE", Value::str("force")),
        ],
    ));
    assert_eq!(result(&r), "ok");
    let w = r.get("warning").and_then(Value::as_str).unwrap();
    assert!(
        w.contains("rtcp-mux=offer") && w.contains("ICE=force"),
        "{w}"
    );

    let r = f.call(&offer(
        "dtls",
        "192.0.2.10",
        6000,
        &[("transport-protocol", Value::str("UDP/TLS/RTP/SAVPF"))],
    ));
    assert!(reason(&r).contains("UDP/TLS/RTP/SAVPF"), "{r}");
    let r = f.call(&offer(
        "same",
        "192.0.2.10",
        6000,
        &[("transport protocol", Value::str("RTP/AVP"))],
    ));
    assert_eq!(result(&r), "ok", "{r}");
}

fn sdp_text(v: &Value) -> String {
    v.get("sdp")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

#[test]
fn transport_protocol_and_sdes_choose_srtp() {
    let mut f = fixture();
    // Plain offer, SRTP toward the answerer: the relay's own keys, one line
    // per allowed suite; SDES-no-/only- restrict them.
    let r = f.call(&offer(
        "to-srtp",
        "192.0.2.10",
        6000,
        &[
            ("transport-protocol", Value::str("RTP/SAVP")),
            (
                "SDES",
                Value::list_of_str(["no-AES_CM_128_HMAC_SHA1_32", "no-AEAD_AES_256_GCM"]),
            ),
        ],
    ));
    assert_eq!(result(&r), "ok", "{r}");
    let out = sdp_text(&r);
    assert!(out.contains(" RTP/SAVP 8\r\n"), "{out}");
    let suites: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("a=crypto:"))
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(
        suites,
        ["AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_80"],
        "{out}"
    );

    // SRTP offer, plain toward the answerer: SDES-off (or RTP/AVP) strips it.
    let key = crate::srtp::sdes::CryptoAttribute::generate(1, Suite::AesCm128HmacSha1_80)
        .unwrap()
        .to_sdp_value();
    let savp = Value::str(format!(
        "v=0\r\no=x 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
         m=audio 6002 RTP/SAVP 8\r\na=rtpmap:8 PCMA/8000\r\na=crypto:{key}\r\n"
    ));
    for (call, opt) in [
        ("sdes-off", ("SDES", Value::list_of_str(["off"]))),
        ("to-avp", ("transport-protocol", Value::str("RTP/AVP"))),
    ] {
        let r = f.call(&offer(
            call,
            "192.0.2.10",
            6002,
            &[("sdp", savp.clone()), opt],
        ));
        assert_eq!(result(&r), "ok", "{r}");
        let out = sdp_text(&r);
        assert!(
            out.contains(" RTP/AVP 8\r\n") && !out.contains("a=crypto"),
            "{out}"
        );
        // The answer goes back as SRTP with the relay's key.
        let r = f.call(&answer(call, "198.51.100.10", 7000));
        assert_eq!(result(&r), "ok", "{r}");
        let back = sdp_text(&r);
        assert!(back.contains(" RTP/SAVP 8\r\n"), "{back}");
        assert!(
            back.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
            "{back}"
        );
        assert!(!back.contains(&key), "{back}");
    }

    let r = f.call(&offer(
        "none-left",
        "192.0.2.10",
        6004,
        &[(
            "SDES",
            Value::list_of_str(["only-AES_CM_128_HMAC_SHA1_80", "no-AES_CM_128_HMAC_SHA1_80"]),
        )],
    ));
    assert!(reason(&r).contains("excluded"), "{r}");
}

#[test]
fn a_second_answer_to_one_offer_is_taken() {
    // 183 Session Progress with SDP, then 200 OK with (other) SDP: Kamailio's
    // rtpengine_manage() sends an answer for each.
    let mut f = fixture();
    f.call(&offer("early", "192.0.2.10", 6000, &[]));
    assert_eq!(
        result(&f.call(&answer("early", "198.51.100.10", 7000))),
        "ok"
    );
    let r = f.call(&answer("early", "198.51.100.10", 7002));
    assert_eq!(result(&r), "ok", "{r}");
    let relay = f.relay();
    let call = relay.media.call("early").unwrap();
    assert_eq!(
        call.streams[0].sides[1].peer_rtp,
        Some("198.51.100.10:7002".parse().unwrap())
    );
    assert!(
        relay
            .dp
            .rules()
            .any(|r| r.dst == "198.51.100.10:7002".parse().unwrap())
    );
    drop(relay);
    // A stranger's answer is still refused.
    let mut other = answer("early", "198.51.100.10", 7004);
    other.retain(|(k, _)| *k != "to-tag");
    other.push(("to-tag", Value::str("someone-else")));
    assert_eq!(result(&f.call(&other)), "error");
}

#[test]
fn delete_delay_postpones_the_delete() {
    let mut f = fixture();
    f.call(&offer("dd", "192.0.2.10", 6000, &[]));
    f.call(&answer("dd", "198.51.100.10", 7000));
    let r = f.call(&[
        ("command", Value::str("delete")),
        ("call-id", Value::str("dd")),
        ("from-tag", Value::str("a")),
        ("delete delay", Value::Int(5)),
    ]);
    assert_eq!(result(&r), "ok", "{r}");
    assert!(r.get("totals").is_some());
    let t0 = f.now;
    f.ng.tick(&f.relay, t0 + Duration::from_secs(4));
    assert!(
        f.relay().media.call("dd").is_some(),
        "still there after 4 s"
    );
    f.ng.tick(&f.relay, t0 + Duration::from_secs(5));
    assert!(f.relay().media.call("dd").is_none(), "gone after 5 s");
    assert_eq!(f.relay().dp.rules().count(), 0);
    let r = f.send(STATISTICS);
    assert_eq!(
        int(
            r.get("statistics").unwrap(),
            &["totalstatistics", "regularterminatedsessions"]
        ),
        1
    );

    // A new offer for the call cancels a pending delete.
    f.call(&offer("dd2", "192.0.2.10", 6000, &[]));
    f.call(&[
        ("command", Value::str("delete")),
        ("call-id", Value::str("dd2")),
        ("delete-delay", Value::str("2")),
    ]);
    f.call(&offer("dd2", "192.0.2.10", 6000, &[]));
    f.ng.tick(&f.relay, t0 + Duration::from_secs(10));
    assert!(f.relay().media.call("dd2").is_some());
    // A delete whose tags match no leg leaves the call alone.
    let r = f.call(&[
        ("command", Value::str("delete")),
        ("call-id", Value::str("dd2")),
        ("from-tag", Value::str("stranger")),
    ]);
    assert!(r.get("warning").is_some());
    assert!(f.relay().media.call("dd2").is_some());
}

#[test]
fn list_statistics_block_and_json() {
    let mut f = fixture();
    for id in ["l1", "l2", "l3"] {
        f.call(&offer(id, "192.0.2.10", 6000, &[]));
    }
    let r = f.call(&[("command", Value::str("list")), ("limit", Value::Int(2))]);
    assert_eq!(r.get("calls").unwrap(), &Value::list_of_str(["l1", "l2"]));
    let r = f.send(LIST);
    assert_eq!(r.get("calls").unwrap().as_list().unwrap().len(), 3);
    let r = f.send(STATISTICS);
    let s = r.get("statistics").unwrap();
    assert_eq!(int(s, &["currentstatistics", "sessionsown"]), 3);
    assert_eq!(int(s, &["totalstatistics", "managedsessions"]), 3);
    let proxies = s.get("controlstatistics").unwrap().get("proxies").unwrap();
    assert_eq!(int(&proxies.as_list().unwrap()[0], &["offercount"]), 3);

    let r = f.call(&[
        ("command", Value::str("block media")),
        ("call-id", Value::str("l1")),
        ("from-tag", Value::str("a")),
    ]);
    assert!(reason(&r).contains("directional"), "{r}");
    let r = f.call(&[
        ("command", Value::str("unblock_media")),
        ("call-id", Value::str("zz")),
    ]);
    assert_eq!(reason(&r), "Unknown call-id");

    let reply = f.raw(br#"j1 {"command":"ping"}"#).unwrap();
    assert_eq!(reply, br#"j1 {"result":"pong"}"#);
    let reply = f.raw(br#"j2 {"command":"list","limit":1}"#).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&reply[3..]).unwrap();
    assert_eq!(json, serde_json::json!({"calls": ["l1"], "result": "ok"}));
}

#[test]
fn media_figures_reach_query_and_totals() {
    let mut f = fixture();
    let caller_addr = format!("127.77.{}.10", f.net);
    let callee_addr = format!("127.77.{}.11", f.net);
    let r = f.call(&offer("flow", &caller_addr, 6000, &[]));
    let to_callee = r.get("sdp").and_then(Value::as_str).unwrap().to_string();
    let r = f.call(&answer("flow", &callee_addr, 7000));
    let to_caller = r.get("sdp").and_then(Value::as_str).unwrap().to_string();
    let port = |s: &str| -> u16 {
        s.lines()
            .find_map(|l| l.strip_prefix("m=audio "))
            .and_then(|l| l.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap()
    };
    let relay_in: SocketAddr = format!("{}:{}", f.inside(), port(&to_caller))
        .parse()
        .unwrap();
    let relay_out: SocketAddr = format!("{}:{}", f.outside(), port(&to_callee))
        .parse()
        .unwrap();
    let caller = std::net::UdpSocket::bind(format!("{caller_addr}:6000")).unwrap();
    let callee = std::net::UdpSocket::bind(format!("{callee_addr}:7000")).unwrap();
    callee
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut packet = vec![0x80, 8, 0, 1, 0, 0, 0, 1, 0, 0, 0xab, 0xcd];
    packet.extend([0xd5; 160]);
    let mut buf = [0u8; 512];
    // Sequence numbers 1..=11 without 6: 10 packets, one lost.
    for seq in (1..=11u16).filter(|s| *s != 6) {
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        caller.send_to(&packet, relay_in).unwrap();
        let (n, from) = callee.recv_from(&mut buf).unwrap();
        assert_eq!((n, from), (packet.len(), relay_out));
    }
    let r = f.call(&[
        ("command", Value::str("query")),
        ("call-id", Value::str("flow")),
    ]);
    assert_eq!(int(&r, &["totals", "RTP", "packets"]), 10, "{r}");
    assert_eq!(
        int(&r, &["totals", "RTP", "bytes"]),
        10 * packet.len() as i64
    );
    let leg = r.get("tags").unwrap().get("a").unwrap();
    let stream = &leg.get("medias").unwrap().as_list().unwrap()[0]
        .get("streams")
        .unwrap()
        .as_list()
        .unwrap()[0];
    assert_eq!(int(stream, &["stats", "packets"]), 10);
    assert!(stream.get("last packet").is_some());
    // MOS per SSRC in rtpengine's shape: a call younger than one sample
    // interval gets one provisional sample; 1 of 11 lost is 9 %.
    assert_eq!(int(stream, &["SSRC"]), 0xabcd);
    let ssrc = r.get("SSRC").unwrap().get("43981").expect("SSRC 43981");
    assert_eq!(int(ssrc, &["cumulative loss"]), 1, "{r}");
    assert_eq!(int(ssrc, &["average MOS", "samples"]), 1, "{r}");
    assert_eq!(int(ssrc, &["average MOS", "packet loss"]), 9, "{r}");
    let mos = int(ssrc, &["average MOS", "MOS"]);
    assert!((30..=36).contains(&mos), "9 % loss scores about 3.5: {r}");
    assert_eq!(int(ssrc, &["lowest MOS", "MOS"]), mos);
    assert_eq!(int(ssrc, &["highest MOS", "MOS"]), mos);
    assert!(int(ssrc, &["highest MOS", "reported at"]) > 1_700_000_000);

    // relayd samples every flow every 5 s; here by hand: the lossy interval
    // so far, then 10 clean packets.
    f.relay.lock().unwrap().take_mos_samples(1_000);
    for seq in 12..=21u16 {
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        caller.send_to(&packet, relay_in).unwrap();
        callee.recv_from(&mut buf).unwrap();
    }
    f.relay.lock().unwrap().take_mos_samples(1_005);
    let r = f.call(&[
        ("command", Value::str("query")),
        ("call-id", Value::str("flow")),
    ]);
    let ssrc = r.get("SSRC").unwrap().get("43981").unwrap();
    assert_eq!(int(ssrc, &["average MOS", "samples"]), 2, "{r}");
    assert_eq!(int(ssrc, &["average MOS", "packet loss"]), 4, "{r}");
    assert_eq!(int(ssrc, &["lowest MOS", "MOS"]), mos, "{r}");
    assert_eq!(int(ssrc, &["lowest MOS", "packet loss"]), 9, "{r}");
    assert_eq!(int(ssrc, &["lowest MOS", "reported at"]), 1_000, "{r}");
    assert_eq!(int(ssrc, &["highest MOS", "MOS"]), 44, "{r}");
    assert_eq!(int(ssrc, &["highest MOS", "packet loss"]), 0, "{r}");
    assert_eq!(int(ssrc, &["highest MOS", "reported at"]), 1_005, "{r}");
    assert_eq!(int(ssrc, &["cumulative loss"]), 1, "{r}");
    let r = f.call(&[
        ("command", Value::str("delete")),
        ("call-id", Value::str("flow")),
    ]);
    assert_eq!(int(&r, &["totals", "RTP", "packets"]), 20);
    let r = f.send(STATISTICS);
    assert_eq!(
        int(
            r.get("statistics").unwrap(),
            &["totalstatistics", "relayedpackets"]
        ),
        20
    );
}

#[test]
fn fuzz_mutated_requests_always_get_a_reply() {
    let mut f = fixture();
    let mut rng = Rng(0x0a6_f022);
    for (n, seed) in CAPTURED_REQUESTS.iter().cycle().take(4_000).enumerate() {
        let (_, body) = seed.split_once(' ').unwrap();
        let mut m = body.as_bytes().to_vec();
        for _ in 0..=rng.below(3) {
            if m.is_empty() {
                break;
            }
            let i = rng.below(m.len());
            match rng.below(4) {
                0 => m[i] = rng.next() as u8,
                1 => {
                    m.remove(i);
                }
                2 => m.insert(i, b"ilde:0123456789 "[rng.below(16)]),
                _ => m.truncate(i),
            }
        }
        let cookie = format!("fz{n}");
        let mut packet = format!("{cookie} ").into_bytes();
        packet.extend(&m);
        let reply = f.raw(&packet).expect("a cookie always gets a reply");
        assert!(reply.starts_with(format!("{cookie} ").as_bytes()));
        let body = decode(&reply[cookie.len() + 1..]).expect("replies are bencode");
        assert!(matches!(
            result(&body),
            "ok" | "error" | "pong" | "load limit"
        ));
    }
    // Whatever was set up, the media core and the data plane agree.
    let relay = f.relay();
    for id in relay.media.list() {
        for ep in relay.media.endpoints(&id) {
            assert!(relay.dp.view(ep).is_some(), "{id}: rule on {ep}");
        }
    }
}

#[test]
fn udp_server_answers_and_stops() {
    let f = fixture();
    let Fixture { rt, relay, .. } = f;
    let relay = std::sync::Arc::new(relay);
    let server = {
        let _g = rt.enter();
        super::NgServer::start(&["127.0.0.1:0".parse().unwrap()], relay.clone()).unwrap()
    };
    let addr = server.local_addrs()[0];
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for packet in [PING, PING] {
        client.send_to(packet.as_bytes(), addr).unwrap();
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(from, addr);
        assert_eq!(&buf[..n], b"0_5998_0 d6:result4:ponge");
    }
    // Garbage without a cookie gets nothing; the server keeps serving.
    client.send_to(b"garbage", addr).unwrap();
    client.send_to(b"x d7:command4:pinge", addr).unwrap();
    let (n, _) = client.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"x d6:result4:ponge");
    server.stop();
    rt.shutdown_timeout(Duration::from_secs(1));
}
