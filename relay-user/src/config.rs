//! `relayd`'s TOML configuration: parsing and validation, no I/O beyond
//! reading the file. Every error names the field it is about.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub media: MediaConfig,
    /// The rtpengine-compatible NG control protocol (off unless `listen` is set).
    #[serde(default)]
    pub ng: NgConfig,
    /// `[metrics]`: the Prometheus text endpoint (off unless `listen` is set).
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Interfaces the relay anchors media on.
    #[serde(rename = "interface")]
    pub interfaces: Vec<InterfaceConfig>,
    /// `[sip]`: SIP listeners, limits, our TLS certificate.
    #[serde(default)]
    pub sip: crate::sip::trunk::SipConfig,
    /// `[[trunk]]`: the SIP peers (checked into [`Config::trunks`]).
    #[serde(default, rename = "trunk")]
    pub trunks: Vec<crate::sip::trunk::TrunkConfig>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneMode {
    /// XDP fast path, with the userspace forwarder for what XDP passes up.
    #[default]
    Xdp,
    /// Userspace forwarder only (no root, or no XDP).
    Userspace,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Driver (native) mode, falling back to generic mode with a warning.
    #[default]
    Auto,
    /// Driver mode or fail.
    Driver,
    /// Generic (skb) mode.
    Generic,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    pub mode: DataplaneMode,
    pub attach: AttachMode,
    /// bpffs directory the maps are pinned in.
    pub pin_path: PathBuf,
    /// Capacity of the flow maps (rules).
    pub max_flows: u32,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            mode: DataplaneMode::Xdp,
            attach: AttachMode::Auto,
            pin_path: PathBuf::from("/sys/fs/bpf/relay"),
            max_flows: relay_common::maps::MAX_FLOWS,
        }
    }
}

/// Limits and timers of the media core.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Most concurrent calls; beyond, offers are refused (SIP 503, NG `load limit`).
    pub max_calls: usize,
    /// Most concurrent media streams (m-lines) over all calls.
    pub max_streams: usize,
    /// A call whose media has been silent this long (seconds) is ended.
    pub media_timeout_s: u64,
    /// When both legs of a stream are SRTP, forward the offerer's keys
    /// unchanged (pass-through: no crypto, the flow stays in XDP) instead of
    /// giving each leg the relay's own keys (re-key, the default: neither
    /// side learns the other's key).
    pub srtp_passthrough: bool,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            max_calls: 10_000,
            max_streams: 40_000,
            media_timeout_s: 60,
            srtp_passthrough: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Unix socket `relayctl` talks to.
    pub socket: PathBuf,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
        }
    }
}

pub const DEFAULT_CONTROL_SOCKET: &str = "/run/relay/relayd.sock";

/// The NG control protocol server (docs/ng-protocol.md).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NgConfig {
    /// UDP addresses to serve NG on: one `"IP:port"` or a list. Empty (the
    /// default): no NG server. NG has no authentication: listen on loopback
    /// or a management network only.
    #[serde(deserialize_with = "one_or_many_addrs")]
    pub listen: Vec<SocketAddr>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// TCP address serving `GET /metrics`, e.g. `"127.0.0.1:9477"`. None (the
    /// default): no endpoint. The endpoint has no authentication and shows
    /// trunk names and traffic figures: bind it to loopback or a management
    /// network.
    pub listen: Option<SocketAddr>,
}

/// `"127.0.0.1:2223"` or `["127.0.0.1:2223", "[::1]:2223"]`.
fn one_or_many_addrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    struct Visitor;
    fn parse<E: serde::de::Error>(s: &str) -> Result<SocketAddr, E> {
        s.parse()
            .map_err(|_| E::custom(format!("ng.listen: {s:?} is not an IP:port address")))
    }
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Vec<SocketAddr>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an \"IP:port\" string or a list of them")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(vec![parse(s)?])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                out.push(parse(&s)?);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Visitor)
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    /// Name the rest of the configuration uses ("inside", "outside").
    pub name: String,
    /// Network device to attach XDP to.
    pub device: String,
    /// Relay address on that device.
    pub address: IpAddr,
    /// Media port range, "min-max".
    pub ports: String,
    /// How peers on this interface may send: "strict" (the SDP address and
    /// port; the default), "restricted" (SDP address, port learned) or
    /// "latch" (learned, for peers behind NAT whose SDP address is private).
    #[serde(default = "default_policy")]
    pub source_policy: crate::rule::Policy,
    /// SRTP on this interface's legs: "required", "optional" (the default:
    /// SRTP toward this side when the other side offered it) or "off".
    #[serde(default)]
    pub srtp: crate::media::SrtpPolicy,
}

