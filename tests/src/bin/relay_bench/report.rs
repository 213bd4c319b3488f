//! The results as a terminal table, as docs/bench/dataplane.md and as JSON.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::{
    cost::{self, Costs},
    forward::{self, Case, Cpus, Forwarded, Mode},
    progs,
    sys::Machine,
};

/// XDP must forward at least this many times the packets per relay core of
/// the userspace forwarder.
pub const PER_CORE_TARGET: f64 = 10.0;
/// "Flat": the slowest rule count costs at most this many times the fastest.
pub const FLAT_TARGET: f64 = 1.25;
/// Share of the relay core used by other processes above which a window is
/// flagged as disturbed.
const NOISE: f64 = 0.05;

pub struct Report {
    pub date: String,
    pub machine: Machine,
    pub cpus: Cpus,
    pub frame_len: usize,
    /// relayd's open-file limit.
    pub fd_limit: u64,
    pub cases: Vec<Case>,
    pub costs: Costs,
}

/// XDP against userspace at one rule count, each at its best.
pub struct Ratio<'a> {
    pub rules: u32,
    pub xdp: &'a Forwarded,
    pub user: &'a Forwarded,
}

impl Ratio<'_> {
    pub fn pps(&self) -> f64 {
        self.xdp.pps / self.user.pps
    }
    pub fn per_core(&self) -> f64 {
        self.xdp.pps_per_core() / self.user.pps_per_core()
    }
    pub fn met(&self) -> bool {
        self.per_core() >= PER_CORE_TARGET
    }
}

