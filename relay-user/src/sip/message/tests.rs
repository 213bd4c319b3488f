use std::{collections::HashSet, net::SocketAddr};

use super::*;
use crate::sip::transport::framing::{Frame as StreamFrame, FrameError, StreamFramer};

const MAX: usize = DEFAULT_MAX_MESSAGE_SIZE;

const INVITE: &str = "INVITE sip:+4930123@198.51.100.10:5061;transport=tls SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n\
Via: SIP/2.0/TCP proxy.example.com;branch=z9hG4bKprx1;received=203.0.113.7\r\n\
Max-Forwards: 70\r\n\
To: \"Voicemail\" <sip:+4930123@example.com>\r\n\
From: \"Alice, A.\" <sip:alice@192.0.2.10;transport=udp>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@192.0.2.10:5060>;expires=60\r\n\
Diversion: <sip:100@example.com>;reason=no-answer\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

fn invite() -> SipMessage {
    parse(INVITE.as_bytes(), MAX).expect("fixture parses")
}

fn replace(text: &str, from: &str, to: &str) -> Vec<u8> {
    assert!(text.contains(from), "fixture lacks {from:?}");
    text.replacen(from, to, 1).into_bytes()
}

#[test]
fn accessors_read_an_invite() {
    let m = invite();
    assert!(m.is_request());
    assert_eq!(m.method(), Some(&Method::INVITE));
    assert_eq!(m.status(), None);
    let uri = m.request_uri().unwrap();
    assert!(!uri.sips);
    assert_eq!(uri.host_port.port, Some(5061));
    assert_eq!(m.call_id(), Some("a84b4c76e66710@pc33.example.com"));
    assert_eq!(m.from_tag(), Some("1928301774"));
    assert_eq!(m.to_tag(), None);
    assert_eq!(
        m.from_value(),
        Some("\"Alice, A.\" <sip:alice@192.0.2.10;transport=udp>;tag=1928301774")
    );
    let from = m.from_addr().unwrap();
    assert_eq!(from.name.as_deref(), Some("Alice, A."));
    assert_eq!(
        from.uri.host_port.host,
        Host::IP4("192.0.2.10".parse().unwrap())
    );
    assert!(m.to_addr().is_some());
    assert_eq!(
        m.cseq(),
        Some(CSeq {
            seq: 314159,
            method: Method::INVITE
        })
    );
    let via = m.top_via().unwrap();
    assert_eq!(via.transport, "UDP");
    assert_eq!(via.branch.as_deref(), Some("z9hG4bK776asdhds"));
    assert_eq!(via.sent_by_key(), "192.0.2.10:5060");
    assert_eq!(via.rport, Rport::Requested);
    assert_eq!(via.received, None);
    assert!(via.has_magic_cookie());
    assert_eq!(m.via_count(), 2);
    let second = Via::parse(m.header_values("Via")[1]).unwrap();
    assert_eq!(second.received.as_deref(), Some("203.0.113.7"));
    assert_eq!(second.sent_by_key(), "proxy.example.com:5060");
    assert_eq!(m.contact_uri().unwrap().host_port.port, Some(5060));
    assert_eq!(m.content_length(), Some(4));
    assert_eq!(m.content_type(), Some("application/sdp"));
    assert_eq!(m.body(), b"v=0\n");
    assert_eq!(m.max_forwards(), Some(70));
    assert_eq!(
        m.header("diversion"),
        Some("<sip:100@example.com>;reason=no-answer")
    );
    assert_eq!(m.header("X-Absent"), None);
}

