//! `relay-bench-ng [--json] [--calls N]` (run by `cargo xtask bench ng`):
//! NG control-protocol throughput, relayd against rtpengine, in one run.
//!
//! One call = `offer` + `answer` + `delete`, each waiting for its reply, the
//! way a proxy module drives a relay. Eight client threads run calls back to
//! back (closed loop) against one server at a time: relayd (XDP mode, so every
//! answer writes the flow maps) and Debian's rtpengine (`rtpengine-daemon`,
//! userspace only, `--config-file=none --delete-delay=0 --table=-1`). Each
//! server runs pinned to CPU 1 with two interfaces on veth devices in a
//! network namespace of its own; the clients run on CPU 0. Five rounds per
//! server, alternating; the tables show every round, the median and the best
//! round. The machine is shared (builds of other work run beside), and
//! contention only ever slows a server down, so the best round of each is the
//! closest to its own capacity: the target is judged on those.
//!
//! Prints the tables (or, with `--json`, one JSON object) on stdout, progress
//! on stderr, and writes docs/bench/ng.md. Needs root.

use std::{
    fmt::Write as _,
    net::{SocketAddr, UdpSocket},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use relay_tests::{
    bench_report::{cpu_model, kernel_release, median, pin_current_thread, thousands, utc_minute},
    netns::NetNs,
    ng_peers::rtpengine_args,
    unique_name,
};
use relay_user::ng::bencode::{self, Value};

const USAGE: &str = "usage: relay-bench-ng [--json] [--calls N]\n\
     runs N calls (offer+answer+delete) per round and server (default 20000)";

const CLIENTS: usize = 8;
const ROUNDS: usize = 5;
const RELAYD_NG: &str = "127.0.0.1:2223";
const RTPENGINE_NG: &str = "127.0.0.1:2225";
const SERVER_CPU: usize = 1;
const CLIENT_CPU: usize = 0;
/// Nice value of the servers and the clients: ahead of the builds that share
/// this machine, so they disturb the rounds less (and the same for both
/// servers, whatever their thread count).
const NICE: i32 = -15;

fn main() -> ExitCode {
    let mut json = false;
    let mut calls = 20_000u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--calls" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => calls = n,
                _ => {
                    eprintln!("relay-bench-ng: --calls takes a positive number\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            // `cargo xtask bench ng` passes the benchmark's name.
            "ng" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("relay-bench-ng: unexpected argument {arg:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    match run(json, calls) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-bench-ng: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Relayd,
    Rtpengine,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Relayd => "relayd",
            Server::Rtpengine => "rtpengine",
        }
    }
    fn ng(self) -> SocketAddr {
        match self {
            Server::Relayd => RELAYD_NG,
            Server::Rtpengine => RTPENGINE_NG,
        }
        .parse()
        .expect("constant address")
    }
}

/// One round against one server.
#[derive(Clone, Debug)]
struct Round {
    server: Server,
    calls: u64,
    seconds: f64,
    /// Server CPU time (all threads), seconds.
    cpu_s: f64,
    failures: u64,
    /// Per request, microseconds: p50, p99.
    p50_us: u64,
    p99_us: u64,
}

impl Round {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.seconds
    }
    fn per_core(&self) -> f64 {
        if self.cpu_s > 0.0 {
            self.calls as f64 / self.cpu_s
        } else {
            0.0
        }
    }
}

fn run(json: bool, calls: u64) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("needs root (network namespaces, XDP)");
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        bail!("needs 2 CPUs: one for the server, one for the clients");
    }
    let rtpengine = Path::new("/usr/bin/rtpengine");
    if !rtpengine.exists() {
        bail!("rtpengine is missing: `apt-get install -y rtpengine-daemon`");
    }
    let relayd = relay_tests::bench_build::relayd_binary()?;
    reap_stale();
    pin_current_thread(CLIENT_CPU)?;
    renice()?;

    let net = Net::new()?;
    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        for server in [Server::Relayd, Server::Rtpengine] {
            eprintln!(
                "[round {}/{ROUNDS}] {}: {calls} calls",
                round + 1,
                server.name()
            );
            let mut proc = match server {
                Server::Relayd => net.start_relayd(&relayd)?,
                Server::Rtpengine => net.start_rtpengine(rtpengine)?,
            };
            wait_ping(&net.ns, server.ng(), &mut proc)?;
            let r = load(&net.ns, server, calls, &proc);
            stop(&mut proc.child);
            let r = r?;
            eprintln!(
                "  {:.0} calls/s, {:.0} calls per server CPU-second, p50 {} us, p99 {} us, {} failures",
                r.rate(),
                r.per_core(),
                r.p50_us,
                r.p99_us,
                r.failures
            );
            rounds.push(r);
        }
    }
    let report = Report::new(rounds, calls);
    if json {
        println!("{}", report.json());
    } else {
        print!("{}", report.tables());
    }
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/bench/ng.md");
    std::fs::write(&doc, report.markdown())
        .with_context(|| format!("writing {}", doc.display()))?;
    eprintln!("wrote {}", doc.display());
    Ok(())
}

