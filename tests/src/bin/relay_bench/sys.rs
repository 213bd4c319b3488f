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

/// Nice value of everything the benchmark runs or pins: the machine may be
/// shared, and at -20 other processes (nice 0) get about 1% of a core that
/// one of ours wants. Ours all get the same value, so the relay's NAPI
/// threads and relayd share the relay core as they would at any priority.
pub const NICE: i32 = -20;

/// Sets the nice value of thread or process `pid` (0: the calling thread;
/// threads it starts inherit it).
pub fn renice(pid: i32, nice: i32) -> Result<()> {
    // SAFETY: setpriority takes plain integers.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, nice) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setpriority(pid {pid}, {nice})"));
    }
    Ok(())
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
    /// Hard and soft interrupt time.
    pub irq: u64,
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
            irq: v.get(5).copied().unwrap_or(0) + v.get(6).copied().unwrap_or(0),
        })
    }

    /// Fraction of the time spent in hard and soft interrupts between two readings.
    pub fn irq_since(&self, earlier: &CpuTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.irq.saturating_sub(earlier.irq) as f64 / total as f64
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
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
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

/// Switches `dev` in `ns` to threaded NAPI, pins its NAPI kthreads
/// (`napi/<dev>-<id>`) to `cpu` and gives them the nice value [`NICE`];
/// returns their pids and names.
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
        let new: Vec<(i32, String)> = napi_threads(&prefix).difference(&before).cloned().collect();
        if !new.is_empty() {
            for (pid, name) in &new {
                pin(*pid, cpu).with_context(|| format!("pinning {name}"))?;
                renice(*pid, NICE).with_context(|| format!("renicing {name}"))?;
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

/// Kernel release, CPU model, CPU count, and the speculation mitigations
/// that make calls and returns (BPF helpers among them) dearer.
pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub nproc: usize,
    pub mitigations: Vec<(String, String)>,
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
        let mitigations = ["spectre_v2", "spec_rstack_overflow", "retbleed"]
            .iter()
            .filter_map(|name| {
                let path = format!("/sys/devices/system/cpu/vulnerabilities/{name}");
                let text = fs::read_to_string(path).ok()?;
                let text = text.trim();
                (!text.starts_with("Not affected")).then(|| (name.to_string(), text.to_string()))
            })
            .collect();
        Self {
            kernel,
            cpu_model,
            nproc: online_cpus(),
            mitigations,
        }
    }
}

/// CPU time (ns, from schedstat) used so far by `pids` and, for each of
/// `processes`, by all its threads. Threads that are gone count as 0.
pub fn cpu_time_ns(pids: &[i32], processes: &[i32]) -> u64 {
    let run_ns = |path: String| -> u64 {
        fs::read_to_string(path)
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    };
    let mut total: u64 = pids
        .iter()
        .map(|pid| run_ns(format!("/proc/{pid}/schedstat")))
        .sum();
    for pid in processes {
        if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                total += run_ns(format!("{}/schedstat", task.path().display()));
            }
        }
    }
    total
}
