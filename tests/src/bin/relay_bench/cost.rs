//! Part 2: the XDP program's cost per packet on the forward path, from
//! BPF_PROG_TEST_RUN with `repeat`, against the number of installed rules.
//!
//! The program runs in a namespace standing in for the relay host (as in the
//! xdp_prog_test_run tests): `rin0` inside, `rout0` outside, forwarding on, a
//! permanent neighbour for the callee, so `bpf_fib_lookup` succeeds and the
//! verdict is XDP_REDIRECT to `rout0`.
//!
//! BPF_PROG_TEST_RUN runs all repeats on one buffer, so each run sees the
//! frame as the previous run rewrote it. To keep every run on the forward
//! path, the measured rule maps the frame onto itself: it is keyed on the
//! callee's address (made a relay address in RELAY_ADDRS, so the FIB still
//! forwards it rather than delivering it locally) and rewrites to the same
//! source and destination. The program does exactly the work of any forward
//! (parse, three hash lookups, policy, FIB, devmap, rewrite with incremental
//! checksums, redirect); the COUNTERS map proves every run took that path.
//!
//! The other rules are fillers on keys nothing sends to, installed with their
//! state and statistics entries as relayd installs rules. Each rule count has
//! its own copy of the program and maps (all sized for the largest count),
//! and the copies are measured in interleaved rounds.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{DevMapHash, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{TestRun, TestRunOptions, Xdp},
};
use relay_common::{
    Action, AddrKey, Counter, FlowKey, FlowRule, FlowState, FlowStats, PortRange, SourcePolicy,
    addr_from_v4, maps as names,
};
use relay_tests::{
    bpffs::BpfFs,
    frames::{UdpFrame, rtp},
    netns::{NetNs, format_mac},
    relay_xdp::{action, addr_of, flow_key, flow_rule},
};

/// Capacity of the flow maps for every case: room for the largest one.
pub const CAPACITY: u32 = 1 << 20;
/// Runs per measurement, and measurements per rule count. The fastest
/// measurement is the figure: on a shared machine other work only ever adds
/// time (the median is reported too).
pub const REPEAT: u32 = 250_000;
pub const TRIALS: usize = 16;

const CALLER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const CALLEE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const CALLEE_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x02, 0x0a];
const CALLER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x01, 0x0a];

#[derive(Clone, Debug)]
pub struct Cost {
    pub rules: u32,
    /// Fastest of the trials: the kernel's average run time, ns.
    pub ns_per_packet: f64,
    /// Median of the trials, ns.
    pub median_ns: f64,
    pub trials: Vec<f64>,
    /// Seconds it took to grow the maps to this many rules.
    pub fill_s: f64,
}

pub struct Costs {
    pub cases: Vec<Cost>,
    /// The pass-only program under the same harness: the test-run loop's own
    /// share of each figure.
    pub empty_ns: f64,
}

/// Measures at each of `rule_counts`.
pub fn run(rule_counts: &[u32]) -> Result<Costs> {
    let ns = NetNs::new("relaybench")?;
    ns.enable_forwarding()?;
    ns.add_veth("rin0", "rin1", None)?;
    ns.add_veth("rout0", "rout1", None)?;
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "rin0"])?;
    ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "rout0"])?;
    ns.ip(&[
        "neigh",
        "add",
        &CALLEE.to_string(),
        "lladdr",
        &format_mac(&CALLEE_MAC),
        "nud",
        "permanent",
        "dev",
        "rout0",
    ])?;
    let inside = ns.link("rin0")?;
    let outside = ns.link("rout0")?;
    let counts = rule_counts.to_vec();
    ns.run(move || measure(&counts, inside.ifindex, inside.mac, outside.ifindex))?
}

/// One loaded copy of the relay program with its own maps.
struct Instance {
    ebpf: Ebpf,
    flows: HashMap<MapData, FlowKey, FlowRule>,
    state: HashMap<MapData, FlowKey, FlowState>,
    stats: PerCpuHashMap<MapData, FlowKey, FlowStats>,
    counters: PerCpuArray<MapData, u64>,
    cpus: usize,
}

