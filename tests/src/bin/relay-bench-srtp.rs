//! `relay-bench-srtp [--json] [--ops N]` (run by `cargo xtask bench srtp`):
//! SRTP crypto throughput on one core, relay's `srtp::Context` against
//! libsrtp 2 (Debian's libsrtp2, NSS crypto), in one run.
//!
//! For every suite: protect and unprotect of RTP packets with a 172-byte
//! payload (184 bytes with the header), one at a time, in place, the way the
//! forwarder will call them. Each measurement copies the packet into the work
//! buffer first (both sides pay the same copy, as a forwarder that receives
//! into its buffers would not); unprotect runs over a batch of distinct
//! packets (the replay window refuses repeats) with a fresh receiver per
//! batch, outside the timed part. Both implementations get the same key
//! and the same packets, and every operation must succeed, or the run
//! fails.
//!
//! The thread is pinned to one CPU and runs at nice -15; the figure is
//! operations per CPU-second of that thread (CLOCK_THREAD_CPUTIME_ID), which
//! removes the time other work on this shared machine takes from it. Five
//! rounds, implementations alternating; the best round of each is the
//! closest to its capacity and the target is judged on those.
//!
//! This is the crypto part of `bench srtp` only. Forwarding in transcrypt and
//! re-key modes through the namespaces against rtpengine needs SRTP in the
//! forwarder, which is not there yet.
//!
//! Prints a table (or, with `--json`, one JSON object) on stdout, progress on
//! stderr, and writes docs/bench/srtp.md.

use std::{
    fmt::Write as _,
    hint::black_box,
    path::Path,
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use relay_tests::{
    bench_report::{cpu_model, kernel_release, median, pin_current_thread, thousands, utc_minute},
    libsrtp::{self, LibSrtp},
};
use relay_user::srtp::{Context, Direction, MasterKey, Suite};

const USAGE: &str = "usage: relay-bench-srtp [--json] [--ops N]\n\
     runs N operations per round, suite, operation and implementation (default 300000)";

const PAYLOAD: usize = 172;
const HEADER: usize = 12;
const ROUNDS: usize = 5;
/// Distinct packets one receiver unprotects before a fresh one takes over.
const BATCH: usize = 4096;
/// No measurement runs longer than this, whatever N is.
const MAX_MEASUREMENT: Duration = Duration::from_secs(5);
const CPU: usize = 1;
const NICE: i32 = -15;

fn main() -> ExitCode {
    let mut json = false;
    let mut ops = 300_000u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--ops" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => ops = n,
                _ => {
                    eprintln!("relay-bench-srtp: --ops takes a positive number\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            // `cargo xtask bench srtp` passes the benchmark's name.
            "srtp" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("relay-bench-srtp: unexpected argument {arg:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    match run(json, ops) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-bench-srtp: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Relay,
    Libsrtp,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Relay => "relay",
            Impl::Libsrtp => "libsrtp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Protect,
    Unprotect,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Protect => "protect",
            Op::Unprotect => "unprotect",
        }
    }
}

#[derive(Clone, Debug)]
struct Sample {
    suite: Suite,
    op: Op,
    imp: Impl,
    ops: u64,
    cpu_s: f64,
    wall_s: f64,
}

impl Sample {
    fn per_cpu_s(&self) -> f64 {
        if self.cpu_s > 0.0 {
            self.ops as f64 / self.cpu_s
        } else {
            0.0
        }
    }
}

fn run(json: bool, ops: u64) -> Result<()> {
    pin_current_thread(CPU)?;
    // SAFETY: setpriority has no memory-safety preconditions. Without root
    // it fails; the benchmark still runs, only less shielded from other work.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) } != 0 {
        eprintln!("note: cannot renice to {NICE} (not root?): other work may slow rounds down");
    }
    let mut samples = Vec::new();
    for round in 0..ROUNDS {
        eprintln!("[round {}/{ROUNDS}]", round + 1);
        for suite in Suite::ALL {
            let key = MasterKey::generate(suite)?;
            let packets = protected_batch(&key)?;
            for op in [Op::Protect, Op::Unprotect] {
                // Alternate who goes first, so neither always runs on a
                // warmer (or busier) machine.
                let order = if round % 2 == 0 {
                    [Impl::Relay, Impl::Libsrtp]
                } else {
                    [Impl::Libsrtp, Impl::Relay]
                };
                for imp in order {
                    let s = measure(&key, &packets, op, imp, ops)?;
                    eprintln!(
                        "  {:<24} {:<9} {:<7} {:>12} ops per CPU-s",
                        suite.sdes_name(),
                        op.name(),
                        imp.name(),
                        thousands(s.per_cpu_s())
                    );
                    samples.push(s);
                }
            }
        }
    }
    let report = Report::new(samples, ops);
    if json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/bench/srtp.md");
    std::fs::write(&doc, report.markdown())
        .with_context(|| format!("writing {}", doc.display()))?;
    eprintln!("wrote {}", doc.display());
    Ok(())
}

/// The RTP packet: 12-byte header, 172-byte payload, sequence number `seq`.
fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x5eed_f00du32.to_be_bytes());
    p.extend((0..PAYLOAD).map(|i| (i as u8).wrapping_mul(13)));
    p
}

