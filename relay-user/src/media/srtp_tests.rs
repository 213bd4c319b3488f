//! SRTP in the media core: mode per stream from the legs' policies, the
//! profile and a=crypto lines each leg gets, the keys each rule carries, and
//! refusals.

use super::{Answer, MediaCore, MediaError, Offer, RuleChange, SrtpOptions, SrtpPolicy};
use crate::{
    config::{Interface, MediaConfig},
    rule::{Path, Policy, Rule},
    srtp::{Suite, sdes::CryptoAttribute},
};

fn core(inside: SrtpPolicy, outside: SrtpPolicy) -> MediaCore {
    let ifaces = [
        ("inside", "192.0.2.1", inside),
        ("outside", "198.51.100.1", outside),
    ]
    .map(|(name, addr, srtp)| Interface {
        name: name.into(),
        device: format!("{name}0"),
        address: addr.parse().unwrap(),
        port_min: 30000,
        port_max: 30099,
        source_policy: Policy::Strict,
        srtp,
    });
    MediaCore::new(&ifaces, MediaConfig::default()).unwrap()
}

fn sdp(addr: &str, port: u16, proto: &str, crypto: &[String]) -> String {
    let mut s = format!(
        "v=0\r\no=- 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\n\
         m=audio {port} {proto} 0\r\na=rtpmap:0 PCMU/8000\r\n"
    );
    for c in crypto {
        s.push_str(&format!("a=crypto:{c}\r\n"));
    }
    s
}

fn offer<'a>(sdp: &'a str, srtp: Option<SrtpOptions>) -> Offer<'a> {
    Offer {
        call_id: "c",
        from_tag: "a",
        sdp,
        from_iface: Some("inside"),
        to_iface: Some("outside"),
        srtp,
        now_ns: 1_000,
        ..Offer::default()
    }
}

fn answer(sdp: &str) -> Answer<'_> {
    Answer {
        call_id: "c",
        from_tag: "a",
        to_tag: "b",
        sdp,
        to_policy: None,
        now_ns: 2_000,
    }
}

/// The a=crypto values of an SDP, parsed.
fn lines(sdp: &str) -> Vec<CryptoAttribute> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=crypto:"))
        .map(|v| CryptoAttribute::parse(v).unwrap())
        .collect()
}