fn default_policy() -> crate::rule::Policy {
    crate::rule::Policy::Strict
}

/// A validated interface with its parsed port range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub device: String,
    pub address: IpAddr,
    pub port_min: u16,
    pub port_max: u16,
    pub source_policy: crate::rule::Policy,
    pub srtp: crate::media::SrtpPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

impl Config {
    pub fn load(path: &Path) -> Result<(Config, Vec<Interface>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<(Config, Vec<Interface>), ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let interfaces = config
            .validate()
            .map_err(|(field, message)| ConfigError::Invalid {
                path: path.into(),
                field,
                message,
            })?;
        Ok((config, interfaces))
    }

    fn validate(&self) -> Result<Vec<Interface>, (String, String)> {
        if self.interfaces.is_empty() {
            return Err((
                "interface".into(),
                "at least one [[interface]] is required".into(),
            ));
        }
        if self.media.max_calls == 0 || self.media.max_streams == 0 {
            return Err(("media.max_calls".into(), "limits must be at least 1".into()));
        }
        if self.media.media_timeout_s == 0 {
            return Err((
                "media.media_timeout_s".into(),
                "must be at least 1 second".into(),
            ));
        }
        if self.dataplane.max_flows == 0 || self.dataplane.max_flows > 16_000_000 {
            return Err((
                "dataplane.max_flows".into(),
                format!("{} is outside 1..=16000000", self.dataplane.max_flows),
            ));
        }
        let mut listen = HashSet::new();
        for (i, addr) in self.ng.listen.iter().enumerate() {
            let field = format!("ng.listen[{i}]");
            if addr.port() == 0 {
                return Err((field, format!("{addr}: the NG port must not be 0")));
            }
            if !listen.insert(addr) {
                return Err((field, format!("{addr} is listed twice")));
            }
        }
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        let mut out = Vec::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            let field = |f: &str| format!("interface[{i}].{f}");
            if iface.name.is_empty() || !names.insert(iface.name.as_str()) {
                return Err((
                    field("name"),
                    format!("{:?} is empty or used twice", iface.name),
                ));
            }
            if iface.device.is_empty() || iface.device.len() > 15 {
                return Err((
                    field("device"),
                    format!("{:?} is not a device name", iface.device),
                ));
            }
            if iface.address.is_unspecified() || iface.address.is_multicast() {
                return Err((
                    field("address"),
                    format!("{} is not a unicast address", iface.address),
                ));
            }
            if !addresses.insert(iface.address) {
                return Err((field("address"), format!("{} is used twice", iface.address)));
            }
            let (min, max) = parse_range(&iface.ports).map_err(|m| (field("ports"), m))?;
            out.push(Interface {
                name: iface.name.clone(),
                device: iface.device.clone(),
                address: iface.address,
                port_min: min,
                port_max: max,
                source_policy: iface.source_policy,
                srtp: iface.srtp,
            });
        }
        self.trunks().map_err(|e| (e.field, e.message))?;
        Ok(out)
    }

    /// The checked `[sip]` and `[[trunk]]` sections as a trunk table.
    /// [`Config::parse`] has already run this, so it fails only on a
    /// `Config` built or changed in code.
    pub fn trunks(&self) -> Result<crate::sip::trunk::Trunks, crate::sip::trunk::FieldError> {
        self.sip.validate()?;
        let names: Vec<&str> = self.interfaces.iter().map(|i| i.name.as_str()).collect();
        crate::sip::trunk::Trunks::new(&self.sip, &self.trunks, &names)
    }
}

