//! Building the XDP objects in relay-ebpf/, a separate workspace that needs the
//! nightly toolchain (selected by its rust-toolchain.toml) and bpf-linker.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cmd, workspace_root};

/// The binaries of relay-ebpf; relay-user/build.rs embeds exactly these.
pub const OBJECTS: &[&str] = &["relay-ebpf", "relay-pass", "relay-gen", "relay-sink"];

pub fn crate_dir() -> PathBuf {
    workspace_root().join("relay-ebpf")
}

pub fn object_dir() -> PathBuf {
    crate_dir().join("target/bpfel-unknown-none/release")
}

/// A command run inside relay-ebpf/ as if from a clean shell, so that rustup
/// picks the toolchain from relay-ebpf/rust-toolchain.toml. `cargo xtask` runs
/// under the stable cargo, which exports `RUSTUP_TOOLCHAIN` (it beats
/// rust-toolchain.toml), `CARGO`, `RUSTC`, target dir and flags; any of those
/// would make the child build with the wrong compiler or in the wrong place.
pub fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(crate_dir());
    cmd::scrub_cargo_env(&mut cmd);
    cmd.env_remove("RUSTUP_TOOLCHAIN");
    // rustup and cargo prepend the stable toolchain's lib/ (with its libLLVM)
    // and our target/ dirs to LD_LIBRARY_PATH. bpf-linker loads the first
    // libLLVM it finds on that path, so drop those entries; rustup puts the
    // nightly's lib/ there itself when it starts the nightly cargo.
    match filtered_library_path() {
        Some(path) => cmd.env("LD_LIBRARY_PATH", path),
        None => cmd.env_remove("LD_LIBRARY_PATH"),
    };
    cmd
}

fn filtered_library_path() -> Option<OsString> {
    let current = env::var_os("LD_LIBRARY_PATH")?;
    let toolchains = rustup_home().join("toolchains");
    let target = workspace_root().join("target");
    let kept: Vec<PathBuf> = env::split_paths(&current)
        .filter(|dir| !dir.starts_with(&toolchains) && !dir.starts_with(&target))
        .collect();
    if kept.is_empty() {
        return None;
    }
    env::join_paths(kept).ok()
}

fn rustup_home() -> PathBuf {
    env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".rustup")))
        .unwrap_or_else(|| PathBuf::from("/root/.rustup"))
}

/// `cargo build --release` in relay-ebpf/, then checks that every object the
/// user-space build embeds exists and is a non-empty ELF file.
pub fn build() -> Result<Vec<PathBuf>> {
    cmd::run(command("cargo").args(["build", "--release"])).context(
        "building relay-ebpf failed; see the compiler output above \
         (prerequisites were checked, so this is most likely an error in relay-ebpf/src)",
    )?;
    let mut objects = Vec::new();
    for name in OBJECTS {
        let path = object_dir().join(name);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "relay-ebpf built, but {} is missing (is `{name}` still a binary of relay-ebpf?)",
                path.display()
            )
        })?;
        if !bytes.starts_with(b"\x7fELF") {
            bail!("{} is not an ELF object", path.display());
        }
        println!("built {} ({} bytes)", path.display(), bytes.len());
        objects.push(path);
    }
    Ok(objects)
}
