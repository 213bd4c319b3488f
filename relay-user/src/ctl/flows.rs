//! `relayctl flows`: rows, sorting, filtering and packet rates from two
//! samples of the control socket's `flows` reply. No I/O.

use std::cmp::Reverse;

use relay_common::DropReason;

use super::{
    human,
    table::{Align, Column},
};
use crate::{
    control::flows::{FlowPath, FlowView, FlowsReply},
    rule::Policy,
};

/// A flow without an accepted packet for this long is `idle`.
pub const IDLE_AFTER_MS: u64 = 5_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Most packets first.
    Packets,
    /// Most drops first.
    Drops,
    /// Longest idle first (never-used flows before all).
    Idle,
    /// Oldest first.
    Age,
    /// By call id, static rules last.
    Call,
    /// Highest packet rate first.
    Pps,
}

/// What a flow is doing, for `--state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowState {
    /// A packet within the last 5 s.
    Active,
    /// No packet for 5 s or more, or none yet.
    Idle,
    /// Waiting to learn its source (`latch`, `restricted`).
    Learning,
    /// A `block` rule.
    Blocked,
}

impl FlowState {
    pub fn of(f: &FlowView) -> Self {
        let r = &f.view.rule;
        if f.path == FlowPath::Blocked {
            return Self::Blocked;
        }
        if r.policy != Policy::Strict && f.view.latched_source.is_none() {
            return Self::Learning;
        }
        match f.idle_ms() {
            Some(ms) if ms < IDLE_AFTER_MS => Self::Active,
            _ => Self::Idle,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub call: Option<String>,
    /// An IP or IP:port matched against peer, learned source and destination.
    pub peer: Option<String>,
    pub state: Option<FlowState>,
    /// Only flows with drops.
    pub drops: bool,
}

impl Filter {
    pub fn keeps(&self, f: &FlowView) -> bool {
        if let Some(call) = &self.call {
            let id = f.call.as_ref().map_or("static", |c| c.call_id.as_str());
            if id != call {
                return false;
            }
        }
        if let Some(peer) = &self.peer {
            let r = &f.view.rule;
            let hit = [r.peer, f.view.latched_source, Some(r.dst)]
                .into_iter()
                .flatten()
                .any(|ep| ep.to_string() == *peer || ep.ip().to_string() == *peer);
            if !hit {
                return false;
            }
        }
        if self.state.is_some_and(|s| s != FlowState::of(f)) {
            return false;
        }
        !self.drops || f.total_drops() > 0
    }
}

/// Fills each flow's `pps` from an earlier sample of the same rules. A rule
/// that is new, or whose counters went backwards (replaced), stays null.
pub fn add_rates(earlier: &FlowsReply, later: &mut FlowsReply) {
    let dt_ns = later.time_ns.saturating_sub(earlier.time_ns);
    if dt_ns == 0 {
        return;
    }
    let before: std::collections::HashMap<_, _> = earlier
        .flows
        .iter()
        .map(|f| ((f.view.rule.id, f.local()), f.view.packets()))
        .collect();
    for f in &mut later.flows {
        f.pps = before
            .get(&(f.view.rule.id, f.local()))
            .and_then(|p| f.view.packets().checked_sub(*p))
            .map(|d| d as f64 * 1e9 / dt_ns as f64);
    }
}

pub fn sort(flows: &mut [FlowView], key: SortKey) {
    match key {
        SortKey::Packets => flows.sort_by_key(|f| Reverse(f.view.packets())),
        SortKey::Drops => flows.sort_by_key(|f| Reverse(f.total_drops())),
        SortKey::Idle => flows.sort_by_key(|f| Reverse(f.idle_ms().unwrap_or(u64::MAX))),
        SortKey::Age => flows.sort_by_key(|f| Reverse(f.age_ms.unwrap_or(0))),
        SortKey::Call => flows.sort_by(|a, b| {
            let key = |f: &FlowView| {
                (
                    f.call.is_none(),
                    f.call.as_ref().map(|c| c.call_id.clone()),
                    f.local(),
                )
            };
            key(a).cmp(&key(b))
        }),
        SortKey::Pps => {
            flows.sort_by(|a, b| b.pps.unwrap_or(-1.0).total_cmp(&a.pps.unwrap_or(-1.0)))
        }
    }
}

/// Short names of drop reasons for the DROPS cell (docs/operations.md).
pub fn drop_abbrev(r: DropReason) -> &'static str {
    match r {
        DropReason::NoFlow => "noflow",
        DropReason::BadSource => "src",
        DropReason::NotRtp => "rtp",
        DropReason::RateLimited => "rate",
        DropReason::Blocked => "blk",
        DropReason::Malformed => "bad",
        DropReason::SrtpAuth => "auth",
        DropReason::SrtpReplay => "replay",
    }
}

/// `src=50,rtp=3`, or `-` when nothing was dropped.
pub fn drops_cell(f: &FlowView) -> String {
    let parts: Vec<String> = DropReason::ALL
        .iter()
        .filter_map(|r| {
            let n = f.view.drops(*r);
            (n > 0).then(|| format!("{}={}", drop_abbrev(*r), human::count(n)))
        })
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

/// The columns of `relayctl flows`, in order. Priority 0 never goes.
pub const COLUMNS: [Column; 17] = [
    Column::new("ID", Align::Right, 0, false),
    Column::new("CALL", Align::Left, 0, true),
    Column::new("LEG", Align::Left, 6, false),
    Column::new("DIR", Align::Left, 4, true),
    Column::new("RELAY", Align::Left, 0, false),
    Column::new("POLICY", Align::Left, 7, false),
    Column::new("SOURCE", Align::Left, 2, false),
    Column::new("DESTINATION", Align::Left, 1, false),
    Column::new("PATH", Align::Left, 0, false),
    Column::new("PACKETS", Align::Right, 0, false),
    Column::new("BYTES", Align::Right, 5, false),
    Column::new("PPS", Align::Right, 0, false),
    Column::new("DROPS", Align::Left, 1, true),
    Column::new("LOSS%", Align::Right, 4, false),
    Column::new("JITTER", Align::Right, 4, false),
    Column::new("AGE", Align::Right, 8, false),
    Column::new("IDLE", Align::Right, 3, false),
];

/// The learned source (marked `*`), else the declared peer (`:?` where the
/// port is still to be learned), else `(learning)`.
pub fn source_cell(f: &FlowView) -> String {
    let r = &f.view.rule;
    match (f.view.latched_source, r.peer) {
        (Some(s), _) => format!("{s}*"),
        (None, Some(p)) if r.policy == Policy::Restricted => format!("{}:?", p.ip()),
        (None, Some(p)) => p.to_string(),
        (None, None) => "(learning)".into(),
    }
}

/// One table row per flow, cells in [`COLUMNS`] order. `kernel_only`: the
/// flows came from the pinned maps, which do not know calls, so a flow
/// without a call is `?` rather than `static`.
pub fn row(f: &FlowView, kernel_only: bool) -> Vec<String> {
    let r = &f.view.rule;
    let q = f.view.quality.as_ref();
    let (call, leg, dir) = match &f.call {
        Some(c) => {
            let leg = match &c.tag {
                Some(tag) => format!("{}:{tag}", c.leg),
                None => c.leg.clone(),
            };
            let dir = format!("{}>{}", c.from_iface, c.to_iface);
            let dir = if c.component == "rtcp" {
                format!("{dir} rtcp")
            } else {
                dir
            };
            (c.call_id.clone(), leg, dir)
        }
        None if kernel_only => ("?".into(), "-".into(), "-".into()),
        None => ("static".into(), "-".into(), "-".into()),
    };
    vec![
        r.id.to_string(),
        call,
        leg,
        dir,
        r.local.to_string(),
        format!("{:?}", r.policy).to_lowercase(),
        source_cell(f),
        r.dst.to_string(),
        // The SRTP work beside the path: `userspace/rekey`, `xdp/passthrough`.
        match &f.srtp {
            Some(mode) => format!("{}/{mode}", f.path.as_str()),
            None => f.path.as_str().into(),
        },
        human::count(f.view.packets()),
        human::bytes(f.bytes()),
        human::rate(f.pps),
        drops_cell(f),
        q.map_or("-".into(), |q| format!("{:.1}", q.loss_pct)),
        q.and_then(|q| q.jitter_ms)
            .map_or("-".into(), |ms| format!("{ms:.1}ms")),
        human::duration_ms(f.age_ms),
        // A flow that went silent is flagged where its idle time is shown.
        match q {
            Some(q) if q.silent => format!("{}!", human::duration_ms(f.idle_ms())),
            _ => human::duration_ms(f.idle_ms()),
        },
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        dataplane::{
            RuleView,
            view::{StatsView, tests::forward_rule},
        },
        media::RuleContext,
    };

    fn flow(id: u64, local: &str, packets: u64, drops: u64, idle_ms: Option<u64>) -> FlowView {
        let rule = forward_rule(id, local);
        let mut d = BTreeMap::new();
        d.insert("bad_source".to_string(), drops);
        FlowView {
            view: RuleView {
                rule,
                latched_source: None,
                latched_ssrc: None,
                xdp: Some(StatsView {
                    packets,
                    bytes: packets * 172,
                    passed_up: 0,
                    idle_ms,
                    drops: d,
                }),
                userspace: None,
                quality: None,
            },
            call: None,
            path: FlowPath::Xdp,
            age_ms: Some(id * 1000),
            pps: None,
            srtp: None,
        }
    }

    #[test]
    fn rates_from_two_samples() {
        let a = FlowsReply {
            time_ns: 1_000_000_000,
            kernel_only: false,
            flows: vec![flow(1, "192.0.2.1:30000", 100, 0, Some(1))],
        };
        let mut b = FlowsReply {
            time_ns: 3_000_000_000,
            kernel_only: false,
            flows: vec![
                flow(1, "192.0.2.1:30000", 200, 0, Some(1)),
                flow(2, "192.0.2.1:30002", 50, 0, Some(1)),
            ],
        };
        add_rates(&a, &mut b);
        assert_eq!(b.flows[0].pps, Some(50.0));
        assert_eq!(b.flows[1].pps, None, "new rule: no rate yet");
        // Counters that went backwards (a replaced rule) give no rate.
        let mut c = b.clone();
        c.time_ns += 1_000_000_000;
        c.flows[0] = flow(1, "192.0.2.1:30000", 10, 0, Some(1));
        add_rates(&b, &mut c);
        assert_eq!(c.flows[0].pps, None);
    }

    #[test]
    fn filters_and_sorts() {
        let mut flows = vec![
            flow(1, "192.0.2.1:30000", 10, 0, Some(100)),
            flow(2, "192.0.2.1:30002", 30, 4, None),
            flow(3, "192.0.2.1:30004", 20, 0, Some(9_000)),
        ];
        flows[0].call = Some(RuleContext {
            call_id: "c1".into(),
            leg: "a".into(),
            tag: Some("t1".into()),
            stream: 0,
            media: "audio".into(),
            component: "rtp".into(),
            from_iface: "inside".into(),
            to_iface: "outside".into(),
        });
        let ids = |fs: &[FlowView]| fs.iter().map(|f| f.view.rule.id).collect::<Vec<_>>();
        sort(&mut flows, SortKey::Packets);
        assert_eq!(ids(&flows), [2, 3, 1]);
        sort(&mut flows, SortKey::Idle);
        assert_eq!(ids(&flows), [2, 3, 1]);
        sort(&mut flows, SortKey::Age);
        assert_eq!(ids(&flows), [3, 2, 1]);
        sort(&mut flows, SortKey::Call);
        assert_eq!(ids(&flows)[0], 1);
        let keep = |f: Filter| {
            ids(&flows
                .iter()
                .filter(|x| f.keeps(x))
                .cloned()
                .collect::<Vec<_>>())
        };
        assert_eq!(
            keep(Filter {
                drops: true,
                ..Filter::default()
            }),
            [2]
        );
        assert_eq!(
            keep(Filter {
                call: Some("c1".into()),
                ..Filter::default()
            }),
            [1]
        );
        assert_eq!(
            keep(Filter {
                call: Some("static".into()),
                ..Filter::default()
            }),
            [2, 3]
        );
        assert_eq!(
            keep(Filter {
                peer: Some("198.51.100.10".into()),
                ..Filter::default()
            })
            .len(),
            3
        );
        assert!(
            keep(Filter {
                peer: Some("203.0.113.9".into()),
                ..Filter::default()
            })
            .is_empty()
        );
        assert_eq!(
            keep(Filter {
                state: Some(FlowState::Active),
                ..Filter::default()
            }),
            [1]
        );
        assert_eq!(
            keep(Filter {
                state: Some(FlowState::Idle),
                ..Filter::default()
            }),
            [2, 3]
        );
    }

    #[test]
    fn quality_cells_and_the_silent_flag() {
        let mut f = flow(7, "192.0.2.1:30000", 1500, 0, Some(3_000));
        f.view.quality = Some(crate::dataplane::view::QualityView {
            ssrc: 1,
            ssrc_changes: 0,
            highest_seq: 1_666,
            expected: 1_667,
            received: 1_500,
            lost: 167,
            loss_pct: 10.02,
            out_of_order: 0,
            jitter_ms: Some(3.456),
            clock_rate: 8000,
            silent: true,
            measured_by: "xdp".into(),
        });
        let row = row(&f, false);
        assert_eq!(&row[13..], ["10.0", "3.5ms", "7.0s", "3.0s!"]);
    }

    #[test]
    fn srtp_mode_beside_the_path() {
        let mut f = flow(7, "192.0.2.1:30000", 1, 0, None);
        assert_eq!(row(&f, false)[8], "xdp");
        f.path = FlowPath::Userspace;
        f.srtp = Some("rekey".into());
        assert_eq!(row(&f, false)[8], "userspace/rekey");
    }

    #[test]
    fn rows_follow_the_columns() {
        let mut f = flow(7, "192.0.2.1:30000", 1500, 3, Some(250));
        f.pps = Some(50.0);
        assert_eq!(row(&f, true)[1], "?", "relayd down: the call is unknown");
        let row = row(&f, false);
        assert_eq!(row.len(), COLUMNS.len());
        assert_eq!(
            row,
            [
                "7",
                "static",
                "-",
                "-",
                "192.0.2.1:30000",
                "strict",
                "192.0.2.10:4000",
                "198.51.100.10:5000",
                "xdp",
                "1.5k",
                "252K",
                "50.0",
                "src=3",
                "-",
                "-",
                "7.0s",
                "250ms"
            ]
        );
    }
}
