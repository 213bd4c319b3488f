//! The media core: calls, legs, streams, port allocation and SDP offer/answer,
//! and the flow rules they need. [`core::MediaCore`] is pure logic; the
//! [`crate::relay::Relay`] applies its rule changes to the data plane.

pub mod call;
pub mod core;
pub mod mos;
pub mod ports;
pub mod srtp;

pub use call::{CallView, RuleContext};
pub use core::{Answer, MediaCore, MediaError, Offer, Outcome, RuleChange};
pub use srtp::{SrtpOptions, SrtpPolicy};

#[cfg(test)]
mod srtp_tests;
#[cfg(test)]
mod tests;
