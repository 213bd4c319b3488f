//! The relay's real XDP program, loaded for `BPF_PROG_TEST_RUN`, and typed
//! access to its maps.
//!
//! Every [`RelayXdp::load`] gets new, empty maps: the object's maps are pinned
//! by name, so they are pinned in a private bpffs ([`crate::bpffs`]) and the
//! pins are removed as soon as the program is loaded.

use std::{
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, DevMapHash, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf,
    },
    programs::{TestRun, TestRunOptions, Xdp},
};
use relay_common::{
    Action, Addr, AddrKey, COUNTERS, Counter, FlowKey, FlowRule, FlowState, FlowStats, LatchEvent,
    PortRange, SourcePolicy, addr_from_v4, maps,
};

use crate::bpffs::BpfFs;

/// XDP verdicts (`enum xdp_action`).
pub mod action {
    pub const ABORTED: u32 = 0;
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;

    pub fn name(action: u32) -> &'static str {
        match action {
            ABORTED => "XDP_ABORTED",
            DROP => "XDP_DROP",
            PASS => "XDP_PASS",
            TX => "XDP_TX",
            REDIRECT => "XDP_REDIRECT",
            _ => "unknown",
        }
    }
}

/// What one test run returned.
#[derive(Clone, Debug)]
pub struct Run {
    /// The XDP verdict of the (last) run.
    pub action: u32,
    /// The frame after the (last) run.
    pub frame: Vec<u8>,
}

/// The relay program, loaded, with maps only this instance sees.
pub struct RelayXdp {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
    // Dropped last: the mount goes after the maps' last users.
    _bpffs: BpfFs,
}

impl RelayXdp {
    /// Loads the program from the object embedded in `relay-user`, or from
    /// the file named by `RELAY_TEST_OBJECT` when that is set (to try a
    /// build of the XDP program without rebuilding relay-user).
    pub fn load() -> Result<Self> {
        let from_file;
        let object = match std::env::var_os("RELAY_TEST_OBJECT") {
            Some(path) => {
                eprintln!("RELAY_TEST_OBJECT: loading {}", path.to_string_lossy());
                from_file = std::fs::read(&path)
                    .with_context(|| format!("read {}", path.to_string_lossy()))?;
                &from_file[..]
            }
            None => relay_user::ebpf::relay_object()?,
        };
        let bpffs = BpfFs::mount_private()?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(bpffs.path())
            .load(object)
            .context("load the relay object")?;
        let program: &mut Xdp = ebpf
            .program_mut(relay_user::ebpf::RELAY_PROGRAM)
            .context("no program `relay` in the object")?
            .try_into()?;
        program.load().context("load (verify) the XDP program")?;
        for (name, _) in ebpf.maps() {
            bpffs.unpin(name).with_context(|| format!("unpin {name}"))?;
        }
        let events = RingBuf::try_from(ebpf.take_map(maps::EVENTS).context("no EVENTS map")?)?;
        Ok(Self {
            ebpf,
            events,
            _bpffs: bpffs,
        })
    }

