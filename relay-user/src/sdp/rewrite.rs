//! The relay's rewrite: each line is written untouched or replaced whole.

use std::net::IpAddr;

use super::{Rewrite, Sdp, SdpError, parse::fields};

/// Attributes `Rewrite::strip_ice` removes.
const ICE_ATTRIBUTES: &[&str] = &[
    "candidate",
    "remote-candidates",
    "ice-ufrag",
    "ice-pwd",
    "ice-options",
    "ice-lite",
    "ice-mismatch",
    "ice-pacing",
    "end-of-candidates",
];

pub(super) fn rewrite(sdp: &Sdp, rw: &Rewrite) -> Result<String, SdpError> {
    if rw.media.len() != sdp.media.len() {
        return Err(SdpError::RewriteMismatch {
            expected: sdp.media.len(),
            got: rw.media.len(),
        });
    }
    for (section, mr) in sdp.media.iter().zip(&rw.media) {
        if section.media.formats.is_empty() && mr.port.is_some_and(|p| p != 0) {
            // Only a rejected stream may lack formats (see the parser).
            return Err(SdpError::BadMediaRewrite {
                index: section.media.index,
                reason: "a stream without formats cannot get a port",
            });
        }
    }
    let mut out = String::with_capacity(sdp.text.len() + 64 * (1 + sdp.media.len()));

    let origin_line = sdp.origin.as_ref().map(|o| o.line);
    for i in 0..sdp.session_end {
        let line = sdp.line(i);
        if origin_line == Some(i) {
            origin(&mut out, line, rw.addr);
        } else if let Some((_, original)) = sdp.session_connection.filter(|(c, _)| *c == i) {
            connection(&mut out, line, original, rw.addr);
        } else if !(rw.strip_ice && is_ice(line)) {
            push_line(&mut out, line);
        }
    }

    for (section, mr) in sdp.media.iter().zip(&rw.media) {
        // A stream without any c= is one the peer rejected (the parser allows
        // that only for port 0). When the relay gives it a port anyway, it
        // needs an address: a media-level c= after the m= and i= lines.
        let mut add_connection =
            section.media.connection.is_none() && mr.port.is_some_and(|p| p != 0);
        // The replacement a=crypto lines, until written.
        let mut crypto = mr.crypto.as_deref();
        for i in section.start..section.end {
            let line = sdp.line(i);
            if add_connection && i != section.start && !line.starts_with("i=") {
                relay_connection(&mut out, rw.addr);
                add_connection = false;
            }
            if i == section.start {
                media_line(&mut out, line, mr.port, mr.proto.as_deref());
            } else if mr.crypto.is_some() && is_crypto(line) {
                if let Some(values) = crypto.take() {
                    crypto_lines(&mut out, values);
                }
            } else if section.connection_line == Some(i) {
                // Parsed from this very line, so present.
                let original = section.media.connection.unwrap_or(rw.addr);
                connection(&mut out, line, original, rw.addr);
            } else if section.rtcp_line == Some(i) {
                if let (Some(port), Some((_, address))) = (mr.rtcp_port, section.media.rtcp) {
                    rtcp(&mut out, line, port, address, rw.addr);
                }
            } else if section.direction_line == Some(i) {
                match mr.direction {
                    Some(d) => push_parts(&mut out, &["a=", d.as_str()]),
                    None => push_line(&mut out, line),
                }
            } else if !(rw.strip_ice && is_ice(line)) {
                push_line(&mut out, line);
            }
        }
        if add_connection {
            relay_connection(&mut out, rw.addr);
        }
        if let Some(values) = crypto {
            crypto_lines(&mut out, values);
        }
        if section.rtcp_line.is_none() {
            if let Some(port) = mr.rtcp_port {
                push_parts(&mut out, &["a=rtcp:", &port.to_string()]);
            }
        }
        if section.direction_line.is_none() {
            if let Some(d) = mr.direction {
                push_parts(&mut out, &["a=", d.as_str()]);
            }
        }
    }
    Ok(out)
}

/// o=: username, sess-id, sess-version and nettype as written; addrtype and
/// address of the relay.
fn origin(out: &mut String, line: &str, addr: IpAddr) {
    let value = &line[2..];
    match fields(value).get(4) {
        Some(addrtype) => push_parts(
            out,
            &[
                "o=",
                &value[..addrtype.start],
                addrtype_of(addr),
                " ",
                &addr.to_string(),
            ],
        ),
        None => push_line(out, line),
    }
}

/// c=: the relay address, except a hold address (0.0.0.0 or ::, RFC 3264
/// section 8.4), which stays as written.
fn connection(out: &mut String, line: &str, original: IpAddr, addr: IpAddr) {
    if original.is_unspecified() {
        push_line(out, line);
    } else {
        relay_connection(out, addr);
    }
}

fn relay_connection(out: &mut String, addr: IpAddr) {
    push_parts(out, &["c=IN ", addrtype_of(addr), " ", &addr.to_string()]);
}

/// m=: the port and the profile replaced, a `/count` suffix and everything
/// else kept.
fn media_line(out: &mut String, line: &str, port: Option<u16>, proto: Option<&str>) {
    let value = &line[2..];
    let f = fields(value);
    let (Some(port_field), Some(proto_field)) = (f.get(1).cloned(), f.get(2).cloned()) else {
        push_line(out, line);
        return;
    };
    let port_end = value[port_field.clone()]
        .find('/')
        .map_or(port_field.end, |slash| port_field.start + slash);
    let port = port.map_or_else(
        || value[port_field.start..port_end].to_string(),
        |p| p.to_string(),
    );
    push_parts(
        out,
        &[
            "m=",
            &value[..port_field.start],
            &port,
            &value[port_end..proto_field.start],
            proto.unwrap_or(&value[proto_field.clone()]),
            &value[proto_field.end..],
        ],
    );
}

fn crypto_lines(out: &mut String, values: &[String]) {
    for v in values {
        push_parts(out, &["a=crypto:", v]);
    }
}

/// a=rtcp: the new port, with the relay address when the line had an address
/// (a hold address stays as written).
fn rtcp(out: &mut String, line: &str, port: u16, original: Option<IpAddr>, addr: IpAddr) {
    let port = port.to_string();
    match original {
        None => push_parts(out, &["a=rtcp:", &port]),
        Some(a) if a.is_unspecified() => {
            let value = line.get("a=rtcp:".len()..).unwrap_or_default();
            let rest = fields(value).get(1).map_or("", |f| &value[f.start..]);
            push_parts(out, &["a=rtcp:", &port, " ", rest]);
        }
        Some(_) => push_parts(
            out,
            &[
                "a=rtcp:",
                &port,
                " IN ",
                addrtype_of(addr),
                " ",
                &addr.to_string(),
            ],
        ),
    }
}

/// An `a=crypto` attribute, as the parser counts them (with or without a
/// value).
pub(super) fn is_crypto(line: &str) -> bool {
    line == "a=crypto" || line.starts_with("a=crypto:")
}

pub(super) fn is_ice(line: &str) -> bool {
    let Some(value) = line.strip_prefix("a=") else {
        return false;
    };
    let name = value.split_once(':').map_or(value, |(name, _)| name);
    ICE_ATTRIBUTES.contains(&name)
}

fn addrtype_of(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

fn push_line(out: &mut String, line: &str) {
    out.push_str(line);
    out.push_str("\r\n");
}

fn push_parts(out: &mut String, parts: &[&str]) {
    for p in parts {
        out.push_str(p);
    }
    out.push_str("\r\n");
}
