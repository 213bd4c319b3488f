//! `relayctl drops`: global drop counters by reason and path, with rates
//! from two samples. No I/O.

use relay_common::{Counter, DropReason};

use super::{
    human,
    table::{Align, Column},
};
use crate::dataplane::CountersView;

/// What each drop reason means, in one line (also in docs/operations.md).
pub fn meaning(r: DropReason) -> &'static str {
    match r {
        DropReason::NoFlow => "no rule on that relay port: unsolicited traffic, scans",
        DropReason::BadSource => {
            "sender not allowed by the rule's policy or on that interface, or SSRC changed after latching"
        }
        DropReason::NotRtp => "too short for RTP or not RTP version 2",
        DropReason::RateLimited => "over the rule's packet rate",
        DropReason::Blocked => "the rule blocks its media (hold, NG block media)",
        DropReason::Malformed => "broken IP/UDP headers aimed at a relay address",
        DropReason::SrtpAuth => "SRTP/SRTCP that failed authentication (wrong key, tampered)",
        DropReason::SrtpReplay => "SRTP/SRTCP replayed or older than the replay window",
    }
}

pub const COLUMNS: [Column; 6] = [
    Column::new("REASON", Align::Left, 0, false),
    Column::new("XDP", Align::Right, 0, false),
    Column::new("USERSPACE", Align::Right, 2, false),
    Column::new("TOTAL", Align::Right, 0, false),
    Column::new("PER_S", Align::Right, 0, false),
    Column::new("MEANING", Align::Left, 1, true),
];

fn count(c: &CountersView, path_xdp: bool, r: DropReason) -> Option<u64> {
    let map = if path_xdp { &c.xdp } else { &c.userspace };
    map.as_ref()
        .map(|m| m.get(Counter::for_drop(r).as_str()).copied().unwrap_or(0))
}

/// Drops per second between two samples `dt_s` apart; None without an
/// earlier sample or when a counter went backwards.
pub fn rate(
    earlier: Option<&CountersView>,
    later: &CountersView,
    r: DropReason,
    dt_s: f64,
) -> Option<f64> {
    let earlier = earlier?;
    if dt_s <= 0.0 {
        return None;
    }
    later
        .drops(r)
        .checked_sub(earlier.drops(r))
        .map(|d| d as f64 / dt_s)
}

/// One row per reason, plus a total.
pub fn rows(earlier: Option<&CountersView>, later: &CountersView, dt_s: f64) -> Vec<Vec<String>> {
    let cell = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let mut out: Vec<Vec<String>> = DropReason::ALL
        .iter()
        .map(|r| {
            vec![
                r.as_str().to_string(),
                cell(count(later, true, *r)),
                cell(count(later, false, *r)),
                later.drops(*r).to_string(),
                human::rate(rate(earlier, later, *r, dt_s)),
                meaning(*r).to_string(),
            ]
        })
        .collect();
    let total: u64 = DropReason::ALL.iter().map(|r| later.drops(*r)).sum();
    let total_rate = earlier.and_then(|e| {
        let before: u64 = DropReason::ALL.iter().map(|r| e.drops(*r)).sum();
        (dt_s > 0.0)
            .then(|| total.checked_sub(before).map(|d| d as f64 / dt_s))
            .flatten()
    });
    out.push(vec![
        "all".into(),
        String::new(),
        String::new(),
        total.to_string(),
        human::rate(total_rate),
        String::new(),
    ]);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn counters(no_flow: u64, bad_source_user: u64) -> CountersView {
        let mut x = BTreeMap::new();
        x.insert("drop_no_flow".to_string(), no_flow);
        let mut u = BTreeMap::new();
        u.insert("drop_bad_source".to_string(), bad_source_user);
        CountersView {
            mode: Some("xdp".into()),
            xdp: Some(x),
            userspace: Some(u),
        }
    }

    #[test]
    fn rows_with_rates() {
        let a = counters(100, 0);
        let b = counters(300, 10);
        let rows = rows(Some(&a), &b, 2.0);
        assert_eq!(rows.len(), DropReason::ALL.len() + 1);
        assert_eq!(rows[0][..5], ["no_flow", "300", "0", "300", "100"]);
        assert_eq!(rows[1][..5], ["bad_source", "0", "10", "10", "5.0"]);
        assert_eq!(
            rows[DropReason::ALL.len()][..5],
            ["all", "", "", "310", "105"]
        );
        // One sample: no rates. Pinned maps: no userspace column values.
        let pinned = CountersView {
            userspace: None,
            ..counters(5, 0)
        };
        let rows = super::rows(None, &pinned, 0.0);
        assert_eq!(rows[0][..5], ["no_flow", "5", "-", "5", "-"]);
    }
}
