//! SIP messages (RFC 3261) without I/O: [`parse`] with a size limit and
//! errors that say what is wrong, the accessors the transaction layer
//! and the B2BUA read, [`response_for`] (RFC 3261 8.2.6), [`cancel_for`]
//! (9.1), [`ack_for_non2xx`] (17.1.1.3), identifiers from the OS CSPRNG
//! ([`new_branch`], [`new_tag`], [`new_call_id`]), serialization
//! ([`SipMessage::to_bytes`]) and transaction keys ([`tx_key`], 17.1.3 and
//! 17.2.3).
//!
//! # The grammar crate: ezk-sip-types, not rsip
//!
//! The issue suggested rsip 0.4. It builds with rustc 1.95, but it cannot be
//! the base of a border element: it does not recognise the compact header
//! names (`v:`, `i:`, `f:`, `t:`, `m:`, `l:`, `c:`, which RFC 3261 7.3.3 says
//! MUST be accepted; the upstream pull request for them is still open, and a
//! comment there reports that development moved to a closed-source fork),
//! it rejects folded header lines
//! (7.3.1), it takes the whole rest of a datagram as the body instead of
//! `Content-Length` bytes (18.3), its `Method` is a closed enum (an extension
//! method fails to parse, so no 405/501 can be sent for it), it replaces the
//! reason phrase of a known status code by the Rust variant name on the wire
//! (`486 BusyHere`), and it serializes bodies through
//! `String::from_utf8_lossy`, which corrupts binary bodies.
//!
//! [ezk-sip-types](https://crates.io/crates/ezk-sip-types) 0.6 (MIT, edition
//! 2024, builds with rustc 1.95, small dependency tree: nom, bytes, memchr)
//! has extension methods, status codes with their reason phrase, a header
//! map whose names match case-insensitively and in compact form, and typed
//! URIs (`sip:`/`sips:`). It has no message type, so [`SipMessage`] here is
//! the start line, its [`Headers`] and the body. Its own warts are worked
//! around here and pinned by tests: the framing (CRLF only, unfolding,
//! `Content-Length`) is ours; methods are read only when the crate reads
//! them back exactly (it maps `INVITEX` to `INVITE` by prefix, so such a
//! method is refused with [`ParseError::UnsupportedMethod`]); CSeq, Via,
//! Content-Length, Max-Forwards and header parameters (tags) are read here
//! from the raw values. Request-URIs must be `sip:` or `sips:` (a `tel:`
//! Request-URI is refused); From, To and other headers may carry any URI,
//! since they are kept as text. When building From/To, write them as text:
//! the crate's typed `FromTo` printer drops URI ports.
//!
//! Headers keep their received text. Same-named headers are grouped at the
//! position of the first one, and comma-separated Via, Route, Record-Route
//! and Contact values are split into one value each (equivalent by 7.3.1).
//! Serialization writes long header names and always writes a
//! `Content-Length` that matches the body.

#[cfg(test)]
mod tests;

use std::{fmt, net::SocketAddr};

pub use bytes::Bytes;
pub use bytesstr::BytesStr;
use ezk_sip_types::print::{AppendCtx, PrintCtx, UriContext};
pub use ezk_sip_types::{
    Headers, Method, Name, StatusCode,
    host::{Host, HostPort},
    msg::{MessageLine, RequestLine, StatusLine},
    uri::{NameAddr, SipUri},
};

/// Largest message accepted by default: the largest UDP payload.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 65_535;

/// Most header lines in one message (after unfolding, before comma splits).
pub const MAX_HEADER_LINES: usize = 256;

/// Most values a comma-separated header (Via, Route, ...) may expand into.
pub const MAX_HEADER_VALUES: usize = 1024;

/// The RFC 3261 magic cookie that starts every branch of a compliant element.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// Why bytes are not an acceptable SIP message. Every variant names what is
/// wrong and, where it helps, the (1-based) line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message is {len} bytes, over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("message is empty")]
    Empty,
    #[error("no empty line (CRLF CRLF) ends the header section")]
    NoHeaderEnd,
    #[error("line {line}: {what}")]
    Syntax { line: usize, what: String },
    #[error("more than {max} header lines")]
    TooManyHeaders { max: usize },
    #[error("method {method} is not supported")]
    UnsupportedMethod { method: String },
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("bad {name} header: {what}")]
    BadHeader { name: &'static str, what: String },
    #[error("Content-Length is {declared} but only {available} body bytes follow")]
    BodyTruncated { declared: usize, available: usize },
}

/// A SIP request or response: the start line, the headers and the body.
#[derive(Clone, Debug)]
pub struct SipMessage {
    pub line: MessageLine,
    pub headers: Headers,
    pub body: Bytes,
}

/// A CSeq header value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

