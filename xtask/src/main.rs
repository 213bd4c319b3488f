//! `cargo xtask`: the project's build, test, demo and benchmark entry points.
//!
//! The XDP program lives in relay-ebpf/, its own workspace built with the
//! nightly toolchain and bpf-linker; the user-space crates embed the objects it
//! produces. These tasks check and install that toolchain, build the objects,
//! and only then build and run the user-space side, so one command gives a
//! fresh, consistent result.

mod bpf_linker;
mod cmd;
mod ebpf;
mod host;
mod toolchain;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(about = "Build, test, demo and benchmark tasks for relay")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check (and install what is missing of) the nightly toolchain, rust-src
    /// and bpf-linker, then build the XDP objects in relay-ebpf/.
    BuildEbpf,
    /// Build everything and run all tests: unit tests in parallel, then the
    /// privileged integration tests (relay-tests) one at a time.
    Test {
        /// Passed to both test runs after their `--`, e.g. a test name filter:
        /// `cargo xtask test -- flow_table`.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Build the XDP objects, then run a benchmark (the relay-bench binary).
    Bench {
        /// What to benchmark.
        #[arg(value_enum)]
        what: Benchmark,
        /// Print results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build the XDP objects, then run the demo (the relay-demo binary).
    Demo,
}

#[derive(Clone, Copy, ValueEnum)]
enum Benchmark {
    /// XDP forwarding rate and latency through the relay.
    Dataplane,
    /// NG control protocol: offer+answer+delete per second, relayd against
    /// rtpengine (the relay-bench-ng binary).
    Ng,
    /// SIP call setup rate through the B2BUA with sipp and a Kamailio TLS
    /// service (the relay-bench-sip binary).
    Sip,
    /// SRTP protect/unprotect per second on one core for every suite, relay
    /// against libsrtp (the relay-bench-srtp binary); then SRTP forwarding,
    /// transcrypt and re-key, relayd against rtpengine (relay-bench-srtp-fwd).
    Srtp,
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::BuildEbpf => build_ebpf(),
        Task::Test { args } => test(&args),
        Task::Bench { what, json } => bench(what, json),
        Task::Demo => demo(),
    };
    // Printed here rather than by returning the error from main: with
    // RUST_BACKTRACE set (as on these machines) anyhow would append a backtrace
    // of xtask itself, which only hides the message that matters.
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("\nerror: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn build_ebpf() -> Result<()> {
    cmd::header("eBPF toolchain: nightly, rust-src, bpf-linker");
    toolchain::check_installed()?;
    toolchain::ensure_rust_src()?;
    bpf_linker::ensure_installed()?;
    let nightly = toolchain::ebpf_rustc()?;
    bpf_linker::check_llvm(&nightly)?;

    cmd::header("building relay-ebpf (release, bpfel-unknown-none)");
    ebpf::build()?;
    Ok(())
}

fn test(args: &[OsString]) -> Result<()> {
    build_ebpf()?;

    cmd::header("host: tools and bpffs for the integration tests");
    host::ensure_tools()?;
    host::ensure_bpffs()?;

    // Build every target first so relay-user's build.rs embeds the objects just
    // built, and so a compile error is reported once, before any test runs.
    cmd::header("cargo build --workspace --all-targets");
    cmd::run(cargo().args(["build", "--workspace", "--all-targets"]))?;

    // Both test runs happen even if the first fails, so one run shows all
    // failures; the task still fails at the end.
    let mut failed = Vec::new();
    cmd::header("unit tests (parallel)");
    if let Err(err) = cmd::run(
        cargo()
            .args(["test", "--workspace", "--exclude", "relay-tests", "--"])
            .args(args),
    ) {
        println!("{err:#}");
        failed.push("unit tests");
    }
    // The integration tests share kernel state (namespaces, XDP attachments,
    // pinned maps), so they run one at a time.
    cmd::header("integration tests (relay-tests, one at a time)");
    if let Err(err) = cmd::run(
        cargo()
            .args(["test", "-p", "relay-tests", "--", "--test-threads=1"])
            .args(args),
    ) {
        println!("{err:#}");
        failed.push("integration tests");
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    cmd::header("all tests passed");
    Ok(())
}

fn bench(what: Benchmark, json: bool) -> Result<()> {
    // The benchmark embeds the XDP object, so build it fresh first.
    build_ebpf()?;
    let what = what
        .to_possible_value()
        .expect("no benchmark is hidden")
        .get_name()
        .to_string();
    cmd::header(&format!("benchmark: {what}"));
    let bin = match what.as_str() {
        "ng" => "relay-bench-ng",
        "sip" => "relay-bench-sip",
        "srtp" => "relay-bench-srtp",
        _ => "relay-bench",
    };
    if what == "srtp" {
        // libsrtp is its reference; relay-tests links it.
        host::ensure_tools()?;
    }
    if what == "sip" {
        // sipp and Kamailio with TLS are its peers.
        host::ensure_tools()?;
        host::ensure_bpffs()?;
    }
    run_bench_bin(bin, &[&what], json)?;
    if what == "srtp" {
        // The forwarding half: relayd's transcrypt and re-key against
        // rtpengine through the namespace topology (root).
        cmd::header("benchmark: srtp forwarding");
        host::ensure_bpffs()?;
        run_bench_bin("relay-bench-srtp-fwd", &[], json)?;
    }
    Ok(())
}

/// `cargo run --release` of one of relay-tests' benchmark binaries.
fn run_bench_bin(bin: &str, args: &[&str], json: bool) -> Result<()> {
    let mut run = cargo();
    run.args(["run", "--release", "-p", "relay-tests", "--bin", bin, "--"])
        .args(args);
    if json {
        run.arg("--json");
    }
    cmd::run(&mut run)
}

fn demo() -> Result<()> {
    build_ebpf()?;
    cmd::header("host: sipp, Kamailio with TLS, iproute2, ethtool, openssl; bpffs");
    host::ensure_tools()?;
    host::ensure_bpffs()?;
    // The demo starts relayd and relayctl from its own target directory.
    cmd::header("cargo build --release (relayd, relayctl, the demo)");
    cmd::run(cargo().args([
        "build",
        "--release",
        "-p",
        "relay-user",
        "-p",
        "relay-tests",
        "--bins",
    ]))?;
    cmd::header("demo");
    cmd::run(cargo().args([
        "run",
        "--release",
        "-p",
        "relay-tests",
        "--bin",
        "relay-demo",
    ]))
}

/// The cargo that runs xtask (same toolchain), started in the workspace root.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

pub fn workspace_root() -> PathBuf {
    // xtask/ sits directly under the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}
