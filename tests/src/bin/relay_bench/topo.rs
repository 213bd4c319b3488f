//! The benchmark's namespaces and its relayd.
//!
//! ```text
//!   caller 192.0.2.10 eth0 ---- in0 192.0.2.1   relay   out0 198.51.100.1 ---- eth0 198.51.100.10 callee
//!   (relay-gen, test run)       (relay XDP, or relay-pass in userspace mode)   (relay-sink)
//! ```
//!
//! Like `relay_tests::topology::Topology`, but with a sink instead of the
//! pass program on the callee, media port ranges wide enough for 10,000
//! rules, permanent neighbour entries (the sink drops ARP requests, so no
//! neighbour would resolve), and relayd pinned to the relay core.

use std::{
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, CpuSet, sched_setaffinity, setns};
use relay_tests::netns::{Link, NetNs, format_mac};
use relay_user::{
    control::{Client, Request},
    rule::Rule,
};

use crate::progs::Sink;

pub const CALLER: &str = "192.0.2.10";
pub const RELAY_IN: &str = "192.0.2.1";
pub const RELAY_OUT: &str = "198.51.100.1";
pub const CALLEE: &str = "198.51.100.10";

/// Rule i: local RELAY_IN:(LOCAL_BASE+2i), peer CALLER:(PEER_BASE+2i),
/// out_src RELAY_OUT:(OUT_BASE+2i), dst CALLEE:(DST_BASE+2i).
pub const LOCAL_BASE: u16 = 30000;
pub const PEER_BASE: u16 = 4000;
pub const OUT_BASE: u16 = 40000;
pub const DST_BASE: u16 = 5000;
/// Media ports on both relay addresses: room for 10,000 rules either way.
const PORTS: &str = "30000-59999";

pub struct Bench {
    // Fields drop in order: the sink before the namespaces.
    pub sink: Sink,
    pub caller: NetNs,
    pub relay: NetNs,
    pub callee: NetNs,
    pub caller_eth: Link,
    pub relay_in: Link,
    dir: PathBuf,
}

