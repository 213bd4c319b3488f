//! SRTP and SRTCP contexts: one master key, one direction, every SSRC that
//! direction carries.

use super::{
    Error, MasterKey, Suite,
    crypto::{GCM_TAG, tags_equal},
    kdf,
    replay::{ReplayWindow, estimate_index},
    transform::{Kind, Transform},
};

/// SSRCs whose state one context keeps. A call leg carries one or two; a
/// PBX that changes SSRC on every transfer can run through more, so the least
/// recently used one is forgotten (it then starts again as a new stream).
/// Only authenticated packets create state, so a stranger cannot fill it.
pub const MAX_SSRCS: usize = 16;

const RTP_HEADER: usize = 12;
/// The largest packet [`Context::authenticate_rtp`] checks: more than any
/// UDP payload on an Ethernet path (jumbo frames included).
pub const MAX_PACKET: usize = 9216;
const RTCP_HEADER: usize = 8;
/// The E flag of the SRTCP index word: the payload is encrypted.
const E_FLAG: u32 = 0x8000_0000;
/// SRTCP indices are 31 bits (RFC 3711 section 3.4).
const MAX_RTCP_INDEX: u64 = 0x7fff_ffff;

/// Whether a context protects (sends) or unprotects (receives).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

/// The SRTP and SRTCP state of one direction of one media stream.
///
/// A forwarder holds one per direction per flow (a context is either
/// outbound or inbound: protecting and unprotecting with one context would
/// mean both peers used one key, a two-time pad). Packets are protected
/// and unprotected in place in the caller's buffer (as filled by
/// `recvmmsg`): nothing is allocated per packet.
pub struct Context {
    suite: Suite,
    direction: Direction,
    rtp: Transform,
    rtcp: Transform,
    rtp_streams: Streams,
    rtcp_streams: Streams,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("suite", &self.suite)
            .field("direction", &self.direction)
            .field("rtp_ssrcs", &self.rtp_streams.slots.len())
            .field("rtcp_ssrcs", &self.rtcp_streams.slots.len())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Derives the session keys (the only key setup: no packet pays for it).
    pub fn new(master: &MasterKey, direction: Direction) -> Result<Self, Error> {
        Ok(Self::with_transforms(
            master.suite(),
            direction,
            Transform::derive(master, Kind::Rtp)?,
            Transform::derive(master, Kind::Rtcp)?,
        ))
    }

    pub(crate) fn with_transforms(
        suite: Suite,
        direction: Direction,
        rtp: Transform,
        rtcp: Transform,
    ) -> Self {
        Self {
            suite,
            direction,
            rtp,
            rtcp,
            rtp_streams: Streams::default(),
            rtcp_streams: Streams::default(),
        }
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Protects the RTP packet in `buf[..len]` in place and returns the SRTP
    /// packet's length; `buf` needs [`Suite::rtp_overhead`] bytes of room
    /// after the packet for the tag.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        let tag_len = self.rtp.tag_len();
        let packet = buf.get(..len).ok_or(Error::BufferTooSmall)?;
        let header = rtp_header_len(packet)?;
        let (seq, ssrc) = rtp_seq_ssrc(packet)?;
        let out_len = len.checked_add(tag_len).ok_or(Error::BufferTooSmall)?;
        if out_len > buf.len() {
            return Err(Error::BufferTooSmall);
        }
        // A sender estimates its own index the way a receiver does, so a
        // plain-RTP source that wraps, reorders or restarts is followed; an
        // index used before is refused (libsrtp does the same), since
        // encrypting different data under it would reuse the keystream.
        let index = self.rtp_streams.rtp_index(ssrc, seq)?;
        let roc = (index >> 16) as u32;
        match &self.rtp {
            Transform::Cm {
                ctr, hmac, salt, ..
            } => {
                let (head, rest) = buf.split_at_mut(len);
                let body = head.get_mut(header..).ok_or(Error::Malformed)?;
                ctr.apply(kdf::cm_iv(salt, ssrc, index), body)?;
                let tag = hmac.tag(head, &roc.to_be_bytes());
                let dst = rest.get_mut(..tag_len).ok_or(Error::BufferTooSmall)?;
                dst.copy_from_slice(tag.get(..tag_len).ok_or(Error::Crypto)?);
            }
            Transform::Gcm { gcm, salt } => {
                let (aad, rest) = buf.split_at_mut(header);
                let (body, after) = rest.split_at_mut(len - header);
                let tag = gcm.seal(kdf::gcm_rtp_iv(salt, ssrc, index), aad, body)?;
                after
                    .get_mut(..GCM_TAG)
                    .ok_or(Error::BufferTooSmall)?
                    .copy_from_slice(&tag);
            }
        }
        self.rtp_streams.accept(ssrc, index);
        Ok(out_len)
    }

