//! Unit tests: `media()` and the accessors, line endings, errors, rewrite
//! details the golden files do not show, and fuzzing.

use std::net::IpAddr;

use super::*;
use crate::test_rng::Rng;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `lines` joined with CRLF, with a trailing CRLF.
fn crlf(lines: &[&str]) -> String {
    let mut s = lines.join("\r\n");
    s.push_str("\r\n");
    s
}

fn syntax_error(text: &str) -> (usize, String) {
    match parse(text) {
        Err(SdpError::Syntax { line, message }) => (line, message),
        other => panic!("expected a syntax error for {text:?}, got {other:?}"),
    }
}

const OFFER: &[&str] = &[
    "v=0",
    "o=PBX 1 2 IN IP4 192.0.2.10",
    "s=-",
    "c=IN IP4 192.0.2.10",
    "t=0 0",
    "a=sendonly",
    "m=audio 16384 RTP/SAVP 0 8 101",
    "a=rtcp:16385",
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
    "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj|2^20|1:32",
    "a=rtpmap:101 telephone-event/8000",
    "m=video 5006/2 UDP/TLS/RTP/SAVPF 96 97",
    "c=IN IP6 2001:db8::20",
    "a=rtcp:5004 IN IP6 2001:db8::21",
    "a=rtcp-mux",
    "a=inactive",
    "m=audio 0 RTP/AVP 0",
    "m=text 5008 RTP/AVP 98",
    "c=IN IP4 0.0.0.0",
    "a=recvonly",
];

#[test]
fn media_reports_every_field() {
    let sdp = parse(&crlf(OFFER)).unwrap();
    let media = sdp.media();
    assert_eq!(sdp.media_count(), 4);
    assert_eq!(
        media[0],
        Media {
            index: 0,
            kind: "audio".into(),
            port: 16384,
            port_count: 1,
            proto: "RTP/SAVP".into(),
            formats: vec!["0".into(), "8".into(), "101".into()],
            connection: Some(ip("192.0.2.10")),
            rtcp: Some((16385, None)),
            rtcp_mux: false,
            direction: Direction::SendOnly,
            crypto: vec![
                "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR".into(),
                "2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj|2^20|1:32"
                    .into(),
            ],
        }
    );
    assert_eq!(
        media[1],
        Media {
            index: 1,
            kind: "video".into(),
            port: 5006,
            port_count: 2,
            proto: "UDP/TLS/RTP/SAVPF".into(),
            formats: vec!["96".into(), "97".into()],
            connection: Some(ip("2001:db8::20")),
            rtcp: Some((5004, Some(ip("2001:db8::21")))),
            rtcp_mux: true,
            direction: Direction::Inactive,
            crypto: vec![],
        }
    );
    assert_eq!(
        media[2],
        Media {
            index: 2,
            kind: "audio".into(),
            port: 0,
            port_count: 1,
            proto: "RTP/AVP".into(),
            formats: vec!["0".into()],
            connection: Some(ip("192.0.2.10")),
            rtcp: None,
            rtcp_mux: false,
            direction: Direction::SendOnly,
            crypto: vec![],
        }
    );
    assert_eq!(
        media[3],
        Media {
            index: 3,
            kind: "text".into(),
            port: 5008,
            port_count: 1,
            proto: "RTP/AVP".into(),
            formats: vec!["98".into()],
            connection: Some(ip("0.0.0.0")),
            rtcp: None,
            rtcp_mux: false,
            direction: Direction::RecvOnly,
            crypto: vec![],
        }
    );
    assert_eq!(sdp.origin_addr(), Some(ip("192.0.2.10")));
    assert_eq!(sdp.session_connection(), Some(ip("192.0.2.10")));
    assert_eq!(sdp.session_direction(), Some(Direction::SendOnly));
}

#[test]
fn defaults_without_direction_or_session_connection() {
    let sdp = parse(&crlf(&[
        "v=0",
        "o=- 1 1 IN IP6 2001:db8::1",
        "s=-",
        "t=0 0",
        "m=audio 5004 RTP/AVP 0",
        "c=IN IP6 2001:db8::1",
    ]))
    .unwrap();
    let m = &sdp.media()[0];
    assert_eq!(m.direction, Direction::SendRecv);
    assert_eq!(m.connection, Some(ip("2001:db8::1")));
    assert_eq!(m.rtcp, None);
    assert!(!m.rtcp_mux);
    assert!(m.crypto.is_empty());
    assert_eq!(sdp.session_direction(), None);
    assert_eq!(sdp.session_connection(), None);
    assert_eq!(sdp.origin_addr(), Some(ip("2001:db8::1")));
}

