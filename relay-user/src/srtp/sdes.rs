//! SDES (RFC 4568): the value of an `a=crypto:` attribute, parsed and
//! generated. No I/O: the SDP layer hands the text after `a=crypto:` in and
//! writes what [`CryptoAttribute::to_sdp_value`] returns.
//!
//! A line relay cannot honour is an error value for that line
//! ([`SdesError`]); the SDP layer skips it and looks at the next one.

use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use zeroize::Zeroize;

use super::{MasterKey, Suite, replay::WINDOW};

/// Standard base64 (RFC 4568 section 6.1 points to RFC 4648 section 4).
/// Padding is written, and accepted with or without: some peers drop it.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One usable `a=crypto:` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CryptoAttribute {
    /// The tag that ties an answer's line to the offer's (1 to 999999999).
    pub tag: u32,
    /// The master key (its suite is the line's suite).
    pub key: MasterKey,
    /// The key's lifetime in packets, if the line gave one (`|2^31`).
    pub lifetime: Option<u64>,
    /// A window size hint (`WSH=`) the line gave, already known to fit in
    /// our window.
    pub window_hint: Option<u64>,
}

/// Why a line is not usable. Each names what was wrong; none is fatal to
/// the SDP it came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SdesError {
    #[error("a=crypto syntax: {0}")]
    Syntax(&'static str),
    #[error("unsupported crypto suite {0:?}")]
    UnknownSuite(String),
    #[error("unsupported key method {0:?} (only inline)")]
    KeyMethod(String),
    #[error("key material: {0}")]
    BadKey(&'static str),
    #[error("more than one key (needs MKI)")]
    MultipleKeys,
    #[error("MKI is not supported")]
    Mki,
    #[error("unsupported session parameter {0:?}")]
    SessionParam(String),
    #[error("key generation failed")]
    Random,
}

impl CryptoAttribute {
    /// A line with a fresh random key for `suite` (the OS CSPRNG; new bytes on
    /// every call).
    pub fn generate(tag: u32, suite: Suite) -> Result<Self, SdesError> {
        Ok(Self {
            tag,
            key: MasterKey::generate(suite).map_err(|_| SdesError::Random)?,
            lifetime: None,
            window_hint: None,
        })
    }

    /// The line that answers this offered one (RFC 4568 section 6.1): the
    /// same tag and suite, our own fresh key.
    pub fn answer(&self) -> Result<Self, SdesError> {
        Self::generate(self.tag, self.suite())
    }

    pub fn suite(&self) -> Suite {
        self.key.suite()
    }

    /// Parses the value of an `a=crypto:` attribute (the text after the
    /// colon): `tag SP suite SP key-params *(SP session-param)`.
    pub fn parse(value: &str) -> Result<Self, SdesError> {
        let mut fields = value.split_ascii_whitespace();
        let tag = fields.next().ok_or(SdesError::Syntax("empty"))?;
        // RFC 4568: 1*9DIGIT.
        if tag.is_empty() || tag.len() > 9 || !tag.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SdesError::Syntax("tag is not 1 to 9 digits"));
        }
        let tag: u32 = tag.parse().map_err(|_| SdesError::Syntax("tag"))?;
        let suite_name = fields.next().ok_or(SdesError::Syntax("no crypto suite"))?;
        let suite = Suite::from_sdes_name(suite_name)
            .ok_or_else(|| SdesError::UnknownSuite(suite_name.to_string()))?;
        let key_params = fields
            .next()
            .ok_or(SdesError::Syntax("no key parameters"))?;
        if key_params.contains(';') {
            // Several keys are told apart only by MKI, which we do not do.
            return Err(SdesError::MultipleKeys);
        }
        let (method, info) = key_params
            .split_once(':')
            .ok_or(SdesError::Syntax("key parameter without ':'"))?;
        if method != "inline" {
            return Err(SdesError::KeyMethod(method.to_string()));
        }
        let mut parts = info.split('|');
        let key_b64 = parts.next().unwrap_or_default();
        let mut lifetime = None;
        for (i, part) in parts.enumerate() {
            // Order is key|lifetime|MKI, lifetime optional; an MKI has ':'.
            if part.contains(':') {
                return Err(SdesError::Mki);
            }
            if i > 0 || lifetime.is_some() {
                return Err(SdesError::Syntax("too many '|' fields"));
            }
            lifetime = Some(parse_lifetime(part)?);
        }
        let mut material = [0u8; 64];
        let decoded = B64.decode_slice(key_b64.as_bytes(), &mut material);
        let key = match decoded {
            Ok(n) if n == suite.key_material_len() => {
                MasterKey::from_material(suite, &material[..n])
                    .map_err(|_| SdesError::BadKey("length"))
            }
            Ok(_) => Err(SdesError::BadKey("wrong length for the suite")),
            Err(_) => Err(SdesError::BadKey("not base64, or too long")),
        };
        material.zeroize();
        let key = key?;
        let mut window_hint = None;
        for param in fields {
            window_hint = session_param(param)?.or(window_hint);
        }
        Ok(Self {
            tag,
            key,
            lifetime,
            window_hint,
        })
    }

    /// The attribute value for SDP, `tag suite inline:key||salt`. It carries
    /// the key in clear: it belongs in SDP sent over TLS and nowhere else
    /// (this is deliberately not `Display`, so `{}` cannot log it).
    pub fn to_sdp_value(&self) -> String {
        let mut s = format!(
            "{} {} inline:{}",
            self.tag,
            self.suite().sdes_name(),
            B64.encode(self.key.material())
        );
        if let Some(lifetime) = self.lifetime {
            if lifetime.is_power_of_two() {
                s.push_str(&format!("|2^{}", lifetime.trailing_zeros()));
            } else {
                s.push_str(&format!("|{lifetime}"));
            }
        }
        s
    }
}

