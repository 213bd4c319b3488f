//! What the data plane shows of itself: per-rule and global figures in the
//! shape the control socket and `relayctl --json` emit (schema in
//! docs/control-api.md).

use std::{collections::BTreeMap, net::SocketAddr};

use relay_common::{COUNTERS, Counter, DROP_REASONS, DropReason, FlowState, FlowStats};
use serde::{Deserialize, Serialize};

use crate::{config::DataplaneMode, rule::Rule};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsView {
    pub packets: u64,
    pub bytes: u64,
    /// Accepted packets the kernel could not finish and handed to userspace.
    pub passed_up: u64,
    /// Milliseconds since the last accepted packet; absent if none yet.
    pub idle_ms: Option<u64>,
    /// Drops by reason name (`no_flow`, `bad_source`, ...).
    pub drops: BTreeMap<String, u64>,
}

impl StatsView {
    pub fn new(s: &FlowStats, now_ns: u64) -> Self {
        Self {
            packets: s.packets,
            bytes: s.bytes,
            passed_up: s.passed_up,
            idle_ms: (s.last_seen_ns != 0)
                .then(|| now_ns.saturating_sub(s.last_seen_ns) / 1_000_000),
            drops: drops_map(&s.drops),
        }
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.values().sum()
    }
}

fn drops_map(drops: &[u64; DROP_REASONS]) -> BTreeMap<String, u64> {
    DropReason::ALL
        .iter()
        .map(|r| (r.as_str().to_string(), drops[*r as usize]))
        .collect()
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleView {
    pub rule: Rule,
    /// Source learned and locked by `restricted`/`latch` rules.
    pub latched_source: Option<SocketAddr>,
    pub latched_ssrc: Option<u32>,
    /// Kernel (XDP) figures; absent in userspace mode.
    pub xdp: Option<StatsView>,
    /// Userspace forwarder figures; absent when read from pinned maps.
    pub userspace: Option<StatsView>,
}

impl RuleView {
    pub fn new(
        rule: Rule,
        state: Option<FlowState>,
        xdp: Option<FlowStats>,
        user: Option<FlowStats>,
        now_ns: u64,
    ) -> Self {
        let locked = state.filter(|s| s.locked != 0);
        Self {
            rule,
            latched_source: locked.map(|s| crate::rule::sock_of(&s.src_addr, s.src_port)),
            latched_ssrc: locked.map(|s| s.ssrc),
            xdp: xdp.map(|s| StatsView::new(&s, now_ns)),
            userspace: user.map(|s| StatsView::new(&s, now_ns)),
        }
    }

    /// Forwarded packets over both paths.
    pub fn packets(&self) -> u64 {
        self.xdp.as_ref().map_or(0, |s| s.packets)
            + self.userspace.as_ref().map_or(0, |s| s.packets)
    }

    /// Drops by reason over both paths.
    pub fn drops(&self, reason: DropReason) -> u64 {
        let name = reason.as_str();
        [&self.xdp, &self.userspace]
            .into_iter()
            .flatten()
            .map(|s| s.drops.get(name).copied().unwrap_or(0))
            .sum()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CountersView {
    /// "xdp" or "userspace"; absent when read from pinned maps.
    pub mode: Option<String>,
    /// Kernel counters by name (`drop_no_flow`, `xdp_tx`, `pass_fib`, ...).
    pub xdp: Option<BTreeMap<String, u64>>,
    /// Userspace forwarder: drops by reason and `forwarded`.
    pub userspace: Option<BTreeMap<String, u64>>,
}

impl CountersView {
    pub fn new(
        mode: DataplaneMode,
        kernel: Option<[u64; COUNTERS]>,
        user: Option<([u64; DROP_REASONS], u64)>,
    ) -> Self {
        Self {
            mode: Some(
                match mode {
                    DataplaneMode::Xdp => "xdp",
                    DataplaneMode::Userspace => "userspace",
                }
                .into(),
            ),
            xdp: kernel.map(|k| kernel_map(&k)),
            userspace: user.map(|(drops, forwarded)| {
                let mut m: BTreeMap<String, u64> = drops_map(&drops)
                    .into_iter()
                    .map(|(k, v)| (format!("drop_{k}"), v))
                    .collect();
                m.insert("forwarded".into(), forwarded);
                m
            }),
        }
    }

    pub fn from_pinned(kernel: [u64; COUNTERS]) -> Self {
        Self {
            mode: None,
            xdp: Some(kernel_map(&kernel)),
            userspace: None,
        }
    }

    /// A drop counter summed over both paths.
    pub fn drops(&self, reason: DropReason) -> u64 {
        let name = Counter::for_drop(reason).as_str();
        [&self.xdp, &self.userspace]
            .into_iter()
            .flatten()
            .map(|m| m.get(name).copied().unwrap_or(0))
            .sum()
    }
}

fn kernel_map(k: &[u64; COUNTERS]) -> BTreeMap<String, u64> {
    Counter::ALL
        .iter()
        .map(|c| (c.as_str().to_string(), k[*c as usize]))
        .collect()
}
