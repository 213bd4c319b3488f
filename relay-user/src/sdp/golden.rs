//! Golden rewrite tests: `testdata/<name>.sdp` holds a rewrite, an input SDP
//! and the expected output:
//!
//! ```text
//! # what the case is about
//! addr: 203.0.113.1
//! strip-ice: false                          (optional; default true)
//! media: port=30000 rtcp=30001 dir=sendonly (one line per m= line;
//! media: keep                                `keep` = MediaRewrite::default())
//! --- in
//! <SDP>
//! --- out
//! <expected SDP>
//! ```
//!
//! Files are stored with LF line endings; every input runs both as stored and
//! converted to CRLF, and the output must equal the expected text with CRLF.
//! Besides the exact comparison, every case checks invariants: the output
//! parses again, its `media()` reports the new ports and addresses, and the
//! lines the rewrite does not own come out byte for byte and in order.
//!
//! `RELAY_BLESS=1 cargo test -p relay-user sdp::golden` rewrites the expected
//! outputs from the actual ones; review the diff before keeping it.

use std::net::IpAddr;

use super::{Direction, MediaRewrite, Rewrite, parse};

macro_rules! golden {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run(
                    stringify!($name),
                    include_str!(concat!("testdata/", stringify!($name), ".sdp")),
                );
            }
        )*
        /// Every golden file: name and contents.
        pub(super) const FILES: &[(&str, &str)] = &[
            $((stringify!($name), include_str!(concat!("testdata/", stringify!($name), ".sdp")))),*
        ];
    };
}

golden!(
    plain_pbx_offer,
    audio_video,
    rejected_stream,
    directions,
    hold_connection_zero,
    hold_sendonly,
    rtcp_mux,
    rtcp_attribute,
    connection_levels,
    media_level_connection_only,
    ipv6,
    ipv4_to_ipv6,
    ipv6_to_ipv4,
    ice_stripped,
    ice_kept,
    crypto,
    crypto_removed,
    crypto_added,
    crypto_replaced,
    unknown_attributes,
    rejected_stream_revived,
);

#[test]
fn every_file_is_listed() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/sdp/testdata");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".sdp").map(str::to_owned)
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<&str> = FILES.iter().map(|(n, _)| *n).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "testdata/*.sdp and golden!() disagree");
}

pub(super) struct Case {
    pub rewrite: Rewrite,
    pub head: String,
    pub input: String,
    pub expected: String,
}

/// Splits a golden file into its parts (line endings normalized to LF).
pub(super) fn load(name: &str, file: &str) -> Case {
    let text = file.replace("\r\n", "\n");
    let (head, rest) = text
        .split_once("--- in\n")
        .unwrap_or_else(|| panic!("{name}: no `--- in` line"));
    let (input, expected) = rest
        .split_once("--- out\n")
        .unwrap_or_else(|| panic!("{name}: no `--- out` line"));
    let mut addr: Option<IpAddr> = None;
    let mut strip_ice = true;
    let mut media = Vec::new();
    for line in head.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("{name}: bad header line {line:?}"));
        let value = value.trim();
        match key {
            "addr" => addr = Some(value.parse().unwrap()),
            "strip-ice" => strip_ice = value.parse().unwrap(),
            "media" => media.push(media_rewrite(name, value)),
            _ => panic!("{name}: unknown header {key:?}"),
        }
    }
    Case {
        rewrite: Rewrite {
            addr: addr.unwrap_or_else(|| panic!("{name}: no `addr:`")),
            media,
            strip_ice,
        },
        head: head.to_owned(),
        input: input.to_owned(),
        expected: expected.to_owned(),
    }
}

fn media_rewrite(name: &str, spec: &str) -> MediaRewrite {
    let mut mr = MediaRewrite::default();
    for item in spec.split_whitespace() {
        match item.split_once('=') {
            None if item == "keep" => {}
            Some(("port", p)) => mr.port = Some(p.parse().unwrap()),
            Some(("rtcp", p)) => mr.rtcp_port = Some(p.parse().unwrap()),
            Some(("proto", p)) => mr.proto = Some(p.into()),
            // `crypto=-` removes every line; `crypto=A|B` writes A and B
            // (`~` stands for a space).
            Some(("crypto", "-")) => mr.crypto = Some(Vec::new()),
            Some(("crypto", c)) => {
                mr.crypto = Some(c.split('|').map(|v| v.replace('~', " ")).collect())
            }
            Some(("dir", d)) => {
                mr.direction = Some(
                    Direction::from_attr(d)
                        .unwrap_or_else(|| panic!("{name}: bad direction {d:?}")),
                )
            }
            _ => panic!("{name}: bad media item {item:?}"),
        }
    }
    mr
}