/// The `rport` parameter of a Via (RFC 3581).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rport {
    Absent,
    /// `;rport` without a value: the client asks for it to be filled in.
    Requested,
    Port(u16),
}

/// One Via value, read from its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    /// Upper case: `UDP`, `TCP`, `TLS`, ...
    pub transport: String,
    pub sent_by: HostPort,
    pub branch: Option<String>,
    pub received: Option<String>,
    pub rport: Rport,
}

impl Via {
    /// Parses one Via value (`SIP/2.0/UDP host:port;branch=...`).
    pub fn parse(value: &str) -> Result<Via, String> {
        let (head, params) = split_at_unquoted(value, b';');
        let (head, params) = (head.trim(), params.unwrap_or(""));
        let mut parts = head.splitn(3, '/');
        let (Some(name), Some(version), Some(rest)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "expected SIP/2.0/<transport>, found {}",
                excerpt(head)
            ));
        };
        if !name.trim().eq_ignore_ascii_case("SIP") || version.trim() != "2.0" {
            return Err(format!(
                "expected SIP/2.0/<transport>, found {}",
                excerpt(head)
            ));
        }
        let rest = rest.trim_start();
        let split = rest.find([' ', '\t']).unwrap_or(rest.len());
        let (transport, sent_by) = rest.split_at(split);
        if transport.is_empty() || !transport.bytes().all(is_token_byte) {
            return Err(format!("bad transport {}", excerpt(transport)));
        }
        let sent_by = sent_by.trim();
        if sent_by.is_empty() {
            return Err("no sent-by".into());
        }
        let sent_by: HostPort = sent_by
            .parse()
            .map_err(|_| format!("bad sent-by {}", excerpt(sent_by)))?;
        let mut via = Via {
            transport: transport.to_ascii_uppercase(),
            sent_by,
            branch: None,
            received: None,
            rport: Rport::Absent,
        };
        for (name, value) in params_iter(params) {
            if name.eq_ignore_ascii_case("branch") {
                via.branch = Some(value.unwrap_or_default().to_string());
            } else if name.eq_ignore_ascii_case("received") {
                via.received = value.map(str::to_string);
            } else if name.eq_ignore_ascii_case("rport") {
                via.rport = match value {
                    None | Some("") => Rport::Requested,
                    Some(port) => Rport::Port(
                        parse_digits(port, 5)
                            .and_then(|p| u16::try_from(p).ok())
                            .ok_or_else(|| format!("bad rport {}", excerpt(port)))?,
                    ),
                };
            }
        }
        Ok(via)
    }

    /// The sent-by as a matching key: lower-case host, then `:` and the
    /// port, the transport's default port when none is written.
    pub fn sent_by_key(&self) -> String {
        let host = self.sent_by.host.to_string().to_ascii_lowercase();
        format!("{host}:{}", self.port_or_default())
    }

    /// The sent-by port, or 5061 for TLS and 5060 otherwise (RFC 3261 18.2.2).
    pub fn port_or_default(&self) -> u16 {
        self.sent_by
            .port
            .unwrap_or(if self.transport == "TLS" { 5061 } else { 5060 })
    }

    /// Whether the branch starts with the RFC 3261 magic cookie.
    pub fn has_magic_cookie(&self) -> bool {
        self.branch
            .as_deref()
            .is_some_and(|b| b.starts_with(MAGIC_COOKIE))
    }
}

