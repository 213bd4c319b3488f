//! SDP (RFC 4566 / RFC 8866, offer/answer per RFC 3264): parsing and the
//! relay's rewrite, without I/O.
//!
//! Hand-written and line-preserving on purpose. A media relay changes a
//! handful of fields (the origin and connection addresses, the media and RTCP
//! ports, sometimes a direction attribute, the ICE attributes that carry the
//! other side's addresses) and must pass every other line byte for byte:
//! codecs, `a=fmtp` parameters, `a=crypto` keys, attributes it has never heard
//! of, and their order. The SDP crates parse into a model and serialize the
//! model back, which reorders, normalizes or drops what they do not model, and
//! an endpoint that sees its own parameters come back altered (or a key line
//! lost) fails the call. So [`Sdp`] keeps the lines as they arrived plus
//! indexes into them, and [`Sdp::rewrite`] writes each line either untouched or
//! replaced as a whole.
//!
//! Input is untrusted (it arrives in SIP bodies and NG commands): parsing
//! never panics, accepts CRLF and LF line endings (output is always CRLF),
//! bounds the size ([`MAX_SDP_LEN`]) and the number of m= lines
//! ([`MAX_MEDIA`]), and rejects malformed text with an [`SdpError`] that names
//! the line and what is wrong with it. Unknown line types and attributes pass
//! through; what the relay itself reads (`o=`, `c=`, `m=`, `a=rtcp`, the
//! direction attributes) is checked strictly.

mod parse;
mod rewrite;
pub mod rtpmap;

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;

use std::{fmt, net::IpAddr, ops::Range};

/// Largest SDP accepted, in bytes. Real offers are a few KiB; WebRTC offers
/// with many candidates stay well under this.
pub const MAX_SDP_LEN: usize = 64 * 1024;

/// Most m= lines accepted in one SDP.
pub const MAX_MEDIA: usize = 32;

/// Parses an SDP body. See the module documentation for what is checked.
pub fn parse(text: &str) -> Result<Sdp, SdpError> {
    parse::parse(text)
}

/// A parsed SDP: the lines as received (without their line endings) and
/// indexes to the lines the relay reads or rewrites.
#[derive(Clone, Debug)]
pub struct Sdp {
    /// The input as given; `lines` are byte ranges into it.
    text: String,
    lines: Vec<Range<usize>>,
    /// Index of the first m= line (`lines.len()` when there is none).
    session_end: usize,
    origin: Option<Origin>,
    /// Session-level c= line: line index and address.
    session_connection: Option<(usize, IpAddr)>,
    /// Session-level direction attribute: line index and value.
    session_direction: Option<(usize, Direction)>,
    media: Vec<MediaSection>,
}

/// The o= line.
#[derive(Clone, Debug)]
struct Origin {
    line: usize,
    /// `None` when the address is a host name or does not match its addrtype.
    addr: Option<IpAddr>,
}

/// One media description: the m= line up to the next m= line (or the end).
#[derive(Clone, Debug)]
struct MediaSection {
    media: Media,
    /// Line indexes: `lines[start]` is the m= line, `end` is exclusive.
    start: usize,
    end: usize,
    /// Media-level c= line.
    connection_line: Option<usize>,
    /// The a=rtcp line.
    rtcp_line: Option<usize>,
    /// The media-level direction attribute.
    direction_line: Option<usize>,
}

/// What the relay needs to know about one m= line, with the session-level
/// values applied where the media level says nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Media {
    /// Position among the m= lines, from 0.
    pub index: usize,
    /// "audio", "video", ...
    pub kind: String,
    /// 0 = rejected or disabled stream.
    pub port: u16,
    /// `m=audio 5000/2 ...` -> 2; 1 when not written.
    pub port_count: u16,
    /// "RTP/AVP", "RTP/SAVP", "UDP/TLS/RTP/SAVPF", ...
    pub proto: String,
    /// Formats (RTP payload types) as written.
    pub formats: Vec<String>,
    /// Effective address: the media-level c= else the session-level c=. A hold
    /// address (0.0.0.0 or ::) is kept as it is.
    pub connection: Option<IpAddr>,
    /// `a=rtcp:PORT [IN IP4|IP6 addr]` (RFC 3605).
    pub rtcp: Option<(u16, Option<IpAddr>)>,
    /// `a=rtcp-mux` (RFC 5761).
    pub rtcp_mux: bool,
    /// Effective direction: media-level, else session-level, else sendrecv.
    pub direction: Direction,
    /// Raw values of the `a=crypto:` lines (RFC 4568), in order.
    pub crypto: Vec<String>,
}

