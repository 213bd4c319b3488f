//! The RFC vectors, round trips, index and replay edge cases, tampering,
//! SDES, and random input that must never panic.

use super::{
    Context, Direction, Error, MasterKey, Suite,
    crypto::AesCtr,
    kdf::{self, Label},
    sdes::{CryptoAttribute, SdesError},
    transform::{Kind, Transform},
};
use crate::test_rng::Rng;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

// ---------------------------------------------------------------- RFC 3711

/// RFC 3711 appendix B.2: the AES-CM keystream for session key
/// 2B7E...4F3C, salt F0F1...FCFD, SSRC 0, index 0.
#[test]
fn rfc3711_b2_keystream() {
    let key = hex("2B7E151628AED2A6ABF7158809CF4F3C");
    let salt: [u8; 14] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD").try_into().unwrap();
    let iv = kdf::cm_iv(&salt, 0, 0);
    assert_eq!(iv.to_vec(), hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000"));
    let ctr = AesCtr::new(&key).unwrap();
    let mut stream = vec![0u8; 0xff02 * 16];
    ctr.apply(iv, &mut stream).unwrap();
    for (block, expected) in [
        (0x0000, "E03EAD0935C95E80E166B16DD92B4EB4"),
        (0x0001, "D23513162B02D0F72A43A2FE4A5F97AB"),
        (0x0002, "41E95B3BB0A2E8DD477901E4FCA894C0"),
        (0xfeff, "EC8CDF7398607CB0F2D21675EA9EA1E4"),
        (0xff00, "362B7C3C6773516318A077D7FC5073AE"),
        (0xff01, "6A2CC3787889374FBEB4C81B17BA6C44"),
    ] {
        assert_eq!(
            stream[block * 16..block * 16 + 16].to_vec(),
            hex(expected),
            "keystream block {block:#x}"
        );
    }
}

/// RFC 3711 appendix B.3: session keys from master key E1F9...4139 and
/// master salt 0EC6...ABE6.
#[test]
fn rfc3711_b3_key_derivation() {
    let key = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
    let salt = hex("0EC675AD498AFEEBB6960B3AABE6");
    let mut enc = [0u8; 16];
    kdf::derive(&key, &salt, Label::RtpEncryption, &mut enc).unwrap();
    assert_eq!(enc.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
    let mut s = [0u8; 14];
    kdf::derive(&key, &salt, Label::RtpSalt, &mut s).unwrap();
    assert_eq!(s.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
    let mut auth = [0u8; 20];
    kdf::derive(&key, &salt, Label::RtpAuth, &mut auth).unwrap();
    assert_eq!(
        auth.to_vec(),
        hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
    );
    // The whole 94-byte auth keystream the appendix lists: the PRF runs on
    // past one block with the counter in the low 16 bits.
    let mut long = [0u8; 94];
    kdf::derive(&key, &salt, Label::RtpAuth, &mut long).unwrap();
    assert_eq!(
        long.to_vec(),
        hex(
            "CEBE321F6FF7716B6FD4AB49AF256A15 6D38BAA48F0A0ACF3C34E2359E6CDBCE
             E049646C43D9327AD175578EF7227098 6371C10C9A369AC2F94A8C5FBCDDDC25
             6D6E919A48B610EF17C2041E47403576 6B68642C59BBFC2F34DB60DBDFB2"
        )
    );
}

// ---------------------------------------------------------------- RFC 7714

const GCM_KEY_128: &str = "000102030405060708090a0b0c0d0e0f";
const GCM_KEY_256: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const GCM_SALT: &str = "517569642070726f2071756f";
const GCM_RTP: &str = "8040f17b8041f8d35501a0b247616c6c696120657374206f6d6e69732064697669736120696e207061727465732074726573";
const GCM_RTCP: &str = "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61deadbeefdeadbeefdeadbeefdeadbeefdeadbeef";

/// A context keyed with session keys directly, as RFC 7714's vectors are.
fn session_context(suite: Suite, key: &str, direction: Direction) -> Context {
    let key = hex(key);
    let salt = hex(GCM_SALT);
    Context::with_transforms(
        suite,
        direction,
        Transform::from_session_keys(suite, Kind::Rtp, &key, &[], &salt).unwrap(),
        Transform::from_session_keys(suite, Kind::Rtcp, &key, &[], &salt).unwrap(),
    )
}

#[test]
fn rfc7714_ivs() {
    let salt: [u8; 12] = hex(GCM_SALT).try_into().unwrap();
    assert_eq!(
        kdf::gcm_rtp_iv(&salt, 0x5501_a0b2, 0xf17b).to_vec(),
        hex("51753c6580c2726f20718414")
    );
    assert_eq!(
        kdf::gcm_rtcp_iv(&salt, 0x4d61_7273, 0x5d4).to_vec(),
        hex("517524055203726f207170bb")
    );
}

fn rfc7714_rtp(suite: Suite, key: &str, protected: &str) {
    let plain = hex(GCM_RTP);
    let protected = hex(protected);
    let mut tx = session_context(suite, key, Direction::Outbound);
    let mut buf = [0u8; 128];
    buf[..plain.len()].copy_from_slice(&plain);
    let n = tx.protect_rtp(&mut buf, plain.len()).unwrap();
    assert_eq!(buf[..n].to_vec(), protected, "{suite} SRTP protect");

    let mut rx = session_context(suite, key, Direction::Inbound);
    let mut packet = protected.clone();
    let n = rx.unprotect_rtp(&mut packet).unwrap();
    assert_eq!(packet[..n].to_vec(), plain, "{suite} SRTP unprotect");
}

fn rfc7714_rtcp(suite: Suite, key: &str, protected: &str) {
    let plain = hex(GCM_RTCP);
    let protected = hex(protected);
    let mut tx = session_context(suite, key, Direction::Outbound);
    // The vector's SRTCP index is 0x5d4: make it the next one sent.
    tx.set_rtcp_index(0x4d61_7273, 0x5d3);
    let mut buf = [0u8; 128];
    buf[..plain.len()].copy_from_slice(&plain);
    let n = tx.protect_rtcp(&mut buf, plain.len()).unwrap();
    assert_eq!(buf[..n].to_vec(), protected, "{suite} SRTCP protect");

    let mut rx = session_context(suite, key, Direction::Inbound);
    let mut packet = protected.clone();
    let n = rx.unprotect_rtcp(&mut packet).unwrap();
    assert_eq!(packet[..n].to_vec(), plain, "{suite} SRTCP unprotect");
    assert_eq!(rx.rtcp_index(0x4d61_7273), Some(0x5d4));
}

/// RFC 7714 section 16.1.1 (AEAD_AES_128_GCM SRTP).
#[test]
fn rfc7714_16_rtp_aes_128_gcm() {
    rfc7714_rtp(
        Suite::AeadAes128Gcm,
        GCM_KEY_128,
        "8040f17b8041f8d35501a0b2f24de3a3fb34de6cacba861c9d7e4bcabe633bd5
         0d294e6f42a5f47a51c7d19b36de3adf8833899d7f27beb16a9152cf765ee4390cce",
    );
}

/// RFC 7714 section 16.2.1 (AEAD_AES_256_GCM SRTP).
#[test]
fn rfc7714_16_rtp_aes_256_gcm() {
    rfc7714_rtp(
        Suite::AeadAes256Gcm,
        GCM_KEY_256,
        "8040f17b8041f8d35501a0b232b1de78a822fe12ef9f78fa332e33aab1801238
         9a58e2f3b50b2a0276ffae0f1ba63799b87b7aa3db36dfffd6b0f9bb7878d7a76c13",
    );
}

/// RFC 7714 section 17.1.1 (AEAD_AES_128_GCM SRTCP).
#[test]
fn rfc7714_17_rtcp_aes_128_gcm() {
    rfc7714_rtcp(
        Suite::AeadAes128Gcm,
        GCM_KEY_128,
        "81c8000d4d61727363e94885dcdab67ca727d7662f6b7e997ff5c0f76c06f32d
         c676a5f1730d6fda4ce09b4686303ded0bb9275bc84aa45896cf4d2fc5abf872
         45d9eade800005d4",
    );
}

/// RFC 7714 section 17.2.1 (AEAD_AES_256_GCM SRTCP).
#[test]
fn rfc7714_17_rtcp_aes_256_gcm() {
    rfc7714_rtcp(
        Suite::AeadAes256Gcm,
        GCM_KEY_256,
        "81c8000d4d617273d50ae4d1f5ce5d304ba297e47d470c282c3ece5dbffe0a50
         a2eaa5c1110555be8415f658c61de0476f1b6fad1d1eb30c4446839f57ff6f6c
         b26ac3be800005d4",
    );
}

// ---------------------------------------------------------------- helpers

const SSRC: u32 = 0xcafe_f00d;

fn key(suite: Suite, fill: u8) -> MasterKey {
    let material: Vec<u8> = (0..suite.key_material_len() as u8)
        .map(|i| i.wrapping_mul(31) ^ fill)
        .collect();
    MasterKey::from_material(suite, &material).unwrap()
}

fn pair(suite: Suite) -> (Context, Context) {
    let k = key(suite, 0x5a);
    (
        Context::new(&k, Direction::Outbound).unwrap(),
        Context::new(&k, Direction::Inbound).unwrap(),
    )
}

/// An RTP packet with a recognisable payload, in a buffer with room for any
/// tag; returns (buffer, length).
fn rtp(seq: u16, ssrc: u32, payload_len: usize) -> (Vec<u8>, usize) {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..payload_len).map(|i| (i as u8) ^ (seq as u8)));
    let len = p.len();
    p.resize(len + 64, 0);
    (p, len)
}

fn rtcp(ssrc: u32, body_len: usize) -> (Vec<u8>, usize) {
    // A sender report header; the length field is not checked by SRTCP.
    let mut p = vec![0x80, 200, 0x00, 0x06];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..body_len).map(|i| i as u8));
    let len = p.len();
    p.resize(len + 64, 0);
    (p, len)
}

