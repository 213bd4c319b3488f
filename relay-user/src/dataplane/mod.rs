//! The data plane API: install, update and remove flow rules, read their
//! statistics and latch events, on the XDP program plus the userspace
//! forwarder, or on the forwarder alone.

pub mod crypto;
pub mod forwarder;
pub mod kernel;
pub mod maps;
pub mod mmsg;
pub mod view;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use anyhow::{Result, bail};
use aya::maps::{MapData, RingBuf};
use relay_common::{FlowKey, FlowRule, FlowState, FlowStats, LatchEvent};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    config::{Config, DataplaneMode, Interface},
    rule::{self, Rule},
};
use forwarder::Forwarder;
use kernel::Kernel;
pub use view::{CountersView, QualityView, RuleView};

/// A source learned by a rule, from either path.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LatchNotice {
    pub rule_id: u64,
    pub local: SocketAddr,
    pub source: SocketAddr,
    pub ssrc: u32,
    /// "xdp" or "userspace".
    pub path: &'static str,
}

impl LatchNotice {
    pub fn from_kernel(e: &LatchEvent) -> Self {
        Self {
            rule_id: e.rule_id,
            local: rule::sock_of(&e.key.addr, e.key.port),
            source: rule::sock_of(&e.src_addr, e.src_port),
            ssrc: e.ssrc,
            path: "xdp",
        }
    }
}

/// The device a rule's packets must arrive on, as each data plane sees it
/// (0: any).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Ingress {
    /// The interface's configured device: where XDP runs and reads
    /// `ingress_ifindex`.
    xdp: u32,
    /// What `IP_PKTINFO` reports to the forwarder's sockets: the same
    /// device when the relay address lives on it. When the address lives on
    /// another device (a VLAN on top of it, a dummy), the stack reports
    /// that one for every packet, so it tells nothing: 0.
    socket: u32,
}

/// Each relay address's ingress devices. A device that does not exist (only
/// possible in userspace mode: XDP attaches to it) binds nothing.
fn ingress_devices(interfaces: &[Interface]) -> HashMap<IpAddr, Ingress> {
    let holders = address_holders();
    interfaces
        .iter()
        .filter_map(|i| match kernel::ifindex(&i.device) {
            Ok(xdp) => {
                let socket = if holders.get(&i.address) == Some(&i.device) {
                    xdp
                } else {
                    0
                };
                Some((i.address, Ingress { xdp, socket }))
            }
            Err(e) => {
                warn!(device = %i.device, error = %format!("{e:#}"), "rules on this interface accept packets from any device");
                None
            }
        })
        .collect()
}

/// Which device holds each local address.
fn address_holders() -> HashMap<IpAddr, String> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return HashMap::new();
    };
    addrs
        .filter_map(|a| {
            let sa = a.address?;
            let ip = match (sa.as_sockaddr_in(), sa.as_sockaddr_in6()) {
                (Some(v4), _) => IpAddr::V4(v4.ip()),
                (_, Some(v6)) => IpAddr::V6(v6.ip()),
                _ => return None,
            };
            Some((ip, a.interface_name))
        })
        .collect()
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads, so kernel
/// last-seen times and latch deadlines compare with ours.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

pub struct Dataplane {
    mode: DataplaneMode,
    interfaces: Vec<Interface>,
    /// Relay address -> ifindex of its interface's device: the only device
    /// a rule on that address accepts packets from (both data planes).
    ingress: HashMap<IpAddr, Ingress>,
    kernel: Option<Kernel>,
    forwarder: Forwarder,
    rules: BTreeMap<SocketAddr, Rule>,
    /// Rules the kernel refused (map full): served by the forwarder alone.
    fallback: BTreeSet<SocketAddr>,
    kernel_write_failures: u64,
    next_id: u64,
}

impl Dataplane {
    /// Starts the configured data plane. Must run inside a tokio runtime (the
    /// forwarder spawns a task per endpoint). In XDP mode, rules that a previous
    /// relayd left in the pinned maps are adopted.
    pub fn start(
        config: &Config,
        interfaces: Vec<Interface>,
        events: mpsc::UnboundedSender<LatchNotice>,
    ) -> Result<Self> {
        let mode = config.dataplane.mode;
        let kernel = match mode {
            DataplaneMode::Xdp => Some(Kernel::start(
                &config.dataplane.pin_path,
                config.dataplane.max_flows,
                &interfaces,
                config.dataplane.attach,
            )?),
            DataplaneMode::Userspace => None,
        };
        let ingress = ingress_devices(&interfaces);
        let mut dp = Self {
            mode,
            ingress,
            interfaces,
            kernel,
            forwarder: Forwarder::new(events),
            rules: BTreeMap::new(),
            fallback: BTreeSet::new(),
            kernel_write_failures: 0,
            next_id: 1,
        };
        dp.adopt_pinned_rules();
        Ok(dp)
    }

