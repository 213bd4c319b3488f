//! The forwarder's SRTP step for one flow: unprotect with the sending peer's
//! key and/or protect with the receiving peer's, in place in the receive
//! buffer. One context per direction per flow, owned by the flow's entry.

use relay_common::DropReason;

use crate::{
    rule::RuleSrtp,
    srtp::{self, Context, Direction},
};

/// The SRTP state of one flow (one direction of one stream component).
pub struct FlowCrypto {
    /// What arrives: unprotected (transcrypt to plain, re-key), or only
    /// authenticated (pass-through, before the source is learned).
    inbound: Option<Context>,
    /// What leaves: protected with the receiving peer's key.
    outbound: Option<Context>,
    /// Same key both legs: packets cross unchanged once authenticated.
    passthrough: bool,
    /// Sequence numbers of a plain source this flow encrypts.
    shift: SeqShift,
}

/// Sequence numbers of a plain source the relay encrypts. SRTP never
/// protects two packets under one index, so a source that restarts its
/// sequence numbers while keeping its SSRC (a PBX after a transfer, a media
/// server switching prompts) would be refused as older than the replay
/// window until it passed its old highest number, up to 65,535 packets
/// (21 minutes of audio) later. Instead the relay shifts the numbers it
/// sends so they go on from the highest it sent: the SRTP peer sees one
/// continuous stream. Reordering and duplicates inside the window are not
/// restarts: they keep the current shift (a duplicate is still refused).
#[derive(Debug, Default)]
struct SeqShift {
    /// Added to every arriving sequence number.
    shift: u16,
    /// The highest sequence number sent so far (serial arithmetic).
    highest: Option<u16>,
}

impl SeqShift {
    /// Rewrites the packet's sequence number with the current shift.
    fn apply(&self, packet: &mut [u8]) {
        if let Some(seq) = packet.get_mut(2..4) {
            let shifted = u16::from_be_bytes([seq[0], seq[1]]).wrapping_add(self.shift);
            seq.copy_from_slice(&shifted.to_be_bytes());
        }
    }

    /// The source restarted: the packet (already shifted by [`Self::apply`])
    /// gets the number after the highest sent, and so do the ones after it.
    fn restart(&mut self, packet: &mut [u8]) {
        let (Some(highest), Some(seq)) = (self.highest, packet.get_mut(2..4)) else {
            return;
        };
        let sent = u16::from_be_bytes([seq[0], seq[1]]);
        let next = highest.wrapping_add(1);
        self.shift = self.shift.wrapping_add(next.wrapping_sub(sent));
        seq.copy_from_slice(&next.to_be_bytes());
    }

    /// Notes a sequence number that was sent.
    fn sent(&mut self, packet: &[u8]) {
        let Some(seq) = packet.get(2..4) else {
            return;
        };
        let seq = u16::from_be_bytes([seq[0], seq[1]]);
        if self.highest.is_none_or(|h| seq.wrapping_sub(h) < 0x8000) {
            self.highest = Some(seq);
        }
    }
}

impl FlowCrypto {
    /// Contexts for a rule's keys (None when it has none).
    pub fn new(keys: &RuleSrtp) -> Result<Option<Self>, srtp::Error> {
        if keys.inbound.is_none() && keys.outbound.is_none() {
            return Ok(None);
        }
        let passthrough = keys.passthrough();
        let inbound = keys
            .inbound
            .as_ref()
            .map(|k| Context::new(k, Direction::Inbound))
            .transpose()?;
        let outbound = match &keys.outbound {
            Some(k) if !passthrough => Some(Context::new(k, Direction::Outbound)?),
            _ => None,
        };
        Ok(Some(Self {
            inbound,
            outbound,
            passthrough,
            shift: SeqShift::default(),
        }))
    }