#[test]
fn compact_and_case_insensitive_names() {
    let text = "OPTIONS sip:relay.example.com SIP/2.0\r\n\
v: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKc1;rport=5070;received=192.0.2.99\r\n\
f: <sip:pbx@192.0.2.10>;tag=abc\r\n\
t: <sip:relay.example.com>;tag=def\r\n\
i: compact-1\r\n\
CSEQ: 7 OPTIONS\r\n\
m: <sip:pbx@192.0.2.10:5070>\r\n\
c: text/plain\r\n\
l: 2\r\n\
\r\n\
hi";
    let m = parse(text.as_bytes(), MAX).unwrap();
    assert_eq!(m.call_id(), Some("compact-1"));
    assert_eq!(m.header("i"), Some("compact-1"));
    assert_eq!(m.header("CALL-ID"), Some("compact-1"));
    assert_eq!(m.header("call-id"), Some("compact-1"));
    assert_eq!(m.from_tag(), Some("abc"));
    assert_eq!(m.to_tag(), Some("def"));
    assert_eq!(m.header("f"), m.header("From"));
    assert_eq!(m.cseq().unwrap().seq, 7);
    let via = m.top_via().unwrap();
    assert_eq!(via.rport, Rport::Port(5070));
    assert_eq!(via.received.as_deref(), Some("192.0.2.99"));
    assert_eq!(m.header("v"), m.header("via"));
    assert_eq!(m.contact_uri().unwrap().host_port.port, Some(5070));
    assert_eq!(m.header("m"), m.header("Contact"));
    assert_eq!(m.content_type(), Some("text/plain"));
    assert_eq!(m.header("C"), Some("text/plain"));
    assert_eq!(m.content_length(), Some(2));
    assert_eq!(m.header("L"), Some("2"));
    assert_eq!(m.body(), b"hi");
    // Serialized with long names.
    let out = String::from_utf8(m.to_bytes().to_vec()).unwrap();
    assert!(out.contains("\r\nCall-ID: compact-1\r\n"), "{out}");
    assert!(
        out.contains("\r\nVia: SIP/2.0/UDP 192.0.2.10:5070;"),
        "{out}"
    );
}

#[test]
fn folded_lines_and_comma_lists() {
    let text = "BYE sip:bob@198.51.100.10 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKa,\r\n SIP/2.0/TCP 192.0.2.11;branch=z9hG4bKb ,\r\n\tSIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bKc\r\n\
From: <sip:a@x>;tag=1\r\n\
To: <sip:b@y>;tag=2\r\n\
Call-ID: fold\r\n\
CSeq: 2\r\n   BYE\r\n\
Route: <sip:p1.example.com;lr>, \"Edge, Two\" <sip:p2.example.com;lr>\r\n\
Content-Length: 0\r\n\
\r\n";
    let m = parse(text.as_bytes(), MAX).unwrap();
    let vias = m.header_values("Via");
    assert_eq!(vias.len(), 3);
    assert_eq!(m.via_count(), 3);
    assert_eq!(
        Via::parse(vias[2]).unwrap().sent_by_key(),
        "[2001:db8::1]:5062"
    );
    assert_eq!(m.cseq().unwrap().method, Method::BYE);
    assert_eq!(
        m.header_values("route"),
        vec![
            "<sip:p1.example.com;lr>",
            "\"Edge, Two\" <sip:p2.example.com;lr>"
        ]
    );
    // A comma inside a quoted display name does not split a To header
    // (not a list header anyway) nor a Contact.
    let contact = replace(
        INVITE,
        "Contact: <sip:alice@192.0.2.10:5060>;expires=60",
        "Contact: \"A, B\" <sip:alice@192.0.2.10:5060>, <sip:alice@192.0.2.11>",
    );
    let m = parse(&contact, MAX).unwrap();
    assert_eq!(m.header_values("Contact").len(), 2);
    assert_eq!(
        m.header_values("Contact")[0],
        "\"A, B\" <sip:alice@192.0.2.10:5060>"
    );
}

#[test]
fn body_follows_content_length() {
    // Extra datagram bytes after Content-Length are not the body (18.3).
    let mut extra = INVITE.as_bytes().to_vec();
    extra.extend_from_slice(b"GARBAGE");
    assert_eq!(parse(&extra, MAX).unwrap().body(), b"v=0\n");
    // Fewer bytes than declared.
    let short = replace(INVITE, "Content-Length: 4", "Content-Length: 40");
    assert_eq!(
        parse(&short, MAX).unwrap_err(),
        ParseError::BodyTruncated {
            declared: 40,
            available: 4
        }
    );
    // Without Content-Length the datagram's rest is the body.
    let none = replace(INVITE, "Content-Length: 4\r\n", "");
    assert_eq!(parse(&none, MAX).unwrap().body(), b"v=0\n");
    // Binary bodies survive a round trip byte for byte.
    let mut m = invite();
    let binary: Vec<u8> = (0..=255u8).collect();
    m.set_body(Some("application/octet-stream"), binary.clone());
    let back = parse(&m.to_bytes(), MAX).unwrap();
    assert_eq!(back.body(), &binary[..]);
    assert_eq!(back.content_length(), Some(256));
    assert_eq!(back.content_type(), Some("application/octet-stream"));
}

