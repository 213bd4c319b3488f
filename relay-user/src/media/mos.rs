//! Mean opinion score of the media the relay receives, sampled over a call,
//! for the NG `query` and `delete` replies (Kamailio's rtpengine module reads
//! them into its `mos_*_pv` variables).
//!
//! What is scored: the RTP one rule receives from its peer, with the loss and
//! interarrival jitter both data planes measure per rule
//! (`relay_common::quality`). rtpengine scores from the RTCP receiver reports
//! of the endpoints instead (what the far end received, with the round-trip
//! time); the relay scores the leg between the sender and itself from its
//! own measurements, so it needs no RTCP and works for endpoints that send
//! none. No round-trip time is measured, so the figures leave it out (a
//! reader sees it as absent) and the score takes it as 0.
//!
//! A sample is taken every [`SAMPLE_INTERVAL_NS`] from the loss over that
//! interval and the jitter at its end; an interval without packets (hold,
//! silence suppression) gives none. The call keeps the average, the lowest
//! and the highest sample, not the whole series, so a long call costs no
//! more memory than a short one.

use crate::dataplane::QualityView;

/// How often the relay samples each flow (rtpengine samples at each RTCP
/// report, typically every 5 s).
pub const SAMPLE_INTERVAL_NS: u64 = 5_000_000_000;

/// MOS × 10 (the NG protocol's integer form: 44 is 4.4) from loss (%),
/// jitter (ms) and round-trip time (ms), by the simplified ITU-T G.107
/// E-model that PingPlotter published and rtpengine uses, so the two
/// relays' figures compare: effective latency = RTT + 2 × jitter + 10 ms;
/// R = 93.2 − latency / 40 below 160 ms, 93.2 − (latency − 120) / 10 above;
/// R −= 2.5 × loss; MOS = 1 + 0.035 R + 7e-6 R (R − 60)(100 − R).
pub fn mos_x10(loss_pct: f64, jitter_ms: f64, rtt_ms: f64) -> u32 {
    let latency = rtt_ms + 2.0 * jitter_ms + 10.0;
    let r = if latency < 160.0 {
        93.2 - latency / 40.0
    } else {
        93.2 - (latency - 120.0) / 10.0
    };
    // The MOS polynomial holds for R in 0..=100; outside it MOS is 1 or 4.5.
    let r = (r - 2.5 * loss_pct).clamp(0.0, 100.0);
    let mos = 1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r);
    // Truncated like rtpengine's figures.
    (mos * 10.0) as u32
}

/// One sample: the score and what it was computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MosSample {
    pub mos_x10: u32,
    /// Packets lost in the sampled interval, % of those expected.
    pub loss_pct: u32,
    /// Interarrival jitter at the end of the interval, ms.
    pub jitter_ms: u32,
    /// UNIX time of the sample, s.
    pub at_unix: u64,
}

/// The samples of one rule over its call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MosHistory {
    /// Cumulative expected and received packets at the previous sample.
    expected: u64,
    received: u64,
    pub samples: u32,
    sum_mos_x10: u64,
    sum_loss_pct: u64,
    sum_jitter_ms: u64,
    pub lowest: Option<MosSample>,
    pub highest: Option<MosSample>,
}

/// The averages of a history, in the sample's units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MosAverage {
    pub mos_x10: u32,
    pub loss_pct: u32,
    pub jitter_ms: u32,
    pub samples: u32,
}

impl MosHistory {
    /// Samples the rule's quality now; None (and nothing recorded) when no
    /// packet was expected since the previous sample.
    pub fn sample(&mut self, q: &QualityView, at_unix: u64) -> Option<MosSample> {
        let expected = q.expected.saturating_sub(self.expected);
        let received = q.received.saturating_sub(self.received);
        if expected == 0 {
            return None;
        }
        self.expected = q.expected;
        self.received = q.received;
        let lost = expected.saturating_sub(received);
        let loss = lost as f64 * 100.0 / expected as f64;
        let jitter = q.jitter_ms.unwrap_or(0.0);
        let s = MosSample {
            mos_x10: mos_x10(loss, jitter, 0.0),
            loss_pct: loss.round() as u32,
            jitter_ms: jitter.round() as u32,
            at_unix,
        };
        self.samples += 1;
        self.sum_mos_x10 += u64::from(s.mos_x10);
        self.sum_loss_pct += u64::from(s.loss_pct);
        self.sum_jitter_ms += u64::from(s.jitter_ms);
        if self.lowest.is_none_or(|l| s.mos_x10 < l.mos_x10) {
            self.lowest = Some(s);
        }
        if self.highest.is_none_or(|h| s.mos_x10 > h.mos_x10) {
            self.highest = Some(s);
        }
        Some(s)
    }