fn protect(tx: &mut Context, seq: u16) -> Vec<u8> {
    let (mut buf, len) = rtp(seq, SSRC, 160);
    let n = tx.protect_rtp(&mut buf, len).unwrap();
    buf.truncate(n);
    buf
}

fn unprotect(rx: &mut Context, packet: &[u8]) -> Result<Vec<u8>, Error> {
    let mut buf = packet.to_vec();
    let n = rx.unprotect_rtp(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

// ---------------------------------------------------------------- round trips

#[test]
fn rtp_round_trip_every_suite() {
    for suite in Suite::ALL {
        let (mut tx, mut rx) = pair(suite);
        for (seq, payload) in [(1u16, 160usize), (2, 0), (3, 1), (4, 1200)] {
            let (mut buf, len) = rtp(seq, SSRC, payload);
            let plain = buf[..len].to_vec();
            let n = tx.protect_rtp(&mut buf, len).unwrap();
            assert_eq!(n, len + suite.rtp_tag_len(), "{suite}");
            assert_eq!(buf[..12], plain[..12], "{suite}: header stays clear");
            if payload > 8 {
                assert_ne!(buf[12..len], plain[12..], "{suite}: payload encrypted");
            }
            let m = rx.unprotect_rtp(&mut buf[..n]).unwrap();
            assert_eq!(buf[..m], plain[..], "{suite} seq {seq}");
        }
    }
}

/// CSRCs and a header extension are header: authenticated, not encrypted.
#[test]
fn rtp_round_trip_with_csrcs_and_extension() {
    for suite in Suite::ALL {
        let (mut tx, mut rx) = pair(suite);
        let mut p = vec![0x80 | 0x10 | 2, 0, 0, 7, 0, 0, 0, 1];
        p.extend_from_slice(&SSRC.to_be_bytes());
        p.extend_from_slice(&[1, 1, 1, 1, 2, 2, 2, 2]); // two CSRCs
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]); // one-word extension
        let header = p.len();
        p.extend_from_slice(b"payload bytes");
        let plain = p.clone();
        let len = p.len();
        p.resize(len + 16, 0);
        let n = tx.protect_rtp(&mut p, len).unwrap();
        assert_eq!(p[..header], plain[..header], "{suite}");
        assert_ne!(p[header..len], plain[header..], "{suite}");
        let m = rx.unprotect_rtp(&mut p[..n]).unwrap();
        assert_eq!(p[..m], plain[..], "{suite}");
    }
}

