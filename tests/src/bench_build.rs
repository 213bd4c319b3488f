//! Building the relayd a benchmark runs: `cargo run -p relay-tests --bin X`
//! builds only the benchmark, so each benchmark builds relayd next to itself
//! first, the same way (one place, so the nested build never differs).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// Gives `cmd` the environment this process was launched with, less what
/// `cargo run` added for it: the variables cargo sets for a binary it runs
/// take the values of the process that started `cargo run` (cargo replaces
/// itself with the binary, so that is our parent), or go when it had none.
///
/// Some build scripts (ring's) rerun when such a variable changes, and all
/// that depends on them rebuilds: a nested `cargo build` must see what the
/// outer one saw, or it rebuilds half the workspace, and the next outer build
/// again.
fn as_launched(cmd: &mut Command) {
    let parent: Option<Vec<(String, String)>> =
        std::fs::read(format!("/proc/{}/environ", nix::unistd::getppid()))
            .ok()
            .map(|raw| {
                raw.split(|b| *b == 0)
                    .filter_map(|kv| {
                        let kv = String::from_utf8_lossy(kv);
                        let (k, v) = kv.split_once('=')?;
                        Some((k.to_string(), v.to_string()))
                    })
                    .collect()
            });
    let set_by_cargo_run = |key: &str| {
        key.starts_with("CARGO_PKG_")
            || matches!(
                key,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "OUT_DIR"
                    | "LD_LIBRARY_PATH"
            )
    };
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if !set_by_cargo_run(key) {
            continue;
        }
        let launched = parent
            .as_ref()
            .and_then(|p| p.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()));
        match launched {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
}

/// relayd next to this executable, built first (`cargo run -p relay-tests
/// --bin relay-bench` builds only the benchmark). `RELAY_BENCH_RELAYD`
/// names another binary instead.
pub fn relayd_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("RELAY_BENCH_RELAYD") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    let release = dir.file_name().is_some_and(|n| n == "release");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("tests/ has no parent")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    as_launched(&mut cmd);
    // relay-tests selected too, so the dependencies get the same features as
    // in the benchmark's own build and relay-user's library is shared.
    cmd.current_dir(workspace).args([
        "build",
        "-p",
        "relay-tests",
        "-p",
        "relay-user",
        "--bin",
        "relayd",
    ]);
    if release {
        cmd.arg("--release");
    }
    eprintln!(
        "building relayd: cargo {}",
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    // Cargo's output goes to stderr; keep stdout for the results.
    let status = cmd
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .context("running cargo build for relayd")?;
    if !status.success() {
        bail!("building relayd failed ({status})");
    }
    let path = dir.join("relayd");
    if !path.exists() {
        bail!("{} is missing after building it", path.display());
    }
    Ok(path)
}
