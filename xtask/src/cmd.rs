//! Running child processes: every command is echoed before it runs so a CI log
//! shows exactly what was done, and a failure names the command that failed.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The command as a shell-like line (program and arguments; the environment is
/// left out because it is mostly inherited).
pub fn display(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` with inherited stdio; fails unless it exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout; fails unless it exits successfully.
/// Used for probes (`--version`, `list`), so the command is not echoed.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A short header before each step, so a long log can be skimmed.
pub fn header(text: &str) {
    println!("\n==> {text}");
}

/// Variables that a parent `cargo run` (or the user) sets and that would steer a
/// child cargo away from its own configuration: which rustc and flags to use,
/// where to put artifacts, and the parent package's metadata. Removing them lets
/// the child behave as if started from a clean shell.
const OUTER_CARGO_VARS: &[&str] = &[
    "CARGO",
    "RUSTC",
    "RUSTDOC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_RUSTC",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_MAKEFLAGS",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_RUSTC_CURRENT_DIR",
];

/// Removes the parent cargo's build variables from `cmd`'s environment (see
/// `OUTER_CARGO_VARS`). `RUSTUP_TOOLCHAIN` is left alone: callers that need a
/// different toolchain remove it themselves.
pub fn scrub_cargo_env(cmd: &mut Command) -> &mut Command {
    for var in OUTER_CARGO_VARS {
        cmd.env_remove(var);
    }
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CARGO_PKG_") {
            cmd.env_remove(key);
        }
    }
    cmd
}