/// "30000-39999": an even start and an odd end, so RTP/RTCP pairs fit.
fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{s:?} is not a port range like \"30000-39999\"");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let min: u16 = a.trim().parse().map_err(|_| bad())?;
    let max: u16 = b.trim().parse().map_err(|_| bad())?;
    if min < 1024 || min > max {
        return Err(format!("{s:?}: need 1024 <= min <= max"));
    }
    if !min.is_multiple_of(2) || max.is_multiple_of(2) {
        return Err(format!(
            "{s:?}: need an even first port and an odd last port (RTP/RTCP pairs)"
        ));
    }
    Ok((min, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[dataplane]
mode = "xdp"
pin_path = "/sys/fs/bpf/relay-test"

[control]
socket = "/tmp/relayd.sock"

[[interface]]
name = "inside"
device = "veth-in"
address = "192.0.2.1"
ports = "30000-30999"

[[interface]]
name = "outside"
device = "veth-out"
address = "2001:db8::1"
ports = "40000-40999"
"#;

    fn err(text: &str) -> String {
        Config::parse(text, Path::new("relay.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_good_config() {
        let (c, ifs) = Config::parse(GOOD, Path::new("relay.toml")).unwrap();
        assert_eq!(c.dataplane.mode, DataplaneMode::Xdp);
        assert_eq!(c.dataplane.attach, AttachMode::Auto);
        assert_eq!(ifs.len(), 2);
        assert_eq!((ifs[0].port_min, ifs[0].port_max), (30000, 30999));
        assert_eq!(ifs[1].address, "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn errors_name_the_field() {
        let e = err(&GOOD.replace("30000-30999", "30001-30999"));
        assert!(e.contains("interface[0].ports"), "{e}");
        let e = err(&GOOD.replace("\"192.0.2.1\"", "\"192.0.2.300\""));
        assert!(e.contains("address"), "{e}");
        let e = err(&GOOD.replace("mode = \"xdp\"", "mode = \"turbo\""));
        assert!(e.contains("mode") || e.contains("turbo"), "{e}");
        let e = err(&GOOD.replace("pin_path", "pin_pth"));
        assert!(e.contains("pin_pth"), "{e}");
        let e = err(&GOOD
            .replace("\"veth-out\"", "\"veth-in\"")
            .replace("outside", "inside"));
        assert!(e.contains("interface[1].name"), "{e}");
        let e = err("[dataplane]\nmode = \"xdp\"\n");
        assert!(e.contains("interface"), "{e}");
        let e = err(&GOOD.replace("2001:db8::1", "192.0.2.1"));
        assert!(e.contains("interface[1].address"), "{e}");
    }

    #[test]
    fn example_in_docs_parses() {
        let text = include_str!("../../docs/relay.example.toml");
        let (c, ifs) = Config::parse(text, Path::new("docs/relay.example.toml")).unwrap();
        assert_eq!(ifs.len(), 2);
        assert_eq!(ifs[0].srtp, crate::media::SrtpPolicy::Off);
        assert_eq!(ifs[1].srtp, crate::media::SrtpPolicy::Required);
        assert!(!c.media.srtp_passthrough);
    }

    #[test]
    fn srtp_policy_per_interface() {
        let (_, ifs) = Config::parse(GOOD, Path::new("relay.toml")).unwrap();
        assert_eq!(ifs[0].srtp, crate::media::SrtpPolicy::Optional, "default");
        let text = GOOD.replace(
            "ports = \"40000-40999\"",
            "ports = \"40000-40999\"\nsrtp = \"required\"",
        ) + "\n[media]\nsrtp_passthrough = true\n";
        let (c, ifs) = Config::parse(&text, Path::new("relay.toml")).unwrap();
        assert_eq!(ifs[1].srtp, crate::media::SrtpPolicy::Required);
        assert!(c.media.srtp_passthrough);
        let e = err(&GOOD.replace(
            "ports = \"40000-40999\"",
            "ports = \"40000-40999\"\nsrtp = \"maybe\"",
        ));
        assert!(e.contains("maybe"), "{e}");
    }

    const SIP: &str = r#"
[sip]
listen_udp = ["192.0.2.1:5060"]
listen_tls = ["2001:db8::1:5061"]
[sip.tls]
cert = "/etc/relay/relay.pem"
key = "/etc/relay/relay.key"

[[trunk]]
name = "pbx"
transport = "udp"
peer = "192.0.2.10:5060"
interface = "inside"
route_to = "voicemail"
pass_headers = ["Diversion"]

[[trunk]]
name = "voicemail"
transport = "tls"
peer = "voicemail.example.net:5061"
interface = "outside"
[trunk.tls]
ca = "/etc/relay/service-ca.pem"
"#;

    #[test]
    fn sip_and_trunks() {
        let text = format!(
            "{GOOD}{}",
            SIP.replace("2001:db8::1:5061", "[2001:db8::1]:5061")
        );
        let (c, _) = Config::parse(&text, Path::new("relay.toml")).unwrap();
        let trunks = c.trunks().unwrap();
        assert_eq!(trunks.len(), 2);
        let pbx = trunks
            .trunk_for_source("192.0.2.10".parse().unwrap())
            .unwrap();
        assert_eq!(&*pbx.name, "pbx");
        assert_eq!(&*trunks.route_of(pbx).unwrap().name, "voicemail");
        assert_eq!(c.sip.listen_udp.len(), 1);

        let e = err(&format!("{GOOD}{SIP}"));
        assert!(e.contains("listen_tls"), "{e}");
        let e = err(&text.replace("ca = \"/etc/relay/service-ca.pem\"", "ca = \"\""));
        assert!(e.contains("trunk[1].tls.ca"), "{e}");
        let e = err(&text.replace(
            "interface = \"outside\"\n[trunk.tls]",
            "interface = \"dmz\"\n[trunk.tls]",
        ));
        assert!(e.contains("trunk[1].interface") && e.contains("dmz"), "{e}");
        let e = err(&text.replace("route_to = \"voicemail\"", "route_to = \"vm\""));
        assert!(e.starts_with("relay.toml: trunk[0].route_to: "), "{e}");
        let e = err(&text.replace(
            "[sip.tls]\ncert = \"/etc/relay/relay.pem\"\nkey = \"/etc/relay/relay.key\"\n",
            "",
        ));
        assert!(e.contains("sip.tls"), "{e}");
        let e = err(&text.replace("listen_udp", "listen_sctp"));
        assert!(e.contains("listen_sctp"), "{e}");
        let e = err(&text.replace("transport = \"udp\"", "transport = \"ws\""));
        assert!(e.contains("ws"), "{e}");
        // No [sip] and no [[trunk]]: defaults, no trunks.
        let (c, _) = Config::parse(GOOD, Path::new("relay.toml")).unwrap();
        assert_eq!(c.sip, crate::sip::trunk::SipConfig::default());
        assert!(c.trunks().unwrap().is_empty());
    }

    #[test]
    fn defaults() {
        let (c, _) = Config::parse(
            "[[interface]]\nname=\"a\"\ndevice=\"lo\"\naddress=\"127.0.0.1\"\nports=\"2000-2001\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.dataplane, DataplaneConfig::default());
        assert_eq!(c.control.socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        assert!(c.ng.listen.is_empty(), "NG is off by default");
        assert_eq!(c.metrics.listen, None, "metrics are off by default");
    }

    #[test]
    fn metrics_listen() {
        let base = "[[interface]]\nname=\"a\"\ndevice=\"lo\"\naddress=\"127.0.0.1\"\nports=\"2000-2001\"\n";
        let (c, _) = Config::parse(
            &format!("{base}[metrics]\nlisten = \"127.0.0.1:9477\"\n"),
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9477".parse().unwrap()));
        let err = Config::parse(
            &format!("{base}[metrics]\nlisten = \"localhost\"\n"),
            Path::new("x"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
    }

    #[test]
    fn ng_listen() {
        let one = format!("{GOOD}\n[ng]\nlisten = \"127.0.0.1:2223\"\n");
        let (c, _) = Config::parse(&one, Path::new("x")).unwrap();
        assert_eq!(c.ng.listen, vec!["127.0.0.1:2223".parse().unwrap()]);
        let many = format!("{GOOD}\n[ng]\nlisten = [\"127.0.0.1:2223\", \"[::1]:2223\"]\n");
        let (c, _) = Config::parse(&many, Path::new("x")).unwrap();
        assert_eq!(c.ng.listen.len(), 2);
        let e = err(&format!("{GOOD}\n[ng]\nlisten = \"localhost:2223\"\n"));
        assert!(e.contains("ng.listen") && e.contains("localhost"), "{e}");
        let e = err(&format!(
            "{GOOD}\n[ng]\nlisten = [\"127.0.0.1:2223\", \"127.0.0.1:2223\"]\n"
        ));
        assert!(e.contains("ng.listen[1]"), "{e}");
        let e = err(&format!("{GOOD}\n[ng]\nlisten = \"127.0.0.1:0\"\n"));
        assert!(e.contains("ng.listen[0]"), "{e}");
        let e = err(&format!("{GOOD}\n[ng]\nlisen = \"127.0.0.1:2223\"\n"));
        assert!(e.contains("lisen"), "{e}");
    }
}
