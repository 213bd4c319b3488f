//! The rule changes each media-core verb produces, and its limits.

use std::net::SocketAddr;

use super::{Answer, MediaCore, MediaError, Offer, RuleChange};
use crate::{
    config::{Interface, MediaConfig},
    rule::{Path, Policy, Rule},
};

fn core(max_calls: usize, ports: (u16, u16)) -> MediaCore {
    let ifaces = [
        ("inside", "192.0.2.1", Policy::Latch),
        ("outside", "198.51.100.1", Policy::Strict),
    ]
    .map(|(name, addr, source_policy)| Interface {
        name: name.into(),
        device: format!("{name}0"),
        address: addr.parse().unwrap(),
        port_min: ports.0,
        port_max: ports.1,
        source_policy,
        srtp: Default::default(),
    });
    MediaCore::new(
        &ifaces,
        MediaConfig {
            max_calls,
            max_streams: 100,
            media_timeout_s: 60,
            srtp_passthrough: false,
        },
    )
    .unwrap()
}

fn sdp(addr: &str, port: u16, extra: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n{extra}"
    )
}

fn offer<'a>(call: &'a str, tag: &'a str, sdp: &'a str) -> Offer<'a> {
    Offer {
        call_id: call,
        from_tag: tag,
        sdp,
        from_iface: Some("inside"),
        to_iface: Some("outside"),
        from_policy: None,
        now_ns: 1_000,
        ..Offer::default()
    }
}

fn answer<'a>(call: &'a str, from: &'a str, to: &'a str, sdp: &'a str) -> Answer<'a> {
    Answer {
        call_id: call,
        from_tag: from,
        to_tag: to,
        sdp,
        to_policy: None,
        now_ns: 2_000,
    }
}

fn installs(changes: &[RuleChange]) -> Vec<&Rule> {
    changes
        .iter()
        .filter_map(|c| match c {
            RuleChange::Install(r) => Some(r),
            RuleChange::Remove(_) => None,
        })
        .collect()
}

fn rule_on<'a>(changes: &'a [RuleChange], local: &str) -> &'a Rule {
    let local: SocketAddr = local.parse().unwrap();
    installs(changes)
        .into_iter()
        .find(|r| r.local == local)
        .unwrap_or_else(|| panic!("no rule on {local} in {changes:#?}"))
}

/// Sets up call "c" (caller 192.0.2.10:4000, callee 198.51.100.10:5000);
/// relay ports are the first of each range: 30000 inside, 30000 outside.
fn established(core: &mut MediaCore) -> Vec<RuleChange> {
    let o = sdp("192.0.2.10", 4000, "");
    let out = core.offer(&offer("c", "a", &o)).unwrap();
    assert!(out.changes.is_empty(), "no rules before the answer");
    assert!(out.sdp.contains("c=IN IP4 198.51.100.1\r\n"), "{}", out.sdp);
    assert!(
        out.sdp.contains("m=audio 30000 RTP/AVP 0 101\r\n"),
        "{}",
        out.sdp
    );
    let a = sdp("198.51.100.10", 5000, "");
    let out = core.answer(&answer("c", "a", "b", &a)).unwrap();
    assert!(out.sdp.contains("c=IN IP4 192.0.2.1\r\n"), "{}", out.sdp);
    assert!(
        out.sdp.contains("o=- 1 1 IN IP4 192.0.2.1\r\n"),
        "origin hidden: {}",
        out.sdp
    );
    out.changes
}

