//! `relay-bench dataplane [--json]` (run by `cargo xtask bench dataplane`):
//! the data-plane benchmark.
//!
//! 1. Packets per second forwarded by the XDP program and by the userspace
//!    forwarder through three network namespaces with a real relayd, for 1 and
//!    10,000 rules, with the relay core's busy fraction and the relay's own CPU
//!    time (relay work pinned to one core, generator and sink to the other):
//!    at full load, and for the userspace forwarder also paced at rising rates
//!    (see `relay_bench/forward.rs`).
//! 2. The XDP program's cost per packet from BPF_PROG_TEST_RUN with 1, 1,000,
//!    100,000 and 1,000,000 installed rules.
//!
//! Prints the tables (or, with `--json`, only one JSON object) on stdout,
//! progress on stderr, and writes docs/bench/dataplane.md. Needs root.

#[path = "relay_bench/cost.rs"]
mod cost;
#[path = "relay_bench/forward.rs"]
mod forward;
#[path = "relay_bench/progs.rs"]
mod progs;
#[path = "relay_bench/report.rs"]
mod report;
#[path = "relay_bench/sys.rs"]
mod sys;
#[path = "relay_bench/topo.rs"]
mod topo;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use relay_tests::frames::{UdpFrame, rtp};

use forward::{Cpus, Mode};

const USAGE: &str = "usage: relay-bench dataplane [--json] [--only forward|cost] [--case xdp|userspace:RULES]...\n\
     --only runs one part, --case only the given forwarding cases (for working on the\n\
     benchmark); with either, docs/bench/dataplane.md is left alone";

/// Rule counts of part 1 and part 2.
const FORWARD_RULES: [u32; 2] = [1, 10_000];
const COST_RULES: [u32; 4] = [1, 1_000, 100_000, 1_000_000];

fn main() -> ExitCode {
    let mut what = None;
    let mut json = false;
    let mut only = None;
    let mut cases = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--case" => match args.next().as_deref().and_then(parse_case) {
                Some(case) => cases.push(case),
                None => {
                    eprintln!("relay-bench: --case takes xdp:N or userspace:N\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "--only" => match args.next().as_deref() {
                Some("forward") => only = Some(Part::Forward),
                Some("cost") => only = Some(Part::Cost),
                other => {
                    eprintln!("relay-bench: --only takes forward or cost, not {other:?}\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "dataplane" if what.is_none() => what = Some(arg),
            _ => {
                eprintln!("relay-bench: unexpected argument {arg:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if what.is_none() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    match dataplane(json, only, &cases) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Forward,
    Cost,
}

fn parse_case(text: &str) -> Option<(Mode, u32)> {
    let (mode, rules) = text.split_once(':')?;
    let mode = match mode {
        "xdp" => Mode::Xdp,
        "userspace" => Mode::Userspace,
        _ => return None,
    };
    Some((
        mode,
        rules.parse().ok().filter(|n| (1..=10_000).contains(n))?,
    ))
}

fn dataplane(json: bool, only: Option<Part>, cases: &[(Mode, u32)]) -> Result<()> {
    let all: Vec<(Mode, u32)> = FORWARD_RULES
        .iter()
        .flat_map(|&n| [(Mode::Xdp, n), (Mode::Userspace, n)])
        .collect();
    let partial = only.is_some() || !cases.is_empty();
    let cases = if cases.is_empty() { &all[..] } else { cases };
    if !nix::unistd::geteuid().is_root() {
        bail!("needs root (BPF, network namespaces, CPU pinning of kernel threads)");
    }
    let machine = sys::Machine::probe();
    if machine.nproc < 2 {
        bail!("needs at least 2 CPUs: one for the relay, one for generator and sink");
    }
    let cpus = Cpus { load: 0, relay: 1 };
    let date = report::utc(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    // Built before pinning ourselves (the compiler would inherit one CPU).
    let relayd = relay_tests::bench_build::relayd_binary()?;
    reap_stale();
    let fd_limit = topo::raise_fd_limit();
    // This thread and every thread it starts (the generator) stay off the
    // relay core, at the same high priority as the relay.
    sys::pin(0, cpus.load)?;
    sys::renice(0, sys::NICE)?;

    let mut results = Vec::new();
    let mut frame_len = 0;
    if only != Some(Part::Cost) {
        let bench = topo::Bench::new()?;
        let generator = progs::Gen::load()?;
        let mut f = UdpFrame::new(
            sa(topo::CALLER, topo::PEER_BASE)?,
            sa(topo::RELAY_IN, topo::LOCAL_BASE)?,
            rtp(0x5eed_0001, 1, 12 + 160),
        );
        f.src_mac = bench.caller_eth.mac;
        f.dst_mac = bench.relay_in.mac;
        f.udp_checksum = false;
        let frame = f.build();
        frame_len = frame.len();
        for &(mode, rules) in cases {
            let case = forward::run_case(
                &bench,
                &generator,
                &relayd,
                &frame,
                mode,
                rules,
                topo::out_slots(rules, fd_limit),
                cpus,
            )
            .with_context(|| format!("{} with {rules} rules", mode.name()))?;
            results.push(case);
        }
    }

    let costs = if only == Some(Part::Forward) {
        cost::Costs {
            cases: Vec::new(),
            empty_ns: 0.0,
        }
    } else {
        cost::run(&COST_RULES).context("per-packet cost")?
    };
    for c in &costs.cases {
        eprintln!(
            "[per-packet cost] {} rules: {:.0} ns/packet",
            report::thousands(f64::from(c.rules)),
            c.ns_per_packet
        );
    }

    let report = report::Report {
        date,
        machine,
        cpus,
        frame_len,
        fd_limit,
        cases: results,
        costs,
    };
    if json {
        println!("{}", report.json());
    } else {
        println!("{}", report.text());
    }
    if !partial {
        let md = markdown_path();
        if let Some(dir) = md.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&md, report.markdown())
            .with_context(|| format!("write {}", md.display()))?;
        eprintln!("wrote {}", md.display());
    }
    Ok(())
}

fn sa(ip: &str, port: u16) -> Result<SocketAddr> {
    Ok(format!("{ip}:{port}").parse()?)
}

fn markdown_path() -> PathBuf {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests
        .parent()
        .unwrap_or(tests)
        .join("docs/bench/dataplane.md")
}

/// Removes what killed benchmark runs left behind (their destructors never
/// ran): relayd pin directories in /sys/fs/bpf and working directories in
/// the temp dir, named `relaybench-<pid>-<n>` after a pid that is gone. (Their
/// namespaces go with the first `NetNs::new("relaybench")`.)
fn reap_stale() {
    for dir in [PathBuf::from("/sys/fs/bpf"), std::env::temp_dir()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = relay_tests::unique_name_pid("relaybench", &name)
                && pid != std::process::id()
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                eprintln!("removing stale {}", entry.path().display());
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}