/// BATCH distinct SRTP packets (sequence numbers 0..BATCH), protected by
/// relay; libsrtp produces the same bytes (the interop tests check it), and
/// both unprotect them here, which checks it again.
fn protected_batch(key: &MasterKey) -> Result<Vec<Vec<u8>>> {
    let mut tx = Context::new(key, Direction::Outbound)?;
    (0..BATCH)
        .map(|seq| {
            let mut b = rtp(seq as u16);
            let len = b.len();
            b.resize(len + 64, 0);
            let n = tx.protect_rtp(&mut b, len)?;
            b.truncate(n);
            Ok(b)
        })
        .collect()
}

/// CPU time of this thread, seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// One side of the comparison behind one interface.
enum Engine {
    // Boxed: a context holds both key schedules (a few KiB).
    Relay(Box<Context>),
    Libsrtp(LibSrtp),
}

impl Engine {
    fn new(imp: Impl, key: &MasterKey, op: Op) -> Result<Self> {
        Ok(match imp {
            Impl::Relay => Engine::Relay(Box::new(Context::new(
                key,
                match op {
                    Op::Protect => Direction::Outbound,
                    Op::Unprotect => Direction::Inbound,
                },
            )?)),
            Impl::Libsrtp => Engine::Libsrtp(
                LibSrtp::new(key, op == Op::Unprotect)
                    .map_err(|s| anyhow::anyhow!("libsrtp srtp_create: status {s}"))?,
            ),
        })
    }

    #[inline]
    fn protect(&mut self, buf: &mut [u8], len: usize) -> bool {
        match self {
            Engine::Relay(c) => c.protect_rtp(buf, len).is_ok(),
            Engine::Libsrtp(l) => l.protect_rtp(buf, len).is_ok(),
        }
    }

    #[inline]
    fn unprotect(&mut self, buf: &mut [u8], len: usize) -> bool {
        match self {
            Engine::Relay(c) => c.unprotect_rtp(&mut buf[..len]).is_ok(),
            Engine::Libsrtp(l) => l.unprotect_rtp(buf, len).is_ok(),
        }
    }
}