/// The namespace both servers run in: `in0` (192.0.2.0/24) and `out0`
/// (198.51.100.0/24), veth pairs to a peer namespace that only answers ARP.
/// relayd uses .1 on both, rtpengine .2.
struct Net {
    ns: NetNs,
    _peer: NetNs,
    dir: PathBuf,
    pin: PathBuf,
}

impl Net {
    fn new() -> Result<Self> {
        let ns = NetNs::new("relaybenchng")?;
        let peer = NetNs::new("relaybenchng")?;
        ns.add_veth("in0", "eth0", Some(&peer))?;
        ns.add_veth("out0", "eth1", Some(&peer))?;
        for (n, dev, cidr) in [
            (&ns, "in0", "192.0.2.1/24"),
            (&ns, "in0", "192.0.2.2/24"),
            (&ns, "out0", "198.51.100.1/24"),
            (&ns, "out0", "198.51.100.2/24"),
            (&peer, "eth0", "192.0.2.10/24"),
            (&peer, "eth1", "198.51.100.10/24"),
        ] {
            n.ip(&["addr", "add", cidr, "dev", dev])?;
        }
        let dir = std::env::temp_dir().join(unique_name("relaybenchng"));
        std::fs::create_dir_all(&dir)?;
        let pin = PathBuf::from("/sys/fs/bpf").join(unique_name("relaybenchng"));
        Ok(Self {
            ns,
            _peer: peer,
            dir,
            pin,
        })
    }

    fn start_relayd(&self, bin: &Path) -> Result<Proc> {
        let config = self.dir.join("relay.toml");
        std::fs::write(
            &config,
            format!(
                r#"[dataplane]
mode = "xdp"
attach = "driver"
pin_path = "{pin}"

[control]
socket = "{dir}/relayd.sock"

[ng]
listen = "{RELAYD_NG}"

[media]
max_calls = 100000
max_streams = 100000

[[interface]]
name = "inside"
device = "in0"
address = "192.0.2.1"
ports = "30000-39999"

[[interface]]
name = "outside"
device = "out0"
address = "198.51.100.1"
ports = "40000-49999"
"#,
                pin = self.pin.display(),
                dir = self.dir.display(),
            ),
        )?;
        let mut cmd = self.command(bin);
        cmd.arg("--config").arg(&config).env("RELAY_LOG", "warn");
        Proc::spawn(cmd, &self.dir.join("relayd.log"))
    }

    fn start_rtpengine(&self, bin: &Path) -> Result<Proc> {
        let mut cmd = self.command(bin);
        cmd.args(rtpengine_args(
            "192.0.2.2",
            "198.51.100.2",
            2,
            RTPENGINE_NG,
            &self.dir,
        ));
        Proc::spawn(cmd, &self.dir.join("rtpengine.log"))
    }