#[test]
fn rtcp_round_trip_replay_and_tamper_every_suite() {
    for suite in Suite::ALL {
        let (mut tx, mut rx) = pair(suite);
        let mut sent = Vec::new();
        for i in 0..5u32 {
            let (mut buf, len) = rtcp(SSRC, 20 + i as usize);
            let plain = buf[..len].to_vec();
            let n = tx.protect_rtcp(&mut buf, len).unwrap();
            assert_eq!(n, len + suite.rtcp_overhead(), "{suite}");
            assert_eq!(tx.rtcp_index(SSRC), Some(i), "{suite}: index counts from 0");
            assert_ne!(buf[8..len], plain[8..], "{suite}: encrypted (E=1)");
            sent.push((buf[..n].to_vec(), plain));
        }
        // Out of order, then every one again.
        for i in [1usize, 0, 4, 2, 3] {
            let (packet, plain) = &sent[i];
            let mut b = packet.clone();
            let m = rx.unprotect_rtcp(&mut b).unwrap();
            assert_eq!(b[..m], plain[..], "{suite} SRTCP {i}");
        }
        for (packet, _) in &sent {
            let mut b = packet.clone();
            assert_eq!(rx.unprotect_rtcp(&mut b), Err(Error::Replay), "{suite}");
        }
        // Any flipped bit after the header fails authentication (a flip in
        // the E flag or index included).
        let (packet, _) = &sent[0];
        for at in 1..packet.len() {
            let mut b = packet.clone();
            b[at] ^= 0x01;
            let r = rx.unprotect_rtcp(&mut b);
            assert!(
                matches!(r, Err(Error::AuthFailed | Error::Replay | Error::TooOld)),
                "{suite}: byte {at} flipped gave {r:?}"
            );
        }
    }
}