    /// Checks and decrypts the SRTP packet `buf` in place and returns the
    /// length of the RTP packet now at its start. A failed packet changes no
    /// state (only authenticated packets move the replay window or create
    /// an SSRC); its bytes may have been overwritten.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let tag_len = self.rtp.tag_len();
        if buf.len() < RTP_HEADER + tag_len {
            return Err(Error::TooShort);
        }
        let auth_end = buf.len() - tag_len;
        let header = rtp_header_len(buf.get(..auth_end).ok_or(Error::TooShort)?)?;
        let (seq, ssrc) = rtp_seq_ssrc(buf)?;
        let index = self.rtp_streams.rtp_index(ssrc, seq)?;
        let roc = (index >> 16) as u32;
        match &self.rtp {
            Transform::Cm {
                ctr, hmac, salt, ..
            } => {
                let (auth, tag) = buf.split_at_mut(auth_end);
                let expected = hmac.tag(auth, &roc.to_be_bytes());
                if !tags_equal(expected.get(..tag_len).ok_or(Error::Crypto)?, tag) {
                    return Err(Error::AuthFailed);
                }
                let body = auth.get_mut(header..).ok_or(Error::Malformed)?;
                ctr.apply(kdf::cm_iv(salt, ssrc, index), body)?;
            }
            Transform::Gcm { gcm, salt } => {
                let (aad, rest) = buf.split_at_mut(header);
                gcm.open(kdf::gcm_rtp_iv(salt, ssrc, index), aad, rest)?;
            }
        }
        self.rtp_streams.accept(ssrc, index);
        Ok(auth_end)
    }

    /// Checks an SRTP packet's authentication without touching it, for
    /// authenticated latching: on a pass-through leg whose peer address must
    /// be learned, the first packets come up from XDP and only one that
    /// passes this (with the negotiated key) may lock the source. It works on
    /// a copy, and moves the replay window like [`Self::unprotect_rtp`], so a
    /// genuine packet replayed from another address cannot latch after the
    /// genuine one was seen.
    pub fn authenticate_rtp(&mut self, packet: &[u8]) -> Result<(), Error> {
        let mut copy = [0u8; MAX_PACKET];
        let copy = copy.get_mut(..packet.len()).ok_or(Error::Malformed)?;
        copy.copy_from_slice(packet);
        self.unprotect_rtp(copy).map(|_| ())
    }

    /// Protects the RTCP compound packet in `buf[..len]` in place (always
    /// encrypted: E = 1) and returns the SRTCP packet's length; `buf` needs
    /// [`Suite::rtcp_overhead`] bytes of room after it.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        let tag_len = self.rtcp.tag_len();
        let packet = buf.get(..len).ok_or(Error::BufferTooSmall)?;
        let ssrc = rtcp_ssrc(packet)?;
        let out_len = len.checked_add(4 + tag_len).ok_or(Error::BufferTooSmall)?;
        if out_len > buf.len() {
            return Err(Error::BufferTooSmall);
        }
        // The SRTCP index starts at 0 and counts every packet sent for this
        // SSRC (RFC 3711 section 3.4); at 2^31 the key is spent.
        let index = match self.rtcp_streams.get(ssrc) {
            Some(w) => w.highest() + 1,
            None => 0,
        };
        if index > MAX_RTCP_INDEX {
            return Err(Error::KeyExhausted);
        }
        let word = (E_FLAG | index as u32).to_be_bytes();
        match &self.rtcp {
            Transform::Cm {
                ctr, hmac, salt, ..
            } => {
                ctr.apply(
                    kdf::cm_iv(salt, ssrc, index),
                    buf.get_mut(RTCP_HEADER..len).ok_or(Error::TooShort)?,
                )?;
                buf.get_mut(len..len + 4)
                    .ok_or(Error::BufferTooSmall)?
                    .copy_from_slice(&word);
                let (auth, tag) = buf.split_at_mut(len + 4);
                let t = hmac.tag(auth, &[]);
                tag.get_mut(..tag_len)
                    .ok_or(Error::BufferTooSmall)?
                    .copy_from_slice(t.get(..tag_len).ok_or(Error::Crypto)?);
            }
            Transform::Gcm { gcm, salt } => {
                let mut aad = [0u8; RTCP_HEADER + 4];
                aad[..RTCP_HEADER].copy_from_slice(packet_head(buf)?);
                aad[RTCP_HEADER..].copy_from_slice(&word);
                let body = buf.get_mut(RTCP_HEADER..len).ok_or(Error::TooShort)?;
                let tag = gcm.seal(kdf::gcm_rtcp_iv(salt, ssrc, index as u32), &aad, body)?;
                buf.get_mut(len..len + GCM_TAG)
                    .ok_or(Error::BufferTooSmall)?
                    .copy_from_slice(&tag);
                buf.get_mut(len + GCM_TAG..len + GCM_TAG + 4)
                    .ok_or(Error::BufferTooSmall)?
                    .copy_from_slice(&word);
            }
        }
        self.rtcp_streams.accept(ssrc, index);
        Ok(out_len)
    }

    /// Checks and (when its E flag says so) decrypts the SRTCP packet `buf`
    /// in place and returns the length of the RTCP packet now at its start.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let tag_len = self.rtcp.tag_len();
        let n = buf.len();
        if n < RTCP_HEADER + 4 + tag_len {
            return Err(Error::TooShort);
        }
        let ssrc = rtcp_ssrc(buf)?;
        // AES-CM: ... || E+index || tag. GCM: ... || tag || E+index.
        let word_at = match &self.rtcp {
            Transform::Cm { .. } => n - tag_len - 4,
            Transform::Gcm { .. } => n - 4,
        };
        let word = read_u32(buf, word_at)?;
        let encrypted = word & E_FLAG != 0;
        let index = u64::from(word & !E_FLAG);
        if let Some(w) = self.rtcp_streams.get(ssrc) {
            w.check(index)?;
        }
        let plain_len = n - tag_len - 4;
        match &self.rtcp {
            Transform::Cm {
                ctr, hmac, salt, ..
            } => {
                let (auth, tag) = buf.split_at_mut(n - tag_len);
                let expected = hmac.tag(auth, &[]);
                if !tags_equal(expected.get(..tag_len).ok_or(Error::Crypto)?, tag) {
                    return Err(Error::AuthFailed);
                }
                if encrypted {
                    let body = auth
                        .get_mut(RTCP_HEADER..plain_len)
                        .ok_or(Error::TooShort)?;
                    ctr.apply(kdf::cm_iv(salt, ssrc, index), body)?;
                }
            }
            Transform::Gcm { gcm, salt } => {
                let nonce = kdf::gcm_rtcp_iv(salt, ssrc, index as u32);
                let word = word.to_be_bytes();
                if encrypted {
                    let mut aad = [0u8; RTCP_HEADER + 4];
                    aad[..RTCP_HEADER].copy_from_slice(packet_head(buf)?);
                    aad[RTCP_HEADER..].copy_from_slice(&word);
                    let body = buf.get_mut(RTCP_HEADER..n - 4).ok_or(Error::TooShort)?;
                    gcm.open(nonce, &aad, body)?;
                } else {
                    // E = 0 (RFC 7714 section 9.2): the whole packet and the
                    // index word are AAD, the plaintext is empty. Swap the
                    // tag and the word so the AAD is one slice:
                    // [rtcp | word | tag].
                    let mut tag = [0u8; GCM_TAG];
                    tag.copy_from_slice(buf.get(plain_len..n - 4).ok_or(Error::TooShort)?);
                    buf.get_mut(plain_len..plain_len + 4)
                        .ok_or(Error::TooShort)?
                        .copy_from_slice(&word);
                    buf.get_mut(plain_len + 4..n)
                        .ok_or(Error::TooShort)?
                        .copy_from_slice(&tag);
                    let (aad, tag) = buf.split_at_mut(plain_len + 4);
                    gcm.open(nonce, aad, tag)?;
                }
            }
        }
        self.rtcp_streams.accept(ssrc, index);
        Ok(plain_len)
    }

    /// The highest SRTP index (ROC << 16 | SEQ) seen or sent for `ssrc`.
    pub fn rtp_index(&self, ssrc: u32) -> Option<u64> {
        self.rtp_streams.peek(ssrc).map(|w| w.highest())
    }

    /// The highest SRTCP index seen or sent for `ssrc`.
    pub fn rtcp_index(&self, ssrc: u32) -> Option<u32> {
        self.rtcp_streams.peek(ssrc).map(|w| w.highest() as u32)
    }

    /// Starts the SRTP state of `ssrc` at `index` as if that packet had been
    /// seen: for a sender taking over a stream whose ROC is known from
    /// elsewhere (RFC 3711 section 3.3.1 leaves ROC signalling to the
    /// application), and for tests near the wrap.
    pub fn set_rtp_index(&mut self, ssrc: u32, index: u64) {
        self.rtp_streams.set(ssrc, ReplayWindow::starting_at(index));
    }

    /// Makes `index` the last SRTCP index sent or seen for `ssrc` (tests: the
    /// RFC 7714 vectors use index 0x5d4).
    #[cfg(test)]
    pub(crate) fn set_rtcp_index(&mut self, ssrc: u32, index: u32) {
        self.rtcp_streams
            .set(ssrc, ReplayWindow::starting_at(u64::from(index)));
    }
}

