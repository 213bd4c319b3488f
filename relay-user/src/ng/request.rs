//! An NG request dictionary read into [`Request`]: the keys and flags the
//! relay acts on, normalised, whatever spelling and shape they arrived in.
//!
//! The same option reaches us in several forms, depending on the client and
//! its version:
//! - as a dictionary key (`"ICE": "remove"`, `"replace": ["origin"]`),
//! - as an item of the `flags` list (`"trust-address"`, `"replace-origin"`,
//!   `"rtcp-mux-demux"`, `"SDES-off"`),
//! - inside one raw `rtpp-flags` string that Kamailio 5.8+ can pass through
//!   unparsed (`"replace-origin direction=inside ICE=remove label=caller"`,
//!   with `[...]` for lists).
//!
//! Keys and flag names are compared after [`normalize`]: ASCII lowercase,
//! spaces and underscores turned into hyphens (`"call id"`, `"call_id"` and
//! `"Call-ID"` are all `call-id`). Values keep their spelling. What the relay
//! does not act on is collected in [`Request::ignored`] (logged at debug
//! level, documented in docs/ng-protocol.md).

use std::{collections::BTreeSet, net::IpAddr};

use super::bencode::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Ping,
    Offer,
    Answer,
    Delete,
    Query,
    List,
    Statistics,
    BlockMedia,
    UnblockMedia,
    /// Any other command, normalised (answered with an error).
    Other(String),
}

impl Command {
    pub fn parse(name: &str) -> Command {
        match normalize(name).as_str() {
            "ping" => Command::Ping,
            "offer" => Command::Offer,
            "answer" => Command::Answer,
            "delete" => Command::Delete,
            "query" => Command::Query,
            "list" => Command::List,
            "statistics" => Command::Statistics,
            "block-media" => Command::BlockMedia,
            "unblock-media" => Command::UnblockMedia,
            other => Command::Other(other.to_string()),
        }
    }

    /// Name for logs and the statistics counters.
    pub fn name(&self) -> &str {
        match self {
            Command::Ping => "ping",
            Command::Offer => "offer",
            Command::Answer => "answer",
            Command::Delete => "delete",
            Command::Query => "query",
            Command::List => "list",
            Command::Statistics => "statistics",
            Command::BlockMedia => "block media",
            Command::UnblockMedia => "unblock media",
            Command::Other(s) => s,
        }
    }
}

/// A request as the relay reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub command: Option<Command>,
    pub call_id: Option<String>,
    pub from_tag: Option<String>,
    pub to_tag: Option<String>,
    pub via_branch: Option<String>,
    pub label: Option<String>,
    pub sdp: Option<String>,
    /// Interface names: [facing the SDP's sender, facing its receiver].
    pub from_interface: Option<String>,
    pub to_interface: Option<String>,
    /// Normalised names from `flags` (and bare words of `rtpp-flags`).
    pub flags: BTreeSet<String>,
    /// Normalised `replace` items (`origin`, `session-connection`, ...).
    pub replace: BTreeSet<String>,
    /// Normalised `ICE` items (`remove`, `force`, ...).
    pub ice: BTreeSet<String>,
    /// Normalised `rtcp-mux` items (`offer`, `demux`, `accept`, `reject`, ...).
    pub rtcp_mux: BTreeSet<String>,
    /// Normalised `SDES` items.
    pub sdes: BTreeSet<String>,
    /// `transport-protocol` as given (`RTP/AVP`, `RTP/SAVP`, ...).
    pub transport_protocol: Option<String>,
    /// Source address of the SIP message (`received-from`).
    pub received_from: Option<IpAddr>,
    /// `media-address`: overrides the SDP's connection address.
    pub media_address: Option<IpAddr>,
    /// `delete-delay` in seconds.
    pub delete_delay: Option<i64>,
    /// `supports` contains `load limit`.
    pub supports_load_limit: bool,
    /// `list`: most call ids returned.
    pub limit: Option<i64>,
    /// Keys and flags present but not acted on (normalised names).
    pub ignored: BTreeSet<String>,
    /// Problems with values of keys we do act on (bad address, not UTF-8).
    pub errors: Vec<String>,
}