/// The SHA1_32 suite shortens only the SRTP tag; SRTCP keeps 80 bits.
#[test]
fn sha1_32_keeps_80_bit_rtcp_tag() {
    let (mut tx, _) = pair(Suite::AesCm128HmacSha1_32);
    let (mut buf, len) = rtp(1, SSRC, 10);
    assert_eq!(tx.protect_rtp(&mut buf, len).unwrap(), len + 4);
    let (mut buf, len) = rtcp(SSRC, 10);
    assert_eq!(tx.protect_rtcp(&mut buf, len).unwrap(), len + 4 + 10);
}

// ---------------------------------------------------------------- index and replay

/// Sequence numbers wrap: the ROC goes to 1 on both sides, including when
/// packets from both sides of the wrap arrive out of order.
#[test]
fn sequence_wrap_increments_roc_with_reordering() {
    for suite in Suite::ALL {
        let (mut tx, mut rx) = pair(suite);
        let seqs = [65530u16, 65531, 65532, 65533, 65534, 65535, 0, 1, 2, 3];
        let packets: Vec<Vec<u8>> = seqs.iter().map(|&s| protect(&mut tx, s)).collect();
        assert_eq!(
            tx.rtp_index(SSRC),
            Some(1 << 16 | 3),
            "{suite}: sender ROC 1"
        );
        // Delivered: 65530..65533 in order, then across the wrap mixed up.
        for i in [0usize, 1, 2, 3, 6, 4, 8, 5, 7, 9] {
            let plain = unprotect(&mut rx, &packets[i])
                .unwrap_or_else(|e| panic!("{suite}: seq {} rejected: {e}", seqs[i]));
            assert_eq!(plain, rtp(seqs[i], SSRC, 160).0[..12 + 160], "{suite}");
        }
        assert_eq!(
            rx.rtp_index(SSRC),
            Some(1 << 16 | 3),
            "{suite}: receiver ROC 1"
        );
        // A packet from before the wrap, again: a replay, not a ROC 2 guess.
        assert_eq!(
            unprotect(&mut rx, &packets[5]),
            Err(Error::Replay),
            "{suite}"
        );
        // The sender will not reuse an index either.
        let (mut buf, len) = rtp(65535, SSRC, 160);
        assert_eq!(tx.protect_rtp(&mut buf, len), Err(Error::Replay), "{suite}");
    }
}

/// The ROC is part of the authentication (AES-CM) and the nonce (GCM): a
/// receiver that guesses the wrong ROC rejects the packet.
#[test]
fn wrong_roc_fails_authentication() {
    for suite in Suite::ALL {
        let (mut tx, mut rx) = pair(suite);
        tx.set_rtp_index(SSRC, 5 << 16 | 100);
        let p = protect(&mut tx, 101);
        assert_eq!(unprotect(&mut rx, &p), Err(Error::AuthFailed), "{suite}");
        rx.set_rtp_index(SSRC, 5 << 16 | 90);
        assert!(unprotect(&mut rx, &p).is_ok(), "{suite}");
    }
}

