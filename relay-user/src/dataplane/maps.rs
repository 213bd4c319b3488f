//! Typed handles on the XDP program's maps, whether freshly loaded by `relayd`
//! or opened from their pins by `relayctl` while the daemon is down.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    util::nr_cpus,
};
use relay_common::{COUNTERS, Counter, FlowKey, FlowRule, FlowState, FlowStats, maps as names};

/// The flow maps and global counters.
pub struct FlowMaps {
    pub flows: HashMap<MapData, FlowKey, FlowRule>,
    pub state: HashMap<MapData, FlowKey, FlowState>,
    pub stats: PerCpuHashMap<MapData, FlowKey, FlowStats>,
    pub counters: PerCpuArray<MapData, u64>,
    /// Ports whose rules live only in userspace (see the XDP program).
    pub user_ports: Array<MapData, u64>,
    /// Possible CPUs (per-CPU values have one slot each), read once.
    ncpus: usize,
}

impl FlowMaps {
    /// Takes the maps out of a loaded object (the object keeps using them).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            flows: HashMap::try_from(take(ebpf, names::FLOWS)?)?,
            state: HashMap::try_from(take(ebpf, names::FLOW_STATE)?)?,
            stats: PerCpuHashMap::try_from(take(ebpf, names::FLOW_STATS)?)?,
            counters: PerCpuArray::try_from(take(ebpf, names::COUNTERS)?)?,
            user_ports: Array::try_from(take(ebpf, names::USER_PORTS)?)?,
            ncpus: ncpus()?,
        })
    }

    /// Opens the maps pinned under `pin_path` by a running or stopped relayd.
    pub fn open_pinned(pin_path: &Path) -> Result<Self> {
        let open = |name: &str| -> Result<MapData> {
            let path: PathBuf = pin_path.join(name);
            MapData::from_pin(&path).with_context(|| {
                format!(
                    "maps not pinned at {} (is relayd configured with another pin_path, or never started?)",
                    path.display()
                )
            })
        };
        Ok(Self {
            flows: HashMap::try_from(Map::HashMap(open(names::FLOWS)?))?,
            state: HashMap::try_from(Map::HashMap(open(names::FLOW_STATE)?))?,
            stats: PerCpuHashMap::try_from(Map::PerCpuHashMap(open(names::FLOW_STATS)?))?,
            counters: PerCpuArray::try_from(Map::PerCpuArray(open(names::COUNTERS)?))?,
            user_ports: Array::try_from(Map::Array(open(names::USER_PORTS)?))?,
            ncpus: ncpus()?,
        })
    }

    /// Installs or replaces a rule. State and statistics entries are created
    /// before the rule so the program never sees a rule without them;
    /// `exists` says the caller installed this key before (its entries are
    /// there: three map writes become one), `reset_state` forgets a learned
    /// source (policy or peer changed).
    pub fn install(
        &mut self,
        key: &FlowKey,
        rule: &FlowRule,
        exists: bool,
        reset_state: bool,
    ) -> Result<()> {
        if !exists || reset_state {
            self.state.insert(key, FlowState::default(), 0)?;
        }
        if !exists {
            let zeros = PerCpuValues::try_from(vec![FlowStats::default(); self.ncpus])?;
            self.stats.insert(key, zeros, 0)?;
        }
        self.flows.insert(key, rule, 0).with_context(|| {
            format!("FLOWS is full or refused the rule ({} entries)", self.len())
        })?;
        Ok(())
    }

    /// Removes a rule and everything kept for it. Missing entries are fine.
    pub fn remove(&mut self, key: &FlowKey) {
        let _ = self.flows.remove(key);
        let _ = self.state.remove(key);
        let _ = self.stats.remove(key);
    }

    /// Marks `port` as served by the userspace forwarder alone (or not).
    pub fn set_user_port(&mut self, port: u16, on: bool) -> Result<()> {
        let index = port as u32 / 64;
        let bit = 1u64 << (port % 64);
        let word = self.user_ports.get(&index, 0)?;
        let word = if on { word | bit } else { word & !bit };
        self.user_ports.set(index, word, 0)?;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.flows.keys().filter(Result::is_ok).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn rules(&self) -> Vec<(FlowKey, FlowRule)> {
        self.flows.iter().filter_map(Result::ok).collect()
    }

    pub fn state(&self, key: &FlowKey) -> Option<FlowState> {
        self.state.get(key, 0).ok()
    }

    /// Per-rule statistics summed over CPUs.
    pub fn stats(&self, key: &FlowKey) -> FlowStats {
        let mut total = FlowStats::default();
        if let Ok(per_cpu) = self.stats.get(key, 0) {
            for s in per_cpu.iter() {
                total.merge(s);
            }
        }
        total
    }

    pub fn rule(&self, key: &FlowKey) -> Option<FlowRule> {
        self.flows.get(key, 0).ok()
    }

    /// Per-rule statistics as each CPU holds them (index = CPU).
    pub fn stats_per_cpu(&self, key: &FlowKey) -> Vec<FlowStats> {
        self.stats
            .get(key, 0)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Global counters summed over CPUs, indexed by [`Counter`].
    pub fn counters(&self) -> [u64; COUNTERS] {
        let mut out = [0u64; COUNTERS];
        for c in Counter::ALL {
            if let Ok(per_cpu) = self.counters.get(&(c as u32), 0) {
                out[c as usize] = per_cpu.iter().sum();
            }
        }
        out
    }
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the XDP object"))
}

fn ncpus() -> Result<usize> {
    nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))
}
