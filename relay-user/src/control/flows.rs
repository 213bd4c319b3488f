//! Flows: rules with their call context, effective path and age, as the
//! control socket's `flows` and `flow` requests return them and `relayctl
//! flows` / `relayctl flow` print them. Built from a running relayd or, when
//! it is down, from the pinned maps alone (kernel state only).

use std::{collections::BTreeMap, net::SocketAddr};

use relay_common::{DropReason, FlowKey, FlowRule, FlowState, FlowStats};
use serde::{Deserialize, Serialize};

use crate::{
    config::DataplaneMode,
    dataplane::{RuleView, maps::FlowMaps, monotonic_ns, views_from_maps},
    media::RuleContext,
    relay::Relay,
    rule::{self, Path},
};

/// Where a rule's accepted packets actually go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowPath {
    /// Rewritten and sent in the driver.
    Xdp,
    /// The userspace forwarder: `userspace` rules, userspace mode, or a rule
    /// the kernel map refused.
    Userspace,
    /// Dropped (`block` rules: hold, NG `block media`).
    Blocked,
}

impl FlowPath {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::Userspace => "userspace",
            Self::Blocked => "blocked",
        }
    }
}

/// One rule as `relayctl flows` shows it: the rule view (rule, learned
/// source, per-path figures) plus what only the control plane knows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FlowView {
    #[serde(flatten)]
    pub view: RuleView,
    /// The call the rule belongs to; null for static rules (and for every
    /// rule when read from the pinned maps, which know no calls).
    pub call: Option<RuleContext>,
    pub path: FlowPath,
    /// Milliseconds since this relayd installed (or adopted) the rule.
    pub age_ms: Option<u64>,
    /// Forwarded packets per second over both paths. The control socket
    /// leaves it null: relayctl computes it from two samples.
    pub pps: Option<f64>,
    /// SRTP work on this flow ("rekey", "encrypt", "decrypt",
    /// "passthrough"); null for plain RTP and for rules read from the
    /// pinned maps (the keys live in relayd only).
    #[serde(default)]
    pub srtp: Option<String>,
}

impl FlowView {
    pub fn local(&self) -> SocketAddr {
        self.view.rule.local
    }

    pub fn bytes(&self) -> u64 {
        [&self.view.xdp, &self.view.userspace]
            .into_iter()
            .flatten()
            .map(|s| s.bytes)
            .sum()
    }

    pub fn total_drops(&self) -> u64 {
        DropReason::ALL.iter().map(|r| self.view.drops(*r)).sum()
    }

    /// Milliseconds since the last accepted packet on either path.
    pub fn idle_ms(&self) -> Option<u64> {
        [&self.view.xdp, &self.view.userspace]
            .into_iter()
            .flatten()
            .filter_map(|s| s.idle_ms)
            .min()
    }
}

/// The `flows` result: every flow, and when the figures were read
/// (CLOCK_MONOTONIC ns of the relay host), so two samples give rates.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FlowsReply {
    pub time_ns: u64,
    /// True when read from the pinned maps with relayd down: no call
    /// context, no userspace figures, no age.
    pub kernel_only: bool,
    pub flows: Vec<FlowView>,
}

/// A rule named by its id or its receiving relay endpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum FlowRef {
    Id(u64),
    Local(SocketAddr),
}

impl FlowRef {
    /// `12` or `192.0.2.1:30000`.
    pub fn parse(s: &str) -> Option<Self> {
        s.parse()
            .map(Self::Id)
            .ok()
            .or_else(|| s.parse().map(Self::Local).ok())
    }

    pub fn matches(&self, v: &RuleView) -> bool {
        match self {
            Self::Id(id) => v.rule.id == *id,
            Self::Local(l) => v.rule.local == *l,
        }
    }
}

impl std::fmt::Display for FlowRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => write!(f, "id {id}"),
            Self::Local(l) => write!(f, "endpoint {l}"),
        }
    }
}

/// The `flow` result: one flow and its entries in the kernel maps.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FlowDetail {
    pub time_ns: u64,
    pub kernel_only: bool,
    pub flow: FlowView,
    /// Absent in userspace mode, and for a rule the kernel refused.
    pub kernel: Option<KernelEntries>,
}