/// `2^n` or a decimal count of packets.
fn parse_lifetime(s: &str) -> Result<u64, SdesError> {
    let bad = SdesError::Syntax("lifetime");
    if let Some(exp) = s.strip_prefix("2^") {
        let exp: u32 = exp.parse().map_err(|_| bad.clone())?;
        // SRTP indices are 48 bits; anything larger is not a lifetime.
        if exp == 0 || exp > 48 {
            return Err(bad);
        }
        return Ok(1u64 << exp);
    }
    if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    let n: u64 = s.parse().map_err(|_| bad.clone())?;
    if n == 0 {
        return Err(bad);
    }
    Ok(n)
}

/// One session parameter (RFC 4568 section 6.3): what relay honours is
/// accepted (and a window size hint returned); what it cannot honour makes
/// the line unusable. Unknown parameters do too (section 6.3: the receiver
/// must reject what it does not understand), except those that start with
/// '-', which the RFC lets a receiver ignore.
fn session_param(param: &str) -> Result<Option<u64>, SdesError> {
    let unsupported = || SdesError::SessionParam(param.to_string());
    if param.starts_with('-') {
        return Ok(None);
    }
    let (name, value) = param.split_once('=').unwrap_or((param, ""));
    match name {
        // We only ever encrypt and authenticate; a peer that does not would
        // need a context that accepts unprotected packets.
        "UNENCRYPTED_SRTP" | "UNENCRYPTED_SRTCP" | "UNAUTHENTICATED_SRTP" => Err(unsupported()),
        // Key derivation rate: keys are derived once (KDR 0). A rate means
        // rederiving every 2^n packets, which we do not do.
        "KDR" => match value {
            "0" => Ok(None),
            _ => Err(unsupported()),
        },
        // FEC is not ours to order; the default order (SRTP then FEC) is
        // harmless to accept, the reverse is not.
        "FEC_ORDER" => match value {
            "SRTP_FEC" => Ok(None),
            _ => Err(unsupported()),
        },
        "FEC_KEY" => Err(unsupported()),
        // A window size hint: fine while it fits in our window (RFC 4568
        // section 6.3.7 minimum is 64).
        "WSH" => match value.parse::<u64>() {
            Ok(n) if (64..=WINDOW).contains(&n) => Ok(Some(n)),
            _ => Err(unsupported()),
        },
        _ => Err(unsupported()),
    }
}
