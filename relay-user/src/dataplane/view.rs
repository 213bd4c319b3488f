//! What the data plane shows of itself: per-rule and global figures in the
//! shape the control socket and `relayctl --json` emit (schema in
//! docs/control-api.md).

use std::{collections::BTreeMap, net::SocketAddr};

use relay_common::{
    COUNTERS, Counter, DROP_REASONS, DropReason, FlowState, FlowStats, quality::RtpQuality,
};
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

/// A flow that had packets and then none for this long is `silent`.
pub const SILENT_AFTER_MS: u64 = 2000;

/// RTP reception quality of a rule's stream (RFC 3550 A.1, A.3, A.8;
/// docs/quality.md), measured in the data plane.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QualityView {
    /// Current SSRC.
    pub ssrc: u32,
    /// How often the SSRC changed (each change restarts the sequence state).
    pub ssrc_changes: u32,
    /// Extended highest sequence number of the current SSRC (wraps × 65536
    /// + highest).
    pub highest_seq: u64,
    /// Packets expected from the sequence numbers, over all SSRCs.
    pub expected: u64,
    /// Packets received (duplicates included), over all SSRCs.
    pub received: u64,
    /// expected − received: negative when duplicates outnumber losses. A
    /// late packet cancels the loss its gap counted.
    pub lost: i64,
    /// Lost as a percentage of expected (0 when lost is negative).
    pub loss_pct: f64,
    /// Packets that arrived behind the highest sequence number (reordered
    /// or duplicated).
    pub out_of_order: u64,
    /// Interarrival jitter (RFC 3550 A.8) in ms; absent without a clock rate.
    pub jitter_ms: Option<f64>,
    /// The rule's RTP clock rate, Hz (0: unknown, no jitter).
    pub clock_rate: u32,
    /// No packet for [`SILENT_AFTER_MS`] after there had been some.
    pub silent: bool,
    /// Whose figures these are: "xdp" or "userspace" (the path that saw more
    /// of the stream; see docs/quality.md).
    pub measured_by: String,
}

impl QualityView {
    /// The figures of whichever path received more of the stream (see
    /// [`RuleView::with_quality`]); None when neither saw RTP.
    pub fn of_paths(
        kernel: Option<&FlowState>,
        user: Option<&FlowState>,
        clock_rate: u32,
        idle_ms: Option<u64>,
    ) -> Option<Self> {
        let k = kernel.map(|s| &s.quality);
        let u = user.map(|s| &s.quality);
        let received = |q: Option<&RtpQuality>| q.map_or(0, RtpQuality::total_received);
        let (q, path) = match (k, u) {
            (Some(k), _) if received(Some(k)) >= received(u) => (k, "xdp"),
            (_, Some(u)) => (u, "userspace"),
            (Some(k), None) => (k, "xdp"),
            (None, None) => return None,
        };
        Self::new(q, clock_rate, idle_ms, path)
    }

    /// From one path's quality state; None when it saw no RTP.
    pub fn new(q: &RtpQuality, clock_rate: u32, idle_ms: Option<u64>, path: &str) -> Option<Self> {
        if q.total_received() == 0 {
            return None;
        }
        let expected = q.expected();
        let lost = q.lost();
        let loss_pct = if expected == 0 {
            0.0
        } else {
            round2(lost.max(0) as f64 * 100.0 / expected as f64)
        };
        // q.rate is the clock the jitter was measured in (it follows the rule's).
        let jitter_ms =
            (q.rate != 0).then(|| round2(q.jitter_q8 as f64 / 256.0 * 1000.0 / q.rate as f64));
        Some(Self {
            ssrc: q.ssrc,
            ssrc_changes: q.ssrc_changes,
            highest_seq: q.extended_max(),
            expected,
            received: q.total_received(),
            lost,
            loss_pct,
            out_of_order: q.out_of_order.into(),
            jitter_ms,
            clock_rate,
            silent: idle_ms.is_some_and(|ms| ms >= SILENT_AFTER_MS),
            measured_by: path.into(),
        })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RuleView {
    pub rule: Rule,
    /// Source learned and locked by `restricted`/`latch` rules.
    pub latched_source: Option<SocketAddr>,
    pub latched_ssrc: Option<u32>,
    /// Kernel (XDP) figures; absent in userspace mode.
    pub xdp: Option<StatsView>,
    /// Userspace forwarder figures; absent when read from pinned maps.
    pub userspace: Option<StatsView>,
    /// RTP quality; absent until an RTP packet was accepted (and for RTCP
    /// rules).
    #[serde(default)]
    pub quality: Option<QualityView>,
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
            quality: None,
        }
    }

