//! Network namespaces for tests: created with unique names, always removed.
//!
//! [`NetNs`] wraps `ip netns add`/`del` (so `ip netns exec`, `ip -n` and every
//! other tool see the namespace by name), and runs code inside it: a closure on
//! a thread that joined the namespace with `setns(2)` ([`NetNs::run`],
//! [`NetNs::spawn`]), or a command under `ip netns exec` ([`NetNs::exec`]).
//! Dropping the guard deletes the namespace, also when the test panicked;
//! namespaces of test processes that were killed are reaped by the next
//! [`NetNs::new`] with the same prefix.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

/// Where `ip netns add` bind-mounts namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// A network namespace named `{prefix}-{pid}-{n}`, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

/// An interface as seen inside a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

impl NetNs {
    /// Creates a namespace named [`crate::unique_name`]`(prefix)` with its
    /// loopback up. First removes namespaces with the same prefix whose
    /// creating process no longer exists.
    pub fn new(prefix: &str) -> Result<Self> {
        reap_stale(prefix);
        let name = crate::unique_name(prefix);
        run_command(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file (`setns(2)` takes its descriptor).
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(&self.name)
    }

    /// Runs `ip -n <ns> <args>` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run_command(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs `program args` inside the namespace (`ip netns exec`) and returns
    /// its stdout; fails unless it exits successfully.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        run_command(self.command(program).args(args))
    }

    /// A `Command` that runs `program` inside the namespace, for callers that
    /// need to spawn, pipe or wait themselves.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Sets a sysctl of this namespace (e.g. `net.ipv4.conf.all.forwarding`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Turns on IPv4 and IPv6 forwarding (`bpf_fib_lookup` in an XDP program
    /// returns FWD_DISABLED without it).
    pub fn enable_forwarding(&self) -> Result<()> {
        self.sysctl("net.ipv4.conf.all.forwarding", "1")?;
        self.sysctl("net.ipv6.conf.all.forwarding", "1")
    }

    /// Creates a veth pair `name` (here) <-> `peer` (in `peer_ns`, or here
    /// when None) and brings both ends up.
    pub fn add_veth(&self, name: &str, peer: &str, peer_ns: Option<&NetNs>) -> Result<()> {
        let mut args = vec!["link", "add", name, "type", "veth", "peer", "name", peer];
        if let Some(other) = peer_ns {
            args.extend(["netns", other.name()]);
        }
        self.ip(&args)?;
        self.ip(&["link", "set", name, "up"])?;
        peer_ns.unwrap_or(self).ip(&["link", "set", peer, "up"])?;
        Ok(())
    }

    /// Ifindex and MAC address of interface `ifname`.
    pub fn link(&self, ifname: &str) -> Result<Link> {
        let out = self.ip(&["-j", "link", "show", "dev", ifname])?;
        let json: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("parse `ip -j link`: {out}"))?;
        let entry = json
            .get(0)
            .with_context(|| format!("no link {ifname}: {out}"))?;
        let ifindex = entry["ifindex"]
            .as_u64()
            .with_context(|| format!("no ifindex: {out}"))? as u32;
        let mac = parse_mac(entry["address"].as_str().unwrap_or_default())
            .with_context(|| format!("no MAC address: {out}"))?;
        Ok(Link { ifindex, mac })
    }

    /// Runs `f` on a new thread that has joined this namespace and waits for
    /// it. A panic in `f` is resumed on the caller's thread, so assertions
    /// inside fail the test as usual.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let ns = self.open()?;
        thread::scope(|s| {
            let handle = thread::Builder::new()
                .name(format!("netns {}", self.name))
                .spawn_scoped(s, move || -> Result<T> {
                    setns(&ns, CloneFlags::CLONE_NEWNET).context("setns(CLONE_NEWNET)")?;
                    drop(ns);
                    Ok(f())
                })
                .context("spawn namespace thread")?;
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts `f` on a thread inside this namespace and returns at once (for
    /// servers and peers that run while the test goes on). The thread keeps
    /// the namespace alive until it ends: join it before the guard drops.
    pub fn spawn<T, F>(&self, f: F) -> Result<thread::JoinHandle<Result<T>>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let ns = self.open()?;
        thread::Builder::new()
            .name(format!("netns {}", self.name))
            .spawn(move || -> Result<T> {
                setns(&ns, CloneFlags::CLONE_NEWNET).context("setns(CLONE_NEWNET)")?;
                drop(ns);
                Ok(f())
            })
            .context("spawn namespace thread")
    }

    fn open(&self) -> Result<File> {
        let path = self.path();
        File::open(&path).with_context(|| format!("open {}", path.display()))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace also deletes every interface in it (veth
        // peers elsewhere go with their pair).
        if let Err(e) = run_command(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("cannot delete network namespace {}: {e:#}", self.name);
        }
    }
}

/// Deletes namespaces named `{prefix}-{pid}-{n}` whose process is gone.
fn reap_stale(prefix: &str) {
    let Ok(entries) = fs::read_dir(NETNS_RUN_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = crate::unique_name_pid(prefix, &name) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing stale network namespace {name}");
            let _ = run_command(Command::new("ip").args(["netns", "del", &name]));
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff` (for `ip neigh add ... lladdr`).
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs a command to completion and returns its stdout; the error names the
/// command and carries its stderr.
pub fn run_command(cmd: &mut Command) -> Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {line}"))?;
    if !out.status.success() {
        bail!(
            "{line} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let mac = [0x02, 0x00, 0x5e, 0x10, 0xab, 0xff];
        assert_eq!(parse_mac(&format_mac(&mac)), Some(mac));
        assert_eq!(parse_mac("02:00:5e:10:ab"), None);
        assert_eq!(parse_mac("02:00:5e:10:ab:ff:00"), None);
        assert_eq!(parse_mac("zz:00:5e:10:ab:ff"), None);
    }
}