#[test]
fn origin_address_forms() {
    let with_origin = |o: &str| {
        parse(&crlf(&["v=0", o, "s=-", "t=0 0"]))
            .unwrap()
            .origin_addr()
    };
    assert_eq!(
        with_origin("o=- 1 1 IN IP4 192.0.2.1"),
        Some(ip("192.0.2.1"))
    );
    // A host name (allowed by RFC 4566), a family mismatch, an unknown type.
    assert_eq!(with_origin("o=- 1 1 IN IP4 pbx.example.com"), None);
    assert_eq!(with_origin("o=- 1 1 IN IP4 2001:db8::1"), None);
    assert_eq!(with_origin("o=- 1 1 ATM NSAP 47.0005.80"), None);
    // No o= at all.
    assert_eq!(
        parse("v=0\r\ns=-\r\nt=0 0\r\n").unwrap().origin_addr(),
        None
    );
}

#[test]
fn direction_helpers() {
    use Direction::*;
    for (d, sends, receives, name, reversed) in [
        (SendRecv, true, true, "sendrecv", SendRecv),
        (SendOnly, true, false, "sendonly", RecvOnly),
        (RecvOnly, false, true, "recvonly", SendOnly),
        (Inactive, false, false, "inactive", Inactive),
    ] {
        assert_eq!((d.sends(), d.receives()), (sends, receives), "{d}");
        assert_eq!(d.as_str(), name);
        assert_eq!(d.to_string(), name);
        assert_eq!(Direction::from_attr(name), Some(d));
        assert_eq!(d.reversed(), reversed);
    }
    assert_eq!(Direction::from_attr("SendOnly"), None);
    assert_eq!(Direction::from_attr("rtcp-mux"), None);
}

#[test]
fn line_endings() {
    let lines = [
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.1",
        "s=-",
        "c=IN IP4 192.0.2.1",
        "t=0 0",
        "m=audio 5004 RTP/AVP 0",
    ];
    let crlf_text = crlf(&lines);
    let lf = lines.join("\n") + "\n";
    let mixed = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\ns=-\r\nc=IN IP4 192.0.2.1\nt=0 0\r\nm=audio 5004 RTP/AVP 0";
    let trailing_blank = crlf_text.clone() + "\r\n\r\n";
    let final_cr = lines.join("\r\n") + "\r";
    let rw = Rewrite::new(ip("203.0.113.1"), vec![MediaRewrite::anchored(30000)]);
    let want = crlf(&[
        "v=0",
        "o=- 1 1 IN IP4 203.0.113.1",
        "s=-",
        "c=IN IP4 203.0.113.1",
        "t=0 0",
        "m=audio 30000 RTP/AVP 0",
    ]);
    for text in [
        &crlf_text,
        &lf,
        &mixed.to_owned(),
        &trailing_blank,
        &final_cr,
    ] {
        let sdp = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(sdp.lines().collect::<Vec<_>>(), lines, "{text:?}");
        assert_eq!(sdp.to_string(), crlf_text, "{text:?}");
        assert_eq!(sdp.rewrite(&rw).unwrap(), want, "{text:?}");
    }
}

#[test]
fn lf_only_input_gives_crlf_output() {
    let text = "v=0\no=- 5 5 IN IP4 192.0.2.10\ns=-\nc=IN IP4 192.0.2.10\nt=0 0\n\
                m=audio 4000 RTP/AVP 0 101\na=rtpmap:101 telephone-event/8000\na=ptime:20\n";
    let out = parse(text)
        .unwrap()
        .rewrite(&Rewrite::new(
            ip("203.0.113.1"),
            vec![MediaRewrite::anchored(30000)],
        ))
        .unwrap();
    assert_eq!(
        out,
        "v=0\r\no=- 5 5 IN IP4 203.0.113.1\r\ns=-\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\n\
         m=audio 30000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n"
    );
}

#[test]
fn default_media_rewrite_only_moves_addresses_and_drops_rtcp() {
    let sdp = parse(&crlf(OFFER)).unwrap();
    let rw = Rewrite {
        addr: ip("203.0.113.1"),
        media: vec![MediaRewrite::default(); 4],
        strip_ice: false,
    };
    let out = sdp.rewrite(&rw).unwrap();
    let again = parse(&out).unwrap();
    for (before, after) in sdp.media().iter().zip(again.media()) {
        assert_eq!(after.port, before.port);
        assert_eq!(after.rtcp, None);
        assert_eq!(after.direction, before.direction);
    }
    assert!(
        !out.contains("192.0.2.10") && !out.contains("2001:db8::2"),
        "{out}"
    );
    // The hold address of the text stream survives.
    assert_eq!(again.media()[3].connection, Some(ip("0.0.0.0")));
}

