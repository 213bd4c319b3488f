//! Every timer path with simulated time: `now` is `t0` plus an offset, and
//! [`run_until`] polls exactly at each [`TransactionLayer::next_deadline`].

use std::time::{Duration, Instant};

use super::*;
use crate::sip::message::{DEFAULT_MAX_MESSAGE_SIZE, new_branch, parse};

const PEER: &str = "192.0.2.10:5060";

fn udp() -> Dest {
    Dest::udp(PEER.parse().unwrap())
}

fn tcp() -> Dest {
    Dest::tcp(PEER.parse().unwrap(), Some(7))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn layer() -> TransactionLayer {
    TransactionLayer::new(Config::default())
}

/// A request as a peer (or our TU) would send it.
fn request(method: &str, branch: &str, transport: &str) -> SipMessage {
    let text = format!(
        "{method} sip:svc@198.51.100.10 SIP/2.0\r\n\
Via: SIP/2.0/{transport} 192.0.2.10:5060;branch={branch}\r\n\
Max-Forwards: 70\r\n\
From: <sip:pbx@192.0.2.10>;tag=from1\r\n\
To: <sip:svc@198.51.100.10>\r\n\
Call-ID: call-{branch}\r\n\
CSeq: 1 {method}\r\n\
Content-Length: 0\r\n\r\n"
    );
    parse(text.as_bytes(), DEFAULT_MAX_MESSAGE_SIZE).unwrap()
}

fn invite(branch: &str) -> SipMessage {
    request("INVITE", branch, "UDP")
}

fn response(req: &SipMessage, code: u16, to_tag: &str) -> SipMessage {
    response_for(req, code, "", (code != 100).then_some(to_tag))
}

/// The ACK for a 2xx: a new branch, the 2xx's To tag, CSeq number of the
/// INVITE.
fn ack_2xx_for(invite: &SipMessage, to_tag: &str) -> SipMessage {
    let mut ack = invite.clone();
    if let MessageLine::Request(line) = &mut ack.line {
        line.method = Method::ACK;
    }
    ack.pop_via();
    ack.push_via(&format!(
        "SIP/2.0/UDP 192.0.2.10:5060;branch={}",
        new_branch()
    ));
    ack.set_header("To", &format!("<sip:svc@198.51.100.10>;tag={to_tag}"));
    ack.set_header("CSeq", "1 ACK");
    ack
}

use crate::sip::message::MessageLine;

/// The messages the actions send, parsed, with their destinations.
fn sent(actions: &[Action]) -> Vec<(SipMessage, Dest)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { dest, bytes, .. } => {
                Some((parse(bytes, DEFAULT_MAX_MESSAGE_SIZE).unwrap(), *dest))
            }
            Action::Deliver(_) => None,
        })
        .collect()
}

fn events(actions: &[Action]) -> Vec<Event> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver(e) => Some(e.clone()),
            Action::Send { .. } => None,
        })
        .collect()
}

/// A short name for each action: `send INVITE`, `send 486`, `response 180`,
/// `timeout`, `terminated`, ...
fn describe(action: &Action) -> String {
    match action {
        Action::Send { bytes, .. } => {
            let m = parse(bytes, DEFAULT_MAX_MESSAGE_SIZE).unwrap();
            match (m.method(), m.status()) {
                (Some(method), _) => format!("send {method}"),
                (None, Some(code)) => format!("send {code}"),
                _ => unreachable!(),
            }
        }
        Action::Deliver(Event::Request { msg, .. }) => format!("request {}", msg.method().unwrap()),
        Action::Deliver(Event::Ack { .. }) => "ack".into(),
        Action::Deliver(Event::Response { msg, .. }) => {
            format!("response {}", msg.status().unwrap())
        }
        Action::Deliver(Event::Timeout { .. }) => "timeout".into(),
        Action::Deliver(Event::TransportError { .. }) => "transport error".into(),
        Action::Deliver(Event::Terminated { .. }) => "terminated".into(),
    }
}

fn names(actions: &[Action]) -> Vec<String> {
    actions.iter().map(describe).collect()
}

/// Polls at every deadline up to `end`; returns (offset from t0 in ms,
/// action) for every action produced.
fn run_until(layer: &mut TransactionLayer, t0: Instant, end: Duration) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    while let Some(at) = layer.next_deadline() {
        if at > t0 + end {
            break;
        }
        let actions = layer.poll(at);
        assert!(
            !actions.is_empty(),
            "a deadline with nothing to do at {:?}",
            at - t0
        );
        let offset = (at - t0).as_millis() as u64;
        out.extend(actions.iter().map(|a| (offset, describe(a))));
    }
    out
}

fn offsets_of(log: &[(u64, String)], what: &str) -> Vec<u64> {
    log.iter()
        .filter(|(_, w)| w == what)
        .map(|(t, _)| *t)
        .collect()
}