impl Bench {
    pub fn new() -> Result<Self> {
        let caller = NetNs::new("relaybench")?;
        let relay = NetNs::new("relaybench")?;
        let callee = NetNs::new("relaybench")?;
        relay.add_veth("in0", "eth0", Some(&caller))?;
        relay.add_veth("out0", "eth0", Some(&callee))?;
        for (ns, dev, cidr) in [
            (&relay, "in0", "192.0.2.1/24"),
            (&relay, "out0", "198.51.100.1/24"),
            (&caller, "eth0", "192.0.2.10/24"),
            (&callee, "eth0", "198.51.100.10/24"),
        ] {
            ns.ip(&["addr", "add", cidr, "dev", dev])?;
        }
        caller.ip(&["route", "add", "default", "via", RELAY_IN])?;
        callee.ip(&["route", "add", "default", "via", RELAY_OUT])?;
        let caller_eth = caller.link("eth0")?;
        let callee_eth = callee.link("eth0")?;
        for (ip, mac, dev) in [
            (CALLER, caller_eth.mac, "in0"),
            (CALLEE, callee_eth.mac, "out0"),
        ] {
            relay.ip(&[
                "neigh",
                "replace",
                ip,
                "lladdr",
                &format_mac(&mac),
                "nud",
                "permanent",
                "dev",
                dev,
            ])?;
        }
        let relay_in = relay.link("in0")?;
        let sink = callee.run(|| Sink::attach("eth0"))??;
        let dir = std::env::temp_dir().join(relay_tests::unique_name("relaybench"));
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            sink,
            caller,
            relay,
            callee,
            caller_eth,
            relay_in,
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A relayd in the relay namespace, pinned to one CPU at nice
/// [`crate::sys::NICE`]; stopped (by pid) and its pinned maps removed on drop.
pub struct Relayd {
    child: Option<Child>,
    socket: PathBuf,
    pin_path: PathBuf,
    log: PathBuf,
}

impl Relayd {
    /// Starts `binary` with `mode` ("xdp" or "userspace") and returns when its
    /// control socket answers.
    pub fn start(bench: &Bench, binary: &Path, mode: &str, cpu: usize) -> Result<Self> {
        let name = relay_tests::unique_name("relaybench");
        let socket = bench.dir().join(format!("{name}.sock"));
        let pin_path = PathBuf::from("/sys/fs/bpf").join(&name);
        let log = bench.dir().join(format!("{name}.log"));
        let config = bench.dir().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"[dataplane]
mode = "{mode}"
attach = "driver"
pin_path = "{pin}"
max_flows = 16384

[control]
socket = "{sock}"

[[interface]]
name = "inside"
device = "in0"
address = "{RELAY_IN}"
ports = "{PORTS}"

[[interface]]
name = "outside"
device = "out0"
address = "{RELAY_OUT}"
ports = "{PORTS}"
"#,
                pin = pin_path.display(),
                sock = socket.display(),
            ),
        )?;
        let logfile = std::fs::File::create(&log)?;
        let ns = std::fs::File::open(bench.relay.path())?;
        let mut cpus = CpuSet::new();
        cpus.set(cpu)?;
        let mut cmd = Command::new(binary);
        cmd.arg("--config")
            .arg(&config)
            .env("RELAY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(logfile.try_clone()?)
            .stderr(logfile);
        // SAFETY: setns, sched_setaffinity, setpriority and prctl are plain system
        // calls (async-signal-safe); nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // The relay namespace, but our mount namespace (unlike `ip
                // netns exec`), so the maps are pinned where we can see them.
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus)
                    .map_err(std::io::Error::from)?;
                if libc::setpriority(libc::PRIO_PROCESS, 0, crate::sys::NICE) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // If the benchmark dies without running its destructors,
                // relayd goes too.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut relayd = Self {
            child: Some(child),
            socket,
            pin_path,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = Client::connect(&relayd.socket)
                && c.call(&Request::Version).is_ok()
            {
                return Ok(relayd);
            }
            if let Some(child) = &mut relayd.child
                && let Some(status) = child.try_wait()?
            {
                relayd.child = None;
                bail!("relayd exited ({status}) during start:\n{}", relayd.log());
            }
            if Instant::now() > deadline {
                bail!("relayd did not answer within 20 s:\n{}", relayd.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn client(&self) -> Result<Client> {
        Ok(Client::connect(&self.socket)?)
    }

    /// Installs rules 0..n over one control connection; see [`rule`] for
    /// `out_slots`.
    pub fn add_rules(&self, n: u32, out_slots: u32) -> Result<()> {
        let mut client = self.client()?;
        for i in 0..n {
            let rule = rule(i, out_slots)?;
            client
                .call(&Request::AddRule { rule })
                .with_context(|| format!("adding rule {i}"))?;
        }
        Ok(())
    }

    /// The global counters (the control socket's `counters` answer).
    pub fn counters(&self) -> Result<serde_json::Value> {
        Ok(self.client()?.call(&Request::Counters)?)
    }

    /// Stops relayd: SIGTERM, SIGKILL after 10 s.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("relayd exited with {status}:\n{}", self.log());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("relayd ignored SIGTERM for 10 s; killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Relayd {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("relayd: {e:#}");
        }
        let _ = std::fs::remove_dir_all(&self.pin_path);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Rule i of the benchmark (strict source, forward path, no rate limit):
/// local RELAY_IN:(30000+2i) from CALLER:(4000+2i), out from
/// RELAY_OUT:(40000+2j) to CALLEE:(5000+2i), where j = i mod `out_slots`
/// (j = i when every rule can have its own outgoing endpoint; see
/// [`out_slots`]).
pub fn rule(i: u32, out_slots: u32) -> Result<Rule> {
    let at = |base: u16, i: u32| -> Result<u16> {
        u16::try_from(u32::from(base) + 2 * i).context("rule index beyond the port space")
    };
    let port = |base: u16| at(base, i);
    let out_port = at(OUT_BASE, i % out_slots.max(1))?;
    let sa = |ip: &str, port: u16| -> Result<SocketAddr> { Ok(format!("{ip}:{port}").parse()?) };
    // Built from JSON so that fields added to `Rule` with defaults keep working.
    let rule = serde_json::json!({
        "local": sa(RELAY_IN, port(LOCAL_BASE)?)?,
        "policy": "strict",
        "peer": sa(CALLER, port(PEER_BASE)?)?,
        "out_src": sa(RELAY_OUT, out_port)?,
        "dst": sa(CALLEE, port(DST_BASE)?)?,
        "path": "forward",
    });
    Ok(serde_json::from_value(rule)?)
}

/// Raises this process's open-file limit (relayd inherits it) as far as
/// allowed: to 65,536, or, without CAP_SYS_RESOURCE, the soft limit to the
/// hard one. Returns the limit.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        let want = libc::rlimit {
            rlim_cur: 65_536,
            rlim_max: 65_536,
        };
        if lim.rlim_max < want.rlim_max && libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
            return want.rlim_cur;
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            let _ = libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

/// Descriptors relayd needs besides its sockets (stdio, runtime, control
/// socket, BPF maps, programs and links), with room to spare.
const FD_MARGIN: u64 = 128;

/// How many distinct outgoing endpoints `rules` rules may use. relayd holds a
/// socket on every relay endpoint a rule uses, two per rule here; when the
/// open-file limit `fd_limit` cannot cover that, the last rules share their
/// outgoing endpoint with earlier ones (rule i leaves from the endpoint of
/// rule i mod slots). That changes nothing per packet: each rule still has
/// its own receiving socket, and a send is a send.
pub fn out_slots(rules: u32, fd_limit: u64) -> u32 {
    let room = fd_limit.saturating_sub(FD_MARGIN + u64::from(rules));
    u32::try_from(room.min(u64::from(rules)))
        .unwrap_or(rules)
        .max(1)
}