#[test]
fn rewrite_needs_one_entry_per_media() {
    let sdp = parse(&crlf(OFFER)).unwrap();
    let e = sdp
        .rewrite(&Rewrite::new(
            ip("203.0.113.1"),
            vec![MediaRewrite::default()],
        ))
        .unwrap_err();
    assert_eq!(
        e,
        SdpError::RewriteMismatch {
            expected: 4,
            got: 1
        }
    );
    assert_eq!(e.to_string(), "rewrite has 1 media entries for 4 m= lines");
    assert_eq!(e.line(), None);
}

#[test]
fn rewrite_session_without_media() {
    let sdp = parse("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n").unwrap();
    assert_eq!(
        sdp.rewrite(&Rewrite::new(ip("2001:db8::1"), vec![]))
            .unwrap(),
        "v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\ns=-\r\nt=0 0\r\n"
    );
}

#[test]
fn rewrite_to_port_zero_rejects_a_stream() {
    let sdp = parse(&crlf(&[
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.1",
        "s=-",
        "c=IN IP4 192.0.2.1",
        "t=0 0",
        "m=video 5006/2 RTP/AVP 96",
    ]))
    .unwrap();
    let out = sdp
        .rewrite(&Rewrite::new(
            ip("203.0.113.1"),
            vec![MediaRewrite::anchored(0)],
        ))
        .unwrap();
    assert!(out.contains("\r\nm=video 0/2 RTP/AVP 96\r\n"), "{out}");
}

// ---- errors ----

#[test]
fn empty_input() {
    assert_eq!(parse("").unwrap_err(), SdpError::Empty);
    assert_eq!(parse("\r\n\r\n\n").unwrap_err(), SdpError::Empty);
}

#[test]
fn must_start_with_version_zero() {
    let (line, message) = syntax_error("o=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n");
    assert_eq!(line, 1);
    assert!(message.contains("v=0"), "{message}");
    let (line, message) = syntax_error("v=1\r\ns=-\r\n");
    assert_eq!(line, 1);
    assert!(message.contains("version"), "{message}");
    // A blank line before v= is not skipped.
    assert_eq!(syntax_error("\r\nv=0\r\n").0, 1);
    assert_eq!(syntax_error("V=0\r\n").0, 1);
    assert_eq!(syntax_error("v=0\r\nv=0\r\n").0, 2);
}

#[test]
fn garbage_is_rejected_with_its_line() {
    let e = parse("INVITE sip:bob@example.com SIP/2.0\r\n").unwrap_err();
    assert_eq!(e.line(), Some(1));
    assert!(
        e.to_string()
            .starts_with("line 1: expected `<type>=<value>`"),
        "{e}"
    );
    let (line, message) = syntax_error("v=0\r\ns=-\r\nthis is not sdp\r\n");
    assert_eq!(line, 3);
    assert!(message.contains("\"this is not sdp\""), "{message}");
    // Long garbage is cut in the message.
    let (_, message) = syntax_error(&format!("v=0\r\n{}\r\n", "x".repeat(500)));
    assert!(message.len() < 120, "{message}");
}

#[test]
fn blank_line_cr_and_nul_inside() {
    assert_eq!(
        syntax_error("v=0\r\n\r\ns=-\r\n"),
        (2, "empty line".to_owned())
    );
    let (line, message) = syntax_error("v=0\r\ns=a\rb\r\n");
    assert_eq!(line, 2);
    assert!(message.contains("CR"), "{message}");
    let (line, message) = syntax_error("v=0\ns=a\0b\n");
    assert_eq!(line, 2);
    assert!(message.contains("NUL"), "{message}");
}

fn session(extra: &[&str]) -> String {
    let mut lines = vec![
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.1",
        "s=-",
        "c=IN IP4 192.0.2.1",
        "t=0 0",
    ];
    lines.extend_from_slice(extra);
    crlf(&lines)
}

