//! The one bounds-checked way into the packet. Every read and write goes
//! through here so the verifier sees a check before each access.

use aya_ebpf::programs::XdpContext;

/// Copies a `T` (a byte array: alignment 1) out of the frame at `offset`.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let ptr = ptr_at::<T>(ctx, offset)?;
    // SAFETY: ptr_at checked that `offset..offset + size_of::<T>()` lies inside
    // the frame; T is a byte array, so any alignment is fine.
    Some(unsafe { core::ptr::read_unaligned(ptr) })
}

/// Writes a `T` into the frame at `offset`.
#[inline(always)]
pub fn write<T: Copy>(ctx: &XdpContext, offset: usize, value: T) -> Option<()> {
    let ptr = ptr_at::<T>(ctx, offset)?;
    // SAFETY: as in `read`; the frame is writable in XDP.
    unsafe { core::ptr::write_unaligned(ptr, value) };
    Some(())
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    // Offsets are bounded (VLAN tag, IHL up to 60) so the verifier can track them.
    if offset > 1500 || start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}