// ---- INVITE client ----

#[test]
fn invite_client_udp_timer_a_doubles_until_timer_b() {
    let (mut l, t0) = (layer(), Instant::now());
    let (key, out) = l.send_request(invite("z9hG4bKa1"), udp(), t0).unwrap();
    assert_eq!(names(&out), ["send INVITE"]);
    assert_eq!(l.state(&key), Some(State::Calling));
    let log = run_until(&mut l, t0, Duration::from_secs(60));
    // RFC 3261 17.1.1.2: timer A doubles with no T2 cap, until timer B.
    assert_eq!(
        offsets_of(&log, "send INVITE"),
        [500, 1500, 3500, 7500, 15500, 31500]
    );
    assert_eq!(offsets_of(&log, "timeout"), [32000]);
    assert_eq!(offsets_of(&log, "terminated"), [32000]);
    assert_eq!(log.last().unwrap().1, "terminated");
    assert!(l.is_empty());
    assert_eq!(l.next_deadline(), None);
    assert_eq!(l.stats().retransmitted, 6);
    assert_eq!(l.stats().timeouts, 1);
}

#[test]
fn invite_client_tcp_sends_once_and_times_out() {
    let (mut l, t0) = (layer(), Instant::now());
    let (key, out) = l
        .send_request(request("INVITE", "z9hG4bKt1", "TCP"), tcp(), t0)
        .unwrap();
    assert_eq!(sent(&out)[0].1, tcp());
    let log = run_until(&mut l, t0, Duration::from_secs(60));
    assert_eq!(
        log,
        [
            (32000, "timeout".to_string()),
            (32000, "terminated".to_string())
        ]
    );
    assert!(matches!(&events(&l.transport_error(&key))[..], []));
}

#[test]
fn invite_client_provisional_stops_timer_a_and_b() {
    let (mut l, t0) = (layer(), Instant::now());
    let req = invite("z9hG4bKa2");
    let (key, _) = l.send_request(req.clone(), udp(), t0).unwrap();
    let log = run_until(&mut l, t0, ms(600));
    assert_eq!(offsets_of(&log, "send INVITE"), [500]);
    let out = l.receive(response(&req, 180, "callee"), udp(), t0 + ms(700));
    assert_eq!(names(&out), ["response 180"]);
    assert_eq!(l.state(&key), Some(State::Proceeding));
    // Nothing more: no retransmission, no timeout while ringing.
    assert_eq!(l.next_deadline(), None);
    assert!(run_until(&mut l, t0, Duration::from_secs(120)).is_empty());
    // Further provisionals are delivered too.
    let out = l.receive(response(&req, 183, "callee"), udp(), t0 + ms(800));
    assert_eq!(names(&out), ["response 183"]);
}

#[test]
fn invite_client_non2xx_is_acked_then_timer_d() {
    let (mut l, t0) = (layer(), Instant::now());
    let req = invite("z9hG4bKa3");
    let (key, _) = l.send_request(req.clone(), udp(), t0).unwrap();
    l.receive(response(&req, 100, ""), udp(), t0 + ms(100));
    let busy = response(&req, 486, "callee");
    let out = l.receive(busy.clone(), udp(), t0 + ms(1000));
    assert_eq!(names(&out), ["send ACK", "response 486"]);
    let (ack, dest) = &sent(&out)[0];
    assert_eq!(*dest, udp());
    assert_eq!(ack.top_via().unwrap().branch.as_deref(), Some("z9hG4bKa3"));
    assert_eq!(ack.via_count(), 1);
    assert_eq!(ack.to_tag(), Some("callee"));
    assert_eq!(ack.cseq().unwrap().method, Method::ACK);
    assert_eq!(ack.cseq().unwrap().seq, 1);
    assert_eq!(l.state(&key), Some(State::Completed));
    // A retransmitted 486 is ACKed again and not delivered.
    let out = l.receive(busy.clone(), udp(), t0 + ms(2000));
    assert_eq!(names(&out), ["send ACK"]);
    // Timer D (32 s) then terminated; nothing else.
    let log = run_until(&mut l, t0, Duration::from_secs(60));
    assert_eq!(log, [(33000, "terminated".to_string())]);
    assert!(l.is_empty());
}

#[test]
fn invite_client_non2xx_over_tcp_terminates_at_once() {
    let (mut l, t0) = (layer(), Instant::now());
    let req = request("INVITE", "z9hG4bKt2", "TCP");
    l.send_request(req.clone(), tcp(), t0).unwrap();
    let out = l.receive(response(&req, 503, "x"), tcp(), t0 + ms(10));
    assert_eq!(names(&out), ["send ACK", "response 503", "terminated"]);
    assert_eq!(sent(&out)[0].1, tcp());
    assert!(l.is_empty());
}

