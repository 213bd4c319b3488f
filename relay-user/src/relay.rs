//! The relay as the front doors (control socket, NG, SIP) see it: the media
//! core plus the data plane it writes. Every verb runs the media core's
//! logic, then applies the rule changes it returned.

use std::{collections::HashMap, net::SocketAddr};

use anyhow::{Result, anyhow};
use tracing::{info, warn};

use crate::{
    config::MediaConfig,
    dataplane::{Dataplane, monotonic_ns},
    media::{
        Answer, CallView, MediaCore, MediaError, Offer, RuleChange,
        mos::{MosHistory, SAMPLE_INTERVAL_NS},
    },
    rule::Rule,
};

pub struct Relay {
    pub dp: Dataplane,
    pub media: MediaCore,
    /// Rule writes the data plane refused while applying call changes.
    pub rule_errors: u64,
    /// The SIP side's trunks and counters, when SIP runs.
    pub sip: Option<crate::sip::server::SipStatus>,
    /// CLOCK_MONOTONIC ns at which each rule was installed (or adopted from
    /// the pinned maps by this relayd): the age `relayctl flows` shows.
    pub installed_ns: HashMap<SocketAddr, u64>,
    /// Packets and bytes of rules removed since start, so the metrics'
    /// per-path totals (live rules plus these) never go down.
    pub retired: Retired,
    /// MOS samples per rule (NG query/delete replies), and when the last
    /// round of sampling ran.
    pub mos: HashMap<SocketAddr, MosHistory>,
    mos_sampled_ns: u64,
}

/// Figures of removed rules, per path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retired {
    pub xdp_packets: u64,
    pub xdp_bytes: u64,
    pub userspace_packets: u64,
    pub userspace_bytes: u64,
}

/// A verb's failure: refused by the media core (bad SDP, limits, unknown call)
/// or by the data plane.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error("data plane: {0:#}")]
    Dataplane(anyhow::Error),
}

impl RelayError {
    pub fn is_load_limit(&self) -> bool {
        matches!(self, RelayError::Media(e) if e.is_load_limit())
    }
}

impl Relay {
    pub fn new(dp: Dataplane, limits: MediaConfig) -> Result<Self> {
        let mut media = MediaCore::new(dp.interfaces(), limits)?;
        // Static rules (adopted from pinned maps) keep their ports.
        for rule in dp.rules() {
            if let Err(e) = media.reserve_static(rule.local) {
                warn!(local = %rule.local, error = %e, "static rule port overlaps the media range");
            }
        }
        let now = monotonic_ns();
        let installed_ns = dp.rules().map(|r| (r.local, now)).collect();
        Ok(Self {
            dp,
            media,
            rule_errors: 0,
            sip: None,
            installed_ns,
            retired: Retired::default(),
            mos: HashMap::new(),
            mos_sampled_ns: now,
        })
    }

    pub fn offer(&mut self, o: &Offer) -> Result<String, RelayError> {
        let out = self.media.offer(o)?;
        self.apply(out.changes)?;
        Ok(out.sdp)
    }

    pub fn answer(&mut self, a: &Answer) -> Result<String, RelayError> {
        let out = self.media.answer(a)?;
        self.apply(out.changes)?;
        Ok(out.sdp)
    }

    pub fn delete(&mut self, call_id: &str) -> Result<(), RelayError> {
        let changes = self.media.delete(call_id)?;
        self.apply(changes)
    }

    pub fn block(&mut self, call_id: &str, blocked: bool) -> Result<(), RelayError> {
        let changes = self.media.set_blocked(call_id, blocked)?;
        self.apply(changes)
    }

    pub fn query(&self, call_id: &str) -> Option<CallView> {
        self.media.query(call_id)
    }

    /// A static rule from the operator; its port pair is taken from the media
    /// range so no call gets it.
    pub fn add_static(&mut self, rule: Rule) -> Result<Rule> {
        let fresh = !self.dp.rules().any(|r| r.local == rule.local);
        if fresh {
            self.media
                .reserve_static(rule.local)
                .map_err(|e| anyhow!("{} is in use by a call: {e}", rule.local))?;
        }
        let local = rule.local;
        let result = self.dp.install(rule);
        match &result {
            Ok(_) => self.installed(local),
            Err(_) if fresh => self.media.release_static(local),
            Err(_) => {}
        }
        result
    }

    pub fn remove_static(&mut self, local: SocketAddr) -> Result<Rule> {
        self.retire(local);
        let rule = self.dp.remove(local)?;
        self.media.release_static(local);
        Ok(rule)
    }

    /// Ends calls whose media went silent; returns their ids for the front
    /// doors (SIP sends BYE on both legs).
    pub fn expire(&mut self) -> Vec<String> {
        let now = monotonic_ns();
        let ids = self.media.expired(now, |ep| self.dp.last_seen_ns(ep));
        for id in &ids {
            info!(call = %id, "media timeout: ending the call");
            if let Err(e) = self.delete(id) {
                warn!(call = %id, error = %e, "ending a timed-out call");
            }
        }
        ids
    }

    /// Takes a MOS sample of every rule that received RTP, once per
    /// [`SAMPLE_INTERVAL_NS`] (called more often than that).
    pub fn sample_quality(&mut self) {
        let now = monotonic_ns();
        if now.saturating_sub(self.mos_sampled_ns) < SAMPLE_INTERVAL_NS {
            return;
        }
        self.mos_sampled_ns = now;
        let unix_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.take_mos_samples(unix_s);
    }

    /// One MOS sample of every rule that received RTP since its last one,
    /// stamped `unix_s`.
    pub fn take_mos_samples(&mut self, unix_s: u64) {
        for rule in self.dp.rules() {
            if let Some(q) = self.dp.quality(rule.local) {
                self.mos.entry(rule.local).or_default().sample(&q, unix_s);
            }
        }
    }

    /// Notes when `local` got its first rule (a replacement keeps the age).
    fn installed(&mut self, local: SocketAddr) {
        self.installed_ns.entry(local).or_insert_with(monotonic_ns);
    }

    /// Adds the last figures of `local`'s rule, about to be removed, to the
    /// retired totals.
    fn retire(&mut self, local: SocketAddr) {
        self.installed_ns.remove(&local);
        self.mos.remove(&local);
        // Only the counters: not the state and quality a whole view reads.
        let (kernel, user) = self.dp.path_stats(local);
        if let Some(x) = kernel {
            self.retired.xdp_packets += x.packets;
            self.retired.xdp_bytes += x.bytes;
        }
        self.retired.userspace_packets += user.packets;
        self.retired.userspace_bytes += user.bytes;
    }

    fn apply(&mut self, changes: Vec<RuleChange>) -> Result<(), RelayError> {
        let mut first_error = None;
        for change in changes {
            let result = match change {
                RuleChange::Install(rule) => {
                    let local = rule.local;
                    let result = self.dp.install(rule).map(drop);
                    if result.is_ok() {
                        self.installed(local);
                    }
                    result
                }
                RuleChange::Remove(local) => {
                    self.retire(local);
                    self.dp.remove(local).map(drop)
                }
            };
            if let Err(e) = result {
                self.rule_errors += 1;
                warn!(error = %format!("{e:#}"), "applying a rule change");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(RelayError::Dataplane(e)),
            None => Ok(()),
        }
    }
}
