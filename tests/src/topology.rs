//! The relay's test topology: four network namespaces joined by veth pairs,
//! with a real `relayd` running in the relay namespace.
//!
//! ```text
//!   caller 192.0.2.10 eth0 ---- in0  192.0.2.1    relay    out0 198.51.100.1 ---- eth0 198.51.100.10 callee
//!                                    edge0 203.0.113.1
//!                                      |
//!                             eth0 203.0.113.66 attacker
//! ```
//!
//! The relay's XDP program is attached to in0, out0 and edge0 (all three are
//! configured interfaces). The caller's and callee's ends carry the pass-only
//! XDP program, without which veth does not deliver redirected frames.
//! Everything is removed on drop: relayd is stopped by its pid, the pinned
//! maps are deleted, the namespaces go.

use std::{
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};
use relay_user::control::{Client, Request};

use crate::netns::NetNs;

pub const CALLER: &str = "192.0.2.10";
pub const RELAY_IN: &str = "192.0.2.1";
pub const RELAY_OUT: &str = "198.51.100.1";
pub const CALLEE: &str = "198.51.100.10";
pub const RELAY_EDGE: &str = "203.0.113.1";
pub const ATTACKER: &str = "203.0.113.66";

/// How [`Topology::start_relayd_opts`] configures relayd.
#[derive(Clone, Debug)]
pub struct RelaydOpts {
    /// "xdp" or "userspace".
    pub mode: String,
    /// Capacity of the flow maps.
    pub max_flows: u32,
    /// Serve the NG protocol on this UDP address (in the relay namespace).
    pub ng_listen: Option<SocketAddr>,
    /// Raw TOML appended to the configuration (e.g. `[sip]` and trunks).
    pub extra: String,
    /// Media ports per interface: inside from 30000, outside from 40000,
    /// edge from 50000 (at most 10,000 each).
    pub ports: u16,
}

impl Default for RelaydOpts {
    fn default() -> Self {
        Self {
            mode: "xdp".into(),
            max_flows: 16384,
            ng_listen: None,
            extra: String::new(),
            ports: 1000,
        }
    }
}

pub struct Topology {
    pub caller: NetNs,
    pub relay: NetNs,
    pub callee: NetNs,
    pub attacker: NetNs,
    dir: PathBuf,
    pin_path: PathBuf,
    relayd: Option<Child>,
    // Keeps the pass programs attached to the caller's and callee's veth ends.
    _pass: Vec<Ebpf>,
}

impl Topology {
    pub fn new() -> Result<Self> {
        let caller = NetNs::new("relaye2e")?;
        let relay = NetNs::new("relaye2e")?;
        let callee = NetNs::new("relaye2e")?;
        let attacker = NetNs::new("relaye2e")?;
        relay.add_veth("in0", "eth0", Some(&caller))?;
        relay.add_veth("out0", "eth0", Some(&callee))?;
        relay.add_veth("edge0", "eth0", Some(&attacker))?;
        for (ns, dev, cidr) in [
            (&relay, "in0", "192.0.2.1/24"),
            (&relay, "out0", "198.51.100.1/24"),
            (&relay, "edge0", "203.0.113.1/24"),
            (&caller, "eth0", "192.0.2.10/24"),
            (&callee, "eth0", "198.51.100.10/24"),
            (&attacker, "eth0", "203.0.113.66/24"),
        ] {
            ns.ip(&["addr", "add", cidr, "dev", dev])?;
        }
        for (ns, gw) in [
            (&caller, RELAY_IN),
            (&callee, RELAY_OUT),
            (&attacker, RELAY_EDGE),
        ] {
            ns.ip(&["route", "add", "default", "via", gw])?;
            // veth offloads the UDP checksum: a locally sent frame carries only
            // the pseudo-header sum, which XDP cannot know to be partial. Real
            // NICs receive full checksums; make the senders here compute them.
            ns.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
        }
        let dir = std::env::temp_dir().join(crate::unique_name("relaye2e"));
        std::fs::create_dir_all(&dir)?;
        let pin_path = PathBuf::from("/sys/fs/bpf").join(crate::unique_name("relaye2e"));
        let mut pass = Vec::new();
        for ns in [&caller, &callee] {
            pass.push(ns.run(|| attach_pass("eth0"))??);
        }
        Ok(Self {
            caller,
            relay,
            callee,
            attacker,
            dir,
            pin_path,
            relayd: None,
            _pass: pass,
        })
    }