#[test]
fn invite_client_2xx_is_delivered_and_accepted_until_timer_m() {
    for dest in [udp(), tcp()] {
        let (mut l, t0) = (layer(), Instant::now());
        let req = invite("z9hG4bKa4");
        let (key, _) = l.send_request(req.clone(), dest, t0).unwrap();
        let ok = response(&req, 200, "callee");
        let out = l.receive(ok.clone(), dest, t0 + ms(300));
        // Delivered; no ACK from the transaction (the TU sends it).
        assert_eq!(names(&out), ["response 200"]);
        assert_eq!(l.state(&key), Some(State::Accepted));
        // Before the TU ACKed, a retransmitted 2xx goes to the TU again.
        assert_eq!(
            names(&l.receive(ok.clone(), dest, t0 + ms(800))),
            ["response 200"]
        );
        let ack = ack_2xx_for(&req, "callee");
        let out = l.ack_2xx(&key, ack, dest).unwrap();
        assert_eq!(names(&out), ["send ACK"]);
        // Now the layer answers the retransmission with the same ACK.
        let out = l.receive(ok.clone(), dest, t0 + ms(1300));
        assert_eq!(names(&out), ["send ACK"]);
        // A 2xx from another fork (other To tag) is the TU's.
        let fork = response(&req, 200, "fork2");
        assert_eq!(
            names(&l.receive(fork, dest, t0 + ms(1400))),
            ["response 200"]
        );
        // Provisionals and non-2xx finals in Accepted are absorbed.
        assert!(
            l.receive(response(&req, 180, "x"), dest, t0 + ms(1500))
                .is_empty()
        );
        assert!(
            l.receive(response(&req, 486, "x"), dest, t0 + ms(1500))
                .is_empty()
        );
        // Timer M: gone 64*T1 after the 2xx, without a timeout.
        let log = run_until(&mut l, t0, Duration::from_secs(60));
        assert_eq!(log, [(32300, "terminated".to_string())]);
    }
}

#[test]
fn cancel_waits_for_a_provisional_response() {
    let (mut l, t0) = (layer(), Instant::now());
    let req = invite("z9hG4bKc1");
    let (key, _) = l.send_request(req.clone(), udp(), t0).unwrap();
    // Calling: held (RFC 3261 9.1).
    assert!(l.cancel(&key, t0 + ms(100)).unwrap().is_empty());
    let out = l.receive(response(&req, 180, "callee"), udp(), t0 + ms(200));
    assert_eq!(names(&out), ["response 180", "send CANCEL"]);
    let (cancel, dest) = &sent(&out)[0];
    assert_eq!(*dest, udp());
    assert_eq!(
        cancel.top_via().unwrap().branch.as_deref(),
        Some("z9hG4bKc1")
    );
    let cancel_key = key.with_method(Method::CANCEL);
    assert_eq!(l.state(&cancel_key), Some(State::Trying));
    // Twice is once.
    assert!(l.cancel(&key, t0 + ms(250)).unwrap().is_empty());
    // The CANCEL is retransmitted on its own timer E.
    let log = run_until(&mut l, t0, ms(700));
    assert_eq!(log, [(700, "send CANCEL".to_string())]);
    let ok = response(cancel, 200, "callee");
    let out = l.receive(ok, udp(), t0 + ms(800));
    assert!(matches!(&events(&out)[..], [Event::Response { key, .. }] if *key == cancel_key));
    let out = l.receive(response(&req, 487, "callee"), udp(), t0 + ms(900));
    assert_eq!(names(&out), ["send ACK", "response 487"]);
    // Cancelling after the final response is refused.
    assert!(matches!(
        l.cancel(&key, t0 + ms(1000)),
        Err(Error::InvalidState {
            state: State::Completed,
            ..
        })
    ));
}

#[test]
fn cancel_in_proceeding_is_sent_at_once() {
    let (mut l, t0) = (layer(), Instant::now());
    let req = request("INVITE", "z9hG4bKc2", "TCP");
    let (key, _) = l.send_request(req.clone(), tcp(), t0).unwrap();
    l.receive(response(&req, 100, ""), tcp(), t0 + ms(5));
    let out = l.cancel(&key, t0 + ms(10)).unwrap();
    assert_eq!(names(&out), ["send CANCEL"]);
    assert_eq!(sent(&out)[0].1, tcp());
    assert_eq!(l.len(), 2);
    // A pending cancel is dropped when the INVITE ends before any 1xx.
    let req2 = invite("z9hG4bKc3");
    let (key2, _) = l.send_request(req2.clone(), udp(), t0).unwrap();
    l.cancel(&key2, t0).unwrap();
    let out = l.receive(response(&req2, 200, "x"), udp(), t0 + ms(20));
    assert_eq!(names(&out), ["response 200"]);
    assert!(matches!(
        l.cancel(&key2, t0 + ms(30)),
        Err(Error::InvalidState {
            state: State::Accepted,
            ..
        })
    ));
    let opt_key = l
        .send_request(request("OPTIONS", "z9hG4bKc4", "TCP"), tcp(), t0)
        .unwrap()
        .0;
    assert!(matches!(
        l.cancel(&opt_key, t0),
        Err(Error::InvalidState { .. })
    ));
}