#[test]
fn errors_say_what_is_wrong() {
    let cases: Vec<(Vec<u8>, ParseError)> = vec![
        (b"".to_vec(), ParseError::Empty),
        (b"\r\n\r\n".to_vec(), ParseError::Empty),
        (
            b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n".to_vec(),
            ParseError::NoHeaderEnd,
        ),
        (
            replace(INVITE, "Max-Forwards: 70\r\n", "Max-Forwards: 70\n"),
            ParseError::Syntax {
                line: 4,
                what: "bare CR or LF (lines end with CRLF)".into(),
            },
        ),
        (
            replace(INVITE, "Max-Forwards: 70", "Max-Forwards: 7\u{0}0"),
            ParseError::Syntax {
                line: 4,
                what: "control character 0x00".into(),
            },
        ),
        (
            replace(INVITE, "Max-Forwards: 70", "Max-Forwards 70"),
            ParseError::Syntax {
                line: 4,
                what: "no `:` in header line `Max-Forwards 70`".into(),
            },
        ),
        (
            replace(INVITE, "Max-Forwards: 70", "Max Forwards: 70"),
            ParseError::Syntax {
                line: 4,
                what: "bad header name `Max Forwards`".into(),
            },
        ),
        (
            replace(INVITE, "Max-Forwards: 70", "Max-Forwards: seventy"),
            ParseError::BadHeader {
                name: "Max-Forwards",
                what: "not a number: `seventy`".into(),
            },
        ),
        (
            replace(INVITE, "Call-ID: a84b4c76e66710@pc33.example.com\r\n", ""),
            ParseError::MissingHeader("Call-ID"),
        ),
        (
            replace(
                INVITE,
                "From: \"Alice, A.\" <sip:alice@192.0.2.10;transport=udp>;tag=1928301774\r\n",
                "",
            ),
            ParseError::MissingHeader("From"),
        ),
        (
            replace(
                INVITE,
                "To: \"Voicemail\" <sip:+4930123@example.com>\r\n",
                "",
            ),
            ParseError::MissingHeader("To"),
        ),
        (
            replace(INVITE, "CSeq: 314159 INVITE\r\n", ""),
            ParseError::MissingHeader("CSeq"),
        ),
        (
            replace(INVITE, "CSeq: 314159 INVITE", "CSeq: 314159 BYE"),
            ParseError::BadHeader {
                name: "CSeq",
                what: "method BYE is not the request's INVITE".into(),
            },
        ),
        (
            replace(INVITE, "CSeq: 314159 INVITE", "CSeq: 4294967296 INVITE"),
            ParseError::BadHeader {
                name: "CSeq",
                what: "bad sequence number `4294967296`".into(),
            },
        ),
        (
            replace(INVITE, "Content-Length: 4", "Content-Length: -4"),
            ParseError::BadHeader {
                name: "Content-Length",
                what: "not a number: `-4`".into(),
            },
        ),
        (
            replace(INVITE, "Content-Length: 4", "Content-Length: 4\r\nl: 5"),
            ParseError::BadHeader {
                name: "Content-Length",
                what: "several different values".into(),
            },
        ),
        (
            replace(INVITE, "INVITE sip:", "INVITEX sip:"),
            ParseError::UnsupportedMethod {
                method: "`INVITEX`".into(),
            },
        ),
        (
            replace(INVITE, "INVITE sip:", "invite sip:"),
            ParseError::UnsupportedMethod {
                method: "`invite`".into(),
            },
        ),
        (
            replace(INVITE, "SIP/2.0\r\n", "SIP/3.0\r\n"),
            ParseError::Syntax {
                line: 1,
                what: "unsupported version `SIP/3.0`".into(),
            },
        ),
        (
            replace(
                INVITE,
                "sip:+4930123@198.51.100.10:5061;transport=tls",
                "tel:+4930123",
            ),
            ParseError::Syntax {
                line: 1,
                what: "Request-URI `tel:+4930123` is not a sip: or sips: URI".into(),
            },
        ),
    ];
    for (bytes, want) in cases {
        let got = parse(&bytes, MAX).unwrap_err();
        assert_eq!(got, want, "{}", String::from_utf8_lossy(&bytes));
        assert!(!got.to_string().is_empty());
    }
    assert_eq!(
        parse(INVITE.as_bytes(), 100).unwrap_err(),
        ParseError::TooLarge {
            len: INVITE.len(),
            max: 100
        }
    );
    let not_utf8 = replace(INVITE, "Voicemail", "Voice\u{1}mail");
    let mut not_utf8 = not_utf8;
    let at = not_utf8.iter().position(|&b| b == 1).unwrap();
    not_utf8[at] = 0xff;
    assert_eq!(
        parse(&not_utf8, MAX).unwrap_err(),
        ParseError::Syntax {
            line: 5,
            what: "not UTF-8".into()
        }
    );
    let bad_via = replace(INVITE, "SIP/2.0/UDP 192.0.2.10:5060", "SIP/2.0/UDP");
    assert!(matches!(
        parse(&bad_via, MAX).unwrap_err(),
        ParseError::BadHeader { name: "Via", .. }
    ));
    let status = b"SIP/2.0 2000 OK\r\n\r\n";
    assert!(matches!(
        parse(status, MAX).unwrap_err(),
        ParseError::Syntax { line: 1, .. }
    ));
    let status = b"SIP/2.0 099 Low\r\n\r\n";
    assert!(matches!(
        parse(status, MAX).unwrap_err(),
        ParseError::Syntax { line: 1, .. }
    ));
}

