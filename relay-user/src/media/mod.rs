//! The media core: calls, legs, streams, port allocation and SDP offer/answer,
//! and the flow rules they need. [`core::MediaCore`] is pure logic; the
//! [`crate::relay::Relay`] applies its rule changes to the data plane.

pub mod call;
pub mod core;
pub mod ports;

pub use call::{CallView, RuleContext};
pub use core::{Answer, MediaCore, MediaError, Offer, Outcome, RuleChange};

#[cfg(test)]
mod tests;