// ---- non-INVITE client ----

#[test]
fn non_invite_client_timer_e_caps_at_t2_until_timer_f() {
    let (mut l, t0) = (layer(), Instant::now());
    l.send_request(request("OPTIONS", "z9hG4bKn1", "UDP"), udp(), t0)
        .unwrap();
    let log = run_until(&mut l, t0, Duration::from_secs(60));
    assert_eq!(
        offsets_of(&log, "send OPTIONS"),
        [
            500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
        ]
    );
    assert_eq!(offsets_of(&log, "timeout"), [32000]);
    assert_eq!(offsets_of(&log, "terminated"), [32000]);
    assert!(l.is_empty());
}

#[test]
fn non_invite_client_after_provisional_retransmits_every_t2() {
    let (mut l, t0) = (layer(), Instant::now());
    let req = request("BYE", "z9hG4bKn2", "UDP");
    let (key, _) = l.send_request(req.clone(), udp(), t0).unwrap();
    run_until(&mut l, t0, ms(600));
    let out = l.receive(response(&req, 100, ""), udp(), t0 + ms(600));
    assert_eq!(names(&out), ["response 100"]);
    assert_eq!(l.state(&key), Some(State::Proceeding));
    let log = run_until(&mut l, t0, Duration::from_secs(60));
    // E keeps its schedule (1.5 s), then T2 each time; F still ends it.
    assert_eq!(
        offsets_of(&log, "send BYE"),
        [1500, 5500, 9500, 13500, 17500, 21500, 25500, 29500]
    );
    assert_eq!(offsets_of(&log, "timeout"), [32000]);
}

#[test]
fn non_invite_client_final_response_then_timer_k() {
    let (mut l, t0) = (layer(), Instant::now());
    let req = request("OPTIONS", "z9hG4bKn3", "UDP");
    let (key, _) = l.send_request(req.clone(), udp(), t0).unwrap();
    let ok = response(&req, 200, "svc");
    assert_eq!(
        names(&l.receive(ok.clone(), udp(), t0 + ms(100))),
        ["response 200"]
    );
    assert_eq!(l.state(&key), Some(State::Completed));
    // Retransmitted final responses are absorbed; no more requests sent.
    assert!(l.receive(ok, udp(), t0 + ms(200)).is_empty());
    let log = run_until(&mut l, t0, Duration::from_secs(60));
    assert_eq!(log, [(5100, "terminated".to_string())]);
    assert_eq!(l.stats().absorbed, 1);
}

#[test]
fn non_invite_client_over_tcp() {
    let (mut l, t0) = (layer(), Instant::now());
    let req = request("OPTIONS", "z9hG4bKn4", "TCP");
    l.send_request(req.clone(), tcp(), t0).unwrap();
    // No timer E; F still runs.
    assert_eq!(l.next_deadline(), Some(t0 + Duration::from_secs(32)));
    let out = l.receive(response(&req, 404, "svc"), tcp(), t0 + ms(50));
    // Timer K is zero on a reliable transport.
    assert_eq!(names(&out), ["response 404", "terminated"]);
    let req = request("OPTIONS", "z9hG4bKn5", "TCP");
    l.send_request(req, tcp(), t0).unwrap();
    let log = run_until(&mut l, t0, Duration::from_secs(60));
    assert_eq!(
        log,
        [
            (32000, "timeout".to_string()),
            (32000, "terminated".to_string())
        ]
    );
}

// ---- INVITE server ----

#[test]
fn invite_server_sends_100_at_once_and_answers_retransmissions() {
    let (mut l, t0) = (layer(), Instant::now());
    let req = invite("z9hG4bKs1");
    let out = l.receive(req.clone(), udp(), t0);
    assert_eq!(names(&out), ["send 100", "request INVITE"]);
    let (trying, dest) = &sent(&out)[0];
    assert_eq!(*dest, udp());
    assert_eq!(trying.to_tag(), None);
    assert_eq!(trying.header_values("Via"), req.header_values("Via"));
    let Some(Event::Request { key, from, .. }) = events(&out).into_iter().next() else {
        panic!("no request event");
    };
    assert_eq!(from, udp());
    assert_eq!(l.state(&key), Some(State::Proceeding));
    // Retransmitted INVITE: the last provisional again, the TU hears nothing.
    assert_eq!(
        names(&l.receive(req.clone(), udp(), t0 + ms(500))),
        ["send 100"]
    );
    let out = l
        .send_response(&key, response(&req, 180, "me"), t0 + ms(600))
        .unwrap();
    assert_eq!(names(&out), ["send 180"]);
    assert_eq!(names(&l.receive(req, udp(), t0 + ms(1500))), ["send 180"]);
    // No timers while proceeding: the TU decides.
    assert_eq!(l.next_deadline(), None);
}

