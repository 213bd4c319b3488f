//! The rtpengine-compatible NG control protocol, so Kamailio's and
//! OpenSIPS's `rtpengine` modules can drive the relay (docs/ng-protocol.md).
//!
//! A request is one UDP datagram, `cookie SP dictionary`, the dictionary in
//! bencode (or JSON); the reply carries the same cookie. The layers, each
//! testable alone:
//! - [`bencode`]: the codec, never panicking on input;
//! - [`request`]: a request dictionary read into [`request::Request`], key
//!   spellings and flag forms (`flags` list, raw `rtpp-flags`) normalised;
//! - [`handler`]: the commands over [`crate::relay::Relay`], the reply cache,
//!   per-call protocol state; no I/O;
//! - [`server`]: the UDP sockets and the tick.

pub mod bencode;
mod cache;
pub mod handler;
pub mod request;
pub mod server;

pub use handler::Ng;
pub use server::NgServer;

#[cfg(test)]
mod tests;