    /// `bin` in the namespace (setns before exec, our mount namespace kept),
    /// pinned to the server CPU (its threads inherit the mask).
    fn command(&self, bin: &Path) -> Command {
        let file = std::fs::File::open(self.ns.path());
        let mut cmd = Command::new(bin);
        // SAFETY: setns(2), sched_setaffinity(2) and setpriority(2) are
        // async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let file = file
                    .as_ref()
                    .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                let mut set = nix::sched::CpuSet::new();
                set.set(SERVER_CPU).map_err(std::io::Error::from)?;
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                    .map_err(std::io::Error::from)?;
                renice()
            });
        }
        cmd
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: &Path) -> Result<Self> {
        let file = std::fs::File::create(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        Ok(Self {
            child,
            log: log.into(),
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// utime + stime of the process (all threads), seconds.
    fn cpu_s(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name, which is in parentheses.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // rest[0] is field 3 (state): utime is field 14, stime field 15.
        let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
        ticks as f64 / clock_ticks()
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Removes the pin and scratch directories of runs that were killed (their
/// namespaces are reaped by [`NetNs::new`]).
fn reap_stale() {
    for dir in [PathBuf::from("/sys/fs/bpf"), std::env::temp_dir()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = relay_tests::unique_name_pid("relaybenchng", &name)
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Sets this thread's nice value to [`NICE`] (threads started later inherit it).
fn renice() -> std::io::Result<()> {
    // SAFETY: setpriority has no memory-safety preconditions.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A client socket in the namespace.
fn socket(ns: &NetNs) -> Result<UdpSocket> {
    let s = ns.run(|| UdpSocket::bind("127.0.0.1:0"))??;
    s.set_read_timeout(Some(Duration::from_millis(1000)))?;
    Ok(s)
}

fn wait_ping(ns: &NetNs, server: SocketAddr, proc: &mut Proc) -> Result<()> {
    let s = socket(ns)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 256];
    loop {
        let _ = s.send_to(b"p d7:command4:pinge", server);
        if let Ok((n, _)) = s.recv_from(&mut buf)
            && buf[..n].starts_with(b"p d6:result4:pong")
        {
            return Ok(());
        }
        if let Some(status) = proc.child.try_wait()? {
            bail!("server exited ({status}):\n{}", proc.log());
        }
        if Instant::now() > deadline {
            bail!("no pong from {server} within 20 s:\n{}", proc.log());
        }
    }
}

fn sdp(addr: &str, port: u32) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n"
    )
}

/// The requests of one call, shaped like Kamailio's.
fn call_requests(id: &str, n: u64) -> [Value; 3] {
    let port = 4000 + (n % 20000) as u32 * 2;
    let common = |cmd: &str| -> Vec<(Vec<u8>, Value)> {
        vec![
            (b"supports".to_vec(), Value::list_of_str(["load limit"])),
            (b"call-id".to_vec(), Value::str(id)),
            (
                b"received-from".to_vec(),
                Value::list_of_str(["IP4", "192.0.2.10"]),
            ),
            (b"from-tag".to_vec(), Value::str("from-tag")),
            (b"command".to_vec(), Value::str(cmd)),
        ]
    };
    let flags = |v: &mut Vec<(Vec<u8>, Value)>| {
        v.push((b"flags".to_vec(), Value::list_of_str(["trust-address"])));
        v.push((
            b"replace".to_vec(),
            Value::list_of_str(["origin", "session-connection"]),
        ));
        v.push((b"ICE".to_vec(), Value::str("remove")));
    };
    let mut offer = common("offer");
    offer.push((b"sdp".to_vec(), Value::str(sdp("192.0.2.10", port))));
    offer.push((
        b"direction".to_vec(),
        Value::list_of_str(["inside", "outside"]),
    ));
    flags(&mut offer);
    let mut answer = common("answer");
    answer.push((b"sdp".to_vec(), Value::str(sdp("198.51.100.10", port))));
    answer.push((b"to-tag".to_vec(), Value::str("to-tag")));
    flags(&mut answer);
    let delete = common("delete");
    [Value::Dict(offer), Value::Dict(answer), Value::Dict(delete)]
}

/// Runs `calls` calls over [`CLIENTS`] threads; every request waits for its
/// reply (retransmitted after 1 s, at most 3 times, like the modules).
fn load(ns: &NetNs, server: Server, calls: u64, proc: &Proc) -> Result<Round> {
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let cpu0 = proc.cpu_s();
    let started = Instant::now();
    let mut handles = Vec::new();
    for c in 0..CLIENTS {
        let s = socket(ns)?;
        let (next, failures) = (next.clone(), failures.clone());
        handles.push(std::thread::spawn(move || -> Vec<u32> {
            let mut lat = Vec::new();
            let mut buf = vec![0u8; 65_536];
            let mut seq = 0u64;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= calls {
                    return lat;
                }
                let id = format!("bench-{}-{c}-{n}", std::process::id());
                for req in call_requests(&id, n) {
                    seq += 1;
                    let cookie = format!("{c}_{seq}");
                    let mut packet = format!("{cookie} ").into_bytes();
                    packet.extend(bencode::encode(&req));
                    let t = Instant::now();
                    match exchange(&s, server.ng(), &packet, cookie.as_bytes(), &mut buf) {
                        Some(reply) if reply_ok(reply) => {
                            lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32)
                        }
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    let mut lat: Vec<u32> = Vec::new();
    for h in handles {
        lat.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))?,
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_s = proc.cpu_s() - cpu0;
    lat.sort_unstable();
    let pct = |p: f64| -> u64 {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as u64
    };
    let failures = failures.load(Ordering::Relaxed);
    if failures * 100 > calls * 3 {
        bail!(
            "{}: {failures} of {} requests failed:\n{}",
            server.name(),
            calls * 3,
            proc.log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(Round {
        server,
        calls,
        seconds,
        cpu_s,
        failures,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
    })
}

fn exchange<'a>(
    s: &UdpSocket,
    to: SocketAddr,
    packet: &[u8],
    cookie: &[u8],
    buf: &'a mut [u8],
) -> Option<&'a [u8]> {
    for _ in 0..3 {
        s.send_to(packet, to).ok()?;
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            let Ok((n, _)) = s.recv_from(buf) else {
                break;
            };
            if buf[..n].starts_with(cookie) && buf.get(cookie.len()) == Some(&b' ') {
                return Some(&buf[cookie.len() + 1..n]);
            }
        }
    }
    None
}

fn reply_ok(body: &[u8]) -> bool {
    bencode::decode(body)
        .ok()
        .and_then(|v| v.get("result").and_then(|r| r.as_str().map(str::to_string)))
        .is_some_and(|r| r == "ok")
}

struct Report {
    rounds: Vec<Round>,
    calls: u64,
    date: String,
    rtpengine_version: String,
    kernel: String,
    cpu: String,
}

impl Report {
    fn new(rounds: Vec<Round>, calls: u64) -> Self {
        let date = utc_minute();
        let rtpengine_version = Command::new("/usr/bin/rtpengine")
            .arg("--version")
            .output()
            .map(|o| {
                let s = String::from_utf8_lossy(&o.stdout).to_string()
                    + &String::from_utf8_lossy(&o.stderr);
                s.lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .trim_start_matches("Version:")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        let kernel = kernel_release();
        let cpu = cpu_model();
        Self {
            rounds,
            calls,
            date,
            rtpengine_version,
            kernel,
            cpu,
        }
    }

    fn of(&self, s: Server) -> impl Iterator<Item = &Round> {
        self.rounds.iter().filter(move |r| r.server == s)
    }

    fn median_rate(&self, s: Server) -> f64 {
        median(&self.of(s).map(Round::rate).collect::<Vec<_>>())
    }

    fn median_per_core(&self, s: Server) -> f64 {
        median(&self.of(s).map(Round::per_core).collect::<Vec<_>>())
    }

    fn best_rate(&self, s: Server) -> f64 {
        self.of(s).map(Round::rate).fold(0.0, f64::max)
    }

    fn median_ratio(&self) -> f64 {
        let r = self.median_rate(Server::Rtpengine);
        if r > 0.0 {
            self.median_rate(Server::Relayd) / r
        } else {
            0.0
        }
    }

    /// relayd's best round against rtpengine's best round.
    fn ratio(&self) -> f64 {
        let r = self.best_rate(Server::Rtpengine);
        if r > 0.0 {
            self.best_rate(Server::Relayd) / r
        } else {
            0.0
        }
    }

    fn tables(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| server    | round | calls/s | calls per server CPU-s | server CPU | p50 us | p99 us | failed requests |"
        );
        let _ = writeln!(
            out,
            "| --------- | ----: | ------: | ---------------------: | ---------: | -----: | -----: | --------------: |"
        );
        for s in [Server::Relayd, Server::Rtpengine] {
            for (i, r) in self.of(s).enumerate() {
                let _ = writeln!(
                    out,
                    "| {:<9} | {:>5} | {:>7} | {:>22} | {:>9.0}% | {:>6} | {:>6} | {:>15} |",
                    s.name(),
                    i + 1,
                    thousands(r.rate()),
                    thousands(r.per_core()),
                    100.0 * r.cpu_s / r.seconds,
                    r.p50_us,
                    r.p99_us,
                    r.failures
                );
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| server    | best calls/s | median calls/s | median calls per server CPU-s |"
        );
        let _ = writeln!(
            out,
            "| --------- | -----------: | -------------: | ----------------------------: |"
        );
        for s in [Server::Relayd, Server::Rtpengine] {
            let _ = writeln!(
                out,
                "| {:<9} | {:>12} | {:>14} | {:>29} |",
                s.name(),
                thousands(self.best_rate(s)),
                thousands(self.median_rate(s)),
                thousands(self.median_per_core(s))
            );
        }
        let _ = writeln!(
            out,
            "\nrelayd / rtpengine: best rounds {:.2}x, medians {:.2}x (target: at least 2x, on the best rounds)",
            self.ratio(),
            self.median_ratio()
        );
        out
    }

    fn markdown(&self) -> String {
        let ratio = self.ratio();
        format!(
            "# NG control-protocol benchmark\n\n\
             Written by `cargo xtask bench ng` on {date} (do not edit: the next run replaces this file).\n\n\
             ## What is measured\n\n\
             Calls per second through the NG protocol, one call being `offer` + `answer` + `delete`, \
             each waiting for its reply (as Kamailio's rtpengine module does). {clients} client threads \
             run calls back to back against one server at a time, {calls} calls per round, {rounds} rounds \
             per server, alternating. The machine is shared with other work (compilers run beside the \
             benchmark), and contention only ever slows a server down: the best round of each server is \
             the closest to its capacity, and the target is judged on those. Requests are shaped like Kamailio's (`supports`, `received-from`, \
             `direction`, `flags: [trust-address]`, `replace`, `ICE: remove`; one audio stream).\n\n\
             - relayd: `mode = \"xdp\"` on two veth devices (every answer installs four flow rules in \
             the kernel maps and the userspace forwarder; every delete removes them).\n\
             - rtpengine: Debian's `rtpengine-daemon` {rtp}, userspace only (`--table=-1`, no kernel \
             module here), `--config-file=none --delete-delay=0 --num-threads=2`, two interfaces on the \
             same devices.\n\
             - Each server is pinned to CPU {scpu}, its threads included; the clients run on CPU {ccpu}; \
             servers and clients run at nice {nice}, ahead of other work on the machine. \
             \"calls per server CPU-s\" divides by the CPU time the server process used (user + system, \
             all threads), which removes the clients' share of the machine.\n\n\
             ## Machine\n\n\
             - Kernel: {kernel}\n- CPU: {cpu}\n- CPUs: 2 (shared with other work on this machine: \
             rounds vary)\n\n\
             ## Results\n\n{tables}\n\
             ## Target\n\n\
             | target | this run | |\n|---|---|---|\n\
             | relayd completes at least 2x rtpengine's calls per second (best rounds) | {ratio:.2}x | {met} |\n",
            date = self.date,
            clients = CLIENTS,
            calls = thousands(self.calls as f64),
            rounds = ROUNDS,
            nice = NICE,
            rtp = self.rtpengine_version,
            scpu = SERVER_CPU,
            ccpu = CLIENT_CPU,
            kernel = self.kernel,
            cpu = self.cpu,
            tables = self.tables(),
            met = if ratio >= 2.0 { "met" } else { "not met" },
        )
    }

    fn json(&self) -> String {
        let rounds: Vec<serde_json::Value> = self
            .rounds
            .iter()
            .map(|r| {
                serde_json::json!({
                    "server": r.server.name(),
                    "calls": r.calls,
                    "seconds": r.seconds,
                    "calls_per_s": r.rate(),
                    "server_cpu_s": r.cpu_s,
                    "calls_per_server_cpu_s": r.per_core(),
                    "p50_us": r.p50_us,
                    "p99_us": r.p99_us,
                    "failed_requests": r.failures,
                })
            })
            .collect();
        serde_json::json!({
            "benchmark": "ng",
            "date": self.date,
            "clients": CLIENTS,
            "rtpengine": self.rtpengine_version,
            "rounds": rounds,
            "median_calls_per_s": {
                "relayd": self.median_rate(Server::Relayd),
                "rtpengine": self.median_rate(Server::Rtpengine),
            },
            "median_calls_per_server_cpu_s": {
                "relayd": self.median_per_core(Server::Relayd),
                "rtpengine": self.median_per_core(Server::Rtpengine),
            },
            "best_calls_per_s": {
                "relayd": self.best_rate(Server::Relayd),
                "rtpengine": self.best_rate(Server::Rtpengine),
            },
            "ratio_best": self.ratio(),
            "ratio_median": self.median_ratio(),
            "target_met": self.ratio() >= 2.0,
        })
        .to_string()
    }
}