#[test]
fn answer_installs_both_directions_rtp_and_rtcp() {
    let mut core = core(10, (30000, 30009));
    let changes = established(&mut core);
    assert_eq!(installs(&changes).len(), 4, "{changes:#?}");
    // Caller to callee: the inside interface latches (NAT), the rule sends from
    // the outside relay port to the callee's SDP address.
    let r = rule_on(&changes, "192.0.2.1:30000");
    assert_eq!(r.policy, Policy::Latch);
    assert_eq!(r.peer, None);
    assert_eq!(r.out_src, "198.51.100.1:30000".parse().unwrap());
    assert_eq!(r.dst, "198.51.100.10:5000".parse().unwrap());
    assert_eq!(r.path, Path::Forward);
    // Callee to caller: strict on the callee's SDP address.
    let r = rule_on(&changes, "198.51.100.1:30000");
    assert_eq!(r.policy, Policy::Strict);
    assert_eq!(r.peer, Some("198.51.100.10:5000".parse().unwrap()));
    assert_eq!(r.dst, "192.0.2.10:4000".parse().unwrap());
    // RTCP on RTP + 1 both ways.
    let r = rule_on(&changes, "198.51.100.1:30001");
    assert_eq!(r.dst, "192.0.2.10:4001".parse().unwrap());
    assert_eq!(r.out_src, "192.0.2.1:30001".parse().unwrap());
    assert_eq!(
        rule_on(&changes, "192.0.2.1:30001").dst,
        "198.51.100.10:5001".parse().unwrap()
    );
}

#[test]
fn every_call_rule_has_its_call_context() {
    let mut core = core(10, (30000, 30009));
    let changes = established(&mut core);
    let contexts = core.rule_contexts();
    assert_eq!(contexts.len(), installs(&changes).len());
    let ctx = &contexts[&"192.0.2.1:30000".parse().unwrap()];
    assert_eq!(
        (ctx.call_id.as_str(), ctx.leg.as_str(), ctx.tag.as_deref()),
        ("c", "a", Some("a"))
    );
    assert_eq!(
        (ctx.from_iface.as_str(), ctx.to_iface.as_str()),
        ("inside", "outside")
    );
    assert_eq!(
        (ctx.stream, ctx.media.as_str(), ctx.component.as_str()),
        (0, "audio", "rtp")
    );
    let ctx = &contexts[&"198.51.100.1:30001".parse().unwrap()];
    assert_eq!((ctx.leg.as_str(), ctx.tag.as_deref()), ("b", Some("b")));
    assert_eq!(
        (ctx.from_iface.as_str(), ctx.component.as_str()),
        ("outside", "rtcp")
    );
    core.delete("c").unwrap();
    assert!(core.rule_contexts().is_empty());
}

#[test]
fn repeated_offer_and_answer_change_nothing() {
    let mut core = core(10, (30000, 30009));
    established(&mut core);
    let o = sdp("192.0.2.10", 4000, "");
    assert!(core.offer(&offer("c", "a", &o)).unwrap().changes.is_empty());
    let a = sdp("198.51.100.10", 5000, "");
    assert!(
        core.answer(&answer("c", "a", "b", &a))
            .unwrap()
            .changes
            .is_empty()
    );
}

#[test]
fn reoffer_with_new_port_moves_rules_at_offer_time() {
    let mut core = core(10, (30000, 30009));
    established(&mut core);
    // The callee re-offers on port 5004: it listens there from now on.
    let o = sdp("198.51.100.10", 5004, "");
    let out = core.offer(&offer("c", "b", &o)).unwrap();
    assert!(
        out.sdp.contains("m=audio 30000 "),
        "the caller's view is unchanged: {}",
        out.sdp
    );
    assert_eq!(
        rule_on(&out.changes, "192.0.2.1:30000").dst,
        "198.51.100.10:5004".parse().unwrap()
    );
    assert_eq!(
        rule_on(&out.changes, "198.51.100.1:30000").peer,
        Some("198.51.100.10:5004".parse().unwrap())
    );
    assert_eq!(
        rule_on(&out.changes, "192.0.2.1:30001").dst,
        "198.51.100.10:5005".parse().unwrap()
    );
    assert!(
        out.changes
            .iter()
            .all(|c| matches!(c, RuleChange::Install(_)))
    );
}

