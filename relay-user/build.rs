//! Embeds the XDP objects built by `cargo xtask build-ebpf`.
//!
//! The eBPF crate needs the nightly toolchain and bpf-linker, so it is built by
//! the xtask (which checks and installs those) rather than from here. When the
//! objects are missing an empty placeholder is embedded so the daemon and the
//! unit tests still build; loading then fails with a message that says to run
//! `cargo xtask build-ebpf`.
use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let objdir = manifest.join("../relay-ebpf/target/bpfel-unknown-none/release");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    for name in ["relay-ebpf", "relay-pass", "relay-gen", "relay-sink"] {
        let src = objdir.join(name);
        println!("cargo:rerun-if-changed={}", src.display());
        let bytes = fs::read(&src).unwrap_or_default();
        fs::write(out.join(format!("{name}.o")), bytes).expect("write OUT_DIR");
    }
}