#[test]
fn invite_server_timer_g_until_ack_then_timer_i() {
    let (mut l, t0) = (layer(), Instant::now());
    let req = invite("z9hG4bKs2");
    let out = l.receive(req.clone(), udp(), t0);
    let Some(Event::Request { key, .. }) = events(&out).into_iter().next() else {
        panic!()
    };
    let busy = response(&req, 486, "me");
    l.send_response(&key, busy.clone(), t0).unwrap();
    assert_eq!(l.state(&key), Some(State::Completed));
    let log = run_until(&mut l, t0, ms(8000));
    // G: T1 doubling, capped at T2.
    assert_eq!(offsets_of(&log, "send 486"), [500, 1500, 3500, 7500]);
    // A retransmitted INVITE gets the 486 again.
    assert_eq!(
        names(&l.receive(req.clone(), udp(), t0 + ms(8100))),
        ["send 486"]
    );
    let ack = ack_for_non2xx(&req, &busy);
    assert!(l.receive(ack.clone(), udp(), t0 + ms(9000)).is_empty());
    assert_eq!(l.state(&key), Some(State::Confirmed));
    // Confirmed absorbs ACKs; timer I (T4) ends it, with no retransmission.
    assert!(l.receive(ack, udp(), t0 + ms(9500)).is_empty());
    let log = run_until(&mut l, t0, Duration::from_secs(60));
    assert_eq!(log, [(14000, "terminated".to_string())]);
}

#[test]
fn invite_server_timer_h_without_ack() {
    let (mut l, t0) = (layer(), Instant::now());
    let req = invite("z9hG4bKs3");
    let key = tx_key(&req, TxRole::Server).unwrap();
    l.receive(req.clone(), udp(), t0);
    l.send_response(&key, response(&req, 404, "me"), t0)
        .unwrap();
    let log = run_until(&mut l, t0, Duration::from_secs(60));
    assert_eq!(
        offsets_of(&log, "send 404"),
        [
            500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
        ]
    );
    assert_eq!(offsets_of(&log, "timeout"), [32000]);
    assert_eq!(log.last().unwrap(), &(32000, "terminated".to_string()));
}

#[test]
fn invite_server_over_tcp_no_g_and_i_is_zero() {
    let (mut l, t0) = (layer(), Instant::now());
    let req = request("INVITE", "z9hG4bKs4", "TCP");
    let key = tx_key(&req, TxRole::Server).unwrap();
    assert_eq!(
        names(&l.receive(req.clone(), tcp(), t0)),
        ["send 100", "request INVITE"]
    );
    let busy = response(&req, 486, "me");
    let out = l.send_response(&key, busy.clone(), t0).unwrap();
    assert_eq!(sent(&out)[0].1, tcp());
    assert_eq!(l.next_deadline(), Some(t0 + Duration::from_secs(32)));
    let out = l.receive(ack_for_non2xx(&req, &busy), tcp(), t0 + ms(10));
    assert_eq!(names(&out), ["terminated"]);
    // Without an ACK, only timer H.
    let req = request("INVITE", "z9hG4bKs5", "TCP");
    let key = tx_key(&req, TxRole::Server).unwrap();
    l.receive(req.clone(), tcp(), t0);
    l.send_response(&key, response(&req, 486, "me"), t0)
        .unwrap();
    let log = run_until(&mut l, t0, Duration::from_secs(60));
    assert_eq!(
        log,
        [
            (32000, "timeout".to_string()),
            (32000, "terminated".to_string())
        ]
    );
}

#[test]
fn invite_server_2xx_retransmits_until_its_ack_then_timer_l() {
    let (mut l, t0) = (layer(), Instant::now());
    let req = invite("z9hG4bKs6");
    let key = tx_key(&req, TxRole::Server).unwrap();
    l.receive(req.clone(), udp(), t0);
    let ok = response(&req, 200, "me");
    assert_eq!(names(&l.send_response(&key, ok, t0).unwrap()), ["send 200"]);
    assert_eq!(l.state(&key), Some(State::Accepted));
    let log = run_until(&mut l, t0, ms(8000));
    assert_eq!(offsets_of(&log, "send 200"), [500, 1500, 3500, 7500]);
    // A late INVITE retransmission is absorbed: no second call.
    assert!(l.receive(req.clone(), udp(), t0 + ms(8100)).is_empty());
    // The ACK (new branch) reaches the TU and stops the retransmissions.
    let out = l.receive(ack_2xx_for(&req, "me"), udp(), t0 + ms(8200));
    assert_eq!(names(&out), ["ack"]);
    // The TU may still resend its 2xx while accepted.
    let out = l
        .send_response(&key, response(&req, 200, "me"), t0 + ms(8300))
        .unwrap();
    assert_eq!(names(&out), ["send 200"]);
    let log = run_until(&mut l, t0, Duration::from_secs(60));
    assert_eq!(log, [(32000, "terminated".to_string())]);
}

