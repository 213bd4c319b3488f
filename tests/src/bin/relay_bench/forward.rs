//! Part 1: packets per second through the namespace topology, XDP against
//! the userspace forwarder, with the relay core's busy fraction.
//!
//! One case: start relayd in the mode, install the rules over its control
//! socket, switch the relay's veths (and the callee's) to threaded NAPI and
//! pin the threads, then run the generator from the caller namespace on the
//! load core while the main thread (also on that core) takes snapshots of the
//! generator's and the sink's counters and of /proc/stat.
//!
//! Every case is first measured at full load: the generator offers all it
//! can. That is the XDP program's capacity (frames it cannot take are dropped
//! by the veth ring in front of it, at no cost to the relay core). The
//! userspace forwarder collapses under full load (receive livelock: the
//! relay's NAPI thread takes the core to push packets into a socket that is
//! already full, and relayd starves), so userspace cases are also measured
//! with the generator paced at rising rates, and the best of those steps
//! stands for the forwarder.

use std::{
    fs::File,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};

use crate::{
    progs::{Gen, attach_pass},
    sys::{CpuTimes, cpu_time_ns, pin, threaded_napi},
    topo::{Bench, LOCAL_BASE, PEER_BASE, Relayd},
};

/// Full load: warm-up, then the measured window.
pub const WARMUP: Duration = Duration::from_millis(500);
pub const MEASURE: Duration = Duration::from_millis(2500);
/// Each paced step: settling time, then the measured window.
pub const STEP_SETTLE: Duration = Duration::from_millis(300);
pub const STEP_MEASURE: Duration = Duration::from_millis(1000);
/// Paced rates for the userspace forwarder, frames per second (steps of
/// about 1.4x); the sweep stops after the first step that loses more than
/// [`MAX_LOSS`] or keeps the relay core [`SATURATED`].
pub const RATES: [u32; 11] = [
    10_000, 14_000, 20_000, 28_000, 40_000, 56_000, 80_000, 113_000, 160_000, 226_000, 320_000,
];
pub const MAX_LOSS: f64 = 0.05;
pub const SATURATED: f64 = 0.95;
/// Hard limit on one generator run, whatever happens to the main thread.
const GEN_LIMIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Xdp,
    Userspace,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Xdp => "xdp",
            Mode::Userspace => "userspace",
        }
    }
}

/// The CPUs the work is pinned to.
#[derive(Clone, Copy, Debug)]
pub struct Cpus {
    /// Generator, sink (the callee's NAPI) and the benchmark itself.
    pub load: usize,
    /// relayd and the relay's NAPI threads.
    pub relay: usize,
}

/// One measured window.
#[derive(Clone, Debug)]
pub struct Forwarded {
    pub mode: Mode,
    pub rules: u32,
    /// Distinct outgoing relay endpoints the rules use (see `topo::out_slots`).
    pub out_endpoints: u32,
    /// The generator's pacing, frames per second; None: full load.
    pub paced: Option<u32>,
    /// Frames the generator sent per second.
    pub offered_pps: f64,
    /// Frames the sink counted per second.
    pub pps: f64,
    /// Busy fraction of the relay core (/proc/stat).
    pub relay_busy: f64,
    /// CPU time of the relay's own threads (relayd, the relay veths' NAPI
    /// threads) per second of the window.
    pub relay_threads_busy: f64,
    /// Share of the relay core spent in hard and soft interrupts (/proc/stat).
    pub relay_irq: f64,
    /// Busy fraction of the generator/sink core.
    pub load_busy: f64,
    pub window_s: f64,
    /// Seconds to install the rules over the control socket.
    pub install_s: f64,
}

impl Forwarded {
    /// The relay's own use of the relay core: its threads' CPU time plus the
    /// core's interrupt time, at most the core's busy fraction. On a machine
    /// of its own this is the /proc/stat busy fraction; on a shared one it
    /// leaves out what other processes ran on the core.
    pub fn relay_cpu(&self) -> f64 {
        (self.relay_threads_busy + self.relay_irq).min(self.relay_busy)
    }

    /// Packets per second per fully used relay core: pps / [`Self::relay_cpu`].
    pub fn pps_per_core(&self) -> f64 {
        per(self.pps, self.relay_cpu())
    }

    /// pps / the relay core's /proc/stat busy fraction, other processes included.
    pub fn pps_per_core_procstat(&self) -> f64 {
        per(self.pps, self.relay_busy)
    }

