//! The XDP objects, embedded at build time (see build.rs).

/// Aligned wrapper so the ELF parser can read the embedded bytes in place.
#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);

static RELAY: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/relay-ebpf.o")));
static PASS: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/relay-pass.o")));

/// Name of the relay's XDP program inside [`relay_object`].
pub const RELAY_PROGRAM: &str = "relay";
/// Name of the pass-only program inside [`pass_object`].
pub const PASS_PROGRAM: &str = "relay_pass";

#[derive(Debug, thiserror::Error)]
#[error(
    "the XDP object was not built into this binary: run `cargo xtask build-ebpf`, then rebuild"
)]
pub struct NotBuilt;

/// The relay's XDP object (program `relay` and its maps).
pub fn relay_object() -> Result<&'static [u8], NotBuilt> {
    non_empty(&RELAY.0)
}

/// An XDP program that passes everything: veth peers need one attached to
/// receive redirected frames (tests, benchmarks, the demo).
pub fn pass_object() -> Result<&'static [u8], NotBuilt> {
    non_empty(&PASS.0)
}

fn non_empty(b: &'static [u8]) -> Result<&'static [u8], NotBuilt> {
    if b.is_empty() { Err(NotBuilt) } else { Ok(b) }
}