#[test]
fn hold_blocks_toward_the_holding_side_and_resume_unblocks() {
    let mut core = core(10, (30000, 30009));
    established(&mut core);
    // The holding side stops receiving as soon as it offers.
    let o = sdp("192.0.2.10", 4000, "a=sendonly\r\n");
    let changes = core.offer(&offer("c", "a", &o)).unwrap().changes;
    assert_eq!(rule_on(&changes, "198.51.100.1:30000").path, Path::Block);
    assert_eq!(rule_on(&changes, "198.51.100.1:30001").path, Path::Block);
    assert!(
        installs(&changes)
            .iter()
            .all(|r| r.local.ip().to_string() == "198.51.100.1"),
        "the caller's media toward the callee is untouched: {changes:#?}"
    );
    let a = sdp("198.51.100.10", 5000, "a=recvonly\r\n");
    let out = core.answer(&answer("c", "a", "b", &a)).unwrap();
    assert!(out.changes.is_empty(), "{:#?}", out.changes);
    // Old-style hold: c=0.0.0.0 from the callee.
    let o = sdp("0.0.0.0", 5000, "");
    let out = core.offer(&offer("c", "b", &o)).unwrap();
    assert!(
        out.sdp.contains("c=IN IP4 0.0.0.0\r\n"),
        "the hold address passes: {}",
        out.sdp
    );
    assert_eq!(rule_on(&out.changes, "192.0.2.1:30000").path, Path::Block);
    // Resume both.
    let o = sdp("198.51.100.10", 5000, "a=sendrecv\r\n");
    core.offer(&offer("c", "b", &o)).unwrap();
    let a = sdp("192.0.2.10", 4000, "a=sendrecv\r\n");
    core.answer(&answer("c", "b", "a", &a)).unwrap();
    let call = core.call("c").unwrap();
    assert!(
        call.desired_rules()
            .values()
            .all(|r| r.path == Path::Forward)
    );
}

#[test]
fn rtcp_mux_needs_both_sides() {
    let mut core = core(10, (30000, 30009));
    let o = sdp("192.0.2.10", 4000, "a=rtcp-mux\r\n");
    let out = core.offer(&offer("c", "a", &o)).unwrap();
    assert!(out.sdp.contains("a=rtcp-mux"), "{}", out.sdp);
    let a = sdp("198.51.100.10", 5000, "a=rtcp-mux\r\n");
    let out = core.answer(&answer("c", "a", "b", &a)).unwrap();
    assert_eq!(
        installs(&out.changes).len(),
        2,
        "one rule per direction: {:#?}",
        out.changes
    );
}

#[test]
fn rejected_stream_gets_no_rules() {
    let mut core = core(10, (30000, 30009));
    let two = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
               m=audio 4000 RTP/AVP 0\r\nm=video 4002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";
    let out = core.offer(&offer("c", "a", two)).unwrap();
    assert!(out.sdp.contains("m=video 30002 "), "{}", out.sdp);
    let answer_sdp = "v=0\r\no=- 1 1 IN IP4 198.51.100.10\r\ns=-\r\nc=IN IP4 198.51.100.10\r\nt=0 0\r\n\
                      m=audio 5000 RTP/AVP 0\r\nm=video 0 RTP/AVP 96\r\n";
    let out = core.answer(&answer("c", "a", "b", answer_sdp)).unwrap();
    assert!(out.sdp.contains("m=video 0 RTP/AVP 96"), "{}", out.sdp);
    assert_eq!(
        installs(&out.changes).len(),
        4,
        "audio only: {:#?}",
        out.changes
    );
}