    /// Share of the offered frames that did not reach the sink.
    pub fn loss(&self) -> f64 {
        if self.offered_pps > 0.0 {
            (1.0 - self.pps / self.offered_pps).max(0.0)
        } else {
            0.0
        }
    }

    /// Share of the relay core that went neither to the relay's threads nor
    /// to interrupts: other processes on this shared machine.
    pub fn foreign(&self) -> f64 {
        (self.relay_busy - self.relay_threads_busy - self.relay_irq).max(0.0)
    }

    /// The case's name in tables.
    pub fn case(&self) -> String {
        match self.paced {
            None => self.mode.name().to_string(),
            Some(_) => format!("{}, best paced rate", self.mode.name()),
        }
    }
}

fn per(pps: f64, busy: f64) -> f64 {
    if busy > 0.0 { pps / busy } else { 0.0 }
}

/// Everything measured for one (mode, rules) case.
pub struct Case {
    /// Full load.
    pub full: Forwarded,
    /// The paced steps (userspace only), in order.
    pub steps: Vec<Forwarded>,
    /// relayd's global counters after the case.
    pub counters: serde_json::Value,
}

impl Case {
    /// The best paced step: the highest pps per relay core among the steps
    /// that lost at most [`MAX_LOSS`]. Picking the best of several noisy
    /// figures favours the userspace forwarder, which is the safe side for
    /// the XDP target.
    pub fn best_paced(&self) -> Option<&Forwarded> {
        self.steps
            .iter()
            .filter(|s| s.loss() <= MAX_LOSS)
            .max_by(|a, b| a.pps_per_core().total_cmp(&b.pps_per_core()))
    }

    /// The rows for the results table: full load, and the best paced step.
    pub fn rows(&self) -> Vec<Forwarded> {
        std::iter::once(self.full.clone())
            .chain(self.best_paced().cloned())
            .collect()
    }

    /// The figure that stands for this case's forwarder: the better of full
    /// load and the best paced step, by pps per relay core.
    pub fn best(&self) -> &Forwarded {
        match self.best_paced() {
            Some(p) if p.pps_per_core() > self.full.pps_per_core() => p,
            _ => &self.full,
        }
    }
}

/// Counters and clocks at one end of a window.
struct Snapshot {
    at: Instant,
    /// The same moment as CLOCK_MONOTONIC ns (to line up with `perf record -k
    /// CLOCK_MONOTONIC` or bpftrace when looking into a result).
    mono_ns: u64,
    sent: u64,
    sink: u64,
    relay: CpuTimes,
    load: CpuTimes,
    /// CPU time of relayd and the relay's NAPI threads, ns.
    relay_threads_ns: u64,
}

