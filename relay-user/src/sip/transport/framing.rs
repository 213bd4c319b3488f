//! Finding SIP messages in a TCP or TLS byte stream (RFC 3261 section 18.3),
//! without I/O: bytes go in with [`StreamFramer::push`], whole messages
//! come out of [`StreamFramer::next_frame`].
//!
//! - A message is its header up to the first empty line plus exactly
//!   `Content-Length` (or compact `l`) bytes of body. The header is
//!   mandatory on streams: a message without it cannot be delimited, so the
//!   connection has to be closed.
//! - Messages may arrive split over many reads or several in one read.
//! - CRLFs before a start line are skipped (RFC 3261 7.5); a double CRLF is
//!   an RFC 5626 keep-alive ping, answered with a single CRLF (pong).
//! - Nothing larger than `max_message_size` is buffered: a header that does
//!   not end within the limit, or a declared length beyond it, is an error.
//! - Only the length is read here: every message cut is then checked whole
//!   by [`crate::sip::message::parse`], whose tests also hold the two to
//!   the same boundaries, including a `Content-Length` folded onto
//!   continuation lines (RFC 3261 7.3.1).
//!
//! This is the one stream framer of the relay; `sip::message` has none.

use bytes::{Buf, Bytes, BytesMut};

/// What [`StreamFramer::next_frame`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// One whole SIP message (header and body).
    Message(Bytes),
    /// CRLF CRLF keep-alive (RFC 5626 3.5.1): answer with CRLF.
    Ping,
}

/// The stream cannot be framed any more; close the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message larger than max_message_size ({max} bytes)")]
    TooLarge { max: usize },
    #[error("message without Content-Length (required on stream transports, RFC 3261 18.3)")]
    NoContentLength,
    #[error("bad Content-Length: {0}")]
    BadContentLength(String),
}

/// Splits a byte stream into SIP messages. Holds at most
/// `max_message_size` plus one read's worth of bytes.
#[derive(Debug)]
pub struct StreamFramer {
    buf: BytesMut,
    max: usize,
    /// CRLFs seen in a row before a message (two make a ping).
    crlfs: u8,
    /// How far the search for the end of the header got.
    scanned: usize,
    /// Length of the message at the front once its header is known.
    pending: Option<usize>,
}

impl StreamFramer {
    pub fn new(max_message_size: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max: max_message_size,
            crlfs: 0,
            scanned: 0,
            pending: None,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes held that are not yet part of a returned frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(total) = self.pending {
            return Ok(self.take_if_complete(total));
        }
        loop {
            if self.buf.starts_with(b"\r\n") {
                self.buf.advance(2);
                self.crlfs += 1;
                if self.crlfs == 2 {
                    self.crlfs = 0;
                    return Ok(Some(Frame::Ping));
                }
                continue;
            }
            if self.buf.is_empty() || self.buf[..] == b"\r"[..] {
                return Ok(None);
            }
            break;
        }
        self.crlfs = 0;
        let limit = self.buf.len().min(self.max);
        let from = self.scanned.saturating_sub(3).min(limit);
        let Some(pos) = find(&self.buf[from..limit], b"\r\n\r\n") else {
            if self.buf.len() >= self.max {
                return Err(FrameError::TooLarge { max: self.max });
            }
            self.scanned = limit;
            return Ok(None);
        };
        let header_end = from + pos + 4;
        let body = content_length(&self.buf[..header_end])?;
        let total = header_end
            .checked_add(body)
            .filter(|&t| t <= self.max)
            .ok_or(FrameError::TooLarge { max: self.max })?;
        self.scanned = 0;
        self.pending = Some(total);
        Ok(self.take_if_complete(total))
    }

