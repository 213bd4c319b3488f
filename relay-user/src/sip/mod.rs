//! SIP without I/O: messages, transactions (RFC 3261 section 17) and their
//! timers. Time is passed in; sockets live in the transport layer.

pub mod b2bua;
pub mod dialog;
pub mod message;
pub mod server;
pub mod timers;
pub mod tls;
pub mod transaction;
pub mod transport;
pub mod trunk;