#[test]
fn reordering_inside_window_accepted_once_and_old_rejected() {
    let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_80);
    let packets: Vec<Vec<u8>> = (0..300u16).map(|s| protect(&mut tx, s)).collect();
    assert!(unprotect(&mut rx, &packets[0]).is_ok());
    assert!(unprotect(&mut rx, &packets[250]).is_ok());
    // Everything inside the window behind 250 is accepted, newest first...
    for s in (123..250).rev() {
        assert!(unprotect(&mut rx, &packets[s]).is_ok(), "seq {s}");
    }
    // ...once.
    for s in [123usize, 200, 249, 250] {
        assert_eq!(
            unprotect(&mut rx, &packets[s]),
            Err(Error::Replay),
            "seq {s}"
        );
    }
    // 250 - 128 = 122 is just out of the window; 0 long gone.
    assert_eq!(unprotect(&mut rx, &packets[122]), Err(Error::TooOld));
    assert_eq!(unprotect(&mut rx, &packets[0]), Err(Error::TooOld));
    // Newer packets move the window on.
    assert!(unprotect(&mut rx, &packets[299]).is_ok());
    assert_eq!(unprotect(&mut rx, &packets[171]), Err(Error::TooOld));
    assert_eq!(unprotect(&mut rx, &packets[172]), Err(Error::Replay));
    assert!(unprotect(&mut rx, &packets[260]).is_ok());
}

#[test]
fn srtcp_window_rejects_old_indices() {
    let (mut tx, mut rx) = pair(Suite::AeadAes128Gcm);
    let packets: Vec<Vec<u8>> = (0..200)
        .map(|_| {
            let (mut b, len) = rtcp(SSRC, 24);
            let n = tx.protect_rtcp(&mut b, len).unwrap();
            b.truncate(n);
            b
        })
        .collect();
    assert!(rx.unprotect_rtcp(&mut packets[199].clone()).is_ok());
    assert!(rx.unprotect_rtcp(&mut packets[72].clone()).is_ok());
    assert_eq!(
        rx.unprotect_rtcp(&mut packets[71].clone()),
        Err(Error::TooOld)
    );
    assert_eq!(
        rx.unprotect_rtcp(&mut packets[72].clone()),
        Err(Error::Replay)
    );
}

/// Each SSRC has its own index and window; a forged packet creates none.
#[test]
fn per_ssrc_state() {
    let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_80);
    for (ssrc, seq) in [(1u32, 100u16), (2, 60000), (1, 101), (2, 60001)] {
        let (mut b, len) = rtp(seq, ssrc, 20);
        let n = tx.protect_rtp(&mut b, len).unwrap();
        assert!(rx.unprotect_rtp(&mut b[..n]).is_ok());
    }
    assert_eq!(rx.rtp_index(1), Some(101));
    assert_eq!(rx.rtp_index(2), Some(60001));
    let (mut b, len) = rtp(5, 3, 20);
    let n = len + 10;
    assert_eq!(rx.unprotect_rtp(&mut b[..n]), Err(Error::AuthFailed));
    assert_eq!(rx.rtp_index(3), None, "forgery created no state");
    // More SSRCs than the context keeps: the oldest are forgotten, the
    // newest still work.
    for ssrc in 10..10 + super::MAX_SSRCS as u32 + 4 {
        let (mut b, len) = rtp(1, ssrc, 20);
        let n = tx.protect_rtp(&mut b, len).unwrap();
        assert!(rx.unprotect_rtp(&mut b[..n]).is_ok());
    }
    assert_eq!(rx.rtp_index(1), None);
    assert_eq!(rx.rtp_index(10 + super::MAX_SSRCS as u32 + 3), Some(1));
}

// ---------------------------------------------------------------- bad input

#[test]
fn tampered_packets_rejected_and_change_nothing() {
    for suite in Suite::ALL {
        let (mut tx, mut rx) = pair(suite);
        let p = protect(&mut tx, 7);
        for at in 0..p.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = p.clone();
                b[at] ^= bit;
                let r = rx.unprotect_rtp(&mut b);
                assert!(
                    r.is_err(),
                    "{suite}: byte {at} bit {bit:#x} flipped accepted"
                );
                assert_eq!(rx.rtp_index(SSRC), None, "{suite}: state changed");
            }
        }
        // Truncated by one byte, and the genuine one still goes through.
        assert!(unprotect(&mut rx, &p[..p.len() - 1]).is_err());
        assert!(unprotect(&mut rx, &p).is_ok(), "{suite}");
    }
}

#[test]
fn wrong_key_fails_authentication() {
    for suite in Suite::ALL {
        let mut tx = Context::new(&key(suite, 1), Direction::Outbound).unwrap();
        let mut rx = Context::new(&key(suite, 2), Direction::Inbound).unwrap();
        let p = protect(&mut tx, 1);
        assert_eq!(unprotect(&mut rx, &p), Err(Error::AuthFailed), "{suite}");
    }
}

