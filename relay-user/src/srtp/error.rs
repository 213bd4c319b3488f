//! What can go wrong with one packet, as one `Copy` value the forwarder can
//! count per flow.

/// Why a packet was not protected or unprotected. The forwarder counts these
/// per flow; [`Error::as_str`] names them for counters and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Error {
    /// Shorter than a header plus the tag (and for SRTCP the index).
    #[error("packet too short")]
    TooShort,
    /// Not RTP/RTCP version 2, or a header (CSRCs, extension) that runs past
    /// the end of the packet.
    #[error("malformed packet")]
    Malformed,
    /// The authentication tag does not match: tampered, wrong key, or noise.
    #[error("authentication failed")]
    AuthFailed,
    /// The packet index was already received (or, when protecting, already
    /// used: sending it again would reuse a keystream).
    #[error("replayed packet")]
    Replay,
    /// The packet index is older than the replay window.
    #[error("packet older than the replay window")]
    TooOld,
    /// The caller's buffer has no room for the tag (and SRTCP index), or
    /// `len` exceeds the buffer.
    #[error("buffer too small")]
    BufferTooSmall,
    /// The rollover counter or the SRTCP index would wrap: the master key
    /// must be replaced (RFC 3711 section 9.2).
    #[error("key exhausted, a new master key is needed")]
    KeyExhausted,
    /// A key or salt of the wrong length for the suite.
    #[error("key or salt of the wrong length")]
    BadKey,
    /// The crypto library refused an operation it should not refuse.
    #[error("crypto library failure")]
    Crypto,
}

impl Error {
    /// A short stable name, for per-flow counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Error::TooShort => "too_short",
            Error::Malformed => "malformed",
            Error::AuthFailed => "auth_failed",
            Error::Replay => "replay",
            Error::TooOld => "too_old",
            Error::BufferTooSmall => "buffer_too_small",
            Error::KeyExhausted => "key_exhausted",
            Error::BadKey => "bad_key",
            Error::Crypto => "crypto",
        }
    }

    /// Replayed or older than the window: the two ways a packet fails the
    /// replay check (counted together as "replay" by the forwarder if it
    /// wishes).
    pub fn is_replay(self) -> bool {
        matches!(self, Error::Replay | Error::TooOld)
    }
}