    /// Processes the packet in `buf[..len]` (RTCP when `rtcp`) and returns
    /// its new length. `buf` must have room for the tag past `len`. On an
    /// error nothing was learned and the packet must be dropped.
    pub fn apply(&mut self, buf: &mut [u8], len: usize, rtcp: bool) -> Result<usize, srtp::Error> {
        let mut len = len;
        if let Some(ctx) = &mut self.inbound {
            let packet = buf.get_mut(..len).ok_or(srtp::Error::BufferTooSmall)?;
            if self.passthrough {
                // The packet leaves as it came: check it on a copy.
                if rtcp {
                    let mut copy = packet.to_vec();
                    ctx.unprotect_rtcp(&mut copy)?;
                } else {
                    ctx.authenticate_rtp(packet)?;
                }
                return Ok(len);
            }
            len = if rtcp {
                ctx.unprotect_rtcp(packet)?
            } else {
                ctx.unprotect_rtp(packet)?
            };
        }
        if let Some(ctx) = &mut self.outbound {
            len = if rtcp {
                ctx.protect_rtcp(buf, len)?
            } else if self.inbound.is_some() {
                // An SRTP source's numbers passed its own replay check.
                ctx.protect_rtp(buf, len)?
            } else {
                self.shift.apply(buf);
                let out = match ctx.protect_rtp(buf, len) {
                    Err(srtp::Error::TooOld) => {
                        self.shift.restart(buf);
                        ctx.protect_rtp(buf, len)?
                    }
                    r => r?,
                };
                self.shift.sent(buf);
                out
            };
        }
        Ok(len)
    }
}

/// The drop reason a failed packet is counted under.
pub fn drop_reason(e: srtp::Error) -> DropReason {
    if e.is_replay() {
        DropReason::SrtpReplay
    } else {
        DropReason::SrtpAuth
    }
}

/// Room a receive buffer keeps past the largest packet it accepts, so a
/// plain packet can be protected where it lies (the largest SRTCP overhead:
/// index and a 16-byte tag).
pub const TAG_ROOM: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::{MasterKey, Suite};

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 8, 0, 0, 0, 0, 0, 160, 0x12, 0x34, 0x56, 0x78];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.extend([seq as u8; 160]);
        p
    }

    /// Encrypts `seq` from a plain source; the SRTP peer's view: the
    /// sequence number it got, after unprotecting it.
    fn send(relay: &mut FlowCrypto, peer: &mut Context, seq: u16) -> Result<u16, srtp::Error> {
        let plain = rtp(seq);
        let mut buf = plain.clone();
        buf.resize(plain.len() + TAG_ROOM, 0);
        let n = relay.apply(&mut buf, plain.len(), false)?;
        let n = peer
            .unprotect_rtp(&mut buf[..n])
            .expect("the peer unprotects");
        assert_eq!(buf[12..n], plain[12..], "payload intact");
        Ok(u16::from_be_bytes([buf[2], buf[3]]))
    }

    #[test]
    fn a_plain_source_that_restarts_its_sequence_goes_on_seamlessly() {
        let key = MasterKey::generate(Suite::AesCm128HmacSha1_80).unwrap();
        let keys = RuleSrtp {
            inbound: None,
            outbound: Some(key.clone()),
        };
        let mut relay = FlowCrypto::new(&keys).unwrap().unwrap();
        let mut peer = Context::new(&key, Direction::Inbound).unwrap();
        for seq in 1000..1200 {
            assert_eq!(send(&mut relay, &mut peer, seq), Ok(seq));
        }
        // A duplicate inside the window is refused, not taken for a restart.
        assert_eq!(send(&mut relay, &mut peer, 1195), Err(srtp::Error::Replay));
        // The source restarts at 10: the peer sees 1200, 1201, ...
        for (i, seq) in (10..60).enumerate() {
            assert_eq!(send(&mut relay, &mut peer, seq), Ok(1200 + i as u16));
        }
        // A late packet of the new run is still a duplicate, not a restart.
        assert_eq!(send(&mut relay, &mut peer, 30), Err(srtp::Error::Replay));
        // Wrapping past 65535 after a shift: the ROC follows.
        let mut last = 0;
        for seq in 60..(60 + 70_000u32) {
            last = send(&mut relay, &mut peer, seq as u16).unwrap();
        }
        assert_eq!(last, (1249u32 + 70_000) as u16);
    }
}
