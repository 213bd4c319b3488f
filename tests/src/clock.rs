//! The clock the XDP program reads (`bpf_ktime_get_ns` is CLOCK_MONOTONIC).

use std::time::Duration;

/// CLOCK_MONOTONIC now, in ns: comparable with the program's timestamps
/// (`FlowRule::latch_until_ns`, `FlowStats::last_seen_ns`, `LatchEvent::time_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC `after` from now, in ns.
pub fn monotonic_ns_in(after: Duration) -> u64 {
    monotonic_ns() + after.as_nanos() as u64
}
