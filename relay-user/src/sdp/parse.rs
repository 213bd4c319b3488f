//! The parser: splits the lines, checks their shape, and indexes the lines the
//! relay reads. Nothing here panics on any input (see the fuzz tests).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::Range,
};

use super::{Direction, MAX_MEDIA, MAX_SDP_LEN, Media, MediaSection, Origin, Sdp, SdpError};

pub(super) fn parse(text: &str) -> Result<Sdp, SdpError> {
    if text.len() > MAX_SDP_LEN {
        return Err(SdpError::TooLarge {
            len: text.len(),
            max: MAX_SDP_LEN,
        });
    }
    let lines = split_lines(text);
    if lines.is_empty() {
        return Err(SdpError::Empty);
    }

    let mut origin: Option<Origin> = None;
    let mut session_connection: Option<(usize, IpAddr)> = None;
    let mut session_direction: Option<(usize, Direction)> = None;
    let mut session_end = lines.len();
    let mut media: Vec<MediaSection> = Vec::new();

    for (i, range) in lines.iter().enumerate() {
        let n = i + 1;
        let line = &text[range.clone()];
        let (kind, value) = split_type(line, n)?;

        if i == 0 {
            if kind != b'v' {
                return Err(syntax(
                    n,
                    format!("expected `v=0` as the first line, found {}", excerpt(line)),
                ));
            }
            if value != "0" {
                return Err(syntax(
                    n,
                    format!("SDP version {} is not supported (only 0)", excerpt(value)),
                ));
            }
            continue;
        }

        if kind == b'm' {
            if media.len() == MAX_MEDIA {
                return Err(SdpError::TooManyMedia {
                    line: n,
                    max: MAX_MEDIA,
                });
            }
            match media.last_mut() {
                Some(previous) => previous.end = i,
                None => session_end = i,
            }
            media.push(MediaSection {
                media: parse_media_line(value, n, media.len())?,
                start: i,
                end: lines.len(),
                connection_line: None,
                rtcp_line: None,
                direction_line: None,
            });
            continue;
        }

        let Some(section) = media.last_mut() else {
            // Session level.
            match kind {
                b'v' => return Err(syntax(n, "second v= line".into())),
                b'o' => {
                    if let Some(o) = &origin {
                        return Err(syntax(
                            n,
                            format!("second o= line (first on line {})", o.line + 1),
                        ));
                    }
                    origin = Some(Origin {
                        line: i,
                        addr: parse_origin(value, n)?,
                    });
                }
                b'c' => {
                    if let Some((first, _)) = session_connection {
                        return Err(duplicate(n, "c= line", first));
                    }
                    session_connection = Some((i, parse_address("c=", value, n)?));
                }
                b'a' => {
                    let (name, _) = split_attribute(value, n)?;
                    if let Some(d) = Direction::from_attr(name) {
                        if let Some((first, _)) = session_direction {
                            return Err(duplicate(n, "direction attribute", first));
                        }
                        session_direction = Some((i, d));
                    }
                }
                _ => {}
            }
            continue;
        };

        // Inside the media description that starts at `section.start`.
        match kind {
            b'v' | b'o' | b's' | b't' | b'r' | b'z' | b'u' | b'e' | b'p' => {
                return Err(syntax(
                    n,
                    format!(
                        "`{}=` belongs to the session part, not to the media description \
                         that starts on line {}",
                        char::from(kind),
                        section.start + 1
                    ),
                ));
            }
            b'c' => {
                if let Some(first) = section.connection_line {
                    return Err(duplicate(n, "c= line", first));
                }
                section.media.connection = Some(parse_address("c=", value, n)?);
                section.connection_line = Some(i);
            }
            b'a' => {
                let (name, attr_value) = split_attribute(value, n)?;
                match name {
                    "rtcp" => {
                        if let Some(first) = section.rtcp_line {
                            return Err(duplicate(n, "a=rtcp line", first));
                        }
                        section.media.rtcp = Some(parse_rtcp(attr_value, n)?);
                        section.rtcp_line = Some(i);
                    }
                    "rtcp-mux" => section.media.rtcp_mux = true,
                    "crypto" => section
                        .media
                        .crypto
                        .push(attr_value.unwrap_or_default().to_owned()),
                    _ => {
                        if let Some(d) = Direction::from_attr(name) {
                            if let Some(first) = section.direction_line {
                                return Err(duplicate(n, "direction attribute", first));
                            }
                            section.media.direction = d;
                            section.direction_line = Some(i);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    let session_addr = session_connection.map(|(_, a)| a);
    let session_dir = session_direction.map(|(_, d)| d);
    for section in &mut media {
        let m = &mut section.media;
        if section.direction_line.is_none() {
            m.direction = session_dir.unwrap_or(Direction::SendRecv);
        }
        if m.connection.is_none() {
            m.connection = session_addr;
        }
        // RFC 4566 5.7: a c= at one level or the other. A rejected stream
        // (port 0) carries no media, so a missing address does not matter.
        if m.connection.is_none() && m.port != 0 {
            return Err(SdpError::MissingConnection {
                line: section.start + 1,
                kind: m.kind.clone(),
            });
        }
    }

    Ok(Sdp {
        text: text.to_owned(),
        lines,
        session_end,
        origin,
        session_connection,
        session_direction,
        media,
    })
}

/// Byte ranges of the lines without their endings (LF, CRLF, or a final line
/// without one). Blank lines at the end (an extra CRLF after the body, common
/// in SIP) are not lines.
fn split_lines(text: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for piece in text.split_inclusive('\n') {
        let next = start + piece.len();
        let content = piece.strip_suffix('\n').unwrap_or(piece);
        let content = content.strip_suffix('\r').unwrap_or(content);
        out.push(start..start + content.len());
        start = next;
    }
    while out.last().is_some_and(|r| r.is_empty()) {
        out.pop();
    }
    out
}

/// Checks `<type>=<value>` and returns both.
fn split_type(line: &str, n: usize) -> Result<(u8, &str), SdpError> {
    if line.is_empty() {
        return Err(syntax(n, "empty line".into()));
    }
    if line.contains('\r') {
        return Err(syntax(n, "CR inside the line (not part of a CRLF)".into()));
    }
    if line.contains('\0') {
        return Err(syntax(n, "NUL byte in the line".into()));
    }
    match line.as_bytes() {
        [kind @ b'a'..=b'z', b'=', ..] => Ok((*kind, &line[2..])),
        _ => Err(syntax(
            n,
            format!(
                "expected `<type>=<value>` with a lowercase letter as type, found {}",
                excerpt(line)
            ),
        )),
    }
}

/// `name[:value]` of an a= line.
fn split_attribute(value: &str, n: usize) -> Result<(&str, Option<&str>), SdpError> {
    let (name, attr_value) = match value.split_once(':') {
        Some((name, v)) => (name, Some(v)),
        None => (value, None),
    };
    if name.is_empty() {
        return Err(syntax(n, "a= line without an attribute name".into()));
    }
    Ok((name, attr_value))
}

/// `m=<media> <port>[/<count>] <proto> <fmt> ...`
fn parse_media_line(value: &str, n: usize, index: usize) -> Result<Media, SdpError> {
    let f = fields(value);
    if f.len() < 3 {
        return Err(syntax(
            n,
            format!(
                "m= needs `<media> <port>[/<count>] <proto> <format>...`, found {}",
                excerpt(value)
            ),
        ));
    }
    let kind = &value[f[0].clone()];
    let port_field = &value[f[1].clone()];
    let (port_text, count_text) = match port_field.split_once('/') {
        Some((p, c)) => (p, Some(c)),
        None => (port_field, None),
    };
    let port = parse_u16(port_text).ok_or_else(|| {
        syntax(
            n,
            format!("m= port {} is not a number 0-65535", excerpt(port_text)),
        )
    })?;
    let port_count = match count_text {
        None => 1,
        Some(c) => parse_u16(c).filter(|&c| c > 0).ok_or_else(|| {
            syntax(
                n,
                format!("m= port count {} is not a number 1-65535", excerpt(c)),
            )
        })?,
    };
    let formats: Vec<String> = f[3..].iter().map(|r| value[r.clone()].to_owned()).collect();
    // RFC 4566 requires a format; some stacks omit it on rejected streams.
    if formats.is_empty() && port != 0 {
        return Err(syntax(n, format!("m={kind} lists no formats")));
    }
    Ok(Media {
        index,
        kind: kind.to_owned(),
        port,
        port_count,
        proto: value[f[2].clone()].to_owned(),
        formats,
        connection: None,
        rtcp: None,
        rtcp_mux: false,
        direction: Direction::SendRecv,
        crypto: Vec::new(),
    })
}

/// `o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>`:
/// the address, when it is an IP address of its addrtype (RFC 4566 also
/// allows a host name, which the relay does not need).
fn parse_origin(value: &str, n: usize) -> Result<Option<IpAddr>, SdpError> {
    let f = fields(value);
    if f.len() != 6 {
        return Err(syntax(
            n,
            format!(
                "o= needs 6 fields `<username> <sess-id> <sess-version> IN IP4|IP6 <address>`, \
                 found {}",
                f.len()
            ),
        ));
    }
    let addrtype = &value[f[4].clone()];
    let address = &value[f[5].clone()];
    Ok(if addrtype.eq_ignore_ascii_case("IP4") {
        address.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    } else if addrtype.eq_ignore_ascii_case("IP6") {
        address.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        None
    })
}

/// `IN IP4|IP6 <unicast address>` of a c= or a=rtcp line.
fn parse_address(what: &str, value: &str, n: usize) -> Result<IpAddr, SdpError> {
    let f = fields(value);
    if f.len() != 3 {
        return Err(syntax(
            n,
            format!(
                "{what} needs `IN IP4|IP6 <address>`, found {}",
                excerpt(value)
            ),
        ));
    }
    let nettype = &value[f[0].clone()];
    let addrtype = &value[f[1].clone()];
    let address = &value[f[2].clone()];
    if !nettype.eq_ignore_ascii_case("IN") {
        return Err(syntax(
            n,
            format!("{what} network type {} is not IN", excerpt(nettype)),
        ));
    }
    if address.contains('/') {
        return Err(syntax(
            n,
            format!(
                "{what} multicast address {} (TTL or count) is not supported",
                excerpt(address)
            ),
        ));
    }
    let parsed = if addrtype.eq_ignore_ascii_case("IP4") {
        address.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    } else if addrtype.eq_ignore_ascii_case("IP6") {
        address.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        return Err(syntax(
            n,
            format!(
                "{what} address type {} is not IP4 or IP6",
                excerpt(addrtype)
            ),
        ));
    };
    parsed.ok_or_else(|| {
        syntax(
            n,
            format!(
                "{what} address {} is not an {} address (host names are not supported)",
                excerpt(address),
                addrtype.to_ascii_uppercase()
            ),
        )
    })
}

/// `a=rtcp:<port> [IN IP4|IP6 <address>]` (RFC 3605).
fn parse_rtcp(value: Option<&str>, n: usize) -> Result<(u16, Option<IpAddr>), SdpError> {
    let value = value.unwrap_or_default();
    let f = fields(value);
    let bad = || {
        syntax(
            n,
            format!(
                "a=rtcp needs `<port> [IN IP4|IP6 <address>]`, found {}",
                excerpt(value)
            ),
        )
    };
    let port = f
        .first()
        .and_then(|r| parse_u16(&value[r.clone()]))
        .ok_or_else(bad)?;
    match f.len() {
        1 => Ok((port, None)),
        4 => Ok((
            port,
            Some(parse_address("a=rtcp", &value[f[1].start..], n)?),
        )),
        _ => Err(bad()),
    }
}

/// Byte ranges of the space- (or tab-) separated fields of `s`. RFC 4566
/// separates with one space; repeated separators are tolerated.
pub(super) fn fields(s: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, b) in s.bytes().enumerate() {
        if b == b' ' || b == b'\t' {
            if let Some(st) = start.take() {
                out.push(st..i);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(st) = start {
        out.push(st..s.len());
    }
    out
}

/// A decimal port: digits only (no sign, no spaces), at most 65535.
fn parse_u16(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn syntax(line: usize, message: String) -> SdpError {
    SdpError::Syntax { line, message }
}

fn duplicate(n: usize, what: &str, first: usize) -> SdpError {
    syntax(
        n,
        format!(
            "second {what} in the same section (first on line {})",
            first + 1
        ),
    )
}

/// The start of untrusted text for an error message, quoted and escaped.
fn excerpt(s: &str) -> String {
    const MAX_CHARS: usize = 40;
    let mut chars = s.chars();
    let head: String = chars.by_ref().take(MAX_CHARS).collect();
    if chars.next().is_some() {
        format!("{head:?}...")
    } else {
        format!("{head:?}")
    }
}