#[test]
fn delete_removes_every_rule_and_port() {
    let mut core = core(10, (30000, 30009));
    established(&mut core);
    assert_eq!(core.ports_in_use(), 2);
    let changes = core.delete("c").unwrap();
    let mut removed: Vec<SocketAddr> = changes
        .iter()
        .map(|c| match c {
            RuleChange::Remove(l) => *l,
            RuleChange::Install(r) => panic!("install on delete: {r:?}"),
        })
        .collect();
    removed.sort();
    let want: Vec<SocketAddr> = [
        "192.0.2.1:30000",
        "192.0.2.1:30001",
        "198.51.100.1:30000",
        "198.51.100.1:30001",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    assert_eq!(removed, want);
    assert_eq!(core.ports_in_use(), 0);
    assert!(core.is_empty());
    assert_eq!(core.delete("c"), Err(MediaError::UnknownCall("c".into())));
}

#[test]
fn limits_refuse_cleanly() {
    let mut core = core(1, (30000, 30009));
    established(&mut core);
    let o = sdp("192.0.2.10", 4002, "");
    let e = core.offer(&offer("d", "a", &o)).unwrap_err();
    assert!(e.is_load_limit(), "{e}");
    assert_eq!(core.len(), 1);
    assert_eq!(core.ports_in_use(), 2);

    // Port exhaustion: one pair per interface.
    let mut core = core_small();
    established(&mut core);
    let e = core.offer(&offer("d", "a", &o)).unwrap_err();
    assert!(e.is_load_limit(), "{e}");
    assert_eq!(core.len(), 1, "the refused call left nothing behind");
    assert_eq!(core.ports_in_use(), 2);
}

fn core_small() -> MediaCore {
    core(10, (30000, 30001))
}

#[test]
fn protocol_errors() {
    let mut core = core(10, (30000, 30009));
    let a = sdp("198.51.100.10", 5000, "");
    assert_eq!(
        core.answer(&answer("x", "a", "b", &a)),
        Err(MediaError::UnknownCall("x".into()))
    );
    established(&mut core);
    // A second answer (a 200 after a 183 with SDP) updates the answerer.
    let moved = sdp("198.51.100.10", 5008, "");
    let out = core.answer(&answer("c", "a", "b", &moved)).unwrap();
    assert_eq!(
        rule_on(&out.changes, "192.0.2.1:30000").dst,
        "198.51.100.10:5008".parse().unwrap()
    );
    let o = sdp("192.0.2.10", 4000, "");
    assert!(matches!(
        core.offer(&offer("c", "stranger", &o)),
        Err(MediaError::UnknownTag { .. })
    ));
    assert!(matches!(
        core.offer(&offer("c", "a", "garbage")),
        Err(MediaError::Sdp(_))
    ));
    // A broken first offer leaves no call behind.
    assert!(core.offer(&offer("new", "a", "v=0\r\nm=audio x")).is_err());
    assert!(core.query("new").is_none());
}

#[test]
fn silent_calls_expire() {
    let mut core = core(10, (30000, 30009));
    established(&mut core);
    let sec = 1_000_000_000u64;
    assert!(core.expired(30 * sec, |_| None).is_empty());
    assert_eq!(
        core.expired(61 * sec + 2_000, |_| None),
        vec!["c".to_string()]
    );
    // A packet 10 s ago keeps it up.
    assert!(core.expired(100 * sec, |_| Some(90 * sec)).is_empty());
}

/// An SDP whose m=audio line lists `formats` with these rtpmap lines.
fn sdp_formats(addr: &str, port: u16, formats: &str, rtpmaps: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP {formats}\r\n{rtpmaps}"
    )
}

#[test]
fn rules_carry_the_negotiated_clock_rate() {
    let opus = "a=rtpmap:96 opus/48000/2\r\n";
    // (offer formats, answer formats, expected RTP rule clock rate)
    let cases = [
        ("96 0", "0", 8000),
        ("96 0", "96", 48_000),
        ("9 0 8", "0", 8000),
        ("97", "97", 8000), // dynamic without rtpmap: the audio default
    ];
    for (i, (offered, answered, want)) in cases.into_iter().enumerate() {
        let mut m = core(10, (30000, 30099));
        let call = format!("clock-{i}");
        let o = sdp_formats("192.0.2.10", 4000, offered, opus);
        m.offer(&offer(&call, "a", &o)).unwrap();
        let a = sdp_formats("198.51.100.10", 5000, answered, opus);
        let out = m.answer(&answer(&call, "a", "b", &a)).unwrap();
        let rules = installs(&out.changes);
        let rtp: Vec<u32> = rules
            .iter()
            .filter(|r| r.local.port() % 2 == 0)
            .map(|r| r.clock_rate)
            .collect();
        assert_eq!(rtp, vec![want, want], "{offered} / {answered}: {rules:#?}");
        assert!(
            rules
                .iter()
                .filter(|r| r.local.port() % 2 == 1)
                .all(|r| r.clock_rate == 0),
            "RTCP rules have no clock: {rules:#?}"
        );
    }
}