fn run(name: &str, file: &str) {
    let case = load(name, file);
    let expected = case.expected.replace('\n', "\r\n");
    for (ending, input) in [
        ("LF", case.input.clone()),
        ("CRLF", case.input.replace('\n', "\r\n")),
    ] {
        let sdp = parse(&input).unwrap_or_else(|e| panic!("{name} ({ending}): {e}"));
        let out = sdp
            .rewrite(&case.rewrite)
            .unwrap_or_else(|e| panic!("{name} ({ending}): {e}"));
        if std::env::var_os("RELAY_BLESS").is_some() {
            let path = format!("{}/src/sdp/testdata/{name}.sdp", env!("CARGO_MANIFEST_DIR"));
            let blessed = format!(
                "{}--- in\n{}--- out\n{}",
                case.head,
                case.input,
                out.replace("\r\n", "\n")
            );
            std::fs::write(path, blessed).unwrap();
            return;
        }
        assert!(
            out == expected,
            "{name} ({ending}): output differs\n--- expected\n{}--- actual\n{}",
            case.expected,
            out.replace("\r\n", "\n")
        );
        check_invariants(name, &input, &case.rewrite, &out);
    }
}

/// What holds for every rewrite, whatever the expected file says.
pub(super) fn check_invariants(name: &str, input: &str, rw: &Rewrite, out: &str) {
    let before = parse(input).unwrap();
    assert!(out.ends_with("\r\n"), "{name}: no trailing CRLF");
    assert!(
        !out.replace("\r\n", "").contains(['\r', '\n']),
        "{name}: a line ending other than CRLF"
    );
    let after = parse(out).unwrap_or_else(|e| panic!("{name}: output does not parse: {e}"));

    // Rewriting the output again changes nothing.
    assert_eq!(after.rewrite(rw).unwrap(), out, "{name}: not idempotent");

    if before.origin.is_some() {
        assert_eq!(after.origin_addr(), Some(rw.addr), "{name}: o= address");
    }
    assert_eq!(after.session_direction(), before.session_direction());
    let old = before.media();
    let new = after.media();
    assert_eq!(old.len(), new.len(), "{name}: m= line count");
    for ((o, n), mr) in old.iter().zip(&new).zip(&rw.media) {
        let i = o.index;
        assert_eq!(n.port, mr.port.unwrap_or(o.port), "{name}: m[{i}] port");
        let connection = match o.connection {
            Some(a) if a.is_unspecified() => Some(a),
            Some(_) => Some(rw.addr),
            None if n.port != 0 => Some(rw.addr),
            None => None,
        };
        assert_eq!(n.connection, connection, "{name}: m[{i}] connection");
        let rtcp = mr.rtcp_port.map(|p| {
            let a = match o.rtcp {
                Some((_, Some(a))) if a.is_unspecified() => Some(a),
                Some((_, Some(_))) => Some(rw.addr),
                _ => None,
            };
            (p, a)
        });
        assert_eq!(n.rtcp, rtcp, "{name}: m[{i}] rtcp");
        assert_eq!(
            n.direction,
            mr.direction.unwrap_or(o.direction),
            "{name}: m[{i}] direction"
        );
        assert_eq!(
            (&n.kind, n.port_count, &n.formats),
            (&o.kind, o.port_count, &o.formats),
            "{name}: m[{i}]"
        );
        assert_eq!(
            &n.proto,
            mr.proto.as_ref().unwrap_or(&o.proto),
            "{name}: m[{i}] proto"
        );
        assert_eq!(
            (&n.crypto, n.rtcp_mux),
            (mr.crypto.as_ref().unwrap_or(&o.crypto), o.rtcp_mux),
            "{name}: m[{i}]"
        );
    }

    // Apart from the lines the rewrite owns, the output is the input, byte for
    // byte and in the same order.
    let owned = |line: &str| {
        line.starts_with("o=")
            || line.starts_with("c=")
            || line.starts_with("m=")
            || line.starts_with("a=rtcp:")
            || (super::rewrite::is_crypto(line) && rw.media.iter().any(|m| m.crypto.is_some()))
            || line
                .strip_prefix("a=")
                .is_some_and(|a| Direction::from_attr(a.split(':').next().unwrap_or(a)).is_some())
            || (rw.strip_ice && super::rewrite::is_ice(line))
    };
    let kept_in: Vec<&str> = before.lines().filter(|l| !owned(l)).collect();
    let kept_out: Vec<&str> = after.lines().filter(|l| !owned(l)).collect();
    assert_eq!(
        kept_in, kept_out,
        "{name}: lines not owned by the rewrite changed"
    );
    if rw.strip_ice {
        assert!(
            !after.lines().any(super::rewrite::is_ice),
            "{name}: ICE attribute left"
        );
    }
}
