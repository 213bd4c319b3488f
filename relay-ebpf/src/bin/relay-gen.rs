//! Traffic generator for the data-plane benchmark: run with BPF_PROG_TEST_RUN
//! in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`) on a sender's veth end,
//! it returns XDP_TX for every frame, so each frame leaves that interface and
//! arrives at its peer (the relay).
//!
//! Every frame gets the header template from `GEN_HDR` (Ethernet, IPv4 with a
//! valid header checksum, UDP with checksum 0 = "none"): live frames come from
//! a page pool that is not re-initialised between runs, and the relay rewrites
//! the frames it forwards in place, so nothing of a recycled frame is trusted.
//! The UDP ports then step round-robin over `flows` flows, from a per-CPU
//! counter: flow i is sport `sport_base + 2i` -> dport `dport_base + 2i`.
//! Ports are not covered by the IPv4 header checksum and the UDP checksum is
//! 0, so no checksum work is needed.
//!
//! With a pacing interval set, a frame goes out only when the per-CPU clock
//! allows (one frame per interval, at most `BURST` back to back after a
//! pause); the others are dropped here, so the sent frames are spread evenly
//! however fast the test run loops. `GEN_SENT` counts the frames sent.
#![no_std]
#![no_main]
#![deny(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// Bytes of the header template: Ethernet (14) + IPv4 without options (20) + UDP (8).
const HDR_LEN: usize = 42;
const UDP_OFF: usize = 34;

/// `[flows, sport_base, dport_base, interval_ns]`, written by the loader;
/// `interval_ns` 0 sends every frame.
#[map(name = "GEN_CONFIG")]
static GEN_CONFIG: Array<[u32; 4]> = Array::with_max_entries(1, 0);

/// The header template; the first `HDR_LEN` bytes are used.
#[map(name = "GEN_HDR")]
static GEN_HDR: Array<[u8; 64]> = Array::with_max_entries(1, 0);

/// Next flow index, per CPU.
#[map(name = "GEN_NEXT")]
static GEN_NEXT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Pacing: CLOCK_MONOTONIC ns before which no frame may go, per CPU.
#[map(name = "GEN_CLOCK")]
static GEN_CLOCK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Frames sent (XDP_TX), per CPU.
#[map(name = "GEN_SENT")]
static GEN_SENT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Frames that may go back to back after a pause when pacing.
const BURST: u64 = 16;

#[xdp]
pub fn relay_gen(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + HDR_LEN > end {
        return xdp_action::XDP_ABORTED;
    }
    let (Some(config), Some(hdr), Some(next)) =
        (GEN_CONFIG.get(0), GEN_HDR.get(0), GEN_NEXT.get_ptr_mut(0))
    else {
        return xdp_action::XDP_ABORTED;
    };
    let [flows, sport_base, dport_base, interval] = *config;
    if interval != 0 {
        let Some(clock) = GEN_CLOCK.get_ptr_mut(0) else {
            return xdp_action::XDP_ABORTED;
        };
        let interval = u64::from(interval);
        // SAFETY: the helper takes no arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: per-CPU slot; nothing else runs on this CPU while we do.
        let next = unsafe { *clock };
        if now < next {
            return xdp_action::XDP_DROP;
        }
        let floor = now.saturating_sub(BURST * interval);
        unsafe { *clock = if next > floor { next } else { floor } + interval };
    }
    let flows = if flows == 0 { 1 } else { flows };
    // SAFETY: per-CPU slot; nothing else runs on this CPU while we do.
    let i = unsafe { *next };
    let i = if i >= flows { 0 } else { i };
    unsafe { *next = if i + 1 >= flows { 0 } else { i + 1 } };
    let sport = (sport_base.wrapping_add(2 * i) as u16).to_be_bytes();
    let dport = (dport_base.wrapping_add(2 * i) as u16).to_be_bytes();

    let dst = start as *mut u8;
    let src = hdr.as_ptr();
    // SAFETY: `start + HDR_LEN <= end` was checked above, every offset written
    // is below HDR_LEN (and below the template's 64 bytes), and the frame is
    // writable in XDP.
    unsafe {
        // Ethernet and IPv4 headers as the template has them.
        core::ptr::copy_nonoverlapping(src, dst, UDP_OFF);
        // UDP: ports, length from the template, checksum 0 ("none").
        *dst.add(UDP_OFF) = sport[0];
        *dst.add(UDP_OFF + 1) = sport[1];
        *dst.add(UDP_OFF + 2) = dport[0];
        *dst.add(UDP_OFF + 3) = dport[1];
        *dst.add(UDP_OFF + 4) = *src.add(UDP_OFF + 4);
        *dst.add(UDP_OFF + 5) = *src.add(UDP_OFF + 5);
        *dst.add(UDP_OFF + 6) = 0;
        *dst.add(UDP_OFF + 7) = 0;
    }
    if let Some(sent) = GEN_SENT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, as above.
        unsafe { *sent += 1 };
    }
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