    fn program(&self) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(relay_user::ebpf::RELAY_PROGRAM)
            .context("no program")?
            .try_into()?)
    }

    /// Runs the program once on `frame`. `ingress` is the ifindex the frame
    /// "arrived" on (it decides the namespace and interface `bpf_fib_lookup`
    /// works with); None leaves it to the kernel (the loopback device of the
    /// calling thread's namespace).
    pub fn run(&self, frame: &[u8], ingress: Option<u32>) -> Result<Run> {
        self.run_repeat(frame, ingress, 1)
    }

    /// Runs the program `repeat` times on the same buffer (changes made by one
    /// run are seen by the next); the verdict and frame are the last run's.
    pub fn run_repeat(&self, frame: &[u8], ingress: Option<u32>, repeat: u32) -> Result<Run> {
        let mut out = vec![0u8; frame.len() + 4096];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let ctx: Vec<u8> = [0, frame.len() as u32, 0, ingress.unwrap_or(0), 0, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let result = self
            .program()?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: ingress.is_some().then_some(&ctx[..]),
                repeat,
                ..Default::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN with a {}-byte frame", frame.len()))?;
        out.truncate(result.data_size_out as usize);
        Ok(Run {
            action: result.return_value,
            frame: out,
        })
    }

    /// Makes `addr` a relay address with media ports `ports`.
    pub fn add_relay_addr(&mut self, addr: IpAddr, ports: RangeInclusive<u16>) -> Result<()> {
        let mut m: HashMap<_, AddrKey, PortRange> =
            HashMap::try_from(self.map_mut(maps::RELAY_ADDRS)?)?;
        let range = PortRange {
            min: *ports.start(),
            max: *ports.end(),
        };
        m.insert(
            AddrKey {
                addr: addr_of(addr),
            },
            range,
            0,
        )?;
        Ok(())
    }

    /// Installs `rule` for relay endpoint `key`, with zeroed state and
    /// statistics, as the daemon does.
    pub fn add_rule(&mut self, key: FlowKey, rule: &FlowRule) -> Result<()> {
        HashMap::<_, FlowKey, FlowRule>::try_from(self.map_mut(maps::FLOWS)?)?
            .insert(key, rule, 0)?;
        HashMap::<_, FlowKey, FlowState>::try_from(self.map_mut(maps::FLOW_STATE)?)?.insert(
            key,
            FlowState::default(),
            0,
        )?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        let zeroed = PerCpuValues::try_from(vec![FlowStats::default(); cpus])?;
        PerCpuHashMap::<_, FlowKey, FlowStats>::try_from(self.map_mut(maps::FLOW_STATS)?)?
            .insert(key, zeroed, 0)?;
        Ok(())
    }

    /// Lets the program redirect to `ifindex`. The kernel resolves the ifindex
    /// in the calling thread's namespace.
    pub fn add_egress(&mut self, ifindex: u32) -> Result<()> {
        DevMapHash::try_from(self.map_mut(maps::EGRESS)?)?
            .insert(ifindex, ifindex, None, 0)
            .with_context(|| format!("EGRESS[{ifindex}]"))?;
        Ok(())
    }

    /// Marks `port` as owned by the userspace forwarder (USER_PORTS: relay
    /// endpoints whose rule could not be written to FLOWS).
    pub fn add_user_port(&mut self, port: u16) -> Result<()> {
        let mut m: Array<_, u64> = Array::try_from(self.map_mut(maps::USER_PORTS)?)?;
        let word = u32::from(port / 64);
        let bits = m.get(&word, 0)? | 1u64 << (port % 64);
        m.set(word, bits, 0)?;
        Ok(())
    }

    /// The global counters, summed over CPUs, indexed by [`Counter`].
    pub fn counters(&self) -> Result<[u64; COUNTERS]> {
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map(maps::COUNTERS)?)?;
        let mut all = [0u64; COUNTERS];
        for (i, slot) in all.iter_mut().enumerate() {
            *slot = m.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(all)
    }

    /// One global counter, summed over CPUs.
    pub fn counter(&self, c: Counter) -> Result<u64> {
        Ok(self.counters()?[c as usize])
    }

    /// A rule's statistics, merged over CPUs.
    pub fn flow_stats(&self, key: &FlowKey) -> Result<FlowStats> {
        let m: PerCpuHashMap<_, FlowKey, FlowStats> =
            PerCpuHashMap::try_from(self.map(maps::FLOW_STATS)?)?;
        let mut total = FlowStats::default();
        for s in m.get(key, 0)?.iter() {
            total.merge(s);
        }
        Ok(total)
    }

    /// A rule's learned state.
    pub fn flow_state(&self, key: &FlowKey) -> Result<FlowState> {
        let m: HashMap<_, FlowKey, FlowState> = HashMap::try_from(self.map(maps::FLOW_STATE)?)?;
        Ok(m.get(key, 0)?)
    }

    /// Writes a rule's state, as relayd does after an authenticated latch.
    pub fn set_flow_state(&mut self, key: FlowKey, state: FlowState) -> Result<()> {
        HashMap::<_, FlowKey, FlowState>::try_from(self.map_mut(maps::FLOW_STATE)?)?
            .insert(key, state, 0)?;
        Ok(())
    }

    /// Latch events waiting in the ring buffer, oldest first.
    pub fn latch_events(&mut self) -> Result<Vec<LatchEvent>> {
        let mut events = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() != size_of::<LatchEvent>() {
                bail!("ring buffer record of {} bytes", item.len());
            }
            // SAFETY: LatchEvent is plain old data (any bytes are a value) and
            // the record is exactly its size; read_unaligned needs no alignment.
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<LatchEvent>()) });
        }
        Ok(events)
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .with_context(|| format!("no map {name}"))
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("no map {name}"))
    }
}

/// The 16-byte map form of an address (IPv4 mapped into IPv6).
pub fn addr_of(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => addr_from_v4(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The rule key of relay endpoint `endpoint`.
pub fn flow_key(endpoint: SocketAddr) -> FlowKey {
    FlowKey::new(addr_of(endpoint.ip()), endpoint.port())
}

/// A rule: packets from `peer` (as `policy` allows) to the relay endpoint go
/// out from `out_src` to `dst`. No latch window, no rate limit, an 8 kHz
/// RTP clock.
pub fn flow_rule(
    id: u64,
    action: Action,
    policy: SourcePolicy,
    peer: SocketAddr,
    out_src: SocketAddr,
    dst: SocketAddr,
) -> FlowRule {
    FlowRule {
        id,
        latch_until_ns: 0,
        rate_interval_ns: 0,
        rate_burst_ns: 0,
        peer_addr: addr_of(peer.ip()),
        out_src_addr: addr_of(out_src.ip()),
        dst_addr: addr_of(dst.ip()),
        peer_port: peer.port().to_be_bytes(),
        out_src_port: out_src.port().to_be_bytes(),
        dst_port: dst.port().to_be_bytes(),
        action: action as u8,
        policy: policy as u8,
        // G.711, what `frames::rtp` builds.
        clock_rate: 8000,
        flags: 0,
        _reserved: [0; 3],
        ingress_ifindex: 0,
        _pad: 0,
    }
}
