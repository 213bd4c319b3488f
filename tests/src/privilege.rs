//! Privileged tests skip politely on a developer's unprivileged `cargo test`
//! and fail loudly in CI, where `RELAY_REQUIRE_ROOT=1` is set.

/// True when the test may go on. When not root: prints why the test is skipped
/// and returns false, or panics if `RELAY_REQUIRE_ROOT=1` (a CI run that must
/// not silently skip the kernel tests).
pub fn require_root() -> bool {
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    if std::env::var("RELAY_REQUIRE_ROOT").is_ok_and(|v| v == "1") {
        panic!("{test}: RELAY_REQUIRE_ROOT=1 but running as uid {euid}, not root");
    }
    eprintln!(
        "skipped {test}: needs root (BPF, network namespaces); \
         run as root, and set RELAY_REQUIRE_ROOT=1 to make skipping an error"
    );
    false
}