#[test]
fn short_malformed_and_small_buffers() {
    for suite in Suite::ALL {
        let (mut tx, mut rx) = pair(suite);
        let (mut b, len) = rtp(1, SSRC, 20);
        // No room for the tag.
        assert_eq!(
            tx.protect_rtp(&mut b[..len + 1], len),
            Err(Error::BufferTooSmall)
        );
        assert_eq!(
            tx.protect_rtp(&mut b[..len], len + 1),
            Err(Error::BufferTooSmall)
        );
        assert_eq!(tx.protect_rtp(&mut b, 11), Err(Error::TooShort));
        b[0] = 0x40; // version 1
        assert_eq!(tx.protect_rtp(&mut b, len), Err(Error::Malformed));
        b[0] = 0x8f; // 15 CSRCs: past the end
        assert_eq!(tx.protect_rtp(&mut b, len), Err(Error::Malformed));
        assert_eq!(rx.unprotect_rtp(&mut [0x80; 12]), Err(Error::TooShort));
        assert_eq!(rx.unprotect_rtp(&mut []), Err(Error::TooShort));
        assert_eq!(rx.unprotect_rtcp(&mut [0x80; 13]), Err(Error::TooShort));
        let (mut b, len) = rtcp(SSRC, 0);
        assert_eq!(
            tx.protect_rtcp(&mut b[..len + 3], len),
            Err(Error::BufferTooSmall)
        );
        assert_eq!(tx.protect_rtcp(&mut b, 7), Err(Error::TooShort));
        assert_eq!(
            tx.protect_rtcp(&mut b, len).map(|_| ()),
            Ok(()),
            "{suite}: header-only RTCP"
        );
    }
}

#[test]
fn bad_key_lengths() {
    assert_eq!(
        MasterKey::new(Suite::AeadAes256Gcm, &[0; 16], &[0; 12]),
        Err(Error::BadKey)
    );
    assert_eq!(
        MasterKey::new(Suite::AesCm128HmacSha1_80, &[0; 16], &[0; 12]),
        Err(Error::BadKey)
    );
    assert!(MasterKey::from_material(Suite::AeadAes128Gcm, &[0; 28]).is_ok());
    assert_eq!(
        MasterKey::from_material(Suite::AeadAes128Gcm, &[0; 30]),
        Err(Error::BadKey)
    );
}

/// Random bytes, random lengths, and random mutations of real packets: an
/// error or (vanishingly unlikely) success, never a panic.
#[test]
fn fuzz_unprotect_never_panics() {
    let mut rng = Rng(0x5eed_5127);
    for suite in Suite::ALL {
        let (mut tx, mut rx) = pair(suite);
        let real = protect(&mut tx, 9);
        let mut accepted = 0;
        for _ in 0..5_000 {
            let mut b: Vec<u8> = if rng.below(2) == 0 {
                (0..rng.below(100)).map(|_| rng.next() as u8).collect()
            } else {
                let mut b = real.clone();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(b.len());
                    b[at] = rng.next() as u8;
                }
                b.truncate(rng.below(b.len() + 1));
                b
            };
            if rng.below(4) == 0 && !b.is_empty() {
                b[0] = 0x80 | (b[0] & 0x3f);
            }
            if rx.unprotect_rtp(&mut b.clone()).is_ok() {
                accepted += 1;
            }
            let _ = rx.unprotect_rtcp(&mut b.clone());
            let len = b.len();
            b.resize(len + rng.below(40), 0);
            let _ = tx.protect_rtp(&mut b.clone(), len);
            let _ = tx.protect_rtcp(&mut b, len);
        }
        // A mutation that happens to change nothing lets the real packet
        // through once; more than that would mean forgeries pass.
        assert!(
            accepted <= 1,
            "{suite}: {accepted} random packets authenticated"
        );
    }
}

// ---------------------------------------------------------------- keys