    /// What a reply shows now: the history, or for a flow younger than one
    /// sample interval a sample of everything so far (not kept), so short
    /// calls get a score too.
    pub fn report(&self, q: Option<&QualityView>, at_unix: u64) -> Option<MosHistory> {
        let mut h = self.clone();
        if h.samples == 0 {
            h.sample(q?, at_unix)?;
        }
        Some(h)
    }

    pub fn average(&self) -> Option<MosAverage> {
        let n = u64::from(self.samples);
        (n > 0).then(|| MosAverage {
            mos_x10: (self.sum_mos_x10 / n) as u32,
            loss_pct: (self.sum_loss_pct / n) as u32,
            jitter_ms: (self.sum_jitter_ms / n) as u32,
            samples: self.samples,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quality(expected: u64, received: u64, jitter_ms: Option<f64>) -> QualityView {
        QualityView {
            ssrc: 7,
            ssrc_changes: 0,
            highest_seq: expected,
            expected,
            received,
            lost: expected as i64 - received as i64,
            loss_pct: 0.0,
            out_of_order: 0,
            jitter_ms,
            clock_rate: 8000,
            silent: false,
            measured_by: "xdp".into(),
        }
    }

    #[test]
    fn perfect_media_scores_like_rtpengine() {
        // latency 10 ms: R = 92.95, MOS = 4.404 -> 44 (rtpengine reports
        // 43-44 for clean LAN calls with a few ms of RTT).
        assert_eq!(mos_x10(0.0, 0.0, 0.0), 44);
    }

    #[test]
    fn loss_and_jitter_lower_the_score_monotonically() {
        let mut last = u32::MAX;
        for loss in [0.0, 1.0, 5.0, 10.0, 20.0, 40.0] {
            let m = mos_x10(loss, 0.0, 0.0);
            assert!(m < last || m == 10, "loss {loss}: {m} after {last}");
            last = m;
        }
        // 10 % loss: R = 92.95 - 25 = 67.95 -> MOS 3.4994, truncated.
        assert_eq!(mos_x10(10.0, 0.0, 0.0), 34);
        // 100 ms of jitter: latency 210 ms -> R = 84.2 -> MOS 4.17.
        assert_eq!(mos_x10(0.0, 100.0, 0.0), 41);
        // Beyond the model's range it bottoms out at 1.0.
        assert_eq!(mos_x10(100.0, 500.0, 1000.0), 10);
    }

    #[test]
    fn samples_score_each_interval_not_the_whole_call() {
        let mut h = MosHistory::default();
        // First interval clean, second loses 10 of 50.
        let a = h.sample(&quality(50, 50, Some(2.0)), 100).unwrap();
        let b = h.sample(&quality(100, 90, Some(2.0)), 105).unwrap();
        assert_eq!((a.loss_pct, b.loss_pct), (0, 20));
        assert_eq!(h.highest, Some(a));
        assert_eq!(h.lowest, Some(b));
        let avg = h.average().unwrap();
        assert_eq!(avg.samples, 2);
        assert_eq!(avg.mos_x10, (a.mos_x10 + b.mos_x10) / 2);
        assert_eq!(avg.loss_pct, 10);
        assert_eq!(avg.jitter_ms, 2);
        // No packet since: no sample, nothing changes.
        assert_eq!(h.sample(&quality(100, 90, Some(2.0)), 110), None);
        assert_eq!(h.samples, 2);
    }

    #[test]
    fn a_young_flow_reports_a_provisional_sample_without_keeping_it() {
        let h = MosHistory::default();
        assert_eq!(h.report(None, 1), None);
        let r = h.report(Some(&quality(10, 10, None)), 1).unwrap();
        assert_eq!(r.samples, 1);
        assert_eq!(r.highest.unwrap().mos_x10, 44);
        assert_eq!(h.samples, 0);
    }
}