/// Lowercase, spaces and underscores to hyphens.
pub fn normalize(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ' ' | '_' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

impl Request {
    /// Reads a decoded request dictionary. Never fails: problems are recorded
    /// in [`Request::errors`] (and a missing `command` is `None`), so the
    /// handler can answer with the most useful `error-reason`.
    pub fn from_value(dict: &Value) -> Request {
        let mut r = Request::default();
        let Some(pairs) = dict.as_dict() else {
            r.errors.push("the message is not a dictionary".into());
            return r;
        };
        let mut rtpp_flags = Vec::new();
        for (k, v) in pairs {
            let key = normalize(&String::from_utf8_lossy(k));
            if matches!(key.as_str(), "rtpp-flags") {
                match v.as_str() {
                    Some(s) => rtpp_flags.push(s.to_string()),
                    None => r.errors.push("rtpp-flags is not a string".into()),
                }
                continue;
            }
            r.apply(&key, v);
        }
        // The raw string is parsed after the dictionary, like rtpengine does;
        // its values override the module's.
        for s in rtpp_flags {
            r.apply_rtpp_flags(&s);
        }
        r
    }

    fn text(&mut self, key: &str, v: &Value) -> Option<String> {
        match v {
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => Some(s.to_string()),
                Err(_) => {
                    self.errors.push(format!("{key} is not UTF-8"));
                    None
                }
            },
            Value::Int(n) => Some(n.to_string()),
            _ => {
                self.errors.push(format!("{key} is not a string"));
                None
            }
        }
    }

    /// Strings of a list, or the single string given instead of a list.
    fn words(&mut self, key: &str, v: &Value) -> Vec<String> {
        match v {
            Value::List(items) => items.iter().filter_map(|i| self.text(key, i)).collect(),
            other => self.text(key, other).into_iter().collect(),
        }
    }

    fn int(&mut self, key: &str, v: &Value) -> Option<i64> {
        match v {
            Value::Int(n) => Some(*n),
            other => match self.text(key, other)?.trim().parse() {
                Ok(n) => Some(n),
                Err(_) => {
                    self.errors.push(format!("{key} is not an integer"));
                    None
                }
            },
        }
    }

    fn address(&mut self, key: &str, s: &str) -> Option<IpAddr> {
        match s
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
        {
            Ok(a) => Some(a),
            Err(_) => {
                self.errors
                    .push(format!("{key}: {s:?} is not an IP address"));
                None
            }
        }
    }

    /// One dictionary entry (or one `key=value` of `rtpp-flags`), key normalised.
    fn apply(&mut self, key: &str, v: &Value) {
        match key {
            "command" => {
                self.command = self.text(key, v).map(|c| Command::parse(&c));
            }
            "call-id" => self.call_id = self.text(key, v),
            "from-tag" => self.from_tag = self.text(key, v),
            "to-tag" => self.to_tag = self.text(key, v),
            "via-branch" => self.via_branch = self.text(key, v),
            "label" | "from-label" => self.label = self.text(key, v),
            "sdp" => self.sdp = self.text(key, v),
            "direction" => {
                for name in self.words(key, v) {
                    self.push_direction(name);
                }
            }
            "from-interface" => self.from_interface = self.text(key, v),
            "to-interface" => self.to_interface = self.text(key, v),
            "flags" => {
                for f in self.words(key, v) {
                    self.flag(&f);
                }
            }
            "replace" => {
                for w in self.words(key, v) {
                    self.replace.insert(normalize(&w));
                }
            }
            "ice" => {
                for w in self.words(key, v) {
                    self.ice.insert(normalize(&w));
                }
            }
            "rtcp-mux" => {
                for w in self.words(key, v) {
                    self.rtcp_mux.insert(normalize(&w));
                }
            }
            "sdes" => {
                for w in self.words(key, v) {
                    self.sdes.insert(normalize(&w));
                }
            }
            "transport-protocol" => self.transport_protocol = self.text(key, v),
            "received-from" => {
                // ["IP4", "192.0.2.10"], or just the address.
                let words = self.words(key, v);
                if let Some(addr) = words.last() {
                    self.received_from = self.address(key, addr);
                }
            }
            "media-address" => {
                if let Some(s) = self.text(key, v) {
                    self.media_address = self.address(key, &s);
                }
            }
            "delete-delay" => self.delete_delay = self.int(key, v),
            "supports" => {
                let words = self.words(key, v);
                self.supports_load_limit |= words.iter().any(|w| normalize(w) == "load-limit");
            }
            "limit" => self.limit = self.int(key, v),
            // Keys the relay reads nothing from.
            _ => {
                self.ignored.insert(key.to_string());
            }
        }
    }

    fn push_direction(&mut self, name: String) {
        if self.from_interface.is_none() {
            self.from_interface = Some(name);
        } else if self.to_interface.is_none() {
            self.to_interface = Some(name);
        } else {
            self.errors
                .push(format!("direction: more than two interfaces ({name:?})"));
        }
    }

    /// One item of `flags`, or a bare word of `rtpp-flags`.
    fn flag(&mut self, raw: &str) {
        let f = normalize(raw);
        // Prefix forms of list-valued options (`replace-origin`,
        // `rtcp-mux-demux`, `SDES-off`, `ICE-remove`).
        for (prefix, set) in [
            ("replace-", &mut self.replace),
            ("rtcp-mux-", &mut self.rtcp_mux),
            ("sdes-", &mut self.sdes),
            ("ice-", &mut self.ice),
        ] {
            if let Some(rest) = f.strip_prefix(prefix)
                && !rest.is_empty()
            {
                set.insert(rest.to_string());
                return;
            }
        }
        // Legacy interface selectors sent as flags.
        if f == "internal" || f == "external" {
            self.push_direction(f);
            return;
        }
        // Transport shorthands (`RTP/AVP`, `SRTP`, ...) are handled by the
        // rtpp-flags parser; in a `flags` list they are plain flags.
        self.flags.insert(f);
    }

    /// Parses a raw `rtpp-flags` string: space-separated `word` or
    /// `key=value`, where a value may be a `[...]` list (nested lists allowed).
    fn apply_rtpp_flags(&mut self, s: &str) {
        let items = match rtpp::parse(s) {
            Ok(items) => items,
            Err(e) => {
                self.errors.push(format!("rtpp-flags: {e}"));
                return;
            }
        };
        let mut transport = Transport::default();
        for item in items {
            match item {
                rtpp::Item::Word(w) => {
                    if !transport.word(&w) {
                        self.flag(&w);
                    }
                }
                rtpp::Item::Pair(k, v) => {
                    let key = normalize(&k);
                    match key.as_str() {
                        // Kamailio's shorthand for the whole dictionary key.
                        "flags" | "rtpp-flags" => {
                            let words = self.words(&key, &v);
                            for w in words {
                                self.flag(&w);
                            }
                        }
                        _ => self.apply(&key, &v),
                    }
                }
            }
        }
        if let Some(p) = transport.protocol() {
            self.transport_protocol = Some(p.to_string());
        }
    }

    /// Whether a normalised flag is present.
    pub fn has(&self, flag: &str) -> bool {
        self.flags.contains(flag)
    }
}