#[test]
fn extension_methods_and_reason_phrases() {
    let text = replace(INVITE, "INVITE sip:", "FOO sip:");
    let text = String::from_utf8(text)
        .unwrap()
        .replace("314159 INVITE", "314159 FOO");
    let m = parse(text.as_bytes(), MAX).unwrap();
    assert_eq!(m.method().unwrap().to_string(), "FOO");
    assert_eq!(m.cseq().unwrap().method.to_string(), "FOO");

    let busy = response_for(&invite(), 486, "", Some("t1"));
    let bytes = busy.to_bytes();
    assert!(bytes.starts_with(b"SIP/2.0 486 Busy Here\r\n"));
    let back = parse(&bytes, MAX).unwrap();
    assert_eq!(back.status(), Some(486));
    assert_eq!(back.reason(), Some("Busy Here"));
    let custom = response_for(&invite(), 480, "Gone Fishing", Some("t1"));
    let back = parse(&custom.to_bytes(), MAX).unwrap();
    assert_eq!(back.reason(), Some("Gone Fishing"));
    assert_eq!(SipMessage::response(799, "").reason(), Some("Unknown"));
}

#[test]
fn response_for_copies_what_8_2_6_says() {
    let req = invite();
    let r = response_for(&req, 180, "Ringing", Some("xyz"));
    assert_eq!(r.status(), Some(180));
    assert_eq!(r.header_values("Via"), req.header_values("Via"));
    assert_eq!(r.from_value(), req.from_value());
    assert_eq!(r.to_tag(), Some("xyz"));
    assert_eq!(
        r.to_value(),
        Some("\"Voicemail\" <sip:+4930123@example.com>;tag=xyz")
    );
    assert_eq!(r.call_id(), req.call_id());
    assert_eq!(r.cseq(), req.cseq());
    assert!(r.body().is_empty());
    assert!(r.header("Contact").is_none());
    assert!(r.header("Diversion").is_none());
    validate(&r).unwrap();
    assert_eq!(
        tx_key(&r, TxRole::Server).unwrap(),
        tx_key(&req, TxRole::Server).unwrap()
    );

    // 100 Trying: no tag, Timestamp copied.
    let mut with_ts = req.clone();
    with_ts.add_header("Timestamp", "54");
    let trying = response_for(&with_ts, 100, "", Some("xyz"));
    assert_eq!(trying.to_tag(), None);
    assert_eq!(trying.reason(), Some("Trying"));
    assert_eq!(trying.header("Timestamp"), Some("54"));
    assert!(
        response_for(&with_ts, 200, "", None)
            .header("Timestamp")
            .is_none()
    );

    // An existing To tag (in-dialog request) is kept as is.
    let mut in_dialog = req.clone();
    in_dialog.set_header("To", "<sip:b@y>;tag=old");
    let r = response_for(&in_dialog, 200, "OK", Some("new"));
    assert_eq!(r.to_value(), Some("<sip:b@y>;tag=old"));
}