impl Instance {
    /// Loads the program with 2^20-entry flow maps (pinned in `bpffs`, then
    /// unpinned, so the next load gets maps of its own), makes the callee's
    /// address a relay address and `egress` a redirect target.
    fn load(bpffs: &BpfFs, egress: u32) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(bpffs.path())
            .map_max_entries(names::FLOWS, CAPACITY)
            .map_max_entries(names::FLOW_STATE, CAPACITY)
            .map_max_entries(names::FLOW_STATS, CAPACITY)
            .load(relay_user::ebpf::relay_object()?)
            .context("load the relay object with 2^20-entry flow maps")?;
        let program: &mut Xdp = ebpf
            .program_mut(relay_user::ebpf::RELAY_PROGRAM)
            .context("no program `relay`")?
            .try_into()?;
        program.load().context("verify the relay program")?;
        // The maps stay ours through their fds; only the names go.
        let pinned: Vec<String> = ebpf.maps().map(|(name, _)| name.to_string()).collect();
        for name in pinned {
            bpffs
                .unpin(&name)
                .with_context(|| format!("unpin {name}"))?;
        }
        let mut take = |name: &str| -> Result<aya::maps::Map> {
            ebpf.take_map(name)
                .with_context(|| format!("no map {name}"))
        };
        let flows = HashMap::try_from(take(names::FLOWS)?)?;
        let state = HashMap::try_from(take(names::FLOW_STATE)?)?;
        let stats = PerCpuHashMap::try_from(take(names::FLOW_STATS)?)?;
        let counters = PerCpuArray::try_from(take(names::COUNTERS)?)?;
        let mut addrs: HashMap<MapData, AddrKey, PortRange> =
            HashMap::try_from(take(names::RELAY_ADDRS)?)?;
        let mut devmap: DevMapHash<MapData> = DevMapHash::try_from(take(names::EGRESS)?)?;
        addrs.insert(
            AddrKey {
                addr: addr_of(CALLEE.into()),
            },
            PortRange {
                min: 1024,
                max: 65535,
            },
            0,
        )?;
        devmap.insert(egress, egress, None, 0)?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        Ok(Self {
            ebpf,
            flows,
            state,
            stats,
            counters,
            cpus,
        })
    }

    /// Installs a rule with zeroed state and statistics, as relayd does.
    fn install(&mut self, key: FlowKey, rule: &FlowRule) -> Result<()> {
        self.state.insert(key, FlowState::default(), 0)?;
        let zeros = PerCpuValues::try_from(vec![FlowStats::default(); self.cpus])?;
        self.stats.insert(key, zeros, 0)?;
        self.flows.insert(key, rule, 0)?;
        Ok(())
    }

    fn program(&self) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(relay_user::ebpf::RELAY_PROGRAM)
            .context("no program")?
            .try_into()?)
    }

    /// Frames the program has redirected (COUNTERS), summed over CPUs.
    fn redirects(&self) -> Result<u64> {
        Ok(self
            .counters
            .get(&(Counter::Redirect as u32), 0)?
            .iter()
            .sum())
    }
}