#[test]
fn keys_never_formatted() {
    let k = key(Suite::AesCm128HmacSha1_80, 0);
    let attr = CryptoAttribute {
        tag: 1,
        key: k.clone(),
        lifetime: None,
        window_hint: None,
    };
    let value = attr.to_sdp_value();
    let b64 = value.rsplit_once(':').unwrap().1;
    let hex_key: String = k.material().iter().map(|b| format!("{b:02x}")).collect();
    for shown in [
        format!("{k:?}"),
        format!("{k}"),
        format!("{attr:?}"),
        format!("{k:#?}"),
    ] {
        assert!(shown.contains("redacted"), "{shown}");
        assert!(
            !shown.contains(b64) && !shown.contains(&hex_key),
            "key leaked: {shown}"
        );
        assert!(
            !shown.contains(&format!("{:?}", k.material())),
            "key leaked: {shown}"
        );
    }
}

#[test]
fn generated_keys_are_fresh() {
    for suite in Suite::ALL {
        let a = MasterKey::generate(suite).unwrap();
        let b = MasterKey::generate(suite).unwrap();
        assert_ne!(a.material(), b.material(), "{suite}");
        assert_eq!(a.material().len(), suite.key_material_len());
        assert!(a.material().iter().any(|&x| x != 0));
    }
}

// ---------------------------------------------------------------- SDES

#[test]
fn sdes_parses_rfc4568_example() {
    // RFC 4568 section 4's example line.
    let a = CryptoAttribute::parse(
        "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20",
    )
    .unwrap();
    assert_eq!(a.tag, 1);
    assert_eq!(a.suite(), Suite::AesCm128HmacSha1_80);
    assert_eq!(a.lifetime, Some(1 << 20));
    assert_eq!(&a.key.material()[..4], b"=-n@");
    assert_eq!(a.key.key().len(), 16);
    assert_eq!(a.key.salt().len(), 14);
}

#[test]
fn sdes_generate_parse_round_trip_every_suite() {
    for suite in Suite::ALL {
        let a = CryptoAttribute::generate(3, suite).unwrap();
        let value = a.to_sdp_value();
        assert!(
            value.starts_with(&format!("3 {} inline:", suite.sdes_name())),
            "{value}"
        );
        let b = CryptoAttribute::parse(&value).unwrap();
        assert_eq!(a, b, "{suite}");
        // And with a lifetime and harmless parameters.
        let mut c = b.clone();
        c.lifetime = Some(1 << 31);
        let value = c.to_sdp_value();
        assert!(value.ends_with("|2^31"), "{value}");
        assert_eq!(CryptoAttribute::parse(&value).unwrap(), c);
        let d = CryptoAttribute::parse(&format!("{value} KDR=0 WSH=64 FEC_ORDER=SRTP_FEC -X=1"))
            .unwrap();
        assert_eq!(d.window_hint, Some(64));
        assert_eq!(d.key, c.key);
    }
    // A key without base64 padding (some peers drop it) parses too.
    let a = CryptoAttribute::generate(1, Suite::AeadAes128Gcm).unwrap();
    let value = a.to_sdp_value();
    assert!(
        value.ends_with('='),
        "28 bytes of key material end in padding"
    );
    assert_eq!(
        CryptoAttribute::parse(value.trim_end_matches('='))
            .unwrap()
            .key,
        a.key
    );
}