    fn adopt_pinned_rules(&mut self) {
        let Some(found) = self.kernel.as_ref().map(|k| k.maps.rules()) else {
            return;
        };
        for (key, mut krule) in found {
            let locked = self
                .kernel
                .as_ref()
                .and_then(|k| k.maps.state(&key))
                .is_some_and(|s| s.locked != 0);
            let adopted = Rule::adoptable(&krule, locked)
                .map_err(|why| anyhow::anyhow!(why))
                .and_then(|()| {
                    Rule::from_kernel(&key, &krule)
                        .ok_or_else(|| anyhow::anyhow!("unreadable rule"))
                })
                .and_then(|rule| {
                    self.check_endpoints(&rule)?;
                    self.rebind_ingress(&key, &rule, &mut krule)?;
                    let urule = self.for_sockets(krule, rule.local.ip());
                    self.forwarder.install(&rule, urule, false)?;
                    Ok(rule)
                });
            match adopted {
                Ok(rule) => {
                    info!(local = %rule.local, id = rule.id, "adopted pinned rule");
                    self.next_id = self.next_id.max(rule.id + 1);
                    self.rules.insert(rule.local, rule);
                }
                Err(e) => {
                    let local = rule::sock_of(&key.addr, key.port);
                    warn!(%local, error = %format!("{e:#}"), "dropping a pinned rule this relayd cannot carry on");
                    if let Some(k) = &mut self.kernel {
                        k.maps.remove(&key);
                    }
                }
            }
        }
    }

    /// An adopted rule takes the ingress device of its address under this
    /// configuration (devices may have been re-created since, or the rule
    /// may predate ingress binding).
    fn rebind_ingress(&mut self, key: &FlowKey, rule: &Rule, krule: &mut FlowRule) -> Result<()> {
        let ingress = self.ingress_of(rule.local.ip()).xdp;
        let Some(kernel) = &mut self.kernel else {
            return Ok(());
        };
        if krule.ingress_ifindex != ingress {
            krule.ingress_ifindex = ingress;
            kernel.maps.install(key, krule, true, false)?;
        }
        Ok(())
    }

    /// The devices a rule on relay address `addr` accepts packets from.
    fn ingress_of(&self, addr: IpAddr) -> Ingress {
        self.ingress.get(&addr).copied().unwrap_or_default()
    }

    /// The forwarder's copy of a kernel rule: the ingress device as its
    /// sockets see it.
    fn for_sockets(&self, mut krule: FlowRule, addr: IpAddr) -> FlowRule {
        krule.ingress_ifindex = self.ingress_of(addr).socket;
        krule
    }

    pub fn mode(&self) -> DataplaneMode {
        self.mode
    }

    pub fn interfaces(&self) -> &[Interface] {
        &self.interfaces
    }

    /// Installs a rule, or replaces the one on the same relay endpoint. The
    /// learned source survives a replacement that keeps policy and peer.
    pub fn install(&mut self, mut rule: Rule) -> Result<Rule> {
        rule.validate()?;
        self.check_endpoints(&rule)?;
        let old = self.rules.get(&rule.local).cloned();
        if rule.id == 0 {
            rule.id = match &old {
                Some(o) => o.id,
                None => {
                    self.next_id += 1;
                    self.next_id - 1
                }
            };
        }
        let reset = old
            .as_ref()
            .is_none_or(|o| o.policy != rule.policy || o.peer != rule.peer);
        let krule = rule.to_kernel(monotonic_ns(), self.ingress_of(rule.local.ip()).xdp);
        self.forwarder
            .install(&rule, self.for_sockets(krule, rule.local.ip()), reset)?;
        // A fallback rule has no kernel entries to keep.
        let in_kernel = old.is_some() && !self.fallback.contains(&rule.local);
        if let Some(kernel) = &mut self.kernel {
            match kernel.maps.install(&rule.key(), &krule, in_kernel, reset) {
                Ok(()) => {
                    if self.fallback.remove(&rule.local) {
                        kernel.maps.set_user_port(rule.local.port(), false)?;
                    }
                }
                Err(e) => {
                    // The call must not fail because the fast path is full:
                    // the forwarder serves this endpoint, and the XDP program
                    // passes its packets up instead of dropping them.
                    self.kernel_write_failures += 1;
                    warn!(local = %rule.local, error = %format!("{e:#}"), "kernel rule write failed; the userspace forwarder carries this flow");
                    kernel.maps.remove(&rule.key());
                    if let Err(e) = kernel.maps.set_user_port(rule.local.port(), true) {
                        self.forwarder.remove(rule.local);
                        return Err(e.context("the fast path refused the rule and the fallback"));
                    }
                    self.fallback.insert(rule.local);
                }
            }
        }
        self.rules.insert(rule.local, rule.clone());
        Ok(rule)
    }

