//! One side of a B2BUA call as a SIP dialog (RFC 3261 12), and the header
//! mapping between the two sides: what crosses, what is rewritten, and what
//! never crosses. Pure functions over [`SipMessage`]; unit-tested.

use super::{
    message::{Method, NameAddr, SipMessage, SipUri, new_branch},
    transaction::{Dest, TransportKind},
};

/// Headers that belong to one hop or one dialog and are never copied from
/// one side to the other, whatever a trunk's policy says.
pub const NEVER_CROSS: &[&str] = &[
    "Via",
    "Route",
    "Record-Route",
    "Contact",
    "Call-ID",
    "CSeq",
    "From",
    "To",
    "Max-Forwards",
    "Content-Length",
    "Content-Type",
    "Authorization",
    "Proxy-Authorization",
];

/// One side's dialog state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dialog {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: Option<String>,
    /// From/To name-addr text (without tag) of our side and the peer's.
    pub local_uri: String,
    pub remote_uri: String,
    /// Where in-dialog requests are addressed (the peer's Contact URI).
    pub remote_target: String,
    /// Route headers for in-dialog requests (Record-Route, in order).
    pub route_set: Vec<String>,
    pub local_cseq: u32,
    /// Transport destination of this side (its trunk or its source).
    pub dest: Dest,
    /// Our address for Via and Contact on this side.
    pub local_addr: std::net::SocketAddr,
}

impl Dialog {
    /// The UAS side of a call: built from the INVITE we received.
    pub fn uas(
        invite: &SipMessage,
        local_tag: String,
        dest: Dest,
        local_addr: std::net::SocketAddr,
    ) -> Option<Dialog> {
        Some(Dialog {
            call_id: invite.call_id()?.to_string(),
            local_tag,
            remote_tag: invite.from_tag().map(str::to_string),
            local_uri: strip_tag(invite.to_value()?),
            remote_uri: strip_tag(invite.from_value()?),
            remote_target: invite
                .contact_uri()
                .map(|u| super::message::uri_string(&u))
                .unwrap_or_else(|| format!("sip:{}", dest.addr)),
            route_set: invite
                .header_values("Record-Route")
                .iter()
                .map(|s| s.to_string())
                .collect(),
            local_cseq: 0,
            dest,
            local_addr,
        })
    }

    /// Our Contact header value on this side.
    pub fn contact(&self) -> String {
        contact_for(self.local_addr, self.dest.transport)
    }

    /// A new in-dialog request (BYE, re-INVITE, UPDATE, ACK uses [`Self::ack`]).
    pub fn request(&mut self, method: Method) -> SipMessage {
        self.local_cseq += 1;
        let seq = self.local_cseq;
        self.build(method, seq, &new_branch())
    }

    /// The ACK for a 2xx to our INVITE with CSeq number `seq`.
    pub fn ack(&self, seq: u32) -> SipMessage {
        self.build(Method::ACK, seq, &new_branch())
    }

    fn build(&self, method: Method, seq: u32, branch: &str) -> SipMessage {
        let uri = parse_uri(&self.remote_target).unwrap_or_else(|| fallback_uri(self.dest));
        let mut m = SipMessage::request(method.clone(), uri);
        m.add_header("Via", &via(self.local_addr, self.dest.transport, branch));
        m.add_header("Max-Forwards", "70");
        m.add_header(
            "From",
            &format!("{};tag={}", self.local_uri, self.local_tag),
        );
        let to = match &self.remote_tag {
            Some(t) => format!("{};tag={t}", self.remote_uri),
            None => self.remote_uri.clone(),
        };
        m.add_header("To", &to);
        m.add_header("Call-ID", &self.call_id);
        m.add_header("CSeq", &format!("{seq} {method}"));
        for r in &self.route_set {
            m.add_header("Route", r);
        }
        m.add_header("Contact", &self.contact());
        m
    }

    /// Learns the peer's tag, target and route set from a response to our
    /// INVITE (route set reversed, RFC 3261 12.1.2).
    pub fn learn_from_response(&mut self, response: &SipMessage) {
        if let Some(tag) = response.to_tag() {
            self.remote_tag = Some(tag.to_string());
        }
        if let Some(uri) = response.contact_uri() {
            self.remote_target = super::message::uri_string(&uri);
        }
        let rr: Vec<String> = response
            .header_values("Record-Route")
            .iter()
            .map(|s| s.to_string())
            .collect();
        if !rr.is_empty() {
            self.route_set = rr.into_iter().rev().collect();
        }
    }
}