#[test]
fn invite_server_2xx_without_ack_times_out_at_timer_l() {
    for dest in [udp(), tcp()] {
        let (mut l, t0) = (layer(), Instant::now());
        let req = invite("z9hG4bKs7");
        let key = tx_key(&req, TxRole::Server).unwrap();
        l.receive(req.clone(), dest, t0);
        l.send_response(&key, response(&req, 200, "me"), t0)
            .unwrap();
        let log = run_until(&mut l, t0, Duration::from_secs(60));
        let expected: &[u64] = if dest == udp() {
            &[
                500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500,
            ]
        } else {
            &[]
        };
        assert_eq!(offsets_of(&log, "send 200"), expected);
        assert_eq!(offsets_of(&log, "timeout"), [32000]);
        assert_eq!(offsets_of(&log, "terminated"), [32000]);
    }
}

#[test]
fn ack_reusing_the_invite_branch_counts_as_the_2xx_ack() {
    let (mut l, t0) = (layer(), Instant::now());
    let req = invite("z9hG4bKs8");
    let key = tx_key(&req, TxRole::Server).unwrap();
    l.receive(req.clone(), udp(), t0);
    let ok = response(&req, 200, "me");
    l.send_response(&key, ok.clone(), t0).unwrap();
    let out = l.receive(ack_for_non2xx(&req, &ok), udp(), t0 + ms(100));
    assert_eq!(names(&out), ["ack"]);
    let log = run_until(&mut l, t0, Duration::from_secs(60));
    assert_eq!(log, [(32000, "terminated".to_string())]);
}

#[test]
fn received_cancel_finds_its_invite() {
    let (mut l, t0) = (layer(), Instant::now());
    let req = invite("z9hG4bKs9");
    let invite_key = tx_key(&req, TxRole::Server).unwrap();
    l.receive(req.clone(), udp(), t0);
    let cancel = crate::sip::message::cancel_for(&req);
    let out = l.receive(cancel.clone(), udp(), t0 + ms(100));
    let Some(Event::Request {
        key: cancel_key, ..
    }) = events(&out).into_iter().next()
    else {
        panic!("CANCEL not delivered")
    };
    assert_ne!(cancel_key, invite_key);
    assert_eq!(l.invite_for_cancel(&cancel_key), Some(invite_key.clone()));
    assert_eq!(l.invite_for_cancel(&invite_key), None);
    let out = l
        .send_response(&cancel_key, response(&cancel, 200, "me"), t0 + ms(100))
        .unwrap();
    assert_eq!(names(&out), ["send 200"]);
    let terminated = response(&req, 487, "me");
    let out = l
        .send_response(&invite_key, terminated.clone(), t0 + ms(100))
        .unwrap();
    assert_eq!(names(&out), ["send 487"]);
    assert!(
        l.receive(ack_for_non2xx(&req, &terminated), udp(), t0 + ms(200))
            .is_empty()
    );
    assert_eq!(l.state(&invite_key), Some(State::Confirmed));
}

// ---- non-INVITE server ----

#[test]
fn non_invite_server_timer_j_and_retransmissions() {
    let (mut l, t0) = (layer(), Instant::now());
    let req = request("OPTIONS", "z9hG4bKj1", "UDP");
    let out = l.receive(req.clone(), udp(), t0);
    assert_eq!(names(&out), ["request OPTIONS"]);
    let key = tx_key(&req, TxRole::Server).unwrap();
    assert_eq!(l.state(&key), Some(State::Trying));
    // Trying: retransmissions absorbed, nothing to send yet.
    assert!(l.receive(req.clone(), udp(), t0 + ms(500)).is_empty());
    // Proceeding: the provisional is sent again.
    l.send_response(&key, response(&req, 100, ""), t0 + ms(600))
        .unwrap();
    assert_eq!(l.state(&key), Some(State::Proceeding));
    assert_eq!(
        names(&l.receive(req.clone(), udp(), t0 + ms(1500))),
        ["send 100"]
    );
    // Completed: the final is sent again; J ends it 64*T1 later.
    let out = l
        .send_response(&key, response(&req, 200, "me"), t0 + ms(2000))
        .unwrap();
    assert_eq!(names(&out), ["send 200"]);
    assert_eq!(
        names(&l.receive(req.clone(), udp(), t0 + ms(3500))),
        ["send 200"]
    );
    assert!(matches!(
        l.send_response(&key, response(&req, 500, "me"), t0 + ms(4000)),
        Err(Error::InvalidState {
            state: State::Completed,
            ..
        })
    ));
    let log = run_until(&mut l, t0, Duration::from_secs(60));
    assert_eq!(log, [(34000, "terminated".to_string())]);
    // A retransmission after the end is a new transaction (the TU's loop
    // detection is not this layer's job).
    assert_eq!(
        names(&l.receive(req, udp(), t0 + ms(40000))),
        ["request OPTIONS"]
    );
}