impl SipMessage {
    /// A request with the given start line and no headers.
    pub fn request(method: Method, uri: SipUri) -> SipMessage {
        SipMessage {
            line: MessageLine::Request(RequestLine { method, uri }),
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    /// A response with no headers. An empty `reason` takes the standard
    /// phrase of the code.
    pub fn response(code: u16, reason: &str) -> SipMessage {
        let code = StatusCode::from(code);
        let reason = if reason.trim().is_empty() {
            code.text().unwrap_or("Unknown")
        } else {
            reason.trim()
        };
        SipMessage {
            line: MessageLine::Response(StatusLine {
                code,
                reason: Some(BytesStr::from(reason.replace(['\r', '\n'], " "))),
            }),
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    pub fn is_request(&self) -> bool {
        self.line.is_request()
    }

    /// The request method (`None` for a response).
    pub fn method(&self) -> Option<&Method> {
        self.line.request_method()
    }

    /// The status code (`None` for a request).
    pub fn status(&self) -> Option<u16> {
        match &self.line {
            MessageLine::Response(line) => Some(line.code.into_u16()),
            MessageLine::Request(_) => None,
        }
    }

    /// The reason phrase of a response.
    pub fn reason(&self) -> Option<&str> {
        match &self.line {
            MessageLine::Response(line) => line.reason.as_deref(),
            MessageLine::Request(_) => None,
        }
    }

    pub fn request_uri(&self) -> Option<&SipUri> {
        match &self.line {
            MessageLine::Request(line) => Some(&line.uri),
            MessageLine::Response(_) => None,
        }
    }

    /// The first value of a header, by name: case-insensitive, long or
    /// compact form (`i`, `f`, `t`, `v`, `m`, `l`, `c`, ...).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get_raw(&Name::from(name))
            .next()
            .map(|v| v.as_str().trim())
    }

    /// Every value of a header, in order (comma lists of Via, Route,
    /// Record-Route and Contact are already split into one value each).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_raw(&Name::from(name))
            .map(|v| v.as_str().trim())
            .collect()
    }

    /// Replaces every value of a header by one value.
    pub fn set_header(&mut self, name: &str, value: &str) {
        let name = Name::from(name);
        self.headers.remove(&name);
        self.headers.insert(name, value.to_string());
    }

    /// Appends a header value (after the existing values of that name).
    pub fn add_header(&mut self, name: &str, value: &str) {
        self.headers.insert(Name::from(name), value.to_string());
    }

    /// Removes every value of a header; returns how many there were.
    pub fn remove_header(&mut self, name: &str) -> usize {
        self.headers
            .remove(&Name::from(name))
            .map_or(0, |v| v.len())
    }

    /// Puts a Via value on top of the existing ones.
    pub fn push_via(&mut self, value: &str) {
        let old = self.headers.remove(&Name::VIA).unwrap_or_default();
        self.headers.insert_front(Name::VIA, value.to_string());
        for v in old {
            self.headers.insert(Name::VIA, v);
        }
    }

    /// Removes the top Via value and returns it.
    pub fn pop_via(&mut self) -> Option<String> {
        let mut old = self.headers.remove(&Name::VIA)?;
        if old.is_empty() {
            return None;
        }
        let top = old.remove(0);
        for v in old {
            self.headers.insert(Name::VIA, v);
        }
        Some(top.as_str().trim().to_string())
    }

    pub fn call_id(&self) -> Option<&str> {
        self.header("Call-ID").filter(|v| !v.is_empty())
    }

    /// The From header value as received.
    pub fn from_value(&self) -> Option<&str> {
        self.header("From")
    }

    /// The To header value as received.
    pub fn to_value(&self) -> Option<&str> {
        self.header("To")
    }

    pub fn from_tag(&self) -> Option<&str> {
        self.from_value().and_then(tag_param)
    }

    pub fn to_tag(&self) -> Option<&str> {
        self.to_value().and_then(tag_param)
    }

    /// The From header as name-addr (`None` when absent, or not a `sip:` or
    /// `sips:` URI; [`SipMessage::from_value`] has the text).
    pub fn from_addr(&self) -> Option<NameAddr> {
        self.from_value().and_then(addr_part)
    }

    /// The To header as name-addr (see [`SipMessage::from_addr`]).
    pub fn to_addr(&self) -> Option<NameAddr> {
        self.to_value().and_then(addr_part)
    }

    pub fn cseq(&self) -> Option<CSeq> {
        self.header("CSeq").and_then(|v| parse_cseq(v).ok())
    }

    /// The top Via, parsed.
    pub fn top_via(&self) -> Option<Via> {
        self.header("Via").and_then(|v| Via::parse(v).ok())
    }

    /// How many Via values the message has.
    pub fn via_count(&self) -> usize {
        self.headers.get_raw(&Name::VIA).len()
    }

    /// The URI of the first Contact (`None` when absent, `*`, or not
    /// `sip:`/`sips:`).
    pub fn contact_uri(&self) -> Option<SipUri> {
        self.header("Contact")
            .and_then(addr_part)
            .map(|addr| addr.uri)
    }

    /// The Content-Length header, when present and well-formed.
    pub fn content_length(&self) -> Option<usize> {
        self.header("Content-Length")
            .and_then(|v| parse_digits(v, 10))
            .and_then(|n| usize::try_from(n).ok())
    }

    pub fn content_type(&self) -> Option<&str> {
        self.header("Content-Type")
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Sets the body and its Content-Type (`None` removes Content-Type).
    /// Content-Length is written by [`SipMessage::to_bytes`].
    pub fn set_body(&mut self, content_type: Option<&str>, body: impl Into<Bytes>) {
        self.body = body.into();
        match content_type {
            Some(ct) => self.set_header("Content-Type", ct),
            None => {
                self.remove_header("Content-Type");
            }
        }
    }

    pub fn max_forwards(&self) -> Option<u32> {
        self.header("Max-Forwards")
            .and_then(|v| parse_digits(v, 9))
            .and_then(|n| u32::try_from(n).ok())
    }

    /// Adds `received` (and fills `rport`) in the top Via of a request that
    /// arrived from `source`, per RFC 3261 18.2.1 and RFC 3581: `received`
    /// when the sent-by host is not the source address or `rport` was asked
    /// for, `rport=<source port>` when asked for. Does nothing when there is
    /// no parseable top Via.
    pub fn stamp_received(&mut self, source: SocketAddr) {
        let Some(top) = self.header("Via").map(str::to_string) else {
            return;
        };
        let Ok(via) = Via::parse(&top) else {
            return;
        };
        let ip = source.ip();
        let wants_rport = via.rport != Rport::Absent;
        if via.sent_by.ip() == Some(ip) && !wants_rport {
            return;
        }
        let (head, params) = split_at_unquoted(&top, b';');
        let params = params.unwrap_or("");
        let mut out = head.trim_end().to_string();
        for (name, value) in params_iter(params) {
            if name.eq_ignore_ascii_case("received") || name.eq_ignore_ascii_case("rport") {
                continue;
            }
            out.push(';');
            out.push_str(name);
            if let Some(value) = value {
                out.push('=');
                out.push_str(value);
            }
        }
        out.push_str(&format!(";received={ip}"));
        if wants_rport {
            out.push_str(&format!(";rport={}", source.port()));
        }
        self.pop_via();
        self.push_via(&out);
    }

    /// The message on the wire: start line, headers (long names), a
    /// Content-Length that matches the body, an empty line, the body.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = String::with_capacity(256 + self.headers.printed_len());
        match &self.line {
            MessageLine::Request(line) => {
                push_line_safe(&mut out, &line.method.to_string());
                out.push(' ');
                push_line_safe(&mut out, &uri_string(&line.uri));
                out.push_str(" SIP/2.0\r\n");
            }
            MessageLine::Response(line) => {
                push_line_safe(&mut out, &line.to_string());
                out.push_str("\r\n");
            }
        }
        for (name, value) in self.headers.iter() {
            if *name == Name::CONTENT_LENGTH {
                continue;
            }
            push_line_safe(&mut out, name.as_print_str());
            out.push_str(": ");
            push_line_safe(&mut out, value.as_str().trim());
            out.push_str("\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        Bytes::from(bytes)
    }
}

/// Appends `text` with CR and LF turned into spaces, so that a value the TU
/// copied from elsewhere can never start a header line of its own.
fn push_line_safe(out: &mut String, text: &str) {
    if text.contains(['\r', '\n']) {
        out.extend(
            text.chars()
                .map(|c| if c == '\r' || c == '\n' { ' ' } else { c }),
        );
    } else {
        out.push_str(text);
    }
}

impl fmt::Display for SipMessage {
    /// The wire form, with a non-UTF-8 body shown lossily (for logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

/// Parses one message (a datagram, or a stream message cut by the
/// transport's [`StreamFramer`](super::transport::framing::StreamFramer),
/// the one place that finds message boundaries on TCP and TLS) and checks what every message needs: Via (top one
/// parseable), From, To, Call-ID, CSeq (its method equal to a request's
/// method), Max-Forwards well-formed when present. Never panics.
pub fn parse(bytes: &[u8], max_size: usize) -> Result<SipMessage, ParseError> {
    let msg = parse_unchecked(bytes, max_size)?;
    validate(&msg)?;
    Ok(msg)
}

/// Parses the framing, start line and header syntax only, without the
/// header checks of [`parse`]. For building a 400 to a request whose
/// headers [`parse`] refused: if this succeeds and the result is a request
/// with a Via, [`response_for`] can answer it.
pub fn parse_unchecked(bytes: &[u8], max_size: usize) -> Result<SipMessage, ParseError> {
    if bytes.len() > max_size {
        return Err(ParseError::TooLarge {
            len: bytes.len(),
            max: max_size,
        });
    }
    let rest = &bytes[leading_crlfs(bytes)..];
    if rest.is_empty() {
        return Err(ParseError::Empty);
    }
    let head_end = find_head_end(rest).ok_or(ParseError::NoHeaderEnd)?;
    let lines = split_head(&rest[..head_end])?;
    let available = &rest[head_end + 4..];

    let (first, header_lines) = lines.split_first().ok_or(ParseError::Empty)?;
    let line = parse_start_line(&first.1)?;
    let mut headers = Headers::with_capacity(header_lines.len());
    let mut values = 0usize;
    for (n, text) in header_lines {
        let (name, value) = split_header_line(*n, text)?;
        let name = Name::from(name.to_string());
        if is_list_header(&name) {
            for part in split_list(value) {
                values += 1;
                if values > MAX_HEADER_VALUES {
                    return Err(ParseError::TooManyHeaders {
                        max: MAX_HEADER_VALUES,
                    });
                }
                headers.insert(name.clone(), part.to_string());
            }
        } else {
            values += 1;
            headers.insert(name, value.to_string());
        }
    }
    let body = match content_length_of(headers.get_raw(&Name::CONTENT_LENGTH).map(|v| v.as_str()))?
    {
        // Bytes after Content-Length are not part of the message (18.3).
        Some(declared) => available.get(..declared).ok_or(ParseError::BodyTruncated {
            declared,
            available: available.len(),
        })?,
        None => available,
    };
    Ok(SipMessage {
        line,
        headers,
        body: Bytes::copy_from_slice(body),
    })
}

/// The checks [`parse`] makes after [`parse_unchecked`]; also useful on a
/// message the TU built.
pub fn validate(msg: &SipMessage) -> Result<(), ParseError> {
    let top = msg.header("Via").ok_or(ParseError::MissingHeader("Via"))?;
    Via::parse(top).map_err(|what| ParseError::BadHeader { name: "Via", what })?;
    if msg.from_value().is_none_or(str::is_empty) {
        return Err(ParseError::MissingHeader("From"));
    }
    if msg.to_value().is_none_or(str::is_empty) {
        return Err(ParseError::MissingHeader("To"));
    }
    if msg.call_id().is_none() {
        return Err(ParseError::MissingHeader("Call-ID"));
    }
    let cseq = msg
        .header("CSeq")
        .ok_or(ParseError::MissingHeader("CSeq"))?;
    let cseq = parse_cseq(cseq).map_err(|what| ParseError::BadHeader { name: "CSeq", what })?;
    if let Some(method) = msg.method().filter(|m| **m != cseq.method) {
        return Err(ParseError::BadHeader {
            name: "CSeq",
            what: format!("method {} is not the request's {}", cseq.method, method),
        });
    }
    if let Some(mf) = msg
        .header("Max-Forwards")
        .filter(|v| parse_digits(v, 9).is_none())
    {
        return Err(ParseError::BadHeader {
            name: "Max-Forwards",
            what: format!("not a number: {}", excerpt(mf)),
        });
    }
    Ok(())
}

/// A response to `request` per RFC 3261 8.2.6: the Via values (in order),
/// From, To, Call-ID and CSeq copied; `to_tag` added to To unless the code
/// is 100 or To already has a tag; Timestamp copied into a 100. Works on a
/// request that only [`parse_unchecked`] accepted (missing headers are
/// simply not copied).
pub fn response_for(
    request: &SipMessage,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
) -> SipMessage {
    let mut response = SipMessage::response(code, reason);
    for via in request.headers.get_raw(&Name::VIA) {
        response
            .headers
            .insert(Name::VIA, via.as_str().trim().to_string());
    }
    if let Some(from) = request.from_value() {
        response.headers.insert(Name::FROM, from.to_string());
    }
    if let Some(to) = request.to_value() {
        let to = match to_tag {
            Some(tag) if code != 100 && tag_param(to).is_none() => format!("{to};tag={tag}"),
            _ => to.to_string(),
        };
        response.headers.insert(Name::TO, to);
    }
    for name in ["Call-ID", "CSeq"] {
        if let Some(value) = request.header(name) {
            response.headers.insert(Name::from(name), value.to_string());
        }
    }
    if let Some(ts) = request.header("Timestamp").filter(|_| code == 100) {
        response.add_header("Timestamp", ts);
    }
    response
}

/// The ACK a client INVITE transaction sends for a 300-699 response
/// (RFC 3261 17.1.1.3): Request-URI, Call-ID, From, CSeq number and Route
/// of the INVITE, its top Via only, To of the response.
pub fn ack_for_non2xx(invite: &SipMessage, response: &SipMessage) -> SipMessage {
    let uri = invite.request_uri().cloned().unwrap_or_else(|| {
        SipUri::new(HostPort {
            host: Host::Name(BytesStr::from("invalid")),
            port: None,
        })
    });
    let mut ack = SipMessage::request(Method::ACK, uri);
    if let Some(via) = invite.header("Via") {
        ack.add_header("Via", via);
    }
    ack.add_header("Max-Forwards", "70");
    copy_header(invite, &mut ack, "From");
    if let Some(to) = response.to_value().or(invite.to_value()) {
        ack.add_header("To", to);
    }
    copy_header(invite, &mut ack, "Call-ID");
    if let Some(cseq) = invite.cseq() {
        ack.add_header("CSeq", &format!("{} ACK", cseq.seq));
    }
    for route in invite.header_values("Route") {
        ack.add_header("Route", route);
    }
    ack
}

/// The CANCEL for an INVITE (RFC 3261 9.1): Request-URI, Call-ID, From, To,
/// CSeq number and Route of the INVITE, and its top Via only (same branch).
/// Send it as a new client transaction, or use
/// [`super::transaction::TransactionLayer::cancel`], which also waits for a
/// provisional response as 9.1 requires.
pub fn cancel_for(invite: &SipMessage) -> SipMessage {
    let mut cancel = ack_for_non2xx(invite, invite);
    if let MessageLine::Request(line) = &mut cancel.line {
        line.method = Method::CANCEL;
    }
    if let Some(cseq) = invite.cseq() {
        cancel.set_header("CSeq", &format!("{} CANCEL", cseq.seq));
    }
    cancel
}

fn copy_header(from: &SipMessage, to: &mut SipMessage, name: &str) {
    for value in from.header_values(name) {
        to.add_header(name, value);
    }
}

/// A URI as text (as in a Request-URI: with its URI parameters). The
/// crate's `SipUri` has no `Display`.
pub fn uri_string(uri: &SipUri) -> String {
    uri.print_ctx(PrintCtx {
        method: None,
        uri: Some(UriContext::ReqUri),
    })
    .to_string()
}

/// A new Via branch: the magic cookie and 128 random bits.
pub fn new_branch() -> String {
    format!("{MAGIC_COOKIE}{}", random_hex(16))
}

/// A new From/To tag: 64 random bits (RFC 3261 19.3 asks for at least 32).
pub fn new_tag() -> String {
    random_hex(8)
}

/// A new Call-ID: 128 random bits `@host`.
pub fn new_call_id(host: &str) -> String {
    format!("{}@{host}", random_hex(16))
}

/// `len` bytes from the OS CSPRNG, in hex. Panics only if the operating
/// system has no random source at all, which Linux always has after boot.
fn random_hex(len: usize) -> String {
    let mut buf = [0u8; 32];
    let buf = &mut buf[..len.min(32)];
    getrandom::fill(buf).expect("the OS random number generator failed");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a transaction key belongs to a client or a server transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TxRole {
    Client,
    Server,
}

/// The key that matches a message to a transaction (RFC 3261 17.1.3 and
/// 17.2.3): the top Via branch, the method (ACK counts as INVITE for a
/// server transaction; CANCEL is its own), and for a server transaction the
/// top Via sent-by. A branch without the magic cookie (an RFC 2543 peer) is
/// replaced by Call-ID, From tag and CSeq number, which an ACK for a non-2xx
/// shares with its INVITE.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxKey {
    role: TxRole,
    branch: String,
    sent_by: String,
    method: Method,
}

impl TxKey {
    pub fn role(&self) -> TxRole {
        self.role
    }

    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// The server's sent-by key (empty for a client key).
    pub fn sent_by(&self) -> &str {
        &self.sent_by
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The same transaction key with another method: the INVITE a CANCEL
    /// (or a server ACK) belongs to, or the CANCEL of an INVITE.
    pub fn with_method(&self, method: Method) -> TxKey {
        TxKey {
            method,
            ..self.clone()
        }
    }
}

impl fmt::Display for TxKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = match self.role {
            TxRole::Client => "client",
            TxRole::Server => "server",
        };
        write!(f, "{role} {} {}", self.method, self.branch)?;
        if !self.sent_by.is_empty() {
            write!(f, " {}", self.sent_by)?;
        }
        Ok(())
    }
}

/// The transaction key of `msg` in the given role: `Server` for a request
/// received or a response sent, `Client` for a request sent or a response
/// received.
pub fn tx_key(msg: &SipMessage, role: TxRole) -> Result<TxKey, ParseError> {
    let top = msg.header("Via").ok_or(ParseError::MissingHeader("Via"))?;
    let via = Via::parse(top).map_err(|what| ParseError::BadHeader { name: "Via", what })?;
    let cseq = msg
        .header("CSeq")
        .ok_or(ParseError::MissingHeader("CSeq"))
        .and_then(|v| parse_cseq(v).map_err(|what| ParseError::BadHeader { name: "CSeq", what }))?;
    let mut method = msg.method().cloned().unwrap_or(cseq.method.clone());
    if role == TxRole::Server && method == Method::ACK {
        method = Method::INVITE;
    }
    let sent_by = match role {
        TxRole::Server => via.sent_by_key(),
        TxRole::Client => String::new(),
    };
    let branch = match via.branch {
        Some(branch) if branch.starts_with(MAGIC_COOKIE) && branch.len() > MAGIC_COOKIE.len() => {
            branch
        }
        _ => format!(
            "rfc2543;{};{};{}",
            msg.call_id().unwrap_or_default(),
            msg.from_tag().unwrap_or_default(),
            cseq.seq
        ),
    };
    Ok(TxKey {
        role,
        branch,
        sent_by,
        method,
    })
}

// ---- framing and grammar helpers ----

/// How many bytes of leading CRLF pairs start the buffer (7.5: ignored
/// before a start line; RFC 5626 keep-alives).
fn leading_crlfs(buf: &[u8]) -> usize {
    let mut n = 0;
    while buf.get(n..n + 2) == Some(b"\r\n") {
        n += 2;
    }
    n
}

/// Index of the CRLF CRLF that ends the head.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Splits the head (without its final CRLF CRLF) into unfolded lines with
/// their 1-based numbers. Only CRLF ends a line: a bare CR or LF, or another
/// control character, is refused, so that no other element can read the
/// same bytes as different lines.
fn split_head(head: &[u8]) -> Result<Vec<(usize, String)>, ParseError> {
    let text = std::str::from_utf8(head).map_err(|e| ParseError::Syntax {
        line: line_of(head, e.valid_up_to()),
        what: "not UTF-8".into(),
    })?;
    let mut lines: Vec<(usize, String)> = Vec::new();
    for (i, raw) in text.split("\r\n").enumerate() {
        let n = i + 1;
        if let Some(bad) = raw.bytes().find(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            let what = match bad {
                b'\r' | b'\n' => "bare CR or LF (lines end with CRLF)".to_string(),
                other => format!("control character 0x{other:02x}"),
            };
            return Err(ParseError::Syntax { line: n, what });
        }
        if raw.starts_with([' ', '\t']) {
            let has_header = lines.len() > 1;
            match lines.last_mut() {
                Some((_, previous)) if has_header => {
                    previous.push(' ');
                    previous.push_str(raw.trim());
                }
                _ => {
                    return Err(ParseError::Syntax {
                        line: n,
                        what: "starts with whitespace".into(),
                    });
                }
            }
        } else {
            if lines.len() > MAX_HEADER_LINES {
                return Err(ParseError::TooManyHeaders {
                    max: MAX_HEADER_LINES,
                });
            }
            lines.push((n, raw.to_string()));
        }
    }
    Ok(lines)
}

fn line_of(buf: &[u8], offset: usize) -> usize {
    1 + buf[..offset.min(buf.len())]
        .windows(2)
        .filter(|w| w == b"\r\n")
        .count()
}

fn parse_start_line(text: &str) -> Result<MessageLine, ParseError> {
    let syntax = |what: String| ParseError::Syntax { line: 1, what };
    if let Some(rest) = text.strip_prefix("SIP/2.0 ") {
        let code = rest
            .get(..3)
            .filter(|c| c.bytes().all(|b| b.is_ascii_digit()));
        let code: u16 = code
            .and_then(|c| c.parse().ok())
            .filter(|c| (100..=699).contains(c))
            .ok_or_else(|| syntax(format!("bad status code in {}", excerpt(text))))?;
        let after = &rest[3..];
        if !after.is_empty() && !after.starts_with([' ', '\t']) {
            return Err(syntax(format!("bad status code in {}", excerpt(text))));
        }
        let reason = after.trim();
        return Ok(MessageLine::Response(StatusLine {
            code: StatusCode::from(code),
            reason: (!reason.is_empty()).then(|| BytesStr::from(reason)),
        }));
    }
    let mut parts = text.split(' ').filter(|p| !p.is_empty());
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(syntax(format!(
            "expected `METHOD URI SIP/2.0` or `SIP/2.0 CODE REASON`, found {}",
            excerpt(text)
        )));
    };
    if version != "SIP/2.0" {
        return Err(syntax(format!("unsupported version {}", excerpt(version))));
    }
    if !method.bytes().all(is_token_byte) {
        return Err(syntax(format!("bad method {}", excerpt(method))));
    }
    let parsed = Method::from(method);
    // The crate matches known methods by case-insensitive prefix; accept
    // only a reading that prints back as received.
    if parsed.to_string() != method {
        return Err(ParseError::UnsupportedMethod {
            method: excerpt(method),
        });
    }
    let uri: SipUri = uri.parse().map_err(|_| {
        syntax(format!(
            "Request-URI {} is not a sip: or sips: URI",
            excerpt(uri)
        ))
    })?;
    Ok(MessageLine::Request(RequestLine {
        method: parsed,
        uri,
    }))
}

fn split_header_line(n: usize, text: &str) -> Result<(&str, &str), ParseError> {
    let Some((name, value)) = text.split_once(':') else {
        return Err(ParseError::Syntax {
            line: n,
            what: format!("no `:` in header line {}", excerpt(text)),
        });
    };
    let name = name.trim_end_matches([' ', '\t']);
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(ParseError::Syntax {
            line: n,
            what: format!("bad header name {}", excerpt(name)),
        });
    }
    Ok((name, value.trim()))
}

fn is_list_header(name: &Name) -> bool {
    *name == Name::VIA
        || *name == Name::ROUTE
        || *name == Name::RECORD_ROUTE
        || *name == Name::CONTACT
}

/// The Content-Length of a message from its Content-Length values: none,
/// or all equal and all plain digits.
fn content_length_of<'a>(
    values: impl Iterator<Item = &'a str>,
) -> Result<Option<usize>, ParseError> {
    let mut found = None;
    for value in values {
        let n = parse_digits(value, 10)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| ParseError::BadHeader {
                name: "Content-Length",
                what: format!("not a number: {}", excerpt(value)),
            })?;
        if found.is_some_and(|f| f != n) {
            return Err(ParseError::BadHeader {
                name: "Content-Length",
                what: "several different values".into(),
            });
        }
        found = Some(n);
    }
    Ok(found)
}

