//! CPU pinning, /proc/stat, threaded NAPI and machine facts.

use std::{
    collections::BTreeSet,
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::{
    sched::{CpuSet, sched_setaffinity},
    unistd::Pid,
};
use relay_tests::netns::NetNs;

/// Pins thread or process `pid` (0: the calling thread) to `cpu`.
pub fn pin(pid: i32, cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    sched_setaffinity(Pid::from_raw(pid), &set)
        .with_context(|| format!("sched_setaffinity(pid {pid}, CPU {cpu})"))
}

/// CPUs online (before any pinning).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n < 1 { 1 } else { n as usize }
}

/// One CPU's time from /proc/stat, in clock ticks.
#[derive(Clone, Copy, Debug)]
pub struct CpuTimes {
    pub total: u64,
    pub idle: u64,
}

impl CpuTimes {
    pub fn read(cpu: usize) -> Result<Self> {
        let stat = fs::read_to_string("/proc/stat").context("read /proc/stat")?;
        let name = format!("cpu{cpu}");
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .with_context(|| format!("no {name} line in /proc/stat"))?;
        // user nice system idle iowait irq softirq steal (guest time is
        // already inside user and nice).
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        if v.len() < 5 {
            bail!("short /proc/stat line: {line}");
        }
        Ok(Self {
            total: v.iter().sum(),
            idle: v[3] + v[4],
        })
    }

    /// Busy fraction, (total - idle - iowait) / total, between two readings.
    pub fn busy_since(&self, earlier: &CpuTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        let idle = self.idle.saturating_sub(earlier.idle);
        if total == 0 {
            return 0.0;
        }
        (total.saturating_sub(idle)) as f64 / total as f64
    }
}

/// Pids and names of the kernel's NAPI threads whose name starts with `prefix`.
fn napi_threads(prefix: &str) -> BTreeSet<(i32, String)> {
    let mut out = BTreeSet::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(comm) = fs::read_to_string(entry.path().join("comm")) {
            let comm = comm.trim_end();
            if comm.starts_with(prefix) {
                out.insert((pid, comm.to_string()));
            }
        }
    }
    out
}

/// Switches `dev` in `ns` to threaded NAPI and pins its NAPI kthreads
/// (`napi/<dev>-<id>`) to `cpu`; returns their pids and names.
///
/// The threads are told apart from same-named ones of other namespaces by
/// switching threaded mode off and on: turning it on creates new kthreads,
/// and only those are ours. Call this after every XDP attach to `dev` (a
/// detach deletes the NAPI instance and its thread).
pub fn threaded_napi(ns: &NetNs, dev: &str, cpu: usize) -> Result<Vec<(i32, String)>> {
    let path = format!("/sys/class/net/{dev}/threaded");
    // `ip netns exec` mounts the namespace's own sysfs for the command.
    ns.exec("sh", &["-c", &format!("echo 0 > {path}")])?;
    let prefix = format!("napi/{dev}-");
    let before = napi_threads(&prefix);
    ns.exec("sh", &["-c", &format!("echo 1 > {path}")])?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let new: Vec<(i32, String)> = napi_threads(&prefix)
            .difference(&before)
            .cloned()
            .collect();
        if !new.is_empty() {
            for (pid, name) in &new {
                pin(*pid, cpu).with_context(|| format!("pinning {name}"))?;
            }
            return Ok(new);
        }
        if Instant::now() > deadline {
            bail!(
                "no NAPI thread {prefix}* appeared after enabling threaded NAPI on {dev} \
                 in {} (does {dev} have an XDP program attached?)",
                ns.name()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kernel release, CPU model and CPU count.
pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub nproc: usize,
}

impl Machine {
    pub fn probe() -> Self {
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            kernel,
            cpu_model,
            nproc: online_cpus(),
        }
    }
}