#[test]
fn non_invite_server_over_tcp_ends_with_the_final_response() {
    let (mut l, t0) = (layer(), Instant::now());
    let req = request("BYE", "z9hG4bKj2", "TCP");
    let key = tx_key(&req, TxRole::Server).unwrap();
    l.receive(req.clone(), tcp(), t0);
    let out = l
        .send_response(&key, response(&req, 200, "me"), t0)
        .unwrap();
    assert_eq!(names(&out), ["send 200", "terminated"]);
    assert_eq!(sent(&out)[0].1, tcp());
    assert!(l.is_empty());
}

#[test]
fn non_invite_server_never_answered_ends_after_64_t1() {
    let (mut l, t0) = (layer(), Instant::now());
    l.receive(request("INFO", "z9hG4bKj3", "UDP"), udp(), t0);
    let log = run_until(&mut l, t0, Duration::from_secs(60));
    assert_eq!(log, [(32000, "terminated".to_string())]);
}

// ---- matching, limits and errors ----

#[test]
fn stray_response_is_dropped() {
    let (mut l, t0) = (layer(), Instant::now());
    let req = invite("z9hG4bKx1");
    assert!(l.receive(response(&req, 200, "x"), udp(), t0).is_empty());
    assert_eq!(l.stats().stray_responses, 1);
    // Same branch, other method: still no match.
    l.send_request(req.clone(), udp(), t0).unwrap();
    let mut other = response(&req, 200, "x");
    other.set_header("CSeq", "1 BYE");
    assert!(l.receive(other, udp(), t0).is_empty());
    assert_eq!(l.stats().stray_responses, 2);
}

#[test]
fn ack_matching_nothing_goes_to_the_tu() {
    let (mut l, t0) = (layer(), Instant::now());
    let ack = ack_2xx_for(&invite("z9hG4bKx2"), "t");
    let out = l.receive(ack, udp(), t0);
    assert!(matches!(&events(&out)[..], [Event::Ack { from, .. }] if *from == udp()));
    assert!(sent(&out).is_empty());
    assert!(l.is_empty());
}

#[test]
fn transaction_count_is_bounded() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(Config {
        max_transactions: 2,
        ..Config::default()
    });
    l.receive(request("OPTIONS", "z9hG4bKl1", "UDP"), udp(), t0);
    l.send_request(request("OPTIONS", "z9hG4bKl2", "UDP"), udp(), t0)
        .unwrap();
    assert_eq!(l.len(), 2);
    // A third request is answered 503 statelessly and not delivered.
    let out = l.receive(invite("z9hG4bKl3"), udp(), t0);
    assert_eq!(names(&out), ["send 503"]);
    assert!(matches!(&out[0], Action::Send { key: None, .. }));
    assert_eq!(l.stats().rejected_full, 1);
    assert_eq!(
        l.send_request(request("OPTIONS", "z9hG4bKl4", "UDP"), udp(), t0)
            .unwrap_err(),
        Error::TooManyTransactions { max: 2 }
    );
    // ACK needs no transaction and still reaches the TU.
    assert_eq!(
        names(&l.receive(ack_2xx_for(&invite("z9hG4bKl5"), "t"), udp(), t0)),
        ["ack"]
    );
    assert_eq!(l.len(), 2);
    // Room again once transactions end.
    run_until(&mut l, t0, Duration::from_secs(60));
    assert!(l.is_empty());
    assert!(
        l.send_request(request("OPTIONS", "z9hG4bKl6", "UDP"), udp(), t0)
            .is_ok()
    );
}

