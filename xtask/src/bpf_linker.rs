//! bpf-linker: installed at the pinned version, and built for the same LLVM
//! major version as the nightly rustc.
//!
//! bpf-linker 0.10.0 (default features) carries no LLVM of its own: it is
//! compiled against one LLVM C API version (cargo features `llvm-20`..`llvm-22`)
//! and at link time loads the first `libLLVM*` it finds on `LD_LIBRARY_PATH`,
//! which rustup points at the nightly toolchain's lib/. Its `--version` does not
//! say which LLVM it was built for, so that is read from cargo's record of the
//! install (the features used, and the crate's default features).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cmd, toolchain::Nightly};

/// The version the DESIGN notes found to work with the machine's nightly
/// (LLVM 22); newer releases need a system LLVM that Debian 12 lacks.
pub const VERSION: &str = "0.10.0";

/// Default LLVM of releases we know, for when cargo's registry sources (which
/// hold the crate's default features) have been cleaned up since the install.
const KNOWN_DEFAULT_LLVM: &[(&str, u32)] = &[("0.10.0", 22)];

/// Installs bpf-linker `VERSION` when `bpf-linker --version` reports anything else.
pub fn ensure_installed() -> Result<()> {
    let found = installed_version();
    if found.as_deref() == Some(VERSION) {
        println!("bpf-linker {VERSION}: present ({})", describe_path());
        return Ok(());
    }
    match &found {
        Some(other) => println!("bpf-linker: found {other}, need {VERSION}; installing"),
        None => println!("bpf-linker: not found, installing {VERSION} (takes about a minute)"),
    }
    // Built with the toolchain running xtask (RUSTUP_TOOLCHAIN is kept); run
    // outside the workspace so no project configuration applies to it.
    let mut install = Command::new("cargo");
    cmd::scrub_cargo_env(&mut install)
        .current_dir(env::temp_dir())
        .args(["install", &format!("bpf-linker@{VERSION}"), "--locked"]);
    if found.is_some() {
        install.arg("--force");
    }
    cmd::run(&mut install).context("installing bpf-linker failed")?;
    match installed_version() {
        Some(v) if v == VERSION => {
            println!("bpf-linker {VERSION}: installed ({})", describe_path());
            Ok(())
        }
        other => bail!(
            "after installing bpf-linker {VERSION}, `bpf-linker --version` reports {}: \
             put {} on PATH, ahead of any other bpf-linker",
            other.as_deref().unwrap_or("nothing"),
            cargo_home().join("bin").display()
        ),
    }
}

/// The version from `bpf-linker --version` (`bpf-linker 0.10.0`), if it runs.
fn installed_version() -> Option<String> {
    let out = cmd::stdout(Command::new("bpf-linker").arg("--version")).ok()?;
    out.split_whitespace().nth(1).map(str::to_string)
}

/// Fails when bpf-linker was built for another LLVM major version than the
/// nightly's; only warns when that cannot be determined. Then checks that
/// bpf-linker really loads the nightly's libLLVM.
pub fn check_llvm(nightly: &Nightly) -> Result<()> {
    match built_for_llvm() {
        Ok(Some((major, source))) if major == nightly.llvm_major => {
            println!("bpf-linker is built for LLVM {major} ({source}): matches the nightly");
        }
        Ok(Some((major, source))) => bail!(
            "bpf-linker is built for LLVM {major} ({source}), but the nightly rustc uses \
             LLVM {} ({}); they must match, because bpf-linker links with the nightly's \
             libLLVM. Either rebuild bpf-linker for LLVM {}: `cargo install \
             bpf-linker@{VERSION} --locked --force --no-default-features --features \
             llvm-{},rust-llvm-{}` (0.10.0 supports LLVM 20 to 22), or install a nightly \
             whose `rustc +nightly -vV` reports LLVM {major}",
            nightly.llvm_major,
            nightly.release,
            nightly.llvm_major,
            nightly.llvm_major,
            nightly.llvm_major,
        ),
        Ok(None) => println!(
            "warning: cannot tell which LLVM bpf-linker was built for (not installed by \
             cargo into {}); if linking fails, reinstall it with `cargo install \
             bpf-linker@{VERSION} --locked --force`",
            cargo_home().display()
        ),
        Err(err) => println!("warning: cannot tell which LLVM bpf-linker was built for: {err:#}"),
    }
    probe_loaded_llvm(nightly);
    Ok(())
}