/// Parses `1*DIGIT` (at most `max_digits` of them), surrounding whitespace
/// allowed, no sign.
fn parse_digits(text: &str, max_digits: usize) -> Option<u64> {
    let t = text.trim();
    if t.is_empty() || t.len() > max_digits || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

fn parse_cseq(value: &str) -> Result<CSeq, String> {
    let mut parts = value.split([' ', '\t']).filter(|p| !p.is_empty());
    let (Some(seq), Some(method), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!(
            "expected `<number> <method>`, found {}",
            excerpt(value)
        ));
    };
    // RFC 3261 8.1.1.5: less than 2**31.
    let seq = parse_digits(seq, 10)
        .filter(|&n| n < (1 << 31))
        .ok_or_else(|| format!("bad sequence number {}", excerpt(seq)))?;
    if !method.bytes().all(is_token_byte) {
        return Err(format!("bad method {}", excerpt(method)));
    }
    let parsed = Method::from(method);
    if parsed.to_string() != method {
        return Err(format!("unsupported method {}", excerpt(method)));
    }
    Ok(CSeq {
        seq: u32::try_from(seq).unwrap_or(0),
        method: parsed,
    })
}

/// RFC 3261 token characters.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Index of the first `sep` outside double quotes (and, with
/// `skip_angles`, outside angle brackets).
fn find_unquoted(text: &str, sep: u8, skip_angles: bool) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    let mut angle = 0usize;
    for (i, b) in text.bytes().enumerate() {
        if quoted {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
            continue;
        }
        if b == sep && (!skip_angles || angle == 0) {
            return Some(i);
        }
        match b {
            b'"' => quoted = true,
            b'<' if skip_angles => angle += 1,
            b'>' if skip_angles => angle = angle.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Splits at the first `sep` outside double quotes and angle brackets:
/// the text before it, and the text after it (`None` when there is none).
fn split_at_unquoted(text: &str, sep: u8) -> (&str, Option<&str>) {
    match find_unquoted(text, sep, true) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    }
}

/// Splits a comma-separated header value into its values.
fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = Some(value);
    while let Some(text) = rest {
        let (item, tail) = split_at_unquoted(text, b',');
        let item = item.trim();
        if !item.is_empty() {
            out.push(item);
        }
        rest = tail;
    }
    out
}