#[allow(clippy::too_many_arguments)]
pub fn run_case(
    bench: &Bench,
    generator: &Gen,
    relayd_bin: &Path,
    frame: &[u8],
    mode: Mode,
    rules: u32,
    out_slots: u32,
    cpus: Cpus,
) -> Result<Case> {
    let tag = format!("[{} {rules} rules]", mode.name());
    eprintln!("{tag} starting relayd");
    let mut relayd = Relayd::start(bench, relayd_bin, mode.name(), cpus.relay)?;
    let t = Instant::now();
    relayd.add_rules(rules, out_slots)?;
    let install_s = t.elapsed().as_secs_f64();
    eprintln!("{tag} rules installed in {install_s:.2} s");
    // In userspace mode the relay's veths need an XDP program of their own:
    // veth hands XDP_TX'ed frames only to a peer that has one.
    let _pass = match mode {
        Mode::Xdp => None,
        Mode::Userspace => Some(bench.relay.run(|| attach_pass(&["in0", "out0"]))??),
    };
    let mut relay_napi = Vec::new();
    for dev in ["in0", "out0"] {
        relay_napi.extend(threaded_napi(&bench.relay, dev, cpus.relay)?);
    }
    let callee_napi = threaded_napi(&bench.callee, "eth0", cpus.load)?;
    let names = |threads: &[(i32, String)]| {
        threads
            .iter()
            .map(|(_, n)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!(
        "{tag} relayd (pid {}) and {} on CPU {}; generator and {} on CPU {}",
        relayd.pid().unwrap_or(0),
        names(&relay_napi),
        cpus.relay,
        names(&callee_napi),
        cpus.load,
    );

    let relay_pids: Vec<i32> = relay_napi.iter().map(|(pid, _)| *pid).collect();
    let relayd_pid = relayd.pid().map_or(0, |p| p as i32);
    let snapshot = || -> Result<Snapshot> {
        Ok(Snapshot {
            at: Instant::now(),
            mono_ns: relay_tests::clock::monotonic_ns(),
            sent: generator.sent()?,
            sink: bench.sink.counts()?.0,
            relay: CpuTimes::read(cpus.relay)?,
            load: CpuTimes::read(cpus.load)?,
            relay_threads_ns: cpu_time_ns(&relay_pids, &[relayd_pid]),
        })
    };
    let window = |paced: Option<u32>, settle: Duration, length: Duration| -> Result<Forwarded> {
        generator.configure(frame, rules, PEER_BASE, LOCAL_BASE, paced)?;
        thread::sleep(settle);
        let a = snapshot()?;
        thread::sleep(length);
        let b = snapshot()?;
        let dt = b.at.duration_since(a.at).as_secs_f64();
        let w = Forwarded {
            mode,
            rules,
            out_endpoints: out_slots,
            paced,
            offered_pps: b.sent.saturating_sub(a.sent) as f64 / dt,
            pps: b.sink.saturating_sub(a.sink) as f64 / dt,
            relay_busy: b.relay.busy_since(&a.relay),
            relay_irq: b.relay.irq_since(&a.relay),
            relay_threads_busy: b.relay_threads_ns.saturating_sub(a.relay_threads_ns) as f64
                / 1e9
                / dt,
            load_busy: b.load.busy_since(&a.load),
            window_s: dt,
            install_s,
        };
        eprintln!(
            "{tag} {}: {} pps forwarded of {} offered, relay core {:.1}% busy, {:.1}% of it the relay's: {} pps per relay core (CLOCK_MONOTONIC {:.3}..{:.3})",
            paced.map_or("full load".into(), |r| format!("paced at {r} pps")),
            crate::report::thousands(w.pps),
            crate::report::thousands(w.offered_pps),
            w.relay_busy * 100.0,
            w.relay_cpu() * 100.0,
            crate::report::thousands(w.pps_per_core()),
            a.mono_ns as f64 / 1e9,
            b.mono_ns as f64 / 1e9,
        );
        Ok(w)
    };

    let (full, steps) = with_generator(bench, generator, frame, cpus, || {
        // Paced steps first: after a full-load window the sockets hold a
        // backlog that relayd drains for seconds.
        let mut steps = Vec::new();
        if mode == Mode::Userspace {
            for rate in RATES {
                let step = window(Some(rate), STEP_SETTLE, STEP_MEASURE)?;
                let last = step.loss() > MAX_LOSS || step.relay_cpu() > SATURATED;
                steps.push(step);
                if last {
                    break;
                }
            }
        }
        let full = window(None, WARMUP, MEASURE)?;
        Ok((full, steps))
    })?;
    let counters = relayd.counters().unwrap_or(serde_json::Value::Null);
    relayd.stop()?;
    if full.pps <= 0.0 {
        bail!(
            "nothing reached the sink (relayd counters: {counters})\n{}",
            relayd.log()
        );
    }
    Ok(Case {
        full,
        steps,
        counters,
    })
}

/// Runs the generator in the caller namespace on the load core while `f`
/// runs on this thread; stops it when `f` returns.
fn with_generator<T>(
    bench: &Bench,
    generator: &Gen,
    frame: &[u8],
    cpus: Cpus,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let stop = AtomicBool::new(false);
    let caller = File::open(bench.caller.path())?;
    let ifindex = bench.caller_eth.ifindex;
    thread::scope(|s| {
        let worker = thread::Builder::new()
            .name("relay-gen".into())
            .spawn_scoped(s, || -> Result<Duration> {
                setns(&caller, CloneFlags::CLONE_NEWNET).context("setns into the caller")?;
                pin(0, cpus.load)?;
                generator.run(frame, ifindex, &stop, GEN_LIMIT)
            })
            .context("spawn the generator thread")?;
        let result = f();
        let finished_early = worker.is_finished();
        stop.store(true, Ordering::Relaxed);
        let ran = worker
            .join()
            .map_err(|_| anyhow!("the generator thread panicked"))?;
        ran?;
        if finished_early {
            bail!("the generator stopped before the measurements were done");
        }
        result
    })
}
