//! SIP without I/O: messages, transactions (RFC 3261 section 17) and their
//! timers. Time is passed in; sockets live in the transport layer.

pub mod message;
pub mod timers;
pub mod transaction;
pub mod transport;
pub mod trunk;
pub mod tls;
pub mod b2bua;
pub mod dialog;
pub mod server;
