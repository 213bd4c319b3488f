//! relay's control plane: configuration, the data-plane API (XDP program plus
//! userspace forwarder), the control socket, and the pieces `relayd` and
//! `relayctl` are built from.
pub mod config;
pub mod control;
pub mod ctl;
pub mod dataplane;
pub mod ebpf;
pub mod media;
pub mod metrics;
pub mod ng;
pub mod relay;
pub mod rule;
pub mod sdp;
pub mod sip;
pub mod srtp;
#[cfg(test)]
mod test_rng;