fn packet_head(buf: &[u8]) -> Result<&[u8], Error> {
    buf.get(..RTCP_HEADER).ok_or(Error::TooShort)
}

fn read_u32(buf: &[u8], at: usize) -> Result<u32, Error> {
    let b = buf.get(at..at + 4).ok_or(Error::TooShort)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The RTP header's length: 12 bytes, the CSRCs, the extension.
pub(crate) fn rtp_header_len(packet: &[u8]) -> Result<usize, Error> {
    let first = *packet.first().ok_or(Error::TooShort)?;
    if packet.len() < RTP_HEADER {
        return Err(Error::TooShort);
    }
    if first >> 6 != 2 {
        return Err(Error::Malformed);
    }
    let mut len = RTP_HEADER + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let ext = packet.get(len..len + 4).ok_or(Error::Malformed)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    if len > packet.len() {
        return Err(Error::Malformed);
    }
    Ok(len)
}

fn rtp_seq_ssrc(packet: &[u8]) -> Result<(u16, u32), Error> {
    let seq = packet.get(2..4).ok_or(Error::TooShort)?;
    Ok((u16::from_be_bytes([seq[0], seq[1]]), read_u32(packet, 8)?))
}

fn rtcp_ssrc(packet: &[u8]) -> Result<u32, Error> {
    let first = *packet.first().ok_or(Error::TooShort)?;
    if packet.len() < RTCP_HEADER {
        return Err(Error::TooShort);
    }
    if first >> 6 != 2 {
        return Err(Error::Malformed);
    }
    read_u32(packet, 4)
}

/// Per-SSRC replay windows, least recently used forgotten first. A linear
/// scan: a context holds a handful of SSRCs and the last one used is
/// checked first.
#[derive(Default)]
struct Streams {
    slots: Vec<(u32, ReplayWindow, u64)>,
    clock: u64,
    last: usize,
}

impl Streams {
    fn find(&self, ssrc: u32) -> Option<usize> {
        if self.slots.get(self.last).is_some_and(|s| s.0 == ssrc) {
            return Some(self.last);
        }
        self.slots.iter().position(|s| s.0 == ssrc)
    }

    fn get(&mut self, ssrc: u32) -> Option<&ReplayWindow> {
        let i = self.find(ssrc)?;
        self.last = i;
        self.slots.get(i).map(|s| &s.1)
    }

    fn peek(&self, ssrc: u32) -> Option<&ReplayWindow> {
        self.find(ssrc)
            .and_then(|i| self.slots.get(i))
            .map(|s| &s.1)
    }

    /// The SRTP index of packet `seq` of `ssrc`, estimated from the highest
    /// index so far (RFC 3711 appendix A), and refused when it was seen
    /// already or is older than the replay window. A new SSRC starts with
    /// ROC 0 (section 3.3.1). For sender and receiver alike; nothing changes
    /// until [`Self::accept`].
    fn rtp_index(&mut self, ssrc: u32, seq: u16) -> Result<u64, Error> {
        match self.get(ssrc) {
            Some(w) => {
                let index = estimate_index(w.highest(), seq)?;
                w.check(index)?;
                Ok(index)
            }
            None => Ok(u64::from(seq)),
        }
    }

    fn accept(&mut self, ssrc: u32, index: u64) {
        self.clock += 1;
        let clock = self.clock;
        match self.find(ssrc) {
            Some(i) => {
                if let Some(s) = self.slots.get_mut(i) {
                    s.1.accept(index);
                    s.2 = clock;
                }
            }
            None => self.set(ssrc, ReplayWindow::starting_at(index)),
        }
    }

    fn set(&mut self, ssrc: u32, window: ReplayWindow) {
        self.clock += 1;
        let entry = (ssrc, window, self.clock);
        if let Some(i) = self.find(ssrc) {
            if let Some(s) = self.slots.get_mut(i) {
                *s = entry;
            }
            return;
        }
        if self.slots.len() < MAX_SSRCS {
            self.slots.push(entry);
            self.last = self.slots.len() - 1;
            return;
        }
        // Full: the least recently used SSRC makes room.
        if let Some((i, _)) = self.slots.iter().enumerate().min_by_key(|(_, s)| s.2)
            && let Some(s) = self.slots.get_mut(i)
        {
            *s = entry;
            self.last = i;
        }
    }
}
