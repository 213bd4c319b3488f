//! The SRTP crypto suites relay speaks (RFC 4568 section 6.2, RFC 7714 section
//! 14.1): their key, salt and tag lengths and their SDES names.

/// An SRTP protection suite. Key derivation rate is always 0 (RFC 3711
/// section 4.3.1: keys are derived once per master key), and there is no MKI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Suite {
    /// AES-128 counter mode, HMAC-SHA1 with an 80-bit tag (RFC 3711, RFC 4568).
    AesCm128HmacSha1_80,
    /// The same with a 32-bit SRTP tag; SRTCP keeps the 80-bit tag
    /// (RFC 4568 section 6.2.2).
    AesCm128HmacSha1_32,
    /// AES-128 in GCM, 16-byte tag (RFC 7714).
    AeadAes128Gcm,
    /// AES-256 in GCM, 16-byte tag (RFC 7714).
    AeadAes256Gcm,
}

impl Suite {
    /// Every suite, in the order relay prefers them when it offers: the AEAD
    /// suites first (one pass over the packet, stronger tag), then the
    /// classic ones every SRTP peer has.
    pub const ALL: [Suite; 4] = [
        Suite::AeadAes128Gcm,
        Suite::AeadAes256Gcm,
        Suite::AesCm128HmacSha1_80,
        Suite::AesCm128HmacSha1_32,
    ];

    /// The name in `a=crypto:` lines.
    pub fn sdes_name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            Suite::AeadAes128Gcm => "AEAD_AES_128_GCM",
            Suite::AeadAes256Gcm => "AEAD_AES_256_GCM",
        }
    }

    /// The suite an SDES name stands for. Names are case-sensitive in the
    /// RFC 4568 grammar, and every implementation sends them upper case.
    pub fn from_sdes_name(name: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.sdes_name() == name)
    }

    /// Master (and session) encryption key length, bytes.
    pub fn key_len(self) -> usize {
        match self {
            Suite::AeadAes256Gcm => 32,
            _ => 16,
        }
    }

    /// Master (and session) salt length, bytes: 112 bits for AES-CM, 96 bits
    /// for GCM (RFC 7714 section 12).
    pub fn salt_len(self) -> usize {
        if self.is_aead() { 12 } else { 14 }
    }

    /// Length of the base64 `inline:` key material (key || salt), bytes.
    pub fn key_material_len(self) -> usize {
        self.key_len() + self.salt_len()
    }

    /// SRTP authentication tag length, bytes.
    pub fn rtp_tag_len(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 => 10,
            Suite::AesCm128HmacSha1_32 => 4,
            Suite::AeadAes128Gcm | Suite::AeadAes256Gcm => 16,
        }
    }

    /// SRTCP authentication tag length, bytes.
    pub fn rtcp_tag_len(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 | Suite::AesCm128HmacSha1_32 => 10,
            Suite::AeadAes128Gcm | Suite::AeadAes256Gcm => 16,
        }
    }

    /// An AEAD (GCM) suite rather than counter mode plus HMAC.
    pub fn is_aead(self) -> bool {
        matches!(self, Suite::AeadAes128Gcm | Suite::AeadAes256Gcm)
    }

    /// The most an SRTP packet grows when protected: its tag.
    pub fn rtp_overhead(self) -> usize {
        self.rtp_tag_len()
    }

    /// The most an SRTCP packet grows when protected: E flag and index, tag.
    pub fn rtcp_overhead(self) -> usize {
        4 + self.rtcp_tag_len()
    }
}

impl std::fmt::Display for Suite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.sdes_name())
    }
}