impl Report {
    pub fn ratios(&self) -> Vec<Ratio<'_>> {
        let find = |mode, rules| {
            self.cases
                .iter()
                .find(|c| c.full.mode == mode && c.full.rules == rules)
                .map(Case::best)
        };
        let mut counts: Vec<u32> = self.cases.iter().map(|c| c.full.rules).collect();
        counts.sort_unstable();
        counts.dedup();
        counts
            .into_iter()
            .filter_map(|n| {
                Some(Ratio {
                    rules: n,
                    xdp: find(Mode::Xdp, n)?,
                    user: find(Mode::Userspace, n)?,
                })
            })
            .collect()
    }

    /// (min, max) ns/packet over the rule counts, and whether that is flat.
    pub fn flatness(&self) -> (f64, f64, bool) {
        let v: Vec<f64> = self.costs.cases.iter().map(|c| c.ns_per_packet).collect();
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(0.0, f64::max);
        (min, max, max <= min * FLAT_TARGET)
    }

    fn forwarding_table(&self) -> String {
        let mut t = Table::new(&[
            "case",
            "rules",
            "offered pps",
            "forwarded pps",
            "relay core busy",
            "relay's own CPU",
            "pps per relay core",
            "load core busy",
        ]);
        for f in self.cases.iter().flat_map(Case::rows) {
            t.row(vec![
                f.case(),
                thousands(f64::from(f.rules)),
                thousands(f.offered_pps),
                thousands(f.pps),
                percent(f.relay_busy),
                percent(f.relay_cpu()),
                thousands(f.pps_per_core()),
                percent(f.load_busy),
            ]);
        }
        t.render()
    }

    fn steps_table(&self) -> String {
        let mut t = Table::new(&[
            "rules",
            "paced at",
            "offered pps",
            "forwarded pps",
            "loss",
            "relay core busy",
            "relay's own CPU",
            "pps per relay core",
        ]);
        for c in &self.cases {
            for f in &c.steps {
                t.row(vec![
                    thousands(f64::from(f.rules)),
                    thousands(f64::from(f.paced.unwrap_or(0))),
                    thousands(f.offered_pps),
                    thousands(f.pps),
                    percent(f.loss()),
                    percent(f.relay_busy),
                    percent(f.relay_cpu()),
                    thousands(f.pps_per_core()),
                ]);
            }
        }
        t.render()
    }

    /// A warning when other processes took a noticeable share of the relay
    /// core (the machine is shared): those figures understate the relay.
    fn noise_note(&self) -> Option<String> {
        let noisy: Vec<String> = self
            .cases
            .iter()
            .flat_map(Case::rows)
            .filter(|f| f.foreign() > NOISE)
            .map(|f| {
                format!(
                    "{} with {}: {}",
                    f.case(),
                    rules(f.rules),
                    percent(f.foreign())
                )
            })
            .collect();
        if noisy.is_empty() {
            return None;
        }
        Some(format!(
            "other processes ran on the relay core during some windows (relay core busy minus \
             the relay's own CPU: {}); pps per relay core leaves that time out, but the \
             competition may still have slowed the relay.",
            noisy.join(", ")
        ))
    }

    /// A sentence when some rules had to share their outgoing endpoint.
    fn shared_note(&self) -> Option<String> {
        let f = self
            .cases
            .iter()
            .map(|c| &c.full)
            .find(|f| f.out_endpoints < f.rules)?;
        Some(format!(
            "relayd holds a socket on every relay endpoint a rule uses, two per rule here; its \
             open-file limit on this machine is {} (raising it needs CAP_SYS_RESOURCE), so \
             with {} rules only {} outgoing endpoints are distinct and the last {} rules leave \
             from the endpoint of an earlier rule (rule i from 198.51.100.1:40000+2(i mod {})). \
             Every rule still has its own receiving socket.",
            thousands(self.fd_limit as f64),
            thousands(f64::from(f.rules)),
            thousands(f64::from(f.out_endpoints)),
            thousands(f64::from(f.rules - f.out_endpoints)),
            f.out_endpoints,
        ))
    }

    fn ratio_table(&self) -> String {
        let mut t = Table::new(&[
            "rules",
            "XDP pps per relay core",
            "userspace pps per relay core",
            "XDP / userspace per relay core",
            "XDP / userspace pps",
            "target",
        ]);
        for r in self.ratios() {
            t.row(vec![
                thousands(f64::from(r.rules)),
                thousands(r.xdp.pps_per_core()),
                format!("{} ({})", thousands(r.user.pps_per_core()), r.user.case()),
                format!("{:.1}x", r.per_core()),
                format!("{:.1}x", r.pps()),
                format!(">= {PER_CORE_TARGET:.0}x: {}", met(r.met())),
            ]);
        }
        t.render()
    }

    fn cost_table(&self) -> String {
        let mut t = Table::new(&["rules", "ns/packet", "median", "slowest"]);
        for c in &self.costs.cases {
            let slowest = c.trials.iter().copied().fold(0.0, f64::max);
            t.row(vec![
                thousands(f64::from(c.rules)),
                format!("{:.0}", c.ns_per_packet),
                format!("{:.0}", c.median_ns),
                format!("{slowest:.0}"),
            ]);
        }
        t.render()
    }

    fn targets(&self) -> Vec<(String, String, bool)> {
        let mut out = Vec::new();
        for r in self.ratios() {
            out.push((
                format!(
                    "XDP forwards >= {PER_CORE_TARGET:.0}x the packets per relay core of the userspace forwarder ({})",
                    rules(r.rules)
                ),
                format!("{:.1}x", r.per_core()),
                r.met(),
            ));
        }
        if self.costs.cases.is_empty() {
            return out;
        }
        let (min, max, flat) = self.flatness();
        let (first, last) = (
            self.costs.cases.first().map_or(0, |c| c.rules),
            self.costs.cases.last().map_or(0, |c| c.rules),
        );
        out.push((
            format!(
                "XDP cost per packet flat from {} to {} rules (slowest <= {FLAT_TARGET}x fastest)",
                thousands(f64::from(first)),
                thousands(f64::from(last))
            ),
            format!("{min:.0}-{max:.0} ns ({:.2}x)", max / min),
            flat,
        ));
        out
    }

    fn notes(&self) -> Vec<String> {
        [self.noise_note(), self.shared_note()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// The human-readable result (terminal).
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "relay data-plane benchmark, {} ({}; {} CPUs; kernel {})\n",
            self.date, self.machine.cpu_model, self.machine.nproc, self.machine.kernel
        );
        if !self.cases.is_empty() {
            let _ = writeln!(
                s,
                "Forwarding through the namespace topology ({}-byte frames; relay core CPU {}, generator and sink on CPU {}):\n",
                self.frame_len, self.cpus.relay, self.cpus.load
            );
            s.push_str(&self.forwarding_table());
            s.push('\n');
            s.push_str(&self.ratio_table());
            for note in self.notes() {
                let _ = writeln!(s, "\nNote: {note}");
            }
        }
        if !self.costs.cases.is_empty() {
            let _ = writeln!(
                s,
                "\nXDP program cost per packet (BPF_PROG_TEST_RUN, {} repeats per measurement, fastest of {}; forward path; empty program: {:.0} ns):\n",
                thousands(f64::from(cost::REPEAT)),
                cost::TRIALS,
                self.costs.empty_ns
            );
            s.push_str(&self.cost_table());
        }
        s.push_str("\nTargets:\n");
        for (what, value, ok) in self.targets() {
            let _ = writeln!(s, "  [{}] {what}: {value}", met(ok));
        }
        s
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str("# Data-plane benchmark\n\n");
        let _ = writeln!(
            s,
            "Written by `cargo xtask bench dataplane` on {} (the next run replaces this \
             file; `cargo xtask bench dataplane --json` prints the same results as JSON).\n",
            self.date
        );
        s.push_str("## Machine\n\n");
        let _ = writeln!(s, "- Kernel: {}", self.machine.kernel);
        let _ = writeln!(s, "- CPU: {}", self.machine.cpu_model);
        let _ = writeln!(s, "- CPUs (nproc): {}", self.machine.nproc);
        for (name, state) in &self.machine.mitigations {
            let _ = writeln!(s, "- {name}: {state}");
        }
        let _ = writeln!(
            s,
            "- Pinning: relay core = CPU {} (relayd and the relay veths' threaded NAPI); load \
             core = CPU {} (generator, the callee's NAPI and sink, the benchmark). All of \
             them run at nice {}, so while they are busy other processes on a shared \
             machine get little of either core.\n",
            self.cpus.relay,
            self.cpus.load,
            crate::sys::NICE
        );
        s.push_str("## Targets\n\n| target | this run | |\n|---|---|---|\n");
        for (what, value, ok) in self.targets() {
            let _ = writeln!(s, "| {what} | {value} | {} |", met(ok));
        }
        let _ = writeln!(
            s,
            "\n## Forwarding rate: XDP against the userspace forwarder\n\n\
             caller `eth0` -> relay `in0` -> relay `out0` -> callee `eth0`: veth pairs between \
             three network namespaces, a real relayd (`mode = \"xdp\"` or `\"userspace\"`) with \
             strict rules installed over its control socket (rule i: 192.0.2.1:30000+2i from \
             192.0.2.10:4000+2i, out from 198.51.100.1:40000+2i to 198.51.100.10:5000+2i). \
             {}-byte frames (IPv4, UDP checksum 0, a 172-byte RTP packet); with N rules the \
             generator steps round-robin over the N flows.\n",
            self.frame_len
        );
        s.push_str(&self.forwarding_table());
        s.push('\n');
        s.push_str(&self.ratio_table());
        let _ = writeln!(
            s,
            "\n- *offered pps*: frames the generator sent; *forwarded pps*: frames the sink \
             counted. Full load: a {:.1} s window after {:.1} s of warm-up. *relay core busy*: \
             (total - idle - iowait) / total of the relay core's /proc/stat line over the \
             window. *relay's own CPU*: CPU time of relayd and the relay veths' NAPI threads \
             (schedstat) plus the core's interrupt time (/proc/stat), per second, at most the \
             busy fraction. *pps per relay core* = forwarded pps / the relay's own CPU. On a \
             machine of its own the two fractions agree; this machine is shared, and the \
             /proc/stat figure also counts whatever else ran on the relay core.\n\
             - Generator: `relay-gen` run with BPF_PROG_TEST_RUN in live-frames mode (batches \
             of {}, {} frames per call) on the caller's `eth0`: each frame goes out with \
             XDP_TX and arrives at the relay's `in0`. Sink: `relay-sink` on the callee's \
             `eth0` counts and drops. In userspace mode the pass-only program sits on `in0` \
             and `out0` (veth delivers XDP_TX'ed frames only to a peer with an XDP program) \
             and hands every frame to the kernel's stack.\n\
             - At full load the XDP relay takes what it can and the veth ring in front of it \
             drops the rest on the generator's core. The userspace forwarder instead falls \
             into receive livelock: the relay's NAPI thread spends the core pushing packets \
             into a socket that is already full (UdpRcvbufErrors) and relayd starves. So \
             userspace cases are also run with the generator paced (a token bucket in \
             `relay-gen`), before the full-load window, at rising rates until a step loses \
             more than {:.0}% or keeps the relay core busy; the step with the highest pps \
             per relay core among those that lost at most that is the *best paced rate* \
             row, and the ratios use whichever userspace row has the higher pps per relay \
             core (the best of several noisy figures favours userspace: the safe side for \
             the target).\n\
             - veth copies frames that arrive without XDP headroom; that cost is in every \
             veth figure and is not a property of a native NIC driver.",
            forward::MEASURE.as_secs_f64(),
            forward::WARMUP.as_secs_f64(),
            progs::BATCH,
            thousands(f64::from(progs::CHUNK)),
            forward::MAX_LOSS * 100.0,
        );
        for note in self.notes() {
            let _ = writeln!(s, "- {note}");
        }
        let _ = writeln!(
            s,
            "\n### Userspace forwarder, paced steps\n\n\
             Each step: {:.1} s to settle, then a {:.1} s window. The generator paces \
             itself per frame but loses a few ms between two test-run calls, so it \
             offers a little less than the step's rate; *offered pps* is what it sent.\n",
            forward::STEP_SETTLE.as_secs_f64(),
            forward::STEP_MEASURE.as_secs_f64(),
        );
        s.push_str(&self.steps_table());
        let _ = writeln!(
            s,
            "\n## XDP program cost per packet against installed rules\n\n\
             BPF_PROG_TEST_RUN of the relay program with `repeat` = {} (the kernel reports the \
             average ns per run), fastest of {} measurements (other work on a shared machine \
             only adds time; the median is shown too), in a namespace where `bpf_fib_lookup` \
             succeeds (permanent neighbour), so every run takes the forward path: parse, \
             RELAY_ADDRS, FLOWS, FLOW_STATS and FLOW_STATE lookups, strict source check, FIB \
             lookup, EGRESS devmap, rewrite with incremental checksums, XDP_REDIRECT (the \
             COUNTERS map confirms every run). Each rule count has its own copy of the \
             program with flow maps sized for {} entries, filled with rules (state and \
             statistics entries too, as relayd installs them); the copies are measured in \
             interleaved rounds. The pass-only program costs {:.0} ns under the same \
             harness.\n",
            thousands(f64::from(cost::REPEAT)),
            cost::TRIALS,
            thousands(f64::from(cost::CAPACITY)),
            self.costs.empty_ns
        );
        s.push_str(&self.cost_table());
        s.push_str(
            "\n- The test run repeats one frame on one buffer, so the measured rule maps the \
             frame onto itself (keyed on the callee's address, rewritten to the same source \
             and destination): the work is that of any forward, and it stays on the forward \
             path from run to run.\n\
             - One flow is hit over and over, so its map entries stay in cache: the figure \
             shows that the lookups do not grow with the table, not the cost of cache misses \
             on a million live flows.\n",
        );
        s
    }

    pub fn json(&self) -> Value {
        let (min, max, flat) = self.flatness();
        json!({
            "benchmark": "dataplane",
            "date": self.date,
            "machine": {
                "kernel": self.machine.kernel,
                "cpu_model": self.machine.cpu_model,
                "nproc": self.machine.nproc,
                "mitigations": self.machine.mitigations.iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                    .collect::<serde_json::Map<_, _>>(),
            },
            "setup": {
                "frame_bytes": self.frame_len,
                "relay_cpu": self.cpus.relay,
                "load_cpu": self.cpus.load,
                "nice": crate::sys::NICE,
                "warmup_s": forward::WARMUP.as_secs_f64(),
                "measure_s": forward::MEASURE.as_secs_f64(),
                "step_settle_s": forward::STEP_SETTLE.as_secs_f64(),
                "step_measure_s": forward::STEP_MEASURE.as_secs_f64(),
                "max_loss": forward::MAX_LOSS,
                "saturated": forward::SATURATED,
                "generator_batch": progs::BATCH,
                "generator_frames_per_call": progs::CHUNK,
                "relayd_fd_limit": self.fd_limit,
            },
            "forwarding": self.cases.iter().map(|c| json!({
                "mode": c.full.mode.name(),
                "rules": c.full.rules,
                "out_src_endpoints": c.full.out_endpoints,
                "rules_install_s": round3(c.full.install_s),
                "full_load": window_json(&c.full),
                "paced_steps": c.steps.iter().map(window_json).collect::<Vec<_>>(),
                "best_paced": c.best_paced().map(window_json),
                "relayd_counters": c.counters,
            })).collect::<Vec<_>>(),
            "ratios": self.ratios().iter().map(|r| json!({
                "rules": r.rules,
                "xdp_case": r.xdp.case(),
                "userspace_case": r.user.case(),
                "pps": round3(r.pps()),
                "pps_per_relay_core": round3(r.per_core()),
                "target": PER_CORE_TARGET,
                "met": r.met(),
            })).collect::<Vec<_>>(),
            "per_packet": {
                "repeat": cost::REPEAT,
                "trials": cost::TRIALS,
                "map_capacity": cost::CAPACITY,
                "empty_program_ns": self.costs.empty_ns,
                "cases": self.costs.cases.iter().map(|c| json!({
                    "rules": c.rules,
                    "ns_per_packet": c.ns_per_packet,
                    "median_ns": c.median_ns,
                    "trials_ns": c.trials,
                    "fill_s": round3(c.fill_s),
                })).collect::<Vec<_>>(),
                "min_ns": if self.costs.cases.is_empty() { Value::Null } else { json!(min) },
                "max_ns": if self.costs.cases.is_empty() { Value::Null } else { json!(max) },
                "flat_target": FLAT_TARGET,
                "flat": flat,
            },
            "targets": self.targets().into_iter().map(|(what, value, ok)| json!({
                "target": what,
                "value": value,
                "met": ok,
            })).collect::<Vec<_>>(),
        })
    }
}

