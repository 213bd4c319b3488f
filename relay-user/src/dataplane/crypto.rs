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
            } else {
                ctx.protect_rtp(buf, len)?
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