/// The initial INVITE toward the other trunk: a new dialog (Call-ID, tags,
/// Via, Contact), Request-URI addressed to the trunk, the caller's and
/// callee's user parts kept, Max-Forwards decremented, and only the headers
/// the trunk's policy lets through (never those in [`NEVER_CROSS`]).
pub struct OutgoingInvite<'a> {
    pub incoming: &'a SipMessage,
    pub call_id: &'a str,
    pub from_tag: &'a str,
    pub branch: &'a str,
    pub dest: Dest,
    pub local_addr: std::net::SocketAddr,
    /// Host for the Request-URI and To (the trunk's peer or its TLS name).
    pub target_host: &'a str,
    pub pass_headers: &'a [String],
    pub sdp: Option<&'a str>,
}

impl OutgoingInvite<'_> {
    pub fn build(&self) -> Option<SipMessage> {
        let in_uri = self.incoming.request_uri()?;
        let user = user_of(in_uri);
        let port = self.dest.addr.port();
        let scheme_params = transport_param(self.dest.transport);
        let uri = parse_uri(&format!(
            "sip:{}{}:{port}{scheme_params}",
            user.as_deref().map(|u| format!("{u}@")).unwrap_or_default(),
            self.target_host
        ))?;
        let mut m = SipMessage::request(Method::INVITE, uri);
        m.add_header(
            "Via",
            &via(self.local_addr, self.dest.transport, self.branch),
        );
        let hops = self.incoming.max_forwards().unwrap_or(70).saturating_sub(1);
        m.add_header("Max-Forwards", &hops.to_string());
        let from_user = self
            .incoming
            .from_addr()
            .and_then(|a| user_of(&a.uri))
            .unwrap_or_else(|| "anonymous".into());
        let from_name = self
            .incoming
            .from_addr()
            .and_then(|a| a.name.map(|n| n.to_string()))
            .filter(|n| !n.is_empty())
            .map(|n| format!("\"{}\" ", n.replace('"', "")))
            .unwrap_or_default();
        m.add_header(
            "From",
            &format!(
                "{from_name}<sip:{from_user}@{}>;tag={}",
                host_of(self.local_addr),
                self.from_tag
            ),
        );
        m.add_header(
            "To",
            &format!(
                "<sip:{}{}>",
                user.as_deref().map(|u| format!("{u}@")).unwrap_or_default(),
                self.target_host
            ),
        );
        m.add_header("Call-ID", self.call_id);
        m.add_header("CSeq", "1 INVITE");
        m.add_header(
            "Contact",
            &contact_for(self.local_addr, self.dest.transport),
        );
        copy_allowed(self.incoming, &mut m, self.pass_headers);
        if let Some(sdp) = self.sdp {
            m.set_body(Some("application/sdp"), sdp.as_bytes().to_vec());
        }
        Some(m)
    }
}

/// Copies the headers a trunk's policy lets through, never those in
/// [`NEVER_CROSS`].
pub fn copy_allowed(from: &SipMessage, to: &mut SipMessage, allowed: &[String]) {
    for name in allowed {
        if NEVER_CROSS.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        for value in from.header_values(name) {
            to.add_header(name, value);
        }
    }
}

pub fn via(local: std::net::SocketAddr, transport: TransportKind, branch: &str) -> String {
    format!(
        "SIP/2.0/{} {};branch={branch};rport",
        transport.via_name(),
        host_port(local)
    )
}

pub fn contact_for(local: std::net::SocketAddr, transport: TransportKind) -> String {
    format!(
        "<sip:relay@{}{}>",
        host_port(local),
        transport_param(transport)
    )
}

fn transport_param(t: TransportKind) -> &'static str {
    match t {
        TransportKind::Udp => "",
        TransportKind::Tcp => ";transport=tcp",
        TransportKind::Tls => ";transport=tls",
    }
}

fn host_port(a: std::net::SocketAddr) -> String {
    format!("{}:{}", host_of(a), a.port())
}

