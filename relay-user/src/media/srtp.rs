//! SRTP in calls: per-leg policy, the SDES offer/answer the relay does on
//! each leg, and the keys each flow direction needs. Pure logic like the rest
//! of the media core; keys come from the OS CSPRNG (`srtp::sdes`).
//!
//! SDES (RFC 4568) puts in each SDP the key its writer *sends* with. So for
//! every leg and stream the relay keeps the key the peer protects with
//! (`peer_key`, from the peer's SDP: what arrives is unprotected with it) and
//! the key the relay protects with toward that peer (`relay_key`, written in
//! the SDP the relay sends to the peer). A flow from leg A to leg B then
//! unprotects with A's `peer_key` and protects with B's `relay_key`:
//!
//! | A side | B side | flow mode |
//! |---|---|---|
//! | plain | plain | plain (XDP) |
//! | SRTP | plain | decrypt (userspace) |
//! | plain | SRTP | encrypt (userspace) |
//! | SRTP | SRTP, relay's own keys | re-key (userspace) |
//! | SRTP | SRTP, the offerer's keys forwarded | pass-through (XDP) |

use serde::{Deserialize, Serialize};

use crate::{
    rule::RuleSrtp,
    srtp::{MasterKey, Suite, sdes::CryptoAttribute},
};

/// What a leg must speak, from the interface (`srtp = ...`), a SIP trunk or
/// an NG `transport-protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SrtpPolicy {
    /// SRTP only: a plain offer from this leg is refused, and the relay
    /// offers RTP/SAVP to it.
    Required,
    /// Whatever the other leg speaks: SRTP toward this leg when the other
    /// leg offered SRTP (with the relay's keys), plain otherwise.
    #[default]
    Optional,
    /// Plain RTP only: a=crypto is removed toward this leg, and an RTP/SAVP
    /// offer from it is refused (an a=crypto on RTP/AVP is ignored).
    Off,
}

impl SrtpPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SrtpPolicy::Required => "required",
            SrtpPolicy::Optional => "optional",
            SrtpPolicy::Off => "off",
        }
    }
}

/// Per call SRTP choices (NG flags; SIP trunks use the defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrtpOptions {
    /// Forward the offerer's keys unchanged when both legs are SRTP, so the
    /// flow stays in XDP. Each leg then learns the other's key; off by
    /// default (re-key).
    pub passthrough: bool,
    /// Suites the relay offers and accepts, in its order of preference.
    pub suites: Vec<Suite>,
}

impl Default for SrtpOptions {
    fn default() -> Self {
        Self {
            passthrough: false,
            suites: Suite::ALL.to_vec(),
        }
    }
}

/// One leg's SRTP state for one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SideSrtp {
    /// The key the peer protects with (from its SDP), once known.
    pub peer_key: Option<MasterKey>,
    /// The relay's line toward the peer (its key protects what the relay
    /// sends there), once agreed.
    pub relay_line: Option<CryptoAttribute>,
    /// Lines the relay offered the peer, until the peer answers one.
    pub offered: Vec<CryptoAttribute>,
    /// The offerer's lines were forwarded unchanged (pass-through).
    pub passthrough: bool,
}

/// Why SRTP negotiation refused an SDP (SIP: 488 Not Acceptable Here).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SrtpError {
    #[error("m-line {index}: leg requires SRTP, offer has no usable a=crypto ({why})")]
    Required { index: usize, why: String },
    #[error("m-line {index}: RTP/SAVP offered on a leg with srtp=off")]
    Forbidden { index: usize },
    #[error("m-line {index}: RTP/SAVP offered without a usable a=crypto ({why})")]
    NoUsableCrypto { index: usize, why: String },
    #[error("m-line {index}: answer accepts none of the relay's a=crypto lines")]
    AnswerWithoutCrypto { index: usize },
    #[error("key generation failed")]
    Random,
}

/// RTP/SAVP, RTP/SAVPF (SDES-keyed SRTP profiles).
pub fn is_srtp_profile(proto: &str) -> bool {
    proto.eq_ignore_ascii_case("RTP/SAVP") || proto.eq_ignore_ascii_case("RTP/SAVPF")
}

/// The SRTP profile for a plain one (feedback kept), else unchanged.
pub fn srtp_profile(proto: &str) -> String {
    if proto.eq_ignore_ascii_case("RTP/AVP") {
        "RTP/SAVP".into()
    } else if proto.eq_ignore_ascii_case("RTP/AVPF") {
        "RTP/SAVPF".into()
    } else {
        proto.into()
    }
}

/// The plain profile for an SRTP one (feedback kept), else unchanged.
pub fn plain_profile(proto: &str) -> String {
    if proto.eq_ignore_ascii_case("RTP/SAVP") {
        "RTP/AVP".into()
    } else if proto.eq_ignore_ascii_case("RTP/SAVPF") {
        "RTP/AVPF".into()
    } else {
        proto.into()
    }
}

/// Profiles this module negotiates: RTP/AVP(F) and RTP/SAVP(F). Others
/// (DTLS-SRTP's UDP/TLS/RTP/SAVPF, T.38's udptl) pass as they are.
pub fn is_rtp_profile(proto: &str) -> bool {
    ["RTP/AVP", "RTP/AVPF", "RTP/SAVP", "RTP/SAVPF"]
        .iter()
        .any(|p| proto.eq_ignore_ascii_case(p))
}

/// The usable lines of an m-line, in the writer's order, restricted to
/// `suites`; and the reason the first unusable one failed (for errors).
pub fn usable_lines(values: &[String], suites: &[Suite]) -> (Vec<CryptoAttribute>, String) {
    let mut out = Vec::new();
    let mut why = String::new();
    for v in values {
        match CryptoAttribute::parse(v) {
            Ok(c) if suites.contains(&c.suite()) => out.push(c),
            Ok(c) => {
                if why.is_empty() {
                    why = format!("suite {} not allowed", c.suite());
                }
            }
            Err(e) => {
                if why.is_empty() {
                    why = e.to_string();
                }
            }
        }
    }
    if why.is_empty() && values.is_empty() {
        why = "no a=crypto line".into();
    }
    (out, why)
}

/// Fresh lines for an offer, one per suite, tags from 1.
pub fn fresh_offer(suites: &[Suite]) -> Result<Vec<CryptoAttribute>, SrtpError> {
    suites
        .iter()
        .zip(1u32..)
        .map(|(s, tag)| CryptoAttribute::generate(tag, *s).map_err(|_| SrtpError::Random))
        .collect()
}

/// The values for `a=crypto:` lines.
pub fn sdp_values(lines: &[CryptoAttribute]) -> Vec<String> {
    lines.iter().map(CryptoAttribute::to_sdp_value).collect()
}

/// The keys of the flow from side `src` to side `dst` (None: plain both).
/// `Err(())` when a side is SRTP but its key is not agreed yet: the flow
/// must not run (no plaintext toward a leg that negotiated SRTP).
#[expect(clippy::result_unit_err, reason = "the caller only blocks the flow")]
pub fn flow_keys(src: Option<&SideSrtp>, dst: Option<&SideSrtp>) -> Result<Option<RuleSrtp>, ()> {
    let inbound = match src {
        Some(s) => Some(s.peer_key.clone().ok_or(())?),
        None => None,
    };
    let outbound = match dst {
        Some(d) => Some(d.relay_line.as_ref().ok_or(())?.key.clone()),
        None => None,
    };
    if inbound.is_none() && outbound.is_none() {
        return Ok(None);
    }
    Ok(Some(RuleSrtp { inbound, outbound }))
}