#[test]
fn ack_and_cancel_are_built_per_rfc() {
    let mut req = invite();
    req.add_header("Route", "<sip:edge1.example.com;lr>");
    let resp = response_for(&req, 486, "", Some("callee"));
    let ack = ack_for_non2xx(&req, &resp);
    assert_eq!(ack.method(), Some(&Method::ACK));
    assert_eq!(
        uri_string(ack.request_uri().unwrap()),
        "sip:+4930123@198.51.100.10:5061;transport=tls"
    );
    assert_eq!(ack.header_values("Via"), vec![req.header("Via").unwrap()]);
    assert_eq!(ack.to_tag(), Some("callee"));
    assert_eq!(ack.from_value(), req.from_value());
    assert_eq!(ack.call_id(), req.call_id());
    assert_eq!(
        ack.cseq(),
        Some(CSeq {
            seq: 314159,
            method: Method::ACK
        })
    );
    assert_eq!(ack.header("Route"), Some("<sip:edge1.example.com;lr>"));
    validate(&ack).unwrap();
    // The ACK keys to the INVITE's server transaction.
    assert_eq!(
        tx_key(&ack, TxRole::Server).unwrap(),
        tx_key(&req, TxRole::Server).unwrap()
    );

    let cancel = cancel_for(&req);
    assert_eq!(cancel.method(), Some(&Method::CANCEL));
    assert_eq!(
        cancel.header_values("Via"),
        vec![req.header("Via").unwrap()]
    );
    assert_eq!(cancel.to_value(), req.to_value());
    assert_eq!(cancel.cseq().unwrap().method, Method::CANCEL);
    assert_eq!(cancel.cseq().unwrap().seq, 314159);
    assert_eq!(cancel.header("Route"), Some("<sip:edge1.example.com;lr>"));
    validate(&cancel).unwrap();
    let invite_key = tx_key(&req, TxRole::Server).unwrap();
    let cancel_key = tx_key(&cancel, TxRole::Server).unwrap();
    assert_ne!(cancel_key, invite_key);
    assert_eq!(cancel_key.with_method(Method::INVITE), invite_key);
}

#[test]
fn transaction_keys() {
    let req = invite();
    let server = tx_key(&req, TxRole::Server).unwrap();
    assert_eq!(server.role(), TxRole::Server);
    assert_eq!(server.branch(), "z9hG4bK776asdhds");
    assert_eq!(server.sent_by(), "192.0.2.10:5060");
    assert_eq!(*server.method(), Method::INVITE);
    assert!(server.to_string().contains("z9hG4bK776asdhds"));
    let client = tx_key(&req, TxRole::Client).unwrap();
    assert_eq!(client.sent_by(), "");
    // A response keys to the client transaction of its request.
    let resp = response_for(&req, 200, "", Some("t"));
    assert_eq!(tx_key(&resp, TxRole::Client).unwrap(), client);
    // Same branch from another sent-by is another server transaction.
    let other = replace(INVITE, "192.0.2.10:5060;branch", "192.0.2.11:5060;branch");
    let other = parse(&other, MAX).unwrap();
    assert_ne!(tx_key(&other, TxRole::Server).unwrap(), server);
    // Default port 5060 equals an explicit 5060.
    let implicit = replace(INVITE, "192.0.2.10:5060;branch", "192.0.2.10;branch");
    let implicit = parse(&implicit, MAX).unwrap();
    assert_eq!(tx_key(&implicit, TxRole::Server).unwrap(), server);

    // RFC 2543 peers (no magic cookie): Call-ID, From tag and CSeq number.
    let old = replace(INVITE, "branch=z9hG4bK776asdhds", "branch=1234");
    let old = parse(&old, MAX).unwrap();
    let old_key = tx_key(&old, TxRole::Server).unwrap();
    assert!(old_key.branch().starts_with("rfc2543;"));
    let ack = ack_for_non2xx(&old, &response_for(&old, 404, "", Some("x")));
    assert_eq!(tx_key(&ack, TxRole::Server).unwrap(), old_key);
    let no_branch = replace(INVITE, ";branch=z9hG4bK776asdhds", "");
    assert!(tx_key(&parse(&no_branch, MAX).unwrap(), TxRole::Server).is_ok());

    let mut broken = req.clone();
    broken.remove_header("Via");
    assert_eq!(
        tx_key(&broken, TxRole::Server).unwrap_err(),
        ParseError::MissingHeader("Via")
    );
}