fn host_of(a: std::net::SocketAddr) -> String {
    match a.ip() {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

pub fn parse_uri(text: &str) -> Option<SipUri> {
    let t = text.trim();
    let t = t
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(t);
    format!("<{t}>").parse::<NameAddr>().ok().map(|a| a.uri)
}

fn fallback_uri(dest: Dest) -> SipUri {
    parse_uri(&format!("sip:{}", host_port(dest.addr))).unwrap_or_else(|| {
        SipUri::new(super::message::HostPort {
            host: super::message::Host::IP4(std::net::Ipv4Addr::LOCALHOST),
            port: None,
        })
    })
}

fn user_of(uri: &SipUri) -> Option<String> {
    match &uri.user_part {
        ezk_sip_types::uri::SipUriUserPart::User(u) => Some(u.to_string()),
        ezk_sip_types::uri::SipUriUserPart::UserPw(up) => Some(up.user.to_string()),
        ezk_sip_types::uri::SipUriUserPart::Empty => None,
    }
}

/// A From/To value without its tag parameter.
pub fn strip_tag(value: &str) -> String {
    value
        .split(';')
        .filter(|p| !p.trim_start().to_ascii_lowercase().starts_with("tag="))
        .collect::<Vec<_>>()
        .join(";")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::parse;

    fn incoming() -> SipMessage {
        let text = "INVITE sip:voicemail@192.0.2.1:5060 SIP/2.0\r\n\
            Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-pbx-1\r\n\
            Via: SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bK-inner\r\n\
            Record-Route: <sip:10.1.1.1;lr>\r\n\
            Route: <sip:192.0.2.1;lr>\r\n\
            From: \"Front Desk\" <sip:1000@pbx.example.test>;tag=abc\r\n\
            To: <sip:voicemail@192.0.2.1>\r\n\
            Call-ID: pbx-call-1@10.1.1.1\r\n\
            CSeq: 7 INVITE\r\n\
            Contact: <sip:1000@10.1.1.1:5060>\r\n\
            Max-Forwards: 69\r\n\
            Diversion: <sip:2000@pbx.example.test>;reason=no-answer\r\n\
            History-Info: <sip:2000@pbx.example.test>;index=1\r\n\
            P-Asserted-Identity: <sip:1000@pbx.example.test>\r\n\
            X-Internal-Secret: topology\r\n\
            Authorization: Digest username=\"pbx\"\r\n\
            Content-Type: application/sdp\r\n\
            Content-Length: 3\r\n\r\nv=0";
        parse(text.as_bytes(), 65535).unwrap()
    }

    fn outgoing(pass: &[&str]) -> SipMessage {
        let pass: Vec<String> = pass.iter().map(|s| s.to_string()).collect();
        OutgoingInvite {
            incoming: &incoming(),
            call_id: "new-call@198.51.100.1",
            from_tag: "relaytag",
            branch: "z9hG4bK-relay-1",
            dest: Dest::tls("198.51.100.10:5061".parse().unwrap(), None),
            local_addr: "198.51.100.1:5061".parse().unwrap(),
            target_host: "voicemail.example.test",
            pass_headers: &pass,
            sdp: Some("v=0\r\n"),
        }
        .build()
        .unwrap()
    }

    #[test]
    fn new_dialog_identifiers_are_rewritten() {
        let m = outgoing(&[]);
        assert_eq!(m.call_id(), Some("new-call@198.51.100.1"));
        assert_eq!(m.from_tag(), Some("relaytag"));
        assert_eq!(m.to_tag(), None);
        assert_eq!(m.header("CSeq"), Some("1 INVITE"));
        assert_eq!(m.via_count(), 1, "only our Via");
        assert_eq!(
            m.header("Via"),
            Some("SIP/2.0/TLS 198.51.100.1:5061;branch=z9hG4bK-relay-1;rport")
        );
        assert_eq!(
            m.header("Contact"),
            Some("<sip:relay@198.51.100.1:5061;transport=tls>")
        );
        assert_eq!(m.max_forwards(), Some(68));
        let uri = crate::sip::message::uri_string(m.request_uri().unwrap());
        assert_eq!(
            uri,
            "sip:voicemail@voicemail.example.test:5061;transport=tls"
        );
        assert_eq!(
            m.header("To"),
            Some("<sip:voicemail@voicemail.example.test>")
        );
        let from = m.header("From").unwrap();
        assert!(
            from.starts_with("\"Front Desk\" <sip:1000@198.51.100.1>"),
            "{from}"
        );
        assert_eq!(m.body(), b"v=0\r\n");
        assert_eq!(m.content_type(), Some("application/sdp"));
    }

    #[test]
    fn the_other_sides_routing_never_crosses() {
        let m = outgoing(&["Record-Route", "Route", "Via", "Contact", "Authorization"]);
        let text = m.to_string();
        for leaked in [
            "10.1.1.1",
            "pbx-call-1",
            "z9hG4bK-pbx-1",
            "abc",
            "Digest",
            "192.0.2.",
        ] {
            assert!(!text.contains(leaked), "{leaked} crossed:\n{text}");
        }
        assert!(m.header("Record-Route").is_none());
        assert!(m.header("Route").is_none());
    }

    #[test]
    fn policy_headers_cross_only_when_allowed() {
        let m = outgoing(&["Diversion", "History-Info", "P-Asserted-Identity"]);
        assert_eq!(
            m.header("Diversion"),
            Some("<sip:2000@pbx.example.test>;reason=no-answer")
        );
        assert_eq!(
            m.header("History-Info"),
            Some("<sip:2000@pbx.example.test>;index=1")
        );
        assert_eq!(
            m.header("P-Asserted-Identity"),
            Some("<sip:1000@pbx.example.test>")
        );
        assert!(
            m.header("X-Internal-Secret").is_none(),
            "unlisted headers stay"
        );
        let m = outgoing(&[]);
        assert!(m.header("Diversion").is_none());
    }

    #[test]
    fn in_dialog_requests_follow_the_dialog() {
        let mut d = Dialog::uas(
            &incoming(),
            "ourtag".into(),
            Dest::udp("192.0.2.10:5060".parse().unwrap()),
            "192.0.2.1:5060".parse().unwrap(),
        )
        .unwrap();
        let bye = d.request(Method::BYE);
        assert_eq!(bye.call_id(), Some("pbx-call-1@10.1.1.1"));
        assert_eq!(bye.from_tag(), Some("ourtag"));
        assert_eq!(bye.to_tag(), Some("abc"));
        assert_eq!(bye.header("CSeq"), Some("1 BYE"));
        assert_eq!(bye.header("Route"), Some("<sip:10.1.1.1;lr>"));
        assert_eq!(
            crate::sip::message::uri_string(bye.request_uri().unwrap()),
            "sip:1000@10.1.1.1:5060"
        );
        let again = d.request(Method::INVITE);
        assert_eq!(again.header("CSeq"), Some("2 INVITE"));
        assert_eq!(d.ack(2).header("CSeq"), Some("2 ACK"));
    }

    #[test]
    fn response_teaches_the_uac_dialog() {
        let mut d = Dialog {
            call_id: "c".into(),
            local_tag: "t".into(),
            remote_tag: None,
            local_uri: "<sip:a@x>".into(),
            remote_uri: "<sip:b@y>".into(),
            remote_target: "sip:b@y".into(),
            route_set: vec![],
            local_cseq: 1,
            dest: Dest::udp("198.51.100.10:5060".parse().unwrap()),
            local_addr: "198.51.100.1:5060".parse().unwrap(),
        };
        let resp = parse(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKx\r\n\
              Record-Route: <sip:p1;lr>, <sip:p2;lr>\r\nFrom: <sip:a@x>;tag=t\r\n\
              To: <sip:b@y>;tag=rt\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContact: <sip:b@198.51.100.10:5080>\r\n\
              Content-Length: 0\r\n\r\n",
            65535,
        )
        .unwrap();
        d.learn_from_response(&resp);
        assert_eq!(d.remote_tag.as_deref(), Some("rt"));
        assert_eq!(d.remote_target, "sip:b@198.51.100.10:5080");
        assert_eq!(
            d.route_set,
            vec!["<sip:p2;lr>".to_string(), "<sip:p1;lr>".to_string()]
        );
    }

    #[test]
    fn tags_are_stripped() {
        assert_eq!(strip_tag("<sip:a@b>;tag=1"), "<sip:a@b>");
        assert_eq!(strip_tag("<sip:a@b>;x=y;tag=1"), "<sip:a@b>;x=y");
        assert_eq!(strip_tag("<sip:a@b>"), "<sip:a@b>");
    }
}