#[test]
fn bad_media_lines() {
    for (m, needle) in [
        ("m=audio 7000x RTP/AVP 0", "port \"7000x\""),
        ("m=audio 70000 RTP/AVP 0", "port \"70000\""),
        ("m=audio +7000 RTP/AVP 0", "port \"+7000\""),
        ("m=audio -1 RTP/AVP 0", "port \"-1\""),
        ("m=audio 7000/0 RTP/AVP 0", "port count \"0\""),
        ("m=audio 7000/ RTP/AVP 0", "port count \"\""),
        ("m=audio 7000", "m= needs"),
        ("m=", "m= needs"),
        ("m=audio 7000 RTP/AVP", "no formats"),
    ] {
        let (line, message) = syntax_error(&session(&[m]));
        assert_eq!(line, 6, "{m}");
        assert!(message.contains(needle), "{m}: {message}");
    }
    // A rejected stream without formats is tolerated.
    assert_eq!(
        parse(&session(&["m=video 0 RTP/AVP"])).unwrap().media()[0].formats,
        Vec::<String>::new()
    );
}

#[test]
fn missing_connection() {
    let text = crlf(&[
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.1",
        "s=-",
        "t=0 0",
        "m=audio 5004 RTP/AVP 0",
        "c=IN IP4 192.0.2.1",
        "m=video 5006 RTP/AVP 96",
        "a=rtpmap:96 H264/90000",
    ]);
    let e = parse(&text).unwrap_err();
    assert_eq!(
        e,
        SdpError::MissingConnection {
            line: 7,
            kind: "video".into()
        }
    );
    assert_eq!(
        e.to_string(),
        "line 7: m=video has no c= line and there is no session-level c= line"
    );
    // The same stream rejected (port 0) needs no address.
    let sdp = parse(&text.replace("m=video 5006", "m=video 0")).unwrap();
    assert_eq!(sdp.media()[1].connection, None);
}

#[test]
fn bad_connection_lines() {
    for (c, needle) in [
        ("c=IN IP4 pbx.example.com", "host names"),
        ("c=IN IP4 2001:db8::1", "not an IP4 address"),
        ("c=IN IP6 192.0.2.1", "not an IP6 address"),
        ("c=IN IP4 233.252.0.1/127", "multicast"),
        ("c=IN IP4", "needs `IN IP4|IP6 <address>`"),
        ("c=IN IP4 192.0.2.1 extra", "needs `IN IP4|IP6 <address>`"),
        ("c=ATM IP4 192.0.2.1", "network type \"ATM\""),
        ("c=IN IPX 192.0.2.1", "address type \"IPX\""),
        ("c=IN IP4 192.0.2.256", "\"192.0.2.256\""),
    ] {
        let (line, message) = syntax_error(&session(&["m=audio 5004 RTP/AVP 0", c]));
        assert_eq!(line, 7, "{c}");
        assert!(message.starts_with("c= "), "{c}: {message}");
        assert!(message.contains(needle), "{c}: {message}");
    }
    // Session level too.
    assert_eq!(syntax_error("v=0\r\nc=IN IP4 x\r\n").0, 2);
}

#[test]
fn bad_rtcp_lines() {
    for a in [
        "a=rtcp",
        "a=rtcp:",
        "a=rtcp:abc",
        "a=rtcp:65536",
        "a=rtcp:5005 IN IP4",
        "a=rtcp:5005 IN IP4 192.0.2.1 x",
    ] {
        let (line, message) = syntax_error(&session(&["m=audio 5004 RTP/AVP 0", a]));
        assert_eq!(line, 7, "{a}");
        assert!(message.contains("a=rtcp"), "{a}: {message}");
    }
    let (_, message) = syntax_error(&session(&[
        "m=audio 5004 RTP/AVP 0",
        "a=rtcp:5005 IN IP4 host.example.com",
    ]));
    assert!(message.contains("host names"), "{message}");
}

#[test]
fn duplicates_name_both_lines() {
    for (extra, line, first) in [
        (
            &[
                "m=audio 5004 RTP/AVP 0",
                "c=IN IP4 192.0.2.1",
                "c=IN IP4 192.0.2.2",
            ][..],
            8,
            7,
        ),
        (
            &["m=audio 5004 RTP/AVP 0", "a=rtcp:5005", "a=rtcp:5007"][..],
            8,
            7,
        ),
        (
            &["m=audio 5004 RTP/AVP 0", "a=sendonly", "a=inactive"][..],
            8,
            7,
        ),
        (&["a=sendonly", "a=recvonly"][..], 7, 6),
        (&["c=IN IP4 192.0.2.3"][..], 6, 4),
        (&["o=- 2 2 IN IP4 192.0.2.1"][..], 6, 2),
    ] {
        let (l, message) = syntax_error(&session(extra));
        assert_eq!(l, line, "{extra:?}");
        assert!(
            message.contains(&format!("first on line {first}")),
            "{extra:?}: {message}"
        );
    }
}