#[test]
fn tu_mistakes_are_errors() {
    let (mut l, t0) = (layer(), Instant::now());
    let req = invite("z9hG4bKe1");
    assert_eq!(
        l.send_request(ack_2xx_for(&req, "t"), udp(), t0)
            .unwrap_err(),
        Error::AckIsNotATransaction
    );
    assert_eq!(
        l.send_request(response(&req, 200, "t"), udp(), t0)
            .unwrap_err(),
        Error::NotARequest
    );
    let (key, _) = l.send_request(req.clone(), udp(), t0).unwrap();
    assert_eq!(
        l.send_request(req.clone(), udp(), t0).unwrap_err(),
        Error::Duplicate(key.clone())
    );
    let mut no_via = invite("z9hG4bKe2");
    no_via.remove_header("Via");
    assert!(matches!(
        l.send_request(no_via, udp(), t0),
        Err(Error::BadMessage(ParseError::MissingHeader("Via")))
    ));
    // Responses go on server transactions only, and must be responses.
    assert!(matches!(
        l.send_response(&key, response(&req, 200, "t"), t0),
        Err(Error::InvalidState { .. })
    ));
    let server = tx_key(&req, TxRole::Server).unwrap();
    assert_eq!(
        l.send_response(&server, response(&req, 200, "t"), t0)
            .unwrap_err(),
        Error::NoSuchTransaction(server.clone())
    );
    l.receive(req.clone(), udp(), t0);
    assert_eq!(
        l.send_response(&server, req.clone(), t0).unwrap_err(),
        Error::NotAResponse
    );
    assert_eq!(
        l.ack_2xx(&key, req.clone(), udp()).unwrap_err(),
        Error::NotARequest
    );
}

#[test]
fn transport_error_ends_the_transaction() {
    let (mut l, t0) = (layer(), Instant::now());
    let (key, _) = l
        .send_request(request("INVITE", "z9hG4bKe3", "TCP"), tcp(), t0)
        .unwrap();
    let out = l.transport_error(&key);
    assert_eq!(names(&out), ["transport error", "terminated"]);
    assert!(l.is_empty());
    assert!(l.transport_error(&key).is_empty());
    assert_eq!(l.next_deadline(), None);
}

#[test]
fn receive_bytes_answers_malformed_requests_with_400() {
    let (mut l, t0) = (layer(), Instant::now());
    let good = invite("z9hG4bKb1").to_bytes();
    let (out, err) = receive_bytes(&mut l, &good, DEFAULT_MAX_MESSAGE_SIZE, udp(), t0);
    assert!(err.is_none());
    assert_eq!(names(&out), ["send 100", "request INVITE"]);
    // CSeq method mismatch: a response is possible.
    let bad = String::from_utf8(good.to_vec())
        .unwrap()
        .replace("z9hG4bKb1", "z9hG4bKb2")
        .replace("CSeq: 1 INVITE", "CSeq: 1 BYE");
    let (out, err) = receive_bytes(&mut l, bad.as_bytes(), DEFAULT_MAX_MESSAGE_SIZE, udp(), t0);
    assert!(matches!(
        err,
        Some(ParseError::BadHeader { name: "CSeq", .. })
    ));
    assert_eq!(names(&out), ["send 400"]);
    let (resp, _) = &sent(&out)[0];
    assert!(resp.reason().unwrap().contains("CSeq"));
    // Garbage: dropped.
    let (out, err) = receive_bytes(&mut l, b"hello", DEFAULT_MAX_MESSAGE_SIZE, udp(), t0);
    assert!(out.is_empty());
    assert_eq!(err, Some(ParseError::NoHeaderEnd));
    assert_eq!(l.len(), 1);
}

#[test]
fn many_transactions_expire_in_deadline_order() {
    let (mut l, t0) = (layer(), Instant::now());
    for i in 0..200u64 {
        let req = request("OPTIONS", &format!("z9hG4bKm{i}"), "TCP");
        l.send_request(req, tcp(), t0 + ms(i)).unwrap();
    }
    assert_eq!(l.len(), 200);
    let log = run_until(&mut l, t0, Duration::from_secs(60));
    let ends = offsets_of(&log, "terminated");
    assert_eq!(ends.len(), 200);
    assert!(ends.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(ends[0], 32000);
    assert!(l.is_empty());
}

#[test]
fn rfc2543_peer_ack_matches_by_dialog_fields() {
    let (mut l, t0) = (layer(), Instant::now());
    let req = invite("1234");
    let key = tx_key(&req, TxRole::Server).unwrap();
    assert!(key.branch().starts_with("rfc2543;"));
    assert_eq!(
        names(&l.receive(req.clone(), udp(), t0)),
        ["send 100", "request INVITE"]
    );
    let busy = response(&req, 486, "me");
    l.send_response(&key, busy.clone(), t0).unwrap();
    let mut ack = ack_for_non2xx(&req, &busy);
    ack.pop_via();
    ack.push_via("SIP/2.0/UDP 192.0.2.10:5060");
    assert!(l.receive(ack, udp(), t0 + ms(100)).is_empty());
    assert_eq!(l.state(&key), Some(State::Confirmed));
}

#[test]
fn the_layer_can_move_between_threads() {
    fn is_send<T: Send>() {}
    is_send::<TransactionLayer>();
    is_send::<Action>();
}
