//! Interop with libsrtp 2 (Debian's libsrtp2, the reference implementation),
//! both directions, every suite: what relay protects libsrtp unprotects and
//! the reverse, for RTP across a sequence-number wrap and for RTCP; both
//! produce the very same bytes for the same key and packet; each rejects the
//! other's tampered packets and replays. Needs no privileges.

use relay_tests::libsrtp::{self, LibSrtp};
use relay_user::srtp::{Context, Direction, Error, MasterKey, Suite};

const SSRC: u32 = 0x1234_5678;
/// Across the wrap: the ROC goes from 0 to 1 halfway.
const SEQS: [u16; 8] = [65532, 65533, 65534, 65535, 0, 1, 2, 3];

fn rtp(seq: u16, payload: usize) -> Vec<u8> {
    let mut p = vec![0x80, 0x08];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq).wrapping_mul(160)).to_be_bytes());
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend((0..payload).map(|i| (i as u8).wrapping_mul(7) ^ seq as u8));
    p
}

fn rtcp(n: u8) -> Vec<u8> {
    // A receiver report with one report block.
    let mut p = vec![0x81, 201, 0x00, 0x07];
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend((0..24).map(|i| i ^ n));
    p
}

fn with_room(p: &[u8]) -> (Vec<u8>, usize) {
    let mut b = p.to_vec();
    b.resize(p.len() + libsrtp::MAX_TRAILER, 0);
    (b, p.len())
}

fn ours(key: &MasterKey, direction: Direction) -> Context {
    Context::new(key, direction).expect("context")
}

fn theirs(key: &MasterKey, inbound: bool) -> LibSrtp {
    LibSrtp::new(key, inbound).unwrap_or_else(|status| {
        panic!(
            "libsrtp has no {} (srtp_create status {status})",
            key.suite()
        )
    })
}

#[test]
fn relay_protects_libsrtp_unprotects() {
    for suite in Suite::ALL {
        let key = MasterKey::generate(suite).unwrap();
        let mut tx = ours(&key, Direction::Outbound);
        let mut rx = theirs(&key, true);
        for &seq in &SEQS {
            let plain = rtp(seq, 160);
            let (mut b, len) = with_room(&plain);
            let n = tx.protect_rtp(&mut b, len).unwrap();
            let m = rx
                .unprotect_rtp(&mut b, n)
                .unwrap_or_else(|s| panic!("{suite}: libsrtp refused seq {seq}: status {s}"));
            assert_eq!(b[..m], plain[..], "{suite} seq {seq}");
        }
        for i in 0..4 {
            let plain = rtcp(i);
            let (mut b, len) = with_room(&plain);
            let n = tx.protect_rtcp(&mut b, len).unwrap();
            let m = rx
                .unprotect_rtcp(&mut b, n)
                .unwrap_or_else(|s| panic!("{suite}: libsrtp refused SRTCP {i}: status {s}"));
            assert_eq!(b[..m], plain[..], "{suite} SRTCP {i}");
        }
    }
}

#[test]
fn libsrtp_protects_relay_unprotects() {
    for suite in Suite::ALL {
        let key = MasterKey::generate(suite).unwrap();
        let mut tx = theirs(&key, false);
        let mut rx = ours(&key, Direction::Inbound);
        for &seq in &SEQS {
            let plain = rtp(seq, 160);
            let (mut b, len) = with_room(&plain);
            let n = tx.protect_rtp(&mut b, len).unwrap();
            let m = rx
                .unprotect_rtp(&mut b[..n])
                .unwrap_or_else(|e| panic!("{suite}: relay refused seq {seq}: {e}"));
            assert_eq!(b[..m], plain[..], "{suite} seq {seq}");
        }
        assert_eq!(
            rx.rtp_index(SSRC),
            Some(1 << 16 | 3),
            "{suite}: ROC 1 after the wrap"
        );
        for i in 0..4 {
            let plain = rtcp(i);
            let (mut b, len) = with_room(&plain);
            let n = tx.protect_rtcp(&mut b, len).unwrap();
            let m = rx
                .unprotect_rtcp(&mut b[..n])
                .unwrap_or_else(|e| panic!("{suite}: relay refused SRTCP {i}: {e}"));
            assert_eq!(b[..m], plain[..], "{suite} SRTCP {i}");
        }
    }
}

