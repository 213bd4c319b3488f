//! `cargo xtask bench sip [--json]`: call setup rate through the B2BUA.
//!
//! sipp (the PBX) places calls over UDP through relayd to the TLS-only
//! service (Kamailio with mutual TLS in front of a sipp user agent), each
//! call set up with media rules installed, then torn down at once (BYE, rules
//! removed). For a series of offered rates it reports the calls per second
//! completed, failed calls, relayd's CPU use and calls per relay core, and
//! the time from INVITE to media rules installed (relayd's own histogram).
//! Every run is bounded in calls and time. Results go to docs/bench/sip.md.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use relay_tests::{
    sip_peers::{
        Hangup, Pki, Uac, Uas, relay_sip_config, start_kamailio_tls, start_pbx, start_service,
    },
    topology::{RelaydOpts, Topology},
};
use relay_user::{control::Request, sip::server::SipStatus};
use serde::Serialize;

/// Offered rates, calls per second; each run offers RUN_SECONDS of calls.
const RATES: [u32; 4] = [100, 250, 500, 1000];
const RUN_SECONDS: u32 = 4;

#[derive(Serialize)]
struct Run {
    offered_cps: u32,
    calls: u32,
    successful: u64,
    failed: u64,
    completed_cps: f64,
    relayd_cpu: f64,
    calls_per_relay_core: f64,
    invite_to_rules_p50_us: Option<u64>,
    invite_to_rules_p99_us: Option<u64>,
}

fn main() -> ExitCode {
    let json = std::env::args().any(|a| a == "--json");
    match run(json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench sip failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(json: bool) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark builds network namespaces: run it as root");
    }
    // Topology starts the relayd found next to this executable.
    relay_tests::bench_build::relayd_binary()?;
    let mut t = Topology::new()?;
    let dir = t.dir().join("bench-sip");
    std::fs::create_dir_all(&dir)?;
    let pki = Pki::create(&dir.join("pki"))?;
    let kamailio = start_kamailio_tls(&t.callee, &pki, "service", &dir)?;
    t.start_relayd_opts(&RelaydOpts {
        // The per-source INVITE limit would refuse a benchmark's burst.
        extra: relay_sip_config(&pki, 30)
            .replace("invite_rate_per_source = 100", "invite_rate_per_source = 0"),
        max_flows: 65536,
        // Room for the calls in flight at the highest rate.
        ports: 10_000,
        ..RelaydOpts::default()
    })?;
    let pid = t.relayd_pid().context("relayd pid")?;
    let mut runs = Vec::new();
    for (i, rate) in RATES.into_iter().enumerate() {
        let calls = rate * RUN_SECONDS;
        let before: SipStatus = serde_json::from_value(t.call(&Request::Sip)?)
            .ok()
            .unwrap_or_default();
        let mut service = start_service(
            &t.callee,
            &dir,
            &format!("uas{i}"),
            Uas::Accept {
                hangup: Hangup::Awaits,
                hold: false,
                audio_ms: 0,
            },
            calls,
        )?;
        let stats = dir.join(format!("uac{i}.csv"));
        let cpu0 = cpu_seconds(pid)?;
        let started = Instant::now();
        let mut pbx = start_pbx(
            &t.caller,
            &dir,
            &format!("uac{i}"),
            Uac::Call {
                hangup: Hangup::Sends,
                hold: false,
                audio_ms: 0,
            },
            "u1",
            &[
                "-r",
                &rate.to_string(),
                "-m",
                &calls.to_string(),
                "-l",
                "5000",
                "-timeout",
                "60s",
                "-trace_stat",
                "-stf",
                stats.to_str().context("path")?,
                "-fd",
                "1",
            ],
        )?;
        let _ = pbx.wait(Duration::from_secs(90));
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid)? - cpu0;
        service.stop();
        let (successful, failed) =
            sipp_counts(&std::fs::read_to_string(&stats).unwrap_or_default());
        let after: SipStatus = serde_json::from_value(t.call(&Request::Sip)?)
            .ok()
            .unwrap_or_default();
        let mut hist = after.stats.clone();
        for (a, b) in hist
            .invite_to_rules_us
            .iter_mut()
            .zip(before.stats.invite_to_rules_us)
        {
            *a -= b;
        }
        let completed_cps = successful as f64 / elapsed;
        let relayd_cpu = cpu / elapsed;
        runs.push(Run {
            offered_cps: rate,
            calls,
            successful,
            failed: failed + (calls as u64).saturating_sub(successful + failed),
            completed_cps,
            relayd_cpu,
            calls_per_relay_core: if relayd_cpu > 0.0 {
                completed_cps / relayd_cpu
            } else {
                0.0
            },
            invite_to_rules_p50_us: hist.setup_quantile_us(0.5),
            invite_to_rules_p99_us: hist.setup_quantile_us(0.99),
        });
        // Let the last calls' rules go before the next run.
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(kamailio);
    let report = report(&runs);
    std::fs::write(workspace().join("docs/bench/sip.md"), &report)?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({ "benchmark": "sip", "runs": runs }))?
        );
    } else {
        print!("{report}");
    }
    Ok(())
}

/// Cumulative SuccessfulCall and FailedCall from sipp's last statistics line.
fn sipp_counts(csv: &str) -> (u64, u64) {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return (0, 0);
    };
    let Some(last) = lines.next_back() else {
        return (0, 0);
    };
    let names: Vec<&str> = header.split(';').collect();
    let values: Vec<&str> = last.split(';').collect();
    let get = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| values.get(i))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (get("SuccessfulCall(C)"), get("FailedCall(C)"))
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

fn workspace() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn report(runs: &[Run]) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut s = format!(
        "# SIP benchmark\n\nWritten by `cargo xtask bench sip` (the next run replaces this file; `--json` prints the same figures).\n\n\
         Machine: kernel {}, {} CPUs. sipp (UDP) -> relayd B2BUA -> Kamailio (mutual TLS) -> sipp UAS, all on this machine:\n\
         the peers share the two cores with relayd, so the completed rate is a lower bound of relayd's; calls per relay core\n\
         divides it by relayd's own CPU use. Each call: INVITE, 100, 180, 200 with SDP (media rules installed in the kernel),\n\
         ACK, BYE, 200 (rules removed). INVITE-to-rules is measured by relayd from the caller's INVITE to the rules being\n\
         installed at the callee's 200 (log2 buckets: the figure is the bucket's upper bound).\n\n\
         Target: at least 1,000 calls per second on one core with no failed call.\n\n\
         | offered cps | calls | successful | failed | completed cps | relayd CPU | calls per relay core | INVITE-to-rules p50 | p99 |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        kernel.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for r in runs {
        s += &format!(
            "| {} | {} | {} | {} | {:.0} | {:.0}% | {:.0} | {} | {} |\n",
            r.offered_cps,
            r.calls,
            r.successful,
            r.failed,
            r.completed_cps,
            r.relayd_cpu * 100.0,
            r.calls_per_relay_core,
            r.invite_to_rules_p50_us
                .map_or("-".into(), |u| format!("{:.1} ms", u as f64 / 1000.0)),
            r.invite_to_rules_p99_us
                .map_or("-".into(), |u| format!("{:.1} ms", u as f64 / 1000.0)),
        );
    }
    let best = runs
        .iter()
        .filter(|r| r.failed == 0)
        .map(|r| r.calls_per_relay_core)
        .fold(0.0, f64::max);
    s += &format!(
        "\nBest calls per relay core with no failed call: {best:.0} ({}).\n",
        if best >= 1000.0 {
            "target met"
        } else {
            "target not met"
        }
    );
    s
}
