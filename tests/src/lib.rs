//! Helpers for relay's privileged integration tests.
//!
//! - [`privilege`]: skip or fail when not root ([`require_root`]).
//! - [`netns`]: network namespaces that are always removed, veth pairs, running
//!   a closure or a command inside a namespace.
//! - [`bpffs`]: a private bpffs mount for the pinned maps of one loaded object.
//! - [`relay_xdp`]: the real XDP program loaded from `relay_user::ebpf`, its
//!   maps, and `BPF_PROG_TEST_RUN`.
//! - [`frames`]: Ethernet frames built and checked with `etherparse`, an
//!   implementation independent of the code under test.
//! - [`libsrtp`]: a minimal binding to libsrtp 2, the reference SRTP
//!   implementation, for interop tests and the SRTP benchmark.
//! - [`bench_report`]: the date, machine, number formatting, statistics and
//!   CPU pinning the benchmark binaries share.
//! - [`clock`]: CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
//! - [`ng_peers`]: Kamailio, sipp, a second relayd and an NG client for the
//!   NG protocol tests.

pub mod bench_build;
pub mod bench_report;
pub mod bpffs;
pub mod clock;
pub mod frames;
pub mod libsrtp;
pub mod netns;
pub mod ng_peers;
pub mod privilege;
pub mod relay_xdp;
pub mod sip_peers;
pub mod topology;

pub use privilege::require_root;

use std::sync::atomic::{AtomicU32, Ordering};

/// A name no other test process and no other call in this process uses:
/// `{prefix}-{pid}-{n}`. Kernel objects named this way (namespaces, bpffs
/// mounts) can be told apart from other runs' and reaped when their process
/// is gone (see [`netns::NetNs::new`]).
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// The (c=, m=) endpoint of the first audio stream of an SDP (IPv4): where a
/// test sends the media of a call the relay answered.
pub fn sdp_media_endpoint(sdp: &str) -> std::net::SocketAddr {
    let addr = sdp
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .expect("c= line")
        .trim();
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split_whitespace().next())
        .expect("m= line");
    format!("{addr}:{port}")
        .parse()
        .expect("c= and m= make an endpoint")
}

/// The `a=crypto` lines of an SDP, parsed (panics on one that does not
/// parse): the SDES keys its writer sends with.
pub fn sdp_crypto(sdp: &str) -> Vec<relay_user::srtp::sdes::CryptoAttribute> {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=crypto:"))
        .map(|v| {
            relay_user::srtp::sdes::CryptoAttribute::parse(v)
                .unwrap_or_else(|e| panic!("a=crypto:{v}: {e}"))
        })
        .collect()
}

/// The pid in a name made by [`unique_name`] with this `prefix`, if it is one.
pub fn unique_name_pid(prefix: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_round_trip() {
        let a = unique_name("relaytest");
        let b = unique_name("relaytest");
        assert_ne!(a, b);
        assert_eq!(unique_name_pid("relaytest", &a), Some(std::process::id()));
        assert_eq!(unique_name_pid("relaytest", "relaytest-e2e-12-0"), None);
        assert_eq!(
            unique_name_pid("relaytest-e2e", "relaytest-e2e-12-0"),
            Some(12)
        );
        assert_eq!(unique_name_pid("relaytest", "other-12-0"), None);
    }
}