#[test]
fn sdes_unusable_lines() {
    let key = "inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";
    let line = |rest: &str| format!("1 AES_CM_128_HMAC_SHA1_80 {key}{rest}");
    let param = |p: &str| SdesError::SessionParam(p.to_string());
    for (value, expected) in [
        (line(" UNENCRYPTED_SRTP"), param("UNENCRYPTED_SRTP")),
        (line(" UNENCRYPTED_SRTCP"), param("UNENCRYPTED_SRTCP")),
        (line(" UNAUTHENTICATED_SRTP"), param("UNAUTHENTICATED_SRTP")),
        (line(" KDR=1"), param("KDR=1")),
        (line(" KDR=24"), param("KDR=24")),
        (line(" FEC_ORDER=FEC_SRTP"), param("FEC_ORDER=FEC_SRTP")),
        (
            line(" FEC_KEY=inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"),
            param("FEC_KEY=inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"),
        ),
        (line(" WSH=1024"), param("WSH=1024")),
        (line(" WSH=32"), param("WSH=32")),
        (line(" WSH=x"), param("WSH=x")),
        (line(" SOMETHING_NEW"), param("SOMETHING_NEW")),
        (line("|2^20|1:4"), SdesError::Mki),
        (line("|1:4"), SdesError::Mki),
        (
            line(";inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|2:4"),
            SdesError::MultipleKeys,
        ),
        (line("|2^20|2^20"), SdesError::Syntax("too many '|' fields")),
        (line("|2^99"), SdesError::Syntax("lifetime")),
        (line("|0"), SdesError::Syntax("lifetime")),
        (line("|lots"), SdesError::Syntax("lifetime")),
        (
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywj".into(),
            SdesError::BadKey("wrong length for the suite"),
        ),
        (
            "1 AEAD_AES_256_GCM inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR".into(),
            SdesError::BadKey("wrong length for the suite"),
        ),
        (
            "1 AES_CM_128_HMAC_SHA1_80 inline:!!!!".into(),
            SdesError::BadKey("not base64, or too long"),
        ),
        (
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{}", "A".repeat(400)),
            SdesError::BadKey("not base64, or too long"),
        ),
        (
            "1 F8_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR".into(),
            SdesError::UnknownSuite("F8_128_HMAC_SHA1_80".into()),
        ),
        (
            "1 AES_256_CM_HMAC_SHA1_80 inline:x".into(),
            SdesError::UnknownSuite("AES_256_CM_HMAC_SHA1_80".into()),
        ),
        (
            "1 AES_CM_128_HMAC_SHA1_80 uri:https://example.invalid/k".into(),
            SdesError::KeyMethod("uri".into()),
        ),
        (
            "1 AES_CM_128_HMAC_SHA1_80 PS1uQCVeeCFCanVm".into(),
            SdesError::Syntax("key parameter without ':'"),
        ),
        (
            "1 AES_CM_128_HMAC_SHA1_80".into(),
            SdesError::Syntax("no key parameters"),
        ),
        ("1".into(), SdesError::Syntax("no crypto suite")),
        ("".into(), SdesError::Syntax("empty")),
        (
            format!("x AES_CM_128_HMAC_SHA1_80 {key}"),
            SdesError::Syntax("tag is not 1 to 9 digits"),
        ),
        (
            format!("1234567890 AES_CM_128_HMAC_SHA1_80 {key}"),
            SdesError::Syntax("tag is not 1 to 9 digits"),
        ),
    ] {
        assert_eq!(CryptoAttribute::parse(&value), Err(expected), "{value}");
    }
}

#[test]
fn fuzz_sdes_parse_never_panics() {
    let mut rng = Rng(0x5d35);
    let pieces = [
        "1",
        " ",
        "AES_CM_128_HMAC_SHA1_80",
        "AEAD_AES_256_GCM",
        "inline:",
        "|",
        ":",
        ";",
        "2^",
        "2^20",
        "1:4",
        "=",
        "KDR=0",
        "WSH=",
        "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
        "é",
        "\t",
        "99999999999999999999",
        "-",
        "==",
    ];
    for _ in 0..20_000 {
        let s: String = (0..rng.below(12)).map(|_| rng.pick(&pieces)).collect();
        let _ = CryptoAttribute::parse(&s);
        let bytes: Vec<u8> = (0..rng.below(60)).map(|_| rng.next() as u8).collect();
        let _ = CryptoAttribute::parse(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn authenticate_rtp_checks_without_touching() {
    for suite in Suite::ALL {
        let (mut tx, mut rx) = pair(suite);
        let p = protect(&mut tx, 1);
        let mut forged = p.clone();
        forged[15] ^= 1;
        assert_eq!(
            rx.authenticate_rtp(&forged),
            Err(Error::AuthFailed),
            "{suite}"
        );
        assert_eq!(rx.authenticate_rtp(&p), Ok(()), "{suite}");
        // The genuine packet again (say, replayed from another address).
        assert_eq!(rx.authenticate_rtp(&p), Err(Error::Replay), "{suite}");
        assert_eq!(
            rx.authenticate_rtp(&vec![0x80; super::MAX_PACKET + 1]),
            Err(Error::Malformed)
        );
        // The packet is still SRTP for whoever forwards it: another receiver
        // decrypts it.
        let (_, mut other) = pair(suite);
        assert_eq!(
            unprotect(&mut other, &p).unwrap(),
            rtp(1, SSRC, 160).0[..172]
        );
    }
}

#[test]
fn sdes_answer_keeps_tag_and_suite_with_a_fresh_key() {
    for suite in Suite::ALL {
        let offer = CryptoAttribute::generate(7, suite).unwrap();
        let answer = offer.answer().unwrap();
        assert_eq!((answer.tag, answer.suite()), (7, suite));
        assert_ne!(answer.key, offer.key);
    }
}

/// The forwarder moves contexts between threads (one per worker).
#[test]
fn context_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Context>();
    check::<MasterKey>();
}