#[test]
fn session_fields_inside_media() {
    for field in ["o=- 1 1 IN IP4 192.0.2.1", "s=-", "t=0 0", "v=0", "z=0 0"] {
        let (line, message) = syntax_error(&session(&["m=audio 5004 RTP/AVP 0", field]));
        assert_eq!(line, 7);
        assert!(message.contains("starts on line 6"), "{message}");
    }
    // Media-level fields and unknown letters are fine.
    parse(&session(&[
        "m=audio 5004 RTP/AVP 0",
        "i=x",
        "b=AS:64",
        "k=prompt",
        "y=1",
        "a=x",
    ]))
    .unwrap();
}

#[test]
fn attribute_without_name() {
    assert_eq!(
        syntax_error(&session(&["a=:x"])),
        (6, "a= line without an attribute name".to_owned())
    );
    assert_eq!(
        syntax_error(&session(&["m=audio 5004 RTP/AVP 0", "a="])).0,
        7
    );
}

#[test]
fn too_many_media() {
    let mut lines = vec![
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.1",
        "s=-",
        "c=IN IP4 192.0.2.1",
        "t=0 0",
    ];
    let m = "m=audio 5004 RTP/AVP 0";
    lines.extend(std::iter::repeat_n(m, MAX_MEDIA));
    assert_eq!(parse(&crlf(&lines)).unwrap().media_count(), MAX_MEDIA);
    lines.push(m);
    let e = parse(&crlf(&lines)).unwrap_err();
    assert_eq!(
        e,
        SdpError::TooManyMedia {
            line: 5 + MAX_MEDIA + 1,
            max: MAX_MEDIA
        }
    );
    assert_eq!(e.to_string(), "line 38: more than 32 m= lines");
}