/// The transport shorthands of rtpp-flags: `RTP`/`SRTP` x `AVP`/`AVPF`, with
/// `DTLS`, or a full name (`RTP/SAVP`). The bits are the order the names
/// combine in, as the Kamailio module and rtpengine both define them.
#[derive(Default)]
struct Transport {
    /// Bit 0: SRTP, bit 1: AVPF, bit 2: DTLS; None: no shorthand seen.
    bits: Option<u8>,
}

impl Transport {
    fn word(&mut self, w: &str) -> bool {
        let b = self.bits.unwrap_or(0);
        self.bits = Some(match w {
            "RTP" => b & !1,
            "SRTP" => b | 1,
            "AVP" => b & !2,
            "AVPF" => b | 2,
            "DTLS" => b | 4,
            "RTP/AVP" => 0,
            "RTP/SAVP" => 1,
            "RTP/AVPF" => 2,
            "RTP/SAVPF" => 3,
            "UDP/TLS/RTP/SAVP" => 5,
            "UDP/TLS/RTP/SAVPF" => 7,
            _ => return false,
        });
        true
    }

    fn protocol(&self) -> Option<&'static str> {
        Some(match self.bits? {
            0 => "RTP/AVP",
            1 => "RTP/SAVP",
            2 => "RTP/AVPF",
            3 => "RTP/SAVPF",
            4 | 5 => "UDP/TLS/RTP/SAVP",
            _ => "UDP/TLS/RTP/SAVPF",
        })
    }
}

/// The `rtpp-flags` mini-syntax.
pub mod rtpp {
    use super::Value;

    /// Most items in one string (it comes from a proxy's configuration, but
    /// is still network input).
    const MAX_ITEMS: usize = 4096;
    const MAX_DEPTH: usize = 8;

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Item {
        Word(String),
        Pair(String, Value),
    }

    #[derive(Debug, PartialEq, Eq, thiserror::Error)]
    pub enum Error {
        #[error("unbalanced brackets")]
        Unbalanced,
        #[error("nested deeper than {MAX_DEPTH}")]
        TooDeep,
        #[error("more than {MAX_ITEMS} items")]
        TooMany,
    }