    fn take_if_complete(&mut self, total: usize) -> Option<Frame> {
        if self.buf.len() < total {
            return None;
        }
        self.pending = None;
        Some(Frame::Message(self.buf.split_to(total).freeze()))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

/// The Content-Length of a header block (start line first). Repeated
/// headers must agree.
fn content_length(head: &[u8]) -> Result<usize, FrameError> {
    let continues = |line: &[u8]| line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
    let mut found: Option<usize> = None;
    let mut lines = head.split(|&b| b == b'\n').skip(1).peekable();
    while let Some(line) = lines.next() {
        // Continuation lines belong to the header above: never a new name.
        if continues(line) {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = trim(&line[..colon]);
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        // RFC 3261 7.3.1: the value may go on over continuation lines.
        let mut value = trim(&line[colon + 1..]).to_vec();
        while let Some(more) = lines.next_if(|l| continues(l)) {
            value.push(b' ');
            value.extend_from_slice(trim(more));
        }
        let value = trim(&value);
        let shown = || String::from_utf8_lossy(&value[..value.len().min(40)]).into_owned();
        if value.is_empty() || value.len() > 9 || !value.iter().all(u8::is_ascii_digit) {
            return Err(FrameError::BadContentLength(format!("{:?}", shown())));
        }
        let v = value
            .iter()
            .fold(0usize, |acc, d| acc * 10 + usize::from(d - b'0'));
        if found.is_some_and(|f| f != v) {
            return Err(FrameError::BadContentLength("conflicting values".into()));
        }
        found = Some(v);
    }
    found.ok_or(FrameError::NoContentLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(body: &str) -> String {
        format!(
            "OPTIONS sip:relay SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.10;branch=z9hG4bK1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn drain(f: &mut StreamFramer) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(x) = f.next_frame().unwrap() {
            out.push(x);
        }
        out
    }

    #[test]
    fn pipelined_and_split_messages() {
        let a = msg("");
        let b = msg("v=0\r\nhello");
        let c = msg("x");
        let stream = format!("{a}{b}{c}");
        // Every split point, and byte by byte.
        for chunk in [1, 2, 3, 7, 50, stream.len()] {
            let mut f = StreamFramer::new(4096);
            let mut got = Vec::new();
            for part in stream.as_bytes().chunks(chunk) {
                f.push(part);
                got.extend(drain(&mut f));
            }
            let want: Vec<Frame> = [&a, &b, &c]
                .iter()
                .map(|m| Frame::Message(Bytes::from(m.to_string())))
                .collect();
            assert_eq!(got, want, "chunk {chunk}");
            assert_eq!(f.buffered(), 0);
        }
    }

    #[test]
    fn compact_and_case_insensitive_length() {
        let m = "MESSAGE sip:a SIP/2.0\r\nl:  3 \r\n\r\nabcNEXT";
        let mut f = StreamFramer::new(4096);
        f.push(m.as_bytes());
        assert_eq!(
            f.next_frame().unwrap(),
            Some(Frame::Message(Bytes::from_static(
                b"MESSAGE sip:a SIP/2.0\r\nl:  3 \r\n\r\nabc"
            )))
        );
        assert_eq!(f.buffered(), 4);
        let m = "SIP/2.0 200 OK\r\ncontent-LENGTH:0\r\n\r\n";
        let mut f = StreamFramer::new(4096);
        f.push(m.as_bytes());
        assert!(matches!(f.next_frame().unwrap(), Some(Frame::Message(_))));
    }

    #[test]
    fn keepalive_ping_and_stray_crlf() {
        let mut f = StreamFramer::new(4096);
        f.push(b"\r\n");
        assert_eq!(f.next_frame().unwrap(), None);
        f.push(b"\r");
        assert_eq!(f.next_frame().unwrap(), None);
        f.push(b"\n");
        assert_eq!(f.next_frame().unwrap(), Some(Frame::Ping));
        assert_eq!(f.next_frame().unwrap(), None);
        // A lone CRLF (a pong, or RFC 3261 7.5 padding) before a message is skipped.
        let m = msg("");
        f.push(format!("\r\n{m}").as_bytes());
        assert_eq!(drain(&mut f), vec![Frame::Message(Bytes::from(m))]);
    }

    #[test]
    fn oversize_is_refused_without_buffering_it() {
        // Declared body beyond the limit: refused as soon as the header is in.
        let mut f = StreamFramer::new(1024);
        f.push(b"INVITE sip:a SIP/2.0\r\nContent-Length: 5000\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge { max: 1024 }));
        // A header that never ends.
        let mut f = StreamFramer::new(1024);
        let mut err = None;
        for _ in 0..100 {
            f.push(b"X-Junk: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
            match f.next_frame() {
                Ok(None) => {}
                other => {
                    err = Some(other);
                    break;
                }
            }
        }
        assert_eq!(err, Some(Err(FrameError::TooLarge { max: 1024 })));
        assert!(f.buffered() <= 1024 + 64);
        // Exactly at the limit is fine.
        let overhead = msg(&"b".repeat(100)).len() - 100;
        let m = msg(&"b".repeat(1024 - overhead));
        assert_eq!(m.len(), 1024);
        let mut f = StreamFramer::new(1024);
        f.push(m.as_bytes());
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Message(_)))));
    }

    #[test]
    fn bad_lengths() {
        let cases = [
            (
                "INVITE sip:a SIP/2.0\r\nVia: x\r\n\r\n",
                FrameError::NoContentLength,
            ),
            (
                "INVITE sip:a SIP/2.0\r\nContent-Length: -1\r\n\r\n",
                FrameError::BadContentLength("\"-1\"".into()),
            ),
            (
                "INVITE sip:a SIP/2.0\r\nContent-Length: 99999999999999999999\r\n\r\n",
                FrameError::BadContentLength("\"99999999999999999999\"".into()),
            ),
            (
                "INVITE sip:a SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\n",
                FrameError::BadContentLength("conflicting values".into()),
            ),
        ];
        for (m, want) in cases {
            let mut f = StreamFramer::new(4096);
            f.push(m.as_bytes());
            assert_eq!(f.next_frame(), Err(want), "{m:?}");
        }
        // A folded line that looks like a header is not one.
        let mut f = StreamFramer::new(4096);
        f.push(b"INVITE sip:a SIP/2.0\r\nSubject: a\r\n l: 7\r\nContent-Length: 0\r\n\r\n");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Message(_)))));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic fuzz: random bytes biased towards SIP-ish tokens.
        let pieces: [&[u8]; 8] = [
            b"\r\n",
            b"\r",
            b"Content-Length: ",
            b"l:",
            b"12",
            b"INVITE sip:x SIP/2.0",
            b"\x00\xff",
            b"999999999",
        ];
        let mut seed = 0x9e3779b97f4a7c15u64;
        for _ in 0..2000 {
            let mut f = StreamFramer::new(512);
            for _ in 0..40 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                f.push(pieces[(seed % 8) as usize]);
                match f.next_frame() {
                    Ok(_) => assert!(f.buffered() <= 512 + 32),
                    Err(_) => break,
                }
            }
        }
    }
}