#[test]
fn size_limit() {
    let head = session(&["m=audio 5004 RTP/AVP 0"]);
    // One long attribute line fills the SDP to exactly the limit.
    let filler = MAX_SDP_LEN - head.len() - "a=x\r\n".len();
    let mut text = format!("{head}a=x{}\r\n", "y".repeat(filler));
    assert_eq!(text.len(), MAX_SDP_LEN);
    assert!(parse(&text).is_ok());
    text.push('\n');
    assert_eq!(
        parse(&text).unwrap_err(),
        SdpError::TooLarge {
            len: MAX_SDP_LEN + 1,
            max: MAX_SDP_LEN
        }
    );
    let e = parse(&"v=0\r\n".repeat(100_000)).unwrap_err();
    assert!(matches!(e, SdpError::TooLarge { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "SDP is 500000 bytes, over the limit of 65536"
    );
}

// ---- fuzzing ----

/// Parses, and when that works, rewrites (to both families, with and without
/// ports) and checks the output parses and rewrites to itself again.
fn exercise(text: &str, rng: &mut Rng) -> bool {
    let Ok(sdp) = parse(text) else {
        return false;
    };
    let n = sdp.media_count();
    assert!(n <= MAX_MEDIA);
    // Display round trip.
    let again = parse(&sdp.to_string()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert_eq!(again.media(), sdp.media(), "{text:?}");
    for addr in [ip("203.0.113.1"), ip("2001:db8:1::1")] {
        let media = (0..n)
            .map(|i| MediaRewrite {
                port: (rng.below(4) != 0).then(|| 30000 + 2 * i as u16),
                rtcp_port: (rng.below(2) == 0).then(|| 30001 + 2 * i as u16),
                direction: [None, Some(Direction::SendOnly), Some(Direction::Inactive)]
                    [rng.below(3)],
                proto: (rng.below(2) == 0).then(|| "RTP/SAVP".to_string()),
                crypto: [
                    None,
                    Some(Vec::new()),
                    Some(vec!["1 AES_CM_128_HMAC_SHA1_80 inline:x".to_string()]),
                ][rng.below(3)]
                .clone(),
            })
            .collect();
        let rw = Rewrite {
            addr,
            media,
            strip_ice: rng.below(2) == 0,
        };
        let out = match sdp.rewrite(&rw) {
            Ok(out) => out,
            Err(SdpError::BadMediaRewrite { index, .. }) => {
                assert!(sdp.media()[index].formats.is_empty(), "{text:?}");
                continue;
            }
            Err(e) => panic!("{text:?}: {e}"),
        };
        super::golden::check_invariants("fuzz", text, &rw, &out);
    }
    true
}

#[test]
fn fuzz_random_bytes() {
    let mut rng = Rng(0x5eed_0001);
    for _ in 0..20_000 {
        let len = rng.below(300);
        // Half of the inputs get past the first line.
        let mut bytes = if rng.below(2) == 0 {
            b"v=0\r\n".to_vec()
        } else {
            Vec::new()
        };
        bytes.extend((0..len).map(|_| match rng.below(4) {
            0 => b"v=0\r\nmcaosti IP4 6/:.-"[rng.below(21)],
            _ => rng.next() as u8,
        }));
        exercise(&String::from_utf8_lossy(&bytes), &mut rng);
    }
}

#[test]
fn fuzz_sdp_shaped_lines() {
    let mut rng = Rng(0x5eed_0002);
    let types = [
        "o=", "s=", "c=", "t=", "m=", "a=", "b=", "i=", "k=", "z=", "y=", "v=", "", "M=",
    ];
    let words = [
        "IN",
        "IP4",
        "IP6",
        "192.0.2.1",
        "0.0.0.0",
        "::",
        "2001:db8::1",
        "audio",
        "video",
        "0",
        "5004",
        "5004/2",
        "65535",
        "65536",
        "/",
        "RTP/AVP",
        "rtcp:",
        "rtcp:5005",
        "rtcp-mux",
        "sendonly",
        "recvonly",
        "inactive",
        "sendrecv",
        "crypto:",
        "candidate:1",
        "ice-ufrag:x",
        "-",
        ":",
        " ",
        "é",
        "\t",
        "\r",
        "\0",
        "x",
    ];
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut text = String::from("v=0\r\n");
        for _ in 0..rng.below(14) {
            text.push_str(rng.pick(&types));
            for _ in 0..rng.below(7) {
                text.push_str(rng.pick(&words));
                if rng.below(3) != 0 {
                    text.push(' ');
                }
            }
            text.push_str(if rng.below(2) == 0 { "\r\n" } else { "\n" });
        }
        accepted += usize::from(exercise(&text, &mut rng));
    }
    // Enough inputs get through the parser to exercise the rewrite.
    assert!(accepted > 1_000, "{accepted}");
}

#[test]
fn fuzz_mutated_golden_inputs() {
    let mut rng = Rng(0x5eed_0003);
    let inputs: Vec<String> = super::golden::FILES
        .iter()
        .map(|(name, file)| super::golden::load(name, file).input)
        .collect();
    for input in &inputs {
        // The unmutated inputs must make it through `exercise`.
        assert!(exercise(input, &mut rng));
        let mut accepted = 0;
        for _ in 0..1_500 {
            let text = mutate(input, &mut rng);
            accepted += usize::from(exercise(&text, &mut rng));
        }
        assert!(accepted > 300, "{accepted}");
    }
}

fn mutate(input: &str, rng: &mut Rng) -> String {
    let mut lines: Vec<String> = input.lines().map(str::to_owned).collect();
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(lines.len());
        match rng.below(7) {
            0 => {
                lines.remove(i);
                if lines.is_empty() {
                    lines.push(String::new());
                }
            }
            1 => {
                let copy = lines[i].clone();
                let j = rng.below(lines.len());
                lines.insert(j, copy);
            }
            2 => {
                let j = rng.below(lines.len());
                lines.swap(i, j);
            }
            3 => {
                let cut = rng.below(lines[i].len() + 1);
                let mut bytes = lines[i].as_bytes().to_vec();
                bytes.truncate(cut);
                lines[i] = String::from_utf8_lossy(&bytes).into_owned();
            }
            _ => {
                let mut bytes = lines[i].as_bytes().to_vec();
                let at = rng.below(bytes.len() + 1);
                let b = *b" \r\n\0/:0123456789.x"
                    .get(rng.below(19))
                    .unwrap_or(&(rng.next() as u8));
                if at < bytes.len() && rng.below(2) == 0 {
                    bytes[at] = b;
                } else {
                    bytes.insert(at, b);
                }
                lines[i] = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
    }
    let ending = if rng.below(2) == 0 { "\r\n" } else { "\n" };
    let mut text = lines.join(ending);
    if rng.below(4) != 0 {
        text.push_str(ending);
    }
    text
}
