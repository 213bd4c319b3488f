//! The nightly toolchain that relay-ebpf builds with: it must be installed, have
//! `rust-src` (build-std rebuilds `core` for bpfel-unknown-none), and be the
//! toolchain relay-ebpf/rust-toolchain.toml actually selects.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::{cmd, ebpf};

/// What the eBPF build's rustc reports about itself.
pub struct Nightly {
    /// e.g. `1.97.0-nightly`
    pub release: String,
    /// e.g. `22.1.4`
    pub llvm_version: String,
    pub llvm_major: u32,
    /// Holds lib/libLLVM*.so, which bpf-linker loads at link time.
    pub sysroot: PathBuf,
}

/// Fails unless rustup lists a toolchain called `nightly` (`nightly-<host>`;
/// dated nightlies such as `nightly-2026-05-19-<host>` do not count, since
/// rust-toolchain.toml asks for plain `nightly`).
pub fn check_installed() -> Result<()> {
    let list = cmd::stdout(Command::new("rustup").args(["toolchain", "list"]))
        .context("cannot list toolchains; is rustup installed and on PATH?")?;
    let found = list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .find(|name| {
            *name == "nightly"
                || name
                    .strip_prefix("nightly-")
                    .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        });
    match found {
        Some(name) => {
            println!("nightly toolchain: present ({name})");
            Ok(())
        }
        None => bail!(
            "the `nightly` toolchain is not installed (relay-ebpf needs it to build for \
             bpfel-unknown-none); install it with `rustup toolchain install nightly \
             --component rust-src` and run this again"
        ),
    }
}

/// Installs the nightly's `rust-src` component when it is missing.
pub fn ensure_rust_src() -> Result<()> {
    let installed = cmd::stdout(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    // rust-src is target independent, so it is listed without a host suffix.
    if installed.lines().any(|line| line.trim() == "rust-src") {
        println!("nightly rust-src: present");
        return Ok(());
    }
    println!("nightly rust-src: missing, installing");
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

/// Asks the rustc that relay-ebpf will use (same directory and environment as
/// the build) for its version, so a stray override is caught before building.
pub fn ebpf_rustc() -> Result<Nightly> {
    let info = cmd::stdout(ebpf::command("rustc").arg("-vV"))
        .context("cannot run rustc in relay-ebpf/")?;
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|value| value.trim().to_string())
            .with_context(|| format!("`rustc -vV` printed no `{name}` line:\n{info}"))
    };
    let release = field("release:")?;
    if !release.contains("nightly") {
        bail!(
            "inside relay-ebpf/ rustc is {release}, not a nightly: something overrides \
             relay-ebpf/rust-toolchain.toml (a `rustup override` for that directory, or \
             RUSTUP_TOOLCHAIN set in a way xtask did not clear)"
        );
    }
    let llvm_version = field("LLVM version:")?;
    let llvm_major = llvm_major(&llvm_version)
        .with_context(|| format!("cannot read the LLVM major version from `{llvm_version}`"))?;
    let sysroot = cmd::stdout(ebpf::command("rustc").args(["--print", "sysroot"]))?;
    let nightly = Nightly {
        release,
        llvm_version,
        llvm_major,
        sysroot: PathBuf::from(sysroot.trim()),
    };
    println!(
        "relay-ebpf builds with rustc {} (LLVM {})",
        nightly.release, nightly.llvm_version
    );
    Ok(nightly)
}

/// `22.1.4` or `22.1.4-rust-1.97.0-nightly` -> 22.
pub fn llvm_major(version: &str) -> Option<u32> {
    version.split('.').next()?.trim().parse().ok()
}