    /// A private directory for this topology's files, removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("relayd.sock")
    }

    pub fn pin_path(&self) -> &Path {
        &self.pin_path
    }

    /// Writes the configuration and starts relayd in the relay namespace in
    /// `mode` ("xdp" or "userspace"); returns when its control socket answers.
    pub fn start_relayd(&mut self, mode: &str) -> Result<()> {
        self.start_relayd_with(mode, 16384)
    }

    /// As [`Self::start_relayd`], with the flow maps sized to `max_flows`.
    pub fn start_relayd_with(&mut self, mode: &str, max_flows: u32) -> Result<()> {
        self.start_relayd_opts(&RelaydOpts {
            mode: mode.into(),
            max_flows,
            ..RelaydOpts::default()
        })
    }

    /// As [`Self::start_relayd`], with every option.
    pub fn start_relayd_opts(&mut self, opts: &RelaydOpts) -> Result<()> {
        let RelaydOpts {
            mode,
            max_flows,
            ng_listen,
            extra,
            ports,
        } = opts;
        let span = (*ports).clamp(2, 10_000) - 1;
        let ng = ng_listen
            .map(|a| format!("\n[ng]\nlisten = \"{a}\"\n"))
            .unwrap_or_default();
        let config = self.dir.join("relay.toml");
        std::fs::write(
            &config,
            format!(
                r#"[dataplane]
mode = "{mode}"
attach = "driver"
pin_path = "{pin}"
max_flows = {max_flows}

[control]
socket = "{sock}"

[[interface]]
name = "inside"
device = "in0"
address = "{RELAY_IN}"
ports = "30000-{in_max}"

[[interface]]
name = "outside"
device = "out0"
address = "{RELAY_OUT}"
ports = "40000-{out_max}"

[[interface]]
name = "edge"
device = "edge0"
address = "{RELAY_EDGE}"
ports = "50000-{edge_max}"
{ng}
{extra}"#,
                pin = self.pin_path.display(),
                sock = self.control_socket().display(),
                in_max = 30000 + span,
                out_max = 40000 + span,
                edge_max = 50000 + span,
            ),
        )?;
        let log = std::fs::File::create(self.dir.join("relayd.log"))?;
        let child = in_netns(&self.relay, &binary("relayd")?)?
            .arg("--config")
            .arg(&config)
            .env("RELAY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting relayd")?;
        self.relayd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = Client::connect(&self.control_socket())
                && c.call(&Request::Version).is_ok()
            {
                return Ok(());
            }
            if let Some(child) = &mut self.relayd
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "relayd exited ({status}) during start:\n{}",
                    self.relayd_log()
                );
            }
            if Instant::now() > deadline {
                bail!("relayd did not answer within 20 s:\n{}", self.relayd_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops relayd with SIGTERM (SIGKILL after 10 s) and returns its exit status.
    pub fn stop_relayd(&mut self) -> Result<std::process::ExitStatus> {
        let Some(mut child) = self.relayd.take() else {
            bail!("relayd is not running");
        };
        stop(&mut child)
    }

    /// relayd's process id, while it runs.
    pub fn relayd_pid(&self) -> Option<u32> {
        self.relayd.as_ref().map(Child::id)
    }

    pub fn relayd_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("relayd.log")).unwrap_or_default()
    }

    /// A control-socket call.
    pub fn call(&self, request: &Request) -> Result<serde_json::Value> {
        Ok(Client::connect(&self.control_socket())?.call(request)?)
    }

    /// Runs relayctl (as an operator would) against this relayd.
    pub fn relayctl(&self, args: &[&str]) -> Result<std::process::Output> {
        self.relayctl_command(args)?
            .output()
            .context("running relayctl")
    }

    /// Runs relayctl and returns its stdout; panics (for tests) with its
    /// stderr and the relayd log when it fails.
    pub fn relayctl_ok(&self, args: &[&str]) -> String {
        let out = self.relayctl(args).expect("run relayctl");
        assert!(
            out.status.success(),
            "relayctl {args:?} failed: {}\nrelayd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.relayd_log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The relayctl command [`Self::relayctl`] runs, for callers that set an
    /// environment, a user or their own way of waiting.
    pub fn relayctl_command(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = Command::new(binary("relayctl")?);
        cmd.arg("--socket")
            .arg(self.control_socket())
            .arg("--pin-path")
            .arg(&self.pin_path)
            .args(args)
            .env_remove("COLUMNS")
            .stdin(Stdio::null());
        Ok(cmd)
    }

    /// A UDP socket bound in `ns` to `addr`.
    pub fn socket(ns: &NetNs, addr: &str) -> Result<UdpSocket> {
        let addr: SocketAddr = addr.parse()?;
        let s = ns.run(move || UdpSocket::bind(addr))??;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        Ok(s)
    }

    /// A UDP socket in `ns` bound to an address that is not the namespace's
    /// own (IP_FREEBIND): how an attacker spoofs a source.
    pub fn spoofing_socket(ns: &NetNs, addr: &str) -> Result<UdpSocket> {
        let addr: SocketAddr = addr.parse()?;
        ns.run(move || -> Result<UdpSocket> {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
            // IP_TRANSPARENT lets the route lookup accept a foreign source.
            s.set_ip_transparent_v4(true)?;
            s.set_freebind_v4(true)?;
            s.bind(&addr.into())?;
            Ok(s.into())
        })?
    }

    /// `Udp` InCsumErrors and InErrors from the namespace's /proc/net/snmp.
    pub fn udp_errors(ns: &NetNs) -> Result<(u64, u64)> {
        let snmp = ns.exec("cat", &["/proc/net/snmp"])?;
        let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
        let (Some(head), Some(vals)) = (lines.next(), lines.next()) else {
            bail!("no Udp lines in /proc/net/snmp");
        };
        let get = |name: &str| -> Result<u64> {
            let i = head
                .split_whitespace()
                .position(|h| h == name)
                .with_context(|| format!("no {name}"))?;
            Ok(vals
                .split_whitespace()
                .nth(i)
                .context("short line")?
                .parse()?)
        };
        Ok((get("InCsumErrors")?, get("InErrors")?))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(mut child) = self.relayd.take() {
            let _ = stop(&mut child);
        }
        let _ = std::fs::remove_dir_all(&self.pin_path);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stop(child: &mut Child) -> Result<std::process::ExitStatus> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Ok(child.wait()?);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A command that runs in `ns`'s network namespace but, unlike `ip netns
/// exec`, in our mount namespace: `ip netns exec` remounts /sys, which would
/// give relayd a private bpffs whose pins nobody else sees.
fn in_netns(ns: &NetNs, program: &Path) -> Result<Command> {
    use std::os::unix::process::CommandExt;
    let file = std::fs::File::open(ns.path())?;
    let mut cmd = Command::new(program);
    // SAFETY: setns(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    Ok(cmd)
}

/// Attaches the pass-only XDP program to `dev` in the current namespace.
fn attach_pass(dev: &str) -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(relay_user::ebpf::pass_object()?)?;
    let prog: &mut Xdp = ebpf
        .program_mut(relay_user::ebpf::PASS_PROGRAM)
        .context("pass program missing")?
        .try_into()?;
    prog.load()?;
    prog.attach(dev, XdpMode::Driver)
        .with_context(|| format!("attaching the pass program to {dev}"))?;
    Ok(ebpf)
}

/// A binary of this workspace built next to the running executable: test
/// executables live in `target/PROFILE/deps`, the demo and benchmarks in
/// `target/PROFILE` (`cargo xtask test` and `cargo xtask demo` build them first).
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    let candidates = [Some(dir), dir.parent()];
    for d in candidates.into_iter().flatten() {
        let path = d.join(name);
        if path.exists() {
            return Ok(path);
        }
    }
    bail!(
        "{name} is missing next to {}: build the workspace first (`cargo build --workspace`, which `cargo xtask test` does)",
        exe.display()
    )
}