/// The direction attributes of RFC 3264 (`a=sendrecv` and friends).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// Whether the side that wrote the SDP sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether the side that wrote the SDP receives media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    /// The attribute name: "sendrecv", "sendonly", "recvonly", "inactive".
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an attribute name stands for, if it is one.
    pub fn from_attr(name: &str) -> Option<Direction> {
        match name {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }

    /// The same stream seen from the other end (sendonly <-> recvonly), as an
    /// answerer mirrors an offer (RFC 3264 section 6.1).
    pub fn reversed(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How [`Sdp::rewrite`] anchors the media on the relay.
#[derive(Clone, Debug)]
pub struct Rewrite {
    /// Address written into o= (hides the other side's) and into every c=
    /// that is not a hold address.
    pub addr: IpAddr,
    /// One entry per m= line, in the order of [`Sdp::media`].
    pub media: Vec<MediaRewrite>,
    /// Remove `a=candidate`, `a=remote-candidates`, `a=ice-ufrag`,
    /// `a=ice-pwd`, `a=ice-options`, `a=ice-lite`, `a=ice-mismatch`,
    /// `a=ice-pacing` and `a=end-of-candidates` at both levels (they carry, or
    /// only make sense with, the other side's addresses). True in
    /// [`Rewrite::new`].
    pub strip_ice: bool,
}

impl Rewrite {
    /// A rewrite to `addr` that strips ICE.
    pub fn new(addr: IpAddr, media: Vec<MediaRewrite>) -> Rewrite {
        Rewrite {
            addr,
            media,
            strip_ice: true,
        }
    }
}

/// The rewrite of one m= line. `MediaRewrite::default()` changes nothing but
/// removes an a=rtcp line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MediaRewrite {
    /// New m= port; `None` leaves the port as is (rejected streams stay 0). A
    /// `/count` suffix is kept. A rejected stream with no c= at either level
    /// that gets a non-zero port also gets a media-level c= (after the m= and
    /// i= lines).
    pub port: Option<u16>,
    /// `Some`: the section gets exactly one a=rtcp line with this port, the
    /// existing line rewritten in place (with the relay address when it had
    /// an address), or `a=rtcp:PORT` added at the end of the section.
    /// `None`: an existing a=rtcp line is removed (the peer then uses RTP + 1,
    /// or the RTP port with rtcp-mux) and none is added.
    pub rtcp_port: Option<u16>,
    /// `Some`: the media-level direction attribute is replaced, or added at
    /// the end of the section. `None` keeps what is there.
    pub direction: Option<Direction>,
    /// `Some`: the m= line's transport profile ("RTP/SAVP", "RTP/AVP")
    /// replaced. `None` keeps it.
    pub proto: Option<String>,
    /// `Some`: every `a=crypto:` line of the section is replaced by these
    /// values (the text after `a=crypto:`), written where the first one
    /// was, else at the end of the section; an empty list removes them all.
    /// `None` keeps them byte for byte.
    pub crypto: Option<Vec<String>>,
}

impl MediaRewrite {
    /// Anchors the stream on `port` and leaves RTCP implicit (RTP + 1, or the
    /// RTP port with rtcp-mux): no a=rtcp line, direction kept.
    pub fn anchored(port: u16) -> MediaRewrite {
        MediaRewrite {
            port: Some(port),
            ..MediaRewrite::default()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP is empty")]
    Empty,
    #[error("SDP is {len} bytes, over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("line {line}: more than {max} m= lines")]
    TooManyMedia { line: usize, max: usize },
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("line {line}: m={kind} has no c= line and there is no session-level c= line")]
    MissingConnection { line: usize, kind: String },
    #[error("rewrite has {got} media entries for {expected} m= lines")]
    RewriteMismatch { expected: usize, got: usize },
    #[error("rewrite of m= line {index}: {reason}")]
    BadMediaRewrite { index: usize, reason: &'static str },
}

impl SdpError {
    /// The 1-based line number the error is about, if it is about one.
    pub fn line(&self) -> Option<usize> {
        match self {
            SdpError::TooManyMedia { line, .. }
            | SdpError::Syntax { line, .. }
            | SdpError::MissingConnection { line, .. } => Some(*line),
            _ => None,
        }
    }
}

impl Sdp {
    /// Per m= line, in order.
    pub fn media(&self) -> Vec<Media> {
        self.media.iter().map(|m| m.media.clone()).collect()
    }

    /// Number of m= lines.
    pub fn media_count(&self) -> usize {
        self.media.len()
    }

    /// Session-level origin address (o= line), if any and if it is an IP
    /// address rather than a host name.
    pub fn origin_addr(&self) -> Option<IpAddr> {
        self.origin.as_ref().and_then(|o| o.addr)
    }

    /// Session-level c= address, if any.
    pub fn session_connection(&self) -> Option<IpAddr> {
        self.session_connection.map(|(_, a)| a)
    }

    /// Session-level direction attribute, if any.
    pub fn session_direction(&self) -> Option<Direction> {
        self.session_direction.map(|(_, d)| d)
    }

    /// The lines as received, without line endings.
    pub fn lines(&self) -> impl Iterator<Item = &str> + '_ {
        self.lines.iter().map(|r| &self.text[r.clone()])
    }

    /// Writes the SDP with the relay's addresses and ports in place of the
    /// peer's; every other line is kept byte for byte, in order, with CRLF
    /// line endings. The o= session version is left alone (the caller
    /// manages versions).
    ///
    /// Fails with [`SdpError::RewriteMismatch`] unless `rw.media` has one
    /// entry per m= line, and with [`SdpError::BadMediaRewrite`] when a port
    /// is given to a rejected stream that lists no formats.
    pub fn rewrite(&self, rw: &Rewrite) -> Result<String, SdpError> {
        rewrite::rewrite(self, rw)
    }

    fn line(&self, i: usize) -> &str {
        &self.text[self.lines[i].clone()]
    }
}

/// The lines as received, CRLF-terminated.
impl fmt::Display for Sdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in self.lines() {
            f.write_str(line)?;
            f.write_str("\r\n")?;
        }
        Ok(())
    }
}
