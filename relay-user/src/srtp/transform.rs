//! The session keys of one direction of RTP or RTCP, as ready-to-use cipher
//! states: AES-CM + HMAC-SHA1, or AES-GCM.

use zeroize::Zeroize;

use super::{
    Error, MasterKey, Suite,
    crypto::{AesCtr, AesGcm, HmacSha1},
    kdf::{self, Label},
};

#[expect(
    clippy::large_enum_variant,
    reason = "one lives in each context for its whole life and is never moved per packet; boxing would add a pointer chase per packet"
)]
pub(crate) enum Transform {
    Cm {
        ctr: AesCtr,
        hmac: HmacSha1,
        salt: [u8; 14],
        tag_len: usize,
    },
    Gcm {
        gcm: AesGcm,
        salt: [u8; 12],
    },
}

/// Which of the two key sets of a master key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Rtp,
    Rtcp,
}

impl Transform {
    /// Derives the session keys of `kind` from `master`.
    pub(crate) fn derive(master: &MasterKey, kind: Kind) -> Result<Self, Error> {
        let suite = master.suite();
        let (enc, auth, salt) = match kind {
            Kind::Rtp => (Label::RtpEncryption, Label::RtpAuth, Label::RtpSalt),
            Kind::Rtcp => (Label::RtcpEncryption, Label::RtcpAuth, Label::RtcpSalt),
        };
        let mut k_e = [0u8; 32];
        let mut k_a = [0u8; 20];
        let mut k_s = [0u8; 14];
        let key_len = suite.key_len();
        let salt_len = suite.salt_len();
        let r = (|| {
            kdf::derive(master.key(), master.salt(), enc, &mut k_e[..key_len])?;
            kdf::derive(master.key(), master.salt(), salt, &mut k_s[..salt_len])?;
            if !suite.is_aead() {
                kdf::derive(master.key(), master.salt(), auth, &mut k_a)?;
            }
            Self::from_session_keys(suite, kind, &k_e[..key_len], &k_a, &k_s[..salt_len])
        })();
        k_e.zeroize();
        k_a.zeroize();
        k_s.zeroize();
        r
    }

    /// A transform from session keys given directly (the RFC 7714 vectors
    /// are stated that way).
    pub(crate) fn from_session_keys(
        suite: Suite,
        kind: Kind,
        enc: &[u8],
        auth: &[u8],
        salt: &[u8],
    ) -> Result<Self, Error> {
        if enc.len() != suite.key_len() || salt.len() != suite.salt_len() {
            return Err(Error::BadKey);
        }
        if suite.is_aead() {
            let mut s = [0u8; 12];
            s.copy_from_slice(salt);
            Ok(Transform::Gcm {
                gcm: AesGcm::new(enc)?,
                salt: s,
            })
        } else {
            let mut s = [0u8; 14];
            s.copy_from_slice(salt);
            Ok(Transform::Cm {
                ctr: AesCtr::new(enc)?,
                hmac: HmacSha1::new(auth),
                salt: s,
                tag_len: match kind {
                    Kind::Rtp => suite.rtp_tag_len(),
                    Kind::Rtcp => suite.rtcp_tag_len(),
                },
            })
        }
    }

    pub(crate) fn tag_len(&self) -> usize {
        match self {
            Transform::Cm { tag_len, .. } => *tag_len,
            Transform::Gcm { .. } => crate::srtp::crypto::GCM_TAG,
        }
    }
}

impl Drop for Transform {
    fn drop(&mut self) {
        // aws-lc-rs zeroes AES key schedules and AWS-LC cleans HMAC contexts
        // when they drop; the salts are ours to wipe.
        match self {
            Transform::Cm { salt, .. } => salt.zeroize(),
            Transform::Gcm { salt, .. } => salt.zeroize(),
        }
    }
}