#[test]
fn identifiers_are_random_and_well_formed() {
    let mut seen = HashSet::new();
    for _ in 0..1000 {
        let b = new_branch();
        assert!(b.starts_with(MAGIC_COOKIE));
        assert_eq!(b.len(), MAGIC_COOKIE.len() + 32);
        assert!(b.bytes().all(is_token_byte));
        assert!(seen.insert(b));
        let t = new_tag();
        assert_eq!(t.len(), 16);
        assert!(t.bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(seen.insert(t));
    }
    let c = new_call_id("relay.example.com");
    assert!(c.ends_with("@relay.example.com"));
    assert_eq!(c.len(), 32 + 1 + "relay.example.com".len());
    assert_ne!(c, new_call_id("relay.example.com"));
}

#[test]
fn building_a_request_from_scratch() {
    let uri: SipUri = "sip:+4930123@198.51.100.10:5061;transport=tls"
        .parse()
        .unwrap();
    let mut m = SipMessage::request(Method::INVITE, uri);
    let branch = new_branch();
    m.push_via(&format!("SIP/2.0/TLS 198.51.100.1:5061;branch={branch}"));
    m.add_header("Max-Forwards", "70");
    m.add_header("From", "<sip:relay@198.51.100.1:5061>;tag=abc");
    m.add_header("To", "<sip:+4930123@198.51.100.10:5061>");
    m.add_header("Call-ID", &new_call_id("198.51.100.1"));
    m.add_header("CSeq", "1 INVITE");
    m.add_header("Contact", "<sip:relay@198.51.100.1:5061;transport=tls>");
    m.set_body(Some("application/sdp"), &b"v=0\r\n"[..]);
    validate(&m).unwrap();
    let wire = m.to_bytes();
    let text = String::from_utf8(wire.to_vec()).unwrap();
    assert!(
        text.starts_with("INVITE sip:+4930123@198.51.100.10:5061;transport=tls SIP/2.0\r\n"),
        "{text}"
    );
    assert!(
        text.contains("\r\nContent-Length: 5\r\n\r\nv=0\r\n"),
        "{text}"
    );
    let back = parse(&wire, MAX).unwrap();
    assert_eq!(
        back.top_via().unwrap().branch.as_deref(),
        Some(branch.as_str())
    );
    // The From URI's port survives (text headers, not the crate's printer).
    assert_eq!(
        back.from_value(),
        Some("<sip:relay@198.51.100.1:5061>;tag=abc")
    );

    // push_via / pop_via keep the order.
    m.push_via("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKtop");
    assert_eq!(m.via_count(), 2);
    assert_eq!(m.top_via().unwrap().branch.as_deref(), Some("z9hG4bKtop"));
    assert_eq!(
        m.pop_via().as_deref(),
        Some("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKtop")
    );
    assert_eq!(
        m.top_via().unwrap().branch.as_deref(),
        Some(branch.as_str())
    );
    assert_eq!(m.remove_header("Contact"), 1);
    assert_eq!(m.remove_header("Contact"), 0);
    // A value with CRLF cannot inject a header line.
    m.set_header("Subject", "hi\r\nVia: SIP/2.0/UDP evil;branch=z9hG4bKevil");
    let back = parse(&m.to_bytes(), MAX).unwrap();
    assert_eq!(back.via_count(), 1);
    assert_eq!(
        back.header("Subject"),
        Some("hi  Via: SIP/2.0/UDP evil;branch=z9hG4bKevil")
    );
    // A stale Content-Length is never written.
    m.set_header("Content-Length", "999");
    assert!(String::from_utf8_lossy(&m.to_bytes()).contains("Content-Length: 5\r\n"));
}

#[test]
fn stamp_received_follows_rfc3581() {
    let src: SocketAddr = "203.0.113.5:40000".parse().unwrap();
    let mut m = invite();
    m.stamp_received(src);
    let via = m.top_via().unwrap();
    assert_eq!(via.received.as_deref(), Some("203.0.113.5"));
    assert_eq!(via.rport, Rport::Port(40000));
    assert_eq!(via.branch.as_deref(), Some("z9hG4bK776asdhds"));
    assert_eq!(m.via_count(), 2);
    // Same host, no rport: untouched.
    let mut m = invite();
    let before = m.header("Via").unwrap().replace(";rport", "");
    m.pop_via();
    m.push_via(&before);
    m.stamp_received("192.0.2.10:5060".parse().unwrap());
    assert_eq!(m.header("Via"), Some(before.as_str()));
    // Different host, no rport: received only.
    m.stamp_received(src);
    assert_eq!(
        m.top_via().unwrap().received.as_deref(),
        Some("203.0.113.5")
    );
    assert_eq!(m.top_via().unwrap().rport, Rport::Absent);
}

/// The frames the transport's stream framer cuts from `bytes` (a partial
/// message at the end is left out), or its first error.
fn stream_frames(bytes: &[u8], max: usize) -> Result<Vec<StreamFrame>, FrameError> {
    let mut framer = StreamFramer::new(max);
    framer.push(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = framer.next_frame()? {
        frames.push(frame);
    }
    Ok(frames)
}

fn whole(bytes: &[u8]) -> StreamFrame {
    StreamFrame::Message(Bytes::copy_from_slice(bytes))
}

#[test]
fn stream_framing_agrees_with_parse() {
    let one = INVITE.as_bytes();
    assert_eq!(stream_frames(b"", MAX), Ok(vec![]));
    assert_eq!(stream_frames(b"\r", MAX), Ok(vec![]));
    assert_eq!(
        stream_frames(b"\r\n\r\nINV", MAX),
        Ok(vec![StreamFrame::Ping])
    );
    assert_eq!(stream_frames(&one[..50], MAX), Ok(vec![]));
    assert_eq!(stream_frames(&one[..one.len() - 1], MAX), Ok(vec![]));
    assert_eq!(stream_frames(one, MAX), Ok(vec![whole(one)]));
    let mut two = one.to_vec();
    two.extend_from_slice(one);
    assert_eq!(stream_frames(&two, MAX), Ok(vec![whole(one), whole(one)]));
    let first = parse(&two[..one.len()], MAX).unwrap();
    let second = parse(&two[one.len()..], MAX).unwrap();
    assert_eq!(first.body(), second.body());
    assert_eq!(
        stream_frames(&replace(INVITE, "Content-Length: 4\r\n", ""), MAX),
        Err(FrameError::NoContentLength)
    );
    assert!(matches!(
        stream_frames(
            &replace(INVITE, "Content-Length: 4", "Content-Length: 99999"),
            MAX
        ),
        Err(FrameError::TooLarge { .. })
    ));
    assert!(matches!(
        stream_frames(&[b'a'; 200], 100),
        Err(FrameError::TooLarge { .. })
    ));
    // The framer only cuts; a bare LF inside the message is parse's to refuse.
    let bare_lf = replace(INVITE, "Max-Forwards: 70\r\n", "Max-Forwards: 70\n");
    assert_eq!(stream_frames(&bare_lf, MAX), Ok(vec![whole(&bare_lf)]));
    assert!(matches!(
        parse(&bare_lf, MAX),
        Err(ParseError::Syntax { line: 4, .. })
    ));
    // A compact Content-Length frames the same way parse reads it.
    let compact = replace(INVITE, "Content-Length: 4", "l: 4");
    assert_eq!(stream_frames(&compact, MAX), Ok(vec![whole(&compact)]));
    assert_eq!(parse(&compact, MAX).unwrap().body(), b"v=0\n");
    // So does one folded onto a continuation line (RFC 3261 7.3.1).
    let folded = replace(INVITE, "Content-Length: 4", "l:\r\n 4");
    assert_eq!(stream_frames(&folded, MAX), Ok(vec![whole(&folded)]));
    assert_eq!(parse(&folded, MAX).unwrap().body(), b"v=0\n");
}

/// Deterministic xorshift so the fuzz cases are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Runs everything on `bytes`; returns whether [`parse`] accepted them.
fn exercise(bytes: &[u8]) -> bool {
    let _ = stream_frames(bytes, MAX);
    let _ = stream_frames(bytes, 64);
    if let Ok(m) = parse_unchecked(bytes, MAX) {
        let _ = response_for(&m, 400, "Bad Request", Some("x"));
        let _ = tx_key(&m, TxRole::Server);
    }
    let Ok(m) = parse(bytes, MAX) else {
        return false;
    };
    let _ = (
        m.method(),
        m.status(),
        m.reason(),
        m.request_uri(),
        m.call_id(),
    );
    let _ = (
        m.from_tag(),
        m.to_tag(),
        m.from_addr(),
        m.to_addr(),
        m.cseq(),
    );
    let _ = (
        m.top_via(),
        m.via_count(),
        m.contact_uri(),
        m.content_length(),
        m.max_forwards(),
    );
    for via in m.header_values("Via") {
        let _ = Via::parse(via);
    }
    let key = tx_key(&m, TxRole::Server).expect("a parsed message has a key");
    let r = response_for(&m, 200, "OK", Some("t"));
    let mut stamped = m.clone();
    stamped.stamp_received("192.0.2.1:1".parse().unwrap());
    if m.is_request() {
        let _ = ack_for_non2xx(&m, &r);
        let _ = cancel_for(&m);
    }
    // What we write, we read back the same way.
    let wire = m.to_bytes();
    let back = parse(&wire, MAX).unwrap_or_else(|e| {
        panic!(
            "re-parse failed: {e}\n{}\nfrom\n{}",
            String::from_utf8_lossy(&wire),
            String::from_utf8_lossy(bytes)
        )
    });
    assert_eq!(tx_key(&back, TxRole::Server).unwrap(), key);
    assert_eq!(back.body(), m.body());
    assert_eq!(stream_frames(&wire, MAX), Ok(vec![whole(&wire)]));
    true
}

#[test]
fn fuzz_random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let alphabet = b"INVITE SIP/2.0\r\n:;,<>\"=@ \tViaFromToCSeqCall-IDl0123456789\x00\xff";
    for _ in 0..20_000 {
        let len = rng.below(300);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                if rng.below(4) == 0 {
                    rng.next() as u8
                } else {
                    alphabet[rng.below(alphabet.len())]
                }
            })
            .collect();
        let _ = exercise(&bytes);
    }
}

