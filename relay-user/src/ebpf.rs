//! The XDP objects, embedded at build time (see build.rs).

/// Aligned wrapper so the ELF parser can read the embedded bytes in place.
#[repr(C, align(8))]
struct Aligned<B: ?Sized>(B);

static RELAY: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/relay-ebpf.o")));
static PASS: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/relay-pass.o")));
static GEN: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/relay-gen.o")));
static SINK: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/relay-sink.o")));

/// Name of the relay's XDP program inside [`relay_object`].
pub const RELAY_PROGRAM: &str = "relay";
/// Name of the pass-only program inside [`pass_object`].
pub const PASS_PROGRAM: &str = "relay_pass";
/// Name of the benchmark's traffic generator inside [`gen_object`].
pub const GEN_PROGRAM: &str = "relay_gen";
/// Name of the benchmark's counting sink inside [`sink_object`].
pub const SINK_PROGRAM: &str = "relay_sink";

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

/// The benchmark's traffic generator: run with BPF_PROG_TEST_RUN in live-frames
/// mode, it sends every frame out of its interface (XDP_TX), stepping the UDP
/// ports over N flows.
pub fn gen_object() -> Result<&'static [u8], NotBuilt> {
    non_empty(&GEN.0)
}

/// The benchmark's sink: counts IPv4 UDP frames per CPU and drops everything.
pub fn sink_object() -> Result<&'static [u8], NotBuilt> {
    non_empty(&SINK.0)
}

fn non_empty(b: &'static [u8]) -> Result<&'static [u8], NotBuilt> {
    if b.is_empty() { Err(NotBuilt) } else { Ok(b) }
}