fn rule<'a>(changes: &'a [RuleChange], local: &str) -> &'a Rule {
    changes
        .iter()
        .find_map(|c| match c {
            RuleChange::Install(r) if r.local.to_string() == local => Some(r),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no rule on {local}"))
}

/// Inside (caller) leg receives on 192.0.2.1:30000, outside on
/// 198.51.100.1:30000.
const IN_RTP: &str = "192.0.2.1:30000";
const OUT_RTP: &str = "198.51.100.1:30000";

#[test]
fn plain_caller_to_srtp_callee_transcrypts() {
    let mut core = core(SrtpPolicy::Optional, SrtpPolicy::Required);
    let o = sdp("192.0.2.10", 4000, "RTP/AVP", &[]);
    let to_callee = core.offer(&offer(&o, None)).unwrap().sdp;
    assert!(
        to_callee.contains("m=audio 30000 RTP/SAVP 0\r\n"),
        "{to_callee}"
    );
    let offered = lines(&to_callee);
    assert_eq!(
        offered.iter().map(|l| l.suite()).collect::<Vec<_>>(),
        Suite::ALL.to_vec(),
        "one fresh line per suite"
    );
    // The callee takes the AES-CM-80 line and sends with its own key.
    let taken = offered
        .iter()
        .find(|l| l.suite() == Suite::AesCm128HmacSha1_80)
        .unwrap();
    let callee_line = taken.answer().unwrap();
    let a = sdp(
        "198.51.100.10",
        5000,
        "RTP/SAVP",
        &[callee_line.to_sdp_value()],
    );
    let out = core.answer(&answer(&a)).unwrap();
    assert!(
        out.sdp.contains("m=audio 30000 RTP/AVP 0\r\n"),
        "{}",
        out.sdp
    );
    assert!(!out.sdp.contains("a=crypto"), "no key toward the plain leg");
    // Caller -> callee: protect with the relay's key the callee accepted.
    let up = rule(&out.changes, IN_RTP);
    assert_eq!(up.path, Path::Userspace);
    assert_eq!(up.srtp_mode(), Some("encrypt"));
    let keys = up.srtp.as_ref().unwrap();
    assert_eq!(keys.outbound.as_ref(), Some(&taken.key));
    assert_eq!(keys.inbound, None);
    // Callee -> caller: unprotect with the callee's key.
    let down = rule(&out.changes, OUT_RTP);
    assert_eq!(down.path, Path::Userspace);
    assert_eq!(down.srtp_mode(), Some("decrypt"));
    assert_eq!(
        down.srtp.as_ref().unwrap().inbound.as_ref(),
        Some(&callee_line.key)
    );
    // RTCP rules carry the same keys (SRTCP shares the master key).
    assert_eq!(rule(&out.changes, "192.0.2.1:30001").srtp, up.srtp);
    // Keys never serialize: the control socket sees the mode only.
    let json = serde_json::to_string(down).unwrap();
    assert!(json.contains("\"srtp\":\"decrypt\""), "{json}");
    let b64 = callee_line.to_sdp_value();
    let key_b64 = b64.split("inline:").nth(1).unwrap();
    assert!(!json.contains(key_b64), "{json}");
    assert!(!format!("{down:?}").contains(key_b64));
    let query = serde_json::to_string(&core.query("c").unwrap()).unwrap();
    assert!(!query.contains(key_b64), "{query}");
    assert!(query.contains("AES_CM_128_HMAC_SHA1_80"), "{query}");
}

#[test]
fn srtp_caller_to_plain_callee_answers_with_relay_key() {
    let mut core = core(SrtpPolicy::Optional, SrtpPolicy::Off);
    let caller = [
        // Unusable first (MKI): skipped; the second is taken.
        "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4"
            .to_string(),
        CryptoAttribute::generate(2, Suite::AeadAes128Gcm)
            .unwrap()
            .to_sdp_value(),
    ];
    let o = sdp("192.0.2.10", 4000, "RTP/SAVP", &caller);
    let to_callee = core.offer(&offer(&o, None)).unwrap().sdp;
    assert!(
        to_callee.contains("m=audio 30000 RTP/AVP 0\r\n"),
        "{to_callee}"
    );
    assert!(!to_callee.contains("a=crypto"), "caller's keys stay away");
    let a = sdp("198.51.100.10", 5000, "RTP/AVP", &[]);
    let out = core.answer(&answer(&a)).unwrap();
    assert!(
        out.sdp.contains("m=audio 30000 RTP/SAVP 0\r\n"),
        "{}",
        out.sdp
    );
    let ours = lines(&out.sdp);
    assert_eq!(ours.len(), 1);
    assert_eq!((ours[0].tag, ours[0].suite()), (2, Suite::AeadAes128Gcm));
    let theirs = CryptoAttribute::parse(&caller[1]).unwrap();
    assert_ne!(ours[0].key, theirs.key, "the relay's own key");
    let up = rule(&out.changes, IN_RTP);
    assert_eq!(up.srtp_mode(), Some("decrypt"));
    assert_eq!(up.srtp.as_ref().unwrap().inbound, Some(theirs.key));
    let down = rule(&out.changes, OUT_RTP);
    assert_eq!(down.srtp_mode(), Some("encrypt"));
    assert_eq!(
        down.srtp.as_ref().unwrap().outbound,
        Some(ours[0].key.clone())
    );
}

#[test]
fn srtp_both_sides_rekeys_by_default() {
    let mut core = core(SrtpPolicy::Optional, SrtpPolicy::Optional);
    let caller = CryptoAttribute::generate(1, Suite::AesCm128HmacSha1_80).unwrap();
    let o = sdp("192.0.2.10", 4000, "RTP/SAVP", &[caller.to_sdp_value()]);
    let to_callee = core.offer(&offer(&o, None)).unwrap().sdp;
    let offered = lines(&to_callee);
    assert!(offered.iter().all(|l| l.key != caller.key), "fresh keys");
    let callee = offered[0].answer().unwrap();
    let a = sdp("198.51.100.10", 5000, "RTP/SAVP", &[callee.to_sdp_value()]);
    let out = core.answer(&answer(&a)).unwrap();
    let back = lines(&out.sdp);
    assert_eq!(back.len(), 1);
    assert_ne!(
        back[0].key, callee.key,
        "the caller never sees the callee's key"
    );
    let up = rule(&out.changes, IN_RTP);
    assert_eq!((up.path, up.srtp_mode()), (Path::Userspace, Some("rekey")));
    let k = up.srtp.as_ref().unwrap();
    assert_eq!(k.inbound.as_ref(), Some(&caller.key));
    assert_eq!(k.outbound.as_ref(), Some(&offered[0].key));

    // A re-offer (hold and back) keeps the agreed keys: the rules do not
    // change, so the crypto state is not restarted.
    let again = core.offer(&offer(&o, None)).unwrap();
    assert!(again.changes.is_empty(), "{:#?}", again.changes);
    assert_eq!(lines(&again.sdp).len(), 1, "the agreed line again");
    assert_eq!(lines(&again.sdp)[0].key, offered[0].key);
    let out = core.answer(&answer(&a)).unwrap();
    assert!(out.changes.is_empty(), "{:#?}", out.changes);
    assert_eq!(lines(&out.sdp)[0].key, back[0].key);
}

#[test]
fn passthrough_forwards_keys_and_stays_in_xdp() {
    let mut core = core(SrtpPolicy::Optional, SrtpPolicy::Required);
    let caller = CryptoAttribute::generate(7, Suite::AeadAes256Gcm).unwrap();
    let o = sdp("192.0.2.10", 4000, "RTP/SAVP", &[caller.to_sdp_value()]);
    let opts = SrtpOptions {
        passthrough: true,
        ..SrtpOptions::default()
    };
    let to_callee = core.offer(&offer(&o, Some(opts))).unwrap().sdp;
    assert!(
        to_callee.contains(&format!("a=crypto:{}\r\n", caller.to_sdp_value())),
        "{to_callee}"
    );
    let callee = caller.answer().unwrap();
    let a = sdp("198.51.100.10", 5000, "RTP/SAVP", &[callee.to_sdp_value()]);
    let out = core.answer(&answer(&a)).unwrap();
    assert!(
        out.sdp
            .contains(&format!("a=crypto:{}\r\n", callee.to_sdp_value()))
    );
    for (local, key) in [(IN_RTP, &caller.key), (OUT_RTP, &callee.key)] {
        let r = rule(&out.changes, local);
        assert_eq!(r.path, Path::Forward, "pass-through needs no crypto");
        assert_eq!(r.srtp_mode(), Some("passthrough"));
        // The key is kept to authenticate packets before latching.
        assert_eq!(r.auth_key(), Some(key));
    }
}

#[test]
fn required_leg_refuses_plain_offer() {
    let mut core = core(SrtpPolicy::Required, SrtpPolicy::Optional);
    let o = sdp("192.0.2.10", 4000, "RTP/AVP", &[]);
    let e = core.offer(&offer(&o, None)).unwrap_err();
    assert!(e.is_not_acceptable(), "{e}");
    assert!(e.to_string().contains("requires SRTP"), "{e}");
    assert!(core.is_empty(), "nothing of the refused call stays");
    assert_eq!(core.ports_in_use(), 0);
    // Best effort (a=crypto on RTP/AVP) satisfies it.
    let c = CryptoAttribute::generate(1, Suite::AesCm128HmacSha1_32).unwrap();
    let o = sdp("192.0.2.10", 4000, "RTP/AVP", &[c.to_sdp_value()]);
    core.offer(&offer(&o, None)).unwrap();
}

#[test]
fn off_leg_refuses_savp_and_ignores_best_effort() {
    let mut core = core(SrtpPolicy::Off, SrtpPolicy::Optional);
    let c = CryptoAttribute::generate(1, Suite::AesCm128HmacSha1_80).unwrap();
    let o = sdp("192.0.2.10", 4000, "RTP/SAVP", &[c.to_sdp_value()]);
    let e = core.offer(&offer(&o, None)).unwrap_err();
    assert!(
        matches!(e, MediaError::Srtp(_)) && e.is_not_acceptable(),
        "{e}"
    );
    let o = sdp("192.0.2.10", 4000, "RTP/AVP", &[c.to_sdp_value()]);
    let to_callee = core.offer(&offer(&o, None)).unwrap().sdp;
    assert!(!to_callee.contains("a=crypto"), "{to_callee}");
    assert!(to_callee.contains("RTP/AVP"), "{to_callee}");
}

#[test]
fn savp_offer_without_usable_line_and_answer_without_crypto_refused() {
    let mut core = core(SrtpPolicy::Optional, SrtpPolicy::Optional);
    let o = sdp(
        "192.0.2.10",
        4000,
        "RTP/SAVP",
        &["1 F8_128_HMAC_SHA1_80 inline:MTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5QUJjZGVm".into()],
    );
    let e = core.offer(&offer(&o, None)).unwrap_err();
    assert!(e.to_string().contains("F8_128_HMAC_SHA1_80"), "{e}");

    let c = CryptoAttribute::generate(1, Suite::AesCm128HmacSha1_80).unwrap();
    let o = sdp("192.0.2.10", 4000, "RTP/SAVP", &[c.to_sdp_value()]);
    core.offer(&offer(&o, None)).unwrap();
    // A line with a tag the relay did not offer does not count.
    let stranger = CryptoAttribute::generate(9, Suite::AesCm128HmacSha1_80).unwrap();
    let a = sdp(
        "198.51.100.10",
        5000,
        "RTP/SAVP",
        &[stranger.to_sdp_value()],
    );
    let e = core.answer(&answer(&a)).unwrap_err();
    assert!(e.is_not_acceptable(), "{e}");
    let a = sdp("198.51.100.10", 5000, "RTP/AVP", &[]);
    assert!(core.answer(&answer(&a)).is_err());
}

#[test]
fn suites_restricted_per_call() {
    let mut core = core(SrtpPolicy::Optional, SrtpPolicy::Required);
    let o = sdp("192.0.2.10", 4000, "RTP/AVP", &[]);
    let opts = SrtpOptions {
        passthrough: false,
        suites: vec![Suite::AesCm128HmacSha1_80],
    };
    let to_callee = core.offer(&offer(&o, Some(opts))).unwrap().sdp;
    let offered = lines(&to_callee);
    assert_eq!(offered.len(), 1);
    assert_eq!(offered[0].suite(), Suite::AesCm128HmacSha1_80);
}