    /// Splits into top-level items. Lists become [`Value::List`] (or
    /// [`Value::Dict`] when their first element is `key=value`).
    pub fn parse(s: &str) -> Result<Vec<Item>, Error> {
        let tokens = tokenize(s);
        if tokens.len() > MAX_ITEMS {
            return Err(Error::TooMany);
        }
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < tokens.len() {
            match &tokens[pos] {
                Token::Close => return Err(Error::Unbalanced),
                Token::Open => return Err(Error::Unbalanced),
                Token::Text(t) => {
                    pos += 1;
                    match t.split_once('=') {
                        None => out.push(Item::Word(t.clone())),
                        Some((k, v)) if v.is_empty() && tokens.get(pos) == Some(&Token::Open) => {
                            pos += 1;
                            let value = list(&tokens, &mut pos, 1)?;
                            out.push(Item::Pair(k.to_string(), value));
                        }
                        Some((k, v)) => out.push(Item::Pair(k.to_string(), Value::str(v))),
                    }
                }
            }
        }
        Ok(out)
    }

    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Token {
        Open,
        Close,
        Text(String),
    }

    /// Words separated by spaces; `[` and `]` are tokens of their own where
    /// they open a value (`key=[`) or close one (`word]`).
    fn tokenize(s: &str) -> Vec<Token> {
        let mut out = Vec::new();
        for word in s.split([' ', '\t', '\r', '\n']).filter(|w| !w.is_empty()) {
            let mut w = word;
            // Leading brackets: nested list openers.
            while let Some(rest) = w.strip_prefix('[') {
                out.push(Token::Open);
                w = rest;
            }
            let closes = w.len() - w.trim_end_matches(']').len();
            let mut rest = &w[..w.len() - closes];
            // `key=[value`, possibly nested: `codec=[strip=[all`.
            while let Some((k, v)) = rest.split_once("=[") {
                out.push(Token::Text(format!("{k}=")));
                out.push(Token::Open);
                rest = v;
                while let Some(r) = rest.strip_prefix('[') {
                    out.push(Token::Open);
                    rest = r;
                }
            }
            if !rest.is_empty() {
                out.push(Token::Text(rest.to_string()));
            }
            out.extend(std::iter::repeat_n(Token::Close, closes));
        }
        out
    }

