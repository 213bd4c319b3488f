//! Packet sink for the data-plane benchmark: attached to the receiver's veth
//! end, it counts every frame in a per-CPU array and drops it, so the
//! receiving namespace spends nothing beyond this program per packet.
//!
//! `SINK_COUNT[0]`: IPv4 UDP frames (the relayed media); `SINK_COUNT[1]`:
//! everything else (ARP, IPv6 neighbour discovery, ...), kept apart so the
//! benchmark counts forwarded media only.
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
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};

#[map(name = "SINK_COUNT")]
static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

const ETH_HLEN: usize = 14;

#[xdp]
pub fn relay_sink(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    let end = ctx.data_end();
    let mut slot = 1;
    if start + ETH_HLEN + 20 <= end {
        // SAFETY: the first 34 bytes lie inside the frame (checked above).
        let (ethertype, proto) = unsafe {
            let p = start as *const u8;
            ([*p.add(12), *p.add(13)], *p.add(ETH_HLEN + 9))
        };
        if ethertype == [0x08, 0x00] && proto == 17 {
            slot = 0;
        }
    }
    if let Some(c) = SINK_COUNT.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot; nothing else runs on this CPU while we do.
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