fn measure(key: &MasterKey, packets: &[Vec<u8>], op: Op, imp: Impl, ops: u64) -> Result<Sample> {
    let plain = rtp(0);
    let len = plain.len();
    let mut buf = vec![0u8; len + libsrtp::MAX_TRAILER];
    let mut engine = Engine::new(imp, key, op)?;
    let started = Instant::now();
    let mut done = 0u64;
    let mut cpu_s = 0.0;
    while done < ops && started.elapsed() < MAX_MEASUREMENT {
        let n = (ops - done).min(BATCH as u64) as usize;
        // A fresh receiver per batch, outside the timed part.
        if op == Op::Unprotect {
            engine = Engine::new(imp, key, op)?;
        }
        let t0 = thread_cpu();
        let mut ok = 0usize;
        match op {
            Op::Protect => {
                for i in 0..n {
                    buf[..len].copy_from_slice(&plain);
                    // Sequence numbers run on (and wrap, moving the ROC).
                    let seq = (done as usize + i) as u16;
                    buf[2..4].copy_from_slice(&seq.to_be_bytes());
                    ok += usize::from(engine.protect(black_box(&mut buf), len));
                }
            }
            Op::Unprotect => {
                for p in &packets[..n] {
                    buf[..p.len()].copy_from_slice(p);
                    ok += usize::from(engine.unprotect(black_box(&mut buf), p.len()));
                }
            }
        }
        cpu_s += thread_cpu() - t0;
        if ok != n {
            bail!(
                "{} {} {}: {} of {n} operations failed",
                imp.name(),
                key.suite(),
                op.name(),
                n - ok
            );
        }
        done += n as u64;
    }
    Ok(Sample {
        suite: key.suite(),
        op,
        imp,
        ops: done,
        cpu_s,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

struct Report {
    samples: Vec<Sample>,
    ops: u64,
    date: String,
    kernel: String,
    cpu: String,
    libsrtp: String,
}

/// One line of the result table.
struct Row {
    suite: Suite,
    op: Op,
    relay_best: f64,
    libsrtp_best: f64,
    relay_median: f64,
    libsrtp_median: f64,
}

impl Row {
    fn ratio(&self) -> f64 {
        if self.libsrtp_best > 0.0 {
            self.relay_best / self.libsrtp_best
        } else {
            0.0
        }
    }
}

impl Report {
    fn new(samples: Vec<Sample>, ops: u64) -> Self {
        let date = utc_minute();
        let kernel = kernel_release();
        let cpu = cpu_model();
        let libsrtp = Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", "libsrtp2-1"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Self {
            samples,
            ops,
            date,
            kernel,
            cpu,
            libsrtp,
        }
    }

    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for suite in Suite::ALL {
            for op in [Op::Protect, Op::Unprotect] {
                let of = |imp: Impl| -> Vec<f64> {
                    self.samples
                        .iter()
                        .filter(|s| s.suite == suite && s.op == op && s.imp == imp)
                        .map(Sample::per_cpu_s)
                        .collect()
                };
                let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
                let (r, l) = (of(Impl::Relay), of(Impl::Libsrtp));
                rows.push(Row {
                    suite,
                    op,
                    relay_best: best(&r),
                    libsrtp_best: best(&l),
                    relay_median: median(&r),
                    libsrtp_median: median(&l),
                });
            }
        }
        rows
    }

    fn all_met(&self) -> bool {
        self.rows().iter().all(|r| r.ratio() >= 1.0)
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| suite                   | operation | relay ops/s | libsrtp ops/s | relay / libsrtp | relay median | libsrtp median |"
        );
        let _ = writeln!(
            out,
            "| ----------------------- | --------- | ----------: | ------------: | --------------: | -----------: | -------------: |"
        );
        for r in self.rows() {
            let _ = writeln!(
                out,
                "| {:<23} | {:<9} | {:>11} | {:>13} | {:>14.2}x | {:>12} | {:>14} |",
                r.suite.sdes_name(),
                r.op.name(),
                thousands(r.relay_best),
                thousands(r.libsrtp_best),
                r.ratio(),
                thousands(r.relay_median),
                thousands(r.libsrtp_median),
            );
        }
        let _ = writeln!(
            out,
            "\nops/s: operations per CPU-second of the one pinned thread, best of {ROUNDS} rounds \
             (medians beside). Target: relay at least as fast as libsrtp for every suite and \
             operation: {}",
            if self.all_met() { "met" } else { "not met" }
        );
        out
    }

    fn markdown(&self) -> String {
        let rows = self.rows();
        let mut targets = String::new();
        for r in &rows {
            let _ = writeln!(
                targets,
                "| {} {}: relay at least as fast as libsrtp | {:.2}x | {} |",
                r.suite.sdes_name(),
                r.op.name(),
                r.ratio(),
                if r.ratio() >= 1.0 { "met" } else { "not met" }
            );
        }
        format!(
            "# SRTP crypto benchmark\n\n\
             Written by `cargo xtask bench srtp` on {date} (do not edit: the next run replaces this file).\n\n\
             ## What is measured\n\n\
             Protect and unprotect operations per second on one core, for each suite, of an RTP \
             packet with a {payload}-byte payload ({total} bytes with its 12-byte header), in place \
             in one buffer: relay's `srtp::Context` (aws-lc-rs) against libsrtp {libsrtp} \
             (Debian's `libsrtp2-1`, built with NSS crypto) through a minimal FFI binding, in the \
             same process and run. Each operation first copies the packet into the work buffer \
             (the same copy for both). Protect runs on through sequence-number wraps; unprotect \
             takes a batch of {batch} distinct packets per fresh receiver (the replay window refuses \
             repeats; creating the receiver is not timed). Both sides use the same keys and \
             packets and every operation must succeed. {ops} operations per measurement (at most \
             {max}s), {rounds} rounds, the implementations alternating.\n\n\
             The thread is pinned to CPU {cpu_n} at nice {nice}; \"ops/s\" is operations per CPU-second \
             of that thread (`CLOCK_THREAD_CPUTIME_ID`), which discounts time other work on this \
             shared machine took from it. The best round of each is the closest to its capacity; \
             the target is judged on those, medians are beside.\n\n\
             Forwarding in transcrypt and re-key modes through the network namespaces, against \
             rtpengine, is in [srtp-forwarding.md](srtp-forwarding.md) (the same `cargo xtask bench \
             srtp` writes it).\n\n\
             ## Machine\n\n\
             - Kernel: {kernel}\n- CPU: {cpu}\n- CPUs: 2 (shared with other work on this machine)\n\n\
             ## Results\n\n{table}\n\
             ## Target\n\n\
             | target | this run | |\n|---|---|---|\n{targets}",
            date = self.date,
            payload = PAYLOAD,
            total = PAYLOAD + HEADER,
            libsrtp = self.libsrtp,
            batch = BATCH,
            ops = thousands(self.ops as f64),
            max = MAX_MEASUREMENT.as_secs(),
            rounds = ROUNDS,
            cpu_n = CPU,
            nice = NICE,
            kernel = self.kernel,
            cpu = self.cpu,
            table = self.table(),
        )
    }

    fn json(&self) -> String {
        let samples: Vec<serde_json::Value> = self
            .samples
            .iter()
            .map(|s| {
                serde_json::json!({
                    "suite": s.suite.sdes_name(),
                    "operation": s.op.name(),
                    "implementation": s.imp.name(),
                    "ops": s.ops,
                    "cpu_s": s.cpu_s,
                    "wall_s": s.wall_s,
                    "ops_per_cpu_s": s.per_cpu_s(),
                })
            })
            .collect();
        let results: Vec<serde_json::Value> = self
            .rows()
            .iter()
            .map(|r| {
                serde_json::json!({
                    "suite": r.suite.sdes_name(),
                    "operation": r.op.name(),
                    "relay_best_ops_per_s": r.relay_best,
                    "libsrtp_best_ops_per_s": r.libsrtp_best,
                    "relay_median_ops_per_s": r.relay_median,
                    "libsrtp_median_ops_per_s": r.libsrtp_median,
                    "ratio_best": r.ratio(),
                    "target_met": r.ratio() >= 1.0,
                })
            })
            .collect();
        serde_json::json!({
            "benchmark": "srtp",
            "date": self.date,
            "payload_bytes": PAYLOAD,
            "libsrtp": self.libsrtp,
            "rounds": ROUNDS,
            "samples": samples,
            "results": results,
            "target_met": self.all_met(),
        })
        .to_string()
    }
}