/// LLVM major version bpf-linker was compiled for, with where that came from.
/// `None` when the bpf-linker on PATH is not one cargo installed here.
fn built_for_llvm() -> Result<Option<(u32, String)>> {
    let cargo_bin = cargo_home().join("bin/bpf-linker");
    let on_path = which("bpf-linker").context("bpf-linker is not on PATH")?;
    if canonical(&on_path) != canonical(&cargo_bin) {
        return Ok(None);
    }
    let record_path = cargo_home().join(".crates2.json");
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&record_path)
            .with_context(|| format!("cannot read {}", record_path.display()))?,
    )
    .with_context(|| format!("cannot parse {}", record_path.display()))?;
    // Keys look like "bpf-linker 0.10.0 (registry+https://...)".
    let Some((key, install)) = record["installs"].as_object().and_then(|installs| {
        installs
            .iter()
            .find(|(key, _)| key.starts_with("bpf-linker "))
    }) else {
        return Ok(None);
    };
    let version = key.split_whitespace().nth(1).unwrap_or_default();
    let features: Vec<&str> = install["features"]
        .as_array()
        .map(|list| list.iter().filter_map(|f| f.as_str()).collect())
        .unwrap_or_default();
    if let Some(major) = llvm_feature(features.iter().copied()) {
        return Ok(Some((
            major,
            format!("installed with feature llvm-{major}"),
        )));
    }
    if install["no_default_features"].as_bool() == Some(true) {
        return Ok(None);
    }
    if let Some(major) = default_llvm_from_sources(version) {
        return Ok(Some((
            major,
            format!("default feature of bpf-linker {version}"),
        )));
    }
    Ok(KNOWN_DEFAULT_LLVM
        .iter()
        .find(|(known, _)| *known == version)
        .map(|(_, major)| (*major, format!("default of bpf-linker {version}"))))
}

/// The `llvm-N` (or `rust-llvm-N`) feature among `features`.
fn llvm_feature<'a>(features: impl IntoIterator<Item = &'a str>) -> Option<u32> {
    features.into_iter().find_map(|feature| {
        let feature = feature.strip_prefix("rust-").unwrap_or(feature);
        feature.strip_prefix("llvm-")?.parse().ok()
    })
}

/// Reads `[features] default` of the crate sources cargo unpacked for the install.
fn default_llvm_from_sources(version: &str) -> Option<u32> {
    let registries = std::fs::read_dir(cargo_home().join("registry/src")).ok()?;
    registries.flatten().find_map(|registry| {
        let manifest = registry
            .path()
            .join(format!("bpf-linker-{version}/Cargo.toml"));
        let table: toml::Table = std::fs::read_to_string(manifest).ok()?.parse().ok()?;
        let defaults = table.get("features")?.get("default")?.as_array()?;
        llvm_feature(defaults.iter().filter_map(|f| f.as_str()))
    })
}

/// Runs bpf-linker the way rustc will (nightly lib/ first on `LD_LIBRARY_PATH`)
/// and lets LLVM's own `--version` option report the library it loaded. Only
/// informs: a failure here is a warning, the real link decides.
fn probe_loaded_llvm(nightly: &Nightly) {
    let mut library_path = vec![nightly.sysroot.join("lib")];
    if let Some(current) = env::var_os("LD_LIBRARY_PATH") {
        library_path.extend(env::split_paths(&current));
    }
    let output = env::temp_dir().join(format!("xtask-bpf-linker-probe-{}.o", std::process::id()));
    let mut probe = Command::new("bpf-linker");
    probe
        .args(["--llvm-args=--version", "-o"])
        .arg(&output)
        .arg("/dev/null");
    if let Ok(path) = env::join_paths(library_path) {
        probe.env("LD_LIBRARY_PATH", path);
    }
    let result = probe.output();
    let _ = std::fs::remove_file(&output);
    let loaded = result.ok().and_then(|out| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|line| {
                line.trim()
                    .strip_prefix("LLVM version ")
                    .map(str::to_string)
            })
    });
    match loaded {
        Some(version) if crate::toolchain::llvm_major(&version) == Some(nightly.llvm_major) => {
            println!("bpf-linker loads LLVM {version} from the nightly toolchain");
        }
        Some(version) => println!(
            "warning: with {}/lib first on LD_LIBRARY_PATH, bpf-linker loaded LLVM {version}, \
             not the nightly's {}",
            nightly.sysroot.display(),
            nightly.llvm_version
        ),
        None => println!(
            "warning: could not make bpf-linker report the LLVM it loads from {}/lib",
            nightly.sysroot.display()
        ),
    }
}

fn describe_path() -> String {
    which("bpf-linker").map_or_else(|| "not on PATH".into(), |p| p.display().to_string())
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// First executable called `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| {
            path.metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}
