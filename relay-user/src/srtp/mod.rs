//! SRTP (RFC 3711) and AES-GCM SRTP (RFC 7714) protection, and SDES keying
//! (RFC 4568). Pure code, no I/O: the forwarder hands packets in and gets
//! them back protected or unprotected in the same buffer.
//!
//! - [`Suite`]: the four suites and their lengths and names.
//! - [`MasterKey`]: a master key and salt; never shown, wiped on drop.
//! - [`Context`]: one direction of one media stream: SRTP and SRTCP,
//!   per-SSRC rollover counters and replay windows.
//! - [`Error`]: why a packet failed, one value per counter.
//! - [`sdes`]: `a=crypto:` lines.
//!
//! See docs/srtp.md.

mod context;
mod crypto;
mod error;
mod kdf;
mod key;
mod replay;
pub mod sdes;
mod suite;
mod transform;

#[cfg(test)]
mod tests;

pub use context::{Context, Direction, MAX_PACKET, MAX_SSRCS};
pub use error::Error;
pub use key::MasterKey;
pub use replay::WINDOW;
pub use suite::Suite;