fn window_json(f: &Forwarded) -> Value {
    json!({
        "paced_pps": f.paced,
        "offered_pps": f.offered_pps.round(),
        "pps": f.pps.round(),
        "loss": round3(f.loss()),
        "relay_core_busy": round3(f.relay_busy),
        "relay_cpu": round3(f.relay_cpu()),
        "pps_per_relay_core": f.pps_per_core().round(),
        "pps_per_relay_core_procstat": f.pps_per_core_procstat().round(),
        "relay_threads_busy": round3(f.relay_threads_busy),
        "relay_core_irq": round3(f.relay_irq),
        "relay_core_other_processes": round3(f.foreign()),
        "load_core_busy": round3(f.load_busy),
        "window_s": round3(f.window_s),
    })
}

/// "1 rule", "10,000 rules".
fn rules(n: u32) -> String {
    if n == 1 {
        "1 rule".into()
    } else {
        format!("{} rules", thousands(f64::from(n)))
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn percent(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

pub use relay_tests::bench_report::thousands;

/// A markdown table whose columns are padded, so it also reads in a terminal.
struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(head: &[&str]) -> Self {
        Self {
            head: head.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let mut width: Vec<usize> = self.head.iter().map(String::len).collect();
        for row in &self.rows {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.len());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
                // Text left, figures right.
                if i == 0 {
                    let _ = write!(s, " {c:<w$} |");
                } else {
                    let _ = write!(s, " {c:>w$} |");
                }
            }
            s.push('\n');
            s
        };
        let mut s = line(&self.head);
        s.push('|');
        for (i, w) in width.iter().enumerate() {
            let dashes = "-".repeat(*w);
            if i == 0 {
                let _ = write!(s, " {dashes} |");
            } else {
                let _ = write!(s, " {}: |", &dashes[..w - 1]);
            }
        }
        s.push('\n');
        for row in &self.rows {
            s.push_str(&line(row));
        }
        s
    }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM UTC`.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}