    /// A source the forwarder learned from an authenticated SRTP packet
    /// (rules with an SRTP key latch in userspace only): written into the
    /// kernel's state so XDP enforces it from now on, and a pass-through
    /// flow moves to the fast path. Returns whether the kernel was told.
    pub fn latched_in_userspace(&mut self, n: &LatchNotice) -> bool {
        let Some(rule) = self.rules.get(&n.local) else {
            return false;
        };
        if rule.id != n.rule_id || rule.auth_key().is_none() || self.fallback.contains(&n.local) {
            return false;
        }
        let Some(kernel) = &mut self.kernel else {
            return false;
        };
        let key = rule.key();
        let mut state = kernel.maps.state(&key).unwrap_or_default();
        state.src_addr = rule::addr_of(forwarder::canonical(n.source).ip());
        state.src_port = n.source.port().to_be_bytes();
        state.ssrc = n.ssrc;
        state.locked = 1;
        match kernel.maps.state.insert(key, state, 0) {
            Ok(()) => true,
            Err(e) => {
                // The forwarder still enforces the source; only speed is lost.
                warn!(local = %n.local, error = %e, "writing the learned source to the kernel");
                false
            }
        }
    }

    pub fn remove(&mut self, local: SocketAddr) -> Result<Rule> {
        let Some(rule) = self.rules.remove(&local) else {
            bail!("no rule on {local}");
        };
        if let Some(kernel) = &mut self.kernel {
            kernel.maps.remove(&rule.key());
            if self.fallback.remove(&local) {
                kernel.maps.set_user_port(local.port(), false)?;
            }
        }
        self.forwarder.remove(local);
        Ok(rule)
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.values()
    }

    pub fn views(&self) -> Vec<RuleView> {
        let now = monotonic_ns();
        self.rules.values().map(|r| self.view_of(r, now)).collect()
    }

    pub fn view(&self, local: SocketAddr) -> Option<RuleView> {
        self.rules
            .get(&local)
            .map(|r| self.view_of(r, monotonic_ns()))
    }

    /// The RTP quality of `local`'s rule alone, without its counters: what
    /// the periodic MOS sampling reads for every rule.
    pub fn quality(&self, local: SocketAddr) -> Option<QualityView> {
        let rule = self.rules.get(&local)?;
        let kstate = self.kernel.as_ref().and_then(|k| k.maps.state(&rule.key()));
        let ustate = self.forwarder.state(local);
        QualityView::of_paths(kstate.as_ref(), ustate.as_ref(), rule.clock_rate, None)
    }

    fn view_of(&self, rule: &Rule, now: u64) -> RuleView {
        let key = rule.key();
        let (xdp, kstate) = match &self.kernel {
            Some(k) => (Some(k.maps.stats(&key)), k.maps.state(&key)),
            None => (None, None),
        };
        let ustate = self.forwarder.state(rule.local);
        RuleView::new(
            rule.clone(),
            pick_state(kstate, ustate),
            xdp,
            Some(self.forwarder.stats(rule.local)),
            now,
        )
        .with_quality(kstate.as_ref(), ustate.as_ref())
    }

    /// The counters of `local`'s rule on each path (kernel, forwarder), and
    /// nothing else: what the media timeout and the retired totals need.
    pub fn path_stats(&self, local: SocketAddr) -> (Option<FlowStats>, FlowStats) {
        let kernel = self
            .kernel
            .as_ref()
            .map(|k| k.maps.stats(&rule::key_of(local)));
        (kernel, self.forwarder.stats(local))
    }

    /// CLOCK_MONOTONIC ns of the last packet accepted on `local`, either path.
    pub fn last_seen_ns(&self, local: SocketAddr) -> Option<u64> {
        let (kernel, user) = self.path_stats(local);
        let kernel = kernel.map_or(0, |k| k.last_seen_ns);
        Some(user.last_seen_ns.max(kernel)).filter(|t| *t != 0)
    }