/// A rule's entries in `FLOWS`, `FLOW_STATE` and `FLOW_STATS`, decoded field
/// by field with the raw integers (ports in host order, addresses as text).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KernelEntries {
    /// The 20-byte `FlowKey` as hex, as `bpftool map dump` shows it.
    pub key_hex: String,
    pub rule: KernelRule,
    pub state: Option<KernelState>,
    /// `FLOW_STATS` per CPU, index = CPU number.
    pub stats_per_cpu: Vec<KernelStats>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KernelRule {
    pub id: u64,
    pub latch_until_ns: u64,
    pub rate_interval_ns: u64,
    pub rate_burst_ns: u64,
    pub peer: SocketAddr,
    pub out_src: SocketAddr,
    pub dst: SocketAddr,
    /// `Action`: 0 forward, 1 userspace, 2 block.
    pub action: u8,
    /// `SourcePolicy`: 0 strict, 1 restricted, 2 latch.
    pub policy: u8,
    /// The device packets must arrive on (0: any).
    #[serde(default)]
    pub ingress_ifindex: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KernelState {
    pub tat_ns: u64,
    pub source: SocketAddr,
    pub locked: u8,
    pub ssrc: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KernelStats {
    pub packets: u64,
    pub bytes: u64,
    pub last_seen_ns: u64,
    pub passed_up: u64,
    pub drops: BTreeMap<String, u64>,
}

impl KernelEntries {
    /// Reads the entries of `key`; None when `FLOWS` has no rule there.
    pub fn read(maps: &FlowMaps, key: &FlowKey) -> Option<Self> {
        let r: FlowRule = maps.rule(key)?;
        Some(Self {
            key_hex: key_hex(key),
            rule: KernelRule {
                id: r.id,
                latch_until_ns: r.latch_until_ns,
                rate_interval_ns: r.rate_interval_ns,
                rate_burst_ns: r.rate_burst_ns,
                peer: rule::sock_of(&r.peer_addr, r.peer_port),
                out_src: rule::sock_of(&r.out_src_addr, r.out_src_port),
                dst: rule::sock_of(&r.dst_addr, r.dst_port),
                action: r.action,
                policy: r.policy,
                ingress_ifindex: r.ingress_ifindex,
            },
            state: maps.state(key).map(|s: FlowState| KernelState {
                tat_ns: s.tat_ns,
                source: rule::sock_of(&s.src_addr, s.src_port),
                locked: s.locked,
                ssrc: s.ssrc,
            }),
            stats_per_cpu: maps
                .stats_per_cpu(key)
                .iter()
                .map(|s: &FlowStats| KernelStats {
                    packets: s.packets,
                    bytes: s.bytes,
                    last_seen_ns: s.last_seen_ns,
                    passed_up: s.passed_up,
                    drops: DropReason::ALL
                        .iter()
                        .map(|d| (d.as_str().to_string(), s.drops[*d as usize]))
                        .collect(),
                })
                .collect(),
        })
    }
}

fn key_hex(key: &FlowKey) -> String {
    key.addr
        .iter()
        .chain(&key.port)
        .chain(&key._pad)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The path a running relayd sends `v`'s packets on.
pub(crate) fn path_of(relay: &Relay, v: &RuleView) -> FlowPath {
    match v.rule.path {
        Path::Block => FlowPath::Blocked,
        Path::Userspace => FlowPath::Userspace,
        Path::Forward
            if relay.dp.mode() == DataplaneMode::Userspace
                || relay.dp.in_fallback(v.rule.local) =>
        {
            FlowPath::Userspace
        }
        Path::Forward => FlowPath::Xdp,
    }
}

/// The path as the kernel alone sees it (relayd down).
fn kernel_path(v: &RuleView) -> FlowPath {
    match v.rule.path {
        Path::Block => FlowPath::Blocked,
        Path::Userspace => FlowPath::Userspace,
        Path::Forward => FlowPath::Xdp,
    }
}

/// Every flow of a running relayd.
pub fn flows(relay: &Relay) -> FlowsReply {
    let contexts = relay.media.rule_contexts();
    let views = relay.dp.views();
    let time_ns = monotonic_ns();
    let flows = views
        .into_iter()
        .map(|v| {
            let local = v.rule.local;
            FlowView {
                call: contexts.get(&local).cloned(),
                path: path_of(relay, &v),
                age_ms: relay
                    .installed_ns
                    .get(&local)
                    .map(|t| time_ns.saturating_sub(*t) / 1_000_000),
                pps: None,
                srtp: v.rule.srtp_mode().map(String::from),
                view: v,
            }
        })
        .collect();
    FlowsReply {
        time_ns,
        kernel_only: false,
        flows,
    }
}

/// One flow of a running relayd with its kernel entries.
pub fn flow(relay: &Relay, which: &FlowRef) -> Option<FlowDetail> {
    let local = match which {
        FlowRef::Local(l) => *l,
        FlowRef::Id(id) => relay.dp.rules().find(|r| r.id == *id)?.local,
    };
    let view = relay.dp.view(local)?;
    let time_ns = monotonic_ns();
    let kernel = relay
        .dp
        .kernel_maps()
        .and_then(|m| KernelEntries::read(m, &rule::key_of(local)));
    Some(FlowDetail {
        time_ns,
        kernel_only: false,
        flow: FlowView {
            call: relay.media.rule_contexts().remove(&local),
            path: path_of(relay, &view),
            age_ms: relay
                .installed_ns
                .get(&local)
                .map(|t| time_ns.saturating_sub(*t) / 1_000_000),
            pps: None,
            srtp: view.rule.srtp_mode().map(String::from),
            view,
        },
        kernel,
    })
}

/// Every flow in the pinned maps (relayd down).
pub fn flows_from_maps(maps: &FlowMaps) -> FlowsReply {
    let views = views_from_maps(maps);
    FlowsReply {
        time_ns: monotonic_ns(),
        kernel_only: true,
        flows: views
            .into_iter()
            .map(|v| FlowView {
                call: None,
                path: kernel_path(&v),
                age_ms: None,
                pps: None,
                srtp: None,
                view: v,
            })
            .collect(),
    }
}

/// One flow from the pinned maps (relayd down).
pub fn flow_from_maps(maps: &FlowMaps, which: &FlowRef) -> Option<FlowDetail> {
    let reply = flows_from_maps(maps);
    let flow = reply.flows.into_iter().find(|f| which.matches(&f.view))?;
    let kernel = KernelEntries::read(maps, &rule::key_of(flow.local()));
    Some(FlowDetail {
        time_ns: reply.time_ns,
        kernel_only: true,
        flow,
        kernel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_refs_parse_ids_and_endpoints() {
        assert_eq!(FlowRef::parse("12"), Some(FlowRef::Id(12)));
        assert_eq!(
            FlowRef::parse("192.0.2.1:30000"),
            Some(FlowRef::Local("192.0.2.1:30000".parse().unwrap()))
        );
        assert_eq!(
            FlowRef::parse("[2001:db8::1]:30000"),
            Some(FlowRef::Local("[2001:db8::1]:30000".parse().unwrap()))
        );
        assert_eq!(FlowRef::parse("192.0.2.1"), None);
        assert_eq!(FlowRef::parse("-1"), None);
        // On the wire: a number or a string, nothing else.
        let id: FlowRef = serde_json::from_str("7").unwrap();
        assert_eq!(id, FlowRef::Id(7));
        let local: FlowRef = serde_json::from_str("\"192.0.2.1:30000\"").unwrap();
        assert!(matches!(local, FlowRef::Local(_)));
        assert!(serde_json::from_str::<FlowRef>("\"nope\"").is_err());
    }

    #[test]
    fn key_hex_is_the_map_key_bytes() {
        let key = rule::key_of("192.0.2.1:30000".parse().unwrap());
        assert_eq!(
            key_hex(&key),
            "00 00 00 00 00 00 00 00 00 00 ff ff c0 00 02 01 75 30 00 00"
        );
    }
}