/// One program instance per rule count, each filled to its count, then
/// measured in rounds (every instance once per round), so load that comes
/// and goes on a shared machine hits all rule counts alike.
fn measure(counts: &[u32], ingress: u32, ingress_mac: [u8; 6], egress: u32) -> Result<Costs> {
    if counts.iter().any(|&n| n == 0 || n > CAPACITY) {
        bail!("rule counts must lie within 1..={CAPACITY}");
    }
    // The measured rule: caller:4000 -> callee:5000 comes out unchanged.
    let peer = SocketAddr::new(CALLER.into(), 4000);
    let endpoint = SocketAddr::new(CALLEE.into(), 5000);
    let hot = flow_rule(
        1,
        Action::Forward,
        SourcePolicy::Strict,
        peer,
        peer,
        endpoint,
    );
    let mut frame = UdpFrame::new(peer, endpoint, rtp(0x1122_3344, 1, 12 + 160));
    frame.src_mac = CALLER_MAC;
    frame.dst_mac = ingress_mac;
    let frame = frame.build();

    let bpffs = BpfFs::mount_private()?;
    let mut instances = Vec::new();
    let mut fill = Vec::new();
    for &n in counts {
        let mut inst = Instance::load(&bpffs, egress)?;
        let t = std::time::Instant::now();
        inst.install(flow_key(endpoint), &hot)?;
        for i in 1..n {
            let rule = FlowRule {
                id: u64::from(i) + 1,
                ..hot
            };
            inst.install(filler_key(i), &rule)
                .with_context(|| format!("installing rule {i}"))?;
        }
        fill.push(t.elapsed().as_secs_f64());
        eprintln!(
            "[per-packet cost] {} rules installed in {:.1} s",
            n,
            t.elapsed().as_secs_f64()
        );
        // One run first: the verdict must be a redirect.
        timed_run(inst.program()?, &frame, ingress, 1, action::REDIRECT)?;
        if inst.redirects()? != 1 {
            bail!("the measured frame did not take the forward path (COUNTERS: no redirect)");
        }
        instances.push(inst);
    }
    let mut trials = vec![Vec::new(); instances.len()];
    for _ in 0..TRIALS {
        for (inst, t) in instances.iter().zip(&mut trials) {
            t.push(timed_run(
                inst.program()?,
                &frame,
                ingress,
                REPEAT,
                action::REDIRECT,
            )?);
        }
    }
    let mut cases = Vec::new();
    for (((inst, trials), &n), fill_s) in instances.iter().zip(trials).zip(counts).zip(fill) {
        let want = 1 + u64::from(REPEAT) * TRIALS as u64;
        let took = inst.redirects()?;
        if took != want {
            bail!("{n} rules: {took} of {want} runs took the forward path");
        }
        cases.push(Cost {
            rules: n,
            ns_per_packet: fastest(&trials),
            median_ns: median(&trials),
            trials,
            fill_s,
        });
    }
    drop(instances);
    let empty_ns = empty_cost(&frame, ingress)?;
    Ok(Costs { cases, empty_ns })
}

/// One BPF_PROG_TEST_RUN of `repeat` runs; the kernel's average ns per run.
fn timed_run(program: &Xdp, frame: &[u8], ingress: u32, repeat: u32, verdict: u32) -> Result<f64> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex.
    let ctx: Vec<u8> = [0, frame.len() as u32, 0, ingress, 0, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    if result.return_value != verdict {
        bail!(
            "verdict {}, expected {}",
            action::name(result.return_value),
            action::name(verdict)
        );
    }
    Ok(result.duration.as_nanos() as f64)
}

/// The pass-only program's cost under the same harness.
fn empty_cost(frame: &[u8], ingress: u32) -> Result<f64> {
    let mut ebpf = aya::Ebpf::load(relay_user::ebpf::pass_object()?)?;
    let program: &mut Xdp = ebpf
        .program_mut(relay_user::ebpf::PASS_PROGRAM)
        .context("no pass program")?
        .try_into()?;
    program.load()?;
    let mut trials = Vec::new();
    for _ in 0..TRIALS {
        trials.push(timed_run(program, frame, ingress, REPEAT, action::PASS)?);
    }
    Ok(fastest(&trials))
}

/// Filler rule i (i >= 1): keys no frame is sent to (100.64.0.0/12, port 30000).
fn filler_key(i: u32) -> FlowKey {
    let b = i.to_be_bytes();
    FlowKey::new(addr_from_v4([100, 64 | (b[1] & 0x0f), b[2], b[3]]), 30000)
}

fn fastest(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}