    pub fn counters(&self) -> CountersView {
        let mut view = CountersView::new(
            self.mode,
            self.kernel.as_ref().map(|k| k.maps.counters()),
            Some(self.forwarder.counters()),
        );
        if let Some(user) = &mut view.userspace {
            user.insert("kernel_write_failures".into(), self.kernel_write_failures);
            user.insert("fallback_rules".into(), self.fallback.len() as u64);
        }
        view
    }

    /// True when the kernel refused `local`'s rule and the forwarder carries it.
    pub fn in_fallback(&self, local: SocketAddr) -> bool {
        self.fallback.contains(&local)
    }

    /// The kernel's maps (XDP mode), for `relayctl flow`'s raw entries.
    pub fn kernel_maps(&self) -> Option<&maps::FlowMaps> {
        self.kernel.as_ref().map(|k| &k.maps)
    }

    /// Endpoints the forwarder serves for rules (leak checks in tests and
    /// `relayctl`).
    pub fn bound_endpoints(&self) -> usize {
        self.forwarder.bound_endpoints()
    }

    /// Sockets the forwarder keeps bound for the next rule on their endpoint.
    pub fn idle_sockets(&self) -> usize {
        self.forwarder.idle_sockets()
    }

    /// The kernel's latch event ring buffer, for one reader.
    pub fn take_kernel_events(&mut self) -> Option<RingBuf<MapData>> {
        self.kernel.as_mut().and_then(Kernel::take_events)
    }

    /// Detaches XDP. Pinned maps and rules stay for the next relayd.
    pub fn shutdown(&mut self) {
        if let Some(k) = self.kernel.take() {
            k.detach();
        }
    }

    fn check_endpoints(&self, rule: &Rule) -> Result<()> {
        for (what, ep) in [("local", rule.local), ("out_src", rule.out_src)] {
            let Some(iface) = self.interfaces.iter().find(|i| i.address == ep.ip()) else {
                bail!("{what} {ep}: {} is not a relay address", ep.ip());
            };
            if ep.port() < iface.port_min || ep.port() > iface.port_max {
                bail!(
                    "{what} {ep}: port outside the media range {}-{} of interface {}",
                    iface.port_min,
                    iface.port_max,
                    iface.name
                );
            }
        }
        Ok(())
    }
}

/// The learned source as the kernel saw it, else as the forwarder did.
fn pick_state(kernel: Option<FlowState>, user: Option<FlowState>) -> Option<FlowState> {
    match (kernel, user) {
        (Some(k), _) if k.locked != 0 => Some(k),
        (_, Some(u)) if u.locked != 0 => Some(u),
        (k, u) => k.or(u),
    }
}

/// Reads the kernel's per-rule view straight from the pinned maps (relayd down).
pub fn views_from_maps(maps: &maps::FlowMaps) -> Vec<RuleView> {
    let now = monotonic_ns();
    let mut out: Vec<RuleView> = maps
        .rules()
        .into_iter()
        .filter_map(|(key, krule): (FlowKey, _)| {
            let rule = Rule::from_kernel(&key, &krule)?;
            let stats: FlowStats = maps.stats(&key);
            let state = maps.state(&key);
            Some(
                RuleView::new(rule, state, Some(stats), None, now)
                    .with_quality(state.as_ref(), None),
            )
        })
        .collect();
    out.sort_by_key(|v| v.rule.local);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(device: &str, address: &str) -> Interface {
        Interface {
            name: "i".into(),
            device: device.into(),
            address: address.parse().unwrap(),
            port_min: 30000,
            port_max: 30099,
            source_policy: crate::rule::Policy::Strict,
            srtp: crate::media::SrtpPolicy::Optional,
        }
    }

    #[test]
    fn ingress_devices_as_each_data_plane_sees_them() {
        let lo = kernel::ifindex("lo").unwrap();
        let got = ingress_devices(&[
            // The address lives on the device: both planes check it.
            iface("lo", "127.0.0.1"),
            // It lives elsewhere (here: nowhere): the sockets' device says
            // nothing, XDP still checks its own.
            iface("lo", "192.0.2.254"),
            // No such device: nothing is bound.
            iface("no-such-dev0", "192.0.2.253"),
        ]);
        let at = |a: &str| got.get(&a.parse::<IpAddr>().unwrap()).copied();
        assert_eq!(
            at("127.0.0.1"),
            Some(Ingress {
                xdp: lo,
                socket: lo
            })
        );
        assert_eq!(at("192.0.2.254"), Some(Ingress { xdp: lo, socket: 0 }));
        assert_eq!(at("192.0.2.253"), None);
    }
}