/// The `;name[=value]` parameters of `params` (the text after the first
/// `;`), values unquoted.
fn params_iter(params: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    let mut rest = params;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let (param, tail) = split_at_unquoted(rest, b';');
            rest = tail.unwrap_or("");
            let param = param.trim();
            if param.is_empty() {
                continue;
            }
            return Some(match param.split_once('=') {
                Some((name, value)) => {
                    let value = value.trim();
                    let value = value
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(value);
                    (name.trim(), Some(value))
                }
                None => (param, None),
            });
        }
    })
}

/// The header parameters of a name-addr / addr-spec value (From, To,
/// Contact, Route): after `>` when there are angle brackets, else after
/// the first `;` (RFC 3261 20.10: without brackets, parameters belong to
/// the header).
fn header_params(value: &str) -> &str {
    match find_unquoted(value, b'<', false) {
        Some(open) => match value[open..].find('>') {
            Some(close) => split_at_unquoted(&value[open + close + 1..], b';')
                .1
                .unwrap_or(""),
            None => "",
        },
        None => split_at_unquoted(value, b';').1.unwrap_or(""),
    }
}

fn tag_param(value: &str) -> Option<&str> {
    params_iter(header_params(value))
        .find(|(name, _)| name.eq_ignore_ascii_case("tag"))
        .and_then(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// The name-addr of a From/To/Contact value (its parameters removed).
fn addr_part(value: &str) -> Option<NameAddr> {
    let params = header_params(value);
    let addr = if params.is_empty() {
        value
    } else {
        // `params` is a suffix of `value`, after one `;`.
        &value[..value.len() - params.len() - 1]
    };
    let addr = addr.trim();
    if addr == "*" {
        return None;
    }
    addr.parse::<NameAddr>().ok()
}

/// A short, escaped quotation of untrusted text for an error message.
fn excerpt(text: &str) -> String {
    const MAX: usize = 40;
    let mut out = String::from("`");
    for (i, c) in text.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('`');
    out
}