    /// Adds the quality figures from the kernel's and the forwarder's state.
    /// The two are not summed: both measure the same stream, and where both
    /// saw packets (XDP passes some up, or hands a `userspace` rule's packets
    /// to the forwarder) the forwarder's are a subset of the kernel's. The
    /// path that received more of the stream speaks, the kernel on a tie.
    /// Silence is judged on the latest packet of either path.
    pub fn with_quality(mut self, kernel: Option<&FlowState>, user: Option<&FlowState>) -> Self {
        let idle_ms = [&self.xdp, &self.userspace]
            .into_iter()
            .flatten()
            .filter_map(|s| s.idle_ms)
            .min();
        self.quality = QualityView::of_paths(kernel, user, self.rule.clock_rate, idle_ms);
        self
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

#[cfg(test)]
pub(crate) mod tests {
    use relay_common::quality::rtp_arrived;

    use super::*;
    use crate::rule::{Path, Policy};

    /// A plain strict forward rule with a fixed peer and destination: the
    /// rule behind the views tested here and in `ctl::flows`.
    pub(crate) fn forward_rule(id: u64, local: &str) -> Rule {
        Rule {
            id,
            local: local.parse().unwrap(),
            policy: Policy::Strict,
            peer: Some("192.0.2.10:4000".parse().unwrap()),
            latch_window_ms: 0,
            out_src: "198.51.100.1:40000".parse().unwrap(),
            dst: "198.51.100.10:5000".parse().unwrap(),
            path: Path::Forward,
            rate_pps: 0,
            burst: 0,
            clock_rate: 8000,
            srtp: None,
        }
    }

    fn rule() -> Rule {
        forward_rule(1, "192.0.2.1:30000")
    }

    /// A state that received `seqs` 20 ms apart, each arrival 2 ms late on
    /// odd packets (|D| = 2 ms: J tends to 2 ms).
    fn state(seqs: &[u16]) -> FlowState {
        let mut s = FlowState::default();
        for (i, &seq) in seqs.iter().enumerate() {
            let late = if i % 2 == 1 { 2_000_000 } else { 0 };
            let at = 1_000_000_000 + u64::from(seq) * 20_000_000 + late;
            rtp_arrived(&mut s.quality, 8000, 9, seq, u32::from(seq) * 160, at);
        }
        s
    }

    fn stats(last_seen_ns: u64) -> FlowStats {
        FlowStats {
            packets: 1,
            last_seen_ns,
            ..FlowStats::default()
        }
    }

    #[test]
    fn quality_from_the_path_that_saw_more() {
        let all: Vec<u16> = (0..200).filter(|s| s % 10 != 3).collect();
        let kernel = state(&all);
        let user = state(&all[..5]);
        let now = 10_000_000_000;
        let v = RuleView::new(rule(), None, Some(stats(now)), Some(stats(0)), now)
            .with_quality(Some(&kernel), Some(&user));
        let q = v.quality.unwrap();
        assert_eq!(q.measured_by, "xdp");
        assert_eq!((q.expected, q.received, q.lost), (200, 180, 20));
        assert_eq!(q.loss_pct, 10.0);
        assert_eq!(q.highest_seq, 199);
        let j = q.jitter_ms.unwrap();
        assert!((1.8..=2.0).contains(&j), "jitter {j} ms");
        assert!(!q.silent);

        // The forwarder alone (userspace mode, or a fallback rule).
        let v = RuleView::new(rule(), None, None, Some(stats(now)), now)
            .with_quality(None, Some(&user));
        assert_eq!(v.quality.unwrap().measured_by, "userspace");
    }

    #[test]
    fn silent_after_two_seconds_and_absent_without_rtp() {
        let s = state(&[1, 2, 3]);
        let seen = 5_000_000_000;
        let view = |now| {
            RuleView::new(rule(), None, Some(stats(seen)), None, now)
                .with_quality(Some(&s), None)
                .quality
                .unwrap()
        };
        assert!(!view(seen + 1_999_000_000).silent);
        assert!(view(seen + 2_000_000_000).silent);
        let none = RuleView::new(rule(), None, Some(FlowStats::default()), None, seen)
            .with_quality(Some(&FlowState::default()), Some(&FlowState::default()));
        assert_eq!(none.quality, None);
    }

    #[test]
    fn no_clock_rate_no_jitter_figure() {
        let mut s = FlowState::default();
        rtp_arrived(&mut s.quality, 0, 9, 1, 0, 1);
        rtp_arrived(&mut s.quality, 0, 9, 2, 160, 3_000_000);
        let mut r = rule();
        r.clock_rate = 0;
        let q = RuleView::new(r, None, None, None, 0)
            .with_quality(Some(&s), None)
            .quality
            .unwrap();
        assert_eq!((q.jitter_ms, q.clock_rate, q.received), (None, 0, 2));
    }
}