    /// Items up to the matching `]` (already past the `[`).
    fn list(tokens: &[Token], pos: &mut usize, depth: usize) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep);
        }
        let mut items: Vec<(Option<String>, Value)> = Vec::new();
        loop {
            let Some(tok) = tokens.get(*pos) else {
                return Err(Error::Unbalanced);
            };
            *pos += 1;
            match tok {
                Token::Close => break,
                Token::Open => items.push((None, list(tokens, pos, depth + 1)?)),
                Token::Text(t) => match t.split_once('=') {
                    Some((k, v)) if v.is_empty() && tokens.get(*pos) == Some(&Token::Open) => {
                        *pos += 1;
                        items.push((Some(k.to_string()), list(tokens, pos, depth + 1)?));
                    }
                    Some((k, v)) => items.push((Some(k.to_string()), Value::str(v))),
                    None => items.push((None, Value::str(t))),
                },
            }
        }
        let is_dict = items.first().is_some_and(|(k, _)| k.is_some());
        Ok(if is_dict {
            Value::Dict(
                items
                    .into_iter()
                    .map(|(k, v)| (k.unwrap_or_default().into_bytes(), v))
                    .collect(),
            )
        } else {
            Value::List(
                items
                    .into_iter()
                    .map(|(k, v)| match k {
                        // `a=b` inside a plain list stays the text it was.
                        Some(k) => match v.as_str() {
                            Some(s) => Value::str(format!("{k}={s}")),
                            None => v,
                        },
                        None => v,
                    })
                    .collect(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ng::bencode::decode;
    use crate::test_rng::Rng;

    fn req(bytes: &[u8]) -> Request {
        Request::from_value(&decode(bytes).unwrap())
    }

    #[test]
    fn key_spellings() {
        for key in ["call-id", "call id", "call_id", "Call-ID", "CALL ID"] {
            let msg = format!("d7:command4:ping{}:{key}1:xe", key.len());
            assert_eq!(req(msg.as_bytes()).call_id.as_deref(), Some("x"), "{key}");
        }
        let r = req(b"d7:command11:block_media13:received froml3:IP410:192.0.2.10ee");
        assert_eq!(r.command, Some(Command::BlockMedia));
        assert_eq!(r.received_from, Some("192.0.2.10".parse().unwrap()));
    }

    #[test]
    fn flags_list_and_prefixes() {
        let r = req(
            b"d5:flagsl13:trust-address14:replace-origin14:rtcp-mux-demux8:SDES-off13:Strict Source8:internalee",
        );
        assert!(r.has("trust-address"));
        assert!(r.has("strict-source"));
        assert!(r.replace.contains("origin"));
        assert!(r.rtcp_mux.contains("demux"));
        assert!(r.sdes.contains("off"));
        assert_eq!(r.from_interface.as_deref(), Some("internal"));
    }

    #[test]
    fn rtpp_flags_string() {
        let flags = "replace-origin replace-session-connection direction=inside direction=outside \
                     ICE=remove label=caller  trust-address RTP/SAVP delete-delay=5 \
                     rtcp-mux=[demux] received-from=[IP4 192.0.2.10] SDES=[off no-AES_CM_128_HMAC_SHA1_32] \
                     codec=[strip=[all] offer=[PCMA PCMU]] to-tag=tt";
        let msg = format!("d7:command5:offer10:rtpp-flags{}:{flags}e", flags.len());
        let r = req(msg.as_bytes());
        assert_eq!(r.command, Some(Command::Offer));
        assert!(r.replace.contains("origin") && r.replace.contains("session-connection"));
        assert_eq!(r.from_interface.as_deref(), Some("inside"));
        assert_eq!(r.to_interface.as_deref(), Some("outside"));
        assert!(r.ice.contains("remove"));
        assert_eq!(r.label.as_deref(), Some("caller"));
        assert!(r.has("trust-address"));
        assert_eq!(r.transport_protocol.as_deref(), Some("RTP/SAVP"));
        assert_eq!(r.delete_delay, Some(5));
        assert!(r.rtcp_mux.contains("demux"));
        assert_eq!(r.received_from, Some("192.0.2.10".parse().unwrap()));
        assert!(r.sdes.contains("off") && r.sdes.contains("no-aes-cm-128-hmac-sha1-32"));
        assert!(r.ignored.contains("codec"));
        assert_eq!(r.to_tag.as_deref(), Some("tt"));
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }

    #[test]
    fn transport_shorthands_combine() {
        for (words, want) in [
            ("RTP AVP", "RTP/AVP"),
            ("SRTP AVPF", "RTP/SAVPF"),
            ("SRTP", "RTP/SAVP"),
            ("DTLS AVPF SRTP", "UDP/TLS/RTP/SAVPF"),
            ("RTP/AVPF", "RTP/AVPF"),
        ] {
            let msg = format!("d10:rtpp-flags{}:{words}e", words.len());
            assert_eq!(
                req(msg.as_bytes()).transport_protocol.as_deref(),
                Some(want),
                "{words}"
            );
        }
    }

    #[test]
    fn rtpp_syntax_errors_are_reported_not_fatal() {
        for bad in ["a=[b", "]", "x=[[[[[[[[[[a]]]]]]]]]]"] {
            let msg = format!("d7:command4:ping10:rtpp-flags{}:{bad}e", bad.len());
            let r = req(msg.as_bytes());
            assert_eq!(r.command, Some(Command::Ping));
            assert!(!r.errors.is_empty(), "{bad}");
        }
    }

    #[test]
    fn bad_values_are_errors() {
        let r = req(b"d13:received-froml3:IP43:nope8:from-tag2:\xff\xfee");
        assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
        assert_eq!(Request::from_value(&Value::Int(1)).errors.len(), 1);
    }

    #[test]
    fn fuzz_rtpp_flags_never_panic() {
        let mut rng = Rng(0x5eed_f1a6);
        let parts = [
            "[",
            "]",
            "=",
            " ",
            "a",
            "key=",
            "=[",
            "x=[",
            "]]",
            "direction=",
            "flags=[",
            "b c",
            "ICE",
            "RTP",
            "SRTP",
            "label=",
            "é",
            "\t",
        ];
        for _ in 0..20_000 {
            let n = (rng.next() % 12) as usize;
            let s: String = (0..n)
                .map(|_| parts[(rng.next() % parts.len() as u64) as usize])
                .collect();
            let _ =
                Request::from_value(&Value::Dict(vec![(b"rtpp-flags".to_vec(), Value::str(&s))]));
        }
    }
}