#[test]
fn fuzz_mutated_messages_never_panic() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let seeds: Vec<Vec<u8>> = vec![
        INVITE.as_bytes().to_vec(),
        response_for(&invite(), 200, "OK", Some("t")).to_bytes().to_vec(),
        b"OPTIONS sip:r SIP/2.0\r\nv: SIP/2.0/TCP [::1];branch=z9hG4bKx;rport\r\nf: <sip:a@b>;tag=1\r\nt: sip:c@d\r\ni: x\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n".to_vec(),
    ];
    let specials: &[&[u8]] = &[
        b"\r\n",
        b"\r\n ",
        b",",
        b";",
        b"<",
        b">",
        b"\"",
        b"=",
        b":",
        b"[",
        b"]",
        b"\\",
        b"%",
        b"\xc3",
        b"\xff",
        b"\0",
        b" ",
        b"tag=",
        b"branch=",
        b"z9hG4bK",
        b"rport",
        b"l: 9\r\n",
        b"Via: SIP/2.0/UDP h;branch=z9hG4bK1, ",
    ];
    let mut accepted = 0;
    for _ in 0..30_000 {
        let mut b = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(6) {
            let at = rng.below(b.len() + 1);
            match rng.below(5) {
                0 if at < b.len() => b[at] = rng.next() as u8,
                1 => b.truncate(at),
                2 => {
                    let s = specials[rng.below(specials.len())];
                    b.splice(at..at, s.iter().copied());
                }
                3 if at < b.len() => {
                    let end = (at + 1 + rng.below(20)).min(b.len());
                    b.drain(at..end);
                }
                _ => {
                    let from = rng.below(b.len());
                    let end = (from + rng.below(40)).min(b.len());
                    let chunk = b[from..end].to_vec();
                    b.splice(at.min(b.len())..at.min(b.len()), chunk);
                }
            }
        }
        accepted += usize::from(exercise(&b));
    }
    // Enough mutants stay valid for the round trip to be exercised.
    assert!(accepted > 1_500, "only {accepted} mutants parsed");
}
