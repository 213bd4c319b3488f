//! What the privileged integration tests need from the machine: the `ip` tool
//! (iproute2, for network namespaces and veths), `ethtool` (checksum offload
//! off on test veths), libsrtp2 (SRTP interop) and bpffs at /sys/fs/bpf (for
//! pinned maps). Installed or mounted only when running as root.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::cmd;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Debian tools the tests run, as (command, probe argument, package).
const TOOLS: &[(&str, &str, &str)] = &[
    ("ip", "-V", "iproute2"),
    ("ethtool", "--version", "ethtool"),
    ("kamailio", "-v", "kamailio"),
    // Kamailio's TLS module: the mutual-TLS service in the SIP tests.
    (
        "ls",
        "/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so",
        "kamailio-tls-modules",
    ),
    ("openssl", "version", "openssl"),
    // sipp exits non-zero even for -v; its G.711 sample (read by the NG
    // tests) shows the package is there.
    ("ls", "/usr/share/sip-tester/g711a.pcap", "sip-tester"),
    // libsrtp, the reference SRTP implementation: relay-tests links it for
    // the SRTP interop tests and `bench srtp`.
    ("ls", "/usr/include/srtp2/srtp.h", "libsrtp2-dev"),
];

/// Checks each tool runs; as root, installs the missing ones with apt-get.
pub fn ensure_tools() -> Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, probe, package)| {
            let present = Command::new(tool)
                .arg(probe)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if present {
                println!("{tool} ({package}): present");
            }
            !present
        })
        .map(|(_, _, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages needed by the tests: {}; install them with \
             `sudo apt-get install -y {}`",
            missing.join(", "),
            missing.join(" ")
        );
    }
    println!("installing missing packages: {}", missing.join(", "));
    // The package lists may be absent on a fresh machine: update them once first.
    cmd::run(apt_get().arg("update").arg("-q"))?;
    cmd::run(apt_get().args(["install", "-y", "-q"]).args(&missing))
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

const BPFFS: &str = "/sys/fs/bpf";

/// Mounts bpffs at /sys/fs/bpf when running as root and it is not mounted yet;
/// without root it only warns, since the tests report what they cannot do.
pub fn ensure_bpffs() -> Result<()> {
    if bpffs_mounted()? {
        println!("bpffs: mounted at {BPFFS}");
        return Ok(());
    }
    if !is_root() {
        println!(
            "warning: bpffs is not mounted at {BPFFS} and we are not root; tests that pin maps need it"
        );
        return Ok(());
    }
    println!("bpffs: not mounted, mounting at {BPFFS}");
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

fn bpffs_mounted() -> Result<bool> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("cannot read /proc/self/mounts")?;
    // Fields: device, mount point, type, options, ...
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    }))
}