/// Same key, same packet: the same bytes on the wire (the IVs, the key
/// derivation, the tag placement and the SRTCP index all agree).
#[test]
fn identical_output() {
    for suite in Suite::ALL {
        let key = MasterKey::generate(suite).unwrap();
        let mut a = ours(&key, Direction::Outbound);
        let mut b = theirs(&key, false);
        for &seq in &SEQS {
            let (mut x, len) = with_room(&rtp(seq, 172));
            let mut y = x.clone();
            let n = a.protect_rtp(&mut x, len).unwrap();
            let m = b.protect_rtp(&mut y, len).unwrap();
            assert_eq!(x[..n], y[..m], "{suite} SRTP seq {seq}");
        }
        // libsrtp numbers its first SRTCP packet 1 (it increments before
        // use); RFC 3711 section 3.4 starts at 0, as relay does. Receivers
        // take either, so skip index 0 on our side to line the two up.
        let (mut x, len) = with_room(&rtcp(9));
        a.protect_rtcp(&mut x, len).unwrap();
        for i in 0..3 {
            let (mut x, len) = with_room(&rtcp(i));
            let mut y = x.clone();
            let n = a.protect_rtcp(&mut x, len).unwrap();
            let m = b.protect_rtcp(&mut y, len).unwrap();
            assert_eq!(x[..n], y[..m], "{suite} SRTCP {i}");
        }
    }
}

#[test]
fn tampering_and_replays_rejected_both_ways() {
    for suite in Suite::ALL {
        let key = MasterKey::generate(suite).unwrap();
        // relay -> libsrtp
        let mut tx = ours(&key, Direction::Outbound);
        let mut rx = theirs(&key, true);
        let (mut b, len) = with_room(&rtp(10, 160));
        let n = tx.protect_rtp(&mut b, len).unwrap();
        let mut bad = b.clone();
        bad[20] ^= 1;
        assert_eq!(
            rx.unprotect_rtp(&mut bad, n),
            Err(libsrtp::AUTH_FAIL),
            "{suite}"
        );
        let mut good = b.clone();
        assert!(rx.unprotect_rtp(&mut good, n).is_ok(), "{suite}");
        let mut again = b.clone();
        assert_eq!(
            rx.unprotect_rtp(&mut again, n),
            Err(libsrtp::REPLAY_FAIL),
            "{suite}"
        );

        // libsrtp -> relay
        let mut tx = theirs(&key, false);
        let mut rx = ours(&key, Direction::Inbound);
        let (mut b, len) = with_room(&rtp(10, 160));
        let n = tx.protect_rtp(&mut b, len).unwrap();
        let mut bad = b[..n].to_vec();
        bad[n - 1] ^= 0x80;
        assert_eq!(
            rx.unprotect_rtp(&mut bad),
            Err(Error::AuthFailed),
            "{suite}"
        );
        assert!(rx.unprotect_rtp(&mut b[..n].to_vec()).is_ok(), "{suite}");
        assert_eq!(
            rx.unprotect_rtp(&mut b[..n].to_vec()),
            Err(Error::Replay),
            "{suite}"
        );

        let (mut c, len) = with_room(&rtcp(1));
        let n = tx.protect_rtcp(&mut c, len).unwrap();
        let mut bad = c[..n].to_vec();
        bad[9] ^= 1;
        assert_eq!(
            rx.unprotect_rtcp(&mut bad),
            Err(Error::AuthFailed),
            "{suite}"
        );
        assert!(rx.unprotect_rtcp(&mut c[..n].to_vec()).is_ok(), "{suite}");
        assert_eq!(
            rx.unprotect_rtcp(&mut c[..n].to_vec()),
            Err(Error::Replay),
            "{suite}"
        );
    }
}

/// SRTCP with E = 0 (authenticated, not encrypted): relay never sends it but
/// accepts it, checked against libsrtp's for AES-CM and for GCM (where the
/// whole packet becomes AAD, RFC 7714 section 9.2).
#[test]
fn unencrypted_srtcp_from_libsrtp_accepted() {
    for suite in Suite::ALL {
        let key = MasterKey::generate(suite).unwrap();
        let mut tx = LibSrtp::with_rtcp_encryption(&key, false, false).unwrap();
        let mut rx = ours(&key, Direction::Inbound);
        for i in 0..3 {
            let plain = rtcp(i);
            let (mut b, len) = with_room(&plain);
            let n = tx.protect_rtcp(&mut b, len).unwrap();
            assert_eq!(
                b[..len],
                plain[..],
                "{suite}: E = 0 leaves the packet clear"
            );
            let mut bad = b[..n].to_vec();
            bad[10] ^= 1;
            assert_eq!(
                rx.unprotect_rtcp(&mut bad),
                Err(Error::AuthFailed),
                "{suite}"
            );
            let m = rx
                .unprotect_rtcp(&mut b[..n])
                .unwrap_or_else(|e| panic!("{suite}: relay refused E=0 SRTCP {i}: {e}"));
            assert_eq!(b[..m], plain[..], "{suite} SRTCP {i}");
        }
    }
}
