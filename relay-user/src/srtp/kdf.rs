//! Session key derivation (RFC 3711 section 4.3 with key derivation rate 0;
//! RFC 7714 section 11 for GCM) and the per-packet IVs (RFC 3711 section
//! 4.1.1, RFC 7714 sections 8.1 and 9.1).

use zeroize::Zeroize;

use super::{Error, crypto::AesCtr};

/// The labels of RFC 3711 section 4.3.2 (RFC 7714 keeps them, minus the
/// authentication keys).
#[derive(Clone, Copy)]
pub(crate) enum Label {
    RtpEncryption = 0,
    RtpAuth = 1,
    RtpSalt = 2,
    RtcpEncryption = 3,
    RtcpAuth = 4,
    RtcpSalt = 5,
}

/// Fills `out` with the AES-CM PRF output for `label`: the keystream of the
/// master key from the counter block (master_salt XOR (label << 48)) << 16.
/// With KDR 0 the `index DIV kdr` term is 0. A GCM master salt is 96 bits: it
/// takes the same place, the two bytes after it being zero (RFC 7714 section
/// 11, as libsrtp does).
pub(crate) fn derive(
    master_key: &[u8],
    master_salt: &[u8],
    label: Label,
    out: &mut [u8],
) -> Result<(), Error> {
    if master_salt.len() > 14 {
        return Err(Error::BadKey);
    }
    let prf = AesCtr::new(master_key)?;
    let mut iv = [0u8; 16];
    iv[..master_salt.len()].copy_from_slice(master_salt);
    // key_id = label || r (48 bits) is right-aligned in the 112-bit x: the
    // label is byte 7 of it.
    iv[7] ^= label as u8;
    out.fill(0);
    let r = prf.apply(iv, out);
    iv.zeroize();
    r
}

/// AES-CM counter block for an SRTP or SRTCP packet: (salt << 16) XOR
/// (SSRC << 64) XOR (index << 16), index being 48 bits (SRTP) or 31 (SRTCP).
#[inline]
pub(crate) fn cm_iv(salt: &[u8; 14], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(salt);
    for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
        *b ^= s;
    }
    // The low 48 bits of the index go to bytes 8..14.
    for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
        *b ^= s;
    }
    iv
}

/// GCM nonce for an SRTP packet: (00 00 || SSRC || ROC || SEQ) XOR salt.
#[inline]
pub(crate) fn gcm_rtp_iv(salt: &[u8; 12], ssrc: u32, index: u64) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..12].copy_from_slice(&index.to_be_bytes()[2..]);
    for (b, s) in iv.iter_mut().zip(salt) {
        *b ^= s;
    }
    iv
}

/// GCM nonce for an SRTCP packet: (00 00 || SSRC || 00 00 || 0 || index) XOR
/// salt; the E flag is not part of it.
#[inline]
pub(crate) fn gcm_rtcp_iv(salt: &[u8; 12], ssrc: u32, index: u32) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[8..12].copy_from_slice(&(index & 0x7fff_ffff).to_be_bytes());
    for (b, s) in iv.iter_mut().zip(salt) {
        *b ^= s;
    }
    iv
}
